# Decoding sensitivity (paper Figures 4 and 6-10): the attribute task re-sampled with one knob changed.
# The jobs are the generate/label/metrics rules with other paths and sampling.


include: "helpers/sweep.smk"


# One point of a sweep: every test prompt sampled with {knob}={value}, run {rep} (its own seed).
use rule generate as sweep_generate with:
    output:
        generations=SWEEP_GENERATIONS,
    log:
        f"{LOGS}/sweeps/generate/{{dataset}}/{{model}}/{{method}}/{{task}}/{{knob}}-{{value}}/seed{{rep}}.log",
    benchmark:
        f"{BENCHMARKS}/sweeps/generate/{{dataset}}/{{model}}/{{method}}/{{task}}/{{knob}}-{{value}}/seed{{rep}}.tsv"
    params:
        method=generation_method_spec,
        attribute=attribute_spec,
        generation=sweep_generation_settings,
        placement=steering_placement,
        seed=sweep_seed,


# Labels of one sweep point (the same parser/judges as the main run).
use rule label as sweep_label with:
    input:
        generations=SWEEP_GENERATIONS,
        preflight=preflight_endpoints_marker("sweep_label"),
    output:
        labels=SWEEP_LABELS,
    log:
        f"{LOGS}/sweeps/label/{{dataset}}/{{model}}/{{method}}/{{task}}/{{knob}}-{{value}}/seed{{rep}}.log",
    benchmark:
        f"{BENCHMARKS}/sweeps/label/{{dataset}}/{{model}}/{{method}}/{{task}}/{{knob}}-{{value}}/seed{{rep}}.tsv"


# Metrics of one sweep point.
use rule metrics as sweep_metrics with:
    input:
        labels=SWEEP_LABELS,
        targets=TARGETS,
    output:
        metrics=SWEEP_METRICS,
    log:
        f"{LOGS}/sweeps/metrics/{{dataset}}/{{model}}/{{method}}/{{task}}/{{knob}}-{{value}}/seed{{rep}}.log",


# Figure 4 (and 6-10): MAE vs top-p, top-k and temperature for one dataset, with the points as CSV.
rule fig4:
    input:
        metrics=sweep_metrics,
    output:
        png=report(
            f"{FIGURE.format(figure='fig4-{dataset}')}.png", caption="../report/fig4.rst", category="Figures"
        ),
        pdf=f"{FIGURE.format(figure='fig4-{dataset}')}.pdf",
        csv=f"{FIGURE.format(figure='fig4-{dataset}')}.csv",
    log:
        f"{LOGS}/report/fig4-{{dataset}}.log",
    conda:
        "../../envs/report.yaml"
    params:
        kind="sweep",
        records=sweep_records,
        title="MAE vs decoding settings (mean ± SD over runs)",
        report_config=report_config(config),
    script:
        "../scripts/figure.py"
