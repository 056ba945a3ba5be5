"""Rules preflight and preflight_endpoints: check what one expensive job needs before it starts."""

import json
import logging

from distalign.core.io import write_json
from distalign.core.scripting import setup_logging, whole_config
from distalign.modeling.preflight import check_endpoint_job, check_model_job, passed_dir_of

log = setup_logging(snakemake.log[0])
for noisy in ("httpx", "openai"):  # one INFO line per HTTP request otherwise
    logging.getLogger(noisy).setLevel(logging.WARNING)
job = snakemake.wildcards.job
if snakemake.rule == "preflight":  # the model checks; preflight_endpoints: endpoints only
    model = snakemake.wildcards.model
    report = check_model_job(
        whole_config(snakemake),
        model,
        snakemake.input.model,
        job,
        cuda_here=bool(int(snakemake.resources.get("cuda_here", 1))),
        passed_dir=passed_dir_of(snakemake.output.marker, job),
    )
else:
    report = check_endpoint_job(whole_config(snakemake), job)
write_json(snakemake.output.marker, report)
log.info("pre-flight checks of %s passed: %s", job, json.dumps(report))
