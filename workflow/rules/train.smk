# Rule `train`: LoRA fine-tuning (IFT, DPO, ours and its ablations) with trl; see distalign.train.
from distalign.config import method_training
from distalign.train import first_method_of_kind


def train_init_adapter(wildcards):
    """DPO continues the IFT adapter of the same (dataset, model): the first method of kind ift."""
    if config["methods"][wildcards.method]["kind"] != "dpo":
        return {}
    ift = first_method_of_kind(config, "ift")
    return {"init_adapter": ADAPTER.format(dataset=wildcards.dataset, model=wildcards.model, method=ift)}


def train_params(wildcards):
    """Only what changes the result: the method spec and its resolved training section."""
    return {"spec": config["methods"][wildcards.method],
            "training": method_training(config, wildcards.method)}


def train_uses_gpu(wildcards):
    return 0 if method_training(config, wildcards.method)["device"] == "cpu" else 1


# One LoRA adapter per (dataset, model, method); resumes from {output}.work/ checkpoints when restarted.
rule train:
    input:
        unpack(train_init_adapter),
        model=MODEL,
        sft=SFT,
        pref=PREF,
    output:
        adapter=directory(ADAPTER),
    params:
        method=train_params,
    log:
        f"{LOGS}/train/{{dataset}}/{{model}}/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{dataset}}/{{model}}/{{method}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=scaled(8000),
        runtime=scaled(240),
        gpu=train_uses_gpu,
    script:
        "../scripts/train.py"
