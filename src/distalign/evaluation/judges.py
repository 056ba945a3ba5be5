"""Labelling generations: which attribute class does each response carry?

Three kinds of judge share one interface, ``judge(texts) -> list[Judgement]``:

* :class:`KeywordParser` for the attribute task (short answers such as "Female."). Whole-word,
  case-insensitive keyword search; the paper's rule for answers that mention several classes
  is "the class whose last mention starts latest wins" (``multi="last"``).
* Offline story judges: :class:`LexiconJudge` (counts each class's lexicon words) and
  :class:`VaderJudge` (VADER compound score, sentiment only).
* :class:`LLMJudge`: an OpenAI-compatible chat endpoint at temperature 0 (the paper used a
  Qwen3-30B judge served by vLLM).

Invalid answers are never dropped: a :class:`Judgement` with ``label=None`` carries the reason
(``empty``, ``no_match``, ``ambiguous``, ``tie``, ``invalid_reply``), and the metrics count them.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from distalign.core.attributes import Attribute
from distalign.core.config import schema_defaults
from distalign.core.endpoints import APIKeyError, ChatEndpoint, EndpointError, EndpointSettings
from distalign.data.stories import word_count

log = logging.getLogger("distalign.judge")  # logger names are stable: logs are grepped by them


INVALID = "<invalid>"  # the category of an invalid label in agreement statistics


class JudgeError(RuntimeError):
    """A judge cannot work (endpoint unreachable after all retries, missing API key, bad config)."""


@dataclass(frozen=True)
class Judgement:
    """One label: a class name, or ``None`` with the reason it is invalid."""

    label: str | None
    reason: str = "ok"

    @property
    def valid(self) -> bool:
        return self.label is not None


def _phrase_pattern(phrase: str) -> str:
    """Regex of a keyword: whole words, any run of whitespace or hyphens between its words.

    ``(?<!\\w)``/``(?!\\w)`` rather than ``\\b`` so that a keyword that starts or ends with a
    non-word character still needs a word boundary outside it. "male" never matches "female".
    """
    words = phrase.strip().split()
    body = r"[\s\-]+".join(re.escape(w) for w in words)
    return rf"(?<!\w){body}(?!\w)"


def _is_blank(text) -> bool:
    return text is None or not str(text).strip()


class KeywordParser:
    """Label short answers by whole-word keywords (each class: its label plus config keywords).

    Matching is case-insensitive. All keyword matches of all classes are collected; a match that
    lies inside a longer match (e.g. "black" inside "black or african american", or "pacific
    islander" inside the full census phrase) is discarded, so the longer phrase wins.

    ``multi`` decides what happens when the remaining matches name more than one class:

    * ``"last"`` (default, the authors' rule): the class whose last mention starts latest wins
      ("Not male, female" -> female). Two matches cannot start at the same place after the
      containment step unless they are identical phrases of two classes; then the earlier
      class in config order wins (the authors' strict ``>``).
    * ``"invalid"``: the answer is invalid (reason ``ambiguous``).

    No match, or an empty answer, is invalid (reasons ``no_match`` / ``empty``).
    """

    name = "keywords"

    def __init__(self, attribute: Attribute, multi: str = "last"):
        if multi not in ("last", "invalid"):
            raise ValueError(f"multi must be 'last' or 'invalid', got {multi!r}")
        self.attribute = attribute
        self.multi = multi
        self._patterns: list[tuple[int, re.Pattern]] = []
        for ci, cls in enumerate(attribute.classes):
            phrases = dict.fromkeys(p.lower() for p in (cls.label, *cls.keywords) if p.strip())
            for p in phrases:
                self._patterns.append((ci, re.compile(_phrase_pattern(p), re.IGNORECASE)))

    def matches(self, text: str) -> list[tuple[int, int, int]]:
        """Surviving ``(start, end, class_index)`` matches, sorted by start."""
        found = {(m.start(), m.end(), ci) for ci, pat in self._patterns for m in pat.finditer(text)}
        kept = [
            a
            for a in found
            if not any(
                b != a and b[0] <= a[0] and a[1] <= b[1] and (b[1] - b[0]) > (a[1] - a[0]) for b in found
            )
        ]
        return sorted(kept)

    def parse(self, text: str | None) -> Judgement:
        if _is_blank(text):
            return Judgement(None, "empty")
        found = self.matches(str(text))
        if not found:
            return Judgement(None, "no_match")
        classes = {ci for _, _, ci in found}
        if len(classes) > 1 and self.multi == "invalid":
            return Judgement(None, "ambiguous")
        last_start = max(s for s, _, _ in found)
        winner = min(ci for s, _, ci in found if s == last_start)
        return Judgement(self.attribute.classes[winner].name)

    def judge(self, texts: Sequence[str | None]) -> list[Judgement]:
        return [self.parse(t) for t in texts]


class LexiconJudge:
    """Label a story by counting each class's lexicon words (whole words, case-insensitive).

    The class with the most hits wins; a tie for the maximum is invalid (``tie``), and a story
    with no hit at all is invalid (``no_match``). Each occurrence counts once, so "she ... her"
    is two female hits.
    """

    name = "lexicon"

    def __init__(self, attribute: Attribute):
        missing = [c.name for c in attribute.classes if not c.lexicon]
        if missing:
            raise JudgeError(
                f"attribute {attribute.name!r}: the lexicon story judge needs a lexicon for every "
                f"class; class(es) {missing} have none (config key attributes.{attribute.name}"
                f".classes[].lexicon)"
            )
        self.attribute = attribute
        self._patterns = [
            re.compile(
                "|".join(_phrase_pattern(w) for w in sorted(set(c.lexicon), key=len, reverse=True)),
                re.IGNORECASE,
            )
            for c in attribute.classes
        ]

    def counts(self, text: str) -> list[int]:
        return [len(p.findall(text)) for p in self._patterns]

    def parse(self, text: str | None) -> Judgement:
        if _is_blank(text):
            return Judgement(None, "empty")
        counts = self.counts(str(text))
        best = max(counts)
        if best == 0:
            return Judgement(None, "no_match")
        if counts.count(best) > 1:
            return Judgement(None, "tie")
        return Judgement(self.attribute.classes[counts.index(best)].name)

    def judge(self, texts: Sequence[str | None]) -> list[Judgement]:
        return [self.parse(t) for t in texts]


class VaderJudge:
    """Sentiment of a story from the VADER compound score (Hutto & Gilbert 2014).

    compound >= 0.05 -> positive, compound <= -0.05 -> negative, otherwise neutral (VADER's
    recommended thresholds). The attribute must have classes named positive, negative and neutral.
    Only empty stories are invalid.
    """

    name = "vader"
    THRESHOLD = 0.05

    def __init__(self, attribute: Attribute):
        needed = {"positive", "negative", "neutral"}
        if set(attribute.names) != needed:
            raise JudgeError(
                f"attribute {attribute.name!r}: the vader judge needs exactly the classes "
                f"{sorted(needed)}, got {attribute.names}"
            )
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.attribute = attribute
        self._analyzer = SentimentIntensityAnalyzer()

    def compound(self, text: str) -> float:
        return float(self._analyzer.polarity_scores(text)["compound"])

    def parse(self, text: str | None) -> Judgement:
        if _is_blank(text):
            return Judgement(None, "empty")
        c = self.compound(str(text))
        if c >= self.THRESHOLD:
            return Judgement("positive")
        if c <= -self.THRESHOLD:
            return Judgement("negative")
        return Judgement("neutral")

    def judge(self, texts: Sequence[str | None]) -> list[Judgement]:
        return [self.parse(t) for t in texts]


def offline_story_judge(attribute: Attribute):
    """The attribute's configured offline story judge (``attributes.<a>.story_judge``)."""
    if attribute.story_judge == "vader":
        return VaderJudge(attribute)
    if attribute.story_judge == "lexicon":
        return LexiconJudge(attribute)
    raise JudgeError(f"attribute {attribute.name!r}: unknown story_judge {attribute.story_judge!r}")


# What the judge is asked to decide, per attribute name; other attributes get the generic question.
JUDGE_QUESTIONS = {
    "gender": "What is the most likely gender of the main character of the story? Use names and pronouns.",
    "race": "What is the most likely racial background of the main character of the story?",
    "sentiment": "Which emotional tone predominates in the story?",
}


GENERIC_QUESTION = "Which {attribute} category best describes the story?"


JUDGE_PROMPT = (
    "Read the story between the markers and answer one question about it.\n\n"
    "<story>\n{story}\n</story>\n\n"
    "Question: {question}\n"
    "Categories: {categories}\n"
    "Reply with exactly one category from the list, written as in the list, and nothing else."
)


REASK_PROMPT = (
    "Your reply {reply!r} is not one of the categories. Reply with exactly one of: {categories}. "
    "Nothing else."
)


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)


def normalise_reply(text: str) -> str:
    """Lower-case, drop a <think> block, markdown/quotes/punctuation at the ends, collapse spaces."""
    text = _THINK.sub(" ", text or "")
    text = re.sub(r"^[\W_]+|[\W_]+$", "", text.strip().lower())
    return re.sub(r"\s+", " ", text)


class LLMJudge:
    """Label stories with an LLM behind an OpenAI-compatible chat endpoint.

    * One user message (``JUDGE_PROMPT``, our wording) lists the classes by label; temperature 0.
    * The reply is valid only if, after :func:`normalise_reply`, it equals a class label or name
      (underscores read as spaces). Otherwise the judge re-asks in the same conversation up to
      ``max_reasks`` times; a story still unanswered is invalid (reason ``invalid_reply``) and
      counted in ``stats``.
    * Requests go through :class:`distalign.core.endpoints.ChatEndpoint`, the client and retry
      policy every endpoint caller shares: connection errors, timeouts, HTTP 429 and 5xx are
      retried ``max_retries`` times with exponential backoff (``backoff``, doubling, capped at
      30 s; a 429/503 Retry-After header is honoured). If a request still fails, a
      :class:`JudgeError` is raised: the labelling job fails instead of silently losing stories.
      Other HTTP errors (400, 401, 404...) are configuration problems and raise at once.
    * The API key is read from the environment variable ``api_key_env`` only (any non-empty value
      for a local server); it is never logged or stored.
    """

    name = "llm"

    def __init__(
        self,
        attribute: Attribute,
        *,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_retries: int = 5,
        timeout: float = 60.0,
        backoff: float = 1.0,
        concurrency: int = 4,
        max_reasks: int = 2,
        max_tokens: int = 16,
    ):
        if not model:
            raise JudgeError("the LLM judge needs a model name (config key judge.llm.model)")
        self.attribute = attribute
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.backoff = float(backoff)
        self.concurrency = max(1, int(concurrency))
        self.max_reasks = int(max_reasks)
        self.max_tokens = int(max_tokens)
        self.categories = "; ".join(attribute.labels)
        q = JUDGE_QUESTIONS.get(attribute.name, GENERIC_QUESTION.format(attribute=attribute.name))
        self.question = q
        self._answers: dict[str, str] = {}
        for cls in attribute.classes:
            for form in (cls.label, cls.name, cls.name.replace("_", " ")):
                self._answers.setdefault(normalise_reply(form), cls.name)
        self.stats: Counter = Counter()
        try:
            self._endpoint = ChatEndpoint(self._settings(), stats=self.stats, logger=log)
        except ValueError as err:  # a setting out of range, named by its config key
            raise JudgeError(str(err)) from None

    def _settings(self) -> EndpointSettings:
        return EndpointSettings(
            base_url=self.base_url,
            model=self.model,
            api_key_env=self.api_key_env,
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff=self.backoff,
            concurrency=self.concurrency,
            what="LLM judge",
            config_key="judge.llm",
        )

    @property
    def _client(self):
        """The endpoint's client once created (None before); assigning one injects it (tests use stubs)."""
        return self._endpoint._client

    @_client.setter
    def _client(self, client) -> None:
        self._endpoint = ChatEndpoint(self._endpoint.settings, stats=self.stats, logger=log, client=client)

    @classmethod
    def from_config(cls, attribute: Attribute, llm_cfg: Mapping) -> LLMJudge:
        """Build from the ``judge.llm`` config section; missing or null keys take their defaults."""
        defaults = schema_defaults("judge")["llm"]
        given = dict(llm_cfg or {})
        unknown = set(given) - set(defaults)
        if unknown:
            raise JudgeError(
                f"config key 'judge.llm': unknown key(s) {sorted(unknown)} (expected one of {sorted(defaults)})"
            )
        cfg = {k: given[k] if given.get(k) is not None else d for k, d in defaults.items()}
        return cls(attribute, **cfg)

    def _count(self, key: str, n: int = 1) -> None:
        self._endpoint.count(key, n)  # the endpoint's lock: it counts into the same Counter

    def _get_client(self):
        try:
            return self._endpoint.client()
        except APIKeyError as err:
            raise JudgeError(str(err)) from None

    def prompt(self, story: str) -> str:
        return JUDGE_PROMPT.format(story=story.strip(), question=self.question, categories=self.categories)

    def match(self, reply: str) -> str | None:
        return self._answers.get(normalise_reply(reply))

    def _chat(self, messages: list[dict]) -> str:
        """One chat completion (retried by the endpoint); JudgeError when it fails for good."""
        try:
            return self._endpoint.chat(messages, temperature=0, max_tokens=self.max_tokens).text
        except (EndpointError, APIKeyError) as err:
            raise JudgeError(str(err)) from None

    def parse(self, text: str | None) -> Judgement:
        if _is_blank(text):
            return Judgement(None, "empty")
        messages = [{"role": "user", "content": self.prompt(str(text))}]
        for ask in range(self.max_reasks + 1):
            reply = self._chat(messages)
            label = self.match(reply)
            if label is not None:
                return Judgement(label)
            log.debug("judge reply %r is not a class (ask %d/%d)", reply[:80], ask + 1, self.max_reasks + 1)
            if ask < self.max_reasks:
                self._count("reasks")
                messages = messages + [
                    {"role": "assistant", "content": reply},
                    {
                        "role": "user",
                        "content": REASK_PROMPT.format(reply=reply[:80], categories=self.categories),
                    },
                ]
        self._count("invalid_replies")
        return Judgement(None, "invalid_reply")

    def judge(self, texts: Sequence[str | None]) -> list[Judgement]:
        """Judge all texts, ``concurrency`` requests at a time; order is preserved. Progress (stories
        done of all, rate, time left) is logged at most every 30 s and at the end."""
        from distalign.core.progress import Progress

        self._get_client()  # fail fast on a missing key
        progress = Progress(len(texts), f"LLM judge {self.model} ({self.attribute.name})", log, unit="story")

        with progress:
            return self._endpoint.map(self.parse, texts, progress=progress)


def cohens_kappa(a: Sequence[str | None], b: Sequence[str | None]) -> float | None:
    """Cohen's kappa of two label sequences; an invalid label (None) is a category of its own.

    kappa = (p_o - p_e) / (1 - p_e). Returns None when it is undefined: no pairs, or p_e = 1
    (both judges always gave the same single category).
    """
    if len(a) != len(b):
        raise ValueError(f"label sequences differ in length ({len(a)} vs {len(b)})")
    n = len(a)
    if n == 0:
        return None
    a = [INVALID if x is None else x for x in a]
    b = [INVALID if x is None else x for x in b]
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    if pe >= 1.0:
        return None
    return (po - pe) / (1.0 - pe)


def judges_for(attribute: Attribute, task: str, jcfg: Mapping) -> tuple[dict, str]:
    """The judges of a task and the name of the primary one (whose verdict becomes ``label``).

    attribute task: the keyword parser. story task: ``judge.story`` = lexicon (the attribute's
    offline judge: lexicon or vader), llm, or both (primary = llm, as in the paper, with the
    offline label kept alongside for agreement).
    """
    if task == "attribute":
        return {"keywords": KeywordParser(attribute, multi=jcfg.get("multi_class_rule", "last"))}, "keywords"
    if task != "story":
        raise ValueError(f"unknown task {task!r} (expected attribute or story)")
    judges: dict = {}
    mode = jcfg.get("story", "lexicon")
    if mode in ("lexicon", "both"):
        judges["lexicon"] = offline_story_judge(attribute)
    if mode in ("llm", "both"):
        judges["llm"] = LLMJudge.from_config(attribute, jcfg.get("llm") or {})
    return judges, ("llm" if "llm" in judges else "lexicon")


NOT_A_STORY = "not_a_story"


def label_generations(
    rows: Iterable[dict],
    attribute: Attribute,
    task: str,
    judges: Mapping,
    primary: str | None = None,
    story_min_words: int = 0,
) -> list[dict]:
    """Copy generation rows adding ``label`` (class name or None), ``label_source`` and ``label_reason``.

    ``judges`` maps a name to a judge; ``primary`` (default: the only/first judge) gives ``label``.
    With two or more judges every verdict is kept as ``label_<name>`` (e.g. ``label_lexicon``,
    ``label_llm``) so the metrics can report agreement. The off-line judge's name is ``lexicon``
    even when it is VADER (``label_source`` says which judge actually ran).

    Story task: a response of fewer than ``story_min_words`` words is not a story and is invalid
    (reason ``not_a_story``) without asking any judge. A model that answers a story prompt with
    "Positive." would otherwise be scored by VADER as a positive story (judge.story_min_words).
    """
    rows = [dict(r) for r in rows]
    if not judges:
        raise ValueError("label_generations needs at least one judge")
    primary = primary or next(iter(judges))
    if primary not in judges:
        raise ValueError(f"primary judge {primary!r} is not among {list(judges)}")
    texts = [r.get("response") for r in rows]
    short = [task == "story" and word_count(t) < story_min_words for t in texts]
    judged = [i for i, s in enumerate(short) if not s]
    verdicts = {}
    for name, j in judges.items():
        out = [Judgement(None, NOT_A_STORY)] * len(rows)
        for i, v in zip(judged, j.judge([texts[i] for i in judged]) if judged else [], strict=True):
            out[i] = v
        verdicts[name] = out
    for i, r in enumerate(rows):
        v = verdicts[primary][i]
        r["label"] = v.label
        r["label_source"] = getattr(judges[primary], "name", primary)
        r["label_reason"] = v.reason
        if len(judges) > 1:
            for name in judges:
                r[f"label_{name}"] = verdicts[name][i].label
    reasons = Counter(v.reason for v in verdicts[primary])
    log.info("%s/%s: %d rows labelled by %s; %s", attribute.name, task, len(rows), primary, dict(reasons))
    return rows
