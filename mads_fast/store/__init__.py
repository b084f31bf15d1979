"""The feature store: one pooled (projected, quantised) feature row per record, sharded on disk.

A store is a directory::

    manifest.json                   what was extracted (model, feature spec, dataset), dims, dtype, progress
    offset.npy                      [dim] float32, int8/bit only: the vector rows were quantised around
    shard-00000.features.npy        [n, width]  float32 | float16 | int8 | uint8 (1-bit, little-endian packed)
    shard-00000.scales.npy          [n, n_scales] float32, one scale per layer segment (int8 and uint8 only)
    shard-00000.ids.npy             [n] fixed-width unicode: the records' stable ids
    shard-00000.sum.npy             [dim] float64: sum of the shard's dequantised rows (offset added)
    shard-00000.sumsq.npy           [dim] float64: sum of their squares
    shard-00000.done                JSON, written last: the shard's rows and file sizes; it is whole only then
    mean.npy, std.npy               [dim] float64 dataset mean and std, written by ``finalize`` from the sums

A row's features are ``dequantize(q, scales) + offset``. The extractor quantises around an offset (the mean
pooled feature of the first records) because raw residual features carry "massive" dimensions that per-row
int8 would otherwise spend its whole range on; the offset is written once, before any shard, and reused on
resume, so resumed shards are quantised exactly like the first ones. On disk an int8 row costs
``dim + 4 * n_scales`` bytes (plus its id): 260 bytes at D=256 with one scale, against 1024 in float32.

Modules, one job each:

- ``manifest``: the manifest's schema, its validation, and ``Manifest.first_difference(request)``;
- ``files``: the file names and the checked ``.npy`` / JSON I/O (through ``mads_fast.atomic``);
- ``writer``: ``FeatureStore``, shard by shard, resumable, safe for several processes writing their own shards;
- ``reader``: ``FeatureReader``, ``load_features``, ``load_solver_input``, memory-mapped;
- ``normalise``: centre + normalise (standardise, L2, int8), the solver input built block by block;
- ``solver_file``: that solver input as one cached ``.npy`` in the store, for workers that memory-map it.

Dequantisation is ``mads_fast.quant.dequantize``, the one the kernel's callers use too.
"""
from __future__ import annotations

from mads_fast.quant import dequantize

from .files import MANIFEST, MEAN, OFFSET, STD, shard_name
from .manifest import DTYPES, FORMAT, FORMAT_VERSION, MATCH_KEYS, QUANTISED, Difference, Manifest
from .normalise import (NORMALIZE, SOLVER_DTYPES, build_solver_input, centre_normalise, quantize_rows_int8,
                        std_floor)  # the function normalise stays mads_fast.store.normalise.normalise
from .reader import FeatureReader, load_features, load_offset, load_solver_input
from .writer import FeatureStore

__all__ = ["DTYPES", "Difference", "FORMAT", "FORMAT_VERSION", "FeatureReader", "FeatureStore", "MANIFEST",
           "MATCH_KEYS", "MEAN", "Manifest", "NORMALIZE", "OFFSET", "QUANTISED", "SOLVER_DTYPES", "STD",
           "build_solver_input", "centre_normalise", "dequantize", "load_features", "load_offset",
           "load_solver_input", "quantize_rows_int8", "shard_name", "std_floor"]
