"""int8 lazy greedy per C++ kernel family: portable-int8 vs avx2-int8 (vpmaddwd) vs avx2-fp32 on the same rows.

One line per family: first-pass multiply-add rate (column sums + the top-64 saturation graph; then the
column sums alone, the same multiply-adds without the top-K lists), greedy time, wall, and the 1-minute
load average before and after (the machine may be shared: a load above the core count means other jobs
held the cores). The fp32 row runs the int8 rows cast to float32, so all
three solve the same similarity; the int8 families must agree bit for bit (checked and printed).

    .venv/bin/python bench/solver_isa_int8.py                          # N=20k D=256 k=2000, gmm rows
    .venv/bin/python bench/solver_isa_int8.py --n 5000 --families avx2-int8 avx2-fp32
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FAMILIES = {"portable-int8": ("portable", "int8"), "avx2-int8": ("avx2", "int8"), "avx2-fp32": ("avx2", "fp32")}


def run(module, X: np.ndarray, isa: str, budget: int, graph_k: int) -> dict:
    os.environ["MADS_FAST_ISA"] = isa  # read when a DenseSimilarity is built
    load0 = os.getloadavg()[0]
    engine = module.DenseSimilarity(X)
    t0 = time.perf_counter()
    out = engine.lazy_greedy(budget, 0, None, graph_k)
    out["wall_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.column_sums()  # the first pass without the top-K lists: the tile kernel and its epilogue alone
    out["column_sums_seconds"] = time.perf_counter() - t0
    out["kernel"] = engine.kernel
    out["load"] = (load0, os.getloadavg()[0])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--graph-k", type=int, default=64)
    ap.add_argument("--source", default="gmm", help="bench/solver_features.py source (gmm: seeded clusters)")
    ap.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    args = ap.parse_args(argv)

    import solver_features as sf
    from mads_fast.solver._native import load_native

    module = load_native("cpp")
    Xq = sf.int8_features(sf.features(args.source, args.n, args.d))  # int8 [N, D], the store's form
    results = {}
    for name in args.families:
        isa, dtype = FAMILIES[name]
        X = Xq if dtype == "int8" else Xq.astype(np.float32)
        out = run(module, X, isa, args.budget, args.graph_k)
        fp_s, fp_ma = out["first_pass_seconds"], out["first_pass_multiply_adds"]
        results[name] = out
        print(f"source={args.source} N={args.n} D={args.d} k={args.budget} graph_k={args.graph_k} [{out['kernel']}] : "
              f"wall {out['wall_s']:.2f} s, first pass {fp_s:.2f} s = {fp_ma / fp_s / 1e9:.1f} GMAC/s "
              f"(column sums alone {fp_ma / out['column_sums_seconds'] / 1e9:.1f} GMAC/s), "
              f"greedy {out['greedy_seconds']:.2f} s ({(out['multiply_adds'] - fp_ma) / 1e9:.0f} G multiply-adds), "
              f"objective {float(np.sum(out['gains'])):.6f}, load {out['load'][0]:.1f}->{out['load'][1]:.1f}",
              flush=True)
    if {"portable-int8", "avx2-int8"} <= results.keys():
        p, a = results["portable-int8"], results["avx2-int8"]
        same = all(np.array_equal(np.asarray(p[k]).view(np.uint8), np.asarray(a[k]).view(np.uint8))
                   for k in ("ranking", "gains", "nearest", "nearest_similarity"))
        print(f"portable-int8 vs avx2-int8: ranking, gains, nearest, nearest_similarity bit-identical: {same}")
    if {"avx2-int8", "avx2-fp32"} <= results.keys():
        a, f = results["avx2-int8"], results["avx2-fp32"]
        print(f"avx2-int8 vs avx2-fp32: same first {int(np.argmax(a['ranking'] != f['ranking']))} picks"
              if not np.array_equal(a["ranking"], f["ranking"]) else "avx2-int8 vs avx2-fp32: same ranking")
    return 0


if __name__ == "__main__":
    sys.exit(main())
