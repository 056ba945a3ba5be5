import pytest
import yaml

from distalign.core.attributes import attribute_of_dataset
from distalign.data.prompts import (
    ParaphraseError,
    TemplateError,
    build_prompts,
    format_distribution,
    load_templates,
    method_prompt,
    offline_pool,
)
from distalign.data.targets import build_targets, load_census

SPLITS = {"train": 100, "val": 100, "test": 100}


@pytest.fixture()
def bank(repo):
    return load_templates(repo / "resources/prompts/templates.yaml")


def test_bank_has_ten_templates_per_attribute_and_task(bank):
    for task in ("attribute", "story"):
        for attr in ("gender", "race", "sentiment"):
            assert len(set(bank["templates"][task][attr])) >= 10


@pytest.mark.parametrize(
    "dataset,task", [("uk-real", "attribute"), ("race-even", "attribute"), ("sentiment-even", "story")]
)
def test_splits_are_distinct_disjoint_and_mention_the_context(repo, config, bank, dataset, task):
    attr = attribute_of_dataset(config, dataset)
    census = config["datasets"][dataset]["census"]
    targets = build_targets(load_census(repo / f"resources/census/{census}.csv"), attr, "even")
    rows = build_prompts(targets, attr, task, bank, SPLITS, seed=3, census_name=census)
    assert len(rows) == 300 * len(targets)
    for t in targets:
        by_split = {
            s: [r["prompt"] for r in rows if r["context_id"] == t["context_id"] and r["split"] == s]
            for s in SPLITS
        }
        for s, prompts in by_split.items():
            assert len(prompts) == 100 and len(set(prompts)) == 100, s
            assert all(t["context"] in p for p in prompts)
        assert not set(by_split["train"]) & set(by_split["val"])
        assert not set(by_split["train"]) & set(by_split["test"])
        assert not set(by_split["val"]) & set(by_split["test"])


def test_prompts_are_deterministic_and_shared_by_real_and_even(repo, config, bank):
    attr = attribute_of_dataset(config, "uk-real")
    census = load_census(repo / "resources/census/uk.csv")
    real = build_prompts(
        build_targets(census, attr, "real"), attr, "attribute", bank, SPLITS, 5, census_name="uk"
    )
    even = build_prompts(
        build_targets(census, attr, "even"), attr, "attribute", bank, SPLITS, 5, census_name="uk"
    )
    other = build_prompts(
        build_targets(census, attr, "even"), attr, "attribute", bank, SPLITS, 6, census_name="uk"
    )
    assert real == even
    assert real != other


def test_too_small_pool_is_an_error(repo, config, bank):
    attr = attribute_of_dataset(config, "uk-real")
    targets = build_targets(load_census(repo / "resources/census/uk.csv"), attr, "real")[:1]
    pool = offline_pool(bank, "attribute", "gender", targets[0]["context"])
    with pytest.raises(ParaphraseError, match="distinct prompts, need"):
        build_prompts(
            targets, attr, "attribute", bank, {"train": len(pool), "val": 1, "test": 1}, 1, census_name="uk"
        )


def _write_bank(tmp_path, repo, mutate):
    bank = yaml.safe_load((repo / "resources/prompts/templates.yaml").read_text())
    mutate(bank)
    p = tmp_path / "templates.yaml"
    p.write_text(yaml.safe_dump(bank))
    return p


def test_empty_template_bank_is_rejected(tmp_path, repo):
    p = _write_bank(tmp_path, repo, lambda b: b["templates"]["attribute"].__setitem__("gender", []))
    with pytest.raises(TemplateError, match=r"templates\.attribute\.gender: empty template list") as err:
        load_templates(p)
    assert str(p) in str(err.value)


def test_template_without_placeholder_is_rejected(tmp_path, repo):
    p = _write_bank(tmp_path, repo, lambda b: b["templates"]["story"]["gender"].append("Tell me a story."))
    with pytest.raises(TemplateError, match=r"templates\.story\.gender\[\d+\]: must be a string containing"):
        load_templates(p)


def test_missing_attribute_templates_is_a_clear_error(repo, config, bank):
    from distalign.core.attributes import Attribute

    attr = Attribute.from_config(
        "age",
        {
            "classes": [
                {"name": "a", "label": "A", "tokens": {"digits": "0"}},
                {"name": "b", "label": "B", "tokens": {"digits": "1"}},
            ]
        },
    )
    with pytest.raises(TemplateError, match=r"templates\.attribute\.age: no templates"):
        build_prompts(
            [{"context_id": 0, "context": "Pilots"}], attr, "attribute", bank, SPLITS, 1, census_name="x"
        )


def test_prompt_engineering_styles(bank, config):
    attr = attribute_of_dataset(config, "uk-real")
    assert format_distribution(["Male", "Female"], [0.9, 0.1]) == "90% Male and 10% Female"
    assert format_distribution(["A", "B", "C"], [0.5, 0.25, 0.25]) == "50% A, 25% B and 25% C"
    explicit = method_prompt("Q?", "explicit", bank, attr, [0.992, 0.008])
    assert explicit.startswith("Q? ") and "99.2% Male and 0.8% Female" in explicit
    assert method_prompt("Q?", "plain", bank, attr, [0.5, 0.5]) == "Q?"
    assert "real-world" in method_prompt("Q?", "implicit", bank, attr, [0.5, 0.5])
