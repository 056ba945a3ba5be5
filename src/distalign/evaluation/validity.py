"""Validity correction of the steering draw (not in the paper).

The MAE counts valid answers only (a story with a gendered word, an answer the parser reads). When
the answers of one steering token are invalid more often than those of another (in stories on the
embedded model, the "male" token writes a first-person story naming nobody 43% of the time, the
"female" token 28%), the valid answers over-represent the other token even when every valid answer
follows its token and the tokens are drawn exactly as trained: a bias of about .06 MAE on US-even.

The correction measures, per token class k, the share v_k of valid answers on the task's
*validation* prompts (never the test prompts), and draws each test prompt's token from
p_k * w_k renormalised with w_k = 1 / v_k. The valid answers then have token shares
p_k v_k w_k / sum = p_k: the model's own distribution, which its KL term calibrated to the target.
The adapter and the model's token probabilities are unchanged; only the draw is reweighted.

A class whose rate cannot be estimated (no validation answer drew its token) keeps weight 1; a rate
below ``MIN_VALID_RATE`` is raised to it (a weight of at most 20), so that one rare class cannot take
over the draw.
"""

from __future__ import annotations

from collections.abc import Sequence

from distalign.core.attributes import Attribute
from distalign.evaluation.metrics import row_token_class, token_class_map

MIN_VALID_RATE = 0.05


class ValidityError(ValueError):
    pass


def validity_weights(
    rows: Sequence[dict],
    attribute: Attribute,
    token_set: str | None = None,
    source: str = "validation labels",
) -> dict:
    """Per token class: rows, valid rows, valid share and the draw weight, from labelled rows.

    ``rows`` are label rows of a steering method (``steering_token``, ``label``: None if invalid).
    Returns ``{"classes", "tokens", "n", "n_valid", "valid_rate", "weights", "n_rows"}``; the
    weights have mean 1 over the classes.
    """
    names = attribute.names
    tmap = token_class_map(attribute, token_set)
    n = [0] * len(names)
    n_valid = [0] * len(names)
    if not rows:
        raise ValidityError(f"{source}: no rows to estimate the valid share per steering token from")
    for i, r in enumerate(rows):
        k = row_token_class(r, tmap)
        if k is None:
            raise ValidityError(
                f"{source}: row {i} (prompt {r.get('prompt_id')!r}) has steering token "
                f"{r.get('steering_token')!r}, "
                f"not one of {sorted(tmap)}: the validity correction needs a steering method's rows"
            )
        n[k] += 1
        n_valid[k] += r.get("label") is not None
    rates = [v / c if c else None for v, c in zip(n_valid, n, strict=True)]
    raw = [1.0 / max(r, MIN_VALID_RATE) if r is not None else 1.0 for r in rates]
    mean = sum(raw) / len(raw)
    return {
        "classes": list(names),
        "tokens": list(attribute.steering_tokens(token_set)),
        "n": n,
        "n_valid": n_valid,
        "valid_rate": rates,
        "weights": [w / mean for w in raw],
        "n_rows": len(rows),
        "min_valid_rate": MIN_VALID_RATE,
    }


def read_weights(data: dict, attribute: Attribute, source: str) -> list[float]:
    """The draw weights of a validity file, checked against the attribute's classes."""
    if data.get("classes") != list(attribute.names) or len(data.get("weights", [])) != len(attribute.names):
        raise ValidityError(
            f"{source}: weights for classes {data.get('classes')}, expected {list(attribute.names)}"
        )
    return [float(w) for w in data["weights"]]
