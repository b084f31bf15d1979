"""Records in and out: read a corpus, detect its format and schema, write a core set back.

Formats: JSON Lines, a JSON array, Parquet, and a ``datasets`` dataset saved to disk. Schemas: Alpaca
(``instruction``/``input``/``output``), ShareGPT (``conversations`` of ``from``/``value``), chat
``messages`` (``role``/``content``), or a text field the user names. Every record keeps a stable id
``"{position}:{sha1(canonical JSON)[:12]}"`` so a core set can be written back in the input's own
format (JSONL: the original line bytes) and joined with anything else.

Reading keeps an index, not the records. One streaming pass parses each record, checks it against the
schema, hashes it into its id and the fingerprint, and drops it; what stays is where each record lies
(byte spans and line numbers for JSONL and JSON arrays, row-group offsets for Parquet, row numbers for a
saved dataset) and the ids as a fixed-width array of their hash parts, about 36 bytes a record. A record
is parsed again when it is asked for (``rs.records[i]``, ``rs.messages(i)``, ``rs.load(positions)``), and
every such parse checks that the bytes still hash to the record's id, so a file changed since it was read
is an error, never a silent mix of old ids and new records. A RecordSet pickles as its index alone, so it
can be shipped to another process that loads its own shards with ``rs.load(positions)``.

Bad input raises a one-line :class:`~mads_fast.errors.InputError` naming the file, the line or
record, and the problem. A JSON array cut off mid-record is an error unless ``lenient=True``, which
keeps the complete records and says where the file was cut.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import operator
import os
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from mads_fast.atomic import atomic_dir, atomic_write
from mads_fast.errors import InputError

__all__ = ["RecordIds", "RecordSet", "Salvage", "read_records", "write_records"]

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
# A decoder error this close to the end of a chunk of a JSON array may be the chunk's end, not the file's:
# the scan reads on and tries the record again (at the file's end, _is_cut_off decides).
_NEAR_END = 16

_HASH_CHARS = 12            # hex characters of the sha1 kept in an id
_CHUNK = 1 << 20            # bytes a JSON array is decoded at a time
_READ_AHEAD = 1 << 18       # bytes read past a record when records are asked for one by one, in order
_COALESCE = 1 << 16         # records closer than this in the file are read with one read when loading
_BATCH = 4096               # Parquet / saved-dataset rows converted to Python at a time
_LIST_BLOCK = 65536         # positions turned into Python lists at a time when streaming
_CHANGED = "input changed since it was read; read it again"


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


class RecordIds(Sequence):
    """The records' stable ids, ``"{position}:{sha1 of canonical JSON}[:12]"``, made on demand.

    Held as one fixed-width ``[N]`` array of the 12 hex characters (the position is the index), 12 bytes
    a record instead of a Python string each. Indexing gives the id string, a slice a list of them;
    iteration streams; it equals another RecordIds or a list of the same strings.
    """
    __slots__ = ("_hashes",)

    def __init__(self, hashes: np.ndarray):
        self._hashes = hashes     # [N] S12

    def __len__(self) -> int:
        return len(self._hashes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [f"{k}:{self._hashes[k].decode('ascii')}" for k in range(*i.indices(len(self._hashes)))]
        i = operator.index(i)
        n = len(self._hashes)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record id index {i} is out of range for {n:,} records")
        return f"{i}:{self._hashes[i].decode('ascii')}"

    def __iter__(self) -> Iterator[str]:
        n = len(self._hashes)
        for start in range(0, n, 65536):   # a block of bytes objects at a time, not N of them
            for k, h in enumerate(self._hashes[start:start + 65536].tolist(), start=start):
                yield f"{k}:{h.decode('ascii')}"

    def __eq__(self, other):
        if isinstance(other, RecordIds):
            return np.array_equal(self._hashes, other._hashes)
        if isinstance(other, list):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        n = len(self)
        head = ", ".join(repr(s) for s in self[:3])
        return f"RecordIds([{head}{', ...' if n > 3 else ''}], {n:,} ids)"


class _Records(Sequence):
    """``rs.records``: a read-only sequence that parses record ``i`` when it is asked for; iteration
    reads the file once, in order."""
    __slots__ = ("_rs",)

    def __init__(self, rs: "RecordSet"):
        self._rs = rs

    def __len__(self) -> int:
        return len(self._rs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            wanted = range(*i.indices(len(self._rs)))
            got = dict(self._rs._read_sorted(np.unique(np.asarray(wanted, dtype=np.int64))))
            return [got[k] for k in wanted]
        return self._rs._record(i)

    def __iter__(self) -> Iterator[dict]:
        for _, rec in self._rs._read_sorted(np.arange(len(self._rs), dtype=np.int64)):
            yield rec

    def __eq__(self, other):
        if isinstance(other, (list, _Records)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"<{len(self):,} records of {self._rs.path}, parsed on demand>"


# Attributes that live only in the process that made them: parsed records, read buffers, open datasets.
_TRANSIENT = ("_cache", "_block", "_last", "_batch", "_ds", "_ads")


class RecordSet:
    """An indexed corpus: what ``read_records`` returns.

    ``len(rs)``, ``rs.ids`` (:class:`RecordIds`), ``rs.fingerprint`` (sha256 over the ids joined by
    newlines: the dataset's identity for the feature store), ``rs.records`` (parsed on demand),
    ``rs.messages(i)``, ``rs.text(i)``, ``rs.where(i)``, ``rs.describe()``, ``rs.empty`` (positions of
    records with no message content), ``rs.salvaged``, ``rs.schema``, ``rs.format``, ``rs.path``.

    ``rs.load(positions)`` parses just those records (one pass, in file order) into a view of the same
    set on which ``render``, ``messages``, ``text``, ``where`` and ``ids`` work at those positions without
    parsing anything else. A RecordSet pickles as its index only (no records, file handles or Arrow
    tables; those are reopened when needed), tens of bytes a record, so it can be sent to a worker.
    """

    def __init__(self, *, path: str, format: str, schema: str, ids: RecordIds, fingerprint: str,
                 salvaged: Optional[Salvage] = None, text_field: Optional[str] = None,
                 limit: Optional[int] = None, empty: Optional[list] = None,
                 starts: Optional[np.ndarray] = None, ends: Optional[np.ndarray] = None,
                 lines: Optional[np.ndarray] = None, groups: Optional[np.ndarray] = None, dataset: Any = None):
        self.path = path
        self.format = format            # "jsonl" | "json" | "parquet" | "hf_disk"
        self.schema = schema            # "alpaca" | "sharegpt" | "messages" | "text"
        self.ids = ids                  # RecordIds: f"{position}:{sha1 of canonical JSON}[:12]"
        self.fingerprint = fingerprint  # sha256 over the ids: dataset identity for the feature store
        self.salvaged = salvaged
        self.text_field = text_field
        self.limit = limit              # the limit the set was read with (None: the whole file)
        self.empty = [] if empty is None else empty   # positions of records with no message content
        # Where each record lies. JSONL / JSON array: byte spans [start, end) (JSONL: end includes the
        # newline; JSON: the object's braces) and 1-based lines of the record's start. Parquet: the first
        # row of each row group and the file's row count last ([groups + 1]), as read. Saved dataset: the
        # position is the row.
        self._starts = starts
        self._ends = ends
        self._lines = lines
        self._groups = groups
        self._cache = None              # {position: record} of a view made by load()
        self._block = None              # (first, stop, byte offset, bytes): records read ahead in order
        self._last = None               # (position, record): the last record parsed on demand
        self._batch = None              # (first row, RecordBatch): Parquet rows read on demand
        self._ds = dataset              # the saved dataset, memory-mapped (reopened after unpickling)
        self._ads = None                # the same in Arrow format

    # ------------------------------------------------------------------ sequence and description

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"RecordSet({self.path!r}, {len(self):,} records, {self.format}, {self.schema})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for k in _TRANSIENT:
            state[k] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def records(self) -> _Records:
        """The records as a read-only sequence: ``records[i]`` parses record ``i``; iteration streams."""
        return _Records(self)

    @property
    def _dataset(self):
        """The saved dataset (None for other formats), reopened memory-mapped when this set was unpickled."""
        if self.format != "hf_disk":
            return None
        if self._ds is None:
            self._ds = _load_dataset(self.path, self.limit)
        return self._ds

    def where(self, i: int) -> str:
        """Human location of record ``i``: a line for JSONL, a record (and line) or a row otherwise."""
        return _where(self.format, i, None if self._lines is None else int(self._lines[i]))

    def describe(self) -> str:
        """One line: file, count, format, schema, and anything salvaged, limited or empty."""
        schema = {"alpaca": "Alpaca schema (instruction/input/output)",
                  "sharegpt": "ShareGPT schema (conversations of from/value)",
                  "messages": "chat messages schema (role/content)",
                  "text": f"text field '{self.text_field}'"}[self.schema]
        n = len(self)
        line = (f"{os.path.basename(os.path.normpath(self.path))}: {n:,} records, "
                f"{_FORMAT_NAMES[self.format]}, {schema}")
        if self.limit is not None and self.salvaged is None and n >= self.limit:
            line += f" (first {n:,} only: limit {self.limit:,})"
        if self.salvaged is not None:
            line += f"; {self.salvaged.describe()}"
        if self.empty:
            line += f"; {len(self.empty):,} with no messages"
        return line

    def messages(self, i: int) -> list:
        """Chat messages ``[{"role", "content"}]`` of record ``i``."""
        return _messages(self.schema, self._record(i), self.text_field)

    def text(self, i: int) -> str:
        """Plain text of record ``i``: the text field as given, else the message contents joined by blank lines."""
        if self.schema == "text":
            return self._record(i)[self.text_field]
        return "\n\n".join(m["content"] for m in self.messages(i) if m["content"])

    # ------------------------------------------------------------------ loading records

    def load(self, positions) -> "RecordSet":
        """A view of this set with the records at ``positions`` parsed, and nothing else.

        ``positions`` (any order, repeats allowed) are original positions; they are read in ascending
        file order in one pass (JSONL / JSON: nearby spans with one read; Parquet: only the row groups
        that hold them, converting only the rows asked for; saved dataset: those rows). On the view,
        ``records[i]``, ``messages(i)``, ``text(i)``, ``where(i)``, ``ids[i]`` and ``tokens.render(view,
        i, ...)`` work at each of them from memory; another position is parsed on demand as on ``self``.
        Every record read is checked against its id: a file changed since it was read raises the
        one-line InputError "input changed since it was read; read it again" naming the record.
        """
        pos = self._positions(positions)
        view = object.__new__(RecordSet)
        view.__dict__.update(self.__dict__)
        view._block = view._last = view._batch = None
        view._cache = dict(self._read_sorted(pos))
        return view

    def _positions(self, positions) -> np.ndarray:
        """``positions`` as sorted unique int64, each checked to be a position of this set."""
        pos = np.asarray(positions if hasattr(positions, "__len__") else list(positions))
        if pos.size == 0:
            return np.zeros(0, dtype=np.int64)
        if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
            raise InputError(f"positions must be a 1-D list of integers, got shape {pos.shape} {pos.dtype}",
                             path=self.path)
        pos = np.unique(pos.astype(np.int64))
        n = len(self)
        if pos[0] < 0 or pos[-1] >= n:
            bad = int(pos[0]) if pos[0] < 0 else int(pos[-1])
            raise InputError(f"position {bad} is out of range for {n:,} records", path=self.path)
        return pos

    def _changed(self, i: int) -> InputError:
        return InputError(_CHANGED, path=self.path, where=self.where(int(i)))

    def _verify(self, i: int, rec) -> Any:
        """``rec`` if it is still record ``i`` (it hashes to the id), else the 'input changed' error."""
        if not isinstance(rec, dict) or _digest(rec).encode("ascii") != self.ids._hashes[i]:
            raise self._changed(i)
        return rec

    def _parse(self, i: int, raw: bytes) -> dict:
        """Record ``i`` from its bytes, checked against its id."""
        try:
            rec = json.loads(raw.decode("utf-8"))
        except ValueError:   # not UTF-8 or not JSON any more: the file changed
            raise self._changed(i) from None
        return self._verify(i, rec)

    def _record(self, i) -> dict:
        """Record ``i``, parsed on demand (the view's cache, the last record, or the file)."""
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index {i} is out of range for {n:,} records")
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        last = self._last
        if last is not None and last[0] == i:
            return last[1]
        if self.format in ("jsonl", "json"):
            rec = self._record_from_block(i, ahead=last is not None and last[0] == i - 1)
        elif self.format == "parquet":
            rec = self._record_from_batch(i)
        else:
            rec = self._verify(i, self._arrow_dataset()[i:i + 1].to_pylist()[0])
        self._last = (i, rec)
        return rec

    def _record_from_block(self, i: int, ahead: bool) -> dict:
        block = self._block
        if block is None or not block[0] <= i < block[1]:
            start = int(self._starts[i])
            # In order (record i - 1 came just before), read ahead; otherwise just this record.
            stop = i + 1
            if ahead:
                stop = max(stop, int(np.searchsorted(self._ends, start + _READ_AHEAD, side="right")))
                stop = min(stop, len(self))
            end = int(self._ends[stop - 1])
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(end - start)
            if len(data) < end - start:   # the file is shorter now: keep the records still wholly in it
                stop = int(np.searchsorted(self._ends, start + len(data), side="right"))
                if stop <= i:
                    raise self._changed(i)
            block = self._block = (i, stop, start, data)
        first, stop, base, data = block
        return self._parse(i, data[int(self._starts[i]) - base:int(self._ends[i]) - base])

    def _record_from_batch(self, i: int) -> dict:
        batch = self._batch
        if batch is None or not batch[0] <= i < batch[0] + batch[1].num_rows:
            batch = None
            for first, rb in self._parquet_batches(np.array([i], dtype=np.int64), whole=True):
                batch = self._batch = (first, rb)
        first, rb = batch
        return self._verify(i, rb.slice(i - first, 1).to_pylist()[0])

    def _arrow_dataset(self):
        """The saved dataset giving Arrow tables (rows as ``Dataset.to_list`` gives them, once converted)."""
        if self._ads is None:
            self._ads = self._dataset.with_format("arrow")
        return self._ads

    def _read_sorted(self, pos: np.ndarray) -> Iterator[tuple]:
        """``(position, record)`` for sorted unique ``pos``, reading the file once in order."""
        cache = self._cache
        if not cache:
            yield from self._read_file(pos)
            return
        fresh = self._read_file(pos[~np.isin(pos, np.fromiter(cache, dtype=np.int64, count=len(cache)))])
        for k in range(0, len(pos), _LIST_BLOCK):
            for p in pos[k:k + _LIST_BLOCK].tolist():
                if p in cache:
                    yield p, cache[p]
                else:
                    q, rec = next(fresh)
                    assert q == p
                    yield q, rec

    def _read_file(self, pos: np.ndarray) -> Iterator[tuple]:
        if len(pos) == 0:
            return
        if self.format in ("jsonl", "json"):
            yield from self._read_spans(pos)
        elif self.format == "parquet":
            for first, rb in self._parquet_batches(pos):
                rows = rb.to_pylist()
                for p, rec in zip(first.tolist(), rows):
                    yield p, self._verify(p, rec)
        else:
            arrow = self._arrow_dataset()
            for k in range(0, len(pos), _BATCH):
                chunk = pos[k:k + _BATCH].tolist()
                try:
                    rows = arrow[chunk].to_pylist()
                except Exception:   # the dataset's files changed under it
                    raise self._changed(chunk[0]) from None
                for p, rec in zip(chunk, rows):
                    yield p, self._verify(p, rec)

    def _read_spans(self, pos: np.ndarray) -> Iterator[tuple]:
        with open(self.path, "rb") as f:
            for c in range(0, len(pos), _LIST_BLOCK):   # Python lists of a block of positions at a time
                block = pos[c:c + _LIST_BLOCK]
                plist, starts, ends = block.tolist(), self._starts[block].tolist(), self._ends[block].tolist()
                k = 0
                while k < len(plist):
                    # One read for the run of records that lie close together.
                    m = k + 1
                    while (m < len(plist) and ends[m] - starts[k] <= _READ_AHEAD
                           and starts[m] - ends[m - 1] <= _COALESCE):
                        m += 1
                    base = starts[k]
                    f.seek(base)
                    data = f.read(ends[m - 1] - base)
                    for j in range(k, m):
                        raw = data[starts[j] - base:ends[j] - base]
                        if len(raw) != ends[j] - starts[j]:
                            raise self._changed(plist[j])
                        yield plist[j], self._parse(plist[j], raw)
                    k = m

    def _parquet_batches(self, pos: np.ndarray, whole: bool = False) -> Iterator[tuple]:
        """For sorted ``pos``: ``(positions, RecordBatch of just those rows)``, reading only the row groups
        that hold them and stopping after the last. ``whole``: the entire batch that holds each position,
        as ``(first row, RecordBatch)``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        groups = self._groups
        try:
            pf = pq.ParquetFile(self.path)
        except Exception:
            raise self._changed(pos[0]) from None
        with pf:
            md = pf.metadata
            now = np.concatenate([[0], np.cumsum([md.row_group(g).num_rows for g in range(md.num_row_groups)])])
            if not np.array_equal(now, groups):   # other row groups: the file is not the one indexed
                raise self._changed(pos[0])
            group_of = np.searchsorted(groups, pos, side="right") - 1
            for g in np.unique(group_of).tolist():
                local = pos[group_of == g] - groups[g]
                row, k = 0, 0
                try:
                    for rb in pf.iter_batches(batch_size=_BATCH, row_groups=[g], use_threads=False):
                        hi = row + rb.num_rows
                        m = int(np.searchsorted(local, hi))
                        if m > k:
                            if whole:
                                yield int(groups[g]) + row, rb
                            else:
                                take = local[k:m] - row
                                yield take + row + groups[g], rb.take(pa.array(take, type=pa.int64()))
                        k, row = m, hi
                        if k >= len(local):
                            break
                except InputError:
                    raise
                except Exception:   # pages that no longer decode: the file changed
                    raise self._changed(int(local[k] + groups[g]) if k < len(local) else pos[0]) from None


def _where(fmt: str, i: int, line: Optional[int]) -> str:
    if fmt == "jsonl" and line is not None:
        return f"line {line:,}"
    if fmt == "json" and line is not None:
        return f"record {i:,} (line {line:,})"
    return f"row {i:,}" if fmt in ("parquet", "hf_disk") else f"record {i:,}"


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


def _detect_schema(rec: dict, text_field: Optional[str]) -> Optional[str]:
    """The schema of the first record, or None when it fits none (see ``_unknown_schema``)."""
    if text_field is not None:
        return "text"
    if "conversations" in rec:
        return "sharegpt"
    if "messages" in rec:
        return "messages"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    return None


def _unknown_schema(rec: dict, seen_keys: list, path: str) -> InputError:
    strings = [k for k in seen_keys if isinstance(rec.get(k), str)]
    hint = f"pass text_field=NAME (--text-field; string fields: {', '.join(strings)})" if strings else \
        "pass text_field=NAME (--text-field)"
    return InputError(f"unknown schema: keys seen {', '.join(seen_keys) or '(none)'}; expected Alpaca "
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


# json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str), without making an
# encoder for every record
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode


def _digest(rec) -> str:
    """The id's hash part: sha1 of the record's canonical JSON (sorted keys, compact, UTF-8), 12 hex chars."""
    canonical = _CANONICAL(rec)
    # surrogatepass: JSON may carry lone surrogates ("\ud800"), which strict UTF-8 cannot encode.
    return hashlib.sha1(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def _record_id(position: int, rec) -> str:
    return f"{position}:{_digest(rec)}"


# ----------------------------------------------------------------------------------------------
# the index: one streaming pass

_UNKNOWN = object()   # deferred "unknown schema": its message needs the keys of the first 100 records


class _Indexer:
    """What one pass over the records keeps: each record is checked, hashed and dropped.

    The readers call ``add`` for each record in file order. Problems with a record's fit to the schema
    are held back, not raised, until the reader has finished the file: a record that does not fit the
    schema is reported only when the file itself is readable, as when every record was parsed first.
    """

    def __init__(self, path: str, fmt: str, text_field: Optional[str], spans: bool):
        self.path, self.fmt, self.text_field = path, fmt, text_field
        self.n = 0
        self.hashes = bytearray()          # 12 hex bytes a record
        self.fingerprint = hashlib.sha256()
        self.empty: list = []
        self.schema: Optional[str] = None
        self.first = None                  # record 0, kept only while its schema is unknown
        self.keys: set = set()             # keys of the first 100 records (for the unknown-schema message)
        self.problem = None                # the first problem: an InputError, or _UNKNOWN
        self.spans = spans
        self.starts, self.ends, self.lines = array("q"), array("q"), array("q")

    def add(self, rec, start: int = 0, end: int = 0, line: Optional[int] = None) -> None:
        p = self.n
        self.n += 1
        if self.spans:
            self.starts.append(start)
            self.ends.append(end)
            self.lines.append(line)
        if p < 100 and isinstance(rec, dict):
            self.keys.update(rec)
        if self.problem is not None:
            return
        if p == 0:
            if not isinstance(rec, dict):
                self.problem = InputError(f"expected an object, got {_type(rec)}", path=self.path,
                                          where=_where(self.fmt, 0, line))
                return
            self.schema = _detect_schema(rec, self.text_field)
            if self.schema is None:
                self.first, self.problem = rec, _UNKNOWN
                return
        problem = _check(self.schema, rec, self.text_field) if isinstance(rec, dict) else \
            f"expected an object, got {_type(rec)}"
        if problem:
            self.problem = InputError(problem, path=self.path, where=_where(self.fmt, p, line))
            return
        if not any(m["content"] for m in _messages(self.schema, rec, self.text_field)):
            self.empty.append(p)
        digest = _digest(rec)
        self.hashes += digest.encode("ascii")
        self.fingerprint.update(f"{chr(10) if p else ''}{p}:{digest}".encode("ascii"))

    def finish(self, salvage: Optional[Salvage], limit: Optional[int], **extra) -> RecordSet:
        if self.n == 0:
            if salvage is not None:
                raise InputError(f"no complete records before the cut at byte {salvage.cut_byte:,}", path=self.path)
            raise InputError("no records", path=self.path)
        if self.problem is _UNKNOWN:
            raise _unknown_schema(self.first, sorted(self.keys), self.path)
        if self.problem is not None:
            raise self.problem
        ids = RecordIds(np.frombuffer(self.hashes, dtype=f"S{_HASH_CHARS}"))
        if self.spans:
            extra.update(starts=np.frombuffer(self.starts, dtype=np.int64),
                         ends=np.frombuffer(self.ends, dtype=np.int64),
                         lines=np.frombuffer(self.lines, dtype=np.int64))
        return RecordSet(path=self.path, format=self.fmt, schema=self.schema, ids=ids,
                         fingerprint=self.fingerprint.hexdigest(), salvaged=salvage, text_field=self.text_field,
                         limit=limit, empty=self.empty, **extra)


# ----------------------------------------------------------------------------------------------
# readers: each feeds an _Indexer and raises InputError on bad input

def _bad_utf8(path: str, data: bytes, err: UnicodeDecodeError, base: int = 0, line: Optional[int] = None):
    offset = base + err.start
    if line is None:
        line = data.count(b"\n", 0, err.start) + 1
    return InputError(f"not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {offset:,} "
                      f"({err.reason})", path=path, where=f"line {line:,}")


def _index_jsonl(path: str, lenient: bool, limit: Optional[int], ix: _Indexer) -> Optional[Salvage]:
    salvage = None
    offset = 0
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if limit is not None and ix.n >= limit:
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
                        raise InputError(f"last line is cut off after {ix.n:,} complete records "
                                         f"{where}; pass lenient=True (--lenient) to keep them", path=path) from None
                    salvage = Salvage(kept=ix.n, complete=ix.n, cut_byte=size, cut_line=lineno)
                    break
                raise InputError(f"invalid JSON: {e.msg} (column {e.colno})", path=path,
                                 where=f"line {lineno:,}") from None
            if not isinstance(rec, dict):
                raise InputError(f"expected a JSON object, got {_type(rec)}", path=path,
                                 where=f"line {lineno:,}")
            ix.add(rec, start, offset, lineno)
    return salvage


def _is_cut_off(text: str, err: json.JSONDecodeError) -> bool:
    """True when ``err`` is what the decoder says about text that stops early (not about bad text)."""
    if err.msg.startswith("Unterminated string"):
        return True   # the scanner only reports this when it reaches the end without a closing quote
    tail = text[err.pos:].rstrip()
    return tail == "" or _CUT_TAIL.fullmatch(tail) is not None


class _Utf8Text:
    """A file's UTF-8 text, decoded a chunk at a time into a buffer that forgets what was consumed.

    ``mark`` is a buffer position whose byte offset in the file and line are known; ``advance(p)`` moves
    it forward to ``p``, so every character is counted (and, outside ASCII, encoded) once. ``more()``
    drops the text before ``mark`` and decodes the next chunk; buffer positions held by the caller
    (``pos``) are shifted with it. The whole file is decoded in order, so a byte that is not UTF-8
    is reported as the first problem of the file wherever a JSON problem is found (``drain``).
    """

    def __init__(self, path: str, f, start: int):
        self.path, self.f = path, f
        self.text = ""
        self.pos = 0                  # the scanner's position in text
        self.mark, self.mark_byte, self.mark_line = 0, start, 1
        self.col_base = 0             # characters before text[0] on its line
        self.ascii = True             # text is all ASCII: byte offsets are character offsets
        self.pending = b""            # bytes of a character split by a chunk boundary
        self.data_off = start         # file offset of pending[0]
        self.newlines = 0             # newlines decoded so far
        self.eof = False
        self.cut_mid_char = False     # the file ends inside a multi-byte character

    def _decode(self, want: int) -> Optional[str]:
        if self.eof:
            return None
        chunk = self.f.read(want)
        final = len(chunk) < want
        data = self.pending + chunk
        try:
            s, used = codecs.utf_8_decode(data, "strict", final)
        except UnicodeDecodeError as e:
            # A file cut inside a multi-byte character ends in an incomplete sequence; that is a cut, not
            # bad bytes, and the JSON scan reports it as one.
            if final and e.reason == "unexpected end of data" and e.end == len(data):
                s, used = data[:e.start].decode("utf-8"), len(data)
                self.cut_mid_char = True
            else:
                line = self.newlines + data.count(b"\n", 0, e.start) + 1
                raise _bad_utf8(self.path, data, e, base=self.data_off, line=line) from None
        self.pending, self.data_off = data[used:], self.data_off + used
        self.newlines += s.count("\n")
        self.eof = final
        return s

    def more(self) -> bool:
        """Append the next chunk of text; False when the file had nothing more."""
        # A record longer than a chunk doubles the read, so re-parsing it stays linear.
        s = self._decode(max(_CHUNK, len(self.text) - self.mark))
        if s is None:
            return False
        cut = self.mark
        if cut:
            nl = self.text.rfind("\n", 0, cut)
            self.col_base = cut - nl - 1 if nl >= 0 else self.col_base + cut
            self.text = self.text[cut:] + s
            self.ascii = self.text.isascii()
            self.pos -= cut
            self.mark = 0
        else:
            self.text += s
            self.ascii = self.ascii and s.isascii()
        return True

    def drain(self) -> None:
        """Decode the rest of the file (raising on a byte that is not UTF-8) without keeping it."""
        while self._decode(_CHUNK) is not None:
            pass

    def skip_ws(self) -> bool:
        """Move ``pos`` past whitespace; False when the text ends there."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return True
            if not self.more():
                return False

    def advance(self, p: int) -> tuple:
        """``(byte offset, line)`` of buffer position ``p`` (at or after ``mark``), which becomes ``mark``."""
        seg = self.text[self.mark:p]
        self.mark_byte += len(seg) if self.ascii else len(seg.encode("utf-8"))
        self.mark_line += seg.count("\n")
        self.mark = p
        return self.mark_byte, self.mark_line

    def line(self, p: int) -> int:
        return self.mark_line + self.text.count("\n", self.mark, p)

    def column(self, p: int) -> int:
        nl = self.text.rfind("\n", 0, p)
        return p - nl if nl >= 0 else self.col_base + p + 1


def _last_byte(f, size: int) -> bytes:
    """The file's last byte that is not ASCII whitespace (b"" if none), read from the end."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        f.seek(start)
        block = f.read(end - start).rstrip()
        if block:
            return block[-1:]
        end = start
    return b""


def _index_json_array(path: str, size: int, lenient: bool, limit: Optional[int], ix: _Indexer) -> Optional[Salvage]:
    with open(path, "rb") as f:
        start = 3 if f.read(3) == b"\xef\xbb\xbf" else 0
        # limit: the closing ']' is checked from the end of the file, so a cut-off array is seen even
        # when parsing stops after the first `limit` records.
        tail_closed = _last_byte(f, size) == b"]"
        stop_at = limit if (limit is not None and (tail_closed or lenient)) else None
        f.seek(start)
        t = _Utf8Text(path, f, start)

        def fail(problem: str, where: Optional[str] = None):
            t.drain()   # a byte that is not UTF-8 anywhere in the file is its first problem
            return InputError(problem, path=path, where=where)

        decoder = json.JSONDecoder()
        if not t.skip_ws() or t.text[t.pos] != "[":
            raise fail("expected a JSON array of records", where="line 1")
        t.pos += 1
        count = 0          # complete records parsed (those past `limit` only counted)
        cut = False
        while True:
            if stop_at is not None and count >= stop_at:
                break
            if not t.skip_ws():
                cut = True
                break
            if t.text[t.pos] == "]" and not count:
                t.pos += 1
                break
            while True:
                try:
                    rec, end = decoder.raw_decode(t.text, t.pos)
                    break
                except json.JSONDecodeError as e:
                    maybe_cut = _is_cut_off(t.text, e)
                    if (maybe_cut or e.pos >= len(t.text) - _NEAR_END) and t.more():
                        continue       # the record goes on in the next chunk: try it again
                    if not maybe_cut:
                        raise fail(f"invalid JSON: {e.msg} (column {t.column(e.pos)})",
                                   where=f"line {t.line(e.pos):,} (record {count:,})") from None
                    cut = True         # the record stops where the file does
                    break
            if cut:
                break
            if not isinstance(rec, dict):
                raise fail(f"expected a JSON object, got {_type(rec)}",
                           where=f"record {count:,} (line {t.line(t.pos):,})")
            first, line = t.advance(t.pos)
            last, _ = t.advance(end)
            if limit is None or count < limit:
                ix.add(rec, first, last, line)
            count += 1
            t.pos = end
            if not t.skip_ws():
                cut = True
                break
            if t.text[t.pos] == ",":
                t.pos += 1
            elif t.text[t.pos] == "]":
                t.pos += 1
                break
            else:
                raise fail("invalid JSON: expecting ',' or ']' after a record",
                           where=f"line {t.line(t.pos):,} (record {count:,})")

        salvage = None
        if cut:
            cut_line = t.newlines + 1
            if not lenient:
                raise fail(f"JSON array is cut off after {count:,} complete records at byte "
                           f"{size:,} (line {cut_line:,}); pass lenient=True (--lenient) to keep them")
            salvage = Salvage(kept=ix.n, complete=count, cut_byte=size, cut_line=cut_line)
        elif stop_at is not None:
            t.drain()
            if not tail_closed:
                # lenient + limit on a file whose end is not ']': stopped before reaching the cut.
                salvage = Salvage(kept=ix.n, complete=None, cut_byte=size, cut_line=t.newlines + 1)
        elif t.skip_ws():
            raise fail("extra data after the JSON array", where=f"line {t.line(t.pos):,}")
    return salvage


def _index_parquet(path: str, limit: Optional[int], ix: _Indexer) -> dict:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with a multi-line message
        # The message users have seen is pyarrow.parquet.read_table's (it names the input source); a
        # file ParquetFile cannot open fails there too, at once.
        try:
            pq.read_table(path)
        except Exception as e2:
            e = e2
        raise InputError(f"cannot read Parquet: {e}", path=path) from None
    with pf:
        md = pf.metadata
        groups = np.concatenate([[0], np.cumsum([md.row_group(g).num_rows for g in range(md.num_row_groups)],
                                                dtype=np.int64)]).astype(np.int64)
        n = md.num_rows if limit is None else min(md.num_rows, limit)
        try:
            for rb in pf.iter_batches(batch_size=_BATCH, use_threads=False):
                if ix.n >= n:
                    break
                for rec in rb.slice(0, n - ix.n).to_pylist():
                    ix.add(rec)
        except Exception as e:
            raise InputError(f"cannot read Parquet: {e}", path=path) from None
    return dict(groups=groups)


def _load_dataset(path: str, limit: Optional[int]):
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
    return ds


def _index_hf_disk(path: str, limit: Optional[int], ix: _Indexer) -> dict:
    ds = _load_dataset(path, limit)
    arrow = ds.with_format("arrow")   # rows as Arrow, then Python: what Dataset.to_list gives
    for start in range(0, len(ds), _BATCH):
        for rec in arrow[start:start + _BATCH].to_pylist():
            ix.add(rec)
    return dict(dataset=ds)


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
    """Index every record of ``path``, detect format and schema, and check each record fits.

    One streaming pass: each record is parsed, checked, hashed into its id and the fingerprint, and
    dropped; the RecordSet keeps where each record lies and parses records again when they are asked for.

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
    salvage, extra = None, {}
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, n))
                   for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise InputError("a directory that is not a saved datasets dataset (no dataset_info.json "
                             "or state.json)", path=path)
        ix = _Indexer(path, "hf_disk", text_field, spans=False)
        extra = _index_hf_disk(path, limit, ix)
    else:
        size = os.path.getsize(path)
        if size == 0:
            raise InputError("empty file", path=path)
        with open(path, "rb") as f:
            head = f.read(4096)
            if not head.strip():
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        raise InputError("file contains only whitespace", path=path)
                    if block.strip():
                        break
        fmt = _detect_format(path, head)
        ix = _Indexer(path, fmt, text_field, spans=fmt in ("jsonl", "json"))
        if fmt == "parquet":
            extra = _index_parquet(path, limit, ix)
        elif fmt == "json":
            salvage = _index_json_array(path, size, lenient, limit, ix)
        else:
            salvage = _index_jsonl_or_object(path, lenient, limit, ix)
    return ix.finish(salvage, limit, **extra)


def _index_jsonl_or_object(path: str, lenient: bool, limit: Optional[int], ix: _Indexer) -> Optional[Salvage]:
    try:
        return _index_jsonl(path, lenient, limit, ix)
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
    bad = idx[(idx < 0) | (idx >= len(rs))]
    if bad.size:
        raise InputError(f"index {int(bad[0])} is out of range for {len(rs):,} records",
                         path=out_path)
    return idx


def write_records(rs: RecordSet, indices: Iterable[int], out_path) -> None:
    """Write records ``indices`` of ``rs``, in that order, to ``out_path`` in the input's own format.

    Streams through the input; no more than one record (Parquet: the rows written) is held at a time.
    JSONL: the original line bytes of each record. JSON: an array of the original objects, byte for byte
    ``json.dumps(records, ensure_ascii=False, indent=2)`` and a newline. Parquet: the original rows, read
    from just the row groups that hold them. Saved dataset: ``dataset.select(indices).save_to_disk``.
    Every record read is checked against its id first (a changed input is an error, not a core set of
    other records). Written under a temporary name in the same directory and renamed into place; on any
    error nothing is left behind.
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
    writer = {"jsonl": _write_jsonl, "json": _write_json_array, "parquet": _write_parquet}[rs.format]
    atomic_write(out_path, lambda out: writer(rs, idx, out))


def _spans_in_order(rs: RecordSet, idx: np.ndarray) -> Iterator[tuple]:
    """``(position, raw bytes)`` of each record of ``idx``, in that order."""
    with open(rs.path, "rb") as src:
        for c in range(0, len(idx), _LIST_BLOCK):
            block = idx[c:c + _LIST_BLOCK]
            for i, start, end in zip(block.tolist(), rs._starts[block].tolist(), rs._ends[block].tolist()):
                src.seek(start)
                yield i, src.read(end - start)


def _write_jsonl(rs: RecordSet, idx: np.ndarray, out) -> None:
    for i, raw in _spans_in_order(rs, idx):
        # The bytes must still be the record that was read: a changed input file would
        # otherwise put different records under the same ids.
        rs._parse(i, raw)
        out.write(raw if raw.endswith(b"\n") else raw + b"\n")


def _write_json_array(rs: RecordSet, idx: np.ndarray, out) -> None:
    # json.dumps of the whole list, one element at a time: with indent=2 the list is "[\n", each element
    # dumped at depth 1, joined by ",\n", then "\n]"; dumping [rec] and dropping its "[\n" and "\n]"
    # gives exactly that element.
    if not len(idx):
        out.write(b"[]\n")
        return
    out.write(b"[\n")
    for k, (i, raw) in enumerate(_spans_in_order(rs, idx)):
        rec = rs._parse(i, raw)
        if k:
            out.write(b",\n")
        out.write(json.dumps([rec], ensure_ascii=False, indent=2)[2:-2].encode("utf-8", "surrogatepass"))
    out.write(b"\n]\n")


def _write_parquet(rs: RecordSet, idx: np.ndarray, out) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = np.unique(idx)
    parts = []
    for positions, rb in (rs._parquet_batches(wanted) if len(wanted) else ()):
        for p, rec in zip(positions.tolist(), rb.to_pylist()):
            rs._verify(p, rec)
        parts.append(rb)
    try:
        with pq.ParquetFile(rs.path) as pf:
            schema = pf.schema_arrow
    except Exception:
        raise rs._changed(int(idx[0]) if len(idx) else 0) from None
    table = pa.Table.from_batches(parts, schema=schema)          # the wanted rows, in file order
    pq.write_table(table.take(pa.array(np.searchsorted(wanted, idx), type=pa.int64())), out)


def _write_hf_disk(rs: RecordSet, idx: np.ndarray, out_path: str) -> None:
    if os.path.exists(out_path) and not os.path.isdir(out_path):
        raise InputError("output exists and is not a directory", path=out_path)
    atomic_dir(out_path, lambda staging: rs._dataset.select(idx).save_to_disk(str(staging)), replace=True)
