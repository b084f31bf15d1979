"""C++ sparse-saturation solver: the first-pass top-K graph against a NumPy argsort reference, and the
saturation scheme's picks against a naive float64 greedy at every graph width (0 = no graph, 1, small,
larger than N), on inputs that hit its edges: rows exactly at their threshold, zero rows, int8, U
emptying early and U never emptying."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mads_fast.solver import FacilityLocation, available_backends
from mads_fast.solver._native import load_native
from mads_fast.solver._knn import knn_graph_reference
from mads_fast.solver._lazy import lazy_greedy
from mads_fast.solver._numpy_impl import NumpyEngine
from mads_fast.solver._oracles import SparseOracle

from greedy_reference import cosine64, naive_greedy

pytestmark = [pytest.mark.skipif("cpp" not in available_backends(), reason="the C++ solver module does not load"),
              pytest.mark.usefixtures("cpu_isa")]   # once per C++ kernel family


def engine(X):
    X = X if X.dtype == np.int8 else X.astype(np.float32)
    return load_native("cpp").DenseSimilarity(np.ascontiguousarray(X))


def topk_reference(S32, k):
    """Per row: the k most similar other rows (similarity desc, then lowest index), sorted by index,
    and the k-th largest similarity. S32 is the engine's own float32 similarity (ties are exact there)."""
    n = S32.shape[0]
    k = min(k, n - 1)
    lists, thresholds = [], []
    for i in range(n):
        others = np.array([c for c in range(n) if c != i], dtype=np.int64)
        order = np.lexsort((others, -S32[i, others].astype(np.float64)))[:k]  # primary: -sim
        chosen = others[order]
        lists.append(sorted(chosen.tolist()))
        thresholds.append(0.0 if k == n - 1 else float(S32[i, chosen[-1]]))
    return lists, np.array(thresholds, dtype=np.float32)


def clustered(rng, n, d, centers=6, noise=0.4):
    C = rng.normal(size=(centers, d))
    return (C[rng.integers(0, centers, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


GRAPH_INPUTS = {
    "clustered": lambda rng: clustered(rng, 150, 9),
    "ties": lambda rng: np.repeat(rng.normal(size=(12, 4)), 7, axis=0).astype(np.float32),  # 7 copies each
    "zero_rows": lambda rng: np.vstack([np.zeros((4, 5)), rng.normal(size=(60, 5)), np.zeros((2, 5))]).astype(
        np.float32),
    "int8": lambda rng: rng.integers(-4, 5, size=(97, 6)).astype(np.int8),  # many exact ties and zero rows
    "one_row": lambda rng: rng.normal(size=(1, 3)).astype(np.float32),
}


@pytest.mark.parametrize("name", sorted(GRAPH_INPUTS))
@pytest.mark.parametrize("k", [1, 5, 64, 1000])
def test_first_pass_topk_equals_argsort_reference(name, k):
    X = GRAPH_INPUTS[name](np.random.default_rng(3))
    eng = engine(X)
    n = len(X)
    S32, _ = eng.columns(np.arange(n), np.zeros(n, np.float32))  # [N, N] float32 (test sizes only)
    g = eng.neighbor_graph(k)
    width = min(k, n - 1) + 1
    assert g["neighbors"].shape == (n, width) and g["sims"].shape == (n, width)
    np.testing.assert_array_equal(g["neighbors"][:, 0], np.arange(n))  # self first
    np.testing.assert_array_equal(g["sims"][:, 0], S32[np.arange(n), np.arange(n)])
    lists, thresholds = topk_reference(S32, k)
    for i in range(n):
        assert g["neighbors"][i, 1:].tolist() == lists[i], f"row {i}"
        np.testing.assert_array_equal(g["sims"][i, 1:], S32[i, g["neighbors"][i, 1:]])
    np.testing.assert_array_equal(g["threshold"], thresholds)
    # the column sums of the same pass are the exact initial gains
    np.testing.assert_allclose(g["column_sums"], S32.astype(np.float64).sum(axis=1), rtol=1e-5, atol=1e-5)


def test_graph_equals_python_knn_graph():
    X = clustered(np.random.default_rng(4), 200, 7, centers=10)
    eng = engine(X)
    from mads_fast.solver._backends import make_engine

    native = make_engine("cpp", X)
    ref_neighbors, ref_sims = knn_graph_reference(native, 9)
    g = eng.neighbor_graph(9)
    np.testing.assert_array_equal(g["neighbors"], ref_neighbors)
    np.testing.assert_array_equal(g["sims"], ref_sims)


SATURATION_INPUTS = {
    "clustered": lambda rng: clustered(rng, 240, 10, centers=12, noise=0.5),
    # 8 copies of each of 20 directions: a row's K-th similarity is 1.0 for K <= 7, so a pick of its
    # group puts cur exactly at the threshold (cur_i == t_i saturates)
    "at_threshold": lambda rng: np.repeat(rng.normal(size=(20, 6)), 8, axis=0).astype(np.float32),
    "zero_rows": lambda rng: np.vstack([np.zeros((7, 8)), clustered(rng, 100, 8), np.zeros((5, 8))]),
    "int8": lambda rng: np.clip(np.round(clustered(rng, 180, 16) * 30), -127, 127).astype(np.int8),
    "random": lambda rng: rng.normal(size=(130, 40)).astype(np.float32),  # flat: U rarely empties
}


@pytest.mark.parametrize("name", sorted(SATURATION_INPUTS))
@pytest.mark.parametrize("graph_k", [0, 1, 3, 7, 64, 10_000])
def test_saturation_picks_equal_naive_greedy(name, graph_k):
    X = SATURATION_INPUTS[name](np.random.default_rng(5))
    n = len(X)
    k = n // 2
    picks, gains = naive_greedy(cosine64(X), k)
    out = engine(X).lazy_greedy(k, 0, None, graph_k)
    np.testing.assert_array_equal(out["ranking"], picks)
    np.testing.assert_allclose(out["gains"], gains, rtol=1e-5, atol=1e-4)
    S = cosine64(X)
    np.testing.assert_allclose(out["nearest_similarity"], S[:, picks].max(axis=1), atol=1e-5)
    np.testing.assert_allclose(S[np.arange(n), out["nearest"]], S[:, picks].max(axis=1), atol=1e-5)
    assert out["unsaturated"].shape == (k,) and np.all(np.diff(out["unsaturated"]) <= 0)
    if graph_k == 0:
        assert np.all(out["unsaturated"] == n) and out["n_repacks"] == 0
    if graph_k >= n - 1:  # complete lists: every row is sparse from the start, no GEMM after the first pass
        assert out["unsaturated"][0] == 0 and out["n_dense_evaluations"] == 0 and out["n_passes"] == 1


def test_u_empties_early_and_evaluations_turn_sparse():
    # 40 clusters: one pick per cluster saturates its rows, so U is empty after ~37 picks and the
    # remaining picks run no GEMM at all. (Tighter clusters, noise 0.05, put the late gains, ~0.004 from
    # similarities ~0.997, below float32 resolution, where no float32 solver can match float64 picks.)
    rng = np.random.default_rng(6)
    X = clustered(rng, 400, 24, centers=40, noise=0.2)
    out = engine(X).lazy_greedy(120, 0, None, 16)
    picks, _ = naive_greedy(cosine64(X), 120)
    np.testing.assert_array_equal(out["ranking"], picks)
    u = out["unsaturated"]
    assert u[-1] == 0 and int(np.argmax(u == 0)) < 60
    assert out["n_repacks"] >= 1
    no_graph = engine(X).lazy_greedy(120, 0, None, 0)
    assert out["n_dense_evaluations"] < no_graph["n_dense_evaluations"]
    assert out["multiply_adds"] < no_graph["multiply_adds"]


def test_u_never_empties():
    # Flat random data in 64-d with K = 1: a row's nearest other point is rarely picked, so most rows stay
    # unsaturated to the end and every evaluation keeps its dense part.
    X = np.random.default_rng(7).normal(size=(150, 64)).astype(np.float32)
    out = engine(X).lazy_greedy(30, 0, None, 1)
    picks, _ = naive_greedy(cosine64(X), 30)
    np.testing.assert_array_equal(out["ranking"], picks)
    assert out["unsaturated"][-1] >= 50 and out["n_dense_evaluations"] > 0  # 69 of 150 left here


@pytest.mark.parametrize("batch", [1, 6, 48])
def test_batch_and_cache_do_not_change_picks(batch):
    X = clustered(np.random.default_rng(8), 300, 12, centers=25, noise=0.6)
    picks, _ = naive_greedy(cosine64(X), 150)
    out = engine(X).lazy_greedy(150, batch, None, 8)
    np.testing.assert_array_equal(out["ranking"], picks)
    assert out["evaluations"][-1] == out["n_evaluations"] and np.all(np.diff(out["evaluations"]) >= 0)


@pytest.mark.parametrize("n_neighbors", [1, 4, 20])
def test_native_knn_greedy_equals_python_on_same_graph(n_neighbors):
    X = clustered(np.random.default_rng(9), 160, 8, centers=12, noise=0.5)
    eng = engine(X)
    g = eng.neighbor_graph(n_neighbors)
    ref = lazy_greedy(SparseOracle(g["neighbors"], g["sims"]), 40, 1)
    out = eng.knn_lazy_greedy(40, n_neighbors, 0, None)
    np.testing.assert_array_equal(out["ranking"], ref.ranking)
    np.testing.assert_allclose(out["gains"], ref.gains, rtol=1e-6, atol=1e-6)


def test_knn_mode_uses_native_graph_and_matches_numpy_backend():
    X = clustered(np.random.default_rng(10), 180, 9, centers=14, noise=0.5)
    cpp = FacilityLocation(30, backend="cpp", mode="knn", n_neighbors=6).fit(X)
    ref = FacilityLocation(30, backend="numpy", mode="knn", n_neighbors=6).fit(X)
    np.testing.assert_array_equal(cpp.ranking_, ref.ranking_)
    np.testing.assert_allclose(cpp.gains_, ref.gains_, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cpp.nearest_, ref.nearest_)


def test_profile_is_reported():
    X = clustered(np.random.default_rng(11), 500, 16, centers=20)
    fl = FacilityLocation(50, backend="cpp").fit(X)
    p = fl.profile_
    # N=500 pads to 512 rows in two 384-blocks; candidates go in groups of 6. Block 1 (116 candidates ->
    # 120) meets rows 0..511; block 0 (384 candidates) meets rows 0..383: one triangle, not N^2.
    assert p["first_pass_multiply_adds"] == 512 * 120 * 16 + 384 * 384 * 16
    assert p["multiply_adds"] >= p["first_pass_multiply_adds"]
    assert p["first_pass_seconds"] >= 0 and p["greedy_seconds"] >= 0
    assert p["unsaturated"].shape == (50,) and p["evaluations"].shape == (50,)
    assert FacilityLocation(5, backend="numpy").fit(X).profile_ == {}


@st.composite
def small_features(draw):
    n = draw(st.integers(2, 60))
    d = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "clustered", "int8", "duplicates"]))
    if kind == "normal":
        return rng.normal(size=(n, d)).astype(np.float32)
    if kind == "clustered":
        return clustered(rng, n, d, centers=3, noise=0.2)
    if kind == "int8":
        return rng.integers(-3, 4, size=(n, d)).astype(np.int8)
    return rng.normal(size=(max(1, n // 4), d))[rng.integers(0, max(1, n // 4), n)].astype(np.float32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=small_features(), graph_k=st.sampled_from([0, 1, 2, 5, 100]), frac=st.floats(0.05, 1.0),
       batch=st.sampled_from([0, 1, 7]))
def test_property_saturation_equals_naive(X, graph_k, frac, batch):
    k = max(1, round(frac * len(X)))
    eng = engine(X)
    out = eng.lazy_greedy(k, batch, None, graph_k)
    # The saturation graph never changes a pick of the plain dense path on the same float32 similarities.
    plain = eng.lazy_greedy(k, 0, None, 0)
    np.testing.assert_array_equal(out["ranking"], plain["ranking"])
    np.testing.assert_allclose(out["gains"], plain["gains"], rtol=1e-6, atol=1e-6)
    if X.shape[1] >= 2:
        # At D = 1 a float32 unit row is +-(1 +- 1 ulp), so exactly equal similarities differ by an ulp and
        # leave ~1e-7 per row of gain where float64 has 0: beyond tau, any float32 solver departs there.
        picks, gains = naive_greedy(cosine64(X), k)
        np.testing.assert_array_equal(out["ranking"], picks)
        np.testing.assert_allclose(out["gains"], gains, rtol=1e-5, atol=1e-4)


def test_numpy_similarity_matches_native_bits_for_int8():
    # Both compute float(dot) * (inv_i * inv_c), so the reference and the C++ columns agree exactly.
    X = np.random.default_rng(12).integers(-100, 101, size=(70, 33)).astype(np.int8)
    cols, _ = engine(X).columns(np.arange(70), np.zeros(70, np.float32))
    ref, _ = NumpyEngine(X).columns(np.arange(70), np.zeros(70, np.float32))
    np.testing.assert_array_equal(cols, ref)


def test_int8_width_limit():
    # kInt8MaxDim (facility_location.h): the widest int8 rows whose dot products stay exact in int32.
    assert engine(np.ones((2, 65000), np.int8)).d == 65000
    with pytest.raises(ValueError, match=r"int8 features need D <= 65000 \(exact int32 dot products\)"):
        engine(np.ones((2, 65001), np.int8))


@pytest.mark.parametrize("graph_k", [0, 8])
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_full_refresh_keeps_picks_exact(graph_k, dtype):
    # Broad overlapping clusters in 16-d: every early pick lowers most gains, so a step's lazy
    # re-evaluation passes N/4 columns and the solver switches to the triangular refresh of every gain.
    # Odd N (701: not a multiple of the 64-row tile nor the 384 block) and zero rows on both sides of a block.
    rng = np.random.default_rng(21)
    X = clustered(rng, 701, 16, centers=6, noise=1.5)
    X[[0, 383, 384, 700]] = 0.0
    if dtype == "int8":
        X = np.clip(np.round(X / np.abs(X).max() * 127), -127, 127).astype(np.int8)
    out = engine(X).lazy_greedy(90, 0, None, graph_k)
    picks, gains = naive_greedy(cosine64(X), 90)
    assert out["n_refreshes"] >= 1
    np.testing.assert_array_equal(out["ranking"], picks)
    np.testing.assert_allclose(out["gains"], gains, rtol=1e-5, atol=1e-5)
