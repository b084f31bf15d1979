"""NumPy reference backend: the readable specification every fast backend is tested against.

Similarity: s(i, j) = max(0, cos(x_i, x_j)). Float features are normalised once in float32
(x * float32(1 / ||x||), the norm taken in float64); a zero row gets inverse norm 0 and so similarity
0 with everything, itself included. int8 features keep their integers: dot products are exact (taken
in float64 here, int32 in C++), rounded to float32, then multiplied by the float32 product of the two
inverse norms (commutative, so s(i, j) and s(j, i) are the same float).
Gains are float64 sums of float32 terms max(0, s(i, j) - cur_i). Similarity matrices are only ever
built in blocks of at most 64 MB (never N x N).
"""
from __future__ import annotations

import numpy as np

from ._inputs import as_features
from ._knn import knn_graph_reference
from ._lazy import lazy_greedy
from ._oracles import DenseOracle, SparseOracle
from ._result import GreedyResult

BLOCK_BYTES = 64 << 20  # largest similarity block held at once


def inverse_norms(X: np.ndarray) -> np.ndarray:
    """float32 [N]: 1 / ||x_i|| (norm in float64), 0 for a zero row."""
    sq = np.einsum("ij,ij->i", X, X, dtype=np.float64)  # [N]
    norms = np.sqrt(sq)
    inv = np.zeros_like(norms)
    np.divide(1.0, norms, out=inv, where=norms > 0)
    return inv.astype(np.float32)


class NumpyEngine:
    """Dense cosine similarity computed on the fly from X [N, D] (float32 or int8); the reference ``Engine``."""

    name = "numpy"
    kernel = "numpy"
    default_batch = 32

    @classmethod
    def prepare(cls, X):
        return as_features(X)

    def __init__(self, X: np.ndarray):
        self.n, self.d = X.shape
        self.inv = inverse_norms(X)  # float32 [N]
        if X.dtype == np.int8:
            self._int = True
            self._x = X.astype(np.float64)  # [N, D] exact integer dot products up to 2^53
        else:
            self._int = False
            self._x = X * self.inv[:, None]  # float32 [N, D], unit rows (or zero)

    def rows_per_block(self, width: int) -> int:
        return max(1, BLOCK_BYTES // (4 * max(1, width)))

    def similarity(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float32 [len(rows), len(cols)] clipped cosine similarities."""
        dots = self._x[rows] @ self._x[cols].T
        if self._int:
            dots = dots.astype(np.float32)
            dots *= self.inv[rows][:, None] * self.inv[cols][None, :]  # one product: s(i, j) == s(j, i)
        return np.maximum(dots, 0, out=dots).astype(np.float32, copy=False)

    def columns(self, idx, cur=None):
        """Similarity columns of candidates ``idx`` and their exact gains against ``cur``.

        Returns (S float32 [m, N] with S[c, i] = s(i, idx[c]), gains float64 [m]).
        """
        idx = np.asarray(idx, dtype=np.int64)  # [m]
        out = np.empty((idx.size, self.n), dtype=np.float32)  # [m, N]
        gains = np.zeros(idx.size, dtype=np.float64)  # [m]
        step = self.rows_per_block(self.n)
        everyone = np.arange(self.n)
        for start in range(0, idx.size, step):
            block = idx[start:start + step]
            out[start:start + block.size] = self.similarity(block, everyone)
        cur = np.zeros(self.n, dtype=np.float32) if cur is None else cur
        for start in range(0, idx.size, step):
            part = out[start:start + step]
            gains[start:start + part.shape[0]] = np.maximum(part - cur[None, :], 0).sum(axis=1, dtype=np.float64)
        return out, gains

    def column_sums(self) -> np.ndarray:
        """float64 [N]: sum_i s(i, j), every candidate's gain on the empty set (the first pass)."""
        sums = np.zeros(self.n, dtype=np.float64)
        step = self.rows_per_block(self.n)
        everyone = np.arange(self.n)
        for start in range(0, self.n, step):
            rows = everyone[start:start + step]
            sums += self.similarity(rows, everyone).sum(axis=0, dtype=np.float64)
        return sums

    def lazy_greedy(self, budget: int, batch_size=None, progress=None, memory_budget=None) -> GreedyResult:
        """Exact lazy greedy over streamed columns (``memory_budget`` is the C++ engine's; unused here)."""
        return lazy_greedy(DenseOracle(self), budget, batch_size or self.default_batch, progress)

    def knn_graph(self, n_neighbors: int):
        return knn_graph_reference(self, n_neighbors)

    def knn_lazy_greedy(self, budget: int, n_neighbors: int, batch_size=None, progress=None) -> GreedyResult:
        # batch 1 by default: a sparse gain costs K+1 reads, so evaluating more than needed buys nothing
        return lazy_greedy(SparseOracle(*self.knn_graph(n_neighbors)), budget, batch_size or 1, progress)

