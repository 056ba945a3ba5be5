"""Plain helpers that several test modules share (the shared fixtures live in conftest.py).

tests/ is on sys.path (pytest inserts the rootdir of conftest.py), so a test module imports them as
``from helpers import ...``; a child interpreter started by :func:`run_python` can import them too.
Heavy libraries (torch, transformers, distalign's generation code) are imported inside the functions, so
that importing this module costs nothing for the tests that need none of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"

# The embedded SmolLM2 tokenizer, which the tiny models borrow: 49152 pieces, <|im_start|> = 1 and
# <|im_end|> = 2 (also its padding token); "0".."9" are ids 32..41.
SMOL_VOCAB = 49152
SMOL_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)

# Sizes: the default (hidden 16, one layer) where only the plumbing matters, TWO_LAYERS (hidden 32) where the
# model must tell prompts apart; test_train_integration widens TWO_LAYERS to hidden 64.
TWO_LAYERS = {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2}


def tiny_llama_config(
    vocab_size: int, *, hidden: int = 16, layers: int = 1, heads: int = 2, kv_heads: int = 1, **extra
):
    """A LlamaConfig small enough for a CPU test (intermediate size twice the hidden size).

    Tied embeddings and the SmolLM2 special ids by default, since most tiny models here are saved next to
    the embedded tokenizer; ``extra`` overrides them or sets any other LlamaConfig field.
    """
    from transformers import LlamaConfig

    sizes = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers}
    attention = {"num_attention_heads": heads, "num_key_value_heads": kv_heads}
    return LlamaConfig(
        vocab_size=vocab_size, **{"tie_word_embeddings": True, **SMOL_IDS, **sizes, **attention, **extra}
    )


def tiny_llama(vocab_size: int, seed: int = 0, **config):
    """A randomly initialised tiny LlamaForCausalLM; the seed makes equal calls give equal weights."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, **config))


def save_model_dir(out: Path, model, tokenizer_dir: Path, name: str = "tiny") -> Path:
    """Save ``model`` as a prepared ``path`` model folder, as the workflow's prepare step leaves one: the
    weights, the tokenizer files of ``tokenizer_dir`` (those it has) and the pointer file naming the model.

    Copying the tokenizer files, rather than loading and saving the tokenizer, keeps it byte-identical to
    the one the model folder's users would load from ``tokenizer_dir``.
    """
    from distalign.modeling.models import POINTER

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for file in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / file).exists():
            shutil.copy(Path(tokenizer_dir) / file, out / file)
    model.save_pretrained(out)
    pointer = {"name": name, "source": "path", "path_or_id": str(out), "dtype": "float32", "path": None}
    (out / POINTER).write_text(json.dumps(pointer))
    return out


def vllm_job(model_dir: str = "model", adapter: str | None = None, method: str = "ours"):
    """A vLLM generation Job with no requests: enough for the code around the worker (scratch folders, the
    adapter merge, the worker hand-off), which never reads the requests or the sampling settings."""
    from distalign.generation.job import Job

    where = {
        "backend": "vllm",
        "model_dir": model_dir,
        "adapter": adapter,
        "device": "cpu",
        "dtype": "float32",
    }
    return Job(**where, requests=[], seed_parts=[1, "d", "m", method, "attribute"], sampling={})


def run_python(code: str, env: dict | None = None, wait: bool = True, timeout: float = 300):
    """Run ``code`` (dedented) in a fresh interpreter that imports this checkout's distalign and these
    helpers, with ``env`` added to the environment.

    ``wait``: return the finished CompletedProcess (text output captured); otherwise the running Popen,
    its output in pipes (for short-lived children that print little: a chatty one would fill the pipe).
    """
    path = os.pathsep.join([str(SRC), str(TESTS)])
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    if wait:
        return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.02) -> bool:
    """Wait until ``path`` exists, ``proc`` has ended or ``timeout`` seconds have passed; return whether
    ``path`` exists (the test then asserts what it expects of the process)."""
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(poll)
    return path.exists()
