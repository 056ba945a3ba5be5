"""Rule capabilities: general capabilities of one (dataset, model, method) after fine-tuning (Table 5)."""

import torch

from distalign.core.io import write_json
from distalign.core.scripting import operational, setup_logging
from distalign.evaluation.capabilities import evaluate_lm_eval
from distalign.generation.job import Sampling
from distalign.modeling.models import read_pointer, resolve_device

log = setup_logging(snakemake.log[0])
torch.set_num_threads(max(1, int(snakemake.threads)))
caps = snakemake.params.settings  # tasks, limit, extra task folders, and the leak check's settings
adapter = snakemake.input.get("adapter")
device = resolve_device(operational(snakemake, "training.device"))
leak = None
if caps.get("leak"):
    lk = caps["leak"]
    leak = {
        "instructions": snakemake.input.instructions,
        "sampling": Sampling(**lk["sampling"]),
        "seed": lk["seed"],
        "steering_tokens": lk["steering_tokens"],
        "class_words": lk["class_words"],
        "min_words": lk["min_words"],
    }
out = evaluate_lm_eval(
    snakemake.input.model,
    adapter,
    caps["lm_eval_tasks"],
    limit=caps["lm_eval_limit"],
    batch_size=operational(snakemake, "capabilities.lm_eval_batch_size"),
    device=device,
    dtype=read_pointer(snakemake.input.model).get("dtype", "bfloat16"),
    include=caps.get("lm_eval_include") or (),
    leak=leak,
)
out["run"] = dict(snakemake.wildcards.items())
out["adapter"] = adapter
write_json(snakemake.output.capabilities, out)
log.info(
    "%s: %s; leak share %s",
    snakemake.output.capabilities,
    out["tasks"],
    None if out["leak"] is None else round(out["leak"]["share"], 4),
)
