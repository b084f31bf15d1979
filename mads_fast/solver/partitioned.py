"""``PartitionedFacilityLocation``: facility location past what one dense pass affords, by partitions.

Rows are split into M partitions (``partition="random"``, seeded; or ``"kmeans"``, FAISS spherical
k-means on a seeded sample, rows assigned in blocks: ``_partition``); each partition is solved alone by
the existing engine (``FacilityLocation`` on its rows, dense or knn) in a worker that memory-maps only its
own rows (``_partition_worker``); the runs are then merged (``_merge``):

- ``merge="separable"``: the exact greedy of f_sep(S) = sum_p f_p(S & V_p), each example covered only by
  picks of its own partition (the greedy on the block-diagonal similarity). ``gains_``/``objective_`` are
  separable, ``nearest_`` is the nearest pick within the example's partition (an example of a partition
  that got no pick has similarity 0 and, by the usual convention, the first pick as nearest).
- ``merge="refined"`` (GreeDi-style): a lazy greedy under the TRUE objective over all N rows, candidates the
  union of the partitions' picks; each worker sums its own rows' contributions, the driver adds the partial
  sums (float64, fixed worker order) and applies the tie rule. ``gains_``, ``objective_`` and ``nearest_``
  are exact under the true objective for the final picks.

Each partition is first run with its share of the budget plus ``margin`` (ceil(k n_p / N) x (1 + margin)
+ 1 picks, at most n_p): the refined candidates, and the separable merge's head start (the merge reruns a
partition with a larger budget whenever its run is used up before the merge is done with it).

With one partition (M = 1, or all rows in one k-means cluster) both merges are the centralised greedy
itself: that partition is solved once with budget k on all rows, and every attribute equals
``FacilityLocation``'s.

Where it runs: ``workers`` local processes (spawn; default min(non-empty partitions, CPU count)), or Ray
actors when ``ray`` is given ("local", "auto" or an address: ``mads_fast.cluster.connect``). The solver
input is one ``.npy`` file every worker memory-maps (``fit`` takes its path; an in-memory array is written
to a temporary one first). The driver holds the labels, row lists, picks and nearest arrays ([N] ints),
never a feature row. Each worker holds its partitions' rows (and, when refining, the candidate rows).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from mads_fast.atomic import atomic_write
from mads_fast.errors import InputError
from mads_fast.options import (MERGES, MODES, PARTITION_METHODS, check_choice, check_positive_int,
                               resolve_budget)

from ._inputs import as_features
from ._merge import merge_separable, refine
from ._partition import import_faiss, kmeans_labels, random_labels
from ._placement import LocalPool, RayPool
from ._result import GreedyResult, set_fitted

log = logging.getLogger("mads_fast")

# Candidates per refinement round trip when ``refine_batch`` is None: batches of 16 need ~1.3 round trips per
# pick but evaluate ~1.7x the candidates of batches of 4 (~2.9 per pick): N=5000, D=64, M=4, k=500 (bench/).
# A worker's evaluation costs its rows x D multiply-adds; a round trip about the time of REFINE_WORK of them,
# so the batch shrinks from 16 to 4 as evaluations get dear.
REFINE_WORK = 1 << 24


def refine_batch_for(rows_per_worker: int, d: int) -> int:
    """The automatic refinement batch (see REFINE_WORK): in [4, 16]."""
    return int(min(16, max(4, REFINE_WORK // max(1, rows_per_worker * d))))


class PartitionedFacilityLocation:
    """Partitioned facility-location selection (see the module doc for the merges and their contracts).

    Parameters: ``budget`` (int count in [1, N] or float fraction); ``partitions`` (M, in [1, N]);
    ``partition`` ("kmeans" | "random"); ``merge`` ("refined" | "separable"); ``backend``, ``mode``,
    ``n_neighbors``, ``batch_size`` as in ``FacilityLocation`` (per partition); ``refine_batch`` (stale
    candidates evaluated per refinement round trip; None: 16 down to 4 as N x D per worker grows);
    ``margin`` (extra fraction of each partition's budget share, >= 0); ``random_state`` (seeds the
    partition); ``workers`` (processes or actors, default min(non-empty partitions, CPUs)); ``ray`` (None:
    local processes; else a Ray address).

    After ``fit``: ``ranking_`` int64 [k], ``gains_`` float64 [k], ``curve_``, ``objective_``, ``nearest_``
    int64 [N], ``nearest_similarity_`` float32 [N], ``weights_`` int64 [k], ``labels_`` int64 [N] (partition of
    each row), ``backend_``, ``n_evaluations_``, ``profile_`` (partitions, partition, merge, sizes,
    nonempty_partitions, workers, placement, seconds per phase, first_budgets, partition_seconds; separable:
    reruns, taken per partition; refined: candidates, refine_batch, round_trips, refine_worker_seconds;
    worker_peak_rss_bytes; at one partition, the engine's own profile too).
    """

    def __init__(self, budget: Union[int, float], partitions: int, partition: str = "kmeans",
                 merge: str = "refined", backend: str = "auto", mode: str = "auto", n_neighbors: int = 64,
                 batch_size: Optional[int] = None, refine_batch: Optional[int] = None, margin: float = 0.25,
                 random_state: Optional[int] = 0, workers: Optional[int] = None, ray: Optional[str] = None) -> None:
        self.budget = budget
        self.partitions = partitions
        self.partition = partition
        self.merge = merge
        self.backend = backend
        self.mode = mode
        self.n_neighbors = n_neighbors
        self.batch_size = batch_size
        self.refine_batch = refine_batch
        self.margin = margin
        self.random_state = random_state
        self.workers = workers
        self.ray = ray

    def check(self) -> None:
        """Every parameter that can be checked without the data (InputError naming it); cheap."""
        check_positive_int("partitions", self.partitions)
        check_choice("partition", self.partition, PARTITION_METHODS)
        check_choice("merge", self.merge, MERGES)
        check_choice("mode", self.mode, MODES)
        check_positive_int("n_neighbors", self.n_neighbors)
        if self.refine_batch is not None:
            check_positive_int("refine_batch", self.refine_batch)
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        if self.workers is not None:
            check_positive_int("workers", self.workers)
        m = self.margin
        if isinstance(m, bool) or not isinstance(m, (int, float, np.floating)) or not 0.0 <= float(m) <= 100.0:
            raise InputError(f"must be a number in [0, 100], got {m!r}", param="margin")
        seed = self.random_state
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InputError(f"must be a non-negative int or None, got {seed!r}", param="random_state")
        from ._backends import BACKENDS

        check_choice("backend", self.backend, BACKENDS + ("auto",))
        if self.ray is not None:
            from mads_fast.cluster import import_ray

            import_ray()
            if not isinstance(self.ray, str) or not self.ray:
                raise InputError(f"must be 'local', 'auto' or a cluster address, got {self.ray!r}", param="ray")
        if self.partition == "kmeans" and self.partitions > 1:
            import_faiss()

    def check_sizes(self, n: int) -> int:
        """The budget k for N = n rows, after the checks that need N (InputError naming the parameter)."""
        k = resolve_budget(self.budget, n)
        if self.partitions > n:
            raise InputError(f"{self.partitions:,} partitions asked for but the data has only {n:,} rows; "
                             f"use at most {n:,}", param="partitions")
        if self.merge == "refined" and k < self.partitions:
            raise InputError(f"merge='refined' takes at least one pick per partition: budget {k:,} is below "
                             f"{self.partitions:,} partitions; raise the budget or use fewer partitions",
                             param="partitions")
        return k

    def fit(self, X: Any, y: Any = None) -> "PartitionedFacilityLocation":
        """Select from ``X``: the path of an [N, D] int8/float32 ``.npy`` (memory-mapped by the workers), or an
        array (NumPy, torch, CuPy; written to a temporary ``.npy`` first). ``y`` is ignored."""
        self.check()
        tmp = None
        t0 = time.perf_counter()
        try:
            if isinstance(X, (str, os.PathLike)):
                path = Path(X)
            else:
                X = as_features(X)
                self.check_sizes(X.shape[0])
                tmp = Path(tempfile.mkdtemp(prefix="mads-partitioned-"))
                path = tmp / "solver_input.npy"
                atomic_write(path, lambda f: np.save(f, X, allow_pickle=False))
                del X
            write_seconds = time.perf_counter() - t0
            self._fit_file(path.resolve())
            self.profile_["seconds"]["write_input"] = write_seconds
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return self

    def _fit_file(self, path: Path) -> None:
        seconds = {}
        try:
            X = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"cannot memory-map the solver input: {exc}", path=path) from None
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0 or X.dtype not in (np.int8, np.float32):
            raise InputError(f"expected a non-empty [N, D] int8 or float32 array, got {X.shape} {X.dtype}", path=path)
        n, d = X.shape
        k = self.check_sizes(n)
        m = int(self.partitions)

        t0 = time.perf_counter()
        if m == 1:
            labels = np.zeros(n, dtype=np.int64)
        elif self.partition == "random":
            labels = random_labels(n, m, self.random_state)
        else:
            labels = kmeans_labels(X, m, self.random_state)
        del X
        order = np.argsort(labels, kind="stable")  # rows grouped by partition, ascending within each
        sizes = np.bincount(labels, minlength=m)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        parts = {p: order[bounds[p]:bounds[p + 1]] for p in range(m) if sizes[p] > 0}
        seconds["partition"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        pool, placement = self._pool(path, len(parts))
        seconds["start_workers"] = time.perf_counter() - t0
        n_workers = len(pool)
        try:
            owner = assign(parts, len(pool))
            t0 = time.perf_counter()
            pool.call("load", [({p: parts[p] for p in mine},) for mine in owner])
            seconds["load"] = time.perf_counter() - t0
            extra = {}
            if len(parts) == 1:
                result, backend = self._single(pool, owner, k, seconds)
            else:
                result, backend, extra = self._merged(pool, owner, parts, labels, k, d, seconds)
            rss = pool.call("peak_rss", [()] * len(pool))
        finally:
            pool.close()

        set_fitted(self, result, backend)
        self.labels_ = labels
        self.profile_.update(partitions=m, partition=self.partition, merge=self.merge, sizes=sizes.tolist(),
                             nonempty_partitions=len(parts), workers=n_workers, placement=placement,
                             worker_peak_rss_bytes=rss, seconds=seconds, **extra)

    def _pool(self, path: Path, nonempty: int):
        init = dict(path=str(path), backend=self.backend, mode=self.mode, n_neighbors=self.n_neighbors,
                    batch_size=self.batch_size)
        if self.ray is None:
            workers = min(nonempty, self.workers or (os.cpu_count() or 1))
            return LocalPool(workers, init), "local"
        from mads_fast.cluster import connect

        ray = connect(self.ray)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        workers = min(nonempty, self.workers or cpus)
        pool = RayPool(ray, workers, init)
        seen = pool.call("sees", [(str(path),)] * len(pool))
        if not all(seen):
            pool.close()
            raise InputError("the solver input is not visible from every Ray worker; put it on a filesystem "
                             "every node shares", path=path, param="ray")
        return pool, "ray"

    def _single(self, pool, owner, k: int, seconds: dict):
        """One non-empty partition: the centralised greedy on it, as ``FacilityLocation`` reports it."""
        t0 = time.perf_counter()
        out = pool.call("solve_whole", [(owner[0][0], k)])[0]  # one partition: one worker
        seconds["solve"] = time.perf_counter() - t0
        result = GreedyResult(out["ranking"], out["gains"], out["nearest"], out["nearest_similarity"],
                              out["n_evaluations"], 0, dict(out["profile"]))
        return result, out["backend"]

    def _merged(self, pool, owner, parts: dict, labels: np.ndarray, k: int, d: int, seconds: dict):
        n = labels.size
        sizes = {p: rows.size for p, rows in parts.items()}
        share = {p: math.ceil(k * size / n) for p, size in sizes.items()}
        budgets = {p: min(sizes[p], math.ceil(share[p] * (1.0 + float(self.margin))) + 1) for p in parts}
        where = {p: w for w, mine in enumerate(owner) for p in mine}

        def run(wanted: dict) -> dict:
            args = [({p: b for p, b in wanted.items() if where[p] == w},) for w in range(len(pool))]
            merged = {}
            for part in pool.call("solve", args):
                merged.update(part)
            return merged

        t0 = time.perf_counter()
        runs = run(budgets)
        seconds["solve"] = time.perf_counter() - t0
        backend = next(iter(runs.values()))[3]
        solve_seconds = {p: r[2] for p, r in runs.items()}
        extra = dict(first_budgets={int(p): int(b) for p, b in budgets.items()})
        t0 = time.perf_counter()
        if self.merge == "separable":
            ranking, gains, taken, reruns = merge_separable({p: (r[0], r[1]) for p, r in runs.items()}, sizes, k,
                                                            lambda need: {p: r[:2] for p, r in run(need).items()})
            seconds["merge"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            by_part = {p: [] for p in parts}  # each partition's picks, in pick order
            for j in ranking.tolist():
                by_part[int(labels[j])].append(j)
            nearest = np.full(n, ranking[0], dtype=np.int64)
            sim = np.zeros(n, dtype=np.float32)
            for out in pool.call("nearest_within", [({p: by_part[p] for p in mine},) for mine in owner]):
                for p, (rows, near, s) in out.items():
                    covered = near >= 0
                    nearest[rows[covered]] = near[covered]
                    sim[rows] = s
            seconds["nearest"] = time.perf_counter() - t0
            extra.update(reruns=reruns, taken={int(p): int(t) for p, t in taken.items()})
            result = GreedyResult(ranking, gains, nearest, sim, 0, 0, {})
        else:
            candidates = np.unique(np.concatenate([r[0] for r in runs.values()]))
            batch = int(self.refine_batch or refine_batch_for(-(-n // len(pool)), d))
            out = refine(pool, candidates, k, batch)
            nearest = np.empty(n, dtype=np.int64)
            sim = np.empty(n, dtype=np.float32)
            for rows, near, s, _ in out["finals"]:
                nearest[rows] = near
                sim[rows] = s
            seconds["refine"] = time.perf_counter() - t0
            extra.update(candidates=int(candidates.size), refine_batch=batch, round_trips=int(out["round_trips"]),
                         refine_worker_seconds=[float(f[3]) for f in out["finals"]])
            result = GreedyResult(out["ranking"], out["gains"], nearest, sim, int(out["n_evaluations"]), 0, {})
        extra["partition_seconds"] = {int(p): float(s) for p, s in solve_seconds.items()}
        return result, backend, extra


def assign(parts: dict, workers: int) -> list:
    """Partitions per worker, largest first to the least loaded (ties to the lowest worker): deterministic,
    every worker gets at least one when workers <= partitions."""
    owner = [[] for _ in range(workers)]
    load = [0] * workers
    for p in sorted(parts, key=lambda p: (-parts[p].size, p)):
        w = min(range(workers), key=lambda w: (load[w], w))
        owner[w].append(p)
        load[w] += parts[p].size
    return owner

