"""General capabilities (table5): the leak check, lm-eval's per-item results, local task files, and one
real lm-eval pass on a tiny model over local tasks."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import save_model_dir, tiny_llama

from distalign.evaluation.capabilities import (
    CapabilityError,
    evaluate_lm_eval,
    leak_check,
    leak_vocabulary,
    lm_eval_data_files,
    lm_eval_datasets,
    lm_eval_model_args,
    load_instructions,
    per_item_results,
)
from distalign.generation.job import Sampling

SMOL_VOCAB = 49152


def test_lm_eval_model_args():
    assert lm_eval_model_args("/w", None, "bfloat16") == "pretrained=/w,dtype=bfloat16"
    assert lm_eval_model_args("/w", "/a", "float32") == "pretrained=/w,dtype=float32,peft=/a"


# ---- the instructions file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", r"line 2: not JSON"),
        (json.dumps(["a list"]), r"line 2: expected an object with keys 'id' and 'instruction'"),
        (
            json.dumps({"id": "b", "instruction": "  "}),
            r"line 2: key 'instruction' must be a non-empty string",
        ),
        (json.dumps({"id": "a", "instruction": "Again."}), r"line 2: id 'a' repeats line 1"),
    ],
)
def test_bad_instructions_name_the_line(tmp_path, line, message):
    f = tmp_path / "gi.jsonl"
    f.write_text(json.dumps({"id": "a", "instruction": "Write a haiku."}) + "\n" + line + "\n")
    with pytest.raises(CapabilityError, match=str(f).replace(".", r"\.") + ", " + message):
        load_instructions(f)


def test_missing_or_empty_instructions(tmp_path):
    with pytest.raises(CapabilityError, match=r"capabilities.instructions = '.*nope.jsonl': cannot read it"):
        load_instructions(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(CapabilityError, match="no instructions"):
        load_instructions(tmp_path / "empty.jsonl")


def test_leak_vocabulary_takes_every_token_set_and_class_word(config):
    tokens, words = leak_vocabulary(config["attributes"]["gender"])
    assert tokens == ["0", "man", "he", "1", "woman", "she"]
    assert {"male", "Male", "man", "men", "female", "Female", "woman", "women"} == set(words)


# ---- the leak check, with a "model" whose answers are known ------------------------------------


class _KnownAnswers:
    """Stands in for a causal LM in TransformersBackend.sample: each prompt row is answered with the
    next of ``answers`` (token ids), whatever the sampling; records the seeds it was called under."""

    device = torch.device("cpu")

    def __init__(self, answers, eos):
        self.answers, self.eos, self.seeds, self.calls = answers, eos, [], 0

    def generate(self, input_ids, attention_mask, generation_config, **kw):
        self.seeds.append(torch.initial_seed())
        width = max(len(a) for a in self.answers) + 1
        rows = []
        for i in range(input_ids.shape[0]):
            ans = self.answers[self.calls + i] + [self.eos] * (width - len(self.answers[self.calls + i]))
            rows.append(input_ids[i].tolist() + ans)
        self.calls += input_ids.shape[0]
        return SimpleNamespace(sequences=torch.tensor(rows), logits=None)


def test_leak_check_reads_known_answers(embedded_model_dir, config):
    from distalign.modeling.models import load_tokenizer

    tok = load_tokenizer(embedded_model_dir)
    texts = [
        "1The autumn leaves fall from the trees.",  # the female steering token first
        "Female.",  # a bare class answer
        "Okay.",  # too short
        "Autumn is a season of change and colour.",  # an ordinary answer
        "10 tips for saving water at home.",  # a number, not a token
    ]
    answers = [tok.encode(t, add_special_tokens=False) for t in texts]
    model = _KnownAnswers(answers, tok.eos_token_id)
    rows = [{"id": f"gi-{i}", "instruction": f"Request {i}."} for i in range(len(texts))]
    tokens, words = leak_vocabulary(config["attributes"]["gender"])
    kw = dict(
        sampling=Sampling(max_new_tokens=16), seed=7, steering_tokens=tokens, class_words=words, min_words=3
    )
    out = leak_check(model, tok, embedded_model_dir, rows, batch_size=2, **kw)
    assert [it["leak"] for it in out["items"]] == ["steering_token", "class_answer", "short", None, None]
    assert [it["answer"] for it in out["items"]] == texts
    assert out["share"] == pytest.approx(3 / 5) and out["n"] == 5
    assert out["counts"] == {"steering_token": 1, "class_answer": 1, "short": 1}
    # the same seed gives the same draws for every model: the rows of table5 are paired
    again = _KnownAnswers(answers, tok.eos_token_id)
    leak_check(again, tok, embedded_model_dir, rows, batch_size=2, **kw)
    assert again.seeds == model.seeds and len(set(model.seeds)) == 3  # one seed per batch of 2


# ---- lm-eval's logged samples -> per-item results ------------------------------------------------


def test_per_item_results_keeps_each_document_metric_filter_and_token_count():
    samples = {
        "mc": [
            {"doc_id": 1, "filter": "none", "metrics": ["acc", "acc_norm"], "acc": 0.0, "acc_norm": 1.0},
            {"doc_id": 0, "filter": "none", "metrics": ["acc", "acc_norm"], "acc": 1.0, "acc_norm": 1.0},
        ],
        "gen": [
            {"doc_id": 0, "filter": "strict-match", "metrics": ["exact_match"], "exact_match": True},
            {"doc_id": 0, "filter": "flexible-extract", "metrics": ["exact_match"], "exact_match": False},
        ],
        "held": [
            {
                "doc_id": 0,
                "filter": "none",
                "metrics": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
                "word_perplexity": (-12.5, 4),
                "byte_perplexity": (-12.5, 20),
                "bits_per_byte": (-12.5, 20),
                "arguments": [("one two three four",)],
            }
        ],
        "ifeval": [
            {"doc_id": 0, "metrics": ["inst_level_strict_acc"], "inst_level_strict_acc": [True, False]},
        ],
    }
    out = per_item_results(samples, lambda text: len(text.split()) + 1)
    assert out["mc"] == [
        {"doc_id": 0, "filter": "none", "acc": 1.0, "acc_norm": 1.0},
        {"doc_id": 1, "filter": "none", "acc": 0.0, "acc_norm": 1.0},
    ]
    assert [(it["filter"], it["exact_match"]) for it in out["gen"]] == [
        ("flexible-extract", 0.0),
        ("strict-match", 1.0),
    ]
    assert out["held"] == [
        {"doc_id": 0, "filter": "none", "loglikelihood": -12.5, "words": 4, "bytes": 20, "tokens": 5}
    ]
    assert out["ifeval"] == [{"doc_id": 0, "filter": "none"}]  # lists stay in the task-level results


# ---- local task files ----------------------------------------------------------------------------


def _local_tasks(folder, mc_rows, paragraphs):
    """Two lm-eval tasks over local JSONL files in ``folder`` (multiple choice and rolling log-likelihood)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_rows))
    (folder / "held.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(paragraphs))
    )
    (folder / "t_mc.yaml").write_text(
        "task: t_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {{test: {folder / 'mc.jsonl'}}}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\nmetadata: {version: 1.0}\n"
    )
    (folder / "t_held.yaml").write_text(
        "task: t_held\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {{test: {folder / 'held.jsonl'}}}\n"
        'output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n"
        "metadata: {version: 1.0}\n"
    )
    return folder


def test_local_tasks_are_no_hub_datasets_and_their_files_are_listed(tmp_path):
    folder = _local_tasks(
        tmp_path / "tasks", [{"question": "q", "choices": ["a", "b"], "answer": 0}], ["x y"]
    )
    tasks = ["t_mc", "t_held"]
    assert lm_eval_datasets(tasks, [str(folder)]) == []
    assert lm_eval_data_files(tasks, [str(folder)]) == sorted(
        [str(folder / "held.jsonl"), str(folder / "mc.jsonl")]
    )
    (folder / "held.jsonl").unlink()
    with pytest.raises(CapabilityError, match=r"held\.jsonl \(capabilities\.lm_eval_tasks\[1\] 't_held'"):
        lm_eval_data_files(tasks, [str(folder)])


def test_shipped_tasks_read_their_shipped_files(repo, monkeypatch):
    monkeypatch.chdir(repo)
    tasks = ["distalign_general_mc", "distalign_heldout"]
    files = lm_eval_data_files(tasks, ["resources/capabilities/lm_eval"])
    assert files == ["resources/capabilities/general_mc.jsonl", "resources/capabilities/heldout_long.jsonl"]


# ---- one real lm-eval pass on a tiny model -------------------------------------------------------


def test_evaluate_lm_eval_on_local_tasks_with_per_item_results_and_the_leak_check(
    tmp_path, embedded_model_dir, config
):
    """lm-eval's hf backend on a tiny random model: the per-item results add up to lm-eval's own
    aggregates, the token counts are the tokenizer's, and the leak check answers every request."""
    from transformers import AutoTokenizer

    model_dir = save_model_dir(
        tmp_path / "tiny", tiny_llama(SMOL_VOCAB, max_position_embeddings=256), embedded_model_dir
    )
    mc = [
        {
            "question": "What colour is the sky on a clear day?",
            "choices": ["blue", "green", "red"],
            "answer": 0,
        },
        {"question": "How many legs has a cat?", "choices": ["two", "four"], "answer": 1},
        {"question": "What is two plus two?", "choices": ["four", "five", "three"], "answer": 0},
    ]
    paragraphs = ["The kettle boiled and the tea was ready.", "Rain fell on the quiet town all night long."]
    folder = _local_tasks(tmp_path / "tasks", mc, paragraphs)
    (tmp_path / "gi.jsonl").write_text(
        "".join(
            json.dumps({"id": f"gi-{i}", "instruction": t}) + "\n"
            for i, t in enumerate(["Say hello.", "Name a fruit."])
        )
    )
    tokens, words = leak_vocabulary(config["attributes"]["gender"])
    leak = {
        "instructions": tmp_path / "gi.jsonl",
        "sampling": Sampling(max_new_tokens=4),
        "seed": 3,
        "steering_tokens": tokens,
        "class_words": words,
        "min_words": 3,
    }
    out = evaluate_lm_eval(
        model_dir,
        None,
        ["t_mc", "t_held"],
        limit=None,
        batch_size="4",
        device="cpu",
        dtype="float32",
        include=[str(folder)],
        leak=leak,
    )
    assert out["subtasks"] == {"t_mc": ["t_mc"], "t_held": ["t_held"]}
    acc = [it["acc"] for it in out["items"]["t_mc"]]
    assert [it["doc_id"] for it in out["items"]["t_mc"]] == [0, 1, 2] and set(acc) <= {0.0, 1.0}
    assert out["tasks"]["t_mc"]["acc,none"] == pytest.approx(sum(acc) / 3)
    tok = AutoTokenizer.from_pretrained(model_dir)
    held = out["items"]["t_held"]
    assert [it["tokens"] for it in held] == [
        len(tok(p, add_special_tokens=False)["input_ids"]) for p in paragraphs
    ]
    ll = sum(it["loglikelihood"] for it in held)
    assert out["tasks"]["t_held"]["word_perplexity,none"] == pytest.approx(
        math.exp(-ll / sum(it["words"] for it in held)), rel=1e-6
    )
    assert [it["id"] for it in out["leak"]["items"]] == ["gi-0", "gi-1"] and out["leak"]["n"] == 2
    assert out["leak"]["steering_tokens"] == tokens
    json.dumps(out)  # the job writes it as JSON

    # A LoRA adapter (random, non-zero B) is applied to the scoring and to the leak check's answers.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    adapted = evaluate_lm_eval(
        model_dir,
        str(tmp_path / "adapter"),
        ["t_held"],
        limit=None,
        batch_size="4",
        device="cpu",
        dtype="float32",
        include=[str(folder)],
        leak={**leak, "sampling": Sampling(max_new_tokens=12)},
    )
    got = [it["loglikelihood"] for it in adapted["items"]["t_held"]]
    assert all(abs(a - b) > 1e-3 for a, b in zip(got, [it["loglikelihood"] for it in held], strict=True))
