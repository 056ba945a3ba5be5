"""Temporary files and folders that a killed job leaves behind are removed by the next run.

A job killed with SIGKILL (out of memory, ``scancel``, a second Ctrl-C) skips every ``finally``:
the hidden ``.{name}.XXXX.tmp`` sibling of an atomic write (``distalign.core.io``) stays next to its
output, and a vLLM job leaves its merged weights (about 0.5 GB for the embedded model) and the
worker's JSON files in ``$TMPDIR``. Whoever next creates such an entry removes the leftovers first:

- **Liveness is a lock, not a name.** The owner holds an exclusive ``flock`` on the entry (a file,
  or the folder itself) for as long as it uses it; the kernel drops the lock when the process dies,
  however it dies. A candidate is stale when this process does not own it and its lock can be
  taken without waiting. Unlike a PID in the name, this survives PID reuse and containers whose
  hostname changes, and a live writer in another process (two jobs sharing a cache folder) or in
  this one (two threads writing one path) is never touched.
- The owner creates the entry, then blocks on its lock, then checks that the entry still exists
  (a cleaner may have removed it in that instant: then it makes a new one).
- Where locks cannot be taken (no ``fcntl``, a file system that refuses them), an entry is never
  judged stale: nothing is cleaned rather than something live. On NFS, Linux emulates ``flock``
  with POSIX locks, which closing any other descriptor of the file in the owner drops: there a
  second process writing the same path at the same moment (which the workflow never does:
  Snakemake runs one job per output) could lose its temporary file, and a killed job's leftovers
  are still removed.
- Only names this module makes are candidates: ``{prefix}`` + mkstemp's random part
  (``[a-z0-9_]+``) + ``{suffix}``; ``.{name}.`` therefore does not match a sibling ``{name}.b``'s
  ``.{name}.b.XXXX.tmp``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("distalign.scratch")


try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


SCRATCH_PREFIX = "distalign-scratch-"


# $TMPDIR folders of versions that named them by role. They were never locked, so a live one cannot be
# told from a leftover: one is removed once a day old (a job of such a version, or of a copy of the
# repository at such a commit, may be running beside this one; no job of theirs took that long).
LEGACY_PREFIXES = ("distalign-merged-", "distalign-vllm-")


LEGACY_AGE_S = 24 * 3600


_live: set[str] = set()


_lock = threading.Lock()


def _pattern(prefix: str, suffix: str) -> re.Pattern:
    return re.compile(re.escape(prefix) + r"[a-z0-9_]+" + re.escape(suffix))


def _take_lock(fd: int, wait: bool) -> bool:
    """Exclusive flock on ``fd``; False when it is held elsewhere (``wait`` False) or unsupported."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except OSError:  # BlockingIOError: held by a live owner; others: locks unsupported here
        return False


def remove_stale(
    folder: str | os.PathLike, prefix: str, suffix: str = "", older_than_s: float | None = None
) -> list[Path]:
    """Remove entries of ``folder`` named ``{prefix}<random>{suffix}`` whose owner is gone; return them.

    ``older_than_s``: also require that the entry was last modified that long ago.
    """
    folder = Path(folder)
    pattern = _pattern(prefix, suffix)
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if pattern.fullmatch(e.name)]
        if older_than_s is not None:
            now = time.time()
            entries = [e for e in entries if now - e.stat(follow_symlinks=False).st_mtime > older_than_s]
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        with _lock:
            if str(path) in _live:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:  # gone already, or not ours to read
                continue
            try:
                if not _take_lock(fd, wait=False):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
            finally:
                os.close(fd)
    for path in removed:
        log.info("removed %s, left behind by a killed run", path)
    return removed


@contextlib.contextmanager
def _claimed(make, is_dir: bool) -> Iterator[Path]:
    """Create an entry with ``make()``, hold its lock while the body runs, remove it afterwards."""
    for _ in range(5):
        path = Path(make())
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # a cleaner removed it before it was locked
            continue
        _take_lock(fd, wait=True)
        if os.fstat(fd).st_nlink == 0:  # removed between creation and locking
            os.close(fd)
            continue
        break
    else:  # pragma: no cover - five races in a row
        raise OSError(f"could not claim a temporary entry next to {path}")
    with _lock:
        _live.add(str(path))
    try:
        yield path
    finally:
        with _lock:
            _live.discard(str(path))
        try:
            if is_dir:
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        finally:
            os.close(fd)


@contextlib.contextmanager
def temp_file(folder: str | os.PathLike, prefix: str, suffix: str) -> Iterator[Path]:
    """A new locked empty file ``{prefix}XXXX{suffix}`` in ``folder``, after removing stale ones; it
    is removed on exit unless the body moved it away (``os.replace``)."""
    remove_stale(folder, prefix, suffix)

    def make():
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        os.close(fd)
        return name

    with _claimed(make, is_dir=False) as path:
        yield path


@contextlib.contextmanager
def temp_dir(folder: str | os.PathLike, prefix: str, suffix: str = "") -> Iterator[Path]:
    """A new locked empty folder ``{prefix}XXXX{suffix}`` in ``folder``, after removing stale ones;
    it is removed on exit unless the body moved it away."""
    remove_stale(folder, prefix, suffix)
    with _claimed(lambda: tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder), is_dir=True) as path:
        yield path


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private folder in ``$TMPDIR`` (``tempfile.gettempdir()``) for one job's temporary files.

    Stale scratch folders of killed jobs (and the role-named folders of earlier versions, once a
    day old) are removed first, so a killed vLLM job's merged weights are gone at the next generation job on
    the same machine at the latest. On a cluster ``$TMPDIR`` is usually node-local and emptied by
    the scheduler after each job anyway.
    """
    remove_stale_scratch()
    with temp_dir(tempfile.gettempdir(), SCRATCH_PREFIX) as path:
        yield path


def remove_stale_scratch() -> list[Path]:
    """Remove the ``$TMPDIR`` scratch folders of killed jobs (and those of earlier versions a day old)."""
    tmp = tempfile.gettempdir()
    return remove_stale(tmp, SCRATCH_PREFIX) + [
        p for prefix in LEGACY_PREFIXES for p in remove_stale(tmp, prefix, older_than_s=LEGACY_AGE_S)
    ]
