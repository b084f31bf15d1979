"""``dtype="auto"``: bf16 where the CPU has native bf16 that measures faster than fp32, fp32 elsewhere; an existing
store keeps its precision."""
import json

import numpy as np
import pytest
import torch

import mads_fast.model as model_mod
from mads_fast.extraction import extract, store_compute_dtype
from mads_fast.model import BF16_MIN_SPEEDUP, auto_dtype, bf16_matmul_speedup, cpu_bf16_support, resolve_dtype
from mads_fast.store import FeatureReader, load_solver_input


def _cpu_flags():
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_bf16_support_is_read_from_this_cpu():
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no x86 flags line in /proc/cpuinfo")
    expected = ("AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None)
    assert cpu_bf16_support() == expected


@pytest.mark.parametrize("isa, speedup, device, want", [
    ("AVX512-BF16", 3.0, "cpu", torch.bfloat16), ("AMX-BF16", 3.5, "cpu", torch.bfloat16),
    ("AVX512-BF16", 0.5, "cpu", torch.float32),   # bf16 instructions no faster than the fp32 FMAs: stay fp32
    ("AVX512-BF16", BF16_MIN_SPEEDUP - 0.01, "cpu", torch.float32),
    (None, 9.0, "cpu", torch.float32), (None, 0.5, "cuda", torch.bfloat16)])
def test_auto_follows_the_hardware(monkeypatch, isa, speedup, device, want):
    monkeypatch.setattr(model_mod, "cpu_bf16_support", lambda: isa)
    monkeypatch.setattr(model_mod, "bf16_matmul_speedup", lambda: speedup)
    dtype, why = auto_dtype(device)
    assert dtype == want and resolve_dtype("auto", device) == want and resolve_dtype(None, device) == want
    if device == "cuda":
        assert "CUDA" in why
    elif isa is None:
        assert "no native bf16" in why
    else:
        assert isa in why and (f"{speedup:.1f}x" in why or f"{speedup:.2f}x" in why)
    assert resolve_dtype("fp32", device) == torch.float32  # an explicit choice is never overridden


def test_the_probe_measures_this_cpu():
    """The probe times real matmuls: a positive finite ratio, the same object on a second call (measured once)."""
    first = bf16_matmul_speedup()
    assert 0.05 < first < 50 and bf16_matmul_speedup() == first


def _alpaca(tmp_path, alpaca_path, n):
    with open(alpaca_path, encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(n)]
    path = tmp_path / f"alpaca{n}.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_a_store_keeps_its_precision_under_auto(monkeypatch, tiny_model_dir, alpaca_path, tmp_path, caplog):
    data = _alpaca(tmp_path, alpaca_path, 24)
    opts = dict(model=tiny_model_dir, layers="2", quant="int8", max_length=48, shard_size=8, progress=False)
    monkeypatch.setattr(model_mod, "cpu_bf16_support", lambda: None)  # a CPU without bf16 made it under auto
    monkeypatch.setattr(model_mod, "bf16_matmul_speedup", lambda: 3.0)
    made = extract(data, tmp_path / "s", dtype="auto", **opts)
    spec = json.loads((tmp_path / "s" / "manifest.json").read_text())["feature_spec"]
    assert not made.reused and spec["compute_dtype"] == "float32"

    monkeypatch.setattr(model_mod, "cpu_bf16_support", lambda: "AVX512-BF16")  # ...and a bf16 CPU reads it
    assert store_compute_dtype(tmp_path / "s", "auto") == "fp32"
    assert store_compute_dtype(tmp_path / "s", "bf16") == "bf16"
    assert store_compute_dtype(tmp_path / "none", "auto") == "auto"
    with caplog.at_level("INFO", logger="mads_fast"):
        again = extract(data, tmp_path / "s", dtype="auto", **opts)
    assert again.reused and again.model_seconds == 0
    assert "precision store" in caplog.text

    # a new store on that CPU is made in bf16, and its features are not the fp32 ones
    fresh = extract(data, tmp_path / "b", dtype="auto", **opts)
    spec = json.loads((tmp_path / "b" / "manifest.json").read_text())["feature_spec"]
    assert not fresh.reused and spec["compute_dtype"] == "bfloat16"
    a = FeatureReader(tmp_path / "s").rows(np.arange(24))
    b = FeatureReader(tmp_path / "b").rows(np.arange(24))
    assert not np.array_equal(a, b)


@pytest.mark.slow
def test_bf16_features_and_picks_agree_with_fp32(smollm2_path, alpaca_path, tmp_path):
    # The real model on real records: bf16 must be a precision change, not a different feature.
    data = _alpaca(tmp_path, alpaca_path, 48)
    opts = dict(model=smollm2_path, max_length=64, progress=False)
    extract(data, tmp_path / "fp32", dtype="fp32", **opts)
    extract(data, tmp_path / "bf16", dtype="bf16", **opts)
    a = FeatureReader(tmp_path / "fp32").rows(np.arange(48)).astype(np.float64)
    b = FeatureReader(tmp_path / "bf16").rows(np.arange(48)).astype(np.float64)
    assert not np.array_equal(a, b)
    a -= a.mean(0)
    b -= b.mean(0)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos.min()  # measured: >= 0.99992 centred, 0.999997 raw, on 96 records
    from mads_fast.solver import FacilityLocation

    pa = FacilityLocation(budget=0.15).fit(load_solver_input(tmp_path / "fp32")).ranking_
    pb = FacilityLocation(budget=0.15).fit(load_solver_input(tmp_path / "bf16")).ranking_
    assert len(set(pa.tolist()) & set(pb.tolist())) >= 0.7 * len(pa)
