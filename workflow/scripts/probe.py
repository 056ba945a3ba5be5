"""Rule probe: class-token probabilities at the first answer position (paper Table 4/12), no sampling."""

import json

from distalign.attributes import Attribute
from distalign.generate import load_requests, probe
from distalign.io import write_json
from distalign.prompts import load_templates
from distalign.scripting import setup_logging

log = setup_logging(snakemake.log[0])
w = snakemake.wildcards
config = json.loads(json.dumps(snakemake.config))
config["methods"][w.method] = dict(snakemake.params.method)
config["generation"]["backend"] = snakemake.params.backend
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)

requests = load_requests(snakemake.input.prompts, snakemake.input.targets, load_templates(snakemake.input.templates),
                         attribute, config["methods"][w.method])
result = probe(requests, config=config, dataset=w.dataset, model=w.model, method=w.method,
               model_dir=snakemake.input.model, adapter=snakemake.input.get("adapter"), threads=snakemake.threads)
write_json(snakemake.output.probe, result)
log.info("%s/%s/%s: probe MAE %.4f over %d contexts (%s tokens %s)", w.dataset, w.model, w.method, result["mae"],
         len(result["contexts"]), result["token_kind"], result["class_tokens"])
