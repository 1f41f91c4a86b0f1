"""Fixtures shared by the input-checking tests."""

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor


@pytest.fixture
def data():
    """60 rows in 6 groups of 10: X with columns a, b; y; group codes; Z = [1, a]."""
    rng = np.random.default_rng(0)
    n = 60
    X = pd.DataFrame({"a": rng.standard_normal(n), "b": rng.standard_normal(n)})
    groups = np.repeat(np.arange(6), 10)
    y = X["a"].to_numpy() + np.repeat(rng.standard_normal(6), 10) + rng.standard_normal(n)
    Z = np.column_stack([np.ones(n), X["a"]])
    return X, y, groups, Z


def fit_with(X, y, **kw):
    """Fit with estimator parameters passed as ``params=...`` and fit arguments as keywords."""
    params = kw.pop("params", {})
    return MixedLMRegressor(**params).fit(X, y, **kw)
