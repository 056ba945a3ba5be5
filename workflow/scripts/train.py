"""Snakemake script of rule `train`: one LoRA adapter per (dataset, model, method).

The job's spec comes from its params: ``method`` (``{"spec", "training"}``, already there),
``attribute`` (the dataset's attribute entry, ``attribute_spec``) and ``seed`` (``config["seed"]``).
"""

import torch

from distalign.core.config import TrainSpec
from distalign.core.scripting import setup_logging
from distalign.training.runner import train_adapter

# log file and console: the console shows progress lines, the per-step metrics stay in the log file
setup_logging(snakemake.log[0])
torch.set_num_threads(max(1, int(snakemake.threads)))
w, p = snakemake.wildcards, snakemake.params
job = TrainSpec.from_params(w.method, p.method, p.attribute, p.seed)

train_adapter(
    job,
    dataset=w.dataset,
    method=w.method,
    model_dir=snakemake.input.model,
    sft_path=snakemake.input.sft,
    pref_path=snakemake.input.pref,
    out_dir=snakemake.output.adapter,
    init_adapter=snakemake.input.get("init_adapter"),
    story_path=snakemake.input.get("stories"),
    replay_path=snakemake.input.get("replay"),
)
