# Evaluation stage: label every generation, then score the labels against the targets.
from distalign.judge import judge_config
from distalign.serve import judge_starts_server

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
    out = {"story": JUDGE["story"]}
    if JUDGE["story"] in ("llm", "both"):
        llm = JUDGE["llm"]
        out["llm"] = {"model": llm["model"], "max_reasks": llm["max_reasks"], "max_tokens": llm["max_tokens"]}
    return out


def method_token_set(wildcards):
    """Steering token set of a method (None: the attribute's default; only used by the steering analysis)."""
    return config["methods"][wildcards.method].get("token_set")


# Label each generation: keyword parser (attribute task) or story judge(s); invalid answers are kept as null.
rule label:
    input:
        generations=GENERATIONS,
    output:
        labels=LABELS,
    params:
        attribute=attribute_spec,
        judge=judge_params,
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
    script:
        "../scripts/label.py"


# Score one labels file: per-context MAE/KL/JS, bootstrap CI, noise floor, steering analysis.
rule metrics:
    input:
        labels=LABELS,
        targets=TARGETS,
    output:
        metrics=METRICS,
    params:
        attribute=attribute_spec,
        seed=config["seed"],
        metrics=METRICS_CFG,
        token_set=method_token_set,
    log:
        f"{LOGS}/evaluate/metrics/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/metrics.py"
