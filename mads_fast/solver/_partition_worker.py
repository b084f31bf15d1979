"""What one partitioned-selection worker holds and does: its own rows of a memory-mapped solver input.

A ``PartitionWorker`` is built on the path of the solver input (an [N, D] int8 or float32 ``.npy``) and is
given the global row numbers of the partitions it owns (sorted ascending). It reads those rows and only
those (``np.load(mmap_mode="r")`` then a gather), so a worker holds sum_p |V_p| x D feature bytes plus
what the engine builds on them; the driver never sees a feature row.

Two jobs, the same object in a local process (``_placement.LocalPool``) or a Ray actor (``RayPool``):

- ``solve``: the exact greedy of each owned partition on that partition's rows alone (``FacilityLocation``,
  dense or knn), picks returned as global row numbers with their gains;
- ``refine_*``: the worker's share of a greedy under the TRUE objective over all N rows, candidates C given
  by global row numbers. The worker builds one engine on [its rows; the candidates it does not own] and
  keeps ``cur`` (similarity of each own row to its nearest pick) and ``nearest``. A candidate's partial gain
  is sum over OWN rows of max(0, s(i, c) - cur_i); the appended candidate rows get cur = ``PAD`` (above any
  similarity, which is <= 1), so they add exact zeros and never count. ``refine_step`` fuses applying the
  previous pick with evaluating the next batch, one round trip for both, and keeps evaluated columns (own
  rows, up to ``KEEP_BYTES``) so that re-evaluating a candidate costs no dot products.
"""
from __future__ import annotations

import os
import resource
import time
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np

from ._backends import make_engine, prepare
from ._knn import exact_nearest
from ._oracles import apply_column

PAD = np.float32(4.0)  # cur of appended candidate rows: max(0, s - PAD) == 0 for every s <= 1
INITIAL_BLOCK_BYTES = 64 << 20  # largest [m, n_local] float32 block of the refinement's first pass
KEEP_BYTES = 256 << 20  # similarity columns a refining worker keeps (own rows only), least recently used out


def peak_rss_bytes() -> int:
    """This process's peak resident set in bytes (see ``PartitionWorker.peak_rss``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PartitionWorker:
    """One worker's rows and state. ``threads``: OpenMP threads for the native engine (set before it loads)."""

    def __init__(self, path: str, backend: str = "auto", mode: str = "auto", n_neighbors: int = 64,
                 batch_size: Optional[int] = None, threads: Optional[int] = None) -> None:
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(int(threads))  # libgomp reads it when the native module loads
        self.path = str(path)
        self.backend = backend
        self.mode = mode
        self.n_neighbors = n_neighbors
        self.batch_size = batch_size
        self.rows: Dict[int, np.ndarray] = {}  # partition -> int64 [n_p] global rows, ascending
        self.X: Dict[int, np.ndarray] = {}  # partition -> [n_p, D] its features (a copy: the worker's only copy)

    def load(self, partitions: Dict[int, np.ndarray]) -> float:
        """Read the rows of the given partitions (partition -> sorted global rows); returns seconds."""
        t0 = time.perf_counter()
        mm = np.load(self.path, mmap_mode="r", allow_pickle=False)  # [N, D], nothing read yet
        for p, rows in partitions.items():
            rows = np.asarray(rows, dtype=np.int64)
            self.rows[p] = rows
            self.X[p] = np.ascontiguousarray(mm[rows])  # reads only these rows' pages
        del mm
        return time.perf_counter() - t0

    def solve(self, budgets: Dict[int, int]) -> Dict[int, tuple]:
        """Greedy on each partition p alone with ``budgets[p]`` picks (<= its size): p -> (global picks int64
        [b], gains float64 [b], seconds, backend). A larger budget repeats a smaller one's picks as its prefix."""
        from .facility_location import FacilityLocation

        out = {}
        for p, b in budgets.items():
            t0 = time.perf_counter()
            fl = FacilityLocation(int(b), backend=self.backend, mode=self.mode, n_neighbors=self.n_neighbors,
                                  batch_size=self.batch_size).fit(self.X[p])
            out[p] = (self.rows[p][fl.ranking_], fl.gains_, time.perf_counter() - t0, fl.backend_)
        return out

    def solve_whole(self, p: int, budget: int) -> dict:
        """Everything ``FacilityLocation`` reports for partition p alone (the one-partition case)."""
        from .facility_location import FacilityLocation

        fl = FacilityLocation(int(budget), backend=self.backend, mode=self.mode, n_neighbors=self.n_neighbors,
                              batch_size=self.batch_size).fit(self.X[p])
        rows = self.rows[p]
        return dict(ranking=rows[fl.ranking_], gains=fl.gains_, nearest=rows[fl.nearest_],
                    nearest_similarity=fl.nearest_similarity_, backend=fl.backend_, profile=fl.profile_,
                    n_evaluations=fl.n_evaluations_)

    def nearest_within(self, picks: Dict[int, np.ndarray]) -> Dict[int, tuple]:
        """For each partition p: (its rows, the global nearest among ``picks[p]`` (global rows of p, pick order),
        that similarity), under the dense similarity within p. Empty picks: nearest -1, similarity 0."""
        out = {}
        for p, rows in self.rows.items():
            chosen = np.asarray(picks.get(p, ()), dtype=np.int64)
            if chosen.size == 0:
                out[p] = (rows, np.full(rows.size, -1, dtype=np.int64), np.zeros(rows.size, dtype=np.float32))
                continue
            X, name = prepare(self.backend, self.X[p])
            local = np.searchsorted(rows, chosen)
            nearest, sim = exact_nearest(make_engine(name, X), local)
            out[p] = (rows, rows[nearest], sim)
        return out

    # -- refinement: the true objective over every worker's rows, candidates shared -------------------------

    def refine_start(self, candidates: np.ndarray) -> int:
        """Build the engine on [own rows; candidates owned elsewhere]; cur = 0 on own rows. Returns own rows."""
        candidates = np.asarray(candidates, dtype=np.int64)  # [C] global, ascending
        parts = sorted(self.rows)  # never empty: the driver gives every worker a partition
        self.own = np.sort(np.concatenate([self.rows[p] for p in parts]))  # [n_own] global rows, ascending
        self.n_own = self.own.size
        at = np.minimum(np.searchsorted(self.own, candidates), self.n_own - 1)
        mine = self.own[at] == candidates  # [C]
        external = candidates[~mine]
        first = self.X[parts[0]]
        X = np.empty((self.n_own + external.size, first.shape[1]), dtype=first.dtype)  # [n_own + n_ext, D]
        for p in parts:  # moved, not copied twice: the solve phase is over, the engine input is the only copy
            X[np.searchsorted(self.own, self.rows[p])] = self.X.pop(p)
        mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        X[self.n_own:] = mm[external]
        del mm
        self.position = np.where(mine, at, 0)  # [C] candidate -> its row in the engine
        self.position[~mine] = self.n_own + np.arange(external.size)
        X, name = prepare(self.backend, X)
        self.engine = make_engine(name, X)
        self.cur = np.zeros(X.shape[0], dtype=np.float32)  # [n_own + n_ext]
        self.cur[self.n_own:] = PAD
        self.nearest = np.full(self.n_own, -1, dtype=np.int64)  # [n_own] candidate positions
        self.candidates = candidates
        self.keep = KEEP_BYTES // (4 * self.n_own)  # columns kept over own rows
        self.kept: "OrderedDict[int, np.ndarray]" = OrderedDict()  # candidate position -> float32 [n_own]
        self._scratch = np.empty(self.n_own, dtype=np.float32)
        self.seconds = 0.0
        return int(self.n_own)

    def refine_initial(self) -> np.ndarray:
        """float64 [C]: every candidate's partial gain on the empty set (sum over own rows of s(i, c)). The
        first columns are kept while ``KEEP_BYTES`` has room (all of them when C x own rows is small)."""
        t0 = time.perf_counter()
        pos = self.position
        out = np.zeros(pos.size, dtype=np.float64)
        step = max(1, INITIAL_BLOCK_BYTES // (4 * max(1, self.cur.size)))
        for start in range(0, pos.size, step):
            cols, out[start:start + step] = self.engine.columns(pos[start:start + step], self.cur)
            for c, column in zip(range(start, start + cols.shape[0]), cols):  # kept while there is room
                if len(self.kept) >= self.keep:
                    break
                self.kept[c] = column[:self.n_own].copy()
        self.seconds += time.perf_counter() - t0
        return out

    def _column(self, c: int) -> np.ndarray:
        """float32 [n_own]: candidate position c's similarity column over own rows (kept, else computed)."""
        column = self.kept.get(c)
        if column is None:
            column = self.engine.columns(self.position[[c]], self.cur)[0][0, :self.n_own]
        return column

    def _apply(self, applies) -> None:
        for c, first in applies:  # candidate position in C, whether it is the first pick
            apply_column(c, self._column(c), self.cur[:self.n_own], self.nearest, bool(first))
            self.kept.pop(c, None)  # a pick is never evaluated again

    def refine_step(self, applies, batch) -> np.ndarray:
        """Apply the picks not yet applied (``applies``: [(candidate position, first pick?)]), then return the
        partial gains float64 [m] of the candidate positions ``batch`` [m] against the updated cur.

        A candidate whose column is kept costs 3 passes over own rows (max(0, s - cur), summed in float64)
        instead of D multiply-adds per row; the others go through the engine, and their columns are kept
        (least recently used out first, at most ``KEEP_BYTES``): lazy greedy re-evaluates the same strong
        candidates step after step."""
        t0 = time.perf_counter()
        self._apply(applies)
        batch = np.asarray(batch, dtype=np.int64)
        gains = np.zeros(batch.size, dtype=np.float64)
        cur = self.cur[:self.n_own]
        miss = []
        for i, c in enumerate(batch.tolist()):
            column = self.kept.get(c)
            if column is None:
                miss.append(i)
                continue
            self.kept.move_to_end(c)
            np.subtract(column, cur, out=self._scratch)
            np.maximum(self._scratch, 0, out=self._scratch)
            gains[i] = self._scratch.sum(dtype=np.float64)
        if miss:
            cols, fresh = self.engine.columns(self.position[batch[miss]], self.cur)  # [m', n_local], [m']
            gains[miss] = fresh
            for i, column in zip(miss, cols):
                if self.keep < 1:
                    break
                self.kept[int(batch[i])] = column[:self.n_own].copy()
                if len(self.kept) > self.keep:
                    self.kept.popitem(last=False)
        self.seconds += time.perf_counter() - t0
        return gains

    def refine_finish(self, applies) -> tuple:
        """Apply the picks not yet applied; (own global rows [n_own], nearest pick as a global row [n_own], its
        similarity float32 [n_own], seconds spent in refine calls)."""
        self._apply(applies)
        out = (self.own, self.candidates[self.nearest], self.cur[:self.n_own].copy(), self.seconds)
        self.engine = None
        return out

    def peak_rss(self) -> int:
        """This process's peak resident memory in bytes: ``VmHWM`` on Linux (reset by exec; ``ru_maxrss`` is
        not: a process started by a large one would report its parent's peak), else ``ru_maxrss``."""
        return peak_rss_bytes()

    def sees(self, path: str) -> bool:
        """Whether this worker sees ``path`` (the solver input must be on a filesystem every worker shares)."""
        return os.path.exists(path)
