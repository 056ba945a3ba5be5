"""Helpers for the thin Snakemake scripts, and the contract every script in workflow/scripts keeps.

The contract
------------
A script is the glue between one rule and one library function. It

- **reads** only ``snakemake.input``, ``output``, ``params``, ``log``, ``threads``, ``resources`` and
  ``wildcards`` -- never ``snakemake.config``. Everything that changes a result reaches the script as
  a param (built in the rule from the config), so Snakemake's params trigger reruns exactly the jobs
  a config change affects, and the library receives what it needs, not the whole config;
- **does**: read its inputs, call *one* library function (``distalign.*``) that holds the logic (and
  is unit-tested there), write its outputs atomically (``distalign.core.io``: ``write_json``,
  ``write_jsonl``, ``atomic_path``, ``atomic_dir``), and log through :func:`setup_logging` (first
  line of the script: the rule's log file, warnings and an uncaught exception's traceback);
- **never** loops over rounds, branches on a table or figure kind, or computes a statistic itself:
  a dispatch goes through a registry (``tables.TABLES``, ``figures.FIGURES``), a loop into the
  library (``stories.collect_stories``).

Two reads of the workflow config are allowed, each through one named helper here:

- :func:`operational`: a setting of :data:`OPERATIONAL`, which says where or how a job runs (an
  interpreter, a device, an endpoint and how hard to call it), never what it computes; and
  :func:`api_call_settings`, how an API model's endpoint is called. These are
  deliberately not params, so that changing them reruns nothing. One caveat, stated once: a
  generation on a GPU and the same one on a CPU differ in their last floating-point bits, as two
  GPU models do; Snakemake cannot see that either way.
- :func:`whole_config`: the pre-flight jobs only. They check the whole config by design, their
  marker is no result, and a param holding the whole config would rerun them after any change.

tests/test_scripts_contract.py holds every script to this: no script names ``snakemake.config``.

Logging
-------
Every record goes to the rule's log file; records logged with ``extra=FILE_ONLY`` stay out of the
console (stderr, which Snakemake shows). That is where a library's per-request chatter goes (the
vLLM worker's own output): kept for debugging, not flooding the console of a run with many jobs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# Settings a script may read without a param (see the contract above), with what each one decides.
OPERATIONAL = {
    "generation.vllm_python": "the interpreter of the vLLM environment",
    "training.device": "where a generation, D_story or capability job runs (train gets its device in params.method)",
    "judge.llm": "the story judge's endpoint, key variable, retries, timeout and concurrency (model, "
    "re-asks and reply length are params of the label rule, and take precedence)",
    "judge.serve": "how the label job starts its own judge server",
    "capabilities.lm_eval_batch_size": "lm-eval's batch size",
    "generation.api_cache": "where the answers of API models are kept (a cache: a rerun sends only what is missing)",
}

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


FILE_ONLY = {"console": False}  # ``log.info(..., extra=FILE_ONLY)``: the log file only


FILE_ONLY_LOGGERS = ("vllm",)  # these loggers (and their children) write to the log file only


def on_console(record: logging.LogRecord) -> bool:
    """Filter of the console handler: every record except those marked ``FILE_ONLY`` and those of
    :data:`FILE_ONLY_LOGGERS` (vLLM in this process logs a line per engine step and request)."""
    if any(record.name == n or record.name.startswith(n + ".") for n in FILE_ONLY_LOGGERS):
        return False
    return getattr(record, "console", True)


def setup_logging(log_path: str | None, level: int = logging.INFO) -> logging.Logger:
    """Send log records, warnings and an uncaught exception's traceback to the rule's log file and to stderr."""
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(on_console)
    handlers: list[logging.Handler] = [console]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)
    logger = logging.getLogger("distalign")
    previous = sys.excepthook

    def log_uncaught(exc_type, exc, tb):
        # the traceback of a failing job belongs in its log file too, not only in Snakemake's terminal
        if not issubclass(exc_type, KeyboardInterrupt):
            logger.critical("job failed: %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        previous(exc_type, exc, tb)

    sys.excepthook = log_uncaught
    return logger


def operational(smk, key: str):
    """An operational setting (:data:`OPERATIONAL`, e.g. ``"generation.vllm_python"``) of the workflow
    config, with the schema's default when unset."""
    from distalign.core.config import with_schema_defaults

    if key not in OPERATIONAL:
        raise KeyError(
            f"{key!r} is not an operational setting ({', '.join(OPERATIONAL)}): pass it as a param"
        )
    section, name = key.split(".")
    return with_schema_defaults(smk.config, section).get(name)


def api_call_settings(smk, model: str) -> dict | None:
    """How an API model's endpoint is called (``models.<model>.api`` without base_url and send_seed,
    which are in the prepared model's pointer): key variable, timeout, retries, backoff, concurrency,
    rate. None for a local model. Operational, like :data:`OPERATIONAL`: a change reruns nothing."""
    from distalign.core.config import api_call_settings as call_settings

    api = smk.config["models"][model].get("api")
    return call_settings(api) if api else None


def whole_config(smk) -> dict:
    """The whole workflow config: for the pre-flight jobs, which check all of it (see the contract)."""
    return smk.config
