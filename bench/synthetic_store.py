"""A real feature store of synthetic clustered int8 features: ``mads-fast solve --store`` on millions of rows
with no model and no record data.

Rows are a seeded Gaussian mixture: C cluster centres on the unit sphere (times ``radius``), cluster sizes
drawn from a Dirichlet (some clusters large, some small, as real corpora are), and each cluster its own
spread ``sigma_c`` (log-uniform in [spread / 2, 2 spread]): row = centre[c] + sigma_c * N(0, I_D). The store is
written through ``FeatureStore`` (``open_for_write``, ``write_offset``, ``write_shard``, ``finalize``): a valid
manifest, int8 rows with one absmax scale each, quantised around an offset (the mixture's mean, as the
extractor quantises around a calibrated mean), dataset mean and std finalised from the shard sums.

Memory stays bounded in N: shard s is generated from its own generator (seed, s), so only one shard's
[shard_size, D] float32 block exists at a time (16 MiB at 16,384 x 256) plus the [C, D] centres; a store
of 10M x 256 is 2.6 GB on disk. The same arguments always give the same bytes, in any shard order.

    python bench/synthetic_store.py /tmp/syn_1m --n 1000000 --dim 256 --clusters 1000
    mads-fast solve --store /tmp/syn_1m --budget 0.1 --mode knn --knn-index ivf

Importable: ``write_synthetic_store(path, n, ...)`` and ``shard_rows(spec, shard)`` (a shard's float rows and
their cluster labels, to check a store against).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mads_fast.store import FeatureStore  # noqa: E402

MODEL = {"id": "synthetic-gaussian-mixture", "weights_sha256": "none"}


@dataclass(frozen=True)
class MixtureSpec:
    n: int                  # rows
    dim: int = 256          # features per row
    clusters: int = 1000    # mixture components C
    spread: float = 0.6     # typical per-cluster std per dimension, relative to a centre norm of ``radius``/sqrt(D)
    radius: float = 1.0     # norm of every centre, in units of sqrt(D) times the per-dimension scale
    concentration: float = 1.0  # Dirichlet concentration of the cluster sizes (1: skewed, large: equal sizes)
    seed: int = 0
    shard_size: int = 16384

    def fingerprint(self) -> str:
        return "synthetic:" + ",".join(f"{k}={v}" for k, v in asdict(self).items())


def mixture(spec: MixtureSpec):
    """(centres float32 [C, D], sigmas float32 [C], weights float64 [C]) of the spec, from its seed."""
    rng = np.random.default_rng([spec.seed, 1])
    centres = rng.standard_normal((spec.clusters, spec.dim)).astype(np.float32)  # [C, D]
    centres *= np.float32(spec.radius) / np.linalg.norm(centres, axis=1, keepdims=True)
    centres *= np.float32(np.sqrt(spec.dim))  # per-dimension scale ~1
    sigmas = (spec.spread * np.exp(rng.uniform(np.log(0.5), np.log(2.0), spec.clusters))).astype(np.float32)
    weights = rng.dirichlet(np.full(spec.clusters, spec.concentration))
    return centres, sigmas, weights


def shard_rows(spec: MixtureSpec, shard: int, parts=None):
    """(rows float32 [n_s, D], labels int64 [n_s]) of shard ``shard``, from the generator (seed, 2, shard)."""
    centres, sigmas, weights = parts if parts is not None else mixture(spec)
    start = shard * spec.shard_size
    n_s = min(spec.n, start + spec.shard_size) - start
    rng = np.random.default_rng([spec.seed, 2, shard])
    labels = rng.choice(spec.clusters, size=n_s, p=weights).astype(np.int64)  # [n_s]
    rows = rng.standard_normal((n_s, spec.dim), dtype=np.float32)  # [n_s, D]
    rows *= sigmas[labels][:, None]
    rows += centres[labels]
    return rows, labels


def quantise_int8(x: np.ndarray):
    """(q int8 [n, D], scales float32 [n, 1]): per-row absmax / 127, q = rint(x / scale); zero rows stay 0."""
    amax = np.abs(x).max(axis=1)  # [n]
    scale = (amax / np.float32(127.0)).astype(np.float32)
    inv = np.divide(np.float32(1.0), scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int8)
    return q, scale[:, None]


def write_synthetic_store(path, n: int, dim: int = 256, clusters: int = 1000, spread: float = 0.6,
                          radius: float = 1.0, concentration: float = 1.0, seed: int = 0, shard_size: int = 16384,
                          progress: bool = False) -> MixtureSpec:
    """Write (or resume, or reuse) the store of ``MixtureSpec(n, dim, ...)`` at ``path``; returns the spec.

    Ids are ``syn-<row>``. Raises the store's InputError when ``path`` holds a store of another spec.
    """
    spec = MixtureSpec(n=int(n), dim=int(dim), clusters=int(clusters), spread=float(spread), radius=float(radius),
                       concentration=float(concentration), seed=int(seed), shard_size=int(shard_size))
    store = FeatureStore.open_for_write(
        path, model=MODEL, feature_spec={"synthetic": asdict(spec)},
        dataset={"fingerprint": spec.fingerprint(), "n_records": spec.n, "path": str(path)},
        dim=spec.dim, width=spec.dim, dtype="int8", n_scales=1, shard_size=spec.shard_size)
    if store.complete:
        return spec
    parts = mixture(spec)
    centres, _, weights = parts
    offset = (weights[:, None] * centres).sum(axis=0).astype(np.float32)  # [D] the mixture's mean
    store.write_offset(offset)
    t0 = time.perf_counter()
    for shard in range(store.n_shards):
        if shard in store.done_shards:
            continue
        rows, _ = shard_rows(spec, shard, parts)
        rows -= offset
        q, scales = quantise_int8(rows)
        ids = [f"syn-{i}" for i in store.shard_range(shard)]
        store.write_shard(shard, q, scales, ids)
        if progress and (shard % 16 == 0 or shard == store.n_shards - 1):
            print(f"shard {shard + 1}/{store.n_shards}  {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    store.finalize()
    return spec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="directory to write (resumed or reused when it holds the same spec)")
    p.add_argument("--n", type=int, required=True, help="rows (up to 10M)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.6)
    p.add_argument("--concentration", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=16384)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    spec = write_synthetic_store(a.store, a.n, dim=a.dim, clusters=a.clusters, spread=a.spread,
                                 concentration=a.concentration, seed=a.seed, shard_size=a.shard_size, progress=True)
    print(f"{a.store}: {spec.n:,} x {spec.dim} int8, {spec.clusters} clusters, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
