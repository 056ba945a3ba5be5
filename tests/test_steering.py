"""Steering KL, the KTO/DPO subclasses and the training rows (fast: a tiny random Llama)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TWO_LAYERS, tiny_llama

from distalign.core.attributes import attribute_of_dataset
from distalign.data.datasets import build_base, build_pref, build_sft
from distalign.data.prompts import build_prompts, load_templates
from distalign.data.targets import build_targets, load_census
from distalign.modeling.chat import completion_ids, prompt_ids
from distalign.modeling.models import load_tokenizer, single_token_ids
from distalign.training.losses import answer_positions, steering_kl
from distalign.training.rows import dpo_rows, kto_rows, mismatched_companions, nll_rows, sft_rows
from distalign.training.trainers import (
    SteeringDPOTrainer,
    SteeringKTOTrainer,
    SteeringSFTTrainer,
    steering_positions_from_labels,
)

REPO_CONTEXTS = [0, 12, 24]  # very male, mixed, very female UK occupations


def tiny_data(repo, config, dataset="uk-real", contexts=REPO_CONTEXTS, per_split=None, responses=6):
    """Prompts, targets, SFT rows and preference rows for a few contexts, built with distalign."""
    per_split = per_split or {"train": 3, "val": 2, "test": 1}
    attr = attribute_of_dataset(config, dataset)
    ds = config["datasets"][dataset]
    census = load_census(repo / config["census"][ds["census"]])
    census = [census[i] for i in contexts]
    targets = build_targets(census, attr, ds["target"], census_name=ds["census"])
    for i, t in enumerate(targets):
        t["context_id"] = i
    bank = load_templates(repo / config["prompts"]["templates"])
    prompts = build_prompts(targets, attr, "attribute", bank, per_split, config["seed"], ds["census"])
    base = build_base(prompts, targets, attr, bank, responses, config["seed"])
    return prompts, targets, build_sft(base), build_pref(base, attr, config["seed"])


@pytest.fixture(scope="module")
def tok(embedded_model_dir):
    t = load_tokenizer(embedded_model_dir)
    t.padding_side = "right"
    return t


def lora_model(vocab: int, seed: int = 0, nonzero: bool = True):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_llama(vocab, seed, **TWO_LAYERS, max_position_embeddings=256),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM"
        ),
    )
    if nonzero:  # a non-trivial adapter (LoRA B starts at zero)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
    return model


# ------------------------------------------------------------------------------------- the KL


def test_restricted_kl_matches_analytic():
    logits = torch.full((2, 10), -1.0)
    logits[0, 3], logits[0, 7] = 2.0, 0.0
    logits[1, 3], logits[1, 7] = -1.0, 1.0
    target = torch.tensor([[0.3, 0.7], [1.0, 0.0]])
    out = steering_kl(logits, [3, 7], target)
    for b in range(2):
        z = torch.softmax(logits[b, [3, 7]], -1)
        expect = sum(
            p * math.log(p / q) for p, q in zip(target[b].tolist(), z.tolist(), strict=True) if p > 0
        )
        assert out.kl[b].item() == pytest.approx(expect, abs=1e-6)
    assert out.kl.dtype == torch.float32
    assert out.mae[1].item() == pytest.approx(
        (abs(out.probs[1, 0] - 1) + out.probs[1, 1]).item() / 2, abs=1e-6
    )


def test_kl_zero_when_restricted_softmax_equals_target():
    target = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    logits = torch.randn(2, 50)
    logits[:, 5] = 0.0
    logits[:, 9] = torch.log(target[:, 1] / target[:, 0])
    out = steering_kl(logits, [5, 9], target)
    assert torch.allclose(out.kl, torch.zeros(2), atol=1e-6)
    assert torch.allclose(out.probs, target, atol=1e-6)


def test_full_vocab_variant_is_not_renormalised():
    logits = torch.randn(3, 40)
    target = torch.tensor([[0.2, 0.8]] * 3)
    r = steering_kl(logits, [1, 2], target, "restricted")
    f = steering_kl(logits, [1, 2], target, "full")
    # full = restricted - log(mass): the missing mass is an extra penalty
    assert torch.allclose(f.kl, r.kl - torch.log(r.mass), atol=1e-5)
    assert (f.kl > r.kl).all()
    expect = torch.stack(
        [
            (target[b] * (torch.log(target[b]) - torch.log_softmax(logits[b], -1)[[1, 2]])).sum()
            for b in range(3)
        ]
    )
    assert torch.allclose(f.kl, expect, atol=1e-5)
    with pytest.raises(ValueError, match="kl vocabulary"):
        steering_kl(logits, [1, 2], target, "other")


def test_answer_positions():
    m = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    assert answer_positions(m).tolist() == [1, 2]


# ------------------------------------------------------------------------------------- rows


def test_steering_token_is_first_completion_token(tok, config, repo):
    _, _, sft, pref = tiny_data(repo, config)
    attr = attribute_of_dataset(config, "uk-real")
    for ts in ("digits", "words", "pronouns"):
        ids = single_token_ids(tok, attr.steering_tokens(ts))
        for row in sft_rows(sft, tok, ids):
            n_prompt = sum(1 for x in row["labels"] if x == -100)
            assert row["labels"][n_prompt] in ids
            assert row["input_ids"][n_prompt] == row["labels"][n_prompt]
        for row, src in zip(dpo_rows(pref, tok, ids), pref, strict=True):
            assert row["prompt_ids"] == prompt_ids(tok, src["prompt"])
            assert row["chosen_ids"][0] == ids[src["class_index"]]
            assert row["rejected_ids"][0] == ids[src["neg_class_index"]]
            assert row["chosen_ids"][1:] == completion_ids(tok, src["answer"])
    assert single_token_ids(tok, ["0", "1"]) == [32, 33]
    # the baselines have no steering token
    plain = sft_rows(sft, tok, None)[0]
    n_prompt = sum(1 for x in plain["labels"] if x == -100)
    assert plain["labels"][n_prompt:] == completion_ids(tok, sft[0]["completion"][0]["content"])


def test_multi_token_steering_word_is_rejected(tok):
    with pytest.raises(ValueError, match="not a single token"):
        single_token_ids(tok, ["electrician", "nurse"], where="steering tokens")


@pytest.mark.parametrize("undesirable", ["paper", "inconsistent"])
def test_kto_rows(tok, config, repo, undesirable):
    _, _, _, pref = tiny_data(repo, config)
    ids = [32, 33]
    rows = kto_rows(pref, tok, ids, undesirable, batch_size=4, seed=7)
    assert len(rows) == 2 * len(pref)
    by_key = {(tuple(r["prompt_ids"]), r["label"], tuple(r["completion_ids"])) for r in rows}
    for src in pref:
        p = tuple(prompt_ids(tok, src["prompt"]))
        a, neg = src["class_index"], src["neg_class_index"]
        assert (p, True, tuple([ids[a]] + completion_ids(tok, src["answer"]))) in by_key
        tau = ids[neg] if undesirable == "paper" else ids[a]
        assert (p, False, tuple([tau] + completion_ids(tok, src["neg_answer"]))) in by_key
    assert sum(r["label"] for r in rows) == len(pref)


def test_z0_pairs_never_share_a_context(tok, config, repo):
    _, _, _, pref = tiny_data(repo, config)
    for bs in (2, 3, 4, 8):
        rows = kto_rows(pref, tok, [32, 33], "paper", batch_size=bs, seed=bs)
        comp_ctx = {}
        for r in rows:
            comp_ctx.setdefault(tuple(r["completion_ids"]), set()).add(r["context"])
        for r in rows:
            # the companion completion comes from a row of another context
            owners = [q for q in rows if q["completion_ids"] == r["KL_completion_ids"]]
            assert any(q["context"] != r["context"] for q in owners)
    # the index-level guarantee, including batches of one context
    ctx = ["a"] * 4 + ["b"] * 4 + ["a", "b", "c", "a"]
    for bs in (1, 2, 4, 5):
        comp = mismatched_companions(ctx, bs, seed=0)
        assert all(ctx[i] != ctx[j] for i, j in enumerate(comp))
    with pytest.raises(ValueError, match="two contexts"):
        mismatched_companions(["a", "a"], 2, 0)


# ------------------------------------------------------------------------------------- trainers


# what every trainer of these tests shares: on the CPU, quiet, nothing saved, a log entry per step
CPU_ARGS = {"use_cpu": True, "bf16": False, "gradient_checkpointing": False, "report_to": "none"}
QUIET_ARGS = {"save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "max_length": 256}


def _trainer(trainer_cls, args_cls, out, tok, rows, steering_ids=(32, 33), **args):
    """A steering trainer of ``trainer_cls`` on a fresh LoRA tiny model, ``rows`` its training set; ``args``
    are the fields of its ``args_cls`` config that a test sets (CPU_ARGS and QUIET_ARGS by default)."""
    from datasets import Dataset

    config = args_cls(output_dir=str(out), **{**CPU_ARGS, **QUIET_ARGS, **args})
    steering_ids = None if steering_ids is None else list(steering_ids)
    return trainer_cls(
        model=lora_model(len(tok)),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        steering_ids=steering_ids,
    )


def _kto_trainer(tmp_path, tok, rows, **kw):
    from distalign.training.trainers import SteeringKTOConfig

    fields = dict(per_device_train_batch_size=4, learning_rate=1e-3, max_steps=2, **kw)
    fields["precompute_ref_log_probs"] = fields.pop("precompute", True)
    return _trainer(SteeringKTOTrainer, SteeringKTOConfig, tmp_path / "kto", tok, rows, **fields)


def _batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v for k, v in batch.items()}


def _kl_on_batch(trainer, batch, vocabulary="restricted"):
    from distalign.training.losses import prompt_logits

    pos = answer_positions(batch["completion_mask"])
    with torch.no_grad():
        logits = prompt_logits(trainer.model, batch["input_ids"], batch["attention_mask"], pos)
    return steering_kl(logits, [32, 33], batch["target"], vocabulary).kl.mean()


@pytest.fixture()
def kto_data(tok, config, repo):
    _, _, _, pref = tiny_data(repo, config)
    return kto_rows(pref, tok, [32, 33], "paper", batch_size=4, seed=3)


def test_trainer_hyperparameters_come_from_the_steering_config(tmp_path, tok, kto_data):
    """The Steering*Config fields reach the trainer; a plain trl config cannot carry them."""
    from datasets import Dataset
    from trl import KTOConfig

    from distalign.training.trainers import SteeringArguments, SteeringKTOConfig

    trainer = _kto_trainer(tmp_path, tok, kto_data, kl_weight=0.3, kl_vocabulary="full")
    assert isinstance(trainer.args, (SteeringKTOConfig, SteeringArguments))
    assert (trainer.kl_weight, trainer.kl_vocabulary, trainer.use_kl, trainer.use_kto) == (
        0.3,
        "full",
        True,
        True,
    )
    plain = KTOConfig(output_dir=str(tmp_path / "plain"), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(TypeError, match="must be a Steering\\*Config"):
        SteeringKTOTrainer(
            model=lora_model(len(tok)),
            args=plain,
            train_dataset=Dataset.from_list(kto_data),
            processing_class=tok,
            steering_ids=[32, 33],
        )
    with pytest.raises(ValueError, match="kl_vocabulary"):
        _kto_trainer(tmp_path / "bad", tok, kto_data, kl_vocabulary="half")


def test_kto_total_is_trl_loss_plus_kl(tmp_path, tok, kto_data, monkeypatch):
    from trl import KTOTrainer

    import distalign.training.trainers as st

    trainer = _kto_trainer(tmp_path, tok, kto_data, kl_weight=0.7)
    trainer.model.eval()
    batch = _batch(trainer)
    assert batch["target"].shape == (4, 2)
    real_prompt_logits = st.prompt_logits

    def no_extra_forward(*a, **k):
        raise AssertionError("the KL term must reuse trl's forward (hidden-state hook)")

    monkeypatch.setattr(st, "prompt_logits", no_extra_forward)
    with torch.no_grad():
        total = trainer.compute_loss(trainer.model, batch)
    monkeypatch.setattr(st, "prompt_logits", real_prompt_logits)
    with torch.no_grad():
        plain = {k: v for k, v in batch.items() if k != "target"}
        kto = KTOTrainer.compute_loss(trainer, trainer.model, plain)
    kl = _kl_on_batch(trainer, batch)
    assert kl.item() > 0
    assert total.item() == pytest.approx(kto.item() + 0.7 * kl.item(), abs=1e-5)
    m = trainer._metrics["eval"]
    for key in ("steering_kl", "kto_loss", "steering_mass", "steering_mae", "rewards/margins", "kl"):
        assert key in m, key


def test_full_vocabulary_switch(tmp_path, tok, kto_data):
    trainer = _kto_trainer(tmp_path, tok, kto_data, kl_vocabulary="full", use_kto=False, precompute=False)
    trainer.model.eval()
    batch = _batch(trainer)
    with torch.no_grad():
        total = trainer.compute_loss(trainer.model, batch)
    assert total.item() == pytest.approx(_kl_on_batch(trainer, batch, "full").item(), abs=1e-5)


def test_ablation_switches_remove_one_term(tmp_path, tok, kto_data):
    full = _kto_trainer(tmp_path / "a", tok, kto_data)
    no_kl = _kto_trainer(tmp_path / "b", tok, kto_data, use_kl=False)
    no_kto = _kto_trainer(tmp_path / "c", tok, kto_data, use_kto=False, precompute=False)
    vals = {}
    for name, t in (("full", full), ("no_kl", no_kl), ("no_kto", no_kto)):
        t.model.eval()
        with torch.no_grad():
            vals[name] = t.compute_loss(t.model, _batch(t)).item()
        vals[name + "_kto"] = t._metrics["eval"].get("kto_loss", [None])[-1]
    kl = _kl_on_batch(full, _batch(full)).item()
    assert vals["no_kl"] == pytest.approx(vals["full_kto"], abs=1e-6)
    assert vals["no_kto"] == pytest.approx(kl, abs=1e-5)
    assert vals["full"] == pytest.approx(vals["no_kl"] + kl, abs=1e-5)
    assert vals["no_kto_kto"] is None
    with pytest.raises(ValueError, match="both"):
        _kto_trainer(tmp_path / "d", tok, kto_data, use_kto=False, use_kl=False)


def test_gradients_reach_lora_weights(tmp_path, tok, kto_data):
    for use_kto in (True, False):
        trainer = _kto_trainer(tmp_path / str(use_kto), tok, kto_data, use_kto=use_kto, precompute=use_kto)
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, _batch(trainer))
        loss.backward()
        grads = [p.grad for n, p in trainer.model.named_parameters() if "lora_" in n and ".default." in n]
        assert grads and all(g is not None for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0


def test_kto_trainer_trains_and_logs(tmp_path, tok, kto_data):
    trainer = _kto_trainer(tmp_path, tok, kto_data)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(k in logs[0] for k in ("steering_kl", "kto_loss", "steering_mass", "rewards/margins"))


def test_dpo_trainer_total_and_plain(tmp_path, tok, config, repo):
    from trl import DPOTrainer

    from distalign.training.trainers import SteeringDPOConfig

    _, _, _, pref = tiny_data(repo, config)

    def make(ids, **kw):
        fields = dict(per_device_train_batch_size=3, max_steps=1, precompute_ref_log_probs=True, **kw)
        rows = dpo_rows(pref, tok, ids)
        return _trainer(SteeringDPOTrainer, SteeringDPOConfig, tmp_path / "dpo", tok, rows, ids, **fields)

    t = make([32, 33], kl_weight=2.0)
    t.model.eval()
    batch = _batch(t)
    n = batch["target"].shape[0]
    with torch.no_grad():
        total = t.compute_loss(t.model, batch)
        dpo = DPOTrainer.compute_loss(t, t.model, {k: v for k, v in batch.items() if k != "target"})
        pos = answer_positions(batch["completion_mask"][:n])
        from distalign.training.losses import prompt_logits

        logits = prompt_logits(t.model, batch["input_ids"][:n], batch["attention_mask"][:n], pos)
    kl = steering_kl(logits, [32, 33], batch["target"]).kl.mean()
    assert total.item() == pytest.approx(dpo.item() + 2.0 * kl.item(), abs=1e-5)
    plain = make(None)
    plain.train()
    assert any("rewards/margins" in h for h in plain.state.log_history)


# ------------------------------------------------------------------------------------- nll stage


def test_nll_rows_mask_prompt_and_token(tok, config, repo):
    _, _, _, pref = tiny_data(repo, config)
    rows = nll_rows(pref, tok, [32, 33], max_length=256)
    assert len(rows) == len(pref)
    for src, r in zip(pref, rows, strict=True):
        p = prompt_ids(tok, src["prompt"])
        a = completion_ids(tok, src["answer"])
        assert r["input_ids"] == p + [[32, 33][src["class_index"]]] + a
        assert r["labels"] == [-100] * (len(p) + 1) + a
        assert r["target"] == pytest.approx(src["target"])
        # the steering position helper finds the position that predicts the steering token
        pos = steering_positions_from_labels(torch.tensor([r["labels"]]))
        assert pos.item() == len(p) - 1
    with pytest.raises(ValueError, match="max_length"):
        nll_rows(pref[:1], tok, [32, 33], max_length=10)
    # stories (D_story) may be cut: the row keeps its first max_length tokens, token and labels aligned
    cut = nll_rows(pref[:1], tok, [32, 33], max_length=len(rows[0]["input_ids"]) - 1, truncate=True)[0]
    assert cut["input_ids"] == rows[0]["input_ids"][:-1] and cut["labels"] == rows[0]["labels"][:-1]


def _nll_trainer(tmp_path, tok, rows, **kw):
    from distalign.training.trainers import SteeringSFTConfig

    fields = dict(per_device_train_batch_size=4, learning_rate=1e-3, max_steps=3, dataset_num_proc=None, **kw)
    return _trainer(SteeringSFTTrainer, SteeringSFTConfig, tmp_path / "nll", tok, rows, **fields)


def test_nll_total_is_answer_nll_plus_kl(tmp_path, tok, config, repo):
    from distalign.training.losses import prompt_logits

    _, _, _, pref = tiny_data(repo, config)
    rows = nll_rows(pref, tok, [32, 33])
    trainer = _nll_trainer(tmp_path, tok, rows, kl_weight=0.5)
    trainer.model.eval()
    batch = _batch(trainer)
    assert batch["target"].shape == (4, 2)
    with torch.no_grad():
        total = trainer.compute_loss(trainer.model, dict(batch))
        ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
        logits = trainer.model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1)
        tgt = labels[:, 1:]
        keep = tgt != -100
        nll = -(logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum() / keep.sum()
        pos = steering_positions_from_labels(labels)
        kl = steering_kl(prompt_logits(trainer.model, ids, mask, pos), [32, 33], batch["target"]).kl.mean()
    assert kl.item() > 0
    assert total.item() == pytest.approx(nll.item() + 0.5 * kl.item(), rel=1e-4)
    assert {"nll_loss", "steering_kl", "steering_mae"} <= set(trainer._metrics["eval"])
    no_kl = _nll_trainer(tmp_path / "b", tok, rows, use_kl=False)
    no_kl.model.eval()
    with torch.no_grad():
        assert no_kl.compute_loss(no_kl.model, dict(batch)).item() == pytest.approx(nll.item(), rel=1e-4)


def _story_like_rows(tok, pref, bind=True):
    """nll rows whose answers name the class the way a story would ("she"/"he" + filler), bound."""
    words = {
        0: " He went to work early and he came home late.",
        1: " She went to work early and she came home late.",
    }
    stories = [{**r, "answer": words[r["class_index"]]} for r in pref]
    return nll_rows(pref, tok, [32, 33], bind=False) + nll_rows(stories, tok, [32, 33], bind=bind)


def test_token_log_likelihoods_swap_the_steering_token(tmp_path, tok, config, repo):
    from distalign.training.losses import token_log_likelihoods

    _, _, _, pref = tiny_data(repo, config)
    rows = nll_rows(pref[:3], tok, [32, 33])
    model = lora_model(len(tok))
    model.eval()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[32], emb[33] = emb[32] * 50, emb[33] * -50  # make the two tokens matter to the random model
        for r in rows:
            ids, labels = torch.tensor([r["input_ids"]]), torch.tensor([r["labels"]])
            pos = steering_positions_from_labels(labels) + 1
            assert ids[0, pos].item() in (32, 33)
            got = token_log_likelihoods(model, ids, torch.ones_like(ids), labels, pos, [32, 33])
            assert got.shape == (1, 2)
            for k, token in enumerate((32, 33)):
                swapped = ids.clone()
                swapped[0, pos] = token
                logp = torch.log_softmax(model(input_ids=swapped).logits[0, :-1].float(), -1)
                keep = labels[0, 1:] != -100
                want = logp[keep].gather(-1, labels[0, 1:][keep].unsqueeze(-1)).sum()
                assert got[0, k].item() == pytest.approx(want.item(), rel=1e-4)
            assert abs(got[0, 0].item() - got[0, 1].item()) > 0.1


def test_nll_rows_bind_column(tok, config, repo):
    _, _, _, pref = tiny_data(repo, config)
    assert "bind" not in nll_rows(pref[:2], tok, [32, 33])[0]
    assert [r["bind"] for r in nll_rows(pref[:4], tok, [32, 33], bind=True)] == [
        r["class_index"] for r in pref[:4]
    ]
    assert {r["bind"] for r in nll_rows(pref[:4], tok, [32, 33], bind=False)} == {-1}


def test_binding_term_is_the_weighted_class_cross_entropy_of_bound_rows(tmp_path, tok, config, repo):
    from distalign.training.losses import token_log_likelihoods

    _, _, _, pref = tiny_data(repo, config)
    rows = _story_like_rows(tok, pref)
    batch_rows = rows[:2] + rows[-2:]  # two unbound answers, two bound stories
    off = _nll_trainer(tmp_path / "off", tok, rows, kl_weight=0.5)
    on = _nll_trainer(tmp_path / "on", tok, rows, kl_weight=0.5, binding_weight=2.0)
    on.model.load_state_dict(off.model.state_dict())
    batch = on.data_collator([dict(r) for r in batch_rows])
    assert batch["bind"].tolist() == [-1, -1, batch_rows[2]["bind"], batch_rows[3]["bind"]]
    for t in (off, on):
        t.model.eval()
    with torch.no_grad():
        base = off.compute_loss(off.model, dict(batch)).item()
        total = on.compute_loss(on.model, dict(batch)).item()
        pos = steering_positions_from_labels(batch["labels"][2:]) + 1
        scores = token_log_likelihoods(
            on.model, batch["input_ids"][2:], batch["attention_mask"][2:], batch["labels"][2:], pos, [32, 33]
        )
        ce = torch.nn.functional.cross_entropy(scores, batch["bind"][2:]).item()
    assert ce > 0
    assert total == pytest.approx(base + 2.0 * ce, rel=1e-4)
    assert on._metrics["eval"]["binding_loss"][-1] == pytest.approx(ce, rel=1e-4)
    assert "binding_loss" not in off._metrics["eval"]
    # a batch without a bound row adds nothing
    plain = on.data_collator([dict(r) for r in rows[:4]])
    with torch.no_grad():
        assert on.compute_loss(on.model, dict(plain)).item() == pytest.approx(
            off.compute_loss(off.model, dict(plain)).item(), rel=1e-5
        )
    with pytest.raises(ValueError, match="story_binding_weight"):
        _nll_trainer(tmp_path / "neg", tok, rows, binding_weight=-1.0)


def test_binding_term_teaches_the_token_to_decide_the_story(tmp_path, tok, config, repo):
    """Trained with the binding term, the stories' own tokens explain them better than without it."""
    from distalign.training.losses import token_log_likelihoods

    _, _, _, pref = tiny_data(repo, config)
    rows = _story_like_rows(tok, pref)
    bound = [dict(r) for r in rows if r["bind"] >= 0]

    def binding_after(name, weight):
        trainer = _nll_trainer(tmp_path / name, tok, rows, binding_weight=weight, use_kl=False)
        trainer.args.max_steps = 30
        trainer.args.learning_rate = 3e-2
        trainer.train()
        trainer.model.eval()
        b = trainer.data_collator(bound)
        with torch.no_grad():
            scores = token_log_likelihoods(
                trainer.model,
                b["input_ids"],
                b["attention_mask"],
                b["labels"],
                steering_positions_from_labels(b["labels"]) + 1,
                [32, 33],
            )
        return torch.nn.functional.cross_entropy(scores, b["bind"]).item()

    with_term, without = binding_after("bind", 5.0), binding_after("nobind", 0.0)
    # measured .51 against .69 (chance is ln 2 = .69): the NLL alone does not bind in 30 steps
    assert with_term < without - 0.1


def test_nll_trainer_trains_and_lowers_steering_kl(tmp_path, tok, config, repo):
    """The KL term moves the steering distribution toward the targets beyond what the NLL does alone."""
    _, _, _, pref = tiny_data(repo, config)
    rows = nll_rows(pref, tok, [32, 33])

    def trained_kl(name, **kw):
        trainer = _nll_trainer(tmp_path / name, tok, rows, **kw)
        trainer.args.max_steps = 12
        trainer.args.learning_rate = 1e-2

        def data_kl():
            trainer.model.eval()
            with torch.no_grad():
                trainer.compute_loss(trainer.model, dict(trainer.data_collator([dict(r) for r in rows])))
            return trainer._metrics["eval"]["steering_kl"][-1]

        before = data_kl()
        trainer.train()
        assert {"nll_loss", "steering_kl"} <= set(trainer.state.log_history[0])
        return before, data_kl()

    before, with_kl = trained_kl("kl", kl_weight=5.0)
    _, without_kl = trained_kl("nokl", use_kl=False)
    # a 2-layer random model cannot tell the 3 contexts apart in 12 steps: the reachable optimum is the
    # context-blind one (about 0.34 here), so the assertions are relative
    assert with_kl < before - 0.01
    assert with_kl < without_kl - 0.01
