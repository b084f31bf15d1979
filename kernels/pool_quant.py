"""Fused masked pooling + quantisation of token activations (Triton), and its host launcher.

The specification is ``mads_fast.pooling.pool_quant_reference``; ``mads_fast.pooling.pool_quant``
validates arguments and calls ``pool_quant_triton`` here.

One pass over ``hidden`` (~99% of the bytes moved), one launch without projection:

- ``_pool_quant_kernel``: grid ``(B, cdiv(H, BLOCK_H))``, one program per (row, H-block). It streams
  only the row's valid tokens (padding is never read) in ``[BLOCK_T, BLOCK_H]`` tiles loaded along
  contiguous H (128-bit loads): a batch of 64 rows at H=576 is 64 x 5 = 320 programs for the 132 SMs
  of an H100 whatever the sequence length. A small batch of long rows (B=8 at H=576: 40 programs)
  leaves SMs idle; splitting T as well would fix that and is not done yet.
- ``fp32`` / ``fp16``: the quantisation is an element-wise cast, written straight to ``out``.
- ``int8`` / ``bit`` need a statistic of the whole row (absmax, mean |v|) that spans every H-block:
  each program leaves its pooled block in an fp32 scratch ``[B, H]`` and bumps a per-row arrival
  counter; the program that arrives last for a row quantises that row (``_quantize_row``). The scratch
  costs 8 bytes per pooled value (written, read back from L2) against 2 * T bytes of bf16 hidden read
  for it: 1.6% at T=256. The last program recomputes the statistic over the row in a fixed order, so results
  do not depend on which program finishes last.
- an optional ``offset [D]`` (a dataset mean) is subtracted from the pooled row in registers, or from
  the projected row as ``_quantize_row`` loads it: 4 bytes per column, read from L2, no extra pass.
- with a projection the whole pooled row is needed first: pool to the scratch, ``torch.matmul`` with
  ``R``, then ``_quantize_rows_kernel`` (one program per row, the same ``_quantize_row``).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

# Pool and quantisation modes as integer constexprs (one specialisation each).
_POOL_CODES = {"mean": 0, "max": 1, "last": 2, "active": 3}
_QUANT_CODES = {"fp32": 0, "fp16": 1, "int8": 2, "bit": 3}

# 32 tokens x 128 bf16 columns = 8 KiB in flight per program per step (Triton does not pipeline this
# loop: no cp.async in the sm_90 PTX), four 16-byte loads per thread, 256-byte contiguous runs per
# token row. Little's law for an H100: 3.35 TB/s x ~0.7 us latency = ~2.3 MB in flight; B=64 at H=576
# gives 320 programs x 8 KiB = 2.6 MB. sm_90 ptxas: 56 registers, no spills (16 tokens: 40 registers
# but half the bytes in flight; 64 tokens: 96 registers). Untuned on a GPU: bench/bench_kernel.py.
_BLOCK_T = 32
_BLOCK_H = 128
_BLOCK_Q = 512  # quantisation: columns per step; a multiple of 8 so bytes never straddle steps
_NUM_WARPS = 4


@triton.jit
def _load_centred(V_row, Off_ptr, cols, mask, HAS_OFFSET: tl.constexpr, CACHE: tl.constexpr):
    v = tl.load(V_row + cols, mask=mask, other=0.0, cache_modifier=CACHE)
    if HAS_OFFSET:
        v = v - tl.load(Off_ptr + cols, mask=mask, other=0.0)
    return v


@triton.jit
def _quantize_row(
    V_row,  # one fp32 row [n_cols]
    Off_ptr,  # offset [n_cols] fp32, subtracted before quantising when HAS_OFFSET
    Out_row,  # its output row [W]: W = n_cols, or ceil(n_cols / 8) bytes for bit
    Out_col_stride,
    Scale_ptr,  # its scale, fp32
    n_cols,
    QUANT: tl.constexpr,
    HAS_OFFSET: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    CACHE: tl.constexpr,  # ".cg" reads another program's writes from L2, never a stale L1 line
):
    # tl.cast, not n_cols.to(): Triton turns an int argument equal to 1 into a constant.
    n_cols_f = tl.cast(n_cols, tl.float32)
    if QUANT == 3:  # bit: dimension 8j + k is bit k of byte j, scale mean |v|
        total = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, n_cols, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            total += tl.abs(_load_centred(V_row, Off_ptr, cols, cols < n_cols, HAS_OFFSET, CACHE))
        scale = tl.math.div_rn(tl.sum(total, axis=0), n_cols_f)
        bit_idx = tl.arange(0, 8)  # [8]
        for start in range(0, n_cols, BLOCK_SIZE):
            byte_idx = start // 8 + tl.arange(0, BLOCK_SIZE // 8)  # [BLOCK_SIZE / 8]
            cols = byte_idx[:, None] * 8 + bit_idx[None, :]  # [BLOCK_SIZE / 8, 8]
            v = _load_centred(V_row, Off_ptr, cols, cols < n_cols, HAS_OFFSET, CACHE)
            bits = tl.where(v > 0.0, 1, 0) << bit_idx[None, :]  # masked tail: v = 0 -> bit 0
            packed = tl.sum(bits, axis=1)  # disjoint bits: sum == or
            tl.store(Out_row + byte_idx * Out_col_stride, packed.to(tl.uint8), mask=byte_idx * 8 < n_cols)
    elif QUANT == 2:  # int8: scale absmax / 127, round half away from zero
        absmax = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, n_cols, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            v = _load_centred(V_row, Off_ptr, cols, cols < n_cols, HAS_OFFSET, CACHE)
            absmax = tl.maximum(absmax, tl.abs(v))
        # div_rn: IEEE division like torch; plain '/' lowers to an approximate divide on NVIDIA.
        scale = tl.math.div_rn(tl.max(absmax, axis=0), 127.0)
        safe = tl.where(scale > 0.0, scale, 1.0)  # all-zero row: |v| / 1 = 0 -> q 0, scale 0
        for start in range(0, n_cols, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            mask = cols < n_cols
            v = _load_centred(V_row, Off_ptr, cols, mask, HAS_OFFSET, CACHE)
            mag = tl.minimum(tl.floor(tl.math.div_rn(tl.abs(v), safe) + 0.5), 127.0)
            q = tl.where(v < 0.0, -mag, mag)
            tl.store(Out_row + cols * Out_col_stride, q.to(tl.int8), mask=mask)
    else:  # fp32 / fp16: a cast
        scale = 1.0
        for start in range(0, n_cols, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            mask = cols < n_cols
            v = _load_centred(V_row, Off_ptr, cols, mask, HAS_OFFSET, CACHE)
            tl.store(Out_row + cols * Out_col_stride, v.to(Out_row.dtype.element_ty), mask=mask)
    tl.store(Scale_ptr, scale)


@triton.jit
def _pool_quant_kernel(
    X_ptr,  # hidden [B, T, H], unit stride along H
    X_row_stride,
    X_tok_stride,
    Len_ptr,  # lengths [B], int32 or int64
    Out_ptr,  # out [B, W]; with a projection: the fp32 pooled rows [B, H]
    Out_row_stride,
    Out_col_stride,
    Scale_ptr,  # scale [B] fp32 (unused when not WRITE_SCALE)
    Scale_stride,
    Scratch_ptr,  # int8 / bit: fp32 pooled rows [B, H], contiguous
    Count_ptr,  # int8 / bit: per-row arrival counter [B] int32, zeroed by the host
    Off_ptr,  # offset [H] fp32, subtracted from the pooled row when HAS_OFFSET
    n_tok,
    n_cols,
    POOL: tl.constexpr,
    QUANT: tl.constexpr,
    WRITE_SCALE: tl.constexpr,
    HAS_OFFSET: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    row = tl.program_id(0)
    col_block = tl.program_id(1)
    cols = col_block * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    col_mask = cols < n_cols
    # Clamped so that a bad length on the device can never read outside the row (the host checks
    # CPU lengths; checking device lengths would cost a sync per call).
    n_valid = tl.minimum(tl.maximum(tl.load(Len_ptr + row).to(tl.int32), 1), n_tok)
    x_row = X_ptr + row.to(tl.int64) * X_row_stride

    if POOL == 2:  # last: one token row
        pooled = tl.load(x_row + (n_valid - 1).to(tl.int64) * X_tok_stride + cols, mask=col_mask,
                         other=0.0).to(tl.float32)
    else:
        # Accumulate a [BLOCK_T, BLOCK_H] tile and reduce over tokens once at the end: no cross-thread
        # reduction inside the loop.
        if POOL == 1:
            acc = tl.full((BLOCK_T, BLOCK_H), float("-inf"), tl.float32)
        else:
            acc = tl.zeros((BLOCK_T, BLOCK_H), tl.float32)
        for tok_start in range(0, n_valid, BLOCK_T):
            toks = tok_start + tl.arange(0, BLOCK_T)  # [BLOCK_T]
            mask = (toks < n_valid)[:, None] & col_mask[None, :]  # [BLOCK_T, BLOCK_H]
            ptrs = x_row + toks[:, None].to(tl.int64) * X_tok_stride + cols[None, :]
            x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_H]
            if POOL == 0:
                acc += x
            elif POOL == 1:
                acc = tl.maximum(acc, tl.where(mask, x, float("-inf")))
            else:
                acc += tl.where(mask & (x > 0.0), 1.0, 0.0)
        if POOL == 1:
            pooled = tl.max(acc, axis=0)
        else:
            pooled = tl.math.div_rn(tl.sum(acc, axis=0), n_valid.to(tl.float32))
    if HAS_OFFSET:
        pooled = pooled - tl.load(Off_ptr + cols, mask=col_mask, other=0.0)

    if QUANT < 2:  # fp32 / fp16: cast and store this block
        out_ptrs = Out_ptr + row.to(tl.int64) * Out_row_stride + cols * Out_col_stride
        tl.store(out_ptrs, pooled.to(Out_ptr.dtype.element_ty), mask=col_mask)
        if WRITE_SCALE:
            tl.store(Scale_ptr + row * Scale_stride, 1.0, mask=col_block == 0)
    else:  # int8 / bit: park the block; the row's last program to arrive quantises the row
        scratch_row = Scratch_ptr + row.to(tl.int64) * n_cols
        tl.store(scratch_row + cols, pooled, mask=col_mask)
        # The pattern of CUTLASS's split-K semaphore: all threads store, barrier, one thread releases
        # with an acq_rel GPU-scope atomic; the last arriver's acquire (then the barrier Triton puts
        # after broadcasting the result) makes every block's stores visible to its L2 (.cg) loads.
        tl.debug_barrier()
        arrived = tl.atomic_add(Count_ptr + row, 1, sem="acq_rel", scope="gpu")
        if arrived == tl.num_programs(1) - 1:
            _quantize_row(scratch_row, Off_ptr, Out_ptr + row.to(tl.int64) * Out_row_stride, Out_col_stride,
                          Scale_ptr + row * Scale_stride, n_cols, QUANT, False, BLOCK_Q, ".cg")


@triton.jit
def _quantize_rows_kernel(
    V_ptr,  # projected rows [B, D] fp32
    V_row_stride,
    Out_ptr,  # out [B, W]
    Out_row_stride,
    Out_col_stride,
    Scale_ptr,  # scale [B] fp32
    Scale_stride,
    Off_ptr,  # offset [D] fp32, subtracted before quantising when HAS_OFFSET
    n_cols,
    QUANT: tl.constexpr,
    HAS_OFFSET: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    row = tl.program_id(0)
    _quantize_row(V_ptr + row.to(tl.int64) * V_row_stride, Off_ptr, Out_ptr + row.to(tl.int64) * Out_row_stride,
                  Out_col_stride, Scale_ptr + row * Scale_stride, n_cols, QUANT, HAS_OFFSET, BLOCK_SIZE, "")


def pool_quant_triton(hidden, lengths, pool, quant, projection, out, scale_out, offset=None):
    """Launch the kernels: ``hidden [B, T, H]``, ``lengths [B]`` (same device), optional fp32
    ``projection [H, P]`` and fp32 contiguous ``offset [D]`` (subtracted from the pooled, projected
    row before quantising); writes ``out [B, W]`` and ``scale_out [B]`` in place (views allowed).

    Arguments are assumed validated by ``mads_fast.pooling.pool_quant``.
    """
    # Triton launches on the current CUDA device, whatever the pointers: hidden on cuda:1 while cuda:0 is
    # current would hand cuda:1 addresses to kernels on cuda:0. The interpreter runs CPU tensors as they are.
    with torch.cuda.device(hidden.device) if hidden.is_cuda else contextlib.nullcontext():
        _launch(hidden, lengths, pool, quant, projection, out, scale_out, offset)


def _launch(hidden, lengths, pool, quant, projection, out, scale_out, offset):
    n_rows, n_tok, n_cols = hidden.shape
    if hidden.stride(2) != 1:
        # Coalesced loads need unit stride along H; hooked activations already have it.
        hidden = hidden.contiguous()
    grid = (n_rows, triton.cdiv(n_cols, _BLOCK_H))
    if projection is None:
        target, code, write_scale = out, _QUANT_CODES[quant], True
    else:
        target = torch.empty(n_rows, n_cols, dtype=torch.float32, device=hidden.device)  # pooled [B, H]
        code, write_scale = _QUANT_CODES["fp32"], False
    if code >= 2:
        scratch = torch.empty(n_rows, n_cols, dtype=torch.float32, device=hidden.device)  # [B, H]
        count = torch.zeros(n_rows, dtype=torch.int32, device=hidden.device)  # [B]
    else:
        scratch, count = target, lengths  # unused by the fp32 / fp16 specialisations
    pool_offset = offset if projection is None else None  # with a projection it applies to [B, P]
    _pool_quant_kernel[grid](
        hidden, hidden.stride(0), hidden.stride(1),
        lengths,
        target, target.stride(0), target.stride(1),
        scale_out, scale_out.stride(0),
        scratch, count,
        scale_out if pool_offset is None else pool_offset,  # a dummy pointer when there is no offset
        n_tok, n_cols,
        POOL=_POOL_CODES[pool], QUANT=code, WRITE_SCALE=write_scale, HAS_OFFSET=pool_offset is not None,
        BLOCK_T=_BLOCK_T, BLOCK_H=_BLOCK_H, BLOCK_Q=_BLOCK_Q, num_warps=_NUM_WARPS,
    )
    if projection is None:
        return
    # fp32 GEMM [B, H] x [H, P], kept fp32 (no TF32) to match the reference: at B=64, H=3072, P=256
    # it is 50 MFLOP, a few microseconds.
    projected = torch.matmul(target, projection)  # [B, P]
    _quantize_rows_kernel[(n_rows,)](
        projected, projected.stride(0),
        out, out.stride(0), out.stride(1),
        scale_out, scale_out.stride(0),
        scale_out if offset is None else offset,
        projected.shape[1],
        QUANT=_QUANT_CODES[quant], HAS_OFFSET=offset is not None, BLOCK_SIZE=_BLOCK_Q, num_warps=_NUM_WARPS,
    )
