"""Time per solve of the lowest-MAE mixture: the old vertex enumeration against the LP.

    .venv/bin/python bench/mixtures.py [--cases 10] [--seconds 1.0]

The old ``reachable_mae`` solved one small linear system per vertex of a hyperplane arrangement,
C(H + K, H - 1) of them; ``distalign.core.mixtures.mixture_weights`` solves one LP with HiGHS and
one least-distance problem (the tie rule). Both run on the same random cases per size (rows
Dirichlet(1), one row duplicated, half the targets inside the hull and half anywhere on the
simplex); each is timed for about ``--seconds`` per case, and the median over cases of the mean
per solve is printed with the machine, its load and the date, as one Markdown table (the median,
as other jobs on a shared machine inflate single cases). The reference implementation is the copy kept in
tests/test_mixtures.py (the library's code before the LP).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy

from distalign.core.mixtures import mixture_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_mixtures import vertex_enumeration_mae  # noqa: E402

SIZES = [(5, 5), (10, 6)]


def cases(h: int, k: int, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = rng.dirichlet(np.ones(k), size=h)
        d[-1] = d[0]
        t = rng.dirichlet(np.ones(h)) @ d if i % 2 else rng.dirichlet(np.ones(k))
        out.append((d, t))
    return out


def per_solve(fn, d: np.ndarray, t: np.ndarray, seconds: float) -> float:
    """Mean seconds per call of fn(d, t), over as many calls as fit in ``seconds`` (at least 3)."""
    fn(d, t)  # warm-up (imports, first-call costs)
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        fn(d, t)
        n += 1
    return (time.perf_counter() - start) / n


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=10, help="random cases per size")
    ap.add_argument("--seconds", type=float, default=1.0, help="time spent per case and implementation")
    args = ap.parse_args(argv)
    print(
        f"{datetime.date.today().isoformat()}, {platform.platform()}, {cpu_name()}, "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); "
        f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}\n"
    )
    print(
        "| H | K | vertices C(H+K, H-1) | old ms/solve | new (LP + tie rule) ms/solve | old / new "
        "| max MAE difference |"
    )
    print("|---|---|---|---|---|---|---|")
    for h, k in SIZES:
        old_t, new_t, diff = [], [], 0.0
        for d, t in cases(h, k, args.cases):
            old_t.append(per_solve(vertex_enumeration_mae, d, t, args.seconds))
            new_t.append(per_solve(mixture_weights, d, t, args.seconds))
            diff = max(diff, abs(vertex_enumeration_mae(d, t)[0] - mixture_weights(d, t).mae))
        o, n = 1e3 * float(np.median(old_t)), 1e3 * float(np.median(new_t))
        print(f"| {h} | {k} | {math.comb(h + k, h - 1)} | {o:.2f} | {n:.2f} | {o / n:.1f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
