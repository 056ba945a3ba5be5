"""The data stage through real Snakemake runs in a scratch working directory."""

import csv
import json
import re
from collections import Counter

import pytest
import yaml

from distalign.data.datasets import largest_remainder

DATASETS = ["uk-real", "uk-even", "us-real", "us-even", "race-even", "sentiment-even"]
N_CONTEXTS = {
    "uk-real": 25,
    "uk-even": 25,
    "us-real": 14,
    "us-even": 14,
    "race-even": 14,
    "sentiment-even": 14,
}
K = {"uk-real": 2, "uk-even": 2, "us-real": 2, "us-even": 2, "race-even": 5, "sentiment-even": 3}


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_data_stage_for_all_six_datasets(workdir, snakemake_run):
    targets = []
    for d in DATASETS:
        targets += [f"results/datasets/{d}/base.jsonl", f"results/prompts/{d}/story.jsonl"]
    proc = snakemake_run(workdir, "--cores", "2", *targets, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    res = workdir / "results"
    n = yaml.safe_load((workdir / "config/config.yaml").read_text())["data"]["responses_per_context"]
    for d in DATASETS:
        with open(res / f"targets/{d}.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == N_CONTEXTS[d]
        classes = [c for c in rows[0] if c not in ("context_id", "context", "group")]
        assert len(classes) == K[d]
        targets_by_ctx = {}
        for r in rows:
            probs = [float(r[c]) for c in classes]
            assert abs(sum(probs) - 1) < 1e-9
            if d.endswith("-even"):
                assert probs == [1 / K[d]] * K[d]
            targets_by_ctx[int(r["context_id"])] = probs
        prompts = _jsonl(res / f"prompts/{d}/attribute.jsonl")
        assert len(prompts) == 300 * N_CONTEXTS[d]
        by = Counter((p["context_id"], p["split"]) for p in prompts)
        assert set(by.values()) == {100}
        base = _jsonl(res / f"datasets/{d}/base.jsonl")
        assert len(base) == n * N_CONTEXTS[d]
        for cid, probs in targets_by_ctx.items():
            counts = Counter(r["class_index"] for r in base if r["context_id"] == cid)
            assert [counts[k] for k in range(K[d])] == largest_remainder(probs, n)
        pref = _jsonl(res / f"datasets/{d}/pref.jsonl")
        assert all(r["neg_class_index"] != r["class_index"] for r in pref)
        assert len(_jsonl(res / f"datasets/{d}/sft.jsonl")) == len(base)
        assert (res / f"logs/datasets/{d}.log").read_text().strip()
    import behaviour  # byte-identical to the data stage recorded before the refactorings (tests/behaviour.py)

    behaviour.check("data_stage", behaviour.digests(workdir, behaviour.DATA_STAGE))
    uk_real = (res / "targets/uk-real.csv").read_text()
    assert "Vehicle technicians, mechanics and electricians" in uk_real
    # uk-real and uk-even share their prompts (same contexts, same seed)
    assert (res / "prompts/uk-real/attribute.jsonl").read_bytes() == (
        res / "prompts/uk-even/attribute.jsonl"
    ).read_bytes()
    # a second run has nothing to do
    again = snakemake_run(workdir, "--cores", "2", *targets, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout


def test_judge_check_table_through_snakemake(workdir, snakemake_run):
    """The judge_check artefact: one check per story dataset whose attribute has labelled stories (both datasets
    of the run; gender's check file has stories the reader gave no class), the same numbers as the library, and
    a failing check's traceback in its log when the labelled file is bad; a dataset whose attribute has no
    check file gets none."""
    from distalign.core.attributes import attributes_from_config
    from distalign.core.config import validate_config
    from distalign.data.targets import read_targets_csv
    from distalign.evaluation.judge_check import judge_check, read_labelled_stories
    from distalign.evaluation.judges import VaderJudge

    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["run"]["datasets"] = ["uk-real", "sentiment-even"]
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake_run(workdir, "--cores", "1", "results/tables/judge_check.csv", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    checks = sorted(p.name for p in (workdir / "results/judge_check").iterdir())
    assert checks == ["sentiment-even.json", "uk-real.json"]
    gender = json.loads((workdir / "results/judge_check/uk-real.json").read_text())
    assert gender["judge"] == "lexicon" and gender["n_unclassed"] > 0
    assert gender["agreement"] * gender["n_stories"] == pytest.approx(
        sum(gender["confusion"][i][i] for i in range(2)) + gender["unclassed"][-1]
    )
    out = json.loads((workdir / "results/judge_check/sentiment-even.json").read_text())
    attribute = attributes_from_config(cfg)["sentiment"]
    rows = read_labelled_stories(workdir / cfg["attributes"]["sentiment"]["judge_check"], attribute)
    targets = read_targets_csv(workdir / "results/targets/sentiment-even.csv", attribute)
    full = validate_config(json.loads(json.dumps(cfg)))  # the schema's defaults filled in
    expected = judge_check(
        rows,
        attribute,
        VaderJudge(attribute),
        targets,
        min_words=full["judge"]["story_min_words"],
        seed=full["seed"],
        bootstrap=full["metrics"]["bootstrap"],
    )
    assert {k: out[k] for k in expected} == json.loads(json.dumps(expected))
    with open(workdir / "results/tables/judge_check.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["Dataset"] for r in table] == [cfg["datasets"]["uk-real"]["title"], "Sentiment"]
    assert float(table[1]["Faithful MAE"]) == pytest.approx(out["faithful_mae"], rel=1e-5)
    assert int(table[0]["No class"]) == gender["n_unclassed"] and int(table[1]["No class"]) == 0

    del cfg["attributes"]["gender"]["judge_check"]
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    dry = snakemake_run(workdir, "-n", "--cores", "1", "results/tables/judge_check.csv", timeout=600)
    assert dry.returncode == 0, dry.stdout[-3000:]
    table_inputs = re.search(r"rule judge_check_table:\n\s+input: (.*)\n", dry.stdout).group(1)
    assert table_inputs == "results/judge_check/sentiment-even.json", dry.stdout[-3000:]

    bad = workdir / cfg["attributes"]["sentiment"]["judge_check"]
    bad.write_text(bad.read_text() + '{"text": "A story.", "label": "cheerful"}\n')
    proc = snakemake_run(
        workdir,
        "--cores",
        "1",
        "results/judge_check/sentiment-even.json",
        "--forcerun",
        "judge_check",
        timeout=600,
    )
    assert proc.returncode != 0
    log = (workdir / "results/logs/evaluate/judge_check/sentiment-even.log").read_text()
    assert "line 81: key 'label' is 'cheerful'" in log and "Traceback" in log
