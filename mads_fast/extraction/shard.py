"""One shard of records -> one store shard: the unit of work of every extraction path.

``ExtractRequest`` is what was asked for, ``ModelFacts`` what the manifest needs to know of the model,
``ShardExtractor`` runs shards with one loaded model (render and tokenize the shard's records, plan
length-sorted batches filled to a token budget, run the early-exit forward pass, and let the hook of each
chosen layer pool, project and quantise its activations straight into a preallocated per-shard buffer on
the device, rows in batch order, so every batch writes one contiguous slice; only that ``[rows, width]``
buffer leaves the device, once per shard). Fixed record ranges per shard, so a killed run resumes at a
shard boundary and produces the same bytes, whoever writes which shard.

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
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

if TYPE_CHECKING:  # for the hints only
    from mads_fast.data import RecordSet
    from mads_fast.model import LoadedModel
    from mads_fast.store import FeatureStore

from mads_fast.errors import InputError
from mads_fast.options import FEATURES, POOLS, QUANTS, TEMPLATES, check_choice, check_positive_int
from mads_fast.quant import STORE_DTYPES, out_width

log = logging.getLogger("mads_fast")

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

    def add(self, shard: "ShardStats") -> None:
        self.n_shards_written += 1
        self.tokens += shard.tokens
        self.padded_tokens += shard.padded_tokens
        self.truncated += shard.truncated


def _check_options(pool, quant, template, feature, project, max_length, tokens_per_batch, shard_size):
    for param, value, choices in (("pool", pool, POOLS), ("quant", quant, QUANTS), ("template", template, TEMPLATES),
                                  ("feature", feature, FEATURES)):
        check_choice(param, value, choices)
    for param, value in (("max_length", max_length), ("shard_size", shard_size)):
        check_positive_int(param, value)
    for param, value in (("tokens_per_batch", tokens_per_batch), ("project", project)):  # None: the default
        if value is not None:
            check_positive_int(param, value)


# Token budget per batch when none is given, by device. On CPU, batches of ~4k tokens run at the bare forward's
# best fixed shapes (16-32 rows of 128-256 tokens) and cut padding: 600 Alpaca records at max_length 256 took
# 1,002 tok/s (4.9% padding) against 708 tok/s (16.9%) at 16384 on a 2-core Xeon (bench/results/extract_ceiling.md).
# A GPU wants wide batches to fill its SMs.
TOKENS_PER_BATCH = {"cpu": 4096, "cuda": 16384}


def resolve_tokens_per_batch(tokens_per_batch: Optional[int], device) -> int:
    """``tokens_per_batch``, or the device's default (``TOKENS_PER_BATCH``) when None."""
    if tokens_per_batch is not None:
        return int(tokens_per_batch)
    return TOKENS_PER_BATCH["cuda" if str(device).startswith("cuda") else "cpu"]


class _ShardWriter:
    """Device buffers for one shard and the hook callback that fills them batch by batch."""

    def __init__(self, n_rows, spec: FeatureSpec, layer_dim, projections, offset, device):
        import torch

        from mads_fast.pooling import out_dtype

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
        from mads_fast.pooling import pool_quant

        rows = slice(self.row, self.row + hidden.shape[0])
        cols = slice(slot * self.width, (slot + 1) * self.width)
        offset = None if self.offset is None else self.offset[slot * self.dim:(slot + 1) * self.dim]
        pool_quant(hidden, self.lengths, self.spec.pool, self.spec.quant,
                   projection=self.projections[slot], offset=offset,
                   out=self.features[rows, cols], scale_out=self.scales[rows, slot],
                   backend="triton" if hidden.is_cuda else "torch")


def _render_all(rs, positions, tokenizer, template):
    from mads_fast.tokens import render

    return [render(rs, int(i), tokenizer, template) for i in positions]


@dataclass
class PreparedShard:
    """A shard ready for the model: its positions in the record set, their ids, tokens and batches."""
    shard: int
    positions: np.ndarray   # int64 [n] record positions, shard order
    ids: list               # the records' stable ids, shard order
    tokens: object          # mads_fast.tokens.TokenizedSet: the rendered records, tokenised
    batches: list           # mads_fast.tokens batches (row indices into the shard, padded length)


@dataclass
class ShardStats:
    """What one shard cost: records, valid and padded tokens, truncations."""
    shard: int
    records: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated: int = 0


class ShardExtractor:
    """Turns shards of a record set into store shards with one loaded model: the unit of work of every path.

    The single-process loop and each distributed worker run exactly this code on the same shard ranges, with
    the same batches inside a shard, so a store's bytes do not depend on who wrote which shard. ``offset`` is
    the int8/bit quantisation offset (``calibrate`` measures it once, before any shard runs).
    """

    def __init__(self, loaded: "LoadedModel", spec: FeatureSpec, tokens_per_batch: Optional[int] = None):
        from mads_fast.pooling import make_projection

        self.loaded = loaded
        self.spec = spec
        self.device = loaded.device
        self.tokens_per_batch = resolve_tokens_per_batch(tokens_per_batch, self.device)
        self.source_dim = loaded.feature_width(spec.feature)
        self.layer_dim = spec.project or self.source_dim
        self.projections = [None] * len(spec.layers)
        if spec.project:
            self.projections = [make_projection(self.source_dim, spec.project, spec.project_seed + slot)
                                .to(self.device) for slot in range(len(spec.layers))]
        self.offset = None  # [L * dim] float32 on the device, set by use_offset

    def calibrate(self, rs: "RecordSet") -> np.ndarray:
        """Mean pooled (projected) feature of the first records in dataset order: the quantisation offset."""
        import torch

        from mads_fast.model import ActivationCapture
        from mads_fast.pooling import pool_quant
        from mads_fast.tokens import collate, plan_batches, tokenize

        spec, loaded, device = self.spec, self.loaded, self.device
        positions = np.arange(min(len(rs), CALIBRATION_RECORDS))
        view = rs.load(positions)  # parses these records only
        ts = tokenize(_render_all(view, positions, loaded.tokenizer, spec.template), loaded.tokenizer,
                      spec.max_length)
        batches, _ = plan_batches(ts.lengths, self.tokens_per_batch)
        state = {}

        def on_activation(slot, hidden):
            pooled, _ = pool_quant(hidden, state["lengths"], spec.pool, "fp32", projection=self.projections[slot],
                                   backend="triton" if hidden.is_cuda else "torch")
            state.setdefault(slot, []).append(pooled.sum(0, dtype=torch.float64))

        with ActivationCapture(loaded, spec.layers, spec.feature, on_activation) as capture:
            for batch in batches:
                ids, _, lengths = collate(ts, batch, loaded.tokenizer.pad_token_id)
                state["lengths"] = lengths.to(device)
                capture.run(ids.to(device))
        total = torch.cat([torch.stack(state[s]).sum(0) for s in range(len(spec.layers))])
        return (total / len(positions)).to(torch.float32).cpu().numpy()

    def use_offset(self, offset: Optional[np.ndarray]) -> None:
        import torch

        self.offset = None if offset is None else torch.as_tensor(np.asarray(offset, dtype=np.float32),
                                                                  device=self.device)

    def prepare(self, rs: "RecordSet", store: "FeatureStore", shard: int) -> "PreparedShard":
        """Shard ``shard``'s records parsed, rendered, tokenised and batched: the CPU-side half of ``run``, which
        the single-process loop does for the next shard on a thread while the model runs the current one."""
        from mads_fast.tokens import plan_batches, tokenize

        positions = np.asarray(store.shard_range(shard))
        view = rs.load(positions)  # parses these records only
        ts = tokenize(_render_all(view, positions, self.loaded.tokenizer, self.spec.template), self.loaded.tokenizer,
                      self.spec.max_length)
        batches, _ = plan_batches(ts.lengths, self.tokens_per_batch)
        return PreparedShard(shard, positions, [view.ids[i] for i in positions], ts, batches)

    def run(self, rs: "RecordSet", store: "FeatureStore", shard: int, on_batch=None,
            prepared: Optional["PreparedShard"] = None) -> ShardStats:
        """Extract shard ``shard`` of ``rs`` and write it into ``store``; ``on_batch(rows, tokens)`` after each batch.
        ``prepared``: this shard's ``prepare`` output, when it was made ahead."""
        from mads_fast.model import ActivationCapture
        from mads_fast.tokens import collate

        spec, loaded, device = self.spec, self.loaded, self.device
        if prepared is None:
            prepared = self.prepare(rs, store, shard)
        if prepared.shard != shard:
            raise ValueError(f"prepared shard {prepared.shard} handed to run for shard {shard}")
        positions, ts, batches = prepared.positions, prepared.tokens, prepared.batches
        stats = ShardStats(shard=shard, records=len(positions), truncated=int(ts.n_truncated))
        writer = _ShardWriter(len(positions), spec, self.layer_dim, self.projections, self.offset, device)
        order = np.concatenate([b.indices for b in batches])  # buffer row r holds shard record order[r]
        start = 0
        pad_id = loaded.tokenizer.pad_token_id
        with ActivationCapture(loaded, spec.layers, spec.feature, writer) as capture:
            for batch in batches:
                ids, _, lengths = collate(ts, batch, pad_id)
                writer.begin_batch(start, lengths.to(device, non_blocking=True))
                capture.run(ids.to(device, non_blocking=True))
                rows = len(batch.indices)
                start += rows
                n_tok = int(lengths.sum())
                stats.tokens += n_tok
                stats.padded_tokens += rows * int(batch.max_len)
                if on_batch is not None:
                    on_batch(rows, n_tok)
        quant, n_slots = spec.quant, len(spec.layers)
        features = np.empty((len(positions), writer.features.shape[1]), dtype=STORE_DTYPES[quant])
        features[order] = writer.features.cpu().numpy()
        scales = None
        if quant in ("int8", "bit"):
            scales = np.empty((len(positions), n_slots), dtype=np.float32)
            scales[order] = writer.scales.cpu().numpy()
        store.write_shard(shard, features, scales, prepared.ids)
        return stats


@dataclass(frozen=True)
class ModelFacts:
    """What the store's manifest and the feature spec need to know of a model, without holding it (a Ray
    worker that loaded the model sends these to the driver)."""
    model_id: str
    weights_sha256: str
    num_layers: int
    widths: tuple  # ((feature, per-layer width), ...) for every feature source
    compute_dtype: str

    @classmethod
    def of(cls, loaded: "LoadedModel") -> "ModelFacts":
        return cls(loaded.model_id, loaded.weights_sha256, loaded.num_layers,
                   tuple((f, loaded.feature_width(f)) for f in FEATURES),
                   str(loaded.model.dtype).replace("torch.", ""))

    def feature_width(self, feature: str) -> int:
        return dict(self.widths)[feature]


@dataclass(frozen=True)
class ExtractRequest:
    """Everything ``extract`` was asked for except the records and the store: what a worker needs to rebuild
    the same ``ShardExtractor`` in another process (``model`` is a path or None there, never a loaded model)."""
    model: Union[None, str] = None
    layers: Union[None, int, float, str, tuple] = None
    feature: str = "hidden"
    pool: str = "mean"
    project: Optional[int] = None
    project_seed: int = 0
    quant: str = "fp16"
    max_length: int = 1024
    tokens_per_batch: Optional[int] = None  # None: the device's default (TOKENS_PER_BATCH)
    shard_size: int = 4096
    template: str = "chat"
    device: Optional[str] = None
    dtype: str = "auto"
    trust_remote_code: bool = False

    def load_model(self) -> "LoadedModel":
        from mads_fast.model import load_model

        return load_model(self.model, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code)

    def layer_dim(self, facts: ModelFacts) -> int:
        """Per-layer feature width: the projection's, else the model's width at ``feature``."""
        layer_dim = self.project or facts.feature_width(self.feature)
        if self.quant == "bit" and layer_dim % 8:
            raise InputError(f"bit needs a per-layer width that is a multiple of 8, got {layer_dim}", param="quant")
        return layer_dim

    def spec_for(self, facts: ModelFacts, rs: "RecordSet") -> FeatureSpec:
        from mads_fast.model import resolve_layers

        return FeatureSpec(layers=tuple(resolve_layers(self.layers, facts.num_layers)), feature=self.feature,
                           pool=self.pool, project=self.project, project_seed=self.project_seed, quant=self.quant,
                           max_length=self.max_length, template=self.template, text_field=rs.text_field,
                           compute_dtype=facts.compute_dtype)

    def open_store(self, store, facts: ModelFacts, rs: "RecordSet") -> "FeatureStore":
        """Create, resume or reuse the store for this request on ``rs`` (InputError if it was made for another)."""
        from mads_fast.store import FeatureStore

        spec = self.spec_for(facts, rs)
        layer_dim = self.layer_dim(facts)
        n_slots = len(spec.layers)
        return FeatureStore.open_for_write(
            store, model={"id": facts.model_id, "weights_sha256": facts.weights_sha256,
                          "num_layers": facts.num_layers},
            feature_spec=spec.to_dict(),
            dataset={"fingerprint": rs.fingerprint, "n_records": len(rs), "path": str(rs.path)},
            dim=layer_dim * n_slots, width=out_width(layer_dim, self.quant) * n_slots,
            dtype=STORE_DTYPES[self.quant], n_scales=n_slots if self.quant in ("int8", "bit") else 0,
            shard_size=self.shard_size)

    def extractor(self, loaded: "LoadedModel", rs: "RecordSet") -> "ShardExtractor":
        facts = ModelFacts.of(loaded)
        self.layer_dim(facts)
        return ShardExtractor(loaded, self.spec_for(facts, rs), self.tokens_per_batch)


def pending_shards(store_obj: "FeatureStore") -> list:
    """Shards of ``store_obj`` without a done marker, ascending (logged when some are already written)."""
    todo = [s for s in range(store_obj.n_shards) if s not in store_obj.done_shards]
    if len(todo) < store_obj.n_shards:
        log.info("resuming %s: %d of %d shards already written", store_obj.path, store_obj.n_shards - len(todo),
                 store_obj.n_shards)
    return todo


def ensure_offset(store_obj: "FeatureStore", quant: str, n_records: int, calibrate) -> Optional[np.ndarray]:
    """The store's int8/bit offset: read if written, else ``calibrate()`` once and write it (None for float quants)."""
    from mads_fast.store import load_offset

    if quant not in ("int8", "bit"):
        return None
    offset = load_offset(store_obj.path)
    if offset is None:
        log.info("calibrating the %s quantisation offset on the first %d records", quant,
                 min(n_records, CALIBRATION_RECORDS))
        offset = calibrate()
        store_obj.write_offset(offset)
    return np.asarray(offset, dtype=np.float32)


def progress_bar(total: int, enabled: bool):
    """(update(rows, tokens), close()) for one tqdm bar of records with tokens/s over everything run so far."""
    if not enabled:
        return (lambda rows, tokens: None), (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="rec", desc="extract", dynamic_ncols=True, leave=True)
    t0 = time.perf_counter()
    seen = [0]

    def update(rows, tokens):
        seen[0] += tokens
        bar.update(rows)
        bar.set_postfix_str(f"{seen[0] / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s", refresh=False)

    return update, bar.close
