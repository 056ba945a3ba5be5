"""bench/run_size.py: the wall time of a configuration from Snakemake's dry runs and benchmark files."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import run_size  # noqa: E402
import same_draws  # noqa: E402

DRY_RUN = """Building DAG of jobs...
Job stats:
job         count
--------  -------
all             1
generate        2
total           3

[Wed Nov 25 22:14:44 2026]
rule generate:
    input: results/models/m, results/prompts/us-real/attribute.jsonl
    output: results/generations/us-real/m/ift/attribute.jsonl
    log: results/logs/generate/us-real/m/ift/attribute.log
    jobid: 4
    benchmark: results/benchmarks/generate/us-real/m/ift/attribute.tsv
    reason: Missing output files: results/generations/us-real/m/ift/attribute.jsonl
    wildcards: dataset=us-real, model=m, method=ift, task=attribute
    threads: 2
    resources: tmpdir=/tmp, runtime=120

[Wed Nov 25 22:14:44 2026]
rule sweep_generate:
    input: results/models/m
    output: results/sweeps/us-real/m/ift/attribute/top_p-0.9/seed0/generations.jsonl, results/x.json
    benchmark: results/benchmarks/sweeps/generate/us-real/m/ift/attribute/top_p-0.9/seed0.tsv
    wildcards: dataset=us-real, model=m, method=ift, task=attribute, knob=top_p, value=0.9, rep=0

[Wed Nov 25 22:14:44 2026]
localrule all:
    input: results/generations/us-real/m/ift/attribute.jsonl
    jobid: 0
    reason: Input files updated by another job
    resources: tmpdir=/tmp
Job stats:
"""


def test_parse_dry_run_reads_rule_output_benchmark_and_task():
    jobs = run_size.parse_dry_run(DRY_RUN)
    assert [(j.rule, j.task) for j in jobs] == [
        ("generate", "attribute"),
        ("sweep_generate", "attribute"),
        ("all", None),
    ]
    assert jobs[0].benchmark == "results/benchmarks/generate/us-real/m/ift/attribute.tsv"
    assert jobs[1].output == "results/sweeps/us-real/m/ift/attribute/top_p-0.9/seed0/generations.jsonl"
    assert jobs[2].benchmark is None and jobs[2].output == ""


def _bench(root, rel, seconds):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("s\th:m:s\tmax_rss\n" + "".join(f"{s}\t0:00:00\t1\n" for s in seconds))
    return rel


def test_summarise_measures_done_jobs_and_estimates_the_rest(tmp_path):
    gen = [run_size.PlannedJob("generate", f"g{i}", f"b/g{i}.tsv", "attribute") for i in range(4)]
    sweep = [run_size.PlannedJob("sweep_generate", f"s{i}", f"b/s{i}.tsv", "attribute") for i in range(3)]
    story = [run_size.PlannedJob("generate", "st0", "b/st0.tsv", "story")]
    table = [run_size.PlannedJob("table1", "t", None, None)]
    _bench(tmp_path, "b/g0.tsv", [999.0, 100.0])  # a rerun: the last row counts
    _bench(tmp_path, "b/g1.tsv", [300.0])
    _bench(tmp_path, "b/g2.tsv", [200.0])
    # g3 is done but its benchmark file is gone; the sweeps and the story are still to run
    todo = sweep + story + table
    rows = {
        (r["rule"], r["task"]): r
        for r in run_size.summarise(gen + sweep + story + table, todo, root=tmp_path)
    }
    g = rows[("generate", "attribute")]
    assert (g["jobs"], g["done"], g["measured_s"], g["untimed"], g["todo"]) == (4, 4, 600.0, 1, 0)
    # no sweep job has run: estimated from the median of the generation jobs of the same task
    assert rows[("sweep_generate", "attribute")]["estimated_s"] == pytest.approx(3 * 200.0)
    assert rows[("generate", "story")]["estimated_s"] is None  # nothing of that rule and task ran
    assert rows[("table1", "")]["timed"] is False and rows[("table1", "")]["estimated_s"] == 0.0
    text = run_size.markdown(list(rows.values()))
    assert "| generate | attribute | 4 | 4 | 0.17 | 1 | 0 | 0.00 |" in text
    assert "1 jobs to run have no measured job" in text and "table1" in text.splitlines()[-2]


def _steered_rows(probs_of, n=200):
    rows = []
    for cid, target in enumerate(([0.9, 0.1], [0.5, 0.5], [0.2, 0.8])):
        for i in range(n):
            rows.append(
                {
                    "dataset": "us-real",
                    "model": "m",
                    "method": "ours",
                    "task": "attribute",
                    "context_id": cid,
                    "prompt_id": f"test-{cid}-{i}",
                    "sample": 0,
                    "target": target,
                    "steering_probs": probs_of(target),
                }
            )
    return rows


def test_same_draws_replay_separates_calibration_from_luck():
    exact = same_draws.replay(_steered_rows(lambda t: t), seed=1234)
    # calibrated tokens: the run's draws are the ideal sampler's draws, whatever the luck
    assert exact["token_mae"] == exact["ideal_same_draws"] > 0 and exact["contexts"] == 3
    off = same_draws.replay(_steered_rows(lambda t: [t[0] - 0.1, t[1] + 0.1]), seed=1234)
    assert off["ideal_same_draws"] == exact["ideal_same_draws"]  # same uniform numbers
    assert off["token_mae"] > off["ideal_same_draws"] + 0.05  # a .1 miscalibration shows
    other = same_draws.replay(_steered_rows(lambda t: t), seed=99)
    assert other["ideal_same_draws"] != exact["ideal_same_draws"]  # the seed sets the luck
    with pytest.raises(ValueError, match="no steering_probs"):
        same_draws.replay([{**_steered_rows(lambda t: t)[0], "steering_probs": None}], seed=1)


def test_same_draws_replays_another_methods_numbers_on_request():
    """--draws-of: a variant's rows replayed with ours's uniform numbers draw what ours's run would
    have drawn from the same probabilities; its own numbers give other draws."""
    rows = _steered_rows(lambda t: [t[0] - 0.05, t[1] + 0.05])
    variant = [{**r, "method": "ours-variant"} for r in rows]
    own = same_draws.replay(rows, seed=1234)
    assert same_draws.replay(variant, seed=1234, draws_of=rows[0]["method"]) == own
    assert same_draws.replay(variant, seed=1234)["ideal_same_draws"] != own["ideal_same_draws"]


def test_floor_spread_matches_the_binomial_floor():
    rows = _steered_rows(lambda t: t, n=100)
    spread = same_draws.floor_spread(rows, runs=4000, seed=1)
    # E|k/100 - p| for p = .9, .5, .2 (exact binomial sums), averaged over the three contexts
    from math import comb

    def exact(p, n=100):
        return sum(comb(n, k) * p**k * (1 - p) ** (n - k) * abs(k / n - p) for k in range(n + 1))

    expected = (exact(0.9) + exact(0.5) + exact(0.2)) / 3
    assert spread["floor"] == pytest.approx(expected, rel=1e-9)  # exact, as in the metrics
    assert 0 < spread["p_above_1_25"] < 0.5 and spread["floor_sd"] > 0


# ------------------------------------------------------------------------------ bench/gpu_check.py

GPU_CHECKS = [
    *(f"train.{kind}.step1" for kind in ("sft", "dpo", "ours-nll", "ours-kto")),
    *(f"train.{kind}.later" for kind in ("sft", "dpo", "ours-nll", "ours-kto")),
    "logprob.answer",
    "probe.probs",
    "probe.log_mass",
    "generate.greedy.equal",
    "generate.greedy.margin",
    "generate.sampled.repeat",
    "generate.sampled.equal",
]


@pytest.fixture(scope="module")
def gpu_check_run(embedded_model_dir, tmp_path_factory):
    """bench/gpu_check.py run on the CPU against itself at its smallest size: (process, JSON record)."""
    import json
    import subprocess

    out = tmp_path_factory.mktemp("gpu_check") / "table.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--size", "tiny"]
    # one torch thread: on two cores shared with other jobs, two spinning OpenMP threads ran this 20x slower
    cmd += ["--threads", "1", "--model-dir", str(embedded_model_dir), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.slow
def test_gpu_check_on_cpu_passes_against_itself(gpu_check_run):
    import math

    proc, record = gpu_check_run
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert [r["check"] for r in record["checks"]] == GPU_CHECKS
    assert record["ok"] and all(r["ok"] is not False for r in record["checks"])
    assert {r["check"] for r in record["checks"] if r["ok"] is None} == {
        "generate.greedy.equal",
        "generate.sampled.equal",
    }
    # float32 on the same CPU twice: the same numbers, so every difference is exactly 0
    assert all(r["difference"] == 0 for r in record["checks"])
    ref = record["reference"]
    for kind in ("sft", "dpo", "ours-nll", "ours-kto"):
        losses = ref["train"][kind]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), kind  # one per step
    assert record["size"]["name"] == "tiny" and record["candidate"]["dtype"] == "float32"
    # the table on stdout, progress on stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["check", "metric", "reference"]
    assert len(lines) == 2 + len(GPU_CHECKS) and all(c in proc.stdout for c in GPU_CHECKS)
    assert "FAIL" not in proc.stdout and "[gpu_check" in proc.stderr and "[gpu_check" not in proc.stdout


@pytest.mark.slow
def test_gpu_check_fails_a_perturbed_or_broken_candidate(gpu_check_run):
    import copy
    import math

    import gpu_check

    _, record = gpu_check_run
    ref, cand = record["reference"], record["candidate"]
    tol = gpu_check.TOLERANCES

    def verdicts(candidate):
        rows = gpu_check.compare(ref, candidate)
        return {r["check"]: r["ok"] for r in rows}, gpu_check.passed(rows)

    # perturb(amount) moves each number by exactly ``amount`` in its gate's unit (all losses here exceed
    # the relative floor), so a gate fails exactly when amount exceeds its tolerance
    assert min(abs(x) for v in ref["train"].values() for x in v) >= tol["loss_floor"]
    gate = {f"train.{k}.step1": "loss_first_rel" for k in gpu_check.TRAINERS}
    gate.update({f"train.{k}.later": "loss_rel" for k in gpu_check.TRAINERS})
    gate.update({"logprob.answer": "logprob_abs", "probe.probs": "probe_prob_abs"})
    gate["probe.log_mass"] = "probe_log_mass_abs"
    for amount in sorted({0.8 * min(tol[g] for g in gate.values())} | {1.2 * tol[g] for g in gate.values()}):
        ok, passed = verdicts(gpu_check.perturb(cand, amount))
        assert {c: ok[c] for c in gate} == {c: amount <= tol[g] for c, g in gate.items()}, amount
        assert passed == all(amount <= tol[g] for g in gate.values())
        assert ok["generate.greedy.margin"] and ok["generate.sampled.repeat"]  # not perturbed
    # a NaN loss, a missing step, a greedy flip the float32 model is sure about, a sampling that
    # does not repeat: each fails its own gate only
    broken = copy.deepcopy(cand)
    broken["train"]["dpo"][1] = math.nan
    broken["train"]["sft"] = broken["train"]["sft"][:1]
    broken["greedy_divergence"][0] = {"at": 3, "gap": 2 * tol["greedy_gap"]}
    broken["sampled_repeat"][1] = {"ids": [0], "text": "x"}
    ok, passed = verdicts(broken)
    failed = {c for c, v in ok.items() if v is False}
    assert failed == {
        "train.dpo.later",
        "train.sft.later",
        "generate.greedy.margin",
        "generate.sampled.repeat",
    }
    assert not passed
    # the table marks the failures
    text = gpu_check.table(gpu_check.compare(ref, broken))
    assert sum("FAIL" in line for line in text.splitlines()) == 4


@pytest.mark.slow
def test_gpu_check_refuses_a_bad_setup_before_loading_anything(tmp_path):
    import subprocess

    script = str(REPO / "bench" / "gpu_check.py")
    proc = subprocess.run(
        [sys.executable, script, "--device", "cpu", "--model-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"--model-dir: {tmp_path}: not a prepared model folder" in proc.stderr
    assert "[gpu_check" not in proc.stderr  # nothing ran
