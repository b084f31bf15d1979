"""The data of the experiment: the training pool, a held-out slice, the evaluation sets, and tokenised pairs.

Pool and held-out slice come from one seeded permutation of the Alpaca file: the first ``heldout``
positions are held out, the next ``pool`` positions (all the rest by default) form the pool, kept in
file order. No arm ever sees a held-out record, and the evaluation files are other datasets.

Every training example and every scored item is a (prompt, response) pair rendered with the target
model's chat template: ``prompt`` = the template up to the assistant turn (generation prompt
included), ``response`` = the rest of the rendered conversation (the answer and its end-of-turn
tokens). Both are tokenised without extra special tokens (the template writes them), so training and
scoring see the same ids. Losses and NLLs are taken over response tokens only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

SPLIT_SEED = 20261202
DEFAULT_HELDOUT = 500


@dataclass
class Split:
    pool: np.ndarray      # int64 [P] positions in the Alpaca file, ascending
    heldout: np.ndarray   # int64 [H] positions in the Alpaca file, ascending, disjoint from pool


def split_positions(n_records: int, heldout: int = DEFAULT_HELDOUT, pool: Optional[int] = None,
                    seed: int = SPLIT_SEED) -> Split:
    """One seeded permutation: the first ``heldout`` positions are held out, the next ``pool`` are the pool."""
    if heldout < 1 or heldout >= n_records:
        raise ValueError(f"heldout must lie in [1, {n_records - 1}], got {heldout}")
    rest = n_records - heldout
    pool = rest if pool in (None, 0) else pool
    if not 1 <= pool <= rest:
        raise ValueError(f"pool must lie in [1, {rest}] with heldout={heldout}, got {pool}")
    perm = np.random.default_rng(seed).permutation(n_records)
    return Split(pool=np.sort(perm[heldout:heldout + pool]), heldout=np.sort(perm[:heldout]))


@dataclass
class Pair:
    prompt: list          # chat messages before the answer
    response: str         # the answer's text


def alpaca_pair(rec: dict) -> Pair:
    user = rec["instruction"] + ("\n\n" + rec["input"] if rec.get("input") else "")
    return Pair([{"role": "user", "content": user}], rec["output"])


def read_jsonl(path: Path) -> List[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def sample(items: list, n: Optional[int], seed: int) -> list:
    """A fixed seeded sample of ``n`` items (all of them, in order, when n is None or >= len)."""
    if n is None or n >= len(items):
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in keep]


@dataclass
class EvalSets:
    alpaca_eval: List[Pair]     # AlpacaEval instructions with GPT-4 reference answers
    gsm8k: List[Pair]           # GSM8K questions with reference solutions
    heldout: List[Pair]         # Alpaca records no arm trained on
    mmlu: List[dict]            # MMLU test questions (subject, question, choices, answer)
    mmlu_dev: dict              # subject -> its dev questions (few-shot examples)


def load_eval(eval_dir: Path, alpaca_records: Sequence[dict], heldout_positions: np.ndarray, *,
              alpaca_eval_items: Optional[int], gsm8k_items: Optional[int], mmlu_items: Optional[int],
              heldout_items: Optional[int], seed: int = 0) -> EvalSets:
    eval_dir = Path(eval_dir)
    ae = sample(read_jsonl(eval_dir / "alpaca_eval_gpt4_1106.jsonl"), alpaca_eval_items, seed)
    gs = sample(read_jsonl(eval_dir / "gsm8k_test.jsonl"), gsm8k_items, seed)
    mm = sample(read_jsonl(eval_dir / "mmlu_test.jsonl"), mmlu_items, seed)
    dev: dict = {}
    for q in read_jsonl(eval_dir / "mmlu_dev.jsonl"):
        dev.setdefault(q["subject"], []).append(q)
    held = sample([alpaca_records[i] for i in heldout_positions], heldout_items, seed)
    return EvalSets(alpaca_eval=[Pair([{"role": "user", "content": r["instruction"]}], r["output"]) for r in ae],
                    gsm8k=[Pair([{"role": "user", "content": r["question"]}], r["answer"]) for r in gs],
                    heldout=[alpaca_pair(r) for r in held], mmlu=mm, mmlu_dev=dev)


# ---------------------------------------------------------------------------------------------
# tokens

@dataclass
class Tokenized:
    ids: np.ndarray       # int64 [T] prompt then response ids, cut to max_length
    n_prompt: int         # ids[:n_prompt] is the prompt; ids[n_prompt:] the scored / trained tokens

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.n_prompt


def render_pair(tokenizer, pair: Pair) -> tuple:
    """(prompt text, response text) with the chat template, or an Alpaca-style prompt without one."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(pair.prompt + [{"role": "assistant", "content": pair.response}],
                                             tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
        return prompt, full[len(prompt):]
    user = "\n\n".join(m["content"] for m in pair.prompt)
    return f"### Instruction:\n{user}\n\n### Response:\n", pair.response + (tokenizer.eos_token or "")


def tokenize_pairs(tokenizer, pairs: Sequence[Pair], max_length: int) -> List[Tokenized]:
    """Prompt and response ids of every pair; a pair longer than ``max_length`` loses its response's tail
    (a prompt that alone fills it keeps its first ``max_length - 1`` tokens and one response token)."""
    texts = [render_pair(tokenizer, p) for p in pairs]
    return join_tokens(tokenizer, [t[0] for t in texts], [t[1] for t in texts], max_length)


def join_tokens(tokenizer, prompts: Sequence[str], continuations: Sequence[str], max_length: int) -> List[Tokenized]:
    enc_p = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    enc_c = tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(enc_p, enc_c):
        if not c or not p:
            raise ValueError("a prompt and a response need a token each (the first token predicts the next)")
        p = p[:max_length - 1]
        ids = (p + c)[:max_length]
        out.append(Tokenized(ids=np.asarray(ids, dtype=np.int64), n_prompt=len(p)))
    return out


def mmlu_prompt(q: dict, shots: Sequence[dict]) -> str:
    """Plain-text multiple choice (no chat template, as MMLU harnesses do); each shot ends with its answer's text."""
    def block(x):
        letters = "ABCD"
        lines = [x["question"].strip()] + [f"{letters[i]}. {c}" for i, c in enumerate(x["choices"])]
        return "\n".join(lines) + "\nAnswer:"
    head = f"The following are multiple choice questions about {q['subject'].replace('_', ' ')}.\n\n"
    parts = [block(s) + " " + str(s["choices"][s["answer"]]) for s in shots]
    return head + "".join(p + "\n\n" for p in parts) + block(q)
