"""vLLM worker: ``python -m distalign.vllm_worker job.json result.json``.

Runs one generation/probe job (``distalign.generate.Job`` as JSON) with the vLLM backend in the
interpreter of the vLLM environment and writes the result rows as JSON (atomically). The caller
is ``distalign.generate.run_in_worker``, used when the workflow's own environment cannot
``import vllm`` (on this machine vLLM lives in ``.venv-vllm``). The ``__main__`` guard matters:
vLLM may spawn its engine-core process, which re-imports the main module.
"""

from __future__ import annotations

import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m distalign.vllm_worker job.json result.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from .generate import Job, _vllm_env, run_job
    from .io import write_json

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
