"""Rule prepare_model: convert the embedded GGUF once, or resolve a hub id / local folder."""

import time

from distalign.core.scripting import setup_logging
from distalign.modeling.models import prepare_model

log = setup_logging(snakemake.log[0])
t0 = time.perf_counter()
meta = prepare_model(snakemake.wildcards.model, dict(snakemake.params.spec), snakemake.output.model)
log.info(
    "prepared model %s (%s) in %.1f s", snakemake.wildcards.model, meta["source"], time.perf_counter() - t0
)
