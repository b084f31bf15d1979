"""Pool token activations into one feature row per example, optionally project, then quantise.

This module is the specification of the fused kernel in ``mads_fast.kernels.pool_quant`` and the CPU
path: ``pool_quant_reference`` is a few lines of plain torch, and every fast path is tested against
it on the same inputs. ``pool_quant`` validates its arguments and dispatches to one or the other.

Steps, all accumulated in float32:

1. pool over the valid tokens of each row (``hidden`` is right-padded: token ``t`` of row ``b`` is
   valid iff ``t < lengths[b]``): ``mean``, ``max``, ``last`` (token ``lengths[b] - 1``) or
   ``active`` (fraction of valid tokens on which a unit is > 0; meant for MLP neurons);
2. optionally project: ``pooled [B, H] @ R [H, P]`` with ``R = make_projection(H, P, seed)``, and
   optionally subtract an ``offset [D]`` (a dataset mean: int8 around the mean keeps the small
   dimensions that a few "massive" ones would otherwise round to zero);
3. quantise: ``fp32``, ``fp16``, ``int8`` with a per-row scale, or ``bit`` (1 bit per dimension,
   packed 8 per byte). Every mode returns a float32 scale per row so that ``dequantize`` is uniform:
   1.0 for the float modes, ``absmax / 127`` for int8, ``mean |v|`` for bit.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numpy as np
import torch

from mads_fast.errors import BackendUnavailableError, InputError
from mads_fast.options import POOLS
from mads_fast.quant import QUANTS, dequantize, out_width  # noqa: F401  (dequantize: re-exported for callers)

BACKENDS = ("auto", "triton", "torch")

_OUT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8, "bit": torch.uint8}
_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)
_INT8_MAX = 127.0


def out_dtype(quant: str) -> torch.dtype:
    """Element type of the quantised output (the scale is always float32)."""
    _check_choice(quant, QUANTS, "quant")
    return _OUT_DTYPES[quant]


def make_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """Seeded Gaussian random projection ``R [in_dim, out_dim]``, entries N(0, 1) / sqrt(out_dim).

    Generated on the CPU in float32 with its own ``torch.Generator`` so that the same seed gives the
    same matrix on every device and machine; the 1/sqrt(out_dim) scale keeps squared norms unbiased
    (E ||x R||^2 = ||x||^2), so projected cosines approximate the original ones (Johnson-Lindenstrauss).
    """
    for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"projection {name} must be a positive integer, got {value!r}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    r = torch.randn(int(in_dim), int(out_dim), generator=gen, dtype=torch.float32)  # [H, P]
    return r / math.sqrt(out_dim)


def pool_quant_reference(hidden: torch.Tensor, lengths: torch.Tensor, pool: str, quant: str,
                         projection: Optional[torch.Tensor] = None,
                         offset: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Plain torch pool -> (project) -> (subtract offset) -> quantise. Returns ``(q [B, W], scale [B] fp32)``."""
    x = hidden.float()  # [B, T, H]
    n_rows, n_tok, _ = x.shape
    lengths = lengths.to(device=x.device, dtype=torch.int64)  # [B]
    valid = torch.arange(n_tok, device=x.device)[None, :] < lengths[:, None]  # [B, T]
    if pool == "mean":
        pooled = torch.where(valid[:, :, None], x, 0.0).sum(dim=1) / lengths[:, None]  # [B, H]
    elif pool == "max":
        pooled = torch.where(valid[:, :, None], x, -math.inf).amax(dim=1)  # [B, H]
    elif pool == "last":
        pooled = x[torch.arange(n_rows, device=x.device), lengths - 1]  # [B, H]
    elif pool == "active":
        fires = valid[:, :, None] & (x > 0)  # [B, T, H]
        pooled = fires.sum(dim=1, dtype=torch.float32) / lengths[:, None]  # [B, H]
    else:
        _check_choice(pool, POOLS, "pool")
    if projection is not None:
        pooled = pooled @ projection.to(device=x.device, dtype=torch.float32)  # [B, P]
    if offset is not None:
        pooled = pooled - offset.to(device=x.device, dtype=torch.float32)  # [B, D]
    return quantize_reference(pooled, quant)


def quantize_reference(values: torch.Tensor, quant: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantise float32 rows ``values [B, D]``. Returns ``(q [B, W], scale [B] float32)``.

    int8: ``scale = absmax / 127``; ``q = sign(v) * floor(|v| / scale + 0.5)`` clamped to [-127, 127]
    (round half away from zero, in float32, the same operations as the kernel); an all-zero row
    gets scale 0 and q 0. bit: ``v > 0`` packed 8 per byte, little-endian bit order (dimension
    ``8j + k`` is bit ``k`` of byte ``j``), scale ``mean |v|`` so that dequantised rows are +-scale.
    """
    v = values.float()  # [B, D]
    n_rows, dim = v.shape
    if quant in ("fp32", "fp16"):
        return v.to(_OUT_DTYPES[quant]), torch.ones(n_rows, dtype=torch.float32, device=v.device)
    if quant == "int8":
        scale = v.abs().amax(dim=1) / _INT8_MAX  # [B]
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero row: |v| / 1 = 0 -> q 0
        mag = torch.floor(v.abs() / safe[:, None] + 0.5).clamp_(max=_INT8_MAX)  # [B, D]
        return (torch.sign(v) * mag).to(torch.int8), scale
    if quant == "bit":
        scale = v.abs().mean(dim=1)  # [B]
        width = out_width(dim, "bit")
        bits = torch.zeros(n_rows, width * 8, dtype=torch.int32, device=v.device)  # [B, 8W], tail bits 0
        bits[:, :dim] = (v > 0).to(torch.int32)
        weights = 1 << torch.arange(8, dtype=torch.int32, device=v.device)  # [8]
        packed = (bits.view(n_rows, width, 8) * weights).sum(dim=2)  # [B, W]
        return packed.to(torch.uint8), scale
    _check_choice(quant, QUANTS, "quant")
    raise AssertionError("unreachable")


@torch.no_grad()  # features are never differentiated; a hook may see tensors that require grad
def pool_quant(hidden: torch.Tensor, lengths: torch.Tensor, pool: str, quant: str,
               projection: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None,
               scale_out: Optional[torch.Tensor] = None, backend: str = "auto",
               offset: Optional[torch.Tensor] = None):
    """Pool, project, centre and quantise ``hidden [B, T, H]``; write into ``out [B, W]`` / ``scale_out [B]``.

    ``out`` and ``scale_out`` may be preallocated views (a column slice of a wider buffer, say):
    strides are honoured and nothing outside them is touched. Returns ``(out, scale_out)``.
    ``backend="auto"`` runs the Triton kernel when ``hidden`` is on CUDA or ``TRITON_INTERPRET=1``
    is set, else the torch reference; ``"triton"`` / ``"torch"`` force one. ``offset [D]`` (D = P with
    a projection, else H) is subtracted from every pooled row before quantising.
    """
    _check_choice(pool, POOLS, "pool")
    _check_choice(quant, QUANTS, "quant")
    _check_choice(backend, BACKENDS, "backend")
    _check_hidden(hidden, lengths)
    n_rows, _, n_cols = hidden.shape
    dim = n_cols
    if projection is not None:
        if not isinstance(projection, torch.Tensor) or projection.ndim != 2 or projection.shape[0] != n_cols:
            got = tuple(projection.shape) if isinstance(projection, torch.Tensor) else type(projection).__name__
            raise InputError(f"projection must be a [H={n_cols}, P] tensor, got {got}")
        if not projection.is_floating_point():
            raise InputError(f"projection must be floating point, got {projection.dtype}")
        dim = projection.shape[1]
    if offset is not None:
        if not isinstance(offset, torch.Tensor) or offset.shape != (dim,) or not offset.is_floating_point():
            got = tuple(offset.shape) if isinstance(offset, torch.Tensor) else type(offset).__name__
            raise InputError(f"offset must be a floating [D={dim}] tensor, got {got}")
    width = out_width(dim, quant)
    if out is None:
        out = torch.empty(n_rows, width, dtype=out_dtype(quant), device=hidden.device)
    else:
        _check_buffer(out, (n_rows, width), out_dtype(quant), hidden.device, "out")
    if scale_out is None:
        scale_out = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
    else:
        _check_buffer(scale_out, (n_rows,), torch.float32, hidden.device, "scale_out")

    if _use_triton(hidden, backend):
        from mads_fast.kernels.pool_quant import pool_quant_triton

        if projection is not None:
            projection = projection.to(device=hidden.device, dtype=torch.float32)
        if offset is not None:
            offset = offset.to(device=hidden.device, dtype=torch.float32).contiguous()
        pool_quant_triton(hidden, lengths.to(hidden.device), pool, quant, projection, out, scale_out, offset)
    else:
        q, scale = pool_quant_reference(hidden, lengths, pool, quant, projection, offset)
        out.copy_(q)
        scale_out.copy_(scale)
    return out, scale_out


def _use_triton(hidden: torch.Tensor, backend: str) -> bool:
    interpret = os.environ.get("TRITON_INTERPRET", "") == "1"
    if backend == "torch":
        return False
    can_run = hidden.is_cuda or (interpret and hidden.device.type == "cpu")
    if backend == "auto":
        return can_run and _triton_importable()
    if not can_run:
        raise BackendUnavailableError(
            f"the Triton pool_quant kernel needs a CUDA tensor (hidden is on {hidden.device}); "
            "use backend='torch', or set TRITON_INTERPRET=1 to run the kernel on the CPU for testing")
    if not _triton_importable():
        raise BackendUnavailableError("the Triton pool_quant kernel needs the 'triton' package: pip install triton")
    return True


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _check_choice(value, choices, name):
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}", param=name)


def _check_hidden(hidden, lengths):
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3:
        got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise InputError(f"hidden must be a [B, T, H] tensor, got {got}")
    if hidden.dtype not in _FLOAT_INPUTS:
        raise InputError(f"hidden must be float32, float16 or bfloat16, got {hidden.dtype}")
    n_rows, n_tok, n_cols = hidden.shape
    if n_rows == 0 or n_tok == 0 or n_cols == 0:
        raise InputError(f"hidden must have B, T, H >= 1, got {tuple(hidden.shape)}")
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (n_rows,):
        got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise InputError(f"lengths must be a [B={n_rows}] tensor, got {got}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise InputError(f"lengths must be int32 or int64, got {lengths.dtype}")
    # Checking values on a device tensor would cost a host sync per hooked layer per batch; the
    # kernel clamps lengths to [1, T] instead, so a bad device length cannot read out of bounds.
    if lengths.device.type == "cpu":
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > n_tok:
            raise InputError(f"lengths must lie in [1, T={n_tok}], got min {lo} and max {hi}")


def _check_buffer(buf, shape, dtype, device, name):
    if not isinstance(buf, torch.Tensor) or tuple(buf.shape) != shape:
        got = tuple(buf.shape) if isinstance(buf, torch.Tensor) else type(buf).__name__
        raise InputError(f"{name} must have shape {shape}, got {got}")
    if buf.dtype != dtype:
        raise InputError(f"{name} must be {dtype}, got {buf.dtype}")
    if buf.device != device:
        raise InputError(f"{name} must be on {device} like hidden, got {buf.device}")
