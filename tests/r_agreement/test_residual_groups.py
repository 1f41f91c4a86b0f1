"""MixedLMRegressor(residual_groups=...) reproduces nlme's varIdent fits."""

import numpy as np
import pandas as pd
import pytest
import sklearn
from _reference import VARIDENT_CASES, load_case
from sklearn.model_selection import GroupKFold, cross_validate

from mixedlm_sklearn import MixedLMRegressor


def _fit(name, **params):
    df, answers = load_case(name)
    X = df.filter(regex="^X_").to_numpy()
    Z = df.filter(regex="^Z_").to_numpy()
    est = MixedLMRegressor(reml=answers["reml"], fit_intercept=False, **params)
    return est.fit(X, df["y"], groups=df["group"], Z=Z, residual_groups=df["stratum"]), answers


@pytest.mark.parametrize("name", VARIDENT_CASES)
def test_matches_nlme(name):
    est, ref = _fit(name)
    assert est.converged_
    assert est.llf_ >= ref["llf"] - 1e-5
    se = np.asarray(ref["bse_fe"])
    assert np.max(np.abs(est.fe_params_.to_numpy() - ref["fe_params"]) / se) < 1e-3
    np.testing.assert_allclose(est.bse_.to_numpy(), se, rtol=1e-3)
    np.testing.assert_allclose(est.cov_re_, ref["cov_re"], rtol=1e-3)
    for label, value in ref["residual_var_by_stratum"].items():
        assert est.residual_var_[label] == pytest.approx(value, rel=1e-3)
    reference_level = sorted(ref["residual_var_by_stratum"])[0]
    assert est.scale_ == est.residual_var_[reference_level]
    assert est.df_model_ == ref["df_model"]
    np.testing.assert_allclose(est.aic_, ref["aic"], atol=1e-6 + 2 * abs(est.llf_ - ref["llf"]))


def test_one_stratum_equals_the_homoscedastic_fit():
    df, answers = load_case("orthodont_varident_reml")
    X, Z = df.filter(regex="^X_").to_numpy(), df.filter(regex="^Z_").to_numpy()
    plain = MixedLMRegressor(fit_intercept=False).fit(X, df["y"], groups=df["group"], Z=Z)
    strat = MixedLMRegressor(fit_intercept=False).fit(X, df["y"], groups=df["group"], Z=Z,
                                                      residual_groups=np.full(len(df), "all"))
    np.testing.assert_allclose(strat.llf_, plain.llf_, rtol=1e-10)
    assert strat.residual_var_ == {"all": pytest.approx(plain.scale_, rel=1e-7)}


def test_single_row_stratum_is_refused():
    df, _ = load_case("orthodont_varident_reml")
    strata = df["stratum"].to_numpy().copy()
    strata[7] = "lonely"
    with pytest.raises(ValueError, match="stratum 'lonely'.*single row"):
        MixedLMRegressor().fit(df[["X_age"]], df["y"], groups=df["group"], residual_groups=strata)


def test_residual_groups_need_groups():
    df, _ = load_case("orthodont_varident_reml")
    with pytest.raises(ValueError, match="residual_groups needs groups"):
        MixedLMRegressor().fit(df[["X_age"]], df["y"], residual_groups=df["stratum"])


def test_routed_through_cross_validation():
    df, _ = load_case("orthodont_varident_reml")
    with sklearn.config_context(enable_metadata_routing=True):
        est = (MixedLMRegressor().set_fit_request(groups=True, residual_groups=True, sample_weight=True)
               .set_score_request(sample_weight=False))
        cv = cross_validate(est, df[["X_age"]], df["y"], cv=GroupKFold(3), return_estimator=True,
                            params={"groups": df["group"].to_numpy(), "sample_weight": np.ones(len(df)),
                                    "residual_groups": df["stratum"].to_numpy()})
    for fitted in cv["estimator"]:
        assert set(fitted.residual_var_) == {"Female", "Male"}
        assert fitted.residual_var_["Male"] > fitted.residual_var_["Female"]


def test_several_factors_with_a_residual_variance_per_stratum_match_nlme():
    """nlme: lme(yield ~ nitro, random = ~ 1 | Block/Variety, weights = varIdent(~ 1 | Variety))."""
    df, ref = load_case("oats_nested_varident_reml")
    X = df.filter(regex="^X_").to_numpy()
    groups = df[["g1", "g2"]]
    est = MixedLMRegressor(fit_intercept=False).fit(X, df["y"], groups=groups,
                                                    residual_groups=df["stratum"])
    assert est.llf_ >= ref["llf"] - 1e-6 and est.llf_ - ref["llf"] < 1e-4
    np.testing.assert_allclose(est.fe_params_.to_numpy(), ref["fe_params"], rtol=1e-4)
    np.testing.assert_allclose(est.bse_.to_numpy(), ref["bse_fe"], rtol=1e-3)
    for name, term in zip(["g1", "g2"], ref["terms"]):
        np.testing.assert_allclose(est.cov_re_[name], np.atleast_2d(term["cov_re"]), rtol=1e-3)
    for label, value in ref["residual_var_by_stratum"].items():
        assert est.residual_var_[label] == pytest.approx(value, rel=1e-3)
    assert est.df_model_ == ref["df_model"]
    assert est.aic_ == pytest.approx(ref["aic"], abs=1e-4)
    # BIC: lme4's log(n) where nlme's REML BIC uses log(n - p) (README, limitations)
    n, p = len(df), X.shape[1]
    assert est.bic_ - np.log(n) * est.df_model_ == pytest.approx(ref["bic"] - np.log(n - p) * ref["df_model"], abs=1e-4)
    # inference runs on it: Satterthwaite df, profile of the ratios, LR test against one variance
    summary = est.summary()
    assert np.all(np.isfinite(summary.fixed_effects["df"]))
    ci = est.conf_int(method="profile", which=["sigma_Marvellous/sigma_Golden Rain"])
    ratio = np.sqrt(est.residual_var_["Marvellous"] / est.residual_var_["Golden Rain"])
    assert ci["lower"].iloc[0] < ratio < ci["upper"].iloc[0]
    one = MixedLMRegressor(fit_intercept=False).fit(X, df["y"], groups=groups)
    from mixedlm_sklearn import lr_test
    assert lr_test(one, est).df == 2
