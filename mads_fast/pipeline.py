"""The whole selection in one call: records -> features (extract or reuse a store) -> solve -> outputs.

>>> from mads_fast import select
>>> result = select("data.jsonl", budget=0.15, out="core.jsonl", report="report/")   # doctest: +SKIP
>>> result.indices[:5], result.gains[:5], len(result.records())                       # doctest: +SKIP

``solve`` is the same from an existing feature store (``mads-fast solve``).

Outputs are written atomically: the core set (the input's own format, records untouched, in pick
order), optionally an indices file (ids, gains, weights) and a report directory.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
import os
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from .atomic import atomic_write
from .errors import InputError
from .options import (BACKENDS, KNN_INDEXES, MODES, NORMALIZE, OBJECTIVES, OPTIMIZERS, SOLVER_DTYPES, check_choice,
                      check_knn_recall, check_positive_int, parse_budget, parse_memory_budget, resolve_budget)

if TYPE_CHECKING:  # names for the hints only: importing them here would load torch
    from .data import RecordSet
    from .model import LoadedModel

log = logging.getLogger("mads_fast")
PathLike = Union[str, "os.PathLike[str]"]
Budget = Union[int, float, str]   # a count (7800), a fraction of N (0.15), or either as text


@dataclass
class SelectionResult:
    """What a selection produced. Arrays are in pick order unless named per-example.

    ``objective_name`` says which per-pick array is set: facility location fills ``gains`` (the marginal
    gain of each pick), k-center fills ``radii`` (the coverage radius, max distance to the nearest pick,
    after each pick); the other is None. ``curve`` is the objective after each pick either way.
    """
    indices: np.ndarray            # int64 [k] positions in the input, pick order
    ids: list                      # stable record ids of the picks
    weights: np.ndarray            # int64 [k] examples whose nearest pick is this one (sums to N)
    curve: np.ndarray              # float64 [k] objective after each pick: f(S) (facility) or the radius (k-center)
    objective: float               # the final objective: f(S) (facility) or the radius (k-center)
    nearest: np.ndarray            # int64 [N] per example: position of its nearest pick
    nearest_similarity: np.ndarray # float32 [N]
    knee: int                      # suggested budget (picks): the knee of the gain or radius curve
    objective_name: str = "facility"
    gains: Optional[np.ndarray] = None  # float64 [k] facility: marginal gain of each pick
    radii: Optional[np.ndarray] = None  # float64 [k] k-center: coverage radius after each pick
    record_set: object = field(repr=False, default=None)
    report: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)  # the solver's ``profile_``: its timings, counters, recall, partitions

    @property
    def per_pick(self) -> np.ndarray:
        """The objective's own per-pick array: ``gains`` (facility) or ``radii`` (k-center)."""
        return self.gains if self.objective_name == "facility" else self.radii

    def records(self) -> list:
        """The core set as a list of the original records, in pick order (parsed in one pass over the input)."""
        view = self.record_set.load(self.indices)
        return [view.records[i] for i in self.indices]

    def dataset(self):
        """The core set as a ``datasets.Dataset`` (the input's own when it was a saved dataset)."""
        src = getattr(self.record_set, "_dataset", None)
        if src is not None:
            return src.select(self.indices.tolist())
        from datasets import Dataset

        return Dataset.from_list(self.records())


def default_store(data_path, out) -> Path:
    """Where features go when no store is given: beside the output, named after the data."""
    base = Path(out).parent if out else Path(".")
    return base / f"{Path(str(data_path)).name}.features"


def write_indices(path, result: SelectionResult) -> None:
    """JSONL, one line per pick: rank, position, id, gain (facility) or radius (k-center), weight."""
    name = "gain" if result.objective_name == "facility" else "radius"
    lines = [json.dumps({"rank": r, "index": int(i), "id": result.ids[r], name: float(result.per_pick[r]),
                         "weight": int(result.weights[r])})
             for r, i in enumerate(result.indices)]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))


def _check_solve_options(objective, backend, mode, optimizer, n_neighbors, solver_dtype, normalize) -> None:
    for param, value, choices in (("objective", objective, OBJECTIVES), ("backend", backend, BACKENDS),
                                  ("mode", mode, MODES), ("optimizer", optimizer, OPTIMIZERS),
                                  ("solver_dtype", solver_dtype, SOLVER_DTYPES), ("normalize", normalize, NORMALIZE)):
        check_choice(param, value, choices)
    check_positive_int("n_neighbors", n_neighbors)


def _result(solver, ids, objective: str, record_set) -> SelectionResult:
    """The solver's attributes as a SelectionResult, the knee computed here and only here."""
    from .report import knee_of

    ranking = np.asarray(solver.ranking_, dtype=np.int64)
    common = dict(indices=ranking, ids=[str(ids[i]) for i in ranking],
                  weights=np.asarray(solver.weights_, dtype=np.int64),
                  nearest=np.asarray(solver.nearest_, dtype=np.int64),
                  nearest_similarity=np.asarray(solver.nearest_similarity_, dtype=np.float32),
                  objective_name=objective, record_set=record_set)
    if objective == "facility":
        gains = np.asarray(solver.gains_, dtype=np.float64)
        return SelectionResult(gains=gains, curve=np.asarray(solver.curve_, dtype=np.float64),
                               objective=float(solver.objective_), knee=knee_of(objective, gains), **common)
    radii = np.asarray(solver.radii_, dtype=np.float64)
    return SelectionResult(radii=radii, curve=radii, objective=float(radii[-1]), knee=knee_of(objective, radii),
                           **common)


def solve(store: PathLike, budget: Budget, *, objective: str = "facility", backend: str = "auto",
          mode: str = "auto", optimizer: str = "lazy", n_neighbors: int = 64, solver_dtype: str = "int8",
          normalize: str = "standardize", random_state: int = 0, record_set: Optional["RecordSet"] = None,
          out: Optional[PathLike] = None, indices_out: Optional[PathLike] = None,
          report: Optional[PathLike] = None, extraction: Optional[dict] = None, timings: Optional[dict] = None,
          progress: bool = False, partitions: Optional[int] = None, partition: str = "kmeans",
          merge: str = "refined", ray: Optional[str] = None, workers: Optional[int] = None,
          knn_index: str = "auto", knn_recall: float = 0.9,
          memory_budget: Union[None, int, str] = None) -> SelectionResult:
    """Select from a complete feature store and write the outputs: what ``select`` does once its features
    exist, and all that ``mads-fast solve`` does.

    ``record_set`` (the records the store was made from) is needed to write the core set (``out``) and is
    checked against the store's ids; ``extraction`` (an ``ExtractStats.to_dict()``) goes into the report;
    ``timings`` are carried into the result's (read, extract, ...).

    ``partitions`` (M): partitioned selection (``mads_fast.solver.PartitionedFacilityLocation``) with
    ``partition`` ("kmeans" | "random") and ``merge`` ("refined" | "separable"), on ``workers`` local
    processes or, with ``ray``, Ray actors; the workers memory-map the store's solver-input ``.npy``
    (written once, reused). ``knn_index``, ``knn_recall``: knn mode's graph (see ``FacilityLocation``);
    the report's settings then hold the solver's ``knn_`` profile. ``memory_budget`` (bytes or "2G"; None:
    the solver's default) is what the dense solver may spend on cached similarities (FacilityLocation's).
    """
    from .data import write_records
    from .solver import FacilityLocation, KCenter
    from .store import FeatureReader, build_solver_input

    _check_solve_options(objective, backend, mode, optimizer, n_neighbors, solver_dtype, normalize)
    check_choice("knn_index", knn_index, KNN_INDEXES)
    check_knn_recall(knn_recall)
    partitioned = _partitioned_solver(partitions, partition, merge, ray, workers, objective, optimizer, budget,
                                      backend, mode, n_neighbors, random_state)
    budget = parse_budget(budget)
    parse_memory_budget(memory_budget)
    if out is not None and record_set is None:
        raise InputError("writing the core set needs the records the store was made from (record_set)",
                         param="out")
    timings = dict(timings or {})
    reader = FeatureReader(store)
    ids = reader.ids
    k = resolve_budget(budget, len(ids))
    if record_set is not None and list(map(str, ids)) != list(record_set.ids):
        raise InputError("the store's record ids do not match the data (another file, or it changed since the "
                         "extraction); delete the store or pass another one", path=store, param="store")
    if partitioned is not None:
        partitioned.check_sizes(len(ids))
    t0 = time.perf_counter()
    if partitioned is not None:
        from .store.solver_file import solver_input_file

        path = solver_input_file(reader, dtype=solver_dtype, normalize=normalize)
        x = np.load(path, mmap_mode="r")  # the report's sample reads its rows only
    else:
        x = build_solver_input(reader, dtype=solver_dtype, normalize=normalize)
    timings["load_solver_input"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if partitioned is not None:
        solver = partitioned.fit(path)
    elif objective == "facility":
        solver = FacilityLocation(budget=k, backend=backend, mode=mode, optimizer=optimizer,
                                  n_neighbors=n_neighbors, random_state=random_state, verbose=progress,
                                  knn_index=knn_index, knn_recall=knn_recall,
                                  memory_budget=memory_budget).fit(x)
    else:
        solver = KCenter(budget=k, backend=backend).fit(x)
    timings["solve"] = time.perf_counter() - t0
    result = _result(solver, ids, objective, record_set)
    result.timings = timings
    result.profile = dict(getattr(solver, "profile_", {}))
    if out is not None:
        t0 = time.perf_counter()
        write_records(record_set, result.indices, out)
        timings["write"] = time.perf_counter() - t0
    if indices_out is not None:
        write_indices(indices_out, result)
    if report is not None:
        t0 = time.perf_counter()
        settings = {}
        if record_set is not None:
            settings.update(data=str(record_set.path), detected=record_set.describe())
        settings.update(objective=objective, backend=getattr(solver, "backend_", backend),
                        mode=getattr(solver, "mode_", mode),
                        optimizer=optimizer, solver_dtype=solver_dtype, normalize=normalize)
        if partitioned is not None:
            settings["partitioned"] = {key: solver.profile_[key] for key in (
                "partitions", "partition", "merge", "sizes", "workers", "placement", "seconds")}
        elif getattr(solver, "mode_", mode) == "knn" and objective == "facility":
            settings["knn"] = {key: value for key, value in solver.profile_.items() if key.startswith("knn_")}
        if extraction is not None:
            settings["extraction"] = extraction
        settings["suggested_budget"] = result.knee
        result.report = build_report(report, result, reader, x, settings)
        timings["report"] = time.perf_counter() - t0
    return result


def _partitioned_solver(partitions, partition, merge, ray, workers, objective, optimizer, budget, backend, mode,
                        n_neighbors, random_state):
    """The checked ``PartitionedFacilityLocation`` for ``solve``'s options, or None without ``partitions``."""
    if partitions is None:
        if ray is not None or workers is not None:
            raise InputError("ray and workers run partitioned selection: give partitions too", param="partitions")
        return None
    if objective != "facility" or optimizer != "lazy":
        raise InputError("partitioned selection runs facility location with the lazy optimizer "
                         f"(got objective={objective!r}, optimizer={optimizer!r})", param="partitions")
    from .solver import PartitionedFacilityLocation

    solver = PartitionedFacilityLocation(parse_budget(budget), partitions, partition=partition, merge=merge,
                                         backend=backend, mode=mode, n_neighbors=n_neighbors,
                                         random_state=random_state, workers=workers, ray=ray)
    solver.check()
    return solver


REPORT_SAMPLE = 4096  # rows whose pair similarities the report shows


def build_report(report_dir, result: SelectionResult, reader, solver_input, settings: dict) -> dict:
    """report.json and plots for ``result``; the similarity sample reads only its REPORT_SAMPLE rows of the
    store (``reader``: a FeatureReader or a store path)."""
    from .report import sample_pair_similarities, write_report
    from .store import FeatureReader

    if not isinstance(reader, FeatureReader):
        reader = FeatureReader(reader)
    n = len(result.nearest)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(n, size=min(n, REPORT_SAMPLE), replace=False))
    raw_sims = sample_pair_similarities(reader.rows(rows))
    solver_sims = sample_pair_similarities(np.asarray(solver_input[rows], dtype=np.float32))
    summary = dict(settings)
    summary.update(n_examples=n, budget=len(result.indices), objective_value=result.objective)
    if result.objective_name == "facility":
        summary["mean_coverage"] = result.objective / n if n else 0.0
    else:
        summary["radius"] = result.objective
    summary.update(timings=result.timings, store=str(reader.path), model=reader.manifest.get("model"),
                   feature_spec=reader.manifest.get("feature_spec"))
    return write_report(report_dir, summary, objective=result.objective_name, per_pick=result.per_pick,
                        knee=result.knee, nearest_similarity=result.nearest_similarity, raw_sims=raw_sims,
                        solver_sims=solver_sims, budget=len(result.indices))


def select(data: Union[PathLike, "RecordSet"], budget: Budget = 0.15, *, out: Optional[PathLike] = None,
           store: Optional[PathLike] = None, report: Optional[PathLike] = None,
           indices_out: Optional[PathLike] = None, model: Union[None, PathLike, "LoadedModel"] = None,
           objective: str = "facility", backend: str = "auto", mode: str = "auto", optimizer: str = "lazy",
           n_neighbors: int = 64, solver_dtype: str = "int8", normalize: str = "standardize",
           text_field: Optional[str] = None, lenient: bool = False,
           limit: Optional[int] = None, progress: bool = True, partitions: Optional[int] = None,
           partition: str = "kmeans", merge: str = "refined", knn_index: str = "auto", knn_recall: float = 0.9,
           memory_budget: Union[None, int, str] = None,
           **extract_options) -> SelectionResult:
    """Run the whole MADS selection on ``data`` and return a :class:`SelectionResult`.

    ``budget``: a fraction of N (0.15) or a count (7800). ``store``: the feature store directory (default:
    ``<data name>.features`` beside ``out``); a matching store is reused, so trying several budgets costs
    one extraction. ``extract_options`` go to :func:`mads_fast.extraction.extract` (layers, feature, pool,
    project, quant, max_length, tokens_per_batch, shard_size, template, device, dtype; ray, workers and
    gpus_per_worker run the extraction on a Ray cluster). The rest is :func:`solve`; with ``partitions``
    the partitioned solve runs on the extraction's ``ray`` cluster when one is given (else local processes).
    """
    from .data import RecordSet, read_records
    from .extraction import extract

    budget = parse_budget(budget)  # fail on a bad budget or option before any expensive work
    _check_solve_options(objective, backend, mode, optimizer, n_neighbors, solver_dtype, normalize)
    check_choice("knn_index", knn_index, KNN_INDEXES)
    check_knn_recall(knn_recall)
    solve_ray = extract_options.get("ray") if partitions is not None else None
    _partitioned_solver(partitions, partition, merge, solve_ray, None, objective, optimizer, budget, backend, mode,
                        n_neighbors, 0)
    parse_memory_budget(memory_budget)
    if any(extract_options.get(k) is not None for k in ("ray", "workers", "gpus_per_worker")):
        from .extraction.on_ray import check_ray_options

        check_ray_options(extract_options.get("ray"), extract_options.get("workers"),
                          extract_options.get("gpus_per_worker"))
    timings = {}
    t0 = time.perf_counter()
    rs = data if isinstance(data, RecordSet) else read_records(data, text_field=text_field, lenient=lenient,
                                                               limit=limit)
    timings["read"] = time.perf_counter() - t0
    resolve_budget(budget, len(rs))
    store = Path(store) if store is not None else default_store(rs.path, out)
    stats = extract(rs, store, model=model, progress=progress, **extract_options)
    timings["extract"] = stats.seconds
    return solve(store, budget, objective=objective, backend=backend, mode=mode, optimizer=optimizer,
                 n_neighbors=n_neighbors, solver_dtype=solver_dtype, normalize=normalize, record_set=rs, out=out,
                 indices_out=indices_out, report=report, extraction=stats.to_dict(), timings=timings,
                 progress=progress, partitions=partitions, partition=partition, merge=merge, ray=solve_ray,
                 knn_index=knn_index, knn_recall=knn_recall, memory_budget=memory_budget)
