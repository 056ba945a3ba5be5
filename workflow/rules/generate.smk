# Generation stage: test-set sampling of every method and the internal probe (paper Table 4/12).

# Trained methods read their LoRA adapter; prompting methods use the base model.
TRAINED_KINDS = ("ift", "dpo", "ours")
# vLLM on a CUDA node asks the scheduler for one GPU; the transformers backend and CPU runs do not.
GENERATION_GPUS = int(config["generation"]["backend"] == "vllm" and config["training"]["device"] != "cpu")


def _stage_inputs(wildcards, task):
    inputs = {
        "model": MODEL.format(model=wildcards.model),
        "prompts": PROMPTS.format(dataset=wildcards.dataset, task=task),
        "targets": TARGETS.format(dataset=wildcards.dataset),
        "templates": config["prompts"]["templates"],
    }
    if method_kind(wildcards.method) in TRAINED_KINDS:
        inputs["adapter"] = ADAPTER.format(dataset=wildcards.dataset, model=wildcards.model, method=wildcards.method)
    return inputs


def generation_inputs(wildcards):
    """Model, test prompts of the task, targets, template bank and (trained methods) the adapter."""
    return _stage_inputs(wildcards, wildcards.task)


def probe_inputs(wildcards):
    """As generation_inputs, on the attribute-task prompts (the probe reads the first answer token)."""
    return _stage_inputs(wildcards, "attribute")


def generation_settings(wildcards):
    """generation.* without vllm_python (where vLLM lives does not change the samples)."""
    return {k: v for k, v in config["generation"].items() if k != "vllm_python"}


def steering_placement(wildcards):
    """Where the steering token goes (only methods of kind ours have one; None for the others)."""
    return config["training"]["steering_placement"] if method_kind(wildcards.method) == "ours" else None


# One job per (dataset, model, method, task): samples_per_prompt answers to every test prompt.
rule generate:
    input:
        unpack(generation_inputs),
    output:
        generations=GENERATIONS,
    params:
        method=method_spec,
        attribute=attribute_spec,
        generation=generation_settings,
        placement=steering_placement,
        seed=config["seed"],
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
        gpu=GENERATION_GPUS,
    script:
        "../scripts/generate.py"


# The model's class-token probabilities at the first answer position, without sampling.
rule probe:
    input:
        unpack(probe_inputs),
    output:
        probe=PROBE,
    params:
        method=method_spec,
        attribute=attribute_spec,
        backend=config["generation"]["backend"],
    log:
        f"{LOGS}/generate/probe/{{dataset}}/{{model}}/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/generate/probe/{{dataset}}/{{model}}/{{method}}.tsv"
    conda:
        "../../envs/vllm.yaml"
    threads: 2
    resources:
        mem_mb=scaled(6000),
        runtime=scaled(30),
        gpu=GENERATION_GPUS,
    script:
        "../scripts/probe.py"
