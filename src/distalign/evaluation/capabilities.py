"""General capabilities after fine-tuning (paper Table 5), through lm-evaluation-harness.

One code path for every configuration: lm-eval's ``hf`` backend scores ``capabilities.lm_eval_tasks``
on the base model (prompting methods, whose weights are the base model's) or on the base model with
a method's LoRA adapter. The embedded CPU default runs two offline tasks of our own
(resources/capabilities/lm_eval: ``distalign_general_mc``, 1,391 four-way questions, and
``distalign_heldout``, the rolling log-likelihood of 134 held-out paragraphs, both read from local
JSONL files with the packaged ``json`` builder); config/paper.yaml runs the paper's MMLU, GSM8K,
TruthfulQA and IFEval. Why lm-eval and not a scorer of our own: the CPU default and the paper then
share the prompt format, the scoring rules and the code, and a number here means what it means in
any lm-eval report.

Per-item results are kept (lm-eval's ``log_samples``): each document's 0/1 (or numeric) metric, and
for a rolling log-likelihood task its summed log-likelihood and scored token count. table5 pairs
each fine-tuned row with the base row on the same items
(:mod:`distalign.evaluation.capability_stats`), which is what lets ~1,400 questions resolve a
2-point change.

The leak check (``capabilities.instructions``; not in the paper): the same model answers ordinary
requests (resources/capabilities/general_instructions.jsonl) with one free sampling step, the chat
template and no steering draw, and each answer is read by
:func:`~distalign.evaluation.capability_stats.leak_kind` (a steering token first, a bare class word,
or under ``capabilities.leak_min_words`` words). The seed does not depend on the method, so every
row draws with the same random stream and the check is paired too.

Hub datasets of lm-eval tasks are prefetched on the login node and read offline (see the section
below and distalign.cluster.prefetch); tasks over local files (a packaged builder such as ``json``
with ``data_files``) need no prefetch, and their files are inputs of the capabilities job.

Progress: lm-eval shows its own progress bars; the leak check logs answers written, rate and time
left (``distalign.core.progress``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from distalign.core.progress import Progress

log = logging.getLogger("distalign.capabilities")


class CapabilityError(ValueError):
    """A capability input that cannot be used (names the file, line or config key)."""


def load_instructions(path: str | os.PathLike, key: str = "capabilities.instructions") -> list[dict]:
    """:func:`distalign.data.instructions.load_instructions` for the leak check: a problem is a
    :class:`CapabilityError`."""
    from distalign.data.instructions import InstructionsError
    from distalign.data.instructions import load_instructions as load

    try:
        return load(path, key)
    except InstructionsError as err:
        raise CapabilityError(str(err)) from None


def leak_vocabulary(attribute: dict) -> tuple[list[str], list[str]]:
    """(steering tokens, class words) that the leak check looks for, from an attribute's config.

    The tokens of *every* token set of the attribute (digits, words, pronouns), so that each row of
    table5 is read by the same rule (the base row too, and a method with another token set); the
    class words are each class's name, label and parser keywords."""
    tokens: list[str] = []
    words: list[str] = []
    for cls in attribute["classes"]:
        tokens += [t for t in (cls.get("tokens") or {}).values() if t]
        words += [cls["name"], cls.get("label") or cls["name"], *(cls.get("keywords") or [])]
    return list(dict.fromkeys(tokens)), list(dict.fromkeys(words))


def leak_check(
    model,
    tokenizer,
    model_dir,
    instructions: Sequence[dict],
    *,
    sampling,
    seed: int,
    steering_tokens: Sequence[str],
    class_words: Sequence[str],
    min_words: int,
    batch_size: int = 64,
    progress_label: str = "leak check",
) -> dict:
    """Answer every instruction once (chat template, free sampling) and read the answers for leaks.

    ``sampling``: a :class:`distalign.generation.job.Sampling`; ``seed``: the seed of the draws (the
    same for every model, so rows are paired). Returns ``share``, ``n``, ``counts`` per kind (as
    :func:`~distalign.evaluation.capability_stats.leak_share`) and ``items`` (id, answer, leak kind or
    None), in instruction order."""
    from distalign.evaluation.capability_stats import leak_kind, leak_share
    from distalign.generation.sampling import SampleBatch
    from distalign.generation.transformers_backend import TransformersBackend
    from distalign.modeling.chat import prompt_ids

    backend = TransformersBackend(model_dir, tokenizer=tokenizer, model=model, batch_size=batch_size)
    prompts = [prompt_ids(tokenizer, row["instruction"]) for row in instructions]
    batch = SampleBatch(
        prompts=prompts, seeds=[seed] * len(prompts), sampling=sampling, seed_parts=(seed, "leak-check")
    )
    with Progress(len(prompts), progress_label, log, unit="answer") as progress:
        results = backend.sample(batch, progress=progress)
    answers = [tokenizer.decode(toks, skip_special_tokens=True) for toks, *_ in results]
    kw = dict(steering_tokens=steering_tokens, class_words=class_words, min_words=min_words)
    summary = leak_share(answers, **kw)
    summary["items"] = [
        {"id": row["id"], "answer": a, "leak": leak_kind(a, **kw)}
        for row, a in zip(instructions, answers, strict=True)
    ]
    return summary


def per_item_results(samples: dict, count_tokens: Callable[[str], int]) -> dict[str, list[dict]]:
    """Per-document results of lm-eval's logged samples, by task, in document order.

    Each entry has ``doc_id``, ``filter`` (lm-eval logs a document once per filter of its task, e.g.
    gsm8k's strict-match and flexible-extract) and every per-document metric lm-eval logged: a number or bool as a
    float (``acc``, ``exact_match``, ``prompt_level_strict_acc``, ...); a rolling log-likelihood
    metric, logged as ``(loglikelihood, units)``, becomes ``loglikelihood`` plus ``words`` /
    ``bytes``, and such a document also gets ``tokens``, the number of tokens lm-eval scored
    (``count_tokens`` of its text: the model's tokenizer, which is what per-token perplexity needs).
    Lists (IFEval's per-instruction results) are left out: their task-level numbers are in the
    results."""
    units = {"word_perplexity": "words", "byte_perplexity": "bytes", "bits_per_byte": "bytes"}
    out: dict[str, list[dict]] = {}
    for task, rows in samples.items():
        items = []
        for s in sorted(rows, key=lambda r: (str(r.get("filter", "none")), r["doc_id"])):
            item: dict = {"doc_id": int(s["doc_id"]), "filter": str(s.get("filter", "none"))}
            for metric in s.get("metrics") or []:
                value = s.get(metric)
                if metric in units and isinstance(value, list | tuple) and len(value) == 2:
                    item["loglikelihood"] = float(value[0])
                    item[units[metric]] = int(value[1])
                elif isinstance(value, bool | int | float):
                    item[metric] = float(value)
            if "loglikelihood" in item:
                text = s["arguments"][0][0] if s.get("arguments") else s.get("target", "")
                item["tokens"] = int(count_tokens(text))
            items.append(item)
        out[task] = items
    return out


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
    """The ``lm_eval`` module, or a :class:`CapabilityError` naming table5 and the install."""
    try:
        import lm_eval
    except ImportError:
        raise CapabilityError(
            f"table5 (the capabilities jobs) runs lm-evaluation-harness on capabilities.lm_eval_tasks, but it "
            f"is not installed in the environment of {sys.executable}: install it with `{LM_EVAL_INSTALL}` "
            f"(pinned in requirements/main.txt, so `make install` does it; the rule's conda env "
            f"envs/capabilities.yaml has it too), or leave table5 out of report.artefacts"
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


def _local_builder(path: str) -> bool:
    """Whether ``dataset_path`` names one of the ``datasets`` library's packaged builders (json, csv,
    parquet, text, ...), which read local ``data_files`` rather than a hub repository."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return path in _PACKAGED_DATASETS_MODULES


def _data_files(kwargs: dict) -> list[str]:
    """The file paths of a ``data_files`` argument (a path, a list, or a split -> path(s) mapping)."""
    files = (kwargs or {}).get("data_files")
    if files is None:
        return []
    values = files.values() if isinstance(files, dict) else [files]
    out: list[str] = []
    for v in values:
        out += [str(x) for x in v] if isinstance(v, list | tuple) else [str(v)]
    return out


def _task_datasets(tasks: Sequence[str], include: Sequence[str], task_manager) -> list[tuple[str, str, dict]]:
    """(task reference, subtask, merged config) of every leaf task; a subtask with no ``dataset_path``
    (one that builds its data in Python) is an error: nothing could fetch or track its data."""
    out = []
    for i, name in enumerate(tasks):
        ref = _task_ref(i, name)
        for leaf, cfg in _leaf_configs(task_manager, name, ref):
            path = cfg.get("dataset_path")
            if not isinstance(path, str) or not path:
                how = "class" if "class" in cfg else "custom_dataset" if "custom_dataset" in cfg else None
                raise CapabilityError(
                    f"{ref}: subtask {leaf!r} names no Hugging Face dataset (no dataset_path in its lm-eval "
                    f"config {cfg.get('_yaml_path', '(inline)')})"
                    + (f"; it builds its data in Python ({how})" if how else "")
                    + ": the prefetch cannot fetch its data for offline compute nodes"
                )
            out.append((ref, leaf, cfg))
    return out


def lm_eval_datasets(tasks: Sequence[str], include: Sequence[str] = (), task_manager=None) -> list[dict]:
    """The Hugging Face hub datasets that the lm-eval ``tasks`` read, one entry per repository.

    Each entry: ``path`` (dataset_path), ``configs`` (sorted ``{"name": dataset_name, "kwargs":
    dataset_kwargs}``, the arguments lm-eval passes to ``datasets.load_dataset``) and ``tasks`` (the
    ``capabilities.lm_eval_tasks[i]`` that need it). A subtask without a ``dataset_path`` (one that
    builds its data in Python: ``class`` or ``custom_dataset``) cannot be prefetched and is an error.
    Subtasks over local files (a packaged builder such as ``json``) are not hub datasets: see
    :func:`lm_eval_data_files`.
    """
    tm = task_manager or lm_eval_task_manager(include, tasks=tasks)
    repos: dict[str, dict] = {}
    for ref, _leaf, cfg in _task_datasets(tasks, include, tm):
        path = cfg["dataset_path"]
        if _local_builder(path):
            continue
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


def lm_eval_data_files(tasks: Sequence[str], include: Sequence[str] = (), task_manager=None) -> list[str]:
    """The local files that the lm-eval ``tasks`` read (``data_files`` of subtasks whose
    ``dataset_path`` is a packaged builder such as ``json``), sorted; paths as the task configs give
    them (relative to the working directory). The capabilities job takes them as inputs, so that an
    edited item file reruns the check; a listed file that does not exist is an error naming its task."""
    tm = task_manager or lm_eval_task_manager(include, tasks=tasks)
    files: dict[str, str] = {}
    for ref, leaf, cfg in _task_datasets(tasks, include, tm):
        if _local_builder(cfg["dataset_path"]):
            for f in _data_files(cfg.get("dataset_kwargs") or {}):
                files.setdefault(f, f"{ref} (subtask {leaf!r})")
    missing = [f"{f} ({who})" for f, who in files.items() if not Path(f).is_file()]
    if missing:
        raise CapabilityError(
            f"lm-eval task data file(s) not found, relative to the working directory {os.getcwd()}: "
            + "; ".join(missing)
        )
    return sorted(files)


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
    leak: dict | None = None,
) -> dict:
    """lm-evaluation-harness on ``tasks`` (the paper's Table 5), then the leak check; returns each
    task's metrics, the per-item results (:func:`per_item_results`) and the leak summary.

    The tasks (and their datasets, offline on a compute node) and the instructions are loaded before
    the model, so a missing dataset or a bad file stops the job in seconds; lm-eval loads the tasks a
    second time from the same cache (seconds: the Arrow files are memory-mapped). The model is loaded
    once, by lm-eval's ``HFLM`` (with ``peft=`` for an adapter), and the leak check samples from that
    same object.

    ``leak``: None (no leak check) or ``{"instructions": path, "sampling": Sampling, "seed": int,
    "steering_tokens": [...], "class_words": [...], "min_words": int}`` (the tokens and words of
    :func:`leak_vocabulary`; optional ``"batch_size"``, default 64).
    """
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import simple_parse_args_string

    from distalign.modeling.models import load_tokenizer, weights_path

    model_args = lm_eval_model_args(weights_path(model_dir), adapter, dtype)
    # simple_evaluate gives its own TaskManager the model_args as task metadata: so does this one.
    tm = lm_eval_task_manager(include, metadata=simple_parse_args_string(model_args), tasks=tasks)
    subtasks = check_lm_eval_tasks(tasks, include, tm)
    log.info("lm-eval tasks: %s", {t: len(s) for t, s in subtasks.items()})
    instructions = load_instructions(leak["instructions"]) if leak else None
    lm = HFLM(
        pretrained=weights_path(model_dir), peft=adapter, dtype=dtype, batch_size=batch_size, device=device
    )
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=tm, log_samples=True)
    results = {
        t: {k: v for k, v in r.items() if isinstance(v, int | float)} for t, r in res["results"].items()
    }
    out = {
        "tasks": results,
        "subtasks": subtasks,
        "items": per_item_results(res.get("samples") or {}, lambda text: len(lm.tok_encode(text))),
        "limit": limit,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "leak": None,
    }
    if leak:
        tokens, words = list(leak["steering_tokens"]), list(leak["class_words"])
        name = "/".join(Path(adapter).parts[-3:]) if adapter else Path(model_dir).name
        out["leak"] = leak_check(
            lm.model,
            load_tokenizer(model_dir),
            model_dir,
            instructions,
            sampling=leak["sampling"],
            seed=leak["seed"],
            steering_tokens=tokens,
            class_words=words,
            min_words=leak["min_words"],
            batch_size=leak.get("batch_size", 64),
            progress_label=f"leak check {name}",
        )
        out["leak"].update(steering_tokens=tokens, class_words=words, min_words=leak["min_words"])
    return out
