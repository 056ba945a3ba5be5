"""What a generation job is: the requests of one split with their targets and method prompts, the
sampling settings, and the JSON-serialisable :class:`Job` a backend (or the vLLM worker) runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from distalign.core.attributes import Attribute, method_token_set
from distalign.core.config import HINT_KEYS, TRAINED_KINDS, GenerationSpec, method_guidance
from distalign.data.prompts import method_prompt

log = logging.getLogger("distalign.generate")


class GenerationError(RuntimeError):
    """Generation cannot run; the message says what is missing and how to fix it."""


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
    from distalign.core.io import read_jsonl
    from distalign.data.targets import read_targets_csv

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
    guidance: float | None = None  # steering guidance scale (distalign.generation.guidance); None or 1 = off
    guidance_plausibility: float | None = None  # its plausibility constraint (None = guidance.PLAUSIBILITY)
    api: dict | None = None  # backend openai: the endpoint's base_url, served model name and send_seed
    hints: dict | None = None  # kind hinted: {"classes", "texts", "mode", "weights"} (see make_hints)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Job:
        return cls(**d)


def make_job(
    requests: list[dict],
    *,
    spec: GenerationSpec,
    dataset: str,
    model: str,
    task: str,
    model_dir,
    adapter=None,
    threads: int | None = None,
    backend: str | None = None,
    token_weights: Sequence[float] | None = None,
    hint_weights: Mapping | None = None,
    hint_mode: str = "draw",
) -> Job:
    """Resolve a :class:`GenerationSpec` into a :class:`Job` for one (dataset, model, method, task).

    A method of kind hinted appends a class hint to each request: ``hint_mode`` "draw" draws the
    class per (prompt, sample) from ``hint_weights`` (context id -> class weights: the calibration)
    or, without them, from the context's target; "each" asks every class in turn (the calibration
    run: samples_per_prompt times each, so K x samples_per_prompt samples per prompt).

    The spec's values were checked by the schema and ``validate_config``; what is checked here is
    what only the caller knows: an adapter for a trained method, and ``token_weights`` (one positive
    weight per steering token, the validity correction of ``distalign.evaluation.validity``). A method
    guided on ``task`` (``distalign.generation.guidance``) generates with the transformers backend
    whatever ``backend`` says.
    """
    from distalign.modeling.models import read_pointer

    method = spec.method
    gen = spec.generation
    backend = backend or gen["backend"]
    pointer = read_pointer(model_dir)
    if pointer["source"] == "openai":
        return _api_job(
            requests,
            spec,
            pointer,
            dataset=dataset,
            model=model,
            task=task,
            threads=threads,
            hint_mode=hint_mode,
            hint_weights=hint_weights,
        )
    if spec.kind in TRAINED_KINDS and adapter is None:
        raise GenerationError(f"method {method!r} (kind {spec.kind}) needs its trained adapter")
    if spec.kind not in TRAINED_KINDS:
        adapter = None
    attribute = Attribute.from_config(spec.attribute_name, spec.attribute)
    steering = (
        attribute.steering_tokens(method_token_set(spec.spec, attribute)) if spec.kind == "ours" else None
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
    hints = make_hints(spec, attribute, task, hint_mode, hint_weights)
    guidance, plausibility = method_guidance(spec.spec, task)
    if guidance is not None and backend != "transformers":
        log.info(
            "method %s: steering guidance %.2f runs on the transformers backend, not %s",
            method,
            guidance,
            backend,
        )
        backend = "transformers"
    dtype = pointer.get("dtype", "auto")
    return Job(
        backend=backend,
        model_dir=str(model_dir),
        adapter=str(adapter) if adapter else None,
        device=spec.device,
        dtype=dtype,
        requests=requests,
        seed_parts=[spec.seed, dataset, model, method, task],
        sampling=asdict(sampling_from_config(gen, task)),
        samples_per_prompt=samples_per_prompt(gen, hints),
        batch_size=int(gen["batch_size"]),
        steering_tokens=steering,
        class_tokens=steering if steering else attribute.labels,
        placement=spec.placement,
        threads=threads,
        token_weights=token_weights,
        guidance=guidance,
        guidance_plausibility=plausibility,
        hints=hints,
    )


def samples_per_prompt(gen: Mapping, hints: dict | None) -> int:
    """generation.samples_per_prompt, times the number of classes when every hint is asked in turn."""
    each = len(hints["classes"]) if hints and hints["mode"] == "each" else 1
    return int(gen["samples_per_prompt"]) * each


def job_label(job: Job) -> str:
    """``dataset/model/method/task`` of a job, for its progress lines."""
    return "/".join(str(x) for x in job.seed_parts[1:5])


def _api_job(
    requests, spec: GenerationSpec, pointer: dict, *, dataset, model, task, threads, hint_mode, hint_weights
) -> Job:
    """The job of a model behind an endpoint (source openai): plain prompts, no steering draw, no
    probe; its backend is ``openai`` whatever generation.backend says."""
    if spec.kind in TRAINED_KINDS:
        raise GenerationError(
            f"method {spec.method!r} (kind {spec.kind}) needs the model's weights; model {model!r} is "
            f"served by an API (models.{model}.source: openai)"
        )
    api = pointer.get("api") or {}
    gen = spec.generation
    attribute = Attribute.from_config(spec.attribute_name, spec.attribute)
    hints = make_hints(spec, attribute, task, hint_mode, hint_weights)
    return Job(
        backend="openai",
        model_dir="",
        adapter=None,
        device="cpu",
        dtype="auto",
        requests=requests,
        seed_parts=[spec.seed, dataset, model, spec.method, task],
        sampling=asdict(sampling_from_config(gen, task)),
        samples_per_prompt=samples_per_prompt(gen, hints),
        batch_size=int(gen["batch_size"]),
        class_tokens=None,
        threads=threads,
        api={
            "base_url": api.get("base_url"),
            "model": pointer["path_or_id"],
            "send_seed": bool(api.get("send_seed", True)),
        },
        hints=hints,
    )


def row_head(job: Job, request: dict, sample: int) -> dict:
    """The fields every generation row starts with: what was asked of which (dataset, model,
    method, task), for which request and sample (both backends and the API path)."""
    dataset, model, method, task = job.seed_parts[1:5]
    return {
        "dataset": dataset,
        "model": model,
        "method": method,
        "task": task,
        "context_id": request["context_id"],
        "context": request["context"],
        "prompt_id": request["prompt_id"],
        "prompt": request["prompt"],
        "target": request["target"],
        "sample": sample,
    }


def make_hints(
    spec: GenerationSpec, attribute: Attribute, task: str, mode: str, weights: Mapping | None
) -> dict | None:
    """The hints of a method of kind hinted (None for other kinds): the class names, each class's
    hint for ``task`` (attribute_hint / story_hint), how a request's class is chosen (``mode``) and
    the calibrated weights per context id (None: the context's target)."""
    if spec.kind != "hinted":
        return None
    if mode not in ("draw", "each"):
        raise GenerationError(f"hint mode {mode!r}: expected draw or each")
    key = HINT_KEYS[task]
    # a rule passes the task's hints in the method spec (its attribute param leaves hints out)
    given = spec.spec.get("hints") or {c["name"]: c.get(key) for c in spec.attribute["classes"]}
    texts = [given.get(name) for name in attribute.names]
    missing = [n for n, t in zip(attribute.names, texts, strict=True) if not t]
    if missing:
        raise GenerationError(
            f"method {spec.method!r} (kind hinted): class(es) {missing} have no {key} "
            f"(attributes.{spec.attribute_name}.classes[].{key})"
        )
    if spec.spec.get("calibrated") and mode == "draw" and weights is None:
        raise GenerationError(f"method {spec.method!r} is calibrated: it needs the calibration's weights")
    return {
        "classes": list(attribute.names),
        "texts": texts,
        "mode": mode,
        "weights": {str(k): [float(x) for x in v] for k, v in weights.items()} if weights else None,
    }
