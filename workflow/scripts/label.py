"""Rule label: attach a class label (or null, with the reason) to every generation of one file."""

import logging
import sys
import time
from collections import Counter
from pathlib import Path

from distalign.core.attributes import Attribute
from distalign.core.config import judge_config
from distalign.core.io import read_jsonl, write_jsonl
from distalign.core.scripting import operational, setup_logging
from distalign.evaluation.judge_server import judge_endpoint
from distalign.evaluation.judges import judges_for, label_generations
from distalign.generation.job import GenerationError
from distalign.generation.vllm_backend import resolve_vllm_python, vllm_importable


def vllm_python():
    """Interpreter for a judge server: this one if it has vLLM, else the vLLM env, else None."""
    if vllm_importable():
        return sys.executable
    try:
        return resolve_vllm_python(operational(snakemake, "generation.vllm_python"))
    except GenerationError:
        return None


log = setup_logging(snakemake.log[0])
for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request otherwise
    logging.getLogger(noisy).setLevel(logging.WARNING)
attr_spec = dict(snakemake.params.attribute)
attribute = Attribute.from_config(attr_spec.pop("name"), attr_spec)
task = snakemake.wildcards.task
# Operational LLM settings (endpoint, retries, timeout, concurrency) are not params: they do not
# change labels, so they trigger no rerun. The params (what changes labels) take precedence.
judge = dict(snakemake.params.judge)
llm = {**operational(snakemake, "judge.llm"), **judge.get("llm", {})}
jcfg = judge_config({"judge": {**judge, "llm": llm, "serve": operational(snakemake, "judge.serve")}})
rows = read_jsonl(snakemake.input.generations)
t0 = time.perf_counter()
# With an LLM story judge and no external endpoint, a vLLM server is started on this node for the
# duration of the job (distalign.evaluation.judge_server.judge_endpoint); otherwise the configured endpoint is used.
# Decision: the server's own output goes beside the job's log (<log stem>.judge-server.log), not to a
# temporary file: on a cluster the node's /tmp is gone when the job ends, and the path is in every error.
job_log = Path(snakemake.log[0])
server_log = job_log.with_name(f"{job_log.stem}.judge-server.log")
with judge_endpoint(jcfg if task == "story" else {}, python=vllm_python(), log_path=server_log) as llm:
    judges, primary = judges_for(attribute, task, {**jcfg, "llm": llm} if llm else jcfg)
    labelled = label_generations(
        rows,
        attribute,
        task,
        judges,
        primary,
        story_min_words=int(snakemake.params.judge.get("story_min_words", 0)),
    )
write_jsonl(snakemake.output.labels, labelled)
reasons = Counter(r["label_reason"] for r in labelled)
log.info(
    "%s: %d rows, judges %s (primary %s), %.1f s; reasons %s",
    snakemake.input.generations,
    len(labelled),
    list(judges),
    primary,
    time.perf_counter() - t0,
    dict(reasons),
)
if "llm" in judges:
    log.info("LLM judge requests: %s", dict(judges["llm"].stats))
