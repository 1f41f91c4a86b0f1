"""BLAS threads in the large dense calls of a crossed fit (``n_jobs``, ``_threads.dense_blas_threads``).

The Cholesky factor and the inverse of the dense rest block run on ``n_jobs`` BLAS threads
above an order (``MIN_DENSE_THREADED``, lowered here so that a small design crosses it).
Multithreaded BLAS sums in another order, so the fit agrees with one thread's to rounding
(the docstrings promise 1e-10 relative), and the process's BLAS setting is restored.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_info

import mixedlm_sklearn._factor as factor_module
import mixedlm_sklearn._rounds as rounds_module
import mixedlm_sklearn._threads as threads_module
from mixedlm_sklearn import MixedGLMClassifier, MixedLMRegressor
from mixedlm_sklearn._threads import dense_blas_threads, level_threads, single_threaded_blas

RTOL = 1e-10


def _blas_threads() -> list[int]:
    return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")


@pytest.fixture
def recorded(monkeypatch):
    """A low threshold, and the thread counts the dense calls set."""
    monkeypatch.setattr(threads_module, "MIN_DENSE_THREADED", 50)
    calls: list[int] = []
    original = threads_module._set_blas_threads

    def spy(n: int) -> None:
        calls.append(n)
        original(n)

    monkeypatch.setattr(threads_module, "_set_blas_threads", spy)
    return calls


@pytest.fixture(scope="module")
def crossed():
    """Users x items with Zipf-like items: a dense rest block of about 120 items."""
    rng = np.random.default_rng(3)
    n, users, items = 2000, 150, 150
    u = rng.integers(0, users, n)
    it = np.minimum(rng.zipf(1.3, n) - 1, items - 1)
    x = rng.standard_normal((n, 2))
    eta = x @ [0.6, -0.3] + 0.8 * rng.standard_normal(users)[u] + 0.5 * rng.standard_normal(items)[it]
    groups = pd.DataFrame({"u": u, "item": it})
    return x, eta, groups, rng


def _same_fit(one, two) -> None:
    np.testing.assert_allclose(two.llf_, one.llf_, rtol=RTOL, atol=0)
    np.testing.assert_allclose(two.fe_params_, one.fe_params_, rtol=RTOL, atol=0)
    for name, cov in one.cov_re_.items():
        np.testing.assert_allclose(two.cov_re_[name], cov, rtol=RTOL, atol=0)


def test_dense_calls_widen_only_inside_a_fit_with_threads(recorded):
    before = _blas_threads()
    with single_threaded_blas():
        with dense_blas_threads(10_000):  # no pool: one thread
            assert _blas_threads() == [1] * len(before)
        with level_threads(2):
            with dense_blas_threads(49):  # below the threshold
                assert _blas_threads() == [1] * len(before)
            with dense_blas_threads(50):
                assert _blas_threads() == [2] * len(before)
            assert _blas_threads() == [1] * len(before)
    with level_threads(2), dense_blas_threads(10_000):  # outside a single-threaded section
        assert _blas_threads() == before
    assert recorded == [2, 1]
    assert _blas_threads() == before


def test_lmm_with_blas_threads_matches_one_thread(crossed, recorded):
    x, eta, groups, rng = crossed
    y = eta + rng.standard_normal(eta.size)
    before = _blas_threads()
    one = MixedLMRegressor(reml=False, n_jobs=1).fit(x, y, groups=groups)
    assert recorded == []
    two = MixedLMRegressor(reml=False, n_jobs=2).fit(x, y, groups=groups)
    assert 2 in recorded and recorded[-1] == 1  # the dense calls ran on two threads, then one
    assert _blas_threads() == before
    _same_fit(one, two)


@pytest.mark.parametrize("rest", ["dense", "rounds"])
def test_glmm_with_blas_threads_matches_one_thread(crossed, recorded, rest, monkeypatch):
    x, eta, groups, rng = crossed
    y = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta)))
    cores = []
    if rest == "rounds":  # sparse rounds down to a dense core of about 60 items
        monkeypatch.setattr(factor_module, "_ROUNDS_MIN", 0)
        monkeypatch.setattr(rounds_module, "_DENSE_OK", 60)
        original = rounds_module.RoundsFactor.__init__

        def spy(self, plan, data):
            cores.append(plan.core)
            original(self, plan, data)

        monkeypatch.setattr(rounds_module.RoundsFactor, "__init__", spy)
    before = _blas_threads()
    one = MixedGLMClassifier(n_jobs=1).fit(x, y, groups=groups)
    assert recorded == []
    two = MixedGLMClassifier(n_jobs=2).fit(x, y, groups=groups)
    assert 2 in recorded and recorded[-1] == 1
    assert _blas_threads() == before
    assert (min(cores) >= 50) if rest == "rounds" else not cores
    _same_fit(one, two)


def test_concurrent_fits_with_threads_restore_blas(crossed, recorded):
    x, eta, groups, rng = crossed
    y = eta + rng.standard_normal(eta.size)
    before = _blas_threads()
    results, errors = [], []

    def work() -> None:
        try:
            results.append(MixedLMRegressor(reml=False, n_jobs=2).fit(x, y, groups=groups).llf_)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    workers = [threading.Thread(target=work) for _ in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors
    np.testing.assert_allclose(results, results[0], rtol=RTOL, atol=0)
    assert _blas_threads() == before
