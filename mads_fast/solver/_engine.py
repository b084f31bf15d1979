"""The contract every solver backend implements: a similarity ``Engine`` over features X [N, D].

Three engines implement it, one module each: ``_numpy_impl.NumpyEngine`` (the reference),
``_cpp.CppEngine`` (``mads_fast._solver_cpu``) and ``_cuda.CudaEngine`` (``mads_fast._solver_cuda``).
``_backends`` discovers which load and builds one; the solvers (``FacilityLocation``, ``KCenter``) see
only this interface and never ask which engine they hold.

Similarity: s(i, j) = max(0, cos(x_i, x_j)) (see ``_numpy_impl`` for the exact float rules); gains are
float64; ties follow ``_tie``. Every greedy returns a ``GreedyResult`` whose ``stats`` is the engine's
profile (timings and counters; empty where an engine has none).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Tuple

import numpy as np

from ._result import GreedyResult

Progress = Optional[Callable[[int], None]]


class Engine(Protocol):
    name: str  # the backend: "numpy", "cpp" or "cuda"
    n: int  # rows of X
    d: int  # feature columns of X
    kernel: str  # which similarity kernel runs (e.g. "avx512-vnni-int8")
    default_batch: int  # candidates re-evaluated per pass when the caller gives no batch_size

    @classmethod
    def prepare(cls, X: Any) -> Any:
        """X validated into the form this engine reads (host NumPy; a device array for cuda), or InputError."""

    def columns(self, idx: np.ndarray, cur: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(S float32 [m, N] with S[c, i] = s(i, idx[c]), gains float64 [m] = sum_i max(0, S[c, i] - cur[i]))."""

    def column_sums(self) -> np.ndarray:
        """float64 [N]: sum_i s(i, j), every candidate's gain on the empty set."""

    def lazy_greedy(self, budget: int, batch_size: Optional[int] = None, progress: Progress = None,
                    memory_budget: Optional[int] = None) -> GreedyResult:
        """Exact lazy greedy on the dense similarity; ``memory_budget`` (bytes, None: the engine's default) is
        what an engine may spend on cached similarities (C++: the whole matrix when it fits; see ``_memory``),
        never a change of picks."""

    def knn_graph(self, n_neighbors: int) -> Tuple[np.ndarray, np.ndarray]:
        """(neighbors int64 [N, K+1], sims float32 [N, K+1]): self first, then the K = min(n_neighbors, N-1)
        most similar other rows in ascending index order, ties at the K-th value to the lowest index."""

    def knn_lazy_greedy(self, budget: int, n_neighbors: int, batch_size: Optional[int] = None,
                        progress: Progress = None) -> GreedyResult:
        """Exact lazy greedy on the ``knn_graph(n_neighbors)`` objective (gains and nearest on the graph)."""
