"""The store's file names and the checked ``.npy`` / JSON I/O that the writer and the reader share."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mads_fast.atomic import atomic_write
from mads_fast.errors import InputError

MANIFEST = "manifest.json"
OFFSET = "offset.npy"
MEAN = "mean.npy"
STD = "std.npy"
SHARD_PARTS = ("features", "scales", "ids", "sum", "sumsq", "done")


def shard_name(shard: int, part: str) -> str:
    """``shard-00012.features.npy`` and friends (part: features, scales, ids, sum, sumsq, done)."""
    return f"shard-{shard:05d}.{part}" + ("" if part == "done" else ".npy")


def done_shards(store_dir: Path, n_shards: int) -> set:
    """The shards whose done marker exists: those are whole."""
    return {s for s in range(n_shards) if (store_dir / shard_name(s, "done")).is_file()}


def save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def write_json(path: Path, obj: dict) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def load_npy(path: Path, shape: tuple, dtype, mmap: bool = True) -> np.ndarray:
    """np.load with an InputError naming the file when it is missing, unreadable or of the wrong shape.

    dtype ``str`` accepts any fixed-width unicode (the ids)."""
    if not path.is_file():
        raise InputError("missing shard file; rerun extract to rewrite the store", path=path)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"corrupt .npy file: {exc}", path=path) from None
    dtype_ok = array.dtype.kind == "U" if dtype is str else array.dtype == np.dtype(dtype)
    if array.shape != shape or not dtype_ok:
        expected = "unicode" if dtype is str else np.dtype(dtype).name
        raise InputError(f"corrupt shard file: shape {array.shape} {array.dtype}, expected {shape} {expected}",
                         path=path)
    return array
