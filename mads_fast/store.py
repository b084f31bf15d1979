"""The feature store: one pooled (projected, quantised) feature row per record, sharded on disk.

A store is a directory::

    manifest.json                   what was extracted (model, feature spec, dataset), dims, dtype, progress
    shard-00000.features.npy        [n, width]  float32 | float16 | int8 | uint8 (1-bit, little-endian packed)
    shard-00000.scales.npy          [n, n_scales] float32, one scale per layer segment (int8 and bit only)
    shard-00000.ids.npy             [n] fixed-width unicode: the records' stable ids
    shard-00000.sum.npy             [dim] float64: sum of the shard's dequantised rows (for the dataset mean)
    shard-00000.done                written last: the shard is complete only when this marker exists
    offset.npy                      [dim] float32, optional: the vector int8/bit rows were quantised around
    mean.npy                        [dim] float64, written by ``finalize``

A row's features are ``dequantize(q, scales) + offset``. The extractor quantises around an offset (the mean
pooled feature of the first records) because raw residual features carry "massive" dimensions that per-row
int8 would otherwise spend its whole range on; the offset is written once, before any shard, and reused on
resume, so resumed shards are quantised exactly like the first ones.

Every file is written under a temporary name, fsync'ed and renamed, so a killed extraction leaves only whole
files; shards without a done marker are rewritten on resume. ``np.save`` is deterministic and nothing inside
a shard depends on time or process, so an interrupted and resumed run ends byte-identical to an
uninterrupted one. On disk an int8 row costs ``dim + 4 * n_scales`` bytes (plus its id): 260 bytes at
D=256 with one scale, against 1024 bytes in float32.

Readers memory-map the shards and dequantise block by block: ``load_solver_input`` builds the centred,
L2-normalised int8 matrix the solver wants (N x D bytes; 213 MB for 52k x 4096) without ever holding the
float32 matrix (852 MB for the same store).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np

from mads_fast.errors import InputError

FORMAT = "mads-fast-feature-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MEAN = "mean.npy"
STD = "std.npy"
NORMALIZE = ("standardize", "center")
OFFSET = "offset.npy"
DTYPES = ("float32", "float16", "int8", "uint8")  # uint8 holds 1-bit features, 8 per byte
QUANTISED = ("int8", "uint8")                      # the dtypes that carry per-segment scales
SOLVER_DTYPES = ("int8", "float32")

# Temporary files: ".tmp~<host>~<pid>~<nonce>~<final name>". Host and pid let a resuming writer remove only
# the leftovers of processes that are gone: several extraction workers may write one store at the same time
# (Ray, DESIGN section 7), and deleting a live worker's temp file would make its rename fail.
_TMP = ".tmp~"
_HOST = socket.gethostname().replace("~", "-")
# Solver input is built in blocks of about this many float32 bytes: 64 MiB is 4096 rows at D=4096.
_BLOCK_BYTES = 64 << 20
PathLike = Union[str, "os.PathLike[str]"]


def shard_name(shard: int, part: str) -> str:
    """``shard-00012.features.npy`` and friends (part: features, scales, ids, sum, done)."""
    return f"shard-{shard:05d}.{part}" + ("" if part == "done" else ".npy")


# --------------------------------------------------------------------------------------------------------------
# dequantisation (NumPy; the same semantics as mads_fast.pooling.dequantize)


def dequantize(q: np.ndarray, scales: Optional[np.ndarray], dtype: str, dim: int,
               out: Optional[np.ndarray] = None) -> np.ndarray:
    """Stored rows back to float32 features.

    q:      [n, width] as stored; scales: [n, n_scales] float32 (None for float dtypes).
    int8:   q * scale, where scale s covers columns [s*dim/n_scales, (s+1)*dim/n_scales) (one per layer).
    uint8:  bit i of byte i//8 (little-endian) is feature i: 1 -> +scale, 0 -> -scale; pad bits ignored.
    float16/float32: cast.
    Returns out ([n, dim] float32), allocated when not given.
    """
    n = q.shape[0]
    if out is None:
        out = np.empty((n, dim), dtype=np.float32)  # [n, dim]
    if dtype in ("float32", "float16"):
        out[...] = q
        return out
    n_scales = scales.shape[1]
    seg = dim // n_scales
    segments = out.reshape(n, n_scales, seg)  # [n, S, dim/S] view of out
    if dtype == "int8":
        np.multiply(q.reshape(n, n_scales, seg), scales[:, :, None], out=segments)
    elif dtype == "uint8":
        bits = np.unpackbits(q, axis=1, count=dim, bitorder="little")  # [n, dim] of 0/1
        np.multiply(bits, 2, out=out, casting="unsafe")
        out -= 1
        segments *= scales[:, :, None]
    else:
        raise InputError(f"unknown store dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return out


def std_floor(std: np.ndarray) -> np.ndarray:
    """Per-dimension scale used to standardise: the std, floored at 1e-6 x its median so that a constant
    dimension (std 0, centred value 0) stays 0 instead of dividing by zero."""
    floor = max(float(np.median(std)) * 1e-6, np.finfo(np.float32).tiny)
    return np.maximum(std, floor)


def normalise(x: np.ndarray, mean: np.ndarray, std: Optional[np.ndarray], normalize: str) -> np.ndarray:
    """In place: centre; with ``normalize="standardize"`` also divide every dimension by its dataset std;
    then scale rows to unit L2 norm.

    Why standardise by default: on SmolLM2-135M layer 20 (mean-pooled, 96 Alpaca records) one dimension holds
    88% of the centred variance and correlates at 0.999 with 1/length (the first token's massive activation
    averaged over the sequence), so centred cosines mostly compare lengths (participation ratio of the centred
    covariance 1.16; 18.2 after standardising; pair-cosine std 0.82 against 0.23).
    """
    if normalize == "standardize":
        x -= mean.astype(x.dtype, copy=False)
        x /= std_floor(std).astype(x.dtype, copy=False)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # [n]
        np.divide(x, norms[:, None], out=x, where=norms[:, None] > 0)
        return x
    if normalize != "center":
        raise InputError(f"--normalize: unknown value {normalize!r} (choose from {', '.join(NORMALIZE)})")
    return centre_normalise(x, mean)


def centre_normalise(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """In place: subtract the dataset mean, scale rows to unit L2 norm (rows that centre to zero stay zero).

    x: [n, dim] float32; mean: [dim]. Centring matters: on SmolLM2-135M layer 20 the mean pairwise cosine of
    raw pooled features is 0.975 (one dimension carries 98% of the norm) and 0.07 after centring.
    """
    x -= mean.astype(x.dtype, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # [n]
    np.divide(x, norms[:, None], out=x, where=norms[:, None] > 0)  # in place: no block-sized temporary
    return x


def quantize_rows_int8(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Symmetric per-row int8: round(x * 127 / max|x|). The scale is dropped (cosine does not see it).

    x: [n, dim] float32, overwritten (the caller's scratch block: no second block-sized buffer);
    out: [n, dim] int8. Zero rows stay zero.
    """
    amax = np.maximum(x.max(axis=1), -x.min(axis=1))  # [n], max|x| without an |x| temporary
    scale = np.divide(np.float32(127.0), amax, out=np.zeros_like(amax), where=amax > 0)  # [n]
    x *= scale[:, None]
    np.rint(x, out=x)
    np.clip(x, -127, 127, out=x)  # rounding of x*127/max can reach 127.00001 but never 128
    out[...] = x
    return out


# --------------------------------------------------------------------------------------------------------------
# atomic files


def _fsync_file(fd: int) -> None:
    os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_path(path: Path) -> Path:
    return path.parent / f"{_TMP}{_HOST}~{os.getpid()}~{uuid.uuid4().hex[:8]}~{path.name}"


def _atomic_write(path: Path, write: Callable) -> None:
    """Write through a temp name in the same directory, fsync, rename over ``path``."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            _fsync_file(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _save_npy(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _write_json(path: Path, obj: dict) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(path, lambda f: f.write(data))


def _writer_is_gone(tmp_name: str) -> bool:
    """True when a temp file's writer is known dead (this host, pid not running) or the name is not ours."""
    parts = tmp_name[len(_TMP):].split("~", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return True
    host, pid = parts[0], int(parts[1])
    if host != _HOST:
        return False  # another machine's worker: we cannot tell whether it still runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _remove_stale_temps(directory: Path, only_for: Optional[str] = None) -> list[str]:
    removed = []
    for entry in os.scandir(directory):
        if only_for is not None and not entry.name.endswith("~" + only_for):
            continue
        if entry.name.startswith(_TMP) and _writer_is_gone(entry.name):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
            removed.append(entry.name)
    return removed


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------------
# manifest


def _jsonable(value, what: str):
    """The value as it will read back from JSON (tuples become lists, NumPy scalars plain numbers)."""

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o).__name__)

    try:
        return json.loads(json.dumps(value, sort_keys=True, default=default))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} cannot be stored in the manifest (not JSON): {exc}") from None


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_difference(old, new, key: str):
    """The dotted key of the first leaf where two JSON values differ, with both values; None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            sub = f"{key}.{k}"
            if k not in old:
                return sub, "<absent>", new[k]
            if k not in new:
                return sub, old[k], "<absent>"
            found = _first_difference(old[k], new[k], sub)
            if found:
                return found
        return None
    if old != new or type(old) is not type(new):
        return key, old, new
    return None


# What must match for an existing store to be resumed or reused. dataset.path is left out on purpose: the same
# data (same fingerprint) moved to another folder is still the same data.
_MATCH_KEYS = ("version", "model", "feature_spec", "dataset.fingerprint", "dataset.n_records", "dim", "width",
               "dtype", "n_scales", "shard_size")


def _lookup(manifest: dict, dotted: str):
    value = manifest
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return "<absent>"
        value = value[part]
    return value


def _read_manifest(store_dir: Path) -> dict:
    path = store_dir / MANIFEST
    if not store_dir.is_dir():
        raise InputError("feature store directory does not exist", path=store_dir)
    if not path.is_file():
        raise InputError("missing manifest: not a feature store, or its creation was interrupted", path=path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"corrupt manifest: {exc}", path=path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"not a feature store manifest (format is not {FORMAT!r})", path=path)
    if manifest.get("version") != FORMAT_VERSION:
        raise InputError(f"store format version {manifest.get('version')!r}, this reader understands "
                         f"{FORMAT_VERSION}; re-extract into a new --store", path=path)
    required = {"model": dict, "feature_spec": dict, "dataset": dict, "dim": int, "width": int, "dtype": str,
                "n_scales": int, "shard_size": int, "n_shards": int, "complete": bool}
    for key, kind in required.items():
        if not isinstance(manifest.get(key), kind):
            raise InputError(f"corrupt manifest: {key!r} missing or not {kind.__name__}", path=path)
    if not isinstance(manifest.get("offset", False), bool):
        raise InputError("corrupt manifest: 'offset' is not a bool", path=path)
    if not isinstance(manifest["dataset"].get("n_records"), int):
        raise InputError("corrupt manifest: 'dataset.n_records' missing or not int", path=path)
    _check_layout(manifest["dim"], manifest["width"], manifest["dtype"], manifest["n_scales"],
                  manifest["shard_size"], manifest["dataset"]["n_records"], path=path)
    if manifest["n_shards"] != math.ceil(manifest["dataset"]["n_records"] / manifest["shard_size"]):
        raise InputError("corrupt manifest: n_shards does not match n_records / shard_size", path=path)
    return manifest


def _check_layout(dim, width, dtype, n_scales, shard_size, n_records, path=None) -> None:
    """The dims, dtype and scales must describe a storable layout; raise InputError naming what is wrong."""
    if dtype not in DTYPES:
        raise InputError(f"unknown store dtype {dtype!r}; expected one of {', '.join(DTYPES)}", path=path)
    for name, value in (("dim", dim), ("width", width), ("shard_size", shard_size),
                        ("dataset.n_records", n_records)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}", path=path)
    if not isinstance(n_scales, (int, np.integer)) or isinstance(n_scales, bool) or n_scales < 0:
        raise InputError(f"n_scales must be a non-negative integer, got {n_scales!r}", path=path)
    if dtype in QUANTISED:
        if n_scales < 1 or dim % n_scales:
            raise InputError(f"{dtype} features need n_scales >= 1 dividing dim={dim} (one scale per layer "
                             f"segment), got n_scales={n_scales}", path=path)
    elif n_scales != 0:
        raise InputError(f"{dtype} features carry no scales: n_scales must be 0, got {n_scales}", path=path)
    expected = math.ceil(dim / 8) if dtype == "uint8" else dim
    if width != expected:
        raise InputError(f"{dtype} features of dim {dim} are stored {expected} columns wide, got width={width}",
                         path=path)


def _done_shards(store_dir: Path, n_shards: int) -> set[int]:
    return {s for s in range(n_shards) if (store_dir / shard_name(s, "done")).is_file()}


# --------------------------------------------------------------------------------------------------------------
# writer


class FeatureStore:
    """Writes a store shard by shard; ``open_for_write`` creates a new store or resumes a matching one."""

    def __init__(self, store_dir: Path, manifest: dict):
        self.path = store_dir
        self.manifest = manifest
        self.n = manifest["dataset"]["n_records"]
        self.dim = manifest["dim"]
        self.width = manifest["width"]
        self.dtype = manifest["dtype"]
        self.n_scales = manifest["n_scales"]
        self.shard_size = manifest["shard_size"]
        self.n_shards = manifest["n_shards"]
        self.done_shards: set[int] = _done_shards(store_dir, self.n_shards)
        self.offset = _load_offset(store_dir, manifest)  # [dim] float32 or None

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @classmethod
    def open_for_write(cls, store_dir: PathLike, *, model: dict, feature_spec: dict, dataset: dict, dim: int,
                       width: int, dtype: str, n_scales: int, shard_size: int) -> "FeatureStore":
        """Create ``store_dir`` with its manifest (complete=False), or resume/reuse a store made for the same
        request. A store made for a different request is an InputError naming the first key that differs."""
        store_dir = Path(store_dir)
        if not isinstance(model, dict) or not isinstance(model.get("id"), str) \
                or not isinstance(model.get("weights_sha256"), str):
            raise InputError(f"model must be {{'id': str, 'weights_sha256': str}}, got {model!r}")
        if not isinstance(dataset, dict) or not isinstance(dataset.get("fingerprint"), str) \
                or not isinstance(dataset.get("n_records"), (int, np.integer)):
            raise InputError(f"dataset must be {{'fingerprint': str, 'n_records': int, 'path': str}}, "
                             f"got {dataset!r}")
        if not isinstance(feature_spec, dict):
            raise InputError(f"feature_spec must be a dict, got {type(feature_spec).__name__}")
        _check_layout(dim, width, dtype, n_scales, shard_size, dataset["n_records"])
        n_records = int(dataset["n_records"])
        wanted = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": _jsonable(model, "model"),
            "feature_spec": _jsonable(feature_spec, "feature_spec"),
            "dataset": _jsonable(dataset, "dataset"),
            "dim": int(dim),
            "width": int(width),
            "dtype": dtype,
            "n_scales": int(n_scales),
            "shard_size": int(shard_size),
            "n_shards": math.ceil(n_records / int(shard_size)),
            "complete": False,
            "offset": False,
            "counts": {"records": 0, "shards": 0},
            "created": _now(),
            "finished": None,
        }
        if not (store_dir / MANIFEST).exists():
            try:
                cls._create(store_dir, wanted)
            except (PermissionError, NotADirectoryError, FileExistsError) as exc:  # a bad --store, not a crash
                raise InputError(f"cannot create the feature store: {exc.strerror}", path=store_dir) from None
        manifest = _read_manifest(store_dir)
        for key in _MATCH_KEYS:
            found = _first_difference(_lookup(manifest, key), _lookup(wanted, key), key)
            if found:
                where, old, new = found
                raise InputError(
                    f"store was made for a different request: {where} is {_short(old)} there but {_short(new)} "
                    f"here; pass another --store or delete {store_dir}", path=store_dir / MANIFEST)
        store = cls(store_dir, manifest)
        if not store.complete:
            # Leftovers of an interrupted write; shards without a done marker will be rewritten whole.
            _remove_stale_temps(store_dir)
        return store

    @staticmethod
    def _create(store_dir: Path, manifest: dict) -> None:
        """The directory appears with its manifest in one rename, so a store never exists half-made."""
        parent = store_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        if store_dir.exists():
            if not store_dir.is_dir():
                raise InputError("exists and is not a directory; pass another --store", path=store_dir)
            if any(not name.startswith(_TMP) for name in os.listdir(store_dir)):
                raise InputError("directory exists, is not empty and has no manifest.json: not a feature store; "
                                 "pass another --store or delete it", path=store_dir)
            _remove_stale_temps(store_dir)
        # A creation killed before its rename leaves a staging folder beside the store: remove only those
        # (named after this store, writer gone), never anything else in a folder the user owns.
        _remove_stale_temps(parent, only_for=store_dir.name)
        staging = _tmp_path(store_dir)
        staging.mkdir()
        try:
            _write_json(staging / MANIFEST, manifest)
            try:
                os.rename(staging, store_dir)  # replaces store_dir only when it is an empty directory
            except OSError:
                if not (store_dir / MANIFEST).exists():  # a concurrent writer created it first: use theirs
                    raise
            _fsync_dir(parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

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
        if self.complete or _done_shards(self.path, self.n_shards):
            raise InputError("cannot change the offset of a store that already holds shards; delete it to "
                             "extract again", path=self.path)
        _save_npy(self.path / OFFSET, offset)
        manifest = dict(self.manifest, offset=True)
        _write_json(self.path / MANIFEST, manifest)
        _fsync_dir(self.path)
        self.manifest, self.offset = manifest, offset

    def shard_range(self, shard: int) -> range:
        """Record positions of a shard: [shard * shard_size, min(N, (shard + 1) * shard_size))."""
        if not isinstance(shard, (int, np.integer)) or not 0 <= shard < self.n_shards:
            raise InputError(f"shard {shard!r} out of range: the store has shards 0..{self.n_shards - 1}",
                             path=self.path)
        start = int(shard) * self.shard_size
        return range(start, min(self.n, start + self.shard_size))

    def write_shard(self, shard: int, features: np.ndarray, scales: Optional[np.ndarray],
                    ids: list[str]) -> None:
        """Write one whole shard: features [n, width] in the store dtype, scales [n, n_scales] (None for float
        dtypes), ids [n] str. Files are renamed into place, fsync'ed, then the done marker is written."""
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
        raw = dequantize(features, scales, self.dtype, self.dim)  # [n, dim] float32, what readers return
        if self.offset is not None:
            raw += self.offset
        total = raw.sum(axis=0, dtype=np.float64)  # [dim]
        squares = np.einsum("ij,ij->j", raw, raw, dtype=np.float64)  # [dim], for the dataset std

        marker = self.path / shard_name(shard, "done")
        if marker.exists():
            # Rewriting a finished shard: drop its marker first, so that a crash half-way never leaves a marker
            # over a mix of old and new files (old scales with new int8 features would be silently wrong).
            os.unlink(marker)
            _fsync_dir(self.path)
        parts = [("features", features), ("ids", ids_array), ("sum", total), ("sumsq", squares)]
        if scales is not None:
            parts.insert(1, ("scales", scales))
        sizes = {}
        for part, array in parts:
            path = self.path / shard_name(shard, part)
            _save_npy(path, array)
            sizes[part] = path.stat().st_size
        _fsync_dir(self.path)  # the renames are durable before the marker says so
        done = {"shard": int(shard), "rows": [rows.start, rows.stop], "bytes": sizes}
        _write_json(marker, done)
        _fsync_dir(self.path)
        self.done_shards.add(int(shard))

    def finalize(self) -> None:
        """Dataset mean from the shard sums; the manifest becomes complete=True. Idempotent."""
        if self.complete:
            return
        self.done_shards = _done_shards(self.path, self.n_shards)  # other workers may have written shards
        missing = sorted(set(range(self.n_shards)) - self.done_shards)
        if missing:
            raise InputError(f"cannot finalise: {len(missing)} of {self.n_shards} shards are not written "
                             f"(first: {missing[0]}); rerun extract to resume", path=self.path)
        total = np.zeros(self.dim, dtype=np.float64)  # [dim]
        squares = np.zeros(self.dim, dtype=np.float64)  # [dim]
        for shard in range(self.n_shards):
            total += _load_npy(self.path / shard_name(shard, "sum"), (self.dim,), np.float64, mmap=False)
            squares += _load_npy(self.path / shard_name(shard, "sumsq"), (self.dim,), np.float64, mmap=False)
        mean = total / self.n
        _save_npy(self.path / MEAN, mean)
        _save_npy(self.path / STD, np.sqrt(np.maximum(squares / self.n - mean * mean, 0.0)))
        manifest = dict(self.manifest, complete=True, finished=_now(),
                        counts={"records": self.n, "shards": self.n_shards})
        _write_json(self.path / MANIFEST, manifest)
        _fsync_dir(self.path)
        self.manifest = manifest


# --------------------------------------------------------------------------------------------------------------
# reader


def _load_npy(path: Path, shape: tuple, dtype, mmap: bool = True) -> np.ndarray:
    """np.load with an InputError naming the file when it is missing, unreadable or of the wrong shape."""
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


def _load_offset(store_dir: Path, manifest: dict) -> Optional[np.ndarray]:
    if not manifest.get("offset", False):
        return None
    return _load_npy(store_dir / OFFSET, (manifest["dim"],), np.float32, mmap=False)


def load_offset(store_dir: PathLike) -> Optional[np.ndarray]:
    """The [dim] float32 quantisation offset of a store, or None when it has none (or does not exist yet)."""
    store_dir = Path(store_dir)
    if not (store_dir / MANIFEST).exists():
        return None
    return _load_offset(store_dir, _read_manifest(store_dir))


class FeatureReader:
    """A complete store, memory-mapped. Rows come back in dataset order, dequantised to float32."""

    def __init__(self, store_dir: PathLike):
        self.path = Path(store_dir)
        manifest = _read_manifest(self.path)
        self.manifest = manifest
        self.n = manifest["dataset"]["n_records"]
        self.dim = manifest["dim"]
        self.dtype = manifest["dtype"]
        self.shard_size = manifest["shard_size"]
        self.n_shards = manifest["n_shards"]
        if not manifest["complete"]:
            done = len(_done_shards(self.path, self.n_shards))
            raise InputError(f"store {self.path} is incomplete: {done} of {self.n_shards} shards; "
                             f"rerun extract to resume")
        self._features = []  # per shard, memory-mapped [n_s, width]
        self._scales = []    # per shard, memory-mapped [n_s, n_scales] or None
        for shard in range(self.n_shards):
            marker = self.path / shard_name(shard, "done")
            if not marker.is_file():
                raise InputError("missing shard done marker; rerun extract to rewrite the store", path=marker)
            n_s = min(self.n, (shard + 1) * self.shard_size) - shard * self.shard_size
            self._features.append(_load_npy(self.path / shard_name(shard, "features"),
                                            (n_s, manifest["width"]), self.dtype))
            self._scales.append(None if self.dtype not in QUANTISED else
                                _load_npy(self.path / shard_name(shard, "scales"),
                                          (n_s, manifest["n_scales"]), np.float32))
            if not (self.path / shard_name(shard, "ids")).is_file():
                raise InputError("missing shard file; rerun extract to rewrite the store",
                                 path=self.path / shard_name(shard, "ids"))
        self._mean = _load_npy(self.path / MEAN, (self.dim,), np.float64, mmap=False)  # [dim]
        self._std = _load_npy(self.path / STD, (self.dim,), np.float64, mmap=False)  # [dim]
        self._offset = _load_offset(self.path, manifest)  # [dim] float32 or None
        self._ids = None

    @property
    def ids(self) -> np.ndarray:
        """[N] the records' stable ids, in dataset order (fixed-width unicode)."""
        if self._ids is None:
            parts = []
            for shard in range(self.n_shards):
                n_s = self._features[shard].shape[0]
                parts.append(_load_npy(self.path / shard_name(shard, "ids"), (n_s,), str, mmap=False))
            self._ids = np.concatenate(parts)
        return self._ids

    def mean(self) -> np.ndarray:
        """[dim] float64 dataset mean of the dequantised features."""
        return self._mean.copy()

    def _fill(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Dequantise rows [start, stop) into out ([stop - start, dim] float32), across shard boundaries."""
        pos = start
        while pos < stop:
            shard, offset = divmod(pos, self.shard_size)
            end = min(stop, (shard + 1) * self.shard_size)
            rows = slice(offset, offset + end - pos)
            scales = None if self._scales[shard] is None else self._scales[shard][rows]
            dequantize(self._features[shard][rows], scales, self.dtype, self.dim, out=out[pos - start:end - start])
            pos = end
        if self._offset is not None:
            out += self._offset
        return out

    def std(self) -> np.ndarray:
        """[dim] float64 dataset standard deviation of the dequantised features."""
        return self._std.copy()

    def iter_blocks(self, raw: bool = True, block: int = 65536, dtype=np.float32,
                    normalize: str = "standardize") -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, rows [b, dim]) in dataset order, b = block except for the last one.

        raw=True: dequantised pooled features; raw=False: centred on the dataset mean, standardised per
        dimension unless ``normalize="center"``, and L2-normalised (see ``normalise``).
        """
        if not isinstance(block, (int, np.integer)) or block < 1:
            raise InputError(f"block must be a positive integer, got {block!r}")
        if normalize not in NORMALIZE:
            raise InputError(f"--normalize: unknown value {normalize!r} (choose from {', '.join(NORMALIZE)})")
        for start in range(0, self.n, block):
            stop = min(self.n, start + block)
            x = self._fill(start, stop, np.empty((stop - start, self.dim), dtype=np.float32))  # [b, dim]
            if not raw:
                normalise(x, self._mean, self._std, normalize)
            yield start, x.astype(dtype, copy=False)


def load_features(store_dir: PathLike, raw: bool = True,
                  normalize: str = "standardize") -> tuple[np.ndarray, np.ndarray]:
    """(ids [N], features [N, dim] float32) in dataset order.

    raw=True: the dequantised pooled features; raw=False: the solver input, centred on the dataset mean,
    standardised per dimension (``normalize="center"`` skips that) and L2-normalised.
    """
    if normalize not in NORMALIZE:
        raise InputError(f"--normalize: unknown value {normalize!r} (choose from {', '.join(NORMALIZE)})")
    reader = FeatureReader(store_dir)
    features = np.empty((reader.n, reader.dim), dtype=np.float32)  # [N, dim]
    reader._fill(0, reader.n, features)
    if not raw:
        normalise(features, reader._mean, reader._std, normalize)
    return reader.ids, features


def load_solver_input(store_dir: PathLike, dtype: str = "int8", normalize: str = "standardize") -> np.ndarray:
    """The centred, L2-normalised features the solver works on, [N, dim] int8 or float32.

    int8 is built in ~64 MiB float32 blocks and quantised per row (the row scale is dropped: cosine ignores
    it), so peak memory is N x dim bytes plus one block, never the N x dim float32 matrix.
    """
    if dtype not in SOLVER_DTYPES:
        raise InputError(f"solver input dtype must be one of {', '.join(SOLVER_DTYPES)}, got {dtype!r}")
    reader = FeatureReader(store_dir)
    out = np.empty((reader.n, reader.dim), dtype=np.dtype(dtype))  # [N, dim]
    block = max(1, _BLOCK_BYTES // (4 * reader.dim))
    for start, x in reader.iter_blocks(raw=False, block=block, normalize=normalize):
        if dtype == "int8":
            quantize_rows_int8(x, out[start:start + x.shape[0]])
        else:
            out[start:start + x.shape[0]] = x
    return out
