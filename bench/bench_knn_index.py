"""kNN mode's two indexes side by side: the exact top-K graph against the FAISS IVF graph.

For each input (synthetic stores of bench/synthetic_store.py at the ``--sizes`` given, a ``--store``, or a
``--npy`` of features, e.g. bench/.cache/alpaca_minilm.npy from bench/embed_alpaca.py), each arm
(``exact``, ``ivf``) runs ``FacilityLocation(budget, backend, mode="knn", knn_index=arm)`` in its own fresh
Python child, so its peak RSS (``ru_maxrss``) is its own. Per arm: graph seconds (exact: the C++ first
pass that builds the graph; ivf: k-means + add + nprobe tuning + search), greedy seconds, fit total, peak
RSS, the IVF's nlist / nprobe / recall@K on its 1,000-row sample, and the pick set's TRUE dense facility
objective f(S) = sum_i max_{j in S} s(i, j) (``exact_nearest`` over the picks, by engine columns, never
N x N), with the ratio ivf / exact.

    python bench/bench_knn_index.py --sizes 20000,50000,100000,200000       # the crossover, synthetic D=256
    python bench/bench_knn_index.py --npy bench/.cache/alpaca_minilm.npy --name alpaca_minilm

Writes bench/results/knn_index_<name>.jsonl (one row per arm and input, appended) and .md (rewritten from
this run), with the device (CPU model, cores, ISA flags), versions, date and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

CACHE = HERE / ".cache"
RESULTS = HERE / "results"
ARMS = ("exact", "ivf")


def environment() -> dict:
    """bench_partitioned's device / versions / commit / date, plus this run's command line."""
    from bench_partitioned import environment as shared

    return dict(shared(), command=" ".join([Path(sys.executable).name] + sys.argv))


def synthetic_input(n: int, dim: int, clusters: int, seed: int) -> Path:
    """The int8 solver input (standardised, as ``mads-fast solve`` builds it) of a synthetic store, cached."""
    from synthetic_store import write_synthetic_store

    from mads_fast.store import load_solver_input

    out = CACHE / f"knn_syn_{n}_{dim}_{clusters}_{seed}.int8.npy"
    if not out.exists():
        store = CACHE / f"knn_syn_{n}_{dim}_{clusters}_{seed}"
        write_synthetic_store(store, n, dim=dim, clusters=clusters, seed=seed)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(str(out) + ".tmp.npy", load_solver_input(store, dtype="int8"))
        os.replace(str(out) + ".tmp.npy", out)
    return out


def store_input(store: Path) -> Path:
    from mads_fast.store import load_solver_input

    out = CACHE / f"knn_store_{Path(store).name}.int8.npy"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(out, load_solver_input(store, dtype="int8"))
    return out


def run_arm(path: Path, arm: str, a) -> dict:
    """One arm in a fresh child; returns its JSON row (with the 1-minute load average before and after)."""
    before = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--worker", str(path), "--arm", arm, "--budget", str(a.budget),
           "--n-neighbors", str(a.n_neighbors), "--knn-recall", str(a.knn_recall), "--backend", a.backend,
           "--objective-max-n", str(a.objective_max_n)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{arm} on {path} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["load_average"] = f"{before:.2f}->{os.getloadavg()[0]:.2f}"
    return row


def worker(a) -> None:
    from mads_fast.solver import FacilityLocation
    from mads_fast.solver._backends import make_engine, prepare
    from mads_fast.solver._knn import exact_nearest

    X = np.load(a.worker)
    budget = float(a.budget) if "." in a.budget else int(a.budget)
    t0 = time.perf_counter()
    fl = FacilityLocation(budget, backend=a.backend, mode="knn", n_neighbors=a.n_neighbors, knn_index=a.arm,
                          knn_recall=a.knn_recall).fit(X)
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    p = fl.profile_
    graph = p["knn_graph_seconds"]  # exact: the C++ first pass (or knn_graph at large N); ivf: build+tune+search
    t1 = time.perf_counter()
    true_objective = float("nan")  # N x k x D multiply-adds: skipped where no exact arm compares (see --help)
    if X.shape[0] <= a.objective_max_n:
        Xp, name = prepare(a.backend, X)
        _, cur = exact_nearest(make_engine(name, Xp), fl.ranking_)
        true_objective = float(cur.sum(dtype=np.float64))
    row = {"n": int(X.shape[0]), "d": int(X.shape[1]), "dtype": str(X.dtype), "budget": int(fl.ranking_.size),
           "n_neighbors": a.n_neighbors, "arm": a.arm, "backend": fl.backend_, "graph_seconds": graph,
           "greedy_seconds": p.get("greedy_seconds", float("nan")), "total_seconds": total,
           "peak_rss_bytes": peak, "graph_objective": fl.objective_,
           "true_objective": true_objective, "objective_seconds": time.perf_counter() - t1}
    row.update({k: v for k, v in p.items() if k.startswith("knn_")})
    print(json.dumps(row))


def markdown(rows, env) -> str:
    lines = [f"# kNN index: exact vs IVF ({env['date']})", "",
             f"Device: {env['device']}; numpy {env['numpy']}, faiss {env['faiss']}, mads_fast {env['mads_fast']} "
             f"(commit {env['commit']}), Python {env['python']}.",
             f"Command: `{env['command']}`", "",
             "| N | D | k | arm | graph s | greedy s | total s | peak RSS MB | nlist | nprobe | recall@K | "
             "true f(S) | ivf/exact | load |", "|" + "---|" * 14]
    exact = {(r["n"], r["d"]): r["true_objective"] for r in rows if r["arm"] == "exact"}
    for r in rows:
        ratio = r["true_objective"] / exact[(r["n"], r["d"])] if (r["n"], r["d"]) in exact else float("nan")
        ivf = r.get("knn_index") == "ivf"
        recall = f"{r['knn_recall']:.3f}" if ivf else "1 (exact)"
        lines.append(f"| {r['n']:,} | {r['d']} | {r['budget']:,} | {r['arm']} | {r['graph_seconds']:.2f} | "
                     f"{r['greedy_seconds']:.2f} | {r['total_seconds']:.2f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{r.get('knn_nlist', '')} | {r.get('knn_nprobe', '')} | {recall} | "
                     f"{r['true_objective']:.1f} | {ratio:.4f} | {r['load_average']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="", help="synthetic N list, e.g. 20000,50000 (N >= 500k: not here)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", help="a feature store to read instead")
    p.add_argument("--npy", help="a [N, D] .npy of features to read instead")
    p.add_argument("--name", default=None, help="results name (default: synthetic, or the input's stem)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--budget", default="0.1")
    p.add_argument("--n-neighbors", type=int, default=64)
    p.add_argument("--knn-recall", type=float, default=0.9)
    p.add_argument("--backend", default="cpp")
    p.add_argument("--exact-max-n", type=int, default=10 ** 9,
                   help="skip the exact arm above this N (its graph costs N^2 similarities)")
    p.add_argument("--objective-max-n", type=int, default=50000,
                   help="compute the true dense objective only up to this N (it costs N x k x D; default: the "
                   "--exact-max-n of the crossover run)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--arm", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    if a.npy:
        inputs, name = [Path(a.npy)], a.name or Path(a.npy).stem
    elif a.store:
        inputs, name = [store_input(Path(a.store))], a.name or Path(a.store).name
    else:
        sizes = [int(s) for s in a.sizes.split(",") if s]
        inputs = [synthetic_input(n, a.dim, a.clusters, a.seed) for n in sizes]
        name = a.name or "synthetic"
    env = environment()
    rows = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for path in inputs:
        n = int(np.load(path, mmap_mode="r").shape[0])
        for arm in a.arms.split(","):
            if arm == "exact" and n > a.exact_max_n:
                print(f"n={n}: exact skipped (--exact-max-n {a.exact_max_n})", flush=True)
                continue
            row = run_arm(path, arm, a)
            row.update(env)
            rows.append(row)
            print(f"n={row['n']} d={row['d']} {arm}: graph {row['graph_seconds']:.2f} s, greedy "
                  f"{row['greedy_seconds']:.2f} s, total {row['total_seconds']:.2f} s, peak "
                  f"{row['peak_rss_bytes'] / 2**20:.0f} MB, recall {row.get('knn_recall', 1.0):.3f}, "
                  f"f(S) {row['true_objective']:.1f}", flush=True)
            with open(RESULTS / f"knn_index_{name}.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
    (RESULTS / f"knn_index_{name}.md").write_text(markdown(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
