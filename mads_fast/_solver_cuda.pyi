"""Type stub of the compiled CUDA solver (csrc/bindings_cuda.cpp). Private: use ``mads_fast.solver``."""
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

TIE_ABS: float
TIE_REL: float

def device_count() -> int:
    """visible CUDA devices (0 without a driver or device)"""
def versions(device: int = 0) -> Dict[str, Any]:
    """driver, runtime, cublas, device_name, compute_capability, total_memory"""
def graph_lazy_greedy(neighbors: np.ndarray, sims: np.ndarray, budget: int, batch: int = 0,
                      progress: Optional[Callable[[int], Any]] = None) -> Dict[str, Any]:
    """the host C++ function of _solver_cpu.graph_lazy_greedy (see that stub), built into this module too: it
    needs no GPU"""

class DenseSimilarity:
    """Cosine similarities of GPU-resident features (host or device input), computed with cuBLAS GEMMs."""
    def __init__(self, X: Any, precision: str = "auto", scratch_bytes: int = 0) -> None: ...
    @property
    def kernel(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def n(self) -> int: ...
    @property
    def d(self) -> int: ...
    @property
    def device(self) -> int: ...
    @property
    def borrowed(self) -> bool: ...
    @property
    def features_pointer(self) -> int: ...
    @property
    def uploaded_bytes(self) -> int: ...
    @property
    def device_bytes(self) -> int: ...
    def columns(self, idx: np.ndarray, cur: np.ndarray) -> Tuple[np.ndarray, np.ndarray]: ...
    def columns_device(self, idx: np.ndarray, out: int, ld: int, stream: int = 0) -> None: ...
    def column_sums(self) -> np.ndarray: ...
    def lazy_greedy(self, budget: int, batch: int = 0,
                    progress: Optional[Callable[[int], Any]] = None) -> Dict[str, Any]:
        """exact lazy greedy: the dict of the C++ module's (ranking, gains, nearest, nearest_similarity and
        the profile; of it only first_pass_seconds, greedy_seconds and evaluations are filled here)"""
