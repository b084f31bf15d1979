"""Render, tokenize, plan token-budget batches, collate: against hand-written expectations and a
plain reference of the batch plan."""
import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mads_fast.data import read_records
from mads_fast.errors import InputError
from mads_fast.tokens import Batch, collate, plan_batches, render, tokenize

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def smol(smollm2_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)


def _tiny_tokenizer():
    """A word-level tokenizer with no chat template that prepends <s> (id 1) like Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    words = "[UNK] <s> </s> ### Instruction: Input: Response: hi there q a sys".split()
    tk = Tokenizer(models.WordLevel({w: k for k, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")


@pytest.fixture
def records(tmp_path):
    alpaca = tmp_path / "a.jsonl"
    alpaca.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Add.", "input": "2+2", "output": "4"},
        {"instruction": "Say hi.", "input": "", "output": "hi there"}]))
    share = tmp_path / "s.json"
    share.write_text(json.dumps([
        {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q"},
                           {"from": "gpt", "value": "a"}]},
        {"conversations": []}]))
    return read_records(alpaca), read_records(share)


# ---------------------------------------------------------------------------------------- render

def test_chat_template_of_smollm2(smol, records):
    alpaca, share = records
    assert render(alpaca, 0, smol) == (SMOL_SYSTEM + "<|im_start|>user\nAdd.\n\n2+2<|im_end|>\n"
                                       "<|im_start|>assistant\n4<|im_end|>\n")
    # A system turn replaces the default system prompt.
    assert render(share, 0, smol) == ("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
                                      "<|im_start|>assistant\na<|im_end|>\n")
    # An empty conversation renders as one empty user turn (templates refuse an empty list).
    assert render(share, 1, smol) == SMOL_SYSTEM + "<|im_start|>user\n<|im_end|>\n"


def test_alpaca_and_none_templates(smol, records):
    alpaca, share = records
    assert render(alpaca, 0, smol, "alpaca") == "### Instruction:\nAdd.\n\n### Input:\n2+2\n\n### Response:\n4"
    assert render(alpaca, 1, smol, "alpaca") == "### Instruction:\nSay hi.\n\n### Response:\nhi there"
    assert render(share, 0, smol, "alpaca") == "sys\n\n### Instruction:\nq\n\n### Response:\na"
    assert render(alpaca, 0, smol, "none") == "Add.\n\n2+2\n\n4"
    with pytest.raises(InputError, match="unknown template 'jinja'"):
        render(alpaca, 0, smol, "jinja")


def test_missing_chat_template_falls_back_to_alpaca_and_warns_once(records, caplog):
    alpaca, _ = records
    tiny = _tiny_tokenizer()
    with caplog.at_level(logging.WARNING, logger="mads_fast.tokens"):
        texts = [render(alpaca, i, tiny) for i in (0, 1, 0)]
    assert texts[0] == render(alpaca, 0, tiny, "alpaca") == texts[2]
    assert [r.getMessage() for r in caplog.records] == ["no chat template; using alpaca"]


def test_failing_chat_template_names_the_record(records):
    _, share = records
    tiny = _tiny_tokenizer()
    tiny.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(InputError, match=r"s.json: record 0 \(line 1\): chat template failed: Conversation roles"):
        render(share, 0, tiny)


# ---------------------------------------------------------------------------------------- tokenize

def test_tokenize_truncates_and_counts(smol):
    texts = ["one two three four five six seven", "short", "a b c d e f g h i j k l m n o p"]
    full = [smol(t, add_special_tokens=False)["input_ids"] for t in texts]
    ts = tokenize(texts, smol, max_length=6)
    assert [r.tolist() for r in ts.ids] == [f[:6] for f in full]
    assert ts.n_truncated == sum(len(f) > 6 for f in full) == 2
    assert ts.lengths.dtype == np.int32 and ts.lengths.tolist() == [min(len(f), 6) for f in full]
    assert all(r.dtype == np.int32 for r in ts.ids)
    # Chunking the calls changes nothing.
    assert [r.tolist() for r in tokenize(texts, smol, max_length=6, chunk=1).ids] == [r.tolist() for r in ts.ids]


def test_chat_text_gets_no_special_tokens_from_smollm2(smol, records):
    alpaca, _ = records
    text = render(alpaca, 0, smol)
    ids = tokenize([text], smol).ids[0].tolist()
    assert ids[0] == smol.convert_tokens_to_ids("<|im_start|>") and ids.count(ids[0]) == 3   # system, user, assistant
    assert ids == smol(text, add_special_tokens=False)["input_ids"]


def test_doubled_bos_is_dropped_and_empty_text_gets_one_token(smol):
    tiny = _tiny_tokenizer()
    ts = tokenize(["<s> hi there", "hi there"], tiny)
    assert [r.tolist() for r in ts.ids] == [[1, 7, 8], [1, 7, 8]]   # <s>=1 hi=7 there=8
    ts = tokenize(["", "hi"], smol)
    assert ts.n_empty == 1 and ts.ids[0].tolist() == [smol.eos_token_id] and ts.lengths.tolist()[0] == 1
    with pytest.raises(InputError, match="max_length must be a positive integer"):
        tokenize(["hi"], smol, max_length=0)


# ---------------------------------------------------------------------------------------- plan

def _reference_plan(lengths, budget, max_rows):
    """The rule written as plainly as possible: one record at a time, longest first, ties by index."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        fits = (len(current) + 1) * longest <= budget and (max_rows is None or len(current) < max_rows)
        if current and not fits:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=200), st.integers(1, 2000), st.none() | st.integers(1, 40))
def test_plan_matches_reference(lengths, budget, max_rows):
    batches, padding = plan_batches(np.array(lengths, dtype=np.int32), budget, max_rows)
    assert [b.indices.tolist() for b in batches] == _reference_plan(lengths, budget, max_rows)
    for b in batches:
        assert b.indices.dtype == np.int64
        assert b.max_len == max((lengths[i] for i in b.indices), default=0)
        assert len(b.indices) == 1 or len(b.indices) * b.max_len <= budget
    padded = sum(len(b.indices) * b.max_len for b in batches)
    assert padding == pytest.approx(1 - sum(lengths) / padded if padded else 0.0)


def test_plan_small_cases():
    batches, padding = plan_batches(np.array([3, 10, 3, 20, 3]), tokens_per_batch=9)
    # 20 and 10 exceed the budget alone and get batches of their own; the three 3s share one.
    assert [(b.indices.tolist(), b.max_len) for b in batches] == [([3], 20), ([1], 10), ([0, 2, 4], 3)]
    assert padding == 0.0
    batches, padding = plan_batches(np.array([4, 2, 4, 1]), tokens_per_batch=100)
    assert [b.indices.tolist() for b in batches] == [[0, 2, 1, 3]]
    assert padding == pytest.approx(1 - 11 / 16)
    assert plan_batches(np.array([], dtype=np.int32)) == ([], 0.0)
    for bad in (dict(lengths=np.array([1.5])), dict(lengths=np.array([-1])),
                dict(lengths=np.array([1]), tokens_per_batch=0), dict(lengths=np.array([1]), max_rows=0)):
        with pytest.raises(InputError):
            plan_batches(**bad)


def test_padding_on_real_alpaca_is_small(smol, alpaca_path):
    rs = read_records(alpaca_path, limit=2000)
    ts = tokenize([render(rs, i, smol) for i in range(len(rs))], smol)
    lengths = ts.lengths.astype(np.int64)
    batches, padding = plan_batches(ts.lengths, tokens_per_batch=16384)
    # Baselines: 32-row batches in file order (a naive loop), and the same number of batches as the
    # plan with equal row counts after sorting (a planner that ignores the budget).
    naive = 1 - lengths.sum() / sum(lengths[s:s + 32].max() * len(lengths[s:s + 32]) for s in range(0, 2000, 32))
    equal = np.array_split(np.sort(lengths)[::-1], len(batches))
    same_count = 1 - lengths.sum() / sum(g.max() * len(g) for g in equal)
    print(f"padding on 2,000 Alpaca records, 16k budget: {padding:.4f} in {len(batches)} batches; "
          f"32-row file order {naive:.4f}; sorted equal rows {same_count:.4f}")
    # Measured 0.084 in 14 batches (naive 0.60, equal rows 0.17). The waste sits in the first
    # batches, which span the sparse long tail (476 down to ~280 tokens); on all 51,924 records the
    # same planner wastes 0.005. 0.10 leaves room for tokenizer changes; a planner that does not
    # sort lands near the naive 0.60.
    assert padding < 0.10
    assert padding < same_count / 2 and padding < naive / 5
    assert all(b.n_tokens <= 16384 for b in batches)
    assert sorted(np.concatenate([b.indices for b in batches]).tolist()) == list(range(2000))


# ---------------------------------------------------------------------------------------- collate

def test_collate_right_pads(smol):
    texts = ["alpha beta gamma delta", "x", "one two", "x"]
    ts = tokenize(texts, smol)
    for rows in ([2, 0, 1, 3], [1], [1, 3]):
        ids, mask, lengths = collate(ts, Batch(indices=np.array(rows, dtype=np.int64), max_len=0), pad_id=-7)
        width = max(len(ts.ids[r]) for r in rows)
        assert ids.shape == mask.shape == (len(rows), width) and lengths.shape == (len(rows),)
        assert ids.dtype == mask.dtype == lengths.dtype == __import__("torch").int64
        for b, r in enumerate(rows):
            n = len(ts.ids[r])
            assert lengths[b] == n
            assert ids[b, :n].tolist() == ts.ids[r].tolist()
            assert ids[b, n:].tolist() == [-7] * (width - n)
            assert mask[b].tolist() == [1] * n + [0] * (width - n)
    ids, _, _ = collate(ts, Batch(indices=np.array([0, 1]), max_len=0), pad_id=None)   # no pad token
    assert ids[1, 1:].tolist() == [0] * (len(ts.ids[0]) - 1)
