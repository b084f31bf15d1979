"""Profile the C++ facility-location solver: first pass, greedy phase, evaluations, passes, |U| over time.

One line per configuration (source, N, D, dtype, graph width), then |U| and cumulative evaluations at a
few points of the pick sequence. Multiply-add rates are printed against this CPU's peaks (AMD EPYC,
2 cores: ~205 G/s fp32, ~800 G/s int8 VNNI), with the 1-minute load average next to every timing: the
machine is shared, and a load above 2 means other jobs hold the cores.

Sources (bench/solver_features.py): ``gmm`` (seeded Gaussian mixture, 200 clusters plus noise) and
``minilm-proj`` (384-d MiniLM embeddings of Alpaca times a seeded Gaussian [384, D]; used when
bench/.cache/alpaca_minilm.npy exists). int8 is the store's form (normalised rows, per-row int8).

    .venv/bin/python bench/solver_profile.py                       # N=5k,20k  D=256  fp32+int8  both sources
    .venv/bin/python bench/solver_profile.py --n 51924 --d 256 --dtype fp32 --source minilm-proj
    .venv/bin/python bench/solver_profile.py --n 20000 --graph-k 0 64 256   # 0 = no saturation graph
    .venv/bin/python bench/solver_profile.py --threads 1               # OMP_NUM_THREADS for the run

Appends one JSON row per configuration to bench/results/solver_profile.jsonl (with --record).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PEAK = {"fp32": 205e9, "int8": 800e9}  # multiply-adds per second, both cores
RESULTS = HERE / "results" / "solver_profile.jsonl"
MARKS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)  # fractions of the budget where |U| is printed


def budget_for(n: int) -> int:
    """10% picks up to 20k rows (2k at 20k), 15% at Alpaca size (7.8k at 52k)."""
    return int(round((0.15 if n > 30000 else 0.10) * n))


def load_features(source: str, n: int, d: int, dtype: str) -> np.ndarray:
    import solver_features as sf

    X = sf.features(source, n, d)  # float32 [n, d]
    return sf.int8_features(X) if dtype == "int8" else X


def profile(X: np.ndarray, budget: int, graph_k: int) -> dict:
    from mads_fast.solver._native import load_native

    module = load_native("cpp")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    engine = module.DenseSimilarity(X)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = engine.lazy_greedy(budget, 0, None, graph_k)
    wall = time.perf_counter() - t0
    return {"engine": engine.kernel, "setup_s": setup, "wall_s": wall, "out": out,
            "load": (load0, os.getloadavg()[0])}


def report(source, n, d, dtype, graph_k, budget, res) -> dict:
    out = res["out"]
    first_s, greedy_s = out["first_pass_seconds"], out["greedy_seconds"]
    first_ma = out["first_pass_multiply_adds"]
    greedy_ma = out["multiply_adds"] - first_ma
    peak = PEAK[dtype]
    u = out["unsaturated"]
    evals = out["evaluations"]
    empty_at = int(np.argmax(u == 0)) + 1 if (u == 0).any() else None
    print(f"source={source} N={n} D={d} {dtype} k={budget} graph_k={graph_k} [{res['engine']}] : "
          f"{res['wall_s']:.2f} s (first pass {first_s:.2f} s at {first_ma / max(first_s, 1e-9) / 1e9:.0f} G/s = "
          f"{first_ma / max(first_s, 1e-9) / peak:.0%} of peak; greedy {greedy_s:.2f} s, "
          f"{greedy_ma / 1e9:.0f} G multiply-adds at {greedy_ma / max(greedy_s, 1e-9) / 1e9:.0f} G/s) "
          f"evaluations={out['n_evaluations'] - n} dense={out['n_dense_evaluations']} passes={out['n_passes']} "
          f"repacks={out['n_repacks']} refreshes={out.get('n_refreshes', 0)} U empty at pick {empty_at} "
          f"load {res['load'][0]:.1f}->{res['load'][1]:.1f}", flush=True)
    marks = sorted({max(1, int(round(f * budget))) for f in MARKS})
    print("    pick:        " + " ".join(f"{t:>8d}" for t in marks))
    print("    |U|:         " + " ".join(f"{int(u[t - 1]):>8d}" for t in marks))
    print("    evaluations: " + " ".join(f"{int(evals[t - 1]) - n:>8d}" for t in marks), flush=True)
    return {"source": source, "n": n, "d": d, "dtype": dtype, "budget": budget, "graph_k": graph_k,
            "kernel": res["engine"], "wall_s": res["wall_s"], "first_pass_s": first_s, "greedy_s": greedy_s,
            "first_pass_multiply_adds": int(first_ma), "greedy_multiply_adds": int(greedy_ma),
            "evaluations": int(out["n_evaluations"] - n), "dense_evaluations": int(out["n_dense_evaluations"]),
            "passes": int(out["n_passes"]), "repacks": int(out["n_repacks"]), "refreshes": int(out.get("n_refreshes", 0)), "u_empty_at": empty_at,
            "u_at": {str(t): int(u[t - 1]) for t in marks}, "load": res["load"],
            "objective": float(np.sum(out["gains"]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--d", type=int, nargs="+", default=[256])
    ap.add_argument("--dtype", nargs="+", choices=sorted(PEAK), default=["fp32", "int8"])
    ap.add_argument("--source", nargs="+", choices=["gmm", "minilm-proj"], default=None)
    ap.add_argument("--graph-k", type=int, nargs="+", default=[64])
    ap.add_argument("--budget", type=int, default=None, help="picks (default: 10%% of N, 15%% above 30k)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS (must be set before the load)")
    ap.add_argument("--record", action="store_true", help=f"append JSON rows to {RESULTS}")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import solver_features as sf

    sources = args.source or (["gmm", "minilm-proj"] if sf.MINILM.exists() else ["gmm"])
    if "minilm-proj" in sources and not sf.MINILM.exists():
        print(f"skipping minilm-proj: {sf.MINILM} is missing")
        sources = [s for s in sources if s != "minilm-proj"]
    stamp = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "omp_threads": os.environ.get("OMP_NUM_THREADS"), "numpy": np.__version__}
    for source in sources:
        for n in args.n:
            for d in args.d:
                for dtype in args.dtype:
                    X = load_features(source, n, d, dtype)
                    budget = args.budget or budget_for(n)
                    for graph_k in args.graph_k:
                        row = report(source, n, d, dtype, graph_k, budget, profile(X, budget, graph_k))
                        if args.record:
                            RESULTS.parent.mkdir(parents=True, exist_ok=True)
                            with RESULTS.open("a") as fh:
                                fh.write(json.dumps({**stamp, **row}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
