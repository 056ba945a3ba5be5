"""D_story: stories labelled by class, so that steering tokens learn to control stories too (not in the paper).

The paper trains the steering tokens on short attribute answers only; at story time the token is
drawn and prepended, but nothing taught the model that "1" means a woman *in a story*, and no
method of the paper controls gender in stories (its Table 2). D_story supplies that binding
without any external data or model:

1. For every context, class counts are ``largest_remainder(P*, story_data.per_context)`` (as for
   D_base). For each needed story of class k, the base model writes ``story_data.oversample``
   candidates for a training story prompt with the class's ``story_hint`` appended
   ("The main character is a woman.").
2. The offline story judge of the attribute (lexicon / VADER) labels every candidate. A candidate
   shorter than ``judge.story_min_words`` is never kept (the evaluation would not count it as a
   story). Candidates the judge reads as their hinted class fill the quotas first; with
   ``story_data.keep_unhinted`` a candidate read as another class fills that class's open quota.
   The row's class is always the judged one: what the evaluation's judge would say, not what was
   asked for.
3. While some (context, class) is short, up to ``story_data.rounds`` rounds write more candidates
   for just those pairs, as many as the class's yield so far says a story costs. A rare class needs
   this: VADER reads a base-model story as neutral (no sentiment words) 1-12% of the time whatever
   the hint, so one round of 2 candidates a story kept 1 neutral story of 42 wanted.
4. Rows carry the prompt *without* the hint, the class index and the story as ``answer``: the
   trainer renders [tau_k; story] like a D_base row, and the steering KL of the second stage also
   sees story prompts.

A shortfall left after the last round is logged and recorded in the summary (``kept`` <
``wanted``); a class with none kept in a context that needs it is listed in ``missing``.
Candidates are taken in generation order, so the selection is deterministic.

The candidates also measure what the base model can do when told outright: the summary's
``hinted_as`` counts, per hint, the classes the judge read (and the invalid candidates), and
``hint_reach`` is the lowest MAE any mixture of the hinted prompts reaches on the valid stories
(:func:`reachable_mae`, sampling noise aside). A target the hints cannot reach is one the base model
does not write on request; a method that binds tokens to its stories starts from there.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from distalign.core.attributes import Attribute
from distalign.core.mixtures import mixture_weights
from distalign.core.seeds import derive_seed
from distalign.data.datasets import largest_remainder, prompts_by_context

log = logging.getLogger("distalign.stories")


class StoryDataError(ValueError):
    pass


def reachable_mae(
    distributions: Sequence[Sequence[float]], target: Sequence[float]
) -> tuple[float, list[float]]:
    """The lowest MAE to ``target`` of a mixture of the rows of ``distributions``, and its weights.

    ``distributions`` is H x K (one class distribution per source, e.g. per hinted prompt); the
    mixtures are their convex hull. The linear program and its tie rule (of the weights reaching
    the lowest MAE, those closest to uniform) are :func:`distalign.core.mixtures.mixture_weights`;
    bad input raises its ``MixtureError`` (a ValueError).
    """
    fit = mixture_weights(distributions, target)
    return fit.mae, list(fit.weights)


def hint_text(prompt: str, hint: str) -> str:
    """The generation prompt of a candidate: the story prompt, then the class hint."""
    return f"{prompt.rstrip()} {hint.strip()}"


def story_quotas(targets: Sequence[dict], attribute: Attribute, per_context: int) -> dict[tuple, int]:
    """Stories wanted per (context_id, class index): ``largest_remainder(P*, per_context)``."""
    quotas = {}
    for t in targets:
        for k, count in enumerate(largest_remainder(t["target"], per_context)):
            quotas[(t["context_id"], k)] = count
    return quotas


def story_requests(
    prompts: Sequence[dict],
    targets: Sequence[dict],
    attribute: Attribute,
    hints: Sequence[str],
    per_context: int,
    oversample: float,
    seed: int,
    needed: dict[tuple, int] | None = None,
    round_index: int = 0,
) -> list[dict]:
    """Generation requests for D_story candidates, from the *train* split of the story prompts.

    Every request has the generation fields (``context_id``, ``context``, ``prompt_id``, ``prompt``
    = prompt + hint, ``target``) plus ``class_index``, ``plain_prompt`` (without the hint) and a
    unique ``prompt_id`` per candidate (``<prompt_id>/c<k>/<j>``, and ``<prompt_id>/c<k>/r<r>/<j>``
    in round r > 0, so that each candidate gets its own sampling seed).

    Round 0 writes ``ceil(count * oversample)`` candidates per (context, class); a later round
    writes ``needed[(context_id, k)]`` (what :meth:`StoryCollector.needed` asks for; pairs not in it
    get none).
    """
    if len(hints) != len(attribute):
        raise StoryDataError(
            f"attribute {attribute.name!r}: {len(hints)} story hints for {len(attribute)} classes"
        )
    if per_context < 1 or oversample < 1:
        raise StoryDataError(
            f"story_data.per_context must be >= 1 and story_data.oversample >= 1, got "
            f"{per_context} and {oversample}"
        )
    by_ctx = prompts_by_context(list(prompts))
    quotas = story_quotas(targets, attribute, per_context)
    out = []
    for t in targets:
        pool = by_ctx.get(t["context_id"])
        if not pool:
            raise StoryDataError(f"no training story prompts for context {t['context']!r}")
        parts = ("story_data", attribute.name, t["context"]) + (
            (f"round{round_index}",) if round_index else ()
        )
        rng = random.Random(derive_seed(seed, *parts))
        order = list(range(len(pool)))
        rng.shuffle(order)
        j = 0
        for k in range(len(attribute)):
            count = quotas[(t["context_id"], k)]
            n = math.ceil(count * oversample) if needed is None else needed.get((t["context_id"], k), 0)
            tag = f"c{k}" if not round_index else f"c{k}/r{round_index}"
            for c in range(n):
                p = pool[order[j % len(pool)]]
                j += 1
                out.append(
                    {
                        "context_id": t["context_id"],
                        "context": t["context"],
                        "prompt_id": f"{p['prompt_id']}/{tag}/{c}",
                        "source_prompt_id": p["prompt_id"],
                        "prompt": hint_text(p["prompt"], hints[k]),
                        "plain_prompt": p["prompt"],
                        "target": t["target"],
                        "class_index": k,
                        "wanted": count,
                    }
                )
    return out


class StoryCollector:
    """D_story over one or more rounds of candidates: which to keep, and what the next round needs.

    A candidate is *eligible* when its story has at least ``min_words`` words (the evaluation's
    ``judge.story_min_words``: a shorter text is not a story there either) and the judge gave it a
    class. Within a round, candidates the judge reads as their hinted class fill the (context,
    class) quotas first, in generation order; with ``keep_unhinted``, eligible candidates read as
    another class then fill that class's open quota (the row's class is always the judged one, so
    a neutral story written under a "sad" hint trains the neutral token). Deterministic: the same
    candidates in the same order give the same rows.
    """

    def __init__(
        self,
        targets: Sequence[dict],
        attribute: Attribute,
        per_context: int,
        min_words: int = 0,
        keep_unhinted: bool = False,
    ):
        self.attribute = attribute
        self.quotas = story_quotas(targets, attribute, per_context)
        self.contexts = {t["context_id"]: t["context"] for t in targets}
        self.min_words = int(min_words)
        self.keep_unhinted = bool(keep_unhinted)
        self.rows: list[dict] = []
        self.kept: dict[tuple, int] = {}
        names = [c.name for c in attribute.classes]
        self.per_class = {
            n: {"wanted": 0, "generated": 0, "consistent": 0, "kept": 0, "kept_unhinted": 0, "judged": 0}
            for n in names
        }
        for (_, k), count in self.quotas.items():
            self.per_class[names[k]]["wanted"] += count
        self.targets = {t["context_id"]: [float(x) for x in t["target"]] for t in targets}
        # per hinted class: how the judge read its candidates (a class name, or "invalid")
        self.hinted_as = {n: dict.fromkeys([*names, "invalid"], 0) for n in names}
        self.too_short = 0
        self.rounds = 0

    def _keep(self, req: dict, story: str, k: int) -> None:
        """Add the story as a row of class k unless (context, k) already has its quota."""
        key = (req["context_id"], k)
        if self.kept.get(key, 0) >= self.quotas.get(key, 0):
            return
        self.kept[key] = self.kept.get(key, 0) + 1
        name = self.attribute.classes[k].name
        self.per_class[name]["kept"] += 1
        if k != req["class_index"]:
            self.per_class[name]["kept_unhinted"] += 1
        self.rows.append(
            {
                "context_id": req["context_id"],
                "context": req["context"],
                "prompt_id": req["source_prompt_id"],
                "prompt": req["plain_prompt"],
                "target": req["target"],
                "class_index": k,
                "class": name,
                "hinted_class": self.attribute.classes[req["class_index"]].name,
                "answer": story,
            }
        )

    def add(
        self, requests: Sequence[dict], stories: Sequence[str | None], judged: Sequence[str | None]
    ) -> None:
        """One round: ``stories[i]`` and ``judged[i]`` (a class name or None) belong to ``requests[i]``."""
        if not (len(requests) == len(stories) == len(judged)):
            raise StoryDataError(
                f"{len(requests)} requests, {len(stories)} stories and {len(judged)} judgements"
            )
        names = [c.name for c in self.attribute.classes]
        self.rounds += 1
        unhinted = []
        for req, story, label in zip(requests, stories, judged, strict=True):
            hinted = names[req["class_index"]]
            self.per_class[hinted]["generated"] += 1
            text = (story or "").strip()
            if not text or label not in names:
                self.hinted_as[hinted]["invalid"] += 1
                continue
            if word_count(text) < self.min_words:
                self.too_short += 1
                self.hinted_as[hinted]["invalid"] += 1
                continue
            self.hinted_as[hinted][label] += 1
            self.per_class[label]["judged"] += 1
            if label == hinted:
                self.per_class[hinted]["consistent"] += 1
                self._keep(req, text, req["class_index"])
            elif self.keep_unhinted:
                unhinted.append((req, text, names.index(label)))
        for req, text, k in unhinted:
            self._keep(req, text, k)

    def shortfall(self) -> dict[tuple, int]:
        """Stories still wanted per (context_id, class index), only where some are."""
        return {key: q - self.kept.get(key, 0) for key, q in self.quotas.items() if q > self.kept.get(key, 0)}

    def class_yield(self, k: int) -> float:
        """Eligible candidates read as class k per candidate hinted k so far (how many a story costs)."""
        c = self.per_class[self.attribute.classes[k].name]
        got = c["judged"] if self.keep_unhinted else c["consistent"]
        return got / c["generated"] if c["generated"] else 1.0

    def needed(self, oversample: float, min_yield: float = 0.05) -> dict[tuple, int]:
        """Candidates to write next round: ``ceil(shortfall * oversample / yield)`` per open (context,
        class), the class's yield so far floored at ``min_yield`` (at most 20 x oversample a story)."""
        return {
            key: math.ceil(short * oversample / max(self.class_yield(key[1]), min_yield))
            for key, short in self.shortfall().items()
        }

    def hint_reach(self) -> dict | None:
        """How close the hinted prompts of the base model can get to the targets (None without a
        valid candidate).

        Each hint's class distribution over its valid candidates, pooled over contexts and rounds
        (later rounds only write for the short pairs, so the pool leans to the hard contexts);
        per context the lowest MAE of a mixture of them (:func:`reachable_mae`; the MAE counts
        valid stories only, so reweighting by validity reaches the whole hull), and their mean.
        """
        names = [c.name for c in self.attribute.classes]
        valid = {n: sum(self.hinted_as[n][m] for m in names) for n in names}
        hints = [n for n in names if valid[n]]
        if not hints:
            return None
        dists = [[self.hinted_as[n][m] / valid[n] for m in names] for n in hints]
        by_context = {self.contexts[cid]: reachable_mae(dists, t)[0] for cid, t in self.targets.items()}
        return {
            "mae": float(np.mean(list(by_context.values()))),
            "by_context": by_context,
            "hint_distributions": {
                n: dict(zip(names, d, strict=True)) for n, d in zip(hints, dists, strict=True)
            },
        }

    def summary(self) -> dict:
        """Per class wanted / generated / consistent / judged / kept (and kept_unhinted), the contexts
        where a needed class got no story (``missing``), too-short candidates, rounds run, the
        overall consistency of the hinted stories, per hint the judged classes of its candidates
        (``hinted_as``) and the lowest MAE a mixture of the hints reaches (``hint_reach``)."""
        names = [c.name for c in self.attribute.classes]
        missing = sorted(
            (self.contexts[cid], names[k])
            for (cid, k), q in self.quotas.items()
            if q > 0 and self.kept.get((cid, k), 0) == 0
        )
        generated = sum(v["generated"] for v in self.per_class.values())
        consistent = sum(v["consistent"] for v in self.per_class.values())
        return {
            "rows": len(self.rows),
            "rounds": self.rounds,
            "per_class": self.per_class,
            "too_short": self.too_short,
            "hint_consistency": consistent / generated if generated else None,
            "missing": [list(m) for m in missing],
            "hinted_as": self.hinted_as,
            "hint_reach": self.hint_reach(),
        }


def collect_stories(
    prompts: Sequence[dict],
    targets: Sequence[dict],
    attribute: Attribute,
    *,
    story_data: Mapping,
    hints: Sequence[str],
    seed: int,
    min_words: int,
    write: Callable[[list[dict]], Sequence[str | None]],
    judge: Callable[[Sequence[str | None]], Sequence[str | None]],
    label: str = "D_story",
) -> StoryCollector:
    """The rounds of D_story (steps 1-3 above): write candidates, judge them, keep what fills a quota.

    ``story_data`` is the config section (``per_context``, ``oversample``, ``rounds``,
    ``keep_unhinted``). ``write(requests)`` returns one story per request (the base model through
    ``generate.generate`` in the workflow), ``judge(stories)`` one class name or None per story (the
    attribute's offline story judge): both are passed in so that the loop runs, and is tested,
    without a model. Round 0 writes for every (context, class); each later round only for the pairs
    still short, and the loop stops early once none is. ``label`` prefixes the progress lines.
    """
    per_context, oversample = int(story_data["per_context"]), float(story_data["oversample"])
    rounds = int(story_data["rounds"])
    collector = StoryCollector(
        targets, attribute, per_context, min_words=min_words, keep_unhinted=story_data["keep_unhinted"]
    )
    for round_index in range(rounds):
        needed = None if round_index == 0 else collector.needed(oversample)
        if needed == {}:
            break
        requests = story_requests(
            prompts,
            targets,
            attribute,
            hints,
            per_context,
            oversample,
            seed,
            needed=needed,
            round_index=round_index,
        )
        log.info(
            "%s round %d (of at most %d): %d candidate stories", label, round_index + 1, rounds, len(requests)
        )
        stories = list(write(requests))
        if len(stories) != len(requests):
            raise StoryDataError(
                f"{label} round {round_index + 1}: {len(requests)} candidate requests got "
                f"{len(stories)} stories"
            )
        collector.add(requests, stories, list(judge(stories)))
        log.info(
            "round %d: %d stories kept, %d still wanted",
            round_index + 1,
            len(collector.rows),
            sum(collector.shortfall().values()),
        )
    return collector


def word_count(text: str | None) -> int:
    return len(str(text or "").split())
