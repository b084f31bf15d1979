"""The solve-level pipeline and its report, on synthetic stores (no model): facility location and k-center
through the same path, the knee against an independent geometric reference, the one budget parser."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mads_fast import pipeline
from mads_fast.cli import main
from mads_fast.data import read_records
from mads_fast.errors import InputError
from mads_fast.options import parse_budget, resolve_budget
from mads_fast.report import knee_index, knee_of, radius_reductions, redraw
from mads_fast.solver import FacilityLocation, KCenter
from mads_fast.store import FeatureReader, FeatureStore, load_solver_input

# ---------------------------------------------------------------------------------------------------------------
# knee: Kneedle on the cumulative gains, against the point farthest from the chord measured geometrically


def reference_knee(gains) -> int:
    """0-based pick farthest above the chord of the normalised cumulative curve, by point-to-line distance."""
    y = np.cumsum(np.asarray(gains, dtype=np.float64))
    n = len(y)
    x = np.arange(n, dtype=np.float64) / (n - 1)
    y = (y - y[0]) / (y[-1] - y[0])
    # chord from (0, 0) to (1, 1): signed distance of (x, y) above it is (y - x) / sqrt(2)
    distances = [(y[i] - x[i]) / math.sqrt(2) for i in range(n)]
    return int(np.argmax(distances))


@pytest.mark.parametrize("gains", [
    [5, 5, 5, 5] + [0.1] * 16,                       # a sharp elbow after the 4th pick
    list(np.exp(-np.arange(40) / 6.0)),             # a smooth exponential decay
    list(1.0 / np.arange(1, 101)),                  # harmonic
    [3, 2.5, 2.4, 2.3, 0.2, 0.1],
])
def test_knee_index_is_the_point_farthest_above_the_chord(gains):
    assert knee_index(gains) == reference_knee(gains)


def test_knee_index_sharp_elbow_and_edge_cases():
    assert knee_index([5, 5, 5, 5] + [0.1] * 16) == 3
    assert knee_index([]) == 0
    assert knee_index([2.0]) == 0
    assert knee_index([2.0, 1.0]) == 1  # fewer than 3 picks: the last one
    assert knee_index([0.0, 0.0, 0.0, 0.0]) == 0  # a flat cumulative curve has no knee: the first pick


def test_kcenter_knee_is_taken_on_the_radius_reductions():
    radii = np.array([1.0, 0.6, 0.3, 0.29, 0.28, 0.27, 0.26])
    np.testing.assert_allclose(radius_reductions(radii), [0.0, 0.4, 0.3, 0.01, 0.01, 0.01, 0.01])
    assert knee_of("kcenter", radii) == knee_index([0.0, 0.4, 0.3, 0.01, 0.01, 0.01, 0.01]) + 1 == 3
    assert knee_of("facility", [5, 5, 5, 5] + [0.1] * 16) == 4
    assert knee_of("kcenter", []) == 0


# ---------------------------------------------------------------------------------------------------------------
# the budget: one parser for text and numbers, one rule for picks


@pytest.mark.parametrize("value, expected", [
    ("0.15", 0.15), ("7800", 7800), (" 3 ", 3), ("1", 1), ("1.0", 1.0), (7800, 7800), (np.int64(9), 9),
    (0.5, 0.5), (1.0, 1.0), (np.float32(0.25), 0.25),
])
def test_parse_budget_counts_are_ints_and_fractions_floats(value, expected):
    got = parse_budget(value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value", [0, -1, "0", "-0.1", "abc", "", True, None, float("nan"), 1.5, "1e400", 0.0,
                                   [3]])
def test_parse_budget_rejects_and_names_the_parameter(value):
    with pytest.raises(InputError, match="^budget: ") as info:
        parse_budget(value)
    assert info.value.param == "budget" and "--" not in str(info.value)


def test_resolve_budget():
    assert resolve_budget(0.15, 60) == 9
    assert resolve_budget(1.0, 7) == 7
    assert resolve_budget(0.001, 10) == 1  # never zero picks
    assert resolve_budget(4, 4) == 4
    with pytest.raises(InputError, match="only 4 records"):
        resolve_budget(5, 4)
    with pytest.raises(InputError, match="text"):
        resolve_budget("3", 10)  # the solvers take numbers; parse_budget reads text


# ---------------------------------------------------------------------------------------------------------------
# solve through the pipeline: a synthetic store in clusters, facility location and k-center


N, DIM = 60, 16


def _records(tmp_path, n=N, task="task"):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"{task} {i}", "input": "", "output": f"answer {i}"}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return read_records(path)


@pytest.fixture()
def store(tmp_path):
    """Features in 6 clusters, float32, 4 shards of 16 rows (the last one 12), for the records of _records."""
    rs = _records(tmp_path)
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((6, DIM)).astype(np.float32) * 4
    x = centres[np.arange(N) % 6] + rng.standard_normal((N, DIM)).astype(np.float32) * 0.3
    path = tmp_path / "store"
    fs = FeatureStore.open_for_write(
        path, model={"id": "synthetic", "weights_sha256": "00" * 32}, feature_spec={"what": "clusters"},
        dataset={"fingerprint": rs.fingerprint, "n_records": N, "path": str(rs.path)}, dim=DIM, width=DIM,
        dtype="float32", n_scales=0, shard_size=16)
    for shard in range(fs.n_shards):
        rows = fs.shard_range(shard)
        fs.write_shard(shard, x[rows.start:rows.stop], None, [rs.ids[i] for i in rows])
    fs.finalize()
    return path, rs


def test_facility_through_solve_matches_the_solver_and_the_report_agrees(store, tmp_path):
    path, rs = store
    result = pipeline.solve(path, 12, record_set=rs, out=tmp_path / "core.jsonl", indices_out=tmp_path / "p.jsonl",
                            report=tmp_path / "report", backend="numpy")
    direct = FacilityLocation(12, backend="numpy").fit(load_solver_input(path))
    np.testing.assert_array_equal(result.indices, direct.ranking_)
    np.testing.assert_allclose(result.gains, direct.gains_)
    assert result.radii is None and result.objective_name == "facility"
    assert result.knee == knee_index(direct.gains_) + 1
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["knee"]["picks"] == report["suggested_budget"] == result.knee
    assert report["knee"]["gain_at_knee"] == pytest.approx(result.gains[result.knee - 1])
    assert report["mean_coverage"] == pytest.approx(result.objective / N) and "radius" not in report
    picks = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [p["gain"] for p in picks] == pytest.approx(list(result.gains))
    assert (tmp_path / "core.jsonl").read_text().splitlines() == [json.dumps(rs.records[i]) for i in result.indices]


def test_kcenter_through_solve_has_radii_not_gains_and_one_knee(store, tmp_path):
    path, rs = store
    result = pipeline.solve(path, 12, objective="kcenter", record_set=rs, indices_out=tmp_path / "p.jsonl",
                            report=tmp_path / "report", backend="numpy")
    direct = KCenter(12, backend="numpy").fit(load_solver_input(path))
    np.testing.assert_array_equal(result.indices, direct.ranking_)
    assert result.gains is None and result.objective_name == "kcenter"
    np.testing.assert_allclose(result.radii, direct.radii_)
    np.testing.assert_allclose(result.curve, direct.radii_)
    assert result.objective == pytest.approx(direct.radii_[-1])
    assert np.all(np.diff(result.radii) <= 1e-12)  # the radius never grows
    assert result.knee == knee_of("kcenter", direct.radii_)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["knee"]["picks"] == report["suggested_budget"] == result.knee  # report.json agrees with itself
    assert report["knee"]["radius_at_knee"] == pytest.approx(result.radii[result.knee - 1])
    assert report["radius"] == pytest.approx(result.objective) and "mean_coverage" not in report
    picks = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert "gain" not in picks[0] and [p["radius"] for p in picks] == pytest.approx(list(result.radii))
    assert sum(p["weight"] for p in picks) == N
    with np.load(tmp_path / "report" / "report_data.npz") as data:
        assert "radii" in data.files and "gains" not in data.files
    before = (tmp_path / "report" / "gains.png").read_bytes()
    redraw(tmp_path / "report")
    assert (tmp_path / "report" / "gains.png").read_bytes() == before


def test_select_and_cli_solve_are_the_same_path(store, tmp_path, monkeypatch):
    path, rs = store
    calls = []
    real = pipeline.solve
    monkeypatch.setattr(pipeline, "solve", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert main(["solve", "--store", str(path), "--data", str(rs.path), "--budget", "0.2", "--objective", "kcenter",
                 "--backend", "numpy", "--out", str(tmp_path / "core.jsonl"), "--report", str(tmp_path / "r"),
                 "--quiet"]) == 0
    assert len(calls) == 1 and calls[0]["objective"] == "kcenter" and calls[0]["record_set"] is not None
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["budget"] == 12 and report["solver_dtype"] == "int8" and report["data"] == str(rs.path)


def test_report_reads_only_the_sampled_rows(store, tmp_path, monkeypatch):
    path, rs = store
    monkeypatch.setattr(pipeline, "REPORT_SAMPLE", 10)
    asked = []
    real_rows = FeatureReader.rows
    monkeypatch.setattr(FeatureReader, "rows", lambda self, positions, **kw: asked.append(len(positions))
                        or real_rows(self, positions, **kw))
    monkeypatch.setattr(FeatureReader, "_fill", lambda *a: pytest.fail("the report dequantised every row"))
    result = pipeline.SelectionResult(
        indices=np.arange(3), ids=["a", "b", "c"], weights=np.array([20, 20, 20]), curve=np.ones(3),
        objective=3.0, nearest=np.zeros(N, dtype=np.int64), nearest_similarity=np.ones(N, dtype=np.float32),
        knee=2, gains=np.array([2.0, 0.5, 0.5]))
    solver_input = np.eye(N, DIM, dtype=np.float32)
    summary = pipeline.build_report(tmp_path / "r", result, FeatureReader(path), solver_input, {})
    assert asked == [10] and summary["similarity_raw"]["pairs"] > 0


def test_errors_name_the_parameter_in_python_and_the_flag_on_the_command_line(store, tmp_path, capsys):
    path, rs = store
    with pytest.raises(InputError, match="^budget: ") as info:
        pipeline.solve(path, 0)
    assert "--" not in str(info.value)
    with pytest.raises(InputError, match="^mode: "):
        pipeline.solve(path, 3, mode="sparse")
    with pytest.raises(InputError, match="^store: .*does not exist"):
        pipeline.solve(tmp_path / "none", 3)
    with pytest.raises(InputError, match="^out: "):
        pipeline.solve(path, 3, out=tmp_path / "core.jsonl")  # the core set needs the records
    (tmp_path / "other").mkdir()
    other = _records(tmp_path / "other", task="another task")
    with pytest.raises(InputError, match="^store: .*do not match"):
        pipeline.solve(path, 3, record_set=other)
    assert main(["solve", "--store", str(path), "--budget", "0", "--quiet"]) == 2
    assert "mads-fast: error: --budget: a count must be >= 1" in capsys.readouterr().err
    assert main(["solve", "--store", str(tmp_path / "none"), "--budget", "3", "--quiet"]) == 2
    assert "mads-fast: error: --store: " in capsys.readouterr().err
