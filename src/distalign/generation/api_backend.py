"""Generation through an OpenAI-compatible chat endpoint: models whose weights distalign never sees
(hosted chat models, a vLLM or TGI server a lab runs; ``models.<name>.source: openai``).

Decisions:

- **One request per (prompt, sample)**, ``n=1``, with the sample's own seed (``derive_seed`` of the
  job's seed parts, the prompt id and the sample index: the seed a local backend would use). A
  sample does not depend on how many are drawn, and two samples of one prompt are two requests.
- **Messages**: one user message holding the method's prompt, no system message: what a local
  model's chat template gets. Sampling: temperature (0 = greedy), top_p, ``max_tokens`` = the
  task's max_new_tokens; top_k > 0 goes in the request body as ``top_k`` (vLLM and TGI read it; the
  OpenAI API has no such parameter and may reject it). ``seed`` is sent unless
  ``models.<m>.api.send_seed`` is false; it is recorded in every row either way.
- **Cache** (:class:`AnswerCache`, ``generation.api_cache``/<model>.jsonl): every answer is
  appended as one line keyed by the SHA-256 of everything that changes it: endpoint URL and model,
  the messages, the sampling parameters sent, the seed, the prompt id and the sample index. A
  rerun or a resumed job sends only the requests that have no line; its rows are built from the
  lines in request order, so a job killed midway and resumed writes the same bytes as one that
  never stopped. The key holds the sample index, so two samples of one prompt are never collapsed
  into one answer even when the endpoint ignores the seed.
- **Rows** carry what local rows carry (``steering_*`` and ``probe_*`` are null: an API has no
  steering draw and returns no logits here), plus what the endpoint reported: ``endpoint_model``
  (the model name it answered with), ``system_fingerprint`` and ``finish_reason``; ``stopped`` is
  ``finish_reason == "stop"`` and ``n_tokens`` the completion tokens it reported (null if none).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from distalign.core.endpoints import ChatEndpoint, EndpointSettings
from distalign.core.progress import Progress
from distalign.core.seeds import derive_seed
from distalign.generation.job import GenerationError, Job, Sampling, job_label, row_head
from distalign.generation.sampling import hinted_prompt

log = logging.getLogger("distalign.generate")


def request_params(sampling: Sampling, seed: int, send_seed: bool) -> dict:
    """The sampling parameters of one chat completion request."""
    params: dict = {"max_tokens": sampling.max_new_tokens, "n": 1}
    if sampling.greedy:
        params["temperature"] = 0.0
    else:
        params["temperature"] = sampling.temperature
        params["top_p"] = sampling.top_p
        if sampling.top_k > 0:
            params["extra_body"] = {"top_k": sampling.top_k}
    if send_seed:
        params["seed"] = int(seed)
    return params


def request_key(
    base_url: str | None, model: str, messages: list, params: Mapping, seed: int, prompt_id, sample: int
) -> str:
    """The cache key of one request: everything that changes its answer, and which sample it is."""
    payload = {
        "base_url": (base_url or "").rstrip("/"),
        "model": model,
        "messages": messages,
        "params": params,
        "seed": int(seed),
        "prompt_id": prompt_id,
        "sample": int(sample),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AnswerCache:
    """Answers of one API model: an append-only JSONL file, one ``{"key", "answer"}`` line per request.

    Reading skips a line that does not parse (the torn last line of a killed job) and keeps the
    first answer of a key. Appends are whole lines under an exclusive ``flock``, so jobs of one
    model running at once can share the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._answers: dict[str, dict] = {}
        torn = 0
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                        self._answers.setdefault(entry["key"], entry["answer"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        torn += 1
        if torn:
            log.warning(
                "%s: skipped %d unreadable line(s) (a job killed mid-write): their requests are sent again",
                self.path,
                torn,
            )

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> dict | None:
        return self._answers.get(key)

    @contextmanager
    def _locked(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def put(self, key: str, answer: dict) -> None:
        line = json.dumps({"key": key, "answer": answer}, sort_keys=True, ensure_ascii=False)
        with self._locked() as fh:
            # a torn line left by a killed writer ends without a newline: start ours on a fresh line
            if fh.tell() > 0:
                with self.path.open("rb") as check:
                    check.seek(-1, os.SEEK_END)
                    if check.read(1) != b"\n":
                        fh.write("\n")
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._answers.setdefault(key, answer)


def api_cache_path(cache_dir: str | os.PathLike | None, model: str) -> Path:
    if not cache_dir:
        raise GenerationError(
            "generation of an API model needs generation.api_cache (where answers are kept)"
        )
    return Path(cache_dir) / f"{model}.jsonl"


class _Request(NamedTuple):
    """One (prompt, sample) of a job: what is sent and how its answer is found in the cache."""

    row: dict
    sample: int
    seed: int
    messages: list
    params: dict
    key: str
    hint: str | None


def run_api_generation(job: Job, endpoint: ChatEndpoint, cache: AnswerCache) -> list[dict]:
    """Rows of ``job`` (one per request and sample), asking ``endpoint`` only what ``cache`` lacks."""
    import openai

    api = job.api or {}
    sampling = Sampling(**job.sampling)
    items = []
    for r in job.requests:
        for s in range(job.samples_per_prompt):
            text, hint = hinted_prompt(job, r, s)
            messages = [{"role": "user", "content": text}]
            seed = derive_seed(*job.seed_parts, r["prompt_id"], s)
            params = request_params(sampling, seed, bool(api.get("send_seed", True)))
            key = request_key(api.get("base_url"), api["model"], messages, params, seed, r["prompt_id"], s)
            items.append(_Request(r, s, seed, messages, params, key, hint))
    missing = [it for it in items if cache.get(it.key) is None]
    log.info(
        "%s: %d requests, %d answered before (%s), %d to send to %s",
        job_label(job),
        len(items),
        len(items) - len(missing),
        cache.path,
        len(missing),
        endpoint.url,
    )

    def ask(item: _Request):
        reply = endpoint.chat(item.messages, **item.params)
        cache.put(
            item.key,
            {
                "text": reply.text,
                "model": reply.model,
                "fingerprint": reply.fingerprint,
                "finish_reason": reply.finish_reason,
                "completion_tokens": reply.completion_tokens,
            },
        )

    if missing:
        with Progress(len(missing), f"generate {job_label(job)}", log, unit="row") as progress:
            endpoint.map(ask, missing, progress=progress)
    versions = {"openai": openai.__version__}
    rows = []
    for it in items:
        answer = cache.get(it.key)
        rows.append(
            {
                **row_head(job, {**it.row, "prompt": it.messages[0]["content"]}, it.sample),
                **({"hint": it.hint} if it.hint is not None else {}),
                "steering_token": None,
                "steering_probs": None,
                "response": answer["text"],
                "n_tokens": answer.get("completion_tokens"),
                "stopped": answer.get("finish_reason") == "stop",
                "seed": it.seed,
                "backend": "openai",
                "versions": versions,
                "probe_token_ids": None,
                "probe_logprobs": None,
                "endpoint_model": answer.get("model"),
                "system_fingerprint": answer.get("fingerprint"),
                "finish_reason": answer.get("finish_reason"),
            }
        )
    return rows


def run_api_job(job: Job, call: Mapping | None, cache_dir, *, client=None) -> list[dict]:
    """Run ``job`` (backend ``openai``) with the call settings ``call`` (models.<m>.api without the
    keys that change answers) and the cache under ``cache_dir``. ``client``: a prebuilt openai
    client (tests)."""
    api = job.api or {}
    model = job.seed_parts[2]
    call = dict(call or {})
    settings = EndpointSettings(
        base_url=api.get("base_url"),
        model=api["model"],
        what=f"generation of model {model!r}",
        config_key=f"models.{model}.api",
        **{k: v for k, v in call.items() if k in EndpointSettings.__dataclass_fields__},
    )
    endpoint = ChatEndpoint(settings, logger=log, client=client)
    return run_api_generation(job, endpoint, AnswerCache(api_cache_path(cache_dir, model)))
