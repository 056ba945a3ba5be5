"""Generation stage on a tiny random Llama with the embedded tokenizer (fast, transformers backend).

Forward hooks on ``lm_head`` pin chosen logits, so the restricted steering distribution (or the
tokens the model writes) is known exactly.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers import SMOL_VOCAB, TWO_LAYERS, save_model_dir, tiny_llama  # noqa: E402

from distalign.core.config import GenerationSpec  # noqa: E402
from distalign.core.io import read_jsonl, write_jsonl  # noqa: E402
from distalign.evaluation.probe import probe_from_generations, summarize_probe  # noqa: E402
from distalign.generation.job import Job, load_requests, make_job  # noqa: E402
from distalign.generation.runner import generate, run_generation  # noqa: E402
from distalign.generation.sampling import (  # noqa: E402
    draw_index,
    restricted_probs,
    steering_distribution,
    steering_draw_seed,
)
from distalign.generation.transformers_backend import TransformersBackend  # noqa: E402

DIGIT = {str(i): 32 + i for i in range(10)}  # SmolLM2: "0".."9" are ids 32..41


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_model_dir):
    """A 2-layer random Llama (hidden 32) saved with the embedded tokenizer as a prepared model folder."""
    model = tiny_llama(SMOL_VOCAB, **TWO_LAYERS, max_position_embeddings=512)
    with torch.no_grad():  # larger weights than the default init, so greedy answers depend on the prompt
        for name, w in model.named_parameters():
            if "norm" not in name:
                w.normal_(0, 0.3)
    return save_model_dir(tmp_path_factory.mktemp("tiny"), model, embedded_model_dir)


@pytest.fixture(scope="module")
def backend(tiny_dir):
    return TransformersBackend(tiny_dir, threads=2, batch_size=250)


@pytest.fixture()
def pin_logits(backend):
    """Context: ``pin({token_id: logit})`` fixes those logits at every position."""
    handles = []

    def pin(values: dict[int, float]):
        ids = torch.tensor(list(values))
        vals = torch.tensor(list(values.values()), dtype=torch.float32)

        def hook(_module, _inp, out):
            out = out.clone()
            out[..., ids] = vals
            return out

        handles.append(backend.model.lm_head.register_forward_hook(hook))

    yield pin
    for h in handles:
        h.remove()


def _requests(n=3, target=(0.7, 0.3)):
    texts = [
        "What is the gender of a nurse?",
        "Is a typical plumber male or female? Answer in one word please.",
        "Guess the gender of a randomly chosen software developer working in the city of London today, please.",
    ]
    return [
        {
            "context_id": i % 2,
            "context": f"ctx{i % 2}",
            "prompt_id": f"test-{i % 2}-{i}",
            "prompt": texts[i % 3],
            "target": list(target),
        }
        for i in range(n)
    ]


def _job(tiny_dir, requests, **kw) -> Job:
    base = dict(
        backend="transformers",
        model_dir=str(tiny_dir),
        adapter=None,
        device="cpu",
        dtype="float32",
        requests=requests,
        seed_parts=[1234, "uk-real", "tiny", "ours", "attribute"],
        sampling={"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 4},
        samples_per_prompt=1,
        batch_size=250,
        steering_tokens=None,
        class_tokens=None,
        placement="assistant",
        threads=2,
    )
    base.update(kw)
    return Job(**base)


def test_restricted_probs_and_draw():
    p = restricted_probs([math.log(0.2), math.log(0.5), math.log(0.3)])
    assert p == pytest.approx([0.2, 0.5, 0.3])
    assert restricted_probs([-1000.0, -1000.0]) == pytest.approx([0.5, 0.5])
    draws = [draw_index([0.1, 0.9], s) for s in range(2000)]
    assert abs(sum(draws) / 2000 - 0.9) < 4 * math.sqrt(0.09 / 2000)
    assert draw_index([0.3, 0.7], 5) == draw_index([0.3, 0.7], 5)


def test_two_step_frequencies_match_restricted_distribution(tiny_dir, backend, pin_logits):
    """2000 two-step samples: steering frequencies within 4 binomial SDs of the pinned restricted softmax."""
    target = [0.5, 0.3, 0.2]
    pin_logits({DIGIT[str(k)]: math.log(p) + 3.0 for k, p in enumerate(target)})
    job = _job(
        tiny_dir,
        _requests(1),
        steering_tokens=["0", "1", "2"],
        samples_per_prompt=2000,
        sampling={"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 1},
    )
    rows = run_generation(backend, backend.tokenizer, job)
    assert len(rows) == 2000
    assert rows[0]["steering_probs"] == pytest.approx(target, abs=1e-6)
    for k, p in enumerate(target):
        freq = sum(r["steering_token"] == str(k) for r in rows) / len(rows)
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / len(rows)), (k, freq, p)
    # the draws replay from the recorded probabilities and steering_draw_seed (bench/same_draws.py)
    replayed = [
        draw_index(r["steering_probs"], steering_draw_seed(job.seed_parts, r["prompt_id"], r["sample"]))
        for r in rows
    ]
    assert replayed == [int(r["steering_token"]) for r in rows]


def test_token_weights_reweight_the_draw_not_the_recorded_probs(tiny_dir, backend, pin_logits):
    """Validity correction: tokens drawn from p * w renormalised; steering_probs stay the model's."""
    target = [0.5, 0.5]
    pin_logits({DIGIT[str(k)]: math.log(p) + 3.0 for k, p in enumerate(target)})
    job = _job(
        tiny_dir,
        _requests(1),
        steering_tokens=["0", "1"],
        samples_per_prompt=2000,
        token_weights=[3.0, 1.0],
        sampling={"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 1},
    )
    rows = run_generation(backend, backend.tokenizer, job)
    assert rows[0]["steering_probs"] == pytest.approx(target, abs=1e-6)
    assert rows[0]["token_weights"] == [3.0, 1.0]
    freq = sum(r["steering_token"] == "0" for r in rows) / len(rows)
    assert abs(freq - 0.75) < 4 * math.sqrt(0.75 * 0.25 / len(rows)), freq
    # the same uniform numbers as the unweighted draw: only the weights differ
    plain = run_generation(backend, backend.tokenizer, dataclasses.replace(job, token_weights=None))
    assert "token_weights" not in plain[0]
    assert all(int(p["steering_token"]) >= int(w["steering_token"]) for p, w in zip(plain, rows, strict=True))


def test_token_weights_are_checked(tiny_dir, config):
    from distalign.generation.job import GenerationError
    from distalign.generation.sampling import weighted_probs

    assert weighted_probs([0.5, 0.5], None) == [0.5, 0.5]
    assert weighted_probs([0.5, 0.5], [1.0, 3.0]) == pytest.approx([0.25, 0.75])
    kw = dict(dataset="uk-real", model="tiny", task="story", model_dir=tiny_dir, adapter=tiny_dir)
    ours, ift = (GenerationSpec.from_config(config, "uk-real", m) for m in ("ours", "ift"))
    with pytest.raises(GenerationError, match="expected 2 positive token weights"):
        make_job(_requests(1), spec=ours, token_weights=[1.0, 0.0], **kw)
    with pytest.raises(GenerationError, match="expected 2 positive token weights"):
        make_job(_requests(1), spec=ours, token_weights=[1.0], **kw)
    with pytest.raises(GenerationError, match="need steering tokens"):
        make_job(_requests(1), spec=ift, token_weights=[1.0, 1.0], **kw)
    assert make_job(_requests(1), spec=ours, token_weights=[2, 1], **kw).token_weights == [2.0, 1.0]


@pytest.mark.parametrize("placement", ["assistant", "paper"])
def test_steering_token_excluded_model_digits_kept(tiny_dir, backend, pin_logits, placement):
    """The model writes "0000"; the steering "0" is not in the answer and no digit is stripped."""
    pin_logits({DIGIT["0"]: 50.0})
    job = _job(
        tiny_dir,
        _requests(2),
        steering_tokens=["0", "1"],
        placement=placement,
        sampling={"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 4},
    )
    rows = run_generation(backend, backend.tokenizer, job)
    for r in rows:
        assert r["steering_token"] == "0"
        assert r["response"] == "0000"
        assert r["n_tokens"] == 4


def test_steered_prompt_ends_with_steering_token(tiny_dir, backend):
    from distalign.modeling.chat import prompt_ids, steered_prompt_ids

    tok = backend.tokenizer
    plain = prompt_ids(tok, "Hi")
    assert steered_prompt_ids(tok, "Hi", DIGIT["1"], "assistant") == plain + [DIGIT["1"]]
    paper = tok.decode(steered_prompt_ids(tok, "Hi", DIGIT["1"], "paper"))
    assert "Hi1<|im_end|>" in paper


def test_left_padding_batch_equals_single(tiny_dir, backend):
    """Greedy answers of a left-padded batch equal those of each prompt alone."""
    reqs = _requests(3)
    job = _job(tiny_dir, reqs, sampling={"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 6})
    batch = run_generation(backend, backend.tokenizer, job)
    lengths = {len(backend.tokenizer(r["prompt"])["input_ids"]) for r in reqs}
    assert len(lengths) == 3  # the prompts really differ in length
    for i, r in enumerate(reqs):
        single = run_generation(backend, backend.tokenizer, dataclasses.replace(job, requests=[r]))
        assert single[0]["response"] == batch[i]["response"]
    assert len({r["response"] for r in batch}) > 1
    ids = [backend.tokenizer(r["prompt"])["input_ids"] for r in reqs]
    together = backend.next_token_logprobs(ids, [32, 33, 34])
    for i in range(3):
        assert backend.next_token_logprobs(ids[i : i + 1], [32, 33, 34])[0] == pytest.approx(
            together[i], abs=1e-4
        )


def test_same_seed_same_jsonl_different_seed_differs(tiny_dir, config, tmp_path):
    """The public entry point: identical files for one seed, different answers for another."""
    config["generation"].update(
        backend="transformers",
        batch_size=2,
        samples_per_prompt=2,
        max_new_tokens={"attribute": 6, "story": 6},
    )
    kw = dict(dataset="uk-real", model="tiny", task="attribute", model_dir=tiny_dir, threads=2)
    paths = []
    for i, seed in enumerate((7, 7, 8)):
        config["seed"] = seed
        rows = generate(_requests(3), spec=GenerationSpec.from_config(config, "uk-real", "zero-shot"), **kw)
        paths.append(tmp_path / f"run{i}.jsonl")
        write_jsonl(paths[-1], rows)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    a, c = read_jsonl(paths[0]), read_jsonl(paths[2])
    assert len(a) == 6 and [r["sample"] for r in a[:2]] == [0, 1]
    assert [r["response"] for r in a] != [r["response"] for r in c]
    assert {r["backend"] for r in a} == {"transformers"} and a[0]["versions"]["torch"]


def test_ours_with_adapter_end_to_end(tiny_dir, config, tmp_path):
    """make_job -> adapter loaded through peft, two-step rows carry token and probabilities."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    config["generation"].update(backend="transformers", max_new_tokens={"attribute": 3, "story": 3})
    spec = GenerationSpec.from_config(config, "uk-real", "ours")
    kw = dict(spec=spec, dataset="uk-real", model="tiny", task="attribute", model_dir=tiny_dir, threads=2)
    with pytest.raises(RuntimeError, match="needs its trained adapter"):
        make_job(_requests(2), **kw)
    rows = generate(_requests(2), adapter=tmp_path / "adapter", **kw)
    assert all(r["steering_token"] in ("0", "1") and len(r["steering_probs"]) == 2 for r in rows)
    assert all(abs(sum(r["steering_probs"]) - 1) < 1e-9 for r in rows)


def test_probe_renormalised_mae(tiny_dir, backend, pin_logits, config):
    """The probe read from generation rows: restricted first-position probabilities, MAE per context
    (mean over classes) and the mean over contexts."""
    from distalign.core.attributes import attribute_of_dataset

    pin_logits({DIGIT["0"]: math.log(0.6), DIGIT["1"]: math.log(0.4)})
    reqs = _requests(3, target=(0.7, 0.3))
    attribute = attribute_of_dataset(config, "uk-real")
    rows = run_generation(
        backend, backend.tokenizer, _job(tiny_dir, reqs, steering_tokens=["0", "1"], class_tokens=["0", "1"])
    )
    res = probe_from_generations(rows, attribute, ["0", "1"])
    assert res["token_kind"] == "steering" and res["class_token_ids"] == [32, 33]
    for c in res["contexts"]:
        assert c["probs"] == pytest.approx([0.6, 0.4], abs=1e-6)
        assert c["mae"] == pytest.approx(0.1, abs=1e-6)
    assert res["mae"] == pytest.approx(0.1, abs=1e-6)
    # label probe: first token of each label, distinct ids, renormalised over the two
    rows = run_generation(backend, backend.tokenizer, _job(tiny_dir, reqs, class_tokens=["Male", "Female"]))
    res = probe_from_generations(rows, attribute, ["Male", "Female"])
    assert res["token_kind"] == "label_first_token" and len(set(res["class_token_ids"])) == 2
    assert all(sum(c["probs"]) == pytest.approx(1.0) for c in res["contexts"])


def test_pe_explicit_prompt_contains_distribution(tmp_path, config, repo):
    from distalign.core.attributes import attribute_of_dataset
    from distalign.data.prompts import load_templates
    from distalign.data.targets import write_targets_csv

    attribute = attribute_of_dataset(config, "uk-real")
    write_targets_csv(
        tmp_path / "t.csv",
        [{"context_id": 0, "context": "Nurses", "group": "g", "target": [0.25, 0.75]}],
        attribute,
    )
    write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "context_id": 0,
                "context": "Nurses",
                "split": s,
                "prompt_id": f"{s}-0-0",
                "prompt": f"{s}: gender of Nurses?",
            }
            for s in ("train", "val", "test")
        ],
    )
    bank = load_templates(repo / config["prompts"]["templates"])
    explicit = load_requests(
        tmp_path / "p.jsonl", tmp_path / "t.csv", bank, attribute, config["methods"]["pe-explicit"]
    )
    assert len(explicit) == 1 and explicit[0]["prompt"].startswith("test: gender of Nurses?")
    assert "25% Male and 75% Female" in explicit[0]["prompt"]
    plain = load_requests(
        tmp_path / "p.jsonl", tmp_path / "t.csv", bank, attribute, config["methods"]["ours"]
    )
    assert plain[0]["prompt"] == "test: gender of Nurses?" and plain[0]["target"] == [0.25, 0.75]


def test_vllm_python_resolution(tmp_path):
    from distalign.generation.job import GenerationError
    from distalign.generation.vllm_backend import resolve_vllm_python

    with pytest.raises(GenerationError, match="generation.vllm_python"):
        resolve_vllm_python(str(tmp_path / "missing" / "python"))
    fake = tmp_path / ".venv-vllm" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    assert resolve_vllm_python(None, workdir=tmp_path) == str(fake)


@pytest.mark.parametrize("steering", [True, False])
def test_probe_from_generation_equals_a_separate_probe_pass(tiny_dir, backend, config, steering):
    """The first-answer-position log-probs recorded while sampling give the same probe as a forward pass."""
    from distalign.core.attributes import attribute_of_dataset

    attribute = attribute_of_dataset(config, "uk-real")
    reqs = _requests(3)
    tokens = ["0", "1"] if steering else ["Male", "Female"]
    kw = dict(steering_tokens=tokens) if steering else {}
    rows = run_generation(
        backend, backend.tokenizer, _job(tiny_dir, reqs, class_tokens=tokens, samples_per_prompt=2, **kw)
    )
    from_rows = probe_from_generations(rows, attribute, tokens)
    ids = from_rows["class_token_ids"]
    probs, mass = steering_distribution(backend, backend.tokenizer, [r["prompt"] for r in reqs], ids)
    job_like = {
        "dataset": "uk-real",
        "model": "tiny",
        "method": "ours",
        "backend": "transformers",
        "steering": steering,
    }
    direct = summarize_probe(
        reqs,
        [{"probs": p, "mass": m, "token_ids": ids} for p, m in zip(probs, mass, strict=True)],
        job_like,
        tokens,
        attribute,
    )
    assert from_rows["token_kind"] == direct["token_kind"]
    assert from_rows["class_token_ids"] == direct["class_token_ids"]
    assert from_rows["mae"] == pytest.approx(direct["mae"], abs=1e-5)
    for a, b in zip(from_rows["contexts"], direct["contexts"], strict=True):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-5)
        assert a["n_prompts"] == b["n_prompts"]  # one entry per prompt, not per sample
