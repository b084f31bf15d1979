"""Reading a complete store: shards memory-mapped, rows dequantised block by block, in dataset order.

``FeatureReader.rows(positions)`` reads only the rows asked for (a report's sample of 4,096 out of
millions touches 4,096 rows); ``iter_blocks`` streams every row. Nothing here writes, so any number of
processes may read one store.
"""
from __future__ import annotations

from pathlib import Path
import os
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from mads_fast.errors import InputError
from mads_fast.quant import QUANT_OF_DTYPE, dequantize

from .files import MEAN, OFFSET, STD, done_shards, load_npy, shard_name
from .manifest import QUANTISED, Manifest
from .normalise import build_solver_input, check_normalize, check_solver_dtype, normalise


def read_offset(store_dir: Path, manifest: Manifest) -> Optional[np.ndarray]:
    """The [dim] float32 offset a manifest says its store has, or None."""
    if not manifest.has_offset:
        return None
    return load_npy(Path(store_dir) / OFFSET, (manifest.dim,), np.float32, mmap=False)


def load_offset(store_dir) -> Optional[np.ndarray]:
    """The [dim] float32 quantisation offset of a store, or None when it has none (or does not exist yet)."""
    manifest = Manifest.read_if_any(store_dir)
    return None if manifest is None else read_offset(store_dir, manifest)


class FeatureReader:
    """A complete store, memory-mapped. Rows come back in dataset order, dequantised to float32."""

    def __init__(self, store_dir):
        self.path = Path(store_dir)
        manifest = Manifest.read(self.path)
        self.manifest = manifest
        self.n = manifest.n
        self.dim = manifest.dim
        self.dtype = manifest.dtype
        self.shard_size = manifest.shard_size
        self.n_shards = manifest.n_shards
        self._quant = QUANT_OF_DTYPE[self.dtype]
        if not manifest.complete:
            done = len(done_shards(self.path, self.n_shards))
            raise InputError(f"store {self.path} is incomplete: {done} of {self.n_shards} shards; "
                             f"rerun extract to resume", param="store")
        self._features = []  # per shard, memory-mapped [n_s, width]
        self._scales = []    # per shard, memory-mapped [n_s, n_scales] or None
        for shard in range(self.n_shards):
            marker = self.path / shard_name(shard, "done")
            if not marker.is_file():
                raise InputError("missing shard done marker; rerun extract to rewrite the store", path=marker)
            n_s = len(manifest.shard_rows(shard))
            self._features.append(load_npy(self.path / shard_name(shard, "features"),
                                           (n_s, manifest.width), self.dtype))
            self._scales.append(None if self.dtype not in QUANTISED else
                                load_npy(self.path / shard_name(shard, "scales"),
                                         (n_s, manifest.n_scales), np.float32))
            if not (self.path / shard_name(shard, "ids")).is_file():
                raise InputError("missing shard file; rerun extract to rewrite the store",
                                 path=self.path / shard_name(shard, "ids"))
        self._mean = load_npy(self.path / MEAN, (self.dim,), np.float64, mmap=False)  # [dim]
        self._std = load_npy(self.path / STD, (self.dim,), np.float64, mmap=False)  # [dim]
        self._offset = read_offset(self.path, manifest)  # [dim] float32 or None
        self._ids = None

    @property
    def ids(self) -> np.ndarray:
        """[N] the records' stable ids, in dataset order (fixed-width unicode)."""
        if self._ids is None:
            parts = []
            for shard in range(self.n_shards):
                n_s = self._features[shard].shape[0]
                parts.append(load_npy(self.path / shard_name(shard, "ids"), (n_s,), str, mmap=False))
            self._ids = np.concatenate(parts)
        return self._ids

    def mean(self) -> np.ndarray:
        """[dim] float64 dataset mean of the dequantised features."""
        return self._mean.copy()

    def std(self) -> np.ndarray:
        """[dim] float64 dataset standard deviation of the dequantised features."""
        return self._std.copy()

    def _fill(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Dequantise rows [start, stop) into out ([stop - start, dim] float32), across shard boundaries."""
        pos = start
        while pos < stop:
            shard, offset = divmod(pos, self.shard_size)
            end = min(stop, (shard + 1) * self.shard_size)
            rows = slice(offset, offset + end - pos)
            scales = None if self._scales[shard] is None else self._scales[shard][rows]
            dequantize(self._features[shard][rows], scales, self._quant, self.dim, out=out[pos - start:end - start])
            pos = end
        if self._offset is not None:
            out += self._offset
        return out

    def rows(self, positions, raw: bool = True, normalize: str = "standardize") -> np.ndarray:
        """[len(positions), dim] float32: the rows at ``positions`` (ascending or not), reading only those.

        raw=False: normalised like ``iter_blocks(raw=False)``."""
        positions = np.asarray(positions, dtype=np.int64)  # [m]
        if positions.ndim != 1 or (positions.size and (positions.min() < 0 or positions.max() >= self.n)):
            raise InputError(f"positions must be a 1-D array of row numbers in [0, {self.n})", path=self.path)
        check_normalize(normalize)
        out = np.empty((len(positions), self.dim), dtype=np.float32)  # [m, dim]
        shards = positions // self.shard_size  # [m]
        for shard in np.unique(shards):
            picked = np.flatnonzero(shards == shard)  # where these rows go in out
            local = positions[picked] - shard * self.shard_size
            scales = None if self._scales[shard] is None else self._scales[shard][local]
            out[picked] = dequantize(self._features[shard][local], scales, self._quant, self.dim)
        if self._offset is not None:
            out += self._offset
        if not raw:
            normalise(out, self._mean, self._std, normalize)
        return out

    def iter_blocks(self, raw: bool = True, block: int = 65536, dtype=np.float32,
                    normalize: str = "standardize") -> Iterator[tuple]:
        """Yield (start, rows [b, dim]) in dataset order, b = block except for the last one.

        raw=True: dequantised pooled features; raw=False: centred on the dataset mean, standardised per
        dimension unless ``normalize="center"``, and L2-normalised (see ``normalise``).
        """
        if not isinstance(block, (int, np.integer)) or block < 1:
            raise InputError(f"block must be a positive integer, got {block!r}")
        check_normalize(normalize)
        for start in range(0, self.n, block):
            stop = min(self.n, start + block)
            x = self._fill(start, stop, np.empty((stop - start, self.dim), dtype=np.float32))  # [b, dim]
            if not raw:
                normalise(x, self._mean, self._std, normalize)
            yield start, x.astype(dtype, copy=False)


def load_features(store_dir: Union[str, "os.PathLike[str]"], raw: bool = True,
                  normalize: str = "standardize") -> Tuple[np.ndarray, np.ndarray]:
    """(ids [N], features [N, dim] float32) in dataset order.

    raw=True: the dequantised pooled features; raw=False: the solver input, centred on the dataset mean,
    standardised per dimension (``normalize="center"`` skips that) and L2-normalised.
    """
    check_normalize(normalize)
    reader = FeatureReader(store_dir)
    features = np.empty((reader.n, reader.dim), dtype=np.float32)  # [N, dim]
    reader._fill(0, reader.n, features)
    if not raw:
        normalise(features, reader._mean, reader._std, normalize)
    return reader.ids, features


def load_solver_input(store_dir, dtype: str = "int8", normalize: str = "standardize") -> np.ndarray:
    """The centred, normalised features the solver works on, [N, dim] int8 or float32 (see ``normalise``).

    int8 is built in ~64 MiB float32 blocks and quantised per row (the row scale is dropped: cosine ignores
    it), so peak memory is N x dim bytes plus one block, never the N x dim float32 matrix.
    """
    check_solver_dtype(dtype)
    check_normalize(normalize)
    return build_solver_input(FeatureReader(store_dir), dtype=dtype, normalize=normalize)
