"""Validation of the solver's inputs: the feature matrix and the options (the budget: ``mads_fast.options``).

Everything is checked here, before any native call, so bad input is a one-line ``InputError`` and
never a traceback from C++.
"""
from __future__ import annotations


import numpy as np

from mads_fast.errors import InputError
from mads_fast.options import check_choice, check_positive_int, resolve_budget  # noqa: F401  (one rule each)

_FLOAT_KINDS = "f"
_INT_KINDS = "iu"


def _to_host_numpy(X):
    """NumPy view of X; torch CPU tensors without a copy, CUDA tensors and CuPy arrays copied to host."""
    module = type(X).__module__
    if module.startswith("torch"):
        import torch

        X = X.detach()
        if X.is_cuda or X.device.type != "cpu":
            X = X.cpu()
        if X.dtype == torch.bfloat16:  # NumPy has no bfloat16; fp32 holds it exactly
            X = X.float()
        if X.dtype in (torch.complex64, torch.complex128, torch.bool):
            raise InputError(f"X has dtype {X.dtype}; expected a real numeric dtype (float32, float16, float64, int8)")
        return X.numpy()
    if module.startswith("cupy"):
        return X.get()
    try:
        return np.asarray(X)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is bad input
        raise InputError(f"X cannot be converted to an array: {exc}") from None


def as_features(X) -> np.ndarray:
    """Return X as a C-contiguous float32 or int8 array [N, D], or raise InputError.

    int8 stays int8 (cosine cancels each row's scale; the C++ path takes exact int32 dot products).
    float16/float64/other integers are converted to float32 once, O(N*D).
    """
    if X is None:
        raise InputError("X is None; expected a 2-D array of features [N, D]")
    arr = _to_host_numpy(X)
    if arr.dtype.kind not in _FLOAT_KINDS + _INT_KINDS:
        raise InputError(f"X has dtype {arr.dtype}; expected a real numeric dtype (float32, float16, float64, int8)")
    if arr.ndim != 2:
        raise InputError(f"X must be 2-D [N, D]; got shape {tuple(arr.shape)}")
    n, d = arr.shape
    if n == 0:
        raise InputError(f"X is empty: shape {tuple(arr.shape)} has no rows")
    if d == 0:
        raise InputError(f"X has no feature columns: shape {tuple(arr.shape)}")
    if arr.dtype == np.int8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind in _FLOAT_KINDS:
        if not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr))[0][0])
            raise InputError(f"X contains NaN or inf (first in row {bad})")
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(out).all():
            bad = int(np.argwhere(~np.isfinite(out))[0][0])
            raise InputError(f"X overflows float32 (first in row {bad}); rescale the features")
        return out
    return np.ascontiguousarray(arr, dtype=np.float32)
