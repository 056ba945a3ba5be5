"""Snakemake script of rule `train`: one LoRA adapter per (dataset, model, method)."""

import logging

import torch

from distalign.train import train_adapter

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.captureWarnings(True)
torch.set_num_threads(max(1, int(snakemake.threads)))

train_adapter(
    config=snakemake.config,
    dataset=snakemake.wildcards.dataset,
    method=snakemake.wildcards.method,
    model_dir=snakemake.input.model,
    sft_path=snakemake.input.sft,
    pref_path=snakemake.input.pref,
    out_dir=snakemake.output.adapter,
    init_adapter=snakemake.input.get("init_adapter"),
    story_path=snakemake.input.get("stories"),
)
