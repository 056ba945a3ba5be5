# Evaluation stage: label every generation, then score the labels against the targets; general
# capabilities (Table 5) and the judge check.


include: "helpers/evaluate.smk"


from distalign.evaluation.judge_server import judge_starts_server

# The LLM judge reads its API key from an environment variable; declare it so Snakemake checks it is
# set and passes it to cluster jobs. Only when a story LLM judge will actually run.
# A judge server started inside the job needs no key (EMPTY is used).
if (
    "story" in config["run"]["tasks"]
    and config["judge"]["story"] in ("llm", "both")
    and not judge_starts_server(config)
):

    envvars:
        config["judge"]["llm"]["api_key_env"],


# Label each generation: keyword parser (attribute task) or story judge(s); invalid answers are kept as null.
rule label:
    input:
        generations=GENERATIONS,
        preflight=preflight_endpoints_marker("label"),
    output:
        labels=LABELS,
    log:
        f"{LOGS}/evaluate/label/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/label/{{dataset}}/{{model}}/{{method}}/{{task}}.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=scaled(60),
    params:
        attribute=attribute_spec,
        judge=judge_params,
    script:
        "../scripts/label.py"


# Score one labels file: per-context MAE/KL/JS, bootstrap CI, noise floor, steering analysis.
rule metrics:
    input:
        labels=LABELS,
        targets=TARGETS,
    output:
        metrics=METRICS,
    log:
        f"{LOGS}/evaluate/metrics/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        attribute=attribute_spec,
        seed=config["seed"],
        metrics=config["metrics"],
        token_set=method_token_set,
    script:
        "../scripts/metrics.py"


# Labels of the validation answers of a validity correction (the same parser/judges as the test run).
use rule label as validity_label with:
    input:
        generations=VALIDITY_GENERATIONS,
        preflight=preflight_endpoints_marker("validity_label"),
    output:
        labels=VALIDITY_LABELS,
    log:
        f"{LOGS}/validity/label/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/validity/label/{{dataset}}/{{model}}/{{method}}/{{task}}.tsv"


use rule label as hint_calibration_label with:
    input:
        generations=HINT_CALIBRATION_GENERATIONS,
        preflight=preflight_endpoints_marker("hint_calibration_label"),
    output:
        labels=HINT_CALIBRATION_LABELS,
    log:
        f"{LOGS}/calibration/label/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/calibration/label/{{dataset}}/{{model}}/{{method}}/{{task}}.tsv"


# Hint calibration: confusion of hint and judged class -> per-context draw weights (an LP).
rule hint_calibration:
    input:
        labels=HINT_CALIBRATION_LABELS,
        targets=TARGETS,
    output:
        weights=HINT_CALIBRATION_WEIGHTS,
    log:
        f"{LOGS}/calibration/weights/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        attribute=attribute_spec,
    script:
        "../scripts/hint_calibration.py"


# Validity correction: valid share per steering token on the validation answers -> draw weights 1 / v_k.
rule validity:
    input:
        labels=VALIDITY_LABELS,
    output:
        weights=VALIDITY_WEIGHTS,
    log:
        f"{LOGS}/validity/weights/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        attribute=attribute_spec,
        token_set=method_token_set,
    script:
        "../scripts/validity.py"


# General capabilities of one (dataset, model, method) after fine-tuning (paper Table 5).
rule capabilities:
    input:
        unpack(capabilities_inputs),
        preflight=preflight_marker("capabilities"),
    output:
        capabilities=CAPABILITIES,
    log:
        f"{LOGS}/evaluate/capabilities/{{dataset}}/{{model}}/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/capabilities/{{dataset}}/{{model}}/{{method}}.tsv"
    conda:
        "../../envs/capabilities.yaml"
    threads: 2
    resources:
        mem_mb=scaled(8000),
        runtime=scaled(240),
        gpu=VLLM_GPUS,
    params:
        settings=capabilities_settings,
    script:
        "../scripts/capabilities.py"


# Not in the paper: how the offline story judge reads stories a person labelled, and the story MAE that costs.
rule judge_check:
    input:
        stories=judge_check_stories,
        targets=TARGETS,
    output:
        check=JUDGE_CHECK,
    log:
        f"{LOGS}/evaluate/judge_check/{{dataset}}.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        attribute=attribute_spec,
        min_words=config["judge"]["story_min_words"],
        seed=config["seed"],
        bootstrap=config["metrics"]["bootstrap"],
    script:
        "../scripts/judge_check.py"
