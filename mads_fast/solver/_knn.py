"""kNN mode: the reference top-k neighbour graph, built in row blocks from any engine's similarity columns.

Row i keeps itself plus its ``n_neighbors`` most similar other rows (ties to the lowest index),
similarities clipped at 0; W[i, j] = s(i, j) for kept j, else 0. With n_neighbors >= N - 1 every row
keeps everything and W is the dense similarity, so the picks equal dense mode's.
"""
from __future__ import annotations

import numpy as np

from ._oracles import apply_column

BLOCK_BYTES = 64 << 20  # the largest per-block temporary (the int64 running count of ties)


def knn_graph_reference(engine, n_neighbors: int):
    """(neighbors int64 [N, K+1], sims float32 [N, K+1]), self first, K = min(n_neighbors, N-1), then the kept
    neighbours in ascending index order (not by similarity; every engine's ``knn_graph`` keeps this order)."""
    n = engine.n
    k = min(int(n_neighbors), n - 1)
    neighbors = np.empty((n, k + 1), dtype=np.int64)  # [N, K+1]
    sims = np.empty((n, k + 1), dtype=np.float32)  # [N, K+1]
    step = max(1, min(1024, BLOCK_BYTES // (8 * n)))
    for start in range(0, n, step):
        rows = np.arange(start, min(n, start + step))  # [r]
        S, _ = engine.columns(rows)  # [r, N], S[c, i] = s(rows[c], i)
        local = np.arange(rows.size)
        neighbors[rows, 0] = rows
        sims[rows, 0] = S[local, rows]
        if k == 0:
            continue
        S[local, rows] = -1.0  # never one's own neighbour: similarities are >= 0
        kth = np.partition(S, n - k, axis=1)[:, n - k]  # [r] the k-th largest of each row
        above = S > kth[:, None]
        level = S == kth[:, None]
        room = k - above.sum(axis=1)  # [r] how many ties at the k-th value each row still keeps
        keep = above | (level & (np.cumsum(level, axis=1) <= room[:, None]))  # lowest-index ties first
        cols = np.nonzero(keep)[1].reshape(rows.size, k)  # row-major: indices ascending per row
        neighbors[rows, 1:] = cols
        sims[rows, 1:] = np.take_along_axis(S, cols, axis=1)
    return neighbors, sims


def exact_nearest(engine, ranking: np.ndarray, chunk: int = 64):
    """Each example's most similar pick under the dense similarity (first pick attaining the max)."""
    n = engine.n
    cur = np.zeros(n, dtype=np.float32)  # [N]
    nearest = np.zeros(n, dtype=np.int64)  # [N]
    for start in range(0, ranking.size, chunk):
        block = ranking[start:start + chunk]
        S, _ = engine.columns(block)  # [m, N]
        for pos, j in enumerate(block.tolist()):
            apply_column(j, S[pos], cur, nearest, start + pos == 0)
    return nearest, cur
