# Helpers of data.smk, included at its top (functions and settings only):
# the census, prompts and spec params of the data rules.
from snakemake.exceptions import WorkflowError

from distalign.core.config import API_ANSWER_KEYS, classes_without_story_hint, story_judged


def census_path(wildcards):
    """The census CSV of a dataset."""
    return config["census"][config["datasets"][wildcards.dataset]["census"]]


def census_name(wildcards):
    return config["datasets"][wildcards.dataset]["census"]


def training_prompts(wildcards):
    """Training data is built from the attribute-task prompts of the dataset."""
    return PROMPTS.format(dataset=wildcards.dataset, task="attribute")


def dataset_spec(wildcards):
    """What defines a dataset's targets (its display title does not)."""
    spec = config["datasets"][wildcards.dataset]
    return {k: spec[k] for k in ("attribute", "census", "target")}


def story_hints(wildcards):
    """The story hint of each class of a dataset's attribute (validated when a method uses D_story)."""
    name = config["datasets"][wildcards.dataset]["attribute"]
    return [c.get("story_hint") for c in config["attributes"][name]["classes"]]


def story_training_prompts(wildcards):
    """D_story is written for the training prompts of the story task (an attribute without a story judge or
    without story hints cannot have one: refused at DAG time)."""
    name = config["datasets"][wildcards.dataset]["attribute"]
    attr = config["attributes"][name]
    missing = classes_without_story_hint(attr)
    if not story_judged(attr) or missing:
        why = (
            f"attribute {name!r} has no story judge"
            if not story_judged(attr)
            else f"class(es) {missing} of attribute {name!r} have no story_hint (attributes.{name}.classes[].story_hint)"
        )
        raise WorkflowError(f"cannot build D_story of dataset {wildcards.dataset!r}: {why}")
    return PROMPTS.format(dataset=wildcards.dataset, task="story")


def model_spec(wildcards):
    """A model's entry as prepare_model reads it: of an API model's endpoint only what changes answers
    (base_url, send_seed); no api key at all for a local model (so adding the key reran nothing)."""
    spec = {k: v for k, v in config["models"][wildcards.model].items() if k != "api"}
    api = config["models"][wildcards.model].get("api")
    if api:
        spec["api"] = {k: api[k] for k in API_ANSWER_KEYS}
    return spec
