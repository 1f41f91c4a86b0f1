"""The dense block's Cholesky factor and inverse in tiles on the fit's threads (``n_jobs``).

Above an order (``_tiled.MIN_TILED_ORDER``, lowered here with the tile size so that a small
design crosses it and has several tiles) a fit with several threads factors and inverts
the dense rest block in tiles. The tiles sum in another order than LAPACK, so the fit
agrees with one thread's to rounding (the docstrings say 1e-10 relative), and the same
whatever the number of threads, bit for bit; BLAS stays on one thread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import lapack
from threadpoolctl import threadpool_info

import mixedlm_sklearn._factor as factor_module
import mixedlm_sklearn._rounds as rounds_module
import mixedlm_sklearn._tiled as tiled_module
from mixedlm_sklearn import MixedGLMClassifier, MixedLMRegressor
from mixedlm_sklearn._threads import level_threads, single_threaded_blas
from mixedlm_sklearn._tiled import dense_cholesky, dense_cholesky_inverse

RTOL = 1e-10


def _blas_threads() -> list[int]:
    return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")


@pytest.fixture
def tiled_calls(monkeypatch):
    """Tiles from order 50 in tiles of 16; the orders the tiled factorisation saw."""
    monkeypatch.setattr(tiled_module, "MIN_TILED_ORDER", 50)
    monkeypatch.setattr(tiled_module, "TILE", 16)
    calls: list[int] = []
    original = tiled_module._tiled_cholesky

    def spy(A, b):
        calls.append(A.shape[0])
        return original(A, b)

    monkeypatch.setattr(tiled_module, "_tiled_cholesky", spy)
    return calls


def _spd(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n + 5))
    return A @ A.T / n + np.eye(n)


@pytest.mark.parametrize("n", [50, 77, 130])
def test_tiles_equal_lapack_and_do_not_depend_on_the_threads(tiled_calls, n):
    S = _spd(n, n)
    U_ref, info = lapack.dpotrf(S.T.copy(), lower=0, clean=1)
    inv_ref = np.tril(lapack.dpotri(U_ref, lower=0)[0].T)
    results = []
    for threads in (2, 3):
        B = np.tril(S) + np.triu(np.full((n, n), 9.0), 1)  # the upper triangle is not read
        with single_threaded_blas(), level_threads(threads):
            U, info = dense_cholesky(B)
            inv, info_inv = dense_cholesky_inverse(U)
        assert info == 0 and info_inv == 0
        np.testing.assert_allclose(U, U_ref, rtol=0, atol=1e-13)
        assert not np.tril(U, -1).any()  # the factor's other triangle is cleared, as clean=1
        np.testing.assert_allclose(np.tril(inv.T), inv_ref, rtol=0, atol=1e-12 * np.abs(inv_ref).max())
        results.append((U.copy(), np.tril(inv.T)))
    assert np.array_equal(results[0][0], results[1][0])  # 2 and 3 threads: bit for bit
    assert np.array_equal(results[0][1], results[1][1])
    assert tiled_calls == [n, n]


def test_tiles_report_the_leading_minor_that_is_not_positive_definite(tiled_calls):
    S = _spd(80, 1)
    S[40, 40] = -5.0  # the leading minor of order 41 is indefinite
    expected = lapack.dpotrf(S.T.copy(), lower=0, clean=1)[1]
    with single_threaded_blas(), level_threads(2):
        _, info = dense_cholesky(S.copy())
    assert info == expected == 41


def test_lapack_without_threads_or_below_the_order(tiled_calls):
    S = _spd(60, 2)
    with single_threaded_blas():
        dense_cholesky(S.copy())  # one thread
        with level_threads(2):
            dense_cholesky(_spd(49, 3))  # below the order
    assert tiled_calls == []


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


def _same_fit(one, two, rtol: float) -> None:
    np.testing.assert_allclose(two.llf_, one.llf_, rtol=rtol, atol=0)
    np.testing.assert_allclose(two.fe_params_, one.fe_params_, rtol=rtol, atol=0)
    for name, cov in one.cov_re_.items():
        np.testing.assert_allclose(two.cov_re_[name], cov, rtol=rtol, atol=0)


def test_lmm_with_tiles_matches_one_thread(crossed, tiled_calls):
    x, eta, groups, rng = crossed
    y = eta + rng.standard_normal(eta.size)
    before = _blas_threads()
    one = MixedLMRegressor(reml=False, n_jobs=1).fit(x, y, groups=groups)
    assert tiled_calls == []
    two = MixedLMRegressor(reml=False, n_jobs=2).fit(x, y, groups=groups)
    assert tiled_calls and min(tiled_calls) >= 50
    three = MixedLMRegressor(reml=False, n_jobs=3).fit(x, y, groups=groups)
    assert _blas_threads() == before  # BLAS left as it was
    _same_fit(one, two, RTOL)
    _same_fit(two, three, 0.0)  # the tiles do not depend on the number of threads


@pytest.mark.parametrize("rest", ["dense", "rounds"])
def test_glmm_with_tiles_matches_one_thread(crossed, tiled_calls, rest, monkeypatch):
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
    assert tiled_calls == []
    two = MixedGLMClassifier(n_jobs=2).fit(x, y, groups=groups)
    assert tiled_calls and min(tiled_calls) >= 50
    assert _blas_threads() == before
    assert (min(cores) >= 50) if rest == "rounds" else not cores
    _same_fit(one, two, RTOL)
