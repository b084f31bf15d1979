"""The solver input as one ``.npy`` file in the store, for workers that memory-map their own rows.

``solver_input_file(reader, dtype, normalize)`` writes ``solver-input.<dtype>.<normalize>.npy`` ([N, dim]
int8 or float32, ``build_solver_input``'s rows) block by block, through ``mads_fast.atomic`` (never a torn
file), and a ``.json`` beside it, written last, that says which store content it was built from (N, dim,
and digests of the ids, mean and std files). A later call with a matching ``.json`` reuses the file; any
other content rebuilds it. Memory: one ~64 MiB float32 block, never the [N, dim] matrix.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mads_fast.atomic import atomic_write
from mads_fast.errors import InputError

from .files import MEAN, STD, shard_name, write_json
from .normalise import _BLOCK_BYTES, check_normalize, check_solver_dtype, quantize_rows_int8

FORMAT = 1


def _digest(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def _key(reader, dtype: str, normalize: str) -> dict:
    ids = [reader.path / shard_name(s, "ids") for s in range(reader.n_shards)]
    return dict(format=FORMAT, n=int(reader.n), dim=int(reader.dim), dtype=dtype, normalize=normalize,
                stats=_digest([reader.path / MEAN, reader.path / STD]), ids=_digest(ids))


def solver_input_file(reader, dtype: str = "int8", normalize: str = "standardize") -> Path:
    """Path of the store's solver input ``.npy`` for (dtype, normalize), built (or reused when valid)."""
    check_solver_dtype(dtype)
    check_normalize(normalize)
    path = reader.path / f"solver-input.{dtype}.{normalize}.npy"
    meta = path.with_suffix(".json")
    key = _key(reader, dtype, normalize)
    if path.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text()) == key:
                return path
        except (OSError, ValueError):
            pass
    block = max(1, _BLOCK_BYTES // (4 * reader.dim))

    def write(f):
        np.lib.format.write_array_header_1_0(f, dict(descr=np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                     fortran_order=False, shape=(reader.n, reader.dim)))
        for _, x in reader.iter_blocks(raw=False, block=block, normalize=normalize):
            if dtype == "int8":
                x = quantize_rows_int8(x, np.empty(x.shape, dtype=np.int8))
            f.write(np.ascontiguousarray(x, dtype=np.dtype(dtype)).tobytes())

    try:
        if meta.is_file():
            meta.unlink()
        atomic_write(path, write)
        write_json(meta, key)
    except PermissionError as exc:
        raise InputError(f"cannot write the solver input beside the store ({exc.strerror}); the partition "
                         "workers read it from there: make the store writable", path=path, param="store") from None
    return path
