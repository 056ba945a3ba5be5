"""The DAG: full dry run, single artefacts, and what a config change reruns."""

import json
import re

import pytest
import yaml


def _jobs(stdout: str) -> dict[str, int]:
    """Job counts per rule from a dry run's "Job stats" table."""
    block = stdout.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def test_full_dag_dry_run_lists_every_stage(workdir, snakemake_run):
    proc = snakemake_run(workdir, "-n", "all", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = _jobs(proc.stdout)
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    n_data = len(cfg["run"]["datasets"])
    for rule in (
        "prepare_model",
        "targets",
        "prompts",
        "datasets",
        "train",
        "generate",
        "probe",
        "label",
        "metrics",
        "table1",
        "table4",
        "table5",
        "capabilities",
        "table10",
        "table11",
        "fig3",
        "fig5",
        "calibration",
        "steering_diagnosis",
    ):
        assert jobs.get(rule), (rule, jobs)
    assert jobs["targets"] == n_data and jobs["datasets"] == n_data
    # ift, dpo, ours per dataset; pe-implicit only where the target is real
    assert jobs["train"] == 3 * n_data


def test_one_table_builds_only_what_it_needs(workdir, snakemake_run):
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["run"]["datasets"] = ["uk-real", "us-even", "race-even"]
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake_run(workdir, "-n", "results/tables/table3.csv", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = _jobs(proc.stdout)
    assert jobs["table3"] == 1
    assert jobs["train"] == 3 * 4  # four ablation methods x three datasets, nothing else
    assert jobs["generate"] == jobs["metrics"] == 3 * 4
    assert "probe" not in jobs and "table1" not in jobs and "all" not in jobs
    trained = set(re.findall(r"results/adapters/[^/]+/[^/]+/([a-z0-9-]+)", proc.stdout))
    assert trained == {"ours", "ours-no-kl", "ours-no-kto", "ours-dpo"}


def test_steering_diagnosis_covers_the_story_task_when_it_runs(workdir, snakemake_run):
    """With stories in run.tasks the diagnosis reads the steering methods' story metrics too (not race's)."""
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["run"]["datasets"] = ["us-even", "race-even"]
    cfg["run"]["tasks"] = ["attribute", "story"]
    cfg["report"]["table1_methods"] = ["zero-shot", "ours", "ours-story"]
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake_run(workdir, "-n", "results/tables/steering_diagnosis.csv", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    metrics = set(
        re.findall(r"results/metrics/([a-z0-9-]+)/[^/]+/([a-z0-9-]+)/(attribute|story)\.json", proc.stdout)
    )
    # zero-shot does not steer; ours-story needs a story judge, which race has not, even for its answers
    assert metrics == {
        ("us-even", "ours", "attribute"),
        ("us-even", "ours-story", "attribute"),
        ("race-even", "ours", "attribute"),
        ("us-even", "ours", "story"),
        ("us-even", "ours-story", "story"),
    }
    # and the D_story summary of us-even for the hint reach of ours-story's story row (race has no stories)
    diagnosis_inputs = re.search(r"rule steering_diagnosis:\s*\n\s*input: ([^\n]*)", proc.stdout).group(1)
    assert re.findall(r"results/datasets/[^,]*summary\.json", diagnosis_inputs) == [
        "results/datasets/us-even/smollm2-135m-instruct/stories.summary.json"
    ]


def test_table7_trains_on_uk_only(workdir, snakemake_run):
    """Transfer: the US columns generate with the UK adapters; nothing is trained on US data."""
    proc = snakemake_run(workdir, "-n", "results/tables/table7.csv", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = _jobs(proc.stdout)
    assert jobs["train"] == 2 * 3  # ift, dpo, ours on uk-real and uk-even
    assert jobs["generate"] == jobs["metrics"] == 2 * 4  # zero-shot, ift, dpo, ours on the two US columns
    adapters = set(re.findall(r"results/adapters/([a-z0-9-]+)/", proc.stdout))
    assert adapters == {"uk-real", "uk-even"}
    gens = set(re.findall(r"results/generations/([a-z0-9-]+)/", proc.stdout))
    assert gens == {"us-real-from-uk", "us-even-from-uk"}


def test_fig4_sweep_jobs_share_the_default_point(workdir, snakemake_run):
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["sweeps"] = {
        "datasets": ["us-even"],
        "methods": ["ift", "ours"],
        "seeds": 3,
        "top_p": [0.8, 1.0],
        "top_k": [10, 0],
        "temperature": [0.5, 1.0],
    }
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake_run(workdir, "-n", "results/figures/fig4-us-even.png", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = _jobs(proc.stdout)
    # per method: 3 non-default values + the shared default point, 3 seeds each
    assert jobs["sweep_generate"] == jobs["sweep_label"] == jobs["sweep_metrics"] == 2 * 4 * 3
    assert jobs["train"] == 2 and "generate" not in jobs and jobs["fig4"] == 1
    assert "top_k-0/" not in proc.stdout and "temperature-1.0/" not in proc.stdout


def test_table5_needs_only_capabilities(workdir, snakemake_run):
    proc = snakemake_run(workdir, "-n", "results/tables/table5.csv", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = _jobs(proc.stdout)
    assert jobs["capabilities"] == 4 and jobs["train"] == 3  # zero-shot (base), ift, dpo, ours on uk-real
    assert "generate" not in jobs


TINY = {
    "census": {"tiny": "resources/census/tiny.csv"},
    "datasets": {
        "tiny-real": {"attribute": "gender", "census": "tiny", "target": "real"},
        "tiny-even-from-real": {
            "attribute": "gender",
            "census": "tiny",
            "target": "even",
            "adapters_from": "tiny-real",
        },
    },
    # table5 on the first 10 questions and paragraphs, the leak check on 3 requests of 8 tokens
    "capabilities": {
        "dataset": "tiny-real",
        "methods": ["zero-shot", "ift", "ours"],
        "lm_eval_limit": 10,
        "instructions": "config/rehearsal_lm_eval/instructions.jsonl",
        "leak_max_new_tokens": 8,
    },
    "sweeps": {
        "datasets": ["tiny-real"],
        "methods": ["ours"],
        "seeds": 2,
        "top_p": [0.5],
        "top_k": [],
        "temperature": [],
    },
    "run": {"datasets": ["tiny-real"], "methods": ["zero-shot", "ift", "ours"], "tasks": ["attribute"]},
    "prompts": {"per_split": {"train": 4, "val": 4, "test": 4}},
    "data": {"responses_per_context": 4},
    "training": {
        "sft": {"epochs": 1, "batch_size": 8},
        "preference": {"epochs": 1, "batch_size": 8},
        "max_length": 128,
    },
    # one steering step on these 8 rows, not the default's 126
    "methods": {"ours": {"train_overrides": {"preference": {"min_steps": None}}}},
    "generation": {"batch_size": 8},
    "metrics": {"bootstrap": 50},
    "report": {
        "artefacts": [
            "table1",
            "table4",
            "table5",
            "table7",
            "table10",
            "table11",
            "fig3",
            "fig4",
            "fig5",
            "calibration",
            "steering_diagnosis",
        ],
        "fig3_dataset": "tiny-real",
        # the rows table1 had when the behaviour fixture was recorded (the default now adds the hinted methods)
        "table1_methods": ["zero-shot", "pe-explicit", "pe-implicit", "ift", "dpo", "ours"],
        "transfer_datasets": ["tiny-even-from-real"],
        "transfer_methods": ["zero-shot", "ift", "ours"],
    },
}


def write_tiny(workdir):
    (workdir / "resources/census/tiny.csv").write_text(
        "occupation,group,male,female,year,source\n"
        "Civil engineers,Engineering,90,10,2024,test\n"
        "Registered nurses,Health,15,85,2024,test\n"
    )
    (workdir / "config/tiny.yaml").write_text(yaml.safe_dump(TINY))


def _copy_workdir(repo, wd):
    import shutil

    for name in ("config", "resources"):
        shutil.copytree(repo / name, wd / name)
    write_tiny(wd)
    return wd


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, repo):
    """The whole DAG once on the embedded model with tiny data (about 2-3 minutes on 2 cores)."""
    from conftest import run_snakemake

    wd = _copy_workdir(repo, tmp_path_factory.mktemp("tiny_run"))
    proc = run_snakemake(wd, "--cores", "2", "all", "--configfile", "config/tiny.yaml", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return wd


def _outputs(wd):
    files = {}
    for sub in ("generations", "labels", "metrics", "probes", "datasets", "prompts", "targets"):
        for f in sorted((wd / "results" / sub).rglob("*")):
            if f.is_file():
                files[str(f.relative_to(wd))] = f.read_bytes()
    return files


@pytest.mark.slow
def test_end_to_end_tiny_run(tiny_run, snakemake_run):
    res = tiny_run / "results"
    for name in ("table1", "table4", "table5", "table7", "table10", "table11", "steering_diagnosis"):
        assert (res / f"tables/{name}.csv").exists() and (res / f"tables/{name}.md").exists()
    for name in ("fig3", "fig4-tiny-real", "fig5", "calibration"):
        assert (res / f"figures/{name}.png").stat().st_size > 1000
    # table5: lm-eval's scores on the local tasks for the base model and both adapters, each paired
    # with the base on the same 10 items, and the leak column
    import pandas as pd

    t5 = pd.read_csv(res / "tables/table5.csv")
    assert list(t5["Method"]) == ["Zero-shot", "IFT", "Ours"]
    ppl, acc = "distalign_heldout perplexity", "distalign_general_mc acc"
    assert (t5[ppl] > 1).all() and t5[acc].between(0, 100).all() and t5["Leak"].between(0, 100).all()
    assert t5.loc[0, f"Δ% {ppl}"] == 0 and t5[f"Δ% {ppl}"].notna().all()
    assert (t5[f"Δ {acc} CI low"] <= t5[f"Δ {acc}"]).all() and (
        t5[f"Δ {acc}"] <= t5[f"Δ {acc} CI high"]
    ).all()
    assert t5["Δ Leak CI high"].notna().all()
    caps = res / "capabilities/tiny-real/smollm2-135m-instruct"
    base = json.loads((caps / "zero-shot.json").read_text())
    assert base["adapter"] is None and len(base["items"]["distalign_general_mc"]) == 10
    assert [it["id"] for it in base["leak"]["items"]] == ["gi-000", "gi-001", "gi-002"]
    assert json.loads((caps / "ift.json").read_text())["adapter"].endswith(
        "adapters/tiny-real/smollm2-135m-instruct/ift"
    )
    # table7: the transfer column generated with the tiny-real adapters, against even targets
    ours_t = [
        json.loads(x)
        for x in (res / "generations/tiny-even-from-real/smollm2-135m-instruct/ours/attribute.jsonl")
        .read_text()
        .splitlines()
    ]
    assert {tuple(r["target"]) for r in ours_t} == {(0.5, 0.5)}
    t7 = pd.read_csv(res / "tables/table7.csv")
    assert list(t7["Method"]) == ["Zero-shot", "IFT", "Ours", "Noise floor"]
    assert t7["tiny-even-from-real"].notna().all()
    # fig4: one point (top-p 0.5), two seeded runs with different samples
    pts = pd.read_csv(res / "figures/fig4-tiny-real.csv", dtype={"value_label": str})
    assert list(pts["value_label"]) == ["0.5"] and pts.loc[0, "runs"] == 2
    sweep = res / "sweeps/tiny-real/smollm2-135m-instruct/ours/attribute/top_p-0.5"
    runs = [(sweep / f"seed{r}/generations.jsonl").read_text() for r in (0, 1)]
    assert runs[0] != runs[1]
    table1 = (res / "tables/table1.md").read_text()
    assert "Ours" in table1 and "Noise floor" in table1
    gens = (res / "generations/tiny-real/smollm2-135m-instruct/ours/attribute.jsonl").read_text().splitlines()
    assert len(gens) == 2 * 4  # 2 contexts x 4 test prompts
    assert (res / "benchmarks/train/tiny-real/smollm2-135m-instruct/ours.tsv").exists()
    again = snakemake_run(tiny_run, "-n", "all", "--configfile", "config/tiny.yaml", timeout=300)
    assert "Nothing to be done" in again.stdout, again.stdout[-3000:]


@pytest.mark.slow
def test_report_of_the_tiny_run_has_no_docutils_problem(tiny_run, snakemake_run):
    """`snakemake --report` of the finished run: every caption renders cleanly (docutils writes its errors and
    warnings into the page as "System Message" boxes and to stderr, and Snakemake still says "Report created")."""
    from test_report_html import docutils_problems, report_captions

    proc = snakemake_run(
        tiny_run, "--report", "results/report.html", "--configfile", "config/tiny.yaml", timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    captions = report_captions((tiny_run / "results/report.html").read_text())
    # the check reads what it should: table1's caption, with N from the tiny config (test prompts x samples)
    from distalign.core.config import load_config

    cfg = load_config(tiny_run / "config/config.yaml", tiny_run / "config/tiny.yaml")
    n = cfg["prompts"]["per_split"]["test"] * cfg["generation"]["samples_per_prompt"]
    assert any(f"N = {n} answers per context" in c for c in captions), captions[:3]
    problems = docutils_problems([*captions, *proc.stdout.splitlines()])
    assert not problems, problems


@pytest.mark.slow
def test_tiny_run_matches_the_behaviour_fixture(tiny_run):
    """Data, generations, labels, metrics, probes and tables are byte-identical to those recorded before the
    refactorings (tests/behaviour.py says how to re-record them when a change is meant to change results)."""
    import behaviour

    behaviour.check(
        "tiny_run",
        behaviour.digests(
            tiny_run,
            (*behaviour.DATA_STAGE, "generations", "labels", "metrics", "probes", "tables"),
        ),
        per_machine=True,
    )


@pytest.mark.slow
def test_tiny_run_is_deterministic(tiny_run, tmp_path_factory, repo, snakemake_run):
    """The same config run again from scratch gives byte-identical data, generations, labels and metrics.

    Decision: the second run is ours' chain only (data, both training stages, steering-token generation,
    labels, metrics, probe), the method with the most sampling steps; the other methods' bytes are held
    to the recorded digests by test_tiny_run_matches_the_behaviour_fixture. Rerunning every method here
    cost 4-5 minutes of the CI budget for the same guarantee."""
    wd = _copy_workdir(repo, tmp_path_factory.mktemp("tiny_run_again"))
    model = "smollm2-135m-instruct"
    proc = snakemake_run(
        wd,
        "--cores",
        "2",
        f"results/metrics/tiny-real/{model}/ours/attribute.json",
        f"results/probes/tiny-real/{model}/ours.json",
        f"results/metrics/tiny-real/{model}/zero-shot/attribute.json",
        "--configfile",
        "config/tiny.yaml",
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    first, second = _outputs(tiny_run), _outputs(wd)
    assert set(second) <= set(first) and len(second) > 10
    differ = [k for k in second if first[k] != second[k]]
    assert not differ, differ


@pytest.mark.slow
def test_sigkilled_generation_job_reruns_to_the_same_file(tiny_run, tmp_path_factory, repo, snakemake_run):
    """SIGKILL the whole Snakemake process group while a generation job runs: no output file is
    left that a later run would trust, and `--unlock` + rerun gives the uninterrupted run's bytes."""
    import os
    import signal
    import subprocess
    import time

    from conftest import REPO, SNAKEMAKE

    wd = _copy_workdir(repo, tmp_path_factory.mktemp("killed"))
    target = "results/generations/tiny-real/smollm2-135m-instruct/zero-shot/attribute.jsonl"
    log = wd / "results/logs/generate/tiny-real/smollm2-135m-instruct/zero-shot/attribute.log"
    cmd = [
        SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(wd),
        "--cores",
        "2",
        target,
        "--configfile",
        "config/tiny.yaml",
    ]
    proc = subprocess.Popen(
        cmd, cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "test prompts" in log.read_text():
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the generation job could be killed"
    time.sleep(3)  # the job is loading the model / sampling
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    assert not (wd / target).exists()  # written only by an atomic rename at the end of the job
    assert snakemake_run(wd, "--unlock", "--configfile", "config/tiny.yaml", timeout=120).returncode == 0
    rerun = snakemake_run(wd, "--cores", "2", target, "--configfile", "config/tiny.yaml", timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert (wd / target).read_bytes() == (tiny_run / target).read_bytes()


@pytest.mark.slow
def test_run_size_of_a_finished_run_is_the_sum_of_its_benchmarks(tiny_run):
    """bench/run_size.py on the real dry runs of a finished run: every timed job is done and measured."""
    import sys

    from conftest import REPO, SNAKEMAKE

    sys.path.insert(0, str(REPO / "bench"))
    import run_size

    everything = run_size.dry_run(SNAKEMAKE, "all", ["config/tiny.yaml"], force=True, workdir=tiny_run)
    todo = run_size.dry_run(SNAKEMAKE, "all", ["config/tiny.yaml"], force=False, workdir=tiny_run)
    assert todo == [] and len(everything) > 20
    rows = {(r["rule"], r["task"]): r for r in run_size.summarise(everything, todo, root=tiny_run)}
    train = rows[("train", "")]
    on_disk = sorted((tiny_run / "results/benchmarks/train").rglob("*.tsv"))
    assert train["jobs"] == train["done"] == len(on_disk) > 0 and train["untimed"] == 0
    assert train["measured_s"] == pytest.approx(sum(run_size.benchmark_seconds(f) for f in on_disk))
    assert rows[("generate", "attribute")]["measured_s"] > 0 and not rows[("table1", "")]["timed"]


def test_changing_one_method_reruns_only_that_method(tiny_run, snakemake_run):
    """After a complete run, editing one method's training config reruns only that method's jobs."""
    cfg = yaml.safe_load((tiny_run / "config/tiny.yaml").read_text())
    cfg["methods"] = {"ours": {"kind": "ours", "title": "Ours", "train_overrides": {"kl_weight": 2.0}}}
    (tiny_run / "config/tiny.yaml").write_text(yaml.safe_dump(cfg))
    dry = snakemake_run(tiny_run, "-n", "all", "--configfile", "config/tiny.yaml", timeout=300)
    assert dry.returncode == 0, dry.stdout[-3000:]
    jobs = _jobs(dry.stdout)
    # ours: its adapter, its generation on tiny-real and on the transfer column, its probe, its sweep
    # points and its capabilities row; nothing of zero-shot or ift
    assert jobs["train"] == 1 and jobs["generate"] == 2 and jobs["probe"] == 1 and jobs["metrics"] == 2, jobs
    assert jobs["sweep_generate"] == 2 and jobs["capabilities"] == 1, jobs
    rerun = set(
        re.findall(
            r"wildcards: dataset=tiny-real, model=smollm2-135m-instruct, method=(\S+?)(?:,|\n)", dry.stdout
        )
    )
    assert rerun == {"ours"}, rerun


def test_validity_correction_reruns_generation_not_training(tiny_run, snakemake_run):
    """Turning on ours' validity correction after a complete run: validation answers, labels and
    weights per dataset, then ours' generations again; its adapter is reused."""
    cfg = yaml.safe_load((tiny_run / "config/tiny.yaml").read_text())
    cfg["methods"] = {
        "ours": {"train_overrides": {"preference": {"min_steps": None}}, "validity_correction": ["attribute"]}
    }
    (tiny_run / "config/tiny.yaml").write_text(yaml.safe_dump(cfg))
    dry = snakemake_run(tiny_run, "-n", "all", "--configfile", "config/tiny.yaml", timeout=300)
    assert dry.returncode == 0, dry.stdout[-3000:]
    jobs = _jobs(dry.stdout)
    assert "train" not in jobs and "capabilities" not in jobs, jobs
    # tiny-real and the transfer column (tiny-even-from-real, with tiny-real's adapter)
    assert jobs["validity_generate"] == jobs["validity_label"] == jobs["validity"] == 2, jobs
    assert jobs["generate"] == 2 and jobs["sweep_generate"] == 2, jobs
    assert "results/validity/tiny-real/smollm2-135m-instruct/ours/attribute/weights.json" in dry.stdout
    rerun = set(re.findall(r"method=(\S+?)(?:,|\n)", dry.stdout))
    assert rerun == {"ours"}, rerun


def test_steering_guidance_reruns_only_the_guided_task(tiny_run, snakemake_run):
    """Guidance is generation-only and per task: guiding ours' stories reruns nothing in a run without
    stories; guiding its answers reruns its generations (test and sweep points) and what reads them (the
    probe reads the generation file), never its adapter."""
    cfg = yaml.safe_load((tiny_run / "config/tiny.yaml").read_text())
    base = {"train_overrides": {"preference": {"min_steps": None}}}
    reruns = {"generate": 2, "sweep_generate": 2, "probe": 1}
    for guided, expected in (({"story": 3.0}, {}), ({"attribute": 3.0}, reruns)):
        cfg["methods"] = {"ours": {**base, "steering_guidance": guided}}
        (tiny_run / "config/tiny.yaml").write_text(yaml.safe_dump(cfg))
        dry = snakemake_run(tiny_run, "-n", "all", "--configfile", "config/tiny.yaml", timeout=300)
        assert dry.returncode == 0, dry.stdout[-3000:]
        jobs = _jobs(dry.stdout) if "Job stats:" in dry.stdout else {}
        assert {k: jobs[k] for k in reruns if k in jobs} == expected, jobs
        assert "train" not in jobs and "capabilities" not in jobs, jobs
        assert "Params have changed" not in dry.stdout.split("rule probe:", 1)[-1].split("rule ", 1)[0]
        if expected:
            assert set(re.findall(r"method=(\S+?)(?:,|\n)", dry.stdout)) == {"ours"}


def test_a_judge_check_reruns_nothing_it_does_not_feed(tiny_run, snakemake_run):
    """attributes.<a>.judge_check is read by the judge_check rule only: pointing gender's at another file after a
    complete run leaves every label, metric and table of that run as it is."""
    (tiny_run / "resources/judge_check/gender.jsonl").write_text(
        '{"text": "She fixed the bridge and he checked her sums.", "label": "female"}\n'
    )
    original = (tiny_run / "config/tiny.yaml").read_text()
    cfg = yaml.safe_load(original)
    before = snakemake_run(tiny_run, "-n", "all", "--configfile", "config/tiny.yaml", timeout=300)
    assert before.returncode == 0, before.stdout[-3000:]
    try:
        cfg["attributes"] = {"gender": {"judge_check": "resources/judge_check/gender.jsonl"}}
        (tiny_run / "config/tiny.yaml").write_text(yaml.safe_dump(cfg))
        after = snakemake_run(tiny_run, "-n", "all", "--configfile", "config/tiny.yaml", timeout=300)
        assert after.returncode == 0, after.stdout[-3000:]
        jobs = _jobs(before.stdout) if "Job stats:" in before.stdout else {}
        assert (_jobs(after.stdout) if "Job stats:" in after.stdout else {}) == jobs
        check = snakemake_run(
            tiny_run, "-n", "results/tables/judge_check.csv", "--configfile", "config/tiny.yaml", timeout=300
        )
        assert check.returncode == 0, check.stdout[-3000:]
        assert _jobs(check.stdout) == {"judge_check": 1, "judge_check_table": 1, "total": 2}
    finally:
        (tiny_run / "config/tiny.yaml").write_text(original)
