"""Rule datasets: D_base, SFT and preference rows of one dataset."""

from collections import Counter

from distalign.core.attributes import Attribute
from distalign.core.io import read_jsonl, write_jsonl
from distalign.core.scripting import setup_logging
from distalign.data.datasets import build_base, build_pref, build_sft
from distalign.data.prompts import load_templates
from distalign.data.targets import read_targets_csv

log = setup_logging(snakemake.log[0])
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
bank = load_templates(snakemake.input.templates)
targets = read_targets_csv(snakemake.input.targets, attribute)
prompts = read_jsonl(snakemake.input.prompts)
seed = snakemake.params.seed
base = build_base(prompts, targets, attribute, bank, snakemake.params.data["responses_per_context"], seed)
write_jsonl(snakemake.output.base, base)
write_jsonl(snakemake.output.sft, build_sft(base))
write_jsonl(snakemake.output.pref, build_pref(base, attribute, seed))
counts = Counter(r["class"] for r in base)
log.info(
    "%s: %d base rows over %d contexts; class counts %s",
    snakemake.wildcards.dataset,
    len(base),
    len(targets),
    dict(counts),
)
