"""Every example runs and reports the numbers it promises, and writes nothing
into the working directory or the repository (its plots go where the caller asks, or to
a temporary folder it prints)."""

import importlib.util
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REPOSITORY = EXAMPLES.parent
#: directories whose contents are no part of the tree (git ignores them too)
_NOT_THE_TREE = {".git", "__pycache__", ".pytest_cache", ".hypothesis"}


def _files(root):
    """Every file under ``root``, less caches, version control and virtual environments."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _NOT_THE_TREE
                   and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))]
        found.update(os.path.relpath(os.path.join(folder, f), root) for f in files)
    return found


@pytest.fixture(autouse=True)
def _writes_nothing(tmp_path, monkeypatch):
    """Each test runs its example from an empty working directory, which must stay empty,
    and the repository must have no new file afterwards."""
    cwd = tmp_path / "working_directory"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _files(REPOSITORY)
    yield
    assert sorted(os.listdir(cwd)) == []
    assert sorted(_files(REPOSITORY) - before) == []


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


def test_formula_models_example(capsys):
    rmse, search, table = _load("formula_models").main()
    assert set(rmse) == {"mixed model", "ridge"} and all(v.shape == (5,) for v in rmse.values())
    # new subjects: both predict a population line; within subjects the BLUPs help
    assert abs(rmse["mixed model"].mean() - rmse["ridge"].mean()) < 2.0
    assert search.best_params_["formula"] != "~ Days + (1 | Subject)"
    assert list(table["npar"]) == [3, 4, 6]
    out = capsys.readouterr().out
    assert "GroupKFold(5) RMSE" in out and "Linear mixed model fit by maximum likelihood" in out


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


def test_every_example_is_run_here():
    """Each ``examples/*.py`` has a test in this module that runs its ``main`` (under
    :func:`_writes_nothing`)."""
    source = Path(__file__).read_text()
    assert [p.stem for p in sorted(EXAMPLES.glob("*.py"))
            if f'_load("{p.stem}")' not in source] == []


def test_sleepstudy_example_matches_lme4(capsys):
    """With no plot path the example writes its plot into a new temporary folder and
    prints where (the analysis example is given a path)."""
    from _reference import single_factor_arrays

    ref = single_factor_arrays("sleepstudy_slopes_reml")
    fit, intervals, test = _load("sleepstudy").main()
    assert fit.llf_ == pytest.approx(ref["llf"], abs=1e-6)
    width = np.asarray(ref["profile_ci"]["upper"]) - np.asarray(ref["profile_ci"]["lower"])
    for bound in ("lower", "upper"):  # within 1% of the interval's width
        assert np.all(np.abs(intervals[bound].to_numpy() - ref["profile_ci"][bound]) <= 0.01 * width)
    assert test.statistic == pytest.approx(42.1392985162349, rel=1e-4)  # lrt.json
    plot = Path(re.search(r"caterpillar plot of the Days BLUPs: (.+)$", capsys.readouterr().out,
                          re.MULTILINE).group(1))
    assert plot.parent.parent == Path(tempfile.gettempdir())  # a new folder of its own
    assert plot.stat().st_size > 1000
    shutil.rmtree(plot.parent)


def test_insteval_example_matches_lme4():
    est = _load("insteval").main()
    assert est.llf_ == pytest.approx(-118866.91706376, abs=1e-6)
    assert est.n_groups_ == {"s": 2972, "d": 1128, "dept": 14}


def test_analysis_example_reproduces_the_shared_references(tmp_path):
    """examples/analysis.py against extras/orthodont_agesex_slopes_reml.json. The R2 and
    the marginal means (least squares here) are R's to 1e-7; the tables of the slopes model
    differ from R's by what separates the two optima (lme4 stops 5.6e-6 above our REML
    criterion; at lme4's own point they agree to 1e-8, tests/inference/test_inference_tables.py)."""
    from _tables import extras, r_column, supplementary

    ref = extras("orthodont_agesex_slopes_reml")
    out = _load("analysis").main(plot_path=str(tmp_path / "intervals.png"))
    assert -2 * out["fit"].llf_ < supplementary("orthodont_slopes")["reml_criterion"]
    r2 = ref["r2_intercept_model"]
    np.testing.assert_allclose([out["r2"].marginal, out["r2"].conditional, out["icc"].adjusted,
                                out["icc"].unadjusted],
                               [r2["r2_marginal"], r2["r2_conditional"], r2["icc_adjusted"],
                                r2["icc_unadjusted"]], rtol=1e-7)
    kr = ref["anova_type3_kenward_roger"]
    np.testing.assert_allclose(out["anova"]["F value"], r_column(kr, "F value"), rtol=1e-3)
    np.testing.assert_allclose(out["anova"]["DenDF"], r_column(kr, "DenDF"), rtol=1e-9)
    np.testing.assert_allclose(out["emmeans"]["emmean"], ref["emmeans_sex"]["emmean"], rtol=1e-10)
    np.testing.assert_allclose(out["emmeans"]["SE"], ref["emmeans_sex"]["SE"], rtol=5e-4)
    pairs = ref["emmeans_sex_pairs"]
    assert list(out["pairs"]["contrast"]) == [pairs["contrast"]]
    np.testing.assert_allclose(out["pairs"]["p.value"], [pairs["p.value"]], atol=1e-5)
    np.testing.assert_allclose(out["ranova"]["LRT"].iloc[1], r_column(ref["ranova"], "LRT")[1],
                               rtol=1e-5)
    mean, lower, upper = out["intervals"]["new girl"]
    assert np.all((lower < mean) & (mean < upper))
    # a new child's interval is wider than a seen child's (its random effects are unknown)
    seen = out["intervals"]["F05"]
    assert np.all(upper - lower > seen[2] - seen[1])
    assert (tmp_path / "intervals.png").stat().st_size > 1000


def test_glmm_example(capsys):
    clf, cv, cbpp = _load("glmm").main()
    assert clf.llf_ == pytest.approx(-4075.69986, abs=1e-5)  # lme4 stops at -4075.70025
    assert clf.n_groups_ == {"id": 316, "item": 24}
    assert np.all((-cv["test_score"] > 0.55) & (-cv["test_score"] < 0.7))
    # lme4 (nAGQ = 25) logLik -50.00502 omits the saturated log-density -41.97835
    assert cbpp.llf_ == pytest.approx(-50.005015268375 - 41.97835376893558, abs=1e-4)
    assert "Wald z tests" in capsys.readouterr().out


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


def test_diagnostics_example(tmp_path):
    """The profile drawn crosses +-1.96 where lme4's profile intervals end."""
    from _reference import single_factor_arrays

    import matplotlib.pyplot as plt

    ref = single_factor_arrays("sleepstudy_slopes_reml")["profile_ci"]
    fit, prof, figures = _load("diagnostics").main(plot_dir=str(tmp_path))
    assert set(figures) == {"residuals_vs_fitted", "qq_ranef", "profile_zeta"}
    assert all((tmp_path / f"sleepstudy_{name}.png").stat().st_size > 1000 for name in figures)
    assert len(figures["residuals_vs_fitted"].axes[0].lines[0].get_xdata()) == 180
    names = list(ref["names"])
    for param, curve in prof.groupby("param"):
        zeta, value = curve["zeta"].to_numpy(), curve["value"].to_numpy()
        assert np.all(np.diff(zeta) > 0)  # zeta increases with the parameter
        k = names.index(param)
        width = ref["upper"][k] - ref["lower"][k]
        for z, bound in ((-1.959964, ref["lower"][k]), (1.959964, ref["upper"][k])):
            # linear interpolation between the grid's points (9 per parameter): within 1% of
            # the width (measured: 0.35% at most)
            assert abs(np.interp(z, zeta, value) - bound) < 0.01 * width
    plt.close("all")


def test_power_analysis_example(tmp_path):
    import matplotlib.pyplot as plt

    curve, figure = _load("power_analysis").main(plot_dir=str(tmp_path), n_sim=20,
                                                 n_subjects=(6, 30))
    assert list(curve["n_groups"]) == [6, 30] and np.all(curve["n_failed"] == 0)
    assert np.all((curve["lower"] <= curve["power"]) & (curve["power"] <= curve["upper"]))
    assert curve["power"].iloc[1] > curve["power"].iloc[0]  # more subjects, more power
    assert (tmp_path / "sleepstudy_power_curve.png").stat().st_size > 1000
    plt.close("all")
