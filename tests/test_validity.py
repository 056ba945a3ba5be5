"""Validity correction: valid share per steering token on validation labels, and the draw weights."""

import pytest

from distalign.core.attributes import attribute_of_dataset
from distalign.evaluation.validity import MIN_VALID_RATE, ValidityError, read_weights, validity_weights


def _rows(spec):
    """spec: (token, label or None, count)."""
    rows = []
    for tok, label, count in spec:
        rows += [
            {"prompt_id": f"val-0-{len(rows) + i}", "steering_token": tok, "label": label}
            for i in range(count)
        ]
    return rows


@pytest.fixture()
def gender(config):
    return attribute_of_dataset(config, "us-even")


def test_weights_are_inverse_valid_shares(gender):
    # male token ("0"): 57 of 100 valid; female ("1"): 72 of 100 (US-even's stories of the 106-step run)
    out = validity_weights(
        _rows(
            [
                ("0", "male", 50),
                ("0", "female", 7),
                ("0", None, 43),
                ("1", "female", 70),
                ("1", "male", 2),
                ("1", None, 28),
            ]
        ),
        gender,
    )
    assert out["classes"] == ["male", "female"] and out["tokens"] == ["0", "1"]
    assert out["n"] == [100, 100] and out["n_valid"] == [57, 72]
    assert out["valid_rate"] == pytest.approx([0.57, 0.72])
    w = out["weights"]
    assert sum(w) / 2 == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(0.72 / 0.57)
    # drawn with p = [.5, .5] and these weights, the valid answers' tokens are back at [.5, .5]
    q = [0.5 * w[0], 0.5 * w[1]]
    valid = [q[0] * 0.57, q[1] * 0.72]
    assert valid[0] / sum(valid) == pytest.approx(0.5)


def test_floor_and_unseen_class(gender):
    out = validity_weights(_rows([("0", None, 100), ("1", "female", 10)]), gender)
    assert out["valid_rate"] == [0.0, 1.0]
    assert out["weights"][0] / out["weights"][1] == pytest.approx(1 / MIN_VALID_RATE)
    unseen = validity_weights(_rows([("1", "female", 5), ("1", None, 5)]), gender)
    assert unseen["valid_rate"] == [None, 0.5]
    assert unseen["weights"][0] / unseen["weights"][1] == pytest.approx(0.5)  # weight 1 against 1 / .5


def test_bad_rows_are_named(gender):
    with pytest.raises(ValidityError, match=r"val.jsonl: row 1 .* steering token 'x'"):
        validity_weights(_rows([("0", "male", 1), ("x", "male", 1)]), gender, source="val.jsonl")
    with pytest.raises(ValidityError, match="no rows"):
        validity_weights([], gender)


def test_read_weights_checks_the_classes(gender, config):
    data = validity_weights(_rows([("0", "male", 3), ("1", None, 1), ("1", "female", 1)]), gender)
    assert read_weights(data, gender, "w.json") == pytest.approx(data["weights"])
    sentiment = attribute_of_dataset(config, "sentiment-even")
    with pytest.raises(ValidityError, match=r"w.json: weights for classes \['male', 'female'\]"):
        read_weights(data, sentiment, "w.json")
