"""Readable progress lines for long loops: done/total, rate and the time left, at most every N seconds.

A job of the workflow writes its log records to its log file and to stderr (Snakemake's console,
``distalign.core.scripting.setup_logging``). A loop of minutes (sampling thousands of answers, training
steps, LLM-judge requests) logs through :class:`Progress`::

    generate uk-real/smollm2-135m-instruct/ours/attribute: 1200/2500 rows (48%), 9.1 rows/s, ~2 min 23 s left

Decisions:

- **Log lines, not a progress bar.** A bar (tqdm) redraws with carriage returns: in a log file or
  under SLURM it is one endless line, and bars of parallel Snakemake jobs overwrite each other on
  the console. A log line is readable in both places and timestamped by the log format.
- **At most one line every ``every_s`` seconds** (default :data:`EVERY_S`, 30 s: a 5-minute job
  says how far it is about ten times), counted from the start, plus one final line when ``done``
  reaches ``total`` or :meth:`Progress.finish` is called. No line at the start: the caller says
  what starts (and a loop shorter than ``every_s`` then logs its final line only). A constant, not
  a config key: how often a job reports does not change any result.
- **Rate and time left come from the last ``window_s`` seconds** (default :data:`WINDOW_S`, 2 min)
  of updates, starting at the first update, not at the start. vLLM finishes its first request a
  minute after the start (every prompt is prefilled and a first wave decoded before any finishes)
  and then speeds up for minutes: measured on a 2,500-row job here, a rate since the start said
  "~41 h left" after the first row and still 40% too much at a third of the way. Before the second
  update there is no rate, so no estimate is shown. The final line gives the mean rate of the whole
  loop. ``initial`` is where a resumed loop began: a resumed training run rates only the steps it
  did. The rate reads ``9.1 rows/s`` at one or more per second and ``2.5 s/step`` below (easier to
  read than ``0.4 steps/s``).
- Thread-safe: the LLM judge updates from its worker threads.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from time import monotonic

EVERY_S = 30.0


WINDOW_S = 120.0


def plural(unit: str) -> str:
    """English plural of a unit noun (row -> rows, story -> stories)."""
    if unit.endswith("y") and unit[-2:-1] not in ("a", "e", "o", "u"):
        return unit[:-1] + "ies"
    return unit if unit.endswith("s") else unit + "s"


def format_duration(seconds: float) -> str:
    """``45 s``, ``2 min 23 s``, ``1 h 05 min`` (whole seconds; minutes once past an hour)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    h, rest = divmod(s, 3600)
    return f"{h} h {rest // 60:02d} min"


def format_rate(per_second: float, unit: str) -> str:
    """``9.1 rows/s`` at one or more a second, ``2.5 s/step`` below."""
    if per_second >= 1:
        return (
            f"{per_second:.0f} {plural(unit)}/s"
            if per_second >= 100
            else f"{per_second:.1f} {plural(unit)}/s"
        )
    return f"{1 / per_second:.1f} s/{unit}"


class Progress:
    """Count ``done`` of ``total`` items and log how far, at most every ``every_s`` seconds and at the end.

    ``what`` names the work ("generate uk-real/.../attribute"); ``unit`` is the singular noun of an
    item; ``initial`` is where a resumed loop starts; ``detail`` (settable) is appended to every
    line (training puts its latest loss there); ``window_s``: the span of recent updates the rate is
    measured over; ``clock`` (default ``time.monotonic``) is injectable.
    """

    def __init__(
        self,
        total: int,
        what: str,
        logger: logging.Logger | None = None,
        *,
        unit: str = "row",
        every_s: float | None = None,
        initial: int = 0,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] | None = None,
    ):
        self.total = max(0, int(total))
        self.what = what
        self.log = logger or logging.getLogger("distalign")
        self.unit = unit
        self.every_s = float(EVERY_S if every_s is None else every_s)  # read now: tests may lower EVERY_S
        self.clock = clock or monotonic  # looked up now: tests replace progress.monotonic
        self.initial = self.done = int(initial)
        self.detail: str | None = None
        self.start = self.last = self.clock()
        self.window_s = float(window_s)
        self._samples: deque[tuple[float, int]] = deque()  # (time, done) of recent updates
        self.finished = False
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        """``n`` more items are done."""
        with self._lock:
            self._advance(self.done + int(n))

    def set(self, done: int) -> None:
        """``done`` items are done in all (e.g. the trainer's global step)."""
        with self._lock:
            self._advance(int(done))

    def finish(self) -> None:
        """Log the final line now (once), also when fewer than ``total`` items were done."""
        with self._lock:
            if not self.finished:
                self._emit(self.clock(), final=True)

    def _advance(self, done: int) -> None:
        self.done = done
        if self.finished:
            return
        now = self.clock()
        self._samples.append((now, done))
        # keep the newest sample at or before the window's start, so the rate spans the whole window
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        if self.total and self.done >= self.total:
            self._emit(now, final=True)
        elif now - self.last >= self.every_s:
            self._emit(now, final=False)

    def recent_rate(self) -> float | None:
        """Items a second over the recent updates (None before a second update)."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def line(self, now: float, final: bool = False) -> str:
        """The progress line at clock time ``now``."""
        elapsed = now - self.start
        if final:
            rate = (self.done - self.initial) / elapsed if elapsed > 0 else None
        else:
            rate = self.recent_rate()
        parts = [
            f"{self.done}/{self.total} {plural(self.unit)}"
            + (f" ({math.floor(100 * self.done / self.total)}%)" if self.total else "")
        ]
        if final:
            parts.append(f"done in {format_duration(elapsed)}")
        if rate:
            parts.append(format_rate(rate, self.unit))
            if not final and self.total > self.done:
                parts.append(f"~{format_duration((self.total - self.done) / rate)} left")
        if self.detail:
            parts.append(self.detail)
        return f"{self.what}: " + ", ".join(parts)

    def _emit(self, now: float, final: bool) -> None:
        self.last = now
        self.finished = final
        self.log.info("%s", self.line(now, final))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # no "done" line for a loop that failed: its traceback says where it stopped
        if exc_type is None:
            self.finish()
