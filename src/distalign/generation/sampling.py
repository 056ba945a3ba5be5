"""The pieces both backends share: the restricted softmax over the steering tokens, the seeded
draw and the token weights of the validity correction (EOS handling is in
:mod:`distalign.modeling.chat`, which training's replay answers use too).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from distalign.core.progress import Progress
from distalign.core.seeds import derive_seed
from distalign.generation.job import GenerationError, Job, Sampling
from distalign.modeling.chat import prompt_ids


def restricted_probs(logprobs: Sequence[float]) -> list[float]:
    """Softmax over K log-probs (or logits): the distribution restricted to K tokens."""
    m = max(logprobs)
    e = [math.exp(x - m) for x in logprobs]
    s = sum(e)
    return [x / s for x in e]


def draw_index(probs: Sequence[float], seed: int) -> int:
    """One inverse-CDF draw from ``probs`` with a generator seeded by ``seed``."""
    u = random.Random(seed).random()
    acc = 0.0
    for i, p in enumerate(probs):
        acc += p
        if u < acc:
            return i
    return len(probs) - 1


def weighted_probs(probs: Sequence[float], weights: Sequence[float] | None) -> list[float]:
    """``probs`` reweighted by ``weights`` and renormalised (``probs`` itself without weights)."""
    if weights is None:
        return list(probs)
    w = [p * x for p, x in zip(probs, weights, strict=True)]
    total = sum(w)
    return [x / total for x in w] if total > 0 else list(probs)


def steering_draw_seed(seed_parts: Sequence, prompt_id, sample: int) -> int:
    """Seed of the steering-token draw of one (prompt, sample) of a job with ``seed_parts``
    ([seed, dataset, model, method, task]); ``bench/same_draws.py`` replays these draws."""
    return derive_seed(*seed_parts, "steer", prompt_id, sample)


def first_token_ids(tokenizer, labels: Sequence[str]) -> list[int]:
    """First token id of each label as an answer would start with it; the ids must differ."""
    ids = [tokenizer.encode(lab, add_special_tokens=False)[0] for lab in labels]
    if len(set(ids)) != len(ids):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise GenerationError(
            f"probe: class labels {list(labels)} start with repeated tokens {pieces}; their "
            f"first-token probabilities cannot be told apart"
        )
    return ids


@dataclass
class Guidance:
    """Steering guidance for one ``sample`` call: per prompt, the prompts with each *other* steering
    token and their mixture weights (``distalign.generation.guidance``)."""

    scale: float
    others: list  # per prompt: K - 1 id lists
    weights: list  # per prompt: K - 1 weights summing to 1
    plausibility: float


def steering_distribution(
    backend,
    tokenizer,
    user_texts: Sequence[str],
    steering_ids: Sequence[int],
    progress: Progress | None = None,
):
    """Restricted (renormalised) steering distribution at the first assistant position."""
    lps = backend.next_token_logprobs(
        [prompt_ids(tokenizer, t) for t in user_texts], steering_ids, progress=progress
    )
    return [restricted_probs(lp) for lp in lps], [sum(math.exp(x) for x in lp) for lp in lps]


@dataclass(frozen=True)
class SampleBatch:
    """What a backend's ``sample`` answers: prompts as token ids, one seed each, the sampling settings,
    the job's seed parts (a transformers batch seeds itself from them and its index), the token ids
    whose log-probs at the first answer position are recorded (None: none), and the steering guidance
    (``distalign.generation.guidance``, one entry per prompt; None: off)."""

    prompts: Sequence[Sequence[int]]
    seeds: Sequence[int]
    sampling: Sampling
    seed_parts: Sequence
    first_ids: Sequence[int] | None = None
    guidance: Guidance | None = None


def hinted_prompt(job: Job, request: dict, sample: int) -> tuple[str, str | None]:
    """The user text sent for one (request, sample), and the class its hint asks for (None: the job
    has no hints). A drawn class comes from a generator seeded by the job's seed parts, the prompt
    id, the sample and "hint": the same draw on every backend and on a rerun."""
    hints = job.hints
    if not hints:
        return request["prompt"], None
    if hints["mode"] == "each":
        k = sample % len(hints["classes"])
    else:
        weights = request["target"]
        if hints["weights"] is not None:
            weights = hints["weights"].get(str(request["context_id"]))
            if weights is None:
                raise GenerationError(
                    f"the calibration has no weights for context {request['context_id']} "
                    f"({request['context']!r}): rerun its hint_calibration job"
                )
        k = draw_index(weights, derive_seed(*job.seed_parts, request["prompt_id"], sample, "hint"))
    return f"{request['prompt'].rstrip()} {hints['texts'][k].strip()}", hints["classes"][k]
