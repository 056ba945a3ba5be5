"""Distribution metrics of labelled generations against per-context targets (paper section 4).

Decisions (the authors' behaviour unless noted):

* Empirical distribution per context: counts over *valid* labels / number of valid labels.
  Invalid labels are left out of the denominator but counted (``n_invalid``, ``invalid_rate``).
  A context with no valid label gets p_hat = all zeros, so its MAE is the mean target
  (0.5 for two classes).
* MAE per context = (1/K) sum_k |p_hat_k - p*_k| (paper eq. 12); the file's MAE is the mean over
  contexts, its SD the population SD across contexts (``statistics.pstdev``, like the authors).
* KL(P* || P_hat) = sum_{k: p*_k > 0} p*_k ln(p*_k / (p_hat_k + 1e-10)), natural log; the 1e-10
  keeps it finite when a class was never generated (the authors' epsilon).
* JS divergence in bits (base 2, so it lies in [0, 1]), 0 log 0 = 0, no epsilon; None for a
  context without valid labels (the all-zero p_hat is not a distribution).
* Bootstrap CI (95 %, percentile 2.5 / 97.5): ``bootstrap`` resamples; in each, every context's
  labels (invalid included) are resampled with replacement at the same size and the mean MAE is
  recomputed. ``two_level=True`` first resamples contexts with replacement, then labels within
  each drawn context (every draw of a context gets its own resample). A seeded
  ``numpy.random.Generator`` makes it reproducible. MAE is an absolute deviation, so a resample
  (which adds its own sampling noise) is on average *further* from the target than the data:
  near the noise floor the percentile interval can lie entirely above the point estimate. We
  report it anyway (the paper's method) together with the bootstrap ``bias`` and the "basic"
  interval (2*estimate - q_hi, 2*estimate - q_lo, floored at 0), which corrects for that shift.
* Noise floor: the expected MAE of an ideal sampler that draws each context's N_valid labels
  exactly from its target, averaged over contexts with N_valid > 0. Exact (enumeration of all
  multinomial outcomes, a binomial sum for K = 2) when there are at most ``EXACT_LIMIT``
  outcomes, otherwise seeded Monte-Carlo with ``noise_floor_draws`` (default 20,000) draws.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from distalign.core.attributes import Attribute
from distalign.evaluation.judges import cohens_kappa

KL_EPS = 1e-10


EXACT_LIMIT = 200_000


TARGET_TOL = 1e-6


def empirical(labels: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts over classes of integer labels (-1 = invalid) and p_hat (zeros if no valid label)."""
    lab = np.asarray(labels, dtype=int)
    counts = np.bincount(lab[lab >= 0], minlength=k)[:k].astype(float)
    total = counts.sum()
    return counts, (counts / total if total > 0 else np.zeros(k))


def label_indices(rows: Sequence[Mapping], attribute: Attribute) -> list[int]:
    """Class index of each labelled row, -1 where the judge gave no label (the invalid answers that
    :func:`empirical` leaves out); a label that is not a class raises ``KeyError`` naming the classes."""
    return [attribute.index(r["label"]) if r.get("label") is not None else -1 for r in rows]


def mae(p_hat, target) -> float:
    return float(np.mean(np.abs(np.asarray(p_hat, float) - np.asarray(target, float))))


def kl_divergence(target, p_hat, eps: float = KL_EPS) -> float:
    """KL(P* || P_hat) in nats with ``eps`` added to p_hat (terms with p* = 0 are 0)."""
    t = np.asarray(target, float)
    p = np.asarray(p_hat, float)
    m = t > 0
    return float(np.sum(t[m] * np.log(t[m] / (p[m] + eps))))


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in bits (base 2): 0.5 KL(p||m) + 0.5 KL(q||m), m = (p + q) / 2."""
    p = np.asarray(p, float)
    q = np.asarray(q, float)
    m = 0.5 * (p + q)

    def _kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * _kl(p) + 0.5 * _kl(q))


def _compositions(n: int, k: int) -> np.ndarray:
    """All vectors of k non-negative integers summing to n, shape (C(n+k-1, k-1), k)."""
    parts = np.zeros((1, 0), dtype=np.int64)
    remaining = np.array([n], dtype=np.int64)
    for _ in range(k - 1):
        reps = remaining + 1
        idx = np.repeat(np.arange(len(parts)), reps)
        x = np.concatenate([np.arange(r) for r in reps])
        parts = np.column_stack([parts[idx], x])
        remaining = remaining[idx] - x
    return np.column_stack([parts, remaining])


def expected_mae_ideal(
    target: Sequence[float], n: int, *, draws: int = 20_000, rng: np.random.Generator | None = None
) -> tuple[float, str]:
    """E[(1/K) sum |X/n - p*|] for X ~ Multinomial(n, p*). Returns (value, "exact" | "monte-carlo")."""
    t = np.asarray(target, float)
    t = t / t.sum()
    k = len(t)
    if n <= 0:
        raise ValueError("the noise floor needs n >= 1 samples")
    if math.comb(n + k - 1, k - 1) <= EXACT_LIMIT:
        x = _compositions(n, k)
        with np.errstate(divide="ignore"):
            logt = np.log(t)
        logp = _log_multinomial(x, n, logt)
        w = np.exp(logp)
        dev = np.mean(np.abs(x / n - t), axis=1)
        return float(np.sum(w * dev)), "exact"
    rng = rng if rng is not None else np.random.default_rng(0)
    x = rng.multinomial(n, t, size=draws)
    return float(np.mean(np.mean(np.abs(x / n - t), axis=1))), "monte-carlo"


def _log_multinomial(x: np.ndarray, n: int, logt: np.ndarray) -> np.ndarray:
    lg = np.vectorize(math.lgamma, otypes=[float])
    table = lg(np.arange(n + 1) + 1.0)  # log(m!) for m = 0..n
    # 0 * log 0 = 0; a count > 0 of a class with p = 0 gives -inf (weight 0)
    terms = np.multiply(x, np.broadcast_to(logt, x.shape), out=np.zeros(x.shape), where=x > 0)
    return table[n] - table[x].sum(axis=1) + terms.sum(axis=1)


def noise_floor(
    targets: Sequence[Sequence[float]], ns: Sequence[int] | int, *, seed: int = 0, draws: int = 20_000
) -> dict:
    """Mean over contexts of the ideal sampler's expected MAE (contexts with n = 0 are skipped)."""
    if isinstance(ns, int):
        ns = [ns] * len(targets)
    rng = np.random.default_rng(seed)
    values, methods = [], set()
    for t, n in zip(targets, ns, strict=True):
        if n <= 0:
            values.append(None)
            continue
        v, how = expected_mae_ideal(t, int(n), draws=draws, rng=rng)
        values.append(v)
        methods.add(how)
    used = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(used)) if used else None,
        "per_context": values,
        "method": "+".join(sorted(methods)) or None,
        "draws": draws if "monte-carlo" in methods else None,
    }


def _resampled_mae(labels: np.ndarray, target: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """MAE of ``size`` independent with-replacement resamples of one context's labels."""
    k = len(target)
    n = len(labels)
    if n == 0:
        return np.full(size, float(np.mean(target)))
    lab = labels[rng.integers(0, n, size=(size, n))]
    counts = np.stack([(lab == j).sum(axis=1) for j in range(k)], axis=1).astype(float)
    tot = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, tot, out=np.zeros_like(counts), where=tot > 0)
    return np.mean(np.abs(p - target), axis=1)


def bootstrap_mae(
    label_lists: Sequence[Sequence[int]],
    targets: Sequence[Sequence[float]],
    *,
    seed: int,
    resamples: int = 1000,
    two_level: bool = False,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap CI of the mean-over-contexts MAE (see module docstring)."""
    rng = np.random.default_rng(seed)
    labs = [np.asarray(x, dtype=int) for x in label_lists]
    tgts = [np.asarray(t, float) for t in targets]
    c = len(labs)
    if c == 0:
        return {"resamples": resamples, "seed": seed, "two_level": two_level, "ci_low": None, "ci_high": None}
    if not two_level:
        per = np.stack([_resampled_mae(labs[i], tgts[i], resamples, rng) for i in range(c)], axis=1)
        stats = per.mean(axis=1)
    else:
        chosen = rng.integers(0, c, size=(resamples, c))
        vals = np.empty((resamples, c))
        for i in range(c):
            pos = np.nonzero(chosen == i)
            if len(pos[0]):
                vals[pos] = _resampled_mae(labs[i], tgts[i], len(pos[0]), rng)
        stats = vals.mean(axis=1)
    alpha = (1 - level) / 2 * 100
    lo, hi = np.percentile(stats, [alpha, 100 - alpha])
    point = float(np.mean([mae(empirical(labs[i], len(tgts[i]))[1], tgts[i]) for i in range(c)]))
    return {
        "resamples": resamples,
        "seed": seed,
        "two_level": two_level,
        "level": level,
        "method": "percentile",
        "estimate": point,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "se": float(np.std(stats, ddof=1)) if resamples > 1 else None,
        "bias": float(np.mean(stats)) - point,
        "basic_ci_low": max(0.0, 2 * point - float(hi)),
        "basic_ci_high": 2 * point - float(lo),
    }


def token_class_map(attribute: Attribute, token_set: str | None = None) -> dict[str, int]:
    """Steering token string (stripped) -> class index; all token sets unless one is named.

    A token that two classes share across token sets is left out (ambiguous): name the set.
    """
    sets = [token_set] if token_set else sorted({ts for c in attribute.classes for ts in c.tokens})
    out: dict[str, int] = {}
    clash: set[str] = set()
    for ts in sets:
        for i, c in enumerate(attribute.classes):
            tok = c.tokens.get(ts)
            if tok is None:
                continue
            tok = tok.strip()
            if tok in out and out[tok] != i:
                clash.add(tok)
            out.setdefault(tok, i)
    return {t: i for t, i in out.items() if t not in clash}


def row_token_class(row: Mapping, tmap: Mapping[str, int]) -> int | None:
    """The class index of a row's ``steering_token`` (surrounding whitespace ignored); None if it has none
    or it is not in ``tmap`` (:func:`token_class_map`). Callers decide whether that is an error."""
    tok = row.get("steering_token")
    return tmap.get(tok.strip()) if isinstance(tok, str) else None


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def steering_analysis(
    rows_by_ctx: Mapping[int, list[dict]],
    targets: Mapping[int, dict],
    attribute: Attribute,
    token_set: str | None = None,
) -> dict | None:
    """Mean steering probability vs sampled-token frequency vs generated-class frequency per context.

    consistency = share of rows with a valid label and a recognised steering token whose label
    equals the token's class. ``mae_valid_token_vs_token`` (the "invalid skew") is the MAE between
    the token frequencies of all rows and of the rows with a valid label: near 0 when answers are
    invalid whatever their token, large when one token's answers are dropped more often (in stories,
    a male token that writes a story naming nobody), which biases the valid answers even when every
    valid one follows its token. ``invalid_by_token`` gives the invalid share per token class.
    """
    names = attribute.names
    k = len(names)
    tmap = token_class_map(attribute, token_set)
    per, agree, checked, unknown_tokens = [], 0, 0, 0
    tok_rows, tok_invalid = np.zeros(k), np.zeros(k)
    any_steering = False
    for cid in sorted(rows_by_ctx):
        rows = [r for r in rows_by_ctx[cid] if r.get("steering_probs") is not None]
        if not rows:
            continue
        any_steering = True
        probs = np.asarray([r["steering_probs"] for r in rows], float)
        if probs.shape[1] != k:
            raise ValueError(f"context {cid}: steering_probs has {probs.shape[1]} entries, attribute has {k}")
        tok_idx = []
        for r in rows:
            i = row_token_class(r, tmap)
            if i is None:
                unknown_tokens += 1
            tok_idx.append(-1 if i is None else i)
        lab_idx = label_indices(rows, attribute)
        _, tok_freq = empirical(tok_idx, k)
        _, gen_freq = empirical(lab_idx, k)
        tok, lab = np.asarray(tok_idx), np.asarray(lab_idx)
        known, valid = tok >= 0, lab >= 0
        valid_tok_counts, valid_tok_freq = empirical(tok[valid].tolist(), k)
        np.add.at(tok_rows, tok[known], 1)
        np.add.at(tok_invalid, tok[known], ~valid[known])
        tgt = targets[cid]["target"]
        both = known & valid
        cons_n, cons_k = int(both.sum()), int((both & (tok == lab)).sum())
        checked += cons_n
        agree += cons_k
        per.append(
            {
                "context_id": cid,
                "context": targets[cid]["context"],
                "target": list(map(float, tgt)),
                "mean_steering_prob": probs.mean(axis=0).tolist(),
                "token_freq": tok_freq.tolist(),
                "generated_freq": gen_freq.tolist(),
                "n": len(rows),
                "consistency": cons_k / cons_n if cons_n else None,
                "valid_token_freq": valid_tok_freq.tolist() if valid_tok_counts.sum() else None,
            }
        )
    if not any_steering:
        return None

    def _avg_mae(key):
        return float(np.mean([mae(p[key], p["target"]) for p in per]))

    return {
        "contexts": per,
        "consistency": agree / checked if checked else None,
        "n_checked": checked,
        "unknown_tokens": unknown_tokens,
        "mae_prob_vs_target": _avg_mae("mean_steering_prob"),
        "mae_token_vs_target": _avg_mae("token_freq"),
        "mae_generated_vs_target": _avg_mae("generated_freq"),
        "mae_generated_vs_token": float(np.mean([mae(p["generated_freq"], p["token_freq"]) for p in per])),
        "mae_valid_token_vs_token": _mean_or_none(
            [mae(p["valid_token_freq"], p["token_freq"]) for p in per if p["valid_token_freq"] is not None]
        ),
        "invalid_by_token": {
            name: float(tok_invalid[i] / tok_rows[i]) if tok_rows[i] else None for i, name in enumerate(names)
        },
    }


def _agreement(rows: list[dict]) -> dict | None:
    """Cohen's kappa between label_lexicon and label_llm when both judges ran."""
    if not rows or not all("label_lexicon" in r and "label_llm" in r for r in rows):
        return None
    a = [r["label_lexicon"] for r in rows]
    b = [r["label_llm"] for r in rows]
    return {
        "judges": ["lexicon", "llm"],
        "kappa": cohens_kappa(a, b),
        "n": len(rows),
        "raw_agreement": sum(x == y for x, y in zip(a, b, strict=True)) / len(rows),
        "invalid_category": "None counts as its own category",
    }


def compute_metrics(
    labelled_rows: Sequence[dict],
    targets: Sequence[dict],
    attribute: Attribute,
    seed: int,
    bootstrap: int = 1000,
    two_level: bool = False,
    noise_floor_draws: int = 20_000,
    token_set: str | None = None,
) -> dict:
    """All metrics of one labels file as a JSON-serialisable dict.

    ``targets``: rows ``{context_id, context, target}`` (``distalign.data.targets.read_targets_csv``),
    the source of truth for P*; every target context is reported, even one without rows.
    """
    names = attribute.names
    k = len(names)
    tmap = {int(t["context_id"]): t for t in targets}
    by_ctx: dict[int, list[dict]] = {cid: [] for cid in tmap}
    mismatched = 0
    for r in labelled_rows:
        cid = int(r["context_id"])
        if cid not in tmap:
            raise ValueError(f"row with context_id {cid} has no target (known: {sorted(tmap)})")
        lab = r.get("label")
        if lab is not None and lab not in names:
            raise ValueError(f"context {cid}: label {lab!r} is not a class of {attribute.name!r} ({names})")
        if (
            r.get("target") is not None
            and np.max(np.abs(np.asarray(r["target"], float) - np.asarray(tmap[cid]["target"], float)))
            > TARGET_TOL
        ):
            mismatched += 1
        by_ctx[cid].append(r)

    contexts, label_lists, tgt_list = [], [], []
    for cid in sorted(by_ctx):
        rows = by_ctx[cid]
        tgt = np.asarray(tmap[cid]["target"], float)
        if len(tgt) != k:
            raise ValueError(
                f"context {cid}: target has {len(tgt)} entries, attribute {attribute.name!r} has {k}"
            )
        labs = label_indices(rows, attribute)
        counts, p_hat = empirical(labs, k)
        n_valid = int(counts.sum())
        contexts.append(
            {
                "context_id": cid,
                "context": tmap[cid]["context"],
                "target": tgt.tolist(),
                "p_hat": p_hat.tolist(),
                "counts": dict(zip(names, map(int, counts), strict=True)),
                "n_total": len(rows),
                "n_valid": n_valid,
                "n_invalid": len(rows) - n_valid,
                "mae": mae(p_hat, tgt),
                "kl": kl_divergence(tgt, p_hat),
                "js": js_divergence(tgt, p_hat) if n_valid else None,
            }
        )
        label_lists.append(labs)
        tgt_list.append(tgt)

    maes = [c["mae"] for c in contexts]
    kls = [c["kl"] for c in contexts]
    jss = [c["js"] for c in contexts if c["js"] is not None]
    n_total = sum(c["n_total"] for c in contexts)
    n_invalid = sum(c["n_invalid"] for c in contexts)
    floor = noise_floor(
        [c["target"] for c in contexts], [c["n_valid"] for c in contexts], seed=seed, draws=noise_floor_draws
    )
    for c, v in zip(contexts, floor["per_context"], strict=True):
        c["noise_floor"] = v
    boot = (
        bootstrap_mae(label_lists, tgt_list, seed=seed, resamples=bootstrap, two_level=two_level)
        if bootstrap > 0
        else None
    )
    reasons = Counter(
        r.get("label_reason", "ok" if r.get("label") is not None else "invalid") for r in labelled_rows
    )
    summary = {
        "n_contexts": len(contexts),
        "n_total": n_total,
        "n_valid": n_total - n_invalid,
        "n_invalid": n_invalid,
        "invalid_rate": n_invalid / n_total if n_total else None,
        "contexts_without_valid": sum(1 for c in contexts if c["n_valid"] == 0),
        "mae": float(np.mean(maes)) if maes else None,
        "mae_sd": statistics.pstdev(maes) if maes else None,
        "mae_ci_low": boot["ci_low"] if boot else None,
        "mae_ci_high": boot["ci_high"] if boot else None,
        "kl_mean": float(np.mean(kls)) if kls else None,
        "kl_sum": float(np.sum(kls)) if kls else None,
        "kl_sd": statistics.pstdev(kls) if kls else None,
        "js_mean": float(np.mean(jss)) if jss else None,
        "js_contexts": len(jss),
        "noise_floor": floor["mean"],
        "target_mismatch_rows": mismatched,
    }
    return {
        "attribute": attribute.name,
        "classes": names,
        "labels": [c.label for c in attribute.classes],
        "summary": summary,
        "bootstrap": boot,
        "noise_floor": {k_: v for k_, v in floor.items() if k_ != "per_context"},
        "label_reasons": dict(reasons),
        "label_sources": dict(Counter(r.get("label_source") for r in labelled_rows)),
        "agreement": _agreement(list(labelled_rows)),
        "steering": steering_analysis(by_ctx, tmap, attribute, token_set),
        "contexts": contexts,
        "definitions": {
            "mae": "(1/K) sum_k |p_hat_k - p*_k| per context; mean and population SD over contexts",
            "kl": f"sum_k p*_k ln(p*_k / (p_hat_k + {KL_EPS})) in nats, terms with p* = 0 omitted",
            "js": "Jensen-Shannon divergence, base 2 (bits), null for contexts without valid labels",
            "p_hat": "counts over valid labels / n_valid; all zeros when n_valid = 0",
            "bootstrap": "percentile 95% CI; labels (invalid included) resampled with replacement per context",
            "noise_floor": "expected MAE of an ideal sampler drawing n_valid labels from the target",
        },
    }
