"""The method's second stage: steering-token KL + KTO (or DPO), on top of trl 1.16.

Sequences are pre-tokenized here with :mod:`distalign.modeling.chat` (prompt ids + completion ids), so the
steering token is *exactly* the first completion token; both trainer subclasses skip trl's own
text tokenization (``_prepare_dataset``) and accept these ids as they are.

Decisions (see the paper's "The method" and original-repo.md section 3):

- ``L_KL`` is KL(P* || P_theta) at the position that predicts the first completion token (the
  last prompt token). ``restricted`` (default): P_theta is the softmax over the K steering-token
  logits (what inference samples from). ``full``: the authors' variant, full-vocabulary
  log-probabilities gathered at the steering ids, *not* renormalised (it also pushes the total
  steering mass toward 1). Computed in float32.
- No extra forward for ``L_KL``: a forward hook on the backbone keeps the last hidden states of
  trl's own (grad-enabled) policy forward; the LM head is applied to one position per row.
  Without a preference loss (``ours-no-kto``) a backbone forward on the prompt part is run.
  The prompt of a row does not depend on its completion, so every row (desirable or not)
  contributes its prompt's KL; for DPO only the chosen half (same prompts) is used.
- The per-example target reaches the loss as a ``target`` column: it is a signature column of
  the subclasses and the collators stack it; ``compute_loss`` pops it before trl builds the
  model kwargs.
- KTO reference point z0: trl 1.16 pairs each row with the completion of its neighbour in the
  batch (``KL_completion_ids`` = completions rotated by one). With a prompt's desirable and
  undesirable rows adjacent, that reproduces the authors' bug (a prompt with its own rejected
  answer). We build ``KL_completion_ids`` ourselves (:func:`mismatched_companions`): every row is
  paired with a completion of a *different context*, taken from the same batch when possible
  (trl trains KTO in a fixed sequential order, so batches are known in advance; the order is
  shuffled once with a seeded RNG), otherwise from anywhere in the data.
- ``nll`` second stage (our default on CPU, not in the paper): L_KL plus the negative
  log-likelihood of the *answer* given the correct steering token ([tau_a; r], the loss masked on
  the prompt and on tau_a itself). The KTO term of the paper also trains the answers of its
  undesirable rows, which breaks the token -> answer binding learned in stage 1 (feasibility
  study: consistency 0.93 -> 0.79, invalid answers 1% -> 20%); the NLL term holds the binding
  while L_KL alone sets the token distribution. It needs one forward/backward of the desirable
  rows per step, no reference model and no mismatched rows (about half a KTO step).
- Story binding (``training.story_binding_weight``, D_story rows of the ``nll`` stage only; not in
  the paper): the NLL of a story given its token is dominated by the many tokens that say nothing
  about the class, so it teaches the model to write stories but hardly that "1" means a woman (at
  weight 0 the binding of story to token measured .51, chance). The binding term asks the token to
  *explain* the story: the story's log-likelihood is computed under each of the K steering tokens
  (the row with its token swapped, one forward per token) and the loss is the cross-entropy of the
  row's class against those K scores, a K-way classification whose only useful features are the
  class-bearing words (pronouns, sentiment words). Logged as ``binding_loss`` and
  ``binding_accuracy`` (share of story rows whose own token scores highest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from distalign.modeling.models import pad_id
from distalign.training.losses import (
    _lm_head_at,
    answer_positions,
    capture_hidden,
    prompt_logits,
    steering_kl,
    token_log_likelihoods,
)
from distalign.training.replay import collate, replay_batch, replay_kl, replay_order
from distalign.training.rows import VOCABULARIES


class _TargetCollatorMixin:
    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if "target" in examples[0]:
            out["target"] = torch.tensor([e["target"] for e in examples], dtype=torch.float32)
        if "bind" in examples[0]:
            out["bind"] = torch.tensor([e["bind"] for e in examples], dtype=torch.long)
        return out


@dataclass
class SteeringUnpairedCollator(_TargetCollatorMixin, DataCollatorForUnpairedPreference):
    """trl's KTO collator plus a ``target`` tensor [B, K]."""


@dataclass
class SteeringPreferenceCollator(_TargetCollatorMixin, DataCollatorForPreference):
    """trl's DPO collator plus a ``target`` tensor [B, K] (one per pair)."""


@dataclass
class SteeringLMCollator(_TargetCollatorMixin, DataCollatorForLanguageModeling):
    """trl's language-modelling collator plus a ``target`` tensor [B, K]."""


@dataclass(kw_only=True)
class SteeringArguments:
    """Hyperparameters of the terms distalign adds to a trl trainer, shared by :class:`SteeringKTOConfig`,
    :class:`SteeringDPOConfig` and :class:`SteeringSFTConfig` (trl's configs plus these fields, as trl's
    own trainers take their hyperparameters from ``KTOConfig`` and friends).

    Logged metrics (the trainer's ``_metrics``, averaged into the log history at every logging step,
    prefixed ``eval_`` in evaluation):

    - ``steering_kl``: KL(P* || P_theta) at the position that predicts the steering token, mean over
      rows; logged whether or not ``use_kl`` adds it to the loss (the ablation still reports it).
    - ``steering_mass``: total probability of the K steering tokens there (full vocabulary).
    - ``steering_mae``: MAE between the restricted steering distribution and the row's target.
    - ``kto_loss`` (KTO), ``dpo_loss`` (DPO with steering ids), ``nll_loss`` (the ``nll`` stage):
      trl's own loss of the batch, before the weighted KL term is added.
    - ``binding_loss``, ``binding_accuracy`` (``nll`` stage with ``binding_weight`` > 0, batches with
      D_story rows): the story binding cross-entropy and the share of story rows whose own token
      explains the story best.
    - ``replay_kl`` (``replay_weight`` > 0, training only): KL(P_base || P_theta) per answer token on
      the step's replay rows (:mod:`distalign.training.replay`), before weighting.

    trl's own metrics (rewards, margins, KTO's kl) are logged as trl documents them.
    """

    kl_weight: float = field(default=1.0, metadata={"help": "Weight of L_KL (training.kl_weight)."})
    kl_vocabulary: str = field(
        default="restricted",
        metadata={
            "help": "restricted: softmax over the K steering logits; full: full-vocabulary log-probs at the "
            "steering ids (training.kl_vocabulary)."
        },
    )
    use_kl: bool = field(
        default=True,
        metadata={
            "help": "Add L_KL to the loss (false: the ours-no-kl ablation; the steering metrics are still logged)."
        },
    )
    replay_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the replay KL to the base model (training.replay.weight; 0: off)."},
    )
    replay_batch_size: int = field(
        default=4,
        metadata={"help": "Replay rows per optimizer step (training.replay.batch_size)."},
    )


@dataclass(kw_only=True)
class SteeringKTOConfig(SteeringArguments, KTOConfig):
    """trl's KTOConfig plus :class:`SteeringArguments` and ``use_kto``."""

    use_kto: bool = field(
        default=True, metadata={"help": "Keep trl's KTO term (false: ours-no-kto, L_KL only)."}
    )


@dataclass(kw_only=True)
class SteeringDPOConfig(SteeringArguments, DPOConfig):
    """trl's DPOConfig plus :class:`SteeringArguments` (unused by plain DPO, ``steering_ids=None``)."""


@dataclass(kw_only=True)
class SteeringSFTConfig(SteeringArguments, SFTConfig):
    """trl's SFTConfig plus :class:`SteeringArguments` and the story ``binding_weight``."""

    binding_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the story binding term on rows with a bind class (training.story_binding_weight)."
        },
    )


class _SteeringMixin:
    """Shared state, default collator, steering logits and the KL term of the three trainers."""

    _required: tuple[str, ...] = ()

    def _init_replay(self, replay_rows, replay_seed: int, args) -> None:
        """The replay rows (:func:`distalign.training.replay.replay_rows`) and their seeded order; the
        term is on when the weight is positive and there are rows."""
        weight = float(getattr(args, "replay_weight", 0.0))
        if weight < 0:
            raise ValueError(f"training.replay.weight must be >= 0, got {weight}")
        if weight > 0 and not replay_rows:
            raise ValueError("training.replay.weight > 0 but no replay rows were given")
        self.replay_weight = weight if replay_rows else 0.0
        self.replay_rows = list(replay_rows or [])
        self.replay_size = int(getattr(args, "replay_batch_size", 4))
        self.replay_order = replay_order(len(self.replay_rows), replay_seed) if self.replay_rows else []

    def _replay_term(self, model, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the weighted replay KL on this step's replay rows (training only)."""
        if self.replay_weight <= 0 or not self.model.training:
            return loss
        rows = replay_batch(self.replay_rows, self.replay_order, self.state.global_step, self.replay_size)
        kl = replay_kl(model, collate(rows, pad_id(self.processing_class)))
        self._metrics["train"]["replay_kl"].append(kl.item())
        return loss + self.replay_weight * kl.to(loss.device)

    def _init_steering(self, steering_ids, args) -> None:
        if not isinstance(args, SteeringArguments):
            if steering_ids is not None:
                raise TypeError(
                    f"{type(self).__name__}: args must be a Steering*Config (distalign.training.trainers) to "
                    f"carry the steering hyperparameters, got {type(args).__name__}"
                )
            args = SteeringArguments(use_kl=False)
        if args.kl_vocabulary not in VOCABULARIES:
            raise ValueError(
                f"training.kl_vocabulary: {args.kl_vocabulary!r} (expected one of {VOCABULARIES})"
            )
        self.steering_ids = list(steering_ids) if steering_ids is not None else None
        self.kl_weight = float(args.kl_weight)
        self.kl_vocabulary = args.kl_vocabulary
        self.use_kl = bool(args.use_kl) and self.steering_ids is not None

    # why: trl would tokenize text columns; our rows are token ids already (distalign.modeling.chat), so only check them.
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """The rows are already tokenized by distalign.modeling.chat: check and keep them as they are."""
        missing = [c for c in self._required if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: {dataset_name} dataset lacks pre-tokenized column(s) {missing}"
            )
        return dataset

    @staticmethod
    def _default_collator(kwargs: dict, collator_cls, **extra) -> None:
        """Fill ``kwargs["data_collator"]`` (unless given) with ``collator_cls`` padded like trl's default."""
        if kwargs.get("data_collator") is None:
            a = kwargs["args"]
            kwargs["data_collator"] = collator_cls(
                pad_token_id=pad_id(kwargs["processing_class"]),
                pad_to_multiple_of=a.pad_to_multiple_of,
                **extra,
            )

    @staticmethod
    def _steering_logits(model, hidden, inputs: dict, positions: torch.Tensor, rows: int | None = None):
        """Logits [B, V] at ``positions``: from the hidden states the main loss already computed when
        they were captured, else from a separate forward pass of the first ``rows`` rows."""
        if hidden is not None:
            return _lm_head_at(model, hidden[:rows], positions)
        return prompt_logits(model, inputs["input_ids"][:rows], inputs["attention_mask"][:rows], positions)

    # why: the Trainer drops dataset columns the model does not take; ``target`` and ``bind`` must reach
    # compute_loss.
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = [c for c in ("target", "bind") if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *extra]

    def _steering_term(self, model, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted KL term (0 when switched off) and its metrics."""
        mode = "train" if self.model.training else "eval"
        out = steering_kl(logits, self.steering_ids, target, self.kl_vocabulary)
        kl = out.kl.mean()
        m = self._metrics[mode]
        m["steering_kl"].append(kl.item())
        m["steering_mass"].append(out.mass.mean().item())
        m["steering_mae"].append(out.mae.mean().item())
        if not self.use_kl:
            return torch.zeros((), device=logits.device)
        return self.kl_weight * kl


class SteeringKTOTrainer(_SteeringMixin, KTOTrainer):
    """trl KTOTrainer + ``kl_weight * L_KL`` on pre-tokenized rows (:func:`kto_rows`).

    ``args``: a :class:`SteeringKTOConfig`; its ``use_kto=False`` drops the KTO term (``ours-no-kto``),
    ``use_kl=False`` drops L_KL (``ours-no-kl``). Logged: see :class:`SteeringArguments`.
    """

    _required = ("prompt_ids", "completion_ids", "KL_completion_ids", "label", "target")

    def __init__(self, *args, steering_ids: list[int], replay_rows=None, replay_seed: int = 0, **kwargs):
        self._init_steering(steering_ids, kwargs["args"])
        self._init_replay(replay_rows, replay_seed, kwargs["args"])
        self.use_kto = bool(kwargs["args"].use_kto)
        if not (self.use_kto or self.use_kl):
            raise ValueError("SteeringKTOTrainer: both the KTO and the KL term are switched off")
        self._default_collator(kwargs, SteeringUnpairedCollator, max_length=kwargs["args"].max_length)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        target = inputs.pop("target")
        mode = "train" if self.model.training else "eval"
        hidden = None
        if self.use_kto:
            with capture_hidden(model) as cap:
                kto = super().compute_loss(model, inputs, False, num_items_in_batch)
                hidden = cap.find(inputs["input_ids"])
            self._metrics[mode]["kto_loss"].append(kto.item())
            total = kto
        else:
            total = None
        positions = answer_positions(inputs["completion_mask"])
        logits = self._steering_logits(model, hidden, inputs, positions)
        term = self._steering_term(model, logits, target)
        total = term if total is None else total + term
        total = self._replay_term(model, total)
        if return_outputs:
            return total, {"logits": logits}
        return total


class SteeringDPOTrainer(_SteeringMixin, DPOTrainer):
    """trl DPOTrainer on pre-tokenized rows (:func:`dpo_rows`) + ``kl_weight * L_KL`` (ours-dpo).

    ``args``: a :class:`SteeringDPOConfig`. With ``steering_ids=None`` it is plain DPO on our token-level
    sequences (the DPO baseline; a plain ``DPOConfig`` will do). Logged: see :class:`SteeringArguments`.
    """

    _required = ("prompt_ids", "chosen_ids", "rejected_ids")

    def __init__(
        self, *args, steering_ids: list[int] | None = None, replay_rows=None, replay_seed: int = 0, **kwargs
    ):
        self._init_steering(steering_ids, kwargs["args"])
        self._init_replay(replay_rows, replay_seed, kwargs["args"])
        self._default_collator(
            kwargs,
            SteeringPreferenceCollator,
            max_length=kwargs["args"].max_length,
            truncation_mode=kwargs["args"].truncation_mode,
        )
        super().__init__(*args, **kwargs)

    # why: trl passes every batch column to the reference forward; ``target`` is not a model input.
    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != "target"})

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        target = inputs.pop("target", None)
        if self.steering_ids is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        with capture_hidden(model) as cap:
            dpo = super().compute_loss(model, inputs, False, num_items_in_batch)
            hidden = cap.find(inputs["input_ids"])
        self._metrics[mode]["dpo_loss"].append(dpo.item())
        n = target.shape[0]  # rows are [chosen; rejected]: the chosen half carries each prompt once
        positions = answer_positions(inputs["completion_mask"][:n])
        logits = self._steering_logits(model, hidden, inputs, positions, rows=n)
        total = self._replay_term(model, dpo + self._steering_term(model, logits, target))
        if return_outputs:
            return total, {"logits": logits}
        return total


def steering_positions_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B] positions whose logits predict the steering token, for :func:`nll_rows` batches.

    The first supervised label is the first answer token, at index len(prompt) + 1; the steering
    token sits at len(prompt) and is predicted by position len(prompt) - 1.
    """
    supervised = labels != -100
    if not bool(supervised.any(dim=1).all()):
        raise ValueError("an nll row has no supervised answer token")
    return supervised.int().argmax(dim=1) - 2


class SteeringSFTTrainer(_SteeringMixin, SFTTrainer):
    """trl SFTTrainer (answer NLL given the steering token) + ``kl_weight * L_KL``: the ``nll`` stage.

    Rows come from :func:`nll_rows`; ``args``: a :class:`SteeringSFTConfig`. Its ``use_kl=False`` leaves
    plain answer SFT (for tests of the term switch); ``binding_weight`` > 0 adds ``binding_weight *
    binding_loss`` on the rows whose ``bind`` column holds a class index (module docstring, "Story
    binding"). Logged: see :class:`SteeringArguments`.
    """

    _required = ("input_ids", "labels", "target")
    # why: undo the mixin's override: trl's SFT version already keeps pre-tokenized rows as they are.
    _prepare_dataset = SFTTrainer._prepare_dataset

    def __init__(self, *args, steering_ids: list[int], replay_rows=None, replay_seed: int = 0, **kwargs):
        binding_weight = float(getattr(kwargs["args"], "binding_weight", 0.0))
        if binding_weight < 0:
            raise ValueError(f"training.story_binding_weight must be >= 0, got {binding_weight}")
        self._init_steering(steering_ids, kwargs["args"])
        self._init_replay(replay_rows, replay_seed, kwargs["args"])
        self.binding_weight = binding_weight
        self._default_collator(kwargs, SteeringLMCollator)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        target = inputs.pop("target")
        bind = inputs.pop("bind", None)
        mode = "train" if self.model.training else "eval"
        positions = steering_positions_from_labels(inputs["labels"])
        with capture_hidden(model) as cap:
            nll = super().compute_loss(model, inputs, False, num_items_in_batch)
            hidden = cap.find(inputs["input_ids"])
        self._metrics[mode]["nll_loss"].append(nll.item())
        logits = self._steering_logits(model, hidden, inputs, positions)
        total = nll + self._steering_term(model, logits, target)
        if bind is not None and self.binding_weight > 0:
            total = total + self._binding_term(model, inputs, positions, bind)
        total = self._replay_term(model, total)
        if return_outputs:
            return total, {"logits": logits}
        return total

    def _binding_term(self, model, inputs: dict, positions: torch.Tensor, bind: torch.Tensor) -> torch.Tensor:
        """``binding_weight`` x the cross-entropy of each bound row's class against the likelihoods of
        its answer under every steering token (0 when the batch has no bound row)."""
        rows = (bind >= 0).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            return torch.zeros((), device=bind.device)
        ids, labels = inputs["input_ids"][rows], inputs["labels"][rows]
        scores = token_log_likelihoods(
            model, ids, inputs["attention_mask"][rows], labels, positions[rows] + 1, self.steering_ids
        )
        classes = bind[rows].to(scores.device)
        loss = F.cross_entropy(scores, classes)
        m = self._metrics["train" if self.model.training else "eval"]
        m["binding_loss"].append(loss.item())
        m["binding_accuracy"].append((scores.argmax(dim=1) == classes).float().mean().item())
        return self.binding_weight * loss
