"""distalign.evaluation.judge_server and distalign.cluster.prefetch: the judge-server launcher (with a fake ``vllm`` package) and the HF cache helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distalign.cluster.prefetch import hf_environment
from distalign.evaluation.judge_server import ServerError, judge_endpoint, openai_server

# A stand-in for `python -m vllm.entrypoints.openai.api_server`: same command line, serves /health and
# /v1/models. FAKE_* variables make it slow, fail, stay unhealthy, ignore SIGTERM or spawn a child.
FAKE_SERVER = r"""
import argparse, json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--model"); ap.add_argument("--host"); ap.add_argument("--port", type=int)
ap.add_argument("--served-model-name")
args, extra = ap.parse_known_args()
print("fake vllm argv", json.dumps(sys.argv[1:]), flush=True)
if os.environ.get("FAKE_PIDFILE"):
    open(os.environ["FAKE_PIDFILE"], "w").write(str(os.getpid()))
if os.environ.get("FAKE_EXIT"):
    print("RuntimeError: CUDA out of memory (fake)", flush=True)
    sys.exit(int(os.environ["FAKE_EXIT"]))
if os.environ.get("FAKE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("FAKE_CHILD"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    open(os.environ["FAKE_CHILD"], "w").write(str(child.pid))
time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
status = int(os.environ.get("FAKE_HEALTH_STATUS", "200"))

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path == "/health":
            self.send_response(status); self.end_headers(); return
        if self.path == "/v1/models":
            body = json.dumps({"data": [{"id": args.served_model_name, "extra": extra}]}).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
            self.wfile.write(body); return
        self.send_response(404); self.end_headers()

ThreadingHTTPServer((args.host, args.port), H).serve_forever()
"""


@pytest.fixture()
def fake_vllm(tmp_path, monkeypatch):
    """Put a fake `vllm` package first on PYTHONPATH (inherited by the server process)."""
    pkg = tmp_path / "fakepkgs" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (pkg, pkg.parent, pkg.parent.parent):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(FAKE_SERVER)
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(filter(None, [str(tmp_path / "fakepkgs"), os.environ.get("PYTHONPATH")])),
    )
    return tmp_path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _fake_server(fake_vllm: Path, **kw):
    """openai_server on the fake vllm: model "m", its log in s.log, polled every 0.1 s."""
    return openai_server("m", log_path=fake_vllm / "s.log", poll_interval=0.1, **kw)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_server_serves_then_is_stopped(fake_vllm):
    pidfile, childfile, log = fake_vllm / "pid", fake_vllm / "child", fake_vllm / "server.log"
    env = {"FAKE_PIDFILE": str(pidfile), "FAKE_CHILD": str(childfile), "FAKE_DELAY": "0.5"}
    with openai_server(
        "org/judge-30b",
        served_model_name="judge",
        extra_args=["--max-model-len", 8192],
        env=env,
        log_path=log,
        health_timeout=30,
        poll_interval=0.1,
    ) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        models = _get_json(f"{url}/models")
        assert models["data"][0]["id"] == "judge"
        assert models["data"][0]["extra"] == ["--max-model-len", "8192"]
        pid, child = int(pidfile.read_text()), int(childfile.read_text())
        assert _alive(pid) and _alive(child)
    assert _wait_gone(pid) and _wait_gone(child), "server or its child outlived the block"
    text = log.read_text()
    assert "vllm.entrypoints.openai.api_server --model org/judge-30b --host 127.0.0.1 --port" in text
    assert "fake vllm argv" in text


def test_the_job_log_says_when_the_server_started_was_healthy_and_stopped(fake_vllm, caplog):
    """A label job's log names the server's PID and log file, and its health and stop (rehearsal finding:
    the job log said nothing of the server, whose output was in a temporary file)."""
    caplog.set_level("INFO", logger="distalign.judge_server")
    with _fake_server(fake_vllm, env={"FAKE_PIDFILE": str(fake_vllm / "pid")}, health_timeout=30):
        pid = int((fake_vllm / "pid").read_text())
    messages = [r.getMessage() for r in caplog.records if r.name == "distalign.judge_server"]
    assert len(messages) == 3, messages
    assert (
        f"(pid {pid}, log {fake_vllm / 's.log'})" in messages[0]
        and "starting on http://127.0.0.1:" in messages[0]
    )
    assert "healthy at http://127.0.0.1:" in messages[1]
    assert messages[2] == f"model server (pid {pid}) stopped"


def test_early_exit_is_an_error_with_the_log_tail(fake_vllm):
    with (
        pytest.raises(ServerError, match=r"(?s)exited with code 3 before it was healthy.*CUDA out of memory"),
        _fake_server(fake_vllm, env={"FAKE_EXIT": "3"}),
    ):
        pytest.fail("the block must not run")


def test_unhealthy_server_times_out_and_is_killed(fake_vllm):
    pidfile = fake_vllm / "pid"
    t0 = time.monotonic()
    with (
        pytest.raises(ServerError, match=r"not healthy at http://127\.0\.0\.1:\d+/health after 1\.5 s"),
        _fake_server(
            fake_vllm, env={"FAKE_HEALTH_STATUS": "503", "FAKE_PIDFILE": str(pidfile)}, health_timeout=1.5
        ),
    ):
        pass
    assert time.monotonic() - t0 < 15
    assert _wait_gone(int(pidfile.read_text()))


def test_sigterm_ignored_then_sigkill_and_errors_in_block_still_stop_it(fake_vllm):
    pidfile = fake_vllm / "pid"
    with (
        pytest.raises(RuntimeError, match="judge crashed"),
        _fake_server(fake_vllm, env={"FAKE_IGNORE_TERM": "1", "FAKE_PIDFILE": str(pidfile)}, stop_grace=0.5),
    ):
        raise RuntimeError("judge crashed")
    assert _wait_gone(int(pidfile.read_text()))


def test_missing_interpreter_is_a_clear_error(tmp_path):
    with (
        pytest.raises(ServerError, match="cannot start the model server"),
        openai_server("m", python=str(tmp_path / "no-python"), log_path=tmp_path / "s.log"),
    ):
        pass


def test_judge_endpoint_external_url_starts_nothing():
    cfg = {"story": "llm", "llm": {"base_url": "http://judge:30000/v1", "model": "q"}}
    with judge_endpoint(cfg, python="/nonexistent/python") as llm:
        assert llm["base_url"] == "http://judge:30000/v1"
    with judge_endpoint({"story": "lexicon", "llm": {"model": "q"}}, python="/nonexistent") as llm:
        assert llm.get("base_url") is None  # offline judge only: no server


def test_judge_endpoint_starts_a_local_server(fake_vllm, monkeypatch):
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    cfg = {
        "story": "both",
        "llm": {"base_url": None, "model": "Qwen/Qwen3-30B-A3B-Instruct-2507", "api_key_env": "JUDGE_KEY"},
        "serve": {
            "python": sys.executable,
            "extra_args": ["--gpu-memory-utilization", "0.9"],
            "health_timeout": 30,
            "log": str(fake_vllm / "judge.log"),
        },
    }
    with judge_endpoint(cfg) as llm:
        assert llm["model"] == cfg["llm"]["model"] and llm["base_url"].startswith("http://127.0.0.1:")
        assert _get_json(f"{llm['base_url']}/models")["data"][0]["id"] == cfg["llm"]["model"]
        assert os.environ["JUDGE_KEY"] == "EMPTY"
    with (
        pytest.raises(ServerError, match=r"judge\.llm\.model"),
        judge_endpoint({"story": "llm", "llm": {"base_url": None, "model": None}}),
    ):
        pass


def test_hf_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCH", str(tmp_path))
    assert hf_environment({"home": "$SCRATCH/hf", "offline": True}) == {
        "HF_HOME": str((tmp_path / "hf").resolve()),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert hf_environment(None) == offline
    assert hf_environment({"offline": False})["HF_HUB_OFFLINE"] == "0"
    assert hf_environment({"offline": False})["HF_DATASETS_OFFLINE"] == "0"


def test_prefetch_cli_checks_the_cache_and_writes_a_marker(tmp_path):
    """--no-download against a hand-made hub cache: finds the snapshot; a missing model is a clear error."""
    home = tmp_path / "hf"
    repo = home / "hub" / "models--org--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    marker = tmp_path / "results" / "models" / ".prefetched" / "tiny.json"
    cmd = [
        sys.executable,
        "-m",
        "distalign.cluster.prefetch",
        "prefetch",
        "org/tiny",
        "--no-download",
        "--marker",
        str(marker),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(marker.read_text())
    assert info["repo_id"] == "org/tiny" and Path(info["path"]) == snap and info["files"] == 1
    assert not info["downloaded"]
    cmd[4] = "org/absent"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "cannot fetch Hugging Face model 'org/absent'" in proc.stderr
    assert "hf.prefetch is false" in proc.stderr


def test_sigterm_reaches_the_whole_process_group(fake_vllm):
    """vLLM runs engine processes beside the API server: stopping must reach them too."""
    childfile = fake_vllm / "child"
    with _fake_server(fake_vllm, env={"FAKE_CHILD": str(childfile)}):
        child = int(childfile.read_text())
        assert os.getpgid(child) != os.getpgid(0)  # its own group, not pytest's
    assert _wait_gone(child)


def test_prefetch_specs_cover_the_runs_hub_models_and_the_judge(repo):
    import yaml

    from distalign.cluster.prefetch import prefetch_markers, prefetch_specs
    from distalign.core.config import deep_merge
    from distalign.evaluation.judge_server import judge_starts_server

    base = yaml.safe_load((repo / "config/config.yaml").read_text())
    assert prefetch_specs(base) == {}  # the embedded default downloads nothing
    paper = deep_merge(base, yaml.safe_load((repo / "config/paper.yaml").read_text()))
    specs = prefetch_specs(paper)
    assert specs["qwen2.5-7b-instruct"] == ("Qwen/Qwen2.5-7B-Instruct", None)
    assert specs["judge"] == ("Qwen/Qwen3-30B-A3B-Instruct-2507", None) and len(specs) == 5
    assert judge_starts_server(paper)
    paper["judge"]["llm"]["base_url"] = "http://judge:30000/v1"
    assert "judge" not in prefetch_specs(paper)
    pattern = "results/models/.prefetched/{name}.json"
    assert prefetch_markers(paper, "llama-3.2-1b-instruct", pattern) == [
        "results/models/.prefetched/llama-3.2-1b-instruct.json"
    ]
    assert prefetch_markers(paper, "smollm2-135m-instruct", pattern) == []
