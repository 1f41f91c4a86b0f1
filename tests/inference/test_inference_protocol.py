"""Inference is written once against the fitted-model protocol: every inference function,
called on a linear mixed model and on a GLMM, gives a result or the model's own refusal
(a ValueError naming what the model cannot do), never an AttributeError or a TypeError from
inside. The numbers are other files' business (R references); here the protocol's promises:
the tests' degrees of freedom come from the model, and lme4's parameter count has sigma
only where the dispersion is estimated.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import glmer, lmer
from mixedlm_sklearn.datasets import load_cbpp, load_orthodont
from mixedlm_sklearn.inference import (compare_models, conf_int, lr_test, power, simulate,
                                       summary, wald_test)
from mixedlm_sklearn.inference.anova import anova, drop1, ranova
from mixedlm_sklearn.inference.emmeans import emmeans
from mixedlm_sklearn.inference.prediction import fitted, predict_interval, residuals
from mixedlm_sklearn.inference.r2 import icc, r2


@pytest.fixture(scope="module")
def lmm():
    return lmer("distance ~ age + Sex + (age | Subject)", load_orthodont())


@pytest.fixture(scope="module")
def lmm_small():
    return lmer("distance ~ age + Sex + (1 | Subject)", load_orthodont())


@pytest.fixture(scope="module")
def glmm():
    return glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())


@pytest.fixture(scope="module")
def glmm_small():
    return glmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", load_cbpp())


def _calls(fit, small, factor, term):
    new = fit.model_frame_.rows.head(3)
    return {
        "summary": lambda: summary(fit),
        "wald_test": lambda: wald_test(fit, term),
        "anova": lambda: anova(fit),
        "anova_chisq_type2": lambda: anova(fit, type=2, test="Chisq"),
        "drop1": lambda: drop1(fit),
        "drop1_chisq": lambda: drop1(fit, test="Chisq"),
        "emmeans": lambda: emmeans(fit, factor).pairs(),
        "emmeans_response": lambda: emmeans(fit, factor, type="response").table,
        "r2": lambda: r2(fit),
        "icc": lambda: icc(fit),
        "fitted": lambda: fitted(fit),
        "residuals": lambda: [residuals(fit, type=t) for t in ("response", "pearson", "deviance")],
        "predict_interval": lambda: predict_interval(fit, **fit.model_frame_.new_data(new)),
        "conf_int_profile": lambda: conf_int(fit, method="profile"),
        "ranova": lambda: ranova(fit),
        "lr_test": lambda: lr_test(small, fit),
        "compare": lambda: compare_models([small, fit]),
        "simulate": lambda: simulate(fit, 2, random_state=0),
        "power": lambda: power(fit, term, n_sim=2, random_state=0),
    }


# What a binomial GLMM refuses, and the words of its refusal.
GLMM_REFUSES = {
    "ranova": "lr_test",
}


NAMES = ["summary", "wald_test", "anova", "anova_chisq_type2", "drop1", "drop1_chisq",
         "emmeans", "emmeans_response", "r2", "icc", "fitted", "residuals", "predict_interval",
         "conf_int_profile", "ranova", "lr_test", "compare", "simulate", "power"]


@pytest.mark.parametrize("name", NAMES)
def test_every_method_answers_or_refuses_by_name(name, lmm, lmm_small, glmm, glmm_small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lmm_calls = _calls(lmm, lmm_small, "Sex", "SexMale")
        if name == "drop1_chisq":
            with pytest.raises(NotImplementedError):  # LR drop1 of a REML fit: refit by ML
                lmm_calls[name]()
        else:
            assert lmm_calls[name]() is not None
        glmm_call = _calls(glmm, glmm_small, "period", "period2")[name]
        refusal = GLMM_REFUSES.get(name, "")
        if refusal:
            with pytest.raises(ValueError, match=refusal):
                glmm_call()
        else:
            assert glmm_call() is not None


def test_degrees_of_freedom_come_from_the_model(lmm, glmm):
    """Finite (Satterthwaite) df where the dispersion is estimated, infinite (z, chi-square)
    where it is fixed; an F test of a GLMM is refused by name."""
    assert np.all(np.isfinite(emmeans(lmm, "Sex", ddf="satterthwaite").table["df"]))
    assert np.all(np.isinf(emmeans(glmm, "period").table["df"]))
    assert wald_test(lmm, "SexMale").method == "satterthwaite"
    assert wald_test(glmm, "period2").method == "chi2"
    assert list(anova(lmm).columns)[-1] == "Pr(>F)"
    assert list(anova(glmm).columns) == ["Chisq", "Df", "Pr(>Chisq)"]
    with pytest.raises(ValueError, match="dispersion is fixed"):
        wald_test(glmm, "period2", ddf="kenward-roger")


def test_parameter_count_has_sigma_only_with_an_estimated_scale(lmm, glmm):
    # Orthodont: 3 fixed effects, 3 theta, sigma; cbpp: 4 fixed effects, 1 theta
    assert lmm.model_.n_parameters == 7 == lmm.df_model_
    assert glmm.model_.n_parameters == 5 == glmm.df_model_
    assert lmm.model_.family.name == "gaussian" and lmm.model_.family.scale_estimated
    assert glmm.model_.family.name == "binomial" and not glmm.model_.family.scale_estimated


def test_families_are_instances_per_fit(glmm):
    """One family instance per fit, carrying its link; equal by family and link."""
    other = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    assert other.model_.family is not glmm.model_.family
    assert other.model_.family == glmm.model_.family
    probit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp(),
                   link="probit")
    assert probit.model_.family != glmm.model_.family
    assert probit.model_.family.link.name == "probit"
    assert pd.Series([glmm.model_.family]).iloc[0].ratio_column == "odds.ratio"


# lmerTest writes ddf = "Satterthwaite" / "Kenward-Roger", pbkrtest and emmeans "KR" /
# "kenward-roger": each spelling gives the canonical method's numbers wherever ddf is taken.
SPELLINGS = {"kenward-roger": ["KR", "kr", "Kenward-Roger", "kenward_roger", "Kenward_Roger"],
             "satterthwaite": ["Satterthwaite", "SATTERTHWAITE"]}


@pytest.mark.parametrize("canonical,alias", [(c, a) for c, aliases in SPELLINGS.items() for a in aliases])
def test_r_spellings_of_ddf_are_accepted_everywhere(canonical, alias, lmm):
    calls = {
        "summary": lambda d: summary(lmm, ddf=d).fixed_effects,
        "summary method": lambda d: lmm.summary(ddf=d).fixed_effects,
        "anova": lambda d: anova(lmm, ddf=d),
        "anova method": lambda d: lmm.anova(ddf=d),
        "drop1": lambda d: drop1(lmm, ddf=d),
        "emmeans": lambda d: emmeans(lmm, "Sex", ddf=d).table,
        "pairs": lambda d: emmeans(lmm, "Sex", ddf=d).pairs(),
        "conf_int": lambda d: conf_int(lmm, ddf=d),
    }
    for name, call in calls.items():
        expected, got = call(canonical), call(alias)
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(pd.DataFrame(got), pd.DataFrame(expected), obj=name)
        else:
            assert got == expected, name
    assert wald_test(lmm, "age", ddf=alias).pvalue == wald_test(lmm, "age", ddf=canonical).pvalue


def test_unknown_ddf_lists_the_methods(lmm):
    with pytest.raises(ValueError, match="satterthwaite.*Kenward-Roger"):
        summary(lmm, ddf="containment")
