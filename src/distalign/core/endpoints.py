"""The OpenAI-compatible client every endpoint caller shares (judge, paraphraser, generation, pre-flight).

:func:`openai_client` builds an ``openai.OpenAI`` client with the key read from the environment;
:class:`ChatEndpoint` wraps one such client with the single retry policy and rate limit of every
caller that sends chat completions (the story LLM judge, the paraphraser, the generation backend of
API-only models). The pre-flight check uses :func:`openai_client` alone (one request, no retries).

Decisions:

- **Retries are ours; the openai client's own are off** (``max_retries=0``). The client's retries
  would be invisible to the callers' ``stats`` (the judge reports retries; tests read them) and to
  their loggers (the client logs at INFO under ``openai._base_client``), and their backoff (0.5 s
  doubling to 8 s, with jitter) ignores the configured ``backoff``. Ours: connection errors,
  timeouts, HTTP 429 and 5xx are retried ``max_retries`` times, ``backoff`` doubling per retry and
  capped at :data:`MAX_BACKOFF_S`; each retry is counted and logged as a warning (a wait of up to a
  minute must not look like a hang). Other HTTP errors (400, 401, 404, 408, 409, 422...) are
  configuration or request problems that a retry does not fix: they fail at once.
- **Retry-After comes from the error, not from a raw response.** The openai client attaches the
  HTTP response to every ``APIStatusError`` (``err.response.headers``), so the success path stays a
  plain ``client.chat.completions.create`` (no ``with_raw_response`` and ``.parse()``), which stub
  clients in tests also provide. On a 429 or 503 that carries ``Retry-After`` (seconds or an HTTP
  date, :func:`retry_after_seconds`), the wait is what it says, capped at :data:`MAX_RETRY_AFTER_S`,
  instead of the backoff; the backoff of later retries is unchanged. The client's private parser
  of the header is not used (private API).
- **Rate limit: a minimum interval** of ``1 / requests_per_second`` between the starts of any two
  requests of one :class:`ChatEndpoint`, over all its threads, retries included (a token bucket
  of one token: no bursts, which is what a per-second quota wants).
- **The client is created lazily and once** (a lock), so that building a judge or a paraphraser
  never needs the key; a missing key fails at the first request or when a caller asks for
  :meth:`ChatEndpoint.client` early to fail fast. ``httpx`` clients are thread-safe: all threads
  share the one client and its connection pool.
- :meth:`ChatEndpoint.map` raises the first failure in time (not in item order), cancels the items
  not yet started and waits for those in flight (a thread cannot be interrupted; each is bounded by
  its timeout and retries).
"""

from __future__ import annotations

import collections
import email.utils
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC
from time import monotonic, sleep, time

MAX_BACKOFF_S = 30.0  # the longest exponential-backoff wait between two attempts


MAX_RETRY_AFTER_S = 60.0  # the longest wait a Retry-After header can ask for


RETRY_AFTER_STATUSES = (429, 503)  # the statuses whose Retry-After header is honoured


class APIKeyError(RuntimeError):
    """The environment variable that holds an endpoint's API key is not set, or set but empty."""


class EndpointError(RuntimeError):
    """A chat request failed for good: a non-transient HTTP error, or transient ones past the last retry.

    The message names the endpoint's URL, the model and the config key; ``status`` is the HTTP
    status of the last failure (None for a connection error or timeout).
    """

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


def openai_client(base_url: str | None, api_key_env: str, *, timeout: float, max_retries: int = 0):
    """An ``openai.OpenAI`` client for an OpenAI-compatible endpoint, with the API key read from the
    environment variable ``api_key_env`` only (never from the config, so it is never logged).

    A variable that is unset or blank raises :class:`APIKeyError` naming it: sent as is, an empty key
    would be refused by a real service with a less helpful message. ``base_url`` None: the openai
    client's default (``OPENAI_BASE_URL`` or api.openai.com). ``max_retries`` defaults to 0: callers
    that retry do it themselves (counted and logged), the pre-flight check not at all.
    """
    key = os.environ.get(api_key_env)
    if key is None:
        raise APIKeyError(f"environment variable {api_key_env} is not set")
    if not key.strip():
        raise APIKeyError(f"environment variable {api_key_env} is set but empty")
    import openai

    return openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header value asks to wait (RFC 9110: delay-seconds or an HTTP date).

    None when the value is missing or unreadable (the caller then backs off as usual). A date in the
    past is 0. Fractional seconds are accepted (some servers send them). ``now``: the Unix time a
    date is measured from (default: the current time).
    """
    if value is None or not str(value).strip():
        return None
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC by RFC 5322
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class EndpointSettings:
    """How to reach one OpenAI-compatible chat endpoint and how hard to try.

    ``what`` names the caller in errors and logs ("LLM judge", "paraphraser", "generation");
    ``config_key`` is the dotted config section the settings came from ("judge.llm"), named in
    errors so that the user knows what to fix. Defaults match the schema's ``judge.llm`` defaults;
    callers pass their configured values.
    """

    base_url: str | None
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0
    concurrency: int = 4
    requests_per_second: float | None = None
    what: str = "endpoint"
    config_key: str | None = None

    def __post_init__(self):
        def bad(field: str, expected: str):
            where = f"{self.config_key}.{field}" if self.config_key else f"{self.what} setting {field}"
            return ValueError(f"{where}: expected {expected}, got {getattr(self, field)!r}")

        if not isinstance(self.model, str) or not self.model.strip():
            raise bad("model", "the served model name (a non-empty string)")
        if not self.timeout or self.timeout <= 0:
            raise bad("timeout", "a number of seconds > 0")
        if self.max_retries < 0:
            raise bad("max_retries", "an integer >= 0")
        if self.backoff < 0:
            raise bad("backoff", "a number of seconds >= 0")
        if self.concurrency < 1:
            raise bad("concurrency", "an integer >= 1")
        if self.requests_per_second is not None and not self.requests_per_second > 0:
            raise bad("requests_per_second", "a number > 0 or null (no limit)")

    def key(self, field: str) -> str:
        """The dotted config key of one field ("judge.llm.model"), or the field alone."""
        return f"{self.config_key}.{field}" if self.config_key else field


@dataclass(frozen=True)
class ChatReply:
    """One chat completion: its text and what the endpoint said about the model that wrote it."""

    text: str
    model: str | None
    fingerprint: str | None
    finish_reason: str | None
    completion_tokens: int | None = None  # what the endpoint reported in ``usage`` (None if nothing)


class _MinInterval:
    """Request starts at least ``1 / per_second`` seconds apart, over all threads (a one-token bucket)."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / float(per_second)
        self._lock = threading.Lock()
        self._next = -math.inf  # monotonic time of the next free slot

    def wait(self) -> None:
        with self._lock:  # reserve a slot under the lock, sleep outside it
            now = monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            sleep(slot - now)


# The HTTP libraries under the openai client log one INFO line per request (thousands per job):
# an endpoint caller keeps them to warnings and up.
QUIET_LOGGERS = ("httpx", "httpx2", "openai")


def quiet_http_logs() -> None:
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.level, logging.WARNING))


class ChatEndpoint:
    """One OpenAI-compatible chat endpoint: a lazily created shared client, retries, a rate limit.

    ``stats`` (a Counter, shared with the caller if given) counts ``requests`` (every attempt
    sent), ``transient_errors`` and ``retries``; :meth:`count` adds the caller's own keys under
    the same lock. ``logger``: where retries are logged (the caller's, e.g. ``distalign.judge``).
    ``client``: an already built client (tests inject stubs); then no key is read.
    """

    def __init__(
        self,
        settings: EndpointSettings,
        *,
        stats: collections.Counter | None = None,
        logger: logging.Logger | None = None,
        client=None,
    ):
        self.settings = settings
        quiet_http_logs()
        self.stats = stats if stats is not None else collections.Counter()
        self.log = logger or logging.getLogger("distalign.endpoints")
        self._client = client
        self._client_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        rps = settings.requests_per_second
        self._limiter = _MinInterval(rps) if rps else None

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to ``stats[key]`` (thread-safe)."""
        with self._stats_lock:
            self.stats[key] += n

    def client(self):
        """The ``openai.OpenAI`` client, created on the first call; :class:`APIKeyError` when the key
        variable is unset or blank (the message names the variable and the config key)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    s = self.settings
                    try:
                        self._client = openai_client(
                            s.base_url, s.api_key_env, timeout=s.timeout, max_retries=0
                        )
                    except APIKeyError as err:
                        raise APIKeyError(
                            f"{err}: the {s.what} needs an API key (config key {s.key('api_key_env')}; "
                            f"any non-empty value works for a server that checks none)"
                        ) from None
        return self._client

    @property
    def url(self) -> str:
        """The base URL requests go to, for messages (the client's default when none is set)."""
        if self.settings.base_url:
            return self.settings.base_url.rstrip("/")
        base = getattr(self._client, "base_url", None)
        return str(base).rstrip("/") if base else "(openai default)"

    def _where(self, model: str) -> str:
        s = self.settings
        key = f", config key {s.config_key}" if s.config_key else ""
        return f"{s.what} endpoint {self.url} (model {model!r}{key})"

    def chat(self, messages: list[dict], **params) -> ChatReply:
        """One chat completion of ``messages``; ``params`` go to ``client.chat.completions.create``
        as they are (temperature, top_p, max_tokens, seed, n...; ``model`` overrides the settings').

        Transient failures are retried as the module docstring says; :class:`EndpointError` when a
        request fails for good, :class:`APIKeyError` when the key variable is unset or blank.
        """
        import openai

        s = self.settings
        client = self.client()
        model = params.pop("model", s.model)
        for attempt in range(s.max_retries + 1):
            if self._limiter is not None:
                self._limiter.wait()
            self.count("requests")
            wait = None
            try:
                resp = client.chat.completions.create(model=model, messages=messages, **params)
            except openai.APIConnectionError as err:  # APITimeoutError included
                failure, status = err, None
            except openai.APIStatusError as err:
                failure, status = err, err.status_code
                if not (status == 429 or status >= 500):
                    detail = str(getattr(err, "message", "") or err)[:300]
                    raise EndpointError(
                        f"{self._where(model)} rejected the request (HTTP {status}: {detail}); check "
                        f"{s.key('model')}, {s.key('base_url')} and the key in ${s.api_key_env}",
                        status=status,
                    ) from err
                if status in RETRY_AFTER_STATUSES:
                    headers = getattr(getattr(err, "response", None), "headers", None) or {}
                    wait = retry_after_seconds(headers.get("retry-after"))
            except openai.OpenAIError as err:  # e.g. a reply that is not a chat completion
                raise EndpointError(f"{self._where(model)}: {type(err).__name__}: {err}") from err
            else:
                return self._reply(resp, model)
            self.count("transient_errors")
            if attempt >= s.max_retries:
                n = s.max_retries + 1
                raise EndpointError(
                    f"{self._where(model)} failed after {n} attempt{'s' if n != 1 else ''}: "
                    f"{type(failure).__name__}: {failure}",
                    status=status,
                ) from failure
            if wait is not None:
                delay, why = min(wait, MAX_RETRY_AFTER_S), ", as its Retry-After header asks"
            else:
                delay, why = min(s.backoff * 2**attempt, MAX_BACKOFF_S), ""
            self.log.warning(
                "%s request failed (%s); retry %d/%d in %.1f s%s",
                s.what,
                type(failure).__name__,
                attempt + 1,
                s.max_retries,
                delay,
                why,
            )
            self.count("retries")
            sleep(delay)
        raise AssertionError("unreachable")

    def _reply(self, resp, model: str) -> ChatReply:
        choices = getattr(resp, "choices", None)
        if not choices:
            raise EndpointError(f"{self._where(model)} answered a chat completion without choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        return ChatReply(
            text=getattr(message, "content", None) or "",
            model=getattr(resp, "model", None),
            fingerprint=getattr(resp, "system_fingerprint", None),
            finish_reason=getattr(choice, "finish_reason", None),
            completion_tokens=getattr(getattr(resp, "usage", None), "completion_tokens", None),
        )

    def map(self, fn: Callable, items: Iterable, *, progress=None) -> list:
        """``[fn(item) for item in items]``, ``concurrency`` at a time, in the order of ``items``.

        The first exception (in time) cancels the items not yet started and is raised once those in
        flight are done. ``progress`` (a :class:`distalign.core.progress.Progress` or None) is
        updated by one after each item. With concurrency 1 or a single item, no thread is started.
        """
        items = list(items)

        def one(item):
            out = fn(item)
            if progress is not None:
                progress.update(1)
            return out

        workers = min(self.settings.concurrency, len(items))
        if workers <= 1:
            return [one(item) for item in items]
        results: list = [None] * len(items)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="endpoint")
        try:
            futures = {pool.submit(one, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results
