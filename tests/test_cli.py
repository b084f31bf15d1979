"""The command line: bad inputs are one-line errors with exit code 2, and select works end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mads_fast.cli import main


def _slice(src, dst, n):
    with open(src, encoding="utf-8") as fh:
        dst.write_text("".join(next(fh) for _ in range(n)), encoding="utf-8")
    return dst


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


GOOD = '{"instruction": "Say hi", "input": "", "output": "hi"}\n'

# (name, file contents or None for a special case, extra args, substring of the one-line message)
BAD_INPUTS = [
    ("empty", "", [], "empty file"),
    ("whitespace", "   \n\t\n", [], "only whitespace"),
    ("invalid_json_line", GOOD + '{"instruction": "x", "output": \n' + GOOD, [], "line 2"),
    ("truncated_array", '[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "inp', [],
     "--lenient"),
    ("missing_fields", GOOD + '{"instruction": "only"}\n', [], "line 2"),
    ("non_utf8", GOOD.encode() + b'{"instruction": "\xff\xfe", "input": "", "output": "x"}\n', [], "UTF-8"),
    ("directory", None, [], "directory"),
    ("missing_file", None, [], "no such file"),
    ("missing_model", GOOD * 4, ["--model", "/nonexistent/model"], "model not found"),
    ("budget_zero", GOOD * 4, ["--budget", "0"], "--budget"),
    ("budget_negative", GOOD * 4, ["--budget", "-0.1"], "--budget"),
    ("budget_above_n", GOOD * 4, ["--budget", "5"], "only 4 records"),
    ("budget_text", GOOD * 4, ["--budget", "lots"], "--budget"),
]


@pytest.mark.parametrize("name, content, extra, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, name, content, extra, message):
    if name == "directory":
        data = tmp_path / "a_dir"
        data.mkdir()
    elif name == "missing_file":
        data = tmp_path / "nope.jsonl"
    else:
        suffix = ".json" if name == "truncated_array" else ".jsonl"
        data = _write(tmp_path, name + suffix, content)
    out = tmp_path / "out" / "core.jsonl"
    args = ["select", str(data), "--out", str(out), "--quiet"]
    if "--budget" not in extra:
        args += ["--budget", "0.5"]
    code = main(args + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0, err
    assert err.startswith("mads-fast: error:") and message in err, err
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "out").exists(), "no output, no store, no log on bad input"


def test_truncated_array_with_lenient_gets_past_reading(tmp_path, capsys):
    data = _write(tmp_path, "t.json", '[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c"')
    # lenient salvages the one complete record; budget 2 > 1 then fails on the budget, not on the file
    code = main(["select", str(data), "--out", str(tmp_path / "o.json"), "--budget", "2", "--lenient", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "only 1 records" in err


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["select"])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_runs_as_a_program_and_prints_help():
    proc = subprocess.run([sys.executable, "-m", "mads_fast.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("select", "extract", "solve", "report", "demo"):
        assert command in proc.stdout


@pytest.mark.slow
def test_select_end_to_end_with_default_model(tmp_path, alpaca_path):
    """The real default model over 60 real Alpaca records: records out are exactly records in."""
    data = _slice(alpaca_path, tmp_path / "alpaca60.jsonl", 60)
    out = tmp_path / "core.jsonl"
    args = ["select", str(data), "--budget", "0.15", "--out", str(out), "--indices-out", str(tmp_path / "p.jsonl"),
            "--report", str(tmp_path / "report"), "--store", str(tmp_path / "store"), "--max-length", "256",
            "--quiet"]
    assert main(args) == 0
    lines_in = data.read_bytes().splitlines(keepends=True)
    lines_out = out.read_bytes().splitlines(keepends=True)
    picks = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines_out) == len(picks) == 9  # round(0.15 * 60)
    assert lines_out == [lines_in[p["index"]] for p in picks]  # byte-identical records, pick order
    assert len({p["index"] for p in picks}) == 9
    assert sum(p["weight"] for p in picks) == 60
    gains = [p["gain"] for p in picks]
    assert all(a >= b - 1e-6 for a, b in zip(gains, gains[1:]))  # greedy gains never increase
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["budget"] == 9 and report["n_examples"] == 60
    assert report["similarity_raw"]["mean"] > 0.8 > report["similarity_solver_input"]["mean"]
    for png in ("coverage.png", "gains.png", "similarity.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report" / "run.log").exists()

    # a rerun reuses the store and gives identical output
    store_files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store").glob("shard-*")}
    first = out.read_bytes()
    assert main(args) == 0
    assert out.read_bytes() == first
    assert "model not loaded" in (tmp_path / "report" / "run.log").read_text()
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "store").glob("shard-*")} == store_files

    # solve on the same store with another budget, and redraw the report
    out2 = tmp_path / "core2.jsonl"
    assert main(["solve", "--store", str(tmp_path / "store"), "--data", str(data), "--out", str(out2),
                 "--budget", "5", "--quiet"]) == 0
    assert out2.read_bytes().splitlines(keepends=True) == lines_out[:5]  # greedy picks are nested
    assert main(["report", str(tmp_path / "report"), "--quiet"]) == 0
