"""Extraction on Ray against one process: records/s and tokens/s on the same Alpaca records, same settings.

Runs, in one process and one session (ratios, never absolute times across runs):
  single   one process, every core as torch threads (the plain path);
  ray 1x2  Ray, 1 CPU worker with 2 threads;
  ray 2x1  Ray, 2 CPU workers with 1 thread each;
(on a GPU machine add --gpus: 1 worker on the GPU, and 2 workers sharing it at 0.5 GPU each).
Every run writes a fresh store; the Ray stores are checked byte for byte against the single-process one.
Throughput is the shard loop alone (model load, calibration and Ray start-up excluded); the start-up
(ray.init, actors, each worker's model load) is reported on its own. On 2 cores Ray cannot be faster:
the figure to read is its overhead.

    python bench/bench_scale.py --records 1000                 # CPU, SmolLM2-135M-Instruct (the default)
    python bench/bench_scale.py --records 8000 --gpus          # GPU machine
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ALPACA = HERE.parents[1] / "shared" / "data" / "alpaca_cleaned.jsonl"


def store_hashes(store: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.iterdir())
            if p.name != "manifest.json"}


def command(a) -> str:
    return (f"python bench/bench_scale.py --records {a.records} --max-length {a.max_length} --shard-size "
            f"{a.shard_size} --repeat {a.repeat}{' --gpus' if a.gpus else ''}")


def write_results(out: str, rows: list, cmd: str, rounds: int, note: str = "") -> None:
    """``out``.jsonl (every row) and ``out``.md (the medians of each run over the rounds, as ratios)."""
    import statistics

    from mads_fast.atomic import atomic_write

    summary = []
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == name]
        summary.append(dict(mine[0], tokens_per_s=statistics.median(r["tokens_per_s"] for r in mine),
                            records_per_s=statistics.median(r["records_per_s"] for r in mine),
                            startup_seconds=None if mine[0]["startup_seconds"] is None else
                            statistics.median(r["startup_seconds"] for r in mine),
                            same_bytes=None if mine[0]["same_bytes"] is None else all(r["same_bytes"] for r in mine),
                            spread=f"{min(r['tokens_per_s'] for r in mine):,.0f}-{max(r['tokens_per_s'] for r in mine):,.0f}"))
    base = summary[0]
    init = base.get("ray_init_seconds")
    load = base.get("load_average")
    lines = [f"# Extraction on Ray vs one process ({base['date']})", "",
             f"Device: {base['device']}; torch {base['torch']}, transformers {base['transformers']}, Ray {base['ray']}, "
             f"mads_fast {base['mads_fast']} ({base['commit']}).", "",
             f"Command: `{cmd}` (SmolLM2-135M-Instruct, fp16 store, {base['records']:,} Alpaca records, "
             f"{base['tokens']:,} tokens" + ("" if init is None else f"; ray.init took {init:.1f} s") +
             f"). Medians of {rounds} interleaved round(s)" +
             ("" if load is None else f"; load average at the start {load:.2f}") + ".", "",
             "| run | records/s | tokens/s (range) | vs one process | start-up s | store bytes = one process |",
             "|---|---|---|---|---|---|"]
    for row in summary:
        ratio = row["tokens_per_s"] / base["tokens_per_s"]
        lines.append(f"| {row['run']} | {row['records_per_s']:,.1f} | {row['tokens_per_s']:,.0f} ({row['spread']}) | "
                     f"{ratio:.3f} | "
                     f"{'' if row['startup_seconds'] is None else row['startup_seconds']} | "
                     f"{'' if row['same_bytes'] is None else ('yes' if row['same_bytes'] else 'NO')} |")
    lines += ["", "Throughput is the shard loop alone (model load excluded). Start-up: starting the actors, each "
              "worker's model load, the probe and the driver's set-up (ray.init apart, above)."]
    if note:
        lines += ["", note]
    jsonl = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write(f"{out}.jsonl", lambda f: f.write(jsonl))
    atomic_write(f"{out}.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=125, help="records per shard (125: 8 shards of 1,000)")
    parser.add_argument("--gpus", action="store_true", help="GPU runs instead of the CPU ones")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds; each round runs every configuration once, in turn, so slow drift of a shared "
                        "machine hits all alike (the table takes each one's median)")
    parser.add_argument("--out", default=str(HERE / "results" / "scale_cpu"), help="results prefix (.jsonl, .md)")
    parser.add_argument("--summarise", metavar="JSONL", help="only write the table (.md beside --out) from the rows of "
                        "an earlier, possibly stopped, run")
    parser.add_argument("--note", default="", help="a paragraph appended to the table (what the run was up against)")
    a = parser.parse_args(argv)
    if a.summarise:
        rows = [json.loads(line) for line in Path(a.summarise).read_text(encoding="utf-8").splitlines() if line]
        write_results(a.out, rows, command(a), len(rows) // len(dict.fromkeys(r["run"] for r in rows)), a.note)
        return 0

    import ray

    from bench_quality import environment
    from mads_fast.atomic import atomic_write
    from mads_fast.extraction import extract

    load_start = os.getloadavg()[0]
    env = environment("cuda" if a.gpus else "cpu")
    env["ray"] = ray.__version__
    work = Path(tempfile.mkdtemp(prefix="mads-scale-"))
    data = work / "alpaca.jsonl"
    with open(ALPACA, encoding="utf-8") as fh:
        data.write_text("".join(next(fh) for _ in range(a.records)), encoding="utf-8")
    options = dict(max_length=a.max_length, shard_size=a.shard_size, progress=False)
    if a.gpus:
        options["device"] = "cuda"
    rows = []
    init_seconds = 0.0

    def record(name, stats, startup=None, same=None):
        loop = stats.extra["loop_seconds"]
        row = dict(run=name, records=stats.n_records, tokens=stats.tokens, loop_seconds=round(loop, 3),
                   records_per_s=round(stats.n_records / loop, 2), tokens_per_s=round(stats.tokens / loop, 1),
                   startup_seconds=None if startup is None else round(startup, 2), same_bytes=same,
                   ray_init_seconds=round(init_seconds, 2), load_average=round(load_start, 2), **env)
        rows.append(row)
        print(json.dumps(row), flush=True)
        jsonl = "".join(json.dumps(r) + "\n" for r in rows).encode()
        atomic_write(f"{a.out}.jsonl", lambda f: f.write(jsonl))  # every row kept, should the run be stopped

    try:
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), num_gpus=1 if a.gpus else 0, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        init_seconds = time.perf_counter() - t0
        plans = [("single", None, None)] + ([("ray 1 GPU worker", 1, 1.0), ("ray 2 workers x 0.5 GPU", 2, 0.5)]
                                            if a.gpus else [("ray 1 worker x 2 threads", 1, None),
                                                            ("ray 2 workers x 1 thread", 2, None)])
        reference = None
        for round_ in range(a.repeat):
            for name, workers, gpus in plans:
                store = work / f"{name.replace(' ', '_')}_{round_}"
                if workers is None:
                    stats = extract(data, store, **options)
                    if reference is None:
                        reference = store_hashes(store)
                    record(name, stats)
                else:
                    stats = extract(data, store, ray="local", workers=workers, gpus_per_worker=gpus, **options)
                    record(name, stats, startup=stats.seconds - stats.extra["loop_seconds"],
                           same=store_hashes(store) == reference)
                shutil.rmtree(store, ignore_errors=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    write_results(a.out, rows, command(a), a.repeat, a.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
