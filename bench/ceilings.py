"""The machine's own ceilings, measured before a benchmark so its figures can be read as fractions of them.

- ``matmul_rate``: a plain ``torch.matmul`` at a given shape and dtype (GFLOP/s): what the model's projections
  can reach on these cores.
- ``int8_gemm_rate``: ``torch._int_mm`` (int8 x int8 -> int32, oneDNN) at the solver's similarity-block shape
  (GOP/s); ``None`` with the reason where this torch has no CPU int8 GEMM.
- ``bare_forward_rate``: the decoder cut after a layer (no hooks, no head, no pooling, no tokenizer), random ids
  at fixed shapes: tokens/s of the forward pass alone, the ceiling for extraction at that depth.
- ``cpu_description``: the CPU model, core count and the ISA flags that matter here (AVX2, AVX-512, VNNI,
  BF16, AMX), for every row.
"""
from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager

ISA_PREFIXES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "avx_vnni", "amx")


def cpu_description() -> str:
    """``"<model>, <n> cores, <flags>"`` from /proc/cpuinfo (the platform's processor name elsewhere)."""
    model, flags = platform.processor() or "cpu", []
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                     model)
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    except OSError:
        pass
    isa = sorted(f for f in flags if f.startswith(ISA_PREFIXES))
    return f"{model}, {os.cpu_count()} cores, {' '.join(isa) or 'no AVX2/AVX-512 flags'}"


def _best_seconds(fn, min_seconds: float = 1.0, warmup: int = 2, max_repeats: int = 50) -> float:
    """Fastest of repeated calls (after ``warmup``), repeated for at least ``min_seconds`` in all."""
    for _ in range(warmup):
        fn()
    best, spent, n = float("inf"), 0.0, 0
    while (spent < min_seconds or n < 3) and n < max_repeats:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def matmul_rate(m: int, k: int, n: int, dtype: str) -> float:
    """GFLOP/s of ``[m, k] @ [k, n]`` in ``dtype`` ("fp32" | "bf16"), best of repeats."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dt)
    b = torch.randn(k, n, generator=g).to(dt)
    out = torch.empty(m, n, dtype=dt)
    with torch.inference_mode():
        sec = _best_seconds(lambda: torch.matmul(a, b, out=out))
    return 2.0 * m * k * n / sec / 1e9


def int8_gemm_rate(m: int, k: int, n: int):
    """``(GOP/s, None)`` of an int8 ``[m, k] @ [k, n]`` -> int32 (``torch._int_mm``), or ``(None, reason)``."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=g)
    try:
        with torch.inference_mode():
            torch._int_mm(a, b)
            sec = _best_seconds(lambda: torch._int_mm(a, b))
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        return None, f"torch._int_mm unavailable on CPU: {str(exc).splitlines()[0][:120]}"
    return 2.0 * m * k * n / sec / 1e9, None


@contextmanager
def truncated(decoder, n_layers: int):
    """``decoder`` with only its first ``n_layers`` decoder layers (restored on exit)."""
    import torch

    layers = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(layers)[:n_layers])
    try:
        yield decoder
    finally:
        decoder.layers = layers


def bare_forward_seconds(decoder, shapes, vocab: int, seed: int = 0, warmup: int = 1) -> float:
    """Seconds of one pass of the (already truncated) ``decoder`` over random-id batches of ``shapes`` [(B, T)]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, vocab, (b, t), generator=g) for b, t in shapes]
    with torch.inference_mode():
        for ids in batches[:warmup]:
            decoder(input_ids=ids, use_cache=False)
        t0 = time.perf_counter()
        for ids in batches:
            decoder(input_ids=ids, use_cache=False)
        return time.perf_counter() - t0


def bare_forward_rate(decoder, batch: int, length: int, vocab: int, min_seconds: float = 3.0) -> float:
    """Tokens/s of the truncated ``decoder`` at a fixed ``[batch, length]`` shape (best of repeats)."""
    import torch

    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        sec = _best_seconds(lambda: decoder(input_ids=ids, use_cache=False), min_seconds=min_seconds, warmup=1,
                            max_repeats=10)
    return batch * length / sec
