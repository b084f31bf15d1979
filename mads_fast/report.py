"""Coverage report: ``report.json`` plus three PNG plots a user can read at a glance.

- ``coverage.png``: mean coverage (f(S_k) / N, the average similarity of an example to its nearest pick)
  against the budget k, with the chosen budget marked; for k-center the coverage radius (the largest
  distance of an example to its nearest pick) instead;
- ``gains.png``: the marginal gain of each pick (k-center: how much each pick shrank the radius), with the
  knee (Kneedle: the point of the normalised cumulative curve farthest above the chord) marked as a
  suggested budget;
- ``similarity.png``: the histogram of pairwise cosine similarities on a random sample of pairs, raw
  features against the centred, normalised solver input, so a user can see that the features separate
  the data (raw LLM activations are anisotropic: nearly every pair looks alike).

The arrays behind the plots live in ``report_data.npz`` so ``mads-fast report`` can redraw them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import atomic_write
from .errors import InputError

THRESHOLDS = (0.5, 0.7, 0.9)
PLOTS = ("coverage.png", "gains.png", "similarity.png")


def knee_index(gains: np.ndarray) -> int:
    """Index (0-based pick) of the knee of a non-increasing gain curve (Kneedle on the cumulative curve).

    The cumulative objective is concave; after normalising both axes to [0, 1] the knee is the point
    farthest above the chord from the first to the last pick. Fewer than 3 picks: the last pick.
    """
    g = np.asarray(gains, dtype=np.float64)
    n = len(g)
    if n < 3:
        return max(0, n - 1)
    curve = np.cumsum(g)
    x = np.arange(1, n + 1, dtype=np.float64)
    xn = (x - x[0]) / (x[-1] - x[0])
    span = curve[-1] - curve[0]
    if span <= 0:
        return 0
    yn = (curve - curve[0]) / span
    return int(np.argmax(yn - xn))


def radius_reductions(radii: np.ndarray) -> np.ndarray:
    """k-center's gains: how much each pick shrank the coverage radius (0 for the first, which has no
    radius before it). Their cumulative sum is the radius shrinkage so far, the curve whose knee is taken."""
    r = np.asarray(radii, dtype=np.float64)
    return np.concatenate([np.zeros(min(1, len(r))), r[:-1] - r[1:]])


def knee_of(objective: str, per_pick: np.ndarray) -> int:
    """The suggested budget in picks (1-based): the knee of the gains (facility) or of the radius
    reductions (k-center, ``per_pick`` holding the radii)."""
    per_pick = np.asarray(per_pick, dtype=np.float64)
    if not len(per_pick):
        return 0
    gains = per_pick if objective == "facility" else radius_reductions(per_pick)
    return knee_index(gains) + 1


def coverage_stats(nearest_similarity: np.ndarray) -> dict:
    s = np.asarray(nearest_similarity, dtype=np.float64)
    out = {f"share_nearest_sim_above_{t}": float(np.mean(s > t)) for t in THRESHOLDS}
    out.update(mean_nearest_similarity=float(s.mean()), median_nearest_similarity=float(np.median(s)),
               min_nearest_similarity=float(s.min()))
    return out


def sample_pair_similarities(features: np.ndarray, n_pairs: int = 20000, seed: int = 0) -> np.ndarray:
    """Cosine similarity of ``n_pairs`` random distinct pairs of rows (float64), without an N x N matrix."""
    x = np.asarray(features)
    n = x.shape[0]
    if n < 2:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_pairs)
    j = (i + rng.integers(1, n, size=n_pairs)) % n  # j != i
    a = x[i].astype(np.float64)
    b = x[j].astype(np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    return np.einsum("ij,ij->i", a[ok], b[ok]) / (na[ok] * nb[ok])


def similarity_summary(sims: np.ndarray) -> dict:
    if len(sims) == 0:
        return {"pairs": 0}
    q = np.quantile(sims, [0.01, 0.5, 0.99])
    return {"pairs": int(len(sims)), "mean": float(sims.mean()), "std": float(sims.std()),
            "p01": float(q[0]), "median": float(q[1]), "p99": float(q[2])}


def write_report(report_dir, summary: dict, *, objective: str = "facility", per_pick, knee: int,
                 nearest_similarity, raw_sims=None, solver_sims=None, budget: Optional[int] = None) -> dict:
    """Write report.json, report_data.npz and the PNG plots into ``report_dir``; returns the JSON dict.

    per_pick: the gains (facility) or the radii (k-center) in pick order; knee: the suggested budget in
    picks, as the selection computed it (``knee_of``), so report.json says what the result says.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    per_pick = np.asarray(per_pick, dtype=np.float64)
    nearest_similarity = np.asarray(nearest_similarity, dtype=np.float64)
    n = len(nearest_similarity)
    summary = dict(summary)
    summary["coverage"] = coverage_stats(nearest_similarity) if n else {}
    at_knee = "gain_at_knee" if objective == "facility" else "radius_at_knee"
    summary["knee"] = {"picks": knee, "fraction": knee / n if n else 0.0,
                       at_knee: float(per_pick[knee - 1]) if len(per_pick) else 0.0}
    if raw_sims is not None:
        summary["similarity_raw"] = similarity_summary(np.asarray(raw_sims))
    if solver_sims is not None:
        summary["similarity_solver_input"] = similarity_summary(np.asarray(solver_sims))
    summary["plots"] = list(PLOTS)
    arrays = {"gains" if objective == "facility" else "radii": per_pick, "nearest_similarity": nearest_similarity,
              "raw_sims": np.asarray(raw_sims if raw_sims is not None else [], dtype=np.float64),
              "solver_sims": np.asarray(solver_sims if solver_sims is not None else [], dtype=np.float64)}
    atomic_write(report_dir / "report_data.npz", lambda fh: np.savez_compressed(fh, **arrays))
    draw_plots(report_dir, arrays, n_examples=n, budget=budget or len(per_pick), knee=knee)
    atomic_write(report_dir / "report.json",
                 lambda fh: fh.write(json.dumps(summary, indent=2, sort_keys=False).encode() + b"\n"))
    return summary


def redraw(report_dir) -> dict:
    """Redraw the plots of an existing report directory from its report_data.npz (and its knee from
    report.json)."""
    report_dir = Path(report_dir)
    path = report_dir / "report_data.npz"
    meta_path = report_dir / "report.json"
    if not path.is_file() or not meta_path.is_file():
        raise InputError("not a report directory (report.json and report_data.npz are needed); "
                         "run `mads-fast select ... --report DIR` first", path=report_dir)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        summary = json.loads(meta_path.read_text())
        knee = int(summary["knee"]["picks"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read the report: {exc}", path=path) from None
    per_pick = arrays["gains"] if "gains" in arrays else arrays["radii"]
    draw_plots(report_dir, arrays, n_examples=len(arrays["nearest_similarity"]), budget=len(per_pick), knee=knee)
    return summary


def draw_plots(report_dir: Path, arrays: dict, *, n_examples: int, budget: int, knee: int) -> None:
    """The three PNGs from the report's arrays (``gains`` for facility location, ``radii`` for k-center);
    ``knee`` in picks (1-based)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    facility = "gains" in arrays
    per_pick = arrays["gains"] if facility else arrays["radii"]
    k = np.arange(1, len(per_pick) + 1)

    def save(fig, name):
        atomic_write(report_dir / name, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if len(per_pick):
        if facility:
            curve = np.cumsum(per_pick) / max(n_examples, 1)
            label, ylabel, where = "facility-location coverage f(S)/N", "mean similarity to nearest pick", "lower right"
        else:
            curve = per_pick
            label, ylabel, where = "k-center radius", "largest distance to nearest pick", "upper right"
        ax.plot(k, curve, color="#1f77b4", lw=1.8, label=label)
        ax.axvline(budget, color="#444", ls="--", lw=1, label=f"budget = {budget:,}")
        ax.scatter([knee], [curve[knee - 1]], color="#d62728", zorder=3, label=f"knee = {knee:,}")
        ax.set_ylabel(ylabel)
        ax.legend(loc=where)
    ax.set_xlabel("picks (budget)")
    ax.set_title(f"Coverage against budget ({n_examples:,} examples)")
    ax.grid(alpha=0.3)
    save(fig, "coverage.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    gains = per_pick if facility else radius_reductions(per_pick)
    if len(gains):
        ax.plot(k, gains, color="#2ca02c", lw=1.4, label="marginal gain" if facility else "radius reduction")
        ax.axvline(knee, color="#d62728", ls="--", lw=1.2,
                   label=f"knee: suggested budget {knee:,} ({knee / max(n_examples, 1):.1%})")
        if gains.max() > 0 and gains.min() > 0 and gains.max() / gains.min() > 100:
            ax.set_yscale("log")
        ax.legend(loc="upper right")
    ax.set_xlabel("pick")
    ax.set_ylabel("gain" if facility else "radius reduction")
    ax.set_title("Marginal gain per pick" if facility else "Radius reduction per pick")
    ax.grid(alpha=0.3)
    save(fig, "gains.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bins = np.linspace(-1, 1, 101)
    raw, solver = arrays.get("raw_sims", []), arrays.get("solver_sims", [])
    if len(raw):
        ax.hist(raw, bins=bins, alpha=0.6, color="#ff7f0e", label=f"raw activations (mean {np.mean(raw):.3f})")
    if len(solver):
        ax.hist(solver, bins=bins, alpha=0.6, color="#1f77b4",
                label=f"solver input: centred, scaled, normalised (mean {np.mean(solver):.3f})")
    ax.set_xlabel("cosine similarity of a random pair")
    ax.set_ylabel("pairs")
    ax.set_title("Pairwise similarity (sample)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    save(fig, "similarity.png")
