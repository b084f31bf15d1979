"""How much memory the exact dense solver may spend on cached similarities (``memory_budget``).

The C++ engine builds the whole similarity matrix once (N columns of N rounded up to 64 float32 values,
``matrix_bytes``) when it fits the budget, and otherwise streams similarity columns from X, keeping at
most the budget's bytes of re-evaluated columns. The picks are the same either way; only time and memory
differ. The default caches the matrix when it fits in half of the available memory and 4 GiB, and else
keeps the streaming solver's 512 MiB of columns (so N = 52k, D = 256 stays under 2 GB of peak memory).
"""
from __future__ import annotations

from typing import Optional

from mads_fast.options import parse_memory_budget

STREAMING_BYTES = 512 << 20  # kept columns of the streaming solver by default (csrc: kCacheBytes)
MATRIX_CAP = 4 << 30  # the default never caches a larger matrix


def matrix_bytes(n: int) -> int:
    """Bytes of the cached similarity matrix for N rows: N columns of N rounded up to 64 float32 values."""
    return int(n) * ((int(n) + 63) // 64 * 64) * 4


def available_memory() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes, or None where there is none (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resolve_memory_budget(value, n: int) -> int:
    """Bytes for a solve over N rows: ``value`` as ``parse_memory_budget`` reads it, or for None/"auto" the
    matrix when it fits min(MemAvailable / 2, MATRIX_CAP), else STREAMING_BYTES."""
    parsed = parse_memory_budget(value)
    if parsed is not None:
        return parsed
    free = available_memory()
    limit = MATRIX_CAP if free is None else min(MATRIX_CAP, free // 2)
    need = matrix_bytes(n)
    return need if need <= limit else STREAMING_BYTES
