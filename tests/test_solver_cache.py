"""The C++ solver's similarity cache (memory_budget): the whole matrix built once and read by the lazy greedy,
against the streaming path on the same inputs and against the naive float64 greedy, on shapes that hit the
build's edges (N not a multiple of the 64-row tiles or the 384-wide blocks, one row, odd D), int8 and
float32, duplicates (exact ties), zero rows; and the memory_budget option's parsing, default and errors."""
import numpy as np
import pytest

from mads_fast.errors import InputError
from mads_fast.options import parse_memory_budget
from mads_fast.solver import FacilityLocation, available_backends
from mads_fast.solver import _memory
from mads_fast.solver._native import load_native

from greedy_reference import cosine64, naive_greedy

pytestmark = [pytest.mark.skipif("cpp" not in available_backends(), reason="the C++ solver module does not load"),
              pytest.mark.usefixtures("cpu_isa")]   # once per C++ kernel family

HUGE = 1 << 40  # a budget every test matrix fits


def clustered(rng, n, d, centers=7, noise=0.5):
    C = rng.normal(size=(centers, d))
    return (C[rng.integers(0, centers, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


INPUTS = {
    "one_row": lambda rng: rng.normal(size=(1, 3)).astype(np.float32),
    "n63_d1": lambda rng: rng.normal(size=(63, 1)).astype(np.float32),  # D = 1: every cosine is +-1 or 0
    "n65_d7": lambda rng: clustered(rng, 65, 7),
    "n385_d33": lambda rng: clustered(rng, 385, 33),   # one row past the first 384-wide block
    "n833_d5": lambda rng: clustered(rng, 833, 5),     # three blocks, the last one partial and padded
    "duplicates": lambda rng: np.repeat(clustered(rng, 40, 6), 9, axis=0),  # 9 exact copies: ties everywhere
    "zero_rows": lambda rng: np.vstack([np.zeros((5, 9)), clustered(rng, 300, 9), np.zeros((3, 9))]).astype(
        np.float32),
    "int8": lambda rng: rng.integers(-5, 6, size=(451, 11)).astype(np.int8),  # exact ties and zero rows
    "int8_clustered": lambda rng: np.clip(np.round(clustered(rng, 400, 13) * 40), -127, 127).astype(np.int8),
}


def engine(X):
    return load_native("cpp").DenseSimilarity(np.ascontiguousarray(X))


def budgets(n):
    return sorted({1, min(n, 3), max(1, n // 3), n})  # n: every row picked, zero gains at the end


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_cached_and_streaming_paths_pick_the_same_and_equal_the_naive_greedy(name):
    X = INPUTS[name](np.random.default_rng(11))
    n = X.shape[0]
    eng = engine(X)
    S = cosine64(X)
    assert eng.matrix_bytes == n * ((n + 63) // 64 * 64) * 4
    for k in budgets(n):
        cached = eng.lazy_greedy(k, 0, None, 64, HUGE)
        streamed = eng.lazy_greedy(k, 0, None, 64, 0)       # a tiny budget: the streaming path
        default = eng.lazy_greedy(k, 0, None, 64, -1)
        assert (cached["cache_used"], streamed["cache_used"], default["cache_used"]) == (1, 0, 0)
        for out in (streamed, default):
            np.testing.assert_array_equal(cached["ranking"], out["ranking"])
            np.testing.assert_allclose(cached["gains"], out["gains"], rtol=1e-6, atol=1e-7)
        if k < n or n < 500:
            # Against float64: with every row picked the last gains of n833_d5 (D = 5) are float32 ties
            # (~1e-3 gains, float32 similarities), where the float64 reference may take another member.
            ref_picks, ref_gains = naive_greedy(S, k)
            np.testing.assert_array_equal(cached["ranking"], ref_picks)
            np.testing.assert_allclose(cached["gains"], ref_gains, rtol=1e-5, atol=1e-5)
        # Same similarity values, bit for bit: the cache holds the streaming kernels' own floats.
        np.testing.assert_array_equal(cached["nearest"], streamed["nearest"])
        np.testing.assert_array_equal(cached["nearest_similarity"], streamed["nearest_similarity"])
        # nearest: every example's similarity to its nearest pick is the max over the picks
        np.testing.assert_allclose(cached["nearest_similarity"], S[:, cached["ranking"]].max(axis=1), atol=2e-6)
        assert cached["cache_bytes"] == eng.matrix_bytes and cached["cache_build_seconds"] > 0
        assert cached["n_dense_evaluations"] == 0   # no GEMM after the build
        assert cached["cache_hits"] == cached["n_evaluations"] - n   # every gain after the column sums
        assert len(cached["evaluations"]) == k and np.all(np.diff(cached["evaluations"]) >= 0)


@pytest.mark.parametrize("graph_k", [0, 1, 64])
@pytest.mark.parametrize("batch", [0, 1, 5])
def test_batch_and_graph_width_do_not_change_the_cached_picks(graph_k, batch):
    X = clustered(np.random.default_rng(5), 700, 17)
    eng = engine(X)
    ref = eng.lazy_greedy(120, 0, None, 0, 0)["ranking"]
    np.testing.assert_array_equal(eng.lazy_greedy(120, batch, None, graph_k, HUGE)["ranking"], ref)


def test_budget_at_the_matrix_size_is_the_boundary():
    X = clustered(np.random.default_rng(2), 130, 8)
    eng = engine(X)
    need = eng.matrix_bytes
    assert eng.lazy_greedy(10, 0, None, 64, need)["cache_used"] == 1
    assert eng.lazy_greedy(10, 0, None, 64, need - 1)["cache_used"] == 0


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_facility_location_memory_budget_forces_either_path(dtype):
    X = clustered(np.random.default_rng(8), 520, 19)
    if dtype == "int8":
        X = np.clip(np.round(X * 30), -127, 127).astype(np.int8)
    big = FacilityLocation(60, backend="cpp", memory_budget="1G").fit(X)
    tiny = FacilityLocation(60, backend="cpp", memory_budget=0).fit(X)
    ref = FacilityLocation(60, backend="numpy").fit(X)
    assert (big.profile_["cache_used"], tiny.profile_["cache_used"]) == (1, 0)
    assert big.profile_["cache_bytes"] == _memory.matrix_bytes(520) and big.profile_["cache_hits"] > 0
    np.testing.assert_array_equal(big.ranking_, tiny.ranking_)
    np.testing.assert_array_equal(big.ranking_, ref.ranking_)
    np.testing.assert_allclose(big.gains_, ref.gains_, rtol=1e-5)
    np.testing.assert_array_equal(big.nearest_, tiny.nearest_)


def test_default_budget_caches_the_matrix_only_when_it_fits(monkeypatch):
    n = 10_000
    need = _memory.matrix_bytes(n)
    assert need == n * 10_048 * 4
    monkeypatch.setattr(_memory, "available_memory", lambda: 4 * need)
    assert _memory.resolve_memory_budget(None, n) == need
    assert _memory.resolve_memory_budget("auto", n) == need
    monkeypatch.setattr(_memory, "available_memory", lambda: need)  # the matrix would take all of it
    assert _memory.resolve_memory_budget(None, n) == _memory.STREAMING_BYTES
    monkeypatch.setattr(_memory, "available_memory", lambda: None)  # no /proc/meminfo: the 4 GiB cap alone
    assert _memory.resolve_memory_budget(None, n) == need
    assert _memory.resolve_memory_budget(None, 52_000) == _memory.STREAMING_BYTES  # 10.8 GB > 4 GiB
    assert _memory.resolve_memory_budget("3k", n) == 3 * 1024  # an explicit value wins


@pytest.mark.parametrize("text, expected", [
    ("2G", 2 << 30), ("512M", 512 << 20), ("512MiB", 512 << 20), ("1.5g", 3 << 29), ("0", 0), ("10", 10),
    (" 4 GB ", 4 << 30), ("64k", 64 << 10), ("auto", None), (None, None), (1024, 1024), (0, 0),
    (np.int64(7), 7),
])
def test_memory_budget_parses_sizes(text, expected):
    assert parse_memory_budget(text) == expected


@pytest.mark.parametrize("bad", [-1, "-2G", "lots", "2X", "G", "", "1e", 1.5, True, float("nan"), [1], "inf"])
def test_bad_memory_budget_is_a_one_line_input_error(bad):
    X = clustered(np.random.default_rng(0), 20, 3)
    with pytest.raises(InputError) as err:
        FacilityLocation(5, backend="cpp", memory_budget=bad).fit(X)
    assert err.value.param == "memory_budget" and "\n" not in str(err.value)
    assert str(err.value).startswith("memory_budget: ")


def test_cli_memory_budget_flag_reaches_the_solver_and_bad_values_name_the_flag(tmp_path, capsys, monkeypatch):
    from mads_fast import pipeline
    from mads_fast.cli import main

    seen = {}

    def fake_solve(store, budget, **kw):  # the CLI calls the library's solve with the flag's text
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "solve", fake_solve)
    with pytest.raises(SystemExit):
        main(["solve", "--store", str(tmp_path / "s"), "--budget", "5", "--memory-budget", "3G", "--quiet"])
    assert seen["memory_budget"] == "3G"
    monkeypatch.undo()
    code = main(["solve", "--store", str(tmp_path / "s"), "--budget", "5", "--memory-budget", "lots", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--memory-budget" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("entry", ["solve", "select"])
def test_pipeline_checks_memory_budget_before_any_work(tmp_path, entry):
    """A bad memory_budget fails first, naming the parameter (no store read, no records parsed)."""
    from mads_fast import pipeline

    missing = tmp_path / "nothing-here"
    with pytest.raises(InputError) as err:
        if entry == "solve":
            pipeline.solve(missing, 5, memory_budget="plenty")
        else:
            pipeline.select(missing, 5, memory_budget=-3)
    assert err.value.param == "memory_budget"
