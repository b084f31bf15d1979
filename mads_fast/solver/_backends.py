"""Backend discovery: the NumPy reference always; native modules loaded lazily on first use.

A native load failure is cached (one import attempt per process) and an explicitly requested backend
that cannot load raises ``BackendUnavailableError`` with the reason and the fix. ``auto`` picks cuda
when ``mads_fast._solver_cuda`` loads, sees a GPU, and the input is on a GPU or has N * D >= 2**24
(below that the host solver finishes before a device upload and launch pay off), then cpp, then
numpy, and logs the choice.
"""
from __future__ import annotations

import importlib
import logging
import os

from mads_fast.errors import BackendUnavailableError
from mads_fast.options import check_choice

from ._numpy_impl import NumpyDense

log = logging.getLogger("mads_fast")

BACKENDS = ("numpy", "cpp", "cuda")
_MODULES = {"cpp": "mads_fast._solver_cpu", "cuda": "mads_fast._solver_cuda"}
_FIX = "rebuild the native modules with `pip install -e .` (MADS_FAST_BUILD_CUDA=1 and nvcc for cuda)"
_loaded: dict = {}  # backend -> module, or the reason it failed
CUDA_AUTO_SIZE = 1 << 24  # N * D from which ``auto`` prefers the GPU for host input (64 MB of float32)


def _import(name: str):
    # OpenMP threads spin between parallel regions by default, which steals the cores other processes
    # share with us: passive waiting measured 6-18% faster end to end on the shared 2-core machine
    # (bench/results/solver_cpu.md: N=20k fp32 17.9 s vs 19.0 s, int8 12.3 vs 15.0; N=52k fp32 78.7 vs
    # 89.8, int8 47.7 vs 56.5). libgomp reads it once, when the native module first loads it; an explicit
    # setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return importlib.import_module(_MODULES[name])


def load_native(name: str):
    """The native module of ``name``, or raise BackendUnavailableError (the outcome is cached)."""
    if name not in _loaded:
        try:
            module = _import(name)
            if name == "cuda" and module.device_count() < 1:
                raise RuntimeError("no CUDA device is visible")
            _loaded[name] = module
        except Exception as exc:  # noqa: BLE001 - any load failure means the backend is unavailable
            _loaded[name] = f"{type(exc).__name__}: {exc}"
    value = _loaded[name]
    if isinstance(value, str):
        raise BackendUnavailableError(f"solver backend {name!r} cannot load ({value}); {_FIX}")
    return value


def available_backends() -> list:
    """Backends that load here, fastest last-resort order reversed: e.g. ['numpy', 'cpp']."""
    out = ["numpy"]
    for name in ("cpp", "cuda"):
        try:
            load_native(name)
        except BackendUnavailableError:
            continue
        out.append(name)
    return out


def _wants_cuda(X) -> bool:
    """auto's GPU rule for the input X (None: no input known, so the GPU when it loads)."""
    if X is None:
        return True
    from ._cuda import is_device_array

    if is_device_array(X):
        return True
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2:
        return False
    return int(shape[0]) * int(shape[1]) >= CUDA_AUTO_SIZE


def resolve(backend: str, X=None) -> str:
    """The backend to run: ``backend`` itself when it loads (else BackendUnavailableError), or for
    "auto" the fastest that loads, cuda only when ``X`` is on a GPU or large (see the module doc)."""
    check_choice("backend", backend, BACKENDS + ("auto",))
    if backend == "numpy":
        return "numpy"
    if backend != "auto":
        load_native(backend)
        return backend
    for name in ("cuda", "cpp"):
        if name == "cuda" and not _wants_cuda(X):
            continue
        try:
            load_native(name)
        except BackendUnavailableError as exc:
            log.debug("solver backend %s unavailable: %s", name, exc)
            continue
        log.info("solver backend: %s", name)
        return name
    log.info("solver backend: numpy (no native module loads; %s)", _FIX)
    return "numpy"


class NativeDense:
    """A native module's ``DenseSimilarity`` behind the same methods as ``NumpyDense``."""

    def __init__(self, name: str, module, X):
        self.name = name
        self._impl = module.DenseSimilarity(X)
        self.n, self.d = X.shape
        self.kernel = self._impl.kernel

    def columns(self, idx, cur=None):
        import numpy as np

        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if cur is None:
            cur = np.zeros(self.n, dtype=np.float32)
        return self._impl.columns(idx, np.ascontiguousarray(cur, dtype=np.float32))

    def column_sums(self):
        return self._impl.column_sums()

    def lazy_greedy(self, budget: int, batch_size=None, progress=None, graph_k=None):
        """Exact lazy greedy; ``graph_k`` is the saturation graph's width (None: the module default, 0: none)."""
        if graph_k is None:
            out = self._impl.lazy_greedy(int(budget), int(batch_size or 0), progress)
        else:
            out = self._impl.lazy_greedy(int(budget), int(batch_size or 0), progress, int(graph_k))
        return _result_from(out)

    def knn_graph(self, n_neighbors: int):
        """(neighbors int64 [N, K+1], sims float32 [N, K+1]) from the first pass, as ``_knn.knn_graph``."""
        if not hasattr(self._impl, "neighbor_graph"):
            return None
        g = self._impl.neighbor_graph(int(n_neighbors))
        return g["neighbors"], g["sims"]

    def knn_lazy_greedy(self, budget: int, n_neighbors: int, batch_size=None, progress=None):
        """Exact lazy greedy on the top-``n_neighbors`` graph, or None when the module lacks it."""
        if not hasattr(self._impl, "knn_lazy_greedy"):
            return None
        return _result_from(self._impl.knn_lazy_greedy(int(budget), int(n_neighbors), int(batch_size or 0), progress))


_STAT_KEYS = ("n_dense_evaluations", "multiply_adds", "first_pass_multiply_adds", "n_repacks",
              "first_pass_seconds", "greedy_seconds", "unsaturated", "evaluations")


def _result_from(out: dict):
    from ._result import GreedyResult

    return GreedyResult(out["ranking"], out["gains"], out["nearest"], out["nearest_similarity"],
                        int(out["n_evaluations"]), int(out["n_passes"]),
                        {key: out[key] for key in _STAT_KEYS if key in out})


def make_engine(name: str, X):
    """The similarity engine of backend ``name`` on X (NumPy [N, D] float32/int8; a CUDA array for cuda)."""
    if name == "numpy":
        return NumpyDense(X)
    if name == "cuda":
        from ._cuda import CudaDense  # imports _backends: load it here, not at module import

        return CudaDense(X)
    return NativeDense(name, load_native(name), X)
