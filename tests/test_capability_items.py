"""The enlarged general-capability files (resources/capabilities: general_mc.jsonl and its generator,
heldout_long.jsonl, general_instructions.jsonl, the lm-eval task YAMLs) and the paired statistics of
distalign.evaluation.capability_stats. Fast: no model is loaded; lm-eval indexes and builds the two local
tasks in a fresh, offline interpreter (a few seconds)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from conftest import REPO

from distalign.evaluation.capability_stats import (
    leak_kind,
    leak_share,
    paired_accuracy_change,
    paired_perplexity_change,
)

CAP = REPO / "resources" / "capabilities"


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_general_mc", CAP / "make_general_mc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mc_items() -> list[dict]:
    return _jsonl(CAP / "general_mc.jsonl")


# ---- the multiple-choice generator and its file ------------------------------------------------


def test_generator_reproduces_the_committed_file(generator, tmp_path):
    first, second = generator.build_items(), generator.build_items()
    assert first == second
    committed = (CAP / "general_mc.jsonl").read_bytes()
    assert generator.render(first).encode("ascii") == committed
    out = tmp_path / "general_mc.jsonl"
    assert generator.main(["--out", str(out)]) == 0
    assert out.read_bytes() == committed
    assert generator.main(["--check"]) == 0
    out.write_text(committed.decode()[:-200])
    assert generator.main(["--check", "--out", str(out)]) == 1


def test_generator_depends_on_its_seed(generator):
    # the determinism test above would pass for a generator that ignored its seed too
    assert generator.build_items(generator.SEED + 1) != generator.build_items()


def test_generator_refuses_a_duplicate_question(generator, monkeypatch):
    def twice(rng):
        return [generator._item("science", "Is this asked twice?", "yes", ["no", "maybe", "never"])] * 2

    monkeypatch.setattr(generator, "CATEGORIES", [*generator.CATEGORIES, twice])
    with pytest.raises(ValueError, match="duplicate question.*Is this asked twice"):
        generator.build_items()


def test_generator_refuses_an_oversized_category(generator, monkeypatch):
    def flood(rng):
        return [generator._item("flood", f"Flood question {i}?", "a", ["b", "c", "d"]) for i in range(600)]

    monkeypatch.setattr(generator, "CATEGORIES", [*generator.CATEGORIES, flood])
    with pytest.raises(ValueError, match="categories above 25%.*flood"):
        generator.build_items()


def test_every_item_is_a_valid_four_way_question(mc_items):
    assert len(mc_items) >= 1200
    assert len({it["id"] for it in mc_items}) == len(mc_items)
    for it in mc_items:
        where = it.get("id")
        assert set(it) == {"id", "category", "question", "choices", "answer"}, where
        assert isinstance(it["question"], str) and it["question"].strip(), where
        ch = it["choices"]
        assert len(ch) == 4 and all(isinstance(c, str) and c.strip() for c in ch), where
        assert len(set(ch)) == 4, f"{where}: repeated choice in {ch}"
        assert isinstance(it["answer"], int) and not isinstance(it["answer"], bool), where
        assert 0 <= it["answer"] < 4, where


def test_questions_are_unique_and_categories_bounded(mc_items):
    norm = Counter(" ".join(it["question"].lower().split()) for it in mc_items)
    assert [q for q, k in norm.items() if k > 1] == []
    cats = Counter(it["category"] for it in mc_items)
    assert len(cats) >= 8, cats
    assert max(cats.values()) <= 0.25 * len(mc_items), cats


def test_answer_slots_are_balanced(mc_items):
    slots = Counter(it["answer"] for it in mc_items)
    quarter = len(mc_items) / 4
    assert set(slots) == {0, 1, 2, 3}
    assert all(abs(k - quarter) <= 0.02 * len(mc_items) for k in slots.values()), slots


def test_items_are_shuffled_across_categories(mc_items):
    # lm-eval's --limit N takes the first N documents: they must be a mix, not one category
    assert len({it["category"] for it in mc_items[:100]}) >= 8


def test_the_leak_check_reads_the_shipped_instructions():
    from distalign.evaluation.capabilities import load_instructions

    rows = load_instructions(CAP / "general_instructions.jsonl")
    assert len(rows) == len(_jsonl(CAP / "general_instructions.jsonl")) >= 150
    assert all(set(r) == {"id", "instruction"} for r in rows)


# ---- held-out text and ordinary instructions ---------------------------------------------------


def test_heldout_long_sizes():
    rows = _jsonl(CAP / "heldout_long.jsonl")
    assert len(rows) >= 120
    assert all(set(r) == {"id", "text"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["text"] for r in rows}) == len(rows)
    words = [len(r["text"].split()) for r in rows]
    assert all(50 <= w <= 90 for w in words), [
        r["id"] for r, w in zip(rows, words, strict=True) if not 50 <= w <= 90
    ]
    assert sum(words) >= 8000
    topics = Counter(r["id"].split("-")[1] for r in rows)
    assert len(topics) >= 8 and max(topics.values()) <= 0.2 * len(rows), topics


def _banned_words() -> tuple[set[str], list[str]]:
    """Single words and phrases that would tie an ordinary request to the attribute tasks."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    words: set[str] = set()
    phrases: list[str] = []
    for spec in cfg["attributes"].values():
        for c in spec["classes"]:
            for w in [c["name"].replace("_", " "), c["label"], *c.get("keywords", []), *c.get("lexicon", [])]:
                (phrases.append if " " in w else words.add)(w.lower())
    extra = (
        "gender sex race racial ethnic ethnicity occupation occupations job jobs career profession employee "
        "employees worker workers colleague colleagues workforce sentiment mood moods emotion emotional feel "
        "feels feeling feelings boys girls ladies gentlemen mum dad mom husband wife "
        "teacher doctor nurse engineer chef farmer driver lawyer pilot scientist artist cleaner manager "
        "secretary mechanic carpenter plumber police firefighter soldier programmer accountant cashier waiter "
        "waitress librarian dentist surgeon electrician receptionist"
    )
    words |= set(extra.split())
    for census in ("uk", "us"):
        with open(REPO / "resources" / "census" / f"{census}.csv", newline="") as fh:
            phrases += [row["occupation"].lower() for row in csv.DictReader(fh)]
    return words, phrases


def attribute_hits(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """(id, the banned words and phrases it contains) of every instruction that ties it to an attribute task."""
    words, phrases = _banned_words()
    hits = []
    for r in rows:
        text = r["instruction"].lower()
        found = set(re.findall(r"[a-z]+", text)) & words
        found |= {p for p in phrases if re.search(rf"\b{re.escape(p)}\b", text)}
        if found:
            hits.append((r["id"], sorted(found)))
    return hits


def test_instructions_sizes_and_neutrality():
    rows = _jsonl(CAP / "general_instructions.jsonl")
    assert len(rows) >= 150
    assert all(set(r) == {"id", "instruction"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["instruction"].lower() for r in rows}) == len(rows)
    words, _ = _banned_words()
    assert {"female", "white", "negative", "teacher", "she"} <= words  # the list is what it claims
    assert attribute_hits(rows) == []


# ---- lm-eval task YAMLs --------------------------------------------------------------------------


def _task_yamls() -> dict[str, dict]:
    out = {}
    for path in sorted((CAP / "lm_eval").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        out[cfg["task"]] = cfg
    return out


def test_task_yamls_parse_and_name_existing_files():
    tasks = _task_yamls()
    assert set(tasks) == {"distalign_general_mc", "distalign_heldout"}
    for name, cfg in tasks.items():
        assert cfg["dataset_path"] == "json", name
        files = cfg["dataset_kwargs"]["data_files"]
        assert set(files) == {cfg["test_split"]}, name
        rel = files[cfg["test_split"]]
        assert rel.startswith("resources/capabilities/") and (REPO / rel).is_file(), (name, rel)
    mc, held = tasks["distalign_general_mc"], tasks["distalign_heldout"]
    assert mc["output_type"] == "multiple_choice"
    assert mc["doc_to_text"].startswith("Question: {{question}}") and mc["doc_to_text"].endswith("Answer:")
    assert {m["metric"] for m in mc["metric_list"]} == {"acc", "acc_norm"}
    assert held["output_type"] == "loglikelihood_rolling"
    assert {m["metric"] for m in held["metric_list"]} == {
        "word_perplexity",
        "byte_perplexity",
        "bits_per_byte",
    }


LM_EVAL_CHECK = """
import json
from lm_eval.tasks import TaskManager
tm = TaskManager(include_path=["resources/capabilities/lm_eval"], include_defaults=False)
loaded = tm.load(["distalign_general_mc", "distalign_heldout"])["tasks"]
out = {}
for name, task in loaded.items():
    docs = list(task.test_docs())
    first = docs[0]
    out[name] = {"n": len(docs), "text": task.doc_to_text(first), "target": task.doc_to_target(first)}
    if name == "distalign_general_mc":
        out[name]["choices"] = task.doc_to_choice(first)
print("RESULT " + json.dumps(out))
"""


def test_lm_eval_builds_both_tasks_offline(mc_items, tmp_path):
    pytest.importorskip("lm_eval")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-c", LM_EVAL_CHECK], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    mc, held = out["distalign_general_mc"], out["distalign_heldout"]
    heldout = _jsonl(CAP / "heldout_long.jsonl")
    assert mc["n"] == len(mc_items) and held["n"] == len(heldout)
    assert mc["text"] == f"Question: {mc_items[0]['question']}\nAnswer:"
    assert mc["choices"] == mc_items[0]["choices"] and mc["target"] == mc_items[0]["answer"]
    assert held["target"] == heldout[0]["text"]


# ---- paired statistics -----------------------------------------------------------------------------


def test_identical_models_change_nothing():
    right = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    c = paired_accuracy_change(right, list(right))
    assert c["delta"] == 0 and c["low"] == 0 and c["high"] == 0
    assert c["n"] == 10 and c["discordant"] == 0


def test_paired_accuracy_by_hand():
    base = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    other = [1, 1, 1, 0, 1, 1, 0, 0, 1, 0]  # item 3 lost, items 4 and 5 gained
    c = paired_accuracy_change(base, other)
    # d = (0,0,0,-1,1,1,0,0,0,0): mean 0.1, mean(d^2) 0.3, var 0.29, se sqrt(0.029) = 0.17029
    assert c["delta"] == pytest.approx(10.0)
    assert c["low"] == pytest.approx(10 - 33.3770, abs=1e-3)
    assert c["high"] == pytest.approx(10 + 33.3770, abs=1e-3)
    assert c["discordant"] == 3 and c["n"] == 10
    assert c["base_accuracy"] == pytest.approx(50.0) and c["other_accuracy"] == pytest.approx(60.0)
    flipped = paired_accuracy_change(other, base)
    assert flipped["delta"] == pytest.approx(-10.0) and flipped["high"] == pytest.approx(-c["low"])


def test_paired_half_width_is_196_sqrt_d_over_n():
    # the generator's sizing argument: 10% discordant items, balanced, n = 1000 -> +-1.96 points
    base = [1] * 50 + [0] * 50 + [1] * 500 + [0] * 400
    other = [0] * 50 + [1] * 50 + [1] * 500 + [0] * 400
    c = paired_accuracy_change(base, other)
    assert c["delta"] == pytest.approx(0.0)
    assert c["high"] == pytest.approx(1.96 * math.sqrt(0.1 / 1000) * 100, rel=1e-3)
    assert c["high"] < 2 and c["low"] > -2


def test_paired_accuracy_takes_bools():
    c = paired_accuracy_change([True, False], [True, True])
    assert c["delta"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("base", "other", "match"),
    [
        ([1, 0, 1], [1, 0], "base has 3 items and other has 2"),
        ([], [], "no items"),
        ([1, 2], [1, 0], r"base\[1\] = 2: expected 0 or 1"),
        ([1, 0], [1, 0.5], r"other\[1\] = 0.5: expected 0 or 1"),
    ],
)
def test_paired_accuracy_errors(base, other, match):
    with pytest.raises(ValueError, match=match):
        paired_accuracy_change(base, other)


def test_perplexity_change_point_estimate():
    c = paired_perplexity_change([10.0, 20.0], [11.0, 22.0], [5, 10], seed=1)
    assert c["change"] == pytest.approx(100 * (math.exp(3 / 15) - 1))
    assert c["base_perplexity"] == pytest.approx(math.exp(2.0))
    assert c["other_perplexity"] == pytest.approx(math.exp(2.2))
    assert c["n"] == 2 and c["tokens"] == 15


def test_perplexity_change_of_a_uniform_shift_has_no_spread():
    # other = base + 0.05 nats on every token of every paragraph: every resample gives the same change
    tokens = [40, 75, 60, 90, 55]
    base = [3.1 * t for t in tokens]
    other = [b + 0.05 * t for b, t in zip(base, tokens, strict=True)]
    c = paired_perplexity_change(base, other, tokens, seed=3, n_boot=500)
    expected = 100 * math.expm1(0.05)
    assert c["change"] == pytest.approx(expected)
    assert c["low"] == pytest.approx(expected) and c["high"] == pytest.approx(expected)
    same = paired_perplexity_change(base, base, tokens, seed=3, n_boot=200)
    assert same["change"] == 0 and same["low"] == 0 and same["high"] == 0


def test_perplexity_bootstrap_is_seeded():
    tokens = [60 + (7 * i) % 31 for i in range(40)]
    base = [t * (3.0 + 0.3 * math.sin(i)) for i, t in enumerate(tokens)]
    other = [b + t * 0.1 * math.cos(3 * i) for i, (b, t) in enumerate(zip(base, tokens, strict=True))]
    a = paired_perplexity_change(base, other, tokens, seed=7)
    b = paired_perplexity_change(base, other, tokens, seed=7)
    c = paired_perplexity_change(base, other, tokens, seed=8)
    assert a == b
    assert (c["low"], c["high"]) != (a["low"], a["high"])
    assert c["change"] == a["change"]
    assert a["low"] < a["change"] < a["high"]
    assert a["n_boot"] == 2000 and a["seed"] == 7


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([1.0, 2.0], [1.0], [3, 4]), "base_nll has 2 paragraphs, other_nll 1, tokens 2"),
        (([], [], []), "no paragraphs"),
        (([1.0, -2.0], [1.0, 2.0], [3, 4]), r"base_nll\[1\] = -2.0: .*pass its negative"),
        (([1.0, 2.0], [1.0, float("nan")], [3, 4]), r"other_nll\[1\] = nan: expected a finite number"),
        (([1.0, 2.0], [1.0, 2.0], [3, 0]), r"tokens\[1\] = 0.0: expected a positive whole number"),
        (([1.0, 2.0], [1.0, 2.0], [3, 2.5]), r"tokens\[1\] = 2.5"),
        (([1.0, 2.0], [1.0, 2.0], ["a", 2]), "tokens: expected a list of numbers"),
    ],
)
def test_perplexity_errors(args, match):
    with pytest.raises(ValueError, match=match):
        paired_perplexity_change(*args, seed=0)


def test_perplexity_rejects_bad_bootstrap_settings():
    with pytest.raises(ValueError, match="n_boot = 0"):
        paired_perplexity_change([1.0], [1.0], [2], seed=0, n_boot=0)
    with pytest.raises(ValueError, match="seed = 'x'"):
        paired_perplexity_change([1.0], [1.0], [2], seed="x")


# ---- leaks into ordinary answers ------------------------------------------------------------------

DIGITS = ["0", "1"]
GENDER_WORDS = ["Male", "Female", "male", "man", "men", "female", "woman", "women"]
RACE_WORDS = ["White", "Black or African American", "Asian", "black"]


@pytest.mark.parametrize(
    ("response", "tokens", "words", "expected"),
    [
        ("0", DIGITS, GENDER_WORDS, "steering_token"),
        ("  1  ", DIGITS, GENDER_WORDS, "steering_token"),
        ("1The leaves turn gold in autumn.", DIGITS, GENDER_WORDS, "steering_token"),
        ("0 Autumn is the season of falling leaves.", DIGITS, GENDER_WORDS, "steering_token"),
        ("1\nHere are three tips for saving water.", DIGITS, GENDER_WORDS, "steering_token"),
        ("1Female", DIGITS, GENDER_WORDS, "steering_token"),  # the token is what shows first
        ("10 tips for saving water follow below.", DIGITS, GENDER_WORDS, None),
        ("1. Turn off the tap while brushing.", DIGITS, GENDER_WORDS, None),
        ("1) Fix leaks 2) Shorter showers", DIGITS, GENDER_WORDS, None),
        ("2 cups of flour make a good base.", DIGITS, GENDER_WORDS, None),  # 2 is no token here
        ("Female.", DIGITS, GENDER_WORDS, "class_answer"),
        ("male", DIGITS, GENDER_WORDS, "class_answer"),
        ("  FEMALE!  ", DIGITS, GENDER_WORDS, "class_answer"),
        ('"Woman"', DIGITS, GENDER_WORDS, "class_answer"),
        ("Female nurses are often asked this.", DIGITS, GENDER_WORDS, None),
        ("The answer is Female.", DIGITS, GENDER_WORDS, None),
        ("Black or African American.", DIGITS, RACE_WORDS, "class_answer"),
        ("Black clouds gather over the hills tonight.", DIGITS, RACE_WORDS, None),
        ("Okay.", DIGITS, GENDER_WORDS, "short"),
        ("", DIGITS, GENDER_WORDS, "short"),
        ("Sure thing", DIGITS, GENDER_WORDS, "short"),
        ("Autumn brings cool mornings and golden leaves.", DIGITS, GENDER_WORDS, None),
        ("he went to the market early.", ["he", "she"], GENDER_WORDS, "steering_token"),
        ("He went to the market early.", ["he", "she"], GENDER_WORDS, None),
        ("hello there, how can I help?", ["he", "she"], GENDER_WORDS, None),
        ("shelves need dusting every week.", ["he", "she"], GENDER_WORDS, None),
    ],
)
def test_leak_kind(response, tokens, words, expected):
    assert leak_kind(response, steering_tokens=tokens, class_words=words) == expected


def test_leak_kind_min_words():
    kw = {"steering_tokens": DIGITS, "class_words": GENDER_WORDS}
    assert leak_kind("Water boils.", **kw) == "short"
    assert leak_kind("Water boils.", min_words=2, **kw) is None
    assert leak_kind("", min_words=0, **kw) is None
    with pytest.raises(ValueError, match="min_words = -1"):
        leak_kind("text", min_words=-1, **kw)
    with pytest.raises(ValueError, match="response: expected a string, got NoneType"):
        leak_kind(None, **kw)


def test_leak_share():
    responses = [
        "0",
        "Female.",
        "Ok",
        "Autumn brings cool mornings and golden leaves.",
        "Here are three ways to save water at home.",
    ]
    s = leak_share(responses, steering_tokens=DIGITS, class_words=GENDER_WORDS)
    assert s["share"] == pytest.approx(3 / 5) and s["n"] == 5
    assert s["counts"] == {"steering_token": 1, "class_answer": 1, "short": 1}
    clean = leak_share(responses[3:], steering_tokens=DIGITS, class_words=GENDER_WORDS)
    assert clean["share"] == 0 and clean["counts"] == {"steering_token": 0, "class_answer": 0, "short": 0}
    with pytest.raises(ValueError, match="no responses"):
        leak_share([], steering_tokens=DIGITS, class_words=GENDER_WORDS)
