"""Writing a store shard by shard: ``FeatureStore.open_for_write`` creates, resumes or reuses one.

Every file goes through ``mads_fast.atomic`` (temp name, fsync, rename, fsync the directory), a shard's done
marker is written last, and nothing in a shard depends on time or process, so shards may be written in any
order, by several processes at once (each its own shards), and a killed run that resumes ends byte-identical
to an uninterrupted one. Only ``finalize`` needs every shard; call it once, after all writers are done.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from mads_fast.atomic import TMP_PREFIX, atomic_dir, fsync_dir, remove_stale_temps
from mads_fast.errors import InputError
from mads_fast.quant import QUANT_OF_DTYPE, dequantize

from .files import MANIFEST, MEAN, OFFSET, STD, done_shards, load_npy, save_npy, shard_name, write_json
from .manifest import QUANTISED, Manifest, now_utc
from .reader import read_offset


class FeatureStore:
    """Writes a store shard by shard; ``open_for_write`` creates a new store or resumes a matching one."""

    def __init__(self, store_dir: Path, manifest: Manifest):
        self.path = Path(store_dir)
        self.manifest = manifest
        self.n = manifest.n
        self.dim = manifest.dim
        self.width = manifest.width
        self.dtype = manifest.dtype
        self.n_scales = manifest.n_scales
        self.shard_size = manifest.shard_size
        self.n_shards = manifest.n_shards
        self.done_shards: set = done_shards(self.path, self.n_shards)
        self.offset = read_offset(self.path, manifest)  # [dim] float32 or None

    @property
    def complete(self) -> bool:
        return bool(self.manifest.complete)

    @classmethod
    def open_for_write(cls, store_dir, *, model: dict, feature_spec: dict, dataset: dict, dim: int,
                       width: int, dtype: str, n_scales: int, shard_size: int) -> "FeatureStore":
        """Create ``store_dir`` with its manifest (complete=False), or resume/reuse a store made for the same
        request. A store made for a different request is an InputError naming the first key that differs."""
        store_dir = Path(store_dir)
        wanted = Manifest.new(model=model, feature_spec=feature_spec, dataset=dataset, dim=dim, width=width,
                              dtype=dtype, n_scales=n_scales, shard_size=shard_size)
        if not (store_dir / MANIFEST).exists():
            try:
                cls._create(store_dir, wanted)
            except (PermissionError, NotADirectoryError, FileExistsError) as exc:  # a bad store path, not a crash
                raise InputError(f"cannot create the feature store: {exc.strerror}", path=store_dir,
                                 param="store") from None
        manifest = Manifest.read(store_dir)
        difference = manifest.first_difference(wanted)
        if difference:
            raise InputError(f"store was made for a different request: {difference}; pass another store or "
                             f"delete {store_dir}", path=store_dir / MANIFEST, param="store")
        store = cls(store_dir, manifest)
        if not store.complete:
            # Leftovers of an interrupted write; shards without a done marker will be rewritten whole.
            remove_stale_temps(store_dir)
        return store

    @staticmethod
    def _create(store_dir: Path, manifest: Manifest) -> None:
        """The directory appears with its manifest in one rename, so a store never exists half-made."""
        parent = store_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        if store_dir.exists():
            if not store_dir.is_dir():
                raise InputError("exists and is not a directory; pass another store", path=store_dir, param="store")
            if any(not name.startswith(TMP_PREFIX) for name in os.listdir(store_dir)):
                raise InputError("directory exists, is not empty and has no manifest.json: not a feature store; "
                                 "pass another store or delete it", path=store_dir, param="store")
            remove_stale_temps(store_dir)
        # A creation killed before its rename leaves a staging folder beside the store: remove only those
        # (named after this store, writer gone), never anything else in a folder the user owns.
        remove_stale_temps(parent, only_for=store_dir.name)
        try:
            atomic_dir(store_dir, manifest.write)  # replaces store_dir only when it is an empty directory
        except OSError:
            if not (store_dir / MANIFEST).exists():  # a concurrent writer created it first: use theirs
                raise

    def write_offset(self, offset: np.ndarray) -> None:
        """Record the [dim] vector that int8/bit rows are quantised around (before the first shard).

        Rewriting the same offset is a no-op; a different one once shards exist is an error, since those
        shards were quantised around the old one.
        """
        offset = np.asarray(offset)
        if offset.shape != (self.dim,) or offset.dtype.kind != "f" or not np.all(np.isfinite(offset)):
            raise InputError(f"offset must be {self.dim} finite floats, got {offset.shape} {offset.dtype}",
                             path=self.path)
        offset = np.ascontiguousarray(offset, dtype=np.float32)
        if self.offset is not None and np.array_equal(self.offset, offset):
            return
        if self.complete or done_shards(self.path, self.n_shards):
            raise InputError("cannot change the offset of a store that already holds shards; delete it to "
                             "extract again", path=self.path)
        save_npy(self.path / OFFSET, offset)
        manifest = self.manifest.updated(offset=True)
        manifest.write(self.path)
        self.manifest, self.offset = manifest, offset

    def shard_range(self, shard: int) -> range:
        """Record positions of a shard: [shard * shard_size, min(N, (shard + 1) * shard_size))."""
        if not isinstance(shard, (int, np.integer)) or not 0 <= shard < self.n_shards:
            raise InputError(f"shard {shard!r} out of range: the store has shards 0..{self.n_shards - 1}",
                             path=self.path)
        return self.manifest.shard_rows(shard)

    def write_shard(self, shard: int, features: np.ndarray, scales: Optional[np.ndarray],
                    ids: list) -> None:
        """Write one whole shard: features [n, width] in the store dtype, scales [n, n_scales] (None for float
        dtypes), ids [n] str. Each file is renamed into place durably, then the done marker is written."""
        if self.complete:
            raise InputError("store is complete; nothing to write (delete it to extract again)", path=self.path)
        rows = self.shard_range(shard)
        n = len(rows)
        where = f"shard {shard}"
        if not isinstance(features, np.ndarray) or features.shape != (n, self.width) \
                or features.dtype != np.dtype(self.dtype):
            got = (features.shape, str(features.dtype)) if isinstance(features, np.ndarray) else type(features)
            raise InputError(f"features must be {self.dtype} of shape ({n}, {self.width}), got {got}",
                             path=self.path, where=where)
        if self.dtype in QUANTISED:
            if scales is None:
                raise InputError(f"{self.dtype} features need scales of shape ({n}, {self.n_scales})",
                                 path=self.path, where=where)
            scales = np.asarray(scales)
            if scales.shape != (n, self.n_scales) or scales.dtype.kind != "f":
                raise InputError(f"scales must be float of shape ({n}, {self.n_scales}), got "
                                 f"{scales.shape} {scales.dtype}", path=self.path, where=where)
            scales = np.ascontiguousarray(scales, dtype=np.float32)
            if not np.all(np.isfinite(scales)) or np.any(scales < 0):
                raise InputError("scales must be finite and >= 0", path=self.path, where=where)
        elif scales is not None:
            raise InputError(f"{self.dtype} features carry no scales; pass scales=None",
                             path=self.path, where=where)
        elif not np.all(np.isfinite(features)):
            raise InputError("features contain NaN or inf (the model produced them; check the dtype)",
                             path=self.path, where=where)
        ids = list(ids)
        if len(ids) != n or not all(isinstance(i, str) for i in ids):
            raise InputError(f"ids must be {n} strings, got {len(ids)}", path=self.path, where=where)
        features = np.ascontiguousarray(features)
        ids_array = np.array(ids, dtype=f"<U{max(1, max(len(i) for i in ids))}")  # [n]
        raw = dequantize(features, scales, QUANT_OF_DTYPE[self.dtype], self.dim)  # [n, dim] f32, what readers see
        if self.offset is not None:
            raw += self.offset
        total = raw.sum(axis=0, dtype=np.float64)  # [dim]
        squares = np.einsum("ij,ij->j", raw, raw, dtype=np.float64)  # [dim], for the dataset std

        marker = self.path / shard_name(shard, "done")
        if marker.exists():
            # Rewriting a finished shard: drop its marker first, so that a crash half-way never leaves a marker
            # over a mix of old and new files (old scales with new int8 features would be silently wrong).
            os.unlink(marker)
            fsync_dir(self.path)
        parts = [("features", features), ("ids", ids_array), ("sum", total), ("sumsq", squares)]
        if scales is not None:
            parts.insert(1, ("scales", scales))
        sizes = {}
        for part, array in parts:
            path = self.path / shard_name(shard, part)
            save_npy(path, array)
            sizes[part] = path.stat().st_size
        done = {"shard": int(shard), "rows": [rows.start, rows.stop], "bytes": sizes}
        write_json(marker, done)  # after every part's rename is durable
        self.done_shards.add(int(shard))

    def finalize(self) -> None:
        """Dataset mean and std from the shard sums; the manifest becomes complete=True. Idempotent."""
        if self.complete:
            return
        self.done_shards = done_shards(self.path, self.n_shards)  # other workers may have written shards
        missing = sorted(set(range(self.n_shards)) - self.done_shards)
        if missing:
            raise InputError(f"cannot finalise: {len(missing)} of {self.n_shards} shards are not written "
                             f"(first: {missing[0]}); rerun extract to resume", path=self.path)
        total = np.zeros(self.dim, dtype=np.float64)  # [dim]
        squares = np.zeros(self.dim, dtype=np.float64)  # [dim]
        for shard in range(self.n_shards):
            total += load_npy(self.path / shard_name(shard, "sum"), (self.dim,), np.float64, mmap=False)
            squares += load_npy(self.path / shard_name(shard, "sumsq"), (self.dim,), np.float64, mmap=False)
        mean = total / self.n
        save_npy(self.path / MEAN, mean)
        save_npy(self.path / STD, np.sqrt(np.maximum(squares / self.n - mean * mean, 0.0)))
        manifest = self.manifest.updated(complete=True, finished=now_utc(),
                                         counts={"records": self.n, "shards": self.n_shards})
        manifest.write(self.path)
        self.manifest = manifest
