"""The behaviour fixtures' per-machine records (tests/behaviour.py): a full comparison on the machine that
recorded them, and on another machine only the files no kernel computes, then a skip that says so."""

from __future__ import annotations

import behaviour
import pytest

RUN = {
    "results/datasets/tiny/base.jsonl": "d1",
    "results/prompts/tiny/attribute.jsonl": "p1",
    "results/generations/tiny/m/zero-shot/attribute.jsonl": "g1",
}


@pytest.fixture()
def fixtures(tmp_path, monkeypatch):
    monkeypatch.setattr(behaviour, "FIXTURES", tmp_path)
    monkeypatch.delenv("DISTALIGN_UPDATE_FIXTURES", raising=False)
    return tmp_path


def _on(monkeypatch, name: str) -> None:
    monkeypatch.setattr(behaviour, "machine", lambda: name)


def test_the_recording_machine_compares_every_file(fixtures, monkeypatch):
    _on(monkeypatch, "aaaa")
    monkeypatch.setenv("DISTALIGN_UPDATE_FIXTURES", "1")
    behaviour.check("run", RUN, per_machine=True)
    monkeypatch.delenv("DISTALIGN_UPDATE_FIXTURES")
    assert (fixtures / "run.aaaa.sha256").is_file() and not (fixtures / "run.sha256").exists()
    behaviour.check("run", dict(RUN), per_machine=True)
    generated = {**RUN, "results/generations/tiny/m/zero-shot/attribute.jsonl": "g2"}
    with pytest.raises(AssertionError, match="1 changed"):
        behaviour.check("run", generated, per_machine=True)


def test_another_machine_compares_the_data_and_skips_the_rest(fixtures, monkeypatch):
    _on(monkeypatch, "aaaa")
    behaviour.write("run.aaaa", RUN)
    _on(monkeypatch, "bbbb")
    generated = {**RUN, "results/generations/tiny/m/zero-shot/attribute.jsonl": "g2"}
    with pytest.raises(pytest.skip.Exception, match="for this machine \\(bbbb"):
        behaviour.check("run", generated, per_machine=True)
    data = {**generated, "results/datasets/tiny/base.jsonl": "d2"}
    with pytest.raises(AssertionError, match="datasets/tiny/base.jsonl"):
        behaviour.check("run", data, per_machine=True)


def test_machine_names_the_kernel_level():
    name = behaviour.machine()
    assert len(name) == 12 and int(name, 16) >= 0 and name == behaviour.machine()
