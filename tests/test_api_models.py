"""API models (models.<m>.source: openai): generation through an endpoint, its answer cache, and the DAG.

The library tests talk to :class:`test_endpoints.FaultServer`, a stub OpenAI-compatible server on
127.0.0.1 for injecting faults (it echoes the prompt; it is not a model). The real server (vLLM
serving the embedded model) is in tests/test_api_vllm_server.py.
"""

import json

import pytest
import yaml
from test_endpoints import FINGERPRINT, MODEL, FaultServer

from distalign.core.config import ConfigError, GenerationSpec, validate_config
from distalign.core.endpoints import EndpointError
from distalign.core.io import write_jsonl
from distalign.generation.api_backend import AnswerCache, run_api_job
from distalign.generation.job import GenerationError, make_job
from distalign.generation.runner import generate
from distalign.modeling.models import prepare_model

KEY_ENV = "DISTALIGN_TEST_API_KEY"
API = {"base_url": None, "send_seed": True, "api_key_env": KEY_ENV, "timeout": 5.0, "max_retries": 0}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")


def _config(config, url, **api):
    config["models"]["hosted"] = {
        "source": "openai",
        "path_or_id": MODEL,
        "api": {**API, "base_url": url, **api},
    }
    config["run"]["models"] = ["hosted"]
    config["generation"].update(samples_per_prompt=2, temperature=0.7, top_p=0.9)
    return validate_config(config)


def _pointer(tmp_path, config):
    out = tmp_path / "models" / "hosted"
    prepare_model("hosted", config["models"]["hosted"], out)
    return out


def _requests(n=3):
    return [
        {
            "context_id": i,
            "context": f"c{i}",
            "prompt_id": f"test-{i}",
            "prompt": f"Who is person {i}?",
            "target": [0.5, 0.5],
        }
        for i in range(n)
    ]


def _job(config, tmp_path, method):
    """make_job of ``method`` on the API model (and its spec)."""
    spec = GenerationSpec.from_config(config, "uk-real", method, model="hosted")
    kw = dict(dataset="uk-real", model="hosted", task="attribute", model_dir=_pointer(tmp_path, config))
    return make_job(_requests(), spec=spec, **kw), spec


def _generate(config, model_dir, cache_dir, **kw):
    spec = GenerationSpec.from_config(config, "uk-real", "zero-shot", model="hosted")
    spec = GenerationSpec(**{**spec.__dict__, "api_cache": str(cache_dir)})
    return generate(
        _requests(), spec=spec, dataset="uk-real", model="hosted", task="attribute", model_dir=model_dir, **kw
    )


def test_one_request_per_sample_with_its_seed_and_what_the_endpoint_reported(config, tmp_path):
    with FaultServer() as server:
        cfg = _config(config, server.url)
        rows = _generate(cfg, _pointer(tmp_path, cfg), tmp_path / "cache")
    assert len(rows) == 6 and server.count == 6  # 3 prompts x 2 samples, none collapsed
    seeds = [b["seed"] for b in server.bodies]
    assert sorted(seeds) == sorted(r["seed"] for r in rows) and len(set(seeds)) == 6
    body = server.bodies[0]
    assert (body["model"], body["temperature"], body["top_p"], body["n"]) == (MODEL, 0.7, 0.9, 1)
    assert body["max_tokens"] == cfg["generation"]["max_new_tokens"]["attribute"]
    sent = sorted(b["messages"][0]["content"] for b in server.bodies)  # concurrent: any order
    assert sent == sorted(r["prompt"] for r in rows) and all(len(b["messages"]) == 1 for b in server.bodies)
    r = rows[0]
    assert r["response"] == f"echo: {r['prompt']}" and r["stopped"] is True and r["n_tokens"] == 1
    assert (r["endpoint_model"], r["system_fingerprint"], r["backend"]) == (MODEL, FINGERPRINT, "openai")
    assert r["steering_token"] is None and r["probe_logprobs"] is None
    assert [(x["prompt_id"], x["sample"]) for x in rows[:2]] == [("test-0", 0), ("test-0", 1)]
    import logging

    assert all(logging.getLogger(n).getEffectiveLevel() >= logging.WARNING for n in ("httpx", "openai"))


@pytest.mark.parametrize(
    "fault, error", [(("status", 500, {}), "HTTP 500"), (("drop",), "APIConnectionError")]
)
def test_a_rerun_sends_nothing_and_a_killed_job_resumes_to_the_same_bytes(
    config, tmp_path, fault, error, caplog
):
    with FaultServer() as server:
        cfg = _config(config, server.url)
        model_dir = _pointer(tmp_path, cfg)
        whole = _generate(cfg, model_dir, tmp_path / "whole")
        again = _generate(cfg, model_dir, tmp_path / "whole")
        assert server.count == 6 and again == whole  # the rerun was answered from the cache
    # A job that dies after 2 answers (the endpoint fails for good, no retries): 2 lines are kept...
    with FaultServer([("ok",), ("ok",), fault]) as server:
        cfg = _config(config, server.url, concurrency=1)
        model_dir = _pointer(tmp_path / "b", cfg)
        with pytest.raises(EndpointError, match=error):
            _generate(cfg, model_dir, tmp_path / "resumed")
        cache_file = tmp_path / "resumed" / "hosted.jsonl"
        assert len(cache_file.read_text().splitlines()) == 2
        # ... and a torn line, as a SIGKILL mid-write leaves, is ignored
        with cache_file.open("a") as fh:
            fh.write('{"key": "abc", "answ')
        resumed = _generate(cfg, model_dir, tmp_path / "resumed")
        assert server.count == 3 + 4  # the resumed job sent only what was not answered
        assert "skipped 1 unreadable line(s)" in caplog.text
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(a, whole)
    write_jsonl(b, resumed)
    assert a.read_bytes() == b.read_bytes()
    assert len(AnswerCache(cache_file)) == 6


def test_send_seed_false_sends_none_and_keys_the_cache_apart(config, tmp_path):
    with FaultServer() as server:
        cfg = _config(config, server.url, send_seed=False)
        rows = _generate(cfg, _pointer(tmp_path, cfg), tmp_path / "cache")
        assert all("seed" not in b for b in server.bodies) and all(r["seed"] for r in rows)
        cfg = _config(config, server.url, send_seed=True)
        _generate(cfg, _pointer(tmp_path / "seeded", cfg), tmp_path / "cache")
        assert server.count == 12  # another endpoint setting, other answers


def test_methods_that_need_weights_refuse_an_api_model(config, tmp_path):
    cfg = _config(config, "http://127.0.0.1:9/v1")
    with pytest.raises(GenerationError, match=r"method 'ours' \(kind ours\) needs the model's weights"):
        _job(cfg, tmp_path, "ours")


def test_api_key_is_required_exactly_where_the_source_is_openai(config):
    bad = json.loads(json.dumps(config))
    bad["models"]["hosted"] = {"source": "openai", "path_or_id": "m"}
    with pytest.raises(
        ConfigError, match=r"'models\.hosted\.api': a model of source openai needs its endpoint"
    ):
        validate_config(bad)
    bad["models"]["hosted"] = {"source": "path", "path_or_id": "/m", "api": {"base_url": "http://x/v1"}}
    with pytest.raises(ConfigError, match=r"'models\.hosted\.api': only models of source openai"):
        validate_config(bad)


def test_run_api_job_without_a_cache_folder_is_a_clear_error(config, tmp_path):
    with FaultServer() as server:
        cfg = _config(config, server.url)
        job, spec = _job(cfg, tmp_path, "zero-shot")
        with pytest.raises(GenerationError, match="generation.api_cache"):
            run_api_job(job, spec.endpoint, None)


# ---- the DAG: what `all` runs for an API model, and what a path asks ---------------------------


def _api_workdir(workdir, url="http://127.0.0.1:9/v1"):
    override = {
        "run": {"models": ["hosted"], "methods": ["zero-shot", "pe-explicit", "ift", "ours"]},
        "models": {
            "hosted": {
                "source": "openai",
                "path_or_id": MODEL,
                "api": {"base_url": url, "api_key_env": KEY_ENV},
            }
        },
    }
    (workdir / "config" / "api.yaml").write_text(yaml.safe_dump(override))
    return workdir


def test_all_on_an_api_model_plans_prompting_methods_only_and_says_why(workdir, snakemake_run):
    wd = _api_workdir(workdir)
    proc = snakemake_run(
        wd, "-n", "--configfile", "config/config.yaml", "config/api.yaml", "--", "all", timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout
    assert "API model(s) hosted (source openai): skipping methods ift, ours" in out
    assert "results/generations/uk-real/hosted/zero-shot/attribute.jsonl" in out
    assert "results/generations/uk-real/hosted/pe-explicit/attribute.jsonl" in out
    for absent in ("rule train:", "rule capabilities:", "rule probe:", "hosted/ours/", "hosted/ift/"):
        assert absent not in out, absent


@pytest.mark.parametrize(
    "path, reason",
    [
        (
            "results/metrics/uk-real/hosted/ours/attribute.json",
            r"method 'ours' \(kind ours\) needs the model's weights",
        ),
        ("results/probes/uk-real/hosted/zero-shot.json", r"the probe needs the model's weights or logits"),
    ],
)
def test_a_weights_path_of_an_api_model_fails_at_dag_time(workdir, snakemake_run, path, reason):
    wd = _api_workdir(workdir)
    proc = snakemake_run(
        wd, "-n", "--configfile", "config/config.yaml", "config/api.yaml", "--", path, timeout=300
    )
    assert proc.returncode != 0
    import re

    assert re.search(reason, proc.stdout), proc.stdout[-3000:]
    assert "models.hosted.source: openai" in proc.stdout


def test_generation_of_an_api_model_asks_no_gpu(workdir, snakemake_run):
    wd = _api_workdir(workdir)
    path = "results/generations/uk-real/hosted/zero-shot/attribute.jsonl"
    proc = snakemake_run(
        wd, "-n", "--configfile", "config/config.yaml", "config/api.yaml",
        "--config", "generation={backend: vllm}", "training={device: cuda}", "--", path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    block = proc.stdout.split("rule generate:")[1].split("\n\n")[0]
    assert "gpu=0" in block.replace(" ", ""), block


@pytest.mark.parametrize("problem", ["unreachable", "no key"])
def test_a_bad_endpoint_stops_the_run_before_any_generation(workdir, snakemake_run, monkeypatch, problem):
    """The pre-flight job of the first generation finds it; nothing is generated or cached."""
    from test_endpoints import FaultServer as Server

    path = "results/generations/uk-real/hosted/zero-shot/attribute.jsonl"
    with Server() as server:
        url = "http://127.0.0.1:9/v1" if problem == "unreachable" else server.url
        if problem == "no key":
            monkeypatch.delenv(KEY_ENV)
        wd = _api_workdir(workdir, url)
        proc = snakemake_run(
            wd, "--cores", "1", "--configfile", "config/config.yaml", "config/api.yaml", "--", path
        )
    assert proc.returncode != 0
    log = "\n".join(p.read_text() for p in (wd / "results/logs/preflight").rglob("*.log"))
    want = "GET http://127.0.0.1:9/v1/models" if problem == "unreachable" else f"{KEY_ENV} is not set"
    assert want in log and "models.hosted.api" in log, log[-2000:]
    assert not (wd / path).exists() and not (wd / "results/cache").exists()


def test_tables_show_no_weights_rows_for_an_api_model(config):
    from distalign.report.tables import mae_table, report_config

    cfg = _config(config, "http://127.0.0.1:9/v1")
    cfg["run"]["models"] = ["hosted", "smollm2-135m-instruct"]
    rc = report_config(cfg)
    local = {**cfg, "run": {**cfg["run"], "models": ["smollm2-135m-instruct"]}}
    assert rc["api_models"] == ["hosted"] and "api_models" not in report_config(local)
    df = mae_table(
        [],
        rc,
        datasets=["uk-real"],
        models=["hosted", "smollm2-135m-instruct"],
        methods=["zero-shot", "ours"],
    )
    rows = list(zip(df["Model"], df["Method"], strict=True))
    assert ("hosted", "Ours") not in rows and ("hosted", "Zero-shot") in rows
    assert ("smollm2-135m-instruct", "Ours") in rows
