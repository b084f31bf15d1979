"""Scores per item, and bootstrap intervals over items.

Every score is kept per item as a numerator and a denominator, so that an arm's value is
sum(num) / sum(den) and a bootstrap resample of items recomputes it exactly:

- response NLL (AlpacaEval GPT-4 answers, GSM8K reference solutions, held-out Alpaca answers):
  num = summed negative log-likelihood of the response tokens, den = their count, so the value is the
  mean NLL per token over the whole set (lower is better);
- MMLU accuracy by choice log-likelihood: for each question the summed log-probability of each
  choice's text after "Answer:"; the highest wins (ties: the first); num = 1 if it is the answer,
  den = 1 (higher is better).

Log-probabilities are taken only where they are needed: the decoder runs over the whole padded batch,
but ``lm_head`` and the log-softmax run only on the positions that predict a scored token.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .corpus import EvalSets, Tokenized, join_tokens, mmlu_prompt, tokenize_pairs

NLL_METRICS = ("alpaca_eval_nll", "gsm8k_nll", "heldout_nll")
METRICS = NLL_METRICS + ("mmlu_acc",)
HIGHER_IS_BETTER = {"alpaca_eval_nll": False, "gsm8k_nll": False, "heldout_nll": False, "mmlu_acc": True}


def batches_by_tokens(lengths: Sequence[int], tokens_per_batch: int) -> List[np.ndarray]:
    """Length-sorted batches whose padded size (rows x longest row) stays within ``tokens_per_batch``."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    out, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * lengths[order[end]] <= tokens_per_batch:
            end += 1
        out.append(order[start:end])
        start = end
    return out


def autocast(device: str, enabled: bool = True):
    import torch

    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16,
                          enabled=enabled)


def target_logprobs(model, items: Sequence[Tokenized], tokens_per_batch: int = 8192,
                    bf16: bool = True) -> List[np.ndarray]:
    """log p(ids[t] | ids[:t]) for every scored position t >= n_prompt of every item (float64 arrays).

    ``bf16``: matrix work in bfloat16 autocast, as in training (False: the model's own precision)."""
    import torch

    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    out: List[Optional[np.ndarray]] = [None] * len(items)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(str(device), bf16):
        for rows in batches_by_tokens([len(it.ids) for it in items], tokens_per_batch):
            width = max(len(items[r].ids) for r in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)   # [B, T], right-padded
            for b, r in enumerate(rows):
                ids[b, :len(items[r].ids)] = torch.from_numpy(items[r].ids)
            ids = ids.to(device)
            # Right padding needs no mask: under causal attention a valid token never sees a later pad.
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state   # [B, T, H]
            b_idx = np.concatenate([np.full(items[r].n_target, b) for b, r in enumerate(rows)])
            t_idx = np.concatenate([np.arange(items[r].n_prompt, len(items[r].ids)) for r in rows])
            b_t, t_t = torch.from_numpy(b_idx).to(device), torch.from_numpy(t_idx).to(device)
            logits = head(hidden[b_t, t_t - 1]).float()                          # [M, V]
            logp = torch.log_softmax(logits, dim=-1).gather(1, ids[b_t, t_t].unsqueeze(1)).squeeze(1)
            logp = logp.double().cpu().numpy()
            pos = 0
            for r in rows:
                out[r] = logp[pos:pos + items[r].n_target]
                pos += items[r].n_target
    model.train(was_training)
    return out


def nll_items(model, items: Sequence[Tokenized], tokens_per_batch: int = 8192, bf16: bool = True):
    """(num, den) per item: summed NLL of the scored tokens and their count."""
    lp = target_logprobs(model, items, tokens_per_batch, bf16)
    return (np.array([-x.sum() for x in lp], dtype=np.float64),
            np.array([len(x) for x in lp], dtype=np.float64))


def mmlu_tokens(tokenizer, questions: Sequence[dict], dev: dict, shots: int, max_length: int) -> List[Tokenized]:
    """Four items per question (one per choice), in question order."""
    prompts, conts = [], []
    for q in questions:
        p = mmlu_prompt(q, dev.get(q["subject"], [])[:shots])
        for c in q["choices"]:
            prompts.append(p)
            conts.append(" " + str(c))
    # A long few-shot prompt is cut from the left so the question and its choices always fit.
    enc = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    keep = [tokenizer.decode(e[-(max_length - 64):]) if len(e) > max_length - 64 else p
            for e, p in zip(enc, prompts)]
    return join_tokens(tokenizer, keep, conts, max_length)


def mmlu_choice_scores(model, items: Sequence[Tokenized], tokens_per_batch: int = 8192,
                       bf16: bool = True) -> np.ndarray:
    """[questions, 4] summed log-probability of each choice's tokens after its question's prompt."""
    lp = target_logprobs(model, items, tokens_per_batch, bf16)
    return np.array([x.sum() for x in lp]).reshape(-1, 4)


def mmlu_correct(model, items: Sequence[Tokenized], answers: Sequence[int], tokens_per_batch: int = 8192,
                 bf16: bool = True):
    """1.0 per question whose highest-scoring choice (ties: the first) is the answer."""
    scores = mmlu_choice_scores(model, items, tokens_per_batch, bf16)
    return (np.argmax(scores, axis=1) == np.asarray(answers)).astype(np.float64)


@dataclass
class ScoringSet:
    """Everything an arm is scored on, tokenised once per process."""
    items: Dict[str, List[Tokenized]]
    mmlu_answers: np.ndarray

    @classmethod
    def build(cls, tokenizer, ev: EvalSets, *, max_length: int, mmlu_shots: int) -> "ScoringSet":
        items = {"alpaca_eval_nll": tokenize_pairs(tokenizer, ev.alpaca_eval, max_length),
                 "gsm8k_nll": tokenize_pairs(tokenizer, ev.gsm8k, max_length),
                 "heldout_nll": tokenize_pairs(tokenizer, ev.heldout, max_length),
                 "mmlu_acc": mmlu_tokens(tokenizer, ev.mmlu, ev.mmlu_dev, mmlu_shots, max_length)}
        return cls(items=items, mmlu_answers=np.array([q["answer"] for q in ev.mmlu], dtype=np.int64))

    def score(self, model, tokens_per_batch: int = 8192) -> Dict[str, tuple]:
        """metric -> (num [items], den [items])."""
        out = {}
        for m in METRICS:
            t0 = time.perf_counter()
            if m == "mmlu_acc":
                correct = mmlu_correct(model, self.items[m], self.mmlu_answers, tokens_per_batch)
                out[m] = (correct, np.ones_like(correct))
            else:
                out[m] = nll_items(model, self.items[m], tokens_per_batch)
            n_tok = sum(len(it.ids) for it in self.items[m])
            print(f"  scored {m}: {len(out[m][0]):,} items, {n_tok:,} tokens, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
        return out


def bootstrap(num: np.ndarray, den: np.ndarray, *, ref: Optional[tuple] = None, n_boot: int = 2000,
              seed: int = 0, level: float = 0.95) -> dict:
    """value = sum(num)/sum(den) and its percentile interval over item resamples.

    With ``ref`` = (num, den) of a reference on the same items, also the paired difference value - ref
    and its interval (the same resampled items for both, so item difficulty cancels)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    n = len(num)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    stat = num[idx].sum(1) / den[idx].sum(1)
    a = (1.0 - level) / 2
    out = {"value": float(num.sum() / den.sum()), "lo": float(np.quantile(stat, a)),
           "hi": float(np.quantile(stat, 1 - a)), "n_items": int(n)}
    if ref is not None:
        rnum, rden = np.asarray(ref[0], np.float64), np.asarray(ref[1], np.float64)
        rstat = rnum[idx].sum(1) / rden[idx].sum(1)
        diff = stat - rstat
        out.update(delta=float(out["value"] - rnum.sum() / rden.sum()), delta_lo=float(np.quantile(diff, a)),
                   delta_hi=float(np.quantile(diff, 1 - a)))
    return out
