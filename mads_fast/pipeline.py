"""The whole selection in one call: records -> features (extract or reuse a store) -> solve -> outputs.

>>> from mads_fast import select
>>> result = select("data.jsonl", budget=0.15, out="core.jsonl", report="report/")   # doctest: +SKIP
>>> result.indices[:5], result.gains[:5], len(result.records())                       # doctest: +SKIP

Outputs are written atomically: the core set (the input's own format, records untouched, in pick
order), optionally an indices file (ids, gains, weights) and a report directory.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .atomic import atomic_write
from .errors import InputError

log = logging.getLogger("mads_fast")

OBJECTIVES = ("facility", "kcenter")


@dataclass
class SelectionResult:
    """What a selection produced. Arrays are in pick order unless named per-example."""
    indices: np.ndarray            # int64 [k] positions in the input, pick order
    ids: list                      # stable record ids of the picks
    gains: np.ndarray              # float64 [k] marginal gain of each pick (k-center: radius after each pick)
    weights: np.ndarray            # int64 [k] examples whose nearest pick is this one (sums to N)
    curve: np.ndarray              # float64 [k] objective after each pick
    objective: float
    nearest: np.ndarray            # int64 [N] per example: position of its nearest pick
    nearest_similarity: np.ndarray # float32 [N]
    knee: int                      # suggested budget (picks) from the gain curve's knee
    record_set: object = field(repr=False, default=None)
    report: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def records(self) -> list:
        """The core set as a list of the original records, in pick order."""
        return [self.record_set.records[i] for i in self.indices]

    def dataset(self):
        """The core set as a ``datasets.Dataset`` (the input's own when it was a saved dataset)."""
        src = getattr(self.record_set, "_dataset", None)
        if src is not None:
            return src.select(self.indices.tolist())
        from datasets import Dataset

        return Dataset.from_list(self.records())


def parse_budget(value) -> Union[int, float]:
    """'0.15' -> 0.15 (a fraction of N), '7800' -> 7800 (a count); anything else is an InputError."""
    if isinstance(value, bool):
        raise InputError(f"--budget: expected a fraction in (0, 1] or a positive count, got {value!r}")
    if isinstance(value, (int, np.integer)):
        count = int(value)
        if count < 1:
            raise InputError(f"--budget: a count must be >= 1, got {count}")
        return count
    if isinstance(value, float):
        fraction = value
    else:
        text = str(value).strip()
        try:
            return parse_budget(int(text))
        except ValueError:
            pass
        try:
            fraction = float(text)
        except ValueError:
            raise InputError(f"--budget: {text!r} is not a number (use a fraction like 0.15 or a count "
                             "like 7800)") from None
    if not np.isfinite(fraction) or not 0.0 < fraction <= 1.0:
        raise InputError(f"--budget: a fraction must lie in (0, 1], got {value!r}")
    return float(fraction)


def resolve_budget(budget, n: int) -> int:
    b = parse_budget(budget)
    k = max(1, int(round(b * n))) if isinstance(b, float) else b
    if k > n:
        raise InputError(f"--budget: {k:,} picks asked for but the data has only {n:,} records")
    return k


def default_store(data_path, out) -> Path:
    """Where features go when no --store is given: beside the output, named after the data."""
    base = Path(out).parent if out else Path(".")
    return base / f"{Path(str(data_path)).name}.features"


def write_indices(path, result: SelectionResult) -> None:
    """JSONL, one line per pick: rank, position, id, gain, weight."""
    lines = [json.dumps({"rank": r, "index": int(i), "id": result.ids[r], "gain": float(result.gains[r]),
                         "weight": int(result.weights[r])})
             for r, i in enumerate(result.indices)]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))


def solve_store(store, budget, *, objective="facility", backend="auto", mode="dense", optimizer="lazy",
                n_neighbors=64, solver_dtype="int8", normalize="standardize", random_state=0, progress=False):
    """Solve over the centred, normalised features of a complete store.

    Returns (solver, ids, solver input, timings)."""
    from .solver import FacilityLocation, KCenter
    from .store import FeatureReader, load_solver_input

    if objective not in OBJECTIVES:
        raise InputError(f"--objective: unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")
    reader = FeatureReader(store)
    ids = reader.ids
    n = len(ids)
    k = resolve_budget(budget, n)
    t0 = time.perf_counter()
    x = load_solver_input(store, dtype=solver_dtype, normalize=normalize)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    if objective == "facility":
        solver = FacilityLocation(budget=k, backend=backend, mode=mode, optimizer=optimizer,
                                  n_neighbors=n_neighbors, random_state=random_state, verbose=progress).fit(x)
    else:
        solver = KCenter(budget=k, backend=backend).fit(x)
    return solver, ids, x, {"load_solver_input": t_load, "solve": time.perf_counter() - t0}


def result_from_solver(solver, ids, objective: str, record_set=None) -> SelectionResult:
    from .report import knee_index

    ranking = np.asarray(solver.ranking_, dtype=np.int64)
    if objective == "facility":
        gains = np.asarray(solver.gains_, dtype=np.float64)
        curve = np.asarray(solver.curve_, dtype=np.float64)
        value = float(solver.objective_)
    else:
        gains = np.asarray(solver.radii_, dtype=np.float64)
        curve = gains
        value = float(gains[-1])
    return SelectionResult(indices=ranking, ids=[str(ids[i]) for i in ranking], gains=gains,
                           weights=np.asarray(solver.weights_, dtype=np.int64), curve=curve, objective=value,
                           nearest=np.asarray(solver.nearest_, dtype=np.int64),
                           nearest_similarity=np.asarray(solver.nearest_similarity_, dtype=np.float32),
                           knee=knee_index(gains) + 1 if objective == "facility" else len(ranking),
                           record_set=record_set)


def build_report(report_dir, result: SelectionResult, store, solver_input, settings: dict) -> dict:
    from .report import sample_pair_similarities, write_report
    from .store import FeatureReader

    reader = FeatureReader(store)
    n = len(result.nearest)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(n, size=min(n, 4096), replace=False))
    raw = np.concatenate([block for _, block in reader.iter_blocks(raw=True)])[rows] if n <= 200_000 else None
    raw_sims = sample_pair_similarities(raw) if raw is not None else None
    solver_sims = sample_pair_similarities(np.asarray(solver_input[rows], dtype=np.float32))
    summary = dict(settings)
    summary.update(n_examples=n, budget=len(result.indices), objective_value=result.objective,
                   mean_coverage=result.objective / n if n else 0.0, timings=result.timings,
                   store=str(store), model=reader.manifest.get("model"),
                   feature_spec=reader.manifest.get("feature_spec"))
    return write_report(report_dir, summary, gains=result.gains, nearest_similarity=result.nearest_similarity,
                        raw_sims=raw_sims, solver_sims=solver_sims, budget=len(result.indices))


def select(data, budget=0.15, *, out=None, store=None, report=None, indices_out=None, model=None,
           objective: str = "facility", backend: str = "auto", mode: str = "dense", optimizer: str = "lazy",
           n_neighbors: int = 64, solver_dtype: str = "int8", normalize: str = "standardize",
           text_field=None, lenient: bool = False,
           limit=None, progress: bool = True, **extract_options) -> SelectionResult:
    """Run the whole MADS selection on ``data`` and return a :class:`SelectionResult`.

    ``budget``: a fraction of N (0.15) or a count (7800). ``store``: the feature store directory (default:
    ``<data name>.features`` beside ``out``); a matching store is reused, so trying several budgets costs
    one extraction. ``extract_options`` go to :func:`mads_fast.extract.extract` (layers, feature, pool,
    project, quant, max_length, tokens_per_batch, shard_size, template, device).
    """
    from .data import RecordSet, read_records, write_records
    from .extract import extract

    parse_budget(budget)  # fail on a bad budget before any expensive work
    timings = {}
    t0 = time.perf_counter()
    rs = data if isinstance(data, RecordSet) else read_records(data, text_field=text_field, lenient=lenient,
                                                               limit=limit)
    timings["read"] = time.perf_counter() - t0
    resolve_budget(budget, len(rs))
    store = Path(store) if store is not None else default_store(rs.path, out)
    stats = extract(rs, store, model=model, progress=progress, **extract_options)
    timings["extract"] = stats.seconds
    solver, ids, x, solve_times = solve_store(store, budget, objective=objective, backend=backend, mode=mode,
                                              optimizer=optimizer, n_neighbors=n_neighbors,
                                              solver_dtype=solver_dtype, normalize=normalize,
                                              progress=progress)
    timings.update(solve_times)
    if list(map(str, ids)) != list(rs.ids):
        raise InputError("the store's record ids do not match the data (was the file changed?); "
                         "delete the store or pass another --store", path=store)
    result = result_from_solver(solver, ids, objective, record_set=rs)
    result.timings = timings
    if out is not None:
        t0 = time.perf_counter()
        write_records(rs, result.indices, out)
        timings["write"] = time.perf_counter() - t0
    if indices_out is not None:
        write_indices(indices_out, result)
    if report is not None:
        t0 = time.perf_counter()
        settings = {"data": str(rs.path), "detected": rs.describe(), "objective": objective,
                    "backend": getattr(solver, "backend_", backend), "mode": mode, "optimizer": optimizer,
                    "solver_dtype": solver_dtype, "normalize": normalize, "extraction": stats.to_dict(),
                    "suggested_budget": result.knee}
        result.report = build_report(report, result, store, x, settings)
        timings["report"] = time.perf_counter() - t0
    return result
