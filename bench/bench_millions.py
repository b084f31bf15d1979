"""Selection over millions, end to end from a store: wall time and peak memory of each scalable path.

Each path runs ``mads_fast.pipeline.solve`` on a real feature store (``bench/synthetic_store.py`` writes one
of N synthetic clustered int8 rows without a model) in a fresh child process, exactly what
``mads-fast solve --store S --budget B --indices-out picks.jsonl`` does: solver input, graph or partitions,
the greedy, every example's nearest pick and the CRAIG weights, the picks file. The child reports its wall
time, the driver's peak RSS (``VmHWM``) and the largest worker's (``RUSAGE_CHILDREN``: partition
workers are the driver's children), and the solver's profile (recall, nprobe, partition sizes, seconds).

    python bench/bench_millions.py --n 1000000 --dim 256 --paths knn-ivf,part-random-separable-16-knn
    python bench/bench_millions.py --n 10000000 --dim 128 --paths knn-ivf --n-neighbors 32

Paths: ``knn-ivf`` / ``knn-exact`` (mode knn with that index), ``dense`` (the exact dense greedy),
``part-<random|kmeans>-<separable|refined>-<M>[-knn]`` (partitioned; ``-knn``: each partition in knn mode).
A path that passes ``--timeout`` seconds is recorded as not finished, with the time it had. Results:
``bench/results/millions_<name>.{jsonl,md}`` with device (CPU model, ISA flags), versions, date, command.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

CHILD = r"""
import json, resource, sys, time, tempfile, os
from mads_fast.pipeline import solve
def plain(o):
    return o.item() if getattr(o, "size", 0) == 1 and hasattr(o, "item") else str(o)
cfg = json.loads(sys.argv[1])
out = tempfile.mkdtemp(prefix="mads-millions-")
t0 = time.perf_counter()
r = solve(cfg["store"], cfg["budget"], indices_out=os.path.join(out, "picks.jsonl"), **cfg["options"])
seconds = time.perf_counter() - t0
from mads_fast.solver._partition_worker import peak_rss_bytes
self_rss = peak_rss_bytes()  # VmHWM, reset by exec (ru_maxrss would carry this bench's own peak)
child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print("RESULT " + json.dumps(default=plain, obj=dict(seconds=seconds, driver_peak_rss=self_rss, worker_peak_rss=child_rss,
      picks=int(r.indices.size), objective=float(r.objective), weights_sum=int(r.weights.sum()),
      timings=r.timings, profile={k: v for k, v in r.profile.items() if len(json.dumps(v, default=plain)) < 2000})))
"""


def path_options(name: str, a) -> dict:
    """solve() keywords for a path name (see the module doc)."""
    common = dict(solver_dtype=a.solver_dtype, n_neighbors=a.n_neighbors)
    if name == "dense":
        return dict(common, mode="dense")
    if name in ("knn-ivf", "knn-exact"):
        return dict(common, mode="knn", knn_index=name.split("-")[1], knn_recall=a.knn_recall)
    parts = name.split("-")
    if parts[0] == "part" and len(parts) in (4, 5):
        opts = dict(common, partitions=int(parts[3]), partition=parts[1], merge=parts[2], workers=a.workers)
        if len(parts) == 5 and parts[4] == "knn":
            opts.update(mode="knn", knn_recall=a.knn_recall)
        return opts
    raise SystemExit(f"bench_millions: unknown path {name!r}")


def run_path(store: Path, name: str, a) -> dict:
    cfg = dict(store=str(store), budget=a.budget, options=path_options(name, a))
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True,
                              timeout=a.timeout, cwd=str(HERE.parent))
    except subprocess.TimeoutExpired:
        return dict(path=name, finished=False, seconds=time.perf_counter() - t0, note=f"stopped at {a.timeout} s")
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return dict(path=name, finished=False, seconds=time.perf_counter() - t0, note=tail[0][:300])
    out = json.loads(line[len("RESULT "):])
    return dict(path=name, finished=True, **out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--store", help="the store to read (default: bench/.cache/syn_<n>_<dim>, written when missing)")
    p.add_argument("--paths", default="knn-ivf")
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--solver-dtype", default="int8", choices=("int8", "float32"))
    p.add_argument("--n-neighbors", type=int, default=64)
    p.add_argument("--knn-recall", type=float, default=0.9)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds a path may run")
    p.add_argument("--name", default=None, help="results name (default: <n>x<dim>)")
    a = p.parse_args(argv)

    from bench_partitioned import environment
    from mads_fast.atomic import atomic_write
    from synthetic_store import write_synthetic_store

    store = Path(a.store) if a.store else HERE / ".cache" / f"syn_{a.n}_{a.dim}"
    t0 = time.perf_counter()
    if not a.store:
        write_synthetic_store(store, a.n, dim=a.dim, clusters=a.clusters)
    store_seconds = time.perf_counter() - t0
    env = environment()
    load = os.getloadavg()[0]
    name = a.name or f"{a.n // 1000}kx{a.dim}" if a.n < 10**6 else a.name or f"{a.n // 10**6}Mx{a.dim}"
    rows = []
    for path in a.paths.split(","):
        row = dict(run_path(store, path, a), n=a.n, dim=a.dim, budget=a.budget, solver_dtype=a.solver_dtype,
                   n_neighbors=a.n_neighbors, load_average=round(os.getloadavg()[0], 2), **env)
        rows.append(row)
        print(json.dumps(row), flush=True)
        jsonl = "".join(json.dumps(r) + "\n" for r in rows).encode()
        atomic_write(HERE / "results" / f"millions_{name}.jsonl", lambda f: f.write(jsonl))
    cmd = "python bench/bench_millions.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# Selection over {a.n:,} rows x {a.dim}, end to end from a store ({env['date']})", "",
             f"Device: {env['device']}; numpy {env['numpy']}, faiss {env['faiss']}, mads_fast {env['mads_fast']} "
             f"({env['commit']}).", "",
             f"Command: `{cmd}`. Synthetic clustered int8 store ({a.clusters} clusters; written in "
             f"{store_seconds:.0f} s when new), solver input {a.solver_dtype}, budget {a.budget:g} of N, "
             f"{a.n_neighbors} neighbours where a graph is built; load average at the start {load:.2f}. "
             "Wall time is `solve()` in a fresh process: solver input, graph or partitions, greedy, nearest "
             "picks, weights, the picks file.", "",
             "| path | finished | wall s | driver peak RSS GB | largest worker peak GB | recall@K | detail |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        prof = r.get("profile") or {}
        detail = r.get("note", "")
        if r.get("finished"):
            t = r.get("timings", {})
            detail = f"input {t.get('load_solver_input', 0):.0f} s, solve {t.get('solve', 0):.0f} s"
        lines.append(f"| {r['path']} | {'yes' if r.get('finished') else 'no'} | {r['seconds']:.0f} | "
                     f"{r.get('driver_peak_rss', 0) / 2**30:.2f} | {r.get('worker_peak_rss', 0) / 2**30:.2f} | "
                     f"{'' if prof.get('knn_recall') is None else format(prof['knn_recall'], '.3f')} | {detail} |")
    atomic_write(HERE / "results" / f"millions_{name}.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
