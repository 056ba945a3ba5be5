"""Measure training: first-token distribution MAE on validation prompts before/after, and time per step.

Builds UK-real data with distalign (targets from resources/census/uk.csv, offline prompt bank),
trains ift, dpo (from the ift adapter) and ours with ``distalign.training.runner.train_adapter`` on the
embedded model, and probes the restricted softmax at the first assistant position (no sampling):
over the steering tokens for ``ours``, over the first token of each class label ("Male",
"Female") for the baselines. MAE = mean over contexts of mean over classes of
|mean over that context's validation prompts of q - target|.

Example (what the report used):
    .venv/bin/python bench/train_probe.py --responses 4 --train-prompts 4 --val-prompts 4 \
        --sft-epochs 1 --pref-epochs 1 --out /tmp/train_probe
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distalign.core.attributes import attribute_of_dataset
from distalign.core.config import load_config
from distalign.core.io import read_jsonl, write_jsonl
from distalign.data.datasets import build_base, build_pref, build_sft
from distalign.data.prompts import build_prompts, load_templates
from distalign.data.targets import build_targets, load_census
from distalign.generation.sampling import steering_distribution
from distalign.generation.transformers_backend import TransformersBackend
from distalign.modeling.models import load_model, single_token_ids
from distalign.training.runner import train_adapter

REPO = Path(__file__).resolve().parents[1]


def probe(model, tok, val: list[dict], ids: list[int]) -> float:
    """MAE of the restricted first-position distribution, computed as the workflow's generate job does."""
    model.eval()
    backend = TransformersBackend(None, tokenizer=tok, model=model, batch_size=16)
    probs = torch.tensor(steering_distribution(backend, tok, [p["prompt"] for p in val], ids)[0])
    by_ctx: dict[str, list[int]] = {}
    for i, p in enumerate(val):
        by_ctx.setdefault(p["context"], []).append(i)
    errs = []
    for idx in by_ctx.values():
        q = probs[idx].mean(0)
        t = torch.tensor(val[idx[0]]["target"])
        errs.append((q - t).abs().mean().item())
    return sum(errs) / len(errs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="uk-real")
    ap.add_argument("--methods", nargs="+", default=["ift", "dpo", "ours"])
    ap.add_argument("--contexts", type=int, default=None, help="first N contexts (default: all)")
    ap.add_argument("--train-prompts", type=int, default=100)
    ap.add_argument("--val-prompts", type=int, default=10)
    ap.add_argument("--responses", type=int, default=100, help="responses per context (D_base N)")
    ap.add_argument("--sft-epochs", type=float, default=None)
    ap.add_argument("--pref-epochs", type=float, default=None)
    ap.add_argument("--out", type=Path, default=Path("/tmp/train_probe"))
    a = ap.parse_args()

    config = load_config(REPO / "config" / "config.yaml")
    if a.sft_epochs:
        config["training"]["sft"]["epochs"] = a.sft_epochs
    if a.pref_epochs:
        config["training"]["preference"]["epochs"] = a.pref_epochs
    ds = config["datasets"][a.dataset]
    attr = attribute_of_dataset(config, a.dataset)
    census = load_census(REPO / config["census"][ds["census"]])[: a.contexts]
    targets = build_targets(census, attr, ds["target"], census_name=ds["census"])
    bank = load_templates(REPO / config["prompts"]["templates"])
    per_split = {"train": a.train_prompts, "val": a.val_prompts, "test": 1}
    prompts = build_prompts(targets, attr, "attribute", bank, per_split, config["seed"], ds["census"])
    base = build_base(prompts, targets, attr, bank, a.responses, config["seed"])
    a.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(a.out / "sft.jsonl", build_sft(base))
    write_jsonl(a.out / "pref.jsonl", build_pref(base, attr, config["seed"]))
    by_ctx = {t["context"]: t["target"] for t in targets}
    val = [{**p, "target": by_ctx[p["context"]]} for p in prompts if p["split"] == "val"]
    model_dir = REPO / "results" / "models" / "smollm2-135m-instruct"

    tok, model = load_model(model_dir, device="cpu")
    steer = single_token_ids(tok, attr.steering_tokens())
    labels = [tok.encode(lab, add_special_tokens=False)[0] for lab in attr.labels]
    assert len(set(labels)) == len(labels), labels
    report = {
        "data": {
            "contexts": len(targets),
            "sft_rows": len(base),
            "val_prompts": len(val),
            "training": config["training"],
        },
        "before": {
            "steering_tokens": probe(model, tok, val, steer),
            "label_tokens": probe(model, tok, val, labels),
        },
    }
    print(json.dumps(report["before"]), flush=True)
    from peft import PeftModel

    for method in a.methods:
        out = a.out / "adapters" / method
        init = a.out / "adapters" / "ift" if config["methods"][method]["kind"] == "dpo" else None
        t0 = time.perf_counter()
        if not out.exists():
            train_adapter(
                config,
                a.dataset,
                method,
                model_dir,
                a.out / "sft.jsonl",
                a.out / "pref.jsonl",
                out,
                log=a.out / f"{method}.log",
                init_adapter=init,
            )
        wall = time.perf_counter() - t0
        _, m = load_model(model_dir, device="cpu")
        m = PeftModel.from_pretrained(m, str(out)).eval()
        ids = steer if config["methods"][method]["kind"] == "ours" else labels
        ends = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("event") == "end"]
        report[method] = {
            "mae_after": probe(m, tok, val, ids),
            "wall_seconds": wall,
            "stages": {
                r["stage"]: {k: r[k] for k in ("step", "epoch", "wall_seconds", "seconds_per_step")}
                for r in ends
            },
        }
        print(method, json.dumps(report[method]), flush=True)
    (a.out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
