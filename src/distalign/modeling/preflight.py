"""Pre-flight checks: bad input fails in a cheap job, before the expensive job that would trip over it.

Some inputs can only be checked with the model or the network: a steering token that the model's
tokenizer splits into several pieces, a LoRA target module the model does not have (peft would skip
it without a word when another target matches), ``training.device: cuda`` on a machine without a GPU,
an endpoint that cannot be reached, does not serve the configured model, or whose API-key variable
is empty. Found by the job that needs them, they cost a model load, a training run or (the story
judge) a whole story generation first. Here they are found in seconds, all at once, in one message
that names the config key (and, for endpoints, the URL and the key's variable).

How the workflow runs them (workflow/rules/preflight.smk):

* Every expensive job (train, generate, validity_generate, sweep_generate, story_data, capabilities)
  reads a marker ``results/preflight/models/{model}/{job}.json`` made by rule ``preflight``; the
  label jobs that call the story LLM judge and the prompts jobs that call the paraphraser read
  ``results/preflight/endpoints/{job}.json`` (rule ``preflight_endpoints``). ``{job}`` names the
  consumer (:func:`job_name`: its rule and wildcard values, e.g. ``train/uk-real/ours``).
* One marker per consumer job, marked ``temp()``: it exists only while its consumer waits, so it is
  made (and the checks run) exactly when that consumer has to run, and a finished job never reruns
  because of it. A marker shared by several jobs would not do: when one of them reruns, Snakemake
  remakes the shared marker and then reruns every other job that reads it (checked on Snakemake
  9.27 with a dry run), so changing one method would retrain all others.
* The two rules have no params and a fixed input (the prepared model, or nothing): Snakemake keeps
  the metadata of a deleted temp marker, and a params or input change of the rule that made it
  reruns every consumer. What the checks read comes from the config inside the job instead.
* Each check covers the run, not only its own job: the datasets and methods of ``run`` plus the
  job's own dataset and method, so that the first pre-flight job to run stops the whole run.
  Methods and datasets the run does not use are not checked (config/config.yaml defines methods
  that an overlay such as config/paper.yaml cannot remove).
* The tokenizer and module checks depend only on the config, the model files and the library
  versions; a pass is remembered under ``results/preflight/models/{model}/.passed/`` by a hash of
  all of these, so that the later jobs of a run skip the model load (a second or so instead of
  several). The device and endpoint checks are repeated by every job.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from distalign.core.attributes import method_token_set
from distalign.core.config import (
    TRAINED_KINDS,
    dataset_applies,
    judge_config,
    method_training,
    training_override_entries,
)

log = logging.getLogger("distalign.preflight")  # logger names are stable: logs are grepped by them


# Consumer rules whose jobs load the model (their marker: rule preflight, with the model's checks);
# sweep_generate inherits generate's input, so its jobs are named generate/... with the sweep wildcards.
MODEL_JOBS = (
    "train",
    "generate",
    "validity_generate",
    "hint_calibration_generate",
    "story_data",
    "capabilities",
)


# Consumer rules that only call an endpoint (their marker: rule preflight_endpoints).
LABEL_JOBS = ("label", "validity_label", "hint_calibration_label", "sweep_label")


ENDPOINT_JOBS = (*LABEL_JOBS, "prompts")


# GET /v1/models of an endpoint: a short wait and no retries (a pre-flight check must not hang).
ENDPOINT_TIMEOUT = 5.0


PASSED = ".passed"


class PreflightError(RuntimeError):
    """The run cannot work as configured; the message lists every problem with its config key."""


# The wildcards that lead a consumer's job name, in this order (the rest follow in the rule's order:
# the knob, value and rep of a sweep point). Plain values, not key=value: some tests read wildcards
# out of dry-run output with patterns such as ``method=(\S+)``.
JOB_FIELDS = {
    "train": ("dataset", "method"),
    "generate": ("dataset", "method", "task"),
    "validity_generate": ("dataset", "method", "task"),
    "hint_calibration_generate": ("dataset", "method", "task"),
    "story_data": ("dataset",),
    "capabilities": ("dataset", "method"),
    "label": ("dataset", "model", "method", "task"),
    "validity_label": ("dataset", "model", "method", "task"),
    "hint_calibration_label": ("dataset", "model", "method", "task"),
    "sweep_label": ("dataset", "model", "method", "task"),
    "prompts": ("dataset", "task"),
}


def job_name(kind: str, wildcards: Mapping, skip: Sequence[str] = ()) -> str:
    """The ``{job}`` part of a marker path: the consumer's rule and its wildcard values
    (``train/uk-real/ours``); ``skip``: wildcards already in the marker path (the model)."""
    if kind not in JOB_FIELDS:
        raise ValueError(f"unknown pre-flight consumer {kind!r} (expected one of {sorted(JOB_FIELDS)})")
    values = dict(wildcards.items())  # a dict, or Snakemake's Wildcards (iterating that gives values)
    fields = [f for f in JOB_FIELDS[kind] if f not in skip]
    missing = [f for f in fields if f not in values]
    if missing:
        raise ValueError(f"pre-flight consumer {kind!r}: wildcards {values} lack {missing}")
    rest = [k for k in values if k not in fields and k not in skip]
    return "/".join([kind, *(str(values[k]) for k in fields + rest)])


def parse_job(job: str, skip: Sequence[str] = ()) -> tuple[str, dict[str, str]]:
    """The rule and leading wildcards of a ``{job}`` name (:func:`job_name` read back)."""
    kind, *values = job.split("/")
    if kind not in JOB_FIELDS:
        raise ValueError(
            f"pre-flight job name {job!r}: unknown consumer {kind!r} (expected one of {sorted(JOB_FIELDS)})"
        )
    fields = [f for f in JOB_FIELDS[kind] if f not in skip]
    if len(values) < len(fields):
        raise ValueError(f"pre-flight job name {job!r}: expected the values of {fields} after {kind!r}")
    return kind, dict(zip(fields, values, strict=False))


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible endpoint the run calls: what it is for, the config section that sets it
    (``judge.llm``), its URL (None: the openai client's default), its model and the key's variable."""

    what: str
    key: str
    base_url: str | None
    model: str | None
    api_key_env: str
    model_key: str | None = None  # where the model name is set, when not at <key>.model


def judge_endpoint(config: Mapping) -> Endpoint | None:
    """The story LLM judge when it is an external endpoint (``judge.story`` llm or both with a
    ``judge.llm.base_url``). A judge whose base_url is null is started by the label job itself
    (distalign.evaluation.judge_server.judge_endpoint): nothing to check before it exists."""
    jcfg = judge_config(config)
    llm = jcfg["llm"]
    if jcfg["story"] not in ("llm", "both") or not llm.get("base_url"):
        return None
    return Endpoint("story LLM judge", "judge.llm", llm["base_url"], llm.get("model"), llm["api_key_env"])


def paraphraser_endpoint(config: Mapping) -> Endpoint | None:
    prompts = config.get("prompts") or {}
    if prompts.get("paraphraser") != "openai":
        return None
    o = prompts.get("openai") or {}
    return Endpoint(
        "paraphraser",
        "prompts.openai",
        o.get("base_url"),
        o.get("model"),
        o.get("api_key_env") or "OPENAI_API_KEY",
    )


def model_endpoint(config: Mapping, model: str) -> Endpoint | None:
    """The endpoint of an API model (source openai), or None for a model with weights."""
    m = config["models"].get(model) or {}
    if m.get("source") != "openai":
        return None
    api = m.get("api") or {}
    return Endpoint(
        f"model {model}",
        f"models.{model}.api",
        api.get("base_url"),
        m["path_or_id"],
        api["api_key_env"],
        model_key=f"models.{model}.path_or_id",
    )


def job_endpoints(config: Mapping, kind: str, wildcards: Mapping | None = None) -> list[Endpoint]:
    """The endpoints a consumer job must find working before it starts.

    prompts: the paraphraser. A label job of the story task: the story judge. A job that loads the
    model: the story judge when the run labels stories (``story`` in run.tasks), so that a wrong
    judge URL stops the run before its stories are generated, not after.
    """
    task = dict(wildcards.items()).get("task") if wildcards else None
    if kind == "prompts":
        found = [paraphraser_endpoint(config)]
    elif kind in LABEL_JOBS:
        found = [judge_endpoint(config)] if task == "story" else []
    elif kind in MODEL_JOBS:
        found = [judge_endpoint(config)] if "story" in config["run"]["tasks"] else []
    else:
        raise ValueError(
            f"unknown pre-flight consumer {kind!r} (expected one of {MODEL_JOBS + ENDPOINT_JOBS})"
        )
    return [e for e in found if e is not None]


def check_endpoints(endpoints: Sequence[Endpoint], *, timeout: float = ENDPOINT_TIMEOUT) -> list[str]:
    """Problems of each endpoint: its key variable unset or empty, the URL unreachable, or
    ``GET /v1/models`` not listing the model. One request each, no retries; the key is never shown."""
    if not endpoints:
        return []
    import openai

    from distalign.core.endpoints import APIKeyError, openai_client

    problems = []
    for ep in endpoints:
        try:
            client = openai_client(ep.base_url, ep.api_key_env, timeout=timeout, max_retries=0)
        except APIKeyError as err:
            problems.append(
                f"{ep.key}.api_key_env: {err}; the {ep.what} at {ep.base_url or '(openai default)'} "
                f"needs a non-empty key (any value works for a server that checks none)"
            )
            continue
        url = str(client.base_url).rstrip("/")
        try:
            served = sorted(m.id for m in client.models.list())
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            problems.append(
                f"{ep.key}.base_url: the {ep.what} at {url} cannot be reached "
                f"(GET {url}/models: {type(err).__name__}: {err})"
            )
            continue
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            problems.append(
                f"{ep.key}.api_key_env: the {ep.what} at {url} rejects the key in ${ep.api_key_env} "
                f"(GET {url}/models: HTTP {err.status_code})"
            )
            continue
        except openai.APIStatusError as err:
            problems.append(
                f"{ep.key}.base_url: GET {url}/models answered HTTP {err.status_code}; is {url} the "
                f"base URL of an OpenAI-compatible server (usually ending in /v1)?"
            )
            continue
        if ep.model not in served:
            problems.append(
                f"{ep.model_key or ep.key + '.model'}: {ep.model!r} is not served by the {ep.what} at {url} "
                f"(GET {url}/models lists {served})"
            )
    return problems


def _paraphrase_cache_size(config: Mapping) -> int:
    from distalign.data.prompts import ParaphraseCache

    path = ((config.get("prompts") or {}).get("openai") or {}).get("cache")
    return len(ParaphraseCache(path)) if path and Path(path).is_file() else 0


def check_endpoint_job(config: Mapping, job: str, *, timeout: float = ENDPOINT_TIMEOUT) -> dict:
    """The pre-flight check of a label or prompts job; raises PreflightError listing every problem.

    A paraphraser problem is only a warning while the paraphrase cache has replies: the prompts job
    asks the endpoint only for what the cache lacks (it then fails on its first miss, and it is a
    cheap job that runs before any model is loaded).
    """
    kind, wildcards = parse_job(job)
    endpoints = job_endpoints(config, kind, wildcards)
    problems = check_endpoints(endpoints, timeout=timeout)
    warnings = []
    if problems and kind == "prompts" and (cached := _paraphrase_cache_size(config)):
        warnings = [
            f"{p} (not an error: the paraphrase cache {config['prompts']['openai']['cache']} has "
            f"{cached} replies; the prompts job fails on the first request it lacks)"
            for p in problems
        ]
        problems = []
    for w in warnings:
        log.warning("%s", w)
    _raise(problems, job)
    return {"job": job, "endpoints": [asdict(e) for e in endpoints], "warnings": warnings}


def run_scope(config: Mapping, dataset: str | None = None, method: str | None = None) -> tuple[list, list]:
    """Datasets and methods a pre-flight check covers: those of ``run`` plus the job's own, plus the
    IFT method whose adapter DPO continues (it is trained whenever DPO is)."""
    datasets = list(dict.fromkeys([*config["run"]["datasets"], *([dataset] if dataset else [])]))
    methods = list(dict.fromkeys([*config["run"]["methods"], *([method] if method else [])]))
    if any(config["methods"][m]["kind"] == "dpo" for m in methods):
        ift = next((n for n, s in config["methods"].items() if s.get("kind") == "ift"), None)
        if ift is not None and ift not in methods:
            methods.append(ift)
    return datasets, methods


def _applied(config: Mapping, datasets: Sequence[str], method: str) -> list[str]:
    return [d for d in datasets if dataset_applies(config, d, method)]


def steering_token_sets(config: Mapping, datasets: Sequence[str], methods: Sequence[str]) -> list[dict]:
    """Each (attribute, token set) that a method of kind ours in scope steers with on a dataset in scope:
    ``{"attribute", "token_set", "methods", "tokens": [[class index, class name, token], ...]}``."""
    found: dict[tuple[str, str], dict] = {}
    for m in methods:
        spec = config["methods"][m]
        if spec["kind"] != "ours":
            continue
        for d in _applied(config, datasets, m):
            aname = config["datasets"][d]["attribute"]
            attr = config["attributes"][aname]
            ts = method_token_set(spec, attr)
            entry = found.setdefault(
                (aname, ts),
                {
                    "attribute": aname,
                    "token_set": ts,
                    "methods": [],
                    "tokens": [[i, c["name"], c["tokens"][ts]] for i, c in enumerate(attr["classes"])],
                },
            )
            if m not in entry["methods"]:
                entry["methods"].append(m)
    return list(found.values())


def _sets(node, path: Sequence[str]) -> bool:
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _training_key(
    config: Mapping, method: str, path: Sequence[str], model: str | None = None, dataset: str | None = None
) -> str:
    """The config key that sets a training value of the train job of (model, dataset, method): the last
    ``training.overrides`` entry that applies and sets it (the one that wins), else the method's
    train_overrides entry, else training.*."""
    dotted = ".".join(path)
    entries = config["training"].get("overrides") or []
    for i in reversed(training_override_entries(config, method, model, dataset)):
        if _sets(entries[i]["set"], path):
            return f"training.overrides[{i}].set.{dotted}"
    if _sets(config["methods"][method].get("train_overrides") or {}, path):
        return f"methods.{method}.train_overrides.{dotted}"
    return f"training.{dotted}"


def _trained(config: Mapping, datasets: Sequence[str], methods: Sequence[str]) -> list[str]:
    return [
        m for m in methods if config["methods"][m]["kind"] in TRAINED_KINDS and _applied(config, datasets, m)
    ]


def lora_targets(
    config: Mapping, datasets: Sequence[str], methods: Sequence[str], model: str | None = None
) -> list[dict]:
    """The LoRA target-module lists of the trained methods in scope (on ``model``, each dataset in scope),
    by the config key that sets them: ``{"key", "targets", "methods"}`` (``[all-linear]`` is peft's own
    choice and is not listed)."""
    found: dict[tuple, dict] = {}
    for m in _trained(config, datasets, methods):
        for d in _applied(config, datasets, m):
            targets = list(method_training(config, m, model, d)["lora"]["target_modules"])
            if targets == ["all-linear"]:
                continue
            key = _training_key(config, m, ("lora", "target_modules"), model, d)
            entry = found.setdefault((key, tuple(targets)), {"key": key, "targets": targets, "methods": []})
            if m not in entry["methods"]:
                entry["methods"].append(m)
    return list(found.values())


def cuda_requests(
    config: Mapping, datasets: Sequence[str], methods: Sequence[str], model: str | None = None
) -> dict[str, list[str]]:
    """Config keys that ask for ``device: cuda`` -> who uses them (generation, or the methods trained
    with that value on ``model``)."""
    found: dict[str, list[str]] = {}
    if config["training"].get("device") == "cuda":
        found["training.device"] = ["generation, story data and capabilities jobs"]
    for m in _trained(config, datasets, methods):
        for d in _applied(config, datasets, m):
            if method_training(config, m, model, d).get("device") == "cuda":
                users = found.setdefault(_training_key(config, m, ("device",), model, d), [])
                if f"training of {m}" not in users:
                    users.append(f"training of {m}")
    return found


def _methods_key(methods: Sequence[str]) -> str:
    return ", ".join(f"methods.{m}" for m in methods)


def check_steering_tokens(tokenizer, token_sets: Sequence[dict], model: str) -> list[str]:
    """Problems of the steering tokens under ``tokenizer``: a token that is not exactly one token (the
    rule of :func:`distalign.modeling.models.single_token_ids`, which training and generation apply), and a
    token set whose tokens share an id."""
    from distalign.modeling.models import single_token_ids

    problems = []
    for entry in token_sets:
        aname, ts, where = entry["attribute"], entry["token_set"], _methods_key(entry["methods"])
        split = False
        for index, cls, token in entry["tokens"]:
            try:
                single_token_ids(tokenizer, [token])
            except ValueError:
                split = True
                pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(token, add_special_tokens=False))
                how = f"splits into {len(pieces)} tokens {pieces}" if pieces else "encodes to no token at all"
                problems.append(
                    f"{where}: steering token {token!r} of class {cls} (attributes.{aname}, token set "
                    f"{ts}) {how} in the tokenizer of model {model}; a steering token must be one "
                    f"token: change attributes.{aname}.classes[{index}].tokens.{ts} or the method's "
                    f"token_set"
                )
        if not split:
            try:
                single_token_ids(
                    tokenizer,
                    [t for _, _, t in entry["tokens"]],
                    where=f"steering tokens of attributes.{aname} (token set {ts}) in the tokenizer "
                    f"of model {model}",
                )
            except ValueError as err:
                problems.append(f"{where}: {err}")
    return problems


def lora_supported_types() -> tuple:
    """Module types peft's LoRA can wrap (a target that names anything else makes peft fail)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    nn = torch.nn
    return (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, Conv1D)


def model_modules(model_dir: str | os.PathLike) -> dict[str, type]:
    """Module name -> module type of a prepared model, built on the meta device from its config
    (no weights are read: seconds, whatever the model's size)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from distalign.modeling.models import weights_path

    cfg = AutoConfig.from_pretrained(weights_path(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {name: type(module) for name, module in model.named_modules() if name}


def check_lora_targets(modules: Mapping[str, type], targets: Sequence[dict], model: str) -> list[str]:
    """Problems of the LoRA target lists against a model's modules, matched as peft matches them
    (``check_target_module_exists``: the full name, or its last dotted parts). peft fails only when
    no target matches; one that matches nothing next to others that do is skipped without a word."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    supported = lora_supported_types()
    adaptable = sorted({n.rsplit(".", 1)[-1] for n, t in modules.items() if issubclass(t, supported)})
    problems = []
    for entry in targets:
        for target in entry["targets"]:
            cfg = LoraConfig(target_modules=[target])
            hits = [n for n in modules if check_target_module_exists(cfg, n)]
            used = f"(used by {_methods_key(entry['methods'])})"
            if not hits:
                problems.append(
                    f"{entry['key']}: LoRA target module {target!r} matches no module of model {model} "
                    f"{used}; its adaptable layers are named {adaptable}"
                )
            elif not any(issubclass(modules[n], supported) for n in hits):
                kinds = sorted({modules[n].__name__ for n in hits})
                problems.append(
                    f"{entry['key']}: LoRA target module {target!r} names only {kinds} modules of model "
                    f"{model} {used}, which LoRA cannot adapt; its adaptable layers are named "
                    f"{adaptable}"
                )
    return problems


def check_cuda(requests: Mapping[str, list[str]]) -> list[str]:
    """Problems of ``device: cuda`` on a machine where torch sees no CUDA device."""
    if not requests:
        return []
    import torch

    if torch.cuda.is_available():
        return []
    return [
        f"{key}: 'cuda' but torch {torch.__version__} sees no CUDA device on this machine (used by "
        f"{', '.join(users)}); use auto or cpu, or run where a GPU is"
        for key, users in requests.items()
    ]


def _fingerprint(model_dir: str | os.PathLike) -> dict:
    """What the tokenizer and module checks read besides the config: the model's pointer, the files of
    its tokenizer and config folders (size, mtime), the library versions and this module's code."""
    from distalign.modeling import models as models
    from distalign.modeling.models import read_pointer, tokenizer_path, weights_path

    files = {}
    for folder in dict.fromkeys([tokenizer_path(model_dir), weights_path(model_dir)]):
        for p in sorted(Path(folder).iterdir()):
            if p.is_file():
                st = p.stat()
                files[str(p)] = [st.st_size, st.st_mtime_ns]
    code = hashlib.sha256(Path(__file__).read_bytes() + Path(models.__file__).read_bytes()).hexdigest()
    versions = {
        pkg: importlib.metadata.version(pkg) for pkg in ("transformers", "tokenizers", "peft", "torch")
    }
    return {"pointer": read_pointer(model_dir), "files": files, "versions": versions, "code": code}


def check_model_job(
    config: Mapping,
    model: str,
    model_dir: str | os.PathLike,
    job: str,
    *,
    cuda_here: bool = True,
    passed_dir: str | os.PathLike | None = None,
    timeout: float = ENDPOINT_TIMEOUT,
) -> dict:
    """The pre-flight check of a job that loads ``model``; raises PreflightError listing every problem.

    Steering tokens of the methods of kind ours, LoRA target modules of the trained methods (both
    over :func:`run_scope`), ``device: cuda`` (only when ``cuda_here``: the job runs on this machine;
    a cluster job gets its GPU from the scheduler) and the endpoints of :func:`job_endpoints`.
    ``passed_dir``: where a pass of the tokenizer and module checks is remembered (None: never).
    """
    kind, wildcards = parse_job(job, skip=("model",))
    api = model_endpoint(config, model)
    if api is not None:  # an API model: no tokenizer, modules or device here; its endpoint instead
        endpoints = [api, *job_endpoints(config, kind, wildcards)]
        _raise(check_endpoints(endpoints, timeout=timeout), job, model)
        return {"job": job, "model": model, "endpoints": [asdict(e) for e in endpoints]}
    datasets, methods = run_scope(config, wildcards.get("dataset"), wildcards.get("method"))
    token_sets = steering_token_sets(config, datasets, methods)
    targets = lora_targets(config, datasets, methods, model)
    key = hashlib.sha256(
        json.dumps(
            {
                "model": model,
                "tokens": token_sets,
                "targets": targets,
                "fingerprint": _fingerprint(model_dir),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    remembered = Path(passed_dir) / f"{key}.json" if passed_dir else None
    problems: list[str] = []
    if remembered is not None and remembered.is_file():
        log.info(
            "tokenizer and module checks of model %s passed before with this config and these files (%s)",
            model,
            remembered,
        )
    else:
        problems += _model_problems(model, model_dir, token_sets, targets)
        if not problems and remembered is not None:
            from distalign.core.io import write_json

            write_json(remembered, {"model": model, "token_sets": token_sets, "lora_targets": targets})
    if cuda_here:
        problems += check_cuda(cuda_requests(config, datasets, methods, model))
    endpoints = job_endpoints(config, kind, wildcards)
    problems += check_endpoints(endpoints, timeout=timeout)
    _raise(problems, job, model)
    return {
        "job": job,
        "model": model,
        "datasets": datasets,
        "methods": methods,
        "token_sets": token_sets,
        "lora_targets": targets,
        "cuda_checked": cuda_here,
        "endpoints": [asdict(e) for e in endpoints],
    }


def _model_problems(model: str, model_dir, token_sets: Sequence[dict], targets: Sequence[dict]) -> list[str]:
    from distalign.modeling.models import ModelError, load_tokenizer

    problems = []
    try:
        tokenizer = load_tokenizer(model_dir)
    except ModelError as err:
        problems.append(f"models.{model}: {err}")
    else:
        problems += check_steering_tokens(tokenizer, token_sets, model)
    if targets:
        try:
            modules = model_modules(model_dir)
        except (OSError, ValueError, KeyError) as err:
            problems.append(
                f"models.{model}: cannot build the model from its config to list its modules "
                f"({type(err).__name__}: {err})"
            )
        else:
            problems += check_lora_targets(modules, targets, model)
    return problems


def _raise(problems: Sequence[str], job: str, model: str | None = None) -> None:
    if problems:
        of = f" (model {model})" if model else ""
        raise PreflightError(
            f"pre-flight check before job {job}{of} found {len(problems)} problem(s):\n  - "
            + "\n  - ".join(problems)
        )


def passed_dir_of(marker: str | os.PathLike, job: str) -> Path:
    """Where the passes of a model's checks are remembered: ``.passed/`` next to its markers (the
    marker path minus ``{job}.json``)."""
    marker = str(marker)
    suffix = f"{job}.json"
    if not marker.endswith(suffix):
        raise ValueError(f"marker {marker!r} does not end with {suffix!r}")
    return Path(marker[: -len(suffix)]) / PASSED
