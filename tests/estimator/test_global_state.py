"""A fit leaves the process as it found it: BLAS threads, RNG, warnings filters."""

from __future__ import annotations

import threading
import warnings

import numpy as np
from threadpoolctl import threadpool_info

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_sleepstudy


def _blas_threads() -> list[int]:
    return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")


def _fit(df, Z):
    return MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z).llf_


def test_concurrent_fits_in_threads_leave_blas_as_they_found_it():
    df = load_sleepstudy()
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    before = _blas_threads()
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(_fit(df, Z))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_allclose(results, results[0], rtol=0, atol=1e-10)  # same fit in every thread
    assert _blas_threads() == before


def test_a_fit_touches_neither_the_global_rng_nor_the_warnings_filters():
    df = load_sleepstudy()
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    np.random.seed(7)
    expected = np.random.random()
    np.random.seed(7)
    filters = list(warnings.filters)
    _fit(df, Z)
    assert np.random.random() == expected
    assert warnings.filters == filters
