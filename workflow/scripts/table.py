"""Rules table*: one paper table (CSV + Markdown twin) from metrics or probe files.

``params.kind`` picks the entry of ``distalign.report.tables.TABLES``; ``params.report_config`` (from
``distalign.report.tables.report_config(config)``) is the config part the tables read.
"""

from distalign.core.io import read_json
from distalign.core.scripting import setup_logging
from distalign.report.tables import table_kind, table_models, write_table

log = setup_logging(snakemake.log[0])
p = snakemake.params
kind = table_kind(p.kind)
config = p.report_config
records = [
    {**key, kind.field: read_json(path)}
    for key, path in zip(p.records, snakemake.input[kind.inputs], strict=True)
]
options = {
    "datasets": p.get("datasets"),
    "methods": p.get("methods"),
    "models": table_models(p.records, config),
    "task": p.get("task", "attribute"),
    "tasks": p.get("tasks"),
    "seed": p.get("seed"),
}
if p.kind == "steering_diagnosis":
    options["hint_reach"] = {
        (k["dataset"], k["model"]): read_json(path).get("hint_reach")
        for k, path in zip(p.story_data, snakemake.input.story_summaries, strict=True)
    }
df = kind.build(records, config, options)
write_table(df, snakemake.output.csv, snakemake.output.md, title=p.title)
log.info("%s: %d rows from %d files", snakemake.output.csv, len(df), len(records))
