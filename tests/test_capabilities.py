"""General capabilities (table5): the local task files, perplexity and multiple-choice scoring."""

import json
import math

import pytest
import torch
from helpers import tiny_llama

from distalign.evaluation.capabilities import (
    CapabilityError,
    lm_eval_model_args,
    load_heldout,
    load_multiple_choice,
    multiple_choice,
    perplexity,
)


def test_shipped_files_load(repo):
    shipped = repo / "resources" / "capabilities"
    paras = load_heldout(shipped / "heldout.txt")
    items = load_multiple_choice(shipped / "multiple_choice.jsonl")
    assert len(paras) >= 10 and all(len(p.split()) > 30 for p in paras)
    assert len(items) >= 40 and len({i["id"] for i in items}) == len(items)
    assert all(len(i["choices"]) == 4 for i in items)


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", r"line 2: not JSON"),
        (
            json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}),
            r"line 2: key 'answer' = 2 is not an index",
        ),
        (
            json.dumps({"question": "q", "choices": "ab", "answer": 0}),
            r"line 2: key 'choices' must be a list",
        ),
        (
            json.dumps({"question": "q", "choices": ["a"], "answer": 0}),
            r"line 2: key 'choices' must hold at least two",
        ),
        (json.dumps({"choices": ["a", "b"], "answer": 0}), r"line 2: key 'question' must be a str"),
    ],
)
def test_bad_multiple_choice_file_names_the_line(tmp_path, line, message):
    f = tmp_path / "mc.jsonl"
    f.write_text(json.dumps({"question": "ok", "choices": ["a", "b"], "answer": 1}) + "\n" + line + "\n")
    with pytest.raises(CapabilityError, match=str(f).replace(".", r"\.") + ", " + message):
        load_multiple_choice(f)


def test_empty_heldout_is_an_error(tmp_path):
    f = tmp_path / "h.txt"
    f.write_text("\n\n  \n")
    with pytest.raises(CapabilityError, match="empty held-out text"):
        load_heldout(f)


class _Tok:
    """Whitespace tokenizer over a fixed vocabulary (ids 3..)."""

    def __init__(self, words):
        self.vocab = {w: i + 3 for i, w in enumerate(words)}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[w] for w in text.replace("\n", " ").split()]}


def _manual_logprob(model, ids, start):
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))


def test_perplexity_and_choice_scores_match_a_manual_computation():
    words = [
        "Question:",
        "is",
        "the",
        "sky",
        "blue",
        "or",
        "green",
        "?",
        "Answer:",
        "yes",
        "no",
        "maybe",
        "a",
        "b",
        "c",
    ]
    tok = _Tok(words)
    model = tiny_llama(len(words) + 3, max_position_embeddings=64).eval()
    paras = ["the sky is blue", "is the sky green or blue ?"]
    got = perplexity(model, tok, paras)
    seqs = [tok(p)["input_ids"] for p in paras]
    nll = -sum(_manual_logprob(model, s, 1) for s in seqs)
    assert got["tokens"] == sum(len(s) - 1 for s in seqs)
    assert got["perplexity"] == pytest.approx(math.exp(nll / got["tokens"]), rel=1e-5)

    items = [
        {"question": "is the sky blue ?", "choices": ["yes", "no", "maybe"], "answer": 0},
        {"question": "sky green ?", "choices": ["a b", "c"], "answer": 1},
    ]
    res = multiple_choice(model, tok, items)
    expected = 0
    for it in items:
        ctx = tok(f"Question: {it['question']}\nAnswer:")["input_ids"]
        scores = [_manual_logprob(model, ctx + tok(f" {c}")["input_ids"], len(ctx)) for c in it["choices"]]
        expected += int(max(range(len(scores)), key=scores.__getitem__) == it["answer"])
    assert res["accuracy"] == expected / 2 and res["items"] == 2


def test_lm_eval_model_args():
    assert lm_eval_model_args("/w", None, "bfloat16") == "pretrained=/w,dtype=bfloat16"
    assert lm_eval_model_args("/w", "/a", "float32") == "pretrained=/w,dtype=float32,peft=/a"
