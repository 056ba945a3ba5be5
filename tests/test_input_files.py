"""Hand-written input files: YAML (config, templates, profiles), census CSVs, template placeholders.

Every bad input here must fail with the file and line (or the dotted location) before any job runs.
"""

from __future__ import annotations

import copy
import re
import shutil

import pytest
import yaml

from distalign.core.attributes import Attribute, attribute_of_dataset
from distalign.core.config import load_config
from distalign.core.io import (
    DuplicateKeyError,
    YamlError,
    check_yaml_files,
    load_yaml,
    snakemake_profile_files,
)
from distalign.data.prompts import TemplateError, load_templates, method_prompt, offline_pool, render_answer
from distalign.data.targets import (
    CensusError,
    RunInputError,
    TargetError,
    build_targets,
    check_run_inputs,
    load_census,
)

# ---------------------------------------------------------------------------------------------
# YAML


def _write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


def test_duplicate_top_level_key_names_both_lines(tmp_path):
    p = _write(tmp_path, "c.yaml", "training:\n  kl_weight: 2.0\nseed: 5\ntraining:\n  max_length: 128\n")
    with pytest.raises(DuplicateKeyError) as err:
        load_yaml(p)
    assert str(err.value).startswith(f"{p}:4: duplicate key 'training' (first at line 1)")


def test_duplicate_nested_key_names_both_lines(tmp_path):
    p = _write(
        tmp_path, "c.yaml", "a: 1\ntraining:\n  sft: {epochs: 1}\n  lora: {r: 8}\n  sft:\n    epochs: 3\n"
    )
    with pytest.raises(DuplicateKeyError, match=r"c\.yaml:5: duplicate key 'sft' \(first at line 3\)"):
        load_yaml(p)


@pytest.mark.parametrize(
    "text,key",
    [
        ("{a: 1, b: 2, a: 3}\n", "'a'"),  # flow mapping
        ("1: x\n1.0: y\n", "1.0"),  # equal once loaded: 1 == 1.0
        ("yes: x\ntrue: y\n", "True"),  # YAML 1.1 booleans
        ("- {k: 1}\n- {k: 2, k: 3}\n", "'k'"),  # inside a list item
    ],
)
def test_keys_equal_after_loading_are_duplicates(tmp_path, text, key):
    p = _write(tmp_path, "c.yaml", text)
    with pytest.raises(DuplicateKeyError, match=f"duplicate key {re.escape(key)}"):
        load_yaml(p)


def test_merge_keys_and_equal_keys_in_different_mappings_are_not_duplicates(tmp_path):
    p = _write(tmp_path, "c.yaml", "base: &b {lr: 1, epochs: 2}\nsft:\n  <<: *b\n  lr: 3\npref:\n  lr: 4\n")
    assert load_yaml(p) == {"base": {"lr": 1, "epochs": 2}, "sft": {"lr": 3, "epochs": 2}, "pref": {"lr": 4}}


@pytest.mark.parametrize(
    "text,line,what",
    [
        ("a: 1\nb:\n  c: 2\n d: [\n", 4, "YAML syntax error"),  # bad indentation
        ("a: 1\nb:\n\tc: 2\n", 3, "YAML syntax error: found character '\\t'"),  # a tab indent
        ("a: 1\nb: 'unclosed\nc: 3\n", 4, "YAML syntax error"),
        ("a: 1\nb: x\x07y\n", 2, "character '\\x07' (U+0007) is not allowed"),
    ],
)
def test_yaml_syntax_error_names_file_and_line(tmp_path, text, line, what):
    p = _write(tmp_path, "c.yaml", text)
    with pytest.raises(YamlError) as err:
        load_yaml(p)
    assert str(err.value).startswith(f"{p}:{line}: {what}"), str(err.value)


def test_yaml_that_is_not_utf8_names_the_byte(tmp_path):
    p = _write(tmp_path, "c.yaml", "a: 1\nb: Caf\u00e9\n", encoding="cp1252")
    with pytest.raises(
        YamlError, match=r"c\.yaml:2: byte 0xE9 at column 7 is not UTF-8 .*'é'.*save the file as UTF-8"
    ):
        load_yaml(p)


def test_load_config_rejects_a_duplicate_key(tmp_path, repo):
    over = _write(tmp_path, "over.yaml", "seed: 1\nseed: 2\n")
    with pytest.raises(
        DuplicateKeyError, match=rf"^{re.escape(str(over))}:2: duplicate key 'seed' \(first at line 1\)"
    ):
        load_config(repo / "config" / "config.yaml", over)


def test_repository_yaml_files_are_strictly_valid(repo):
    """Every YAML the workflow reads, profile included, loads strictly (the checks above are not a false alarm)."""
    files = [
        *sorted((repo / "config").glob("*.yaml")),
        repo / "resources/prompts/templates.yaml",
        repo / "slurm/config.yaml",
        repo / "workflow/schemas/config.schema.yaml",
    ]
    check_yaml_files(files)
    assert all(load_yaml(f) for f in files)


def test_check_yaml_files_reports_every_file_and_reads_json_as_snakemake_does(tmp_path):
    good_json = _write(tmp_path, "ok.json", '{\n\t"seed": 1,\n\t"run": {"tasks": ["attribute"]}\n}\n')  # tabs
    bad_json = _write(tmp_path, "bad.json", '{\n\t"seed": 1,\n\t"seed": 2\n}\n')
    bad_yaml = _write(tmp_path, "bad.yaml", "x: 1\nx: 2\n")
    check_yaml_files([good_json])
    with pytest.raises(YamlError) as err:
        check_yaml_files([good_json, bad_json, bad_yaml])
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{bad_json}:3: duplicate key 'seed' (first at line 2)")
    assert lines[1].startswith(f"{bad_yaml}:2: duplicate key 'x' (first at line 1)")


def test_profile_files_are_found_as_snakemake_finds_them(tmp_path, monkeypatch, repo):
    monkeypatch.chdir(repo)
    slurm = [repo / "slurm/config.yaml"]
    assert [p.resolve() for p in snakemake_profile_files(["--profile", "slurm", "all"], {})] == slurm
    assert [p.resolve() for p in snakemake_profile_files(["-n", "--profile=slurm/config.yaml"], {})] == slurm
    assert [p.resolve() for p in snakemake_profile_files(["-n"], {"SNAKEMAKE_PROFILE": "slurm"})] == slurm
    assert snakemake_profile_files(["-n", "--profile", "none"], {"SNAKEMAKE_PROFILE": "slurm"}) == []
    assert snakemake_profile_files(["-n", "all"], {}) == []


# ---------------------------------------------------------------------------------------------
# Templates


@pytest.fixture()
def bank_data(repo):
    return yaml.safe_load((repo / "resources/prompts/templates.yaml").read_text())


def _bank_file(tmp_path, data):
    p = tmp_path / "templates.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True))
    return p


def _set(data, dotted, value):
    """Set ``templates.story.gender[3]``-style locations of a loaded bank."""
    *parents, last = re.findall(r"[^.\[\]]+", dotted)
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value


ANSWER_FIELDS = "(allowed: {label}, {lower}, {occupation})"
# (where in the bank, the bad value put there, what the error message says about it)
BAD_TEMPLATE_STRINGS = [
    ("templates.story.gender[3]", 'A story about "{ocupation}".', "placeholder '{ocupation}' is not allowed"),
    ("templates.attribute.race[0]", "Who works in {occupation!r}?", "placeholder '{occupation!r}'"),
    ("templates.attribute.race[1]", "Who works in {occupation:>30}?", "placeholder '{occupation:>30}'"),
    ("templates.attribute.race[2]", "Who works in {occupation.title}?", "placeholder '{occupation.title}'"),
    ("templates.attribute.gender[4]", "{} works in {occupation}", "positional placeholder '{}'"),
    ("templates.story.race[0]", "A story about {occupation", "unbalanced brace"),
    ("templates.story.race[1]", "A story} about {occupation}", "unbalanced brace"),
    ("templates.story.race[2]", "A story about {{occupation}}", "must be a string containing '{occupation}'"),
    ("openers.attribute[1]", "About {occupation}:", "braces are not allowed here"),
    ("closers.story[0]", "Keep it short :-}", "braces are not allowed here"),
    ("answers.sentiment[2]", "Their mood is good.", "must be a string containing '{label} or {lower}'"),
    ("prompt_engineering.explicit", "Follow the distribution {dist}.", "placeholder '{dist}'"),
    ("prompt_engineering.explicit", "Follow the real distribution.", "containing '{distribution}'"),
    ("prompt_engineering.implicit", "Follow {distribution}.", "braces are not allowed here"),
    ("templates.attribute.gender[0]", 42, "expected a string, got 42"),
    ("openers.story", "Hello!", "openers.story: expected a non-empty list"),
    ("answers.sentiment", [], "answers.sentiment: expected a non-empty list of strings"),
    ("answers.default[0]", "{labl}.", "placeholder '{labl}' is not allowed here " + ANSWER_FIELDS),
]


@pytest.mark.parametrize("where,text,message", BAD_TEMPLATE_STRINGS)
def test_bad_template_strings_name_their_location_and_file(tmp_path, bank_data, where, text, message):
    _set(bank_data, where, text)
    p = _bank_file(tmp_path, bank_data)
    with pytest.raises(TemplateError) as err:
        load_templates(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: {where}"), msg
    assert message in msg, msg


def test_every_template_problem_is_reported_at_once(tmp_path, bank_data):
    _set(bank_data, "templates.story.gender[3]", "{ocupation}")
    _set(bank_data, "closers.attribute[2]", "{x}")
    bank_data["answer"] = ["{label}"]  # misspelt top-level key
    bank_data["openers"]["stories"] = ["Hi."]
    with pytest.raises(TemplateError) as err:
        load_templates(_bank_file(tmp_path, bank_data))
    msg = str(err.value)
    for where in (
        "templates.story.gender[3]",
        "closers.attribute[2]",
        "answer: unknown top-level key",
        "openers.stories: unknown task",
    ):
        assert where in msg, msg


def test_allowed_placeholders_and_escaped_braces_render(tmp_path, bank_data, config):
    """What the check accepts formats without error where the code formats it."""
    _set(bank_data, "templates.attribute.gender", ["Who works as {occupation} {{in braces}}?"] * 2)
    _set(bank_data, "answers.default", ["{label} ({lower}), as a {occupation}."])
    bank = load_templates(_bank_file(tmp_path, bank_data))
    assert "Who works as Pilots {in braces}?" in offline_pool(bank, "attribute", "gender", "Pilots")[0]
    assert render_answer(bank["answers"]["default"][0], "Male", "pilot") == "Male (male), as a pilot."
    attr = attribute_of_dataset(config, "uk-real")
    assert "50% Male and 50% Female" in method_prompt("Q?", "explicit", bank, attr, [0.5, 0.5])


def test_duplicate_key_in_templates_names_file_and_both_lines(tmp_path, repo):
    text = (repo / "resources/prompts/templates.yaml").read_text()
    first = text.splitlines().index("openers:") + 1
    p = _write(tmp_path, "templates.yaml", text + "\nopeners:\n  attribute: [Hi.]\n  story: [Hi.]\n")
    dup = len(text.splitlines()) + 2
    with pytest.raises(TemplateError) as err:
        load_templates(p)
    assert str(err.value).startswith(f"{p}:{dup}: duplicate key 'openers' (first at line {first})")


def test_template_syntax_error_names_file_and_line(tmp_path, repo):
    lines = (repo / "resources/prompts/templates.yaml").read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("      - ") and "{occupation}" in line)
    lines[i] = lines[i].replace('      - "', '      - "unclosed ', 1).rstrip('"')  # drops the closing quote
    p = _write(tmp_path, "templates.yaml", "\n".join(lines) + "\n")
    with pytest.raises(TemplateError, match=rf"^{re.escape(str(p))}:\d+: YAML syntax error") as err:
        load_templates(p)
    line = int(str(err.value).split(":")[1])
    assert i + 1 <= line <= i + 3  # the scanner notices the unclosed quote on the following lines


# ---------------------------------------------------------------------------------------------
# Census CSV

HEADER = "occupation,group,male,female,year,source"
ROWS = ["Nurses,Health,10,90,2024,x", "Pilots,Transport,90,10,2024,x"]


def _census(tmp_path, lines, encoding="utf-8", name="c.csv"):
    p = tmp_path / name
    p.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    return p


def _gender(config):
    return attribute_of_dataset(config, "uk-real")


def test_utf8_with_bom_loads(tmp_path, config):
    p = _census(tmp_path, [HEADER, "Caf\u00e9 staff,Food,1,3,2024,x"], encoding="utf-8-sig")
    rows = load_census(p)
    assert rows[0].occupation == "Caf\u00e9 staff"
    assert build_targets(rows, _gender(config), "real")[0]["target"] == [0.25, 0.75]


def test_windows_1252_census_is_an_error_naming_line_and_byte(tmp_path):
    p = _census(tmp_path, [HEADER, ROWS[0], "Caf\u00e9 staff,Food,1,3,2024,x"], encoding="cp1252")
    with pytest.raises(CensusError) as err:
        load_census(p)
    assert str(err.value).startswith(
        f"{p}:3: byte 0xE9 at column 4 is not UTF-8 (in Windows-1252 it would be 'é'); save the file as UTF-8"
    )


def test_utf16_census_is_an_error(tmp_path):
    p = _census(tmp_path, [HEADER, ROWS[0]], encoding="utf-16")
    with pytest.raises(CensusError, match=r"c\.csv:1: the file is UTF-16 LE .*save it as UTF-8"):
        load_census(p)


@pytest.mark.parametrize(
    "lines,line",
    [
        ([HEADER, "", ROWS[0], "", "", "Pilots,Transport,x,10,2024,y"], 6),  # blank lines
        ([HEADER, ",,,,,", ROWS[0], "Pilots,Transport,x,10,2024,y"], 4),  # a row of empty cells
        ([HEADER, 'Nurses,Health,10,90,2024,"multi\r\nline\r\nsource"', "Pilots,Transport,x,10,2024,y"], 5),
    ],
)
def test_row_numbers_are_file_line_numbers(tmp_path, lines, line):
    p = _census(tmp_path, lines)
    with pytest.raises(
        CensusError, match=rf"c\.csv, row {line}, column 'male': expected a non-negative number"
    ):
        load_census(p)


def test_blank_lines_and_empty_rows_are_skipped(tmp_path):
    p = _census(tmp_path, ["", HEADER, "", ROWS[0], ",,,,,", ROWS[1], ""])
    assert [(r.occupation, r.line) for r in load_census(p)] == [("Nurses", 4), ("Pilots", 6)]


def test_trailing_comma_on_every_line_is_ignored(tmp_path, config):
    p = _census(tmp_path, [HEADER + ",", *(r + "," for r in ROWS)])
    rows = load_census(p)
    assert list(rows[0].counts) == ["male", "female"]
    assert build_targets(rows, _gender(config), "real")[0]["target"] == [0.1, 0.9]


@pytest.mark.parametrize(
    "lines,match",
    [
        (
            [HEADER + ",", ROWS[0] + ",", ROWS[1] + ",7"],
            r"row 3: column 7 has no name in the header \(row 1\) but holds '7'",
        ),
        ([HEADER, ROWS[0] + ","], r"row 2: expected 6 fields, got 7 \(a trailing comma\?\)"),
        (
            [HEADER + ",male", ROWS[0] + ",5"],
            r"row 1: column\(s\) \['male'\] appear more than once in the header",
        ),
        ([HEADER.replace(",", ";"), ROWS[0].replace(",", ";")], r"row 1: the columns are separated by ';'"),
        (
            [HEADER, '"Nurses,Health,10,90,2024,x', ROWS[1]],
            r"row 2: not valid CSV .*a quote opened on this row is never",
        ),
        (
            [HEADER, '"Registered\nnurses",Health,10,90,2024,x'],
            r"row 2: occupation 'Registered\\nnurses' contains a "
            r"control character",
        ),
    ],
)
def test_malformed_census_layout_is_rejected(tmp_path, lines, match):
    p = _census(tmp_path, lines)
    with pytest.raises(CensusError, match=match) as err:
        load_census(p)
    assert str(err.value).startswith(str(p))


@pytest.mark.parametrize(
    "first,again,shown",
    [
        ("Nurses", "nurses", "'Nurses'"),
        ("Registered nurses", "  Registered   nurses ", "'Registered nurses'"),
        (
            "Caf\u00e9 staff",
            "Cafe\u0301 staff",
            r"'Caf\xe9 staff'",
        ),  # NFC vs NFD: they print alike, so escaped
        ("Caf\u00e9 staff", "CAF\u00c9\u00a0STAFF", "'Caf\u00e9 staff'"),  # case and a no-break space
    ],
)
def test_occupations_equal_but_for_case_space_or_unicode_form_are_duplicates(tmp_path, first, again, shown):
    p = _census(tmp_path, [HEADER, f'"{first}",A,1,2,2024,x', ROWS[1], f'"{again}",A,1,2,2024,x'])
    with pytest.raises(
        CensusError,
        match=rf"c\.csv, row 4: duplicate occupation .* \(first at row 2 as "
        rf"{re.escape(shown)}; case, spacing and Unicode form do not count\)",
    ):
        load_census(p)


def test_real_target_rejects_a_column_that_is_not_a_class(tmp_path, config):
    p = _census(
        tmp_path, ["occupation,group,male,female,nonbinary,year,source", "Nurses,Health,10,80,10,2024,x"]
    )
    census = load_census(p)
    with pytest.raises(TargetError) as err:
        build_targets(census, _gender(config), "real", census_name="uk")
    assert str(err.value).startswith(f"{p}: column 'nonbinary' is not a class of attribute 'gender'")
    assert build_targets(census, _gender(config), "even")[0]["target"] == [
        0.5,
        0.5,
    ]  # even targets read no counts


def test_census_row_of_zero_class_counts_names_the_row(tmp_path):
    attr = Attribute.from_config(
        "age", {"classes": [{"name": "young", "label": "Young"}, {"name": "old", "label": "Old"}]}
    )
    p = _census(tmp_path, ["occupation,group,young,old,year,source", "Pilots,T,3,1,,x", "", "Cooks,F,0,0,,x"])
    with pytest.raises(CensusError, match=r"c\.csv, row 4: all counts are zero for 'Cooks'"):
        build_targets(load_census(p), attr, "real")


# ---------------------------------------------------------------------------------------------
# check_run_inputs (what common.smk calls when it builds the DAG)


def test_run_inputs_of_the_repository_configs_pass(repo, config, monkeypatch):
    monkeypatch.chdir(repo)
    check_run_inputs(config)
    check_run_inputs(load_config(repo / "config/config.yaml", repo / "config/paper.yaml"))


def test_run_inputs_list_every_bad_file(tmp_path, repo, config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(repo / "resources", tmp_path / "resources")
    uk = tmp_path / "resources/census/uk.csv"
    header, *rows = uk.read_text().splitlines()
    uk.write_text("\n".join([header + ",other", *(r + ",0" for r in rows)]) + "\n")  # not a class of gender
    us = tmp_path / "resources/census/us.csv"
    us.write_text(us.read_text() + "\n\nsoftware developers,Tech,1,1,2024,x\n")
    cfg = copy.deepcopy(config)
    cfg["run"]["datasets"] = ["uk-real", "us-even", "race-even"]
    bank = yaml.safe_load((tmp_path / "resources/prompts/templates.yaml").read_text())
    del bank["templates"]["attribute"]["race"]
    (tmp_path / "resources/prompts/templates.yaml").write_text(yaml.safe_dump(bank))
    with pytest.raises(RunInputError) as err:
        check_run_inputs(cfg)
    msg = str(err.value)
    assert "resources/census/uk.csv: column 'other' is not a class of attribute 'gender'" in msg
    assert "(dataset 'uk-real')" in msg
    n_us = len(us.read_text().splitlines())
    assert f"resources/census/us.csv, row {n_us}: duplicate occupation 'software developers'" in msg
    assert msg.count("us.csv") == 1  # one census error, though two datasets read the file
    assert "templates.attribute.race: no templates" in msg


# ---------------------------------------------------------------------------------------------
# At DAG time, through Snakemake (two dry runs, each stopping in common.smk in a few seconds)


def test_dry_run_names_duplicate_keys_of_config_overlay_and_profile(workdir, snakemake_run):
    overlay = workdir / "overlay.yaml"
    overlay.write_text("training:\n  kl_weight: 2.0\nseed: 5\ntraining:\n  max_length: 128\n")
    (workdir / "prof").mkdir()
    (workdir / "prof/config.yaml").write_text(
        "printshellcmds: true\nkeep-going: true\nprintshellcmds: false\n"
    )
    proc = snakemake_run(workdir, "-n", "--configfile", str(overlay), "--profile", "prof", timeout=300)
    assert proc.returncode != 0
    assert f"{overlay}:4: duplicate key 'training' (first at line 1)" in proc.stdout, proc.stdout[-3000:]
    assert "prof/config.yaml:3: duplicate key 'printshellcmds' (first at line 1)" in proc.stdout, proc.stdout[
        -3000:
    ]
    assert "WorkflowError" in proc.stdout


def test_dry_run_stops_at_a_bad_census_row_and_a_bad_template(workdir, snakemake_run):
    uk = workdir / "resources/census/uk.csv"
    lines = uk.read_text(encoding="utf-8").splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("Civil engineers,"))
    lines[i] = lines[i].replace(",80072,", ",n/a,")
    lines.insert(i, "")  # a blank line before it: the row number must still be its file line
    uk.write_text("\n".join(lines) + "\n", encoding="utf-8")
    templates = workdir / "resources/prompts/templates.yaml"
    text = templates.read_text()
    bad = text.replace(
        '"Tell a brief tale about a worker from \\"{occupation}\\"."',
        '"Tell a brief tale about a worker from \\"{occupaton}\\"."',
        1,
    )
    assert bad != text
    templates.write_text(bad)
    proc = snakemake_run(workdir, "-n", timeout=300)
    assert proc.returncode != 0
    assert (
        f"census/uk.csv, row {i + 2}, column 'male': expected a non-negative number, got 'n/a'" in proc.stdout
    ), proc.stdout[-3000:]
    assert re.search(
        r"templates\.yaml: templates\.story\.gender\[1\]: placeholder '\{occupaton\}'", proc.stdout
    ), proc.stdout[-3000:]
    assert not (workdir / "results").exists()
