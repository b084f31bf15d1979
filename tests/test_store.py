"""The feature store against an independent NumPy reference of its layout and math.

Features are synthetic and quantised here, by the test, with a quantiser written independently of the store;
the expected dequantised values are computed element by element from the stored bytes' definition.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mads_fast import atomic
from mads_fast.errors import InputError
from mads_fast.store import FeatureReader, FeatureStore, Manifest, load_features, load_offset, load_solver_input
from mads_fast.store import normalise as normalise_mod
from mads_fast.store import writer as writer_mod

MODEL = {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "weights_sha256": "ab" * 32}
SPEC = {"layers": [10, 20], "source": "residual", "pool": "mean", "proj_dim": None, "proj_seed": 0,
        "quant": "int8", "max_length": 512, "template": "chat"}


# ---------------------------------------------------------------------------------------------------------------
# independent reference: quantise (test side) and dequantise from the layout's definition


def quantise(x: np.ndarray, dtype: str, n_scales: int):
    """x [n, dim] float32 -> (stored [n, width], scales [n, n_scales] or None)."""
    n, dim = x.shape
    if dtype in ("float32", "float16"):
        return x.astype(dtype), None
    seg = dim // n_scales
    scales = np.empty((n, n_scales), dtype=np.float32)
    if dtype == "int8":
        q = np.empty((n, dim), dtype=np.int8)
        for s in range(n_scales):
            part = x[:, s * seg:(s + 1) * seg]
            amax = np.abs(part).max(axis=1)
            scales[:, s] = amax / 127
            safe = np.where(amax > 0, scales[:, s], 1)
            q[:, s * seg:(s + 1) * seg] = np.round(part / safe[:, None])
        return q, scales
    # 1 bit: sign, scaled by the mean |x| of the segment; bit j of the row sits in byte j // 8, bit j % 8.
    q = np.zeros((n, (dim + 7) // 8), dtype=np.uint8)
    for j in range(dim):
        q[:, j // 8] |= (x[:, j] > 0).astype(np.uint8) << (j % 8)
    for s in range(n_scales):
        scales[:, s] = np.abs(x[:, s * seg:(s + 1) * seg]).mean(axis=1)
    return q, scales


def reference_dequantise(q: np.ndarray, scales, dtype: str, dim: int) -> np.ndarray:
    n = q.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    if dtype in ("float32", "float16"):
        return q.astype(np.float32)
    seg = dim // scales.shape[1]
    for j in range(dim):
        scale = scales[:, j // seg]
        if dtype == "int8":
            out[:, j] = q[:, j].astype(np.float32) * scale
        else:
            bit = (q[:, j // 8] >> (j % 8)) & 1
            out[:, j] = np.where(bit == 1, scale, -scale)
    return out


LAYOUTS = {
    # dtype: (dim, width, n_scales)
    "float32": (24, 24, 0),
    "float16": (24, 24, 0),
    "int8": (24, 24, 3),      # three layer segments of 8 columns
    "uint8": (45, 6, 3),      # 45 bits: 5 full bytes + 5 bits of padding; segments of 15 bits
}


def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Anisotropic like real activations: one massive dimension and a shared offset on top of noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x += np.float32(0.5)
    x[:, 1] += np.float32(40.0)
    return x


def ids_for(n: int) -> list[str]:
    return [f"{i:06d}-{(i * 2654435761) % 2**32:08x}" for i in range(n)]


def open_store(path, layout="int8", n=23, shard_size=5, **over):
    """Open with the dims of LAYOUTS[layout]; ``over`` replaces any keyword (dtype included)."""
    dtype = layout
    dim, width, n_scales = LAYOUTS[layout]
    kwargs = dict(model=MODEL, feature_spec=SPEC, dataset={"fingerprint": "f" * 16, "n_records": n,
                                                           "path": "/data/alpaca.jsonl"},
                  dim=dim, width=width, dtype=dtype, n_scales=n_scales, shard_size=shard_size)
    kwargs.update(over)
    return FeatureStore.open_for_write(path, **kwargs)


def write_all(store: FeatureStore, q, scales, ids, shards=None):
    for shard in (range(store.n_shards) if shards is None else shards):
        rows = store.shard_range(shard)
        store.write_shard(shard, q[rows.start:rows.stop],
                          None if scales is None else scales[rows.start:rows.stop], ids[rows.start:rows.stop])


def offset_for(dim: int) -> np.ndarray:
    """A quantisation offset like the extractor's: roughly the mean, massive dimension included."""
    offset = np.full(dim, 0.25, dtype=np.float32)
    offset[1] = 39.0
    return offset


def build(path, dtype="int8", n=23, shard_size=5, seed=0, offset=None):
    """A finished store of synthetic rows, quantised around ``offset`` when given."""
    dim, _, n_scales = LAYOUTS[dtype]
    x = synthetic(n, dim, seed)
    q, scales = quantise(x if offset is None else x - offset, dtype, n_scales)
    ids = ids_for(n)
    store = open_store(path, dtype, n, shard_size)
    if offset is not None:
        store.write_offset(offset)
    write_all(store, q, scales, ids)
    store.finalize()
    return q, scales, ids


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store except the manifest (whose timestamps differ between runs)."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "manifest.json"}


# ---------------------------------------------------------------------------------------------------------------
# round trip, order, mean, normalisation


@pytest.mark.parametrize("with_offset", [False, True], ids=["plain", "offset"])
@pytest.mark.parametrize("dtype", list(LAYOUTS))
def test_round_trip_in_dataset_order_across_shards(tmp_path, dtype, with_offset):
    # 23 records in shards of 5: four full shards and a last one of 3.
    dim = LAYOUTS[dtype][0]
    offset = offset_for(dim) if with_offset else None
    q, scales, ids = build(tmp_path / "s", dtype, offset=offset)
    expected = reference_dequantise(q, scales, dtype, dim)  # [23, dim]
    if with_offset:
        expected += offset

    got_ids, got = load_features(tmp_path / "s")
    assert got.dtype == np.float32 and got.shape == (23, dim)
    assert list(got_ids) == ids
    np.testing.assert_array_equal(got, expected)  # q * scale in float32 is exact in both

    reader = FeatureReader(tmp_path / "s")
    assert reader.n == 23 and reader.dim == dim and reader.n_shards == 5
    # blocks of 7 cross every shard boundary (5, 10, 15, 20)
    blocks = list(reader.iter_blocks(block=7))
    assert [start for start, _ in blocks] == [0, 7, 14, 21]
    assert [b.shape[0] for _, b in blocks] == [7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), expected)


@pytest.mark.parametrize("with_offset", [False, True], ids=["plain", "offset"])
@pytest.mark.parametrize("dtype", list(LAYOUTS))
def test_mean_is_the_mean_of_dequantised_features(tmp_path, dtype, with_offset):
    dim = LAYOUTS[dtype][0]
    offset = offset_for(dim) if with_offset else np.zeros(dim, np.float32)
    q, scales, _ = build(tmp_path / "s", dtype, offset=offset if with_offset else None)
    expected = (reference_dequantise(q, scales, dtype, dim) + offset).astype(np.float64).mean(axis=0)
    mean = FeatureReader(tmp_path / "s").mean()
    assert mean.dtype == np.float64
    # the massive dimension (+40, or +scale = mean|x| ~ 3.5 in 1 bit) survives: a zero mean would fail here
    assert mean[1] > 1
    np.testing.assert_allclose(mean, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("normalize", ["center", "standardize"])
@pytest.mark.parametrize("dtype", ["float32", "int8", "uint8"])
def test_normalised_rows_are_unit_and_centred(tmp_path, dtype, normalize):
    q, scales, _ = build(tmp_path / "s", dtype)
    raw = reference_dequantise(q, scales, dtype, LAYOUTS[dtype][0]).astype(np.float64)
    centred = raw - raw.mean(axis=0)
    if normalize == "standardize":  # every dimension to unit variance first: the massive one no longer rules
        centred = centred / raw.std(axis=0)
    expected = centred / np.linalg.norm(centred, axis=1, keepdims=True)

    np.testing.assert_allclose(FeatureReader(tmp_path / "s").std(), raw.std(axis=0), rtol=1e-6)
    _, got = load_features(tmp_path / "s", raw=False, normalize=normalize)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    blocks = np.concatenate([b for _, b in FeatureReader(tmp_path / "s").iter_blocks(raw=False, block=4,
                                                                                       normalize=normalize)])
    np.testing.assert_allclose(blocks, expected, atol=2e-5)


def test_unknown_normalize_is_an_input_error(tmp_path):
    build(tmp_path / "s", "float32")
    with pytest.raises(InputError, match="^normalize: "):
        load_features(tmp_path / "s", raw=False, normalize="whiten")


def test_rows_that_centre_to_zero_stay_zero(tmp_path):
    a = np.arange(1, 25, dtype=np.float32)
    x = np.stack([a, -a, np.zeros(24, np.float32), np.zeros(24, np.float32)])  # mean is exactly 0
    store = open_store(tmp_path / "s", "float32", n=4, shard_size=3)
    write_all(store, x, None, ids_for(4))
    store.finalize()
    _, got = load_features(tmp_path / "s", raw=False, normalize="center")
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[2:], 0.0)
    np.testing.assert_allclose(got[0], a / np.linalg.norm(a), rtol=1e-6)
    _, got = load_features(tmp_path / "s", raw=False)  # standardised: every dimension weighs the same
    np.testing.assert_array_equal(got[2:], 0.0)
    np.testing.assert_allclose(got[0], np.full(24, 1 / np.sqrt(24)), rtol=1e-6)


def test_solver_input_int8_keeps_cosine(tmp_path, monkeypatch):
    n, dim = 300, 256
    x = synthetic(n, dim, seed=3)
    store = FeatureStore.open_for_write(
        tmp_path / "s", model=MODEL, feature_spec=SPEC, dataset={"fingerprint": "g", "n_records": n, "path": ""},
        dim=dim, width=dim, dtype="float32", n_scales=0, shard_size=64)
    write_all(store, x, None, ids_for(n))
    store.finalize()

    reference = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    f32 = load_solver_input(tmp_path / "s", dtype="float32", normalize="center")
    assert f32.dtype == np.float32 and f32.shape == (n, dim)
    np.testing.assert_allclose(f32, reference, atol=1e-5)

    # Blocks of 7 rows (not a divisor of the 64-row shards) must stitch to the same matrix as one block.
    monkeypatch.setattr(normalise_mod, "_BLOCK_BYTES", 7 * 4 * dim)
    q = load_solver_input(tmp_path / "s", dtype="int8", normalize="center")
    monkeypatch.setattr(normalise_mod, "_BLOCK_BYTES", 1 << 30)
    np.testing.assert_array_equal(q, load_solver_input(tmp_path / "s", dtype="int8", normalize="center"))
    assert q.dtype == np.int8 and q.shape == (n, dim)
    np.testing.assert_array_equal(np.abs(q.astype(np.int32)).max(axis=1), 127)  # full int8 range per row
    qf = q.astype(np.float64)
    cosine = np.einsum("ij,ij->i", qf, reference) / np.linalg.norm(qf, axis=1)
    assert cosine.min() >= 0.999


def test_solver_input_rejects_other_dtypes(tmp_path):
    build(tmp_path / "s", "int8")
    with pytest.raises(InputError, match="float16"):
        load_solver_input(tmp_path / "s", dtype="float16")


# ---------------------------------------------------------------------------------------------------------------
# manifest


def test_manifest_records_the_request(tmp_path):
    build(tmp_path / "s", "uint8")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["model"] == MODEL and manifest["feature_spec"] == SPEC
    assert manifest["dataset"] == {"fingerprint": "f" * 16, "n_records": 23, "path": "/data/alpaca.jsonl"}
    assert (manifest["dim"], manifest["width"], manifest["dtype"], manifest["n_scales"]) == (45, 6, "uint8", 3)
    assert (manifest["shard_size"], manifest["n_shards"], manifest["complete"]) == (5, 5, True)
    assert manifest["counts"] == {"records": 23, "shards": 5}
    assert manifest["created"] and manifest["finished"]


MISMATCHES = [
    ("model.id", {"model": {"id": "other", "weights_sha256": "ab" * 32}}),
    ("model.weights_sha256", {"model": {"id": MODEL["id"], "weights_sha256": "cd" * 32}}),
    ("feature_spec.layers", {"feature_spec": dict(SPEC, layers=[10, 21])}),
    ("feature_spec.pool", {"feature_spec": dict(SPEC, pool="max")}),
    ("feature_spec.extra", {"feature_spec": dict(SPEC, extra=1)}),
    ("dataset.fingerprint", {"dataset": {"fingerprint": "e" * 16, "n_records": 23, "path": ""}}),
    ("dataset.n_records", {"dataset": {"fingerprint": "f" * 16, "n_records": 24, "path": ""}}),
    ("dim", {"dim": 48, "width": 48}),
    ("dtype", {"dtype": "float32", "n_scales": 0}),
    ("n_scales", {"n_scales": 4}),
    ("shard_size", {"shard_size": 6}),
]


@pytest.mark.parametrize("complete", [False, True])
@pytest.mark.parametrize("key, change", MISMATCHES, ids=[k for k, _ in MISMATCHES])
def test_manifest_mismatch_names_the_key(tmp_path, key, change, complete):
    if complete:
        build(tmp_path / "s", "int8")
    else:
        open_store(tmp_path / "s", "int8")
    with pytest.raises(InputError) as info:
        open_store(tmp_path / "s", "int8", **change)
    message = str(info.value)
    assert f"{key} is" in message and "another store" in message and "\n" not in message
    assert info.value.param == "store"  # the CLI writes it as --store


def test_offset_is_kept_and_cannot_change_under_shards(tmp_path):
    assert load_offset(tmp_path / "nothing yet") is None
    store = open_store(tmp_path / "s", "int8")
    assert load_offset(tmp_path / "s") is None
    offset = offset_for(24)
    store.write_offset(offset.astype(np.float64))  # any float input, stored as float32
    got = load_offset(tmp_path / "s")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, offset)
    with pytest.raises(InputError, match="24 finite floats"):
        store.write_offset(offset[:5])
    q, scales = quantise(synthetic(23, 24) - offset, "int8", 3)
    write_all(store, q, scales, ids_for(23), shards=[0])
    resumed = open_store(tmp_path / "s", "int8")
    np.testing.assert_array_equal(resumed.offset, offset)
    resumed.write_offset(offset)  # the same offset again (what a resumed extraction does): fine
    with pytest.raises(InputError, match="cannot change the offset"):
        resumed.write_offset(offset + 1)
    np.testing.assert_array_equal(load_offset(tmp_path / "s"), offset)


def test_same_data_at_another_path_resumes(tmp_path):
    store = open_store(tmp_path / "s", "int8")
    q, scales = quantise(synthetic(23, 24), "int8", 3)
    write_all(store, q, scales, ids_for(23), shards=[0, 1])
    again = open_store(tmp_path / "s", "int8", dataset={"fingerprint": "f" * 16, "n_records": 23,
                                                        "path": "/moved/alpaca.jsonl"})
    assert again.done_shards == {0, 1} and not again.complete and again.n_shards == 5


def test_complete_store_is_returned_complete(tmp_path):
    q, scales, ids = build(tmp_path / "s", "int8")
    store = open_store(tmp_path / "s", "int8")
    assert store.complete and store.done_shards == set(range(5))
    with pytest.raises(InputError, match="complete"):
        store.write_shard(0, q[:5], scales[:5], ids[:5])


@pytest.mark.parametrize("change, words", [
    ({"dtype": "int4"}, "unknown store dtype"),
    ({"n_scales": 5}, "n_scales"),           # 5 does not divide 24
    ({"width": 3}, "width"),
    ({"shard_size": 0}, "shard_size"),
    ({"model": {"id": "m"}}, "weights_sha256"),
])
def test_bad_layout_is_an_input_error(tmp_path, change, words):
    with pytest.raises(InputError, match=words):
        open_store(tmp_path / "s", "int8", **change)
    assert not (tmp_path / "s").exists()


def test_refuses_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a feature store"):
        open_store(tmp_path / "s", "int8")
    assert os.listdir(tmp_path / "s") == ["notes.txt"]


def test_store_under_a_file_is_an_input_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot create the feature store"):
        open_store(tmp_path / "file" / "s", "int8")


def test_write_shard_checks_its_input(tmp_path):
    store = open_store(tmp_path / "s", "int8")
    q, scales = quantise(synthetic(23, 24), "int8", 3)
    ids = ids_for(23)
    with pytest.raises(InputError, match=r"int8 of shape \(5, 24\)"):
        store.write_shard(0, q[:5].astype(np.int16), scales[:5], ids[:5])
    with pytest.raises(InputError, match=r"shape \(3, 24\)"):
        store.write_shard(4, q[:5], scales[:5], ids[:5])  # the last shard holds 3 rows
    with pytest.raises(InputError, match="scales"):
        store.write_shard(0, q[:5], None, ids[:5])
    with pytest.raises(InputError, match="5 strings"):
        store.write_shard(0, q[:5], scales[:5], ids[:4])
    with pytest.raises(InputError, match="out of range"):
        store.shard_range(5)
    assert store.done_shards == set() and not list((tmp_path / "s").glob("shard-*"))


# ---------------------------------------------------------------------------------------------------------------
# reading errors


def test_reading_an_incomplete_store_says_how_far_it_got(tmp_path):
    store = open_store(tmp_path / "s", "int8")
    q, scales = quantise(synthetic(23, 24), "int8", 3)
    write_all(store, q, scales, ids_for(23), shards=[0, 3, 4])
    with pytest.raises(InputError, match="incomplete: 3 of 5 shards; rerun extract to resume"):
        load_features(tmp_path / "s")
    with pytest.raises(InputError, match="cannot finalise: 2 of 5 shards"):
        store.finalize()


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        FeatureReader(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"manifest\.json: missing manifest"):
        FeatureReader(tmp_path / "empty")

    build(tmp_path / "s", "int8")
    manifest = tmp_path / "s" / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(good[:40])
    with pytest.raises(InputError, match=r"manifest\.json: corrupt manifest"):
        FeatureReader(tmp_path / "s")
    manifest.write_text(good)

    scales = tmp_path / "s" / "shard-00002.scales.npy"
    data = scales.read_bytes()
    scales.write_bytes(data[:-8])
    with pytest.raises(InputError, match=r"shard-00002\.scales\.npy: corrupt"):
        FeatureReader(tmp_path / "s")
    scales.unlink()
    with pytest.raises(InputError, match=r"shard-00002\.scales\.npy: missing shard file"):
        FeatureReader(tmp_path / "s")
    scales.write_bytes(data)
    (tmp_path / "s" / "shard-00004.ids.npy").unlink()
    with pytest.raises(InputError, match=r"shard-00004\.ids\.npy: missing"):
        FeatureReader(tmp_path / "s")

    build(tmp_path / "o", "int8", offset=offset_for(24))
    (tmp_path / "o" / "offset.npy").unlink()  # without it every row would silently shift
    with pytest.raises(InputError, match=r"offset\.npy: missing"):
        FeatureReader(tmp_path / "o")


# ---------------------------------------------------------------------------------------------------------------
# resume and byte identity


def test_bytes_per_example_int8_is_dim_plus_4(tmp_path):
    n, dim = 40, 256
    x = synthetic(n, dim)
    q, scales = quantise(x, "int8", 1)
    store = FeatureStore.open_for_write(
        tmp_path / "s", model=MODEL, feature_spec=SPEC, dataset={"fingerprint": "h", "n_records": n, "path": ""},
        dim=dim, width=dim, dtype="int8", n_scales=1, shard_size=n)
    write_all(store, q, scales, ids_for(n))
    store.finalize()
    payload = 0
    for part in ("features", "scales"):
        path = tmp_path / "s" / f"shard-00000.{part}.npy"
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f)
            header = f.tell()
        payload += path.stat().st_size - header
    assert payload / n == dim + 4
    ids_bytes = (tmp_path / "s" / "shard-00000.ids.npy").stat().st_size
    assert ids_bytes < n * 4 * len(ids_for(n)[0]) + 200  # fixed-width unicode: 4 bytes a character


@pytest.mark.parametrize("dtype", ["int8", "uint8", "float16"])
def test_resume_after_interruption_is_byte_identical(tmp_path, dtype):
    dim, _, n_scales = LAYOUTS[dtype]
    offset = offset_for(dim)
    build(tmp_path / "clean", dtype, offset=offset)
    q, scales = quantise(synthetic(23, dim) - offset, dtype, n_scales)
    ids = ids_for(23)

    store = open_store(tmp_path / "s", dtype)
    store.write_offset(offset)
    write_all(store, q, scales, ids, shards=[0, 1])
    # Shard 2 was interrupted after its features were renamed into place but before its marker; shard 3 had
    # only temp files. One temp belongs to a dead process on this host, one has a name no writer would make.
    (tmp_path / "s" / "shard-00002.features.npy").write_bytes(b"half a shard")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stray = [f".tmp~{atomic.HOST}~{dead.pid}~0badc0de~shard-00003.features.npy", ".tmp~junk"]
    for name in stray:
        (tmp_path / "s" / name).write_bytes(b"partial")

    resumed = open_store(tmp_path / "s", dtype)
    assert resumed.done_shards == {0, 1}
    resumed.write_offset(load_offset(tmp_path / "s"))
    assert not [p for p in os.listdir(tmp_path / "s") if p.startswith(".tmp~")]
    write_all(resumed, q, scales, ids, shards=sorted(set(range(resumed.n_shards)) - resumed.done_shards))
    resumed.finalize()
    assert store_files(tmp_path / "s") == store_files(tmp_path / "clean")


def test_rewriting_a_done_shard_is_byte_identical(tmp_path):
    q, scales, ids = build(tmp_path / "clean", "int8")
    store = open_store(tmp_path / "s", "int8")
    write_all(store, q, scales, ids)
    write_all(store, q, scales, ids, shards=[2])
    store.finalize()
    assert store_files(tmp_path / "s") == store_files(tmp_path / "clean")


def test_a_failed_rewrite_unmarks_the_shard(tmp_path, monkeypatch):
    # A done shard rewritten with different data (say, a nondeterministic GPU run) that dies after its new
    # features landed must not stay marked done over new features with old scales.
    q, scales, ids = build(tmp_path / "clean", "int8")
    store = open_store(tmp_path / "s", "int8")
    write_all(store, q, scales, ids, shards=[0, 1])
    real_save = writer_mod.save_npy

    def dies_at_scales(path, array):
        if path.name.endswith("scales.npy"):
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(writer_mod, "save_npy", dies_at_scales)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard(1, q[5:10] // 2, scales[5:10] * 2, ids[5:10])
    monkeypatch.setattr(writer_mod, "save_npy", real_save)
    resumed = open_store(tmp_path / "s", "int8")
    assert resumed.done_shards == {0}
    write_all(resumed, q, scales, ids, shards=range(1, 5))
    resumed.finalize()
    assert store_files(tmp_path / "s") == store_files(tmp_path / "clean")


def test_temp_files_of_a_live_writer_are_kept(tmp_path):
    open_store(tmp_path / "s", "int8")
    live = tmp_path / "s" / f".tmp~{atomic.HOST}~{os.getppid()}~12345678~shard-00001.ids.npy"
    other_host = tmp_path / "s" / ".tmp~elsewhere~1~12345678~shard-00001.ids.npy"
    live.write_bytes(b"in progress")
    other_host.write_bytes(b"in progress")
    open_store(tmp_path / "s", "int8")
    assert live.exists() and other_host.exists()


_CHILD = r"""
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
import test_store as t
from mads_fast import atomic

def slow_fsync(fd, _real=atomic._fsync_file):
    time.sleep(0.05)  # 5 files a shard: about 0.25 s per shard, so a kill lands mid-shard
    _real(fd)

atomic._fsync_file = slow_fsync
offset = t.offset_for(24)
q, scales = t.quantise(t.synthetic(23, 24) - offset, "int8", 3)
store = t.open_store(sys.argv[1], "int8")
store.write_offset(offset)
t.write_all(store, q, scales, t.ids_for(23))
store.finalize()
"""


def test_killed_writer_resumes_byte_identical(tmp_path):
    q, scales, ids = build(tmp_path / "clean", "int8", offset=offset_for(24))
    target = tmp_path / "s"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(target), str(Path(__file__).parent)])
    try:
        deadline = time.monotonic() + 30
        while not (target / "shard-00000.done").exists():
            assert child.poll() is None, "the writer exited before its first shard"
            assert time.monotonic() < deadline, "no shard finished in 30 s"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (target / "shard-00004.done").exists()  # it really died part-way

    resumed = open_store(target, "int8")
    assert 0 in resumed.done_shards and not resumed.complete
    np.testing.assert_array_equal(resumed.offset, offset_for(24))
    write_all(resumed, q, scales, ids, shards=sorted(set(range(5)) - resumed.done_shards))
    resumed.finalize()
    assert store_files(target) == store_files(tmp_path / "clean")
    np.testing.assert_array_equal(load_features(target)[1], load_features(tmp_path / "clean")[1])


def test_manifest_first_difference_names_the_first_leaf_of_the_keys_asked_for(tmp_path):
    build(tmp_path / "s", "int8")
    manifest = Manifest.read(tmp_path / "s")
    assert manifest.first_difference(manifest) is None
    moved = json.loads(json.dumps(manifest.data))
    moved["dataset"]["path"] = "/elsewhere/alpaca.jsonl"  # not a key that must match
    assert manifest.first_difference(moved) is None
    other = json.loads(json.dumps(manifest.data))
    other["feature_spec"]["layers"] = [10]
    other["dim"] = 8
    found = manifest.first_difference(other)
    assert found == ("feature_spec.layers", [10, 20], [10])  # MATCH_KEYS order: the spec before the dims
    assert "feature_spec.layers is [10, 20] there but [10] here" == str(found)
    # a partial request (what extract knows before the model loads) is compared on the keys it names only
    partial = {"model": {"weights_sha256": MODEL["weights_sha256"]}, "feature_spec": SPEC}
    assert manifest.first_difference(partial, keys=("model.weights_sha256", "feature_spec")) is None
    partial["model"]["weights_sha256"] = "cd" * 32
    assert manifest.first_difference(partial, keys=("model.weights_sha256",)).key == "model.weights_sha256"
    assert manifest.first_difference({}, keys=("dim",)) == ("dim", 24, "<absent>")
    assert Manifest.read_if_any(tmp_path / "none yet") is None


@pytest.mark.parametrize("dtype", list(LAYOUTS))
def test_rows_reads_exactly_the_rows_asked_for(tmp_path, dtype):
    build(tmp_path / "s", dtype, offset=offset_for(LAYOUTS[dtype][0]) if dtype in ("int8", "uint8") else None)
    reader = FeatureReader(tmp_path / "s")
    _, everything = load_features(tmp_path / "s")
    _, normalised = load_features(tmp_path / "s", raw=False)
    positions = np.array([22, 0, 7, 5, 4, 9, 7])  # unsorted, repeated, across shard boundaries (5 rows each)
    np.testing.assert_array_equal(reader.rows(positions), everything[positions])
    np.testing.assert_allclose(reader.rows(positions, raw=False), normalised[positions], rtol=1e-6, atol=1e-7)
    assert reader.rows([]).shape == (0, LAYOUTS[dtype][0])
    with pytest.raises(InputError, match="positions"):
        reader.rows([23])
