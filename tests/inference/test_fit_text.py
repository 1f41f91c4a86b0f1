"""``print(fit)`` of a fitted estimator: lme4's ``print(merMod)``, line for line.

R's text: ``printed_text.json`` (lme4 1.1-31, ``capture.output(print(m))`` at width 80). Two
lines differ by design: the class tag (``['lmerMod']`` -> the estimator's name) and R's
``   Data: <name of the R object>`` line, which Python cannot know.
"""

from __future__ import annotations

import pandas as pd
import pytest

from _reference import product_reference
from mixedlm_sklearn import MixedLMRegressor, glmer, lmer
from mixedlm_sklearn._fit_text import fit_text
from mixedlm_sklearn.datasets import load_cbpp, load_orthodont, load_sleepstudy


def _orthodont():
    df = load_orthodont()
    df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])
    return df


CASES = {
    "print_sleepstudy_reml_slopes": lambda: lmer("Reaction ~ Days + (Days | Subject)",
                                                 load_sleepstudy()),
    "print_orthodont_ml": lambda: lmer("distance ~ age * Sex + (age | Subject)", _orthodont(),
                                       REML=False),
    "print_cbpp_glmer": lambda: glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                                      load_cbpp()),
}


def _as_ours(lines: list[str], name: str) -> list[str]:
    text = "\n".join(line for line in lines if not line.startswith("   Data: "))
    return text.replace("['lmerMod']", f"[{name}]").replace("[glmerMod]", f"[{name}]").split("\n")


@pytest.mark.parametrize("key", sorted(CASES))
def test_print_is_lme4s(key):
    fit = CASES[key]()
    expected = _as_ours(product_reference("printed_text")["text"][key], type(fit).__name__)
    assert fit_text(fit, width=80).split("\n") == expected


def test_print_of_array_fits_and_unfitted_estimators():
    df = load_sleepstudy()
    est = MixedLMRegressor()
    assert str(est) == repr(est) == "MixedLMRegressor()"
    est.fit(df[["Days"]], df["Reaction"], groups=df["Subject"])
    text = str(est)
    assert "Fitted from arrays: 2 fixed effects, 1 random-effects term" in text
    assert "Number of obs: 180, groups:  Subject, 18" in text
    assert repr(est) == "MixedLMRegressor()"  # scikit-learn's, as Pipeline displays nest it


def test_notebook_display_shows_the_print_above_the_diagram():
    fit = CASES["print_sleepstudy_reml_slopes"]()
    html = fit._repr_mimebundle_()["text/html"]
    assert html.startswith("<pre>Linear mixed model fit by REML [MixedLMRegressor]")
    assert "REML criterion at convergence: 1743.628" in html
    assert "sk-" in html  # scikit-learn's diagram follows
    assert not MixedLMRegressor()._repr_mimebundle_()["text/html"].startswith("<pre>")
