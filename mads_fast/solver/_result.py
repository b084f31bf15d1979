"""What a greedy run hands back, whichever backend ran it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GreedyResult:
    ranking: np.ndarray  # int64 [k], picks in order
    gains: np.ndarray  # float64 [k], marginal gain of each pick
    nearest: np.ndarray  # int64 [N], index (into X) of each example's most similar pick
    nearest_similarity: np.ndarray  # float32 [N], that similarity (clipped at 0)
    n_evaluations: int  # candidate gains evaluated, first pass included
    n_passes: int = 0  # passes over X that computed similarity columns (GEMM-like)
    # Native profile, where a backend reports one: first/greedy seconds, multiply-adds, dense
    # evaluations, repacks, and per pick the unsaturated row count and cumulative evaluations.
    stats: dict = field(default_factory=dict)

    def weights(self) -> np.ndarray:
        """int64 [k]: how many examples have each pick as nearest (sums to N)."""
        position = np.full(self.nearest.size, -1, dtype=np.int64)  # [N] pick position of each selected row
        position[self.ranking] = np.arange(self.ranking.size)
        return np.bincount(position[self.nearest], minlength=self.ranking.size).astype(np.int64)


# Profile fields a native module may return beside the result (``GreedyResult.stats``).
# cache_used: 1 when the whole similarity matrix was built once and read (else the streaming path);
# cache_bytes: that matrix's bytes, or the streaming path's kept columns at their largest; cache_build_seconds:
# building the matrix (inside first_pass_seconds); cache_hits: gains read from cached columns, not a GEMM.
STAT_KEYS = ("n_dense_evaluations", "multiply_adds", "first_pass_multiply_adds", "n_repacks",
             "first_pass_seconds", "greedy_seconds", "unsaturated", "evaluations",
             "cache_used", "cache_bytes", "cache_build_seconds", "cache_hits")


def result_from(out: dict) -> GreedyResult:
    """A native module's result dict as a ``GreedyResult`` (the profile fields it has go to ``stats``)."""
    return GreedyResult(out["ranking"], out["gains"], out["nearest"], out["nearest_similarity"],
                        int(out["n_evaluations"]), int(out["n_passes"]),
                        {key: out[key] for key in STAT_KEYS if key in out})


def set_fitted(estimator, result: GreedyResult, backend: str) -> None:
    """The fitted attributes every facility-location estimator shares, from its ``result``: ``ranking_``,
    ``gains_``, ``curve_``, ``objective_``, ``nearest_``, ``nearest_similarity_``, ``weights_``, ``backend_``,
    ``n_evaluations_``, ``n_passes_`` and ``profile_`` (the result's stats; callers add their own keys)."""
    estimator.ranking_ = np.asarray(result.ranking, dtype=np.int64)
    estimator.gains_ = np.asarray(result.gains, dtype=np.float64)
    estimator.curve_ = np.cumsum(estimator.gains_)
    estimator.objective_ = float(estimator.curve_[-1])
    estimator.nearest_ = np.asarray(result.nearest, dtype=np.int64)
    estimator.nearest_similarity_ = np.asarray(result.nearest_similarity, dtype=np.float32)
    estimator.weights_ = result.weights()
    estimator.backend_ = backend
    estimator.n_evaluations_ = int(result.n_evaluations)
    estimator.n_passes_ = int(result.n_passes)
    estimator.profile_ = dict(result.stats)
