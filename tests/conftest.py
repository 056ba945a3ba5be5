"""Shared fixtures: the repository, the default config, a workflow working directory, the embedded model,
the logging of a Snakemake script. Plain helper functions shared by test modules are in helpers.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture()
def config() -> dict:
    """The validated embedded-default configuration (a fresh copy per test)."""
    from distalign.core.config import load_config

    return load_config(REPO / "config" / "config.yaml")


@pytest.fixture()
def workdir(tmp_path) -> Path:
    """A Snakemake working directory with the repo's config/ and resources/ (results/ starts empty)."""
    for name in ("config", "resources"):
        shutil.copytree(REPO / name, tmp_path / name)
    return tmp_path


def run_snakemake(workdir: Path, *args: str, timeout: float = 900, env: dict | None = None):
    """Run the repo's Snakefile in ``workdir``; return the CompletedProcess (stdout+stderr merged)."""
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(
        cmd,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def snakemake_run():
    """The ``run_snakemake(workdir, *args, timeout=..., env=...)`` helper as a fixture."""
    return run_snakemake


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory) -> Path:
    """The embedded SmolLM2 model prepared once per test session (about 20 s).

    Reuses results/models/smollm2-135m-instruct of the checkout when a workflow run made it.
    """
    existing = REPO / "results" / "models" / "smollm2-135m-instruct"
    if (existing / "distalign_model.json").exists() and (existing / "model.safetensors").exists():
        return existing
    from distalign.modeling.models import prepare_model

    out = tmp_path_factory.mktemp("models") / "smollm2-135m-instruct"
    prepare_model(
        "smollm2-135m-instruct",
        {"source": "embedded", "path_or_id": "SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"},
        out,
    )
    return out


@pytest.fixture()
def script_logging(tmp_path):
    """``setup_logging`` as a Snakemake script calls it (log file + console), undone afterwards; the
    console handler's stream (stderr) is swapped for a buffer that the test reads.

    Yields ``read``: ``read()`` gives (console text, log file text) so far.
    """
    import io
    import logging

    from distalign.core.scripting import setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook)
    log_path = tmp_path / "job.log"
    setup_logging(str(log_path))
    console = io.StringIO()
    (handler,) = [h for h in root.handlers if type(h) is logging.StreamHandler]
    assert handler.stream is sys.stderr
    handler.setStream(console)

    def read():
        for h in logging.getLogger().handlers:
            h.flush()
        return console.getvalue(), log_path.read_text()

    yield read
    for h in logging.getLogger().handlers:
        h.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    sys.excepthook = saved[2]
    logging.captureWarnings(False)
