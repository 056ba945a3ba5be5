"""Model specs: clear errors for models that cannot be found, the embedded model, single-token checks."""

import json

import pytest

from distalign.modeling.models import (
    ModelError,
    embedded_gguf_path,
    prepare_model,
    read_pointer,
    single_token_ids,
)


def test_missing_hub_model_names_the_model_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as err:
        prepare_model("qwen-7b", {"source": "hf", "path_or_id": "Qwen/Qwen2.5-7B-Instruct"}, tmp_path / "out")
    msg = str(err.value)
    assert "'qwen-7b'" in msg and "Qwen/Qwen2.5-7B-Instruct" in msg and str(tmp_path / "hub") in msg
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(
        ModelError, match=r"model 'mine': no config.json in local folder .* models\.mine\.path_or_id"
    ):
        prepare_model("mine", {"source": "path", "path_or_id": str(tmp_path / "nowhere")}, tmp_path / "out")


def test_embedded_gguf_is_found_and_a_wrong_name_lists_what_is_there():
    assert embedded_gguf_path("SmolLM2-135M-Instruct.Q4_1.gguf").stat().st_size > 90_000_000
    with pytest.raises(ModelError, match=r"not found in .*SmolLM2-135M-Instruct\.Q4_1\.gguf"):
        embedded_gguf_path("SmolLM2-360M.gguf")


def test_local_folder_is_resolved_through_a_pointer(tmp_path):
    src = tmp_path / "weights"
    src.mkdir()
    (src / "config.json").write_text("{}")
    meta = prepare_model(
        "mine", {"source": "path", "path_or_id": str(src), "dtype": "bfloat16"}, tmp_path / "out"
    )
    assert meta["path"] == str(src.resolve())
    assert read_pointer(tmp_path / "out")["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "out/distalign_model.json").read_text())["source"] == "path"


def test_steering_tokens_must_be_single_tokens(embedded_model_dir):
    from distalign.modeling.models import load_tokenizer

    tok = load_tokenizer(embedded_model_dir)
    assert single_token_ids(tok, ["0", "1"]) == [32, 33]
    assert len(single_token_ids(tok, ["man", "woman"])) == 2
    with pytest.raises(ValueError, match=r"'Hawaiian islander' is not a single token"):
        single_token_ids(tok, ["0", "Hawaiian islander"])
