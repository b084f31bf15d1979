"""CUDA backend: picks against the C++ backend and a naive float64 greedy written here, device input read
in place (torch, CuPy), the GPU kNN graph against the NumPy one, determinism, memory bounds.

GPU tests carry the ``gpu`` marker and skip with the reason when ``mads_fast._solver_cuda`` does not load
or sees no device, except under ``MADS_FAST_REQUIRE_GPU=1`` (conftest), where such a skip fails; the glue's
input checks, the kNN tie rule and that switch also run here on the CPU.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mads_fast.errors import InputError
from mads_fast.solver import FacilityLocation, available_backends
from mads_fast.solver._knn import knn_graph_reference
from mads_fast.solver._lazy import lazy_greedy
from mads_fast.solver._numpy_impl import NumpyEngine
from mads_fast.solver._oracles import SparseOracle

from greedy_reference import cosine64, naive_greedy


@pytest.fixture(scope="module")
def cuda():
    from mads_fast.solver._native import load_native

    if "cuda" not in available_backends():
        try:
            load_native("cuda")
        except Exception as exc:  # noqa: BLE001 - the reason is the skip message
            pytest.skip(f"cuda backend unavailable: {exc}")
    from mads_fast.solver import _cuda

    return _cuda


@pytest.fixture(scope="module")
def torch_cuda(cuda):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


def reference_backend():
    return "cpp" if "cpp" in available_backends() else "numpy"


# ---------------------------------------------------------------------------------------------- data


def make(kind, n, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "random":
        X = rng.normal(size=(n, d))
    elif kind == "clustered":
        C = rng.normal(size=(5, d))
        X = C[rng.integers(0, 5, n)] + 0.3 * rng.normal(size=(n, d))
    else:  # "ties": a few distinct rows repeated, plus zero rows: many exactly equal gains
        base = rng.normal(size=(4, d))
        X = base[rng.integers(0, 4, n)]
        X[rng.random(n) < 0.15] = 0.0
    if dtype == "int8":
        scale = 127.0 / max(1e-12, float(np.abs(X).max()))
        return np.clip(np.round(X * scale), -127, 127).astype(np.int8)
    return X.astype(np.float32)


def int8_reference_similarity(X):
    """float64 [N, N] of the int8 rule: exact dots rounded to float32, times the float32 product of the
    two inverse norms (facility_location.h)."""
    Xd = X.astype(np.float64)
    inv = NumpyEngine(X).inv.astype(np.float32)  # [N]
    dots = (Xd @ Xd.T).astype(np.float32)
    return np.maximum(dots * (inv[:, None] * inv[None, :]), 0).astype(np.float64)


# ---------------------------------------------------------------------------------------------- CPU glue checks
REQUIRE_GPU_PROBE = """
import pytest

@pytest.fixture
def device():
    pytest.skip("cuda backend unavailable: no device here")

@pytest.mark.gpu
def test_needs_device(device):
    pass

@pytest.mark.gpu
@pytest.mark.multi_gpu
def test_needs_two_devices():
    pytest.skip("fewer than 2 CUDA devices")

def test_cpu_skip():
    pytest.skip("not a GPU test")

@pytest.mark.gpu
def test_needs_cupy():
    pytest.skip("could not import 'cupy'")

@pytest.mark.gpu
def test_runs():
    assert True
"""


@pytest.mark.parametrize("require", ["", "1"])
def test_require_gpu_turns_gpu_skips_into_failures(tmp_path, require):
    """The conftest switch, run on a probe suite in a child pytest: off, GPU tests skip with their reason;
    on, a GPU test that skips (in a fixture or in its body) fails, while CPU and multi_gpu skips stay skips."""
    for helper in ("conftest.py", "cpuinfo_flags.py"):  # the conftest and the module it imports
        shutil.copy(Path(__file__).with_name(helper), tmp_path / helper)
    (tmp_path / "test_probe.py").write_text(REQUIRE_GPU_PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -rA --strict-markers\nmarkers =\n    gpu: probe\n")
    env = dict(os.environ, MADS_FAST_REQUIRE_GPU=require)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert "PASSED test_probe.py::test_runs" in out
    assert "SKIPPED" in out and "not a GPU test" in out and "fewer than 2 CUDA devices" in out
    if require:
        assert run.returncode == 1, out
        assert "ERROR test_probe.py::test_needs_device" in out and "FAILED test_probe.py::test_needs_cupy" in out
        assert "MADS_FAST_REQUIRE_GPU=1 and this GPU test skipped" in out and "no device here" in out
        assert "1 failed, 1 passed, 2 skipped, 1 error" in out
    else:
        assert run.returncode == 0, out
        assert "1 passed, 4 skipped" in out and "no device here" in out


def test_is_device_array_rejects_host_arrays():
    from mads_fast.solver._cuda import is_device_array

    torch = pytest.importorskip("torch")
    assert not is_device_array(np.zeros((2, 3), np.float32))
    assert not is_device_array(torch.zeros(2, 3))  # a CPU tensor goes the host path

    class FakeDevice:
        __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}

    assert is_device_array(FakeDevice())


@pytest.mark.parametrize("shape, typestr, match", [((2, 3, 4), "<f4", "2-D"), ((0, 3), "<f4", "no rows"),
                                                   ((3, 0), "<f4", "no feature"), ((3, 4), "<f8", "float32 or int8")])
def test_as_device_features_rejects_bad_interfaces(shape, typestr, match):
    from mads_fast.solver._cuda import as_device_features

    class Fake:
        def __init__(self):
            self.shape = shape
            self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False), "version": 3}

    with pytest.raises(InputError, match=match):
        as_device_features(Fake())


def test_knn_lowest_index_ties_match_reference():
    """The tie fix-up of the GPU kNN graph, run on CPU tensors, against a stable sort by (-s, index)."""
    torch = pytest.importorskip("torch")
    from mads_fast.solver._cuda import _keep_lowest_ties

    rng = np.random.default_rng(3)
    S = rng.choice(np.array([0.0, 0.25, 0.5, 0.75], np.float32), size=(9, 40))  # [r, N], heavy ties
    for k in (1, 5, 17, 39):
        expected = np.sort(np.argsort(-S, axis=1, kind="stable")[:, :k], axis=1)
        kth = np.sort(S, axis=1)[:, ::-1][:, k - 1]
        got = _keep_lowest_ties(torch.from_numpy(S), torch.from_numpy(kth.copy()), k).numpy()
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------------- GPU: picks
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("kind, n, d", [("random", 1, 5), ("random", 37, 3), ("clustered", 301, 17),
                                        ("ties", 129, 33), ("clustered", 1031, 130), ("ties", 77, 1)])
def test_picks_match_naive_and_cpp(cuda, kind, n, d, dtype):
    X = make(kind, n, d, dtype)
    k = max(1, n // 4)
    fit = FacilityLocation(k, backend="cuda").fit(X)
    assert fit.backend_ == "cuda"
    other = FacilityLocation(k, backend=reference_backend()).fit(X)
    np.testing.assert_array_equal(fit.ranking_, other.ranking_)
    np.testing.assert_allclose(fit.gains_, other.gains_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fit.nearest_similarity_, other.nearest_similarity_, rtol=1e-5, atol=1e-6)
    S = int8_reference_similarity(X) if dtype == "int8" else cosine64(X)
    if n <= 400:
        np.testing.assert_array_equal(fit.ranking_, naive_greedy(S, k)[0])
    # nearest_: each row's most similar pick (within float noise of the true maximum)
    np.testing.assert_allclose(S[np.arange(n), fit.nearest_], S[:, fit.ranking_].max(axis=1), atol=1e-5)
    assert fit.weights_.sum() == n


@pytest.mark.gpu
@pytest.mark.parametrize("batch_size", [1, 7, 300])
def test_batch_sizes_and_eviction_do_not_change_picks(cuda, batch_size):
    X = make("clustered", 2000, 48, "int8", seed=5)
    ref = FacilityLocation(300, backend=reference_backend()).fit(X)
    fit = FacilityLocation(300, backend="cuda", batch_size=batch_size).fit(X)
    np.testing.assert_array_equal(fit.ranking_, ref.ranking_)
    assert fit.n_passes_ > 1


@pytest.mark.gpu
def test_engine_columns_and_sums_match_numpy(cuda):
    for dtype, rtol in (("float32", 2e-6), ("int8", 1e-6)):
        X = make("random", 513, 67, dtype, seed=2)
        gpu, ref = cuda.CudaEngine(X), NumpyEngine(X)
        idx = np.array([0, 512, 17, 17, 300])
        cur = np.random.default_rng(0).random(513).astype(np.float32) * 0.3
        S, g = gpu.columns(idx, cur)
        S0, g0 = ref.columns(idx, cur)
        np.testing.assert_allclose(S, S0, rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(g, g0, rtol=1e-5)
        np.testing.assert_allclose(gpu.column_sums(), ref.column_sums(), rtol=1e-5)


@pytest.mark.gpu
def test_lazy_greedy_returns_the_cpp_dict(cuda):
    # One GreedyOutput -> dict conversion (csrc/bindings_common.h): every profile field, here too.
    X = make("clustered", 700, 24, "float32", seed=4)
    out = cuda.CudaDense(X)._impl.lazy_greedy(50)
    if "cpp" in available_backends():
        from mads_fast.solver._backends import load_native

        assert set(out) == set(load_native("cpp").DenseSimilarity(X).lazy_greedy(50))
    assert out["first_pass_seconds"] > 0 and out["greedy_seconds"] > 0
    assert out["evaluations"].shape == (50,) and out["evaluations"][-1] == out["n_evaluations"]


@pytest.mark.gpu
def test_gains_are_bitwise_reproducible(cuda):
    X = make("clustered", 5000, 64, "float32", seed=9)
    a = cuda.CudaEngine(X).lazy_greedy(500)
    b = cuda.CudaEngine(X).lazy_greedy(500)
    np.testing.assert_array_equal(a.ranking, b.ranking)
    assert a.gains.tobytes() == b.gains.tobytes()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
def test_reduced_precision_keeps_the_objective(cuda, precision):
    X = make("clustered", 800, 96, "float32", seed=4)
    S = cosine64(X)
    exact = naive_greedy(S, 80)[0]
    fast = cuda.CudaEngine(X, precision=precision).lazy_greedy(80).ranking
    assert S[:, fast].max(axis=1).sum() >= 0.995 * S[:, exact].max(axis=1).sum()


@pytest.mark.gpu
def test_tiles_never_hold_n_by_n(cuda):
    n = 20000
    X = make("random", n, 32, "int8", seed=1)
    engine = cuda.CudaEngine(X, scratch_bytes=8 << 20)
    sums = engine.column_sums()
    assert engine.device_bytes < n * n * 4 // 20
    np.testing.assert_allclose(sums[:50], NumpyEngine(X[:]).columns(np.arange(50))[0].sum(axis=1), rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 2, 3, 15, 16, 17, 37, 4099])
@pytest.mark.parametrize("source", ["numpy", "torch-borrowed", "torch-copied"])
def test_int8_gemm_at_unaligned_n_matches_numpy(cuda, n, source):
    """int8 GEMM rows are padded to a multiple of 16 (IMMA kernels want m % 4 == 0): owned copies carry zero
    rows, a borrowed X its aligned prefix plus a padded copy of the last N % 16 rows. Every similarity and
    column sum must equal the exact NumPy rule whatever N % 16 is, for host, borrowed and copied input."""
    d = 64 if source != "torch-copied" else 37  # D=37: rows not 16-byte multiples, so the engine copies
    X = make("random", n, d, "int8", seed=n)
    if source == "numpy":
        engine = cuda.CudaEngine(X)
    else:
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("torch has no CUDA here")
        engine = cuda.CudaEngine(torch.from_numpy(X).cuda())
    assert engine.borrowed == (source == "torch-borrowed")
    S_ref = int8_reference_similarity(X)  # float64 [N, N], symmetric
    idx = np.unique(np.r_[0, n - 1, np.random.default_rng(n).integers(0, n, 40)])  # [m], both ends of X
    S, g = engine.columns(idx)
    np.testing.assert_allclose(S, S_ref[idx], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g, S_ref[idx].sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(engine.column_sums(), S_ref.sum(axis=0), rtol=1e-5)
    k = max(1, n // 5)
    if n <= 400:
        expected = naive_greedy(S_ref, k)[0]
    else:
        expected = FacilityLocation(k, backend=reference_backend()).fit(X).ranking_
    np.testing.assert_array_equal(engine.lazy_greedy(k).ranking, expected)


# ---------------------------------------------------------------------------------------------- GPU: device input
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, d", [("int8", 64), ("int8", 37), ("float32", 50)])
def test_torch_cuda_input_is_read_in_place(cuda, torch_cuda, dtype, d):
    torch = torch_cuda
    X = make("clustered", 613, d, dtype, seed=6)
    T = torch.from_numpy(X).cuda()
    engine = cuda.CudaEngine(T)
    assert engine.uploaded_bytes == 0
    if dtype == "int8" and d % 16 == 0:
        assert engine.borrowed and engine.features_pointer == T.data_ptr()
    fit = FacilityLocation(100, backend=reference_backend()).fit(X)
    np.testing.assert_array_equal(engine.lazy_greedy(100).ranking, fit.ranking_)


@pytest.mark.gpu
def test_torch_strided_and_half_inputs(cuda, torch_cuda):
    torch = torch_cuda
    X = make("clustered", 300, 40, "float32", seed=7)
    wide = torch.zeros(300, 64, device="cuda")
    wide[:, :40] = torch.from_numpy(X).cuda()
    expected = FacilityLocation(40, backend=reference_backend()).fit(X).ranking_
    np.testing.assert_array_equal(cuda.CudaEngine(wide[:, :40]).lazy_greedy(40).ranking, expected)
    half = torch.from_numpy(X).cuda().half()
    ref_half = FacilityLocation(40, backend=reference_backend()).fit(half.float().cpu().numpy()).ranking_
    np.testing.assert_array_equal(cuda.CudaEngine(half).lazy_greedy(40).ranking, ref_half)


@pytest.mark.gpu
def test_nan_on_device_is_input_error(cuda, torch_cuda):
    torch = torch_cuda
    T = torch.ones(10, 4, device="cuda")
    T[7, 2] = float("nan")
    with pytest.raises(InputError, match="row 7"):
        cuda.CudaEngine(T)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_cupy_input_is_read_in_place(cuda, dtype):
    cupy = pytest.importorskip("cupy")
    X = make("ties", 257, 32, dtype, seed=8)
    C = cupy.asarray(X)
    engine = cuda.CudaEngine(C)
    assert engine.uploaded_bytes == 0
    if dtype == "int8":
        assert engine.borrowed and engine.features_pointer == C.data.ptr
    expected = FacilityLocation(60, backend=reference_backend()).fit(X).ranking_
    np.testing.assert_array_equal(engine.lazy_greedy(60).ranking, expected)


@pytest.mark.gpu
def test_columns_device_matches_host_columns(cuda, torch_cuda):
    torch = torch_cuda
    X = make("random", 333, 24, "int8", seed=10)
    engine = cuda.CudaEngine(X)
    idx = np.array([5, 0, 332, 5])
    out = torch.full((4, 340), -7.0, device="cuda")
    engine.columns_device(idx, out)
    S, _ = engine.columns(idx)
    np.testing.assert_array_equal(out[:, :333].cpu().numpy(), S)
    assert (out[:, 333:] == -7.0).all()  # nothing written past N


@pytest.mark.gpu
def test_fit_takes_a_cuda_tensor_that_requires_grad(cuda, torch_cuda):
    """A model's output: torch's __cuda_array_interface__ raises RuntimeError on it until it is detached."""
    torch = torch_cuda
    X = make("clustered", 300, 32, "float32", seed=13)
    weight = torch.ones(32, device="cuda", requires_grad=True)
    out = torch.from_numpy(X).cuda() * weight  # [N, D], requires grad, has a grad_fn
    with pytest.raises(RuntimeError, match="requires grad"):
        out.__cuda_array_interface__
    expected = FacilityLocation(30, backend=reference_backend()).fit(X).ranking_
    for backend in ("cuda", "auto"):
        fit = FacilityLocation(30, backend=backend).fit(out)
        assert fit.backend_ == "cuda"
        np.testing.assert_array_equal(fit.ranking_, expected)
    assert out.requires_grad


def second_device(cuda):
    count = cuda.load_native("cuda").device_count()
    if count < 2:
        pytest.skip(f"needs 2 CUDA devices, this machine has {count}")
    return 1


@pytest.mark.gpu
@pytest.mark.multi_gpu
@pytest.mark.parametrize("kind", ["torch", "cupy"])
def test_input_on_a_second_device_is_converted_and_solved_there(cuda, kind):
    """fp16 input on device 1 while device 0 is current: converted (to float32) and synchronised on device
    1, and the engine runs there."""
    device = second_device(cuda)
    X = make("clustered", 400, 48, "float32", seed=14)
    half = X.astype(np.float16)
    if kind == "torch":
        torch = pytest.importorskip("torch")
        source = torch.from_numpy(half).to(f"cuda:{device}")
        current = torch.cuda.device(0)
    else:
        cupy = pytest.importorskip("cupy")
        with cupy.cuda.Device(device):
            source = cupy.asarray(half)
        current = cupy.cuda.Device(0)
    with current:
        engine = cuda.CudaEngine(source)
        ranking = engine.lazy_greedy(40).ranking
    assert engine.device == device and engine.uploaded_bytes == 0
    expected = FacilityLocation(40, backend=reference_backend()).fit(half.astype(np.float32)).ranking_
    np.testing.assert_array_equal(ranking, expected)


# ---------------------------------------------------------------------------------------------- GPU: kNN
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_knn_at_full_neighbourhood_equals_dense(cuda, torch_cuda, dtype):
    X = make("clustered", 211, 19, dtype, seed=11)
    engine = cuda.CudaEngine(X)
    neighbors, sims = cuda.knn_graph_cuda(engine, 500)
    knn = lazy_greedy(SparseOracle(neighbors, sims), 50, 1)
    np.testing.assert_array_equal(knn.ranking, engine.lazy_greedy(50).ranking)


@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 4, 13])
def test_knn_graph_matches_numpy_with_exact_ties(cuda, torch_cuda, k):
    rng = np.random.default_rng(12)
    distinct = rng.integers(-127, 128, size=(8, 32)).astype(np.int8)
    X = distinct[rng.integers(0, 8, 61)]  # duplicates: exact ties at every k-th value
    got_n, got_s = cuda.knn_graph_cuda(cuda.CudaEngine(X), k, block_bytes=61 * 4 * 7)  # 7 rows per block
    ref_n, ref_s = knn_graph_reference(NumpyEngine(X), k)
    np.testing.assert_array_equal(got_n, ref_n)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-6)
