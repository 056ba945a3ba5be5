"""Atomic file output, JSONL helpers and strict reading of the YAML and text files people write.

Every writer here goes through a temporary file in the destination folder followed by
``os.replace``, so a job killed midway never leaves a half-written file that a later run
(or Snakemake) would trust.

Every YAML file the workflow reads goes through ``load_yaml``: it rejects duplicate keys (plain
PyYAML keeps the last one and drops the first without a word) and reports syntax errors as
``path:line: ...``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary ``.{name}.XXXX.tmp`` sibling is locked while in use; stale siblings that a
    killed (SIGKILL) writer of ``path`` left behind are removed first (``distalign.core.scratch``).
    """
    from distalign.core.scratch import temp_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp") as tmp_path:
        yield tmp_path
        os.replace(tmp_path, path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only on success (stale
    siblings of killed writers are removed first, as in :func:`atomic_path`)."""
    from distalign.core.scratch import temp_dir

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temp_dir(path.parent, prefix=f".{path.name}.", suffix=".tmp") as tmp:
        os.chmod(tmp, 0o755)
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines atomically; return the number of rows."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from err
    return rows


class InputFileError(ValueError):
    """A hand-written file cannot be read as written; the message starts with ``path:line:``."""


class YamlError(InputFileError):
    """A YAML file has a syntax error or a duplicate key; the message starts with ``path:line:``."""


class DuplicateKeyError(YamlError):
    """A YAML mapping gives one key twice; the message names the lines of both."""


_UTF16_BOMS = {b"\xff\xfe": "UTF-16 LE", b"\xfe\xff": "UTF-16 BE"}


def read_utf8(path: str | os.PathLike, error: type[ValueError] = InputFileError) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped), or ``error`` naming the bad byte.

    We do not guess another encoding: every byte string decodes as Latin-1, so a guess would turn
    a Windows-1252 "é" into some other letter without a word, and the text (occupation titles) is
    used verbatim in prompts. The error names the line, the byte, what it would be in Windows-1252
    (what spreadsheets on Windows write), and the fix: save the file as UTF-8.
    """
    data = Path(path).read_bytes()
    for bom, name in _UTF16_BOMS.items():
        if data.startswith(bom):
            raise error(
                f"{path}:1: the file is {name} (starts with a {name} byte-order mark); "
                f"save it as UTF-8 (in a spreadsheet: 'CSV UTF-8')"
            )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        bad = data[err.start]
        try:
            guess = f" (in Windows-1252 it would be {bytes([bad]).decode('cp1252')!r})"
        except UnicodeDecodeError:
            guess = ""
        raise error(
            f"{path}:{line}: byte 0x{bad:02X} at column {column} is not UTF-8{guess}; save the file "
            f"as UTF-8 (in a spreadsheet: 'CSV UTF-8')"
        ) from None


class _DuplicateKey(yaml.MarkedYAMLError):
    def __init__(self, key, first, again):
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=again)
        self.key, self.first = key, first


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings reject a key given twice.

    Keys are compared after construction, so ``1`` and ``1.0``, or ``yes`` and ``true``, count as
    the same key, as they would in the loaded dict. Merge keys (``<<: *anchor``) are not duplicates:
    keys written next to them override the merged ones, as YAML specifies.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable: SafeConstructor reports it
                if first is not key_node.start_mark:
                    raise _DuplicateKey(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_error_message(path, text: str, err: yaml.YAMLError) -> str:
    if isinstance(err, _DuplicateKey):
        return (
            f"{path}:{err.problem_mark.line + 1}: duplicate key {err.key!r} (first at line {err.first.line + 1}); "
            f"a plain YAML reader keeps only the last one and drops the first: merge the two into one"
        )
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        msg = f"{path}:{err.problem_mark.line + 1}: YAML syntax error: {err.problem}"
        if err.context and err.context_mark is not None and err.context_mark.line != err.problem_mark.line:
            msg += f" ({err.context} at line {err.context_mark.line + 1})"
        elif err.context:
            msg += f" ({err.context})"
        return msg
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, err.position) + 1
        return (
            f"{path}:{line}: character {chr(err.character)!r} (U+{err.character:04X}) is not allowed in YAML"
        )
    return f"{path}:1: {err}"


def _load_yaml_text(path, text: str):
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except yaml.YAMLError as err:
        cls = DuplicateKeyError if isinstance(err, _DuplicateKey) else YamlError
        raise cls(_yaml_error_message(path, text, err)) from None


def load_yaml(path: str | os.PathLike):
    """Load one YAML file with ``StrictLoader``; errors are ``YamlError``s starting with ``path:line:``."""
    return _load_yaml_text(path, read_utf8(path, YamlError))


def _check_config_file(path) -> None:
    """Load a file the way Snakemake does (JSON first, then YAML), but strictly.

    A JSON file is read as YAML too (JSON is YAML, and the YAML parser knows the line of each key)
    with its tabs turned into spaces: valid JSON has tabs only between tokens, where YAML does not
    accept them. Should the YAML parser still refuse a valid JSON file, only JSON's own rules apply.
    """
    text = read_utf8(path, YamlError)
    try:
        json.loads(text)
    except ValueError:
        _load_yaml_text(path, text)
        return
    try:
        _load_yaml_text(path, text.replace("\t", " "))
    except DuplicateKeyError:
        raise
    except YamlError:
        pass  # valid JSON that PyYAML cannot parse: Snakemake read it as JSON


def check_yaml_files(paths: Iterable[str | os.PathLike]) -> None:
    """Load every file strictly; one ``YamlError`` lists the problems of all of them (one per line).

    The workflow calls this on the config files and profiles Snakemake itself read with plain
    PyYAML or JSON (both merge duplicate keys away), before it validates the merged config.
    """
    problems = []
    for p in dict.fromkeys(map(str, paths)):
        try:
            _check_config_file(p)
        except YamlError as err:
            problems.append(str(err))
    if problems:
        raise YamlError("\n".join(problems))


def snakemake_profile_files(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> list[Path]:
    """The profile YAML files a Snakemake command line uses (``--profile``, ``$SNAKEMAKE_PROFILE``,
    ``--workflow-profile``), resolved as Snakemake resolves them.

    Snakemake reads its profiles before the workflow starts and keeps no record of them, so we
    read the command line again; a run started through the Python API instead of the command line
    gets no profile check. Snakemake's implicit ``profiles/default`` workflow profile is not looked
    for (this repository has none).
    """
    import argparse
    import sys

    from snakemake.cli import get_profile_dir

    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    ap.add_argument("--profile", action="append")
    ap.add_argument("--workflow-profile")
    try:
        args, _ = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    except (argparse.ArgumentError, SystemExit):
        return []  # Snakemake accepted this command line; whatever puzzles us here is not a profile
    environ = os.environ if environ is None else environ
    names = args.profile or ([environ["SNAKEMAKE_PROFILE"]] if environ.get("SNAKEMAKE_PROFILE") else [])
    if args.workflow_profile:
        names.append(args.workflow_profile)
    files = []
    for name in names:
        if name == "none":
            continue
        found = get_profile_dir(name)
        if found is not None:
            files.append(Path(found[1]))
    return files


def main(argv: list[str] | None = None) -> int:
    """``python -m distalign.core.io FILE...``: check YAML/JSON config files strictly (duplicate keys, syntax errors,
    each with file and line).

    Snakemake parses ``--configfile`` files itself before any workflow code runs and reports a syntax error as
    "Config file is not valid JSON or YAML" with no line; this command names it. (Duplicate keys, which
    Snakemake accepts, are caught by the workflow itself at DAG time.)
    """
    import sys

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m distalign.core.io CONFIG.yaml [...]", file=sys.stderr)
        return 2
    try:
        check_yaml_files(paths)
    except YamlError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"ok: {len(paths)} file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
