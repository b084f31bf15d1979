"""Peak RSS of reading a 1M-record JSONL corpus and of writing a 15% core set from it, before and after.

The corpus is made from ../shared/data/alpaca_cleaned.jsonl by repetition, each line given an "id" field
(``{"id": k, `` put before the original line's first key) so every record is distinct. Each measurement
runs in a fresh subprocess with PYTHONPATH set to the checkout being measured:

    import mads_fast.data (numpy, json, hashlib)   -> baseline RSS, the peak (VmHWM) reset here
    read_records(corpus)                             -> peak and held RSS beyond the baseline, seconds
    write_records(rs, 15% picks in random order)     -> peak beyond the baseline; the write phase's own peak
                                                        beyond the RSS it started from; seconds

Bytes per record are (RSS beyond the baseline) / records. The peak is the kernel's high-water mark
(/proc/self/status VmHWM, reset through /proc/self/clear_refs; resource.getrusage's ru_maxrss, which cannot
be reset, is recorded too). Ids, fingerprints and the written bytes are compared between the checkouts.

    python bench/bench_records_memory.py --before /tmp/base-data --after .

writes bench/results/records_memory.md (the latest run, with this command) and appends a row per
measurement to bench/results/records_memory.jsonl. The corpus goes to /tmp (``--corpus``), never the repo.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "data" / "alpaca_cleaned.jsonl"
RESULTS = REPO / "bench" / "results"


def make_corpus(path: Path, n: int) -> None:
    """``n`` distinct Alpaca records: the real lines in turn, each with ``"id": k`` first."""
    lines = ALPACA.read_bytes().splitlines()
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        for k in range(n):
            line = lines[k % len(lines)]
            assert line.startswith(b"{")
            f.write(b'{"id": %d, ' % k + line[1:] + b"\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- child

def _status(key: str) -> int:
    """A /proc/self/status value in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # resets the high-water RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def child(what: str, corpus: str, out: str, fraction: float) -> dict:
    import resource

    import numpy as np

    import mads_fast.data as data

    rng = np.random.default_rng(0)
    row = {"module": data.__file__}
    row["baseline_rss"] = _status("VmRSS")
    row["peak_reset"] = _reset_peak()
    t0 = time.perf_counter()
    rs = data.read_records(corpus)
    row["read_s"] = time.perf_counter() - t0
    n = len(rs)
    row.update(n_records=n, read_peak=_status("VmHWM") - row["baseline_rss"],
               read_held=_status("VmRSS") - row["baseline_rss"], fingerprint=rs.fingerprint,
               ids_sha256=hashlib.sha256("\n".join(rs.ids[k] for k in range(0, n, 997)).encode()).hexdigest())
    if what == "read" and hasattr(rs, "load"):
        import pickle

        row["pickle_bytes"] = len(pickle.dumps(rs))
        for name, positions in (("contiguous", np.arange(n // 2, min(n, n // 2 + 4096))),
                                ("random", np.sort(rng.choice(n, size=min(n, 4096), replace=False)))):
            t0 = time.perf_counter()
            view = rs.load(positions)
            row[f"load_4096_{name}_s"] = time.perf_counter() - t0
            del view
    if what == "write":
        picks = rng.permutation(n)[:int(round(fraction * n))].copy()   # pick order, as a solver gives it
        before_write = _status("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        data.write_records(rs, picks, out)
        row["write_s"] = time.perf_counter() - t0
        peak = _status("VmHWM")
        row.update(n_picks=len(picks), write_phase_peak=peak - before_write,
                   write_peak=max(peak, row["read_peak"] + row["baseline_rss"]) - row["baseline_rss"])
        h = hashlib.sha256()
        with open(out, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        row["output_sha256"] = h.hexdigest()
        os.unlink(out)
    row["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


# ---------------------------------------------------------------------------------------------- parent

def _git(code: Path, *args) -> str:
    try:
        return subprocess.run(["git", "-C", str(code), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def measure(code: Path, what: str, corpus: Path, fraction: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code.resolve()))
    out = Path("/tmp") / f"records_memory_core_{os.getpid()}.jsonl"
    cmd = [sys.executable, __file__, "--child", what, "--corpus", str(corpus), "--out", str(out),
           "--fraction", str(fraction)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/tmp")
    if done.returncode:
        sys.exit(f"child failed ({code}, {what}):\n{done.stderr}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    expected = str((code / "mads_fast" / "data.py").resolve())
    if os.path.realpath(row["module"]) != expected:
        sys.exit(f"measured {row['module']}, not {expected}: is PYTHONPATH shadowed?")
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="checkout of the code before (e.g. a worktree of the base commit)")
    ap.add_argument("--after", type=Path, default=REPO, help="checkout of the code after (default: this one)")
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/alpaca_1m.jsonl"))
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--fraction", type=float, default=0.15, help="core set size for the write (0.15)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement (the median time is shown)")
    ap.add_argument("--no-save", action="store_true", help="print only; write nothing under bench/results")
    ap.add_argument("--child", choices=["read", "write"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, str(a.corpus), a.out, a.fraction)))
        return

    if not a.corpus.exists() or sum(1 for _ in open(a.corpus, "rb")) != a.records:
        print(f"making {a.corpus} ({a.records:,} records from {ALPACA.name}) ...", flush=True)
        make_corpus(a.corpus, a.records)
    import numpy as np

    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "kernel": platform.release(), "corpus": str(a.corpus),
            "corpus_bytes": a.corpus.stat().st_size, "records": a.records, "fraction": a.fraction,
            "load": os.getloadavg()[0]}
    print(f"{meta['date']}; {meta['cpu']} ({meta['cores']} cores); python {meta['python']}, numpy {meta['numpy']}; "
          f"corpus {a.corpus} {meta['corpus_bytes'] / 1e6:,.0f} MB, {a.records:,} records")
    arms = [("before", a.before), ("after", a.after)] if a.before else [("after", a.after)]
    rows = {}
    for label, code in arms:
        commit = _git(code, "rev-parse", "--short", "HEAD") + ("+dirty" if _git(code, "status", "--porcelain",
                                                                               "--", "mads_fast") else "")
        for what in ("read", "write"):
            runs = [measure(code, what, a.corpus, a.fraction) for _ in range(a.repeat)]
            row = dict(runs[-1], label=label, code=str(code), commit=commit, what=what, **meta)
            for key in ("read_s", "write_s"):
                if key in row:
                    row[key + "_runs"] = [r[key] for r in runs]
                    row[key] = float(np.median(row[key + "_runs"]))
            for key in ("read_peak", "read_held", "write_peak", "write_phase_peak"):
                if key in row:
                    row[key + "_runs"] = [r[key] for r in runs]
                    row[key] = int(max(row[key + "_runs"]))
            rows[label, what] = row
            n = row["n_records"]
            line = (f"{label:6s} {commit:>12s} {what:5s}: read {row['read_s']:6.1f} s, peak {row['read_peak'] / 2**20:8.1f} MiB "
                    f"({row['read_peak'] / n:7.1f} B/record), held {row['read_held'] / n:7.1f} B/record")
            if what == "write":
                line += (f"; write {row['n_picks']:,} picks {row['write_s']:5.1f} s, peak {row['write_peak'] / n:7.1f} "
                         f"B/record, write phase {row['write_phase_peak'] / n:6.1f} B/record")
            if "pickle_bytes" in row:
                line += (f"; pickle {row['pickle_bytes'] / n:.1f} B/record; load 4096 contiguous "
                         f"{row['load_4096_contiguous_s'] * 1e3:.0f} ms, random {row['load_4096_random_s'] * 1e3:.0f} ms")
            print(line, flush=True)
    if a.before:
        b, f = rows["before", "write"], rows["after", "write"]
        same = {"fingerprint": b["fingerprint"] == f["fingerprint"], "ids": b["ids_sha256"] == f["ids_sha256"],
                "written bytes": b["output_sha256"] == f["output_sha256"]}
        print("before == after:", ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
        if not all(same.values()):
            sys.exit("before and after disagree")
    if a.no_save:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "records_memory.jsonl", "a") as fh:
        for row in rows.values():
            fh.write(json.dumps(row) + "\n")
    write_markdown(rows, meta, a)


def write_markdown(rows: dict, meta: dict, a) -> None:
    import numpy as np

    def mib(x):
        return f"{x / 2**20:,.1f} MiB"

    def per(x, n):
        return f"{x / n:,.1f}"

    cmd = "python bench/bench_records_memory.py " + " ".join(sys.argv[1:])
    head = f"`{cmd}`" + (f" (before: `git worktree add {a.before} <its commit>`)" if a.before else "")
    lines = [
        f"# Records memory: reading and writing a {meta['records']:,}-record JSONL corpus",
        "",
        f"{head} — {meta['date']}; {meta['cpu']} ({meta['cores']} cores), Linux {meta['kernel']}; "
        f"python {meta['python']}, numpy {meta['numpy']}; load average {meta['load']:.2f} at the start.",
        "",
        f"Corpus: {meta['records']:,} records ({meta['corpus_bytes'] / 1e6:,.0f} MB), "
        f"`../shared/data/alpaca_cleaned.jsonl` repeated with an `\"id\": k` field first in each line (every record "
        f"distinct), in `{meta['corpus']}`. Write: a {meta['fraction']:.0%} core set, picks in random order. Each "
        "number is from a fresh subprocess: RSS beyond the baseline taken after `import mads_fast.data` "
        "(interpreter, numpy, json), peak = the kernel's high-water mark (VmHWM, reset at the baseline); "
        "the write phase is its own peak beyond the RSS it started from.",
        "",
        "| code | commit | read s | read peak | B/record | held after read, B/record | write s | peak read+write, "
        "B/record | write phase, B/record |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    def secs(values):
        return f"{np.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"

    for label in ("before", "after"):
        if (label, "read") not in rows:
            continue
        r, w = rows[label, "read"], rows[label, "write"]
        n = r["n_records"]
        reads = r["read_s_runs"] + w["read_s_runs"]   # the write runs read the corpus first: same work
        lines.append(f"| {label} | `{r['commit']}` | {secs(reads)} | {mib(r['read_peak'])} | {per(r['read_peak'], n)} | "
                     f"{per(r['read_held'], n)} | {secs(w['write_s_runs'])} | {per(w['write_peak'], n)} | "
                     f"{per(w['write_phase_peak'], n)} |")
    if ("before", "read") in rows:
        b, f = rows["before", "read"], rows["after", "read"]
        bw, fw = rows["before", "write"], rows["after", "write"]
        med = lambda v: float(np.median(v))   # noqa: E731
        tb, tf = med(b["read_s_runs"] + bw["read_s_runs"]), med(f["read_s_runs"] + fw["read_s_runs"])
        lines += ["",
                  f"Ratios before / after: read peak {b['read_peak'] / f['read_peak']:,.0f}x, read+write peak "
                  f"{bw['write_peak'] / fw['write_peak']:,.0f}x; read time {tf / tb:.2f}x of before, "
                  f"write time {fw['write_s'] / bw['write_s']:.2f}x of before. Fingerprint, ids and the written "
                  "core set's bytes are the same before and after.",
                  "",
                  f"Times are medians (min–max) of {a.repeat} runs of each measurement (read: the read runs and the "
                  "write runs' reads together); this is a shared 2-core machine, so runs differ by up to ~20%. "
                  "Memory columns are the largest of the runs."]
    after = rows.get(("after", "read"), {})
    if "pickle_bytes" in after:
        n = after["n_records"]
        lines += ["", f"After: the RecordSet pickles to {after['pickle_bytes'] / n:.1f} bytes a record "
                      f"({mib(after['pickle_bytes'])}); `rs.load` of 4,096 records takes "
                      f"{after['load_4096_contiguous_s'] * 1e3:.0f} ms for a contiguous shard and "
                      f"{after['load_4096_random_s'] * 1e3:.0f} ms for random positions (parsed and checked "
                      "against their ids)."]
    lines += ["", "Rows of every run: `bench/results/records_memory.jsonl`.", ""]
    (RESULTS / "records_memory.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
