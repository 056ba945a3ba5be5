"""Chat formatting and steering-token placement, shared by training and generation.

The steering token is the **first assistant token**: the sequence is
``chat_prompt(user) ids + [steering id] + answer ids + eos``. We build sequences at the token-id
level (the answer is tokenised on its own and appended), so a steering word like "man" can never
merge with the answer's first characters into a different token, and the steering token is
dropped from a recorded answer by position, never by deleting characters (the authors'
``.replace("0", "")`` also deleted digits inside stories).

``placement="paper"`` reproduces the authors' inference: the token is appended to the *user*
message (before the end-of-turn marker) and the assistant turn starts empty.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from distalign.modeling.models import chat_prompt

PLACEMENTS = ("assistant", "paper")


def prompt_ids(tokenizer, user_text: str) -> list[int]:
    """Token ids of the chat-formatted prompt ending with the assistant header (no extra BOS)."""
    return tokenizer(chat_prompt(tokenizer, user_text), add_special_tokens=False)["input_ids"]


def completion_ids(tokenizer, answer: str, add_eos: bool = True) -> list[int]:
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if add_eos and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    return ids


def steered_prompt_ids(
    tokenizer, user_text: str, steering_id: int | None, placement: str = "assistant"
) -> list[int]:
    """Prompt ids after which the answer is generated, with the steering token placed as configured."""
    if steering_id is None:
        return prompt_ids(tokenizer, user_text)
    if placement == "assistant":
        return prompt_ids(tokenizer, user_text) + [steering_id]
    if placement == "paper":
        return prompt_ids(tokenizer, user_text + tokenizer.decode([steering_id]))
    raise ValueError(f"unknown steering placement {placement!r} (expected one of {PLACEMENTS})")


def eos_ids(tokenizer, model_dir) -> list[int]:
    """End-of-answer ids: the tokenizer's eos plus those of the model's generation config."""
    ids = {tokenizer.eos_token_id}
    p = Path(model_dir) / "generation_config.json"
    if p.exists():
        e = json.loads(p.read_text()).get("eos_token_id")
        ids |= set(e if isinstance(e, list) else [e] if e is not None else [])
    return sorted(i for i in ids if i is not None)


def strip_eos(ids: Sequence[int], stop: Sequence[int]) -> tuple[list[int], bool]:
    """Generated ids up to the first end-of-answer id (excluded), and whether one was produced."""
    out = []
    for t in ids:
        if t in stop:
            return out, True
        out.append(int(t))
    return out, False
