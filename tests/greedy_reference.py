"""The solver tests' independent reference: full float64 similarity and a plain greedy (small N only).

Written from the definitions, sharing nothing with mads_fast.solver but the tie constants: s(i, j) =
max(0, cos(x_i, x_j)) with zero rows similar to nothing (themselves included); every step recomputes every
gain exactly and takes the lowest index within tau of the best.
"""
import numpy as np

from mads_fast.solver._tie import TIE_ABS, TIE_REL


def tau(g):
    return TIE_ABS + TIE_REL * abs(g)


def cosine64(X):
    """float64 [N, N] clipped cosine similarity; zero rows are similar to nothing, themselves included."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    Xn = X * inv[:, None]
    return np.maximum(Xn @ Xn.T, 0.0)


def naive_greedy(S, k):
    """Plain greedy over the full matrix S [N, N]: returns (picks int [k], gains float64 [k])."""
    n = S.shape[0]
    cur = np.zeros(n)
    picks, gains = [], []
    for _ in range(k):
        g = np.maximum(S - cur[:, None], 0).sum(axis=0)  # [N] gain of each candidate
        g[picks] = -np.inf
        best = g.max()
        j = int(np.flatnonzero(g >= best - tau(best))[0])
        picks.append(j)
        gains.append(g[j])
        cur = np.maximum(cur, S[:, j])
    return np.array(picks), np.array(gains)
