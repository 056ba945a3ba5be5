"""Hugging Face weights and datasets on a cluster: the ``hf`` config section as environment variables
of every job, and the login-node prefetch of hub snapshots and of the lm-eval tasks' datasets.

:func:`hf_environment` turns ``hf`` into HF_HOME, HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and
TRANSFORMERS_OFFLINE; :func:`prefetch_hf_model` downloads a hub snapshot on the login node
(``snakemake prefetch_models --cores 1``) and writes a marker file.

With table5 in report.artefacts the prefetch also fills the datasets cache (HF_HOME/datasets)
for the configured lm-eval tasks (:func:`lm_eval_prefetch_specs`, from lm-eval's own task configs:
one job per dataset repository, :func:`prefetch_lm_eval_dataset`), then builds the tasks with
lm-eval once online (their helpers' own downloads, e.g. IFEval's NLTK data) and once offline, as the
capabilities job will (:func:`prefetch_lm_eval_tasks`). ``datasets`` offline reads its Arrow cache
(HF_HOME/datasets), not the hub snapshots: hence ``load_dataset`` here with the arguments lm-eval uses.

Command line (used by the prefetch rules, which need a fresh interpreter because huggingface_hub
and datasets read HF_HUB_OFFLINE / HF_DATASETS_OFFLINE once, at import)::

    python -m distalign.cluster.prefetch prefetch REPO_ID [--revision REV] [--no-download] --marker FILE.json
    python -m distalign.cluster.prefetch dataset SPEC.json [--no-download] --marker FILE.json
    python -m distalign.cluster.prefetch lm-eval-tasks SPEC.json [--no-download] --marker FILE.json

``--no-download`` (hf.prefetch false) only checks the cache; for the last two it runs offline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from distalign.core.config import with_schema_defaults
from distalign.evaluation.judge_server import judge_starts_server, log_tail


def hf_environment(hf_cfg: Mapping | None) -> dict[str, str]:
    """Environment variables for jobs from the ``hf`` config section.

    home (path or null = keep HF_HOME / ~/.cache/huggingface) -> HF_HOME (absolute);
    offline (bool) -> HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and TRANSFORMERS_OFFLINE = 1 / 0
    (datasets reads HF_DATASETS_OFFLINE before HF_HUB_OFFLINE: a stray HF_DATASETS_OFFLINE=0 in the
    user's shell would otherwise send the capabilities job to the network).
    """
    cfg = with_schema_defaults({"hf": hf_cfg}, "hf")
    env: dict[str, str] = {}
    if cfg["home"]:
        env["HF_HOME"] = str(Path(os.path.expandvars(str(cfg["home"]))).expanduser().resolve())
    flag = "1" if cfg["offline"] else "0"
    env["HF_HUB_OFFLINE"] = flag
    env["HF_DATASETS_OFFLINE"] = flag
    env["TRANSFORMERS_OFFLINE"] = flag
    return env


def prefetch_hf_model(
    repo_id: str,
    *,
    revision: str | None = None,
    download: bool = True,
    marker: str | os.PathLike | None = None,
) -> dict:
    """Make ``repo_id`` available in the local hub cache; write a JSON marker; return its content.

    ``download=False`` only checks the cache (air-gapped login nodes). Must run in a process where
    HF_HUB_OFFLINE is not 1 when downloading (the CLI below forces that).
    """
    from huggingface_hub import constants, snapshot_download

    t0 = time.time()
    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=not download)
    except Exception as err:  # noqa: BLE001 - re-raised with what to do
        how = (
            "set HF_TOKEN for gated models (e.g. meta-llama) and check the network of this node"
            if download
            else "hf.prefetch is false: fill the cache another way or set hf.prefetch: true"
        )
        raise RuntimeError(
            f"cannot fetch Hugging Face model {repo_id!r} (revision {revision}) into "
            f"{constants.HF_HUB_CACHE}: {err}\n{how}"
        ) from err
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    info = {
        "repo_id": repo_id,
        "revision": revision,
        "path": str(path),
        "hf_hub_cache": str(constants.HF_HUB_CACHE),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "downloaded": bool(download),
        "seconds": round(time.time() - t0, 1),
    }
    if marker:
        _write_marker(marker, info)
    return info


def _write_marker(marker: str | os.PathLike, info: Mapping) -> None:
    marker = Path(marker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(marker.suffix + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    tmp.replace(marker)


PREFETCH_JUDGE = "judge"


def prefetch_specs(config: Mapping) -> dict[str, tuple[str, str | None]]:
    """name -> (hub id, revision) of every Hugging Face model a run needs (its models, and the judge's
    model under the name ``judge`` when the label job starts its own server)."""
    out: dict[str, tuple[str, str | None]] = {}
    for name in config["run"]["models"]:
        spec = config["models"][name]
        if spec["source"] == "hf":
            out[name] = (spec["path_or_id"], spec.get("revision"))
    if judge_starts_server(config) and not is_local_model(config["judge"]["llm"]["model"]):
        out[PREFETCH_JUDGE] = (config["judge"]["llm"]["model"], None)
    return out


def is_local_model(name: str) -> bool:
    """Whether ``judge.llm.model`` names a local model folder (vLLM's ``--model`` takes either) rather
    than a hub id: an existing directory, or a spelling no hub id has (absolute or ``./``/``~`` relative,
    or more than one ``/``; a hub id is ``name`` or ``org/name``). A local folder has nothing to fetch."""
    return Path(name).expanduser().is_dir() or name.startswith(("/", ".", "~")) or name.count("/") > 1


def prefetch_markers(config: Mapping, model: str, pattern: str) -> list[str]:
    """Input of prepare_model: the prefetch marker of a Hugging Face model (``pattern`` has ``{name}``)."""
    return [pattern.format(name=model)] if config["models"][model]["source"] == "hf" else []


def run_prefetch(repo_id: str, revision: str | None, download: bool, marker: str, log: str) -> None:
    """Prefetch in a fresh interpreter (HF_HUB_OFFLINE is read at import), output to ``log``."""
    args = ["prefetch", repo_id] + (["--revision", revision] if revision else [])
    _run_cli(args, download, marker, log, f"prefetch of {repo_id!r}")


def _run_cli(args: list[str], download: bool, marker: str, log: str, what: str) -> None:
    cmd = [sys.executable, "-m", "distalign.cluster.prefetch", *args, "--marker", str(marker)]
    if not download:
        cmd += ["--no-download"]
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{log_tail(log, 15)}")


# ---- lm-eval datasets --------------------------------------------------------------------------


def lm_eval_prefetch_wanted(config: Mapping) -> bool:
    """Whether ``prefetch_models`` fetches the lm-eval tasks' hub datasets: table5 is in
    report.artefacts (what `all` builds). Tasks over local files (the CPU default's) need nothing. A
    capabilities job asked for by path depends on the same markers, so their prefetch jobs run before
    it either way (on the submit host)."""
    return "table5" in config["report"]["artefacts"]


def dataset_marker_name(path: str) -> str:
    """Marker file stem of a dataset repository: ``cais/mmlu`` -> ``cais--mmlu`` (hub cache spelling)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "--", path).strip("-.")
    if not name or not name[0].isalnum():
        name = f"x{name}"
    return name


def lm_eval_prefetch_specs(config: Mapping, task_manager=None) -> dict[str, dict]:
    """marker name -> {path, configs, tasks} of every dataset repository the lm-eval tasks read.

    From lm-eval's task configs (:func:`distalign.evaluation.capabilities.lm_eval_datasets`; pass
    ``task_manager`` to reuse an index already built); raises CapabilityError naming
    ``capabilities.lm_eval_tasks[i]`` (or the missing lm-eval install)."""
    from distalign.evaluation.capabilities import lm_eval_datasets

    caps = config["capabilities"]
    out: dict[str, dict] = {}
    for repo in lm_eval_datasets(caps["lm_eval_tasks"], caps.get("lm_eval_include") or (), task_manager):
        name = dataset_marker_name(repo["path"])
        if name in out:  # two spellings of one stem ("a/b", "a--b"): keep both apart
            name = f"{name}-{len(out)}"
        out[name] = repo
    return out


def _hint(download: bool) -> str:
    return (
        "set HF_TOKEN for gated datasets and check the network of this node"
        if download
        else "hf.prefetch is false: fill the cache another way or set hf.prefetch: true"
    )


def prefetch_lm_eval_dataset(spec: Mapping, *, download: bool = True, marker=None) -> dict:
    """Load every config of one dataset repository with ``datasets.load_dataset`` as lm-eval does
    (online when ``download``, which fills HF_HOME/datasets; else from the cache only); write a marker.

    Must run in a process where HF_HUB_OFFLINE / HF_DATASETS_OFFLINE match ``download`` (the CLI
    below sets them before datasets is imported)."""
    import datasets

    t0 = time.time()
    configs, cache = [], datasets.config.HF_DATASETS_CACHE
    for config in spec["configs"]:
        try:
            ds = datasets.load_dataset(spec["path"], config["name"], **(config.get("kwargs") or {}))
        except Exception as err:  # noqa: BLE001 - re-raised with what to do
            raise RuntimeError(
                f"cannot {'fetch' if download else 'find'} Hugging Face dataset {spec['path']!r} "
                f"(config {config['name']!r}) {'into' if download else 'in'} {cache}, "
                f"needed by {', '.join(spec.get('tasks') or ['?'])}: {type(err).__name__}: {err}\n"
                f"{_hint(download)}"
            ) from err
        configs.append({**config, "splits": {split: len(d) for split, d in ds.items()}})
    info = {
        "path": spec["path"],
        "configs": configs,
        "tasks": list(spec.get("tasks") or []),
        "hf_datasets_cache": str(datasets.config.HF_DATASETS_CACHE),
        "datasets_version": datasets.__version__,
        "downloaded": bool(download),
        "seconds": round(time.time() - t0, 1),
    }
    if marker:
        _write_marker(marker, info)
    return info


def prefetch_lm_eval_tasks(spec: Mapping, *, download: bool = True, marker=None) -> dict:
    """Build the lm-eval tasks ``spec["tasks"]`` (with ``spec["include"]``) with lm-eval, then check
    that they build offline in a fresh interpreter, exactly as the capabilities job will.

    The online build (``download``) runs the tasks' helpers on this node, so that their own downloads
    (IFEval's NLTK punkt_tab) land in the shared caches; the offline check fails with the message
    of :func:`~distalign.evaluation.capabilities.check_lm_eval_tasks` if anything is still missing."""
    from distalign.evaluation.capabilities import check_lm_eval_tasks

    t0 = time.time()
    tasks, include = list(spec["tasks"]), list(spec.get("include") or [])
    subtasks = check_lm_eval_tasks(tasks, include)
    if download:  # the check offline, in a fresh interpreter (datasets reads the flags at import)
        with tempfile.TemporaryDirectory() as tmp:
            spec_file = Path(tmp) / "spec.json"
            spec_file.write_text(json.dumps({"tasks": tasks, "include": include}))
            _run_cli(
                ["lm-eval-tasks", str(spec_file)],
                False,
                Path(tmp) / "offline.json",
                Path(tmp) / "offline.log",
                "the lm-eval tasks loaded online, but their offline check",
            )
    info = {
        "tasks": tasks,
        "include": include,
        "subtasks": {t: len(s) for t, s in subtasks.items()},
        "checked_offline": True,
        "downloaded": bool(download),
        "seconds": round(time.time() - t0, 1),
    }
    if marker:
        _write_marker(marker, info)
    return info


def run_lm_eval_prefetch(command: str, spec: Mapping, download: bool, marker: str, log: str) -> None:
    """``dataset`` or ``lm-eval-tasks`` prefetch in a fresh interpreter, output to ``log``."""
    spec_file = Path(f"{marker}.spec.json")
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec, default=str))
    what = f"prefetch of dataset {spec['path']!r}" if command == "dataset" else "the lm-eval task check"
    try:
        _run_cli([command, str(spec_file)], download, marker, log, what)
    finally:
        spec_file.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distalign.cluster.prefetch", description=__doc__.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prefetch", help="download (or check) a Hugging Face snapshot and write a marker")
    p.add_argument("repo_id")
    p.add_argument("--revision", default=None)
    for name, help_ in (
        ("dataset", "load (or check) every config of one lm-eval dataset repository; SPEC: path, configs"),
        ("lm-eval-tasks", "build the lm-eval tasks online and offline; SPEC: tasks, include"),
    ):
        q = sub.add_parser(name, help=help_)
        q.add_argument("spec", help="JSON file")
    for q in sub.choices.values():
        q.add_argument("--no-download", action="store_true", help="only check the local cache")
        q.add_argument("--marker", required=True)
    args = ap.parse_args(argv)
    download = not args.no_download
    if args.cmd == "prefetch":
        info = prefetch_hf_model(args.repo_id, revision=args.revision, download=download, marker=args.marker)
    else:
        spec = json.loads(Path(args.spec).read_text())
        fn = prefetch_lm_eval_dataset if args.cmd == "dataset" else prefetch_lm_eval_tasks
        info = fn(spec, download=download, marker=args.marker)
    print(json.dumps(info, default=str))
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1:2]
    if cmd == ["prefetch"] and "--no-download" not in sys.argv:
        # huggingface_hub reads these at import; a download must not run in offline mode.
        os.environ["HF_HUB_OFFLINE"] = "0"
        os.environ["TRANSFORMERS_OFFLINE"] = "0"
    elif cmd in (["dataset"], ["lm-eval-tasks"]):
        # datasets reads these at import: online to download, offline (as the compute nodes) to check.
        flag = "1" if "--no-download" in sys.argv else "0"
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ[var] = flag
    sys.exit(main())
