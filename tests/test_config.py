import copy

import jsonschema
import pytest
import yaml

from distalign.core.config import (
    ConfigError,
    dataset_applies,
    load_config,
    method_training,
    stage_epochs,
    training_params,
    validate_config,
)


def _raw(repo):
    return yaml.safe_load((repo / "config/config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults(repo):
    cfg = validate_config(_raw(repo))
    assert cfg["prompts"]["openai"]["temperature"] == 1.0  # filled from the schema default
    assert cfg["methods"]["ours"]["kl"] is True and cfg["methods"]["ours-kto"]["undesirable"] == "paper"


def test_every_schema_key_has_description_and_default(repo):
    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())

    def walk(node, path):
        for key, sub in (node.get("properties") or {}).items():
            where = f"{path}.{key}" if path else key
            if "$ref" in sub:
                sub = {**schema["definitions"][sub["$ref"].rsplit("/", 1)[-1]], **sub}
            assert "description" in sub, f"{where} has no description"
            required = key in (node.get("required") or [])
            assert "default" in sub or required, f"{where} has no default"
            walk(sub, where)

    walk(schema, "")
    for name, sub in schema["definitions"].items():
        walk(sub, f"definitions.{name}")


def test_schema_nodes_hold_only_schema_keywords(repo):
    # A flow-style `{..., description: a, b}` splits at the comma: YAML reads `b` as a key of the
    # property's schema, jsonschema ignores it and the description is silently cut short.
    annotations = {
        "description",
        "default",
        "title",
        "examples",
        "$comment",
        "$schema",
        "definitions",
        "$defs",
    }
    keywords = set(jsonschema.Draft202012Validator.VALIDATORS) | annotations
    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    stray = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        stray.extend(f"{path}: {key!r}" for key in node if key not in keywords)
        for key in ("properties", "definitions", "patternProperties"):
            for name, sub in (node.get(key) or {}).items():
                walk(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties", "propertyNames", "not"):
            walk(node.get(key), f"{path}/{key}")
        for key in ("oneOf", "anyOf", "allOf"):
            for i, sub in enumerate(node.get(key) or []):
                walk(sub, f"{path}/{key}[{i}]")

    walk(schema, "")
    assert not stray, "keys that are not JSON-schema keywords (an unquoted comma?): " + ", ".join(stray)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda c: c["training"]["sft"].__setitem__("lr", 1e-4),
            r"config key 'training\.sft': unknown key\(s\) 'lr' \(expected one of: batch_size, epochs, learning_rate, lr_scheduler_type, min_steps, warmup_steps\)",
        ),
        (
            lambda c: c["training"]["sft"].__setitem__("learning_rate", "fast"),
            r"config key 'training\.sft\.learning_rate': expected number, got 'fast'",
        ),
        (
            lambda c: c["methods"]["ours"]["train_overrides"]["preference"].__setitem__(
                "lr_scheduler_type", "cosin"
            ),
            r"config key 'methods\.ours\.train_overrides\.preference\.lr_scheduler_type': expected one of .*got 'cosin'",
        ),
        (
            lambda c: c["methods"]["dpo"]["train_overrides"]["preference"].__setitem__("epochs", 0),
            r"config key 'methods\.dpo\.train_overrides\.preference\.epochs'",
        ),
        (
            lambda c: c["generation"].__setitem__("backend", "tgi"),
            r"config key 'generation\.backend': expected one of \['transformers', 'vllm'\], got 'tgi'",
        ),
        (lambda c: c["generation"].__setitem__("top_p", 0), r"config key 'generation\.top_p'"),
        (
            lambda c: c.__setitem__("judge", {"story": "magic"}),
            r"config key 'judge\.story': expected one of \['lexicon', 'llm', 'both'\], got 'magic'",
        ),
        (
            lambda c: c.__setitem__("judge", {"multi_class_rule": "first"}),
            r"config key 'judge\.multi_class_rule': expected one of \['last', 'invalid'\], got 'first'",
        ),
        (
            lambda c: c["run"].__setitem__("datasets", ["uk-real", "mars-even"]),
            r"config key 'run\.datasets': unknown dataset 'mars-even'",
        ),
        (
            lambda c: c["run"].__setitem__("methods", ["ours", "magic"]),
            r"config key 'run\.methods': unknown method 'magic'",
        ),
        (
            lambda c: c["run"].__setitem__("models", ["gpt-9"]),
            r"config key 'run\.models': unknown model 'gpt-9'",
        ),
        (
            lambda c: c["datasets"]["uk-real"].__setitem__("attribute", "height"),
            r"config key 'datasets\.uk-real\.attribute': unknown attribute 'height'",
        ),
        (
            lambda c: c["datasets"]["uk-real"].__setitem__("census", "fr"),
            r"config key 'datasets\.uk-real\.census': unknown census 'fr'",
        ),
        (
            lambda c: c["attributes"]["gender"]["classes"][1]["tokens"].__setitem__("digits", "0"),
            r"config key 'attributes\.gender\.classes': token set 'digits' repeats a token",
        ),
        (
            lambda c: c["attributes"]["race"]["classes"][4]["tokens"].pop("digits"),
            r"class\(es\) \['pacific_islander'\] have no token in the default token set 'digits'",
        ),
        (
            lambda c: c["models"]["smollm2-135m-instruct"].__setitem__("source", "ftp"),
            r"config key 'models\.smollm2-135m-instruct\.source': expected one of",
        ),
        (
            lambda c: c["methods"].__setitem__("mine", {"kind": "ours", "train_overrides": {"epochs": 3}}),
            r"config key 'methods\.mine\.train_overrides': unknown training key\(s\) \['epochs'\]",
        ),
        (
            lambda c: c.__setitem__("judge", {"story": "both"}),
            r"config key 'judge\.llm\.model': required when judge\.story is 'both'",
        ),
        (
            lambda c: c["prompts"].__setitem__("paraphraser", "openai"),
            r"config key 'prompts\.openai\.model': required when prompts\.paraphraser is 'openai'",
        ),
        (
            lambda c: c["datasets"]["us-real-from-uk"].__setitem__("adapters_from", "race-even"),
            r"config key 'datasets\.us-real-from-uk\.adapters_from': dataset 'race-even' has attribute 'race', "
            r"expected 'gender'",
        ),
        (
            lambda c: c["datasets"]["us-real-from-uk"].__setitem__("adapters_from", "us-even-from-uk"),
            r"config key 'datasets\.us-real-from-uk\.adapters_from': dataset 'us-even-from-uk' itself borrows",
        ),
        (
            lambda c: c["datasets"]["us-real-from-uk"].__setitem__("adapters_from", "mars"),
            r"config key 'datasets\.us-real-from-uk\.adapters_from': unknown dataset 'mars'",
        ),
        (
            lambda c: c.__setitem__("report", {"transfer_datasets": ["us-real"]}),
            r"config key 'report\.transfer_datasets': dataset 'us-real' has no adapters_from",
        ),
        (
            lambda c: c.__setitem__("sweeps", {"methods": ["ours", "magic"]}),
            r"config key 'sweeps\.methods': unknown method 'magic'",
        ),
        (lambda c: c.__setitem__("sweeps", {"top_p": [0.9, 1.5]}), r"config key 'sweeps\.top_p"),
        (
            lambda c: c.__setitem__("capabilities", {"dataset": "mars-even"}),
            r"config key 'capabilities\.dataset': unknown dataset 'mars-even'",
        ),
        (
            lambda c: c.__setitem__("capabilities", {"backend": "local"}),
            r"config key 'capabilities': unknown key\(s\) 'backend' .*; 'capabilities\.backend' was removed: "
            r"table5 always runs lm-evaluation-harness now",
        ),
        (
            lambda c: c["methods"].__setitem__("dpo", {"kind": "dpo", "story_data": True}),
            r"config key 'methods\.dpo\.story_data': only methods of kind 'ift' or 'ours' train on D_story, not 'dpo'",
        ),
        (
            lambda c: c["methods"]["ours-story"].__setitem__("preference", "kto"),
            r"config key 'methods\.ours-story\.story_data': D_story has no undesirable stories; use preference 'nll'",
        ),
        (
            lambda c: (
                c["run"]["methods"].append("ours-story"),
                c["attributes"]["gender"]["classes"][1].pop("story_hint"),
            ),
            r"config key 'attributes\.gender\.classes': class\(es\) \['female'\] have no story_hint, which method "
            r"'ours-story' \(story_data: true\) needs",
        ),
        (
            lambda c: c["methods"]["ift"].__setitem__("validity_correction", ["story"]),
            r"config key 'methods\.ift\.validity_correction': only methods of kind 'ours' draw a steering token",
        ),
        (
            lambda c: c["methods"]["ours"].__setitem__("validity_correction", ["poems"]),
            r"methods\.ours\.validity_correction",
        ),
        (
            lambda c: c["methods"]["ift"].__setitem__("steering_guidance", {"story": 2.0}),
            r"config key 'methods\.ift\.steering_guidance': only methods of kind 'ours' draw a steering token",
        ),
        (
            lambda c: c["methods"]["ours"].__setitem__("steering_guidance", {"story": 0.5}),
            r"methods\.ours\.steering_guidance\.story",
        ),
        (
            lambda c: c["methods"]["ours"].__setitem__("steering_guidance", {"poems": 2.0}),
            r"methods\.ours\.steering_guidance",
        ),
        (
            lambda c: c["methods"]["ours"].__setitem__("preference", "ppo"),
            r"config key 'methods\.ours\.preference': expected one of \['kto', 'dpo', 'nll', 'none'\]",
        ),
        (
            lambda c: c["attributes"]["race"].__setitem__("judge_check", "resources/judge_check/race.jsonl"),
            r"config key 'attributes\.race\.judge_check': the check measures the offline story judge, and this attribute "
            r"has none",
        ),
        (
            lambda c: c["attributes"]["sentiment"].__setitem__("judge_check", 3),
            r"config key 'attributes\.sentiment\.judge_check'",
        ),
    ],
)
def test_bad_config_names_the_key(repo, mutate, message):
    cfg = _raw(repo)
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_all_errors_are_reported_at_once(repo):
    cfg = _raw(repo)
    cfg["seed"] = "x"
    cfg["generation"]["temperature"] = -1
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "'seed'" in str(err.value) and "'generation.temperature'" in str(err.value)


def test_method_overrides_and_applicability(repo):
    raw = _raw(repo)
    raw["methods"]["ours-fast"] = {"kind": "ours", "train_overrides": {"sft": {"epochs": 1}}}
    cfg = validate_config(copy.deepcopy(raw))
    t = method_training(cfg, "ours-fast")
    assert t["sft"]["epochs"] == 1 and t["sft"]["learning_rate"] == cfg["training"]["sft"]["learning_rate"]
    assert dataset_applies(cfg, "uk-real", "pe-implicit")
    assert not dataset_applies(
        cfg, "uk-even", "pe-implicit"
    )  # "follow real-world statistics": real targets only
    assert not dataset_applies(cfg, "race-even", "ours-words")  # race defines no word tokens
    assert not dataset_applies(cfg, "race-even", "ours", "story")  # race is not used for stories
    assert dataset_applies(cfg, "sentiment-even", "ours", "story")
    # a method trained on D_story needs a story judge for the dataset's attribute, on either task
    assert dataset_applies(cfg, "uk-real", "ours-story") and dataset_applies(
        cfg, "sentiment-even", "ours-story"
    )
    assert not dataset_applies(cfg, "race-even", "ours-story")


@pytest.mark.parametrize(
    "epochs,min_steps,rows,expected",
    [
        (2, None, 280, 2.0),  # unset: epochs as given
        (2, 126, 500, 2.0),  # UK: 63 steps an epoch, 2 epochs already reach 126
        (2, 126, 280, 4.0),  # US: 35 steps an epoch -> 4 whole epochs (140 steps)
        (1, 36, 280, 2.0),  # one step short of 36 -> a second epoch
        (0.5, 10, 280, 0.5),  # fractional epochs that already reach the minimum stay as they are
        (1, 10, 0, 1.0),  # no rows: nothing to raise
    ],
)
def test_stage_epochs(epochs, min_steps, rows, expected):
    assert stage_epochs({"epochs": epochs, "batch_size": 8, "min_steps": min_steps}, rows) == expected


def test_unset_min_steps_is_not_part_of_a_jobs_params(repo):
    """A key added with a null default must not change the params of jobs that existed before it."""
    cfg = validate_config(_raw(repo))
    assert cfg["training"]["preference"]["min_steps"] is None  # filled from the schema
    ift = training_params(cfg, "ift")
    assert "min_steps" not in ift["preference"] and "min_steps" not in ift["sft"]
    assert "lr_scheduler_type" not in ift["preference"] and "lr_scheduler_type" not in ift["sft"]
    assert training_params(cfg, "ours")["preference"]["min_steps"] == 126  # set: kept
    assert method_training(cfg, "ift")["preference"]["min_steps"] is None  # what training itself reads


def test_story_binding_weight_is_a_param_only_where_it_acts(repo):
    """Added after results existed: at 0, or on a method without D_story, it changes no job's params."""
    cfg = validate_config(_raw(repo))
    assert cfg["training"]["story_binding_weight"] == 0.0
    assert method_training(cfg, "ours-story")["story_binding_weight"] == 1.0
    assert training_params(cfg, "ours-story")["story_binding_weight"] == 1.0
    for method in ("ours", "ift", "dpo"):
        assert "story_binding_weight" not in training_params(cfg, method), method
    raw = _raw(repo)
    raw["training"]["story_binding_weight"] = 2.0  # set for all: only the D_story method sees it
    cfg = validate_config(raw)
    assert "story_binding_weight" not in training_params(cfg, "ours")
    assert training_params(cfg, "ours-story")["story_binding_weight"] == 1.0  # its own override wins
    raw["methods"]["ours-story"]["train_overrides"]["story_binding_weight"] = -1
    with pytest.raises(ConfigError, match="methods.ours-story.train_overrides.story_binding_weight"):
        validate_config(raw)


def test_paper_config_is_valid(repo):
    cfg = load_config(repo / "config/config.yaml", repo / "config/paper.yaml")
    assert cfg["methods"]["ours"]["preference"] == "kto"  # the paper's hybrid; the CPU default uses nll
    assert load_config(repo / "config/config.yaml")["methods"]["ours"]["preference"] == "nll"
    # the CPU sizing of the default (ours at lr 1e-3 with >= 126 steps, dpo 1 epoch) does not leak in
    assert method_training(cfg, "ours")["preference"] == cfg["training"]["preference"]
    assert method_training(cfg, "ours")["preference"]["learning_rate"] == 1.0e-6
    assert method_training(cfg, "dpo")["preference"]["epochs"] == 3


@pytest.mark.parametrize("overlay", ["cpu-attribute", "cpu-full", "cpu-story"])
def test_full_cpu_configs_only_raise_the_steering_steps_and_kl_weights_of_ours(repo, overlay):
    """The overlays merge key by key: ours keeps its loss and rate and gets 252 steps and the steering
    and replay KLs at weight 4 (the replay's other keys as in the default); others untouched."""
    default = load_config(repo / "config/config.yaml")
    cfg = load_config(repo / "config/config.yaml", repo / f"config/{overlay}.yaml")
    ours, ours_default = method_training(cfg, "ours"), method_training(default, "ours")
    assert ours["preference"]["min_steps"] == 252 and ours_default["preference"]["min_steps"] == 126
    assert ours["kl_weight"] == 4.0 and ours_default["kl_weight"] == 1.0
    assert ours["replay"]["weight"] == 4.0 and ours_default["replay"]["weight"] == 1.0
    assert {**ours["replay"], "weight": 1.0} == ours_default["replay"]
    assert {k for k in ours if ours[k] != ours_default[k]} == {"preference", "kl_weight", "replay"}
    assert ours["preference"]["learning_rate"] == 1.0e-3 and cfg["methods"]["ours"]["preference"] == "nll"
    assert {**ours["preference"], "min_steps": 126} == ours_default["preference"]
    for method in ("ift", "dpo", "ours-story", "ours-kto"):
        assert training_params(cfg, method) == training_params(default, method), method


@pytest.mark.parametrize(
    "overlays, lever, changed",
    [
        (["capability-levers"], "ours-noreplay", {"replay"}),
        (["capability-levers"], "ours-qv", {"lora", "replay"}),
        (["capability-levers"], "ours-lr3e-4", {"preference", "replay"}),
        (["steering-levers"], "ours-kl4", {"kl_weight", "preference"}),  # against the 126-step ours
        (["cpu-attribute", "steering-levers"], "ours-kl4", {"replay"}),  # the full configs' ours before
        (["cpu-attribute", "steering-levers"], "ours-kl4-replay4", set()),  # promoted: the full configs' ours
    ],
)
def test_each_lever_method_changes_only_its_own_settings_of_ours(repo, overlays, lever, changed):
    """A lever of issue 24 is ours with the named training keys changed and nothing else, so that its
    row in docs/results.md measures that lever alone (ours-kl4, the steering KL at weight 4, was measured
    beside the full configuration's ours at weight 1 and became its setting; ours-kl4-replay4, the replay
    at weight 4 too, was measured beside that and replaced it)."""
    cfg = load_config(repo / "config/config.yaml", *(repo / f"config/{o}.yaml" for o in overlays))
    ours, other = method_training(cfg, "ours"), method_training(cfg, lever)
    assert {k for k in ours if ours[k] != other[k]} == changed
    assert cfg["methods"][lever]["kind"] == "ours"
    assert cfg["methods"][lever]["preference"] == cfg["methods"]["ours"]["preference"]


def test_workflow_stops_before_any_job_on_a_bad_config(workdir, snakemake_run):
    cfg = yaml.safe_load((workdir / "config/config.yaml").read_text())
    cfg["training"]["preference"]["beta"] = "big"
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake_run(workdir, "-n", "all", timeout=120)
    assert proc.returncode != 0
    assert "config key 'training.preference.beta': expected number, got 'big'" in proc.stdout
    assert not (workdir / "results").exists()


def test_config_readme_lists_every_key(repo):
    from distalign.core.config_docs import README, render

    text = README.read_text()
    assert render(text) == text, "config/README.md is stale: run python -m distalign.core.config_docs"
