"""Rules fig*/calibration/capability_tradeoff: one figure (PNG + PDF) from metrics (and capabilities) files.

``params.kind`` picks the entry of ``distalign.report.figures.FIGURES``; ``params.report_config`` (from
``distalign.report.tables.report_config(config)``) is the config part the figures read.
"""

from distalign.core.io import atomic_path, read_json
from distalign.core.scripting import setup_logging
from distalign.report.figures import FIGURE_TABLES, figure_kind, save

log = setup_logging(snakemake.log[0])
p = snakemake.params
draw = figure_kind(p.kind)
config = p.report_config
if p.kind == "sweep":  # a sweep's default point is shared by its three knobs: each record names its file
    records = [{**key, "metrics": read_json(key["path"])} for key in p.records]
elif p.kind == "tradeoff":  # table5's rows: each record's metrics and its capabilities
    records = [
        {**key, "metrics": read_json(metrics), "capabilities": read_json(caps)}
        for key, metrics, caps in zip(
            p.records, snakemake.input.metrics, snakemake.input.capabilities, strict=True
        )
    ]
else:
    records = [
        {**key, "metrics": read_json(path)}
        for key, path in zip(p.records, snakemake.input.metrics, strict=True)
    ]
if not records:
    raise ValueError(f"{snakemake.rule}: no metrics to plot (check run.datasets / run.methods / report.*)")
options = {
    "title": p.title,
    "share_class": p.get("share_class"),
    "seed": p.get("seed"),
    "dataset": snakemake.wildcards.get("dataset"),
    "tasks": p.get("tasks"),
}
fig = draw(records, config, options)
if p.kind in FIGURE_TABLES:
    with atomic_path(snakemake.output.csv) as tmp:
        FIGURE_TABLES[p.kind](records, config, options).to_csv(tmp, index=False)
save(fig, snakemake.output.png, snakemake.output.pdf)
log.info("%s from %d metrics files", snakemake.output.png, len(records))
