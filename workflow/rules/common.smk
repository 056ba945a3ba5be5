# Shared helpers: config validation, wildcard constraints, input functions and target lists.
import re

from snakemake.exceptions import WorkflowError

from distalign.config import ConfigError, dataset_applies, method_training, validate_config

# Validate (and fill defaults of) the configuration before any job is scheduled. We use our own
# validator on workflow/schemas/config.schema.yaml instead of snakemake.utils.validate so that
# errors name the dotted config key and what was expected, and cross-references are checked.
try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


wildcard_constraints:
    dataset=_alternatives(config["datasets"]),
    model=_alternatives(config["models"]),
    method=_alternatives(config["methods"]),
    task="attribute|story",


TASKS = ["attribute", "story"]


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
    return config["datasets"][wildcards.dataset]


def attribute_spec(wildcards):
    name = config["datasets"][wildcards.dataset]["attribute"]
    return {"name": name, **config["attributes"][name]}


def model_spec(wildcards):
    return config["models"][wildcards.model]


def method_spec(wildcards):
    return config["methods"][wildcards.method]


def method_kind(method):
    return config["methods"][method]["kind"]


def method_training_spec(wildcards):
    """Resolved training hyperparameters of a method (params: a change reruns only that method)."""
    return method_training(config, wildcards.method)


def first_method_of_kind(kind):
    for name, spec in config["methods"].items():
        if spec["kind"] == kind:
            return name
    raise WorkflowError(f"config key 'methods': no method of kind {kind!r} is defined")


def applicable(dataset, method, task="attribute"):
    return dataset_applies(config, dataset, method, task)


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
