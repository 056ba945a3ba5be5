"""The mixture of given class distributions closest (in MAE) to a target, by linear programming.

Given H source distributions over K classes (the rows of D: e.g. what the judge read in stories
written under each hint) and a target t, find the mixing weights w (w >= 0, sum w = 1) whose
mixture w D has the lowest MAE, mean_k |(w D)_k - t_k|. With slacks s_k >= |(w D)_k - t_k| this
is the linear program

    minimise (1/K) sum_k s_k   subject to   -s <= w D - t <= s,  w >= 0,  sum w = 1,

solved by HiGHS through ``scipy.optimize.linprog``. Two callers need it: the reach of the hinted
prompts of D_story and the judge check (``distalign.data.stories.reachable_mae``), and the
calibrated hinted method, which draws hints with these weights.

Ties. Often many weight vectors reach the lowest MAE (every target inside the hull of the rows is
reached exactly by a whole family of mixtures when H > K; duplicated rows can always trade weight),
and the LP returns whichever vertex its simplex ends on. The weights returned here are instead
the unique minimiser of

    ||w - 1/H||^2 + ||w D - t||^2   over the weights whose MAE is at most the lowest + 1e-13,

found by a second, quadratic step. Why closest to uniform: a hinted method draws each hint with
its weight, and each row of D is itself measured from a sample; the sampling variance of the
mixture grows with sum_h w_h^2, which on the simplex is ||w - 1/H||^2 + 1/H. Spreading the draws
over as many hints as the optimum allows makes the result least sensitive to one badly measured
row (and keeps the generations varied), while "fewest hints" would lean on single rows. Equal
rows get equal weights (the objective is symmetric and strictly convex, so the minimiser is
unique). The second term only matters when the target is out of reach: the lowest MAE can then
be reached with the error on different classes, and it prefers the mixture that spreads the
miss over the classes rather than piling it on one. The 1e-13 of slack keeps the quadratic step
well posed when the optimum is a single point or the bound is a rounding error too tight (without
it, about 1 case in 200 came back wrong or infeasible); the MAE returned is that of the returned
weights, checked to be within 1e-11 of the LP's (in testing, H up to 20, it was within 4e-13 of
the LP's and within 3e-12 of an exact vertex enumeration's).

The quadratic step is a least-distance problem, min ||x|| subject to G x >= g, which
``scipy.optimize.nnls`` solves exactly (problem LDP of Lawson and Hanson, *Solving Least Squares
Problems*: the residual r of the non-negative least squares problem min ||[G^T; g^T] u - e_last||
gives x = -r[:-1] / r[-1]). The weights are parametrised as w = 1/H + N z with N an orthonormal
basis of {sum = 0}, so that ||w - 1/H|| = ||z|| and no equality constraint is left. Its answer is
checked (MAE within 1e-11 of the LP's, objective no worse than at the LP's vertex), as scipy's
nnls has had bugs in degenerate cases; should the check fail (never seen in testing), the LP's
vertex is kept, ``status`` says ``"vertex"`` and a warning is logged. Both steps together take a
few milliseconds for H = 10 hints and K = 6 classes (bench/mixtures.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import null_space
from scipy.optimize import linprog, nnls

log = logging.getLogger("distalign.mixtures")

# Rows and the target must sum to 1 within this: wide enough for the rounded targets the project
# accepts (even targets to 3 decimals sum to 0.999; a targets CSV row may be off by 0.005 a class),
# narrow enough to catch counts or percentages passed by mistake.
SUM_TOLERANCE = 0.05
# How far above the lowest MAE the tie-breaking step may go, and how far its answer may be
# (see the module docstring); both far below the 1e-9 to which MAEs are compared.
TIE_SLACK = 1e-13
TIE_CHECK = 1e-11


class MixtureError(ValueError):
    """The distributions or the target are not what a mixture fit needs, or the solver failed."""


@dataclass(frozen=True)
class MixtureFit:
    """The closest mixture: ``weights`` (one per row, >= 0, summing to 1), its ``mae`` to the target,
    the ``mixture`` it makes (weights @ distributions, one share per class) and ``status``:
    ``"optimal"`` (lowest MAE, ties broken as the module docstring says) or ``"vertex"`` (lowest
    MAE, but the tie-breaking step failed its check and the LP's vertex was kept)."""

    weights: tuple[float, ...]
    mae: float
    mixture: tuple[float, ...]
    status: str


def _checked(distributions, target) -> tuple[np.ndarray, np.ndarray]:
    """The inputs as float arrays, or a MixtureError naming what is wrong (before any solving)."""
    try:
        d = np.asarray(distributions, dtype=float)
        t = np.asarray(target, dtype=float)
    except (TypeError, ValueError) as e:
        raise MixtureError(f"distributions and target must be numeric arrays (H x K and K): {e}") from e
    if t.ndim != 1 or t.shape[0] < 1:
        raise MixtureError(f"target must be one distribution over K >= 1 classes, got shape {t.shape}")
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] != t.shape[0]:
        raise MixtureError(
            f"distributions must be H x K with H >= 1 rows and K = {t.shape[0]} classes (the target's), "
            f"got shape {d.shape}"
        )
    for name, row in [("target", t)] + [(f"distributions row {i}", r) for i, r in enumerate(d)]:
        if not np.isfinite(row).all():
            raise MixtureError(f"{name} has a non-finite share (NaN or inf): {row.tolist()}")
        if (row < 0).any():
            raise MixtureError(f"{name} is not a distribution: negative share in {row.tolist()}")
        if abs(row.sum() - 1.0) > SUM_TOLERANCE:
            raise MixtureError(
                f"{name} is not a distribution: shares sum to {row.sum():.6g}, not 1 "
                f"(within {SUM_TOLERANCE}): {row.tolist()}"
            )
    return d, t


def _mae(w: np.ndarray, d: np.ndarray, t: np.ndarray) -> float:
    return float(np.abs(w @ d - t).mean())


def _spread_cost(w: np.ndarray, d: np.ndarray, t: np.ndarray) -> float:
    """What the tie rule minimises: ||w - 1/H||^2 + ||w D - t||^2."""
    return float(((w - 1.0 / len(w)) ** 2).sum() + ((w @ d - t) ** 2).sum())


def _on_simplex(w: np.ndarray) -> np.ndarray:
    """Solver round-off removed: negatives of order 1e-17 clipped, the sum made 1 again."""
    w = np.clip(w, 0.0, None)
    return w / w.sum()


def _closest_to_uniform(d: np.ndarray, t: np.ndarray, bound: float) -> np.ndarray | None:
    """The minimiser of ||w - 1/H||^2 + ||s||^2 over {w >= 0, sum w = 1, |w D - t| <= s,
    mean(s) <= bound}; at the minimum s = |w D - t|. None if the least-distance solve finds no point."""
    h, k = d.shape
    basis = null_space(np.ones((1, h)))  # h x (h - 1), orthonormal
    # x = (z, s); w = 1/H + basis z. Every constraint written as G x >= g.
    uniform = np.full(h, 1.0 / h)
    mix = basis.T @ d  # (h - 1) x k: how z moves the mixture
    zeros_hk, eye_k = np.zeros((h, k)), np.eye(k)
    g_mat = np.vstack(
        [
            np.hstack([basis, zeros_hk]),  # w >= 0
            np.hstack([-mix.T, eye_k]),  # s - (w D - t) >= 0
            np.hstack([mix.T, eye_k]),  # s + (w D - t) >= 0
            np.hstack([np.zeros((1, h - 1)), np.full((1, k), -1.0 / k)]),  # -mean(s) >= -bound
        ]
    )
    offset = uniform @ d - t
    g_vec = np.concatenate([-uniform, offset, -offset, [-bound]])
    # least-distance programming by NNLS: residual r of min ||E u - f||, u >= 0; x = -r[:-1] / r[-1]
    e_mat = np.vstack([g_mat.T, g_vec[None]])
    f = np.zeros(e_mat.shape[0])
    f[-1] = 1.0
    u, _ = nnls(e_mat, f, maxiter=50 * e_mat.shape[1])
    r = e_mat @ u - f
    if not abs(r[-1]) > 1e-14:  # also catches NaN
        return None
    x = -r[:-1] / r[-1]
    return uniform + basis @ x[: h - 1]


def mixture_weights(distributions: Sequence[Sequence[float]], target: Sequence[float]) -> MixtureFit:
    """The mixture of the rows of ``distributions`` (H x K) with the lowest MAE to ``target`` (K).

    Rows and target must be distributions (finite, >= 0, summing to 1 within ``SUM_TOLERANCE``);
    anything else, or a failed LP, raises :class:`MixtureError` (a ValueError). Where several
    weight vectors reach the lowest MAE, the one closest to uniform is returned (module docstring).
    """
    d, t = _checked(distributions, target)
    h, k = d.shape
    # variables (w_1..w_H, s_1..s_K), all >= 0
    cost = np.concatenate([np.zeros(h), np.full(k, 1.0 / k)])
    a_ub = np.block([[d.T, -np.eye(k)], [-d.T, -np.eye(k)]])  # w D - s <= t and -w D - s <= -t
    b_ub = np.concatenate([t, -t])
    a_eq = np.concatenate([np.ones(h), np.zeros(k)])[None]
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0], bounds=(0, None), method="highs")
    if res.status != 0 or res.x is None:
        raise MixtureError(
            f"the MAE linear program failed for distributions of shape {d.shape}: {res.message} "
            f"(scipy status {res.status})"
        )
    vertex = _on_simplex(res.x[:h])
    lowest = _mae(vertex, d, t)
    if h == 1:
        return MixtureFit((1.0,), lowest, tuple(float(x) for x in d[0]), "optimal")
    spread = _closest_to_uniform(d, t, lowest + TIE_SLACK)
    if spread is not None and (spread > -1e-9).all():
        spread = _on_simplex(spread)
        # checked, not trusted: as good an MAE as the LP's, and no worse by the tie rule than the
        # LP's vertex (itself a candidate); catches an infeasible or plainly wrong NNLS answer
        if (
            _mae(spread, d, t) <= lowest + TIE_CHECK
            and _spread_cost(spread, d, t) <= _spread_cost(vertex, d, t) + TIE_CHECK
        ):
            return MixtureFit(
                tuple(float(x) for x in spread),
                _mae(spread, d, t),
                tuple(float(x) for x in spread @ d),
                "optimal",
            )
    log.warning(
        "the tie-breaking step of the mixture fit failed its check (distributions %s, target %s); "
        "keeping the linear program's vertex",
        d.tolist(),
        t.tolist(),
    )
    return MixtureFit(tuple(float(x) for x in vertex), lowest, tuple(float(x) for x in vertex @ d), "vertex")
