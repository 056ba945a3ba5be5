# Generation stage: test-set sampling of every method and the internal probe (paper Table 4/12).


include: "helpers/generate.smk"


# One job per (dataset, model, method, task): samples_per_prompt answers to every test prompt.
rule generate:
    input:
        unpack(generation_inputs),
        preflight=preflight_marker("generate"),
    output:
        generations=GENERATIONS,
    log:
        f"{LOGS}/generate/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/generate/{{dataset}}/{{model}}/{{method}}/{{task}}.tsv"
    conda:
        "../../envs/vllm.yaml"
    threads: 2
    resources:
        mem_mb=scaled(6000),
        runtime=scaled(120),
        gpu=generation_gpus,
    params:
        method=generation_method_spec,
        attribute=attribute_spec,
        generation=generation_settings,
        placement=steering_placement,
        seed=config["seed"],
    script:
        "../scripts/generate.py"


# The model's class-token probabilities at the first answer position, without sampling (Table 4).
rule probe:
    input:
        generations=probe_generations,
    output:
        probe=PROBE,
    log:
        f"{LOGS}/generate/probe/{{dataset}}/{{model}}/{{method}}.log",
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        method=adapter_method_spec,
        attribute=attribute_spec,
    script:
        "../scripts/probe.py"


# Validity correction: the method answers the task's validation prompts (the test prompts stay unseen).
use rule generate as validity_generate with:
    input:
        unpack(validity_generation_inputs),
        preflight=preflight_marker("validity_generate"),
    output:
        generations=VALIDITY_GENERATIONS,
    log:
        f"{LOGS}/validity/generate/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/validity/generate/{{dataset}}/{{model}}/{{method}}/{{task}}.tsv"
    params:
        method=generation_method_spec,
        attribute=attribute_spec,
        generation=generation_settings,
        placement=steering_placement,
        seed=config["seed"],
        split="val",


# Hint calibration: the hinted method answers the validation prompts under every class hint in turn.
use rule generate as hint_calibration_generate with:
    input:
        unpack(hint_calibration_inputs),
        preflight=preflight_marker("hint_calibration_generate"),
    output:
        generations=HINT_CALIBRATION_GENERATIONS,
    log:
        f"{LOGS}/calibration/generate/{{dataset}}/{{model}}/{{method}}/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/calibration/generate/{{dataset}}/{{model}}/{{method}}/{{task}}.tsv"
    params:
        method=generation_method_spec,
        attribute=attribute_spec,
        generation=generation_settings,
        placement=steering_placement,
        seed=config["seed"],
        split="val",
        hint_mode="each",
