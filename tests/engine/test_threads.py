"""The package's own threads (``n_jobs``): the same answers bit for bit, nothing left behind."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn._batched import (
    batched_cholesky,
    batched_matmul,
    batched_solve_lower,
    batched_solve_lower_t,
    left_matmul,
)
import mixedlm_sklearn._crossprod as crossprod_module
import mixedlm_sklearn._threads as threads_module
from mixedlm_sklearn._threads import level_slices, level_threads

# Slices this small make the tests fast; the arithmetic per level is the same at any size.
MIN_LEVELS_PER_THREAD = 1024


@pytest.fixture(autouse=True)
def small_slices(monkeypatch):
    monkeypatch.setattr(threads_module, "MIN_LEVELS_PER_THREAD", MIN_LEVELS_PER_THREAD)
    monkeypatch.setattr(crossprod_module, "_BLOCK_ROWS", 20_000)  # several blocks of rows


@pytest.fixture(scope="module")
def data():
    """Enough levels for the level kernels to split (3 slices at n_jobs=3) and enough rows
    for several blocks of the pass over the rows; a random slope with a full covariance."""
    rng = np.random.default_rng(7)
    m = 3 * MIN_LEVELS_PER_THREAD + 123
    n = 24 * m  # four blocks of the pass over the rows (_BLOCK_ROWS patched above)
    g = rng.integers(0, m, n)
    X = rng.standard_normal((n, 2))
    b = rng.standard_normal((m, 2)) * [0.8, 0.3]
    y = 1 + X @ [0.5, -0.2] + b[g, 0] + b[g, 1] * X[:, 0] + rng.standard_normal(n)
    return X, y, g, np.column_stack([np.ones(n), X[:, 0]])


def test_level_kernels_on_slices_equal_one_thread():
    rng = np.random.default_rng(0)
    m = 2 * MIN_LEVELS_PER_THREAD + 17
    A = rng.standard_normal((3, 3, m))
    T = np.einsum("ikl,jkl->ijl", A, A) + 3 * np.eye(3)[:, :, None]
    B = rng.standard_normal((3, 4, m))
    C = batched_cholesky(T)
    serial = [C, batched_matmul(A, B), batched_solve_lower(C, B), batched_solve_lower_t(C, B),
              left_matmul(A[:, :, 0], B)]
    with level_threads(2):
        assert level_slices(m) is not None and len(level_slices(m)) == 2
        C2 = batched_cholesky(T)
        threaded = [C2, batched_matmul(A, B), batched_solve_lower(C2, B),
                    batched_solve_lower_t(C2, B), left_matmul(A[:, :, 0], B)]
    assert level_slices(m) is None  # the pool is this call's own
    for a, b in zip(serial, threaded):
        assert np.array_equal(a, b)


@pytest.mark.filterwarnings("error")  # numpy's warnings in the threads are the fit's to handle
@pytest.mark.parametrize("n_jobs", [2, 3, -1])
def test_fit_with_threads_is_identical_to_one_thread(data, n_jobs):
    X, y, g, Z = data
    one = MixedLMRegressor(n_jobs=1).fit(X, y, groups=g, Z=Z)
    before = threading.active_count()
    many = MixedLMRegressor(n_jobs=n_jobs).fit(X, y, groups=g, Z=Z)
    assert threading.active_count() == before  # the fit's pool is shut down with it
    assert many.llf_ == one.llf_
    assert np.array_equal(many.coef_, one.coef_)
    assert np.array_equal(many.theta_, one.theta_)
    assert np.array_equal(many.random_effects_.to_numpy(), one.random_effects_.to_numpy())


def test_chunks_with_threads_equal_one_thread(data):
    X, y, g, Z = data
    df = pd.DataFrame({"x0": X[:, 0], "x1": X[:, 1], "y": y, "g": g})

    def chunks():
        return (df.iloc[i:i + 20000] for i in range(0, len(df), 20000))

    one = MixedLMRegressor(n_jobs=1).fit_chunks(chunks(), y="y", groups="g", X=["x0", "x1"], Z=["x0"])
    two = MixedLMRegressor(n_jobs=2).fit_chunks(chunks(), y="y", groups="g", X=["x0", "x1"], Z=["x0"])
    assert two.llf_ == one.llf_
    assert np.array_equal(two.theta_, one.theta_)


def test_a_fitted_points_modes_read_by_several_threads_at_once_are_the_serial_ones():
    """The modes overwrite the point's forward-solved ``w`` when first formed
    (``_deviance._point_modes``): threads asking a fitted solution for them at once must
    not read a ``w`` another is overwriting (measured before the lock: 30 of 40 wrong)."""
    from concurrent.futures import ThreadPoolExecutor

    from mixedlm_sklearn._crossprod import cross_products
    from mixedlm_sklearn._deviance import Deviance
    from mixedlm_sklearn._terms import Term, Terms

    rng = np.random.default_rng(0)
    m, n = 50_000, 150_000
    g, x = rng.integers(0, m, n), rng.standard_normal(n)
    X = np.column_stack([np.ones(n), x])
    y = X @ [1.0, 2.0] + rng.standard_normal(m)[g] + rng.standard_normal(n)
    cp = cross_products(X, y, [(g, X)], Terms([Term("g", ("1", "x"), m)]), np.ones(n), None, 1)
    x0 = np.array([1.0, 0.1, 0.9])
    want = Deviance(cp, True).solution(x0).u
    for _ in range(10):
        sol = Deviance(cp, True).solution(x0)  # its modes not formed yet
        barrier = threading.Barrier(4)

        def modes():
            barrier.wait()
            return sol.u

        with ThreadPoolExecutor(4) as pool:
            results = [f.result() for f in [pool.submit(modes) for _ in range(4)]]
        for got in results:
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)
