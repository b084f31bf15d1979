"""knn mode's index (``mads_fast.solver._knn_index``): the FAISS IVF graph obeys the knn_graph contract and
reports the recall it really has, nprobe is tuned before the full search, the nearest pick at scale agrees
with the dense one, ``auto`` and the errors, and the synthetic store of bench/synthetic_store.py.

Every expectation is computed here independently (NumPy float64 cosines, brute-force top-K), never taken
from the code under test."""
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from mads_fast.cli import main
from mads_fast.errors import InputError
from mads_fast.solver import FacilityLocation, available_backends
from mads_fast.solver import _knn_index

faiss = pytest.importorskip("faiss")

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import synthetic_store  # noqa: E402

BACKENDS = [b for b in ("numpy", "cpp") if b in available_backends()]


def clustered(n, d=32, c=12, spread=0.5, seed=0, dtype=np.int8):
    """Gaussian mixture rows (int8 by default, scaled to use the range)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d))
    x = centres[rng.integers(0, c, n)] + spread * rng.standard_normal((n, d))
    if dtype == np.int8:
        return np.clip(np.rint(x * 127 / np.abs(x).max(axis=1, keepdims=True)), -127, 127).astype(np.int8)
    return x.astype(dtype)


def cosine(X):
    x = X.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def exact_topk(S, rows, k):
    """Brute force: each row's k most similar other rows (clipped at 0, ties to the lowest index)."""
    out = []
    for i in rows:
        s = np.maximum(S[i].copy(), 0)
        s[i] = -1
        order = np.lexsort((np.arange(s.size), -s))  # by similarity desc, then index asc
        out.append(np.sort(order[:k]))
    return np.array(out)


@pytest.fixture(scope="module")
def data():
    return clustered(2000)


def fit(X, **kw):
    kw.setdefault("backend", "numpy")
    return FacilityLocation(kw.pop("budget", 0.05), mode="knn", **kw).fit(X)


def graph_of(X, k=10, recall=0.9, seed=0, backend="numpy"):
    from mads_fast.solver._backends import make_engine, prepare

    Xp, name = prepare(backend, X)
    engine = make_engine(name, Xp)
    stats = {}
    neighbors, sims = _knn_index.ivf_graph(engine, Xp, k, recall, seed, stats)
    return neighbors, sims, stats


# ---------------------------------------------------------------------------------------------
# the graph


def test_ivf_graph_obeys_the_knn_graph_contract(data):
    k = 10
    neighbors, sims, stats = graph_of(data, k)
    n = data.shape[0]
    assert neighbors.shape == (n, k + 1) and neighbors.dtype == np.int64 and sims.dtype == np.float32
    np.testing.assert_array_equal(neighbors[:, 0], np.arange(n))
    others = neighbors[:, 1:]
    assert np.all(np.diff(others, axis=1) > 0), "others ascending and distinct"
    assert np.all(others != np.arange(n)[:, None]) and others.min() >= 0 and others.max() < n
    assert np.all(np.isfinite(sims)) and sims.min() >= 0
    S = cosine(data)
    expected = np.maximum(np.take_along_axis(S, neighbors, axis=1), 0)
    np.testing.assert_allclose(sims, expected, atol=2e-6)
    assert 1 <= stats["knn_nprobe"] <= stats["knn_nlist"] and stats["knn_recall"] >= 0.9
    assert stats["knn_build_seconds"] >= stats["knn_train_seconds"] > 0 and stats["knn_search_seconds"] > 0


def test_reported_recall_is_the_graphs_recall_on_the_sample(data):
    k = 10
    neighbors, _, stats = graph_of(data, k, recall=0.8)
    sample = _knn_index.sample_rows(data.shape[0], 0)
    assert stats["knn_recall_sample"] == sample.size == 1000
    exact = exact_topk(cosine(data), sample, k)
    hits = sum(np.intersect1d(a, e).size for a, e in zip(neighbors[sample, 1:], exact))
    assert stats["knn_recall"] == pytest.approx(hits / exact.size, abs=1e-12)
    assert stats["knn_recall"] >= 0.8


def test_nprobe_grows_with_the_recall_target(data):
    low = graph_of(data, 10, recall=0.2)[2]
    high = graph_of(data, 10, recall=0.99)[2]
    assert low["knn_nprobe"] <= high["knn_nprobe"]
    assert high["knn_recall"] >= 0.99 and low["knn_recall"] >= 0.2


def test_same_input_same_graph(data):
    a, sa, _ = graph_of(data, 8, seed=3)
    b, sb, _ = graph_of(data, 8, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)


def test_thread_count_does_not_change_the_graph(data):
    threads = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one, one_s, _ = graph_of(data, 8)
        faiss.omp_set_num_threads(2)
        two, two_s, _ = graph_of(data, 8)
    finally:
        faiss.omp_set_num_threads(threads)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one_s, two_s)


def test_search_blocks_do_not_change_the_graph(data, monkeypatch):
    whole, whole_s, _ = graph_of(data, 8)
    monkeypatch.setattr(_knn_index, "SEARCH_BLOCK_BYTES", 37 * (4 * data.shape[1] + 12 * 9))  # 37 rows a block
    assert _knn_index.UnitRows(data).rows_per_block(12 * 9) == 37
    blocked, blocked_s, _ = graph_of(data, 8)
    np.testing.assert_array_equal(blocked, whole)
    np.testing.assert_array_equal(blocked_s, whole_s)


def test_missing_neighbours_are_filled_at_similarity_zero():
    # FAISS results with holes (-1) and self absent: K others, ascending, the holes lowest-index rows at 0
    ids = np.array([[5, -1, 2, -1], [1, 0, 3, -1]])
    dist = np.array([[0.9, 0, -0.2, 0], [1.0, 0.5, 0.4, 0]], dtype=np.float32)
    neighbors, sims = _knn_index.to_graph_rows(ids, dist, np.array([4, 1]), np.array([1.0, 1.0]), 3, 8)
    np.testing.assert_array_equal(neighbors, [[4, 0, 2, 5], [1, 0, 2, 3]])
    np.testing.assert_allclose(sims, [[1, 0, 0, 0.9], [1, 0.5, 0, 0.4]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_runs_the_same_greedy_on_the_ivf_graph(data, backend):
    """numpy (SparseOracle) and cpp (native graph_lazy_greedy) read the same graph, so pick the same."""
    ref = fit(data, knn_index="ivf", n_neighbors=10, backend="numpy")
    out = fit(data, knn_index="ivf", n_neighbors=10, backend=backend)
    np.testing.assert_array_equal(out.ranking_, ref.ranking_)
    np.testing.assert_allclose(out.gains_, ref.gains_, rtol=1e-9)
    assert out.profile_["knn_index"] == "ivf" and out.profile_["knn_recall"] >= 0.9


def test_ivf_objective_close_to_the_exact_graphs(data):
    """Both pick sets scored on the true dense objective, computed here."""
    S = np.maximum(cosine(data), 0)
    exact = fit(data, knn_index="exact", n_neighbors=10)
    ivf = fit(data, knn_index="ivf", n_neighbors=10)
    f = lambda r: S[:, r].max(axis=1).sum()  # noqa: E731
    assert f(ivf.ranking_) >= 0.99 * f(exact.ranking_)
    assert exact.profile_["knn_index"] == "exact"


# ---------------------------------------------------------------------------------------------
# the nearest pick at scale


@pytest.mark.parametrize("flat", [True, False])
def test_scalable_nearest_agrees_with_the_dense_nearest(data, monkeypatch, flat):
    monkeypatch.setattr(_knn_index, "DENSE_NEAREST_MAX", 0)  # force the graph + FAISS path
    if not flat:
        monkeypatch.setattr(_knn_index, "FLAT_PICKS_MAX", 0)
    out = fit(data, knn_index="ivf", n_neighbors=5, budget=100)
    S = np.maximum(cosine(data), 0)
    picks = out.ranking_
    best = S[:, picks].max(axis=1)
    chosen = S[np.arange(data.shape[0]), out.nearest_]
    assert set(out.nearest_.tolist()) <= set(picks.tolist())
    assert out.weights_.sum() == data.shape[0]
    # where a pick is among a row's graph neighbours (here: the exact best pick is), the pick is right
    neighbors, _, _ = graph_of(data, 5)
    exact_best = picks[np.argmax(S[:, picks] >= best[:, None] - 1e-6, axis=1)]
    on_graph = (neighbors == exact_best[:, None]).any(axis=1)
    assert on_graph.mean() > 0.1
    np.testing.assert_allclose(chosen[on_graph], best[on_graph], atol=1e-5)
    agreement = np.mean(chosen >= best - 1e-5)
    assert agreement >= 0.95
    p = out.profile_
    assert p["knn_nearest"] == "graph" and p["knn_nearest_index"] == ("flat" if flat else "ivf")
    assert 0 < p["knn_nearest_from_graph"] < 1  # both paths ran
    assert p["knn_nearest_agreement"] >= 0.95
    assert p["knn_graph_seconds"] >= p["knn_build_seconds"] + p["knn_tune_seconds"] + p["knn_search_seconds"]
    np.testing.assert_allclose(out.nearest_similarity_, chosen, atol=1e-5)


def test_below_the_threshold_nearest_is_the_exact_one(data):
    from mads_fast.solver._backends import make_engine
    from mads_fast.solver._knn import exact_nearest

    out = fit(data, knn_index="ivf", n_neighbors=5, budget=100)
    nearest, _ = exact_nearest(make_engine("numpy", data), out.ranking_)
    np.testing.assert_array_equal(out.nearest_, nearest)
    assert out.profile_["knn_nearest"] == "exact"


# ---------------------------------------------------------------------------------------------
# auto and errors


def test_auto_is_exact_below_the_threshold_and_ivf_above(data, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="mads_fast"):
        assert fit(data, n_neighbors=5).profile_["knn_index"] == "exact"
        monkeypatch.setattr(_knn_index, "AUTO_IVF_MIN_N", 1000)
        assert fit(data, n_neighbors=5).profile_["knn_index"] == "ivf"
    assert any("knn index: ivf (auto: N=2,000 >= 1,000)" in r.getMessage() for r in caplog.records)


def test_without_faiss_ivf_fails_in_one_line_and_auto_falls_back(data, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(InputError) as info:
        fit(data, knn_index="ivf")
    msg = str(info.value)
    assert info.value.param == "knn_index" and 'pip install "mads-fast[faiss]"' in msg and "\n" not in msg
    monkeypatch.setattr(_knn_index, "AUTO_IVF_MIN_N", 10)
    with caplog.at_level(logging.INFO, logger="mads_fast"):
        assert fit(data, n_neighbors=5).profile_["knn_index"] == "exact"
    assert any("faiss is not installed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.01, float("nan"), "0.9", True, None])
def test_bad_knn_recall_is_an_input_error(data, value):
    with pytest.raises(InputError) as info:
        fit(data, knn_index="ivf", knn_recall=value)
    assert info.value.param == "knn_recall"


def test_bad_knn_index_is_an_input_error(data):
    with pytest.raises(InputError) as info:
        fit(data, knn_index="hnsw")
    assert info.value.param == "knn_index"


def test_unreachable_recall_fails_before_the_full_search(monkeypatch):
    """The vertices of a regular simplex: every pair has cosine -1/(N-1), so the exact graph keeps the lowest
    indices (all ties at 0 once clipped), which no index ranking raw inner products matches, whatever nprobe."""
    n = 300
    X = (np.eye(n) - 1.0 / n).astype(np.float32)

    def no_full_search(*args, **kwargs):
        raise AssertionError("the full search ran")

    monkeypatch.setattr(_knn_index, "search_all", no_full_search)
    with pytest.raises(InputError) as info:
        fit(X, knn_index="ivf", n_neighbors=10, knn_recall=0.99)
    msg = str(info.value)
    assert info.value.param == "knn_recall" and "knn_index='exact'" in msg and "nprobe = nlist" in msg
    assert "\n" not in msg


def test_cli_bad_knn_recall_is_one_line_exit_2(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Say hi", "input": "", "output": "hi"}\n' * 4, encoding="utf-8")
    code = main(["select", str(data), "--out", str(tmp_path / "o.jsonl"), "--budget", "0.5", "--mode", "knn",
                 "--knn-index", "ivf", "--knn-recall", "1.5", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("mads-fast: error: --knn-recall"), err


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in available_backends(), reason="needs the CUDA solver module and a GPU")
def test_cuda_backend_ivf_graph_obeys_the_contract(data):
    out = fit(data, knn_index="ivf", n_neighbors=10, backend="cuda")
    ref = fit(data, knn_index="ivf", n_neighbors=10, backend="numpy")
    if out.profile_["knn_index"] == "ivf":  # host input: the CPU (or GPU) FAISS graph, the same greedy
        np.testing.assert_array_equal(out.ranking_, ref.ranking_)


# ---------------------------------------------------------------------------------------------
# the synthetic store


def test_synthetic_store_reads_back_solves_and_keeps_its_clusters(tmp_path):
    from mads_fast.store import FeatureReader

    path = tmp_path / "syn"
    spec = synthetic_store.write_synthetic_store(path, 3000, dim=64, clusters=8, spread=0.3, shard_size=512,
                                                 seed=4)
    reader = FeatureReader(path)
    assert reader.n == 3000 and reader.dim == 64 and reader.n_shards == 6 and reader.manifest.complete
    assert list(reader.ids[:2]) == ["syn-0", "syn-1"]
    centres, _, _ = synthetic_store.mixture(spec)
    rows = reader.rows(np.arange(3000))  # dequantised + offset: the generated rows up to int8 rounding
    labels = []
    for shard in range(6):
        x, lab = synthetic_store.shard_rows(spec, shard)
        start = shard * 512
        got = rows[start:start + x.shape[0]]
        scale = np.abs(x - got).max(axis=1) / np.abs(x).max(axis=1)
        assert scale.max() < 0.05
        labels.append(lab)
    labels = np.concatenate(labels)
    assert np.unique(labels).size == 8
    assigned = np.argmax(rows @ centres.T / np.linalg.norm(rows, axis=1, keepdims=True), axis=1)
    assert np.mean(assigned == labels) > 0.99
    np.testing.assert_allclose(reader.mean(), rows.astype(np.float64).mean(axis=0), atol=1e-4)
    # the same spec again: reused as it is
    again = synthetic_store.write_synthetic_store(path, 3000, dim=64, clusters=8, spread=0.3, shard_size=512,
                                                  seed=4)
    assert again == spec
    report = tmp_path / "report"
    code = main(["solve", "--store", str(path), "--budget", "0.05", "--mode", "knn", "--knn-index", "ivf",
                 "--n-neighbors", "8", "--report", str(report), "--indices-out", str(tmp_path / "p.jsonl"),
                 "--quiet"])
    assert code == 0
    summary = json.loads((report / "report.json").read_text())
    knn = summary["knn"]
    assert knn["knn_index"] == "ivf" and knn["knn_recall"] >= 0.9 and knn["knn_nprobe"] >= 1
    picks = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(picks) == 150
    assert len({labels[p["index"]] for p in picks}) == 8  # every cluster is covered


def test_exact_index_at_scale_keeps_its_picks_and_takes_the_nearest_from_its_graph(data, monkeypatch):
    small = fit(data, knn_index="exact", n_neighbors=5, budget=100)
    monkeypatch.setattr(_knn_index, "DENSE_NEAREST_MAX", 0)
    large = fit(data, knn_index="exact", n_neighbors=5, budget=100)
    np.testing.assert_array_equal(large.ranking_, small.ranking_)  # the same greedy, the graph given
    S = np.maximum(cosine(data), 0)
    best = S[:, large.ranking_].max(axis=1)
    chosen = S[np.arange(data.shape[0]), large.nearest_]
    assert np.mean(chosen >= best - 1e-5) >= 0.99  # an exact top-K graph holds the best pick when it holds any
    assert large.profile_["knn_nearest"] == "graph" and large.profile_["knn_nearest_agreement"] >= 0.99
    assert large.weights_.sum() == data.shape[0]


def test_stochastic_greedy_runs_on_the_ivf_graph(data):
    out = fit(data, knn_index="ivf", n_neighbors=10, optimizer="stochastic", random_state=1)
    again = fit(data, knn_index="ivf", n_neighbors=10, optimizer="stochastic", random_state=1)
    np.testing.assert_array_equal(out.ranking_, again.ranking_)
    assert out.profile_["knn_index"] == "ivf" and len(set(out.ranking_.tolist())) == out.ranking_.size == 100
    S = np.maximum(cosine(data), 0)
    exact = fit(data, knn_index="ivf", n_neighbors=10)
    f = lambda r: S[:, r].max(axis=1).sum()  # noqa: E731
    assert f(out.ranking_) >= 0.98 * f(exact.ranking_)


@pytest.mark.parametrize("block_rows", [None, 7, 50])
def test_sample_neighbours_by_blas_equal_the_engines(block_rows):
    # The recall sample's exact neighbours come from a float32 GEMM over blocks of rows with a running top-k;
    # they must be the engine's own top-K (ties at 0 and duplicates to the lowest index), whatever the blocks.
    from mads_fast.solver._backends import make_engine, prepare
    from mads_fast.solver._knn_index import UnitRows, exact_neighbors

    rng = np.random.default_rng(11)
    X = rng.integers(-127, 128, size=(230, 24)).astype(np.int8)
    X[40:60] = X[0:20]          # duplicates: exact ties
    X[100:105] = 0              # zero rows: similarity 0 with everything
    X[150:160, :12] = 0         # rows orthogonal-ish to many: ties at the clip
    X[150:160, 12:] = np.abs(X[150:160, 12:])
    X[170:180, 12:] = 0
    X[170:180, :12] = -np.abs(X[170:180, :12])
    Xp, name = prepare("cpp" if "cpp" in available_backends() else "numpy", X)
    engine = make_engine(name, Xp)
    rows = np.array([0, 1, 19, 40, 41, 100, 103, 150, 155, 171, 229], dtype=np.int64)
    for k in (1, 5, 17):
        want = exact_neighbors(engine, rows, k)
        got = exact_neighbors(engine, rows, k, UnitRows(X), block_rows=block_rows)
        assert np.array_equal(got, want), k
