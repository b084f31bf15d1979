"""Fused pool + quantise kernel against the torch reference, one line per (pool, quant).

On CUDA: times the reference with ``triton.testing.do_bench`` (median, 20th and 80th percentiles),
the kernel launcher replayed from a CUDA graph (GPU time alone), and one ``pool_quant`` call as a hook
makes it (validation + launch, Python overhead included), and reports GB/s = (bytes of valid hidden
read + [B, W] output + [B] scales written) / kernel time against the GPU's memory bandwidth (target:
>= 70%; DESIGN.md). Without size arguments it runs a SmolLM2-135M batch (B=32, T=256, H=576) and a
Llama-3.2-3B one (B=64, T=512, H=3072). On a CPU machine the Triton kernel only runs under the
interpreter, which says nothing about speed, so it times the torch reference (the CPU path) per batch.

Appends one JSON row per configuration to ``bench/results/kernel.jsonl`` (device, versions, date,
shape, times, GB/s) and prints a table.

    python bench/bench_kernel.py                      # CPU: SmolLM2-135M-sized batch, B=32, T=256, H=576
    python bench/bench_kernel.py --batch 64 --tokens 512 --hidden 3072 --dtype bfloat16   # Llama-3.2-3B-sized
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mads_fast.pooling import POOLS, QUANTS, make_projection, out_dtype, out_width, pool_quant, pool_quant_reference

RESULTS = Path(__file__).resolve().parent / "results" / "kernel.jsonl"

# Spec-sheet DRAM bandwidth, GB/s: torch exposes no bandwidth query, so match on the device name.
PEAK_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0,
             "H100 NVL": 3900.0, "A100-SXM4-80GB": 2039.0, "A100-SXM4-40GB": 1555.0, "A100 80GB PCIe": 1935.0,
             "L40S": 864.0, "A10G": 600.0, "L4": 300.0, "RTX 4090": 1008.0}


def peak_bandwidth_gbps(name: str):
    for key, value in PEAK_GBPS.items():
        if key in name:
            return value
    return None


def copy_bandwidth_gbps(device) -> float:
    """Achievable bandwidth: a 1 GiB device-to-device copy (read + write) timed with do_bench."""
    import triton.testing

    src = torch.empty(1 << 28, dtype=torch.float32, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), quantiles=[0.5])
    ms = ms[0] if isinstance(ms, (list, tuple)) else ms
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
    return out


def make_inputs(args, device):
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    hidden = torch.randn(args.batch, args.tokens, args.hidden, generator=gen).to(device=device, dtype=dtype)  # [B, T, H]
    if args.lengths == "full":
        lengths = torch.full((args.batch,), args.tokens, dtype=torch.int64)  # [B]
    else:  # a length-sorted token-budget batch: lengths within the top 10% of T
        lengths = torch.randint(int(args.tokens * 0.9), args.tokens + 1, (args.batch,), generator=gen)
    return hidden, lengths.to(device)


def time_cpu(fn, reps: int):
    fn()  # warm-up: allocator and thread pool
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    # The minimum is kept too: on a shared 2-core machine other processes inflate the median by
    # whole scheduler slices (8-16 ms seen on a 3 ms job), while the minimum is the job's own cost.
    return statistics.median(times), times[len(times) // 5], times[(4 * len(times)) // 5], times[0]


def time_cuda(fn):
    import triton.testing

    return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))


def time_cuda_graph(fn):
    """GPU time alone: replayed from a CUDA graph, so Python launch overhead (tens of microseconds,
    more than the kernel itself at SmolLM2 sizes) does not hide the kernel's bandwidth."""
    import triton.testing

    try:
        return tuple(triton.testing.do_bench_cudagraph(fn, quantiles=[0.5, 0.2, 0.8]))
    except Exception as exc:  # capture can fail on old drivers; report the launch-bound time instead
        print(f"  (CUDA graph timing failed: {type(exc).__name__}: {exc}; using do_bench)")
        return time_cuda(fn)


def append_rows(rows, path: Path):
    """Append JSON lines atomically: the old file plus the new rows go to a temp name, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.exists() else b""
    new = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(old + new)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="default 32 (and 64 on CUDA)")
    parser.add_argument("--tokens", type=int, default=None, help="default 256 (and 512 on CUDA)")
    parser.add_argument("--hidden", type=int, default=None, help="default 576 (and 3072 on CUDA)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="hidden dtype (default: bfloat16 on CUDA, float32 on CPU, as the model runs)")
    parser.add_argument("--project", type=int, default=0, help="also project to this many dims (0: no)")
    parser.add_argument("--lengths", default="full", choices=["full", "sorted"])
    parser.add_argument("--pools", default=",".join(POOLS))
    parser.add_argument("--quants", default=",".join(QUANTS))
    parser.add_argument("--reps", type=int, default=20, help="CPU repetitions")
    parser.add_argument("--threads", type=int, default=0, help="CPU torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if (args.batch, args.tokens, args.hidden) == (None, None, None) and cuda:
        shapes = [(32, 256, 576), (64, 512, 3072)]
    else:
        shapes = [(args.batch or 32, args.tokens or 256, args.hidden or 576)]
    rows = []
    for args.batch, args.tokens, args.hidden in shapes:
        rows += bench_shape(args, cuda)
    if not args.no_save:
        append_rows(rows, args.out)
        print(f"appended {len(rows)} rows to {args.out}")
    return 0


def bench_shape(args, cuda):
    device = torch.device("cuda" if cuda else "cpu")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    hidden, lengths = make_inputs(args, device)
    projection = make_projection(args.hidden, args.project, seed=0).to(device) if args.project else None
    dim = args.project or args.hidden
    if cuda:
        from mads_fast.kernels.pool_quant import pool_quant_triton

        device_name = torch.cuda.get_device_name(device)
        peak = peak_bandwidth_gbps(device_name)
        copy_gbps = copy_bandwidth_gbps(device)
    else:
        device_name = f"{cpu_name()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
        peak, copy_gbps = None, None
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {"date": stamp, "device": device_name, "versions": versions(), "batch": args.batch,
              "tokens": args.tokens, "hidden": args.hidden, "dtype": args.dtype, "project": args.project,
              "lengths": args.lengths, "valid_tokens": int(lengths.sum())}

    print(f"device: {device_name}")
    print(f"shape: B={args.batch} T={args.tokens} H={args.hidden} {args.dtype} project={args.project or 'no'} "
          f"lengths={args.lengths}")
    if cuda:
        print(f"bandwidth: spec {peak or 'unknown'} GB/s, measured copy {copy_gbps:.0f} GB/s")
        print(f"{'pool':7s} {'quant':5s} {'reference ms':>13s} {'fused ms':>9s} {'speed-up':>8s} "
              f"{'GB/s':>7s} {'% peak':>7s} {'call ms':>8s}")
    else:
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"{'pool':7s} {'quant':5s} {'reference ms/batch':>19s} {'p20':>7s} {'p80':>7s} {'min':>7s}")

    rows = []
    for pool in args.pools.split(","):
        for quant in args.quants.split(","):
            ref = lambda: pool_quant_reference(hidden, lengths, pool, quant, projection)  # noqa: E731
            row = dict(common, pool=pool, quant=quant)
            if cuda:
                out = torch.empty(args.batch, out_width(dim, quant), dtype=out_dtype(quant), device=device)
                scale = torch.empty(args.batch, dtype=torch.float32, device=device)
                fused = lambda: pool_quant(hidden, lengths, pool, quant, projection, out, scale,  # noqa: E731
                                           backend="triton")
                launch = lambda: pool_quant_triton(hidden, lengths, pool, quant, projection, out, scale)  # noqa: E731
                ref_ms = time_cuda(ref)
                call_ms = time_cuda(fused)  # one pool_quant call as a hook makes it: validation + launch
                fused_ms = time_cuda_graph(launch)
                read = int(lengths.sum()) * args.hidden * hidden.element_size() if pool != "last" \
                    else args.batch * args.hidden * hidden.element_size()
                moved = read + out.numel() * out.element_size() + args.batch * 4
                if projection is not None:
                    moved += projection.numel() * 4  # R is read once per call
                gbps = moved / (fused_ms[0] * 1e-3) / 1e9
                row.update(reference_ms=ref_ms, fused_ms=fused_ms, call_ms=call_ms, bytes=moved, gbps=gbps,
                           peak_gbps=peak,
                           copy_gbps=copy_gbps, pct_peak=None if peak is None else 100 * gbps / peak)
                pct = f"{100 * gbps / peak:6.1f}%" if peak else "      ?"
                print(f"{pool:7s} {quant:5s} {ref_ms[0]:13.4f} {fused_ms[0]:9.4f} "
                      f"{ref_ms[0] / fused_ms[0]:7.1f}x {gbps:7.0f} {pct} {call_ms[0]:8.4f}")
            else:
                ref_ms = time_cpu(ref, args.reps)
                row.update(reference_ms=ref_ms[:3], reference_min_ms=ref_ms[3], load_average=os.getloadavg()[0])
                print(f"{pool:7s} {quant:5s} {ref_ms[0]:19.2f} {ref_ms[1]:7.2f} {ref_ms[2]:7.2f} {ref_ms[3]:7.2f}")
            rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
