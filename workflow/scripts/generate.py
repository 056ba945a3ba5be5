"""Rule generate: sample answers to every test prompt for one (dataset, model, method, task)."""

import json

from distalign.core.attributes import Attribute
from distalign.core.io import read_json, write_jsonl
from distalign.core.scripting import setup_logging
from distalign.data.prompts import load_templates
from distalign.generation.job import load_requests
from distalign.generation.runner import generate
from distalign.generation.validity import read_weights

log = setup_logging(snakemake.log[0])
w = snakemake.wildcards
# The rule's params are what the results depend on; they take precedence over the global config.
config = json.loads(json.dumps(snakemake.config))
config["seed"] = snakemake.params.seed
config["generation"].update(dict(snakemake.params.generation))
config["methods"][w.method] = dict(snakemake.params.method)
if snakemake.params.placement:
    config["training"]["steering_placement"] = snakemake.params.placement
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)

split = snakemake.params.get("split", "test")  # validity_generate answers the validation prompts
requests = load_requests(
    snakemake.input.prompts,
    snakemake.input.targets,
    load_templates(snakemake.input.templates),
    attribute,
    config["methods"][w.method],
    split=split,
)
weights = None
if snakemake.input.get("validity"):
    weights = read_weights(read_json(snakemake.input.validity), attribute, snakemake.input.validity)
    log.info(
        "validity correction: steering draw weights %s (%s)",
        [round(x, 3) for x in weights],
        snakemake.input.validity,
    )
log.info(
    "%s/%s/%s/%s: %d %s prompts x %d samples, backend %s",
    w.dataset,
    w.model,
    w.method,
    w.task,
    len(requests),
    split,
    config["generation"]["samples_per_prompt"],
    config["generation"]["backend"],
)
rows = generate(
    requests,
    config=config,
    dataset=w.dataset,
    model=w.model,
    method=w.method,
    task=w.task,
    model_dir=snakemake.input.model,
    adapter=snakemake.input.get("adapter"),
    threads=snakemake.threads,
    token_weights=weights,
)
write_jsonl(snakemake.output.generations, rows)
log.info("wrote %d rows to %s", len(rows), snakemake.output.generations)
