"""Records that stream: the RecordSet is an index (spans, row groups, compact ids), records are parsed when
asked for (``rs.records[i]``, ``rs.load(positions)``), a pickled set is its index only, and writing streams
through the input. Everything here is checked against an independent statement of what it must equal."""
import hashlib
import json
import pickle
import random

import numpy as np
import pytest

import mads_fast.data as data
from mads_fast.data import read_records, write_records
from mads_fast.errors import InputError
from mads_fast.pipeline import SelectionResult
from mads_fast.tokens import render


def _sha12(obj):
    # Independent statement of the id rule: sha1 of sorted-key compact JSON, UTF-8 (lone surrogates passed).
    canon = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha1(canon.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _ids(objs):
    return [f"{i}:{_sha12(o)}" for i, o in enumerate(objs)]


def _fingerprint(ids):
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


class NoTemplate:
    chat_template = None


# Hand-made records with what a re-serialiser would change: non-ASCII, \u escapes, a lone surrogate,
# nested lists and objects, numbers, empty containers, key order.
RECS = [
    {"instruction": "Bleu été", "input": "", "output": "日本 \U0001f600", "meta": {"z": [1, 2.5, None], "a": {}}},
    {"output": "4", "instruction": "Add.", "input": "2+2", "tags": [], "n": -3e5},
    {"instruction": "lone \ud800 surrogate", "output": "q\\u1234 \"quoted\"\n\ttab", "input": None},
    {"instruction": "Say hi.", "output": "hi", "deep": [[{"k": [True, False]}]]},
]


def _jsonl_lines(objs):
    return [json.dumps(o, ensure_ascii=k % 2 == 0).encode("utf-8", "surrogatepass") for k, o in enumerate(objs)]


def _alpaca_like(n, rng):
    words = ["alpha", "béta", "γάμμα", "日本語", "emoji \U0001f600", "tab\tnew\nline", '"quoted"', ""]
    return [{"instruction": f"task {i} " + rng.choice(words), "input": rng.choice(words),
             "output": " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))} for i in range(n)]


# ---------------------------------------------------------------------------------------- ids and fingerprint

def test_real_alpaca_ids_and_fingerprint_equal_an_independent_computation(alpaca_path):
    rs = read_records(alpaca_path)
    with open(alpaca_path, "rb") as f:
        objs = [json.loads(line) for line in f]
    want = _ids(objs)
    assert len(rs) == len(want) == 51_924
    assert rs.ids == want and want == list(rs.ids) and list(rs.ids) == want
    assert rs.fingerprint == _fingerprint(want)
    assert rs.ids[0] == want[0] and rs.ids[-1] == want[-1] and rs.ids[5:8] == want[5:8]
    assert rs.ids._hashes.dtype == np.dtype("S12")   # compact: 12 bytes a record, the position implicit


def test_ids_are_a_sequence_of_the_same_strings(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join(_jsonl_lines(RECS)) + b"\n")
    rs = read_records(p)
    want = _ids(RECS)
    assert len(rs.ids) == 4 and list(rs.ids) == want and [i for i in rs.ids] == want
    assert rs.ids == want and want == rs.ids and rs.ids == read_records(p).ids
    assert rs.ids != want[:3] and rs.ids != want[::-1]
    assert rs.ids[np.int64(2)] == want[2] and rs.ids[-4] == want[0] and rs.ids[::-1] == want[::-1]
    assert want[1] in rs.ids and rs.ids.index(want[3]) == 3
    with pytest.raises(IndexError):
        rs.ids[4]
    assert rs.fingerprint == _fingerprint(want)


def test_json_array_ids_equal_the_jsonl_ids_of_the_same_records(tmp_path):
    a = tmp_path / "d.json"
    a.write_bytes(json.dumps(RECS, indent=2).encode())
    rs = read_records(a)
    assert rs.ids == _ids(RECS) and rs.fingerprint == _fingerprint(_ids(RECS))
    starts = [k + 1 for k, line in enumerate(a.read_text().split("\n")) if line == "  {"]   # indent 2: "  {"
    assert [rs.where(i) for i in range(4)] == [f"record {i} (line {starts[i]})" for i in range(4)]


# ---------------------------------------------------------------------------------------- lazy records

def test_records_are_parsed_on_demand_and_read_only(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join(_jsonl_lines(RECS)) + b"\n")
    rs = read_records(p)
    assert not any(isinstance(v, (list, dict)) and v and isinstance(next(iter(v)), dict)
                   for v in vars(rs).values())   # no list of parsed records is kept
    assert len(rs.records) == 4 and rs.records == RECS and list(rs.records) == RECS
    assert rs.records[-1] == RECS[-1] and rs.records[1:3] == RECS[1:3] and rs.records[::-2] == RECS[::-2]
    with pytest.raises(TypeError):
        rs.records[0] = {}
    with pytest.raises(IndexError):
        rs.records[4]


def test_load_on_random_positions_equals_the_original_lines(tmp_path):
    rng = random.Random(0)
    objs = _alpaca_like(3000, rng)
    p = tmp_path / "d.jsonl"
    lines = [json.dumps(o, ensure_ascii=rng.random() < 0.5).encode() for o in objs]
    # blank lines and CRLF between records, so spans and line numbers are not a simple function of i
    p.write_bytes(b"".join(line + rng.choice([b"\n", b"\r\n", b"\n\n", b"\n \n"]) for line in lines))
    rs = read_records(p)
    original = p.read_bytes().splitlines()
    line_of = [k + 1 for k, raw in enumerate(original) if raw.strip()]
    positions = [rng.randrange(3000) for _ in range(500)] + [0, 2999, 17, 17]
    view = rs.load(positions)
    for i in positions:
        assert view.records[i] == json.loads(lines[i]) == json.loads(original[line_of[i] - 1])
        assert view.where(i) == f"line {line_of[i]:,}" and view.ids[i] == rs.ids[i]
        assert view.messages(i) == rs.messages(i) and view.text(i) == rs.text(i)
        assert render(view, int(i), NoTemplate(), "alpaca") == render(rs, i, NoTemplate(), "alpaca")
    assert view.path == rs.path and len(view) == len(rs) and view.fingerprint == rs.fingerprint
    assert rs.load([]).records[5] == objs[5]          # an empty view still parses on demand
    with pytest.raises(InputError, match=r"position 3000 is out of range for 3,000 records"):
        rs.load([1, 3000])


def test_a_loaded_view_parses_nothing_else(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join(_jsonl_lines(RECS)) + b"\n")
    rs = read_records(p)
    view = rs.load([2, 0])
    p.write_bytes(b"\n" * 10)   # the loaded records come from memory, anything else from the file
    assert view.records[0] == RECS[0] and view.messages(2)[0]["content"] == RECS[2]["instruction"]
    assert render(view, 2, NoTemplate(), "none") == view.text(2)
    with pytest.raises(InputError, match=r"d.jsonl: line 2: input changed since it was read; read it again"):
        view.records[1]


# ---------------------------------------------------------------------------------------- pickling

def test_a_pickled_record_set_is_its_index_and_loads_the_same_records(tmp_path):
    rng = random.Random(1)
    objs = _alpaca_like(5000, rng)
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objs))
    rs = read_records(p)
    positions = rng.sample(range(5000), 300)
    view = rs.load(positions)
    blob = pickle.dumps(view)
    assert len(blob) < 48 * len(rs), len(blob) / len(rs)   # 36 bytes a record: spans, lines, id hashes
    assert "task 123 ".encode() not in blob and "task 123 ".encode("utf-16-le") not in blob
    back = pickle.loads(blob)
    assert back._cache is None and back.ids == rs.ids and back.fingerprint == rs.fingerprint
    again = back.load(positions)
    assert [again.records[i] for i in positions] == [objs[i] for i in positions]
    assert back.describe() == rs.describe() and back.empty == rs.empty


def test_a_changed_file_makes_load_raise_the_write_error(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join(_jsonl_lines(RECS)) + b"\n")
    rs = read_records(p)
    shipped = pickle.loads(pickle.dumps(rs))
    p.write_bytes(p.read_bytes().replace(b"Add.", b"Sub."))   # same length, record 1 differs
    for target in (rs, shipped):
        with pytest.raises(InputError) as e:
            target.load([3, 1, 0])
        assert str(e.value) == f"{p}: line 2: input changed since it was read; read it again"
    assert rs.load([0, 2, 3]).records[3] == RECS[3]            # the records still there still load
    p.write_bytes(p.read_bytes()[:40])                          # cut short: record 0 is gone too
    with pytest.raises(InputError, match=r"line 1: input changed since it was read"):
        rs.load([0])
    with pytest.raises(InputError, match=r"line 1: input changed since it was read"):
        rs.records[0]


def test_a_changed_json_array_makes_load_raise(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(json.dumps(RECS, indent=2).encode())
    rs = read_records(p)
    assert rs.load([3]).records[3] == RECS[3]
    p.write_bytes(p.read_bytes().replace(b"Say hi.", b"Say ho."))
    line = rs.where(3)
    assert line.startswith("record 3 (line ")
    with pytest.raises(InputError) as e:
        rs.load([0, 3])
    assert str(e.value) == f"{p}: {line}: input changed since it was read; read it again"
    with pytest.raises(InputError, match=r"record 3 \(line \d+\): input changed since it was read"):
        write_records(rs, [3], tmp_path / "core.json")
    assert not (tmp_path / "core.json").exists()


# ---------------------------------------------------------------------------------------- JSON array chunks

@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_json_array_reads_the_same_at_every_chunk_size(tmp_path, monkeypatch, chunk):
    objs = RECS * 3
    # Records dumped with and without ensure_ascii (a lone surrogate can only be an escape in UTF-8 text).
    parts = [json.dumps(o, ensure_ascii=k % 2 == 0 or "\ud800" in o["instruction"], indent=chunk % 3 or None)
             for k, o in enumerate(objs)]
    text = ("[\n" + ",\n".join(parts) + "\n]").encode()
    p = tmp_path / "d.json"
    p.write_bytes(b"\xef\xbb\xbf" + text + b"\n")
    whole = read_records(p)
    bad = tmp_path / "bad.json"   # an error late in a long first line: its column counts from the line start
    bad.write_bytes(json.dumps(objs).encode()[:-1].replace(b'"hi", "deep"', b'"hi" "deep"') + b"]")
    with pytest.raises(InputError) as want:
        read_records(bad)
    monkeypatch.setattr(data, "_CHUNK", chunk)
    small = read_records(p)
    assert small.ids == whole.ids == _ids(objs) and small.records == objs
    assert [small.where(i) for i in range(len(objs))] == [whole.where(i) for i in range(len(objs))]
    assert small._starts.tolist() == whole._starts.tolist() and small._ends.tolist() == whole._ends.tolist()
    for i in range(len(objs)):   # each span is exactly the object's bytes
        assert json.loads(p.read_bytes()[small._starts[i]:small._ends[i]]) == objs[i]
    with pytest.raises(InputError) as got:
        read_records(bad)
    assert str(got.value) == str(want.value) and "column" in str(got.value)


# ---------------------------------------------------------------------------------------- writing

def test_json_array_write_is_byte_identical_to_dumping_the_list(tmp_path):
    rng = random.Random(2)
    objs = RECS + _alpaca_like(200, rng) + [{"instruction": "", "output": "", "e": {}, "l": [[]]}]
    p = tmp_path / "d.json"
    p.write_bytes(json.dumps(objs, ensure_ascii=True, indent=1).encode())
    rs = read_records(p)
    for picks in ([2, 0, 2, 204, 1], rng.sample(range(len(objs)), 60), [3], []):
        out = tmp_path / "core.json"
        write_records(rs, picks, out)
        want = (json.dumps([objs[i] for i in picks], ensure_ascii=False, indent=2) + "\n").encode("utf-8", "surrogatepass")
        assert out.read_bytes() == want


def test_jsonl_write_copies_line_bytes_in_pick_order(tmp_path):
    lines = _jsonl_lines(RECS)
    p = tmp_path / "d.jsonl"
    p.write_bytes(lines[0] + b"\r\n" + b"\n".join(lines[1:]))   # CRLF, and no newline at the end
    rs = read_records(p)
    write_records(rs, [3, 0, 3, 1], tmp_path / "core.jsonl")
    assert (tmp_path / "core.jsonl").read_bytes() == lines[3] + b"\n" + lines[0] + b"\r\n" + lines[3] + b"\n" + \
        lines[1] + b"\n"


def test_selection_result_records_and_dataset(tmp_path):
    p = tmp_path / "d.jsonl"
    objs = [dict(RECS[3], output=f"hi {k}") for k in range(4)]   # one Arrow schema for Dataset.from_list
    p.write_bytes(b"\n".join(_jsonl_lines(objs)) + b"\n")
    rs = read_records(p)
    result = SelectionResult(indices=np.array([3, 0, 2]), ids=[rs.ids[i] for i in (3, 0, 2)], weights=np.ones(3),
                             curve=np.ones(3), objective=1.0, nearest=np.zeros(4), nearest_similarity=np.zeros(4),
                             knee=1, record_set=pickle.loads(pickle.dumps(rs)))
    assert result.records() == [rs.records[i] for i in (3, 0, 2)]
    assert result.dataset().to_list() == result.records()


# ---------------------------------------------------------------------------------------- Parquet

def _parquet(tmp_path, objs, row_group_size):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(objs)
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=row_group_size)
    return tmp_path / "d.parquet", table


def test_parquet_reads_by_row_group_and_loads_and_writes_only_needed_rows(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    rng = random.Random(3)
    objs = _alpaca_like(2500, rng)
    monkeypatch.setattr(data, "_BATCH", 128)                  # several batches per row group
    path, table = _parquet(tmp_path, objs, row_group_size=700)   # 4 row groups, the last one short
    rs = read_records(path)
    assert rs.ids == _ids(objs) and rs.fingerprint == _fingerprint(_ids(objs))
    assert rs._groups.tolist() == [0, 700, 1400, 2100, 2500]
    shipped = pickle.loads(pickle.dumps(rs))
    assert len(pickle.dumps(rs)) < 20 * len(rs)                # no Arrow table in the pickle
    positions = rng.sample(range(2500), 200) + [699, 700, 2499]
    view = shipped.load(positions)
    assert all(view.records[i] == objs[i] for i in positions)
    assert [shipped.records[i] for i in (2499, 5, 701)] == [objs[2499], objs[5], objs[701]]
    read = []
    real_iter = pq.ParquetFile.iter_batches

    def counting(self, *args, **kwargs):
        read.append(kwargs.get("row_groups"))
        return real_iter(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    picks = [2400, 3, 2450, 3]
    write_records(shipped, picks, tmp_path / "core.parquet")
    assert read == [[0], [3]]                                   # the row groups holding the picks, no others
    assert pq.read_table(tmp_path / "core.parquet").equals(table.take(picks))
    assert read_records(tmp_path / "core.parquet").records == [objs[i] for i in picks]
    limited = read_records(path, limit=800)
    assert limited.ids == _ids(objs)[:800] and limited.describe().endswith("(first 800 only: limit 800)")


def test_parquet_rewritten_after_reading_makes_load_raise(tmp_path):
    objs = _alpaca_like(300, random.Random(4))
    path, _ = _parquet(tmp_path, objs, row_group_size=100)
    rs = read_records(path)
    _parquet(tmp_path, objs, row_group_size=150)                # same rows, other row groups
    with pytest.raises(InputError, match=r"d.parquet: row 5: input changed since it was read; read it again"):
        rs.load([5])
    objs[7]["output"] = "changed"
    _parquet(tmp_path, objs, row_group_size=100)                # same row groups, one row differs
    assert rs.load([6, 8]).records[8] == objs[8]
    with pytest.raises(InputError, match=r"row 7: input changed since it was read"):
        rs.load([6, 7])
    with pytest.raises(InputError, match=r"row 7: input changed since it was read"):
        write_records(rs, [7], tmp_path / "core.parquet")


# ---------------------------------------------------------------------------------------- saved dataset

def test_saved_dataset_is_reopened_lazily_after_pickling(tmp_path):
    import datasets

    objs = _alpaca_like(500, random.Random(5))
    datasets.Dataset.from_list(objs).save_to_disk(str(tmp_path / "hf"))
    rs = read_records(tmp_path / "hf", limit=400)
    assert rs.ids == _ids(objs[:400]) and rs._ds is not None
    blob = pickle.dumps(rs)
    assert len(blob) < 20 * len(rs)                             # the dataset is not in the pickle
    back = pickle.loads(blob)
    assert back._ds is None
    view = back.load([399, 3, 250])
    assert [view.records[i] for i in (3, 250, 399)] == [objs[3], objs[250], objs[399]]
    assert back.records[10] == objs[10] and back._ds is not None and len(back._ds) == 400
    write_records(back, [399, 0], tmp_path / "core")
    assert read_records(tmp_path / "core").records == [objs[399], objs[0]]
    result = SelectionResult(indices=np.array([5, 1]), ids=[], weights=np.ones(2), curve=np.ones(2), objective=1.0,
                             nearest=np.zeros(2), nearest_similarity=np.zeros(2), knee=1,
                             record_set=pickle.loads(blob))
    assert result.dataset().to_list() == [objs[5], objs[1]] == result.records()


# ---------------------------------------------------------------------------------------- limit, lenient, schema

def test_lenient_and_limited_sets_load_and_write(tmp_path):
    p = tmp_path / "cut.json"
    whole = json.dumps(RECS, indent=2).encode()
    p.write_bytes(whole[:whole.rindex(b'"Say hi."')])           # records 0-2 complete
    rs = read_records(p, lenient=True)
    assert len(rs) == 3 and rs.salvaged.complete == 3
    assert pickle.loads(pickle.dumps(rs)).load([2, 0]).records[2] == RECS[2]
    write_records(rs, [2, 1], tmp_path / "core.json")
    assert (tmp_path / "core.json").read_bytes() == (json.dumps([RECS[2], RECS[1]], ensure_ascii=False, indent=2)
                                                    + "\n").encode("utf-8", "surrogatepass")
    limited = read_records(p, lenient=True, limit=2)
    assert limited.ids == _ids(RECS[:2]) and limited.salvaged.complete is None
    with pytest.raises(InputError, match="out of range for 2 records"):
        limited.load([2])


def test_a_schema_problem_is_reported_after_the_file_is_known_readable(tmp_path):
    # The whole file is parsed before the records are checked against the schema, as when every record was
    # held in memory first: bad JSON on line 3 is the error, not the missing field on line 2.
    good = json.dumps(RECS[3]).encode()
    p = tmp_path / "d.jsonl"
    p.write_bytes(good + b'\n{"instruction": "x"}\n{"instruction": \n')
    with pytest.raises(InputError, match=r"line 3: invalid JSON"):
        read_records(p)
    p.write_bytes(good + b'\n{"instruction": "x"}\n' + good + b"\n")
    with pytest.raises(InputError, match=r"line 2: missing field 'output'"):
        read_records(p)
    arr = tmp_path / "d.json"   # a byte that is not UTF-8 anywhere in an array comes before its JSON errors
    arr.write_bytes(b"[" + good + b", {bad json}, " + good.replace(b"hi", b"h\xff") + b"]")
    with pytest.raises(InputError, match=r"not UTF-8 text: byte 0xff"):
        read_records(arr)
