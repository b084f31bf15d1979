"""Extraction into the feature store, checked against plain Hugging Face computations."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mads_fast.data import read_records
from mads_fast.errors import InputError
from mads_fast.extraction import extract
from mads_fast.model import load_model
from mads_fast.store import FeatureReader, load_features, load_offset
from mads_fast.tokens import render, tokenize


def _slice(src, dst, n, start=0):
    with open(src, encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(start + n)][start:]
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture()
def alpaca40(tmp_path, alpaca_path):
    return _slice(alpaca_path, tmp_path / "alpaca40.jsonl", 40)


def _hf_pooled(loaded, rs, layer, max_length, pool="mean", feature="hidden"):
    """Plain Hugging Face reference: one record at a time (no padding), output_hidden_states=True."""
    ts = tokenize([render(rs, i, loaded.tokenizer, "chat") for i in range(len(rs))], loaded.tokenizer, max_length)
    rows = []
    for ids in ts.ids:
        x = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]
        with torch.inference_mode():
            if feature == "hidden":
                h = loaded.model(input_ids=x, output_hidden_states=True).hidden_states[layer + 1][0]  # [T, H]
            else:
                seen = {}
                mlp = loaded.layers[layer].mlp
                hook = mlp.down_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0][0].clone()))
                try:
                    loaded.model(input_ids=x)
                finally:
                    hook.remove()
                h = seen["x"]
        h = h.double()
        rows.append({"mean": h.mean(0), "max": h.amax(0), "last": h[-1], "active": (h > 0).double().mean(0)}[pool])
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("pool, feature", [("mean", "hidden"), ("max", "hidden"), ("last", "hidden"),
                                           ("active", "mlp")])
def test_fp32_features_equal_plain_hf(tiny, alpaca40, tmp_path, pool, feature):
    stats = extract(alpaca40, tmp_path / "store", model=tiny, layers="2", feature=feature, pool=pool,
                    quant="fp32", max_length=64, tokens_per_batch=512, shard_size=16, progress=False)
    assert stats.n_records == 40 and stats.n_shards_written == 3 and not stats.reused
    assert stats.truncated > 0  # max_length 64 cuts some Alpaca records: counted
    ids, feats = load_features(tmp_path / "store", raw=True)
    rs = read_records(alpaca40)
    assert list(ids) == rs.ids
    ref = _hf_pooled(tiny, rs, 2, 64, pool, feature)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)


def test_int8_around_offset_keeps_direction(tiny, alpaca40, tmp_path):
    extract(alpaca40, tmp_path / "f32", model=tiny, layers="1", quant="fp32", max_length=128, progress=False)
    extract(alpaca40, tmp_path / "i8", model=tiny, layers="1", quant="int8", max_length=128, progress=False)
    _, exact = load_features(tmp_path / "f32", raw=False)
    _, approx = load_features(tmp_path / "i8", raw=False)
    cos = np.sum(exact * approx, axis=1)
    assert cos.min() >= 0.995, cos.min()
    # the store really holds int8 plus one float32 scale per row: D + 4 bytes per example
    reader = FeatureReader(tmp_path / "i8")
    assert reader.manifest["dtype"] == "int8" and reader.manifest["n_scales"] == 1


def test_multi_layer_projection_bit(tiny, alpaca40, tmp_path):
    options = dict(model=tiny, layers="1,3", feature="mlp", pool="mean", project=16, max_length=64, progress=False)
    extract(alpaca40, tmp_path / "s", quant="bit", **options)
    extract(alpaca40, tmp_path / "f32", quant="fp32", **options)  # the same features, unquantised
    reader = FeatureReader(tmp_path / "s")
    assert reader.manifest["dim"] == 32 and reader.manifest["width"] == 4 and reader.manifest["n_scales"] == 2
    _, raw = load_features(tmp_path / "s", raw=True)
    assert raw.shape == (40, 32) and np.isfinite(raw).all()
    # Each stored bit is the sign of (feature - offset), and each layer's 16 dimensions come back as +-(mean
    # |feature - offset| over those 16): checked against the fp32 extraction, so all-zero bits or scales fail.
    offset = load_offset(tmp_path / "s")
    v = load_features(tmp_path / "f32", raw=True)[1].astype(np.float64) - offset  # [40, 32]
    scale = np.abs(v).reshape(40, 2, 16).mean(axis=2)  # [40, 2] per row and layer
    got = (raw.astype(np.float64) - offset).reshape(40, 2, 16)
    clear = np.abs(v.reshape(40, 2, 16)) > 1e-4 * scale[:, :, None]  # signs that float noise cannot flip
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(np.sign(got)[clear], np.sign(v.reshape(40, 2, 16))[clear])
    np.testing.assert_allclose(np.abs(got), np.broadcast_to(scale[:, :, None], got.shape), rtol=1e-4, atol=1e-6)
    assert (v > 0).mean() > 0.2 and (v < 0).mean() > 0.2  # both signs occur: a constant bit would fail


def test_store_reused_and_mismatch_is_an_error(tiny, alpaca40, tmp_path):
    store = tmp_path / "store"
    extract(alpaca40, store, model=tiny, layers="2", quant="fp16", max_length=64, progress=False)
    before = {p.name: p.read_bytes() for p in store.glob("shard-*")}
    again = extract(alpaca40, store, model=tiny, layers="2", quant="fp16", max_length=64, progress=False)
    assert again.reused and again.n_shards_written == 0
    assert {p.name: p.read_bytes() for p in store.glob("shard-*")} == before
    with pytest.raises(InputError, match="feature_spec.layers"):
        extract(alpaca40, store, model=tiny, layers="1", quant="fp16", max_length=64, progress=False)


def test_matching_store_is_reused_without_loading_the_model(tiny_model_dir, alpaca40, tmp_path):
    # Given a model directory (not a loaded model), the store is asked whether it matches before the model loads.
    store = tmp_path / "store"
    first = extract(alpaca40, store, model=tiny_model_dir, layers="2", quant="int8", max_length=64, progress=False)
    assert not first.reused and first.model_seconds > 0
    again = extract(alpaca40, store, model=tiny_model_dir, layers="2", quant="int8", max_length=64, progress=False)
    assert again.reused and again.model_seconds == 0 and again.n_shards_written == 0
    with pytest.raises(InputError, match="feature_spec.quant"):
        extract(alpaca40, store, model=tiny_model_dir, layers="2", quant="fp16", max_length=64, progress=False)


def test_bad_options_are_input_errors(tiny, alpaca40, tmp_path):
    # each error names the Python parameter (the CLI writes it as the flag: --max-length)
    for kwargs, param in [(dict(pool="median"), "pool"), (dict(quant="int4"), "quant"),
                          (dict(max_length=0), "max_length"), (dict(project=-3), "project"),
                          (dict(tokens_per_batch=0), "tokens_per_batch"),
                          (dict(layers="9"), "layers")]:
        with pytest.raises(InputError, match=f"^{param}: ") as info:
            extract(alpaca40, tmp_path / "x", model=tiny, progress=False, **kwargs)
        assert info.value.param == param
    assert not (tmp_path / "x").exists()


def test_token_budget_defaults_by_device(tiny, alpaca40, tmp_path):
    """No budget given: 4096 tokens on CPU (the plan the stats show), 16384 on CUDA; a given one is kept."""
    from mads_fast.extraction.shard import TOKENS_PER_BATCH, resolve_tokens_per_batch

    assert (resolve_tokens_per_batch(None, "cpu"), resolve_tokens_per_batch(None, "cuda:1")) == (4096, 16384)
    assert resolve_tokens_per_batch(300, "cuda") == 300 and TOKENS_PER_BATCH["cpu"] < TOKENS_PER_BATCH["cuda"]
    from mads_fast.tokens import plan_batches
    rs = read_records(alpaca40)
    ts = tokenize([render(rs, i, tiny.tokenizer, "chat") for i in range(len(rs))], tiny.tokenizer, 1024)
    plans = {b: plan_batches(ts.lengths, b)[0] for b in (4096, 300)}
    assert sum(x.n_tokens for x in plans[4096]) != sum(x.n_tokens for x in plans[300])
    for budget, key in ((None, 4096), (300, 300)):
        stats = extract(alpaca40, tmp_path / f"s{key}", model=tiny, quant="fp32", tokens_per_batch=budget,
                        progress=False)
        assert stats.padded_tokens == sum(x.n_tokens for x in plans[key])


@pytest.mark.slow
def test_killed_extraction_resumes_byte_identical(tiny_model_dir, alpaca_path, tmp_path):
    data = _slice(alpaca_path, tmp_path / "a.jsonl", 240)
    args = [sys.executable, "-m", "mads_fast.cli", "extract", str(data), "--model", str(tiny_model_dir),
            "--layers", "3", "--max-length", "96", "--shard-size", "4", "--tokens-per-batch", "256", "--quiet"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    full = tmp_path / "full"
    subprocess.run(args + ["--store", str(full)], check=True, env=env, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--store", str(killed)], env=env)
    deadline = time.time() + 300
    while not list(killed.glob("shard-*.done")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(killed.glob("shard-*.done")))
    assert 1 <= done < 60, f"the kill must land mid-run (done shards: {done} of 60)"
    assert not json.loads((killed / "manifest.json").read_text())["complete"]

    subprocess.run(args + ["--store", str(killed)], check=True, env=env, timeout=600)
    names = sorted(p.name for p in full.iterdir() if p.name != "manifest.json")
    assert names == sorted(p.name for p in killed.iterdir() if p.name != "manifest.json")
    for name in names:
        assert (full / name).read_bytes() == (killed / name).read_bytes(), name


@pytest.mark.slow
def test_real_model_matches_hugging_face(smollm2_path, alpaca_path, tmp_path):
    """SmolLM2-135M-Instruct, layer 20, mean-pooled residual stream, fp16 store, against a plain HF loop."""
    data = _slice(alpaca_path, tmp_path / "a.jsonl", 32, start=100)
    loaded = load_model(smollm2_path, device="cpu")
    extract(data, tmp_path / "store", model=loaded, layers="20", quant="fp16", max_length=256, progress=False)
    _, ours = load_features(tmp_path / "store", raw=True)
    rs = read_records(data)
    ts = tokenize([render(rs, i, loaded.tokenizer, "chat") for i in range(len(rs))], loaded.tokenizer, 256)
    # the naive way: padded batches, attention mask, output_hidden_states=True, masked mean afterwards
    ref = []
    for start in range(0, len(rs), 8):
        ids = [ts.ids[i] for i in range(start, min(len(rs), start + 8))]
        width = max(len(x) for x in ids)
        x = torch.full((len(ids), width), loaded.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, row in enumerate(ids):
            x[r, :len(row)] = torch.as_tensor(np.asarray(row, dtype=np.int64))
            mask[r, :len(row)] = 1
        with torch.inference_mode():
            h = loaded.model(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states[21]
        m = mask[:, :, None].double()
        ref.append(((h.double() * m).sum(1) / m.sum(1)).numpy())
    ref = np.concatenate(ref)
    cos = np.sum(ours * ref, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.999, cos
    # the raw features are anisotropic (the design's measurement); centring must fix it
    raw_unit = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    assert (raw_unit @ raw_unit.T)[np.triu_indices(32, 1)].mean() > 0.9
    _, centred = load_features(tmp_path / "store", raw=False)
    assert abs((centred @ centred.T)[np.triu_indices(32, 1)].mean()) < 0.2
