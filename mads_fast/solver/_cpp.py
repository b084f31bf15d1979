"""The C++ engine: ``mads_fast._solver_cpu.DenseSimilarity`` behind the ``Engine`` interface.

OpenMP over rows, AVX-512 fp32 / VNNI int8 or AVX2 fp32 / int8 kernels chosen at run time
(``MADS_FAST_ISA`` forces a family). The dense lazy greedy and the kNN graph with its greedy run natively; the first pass builds the
graph from one triangle of the similarity while it sums the columns.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._engine import Progress
from ._inputs import as_features
from ._native import load_native
from ._result import GreedyResult, result_from


class CppEngine:
    name = "cpp"
    default_batch = 0  # 0: the module's own default (csrc/facility_location.cpp)

    @classmethod
    def prepare(cls, X):
        return as_features(X)

    def __init__(self, X: np.ndarray):
        self._impl = load_native("cpp").DenseSimilarity(X)
        self.n, self.d = X.shape
        self.kernel = self._impl.kernel

    def columns(self, idx, cur=None):
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if cur is None:
            cur = np.zeros(self.n, dtype=np.float32)
        return self._impl.columns(idx, np.ascontiguousarray(cur, dtype=np.float32))

    def column_sums(self) -> np.ndarray:
        return self._impl.column_sums()

    def lazy_greedy(self, budget: int, batch_size: Optional[int] = None, progress: Progress = None,
                    graph_k: Optional[int] = None, memory_budget: Optional[int] = None) -> GreedyResult:
        """Exact lazy greedy; ``graph_k`` is the saturation graph's width (None: the module default, 0: none);
        ``memory_budget`` in bytes: the whole similarity matrix is cached when it fits, else at most that
        many bytes of streamed columns are kept (None: the module's streaming default, 512 MiB of columns)."""
        batch = int(batch_size or self.default_batch)
        graph = self._impl_default_graph_k if graph_k is None else int(graph_k)
        memory = -1 if memory_budget is None else int(memory_budget)
        return result_from(self._impl.lazy_greedy(int(budget), batch, progress, graph, memory))

    @property
    def _impl_default_graph_k(self) -> int:
        return int(load_native("cpp").DEFAULT_GRAPH_K)

    @property
    def matrix_bytes(self) -> int:
        """Bytes the cached similarity matrix takes for this X."""
        return int(self._impl.matrix_bytes)

    def knn_graph(self, n_neighbors: int):
        g = self._impl.neighbor_graph(int(n_neighbors))
        return g["neighbors"], g["sims"]

    def knn_lazy_greedy(self, budget: int, n_neighbors: int, batch_size: Optional[int] = None,
                        progress: Progress = None) -> GreedyResult:
        out = self._impl.knn_lazy_greedy(int(budget), int(n_neighbors), int(batch_size or self.default_batch),
                                         progress)
        return result_from(out)
