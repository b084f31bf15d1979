"""Partitioned selection against the exact dense greedy: time, peak memory, TRUE objective and its ratio.

    python bench/bench_partitioned.py --synthetic 52000 --dim 256 --budget 0.15 --name synthetic_52k
    python bench/bench_partitioned.py --store path/to/store --budget 0.1 --name alpaca --skip-exact
    python bench/bench_partitioned.py --features x.npy --partitions 4,8 --methods kmeans --merges refined

Every configuration runs in its own process (``--one``), so the peak RSS it reports is that run's driver
alone; the workers' peaks come from the solver's profile. The objective of every pick set is the TRUE
facility-location objective f(S) = sum_i max_{j in S} s(i, j), computed here from the engine's similarity
columns over the picks (the separable merge's own ``objective_`` is the within-partition one, lower).
Results: ``bench/results/partitioned_<name>.jsonl`` (one line per configuration, with the environment)
and ``.md`` (a table), each with the device (CPU model and ISA flags), versions, date and command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from mads_fast.atomic import atomic_write  # noqa: E402


def environment() -> dict:
    """Device (CPU model, cores, AVX-512 flags), versions, commit and date."""
    import mads_fast
    from ceilings import cpu_description  # bench/: the CPU line every benchmark prints

    versions = {"numpy": np.__version__, "mads_fast": mads_fast.__version__, "python": platform.python_version()}
    for name in ("faiss", "ray"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"device": cpu_description(),
            **versions, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def synthetic(n: int, dim: int, clusters: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Clustered features (Gaussian blobs of varied size and spread), centred and unit-normalised, as the
    solver input in ``dtype`` (int8 quantised per row like the store's)."""
    from mads_fast.store import centre_normalise, quantize_rows_int8

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    weights = rng.dirichlet(np.ones(clusters))
    spread = rng.uniform(0.5, 1.5, clusters).astype(np.float32)
    out = np.empty((n, dim), dtype=np.dtype(dtype))
    mean = np.zeros(dim, dtype=np.float32)
    for start in range(0, n, 65536):
        b = min(n, start + 65536) - start
        c = rng.choice(clusters, size=b, p=weights)
        x = centres[c] + spread[c, None] * rng.standard_normal((b, dim)).astype(np.float32)
        x = centre_normalise(x, mean)
        if dtype == "int8":
            quantize_rows_int8(x, out[start:start + b])
        else:
            out[start:start + b] = x
    return out


def input_path(a) -> Path:
    """The solver-input .npy to run on (built and cached for a store or --synthetic)."""
    if a.store:
        from mads_fast.store import FeatureReader
        from mads_fast.store.solver_file import solver_input_file

        return solver_input_file(FeatureReader(a.store), dtype=a.solver_dtype)
    if a.features:
        return Path(a.features).resolve()
    cache = HERE / ".cache"
    cache.mkdir(exist_ok=True)
    path = cache / f"partitioned_synthetic_{a.synthetic}x{a.dim}_c{a.clusters}_{a.solver_dtype}.npy"
    if not path.exists():
        X = synthetic(a.synthetic, a.dim, a.clusters, a.solver_dtype)
        atomic_write(path, lambda f: np.save(f, X, allow_pickle=False))
    return path


def true_objective(X: np.ndarray, picks: np.ndarray, backend: str) -> float:
    """f(picks) over every row of X, from the engine's similarity columns (blocks of picks)."""
    from mads_fast.solver._backends import make_engine, prepare

    X, name = prepare(backend, X)
    engine = make_engine(name, X)
    cur = np.zeros(engine.n, dtype=np.float32)
    step = max(1, (256 << 20) // (4 * engine.n))
    for start in range(0, picks.size, step):
        S, _ = engine.columns(picks[start:start + step])
        np.maximum(cur, S.max(axis=0), out=cur)
    return float(cur.sum(dtype=np.float64))


def run_one(config: dict) -> dict:
    """One configuration in this process: fit, then the true objective of its picks."""
    from mads_fast.solver import FacilityLocation, PartitionedFacilityLocation

    path = config["path"]
    t0 = time.perf_counter()
    if config["method"] == "exact":
        X = np.load(path)
        fit = FacilityLocation(config["budget"], backend=config["backend"]).fit(X)
        workers_rss = []
        profile = {}
    else:
        fit = PartitionedFacilityLocation(config["budget"], config["partitions"], partition=config["method"],
                                          merge=config["merge"], backend=config["backend"],
                                          workers=config["workers"], ray=config["ray"]).fit(path)
        workers_rss = fit.profile_["worker_peak_rss_bytes"]
        profile = {key: fit.profile_.get(key) for key in ("sizes", "seconds", "reruns", "candidates",
                                                          "round_trips", "workers")}
    seconds = time.perf_counter() - t0
    from mads_fast.solver._partition_worker import peak_rss_bytes

    driver_rss = peak_rss_bytes()  # VmHWM: ru_maxrss would carry the parent bench's peak across fork + exec
    X = np.load(path, mmap_mode="r")
    objective = true_objective(np.asarray(X), fit.ranking_, config["backend"])
    return dict(config, seconds=seconds, driver_peak_rss_mb=driver_rss / 2**20,
                worker_peak_rss_mb=[r / 2**20 for r in workers_rss], objective=objective,
                own_objective=float(fit.objective_), picks=int(fit.ranking_.size), profile=profile)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=False)
    src.add_argument("--store", help="a feature store (its solver input is written once beside it)")
    src.add_argument("--features", help="an [N, D] int8/float32 .npy used as the solver input")
    src.add_argument("--synthetic", type=int, metavar="N", help="generate N clustered rows (cached in bench/.cache)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=64)
    p.add_argument("--solver-dtype", choices=("int8", "float32"), default="int8")
    p.add_argument("--budget", type=float, default=0.15, help="fraction of N (or a count when > 1)")
    p.add_argument("--partitions", default="2,4,8,16")
    p.add_argument("--methods", default="random,kmeans")
    p.add_argument("--merges", default="separable,refined")
    p.add_argument("--skip-exact", action="store_true", help="no exact dense greedy (N too large for it)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--ray", default=None)
    p.add_argument("--name", default=None, help="results go to bench/results/partitioned_<name>.{jsonl,md}")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one JSON configuration, print its result
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(json.loads(a.one))))
        return 0
    if not (a.store or a.features or a.synthetic):
        p.error("give --store, --features or --synthetic N")
    path = input_path(a)
    n = np.load(path, mmap_mode="r").shape[0]
    budget = int(a.budget) if a.budget > 1 else max(1, round(a.budget * n))
    name = a.name or (Path(a.store).name if a.store else Path(path).stem)
    base = dict(path=str(path), budget=budget, backend=a.backend, workers=a.workers, ray=a.ray, n=int(n))
    configs = [] if a.skip_exact else [dict(base, method="exact", partitions=1, merge=None)]
    for m in map(int, a.partitions.split(",")):
        for method in a.methods.split(","):
            for merge in a.merges.split(","):
                configs.append(dict(base, method=method, partitions=m, merge=merge))
    env = environment()
    env["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    rows = []
    for config in configs:
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"FAILED {config['method']} M={config['partitions']} {config['merge']}: {out.stderr[-2000:]}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        exact = next((r["objective"] for r in rows if r["method"] == "exact"), None)
        row["ratio"] = None if exact is None else row["objective"] / exact
        ratio = "" if row["ratio"] is None else f" ratio {row['ratio']:.5f}"
        print(f"N={n} k={budget} {row['method']:>6} M={row['partitions']:>2} {row['merge'] or '-':>9}: "
              f"{row['seconds']:8.2f} s  driver {row['driver_peak_rss_mb']:7.1f} MB  workers "
              f"{max(row['worker_peak_rss_mb'], default=0):7.1f} MB  objective {row['objective']:.3f}{ratio}",
              flush=True)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    lines = "".join(json.dumps(dict(env, **r)) + "\n" for r in rows)
    atomic_write(results / f"partitioned_{name}.jsonl", lambda f: f.write(lines.encode()))
    md = [f"# Partitioned selection: {name}", "",
          f"{env['device']}; numpy {env['numpy']}, faiss {env['faiss']}, ray {env['ray']}, mads_fast "
          f"{env['mads_fast']} ({env['commit']}), Python {env['python']}; {env['date']}", "",
          f"`{env['command']}`", "", f"N = {n:,}, budget k = {budget:,}; objective = the TRUE facility-location "
          "objective of each pick set; peak RSS: the driver process, and the largest worker", "",
          "| method | M | merge | seconds | driver MB | worker MB | objective | / exact |",
          "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.5f}"
        md.append(f"| {r['method']} | {r['partitions']} | {r['merge'] or '-'} | {r['seconds']:.2f} | "
                  f"{r['driver_peak_rss_mb']:.0f} | {max(r['worker_peak_rss_mb'], default=0):.0f} | "
                  f"{r['objective']:.3f} | {ratio} |")
    text = "\n".join(md) + "\n"
    atomic_write(results / f"partitioned_{name}.md", lambda f: f.write(text.encode()))
    print(f"wrote {results / f'partitioned_{name}.jsonl'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
