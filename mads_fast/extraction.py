"""Records -> activation features in a feature store: the "model-aware" half of MADS.

Per shard of the dataset (fixed record ranges, so a killed run resumes at a shard boundary and produces
the same bytes): render and tokenize the shard's records, plan length-sorted batches filled to a token
budget, run the early-exit forward pass, and let the hook of each chosen layer pool, project and quantise
its activations straight into a preallocated per-shard buffer on the device (rows in batch order, so every
batch writes one contiguous slice). Only that ``[rows, width]`` buffer leaves the device, once per shard.

int8 and 1-bit features are quantised around a per-dimension offset (the mean pooled feature of the first
records, measured once and stored): raw residual features of an LLM carry a few "massive" dimensions (on
SmolLM2 layer 20 one dimension averages ~400 while the median |x| is ~1.4), so per-row int8 of the raw vector
rounds everything else to zero (cosine to the exact centred feature down to 0.85); around the offset it
stays >= 0.997.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # for the hints only
    from .data import RecordSet
    from .model import LoadedModel

from .errors import InputError
from .options import FEATURES, POOLS, QUANTS, TEMPLATES, check_choice, check_positive_int
from .quant import STORE_DTYPES, out_width

log = logging.getLogger("mads_fast")

# What a request says before its model loads: a complete store that agrees on these is reused as it is.
PRELOAD_MATCH_KEYS = ("model.weights_sha256", "feature_spec", "dataset.fingerprint", "dataset.n_records")
CALIBRATION_RECORDS = 64  # an offset needs only a rough mean: 64 records cost ~6% of a 1k-record run


@dataclass(frozen=True)
class FeatureSpec:
    """What to extract. ``layers`` are resolved 0-based decoder layer indices."""
    layers: tuple
    feature: str = "hidden"            # "hidden" (decoder layer output) | "mlp" (down_proj input)
    pool: str = "mean"
    project: Optional[int] = None      # random projection width per layer (None: keep the layer width)
    project_seed: int = 0
    quant: str = "fp16"
    max_length: int = 1024
    template: str = "chat"
    text_field: Optional[str] = None
    compute_dtype: str = "float32"     # the model's precision: features differ between fp32 and bf16 runs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


@dataclass
class ExtractStats:
    store: str
    n_records: int
    n_shards_written: int
    reused: bool
    tokens: int = 0                    # valid tokens run through the model
    padded_tokens: int = 0             # tokens including padding
    truncated: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0         # model load time
    calibration_seconds: float = 0.0
    detected: str = ""
    template_used: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.padded_tokens else 1.0 - self.tokens / self.padded_tokens

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(padding_fraction=self.padding_fraction, tokens_per_second=self.tokens_per_second)
        return d


def _check_options(pool, quant, template, feature, project, max_length, tokens_per_batch, shard_size):
    for param, value, choices in (("pool", pool, POOLS), ("quant", quant, QUANTS), ("template", template, TEMPLATES),
                                  ("feature", feature, FEATURES)):
        check_choice(param, value, choices)
    for param, value in (("max_length", max_length), ("tokens_per_batch", tokens_per_batch),
                         ("shard_size", shard_size)):
        check_positive_int(param, value)
    if project is not None:
        check_positive_int("project", project)


class _ShardWriter:
    """Device buffers for one shard and the hook callback that fills them batch by batch."""

    def __init__(self, n_rows, spec: FeatureSpec, layer_dim, projections, offset, device):
        import torch

        from .pooling import out_dtype

        self.spec = spec
        self.dim = layer_dim                                 # per layer, after projection
        self.width = out_width(layer_dim, spec.quant)        # per layer, stored columns
        n_slots = len(spec.layers)
        self.features = torch.empty(n_rows, self.width * n_slots, dtype=out_dtype(spec.quant), device=device)
        self.scales = torch.empty(n_rows, n_slots, dtype=torch.float32, device=device)  # [n, L]
        self.projections = projections                       # per slot [H, P] on device, or None
        self.offset = offset                                 # [L * dim] float32 on device, or None
        self.row = 0
        self.lengths = None                                  # [B] on device for the batch in flight

    def begin_batch(self, start, lengths):
        self.row = start
        self.lengths = lengths

    def __call__(self, slot, hidden):
        from .pooling import pool_quant

        rows = slice(self.row, self.row + hidden.shape[0])
        cols = slice(slot * self.width, (slot + 1) * self.width)
        offset = None if self.offset is None else self.offset[slot * self.dim:(slot + 1) * self.dim]
        pool_quant(hidden, self.lengths, self.spec.pool, self.spec.quant,
                   projection=self.projections[slot], offset=offset,
                   out=self.features[rows, cols], scale_out=self.scales[rows, slot],
                   backend="triton" if hidden.is_cuda else "torch")


def _render_all(rs, positions, tokenizer, template):
    from .tokens import render

    return [render(rs, int(i), tokenizer, template) for i in positions]


def _calibrate_offset(loaded, rs, spec, projections, tokens_per_batch, device):
    """Mean pooled (projected) feature of the first records in dataset order: the quantisation offset."""
    import torch

    from .model import ActivationCapture
    from .pooling import pool_quant
    from .tokens import collate, plan_batches, tokenize

    positions = np.arange(min(len(rs), CALIBRATION_RECORDS))
    ts = tokenize(_render_all(rs, positions, loaded.tokenizer, spec.template), loaded.tokenizer, spec.max_length)
    batches, _ = plan_batches(ts.lengths, tokens_per_batch)
    total = None
    state = {}

    def on_activation(slot, hidden):
        pooled, _ = pool_quant(hidden, state["lengths"], spec.pool, "fp32", projection=projections[slot],
                               backend="triton" if hidden.is_cuda else "torch")
        state.setdefault(slot, []).append(pooled.sum(0, dtype=torch.float64))

    with ActivationCapture(loaded, spec.layers, spec.feature, on_activation) as capture:
        for batch in batches:
            ids, _, lengths = collate(ts, batch, loaded.tokenizer.pad_token_id)
            state["lengths"] = lengths.to(device)
            capture.run(ids.to(device))
    total = torch.cat([torch.stack(state[s]).sum(0) for s in range(len(spec.layers))])
    return (total / len(positions)).to(torch.float32)


def _reusable_store(store, model, rs, spec_args: dict) -> bool:
    """True when ``store`` is complete and was made for exactly this request: then the model need not load.

    Before the model loads the request is known but for the layout (dims need the model's width), so the store
    is asked only about what is: the weights, the feature spec and the dataset. Anything short of a certain
    match returns False, and the full path (which loads the model and reports a mismatch precisely) decides.
    """
    from .model import default_model_path, resolve_device, resolve_dtype, resolve_layers, weights_sha256
    from .store import Manifest

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


def extract(data: Union[str, Path, "RecordSet"], store: Union[str, Path], *,
            model: Union[None, str, Path, "LoadedModel"] = None,
            layers: Union[None, int, float, str, Sequence[Union[int, float]]] = None, feature: str = "hidden",
            pool: str = "mean", project: Optional[int] = None, project_seed: int = 0, quant: str = "fp16",
            max_length: int = 1024, tokens_per_batch: int = 16384, shard_size: int = 4096,
            text_field: Optional[str] = None, template: str = "chat", lenient: bool = False,
            limit: Optional[int] = None, device: Optional[str] = None, dtype: str = "auto",
            trust_remote_code: bool = False,
            progress: bool = True) -> ExtractStats:
    """Extract one feature row per record of ``data`` into the feature store at ``store``.

    ``data`` is a path (JSONL, JSON array, Parquet, saved ``datasets`` directory) or a RecordSet from
    ``mads_fast.data.read_records``; ``model`` a model directory, a ``.gguf`` file, a loaded
    ``LoadedModel``, or None for the embedded default (SmolLM2-135M-Instruct). A matching complete store is
    reused; a matching incomplete one is resumed at its first unwritten shard; a store made for another
    request is an error. Returns statistics (tokens/s, padding, truncations, timings).
    """
    import torch

    from .data import RecordSet, read_records
    from .model import ActivationCapture, LoadedModel, load_model, resolve_layers
    from .pooling import make_projection
    from .store import FeatureStore, load_offset
    from .tokens import collate, plan_batches, tokenize

    _check_options(pool, quant, template, feature, project, max_length, tokens_per_batch, shard_size)
    t_start = time.perf_counter()
    rs = data if isinstance(data, RecordSet) else read_records(data, text_field=text_field, lenient=lenient,
                                                               limit=limit)
    log.info("records: %s", rs.describe())
    if _reusable_store(store, model, rs, dict(layers=layers, feature=feature, pool=pool, project=project,
                                              project_seed=project_seed, quant=quant, max_length=max_length,
                                              template=template, dtype=dtype, device=device)):
        log.info("store %s already holds these features; reusing it (model not loaded)", store)
        return ExtractStats(store=str(store), n_records=len(rs), n_shards_written=0, reused=True,
                            detected=rs.describe(), seconds=time.perf_counter() - t_start)
    t0 = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, dtype=dtype,
                                                                     trust_remote_code=trust_remote_code)
    model_seconds = time.perf_counter() - t0
    device = loaded.device
    spec = FeatureSpec(layers=tuple(resolve_layers(layers, loaded.num_layers)), feature=feature, pool=pool,
                       project=project, project_seed=project_seed, quant=quant, max_length=max_length,
                       template=template, text_field=rs.text_field,
                       compute_dtype=str(loaded.model.dtype).replace("torch.", ""))
    source_dim = loaded.feature_width(feature)
    layer_dim = project or source_dim
    if quant == "bit" and layer_dim % 8:
        raise InputError(f"bit needs a per-layer width that is a multiple of 8, got {layer_dim}", param="quant")
    n_slots = len(spec.layers)
    store_obj = FeatureStore.open_for_write(
        store, model={"id": loaded.model_id, "weights_sha256": loaded.weights_sha256,
                      "num_layers": loaded.num_layers},
        feature_spec=spec.to_dict(),
        dataset={"fingerprint": rs.fingerprint, "n_records": len(rs), "path": str(rs.path)},
        dim=layer_dim * n_slots, width=out_width(layer_dim, quant) * n_slots, dtype=STORE_DTYPES[quant],
        n_scales=n_slots if quant in ("int8", "bit") else 0, shard_size=shard_size)
    stats = ExtractStats(store=str(store), n_records=len(rs), n_shards_written=0, reused=store_obj.complete,
                         detected=rs.describe(), model_seconds=model_seconds)
    if store_obj.complete:
        log.info("store %s already holds these features; reusing it", store)
        stats.seconds = time.perf_counter() - t_start
        return stats

    projections = [None] * n_slots
    if project:
        projections = [make_projection(source_dim, project, project_seed + slot).to(device)
                       for slot in range(n_slots)]
    offset = None
    if quant in ("int8", "bit"):
        offset = load_offset(store)
        if offset is None:
            log.info("calibrating the %s quantisation offset on the first %d records", quant,
                     min(len(rs), CALIBRATION_RECORDS))
            t0 = time.perf_counter()
            offset = _calibrate_offset(loaded, rs, spec, projections, tokens_per_batch, device).cpu().numpy()
            store_obj.write_offset(offset)
            stats.calibration_seconds = time.perf_counter() - t0
        offset = torch.as_tensor(np.asarray(offset, dtype=np.float32), device=device)

    todo = [s for s in range(store_obj.n_shards) if s not in store_obj.done_shards]
    if len(todo) < store_obj.n_shards:
        log.info("resuming %s: %d of %d shards already written", store, store_obj.n_shards - len(todo),
                 store_obj.n_shards)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        remaining = sum(len(store_obj.shard_range(s)) for s in todo)
        bar = tqdm(total=remaining, unit="rec", desc="extract", dynamic_ncols=True, leave=True)
    t_loop = time.perf_counter()
    pad_id = loaded.tokenizer.pad_token_id
    try:
        for shard in todo:
            positions = np.asarray(store_obj.shard_range(shard))
            ts = tokenize(_render_all(rs, positions, loaded.tokenizer, template), loaded.tokenizer, max_length)
            stats.truncated += int(ts.n_truncated)
            batches, _ = plan_batches(ts.lengths, tokens_per_batch)
            writer = _ShardWriter(len(positions), spec, layer_dim, projections, offset, device)
            order = np.concatenate([b.indices for b in batches])  # buffer row r holds shard record order[r]
            start = 0
            with ActivationCapture(loaded, spec.layers, feature, writer) as capture:
                for batch in batches:
                    ids, _, lengths = collate(ts, batch, pad_id)
                    writer.begin_batch(start, lengths.to(device, non_blocking=True))
                    capture.run(ids.to(device, non_blocking=True))
                    rows = len(batch.indices)
                    start += rows
                    n_tok = int(lengths.sum())
                    stats.tokens += n_tok
                    stats.padded_tokens += rows * int(batch.max_len)
                    if bar is not None:
                        bar.update(rows)
                        elapsed = time.perf_counter() - t_loop
                        bar.set_postfix_str(f"{stats.tokens / max(elapsed, 1e-9):,.0f} tok/s", refresh=False)
            features = np.empty((len(positions), writer.features.shape[1]), dtype=STORE_DTYPES[quant])
            features[order] = writer.features.cpu().numpy()
            scales = None
            if quant in ("int8", "bit"):
                scales = np.empty((len(positions), n_slots), dtype=np.float32)
                scales[order] = writer.scales.cpu().numpy()
            store_obj.write_shard(shard, features, scales, [rs.ids[i] for i in positions])
            stats.n_shards_written += 1
    finally:
        if bar is not None:
            bar.close()
    store_obj.finalize()
    stats.seconds = time.perf_counter() - t_start
    stats.extra["loop_seconds"] = time.perf_counter() - t_loop
    return stats
