"""Behaviour fixtures: SHA-256 of the files a configuration produces, recorded once and compared on every run.

A refactoring must leave generations, labels, metrics and tables byte-identical; the tests that run the tiny
end-to-end configuration and the default data stage compare their files with the hashes recorded in
``tests/fixtures/<name>.sha256`` (first recorded from commit 03eb669, before the package layout changed).

When a change is *meant* to change results (new training, new sampling), re-record with
``DISTALIGN_UPDATE_FIXTURES=1 .venv/bin/python -m pytest <the test>`` and say why in the commit message.

Files computed by the network (generations, labels, probes, metrics, tables) are byte-identical run after run
on one machine, but not across CPUs: torch and vLLM pick their kernels by the CPU's vector extensions, and the
last bits of a logit decide a sampled token now and then (the tiny run recorded on an earlier machine differed
in 28 of its 54 files on an AMD EPYC with AVX-512 BF16, at the recording commit as at the next one, 2026-12-07).
Such a fixture (``per_machine=True``) is therefore kept per machine, ``tests/fixtures/<name>.<machine>.sha256``,
where ``<machine>`` digests what picks the kernels (:func:`machine`). On a machine without its own record the
check compares what no kernel computes (targets, prompts, datasets) with another machine's record and then
skips, saying how to record this machine; byte-identity on one machine is held by the determinism tests anyway.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


# The data stage's folders of results/: no kernel computes them, so they are the same bytes on every machine.
DATA_STAGE = ("targets", "prompts", "datasets")


MACHINE_INDEPENDENT = tuple(f"results/{d}/" for d in DATA_STAGE)


def machine() -> str:
    """12 hex digits naming what picks the float kernels: the architecture, torch's version and kernel
    level, and the CPU's vector extensions (AVX*, AMX*, FMA*)."""
    import platform

    import torch

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags |= {f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma"))}
    except OSError:  # not Linux: the kernel level alone
        pass
    text = " ".join(
        [platform.machine(), torch.__version__, torch.backends.cpu.get_cpu_capability(), *sorted(flags)]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def digests(
    root: Path, subdirs: tuple[str, ...], suffixes: tuple[str, ...] = (".jsonl", ".json", ".csv", ".md")
):
    """Relative path -> sha256 of every file under ``root/results/<subdir>`` with one of the suffixes."""
    out = {}
    for sub in subdirs:
        for f in sorted((root / "results" / sub).rglob("*")):
            if f.is_file() and f.suffix in suffixes and not f.name.startswith("."):
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def write(name: str, found: dict[str, str]) -> Path:
    path = FIXTURES / f"{name}.sha256"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{h}  {p}\n" for p, h in sorted(found.items())))
    return path


def read(name: str) -> dict[str, str]:
    lines = (FIXTURES / f"{name}.sha256").read_text().splitlines()
    return {p: h for h, p in (line.split("  ", 1) for line in lines if line.strip())}


def check(name: str, found: dict[str, str], per_machine: bool = False) -> None:
    """Assert that ``found`` matches the recorded fixture (or re-record it when DISTALIGN_UPDATE_FIXTURES=1).

    ``per_machine``: the fixture is this machine's (module docstring); without one, compare the files no kernel
    computes with another machine's record, then skip."""
    import pytest

    here = machine() if per_machine else None
    key = f"{name}.{here}" if per_machine else name
    if os.environ.get("DISTALIGN_UPDATE_FIXTURES") == "1":
        write(key, found)
        return
    if per_machine and not (FIXTURES / f"{key}.sha256").exists():
        others = sorted(FIXTURES.glob(f"{name}.*.sha256"))
        if others:
            other = others[0].name.removesuffix(".sha256")
            _compare(
                other,
                {p: h for p, h in read(other).items() if p.startswith(MACHINE_INDEPENDENT)},
                {p: h for p, h in found.items() if p.startswith(MACHINE_INDEPENDENT)},
            )
        pytest.skip(
            f"no behaviour fixture {name!r} for this machine ({here}; tests/behaviour.py): record it with "
            f"DISTALIGN_UPDATE_FIXTURES=1 at a commit whose results are trusted"
        )
    _compare(key, read(key), found)


def _compare(name: str, expected: dict[str, str], found: dict[str, str]) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(p for p in set(expected) & set(found) if expected[p] != found[p])
    assert not (missing or extra or changed), (
        f"behaviour fixture {name!r} differs: {len(changed)} changed {changed[:8]}, {len(missing)} missing "
        f"{missing[:8]}, {len(extra)} new {extra[:8]} (re-record with DISTALIGN_UPDATE_FIXTURES=1 only when the "
        f"change is meant to change results)"
    )
