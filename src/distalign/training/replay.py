"""Replay: keep the adapter answering ordinary requests the way the base model does.

Why (issue 24): ours' stages train on one templated task in which every assistant turn opens with a
steering token. On the embedded model that taught the adapter to open *every* answer with a digit
(43.5% of ordinary requests, table5's Leak column) and cost 38% in held-out perplexity. The replay
term anchors the steering stage to the base model away from the task:

- Before the stage, the base model answers a set of ordinary requests (``training.replay.instructions``,
  our own templates in ``resources/training/``, disjoint from table5's leak check) once, by sampling
  with a seed of the run (:func:`replay_rows`).
- At every optimizer step the trainer takes the next ``rows`` of those (prompt, answer) sequences in a
  seeded order and adds ``weight`` x the mean over answer tokens of KL(P_base || P_theta), full
  vocabulary, at every answer position, the first one included (it is where a leaked steering token
  would be sampled). P_base is the same network with the adapter switched off, so no second model is
  held in memory (:func:`replay_kl`).

Sampling the answers from the base model makes the term an estimate of the sequence-level KL from the
base model to the adapted one on ordinary requests: it is zero exactly when the adapter leaves them
alone, and it does not constrain the steering position of the task prompts, which the replay rows
never contain.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch

from distalign.core.progress import Progress
from distalign.core.seeds import derive_seed

log = logging.getLogger(__name__)


def replay_rows(
    model,
    tokenizer,
    model_dir,
    instructions: Sequence[dict],
    *,
    seed: int,
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[dict]:
    """The base model's answers to ``instructions`` as training rows ``{id, input_ids, answer_start}``.

    One sampled answer per instruction (temperature 1, no top-p/top-k: the base model's own
    distribution), chat template, ``max_new_tokens`` at most; an answer that ends with eos keeps it
    (the end of an answer is part of answering normally). ``answer_start`` is the index of the first
    answer token. Batches of ``batch_size`` left-padded prompts, each seeded with
    ``derive_seed(seed, "replay", "batch", b)``: the draws of the generation layer's transformers
    backend with seed parts ``(seed, "replay")`` (a test holds the two equal; this layer may not
    import that one). Same seed, same rows. An instruction whose answer is empty is left out."""
    from transformers import GenerationConfig

    from distalign.modeling.chat import eos_ids, prompt_ids, strip_eos
    from distalign.modeling.models import left_pad, pad_id

    if max_new_tokens < 1:
        raise ValueError(f"training.replay.max_new_tokens must be >= 1, got {max_new_tokens}")
    stop, pad = eos_ids(tokenizer, model_dir), pad_id(tokenizer)
    cfg = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=int(max_new_tokens),
        eos_token_id=stop,
        pad_token_id=pad,
        repetition_penalty=1.0,
    )
    prompts = [prompt_ids(tokenizer, row["instruction"]) for row in instructions]
    answers: list[tuple[list[int], bool]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), Progress(len(prompts), "replay answers", log, unit="answer") as progress:
            for b, start in enumerate(range(0, len(prompts), batch_size)):
                chunk = prompts[start : start + batch_size]
                ids, mask = left_pad(chunk, pad, model.device)
                torch.manual_seed(derive_seed(seed, "replay", "batch", b))
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
                answers += [strip_eos(row, stop) for row in out[:, ids.shape[1] :].tolist()]
                progress.update(len(chunk))
    finally:
        model.train(was_training)
    rows = []
    for row, prompt, (answer, ended) in zip(instructions, prompts, answers, strict=True):
        answer = answer + ([stop[0]] if ended else [])
        if answer:
            rows.append({"id": row["id"], "input_ids": list(prompt) + answer, "answer_start": len(prompt)})
    return rows


def replay_order(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)``: the order in which the steps take the replay rows."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g).tolist()


def replay_batch(rows: Sequence[dict], order: Sequence[int], step: int, size: int) -> list[dict]:
    """The ``size`` rows of optimizer step ``step``: the next slice of ``order``, wrapping around (so a
    resumed run takes the same rows at the same step)."""
    n = len(order)
    start = (step * size) % n
    return [rows[order[(start + i) % n]] for i in range(min(size, n))]


def collate(rows: Sequence[dict], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``answer_mask`` (1 on positions whose *next*
    token is an answer token: the positions the KL is taken at)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    answer = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        n, start = len(r["input_ids"]), int(r["answer_start"])
        if not 0 < start < n:
            raise ValueError(f"replay row {r.get('id')!r}: answer_start {start} outside 1..{n - 1}")
        ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        attn[i, :n] = 1
        answer[i, start - 1 : n - 1] = True
    return {"input_ids": ids, "attention_mask": attn, "answer_mask": answer}


@contextlib.contextmanager
def adapter_disabled(model):
    """The base model: ``model`` (a PEFT model, possibly wrapped by accelerate) with its adapter off."""
    peft_model = getattr(model, "module", model)
    if not hasattr(peft_model, "disable_adapter"):
        raise TypeError(
            f"the replay term needs a PEFT model (the base model is the adapter switched off), got "
            f"{type(peft_model).__name__}"
        )
    with peft_model.disable_adapter():
        yield


def replay_kl(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over answer positions of KL(P_base || P_theta), full vocabulary, float32 (a scalar with the
    gradient of the adapted forward)."""
    device = next(model.parameters()).device
    ids, attn = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    mask = batch["answer_mask"].to(device)
    with torch.no_grad(), adapter_disabled(model):
        base = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[mask]
    base_logp = torch.log_softmax(base.float(), dim=-1)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[mask]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (base_logp.exp() * (base_logp - logp)).sum(-1).mean()
