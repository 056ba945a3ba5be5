"""Bad configurations that used to pass validation and then cost compute or changed a number silently.

Each case is rejected by ``validate_config`` (which the Snakefile runs before any job) or at DAG time by a
dry run, with a message naming the key or file and what was expected.
"""

import random
import re

import numpy as np
import pytest
import torch
import yaml

from distalign.core.attributes import Attribute
from distalign.core.config import ConfigError, coerce_strings, load_schema, validate_config
from distalign.core.seeds import derive_seed
from distalign.evaluation.judges import KeywordParser


def _raw(repo):
    return yaml.safe_load((repo / "config/config.yaml").read_text())


def _error(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    return str(err.value)


# ---- 1. a phrase claimed by two classes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, words",
    [
        # a keyword of one class that is another class's keyword
        (lambda a: a["gender"]["classes"][1]["keywords"].append("man"), ("'man'", "'female'", "'male'")),
        # ... or its label, in another case
        (lambda a: a["gender"]["classes"][1]["keywords"].append("MALE"), ("'MALE'", "'female'", "'Male'")),
        # whitespace and hyphens separate words the same way for the parser
        (
            lambda a: a["race"]["classes"][0]["keywords"].append("African-American"),
            ("'African-American'", "'white'", "'black'"),
        ),
        # a story-lexicon word counted for both classes
        (
            lambda a: a["gender"]["classes"][0]["lexicon"].append("Her"),
            ("story-lexicon word", "'Her'", "'male'", "'female'"),
        ),
    ],
)
def test_a_phrase_shared_by_two_classes_is_an_error(repo, mutate, words):
    cfg = _raw(repo)
    mutate(cfg["attributes"])
    msg = _error(cfg)
    assert all(w in msg for w in words), msg


def test_what_the_shared_keyword_check_prevents(repo):
    """Without the check, an answer naming the shared word goes to the first class in config order."""
    cfg = _raw(repo)
    spec = cfg["attributes"]["gender"]
    spec["classes"][1]["keywords"].append("man")
    parser = KeywordParser(Attribute.from_config("gender", spec))
    assert parser.parse("A woman? No: a man.").label == "male"  # the female keyword 'man' is never credited
    assert "'man'" in _error(cfg)


def test_a_longer_phrase_of_another_class_is_allowed(repo):
    """'american' (one class) inside 'african american' (another) is resolved by the longest-match rule."""
    cfg = _raw(repo)
    cfg["attributes"]["race"]["classes"][0]["keywords"].append("american")
    validate_config(cfg)


# ---- 2. seeds --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_seed_out_of_range(repo, seed):
    cfg = _raw(repo)
    cfg["seed"] = seed
    assert "config key 'seed'" in _error(cfg)


def test_every_derived_seed_is_valid_for_numpy_torch_and_python(repo):
    cfg = _raw(repo)
    cfg["seed"] = 2**32 - 1
    validate_config(cfg)
    seeds = [
        cfg["seed"],
        derive_seed(cfg["seed"], "uk-real", "ours", "attribute", "batch", 0),
        derive_seed(cfg["seed"], "sweep", 4) % (2**31),
    ]
    for s in seeds:
        assert 0 <= s < 2**32
        np.random.seed(s)  # the narrowest range of the three (vLLM seeds numpy with it too)
        torch.manual_seed(s)
        random.seed(s)


# ---- 4. report keys that name a class or a dataset -------------------------------------------------------


def test_share_class_missing_from_the_fig3_dataset(repo):
    cfg = _raw(repo)
    cfg["report"]["share_class"] = "black"  # a race class; fig3 plots uk-real (gender)
    msg = _error(cfg)
    assert "config key 'report.share_class'" in msg and "'uk-real'" in msg and "'black'" in msg


def test_share_class_nobody_has(repo):
    cfg = _raw(repo)
    cfg["report"]["share_class"] = "femal"
    assert "config key 'report.share_class': no attribute has a class 'femal'" in _error(cfg)


def test_share_class_mapping(repo):
    cfg = _raw(repo)
    cfg["report"]["share_class"] = {"gender": "female", "race": "asian"}
    validate_config(cfg)
    cfg["report"]["share_class"] = {"gender": "female", "race": "martian", "colour": "red"}
    msg = _error(cfg)
    assert "'report.share_class.race': attribute 'race' has no class 'martian'" in msg
    assert "'report.share_class.colour': unknown attribute 'colour'" in msg


def test_figure_dataset_unknown(repo):
    cfg = _raw(repo)
    cfg["report"]["fig3_dataset"] = "uk-rael"
    assert "config key 'report.fig3_dataset': unknown dataset 'uk-rael'" in _error(cfg)


def test_calibration_panel_uses_the_mapped_class(repo):
    from distalign.report.figures import share_class_for

    cfg = validate_config(_raw(repo))
    assert share_class_for("female", cfg, "uk-real", ["male", "female"]) == "female"
    assert share_class_for({"race": "asian"}, cfg, "race-even", ["white", "black", "asian"]) == "asian"
    # an attribute without the class: the first class, named in the panel's axis label
    assert share_class_for("female", cfg, "race-even", ["white", "black", "asian"]) == "white"


# ---- 7 (config part). a second stage with nothing to train -----------------------------------------------


@pytest.mark.parametrize(
    "spec, why",
    [
        ({"kind": "ours", "kl": False, "preference": "none"}, "kl: false"),
        ({"kind": "ours", "preference": "none", "train_overrides": {"kl_weight": 0}}, "training.kl_weight 0"),
    ],
)
def test_a_method_with_no_second_stage_loss(repo, spec, why):
    cfg = _raw(repo)
    cfg["methods"]["idle"] = spec
    msg = _error(cfg)
    assert "config key 'methods.idle'" in msg and why in msg


# ---- 8. --config values arrive as strings ----------------------------------------------------------------


def test_command_line_strings_are_read_as_the_schema_types(repo):
    cfg = _raw(repo)
    # what Snakemake's --config gives for nested values (YAML BaseLoader: every scalar a string)
    cfg["generation"].update({"top_p": "0.9", "top_k": "5", "max_new_tokens": {"story": "120"}})
    cfg["metrics"] = {"two_level": "true", "bootstrap": "0"}
    cfg["judge"] = {"llm": {"base_url": "null", "model": "judge"}}
    cfg["methods"]["ours"]["train_overrides"] = {"preference": {"learning_rate": "1e-3", "min_steps": "10"}}
    cfg["sweeps"] = {"top_p": ["0.7", "1.0"]}
    validate_config(cfg)
    assert cfg["generation"]["top_p"] == 0.9 and cfg["generation"]["top_k"] == 5
    assert cfg["generation"]["max_new_tokens"]["story"] == 120
    assert cfg["metrics"]["two_level"] is True and cfg["metrics"]["bootstrap"] == 0
    assert cfg["judge"]["llm"]["base_url"] is None
    assert cfg["methods"]["ours"]["train_overrides"]["preference"] == {"learning_rate": 1e-3, "min_steps": 10}
    assert cfg["sweeps"]["top_p"] == [0.7, 1.0]


def test_strings_stay_strings_where_the_schema_wants_one(repo):
    schema = load_schema()
    cfg = {
        "capabilities": {"lm_eval_batch_size": "8"},
        "judge": {"serve": {"extra_args": ["--port", "8"]}},
        "generation": {"top_p": "most"},
    }
    coerce_strings(cfg, schema)
    assert cfg["capabilities"]["lm_eval_batch_size"] == "8"
    assert cfg["judge"]["serve"]["extra_args"] == ["--port", "8"]
    assert cfg["generation"]["top_p"] == "most"  # does not parse: the schema check names it


def test_config_on_the_command_line_reaches_the_jobs(workdir, snakemake_run):
    """Before: "config key 'generation.top_p': expected number, got '0.9' (str)"."""
    target = "results/generations/uk-real/smollm2-135m-instruct/zero-shot/attribute.jsonl"
    config = ["generation={top_p: 0.9, top_k: 5}", "seed=7"]
    proc = snakemake_run(workdir, "-n", target, "--config", *config, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "rule generate" in proc.stdout


# ---- 10. names that become paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, name",
    [("methods", "../../escape"), ("datasets", "a/b"), ("models", ".hidden"), ("methods", "has space")],
)
def test_names_that_would_leave_results(repo, section, name):
    cfg = _raw(repo)
    first = next(iter(cfg[section]))
    cfg[section][name] = cfg[section][first]
    msg = _error(cfg)
    assert f"config key '{section}': name {name!r} is not allowed" in msg


# ---- targets.round_even ----------------------------------------------------------------------------------


@pytest.mark.parametrize("digits, ok", [(None, True), (3, True), (2, True), (1, False), (0, False)])
def test_round_even_must_keep_a_distribution(repo, digits, ok):
    cfg = _raw(repo)  # sentiment-even has three classes: 1 decimal gives 0.3 each (0.9 in all)
    cfg["targets"]["round_even"] = digits
    if ok:
        validate_config(cfg)
    else:
        msg = _error(cfg)
        assert "config key 'targets.round_even'" in msg and "'sentiment-even'" in msg


# ---- 5. a path asked for that does not apply fails at DAG time, with the reason --------------------------


@pytest.mark.parametrize(
    "target, reason",
    [
        ("results/metrics/race-even/smollm2-135m-instruct/zero-shot/story.json", "has no story judge"),
        ("results/metrics/uk-even/smollm2-135m-instruct/pe-implicit/attribute.json", "'even' targets"),
        ("results/adapters/race-even/smollm2-135m-instruct/ours-words", "token set 'words'"),
        ("results/adapters/uk-real/smollm2-135m-instruct/zero-shot", "trains nothing"),
        ("results/figures/fig3.png", "config key 'report.share_class'"),
    ],
)
def test_a_path_that_does_not_apply_fails_at_dag_time(workdir, snakemake_run, target, reason):
    if "fig3" in target:  # not built by `all`, so checked only when asked for; it plots uk-real (gender)
        cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
        cfg["report"]["share_class"] = {"race": "asian"}
        cfg["report"]["artefacts"].remove("fig3")
        (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake_run(workdir, "-n", target, timeout=300)
    assert proc.returncode != 0
    assert reason in proc.stdout, proc.stdout[-3000:]
    assert not re.search(
        r"^(local)?rule (train|generate|prepare_model):", proc.stdout, re.M
    )  # no job planned


# ---- 6. YAML syntax errors name the file and line --------------------------------------------------------


def test_syntax_error_in_the_default_config_names_file_and_line(workdir, snakemake_run):
    path = workdir / "config/config.yaml"
    n = len(path.read_text().splitlines())
    path.write_text(path.read_text() + "run:\n  datasets: [uk-real\n")
    proc = snakemake_run(workdir, "-n", timeout=300)
    assert proc.returncode != 0
    assert f"config/config.yaml:{n + 3}: YAML syntax error" in proc.stdout, proc.stdout[-2000:]


def test_config_file_checker_names_the_line(tmp_path):
    """Snakemake reads --configfile files before the workflow runs; `python -m distalign.core.io FILE` names the line."""
    import subprocess
    import sys

    bad = tmp_path / "overlay.yaml"
    bad.write_text("seed: 1\ntraining:\n  sft: {epochs: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "distalign.core.io", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and f"{bad}:4: YAML syntax error" in proc.stderr, proc.stderr
    bad.write_text("seed: 1\nseed: 2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "distalign.core.io", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and f"{bad}:2: duplicate key 'seed' (first at line 1)" in proc.stderr, (
        proc.stderr
    )
