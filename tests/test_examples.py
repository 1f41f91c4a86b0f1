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


def test_dietox_example_reaches_lme4(capsys):
    intercept, slopes = _load("dietox").main()
    assert slopes.converged_ and intercept.converged_
    assert slopes.llf_ == pytest.approx(-2217.04745914549, abs=1e-6)  # lme4
    out = capsys.readouterr().out
    assert "Fixed effects (Satterthwaite df)" in out and "Linear mixed model fit by REML" in out


def test_sleepstudy_example_matches_lme4(tmp_path):
    from _reference import single_factor_arrays

    ref = single_factor_arrays("sleepstudy_slopes_reml")
    fit, intervals, test = _load("sleepstudy").main(plot_path=str(tmp_path / "cat.png"))
    assert fit.llf_ == pytest.approx(ref["llf"], abs=1e-6)
    width = np.asarray(ref["profile_ci"]["upper"]) - np.asarray(ref["profile_ci"]["lower"])
    for bound in ("lower", "upper"):  # issue 3: within 1% of the interval's width
        assert np.all(np.abs(intervals[bound].to_numpy() - ref["profile_ci"][bound]) <= 0.01 * width)
    assert test.statistic == pytest.approx(42.1392985162349, rel=1e-4)  # lrt.json
    assert (tmp_path / "cat.png").stat().st_size > 1000


def test_insteval_example_matches_lme4():
    est = _load("insteval").main()
    assert est.llf_ == pytest.approx(-118866.91706376, abs=1e-6)
    assert est.n_groups_ == {"s": 2972, "d": 1128, "dept": 14}


def test_crossed_ratings_example(capsys):
    exact = _load("crossed_ratings").main(n=20_000, users=1_000, items=500)
    iterative = _load("crossed_ratings").main(n=20_000, users=1_000, items=500, solver="iterative")
    # New users are predicted by the items' effects and the covariates: about half the
    # variance (item and covariate variance 1.3 + 0.25 of a total 2.9).
    assert np.all((exact["test_score"] > 0.4) & (exact["test_score"] < 0.6))
    np.testing.assert_allclose(iterative["test_score"], exact["test_score"], atol=1e-3)
    for a, b in zip(exact["estimator"], iterative["estimator"]):
        assert abs(a["lmm"].llf_ - b["lmm"].llf_) < 1e-3
    out = capsys.readouterr().out
    assert "R^2 on new users" in out and "iterative solver" in out and "exact solver" in out
