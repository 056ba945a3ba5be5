"""Rule prompts: disjoint train/val/test prompts per context for one (dataset, task)."""

from distalign.attributes import Attribute
from distalign.io import write_jsonl
from distalign.prompts import OpenAIParaphraser, build_prompts, load_templates
from distalign.scripting import setup_logging
from distalign.targets import read_targets_csv

log = setup_logging(snakemake.log[0])
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
cfg = snakemake.params.prompts
bank = load_templates(snakemake.input.templates)
targets = read_targets_csv(snakemake.input.targets, attribute)
task = snakemake.wildcards.task
pool_fn = None
if cfg["paraphraser"] == "openai":
    o = cfg["openai"]
    para = OpenAIParaphraser(model=o["model"], base_url=o["base_url"], api_key_env=o["api_key_env"], cache=o["cache"],
                             max_retries=o["max_retries"], timeout=o["timeout"], temperature=o["temperature"])

    def pool_fn(context, seed):
        return para.pool(bank, task, attribute.name, context, sum(cfg["per_split"].values()), seed)

rows = build_prompts(targets, attribute, task, bank, cfg["per_split"], snakemake.params.seed,
                     census_name=snakemake.params.census, pool_fn=pool_fn, progress=True)
write_jsonl(snakemake.output.prompts, rows)
log.info("%s/%s: %d prompts for %d contexts (paraphraser %s)", snakemake.wildcards.dataset, task, len(rows),
         len(targets), cfg["paraphraser"])
if pool_fn is not None:
    log.info("paraphraser requests sent: %d (cache entries: %d)", para.requests_sent, len(para.cache))
