"""The replay term of ours' steering stage (distalign.training.replay): its instructions, its rows, its KL
to the base model and its place in the trainers' loss (fast: a tiny random Llama)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_capability_items import attribute_hits
from test_steering import _nll_trainer, _trainer, lora_model, tiny_data

from distalign.core.config import TrainSpec, replay_section, training_params
from distalign.data.instructions import InstructionsError, load_instructions
from distalign.modeling.chat import prompt_ids
from distalign.modeling.models import load_tokenizer
from distalign.training.replay import collate, replay_batch, replay_kl, replay_order, replay_rows
from distalign.training.rows import nll_rows
from distalign.training.trainers import SteeringSFTConfig, SteeringSFTTrainer

REPO = Path(__file__).resolve().parents[1]
REPLAY = REPO / "resources" / "training" / "replay_instructions.jsonl"


@pytest.fixture(scope="module")
def tok(embedded_model_dir):
    t = load_tokenizer(embedded_model_dir)
    t.padding_side = "right"
    return t


# ---- the shipped instructions --------------------------------------------------------------------


def test_the_generator_wrote_the_shipped_file():
    gen = REPLAY.with_name("make_replay_instructions.py")
    assert subprocess.run([sys.executable, str(gen), "--check"], capture_output=True).returncode == 0


def test_replay_instructions_stay_apart_from_the_leak_check_and_the_attributes():
    rows = load_instructions(REPLAY, key="training.replay.instructions")
    assert len(rows) >= 200 and len({r["instruction"] for r in rows}) == len(rows)
    leak_check = {
        json.loads(line)["instruction"].lower()
        for line in (REPO / "resources/capabilities/general_instructions.jsonl").read_text().splitlines()
    }
    assert not leak_check & {r["instruction"].lower() for r in rows}
    assert attribute_hits(rows) == []


def test_a_bad_replay_file_names_the_key_and_line(tmp_path):
    bad = tmp_path / "replay.jsonl"
    bad.write_text('{"id": "a", "instruction": "Say hello."}\n{"id": "b"}\n')
    with pytest.raises(InstructionsError, match=r"replay.jsonl, line 2: key 'instruction'"):
        load_instructions(bad, key="training.replay.instructions")
    with pytest.raises(InstructionsError, match=r"^training\.replay\.instructions = .*cannot read it"):
        load_instructions(tmp_path / "missing.jsonl", key="training.replay.instructions")


# ---- which jobs replay -----------------------------------------------------------------------------


def test_only_ours_replays_and_only_ours_reruns_for_it(config):
    assert config["training"]["replay"]["weight"] > 0  # on by default (schema)
    assert TrainSpec.from_config(config, "uk-real", "ours").replay["batch_size"] >= 1
    for method in ("ift", "dpo"):
        assert TrainSpec.from_config(config, "uk-real", method).replay is None
        assert "replay" not in training_params(config, method)
    assert "replay" in training_params(config, "ours")
    off = {"instructions": "x.jsonl", "weight": 0.0, "batch_size": 8, "max_new_tokens": 8}
    assert replay_section("ours", {"replay": off}) is None
    assert replay_section("ours", {"replay": {**off, "weight": 1.0, "instructions": None}}) is None
    assert replay_section("ours", {"replay": {**off, "weight": 1.0}})["weight"] == 1.0


# ---- rows, order, batches ------------------------------------------------------------------------


def test_collate_marks_the_positions_that_predict_answer_tokens():
    rows = [
        {"id": "a", "input_ids": [5, 6, 7, 8, 9], "answer_start": 3},
        {"id": "b", "input_ids": [5, 6, 7], "answer_start": 1},
    ]
    b = collate(rows, pad=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # row a: positions 2 and 3 predict its answer tokens 8 and 9; row b: positions 0 and 1 predict 6 and 7
    assert b["answer_mask"].tolist() == [[False, False, True, True, False], [True, True, False, False, False]]
    with pytest.raises(ValueError, match="answer_start 3 outside"):
        collate([{"id": "c", "input_ids": [1, 2, 3], "answer_start": 3}], pad=0)


def test_replay_batches_follow_a_seeded_order_and_wrap():
    rows = [{"id": i} for i in range(5)]
    order = replay_order(5, seed=11)
    assert sorted(order) == list(range(5)) and order == replay_order(5, seed=11)
    assert order != replay_order(5, seed=12) or order != replay_order(5, seed=13)
    taken = [r["id"] for step in range(5) for r in replay_batch(rows, order, step, 2)]
    assert taken == [order[i % 5] for i in range(10)]  # every row once before any row twice
    assert replay_batch(rows, order, 3, 2) == replay_batch(rows, order, 3, 2)  # a resumed step: same rows
    assert len(replay_batch(rows, order, 0, 9)) == 5


def test_replay_rows_are_the_base_models_seeded_answers(tok, embedded_model_dir):
    from helpers import TWO_LAYERS, tiny_llama

    model = tiny_llama(len(tok), 0, **TWO_LAYERS, max_position_embeddings=256)
    model.train()
    instructions = [{"id": f"r{i}", "instruction": f"Describe object number {i}."} for i in range(4)]
    kw = dict(seed=5, max_new_tokens=6)
    rows = replay_rows(model, tok, embedded_model_dir, instructions, **kw)
    assert rows == replay_rows(model, tok, embedded_model_dir, instructions, **kw)
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3"]
    for r, ins in zip(rows, instructions, strict=True):
        prompt = prompt_ids(tok, ins["instruction"])
        assert r["answer_start"] == len(prompt) and r["input_ids"][: len(prompt)] == prompt
        assert 1 <= len(r["input_ids"]) - len(prompt) <= 7  # up to 6 sampled tokens (+ eos)
    other = replay_rows(model, tok, embedded_model_dir, instructions, seed=6, max_new_tokens=6)
    assert other != rows
    # the same draws as the generation layer's transformers backend with seed parts (seed, "replay")
    from distalign.generation.job import Sampling
    from distalign.generation.sampling import SampleBatch
    from distalign.generation.transformers_backend import TransformersBackend

    backend = TransformersBackend(embedded_model_dir, tokenizer=tok, model=model, batch_size=32)
    prompts = [prompt_ids(tok, ins["instruction"]) for ins in instructions]
    batch = SampleBatch(prompts, [5] * 4, Sampling(1.0, 1.0, 0, 6), seed_parts=(5, "replay"))
    sampled = backend.sample(batch)
    assert [r["input_ids"][r["answer_start"] :] for r in rows] == [
        toks + ([backend.stop[0]] if ended else []) for toks, ended, *_ in sampled
    ]
    assert model.training  # sampled in eval mode, then put back as it was


# ---- the KL to the base model -------------------------------------------------------------------


def _rows(tok, n=3):
    out = []
    for i in range(n):
        prompt = prompt_ids(tok, f"Tell me about item {i}.")
        answer = tok(f" Item {i} is a small thing.", add_special_tokens=False)["input_ids"]
        out.append({"id": str(i), "input_ids": prompt + answer, "answer_start": len(prompt)})
    return out


def test_replay_kl_is_zero_for_the_base_model_and_matches_a_direct_computation(tok):
    batch = collate(_rows(tok), pad=0)
    fresh = lora_model(len(tok), nonzero=False)  # LoRA B = 0: the adapted model is the base model
    assert replay_kl(fresh, batch).item() == pytest.approx(0.0, abs=1e-6)

    model = lora_model(len(tok), nonzero=True)
    kl = replay_kl(model, batch)
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["answer_mask"]
    with torch.no_grad():
        with model.disable_adapter():
            p = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
        q = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
    per_position = (p.exp() * (p - q)).sum(-1)
    assert kl.item() > 1e-3
    assert kl.item() == pytest.approx(per_position[mask].mean().item(), rel=1e-5)
    # the prompt positions differ too: they are left out
    assert per_position[~mask & attn.bool()].abs().sum() > 0

    kl.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all("lora" in n for n in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_the_nll_stage_adds_the_weighted_replay_kl_in_training_only(tmp_path, tok, config, repo):
    _, _, _, pref = tiny_data(repo, config)
    rows = nll_rows(pref, tok, [32, 33])
    replay = _rows(tok, 5)
    plain = _nll_trainer(tmp_path / "a", tok, rows)
    with_replay = _nll_trainer(tmp_path / "b", tok, rows)
    with_replay.args.replay_weight, with_replay.args.replay_batch_size = 0.7, 2
    with_replay._init_replay(replay, 3, with_replay.args)
    with_replay.model.load_state_dict(plain.model.state_dict())
    batch = next(iter(plain.get_train_dataloader()))
    for t in (plain, with_replay):
        t.model.train()
    with torch.no_grad():
        base = plain.compute_loss(plain.model, dict(batch))
        total = with_replay.compute_loss(with_replay.model, dict(batch))
        step0 = collate(replay_batch(replay, replay_order(5, 3), 0, 2), pad=tok.pad_token_id)
        kl = replay_kl(with_replay.model, step0)
    assert kl.item() > 0
    assert total.item() == pytest.approx(base.item() + 0.7 * kl.item(), rel=1e-5)
    assert with_replay._metrics["train"]["replay_kl"] == [pytest.approx(kl.item(), rel=1e-5)]
    with_replay.model.eval()
    with torch.no_grad():
        assert with_replay.compute_loss(with_replay.model, dict(batch)).item() == pytest.approx(
            plain.compute_loss(plain.model, dict(batch)).item(), rel=1e-5
        )
    with pytest.raises(ValueError, match="no replay rows"):
        with_replay._init_replay([], 3, with_replay.args)


def test_training_with_replay_stays_closer_to_the_base_model(tmp_path, tok, config, repo):
    _, _, _, pref = tiny_data(repo, config)
    rows = nll_rows(pref, tok, [32, 33])
    replay = _rows(tok, 4)
    every_row = collate(replay, pad=tok.pad_token_id)
    after = {}
    # both start from the same non-trivial adapter (lora_model's random LoRA B), away from the base model;
    # the weight is large because the answer NLL of a random model (~11 nats) dominates the clipped gradient
    for weight in (0.0, 300.0):
        t = _trainer(
            SteeringSFTTrainer,
            SteeringSFTConfig,
            tmp_path / str(weight),
            tok,
            rows,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            max_steps=4,
            dataset_num_proc=None,
        )
        with torch.no_grad():
            before = replay_kl(t.model, every_row).item()
        if weight:
            t.args.replay_weight, t.args.replay_batch_size = weight, 4
        t._init_replay(replay, 3, t.args)
        t.train()
        with torch.no_grad():
            after[weight] = replay_kl(t.model, every_row).item()
    assert before > 0
    assert after[300.0] < 0.7 * min(before, after[0.0]), (before, after)


def test_the_paper_grid_trains_the_papers_method_without_replay(repo):
    from distalign.core.config import load_config

    paper = load_config(repo / "config/config.yaml", repo / "config/paper.yaml")
    for method in ("ours", "ours-no-kto", "ours-dpo"):
        assert TrainSpec.from_config(paper, "uk-real", method, "qwen2.5-7b-instruct").replay is None
        assert "replay" not in training_params(paper, method, "qwen2.5-7b-instruct", "uk-real")


def test_a_dry_run_stops_at_a_bad_replay_file_and_the_train_job_reads_it(workdir, snakemake_run):
    adapter = "results/adapters/uk-real/smollm2-135m-instruct/ours"
    ok = snakemake_run(workdir, "-n", "--printshellcmds", adapter, timeout=300)
    assert ok.returncode == 0, ok.stdout[-3000:]
    # the replay file is an input of ours' train job (an edit retrains it)
    assert "resources/training/replay_instructions.jsonl" in ok.stdout
    replay = workdir / "resources/training/replay_instructions.jsonl"
    lines = replay.read_text().splitlines()
    lines[4] = '{"id": "ri-004", "instruction": ""}'
    replay.write_text("\n".join(lines) + "\n")
    bad = snakemake_run(workdir, "-n", adapter, timeout=300)
    assert bad.returncode != 0
    assert "replay_instructions.jsonl, line 5: key 'instruction' must be a non-empty string" in bad.stdout, (
        bad.stdout[-3000:]
    )
