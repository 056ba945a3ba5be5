"""The DAG: full dry run, single artefacts, and what a config change reruns."""

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
    for rule in ("prepare_model", "targets", "prompts", "datasets", "train", "generate", "probe", "label",
                 "metrics", "table1", "table4", "table10", "table11", "fig3", "fig5", "calibration"):
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


TINY = {
    "census": {"tiny": "resources/census/tiny.csv"},
    "datasets": {"tiny-real": {"attribute": "gender", "census": "tiny", "target": "real"}},
    "run": {"datasets": ["tiny-real"], "methods": ["zero-shot", "ift", "ours"], "tasks": ["attribute"]},
    "prompts": {"per_split": {"train": 4, "val": 4, "test": 4}},
    "data": {"responses_per_context": 4},
    "training": {"sft": {"epochs": 1, "batch_size": 8}, "preference": {"epochs": 1, "batch_size": 8},
                 "max_length": 128},
    "generation": {"batch_size": 8},
    "metrics": {"bootstrap": 50},
    "report": {"artefacts": ["table1", "table4", "table10", "table11", "fig3", "fig5", "calibration"],
               "fig3_dataset": "tiny-real"},
}


def write_tiny(workdir):
    (workdir / "resources/census/tiny.csv").write_text(
        "occupation,group,male,female,year,source\n"
        "Civil engineers,Engineering,90,10,2024,test\n"
        "Registered nurses,Health,15,85,2024,test\n")
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
    for name in ("table1", "table4", "table10", "table11"):
        assert (res / f"tables/{name}.csv").exists() and (res / f"tables/{name}.md").exists()
    for name in ("fig3", "fig5", "calibration"):
        assert (res / f"figures/{name}.png").stat().st_size > 1000
    table1 = (res / "tables/table1.md").read_text()
    assert "Ours" in table1 and "Noise floor" in table1
    gens = (res / "generations/tiny-real/smollm2-135m-instruct/ours/attribute.jsonl").read_text().splitlines()
    assert len(gens) == 2 * 4  # 2 contexts x 4 test prompts
    assert (res / "benchmarks/train/tiny-real/smollm2-135m-instruct/ours.tsv").exists()
    again = snakemake_run(tiny_run, "-n", "all", "--configfile", "config/tiny.yaml", timeout=300)
    assert "Nothing to be done" in again.stdout, again.stdout[-3000:]


@pytest.mark.slow
def test_tiny_run_is_deterministic(tiny_run, tmp_path_factory, repo, snakemake_run):
    """The same config run again from scratch gives byte-identical data, generations, labels and metrics."""
    wd = _copy_workdir(repo, tmp_path_factory.mktemp("tiny_run_again"))
    proc = snakemake_run(wd, "--cores", "2", "all", "--configfile", "config/tiny.yaml", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-5000:]
    first, second = _outputs(tiny_run), _outputs(wd)
    assert first.keys() == second.keys() and len(first) > 10
    differ = [k for k in first if first[k] != second[k]]
    assert not differ, differ


@pytest.mark.slow
def test_changing_one_method_reruns_only_that_method(tiny_run, snakemake_run):
    """After a complete run, editing one method's training config reruns only that method's jobs."""
    cfg = yaml.safe_load((tiny_run / "config/tiny.yaml").read_text())
    cfg["methods"] = {"ours": {"kind": "ours", "title": "Ours", "train_overrides": {"kl_weight": 2.0}}}
    (tiny_run / "config/tiny.yaml").write_text(yaml.safe_dump(cfg))
    dry = snakemake_run(tiny_run, "-n", "all", "--configfile", "config/tiny.yaml", timeout=300)
    assert dry.returncode == 0, dry.stdout[-3000:]
    jobs = _jobs(dry.stdout)
    assert jobs["train"] == 1 and jobs["generate"] == 1 and jobs["probe"] == 1 and jobs["metrics"] == 1, jobs
    rerun = set(re.findall(r"wildcards: dataset=tiny-real, model=smollm2-135m-instruct, method=(\S+?)(?:,|\n)",
                           dry.stdout))
    assert rerun == {"ours"}, rerun
