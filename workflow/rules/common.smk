# Shared by every stage: config validation, wildcard constraints, the helpers several stages use, and
# the target lists of `all`. A stage's own helpers are in helpers/<stage>.smk, included at the top of its .smk.
import re

from snakemake.exceptions import WorkflowError

from distalign.core.config import (
    TASKS,
    OPERATIONAL_GENERATION_KEYS,
    TRAINED_KINDS,
    ConfigError,
    adapter_dataset,
    dataset_applies,
    guided_tasks,
    inapplicable_reason,
    is_api_model,
    needs_weights_reason,
    validate_config,
)
from distalign.report.figures import KNOBS

# Validate (and fill defaults of) the configuration before any job is scheduled. We use our own
# validator on workflow/schemas/config.schema.yaml instead of snakemake.utils.validate so that
# errors name the dotted config key and what was expected, and cross-references are checked.
# Snakemake read the config files (and a --profile) with plain PyYAML, which keeps the last of two
# equal keys without a word: they are read again strictly, so a duplicate key names file:line.
from distalign.core.io import YamlError, check_yaml_files, snakemake_profile_files

try:
    check_yaml_files([*workflow.configfiles, *snakemake_profile_files()])
    validate_config(config)
except (ConfigError, YamlError) as err:
    raise WorkflowError(str(err)) from None

# The census tables and the template bank the run reads: checked here (milliseconds), not in a job.
from distalign.data.targets import RunInputError, check_run_inputs

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


def scaled(base):
    """A resource callable that grows with the retry attempt (memory/runtime on cluster retries)."""

    def resource(wildcards, attempt):
        return base * attempt

    return resource


def attribute_spec(wildcards):
    """An attribute's settings without its classes' hints (story_hint changes D_story and the hinted
    methods only, attribute_hint the hinted methods: they get them in their method spec) and its judge
    check (read by the judge_check rule only)."""
    name = config["datasets"][wildcards.dataset]["attribute"]
    spec = {k: v for k, v in config["attributes"][name].items() if k != "judge_check"}
    classes = [{k: v for k, v in c.items() if k not in HINT_KEYS.values()} for c in spec["classes"]]
    return {"name": name, **spec, "classes": classes}


# Keys of a method that only change the results when set: left out when off, so that methods
# defined before the key existed keep their results.
OPTIONAL_METHOD_KEYS = ("story_data", "validity_correction", "steering_guidance", "calibrated")
# Keys that change how a method samples, not its adapter.
GENERATION_ONLY_METHOD_KEYS = ("validity_correction", "steering_guidance", "calibrated")


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


def adapter_method_spec(wildcards):
    """The method spec without its generation-only keys: what the adapter depends on (the probe too: it
    reads the class-token probabilities, not a sampled answer)."""
    return {k: v for k, v in method_spec(wildcards).items() if k not in GENERATION_ONLY_METHOD_KEYS}


def method_kind(method):
    return config["methods"][method]["kind"]


def applicable(dataset, method, task="attribute", model=None):
    return dataset_applies(config, dataset, method, task, model)


def require_applicable(wildcards, task="attribute", what="this file"):
    """Stop at DAG time, with the reason, when a file asked for by path needs a combination that does not apply
    (`all` skips those; without this a path such as race stories would run training and generation first)."""
    model = dict(wildcards.items()).get("model")
    reason = inapplicable_reason(config, wildcards.dataset, wildcards.method, task, model)
    if reason:
        raise WorkflowError(
            f"cannot build {what} for dataset {wildcards.dataset!r}, method {wildcards.method!r}, "
            f"task {task!r}: {reason}"
        )


def require_weights(wildcards, what):
    """Stop at DAG time when ``what`` (the probe, the capability check) is asked of an API model."""
    reason = needs_weights_reason(config, wildcards.model, what)
    if reason:
        raise WorkflowError(f"cannot build {what} of model {wildcards.model!r}: {reason}")


# API models (source openai) run the prompting methods only; `all` and the artefacts skip the rest, and
# say so once here. Asked for by path, those files stop at DAG time (require_applicable, require_weights).
API_MODELS = [m for m in config["run"]["models"] if is_api_model(config, m)]
if API_MODELS:
    from snakemake.logging import logger

    _skipped = [m for m in config["run"]["methods"] if method_kind(m) in TRAINED_KINDS]
    logger.warning(
        f"API model(s) {', '.join(API_MODELS)} (source openai): skipping methods "
        f"{', '.join(_skipped) or '(none)'}, the probe and the capability check on them: they need the "
        f"model's weights or logits"
    )


# vLLM on a CUDA node asks the scheduler for one GPU; the transformers backend, CPU runs and API
# models (whose generation job only talks to an endpoint) do not.
VLLM_GPUS = int(config["generation"]["backend"] == "vllm" and config["training"]["device"] != "cpu")


def generation_gpus(wildcards):
    return 0 if is_api_model(config, wildcards.model) else VLLM_GPUS


def method_adapter(wildcards):
    """The adapter a trained method uses on a dataset (its own, or that of datasets.<d>.adapters_from)."""
    return ADAPTER.format(
        dataset=adapter_dataset(config, wildcards.dataset), model=wildcards.model, method=wildcards.method
    )


def generation_settings(wildcards):
    """generation.* without the keys that say where a job runs (vllm_python, api_cache)."""
    return {k: v for k, v in config["generation"].items() if k not in OPERATIONAL_GENERATION_KEYS}


# ---- Target lists of `all` (called after every stage is included) ---------------------------


def all_targets():
    """Metrics of every applicable (dataset, model, method, task) of `run`, plus internal probes."""
    run = config["run"]
    out = []
    for dataset in run["datasets"]:
        for model in run["models"]:
            for method in run["methods"]:
                for task in run["tasks"]:
                    if applicable(dataset, method, task, model):
                        out.append(METRICS.format(dataset=dataset, model=model, method=method, task=task))
                if applicable(dataset, method) and not is_api_model(config, model):
                    out.append(PROBE.format(dataset=dataset, model=model, method=method))
    return out


def _reads_nothing(artefact):
    """Whether a table or figure would read no file (nothing of the run gives it a row)."""
    proxy = getattr(rules, "judge_check_table" if artefact == "judge_check" else artefact)
    return not list(proxy.input)


def artefact_targets():
    """The files of every table and figure of report.artefacts (fig4: one per sweeps.datasets). Reads REPORT
    and SWEEPS of helpers/report.smk and helpers/sweep.smk: call it after every include, as rule all does."""
    out = []
    empty = [name for name in REPORT["artefacts"] if name != "fig4" and _reads_nothing(name)]
    if empty:
        from snakemake.logging import logger

        logger.warning(
            f"report.artefacts: skipping {', '.join(empty)}: no model and method of the run gives them a row "
            f"(an API model has no weights for the trained methods, the probe or the capability check)"
        )
    for name in REPORT["artefacts"]:
        if name in empty:
            continue
        if name == "fig4":
            for dataset in SWEEPS["datasets"]:
                stem = FIGURE.format(figure=f"fig4-{dataset}")
                out += [f"{stem}.png", f"{stem}.pdf", f"{stem}.csv"]
        elif name == "capability_tradeoff":  # a figure with its points as CSV
            stem = FIGURE.format(figure=name)
            out += [f"{stem}.png", f"{stem}.pdf", f"{stem}.csv"]
        elif name.startswith("table") or name in ("steering_diagnosis", "judge_check"):
            out += [f"{TABLE.format(table=name)}.csv", f"{TABLE.format(table=name)}.md"]
        else:
            out += [f"{FIGURE.format(figure=name)}.png", f"{FIGURE.format(figure=name)}.pdf"]
    return out
