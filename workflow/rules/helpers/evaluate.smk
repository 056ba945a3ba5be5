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


from distalign.core.seeds import derive_seed
import functools

from distalign.evaluation.capabilities import CapabilityError, leak_vocabulary, load_instructions

CAPS = config["capabilities"]


def capabilities_inputs(wildcards):
    """Model, the adapter of trained methods, the local files of the lm-eval tasks (their items, and the
    task YAMLs of capabilities.lm_eval_include), the leak check's instructions, and for tasks over hub
    datasets the prefetch markers (their datasets in the cache, and the offline task check). The
    markers are ancient(): a re-prefetch (same data) must not rerun hours of evaluation."""
    require_applicable(wildcards, "attribute", "the capability check")
    require_weights(wildcards, "the capability check")
    inputs = {"model": MODEL.format(model=wildcards.model)}
    if method_kind(wildcards.method) in TRAINED_KINDS:
        inputs["adapter"] = method_adapter(wildcards)
    inputs["lm_eval_files"] = lm_eval_local_files()
    if CAPS["instructions"]:
        inputs["instructions"] = checked_instructions()
    markers = lm_eval_dataset_markers()
    if markers:
        inputs["lm_eval_datasets"] = [ancient(m) for m in markers]
        inputs["lm_eval_check"] = ancient(LM_EVAL_CHECKED)
    return inputs


@functools.cache
def checked_instructions():
    """capabilities.instructions, read and checked once at DAG time (a bad line names the file and line)."""
    try:
        load_instructions(CAPS["instructions"])
    except CapabilityError as err:
        raise WorkflowError(str(err)) from None
    return CAPS["instructions"]


def capabilities_settings(wildcards):
    """What changes the scores: the tasks and limit (and the extra task folders when there are some),
    and the leak check's instructions, sampling, seed, words and tokens (None: no leak check)."""
    keys = ["lm_eval_tasks", "lm_eval_limit"]
    if CAPS["lm_eval_include"]:
        keys.append("lm_eval_include")
    out = {k: CAPS[k] for k in keys}
    if CAPS["instructions"]:
        gen = config["generation"]
        out["leak"] = {
            "sampling": {
                "temperature": gen["temperature"],
                "top_p": gen["top_p"],
                "top_k": gen["top_k"],
                "max_new_tokens": CAPS["leak_max_new_tokens"],
            },
            "seed": derive_seed(config["seed"], "capabilities", "leak"),
            "min_words": CAPS["leak_min_words"],
        }
        attribute = config["attributes"][config["datasets"][wildcards.dataset]["attribute"]]
        out["leak"]["steering_tokens"], out["leak"]["class_words"] = leak_vocabulary(attribute)
    return out


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
