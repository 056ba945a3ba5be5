"""The script contract of distalign.core.scripting: scripts read params, not the workflow config."""

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from distalign.core.scripting import OPERATIONAL, operational, whole_config

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "workflow" / "scripts").glob("*.py"))


def _attribute_chains(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every ``snakemake.<attr>`` in a script."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "snakemake"
        ):
            out.append((node.lineno, f"snakemake.{node.attr}"))
    return out


def test_no_script_reads_the_workflow_config():
    assert SCRIPTS, "no scripts found"
    reads = [
        f"{p.name}:{line}"
        for p in SCRIPTS
        for line, name in _attribute_chains(p)
        if name == "snakemake.config"
    ]
    assert not reads, (
        "scripts read snakemake.config (pass a param, or use scripting.operational): " + ", ".join(reads)
    )


def test_only_the_preflight_script_takes_the_whole_config():
    users = [p.name for p in SCRIPTS if "whole_config" in p.read_text()]
    assert users == ["preflight.py"], users


def test_operational_settings_come_with_the_schema_default():
    smk = SimpleNamespace(config={"generation": {"vllm_python": "/opt/vllm/bin/python"}, "judge": {}})
    assert operational(smk, "generation.vllm_python") == "/opt/vllm/bin/python"
    assert operational(smk, "judge.llm")["concurrency"] == 4  # schema default, the section unset
    assert operational(smk, "training.device") is not None
    assert whole_config(smk) is smk.config
    assert set(OPERATIONAL) >= {"generation.vllm_python", "training.device", "judge.llm"}


def test_a_result_setting_is_not_operational():
    smk = SimpleNamespace(config={"generation": {"temperature": 0.7}})
    with pytest.raises(KeyError, match="generation.temperature.*pass it as a param"):
        operational(smk, "generation.temperature")
