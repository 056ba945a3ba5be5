"""How an offline story judge reads stories compared with a person, and what that costs the story MAE.

The story MAE is measured through a judge. If the judge reads a story written with one tone as
another, even a generator that writes exactly the target's mix of tones is scored off target. A
*judge check* is a file of stories a person has labelled (``attributes.<a>.judge_check``: JSON
lines with ``text`` and ``label``, a class name of the attribute, or ``null`` when the reader can
tell no class: a story with no gendered main character, text that is not a story); the check runs
the attribute's offline story judge (lexicon or VADER, with the ``judge.story_min_words`` rule) on
them and reports:

- ``confusion``: K x (K + 1) counts, row = the reader's class, column = the judge's class, the last
  column the stories the judge left invalid; ``unclassed``: the same K + 1 counts for the stories the
  reader gave no class (a judge should leave them invalid); ``agreement`` (the diagonal, plus the
  unclassed stories the judge left invalid, over all stories) and Cohen's kappa (no class is a
  category of its own);
- ``faithful_mae``: the MAE to each context's target of a generator whose stories the *reader*
  would label exactly in the target's proportions, as the judge scores it: the judged distribution
  is ``target @ R`` with R the row-normalised confusion over the valid columns (the MAE counts valid
  stories only), averaged over the dataset's contexts; with a bootstrap CI over the labelled stories;
- ``judge_reach``: the lowest MAE any generator can be scored at, choosing its mix of (reader's)
  tones freely (:func:`distalign.data.stories.reachable_mae` on the rows of R), and per context the mix
  that reaches it (``reach_mixes``). When ``faithful_mae`` is far above ``judge_reach``, a method can only reach a low measured MAE
  by writing a mix of stories the reader would not call the target's.

One reader's labels are one reading; the file says who labelled it and how (its README).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distalign.core.attributes import Attribute
from distalign.data.stories import reachable_mae
from distalign.evaluation.judges import cohens_kappa, label_generations


class JudgeCheckError(ValueError):
    pass


def read_labelled_stories(path: str | Path, attribute: Attribute) -> list[dict]:
    """The rows of a judge-check file: ``text`` (a non-empty string) and ``label`` (a class name, or
    null: the reader can tell no class).

    Raises :class:`JudgeCheckError` naming the file, line and key on the first bad row, and when the
    file has no rows.
    """
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise JudgeCheckError(f"{path}, line {lineno}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise JudgeCheckError(f"{path}, line {lineno}: expected an object with 'text' and 'label'")
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise JudgeCheckError(f"{path}, line {lineno}: key 'text' must be a non-empty string")
            if "label" not in row or (row["label"] is not None and row["label"] not in attribute.names):
                found = f"is {row['label']!r}" if "label" in row else "is missing"
                raise JudgeCheckError(
                    f"{path}, line {lineno}: key 'label' {found}; expected one "
                    f"of the classes of attribute {attribute.name!r}: {attribute.names}, or null "
                    f"(the reader can tell no class)"
                )
            rows.append(row)
    if not rows:
        raise JudgeCheckError(f"{path}: no labelled stories")
    return rows


def judge_labels(texts: Sequence[str], judge, attribute: Attribute, min_words: int = 0) -> list[str | None]:
    """The judge's class name for each text (None: invalid), labelled as the evaluation labels stories
    (:func:`distalign.evaluation.judges.label_generations`, with its not-a-story rule)."""
    rows = label_generations(
        [{"response": t} for t in texts], attribute, "story", {"judge": judge}, story_min_words=min_words
    )
    return [r["label"] for r in rows]


def _reading_counts(
    reader: Sequence[str | None], judged: Sequence[str | None], names: Sequence[str]
) -> np.ndarray:
    """(K + 1) x (K + 1) counts: row = reader's class (last: no class), column = judge's class (last: invalid)."""
    k = len(names)
    m = np.zeros((k + 1, k + 1))
    for r, j in zip(reader, judged, strict=True):
        m[k if r is None else names.index(r), k if j is None else names.index(j)] += 1
    return m


def confusion_matrix(
    reader: Sequence[str | None], judged: Sequence[str | None], names: Sequence[str]
) -> np.ndarray:
    """K x (K + 1) counts: row = reader's class, column = judge's class, last column = invalid.

    Stories the reader gave no class (None) are not counted (:func:`unclassed_reading` counts them).
    """
    return _reading_counts(reader, judged, names)[:-1]


def unclassed_reading(
    reader: Sequence[str | None], judged: Sequence[str | None], names: Sequence[str]
) -> np.ndarray:
    """K + 1 counts: the judge's class (last: invalid) of the stories the reader gave no class."""
    return _reading_counts(reader, judged, names)[-1]


def reading_rows(confusion: np.ndarray) -> np.ndarray:
    """Row-normalised valid part of a confusion matrix: how the judge reads each reader class.

    A reader class the judge never left valid (or that has no stories) gets NaNs.
    """
    valid = np.asarray(confusion, dtype=float)[:, :-1]
    totals = valid.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, valid / np.where(totals > 0, totals, 1), np.nan)


def faithful_mae(confusion: np.ndarray, targets: Sequence[Sequence[float]]) -> float:
    """Mean over contexts of MAE(target @ R, target): a generator writing the target's tones, as judged."""
    r = reading_rows(confusion)
    if np.isnan(r).any():
        return float("nan")
    return float(np.mean([np.abs(np.asarray(t) @ r - np.asarray(t)).mean() for t in targets]))


def judge_reach(confusion: np.ndarray, targets: Sequence[Sequence[float]]) -> tuple[float, list[list[float]]]:
    """Mean over contexts of the lowest judged MAE of any mix of reader classes, and each context's mix.

    Reader classes without valid judged stories are left out of the mixes (their weight is 0).
    """
    r = reading_rows(confusion)
    known = ~np.isnan(r).any(axis=1)
    if not known.any():
        return float("nan"), []
    maes, mixes = [], []
    for t in targets:
        mae, w = reachable_mae(r[known], t)
        full = np.zeros(len(r))
        full[known] = w
        maes.append(mae)
        mixes.append([float(x) for x in full])
    return float(np.mean(maes)), mixes


def judge_check(
    rows: Sequence[dict],
    attribute: Attribute,
    judge,
    targets: Sequence[dict],
    *,
    min_words: int = 0,
    seed: int = 0,
    bootstrap: int = 1000,
) -> dict:
    """The judge check of one dataset: agreement, confusion, faithful MAE (with 95% CI) and judge reach.

    ``targets`` are the dataset's target rows (``target``: a distribution over the attribute's
    classes). The CI resamples the labelled stories (percentile bootstrap, ``seed`` fixed).
    """
    names = attribute.names
    reader = [r["label"] for r in rows]
    judged = judge_labels([r["text"] for r in rows], judge, attribute, min_words)
    counts = _reading_counts(reader, judged, names)
    conf, unclassed = counts[:-1], counts[-1]
    target_vectors = [t["target"] for t in targets]
    if any(len(t) != len(names) for t in target_vectors):
        raise JudgeCheckError(
            f"targets have {len(target_vectors[0])} classes, attribute {attribute.name!r} has {len(names)}"
        )
    reach, mixes = judge_reach(conf, target_vectors)
    n = len(rows)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        idx = rng.integers(0, n, n)
        value = faithful_mae(
            confusion_matrix([reader[i] for i in idx], [judged[i] for i in idx], names), target_vectors
        )
        if not np.isnan(value):
            draws.append(value)
    ci = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if draws else [None, None]
    valid = conf[:, :-1]
    judged_valid = valid.sum(axis=0) + unclassed[:-1]
    return {
        "attribute": attribute.name,
        "judge": getattr(judge, "name", type(judge).__name__),
        "classes": names,
        "n_stories": n,
        "n_invalid": int(conf[:, -1].sum() + unclassed[-1]),
        "n_unclassed": int(unclassed.sum()),
        "agreement": (float(np.trace(valid)) + float(unclassed[-1])) / n,
        "kappa": cohens_kappa(reader, judged),
        "confusion": conf.astype(int).tolist(),
        "unclassed": unclassed.astype(int).tolist(),
        "recall": {
            c: (float(valid[i, i] / conf[i].sum()) if conf[i].sum() else None) for i, c in enumerate(names)
        },
        "reader_shares": {c: float(conf[i].sum() / n) for i, c in enumerate(names)},
        "judge_shares": {c: float(judged_valid[i] / max(judged_valid.sum(), 1)) for i, c in enumerate(names)},
        "faithful_mae": faithful_mae(conf, target_vectors),
        "faithful_mae_ci": ci,
        "judge_reach": reach,
        "reach_mixes": mixes,
        "bootstrap": bootstrap,
        "seed": seed,
    }
