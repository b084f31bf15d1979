"""Why the solver input is standardised: anisotropy of mean-pooled SmolLM2 features.

Pools layer 20 of SmolLM2-135M-Instruct (mean over valid tokens, chat template, max 256 tokens) for the first
96 Alpaca records and prints, for raw, centred and standardised features: the share of variance in the largest
dimension, its correlation with 1/length, the participation ratio of the covariance (effective number of
dimensions) and the pair-cosine distribution. Appends the result to bench/results/anisotropy_cpu.md.

    python bench/anisotropy.py
"""
import datetime
import json
import platform
from pathlib import Path

import numpy as np
import torch
import transformers

from mads_fast.model import ActivationCapture, load_model

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_cleaned.jsonl"
N, LAYER, MAX_LENGTH = 96, 20, 256


def participation_ratio(a):
    ev = np.linalg.eigvalsh(np.cov(a.T))
    return ev.sum() ** 2 / (ev ** 2).sum()


def pair_cosines(a):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    return (a @ a.T)[np.triu_indices(len(a), 1)]


def main():
    lm = load_model(device="cpu")
    tok = lm.tokenizer
    with open(ALPACA, encoding="utf-8") as fh:
        recs = [json.loads(next(fh)) for _ in range(N)]
    texts = [tok.apply_chat_template(
        [{"role": "user", "content": r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")},
         {"role": "assistant", "content": r["output"]}], tokenize=False) for r in recs]
    feats, lens = [], []
    for i in range(0, N, 16):
        enc = tok(texts[i:i + 16], return_tensors="pt", padding=True, truncation=True, max_length=MAX_LENGTH)
        got = {}
        with ActivationCapture(lm, [LAYER], "hidden", lambda s, h: got.__setitem__(s, h)) as cap:
            cap.run(enc["input_ids"])
        m = enc["attention_mask"].unsqueeze(-1).float()
        feats.append(((got[0] * m).sum(1) / m.sum(1)).numpy())
        lens += m.sum((1, 2)).tolist()
    x = np.concatenate(feats).astype(np.float64)  # [N, H]
    centred = x - x.mean(0)
    var = centred.var(0)
    top = int(np.argmax(var))
    standardised = centred / centred.std(0)
    lines = [f"\n### {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} — "
             f"SmolLM2-135M-Instruct layer {LAYER}, mean-pooled, first {N} Alpaca records, max {MAX_LENGTH} tokens; "
             f"CPU, torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}\n",
             f"- largest centred dimension {top}: {var[top] / var.sum():.1%} of the variance; "
             f"correlation with 1/length {np.corrcoef(centred[:, top], 1 / np.array(lens))[0, 1]:.4f}",
             "", "| features | participation ratio | pair cosine mean | std | p01 | p99 |", "|---|---:|---:|---:|---:|---:|"]
    for name, a in (("raw", x), ("centred", centred), ("centred + standardised", standardised)):
        s = pair_cosines(a)
        pr = participation_ratio(a) if name != "raw" else float("nan")
        q = np.quantile(s, [0.01, 0.99])
        lines.append(f"| {name} | {pr:.2f} | {s.mean():.3f} | {s.std():.3f} | {q[0]:.3f} | {q[1]:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "results" / "anisotropy_cpu.md"
    with open(out, "a") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
