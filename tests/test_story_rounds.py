"""The D_story rounds loop (``stories.collect_stories``) with a fake writer and judge: no model."""

import pytest

from distalign.core.attributes import Attribute
from distalign.data.stories import StoryDataError, collect_stories, story_quotas

HINTS = ["The main character is a man.", "The main character is a woman."]
TARGETS = [
    {"context_id": 0, "context": "job0", "target": [0.75, 0.25]},
    {"context_id": 1, "context": "job1", "target": [0.5, 0.5]},
]


@pytest.fixture()
def gender(config):
    return Attribute.from_config("gender", config["attributes"]["gender"])


def _prompts():
    return [
        {
            "context_id": cid,
            "context": f"job{cid}",
            "prompt_id": f"{cid}-train-{i}",
            "split": "train",
            "prompt": f"Write a story about job{cid} number {i}.",
        }
        for cid in (0, 1)
        for i in range(3)
    ]


class FakeModel:
    """Writes the hinted class's name as its story, except that the first ``fail`` candidates hinted
    ``female`` come out with no character (judged invalid); records every round's requests."""

    def __init__(self, fail=0):
        self.fail, self.rounds = fail, []

    def write(self, requests):
        self.rounds.append(list(requests))
        out = []
        for r in requests:
            if r["class_index"] == 1 and self.fail > 0:
                self.fail -= 1
                out.append("nobody")
            else:
                out.append(["male", "female"][r["class_index"]])
        return out


def _judge(stories):
    return [s if s in ("male", "female") else None for s in stories]


def _collect(gender, model, rounds=3, oversample=1.0, **kw):
    cfg = {"per_context": 4, "oversample": oversample, "rounds": rounds, "keep_unhinted": False}
    return collect_stories(
        _prompts(),
        TARGETS,
        gender,
        story_data=cfg,
        hints=HINTS,
        seed=7,
        min_words=0,
        write=kw.pop("write", model.write),
        judge=kw.pop("judge", _judge),
        **kw,
    )


def test_one_round_when_the_first_fills_every_quota(gender):
    model = FakeModel()
    collector = _collect(gender, model)
    assert len(model.rounds) == 1
    assert collector.shortfall() == {}
    assert collector.summary()["rounds"] == 1
    assert len(collector.rows) == 8  # 4 per context


def test_later_rounds_write_only_for_the_short_pairs(gender):
    # class female is wanted 1 + 2 = 3 times; its first 3 candidates fail, so round 0 keeps none of them
    model = FakeModel(fail=3)
    collector = _collect(gender, model)
    assert len(model.rounds) == 2
    assert {r["class_index"] for r in model.rounds[1]} == {1}
    assert {(r["context_id"], r["class_index"]) for r in model.rounds[1]} == {(0, 1), (1, 1)}
    assert collector.shortfall() == {}
    kept = {}
    for row in collector.rows:
        key = (row["context_id"], row["class_index"])
        kept[key] = kept.get(key, 0) + 1
    assert kept == {key: n for key, n in story_quotas(TARGETS, gender, 4).items() if n}


def test_the_last_round_leaves_the_shortfall_in_the_summary(gender):
    model = FakeModel(fail=100)
    collector = _collect(gender, model, rounds=2)
    assert len(model.rounds) == 2
    summary = collector.summary()
    assert summary["per_class"]["female"]["kept"] == 0 and summary["per_class"]["female"]["wanted"] == 3
    assert sorted(map(tuple, summary["missing"])) == [("job0", "female"), ("job1", "female")]


def test_a_writer_that_loses_stories_is_an_error(gender):
    with pytest.raises(StoryDataError, match="got 1 stories"):
        _collect(gender, FakeModel(), write=lambda requests: ["male"])
