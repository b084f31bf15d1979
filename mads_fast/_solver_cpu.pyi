"""Type stub of the compiled C++ solver (csrc/bindings_cpu.cpp). Private: use ``mads_fast.solver``."""
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

TIE_ABS: float
TIE_REL: float
DEFAULT_GRAPH_K: int

def graph_lazy_greedy(neighbors: np.ndarray, sims: np.ndarray, budget: int, batch: int = 0,
                      progress: Optional[Callable[[int], Any]] = None) -> Dict[str, Any]:
    """exact lazy greedy on a given graph: W[i, neighbors[i, t]] = sims[i, t] (neighbors int64 [N, W], row i
    itself first, then its neighbours; sims float32 [N, W], finite, >= 0; no column twice in a row), 0
    elsewhere; f(S) = sum_i max_{j in S} W[i, j]. The picks, gains, nearest and nearest_similarity of
    mads_fast.solver._lazy.lazy_greedy over SparseOracle(neighbors, sims) with the same batch (0 = 1), in the
    dict of DenseSimilarity.lazy_greedy. Raises ValueError for a bad dtype, shape, value or budget and
    IndexError for a neighbour index outside [0, N)."""

class DenseSimilarity:
    """Cosine similarities of the rows of X (float32 or int8 [N, D]), computed on the fly (or cached as one
    matrix by lazy_greedy when its memory_budget allows)."""
    def __init__(self, X: np.ndarray) -> None: ...
    @property
    def kernel(self) -> str: ...
    @property
    def n(self) -> int: ...
    @property
    def d(self) -> int: ...
    def columns(self, idx: np.ndarray, cur: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """similarity columns float32 [m, N] of candidates idx [m] and their gains float64 [m] against cur [N]"""
    def column_sums(self) -> np.ndarray:
        """float64 [N]: sum_i s(i, j) for every column j"""
    def neighbor_graph(self, k: int) -> Dict[str, np.ndarray]:
        """first pass: neighbors int64 [N, k'+1], sims float32 [N, k'+1], threshold float32 [N], column_sums
        float64 [N]"""
    @property
    def matrix_bytes(self) -> int:
        """bytes of the cached similarity matrix: N columns of N rounded up to 64 float32 values"""
    def lazy_greedy(self, budget: int, batch: int = 0, progress: Optional[Callable[[int], Any]] = None,
                    graph_k: int = ..., memory_budget: int = -1) -> Dict[str, Any]:
        """exact lazy greedy: ranking, gains, nearest, nearest_similarity and the run's profile (cache_used,
        cache_bytes, cache_build_seconds, cache_hits included); memory_budget >= matrix_bytes builds the whole
        similarity once and reads its columns, a smaller one >= 0 caps the streaming path's kept columns, -1
        keeps the streaming default (512 MiB of columns)"""
    def knn_lazy_greedy(self, budget: int, n_neighbors: int, batch: int = 0,
                        progress: Optional[Callable[[int], Any]] = None) -> Dict[str, Any]:
        """exact lazy greedy on the top-n_neighbors graph: graph_lazy_greedy on neighbor_graph(n_neighbors),
        with the first pass in the profile"""
