"""Rules fig*/calibration: one figure (PNG + PDF) from metrics files."""

from distalign.figures import (
    calibration_figure,
    save,
    share_figure,
    steering_figure,
    sweep_figure,
    sweep_points,
)
from distalign.io import atomic_path, read_json
from distalign.scripting import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
if p.kind == "sweep":  # a sweep's default point is shared by its three knobs: each record names its file
    records = [{**key, "metrics": read_json(key["path"])} for key in p.records]
else:
    records = [{**key, "metrics": read_json(path)} for key, path in zip(p.records, snakemake.input.metrics, strict=True)]
if not records:
    raise ValueError(f"{snakemake.rule}: no metrics to plot (check run.datasets / run.methods / report.*)")
if p.kind == "share":
    fig = share_figure(records, snakemake.config, p.share_class, p.title)
elif p.kind == "sweep":
    fig = sweep_figure(records, snakemake.config, f"{p.title}: {snakemake.wildcards.dataset}")
    with atomic_path(snakemake.output.csv) as tmp:
        sweep_points(records, snakemake.config).to_csv(tmp, index=False)
elif p.kind == "steering":
    fig = steering_figure(records, snakemake.config, p.title)
else:
    fig = calibration_figure(records, snakemake.config, p.share_class, p.title, seed=p.seed)
save(fig, snakemake.output.png, snakemake.output.pdf)
log.info("%s from %d metrics files", snakemake.output.png, len(records))
