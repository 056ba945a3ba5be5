# Helpers of cluster.smk, included at its top (functions and settings only):
# the Hugging Face environment of every job, the models to prefetch and the lm-eval tasks' datasets.
import functools
import os
from pathlib import Path

from distalign.cluster.prefetch import (
    hf_environment,
    lm_eval_prefetch_specs,
    lm_eval_prefetch_wanted,
    prefetch_specs,
    run_lm_eval_prefetch,
    run_prefetch,
)

HF = config["hf"]

# HF_HOME / HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE of every job. Local jobs are
# children of this process, and a SLURM job re-parses the Snakefile inside the job (sbatch
# --export=ALL), so this update runs there too.
HF_ENV = hf_environment(HF)
os.environ.update(HF_ENV)

PREFETCH = prefetch_specs(config)


def prefetch_repo_id(wildcards):
    return PREFETCH[wildcards.name][0]


def prefetch_revision(wildcards):
    return PREFETCH[wildcards.name][1]


# lm-eval tasks over hub datasets: one marker per dataset repository of capabilities.lm_eval_tasks (its
# configs loaded into HF_HOME/datasets), and one for the task check (every task built by lm-eval online,
# then offline as the capabilities job will). The capabilities job depends on all of them.
PREFETCHED_DATASET = "results/lm_eval/datasets/{name}.json"
LM_EVAL_CHECKED = "results/lm_eval/tasks.json"


@functools.cache
def lm_eval_tasks_index():
    """lm-eval's TaskManager for capabilities.lm_eval_tasks, built once per parse (indexing lm-eval's
    shipped task YAMLs costs 10-20 s; the dataset markers and the local files both read it)."""
    from distalign.evaluation.capabilities import CapabilityError, lm_eval_task_manager

    try:
        return lm_eval_task_manager(CAPS["lm_eval_include"], tasks=CAPS["lm_eval_tasks"])
    except CapabilityError as err:
        raise WorkflowError(str(err)) from None


@functools.cache
def lm_eval_dataset_specs():
    """marker name -> dataset spec, from lm-eval's task configs. Resolved on first use only (lm-eval
    indexes its task YAMLs: seconds), i.e. when a capabilities or prefetch job is in the DAG; stops
    there, naming capabilities.lm_eval_tasks[i] or the missing lm-eval install.
    The imports are here too: distalign.evaluation.capabilities imports torch (seconds per parse)."""
    from distalign.evaluation.capabilities import CapabilityError

    try:
        return lm_eval_prefetch_specs(config, lm_eval_tasks_index())
    except CapabilityError as err:
        raise WorkflowError(str(err)) from None


@functools.cache
def lm_eval_local_files():
    """The local files the lm-eval tasks read (their data_files) and the task YAMLs of
    capabilities.lm_eval_include: inputs of the capabilities job, so that an edit reruns it."""
    from distalign.evaluation.capabilities import CapabilityError, lm_eval_data_files

    try:
        files = lm_eval_data_files(CAPS["lm_eval_tasks"], CAPS["lm_eval_include"], lm_eval_tasks_index())
    except CapabilityError as err:
        raise WorkflowError(str(err)) from None
    yamls = [str(p) for folder in CAPS["lm_eval_include"] for p in sorted(Path(folder).rglob("*.yaml"))]
    return sorted({*files, *yamls})


def lm_eval_dataset_markers(wildcards=None):
    return [PREFETCHED_DATASET.format(name=name) for name in sorted(lm_eval_dataset_specs())]


def lm_eval_dataset_spec(wildcards):
    specs = lm_eval_dataset_specs()
    if wildcards.name not in specs:
        raise WorkflowError(
            f"{PREFETCHED_DATASET.format(name=wildcards.name)}: no task of capabilities.lm_eval_tasks "
            f"reads that dataset (they read: {', '.join(sorted(specs)) or 'none'})"
        )
    return specs[wildcards.name]


def lm_eval_tasks_spec():
    return {"tasks": CAPS["lm_eval_tasks"], "include": CAPS["lm_eval_include"]}


def prefetch_models_inputs(wildcards):
    """The model markers, plus the lm-eval markers when `all` builds table5 with tasks over hub datasets."""
    out = [PREFETCHED.format(name=name) for name in sorted(PREFETCH)]
    if lm_eval_prefetch_wanted(config) and capabilities_keys() and lm_eval_dataset_markers():
        out += [*lm_eval_dataset_markers(), LM_EVAL_CHECKED]
    return out
