"""vLLM worker: ``python -m distalign.generation.vllm_worker job.json result.json``.

Runs one generation/probe job (``distalign.generation.job.Job`` as JSON) with the vLLM backend in the
interpreter of the vLLM environment and writes the result rows as JSON (atomically). The caller
is ``distalign.generation.vllm_backend.run_in_worker``, used when the workflow's own environment cannot
``import vllm`` (on this machine vLLM lives in ``.venv-vllm``). The ``__main__`` guard matters:
vLLM may spawn its engine-core process, which re-imports the main module.

Log records go to stderr in ``scripting.LOG_FORMAT``: the parent relays those of the
``distalign.*`` loggers (progress lines) to the job's console and log, and the rest (vLLM) to the
log file only. When the parent dies (killed job) the worker exits within a second instead of
sampling on as an orphan that nobody reads (``DISTALIGN_PARENT_PID``, set by the parent; without
it, the parent at start).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time

PARENT_POLL_S = 1.0


def exit_with_parent(parent: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Watch in a daemon thread that ``parent`` is still this process's parent; exit at once if not."""

    def watch():
        while True:
            if os.getppid() != parent:
                # the pipe to the dead parent is usually broken: saying so must not stop the exit
                with contextlib.suppress(Exception):
                    print(
                        f"vllm_worker: parent process {parent} is gone; exiting", file=sys.stderr, flush=True
                    )
                os._exit(3)
            time.sleep(poll_s)

    t = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m distalign.generation.vllm_worker job.json result.json", file=sys.stderr)
        return 2
    exit_with_parent(int(os.environ.get("DISTALIGN_PARENT_PID") or os.getppid()))
    from distalign.core.scripting import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    from distalign.core.io import write_json
    from distalign.generation.job import Job
    from distalign.generation.runner import run_job
    from distalign.generation.vllm_backend import _vllm_env

    _vllm_env()
    with open(argv[0], encoding="utf-8") as fh:
        job = Job.from_json(json.load(fh))
    if job.backend != "vllm":
        print(f"vllm_worker: job backend is {job.backend!r}, expected 'vllm'", file=sys.stderr)
        return 2
    rows = run_job(job)
    write_json(argv[1], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
