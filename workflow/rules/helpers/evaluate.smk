# Helpers of evaluate.smk, included at its top (functions and settings only):
# the judge params, and the inputs and settings of the capability check and the judge check.
def judge_params(wildcards):
    """Judge settings that change labels (endpoint, retries and concurrency do not: they are read in the script)."""
    if wildcards.task == "attribute":
        return {"multi_class_rule": config["judge"]["multi_class_rule"]}
    out = {"story": config["judge"]["story"], "story_min_words": config["judge"]["story_min_words"]}
    if config["judge"]["story"] in ("llm", "both"):
        llm = config["judge"]["llm"]
        out["llm"] = {"model": llm["model"], "max_reasks": llm["max_reasks"], "max_tokens": llm["max_tokens"]}
    return out


def method_token_set(wildcards):
    """Steering token set of a method (None: the attribute's default; only used by the steering analysis)."""
    return config["methods"][wildcards.method].get("token_set")


CAPS = config["capabilities"]


def capabilities_inputs(wildcards):
    """Model, the adapter of trained methods, and the local task files (backend local) or the lm-eval
    prefetch markers (backend lm-eval: the tasks' datasets in the cache, and the offline task check).
    The markers are ancient(): a re-prefetch (same data) must not rerun hours of evaluation."""
    require_applicable(wildcards, "attribute", "the capability check")
    require_weights(wildcards, "the capability check")
    inputs = {"model": MODEL.format(model=wildcards.model)}
    if method_kind(wildcards.method) in TRAINED_KINDS:
        inputs["adapter"] = method_adapter(wildcards)
    if CAPS["backend"] == "local":
        inputs["heldout"] = CAPS["heldout_text"]
        inputs["multiple_choice"] = CAPS["multiple_choice"]
    else:
        inputs["lm_eval_datasets"] = [ancient(m) for m in lm_eval_dataset_markers()]
        inputs["lm_eval_check"] = ancient(LM_EVAL_CHECKED)
    return inputs


def capabilities_settings(wildcards):
    """What changes the scores: the backend and, for lm-eval, its tasks and limit (and its extra task
    folders when there are some: left out when empty, so that earlier lm-eval results stay valid)."""
    if CAPS["backend"] == "local":
        return {"backend": "local"}
    keys = ["backend", "lm_eval_tasks", "lm_eval_limit"]
    if CAPS["lm_eval_include"]:
        keys.append("lm_eval_include")
    return {k: CAPS[k] for k in keys}


def capabilities_keys():
    return [
        dict(dataset=CAPS["dataset"], model=model, method=method)
        for model in config["run"]["models"]
        if not is_api_model(config, model)
        for method in CAPS["methods"]
    ]


def judge_check_stories(wildcards):
    """The person-labelled stories of a dataset's attribute (attributes.<a>.judge_check)."""
    attribute = config["datasets"][wildcards.dataset]["attribute"]
    path = config["attributes"][attribute].get("judge_check")
    if not path:
        raise ValueError(
            f"dataset {wildcards.dataset!r}: attribute {attribute!r} has no judge_check file "
            f"(config key 'attributes.{attribute}.judge_check')"
        )
    return path
