"""train_adapter end to end (slow): a tiny random Llama with the embedded model's tokenizer.

One ``ours`` run on 3 UK contexts, killed after a stage-2 checkpoint and restarted: checks
atomic output, resume, the held-out steering KL going down and that the adapter reloads with
identical logits. (The same run on the real 135M model passes too but takes ~6 min on a busy
2-core machine; bench/train_probe.py measures the real model.)
"""

from __future__ import annotations

import json

import pytest
import torch

from distalign.io import write_jsonl
from distalign.train import train_adapter, work_dir_of

pytestmark = pytest.mark.slow


class Killed(RuntimeError):
    pass


def _killer(stage_step: int):
    from transformers import TrainerCallback

    class KillAfter(TrainerCallback):
        """Simulates a killed job: raise in stage 2 once a checkpoint exists."""

        def on_step_end(self, args, state, control, **kwargs):
            if args.output_dir.endswith("pref") and state.global_step >= stage_step:
                raise Killed(f"killed at step {state.global_step}")

    return KillAfter()


def _held_out_kl(model, tok, val, ids):
    from distalign.steering import first_token_probs

    probs, _ = first_token_probs(model, tok, [p["prompt"] for p in val], ids)
    target = torch.tensor([p["target"] for p in val], dtype=torch.float32)
    return float((torch.xlogy(target, target) - target * torch.log(probs)).sum(-1).mean())


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, embedded_model_dir):
    """A prepared model folder holding a tiny random Llama and the embedded tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from distalign.models import POINTER, load_tokenizer

    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tok = load_tokenizer(embedded_model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    (out / POINTER).write_text(json.dumps({"name": "tiny-llama", "source": "path", "path_or_id": str(out),
                                           "dtype": "float32", "path": None}))
    return out


def test_ours_trains_resumes_and_reloads(tmp_path, repo, config, tiny_model_dir):
    from peft import PeftModel
    from test_steering import tiny_data

    from distalign.models import load_model

    prompts, targets, sft, pref = tiny_data(repo, config, per_split={"train": 4, "val": 3, "test": 1}, responses=8)
    by_ctx = {t["context"]: t["target"] for t in targets}
    val = [{**p, "target": by_ctx[p["context"]]} for p in prompts if p["split"] == "val"]
    write_jsonl(tmp_path / "sft.jsonl", sft)
    write_jsonl(tmp_path / "pref.jsonl", pref)
    config["training"].update({
        "sft": {"epochs": 1, "batch_size": 8, "learning_rate": 3e-3},
        "preference": {**config["training"]["preference"], "epochs": 2, "batch_size": 8, "learning_rate": 1e-2},
        "max_length": 96, "logging_steps": 1, "save_steps": 2, "device": "cpu",
    })
    out = tmp_path / "adapters" / "uk-real" / "smollm2" / "ours"
    args = dict(config=config, dataset="uk-real", method="ours", model_dir=tiny_model_dir,
                sft_path=tmp_path / "sft.jsonl", pref_path=tmp_path / "pref.jsonl", out_dir=out)

    with pytest.raises(Killed):
        train_adapter(**args, callbacks=[_killer(3)])
    work = work_dir_of(out)
    assert not out.exists(), "the final folder must not exist while training is incomplete"
    assert (work / "sft.done" / "adapter_model.safetensors").exists()
    assert (work / "pref" / "checkpoint-2").is_dir()
    bogus = work / "pref" / "checkpoint-9"  # a partial checkpoint left by the kill
    bogus.mkdir()
    (bogus / "trainer_state.json").write_text("{trunc")

    train_adapter(**args, log=tmp_path / "train.log")
    assert out.is_dir() and not work.exists()
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()}
    cfg = json.loads((out / "training_config.json").read_text())
    assert cfg["steering_ids"] == [32, 33] and cfg["kind"] == "ours" and "trl" in cfg["versions"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ends = {r["stage"]: r for r in rows if r.get("event") == "end"}
    assert ends["pref"]["resumed_from"].endswith("checkpoint-2")
    assert ends["sft"]["resumed_from"] is None
    pref_logs = [r for r in rows if r["stage"] == "pref" and "loss" in r]
    assert pref_logs and all("steering_kl" in r and "rewards/margins" in r for r in pref_logs)
    assert "resuming from" in (tmp_path / "train.log").read_text()

    # held-out prompts: KL of the base model vs the trained adapter
    tok, base = load_model(tiny_model_dir, device="cpu")
    kl_before = _held_out_kl(base, tok, val, [32, 33])
    trained = PeftModel.from_pretrained(base, str(out))
    trained.eval()
    kl_after = _held_out_kl(trained, tok, val, [32, 33])
    assert kl_after < kl_before, (kl_before, kl_after)

    # reload: identical logits to a second independent load
    _, base2 = load_model(tiny_model_dir, device="cpu")
    again = PeftModel.from_pretrained(base2, str(out)).eval()
    ids = torch.tensor([tok("Hello, what gender is a nurse?")["input_ids"]])
    with torch.no_grad():
        a = trained(input_ids=ids).logits
        b = again(input_ids=ids).logits
    assert (a - b).abs().max().item() < 1e-5
