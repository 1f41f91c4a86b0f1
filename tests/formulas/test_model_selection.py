"""Model selection on formula fits: ``update`` (lme4's ``update``, R's ``update.formula``)
and ``compare`` (R's ``AIC(m0, m1, m2)``/``BIC`` and lme4's ``anova(m0, m1, m2)``).

R's answers: ``update_formulas.json`` and ``model_selection.json`` (lme4 1.1-31, the R calls
in each file's ``note``).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from _reference import product_reference
from mixedlm_sklearn import MixedLMRegressor, compare, lmer, update
from mixedlm_sklearn.datasets import load_orthodont, load_penicillin, load_sleepstudy
from mixedlm_sklearn.formula import update_formula


def _orthodont():
    df = load_orthodont()
    df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])
    return df


DATA = {"sleepstudy": load_sleepstudy, "penicillin": load_penicillin, "orthodont": _orthodont}
OLD = {"sleepstudy": "Reaction ~ Days + (Days | Subject)",
       "penicillin": "diameter ~ 1 + (1 | plate)",
       "orthodont": "distance ~ age * Sex + (age | Subject)"}
CASES = [(g, k) for g in DATA for k in product_reference("update_formulas")[g]]


def _call(entry):
    """The update's formula and REML of an R call ``update(m, <formula>[, REML = FALSE])``."""
    match = re.fullmatch(r"update\(m, (.*?)(?:, )?(REML = FALSE)?\)", entry["call"])
    formula = match.group(1) or None
    if formula is not None and formula.startswith("REML"):
        formula = None
    return formula, match.group(2) is None


@pytest.mark.parametrize("group, key", CASES)
def test_update_matches_lme4(group, key):
    entry = product_reference("update_formulas")[group][key]
    formula, reml = _call(entry)
    if formula is not None:
        assert update_formula(OLD[group], formula) == entry["update_formula"]
    m = lmer(OLD[group], DATA[group]())
    kwargs = {} if reml else {"REML": False}
    u = update(m, formula, **kwargs)
    assert u.reml is entry["REML"]
    assert list(u.fe_params_.index) == entry["fe_names"]
    assert u.df_model_ == entry["df_model"]
    assert u.llf_ >= entry["llf_best"] - 1e-6
    assert u.llf_ == pytest.approx(entry["llf_best"], abs=1e-5)
    assert m.formula == OLD[group]  # the original is unchanged


def test_update_keeps_weights_and_answers_errors():
    df = load_sleepstudy()
    w = np.resize([1.0, 2.0, 0.5], len(df))
    m = lmer("Reaction ~ Days + (1 | Subject)", df, weights=w)
    same = update(m)
    assert same.llf_ == pytest.approx(m.llf_, abs=1e-10)
    est = MixedLMRegressor(formula="~ Days + (1 | Subject)").fit(df, df["Reaction"])
    assert update(est, ". ~ . - Days").formula == "~ (1 | Subject)"
    with pytest.raises(ValueError, match="response was given as y"):
        update(est, "log(.) ~ .")
    arrays = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"])
    with pytest.raises(TypeError, match="formula fit"):
        update(arrays, ". ~ . - Days")
    with pytest.raises(TypeError, match="not both"):
        update(m, REML=False, reml=False)


@pytest.fixture(scope="module")
def fits():
    ref = product_reference("model_selection")
    df = load_sleepstudy()
    return ref, [lmer(ref["formula"][name], df) for name in ("m0", "m1", "m2")]


def test_compare_is_lme4s_anova(fits):
    ref, models = fits
    with pytest.warns(UserWarning, match="refitting model"):
        table = compare(*models, names=["m0", "m1", "m2"], data_name="sleepstudy")
    expected = ref["anova"]
    for column in ("npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df"):
        np.testing.assert_allclose(table[column], np.array(expected[column], dtype=float),
                                   rtol=1e-6, err_msg=column)
    np.testing.assert_allclose(table["Pr(>Chisq)"], np.array(expected["Pr(>Chisq)"], dtype=float),
                               rtol=1e-4)
    assert str(table) == "\n".join(expected["text"])


def test_compare_without_test_is_rs_aic_and_bic(fits):
    ref, models = fits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # R's AIC() compares REML fits as they are
        table = compare(*models, names=["m0", "m1", "m2"], test=False)
    assert list(table.columns) == ["npar", "AIC", "BIC", "logLik", "deviance"]
    np.testing.assert_array_equal(table["npar"], ref["AIC_reml"]["df"])
    np.testing.assert_allclose(table["AIC"], ref["AIC_reml"]["AIC"], rtol=1e-9)
    np.testing.assert_allclose(table["BIC"], ref["BIC_reml"]["BIC"], rtol=1e-9)
    np.testing.assert_allclose(table["logLik"], ref["anova_refit_false"]["logLik"], rtol=1e-9)


def test_compare_needs_nested_fits_for_a_test(fits):
    _, models = fits
    df = load_sleepstudy()
    other = lmer("Reaction ~ I(Days^2) + (1 | Subject)", df, REML=False)
    m1 = update(models[1], REML=False)
    table = compare(m1, other, names=["a", "b"])  # "auto": not nested, no test
    assert "Chisq" not in table.columns
    with pytest.raises(ValueError, match="not nested"):
        compare(m1, other, test=True)
    with pytest.raises(ValueError, match="at least two"):
        compare(m1)
    with pytest.raises(ValueError):
        compare(m1, lmer("Reaction ~ Days + (1 | Subject)", df.iloc[:-10], REML=False))


def test_compare_glmm_fits_as_lme4s_anova():
    from mixedlm_sklearn import glmer, lr_test
    from mixedlm_sklearn.datasets import load_cbpp

    cbpp = load_cbpp()
    m1 = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp)
    m0 = update(m1, ". ~ . - period")
    assert m0.formula == "cbind(incidence, size - incidence) ~ (1 | herd)"
    table = compare(m1, m0, names=["m1", "m0"])
    assert list(table.index) == ["m0", "m1"]  # ordered by npar, as lme4
    test = lr_test(m0, m1)
    assert table.loc["m1", "Chisq"] == pytest.approx(test.statistic, rel=1e-12)
    assert table.loc["m1", "Df"] == test.df
    assert table.loc["m1", "Pr(>Chisq)"] == pytest.approx(test.pvalue, rel=1e-10)
    np.testing.assert_allclose(table["AIC"], [m0.aic_, m1.aic_])
    other = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                  cbpp.assign(size=cbpp["size"] + 1))
    with pytest.raises(ValueError):
        compare(m1, other)
    with pytest.raises(ValueError, match="one kind"):
        compare(m1, lmer("size ~ 1 + (1 | herd)", cbpp))
