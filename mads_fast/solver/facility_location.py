"""``FacilityLocation``: the scikit-learn-style coverage solver.

f(S) = sum_i max_{j in S} s(i, j), s(i, j) = max(0, cos(x_i, x_j)) on the features as given (no
centring here; a zero row has similarity 0 with everything, itself included). Exact lazy greedy picks
with the tie rule of ``_tie`` (gains in float64; tau = 1e-6 + 1e-5 * |G|; the lowest index among
candidates with gain >= G - tau), identical on every backend.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Union

import numpy as np

from ._backends import make_engine, prepare
from ._inputs import check_choice, check_positive_int, resolve_budget
from ._knn_index import knn_select
from ._memory import resolve_memory_budget
from ._oracles import DenseOracle
from ._result import set_fitted
from ._stochastic import stochastic_greedy
from mads_fast.errors import InputError
from mads_fast.options import KNN_INDEXES, MODES, OPTIMIZERS, check_knn_recall, parse_memory_budget

log = logging.getLogger("mads_fast")

# mode="auto": the exact dense greedy up to this many rows, the kNN graph (auto index: ivf from 20k rows) above.
# Measured on 2 cores, int8, D=256, 10-15% budgets: dense 29.5 s at N=52k (AVX-512, bench/results/solver_cpu.md)
# and 152 s at 100k, growing as N^2 (about 10 minutes at 200k); knn-ivf 19.6 s at 100k and 37.6 s at 200k
# (bench/results/knn_index_crossover_rerun.md) at 99.9% of dense's objective on real features (kNN-64 at 52k).
AUTO_KNN_MIN_N = 100_000


def resolve_mode(mode: str, n: int) -> str:
    """"dense" or "knn" for ``mode`` on ``n`` rows ("auto": dense below ``AUTO_KNN_MIN_N`` rows, else knn)."""
    check_choice("mode", mode, MODES)
    if mode != "auto":
        return mode
    chosen = "dense" if n < AUTO_KNN_MIN_N else "knn"
    log.info("solver mode: %s (auto: N=%s %s %s)", chosen, f"{n:,}", "<" if chosen == "dense" else ">=",
             f"{AUTO_KNN_MIN_N:,}")
    return chosen


def progress_bar(total: int, verbose: bool, desc: str):
    """(callback(done), close()) for a tqdm bar of picks, or no-ops when not verbose."""
    if not verbose:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="pick", desc=desc)

    def update(done):
        bar.update(done - bar.n)

    return update, bar.close


class FacilityLocation:
    """Facility-location core-set selection.

    Parameters: ``budget`` (int count in [1, N] or float fraction in (0, 1]); ``backend`` ("auto",
    "numpy", "cpp", "cuda"); ``mode`` ("dense": the exact similarity, streamed or cached within
    ``memory_budget``; "knn": top-``n_neighbors`` graph; "auto": dense below ``AUTO_KNN_MIN_N`` rows, else
    knn; ``mode_`` says which ran); ``optimizer`` ("lazy": exact lazy greedy;
    "stochastic": stochastic greedy with ``epsilon`` and ``random_state``); ``batch_size`` (candidates
    re-evaluated per pass; None = backend default); ``verbose`` (a progress bar of picks).

    ``memory_budget`` (bytes, or text like "2G"; None/"auto": the matrix when it fits half the available
    memory and 4 GiB, else 512 MiB): the C++ dense lazy greedy builds the whole similarity matrix once when it
    fits, else streams columns keeping at most that many bytes of them; same picks either way (other backends
    and modes ignore it).

    kNN mode only: ``knn_index`` ("exact": the exact top-K graph, N^2 similarities; "ivf": a FAISS inverted
    file, needs ``pip install "mads-fast[faiss]"``; "auto": exact below ``_knn_index.AUTO_IVF_MIN_N`` rows,
    else ivf when faiss imports) and ``knn_recall`` (ivf: the recall@K the graph must reach on a seeded
    sample of rows, in (0, 1]; see ``_knn_index``).

    After ``fit``: ``ranking_``, ``gains_``, ``curve_``, ``objective_``, ``nearest_``,
    ``nearest_similarity_``, ``weights_``, ``backend_``, ``n_evaluations_``, ``n_passes_``, ``profile_`` (the
    engine's timings and counters, empty where it has none; knn mode adds the ``knn_`` keys of
    ``_knn_index``). In knn mode gains and objective are on the graph, while ``nearest_`` is the dense
    similarity's nearest pick (exactly while N x k <= ``_knn_index.DENSE_NEAREST_MAX``; above, from the graph
    and a FAISS search over the picks).
    """

    def __init__(self, budget: Union[int, float], backend: str = "auto", mode: str = "auto",
                 similarity: str = "cosine", optimizer: str = "lazy", n_neighbors: int = 64, epsilon: float = 0.01,
                 random_state: int = 0, batch_size: Optional[int] = None, verbose: bool = False,
                 knn_index: str = "auto", knn_recall: float = 0.9,
                 memory_budget: Union[None, int, str] = None) -> None:
        self.budget = budget
        self.backend = backend
        self.mode = mode
        self.similarity = similarity
        self.optimizer = optimizer
        self.n_neighbors = n_neighbors
        self.epsilon = epsilon
        self.random_state = random_state
        self.batch_size = batch_size
        self.verbose = verbose
        self.knn_index = knn_index
        self.knn_recall = knn_recall
        self.memory_budget = memory_budget

    def _check(self):
        check_choice("mode", self.mode, MODES)
        check_choice("similarity", self.similarity, ("cosine",))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive_int("n_neighbors", self.n_neighbors)
        check_choice("knn_index", self.knn_index, KNN_INDEXES)
        check_knn_recall(self.knn_recall)
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not 0.0 < float(eps) < 1.0:
            raise InputError(f"must be a float in (0, 1), got {eps!r}", param="epsilon")
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        seed = self.random_state
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InputError(f"must be a non-negative int or None, got {seed!r}", param="random_state")
        parse_memory_budget(self.memory_budget)

    def fit(self, X: Any, y: Any = None) -> "FacilityLocation":
        """Select from ``X`` (NumPy, torch or CuPy; float32, float16 or int8 [N, D]); ``y`` is ignored."""
        self._check()
        X, name = prepare(self.backend, X)
        n = X.shape[0]
        k = resolve_budget(self.budget, n)
        engine = make_engine(name, X)
        mode = resolve_mode(self.mode, n)
        progress, close = progress_bar(k, self.verbose, "facility location")
        try:
            if mode == "dense" and self.optimizer == "lazy":
                result = engine.lazy_greedy(k, self.batch_size, progress,
                                            memory_budget=resolve_memory_budget(self.memory_budget, n))
            elif mode == "dense":
                result = stochastic_greedy(DenseOracle(engine), k, float(self.epsilon), self.random_state, progress)
            else:
                result = knn_select(engine, X, k, n_neighbors=self.n_neighbors, optimizer=self.optimizer,
                                    epsilon=float(self.epsilon), random_state=self.random_state,
                                    batch_size=self.batch_size, progress=progress, knn_index=self.knn_index,
                                    knn_recall=self.knn_recall)
        finally:
            close()
        set_fitted(self, result, name)
        self.mode_ = mode
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        self.fit(X)
        return X[self.ranking_]
