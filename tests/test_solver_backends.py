"""Backend wiring of the cuda backend without a GPU: a stand-in ``mads_fast._solver_cuda`` (its
DenseSimilarity runs the C++ engine) checks that ``auto`` takes cuda only for GPU or large input, that a
cuda fit goes through ``_cuda.CudaEngine`` and kNN mode through ``_cuda.knn_graph_cuda``, and that the
picks are the C++ backend's."""
import numpy as np
import pytest

from mads_fast.solver import FacilityLocation, KCenter, available_backends
from mads_fast.solver import _backends, _cuda, _native
from mads_fast.solver._knn import knn_graph_reference

pytestmark = [pytest.mark.skipif("cpp" not in available_backends(), reason="the C++ solver module does not load"),
              pytest.mark.usefixtures("cpu_isa")]   # once per C++ kernel family


class FakeCudaModule:
    """The calls ``_cuda.CudaEngine`` makes on ``mads_fast._solver_cuda``, served by the C++ engine."""

    def __init__(self):
        self.built = []  # [(source, precision)] per engine

    @staticmethod
    def device_count():
        return 1

    @staticmethod
    def graph_lazy_greedy(neighbors, sims, budget, batch, progress):
        return _native.load_native("cpp").graph_lazy_greedy(neighbors, sims, budget, batch, progress)

    def DenseSimilarity(self, source, precision, scratch_bytes):
        self.built.append((source, precision))
        inner = _native.load_native("cpp").DenseSimilarity(source)

        class Engine:
            n, d = source.shape
            kernel = "fake-cuda"
            device = 0
            borrowed = False

            def columns(self, idx, cur):
                return inner.columns(idx, cur)

            def column_sums(self):
                return inner.column_sums()

            def lazy_greedy(self, budget, batch, progress):
                return inner.lazy_greedy(budget, batch, progress, 0)

        Engine.precision = precision
        return Engine()


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = FakeCudaModule()
    monkeypatch.setitem(_native._loaded, "cuda", fake)
    return fake


def data(n=300, d=12, seed=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(9, d))
    return (centers[rng.integers(0, 9, n)] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def test_auto_takes_cuda_only_for_large_or_device_input(fake_cuda):
    small = data()
    assert _backends.resolve("auto", small) == "cpp"
    side = 1 << 12  # 4096 x 4096 = 2**24 elements: a zero-stride view, no memory
    assert _backends.resolve("auto", np.broadcast_to(np.float32(0), (side, side))) == "cuda"
    assert _backends.resolve("auto", np.broadcast_to(np.float32(0), (side, side - 1))) == "cpp"
    assert _backends.resolve("cuda", small) == "cuda"


def test_cuda_fit_runs_through_cuda_dense(fake_cuda):
    X = data()
    fit = FacilityLocation(40, backend="cuda").fit(X)
    ref = FacilityLocation(40, backend="cpp").fit(X)
    assert fit.backend_ == "cuda" and len(fake_cuda.built) == 1 and fake_cuda.built[0][1] == "auto"
    np.testing.assert_array_equal(fit.ranking_, ref.ranking_)
    np.testing.assert_allclose(fit.gains_, ref.gains_, rtol=1e-6)
    np.testing.assert_array_equal(fit.weights_, ref.weights_)
    kc = KCenter(10, backend="cuda").fit(X)
    assert kc.backend_ == "cuda"
    np.testing.assert_array_equal(kc.ranking_, KCenter(10, backend="cpp").fit(X).ranking_)


def test_cuda_knn_mode_uses_the_gpu_graph(fake_cuda, monkeypatch):
    calls = []

    def graph(engine, n_neighbors):
        calls.append((type(engine).__name__, n_neighbors))
        return knn_graph_reference(engine, n_neighbors)  # the host reference: what the GPU graph must equal

    monkeypatch.setattr(_cuda, "knn_graph_cuda", graph)
    X = data(seed=4)
    fit = FacilityLocation(30, backend="cuda", mode="knn", n_neighbors=7).fit(X)
    ref = FacilityLocation(30, backend="cpp", mode="knn", n_neighbors=7).fit(X)
    assert calls == [("CudaEngine", 7)]
    np.testing.assert_array_equal(fit.ranking_, ref.ranking_)
    np.testing.assert_array_equal(fit.nearest_, ref.nearest_)


def test_device_input_stays_on_the_device(fake_cuda, monkeypatch):
    # An object that says it is a CUDA array must reach the engine through as_device_features, never
    # through the host conversion.
    X = data(seed=5)
    seen = []

    def to_device(obj):
        seen.append(obj)
        return X

    monkeypatch.setattr(_cuda, "is_device_array", lambda obj: obj is marker)
    monkeypatch.setattr(_cuda, "as_device_features", to_device)

    class Marker:
        shape = X.shape

    marker = Marker()
    fit = FacilityLocation(20, backend="auto").fit(marker)
    assert fit.backend_ == "cuda" and seen == [marker] and fake_cuda.built[0][0] is X
    np.testing.assert_array_equal(fit.ranking_, FacilityLocation(20, backend="cpp").fit(X).ranking_)


def _grad_cuda_stand_in():
    """A CPU tensor that answers like a CUDA tensor needing grad (a model's output): torch's
    ``__cuda_array_interface__`` raises RuntimeError then, which ``hasattr`` does not swallow."""
    torch = pytest.importorskip("torch")

    class GradCudaTensor(torch.Tensor):
        @property
        def is_cuda(self):
            return True

        @property
        def __cuda_array_interface__(self):
            if self.requires_grad:
                raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad. "
                                   "If gradients aren't required, use var.detach() to get Variable that doesn't "
                                   "require grad.")
            raise AttributeError("a CPU stand-in has no device pointer")

    return torch, GradCudaTensor


def test_grad_requiring_device_tensor_is_detached_not_fatal(fake_cuda, monkeypatch):
    torch, GradCudaTensor = _grad_cuda_stand_in()
    X = data(seed=6)
    T = torch.from_numpy(X.copy()).as_subclass(GradCudaTensor).requires_grad_(True)
    with pytest.raises(RuntimeError, match="requires grad"):  # the stand-in raises where torch does
        hasattr(T, "__cuda_array_interface__")
    assert _cuda.is_device_array(T)
    synced = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: type("S", (), {
        "synchronize": lambda self: synced.append(device)})())
    monkeypatch.setattr(fake_cuda, "DenseSimilarity", lambda source, precision, scratch, _f=fake_cuda.DenseSimilarity:
                        _f(source.numpy(), precision, scratch))  # .numpy() raises while grad is required
    fit = FacilityLocation(25, backend="auto").fit(T)
    assert fit.backend_ == "cuda" and synced  # pending writes finished before the engine reads
    assert T.requires_grad  # the caller's tensor is left as it was
    np.testing.assert_array_equal(fit.ranking_, FacilityLocation(25, backend="cpp").fit(X).ranking_)


def test_isa_switch_chooses_the_kernel_family(monkeypatch):
    """MADS_FAST_ISA=portable forces the plain loops; avx512 / avx2 insist on their family for both dtypes;
    auto takes the best the CPU has (int8 without AVX-512 VNNI: the AVX2 int8 kernel); anything else is an
    error."""
    native = _native.load_native("cpp")
    x = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    q = np.clip(np.round(x * 40), -127, 127).astype(np.int8)
    monkeypatch.setenv("MADS_FAST_ISA", "portable")
    assert (native.DenseSimilarity(x).kernel, native.DenseSimilarity(q).kernel) == ("portable-fp32", "portable-int8")
    monkeypatch.setenv("MADS_FAST_ISA", "auto")
    auto = native.DenseSimilarity(x).kernel
    monkeypatch.setenv("MADS_FAST_ISA", "avx512")
    if auto == "avx512-fp32":
        assert native.DenseSimilarity(x).kernel == "avx512-fp32"
    else:
        with pytest.raises(RuntimeError, match="lacks AVX-512"):
            native.DenseSimilarity(x)
    import cpuinfo_flags
    flags = cpuinfo_flags.flags()
    has2 = {"avx2", "fma"} <= flags
    assert auto == ("avx512-fp32" if {"avx512f", "avx512dq"} <= flags else "avx2-fp32" if has2 else "portable-fp32")
    monkeypatch.setenv("MADS_FAST_ISA", "auto")
    assert native.DenseSimilarity(q).kernel == ("avx512-vnni-int8" if {"avx512f", "avx512_vnni"} <= flags
                                                else "avx2-int8" if has2 else "portable-int8")
    monkeypatch.setenv("MADS_FAST_ISA", "avx2")
    if has2:
        assert (native.DenseSimilarity(x).kernel, native.DenseSimilarity(q).kernel) == ("avx2-fp32", "avx2-int8")
    else:
        with pytest.raises(RuntimeError, match="lacks AVX2"):
            native.DenseSimilarity(x)
    monkeypatch.setenv("MADS_FAST_ISA", "sse9")
    with pytest.raises(ValueError, match="MADS_FAST_ISA must be auto, portable, avx2 or avx512"):
        native.DenseSimilarity(x)


# --- the AVX2 int8 kernel against the portable loops, bit for bit -------------------------------------------

INT8_MAX_DIM = 65000  # kInt8MaxDim (facility_location.h)


def _int8_hard_rows(n, d, seed):
    """int8 [n, d] over the full range -128..127, with the rows that stress an int8 kernel: all -128 and all 127
    (the largest products, -128 * -128 included), alternating -128 / 127, two zero rows, duplicates (an
    extreme row and a random one), a single -128 at the last k (the padding quad), the rest uniform."""
    rng = np.random.default_rng(seed)
    X = rng.integers(-128, 128, size=(n, d), dtype=np.int16).astype(np.int8)  # [n, d]
    X[0], X[1], X[3] = -128, 127, 0
    X[2, ::2], X[2, 1::2] = -128, 127
    X[4] = X[0]
    if n > 9:
        X[5], X[6], X[7] = X[9], 0, 0
        X[7, -1] = -128
    return X


def _int8_similarity_reference(X):
    """float32 [N, N]: s(i, j) as the header defines it for int8 rows, from an exact int64 dot product:
    max(0, float32(dot) * (float32(1 / ||x_i||) * float32(1 / ||x_j||))), 0 for a zero row."""
    Xi = X.astype(np.int64)
    dot = Xi @ Xi.T  # [N, N] exact
    sq = np.einsum("ij,ij->i", Xi, Xi).astype(np.float64)
    inv = np.zeros(X.shape[0], np.float32)
    inv[sq > 0] = (1.0 / np.sqrt(sq[sq > 0])).astype(np.float32)
    return np.maximum(dot.astype(np.float32) * (inv[:, None] * inv[None, :]), np.float32(0))


def _portable_order_gains(S, cur):
    """float64 [N]: sum_i max(0, S[i, j] - cur_i) in the portable epilogue's order: float32 terms widened to
    double and summed row by row within each 64-row tile, tile sums added in tile order."""
    n = S.shape[0]
    total = np.zeros(n)
    for t0 in range(0, n, 64):
        g = np.zeros(n)
        for r in range(t0, min(n, t0 + 64)):
            g += np.maximum(S[r] - cur[r], np.float32(0)).astype(np.float64)
        total += g
    return total


class _MatrixEngine:
    """The engine surface knn_graph_reference reads, over a given matrix."""

    def __init__(self, S):
        self.S, self.n = S, S.shape[0]

    def columns(self, rows):
        return self.S[rows].copy(), None


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("n, d", [(70, 1), (5, 3), (131, 31), (64, 32), (65, 33), (129, 63), (200, 64), (77, 65),
                                  (150, 255), (70, 256), (193, 257), (40, 1024), (66, INT8_MAX_DIM)])
def test_avx2_int8_matches_portable_bit_for_bit(monkeypatch, n, d):
    """MADS_FAST_ISA=avx2 (vpmaddwd) and =portable give the same bits for every int8 output: the similarity
    columns (both equal to the exact-integer reference), their gains (in the portable order), column sums,
    the kNN graph (the reference's top-K), and whole lazy greedies (ranking, gains, nearest,
    nearest_similarity) on odd N (not a multiple of the 64-row tile, one below it), D around every multiple
    of the 4-byte quad and the 32-byte load up to kInt8MaxDim, with -128 / 127 rows, zero rows and
    duplicates."""
    import cpuinfo_flags
    if not {"avx2", "fma"} <= cpuinfo_flags.flags():
        pytest.skip("this CPU lacks AVX2/FMA: MADS_FAST_ISA=avx2 has no kernel to compare")
    native = _native.load_native("cpp")
    X = _int8_hard_rows(n, d, seed=n * 7 + d)
    S = _int8_similarity_reference(X)  # [N, N]
    assert S[0, 0] > 0.999 and S[0, 1] == 0 and S[0, 4] == S[0, 0] and not S[3].any()
    cur = (np.random.default_rng(d).random(n) * 0.5).astype(np.float32)  # [N]
    cur[::3] = 0
    idx = np.arange(n)[::-1].copy()  # columns in a scrambled order, several 64-candidate batches when n > 64
    k = max(1, n - 3)
    out = {}
    for isa in ("portable", "avx2"):
        monkeypatch.setenv("MADS_FAST_ISA", isa)
        e = native.DenseSimilarity(X)
        assert e.kernel == f"{isa}-int8"
        cols, gains = e.columns(idx, cur)
        np.testing.assert_array_equal(_bits(cols), _bits(S[:, idx].T))  # s(i, j) as the reference's float
        np.testing.assert_array_equal(_bits(gains), _bits(_portable_order_gains(S, cur)[idx]))
        g = e.neighbor_graph(min(8, n - 1))
        ref_nb, ref_sims = knn_graph_reference(_MatrixEngine(S), min(8, n - 1))
        np.testing.assert_array_equal(g["neighbors"], ref_nb)
        np.testing.assert_array_equal(_bits(g["sims"]), _bits(ref_sims))
        out[isa] = {"sums": e.column_sums(), "graph": g,
                    "sat": e.lazy_greedy(k, graph_k=4), "dense": e.lazy_greedy(k, batch=7, graph_k=0),
                    "cached": e.lazy_greedy(k, memory_budget=e.matrix_bytes), "knn": e.knn_lazy_greedy(k, 5)}
    p, a = out["portable"], out["avx2"]
    np.testing.assert_allclose(p["sums"], S.astype(np.float64).sum(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(_bits(a["sums"]), _bits(p["sums"]))
    for key in ("neighbors", "sims", "threshold", "column_sums"):
        np.testing.assert_array_equal(_bits(a["graph"][key]), _bits(p["graph"][key]))
    for mode in ("sat", "dense", "cached", "knn"):
        for key in ("ranking", "gains", "nearest", "nearest_similarity", "n_evaluations"):
            np.testing.assert_array_equal(_bits(np.asarray(a[mode][key])), _bits(np.asarray(p[mode][key])),
                                          err_msg=f"{mode} {key}")
    for mode in ("sat", "dense", "cached"):  # exact greedies: gains are the reference's coverage increments
        r = p[mode]
        np.testing.assert_array_equal(_bits(r["nearest_similarity"]), _bits(S[np.arange(n), r["nearest"]]))
        cover = np.maximum.accumulate(S[:, r["ranking"]], axis=1).astype(np.float64).sum(axis=0)  # [k]
        np.testing.assert_allclose(r["gains"], np.diff(cover, prepend=0.0), rtol=1e-5, atol=1e-5)
