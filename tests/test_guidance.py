"""Steering guidance (distalign.generation.guidance): the contrast formula, the cached branch of the other tokens,
and guided generation on a tiny random Llama checked token by token against separate forward passes."""

from __future__ import annotations

import dataclasses
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_generate import DIGIT, _job, _requests, tiny_dir  # noqa: E402, F401

from distalign.core.config import ConfigError, GenerationSpec, validate_config  # noqa: E402
from distalign.generation.guidance import PLAUSIBILITY, SteeringGuidance, contrast_weights, guided_log_probs  # noqa: E402
from distalign.generation.job import make_job  # noqa: E402
from distalign.generation.runner import run_generation  # noqa: E402
from distalign.generation.transformers_backend import TransformersBackend  # noqa: E402
from distalign.modeling.chat import steered_prompt_ids  # noqa: E402


@pytest.fixture(scope="module")
def backend(tiny_dir):  # noqa: F811
    return TransformersBackend(tiny_dir, threads=2, batch_size=2)  # batches of 2: padding and batch seams


def test_contrast_weights():
    assert contrast_weights([0.2, 0.5, 0.3], 1) == pytest.approx([0.4, 0.6])
    assert contrast_weights([0.9, 0.0, 0.0], 0) == [0.5, 0.5]  # no mass on the others: uniform
    with pytest.raises(ValueError, match="at least two"):
        contrast_weights([1.0], 0)


def test_guided_log_probs_formula():
    cond = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0]]), -1)
    others = torch.log_softmax(torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]]), -1)
    w = torch.tensor([[0.25, 0.75]])
    assert torch.allclose(guided_log_probs(cond, others, w, 1.0, plausibility=0), cond)
    mix = torch.log(0.25 * others[0, 0].exp() + 0.75 * others[0, 1].exp())
    assert torch.allclose(
        guided_log_probs(cond, others, w, 3.0, plausibility=0)[0], 3 * cond[0] - 2 * mix, atol=1e-6
    )
    # the token the other branches favour loses mass: class 2 is likelier under the mixture
    q = torch.softmax(guided_log_probs(cond, others, w, 3.0, plausibility=0), -1)[0]
    assert q[0] > torch.softmax(cond, -1)[0, 0] and q[2] < torch.softmax(cond, -1)[0, 2]
    # plausibility: p(x|k) = .67/.24/.09 of which only x with p >= .2 * max stay; the rest is -inf
    g = guided_log_probs(cond, others, w, 3.0, plausibility=0.2)[0]
    assert torch.isinf(g[2]) and torch.allclose(g[:2], 3 * cond[0, :2] - 2 * mix[:2], atol=1e-6)


def _full_log_probs(backend, ids):
    """Next-token log-probs after ``ids``, one unpadded forward pass without a cache."""
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()
    return torch.log_softmax(logits, -1)


def test_cached_branch_equals_full_forward(backend):
    """The other tokens' branch (left-padded, own KV cache, positions from the mask) gives the same
    log-probs as a plain forward pass over prompt + answer so far, at every step."""
    tok = backend.tokenizer
    texts = ["Nurse?", "Write a very short story about a plumber who lives in the city."]  # different lengths
    alts = [steered_prompt_ids(tok, t, DIGIT["1"]) for t in texts]
    alt_ids, alt_mask = backend._pad(alts)
    proc = SteeringGuidance(
        backend.model, alt_ids, alt_mask, torch.ones(2, 1), scale=2.0, plausibility=PLAUSIBILITY
    )
    answer = [[], []]
    with torch.inference_mode():
        for step in range(4):
            fake_input = torch.tensor([[0] + a for a in answer])  # only the last column is read after step 0
            got = proc._other_log_probs(fake_input)[:, 0]
            for b in range(2):
                want = _full_log_probs(backend, alts[b] + answer[b])
                assert torch.allclose(got[b], want, atol=1e-4), (step, b)
            for b in range(2):
                answer[b].append(1000 + 17 * step + b)


def _greedy_guided(backend, prompt, k_ids, scale, n_tokens):
    """Greedy answer recomputed by hand: argmax of scale * lp(x | k) - (scale - 1) * lp(x | other)."""
    cond_prompt, other_prompt = k_ids
    out = []
    for _ in range(n_tokens):
        cond = _full_log_probs(backend, cond_prompt + out)
        lp = scale * cond - (scale - 1) * _full_log_probs(backend, other_prompt + out)
        lp[cond < cond.max() + math.log(PLAUSIBILITY)] = -math.inf
        out.append(int(lp.argmax()))
    return out


def test_guided_greedy_generation_token_by_token(tiny_dir, backend):  # noqa: F811
    """run_generation with guidance = the hand-computed argmax of the guided log-probs, and it changes
    answers (so the test could fail if guidance were ignored)."""
    greedy = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 3}
    job = _job(tiny_dir, _requests(3), steering_tokens=["0", "1"], sampling=greedy, guidance=4.0)
    rows = run_generation(backend, backend.tokenizer, job)
    plain = run_generation(backend, backend.tokenizer, dataclasses.replace(job, guidance=None))
    tok = backend.tokenizer
    changed = 0
    for r, p in zip(rows, plain, strict=True):
        assert r["steering_guidance"] == 4.0 and r["guidance_plausibility"] == PLAUSIBILITY
        assert "steering_guidance" not in p
        assert r["steering_token"] == p["steering_token"]  # guidance never changes the draw
        k = int(r["steering_token"])
        ids = (
            steered_prompt_ids(tok, r["prompt"], DIGIT[str(k)]),
            steered_prompt_ids(tok, r["prompt"], DIGIT[str(1 - k)]),
        )
        want = _greedy_guided(backend, r["prompt"], ids, 4.0, 3)
        stop = next((i for i, t in enumerate(want) if t in backend.stop), len(want))
        assert r["response"] == tok.decode(want[:stop], skip_special_tokens=True)
        changed += r["response"] != p["response"]
    assert changed >= 1


def test_guided_sampling_is_seeded(tiny_dir, backend):  # noqa: F811
    job = _job(
        tiny_dir,
        _requests(3),
        steering_tokens=["0", "1", "2"],
        guidance=2.0,
        samples_per_prompt=2,
        sampling={"temperature": 1.0, "top_p": 0.9, "top_k": 0, "max_new_tokens": 5},
    )
    a = run_generation(backend, backend.tokenizer, job)
    b = run_generation(backend, backend.tokenizer, job)
    assert [r["response"] for r in a] == [r["response"] for r in b]


def test_make_job_guidance(tiny_dir, config):  # noqa: F811
    kw = dict(dataset="uk-real", model="tiny", model_dir=tiny_dir, adapter=tiny_dir)

    def job_with(method, value, backend="vllm", task="story"):
        spec = GenerationSpec.from_config(config, "uk-real", method)
        spec = dataclasses.replace(spec, spec={**spec.spec, "steering_guidance": value})
        return make_job(_requests(1), spec=spec, task=task, backend=backend, **kw)

    job = job_with("ours", {"story": 2.5, "attribute": 1})  # a scale per task
    assert job.guidance == 2.5 and job.backend == "transformers"  # vLLM cannot mix other prompts' logits
    assert job.guidance_plausibility == PLAUSIBILITY
    plain = job_with("ours", {"story": 2.5}, task="attribute")
    assert plain.guidance is None and plain.backend == "vllm" and plain.guidance_plausibility is None
    assert job_with("ours", {"story": 3, "plausibility": 0.0}).guidance_plausibility == 0.0
    off = job_with("ours", {"story": 1.0})
    assert off.guidance is None and off.backend == "vllm"


@pytest.mark.parametrize(
    "value, error",
    [
        ({"story": 0.5}, r"'methods\.ours\.steering_guidance\.story': 0\.5 is less than the minimum of 1"),
        (
            {"story": 2, "plausibility": 1.5},
            r"'methods\.ours\.steering_guidance\.plausibility': 1\.5 is greater",
        ),
        (2.0, r"'methods\.ours\.steering_guidance': expected object"),
    ],
)
def test_bad_guidance_is_a_config_error(config, value, error):
    """Values are the schema's business: make_job takes a checked spec and checks them no more."""
    config["methods"]["ours"]["steering_guidance"] = value
    with pytest.raises(ConfigError, match=error):
        validate_config(config)


def test_guidance_of_a_method_without_steering_tokens_is_a_config_error(config):
    config["methods"]["ift"]["steering_guidance"] = {"story": 2.0}
    with pytest.raises(ConfigError, match=r"'methods\.ift\.steering_guidance': only methods of kind 'ours'"):
        validate_config(config)
