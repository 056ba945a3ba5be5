"""Judge check: a story judge against a person's labels, and the story MAE that reading costs."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from distalign.core.attributes import attributes_from_config
from distalign.evaluation.judge_check import (
    JudgeCheckError,
    confusion_matrix,
    faithful_mae,
    judge_check,
    judge_labels,
    judge_reach,
    read_labelled_stories,
)
from distalign.evaluation.judges import VaderJudge
from distalign.report.tables import judge_check_table, to_markdown

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config/config.yaml").read_text())
SENTIMENT = attributes_from_config(CONFIG)["sentiment"]
GENDER = attributes_from_config(CONFIG)["gender"]
NAMES = ["positive", "negative", "neutral"]
UNIFORM = [[1 / 3] * 3]


def _write(tmp_path, lines):
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "A good day.", "label": "positive"}', "{not json"], r"labelled\.jsonl, line 2: not JSON"),
        (['{"text": "", "label": "positive"}'], r"line 1: key 'text' must be a non-empty string"),
        (['{"label": "positive"}'], r"line 1: key 'text' must be a non-empty string"),
        (
            ['{"text": "A day.", "label": "happy"}'],
            r"line 1: key 'label' is 'happy'; expected one of the classes of "
            r"attribute 'sentiment'",
        ),
        (['["A day.", "positive"]'], r"line 1: expected an object"),
        ([""], r"labelled\.jsonl: no labelled stories"),
        (['{"text": "A day."}'], r"line 1: key 'label' is missing; .*or null"),
    ],
)
def test_a_bad_labelled_file_names_the_line_and_key(tmp_path, lines, message):
    with pytest.raises(JudgeCheckError, match=message):
        read_labelled_stories(_write(tmp_path, lines), SENTIMENT)


def test_the_shipped_sentiment_check_is_valid():
    rows = read_labelled_stories(ROOT / CONFIG["attributes"]["sentiment"]["judge_check"], SENTIMENT)
    assert len(rows) == 80 and {r["label"] for r in rows} == set(NAMES)


def test_a_judge_that_reads_like_the_reader_costs_nothing():
    conf = confusion_matrix(NAMES * 4, NAMES * 4, NAMES)
    assert conf.tolist() == [[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]]
    assert faithful_mae(conf, UNIFORM) == 0.0
    assert judge_reach(conf, UNIFORM)[0] == pytest.approx(0.0, abs=1e-12)


def test_a_judge_that_reads_everything_as_positive():
    conf = confusion_matrix(NAMES, ["positive"] * 3, NAMES)
    # every mix is judged (1, 0, 0): |1 - 1/3| + 1/3 + 1/3 over 3 classes
    assert faithful_mae(conf, UNIFORM) == pytest.approx(4 / 9)
    assert judge_reach(conf, UNIFORM)[0] == pytest.approx(4 / 9)


def test_faithful_mae_and_reach_by_hand():
    """Two classes; the judge reads a reader's 'a' as 'a', and a reader's 'b' half as 'a', half as 'b'.
    A generator writing the target (.5, .5) is judged (.75, .25): MAE .25. Writing only 'b' stories is
    judged (.5, .5): the reach is 0 with the mix (0, 1). An invalid verdict is left out of R."""
    names = ["a", "b"]
    conf = confusion_matrix(["a", "a", "b", "b", "b"], ["a", "a", "a", "b", None], names)
    assert conf.tolist() == [[2, 0, 0], [1, 1, 1]]
    assert faithful_mae(conf, [[0.5, 0.5]]) == pytest.approx(0.25)
    reach, mixes = judge_reach(conf, [[0.5, 0.5], [0.9, 0.1]])
    # second context: (.9, .1) = .8 (1, 0) + .2 (.5, .5) is reachable too
    assert reach == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(mixes[0], [0, 1]) and np.allclose(mixes[1], [0.8, 0.2])


def test_a_reader_class_the_judge_never_scored_leaves_the_faithful_mae_undefined():
    conf = confusion_matrix(["a", "b"], ["a", None], ["a", "b"])
    assert np.isnan(faithful_mae(conf, [[0.5, 0.5]]))
    reach, mixes = judge_reach(conf, [[0.5, 0.5]])
    assert reach == pytest.approx(0.5) and mixes == [[1.0, 0.0]]


def test_short_stories_are_invalid_before_the_judge_reads_them():
    judge = VaderJudge(SENTIMENT)
    texts = ["Great!", "She was happy and proud of the wonderful team she led every day at work."]
    assert judge_labels(texts, judge, SENTIMENT, min_words=5) == [None, "positive"]
    assert judge_labels(texts, judge, SENTIMENT, min_words=0) == ["positive", "positive"]


def test_judge_check_of_vader_on_constructed_stories():
    judge = VaderJudge(SENTIMENT)
    rows = [
        {"text": "She loved her job and was proud and happy with the wonderful team.", "label": "positive"},
        {"text": "He hated the awful shift; it was a terrible, miserable, sad day.", "label": "negative"},
        {"text": "The clerk filed the forms at nine and closed the office at five.", "label": "neutral"},
        {
            "text": "The nurse checked the charts, and the results were good, great and fine.",
            "label": "neutral",
        },
        {"text": "Too short.", "label": "neutral"},
    ]
    targets = [{"target": [1 / 3] * 3}, {"target": [0.5, 0.25, 0.25]}]
    out = judge_check(rows, SENTIMENT, judge, targets, min_words=4, seed=3, bootstrap=200)
    assert out["confusion"] == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1]]
    assert out["agreement"] == pytest.approx(3 / 5) and out["n_invalid"] == 1
    assert out["recall"] == {"positive": 1.0, "negative": 1.0, "neutral": pytest.approx(1 / 3)}
    # R: positive (1,0,0), negative (0,1,0), neutral (.5,0,.5) over the valid verdicts
    r = np.array([[1, 0, 0], [0, 1, 0], [0.5, 0, 0.5]])
    expected = np.mean([np.abs(np.array(t["target"]) @ r - t["target"]).mean() for t in targets])
    assert out["faithful_mae"] == pytest.approx(expected)
    assert out["judge_reach"] == pytest.approx(0.0, abs=1e-9)  # writing more neutral stories fixes it
    low, high = out["faithful_mae_ci"]
    assert low <= high
    again = judge_check(rows, SENTIMENT, judge, targets, min_words=4, seed=3, bootstrap=200)
    assert again == out  # the bootstrap is seeded


def test_stories_the_reader_gives_no_class(tmp_path):
    """A null label is a story the reader can tell no class in: outside R (a faithful generator writes
    classes), counted in ``unclassed``, agreeing with the judge only when the judge leaves it invalid."""
    from distalign.evaluation.judges import LexiconJudge

    lines = [
        '{"text": "She ran the ward and her team trusted her.", "label": "female"}',
        '{"text": "He fixed the engine and his boss thanked him.", "label": "male"}',
        '{"text": "I fixed the engine and the boss thanked me.", "label": null}',
        '{"text": "I fixed the engine and my boss thanked me, he said.", "label": null}',
        '{"text": "Mrs Lee said the nurse was tired; she slept.", "label": "female"}',
    ]
    rows = read_labelled_stories(_write(tmp_path, lines), GENDER)
    assert [r["label"] for r in rows][2:4] == [None, None]
    out = judge_check(rows, GENDER, LexiconJudge(GENDER), [{"target": [0.5, 0.5]}], seed=1, bootstrap=50)
    male, female = GENDER.names.index("male"), GENDER.names.index("female")
    assert out["n_unclassed"] == 2 and out["n_stories"] == 5
    unclassed = [0, 0, 0]
    unclassed[male], unclassed[-1] = 1, 1  # "he said" reads as male; no gendered word: invalid
    assert out["unclassed"] == unclassed
    assert out["n_invalid"] == 1 and out["agreement"] == pytest.approx(4 / 5)  # 3 on the diagonal + 1 invalid
    assert out["confusion"][male][male] == 1 and out["confusion"][female][female] == 2
    # the judge's valid verdicts count the unclassed "he said" story: male 2 of 4
    assert out["judge_shares"] == {"male": 0.5, "female": 0.5}
    assert out["faithful_mae"] == pytest.approx(0.0)  # R is the identity on the classed stories
    df = judge_check_table([{"dataset": "us-even", "check": out}], CONFIG)
    assert df.iloc[0]["No class"] == 2 and df.iloc[0]["No class, judged a class"] == 1


def test_judge_check_table_reads_the_check():
    def per_class(values):
        return dict(zip(NAMES, values, strict=True))

    check = {
        "classes": NAMES,
        "judge": "vader",
        "n_stories": 80,
        "reader_shares": per_class([0.3, 0.3, 0.4]),
        "judge_shares": per_class([0.6, 0.25, 0.15]),
        "agreement": 0.5,
        "kappa": 0.3,
        "recall": per_class([0.9, 0.6, None]),
        "faithful_mae": 0.17,
        "faithful_mae_ci": [0.12, 0.22],
        "judge_reach": 0.09,
        "reach_mixes": [[0, 0.65, 0.35], [0, 0.65, 0.35]],
    }
    df = judge_check_table([{"dataset": "sentiment-even", "check": check}], CONFIG)
    row = df.iloc[0]
    assert row["Dataset"] == CONFIG["datasets"]["sentiment-even"]["title"]
    assert row["Recall"] == ".90 / .60 / –" and row["Reach mix"] == ".00 / .65 / .35"
    md = to_markdown(df)
    assert "| .170 [.120, .220] |" in md and "| 80 |" in md and "Model" not in md
    check["reach_mixes"] = [[0, 0.65, 0.35], [0.1, 0.6, 0.3]]
    assert (
        judge_check_table([{"dataset": "sentiment-even", "check": check}], CONFIG).iloc[0]["Reach mix"]
        == "per context"
    )
