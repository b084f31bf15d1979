"""Extraction throughput: mads_fast against a naive Hugging Face loop, same records, model and features.

The naive loop is what a user writes first: fixed batches of rows in file order, padding to the longest
row, ``output_hidden_states=True`` on the full model (every layer, the final norm and the logits), masked mean
of the chosen layer afterwards. Ours: token-budget batches of length-sorted rows, forward stopped after the
chosen layer, pooling and quantisation in the hook, features written to a store.

Each method runs in its own child process (so peak RSS is its own), after loading the model there; the
timed region is the loop over the records only. Prints one line per method, then the ratios, and appends
rows to ``bench/results/extract_<device>.jsonl`` and a Markdown table to ``extract_<device>.md``.

    python bench/bench_extract.py --records 1000                 # CPU, SmolLM2-135M-Instruct (default)
    python bench/bench_extract.py --llama3b --records 51924      # GPU: a Llama-3.2-3B-shaped random model
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_cleaned.jsonl"
RESULTS = ROOT / "bench" / "results"

# Llama-3.2-3B's shape (config.json of meta-llama/Llama-3.2-3B-Instruct); weights are random: throughput
# does not depend on their values.
LLAMA_3B = dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                num_attention_heads=24, num_key_value_heads=8, max_position_embeddings=131072,
                rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)


def _device_name(device):
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    with open("/proc/cpuinfo") as fh:
        model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "cpu")
    return f"{model} ({os.cpu_count()} cores)"


def _make_llama3b(folder, tokenizer_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir[0], gguf_file=tokenizer_dir[1]) if tokenizer_dir[1] else \
        AutoTokenizer.from_pretrained(tokenizer_dir[0])
    tok.save_pretrained(folder)
    config = LlamaConfig(**LLAMA_3B, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)


def _texts(loaded, rs, max_length):
    from mads_fast.tokens import render, tokenize

    return tokenize([render(rs, i, loaded.tokenizer, "chat") for i in range(len(rs))], loaded.tokenizer, max_length)


def run_naive(args, queue):
    import torch

    from mads_fast.data import read_records
    from mads_fast.model import load_model

    loaded = load_model(args.model, device=args.device)
    rs = read_records(args.data, limit=args.records)
    ts = _texts(loaded, rs, args.max_length)
    layer = args.layer
    pad = loaded.tokenizer.pad_token_id
    feats = []
    tokens = padded = 0
    _sync(args.device)
    t0 = time.perf_counter()
    for start in range(0, len(rs), args.naive_batch):
        rows = ts.ids[start:start + args.naive_batch]
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):
            x[r, :len(ids)] = torch.as_tensor(np.asarray(ids, dtype=np.int64))
            mask[r, :len(ids)] = 1
        x, mask = x.to(args.device), mask.to(args.device)
        with torch.inference_mode():
            out = loaded.model(input_ids=x, attention_mask=mask, output_hidden_states=True)
            h = out.hidden_states[layer + 1].float()  # [B, T, H]
            m = mask[:, :, None].float()
            pooled = (h * m).sum(1) / m.sum(1)
        feats.append(pooled.cpu().numpy())
        tokens += int(mask.sum())
        padded += mask.numel()
    _sync(args.device)
    seconds = time.perf_counter() - t0
    queue.put(dict(method="naive-hf", seconds=seconds, tokens=tokens, padded=padded,
                   features=np.concatenate(feats), peak_rss_mb=_peak_mb(), peak_gpu_mb=_peak_gpu(args.device)))


def run_ours(args, queue):
    from mads_fast.extraction import extract
    from mads_fast.model import load_model
    from mads_fast.store import load_features

    loaded = load_model(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        _sync(args.device)
        t0 = time.perf_counter()
        stats = extract(args.data, Path(tmp) / "store", model=loaded, layers=str(args.layer), quant=args.quant,
                        max_length=args.max_length, tokens_per_batch=args.tokens_per_batch, limit=args.records,
                        progress=False)
        _sync(args.device)
        seconds = time.perf_counter() - t0
        _, feats = load_features(Path(tmp) / "store", raw=True)
    queue.put(dict(method=f"mads_fast-{args.quant}", seconds=seconds, tokens=stats.tokens,
                   padded=stats.padded_tokens, features=feats, calibration_seconds=stats.calibration_seconds,
                   peak_rss_mb=_peak_mb(), peak_gpu_mb=_peak_gpu(args.device)))


def _sync(device):
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_gpu(device):
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def _child(fn, args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ALPACA))
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--model", default=None, help="model dir or .gguf (default: embedded SmolLM2-135M)")
    p.add_argument("--llama3b", action="store_true", help="random-weight Llama-3.2-3B-shaped model (GPU)")
    p.add_argument("--layer", type=int, default=None, help="layer to pool (default: 2/3 of depth)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--naive-batch", type=int, default=8)
    p.add_argument("--tokens-per-batch", type=int, default=16384)
    p.add_argument("--quant", default="fp16")
    p.add_argument("--device", default=None)
    a = p.parse_args()
    import torch

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tmp_model = None
    if a.llama3b:
        from mads_fast.model import default_model_path

        tmp_model = tempfile.mkdtemp(prefix="llama3b_")
        gguf = default_model_path()
        _make_llama3b(tmp_model, (gguf.parent, gguf.name))
        a.model = tmp_model
    if a.layer is None:
        a.layer = 18 if a.llama3b else 20
    print(f"device: {_device_name(a.device)}; records: {a.records}; layer {a.layer}; max_length {a.max_length}")
    load = os.getloadavg()
    naive = _child(run_naive, a)
    ours = _child(run_ours, a)
    load_after = os.getloadavg()
    f_naive, f_ours = naive.pop("features"), ours.pop("features")
    cos = np.sum(f_naive * f_ours, 1) / (np.linalg.norm(f_naive, axis=1) * np.linalg.norm(f_ours, axis=1))
    rows = []
    for r in (naive, ours):
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["padding"] = 1 - r["tokens"] / r["padded"]
        rows.append(r)
        print(f"records={a.records} method={r['method']:<16}: {r['seconds']:8.2f} s  {r['tokens_per_s']:9.0f} tok/s  "
              f"padding {r['padding']:6.1%}  peak RSS {r['peak_rss_mb']:7.0f} MB"
              + (f"  peak GPU {r['peak_gpu_mb']:.0f} MB" if r["peak_gpu_mb"] else ""))
    speedup = ours["tokens_per_s"] / naive["tokens_per_s"]
    print(f"speed-up (tokens/s, ours / naive): {speedup:.2f}x; feature cosine ours vs naive: min {cos.min():.5f}")
    import transformers

    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=_device_name(a.device), model="llama-3.2-3b-shaped (random)" if a.llama3b else
                (a.model or "SmolLM2-135M-Instruct (default)"), records=a.records, layer=a.layer,
                max_length=a.max_length, naive_batch=a.naive_batch, tokens_per_batch=a.tokens_per_batch,
                torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                loadavg_before=load, loadavg_after=load_after, speedup=speedup, min_cosine=float(cos.min()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if a.device.startswith("cuda") else "cpu"
    with open(RESULTS / f"extract_{tag}.jsonl", "a") as fh:
        for r in rows:
            fh.write(json.dumps({**meta, **r}) + "\n")
    with open(RESULTS / f"extract_{tag}.md", "a") as fh:
        fh.write(f"\n### {meta['date']} — {meta['device']} — {meta['model']}, {a.records} Alpaca records, "
                 f"layer {a.layer}, max_length {a.max_length}\n\n")
        fh.write("| method | seconds | tokens/s | padding | peak RSS MB |\n|---|---:|---:|---:|---:|\n")
        for r in rows:
            fh.write(f"| {r['method']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {r['padding']:.1%} | "
                     f"{r['peak_rss_mb']:.0f} |\n")
        fh.write(f"\nSpeed-up {speedup:.2f}x (target ≥ 2.5x on CPU, ≥ 3x on GPU); min feature cosine "
                 f"{cos.min():.5f}; torch {torch.__version__}, transformers {transformers.__version__}; "
                 f"load average {load[0]:.2f} → {load_after[0]:.2f}\n")
    if tmp_model:
        import shutil

        shutil.rmtree(tmp_model, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
