"""The tie rule shared by every backend (NumPy, C++, CUDA) and by the tests.

Gains are accumulated in float64, but similarities are float32 and each backend sums them in its own
order, so two candidates with the same true gain can differ by ~1e-7 relative. A pick must therefore
not depend on which backend ran: let G be the best true gain of a step; every candidate whose gain is
>= G - tau, tau = TIE_ABS + TIE_REL * |G|, is tied, and the pick is the LOWEST INDEX among them.
Lazy evaluation respects the rule by evaluating stale candidates while the best remaining upper bound
is >= G - tau, so every member of the tie set has a fresh gain. An upper bound of 0 is exact (gains
are sums of non-negative terms), so zero bounds are never re-evaluated.

The same two numbers live in ``csrc/facility_location.h`` (``kTieAbs``, ``kTieRel``).
"""
from __future__ import annotations

import numpy as np

TIE_ABS = 1e-6
TIE_REL = 1e-5


def tie_tolerance(best: float) -> float:
    """tau for a step whose best gain is ``best``."""
    return TIE_ABS + TIE_REL * abs(float(best))


def pick_tied(indices: np.ndarray, gains: np.ndarray) -> tuple[int, float, float]:
    """Apply the rule to fresh gains: returns (picked index, its gain, best gain G)."""
    indices = np.asarray(indices, dtype=np.int64)  # [m]
    gains = np.asarray(gains, dtype=np.float64)  # [m]
    best = float(gains.max())
    tied = gains >= best - tie_tolerance(best)
    pos = int(np.flatnonzero(tied)[np.argmin(indices[tied])])
    return int(indices[pos]), float(gains[pos]), best
