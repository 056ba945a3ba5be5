"""Training data of paper section 3.3: D_base, SFT data and preference (KTO/DPO) data.

D_base holds, per context, ``N = data.responses_per_context`` short answers whose class counts
are N_k = round(N * P*(a_k|c)). Plain rounding need not sum to N (0.5/0.5 with N = 3, or three
classes at 1/3), so we use the **largest-remainder rule**: every class gets floor(N * P*), and the
remaining units go to the classes with the largest fractional parts (ties: class order). With
one response per training prompt (the default, N = 100 train prompts) this is the paper's data
size (2,500 UK examples). If N differs from the number of training prompts, responses are
assigned to the prompts in turn.

Steering tokens are *not* written into the data: rows carry class indices and the trainer
renders ``[token; answer]`` for the token set of the method, so one dataset serves every token
variant and the ablations.
"""

from __future__ import annotations

import math
import random

from distalign.core.attributes import Attribute
from distalign.core.seeds import derive_seed
from distalign.data.prompts import answer_forms, render_answer


def largest_remainder(probs: list[float], n: int) -> list[int]:
    """Integer counts summing to ``n`` that are closest to ``n * probs`` (largest-remainder rule)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    s = sum(probs)
    if s <= 0:
        raise ValueError(f"probabilities must have a positive sum, got {probs}")
    quotas = [n * p / s for p in probs]
    counts = [math.floor(q + 1e-9) for q in quotas]
    remainders = [q - c for q, c in zip(quotas, counts, strict=True)]
    left = n - sum(counts)
    order = sorted(range(len(probs)), key=lambda i: (-remainders[i], i))
    for i in order[: max(left, 0)]:
        counts[i] += 1
    return counts


def sample_negative(k: int, a: int, rng: random.Random) -> int:
    """a_neg ~ Uniform(A \\ {a})."""
    if k < 2:
        raise ValueError("need at least two classes to draw a negative")
    j = rng.randrange(k - 1)
    return j if j < a else j + 1


def prompts_by_context(prompts: list[dict], split: str = "train") -> dict[int, list[dict]]:
    """The prompts of one split, grouped by context id (file order kept)."""
    by_ctx: dict[int, list[dict]] = {}
    for p in prompts:
        if p["split"] == split:
            by_ctx.setdefault(p["context_id"], []).append(p)
    return by_ctx


def build_base(
    train_prompts: list[dict],
    targets: list[dict],
    attribute: Attribute,
    bank: dict,
    responses_per_context: int,
    seed: int,
) -> list[dict]:
    by_ctx = prompts_by_context(train_prompts)
    forms = answer_forms(bank, attribute.name)
    rows = []
    for t in targets:
        prompts = by_ctx.get(t["context_id"])
        if not prompts:
            raise ValueError(f"no training prompts for context {t['context']!r}")
        rng = random.Random(derive_seed(seed, "base", attribute.name, t["context"]))
        counts = largest_remainder(t["target"], responses_per_context)
        classes = [k for k, c in enumerate(counts) for _ in range(c)]
        rng.shuffle(classes)
        for i, k in enumerate(classes):
            p = prompts[i % len(prompts)]
            form = rng.choice(forms)
            rows.append(
                {
                    "context_id": t["context_id"],
                    "context": t["context"],
                    "prompt_id": p["prompt_id"],
                    "prompt": p["prompt"],
                    "target": t["target"],
                    "class_index": k,
                    "class": attribute.classes[k].name,
                    "answer_form": form,
                    "answer": render_answer(form, attribute.classes[k].label, t["context"]),
                }
            )
    return rows


def build_sft(base: list[dict]) -> list[dict]:
    """Conversational prompt/completion rows (trl format); the steering token is added by the trainer."""
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["answer"]}],
            "context": r["context"],
            "class_index": r["class_index"],
            "target": r["target"],
        }
        for r in base
    ]


def build_pref(base: list[dict], attribute: Attribute, seed: int) -> list[dict]:
    """One preference row per D_base row: the desirable answer and an undesirable one.

    a_neg ~ Uniform(A \\ {a}); the undesirable answer uses the same answer form as the
    desirable one, so the pair differs only in the class it names.
    """
    rows = []
    for i, r in enumerate(base):
        rng = random.Random(derive_seed(seed, "pref", attribute.name, r["context"], r["prompt_id"], i))
        neg = sample_negative(len(attribute), r["class_index"], rng)
        rows.append(
            {
                **{
                    k: r[k]
                    for k in (
                        "context_id",
                        "context",
                        "prompt_id",
                        "prompt",
                        "target",
                        "class_index",
                        "class",
                        "answer",
                    )
                },
                "neg_class_index": neg,
                "neg_class": attribute.classes[neg].name,
                "neg_answer": render_answer(r["answer_form"], attribute.classes[neg].label, r["context"]),
            }
        )
    return rows
