"""Rule generate: sample answers to every test prompt for one (dataset, model, method, task)."""

import json

from distalign.attributes import Attribute
from distalign.generate import generate, load_requests
from distalign.io import write_jsonl
from distalign.prompts import load_templates
from distalign.scripting import setup_logging

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

requests = load_requests(snakemake.input.prompts, snakemake.input.targets, load_templates(snakemake.input.templates),
                         attribute, config["methods"][w.method])
log.info("%s/%s/%s/%s: %d test prompts x %d samples, backend %s", w.dataset, w.model, w.method, w.task,
         len(requests), config["generation"]["samples_per_prompt"], config["generation"]["backend"])
rows = generate(requests, config=config, dataset=w.dataset, model=w.model, method=w.method, task=w.task,
                model_dir=snakemake.input.model, adapter=snakemake.input.get("adapter"), threads=snakemake.threads)
write_jsonl(snakemake.output.generations, rows)
log.info("wrote %d rows to %s", len(rows), snakemake.output.generations)
