"""The OpenAI-compatible paraphraser against a real HTTP endpoint on 127.0.0.1."""

import json

import pytest
import yaml
from openai_server import OpenAIStubServer, down_url  # noqa: F401

from distalign.core.attributes import attribute_of_dataset
from distalign.data.prompts import (
    OpenAIParaphraser,
    ParaphraseError,
    build_prompts,
    load_templates,
    validate_paraphrases,
)
from distalign.data.targets import build_targets, load_census

SECRET = "sk-test-distalign-0123456789abcdef"


@pytest.fixture()
def server():
    with OpenAIStubServer(mode="echo-paraphrase") as s:
        yield s


def _para(url, tmp_path, monkeypatch, **kw):
    monkeypatch.setenv("DISTALIGN_TEST_KEY", SECRET)
    return OpenAIParaphraser(
        model="stub-model",
        base_url=url,
        api_key_env="DISTALIGN_TEST_KEY",
        cache=tmp_path / "cache.jsonl",
        backoff=0.01,
        **kw,
    )


def _us_targets(repo, config):
    attr = attribute_of_dataset(config, "us-even")
    return attr, build_targets(load_census(repo / "resources/census/us.csv"), attr, "even")[:3]


def test_live_endpoint_then_cache_hit_sends_nothing(repo, config, server, tmp_path, monkeypatch):
    attr, targets = _us_targets(repo, config)
    bank = load_templates(repo / "resources/prompts/templates.yaml")
    splits = {"train": 20, "val": 20, "test": 20}

    def run():
        para = _para(server.url, tmp_path, monkeypatch)

        def pool(context, seed):
            return para.pool(bank, "attribute", attr.name, context, 60, seed)

        return para, build_prompts(
            targets, attr, "attribute", bank, splits, 11, census_name="us", pool_fn=pool
        )

    para1, rows1 = run()
    assert para1.requests_sent > 0 and server.count == para1.requests_sent
    assert server.auth_headers[0] == f"Bearer {SECRET}"
    for t in targets:
        mine = [r for r in rows1 if r["context_id"] == t["context_id"]]
        assert len(mine) == 60 and len({r["prompt"] for r in mine}) == 60
        assert all(t["context"] in r["prompt"] for r in mine)
    before = server.count
    para2, rows2 = run()
    assert para2.requests_sent == 0 and server.count == before  # every request came from the cache
    assert rows2 == rows1


def test_bad_replies_are_reasked_and_then_fail_clearly(tmp_path, monkeypatch):
    with OpenAIStubServer(mode="garbage") as s:
        para = _para(s.url, tmp_path, monkeypatch, max_attempts_per_template=3)
        assert para.paraphrase('Tell me about "Nurses".', "Nurses", 5, seed=1) == []
        assert s.count == 3  # asked again for what was missing, up to the attempt limit


def test_validation_drops_lines_without_context_and_duplicates():
    reply = '1. Who are "Nurses"?\n- Who are "Nurses"?\nSomething else\n\n"What about "Nurses" today?"'
    assert validate_paraphrases(reply, "Nurses", set()) == [
        'Who are "Nurses"?',
        '"What about "Nurses" today?"',
    ]


def test_server_errors_are_retried(tmp_path, monkeypatch):
    with OpenAIStubServer(mode="echo-paraphrase", fail_first=2) as s:
        para = _para(s.url, tmp_path, monkeypatch, max_retries=3)
        out = para.paraphrase('Ask about "Nurses".', "Nurses", 4, seed=1)
        assert len(out) == 4 and s.count == 3


def test_endpoint_down_is_a_clear_error(tmp_path, monkeypatch, down_url):  # noqa: F811
    para = _para(down_url, tmp_path, monkeypatch, max_retries=2)
    with pytest.raises(ParaphraseError, match=r"failed after 3 attempts"):
        para.paraphrase('Ask about "Nurses".', "Nurses", 4, seed=1)


def test_missing_api_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTALIGN_NO_SUCH_KEY", raising=False)
    para = OpenAIParaphraser(
        model="m",
        base_url="http://127.0.0.1:9/v1",
        api_key_env="DISTALIGN_NO_SUCH_KEY",
        cache=tmp_path / "c.jsonl",
    )
    with pytest.raises(ParaphraseError, match="environment variable DISTALIGN_NO_SUCH_KEY is not set"):
        para.paraphrase('Ask about "Nurses".', "Nurses", 2, seed=1)
    # a blank key is refused too (it used to be sent), like the judge's, naming the config key
    monkeypatch.setenv("DISTALIGN_NO_SUCH_KEY", "  ")
    with pytest.raises(ParaphraseError, match=r"is set but empty.*prompts\.openai\.api_key_env"):
        para.paraphrase('Ask about "Nurses".', "Nurses", 2, seed=1)


def test_prompts_rule_with_the_openai_paraphraser(workdir, snakemake_run, server):
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["prompts"]["paraphraser"] = "openai"
    cfg["prompts"]["per_split"] = {"train": 10, "val": 10, "test": 10}
    cfg["prompts"]["openai"].update(
        base_url=server.url,
        model="stub-model",
        api_key_env="DISTALIGN_TEST_KEY",
        cache="results/cache/paraphrases.jsonl",
    )
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/prompts/us-even/attribute.jsonl"
    # without the key, Snakemake refuses before running anything
    proc = snakemake_run(workdir, "--cores", "1", target, env={"DISTALIGN_TEST_KEY": ""}, timeout=120)
    assert proc.returncode != 0 and "DISTALIGN_TEST_KEY" in proc.stdout
    assert server.count == 0
    proc = snakemake_run(workdir, "--cores", "1", target, env={"DISTALIGN_TEST_KEY": SECRET}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = [json.loads(x) for x in (workdir / target).read_text().splitlines()]
    assert len(rows) == 14 * 30
    sent = server.count
    assert sent > 0
    (workdir / target).unlink()
    proc = snakemake_run(workdir, "--cores", "1", target, env={"DISTALIGN_TEST_KEY": SECRET}, timeout=300)
    assert proc.returncode == 0
    assert server.count == sent  # the rerun was served entirely from the cache
    assert [json.loads(x) for x in (workdir / target).read_text().splitlines()] == rows
    log = (workdir / "results/logs/prompts/us-even/attribute.log").read_text()
    assert "requests sent: 0" in log
    # the key is nowhere on disk: results, logs, Snakemake's own logs and metadata, the config
    scanned = 0
    for top in ("results", ".snakemake", "config"):
        for path in (workdir / top).rglob("*"):
            if path.is_file():
                scanned += 1
                assert SECRET not in path.read_text(errors="ignore"), path
    assert scanned > 10
