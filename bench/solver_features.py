"""Feature matrices for the solver benchmark: real (MiniLM embeddings of Alpaca) and synthetic.

Sources, all float32 and deterministic (seeded), so every method of a configuration sees the same rows:
- ``minilm``: the 384-d all-MiniLM-L6-v2 embeddings of the first N Alpaca records
  (``bench/.cache/alpaca_minilm.npy``, made by ``bench/embed_alpaca.py``). Real.
- ``minilm-proj``: those embeddings times a seeded Gaussian matrix [384, D] (a random projection; real
  data, any D; at D=256 it keeps ~the same cosine geometry, JL).
- ``gmm``: synthetic clustered features: 200 unit-norm Gaussian centres in D dimensions, each point a
  centre (picked with Dirichlet(1) weights, so cluster sizes vary) plus isotropic noise of norm ~1,
  so the within-cluster cosine is ~0.5 and the between-cluster cosine ~0.

``int8_features`` is the extraction store's solver form: rows L2-normalised, then per-row symmetric
int8 (``mads_fast.store.quantize_rows_int8``, the product's own function).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
MINILM = CACHE / "alpaca_minilm.npy"
MINILM_DIM = 384
SOURCES = ("minilm", "minilm-proj", "gmm")
GMM_CLUSTERS = 200


def default_source(d: int) -> str:
    """The benchmark's choice per D: real MiniLM when D <= 384 (projected unless D == 384), else synthetic."""
    if d == MINILM_DIM:
        return "minilm"
    return "minilm-proj" if d < MINILM_DIM else "gmm"


def is_synthetic(source: str) -> bool:
    return source == "gmm"


def minilm(n: int) -> np.ndarray:
    """float32 [n, 384]: the first n records' embeddings (a copy, not the memory map)."""
    if not MINILM.exists():
        raise FileNotFoundError(f"{MINILM} is missing: run `nice -n 19 python bench/embed_alpaca.py` first")
    emb = np.load(MINILM, mmap_mode="r")  # [51924, 384]
    if n > emb.shape[0]:
        raise ValueError(f"N={n} exceeds the {emb.shape[0]} embedded records")
    return np.array(emb[:n], dtype=np.float32)


def minilm_projected(n: int, d: int, seed: int = 0) -> np.ndarray:
    """float32 [n, d]: MiniLM embeddings times a seeded N(0, 1/d) matrix [384, d]."""
    rng = np.random.default_rng(seed)
    proj = (rng.standard_normal((MINILM_DIM, d)) / np.sqrt(d)).astype(np.float32)  # [384, d]
    return minilm(n) @ proj


def gmm(n: int, d: int, n_clusters: int = GMM_CLUSTERS, seed: int = 0) -> np.ndarray:
    """float32 [n, d]: clustered synthetic features (see the module doc)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))  # [C, d]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.ones(n_clusters))  # [C]
    label = rng.choice(n_clusters, size=n, p=weights)  # [n]
    # Noise of expected norm 1 (std 1/sqrt(d) per coordinate): cos(point, own centre) ~ 0.7, two points
    # of one cluster ~ 0.5.
    x = centres[label] + rng.standard_normal((n, d)) / np.sqrt(d)  # [n, d]
    return x.astype(np.float32)


def features(source: str, n: int, d: int, seed: int = 0) -> np.ndarray:
    if source == "minilm":
        if d != MINILM_DIM:
            raise ValueError(f"source minilm has D={MINILM_DIM}, not {d}")
        return minilm(n)
    if source == "minilm-proj":
        return minilm_projected(n, d, seed)
    if source == "gmm":
        return gmm(n, d, seed=seed)
    raise ValueError(f"unknown feature source {source!r}; expected one of {SOURCES}")


def normalised(X: np.ndarray) -> np.ndarray:
    """float32 [N, D] unit rows (zero rows stay zero): X-hat of the peers' S = max(0, X-hat X-hat^T)."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)).astype(np.float32)  # [N]
    out = np.zeros_like(X)
    np.divide(X, norms[:, None], out=out, where=norms[:, None] > 0)
    return out


def int8_features(X: np.ndarray) -> np.ndarray:
    """int8 [N, D]: the store's form, per-row symmetric int8 of the normalised rows."""
    from mads_fast.store import quantize_rows_int8

    scratch = normalised(X)
    return quantize_rows_int8(scratch, np.empty(X.shape, dtype=np.int8))
