"""Stochastic greedy (Mirzasoleiman et al. 2015), sampled here in Python so every backend picks alike.

Each step draws ceil(N / k * ln(1 / epsilon)) of the remaining candidates (all of them when fewer
remain) with ``numpy.random.default_rng(random_state)``, evaluates their exact gains through the
backend's oracle and picks with the shared tie rule.
"""
from __future__ import annotations

import math

import numpy as np

from ._result import GreedyResult
from ._tie import pick_tied


def sample_size(n: int, budget: int, epsilon: float) -> int:
    return max(1, math.ceil(n / budget * math.log(1.0 / epsilon)))


def stochastic_greedy(oracle, budget: int, epsilon: float, random_state, progress=None) -> GreedyResult:
    n = oracle.n
    rng = np.random.default_rng(random_state)
    size = sample_size(n, budget, epsilon)
    remaining = np.ones(n, dtype=bool)  # [N]
    cur = np.zeros(n, dtype=np.float32)  # [N]
    nearest = np.zeros(n, dtype=np.int64)  # [N]
    ranking = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    n_eval = 0
    for step in range(budget):
        pool = np.flatnonzero(remaining)
        sample = rng.choice(pool, size=min(size, pool.size), replace=False)
        g = oracle.gains(sample, cur)
        n_eval += sample.size
        j, gain, _ = pick_tied(sample, g)
        oracle.apply(j, cur, nearest, step == 0)
        remaining[j] = False
        ranking[step], gains[step] = j, gain
        if progress is not None:
            progress(step + 1)
    return GreedyResult(ranking, gains, nearest, cur, n_eval, getattr(oracle, "n_passes", 0))
