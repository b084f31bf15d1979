"""Does the core set train better? Fine-tune the target model on each arm's subset and score it.

    python bench/bench_quality.py --out bench/.cache/quality --pool 5000 --arms mads,random,text,longest,full
    python bench/bench_quality.py --out DIR --arms all --device cuda           # the full pool (51,424 + 500 held out)
    python bench/bench_quality.py --out DIR --summary-only --results bench/results/quality_cpu

Stages (``bench/quality/``): split the Alpaca file into a pool and a held-out slice -> pick each arm's
subset at the same budget -> fine-tune the target model on it, in its own process, once at equal example
count (``examples``) and once at equal training tokens (``tokens``: every budget arm trains on the
tokens of one epoch of ``--token-reference``) -> score on AlpacaEval, GSM8K, MMLU and the held-out
slice -> results JSONL, Markdown table and plot with bootstrap intervals.

Everything is kept in ``--out`` as it finishes (picks per arm, one run file per arm and regime), so a
rerun skips what is done: a run cut off at a time limit resumes. Settings are written once; a rerun
with other settings is refused (use another ``--out``). ``--tiny`` is the harness check that CI runs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mads_fast.atomic import atomic_write  # noqa: E402
from quality import arms as arms_mod  # noqa: E402
from quality import corpus, summary  # noqa: E402
from quality.score import ScoringSet, nll_items  # noqa: E402
from quality.train import TrainSettings, plan_steps, train  # noqa: E402

SHARED = HERE.parent.parent / "shared"
REGIMES = ("examples", "tokens")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="work folder (picks, runs, results)")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "alpaca_cleaned.jsonl")
    ap.add_argument("--eval-dir", type=Path, default=SHARED / "eval")
    ap.add_argument("--model", help="target and selector model (.gguf or HF dir; default: embedded SmolLM2)")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    ap.add_argument("--arms", default="base,mads,random,text,longest,full",
                    help=f"comma list of {', '.join(arms_mod.ALL_ARMS)} or groups {', '.join(arms_mod.GROUPS)}")
    ap.add_argument("--regimes", default="examples,tokens", help="examples, tokens, or both")
    ap.add_argument("--pool", type=int, default=0, help="pool size (0: every record not held out)")
    ap.add_argument("--heldout", type=int, default=corpus.DEFAULT_HELDOUT, help="held-out Alpaca records")
    ap.add_argument("--budget", type=float, default=0.15, help="fraction of the pool per budget arm")
    ap.add_argument("--token-reference", default="random0", help="arm whose one-epoch tokens set the "
                    "equal-tokens budget")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--tokens-per-step", type=int, default=16384)
    ap.add_argument("--micro-tokens", type=int, default=8192)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpaca-eval-items", type=int, default=805)
    ap.add_argument("--gsm8k-items", type=int, default=1319)
    ap.add_argument("--mmlu-items", type=int, default=2000)
    ap.add_argument("--mmlu-shots", type=int, default=5)
    ap.add_argument("--heldout-items", type=int, default=500)
    ap.add_argument("--score-tokens", type=int, default=8192, help="padded tokens per scoring batch")
    ap.add_argument("--score-max-length", type=int, default=None,
                    help="truncate scored items to N tokens (default: --max-length); 5-shot MMLU needs ~1024")
    ap.add_argument("--tiny", action="store_true", help="harness check: 60-record pool, a few steps and items")
    ap.add_argument("--in-process", action="store_true", help="run arms in this process (default: one each)")
    ap.add_argument("--summary-only", action="store_true", help="rebuild the results from finished runs")
    ap.add_argument("--results", type=Path, help="also copy results to PREFIX.jsonl / .md / .png")
    ap.add_argument("--title", default="", help="heading of the Markdown table")
    ap.add_argument("--worker", nargs=2, metavar=("ARM", "REGIME"), help=argparse.SUPPRESS)
    if ap.parse_known_args(argv)[0].tiny:   # tiny defaults; a flag given explicitly still wins
        ap.set_defaults(pool=60, heldout=12, alpaca_eval_items=6, gsm8k_items=6, mmlu_items=6, heldout_items=6,
                        mmlu_shots=1, epochs=2, lr=2e-3, tokens_per_step=1024, micro_tokens=1024, max_length=128)
    return ap.parse_args(argv)


def settings_of(args) -> dict:
    train_settings = TrainSettings(epochs=args.epochs, lr=args.lr, tokens_per_step=args.tokens_per_step,
                                   micro_tokens=args.micro_tokens, max_length=args.max_length, seed=args.seed)
    return {"data": str(args.data), "eval_dir": str(args.eval_dir), "model": args.model,
            "model_name": Path(args.model).name if args.model else "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)",
            "pool": args.pool, "heldout": args.heldout, "budget_fraction": args.budget,
            "token_reference": args.token_reference, "train": train_settings.to_dict(),
            "items": {"alpaca_eval": args.alpaca_eval_items, "gsm8k": args.gsm8k_items, "mmlu": args.mmlu_items,
                      "mmlu_shots": args.mmlu_shots, "heldout": args.heldout_items}}


def atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")))


class Work:
    """The work folder: settings, pool, picks and runs, each file written once and atomically."""

    def __init__(self, root: Path, settings: dict):
        self.root = root
        self.settings = settings
        self.arms = root / "arms"
        self.runs = root / "runs"

    @classmethod
    def open(cls, root: Path, settings: dict) -> "Work":
        root.mkdir(parents=True, exist_ok=True)
        path = root / "settings.json"
        if path.exists():
            old = json.loads(path.read_text())
            diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            if diff:
                sys.exit(f"bench_quality: {path}: these settings differ from the ones this folder was made with: "
                         f"{', '.join(diff)} (use another --out)")
        else:
            atomic_json(path, settings)
        return cls(root, settings)

    def prepare_pool(self) -> dict:
        """Write pool.jsonl (the pool's lines, byte-identical) and split.json once; return the split."""
        split_path = self.root / "split.json"
        if split_path.exists():
            return json.loads(split_path.read_text())
        with open(self.settings["data"], "rb") as fh:
            lines = [line for line in fh if line.strip()]
        split = corpus.split_positions(len(lines), heldout=self.settings["heldout"], pool=self.settings["pool"])
        atomic_write(self.root / "pool.jsonl", lambda f: f.writelines(
            lines[i] if lines[i].endswith(b"\n") else lines[i] + b"\n" for i in split.pool))
        info = {"n_records": len(lines), "pool": split.pool.tolist(), "heldout": split.heldout.tolist(),
                "budget": max(1, int(round(self.settings["budget_fraction"] * len(split.pool))))}
        atomic_json(split_path, info)
        return info

    def arm_path(self, arm: str) -> Path:
        return self.arms / f"{arm}.json"

    def run_path(self, arm: str, regime: str) -> Path:
        return self.runs / f"{arm}@{regime}.json"


def load_common(work: Work):
    split = work.prepare_pool()
    records = corpus.read_jsonl(Path(work.settings["data"]))
    pool = [records[i] for i in split["pool"]]
    return split, records, pool


def environment(device: str) -> dict:
    import torch
    import transformers

    import mads_fast

    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                     platform.processor())
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        isa = [f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512_vnni", "avx512f"))]
        name = f"{model}, {os.cpu_count()} cores, {' '.join(sorted(isa)) or 'no AVX-512'}"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "mads_fast": mads_fast.__version__, "python": platform.python_version(), "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def resolve_device(device):
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------
# one arm: select, or train and score


def do_select(work: Work, arm: str, device: str) -> dict:
    path = work.arm_path(arm)
    if path.exists():
        return json.loads(path.read_text())
    split, _, pool = load_common(work)
    pool_lengths = pool_token_lengths(work, pool) if arm == "longest" else None
    print(f"[select] {arm}: {len(pool) if arm == 'full' else split['budget']:,} of {len(pool):,}", file=sys.stderr,
          flush=True)
    got = arms_mod.select_arm(arm, budget=split["budget"], pool_records=pool, pool_lengths=pool_lengths,
                              pool_path=work.root / "pool.jsonl", work=work.root, model=work.settings["model"],
                              device=device)
    info = {"arm": arm, "indices": got["indices"].tolist(), "seconds": got["seconds"]}
    atomic_json(path, info)
    return info


_PRISTINE: dict = {}   # (model, device) -> (LoadedModel, its untrained weights on the CPU), for --in-process


def load_target(work: Work, device: str):
    """The untrained target in float32. In one process arms share one load: the weights are put back
    from a CPU copy taken before the first arm trained (a GGUF load de-quantises for ~20 s)."""
    from mads_fast.model import load_model

    key = (work.settings["model"], str(device))
    if key in _PRISTINE:
        loaded, weights = _PRISTINE[key]
        loaded.model.load_state_dict(weights)
        loaded.model.zero_grad(set_to_none=True)
        return loaded
    loaded = load_model(work.settings["model"], device=device, dtype="fp32")
    _PRISTINE[key] = (loaded, {k: v.detach().to("cpu", copy=True) for k, v in loaded.model.state_dict().items()})
    return loaded


def pool_token_lengths(work: Work, pool) -> np.ndarray:
    """Untruncated target-model tokens of every pool example (what ``longest`` ranks by)."""
    from transformers import AutoTokenizer

    cache = work.root / "cache" / "pool_lengths.npy"
    if cache.exists():
        return np.load(cache)
    model = work.settings["model"]
    if model is None:
        from mads_fast.model import default_model_path

        path = default_model_path()
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    else:
        p = Path(model)
        tok = (AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name, local_files_only=True) if p.is_file()
               else AutoTokenizer.from_pretrained(p, local_files_only=True))
    toks = corpus.tokenize_pairs(tok, [corpus.alpaca_pair(r) for r in pool], max_length=1 << 30)
    lengths = np.array([len(t.ids) for t in toks], dtype=np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, lambda f: np.save(f, lengths))
    return lengths


def token_budget(work: Work, tokenizer, pool) -> int:
    ref = json.loads(work.arm_path(work.settings["token_reference"]).read_text())["indices"]
    ex = corpus.tokenize_pairs(tokenizer, [corpus.alpaca_pair(pool[i]) for i in ref], work.settings["train"]["max_length"])
    return int(sum(len(e.ids) for e in ex)) * int(work.settings["train"]["epochs"])


def do_train(work: Work, arm: str, regime: str, device: str) -> None:
    """Train the target on ``arm`` in ``regime`` ('none' for base), score it, write the run's two files."""
    import torch

    out = work.run_path(arm, regime)
    if out.exists():
        return
    split, records, pool = load_common(work)
    s = work.settings
    if regime == "tokens" and arm == s["token_reference"] and work.run_path(arm, "examples").exists():
        # Its token budget is its own epoch: the plan is the examples plan, so the run is that run.
        scores = work.run_path(arm, "examples").with_suffix(".npz").read_bytes()
        atomic_write(out.with_suffix(".npz"), lambda f: f.write(scores))
        row = json.loads(work.run_path(arm, "examples").read_text())
        atomic_json(out, {**row, "regime": "tokens", "same_run_as": "examples"})
        return
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()   # per run, also when arms share a process
    t0 = time.perf_counter()
    loaded = load_target(work, device)
    model, tok = loaded.model, loaded.tokenizer
    load_s = time.perf_counter() - t0
    ev = corpus.load_eval(Path(s["eval_dir"]), records, np.array(split["heldout"]),
                          alpaca_eval_items=s["items"]["alpaca_eval"], gsm8k_items=s["items"]["gsm8k"],
                          mmlu_items=s["items"]["mmlu"], heldout_items=s["items"]["heldout"])
    scoring = ScoringSet.build(tok, ev, max_length=s.get("score_max_length") or s["train"]["max_length"],
                               mmlu_shots=s["items"]["mmlu_shots"])
    row = {"arm": arm, "regime": regime, "model_load_s": load_s}
    settings = TrainSettings(**s["train"])
    if arm != "base":
        picks = json.loads(work.arm_path(arm).read_text())
        row["select_s"] = picks["seconds"]
        examples = corpus.tokenize_pairs(tok, [corpus.alpaca_pair(pool[i]) for i in picks["indices"]],
                                         settings.max_length)
        budget = token_budget(work, tok, pool) if regime == "tokens" else None
        plan = plan_steps([len(e.ids) for e in examples], epochs=settings.epochs,
                          tokens_per_step=settings.tokens_per_step, seed=settings.seed, token_budget=budget)
        # The training loss before and after, on the same fixed sample of the arm's own examples.
        probe = [examples[i] for i in np.random.default_rng(0).permutation(len(examples))[:64]]
        before = nll_items(model, probe, s.get("score_tokens", 8192))
        print(f"[train] {arm} @ {regime}: {len(examples):,} examples, {len(plan)} steps", file=sys.stderr, flush=True)
        stats = train(model, examples, plan, settings)
        after = nll_items(model, probe, s.get("score_tokens", 8192))
        stats["probe_nll_before"] = float(before[0].sum() / before[1].sum())
        stats["probe_nll_after"] = float(after[0].sum() / after[1].sum())
        stats["token_budget"] = budget
        row.update(n_examples=len(examples), n_distinct_seen=len(np.unique(np.concatenate(plan))),
                   train=stats, picked_chars=float(np.mean([len(json.dumps(pool[i])) for i in picks["indices"]])))
    t0 = time.perf_counter()
    scores = scoring.score(model, s.get("score_tokens", 8192))
    row["score_s"] = time.perf_counter() - t0
    row["peak_gpu_gb"] = (torch.cuda.max_memory_allocated() / 2**30) if str(device).startswith("cuda") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {**{f"{m}_num": v[0] for m, v in scores.items()}, **{f"{m}_den": v[1] for m, v in scores.items()}}
    atomic_write(out.with_suffix(".npz"), lambda f: np.savez(f, **arrays))
    atomic_json(out, row)   # written last: a run counts as done only when both files are there
    print(f"[done] {arm} @ {regime}: " + ", ".join(f"{m} {v[0].sum() / v[1].sum():.4f}" for m, v in scores.items()),
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# the driver


def jobs_for(arms, regimes):
    """The untrained model first, then every arm in the first regime, then in the next: a run cut short
    still has whole tables."""
    if "base" in arms:
        yield "base", "none"
    for regime in regimes:
        for arm in arms:
            if arm != "base" and (regime != "tokens" or arm in arms_mod.BUDGET_ARMS):
                yield arm, regime


def run_isolated(args, arm: str, regime: str) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve())] + sys.argv[1:] + ["--worker", arm, regime]
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        sys.exit(f"bench_quality: {arm} ({regime}) failed with exit code {rc}; rerun to resume")


def reproduce_command(settings: dict, arms, device: str) -> str:
    """The command line that makes these runs again (work folder aside), from the settings on disk."""
    t, items = settings["train"], settings["items"]
    parts = ["python bench/bench_quality.py --out DIR", f"--device {device}", f"--arms {','.join(arms)}",
             f"--pool {settings['pool']}", f"--heldout {settings['heldout']}", f"--budget {settings['budget_fraction']}",
             f"--epochs {t['epochs']}", f"--lr {t['lr']}", f"--tokens-per-step {t['tokens_per_step']}",
             f"--micro-tokens {t['micro_tokens']}", f"--max-length {t['max_length']}", f"--seed {t['seed']}",
             f"--alpaca-eval-items {items['alpaca_eval']}", f"--gsm8k-items {items['gsm8k']}",
             f"--mmlu-items {items['mmlu']}", f"--mmlu-shots {items['mmlu_shots']}",
             f"--heldout-items {items['heldout']}"]
    if settings.get("score_max_length"):
        parts.append(f"--score-max-length {settings['score_max_length']}")
    if settings.get("model"):
        parts.append(f"--model {settings['model']}")
    return " ".join(parts)


def write_results(work: Work, args, device: str) -> None:
    runs = summary.load_runs(work.runs)
    if not runs:
        print("bench_quality: no finished runs yet", file=sys.stderr)
        return
    split = json.loads((work.root / "split.json").read_text())
    header = environment(device)
    s = dict(work.settings)
    s.update(pool_size=len(split["pool"]), budget=split["budget"])
    ref_runs = [r for r in runs if r["arm"] == s["token_reference"] and r["regime"] == "examples"]
    s["token_budget"] = ref_runs[0]["train"]["tokens"] if ref_runs else 0
    header.update(settings=s, title=args.title,
                  command=reproduce_command(s, list(dict.fromkeys(r["arm"] for r in runs)), device))
    rows = summary.score_rows(runs)
    summary.write_jsonl(work.root / "results.jsonl", rows, {k: header[k] for k in header if k != "title"})
    summary.write_markdown(work.root / "quality.md", rows, header)
    summary.plot(work.root / "quality.png", rows)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for ext in (".jsonl", ".md", ".png"):
            data = (work.root / ("results.jsonl" if ext == ".jsonl" else f"quality{ext}")).read_bytes()
            atomic_write(args.results.with_name(args.results.name + ext), lambda f: f.write(data))
    print(f"results: {work.root / 'quality.md'}", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for path, what in ((args.data, "--data"), (args.eval_dir, "--eval-dir")):
        if not path.exists():
            sys.exit(f"bench_quality: {path}: no such file or folder ({what})")
    try:
        arms = arms_mod.expand_arms(args.arms)
    except ValueError as e:
        sys.exit(f"bench_quality: --arms: {e}")
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    if not set(regimes) <= set(REGIMES):
        sys.exit(f"bench_quality: --regimes: choose from {', '.join(REGIMES)}")
    settings = settings_of(args)
    settings["score_tokens"] = args.score_tokens
    if args.score_max_length is not None:   # absent: the training max length (folders made before it stay valid)
        settings["score_max_length"] = args.score_max_length
    work = Work.open(args.out, settings)
    device = resolve_device(args.device)
    if args.worker:
        arm, regime = args.worker
        if regime == "select":
            do_select(work, arm, device)
        else:
            do_train(work, arm, regime, device)
        return 0
    if not args.summary_only:
        work.prepare_pool()
        if "tokens" in regimes and any(a in arms_mod.BUDGET_ARMS for a in arms) and args.token_reference not in arms:
            arms.insert(0, args.token_reference)   # its picks set the token budget
        for arm in arms:
            if arm != "base" and not work.arm_path(arm).exists():
                do_select(work, arm, device) if args.in_process else run_isolated(args, arm, "select")
        for arm, regime in jobs_for(arms, regimes):
            if not work.run_path(arm, regime).exists():
                do_train(work, arm, regime, device) if args.in_process else run_isolated(args, arm, regime)
    write_results(work, args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
