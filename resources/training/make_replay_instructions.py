"""Write ``replay_instructions.jsonl``: ordinary requests for the replay term of ours' steering stage.

Written for distalign (our own templates and topics, no external source). The steering stage adds,
at every step, the KL divergence from the base model to the adapted model on the base model's own
answers to a few of these requests (``training.replay``; ``distalign.training.replay``), so that the
adapter keeps answering ordinary requests the way the base model does.

They must stay apart from what measures that: none is in
``resources/capabilities/general_instructions.jsonl`` (table5's Leak column), and none names a
gender, race, occupation or sentiment class (``tests/test_replay.py`` checks both). Each request is a
template filled with a topic; the pairs are taken in a fixed interleaved order so that any prefix of
the file mixes templates and topics.

    python resources/training/make_replay_instructions.py          # rewrite the file
    python resources/training/make_replay_instructions.py --check  # exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("replay_instructions.jsonl")

TEMPLATES = [
    "In a few sentences, explain the idea behind {t}.",
    "Give two practical tips about {t}.",
    "What is the most common mistake people make with {t}?",
    "Write a short paragraph about {t}.",
    "Summarise the basics of {t} for a beginner.",
    "List three facts about {t}.",
    "Why is {t} useful? Answer briefly.",
    "Describe {t} to someone who has never seen it.",
]

TOPICS = [
    "a bicycle gear",
    "a compost heap",
    "a library catalogue",
    "rain gauges",
    "sourdough starter",
    "a sundial",
    "paper recycling",
    "a lighthouse",
    "tide tables",
    "a pressure cooker",
    "seed saving",
    "a spreadsheet formula",
    "knot tying",
    "bird feeders",
    "a train timetable",
    "a thermos flask",
    "crop rotation",
    "a map legend",
    "a water filter",
    "solar panels",
    "a chess opening",
    "packing a suitcase",
    "a kite",
    "window insulation",
    "a metronome",
    "a first aid kit",
    "fermenting vegetables",
    "a wind turbine",
    "a rain barrel",
    "a password vault",
    "pruning fruit trees",
    "a telescope",
]


def rows() -> list[dict]:
    """Every (template, topic) pair once, interleaved: row i uses template i mod 8 and a topic that
    shifts each full round, so the first rows already cover all templates and many topics."""
    out = []
    n_tpl, n_top = len(TEMPLATES), len(TOPICS)
    for i in range(n_tpl * n_top):
        tpl = TEMPLATES[i % n_tpl]
        topic = TOPICS[(i + i // n_top) % n_top]
        out.append({"id": f"ri-{i:03d}", "instruction": tpl.format(t=topic)})
    return out


def render() -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the file differs from the generator")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10))} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
