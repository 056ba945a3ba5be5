"""The OpenAI-compatible client every endpoint caller shares (judge, paraphraser, pre-flight)."""

from __future__ import annotations

import os


class APIKeyError(RuntimeError):
    """The environment variable that holds an endpoint's API key is not set, or set but empty."""


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
