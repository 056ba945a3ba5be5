"""Keyword parser, offline story judges, Cohen's kappa and label_generations."""

from pathlib import Path

import pytest
import yaml

from distalign.core.attributes import Attribute, attributes_from_config
from distalign.core.config import judge_config
from distalign.evaluation.judges import (
    JudgeError,
    KeywordParser,
    LexiconJudge,
    VaderJudge,
    cohens_kappa,
    judges_for,
    label_generations,
    normalise_reply,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def attrs():
    with open(ROOT / "config" / "config.yaml", encoding="utf-8") as fh:
        return attributes_from_config(yaml.safe_load(fh))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Female", "female"),
        ("female.", "female"),
        ("FEMALE!", "female"),
        ("The answer is: Male.", "male"),
        ("a woman", "female"),
        ("Men, mostly", "male"),
        ("female", "female"),  # "male" must not match inside "female"
        ("Females", None),  # whole words only
        ("femalemale", None),
        ("womanhood", None),
        ("", None),
        ("   \n", None),
        (None, None),
        ("I cannot tell.", None),
        ("**Male**", "male"),
        ("male-dominated", "male"),  # a hyphen is a word boundary
    ],
)
def test_gender_parser(attrs, text, expected):
    assert KeywordParser(attrs["gender"]).parse(text).label == expected


def test_invalid_reasons(attrs):
    p = KeywordParser(attrs["gender"])
    assert p.parse("").reason == "empty"
    assert p.parse(None).reason == "empty"
    assert p.parse("no idea").reason == "no_match"
    assert KeywordParser(attrs["gender"], multi="invalid").parse("male or female").reason == "ambiguous"


@pytest.mark.parametrize(
    "text, last, invalid",
    [
        ("Male or female? I would say female.", "female", None),
        ("Female, no wait, male", "male", None),
        ("Not a man but a woman", "female", None),
        ("Female. Female. Male", "male", None),
        ("female female", "female", "female"),  # several mentions of one class are not ambiguous
    ],
)
def test_several_classes_both_rules(attrs, text, last, invalid):
    assert KeywordParser(attrs["gender"], multi="last").parse(text).label == last
    assert KeywordParser(attrs["gender"], multi="invalid").parse(text).label == invalid


def test_multi_rule_checked(attrs):
    with pytest.raises(ValueError, match="multi"):
        KeywordParser(attrs["gender"], multi="first")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Black or African American", "black"),
        ("black or african american.", "black"),
        ("Black or\nAfrican  American", "black"),
        ("African-American", "black"),
        ("American Indian or Alaska Native", "american_indian"),
        ("Native Hawaiian or Other Pacific Islander", "pacific_islander"),
        ("Asian", "asian"),
        ("White", "white"),
        ("Caucasian", "white"),
        ("Hispanic", None),
        ("White, then Asian", "asian"),
        ("Asian. White.", "white"),
    ],
)
def test_race_multiword(attrs, text, expected):
    assert KeywordParser(attrs["race"]).parse(text).label == expected


def test_longer_phrase_beats_keyword_inside_it():
    # Class b's keyword "islander" lies inside class a's "pacific islander": the longer phrase wins
    # although "islander" alone would start later (and win under the last-mention rule).
    attr = Attribute.from_config(
        "x",
        {
            "classes": [
                {"name": "a", "label": "A", "keywords": ["pacific islander"], "tokens": {"digits": "0"}},
                {"name": "b", "label": "B", "keywords": ["islander"], "tokens": {"digits": "1"}},
            ]
        },
    )
    p = KeywordParser(attr)
    assert p.parse("Pacific Islander").label == "a"  # "islander" (later start) is inside the longer phrase
    assert p.parse("Pacific Islander, islander").label == "b"
    assert KeywordParser(attr, multi="invalid").parse("Pacific Islander").label == "a"


def test_sentiment_parser(attrs):
    p = KeywordParser(attrs["sentiment"])
    replies = ["Positive", "The mood is neutral.", "not positive, rather negative", "positively"]
    assert [p.parse(r).label for r in replies] == ["positive", "neutral", "negative", None]


def test_lexicon_judge(attrs):
    j = LexiconJudge(attrs["gender"])
    assert j.parse("She said her day was long.").label == "female"
    assert j.parse("He took his bag; his son waited.").label == "male"
    assert j.parse("He met her.").reason == "tie"
    assert j.parse("The nurse worked all day.").reason == "no_match"
    assert j.parse("").reason == "empty"
    assert j.parse("Shell and hero").label is None  # no whole-word hit
    assert j.counts("She, she and HER.") == [0, 3]


def test_lexicon_judge_needs_lexicon(attrs):
    with pytest.raises(JudgeError, match="lexicon"):
        LexiconJudge(attrs["race"])


def test_vader_judge(attrs):
    j = VaderJudge(attrs["sentiment"])
    assert j.parse("What a wonderful, joyful, happy day. She loved it.").label == "positive"
    assert j.parse("It was a terrible, awful, miserable day and he hated it.").label == "negative"
    assert j.parse("The clerk filed the forms.").label == "neutral"
    assert j.parse("").label is None
    with pytest.raises(JudgeError, match="vader"):
        VaderJudge(attrs["gender"])


def test_cohens_kappa():
    assert cohens_kappa(["a", "b", "a", "b"], ["a", "b", "a", "b"]) == pytest.approx(1.0)
    # po = 0.5; pe = (2*2 + 1*1 + 1*1) / 16 = 0.375; kappa = 0.125 / 0.625
    assert cohens_kappa(["a", "b", None, "a"], ["a", "b", "a", None]) == pytest.approx(0.2)
    assert cohens_kappa(["a", "a"], ["a", "a"]) is None  # p_e = 1: undefined
    assert cohens_kappa([], []) is None
    assert cohens_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohens_kappa(["a"], [])


def test_normalise_reply():
    assert normalise_reply("  **Female.**\n") == "female"
    assert normalise_reply('"Black or  African American"') == "black or african american"
    assert normalise_reply("<think>hmm male?</think> Female") == "female"


def test_label_generations_attribute(attrs):
    rows = [{"context_id": 0, "response": r} for r in ["Female.", "male", "", "maybe"]]
    judges, primary = judges_for(attrs["gender"], "attribute", judge_config({}))
    out = label_generations(rows, attrs["gender"], "attribute", judges, primary)
    assert [r["label"] for r in out] == ["female", "male", None, None]
    assert [r["label_reason"] for r in out] == ["ok", "ok", "empty", "no_match"]
    assert {r["label_source"] for r in out} == {"keywords"}
    assert len(out) == len(rows) and "label" not in rows[0]  # inputs untouched, nothing dropped


def test_label_generations_two_judges(attrs):
    class Fixed:
        name = "llm"

        def judge(self, texts):
            from distalign.evaluation.judges import Judgement

            return [Judgement("male") for _ in texts]

    rows = [{"context_id": 0, "response": "She smiled."}, {"context_id": 0, "response": "The day ended."}]
    judges = {"lexicon": LexiconJudge(attrs["gender"]), "llm": Fixed()}
    out = label_generations(rows, attrs["gender"], "story", judges, primary="llm")
    assert [r["label"] for r in out] == ["male", "male"]
    assert [r["label_lexicon"] for r in out] == ["female", None]
    assert [r["label_llm"] for r in out] == ["male", "male"]


def test_short_story_responses_are_not_stories(attrs):
    """A one-word class answer to a story prompt is invalid before any judge reads it."""
    seen = []

    class Counting:
        name = "llm"

        def judge(self, texts):
            from distalign.evaluation.judges import Judgement

            seen.extend(texts)
            return [Judgement("positive") for _ in texts]

    story = "The nurse walked the long ward at dawn and smiled at every patient she met there, happy to help."
    rows = [{"context_id": 0, "response": r} for r in ["Positive.", story, "", "Sad, I think."]]
    judges = {"lexicon": VaderJudge(attrs["sentiment"]), "llm": Counting()}
    out = label_generations(rows, attrs["sentiment"], "story", judges, primary="lexicon", story_min_words=10)
    assert [r["label"] for r in out] == [None, "positive", None, None]
    assert [r["label_reason"] for r in out] == ["not_a_story", "ok", "not_a_story", "not_a_story"]
    assert [r["label_llm"] for r in out] == [None, "positive", None, None]
    assert seen == [story]  # the LLM judge is not asked about the short ones
    # 0 judges everything (VADER then reads "Positive." as a positive story); attribute answers are never cut
    assert (
        label_generations(
            rows[:1],
            attrs["sentiment"],
            "story",
            {"lexicon": VaderJudge(attrs["sentiment"])},
            story_min_words=0,
        )[0]["label"]
        == "positive"
    )
    one_word = label_generations(
        [{"context_id": 0, "response": "Female."}],
        attrs["gender"],
        "attribute",
        *judges_for(attrs["gender"], "attribute", judge_config({})),
        story_min_words=10,
    )
    assert one_word[0]["label"] == "female"


def test_judge_config_defaults_and_checks(attrs):
    cfg = judge_config({})
    assert cfg["story"] == "lexicon" and cfg["multi_class_rule"] == "last"
    assert cfg["llm"]["api_key_env"] == "OPENAI_API_KEY"
    # Defaults come from the schema, below whatever the config sets, nested sections included.
    partial = judge_config({"judge": {"story": "llm", "llm": {"model": "m", "concurrency": 9}}})
    assert partial["story"] == "llm" and partial["multi_class_rule"] == "last"
    assert partial["llm"]["model"] == "m" and partial["llm"]["concurrency"] == 9
    assert partial["llm"]["max_reasks"] == 2 and partial["serve"]["health_timeout"] == 1800
    judges, primary = judges_for(attrs["sentiment"], "story", cfg)
    assert primary == "lexicon" and isinstance(judges["lexicon"], VaderJudge)
    with pytest.raises(JudgeError, match="judge.llm.model"):
        judges_for(attrs["gender"], "story", judge_config({"judge": {"story": "llm"}}))


def test_llm_judge_config_keys(attrs):
    from distalign.evaluation.judges import LLMJudge

    j = LLMJudge.from_config(attrs["gender"], {"model": "m", "timeout": None, "concurrency": 2})
    assert j.timeout == 60.0 and j.concurrency == 2 and j.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(JudgeError, match="unknown key"):
        LLMJudge.from_config(attrs["gender"], {"model": "m", "temprature": 0})
