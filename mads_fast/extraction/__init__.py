"""Records -> activation features in a feature store: the "model-aware" half of MADS.

``extract`` is the entry point. It reuses a complete store made for the same request without loading the
model, resumes an incomplete one at its first unwritten shard, and otherwise runs every shard through
``shard.ShardExtractor``: in this process, or on Ray actors (``on_ray``) when ``ray=`` is given; both write
the same bytes.

- ``shard``: the request, the model's facts, the shard extractor, the stats, offset calibration;
- ``on_ray``: the Ray driver and its worker actor.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

from mads_fast.errors import InputError

from .shard import (CALIBRATION_RECORDS, ExtractRequest, ExtractStats, FeatureSpec, ModelFacts, ShardExtractor,
                    ShardStats, _check_options, ensure_offset, pending_shards, progress_bar)

if TYPE_CHECKING:  # for the hints only
    from mads_fast.data import RecordSet
    from mads_fast.model import LoadedModel

log = logging.getLogger("mads_fast")

# What a request says before its model loads: a complete store that agrees on these is reused as it is.
PRELOAD_MATCH_KEYS = ("model.weights_sha256", "feature_spec", "dataset.fingerprint", "dataset.n_records")

__all__ = ["CALIBRATION_RECORDS", "ExtractRequest", "ExtractStats", "FeatureSpec", "ModelFacts", "ShardExtractor",
           "ShardStats", "extract"]


def _reusable_store(store, model, rs, spec_args: dict) -> bool:
    """True when ``store`` is complete and was made for exactly this request: then the model need not load.

    Before the model loads the request is known but for the layout (dims need the model's width), so the store
    is asked only about what is: the weights, the feature spec and the dataset. Anything short of a certain
    match returns False, and the full path (which loads the model and reports a mismatch precisely) decides.
    """
    from mads_fast.model import default_model_path, resolve_device, resolve_dtype, resolve_layers, weights_sha256
    from mads_fast.store import Manifest

    if model is not None and not isinstance(model, (str, Path)):
        return False
    try:
        manifest = Manifest.read_if_any(store)
        if manifest is None or not manifest.complete or not isinstance(manifest.model.get("num_layers"), int):
            return False
        path = default_model_path() if model is None else Path(model)
        if not path.exists():
            return False
        compute = resolve_dtype(spec_args.pop("dtype"), resolve_device(spec_args.pop("device")))
        spec = FeatureSpec(layers=tuple(resolve_layers(spec_args.pop("layers"), manifest.model["num_layers"])),
                           text_field=rs.text_field, compute_dtype=str(compute).replace("torch.", ""),
                           **spec_args)
        request = {"model": {"weights_sha256": weights_sha256(path)}, "feature_spec": spec.to_dict(),
                   "dataset": {"fingerprint": rs.fingerprint, "n_records": len(rs)}}
        return manifest.first_difference(request, keys=PRELOAD_MATCH_KEYS) is None
    except (OSError, ValueError):  # InputError included: a store that cannot be read is not reused
        return False


STORE_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def store_compute_dtype(store, dtype: Optional[str]) -> Optional[str]:
    """``dtype`` as extraction should run it on ``store``: for "auto" (or None), the precision an existing store
    (complete or not) was made with, so that a store made under another machine's "auto" is reused or resumed,
    never refused; otherwise ``dtype`` itself."""
    from mads_fast.store import Manifest

    if dtype not in (None, "auto"):
        return dtype
    try:
        manifest = Manifest.read_if_any(store)
    except (OSError, ValueError):  # an unreadable store is reported by the full path, precisely
        return dtype
    spec = {} if manifest is None else manifest.data.get("feature_spec") or {}
    made = STORE_DTYPE_NAMES.get(str(spec.get("compute_dtype")))
    if made is None:
        return dtype
    log.info("model precision: %s, the precision store %s was made with (--dtype auto keeps it)", made, store)
    return made


def run_prefetched(extractor: ShardExtractor, rs, store, shards, on_shard, on_batch=None) -> None:
    """Run ``shards`` in order, each shard's records parsed, rendered and tokenised on a thread while the model
    runs the one before (the tokenizer releases the GIL; torch's matmuls do too), so the model does not wait
    for its input. The bytes are those of running them one by one: preparation is deterministic and separate.
    ``on_shard(ShardStats)`` after each shard; an error while preparing surfaces when that shard is due."""
    from concurrent.futures import ThreadPoolExecutor

    shards = list(shards)
    if not shards:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mads-prepare") as pool:
        ahead = pool.submit(extractor.prepare, rs, store, shards[0])
        for i, shard in enumerate(shards):
            prepared = ahead.result()
            if i + 1 < len(shards):
                ahead = pool.submit(extractor.prepare, rs, store, shards[i + 1])
            try:
                on_shard(extractor.run(rs, store, shard, on_batch=on_batch, prepared=prepared))
            except BaseException:
                ahead.cancel()
                raise


def extract(data: Union[str, Path, "RecordSet"], store: Union[str, Path], *,
            model: Union[None, str, Path, "LoadedModel"] = None,
            layers: Union[None, int, float, str, Sequence[Union[int, float]]] = None, feature: str = "hidden",
            pool: str = "mean", project: Optional[int] = None, project_seed: int = 0, quant: str = "fp16",
            max_length: int = 1024, tokens_per_batch: Optional[int] = None, shard_size: int = 4096,
            text_field: Optional[str] = None, template: str = "chat", lenient: bool = False,
            limit: Optional[int] = None, device: Optional[str] = None, dtype: str = "auto",
            trust_remote_code: bool = False, ray: Optional[str] = None, workers: Optional[int] = None,
            gpus_per_worker: Optional[float] = None, progress: bool = True) -> ExtractStats:
    """Extract one feature row per record of ``data`` into the feature store at ``store``.

    ``data`` is a path (JSONL, JSON array, Parquet, saved ``datasets`` directory) or a RecordSet from
    ``mads_fast.data.read_records``; ``model`` a model directory, a ``.gguf`` file, a loaded
    ``LoadedModel``, or None for the embedded default (SmolLM2-135M-Instruct). A matching complete store is
    reused; a matching incomplete one is resumed at its first unwritten shard; a store made for another
    request is an error. Returns statistics (tokens/s, padding, truncations, timings). ``tokens_per_batch``
    (padding included) defaults by device: 4096 on CPU, 16384 on CUDA (``TOKENS_PER_BATCH``).

    ``ray``: run the shards on Ray actors ("local": a local instance; "auto": the cluster named by
    ``RAY_ADDRESS``, else a local one; or a cluster address) with ``workers`` actors of
    ``gpus_per_worker`` GPUs each (see ``mads_fast.extraction.on_ray``); the store's bytes are the same.
    """
    from mads_fast.data import RecordSet, read_records
    from mads_fast.model import LoadedModel

    _check_options(pool, quant, template, feature, project, max_length, tokens_per_batch, shard_size)
    if ray is not None or workers is not None or gpus_per_worker is not None:
        from .on_ray import check_ray_options

        check_ray_options(ray, workers, gpus_per_worker)
    t_start = time.perf_counter()
    rs = data if isinstance(data, RecordSet) else read_records(data, text_field=text_field, lenient=lenient,
                                                               limit=limit)
    log.info("records: %s", rs.describe())
    dtype = store_compute_dtype(store, dtype)
    if _reusable_store(store, model, rs, dict(layers=layers, feature=feature, pool=pool, project=project,
                                              project_seed=project_seed, quant=quant, max_length=max_length,
                                              template=template, dtype=dtype, device=device)):
        log.info("store %s already holds these features; reusing it (model not loaded)", store)
        return ExtractStats(store=str(store), n_records=len(rs), n_shards_written=0, reused=True,
                            detected=rs.describe(), seconds=time.perf_counter() - t_start)
    request = ExtractRequest(model=None if model is None or isinstance(model, LoadedModel) else str(model),
                             layers=tuple(layers) if isinstance(layers, (list, tuple)) else layers, feature=feature,
                             pool=pool, project=project, project_seed=project_seed, quant=quant,
                             max_length=max_length, tokens_per_batch=tokens_per_batch, shard_size=shard_size,
                             template=template, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if ray is not None:
        if isinstance(model, LoadedModel):
            raise InputError("a loaded model cannot be sent to Ray workers; pass its path", param="model")
        from .on_ray import extract_on_ray

        return extract_on_ray(rs, store, request, address=ray, workers=workers, gpus_per_worker=gpus_per_worker,
                              progress=progress, t_start=t_start)
    t0 = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else request.load_model()
    stats = ExtractStats(store=str(store), n_records=len(rs), n_shards_written=0, reused=False,
                         detected=rs.describe(), model_seconds=time.perf_counter() - t0)
    store_obj = request.open_store(store, ModelFacts.of(loaded), rs)
    if store_obj.complete:
        log.info("store %s already holds these features; reusing it", store)
        stats.reused = True
        stats.seconds = time.perf_counter() - t_start
        return stats
    extractor = request.extractor(loaded, rs)
    t0 = time.perf_counter()
    extractor.use_offset(ensure_offset(store_obj, quant, len(rs), lambda: extractor.calibrate(rs)))
    stats.calibration_seconds = time.perf_counter() - t0
    todo = pending_shards(store_obj)
    update, close = progress_bar(sum(len(store_obj.shard_range(s)) for s in todo), progress)
    t_loop = time.perf_counter()
    try:
        run_prefetched(extractor, rs, store_obj, todo, lambda shard_stats: stats.add(shard_stats), update)
    finally:
        close()
    store_obj.finalize()
    stats.seconds = time.perf_counter() - t_start
    stats.extra["loop_seconds"] = time.perf_counter() - t_loop
    return stats
