"""Rule prompts: disjoint train/val/test prompts per context for one (dataset, task)."""

from distalign.core.attributes import Attribute
from distalign.core.io import write_jsonl
from distalign.core.progress import Progress
from distalign.core.scripting import setup_logging
from distalign.data.prompts import OpenAIParaphraser, build_prompts, load_templates
from distalign.data.targets import read_targets_csv

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
    para = OpenAIParaphraser(
        model=o["model"],
        base_url=o["base_url"],
        api_key_env=o["api_key_env"],
        cache=o["cache"],
        max_retries=o["max_retries"],
        timeout=o["timeout"],
        temperature=o["temperature"],
    )

    # one context's paraphrases take several requests: a progress line (contexts done, requests sent)
    # at most every 30 s and at the end, in the log file and on the console
    progress = Progress(
        len(targets), f"prompts {snakemake.wildcards.dataset}/{task}: paraphrasing", log, unit="context"
    )

    def pool_fn(context, seed):
        pool = para.pool(bank, task, attribute.name, context, sum(cfg["per_split"].values()), seed)
        progress.detail = f"{para.requests_sent} requests sent"
        progress.update(1)
        return pool


# the offline paraphraser takes a second: no progress; tqdm's bar would reach the console only
rows = build_prompts(
    targets,
    attribute,
    task,
    bank,
    cfg["per_split"],
    snakemake.params.seed,
    census_name=snakemake.params.census,
    pool_fn=pool_fn,
    progress=False,
)
write_jsonl(snakemake.output.prompts, rows)
log.info(
    "%s/%s: %d prompts for %d contexts (paraphraser %s)",
    snakemake.wildcards.dataset,
    task,
    len(rows),
    len(targets),
    cfg["paraphraser"],
)
if pool_fn is not None:
    log.info("paraphraser requests sent: %d (cache entries: %d)", para.requests_sent, len(para.cache))
