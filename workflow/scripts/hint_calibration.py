"""Rule hint_calibration: the hint -> judged-class confusion on the validation answers, and per
context the draw weights whose mixture is closest to the target (distalign.evaluation.calibration)."""

from distalign.core.attributes import Attribute
from distalign.core.io import read_jsonl, write_json
from distalign.core.scripting import setup_logging
from distalign.data.targets import read_targets_csv
from distalign.evaluation.calibration import hint_calibration

log = setup_logging(snakemake.log[0])
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
out = hint_calibration(
    read_jsonl(snakemake.input.labels),
    read_targets_csv(snakemake.input.targets, attribute),
    attribute,
    source=snakemake.input.labels,
)
out["run"] = dict(snakemake.wildcards.items())
write_json(snakemake.output.weights, out)
for name, n, bad, rate in zip(
    out["classes"], out["n_valid"], out["n_invalid"], out["follow_rate"], strict=True
):
    log.info("hint %s: %d valid answers (%d invalid), judged as asked %.3f", name, n, bad, rate)
log.info(
    "expected MAE of the calibrated draw: %.4f (mean over %d contexts)",
    out["expected_mae"],
    len(out["weights"]),
)
