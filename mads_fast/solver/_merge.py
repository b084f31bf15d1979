"""Merging per-partition greedy runs: the separable merge (exact) and the refined, GreeDi-style greedy.

Separable. Let f_sep(S) = sum_p f_p(S & V_p), f_p the facility location of partition p on its own rows
(s(i, j) = 0 across partitions: the block-diagonal similarity). A candidate of p changes only f_p, so its
gain under f_sep given S is its gain in p given S & V_p. By induction on the steps, the greedy on f_sep
after t_p picks from each p stands where p's own greedy stands after t_p picks, and its next pick is the
best among the partitions' NEXT picks (their heads): merging the per-partition gain sequences by gain is
that greedy. Ties follow ``_tie`` over the heads: G = the best head gain, and the lowest global index among
the heads with gain >= G - tau(G). (Within a partition its own greedy already applied the rule: its head is
the lowest local index -- rows are kept in ascending global order, so the lowest global one -- among its
own ties. A candidate that ties inside its partition but is not that partition's head is the one case the
merge does not see; that needs two gains of one partition within tau of each other and of another
partition's best.)

The merge never guesses a head it has not computed: a partition whose computed sequence is used up
(t_p = b_p < |V_p|) has an unknown head whose gain is at most its last gain (greedy gains never increase,
by submodularity; float noise is far below tau, and the bound is widened by one more tau). If that bound
reaches the tie threshold of the known heads, the merge stops and ``extend`` reruns those partitions with
larger budgets (a greedy's first b picks do not depend on its budget; should a rerun order a near-tie
differently within the prefix already merged, the merge starts over on the new runs), then resumes. So the
merge is exact whatever budgets the partitions were first run with; good first budgets only save reruns.

Refined. A lazy greedy under the TRUE objective over all N rows with candidates C (the union of the
partitions' picks): ``_lazy.lazy_greedy`` over ``PoolOracle``, whose gains are the sums, in fixed worker
order, of the workers' partial gains (each over its own rows; ``PartitionWorker.refine_step``). The pick
of a step is sent with the next step's first batch, so a step costs about one round trip.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import numpy as np

from ._lazy import lazy_greedy
from ._tie import tie_tolerance

Sequences = Dict[int, Tuple[np.ndarray, np.ndarray]]  # partition -> (global picks int64 [b], gains float64 [b])


def grown_budget(have: int, size: int) -> int:
    """The budget a used-up partition is rerun with: double (at least 16 more), so a partition that the merge
    keeps drawing on costs O(log) reruns, and never the whole remaining budget for one early shortfall."""
    return min(size, max(2 * have, have + 16))


def merge_separable(sequences: Sequences, sizes: Dict[int, int], k: int,
                    extend: Callable[[Dict[int, int]], Sequences]) -> Tuple[np.ndarray, np.ndarray, dict, int]:
    """The greedy on the separable objective from per-partition greedy runs (see the module doc).

    ``sequences[p]``: p's greedy picks (global rows) and gains for some budget; ``sizes[p]`` = |V_p|; k <=
    sum of sizes. ``extend({p: budget})`` returns those partitions' runs at the larger budgets. Returns
    (picks int64 [k], gains float64 [k], taken {p: picks taken from p}, reruns)."""
    seqs = {p: (np.asarray(r, dtype=np.int64), np.asarray(g, dtype=np.float64)) for p, (r, g) in sequences.items()}
    taken = {p: 0 for p in seqs}
    picks, gains = [], []
    reruns = 0
    order = sorted(seqs)
    while len(picks) < k:
        known = []  # (gain, global index, partition) of the computed heads
        unknown = []  # (bound on the head's gain, partition) of used-up partitions with rows left
        for p in order:
            r, g = seqs[p]
            t = taken[p]
            if t < r.size:
                known.append((float(g[t]), int(r[t]), p))
            elif t < sizes[p]:
                unknown.append((float(g[-1]) if g.size else math.inf, p))
        best = max((h[0] for h in known), default=-math.inf)
        floor = best - 2.0 * tie_tolerance(best) if known else -math.inf
        need = {p: grown_budget(seqs[p][0].size, sizes[p]) for bound, p in unknown if bound >= floor}
        if need:
            reruns += len(need)
            consistent = True
            for p, (r, g) in extend(need).items():
                r, g = np.asarray(r, dtype=np.int64), np.asarray(g, dtype=np.float64)
                consistent &= bool(np.array_equal(r[:taken[p]], seqs[p][0][:taken[p]]))
                seqs[p] = (r, g)
            if not consistent:  # a rerun reordered a near-tie of picks already merged: merge the new runs afresh
                taken = {p: 0 for p in seqs}
                picks, gains = [], []
            continue
        threshold = best - tie_tolerance(best)
        gain, index, p = min((h for h in known if h[0] >= threshold), key=lambda h: h[1])
        picks.append(index)
        gains.append(gain)
        taken[p] += 1
    return np.array(picks, dtype=np.int64), np.array(gains, dtype=np.float64), taken, reruns


class PoolOracle:
    """A gain oracle (``_lazy`` protocol) over candidate positions 0..C-1, evaluated by a pool of workers.

    ``gains`` asks every worker for its partial gains of a batch (after it applies the picks not yet sent)
    and adds them in worker order, float64; ``apply`` only queues the pick for the next call. The driver's
    ``cur`` and ``nearest`` that ``lazy_greedy`` passes are [C]-sized placeholders, never read."""

    def __init__(self, pool, n_candidates: int) -> None:
        self.pool = pool
        self.n = n_candidates
        self.pending = []  # [(candidate position, first pick?)] not yet applied by the workers
        self.round_trips = 0
        self.n_passes = 0

    def _sum(self, parts) -> np.ndarray:
        total = np.array(parts[0], dtype=np.float64)
        for part in parts[1:]:
            total += part
        return total

    def initial_gains(self) -> np.ndarray:
        self.round_trips += 1
        self.n_passes += 1
        return self._sum(self.pool.call("refine_initial", [()] * len(self.pool)))

    def gains(self, idx, cur) -> np.ndarray:
        batch = np.asarray(idx, dtype=np.int64)
        parts = self.pool.call("refine_step", [(self.pending, batch)] * len(self.pool))
        self.pending = []
        self.round_trips += 1
        self.n_passes += 1
        return self._sum(parts)

    def apply(self, j: int, cur, nearest, first: bool) -> None:
        self.pending.append((int(j), bool(first)))


def refine(pool, candidates: np.ndarray, k: int, batch_size: int) -> dict:
    """Lazy greedy of k picks under the true objective over every worker's rows, among ``candidates``
    (global rows, ascending, >= k of them). Returns ranking, gains (global rows / float64 [k]), and per
    worker (own rows, nearest global pick, its similarity), with round trips and evaluations."""
    candidates = np.asarray(candidates, dtype=np.int64)
    pool.call("refine_start", [(candidates,)] * len(pool))
    oracle = PoolOracle(pool, candidates.size)
    result = lazy_greedy(oracle, k, batch_size)
    finals = pool.call("refine_finish", [(oracle.pending,)] * len(pool))
    return dict(ranking=candidates[result.ranking], gains=result.gains, finals=finals,
                round_trips=oracle.round_trips + 2, n_evaluations=result.n_evaluations)
