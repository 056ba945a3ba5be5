"""D_story: candidate requests per (context, class) and the judge-checked selection."""

import pytest

from distalign.core.attributes import Attribute
from distalign.data.stories import StoryCollector, StoryDataError, reachable_mae, story_requests
from distalign.evaluation.judges import LexiconJudge


@pytest.fixture()
def gender(config):
    return Attribute.from_config("gender", config["attributes"]["gender"])


def _prompts(contexts, n=3):
    rows = []
    for cid in contexts:
        for i in range(n):
            rows.append(
                {
                    "context_id": cid,
                    "context": f"job{cid}",
                    "prompt_id": f"{cid}-train-{i}",
                    "split": "train",
                    "prompt": f"Write a story about job{cid} number {i}.",
                }
            )
        rows.append(
            {
                "context_id": cid,
                "context": f"job{cid}",
                "prompt_id": f"{cid}-test-0",
                "split": "test",
                "prompt": "held out",
            }
        )
    return rows


def test_requests_follow_largest_remainder_and_oversample(gender):
    targets = [
        {"context_id": 0, "context": "job0", "target": [0.75, 0.25]},
        {"context_id": 1, "context": "job1", "target": [0.5, 0.5]},
    ]
    hints = ["The main character is a man.", "The main character is a woman."]
    reqs = story_requests(_prompts([0, 1]), targets, gender, hints, per_context=4, oversample=1.5, seed=7)
    per = {}
    for r in reqs:
        per.setdefault((r["context_id"], r["class_index"]), []).append(r)
    # counts 3/1 and 2/2, each times 1.5 rounded up
    assert {k: len(v) for k, v in per.items()} == {(0, 0): 5, (0, 1): 2, (1, 0): 3, (1, 1): 3}
    assert {k: v[0]["wanted"] for k, v in per.items()} == {(0, 0): 3, (0, 1): 1, (1, 0): 2, (1, 1): 2}
    for r in reqs:
        assert r["prompt"] == f"{r['plain_prompt']} {hints[r['class_index']]}"
        assert "held out" not in r["prompt"]  # the train split only
    assert len({r["prompt_id"] for r in reqs}) == len(reqs)  # each candidate has its own sampling seed
    assert reqs == story_requests(
        _prompts([0, 1]), targets, gender, hints, per_context=4, oversample=1.5, seed=7
    )
    with pytest.raises(StoryDataError, match="1 story hints for 2 classes"):
        story_requests(_prompts([0]), targets[:1], gender, hints[:1], per_context=4, oversample=2, seed=7)
    with pytest.raises(StoryDataError, match="no training story prompts for context 'job1'"):
        story_requests(_prompts([0]), targets, gender, hints, per_context=4, oversample=2, seed=7)


def select_stories(
    requests, stories, judged, attribute, targets, per_context, min_words=0, keep_unhinted=False
):
    """One round of StoryCollector: its rows and summary."""
    collector = StoryCollector(targets, attribute, per_context, min_words, keep_unhinted)
    collector.add(requests, stories, judged)
    return collector.rows, collector.summary()


def test_selection_keeps_only_judged_stories_up_to_the_count(gender):
    targets = [
        {"context_id": 0, "context": "job0", "target": [0.5, 0.5]},
        {"context_id": 1, "context": "job1", "target": [1.0, 0.0]},
    ]
    reqs = story_requests(
        _prompts([0, 1]), targets, gender, ["man.", "woman."], per_context=2, oversample=2, seed=1
    )
    # job0: 2 male + 2 female candidates (1 wanted each); job1: 4 male candidates (2 wanted)
    stories = {
        (0, 0): ["She ran.", "He ran, his dog too."],
        (0, 1): ["He sat.", "It rained."],
        (1, 0): ["He left.", "", "Mr Smith and his son.", "He won."],
    }
    seen: dict = {}
    texts = []
    for r in reqs:
        key = (r["context_id"], r["class_index"])
        texts.append(stories[key][seen.get(key, 0)])
        seen[key] = seen.get(key, 0) + 1
    judged = [j.label for j in LexiconJudge(gender).judge(texts)]
    rows, summary = select_stories(reqs, texts, judged, gender, targets, per_context=2)
    assert [(r["context"], r["class"], r["answer"]) for r in rows] == [
        ("job0", "male", "He ran, his dog too."),
        ("job1", "male", "He left."),
        ("job1", "male", "Mr Smith and his son."),
    ]
    assert all("man." not in r["prompt"] for r in rows)  # the hint is not part of the training prompt
    assert summary["per_class"]["male"] == {
        "wanted": 3,
        "generated": 6,
        "consistent": 4,
        "kept": 3,
        "kept_unhinted": 0,
        "judged": 5,
    }
    assert summary["per_class"]["female"] == {
        "wanted": 1,
        "generated": 2,
        "consistent": 0,
        "kept": 0,
        "kept_unhinted": 0,
        "judged": 1,
    }
    assert summary["missing"] == [["job0", "female"]]
    assert summary["hint_consistency"] == pytest.approx(4 / 8)
    # per hint, how the judge read the candidates: the male hint wrote 4 male, 1 female ("She ran.")
    # and 1 empty story; the female hint 1 male ("He sat.") and 1 without a gendered word
    assert summary["hinted_as"] == {
        "male": {"male": 4, "female": 1, "invalid": 1},
        "female": {"male": 1, "female": 0, "invalid": 1},
    }
    # the best mixture of (.8, .2) and (1, 0): job0 (.5, .5) gets (.8, .2), MAE .3; job1 (1, 0) is reached
    reach = summary["hint_reach"]
    assert reach["by_context"] == pytest.approx({"job0": 0.3, "job1": 0.0})
    assert reach["mae"] == pytest.approx(0.15)
    assert reach["hint_distributions"]["male"] == pytest.approx({"male": 0.8, "female": 0.2})
    with pytest.raises(StoryDataError, match="2 requests, 1 stories"):
        select_stories(reqs[:2], texts[:1], judged[:1], gender, targets, per_context=2)
    # a story the judge reads as another class fills that class's open quota when asked to, after
    # the hinted ones: job0's "She ran." (hinted male) becomes its female story
    rows, summary = select_stories(reqs, texts, judged, gender, targets, per_context=2, keep_unhinted=True)
    assert [(r["context"], r["class"], r["hinted_class"], r["answer"]) for r in rows] == [
        ("job0", "male", "male", "He ran, his dog too."),
        ("job1", "male", "male", "He left."),
        ("job1", "male", "male", "Mr Smith and his son."),
        ("job0", "female", "male", "She ran."),
    ]
    assert summary["missing"] == [] and summary["per_class"]["female"]["kept_unhinted"] == 1
    # min_words: a story shorter than the evaluation's minimum is never kept
    rows, summary = select_stories(reqs, texts, judged, gender, targets, per_context=2, min_words=3)
    assert [r["answer"] for r in rows] == ["He ran, his dog too.", "Mr Smith and his son."]
    assert summary["too_short"] == 4  # "She ran.", "He sat.", "He left.", "He won."


def test_rounds_ask_only_for_what_is_short_scaled_by_the_class_yield(gender):
    targets = [
        {"context_id": 0, "context": "job0", "target": [0.5, 0.5]},
        {"context_id": 1, "context": "job1", "target": [0.5, 0.5]},
    ]
    prompts = _prompts([0, 1])
    hints = ["man.", "woman."]
    collector = StoryCollector(targets, gender, per_context=2)
    reqs = story_requests(prompts, targets, gender, hints, per_context=2, oversample=2, seed=3)
    assert len(reqs) == 8
    # every male candidate is male; of the 4 female candidates only job1's first is read as female
    texts = ["He sat." if r["class_index"] == 0 else "It rained." for r in reqs]
    texts[[i for i, r in enumerate(reqs) if (r["context_id"], r["class_index"]) == (1, 1)][0]] = "She sat."
    collector.add(reqs, texts, [j.label for j in LexiconJudge(gender).judge(texts)])
    assert collector.shortfall() == {(0, 1): 1}
    assert collector.class_yield(1) == pytest.approx(1 / 4)
    needed = collector.needed(oversample=2)
    assert needed == {(0, 1): 8}  # 1 story x 2 / yield .25
    again = story_requests(
        prompts, targets, gender, hints, per_context=2, oversample=2, seed=3, needed=needed, round_index=1
    )
    assert [(r["context_id"], r["class_index"]) for r in again] == [(0, 1)] * 8
    assert all("/r1/" in r["prompt_id"] for r in again)
    assert not {r["prompt_id"] for r in again} & {r["prompt_id"] for r in reqs}  # new sampling seeds
    texts = ["It rained."] * 5 + ["Her cat.", "She won.", "It rained."]
    collector.add(again, texts, [j.label for j in LexiconJudge(gender).judge(texts)])
    assert collector.shortfall() == {} and collector.needed(2) == {}
    summary = collector.summary()
    assert summary["rounds"] == 2 and summary["rows"] == 4 and summary["missing"] == []
    assert [r["answer"] for r in collector.rows if r["class"] == "female"] == ["She sat.", "Her cat."]
    # a class the judge never reads costs at most 20 x oversample candidates a story
    empty = StoryCollector(targets, gender, per_context=2)
    empty.add(reqs, ["It rained."] * len(reqs), [None] * len(reqs))
    assert empty.needed(oversample=2) == {(c, k): 40 for c in (0, 1) for k in (0, 1)}


def test_reachable_mae_is_the_distance_to_the_hull_of_the_hinted_distributions():
    # inside the hull: reached exactly, with weights that reproduce the target
    mae, w = reachable_mae([[0.9, 0.1], [0.2, 0.8]], [0.4, 0.6])
    assert mae == pytest.approx(0.0, abs=1e-12)
    assert w[0] * 0.9 + w[1] * 0.2 == pytest.approx(0.4) and sum(w) == pytest.approx(1.0)
    # outside: the nearest end of the segment
    assert reachable_mae([[0.9, 0.1], [0.6, 0.4]], [0.2, 0.8]) == (
        pytest.approx(0.4),
        pytest.approx([0.0, 1.0]),
    )
    # one source: its own MAE
    assert reachable_mae([[0.2, 0.3, 0.5]], [1 / 3, 1 / 3, 1 / 3])[0] == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match="K = 3 classes"):
        reachable_mae([[0.5, 0.5]], [1 / 3, 1 / 3, 1 / 3])


def test_reachable_mae_matches_a_search_over_the_simplex():
    import numpy as np

    rng = np.random.default_rng(0)
    grid = np.array(
        [
            (a, b, 1 - a - b)
            for a in np.linspace(0, 1, 201)
            for b in np.linspace(0, 1, 201)
            if a + b <= 1 + 1e-12
        ]
    )
    for _ in range(20):
        d = rng.dirichlet([0.5, 0.5, 0.5], size=3)
        t = rng.dirichlet([1, 1, 1])
        mae, w = reachable_mae(d, t)
        searched = np.abs(grid @ d - t).mean(axis=1).min()
        assert mae <= searched + 1e-12  # never worse than any mixture tried
        assert mae >= searched - 0.01  # and the grid (step .005) gets within its resolution
        assert np.abs(np.asarray(w) @ d - t).mean() == pytest.approx(mae)
        assert min(w) >= 0 and sum(w) == pytest.approx(1.0)
