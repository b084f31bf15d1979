"""``manifest.json``: what a store holds, checked when read, and how it differs from a request.

A manifest names what was extracted (``model``, ``feature_spec``, ``dataset``), the layout of the rows
(``dim``, ``width``, ``dtype``, ``n_scales``, ``shard_size``, ``n_shards``) and the progress (``complete``,
``offset``, ``counts``, ``created``, ``finished``). A store is reused or resumed only for a request that
agrees on every key of ``MATCH_KEYS``; ``Manifest.first_difference`` names the first one that does not.
"""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np

from mads_fast.errors import InputError

from .files import MANIFEST, write_json

FORMAT = "mads-fast-feature-store"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16", "int8", "uint8")  # uint8 holds 1-bit features, 8 per byte
QUANTISED = ("int8", "uint8")                      # the dtypes that carry per-segment scales

# What must match for an existing store to be resumed or reused. dataset.path is left out on purpose: the same
# data (same fingerprint) moved to another folder is still the same data.
MATCH_KEYS = ("version", "model", "feature_spec", "dataset.fingerprint", "dataset.n_records", "dim", "width",
              "dtype", "n_scales", "shard_size")
_ABSENT = "<absent>"


class Difference(NamedTuple):
    """The first leaf where a store's manifest and a request disagree."""
    key: str          # dotted: "feature_spec.layers"
    stored: object    # the store's value, or "<absent>"
    requested: object # the request's value, or "<absent>"

    def __str__(self) -> str:
        return f"{self.key} is {_short(self.stored)} there but {_short(self.requested)} here"


class Manifest:
    """A validated manifest. ``data`` is the JSON object as it is (or will be) on disk."""

    def __init__(self, data: dict, path: Optional[Path] = None):
        _validate(data, path)
        self.data = data

    # ---- making, reading, writing

    @classmethod
    def new(cls, *, model: dict, feature_spec: dict, dataset: dict, dim: int, width: int, dtype: str,
            n_scales: int, shard_size: int) -> "Manifest":
        """The manifest of a store about to be created (complete=False); an InputError names what is wrong."""
        if not isinstance(model, dict) or not isinstance(model.get("id"), str) \
                or not isinstance(model.get("weights_sha256"), str):
            raise InputError(f"model must be {{'id': str, 'weights_sha256': str}}, got {model!r}")
        if not isinstance(dataset, dict) or not isinstance(dataset.get("fingerprint"), str) \
                or not isinstance(dataset.get("n_records"), (int, np.integer)):
            raise InputError(f"dataset must be {{'fingerprint': str, 'n_records': int, 'path': str}}, "
                             f"got {dataset!r}")
        if not isinstance(feature_spec, dict):
            raise InputError(f"feature_spec must be a dict, got {type(feature_spec).__name__}")
        check_layout(dim, width, dtype, n_scales, shard_size, dataset["n_records"])
        return cls({
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
            "n_shards": math.ceil(int(dataset["n_records"]) / int(shard_size)),
            "complete": False,
            "offset": False,
            "counts": {"records": 0, "shards": 0},
            "created": now_utc(),
            "finished": None,
        })

    @classmethod
    def read(cls, store_dir) -> "Manifest":
        """The manifest of ``store_dir``; an InputError names the file and the problem."""
        store_dir = Path(store_dir)
        path = store_dir / MANIFEST
        if not store_dir.is_dir():
            raise InputError("feature store directory does not exist", path=store_dir, param="store")
        if not path.is_file():
            raise InputError("missing manifest: not a feature store, or its creation was interrupted", path=path,
                             param="store")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"corrupt manifest: {exc}", path=path) from None
        return cls(data, path=path)

    @classmethod
    def read_if_any(cls, store_dir) -> Optional["Manifest"]:
        """The manifest of ``store_dir``, or None where there is none yet (a store still to be made)."""
        if not (Path(store_dir) / MANIFEST).exists():
            return None
        return cls.read(store_dir)

    def write(self, store_dir) -> None:
        write_json(Path(store_dir) / MANIFEST, self.data)

    def updated(self, **changes) -> "Manifest":
        """A copy with top-level keys replaced (complete=True, offset=True, ...)."""
        return Manifest(dict(self.data, **changes))

    # ---- what it says

    @property
    def n(self) -> int:
        return self.data["dataset"]["n_records"]

    @property
    def dim(self) -> int:
        return self.data["dim"]

    @property
    def width(self) -> int:
        return self.data["width"]

    @property
    def dtype(self) -> str:
        return self.data["dtype"]

    @property
    def n_scales(self) -> int:
        return self.data["n_scales"]

    @property
    def shard_size(self) -> int:
        return self.data["shard_size"]

    @property
    def n_shards(self) -> int:
        return self.data["n_shards"]

    @property
    def complete(self) -> bool:
        return self.data["complete"]

    @property
    def has_offset(self) -> bool:
        return self.data.get("offset", False)

    @property
    def model(self) -> dict:
        return self.data["model"]

    @property
    def feature_spec(self) -> dict:
        return self.data["feature_spec"]

    def shard_rows(self, shard: int) -> range:
        """Record positions of a shard: [shard * shard_size, min(N, (shard + 1) * shard_size))."""
        start = int(shard) * self.shard_size
        return range(start, min(self.n, start + self.shard_size))

    def __getitem__(self, key: str):
        return self.data[key]

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    # ---- matching a request

    def first_difference(self, request, keys: Sequence[str] = MATCH_KEYS) -> Optional[Difference]:
        """The first of ``keys`` (dotted) where this manifest and ``request`` (a Manifest, or a manifest-shaped
        dict holding at least those keys) differ, down to the leaf; None when they agree on all of them.

        Values compare as JSON reads them back, types included (1 is not 1.0, a list is not a tuple).
        """
        data = request.data if isinstance(request, Manifest) else request
        for key in keys:
            found = _first_leaf_difference(_lookup(self.data, key), _lookup(data, key), key)
            if found:
                return found
        return None


def _validate(manifest, path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"not a feature store manifest (format is not {FORMAT!r})", path=path)
    if manifest.get("version") != FORMAT_VERSION:
        raise InputError(f"store format version {manifest.get('version')!r}, this reader understands "
                         f"{FORMAT_VERSION}; re-extract into a new store", path=path)
    required = {"model": dict, "feature_spec": dict, "dataset": dict, "dim": int, "width": int, "dtype": str,
                "n_scales": int, "shard_size": int, "n_shards": int, "complete": bool}
    for key, kind in required.items():
        if not isinstance(manifest.get(key), kind):
            raise InputError(f"corrupt manifest: {key!r} missing or not {kind.__name__}", path=path)
    if not isinstance(manifest.get("offset", False), bool):
        raise InputError("corrupt manifest: 'offset' is not a bool", path=path)
    if not isinstance(manifest["dataset"].get("n_records"), int):
        raise InputError("corrupt manifest: 'dataset.n_records' missing or not int", path=path)
    check_layout(manifest["dim"], manifest["width"], manifest["dtype"], manifest["n_scales"],
                 manifest["shard_size"], manifest["dataset"]["n_records"], path=path)
    if manifest["n_shards"] != math.ceil(manifest["dataset"]["n_records"] / manifest["shard_size"]):
        raise InputError("corrupt manifest: n_shards does not match n_records / shard_size", path=path)


def check_layout(dim, width, dtype, n_scales, shard_size, n_records, path=None) -> None:
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


def _first_leaf_difference(old, new, key: str) -> Optional[Difference]:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            sub = f"{key}.{k}"
            if k not in old:
                return Difference(sub, _ABSENT, new[k])
            if k not in new:
                return Difference(sub, old[k], _ABSENT)
            found = _first_leaf_difference(old[k], new[k], sub)
            if found:
                return found
        return None
    if old != new or type(old) is not type(new):
        return Difference(key, old, new)
    return None


def _lookup(manifest: Mapping, dotted: str):
    value = manifest
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def now_utc() -> str:
    """The time stamp a manifest records: UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
