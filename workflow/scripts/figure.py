"""Rules fig*/calibration: one figure (PNG + PDF) from metrics files."""

from distalign.figures import calibration_figure, save, share_figure, steering_figure
from distalign.io import read_json
from distalign.scripting import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
records = [{**key, "metrics": read_json(path)} for key, path in zip(p.records, snakemake.input.metrics, strict=True)]
if not records:
    raise ValueError(f"{snakemake.rule}: no metrics to plot (check run.datasets / run.methods / report.*)")
if p.kind == "share":
    fig = share_figure(records, snakemake.config, p.share_class, p.title)
elif p.kind == "steering":
    fig = steering_figure(records, snakemake.config, p.title)
else:
    fig = calibration_figure(records, snakemake.config, p.share_class, p.title, seed=p.seed)
save(fig, snakemake.output.png, snakemake.output.pdf)
log.info("%s from %d metrics files", snakemake.output.png, len(records))
