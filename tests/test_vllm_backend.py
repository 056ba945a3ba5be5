"""vLLM backend against the transformers backend on the embedded model (needs .venv-vllm; ~3 min).

Each vLLM call runs ``python -m distalign.generation.vllm_worker`` in .venv-vllm (engine load ~25-50 s), so
the checks are grouped into three worker runs: the base-model steering distribution, and a
two-step generation with a LoRA adapter, twice (reproducibility with a fixed seed).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from distalign.core.config import GenerationSpec

VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

if not VLLM_PYTHON.exists() and importlib.util.find_spec("vllm") is None:
    reason = f"vLLM environment missing: {VLLM_PYTHON} does not exist and this Python cannot import vllm"
    print(f"SKIP test_vllm_backend.py: {reason}")
    pytestmark.append(pytest.mark.skip(reason=reason))

STEERING = ["0", "1", "2", "3", "4"]
PROMPTS = [
    "What is the gender of a nurse? Answer Male or Female.",
    'Picture one worker from the group "Plumbers". Is this person male or female?',
    "What is the racial background of a software developer?",
    "How would you describe the mood of a teacher?",
]


def _requests():
    return [
        {
            "context_id": i // 2,
            "context": f"ctx{i // 2}",
            "prompt_id": f"test-{i // 2}-{i}",
            "prompt": p,
            "target": [0.5, 0.5],
        }
        for i, p in enumerate(PROMPTS)
    ]


def _transformers_probs(model_dir, adapter, requests):
    from distalign.generation.sampling import restricted_probs
    from distalign.generation.transformers_backend import TransformersBackend
    from distalign.modeling.chat import prompt_ids

    b = TransformersBackend(model_dir, adapter=adapter, device="cpu", threads=2)
    ids = b.tokenizer.convert_tokens_to_ids(STEERING)
    lps = b.next_token_logprobs([prompt_ids(b.tokenizer, r["prompt"]) for r in requests], ids)
    return [restricted_probs(lp) for lp in lps]


@pytest.fixture(scope="module")
def adapter(embedded_model_dir, tmp_path_factory):
    """A non-trivial random LoRA adapter (r=8, q/k/v/o) on the embedded model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "lora_B" in name:
                w.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("adapter") / "ours"
    model.save_pretrained(out)
    return out


def test_steering_distribution_agrees_base_model(embedded_model_dir, config):
    from distalign.generation.job import make_job
    from distalign.generation.runner import execute

    reqs = _requests()
    config["generation"].update(samples_per_prompt=1, max_new_tokens={"attribute": 1, "story": 1})
    job = make_job(
        reqs,
        spec=GenerationSpec.from_config(config, "race-even", "zero-shot"),
        dataset="race-even",
        model="smollm2-135m-instruct",
        task="attribute",
        model_dir=embedded_model_dir,
        backend="vllm",
    )
    job = dataclasses.replace(job, steering_tokens=STEERING, class_tokens=STEERING)
    got = execute(job)
    want = _transformers_probs(embedded_model_dir, None, reqs)
    for g, w in zip(got, want, strict=True):
        assert g["probe_token_ids"] == [32, 33, 34, 35, 36]
        assert max(abs(a - b) for a, b in zip(g["steering_probs"], w, strict=True)) < 1e-3, (
            g["steering_probs"],
            w,
        )


@pytest.mark.parametrize("vllm_lora", ["merge", "request"])
def test_two_step_with_adapter_agrees_and_is_reproducible(
    embedded_model_dir, adapter, config, vllm_lora, script_logging
):
    """LoRA through vLLM: merged into the weights (the CPU default) and as a LoRARequest (the GPU path).

    The first run also checks the job's output: the worker's progress lines reach the console and the
    log file, vLLM's own lines the log file only."""
    from distalign.generation.runner import generate

    config["generation"].update(
        samples_per_prompt=2, max_new_tokens={"attribute": 8, "story": 8}, vllm_lora=vllm_lora
    )
    kw = dict(
        spec=GenerationSpec.from_config(config, "race-even", "ours"),
        dataset="race-even",
        model="smollm2-135m-instruct",
        task="attribute",
        model_dir=embedded_model_dir,
        adapter=adapter,
        backend="vllm",
    )
    reqs = _requests()
    first = generate(reqs, **kw)
    console, logfile = script_logging()
    label = "generate race-even/smollm2-135m-instruct/ours/attribute"
    for text in (console, logfile):
        assert f"{label}, steering tokens: 4/4 prompts (100%), done in" in text
        assert f"{label}: 8/8 rows (100%), done in" in text
    assert "[vllm]" in logfile and "vllm" in logfile.split("[vllm]", 1)[1]  # vLLM's own lines are kept there
    assert "[vllm]" not in console and " INFO vllm" not in console and "non-default args" not in console, (
        console
    )
    second = generate(reqs, **kw)
    assert len(first) == 2 * len(reqs)
    assert {r["backend"] for r in first} == {"vllm"} and first[0]["versions"]["vllm"]
    strip = [{k: v for k, v in r.items() if k != "versions"} for r in first]
    assert strip == [{k: v for k, v in r.items() if k != "versions"} for r in second]
    want = _transformers_probs(embedded_model_dir, adapter, reqs)
    base = _transformers_probs(embedded_model_dir, None, reqs)
    assert (
        max(abs(a - b) for w, v in zip(want, base, strict=True) for a, b in zip(w, v, strict=True)) > 1e-3
    ), "the adapter should change the steering distribution"
    for r in first:
        w = want[reqs.index(next(q for q in reqs if q["prompt_id"] == r["prompt_id"]))]
        assert max(abs(a - b) for a, b in zip(r["steering_probs"], w, strict=True)) < 1e-3
        assert r["steering_token"] in STEERING
