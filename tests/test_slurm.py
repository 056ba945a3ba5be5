"""The workflow through a real single-node SLURM cluster (slurmctld + slurmd + munge on this machine).

Brings the cluster up with slurm/ci-cluster.sh (installs the Debian packages if missing, writes
/etc/slurm/slurm.conf + gres.conf with one fake GPU, backs up and restores existing files, starts the
daemons by hand and stops them by PID), then runs a tiny grid through sbatch with
``snakemake --profile <test profile>``: the data rules, prepare_model, a training of ours (both stages)
and its vLLM generation. The test profile is slurm/config.yaml with only what this one-node cluster
needs changed (partition debug, no account, squeue status checks, memory, wall time and threads that
fit the node); the production profile's GPU requests of train and generate are kept, so its
resource -> sbatch mapping is exercised for real, and each job's log is in results/logs as on a cluster.

Skipped when not root, when SLURM is neither installed nor installable with apt-get, when a SLURM
cluster already runs on this machine, or with DISTALIGN_SKIP_SLURM=1. About 3-4 minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CI_SCRIPT = REPO / "slurm" / "ci-cluster.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _skip_reason() -> str | None:
    if os.environ.get("DISTALIGN_SKIP_SLURM") == "1":
        return "DISTALIGN_SKIP_SLURM=1"
    if os.geteuid() != 0:
        return "the SLURM test needs root (it writes /etc/slurm and starts slurmctld/slurmd/munged)"
    installed = all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not installed and not shutil.which("apt-get"):
        return (
            "SLURM is not installed and apt-get is unavailable (needs Debian packages slurmctld slurmd "
            "slurm-client munge)"
        )
    if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
        return "a slurmctld is already running on this machine; not starting a second cluster"
    return None


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(missing)"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_BASE": str(base)}
    try:
        up = subprocess.run(
            ["bash", str(CI_SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=300
        )
        if up.returncode == 3:
            pytest.skip(f"SLURM packages unavailable: {up.stderr.strip()[-300:]}")
        if up.returncode == 4:
            pytest.skip(up.stderr.strip())
        assert up.returncode == 0, f"cluster did not come up:\n{up.stdout}\n{up.stderr}"
        yield base
    finally:
        subprocess.run(["bash", str(CI_SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120)


def make_test_profile(repo) -> dict:
    """The profile the CI cluster runs: slurm/config.yaml with the CI cluster's specifics."""
    profile = yaml.safe_load((repo / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "slurm-status-command" not in profile  # production clusters have sacct
    profile["default-resources"]["slurm_partition"] = "debug"
    profile["default-resources"].pop("slurm_account", None)
    profile.update(
        {
            "jobs": 2,
            "latency-wait": 5,
            "retries": 0,
            "keep-going": False,
            # No accounting DB here: sacct fails and the plugin would wait forever. squeue needs
            # MinJobAge (600 s in ci-cluster.sh) >= 3 x the first-check delay.
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 5,
            "slurm-keep-successful-logs": True,
        }
    )
    # Sizes that fit the one node (the production ones are for 7-8B models on 80 GB GPUs); the
    # production profile's `gpu` of train and generate stays, so --gpus comes from slurm/config.yaml.
    cpus = min(2, os.cpu_count() or 1)
    for rule, mem in (("prepare_model", 3000), ("train", 4000), ("generate", 6000)):
        profile["set-resources"][rule] = {
            **profile["set-resources"][rule],
            "mem_mb": f"{mem} * attempt",
            "runtime": "20 * attempt",
        }
    profile["set-threads"] = {rule: min(n, cpus) for rule, n in profile["set-threads"].items()}
    return profile


TINY = {
    "run": {
        "datasets": ["us-even"],
        "models": ["smollm2-135m-instruct"],
        "methods": ["ours"],
        "tasks": ["attribute"],
    },
    # Three US occupations (the rehearsal's census), 2 train / 1 val / 2 test prompts, 4 answers each.
    "census": {"us": "config/rehearsal_census/us.csv"},
    "prompts": {"per_split": {"train": 2, "val": 1, "test": 2}},
    "data": {"responses_per_context": 4},
    # One epoch per stage (2 SFT and 3 steering steps): the default ours asks for 126 steering steps.
    "training": {"preference": {"epochs": 1}, "max_length": 128, "logging_steps": 1},
    "methods": {"ours": {"train_overrides": {"preference": {"min_steps": None}}}},
    "generation": {"max_new_tokens": {"attribute": 8}},
    "cluster": {"local_rules": False},  # every job through sbatch, the cheap ones too
}
ADAPTER = "results/adapters/us-even/smollm2-135m-instruct/ours"
GENERATIONS = "results/generations/us-even/smollm2-135m-instruct/ours/attribute.jsonl"


def _sbatch_calls(output: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"sbatch call: (.*)", output)]


def test_workflow_through_slurm(slurm_cluster, repo, workdir, snakemake_run):
    profile_dir = workdir / "profile"
    profile_dir.mkdir()
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(make_test_profile(repo), sort_keys=False))
    (workdir / "config" / "slurm-test.yaml").write_text(yaml.safe_dump(TINY))
    targets = ["results/datasets/us-even/base.jsonl", "results/models/smollm2-135m-instruct", GENERATIONS]

    proc = snakemake_run(
        workdir,
        "--profile",
        str(profile_dir),
        "--configfile",
        "config/slurm-test.yaml",
        "--verbose",
        *targets,
        timeout=900,
    )
    out = proc.stdout
    diag = (
        f"\n--- snakemake (tail) ---\n{out[-6000:]}\n--- slurmctld.log ---\n"
        f"{_tail(slurm_cluster / 'log' / 'slurmctld.log')}\n--- slurmd.log ---\n"
        f"{_tail(slurm_cluster / 'log' / 'slurmd.log')}"
    )
    assert proc.returncode == 0, diag

    # Outputs are there and correct.
    base = [json.loads(line) for line in (workdir / targets[0]).read_text().splitlines()]
    assert len(base) == 3 * 4, diag  # 3 US occupations x responses_per_context
    model = workdir / targets[1]
    meta = json.loads((model / "distalign_model.json").read_text())
    assert meta["source"] == "embedded" and (model / "model.safetensors").exists()
    assert (workdir / ADAPTER / "adapter_config.json").is_file(), diag
    rows = [json.loads(line) for line in (workdir / GENERATIONS).read_text().splitlines()]
    assert len(rows) == 3 * 2 and all(r["method"] == "ours" for r in rows), rows[:2]

    # Every job went through sbatch; train and generate carried the production profile's GPU request,
    # prepare_model (CPU only in slurm/config.yaml) none.
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out)
    assert submitted, diag
    for rule in ("prepare_model", "targets", "prompts", "datasets", "preflight", "train", "generate"):
        assert any(f"rule_{rule}/" in log for _, log in submitted), (rule, diag)
    assert "localrule" not in out, diag
    calls = _sbatch_calls(out)
    by_rule = {
        rule: [c for c in calls if f"rule_{rule}" in c] for rule in ("prepare_model", "train", "generate")
    }
    assert all(by_rule.values()), (by_rule, diag)
    print(f"{len(submitted)} job(s) submitted; sbatch call of train:\n{by_rule['train'][0]}")
    for rule, mem in (("train", 4000), ("generate", 6000)):
        call = by_rule[rule][0]
        assert "--gpus=1" in call or "--gres=gpu:1" in call, call
        assert re.search(rf"--mem {mem}\b", call), call
        assert re.search(r"-t 20\b", call), call
        assert " -p debug" in call and " -A " not in call, call
        assert f"--cpus-per-task={min(2, os.cpu_count() or 1)}" in call, call  # set-threads via cpus_per_task
    assert "--gpus" not in by_rule["prepare_model"][0] and "gres" not in by_rule["prepare_model"][0]

    # SLURM's own record of the GPU jobs (kept MinJobAge=600 s): they asked for and got the GPU.
    for rule in ("train", "generate"):
        jobid = next(j for j, log in submitted if f"rule_{rule}/" in log)
        record = subprocess.run(
            ["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True
        ).stdout
        assert "JobState=COMPLETED" in record, record
        assert re.search(r"gres[/:]gpu[:=]1", record), record

    # The rules' logs are where a cluster user reads them (results/logs), with the job's own lines.
    train_log = workdir / "results/logs/train/us-even/smollm2-135m-instruct/ours.log"
    generate_log = workdir / "results/logs/generate/us-even/smollm2-135m-instruct/ours/attribute.log"
    for log in (train_log, generate_log):
        assert log.is_file() and log.stat().st_size, log
    assert "us-even/smollm2-135m-instruct/ours" in generate_log.read_text()

    # Nothing is left in the queue.
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True).stdout
    assert queue.strip() == "", queue
