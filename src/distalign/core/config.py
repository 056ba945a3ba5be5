"""Configuration: JSON-schema validation with defaults, plus cross-reference checks.

``validate_config`` is what the Snakefile calls before any job runs. Errors name the config
key (dotted path) and what was expected, and all problems are reported at once.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from distalign.core.io import load_yaml

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


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


@functools.cache
def _packaged_schema() -> dict:
    """The schema file, read once per process (callers must not change it)."""
    return load_schema()


def schema_defaults(section: str, schema: dict | None = None) -> dict:
    """The values the schema gives top-level section ``section`` when the config sets none of it."""
    return with_schema_defaults({}, section, schema)


def with_schema_defaults(config: Mapping | None, section: str, schema: dict | None = None) -> dict:
    """A copy of ``config[section]`` with the schema's defaults filled wherever it sets nothing.

    For library callers that pass a partial config (tests, notebooks); a config that went through
    validate_config already has them. It checks nothing: values are validate_config's business.
    """
    schema = schema or _packaged_schema()
    sub = {**schema["properties"][section], "definitions": schema.get("definitions", {})}
    instance = copy.deepcopy(dict((config or {}).get(section) or {}))
    for _ in _DefaultFillingValidator(sub).iter_errors(instance):
        pass  # the validator fills defaults as it walks; its verdict is not wanted here
    return instance


def _key(path) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


# Keys that existed once, and what replaced them: a config written for an older distalign gets this
# instead of a bare "unknown key".
REMOVED_KEYS = {
    "capabilities.backend": "table5 always runs lm-evaluation-harness now (capabilities.lm_eval_tasks); "
    "the CPU default's tasks are our offline distalign_general_mc and distalign_heldout",
    "capabilities.heldout_text": "the held-out text is the lm-eval task distalign_heldout "
    "(resources/capabilities/lm_eval, its items in resources/capabilities/heldout_long.jsonl)",
    "capabilities.multiple_choice": "the questions are the lm-eval task distalign_general_mc "
    "(resources/capabilities/lm_eval, its items in resources/capabilities/general_mc.jsonl)",
}


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    v = error.validator
    if "propertyNames" in error.schema_path:
        return (
            f"config key '{key}': name {error.instance!r} is not allowed: it becomes a folder name under "
            f"results/, so it must start with a letter or digit and contain only letters, digits and "
            f"'_', '.', '+', '-' (pattern {error.validator_value})"
        )
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        removed = [f"{key}.{k}" for k in extra if f"{key}.{k}" in REMOVED_KEYS]
        hint += "".join(f"; '{k}' was removed: {REMOVED_KEYS[k]}" for k in removed)
        return f"config key '{key}': unknown key(s) {', '.join(map(repr, extra))}{hint}"
    if v == "type":
        return (
            f"config key '{key}': expected {error.validator_value}, got {error.instance!r} "
            f"({type(error.instance).__name__})"
        )
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


def _phrase_key(phrase: str) -> tuple[str, ...]:
    """How the parser and the lexicon judge see a phrase: lower case, words split on whitespace and hyphens
    (``_phrase_pattern`` in distalign.evaluation.judges lets any run of them separate words)."""
    return tuple(w for w in re.split(r"[\s\-]+", phrase.strip().lower()) if w)


def _shared_phrase_errors(name: str, classes: list[dict], field: str, with_label: bool) -> list[str]:
    """A phrase that two classes both claim (keywords with their labels, or lexicon words) would be credited to
    one of them by config order (keywords) or to both (lexicon): a wrong label with no warning, so it is an error."""
    owner: dict[tuple[str, ...], tuple[str, str]] = {}
    errs = []
    for c in classes:
        phrases = list(c.get(field) or [])
        if with_label and c.get("label"):
            phrases = [c["label"], *phrases]
        for phrase in phrases:
            key = _phrase_key(phrase)
            if not key:
                continue
            first = owner.setdefault(key, (c.get("name"), phrase))
            if first[0] != c.get("name"):
                what = "keyword or label" if with_label else "story-lexicon word"
                errs.append(
                    f"config key 'attributes.{name}.classes': {what} {phrase!r} of class {c.get('name')!r} "
                    f"is also {first[1]!r} of class {first[0]!r}; an answer containing it would be given to "
                    f"one class only (or counted for both): give each phrase to one class"
                )
    return errs


def _attribute_errors(config: dict) -> list[str]:
    errs: list[str] = []
    for name, attr in config.get("attributes", {}).items():
        classes = attr.get("classes", [])
        names = [c.get("name") for c in classes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            errs.append(f"config key 'attributes.{name}.classes': duplicate class name(s) {sorted(dup)}")
        errs += _shared_phrase_errors(name, classes, "keywords", with_label=True)
        errs += _shared_phrase_errors(name, classes, "lexicon", with_label=False)
        token_sets: set[str] = set()
        for c in classes:
            token_sets |= set(c.get("tokens", {}))
        default = attr.get("default_token_set", "digits")
        if default not in token_sets:
            errs.append(
                f"config key 'attributes.{name}.default_token_set': token set {default!r} is not "
                f"defined on the classes (defined: {sorted(token_sets)})"
            )
        for ts in sorted(token_sets):
            missing = [c["name"] for c in classes if ts not in c.get("tokens", {})]
            if missing and ts == default:
                errs.append(
                    f"config key 'attributes.{name}.classes': class(es) {missing} have no token in the "
                    f"default token set {ts!r}"
                )
            toks = [c["tokens"][ts] for c in classes if ts in c.get("tokens", {})]
            if len(set(toks)) != len(toks):
                errs.append(
                    f"config key 'attributes.{name}.classes': token set {ts!r} repeats a token {toks}"
                )
        if attr.get("story_judge") == "vader" and sorted(names) != ["negative", "neutral", "positive"]:
            errs.append(
                f"config key 'attributes.{name}.story_judge': 'vader' needs the classes positive, "
                f"negative, neutral; got {names}"
            )
        if attr.get("judge_check") and not story_judged(attr):
            errs.append(
                f"config key 'attributes.{name}.judge_check': the check measures the offline story judge, "
                "and this attribute has none (story_judge: vader, or a lexicon on every class)"
            )
    return errs


def _dataset_errors(config: dict) -> list[str]:
    errs: list[str] = []
    attributes = config.get("attributes", {})
    for name, ds in config.get("datasets", {}).items():
        if ds.get("attribute") not in attributes:
            errs.append(
                f"config key 'datasets.{name}.attribute': unknown attribute {ds.get('attribute')!r} "
                f"(defined: {sorted(attributes)})"
            )
        src = ds.get("adapters_from")
        if src is not None:
            other = config.get("datasets", {}).get(src)
            if other is None:
                errs.append(f"config key 'datasets.{name}.adapters_from': unknown dataset {src!r}")
            elif other.get("attribute") != ds.get("attribute"):
                errs.append(
                    f"config key 'datasets.{name}.adapters_from': dataset {src!r} has attribute "
                    f"{other.get('attribute')!r}, expected {ds.get('attribute')!r} (the steering tokens differ)"
                )
            elif other.get("adapters_from") is not None:
                errs.append(
                    f"config key 'datasets.{name}.adapters_from': dataset {src!r} itself borrows adapters; "
                    "name the dataset they are trained on"
                )
        if ds.get("census") not in config.get("census", {}):
            errs.append(
                f"config key 'datasets.{name}.census': unknown census {ds.get('census')!r} "
                f"(defined: {sorted(config.get('census', {}))})"
            )
    return errs


def _target_errors(config: dict) -> list[str]:
    """Rounded even targets must still be a distribution: no class at 0 and a sum within a point of 1 (the
    authors' 3 decimals give 0.999 for three classes; 1 decimal would give 0.9, 0 decimals 0)."""
    digits = (config.get("targets") or {}).get("round_even")
    if digits is None:
        return []
    errs = []
    for name, ds in config.get("datasets", {}).items():
        attr = config.get("attributes", {}).get(ds.get("attribute"))
        if ds.get("target") != "even" or not attr:
            continue
        k = len(attr.get("classes", []))
        share = round(1.0 / k, int(digits))
        if not _even_rounding_ok(k, int(digits)):
            errs.append(
                f"config key 'targets.round_even': {digits} decimal(s) make the even target of dataset "
                f"{name!r} ({k} classes) {share:g} per class, summing to {k * share:g} instead of 1; use "
                f"null (exact 1/K) or at least {_even_digits_needed(k)} decimals"
            )
    return errs


def _even_rounding_ok(k: int, digits: int) -> bool:
    """Whether 1/K rounded to ``digits`` decimals is still a distribution: above 0, summing to 1 within a point."""
    share = round(1.0 / k, digits)
    return share > 0 and abs(k * share - 1.0) <= 0.01 + 1e-9


def _even_digits_needed(k: int) -> int:
    return next(d for d in range(13) if _even_rounding_ok(k, d) or d == 12)


def _method_errors(config: dict) -> list[str]:
    errs: list[str] = []
    attributes = config.get("attributes", {})
    run = config.get("run", {})
    for name, m in config.get("methods", {}).items():
        if m.get("kind") == "prompt" and m.get("token_set"):
            errs.append(
                f"config key 'methods.{name}.token_set': only methods of kind 'ours' use steering tokens"
            )
        if m.get("story_data"):
            if m.get("kind") not in ("ift", "ours"):
                errs.append(
                    f"config key 'methods.{name}.story_data': only methods of kind 'ift' or 'ours' train on "
                    f"D_story, not {m.get('kind')!r}"
                )
            elif m.get("kind") == "ours" and m.get("preference", "kto") != "nll":
                errs.append(
                    f"config key 'methods.{name}.story_data': D_story has no undesirable stories; use "
                    f"preference 'nll', not {m.get('preference', 'kto')!r}"
                )
            for aname, attr in attributes.items():
                used = any(
                    ds.get("attribute") == aname
                    for dname, ds in config.get("datasets", {}).items()
                    if dname in run.get("datasets", [])
                )
                if not used or name not in run.get("methods", []) or not story_judged(attr):
                    continue
                missing = classes_without_story_hint(attr)
                if missing:
                    errs.append(
                        f"config key 'attributes.{aname}.classes': class(es) {missing} have no story_hint, "
                        f"which method {name!r} (story_data: true) needs to write D_story"
                    )
        if m.get("calibrated") and m.get("kind") != "hinted":
            errs.append(
                f"config key 'methods.{name}.calibrated': only methods of kind 'hinted' draw a class "
                f"to calibrate, not {m.get('kind')!r}"
            )
        corrected = m.get("validity_correction") or []
        if corrected and m.get("kind") != "ours":
            errs.append(
                f"config key 'methods.{name}.validity_correction': only methods of kind 'ours' draw a "
                f"steering token to reweight, not {m.get('kind')!r}"
            )
        if guided_tasks(m.get("steering_guidance")) and m.get("kind") != "ours":
            errs.append(
                f"config key 'methods.{name}.steering_guidance': only methods of kind 'ours' draw a "
                f"steering token to guide by, not {m.get('kind')!r}"
            )
        overrides = m.get("train_overrides") or {}
        unknown = set(overrides) - (set(config.get("training", {})) - {"overrides"})
        if unknown:
            errs.append(
                f"config key 'methods.{name}.train_overrides': unknown training key(s) {sorted(unknown)}"
            )
        elif _second_stage_is_kl_only(m):
            kl_weight = float(deep_merge(config.get("training", {}), overrides).get("kl_weight", 1.0))
            if not m.get("kl", True) or kl_weight == 0:
                why = "kl: false" if not m.get("kl", True) else "training.kl_weight 0"
                errs.append(
                    f"config key 'methods.{name}': preference 'none' with {why} leaves the second stage "
                    "with no loss (nothing to train after the SFT warm-up); turn the steering KL on or "
                    "choose a preference loss (kto, dpo, nll)"
                )
    return errs


def _second_stage_is_kl_only(method: Mapping) -> bool:
    """An ours method with preference 'none': its second stage has the steering KL as its only loss."""
    return method.get("kind") == "ours" and method.get("preference", "kto") == "none"


def _run_errors(config: dict) -> list[str]:
    errs: list[str] = []
    for key in ("datasets", "models", "methods"):
        known = config.get(key, {})
        for item in config.get("run", {}).get(key, []):
            if item not in known:
                errs.append(f"config key 'run.{key}': unknown {key[:-1]} {item!r} (defined: {sorted(known)})")
    return errs


# Config keys that name methods or datasets (the report's rows and columns, the sweeps, table5).
_NAME_REFERENCES = (
    ("report.table1_methods", "methods"),
    ("report.ablation_methods", "methods"),
    ("report.token_methods", "methods"),
    ("report.transfer_methods", "methods"),
    ("report.transfer_datasets", "datasets"),
    ("sweeps.datasets", "datasets"),
    ("sweeps.methods", "methods"),
    ("capabilities.methods", "methods"),
)


def share_class_of(report: Mapping, attribute: str, attr: Mapping) -> str | None:
    """The class whose share fig3/fig11/calibration plot for an attribute: ``report.share_class`` when it is a
    class name of that attribute, or the attribute's entry when it is a mapping; None when neither applies."""
    chosen = report.get("share_class")
    names = [c.get("name") for c in attr.get("classes", [])]
    if isinstance(chosen, Mapping):
        chosen = chosen.get(attribute)
    return chosen if chosen in names else None


def _report_errors(config: dict) -> list[str]:
    errs: list[str] = []
    for dotted, section in _NAME_REFERENCES:
        top, key = dotted.split(".")
        known = config.get(section, {})
        for item in (config.get(top) or {}).get(key) or []:
            if item not in known:
                errs.append(
                    f"config key '{dotted}': unknown {section[:-1]} {item!r} (defined: {sorted(known)})"
                )
    datasets = config.get("datasets", {})
    attributes = config.get("attributes", {})
    cap_ds = (config.get("capabilities") or {}).get("dataset")
    if cap_ds is not None and cap_ds not in datasets:
        errs.append(
            f"config key 'capabilities.dataset': unknown dataset {cap_ds!r} (defined: {sorted(datasets)})"
        )
    report = config.get("report") or {}
    for item in report.get("transfer_datasets") or []:
        if item in datasets and not datasets[item].get("adapters_from"):
            errs.append(
                f"config key 'report.transfer_datasets': dataset {item!r} has no adapters_from "
                "(a transfer dataset names the dataset its adapters are trained on)"
            )
    share = report.get("share_class")
    if isinstance(share, Mapping):
        for aname, cname in share.items():
            if aname not in attributes:
                errs.append(
                    f"config key 'report.share_class.{aname}': unknown attribute {aname!r} "
                    f"(defined: {sorted(attributes)})"
                )
            elif cname not in [c.get("name") for c in attributes[aname].get("classes", [])]:
                errs.append(
                    f"config key 'report.share_class.{aname}': attribute {aname!r} has no class {cname!r} "
                    f"(classes: {[c.get('name') for c in attributes[aname].get('classes', [])]})"
                )
    elif share is not None and not any(
        share in [c.get("name") for c in a.get("classes", [])] for a in attributes.values()
    ):
        errs.append(f"config key 'report.share_class': no attribute has a class {share!r}")
    artefacts = report.get("artefacts") or []
    for fig in ("fig3", "fig11"):
        if fig not in artefacts:
            continue  # checked when the figure is asked for by path (report.smk)
        errs += figure_dataset_errors(config, fig)
    return errs


def figure_dataset_errors(config: dict, fig: str) -> list[str]:
    """Why fig3/fig11 cannot be drawn: its dataset (report.<fig>_dataset) is unknown, or its attribute has no
    share class (report.share_class)."""
    key = f"{fig}_dataset"
    report = config.get("report") or {}
    dataset = report.get(key)
    datasets = config.get("datasets", {})
    if dataset not in datasets:
        return [f"config key 'report.{key}': unknown dataset {dataset!r} (defined: {sorted(datasets)})"]
    aname = datasets[dataset].get("attribute")
    attr = config.get("attributes", {}).get(aname)
    if attr is not None and share_class_of(report, aname, attr) is None:
        return [
            f"config key 'report.share_class': {fig} plots dataset {dataset!r} (report.{key}), whose "
            f"attribute {aname!r} has no class {report.get('share_class')!r} "
            f"(classes: {[c.get('name') for c in attr.get('classes', [])]})"
        ]
    return []


def _endpoint_errors(config: dict) -> list[str]:
    errs: list[str] = []
    judge = config.get("judge", {})
    if judge.get("story") in ("llm", "both") and not judge.get("llm", {}).get("model"):
        errs.append(f"config key 'judge.llm.model': required when judge.story is {judge.get('story')!r}")
    if config.get("prompts", {}).get("paraphraser") == "openai" and not config["prompts"]["openai"].get(
        "model"
    ):
        errs.append("config key 'prompts.openai.model': required when prompts.paraphraser is 'openai'")
    return errs


# One checker per section; validate_config runs them all and reports every problem at once.
def _model_errors(config: dict) -> list[str]:
    errs: list[str] = []
    for name, m in config.get("models", {}).items():
        if m.get("source") == "openai" and not m.get("api"):
            errs.append(
                f"config key 'models.{name}.api': a model of source openai needs its endpoint "
                f"(base_url, api_key_env, ...; base_url null = the openai client's default)"
            )
        elif m.get("source") != "openai" and m.get("api"):
            errs.append(
                f"config key 'models.{name}.api': only models of source openai are called through an "
                f"endpoint, not {m.get('source')!r} (remove the key, or set source: openai)"
            )
    return errs


_SECTION_CHECKS = (
    _model_errors,
    _attribute_errors,
    _dataset_errors,
    _target_errors,
    _method_errors,
    _run_errors,
    _report_errors,
    _endpoint_errors,
)


def _cross_reference_errors(config: dict) -> list[str]:
    return [err for check in _SECTION_CHECKS for err in check(config)]


def _override_errors(config: dict, schema: dict) -> list[str]:
    """Each method's training section after its ``train_overrides``, checked against the schema of
    ``training`` (an override such as an unknown scheduler name is caught here, not in a job)."""
    validator = _section_validator(schema)
    if validator is None:
        return []
    errs = []
    for name, m in config.get("methods", {}).items():
        if m.get("train_overrides"):
            merged = deep_merge(_base_training(config), m["train_overrides"])
            errs += _section_errors(validator, merged, f"methods.{name}.train_overrides")
    return errs


def _section_validator(schema: dict):
    """A validator of one resolved training section: the schema of ``training`` less ``overrides`` (what a job
    gets never holds entries, and an entry or a train_overrides cannot set them), or None without one."""
    sub = schema.get("properties", {}).get("training")
    if not sub:
        return None
    props = {k: v for k, v in sub.get("properties", {}).items() if k != "overrides"}
    return jsonschema.Draft202012Validator({**sub, "properties": props})


def _section_errors(validator, section: Mapping, prefix: str) -> list[str]:
    """``_describe`` of each error of a resolved training section, in key order, with its key put under
    ``prefix`` (the config key the section's values came from)."""
    out = []
    for e in sorted(validator.iter_errors(section), key=lambda e: list(map(str, e.absolute_path))):
        text = _describe(e)
        if text.startswith("config key '<top level>'"):
            out.append(text.replace("<top level>", prefix, 1))
        else:
            out.append(text.replace("config key '", f"config key '{prefix}.", 1))
    return out


# The selectors of a training.overrides entry: the config section its names come from, and what a name is.
_OVERRIDE_SELECTORS = (("models", "model"), ("datasets", "dataset"), ("methods", "method"))


def _training_override_errors(config: dict, schema: dict) -> list[str]:
    """Each entry of ``training.overrides``: its selectors name models, datasets and trained methods that exist,
    and its ``set`` merged into ``training`` passes the schema of ``training`` (less ``overrides``: an entry
    cannot hold entries), so a wrong value in an entry stops the run before any job, as one in
    ``methods.<m>.train_overrides`` does."""
    validator = _section_validator(schema)
    entries = (config.get("training") or {}).get("overrides") or []
    if validator is None or not entries:
        return []
    base = _base_training(config)
    errs: list[str] = []
    for i, entry in enumerate(entries):
        where = f"training.overrides[{i}]"
        for key, what in _OVERRIDE_SELECTORS:
            known = config.get(key, {})
            for name in entry.get(key) or []:
                if name not in known:
                    errs.append(
                        f"config key '{where}.{key}': unknown {what} {name!r} (defined: {sorted(known)})"
                    )
                elif key == "datasets" and known[name].get("adapters_from"):
                    errs.append(
                        f"config key '{where}.datasets': dataset {name!r} trains nothing (it uses the adapters "
                        f"of {known[name]['adapters_from']!r}, datasets.{name}.adapters_from): select "
                        f"{known[name]['adapters_from']!r}"
                    )
                elif key == "methods" and known[name].get("kind") not in TRAINED_KINDS:
                    errs.append(
                        f"config key '{where}.methods': method {name!r} is of kind {known[name].get('kind')!r}, "
                        f"which trains nothing (trained kinds: {', '.join(TRAINED_KINDS)})"
                    )
        found = _section_errors(validator, deep_merge(base, entry["set"]), f"{where}.set")
        errs += found
        if not found and entry["set"].get("kl_weight") == 0:
            for name in entry.get("methods") or config.get("methods", {}):
                m = config.get("methods", {}).get(name) or {}
                if _second_stage_is_kl_only(m) and m.get("kl", True):
                    errs.append(
                        f"config key '{where}.set.kl_weight': 0 leaves method {name!r} (preference 'none') with "
                        "no loss in its second stage; turn the steering KL on or leave the method out of the entry"
                    )
    return errs


_NULL_WORDS = ("null", "~", "")


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _types(schema: Mapping) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _coerce_scalar(value: str, schema: Mapping):
    """A string where the schema wants a number, integer, boolean or null, read as that type (unchanged when it
    does not parse, so that the schema error names it)."""
    types = _types(schema)
    allowed = schema.get("enum")
    if "null" in types and value.strip().lower() in _NULL_WORDS and (allowed is None or None in allowed):
        return None
    if "boolean" in types and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    if "integer" in types:
        try:
            return int(value.strip())
        except ValueError:
            pass
    if "number" in types:
        try:
            number = float(value.strip())
        except ValueError:
            return value
        return (
            int(number) if number.is_integer() and "e" not in value.lower() and "." not in value else number
        )
    return value


def coerce_strings(config: Mapping, schema: dict) -> None:
    """Read, in place, the strings of ``config`` that stand for a number, integer, boolean or null where the
    schema wants one.

    Snakemake parses nested ``--config`` values with YAML's BaseLoader, which keeps every scalar a string
    (``--config 'generation={top_p: 0.9}'`` gives ``'0.9'``), so without this a command-line override of a
    nested number could only be made in an overlay YAML file. A string that does not parse stays as it is and
    the schema check names it. ``null``, ``~`` and the empty string mean null wherever the key allows null.
    """
    defs = schema.get("definitions", {})
    training = (schema.get("properties") or {}).get("training", {})

    def resolve(sub):
        while isinstance(sub, Mapping) and "$ref" in sub:
            sub = {**defs[sub["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in sub.items() if k != "$ref"}}
        return sub if isinstance(sub, Mapping) else {}

    def walk(value, sub):
        sub = resolve(sub)
        if isinstance(value, dict):
            props = sub.get("properties") or {}
            extra = sub.get("additionalProperties")
            for key, item in value.items():
                child = props.get(key, extra if isinstance(extra, Mapping) else None)
                if key in ("train_overrides", "set") and "properties" not in resolve(child or {}):
                    # partial training sections (methods.<m>.train_overrides, training.overrides[].set),
                    # checked against the training schema
                    child = training
                if child is not None:
                    value[key] = walk(item, child)
            return value
        if isinstance(value, list):
            items = sub.get("items")
            return [walk(v, items) for v in value] if isinstance(items, Mapping) else value
        if isinstance(value, str):
            return _coerce_scalar(value, sub)
        return value

    walk(config, schema)


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Fill defaults in place and check ``config``; raise ConfigError listing every problem."""
    schema = schema or load_schema()
    coerce_strings(config, schema)
    errs = _schema_errors(config, schema)
    if not errs:
        errs = (
            _cross_reference_errors(config)
            + _override_errors(config, schema)
            + _training_override_errors(config, schema)
        )
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
        config = deep_merge(config, load_yaml(p) or {})
    if overrides:
        config = deep_merge(config, overrides)
    return validate_config(config)


def _base_training(config: Mapping) -> dict:
    """The ``training`` section without ``overrides`` (the entries are resolved, never handed to a job)."""
    return {k: v for k, v in (config.get("training") or {}).items() if k != "overrides"}


def training_override_entries(
    config: Mapping, method: str, model: str | None = None, dataset: str | None = None
) -> list[int]:
    """Indices of the ``training.overrides`` entries that apply to the train job of (model, dataset, method),
    in list order (the order they are merged in).

    An absent selector matches everything. A ``models`` (``datasets``) selector matches only a model
    (dataset) that is given and listed: resolving without a model gives what the method trains with where
    no entry names a model, and the workflow always resolves with all three (``training_params``).
    """
    picked = []
    for i, entry in enumerate((config.get("training") or {}).get("overrides") or []):
        wanted = {"models": model, "datasets": dataset, "methods": method}
        if all(entry.get(key) is None or wanted[key] in entry[key] for key in wanted):
            picked.append(i)
    return picked


def method_training(config: dict, method: str, model: str | None = None, dataset: str | None = None) -> dict:
    """The training section of the train job of (model, dataset, method): ``training``, then the method's
    ``train_overrides``, then each matching ``training.overrides`` entry in list order (deep merges: a later
    one wins key by key). Without ``model``/``dataset``, entries that select on them are left out
    (:func:`training_override_entries`)."""
    tr = deep_merge(_base_training(config), config["methods"][method].get("train_overrides") or {})
    entries = config["training"].get("overrides") or []
    for i in training_override_entries(config, method, model, dataset):
        tr = deep_merge(tr, entries[i]["set"])
    return tr


# Keys added after results existed: left out of a job's params while they are null (their default),
# so that adding them to the schema reruns nothing.
_NULL_DEFAULT_STAGE_KEYS = ("min_steps", "lr_scheduler_type", "warmup_steps")


def story_binding_weight(
    config: dict, method: str, model: str | None = None, dataset: str | None = None
) -> float:
    """The weight of the story binding term a method trains with: 0 without D_story (no row to bind)."""
    if not config["methods"][method].get("story_data"):
        return 0.0
    return float(method_training(config, method, model, dataset).get("story_binding_weight") or 0.0)


def replay_section(kind: str, training: Mapping) -> dict | None:
    """The replay settings a train job of ``kind`` with this resolved training section uses, or None when
    it trains without replay: only ours has a steering stage to anchor, and a weight of 0 or no
    instructions switch it off (``training.replay``, :mod:`distalign.training.replay`)."""
    replay = training.get("replay") or {}
    if kind != "ours" or not replay.get("instructions") or not float(replay.get("weight") or 0) > 0:
        return None
    return dict(replay)


def training_params(config: dict, method: str, model: str | None = None, dataset: str | None = None) -> dict:
    """What of ``method_training`` changes the adapter of (model, dataset, method): the resolved section
    without unset new keys (and without ``story_binding_weight`` where it has no effect: 0, or a method
    without D_story). The train rule's params: per job, so an override entry reruns only the jobs it changes."""
    tr = method_training(config, method, model, dataset)
    if not story_binding_weight(config, method, model, dataset):
        tr.pop("story_binding_weight", None)
    if replay_section(config["methods"][method]["kind"], tr) is None:
        tr.pop("replay", None)  # IFT and DPO adapters (and ours without replay) do not rerun for it
    for stage in ("sft", "preference"):
        section = tr.get(stage)
        if isinstance(section, dict):
            tr[stage] = {
                k: v for k, v in section.items() if not (k in _NULL_DEFAULT_STAGE_KEYS and v is None)
            }
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


def dataset_applies(
    config: dict, dataset: str, method: str, task: str = "attribute", model: str | None = None
) -> bool:
    """Whether (dataset, method, task) is a meaningful combination, on ``model`` when it is given
    (see ``inapplicable_reason``)."""
    return inapplicable_reason(config, dataset, method, task, model) is None


# The keys of models.<name>.api that change answers; the others say how the endpoint is called.
API_ANSWER_KEYS = ("base_url", "send_seed")


def is_api_model(config: Mapping, model: str) -> bool:
    """Whether ``model`` is served by an OpenAI-compatible endpoint (source openai): no weights here."""
    return config["models"][model]["source"] == "openai"


def needs_weights_reason(config: Mapping, model: str, what: str) -> str | None:
    """Why ``what`` (a method, the probe, the capability check) cannot run on an API model, or None."""
    if not is_api_model(config, model):
        return None
    return (
        f"{what} needs the model's weights or logits, and model {model!r} is served by an API "
        f"(models.{model}.source: openai): only prompting methods run on it"
    )


def inapplicable_reason(
    config: dict, dataset: str, method: str, task: str = "attribute", model: str | None = None
) -> str | None:
    """Why (dataset, method, task) is not a meaningful combination, on ``model`` when it is given, or
    None when it is.

    A method that is not a prompting method (ift, dpo, ours and its variants) needs weights: not on
    an API model (source openai).

    pe-implicit ("follow real-world statistics") needs real targets; a token-set method needs
    the attribute to define that token set; stories skip race as in the paper (no story
    lexicon); a story judge needs a lexicon or vader, and so does a method trained on D_story
    (``story_data: true``), on either task. ``all`` skips such combinations; a file asked for by
    path that needs one fails at DAG time with this reason (workflow/rules/common.smk).
    """
    ds = config["datasets"][dataset]
    m = config["methods"][method]
    attr = config["attributes"][ds["attribute"]]
    if model is not None and m["kind"] in TRAINED_KINDS:
        reason = needs_weights_reason(config, model, f"method {method!r} (kind {m['kind']})")
        if reason:
            return reason
    if m["kind"] == "hinted":
        key = HINT_KEYS[task]
        missing = [c["name"] for c in attr["classes"] if not c.get(key)]
        if missing:
            return (
                f"method {method!r} (kind hinted) asks for a class with its hint, and class(es) {missing} of "
                f"attribute {ds['attribute']!r} have no {key} for the {task} task "
                f"(attributes.{ds['attribute']}.classes[].{key})"
            )
    if m.get("prompt_style") == "implicit" and ds["target"] != "real":
        return (
            f"method {method!r} (prompt_style implicit) asks to follow real-world statistics, and dataset "
            f"{dataset!r} has {ds['target']!r} targets (datasets.{dataset}.target)"
        )
    if m["kind"] == "ours":
        ts = m.get("token_set") or attr.get("default_token_set", "digits")
        missing = [c["name"] for c in attr["classes"] if ts not in c.get("tokens", {})]
        if missing:
            return (
                f"method {method!r} uses token set {ts!r}, which attribute {ds['attribute']!r} of dataset "
                f"{dataset!r} does not define for class(es) {missing} (attributes.{ds['attribute']}.classes[].tokens)"
            )
    if story_judged(attr):
        return None
    if task == "story":
        return (
            f"dataset {dataset!r}: attribute {ds['attribute']!r} has no story judge (a lexicon on every class, "
            f"or story_judge: vader), so its stories cannot be labelled"
        )
    if m.get("story_data"):
        return (
            f"method {method!r} trains on D_story (story_data: true), which needs a story judge; attribute "
            f"{ds['attribute']!r} of dataset {dataset!r} has none"
        )
    return None


def classes_without_story_hint(attr: Mapping) -> list[str]:
    """Classes of an attribute that cannot be asked for when D_story is written (no ``story_hint``)."""
    return [c.get("name") for c in attr.get("classes", []) if not c.get("story_hint")]


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
            lines.append(
                f"| `{where}` | {fmt_type(sub)} | {fmt_default(sub) if key not in required else '*(required)*'} "
                f"| {desc} |"
            )
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


#: Method kinds that train an adapter (``methods.<m>.kind``); the rest (``prompt``) use the base model.
#: One list: training, generation, the pre-flight checks and the rules all read this one.
TRAINED_KINDS = ("ift", "dpo", "ours")
# The class key holding the hint a hinted method appends, per task.
HINT_KEYS = {"attribute": "attribute_hint", "story": "story_hint"}


@dataclass(frozen=True)
class TrainSpec:
    """Everything one train job reads besides its files: the method's spec, its resolved training
    section, the attribute of its dataset and the run seed. ``distalign.training.runner`` takes this instead of a
    whole config, so the rule's params (which carry exactly these) decide when an adapter is rebuilt.

    Built from a validated config by :meth:`from_config` (tests, bench) or from the train rule's params
    by :meth:`from_params`. The fields are plain dicts (they are written into the adapter's
    ``training_config.json``); treat them as read-only.
    """

    method: str
    spec: dict
    training: dict
    attribute_name: str
    attribute: dict
    seed: int

    @property
    def kind(self) -> str:
        return self.spec["kind"]

    @property
    def story_binding_weight(self) -> float:
        """As :func:`story_binding_weight`: 0 without D_story (no row to bind)."""
        if not self.spec.get("story_data"):
            return 0.0
        return float(self.training.get("story_binding_weight") or 0.0)

    @property
    def replay(self) -> dict | None:
        """As :func:`replay_section`: the replay settings, None when the job trains without replay."""
        return replay_section(self.kind, self.training)

    @classmethod
    def from_config(cls, config: Mapping, dataset: str, method: str, model: str | None = None) -> TrainSpec:
        """``model``: the run's model name, which ``training.overrides`` entries may select on (None:
        entries that name models are left out, see :func:`method_training`)."""
        name = config["datasets"][dataset]["attribute"]
        return cls(
            method=method,
            spec=copy.deepcopy(config["methods"][method]),
            training=method_training(config, method, model, dataset),
            attribute_name=name,
            attribute=copy.deepcopy(config["attributes"][name]),
            seed=int(config["seed"]),
        )

    @classmethod
    def from_params(cls, method: str, params_method: Mapping, attribute: Mapping, seed: int) -> TrainSpec:
        """From the train rule's ``params.method`` (``{"spec", "training"}``), ``params.attribute``
        (the attribute entry with its ``name``) and ``params.seed``."""
        attr = copy.deepcopy(dict(attribute))
        return cls(
            method=method,
            spec=copy.deepcopy(dict(params_method["spec"])),
            training=copy.deepcopy(dict(params_method["training"])),
            attribute_name=attr.pop("name"),
            attribute=attr,
            seed=int(seed),
        )


def method_guidance(spec: Mapping, task: str) -> tuple[float | None, float | None]:
    """A method's steering-guidance scale on ``task`` and its plausibility constraint, or (None, None)
    when the task samples plainly (no ``steering_guidance``, or scale 1). A plausibility left unset
    takes the schema's default. Values are checked by the schema and :func:`validate_config`."""
    guidance = spec.get("steering_guidance") or {}
    scale = guided_tasks(guidance).get(task)
    if scale is None:
        return None, None
    plausibility = guidance.get("plausibility")
    return scale, float(plausibility_default() if plausibility is None else plausibility)


def plausibility_default() -> float:
    """The schema's default of ``methods.<name>.steering_guidance.plausibility``."""
    method = _packaged_schema()["definitions"]["method"]
    return float(method["properties"]["steering_guidance"]["properties"]["plausibility"]["default"])


@dataclass(frozen=True)
class GenerationSpec:
    """Everything one generation job reads besides its files: the method's spec, the ``generation``
    settings, the attribute of its dataset, the run seed and where the steering token goes, plus two
    settings that say where the job runs, not what it samples (``device``, ``vllm_python``).
    ``distalign.generation`` takes this instead of a whole config.

    Built from a validated config by :meth:`from_config` (tests, bench, the library) or from a
    generation rule's params by :meth:`from_params`. The dict fields are read-only.
    """

    method: str
    spec: dict
    generation: dict
    attribute_name: str
    attribute: dict
    seed: int
    placement: str = "assistant"
    device: str = "auto"
    vllm_python: str | None = None
    endpoint: dict | None = None  # an API model's call settings (models.<m>.api without API_ANSWER_KEYS)
    api_cache: str | None = None  # generation.api_cache: where the answers of API models are kept

    @property
    def kind(self) -> str:
        return self.spec["kind"]

    @classmethod
    def from_config(
        cls, config: Mapping, dataset: str, method: str, model: str | None = None
    ) -> GenerationSpec:
        """``model``: the run's model name, needed for an API model (its call settings)."""
        name = config["datasets"][dataset]["attribute"]
        gen = dict(config["generation"])
        endpoint = None
        if model is not None and is_api_model(config, model):
            endpoint = api_call_settings(config["models"][model]["api"])
        return cls(
            method=method,
            spec=copy.deepcopy(config["methods"][method]),
            generation={k: v for k, v in gen.items() if k not in OPERATIONAL_GENERATION_KEYS},
            attribute_name=name,
            attribute=copy.deepcopy(config["attributes"][name]),
            seed=int(config["seed"]),
            placement=config["training"].get("steering_placement") or "assistant",
            device=config["training"].get("device") or "auto",
            vllm_python=gen.get("vllm_python"),
            endpoint=endpoint,
            api_cache=gen.get("api_cache"),
        )

    @classmethod
    def from_params(
        cls,
        method: str,
        spec: Mapping,
        generation: Mapping,
        attribute: Mapping,
        seed: int,
        *,
        placement: str | None = None,
        device: str | None = None,
        vllm_python: str | None = None,
        endpoint: Mapping | None = None,
        api_cache: str | None = None,
    ) -> GenerationSpec:
        """From a rule's ``params.method``, ``params.generation``, ``params.attribute`` (the attribute
        entry with its ``name``), ``params.seed`` and ``params.placement`` (None for methods without a
        steering token); ``device``, ``vllm_python``, ``endpoint`` (an API model's call settings) and
        ``api_cache`` say where and how the job runs."""
        attr = copy.deepcopy(dict(attribute))
        return cls(
            method=method,
            spec=copy.deepcopy(dict(spec)),
            generation=copy.deepcopy(dict(generation)),
            attribute_name=attr.pop("name"),
            attribute=attr,
            seed=int(seed),
            placement=placement or "assistant",
            device=device or "auto",
            vllm_python=vllm_python,
            endpoint=api_call_settings(endpoint) if endpoint else None,
            api_cache=api_cache,
        )


# generation.* keys that say where a job runs, not what it samples: left out of its params.
OPERATIONAL_GENERATION_KEYS = ("vllm_python", "api_cache")


def api_call_settings(api: Mapping) -> dict:
    """How an API model's endpoint is called (models.<m>.api without the keys that change answers)."""
    return {k: v for k, v in dict(api).items() if k not in API_ANSWER_KEYS}


TASKS = ("attribute", "story")


def guided_tasks(guidance: Mapping | None) -> dict[str, float]:
    """The tasks a ``steering_guidance`` setting guides, with their scale (scale 1 = plain sampling;
    ``plausibility`` is not a task)."""
    return {task: float(g) for task, g in (guidance or {}).items() if task in TASKS and g != 1}


def judge_config(config: Mapping | None) -> dict:
    """The `judge` config section with the schema's defaults filled (its values are checked there)."""
    return with_schema_defaults(config, "judge")
