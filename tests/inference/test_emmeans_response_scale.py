"""emmeans on the response scale: ``type="response"`` (means back-transformed, delta-method
SEs, intervals back-transformed; pairs as ratios for log and logit links) and ``regrid``
(means re-gridded to the response scale, whose pairs are differences of response-scale
means), for GLMMs (binomial, Poisson) and for linear models of ``log(y)`` and ``sqrt(y)``
(emmeans' ``tran``).

Reference: ``tests/data/reference/product/emmeans_response_scale.json`` (R calls in its
``note``).
"""

from __future__ import annotations

import numpy as np
import pytest

from mixedlm_sklearn import glmer, lmer
from mixedlm_sklearn.datasets import load_cbpp, load_grouseticks
from mixedlm_sklearn.inference.emmeans import emmeans

from _reference import product_data, product_reference
from test_emmeans_by import assert_matches

REF = product_reference("emmeans_response_scale")


@pytest.fixture(scope="module")
def cbpp():
    return glmer(REF["formula"]["cbpp"], load_cbpp())


@pytest.fixture(scope="module")
def grouseticks():
    return glmer(REF["formula"]["grouseticks"], load_grouseticks(), family="poisson")


def _oats(kind):
    # ``yield`` is a Python keyword: the formula quotes it as R would with backticks
    formula = REF["formula"][kind].replace("(yield)", "(`yield`)")
    return lmer(formula, product_data("oats"))


@pytest.fixture(scope="module")
def oats_log():
    return _oats("oats_log")


@pytest.fixture(scope="module")
def oats_sqrt():
    return _oats("oats_sqrt")


def test_binomial_means_on_both_scales(cbpp):
    ref = REF["cbpp"]
    e = emmeans(cbpp, "~ period")
    assert_matches(e.table, ref["emmeans_link"])
    assert_matches(emmeans(cbpp, "~ period", type="response").table, ref["emmeans_response"])
    # our fit's logLik is 6.7e-9 above lme4's and the z ratios agree to 7e-6, which the
    # Tukey tail turns into 1.05e-4 on p = 0.00125: p-values checked through R's z
    assert_matches(e.pairs(type="response"), ref["pairs_response"], p_through_stat=True)
    res = emmeans(cbpp, "pairwise ~ period", type="response")
    assert_matches(res.emmeans.table, ref["pairwise_response"]["emmeans"])
    assert_matches(res.contrasts, ref["pairwise_response"]["contrasts"], p_through_stat=True)


def test_binomial_regrid_gives_differences_of_probabilities(cbpp):
    ref = REF["cbpp"]
    rg = emmeans(cbpp, "~ period").regrid()
    # R's lower limit of period 4 prints 0.00957 where ours prints 0.00958 (it is
    # 0.0095755 in R and 0.0095763 here: our fit's logLik is the higher one): values to 1e-4
    assert_matches(rg.table, ref["regrid"], text=False)
    np.testing.assert_allclose(rg.linfct, ref["regrid_linfct"]["L"]["values"])
    assert_matches(rg.pairs(), ref["regrid_pairs"])
    assert_matches(rg.pairs(adjust="holm"), ref["regrid_pairs_holm"])


def test_regrid_is_the_delta_method(cbpp):
    # independent of emmeans: the covariance of the probabilities by finite differences of
    # the inverse link over the link-scale means' covariance
    e = emmeans(cbpp, "~ period")
    eta = e.linfct @ e.beta
    V = e.linfct @ e.cov_beta @ e.linfct.T
    h = 1e-6
    J = np.diag([(1 / (1 + np.exp(-(x + h))) - 1 / (1 + np.exp(-(x - h)))) / (2 * h) for x in eta])
    np.testing.assert_allclose(e.regrid().cov_beta, J @ V @ J, rtol=1e-7)


def test_poisson_rates_and_their_differences(grouseticks):
    ref = REF["grouseticks"]
    # R prints the upper limit of 1996 as 7.035 and we 7.034 (7.034511 in R, 7.034497
    # here, our logLik 3.1e-6 above lme4's): values to 1e-4, no text
    assert_matches(emmeans(grouseticks, "~ YEAR", type="response").table,
                   ref["emmeans_response"], text=False)
    # the same fit difference moves the Tukey p of YEAR95 - YEAR96 (7.5e-5) past 1e-4
    # relative: p-values checked through R's z
    assert_matches(emmeans(grouseticks, "~ YEAR").regrid().pairs(), ref["regrid_pairs"],
                   p_through_stat=True)


def test_log_response_is_back_transformed(oats_log):
    ref = REF["oats_log"]
    e = emmeans(oats_log, "~ N")
    assert_matches(e.table, ref["emmeans_link"])
    assert_matches(emmeans(oats_log, "~ N", type="response").table, ref["emmeans_response"])
    assert_matches(e.pairs(type="response"), ref["pairs_response"])
    assert_matches(e.regrid().table, ref["regrid"])
    assert_matches(e.regrid().pairs(), ref["regrid_pairs"])
    assert_matches(emmeans(oats_log, "~ N | Variety", type="response").table,
                   ref["emmeans_N_by_Variety_response"])


def test_sqrt_response_is_back_transformed_but_not_its_differences(oats_sqrt):
    ref = REF["oats_sqrt"]
    e = emmeans(oats_sqrt, "~ N")
    assert_matches(emmeans(oats_sqrt, "~ N", type="response").table, ref["emmeans_response"])
    assert_matches(e.pairs(type="response"), ref["pairs_response"])
    assert_matches(e.regrid().table, ref["regrid"])
    assert_matches(e.regrid().pairs(), ref["regrid_pairs"])


def test_other_response_transforms_are_refused():
    data = product_data("oats")
    fit = lmer("log1p(`yield`) ~ N + (1 | Block)", data)
    with pytest.raises(ValueError, match="another transformation"):
        emmeans(fit, "~ N", type="response")


def test_regrid_does_not_depend_on_the_scale_it_starts_from(cbpp):
    a = emmeans(cbpp, "~ period", type="response").regrid()
    b = emmeans(cbpp, "~ period").regrid()
    np.testing.assert_allclose(a.table["prob"], b.table["prob"], rtol=1e-12)
    assert b.regrid() is b
    np.testing.assert_allclose(a.pairs()["estimate"], b.pairs()["estimate"], rtol=1e-12)


def test_unknown_adjustments_are_refused(cbpp):
    with pytest.raises(ValueError, match="adjust must be"):
        emmeans(cbpp, "~ period").pairs(adjust="bogus")
    with pytest.raises(ValueError, match="adjust applies to contrasts"):
        emmeans(cbpp, "~ period", adjust="holm")
