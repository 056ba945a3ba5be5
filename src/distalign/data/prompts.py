"""Prompt templates, paraphrasers and disjoint train/val/test prompt splits.

Two paraphrasers produce the prompt pool of each context:

- ``offline`` (default): every distinct combination opener x template x closer of the bank,
  shuffled with a seed derived from the config seed and the names involved. Deterministic,
  needs nothing.
- ``openai``: an OpenAI-compatible endpoint rewrites each template (the paper used GPT-5.1).
  Every request/response pair is cached on disk (keyed by the full request), so a rerun sends
  no request at all; replies are validated (each paraphrase must contain the context verbatim,
  no duplicates, no empties) and what is missing is asked for again.

The pool is split per context into disjoint train/val/test sets of the configured sizes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from distalign.core.attributes import Attribute
from distalign.core.config import TASKS
from distalign.core.endpoints import APIKeyError, ChatEndpoint, EndpointError, EndpointSettings
from distalign.core.io import YamlError, load_yaml
from distalign.core.seeds import derive_seed


class TemplateError(ValueError):
    """The template bank is malformed; the message names the file and key."""


class ParaphraseError(RuntimeError):
    """The paraphraser could not produce enough valid prompts."""


# What each kind of string of the template bank is formatted with (None: used as written, never
# formatted), and which placeholders it must contain (one of them). Read off the code that uses it:
# offline_pool / OpenAIParaphraser.pool format templates with occupation; render_answer formats
# answers with label, lower and occupation; method_prompt formats prompt_engineering.explicit with
# distribution and appends openers, closers and prompt_engineering.implicit as they are.
PLACEHOLDERS: dict[str, tuple[frozenset[str] | None, frozenset[str]]] = {
    "templates": (frozenset({"occupation"}), frozenset({"occupation"})),
    "openers": (None, frozenset()),
    "closers": (None, frozenset()),
    "answers": (frozenset({"label", "lower", "occupation"}), frozenset({"label", "lower"})),
    "prompt_engineering.explicit": (frozenset({"distribution"}), frozenset({"distribution"})),
    "prompt_engineering.implicit": (None, frozenset()),
}


_BANK_KEYS = ("templates", "openers", "closers", "answers", "prompt_engineering")


def _placeholder_problem(text: str, kind: str) -> str | None:
    """What is wrong with the placeholders of one string of the bank (None: nothing).

    Only bare names are accepted (``{occupation}``, not ``{occupation!r}``, ``{occupation:>9}`` or
    ``{occupation.title}``): the census title and the labels go in verbatim. A string that is
    used as written may hold no brace at all, since ``{occupation}`` there would reach the model
    as these eleven characters.
    """
    allowed, required = PLACEHOLDERS[kind]
    if allowed is None:
        if "{" in text or "}" in text:
            return (
                "braces are not allowed here: this text is used as written, no placeholder is filled "
                f"in, so a '{{...}}' would reach the model verbatim; got {text!r}"
            )
        return None
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as err:
        return f"unbalanced brace ({err}); a literal brace is written '{{{{' or '}}}}'; got {text!r}"
    for field, spec, conv in fields:
        if field not in allowed or spec or conv:
            shown = "{" + field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            what = "positional placeholder" if field == "" else "placeholder"
            names = ", ".join("{" + n + "}" for n in sorted(allowed))
            return f"{what} {shown!r} is not allowed here (allowed: {names}); got {text!r}"
    if required and not required & {f for f, _, _ in fields}:
        need = " or ".join("{" + n + "}" for n in sorted(required))
        return f"must be a string containing {need!r}, got {text!r}"
    return None


def _not_a_string(value) -> str:
    hint = (
        " (YAML reads an unquoted text that starts with '{' as a mapping: quote it)"
        if isinstance(value, dict)
        else ""
    )
    return f"expected a string, got {value!r}{hint}"


def _check_strings(
    items, kind: str, where: str, problems: list[str], *, allow_empty_list: bool = False
) -> None:
    if not isinstance(items, list) or (not items and not allow_empty_list):
        problems.append(f"{where}: expected a non-empty list of strings, got {items!r}")
        return
    for i, text in enumerate(items):
        if not isinstance(text, str):
            problems.append(f"{where}[{i}]: {_not_a_string(text)}")
            continue
        problem = _placeholder_problem(text, kind)
        if problem:
            problems.append(f"{where}[{i}]: {problem}")


def load_templates(path: str | os.PathLike) -> dict:
    """Load and check the template bank; every problem is reported at once, by dotted location.

    Each string is checked for the placeholders its kind is formatted with (``PLACEHOLDERS``), so a
    typo such as ``{ocupation}`` or a stray brace fails here, naming ``templates.story.gender[3]``
    and the file, not as a bare KeyError deep in a job. Unknown keys are errors too (a misspelt
    ``closer:`` would otherwise be ignored).
    """
    path = Path(path)
    if not path.exists():
        raise TemplateError(f"{path}: template bank not found")
    try:
        bank = load_yaml(path)
    except YamlError as err:
        raise TemplateError(str(err)) from None
    if bank is None:
        bank = {}
    if not isinstance(bank, dict):
        raise TemplateError(
            f"{path}: expected a mapping with keys {list(_BANK_KEYS)}, got {type(bank).__name__}"
        )
    for key in _BANK_KEYS:
        if key not in bank:
            raise TemplateError(f"{path}: missing top-level key {key!r}")
    problems = [
        f"{key}: unknown top-level key (expected one of {list(_BANK_KEYS)})"
        for key in bank
        if key not in _BANK_KEYS
    ]
    templates = bank["templates"] or {}
    if not isinstance(templates, dict):
        problems.append(f"templates: expected a mapping task -> attribute -> list, got {templates!r}")
        templates = {}
    for task, by_attr in templates.items():
        if task not in TASKS:
            problems.append(f"templates.{task}: unknown task (expected one of {TASKS})")
        elif not isinstance(by_attr or {}, dict):
            problems.append(f"templates.{task}: expected a mapping attribute -> list, got {by_attr!r}")
        else:
            for attr, items in (by_attr or {}).items():
                if not items:
                    problems.append(f"templates.{task}.{attr}: empty template list")
                else:
                    _check_strings(items, "templates", f"templates.{task}.{attr}", problems)
    for key in ("openers", "closers"):
        section = bank[key] if isinstance(bank[key], dict) else {}
        problems += [
            f"{key}.{task}: unknown task (expected one of {TASKS})" for task in section if task not in TASKS
        ]
        for task in TASKS:
            if not isinstance(section.get(task), list) or not section[task]:
                problems.append(f"{key}.{task}: expected a non-empty list")
            else:
                _check_strings(section[task], key, f"{key}.{task}", problems)
    answers = bank["answers"] if isinstance(bank["answers"], dict) else {}
    if not answers.get("default"):
        problems.append("answers.default: expected a non-empty list of answer forms")
    for name, forms in answers.items():
        _check_strings(forms, "answers", f"answers.{name}", problems)
    styles = bank["prompt_engineering"] if isinstance(bank["prompt_engineering"], dict) else {}
    problems += [
        f"prompt_engineering.{k}: unknown style (expected explicit or implicit)"
        for k in styles
        if k not in ("explicit", "implicit")
    ]
    for style in ("explicit", "implicit"):
        text = styles.get(style)
        if not text:
            problems.append(f"prompt_engineering.{style}: missing")
        elif not isinstance(text, str):
            problems.append(f"prompt_engineering.{style}: {_not_a_string(text)}")
        elif problem := _placeholder_problem(text, f"prompt_engineering.{style}"):
            problems.append(f"prompt_engineering.{style}: {problem}")
    if problems:
        raise TemplateError("\n".join(f"{path}: {p}" for p in problems))
    bank["_path"] = str(path)
    return bank


def templates_for(bank: dict, task: str, attribute: str) -> list[str]:
    items = (bank["templates"].get(task) or {}).get(attribute)
    if not items:
        raise TemplateError(
            f"{bank.get('_path', 'templates')}: templates.{task}.{attribute}: no templates "
            f"(empty template bank for this attribute and task)"
        )
    return list(items)


def answer_forms(bank: dict, attribute: str) -> list[str]:
    return list(bank["answers"].get(attribute) or bank["answers"]["default"])


def render_answer(form: str, label: str, occupation: str = "") -> str:
    return form.format(label=label, lower=label.lower(), occupation=occupation)


def _join(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def offline_pool(bank: dict, task: str, attribute: str, context: str) -> list[str]:
    """Every distinct opener x template x closer combination for one context."""
    out = []
    for t in templates_for(bank, task, attribute):
        body = t.format(occupation=context)
        for o in bank["openers"][task]:
            for c in bank["closers"][task]:
                out.append(_join(o, body, c))
    return list(dict.fromkeys(out))


def split_pool(pool: list[str], per_split: dict[str, int], seed: int, where: str) -> dict[str, list[str]]:
    """Shuffle a pool of distinct prompts and cut disjoint splits of the requested sizes."""
    pool = list(dict.fromkeys(pool))
    need = sum(per_split.values())
    if len(pool) < need:
        raise ParaphraseError(
            f"{where}: only {len(pool)} distinct prompts, need {need} "
            f"({per_split}); add templates, openers or closers"
        )
    rng = random.Random(seed)
    rng.shuffle(pool)
    out, start = {}, 0
    for split in ("train", "val", "test"):
        n = per_split[split]
        out[split] = pool[start : start + n]
        start += n
    return out


class ParaphraseCache:
    """Append-only JSONL cache: request key -> reply text."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._data: dict[str, str] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if line:
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            continue  # a torn last line from a killed run: ignore it
                        self._data[rec["key"]] = rec["reply"]

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def get(self, request: dict) -> str | None:
        return self._data.get(self.key(request))

    def put(self, request: dict, reply: str) -> None:
        k = self.key(request)
        self._data[k] = reply
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": k, "reply": reply}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def __len__(self) -> int:
        return len(self._data)


PARAPHRASE_INSTRUCTION = (
    "Rewrite the request below in {n} different ways. Keep its meaning and keep the quoted text "
    '"{context}" exactly as it is in every version. Vary the wording and sentence structure. '
    "Return one version per line, with no numbering and nothing else.\n\nRequest: {request}"
)


def _clean_line(line: str) -> str:
    line = line.strip()
    line = re.sub(r"^(?:[-*\u2022]|\d+[.)])\s*", "", line)
    return line.strip().strip('"').strip() if line.count('"') == 2 and line.startswith('"') else line.strip()


def validate_paraphrases(reply: str, context: str, existing: set[str]) -> list[str]:
    """Keep the lines of a reply that contain the context verbatim and are new."""
    out = []
    for raw in reply.splitlines():
        line = _clean_line(raw)
        if not line or context not in line or len(line) > 600:
            continue
        if line in existing or line in out:
            continue
        out.append(line)
    return out


class OpenAIParaphraser:
    """Paraphrases templates through an OpenAI-compatible chat endpoint, with a disk cache.

    Requests go through :class:`distalign.core.endpoints.ChatEndpoint`, the client and retry policy
    every endpoint caller shares (connection errors, timeouts, HTTP 429 and 5xx retried with
    exponential backoff, logged under ``distalign.prompts``; other HTTP errors fail at once). A
    request that fails for good, or an API-key variable that is unset or blank, raises
    :class:`ParaphraseError` naming the URL, the model and the config key. ``client``: an already
    built client (tests inject stubs); then no key is read.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key_env: str,
        cache: str | os.PathLike,
        max_retries: int = 5,
        timeout: float = 60,
        temperature: float = 1.0,
        backoff: float = 1.0,
        max_attempts_per_template: int = 4,
        client=None,
    ):
        self.model = model
        self.cache = ParaphraseCache(cache)
        self.temperature = temperature
        self.max_attempts = max_attempts_per_template
        self.stats: Counter = Counter()
        settings = EndpointSettings(
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            timeout=float(timeout),
            max_retries=int(max_retries),
            backoff=float(backoff),
            concurrency=1,  # one template after another: each reply decides what is asked next
            what="paraphraser",
            config_key="prompts.openai",
        )
        self.endpoint = ChatEndpoint(
            settings, stats=self.stats, logger=logging.getLogger("distalign.prompts"), client=client
        )

    @property
    def requests_sent(self) -> int:
        """Requests sent to the endpoint (every attempt; cache hits send none)."""
        return self.stats["requests"]

    def _complete(self, request: dict) -> str:
        cached = self.cache.get(request)
        if cached is not None:
            return cached
        params = {k: v for k, v in request.items() if k != "messages"}
        try:
            text = self.endpoint.chat(request["messages"], **params).text
        except (EndpointError, APIKeyError) as err:
            raise ParaphraseError(str(err)) from None
        self.cache.put(request, text)
        return text

    def paraphrase(self, request_text: str, context: str, n: int, seed: int) -> list[str]:
        """Up to ``n`` validated, distinct paraphrases of one filled-in template."""
        got: list[str] = []
        for attempt in range(self.max_attempts):
            missing = n - len(got)
            if missing <= 0:
                break
            msg = PARAPHRASE_INSTRUCTION.format(n=missing, context=context, request=request_text)
            request = {
                "model": self.model,
                "temperature": self.temperature,
                "seed": seed + attempt,
                "messages": [{"role": "user", "content": msg}],
            }
            got += validate_paraphrases(self._complete(request), context, set(got))
        return got[:n]

    def pool(self, bank: dict, task: str, attribute: str, context: str, need: int, seed: int) -> list[str]:
        templates = templates_for(bank, task, attribute)
        per_template = -(-need // len(templates)) + 2  # a little slack for rejects
        pool: list[str] = []
        for i, t in enumerate(templates):
            body = t.format(occupation=context)
            for p in self.paraphrase(body, context, per_template, seed=derive_seed(seed, i)):
                if p not in pool:
                    pool.append(p)
        return pool


def build_prompts(
    contexts: list[dict],
    attribute: Attribute,
    task: str,
    bank: dict,
    per_split: dict[str, int],
    seed: int,
    census_name: str,
    pool_fn: Callable[[str, int], list[str]] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Prompt rows for every context: ``{context_id, context, split, prompt_id, prompt}``.

    The seed of each context's shuffle depends on (seed, census, attribute, task, context), not on
    the dataset name, so datasets that share contexts (UK-real, UK-even) get the same prompts.
    """
    rows = []
    it = contexts
    if progress:
        from tqdm import tqdm

        it = tqdm(contexts, desc=f"prompts {census_name}/{attribute.name}/{task}", unit="context")
    for ctx in it:
        s = derive_seed(seed, "prompts", census_name, attribute.name, task, ctx["context"])
        if pool_fn is None:
            pool = offline_pool(bank, task, attribute.name, ctx["context"])
        else:
            pool = pool_fn(ctx["context"], s)
        where = f"prompts for {census_name}/{attribute.name}/{task}, context {ctx['context']!r}"
        splits = split_pool(pool, per_split, s, where)
        for split, prompts in splits.items():
            for j, p in enumerate(prompts):
                rows.append(
                    {
                        "context_id": ctx["context_id"],
                        "context": ctx["context"],
                        "split": split,
                        "prompt_id": f"{split}-{ctx['context_id']}-{j}",
                        "prompt": p,
                    }
                )
    return rows


def format_distribution(labels: list[str], probs: list[float]) -> str:
    def pct(p: float) -> str:
        s = f"{100 * p:.1f}".rstrip("0").rstrip(".")
        return f"{s}%"

    parts = [f"{pct(p)} {lab}" for lab, p in zip(labels, probs, strict=True)]
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def method_prompt(prompt: str, style: str, bank: dict, attribute: Attribute, target: list[float]) -> str:
    """The user prompt a prompting method sends (plain, explicit distribution, or implicit statistics)."""
    if style == "plain":
        return prompt
    if style == "explicit":
        extra = bank["prompt_engineering"]["explicit"].format(
            distribution=format_distribution(attribute.labels, target)
        )
        return _join(prompt, extra)
    if style == "implicit":
        return _join(prompt, bank["prompt_engineering"]["implicit"])
    raise ValueError(f"unknown prompt style {style!r} (expected plain, explicit or implicit)")
