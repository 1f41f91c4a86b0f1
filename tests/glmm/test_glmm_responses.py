"""What glmer takes as a binomial response, as lme4 does: 0/1 numbers, logicals, two-level
factors (the first level is the failure), proportions with the trials as ``weights=``
(the same model as ``cbind(successes, failures)``), and R's argument names.

R's answers: ``glmm_responses.json`` (VerbAgg ``<response> ~ btype + (1 | id)``) and
``glmm_proportion_weights.json`` (cbpp ``incidence/size ~ period + (1 | herd)`` with
``weights = size``), lme4 1.1-31.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _reference import product_reference
from mixedlm_sklearn import MixedGLMRegressor, glmer
from mixedlm_sklearn.datasets import load_cbpp, load_verbagg


@pytest.fixture(scope="module")
def verbagg():
    df = load_verbagg()
    return df.assign(
        r2l=df["r2"] == 1,
        resp2=pd.Categorical(np.where(df["r2"] == 1, "Y", "N"), categories=["N", "Y"]),
        resp2_rev=pd.Categorical(np.where(df["r2"] == 1, "Y", "N"), categories=["Y", "N"]),
        yes_no=np.where(df["r2"] == 1, "yes", "no"))


@pytest.mark.parametrize("key, column", [("numeric_01", "r2"), ("logical", "r2l"),
                                         ("factor_N_Y", "resp2"), ("factor_Y_N", "resp2_rev")])
def test_binomial_responses_match_lme4(verbagg, key, column):
    ref = product_reference("glmm_responses")["verbagg"][key]
    fit = glmer(f"{column} ~ btype + (1 | id)", verbagg)
    assert fit.llf_ >= ref["llf"] - 1e-6
    np.testing.assert_allclose(fit.fe_params_, ref["fe_params"], rtol=1e-4)
    if column != "r2":
        levels = {"r2l": (False, True), "resp2": ("N", "Y"), "resp2_rev": ("Y", "N")}[column]
        assert fit.response_levels_ == levels
        # scoring reads the labels from X: the same as scoring their 0/1 codes
        codes = (verbagg[column] == levels[1]).astype(float)
        assert fit.score(verbagg) == pytest.approx(fit.score(verbagg, codes), rel=1e-12)

def test_string_and_three_level_responses(verbagg):
    # R refuses a character response ("response must be numeric or factor"); here it is a
    # two-level factor with the levels sorted, "no" the failure
    ref = product_reference("glmm_responses")["verbagg"]["numeric_01"]
    fit = glmer("yes_no ~ btype + (1 | id)", verbagg)
    np.testing.assert_allclose(fit.fe_params_, ref["fe_params"], rtol=1e-4)
    assert fit.response_levels_ == ("no", "yes")
    # scoring reads the labels by the fit's levels, also where only one label is present
    part = verbagg.head(40)
    codes = (part["yes_no"] == "yes").astype(float)
    assert fit.score(part) == pytest.approx(fit.score(part, codes), rel=1e-12)
    assert np.isnan(fit.score(part[codes == 1]))  # D^2 of one class: 0 / 0, as scikit-learn's
    # lme4 fits a three-level factor as "not the first level": ambiguous, refused here
    with pytest.raises(ValueError, match="3 levels"):
        glmer("resp ~ btype + (1 | id)", verbagg)


def test_proportion_with_weights_equals_cbind():
    ref = product_reference("glmm_proportion_weights")["cbpp_proportion"]
    cbpp = load_cbpp()
    fit = glmer("incidence/size ~ period + (1 | herd)", cbpp, weights="size")
    assert fit.llf_ >= ref["llf"] - 1e-6
    np.testing.assert_allclose(fit.fe_params_, ref["fe_params"], rtol=1e-5)
    np.testing.assert_allclose(fit.bse_, ref["bse_fe"], rtol=1e-4)
    np.testing.assert_allclose(fit.cov_re_, np.array(ref["terms"][0]["cov_re"]), rtol=1e-4)
    cbind = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp)
    assert fit.llf_ == pytest.approx(cbind.llf_, abs=1e-9)
    assert fit.deviance_ == pytest.approx(ref["deviance"], rel=1e-6)
    est = MixedGLMRegressor(family="binomial", formula="~ period + (1 | herd)").fit(
        cbpp, cbpp["incidence"] / cbpp["size"], sample_weight=cbpp["size"])
    assert est.llf_ == pytest.approx(fit.llf_, abs=1e-9)
    with pytest.raises(ValueError, match="do not pass sample_weight"):
        glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, weights="size")


def test_proportion_without_weights_warns_as_lme4():
    ref = product_reference("glmm_responses")["cbpp_proportion_without_weights"]
    assert ref["warnings"] == ["non-integer #successes in a binomial glm!"]
    with pytest.warns(UserWarning, match="non-integer numbers of successes"):
        glmer("incidence/size ~ period + (1 | herd)", load_cbpp())


def test_r_argument_names(verbagg):
    cbpp = load_cbpp()
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"

    def binomial():  # what R's family = binomial looks like from Python
        return None

    a = glmer(formula, cbpp, family=binomial, nAGQ=5)
    b = glmer(formula, cbpp, n_agq=5)
    assert a.n_agq == 5 and a.llf_ == pytest.approx(b.llf_, abs=1e-12)
    with pytest.raises(TypeError, match="not both"):
        glmer(formula, cbpp, nAGQ=5, n_agq=3)
    with pytest.raises(TypeError, match="max_iter / tol"):
        glmer(formula, cbpp, control={"optimizer": "bobyqa"})
