"""The one evaluator every method of the solver benchmark is scored with (no library's own number).

f(S) = sum_i max_{j in S} s(i, j), s(i, j) = max(0, cos(x_i, x_j)), computed in float64 from the float32
features: rows normalised in float64, similarity blocks [rows, |S|] of at most 64 MB in float64.
The int8 runs are scored on the float32 features too: what counts is how well the picks cover the
real features, not the quantised ones.

``first_difference`` and ``divergence`` say where two pick lists part and whether that first step is a
true tie (the two candidates' exact gains after the common prefix are within the solver's tie tolerance,
``mads_fast.solver.tie_tolerance``) or one method picked a worse candidate.
"""
from __future__ import annotations

import numpy as np

BLOCK_BYTES = 64 << 20


def unit_rows64(X: np.ndarray) -> np.ndarray:
    """float64 [N, D] unit rows; a zero row stays zero (similarity 0 with everything)."""
    x = np.asarray(X, dtype=np.float64)  # [N, D]
    norms = np.linalg.norm(x, axis=1)  # [N]
    return np.divide(x, norms[:, None], out=np.zeros_like(x), where=norms[:, None] > 0)


def coverage_vector(U: np.ndarray, picks) -> np.ndarray:
    """float64 [N]: max_{j in picks} max(0, u_i . u_j); zeros for no picks. U from ``unit_rows64``."""
    picks = np.asarray(picks, dtype=np.int64)  # [k]
    n = U.shape[0]
    cur = np.zeros(n, dtype=np.float64)  # [N]
    if picks.size == 0:
        return cur
    sel = U[picks]  # [k, D]
    step = max(1, BLOCK_BYTES // (8 * picks.size))
    for start in range(0, n, step):
        block = U[start:start + step] @ sel.T  # [rows, k]
        cur[start:start + block.shape[0]] = np.maximum(block.max(axis=1), 0.0)
    return cur


def objective(X: np.ndarray, picks) -> float:
    """f(picks) on features X [N, D] (float32 as the methods saw them), in float64."""
    return float(coverage_vector(unit_rows64(X), picks).sum())


def first_difference(a, b):
    """First position where pick lists a and b differ (over their common length), or None if equal there."""
    a = np.asarray(a)
    b = np.asarray(b)
    m = min(a.size, b.size)
    diff = np.flatnonzero(a[:m] != b[:m])
    if diff.size:
        return int(diff[0])
    return None if a.size == b.size else m


def divergence(X: np.ndarray, ours, theirs) -> dict:
    """Where ``ours`` and ``theirs`` part, and the exact gains of both candidates at that step.

    Returns {"same": bool} and, when they differ, "position", "ours"/"theirs" (the two candidates),
    "gain_ours"/"gain_theirs" (float64 gains after the common prefix), "tolerance" (the solver's tie
    tolerance at the better gain) and "verdict": "tie" (|difference| <= tolerance), "ours better" or
    "theirs better".
    """
    from mads_fast.solver import tie_tolerance

    pos = first_difference(ours, theirs)
    if pos is None:
        return {"same": True}
    out = {"same": False, "position": pos}
    if pos >= min(len(ours), len(theirs)):
        out["verdict"] = "different lengths"
        return out
    U = unit_rows64(X)
    cur = coverage_vector(U, np.asarray(ours[:pos]))  # [N]
    a, b = int(ours[pos]), int(theirs[pos])
    cols = np.maximum(U @ U[[a, b]].T, 0.0)  # [N, 2]
    gains = np.maximum(cols - cur[:, None], 0.0).sum(axis=0)  # [2]
    tol = tie_tolerance(max(gains))
    gap = float(gains[0] - gains[1])
    verdict = "tie" if abs(gap) <= tol else ("ours better" if gap > 0 else "theirs better")
    out.update(ours=a, theirs=b, gain_ours=float(gains[0]), gain_theirs=float(gains[1]), tolerance=tol,
               verdict=verdict)
    return out
