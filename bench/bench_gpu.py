"""CUDA solver on one GPU against the C++ solver on the same machine's CPU.

Configurations (the Targets table of DESIGN.md):
- dense: N=52k, D=4096 int8, exact lazy greedy, 15% budget (target < 1 s). The features are made on the
  GPU (clustered, quantised to int8) and handed over as a torch tensor, so the engine borrows them; the
  row reports construction (inverse norms) and the greedy separately, plus the same run from a NumPy
  array (one host -> device copy included).
- knn: N=1M, D=1024 int8, top-64 graph built on the GPU + lazy greedy on the host graph (target < 60 s
  including the graph).
- align: the int8 first pass (``column_sums``: N^2 D multiply-adds through cuBLAS) at N=65536 and 65537, from
  a borrowed torch tensor and from NumPy. The engine pads the GEMM's rows to a multiple of 16 (int8 IMMA
  kernels want m % 4 == 0); if that padding works, 65537 costs what 65536 does (a 1.00003x larger problem),
  where a fallback to a non-tensor-core kernel would show as a several-fold slower row. The same two sizes
  through ``torch._int_mm`` ([N, D] x [D, 2048], cuBLASLt, no padding) show what unpadded m costs there.
The cpp rows run the same solver on the CPU. A full-size cpp run does not finish in minutes (dense: the
first pass alone is 52k^2 x 4096 MACs; knn: 1M^2 x 1024), so cpp is capped, and the row says at what:
dense at the same N and D with the budget cut to --cpp-budget picks (the GPU is rerun at that budget and
the two pick lists are compared), knn at --cpp-knn-n rows. Capped rows are never extrapolated.

Peak GPU memory: the largest (total - free) from cudaMemGetInfo, sampled every 5 ms while a run lasts,
less what was in use before it (the engine allocates with cudaMalloc, which torch's counters do not see;
``torch.cuda.max_memory_allocated`` is recorded too, for the torch buffers of the kNN graph).

    python bench/bench_gpu.py                   # everything
    python bench/bench_gpu.py --only dense      # or knn, or align
    python bench/bench_gpu.py --quick           # N=20k dense / 100k knn: a check in a minute

Prints one line per configuration; appends rows (device, driver, CUDA, cuBLAS, torch versions, date) to
``bench/results/solver_gpu.jsonl`` and rewrites ``bench/results/solver_gpu.md`` from the latest row of
each. Without a CUDA device (or without the cuda backend) it refuses to run: exit 2, nothing written.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "solver_gpu"
QUICK_RESULTS = HERE / ".cache" / "solver_gpu_quick"


def refuse(reason: str) -> None:
    print(f"bench_gpu: {reason}; no GPU number is written without a GPU run", file=sys.stderr)
    sys.exit(2)


def require_gpu():
    try:
        import torch
    except ImportError:
        refuse("torch is not installed")
    if not torch.cuda.is_available():
        refuse("no CUDA device is visible (torch.cuda.is_available() is False)")
    from mads_fast.errors import BackendUnavailableError
    from mads_fast.solver._native import load_native

    try:
        module = load_native("cuda")
    except BackendUnavailableError as exc:
        refuse(str(exc))
    return torch, module


class PeakMemory:
    """Largest device memory in use (cudaMemGetInfo) while the block runs, less the use before it."""

    def __init__(self, torch, interval=0.005):
        self.torch, self.interval = torch, interval

    def __enter__(self):
        free, total = self.torch.cuda.mem_get_info()
        self.base = total - free
        self.peak = self.base
        self.torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            free, total = self.torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        free, total = self.torch.cuda.mem_get_info()
        self.peak = max(self.peak, total - free)
        self.bytes = self.peak - self.base
        self.torch_bytes = self.torch.cuda.max_memory_allocated()


def clustered_int8(torch, n, d, seed, centers=256, noise=0.5):
    """int8 [n, d] on the GPU: Gaussian clusters, per-row symmetric quantisation (the store's form)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    C = torch.randn(centers, d, device="cuda", generator=g)
    out = torch.empty(n, d, dtype=torch.int8, device="cuda")  # [n, d]
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        label = torch.randint(0, centers, (stop - start,), device="cuda", generator=g)
        X = C[label] + noise * torch.randn(stop - start, d, device="cuda", generator=g)
        scale = 127.0 / X.abs().amax(dim=1, keepdim=True)
        out[start:stop] = torch.round(X * scale).to(torch.int8)
    return out


def versions(torch, module):
    v = module.versions(torch.cuda.current_device())
    return {"device": v["device_name"], "compute_capability": "%d.%d" % v["compute_capability"],
            "device_memory_gb": round(v["total_memory"] / 2**30, 1), "driver": v["driver"],
            "cuda_runtime": v["runtime"], "cublas": v["cublas"], "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


def timed(torch, fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run_dense(torch, args):
    from mads_fast.solver import FacilityLocation
    from mads_fast.solver._cuda import CudaEngine

    n, d = args.dense_n, args.dense_d
    k = max(1, round(args.budget * n))
    X = clustered_int8(torch, n, d, seed=0)
    CudaEngine(X[:1000]).lazy_greedy(10)  # warm-up: cuBLAS heuristics, module load
    rows = []
    with PeakMemory(torch) as mem:
        engine, t_build = timed(torch, lambda: CudaEngine(X))
        result, t_greedy = timed(torch, lambda: engine.lazy_greedy(k))
    rows.append({"config": "dense", "method": "cuda-int8", "n": n, "d": d, "budget": k, "input": "torch-cuda",
                 "seconds": t_build + t_greedy, "build_s": t_build, "greedy_s": t_greedy, "borrowed": engine.borrowed,
                 "passes": result.n_passes, "evaluations": result.n_evaluations, "kernel": engine.kernel,
                 "peak_gpu_bytes": mem.bytes, "objective": float(result.gains.sum()), "target_s": 1.0})
    del engine
    host = X.cpu().numpy()
    with PeakMemory(torch) as mem:
        _, t_host = timed(torch, lambda: CudaEngine(host).lazy_greedy(k))
    rows.append({"config": "dense", "method": "cuda-int8", "n": n, "d": d, "budget": k, "input": "numpy",
                 "seconds": t_host, "peak_gpu_bytes": mem.bytes, "target_s": 1.0})
    # cpp on this machine's CPU: same X, budget capped; the GPU reruns at that budget for the comparison.
    kc = min(k, args.cpp_budget)
    t0 = time.perf_counter()
    cpp = FacilityLocation(kc, backend="cpp").fit(host)
    t_cpp = time.perf_counter() - t0
    gpu_small, t_gpu_small = timed(torch, lambda: CudaEngine(X).lazy_greedy(kc))
    same = bool(np.array_equal(cpp.ranking_, gpu_small.ranking))
    rows.append({"config": "dense", "method": "cpp-int8", "n": n, "d": d, "budget": kc, "input": "numpy",
                 "seconds": t_cpp, "capped": f"budget {kc} instead of {k}", "cuda_seconds_same_budget": t_gpu_small,
                 "same_picks_as_cuda": same, "cpu_threads": os.cpu_count()})
    return rows


def run_knn(torch, args):
    from mads_fast.solver import FacilityLocation
    from mads_fast.solver._cuda import CudaEngine, knn_graph_cuda
    from mads_fast.solver._lazy import lazy_greedy
    from mads_fast.solver._oracles import SparseOracle

    n, d, nn = args.knn_n, args.knn_d, args.neighbors
    k = max(1, round(args.budget * n))
    X = clustered_int8(torch, n, d, seed=1, centers=1024)
    knn_graph_cuda(CudaEngine(X[:2000]), nn)  # warm-up
    with PeakMemory(torch) as mem:
        t0 = time.perf_counter()
        engine = CudaEngine(X)
        neighbors, sims = knn_graph_cuda(engine, nn)
        torch.cuda.synchronize()
        t_graph = time.perf_counter() - t0
        oracle = SparseOracle(neighbors, sims)
        result = lazy_greedy(oracle, k, 1)
        t_total = time.perf_counter() - t0
    rows = [{"config": "knn", "method": f"cuda-knn{nn}", "n": n, "d": d, "budget": k, "input": "torch-cuda",
             "seconds": t_total, "graph_s": t_graph, "greedy_s": t_total - t_graph, "greedy_on": "host (SparseOracle)",
             "peak_gpu_bytes": mem.bytes, "torch_peak_bytes": mem.torch_bytes, "objective": float(result.gains.sum()),
             "target_s": 60.0}]
    nc = min(n, args.cpp_knn_n)
    host = X[:nc].cpu().numpy()
    kc = max(1, round(args.budget * nc))
    t0 = time.perf_counter()
    cpp = FacilityLocation(kc, backend="cpp", mode="knn", n_neighbors=nn, knn_index="exact").fit(host)
    t_cpp = time.perf_counter() - t0
    t0 = time.perf_counter()
    small = FacilityLocation(kc, backend="cuda", mode="knn", n_neighbors=nn, knn_index="exact").fit(host)
    t_small = time.perf_counter() - t0
    rows.append({"config": "knn", "method": f"cpp-knn{nn}", "n": nc, "d": d, "budget": kc, "input": "numpy",
                 "seconds": t_cpp, "capped": f"N {nc} instead of {n}", "cuda_seconds_same_n": t_small,
                 "same_picks_as_cuda": bool(np.array_equal(cpp.ranking_, small.ranking_)),
                 "cpu_threads": os.cpu_count()})
    return rows


def run_align(torch, args):
    from mads_fast.solver._cuda import CudaEngine

    d = args.align_d
    sizes = [int(v) for v in args.align_n.split(",")]
    base = clustered_int8(torch, max(sizes), d, seed=2)
    rows = []
    for n in sizes:
        for source in ("torch-cuda", "numpy"):
            X = base[:n] if source == "torch-cuda" else base[:n].cpu().numpy()
            engine = CudaEngine(X)
            engine.column_sums()  # warm-up: cuBLAS picks its kernel for this shape
            times = [timed(torch, engine.column_sums)[1] for _ in range(args.align_repeat)]
            seconds = float(np.median(times))
            rows.append({"config": "align", "method": "cuda-int8-column-sums", "n": n, "d": d, "budget": 0,
                         "input": source, "seconds": seconds, "times_s": times, "borrowed": engine.borrowed,
                         "int8_tops": 2.0 * n * n * d / seconds / 1e12, "kernel": f"first pass ({engine.kernel})"})
            del engine
        rows.append(_int_mm_row(torch, base[:n], base[:2048].t(), args.align_repeat))
    return rows


def _int_mm_row(torch, A, B, repeat):
    """torch._int_mm(A [N, D], B [D, M]) timed like the engine rows, or the error torch raised."""
    n, d = A.shape
    row = {"config": "align", "method": "torch-int_mm", "n": n, "d": d, "budget": 0, "input": "torch-cuda",
           "borrowed": "n/a", "kernel": f"torch._int_mm [N, {d}] x [{d}, {B.shape[1]}]"}
    try:
        torch._int_mm(A, B)  # warm-up
        times = [timed(torch, lambda: torch._int_mm(A, B))[1] for _ in range(repeat)]
    except RuntimeError as exc:
        return dict(row, seconds=float("nan"), times_s=[], int8_tops=float("nan"), error=str(exc).splitlines()[0])
    seconds = float(np.median(times))
    return dict(row, seconds=seconds, times_s=times, int8_tops=2.0 * n * B.shape[1] * d / seconds / 1e12)


def line(row):
    if row["config"] == "align" and "error" in row:
        return f"align {row['method']} input={row['input']} n={row['n']} d={row['d']} : refused ({row['error']})"
    if row["config"] == "align":
        return (f"align {row['method']} input={row['input']} n={row['n']} d={row['d']} borrowed={row['borrowed']} : "
                f"{row['seconds']:.4f} s median of {len(row['times_s'])} ({row['int8_tops']:.0f} int8 TOP/s)")
    extra = ""
    if "capped" in row:
        extra = f" (capped: {row['capped']}; cuda at the same size {row.get('cuda_seconds_same_budget', row.get('cuda_seconds_same_n')):.3f} s, same picks {row['same_picks_as_cuda']})"
    mem = f" peak GPU {row['peak_gpu_bytes'] / 2**20:.0f} MiB" if "peak_gpu_bytes" in row else ""
    target = f" target < {row['target_s']:g} s" if "target_s" in row else ""
    return (f"{row['config']} {row['method']} input={row['input']} n={row['n']} d={row['d']} k={row['budget']} : "
            f"{row['seconds']:.3f} s{mem}{target}{extra}")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save(rows, base: Path) -> None:
    jsonl = base.with_suffix(".jsonl")
    old = jsonl.read_text() if jsonl.exists() else ""
    write_atomic(jsonl, old + "".join(json.dumps(r) + "\n" for r in rows))
    latest = {}
    for raw in (old + "".join(json.dumps(r) + "\n" for r in rows)).splitlines():
        r = json.loads(raw)
        latest[(r["config"], r["method"], r["input"], r["n"])] = r
    out = ["# CUDA solver vs C++ solver (same machine)", "",
           "| config | method | input | N | D | budget | seconds | target | peak GPU MiB | note | device | date |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in latest.values():
        note = r.get("capped", "")
        if note:
            note += f"; same picks as cuda: {r['same_picks_as_cuda']}"
        if r["config"] == "align":
            note = r.get("error") or f"{r['kernel']}, {r['int8_tops']:.0f} int8 TOP/s, borrowed {r['borrowed']}"
        peak = f"{r['peak_gpu_bytes'] / 2**20:.0f}" if "peak_gpu_bytes" in r else ""
        target = f"< {r['target_s']:g} s" if "target_s" in r else ""
        out.append(f"| {r['config']} | {r['method']} | {r['input']} | {r['n']} | {r['d']} | {r['budget']} | "
                   f"{r['seconds']:.3f} | {target} | {peak} | {note} | {r['device']} (driver {r['driver']}, CUDA "
                   f"{r['cuda_runtime']}, cuBLAS {r['cublas']}, torch {r['torch']}) | {r['date']} |")
    write_atomic(base.with_suffix(".md"), "\n".join(out) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=("dense", "knn", "align"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--budget", type=float, default=0.15)
    p.add_argument("--dense-n", type=int, default=52_000)
    p.add_argument("--dense-d", type=int, default=4096)
    p.add_argument("--knn-n", type=int, default=1_000_000)
    p.add_argument("--knn-d", type=int, default=1024)
    p.add_argument("--neighbors", type=int, default=64)
    p.add_argument("--cpp-budget", type=int, default=500, help="cap of the dense cpp run's budget")
    p.add_argument("--cpp-knn-n", type=int, default=50_000, help="cap of the knn cpp run's N")
    p.add_argument("--align-n", default="65536,65537", help="sizes of the align rows (comma-separated)")
    p.add_argument("--align-d", type=int, default=4096)
    p.add_argument("--align-repeat", type=int, default=5)
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    if args.quick:
        args.dense_n, args.knn_n, args.cpp_budget, args.cpp_knn_n = 20_000, 100_000, 200, 10_000
    torch, module = require_gpu()
    meta = versions(torch, module)
    meta["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta["note"] = args.note
    rows = []
    for config, fn in (("dense", run_dense), ("knn", run_knn), ("align", run_align)):
        if args.only in (None, config):
            for row in fn(torch, args):
                row.update(meta)
                print(line(row), flush=True)
                rows.append(row)
    save(rows, QUICK_RESULTS if args.quick else RESULTS)


if __name__ == "__main__":
    main()
