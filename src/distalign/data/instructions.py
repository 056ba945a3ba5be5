"""Files of ordinary requests, ``{"id", "instruction"}`` per JSONL line: table5's leak check
(``capabilities.instructions``) and the replay of ours' steering stage (``training.replay.instructions``)."""

from __future__ import annotations

import json
import os
from pathlib import Path


class InstructionsError(ValueError):
    """An instructions file that cannot be used (names the file and line, or the config key)."""


def load_instructions(path: str | os.PathLike, key: str = "capabilities.instructions") -> list[dict]:
    """Validated ``{id, instruction}`` rows of a JSONL file of ordinary requests (table5's leak check,
    training's replay; ``key``: the config key that names the file, for the error messages)."""
    rows, seen = [], {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise InstructionsError(
            f"{key} = {str(path)!r}: cannot read it ({why}); expected a JSONL "
            f"file of {{'id', 'instruction'}} rows, or null to switch it off"
        ) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InstructionsError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise InstructionsError(f"{where}: expected an object with keys 'id' and 'instruction'")
        text = row.get("instruction")
        if not isinstance(text, str) or not text.strip():
            raise InstructionsError(f"{where}: key 'instruction' must be a non-empty string, got {text!r}")
        rid = str(row.get("id", f"line-{n}"))
        if rid in seen:
            raise InstructionsError(f"{where}: id {rid!r} repeats line {seen[rid]}")
        seen[rid] = n
        rows.append({"id": rid, "instruction": text})
    if not rows:
        raise InstructionsError(f"{path}: no instructions (expected one JSON object per line)")
    return rows
