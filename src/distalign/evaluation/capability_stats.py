"""Paired statistics for "did fine-tuning change general capability?" (paper Table 5).

The base model and a fine-tuned one are scored on the *same* items (multiple-choice questions,
held-out paragraphs), so every comparison here is paired: per-item differences, not two separate
summaries. With n items, a paired 95% interval of an accuracy change has a half-width of about
``1.96 * sqrt(d / n)`` (d: the share of items whose correctness differs between the two models),
which is what lets ~1,200 items resolve a 2-point change (see
resources/capabilities/make_general_mc.py).

Also here: :func:`leak_kind` / :func:`leak_share`, which read the answers of an adapter to ordinary
requests (resources/capabilities/general_instructions.jsonl) for the ways its training shows
through where it should not.

Imports numpy and scipy only (no model, no torch): the numbers come from per-item results that a
capabilities job has already written.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.stats import bootstrap, norm

Z95 = float(norm.ppf(0.975))  # 1.959963...
LEAK_KINDS = ("steering_token", "class_answer", "short")


def _as_correctness(values: Sequence, name: str) -> np.ndarray:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool | np.bool_) or (
            isinstance(v, int | float | np.integer | np.floating) and v in (0, 1)
        ):
            out.append(int(v))
        else:
            raise ValueError(f"{name}[{i}] = {v!r}: expected 0 or 1 (item answered wrongly or rightly)")
    return np.asarray(out, dtype=float)


def _check_paired(base: Sequence, other: Sequence, what: str) -> None:
    """Both lists score the same, non-empty list of items (``what`` names the statistic in the error)."""
    if len(base) != len(other):
        raise ValueError(
            f"{what}: base has {len(base)} items and other has {len(other)}; both must score "
            f"the same items in the same order"
        )
    if not len(base):
        raise ValueError(f"{what}: no items (both lists are empty)")


def paired_mean_change(base: Sequence, other: Sequence, scale: float = 100.0) -> dict:
    """Change of a per-item score's mean (``other`` minus ``base``, times ``scale``) on the same items,
    with a paired 95% interval.

    ``base`` and ``other``: each item's score (a 0/1 correctness, or any number such as TruthfulQA's
    per-question mc2 probability), in the same item order. The interval is the normal approximation
    on the per-item differences d_i = other_i - base_i: ``mean(d) +- z * sqrt(var(d) / n)`` with the
    plug-in variance ``mean(d^2) - mean(d)^2``. For 0/1 scores this is the Wald interval for a
    difference of paired proportions (see :func:`paired_accuracy_change`).

    Returns ``delta``, ``low``, ``high`` (scaled), ``n`` (items), ``discordant`` (items whose score
    differs), ``base_mean`` and ``other_mean`` (scaled). Identical inputs give delta 0 and a
    zero-width interval.
    """
    _check_paired(base, other, "paired change")
    b = _as_array(base, "base")
    o = _as_array(other, "other")
    d = o - b
    n = len(d)
    mean = float(d.mean())
    var = max(float((d**2).mean()) - mean**2, 0.0)
    half = Z95 * math.sqrt(var / n)
    return {
        "delta": scale * mean,
        "low": scale * (mean - half),
        "high": scale * (mean + half),
        "n": n,
        "discordant": int(np.count_nonzero(d)),
        "base_mean": scale * float(b.mean()),
        "other_mean": scale * float(o.mean()),
    }


def paired_accuracy_change(base: Sequence, other: Sequence) -> dict:
    """Accuracy change (points, ``other`` minus ``base``) on the same items, with a paired 95% interval.

    ``base`` and ``other`` hold each item's correctness (0/1 or bool), in the same item order. The
    interval is the normal approximation on the per-item differences d_i = other_i - base_i (each
    -1, 0 or +1): ``mean(d) +- z * sqrt(var(d) / n)`` with the plug-in variance ``mean(d^2) -
    mean(d)^2``, which is the Wald interval for a difference of paired proportions (the one that
    goes with McNemar's test). It depends only on the discordant items: ``var(d) = (b + c) / n -
    ((c - b) / n)^2`` for b items only ``base`` gets right and c only ``other`` gets right.

    Why not two independent intervals: the two models answer the same questions, and most items
    are right (or wrong) for both, so their accuracies are strongly correlated. Two separate
    intervals (each about +-2.8 points at p = 0.5 and n = 1,200) ignore that covariance and
    overstate the uncertainty of the *change* several-fold (~2.2x at 10% discordant items), and
    whether two intervals overlap is not a test of their difference anyway.

    Returns ``delta``, ``low``, ``high`` (points, i.e. percent), ``n`` (items) and ``discordant``
    (items on which the two disagree), ``base_accuracy`` and ``other_accuracy``. Identical inputs give
    delta 0 and a zero-width interval.
    """
    _check_paired(base, other, "paired accuracy")
    out = paired_mean_change(_as_correctness(base, "base"), _as_correctness(other, "other"))
    out["base_accuracy"] = out.pop("base_mean")
    out["other_accuracy"] = out.pop("other_mean")
    return out


def _as_array(values: Sequence, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a list of numbers, got {values!r:.80}") from None
    if arr.ndim != 1:
        raise ValueError(
            f"{name}: expected a flat list of numbers (one per paragraph), got shape {arr.shape}"
        )
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] = {arr[bad[0]]}: expected a finite number")
    return arr


def paired_perplexity_change(
    base_nll: Sequence[float],
    other_nll: Sequence[float],
    tokens: Sequence[int],
    seed: int,
    n_boot: int = 2000,
) -> dict:
    """Relative perplexity change (percent, ``other`` vs ``base``) with a paired bootstrap 95% interval.

    ``base_nll`` / ``other_nll``: each paragraph's summed negative log-likelihood in nats (positive
    numbers; pass ``-loglikelihood``), the same paragraphs in the same order; ``tokens``: each
    paragraph's scored token count (the same tokenizer for both models, so perplexity per token is
    comparable). Perplexity is ``exp(sum nll / sum tokens)`` over the paragraphs, and the change is
    ``100 * (ppl_other / ppl_base - 1)`` (positive: the fine-tuned model predicts the text worse).

    The interval resamples *paragraphs* with replacement, the same draw for both models (paired), and
    takes the 2.5th and 97.5th percentiles of the recomputed change (``scipy.stats.bootstrap``,
    ``paired=True``, percentile method): paragraphs differ in length and
    difficulty far more than the two models differ on any one of them, and resampling them together
    keeps that shared variation out of the interval. Draws come from ``numpy.random.default_rng(seed)``,
    so the same inputs and seed give the same numbers.
    """
    b = _as_array(base_nll, "base_nll")
    o = _as_array(other_nll, "other_nll")
    t = _as_array(tokens, "tokens")
    if not (len(b) == len(o) == len(t)):
        raise ValueError(
            f"paired perplexity: base_nll has {len(b)} paragraphs, other_nll {len(o)}, tokens {len(t)}; "
            f"all three must describe the same paragraphs in the same order"
        )
    if not len(b):
        raise ValueError("paired perplexity: no paragraphs (the lists are empty)")
    for name, arr in (("base_nll", b), ("other_nll", o)):
        neg = np.flatnonzero(arr < 0)
        if neg.size:
            raise ValueError(
                f"{name}[{neg[0]}] = {arr[neg[0]]}: a negative log-likelihood must be >= 0 (nats); "
                f"this looks like a log-likelihood, pass its negative"
            )
    if np.any(t < 1) or np.any(t != np.round(t)):
        i = int(np.flatnonzero((t < 1) | (t != np.round(t)))[0])
        raise ValueError(f"tokens[{i}] = {t[i]}: expected a positive whole number of scored tokens")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot = {n_boot!r}: expected a positive integer (bootstrap resamples)")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed = {seed!r}: expected an integer")

    def change(diff_sum, tok_sum):
        return 100 * np.expm1(diff_sum / tok_sum)

    diff = o - b
    n = len(diff)
    point = float(change(diff.sum(), t.sum()))
    if n == 1:  # one paragraph: every resample is that paragraph (scipy needs two observations)
        low = high = point
    else:
        res = bootstrap(
            (diff, t),
            lambda d, k, axis: change(d.sum(axis=axis), k.sum(axis=axis)),
            paired=True,
            vectorized=True,
            n_resamples=n_boot,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = res.confidence_interval
    return {
        "change": point,
        "low": float(low),
        "high": float(high),
        "base_perplexity": math.exp(b.sum() / t.sum()),
        "other_perplexity": math.exp(o.sum() / t.sum()),
        "n": n,
        "tokens": int(t.sum()),
        "n_boot": n_boot,
        "seed": int(seed),
    }


# ---- leaks of the attribute task into ordinary answers ------------------------------------------

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}\u2018\u2019\u201c\u201d\u2013\u2014\u2026]+")


def _words(text: str) -> str:
    """Lowercased, punctuation replaced by spaces, whitespace collapsed ("Female." -> "female")."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _starts_with_token(text: str, token: str) -> bool:
    """Whether ``text`` begins with the steering token as a token of its own.

    The token must be followed by the end of the text or by whitespace; a token that ends in a digit
    (the ``digits`` token sets: "0", "1") also counts when a letter follows at once, which is how an
    answer decodes when the adapter writes its steering token first ("1The autumn..."); a token that
    ends in a symbol counts whatever follows. Not a leak: a token that is the start of a longer
    number or word ("10 tips", "hello" for "he"), or a digit followed by list punctuation ("1. Turn
    off the tap", "2) ..."), which an ordinary numbered answer begins with. Case-sensitive: a
    steering token is one exact vocabulary entry ("He said..." is no leak of the token "he").
    A limit: "1 cup of milk" (a digit token, a space, an ordinary answer) counts as a leak.
    """
    if not token or not text.startswith(token):
        return False
    rest = text[len(token) :]
    if not rest or rest[0].isspace():
        return True
    last = token[-1]
    if last.isalpha():  # a word token glued to more letters or punctuation: a longer word ("hello")
        return False
    if last.isdigit():  # "1The ..." is a leak; "10", "1.5", "1." and "1)" are ordinary numbers and lists
        return rest[0].isalpha()
    return True  # a symbol token ("<0>") is never the start of an ordinary word


def leak_kind(
    response: str, *, steering_tokens: Iterable[str], class_words: Iterable[str], min_words: int = 3
) -> str | None:
    """What a reader notices first when an adapter's training leaks into an ordinary request.

    Checked in this order (the first that applies is returned):

    - ``"steering_token"``: the stripped response starts with one of the steering tokens (see
      :func:`_starts_with_token` for what counts as starting with one);
    - ``"class_answer"``: the whole response, lowercased with punctuation removed, is one of the
      class words ("Female.", "male", "Black or African American!"), i.e. the adapter answered the
      attribute question it was trained on instead of the request. A sentence that merely begins
      with a class word ("Female nurses are...") is not one;
    - ``"short"``: fewer than ``min_words`` words (split on whitespace), e.g. an empty answer or a
      stray "Okay.";
    - ``None``: none of these.
    """
    if not isinstance(response, str):
        raise ValueError(f"response: expected a string, got {type(response).__name__} {response!r:.60}")
    if isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 0:
        raise ValueError(f"min_words = {min_words!r}: expected a non-negative integer")
    tokens = [t for t in steering_tokens if t]
    stripped = response.strip()
    if any(_starts_with_token(stripped, t) for t in tokens):
        return "steering_token"
    said = _words(stripped)
    if said and said in {_words(w) for w in class_words}:
        return "class_answer"
    if len(stripped.split()) < min_words:
        return "short"
    return None


def leak_share(
    responses: Sequence[str],
    *,
    steering_tokens: Iterable[str],
    class_words: Iterable[str],
    min_words: int = 3,
) -> dict:
    """Share of ``responses`` with any leak (in [0, 1]), the number of responses, and counts per kind."""
    if not len(responses):
        raise ValueError("leak share: no responses (the list is empty)")
    tokens, words = list(steering_tokens), list(class_words)
    counts = dict.fromkeys(LEAK_KINDS, 0)
    for r in responses:
        kind = leak_kind(r, steering_tokens=tokens, class_words=words, min_words=min_words)
        if kind is not None:
            counts[kind] += 1
    return {"share": sum(counts.values()) / len(responses), "n": len(responses), "counts": counts}
