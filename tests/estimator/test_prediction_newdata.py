"""Prediction on new data from formula fits, as lme4's ``predict(fit, newdata)``.

``predict(new_df)`` reads covariates and grouping factors from the new rows; ``re_form``
is lme4's ``re.form`` (``"all"`` = NULL, None = NA, a formula of terms or of some columns of
a term); levels not seen in fit get random effect 0 (``allow.new.levels = TRUE``). R's
answers: ``lmm_predict_newdata.json`` and ``lmm_residuals_predict.json`` (lme4 1.1-31),
``glmm_inference_cbpp.json`` for the binomial GLMM (type = "response" / "link").
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from _reference import product_reference
from mixedlm_sklearn import MixedGLMClassifier, MixedGLMRegressor, MixedLMRegressor, glmer, lmer
from mixedlm_sklearn.datasets import (load_cbpp, load_orthodont, load_penicillin,
                                      load_sleepstudy, load_verbagg)

RTOL = 1e-6  # predictions from estimates agreeing with R's to ~1e-7 relative


def _orthodont():
    df = load_orthodont()
    df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])  # R's level order
    return df


@pytest.mark.parametrize("case, loader", [("sleepstudy", load_sleepstudy),
                                          ("orthodont", _orthodont)])
def test_predict_newdata_matches_lme4(case, loader):
    ref = product_reference("lmm_predict_newdata")[case]
    new = pd.DataFrame(ref["newdata"])
    if case == "orthodont":
        new["Sex"] = pd.Categorical(new["Sex"], categories=["Male", "Female"])
    fit = lmer(ref["formula"], loader())
    np.testing.assert_allclose(fit.predict(new), ref["predict_conditional"], rtol=RTOL)
    np.testing.assert_allclose(fit.predict(new, re_form=None), ref["predict_population"],
                               rtol=RTOL)
    # the population level needs no grouping column
    np.testing.assert_allclose(fit.predict(new.drop(columns="Subject"), re_form=None),
                               ref["predict_population"], rtol=RTOL)
    # the estimator in formula mode is the same model; the older idiom still works
    est = MixedLMRegressor(formula=ref["formula"]).fit(loader())
    np.testing.assert_allclose(est.predict(new), ref["predict_conditional"], rtol=RTOL)
    np.testing.assert_allclose(fit.predict(**fit.model_frame_.new_data(new)),
                               ref["predict_conditional"], rtol=RTOL)


def test_new_levels_allowed_warned_or_refused():
    ref = product_reference("lmm_predict_newdata")["sleepstudy"]
    new = pd.DataFrame(ref["newdata"])
    fit = lmer(ref["formula"], load_sleepstudy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a new level is silent by default
        pred = fit.predict(new)
    np.testing.assert_allclose(pred, ref["predict_conditional"], rtol=RTOL)
    with pytest.warns(UserWarning, match=r"Subject: 1 \(\['999'\]\)"):
        fit.predict(new, allow_new_levels="warn")
    with pytest.raises(ValueError, match=r"new levels .*999.*allow.new.levels"):
        fit.predict(new, allow_new_levels=False)
    fit.predict(new[new["Subject"] != "999"], allow_new_levels=False)  # all seen: fine
    with pytest.raises(ValueError, match="allow_new_levels must be"):
        fit.predict(new, allow_new_levels="yes")
    # labels of another type than in fit are no new levels: that warns even when allowed
    with pytest.warns(UserWarning, match="another type"):
        fit.predict(new.assign(Subject=np.arange(9)))


def test_missing_grouping_column_is_named():
    fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    with pytest.raises(ValueError, match=r"no column \['Subject'\].*re_form=None"):
        fit.predict(pd.DataFrame({"Days": [1.0]}))
    with pytest.raises(TypeError, match="DataFrame"):
        fit.predict(np.ones((2, 2)))


def test_partial_re_form_matches_lme4():
    ref = product_reference("lmm_residuals_predict")
    df = load_sleepstudy()
    new = pd.DataFrame(ref["predict_sleepstudy_correlated"]["newdata"])
    fit = lmer("Reaction ~ Days + (Days | Subject)", df)
    cases = {"all": "all", None: "population", "~ (1 | Subject)": "intercept_of_slope_term",
             "~ (0 + Days | Subject)": "slope_of_slope_term", "~ (Days | Subject)": "same_term",
             "~0": "population"}
    for re_form, key in cases.items():
        np.testing.assert_allclose(fit.predict(new, re_form=re_form),
                                   ref["predict_sleepstudy_correlated"][key]["value"], rtol=RTOL)
    fit = lmer("Reaction ~ Days + (Days || Subject)", df)
    cases = {"all": "all", None: "population", "~ (1 | Subject)": "intercept_only",
             "~ (0 + Days | Subject)": "slope_only"}
    for re_form, key in cases.items():
        np.testing.assert_allclose(fit.predict(new, re_form=re_form),
                                   ref["predict_sleepstudy_uncorrelated"][key]["value"], rtol=RTOL)


def test_crossed_terms_one_at_a_time_match_lme4():
    ref = product_reference("lmm_residuals_predict")
    entry = ref["predict_penicillin"]
    new = pd.DataFrame(entry["newdata"])
    fit = lmer(ref["fits"]["penicillin"]["formula"], load_penicillin())
    cases = {"all": "all", None: "population", "~ (1 | plate)": "plate_only",
             ("sample",): "sample_only"}
    for re_form, key in cases.items():
        re_form = list(re_form) if isinstance(re_form, tuple) else re_form
        np.testing.assert_allclose(fit.predict(new, re_form=re_form), entry[key]["value"],
                                   rtol=RTOL)
    np.testing.assert_allclose(fit.fitted(re_form="~ (1 | plate)").head(30),
                               entry["fitted_plate_only_head"], rtol=RTOL)
    with pytest.raises(ValueError, match="not a grouping factor"):
        fit.predict(new, re_form="~ (1 | nothing)")
    with pytest.raises(ValueError, match="not grouping factors"):
        fit.predict(new, re_form=["nothing"])
    with pytest.raises(TypeError, match="re_form must be"):
        fit.predict(new, re_form=3)
    with pytest.raises(ValueError, match="must be 'all', None"):
        fit.predict(new, re_form="(1 | plate)")


def test_fitted_residuals_and_intervals_take_re_form():
    df = load_sleepstudy()
    fit = lmer("Reaction ~ Days + (Days | Subject)", df)
    np.testing.assert_allclose(fit.fitted(re_form=None), fit.fitted(level="marginal"))
    np.testing.assert_allclose(fit.fitted(), fit.predict(df), rtol=1e-12)
    np.testing.assert_allclose(fit.residuals(re_form=None),
                               df["Reaction"] - fit.predict(df, re_form=None), rtol=1e-10)
    lower, upper = fit.predict_interval(df.head(3))
    old = fit.predict_interval(**fit.model_frame_.new_data(df.head(3)))
    np.testing.assert_allclose(lower, old[0])
    np.testing.assert_allclose(upper, old[1])
    # population level: the random effects' full variance, as for a new subject
    lower0, upper0 = fit.predict_interval(df.head(3), re_form=None)
    new = fit.predict_interval(df.head(3).assign(Subject="new"))
    np.testing.assert_allclose(lower0, new[0])
    assert np.all(upper0 - lower0 > upper - lower)


def test_glmm_predict_newdata_matches_lme4():
    ref = product_reference("glmm_inference_cbpp")
    new = pd.DataFrame(ref["newdata"])
    fit = glmer(ref["formula"], load_cbpp())
    np.testing.assert_allclose(fit.predict(new), ref["predict_newdata_response"], rtol=1e-5)
    np.testing.assert_allclose(fit.predict(new, type="link"),
                               ref["predict_newdata_link_conditional"], rtol=1e-5)
    np.testing.assert_allclose(fit.predict(new, type="link", re_form=None),
                               ref["predict_newdata_link_population"], rtol=1e-5)
    np.testing.assert_allclose(fit.decision_function(new), fit.predict(new, type="link"))
    with pytest.raises(ValueError, match="type must be"):
        fit.predict(new, type="prob")


def test_classifier_predicts_from_a_dataframe():
    df = load_verbagg()
    clf = MixedGLMClassifier(formula="~ btype + (1 | id)").fit(df, np.where(df["r2"] == 1, "Y", "N"))
    assert clf.classes_.tolist() == ["N", "Y"]
    ref = product_reference("glmm_responses")["verbagg"]["numeric_01"]
    np.testing.assert_allclose(clf.fe_params_, ref["fe_params"], rtol=1e-4)
    new = pd.DataFrame({"btype": ["curse", "shout"], "id": [df["id"].iloc[0], "new"]})
    proba = clf.predict_proba(new)
    eta = clf.decision_function(new)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-eta)))
    # the new respondent gets the population probability
    np.testing.assert_allclose(proba[1], clf.predict_proba(new, re_form=None)[1])
    assert proba[0, 1] != clf.predict_proba(new, re_form=None)[0, 1]
    assert clf.predict(new).tolist() == np.where(proba[:, 1] > 0.5, "Y", "N").tolist()


def test_array_fits_take_re_form_and_allow_new_levels():
    ref = product_reference("lmm_residuals_predict")
    entry = ref["predict_penicillin"]
    new = pd.DataFrame(entry["newdata"])
    df = load_penicillin()
    est = MixedLMRegressor(fit_intercept=False).fit(
        pd.DataFrame({"(Intercept)": np.ones(len(df))}), df["diameter"],
        groups=df[["plate", "sample"]])
    X_new = pd.DataFrame({"(Intercept)": np.ones(len(new))})
    groups = new[["plate", "sample"]]
    np.testing.assert_allclose(est.predict(X_new, groups=groups), entry["all"]["value"], rtol=RTOL)
    np.testing.assert_allclose(est.predict(X_new, groups=groups, re_form=["plate"]),
                               entry["plate_only"]["value"], rtol=RTOL)
    np.testing.assert_allclose(est.predict(X_new, groups=groups, re_form=None),
                               entry["population"]["value"], rtol=RTOL)
    with pytest.raises(ValueError, match=r"new levels .*plate: 1 \(\['zz'\]\)"):
        est.predict(X_new, groups=groups, allow_new_levels=False)
    with pytest.raises(ValueError, match="a formula fit"):
        est.predict(X_new, groups=groups, re_form="~ (1 | plate)")


def test_glmm_fitted_and_residuals_match_lme4():
    ref = product_reference("glmm_inference_cbpp")
    fit = glmer(ref["formula"], load_cbpp())
    np.testing.assert_allclose(fit.fitted().head(20), ref["fitted_head"], rtol=1e-6)
    for kind in ("deviance", "pearson", "response"):
        np.testing.assert_allclose(fit.residuals(kind).head(20), ref[f"residuals_{kind}_head"],
                                   rtol=1e-6, atol=1e-7, err_msg=kind)  # estimates to ~1e-7
    cbpp = load_cbpp()
    np.testing.assert_allclose(fit.fitted(), fit.predict(cbpp), rtol=1e-12)
    np.testing.assert_allclose(fit.fitted(re_form=None, type="link"),
                               fit.predict(cbpp, re_form=None, type="link"), rtol=1e-12)
    # the deviance residuals' squares sum to lme4's deviance(m) (deviance_)
    assert float((fit.residuals() ** 2).sum()) == pytest.approx(fit.deviance_, rel=1e-10)
    with pytest.raises(ValueError, match="type must be"):
        fit.residuals("working")
