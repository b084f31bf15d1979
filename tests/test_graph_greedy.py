"""The native greedy over a given kNN graph (``graph_lazy_greedy`` of the compiled modules) against the Python
reference it must equal: ``_lazy.lazy_greedy`` over ``_oracles.SparseOracle`` on the same graph, with the same
batch. Exact ranking arrays, on odd N, exact ties, zero rows and budget = N; the graph of the C++ first
pass gives the picks of ``DenseSimilarity.knn_lazy_greedy``; bad input raises."""
import importlib

import numpy as np
import pytest

from mads_fast.solver import available_backends
from mads_fast.solver._lazy import lazy_greedy
from mads_fast.solver._oracles import SparseOracle

pytestmark = pytest.mark.skipif("cpp" not in available_backends(), reason="the C++ solver module does not load")


@pytest.fixture(scope="module")
def cpu():
    from mads_fast.solver._backends import load_native

    return load_native("cpp")


def random_graph(rng, n, width, levels=None):
    """Row i: itself, then width - 1 distinct other columns (ascending); sims uniform in [0, 1), or drawn from
    `levels` equally spaced values (exact ties)."""
    w = min(width, n)
    neighbors = np.empty((n, w), dtype=np.int64)
    for i in range(n):
        others = rng.choice(np.delete(np.arange(n), i), w - 1, replace=False)
        neighbors[i] = np.concatenate([[i], np.sort(others)])
    if levels is None:
        sims = rng.random((n, w)).astype(np.float32)
    else:
        sims = (rng.integers(0, levels, size=(n, w)) / levels).astype(np.float32)
    return neighbors, sims


def reference(neighbors, sims, budget, batch):
    return lazy_greedy(SparseOracle(neighbors, sims), budget, batch or 1)


def assert_same_as_reference(out, ref):
    np.testing.assert_array_equal(out["ranking"], ref.ranking)
    np.testing.assert_allclose(out["gains"], ref.gains, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(out["nearest"], ref.nearest)
    np.testing.assert_array_equal(out["nearest_similarity"], ref.nearest_similarity)
    # The native loop takes the reference's steps in its order, so it evaluates the same candidates too.
    assert out["n_evaluations"] == ref.n_evaluations


@pytest.mark.parametrize("n", [1, 2, 3, 17, 257])
@pytest.mark.parametrize("width", [1, 4, 9])
@pytest.mark.parametrize("batch", [1, 0, 5])
def test_random_graphs_equal_the_reference(cpu, n, width, batch):
    rng = np.random.default_rng(1000 * n + 10 * width + batch)
    neighbors, sims = random_graph(rng, n, width)
    for budget in sorted({1, (n + 1) // 2, n}):
        assert_same_as_reference(cpu.graph_lazy_greedy(neighbors, sims, budget, batch),
                                 reference(neighbors, sims, budget, batch))


@pytest.mark.parametrize("n", [17, 257])
@pytest.mark.parametrize("batch", [1, 0, 3])
def test_exact_ties_go_to_the_lowest_index(cpu, n, batch):
    """Few similarity levels and duplicated rows: many candidates share a gain exactly."""
    rng = np.random.default_rng(n + batch)
    neighbors, sims = random_graph(rng, n, 6, levels=3)
    neighbors[1::2] = neighbors[0:n - 1:2]  # every odd row repeats the even row before it
    sims[1::2] = sims[0:n - 1:2]
    ref = reference(neighbors, sims, n, batch)
    assert_same_as_reference(cpu.graph_lazy_greedy(neighbors, sims, n, batch), ref)


def test_equal_sims_everywhere(cpu):
    """One value on every edge: every tie is decided by the lowest index alone."""
    rng = np.random.default_rng(5)
    neighbors, _ = random_graph(rng, 40, 5)
    sims = np.full(neighbors.shape, 0.5, dtype=np.float32)
    ref = reference(neighbors, sims, 40, 0)
    assert_same_as_reference(cpu.graph_lazy_greedy(neighbors, sims, 40), ref)


@pytest.mark.parametrize("batch", [1, 0])
def test_zero_rows_and_an_all_zero_graph(cpu, batch):
    rng = np.random.default_rng(6)
    neighbors, sims = random_graph(rng, 31, 4)
    sims[[0, 7, 8, 30]] = 0.0  # rows covered by nothing: they keep the first pick, similarity 0
    ref = reference(neighbors, sims, 31, batch)
    out = cpu.graph_lazy_greedy(neighbors, sims, 31, batch)
    assert_same_as_reference(out, ref)
    # Every gain 0: the picks are 0, 1, 2, ... and every row's nearest is the first pick.
    zero = np.zeros_like(sims)
    out = cpu.graph_lazy_greedy(neighbors, zero, 10, batch)
    assert_same_as_reference(out, reference(neighbors, zero, 10, batch))
    np.testing.assert_array_equal(out["ranking"], np.arange(10))
    np.testing.assert_array_equal(out["nearest"], np.zeros(31, dtype=np.int64))
    np.testing.assert_array_equal(out["gains"], np.zeros(10))


def test_rows_listing_no_column_and_non_contiguous_input(cpu):
    rng = np.random.default_rng(7)
    neighbors, sims = random_graph(rng, 25, 5)
    out = cpu.graph_lazy_greedy(np.asfortranarray(neighbors), sims[:, ::1].copy(order="F"), 25)
    assert_same_as_reference(out, reference(neighbors, sims, 25, 0))
    empty = cpu.graph_lazy_greedy(np.zeros((4, 0), np.int64), np.zeros((4, 0), np.float32), 4)
    np.testing.assert_array_equal(empty["ranking"], np.arange(4))


def test_output_is_the_lazy_greedy_dict(cpu):
    rng = np.random.default_rng(8)
    neighbors, sims = random_graph(rng, 60, 6)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    dense = cpu.DenseSimilarity(X).lazy_greedy(20)
    calls = []
    out = cpu.graph_lazy_greedy(neighbors, sims, 20, 0, calls.append)
    assert set(out) == set(dense)
    assert calls and calls[-1] == 20 and calls == sorted(calls)
    assert out["n_passes"] == 0 and out["multiply_adds"] == 0 and out["n_dense_evaluations"] == 0
    np.testing.assert_array_equal(out["unsaturated"], np.zeros(20, dtype=np.int64))
    assert out["evaluations"].shape == (20,) and out["evaluations"][-1] == out["n_evaluations"]
    assert np.all(np.diff(out["evaluations"]) >= 1) and out["evaluations"][0] > 60  # the N bounds first
    assert out["greedy_seconds"] >= 0 and out["first_pass_seconds"] == 0


def clustered(rng, n, d, centers, noise):
    C = rng.normal(size=(centers, d))
    return (C[rng.integers(0, centers, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.usefixtures("cpu_isa")  # both C++ kernel families build the graph
@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("k", [1, 5, 40, 500])
def test_first_pass_graph_gives_the_knn_lazy_greedy_picks(cpu, dtype, k):
    rng = np.random.default_rng(k)
    X = clustered(rng, 211, 10, centers=15, noise=0.5)
    if dtype == "int8":
        X = np.clip(np.round(X / np.abs(X).max() * 127), -127, 127).astype(np.int8)
        X[[3, 100]] = 0  # zero rows: similarity 0 with everything
    eng = cpu.DenseSimilarity(X)
    g = eng.neighbor_graph(k)
    for budget, batch in [(60, 0), (211, 1), (30, 4)]:
        knn = eng.knn_lazy_greedy(budget, k, batch)
        out = cpu.graph_lazy_greedy(g["neighbors"], g["sims"], budget, batch)
        # One sparse greedy on the same graph: identical to the bit.
        for key in ("ranking", "gains", "nearest", "nearest_similarity", "evaluations"):
            np.testing.assert_array_equal(out[key], knn[key], err_msg=key)
        assert out["n_evaluations"] == knn["n_evaluations"]
        assert knn["n_passes"] == 1 and knn["first_pass_multiply_adds"] > 0
        assert_same_as_reference(out, reference(g["neighbors"], g["sims"], budget, batch))


BAD = {
    "neighbors int32": (lambda nb, s: (nb.astype(np.int32), s), ValueError, "neighbors must be a 2-D int64"),
    "neighbors float": (lambda nb, s: (nb.astype(np.float64), s), ValueError, "neighbors must be a 2-D int64"),
    "neighbors 1-D": (lambda nb, s: (nb[:, 0].copy(), s), ValueError, "neighbors must be a 2-D int64"),
    "sims float64": (lambda nb, s: (nb, s.astype(np.float64)), ValueError, "sims must be a 2-D float32"),
    "sims 3-D": (lambda nb, s: (nb, s[:, :, None].copy()), ValueError, "sims must be a 2-D float32"),
    "shape mismatch": (lambda nb, s: (nb, s[:, :2].copy()), ValueError, "shape of neighbors"),
    "index N": (lambda nb, s: (np.where(nb == 3, 12, nb), s), IndexError, r"outside \[0, N = 12\)"),
    "index -1": (lambda nb, s: (np.where(nb == 3, -1, nb), s), IndexError, "= -1 is outside"),
    "column twice": (lambda nb, s: (np.concatenate([nb, nb[:, :1]], axis=1),
                                    np.concatenate([s, s[:, :1]], axis=1)), ValueError, "twice"),
    "negative sim": (lambda nb, s: (nb, np.where(nb == 5, -0.25, s).astype(np.float32)), ValueError, ">= 0"),
    "nan sim": (lambda nb, s: (nb, np.where(nb == 5, np.nan, s).astype(np.float32)), ValueError, "finite"),
    "inf sim": (lambda nb, s: (nb, np.where(nb == 5, np.inf, s).astype(np.float32)), ValueError, "finite"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_graphs_raise(cpu, name):
    neighbors, sims = random_graph(np.random.default_rng(9), 12, 4)
    change, error, match = BAD[name]
    nb, s = change(neighbors, sims)
    with pytest.raises(error, match=match):
        cpu.graph_lazy_greedy(nb, s, 5)


@pytest.mark.parametrize("budget, batch, match", [(0, 0, "budget"), (13, 0, "budget"), (3, -1, "batch")])
def test_bad_budget_or_batch_raise(cpu, budget, batch, match):
    neighbors, sims = random_graph(np.random.default_rng(10), 12, 4)
    with pytest.raises(ValueError, match=match):
        cpu.graph_lazy_greedy(neighbors, sims, budget, batch)


def test_the_cuda_module_binds_the_same_function(cpu):
    """The CUDA module compiles the same host function: it runs without a GPU wherever the module imports."""
    try:
        cuda = importlib.import_module("mads_fast._solver_cuda")
    except ImportError as exc:
        pytest.skip(f"mads_fast._solver_cuda does not import: {exc}")
    neighbors, sims = random_graph(np.random.default_rng(11), 101, 7, levels=4)
    a = cuda.graph_lazy_greedy(neighbors, sims, 101, 0)
    b = cpu.graph_lazy_greedy(neighbors, sims, 101, 0)
    assert set(a) == set(b)
    for key in ("ranking", "gains", "nearest", "nearest_similarity", "evaluations"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with pytest.raises(IndexError):
        cuda.graph_lazy_greedy(np.full_like(neighbors, 101), sims, 5)
