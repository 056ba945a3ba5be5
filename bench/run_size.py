"""Wall time of a whole configuration on this machine, from Snakemake's benchmark files.

    .venv/bin/python bench/run_size.py --configfile config/cpu-full.yaml [--target all]

Lists every job of the target's DAG (a ``--forceall`` dry run) and the jobs still to run (a plain
dry run). For each job that is done and current, the seconds of its benchmark file are measured
time; for each job still to run, the estimate is the median of the done jobs of the same rule and
task. On a 2-core machine the heavy jobs take both cores and run one at a time, so the sum of the
job times is the configuration's wall time (the default run: 3,305 s of jobs in 3,311 s of
Snakemake). Prints a Markdown table per rule and the totals. Rules without a benchmark (tables,
figures: a second or two each) are counted but not timed.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULE = re.compile(r"^(?:local)?rule (\w+):\s*$")
FIELD = re.compile(r"^\s+(\w+): (.*)$")


@dataclass
class PlannedJob:
    rule: str
    output: str
    benchmark: str | None
    task: str | None


def parse_dry_run(text: str) -> list[PlannedJob]:
    """Jobs of a ``snakemake -n`` listing: rule, first output, benchmark file and task wildcard."""
    jobs: list[PlannedJob] = []
    current: dict | None = None

    def flush():
        if current is not None:
            jobs.append(
                PlannedJob(
                    current["rule"], current.get("output", ""), current.get("benchmark"), current.get("task")
                )
            )

    for line in text.splitlines():
        m = RULE.match(line)
        if m:
            flush()
            current = {"rule": m.group(1)}
            continue
        if current is None:
            continue
        f = FIELD.match(line)
        if not f:
            if line.strip() == "" or not line.startswith((" ", "\t")):
                flush()
                current = None
            continue
        key, value = f.groups()
        if key == "output":
            current["output"] = value.split(",")[0].strip()
        elif key == "benchmark":
            current["benchmark"] = value.strip()
        elif key == "wildcards":
            t = re.search(r"\btask=([\w-]+)", value)
            current["task"] = t.group(1) if t else None
    flush()
    return jobs


def benchmark_seconds(path: Path) -> float | None:
    """Seconds of the last run recorded in a Snakemake benchmark TSV (None if absent or empty)."""
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return float(rows[-1]["s"]) if rows else None


def dry_run(
    snakemake: str, target: str, configfiles: list[str], force: bool, workdir: Path = REPO
) -> list[PlannedJob]:
    """The jobs of ``snakemake -n target`` in ``workdir`` (all of them with ``force``)."""
    cmd = [
        snakemake,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "-n",
        "--cores",
        "2",
        target,
    ]
    if force:
        cmd.append("--forceall")
    if configfiles:
        cmd += ["--configfile", *configfiles]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return parse_dry_run(proc.stdout)


def summarise(all_jobs: list[PlannedJob], todo: list[PlannedJob], root: Path = REPO) -> list[dict]:
    """One row per (rule, task): jobs, done, measured seconds, to run, estimated seconds."""
    pending = {(j.rule, j.output) for j in todo}
    groups: dict[tuple, dict] = defaultdict(
        lambda: {"jobs": 0, "done": 0, "measured": [], "todo": 0, "untimed": 0}
    )
    for j in all_jobs:
        g = groups[(j.rule, j.task or "")]
        g["jobs"] += 1
        if (j.rule, j.output) in pending:
            g["todo"] += 1
            continue
        g["done"] += 1
        s = benchmark_seconds(root / j.benchmark) if j.benchmark else None
        if s is None:
            g["untimed"] += 1
        else:
            g["measured"].append(s)
    timed = {(j.rule, j.task or "") for j in all_jobs if j.benchmark}
    rows = []
    for (rule, task), g in sorted(groups.items()):
        # a sweep job is a generation/labelling job at other decoding settings: same size, same cost
        like = groups.get((rule.removeprefix("sweep_"), task)) if not g["measured"] else g
        median = statistics.median(like["measured"]) if like and like["measured"] else None
        estimated = median * g["todo"] if median is not None else (0.0 if (rule, task) not in timed else None)
        rows.append(
            {
                "rule": rule,
                "task": task,
                "jobs": g["jobs"],
                "done": g["done"],
                "measured_s": sum(g["measured"]),
                "untimed": g["untimed"],
                "todo": g["todo"],
                "estimated_s": estimated,
                "timed": (rule, task) in timed,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    def hours(s):
        return "–" if s is None else f"{s / 3600:.2f}"

    untimed = [r for r in rows if not r["timed"]]
    rows = [r for r in rows if r["timed"]]
    lines = [
        "| rule | task | jobs | done | measured h | done, no benchmark file | to run | estimated h |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rule']} | {r['task'] or '–'} | {r['jobs']} | {r['done']} | {hours(r['measured_s'])} | "
            f"{r['untimed']} | {r['todo']} | {hours(r['estimated_s'])} |"
        )
    measured = sum(r["measured_s"] for r in rows)
    estimated = sum(r["estimated_s"] or 0 for r in rows)
    unknown = sum(r["todo"] for r in rows if r["estimated_s"] is None)
    lines.append(
        f"| **total** | | {sum(r['jobs'] for r in rows)} | {sum(r['done'] for r in rows)} | "
        f"**{hours(measured)}** | {sum(r['untimed'] for r in rows)} | {sum(r['todo'] for r in rows)} | "
        f"**{hours(estimated)}** |"
    )
    lines.append("")
    lines.append(
        f"Not timed: {sum(r['jobs'] for r in untimed)} jobs of rules without a benchmark (a few seconds "
        f"each): {', '.join(sorted({r['rule'] for r in untimed}))}."
    )
    lines.append(
        f"Jobs: measured {measured / 3600:.2f} h + estimated {estimated / 3600:.2f} h = "
        f"{(measured + estimated) / 3600:.2f} h"
        + (
            f" ({unknown} jobs to run have no measured job of their rule to estimate from)."
            if unknown
            else "."
        )
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="*", default=[], help="overlay config(s), as for snakemake")
    ap.add_argument("--target", default="all")
    ap.add_argument("--snakemake", default=str(REPO / ".venv/bin/snakemake"))
    ap.add_argument("--directory", type=Path, default=REPO, help="the workflow's working directory")
    args = ap.parse_args()
    all_jobs = dry_run(args.snakemake, args.target, args.configfile, force=True, workdir=args.directory)
    todo = dry_run(args.snakemake, args.target, args.configfile, force=False, workdir=args.directory)
    print(markdown(summarise(all_jobs, todo, root=args.directory)))


if __name__ == "__main__":
    main()
