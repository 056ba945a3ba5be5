# Data stage: model preparation, census targets, prompts and training datasets.


include: "helpers/data.smk"


# API keys come only from the environment; declaring them makes Snakemake check they are set
# before any job runs and pass them to cluster jobs.
if config["prompts"]["paraphraser"] == "openai":

    envvars:
        config["prompts"]["openai"]["api_key_env"],


# Convert/resolve each model once so every later rule loads one folder quickly.
rule prepare_model:
    output:
        model=directory(MODEL),
    log:
        f"{LOGS}/prepare_model/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare_model/{{model}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
    params:
        spec=model_spec,
    script:
        "../scripts/prepare_model.py"


# Per-context target distributions P*(a|c) from the census (real) or uniform (even).
rule targets:
    input:
        census=census_path,
    output:
        targets=TARGETS,
    log:
        f"{LOGS}/targets/{{dataset}}.log",
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        dataset=dataset_spec,
        attribute=attribute_spec,
        round_even=config["targets"]["round_even"],
    script:
        "../scripts/targets.py"


# Disjoint train/val/test prompts per context, paraphrased offline or through an endpoint.
rule prompts:
    input:
        templates=config["prompts"]["templates"],
        targets=TARGETS,
        preflight=preflight_endpoints_marker("prompts"),
    output:
        prompts=PROMPTS,
    log:
        f"{LOGS}/prompts/{{dataset}}/{{task}}.log",
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        attribute=attribute_spec,
        census=census_name,
        prompts=config["prompts"],
        seed=config["seed"],
    script:
        "../scripts/prompts.py"


# D_base (class counts by largest remainder), SFT rows and preference pairs (paper section 3.3).
rule datasets:
    input:
        templates=config["prompts"]["templates"],
        prompts=training_prompts,
        targets=TARGETS,
    output:
        base=BASE,
        sft=SFT,
        pref=PREF,
    log:
        f"{LOGS}/datasets/{{dataset}}.log",
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        attribute=attribute_spec,
        data=config["data"],
        seed=config["seed"],
    script:
        "../scripts/datasets.py"


# D_story: hinted stories of the base model labelled by the story judge, written in rounds until every class has its quota.
rule story_data:
    input:
        model=MODEL,
        prompts=story_training_prompts,
        targets=TARGETS,
        preflight=preflight_marker("story_data"),
    output:
        stories=STORY_DATA,
        summary=STORY_SUMMARY,
    log:
        f"{LOGS}/story_data/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/story_data/{{dataset}}/{{model}}.tsv"
    conda:
        "../../envs/vllm.yaml"
    threads: 2
    resources:
        mem_mb=scaled(6000),
        runtime=scaled(120),
        gpu=VLLM_GPUS,
    params:
        attribute=attribute_spec,
        hints=story_hints,
        story_data=config["story_data"],
        min_words=config["judge"]["story_min_words"],
        generation=generation_settings,
        seed=config["seed"],
    script:
        "../scripts/story_data.py"
