"""An API model end to end: the workflow audits a model it cannot load, served by a real vLLM
OpenAI-compatible server on 127.0.0.1 (the embedded SmolLM2, started by the test with the library's
``openai_server``), through ``snakemake all`` with a tiny config.

Slow (the server loads in about a minute on 2 cores) and needs .venv-vllm.
"""

import json
from pathlib import Path

import pytest
import yaml
from test_workflow_dag import write_tiny

from distalign.core.io import read_jsonl
from distalign.evaluation.judge_server import openai_server

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
KEY_ENV = "DISTALIGN_TEST_API_KEY"
SERVED = "smollm2-served"
SECRET = "sk-test-Hq41-never-write-me"

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def _config(url: str) -> dict:
    return {
        "run": {
            "datasets": ["tiny-real"],
            "models": ["hosted"],
            "methods": ["zero-shot", "pe-explicit", "ours"],
        },
        "models": {
            "hosted": {
                "source": "openai",
                "path_or_id": SERVED,
                "api": {"base_url": url, "api_key_env": KEY_ENV, "concurrency": 2, "timeout": 120},
            }
        },
        # Stories of 32 tokens: through the CPU server a story token costs about 60 ms, and the 64
        # story requests (two generations, one calibration) took 4 of this test's 9 minutes at 64 tokens.
        "generation": {"samples_per_prompt": 2, "max_new_tokens": {"attribute": 16, "story": 32}},
        "report": {
            "artefacts": ["table1", "table2", "table4"],
            "table1_methods": ["zero-shot", "hinted-calibrated", "ours"],
        },
    }


def test_snakemake_all_on_a_model_behind_a_vllm_server(
    tmp_path, embedded_model_dir, snakemake_run, monkeypatch
):
    if not VLLM_PY.exists():
        pytest.skip(f"vLLM environment missing: {VLLM_PY} (see README: .venv-vllm)")
    monkeypatch.setenv(KEY_ENV, SECRET)  # the local server checks no key; it must not leak into a file
    import shutil

    for name in ("config", "resources"):
        shutil.copytree(ROOT / name, tmp_path / name)
    write_tiny(tmp_path)
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_LOOPBACK_IP": "127.0.0.1"}
    with openai_server(
        str(embedded_model_dir),
        python=str(VLLM_PY),
        served_model_name=SERVED,
        extra_args=["--max-model-len", "512", "--enforce-eager", "--seed", "0"],
        env=env,
        health_timeout=400,
        log_path=tmp_path / "vllm-server.log",
    ) as url:
        (tmp_path / "config/api.yaml").write_text(yaml.safe_dump(_config(url)))
        args = ("--configfile", "config/tiny.yaml", "config/api.yaml")
        proc = snakemake_run(tmp_path, "--cores", "2", "all", *args, timeout=900)
        assert proc.returncode == 0, proc.stdout[-5000:]
        out = proc.stdout
        assert "skipping methods ours" in out and "skipping table4" in out
        gen = tmp_path / "results/generations/tiny-real/hosted/zero-shot/attribute.jsonl"
        rows = read_jsonl(gen)
        assert len(rows) == 2 * 8 and {r["backend"] for r in rows} == {"openai"}  # 8 test prompts x 2 samples
        assert {r["endpoint_model"] for r in rows} == {SERVED} and all(r["response"].strip() for r in rows)
        assert (
            len({(r["prompt_id"], r["sample"]) for r in rows}) == 16 and len({r["seed"] for r in rows}) == 16
        )
        sent = [
            *(tmp_path / "results/generations").rglob("*.jsonl"),
            *(tmp_path / "results/calibration").rglob("generations.jsonl"),
        ]
        assert len(sent) >= 2 * 2 + 2  # (zero-shot, hinted-calibrated) x 2 tasks, 2 calibration runs, ...
        cache = tmp_path / "results/cache/api/hosted.jsonl"
        assert len(cache.read_text().splitlines()) == sum(len(read_jsonl(f)) for f in sent)
        hinted = read_jsonl(tmp_path / "results/generations/tiny-real/hosted/hinted-calibrated/story.jsonl")
        assert {r["hint"] for r in hinted} <= {"male", "female"} and all(
            r["prompt"].endswith(".") for r in hinted
        )
        weights = json.loads(
            (
                tmp_path / "results/calibration/tiny-real/hosted/hinted-calibrated/story/weights.json"
            ).read_text()
        )
        assert len(weights["confusion"]) == 2 and 0 <= weights["expected_mae"] <= 1
        for name in ("table1", "table2"):
            table = (tmp_path / f"results/tables/{name}.csv").read_text()
            assert "Zero-shot" in table and "Hinted (calibrated)" in table and "Ours" not in table
        # A forced rerun is answered from the cache, byte for byte.
        before = gen.read_bytes()
        target = str(gen.relative_to(tmp_path))
        proc = snakemake_run(
            tmp_path, "--cores", "2", "--forcerun", "generate", *args, "--", target, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-3000:]
        log = (tmp_path / "results/logs/generate/tiny-real/hosted/zero-shot/attribute.log").read_text()
        assert "16 requests, 16 answered before" in log and "0 to send" in log
        assert gen.read_bytes() == before
        # A weights path of the API model stops at DAG time.
        bad = "results/metrics/tiny-real/hosted/ours/attribute.json"
        proc = snakemake_run(tmp_path, "-n", "--configfile", "config/tiny.yaml", "config/api.yaml", "--", bad)
        assert proc.returncode != 0 and "needs the model's weights" in proc.stdout
    leaks = [
        str(p)
        for folder in ("results", ".snakemake")
        for p in (tmp_path / folder).rglob("*")
        if p.is_file() and SECRET.encode() in p.read_bytes()
    ]
    assert not leaks, leaks
