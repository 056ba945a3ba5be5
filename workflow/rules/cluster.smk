# Cluster support: the Hugging Face cache/offline environment of every job, login-node prefetch of
# model weights and of the lm-eval tasks' datasets, and the rules that run on the submit host instead
# of going through SLURM.
#
# On a cluster whose compute nodes have no internet, run once on the login node:
#     snakemake prefetch_models --cores 1 --configfile config/paper.yaml
# It downloads every Hugging Face model of run.models (and the story judge's model when the label
# job starts its own server) into the hub cache (hf.home, or HF_HOME, or ~/.cache/huggingface) and
# writes results/models/.prefetched/{name}.json. With table5 in
# report.artefacts it also loads the datasets of capabilities.lm_eval_tasks into HF_HOME/datasets
# (results/lm_eval/datasets/{name}.json, one per repository) and checks that lm-eval builds the tasks
# offline (results/lm_eval/tasks.json). Jobs then read the caches with HF_HUB_OFFLINE=1 and
# HF_DATASETS_OFFLINE=1. The helpers live in distalign.cluster.prefetch (prefetch_specs,
# lm_eval_prefetch_specs, run_prefetch, run_lm_eval_prefetch, hf_environment).


include: "helpers/cluster.smk"


# Download (hf.prefetch true) or only check (false) one model on the submit host.
rule prefetch_model:
    output:
        marker=PREFETCHED,
    log:
        f"{LOGS}/prefetch_model/{{name}}.log",
    wildcard_constraints:
        name="[A-Za-z0-9][A-Za-z0-9_.-]*",
    params:
        repo_id=prefetch_repo_id,
        revision=prefetch_revision,
        download=HF["prefetch"],
    run:
        run_prefetch(params.repo_id, params.revision, params.download, output.marker, log[0])


# Load (hf.prefetch true) or only check (false) every config of one dataset repository that the
# lm-eval tasks read, with datasets.load_dataset as lm-eval calls it, on the submit host.
rule prefetch_lm_eval_dataset:
    output:
        marker=PREFETCHED_DATASET,
    log:
        f"{LOGS}/prefetch_lm_eval_dataset/{{name}}.log",
    wildcard_constraints:
        name="[A-Za-z0-9][A-Za-z0-9_.-]*",
    params:
        spec=lm_eval_dataset_spec,
        download=HF["prefetch"],
    run:
        run_lm_eval_prefetch("dataset", params.spec, params.download, output.marker, log[0])


# Build every lm-eval task of capabilities.lm_eval_tasks online (its helpers' own downloads, e.g.
# IFEval's NLTK data) and then offline, as the capabilities job will, on the submit host.
rule prefetch_lm_eval_tasks:
    input:
        lm_eval_dataset_markers,
    output:
        marker=LM_EVAL_CHECKED,
    log:
        f"{LOGS}/prefetch_lm_eval_tasks.log",
    params:
        spec=lm_eval_tasks_spec(),
        download=HF["prefetch"],
    run:
        run_lm_eval_prefetch("lm-eval-tasks", params.spec, params.download, output.marker, log[0])


# Run on the login node before submitting anything: snakemake prefetch_models --cores 1
rule prefetch_models:
    input:
        prefetch_models_inputs,


# Cheap rules run on the submit host (no queueing for seconds of work): data preparation, scoring,
# and the tables/figures of workflow/rules/report.smk. Names of rules that are not included only warn.
if config["cluster"]["local_rules"]:

    localrules:
        all,
        targets,
        prompts,
        datasets,
        prefetch_model,
        prefetch_lm_eval_dataset,
        prefetch_lm_eval_tasks,
        prefetch_models,
        metrics,
        probe,
        table1,
        table2,
        table3,
        table4,
        table6,
        table10,
        table11,
        fig3,
        fig5,
        fig11,
        calibration,
        capability_tradeoff,
