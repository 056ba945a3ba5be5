"""Cluster helpers: an OpenAI-compatible vLLM server for the judge job, and Hugging Face weights.

* :func:`openai_server` starts ``python -m vllm.entrypoints.openai.api_server`` as a child process
  (its own process group, output to a log file), waits until ``GET /health`` answers 200, yields the
  base URL (``http://127.0.0.1:<port>/v1``) and always stops the server by its PID (SIGTERM to its
  process group, SIGKILL after a grace period). The story-labelling job uses it through
  :func:`judge_endpoint` when ``judge.llm.base_url`` is null: judge and server share the job's node
  and GPU(s). With a URL in the config an external endpoint is used and nothing is started.
* :func:`hf_environment` turns the ``hf`` config section into environment variables (HF_HOME,
  HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE) for every job; :func:`prefetch_hf_model` downloads a hub
  snapshot on the login node (``snakemake prefetch_models --cores 1``) and writes a marker file.

Command line (used by the ``prefetch_model`` rule, which needs a fresh interpreter because
huggingface_hub reads HF_HUB_OFFLINE once, at import)::

    python -m distalign.serve prefetch REPO_ID [--revision REV] [--no-download] --marker FILE.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

from .config import schema_defaults, with_schema_defaults

STOP_GRACE = 30.0


class ServerError(RuntimeError):
    """The server exited early, never became healthy, or could not be started."""


class APIKeyError(RuntimeError):
    """The environment variable that holds an endpoint's API key is not set, or set but empty."""


def openai_client(base_url: str | None, api_key_env: str, *, timeout: float, max_retries: int = 0):
    """An ``openai.OpenAI`` client for an OpenAI-compatible endpoint, with the API key read from the
    environment variable ``api_key_env`` only (never from the config, so it is never logged).

    A variable that is unset or blank raises :class:`APIKeyError` naming it: sent as is, an empty key
    would be refused by a real service with a less helpful message. ``base_url`` None: the openai
    client's default (``OPENAI_BASE_URL`` or api.openai.com). ``max_retries`` defaults to 0: callers
    that retry do it themselves (counted and logged), the pre-flight check not at all.
    """
    key = os.environ.get(api_key_env)
    if key is None:
        raise APIKeyError(f"environment variable {api_key_env} is not set")
    if not key.strip():
        raise APIKeyError(f"environment variable {api_key_env} is set but empty")
    import openai

    return openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)


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
    # Children that outlived the leader are still in the group: make sure none is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


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
    file that is kept, its path is in every error). Raises :class:`ServerError` with the log tail when
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
    try:
        if health_timeout is None:
            health_timeout = float(schema_defaults("judge")["serve"]["health_timeout"])
        deadline = time.monotonic() + health_timeout
        while True:
            if _healthy(f"{base}/health"):
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
    ``python`` is the fallback interpreter when ``judge.serve.python`` is null.
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


# ----------------------------------------------------------------------------------------------
# Hugging Face cache and offline mode


def hf_environment(hf_cfg: Mapping | None) -> dict[str, str]:
    """Environment variables for jobs from the ``hf`` config section.

    home (path or null = keep HF_HOME / ~/.cache/huggingface) -> HF_HOME (absolute);
    offline (bool) -> HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE = 1 / 0.
    """
    cfg = with_schema_defaults({"hf": hf_cfg}, "hf")
    env: dict[str, str] = {}
    if cfg["home"]:
        env["HF_HOME"] = str(Path(os.path.expandvars(str(cfg["home"]))).expanduser().resolve())
    flag = "1" if cfg["offline"] else "0"
    env["HF_HUB_OFFLINE"] = flag
    env["TRANSFORMERS_OFFLINE"] = flag
    return env


def prefetch_hf_model(
    repo_id: str,
    *,
    revision: str | None = None,
    download: bool = True,
    marker: str | os.PathLike | None = None,
) -> dict:
    """Make ``repo_id`` available in the local hub cache; write a JSON marker; return its content.

    ``download=False`` only checks the cache (air-gapped login nodes). Must run in a process where
    HF_HUB_OFFLINE is not 1 when downloading (the CLI below forces that).
    """
    from huggingface_hub import constants, snapshot_download

    t0 = time.time()
    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=not download)
    except Exception as err:  # noqa: BLE001 - re-raised with what to do
        how = (
            "set HF_TOKEN for gated models (e.g. meta-llama) and check the network of this node"
            if download
            else "hf.prefetch is false: fill the cache another way or set hf.prefetch: true"
        )
        raise RuntimeError(
            f"cannot fetch Hugging Face model {repo_id!r} (revision {revision}) into "
            f"{constants.HF_HUB_CACHE}: {err}\n{how}"
        ) from err
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    info = {
        "repo_id": repo_id,
        "revision": revision,
        "path": str(path),
        "hf_hub_cache": str(constants.HF_HUB_CACHE),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "downloaded": bool(download),
        "seconds": round(time.time() - t0, 1),
    }
    if marker:
        marker = Path(marker)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(marker.suffix + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(marker)
    return info


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


PREFETCH_JUDGE = "judge"


def prefetch_specs(config: Mapping) -> dict[str, tuple[str, str | None]]:
    """name -> (hub id, revision) of every Hugging Face model a run needs (its models, and the judge's
    model under the name ``judge`` when the label job starts its own server)."""
    out: dict[str, tuple[str, str | None]] = {}
    for name in config["run"]["models"]:
        spec = config["models"][name]
        if spec["source"] == "hf":
            out[name] = (spec["path_or_id"], spec.get("revision"))
    if judge_starts_server(config):
        out[PREFETCH_JUDGE] = (config["judge"]["llm"]["model"], None)
    return out


def prefetch_markers(config: Mapping, model: str, pattern: str) -> list[str]:
    """Input of prepare_model: the prefetch marker of a Hugging Face model (``pattern`` has ``{name}``)."""
    return [pattern.format(name=model)] if config["models"][model]["source"] == "hf" else []


def run_prefetch(repo_id: str, revision: str | None, download: bool, marker: str, log: str) -> None:
    """Prefetch in a fresh interpreter (HF_HUB_OFFLINE is read at import), output to ``log``."""
    cmd = [sys.executable, "-m", "distalign.serve", "prefetch", repo_id, "--marker", str(marker)]
    if revision:
        cmd += ["--revision", revision]
    if not download:
        cmd += ["--no-download"]
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"prefetch of {repo_id!r} failed (exit {proc.returncode}):\n{log_tail(log, 15)}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distalign.serve", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prefetch", help="download (or check) a Hugging Face snapshot and write a marker")
    p.add_argument("repo_id")
    p.add_argument("--revision", default=None)
    p.add_argument("--no-download", action="store_true", help="only check the local cache")
    p.add_argument("--marker", required=True)
    args = ap.parse_args(argv)
    info = prefetch_hf_model(
        args.repo_id, revision=args.revision, download=not args.no_download, marker=args.marker
    )
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    if "prefetch" in sys.argv[1:2] and "--no-download" not in sys.argv:
        # huggingface_hub reads these at import; a download must not run in offline mode.
        os.environ["HF_HUB_OFFLINE"] = "0"
        os.environ["TRANSFORMERS_OFFLINE"] = "0"
    sys.exit(main())
