"""General capabilities after fine-tuning (paper Table 5).

Two backends (``capabilities.backend``):

- ``local`` (offline; the embedded default): perplexity on a held-out text shipped in
  ``resources/capabilities/`` and accuracy on a local four-way multiple-choice task. Each
  paragraph of the text is scored as its own sequence (token-level NLL of every token after the
  first); perplexity = exp(total NLL / scored tokens). A question is scored as
  lm-evaluation-harness scores multiple choice: the summed log-probability of each choice
  (" {choice}") after ``"Question: {q}\\nAnswer:"``, without the chat template; ``accuracy`` takes
  the arg-max of the sum, ``accuracy_norm`` of the sum divided by the choice's character length.
- ``lm-eval`` (paper configuration): lm-evaluation-harness ``simple_evaluate`` on the configured
  tasks (MMLU, GSM8K, TruthfulQA, IFEval), the model loaded by the harness's ``hf`` backend with
  the LoRA adapter (``peft=``). lm-eval (with its IFEval extra) is pinned in requirements/main.txt
  (the workflow resolves the tasks' datasets at DAG time) and in the rule's conda environment
  (envs/capabilities.yaml). The tasks' datasets are prefetched on the login node and read offline
  (see the lm-eval section below and distalign.cluster.prefetch).

Prompting methods share the base model's weights, so their row is the base model's.

Progress: the local backend logs sequences scored of all (paragraphs + one per answer choice),
rate and time left at most every 30 s and at the end (``distalign.core.progress``): seconds for the
embedded model, minutes for a larger one. lm-eval shows its own progress bars.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from distalign.core.progress import Progress

log = logging.getLogger("distalign.capabilities")


class CapabilityError(ValueError):
    """A held-out or multiple-choice file that cannot be used (names the file, line and key)."""


def load_heldout(path: str | os.PathLike) -> list[str]:
    """Paragraphs (separated by blank lines) of a held-out text file."""
    text = Path(path).read_text(encoding="utf-8")
    paras = [" ".join(p.split()) for p in text.split("\n\n")]
    paras = [p for p in paras if p]
    if not paras:
        raise CapabilityError(f"{path}: empty held-out text (expected paragraphs separated by blank lines)")
    return paras


def load_multiple_choice(path: str | os.PathLike) -> list[dict]:
    """Validated items {id, question, choices, answer} of a JSONL multiple-choice file."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise CapabilityError(f"{where}: not JSON ({err.msg})") from None
            for key, kind in (("question", str), ("choices", list), ("answer", int)):
                if not isinstance(item.get(key), kind) or isinstance(item.get(key), bool):
                    raise CapabilityError(
                        f"{where}: key {key!r} must be a {kind.__name__}, got {item.get(key)!r}"
                    )
            if len(item["choices"]) < 2 or not all(isinstance(c, str) and c for c in item["choices"]):
                raise CapabilityError(f"{where}: key 'choices' must hold at least two non-empty strings")
            if not 0 <= item["answer"] < len(item["choices"]):
                raise CapabilityError(
                    f"{where}: key 'answer' = {item['answer']} is not an index of 'choices' "
                    f"(0..{len(item['choices']) - 1})"
                )
            items.append(
                {"id": item.get("id", f"line-{n}"), **{k: item[k] for k in ("question", "choices", "answer")}}
            )
    if not items:
        raise CapabilityError(f"{path}: no multiple-choice items")
    return items


def _sequence_logprobs(
    model,
    sequences: Sequence[Sequence[int]],
    scored_from: Sequence[int],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[float]:
    """Sum of log P(token | prefix) over positions >= scored_from[i] of each sequence (right-padded batches)."""
    out: list[float] = []
    device = next(model.parameters()).device
    for b in range(0, len(sequences), batch_size):
        chunk = sequences[b : b + batch_size]
        starts = scored_from[b : b + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tok = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for i, s in enumerate(chunk):
            lo = max(int(starts[i]), 1)
            out.append(float(tok[i, lo - 1 : len(s) - 1].sum()))
        if progress is not None:
            progress.update(len(chunk))
    return out


def perplexity(
    model, tokenizer, paragraphs: Sequence[str], max_length: int = 512, progress: Progress | None = None
) -> dict:
    """exp(mean token NLL) over paragraphs scored independently (each cut to ``max_length`` tokens)."""
    seqs = [tokenizer(p, add_special_tokens=False)["input_ids"][:max_length] for p in paragraphs]
    seqs = [s for s in seqs if len(s) > 1]
    if progress is not None:
        progress.update(len(paragraphs) - len(seqs))  # paragraphs of one token: nothing to score
    total = -sum(_sequence_logprobs(model, seqs, [1] * len(seqs), batch_size=4, progress=progress))
    n = sum(len(s) - 1 for s in seqs)
    return {
        "perplexity": math.exp(total / n),
        "nll_per_token": total / n,
        "tokens": n,
        "paragraphs": len(seqs),
    }


def multiple_choice(model, tokenizer, items: Sequence[dict], progress: Progress | None = None) -> dict:
    """Accuracy (sum of log-probs) and length-normalised accuracy on multiple-choice items."""
    seqs, starts, owners = [], [], []
    for i, item in enumerate(items):
        ctx = tokenizer(f"Question: {item['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
        for c in item["choices"]:
            cont = tokenizer(f" {c}", add_special_tokens=False)["input_ids"]
            seqs.append(ctx + cont)
            starts.append(len(ctx))
            owners.append(i)
    scores = _sequence_logprobs(model, seqs, starts, progress=progress)
    per_item: list[list[float]] = [[] for _ in items]
    for i, s in zip(owners, scores, strict=True):
        per_item[i].append(s)
    correct = correct_norm = 0
    for item, sc in zip(items, per_item, strict=True):
        correct += int(max(range(len(sc)), key=sc.__getitem__) == item["answer"])
        norm = [s / len(c) for s, c in zip(sc, item["choices"], strict=True)]
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == item["answer"])
    return {"accuracy": correct / len(items), "accuracy_norm": correct_norm / len(items), "items": len(items)}


def evaluate_local(model_dir, adapter, heldout_path, mc_path, device: str = "cpu") -> dict:
    """Perplexity and multiple-choice accuracy of the base model (adapter None) or base + adapter."""
    from distalign.modeling.models import load_model

    paragraphs = load_heldout(heldout_path)
    items = load_multiple_choice(mc_path)  # both files are checked before the model is loaded
    tok, model = load_model(
        model_dir, device=device, dtype="float32" if device == "cpu" else None, adapter=adapter
    )
    total = len(paragraphs) + sum(len(item["choices"]) for item in items)
    # results/adapters/{dataset}/{model}/{method} -> "dataset/model/method"
    name = "/".join(Path(adapter).parts[-3:]) if adapter else Path(model_dir).name
    with Progress(total, f"capabilities {name}", log, unit="sequence") as progress:
        return {
            "backend": "local",
            "perplexity": perplexity(model, tok, paragraphs, progress=progress),
            "multiple_choice": multiple_choice(model, tok, items, progress=progress),
        }


def lm_eval_model_args(weights: str, adapter: str | None, dtype: str) -> str:
    """The ``model_args`` string of lm-eval's ``hf`` backend (base weights, optional LoRA adapter)."""
    args = f"pretrained={weights},dtype={dtype}"
    return args + (f",peft={adapter}" if adapter else "")


# ---- lm-evaluation-harness tasks and their Hugging Face datasets --------------------------------
# Compute nodes usually have no internet, so the datasets of the configured tasks are fetched on the
# login node (``snakemake prefetch_models``, distalign.cluster.prefetch) and the capabilities job reads
# them with HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1. Which datasets a task reads comes from lm-eval's
# own task index (the YAML configs it ships, plus capabilities.lm_eval_include): a group such as mmlu
# expands to its subtasks (57 configs of cais/mmlu), and the same repository is fetched once.

LM_EVAL_INSTALL = ".venv/bin/pip install 'lm-eval[ifeval]==0.4.13'"


def require_lm_eval():
    """The ``lm_eval`` module, or a :class:`CapabilityError` naming capabilities.backend and the install."""
    try:
        import lm_eval
    except ImportError:
        raise CapabilityError(
            f"capabilities.backend is 'lm-eval', but lm-evaluation-harness is not installed in the "
            f"environment of {sys.executable}: install it with `{LM_EVAL_INSTALL}` (pinned in "
            f"requirements/main.txt, so `make install` does it; the rule's conda env "
            f"envs/capabilities.yaml has it too), or set capabilities.backend: local"
        ) from None
    return lm_eval


def lm_eval_task_manager(
    include: Sequence[str] = (), metadata: dict | None = None, tasks: Sequence[str] = ()
):
    """lm-eval's TaskManager over its shipped tasks plus the folders of capabilities.lm_eval_include.

    With ``tasks`` given, the include folders are indexed alone first, and that index is used when
    every task lives wholly in them (no member, tag or group of lm-eval's own): indexing the
    thousands of shipped task files costs 10-20 s in every process that asks, and an include folder
    takes precedence over the shipped tasks anyway, so the resolution is the same. A tag is never
    resolved this way (lm-eval merges a tag across all folders)."""
    require_lm_eval()
    for i, folder in enumerate(include):
        if not Path(folder).is_dir():
            raise CapabilityError(
                f"capabilities.lm_eval_include[{i}] = {folder!r}: not a directory (expected a folder of "
                f"lm-eval task YAML files, relative to the working directory)"
            )
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include]
    if paths and tasks:
        local = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
        try:
            for i, name in enumerate(tasks):
                _leaf_configs(local, name, _task_ref(i, name), local_only=True)
            return local
        except _NotLocal:
            pass
    return TaskManager(include_path=paths or None, metadata=metadata)


class _NotLocal(Exception):
    """A task reaches outside the include folders (see :func:`lm_eval_task_manager`)."""


def _task_ref(i: int, name: str) -> str:
    return f"capabilities.lm_eval_tasks[{i}] {name!r}"


def _leaf_configs(task_manager, name: str, ref: str, local_only: bool = False) -> list[tuple[str, dict]]:
    """(subtask name, merged config) of every leaf task behind ``name`` (a task, group or tag).

    Follows lm-eval's TaskFactory: a group's own non-group keys and a member's dict keys override
    the member's YAML (the caller's overrides win), a tag stands for its tasks, and a member that is
    not in the index is an inline task made of the overrides alone. Nothing is instantiated (lm-eval
    loads a task's dataset when it builds it). ``local_only``: raise :class:`_NotLocal` at a name the
    index lacks or at a tag, instead of resolving it.
    """
    from dataclasses import fields

    from lm_eval.config.group import GroupConfig

    group_keys = {f.name for f in fields(GroupConfig)}
    index = task_manager.task_index
    out: list[tuple[str, dict]] = []

    def visit(member: str, overrides: dict, depth: int) -> None:
        if depth > 20:
            raise CapabilityError(f"{ref}: lm-eval groups nest more than 20 deep at {member!r} (a cycle?)")
        entry = index.get(member)
        if local_only and (entry is None or entry.kind.name == "TAG"):
            raise _NotLocal(member)
        if entry is None:
            out.append((member, dict(overrides)))  # inline task (only its overrides define it)
            return
        kind = entry.kind.name
        if kind == "TAG":
            for task in sorted(entry.tags):
                visit(task, overrides, depth + 1)
        elif kind == "GROUP":
            own = {k: v for k, v in (entry.cfg or {}).items() if k not in group_keys}
            members((entry.cfg or {}).get("task") or [], {**own, **overrides}, member, depth)
        else:
            cfg = {**(entry.cfg or {}), **overrides}
            cfg.setdefault("_yaml_path", str(entry.yaml_path))
            out.append((member, cfg))

    def members(items, overrides: dict, group: str, depth: int) -> None:
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, str):
                visit(item, overrides, depth + 1)
            elif isinstance(item, dict) and "group" in item:
                rest = {k: v for k, v in item.items() if k != "group"}
                if item["group"] in index:
                    visit(item["group"], {**overrides, **rest}, depth + 1)
                else:  # an inline subgroup
                    own = {k: v for k, v in rest.items() if k not in group_keys}
                    members(item.get("task") or [], {**own, **overrides}, item["group"], depth + 1)
            elif isinstance(item, dict) and "task" in item:
                visit(item["task"], {**overrides, **item}, depth + 1)
            else:
                raise CapabilityError(f"{ref}: lm-eval group {group!r} has a member {item!r} without a task")

    if local_only and name not in index:
        raise _NotLocal(name)
    if name not in index:
        import difflib

        close = difflib.get_close_matches(name, task_manager.all_tasks, n=3)
        extra = " (or of capabilities.lm_eval_include)" if task_manager.include_path else ""
        raise CapabilityError(
            f"{ref}: not an lm-eval task, group or tag of lm-eval {_lm_eval_version()}{extra}"
            + (f"; close names: {', '.join(close)}" if close else "")
        )
    visit(name, {}, 0)
    return out


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def lm_eval_datasets(tasks: Sequence[str], include: Sequence[str] = (), task_manager=None) -> list[dict]:
    """The Hugging Face datasets that the lm-eval ``tasks`` read, one entry per repository.

    Each entry: ``path`` (dataset_path), ``configs`` (sorted ``{"name": dataset_name, "kwargs":
    dataset_kwargs}``, the arguments lm-eval passes to ``datasets.load_dataset``) and ``tasks`` (the
    ``capabilities.lm_eval_tasks[i]`` that need it). A subtask without a ``dataset_path`` (one that
    builds its data in Python: ``class`` or ``custom_dataset``) cannot be prefetched and is an error.
    """
    tm = task_manager or lm_eval_task_manager(include, tasks=tasks)
    repos: dict[str, dict] = {}
    for i, name in enumerate(tasks):
        ref = _task_ref(i, name)
        for leaf, cfg in _leaf_configs(tm, name, ref):
            path = cfg.get("dataset_path")
            if not isinstance(path, str) or not path:
                how = "class" if "class" in cfg else "custom_dataset" if "custom_dataset" in cfg else None
                raise CapabilityError(
                    f"{ref}: subtask {leaf!r} names no Hugging Face dataset (no dataset_path in its lm-eval "
                    f"config {cfg.get('_yaml_path', '(inline)')})"
                    + (f"; it builds its data in Python ({how})" if how else "")
                    + ": the prefetch cannot fetch its data for offline compute nodes"
                )
            kwargs = {k: v for k, v in (cfg.get("dataset_kwargs") or {}).items() if k != "trust_remote_code"}
            repo = repos.setdefault(path, {"path": path, "configs": [], "tasks": []})
            config = {"name": cfg.get("dataset_name"), "kwargs": kwargs}
            if config not in repo["configs"]:
                repo["configs"].append(config)
            if ref not in repo["tasks"]:
                repo["tasks"].append(ref)
    for repo in repos.values():
        repo["configs"].sort(key=lambda c: json.dumps(c, sort_keys=True, default=str))
    return [repos[p] for p in sorted(repos)]


@contextlib.contextmanager
def _nltk_downloads_must_succeed():
    """Make a failed ``nltk.download`` at task import raise instead of printing and going on.

    IFEval's helpers call ``nltk.download("punkt_tab")`` when lm-eval imports them; offline that only
    prints an error, and IFEval fails at scoring time, after hours of generation. The prefetch
    imports them on the login node (the download lands in nltk's data folder, ~/nltk_data unless
    NLTK_DATA says otherwise, which the compute nodes must see)."""
    try:
        import nltk
    except ImportError:
        yield
        return
    original = nltk.download

    def download(info_or_id=None, *args, **kwargs):
        ok = original(info_or_id, *args, **kwargs)
        if ok is False:
            folders = ", ".join(nltk.data.path[:3])
            raise CapabilityError(
                f"NLTK resource {info_or_id!r} is not in nltk's data folders ({folders}) and could not be "
                f"downloaded"
            )
        return ok

    nltk.download = download
    try:
        yield
    finally:
        nltk.download = original


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def check_lm_eval_tasks(tasks: Sequence[str], include: Sequence[str] = (), task_manager=None) -> dict:
    """Build every configured task with lm-eval (its datasets, and the helpers it imports) and
    return ``{task: [subtasks]}``; called before the model is loaded.

    Offline (the capabilities job on a compute node) the datasets come from the local cache; a task
    whose data is not there fails with one message naming ``capabilities.lm_eval_tasks[i]``, its
    datasets and the prefetch command, instead of a hub traceback after the model load.
    """
    import datasets

    tm = task_manager or lm_eval_task_manager(include, tasks=tasks)
    needed = lm_eval_datasets(tasks, include, tm)
    out = {}
    for i, name in enumerate(tasks):
        ref = _task_ref(i, name)
        try:
            with _nltk_downloads_must_succeed():
                loaded = tm.load([name])
        except Exception as err:  # noqa: BLE001 - re-raised as one message that says what to do
            repos = [
                f"{r['path']} ({len(r['configs'])} config{'s' * (len(r['configs']) != 1)})"
                for r in needed
                if ref in r["tasks"]
            ]
            cache = datasets.config.HF_DATASETS_CACHE
            where = (
                f"offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) from the cache {cache}"
                if datasets.config.HF_HUB_OFFLINE
                else f"with the cache {cache}"
            )
            raise CapabilityError(
                f"{ref}: lm-eval cannot load it {where}: {_first_line(err)}\n"
                f"It reads the Hugging Face dataset(s) {', '.join(repos) or '(none)'}. Fill the cache on a "
                f"node with internet (the login node): snakemake prefetch_models --cores 1 --configfile "
                f"<your config> (with the same hf.home / HF_HOME as the compute nodes)"
            ) from None
        out[name] = sorted(loaded["tasks"])
    return out


def evaluate_lm_eval(
    model_dir,
    adapter,
    tasks: Sequence[str],
    *,
    limit: int | None,
    batch_size: str,
    device: str,
    dtype: str,
    include: Sequence[str] = (),
) -> dict:
    """lm-evaluation-harness on ``tasks`` (the paper's Table 5); returns each task's metrics.

    The tasks (and their datasets, offline on a compute node) are loaded before the model, so a
    missing dataset stops the job in seconds; lm-eval loads them a second time from the same cache
    (seconds: the Arrow files are memory-mapped)."""
    lm_eval = require_lm_eval()
    from lm_eval.utils import simple_parse_args_string

    from distalign.modeling.models import weights_path

    model_args = lm_eval_model_args(weights_path(model_dir), adapter, dtype)
    # simple_evaluate gives its own TaskManager the model_args as task metadata: so does this one.
    tm = lm_eval_task_manager(include, metadata=simple_parse_args_string(model_args), tasks=tasks)
    subtasks = check_lm_eval_tasks(tasks, include, tm)
    log.info("lm-eval tasks: %s", {t: len(s) for t, s in subtasks.items()})
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(tasks),
        limit=limit,
        batch_size=batch_size,
        device=device,
        task_manager=tm,
    )
    results = {
        t: {k: v for k, v in r.items() if isinstance(v, int | float)} for t, r in res["results"].items()
    }
    return {"backend": "lm-eval", "tasks": results, "lm_eval_version": getattr(lm_eval, "__version__", None)}
