"""An OpenAI-compatible vLLM server for the story judge, started and stopped by the label job.

:func:`openai_server` starts ``python -m vllm.entrypoints.openai.api_server`` as a child process
(its own process group, output to a log file), waits until ``GET /health`` answers 200, yields the
base URL (``http://127.0.0.1:<port>/v1``) and always stops the server by its PID (SIGTERM to its
process group, SIGKILL after a grace period). The story-labelling job uses it through
:func:`judge_endpoint` when ``judge.llm.base_url`` is null: judge and server share the job's node
and GPU(s). With a URL in the config an external endpoint is used and nothing is started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from distalign.core.config import schema_defaults

STOP_GRACE = 30.0

logger = logging.getLogger("distalign.judge_server")


class ServerError(RuntimeError):
    """The server exited early, never became healthy, or could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: str | os.PathLike, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _healthy(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local http URL
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the server's process group (vLLM has engine children), SIGKILL it after ``grace`` s."""
    if proc.poll() is not None:
        logger.info("model server (pid %d) had already exited with code %s", proc.pid, proc.returncode)
        return
    pgid = proc.pid  # started with start_new_session=True: the group id is the server's PID
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=30)
        logger.warning("model server (pid %d) ignored SIGTERM for %g s: killed", proc.pid, grace)
    # Children that outlived the leader are still in the group: make sure none is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    logger.info("model server (pid %d) stopped", proc.pid)


@contextlib.contextmanager
def openai_server(
    model: str,
    *,
    python: str | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    health_timeout: float | None = None,
    log_path: str | os.PathLike | None = None,
    stop_grace: float = STOP_GRACE,
    poll_interval: float = 1.0,
) -> Iterator[str]:
    """Run a vLLM OpenAI-compatible server for ``model`` while the block runs; yield its base URL.

    ``python``: interpreter of an environment with vLLM (default: this one). ``port``: default a free
    one. ``served_model_name``: the name clients send (default ``model``). ``extra_args`` are
    appended verbatim (e.g. ``["--max-model-len", "8192", "--tensor-parallel-size", "2"]``).
    ``env`` is added to this process's environment. Output goes to ``log_path`` (default: a temporary
    file that is kept, its path is in every error); the start, the health check and the stop are
    logged to the ``distalign.judge_server`` logger. Raises :class:`ServerError` with the log tail when
    the process exits before it is healthy or ``health_timeout`` seconds pass (default: that of
    ``judge.serve.health_timeout`` in the schema).
    """
    python = python or sys.executable
    port = int(port or free_port(host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"))
    connect = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        served_model_name or str(model),
        *map(str, extra_args),
    ]
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="openai-server-", suffix=".log")
        os.close(fd)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base = f"http://{connect}:{port}"
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **dict(env or {})},
                start_new_session=True,
            )
        except OSError as err:
            raise ServerError(f"cannot start the model server ({cmd[0]}): {err}") from err
    # The job's own log says what was started and where its output goes (the server's lines stay in
    # log_path: a vLLM start is hundreds of lines).
    logger.info("model server for %s starting on %s (pid %d, log %s)", model, base, proc.pid, log_path)
    try:
        if health_timeout is None:
            health_timeout = float(schema_defaults("judge")["serve"]["health_timeout"])
        started = time.monotonic()
        deadline = started + health_timeout
        while True:
            if _healthy(f"{base}/health"):
                logger.info(
                    "model server healthy at %s/health after %.0f s", base, time.monotonic() - started
                )
                break
            code = proc.poll()
            if code is not None:
                raise ServerError(
                    f"the model server for {model!r} exited with code {code} before it was "
                    f"healthy (log {log_path}):\n{log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the model server for {model!r} was not healthy at {base}/health after "
                    f"{health_timeout:g} s (log {log_path}):\n{log_tail(log_path)}"
                )
            time.sleep(poll_interval)
        yield f"{base}/v1"
    finally:
        _stop(proc, stop_grace)


@contextlib.contextmanager
def judge_endpoint(
    judge_cfg: Mapping, *, python: str | None = None, log_path: str | os.PathLike | None = None
) -> Iterator[dict]:
    """The ``judge.llm`` settings with a usable ``base_url`` while the block runs.

    ``judge.llm.base_url`` set: yielded unchanged (external endpoint). Null, and the story judge
    uses the LLM (``judge.story`` llm or both): a vLLM server for ``judge.llm.model`` is started here
    with ``judge.serve`` (python, port, extra_args, health_timeout), and ``base_url`` points at it;
    the API-key variable gets the placeholder ``EMPTY`` if unset (the local server checks no key).
    ``python`` is the fallback interpreter when ``judge.serve.python`` is null; ``log_path`` is the
    server log when ``judge.serve.log`` is null (the label job passes one beside its own log).
    """
    llm = dict(judge_cfg.get("llm") or {})
    if llm.get("base_url") or judge_cfg.get("story", "lexicon") not in ("llm", "both"):
        yield llm
        return
    if not llm.get("model"):
        raise ServerError(
            "config key 'judge.llm.model': required to start a judge server (judge.llm.base_url is null)"
        )
    serve = {
        **schema_defaults("judge")["serve"],
        **{k: v for k, v in dict(judge_cfg.get("serve") or {}).items() if v is not None},
    }
    os.environ.setdefault(llm.get("api_key_env") or "OPENAI_API_KEY", "EMPTY")
    with openai_server(
        llm["model"],
        python=serve["python"] or python,
        port=serve["port"],
        extra_args=serve["extra_args"],
        health_timeout=float(serve["health_timeout"]),
        log_path=serve["log"] or log_path,
    ) as url:
        yield {**llm, "base_url": url}


def judge_starts_server(config: Mapping) -> bool:
    """Whether story labelling starts its own vLLM judge server (LLM story judge, judge.llm.base_url null)."""
    judge = config.get("judge") or {}
    llm = judge.get("llm") or {}
    return (
        "story" in config["run"]["tasks"]
        and judge.get("story", "lexicon") in ("llm", "both")
        and not llm.get("base_url")
        and bool(llm.get("model"))
    )
