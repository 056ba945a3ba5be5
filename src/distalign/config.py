"""Configuration: JSON-schema validation with defaults, plus cross-reference checks.

``validate_config`` is what the Snakefile calls before any job runs. Errors name the config
key (dotted path) and what was expected, and all problems are reported at once.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import jsonschema
import yaml

from .guidance import guided_tasks

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key(s) and what was expected."""


def load_schema(path: str | os.PathLike | None = None) -> dict:
    with open(path or SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if isinstance(subschema, Mapping) and "default" in subschema and prop not in instance:
                    instance[prop] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return f"config key '{key}': unknown key(s) {', '.join(map(repr, extra))}{hint}"
    if v == "type":
        return (f"config key '{key}': expected {error.validator_value}, got {error.instance!r} "
                f"({type(error.instance).__name__})")
    if v == "enum":
        return f"config key '{key}': expected one of {error.validator_value}, got {error.instance!r}"
    if v == "required":
        return f"config key '{key}': {error.message}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "minLength"):
        return f"config key '{key}': {error.message}"
    if v == "pattern":
        return f"config key '{key}': {error.instance!r} must match {error.validator_value}"
    return f"config key '{key}': {error.message}"


def _schema_errors(config: dict, schema: dict) -> list[str]:
    validator = _DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [_describe(e) for e in errors]


def _cross_reference_errors(config: dict) -> list[str]:
    errs: list[str] = []
    attributes = config.get("attributes", {})
    for name, attr in attributes.items():
        classes = attr.get("classes", [])
        names = [c.get("name") for c in classes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            errs.append(f"config key 'attributes.{name}.classes': duplicate class name(s) {sorted(dup)}")
        token_sets: set[str] = set()
        for c in classes:
            token_sets |= set(c.get("tokens", {}))
        default = attr.get("default_token_set", "digits")
        if default not in token_sets:
            errs.append(f"config key 'attributes.{name}.default_token_set': token set {default!r} is not "
                        f"defined on the classes (defined: {sorted(token_sets)})")
        for ts in sorted(token_sets):
            missing = [c["name"] for c in classes if ts not in c.get("tokens", {})]
            if missing and ts == default:
                errs.append(f"config key 'attributes.{name}.classes': class(es) {missing} have no token in the "
                            f"default token set {ts!r}")
            toks = [c["tokens"][ts] for c in classes if ts in c.get("tokens", {})]
            if len(set(toks)) != len(toks):
                errs.append(f"config key 'attributes.{name}.classes': token set {ts!r} repeats a token {toks}")
        if attr.get("story_judge") == "vader" and sorted(names) != ["negative", "neutral", "positive"]:
            errs.append(f"config key 'attributes.{name}.story_judge': 'vader' needs the classes positive, "
                        f"negative, neutral; got {names}")
        if attr.get("judge_check") and not story_judged(attr):
            errs.append(f"config key 'attributes.{name}.judge_check': the check measures the offline story judge, "
                        "and this attribute has none (story_judge: vader, or a lexicon on every class)")
    for name, ds in config.get("datasets", {}).items():
        if ds.get("attribute") not in attributes:
            errs.append(f"config key 'datasets.{name}.attribute': unknown attribute {ds.get('attribute')!r} "
                        f"(defined: {sorted(attributes)})")
        src = ds.get("adapters_from")
        if src is not None:
            other = config.get("datasets", {}).get(src)
            if other is None:
                errs.append(f"config key 'datasets.{name}.adapters_from': unknown dataset {src!r}")
            elif other.get("attribute") != ds.get("attribute"):
                errs.append(f"config key 'datasets.{name}.adapters_from': dataset {src!r} has attribute "
                            f"{other.get('attribute')!r}, expected {ds.get('attribute')!r} (the steering tokens differ)")
            elif other.get("adapters_from") is not None:
                errs.append(f"config key 'datasets.{name}.adapters_from': dataset {src!r} itself borrows adapters; "
                            "name the dataset they are trained on")
        if ds.get("census") not in config.get("census", {}):
            errs.append(f"config key 'datasets.{name}.census': unknown census {ds.get('census')!r} "
                        f"(defined: {sorted(config.get('census', {}))})")
    for name, m in config.get("methods", {}).items():
        if m.get("kind") == "prompt":
            for key in ("token_set",):
                if m.get(key):
                    errs.append(f"config key 'methods.{name}.{key}': only methods of kind 'ours' use steering tokens")
        if m.get("story_data"):
            if m.get("kind") not in ("ift", "ours"):
                errs.append(f"config key 'methods.{name}.story_data': only methods of kind 'ift' or 'ours' train on "
                            f"D_story, not {m.get('kind')!r}")
            elif m.get("kind") == "ours" and m.get("preference", "kto") != "nll":
                errs.append(f"config key 'methods.{name}.story_data': D_story has no undesirable stories; use "
                            f"preference 'nll', not {m.get('preference', 'kto')!r}")
            for aname, attr in attributes.items():
                used = any(ds.get("attribute") == aname for dname, ds in config.get("datasets", {}).items()
                           if dname in config.get("run", {}).get("datasets", []))
                if not used or name not in config.get("run", {}).get("methods", []) or not story_judged(attr):
                    continue
                missing = [c.get("name") for c in attr.get("classes", []) if not c.get("story_hint")]
                if missing:
                    errs.append(f"config key 'attributes.{aname}.classes': class(es) {missing} have no story_hint, "
                                f"which method {name!r} (story_data: true) needs to write D_story")
        corrected = m.get("validity_correction") or []
        if corrected and m.get("kind") != "ours":
            errs.append(f"config key 'methods.{name}.validity_correction': only methods of kind 'ours' draw a "
                        f"steering token to reweight, not {m.get('kind')!r}")
        if guided_tasks(m.get("steering_guidance")) and m.get("kind") != "ours":
            errs.append(f"config key 'methods.{name}.steering_guidance': only methods of kind 'ours' draw a "
                        f"steering token to guide by, not {m.get('kind')!r}")
        overrides = m.get("train_overrides") or {}
        unknown = set(overrides) - set(config.get("training", {}))
        if unknown:
            errs.append(f"config key 'methods.{name}.train_overrides': unknown training key(s) {sorted(unknown)}")
    for section, key in (("datasets", "datasets"), ("models", "models"), ("methods", "methods")):
        known = config.get(section, {})
        for item in config.get("run", {}).get(key, []):
            if item not in known:
                errs.append(f"config key 'run.{key}': unknown {key[:-1]} {item!r} (defined: {sorted(known)})")
    refs = [("report.table1_methods", "methods"), ("report.ablation_methods", "methods"),
            ("report.token_methods", "methods"), ("report.transfer_methods", "methods"),
            ("report.transfer_datasets", "datasets"), ("sweeps.datasets", "datasets"), ("sweeps.methods", "methods"),
            ("capabilities.methods", "methods")]
    for dotted, section in refs:
        top, key = dotted.split(".")
        known = config.get(section, {})
        for item in (config.get(top) or {}).get(key) or []:
            if item not in known:
                errs.append(f"config key '{dotted}': unknown {section[:-1]} {item!r} (defined: {sorted(known)})")
    cap_ds = (config.get("capabilities") or {}).get("dataset")
    if cap_ds is not None and cap_ds not in config.get("datasets", {}):
        errs.append(f"config key 'capabilities.dataset': unknown dataset {cap_ds!r} "
                    f"(defined: {sorted(config.get('datasets', {}))})")
    for item in (config.get("report") or {}).get("transfer_datasets") or []:
        if item in config.get("datasets", {}) and not config["datasets"][item].get("adapters_from"):
            errs.append(f"config key 'report.transfer_datasets': dataset {item!r} has no adapters_from "
                        "(a transfer dataset names the dataset its adapters are trained on)")
    judge = config.get("judge", {})
    if judge.get("story") in ("llm", "both") and not judge.get("llm", {}).get("model"):
        errs.append(f"config key 'judge.llm.model': required when judge.story is {judge.get('story')!r}")
    if config.get("prompts", {}).get("paraphraser") == "openai" and not config["prompts"]["openai"].get("model"):
        errs.append("config key 'prompts.openai.model': required when prompts.paraphraser is 'openai'")
    return errs


def _override_errors(config: dict, schema: dict) -> list[str]:
    """Each method's training section after its ``train_overrides``, checked against the schema of
    ``training`` (an override such as an unknown scheduler name is caught here, not in a job)."""
    sub = schema.get("properties", {}).get("training")
    if not sub:
        return []
    validator = jsonschema.Draft202012Validator(sub)
    errs = []
    for name, m in config.get("methods", {}).items():
        if not m.get("train_overrides"):
            continue
        merged = deep_merge(config.get("training", {}), m["train_overrides"])
        for e in sorted(validator.iter_errors(merged), key=lambda e: list(map(str, e.absolute_path))):
            text = _describe(e)
            errs.append(text.replace("config key '", f"config key 'methods.{name}.train_overrides.", 1))
    return errs


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Fill defaults in place and check ``config``; raise ConfigError listing every problem."""
    schema = schema or load_schema()
    errs = _schema_errors(config, schema)
    if not errs:
        errs = _cross_reference_errors(config) + _override_errors(config, schema)
    if errs:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errs))
    return config


def deep_merge(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(*paths: str | os.PathLike, overrides: Mapping | None = None) -> dict:
    """Load YAML files (later ones override earlier ones), apply overrides, validate."""
    config: dict = {}
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            config = deep_merge(config, yaml.safe_load(fh) or {})
    if overrides:
        config = deep_merge(config, overrides)
    return validate_config(config)


def method_training(config: dict, method: str) -> dict:
    """The training section with the method's overrides applied."""
    return deep_merge(config["training"], config["methods"][method].get("train_overrides") or {})


# Keys added after results existed: left out of a job's params while they are null (their default),
# so that adding them to the schema reruns nothing.
_NULL_DEFAULT_STAGE_KEYS = ("min_steps", "lr_scheduler_type")


def story_binding_weight(config: dict, method: str) -> float:
    """The weight of the story binding term a method trains with: 0 without D_story (no row to bind)."""
    if not config["methods"][method].get("story_data"):
        return 0.0
    return float(method_training(config, method).get("story_binding_weight") or 0.0)


def training_params(config: dict, method: str) -> dict:
    """What of ``method_training`` changes an adapter: the resolved section without unset new keys
    (and without ``story_binding_weight`` where it has no effect: 0, or a method without D_story)."""
    tr = method_training(config, method)
    if not story_binding_weight(config, method):
        tr.pop("story_binding_weight", None)
    for stage in ("sft", "preference"):
        section = tr.get(stage)
        if isinstance(section, dict):
            tr[stage] = {k: v for k, v in section.items() if not (k in _NULL_DEFAULT_STAGE_KEYS and v is None)}
    return tr


def stage_epochs(stage: dict, n_rows: int) -> float:
    """Epochs a training stage runs on ``n_rows`` rows: ``epochs``, raised to the smallest whole number
    of epochs that gives at least ``min_steps`` optimizer steps (one process, per-device batch size)."""
    epochs = float(stage["epochs"])
    min_steps = stage.get("min_steps")
    if not min_steps or n_rows <= 0:
        return epochs
    per_epoch = math.ceil(n_rows / int(stage["batch_size"]))
    steps = math.ceil(epochs * per_epoch)  # how transformers' Trainer counts max_steps
    if steps >= min_steps:
        return epochs
    return float(math.ceil(int(min_steps) / per_epoch))


def adapter_dataset(config: dict, dataset: str) -> str:
    """The dataset whose adapters a dataset's trained methods use (itself, or ``adapters_from``)."""
    return config["datasets"][dataset].get("adapters_from") or dataset


def dataset_applies(config: dict, dataset: str, method: str, task: str = "attribute") -> bool:
    """Whether (dataset, method, task) is a meaningful combination.

    pe-implicit ("follow real-world statistics") needs real targets; a token-set method needs
    the attribute to define that token set; stories skip race as in the paper (no story
    lexicon); a story judge needs a lexicon or vader, and so does a method trained on D_story
    (``story_data: true``), on either task.
    """
    ds = config["datasets"][dataset]
    m = config["methods"][method]
    attr = config["attributes"][ds["attribute"]]
    if m.get("prompt_style") == "implicit" and ds["target"] != "real":
        return False
    if m["kind"] == "ours":
        ts = m.get("token_set") or attr.get("default_token_set", "digits")
        if any(ts not in c.get("tokens", {}) for c in attr["classes"]):
            return False
    needs_judge = task == "story" or bool(m.get("story_data"))
    return story_judged(attr) or not needs_judge


def story_judged(attr: dict) -> bool:
    """Whether an attribute has an offline story judge (a lexicon for every class, or vader)."""
    return attr.get("story_judge") == "vader" or all(c.get("lexicon") for c in attr.get("classes", []))


def schema_markdown(schema: dict | None = None) -> str:
    """A Markdown table of every config key (dotted path, type, default, description) from the schema."""
    schema = schema or load_schema()
    defs = schema.get("definitions", {})
    lines: list[str] = []

    def fmt_default(sub) -> str:
        if "default" not in sub:
            return "*(required)*"
        return "`" + json.dumps(sub["default"]) + "`"

    def fmt_type(sub) -> str:
        if "enum" in sub:
            return " \\| ".join(f"`{v}`" for v in sub["enum"])
        t = sub.get("type", "object" if "properties" in sub else "")
        return " \\| ".join(t) if isinstance(t, list) else str(t)

    def walk(node, path, required=()):
        for key, sub in (node.get("properties") or {}).items():
            if "$ref" in sub:
                sub = {**defs[sub["$ref"].rsplit("/", 1)[-1]], **sub}
            where = f"{path}.{key}" if path else key
            desc = " ".join(str(sub.get("description", "")).split())
            lines.append(f"| `{where}` | {fmt_type(sub)} | {fmt_default(sub) if key not in required else '*(required)*'} "
                         f"| {desc} |")
            walk(sub, where, sub.get("required", ()))
            extra = sub.get("additionalProperties")
            if isinstance(extra, dict):
                if "$ref" in extra:
                    extra = defs[extra["$ref"].rsplit("/", 1)[-1]]
                walk(extra, f"{where}.<name>", extra.get("required", ()))
            items = sub.get("items")
            if isinstance(items, dict) and "$ref" in items:
                item = defs[items["$ref"].rsplit("/", 1)[-1]]
                walk(item, f"{where}[]", item.get("required", ()))

    walk(schema, "", schema.get("required", ()))
    head = ["| key | type | default | description |", "|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"
