"""Calibration of a hinted method: how often the model follows each class hint, and the draw
weights that correct for it.

The model does not always write what its hint asks (the embedded model writes a "male"-hinted
story that the judge reads as male 79-86% of the time). The calibration run answers every
validation prompt under every class hint; among the valid answers, row h of the confusion matrix
C is the distribution of judged classes under hint h. Drawing hint h with probability w_h gives
answers distributed as w C, so per context the weights are those that bring w C closest to the
target (the LP of :func:`distalign.core.mixtures.mixture_weights`). The MAE of that fit is what the
calibration expects; sampling noise and the test prompts' own behaviour come on top. Invalid
answers are left out of C, as the MAE leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distalign.core.attributes import Attribute
from distalign.core.mixtures import mixture_weights


class CalibrationError(ValueError):
    """The calibration answers cannot give weights (a hint without a valid answer, a wrong file)."""


def hint_calibration(
    rows: Sequence[dict], targets: Sequence[dict], attribute: Attribute, *, source: str = "labels"
) -> dict:
    """Confusion of hints and judged classes from labelled calibration ``rows`` (each with its
    ``hint`` class and ``label``, None when invalid), and per context of ``targets`` (rows
    ``{context_id, context, target}``) the draw weights and the MAE they are expected to reach."""
    k = len(attribute.names)
    counts = np.zeros((k, k))
    invalid = np.zeros(k, dtype=int)
    for i, r in enumerate(rows):
        if r.get("hint") not in attribute.names:
            raise CalibrationError(
                f"{source}: row {i + 1} has no hint class of {attribute.name!r} ({r.get('hint')!r})"
            )
        h = attribute.names.index(r["hint"])
        if r.get("label") is None:
            invalid[h] += 1
        else:
            counts[h, attribute.names.index(r["label"])] += 1
    silent = [attribute.names[h] for h in range(k) if counts[h].sum() == 0]
    if silent:
        raise CalibrationError(
            f"{source}: no valid answer under the hint of class(es) {silent} "
            f"({int(invalid.sum())} invalid answers in all): the hints cannot be calibrated"
        )
    confusion = counts / counts.sum(axis=1, keepdims=True)
    per_context = {}
    for t in targets:
        fit = mixture_weights(confusion, t["target"])
        per_context[str(t["context_id"])] = {
            "context": t["context"],
            "target": [float(x) for x in t["target"]],
            "weights": list(fit.weights),
            "expected": list(fit.mixture),
            "expected_mae": fit.mae,
        }
    return {
        "classes": list(attribute.names),
        "confusion": confusion.tolist(),
        "n_valid": counts.sum(axis=1).astype(int).tolist(),
        "n_invalid": invalid.tolist(),
        "follow_rate": [float(confusion[h, h]) for h in range(k)],
        "expected_mae": float(np.mean([c["expected_mae"] for c in per_context.values()])),
        "weights": {cid: c["weights"] for cid, c in per_context.items()},
        "contexts": per_context,
    }
