# Helpers of cluster.smk, included at its top (functions and settings only):
# the Hugging Face environment of every job and the models to prefetch.
import os

from distalign.cluster.prefetch import hf_environment, prefetch_specs, run_prefetch

HF = config["hf"]

# HF_HOME / HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE of every job. Local jobs are children of this
# process, and a SLURM job re-parses the Snakefile inside the job (sbatch --export=ALL), so this
# update runs there too.
HF_ENV = hf_environment(HF)
os.environ.update(HF_ENV)

PREFETCH = prefetch_specs(config)


def prefetch_repo_id(wildcards):
    return PREFETCH[wildcards.name][0]


def prefetch_revision(wildcards):
    return PREFETCH[wildcards.name][1]
