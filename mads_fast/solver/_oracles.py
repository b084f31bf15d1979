"""Gain oracles: what a greedy driver needs from an objective, for dense and kNN-graph similarity.

An oracle evaluates exact marginal gains of candidates against ``cur`` (float32 [N], each example's
similarity to its nearest pick) and applies a pick to ``cur`` and ``nearest``. ``nearest`` follows
one rule everywhere: the first pick (in pick order) attaining an example's maximum similarity; the
first pick is every example's nearest until a strictly more similar pick arrives.
"""
from __future__ import annotations

import numpy as np


def apply_column(j: int, column: np.ndarray, cur: np.ndarray, nearest: np.ndarray, first: bool) -> None:
    if first:
        nearest[:] = j
        np.maximum(column, 0, out=cur)
    else:
        better = column > cur
        nearest[better] = j
        cur[better] = column[better]


class DenseOracle:
    """Gains from similarity columns computed on the fly by a dense engine (``columns``, ``column_sums``)."""

    def __init__(self, engine):
        self.engine = engine
        self.n = engine.n
        self.n_passes = 0
        self._cache = {}  # candidate -> its column from the latest evaluation, so a pick needs no extra pass

    def initial_gains(self) -> np.ndarray:
        self.n_passes += 1
        return self.engine.column_sums()

    def gains(self, idx, cur) -> np.ndarray:
        cols, g = self.engine.columns(idx, cur)  # [m, N], [m]
        self.n_passes += 1
        self._cache = dict(zip(np.asarray(idx).tolist(), cols))
        return g

    def apply(self, j: int, cur, nearest, first: bool) -> None:
        column = self._cache.get(j)
        if column is None:  # a zero-gain pick that was never evaluated
            column = self.engine.columns([j], cur)[0][0]
        self._cache = {}
        apply_column(j, column, cur, nearest, first)


class SparseOracle:
    """Gains on a kNN graph: W[i, j] = s(i, j) when j is among i's kept neighbours, else 0.

    Stored by candidate (CSC): candidate j covers rows ``rows[indptr[j]:indptr[j+1]]`` with weights ``w``.
    """

    def __init__(self, neighbors: np.ndarray, sims: np.ndarray):
        n, width = neighbors.shape  # [N, K]
        self.n = n
        rows = np.repeat(np.arange(n, dtype=np.int64), width)  # [N*K]
        cols = neighbors.reshape(-1)
        order = np.argsort(cols, kind="stable")
        self.rows = rows[order]  # [nnz]
        self.w = sims.reshape(-1)[order].astype(np.float32)  # [nnz]
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=n), out=self.indptr[1:])
        self.n_passes = 0

    def initial_gains(self) -> np.ndarray:
        sums = np.zeros(self.n, dtype=np.float64)
        np.add.at(sums, np.repeat(np.arange(self.n), np.diff(self.indptr)), self.w.astype(np.float64))
        return sums

    def gains(self, idx, cur) -> np.ndarray:
        out = np.empty(len(idx), dtype=np.float64)
        for pos, j in enumerate(np.asarray(idx).tolist()):
            a, b = self.indptr[j], self.indptr[j + 1]
            out[pos] = np.maximum(self.w[a:b] - cur[self.rows[a:b]], 0).sum(dtype=np.float64)
        return out

    def apply(self, j: int, cur, nearest, first: bool) -> None:
        a, b = self.indptr[j], self.indptr[j + 1]
        rows, w = self.rows[a:b], self.w[a:b]
        if first:
            nearest[:] = j
        better = w > cur[rows]
        nearest[rows[better]] = j
        cur[rows[better]] = w[better]
