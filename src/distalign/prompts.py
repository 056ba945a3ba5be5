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
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from .attributes import Attribute

TASKS = ("attribute", "story")


class TemplateError(ValueError):
    """The template bank is malformed; the message names the file and key."""


class ParaphraseError(RuntimeError):
    """The paraphraser could not produce enough valid prompts."""


def derive_seed(*parts) -> int:
    """A stable 32-bit seed from the master seed and names (independent of PYTHONHASHSEED)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()
    return int(h[:8], 16)


def load_templates(path: str | os.PathLike) -> dict:
    """Load and check the template bank."""
    path = Path(path)
    if not path.exists():
        raise TemplateError(f"{path}: template bank not found")
    with open(path, encoding="utf-8") as fh:
        bank = yaml.safe_load(fh) or {}
    for key in ("templates", "openers", "closers", "answers", "prompt_engineering"):
        if key not in bank:
            raise TemplateError(f"{path}: missing top-level key {key!r}")
    for task, by_attr in (bank["templates"] or {}).items():
        if task not in TASKS:
            raise TemplateError(f"{path}: templates.{task}: unknown task (expected one of {TASKS})")
        for attr, items in (by_attr or {}).items():
            if not items:
                raise TemplateError(f"{path}: templates.{task}.{attr}: empty template list")
            for i, t in enumerate(items):
                if not isinstance(t, str) or "{occupation}" not in t:
                    raise TemplateError(f"{path}: templates.{task}.{attr}[{i}]: must be a string containing "
                                        f"'{{occupation}}', got {t!r}")
    for task in TASKS:
        for key in ("openers", "closers"):
            if not isinstance(bank[key].get(task), list) or not bank[key][task]:
                raise TemplateError(f"{path}: {key}.{task}: expected a non-empty list")
    if not bank["answers"].get("default"):
        raise TemplateError(f"{path}: answers.default: expected a non-empty list of answer forms")
    for style in ("explicit", "implicit"):
        if not bank["prompt_engineering"].get(style):
            raise TemplateError(f"{path}: prompt_engineering.{style}: missing")
    bank["_path"] = str(path)
    return bank


def templates_for(bank: dict, task: str, attribute: str) -> list[str]:
    items = (bank["templates"].get(task) or {}).get(attribute)
    if not items:
        raise TemplateError(f"{bank.get('_path', 'templates')}: templates.{task}.{attribute}: no templates "
                            f"(empty template bank for this attribute and task)")
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
        raise ParaphraseError(f"{where}: only {len(pool)} distinct prompts, need {need} "
                              f"({per_split}); add templates, openers or closers")
    rng = random.Random(seed)
    rng.shuffle(pool)
    out, start = {}, 0
    for split in ("train", "val", "test"):
        n = per_split[split]
        out[split] = pool[start:start + n]
        start += n
    return out


# --------------------------------------------------------------------------------------------
# OpenAI-compatible paraphraser


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
    "\"{context}\" exactly as it is in every version. Vary the wording and sentence structure. "
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
    """Paraphrases templates through an OpenAI-compatible chat endpoint, with a disk cache."""

    def __init__(self, *, model: str, base_url: str | None, api_key_env: str, cache: str | os.PathLike,
                 max_retries: int = 5, timeout: float = 60, temperature: float = 1.0,
                 backoff: float = 1.0, max_attempts_per_template: int = 4, client=None):
        self.model = model
        self.base_url = base_url
        self.cache = ParaphraseCache(cache)
        self.max_retries = max_retries
        self.temperature = temperature
        self.backoff = backoff
        self.max_attempts = max_attempts_per_template
        self.requests_sent = 0
        self._client = client
        self._client_args = dict(base_url=base_url, timeout=timeout, api_key_env=api_key_env)

    def _get_client(self):
        if self._client is None:
            import openai

            env = self._client_args["api_key_env"]
            key = os.environ.get(env)
            if not key:
                raise ParaphraseError(f"environment variable {env} is not set: the OpenAI-compatible paraphraser "
                                      f"needs an API key (config key prompts.openai.api_key_env)")
            self._client = openai.OpenAI(api_key=key, base_url=self._client_args["base_url"],
                                         timeout=self._client_args["timeout"], max_retries=0)
        return self._client

    def _complete(self, request: dict) -> str:
        cached = self.cache.get(request)
        if cached is not None:
            return cached
        import openai

        client = self._get_client()
        last_err: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                self.requests_sent += 1
                resp = client.chat.completions.create(**request)
                text = resp.choices[0].message.content or ""
                self.cache.put(request, text)
                return text
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError) as err:
                last_err = err
                if attempt < self.max_retries:
                    time.sleep(self.backoff * 2 ** attempt)
        raise ParaphraseError(f"paraphraser endpoint {self.base_url or '(default)'} failed after "
                              f"{self.max_retries + 1} attempts: {last_err}")

    def paraphrase(self, request_text: str, context: str, n: int, seed: int) -> list[str]:
        """Up to ``n`` validated, distinct paraphrases of one filled-in template."""
        got: list[str] = []
        for attempt in range(self.max_attempts):
            missing = n - len(got)
            if missing <= 0:
                break
            msg = PARAPHRASE_INSTRUCTION.format(n=missing, context=context, request=request_text)
            request = {"model": self.model, "temperature": self.temperature, "seed": seed + attempt,
                       "messages": [{"role": "user", "content": msg}]}
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


# --------------------------------------------------------------------------------------------


def build_prompts(contexts: list[dict], attribute: Attribute, task: str, bank: dict, per_split: dict[str, int],
                  seed: int, census_name: str, pool_fn: Callable[[str, int], list[str]] | None = None,
                  progress: bool = False) -> list[dict]:
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
                rows.append({"context_id": ctx["context_id"], "context": ctx["context"], "split": split,
                             "prompt_id": f"{split}-{ctx['context_id']}-{j}", "prompt": p})
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
            distribution=format_distribution(attribute.labels, target))
        return _join(prompt, extra)
    if style == "implicit":
        return _join(prompt, bank["prompt_engineering"]["implicit"])
    raise ValueError(f"unknown prompt style {style!r} (expected plain, explicit or implicit)")
