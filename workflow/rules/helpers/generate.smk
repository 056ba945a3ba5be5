# Helpers of generate.smk, included at its top (functions and settings only):
# the inputs and sampling params of a generation job.
from snakemake.exceptions import WorkflowError

from distalign.core.config import HINT_KEYS, guided_tasks


def generation_method_spec(wildcards):
    """The method spec a generation job samples with: steering_guidance resolved to this task's scale
    (left out when the task samples plainly, so that guiding stories reruns no attribute job)."""
    spec = {k: v for k, v in method_spec(wildcards).items() if k != "steering_guidance"}
    guidance = config["methods"][wildcards.method].get("steering_guidance")
    scale = guided_tasks(guidance).get(wildcards.task)
    if scale is not None:
        spec["steering_guidance"] = {wildcards.task: scale, "plausibility": guidance.get("plausibility")}
    if spec["kind"] == "hinted":  # the task's hint per class (the attribute param leaves hints out)
        attr = config["attributes"][config["datasets"][wildcards.dataset]["attribute"]]
        spec["hints"] = {c["name"]: c.get(HINT_KEYS[wildcards.task]) for c in attr["classes"]}
    return spec


def validity_corrected(method, task):
    """Whether a method's steering draw on a task is reweighted by its validation answers."""
    return task in (config["methods"][method].get("validity_correction") or [])


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
    if config["methods"][wildcards.method].get("calibrated"):
        inputs["hint_weights"] = HINT_CALIBRATION_WEIGHTS.format(**dict(wildcards.items()))
    if validity_corrected(wildcards.method, wildcards.task):
        inputs["validity"] = VALIDITY_WEIGHTS.format(
            dataset=wildcards.dataset, model=wildcards.model, method=wildcards.method, task=wildcards.task
        )
    return inputs


def validity_generation_inputs(wildcards):
    """What the validation run of a validity correction reads: as generation, without weights."""
    if not validity_corrected(wildcards.method, wildcards.task):
        raise WorkflowError(
            f"cannot build the validity correction of method {wildcards.method!r} on task "
            f"{wildcards.task!r}: the task is not in methods.{wildcards.method}.validity_correction "
            f"({config['methods'][wildcards.method].get('validity_correction') or []})"
        )
    return _stage_inputs(wildcards, wildcards.task)


def steering_placement(wildcards):
    """Where the steering token goes (only methods of kind ours have one; None for the others)."""
    return config["training"]["steering_placement"] if method_kind(wildcards.method) == "ours" else None


def probe_generations(wildcards):
    """The attribute generations the probe reads (their class-token log-probs; an API returns none)."""
    require_weights(wildcards, "the probe")
    return PROBE_GENERATIONS.format(dataset=wildcards.dataset, model=wildcards.model, method=wildcards.method)


def hint_calibration_inputs(wildcards):
    """What the calibration run of a calibrated hinted method reads: as generation, without weights."""
    if not config["methods"][wildcards.method].get("calibrated"):
        raise WorkflowError(
            f"cannot build the hint calibration of method {wildcards.method!r}: it is not a hinted method "
            f"with calibrated: true (methods.{wildcards.method})"
        )
    return _stage_inputs(wildcards, wildcards.task)
