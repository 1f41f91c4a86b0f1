"""Per-term covariance types in one model: the array API and ``lmer`` agree.

``MixedLMRegressor(cov_type={"a": "diagonal"})`` with ``groups`` a DataFrame of two
factors and ``Z`` a dict is the model ``y ~ x + (x || a) + (x | b)``: a diagonal
covariance for ``a``, a free one for ``b``. ``lmer`` splits ``(x || a)`` into ``(1 | a) +
(0 + x | a)`` as lme4 does (two terms, ``a`` and ``a.1``), a different parametrisation of
the same model, so both give one fit. Checked against lme4 on Dietox (R script and JSON in
``tests/data/reference/extras/per_term_cov.*``) and against the dense oracle of
``tests/_dense.py`` on a small crossed design.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from _dense import DenseTermsDeviance, TermsDesign, make_terms_design
from _reference import REFERENCE_DIR

from mixedlm_sklearn import MixedLMRegressor, lmer
from mixedlm_sklearn.datasets import load_dietox

DIETOX = "Weight ~ Time + (Time || Litter) + (Time | Pig)"


def _corr(cov):
    return cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])


def _both_ways(df, formula, x_cols, diag_factor, free_factor, slope, reml):
    """The fit through lmer and through the array API (the response is the formula's)."""
    via_formula = lmer(formula, df, reml=reml)
    response = formula.split("~")[0].strip()
    n = len(df)
    Z = np.column_stack([np.ones(n), df[slope].to_numpy(float)])
    via_arrays = MixedLMRegressor(reml=reml, cov_type={diag_factor: "diagonal"}).fit(
        df[x_cols], df[response], groups=df[[diag_factor, free_factor]],
        Z={diag_factor: Z, free_factor: Z})
    return via_formula, via_arrays


def _same_fit(via_formula, via_arrays, diag_factor, free_factor):
    assert via_arrays.cov_type == {diag_factor: "diagonal"}
    assert via_formula.llf_ == pytest.approx(via_arrays.llf_, rel=1e-10, abs=1e-9)
    np.testing.assert_allclose(via_formula.fe_params_.to_numpy(), via_arrays.fe_params_.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(via_formula.bse_.to_numpy(), via_arrays.bse_.to_numpy(), rtol=1e-5)
    assert via_formula.scale_ == pytest.approx(via_arrays.scale_, rel=1e-6)
    # lmer: "a" is the intercept term of the split (x || a), "a.1" the slope term
    split = np.diag([via_formula.cov_re_[diag_factor][0, 0], via_formula.cov_re_[f"{diag_factor}.1"][0, 0]])
    diag = via_arrays.cov_re_[diag_factor]
    np.testing.assert_allclose(diag, split, rtol=1e-5)
    assert diag[0, 1] == diag[1, 0] == 0.0  # exactly diagonal
    np.testing.assert_allclose(via_formula.cov_re_[free_factor], via_arrays.cov_re_[free_factor], rtol=1e-5)
    # predictions with the random effects of both factors
    b = via_arrays.random_effects_[diag_factor].to_numpy()
    np.testing.assert_allclose(b[:, 0], via_formula.random_effects_[diag_factor].to_numpy()[:, 0],
                               rtol=1e-5, atol=1e-7 * np.abs(b).max())
    np.testing.assert_allclose(b[:, 1], via_formula.random_effects_[f"{diag_factor}.1"].to_numpy()[:, 0],
                               rtol=1e-5, atol=1e-7 * np.abs(b).max())


# ---- Dietox: Pig nested in Litter, uncentred Time, against lme4 --------------------------------

@pytest.fixture(scope="module")
def dietox():
    with (REFERENCE_DIR / "extras" / "per_term_cov.json").open() as handle:
        ref = json.load(handle)
    return load_dietox(), ref


@pytest.fixture(scope="module")
def dietox_fits(dietox):
    """reml -> (data, lme4's answers, fit through lmer, fit through the array API)."""
    df, ref = dietox
    return {reml: (df, ref["dietox_reml" if reml else "dietox_ml"],
                   *_both_ways(df, DIETOX, ["Time"], "Litter", "Pig", "Time", reml)) for reml in (True, False)}


@pytest.mark.parametrize("reml", [True, False])
def test_dietox_both_ways_give_one_fit(dietox_fits, reml):
    df, ref, via_formula, via_arrays = dietox_fits[reml]
    _same_fit(via_formula, via_arrays, "Litter", "Pig")
    assert via_arrays.converged_ and not via_arrays.singular_
    assert abs(_corr(via_arrays.cov_re_["Pig"])) > 0.05  # the free correlation is estimated


@pytest.mark.parametrize("reml", [True, False])
def test_dietox_matches_lme4(dietox_fits, reml):
    df, ref, _, est = dietox_fits[reml]
    assert est.llf_ >= ref["llf"] - 1e-6
    np.testing.assert_allclose(est.fe_params_.to_numpy(), ref["fe_params"], rtol=1e-4)
    lme4 = {t["group"]: np.array(t["cov_re"]) for t in ref["terms"]}
    if ref["reml"]:
        # lme4 (converged by its own check) stops 1.9e-8 log-lik units below this fit;
        # in the flat directions that leaves two estimates 1.3e-4 relative from ours (the
        # dense oracle started at lme4's estimates climbs to ours: next test), hence 2e-4
        np.testing.assert_allclose(est.bse_.to_numpy(), ref["bse_fe"], rtol=1e-4)
        assert est.scale_ == pytest.approx(ref["scale"], rel=1e-4)
        np.testing.assert_allclose(est.cov_re_["Pig"], lme4["Pig"], rtol=2e-4)
        np.testing.assert_allclose(np.diag(est.cov_re_["Litter"]),
                                   [lme4["Litter.1"][0, 0], lme4["Litter"][0, 0]], rtol=2e-4)
    else:
        # lme4 warns "failed to converge" here and stops 4.9e-6 below this fit
        assert ref["lme4_messages"] and est.llf_ > ref["llf"]
        np.testing.assert_allclose(est.cov_re_["Pig"], lme4["Pig"], rtol=1e-2)


def test_dietox_reml_is_the_dense_maximum(dietox_fits):
    """n = 861: the oracle checks stationarity at the fit and that lme4's point is lower."""
    df, ref, _, est = dietox_fits[True]
    n = len(df)
    Z = np.column_stack([np.ones(n), df["Time"].to_numpy(float)])
    factors = [("Litter", pd.factorize(df["Litter"])[0], Z, True), ("Pig", pd.factorize(df["Pig"])[0], Z, False)]
    dense = DenseTermsDeviance(TermsDesign(df[["Time"]].to_numpy(float), df["Weight"].to_numpy(), factors), True)
    covs = [est.cov_re_["Litter"], est.cov_re_["Pig"]]
    llf, _ = dense.loglik(covs, est.scale_)
    assert est.llf_ == pytest.approx(llf, rel=1e-10)
    theta = dense.theta_of(covs, est.scale_)
    value, grad = dense.value_and_grad(theta)
    assert -0.5 * value == pytest.approx(est.llf_, rel=1e-10)
    assert np.max(np.abs(grad)) < 1e-5, grad  # d(-2 log L)/d theta at the fit (|theta| ~ 0.04 to 1.7)
    lme4 = {t["group"]: np.array(t["cov_re"]) for t in ref["terms"]}
    at_lme4 = dense.theta_of([np.diag([lme4["Litter.1"][0, 0], lme4["Litter"][0, 0]]), lme4["Pig"]], ref["scale"])
    assert -0.5 * dense(at_lme4) < est.llf_


# ---- a small crossed design against the dense oracle from several starts -----------------------

@pytest.mark.parametrize("reml", [True, False])
def test_crossed_per_term_types_reach_the_dense_maximum(reml):
    # 80 rows, a: 8 levels with a diagonal (1, x), b: 10 levels with a free (1, x); x uncentred
    d = make_terms_design(False, 8, 10, [8] * 10, "both", (0.5, 0.5), (True, False), 5.0, 2.0, 4)
    df = pd.DataFrame(d.X, columns=["x", "w"]).assign(y=d.y, a=d.groups["a"], b=d.groups["b"])
    via_formula, via_arrays = _both_ways(df, "y ~ x + w + (x || a) + (x | b)", ["x", "w"], "a", "b", "x", reml)
    _same_fit(via_formula, via_arrays, "a", "b")
    est = via_arrays
    assert est.converged_ and not est.singular_
    assert abs(_corr(est.cov_re_["b"])) > 0.1  # free, and not at +-1
    dense = DenseTermsDeviance(d, reml)
    covs = [est.cov_re_["a"], est.cov_re_["b"]]
    assert est.llf_ == pytest.approx(dense.loglik(covs, est.scale_)[0], rel=1e-10)
    best = dense.multistart_min([dense.theta_of(covs, est.scale_)])
    assert -0.5 * best <= est.llf_ + 1e-6
    # the types are per term: both unstructured is another model with a higher likelihood,
    # both diagonal another with a lower one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = MixedLMRegressor(reml=reml).fit(df[["x", "w"]], df["y"], groups=df[["a", "b"]], Z=d.Z)
        diag = MixedLMRegressor(reml=reml, cov_type="diagonal").fit(df[["x", "w"]], df["y"],
                                                                    groups=df[["a", "b"]], Z=d.Z)
    assert free.cov_re_["a"][0, 1] != 0.0 and diag.cov_re_["b"][0, 1] == 0.0
    assert free.llf_ > est.llf_ + 1e-3 and diag.llf_ < est.llf_ - 1e-3
