"""Property tests of the facility-location solver (hypothesis), run on every backend that loads."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mads_fast.solver import FacilityLocation, available_backends
from mads_fast.solver._tie import TIE_ABS, TIE_REL

from greedy_reference import cosine64

BACKENDS = [b for b in ("numpy", "cpp", "cuda") if b in available_backends()]


@st.composite
def features(draw):
    n = draw(st.integers(1, 70))
    d = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "clustered", "int8", "duplicates"]))
    if kind == "normal":
        X = rng.normal(size=(n, d)).astype(np.float32)
    elif kind == "clustered":
        C = rng.normal(size=(3, d))
        X = (C[rng.integers(0, 3, n)] + 0.2 * rng.normal(size=(n, d))).astype(np.float32)
    elif kind == "int8":
        X = rng.integers(-5, 6, size=(n, d)).astype(np.int8)  # small ints: many exact ties and zero rows
    else:
        X = rng.normal(size=(max(1, n // 3), d))[rng.integers(0, max(1, n // 3), n)].astype(np.float32)
    return X


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(X=features(), frac=st.floats(0.01, 1.0))
def test_gains_non_increasing_and_curve_is_objective(backend, X, frac):
    fl = FacilityLocation(frac, backend=backend).fit(X)
    n = len(X)
    assert len(fl.ranking_) == max(1, round(frac * n))
    assert len(set(fl.ranking_.tolist())) == len(fl.ranking_)
    tol = TIE_ABS + TIE_REL * np.abs(fl.gains_[:-1]) + 1e-5
    assert np.all(np.diff(fl.gains_) <= tol)
    S = cosine64(X)
    f = np.array([S[:, fl.ranking_[:t + 1]].max(axis=1).sum() for t in range(len(fl.ranking_))])
    np.testing.assert_allclose(fl.curve_, f, rtol=1e-5, atol=1e-4)
    # each pick is a best candidate of its step, within tau
    cur = np.zeros(n)
    for j in fl.ranking_[:10]:
        g = np.maximum(S - cur[:, None], 0).sum(axis=0)
        g[fl.ranking_[:list(fl.ranking_).index(j)]] = -np.inf
        assert g[j] >= g.max() - (TIE_ABS + TIE_REL * g.max()) - 1e-4
        cur = np.maximum(cur, S[:, j])
    assert fl.weights_.sum() == n


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(X=features(), k=st.integers(1, 70))
def test_knn_full_equals_dense(backend, X, k):
    k = min(k, len(X))
    dense = FacilityLocation(k, backend=backend).fit(X)
    knn = FacilityLocation(k, backend=backend, mode="knn", n_neighbors=max(1, len(X) - 1)).fit(X)
    np.testing.assert_array_equal(knn.ranking_, dense.ranking_)
    np.testing.assert_allclose(knn.curve_, dense.curve_, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(len(BACKENDS) < 2, reason=f"only {BACKENDS} loads here: no second backend to compare with")
@SETTINGS
@given(X=features(), k=st.integers(1, 70))
def test_backends_agree(X, k):
    k = min(k, len(X))
    runs = [FacilityLocation(k, backend=b).fit(X) for b in BACKENDS]
    for run in runs[1:]:
        np.testing.assert_array_equal(run.ranking_, runs[0].ranking_)
        np.testing.assert_allclose(run.gains_, runs[0].gains_, rtol=1e-5, atol=1e-4)
