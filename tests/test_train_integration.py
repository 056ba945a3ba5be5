"""train_adapter end to end (slow): a tiny random Llama with the embedded model's tokenizer.

One ``ours`` run on 3 UK contexts, killed after a stage-2 checkpoint and restarted: checks
atomic output, resume, the held-out steering KL going down and that the adapter reloads with
identical logits. (The same run on the real 135M model passes too but takes ~6 min on a busy
2-core machine; bench/train_probe.py measures the real model.)
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from helpers import SMOL_VOCAB, TWO_LAYERS, save_model_dir, tiny_llama, wait_for_file

from distalign.core.io import write_jsonl
from distalign.training.runner import train_adapter, work_dir_of

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
    from distalign.generation.sampling import steering_distribution
    from distalign.generation.transformers_backend import TransformersBackend

    model.eval()
    backend = TransformersBackend(None, tokenizer=tok, model=model, batch_size=16)
    probs = torch.tensor(steering_distribution(backend, tok, [p["prompt"] for p in val], ids)[0])
    target = torch.tensor([p["target"] for p in val], dtype=torch.float32)
    return float((torch.xlogy(target, target) - target * torch.log(probs)).sum(-1).mean())


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, embedded_model_dir):
    """A prepared model folder holding a tiny random Llama (2 layers, hidden 64) and the embedded tokenizer."""
    model = tiny_llama(SMOL_VOCAB, **{**TWO_LAYERS, "hidden": 64}, max_position_embeddings=256)
    return save_model_dir(
        tmp_path_factory.mktemp("tiny") / "tiny-llama", model, embedded_model_dir, "tiny-llama"
    )


def _tiny_setup(tmp_path, repo, config, preference):
    from test_steering import tiny_data

    prompts, targets, sft, pref = tiny_data(
        repo, config, per_split={"train": 4, "val": 3, "test": 1}, responses=8
    )
    write_jsonl(tmp_path / "sft.jsonl", sft)
    write_jsonl(tmp_path / "pref.jsonl", pref)
    config["methods"]["ours"]["preference"] = preference
    # the default's min_steps (126) is sized for 280-500 real rows, not for these 24
    config["methods"]["ours"]["train_overrides"]["preference"].pop("min_steps", None)
    config["training"].update(
        {
            "sft": {"epochs": 1, "batch_size": 8, "learning_rate": 3e-3},
            "preference": {
                **config["training"]["preference"],
                "epochs": 2,
                "batch_size": 8,
                "learning_rate": 1e-2,
            },
            "max_length": 96,
            "logging_steps": 1,
            "save_steps": 2,
            "device": "cpu",
        }
    )
    return prompts, targets


def _train_kwargs(tmp_path, config, model_dir, out_dir, method="ours") -> dict:
    """The arguments of train_adapter for the SFT and preference files that _tiny_setup wrote."""
    data = {"sft_path": tmp_path / "sft.jsonl", "pref_path": tmp_path / "pref.jsonl"}
    return dict(config=config, dataset="uk-real", method=method, model_dir=model_dir, out_dir=out_dir, **data)


@pytest.mark.parametrize("preference", ["kto", "nll"])
def test_ours_trains_resumes_and_reloads(tmp_path, repo, config, tiny_model_dir, preference):
    from peft import PeftModel

    from distalign.modeling.models import load_model

    prompts, targets = _tiny_setup(tmp_path, repo, config, preference)
    by_ctx = {t["context"]: t["target"] for t in targets}
    val = [{**p, "target": by_ctx[p["context"]]} for p in prompts if p["split"] == "val"]
    out = tmp_path / "adapters" / "uk-real" / "smollm2" / "ours"
    args = _train_kwargs(tmp_path, config, tiny_model_dir, out)

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
        p.name for p in out.iterdir()
    }
    cfg = json.loads((out / "training_config.json").read_text())
    assert cfg["steering_ids"] == [32, 33] and cfg["kind"] == "ours" and "trl" in cfg["versions"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ends = {r["stage"]: r for r in rows if r.get("event") == "end"}
    assert ends["pref"]["resumed_from"].endswith("checkpoint-2")
    assert ends["sft"]["resumed_from"] is None
    pref_logs = [r for r in rows if r["stage"] == "pref" and "loss" in r]
    term = "rewards/margins" if preference == "kto" else "nll_loss"
    assert pref_logs and all("steering_kl" in r and term in r for r in pref_logs)
    assert "resuming from" in (tmp_path / "train.log").read_text()

    # held-out prompts: KL of the base model vs the trained adapter
    tok, base = load_model(tiny_model_dir, device="cpu")
    kl_before = _held_out_kl(base, tok, val, [32, 33])
    trained = PeftModel.from_pretrained(base, str(out))
    trained.eval()
    kl_after = _held_out_kl(trained, tok, val, [32, 33])
    if preference == "kto":
        # With nll the answer NLL of this random 2-layer model (~10 nats/token) dominates the clipped
        # gradient for 6 steps; the KL term's effect is shown by test_steering (nll vs no KL) and on the
        # real model by the default run (steering_diagnosis table).
        assert kl_after < kl_before, (kl_before, kl_after)

    # reload: identical logits to a second independent load
    _, base2 = load_model(tiny_model_dir, device="cpu")
    again = PeftModel.from_pretrained(base2, str(out)).eval()
    ids = torch.tensor([tok("Hello, what gender is a nurse?")["input_ids"]])
    with torch.no_grad():
        a = trained(input_ids=ids).logits
        b = again(input_ids=ids).logits
    assert (a - b).abs().max().item() < 1e-5


def test_sigkilled_training_resumes_to_the_uninterrupted_adapter(tmp_path, repo, config, tiny_model_dir):
    """A real SIGKILL mid-stage-2 (separate process); the rerun resumes and ends with the same weights
    as a run that was never interrupted; no final folder exists in between."""
    import os
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    _tiny_setup(tmp_path, repo, config, "nll")
    (tmp_path / "config.json").write_text(json.dumps(config))

    clean = tmp_path / "clean" / "ours"
    train_adapter(**_train_kwargs(tmp_path, config, tiny_model_dir, clean))

    killed = tmp_path / "killed" / "ours"
    code = (
        "import json, sys\n"
        "from distalign.training.runner import train_adapter\n"
        f"cfg = json.load(open({str(tmp_path / 'config.json')!r}))\n"
        f"train_adapter(config=cfg, dataset='uk-real', method='ours', model_dir={str(tiny_model_dir)!r}, "
        f"sft_path={str(tmp_path / 'sft.jsonl')!r}, pref_path={str(tmp_path / 'pref.jsonl')!r}, "
        f"out_dir={str(killed)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    # trainer_state.json is the last file HF writes into a checkpoint, so checkpoint-2 is complete when
    # it appears (waiting for an earlier file raced the write: on a fast CPU the kill sometimes landed
    # before it, the rerun rightly started over and nothing was resumed). Partial checkpoints are
    # test_leftovers' test of last_valid_checkpoint.
    ckpt = work_dir_of(killed) / "pref" / "checkpoint-2" / "trainer_state.json"
    wait_for_file(ckpt, proc, timeout=600, poll=0.05)
    while proc.poll() is None:  # the file may exist before its JSON is all written
        try:
            json.loads(ckpt.read_text())
            break
        except ValueError:
            time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # possibly while checkpoint-3's step runs
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not killed.exists()

    train_adapter(**_train_kwargs(tmp_path, config, tiny_model_dir, killed))
    a = load_file(str(clean / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    ends = [r for r in rows if r.get("event") == "end" and r["stage"] == "pref"]
    assert ends and ends[-1]["resumed_from"] and ends[-1]["resumed_from"].endswith("checkpoint-2"), ends


def test_min_steps_and_scheduler_of_a_stage(tmp_path, repo, config, tiny_model_dir):
    """preference.min_steps: a stage on too few rows gets whole extra epochs, logged; sft is untouched.
    preference.lr_scheduler_type: constant_with_warmup keeps the peak rate to the last step."""
    _tiny_setup(tmp_path, repo, config, "nll")
    n_pref = len((tmp_path / "pref.jsonl").read_text().splitlines())
    per_epoch = -(-n_pref // 8)
    config["training"]["preference"]["epochs"] = 1
    config["training"]["logging_steps"] = 1
    overrides = config["methods"]["ours"]["train_overrides"]["preference"]
    overrides.update(min_steps=per_epoch + 1, lr_scheduler_type="constant_with_warmup")
    out = tmp_path / "adapter"
    train_adapter(**_train_kwargs(tmp_path, config, tiny_model_dir, out), log=tmp_path / "train.log")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ends = {r["stage"]: r for r in rows if r.get("event") == "end"}
    assert ends["pref"]["step"] == 2 * per_epoch  # 1 epoch is one step short: 2 whole epochs
    assert ends["sft"]["step"] == per_epoch  # the sft stage has no min_steps
    assert "epochs raised from 1 to 2.0 to reach min_steps" in (tmp_path / "train.log").read_text()
    lrs = {"pref": [r["learning_rate"] for r in rows if r.get("stage") == "pref" and "learning_rate" in r]}
    peak = float(overrides["learning_rate"])
    assert lrs["pref"][-2:] == pytest.approx([peak, peak])  # constant after the warm-up (linear: falling)
