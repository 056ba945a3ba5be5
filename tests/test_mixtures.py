"""distalign.core.mixtures: the lowest-MAE mixture of class distributions (an LP) and its tie rule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import distalign.core.mixtures as mixtures
from distalign.core.mixtures import MixtureError, MixtureFit, mixture_weights
from distalign.data.stories import reachable_mae


def arrangement_vertices(d: np.ndarray, t: np.ndarray):
    """Every vertex of the arrangement cut by w_h = 0 and (w D)_k = t_k inside sum(w) = 1 that has
    no negative weight (beyond rounding), in itertools.combinations order."""
    h = d.shape[0]
    planes = [(np.eye(h)[i], 0.0) for i in range(h)] + [(d[:, k], t[k]) for k in range(d.shape[1])]
    for chosen in itertools.combinations(planes, h - 1):
        a = np.vstack([np.ones(h)] + [c[0] for c in chosen])
        b = np.array([1.0] + [c[1] for c in chosen])
        try:
            w = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            continue
        if not (w < -1e-9).any():
            yield w


def vertex_enumeration_mae(distributions, target):
    """The reference: this was the library's code (distalign.data.stories.reachable_mae) before the
    LP replaced it. Every feasible vertex of the arrangement is solved and the one with the lowest
    MAE kept (the first found in combinations order)."""
    d = np.asarray(distributions, dtype=float)
    t = np.asarray(target, dtype=float)
    best, best_w = math.inf, None
    for w in arrangement_vertices(d, t):
        w = np.clip(w, 0.0, None)
        w = w / w.sum()
        mae = float(np.abs(w @ d - t).mean())
        if mae < best - 1e-12:
            best, best_w = mae, w
    return best, [float(x) for x in best_w]


def optimal_vertices(d: np.ndarray, t: np.ndarray, lowest: float) -> list[np.ndarray]:
    """All arrangement vertices (as in the reference) whose MAE is the lowest: the extreme points of
    the set of optimal weights, so a convex objective is minimised there iff no direction towards
    one of them descends."""
    return [w for w in arrangement_vertices(d, t) if np.abs(w @ d - t).mean() <= lowest + 1e-9]


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    h, k = int(rng.integers(1, 6)), int(rng.integers(2, 6))
    if rng.random() < 0.25:  # one-hot and sparse rows: many exact ties
        d = np.eye(k)[rng.integers(0, k, size=h)]
    else:
        d = rng.dirichlet(np.full(k, 0.7), size=h)
    if h > 1 and rng.random() < 0.4:  # some rows duplicated
        d[rng.integers(0, h)] = d[rng.integers(0, h)]
    kind = ("inside", "anywhere", "row")[int(rng.integers(0, 3))]
    if kind == "inside":
        t = rng.dirichlet(np.ones(h)) @ d
    elif kind == "anywhere":  # mostly outside the hull when H <= K
        t = rng.dirichlet(np.ones(k))
    else:
        t = d[rng.integers(0, h)].copy()
    return d, t, kind


def test_the_lp_agrees_with_the_old_vertex_enumeration_and_breaks_ties_towards_uniform():
    rng = np.random.default_rng(20260523)
    reached = outside = tied = 0
    for case in range(200):
        d, t, kind = random_case(rng)
        where = f"case {case} ({kind}): D={d.tolist()} t={t.tolist()}"
        old_mae, _ = vertex_enumeration_mae(d, t)
        fit = mixture_weights(d, t)
        w = np.asarray(fit.weights)
        assert fit.status == "optimal", where
        assert abs(fit.mae - old_mae) <= 1e-9, where
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12), where
        assert np.asarray(fit.mixture) == pytest.approx(w @ d, abs=1e-12), where
        assert fit.mae == pytest.approx(np.abs(w @ d - t).mean(), abs=1e-15), where
        # tie rule: (w, |w D - t|) minimises ||w - 1/H||^2 + ||s||^2 over the optimal set, so no
        # optimal vertex v lies in a descent direction (first-order condition of a convex problem)
        u, r = np.full(len(w), 1 / len(w)), np.abs(w @ d - t)
        vertices = optimal_vertices(d, t, old_mae)
        for v in vertices:
            slope = (w - u) @ (v - w) + r @ (np.abs(v @ d - t) - r)
            assert slope >= -1e-8, f"{where}: descends towards optimal vertex {v.tolist()}"
        reached += old_mae < 1e-9
        outside += old_mae > 1e-6
        tied += len({tuple(np.round(v, 9)) for v in vertices}) > 1
    # the cases exercise what they are meant to
    assert reached >= 60 and outside >= 40 and tied >= 40, (reached, outside, tied)


def test_known_answers():
    rows = [[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
    fit = mixture_weights(rows, rows[1])
    assert fit.mae == pytest.approx(0.0, abs=1e-12)
    assert fit.weights == pytest.approx((0.0, 1.0, 0.0), abs=1e-9)
    assert fit.mixture == pytest.approx(tuple(rows[1]), abs=1e-9)
    # two one-hot rows, target half way
    assert mixture_weights([[1, 0], [0, 1]], [0.5, 0.5]).weights == pytest.approx((0.5, 0.5), abs=1e-9)
    # a duplicated row shares its weight equally with its twin
    fit = mixture_weights([[1, 0], [1, 0], [0, 1]], [0.6, 0.4])
    assert fit.weights == pytest.approx((0.3, 0.3, 0.4), abs=1e-9) and fit.mae == pytest.approx(0, abs=1e-12)
    # reachable in many ways (w1 = w2, any w3): the uniform weights reach it, so they are taken
    fit = mixture_weights([[1, 0], [0, 1], [0.5, 0.5]], [0.5, 0.5])
    assert fit.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3), abs=1e-9)
    # out of reach and every mixture as far (MAE 2/3): the even one, which also spreads the miss
    fit = mixture_weights([[1, 0, 0], [0, 1, 0]], [0, 0, 1])
    assert fit.mae == pytest.approx(2 / 3) and fit.weights == pytest.approx((0.5, 0.5), abs=1e-9)
    # one row: weight 1, its own MAE
    fit = mixture_weights([[0.2, 0.3, 0.5]], [1 / 3, 1 / 3, 1 / 3])
    assert fit == MixtureFit((1.0,), pytest.approx(1 / 9), (0.2, 0.3, 0.5), "optimal")


def test_the_weights_do_not_depend_on_the_order_of_the_rows():
    rng = np.random.default_rng(7)
    for _ in range(30):
        d = rng.dirichlet(np.ones(3), size=5)
        d[4] = d[0]
        t = rng.dirichlet(np.ones(5)) @ d  # reachable: a whole family of weights ties
        perm = rng.permutation(5)
        w = np.asarray(mixture_weights(d, t).weights)
        w_perm = np.asarray(mixture_weights(d[perm], t).weights)
        assert w_perm == pytest.approx(w[perm], abs=1e-7)
        assert w[4] == pytest.approx(w[0], abs=1e-7)
        assert mixture_weights(d, t).weights == tuple(w)  # the same input, the same floats


def test_reachable_mae_is_the_fit():
    d, t = [[0.7, 0.3], [0.1, 0.9], [0.5, 0.5]], [0.05, 0.95]
    fit = mixture_weights(d, t)
    assert reachable_mae(d, t) == (fit.mae, list(fit.weights))
    assert fit.mae == pytest.approx(0.05) and fit.weights == pytest.approx((0.0, 1.0, 0.0), abs=1e-9)


def test_a_rounded_target_is_accepted():
    # even targets rounded to 3 decimals (targets.round_even: 3) sum to 0.999, so no mixture is
    # nearer than 0.001 / 3; every mixture with all shares >= 0.333 is that near: the even one is taken
    fit = mixture_weights([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0.333, 0.333, 0.333])
    assert fit.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3), abs=1e-9)
    assert fit.mae == pytest.approx(0.001 / 3, abs=1e-12)


@pytest.mark.parametrize(
    ("distributions", "target", "message"),
    [
        ([[0.5, 0.5]], [1 / 3, 1 / 3, 1 / 3], r"H x K with H >= 1 rows and K = 3 classes .* shape \(1, 2\)"),
        ([], [0.5, 0.5], r"K = 2 classes .* shape \(0,\)"),
        ([[0.5, 0.5], [1.0]], [0.5, 0.5], "numeric arrays"),
        ([[0.5, 0.5]], [[0.5, 0.5]], "target must be one distribution"),
        ([[0.5, 0.5]], [30, 70], "target is not a distribution: shares sum to 100"),
        ([[0.5, 0.5]], [1.2, -0.2], "target is not a distribution: negative share"),
        ([[0.5, 0.5], [float("nan"), 1.0]], [0.5, 0.5], r"distributions row 1 has a non-finite share"),
        (
            [[0.5, 0.5], [0.2, 0.2]],
            [0.5, 0.5],
            "distributions row 1 is not a distribution: shares sum to 0.4",
        ),
        ([[0.5, 0.5]], [float("inf"), 0.0], "target has a non-finite share"),
    ],
)
def test_bad_input_is_refused_with_what_is_wrong(distributions, target, message):
    with pytest.raises(MixtureError, match=message):
        mixture_weights(distributions, target)
    with pytest.raises(ValueError, match=message):  # the callers catch ValueError
        reachable_mae(distributions, target)


def test_a_failed_linear_program_is_an_error(monkeypatch):
    class Failed:
        status, x, message = 4, None, "Numerical difficulties encountered."

    monkeypatch.setattr(mixtures, "linprog", lambda *a, **kw: Failed())
    with pytest.raises(
        MixtureError, match=r"linear program failed .* shape \(2, 2\): Numerical difficulties"
    ):
        mixture_weights([[1, 0], [0, 1]], [0.5, 0.5])


@pytest.mark.parametrize("answer", ["zeros", "nan"])
def test_a_failed_tie_break_keeps_the_lp_vertex(monkeypatch, caplog, answer):
    # zeros make the step answer the uniform weights (MAE .4 here, not the lowest); NaN, no answer
    fill = 0.0 if answer == "zeros" else float("nan")
    monkeypatch.setattr(mixtures, "nnls", lambda e, f, maxiter: (np.full(e.shape[1], fill), 1.0))
    fit = mixture_weights([[1, 0], [0, 1]], [0.9, 0.1])
    assert fit.status == "vertex" and "tie-breaking step" in caplog.text
    assert fit.mae == pytest.approx(0, abs=1e-12) and fit.weights == pytest.approx((0.9, 0.1), abs=1e-9)
