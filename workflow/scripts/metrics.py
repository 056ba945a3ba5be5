"""Rule metrics: MAE, KL, JS, bootstrap CI, noise floor and steering analysis of one labels file."""

from distalign.core.attributes import Attribute
from distalign.core.io import read_jsonl, write_json
from distalign.core.scripting import setup_logging
from distalign.data.targets import read_targets_csv
from distalign.evaluation.metrics import compute_metrics

log = setup_logging(snakemake.log[0])
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
targets = read_targets_csv(snakemake.input.targets, attribute)
rows = read_jsonl(snakemake.input.labels)
m = snakemake.params.metrics
out = compute_metrics(
    rows,
    targets,
    attribute,
    seed=snakemake.params.seed,
    bootstrap=m["bootstrap"],
    two_level=m["two_level"],
    noise_floor_draws=m["noise_floor_draws"],
    token_set=snakemake.params.token_set,
)
out["run"] = dict(snakemake.wildcards.items())
write_json(snakemake.output.metrics, out)
s = out["summary"]
log.info(
    "%s: MAE %.4f [%.4f, %.4f] (SD %.4f), noise floor %s, invalid %d/%d",
    snakemake.output.metrics,
    s["mae"],
    s["mae_ci_low"] or float("nan"),
    s["mae_ci_high"] or float("nan"),
    s["mae_sd"],
    s["noise_floor"],
    s["n_invalid"],
    s["n_total"],
)
