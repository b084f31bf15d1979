"""Partitioned selection: the separable merge against the naive greedy on the block-diagonal similarity
(exact ties included), the refined merge against a plain greedy restricted to the candidates, M = 1 against
the centralised solver, k-means and empty partitions, local processes against Ray, the store's solver-input
file, and every bad parameter as a one-line InputError before any work."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from greedy_reference import cosine64, naive_greedy, tau
from mads_fast import pipeline
from mads_fast.cli import main
from mads_fast.errors import InputError
from mads_fast.solver import FacilityLocation, PartitionedFacilityLocation
from mads_fast.solver import partitioned as partitioned_module
from mads_fast.store import FeatureReader, FeatureStore, build_solver_input
from mads_fast.store.solver_file import solver_input_file


def clustered(n: int, d: int, clusters: int, seed: int, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)) * 2.0
    return (centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))).astype(np.float32)


def block_diagonal(S: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """S with s(i, j) = 0 across partitions: the similarity whose greedy the separable merge is."""
    return np.where(labels[:, None] == labels[None, :], S, 0.0)


def restricted_greedy(S: np.ndarray, candidates: np.ndarray, k: int):
    """Plain greedy over the columns ``candidates`` of S [N, N] (true objective over all N rows), the tie rule
    over candidates: (picks [k], gains float64 [k])."""
    n = S.shape[0]
    cur = np.zeros(n)
    left = list(map(int, candidates))
    picks, gains = [], []
    for _ in range(k):
        g = np.maximum(S[:, left] - cur[:, None], 0).sum(axis=0)
        best = g.max()
        pos = min((p for p in range(len(left)) if g[p] >= best - tau(best)), key=lambda p: left[p])
        j = left.pop(pos)
        picks.append(j)
        gains.append(g[pos])
        cur = np.maximum(cur, S[:, j])
    return np.array(picks), np.array(gains)


def nearest_of(S: np.ndarray, picks: np.ndarray):
    """Each row's first pick (in pick order) attaining its max similarity, and that similarity."""
    cols = S[:, picks]
    return picks[np.argmax(cols, axis=1)], cols.max(axis=1)


# ---------------------------------------------------------------------------------------------------------------
# separable merge: exactly the greedy on the block-diagonal similarity


@pytest.mark.parametrize("partition, margin", [("random", 0.25), ("random", 0.0), ("kmeans", 0.0)])
def test_separable_is_the_greedy_on_the_block_diagonal_similarity(partition, margin):
    X = clustered(360, 24, 6, seed=3)
    k = 60
    fit = PartitionedFacilityLocation(k, 4, partition=partition, merge="separable", margin=margin, workers=2,
                                      backend="cpp", random_state=5).fit(X)
    S = block_diagonal(cosine64(X), fit.labels_)
    picks, gains = naive_greedy(S, k)
    np.testing.assert_array_equal(fit.ranking_, picks)
    np.testing.assert_allclose(fit.gains_, gains, rtol=1e-5, atol=1e-5)
    assert fit.objective_ == pytest.approx(S[:, picks].max(axis=1).sum(), rel=1e-5)
    # nearest within the example's own partition, over the final picks
    near, best = nearest_of(S, picks)
    np.testing.assert_allclose(fit.nearest_similarity_, best, atol=1e-5)
    np.testing.assert_allclose(S[np.arange(len(X)), fit.nearest_], best, atol=1e-5)
    assert fit.weights_.sum() == len(X)
    prof = fit.profile_
    assert prof["merge"] == "separable" and prof["partitions"] == 4 and sum(prof["sizes"]) == len(X)
    assert prof["workers"] == 2 and prof["placement"] == "local" and len(prof["worker_peak_rss_bytes"]) == 2
    assert sum(prof["taken"].values()) == k
    if (partition, margin) == ("random", 0.0):  # this seed's run takes 17 picks from a partition run for 16
        assert prof["reruns"] >= 1


@pytest.mark.parametrize("first_budget", [1, 3])
def test_merge_reruns_used_up_partitions_until_exact(first_budget):
    """The merge on runs cut to ``first_budget`` picks, extended on request, is the greedy on the block-diagonal
    similarity all the way to k = N (the zero-gain tail included, where every partition runs out)."""
    from mads_fast.solver._merge import merge_separable

    X = clustered(48, 8, 4, seed=12)
    labels = np.random.default_rng(3).integers(0, 3, 48)
    S = cosine64(X)
    full = {}
    for p in range(3):
        rows = np.flatnonzero(labels == p)
        picks, gains = naive_greedy(S[np.ix_(rows, rows)], rows.size)
        full[p] = (rows[picks], gains)
    sizes = {p: full[p][0].size for p in full}
    asked = []

    def extend(need):
        asked.append(dict(need))
        return {p: (full[p][0][:b], full[p][1][:b]) for p, b in need.items()}

    cut = {p: (r[:first_budget], g[:first_budget]) for p, (r, g) in full.items()}
    picks, gains, taken, reruns = merge_separable(cut, sizes, 48, extend)
    ref_picks, ref_gains = naive_greedy(block_diagonal(S, labels), 48)
    np.testing.assert_array_equal(picks, ref_picks)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-9, atol=1e-12)
    assert taken == sizes and reruns == sum(len(a) for a in asked) >= 3
    assert all(b > first_budget for a in asked for b in a.values())


def test_separable_exact_ties_go_to_the_lowest_global_index(monkeypatch):
    """Rows n+i duplicate rows i, each pair split across the two partitions, so every gain of one partition has
    an exact twin in the other; the lowest global index must come first, whichever partition holds it."""
    base = clustered(60, 12, 4, seed=8)
    n = len(base)
    X = np.concatenate([base, base])
    labels = np.concatenate([np.arange(n) % 2, 1 - np.arange(n) % 2]).astype(np.int64)
    monkeypatch.setattr(partitioned_module, "random_labels", lambda n_rows, m, seed: labels)
    k = 30
    fit = PartitionedFacilityLocation(k, 2, partition="random", merge="separable", workers=2,
                                      backend="cpp").fit(X)
    S = block_diagonal(cosine64(X), labels)
    picks, gains = naive_greedy(S, k)
    np.testing.assert_array_equal(fit.ranking_, picks)
    np.testing.assert_allclose(fit.gains_, gains, rtol=1e-5, atol=1e-5)
    # the picks come in twins (j, j + n) with j < n first, tied gains, from both partitions (odd j: partition 1)
    pairs = fit.ranking_.reshape(-1, 2)
    np.testing.assert_array_equal(pairs[:, 1], pairs[:, 0] + n)
    assert (pairs[:, 0] < n).all() and (pairs[:, 0] % 2 == 1).any() and (pairs[:, 0] % 2 == 0).any()
    np.testing.assert_allclose(fit.gains_[0::2], fit.gains_[1::2], rtol=1e-5)


def test_empty_partitions_are_skipped(monkeypatch):
    X = clustered(200, 16, 4, seed=2)
    labels = np.where(np.arange(200) % 3 == 0, 0, 3).astype(np.int64)  # partitions 1 and 2 are empty
    monkeypatch.setattr(partitioned_module, "kmeans_labels", lambda X, m, seed: labels)
    for merge in ("separable", "refined"):
        fit = PartitionedFacilityLocation(25, 4, partition="kmeans", merge=merge, workers=2, backend="cpp").fit(X)
        assert fit.profile_["sizes"] == [67, 0, 0, 133] and fit.profile_["nonempty_partitions"] == 2
        assert len(set(fit.ranking_.tolist())) == 25 and fit.weights_.sum() == 200
    S = block_diagonal(cosine64(X), labels)
    sep = PartitionedFacilityLocation(25, 4, partition="kmeans", merge="separable", workers=2, backend="cpp").fit(X)
    np.testing.assert_array_equal(sep.ranking_, naive_greedy(S, 25)[0])


def test_knn_mode_runs_each_partition_on_its_graph():
    """mode="knn" reaches the partitions: with a graph as wide as a partition it is the dense separable greedy;
    with 3 neighbours each partition's picks are its own knn greedy's, in order."""
    X = clustered(240, 16, 4, seed=13)
    kwargs = dict(partition="random", merge="separable", workers=2, backend="cpp", random_state=4)
    dense = PartitionedFacilityLocation(30, 3, **kwargs).fit(X)
    wide = PartitionedFacilityLocation(30, 3, mode="knn", n_neighbors=240, **kwargs).fit(X)
    np.testing.assert_array_equal(wide.ranking_, dense.ranking_)
    narrow = PartitionedFacilityLocation(30, 3, mode="knn", n_neighbors=3, **kwargs).fit(X)
    for p in range(3):
        rows = np.flatnonzero(narrow.labels_ == p)
        mine = narrow.ranking_[narrow.labels_[narrow.ranking_] == p]
        own = FacilityLocation(mine.size, mode="knn", n_neighbors=3, backend="cpp").fit(X[rows])
        np.testing.assert_array_equal(mine, rows[own.ranking_])


def test_local_workers_start_from_a_script_without_a_main_guard(tmp_path):
    """Worker processes are fresh interpreters: a plain script (no ``if __name__ == "__main__"``) works."""
    import subprocess
    from pathlib import Path

    script = tmp_path / "plain.py"
    script.write_text("import numpy as np\nfrom mads_fast.solver import PartitionedFacilityLocation\n"
                      "X = np.random.default_rng(0).standard_normal((80, 8)).astype(np.float32)\n"
                      "fit = PartitionedFacilityLocation(6, 2, partition='random', workers=2).fit(X)\n"
                      "print(fit.ranking_.size, fit.profile_['workers'])\n")
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["6", "2"]


# ---------------------------------------------------------------------------------------------------------------
# refined merge: a greedy under the true objective over the union of the partitions' picks


def test_refined_is_the_greedy_restricted_to_the_candidates():
    X = clustered(300, 20, 5, seed=11)
    k, m = 36, 3
    fit = PartitionedFacilityLocation(k, m, partition="random", merge="refined", workers=2, backend="cpp",
                                      random_state=1).fit(X)
    S = cosine64(X)
    # the candidates: each partition's own greedy at the budget it was run with, from the reference
    candidates = []
    for p, b in fit.profile_["first_budgets"].items():
        rows = np.flatnonzero(fit.labels_ == p)
        candidates.append(rows[naive_greedy(S[np.ix_(rows, rows)], b)[0]])
    candidates = np.unique(np.concatenate(candidates))
    assert fit.profile_["candidates"] == candidates.size > k
    picks, gains = restricted_greedy(S, candidates, k)
    np.testing.assert_array_equal(fit.ranking_, picks)
    np.testing.assert_allclose(fit.gains_, gains, rtol=1e-5, atol=1e-5)
    assert fit.objective_ == pytest.approx(S[:, picks].max(axis=1).sum(), rel=1e-5)
    near, best = nearest_of(S, picks)
    np.testing.assert_allclose(fit.nearest_similarity_, best, atol=1e-5)
    np.testing.assert_allclose(S[np.arange(len(X)), fit.nearest_], best, atol=1e-5)
    np.testing.assert_array_equal(np.bincount(np.searchsorted(np.sort(picks), fit.nearest_), minlength=k),
                                  np.bincount(np.searchsorted(np.sort(picks), near), minlength=k))
    # fused apply + evaluate, batches of stale candidates: about one round trip per pick (43 for 36 here)
    assert fit.profile_["round_trips"] <= 1.5 * k + 3 < fit.n_evaluations_


class InProcessPool:
    """The pool interface over PartitionWorker objects in this process (so a test can shrink their limits)."""

    def __init__(self, workers):
        self.workers = workers

    def __len__(self):
        return len(self.workers)

    def call(self, method, per_worker_args):
        return [getattr(w, method)(*args) for w, args in zip(self.workers, per_worker_args)]


@pytest.mark.parametrize("keep_columns", [0, 3, 1000])
def test_refine_with_few_or_no_kept_columns_is_the_same_greedy(tmp_path, monkeypatch, keep_columns):
    """Kept columns only save dot products: with none, a few (evicted least recently used) or all of them
    kept, the refinement is the greedy restricted to the candidates."""
    from mads_fast.solver import _partition_worker
    from mads_fast.solver._merge import refine
    from mads_fast.solver._partition_worker import PartitionWorker

    X = clustered(200, 16, 4, seed=21)
    path = tmp_path / "x.npy"
    np.save(path, X)
    monkeypatch.setattr(_partition_worker, "KEEP_BYTES", 4 * 100 * keep_columns)  # 100 own rows per worker
    workers = []
    for parity in (0, 1):
        w = PartitionWorker(str(path), backend="cpp")
        w.load({parity: np.arange(parity, 200, 2)})
        workers.append(w)
    candidates = np.sort(np.random.default_rng(2).choice(200, 40, replace=False))
    out = refine(InProcessPool(workers), candidates, 15, 4)
    assert workers[0].keep == keep_columns and len(workers[0].kept) <= keep_columns
    S = cosine64(X)
    picks, gains = restricted_greedy(S, candidates, 15)
    np.testing.assert_array_equal(out["ranking"], picks)
    np.testing.assert_allclose(out["gains"], gains, rtol=1e-5, atol=1e-5)
    for rows, near, sim, _ in out["finals"]:
        np.testing.assert_allclose(sim, S[np.ix_(rows, picks)].max(axis=1), atol=1e-5)
        np.testing.assert_allclose(S[rows, near], sim, atol=1e-5)


@pytest.mark.parametrize("merge", ["separable", "refined"])
def test_one_partition_is_the_centralised_solver_exactly(merge):
    X = clustered(400, 32, 8, seed=4)
    ref = FacilityLocation(50, backend="cpp").fit(X)
    fit = PartitionedFacilityLocation(50, 1, partition="kmeans", merge=merge, backend="cpp").fit(X)
    np.testing.assert_array_equal(fit.ranking_, ref.ranking_)
    np.testing.assert_array_equal(fit.gains_, ref.gains_)
    assert fit.objective_ == ref.objective_
    np.testing.assert_array_equal(fit.nearest_, ref.nearest_)
    np.testing.assert_array_equal(fit.nearest_similarity_, ref.nearest_similarity_)
    np.testing.assert_array_equal(fit.weights_, ref.weights_)


# ---------------------------------------------------------------------------------------------------------------
# k-means partitions


def test_kmeans_recovers_separated_clusters_deterministically(monkeypatch):
    from mads_fast.solver import _partition

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 800)
    centres = np.eye(4, 16, dtype=np.float32) * 10
    X = centres[truth] + 0.3 * rng.standard_normal((800, 16)).astype(np.float32)
    a = _partition.kmeans_labels(X, 4, 7)
    monkeypatch.setattr(_partition, "ASSIGN_BLOCK_BYTES", 4 * 16 * 50)  # 50-row assignment blocks
    monkeypatch.setattr(_partition, "KMEANS_SAMPLE", 400)
    b = _partition.kmeans_labels(X, 4, 7)
    c = _partition.kmeans_labels(X, 4, 7)
    np.testing.assert_array_equal(b, c)
    for labels in (a, b):  # every partition is exactly one true cluster
        assert sorted(len(set(labels[truth == t].tolist())) for t in range(4)) == [1, 1, 1, 1]
        assert len(set(labels.tolist())) == 4


# ---------------------------------------------------------------------------------------------------------------
# Ray actors give the same picks as local processes


def test_ray_gives_the_local_processes_picks(ray_local):
    X = clustered(300, 16, 5, seed=6)
    for merge in ("refined", "separable"):
        kwargs = dict(partition="random", merge=merge, workers=2, backend="cpp", random_state=2)
        local = PartitionedFacilityLocation(30, 3, **kwargs).fit(X)
        on_ray = PartitionedFacilityLocation(30, 3, ray="local", **kwargs).fit(X)
        assert local.profile_["placement"] == "local" and on_ray.profile_["placement"] == "ray"
        np.testing.assert_array_equal(on_ray.ranking_, local.ranking_)
        np.testing.assert_allclose(on_ray.gains_, local.gains_, rtol=1e-6)
        np.testing.assert_array_equal(on_ray.nearest_, local.nearest_)


# ---------------------------------------------------------------------------------------------------------------
# the store's solver-input file, and the pipeline


def _store(tmp_path, n=90, dim=16):
    from mads_fast.data import read_records

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"task {i}", "input": "", "output": f"answer {i}"}) + "\n"
                            for i in range(n)), encoding="utf-8")
    rs = read_records(data)
    x = clustered(n, dim, 5, seed=9) + 3.0
    path = tmp_path / "store"
    fs = FeatureStore.open_for_write(
        path, model={"id": "synthetic", "weights_sha256": "00" * 32}, feature_spec={"what": "clusters"},
        dataset={"fingerprint": rs.fingerprint, "n_records": n, "path": str(rs.path)}, dim=dim, width=dim,
        dtype="float32", n_scales=0, shard_size=32)
    for shard in range(fs.n_shards):
        rows = fs.shard_range(shard)
        fs.write_shard(shard, x[rows.start:rows.stop], None, [rs.ids[i] for i in rows])
    fs.finalize()
    return path, rs


def test_solver_input_file_is_the_solver_input_and_is_reused(tmp_path):
    path, _ = _store(tmp_path)
    reader = FeatureReader(path)
    for dtype in ("int8", "float32"):
        f = solver_input_file(reader, dtype=dtype)
        np.testing.assert_array_equal(np.load(f), build_solver_input(reader, dtype=dtype))
        stamp = f.stat().st_mtime_ns
        assert solver_input_file(FeatureReader(path), dtype=dtype) == f and f.stat().st_mtime_ns == stamp
    # another normalisation is another file; a stale key is rebuilt
    g = solver_input_file(reader, dtype="int8", normalize="center")
    np.testing.assert_array_equal(np.load(g), build_solver_input(reader, dtype="int8", normalize="center"))
    meta = g.with_suffix(".json")
    meta.write_text(meta.read_text().replace('"n": 90', '"n": 91'))
    stamp = g.stat().st_mtime_ns
    solver_input_file(reader, dtype="int8", normalize="center")
    assert g.stat().st_mtime_ns != stamp


def test_pipeline_solve_partitioned_matches_the_solver_on_the_file(tmp_path):
    path, rs = _store(tmp_path)
    result = pipeline.solve(path, 20, record_set=rs, out=tmp_path / "core.jsonl", report=tmp_path / "report",
                            backend="cpp", partitions=3, partition="random", merge="refined", workers=2)
    f = solver_input_file(FeatureReader(path), dtype="int8")
    direct = PartitionedFacilityLocation(20, 3, partition="random", merge="refined", backend="cpp",
                                         workers=2).fit(f)
    np.testing.assert_array_equal(result.indices, direct.ranking_)
    np.testing.assert_array_equal(result.gains, direct.gains_)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    part = report["partitioned"]
    assert part["partitions"] == 3 and part["merge"] == "refined" and sum(part["sizes"]) == 90
    assert part["workers"] == 2
    assert {"partition", "solve", "refine"} <= set(part["seconds"])
    assert len((tmp_path / "core.jsonl").read_text().splitlines()) == 20


def test_cli_solve_partitioned_writes_the_solvers_picks(tmp_path):
    path, _ = _store(tmp_path)
    picks = tmp_path / "picks.jsonl"
    code = main(["solve", "--store", str(path), "--budget", "12", "--partitions", "3", "--partition", "random",
                 "--merge", "separable", "--workers", "2", "--backend", "cpp", "--indices-out", str(picks), "--quiet"])
    assert code == 0
    direct = PartitionedFacilityLocation(12, 3, partition="random", merge="separable", backend="cpp",
                                         workers=2).fit(solver_input_file(FeatureReader(path), dtype="int8"))
    lines = [json.loads(line) for line in picks.read_text().splitlines()]
    assert [line["index"] for line in lines] == direct.ranking_.tolist()
    assert [line["gain"] for line in lines] == pytest.approx(direct.gains_.tolist())


# ---------------------------------------------------------------------------------------------------------------
# bad parameters: one-line InputErrors naming the parameter, before any expensive work


@pytest.fixture()
def no_workers(monkeypatch):
    """Starting a worker pool fails the test: every check must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a worker pool was started before the parameters were checked")

    monkeypatch.setattr(partitioned_module, "LocalPool", refuse)
    monkeypatch.setattr(partitioned_module, "RayPool", refuse)


BAD = [
    (dict(partitions=0), "partitions", "positive integer"),
    (dict(partitions=2.5), "partitions", "positive integer"),
    (dict(partitions=41), "partitions", "only 40 rows"),
    (dict(budget=3, partitions=4), "partitions", "raise the budget"),
    (dict(partition="spectral"), "partition", "kmeans, random"),
    (dict(merge="greedi"), "merge", "refined, separable"),
    (dict(workers=0), "workers", "positive integer"),
    (dict(margin=-1.0), "margin", "[0, 100]"),
]


@pytest.mark.parametrize("over, param, words", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_parameters_are_one_line_input_errors(no_workers, over, param, words):
    kwargs = dict(budget=10, partitions=4, partition="random", merge="refined")
    kwargs.update(over)
    X = np.ones((40, 8), dtype=np.float32)
    with pytest.raises(InputError) as info:
        PartitionedFacilityLocation(**kwargs).fit(X)
    assert info.value.param == param and words in str(info.value) and "\n" not in str(info.value)


def test_separable_takes_a_budget_below_the_partition_count():
    # the separable merge needs no pick per partition: this one runs
    fit = PartitionedFacilityLocation(3, 5, partition="random", merge="separable", workers=2,
                                      backend="cpp").fit(clustered(50, 8, 3, seed=1))
    assert fit.ranking_.size == 3


def test_kmeans_without_faiss_says_how_to_install_it(no_workers, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(InputError) as info:
        PartitionedFacilityLocation(10, 4, partition="kmeans").fit(np.ones((40, 8), dtype=np.float32))
    assert info.value.param == "partition" and 'pip install "mads-fast[faiss]"' in str(info.value)


def test_select_checks_partitions_before_reading_the_data(tmp_path):
    with pytest.raises(InputError) as info:
        pipeline.select(tmp_path / "missing.jsonl", 0.5, partitions=0)
    assert info.value.param == "partitions"
    with pytest.raises(InputError) as info:
        pipeline.select(tmp_path / "missing.jsonl", 0.5, partitions=2, objective="kcenter")
    assert info.value.param == "partitions" and "facility location" in str(info.value)


def test_cli_bad_partitions_exit_2_one_line(tmp_path, capsys):
    path, _ = _store(tmp_path, n=20)
    code = main(["solve", "--store", str(path), "--budget", "5", "--partitions", "30", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith("mads-fast: error: --partitions:") and "only 20 rows" in err, err
    with pytest.raises(SystemExit) as exc:  # argparse's choices: exit 2 too
        main(["solve", "--store", str(path), "--budget", "5", "--partitions", "2", "--merge", "greedi"])
    assert exc.value.code == 2 and "--merge" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_local_workers_die_with_a_killed_driver(tmp_path):
    """A driver SIGKILLed mid-fit leaves no worker computing for nobody: the kernel kills its busy workers."""
    import os
    import signal
    import subprocess
    import time as _time
    from pathlib import Path

    script = tmp_path / "driver.py"
    script.write_text(
        "import numpy as np\n"
        "from mads_fast.solver import _placement, PartitionedFacilityLocation\n"
        "orig = _placement.LocalPool.__init__\n"
        "def init(self, *a, **k):\n"
        "    orig(self, *a, **k)\n"
        "    print(' '.join(str(p.pid) for p in self._procs), flush=True)\n"
        "_placement.LocalPool.__init__ = init\n"
        "X = np.random.default_rng(0).standard_normal((40000, 64)).astype(np.float32)\n"
        "PartitionedFacilityLocation(8000, 2, partition='random', workers=2, backend='numpy').fit(X)\n")
    root = str(Path(__file__).resolve().parents[1])
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": root})
    try:
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert len(pids) == 2
        _time.sleep(1.0)  # the workers are solving their partitions now (seconds of NumPy work)

        def alive(pid):
            try:
                with open(f"/proc/{pid}/status") as fh:
                    return "State:\tZ" not in fh.read()
            except FileNotFoundError:
                return False

        assert all(alive(p) for p in pids)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = _time.monotonic() + 15
        while any(alive(p) for p in pids) and _time.monotonic() < deadline:
            _time.sleep(0.1)
        assert not any(alive(p) for p in pids)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        driver.stdout.close()
