"""Census tables and per-context target distributions P*(a|c).

Census CSV schema (ours): ``occupation, group, male, female, year, source``. Counts may be in
any unit (the US table is in thousands); only their ratio is used. For a "real" target the count
columns of the census table must be exactly the classes of the attribute; "even" targets are
exactly 1/K unless ``round_even`` asks for the authors' rounding.

``check_run_inputs`` runs these checks (and the template bank's) when Snakemake builds the DAG,
so a bad census row stops the run before any job starts.
"""

from __future__ import annotations

import csv
import io
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from distalign.core.attributes import Attribute, attribute_of_dataset
from distalign.core.io import read_utf8

CENSUS_COLUMNS = ["occupation", "group", "male", "female", "year", "source"]


META_COLUMNS = ("occupation", "group", "year", "source")


class CensusError(ValueError):
    """A census table is malformed; the message names the file, row and column."""


@dataclass(frozen=True)
class CensusRow:
    occupation: str
    group: str
    counts: dict[str, float]
    year: str
    source: str
    file: str = ""  # the census file and the line the row starts on, for later errors
    line: int = 0


def occupation_key(name: str) -> str:
    """What makes two occupation titles the same context: equal after Unicode compatibility
    normalisation (NFKC: "Café" typed as e + combining accent, or with a no-break space, is "Café"),
    case folding and collapsing runs of whitespace."""
    return " ".join(unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold()).split())


def _records(path: Path, text: str):
    """(file line the record starts on, fields) per non-blank CSV record.

    ``csv.reader`` counts lines as it reads (``line_num``), so line numbers stay file line numbers
    across blank lines and quoted fields with line breaks, which ``enumerate`` over records gets wrong.
    A record whose cells are all empty (a spreadsheet's formatted but empty row: ",,,,,") is a blank
    line too.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    end = 0
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            hint = "; a quote opened on this row is never closed" if "end of data" in str(err) else ""
            raise CensusError(f"{path}, row {start}: not valid CSV ({err}){hint}") from None
        end = reader.line_num
        if any(f.strip() for f in fields):
            yield start, fields


def load_census(path: str | os.PathLike) -> list[CensusRow]:
    """Read and check a census CSV. Row numbers in errors are file line numbers.

    What a spreadsheet writes is read as follows (decisions):

    - Encoding: UTF-8, with or without the byte-order mark ("CSV UTF-8" in Excel). Any other
      encoding (Latin-1, Windows-1252: Excel's plain "CSV" on Windows) is an error naming the line
      and the byte, with the fix "save as UTF-8": we do not guess, because any bytes decode as
      Latin-1 and a wrong guess would change occupation titles, which go verbatim into prompts.
    - Blank lines, and rows whose cells are all empty, are skipped.
    - Column names are stripped of surrounding spaces; a name given twice is an error (a reader
      keeping one of the two would drop counts). Columns with an empty name (a trailing comma on
      every line) are ignored when all their cells are empty, and an error otherwise.
    - Every column other than occupation, group, year and source is a count column; which of them
      a target uses is checked where targets are built (``build_targets``: a real target needs the
      count columns to be exactly the attribute's classes).
    - Occupations that are equal after ``occupation_key`` (case, spacing, Unicode form) are
      duplicates; an occupation with a control character (a line break from a quoted multi-line
      cell, a tab) is an error: prompts hold it verbatim, and the paraphraser's check that a reply
      line contains the occupation could never pass.
    """
    path = Path(path)
    if not path.exists():
        raise CensusError(f"{path}: census file not found")
    records = _records(path, read_utf8(path, CensusError))
    header_line, raw_header = next(records, (1, []))
    header = [h.strip() for h in raw_header]
    if len(header) == 1 and any(sep in header[0] for sep in (";", "\t")):
        sep = ";" if ";" in header[0] else "\t"
        raise CensusError(
            f"{path}, row {header_line}: the columns are separated by {sep!r}; expected commas "
            f"(save as 'CSV UTF-8 (comma delimited)')"
        )
    named = [h for h in header if h]
    twice = sorted({h for h in named if named.count(h) > 1})
    if twice:
        raise CensusError(f"{path}, row {header_line}: column(s) {twice} appear more than once in the header")
    missing = [c for c in META_COLUMNS if c not in header]
    if missing:
        raise CensusError(
            f"{path}: missing column(s) {missing}; expected columns {CENSUS_COLUMNS} (got {header})"
        )
    count_cols = [c for c in named if c not in META_COLUMNS]
    if not count_cols:
        raise CensusError(f"{path}: no count columns (e.g. male, female) besides {list(META_COLUMNS)}")
    rows: list[CensusRow] = []
    seen: dict[str, tuple[int, str]] = {}
    for lineno, fields in records:
        if len(fields) != len(header):
            hint = (
                " (a trailing comma?)"
                if len(fields) > len(header) and not any(f.strip() for f in fields[len(header) :])
                else ""
            )
            raise CensusError(f"{path}, row {lineno}: expected {len(header)} fields, got {len(fields)}{hint}")
        for i, (name, value) in enumerate(zip(header, fields, strict=True)):
            if not name and value.strip():
                raise CensusError(
                    f"{path}, row {lineno}: column {i + 1} has no name in the header "
                    f"(row {header_line}) but holds {value!r}"
                )
        rec = {name: value for name, value in zip(header, fields, strict=True) if name}
        occ = rec["occupation"].strip()
        if not occ:
            raise CensusError(f"{path}, row {lineno}: empty occupation")
        if any(unicodedata.category(ch) == "Cc" for ch in occ):
            raise CensusError(
                f"{path}, row {lineno}: occupation {occ!r} contains a control character "
                f"(a line break or tab in the cell?)"
            )
        key = occupation_key(occ)
        if key in seen:
            first_line, first = seen[key]
            # two spellings that print alike (NFC "Café" and NFD "Cafe\u0301") are shown escaped
            show = (
                ascii
                if first != occ and unicodedata.normalize("NFC", first) == unicodedata.normalize("NFC", occ)
                else repr
            )
            same = "" if first == occ else f" as {show(first)}; case, spacing and Unicode form do not count"
            raise CensusError(
                f"{path}, row {lineno}: duplicate occupation {show(occ)} (first at row {first_line}{same})"
            )
        seen[key] = (lineno, occ)
        counts = {}
        for col in count_cols:
            raw = rec[col].strip()
            try:
                val = float(raw)
            except ValueError:
                raise CensusError(
                    f"{path}, row {lineno}, column {col!r}: expected a non-negative number, got {raw!r}"
                ) from None
            if not math.isfinite(val) or val < 0:
                raise CensusError(
                    f"{path}, row {lineno}, column {col!r}: expected a non-negative number, got {raw!r}"
                )
            counts[col] = val
        if sum(counts.values()) <= 0:
            raise CensusError(f"{path}, row {lineno}: all counts are zero for {occ!r}")
        rows.append(
            CensusRow(
                occ,
                rec["group"].strip(),
                counts,
                rec["year"].strip(),
                rec["source"].strip(),
                file=str(path),
                line=lineno,
            )
        )
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


def build_targets(
    census: list[CensusRow],
    attribute: Attribute,
    target: str,
    *,
    round_even: int | None = None,
    census_name: str = "census",
) -> list[dict]:
    """One row per context: ``{context_id, context, group, target: [p_1..p_K]}`` in class order."""
    k = len(attribute)
    tol = 1e-6 if round_even is None else k * 0.5 * 10 ** (-round_even) + 1e-12
    rows = []
    for i, r in enumerate(census):
        where = r.file or census_name
        if target == "even":
            probs = even_target(k, round_even)
        elif target == "real":
            missing = [n for n in attribute.names if n not in r.counts]
            if missing:
                raise TargetError(
                    f"{where}: a real target for attribute {attribute.name!r} needs count "
                    f"columns {attribute.names}; missing {missing}"
                )
            extra = [c for c in r.counts if c not in attribute.names]
            if extra:
                raise TargetError(
                    f"{where}: column {extra[0]!r} is not a class of attribute {attribute.name!r} "
                    f"(classes {attribute.names}); a real target uses exactly the class columns, so "
                    f"remove {extra} or keep one census table per attribute"
                )
            total = sum(r.counts[n] for n in attribute.names)
            if total <= 0:
                raise TargetError(
                    f"{where}, row {r.line}, {r.occupation!r}: the counts of {attribute.names} sum to 0"
                )
            probs = [r.counts[n] / total for n in attribute.names]
        else:
            raise TargetError(f"unknown target kind {target!r} (expected 'real' or 'even')")
        check_distribution(probs, f"{census_name}, context {r.occupation!r}", tol=tol)
        rows.append({"context_id": i, "context": r.occupation, "group": r.group, "target": probs})
    return rows


def write_targets_csv(path, rows: list[dict], attribute: Attribute) -> None:
    from distalign.core.io import atomic_path

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
                raise TargetError(
                    f"{path}, row {lineno}: non-numeric share in {[rec[c] for c in classes]}"
                ) from None
            check_distribution(probs, f"{path}, row {lineno}", tol=len(classes) * 5e-3)
            rows.append(
                {
                    "context_id": int(rec["context_id"]),
                    "context": rec["context"],
                    "group": rec["group"],
                    "target": probs,
                }
            )
    return rows


class RunInputError(ValueError):
    """The input files of a run (census tables, template bank) are bad; one line per problem."""


def check_run_inputs(config: dict) -> None:
    """Check the census tables and the template bank a run reads, before any job is scheduled.

    For every dataset of ``run.datasets`` (and the dataset its adapters come from) the census is
    loaded and the dataset's targets are built (so a real target meets its attribute's classes);
    the template bank is loaded and must have templates for each (dataset, task) of the run that
    some run method applies to. Raises one ``RunInputError`` listing every problem; costs a few
    milliseconds (tables of tens of rows, one small YAML file).
    """
    from distalign.core.config import adapter_dataset, dataset_applies
    from distalign.data.prompts import TemplateError, load_templates, templates_for

    problems: list[str] = []
    censuses: dict[str, list[CensusRow] | None] = {}
    names = [n for d in config["run"]["datasets"] for n in (d, adapter_dataset(config, d))]
    for name in dict.fromkeys(names):
        ds = config["datasets"][name]
        path = config["census"][ds["census"]]
        if path not in censuses:
            try:
                censuses[path] = load_census(path)
            except CensusError as err:
                censuses[path] = None
                problems.append(str(err))
        if censuses[path] is None:
            continue
        try:
            build_targets(
                censuses[path],
                attribute_of_dataset(config, name),
                ds["target"],
                round_even=config["targets"]["round_even"],
                census_name=path,
            )
        except TargetError as err:
            problems.append(f"{err} (dataset {name!r})")
    try:
        bank = load_templates(config["prompts"]["templates"])
    except TemplateError as err:
        problems.append(str(err))
    else:
        for name in config["run"]["datasets"]:
            for task in config["run"]["tasks"]:
                if any(dataset_applies(config, name, m, task) for m in config["run"]["methods"]):
                    try:
                        templates_for(bank, task, config["datasets"][name]["attribute"])
                    except TemplateError as err:
                        problems.append(f"{err} (dataset {name!r}, task {task!r})")
    if problems:
        raise RunInputError("bad input file(s):\n  - " + "\n  - ".join(dict.fromkeys(problems)))
