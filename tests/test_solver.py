"""Facility-location solver: every backend against a naive dense greedy written here (float64, full
similarity for small N, the same tie rule), and backends against each other."""
import math
from pathlib import Path

import numpy as np
import pytest

from mads_fast.errors import BackendUnavailableError, InputError
from mads_fast.solver import FacilityLocation, KCenter, available_backends
from mads_fast.solver import _native

from greedy_reference import cosine64, tau, naive_greedy

pytestmark = pytest.mark.usefixtures("cpu_isa")   # the C++ cases once per kernel family

BACKENDS = ["numpy", "cpp", "cuda"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param not in available_backends():
        pytest.skip(f"backend {request.param!r} does not load here")
    return request.param


def objective(S, picks):
    return float(S[:, picks].max(axis=1).sum()) if len(picks) else 0.0


def clustered(rng, n, d, centers=5, noise=0.3):
    C = rng.normal(size=(centers, d))
    return (C[rng.integers(0, centers, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


def check_against_naive(X, k, backend, **kw):
    S = cosine64(X)
    fl = FacilityLocation(k, backend=backend, **kw).fit(X)
    picks, gains = naive_greedy(S, k)
    np.testing.assert_array_equal(fl.ranking_, picks)
    np.testing.assert_allclose(fl.gains_, gains, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fl.curve_[-1], objective(S, picks), rtol=1e-5, atol=1e-4)
    # nearest_: a pick attaining each example's max similarity to the set
    best = S[:, fl.ranking_].max(axis=1)
    np.testing.assert_allclose(S[np.arange(len(X)), fl.nearest_], best, atol=1e-5)
    np.testing.assert_allclose(fl.nearest_similarity_, best, atol=1e-5)
    assert fl.weights_.sum() == len(X)
    assert fl.backend_ == backend
    return fl


INPUTS = {
    "random": lambda rng: rng.normal(size=(157, 19)).astype(np.float32),
    "clustered": lambda rng: clustered(rng, 203, 8),
    "duplicates": lambda rng: np.repeat(rng.normal(size=(23, 5)), 4, axis=0).astype(np.float32),
    "all_equal": lambda rng: np.ones((31, 7), dtype=np.float32),
    "zero_rows": lambda rng: np.vstack([np.zeros((5, 6)), rng.normal(size=(40, 6)), np.zeros((3, 6))]).astype(
        np.float32),
    "d1": lambda rng: rng.normal(size=(65, 1)).astype(np.float32),
    "d3": lambda rng: rng.normal(size=(129, 3)).astype(np.float32),
    "d17": lambda rng: clustered(rng, 71, 17),
    "d257": lambda rng: clustered(rng, 66, 257, noise=1.0),
    "float64": lambda rng: clustered(rng, 90, 12).astype(np.float64),
    "float16": lambda rng: clustered(rng, 90, 12).astype(np.float16),
    "int8": lambda rng: np.clip(np.round(clustered(rng, 130, 33) * 40), -127, 127).astype(np.int8),
    "int8_d5": lambda rng: rng.integers(-127, 128, size=(77, 5)).astype(np.int8),
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_matches_naive_greedy(backend, name):
    X = INPUTS[name](np.random.default_rng(7))
    check_against_naive(X, max(1, len(X) // 3), backend)


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65])
def test_budget_equals_n(backend, n):
    X = clustered(np.random.default_rng(n), n, 4)
    fl = check_against_naive(X, n, backend)
    assert sorted(fl.ranking_) == list(range(n))
    np.testing.assert_array_equal(fl.weights_, np.ones(n))


def test_exact_ties_pick_lowest_index(backend):
    # Four identical copies of each of three orthogonal directions: the first pick is row 0 (the lowest
    # index of the first tied group), then the lowest index of each remaining group, then the duplicates.
    X = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)
    fl = FacilityLocation(5, backend=backend).fit(X)
    assert fl.ranking_.tolist() == [0, 4, 8, 1, 2]
    np.testing.assert_allclose(fl.gains_, [4, 4, 4, 0, 0], atol=1e-5)


def test_zero_rows_have_zero_similarity(backend):
    X = np.zeros((6, 4), dtype=np.float32)
    X[3] = [1, 2, 3, 4]
    fl = FacilityLocation(2, backend=backend).fit(X)
    assert fl.ranking_.tolist() == [3, 0]  # after row 3 every gain is 0: the lowest index wins
    np.testing.assert_allclose(fl.gains_, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(fl.nearest_similarity_, [0, 0, 0, 1, 0, 0], atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_batch_size_does_not_change_picks(backend, batch_size):
    X = clustered(np.random.default_rng(3), 150, 10, centers=12, noise=0.6)
    check_against_naive(X, 40, backend, batch_size=batch_size)


def test_backends_agree(backend):
    X = clustered(np.random.default_rng(11), 700, 24, centers=30, noise=0.5)
    ref = FacilityLocation(120, backend="numpy").fit(X)
    fl = FacilityLocation(120, backend=backend).fit(X)
    np.testing.assert_array_equal(fl.ranking_, ref.ranking_)
    np.testing.assert_allclose(fl.gains_, ref.gains_, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(fl.weights_, ref.weights_)


def test_fraction_budget_and_fit_transform(backend):
    X = clustered(np.random.default_rng(5), 50, 6)
    fl = FacilityLocation(0.1, backend=backend)
    out = fl.fit_transform(X)
    assert len(fl.ranking_) == 5
    np.testing.assert_array_equal(out, X[fl.ranking_])


def test_torch_input(backend):
    torch = pytest.importorskip("torch")
    X = clustered(np.random.default_rng(6), 60, 9)
    a = FacilityLocation(10, backend=backend).fit(torch.from_numpy(X))
    b = FacilityLocation(10, backend=backend).fit(X)
    np.testing.assert_array_equal(a.ranking_, b.ranking_)
    c = FacilityLocation(10, backend=backend).fit(torch.from_numpy(X).to(torch.bfloat16))
    assert len(c.ranking_) == 10


def test_knn_full_neighbourhood_equals_dense(backend):
    X = clustered(np.random.default_rng(8), 120, 7, centers=9, noise=0.5)
    dense = FacilityLocation(30, backend=backend).fit(X)
    knn = FacilityLocation(30, backend=backend, mode="knn", n_neighbors=119).fit(X)
    np.testing.assert_array_equal(knn.ranking_, dense.ranking_)
    np.testing.assert_allclose(knn.gains_, dense.gains_, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(knn.nearest_, dense.nearest_)


def test_knn_graph_keeps_top_neighbours_ties_to_lowest_index(backend):
    from mads_fast.solver._backends import make_engine
    from mads_fast.solver._inputs import as_features

    X = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    neighbors, sims = make_engine(backend, as_features(X)).knn_graph(2)
    assert neighbors[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert neighbors[0, 1:].tolist() == [1, 3]  # two exact ties at 1.0 beat 4 (0.707)
    assert neighbors[3, 1:].tolist() == [0, 1]
    # row 2 keeps 4 (0.707) and, of the zeros 0, 1, 3, the lowest index; kept lists are in ascending index order
    assert neighbors[2, 1:].tolist() == [0, 4]
    np.testing.assert_allclose(sims[2, 1:], [0, np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(sims[0], [1, 1, 1], atol=1e-6)


def test_knn_objective_is_the_graph_objective(backend):
    X = clustered(np.random.default_rng(9), 90, 5, centers=6, noise=0.8)
    S = cosine64(X)
    k = 4
    W = np.zeros_like(S)
    for i in range(len(X)):
        others = np.argsort(-np.where(np.arange(len(X)) == i, -np.inf, S[i]), kind="stable")[:k]
        W[i, others] = S[i, others]
        W[i, i] = S[i, i]
    fl = FacilityLocation(12, backend=backend, mode="knn", n_neighbors=k).fit(X)
    picks, _ = naive_greedy(W, 12)
    np.testing.assert_array_equal(fl.ranking_, picks)
    np.testing.assert_allclose(fl.objective_, objective(W, picks), rtol=1e-5)


def test_stochastic_same_seed_same_picks_on_every_backend(backend):
    X = clustered(np.random.default_rng(10), 300, 12, centers=20, noise=0.5)
    ref = FacilityLocation(30, backend="numpy", optimizer="stochastic", random_state=4).fit(X)
    a = FacilityLocation(30, backend=backend, optimizer="stochastic", random_state=4).fit(X)
    np.testing.assert_array_equal(a.ranking_, ref.ranking_)
    other = FacilityLocation(30, backend=backend, optimizer="stochastic", random_state=5).fit(X)
    assert other.ranking_.tolist() != a.ranking_.tolist()
    lazy = FacilityLocation(30, backend=backend).fit(X)
    assert a.objective_ >= 0.97 * lazy.objective_
    S = cosine64(X)
    np.testing.assert_allclose(a.curve_[-1], objective(S, a.ranking_), rtol=1e-5)
    sample = math.ceil(300 / 30 * math.log(100))
    assert a.n_evaluations_ == sum(min(sample, 300 - t) for t in range(30))


def test_kcenter_matches_naive(backend):
    X = clustered(np.random.default_rng(12), 110, 6, centers=8, noise=0.4)
    S = cosine64(X)
    kc = KCenter(9, backend=backend).fit(X)
    sums = S.sum(axis=0)
    picks = [int(np.flatnonzero(sums >= sums.max() - tau(sums.max()))[0])]
    radii = []
    for _ in range(9):
        dist = 1.0 - S[:, picks].max(axis=1)
        radii.append(dist.max())
        open_ = np.setdiff1d(np.arange(len(X)), picks)
        best = dist[open_].max()
        picks.append(int(open_[np.flatnonzero(dist[open_] >= best - tau(best))[0]]))
    np.testing.assert_array_equal(kc.ranking_, picks[:9])
    np.testing.assert_allclose(kc.radii_, radii, atol=1e-5)
    assert kc.weights_.sum() == len(X) and kc.backend_ == backend


@pytest.mark.parametrize("X, words", [
    (np.zeros((0, 4), np.float32), "empty"),
    (np.zeros((4, 0), np.float32), "no feature columns"),
    (np.zeros(4, np.float32), "2-D"),
    (np.zeros((2, 2, 2), np.float32), "2-D"),
    (np.array([[1.0, np.nan]]), "NaN"),
    (np.array([[1.0, np.inf]]), "NaN or inf"),
    (np.array([[1e300, 1.0]]), "overflows float32"),
    (np.ones((3, 2), dtype=bool), "dtype bool"),
    (np.ones((3, 2), dtype=complex), "dtype complex"),
    (np.array([["a", "b"]]), "dtype <U1"),
    (np.array([[object(), 1]], dtype=object), "dtype object"),
])
def test_bad_features(X, words):
    with pytest.raises(InputError, match="X") as err:
        FacilityLocation(1, backend="numpy").fit(X)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("budget", [0, -1, 11, True, float("nan"), 0.0, 1.5, -0.2, "3", None])
def test_bad_budget(budget):
    with pytest.raises(InputError, match="budget"):
        FacilityLocation(budget, backend="numpy").fit(np.ones((10, 2), np.float32))
    with pytest.raises(InputError, match="budget"):
        KCenter(budget, backend="numpy").fit(np.ones((10, 2), np.float32))


@pytest.mark.parametrize("kw, name", [
    ({"mode": "sparse"}, "mode"), ({"similarity": "euclidean"}, "similarity"), ({"optimizer": "sgd"}, "optimizer"),
    ({"n_neighbors": 0}, "n_neighbors"), ({"epsilon": 1.5}, "epsilon"), ({"batch_size": 0}, "batch_size"),
    ({"random_state": -1}, "random_state"), ({"backend": "tpu"}, "backend"),
])
def test_bad_options(kw, name):
    with pytest.raises(InputError, match=name):
        FacilityLocation(2, **{"backend": "numpy", **kw}).fit(np.ones((10, 2), np.float32))


def test_unavailable_backend_raises_and_is_cached(monkeypatch):
    calls = []

    def broken(name):
        calls.append(name)
        raise ImportError("undefined symbol: simulated")

    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setattr(_native, "_import", broken)
    for _ in range(2):
        with pytest.raises(BackendUnavailableError, match=r"'cpp' cannot load .*simulated.*pip install -e"):
            FacilityLocation(1, backend="cpp").fit(np.ones((3, 2), np.float32))
    assert calls == ["cpp"]
    fl = FacilityLocation(1, backend="auto").fit(np.ones((3, 2), np.float32))
    assert fl.backend_ == "numpy"


def test_import_does_not_load_native():
    import subprocess
    import sys

    code = ("import sys, mads_fast.solver, mads_fast; mads_fast.FacilityLocation; "
            "print(any(m.startswith('mads_fast._solver') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_engine_implements_the_engine_protocol(backend):
    """Each backend's engine has every member of ``_engine.Engine`` and no solver asks which engine it holds."""
    from mads_fast.solver._backends import ENGINES, make_engine
    from mads_fast.solver._engine import Engine
    from mads_fast.solver._inputs import as_features

    methods = [m for m, v in vars(Engine).items() if not m.startswith("_") and (callable(v) or isinstance(v, classmethod))]
    assert {"columns", "column_sums", "lazy_greedy", "knn_graph", "knn_lazy_greedy", "prepare"} <= set(methods)
    for cls in ENGINES.values():
        assert all(callable(getattr(cls, m, None)) for m in methods), cls
    engine = make_engine(backend, as_features(np.eye(5, 3, dtype=np.float32)))
    assert engine.name == backend and (engine.n, engine.d) == (5, 3)
    assert isinstance(engine.kernel, str) and isinstance(engine.default_batch, int)
    solver_sources = "".join((Path(__file__).parents[1] / "mads_fast" / "solver" / f).read_text()
                             for f in ("facility_location.py", "kcenter.py"))
    assert all(probe not in solver_sources for probe in (".name ==", "hasattr(", '== "cuda"', 'getattr('))


def test_mode_auto_is_dense_below_the_threshold_and_knn_from_it(monkeypatch, caplog):
    import mads_fast.solver.facility_location as fl_mod

    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    dense = FacilityLocation(budget=30, mode="dense").fit(X)
    knn = FacilityLocation(budget=30, mode="knn", n_neighbors=8, knn_index="exact").fit(X)
    assert not np.array_equal(dense.ranking_, knn.ranking_)  # the two modes differ on this input
    monkeypatch.setattr(fl_mod, "AUTO_KNN_MIN_N", 301)
    below = FacilityLocation(budget=30, mode="auto", n_neighbors=8, knn_index="exact").fit(X)
    assert below.mode_ == "dense" and np.array_equal(below.ranking_, dense.ranking_)
    monkeypatch.setattr(fl_mod, "AUTO_KNN_MIN_N", 300)
    with caplog.at_level("INFO", logger="mads_fast"):
        above = FacilityLocation(budget=30, mode="auto", n_neighbors=8, knn_index="exact").fit(X)
    assert above.mode_ == "knn" and np.array_equal(above.ranking_, knn.ranking_)
    assert np.array_equal(above.gains_, knn.gains_)
    assert "solver mode: knn (auto: N=300 >= 300)" in caplog.text
    assert FacilityLocation(budget=30).mode == "auto"
