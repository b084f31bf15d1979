"""Type stub of the compiled C++ solver (csrc/bindings_cpu.cpp). Private: use ``mads_fast.solver``."""
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

TIE_ABS: float
TIE_REL: float
DEFAULT_GRAPH_K: int

class DenseSimilarity:
    """Cosine similarities of the rows of X (float32 or int8 [N, D]), computed on the fly."""
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
    def lazy_greedy(self, budget: int, batch: int = 0, progress: Optional[Callable[[int], Any]] = None,
                    graph_k: int = ...) -> Dict[str, Any]:
        """exact lazy greedy: ranking, gains, nearest, nearest_similarity and the run's profile"""
    def knn_lazy_greedy(self, budget: int, n_neighbors: int, batch: int = 0,
                        progress: Optional[Callable[[int], Any]] = None) -> Dict[str, Any]:
        """exact lazy greedy on the top-n_neighbors graph"""
