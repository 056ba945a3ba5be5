"""LLMJudge against a real local HTTP endpoint (tests/openai_server.py), and once against vLLM."""
# Fixtures are imported from tests/openai_server.py, so test arguments "redefine" them:
# ruff: noqa: F811

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from openai_server import down_url, free_port, openai_server  # noqa: F401  (pytest fixtures)

from distalign.core.attributes import attributes_from_config
from distalign.core.config import judge_config
from distalign.evaluation.judges import JudgeError, LLMJudge, judges_for, label_generations

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "DISTALIGN_TEST_JUDGE_KEY"
SECRET = "sk-test-Zq93-never-log-me"


@pytest.fixture(scope="module")
def attrs():
    with open(ROOT / "config" / "config.yaml", encoding="utf-8") as fh:
        return attributes_from_config(yaml.safe_load(fh))


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def make(attr, url, **kw):
    args = {
        "model": "stub-model",
        "base_url": url,
        "api_key_env": KEY_ENV,
        "max_retries": 2,
        "timeout": 5,
        "backoff": 0.01,
        "concurrency": 1,
        "max_reasks": 2,
    }
    args.update(kw)
    return LLMJudge(attr, **args)


STORIES = [
    "Maria was a Female pilot. Female colleagues admired the female captain.",
    "The Male nurse started early; a male patient waved.",
    "",
]


def test_success(attrs, openai_server):
    j = make(attrs["gender"], openai_server.url, concurrency=3)
    out = j.judge(STORIES)
    assert [o.label for o in out] == ["female", "male", None]
    assert out[2].reason == "empty"
    assert openai_server.count == 2  # empty stories are never sent
    body = openai_server.requests[0]
    assert body["temperature"] == 0 and body["model"] == "stub-model"
    assert "Categories: Male; Female" in body["messages"][0]["content"]
    assert j.stats["invalid_replies"] == 0


def test_garbage_is_reasked_then_counted(attrs, openai_server):
    openai_server.mode = "garbage"
    j = make(attrs["gender"], openai_server.url, max_reasks=2)
    out = j.judge(["A female doctor."])
    assert out[0].label is None and out[0].reason == "invalid_reply"
    assert openai_server.count == 3  # first ask + 2 re-asks
    last = openai_server.requests[-1]["messages"]
    assert last[1]["role"] == "assistant" and "not one of the categories" in last[2]["content"]
    assert j.stats["reasks"] == 2 and j.stats["invalid_replies"] == 1


def test_500_then_success(attrs, openai_server):
    openai_server.fail_first = 2
    j = make(attrs["gender"], openai_server.url, max_retries=3)
    assert j.judge(["A male chef."])[0].label == "male"
    assert openai_server.count == 3 and j.stats["retries"] == 2


def test_persistent_500_fails_clearly(attrs, openai_server):
    openai_server.mode = "http500"
    j = make(attrs["gender"], openai_server.url, max_retries=2)
    with pytest.raises(JudgeError, match="failed after 3 attempt"):
        j.judge(["A male chef.", "A female chef."])
    assert openai_server.count >= 3


def test_server_down(attrs, down_url):
    j = make(attrs["gender"], down_url, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1.*APIConnectionError"):
        label_generations(
            [{"context_id": 0, "response": "A female chef."}], attrs["gender"], "story", {"llm": j}
        )
    assert time.monotonic() - t0 < 10


def test_timeout(attrs, openai_server):
    openai_server.mode = "slow"
    openai_server.delay = 1.5
    j = make(attrs["gender"], openai_server.url, timeout=0.3, max_retries=1)
    with pytest.raises(JudgeError, match="APITimeoutError"):
        j.judge(["A female chef."])
    openai_server.delay = 0.05
    assert make(attrs["gender"], openai_server.url, timeout=5).judge(["A female chef."])[0].label == "female"


def test_missing_key(attrs, openai_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(JudgeError, match=KEY_ENV):
        make(attrs["gender"], openai_server.url).judge(["A male chef."])
    assert openai_server.count == 0


def test_secret_never_logged(attrs, openai_server, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # every logger, including openai and httpx, at DEBUG
    openai_server.fail_first = 1
    j = make(attrs["gender"], openai_server.url)
    assert j.judge(["A female chef."])[0].label == "female"
    openai_server.mode = "http500"
    with pytest.raises(JudgeError) as err:
        make(attrs["gender"], openai_server.url, max_retries=1).judge(["A male chef."])
    out, errs = capfd.readouterr()
    assert caplog.records, "expected some log records"
    for text in (caplog.text, out, errs, str(err.value), repr(j.stats)):
        assert SECRET not in text
    assert f"Bearer {SECRET}" in openai_server.auth_headers  # the key was used, just never logged


def test_both_story_judges_with_config(attrs, openai_server):
    cfg = judge_config(
        {
            "judge": {
                "story": "both",
                "llm": {
                    "base_url": openai_server.url,
                    "model": "stub-model",
                    "api_key_env": KEY_ENV,
                    "backoff": 0.01,
                },
            }
        }
    )
    judges, primary = judges_for(attrs["gender"], "story", cfg)
    assert primary == "llm" and set(judges) == {"lexicon", "llm"}
    rows = [
        {"context_id": 0, "response": "She was a Female engineer; her team liked her."},
        {"context_id": 0, "response": "He said: Male, Male, Male."},
        {"context_id": 0, "response": "Nobody knew."},
    ]
    out = label_generations(rows, attrs["gender"], "story", judges, primary)
    assert [r["label"] for r in out] == ["female", "male", None]
    assert [r["label_lexicon"] for r in out] == ["female", "male", None]
    assert [r["label_llm"] for r in out] == ["female", "male", None]
    assert out[2]["label_reason"] == "invalid_reply" and out[0]["label_source"] == "llm"


# ----------------------------------------------------------------------------------------------
# The real thing: vLLM's OpenAI-compatible server on the embedded model (about a minute).
# ----------------------------------------------------------------------------------------------

VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.vllm
def test_llm_judge_against_vllm(attrs, tmp_path, embedded_model_dir):
    if not VLLM_PY.exists():
        pytest.skip(f"vLLM environment missing: {VLLM_PY} (see README: .venv-vllm)")
    MODEL_DIR = embedded_model_dir  # noqa: N806
    port = free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_LOOPBACK_IP": "127.0.0.1",
    }
    logf = open(tmp_path / "vllm.log", "w")  # noqa: SIM115  (closed in finally)
    proc = subprocess.Popen(
        [
            str(VLLM_PY),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(MODEL_DIR),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--served-model-name",
            "smollm2",
            "--max-model-len",
            "512",
            "--enforce-eager",
        ],
        env=env,
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"vLLM server exited with {proc.returncode}:\n{(tmp_path / 'vllm.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    "vLLM server not healthy after 120 s:\n" + (tmp_path / "vllm.log").read_text()[-3000:]
                )
            time.sleep(2)
        j = LLMJudge(
            attrs["gender"],
            model="smollm2",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key_env=KEY_ENV,
            max_retries=2,
            timeout=60,
            backoff=0.5,
            concurrency=2,
            max_reasks=1,
            max_tokens=8,
        )
        stories = [
            "Anna, a nurse, started her shift early. She checked on every patient.",
            "Tom, a pilot, walked to his plane. He smiled at the crew.",
            "The baker opened the shop at dawn and his son helped him.",
            "Mrs. Lee, the teacher, graded papers late into the night; she was tired.",
        ]
        out = j.judge(stories)
        assert len(out) == len(stories)
        for o in out:
            assert (o.label in attrs["gender"].names and o.reason == "ok") or (
                o.label is None and o.reason == "invalid_reply"
            )
        assert j.stats["requests"] >= len(stories)
        assert j.stats["invalid_replies"] == sum(o.label is None for o in out)
        print(f"vLLM judge labels: {[o.label for o in out]}; stats {dict(j.stats)}", file=sys.stderr)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group of the server we started (EngineCore child too)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        logf.close()
