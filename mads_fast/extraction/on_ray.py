"""Extraction on a Ray cluster: store shards are the unit of work, each worker an actor that loads the model once.

The driver reads the corpus index (never the records), starts the actors, checks that every one of them sees
the store's folder (a probe file), asks one actor for the model's facts to create or resume the store, has
one actor calibrate the int8/bit offset before any shard is handed out, then hands out shard numbers. A
worker reads its shard's records from the corpus itself (``RecordSet.load``), runs the same
``ShardExtractor`` as the single-process path and writes the shard with the store's own atomic writer, so
the store's bytes do not depend on how many workers made it. The driver aggregates one progress bar,
forwards the workers' log lines to its own log, and finalises the manifest after the last shard.

Faults: a worker that dies (killed, out of memory, its node lost) costs its shard only: the shard is handed
to a fresh worker and rewritten whole (a shard without its done marker is never trusted). A worker that
raises an ``InputError`` (a record its template cannot render, ...) stops the run with that same one-line
error. A killed driver leaves a store that the next run, with or without Ray, resumes.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from mads_fast.cluster import check_shared, connect, import_ray, write_probe
from mads_fast.errors import InputError

from .shard import (ExtractRequest, ExtractStats, ModelFacts, ShardStats, ensure_offset, pending_shards,
                         progress_bar)

if TYPE_CHECKING:
    from mads_fast.data import RecordSet

log = logging.getLogger("mads_fast")

MAX_WORKER_DEATHS = 8  # worker deaths one run survives (each costs one shard) before it gives up


class _Collect(logging.Handler):
    """Keeps the worker's log records of one call, to send back to the driver with its result."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append((record.levelno, record.getMessage()))


class ExtractWorker:
    """One model on one device (or ``threads`` CPU threads); runs shards. Used as a Ray actor."""

    def __init__(self, request: ExtractRequest, store: str, threads: Optional[int] = None,
                 cwd: Optional[str] = None, fault: Optional[str] = None):
        import torch

        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # the driver's folder: a relative model path means the same files, and names the model alike
        if threads:
            torch.set_num_threads(int(threads))
        logging.getLogger("mads_fast").setLevel(logging.INFO)
        self.request = request
        self.fault = fault
        self.threads = torch.get_num_threads()
        self.store_path = Path(store)
        self.loaded = None
        self.extractor = None
        self.store = None

    def _call(self, fn, *args):
        """Run ``fn`` with the ``mads_fast`` log captured: (result, [(level, message)])."""
        handler = _Collect()
        logger = logging.getLogger("mads_fast")
        logger.addHandler(handler)
        try:
            return fn(*args), handler.lines
        finally:
            logger.removeHandler(handler)

    def sees(self, probe: str):
        """(this node's address, whether the driver's probe file is visible here)."""
        import ray

        return ray.util.get_node_ip_address(), os.path.exists(probe)

    def pid(self) -> int:
        return os.getpid()

    def facts(self):
        return self._call(lambda: ModelFacts.of(self._ensure_model()))

    def _ensure_model(self):
        if self.loaded is None:
            import ray

            t0 = time.perf_counter()
            self.loaded = self.request.load_model()
            log.info("model loaded in %.1f s on %s (%s, %d torch threads, pid %d)", time.perf_counter() - t0,
                     ray.util.get_node_ip_address(), self.loaded.device, self.threads, os.getpid())
        return self.loaded

    def calibrate(self, rs: "RecordSet"):
        def run():
            self._ensure_model()
            return self.request.extractor(self.loaded, rs).calibrate(rs)

        return self._call(run)

    def start(self, rs: "RecordSet", offset: Optional[np.ndarray]):
        from mads_fast.store import FeatureStore, Manifest

        def run():
            self._ensure_model()
            self.extractor = self.request.extractor(self.loaded, rs)
            self.extractor.use_offset(offset)
            self.store = FeatureStore(self.store_path, Manifest.read(self.store_path))

        return self._call(run)

    def run(self, rs: "RecordSet", shard: int):
        _fault_hook(self.fault, self.store_path, shard)
        return self._call(self.extractor.run, rs, self.store, shard)


def _fault_hook(spec: Optional[str], store: Path, shard: int) -> None:
    """Test hook: with MADS_FAST_FAULT="kill@SHARD" in the driver's environment, the first worker to start SHARD
    dies at once (SIGKILL), with "raykill@SHARD" it has Ray kill it; a marker in the store makes it happen once."""
    if not spec:
        return
    how, _, at = spec.partition("@")
    marker = store / f".fault-{how}-{at}"
    if int(at) != shard or marker.exists():
        return
    marker.write_bytes(b"")
    if how == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if how == "raykill":
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def check_ray_options(ray: Optional[str], workers, gpus_per_worker) -> None:
    """Fail before any work: Ray missing, a bad address type, bad worker or GPU counts (one-line InputErrors)."""
    if ray is None:
        if workers is not None or gpus_per_worker is not None:
            raise InputError("workers and gpus_per_worker need ray= (a Ray cluster to run them on)", param="ray")
        return
    import_ray()
    if not isinstance(ray, str) or not ray:
        raise InputError(f"must be 'local', 'auto' or a cluster address, got {ray!r}", param="ray")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"must be a positive integer, got {workers!r}", param="workers")
    if gpus_per_worker is not None and (isinstance(gpus_per_worker, bool) or
                                        not isinstance(gpus_per_worker, (int, float)) or gpus_per_worker < 0):
        raise InputError(f"must be a number >= 0, got {gpus_per_worker!r}", param="gpus_per_worker")


def plan_workers(resources: dict, workers: Optional[int], gpus_per_worker: Optional[float]):
    """(workers, GPUs each, CPU threads each): one worker per GPU by default; on CPUs one worker using every
    core unless ``workers`` says otherwise, each with its share of the cores as torch threads."""
    gpus = float(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus >= 1 else 0.0
    if gpus_per_worker > 0 and gpus < gpus_per_worker:
        raise InputError(f"asks {gpus_per_worker:g} GPUs per worker but the Ray cluster has {gpus:g}",
                         param="gpus_per_worker")
    if workers is None:
        workers = int(gpus // gpus_per_worker) if gpus_per_worker > 0 else 1
    threads = None if gpus_per_worker > 0 else max(1, cpus // workers)
    return workers, float(gpus_per_worker), threads


def extract_on_ray(rs: "RecordSet", store, request: ExtractRequest, *, address: str, workers: Optional[int],
                   gpus_per_worker: Optional[float], progress: bool, t_start: float) -> ExtractStats:
    """``extract`` with its shards on Ray actors (see the module doc)."""
    check_ray_options(address, workers, gpus_per_worker)
    ray = connect(address)
    store = Path(store).resolve()
    n_workers, gpus_each, threads = plan_workers(ray.cluster_resources(), workers, gpus_per_worker)
    actor_class = ray.remote(ExtractWorker).options(num_cpus=threads or 1, num_gpus=gpus_each, max_restarts=0)
    rs_ref = ray.put(rs)
    log.info("Ray: %d worker(s), %s each", n_workers,
             f"{gpus_each:g} GPU" if gpus_each else f"{threads} CPU thread(s)")
    probe = write_probe(store.parent)
    pool = []
    stats = ExtractStats(store=str(store), n_records=len(rs), n_shards_written=0, reused=False,
                         detected=rs.describe())
    try:
        t0 = time.perf_counter()
        spawn = _Spawner(actor_class, request, str(store), threads, os.getcwd())
        pool = [spawn() for _ in range(n_workers)]
        check_shared(probe, ray.get([a.sees.remote(str(probe)) for a in pool]), "the store's folder")
        facts = _forward(*_get(ray, pool[0].facts.remote()), 0)
        stats.model_seconds = time.perf_counter() - t0
        store_obj = request.open_store(store, facts, rs)
        if store_obj.complete:
            log.info("store %s already holds these features; reusing it", store)
            stats.reused = True
            stats.seconds = time.perf_counter() - t_start
            return stats
        t0 = time.perf_counter()
        offset = ensure_offset(store_obj, request.quant, len(rs),
                               lambda: _forward(*_get(ray, pool[0].calibrate.remote(rs_ref)), 0))
        stats.calibration_seconds = time.perf_counter() - t0
        for i, lines in enumerate(_get(ray, [a.start.remote(rs_ref, offset) for a in pool])):
            _forward(*lines, i)
        todo = pending_shards(store_obj)
        update, close = progress_bar(sum(len(store_obj.shard_range(s)) for s in todo), progress)
        t_loop = time.perf_counter()
        try:
            _run_shards(ray, pool, spawn, rs_ref, offset, todo, stats, update)
        finally:
            close()
        stats.extra["loop_seconds"] = time.perf_counter() - t_loop
        store_obj.finalize()
    finally:
        for actor in pool:
            ray.kill(actor)
        probe.unlink(missing_ok=True)
    stats.extra["workers"] = n_workers
    stats.seconds = time.perf_counter() - t_start
    return stats


class _Spawner:
    """Starts one more worker actor with the run's settings."""

    def __init__(self, actor_class, request, store, threads, cwd):
        self.args = (actor_class, request, store, threads, cwd, os.environ.get("MADS_FAST_FAULT"))

    def __call__(self):
        actor_class, *args = self.args
        return actor_class.remote(*args)


def _run_shards(ray, pool, spawn, rs_ref, offset, todo, stats, update):
    """Hand shards to idle workers until all are written; replace a worker that dies and redo its shard."""
    from ray.exceptions import RayActorError

    queue = list(reversed(todo))  # pop() takes the lowest shard first
    idle = list(range(len(pool)))
    running = {}  # ObjectRef -> (worker slot, shard)
    deaths = 0
    while queue or running:
        while queue and idle:
            slot = idle.pop()
            shard = queue.pop()
            running[pool[slot].run.remote(rs_ref, shard)] = (slot, shard)
        done, _ = ray.wait(list(running), num_returns=1)
        slot, shard = running.pop(done[0])
        try:
            result, lines = _get(ray, done[0])
        except RayActorError as exc:
            deaths += 1
            if deaths > MAX_WORKER_DEATHS:
                raise RuntimeError(f"{deaths} Ray workers died; the last: {exc}") from None
            log.warning("worker %d died while writing shard %d; a new worker redoes it", slot, shard)
            pool[slot] = spawn()
            _get(ray, pool[slot].start.remote(rs_ref, offset))
            queue.append(shard)
            idle.append(slot)
            continue
        _forward(None, lines, slot)
        stats.add(result)
        update(result.records, result.tokens)
        idle.append(slot)


def _get(ray, refs):
    """ray.get that re-raises a worker's InputError as itself (one line), not wrapped in a traceback."""
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, InputError):
            raise cause from None
        raise


def _forward(result, lines, slot):
    """Log a worker's captured lines on the driver (so they reach its log file) and return its result."""
    for level, message in lines:
        log.log(level, "[worker %d] %s", slot, message)
    return result


__all__ = ["ExtractWorker", "ShardStats", "check_ray_options", "extract_on_ray", "plan_workers"]
