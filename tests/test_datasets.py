import random
from collections import Counter

import pytest

from distalign.core.attributes import attribute_of_dataset
from distalign.data.datasets import build_base, build_pref, build_sft, largest_remainder, sample_negative
from distalign.data.prompts import build_prompts, load_templates
from distalign.data.targets import build_targets, load_census


def test_largest_remainder_edge_cases():
    assert largest_remainder([0.99, 0.01], 100) == [99, 1]
    assert largest_remainder([1 / 3] * 3, 100) == [34, 33, 33]
    assert largest_remainder([0.5, 0.5], 3) == [2, 1]
    assert largest_remainder([0.2] * 5, 100) == [20] * 5
    assert largest_remainder([0.992, 0.008], 100) == [99, 1]
    assert largest_remainder([1.0, 0.0], 7) == [7, 0]


def test_largest_remainder_always_sums_to_n():
    rng = random.Random(0)
    for _ in range(2000):
        k = rng.randint(2, 6)
        w = [rng.random() for _ in range(k)]
        probs = [x / sum(w) for x in w]
        n = rng.randint(0, 300)
        counts = largest_remainder(probs, n)
        assert sum(counts) == n
        assert all(abs(c - n * p) < 1 for c, p in zip(counts, probs, strict=True))


def test_negative_sampling_is_uniform_over_the_other_classes():
    rng = random.Random(7)
    k, a, draws = 5, 2, 40000
    counts = Counter(sample_negative(k, a, rng) for _ in range(draws))
    assert a not in counts
    expected = draws / (k - 1)
    chi2 = sum((counts[j] - expected) ** 2 / expected for j in range(k) if j != a)
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


@pytest.fixture()
def uk_real(repo, config):
    attr = attribute_of_dataset(config, "uk-real")
    targets = build_targets(load_census(repo / "resources/census/uk.csv"), attr, "real")
    bank = load_templates(repo / "resources/prompts/templates.yaml")
    prompts = build_prompts(
        targets, attr, "attribute", bank, {"train": 100, "val": 100, "test": 100}, 1, census_name="uk"
    )
    return attr, targets, bank, prompts


def test_base_counts_follow_largest_remainder(uk_real):
    attr, targets, bank, prompts = uk_real
    base = build_base(prompts, targets, attr, bank, 100, seed=1)
    assert len(base) == 2500
    for t in targets:
        rows = [r for r in base if r["context_id"] == t["context_id"]]
        counts = Counter(r["class_index"] for r in rows)
        assert [counts[k] for k in range(2)] == largest_remainder(t["target"], 100)
        assert len({r["prompt_id"] for r in rows}) == 100  # one response per training prompt
        assert all(r["prompt_id"].startswith("train-") for r in rows)
    for r in base:
        assert attr.classes[r["class_index"]].label.lower() in r["answer"].lower()


def test_pref_rows_name_another_class(uk_real):
    attr, targets, bank, prompts = uk_real
    base = build_base(prompts, targets, attr, bank, 100, seed=1)
    pref = build_pref(base, attr, seed=1)
    assert len(pref) == len(base)
    for r in pref:
        assert r["neg_class_index"] != r["class_index"]
        assert attr.classes[r["neg_class_index"]].label.lower() in r["neg_answer"].lower()
    sft = build_sft(base)
    assert sft[0]["prompt"][0]["role"] == "user" and sft[0]["completion"][0]["role"] == "assistant"


def test_datasets_are_deterministic_from_the_seed(uk_real):
    attr, targets, bank, prompts = uk_real
    a = build_base(prompts, targets, attr, bank, 100, seed=1)
    b = build_base(prompts, targets, attr, bank, 100, seed=1)
    c = build_base(prompts, targets, attr, bank, 100, seed=2)
    assert a == b
    assert a != c
    assert build_pref(a, attr, 1) == build_pref(b, attr, 1)
