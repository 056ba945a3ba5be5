"""Hugging Face weights on a cluster: the ``hf`` config section as environment variables of every
job, and the login-node prefetch of hub snapshots.

:func:`hf_environment` turns ``hf`` into HF_HOME, HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE;
:func:`prefetch_hf_model` downloads a hub snapshot on the login node (``snakemake prefetch_models
--cores 1``) and writes a marker file.

Command line (used by the ``prefetch_model`` rule, which needs a fresh interpreter because
huggingface_hub reads HF_HUB_OFFLINE once, at import)::

    python -m distalign.cluster.prefetch prefetch REPO_ID [--revision REV] [--no-download] --marker FILE.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from distalign.core.config import with_schema_defaults
from distalign.evaluation.judge_server import judge_starts_server, log_tail


def hf_environment(hf_cfg: Mapping | None) -> dict[str, str]:
    """Environment variables for jobs from the ``hf`` config section.

    home (path or null = keep HF_HOME / ~/.cache/huggingface) -> HF_HOME (absolute);
    offline (bool) -> HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE = 1 / 0.
    """
    cfg = with_schema_defaults({"hf": hf_cfg}, "hf")
    env: dict[str, str] = {}
    if cfg["home"]:
        env["HF_HOME"] = str(Path(os.path.expandvars(str(cfg["home"]))).expanduser().resolve())
    flag = "1" if cfg["offline"] else "0"
    env["HF_HUB_OFFLINE"] = flag
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
        marker = Path(marker)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(marker.suffix + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(marker)
    return info


PREFETCH_JUDGE = "judge"


def prefetch_specs(config: Mapping) -> dict[str, tuple[str, str | None]]:
    """name -> (hub id, revision) of every Hugging Face model a run needs (its models, and the judge's
    model under the name ``judge`` when the label job starts its own server)."""
    out: dict[str, tuple[str, str | None]] = {}
    for name in config["run"]["models"]:
        spec = config["models"][name]
        if spec["source"] == "hf":
            out[name] = (spec["path_or_id"], spec.get("revision"))
    if judge_starts_server(config):
        out[PREFETCH_JUDGE] = (config["judge"]["llm"]["model"], None)
    return out


def prefetch_markers(config: Mapping, model: str, pattern: str) -> list[str]:
    """Input of prepare_model: the prefetch marker of a Hugging Face model (``pattern`` has ``{name}``)."""
    return [pattern.format(name=model)] if config["models"][model]["source"] == "hf" else []


def run_prefetch(repo_id: str, revision: str | None, download: bool, marker: str, log: str) -> None:
    """Prefetch in a fresh interpreter (HF_HUB_OFFLINE is read at import), output to ``log``."""
    cmd = [sys.executable, "-m", "distalign.cluster.prefetch", "prefetch", repo_id, "--marker", str(marker)]
    if revision:
        cmd += ["--revision", revision]
    if not download:
        cmd += ["--no-download"]
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"prefetch of {repo_id!r} failed (exit {proc.returncode}):\n{log_tail(log, 15)}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distalign.cluster.prefetch", description=__doc__.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prefetch", help="download (or check) a Hugging Face snapshot and write a marker")
    p.add_argument("repo_id")
    p.add_argument("--revision", default=None)
    p.add_argument("--no-download", action="store_true", help="only check the local cache")
    p.add_argument("--marker", required=True)
    args = ap.parse_args(argv)
    info = prefetch_hf_model(
        args.repo_id, revision=args.revision, download=not args.no_download, marker=args.marker
    )
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    if "prefetch" in sys.argv[1:2] and "--no-download" not in sys.argv:
        # huggingface_hub reads these at import; a download must not run in offline mode.
        os.environ["HF_HUB_OFFLINE"] = "0"
        os.environ["TRANSFORMERS_OFFLINE"] = "0"
    sys.exit(main())
