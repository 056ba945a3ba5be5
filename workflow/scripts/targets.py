"""Rule targets: per-context target distributions of one dataset."""

from distalign.core.attributes import Attribute
from distalign.core.scripting import setup_logging
from distalign.data.targets import build_targets, load_census, write_targets_csv

log = setup_logging(snakemake.log[0])
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
census = load_census(snakemake.input.census)
rows = build_targets(
    census,
    attribute,
    snakemake.params.dataset["target"],
    round_even=snakemake.params.round_even,
    census_name=str(snakemake.input.census),
)
write_targets_csv(snakemake.output.targets, rows, attribute)
log.info("%s: %d contexts, classes %s", snakemake.wildcards.dataset, len(rows), attribute.names)
