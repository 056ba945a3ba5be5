"""Metrics against hand-computed values, bootstrap reproducibility and the paper's noise floors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

import distalign.evaluation.metrics as M
from distalign.core.attributes import attribute_of_dataset, attributes_from_config
from distalign.data.targets import build_targets, load_census

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    with open(ROOT / "config" / "config.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def gender(config):
    return attributes_from_config(config)["gender"]


def _rows(cid, labels, target):
    return [{"context_id": cid, "label": lab, "target": target, "response": str(lab)} for lab in labels]


@pytest.fixture
def two_contexts():
    targets = [
        {"context_id": 0, "context": "nurses", "target": [0.7, 0.3]},
        {"context_id": 1, "context": "pilots", "target": [0.5, 0.5]},
    ]
    rows = _rows(0, ["male"] * 6 + ["female"] * 2 + [None] * 2, [0.7, 0.3]) + _rows(
        1, ["female"] * 4, [0.5, 0.5]
    )
    return rows, targets


def test_per_context_values(gender, two_contexts):
    rows, targets = two_contexts
    out = M.compute_metrics(rows, targets, gender, seed=1, bootstrap=200)
    c0, c1 = out["contexts"]
    assert c0["p_hat"] == pytest.approx([0.75, 0.25])
    assert (c0["n_total"], c0["n_valid"], c0["n_invalid"]) == (10, 8, 2)
    assert c0["counts"] == {"male": 6, "female": 2}
    assert c0["mae"] == pytest.approx(0.05)
    assert c0["kl"] == pytest.approx(0.7 * math.log(0.7 / 0.75) + 0.3 * math.log(0.3 / 0.25), abs=1e-8)
    m = [(0.7 + 0.75) / 2, (0.3 + 0.25) / 2]
    js0 = 0.5 * (0.7 * math.log2(0.7 / m[0]) + 0.3 * math.log2(0.3 / m[1])) + 0.5 * (
        0.75 * math.log2(0.75 / m[0]) + 0.25 * math.log2(0.25 / m[1])
    )
    assert c0["js"] == pytest.approx(js0)
    assert c1["p_hat"] == [0.0, 1.0]
    assert c1["mae"] == pytest.approx(0.5)
    assert c1["kl"] == pytest.approx(0.5 * math.log(0.5 / 1e-10) + 0.5 * math.log(0.5))
    assert c1["js"] == pytest.approx(0.5 * (0.5 + 0.5 * math.log2(0.5 / 0.75)) + 0.5 * math.log2(1 / 0.75))
    s = out["summary"]
    assert s["mae"] == pytest.approx(0.275)
    assert s["mae_sd"] == pytest.approx(0.225)  # population SD of (0.05, 0.5)
    assert s["invalid_rate"] == pytest.approx(2 / 14)
    assert (s["n_total"], s["n_valid"], s["n_invalid"]) == (14, 12, 2)
    assert s["kl_sum"] == pytest.approx(c0["kl"] + c1["kl"])
    assert s["target_mismatch_rows"] == 0
    assert out["agreement"] is None and out["steering"] is None
    json.dumps(out)  # JSON-serialisable


def test_context_without_valid_labels(gender):
    targets = [
        {"context_id": 0, "context": "a", "target": [0.8, 0.2]},
        {"context_id": 1, "context": "b", "target": [0.5, 0.5]},
    ]
    rows = _rows(0, [None, None, None], [0.8, 0.2])
    out = M.compute_metrics(rows, targets, gender, seed=0, bootstrap=50)
    c0, c1 = out["contexts"]
    assert c0["p_hat"] == [0.0, 0.0] and c0["mae"] == pytest.approx(0.5)  # MAE = mean target
    assert c0["js"] is None and c0["n_invalid"] == 3
    assert c1["n_total"] == 0 and c1["mae"] == pytest.approx(0.5)  # a target context without rows
    assert out["summary"]["contexts_without_valid"] == 2
    assert out["summary"]["noise_floor"] is None


def test_unknown_label_or_context_raises(gender):
    targets = [{"context_id": 0, "context": "a", "target": [0.5, 0.5]}]
    with pytest.raises(ValueError, match="not a class"):
        M.compute_metrics(_rows(0, ["robot"], [0.5, 0.5]), targets, gender, seed=0, bootstrap=0)
    with pytest.raises(ValueError, match="no target"):
        M.compute_metrics(_rows(7, ["male"], [0.5, 0.5]), targets, gender, seed=0, bootstrap=0)


def test_bootstrap_contains_estimate_and_is_seeded(gender):
    rng = np.random.default_rng(5)
    targets, rows = [], []
    for cid in range(5):
        t = [0.6, 0.4]
        targets.append({"context_id": cid, "context": f"c{cid}", "target": t})
        labs = rng.choice(["male", "female", None], size=100, p=[0.55, 0.4, 0.05]).tolist()
        rows += _rows(cid, labs, t)
    a = M.compute_metrics(rows, targets, gender, seed=11)
    b = M.compute_metrics(rows, targets, gender, seed=11)
    c = M.compute_metrics(rows, targets, gender, seed=12)
    s = a["summary"]
    assert s["mae_ci_low"] < s["mae"] < s["mae_ci_high"]
    assert a["bootstrap"] == b["bootstrap"]
    assert a["bootstrap"]["ci_low"] != c["bootstrap"]["ci_low"]
    assert a["bootstrap"]["resamples"] == 1000
    two = M.compute_metrics(rows, targets, gender, seed=11, two_level=True)
    assert (
        two["bootstrap"]["two_level"]
        and two["summary"]["mae_ci_low"] < s["mae"] < two["summary"]["mae_ci_high"]
    )
    assert two["bootstrap"] == M.compute_metrics(rows, targets, gender, seed=11, two_level=True)["bootstrap"]


def test_noise_floor_exact_small_cases():
    assert M.expected_mae_ideal([0.5, 0.5], 1) == (pytest.approx(0.5), "exact")
    # N=2, p*=(0.7, 0.3): female count 0/1/2 with prob .49/.42/.09, |share - 0.3| = .3/.2/.7
    v, how = M.expected_mae_ideal([0.7, 0.3], 2)
    assert how == "exact" and v == pytest.approx(0.49 * 0.3 + 0.42 * 0.2 + 0.09 * 0.7)
    assert M.expected_mae_ideal([1.0, 0.0], 10)[0] == pytest.approx(0.0)
    assert len(M._compositions(5, 3)) == math.comb(7, 2)


def test_noise_floor_monte_carlo_matches_exact(monkeypatch):
    exact, _ = M.expected_mae_ideal([0.5, 0.3, 0.2], 30)
    monkeypatch.setattr(M, "EXACT_LIMIT", 0)
    mc, how = M.expected_mae_ideal([0.5, 0.3, 0.2], 30, rng=np.random.default_rng(3))
    assert how == "monte-carlo" and mc == pytest.approx(exact, abs=0.002)


@pytest.mark.parametrize(
    "dataset, paper",
    [
        ("uk-real", 0.031),
        ("us-real", 0.032),
        ("uk-even", 0.040),
        ("us-even", 0.040),
        ("race-even", 0.032),
        ("sentiment-even", 0.038),
    ],
)
def test_noise_floor_matches_paper(config, dataset, paper):
    spec = config["datasets"][dataset]
    attr = attribute_of_dataset(config, dataset)
    targets = build_targets(load_census(ROOT / config["census"][spec["census"]]), attr, spec["target"])
    nf = M.noise_floor([t["target"] for t in targets], 100, seed=0)
    assert nf["mean"] == pytest.approx(paper, abs=0.002)


def test_agreement_and_steering(config):
    attr = attributes_from_config(config)["gender"]
    targets = [{"context_id": 0, "context": "a", "target": [0.6, 0.4]}]
    rows = []
    spec = [
        ("0", [0.7, 0.3], "male"),
        ("0", [0.5, 0.5], "male"),
        ("1", [0.4, 0.6], "female"),
        ("1", [0.6, 0.4], "male"),
        (" 0", [0.8, 0.2], None),
    ]
    for tok, probs, lab in spec:
        rows.append(
            {
                "context_id": 0,
                "label": lab,
                "label_lexicon": lab,
                "label_llm": "male",
                "steering_token": tok,
                "steering_probs": probs,
                "target": [0.6, 0.4],
            }
        )
    out = M.compute_metrics(rows, targets, attr, seed=0, bootstrap=20)
    st = out["steering"]
    ctx = st["contexts"][0]
    assert ctx["mean_steering_prob"] == pytest.approx([0.6, 0.4])
    assert ctx["token_freq"] == pytest.approx([0.6, 0.4])
    assert ctx["generated_freq"] == pytest.approx([0.75, 0.25])
    assert st["consistency"] == pytest.approx(3 / 4) and st["n_checked"] == 4
    assert st["mae_prob_vs_target"] == pytest.approx(0.0)
    # the invalid answer had token 0: valid rows' tokens are [.5, .5] against [.6, .4] for all rows
    assert ctx["valid_token_freq"] == pytest.approx([0.5, 0.5])
    assert st["mae_valid_token_vs_token"] == pytest.approx(0.1)
    assert st["invalid_by_token"] == pytest.approx({"male": 1 / 3, "female": 0.0})
    ag = out["agreement"]
    assert ag["raw_agreement"] == pytest.approx(3 / 5)
    # lexicon: male 3, female 1, None 1; llm: male 5 -> p_e = 3/5; p_o = 3/5 -> kappa 0
    assert ag["kappa"] == pytest.approx(0.0)
    json.dumps(out)


def test_invalid_skew_undefined_without_valid_answers(config):
    """A context whose answers are all invalid has no valid-token frequencies: no skew, not a fake one."""
    attr = attributes_from_config(config)["gender"]
    targets = [{"context_id": 0, "context": "a", "target": [0.5, 0.5]}]
    rows = [
        {
            "context_id": 0,
            "label": None,
            "steering_token": tok,
            "steering_probs": [0.5, 0.5],
            "target": [0.5, 0.5],
        }
        for tok in ("0", "1", "1")
    ]
    st = M.compute_metrics(rows, targets, attr, seed=0, bootstrap=5)["steering"]
    assert st["contexts"][0]["valid_token_freq"] is None
    assert st["mae_valid_token_vs_token"] is None
    assert st["invalid_by_token"] == {"male": 1.0, "female": 1.0}
