"""The test session's setup, and fixtures shared by the input-checking tests.

The tests are grouped by concept, one folder each:

- ``engine/``: the deviance, the optimiser and the solvers against dense brute-force
  likelihoods (property tests), invariances, numerics, rank deficiency;
- ``r_agreement/``: every reference fit of lme4 and nlme reproduced;
- ``estimator/``: the scikit-learn estimators, their input (bad and hostile input too),
  prediction, weights, labels and plots;
- ``formulas/``: the lme4 formula front end: parsing, semantics, the allow-list,
  contrasts, model frames, ``update``/``compare``;
- ``inference/``: summary, anova, emmeans, Kenward-Roger, r2/icc and the printed tables;
- ``simulation/``: simulate, bootstrap, pb_test and power;
- ``glmm/``: generalized models, their estimators and inference;
- ``scale/``: chunks, Dask, crossed factors at scale, many responses at once;
- ``docs/``: README, examples, docstrings, the documentation's R tables, the package's
  layers.

Shared helpers sit next to this file: ``_dense.py`` (dense brute-force likelihoods and
random designs; no code shared with the package), ``_reference.py`` and ``_tables.py``
(loading R's references); the references themselves are in ``data/``.
"""

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor


def pytest_configure(config):
    """Draw with matplotlib's Agg backend in the test process, whatever ``MPLBACKEND``
    says: no window opens and ``python -m pytest`` needs no display. Only this process's
    matplotlib is set; the environment (and so any child process) is left as it was."""
    try:
        import matplotlib
    except ImportError:  # a test requirement; without it there is nothing to draw
        return
    matplotlib.use("Agg")


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
