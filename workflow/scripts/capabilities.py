"""Rule capabilities: general capabilities of one (dataset, model, method) after fine-tuning (Table 5)."""

import torch

from distalign.core.io import write_json
from distalign.core.scripting import operational, setup_logging
from distalign.evaluation.capabilities import evaluate_lm_eval, evaluate_local
from distalign.modeling.models import read_pointer, resolve_device

log = setup_logging(snakemake.log[0])
torch.set_num_threads(max(1, int(snakemake.threads)))
caps = snakemake.params.settings  # backend, and for lm-eval its tasks, limit and extra task folders
adapter = snakemake.input.get("adapter")
device = resolve_device(operational(snakemake, "training.device"))
if caps["backend"] == "local":
    out = evaluate_local(
        snakemake.input.model,
        adapter,
        snakemake.input.heldout,
        snakemake.input.multiple_choice,
        device=device,
    )
else:
    dtype = read_pointer(snakemake.input.model).get("dtype", "bfloat16")
    out = evaluate_lm_eval(
        snakemake.input.model,
        adapter,
        caps["lm_eval_tasks"],
        limit=caps["lm_eval_limit"],
        batch_size=operational(snakemake, "capabilities.lm_eval_batch_size"),
        device=device,
        dtype=dtype,
        include=caps.get("lm_eval_include") or (),
    )
out["run"] = dict(snakemake.wildcards.items())
out["adapter"] = adapter
write_json(snakemake.output.capabilities, out)
log.info(
    "%s: %s",
    snakemake.output.capabilities,
    {k: v for k, v in out.items() if k in ("perplexity", "multiple_choice", "tasks")},
)
