"""The rows each training stage reads, pre-tokenized with distalign.modeling.chat: SFT, KTO
(with mismatched companions for the reference point), DPO and NLL rows.
"""

from __future__ import annotations

import random

from distalign.modeling.chat import completion_ids, prompt_ids

VOCABULARIES = ("restricted", "full")


UNDESIRABLE = ("paper", "inconsistent")


def mismatched_companions(contexts: list[str], batch_size: int, seed: int) -> list[int]:
    """For each row i, a row j with ``contexts[j] != contexts[i]`` (for the KTO z0 estimate).

    Rows are grouped in consecutive batches of ``batch_size`` (trl's sequential order). Within a
    batch the first rotation that mismatches every row is used (so the mismatched completions are
    the batch's own completions, as the KTO paper recommends); failing that, each row draws a
    different-context row of its batch, and failing that, of the whole data.
    """
    n = len(contexts)
    if len(set(contexts)) < 2:
        raise ValueError("the KTO reference point needs at least two contexts (mismatched pairs)")
    rng = random.Random(seed)
    out = [0] * n
    for start in range(0, n, batch_size):
        block = list(range(start, min(start + batch_size, n)))
        m = len(block)
        for shift in range(1, m):
            pairs = [block[(k + shift) % m] for k in range(m)]
            if all(contexts[i] != contexts[j] for i, j in zip(block, pairs, strict=True)):
                for i, j in zip(block, pairs, strict=True):
                    out[i] = j
                break
        else:
            for i in block:
                cands = [j for j in block if contexts[j] != contexts[i]]
                while not cands:
                    j = rng.randrange(n)
                    if contexts[j] != contexts[i]:
                        cands = [j]
                out[i] = rng.choice(cands)
    return out


def kto_rows(
    pref: list[dict], tokenizer, steering_ids: list[int], undesirable: str, batch_size: int, seed: int
) -> list[dict]:
    """Pre-tokenized KTO rows from preference rows, in training order.

    desirable = [tau_a; r] (label True); undesirable = [tau_{a_neg}; r_neg] (``paper``) or
    [tau_a; r_neg] (``inconsistent``) (label False). Rows are shuffled once (seeded) and carry
    ``KL_completion_ids`` from a different context (see :func:`mismatched_companions`).
    """
    if undesirable not in UNDESIRABLE:
        raise ValueError(f"unknown undesirable construction {undesirable!r} (expected one of {UNDESIRABLE})")
    rows = []
    for r in pref:
        p = prompt_ids(tokenizer, r["prompt"])
        a, neg = r["class_index"], r["neg_class_index"]
        tau_neg = steering_ids[neg] if undesirable == "paper" else steering_ids[a]
        common = {"prompt_ids": p, "target": [float(x) for x in r["target"]], "context": r["context"]}
        rows.append(
            {
                **common,
                "completion_ids": [steering_ids[a]] + completion_ids(tokenizer, r["answer"]),
                "label": True,
            }
        )
        rows.append(
            {
                **common,
                "completion_ids": [tau_neg] + completion_ids(tokenizer, r["neg_answer"]),
                "label": False,
            }
        )
    random.Random(seed).shuffle(rows)
    comp = mismatched_companions([r["context"] for r in rows], batch_size, seed)
    for r, j in zip(rows, comp, strict=True):
        r["KL_completion_ids"] = rows[j]["completion_ids"]
    return rows


def dpo_rows(pref: list[dict], tokenizer, steering_ids: list[int] | None) -> list[dict]:
    """Pre-tokenized DPO rows: chosen [tau_a; r], rejected [tau_{a_neg}; r_neg] (no tokens if None)."""
    rows = []
    for r in pref:
        a, neg = r["class_index"], r["neg_class_index"]
        chosen = completion_ids(tokenizer, r["answer"])
        rejected = completion_ids(tokenizer, r["neg_answer"])
        if steering_ids is not None:
            chosen, rejected = [steering_ids[a]] + chosen, [steering_ids[neg]] + rejected
        rows.append(
            {
                "prompt_ids": prompt_ids(tokenizer, r["prompt"]),
                "chosen_ids": chosen,
                "rejected_ids": rejected,
                "target": [float(x) for x in r["target"]],
                "context": r["context"],
            }
        )
    return rows


def nll_rows(
    pref: list[dict],
    tokenizer,
    steering_ids: list[int],
    max_length: int | None = None,
    truncate: bool = False,
    bind: bool | None = None,
) -> list[dict]:
    """Pre-tokenized rows of the ``nll`` second stage: [prompt; tau_a; answer], loss on the answer only.

    ``labels`` is -100 on the prompt *and* on the steering token (its distribution is set by L_KL
    alone, against the full target rather than a one-hot draw); ``target`` is the row's P*. A row
    longer than ``max_length`` is an error (a short answer would lose its class) unless
    ``truncate`` (stories: only the ending is lost). ``bind``: None leaves the rows without a
    ``bind`` column; True gives each row its class index there (the story binding term applies to
    it), False gives -1 (it does not). Rows of one dataset must agree on having the column.
    """
    rows = []
    for r in pref:
        p = prompt_ids(tokenizer, r["prompt"])
        a = completion_ids(tokenizer, r["answer"])
        ids, labels = p + [steering_ids[r["class_index"]]] + a, [-100] * (len(p) + 1) + a
        if max_length is not None and len(ids) > max_length and truncate:
            ids, labels = ids[:max_length], labels[:max_length]
        if max_length is not None and len(ids) > max_length:
            raise ValueError(
                f"nll row of context {r['context']!r} has {len(ids)} tokens > training.max_length "
                f"{max_length}: the answer would be cut"
            )
        row = {"input_ids": ids, "labels": labels, "target": [float(x) for x in r["target"]]}
        if bind is not None:
            row["bind"] = int(r["class_index"]) if bind else -1
        rows.append(row)
    return rows


def sft_rows(
    sft: list[dict], tokenizer, steering_ids: list[int] | None, max_length: int | None = None
) -> list[dict]:
    """Pre-tokenized SFT rows (``input_ids``, ``labels`` = -100 on the prompt): completion-only loss.

    With steering ids the completion is [tau_a; answer] (stage 1 of ours), else the answer (IFT).
    """
    rows = []
    for r in sft:
        user = r["prompt"][0]["content"] if isinstance(r["prompt"], list) else r["prompt"]
        answer = r["completion"][0]["content"] if isinstance(r["completion"], list) else r["completion"]
        p = prompt_ids(tokenizer, user)
        c = completion_ids(tokenizer, answer)
        if steering_ids is not None:
            c = [steering_ids[r["class_index"]]] + c
        ids, labels = p + c, [-100] * len(p) + c
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        rows.append({"input_ids": ids, "labels": labels})
    return rows
