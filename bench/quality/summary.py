"""Results of the experiment: one JSONL row per (arm, regime), a Markdown table, one plot.

Every score carries a 95% bootstrap interval over items, and a paired difference against the mean of
the random arms of the same regime (per item: the random seeds' scores averaged), with its interval:
a difference whose interval excludes zero is one the items support; the others are not.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from mads_fast.atomic import atomic_write

from .arms import ALL_ARMS, RANDOM_ARMS
from .score import HIGHER_IS_BETTER, METRICS, bootstrap

LABELS = {"alpaca_eval_nll": "AlpacaEval NLL", "gsm8k_nll": "GSM8K NLL", "heldout_nll": "held-out Alpaca NLL",
          "mmlu_acc": "MMLU acc"}


def load_runs(runs_dir: Path) -> List[dict]:
    runs = []
    for meta in sorted(Path(runs_dir).glob("*.json")):
        row = json.loads(meta.read_text())
        with np.load(meta.with_suffix(".npz")) as z:
            row["items"] = {m: (z[f"{m}_num"], z[f"{m}_den"]) for m in METRICS}
        runs.append(row)
    order = {"none": 0, "examples": 1, "tokens": 2}
    return sorted(runs, key=lambda r: (ALL_ARMS.index(r["arm"]), order[r["regime"]]))


def random_reference(runs: List[dict], regime: str):
    """metric -> (num, den) per item averaged over the random arms of ``regime`` (None if there are none)."""
    rnd = [r for r in runs if r["arm"] in RANDOM_ARMS and r["regime"] == regime]
    if not rnd:
        return None
    return {m: (np.mean([r["items"][m][0] for r in rnd], axis=0), rnd[0]["items"][m][1]) for m in METRICS}


def score_rows(runs: List[dict], n_boot: int = 2000) -> List[dict]:
    """One row per run with every metric's value, interval, and difference to the random mean."""
    rows = []
    for r in runs:
        ref_regime = "examples" if r["regime"] == "none" else r["regime"]
        ref = random_reference(runs, ref_regime)
        scores = {}
        for m in METRICS:
            scores[m] = bootstrap(*r["items"][m], ref=None if ref is None else ref[m], n_boot=n_boot)
        row = {k: v for k, v in r.items() if k != "items"}
        row["scores"] = scores
        rows.append(row)
    return rows


def random_spread(rows: List[dict], regime: str) -> Dict[str, dict]:
    """Mean, min and max over the random seeds of one regime, per metric."""
    vals = {m: [r["scores"][m]["value"] for r in rows if r["arm"] in RANDOM_ARMS and r["regime"] == regime]
            for m in METRICS}
    return {m: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v)}
            for m, v in vals.items() if v}


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_jsonl(path: Path, rows: List[dict], header: dict) -> None:
    _atomic_text(path, "".join(json.dumps({**header, **row}, sort_keys=True) + "\n" for row in rows))


def write_markdown(path: Path, rows: List[dict], header: dict) -> None:
    _atomic_text(path, markdown(rows, header))


def _cell(s: dict, metric: str) -> str:
    fmt = "{:.1%}" if metric == "mmlu_acc" else "{:.4f}"
    return f"{fmt.format(s['value'])} [{fmt.format(s['lo'])}, {fmt.format(s['hi'])}]"


def _delta(s: dict, metric: str) -> str:
    if "delta" not in s:
        return ""
    fmt = "{:+.1%}" if metric == "mmlu_acc" else "{:+.4f}"
    text = f"{fmt.format(s['delta'])} [{fmt.format(s['delta_lo'])}, {fmt.format(s['delta_hi'])}]"
    excludes_zero = s["delta_lo"] > 0 or s["delta_hi"] < 0
    return f"**{text}**" if excludes_zero else text


def markdown(rows: List[dict], header: dict) -> str:
    out = [f"# Selection quality: {header.get('title', '')}".rstrip(), ""]
    out.append(f"{header['date']}; {header['device']}; torch {header['torch']}, transformers "
               f"{header['transformers']}, mads_fast {header['mads_fast']} ({header.get('commit', '?')}).")
    out.append("")
    s = header["settings"]
    out.append(f"Pool {s['pool_size']:,} Alpaca records (held-out slice of {s['heldout']:,} excluded), budget "
               f"{s['budget']:,} ({s['budget_fraction']:.0%}); target and selector: {s['model_name']}. Training: "
               f"lr {s['train']['lr']}, {s['train']['epochs']} epoch(s) in the equal-examples regime, "
               f"{s['train']['tokens_per_step']:,} tokens per step, max length {s['train']['max_length']}, "
               f"seed {s['train']['seed']}; equal-tokens budget {s.get('token_budget', 0):,} tokens "
               f"(= {s['token_reference']}'s). Items scored: " + ", ".join(f"{k} {v:,}" for k, v in s["items"].items())
               + ". Intervals: 95% bootstrap over items; "
               "Δ = paired difference to the mean of the random seeds of the same regime (bold: the interval "
               "excludes 0). The intervals cover the sampling of evaluation items only, not the luck of which "
               "examples an arm drew: the spread of the random seeds (min–max row) is that noise, so a difference "
               "smaller than it is not evidence even when its interval excludes 0. NLL: lower is better; MMLU: "
               "higher.")
    if header.get("command"):
        out += ["", f"Command: `{header['command']}`"]
    for regime, title in (("none", "No training"), ("examples", "Equal example count"),
                          ("tokens", "Equal training tokens")):
        rr = [r for r in rows if r["regime"] == regime]
        if not rr:
            continue
        out += ["", f"## {title}", "",
                "| arm | examples | steps | train tokens | train s | " + " | ".join(LABELS[m] for m in METRICS) + " |",
                "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---" for _ in METRICS) + " |"]
        for r in rr:
            t = r.get("train") or {}
            out.append(f"| {r['arm']} | {r.get('n_examples', 0):,} | {t.get('steps', 0):,} | {t.get('tokens', 0):,} | "
                       f"{t.get('seconds', 0):.0f} | " + " | ".join(_cell(r["scores"][m], m) for m in METRICS) + " |")
        spread = random_spread(rows, regime)
        if spread:
            out.append("| random (mean; min–max) | | | | | " + " | ".join(
                (f"{spread[m]['mean']:.1%} ({spread[m]['min']:.1%}–{spread[m]['max']:.1%})" if m == "mmlu_acc" else
                 f"{spread[m]['mean']:.4f} ({spread[m]['min']:.4f}–{spread[m]['max']:.4f})") for m in METRICS) + " |")
            out += ["", "Δ to the random mean:", "",
                    "| arm | " + " | ".join(LABELS[m] for m in METRICS) + " |",
                    "| --- | " + " | ".join("---" for _ in METRICS) + " |"]
            for r in rr:
                if r["arm"] not in RANDOM_ARMS:
                    out.append(f"| {r['arm']} | " + " | ".join(_delta(r["scores"][m], m) for m in METRICS) + " |")
    return "\n".join(out) + "\n"


def plot(path: Path, rows: List[dict]) -> None:
    """Per metric, each arm's paired difference to the random mean with its 95% interval (0: random)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 0.32 * len(arms) + 1.8), sharey=True)
    styles = {"examples": ("o", "C0", -0.15, "equal examples"), "tokens": ("s", "C1", 0.15, "equal tokens"),
              "none": ("D", "C7", 0.0, "untrained")}
    for ax, m in zip(axes, METRICS):
        for regime, (marker, color, dy, label) in styles.items():
            rr = [r for r in rows if r["regime"] == regime]
            if not rr:
                continue
            # paired differences to the random mean: the absolute intervals are mostly item difficulty
            rr = [r for r in rr if "delta" in r["scores"][m]]
            y = [arms.index(r["arm"]) + dy for r in rr]
            v = np.array([r["scores"][m]["delta"] for r in rr])
            lo = v - np.array([r["scores"][m]["delta_lo"] for r in rr])
            hi = np.array([r["scores"][m]["delta_hi"] for r in rr]) - v
            ax.errorbar(v, y, xerr=[lo, hi], fmt=marker, color=color, capsize=2, label=label, ms=4)
        ax.set_title("Δ " + LABELS[m] + " to the random mean" + (" (higher better)" if HIGHER_IS_BETTER[m]
                     else " (lower better)"), fontsize=9)
        ax.axvline(0.0, color="k", lw=0.8, alpha=0.5)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(arms)))
    axes[0].set_yticklabels(arms)
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
