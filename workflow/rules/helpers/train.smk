# Helpers of train.smk, included at its top (functions and settings only):
# the adapter a DPO run continues, D_story and replay inputs and the params of a training job.
import functools

from snakemake.exceptions import WorkflowError

from distalign.core.config import adapter_dataset, method_training, replay_section, training_params
from distalign.data.instructions import InstructionsError, load_instructions
from distalign.training.runner import first_method_of_kind


def train_init_adapter(wildcards):
    """DPO continues the IFT adapter of the same (dataset, model): the first method of kind ift. (Also where an
    adapter that should not exist is refused at DAG time: a prompting method, a transfer dataset, a method that
    does not apply to the dataset.)"""
    kind = method_kind(wildcards.method)
    path = ADAPTER.format(dataset=wildcards.dataset, model=wildcards.model, method=wildcards.method)
    adapter = f"the adapter {path}"
    if kind not in TRAINED_KINDS:
        raise WorkflowError(
            f"cannot build {adapter}: method {wildcards.method!r} is of kind {kind!r}, which "
            f"trains nothing (trained kinds: {', '.join(TRAINED_KINDS)})"
        )
    if config["datasets"][wildcards.dataset].get("adapters_from"):
        raise WorkflowError(
            f"cannot build {adapter}: dataset {wildcards.dataset!r} uses the adapters of "
            f"{adapter_dataset(config, wildcards.dataset)!r} (datasets.{wildcards.dataset}.adapters_from)"
            f" and trains nothing itself"
        )
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


def train_replay_instructions(wildcards):
    """Ours with training.replay on also reads the replay instructions (checked at DAG time: a bad line
    names the file and line before any job starts)."""
    w = wildcards
    replay = replay_section(method_kind(w.method), method_training(config, w.method, w.model, w.dataset))
    if replay is None:
        return {}
    return {"replay": checked_replay_instructions(replay["instructions"])}


@functools.cache
def checked_replay_instructions(path):
    try:
        load_instructions(path, key="training.replay.instructions")
    except InstructionsError as err:
        raise WorkflowError(str(err)) from None
    return path


def train_params(wildcards):
    """Only what changes the result: the method spec and the training section resolved for this (model,
    dataset, method), training.overrides included (a change reruns only the jobs whose values it changes)."""
    w = wildcards
    return {
        "spec": adapter_method_spec(w),
        "training": training_params(config, w.method, w.model, w.dataset),
    }


def train_uses_gpu(wildcards):
    w = wildcards
    return 0 if method_training(config, w.method, w.model, w.dataset)["device"] == "cpu" else 1
