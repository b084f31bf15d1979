"""The feature formats: their names, their stored dtypes and widths, and the one ``dequantize``.

The kernel (``pooling``) writes them and the store keeps them; both speak of a format by its quant name:

    quant   stored dtype   width (columns per ``dim`` features)   scales
    fp32    float32        dim                                    none (or 1.0)
    fp16    float16        dim                                    none (or 1.0)
    int8    int8           dim                                    absmax / 127 per row and segment
    bit     uint8          ceil(dim / 8), 8 features a byte       mean |v| per row and segment

The store's manifest records the stored dtype (``"uint8"`` for bit); ``QUANT_OF_DTYPE`` maps it back.
Nothing here imports torch: a torch tensor handed to ``dequantize`` is the caller's, so torch is loaded.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mads_fast.errors import InputError

QUANTS = ("fp32", "fp16", "int8", "bit")
STORE_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8", "bit": "uint8"}
QUANT_OF_DTYPE = {dtype: quant for quant, dtype in STORE_DTYPES.items()}
SCALED = ("int8", "bit")  # the quants whose rows carry real scales


def check_quant(quant: str) -> None:
    if quant not in QUANTS:
        raise InputError(f"unknown quant {quant!r}; expected one of {', '.join(QUANTS)}", param="quant")


def out_width(dim: int, quant: str) -> int:
    """Columns of the quantised output for a ``dim``-wide feature: ``dim``, or ``ceil(dim / 8)`` bytes for bit."""
    check_quant(quant)
    return (dim + 7) // 8 if quant == "bit" else dim


def dequantize(q, scales, quant: str, dim: int, out: Optional[np.ndarray] = None):
    """Stored rows back to float32 features ``[n, dim]``; NumPy in gives NumPy out, torch gives torch.

    q: ``[n, width]`` as stored. scales: ``[n]`` (one per row) or ``[n, n_scales]`` float32, scale ``s``
    covering columns ``[s * dim / n_scales, (s + 1) * dim / n_scales)`` (one per layer); None for the float
    quants. int8: ``q * scale``. bit: bit ``i % 8`` of byte ``i // 8`` is feature ``i``: 1 -> +scale,
    0 -> -scale; pad bits are ignored. fp32/fp16: a cast (times the scale when one is given).
    out: NumPy only, an ``[n, dim]`` float32 buffer to fill (allocated when not given).
    """
    check_quant(quant)
    if not isinstance(q, np.ndarray):
        return _dequantize_torch(q, scales, quant, dim)
    n = q.shape[0]
    if out is None:
        out = np.empty((n, dim), dtype=np.float32)  # [n, dim]
    if scales is None:
        if quant in SCALED:
            raise InputError(f"{quant} features need their scales to be dequantised")
        out[...] = q
        return out
    scales = np.asarray(scales, dtype=np.float32)
    scales = scales[:, None] if scales.ndim == 1 else scales  # [n, S]
    n_scales = scales.shape[1]
    segments = out.reshape(n, n_scales, dim // n_scales)  # [n, S, dim/S] view of out
    if quant == "bit":
        bits = np.unpackbits(np.asarray(q, dtype=np.uint8), axis=1, count=dim, bitorder="little")  # [n, dim]
        np.multiply(bits, 2, out=out, casting="unsafe")
        out -= 1
        segments *= scales[:, :, None]
    else:
        np.multiply(q.reshape(n, n_scales, -1), scales[:, :, None], out=segments)
    return out


def _dequantize_torch(q, scales, quant: str, dim: int):
    import torch

    n = q.shape[0]
    if quant == "bit":
        shifts = torch.arange(8, dtype=torch.uint8, device=q.device)  # [8]
        bits = ((q.to(torch.uint8)[:, :, None] >> shifts) & 1).reshape(n, -1)[:, :dim]  # [n, dim]
        values = bits.to(torch.float32) * 2 - 1  # +-1
    else:
        values = q.to(torch.float32)[:, :dim]  # [n, dim]
    if scales is None:
        if quant in SCALED:
            raise InputError(f"{quant} features need their scales to be dequantised")
        return values
    s = scales.to(torch.float32)
    s = s[:, None] if s.dim() == 1 else s  # [n, S]
    return (values.reshape(n, s.shape[1], -1) * s[:, :, None]).reshape(n, dim)
