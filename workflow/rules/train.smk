# Rule `train`: LoRA fine-tuning (IFT, DPO, ours and its ablations) with trl; see distalign.training.runner.


include: "helpers/train.smk"


# One LoRA adapter per (dataset, model, method); resumes from {output}.work/ checkpoints when restarted.
rule train:
    input:
        unpack(train_init_adapter),
        unpack(train_story_data),
        unpack(train_replay_instructions),
        model=MODEL,
        sft=SFT,
        pref=PREF,
        preflight=preflight_marker("train"),
    output:
        adapter=directory(ADAPTER),
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
    params:
        method=train_params,
        attribute=attribute_spec,
        seed=config["seed"],
    script:
        "../scripts/train.py"
