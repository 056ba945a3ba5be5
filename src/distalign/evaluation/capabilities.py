"""General capabilities after fine-tuning (paper Table 5).

Two backends (``capabilities.backend``):

- ``local`` (offline; the embedded default): perplexity on a held-out text shipped in
  ``resources/capabilities/`` and accuracy on a local four-way multiple-choice task. Each
  paragraph of the text is scored as its own sequence (token-level NLL of every token after the
  first); perplexity = exp(total NLL / scored tokens). A question is scored as
  lm-evaluation-harness scores multiple choice: the summed log-probability of each choice
  (" {choice}") after ``"Question: {q}\\nAnswer:"``, without the chat template; ``accuracy`` takes
  the arg-max of the sum, ``accuracy_norm`` of the sum divided by the choice's character length.
- ``lm-eval`` (paper configuration): lm-evaluation-harness ``simple_evaluate`` on the configured
  tasks (MMLU, GSM8K, TruthfulQA, IFEval), the model loaded by the harness's ``hf`` backend with
  the LoRA adapter (``peft=``). lm-eval is not a dependency of the CPU environment; the rule's
  conda environment (envs/capabilities.yaml) provides it on the cluster.

Prompting methods share the base model's weights, so their row is the base model's.

Progress: the local backend logs sequences scored of all (paragraphs + one per answer choice),
rate and time left at most every 30 s and at the end (``distalign.core.progress``): seconds for the
embedded model, minutes for a larger one. lm-eval shows its own progress bars.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from distalign.core.progress import Progress

log = logging.getLogger("distalign.capabilities")


class CapabilityError(ValueError):
    """A held-out or multiple-choice file that cannot be used (names the file, line and key)."""


def load_heldout(path: str | os.PathLike) -> list[str]:
    """Paragraphs (separated by blank lines) of a held-out text file."""
    text = Path(path).read_text(encoding="utf-8")
    paras = [" ".join(p.split()) for p in text.split("\n\n")]
    paras = [p for p in paras if p]
    if not paras:
        raise CapabilityError(f"{path}: empty held-out text (expected paragraphs separated by blank lines)")
    return paras


def load_multiple_choice(path: str | os.PathLike) -> list[dict]:
    """Validated items {id, question, choices, answer} of a JSONL multiple-choice file."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise CapabilityError(f"{where}: not JSON ({err.msg})") from None
            for key, kind in (("question", str), ("choices", list), ("answer", int)):
                if not isinstance(item.get(key), kind) or isinstance(item.get(key), bool):
                    raise CapabilityError(
                        f"{where}: key {key!r} must be a {kind.__name__}, got {item.get(key)!r}"
                    )
            if len(item["choices"]) < 2 or not all(isinstance(c, str) and c for c in item["choices"]):
                raise CapabilityError(f"{where}: key 'choices' must hold at least two non-empty strings")
            if not 0 <= item["answer"] < len(item["choices"]):
                raise CapabilityError(
                    f"{where}: key 'answer' = {item['answer']} is not an index of 'choices' "
                    f"(0..{len(item['choices']) - 1})"
                )
            items.append(
                {"id": item.get("id", f"line-{n}"), **{k: item[k] for k in ("question", "choices", "answer")}}
            )
    if not items:
        raise CapabilityError(f"{path}: no multiple-choice items")
    return items


def _sequence_logprobs(
    model,
    sequences: Sequence[Sequence[int]],
    scored_from: Sequence[int],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[float]:
    """Sum of log P(token | prefix) over positions >= scored_from[i] of each sequence (right-padded batches)."""
    out: list[float] = []
    device = next(model.parameters()).device
    for b in range(0, len(sequences), batch_size):
        chunk = sequences[b : b + batch_size]
        starts = scored_from[b : b + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tok = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for i, s in enumerate(chunk):
            lo = max(int(starts[i]), 1)
            out.append(float(tok[i, lo - 1 : len(s) - 1].sum()))
        if progress is not None:
            progress.update(len(chunk))
    return out


def perplexity(
    model, tokenizer, paragraphs: Sequence[str], max_length: int = 512, progress: Progress | None = None
) -> dict:
    """exp(mean token NLL) over paragraphs scored independently (each cut to ``max_length`` tokens)."""
    seqs = [tokenizer(p, add_special_tokens=False)["input_ids"][:max_length] for p in paragraphs]
    seqs = [s for s in seqs if len(s) > 1]
    if progress is not None:
        progress.update(len(paragraphs) - len(seqs))  # paragraphs of one token: nothing to score
    total = -sum(_sequence_logprobs(model, seqs, [1] * len(seqs), batch_size=4, progress=progress))
    n = sum(len(s) - 1 for s in seqs)
    return {
        "perplexity": math.exp(total / n),
        "nll_per_token": total / n,
        "tokens": n,
        "paragraphs": len(seqs),
    }


def multiple_choice(model, tokenizer, items: Sequence[dict], progress: Progress | None = None) -> dict:
    """Accuracy (sum of log-probs) and length-normalised accuracy on multiple-choice items."""
    seqs, starts, owners = [], [], []
    for i, item in enumerate(items):
        ctx = tokenizer(f"Question: {item['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
        for c in item["choices"]:
            cont = tokenizer(f" {c}", add_special_tokens=False)["input_ids"]
            seqs.append(ctx + cont)
            starts.append(len(ctx))
            owners.append(i)
    scores = _sequence_logprobs(model, seqs, starts, progress=progress)
    per_item: list[list[float]] = [[] for _ in items]
    for i, s in zip(owners, scores, strict=True):
        per_item[i].append(s)
    correct = correct_norm = 0
    for item, sc in zip(items, per_item, strict=True):
        correct += int(max(range(len(sc)), key=sc.__getitem__) == item["answer"])
        norm = [s / len(c) for s, c in zip(sc, item["choices"], strict=True)]
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == item["answer"])
    return {"accuracy": correct / len(items), "accuracy_norm": correct_norm / len(items), "items": len(items)}


def evaluate_local(model_dir, adapter, heldout_path, mc_path, device: str = "cpu") -> dict:
    """Perplexity and multiple-choice accuracy of the base model (adapter None) or base + adapter."""
    from distalign.modeling.models import load_model

    paragraphs = load_heldout(heldout_path)
    items = load_multiple_choice(mc_path)  # both files are checked before the model is loaded
    tok, model = load_model(
        model_dir, device=device, dtype="float32" if device == "cpu" else None, adapter=adapter
    )
    total = len(paragraphs) + sum(len(item["choices"]) for item in items)
    # results/adapters/{dataset}/{model}/{method} -> "dataset/model/method"
    name = "/".join(Path(adapter).parts[-3:]) if adapter else Path(model_dir).name
    with Progress(total, f"capabilities {name}", log, unit="sequence") as progress:
        return {
            "backend": "local",
            "perplexity": perplexity(model, tok, paragraphs, progress=progress),
            "multiple_choice": multiple_choice(model, tok, items, progress=progress),
        }


def lm_eval_model_args(weights: str, adapter: str | None, dtype: str) -> str:
    """The ``model_args`` string of lm-eval's ``hf`` backend (base weights, optional LoRA adapter)."""
    args = f"pretrained={weights},dtype={dtype}"
    return args + (f",peft={adapter}" if adapter else "")


def evaluate_lm_eval(
    model_dir, adapter, tasks: Sequence[str], *, limit: int | None, batch_size: str, device: str, dtype: str
) -> dict:
    """lm-evaluation-harness on ``tasks`` (the paper's Table 5); returns each task's metrics."""
    try:
        import lm_eval
    except ImportError:
        raise CapabilityError(
            "capabilities.backend 'lm-eval' needs lm-evaluation-harness (pip install lm-eval; "
            "the rule's conda env envs/capabilities.yaml has it)"
        ) from None
    from distalign.modeling.models import weights_path

    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=lm_eval_model_args(weights_path(model_dir), adapter, dtype),
        tasks=list(tasks),
        limit=limit,
        batch_size=batch_size,
        device=device,
    )
    results = {
        t: {k: v for k, v in r.items() if isinstance(v, int | float)} for t, r in res["results"].items()
    }
    return {"backend": "lm-eval", "tasks": results, "lm_eval_version": getattr(lm_eval, "__version__", None)}
