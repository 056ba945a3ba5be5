"""Census tables and per-context target distributions P*(a|c).

Census CSV schema (ours): ``occupation, group, male, female, year, source``. Counts may be in
any unit (the US table is in thousands); only their ratio is used. For a "real" target every
class of the attribute must be a count column of the census table; "even" targets are exactly
1/K unless ``round_even`` asks for the authors' rounding.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .attributes import Attribute

CENSUS_COLUMNS = ["occupation", "group", "male", "female", "year", "source"]


class CensusError(ValueError):
    """A census table is malformed; the message names the file, row and column."""


@dataclass(frozen=True)
class CensusRow:
    occupation: str
    group: str
    counts: dict[str, float]
    year: str
    source: str


def load_census(path: str | os.PathLike) -> list[CensusRow]:
    """Read and check a census CSV. Row numbers in errors are file line numbers."""
    path = Path(path)
    if not path.exists():
        raise CensusError(f"{path}: census file not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("occupation", "group", "year", "source") if c not in header]
        count_cols = [c for c in header if c not in ("occupation", "group", "year", "source")]
        if missing:
            raise CensusError(f"{path}: missing column(s) {missing}; expected columns {CENSUS_COLUMNS} "
                              f"(got {header})")
        if not count_cols:
            raise CensusError(f"{path}: no count columns (e.g. male, female) besides {CENSUS_COLUMNS[:1]}")
        rows: list[CensusRow] = []
        seen: dict[str, int] = {}
        for lineno, rec in enumerate(reader, start=2):
            if None in rec or any(v is None for v in rec.values()):
                raise CensusError(f"{path}, row {lineno}: expected {len(header)} fields, got a different number")
            occ = rec["occupation"].strip()
            if not occ:
                raise CensusError(f"{path}, row {lineno}: empty occupation")
            if occ in seen:
                raise CensusError(f"{path}, row {lineno}: duplicate occupation {occ!r} (first at row {seen[occ]})")
            seen[occ] = lineno
            counts = {}
            for col in count_cols:
                raw = rec[col].strip()
                try:
                    val = float(raw)
                except ValueError:
                    raise CensusError(f"{path}, row {lineno}, column {col!r}: expected a non-negative number, "
                                      f"got {raw!r}") from None
                if not math.isfinite(val) or val < 0:
                    raise CensusError(f"{path}, row {lineno}, column {col!r}: expected a non-negative number, "
                                      f"got {raw!r}")
                counts[col] = val
            if sum(counts.values()) <= 0:
                raise CensusError(f"{path}, row {lineno}: all counts are zero for {occ!r}")
            rows.append(CensusRow(occ, rec["group"].strip(), counts, rec["year"].strip(), rec["source"].strip()))
    if not rows:
        raise CensusError(f"{path}: no data rows")
    return rows


class TargetError(ValueError):
    """Target distributions cannot be built or do not sum to 1."""


def even_target(k: int, round_even: int | None = None) -> list[float]:
    p = 1.0 / k
    if round_even is not None:
        p = round(p, round_even)
    return [p] * k


def check_distribution(probs, where: str, tol: float = 1e-6) -> None:
    if any((not math.isfinite(p)) or p < 0 or p > 1 for p in probs):
        raise TargetError(f"{where}: every share must lie in [0, 1], got {list(probs)}")
    s = sum(probs)
    if abs(s - 1.0) > tol:
        raise TargetError(f"{where}: shares must sum to 1, got {s:.6f} ({list(probs)})")


def build_targets(census: list[CensusRow], attribute: Attribute, target: str, *,
                  round_even: int | None = None, census_name: str = "census") -> list[dict]:
    """One row per context: ``{context_id, context, group, target: [p_1..p_K]}`` in class order."""
    k = len(attribute)
    tol = 1e-6 if round_even is None else k * 0.5 * 10 ** (-round_even) + 1e-12
    rows = []
    for i, r in enumerate(census):
        if target == "even":
            probs = even_target(k, round_even)
        elif target == "real":
            missing = [n for n in attribute.names if n not in r.counts]
            if missing:
                raise TargetError(f"{census_name}: a real target for attribute {attribute.name!r} needs count "
                                  f"columns {attribute.names}; missing {missing}")
            total = sum(r.counts[n] for n in attribute.names)
            if total <= 0:
                raise TargetError(f"{census_name}, {r.occupation!r}: the counts of {attribute.names} sum to 0")
            probs = [r.counts[n] / total for n in attribute.names]
        else:
            raise TargetError(f"unknown target kind {target!r} (expected 'real' or 'even')")
        check_distribution(probs, f"{census_name}, context {r.occupation!r}", tol=tol)
        rows.append({"context_id": i, "context": r.occupation, "group": r.group, "target": probs})
    return rows


def write_targets_csv(path, rows: list[dict], attribute: Attribute) -> None:
    from .io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["context_id", "context", "group", *attribute.names])
        for r in rows:
            w.writerow([r["context_id"], r["context"], r["group"], *[repr(float(p)) for p in r["target"]]])


def read_targets_csv(path, attribute: Attribute | None = None) -> list[dict]:
    """Read a targets table written by ``write_targets_csv`` (checks that each row sums to 1)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        classes = [c for c in (reader.fieldnames or []) if c not in ("context_id", "context", "group")]
        if attribute is not None and classes != attribute.names:
            raise TargetError(f"{path}: columns {classes} do not match attribute classes {attribute.names}")
        rows = []
        for lineno, rec in enumerate(reader, start=2):
            try:
                probs = [float(rec[c]) for c in classes]
            except (TypeError, ValueError):
                raise TargetError(f"{path}, row {lineno}: non-numeric share in {[rec[c] for c in classes]}") from None
            check_distribution(probs, f"{path}, row {lineno}", tol=len(classes) * 5e-3)
            rows.append({"context_id": int(rec["context_id"]), "context": rec["context"], "group": rec["group"],
                         "target": probs})
    return rows
