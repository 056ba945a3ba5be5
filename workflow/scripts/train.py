"""Snakemake script of rule `train`: one LoRA adapter per (dataset, model, method)."""

import torch

from distalign.scripting import setup_logging
from distalign.train import train_adapter

# log file and console: the console shows progress lines, the per-step metrics stay in the log file
setup_logging(snakemake.log[0])
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
