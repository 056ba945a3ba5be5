"""Rule validity: valid share per steering token on the validation answers, and the draw weights."""

from distalign.core.attributes import Attribute
from distalign.core.io import read_jsonl, write_json
from distalign.core.scripting import setup_logging
from distalign.evaluation.validity import validity_weights

log = setup_logging(snakemake.log[0])
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
out = validity_weights(
    read_jsonl(snakemake.input.labels), attribute, snakemake.params.token_set, source=snakemake.input.labels
)
out["run"] = dict(snakemake.wildcards.items())
write_json(snakemake.output.weights, out)
for name, n, v, rate, w in zip(
    out["classes"], out["n"], out["n_valid"], out["valid_rate"], out["weights"], strict=True
):
    log.info(
        "%s: %d of %d validation answers valid (%s), draw weight %.3f",
        name,
        v,
        n,
        "n/a" if rate is None else f"{rate:.3f}",
        w,
    )
