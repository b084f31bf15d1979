"""Loading the compiled solver modules: lazily, once per process, with the reason and the fix cached.

``mads_fast._solver_cpu`` (C++) and ``mads_fast._solver_cuda`` (CUDA) load on first use, never at
import. A failure is remembered (one import attempt per process) and every later request raises
``BackendUnavailableError`` with that reason and how to rebuild.
"""
from __future__ import annotations

import importlib
import os

from mads_fast.errors import BackendUnavailableError

MODULES = {"cpp": "mads_fast._solver_cpu", "cuda": "mads_fast._solver_cuda"}
FIX = "rebuild the native modules with `pip install -e .` (MADS_FAST_BUILD_CUDA=1 and nvcc for cuda)"
_loaded: dict = {}  # backend -> module, or the reason it failed


def _import(name: str):
    # OpenMP threads spin between parallel regions by default, which steals the cores other processes
    # share with us: passive waiting measured 6-18% faster end to end on the shared 2-core machine
    # (bench/results/solver_cpu.md: N=20k fp32 17.9 s vs 19.0 s, int8 12.3 vs 15.0; N=52k fp32 78.7 vs
    # 89.8, int8 47.7 vs 56.5). libgomp reads it once, when the native module first loads it; an explicit
    # setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return importlib.import_module(MODULES[name])


def load_native(name: str):
    """The native module of backend ``name`` ("cpp" or "cuda"), or raise BackendUnavailableError (cached)."""
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
        raise BackendUnavailableError(f"solver backend {name!r} cannot load ({value}); {FIX}")
    return value
