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


CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.mark.parametrize("family,link", [
    ("binomial(link = 'probit')", "probit"), ('binomial(link="probit")', "probit"),
    ("binomial(link = probit)", "probit"), ("binomial('probit')", "probit"),
    ('binomial(link="cloglog")', "cloglog"), ("binomial()", "logit")])
def test_family_as_r_writes_it(family, link):
    # the text of R's call fits the same model as the link= argument; lme4's probit fit
    # (glmer(f, cbpp, family = binomial(link = "probit")), glmm_extra_checks.json)
    import json

    from _reference import REFERENCE_DIR

    fit = glmer(CBPP, load_cbpp(), family=family)
    same = glmer(CBPP, load_cbpp(), link=link)
    assert fit.link == (None if family == "binomial()" else link) and fit.family == "binomial"
    assert fit.llf_ == same.llf_
    pd.testing.assert_series_equal(fit.fe_params_, same.fe_params_)
    refs = json.loads((REFERENCE_DIR / "extras" / "glmm_extra_checks.json").read_text())
    ref = refs.get(f"cbpp_{link}")
    if ref is not None:
        assert fit.llf_ >= ref["llf"] - 1e-6
        np.testing.assert_allclose(fit.fe_params_.to_numpy(), ref["fe_params"], rtol=1e-4)


def test_poisson_family_as_r_writes_it():
    df = load_cbpp()
    fit = glmer("incidence ~ period + (1 | herd)", df, family='poisson(link = "log")')
    same = glmer("incidence ~ period + (1 | herd)", df, family="poisson")
    assert fit.family == "poisson" and fit.link == "log" and fit.llf_ == same.llf_


@pytest.mark.parametrize("family,message", [
    ("quasipoisson(link = 'log')", r"binomial.*poisson.*'quasipoisson'.*R has it"),
    ("binomial(link = 'log')", r"'log' is not a link of the binomial family.*logit.*probit.*cloglog"),
    ("poisson(link = 'logit')", r"'logit' is not a link of the poisson family.*\['log'\]"),
    ("binomial(link = __import__('os').getcwd())", "not a family as R writes it"),
    ("binomial(link = 'probit'); x", "not a family as R writes it"),
    ("binomial(link = 'probit', extra)", "not a family as R writes it"),
])
def test_family_text_is_read_strictly(family, message):
    with pytest.raises(ValueError, match=message):
        glmer(CBPP, load_cbpp(), family=family)


def test_family_link_and_link_argument_must_agree():
    with pytest.raises(ValueError, match="sets link 'probit' but link='logit'"):
        glmer(CBPP, load_cbpp(), family="binomial(link = 'probit')", link="logit")
    fit = glmer(CBPP, load_cbpp(), family="binomial(link = 'probit')", link="probit")
    assert fit.link == "probit"
