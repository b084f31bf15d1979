"""Exact lazy greedy over a gain oracle, with the shared tie rule (see ``_tie``).

This is the reference algorithm (the C++ backend runs the same rule natively, batched):
a heap holds (-upper bound, index); stale candidates are evaluated in heap order, ``batch_size`` at a
time, while the best remaining bound is >= G - tau (G: the best fresh gain this step); an upper bound
of 0 is exact and never re-evaluated. The pick is the lowest index among fresh candidates (plus the
lowest-index zero-bound one) whose gain is >= G - tau. Fresh gains become the new upper bounds.
"""
from __future__ import annotations

import heapq

import numpy as np

from ._result import GreedyResult
from ._tie import pick_tied, tie_tolerance


def lazy_greedy(oracle, budget: int, batch_size: int = 32, progress=None) -> GreedyResult:
    n = oracle.n
    cur = np.zeros(n, dtype=np.float32)  # [N] similarity of each example to its nearest pick
    nearest = np.zeros(n, dtype=np.int64)  # [N]
    bounds = oracle.initial_gains()  # [N] exact gains on the empty set
    n_eval = n
    heap = list(zip((-bounds).tolist(), range(n)))
    heapq.heapify(heap)
    ranking, gains = [], []

    def needs_evaluation(fresh, best):
        return bool(heap) and -heap[0][0] > 0.0 and (not fresh or -heap[0][0] >= best - tie_tolerance(best))

    for step in range(budget):
        fresh = {}  # candidate -> exact gain against cur
        best = -np.inf
        while needs_evaluation(fresh, best):
            take = []
            while len(take) < batch_size and needs_evaluation(fresh, best):
                take.append(heapq.heappop(heap)[1])
            g = oracle.gains(take, cur)
            n_eval += len(take)
            fresh.update(zip(take, g.tolist()))
            best = max(best, float(g.max()))
        idx = list(fresh)
        val = [fresh[j] for j in idx]
        zero_from_heap = bool(heap) and -heap[0][0] <= 0.0 and (not fresh or 0.0 >= best - tie_tolerance(best))
        if zero_from_heap:
            idx.append(heap[0][1])
            val.append(0.0)
        j, g, _ = pick_tied(np.array(idx), np.array(val))
        if zero_from_heap and j == heap[0][1]:
            heapq.heappop(heap)
        else:
            del fresh[j]
        for other, value in fresh.items():
            heapq.heappush(heap, (-value, other))
        oracle.apply(j, cur, nearest, step == 0)
        ranking.append(j)
        gains.append(g)
        if progress is not None:
            progress(step + 1)
    return GreedyResult(np.array(ranking, dtype=np.int64), np.array(gains, dtype=np.float64), nearest, cur,
                        n_eval, getattr(oracle, "n_passes", 0))
