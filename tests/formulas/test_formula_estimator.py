"""The estimators in formula mode: ``MixedLMRegressor(formula="~ Days + (Days | Subject)")``.

A DataFrame ``X`` holds the covariates and the grouping factors, so scikit-learn's model
selection works without metadata routing: ``groups=`` goes to the splitter only, and
scoring conditions on the groups the fit has seen (population level for unseen ones).
Numbers are checked against hand-written loops over the same folds and against lme4's
fits (the references of ``tests/data/reference``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from _reference import product_reference
from mixedlm_sklearn import MixedGLMClassifier, MixedGLMRegressor, MixedLMRegressor, lmer
from mixedlm_sklearn.datasets import load_cbpp, load_sleepstudy, load_verbagg

FORMULA = "~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def df():
    return load_sleepstudy()


def test_group_kfold_against_ridge_in_pipelines_without_routing(df):
    assert not sklearn.get_config()["enable_metadata_routing"]
    mixed = make_pipeline(FunctionTransformer(), MixedLMRegressor(formula=FORMULA))
    ridge = make_pipeline(ColumnTransformer([("days", "passthrough", ["Days"])]), Ridge())
    cv = GroupKFold(n_splits=5)
    scores = {name: cross_val_score(model, df, df["Reaction"], groups=df["Subject"], cv=cv,
                                    scoring="neg_root_mean_squared_error")
              for name, model in {"mixed": mixed, "ridge": ridge}.items()}
    # the same by hand: fit on the training subjects, predict the held-out ones
    by_hand = {"mixed": [], "ridge": []}
    for train, test in cv.split(df, df["Reaction"], groups=df["Subject"]):
        tr, te = df.iloc[train], df.iloc[test]
        est = lmer("Reaction ~ Days + (Days | Subject)", tr)
        assert not set(te["Subject"]) & set(tr["Subject"])  # new subjects: population line
        pred = est.fe_params_["(Intercept)"] + est.fe_params_["Days"] * te["Days"]
        by_hand["mixed"].append(-np.sqrt(mean_squared_error(te["Reaction"], pred)))
        ridge_fit = Ridge().fit(tr[["Days"]], tr["Reaction"])
        by_hand["ridge"].append(-np.sqrt(mean_squared_error(te["Reaction"],
                                                            ridge_fit.predict(te[["Days"]]))))
    np.testing.assert_allclose(scores["mixed"], by_hand["mixed"], rtol=1e-10)
    np.testing.assert_allclose(scores["ridge"], by_hand["ridge"], rtol=1e-10)


def test_kfold_scores_condition_on_seen_subjects(df):
    cv = KFold(n_splits=5, shuffle=True, random_state=0)
    est = MixedLMRegressor(formula=FORMULA)
    scores = cross_val_score(est, df, df["Reaction"], cv=cv)  # R^2 of est.score
    for score, (train, test) in zip(scores, cv.split(df)):
        fit = lmer("Reaction ~ Days + (Days | Subject)", df.iloc[train])
        te = df.iloc[test]
        blups = fit.random_effects_.loc[te["Subject"]].to_numpy()
        pred = (fit.fe_params_["(Intercept)"] + blups[:, 0]
                + (fit.fe_params_["Days"] + blups[:, 1]) * te["Days"].to_numpy())
        assert score == pytest.approx(r2_score(te["Reaction"], pred), rel=1e-10)


def test_grid_search_over_random_effects_and_reml(df):
    formulas = ["~ Days + (1 | Subject)", "~ Days + (Days | Subject)",
                "~ Days + (Days || Subject)"]
    search = GridSearchCV(MixedLMRegressor(formula=formulas[0]),
                          {"formula": formulas, "reml": [True, False]},
                          cv=GroupKFold(n_splits=3), scoring="neg_mean_squared_error")
    search.fit(df, df["Reaction"], groups=df["Subject"])
    assert len(search.cv_results_["params"]) == 6
    best = search.best_estimator_
    assert best.formula in formulas and hasattr(best, "model_frame_")
    # refit on all rows: the lme4 fit of the chosen formula
    ref = lmer("Reaction" + best.formula, df, REML=best.reml)
    assert best.llf_ == pytest.approx(ref.llf_, abs=1e-9)
    # an lmer fit is such an estimator: its clone refits any other formula
    diagonal = lmer("Reaction ~ Days + (Days || Subject)", df)
    other = clone(diagonal).set_params(formula="~ Days + (1 | Subject)").fit(df, df["Reaction"])
    assert other.llf_ == pytest.approx(lmer("Reaction ~ Days + (1 | Subject)", df).llf_, abs=1e-9)


def test_formula_mode_equals_lmer_and_the_array_api(df):
    ref = product_reference("lmm_predict_newdata")["sleepstudy"]["fit"]
    est = MixedLMRegressor(formula=FORMULA).fit(df, df["Reaction"])
    with_lhs = MixedLMRegressor(formula="Reaction " + FORMULA).fit(df)
    arrays = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"],
                                    Z=np.column_stack([np.ones(len(df)), df["Days"]]))
    assert est.llf_ >= ref["llf"] - 1e-6
    for other in (with_lhs, arrays):
        assert est.llf_ == pytest.approx(other.llf_, abs=1e-9)
    np.testing.assert_allclose(est.fe_params_, ref["fe_params"], rtol=1e-6)
    np.testing.assert_array_equal(est.feature_names_in_, ["Days", "Subject"])
    assert est.n_features_in_ == 2
    # other columns of X are ignored, in fit and predict
    noisy = df.assign(noise=np.arange(len(df)))
    np.testing.assert_allclose(MixedLMRegressor(formula=FORMULA).fit(noisy, df["Reaction"])
                               .predict(noisy), est.predict(df))
    assert clone(est).get_params() == est.get_params()


def test_formula_mode_refuses_what_the_formula_decides(df):
    with pytest.raises(ValueError, match="has a response .* and y was given"):
        MixedLMRegressor(formula="Reaction " + FORMULA).fit(df, df["Reaction"])
    with pytest.raises(ValueError, match="no response: pass y"):
        MixedLMRegressor(formula=FORMULA).fit(df)
    with pytest.raises(TypeError, match="put their variables in X"):
        MixedLMRegressor(formula=FORMULA).fit(df, df["Reaction"], groups=df["Subject"])
    with pytest.raises(TypeError, match="DataFrame"):
        MixedLMRegressor(formula=FORMULA).fit(df.to_numpy(), df["Reaction"])
    with pytest.raises(ValueError, match="fit_intercept=False contradicts"):
        MixedLMRegressor(formula=FORMULA, fit_intercept=False).fit(df, df["Reaction"])
    with pytest.raises(TypeError, match="needs formula"):
        MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"],
                               context={"k": 1})
    with pytest.raises(TypeError, match="fit_chunks"):
        MixedLMRegressor(formula=FORMULA).fit_chunks([df], y="Reaction", groups="Subject",
                                                     X=["Days"])
    # the formula decides: "0 +" removes the intercept although fit_intercept is True
    est = MixedLMRegressor(formula="~ 0 + Days + (1 | Subject)").fit(df, df["Reaction"])
    assert list(est.fe_params_.index) == ["Days"] and est.intercept_ == 0.0
    ref = lmer("Reaction ~ 0 + Days + (1 | Subject)", df)
    assert est.llf_ == pytest.approx(ref.llf_, abs=1e-9)
    np.testing.assert_allclose(est.predict(df.head(3)), ref.predict(df.head(3)))
    lower, upper = est.predict_interval(df.head(3))
    np.testing.assert_allclose(lower, ref.predict_interval(df.head(3))[0])


def test_weights_and_strata_may_be_columns(df):
    w = np.tile([1.0, 2.0, 0.5], 60)
    by_name = MixedLMRegressor(formula="Reaction ~ Days + (1 | Subject)").fit(
        df.assign(w=w), sample_weight="w")
    by_array = MixedLMRegressor(formula="Reaction ~ Days + (1 | Subject)").fit(df, sample_weight=w)
    assert by_name.llf_ == pytest.approx(by_array.llf_, abs=1e-10)
    ref = product_reference("lmm_weights")["reml_fit"]
    assert by_name.llf_ >= ref["llf"] - 1e-6
    np.testing.assert_allclose(by_name.fe_params_, ref["fe_params"], rtol=1e-5)


def test_glmm_regressor_and_classifier_in_cross_validation():
    cbpp = load_cbpp()
    est = MixedGLMRegressor(family="binomial", formula="cbind(incidence, size - incidence) ~ "
                            "period + (1 | herd)")
    scores = cross_val_score(est, cbpp, None, groups=cbpp["herd"], cv=GroupKFold(3))
    assert np.all(np.isfinite(scores))
    verbagg = load_verbagg().iloc[:2000]
    clf = MixedGLMClassifier(formula="~ btype + (1 | id)")
    cv = GroupKFold(n_splits=3)
    scores = cross_val_score(clf, verbagg, verbagg["r2"], groups=verbagg["id"], cv=cv,
                             scoring="neg_log_loss")
    for score, (train, test) in zip(scores, cv.split(verbagg, groups=verbagg["id"])):
        fit = clone(clf).fit(verbagg.iloc[train], verbagg["r2"].iloc[train])
        te = verbagg.iloc[test]
        p = 1 / (1 + np.exp(-(fit.fe_params_["(Intercept)"] + np.select(
            [te["btype"] == "scold", te["btype"] == "shout"],
            [fit.fe_params_["btypescold"], fit.fe_params_["btypeshout"]], 0.0))))
        y = te["r2"].to_numpy()
        assert score == pytest.approx(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-9)
