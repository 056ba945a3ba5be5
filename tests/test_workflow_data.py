"""The data stage through real Snakemake runs in a scratch working directory."""

import csv
import json
from collections import Counter

import yaml

from distalign.datasets import largest_remainder

DATASETS = ["uk-real", "uk-even", "us-real", "us-even", "race-even", "sentiment-even"]
N_CONTEXTS = {"uk-real": 25, "uk-even": 25, "us-real": 14, "us-even": 14, "race-even": 14, "sentiment-even": 14}
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
    uk_real = (res / "targets/uk-real.csv").read_text()
    assert "Vehicle technicians, mechanics and electricians" in uk_real
    # uk-real and uk-even share their prompts (same contexts, same seed)
    assert (res / "prompts/uk-real/attribute.jsonl").read_bytes() == (res / "prompts/uk-even/attribute.jsonl").read_bytes()
    # a second run has nothing to do
    again = snakemake_run(workdir, "--cores", "2", *targets, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout
