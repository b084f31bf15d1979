"""Extraction against the machine's own ceilings, in one process: first the ceilings, then the pipeline.

1. matmul: fp32 and bf16 ``torch.matmul`` at the model's projection shapes (GFLOP/s);
2. int8 GEMM (``torch._int_mm``) at the solver's similarity-block shape (GOP/s), for reference;
3. bare forward: the decoder cut after ``--layer`` (no hooks, no head), random ids at fixed [B, T] shapes, fp32
   and bf16 (tokens/s);
4. bare replay: the same truncated forward over exactly the [B, T] batches the pipeline will run on these
   records (random ids): the ceiling for these records under our batching;
5. the pipeline: ``mads_fast.extraction.extract`` on the first ``--records`` Alpaca records in each dtype
   (loop tokens/s, valid tokens only; the model load and calibration are outside the loop time).

Prints the pipeline as a fraction of the best fixed-shape bare forward and of the replay in the same dtype,
and appends a row to ``bench/results/extract_ceiling.jsonl`` and a table to ``extract_ceiling.md``.

    python bench/extract_ceiling.py --records 1000 --max-length 256            # layer 20 (the default)
    python bench/extract_ceiling.py --records 1000 --max-length 71 --tag short # ~70-token records
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ceilings import (bare_forward_rate, bare_forward_seconds, cpu_description, int8_gemm_rate,  # noqa: E402
                      matmul_rate, truncated)

ALPACA = HERE.parents[1] / "shared" / "data" / "alpaca_cleaned.jsonl"
RESULTS = HERE / "results"
FIXED_SHAPES = [(16, 128), (32, 128), (16, 256), (32, 256), (64, 256)]


def pipeline_batches(rs, tokenizer, max_length, tokens_per_batch, shard_size):
    """The [B, T] of every batch the pipeline runs on ``rs`` (shard by shard, as ``ShardExtractor`` plans)."""
    from mads_fast.tokens import plan_batches, render, tokenize

    shapes, valid = [], 0
    for start in range(0, len(rs), shard_size):
        idx = range(start, min(len(rs), start + shard_size))
        ts = tokenize([render(rs, i, tokenizer, "chat") for i in idx], tokenizer, max_length)
        batches, _ = plan_batches(ts.lengths, tokens_per_batch)
        shapes += [(len(b.indices), int(b.max_len)) for b in batches]
        valid += int(ts.lengths.sum())
    return shapes, valid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--layer", type=int, default=20, help="0-based decoder layer (SmolLM2-135M default: 20)")
    p.add_argument("--tokens-per-batch", type=int, default=4096, help="the pipeline's CPU default (4096)")
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--tag", default="", help="a label for the row (e.g. short)")
    p.add_argument("--no-save", action="store_true")
    a = p.parse_args(argv)

    import torch
    import transformers

    from mads_fast.data import read_records
    from mads_fast.extraction import extract
    from mads_fast.model import auto_dtype, load_model

    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    cpu = cpu_description()
    auto = str(auto_dtype("cpu")[0]).replace("torch.", "")
    print(f"# {cpu}; torch {torch.__version__} ({torch.get_num_threads()} threads); --dtype auto -> {auto}")
    row = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), device=cpu,
               torch=torch.__version__, transformers=transformers.__version__, threads=torch.get_num_threads(),
               records=a.records, max_length=a.max_length, layer=a.layer, tokens_per_batch=a.tokens_per_batch,
               tag=a.tag, auto_dtype=auto)

    base = load_model(dtype="fp32")
    cfg = base.model.config
    hidden, inter, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    tokens = 32 * min(256, a.max_length)
    row["matmul_gflops"] = {}
    for dt in ("fp32", "bf16"):
        rates = {f"{tokens}x{hidden}x{inter}": matmul_rate(tokens, hidden, inter, dt),
                 f"{tokens}x{inter}x{hidden}": matmul_rate(tokens, inter, hidden, dt)}
        row["matmul_gflops"][dt] = rates
        print(f"matmul {dt}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()))
    gops, why = int8_gemm_rate(4096, 256, 4096)
    row["int8_gemm_gops"] = gops
    print(f"int8 GEMM 4096x256x4096: {f'{gops:.0f} GOP/s' if gops else why}")

    rs = read_records(ALPACA, limit=a.records)
    shapes, valid = pipeline_batches(rs, base.tokenizer, a.max_length, a.tokens_per_batch, a.shard_size)
    padded = sum(b * t for b, t in shapes)
    row.update(batches=len(shapes), valid_tokens=valid, padded_tokens=padded)
    print(f"{a.records} records -> {len(shapes)} batches, {valid} tokens ({padded} padded, "
          f"{1 - valid / padded:.1%} padding)")

    row["bare"], row["replay"], row["pipeline"] = {}, {}, {}
    work = Path(tempfile.mkdtemp(prefix="mads-ceiling-"))
    try:
        for dt in dtypes:
            loaded = base if dt == "fp32" else load_model(dtype=dt)
            with truncated(loaded.decoder, a.layer + 1) as dec:
                shapes_fixed = [(b, t) for b, t in FIXED_SHAPES if t <= a.max_length] or \
                    [(b, a.max_length) for b in (16, 32, 64)]
                fixed = {f"{b}x{t}": bare_forward_rate(dec, b, t, vocab) for b, t in shapes_fixed}
                replay_s = bare_forward_seconds(dec, shapes, vocab)
            row["bare"][dt] = fixed
            row["replay"][dt] = dict(seconds=replay_s, valid_tok_s=valid / replay_s, padded_tok_s=padded / replay_s)
            print(f"bare forward {dt} (layers 0..{a.layer}): " + ", ".join(f"{k} {v:.0f}" for k, v in fixed.items())
                  + f" tok/s; replay of the pipeline's batches {replay_s:.1f} s = {valid / replay_s:.0f} valid tok/s")
            if loaded is not base:
                del loaded
            t0 = time.perf_counter()
            stats = extract(ALPACA, work / dt, limit=a.records, max_length=a.max_length, layers=str(a.layer),
                            dtype=dt, tokens_per_batch=a.tokens_per_batch, shard_size=a.shard_size, progress=False)
            loop = stats.extra["loop_seconds"]
            rate = stats.tokens / loop
            best = max(fixed.values())
            row["pipeline"][dt] = dict(loop_seconds=loop, total_seconds=time.perf_counter() - t0, valid_tok_s=rate,
                                       vs_best_bare=rate / best, vs_replay=rate / (valid / replay_s))
            print(f"pipeline {dt}: {loop:.1f} s loop, {rate:.0f} tok/s = {rate / best:.0%} of the best bare forward "
                  f"({best:.0f}), {rate / (valid / replay_s):.0%} of the replay")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "bf16" in row["pipeline"] and "fp32" in row["pipeline"]:
        print(f"bf16/fp32 pipeline: {row['pipeline']['bf16']['valid_tok_s'] / row['pipeline']['fp32']['valid_tok_s']:.2f}x")
    if not a.no_save:
        save(row)
    return 0


def save(row: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "extract_ceiling.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    lines = [f"\n### {row['date']} — {row['device']}",
             f"SmolLM2-135M-Instruct, layer {row['layer']}, {row['records']} Alpaca records, max_length "
             f"{row['max_length']}, tokens_per_batch {row['tokens_per_batch']}{', ' + row['tag'] if row['tag'] else ''}; "
             f"torch {row['torch']}, transformers {row['transformers']}, {row['threads']} threads; --dtype auto -> "
             f"{row['auto_dtype']}; {row['batches']} batches, {1 - row['valid_tokens'] / row['padded_tokens']:.1%} "
             f"padding", "",
             "| dtype | matmul GFLOP/s (best shape) | bare forward tok/s (best fixed shape) | replay valid tok/s | "
             "pipeline tok/s | of bare | of replay |", "|---|---:|---:|---:|---:|---:|---:|"]
    for dt, pipe in row["pipeline"].items():
        best = max(row["bare"][dt].items(), key=lambda kv: kv[1])
        lines.append(f"| {dt} | {max(row['matmul_gflops'][dt].values()):.0f} | {best[1]:.0f} ({best[0]}) | "
                     f"{row['replay'][dt]['valid_tok_s']:.0f} | {pipe['valid_tok_s']:.0f} | {pipe['vs_best_bare']:.0%} "
                     f"| {pipe['vs_replay']:.0%} |")
    if row["int8_gemm_gops"]:
        lines.append(f"\nint8 GEMM (torch._int_mm 4096x256x4096): {row['int8_gemm_gops']:.0f} GOP/s")
    with open(RESULTS / "extract_ceiling.md", "a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    sys.exit(main())
