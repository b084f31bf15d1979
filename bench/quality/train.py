"""Full fine-tuning of the target model on one arm's examples, identical settings for every arm.

The step plan is the only thing that depends on the arm: each epoch is a seeded permutation of the
arm's examples (same seed for every arm), taken in order into optimiser steps of at most
``tokens_per_step`` real tokens (an example longer than that is a step of its own). Two regimes:

- equal example count: ``epochs`` passes over the arm's examples, so an arm of longer examples trains on
  more tokens and takes more steps;
- equal training tokens: passes repeat until the next example would take the arm past ``token_budget``
  tokens, so every arm sees the same tokens (to within one example) and about the same steps.

Loss: mean NLL over the response tokens of a step (prompt tokens are context only). AdamW, linear
warm-up then cosine decay to zero over the plan's steps, gradient norm clipped at 1; weights in float32,
matrix work in bfloat16 autocast (CPU and CUDA alike). Each micro-batch is padded on the right to its
longest row and bounded by ``micro_tokens`` padded tokens.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np

from .corpus import Tokenized
from .score import autocast, batches_by_tokens


@dataclass
class TrainSettings:
    epochs: int = 1
    lr: float = 1e-4
    warmup: float = 0.05          # fraction of the steps
    tokens_per_step: int = 16384  # real tokens per optimiser step
    micro_tokens: int = 8192      # padded tokens per forward/backward
    max_length: int = 512
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def plan_steps(lengths: Sequence[int], *, epochs: int, tokens_per_step: int, seed: int,
               token_budget: Optional[int] = None) -> List[np.ndarray]:
    """Optimiser steps as arrays of example indices (see the module docstring for the two regimes)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        raise ValueError("an arm with no examples cannot be trained")
    steps, cur, cur_tokens, total = [], [], 0, 0
    epoch = 0
    while True:
        if token_budget is None and epoch >= epochs:
            break
        for i in np.random.default_rng(seed + epoch).permutation(len(lengths)):
            n = int(lengths[i])
            if token_budget is not None and total + n > token_budget:
                if cur:
                    steps.append(np.array(cur, dtype=np.int64))
                return steps
            if cur and cur_tokens + n > tokens_per_step:
                steps.append(np.array(cur, dtype=np.int64))
                cur, cur_tokens = [], 0
            cur.append(int(i))
            cur_tokens += n
            total += n
        epoch += 1
    if cur:
        steps.append(np.array(cur, dtype=np.int64))
    return steps


def lr_at(step: int, total: int, settings: TrainSettings) -> float:
    warm = max(1, int(round(settings.warmup * total)))
    if step < warm:
        return settings.lr * (step + 1) / warm
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _micro_loss(model, examples: Sequence[Tokenized], rows: np.ndarray):
    """Summed NLL of the response tokens of ``rows`` (a tensor with grad)."""
    import torch

    device = next(model.parameters()).device
    width = max(len(examples[r].ids) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)   # [B, T], right-padded
    for b, r in enumerate(rows):
        ids[b, :len(examples[r].ids)] = torch.from_numpy(examples[r].ids)
    ids = ids.to(device)
    b_idx = np.concatenate([np.full(examples[r].n_target, b) for b, r in enumerate(rows)])
    t_idx = np.concatenate([np.arange(examples[r].n_prompt, len(examples[r].ids)) for r in rows])
    b_t, t_t = torch.from_numpy(b_idx).to(device), torch.from_numpy(t_idx).to(device)
    with autocast(str(device)):
        hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state   # [B, T, H]
        logits = model.get_output_embeddings()(hidden[b_t, t_t - 1])                      # [M, V]
    return torch.nn.functional.cross_entropy(logits.float(), ids[b_t, t_t], reduction="sum")


def train(model, examples: Sequence[Tokenized], plan: Sequence[np.ndarray], settings: TrainSettings,
          *, progress: bool = True) -> dict:
    """Run the plan; returns steps, examples and tokens seen, seconds, and the loss of every step."""
    import torch

    torch.manual_seed(settings.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=settings.weight_decay)
    losses, n_tokens, n_target, n_examples = [], 0, 0, 0
    t0 = time.perf_counter()
    report_every = max(1, len(plan) // 10)
    for s, step in enumerate(plan):
        for group in opt.param_groups:
            group["lr"] = lr_at(s, len(plan), settings)
        step_target = sum(examples[i].n_target for i in step)
        step_loss = 0.0
        for micro in batches_by_tokens([len(examples[i].ids) for i in step], settings.micro_tokens):
            loss = _micro_loss(model, examples, step[micro])
            (loss / step_target).backward()
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss / step_target)
        n_tokens += sum(len(examples[i].ids) for i in step)
        n_target += step_target
        n_examples += len(step)
        if progress and (s % report_every == 0 or s == len(plan) - 1):
            el = time.perf_counter() - t0
            print(f"  step {s + 1}/{len(plan)}  loss {losses[-1]:.4f}  {n_tokens / el:,.0f} tok/s  "
                  f"{el:.0f} s", file=sys.stderr, flush=True)
    model.eval()
    return {"steps": len(plan), "examples_seen": n_examples, "tokens": n_tokens, "target_tokens": n_target,
            "seconds": time.perf_counter() - t0, "losses": losses}
