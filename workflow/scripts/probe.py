"""Rule probe: class-token probabilities at the first answer position (paper Table 4/12), no sampling.

The generate job records, for every test prompt, the full-vocabulary log-probs of the class tokens at
the first answer position (steering tokens for methods of kind ours, the first token of each class
label otherwise), computed from the raw logits before any sampling. This rule aggregates them.
"""

from distalign.core.attributes import Attribute
from distalign.core.io import read_jsonl, write_json
from distalign.core.scripting import setup_logging
from distalign.evaluation.probe import probe_from_generations

log = setup_logging(snakemake.log[0])
w = snakemake.wildcards
method = snakemake.params.method
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
tokens = attribute.steering_tokens(method.get("token_set")) if method["kind"] == "ours" else attribute.labels
result = probe_from_generations(read_jsonl(snakemake.input.generations), attribute, tokens)
write_json(snakemake.output.probe, result)
log.info(
    "%s/%s/%s: probe MAE %.4f over %d contexts (%s tokens %s)",
    w.dataset,
    w.model,
    w.method,
    result["mae"],
    len(result["contexts"]),
    result["token_kind"],
    result["class_tokens"],
)
