"""The steering-token losses: KL(P* || P_theta) at the steering position (restricted or full
vocabulary), read from the hidden states of trl's own forward, and per-token log-likelihoods.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distalign.training.rows import VOCABULARIES


@dataclass
class SteeringOutput:
    """Per-example steering statistics at the answer position (all float32, shape [B] or [B, K])."""

    kl: torch.Tensor  # KL(P* || P_theta), the loss term before averaging
    probs: torch.Tensor  # restricted softmax over the steering tokens (what inference samples from)
    mass: torch.Tensor  # full-vocabulary probability mass on the steering tokens
    mae: torch.Tensor  # mean over classes of |probs - target|


def steering_kl(
    logits: torch.Tensor,
    steering_ids: list[int] | torch.Tensor,
    target: torch.Tensor,
    vocabulary: str = "restricted",
) -> SteeringOutput:
    """KL(P* || P_theta) per example from the logits ``[B, V]`` at the answer position.

    ``restricted`` renormalises over the K steering tokens; ``full`` uses full-vocabulary
    log-probabilities at the steering ids (the authors' ``F.kl_div`` on un-renormalised
    digit log-probs). Terms with P* = 0 contribute 0.
    """
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown kl vocabulary {vocabulary!r} (expected one of {VOCABULARIES})")
    logits = logits.float()
    ids = torch.as_tensor(steering_ids, device=logits.device, dtype=torch.long)
    target = target.to(device=logits.device, dtype=torch.float32)
    if target.shape != (logits.shape[0], ids.numel()):
        raise ValueError(f"target has shape {tuple(target.shape)}, expected {(logits.shape[0], ids.numel())}")
    full_logp = torch.log_softmax(logits, dim=-1).index_select(-1, ids)
    restricted_logp = torch.log_softmax(logits.index_select(-1, ids), dim=-1)
    logq = restricted_logp if vocabulary == "restricted" else full_logp
    kl = (torch.xlogy(target, target) - target * logq).sum(-1)
    probs = restricted_logp.exp()
    return SteeringOutput(
        kl=kl, probs=probs, mass=full_logp.exp().sum(-1), mae=(probs - target).abs().mean(-1)
    )


def answer_positions(completion_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last prompt token of each row (it predicts the first completion token)."""
    first = completion_mask.long().argmax(dim=1)
    if bool((first == 0).any()):
        raise ValueError(
            "a row has no completion tokens (prompt truncated by training.max_length?) or an empty prompt"
        )
    return first - 1


def _lm_head_at(model, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits ``[B, V]`` at one position per row."""
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)]
    head = _causal_lm(model).get_output_embeddings()
    return F.linear(h.to(head.weight.dtype), head.weight, getattr(head, "bias", None))


def _causal_lm(model):
    """The causal LM under PEFT / accelerate wrappers."""
    m = getattr(model, "module", model)
    return m.get_base_model() if hasattr(m, "get_base_model") else m


def _backbone(model):
    lm = _causal_lm(model)
    return getattr(lm, lm.base_model_prefix)


def prompt_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Logits at ``positions`` from a backbone forward on the prompt part only (right padding)."""
    width = int(positions.max()) + 1
    out = _backbone(model)(
        input_ids=input_ids[:, :width], attention_mask=attention_mask[:, :width], use_cache=False
    )
    return _lm_head_at(model, out.last_hidden_state, positions)


def token_log_likelihoods(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    token_positions: torch.Tensor,
    steering_ids: list[int],
) -> torch.Tensor:
    """``[R, K]`` log-likelihood of each row's supervised labels with its steering token (at
    ``token_positions``) replaced by each of the K steering tokens in turn (one batched forward of
    K x R rows; column k uses ``steering_ids[k]``)."""
    r, k = input_ids.shape[0], len(steering_ids)
    ids = input_ids.repeat(k, 1)
    rows = torch.arange(k * r, device=ids.device)
    cols = token_positions.to(ids.device).repeat(k)
    ids[rows, cols] = torch.tensor(steering_ids, device=ids.device).repeat_interleave(r)
    logits = model(input_ids=ids, attention_mask=attention_mask.repeat(k, 1), use_cache=False).logits
    tgt = labels.repeat(k, 1)[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        tgt.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(k * r, -1)
    return -nll.sum(dim=1).view(k, r).T


class _HiddenCapture:
    """Forward hook on the backbone recording (input_ids, last hidden state, grad enabled)."""

    def __init__(self, model):
        self.records: list[tuple[torch.Tensor | None, torch.Tensor, bool]] = []
        self._handle = _backbone(model).register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.records.append((ids, output.last_hidden_state, torch.is_grad_enabled()))

    def remove(self) -> None:
        self._handle.remove()

    def find(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Hidden states of the last forward on exactly ``input_ids`` (grad-enabled preferred)."""
        matches = [
            (h, g)
            for ids, h, g in self.records
            if ids is not None and ids.shape == input_ids.shape and torch.equal(ids, input_ids)
        ]
        with_grad = [h for h, g in matches if g]
        if with_grad:
            return with_grad[-1]
        if matches and not torch.is_grad_enabled():
            return matches[-1][0]
        return None


@contextlib.contextmanager
def capture_hidden(model):
    cap = _HiddenCapture(model)
    try:
        yield cap
    finally:
        cap.remove()
