"""The noise floor of a steered run's own random draws (common random numbers).

    .venv/bin/python bench/same_draws.py results/generations/us-real/smollm2-135m-instruct/ours/attribute.jsonl ...

The noise floor in the metrics is the *expected* MAE of an ideal sampler with the same N; the MAE
of one run scatters around it (SD about .006 on 14 US occupations x 100). A steering-token method
draws its token by inverse CDF from one uniform number per (prompt, sample), seeded from the config
(``distalign.generation.sampling.steering_draw_seed``). Replaying those same numbers through the exact targets
gives what an ideal sampler would have scored with this run's luck; comparing the run's token MAE
with it separates calibration error from an unlucky seed. Also simulates the floor's spread: how
often an ideal sampler itself lands above 1.25x the floor. Prints one Markdown row per file.

The method's name is one of the seed's parts, so two variants of a method (a lever of issue 24 beside
ours) draw different uniform numbers: their MAEs differ by luck as well as by calibration.
``--draws-of ours`` replays every file with ours's numbers instead, so that the token MAEs compare
calibration alone; without it each file gets its own run's numbers.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from distalign.core.io import read_jsonl
from distalign.evaluation.metrics import mae, noise_floor
from distalign.generation.sampling import draw_index, steering_draw_seed, weighted_probs


def replay(rows: list[dict], seed: int, draws_of: str | None = None) -> dict:
    """Token MAE of the run and of an ideal sampler fed the run's uniform draws, per context averaged;
    with ``draws_of``, the uniform draws of that method's run (same seed, dataset, model and task)."""
    drawn, ideal, target = defaultdict(list), defaultdict(list), {}
    for r in rows:
        if r.get("steering_probs") is None:
            raise ValueError(f"row {r.get('prompt_id')}: no steering_probs (not a steering-token method)")
        tgt = [float(x) for x in r["target"]]
        parts = [seed, r["dataset"], r["model"], draws_of or r["method"], r["task"]]
        u_seed = steering_draw_seed(parts, r["prompt_id"], r["sample"])
        target[r["context_id"]] = tgt
        ideal[r["context_id"]].append(draw_index(tgt, u_seed))
        # a validity-corrected run drew from the reweighted probabilities (distalign.evaluation.validity)
        drawn[r["context_id"]].append(
            draw_index(weighted_probs(r["steering_probs"], r.get("token_weights")), u_seed)
        )

    def freq(idx, k):
        return [sum(1 for i in idx if i == c) / len(idx) for c in range(k)]

    def avg(draws):
        return sum(mae(freq(v, len(target[c])), target[c]) for c, v in draws.items()) / len(draws)

    return {"contexts": len(target), "n": len(rows), "token_mae": avg(drawn), "ideal_same_draws": avg(ideal)}


def floor_spread(rows: list[dict], runs: int = 20000, seed: int = 0) -> dict:
    """The noise floor of this file's targets and N per context (exact, as in the metrics:
    :func:`distalign.evaluation.metrics.noise_floor`), the SD of an ideal sampler's MAE around it and how often
    one such run lands above 1.25x it (``runs`` simulated runs of multinomial draws)."""
    target, n = {}, defaultdict(int)
    for r in rows:
        target[r["context_id"]] = np.asarray(r["target"], float)
        n[r["context_id"]] += 1
    floor = noise_floor([t.tolist() for t in target.values()], [n[c] for c in target])["mean"]
    rng = np.random.default_rng(seed)
    maes = np.empty(runs)
    for i in range(runs):
        maes[i] = np.mean(
            [np.mean(np.abs(rng.multinomial(n[c], t / t.sum()) / n[c] - t)) for c, t in target.items()]
        )
    return {
        "floor": floor,
        "floor_sd": float(maes.std()),
        "p_above_1_25": float((maes > 1.25 * floor).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("generations", nargs="+", type=Path)
    ap.add_argument("--seed", type=int, default=None, help="config seed (default: config/config.yaml's)")
    ap.add_argument(
        "--runs", type=int, default=20000, help="simulated ideal-sampler runs for the floor's spread"
    )
    ap.add_argument(
        "--draws-of",
        default=None,
        metavar="METHOD",
        help="replay every file with this method's uniform draws (default: each file's own method)",
    )
    args = ap.parse_args()
    seed = args.seed
    if seed is None:
        from distalign.core.io import load_yaml

        seed = int(load_yaml(Path(__file__).resolve().parents[1] / "config/config.yaml")["seed"])
    print(
        "| file | contexts | token MAE | ideal sampler, same draws | floor (SD) | ideal run above 1.25x floor |"
    )
    print("|---|---|---|---|---|---|")
    for path in args.generations:
        rows = read_jsonl(path)
        res, spread = replay(rows, seed, args.draws_of), floor_spread(rows, runs=args.runs)
        print(
            f"| {path} | {res['contexts']} | {res['token_mae']:.4f} | {res['ideal_same_draws']:.4f} | "
            f"{spread['floor']:.4f} ({spread['floor_sd']:.4f}) | {spread['p_above_1_25']:.1%} |"
        )


if __name__ == "__main__":
    main()
