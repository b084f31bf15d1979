"""Splitting the rows of a memory-mapped solver input into M partitions: seeded random, or FAISS k-means.

Both return labels int64 [N] in [0, M) and are deterministic for a seed. Neither holds the [N, D] matrix:
k-means trains on a seeded sample of rows (at most ``KMEANS_SAMPLE``, sorted, read from the memory map)
and assigns every row in blocks of ``ASSIGN_BLOCK_BYTES``. Rows are compared as unit vectors (spherical
k-means, inner product), the solver's cosine. A k-means partition may come out empty; callers drop it.
"""
from __future__ import annotations

import numpy as np

from mads_fast.errors import InputError

KMEANS_SAMPLE = 65536  # training rows at most: 256 per centroid is FAISS's own cap below M = 256
KMEANS_ITER = 20
KMEANS_REDO = 3  # FAISS restarts, the best objective kept: one random start splits a blob now and then
ASSIGN_BLOCK_BYTES = 32 << 20  # float32 rows converted per assignment block
FAISS_INSTALL = 'partition="kmeans" needs FAISS: pip install "mads-fast[faiss]" (or use partition="random")'


def import_faiss():
    """The ``faiss`` module, or an InputError naming ``partition`` and how to install it."""
    try:
        import faiss
    except ImportError:
        raise InputError(FAISS_INSTALL, param="partition") from None
    return faiss


def random_labels(n: int, m: int, seed) -> np.ndarray:
    """int64 [n]: a seeded uniform split into m parts of sizes differing by at most one (none empty, m <= n)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(n) % m).astype(np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of x (a read-only memory map's block, any dtype) as a new float32 array of unit rows (zero rows stay 0)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    np.divide(x, norms[:, None], out=x, where=norms[:, None] > 0)
    return x


def kmeans_labels(X, m: int, seed) -> np.ndarray:
    """int64 [N]: the nearest of m spherical k-means centroids of each row of X ([N, D], a memory map).

    Centroids come from the best of ``KMEANS_REDO`` FAISS runs of ``KMEANS_ITER`` iterations on a seeded
    sample; ties between centroids go to FAISS's order (deterministic). Rows that are all zero go to
    whichever centroid FAISS ranks first."""
    faiss = import_faiss()
    n, d = X.shape
    if m == 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    size = min(n, KMEANS_SAMPLE)
    sample = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    train = _unit(X[sample])
    km = faiss.Kmeans(d, m, niter=KMEANS_ITER, nredo=KMEANS_REDO, seed=int(rng.integers(1 << 30)), spherical=True,
                      verbose=False, min_points_per_centroid=1, max_points_per_centroid=max(256, -(-size // m)))
    km.train(train)
    index = faiss.IndexFlatIP(d)
    index.add(km.centroids)
    labels = np.empty(n, dtype=np.int64)
    step = max(1, ASSIGN_BLOCK_BYTES // (4 * d))
    for start in range(0, n, step):
        _, nearest = index.search(_unit(X[start:start + step]), 1)
        labels[start:start + step] = nearest[:, 0]
    return labels
