"""Backend discovery and resolution: which engines load here, which one a call gets, and building it.

The NumPy reference always loads; the native modules load lazily on first use (``_native``). An
explicitly requested backend that cannot load raises ``BackendUnavailableError`` with the reason and
the fix. ``auto`` picks cuda when ``mads_fast._solver_cuda`` loads, sees a GPU, and the input is on a
GPU or has N * D >= 2**24 (below that the host solver finishes before a device upload and launch pay
off), then cpp, then numpy, and logs the choice. Engines implement ``_engine.Engine``.
"""
from __future__ import annotations

import logging
from typing import Any, Tuple

from mads_fast.errors import BackendUnavailableError
from mads_fast.options import check_choice

from ._cpp import CppEngine
from . import _cuda
from ._cuda import CudaEngine
from ._engine import Engine
from ._native import FIX, load_native
from ._numpy_impl import NumpyEngine

log = logging.getLogger("mads_fast")

ENGINES = {"numpy": NumpyEngine, "cpp": CppEngine, "cuda": CudaEngine}
BACKENDS = tuple(ENGINES)
CUDA_AUTO_SIZE = 1 << 24  # N * D from which ``auto`` prefers the GPU for host input (64 MB of float32)


def available_backends() -> list:
    """Backends that load here, in the order ``auto`` falls back through reversed: e.g. ['numpy', 'cpp']."""
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
    if X is None or _cuda.is_device_array(X):
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
    log.info("solver backend: numpy (no native module loads; %s)", FIX)
    return "numpy"


def prepare(backend: str, X: Any) -> Tuple[Any, str]:
    """(X validated for the engine, the engine's backend name): ``resolve(backend, X)`` then that engine's
    ``prepare`` (a GPU-resident X stays on its device for cuda; everything else becomes host NumPy)."""
    name = resolve(backend, X)
    return ENGINES[name].prepare(X), name


def make_engine(name: str, X: Any) -> Engine:
    """The engine of backend ``name`` on X, prepared for it (see ``prepare``)."""
    return ENGINES[name](X)
