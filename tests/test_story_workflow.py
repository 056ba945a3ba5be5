"""D_story end to end on the embedded model: story_data -> train (ours-story) -> story generation."""

import json

import pytest
import yaml

from distalign.core.attributes import Attribute
from distalign.evaluation.judges import LexiconJudge
from distalign.training.runner import _sha256

TINY_STORY = {
    "census": {"tiny": "resources/census/tiny.csv"},
    "datasets": {"tiny-real": {"attribute": "gender", "census": "tiny", "target": "real"}},
    "run": {"datasets": ["tiny-real"], "methods": ["ours-story"], "tasks": ["story"]},
    "prompts": {"per_split": {"train": 4, "val": 4, "test": 4}},
    "data": {"responses_per_context": 4},
    "story_data": {"per_context": 4, "oversample": 2},
    "training": {
        "sft": {"epochs": 1, "batch_size": 8},
        "preference": {"epochs": 1, "batch_size": 8},
        "max_length": 128,
        "logging_steps": 1,
    },
    "generation": {"batch_size": 8, "max_new_tokens": {"attribute": 16, "story": 48}},
    "metrics": {"bootstrap": 50},
    "report": {"artefacts": ["table2"]},
    # a few steering steps on these rows, not the 252 of the config; the draw corrected for invalid stories
    "methods": {
        "ours-story": {
            "train_overrides": {"preference": {"min_steps": None}},
            "validity_correction": ["story"],
        }
    },
}
METRICS = "results/metrics/tiny-real/smollm2-135m-instruct/ours-story/story.json"


def test_story_data_job_feeds_the_training_of_story_methods(workdir, snakemake_run):
    (workdir / "config/tiny.yaml").write_text(yaml.safe_dump(TINY_STORY))
    (workdir / "resources/census/tiny.csv").write_text(
        "occupation,group,male,female,year,source\nCivil engineers,Engineering,90,10,2024,test\n"
    )
    proc = snakemake_run(workdir, "-n", "--configfile", "config/tiny.yaml", "--", METRICS, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "rule story_data:" in proc.stdout
    assert (
        "results/datasets/tiny-real/smollm2-135m-instruct/stories.jsonl"
        in proc.stdout.split("rule train:")[1]
    )
    # plain ours does not need D_story
    plain = snakemake_run(
        workdir,
        "-n",
        "--configfile",
        "config/tiny.yaml",
        "--",
        "results/adapters/tiny-real/smollm2-135m-instruct/ours",
        timeout=300,
    )
    assert plain.returncode == 0 and "rule story_data:" not in plain.stdout, plain.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.vllm
def test_story_method_trains_on_judged_stories(workdir, snakemake_run, config):
    (workdir / "config/tiny.yaml").write_text(yaml.safe_dump(TINY_STORY))
    (workdir / "resources/census/tiny.csv").write_text(
        "occupation,group,male,female,year,source\n"
        "Civil engineers,Engineering,90,10,2024,test\n"
        "Registered nurses,Health,15,85,2024,test\n"
    )
    proc = snakemake_run(
        workdir, "--cores", "2", "--configfile", "config/tiny.yaml", "--", METRICS, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    data = workdir / "results/datasets/tiny-real/smollm2-135m-instruct"
    rows = [json.loads(x) for x in (data / "stories.jsonl").read_text().splitlines()]
    summary = json.loads((data / "stories.summary.json").read_text())
    gender = Attribute.from_config("gender", config["attributes"]["gender"])
    # every kept story is read by the judge as the class it trains, and its prompt has no hint
    assert [j.label for j in LexiconJudge(gender).judge([r["answer"] for r in rows])] == [
        r["class"] for r in rows
    ]
    hints = [c["story_hint"] for c in config["attributes"]["gender"]["classes"]]
    assert not any(h in r["prompt"] for r in rows for h in hints)
    assert summary["rows"] == len(rows) == sum(c["kept"] for c in summary["per_class"].values())
    generated = sum(c["generated"] for c in summary["per_class"].values())
    # round 1 writes contexts x per_context x oversample candidates; a later round only runs for a shortfall
    assert generated == 2 * 4 * 2 if summary["rounds"] == 1 else generated > 2 * 4 * 2
    assert 1 <= summary["rounds"] <= 3
    # every candidate is in the per-hint tally, and the hints' reach is an MAE
    assert {h: sum(v.values()) for h, v in summary["hinted_as"].items()} == {
        n: c["generated"] for n, c in summary["per_class"].items()
    }
    assert summary["hint_reach"] is None or 0 <= summary["hint_reach"]["mae"] <= 1
    # no kept story is shorter than what the evaluation counts as a story
    assert summary["min_words"] == 20 and all(len(r["answer"].split()) >= 20 for r in rows)
    adapter = workdir / "results/adapters/tiny-real/smollm2-135m-instruct/ours-story"
    record = json.loads((adapter / "training_config.json").read_text())
    assert record["inputs"]["stories"] == _sha256(data / "stories.jsonl")
    # the story binding term (ours-story's story_binding_weight) ran and is logged by name
    assert record["training"]["story_binding_weight"] == 1.0
    history = [json.loads(x) for x in (adapter / "metrics.jsonl").read_text().splitlines()]
    binding = [h["binding_accuracy"] for h in history if "binding_accuracy" in h]
    assert binding and all(0.0 <= b <= 1.0 for b in binding)
    log = (workdir / "results/logs/train/tiny-real/smollm2-135m-instruct/ours-story.log").read_text()
    assert f"D_story: {len(rows)} story rows join the SFT rows" in log
    metrics = json.loads((workdir / METRICS).read_text())
    assert metrics["summary"]["n_total"] == 2 * 4
    # validity correction: the validation stories (not the test ones) gave the weights the test draw used
    validity = workdir / "results/validity/tiny-real/smollm2-135m-instruct/ours-story/story"
    val_rows = [json.loads(x) for x in (validity / "generations.jsonl").read_text().splitlines()]
    assert len(val_rows) == 2 * 4 and all(r["prompt_id"].startswith("val-") for r in val_rows)
    weights = json.loads((validity / "weights.json").read_text())
    assert sum(weights["n"]) == 2 * 4 and sum(weights["weights"]) == pytest.approx(2.0)
    test_rows = [
        json.loads(x)
        for x in (workdir / "results/generations/tiny-real/smollm2-135m-instruct/ours-story/story.jsonl")
        .read_text()
        .splitlines()
    ]
    assert all(
        r["prompt_id"].startswith("test-") and r["token_weights"] == weights["weights"] for r in test_rows
    )
