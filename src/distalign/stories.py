"""D_story: stories labelled by class, so that steering tokens learn to control stories too (not in the paper).

The paper trains the steering tokens on short attribute answers only; at story time the token is
drawn and prepended, but nothing taught the model that "1" means a woman *in a story*, and no
method of the paper controls gender in stories (its Table 2). D_story supplies that binding
without any external data or model:

1. For every context, class counts are ``largest_remainder(P*, story_data.per_context)`` (as for
   D_base). For each needed story of class k, the base model writes ``story_data.oversample``
   candidates for a training story prompt with the class's ``story_hint`` appended
   ("The main character is a woman.").
2. The offline story judge of the attribute (lexicon / VADER) labels every candidate; a candidate
   is kept only when the judge reads the hinted class, so the row's class is what the evaluation's
   judge would say, not what was asked for.
3. Rows carry the prompt *without* the hint, the class index and the story as ``answer``: the
   trainer renders [tau_k; story] like a D_base row, and the steering KL of the second stage also
   sees story prompts.

When fewer candidates than needed pass the judge, the shortfall is logged and recorded in the
summary (``kept`` < ``wanted``); a class with none kept in a context that needs it is listed in
``missing``. Candidates are taken in generation order, so the selection is deterministic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from .attributes import Attribute
from .datasets import largest_remainder, prompts_by_context
from .prompts import derive_seed


class StoryDataError(ValueError):
    pass


def hint_text(prompt: str, hint: str) -> str:
    """The generation prompt of a candidate: the story prompt, then the class hint."""
    return f"{prompt.rstrip()} {hint.strip()}"


def story_requests(prompts: Sequence[dict], targets: Sequence[dict], attribute: Attribute, hints: Sequence[str],
                   per_context: int, oversample: float, seed: int) -> list[dict]:
    """Generation requests for D_story candidates, from the *train* split of the story prompts.

    Every request has the generation fields (``context_id``, ``context``, ``prompt_id``, ``prompt``
    = prompt + hint, ``target``) plus ``class_index``, ``plain_prompt`` (without the hint) and a
    unique ``prompt_id`` per candidate (``<prompt_id>/c<k>/<j>``, so that each candidate gets its own
    sampling seed).
    """
    if len(hints) != len(attribute):
        raise StoryDataError(f"attribute {attribute.name!r}: {len(hints)} story hints for {len(attribute)} classes")
    if per_context < 1 or oversample < 1:
        raise StoryDataError(f"story_data.per_context must be >= 1 and story_data.oversample >= 1, got "
                             f"{per_context} and {oversample}")
    by_ctx = prompts_by_context(list(prompts))
    out = []
    for t in targets:
        pool = by_ctx.get(t["context_id"])
        if not pool:
            raise StoryDataError(f"no training story prompts for context {t['context']!r}")
        rng = random.Random(derive_seed(seed, "story_data", attribute.name, t["context"]))
        order = list(range(len(pool)))
        rng.shuffle(order)
        counts = largest_remainder(t["target"], per_context)
        j = 0
        for k, count in enumerate(counts):
            for c in range(math.ceil(count * oversample)):
                p = pool[order[j % len(pool)]]
                j += 1
                out.append({"context_id": t["context_id"], "context": t["context"],
                            "prompt_id": f"{p['prompt_id']}/c{k}/{c}", "source_prompt_id": p["prompt_id"],
                            "prompt": hint_text(p["prompt"], hints[k]), "plain_prompt": p["prompt"],
                            "target": t["target"], "class_index": k, "wanted": count})
    return out


def select_stories(requests: Sequence[dict], stories: Sequence[str | None], judged: Sequence[str | None],
                   attribute: Attribute) -> tuple[list[dict], dict]:
    """Keep, per (context, class), the first ``wanted`` candidates whose judged class is the hinted one.

    ``stories[i]`` and ``judged[i]`` (a class name or None) belong to ``requests[i]``. Returns the
    D_story rows and a summary: per class wanted / generated / consistent / kept, the contexts where a
    needed class got no story (``missing``) and the overall consistency of the hinted stories.
    """
    if not (len(requests) == len(stories) == len(judged)):
        raise StoryDataError(f"{len(requests)} requests, {len(stories)} stories and {len(judged)} judgements")
    rows: list[dict] = []
    kept: dict[tuple[int, int], int] = {}
    per_class = {c.name: {"wanted": 0, "generated": 0, "consistent": 0, "kept": 0} for c in attribute.classes}
    wanted_seen: set[tuple[int, int]] = set()
    for req, story, label in zip(requests, stories, judged, strict=True):
        k, key = req["class_index"], (req["context_id"], req["class_index"])
        name = attribute.classes[k].name
        if key not in wanted_seen:
            wanted_seen.add(key)
            per_class[name]["wanted"] += req["wanted"]
        per_class[name]["generated"] += 1
        if label != name or not story or not story.strip():
            continue
        per_class[name]["consistent"] += 1
        if kept.get(key, 0) >= req["wanted"]:
            continue
        kept[key] = kept.get(key, 0) + 1
        per_class[name]["kept"] += 1
        rows.append({"context_id": req["context_id"], "context": req["context"],
                     "prompt_id": req["source_prompt_id"], "prompt": req["plain_prompt"], "target": req["target"],
                     "class_index": k, "class": name, "answer": story.strip()})
    missing = sorted({(r["context"], attribute.classes[r["class_index"]].name) for r in requests
                      if r["wanted"] > 0 and kept.get((r["context_id"], r["class_index"]), 0) == 0})
    generated = sum(v["generated"] for v in per_class.values())
    consistent = sum(v["consistent"] for v in per_class.values())
    summary = {"rows": len(rows), "per_class": per_class,
               "hint_consistency": consistent / generated if generated else None,
               "missing": [list(m) for m in missing]}
    return rows, summary
