"""GLMM fits against lme4 1.1-31 ``glmer`` (tests/data/reference/extras).

lme4's default fits sometimes stop short of the optimum: its inner iteration stops at a
relative change of 1e-7, which leaves its deviance function noisy at the 1e-4 level, and
its optimiser stops there. Where that happens the tests establish who is right with
computations independent of lme4's optimiser: our deviance function (checked against
dense and quadrature oracles in test_glmm.py) is lower at our estimates than at lme4's,
and lme4 itself, refitted with a tight inner tolerance (glmm_tight_refits.json) or on the
same data again (glmm_extra_checks.json), reaches our optimum.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixedlm_sklearn import glmer
from mixedlm_sklearn.datasets import load_cbpp, load_grouseticks, load_verbagg

from _reference import REFERENCE_DIR

EXTRAS = REFERENCE_DIR / "extras"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
VERBAGG = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"
GROUSE = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)"


def _load(name: str) -> dict:
    with open(EXTRAS / f"{name}.json") as handle:
        return json.load(handle)


def _grouse():
    df = load_grouseticks()
    df["cHEIGHT"] = df["HEIGHT"] - df["HEIGHT"].mean()
    return df


@pytest.fixture(scope="module")
def cbpp_laplace():
    return glmer(CBPP, load_cbpp())


@pytest.fixture(scope="module")
def cbpp_agq25():
    return glmer(CBPP, load_cbpp(), n_agq=25)


@pytest.fixture(scope="module")
def verbagg():
    return glmer(VERBAGG, load_verbagg())


@pytest.fixture(scope="module")
def grouse():
    return glmer(GROUSE, _grouse(), family="poisson")


def _x_of(ref: dict) -> np.ndarray:
    """lme4's ``(theta, beta)``: with scalar terms theta is the standard deviation."""
    theta = [np.sqrt(t["cov_re"][0][0]) for t in ref["terms"]]
    return np.concatenate([theta, ref["fe_params"]])


def _conditional_at(fit, x: np.ndarray):
    """Our conditional modes and fitted means at the parameters ``x``."""
    dev = fit.model_.deviance
    sol = dev.solution(x)
    value = sol.deviance
    dev.solution(fit.model_.x)  # leave the deviance's cache at the fit
    return value, sol


def _check_fit_shape(fit, ref):
    assert list(fit.fe_params_.index) == ref["fe_names"]
    assert fit.df_model_ == ref["df_model"]
    n = fit.model_.n_obs
    assert fit.aic_ == pytest.approx(-2 * fit.llf_ + 2 * ref["df_model"], rel=1e-12)
    assert fit.bic_ == pytest.approx(-2 * fit.llf_ + np.log(n) * ref["df_model"], rel=1e-12)


def test_cbpp_laplace(cbpp_laplace):
    fit, ref, tight = cbpp_laplace, _load("cbpp_binomial_laplace"), _load("glmm_tight_refits")["cbpp_laplace"]
    _check_fit_shape(fit, ref)
    assert fit.converged_ and not fit.singular_
    # lme4's default fit stopped 2.8e-4 short; with a tight inner tolerance it reaches ours
    assert fit.llf_ >= ref["llf"] - 1e-6
    assert fit.llf_ == pytest.approx(tight["llf"], abs=1e-6)
    at_lme4, _ = _conditional_at(fit, _x_of(ref))
    assert at_lme4 > -2 * fit.llf_
    se = np.asarray(tight["bse_fe"])
    assert np.all(np.abs(fit.fe_params_.to_numpy() - tight["fe_params"]) <= 1e-3 * se)
    np.testing.assert_allclose(fit.bse_.to_numpy(), se, rtol=1e-4)
    assert fit.cov_re_[0, 0] == pytest.approx(tight["terms"][0]["cov_re"][0][0], rel=1e-4)
    assert fit.cov_re_[0, 0] == pytest.approx(ref["terms"][0]["cov_re"][0][0], rel=1e-3)
    assert fit.deviance_ == pytest.approx(tight["deviance"], rel=1e-6)
    # at lme4's parameters, our conditional modes and fitted probabilities are lme4's
    _, sol = _conditional_at(fit, _x_of(ref))
    np.testing.assert_allclose(sol.mu[:len(ref["fitted_head"])], ref["fitted_head"], rtol=1e-5)
    blups = _in_r_order(fit, sol.blups()[0][:, 0], "herd", [str(h) for h in range(1, 11)])
    np.testing.assert_allclose(blups, ref["ranef_head"]["herd"], rtol=1e-4, atol=1e-6)


def _in_r_order(fit, values, factor, labels):
    """Values per level of ``factor`` at the given labels (R orders factor levels its own way)."""
    position = {label: i for i, label in enumerate(fit.model_.labels[factor])}
    return np.asarray(values)[[position[label] for label in labels]]


def test_cbpp_agq25(cbpp_agq25):
    fit, ref = cbpp_agq25, _load("cbpp_binomial_agq25")
    _check_fit_shape(fit, ref)
    # lme4's nAGQ > 1 deviance sums deviance residuals: it omits the log-density of the
    # saturated model, a constant (-41.978 here). Ours is the log-likelihood itself.
    saturated = fit.model_.deviance.saturated_loglik()
    assert saturated == pytest.approx(-41.97835376893558, abs=1e-10)
    assert fit.llf_ - saturated >= ref["llf"] - 1e-6
    assert fit.llf_ - saturated == pytest.approx(ref["llf"], abs=1e-4)
    se = np.asarray(ref["bse_fe"])
    assert np.all(np.abs(fit.fe_params_.to_numpy() - ref["fe_params"]) <= 1e-3 * se)
    np.testing.assert_allclose(fit.bse_.to_numpy(), se, rtol=1e-4)
    assert fit.cov_re_[0, 0] == pytest.approx(ref["terms"][0]["cov_re"][0][0], rel=1e-4)
    assert fit.deviance_ == pytest.approx(ref["deviance"], rel=1e-5)
    np.testing.assert_allclose(fit.predict(**{k: v for k, v in fit.model_frame_.fit_arguments().items()
                                               if k in ("X", "groups", "Z")})[:50],
                               ref["fitted_head"], rtol=1e-5)
    np.testing.assert_allclose(fit.random_effects_.loc[[str(h) for h in range(1, 11)]].iloc[:, 0],
                               ref["ranef_head"]["herd"], rtol=1e-4)
    ci = fit.conf_int()
    np.testing.assert_allclose(ci["lower"], ref["wald_ci_fe"]["lower"], rtol=1e-4)
    np.testing.assert_allclose(ci["upper"], ref["wald_ci_fe"]["upper"], rtol=1e-4)


def test_verbagg_crossed(verbagg):
    fit, ref = verbagg, _load("verbagg_bernoulli_crossed")
    _check_fit_shape(fit, ref)
    assert fit.converged_
    # lme4 stops at -4075.70025; the optimum (also mixedlm 1.3's) is -4075.69986
    assert fit.llf_ >= ref["llf"] - 1e-6
    assert fit.llf_ == pytest.approx(-4075.69986, abs=1e-5)
    at_lme4, sol = _conditional_at(fit, _x_of(ref))
    assert at_lme4 > -2 * fit.llf_
    for term, cov in zip(ref["terms"], (fit.cov_re_["id"], fit.cov_re_["item"])):
        assert cov[0, 0] == pytest.approx(term["cov_re"][0][0], rel=1e-3)
    # lme4's stop leaves its fixed effects within 1.4e-3 of their SEs of ours
    se = np.asarray(ref["bse_fe"])
    assert np.all(np.abs(fit.fe_params_.to_numpy() - ref["fe_params"]) <= 1.5e-3 * se)
    np.testing.assert_allclose(fit.bse_.to_numpy(), se, rtol=1e-2)
    np.testing.assert_allclose(sol.mu[:len(ref["fitted_head"])], ref["fitted_head"], rtol=1e-5)
    ids = _in_r_order(fit, sol.blups()[0][:, 0], "id", [str(i) for i in range(1, 11)])
    np.testing.assert_allclose(ids, ref["ranef_head"]["id"], rtol=1e-4, atol=1e-6)
    items = list(dict.fromkeys(load_verbagg()["item"]))[:10]  # R's levels: order of appearance
    np.testing.assert_allclose(_in_r_order(fit, sol.blups()[1][:, 0], "item", items),
                               ref["ranef_head"]["item"], rtol=1e-4, atol=1e-6)


def test_grouseticks_crossed_poisson(grouse):
    fit, stale, ref = grouse, _load("grouseticks_poisson_crossed"), _load("glmm_extra_checks")["grouse_crossed"]
    # The reference stopped 0.027 short (its standard errors of 0.001 are those of
    # a degenerate Hessian); lme4 1.1-31 refitting the same rows reaches our optimum.
    assert fit.llf_ >= stale["llf"]
    assert fit.llf_ >= ref["llf"] - 1e-6
    assert fit.llf_ == pytest.approx(ref["llf"], abs=1e-5)
    _check_fit_shape(fit, stale)
    se = np.asarray(ref["bse_fe"])
    assert np.all(np.abs(fit.fe_params_.to_numpy() - ref["fe_params"]) <= 1e-3 * se)
    np.testing.assert_allclose(fit.bse_.to_numpy(), se, rtol=1e-3)
    for term, cov in zip(ref["terms"], (fit.cov_re_["BROOD"], fit.cov_re_["LOCATION"])):
        assert cov[0, 0] == pytest.approx(term["cov_re"][0][0], rel=1e-3)


EXTRA_CASES = {
    "cbpp_probit": (CBPP, load_cbpp, dict(link="probit")),
    "cbpp_cloglog": (CBPP, load_cbpp, dict(link="cloglog")),
    "cbpp_agq7": (CBPP, load_cbpp, dict(n_agq=7)),
    "verbagg_slope": ("r2 ~ Anger + situ + (situ | id)", load_verbagg, {}),
    "grouse_agq10": ("TICKS ~ YEAR + cHEIGHT + (1 | BROOD)", _grouse, dict(family="poisson", n_agq=10)),
}


# lme4 warns that this fit failed to converge (max|grad| = 0.0025): its estimates are not
# the optimum, and the test checks that ours are better by the deviance function.
UNCONVERGED_IN_LME4 = {"verbagg_slope"}


@pytest.mark.parametrize("name", sorted(EXTRA_CASES))
def test_extra_glmer_fits(name):
    formula, data, kwargs = EXTRA_CASES[name]
    ref = _load("glmm_extra_checks")[name]
    fit = glmer(formula, data(), **kwargs)
    llf = fit.llf_
    if ref["nAGQ"] > 1:
        llf -= fit.model_.deviance.saturated_loglik()  # lme4's AGQ constant (see above)
    assert llf >= ref["llf"] - 1e-4
    if name in UNCONVERGED_IN_LME4:
        dev = fit.model_.deviance
        assert dev(np.concatenate([ref["theta"], ref["fe_params"]])) > -2 * fit.llf_ + 1e-4
        assert fit.converged_
        return
    se = np.asarray(ref["bse_fe"])
    assert np.all(np.abs(fit.fe_params_.to_numpy() - ref["fe_params"]) <= 1e-3 * se)
    covs = fit.cov_re_ if isinstance(fit.cov_re_, dict) else {0: fit.cov_re_}
    for term, cov in zip(ref["terms"], covs.values()):
        np.testing.assert_allclose(cov, term["cov_re"], rtol=1e-3, atol=1e-4)
