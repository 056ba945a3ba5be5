"""Seeds derived from the config seed and the names of what is sampled."""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A stable 32-bit seed from the master seed and names (independent of PYTHONHASHSEED)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()
    return int(h[:8], 16)
