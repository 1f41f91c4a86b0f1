"""Every example runs and reports the numbers it promises (issue 7)."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cross_validation_example(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rmse, fitted = _load("cross_validation").main()
    assert rmse.shape == (3,) and np.all((rmse > 1.0) & (rmse < 4.0))
    assert all(f["lmm"].n_groups_ == 18 for f in fitted)  # 27 subjects, 3 folds
    assert "RMSE on unseen subjects" in capsys.readouterr().out


def test_grid_search_example():
    search = _load("grid_search").main()
    assert len(search.cv_results_["params"]) == 4
    scores = search.cv_results_["mean_test_score"]
    assert np.all((scores > 0.6) & (scores < 0.8))  # conditional R^2 on held-out days
    assert np.ptp(scores) > 1e-4  # the covariance choice changes the conditional fit
    assert search.best_estimator_.n_groups_ == 18


def test_large_data_example():
    chunked, in_memory, dask_fit = _load("large_data").main(n=40_000)
    np.testing.assert_allclose(chunked.llf_, in_memory.llf_, rtol=1e-10)
    np.testing.assert_allclose(chunked.cov_re_, in_memory.cov_re_, rtol=1e-8)
    if dask_fit is not None:
        np.testing.assert_allclose(dask_fit.llf_, in_memory.llf_, rtol=1e-10)
