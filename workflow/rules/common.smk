# Shared helpers: config validation, wildcard constraints, input functions and target lists.
import os
import re

from snakemake.exceptions import WorkflowError

from distalign.config import (
    ConfigError,
    adapter_dataset,
    dataset_applies,
    figure_dataset_errors,
    inapplicable_reason,
    method_training,
    share_class_of,
    story_judged,
    training_params,
    validate_config,
)
from distalign.figures import KNOBS
from distalign.guidance import guided_tasks
from distalign.judge import judge_config
from distalign.prompts import TASKS, derive_seed
from distalign.serve import (
    hf_defaults,
    hf_environment,
    judge_starts_server,
    prefetch_markers,
    prefetch_specs,
    run_prefetch,
)
from distalign.train import first_method_of_kind

# Validate (and fill defaults of) the configuration before any job is scheduled. We use our own
# validator on workflow/schemas/config.schema.yaml instead of snakemake.utils.validate so that
# errors name the dotted config key and what was expected, and cross-references are checked.
# Snakemake read the config files (and a --profile) with plain PyYAML, which keeps the last of two
# equal keys without a word: they are read again strictly, so a duplicate key names file:line.
from distalign.io import YamlError, check_yaml_files, snakemake_profile_files

try:
    check_yaml_files([*workflow.configfiles, *snakemake_profile_files()])
    validate_config(config)
except (ConfigError, YamlError) as err:
    raise WorkflowError(str(err)) from None

# The census tables and the template bank the run reads: checked here (milliseconds), not in a job.
from distalign.targets import RunInputError, check_run_inputs

try:
    check_run_inputs(config)
except RunInputError as err:
    raise WorkflowError(str(err)) from None


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


wildcard_constraints:
    dataset=_alternatives(config["datasets"]),
    model=_alternatives(config["models"]),
    method=_alternatives(config["methods"]),
    task=_alternatives(TASKS),
    knob=_alternatives(KNOBS),
    value=r"[0-9]+(\.[0-9]+)?",
    rep=r"[0-9]+",


def census_path(wildcards):
    """The census CSV of a dataset."""
    return config["census"][config["datasets"][wildcards.dataset]["census"]]


def census_name(wildcards):
    return config["datasets"][wildcards.dataset]["census"]


def training_prompts(wildcards):
    """Training data is built from the attribute-task prompts of the dataset."""
    return PROMPTS.format(dataset=wildcards.dataset, task="attribute")


def scaled(base):
    """A resource callable that grows with the retry attempt (memory/runtime on cluster retries)."""

    def resource(wildcards, attempt):
        return base * attempt

    return resource


def dataset_spec(wildcards):
    """What defines a dataset's targets (its display title does not)."""
    spec = config["datasets"][wildcards.dataset]
    return {k: spec[k] for k in ("attribute", "census", "target")}


def attribute_spec(wildcards):
    """An attribute's settings without its classes' story hints (they change D_story only) and its
    judge check (read by the judge_check rule only)."""
    name = config["datasets"][wildcards.dataset]["attribute"]
    spec = {k: v for k, v in config["attributes"][name].items() if k != "judge_check"}
    classes = [{k: v for k, v in c.items() if k != "story_hint"} for c in spec["classes"]]
    return {"name": name, **spec, "classes": classes}


def story_hints(wildcards):
    """The story hint of each class of a dataset's attribute (validated when a method uses D_story)."""
    name = config["datasets"][wildcards.dataset]["attribute"]
    return [c.get("story_hint") for c in config["attributes"][name]["classes"]]


def story_training_prompts(wildcards):
    """D_story is written for the training prompts of the story task (an attribute without a story judge or
    without story hints cannot have one: refused at DAG time)."""
    name = config["datasets"][wildcards.dataset]["attribute"]
    attr = config["attributes"][name]
    missing = [c["name"] for c in attr["classes"] if not c.get("story_hint")]
    if not story_judged(attr) or missing:
        why = (f"attribute {name!r} has no story judge" if not story_judged(attr) else
               f"class(es) {missing} of attribute {name!r} have no story_hint (attributes.{name}.classes[].story_hint)")
        raise WorkflowError(f"cannot build D_story of dataset {wildcards.dataset!r}: {why}")
    return PROMPTS.format(dataset=wildcards.dataset, task="story")


def model_spec(wildcards):
    return config["models"][wildcards.model]


# Keys of a method that only change the results when set: left out when off, so that methods
# defined before the key existed keep their results.
OPTIONAL_METHOD_KEYS = ("story_data", "validity_correction", "steering_guidance")
# Keys that change how a method samples, not its adapter.
GENERATION_ONLY_METHOD_KEYS = ("validity_correction", "steering_guidance")


def _off(key, value):
    """Whether an optional method key is off: false, empty, or (steering_guidance) 1 for every task."""
    if key == "steering_guidance":
        return not guided_tasks(value)
    return not value


def method_spec(wildcards):
    """A method's settings without its display title (a title change reruns nothing) and without
    the optional keys that are off."""
    spec = config["methods"][wildcards.method]
    return {k: v for k, v in spec.items() if k != "title" and not (k in OPTIONAL_METHOD_KEYS and _off(k, v))}


def generation_method_spec(wildcards):
    """The method spec a generation job samples with: steering_guidance resolved to this task's scale
    (left out when the task samples plainly, so that guiding stories reruns no attribute job)."""
    spec = {k: v for k, v in method_spec(wildcards).items() if k != "steering_guidance"}
    guidance = config["methods"][wildcards.method].get("steering_guidance")
    scale = guided_tasks(guidance).get(wildcards.task)
    if scale is not None:
        spec["steering_guidance"] = {wildcards.task: scale, "plausibility": guidance.get("plausibility")}
    return spec


def adapter_method_spec(wildcards):
    """The method spec without its generation-only keys: what the adapter depends on (the probe too: it
    reads the class-token probabilities, not a sampled answer)."""
    return {k: v for k, v in method_spec(wildcards).items() if k not in GENERATION_ONLY_METHOD_KEYS}


def validity_corrected(method, task):
    """Whether a method's steering draw on a task is reweighted by its validation answers."""
    return task in (config["methods"][method].get("validity_correction") or [])


def method_kind(method):
    return config["methods"][method]["kind"]


def applicable(dataset, method, task="attribute"):
    return dataset_applies(config, dataset, method, task)


def require_applicable(wildcards, task="attribute", what="this file"):
    """Stop at DAG time, with the reason, when a file asked for by path needs a combination that does not apply
    (`all` skips those; without this a path such as race stories would run training and generation first)."""
    reason = inapplicable_reason(config, wildcards.dataset, wildcards.method, task)
    if reason:
        raise WorkflowError(f"cannot build {what} for dataset {wildcards.dataset!r}, method {wildcards.method!r}, "
                            f"task {task!r}: {reason}")


def all_targets():
    """Metrics of every applicable (dataset, model, method, task) of `run`, plus internal probes."""
    run = config["run"]
    out = []
    for dataset in run["datasets"]:
        for model in run["models"]:
            for method in run["methods"]:
                for task in run["tasks"]:
                    if applicable(dataset, method, task):
                        out.append(METRICS.format(dataset=dataset, model=model, method=method, task=task))
                if applicable(dataset, method):
                    out.append(PROBE.format(dataset=dataset, model=model, method=method))
    return out


# API keys come only from the environment; declaring them makes Snakemake check they are set
# before any job runs and pass them to cluster jobs.
if config["prompts"]["paraphraser"] == "openai":

    envvars:
        config["prompts"]["openai"]["api_key_env"],


# ---- Training (train.smk) -----------------------------------------------------


def train_init_adapter(wildcards):
    """DPO continues the IFT adapter of the same (dataset, model): the first method of kind ift. (Also where an
    adapter that should not exist is refused at DAG time: a prompting method, a transfer dataset, a method that
    does not apply to the dataset.)"""
    kind = method_kind(wildcards.method)
    path = ADAPTER.format(dataset=wildcards.dataset, model=wildcards.model, method=wildcards.method)
    adapter = f"the adapter {path}"
    if kind not in TRAINED_KINDS:
        raise WorkflowError(f"cannot build {adapter}: method {wildcards.method!r} is of kind {kind!r}, which "
                            f"trains nothing (trained kinds: {', '.join(TRAINED_KINDS)})")
    if config["datasets"][wildcards.dataset].get("adapters_from"):
        raise WorkflowError(f"cannot build {adapter}: dataset {wildcards.dataset!r} uses the adapters of "
                            f"{adapter_dataset(config, wildcards.dataset)!r} (datasets.{wildcards.dataset}.adapters_from)"
                            f" and trains nothing itself")
    require_applicable(wildcards, "attribute", adapter)
    if kind != "dpo":
        return {}
    ift = first_method_of_kind(config, "ift")
    return {"init_adapter": ADAPTER.format(dataset=wildcards.dataset, model=wildcards.model, method=ift)}


def train_story_data(wildcards):
    """Methods with story_data: true also train on D_story of their (dataset, model)."""
    if not config["methods"][wildcards.method].get("story_data"):
        return {}
    return {"stories": STORY_DATA.format(dataset=wildcards.dataset, model=wildcards.model)}


def train_params(wildcards):
    """Only what changes the result: the method spec and its resolved training section (a change reruns
    only that method)."""
    return {"spec": adapter_method_spec(wildcards), "training": training_params(config, wildcards.method)}


def train_uses_gpu(wildcards):
    return 0 if method_training(config, wildcards.method)["device"] == "cpu" else 1


# ---- Generation (generate.smk) ------------------------------------------------
# Trained methods read their LoRA adapter; prompting methods use the base model.
TRAINED_KINDS = ("ift", "dpo", "ours")
# vLLM on a CUDA node asks the scheduler for one GPU; the transformers backend and CPU runs do not.
GENERATION_GPUS = int(config["generation"]["backend"] == "vllm" and config["training"]["device"] != "cpu")


def method_adapter(wildcards):
    """The adapter a trained method uses on a dataset (its own, or that of datasets.<d>.adapters_from)."""
    return ADAPTER.format(dataset=adapter_dataset(config, wildcards.dataset), model=wildcards.model,
                          method=wildcards.method)


def _stage_inputs(wildcards, task):
    require_applicable(wildcards, task, "generations")
    inputs = {
        "model": MODEL.format(model=wildcards.model),
        "prompts": PROMPTS.format(dataset=wildcards.dataset, task=task),
        "targets": TARGETS.format(dataset=wildcards.dataset),
        "templates": config["prompts"]["templates"],
    }
    if method_kind(wildcards.method) in TRAINED_KINDS:
        inputs["adapter"] = method_adapter(wildcards)
    return inputs


def generation_inputs(wildcards):
    """Model, test prompts of the task, targets, template bank, (trained methods) the adapter and
    (validity_correction) the draw weights from the method's validation answers."""
    inputs = _stage_inputs(wildcards, wildcards.task)
    if validity_corrected(wildcards.method, wildcards.task):
        inputs["validity"] = VALIDITY_WEIGHTS.format(dataset=wildcards.dataset, model=wildcards.model,
                                                      method=wildcards.method, task=wildcards.task)
    return inputs


def validity_generation_inputs(wildcards):
    """What the validation run of a validity correction reads: as generation, without weights."""
    if not validity_corrected(wildcards.method, wildcards.task):
        raise WorkflowError(f"cannot build the validity correction of method {wildcards.method!r} on task "
                            f"{wildcards.task!r}: the task is not in methods.{wildcards.method}.validity_correction "
                            f"({config['methods'][wildcards.method].get('validity_correction') or []})")
    return _stage_inputs(wildcards, wildcards.task)


def generation_settings(wildcards):
    """generation.* without vllm_python (where vLLM lives does not change the samples)."""
    return {k: v for k, v in config["generation"].items() if k != "vllm_python"}


def steering_placement(wildcards):
    """Where the steering token goes (only methods of kind ours have one; None for the others)."""
    return config["training"]["steering_placement"] if method_kind(wildcards.method) == "ours" else None


# ---- Evaluation (evaluate.smk) ------------------------------------------------

# `judge` and `metrics` config sections with their defaults (the functions also work before the
# schema defines them). A bad value fails here, before any job runs.
JUDGE = judge_config(config)
METRICS_CFG = {"bootstrap": 1000, "two_level": False, "noise_floor_draws": 20000, **config.get("metrics", {})}

# The LLM judge reads its API key from an environment variable; declare it so Snakemake checks it is
# set and passes it to cluster jobs. Only when a story LLM judge will actually run.
# A judge server started inside the job needs no key (EMPTY is used).
if (
    "story" in config["run"]["tasks"]
    and JUDGE["story"] in ("llm", "both")
    and not judge_starts_server(config)
):

    envvars:
        JUDGE["llm"]["api_key_env"],


def judge_params(wildcards):
    """Judge settings that change labels (endpoint, retries and concurrency do not: they are read in the script)."""
    if wildcards.task == "attribute":
        return {"multi_class_rule": JUDGE["multi_class_rule"]}
    out = {"story": JUDGE["story"], "story_min_words": JUDGE["story_min_words"]}
    if JUDGE["story"] in ("llm", "both"):
        llm = JUDGE["llm"]
        out["llm"] = {"model": llm["model"], "max_reasks": llm["max_reasks"], "max_tokens": llm["max_tokens"]}
    return out


def method_token_set(wildcards):
    """Steering token set of a method (None: the attribute's default; only used by the steering analysis)."""
    return config["methods"][wildcards.method].get("token_set")


# ---- General capabilities (evaluate.smk, table5) ---------------------------------
CAPS = config["capabilities"]


def capabilities_inputs(wildcards):
    """Model, the adapter of trained methods, and the local task files (backend local)."""
    require_applicable(wildcards, "attribute", "the capability check")
    inputs = {"model": MODEL.format(model=wildcards.model)}
    if method_kind(wildcards.method) in TRAINED_KINDS:
        inputs["adapter"] = method_adapter(wildcards)
    if CAPS["backend"] == "local":
        inputs["heldout"] = CAPS["heldout_text"]
        inputs["multiple_choice"] = CAPS["multiple_choice"]
    return inputs


def capabilities_settings(wildcards):
    """What changes the scores: the backend and, for lm-eval, its tasks and limit."""
    if CAPS["backend"] == "local":
        return {"backend": "local"}
    return {k: CAPS[k] for k in ("backend", "lm_eval_tasks", "lm_eval_limit")}


def capabilities_keys():
    return [dict(dataset=CAPS["dataset"], model=model, method=method)
            for model in config["run"]["models"] for method in CAPS["methods"]]


# ---- Decoding sweeps (sweep.smk) ----------------------------------------------
SWEEPS = config["sweeps"]


def sweep_generation_settings(wildcards):
    """generation settings with the swept knob set to the point's value."""
    value = int(wildcards.value) if wildcards.knob == "top_k" else float(wildcards.value)
    return {**generation_settings(wildcards), wildcards.knob: value}


def sweep_seed(wildcards):
    """Run r of a sweep point samples with its own seed, derived from the master seed and r."""
    return derive_seed(config["seed"], "sweep", int(wildcards.rep)) % (2**31)


def _sweep_path_point(knob, value):
    """Where a point's samples live: a value equal to the generation default of its knob is the
    default sampling itself, shared by the three knobs (stored once, under top_p)."""
    if float(value) == float(config["generation"][knob]):
        return "top_p", str(config["generation"]["top_p"])
    return knob, str(value)


def sweep_keys(dataset):
    """(model, method, knob, value, rep) of every point of one dataset's decoding sweep, with the
    knob/value of the files it reads (``path_knob``/``path_value``)."""
    keys = []
    for model in config["run"]["models"]:
        for method in SWEEPS["methods"]:
            if not applicable(dataset, method):
                continue
            for knob in KNOBS:
                for value in SWEEPS[knob]:
                    path_knob, path_value = _sweep_path_point(knob, value)
                    for rep in range(SWEEPS["seeds"]):
                        keys.append(dict(dataset=dataset, model=model, method=method, task="attribute",
                                         knob=knob, value=str(value), rep=rep,
                                         path_knob=path_knob, path_value=path_value))
    return keys


def _sweep_file(key):
    return SWEEP_METRICS.format(**{**key, "knob": key["path_knob"], "value": key["path_value"]})


def sweep_records(wildcards):
    """Every plotted point with the metrics file it reads (shared default points appear once per knob)."""
    return [{**{k: v for k, v in key.items() if not k.startswith("path_")}, "path": _sweep_file(key)}
            for key in sweep_keys(wildcards.dataset)]


def sweep_metrics(wildcards):
    return sorted({_sweep_file(k) for k in sweep_keys(wildcards.dataset)})


# ---- Report (report.smk) ------------------------------------------------------
REPORT = config["report"]


def _ordered(names):
    """Run datasets in the order of config["datasets"] (the paper's column order)."""
    return [d for d in config["datasets"] if d in names]


def artefact_keys(methods, task="attribute", datasets=None):
    """(dataset, model, method, task) of every applicable combination for one artefact."""
    keys = []
    for dataset in _ordered(datasets or config["run"]["datasets"]):
        for model in config["run"]["models"]:
            for method in methods:
                if applicable(dataset, method, task):
                    keys.append(dict(dataset=dataset, model=model, method=method, task=task))
    return keys


def artefact_metrics(methods, task="attribute", datasets=None):
    return [METRICS.format(**k) for k in artefact_keys(methods, task, datasets)]


def artefact_probes(methods):
    return [PROBE.format(**k) for k in artefact_keys(methods)]


def share_figure_keys(fig):
    """Input, records and title of fig3/fig11 (report.<fig>_dataset), as functions: evaluated when the figure
    is needed, so that a bad dataset or share class stops the run at DAG time, naming the key."""

    def keys():
        errs = figure_dataset_errors(config, fig)
        if errs:
            raise WorkflowError(f"cannot draw {fig}: {'; '.join(errs)}")
        return artefact_keys(TABLE1_METHODS, datasets=[REPORT[f"{fig}_dataset"]])

    def title(wildcards):
        dataset = REPORT[f"{fig}_dataset"]
        attribute = config["datasets"][dataset]["attribute"]
        share = share_class_of(REPORT, attribute, config["attributes"][attribute])
        return f"Share of {share} per occupation ({dataset})"

    return {"metrics": lambda wildcards: [METRICS.format(**k) for k in keys()],
            "records": lambda wildcards: keys(), "title": title}


def table_outputs(name):
    stem = TABLE.format(table=name)
    return {"csv": report(f"{stem}.csv", caption=f"../report/{name}.rst", category="Tables"), "md": f"{stem}.md"}


def figure_outputs(name):
    stem = FIGURE.format(figure=name)
    return {"png": report(f"{stem}.png", caption=f"../report/{name}.rst", category="Figures"), "pdf": f"{stem}.pdf"}


def artefact_targets():
    out = []
    for name in REPORT["artefacts"]:
        if name == "fig4":
            for dataset in SWEEPS["datasets"]:
                stem = FIGURE.format(figure=f"fig4-{dataset}")
                out += [f"{stem}.png", f"{stem}.pdf", f"{stem}.csv"]
        elif name.startswith("table") or name in ("steering_diagnosis", "judge_check"):
            out += [f"{TABLE.format(table=name)}.csv", f"{TABLE.format(table=name)}.md"]
        else:
            out += [f"{FIGURE.format(figure=name)}.png", f"{FIGURE.format(figure=name)}.pdf"]
    return out


TABLE1_METHODS = REPORT["table1_methods"]
TRANSFER_DATASETS = REPORT["transfer_datasets"]
STEERING_METHODS = [m for m in TABLE1_METHODS if method_kind(m) == "ours"]
STORY_DATASETS = [d for d in config["run"]["datasets"] if config["datasets"][d]["attribute"] != "race"]


def steering_diagnosis_keys():
    """The steering methods of table 1 on every task of the run (stories on the story datasets)."""
    keys = []
    for task in config["run"]["tasks"]:
        keys += artefact_keys(STEERING_METHODS, task, STORY_DATASETS if task == "story" else None)
    return keys


def steering_diagnosis_metrics():
    return [METRICS.format(**k) for k in steering_diagnosis_keys()]


def steering_diagnosis_story_data():
    """(dataset, model) of the story rows trained on D_story: its summary gives their hint reach."""
    pairs = {(k["dataset"], k["model"]): None for k in steering_diagnosis_keys()
             if k["task"] == "story" and config["methods"][k["method"]].get("story_data")}
    return [dict(dataset=d, model=m) for d, m in pairs]


def steering_diagnosis_story_summaries():
    return [STORY_SUMMARY.format(**k) for k in steering_diagnosis_story_data()]


# ---- Judge check (judge_check, judge_check_table) -----------------------------
def judge_check_stories(wildcards):
    """The person-labelled stories of a dataset's attribute (attributes.<a>.judge_check)."""
    attribute = config["datasets"][wildcards.dataset]["attribute"]
    path = config["attributes"][attribute].get("judge_check")
    if not path:
        raise ValueError(f"dataset {wildcards.dataset!r}: attribute {attribute!r} has no judge_check file "
                         f"(config key 'attributes.{attribute}.judge_check')")
    return path


# The story datasets of the run whose attribute has a judge check: the rows of the judge_check table.
JUDGE_CHECK_DATASETS = [d for d in STORY_DATASETS
                        if config["attributes"][config["datasets"][d]["attribute"]].get("judge_check")]


def judge_check_files():
    return [JUDGE_CHECK.format(dataset=d) for d in JUDGE_CHECK_DATASETS]


# ---- Cluster (cluster.smk) ----------------------------------------------------
# model weights, and the rules that run on the submit host instead of going through SLURM.
#
# On a cluster whose compute nodes have no internet, run once on the login node:
#     snakemake prefetch_models --cores 1 --configfile config/paper.yaml
# It downloads every Hugging Face model of run.models (and the story judge's model when the label
# job starts its own server) into the hub cache (hf.home, or HF_HOME, or ~/.cache/huggingface) and
# writes results/models/.prefetched/{name}.json. Jobs then read the cache with HF_HUB_OFFLINE=1.
# The helpers live in distalign.serve (prefetch_specs, prefetch_markers, run_prefetch, hf_environment).


HF = {**hf_defaults(), **(config.get("hf") or {})}

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


# ---- Pre-flight (preflight.smk) ----
# Each expensive job reads its own temp marker (see distalign.preflight for why one per job).
from distalign.preflight import job_endpoints, job_name


def preflight_marker(kind):
    """Input function for the jobs of `kind` that load the model -- its pre-flight marker (model checks,
    and the story judge when the run labels stories)."""

    def marker(wildcards):
        return PREFLIGHT.format(model=wildcards.model, job=job_name(kind, wildcards, skip=("model",)))

    return marker


def preflight_endpoints_marker(kind):
    """Input function of a label or prompts job: its endpoint marker, or none when the job calls no
    endpoint (attribute labels, the offline paraphraser; their inputs stay as they were)."""

    def marker(wildcards):
        if not job_endpoints(config, kind, wildcards):
            return []
        return PREFLIGHT_ENDPOINTS.format(job=job_name(kind, wildcards))

    return marker


def preflight_cuda_here(wildcards):
    """1 when the pre-flight job runs on the machine of the job it checks (local execution), so that
    `device: cuda` is checked there; 0 under a cluster executor (the scheduler gives the job its GPU)."""
    return int(workflow.local_exec and not workflow.remote_exec)
