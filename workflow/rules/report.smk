# Report stage: the paper's tables and figures by name, from metrics and probe files. Captions are
# workflow/report/<name>.rst, rendered by `snakemake --report` as Jinja2 templates (numbers from the config).


include: "helpers/report.smk"


# The tables that differ only in what they read: (dataset, model, method) rows of `methods` on `task`
# (default attribute) over `datasets` (default run.datasets), scored as `kind` by scripts/table.py.
# What each table reads is set here only; the rules below are the same block with the table's name (not
# a loop: Snakemake's code trigger compares the text of a rule's `script:` line, indentation included, so
# rules defined inside a `for` would rerun every finished table once).
MAE_TABLES = {
    # Table 1: attribute-generation MAE, models x methods x datasets, with the noise floor.
    "table1": dict(kind="mae", methods=TABLE1_METHODS, title="Table 1: attribute generation, MAE"),
    # Table 2: story-generation MAE (race is not used for stories, as in the paper).
    "table2": dict(
        kind="mae",
        task="story",
        datasets=STORY_DATASETS,
        methods=TABLE1_METHODS,
        title="Table 2: story generation, MAE",
    ),
    # Table 3: the ablation (w/o KL, w/o KTO, KTO swapped for DPO).
    "table3": dict(kind="mae", methods=REPORT["ablation_methods"], title="Table 3: ablation, MAE"),
    # Table 4: internal probe, MAE of the class-token probabilities at the first answer position.
    "table4": dict(kind="probe", methods=TABLE1_METHODS, title="Table 4: internal probe (no sampling), MAE"),
    # Table 6: choice of steering tokens (digits, man/woman, he/she).
    "table6": dict(kind="mae", methods=REPORT["token_methods"], title="Table 6: steering-token choice, MAE"),
    # Table 7: trained on UK occupations, tested on the unseen US ones (datasets with adapters_from).
    "table7": dict(
        kind="mae",
        datasets=TRANSFER_DATASETS,
        methods=REPORT["transfer_methods"],
        title="Table 7: trained on UK, tested on US occupations, MAE",
    ),
    # Table 10: MAE with the SD across contexts.
    "table10": dict(kind="sd", methods=TABLE1_METHODS, title="Table 10: MAE ± SD across contexts"),
    # Table 11: MAE with its 95% bootstrap confidence interval.
    "table11": dict(kind="ci", methods=TABLE1_METHODS, title="Table 11: MAE with 95% bootstrap CI"),
}


# Table 1: attribute-generation MAE, models x methods x datasets, with the noise floor.
rule table1:
    input:
        **mae_table_inputs(MAE_TABLES["table1"]),
    output:
        **table_outputs("table1"),
    log:
        f"{LOGS}/report/table1.log",
    conda:
        "../../envs/report.yaml"
    params:
        **mae_table_params(MAE_TABLES["table1"]),
    script:
        "../scripts/table.py"


# Table 2: story-generation MAE (race is not used for stories, as in the paper).
rule table2:
    input:
        **mae_table_inputs(MAE_TABLES["table2"]),
    output:
        **table_outputs("table2"),
    log:
        f"{LOGS}/report/table2.log",
    conda:
        "../../envs/report.yaml"
    params:
        **mae_table_params(MAE_TABLES["table2"]),
    script:
        "../scripts/table.py"


# Table 3: the ablation (w/o KL, w/o KTO, KTO swapped for DPO).
rule table3:
    input:
        **mae_table_inputs(MAE_TABLES["table3"]),
    output:
        **table_outputs("table3"),
    log:
        f"{LOGS}/report/table3.log",
    conda:
        "../../envs/report.yaml"
    params:
        **mae_table_params(MAE_TABLES["table3"]),
    script:
        "../scripts/table.py"


# Table 4: internal probe, MAE of the class-token probabilities at the first answer position.
rule table4:
    input:
        **mae_table_inputs(MAE_TABLES["table4"]),
    output:
        **table_outputs("table4"),
    log:
        f"{LOGS}/report/table4.log",
    conda:
        "../../envs/report.yaml"
    params:
        **mae_table_params(MAE_TABLES["table4"]),
    script:
        "../scripts/table.py"


# Table 6: choice of steering tokens (digits, man/woman, he/she).
rule table6:
    input:
        **mae_table_inputs(MAE_TABLES["table6"]),
    output:
        **table_outputs("table6"),
    log:
        f"{LOGS}/report/table6.log",
    conda:
        "../../envs/report.yaml"
    params:
        **mae_table_params(MAE_TABLES["table6"]),
    script:
        "../scripts/table.py"


# Table 7: trained on UK occupations, tested on the unseen US ones (datasets with adapters_from).
rule table7:
    input:
        **mae_table_inputs(MAE_TABLES["table7"]),
    output:
        **table_outputs("table7"),
    log:
        f"{LOGS}/report/table7.log",
    conda:
        "../../envs/report.yaml"
    params:
        **mae_table_params(MAE_TABLES["table7"]),
    script:
        "../scripts/table.py"


# Table 10: MAE with the SD across contexts.
rule table10:
    input:
        **mae_table_inputs(MAE_TABLES["table10"]),
    output:
        **table_outputs("table10"),
    log:
        f"{LOGS}/report/table10.log",
    conda:
        "../../envs/report.yaml"
    params:
        **mae_table_params(MAE_TABLES["table10"]),
    script:
        "../scripts/table.py"


# Table 11: MAE with its 95% bootstrap confidence interval.
rule table11:
    input:
        **mae_table_inputs(MAE_TABLES["table11"]),
    output:
        **table_outputs("table11"),
    log:
        f"{LOGS}/report/table11.log",
    conda:
        "../../envs/report.yaml"
    params:
        **mae_table_params(MAE_TABLES["table11"]),
    script:
        "../scripts/table.py"


# Table 5: general capabilities after fine-tuning (lm-eval tasks + leak check), paired with the base model.
rule table5:
    input:
        capabilities=[CAPABILITIES.format(**k) for k in capabilities_keys()],
    output:
        **table_outputs("table5"),
    log:
        f"{LOGS}/report/table5.log",
    conda:
        "../../envs/report.yaml"
    params:
        kind="capabilities",
        records=capabilities_keys(),
        methods=CAPS["methods"],
        tasks=CAPS["lm_eval_tasks"],
        seed=config["seed"],
        title="Table 5: general capabilities after fine-tuning",
        report_config=REPORT_CONFIG,
    script:
        "../scripts/table.py"


# Figure 3: share of one class per occupation, census vs each method (US real targets).
rule fig3:
    input:
        metrics=share_figure_keys("fig3")["metrics"],
    output:
        **figure_outputs("fig3"),
    log:
        f"{LOGS}/report/fig3.log",
    conda:
        "../../envs/report.yaml"
    params:
        kind="share",
        records=share_figure_keys("fig3")["records"],
        share_class=REPORT["share_class"],
        title=share_figure_keys("fig3")["title"],
        report_config=REPORT_CONFIG,
    script:
        "../scripts/figure.py"


# Figure 11: as Figure 3 on the UK occupations.
rule fig11:
    input:
        metrics=share_figure_keys("fig11")["metrics"],
    output:
        **figure_outputs("fig11"),
    log:
        f"{LOGS}/report/fig11.log",
    conda:
        "../../envs/report.yaml"
    params:
        kind="share",
        records=share_figure_keys("fig11")["records"],
        share_class=REPORT["share_class"],
        title=share_figure_keys("fig11")["title"],
        report_config=REPORT_CONFIG,
    script:
        "../scripts/figure.py"


# Figure 5: steering-token probability vs generated frequency per context (methods with steering tokens).
rule fig5:
    input:
        metrics=artefact_metrics(STEERING_METHODS),
    output:
        **figure_outputs("fig5"),
    log:
        f"{LOGS}/report/fig5.log",
    conda:
        "../../envs/report.yaml"
    params:
        kind="steering",
        records=artefact_keys(STEERING_METHODS),
        title="Steering-token probability vs generated frequency",
        report_config=REPORT_CONFIG,
    script:
        "../scripts/figure.py"


# Calibration (not in the paper): target vs achieved share per context, with bootstrap error bars.
rule calibration:
    input:
        metrics=artefact_metrics(TABLE1_METHODS),
    output:
        **figure_outputs("calibration"),
    log:
        f"{LOGS}/report/calibration.log",
    conda:
        "../../envs/report.yaml"
    params:
        kind="calibration",
        records=artefact_keys(TABLE1_METHODS),
        share_class=REPORT["share_class"],
        seed=config["seed"],
        title="Calibration: target vs achieved share per context (95% bootstrap CI)",
        report_config=REPORT_CONFIG,
    script:
        "../scripts/figure.py"


# Not in the paper: MAE / noise floor against table5's capability change, one point per method (a Pareto view).
rule capability_tradeoff:
    input:
        metrics=[METRICS.format(**k, task="attribute") for k in capabilities_keys()],
        capabilities=[CAPABILITIES.format(**k) for k in capabilities_keys()],
    output:
        **figure_outputs("capability_tradeoff"),
        csv=f"{FIGURE.format(figure='capability_tradeoff')}.csv",
    log:
        f"{LOGS}/report/capability_tradeoff.log",
    conda:
        "../../envs/report.yaml"
    params:
        kind="tradeoff",
        records=[{**k, "task": "attribute"} for k in capabilities_keys()],
        tasks=CAPS["lm_eval_tasks"],
        seed=config["seed"],
        title=f"Calibration against general capability ({CAPS['dataset']}): MAE / noise floor vs table5's change",
        report_config=REPORT_CONFIG,
    script:
        "../scripts/figure.py"


# Not in the paper: what limits each steering method on each task (calibration, consistency, invalid answers).
rule steering_diagnosis:
    input:
        metrics=steering_diagnosis_metrics(),
        story_summaries=steering_diagnosis_story_summaries(),
    output:
        **table_outputs("steering_diagnosis"),
    log:
        f"{LOGS}/report/steering_diagnosis.log",
    conda:
        "../../envs/report.yaml"
    params:
        kind="steering_diagnosis",
        records=steering_diagnosis_keys(),
        story_data=steering_diagnosis_story_data(),
        title="What limits the steering methods: calibration vs consistency vs invalid answers",
        report_config=REPORT_CONFIG,
    script:
        "../scripts/table.py"


# Not in the paper: the judge checks of the run's story datasets side by side (agreement, faithful MAE, reach).
rule judge_check_table:
    input:
        checks=judge_check_files(),
    output:
        **table_outputs("judge_check"),
    log:
        f"{LOGS}/report/judge_check.log",
    conda:
        "../../envs/report.yaml"
    params:
        kind="judge_check",
        records=[{"dataset": d} for d in JUDGE_CHECK_DATASETS],
        title="How the story judge reads stories a person labelled, and the story MAE it costs",
        report_config=REPORT_CONFIG,
    script:
        "../scripts/table.py"
