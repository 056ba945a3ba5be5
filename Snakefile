# distalign: control the distribution of attributes across many LLM generations.
# Usage: snakemake --cores all            (the embedded default, config/config.yaml)
#        snakemake --profile slurm all --configfile config/paper.yaml
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


# The default config is checked strictly first (a YAML syntax error or a duplicate key named with its line);
# Snakemake reads --configfile files before this file runs: `python -m distalign.core.io FILE` checks those.
from distalign.core.io import YamlError, check_yaml_files

try:
    check_yaml_files([p for p in ["config/config.yaml"] if Path(p).exists()])
except YamlError as err:
    raise WorkflowError(str(err)) from None


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# ---- Path grammar of results/ (the only place paths are spelled out) --------------------------
# {dataset}: a key of config["datasets"]    {model}: a key of config["models"]
# {method}:  a key of config["methods"]     {task}:  attribute | story
MODEL = "results/models/{model}"
TARGETS = "results/targets/{dataset}.csv"
PROMPTS = "results/prompts/{dataset}/{task}.jsonl"
BASE = "results/datasets/{dataset}/base.jsonl"
SFT = "results/datasets/{dataset}/sft.jsonl"
PREF = "results/datasets/{dataset}/pref.jsonl"
# D_story (methods with story_data: true): stories of the base model, labelled by the story judge.
STORY_DATA = "results/datasets/{dataset}/{model}/stories.jsonl"
STORY_SUMMARY = "results/datasets/{dataset}/{model}/stories.summary.json"
ADAPTER = "results/adapters/{dataset}/{model}/{method}"
GENERATIONS = "results/generations/{dataset}/{model}/{method}/{task}.jsonl"
LABELS = "results/labels/{dataset}/{model}/{method}/{task}.jsonl"
METRICS = "results/metrics/{dataset}/{model}/{method}/{task}.json"
PROBE = "results/probes/{dataset}/{model}/{method}.json"
PROBE_GENERATIONS = "results/generations/{dataset}/{model}/{method}/attribute.jsonl"  # the probe reads these
CAPABILITIES = "results/capabilities/{dataset}/{model}/{method}.json"
JUDGE_CHECK = "results/judge_check/{dataset}.json"
PREFETCHED = "results/models/.prefetched/{name}.json"
# Pre-flight markers (temp): one per consumer job, {job} = its rule and wildcards (distalign.modeling.preflight).
PREFLIGHT = "results/preflight/models/{model}/{job}.json"
PREFLIGHT_ENDPOINTS = "results/preflight/endpoints/{job}.json"
# Decoding sweeps (Figure 4): {knob} top_p | top_k | temperature, {value} its value, {rep} the run.
SWEEP = "results/sweeps/{dataset}/{model}/{method}/{task}/{knob}-{value}/seed{rep}"
SWEEP_GENERATIONS = f"{SWEEP}/generations.jsonl"
SWEEP_LABELS = f"{SWEEP}/labels.jsonl"
SWEEP_METRICS = f"{SWEEP}/metrics.json"
# Validity correction (methods.<m>.validity_correction): the method's answers to the validation
# prompts of a task, their labels, and the per-token valid shares and draw weights.
VALIDITY = "results/validity/{dataset}/{model}/{method}/{task}"
VALIDITY_GENERATIONS = f"{VALIDITY}/generations.jsonl"
VALIDITY_LABELS = f"{VALIDITY}/labels.jsonl"
VALIDITY_WEIGHTS = f"{VALIDITY}/weights.json"
# Hint calibration (hinted methods with calibrated: true): the model's answers to the validation
# prompts under every class hint, their labels, and the confusion and draw weights from them.
HINT_CALIBRATION = "results/calibration/{dataset}/{model}/{method}/{task}"
HINT_CALIBRATION_GENERATIONS = f"{HINT_CALIBRATION}/generations.jsonl"
HINT_CALIBRATION_LABELS = f"{HINT_CALIBRATION}/labels.jsonl"
HINT_CALIBRATION_WEIGHTS = f"{HINT_CALIBRATION}/weights.json"
TABLE = "results/tables/{table}"  # {table}.csv + {table}.md
FIGURE = "results/figures/{figure}"  # {figure}.png + {figure}.pdf
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"


# One file per stage; each includes its helpers (workflow/rules/helpers/<stage>.smk) at its top, apart from
# its rules because `snakemake --lint` asks for that. A file may use at parse time (in a rule's directives)
# what an earlier one defines: common.smk comes first, then preflight.smk, whose marker inputs the data,
# train, generate, evaluate and sweep rules read.
include: "workflow/rules/common.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/cluster.smk"


# Default target: every artefact of the configured run.
rule all:
    default_target: True
    input:
        all_targets(),
        artefact_targets(),
