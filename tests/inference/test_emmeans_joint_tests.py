"""emmeans' ``joint_tests``: an F test per model term built from the marginal means
(interaction contrasts of consecutive differences on the reference grid, covariates at
mean -+ 1), with the model's df (Kenward-Roger by default for lmer fits, Satterthwaite on
request, infinite for a GLMM).

References: ``joint_tests*`` of ``tests/data/reference/product/emmeans_oats.json``,
``emmeans_orthodont.json`` and ``emmeans_response_scale.json`` (R calls in each ``note``).
emmeans rounds ``F.ratio`` to 3 decimals in its table, so F is compared with R's
``F_from_est_fcns`` (the same F unrounded).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mixedlm_sklearn import glmer, lmer
from mixedlm_sklearn.datasets import load_cbpp, load_grouseticks, load_orthodont
from mixedlm_sklearn.inference.emmeans import joint_tests

from _reference import product_data, product_reference, r_table

RTOL = 1e-4


@pytest.fixture(scope="module")
def oats():
    return lmer("yield ~ N * Variety + (1 | Block/Variety)", product_data("oats"))


@pytest.fixture(scope="module")
def orthodont():
    df = load_orthodont()
    df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])
    return lmer("distance ~ age * Sex + (age | Subject)", df)


def _unrounded_f(entry, by):
    f = entry["F_from_est_fcns"]
    if not by:
        return [f[t] for t in entry["table"]["model term"]]
    return [f[t][level] for t, level in zip(entry["table"]["model term"], entry["table"][by])]


def assert_joint(ours, entry, by=None, p_through_f=False):
    theirs = r_table(entry["table"])
    assert list(ours.columns) == list(theirs.columns)
    assert ours["model term"].tolist() == theirs["model term"].tolist()
    if by:
        assert ours[by].tolist() == theirs[by].tolist()
    np.testing.assert_array_equal(ours["df1"], theirs["df1"])
    df2 = theirs["df2"].fillna(np.inf).to_numpy(dtype=float)  # R writes Inf as null
    np.testing.assert_allclose(ours["df2"], df2, rtol=RTOL)
    np.testing.assert_allclose(ours["F.ratio"], _unrounded_f(entry, by), rtol=RTOL)
    if p_through_f:
        # R's p-value is its F's chi-square tail (df2 infinite): checked through R's F
        f_r = np.asarray(_unrounded_f(entry, by))
        np.testing.assert_allclose(stats.chi2.sf(f_r * ours["df1"], ours["df1"]),
                                   theirs["p.value"], rtol=RTOL)
    else:
        np.testing.assert_allclose(ours["p.value"], theirs["p.value"], rtol=RTOL)
    if p_through_f:  # the printer, on R's numbers
        ours = ours.copy()
        ours["F.ratio"] = _unrounded_f(entry, by)
        ours["p.value"] = theirs["p.value"].to_numpy()
    assert ours.text(width=80).split("\n") == entry["text"]


@pytest.mark.parametrize("key, kwargs", [
    ("joint_tests", {}),
    ("joint_tests_satterthwaite", {"ddf": "satterthwaite"}),
])
def test_joint_tests_of_a_factorial_lmm(oats, key, kwargs):
    assert_joint(joint_tests(oats, **kwargs), product_reference("emmeans_oats")[key])


def test_joint_tests_within_by_groups(oats):
    assert_joint(joint_tests(oats, by="Variety"),
                 product_reference("emmeans_oats")["joint_tests_by_Variety"], "Variety")


def test_balanced_factorial_joint_tests_are_the_type3_anova(oats):
    # independent of emmeans: on a balanced factorial the means' interaction contrasts span
    # the same hypotheses as lmerTest's type III contrasts (R's anova(m, ddf = "Kenward-Roger"))
    anova = r_table(product_reference("emmeans_oats")["anova_type3_kenward_roger"])
    ours = joint_tests(oats)
    np.testing.assert_allclose(ours["F.ratio"], anova["F value"], rtol=RTOL)
    np.testing.assert_allclose(ours["df2"], anova["DenDF"], rtol=RTOL)


def test_covariates_enter_at_their_mean_plus_minus_one(orthodont):
    ref = product_reference("emmeans_orthodont")
    assert_joint(joint_tests(orthodont), ref["joint_tests"])
    assert_joint(joint_tests(orthodont, by="Sex"), ref["joint_tests_by_Sex"], "Sex")


def test_glmm_joint_tests_are_chi_square_over_df():
    ref = product_reference("emmeans_response_scale")
    fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    assert_joint(joint_tests(fit), ref["cbpp"]["joint_tests"])


def test_glmm_joint_tests_with_a_covariate():
    ref = product_reference("emmeans_response_scale")["grouseticks"]["joint_tests"]
    fit = glmer("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", load_grouseticks(),
                family="poisson")
    # Our fit's logLik is 3.1e-6 above lme4's (-987.9381538 vs -987.9381569), and F
    # agrees to 3e-5; at p ~ 1e-11 that moves the p-value by 1e-3 relative, so the p-values
    # are compared through R's F (the same formula on R's F gives R's p to 1e-4), and F
    # prints 40.730 where R prints 40.731: the printed text is checked on R's numbers
    assert fit.llf_ > product_reference("emmeans_response_scale")["fits"]["grouseticks"]["llf"]
    assert_joint(joint_tests(fit), ref, p_through_f=True)


def test_joint_tests_refuse_what_they_cannot_do(oats):
    with pytest.raises(ValueError, match="not variables of the model"):
        joint_tests(oats, by="Block2")
    with pytest.raises(ValueError, match="ddf"):
        joint_tests(oats, ddf="bogus")
