"""bench/capability_check.py: the offline general-capability tasks with lm-evaluation-harness.

Runs ``distalign_general_mc`` (resources/capabilities/general_mc.jsonl, four-way questions scored by
log-likelihood) and ``distalign_heldout`` (resources/capabilities/heldout_long.jsonl, rolling
log-likelihood of each paragraph) from the task folder resources/capabilities/lm_eval, with lm-eval's
``hf`` backend, offline (HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 are set unless already set: the
tasks read local JSON files with the packaged ``json`` builder). Prints accuracy per category, the
perplexities, the number of items and the wall time.

The task YAMLs name their files relative to the working directory (as the workflow's Snakemake
working directory has them), so this script changes into ``--workdir`` (default: the repository root)
before lm-eval reads them.

``--out FILE`` also writes the per-item results (each question's 0/1 correctness, each paragraph's
summed NLL in nats and scored token count); ``--against BASE`` reads such a file of another run on the
same items (the base model) and prints the paired changes of distalign.evaluation.capability_stats:
accuracy change with its paired 95% interval, perplexity change with a paired bootstrap interval.

Cost on the embedded SmolLM2-135M-Instruct, batch 8, float32, a 2-core CPU shared with other work:
the full set (5,564 choice log-likelihoods + 134 paragraphs) took 906 s and 1,297 s of
simple_evaluate in two runs (load averages 2-7); ``--limit 200`` (200 questions, all 134 paragraphs)
took 147 s. The held-out task alone is about 90 s of that.

Example (what the report used; the model folder is ``results/models/smollm2-135m-instruct`` of any
workflow run):
    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/capability_check.py \\
        --model /tmp/capcheck/model --out /tmp/capcheck/base.json
    .venv/bin/python bench/capability_check.py --model M --peft results/adapters/uk-real/M/ours \\
        --against /tmp/capcheck/base.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = Path("resources/capabilities/lm_eval")
TASKS = {"mc": "distalign_general_mc", "heldout": "distalign_heldout"}


def model_weights(model: Path) -> str:
    """The weights folder of a distalign model folder (its pointer file), or the folder itself."""
    if (model / "distalign_model.json").exists():
        from distalign.modeling.models import weights_path

        return weights_path(model)
    return str(model.resolve())


def per_item(samples: dict, tokenizer) -> dict:
    """Per-question correctness and per-paragraph NLL / token counts from lm-eval's logged samples."""
    out: dict = {}
    mc = samples.get(TASKS["mc"])
    if mc:
        mc = sorted(mc, key=lambda s: s["doc_id"])
        out["mc"] = [
            {
                "id": s["doc"]["id"],
                "category": s["doc"]["category"],
                "acc": s["acc"],
                "acc_norm": s["acc_norm"],
            }
            for s in mc
        ]
    held = samples.get(TASKS["heldout"])
    if held:
        held = sorted(held, key=lambda s: s["doc_id"])
        out["heldout"] = [
            {
                "id": s["doc"]["id"],
                "nll": -float(s["word_perplexity"][0]),  # (loglikelihood, words) of the paragraph
                "tokens": len(tokenizer(s["doc"]["text"], add_special_tokens=False)["input_ids"]),
                "words": int(s["word_perplexity"][1]),
            }
            for s in held
        ]
    return out


def report(results: dict, items: dict, wall: float, limit) -> None:
    if "mc" in items:
        by_cat: dict[str, list] = defaultdict(list)
        for it in items["mc"]:
            by_cat[it["category"]].append(it)
        print(f"\n{TASKS['mc']}: {len(items['mc'])} items" + (f" (limit {limit})" if limit else ""))
        print(f"  {'category':<16}{'n':>5}{'acc':>8}{'acc_norm':>10}")
        for cat in sorted(by_cat):
            rows = by_cat[cat]
            acc = 100 * sum(r["acc"] for r in rows) / len(rows)
            norm = 100 * sum(r["acc_norm"] for r in rows) / len(rows)
            print(f"  {cat:<16}{len(rows):>5}{acc:>8.1f}{norm:>10.1f}")
        r = results[TASKS["mc"]]
        print(
            f"  {'all':<16}{len(items['mc']):>5}{100 * r['acc,none']:>8.1f}{100 * r['acc_norm,none']:>10.1f}"
        )
    if "heldout" in items:
        r = results[TASKS["heldout"]]
        n_tok = sum(p["tokens"] for p in items["heldout"])
        nll = sum(p["nll"] for p in items["heldout"])
        words = sum(p["words"] for p in items["heldout"])
        print(f"\n{TASKS['heldout']}: {len(items['heldout'])} paragraphs, {words} words, {n_tok} tokens")
        print(
            f"  word_perplexity {r['word_perplexity,none']:.2f}  byte_perplexity {r['byte_perplexity,none']:.4f}  "
            f"bits_per_byte {r['bits_per_byte,none']:.4f}  token perplexity {math.exp(nll / n_tok):.2f}"
        )
    print(f"\nwall time of simple_evaluate (model load included): {wall:.0f} s")


def compare(items: dict, base_file: Path) -> None:
    from distalign.evaluation.capability_stats import paired_accuracy_change, paired_perplexity_change

    base = json.loads(base_file.read_text())["items"]
    if "mc" in items and "mc" in base:
        if [i["id"] for i in items["mc"]] != [i["id"] for i in base["mc"]]:
            sys.exit(
                f"{base_file}: its multiple-choice items are not the ones of this run (run both with the same --limit)"
            )
        for key in ("acc", "acc_norm"):
            c = paired_accuracy_change([i[key] for i in base["mc"]], [i[key] for i in items["mc"]])
            print(
                f"{key} change vs {base_file.name}: {c['delta']:+.2f} points, 95% [{c['low']:+.2f}, {c['high']:+.2f}] "
                f"(n {c['n']}, discordant {c['discordant']})"
            )
    if "heldout" in items and "heldout" in base:
        if [p["id"] for p in items["heldout"]] != [p["id"] for p in base["heldout"]]:
            sys.exit(f"{base_file}: its paragraphs are not the ones of this run")
        c = paired_perplexity_change(
            [p["nll"] for p in base["heldout"]],
            [p["nll"] for p in items["heldout"]],
            [p["tokens"] for p in base["heldout"]],
            seed=0,
        )
        print(
            f"token perplexity change: {c['change']:+.2f}%, 95% [{c['low']:+.2f}, {c['high']:+.2f}] "
            f"({c['base_perplexity']:.2f} -> {c['other_perplexity']:.2f}, {c['n']} paragraphs)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", type=Path, required=True, help="a prepared model folder (results/models/<name>)"
    )
    ap.add_argument("--peft", default=None, help="a LoRA adapter folder to apply (default: the base model)")
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    ap.add_argument("--limit", type=int, default=None, help="first N documents of each task (default: all)")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--workdir", type=Path, default=REPO, help="folder the task files are relative to")
    ap.add_argument("--out", type=Path, default=None, help="write summary + per-item results here (JSON)")
    ap.add_argument(
        "--against", type=Path, default=None, help="per-item JSON of a base run: print paired changes"
    )
    args = ap.parse_args()

    weights = model_weights(args.model)
    # paths given on the command line are relative to where the script was started, not to --workdir
    out, against = (p.resolve() if p else None for p in (args.out, args.against))
    peft = str(Path(args.peft).resolve()) if args.peft and Path(args.peft).exists() else args.peft
    os.chdir(args.workdir)
    if not (TASK_DIR / "distalign_general_mc.yaml").exists():
        sys.exit(f"{args.workdir}: no {TASK_DIR} (pass --workdir, the folder that holds resources/)")

    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    model_args = f"pretrained={weights},dtype={args.dtype}" + (f",peft={peft}" if peft else "")
    # include_defaults=False: index only our two YAMLs (indexing lm-eval's shipped tasks costs 10-20 s)
    tm = TaskManager(include_path=[str(TASK_DIR)], include_defaults=False)
    tasks = [TASKS[t] for t in args.tasks]
    start = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=tasks,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        task_manager=tm,
        log_samples=True,
    )
    wall = time.perf_counter() - start
    items = per_item(res["samples"], AutoTokenizer.from_pretrained(weights))
    results = {
        t: {k: v for k, v in r.items() if isinstance(v, int | float)} for t, r in res["results"].items()
    }
    report(results, items, wall, args.limit)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"model": str(args.model), "peft": peft, "limit": args.limit, "wall_s": wall}
        out.write_text(json.dumps({**summary, "results": results, "items": items}, indent=1))
        print(f"wrote {out}")
    if against:
        compare(items, against)


if __name__ == "__main__":
    main()
