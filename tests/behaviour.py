"""Behaviour fixtures: SHA-256 of the files a configuration produces, recorded once and compared on every run.

A refactoring must leave generations, labels, metrics and tables byte-identical; the tests that run the tiny
end-to-end configuration and the default data stage compare their files with the hashes recorded in
``tests/fixtures/<name>.sha256`` (first recorded from commit 03eb669, before the package layout changed).

When a change is *meant* to change results (new training, new sampling), re-record with
``DISTALIGN_UPDATE_FIXTURES=1 .venv/bin/python -m pytest <the test>`` and say why in the commit message.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


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


def check(name: str, found: dict[str, str]) -> None:
    """Assert that ``found`` matches the recorded fixture (or re-record it when DISTALIGN_UPDATE_FIXTURES=1)."""
    if os.environ.get("DISTALIGN_UPDATE_FIXTURES") == "1":
        write(name, found)
        return
    expected = read(name)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(p for p in set(expected) & set(found) if expected[p] != found[p])
    assert not (missing or extra or changed), (
        f"behaviour fixture {name!r} differs: {len(changed)} changed {changed[:8]}, {len(missing)} missing "
        f"{missing[:8]}, {len(extra)} new {extra[:8]} (re-record with DISTALIGN_UPDATE_FIXTURES=1 only when the "
        f"change is meant to change results)"
    )
