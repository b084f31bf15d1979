"""``KCenter``: greedy farthest-first on cosine distance 1 - s (s clipped at 0, so distances lie in [0, 1]).

The first pick is the facility-location first pick (the largest sum of clipped similarities); each
later pick maximises the distance to its nearest selected example. Ties follow the shared rule of
``_tie`` (lowest index within tau of the best), so every backend picks alike.
"""
from __future__ import annotations

from typing import Any, Union

import numpy as np

from ._backends import make_engine, resolve
from ._inputs import as_features, resolve_budget
from ._oracles import apply_column
from ._tie import pick_tied


class KCenter:
    """After ``fit``: ``ranking_``, ``radii_`` (max distance to the nearest pick, after each pick),
    ``nearest_``, ``nearest_similarity_``, ``weights_``, ``backend_``."""

    def __init__(self, budget: Union[int, float], backend: str = "auto") -> None:
        self.budget = budget
        self.backend = backend

    def fit(self, X: Any, y: Any = None) -> "KCenter":
        name = resolve(self.backend, X)
        X = as_features(X)  # host NumPy for every engine: the farthest-first loop reads columns on the host
        n = X.shape[0]
        k = resolve_budget(self.budget, n)
        engine = make_engine(name, X)
        everyone = np.arange(n, dtype=np.int64)
        j, _, _ = pick_tied(everyone, engine.column_sums())
        cur = np.zeros(n, dtype=np.float32)  # [N] similarity to the nearest pick
        nearest = np.zeros(n, dtype=np.int64)  # [N]
        selected = np.zeros(n, dtype=bool)  # [N]
        ranking = np.empty(k, dtype=np.int64)
        radii = np.empty(k, dtype=np.float64)
        for step in range(k):
            column, _ = engine.columns([j], cur)
            apply_column(j, column[0], cur, nearest, step == 0)
            selected[j] = True
            ranking[step] = j
            distance = 1.0 - cur.astype(np.float64)  # [N]
            radii[step] = float(distance.max())
            if step + 1 < k:
                open_ = ~selected
                j, _, _ = pick_tied(everyone[open_], distance[open_])
        self.ranking_ = ranking
        self.radii_ = radii
        self.nearest_ = nearest
        self.nearest_similarity_ = cur
        position = np.empty(n, dtype=np.int64)
        position[ranking] = np.arange(k)
        self.weights_ = np.bincount(position[nearest], minlength=k).astype(np.int64)
        self.backend_ = name
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        self.fit(X)
        return X[self.ranking_]
