"""Rule generate: sample answers to every test prompt for one (dataset, model, method, task)."""

from distalign.core.attributes import Attribute
from distalign.core.config import GenerationSpec
from distalign.core.io import read_json, write_jsonl
from distalign.core.scripting import api_call_settings, operational, setup_logging
from distalign.data.prompts import load_templates
from distalign.evaluation.validity import read_weights
from distalign.generation.job import load_requests
from distalign.generation.runner import generate

log = setup_logging(snakemake.log[0])
w, p = snakemake.wildcards, snakemake.params
spec = GenerationSpec.from_params(
    w.method,
    p.method,
    p.generation,
    p.attribute,
    p.seed,
    placement=p.placement,
    device=operational(snakemake, "training.device"),
    vllm_python=operational(snakemake, "generation.vllm_python"),
    endpoint=api_call_settings(snakemake, w.model),
    api_cache=operational(snakemake, "generation.api_cache"),
)
attribute = Attribute.from_config(spec.attribute_name, spec.attribute)

split = p.get("split", "test")  # validity_generate answers the validation prompts
requests = load_requests(
    snakemake.input.prompts,
    snakemake.input.targets,
    load_templates(snakemake.input.templates),
    attribute,
    spec.spec,
    split=split,
)
hint_weights = None
if snakemake.input.get("hint_weights"):  # a calibrated hinted method: per-context draw weights
    calibration = read_json(snakemake.input.hint_weights)
    hint_weights = calibration["weights"]
    log.info(
        "hint calibration %s: follow rate per hint %s, expected MAE %.4f",
        snakemake.input.hint_weights,
        dict(zip(calibration["classes"], [round(x, 3) for x in calibration["follow_rate"]], strict=True)),
        calibration["expected_mae"],
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
    spec.generation["samples_per_prompt"],
    "openai" if spec.endpoint is not None else spec.generation["backend"],
)
rows = generate(
    requests,
    spec=spec,
    dataset=w.dataset,
    model=w.model,
    task=w.task,
    model_dir=snakemake.input.model,
    adapter=snakemake.input.get("adapter"),
    threads=snakemake.threads,
    token_weights=weights,
    hint_weights=hint_weights,
    hint_mode=p.get("hint_mode", "draw"),
)
write_jsonl(snakemake.output.generations, rows)
log.info("wrote %d rows to %s", len(rows), snakemake.output.generations)
