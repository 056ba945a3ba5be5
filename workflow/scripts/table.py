"""Rules table*: one paper table (CSV + Markdown twin) from metrics or probe files."""

from distalign.io import read_json
from distalign.scripting import setup_logging
from distalign.tables import (
    capabilities_table,
    judge_check_table,
    mae_table,
    probe_table,
    steering_diagnosis_table,
    write_table,
)

log = setup_logging(snakemake.log[0])
p = snakemake.params
inputs = {"probe": "probes", "capabilities": "capabilities", "judge_check": "checks"}.get(p.kind, "metrics")
paths = snakemake.input[inputs]
field = {"probe": "probe", "capabilities": "capabilities", "judge_check": "check"}.get(p.kind, "metrics")
records = [{**key, field: read_json(path)} for key, path in zip(p.records, paths, strict=True)]
models = list(dict.fromkeys(k["model"] for k in p.records if "model" in k)) or list(snakemake.config["run"]["models"])
if p.kind == "judge_check":
    df = judge_check_table(records, snakemake.config)
elif p.kind == "steering_diagnosis":
    reach = {(k["dataset"], k["model"]): read_json(path).get("hint_reach")
             for k, path in zip(p.story_data, snakemake.input.story_summaries, strict=True)}
    df = steering_diagnosis_table(records, snakemake.config, hint_reach=reach)
elif p.kind == "capabilities":
    df = capabilities_table(records, snakemake.config, models=models, methods=p.methods)
elif p.kind == "probe":
    df = probe_table(records, snakemake.config, datasets=p.datasets, models=models, methods=p.methods)
else:
    df = mae_table(records, snakemake.config, datasets=p.datasets, models=models, methods=p.methods,
                   task=p.get("task", "attribute"), stat=p.kind)
write_table(df, snakemake.output.csv, snakemake.output.md, title=p.title)
log.info("%s: %d rows from %d files", snakemake.output.csv, len(df), len(records))
