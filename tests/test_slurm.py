"""The workflow through a real single-node SLURM cluster (slurmctld + slurmd + munge on this machine).

Brings the cluster up with slurm/ci-cluster.sh (installs the Debian packages if missing, writes
/etc/slurm/slurm.conf + gres.conf with one fake GPU, backs up and restores existing files, starts the
daemons by hand and stops them by PID), then runs the data rules and prepare_model with
``snakemake --profile <test profile>``. The test profile is slurm/config.yaml with the CI cluster's
settings (partition debug, no account, squeue status checks) and a GPU request on prepare_model, so
the resource -> sbatch mapping of the production profile is exercised for real.

Skipped when not root, when SLURM is neither installed nor installable with apt-get, when a SLURM
cluster already runs on this machine, or with DISTALIGN_SKIP_SLURM=1. About 1-2 minutes.
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
    # The fake-GPU node: exercise gpu -> --gpus on a quick rule, with sizes that fit the node.
    profile["set-resources"]["prepare_model"] = {
        "gpu": 1,
        "mem_mb": "3000 * attempt",
        "runtime": "10 * attempt",
    }
    profile["set-threads"]["prepare_model"] = min(2, os.cpu_count() or 1)
    return profile


TINY = {
    "run": {
        "datasets": ["us-even"],
        "models": ["smollm2-135m-instruct"],
        "methods": ["zero-shot"],
        "tasks": ["attribute"],
    },
    "prompts": {"per_split": {"train": 5, "val": 5, "test": 5}},
    "data": {"responses_per_context": 10},
    "cluster": {"local_rules": False},  # every job through sbatch, the cheap ones too
}


def _sbatch_calls(output: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"sbatch call: (.*)", output)]


def test_workflow_through_slurm(slurm_cluster, repo, workdir, snakemake_run):
    profile_dir = workdir / "profile"
    profile_dir.mkdir()
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(make_test_profile(repo), sort_keys=False))
    (workdir / "config" / "slurm-test.yaml").write_text(yaml.safe_dump(TINY))
    targets = [
        "results/datasets/us-even/base.jsonl",
        "results/datasets/us-even/sft.jsonl",
        "results/datasets/us-even/pref.jsonl",
        "results/models/smollm2-135m-instruct",
    ]

    proc = snakemake_run(
        workdir,
        "--profile",
        str(profile_dir),
        "--configfile",
        "config/slurm-test.yaml",
        "--verbose",
        *targets,
        timeout=240,
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
    assert len(base) == 14 * 10, diag  # 14 US occupations x responses_per_context
    assert (workdir / targets[1]).stat().st_size > 0 and (workdir / targets[2]).stat().st_size > 0
    model = workdir / targets[3]
    meta = json.loads((model / "distalign_model.json").read_text())
    assert meta["source"] == "embedded" and (model / "model.safetensors").exists()

    # Every non-local job went through sbatch, and the GPU rule carried the profile's resources.
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out)
    assert submitted, diag
    for rule in ("prepare_model", "targets", "prompts", "datasets"):
        assert any(f"rule_{rule}/" in log for _, log in submitted), (rule, diag)
    assert "localrule" not in out, diag
    calls = _sbatch_calls(out)
    gpu_calls = [c for c in calls if "rule_prepare_model" in c]
    assert gpu_calls, diag
    call = gpu_calls[0]
    print(f"{len(submitted)} job(s) submitted; sbatch call of prepare_model:\n{call}")
    assert "--gpus=1" in call or "--gres=gpu:1" in call, call
    assert re.search(r"--mem 3000\b", call), call
    assert re.search(r"-t 10\b", call), call
    assert " -p debug" in call and " -A " not in call, call
    assert f"--cpus-per-task={min(2, os.cpu_count() or 1)}" in call, call  # = set-threads via cpus_per_task

    # SLURM's own record of the GPU job (kept MinJobAge=600 s): it asked for and got the GPU.
    jobid = next(j for j, log in submitted if "rule_prepare_model" in log)
    record = subprocess.run(["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in record, record
    assert re.search(r"gres[/:]gpu[:=]1", record), record

    # Nothing is left in the queue.
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True).stdout
    assert queue.strip() == "", queue
