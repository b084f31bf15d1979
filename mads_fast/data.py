"""Records in and out: read a corpus, detect its format and schema, write a core set back.

Formats: JSON Lines, a JSON array, Parquet, and a ``datasets`` dataset saved to disk. Schemas: Alpaca
(``instruction``/``input``/``output``), ShareGPT (``conversations`` of ``from``/``value``), chat
``messages`` (``role``/``content``), or a text field the user names. Every record keeps a stable id
``"{position}:{sha1(canonical JSON)[:12]}"`` so a core set can be written back in the input's own
format (JSONL: the original line bytes) and joined with anything else.

Bad input raises a one-line :class:`~mads_fast.errors.InputError` naming the file, the line or
record, and the problem. A JSON array cut off mid-record is an error unless ``lenient=True``, which
keeps the complete records and says where the file was cut.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from mads_fast.atomic import atomic_dir, atomic_write
from mads_fast.errors import InputError

__all__ = ["RecordSet", "Salvage", "read_records", "write_records"]

FORMATS = ("jsonl", "json", "parquet", "hf_disk")
SCHEMAS = ("alpaca", "sharegpt", "messages", "text")

_FORMAT_NAMES = {"jsonl": "JSONL", "json": "JSON array", "parquet": "Parquet",
                 "hf_disk": "saved datasets dataset"}
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonlines": "jsonl", ".json": "json",
               ".parquet": "parquet", ".pq": "parquet"}

# ShareGPT dumps use several speaker names; the real ShareGPT_V3 file has human 61,420, gpt 67,594,
# system 41, chatgpt 8, bing 4, bard 2, user 2 turns among its 17,671 complete conversations.
SHAREGPT_ROLES = {"human": "user", "user": "user",
                  "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                  "assistant": "assistant", "model": "assistant",
                  "system": "system"}

_WS = re.compile(r"[ \t\n\r]*")
# What is left at a JSON error position when the text merely stops early: part of a literal
# ("tru", "Na", "-Infin": Python's json reads NaN and Infinity), a number's fraction or exponent ("1."
# fails at "."), or a \u escape ("\u12" fails at "u12"; so does "\u00e9" when the text ends right after
# it, since the decoder looks one character past the four digits for a surrogate pair's second half).
_CUT_TAIL = re.compile(r"t(r(u)?)?|f(a(l(s)?)?)?|n(u(l)?)?|N(a)?|-?I(n(f(i(n(i(t(y)?)?)?)?)?)?)?|-|"
                       r"[.eE][-+]?\d*|[eE][-+]?|u[0-9a-fA-F]{0,4}")


@dataclass
class Salvage:
    """What lenient mode kept from a file that stops mid-record.

    ``complete`` is the number of complete records before the cut, or None when ``limit`` stopped
    reading before the cut was reached (the file's end was only checked, not parsed).
    """
    kept: int                 # records kept in the RecordSet
    complete: Optional[int]   # complete records in the file before the cut (None: not counted)
    cut_byte: int             # byte offset where the file ends (the cut)
    cut_line: int             # 1-based line of the cut

    def describe(self) -> str:
        where = f"at byte {self.cut_byte:,} (line {self.cut_line:,})"
        if self.complete is None:
            return (f"file is cut off {where}; read only the first {self.kept:,} records, "
                    "complete records after them not counted")
        return f"salvaged {self.complete:,} complete records; file is cut off {where}"


@dataclass
class RecordSet:
    path: str
    format: str                   # "jsonl" | "json" | "parquet" | "hf_disk"
    schema: str                   # "alpaca" | "sharegpt" | "messages" | "text"
    records: list                 # parsed records (dicts), untouched
    ids: list                     # f"{position}:{sha1 of canonical JSON}[:12]"
    fingerprint: str              # sha256 over the ids: dataset identity for the feature store
    salvaged: Optional[Salvage] = None
    text_field: Optional[str] = None
    limit: Optional[int] = None   # the limit the set was read with (None: the whole file)
    empty: list = field(default_factory=list)   # positions of records with no message content
    # Where each record came from, for writing back: JSONL byte spans [N, 2] (start, end incl. the
    # newline), 1-based line numbers for JSONL/JSON error messages, the Arrow table or the dataset.
    _spans: Optional[np.ndarray] = field(default=None, repr=False)
    _lines: Optional[list] = field(default=None, repr=False)
    _table: Any = field(default=None, repr=False)
    _dataset: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    def where(self, i: int) -> str:
        """Human location of record ``i``: a line for JSONL, a record (and line) or a row otherwise."""
        if self.format == "jsonl" and self._lines is not None:
            return f"line {self._lines[i]:,}"
        if self.format == "json" and self._lines is not None:
            return f"record {i:,} (line {self._lines[i]:,})"
        return f"row {i:,}" if self.format in ("parquet", "hf_disk") else f"record {i:,}"

    def describe(self) -> str:
        """One line: file, count, format, schema, and anything salvaged, limited or empty."""
        schema = {"alpaca": "Alpaca schema (instruction/input/output)",
                  "sharegpt": "ShareGPT schema (conversations of from/value)",
                  "messages": "chat messages schema (role/content)",
                  "text": f"text field '{self.text_field}'"}[self.schema]
        line = (f"{os.path.basename(os.path.normpath(self.path))}: {len(self.records):,} records, "
                f"{_FORMAT_NAMES[self.format]}, {schema}")
        if self.limit is not None and self.salvaged is None and len(self.records) >= self.limit:
            line += f" (first {len(self.records):,} only: limit {self.limit:,})"
        if self.salvaged is not None:
            line += f"; {self.salvaged.describe()}"
        if self.empty:
            line += f"; {len(self.empty):,} with no messages"
        return line

    def messages(self, i: int) -> list:
        """Chat messages ``[{"role", "content"}]`` of record ``i``."""
        return _messages(self.schema, self.records[i], self.text_field)

    def text(self, i: int) -> str:
        """Plain text of record ``i``: the text field as given, else the message contents joined by blank lines."""
        if self.schema == "text":
            return self.records[i][self.text_field]
        return "\n\n".join(m["content"] for m in self.messages(i) if m["content"])


# ----------------------------------------------------------------------------------------------
# schemas

def _messages(schema: str, rec: dict, text_field: Optional[str]) -> list:
    if schema == "alpaca":
        user = rec["instruction"]
        if rec.get("input"):
            user = user + "\n\n" + rec["input"]
        return [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]
    if schema == "sharegpt":
        return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in rec["conversations"]]
    if schema == "messages":
        return [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
    return [{"role": "user", "content": rec[text_field]}]


def _detect_schema(rec: dict, text_field: Optional[str], seen_keys: list, path: str) -> str:
    if text_field is not None:
        return "text"
    if "conversations" in rec:
        return "sharegpt"
    if "messages" in rec:
        return "messages"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    strings = [k for k in seen_keys if isinstance(rec.get(k), str)]
    hint = f"pass text_field=NAME (--text-field; string fields: {', '.join(strings)})" if strings else \
        "pass text_field=NAME (--text-field)"
    raise InputError(f"unknown schema: keys seen {', '.join(seen_keys) or '(none)'}; expected Alpaca "
                     f"(instruction/output), ShareGPT (conversations), chat messages (messages); {hint}",
                     path=path)


def _type(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _check(schema: str, rec: dict, text_field: Optional[str]) -> Optional[str]:
    """The problem with ``rec`` under ``schema``, or None when it fits."""
    if schema == "text":
        if text_field not in rec:
            return f"missing field '{text_field}'"
        if not isinstance(rec[text_field], str):
            return f"field '{text_field}' is {_type(rec[text_field])}, not a string"
        return None
    if schema == "alpaca":
        for key in ("instruction", "output"):
            if key not in rec:
                return f"missing field '{key}' (Alpaca schema)"
            if not isinstance(rec[key], str):
                return f"field '{key}' is {_type(rec[key])}, not a string"
        if rec.get("input") is not None and not isinstance(rec["input"], str):
            return f"field 'input' is {_type(rec['input'])}, not a string"
        return None
    key, role_key, text_key = (("conversations", "from", "value") if schema == "sharegpt"
                               else ("messages", "role", "content"))
    if key not in rec:
        return f"missing field '{key}'"
    turns = rec[key]
    if not isinstance(turns, list):
        return f"field '{key}' is {_type(turns)}, not a list"
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"{key}[{t}] is {_type(turn)}, not an object"
        for k in (role_key, text_key):
            if k not in turn:
                return f"{key}[{t}] has no '{k}'"
            if not isinstance(turn[k], str):
                return f"{key}[{t}].{k} is {_type(turn[k])}, not a string"
        if schema == "sharegpt" and turn[role_key] not in SHAREGPT_ROLES:
            return (f"{key}[{t}].from is '{turn[role_key]}', not one of "
                    f"{', '.join(sorted(SHAREGPT_ROLES))}")
    return None


def _record_id(position: int, rec) -> str:
    canonical = json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    # surrogatepass: JSON may carry lone surrogates ("\ud800"), which strict UTF-8 cannot encode.
    return f"{position}:{hashlib.sha1(canonical.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


# ----------------------------------------------------------------------------------------------
# readers: each returns (records, extras) and raises InputError on bad input

def _bad_utf8(path: str, data: bytes, err: UnicodeDecodeError, base: int = 0, line: Optional[int] = None):
    offset = base + err.start
    if line is None:
        line = data.count(b"\n", 0, err.start) + 1
    return InputError(f"not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {offset:,} "
                      f"({err.reason})", path=path, where=f"line {line:,}")


def _read_jsonl(path: str, lenient: bool, limit: Optional[int]):
    records, spans, lines = [], [], []
    salvage = None
    offset = 0
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if limit is not None and len(records) >= limit:
                break
            body = raw[3:] if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") else raw
            if lineno == 1 and body is not raw:
                start += 3
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _bad_utf8(path, body, e, base=start, line=lineno) from None
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                last = offset == size and not raw.endswith(b"\n")
                if last and _is_cut_off(text.rstrip(), e):
                    where = f"at byte {size:,} (line {lineno:,})"
                    if not lenient:
                        raise InputError(f"last line is cut off after {len(records):,} complete records "
                                         f"{where}; pass lenient=True (--lenient) to keep them", path=path) from None
                    salvage = Salvage(kept=len(records), complete=len(records), cut_byte=size,
                                      cut_line=lineno)
                    break
                raise InputError(f"invalid JSON: {e.msg} (column {e.colno})", path=path,
                                 where=f"line {lineno:,}") from None
            if not isinstance(rec, dict):
                raise InputError(f"expected a JSON object, got {_type(rec)}", path=path,
                                 where=f"line {lineno:,}")
            records.append(rec)
            spans.append((start, offset))
            lines.append(lineno)
    return records, dict(_spans=np.asarray(spans, dtype=np.int64).reshape(-1, 2), _lines=lines), salvage


def _is_cut_off(text: str, err: json.JSONDecodeError) -> bool:
    """True when ``err`` is what the decoder says about text that stops early (not about bad text)."""
    if err.msg.startswith("Unterminated string"):
        return True   # the scanner only reports this when it reaches the end without a closing quote
    tail = text[err.pos:].rstrip()
    return tail == "" or _CUT_TAIL.fullmatch(tail) is not None


def _read_json_array(path: str, data: bytes, lenient: bool, limit: Optional[int]):
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    cut_mid_char = False
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        # A file cut inside a multi-byte character ends in an incomplete sequence; that is a cut, not
        # bad bytes, and the JSON scan below reports it as one.
        if e.reason == "unexpected end of data" and start + e.end == len(data):
            text = data[start:start + e.start].decode("utf-8")
            cut_mid_char = True
        else:
            # e is relative to the text after the BOM: so is the byte it names.
            raise _bad_utf8(path, data[start:], e, base=start,
                            line=data.count(b"\n", 0, start + e.start) + 1) from None
    size = len(data)
    cut_line = data.count(b"\n") + 1
    # limit: the closing ']' is checked from the end of the file, so a cut-off array is seen even
    # when parsing stops after the first `limit` records.
    tail_closed = data.rstrip().endswith(b"]") and not cut_mid_char
    stop_at = limit if (limit is not None and (tail_closed or lenient)) else None

    decoder = json.JSONDecoder()
    records, char_pos = [], []
    pos = _WS.match(text, 0).end()
    if text[pos:pos + 1] != "[":
        raise InputError("expected a JSON array of records", path=path, where="line 1")
    pos += 1
    cut = False
    while True:
        if stop_at is not None and len(records) >= stop_at:
            break
        pos = _WS.match(text, pos).end()
        if pos >= len(text):
            cut = True
            break
        if text[pos] == "]" and not records:
            pos += 1
            break
        try:
            rec, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if _is_cut_off(text, e):
                cut = True
                break
            raise InputError(f"invalid JSON: {e.msg} (column {e.colno})", path=path,
                             where=f"line {e.lineno:,} (record {len(records):,})") from None
        if not isinstance(rec, dict):
            raise InputError(f"expected a JSON object, got {_type(rec)}", path=path,
                             where=f"record {len(records):,} (line {text.count(chr(10), 0, pos) + 1:,})")
        records.append(rec)
        char_pos.append(pos)
        pos = _WS.match(text, end).end()
        if pos >= len(text):
            cut = True
            break
        if text[pos] == ",":
            pos += 1
        elif text[pos] == "]":
            pos += 1
            break
        else:
            line = text.count("\n", 0, pos) + 1
            raise InputError("invalid JSON: expecting ',' or ']' after a record", path=path,
                             where=f"line {line:,} (record {len(records):,})")

    salvage = None
    if cut:
        if not lenient:
            raise InputError(f"JSON array is cut off after {len(records):,} complete records at byte "
                             f"{size:,} (line {cut_line:,}); pass lenient=True (--lenient) to keep them", path=path)
        kept = records if limit is None else records[:limit]
        salvage = Salvage(kept=len(kept), complete=len(records), cut_byte=size, cut_line=cut_line)
        records, char_pos = kept, char_pos[:len(kept)]
    elif stop_at is not None and not tail_closed:
        # lenient + limit on a file whose end is not ']': stopped before reaching the cut.
        salvage = Salvage(kept=len(records), complete=None, cut_byte=size, cut_line=cut_line)
    elif stop_at is None:
        rest = _WS.match(text, pos).end()
        if rest < len(text):
            raise InputError("extra data after the JSON array", path=path,
                             where=f"line {text.count(chr(10), 0, rest) + 1:,}")
    lines = _line_numbers(text, char_pos)
    return records, dict(_lines=lines), salvage


def _line_numbers(text: str, positions: list) -> list:
    """1-based line of each (ascending) character position, in one pass over the text."""
    lines, line, last = [], 1, 0
    for p in positions:
        line += text.count("\n", last, p)
        last = p
        lines.append(line)
    return lines


def _read_parquet(path: str, limit: Optional[int]):
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with a multi-line message
        raise InputError(f"cannot read Parquet: {e}", path=path) from None
    if limit is not None:
        table = table.slice(0, limit)
    return table.to_pylist(), dict(_table=table), None


def _read_hf_disk(path: str, limit: Optional[int]):
    import datasets
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:
        raise InputError(f"cannot load the saved dataset: {e}", path=path) from None
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(f"a DatasetDict with splits {', '.join(ds)}; pass one split's directory "
                         f"(e.g. {os.path.join(path, next(iter(ds), 'train'))})", path=path)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    return ds.to_list(), dict(_dataset=ds), None


def _detect_format(path: str, head: bytes) -> str:
    ext = os.path.splitext(path)[1].lower()
    if head.startswith(b"PAR1"):
        return "parquet"
    if _EXTENSIONS.get(ext) == "parquet":
        raise InputError("not a Parquet file (no PAR1 magic bytes)", path=path)
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if _EXTENSIONS.get(ext) == "jsonl":
        return "jsonl"
    if first == b"[":
        return "json"
    if first == b"{":
        return "jsonl"   # a .json file holding one object per line is JSON Lines in practice
    raise InputError(f"unknown format{f' ({ext})' if ext else ''}: expected JSON Lines, a JSON array, "
                     "Parquet, or a saved datasets directory", path=path)


def read_records(path, *, text_field: Optional[str] = None, lenient: bool = False,
                 limit: Optional[int] = None) -> RecordSet:
    """Read every record of ``path``, detect format and schema, and check each record fits.

    ``text_field`` names a string field to use as the whole text (schema "text"); otherwise the
    schema is detected from the first record and every record must fit it.

    ``lenient`` keeps the complete records of a JSON array (or a JSONL file's last line) that is cut
    off mid-record, and records in ``RecordSet.salvaged`` how many and where the file was cut.

    ``limit`` keeps the first ``limit`` records and stops parsing there: records after them are not
    validated. A JSON array's end is still checked for its closing ']', so a cut-off file is never
    mistaken for a complete one: in strict mode it is an error (the whole file is scanned to count
    its complete records for the message); in lenient mode ``salvaged.complete`` is None because the
    records between the limit and the cut were not counted, unless the file holds fewer complete
    records than ``limit``, in which case the scan reached the cut and the count is exact.
    """
    path = os.fspath(path)
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}", path=path)
    if not os.path.exists(path):
        raise InputError("no such file or directory", path=path)
    salvage = None
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, n))
                   for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise InputError("a directory that is not a saved datasets dataset (no dataset_info.json "
                             "or state.json)", path=path)
        fmt = "hf_disk"
        records, extra, salvage = _read_hf_disk(path, limit)
    else:
        size = os.path.getsize(path)
        if size == 0:
            raise InputError("empty file", path=path)
        with open(path, "rb") as f:
            head = f.read(4096)
        if not head.strip():
            with open(path, "rb") as f:
                if not f.read().strip():
                    raise InputError("file contains only whitespace", path=path)
        fmt = _detect_format(path, head)
        if fmt == "parquet":
            records, extra, salvage = _read_parquet(path, limit)
        elif fmt == "json":
            with open(path, "rb") as f:
                data = f.read()
            records, extra, salvage = _read_json_array(path, data, lenient, limit)
        else:
            records, extra, salvage = _read_jsonl_or_object(path, lenient, limit)
    if not records:
        if salvage is not None:
            raise InputError(f"no complete records before the cut at byte {salvage.cut_byte:,}", path=path)
        raise InputError("no records", path=path)

    rs = RecordSet(path=path, format=fmt, schema="text", records=records, ids=[], fingerprint="",
                   salvaged=salvage, text_field=text_field, limit=limit, **extra)
    if not isinstance(records[0], dict):
        raise InputError(f"expected an object, got {_type(records[0])}", path=path, where=rs.where(0))
    seen = sorted({k for r in records[:100] if isinstance(r, dict) for k in r})
    rs.schema = _detect_schema(records[0], text_field, seen, path)
    for i, rec in enumerate(records):
        problem = _check(rs.schema, rec, text_field) if isinstance(rec, dict) else \
            f"expected an object, got {_type(rec)}"
        if problem:
            raise InputError(problem, path=path, where=rs.where(i))
    rs.empty = [i for i in range(len(records)) if not any(m["content"] for m in rs.messages(i))]
    rs.ids = [_record_id(i, rec) for i, rec in enumerate(records)]
    rs.fingerprint = hashlib.sha256("\n".join(rs.ids).encode()).hexdigest()
    return rs


def _read_jsonl_or_object(path: str, lenient: bool, limit: Optional[int]):
    try:
        return _read_jsonl(path, lenient, limit)
    except InputError as e:
        # A pretty-printed single object ({"data": [...]}) fails JSONL parsing on line 1; say what it is.
        if e.where == "line 1" and e.problem.startswith("invalid JSON"):
            try:
                with open(path, "rb") as f:
                    obj = json.loads(f.read())
            except (ValueError, UnicodeDecodeError):
                raise e from None
            if isinstance(obj, dict):
                raise InputError(f"one JSON object (keys: {', '.join(list(obj)[:10])}), not records; "
                                 "expected a JSON array or one object per line", path=path) from None
        raise


# ----------------------------------------------------------------------------------------------
# writer

def _check_indices(rs: RecordSet, indices, out_path: str) -> np.ndarray:
    idx = np.asarray(list(indices) if not hasattr(indices, "__array__") else indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise InputError(f"indices must be a 1-D list of integers, got shape {idx.shape} {idx.dtype}",
                         path=out_path)
    idx = idx.astype(np.int64)
    bad = idx[(idx < 0) | (idx >= len(rs.records))]
    if bad.size:
        raise InputError(f"index {int(bad[0])} is out of range for {len(rs.records):,} records",
                         path=out_path)
    return idx


def write_records(rs: RecordSet, indices: Iterable[int], out_path) -> None:
    """Write records ``indices`` of ``rs``, in that order, to ``out_path`` in the input's own format.

    JSONL: the original line bytes of each record. JSON: an array of the original objects. Parquet:
    the original rows (``table.take``). Saved dataset: ``dataset.select(indices).save_to_disk``.
    Written under a temporary name in the same directory and renamed into place; on any error
    nothing is left behind.
    """
    out_path = os.fspath(out_path)
    idx = _check_indices(rs, indices, out_path)
    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise InputError("output directory does not exist", path=out_path)
    if os.path.exists(out_path) and os.path.samefile(out_path, rs.path):
        raise InputError("output would overwrite the input", path=out_path)
    ext = os.path.splitext(out_path)[1].lower()
    if rs.format != "hf_disk" and _EXTENSIONS.get(ext) not in (None, rs.format) and \
            not (rs.format == "jsonl" and ext == ".json"):
        raise InputError(f"the core set is written in the input's format ({_FORMAT_NAMES[rs.format]}); "
                         f"'{ext}' names another", path=out_path)
    if rs.format == "hf_disk":
        _write_hf_disk(rs, idx, out_path)
        return
    def write(out):
        if rs.format == "jsonl":
            _write_jsonl(rs, idx, out)
        elif rs.format == "json":
            out.write(json.dumps([rs.records[i] for i in idx], ensure_ascii=False, indent=2)
                      .encode("utf-8", "surrogatepass") + b"\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq
            pq.write_table(rs._table.take(pa.array(idx, type=pa.int64())), out)

    atomic_write(out_path, write)


def _write_jsonl(rs: RecordSet, idx: np.ndarray, out) -> None:
    with open(rs.path, "rb") as src:
        for i in idx:
            start, end = rs._spans[i]
            src.seek(start)
            raw = src.read(end - start)
            # The bytes must still be the record that was read: a changed input file would
            # otherwise put different records under the same ids.
            try:
                same = _record_id(int(i), json.loads(raw)) == rs.ids[i]
            except ValueError:
                same = False
            if not same:
                raise InputError("input changed since it was read; read it again", path=rs.path,
                                 where=rs.where(int(i)))
            out.write(raw if raw.endswith(b"\n") else raw + b"\n")


def _write_hf_disk(rs: RecordSet, idx: np.ndarray, out_path: str) -> None:
    if os.path.exists(out_path) and not os.path.isdir(out_path):
        raise InputError("output exists and is not a directory", path=out_path)
    atomic_dir(out_path, lambda staging: rs._dataset.select(idx).save_to_disk(str(staging)), replace=True)
