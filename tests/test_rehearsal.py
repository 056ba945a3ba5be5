"""The paper grid, rehearsed (issue 25): config/rehearsal.yaml on top of config/paper.yaml, and unit tests
of the integration bugs the rehearsal found (each fails without its fix)."""

from __future__ import annotations

import pytest
import yaml


def test_a_judge_served_from_a_local_folder_is_not_prefetched(repo, tmp_path):
    """Rehearsal bug 1: prefetch_models asked the hub for judge.llm.model 'results/models/<name>' (a local
    folder that vLLM serves as it is) and failed ('Repo id must be in the form ...')."""
    from distalign.cluster.prefetch import is_local_model, prefetch_specs
    from distalign.core.config import deep_merge

    base = yaml.safe_load((repo / "config/config.yaml").read_text())
    paper = deep_merge(base, yaml.safe_load((repo / "config/paper.yaml").read_text()))
    assert prefetch_specs(paper)["judge"] == ("Qwen/Qwen3-30B-A3B-Instruct-2507", None)
    folder = tmp_path / "judge"
    folder.mkdir()
    for model in ("results/models/smollm2-135m-instruct", str(folder), "./judge", "~/judge"):
        paper["judge"]["llm"]["model"] = model
        assert "judge" not in prefetch_specs(paper), model
    assert not is_local_model("Qwen/Qwen3-30B-A3B-Instruct-2507") and not is_local_model("gpt2")


def _artefact_files(report: dict) -> list[str]:
    """The files that rule all builds for report.artefacts (workflow/rules/common.smk artefact_targets)."""
    out = []
    for name in report["artefacts"]:
        if name.startswith("table") or name in ("steering_diagnosis", "judge_check"):
            out += [f"results/tables/{name}.csv", f"results/tables/{name}.md"]
        else:
            out += [f"results/figures/{name}.png", f"results/figures/{name}.pdf"]
    return out


def _servers_left(workdir) -> list[str]:
    """vLLM OpenAI servers still running with ``workdir`` as their working directory (the label jobs')."""
    import os
    from pathlib import Path

    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if "vllm.entrypoints.openai.api_server" in cmd and Path(cwd) == Path(workdir):
            left.append(f"{proc.name}: {cmd}")
    return left


@pytest.mark.slow
@pytest.mark.vllm
def test_rehearsal_builds_every_paper_artefact(repo, workdir, snakemake_run):
    """config/rehearsal.yaml end to end, as its header says: prepare the embedded model, prefetch_models
    against the stand-in hub (tests/rehearsal_hub.py), then `all` offline. Every artefact of paper.yaml's
    report list is built and non-empty, each story label job started, health-checked and stopped its own
    judge server (and none is left), and table5 has lm-eval rows paired with the base, and a leak column. 58 jobs, about 10 minutes on 2 cores."""
    import csv
    import json
    import re
    import subprocess
    import sys
    import time

    from test_lm_eval_prefetch import _jobs

    from distalign.core.config import load_config

    if not (repo / ".venv-vllm" / "bin" / "python").exists():
        pytest.skip("vLLM environment missing: .venv-vllm (see README)")
    pytest.importorskip("lm_eval")
    default = ("--configfile", "config/config.yaml")
    configs = (*default, "config/paper.yaml", "config/rehearsal.yaml")
    proc = snakemake_run(workdir, "--cores", "1", *default, "--", "results/models/smollm2-135m-instruct")
    assert proc.returncode == 0, proc.stdout[-3000:]

    url_file = workdir / "hub.url"
    hub = subprocess.Popen([sys.executable, str(repo / "tests" / "rehearsal_hub.py"), str(url_file)])
    try:
        deadline = time.monotonic() + 60
        while not url_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        env = {"HF_ENDPOINT": url_file.read_text().strip(), "HF_HUB_DISABLE_TELEMETRY": "1"}
        proc = snakemake_run(workdir, "--cores", "1", "prefetch_models", *configs, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:]
        # The login node fetched arc_easy's dataset and checked both tasks build offline.
        marker = json.loads((workdir / "results/lm_eval/datasets/allenai--ai2_arc.json").read_text())
        assert [c["splits"] for c in marker["configs"] if c["name"] == "ARC-Easy"], marker
        assert json.loads((workdir / "results/lm_eval/tasks.json").read_text())["checked_offline"] is True
    finally:
        hub.terminate()
        hub.wait(timeout=30)

    env = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens: the jobs must read the caches
    proc = snakemake_run(workdir, "--cores", "2", "all", "--keep-going", *configs, env=env, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-5000:]
    jobs = _jobs(proc.stdout)
    assert jobs["capabilities"] == 2 and not [j for j in jobs if j.startswith("prefetch_lm_eval")], jobs

    paper = load_config(repo / "config/config.yaml", repo / "config/paper.yaml")
    rehearsal = load_config(
        repo / "config/config.yaml", repo / "config/paper.yaml", repo / "config/rehearsal.yaml"
    )
    assert rehearsal["report"]["artefacts"] == paper["report"]["artefacts"]
    missing = [f for f in _artefact_files(paper["report"]) if not (workdir / f).is_file()]
    empty = [
        f for f in _artefact_files(paper["report"]) if f not in missing and not (workdir / f).stat().st_size
    ]
    assert not missing and not empty, (missing, empty)
    assert not _servers_left(workdir)
    story_labels = sorted((workdir / "results/logs/evaluate/label").glob("*/*/*/story.log"))
    assert len(story_labels) == 2, story_labels  # zero-shot and ours (table2)
    for log in story_labels:
        text = log.read_text()
        assert re.search(r"model server for \S+ starting on http://127\.0\.0\.1:\d+ \(pid \d+, log ", text), (
            log
        )
        assert "model server healthy at" in text and re.search(r"model server \(pid \d+\) stopped", text), log
        server_log = log.with_name("story.judge-server.log")
        assert f"log {server_log.relative_to(workdir)})" in text and server_log.stat().st_size, log

    with open(workdir / "results/tables/table5.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, "table5 is empty"
    tasks = set(rehearsal["capabilities"]["lm_eval_tasks"])
    for method in ("zero-shot", "ours"):
        cap = json.loads((workdir / f"results/capabilities/uk-real/smollm2-bf16/{method}.json").read_text())
        assert cap["lm_eval_version"] and tasks <= set(cap["tasks"]), cap
        assert 0.0 <= cap["tasks"]["arc_easy"]["acc,none"] <= 1.0, cap
        assert len(cap["items"]["arc_easy"]) == 2 and cap["leak"]["n"] == 3, cap  # per item; the leak check
    assert {"Δ arc_easy acc", "Δ arc_easy acc CI low", "Leak", "Δ Leak"} <= set(rows[0]), rows[0]
    assert {r["Method"] for r in rows} == {"Zero-shot", "Ours"}
