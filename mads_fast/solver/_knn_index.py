"""kNN mode at scale: which index builds the graph (exact or a FAISS inverted file), its recall, and the
nearest pick of every example without a dense N x k pass.

``knn_select`` is all of ``FacilityLocation``'s kNN mode:

- ``knn_index="exact"``: the engine's own top-K graph (N^2 similarities; the C++ engine builds it in its
  first pass) and its greedy, exactly as before;
- ``knn_index="ivf"``: ``ivf_graph``: a FAISS ``IndexIVFFlat`` (inner product) over the L2-normalised float32
  rows of X (an int8 row divided by its norm has the cosine of the int8 row), ``nlist`` ~ 4 sqrt(N) lists
  trained by k-means on a seeded sample; ``nprobe`` is tuned on a seeded sample of rows (1, 2, 4, ... until
  the sample's recall@K against the exact graph reaches ``knn_recall``) before the full search, which then
  runs in row blocks. The result obeys the ``Engine.knn_graph`` contract (self first, then K other rows in
  ascending index order, similarities clipped at 0) and runs through the same native ``graph_lazy_greedy``
  (numpy backend: ``_lazy.lazy_greedy`` over ``SparseOracle``);
- ``knn_index="auto"``: exact below ``AUTO_IVF_MIN_N`` rows, ivf from there when faiss imports (else exact,
  with a log line saying why).

FAISS is imported here, inside functions only: the solver imports (and runs exact) without it.
Determinism: k-means is seeded (``random_state``) and trained on a seeded sample; every query is searched
independently, so the same input gives the same graph on the same FAISS build (the thread count does not
change it: tested with 1 and 2 FAISS threads).

Profile (``FacilityLocation.profile_``), every key prefixed ``knn_``: ``knn_index`` (what ran),
``knn_index_reason``, ``knn_graph_seconds`` (building the graph, ivf's tuning included; exact on the numpy
engine: nan, its graph is built inside its greedy), and for ivf ``knn_nlist``, ``knn_nprobe``, ``knn_recall`` (recall@K on the sample),
``knn_recall_target``, ``knn_recall_sample`` (rows), ``knn_train_seconds``, ``knn_build_seconds`` (train +
add), ``knn_tune_seconds``, ``knn_search_seconds``, and for the scalable nearest pick
``knn_nearest`` ("graph" or "exact"), ``knn_nearest_from_graph`` (fraction of rows whose nearest pick came
from their graph neighbours), ``knn_nearest_index`` ("flat"/"ivf"/"none", the index over the picks for the
rest) and ``knn_nearest_agreement`` (on the recall sample: the fraction whose pick is as similar as the
exact nearest pick, within 1e-6).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Optional

import numpy as np

from mads_fast.errors import InputError
from mads_fast.options import KNN_INDEXES, check_choice, check_knn_recall

from ._cuda import is_device_array
from ._knn import exact_nearest
from ._lazy import lazy_greedy
from ._native import load_native
from ._oracles import SparseOracle
from ._result import GreedyResult, result_from
from ._stochastic import stochastic_greedy

log = logging.getLogger("mads_fast")

# auto: ivf from this many rows (when faiss imports). Measured by bench/bench_knn_index.py (synthetic int8
# D=256, 1000 clusters, 10% budget, 64 neighbours, knn_recall 0.9) on the shared 2-core machine (portable
# int8 kernel, no AVX-512). bench/results/knn_index_crossover_rerun.md (load 1-3): fit seconds exact / ivf
# 2.2 / 2.4 at N=5k, 8.3 / 4.6 at 10k, 31.8 / 11.8 at 20k, 116.8 / 13.1 at 50k; knn_index_crossover.md (load
# 6-8) the same ordering; the ivf picks' true dense objective 1.0001-1.0007x the exact graph's. The crossover
# is between 5k and 10k there; 20k keeps small inputs exact (seconds at most; 1.3 s at N=20k on the
# AVX-512 VNNI machine of bench/results/solver_cpu.md) and switches where ivf is ~3x faster here.
AUTO_IVF_MIN_N = 20_000
# The nearest pick comes from the graph (plus a FAISS search over the picks for the rows it leaves out)
# once the dense N x k pass of ``exact_nearest`` would take more than this many similarities; below, it is
# exact. 2^26 is N ~ 26k at a 10% budget: 1.7e10 int8 multiply-adds at D=256. Measured on the 2-core
# machine (portable int8 kernel, load ~7; bench/results/knn_index_crossover.md): the dense pass took 63 s
# of the ivf arm's 87 s at N=50k, k=5k, where the IVF graph itself took 24 s.
DENSE_NEAREST_MAX = 1 << 26
RECALL_SAMPLE = 1000  # rows whose exact neighbours measure the recall and the nearest-pick agreement
SEARCH_BLOCK_BYTES = 64 << 20  # float32 query rows (and their results) searched at once
TRAIN_POINTS_PER_LIST = 32  # k-means sample: this many rows per list (FAISS asks for 39; 32 keeps 1M at 128k)
KMEANS_ITERATIONS = 10
FLAT_PICKS_MAX = 1 << 31  # rows x picks from which the picks' index is an IVF instead of flat
FAISS_FIX = 'pip install "mads-fast[faiss]"'


def import_faiss(param: str = "knn_index"):
    """The faiss module, or a one-line InputError naming ``param`` and how to install it."""
    try:
        import faiss
    except ImportError:
        raise InputError(f"needs FAISS, which is not installed: {FAISS_FIX} (or knn_index='exact')",
                         param=param) from None
    return faiss


def faiss_available() -> bool:
    try:
        import_faiss()
    except InputError:
        return False
    return True


def resolve_knn_index(knn_index: str, n: int):
    """(index to run, "exact" or "ivf"; why) for ``knn_index`` on ``n`` rows; ivf without faiss raises."""
    check_choice("knn_index", knn_index, KNN_INDEXES)
    if knn_index == "exact":
        return "exact", "requested"
    if knn_index == "ivf":
        import_faiss()
        return "ivf", "requested"
    if n < AUTO_IVF_MIN_N:
        return "exact", f"auto: N={n:,} < {AUTO_IVF_MIN_N:,}"
    if not faiss_available():
        return "exact", f"auto: N={n:,} >= {AUTO_IVF_MIN_N:,} but faiss is not installed ({FAISS_FIX})"
    return "ivf", f"auto: N={n:,} >= {AUTO_IVF_MIN_N:,}"


# ---------------------------------------------------------------------------------------------
# the rows FAISS sees


class UnitRows:
    """The L2-normalised float32 rows of the solver input X [N, D] (int8 or float32; host or device), read in
    blocks: ``take(idx)`` -> float32 [m, D]. Norms in float64 as in the engines; a zero row stays zero."""

    def __init__(self, X):
        self.X = X
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self.device = is_device_array(X)

    def _host(self, part) -> np.ndarray:
        if not self.device:
            return np.asarray(part)
        if hasattr(part, "get"):  # CuPy
            return part.get()
        return part.detach().cpu().numpy()  # torch

    def take(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if self.device:
            idx = _device_index(self.X, idx)
        return self._unit(self._host(self.X[idx]))

    def block(self, start: int, stop: int) -> np.ndarray:
        return self._unit(self._host(self.X[start:stop]))

    @staticmethod
    def _unit(rows: np.ndarray) -> np.ndarray:
        x = np.array(rows, dtype=np.float32)  # [m, D], a copy (never the caller's X); int8 is exact in float32
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))  # [m]
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
        x *= inv[:, None]
        return x

    def rows_per_block(self, extra_per_row: int = 0) -> int:
        return max(1, SEARCH_BLOCK_BYTES // (4 * self.d + extra_per_row))


def _device_index(X, idx):
    if hasattr(X, "get"):
        import cupy

        return cupy.asarray(idx)
    import torch

    return torch.from_numpy(idx).to(X.device)


# ---------------------------------------------------------------------------------------------
# the exact neighbours of a sample, and recall


def sample_rows(n: int, seed: int, size: int = RECALL_SAMPLE) -> np.ndarray:
    """int64 [min(size, n)] seeded sample of row indices, ascending."""
    rng = np.random.default_rng([int(seed), 0x4B4E4E])
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


def _keep_top(S: np.ndarray, k: int) -> np.ndarray:
    """bool [r, c]: each row's k largest entries of S, ties at the k-th value to the lowest column."""
    c = S.shape[1]
    kth = np.partition(S, c - k, axis=1)[:, c - k]
    above = S > kth[:, None]
    level = S == kth[:, None]
    room = k - above.sum(axis=1)
    return above | (level & (np.cumsum(level, axis=1) <= room[:, None]))


def exact_neighbors(engine, rows: np.ndarray, k: int, unit: Optional["UnitRows"] = None,
                    block_rows: Optional[int] = None) -> np.ndarray:
    """int64 [m, k]: each sampled row's k most similar other rows (ties at the k-th value to the lowest index,
    as ``_knn.knn_graph_reference``), ascending.

    With ``unit`` (the rows FAISS sees) on the host: by float32 GEMM (BLAS) of the sample against blocks of
    all rows, a running top-k carried from block to block (lower indices first, so the tie rule holds) -- the
    same cosine as the engine's up to float32 rounding, at BLAS speed (1,000 x 1M x 256 in seconds, where the
    engine's int8 columns on a CPU without int8 SIMD take a minute). Otherwise by ``engine.columns`` in blocks
    of at most 64 MB. ``block_rows``: rows per GEMM block (None: 64 MB of similarities)."""
    n = engine.n
    out = np.empty((rows.size, k), dtype=np.int64)
    if unit is not None and not unit.device:
        q = unit.take(rows)  # [m, D]
        best_s = np.full((rows.size, k), -np.inf, dtype=np.float32)  # running top-k, ascending index
        best_i = np.full((rows.size, k), -1, dtype=np.int64)
        step = max(k, block_rows or (64 << 20) // (4 * max(1, rows.size)))
        for start in range(0, n, step):
            stop = min(n, start + step)
            S = np.maximum(q @ unit.block(start, stop).T, 0.0)  # [m, b], clipped at 0 as the engines' s(i, j)
            inside = (rows >= start) & (rows < stop)
            S[np.flatnonzero(inside), rows[inside] - start] = -np.inf  # never one's own neighbour
            vals = np.concatenate([best_s, S], axis=1)  # [m, k + b], columns in ascending row index
            idx = np.concatenate([best_i, np.broadcast_to(np.arange(start, stop), S.shape)], axis=1)
            keep = _keep_top(vals, k)
            cols = np.nonzero(keep)[1].reshape(rows.size, k)
            best_s = np.take_along_axis(vals, cols, axis=1)
            best_i = np.take_along_axis(idx, cols, axis=1)
        return best_i
    step = max(1, (64 << 20) // (4 * n))
    for start in range(0, rows.size, step):
        part = rows[start:start + step]
        S, _ = engine.columns(part)  # [r, N], S[c, i] = s(i, part[c])
        local = np.arange(part.size)
        S[local, part] = -1.0
        out[start:start + part.size] = np.nonzero(_keep_top(S, k))[1].reshape(part.size, k)
    return out


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |approx_i & exact_i| / K: approx [m, >=K] (-1 = missing), exact [m, K]."""
    if exact.shape[1] == 0:
        return 1.0
    hits = 0
    for a, e in zip(approx, exact):
        hits += np.intersect1d(a[a >= 0], e, assume_unique=False).size
    return hits / float(exact.size)


# ---------------------------------------------------------------------------------------------
# the IVF graph


def choose_nlist(n: int) -> int:
    """~4 sqrt(N) inverted lists, at most N / 16 (k-means needs points per list), at least 1, at most 65,536."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 16, 1 << 16)))


def train_ivf(faiss, rows: UnitRows, nlist: int, seed: int):
    """An ``IndexIVFFlat`` (inner product) with ``nlist`` lists, trained (seeded k-means, KMEANS_ITERATIONS) on a
    seeded sample of TRAIN_POINTS_PER_LIST rows per list."""
    quantizer = faiss.IndexFlatIP(rows.d)
    index = faiss.IndexIVFFlat(quantizer, rows.d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.min_points_per_centroid = 1
    index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
    train = sample_rows(rows.n, seed + 1, min(rows.n, TRAIN_POINTS_PER_LIST * nlist))
    index.train(rows.take(train))
    return index  # the SWIG wrapper keeps the quantizer alive with the index


def add_rows(index, rows: UnitRows) -> None:
    step = rows.rows_per_block()
    for start in range(0, rows.n, step):
        index.add(rows.block(start, min(rows.n, start + step)))


def to_graph_rows(ids: np.ndarray, dist: np.ndarray, query: np.ndarray, self_sims: np.ndarray, k: int, n: int):
    """FAISS results [r, K+1] (ids, -1 = missing; inner products) for the rows ``query`` [r] -> the knn_graph
    contract: (neighbors int64 [r, K+1], sims float32 [r, K+1]): self first (sim ``self_sims``), then K other
    rows in ascending index order, sims clipped at 0. Missing neighbours are filled with the lowest-index rows
    not yet listed, at similarity 0 (an edge of weight 0 changes no gain)."""
    r = query.size
    ids = ids.copy()
    ids[ids == query[:, None]] = -1  # self comes first, on its own
    dist = np.where(ids >= 0, dist, -np.inf).astype(np.float32)
    order = np.argsort(-dist, axis=1, kind="stable")[:, :k]  # the K best others, FAISS order
    top = np.take_along_axis(ids, order, axis=1)  # [r, K]
    top_s = np.maximum(np.take_along_axis(dist, order, axis=1), 0.0)  # [r, K]; -inf (missing) -> 0
    for row in np.flatnonzero((top < 0).any(axis=1)):
        have = set(top[row][top[row] >= 0].tolist()) | {int(query[row])}
        fill = (j for j in range(n) if j not in have)
        for slot in np.flatnonzero(top[row] < 0):
            top[row, slot] = next(fill)
            top_s[row, slot] = 0.0
    by_index = np.argsort(top, axis=1, kind="stable")
    neighbors = np.empty((r, k + 1), dtype=np.int64)
    sims = np.empty((r, k + 1), dtype=np.float32)
    neighbors[:, 0] = query
    sims[:, 0] = np.maximum(self_sims, 0.0)
    neighbors[:, 1:] = np.take_along_axis(top, by_index, axis=1)
    sims[:, 1:] = np.take_along_axis(top_s, by_index, axis=1)
    return neighbors, sims


def search_rows(index, rows: UnitRows, query: np.ndarray, k: int):
    """The contract rows (neighbors, sims) of the rows ``query``, searched in blocks."""
    neighbors = np.empty((query.size, k + 1), dtype=np.int64)
    sims = np.empty((query.size, k + 1), dtype=np.float32)
    step = rows.rows_per_block(12 * (k + 1))
    for start in range(0, query.size, step):
        part = query[start:start + step]
        x = rows.take(part)
        dist, ids = index.search(x, k + 1)
        self_sims = np.einsum("ij,ij->i", x, x)
        neighbors[start:start + part.size], sims[start:start + part.size] = to_graph_rows(
            ids, dist, part, self_sims, k, rows.n)
    return neighbors, sims


def search_all(index, rows: UnitRows, k: int):
    """(neighbors int64 [N, K+1], sims float32 [N, K+1]) for every row, in blocks of consecutive rows."""
    n = rows.n
    neighbors = np.empty((n, k + 1), dtype=np.int64)
    sims = np.empty((n, k + 1), dtype=np.float32)
    step = rows.rows_per_block(12 * (k + 1))
    for start in range(0, n, step):
        stop = min(n, start + step)
        x = rows.block(start, stop)
        dist, ids = index.search(x, k + 1)
        query = np.arange(start, stop, dtype=np.int64)
        neighbors[start:stop], sims[start:stop] = to_graph_rows(ids, dist, query, np.einsum("ij,ij->i", x, x),
                                                                k, n)
    return neighbors, sims


def _gpu_index(faiss, index):
    """``index`` on GPU 0 when this FAISS build has GPUs, else None."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, 0, index)  # the wrapper keeps the resources alive with it


def ivf_graph(engine, X, n_neighbors: int, knn_recall: float, seed: int, stats: dict):
    """The IVF kNN graph of X (see the module doc): (neighbors int64 [N, K+1], sims float32 [N, K+1]),
    K = min(n_neighbors, N - 1); fills ``stats`` with the ``knn_`` profile. nprobe is tuned on a sample
    before the full search; an InputError naming ``knn_recall`` when even nprobe = nlist misses it."""
    faiss = import_faiss()
    n = engine.n
    k = min(int(n_neighbors), n - 1)
    rows = UnitRows(X)
    if k == 0:  # one row: its self edge only
        x = rows.block(0, n)
        return np.zeros((n, 1), dtype=np.int64), np.maximum(np.einsum("ij,ij->i", x, x), 0)[:, None]
    nlist = choose_nlist(n)
    t0 = time.perf_counter()
    index = train_ivf(faiss, rows, nlist, seed)
    stats["knn_train_seconds"] = time.perf_counter() - t0
    add_rows(index, rows)
    stats["knn_build_seconds"] = time.perf_counter() - t0
    on_gpu = None
    if engine.name == "cuda":
        on_gpu = _gpu_index(faiss, index)
        stats["knn_faiss_gpu"] = on_gpu is not None
    searcher = on_gpu if on_gpu is not None else index

    t0 = time.perf_counter()
    sample = sample_rows(n, seed)
    exact = exact_neighbors(engine, sample, k, rows)
    nprobe, recall = 1, 0.0
    while True:
        searcher.nprobe = nprobe
        approx, _ = search_rows(searcher, rows, sample, k)
        recall = recall_at_k(approx[:, 1:], exact)
        if recall >= knn_recall or nprobe >= nlist:
            break
        nprobe = min(nlist, 2 * nprobe)
    stats.update(knn_nlist=nlist, knn_nprobe=nprobe, knn_recall=recall, knn_recall_target=knn_recall,
                 knn_recall_sample=int(sample.size), knn_tune_seconds=time.perf_counter() - t0)
    if recall < knn_recall:
        raise InputError(f"the IVF graph reaches recall {recall:.3f} on {sample.size} sampled rows even with "
                         f"nprobe = nlist = {nlist}, below the target {knn_recall:g}; lower knn_recall or use "
                         "knn_index='exact'", param="knn_recall")
    log.info("knn ivf: nlist %d, nprobe %d, recall@%d %.3f on %d sampled rows", nlist, nprobe, k, recall,
             sample.size)
    t0 = time.perf_counter()
    graph = search_all(searcher, rows, k)
    stats["knn_search_seconds"] = time.perf_counter() - t0
    stats["_sample"], stats["_rows"] = sample, rows  # for the nearest-pick check; popped by knn_select
    return graph


# ---------------------------------------------------------------------------------------------
# the nearest pick without a dense pass


def graph_nearest(result: GreedyResult, neighbors: np.ndarray, rows: UnitRows, stats: dict):
    """Each example's nearest pick: from its graph neighbours where one of them is a pick with similarity > 0
    (the graph greedy's own ``nearest``, the best pick among them), else from a FAISS search over the picks
    (flat, or IVF when rows x picks > FLAT_PICKS_MAX); a row with no positive similarity to any pick gets the
    first pick at 0, the rule of ``exact_nearest``. Overwrites result.nearest / nearest_similarity."""
    ranking = np.asarray(result.ranking, dtype=np.int64)
    nearest = np.asarray(result.nearest, dtype=np.int64).copy()
    sim = np.asarray(result.nearest_similarity, dtype=np.float32).copy()
    n = nearest.size
    resolved = sim > 0  # a pick among the neighbours with similarity > 0 set it
    rest = np.flatnonzero(~resolved)
    stats["knn_nearest"] = "graph"
    stats["knn_nearest_from_graph"] = float(resolved.mean()) if n else 1.0
    stats["knn_nearest_index"] = "none"
    if rest.size:
        faiss = import_faiss()
        picks = rows.take(ranking)  # [k, D]
        if rest.size * ranking.size <= FLAT_PICKS_MAX or ranking.size < 64:
            index = faiss.IndexFlatIP(rows.d)
            stats["knn_nearest_index"] = "flat"
        else:
            nlist = choose_nlist(ranking.size)
            quantizer = faiss.IndexFlatIP(rows.d)
            index = faiss.IndexIVFFlat(quantizer, rows.d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = 1
            index.cp.niter = KMEANS_ITERATIONS
            index.train(picks)
            index.nprobe = min(nlist, max(16, nlist // 8))
            stats["knn_nearest_index"] = "ivf"
        index.add(picks)
        step = rows.rows_per_block(12)
        for start in range(0, rest.size, step):
            part = rest[start:start + step]
            dist, pos = index.search(rows.take(part), 1)
            dist, pos = dist[:, 0], pos[:, 0]
            good = (pos >= 0) & (dist > 0)
            nearest[part] = np.where(good, ranking[np.maximum(pos, 0)], ranking[0])
            sim[part] = np.where(good, dist, 0.0)
    result.nearest, result.nearest_similarity = nearest, sim
    return result


def nearest_agreement(result: GreedyResult, rows: UnitRows, sample: np.ndarray, tol: float = 1e-6) -> float:
    """On the rows ``sample``: the fraction whose nearest pick is as similar (float32 cosine, within ``tol``)
    as their exact nearest pick; picks are scanned in blocks, never [N, k]."""
    ranking = np.asarray(result.ranking, dtype=np.int64)
    x = rows.take(sample)  # [m, D]
    best = np.zeros(sample.size, dtype=np.float32)
    step = max(1, (64 << 20) // (4 * max(1, sample.size)))
    for start in range(0, ranking.size, step):
        picks = rows.take(ranking[start:start + step])
        np.maximum(best, (x @ picks.T).max(axis=1), out=best)
    chosen = np.einsum("ij,ij->i", x, rows.take(result.nearest[sample]))
    return float(np.mean(np.maximum(chosen, 0) >= best - tol))


# ---------------------------------------------------------------------------------------------
# kNN mode, start to end


def graph_greedy(engine, neighbors, sims, budget: int, optimizer: str, epsilon: float, random_state,
                 batch_size: Optional[int], progress) -> GreedyResult:
    """The greedy over a given graph: native ``graph_lazy_greedy`` (cpp, cuda) or the Python SparseOracle."""
    if optimizer == "stochastic":
        return stochastic_greedy(SparseOracle(neighbors, sims), budget, epsilon, random_state, progress)
    if engine.name == "numpy":
        return lazy_greedy(SparseOracle(neighbors, sims), budget, batch_size or 1, progress)
    module = load_native(engine.name)
    return result_from(module.graph_lazy_greedy(neighbors, sims, int(budget), int(batch_size or 0), progress))


def knn_select(engine, X, budget: int, *, n_neighbors: int, optimizer: str, epsilon: float, random_state,
               batch_size: Optional[int], progress, knn_index: str = "auto", knn_recall: float = 0.9
               ) -> GreedyResult:
    """kNN-mode facility location on the engine over X (the prepared solver input [N, D]): the graph from
    ``knn_index``, the greedy on it, then each example's nearest pick (``exact_nearest`` while N x k <=
    DENSE_NEAREST_MAX or without faiss, else ``graph_nearest``, for either index). The result's ``stats``
    carry the ``knn_`` profile."""
    knn_recall = check_knn_recall(knn_recall)
    n = engine.n
    which, why = resolve_knn_index(knn_index, n)
    log.info("knn index: %s (%s)", which, why)
    stats = {"knn_index": which, "knn_index_reason": why}
    seed = 0 if random_state is None else int(random_state)
    dense_nearest = n * budget <= DENSE_NEAREST_MAX or not faiss_available()
    if which == "exact" and dense_nearest:
        if optimizer == "lazy":
            result = engine.knn_lazy_greedy(budget, n_neighbors, batch_size, progress)
        else:
            oracle = SparseOracle(*engine.knn_graph(n_neighbors))
            result = stochastic_greedy(oracle, budget, epsilon, random_state, progress)
        stats["knn_graph_seconds"] = result.stats.get("first_pass_seconds", float("nan"))  # cpp: the graph pass
        result.nearest, result.nearest_similarity = exact_nearest(engine, result.ranking)
        stats["knn_nearest"] = "exact"
        result.stats = dict(result.stats, **stats)
        return result
    t0 = time.perf_counter()
    if which == "exact":  # large N: the graph is kept for the nearest pick (the same greedy, graph given)
        neighbors, sims = engine.knn_graph(n_neighbors)
        rows, sample = UnitRows(X), sample_rows(n, seed)
    elif engine.name == "cuda" and not _faiss_has_gpu() and is_device_array(X):
        # a device-resident input without a GPU FAISS: the CUDA brute-force graph beats a host round trip
        log.info("knn index: the CUDA brute-force graph (this FAISS build has no GPU support)")
        neighbors, sims = engine.knn_graph(n_neighbors)
        stats.update(knn_index="exact", knn_index_reason=why + "; no GPU FAISS, CUDA brute force")
        rows, sample = UnitRows(X), sample_rows(n, seed)
    else:
        neighbors, sims = ivf_graph(engine, X, n_neighbors, knn_recall, seed, stats)
        sample, rows = stats.pop("_sample", sample_rows(n, seed)), stats.pop("_rows", None) or UnitRows(X)
    stats["knn_graph_seconds"] = time.perf_counter() - t0
    result = graph_greedy(engine, neighbors, sims, budget, optimizer, epsilon, random_state, batch_size, progress)
    if dense_nearest:
        result.nearest, result.nearest_similarity = exact_nearest(engine, result.ranking)
        stats["knn_nearest"] = "exact"
    else:
        graph_nearest(result, neighbors, rows, stats)
        stats["knn_nearest_agreement"] = nearest_agreement(result, rows, sample)
    result.stats = dict(result.stats, **stats)
    return result


def _faiss_has_gpu() -> bool:
    try:
        faiss = import_faiss()
    except InputError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
