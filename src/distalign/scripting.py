"""Helpers for the thin Snakemake scripts: logging to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_path: str | None, level: int = logging.INFO) -> logging.Logger:
    """Send log records, warnings and an uncaught exception's traceback to the rule's log file and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers,
                        force=True)
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
