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
    """MADS_FAST_ISA=portable forces the plain loops; avx512 / avx2 insist on their family (int8 has no AVX2
    kernel and stays portable there); auto takes the best the CPU has; anything else is an error."""
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
    monkeypatch.setenv("MADS_FAST_ISA", "avx2")
    if has2:
        assert (native.DenseSimilarity(x).kernel, native.DenseSimilarity(q).kernel) == ("avx2-fp32", "portable-int8")
    else:
        with pytest.raises(RuntimeError, match="lacks AVX2"):
            native.DenseSimilarity(x)
    monkeypatch.setenv("MADS_FAST_ISA", "sse9")
    with pytest.raises(ValueError, match="MADS_FAST_ISA must be auto, portable, avx2 or avx512"):
        native.DenseSimilarity(x)
