"""Inference results print as R prints them: heading, method notes, R's number formats.

R's text: ``printed_text.json`` (R 4.2.2, lmerTest 3.1-3, lme4 1.1-31, car 3.1-1;
``capture.output(print(x))`` at width 80). The tables stay DataFrames: the columns and values
are the same as before they printed as R does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _reference import product_data, product_reference
from mixedlm_sklearn import glmer, lmer
from mixedlm_sklearn._table import ResultTable
from mixedlm_sklearn.datasets import load_cbpp, load_sleepstudy
from mixedlm_sklearn.inference.anova import anova, drop1, ranova

OATS = "yield ~ N * Variety + (1 | Block/Variety)"


@pytest.fixture(scope="module")
def fits():
    return {
        "oats": lmer(OATS, product_data("oats")),
        "sleepstudy": lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy()),
        "cbpp": glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp()),
    }


def _oats_interaction_ss() -> float:
    """The N:Variety sum of squares of the balanced split plot, from the cell means
    (each cell 6 plots): the F test of a balanced design has it as lmerTest's Sum Sq."""
    df = product_data("oats")
    cells = df.groupby(["N", "Variety"])["yield"].mean().unstack()
    inter = cells.sub(cells.mean(axis=1), axis=0).sub(cells.mean(axis=0), axis=1) + cells.to_numpy().mean()
    return float(6 * (inter.to_numpy() ** 2).sum())


def _r_text(key: str) -> list[str]:
    return list(product_reference("printed_text")["text"][key])


# R's exact ties: the oats N:Variety sum of squares is 321.75 exactly (brute force below); R's
# (321.7499...) rounds down at one decimal, ours, exact, to even (R's round(321.75, 1) = 321.8).
_TIE = ("N:Variety   321.7 ", "N:Variety   321.8 ")

CASES = {
    "anova_oats_type3_satterthwaite": (lambda f: anova(f["oats"]), _TIE),
    "anova_oats_type3_kenward_roger": (lambda f: anova(f["oats"], ddf="kenward-roger"), None),
    "anova_oats_type1_satterthwaite": (lambda f: anova(f["oats"], type=1), _TIE),
    "anova_sleepstudy_type3_satterthwaite": (lambda f: anova(f["sleepstudy"]), None),
    "drop1_oats": (lambda f: drop1(f["oats"]), None),
    "drop1_sleepstudy": (lambda f: drop1(f["sleepstudy"]), None),
    "drop1_cbpp_chisq": (lambda f: drop1(f["cbpp"], test="Chisq"), None),
    "ranova_oats": (lambda f: ranova(f["oats"]), None),
    "ranova_sleepstudy": (lambda f: ranova(f["sleepstudy"]), None),
    "car_Anova_cbpp_type2": (lambda f: anova(f["cbpp"], type=2), None),
    "car_Anova_cbpp_type3": (lambda f: anova(f["cbpp"], type=3), None),
}


@pytest.mark.parametrize("key", sorted(CASES))
def test_tables_print_as_r(fits, key):
    make, tie = CASES[key]
    table = make(fits)
    assert isinstance(table, ResultTable) and isinstance(table, pd.DataFrame)
    expected = _r_text(key)
    if tie is not None:
        expected = [line.replace(*tie) for line in expected]
    assert table.text(width=80).split("\n") == expected


def test_the_tie_is_exact():
    assert _oats_interaction_ss() == pytest.approx(321.75, rel=1e-12)


def test_tables_keep_their_columns_and_values(fits):
    table = anova(fits["oats"])
    assert list(table.columns) == ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
    assert table.loc["N:Variety", "Sum Sq"] == pytest.approx(_oats_interaction_ss(), rel=1e-6)
    assert type(table.frame()) is pd.DataFrame
    assert list(ranova(fits["sleepstudy"]).columns) == ["npar", "logLik", "AIC", "LRT", "Df", "Pr(>Chisq)"]
    assert list(drop1(fits["cbpp"]).columns) == ["npar", "AIC", "LRT", "Pr(Chi)"]
    assert list(anova(fits["cbpp"]).columns) == ["Chisq", "Df", "Pr(>Chisq)"]


def test_html_has_the_heading_and_the_rows(fits):
    page = drop1(fits["oats"])._repr_html_()
    assert "Single term deletions using Satterthwaite&#x27;s method:" in page
    assert "N:Variety" in page and "0.3028" in page


@pytest.mark.parametrize("key, formulas", [
    ("anova_sleepstudy_m1_m2", ["Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)"]),
    ("anova_sleepstudy_m0_m1_m2", ["Reaction ~ 1 + (1 | Subject)", "Reaction ~ Days + (1 | Subject)",
                                   "Reaction ~ Days + (Days | Subject)"])])
def test_anova_of_several_fits_prints_as_lme4(key, formulas):
    df = load_sleepstudy()
    fits = [lmer(f, df) for f in formulas]  # REML fits, refitted by ML as lme4 does
    names = ["m0", "m1", "m2"][-len(fits):]
    with pytest.warns(UserWarning, match="refitting model"):
        table = anova(*fits, names=names)
    # R's first line names the data frame (``Data: sleepstudy``), which a fit does not know
    assert table.text(width=80).split("\n") == _r_text(key)[1:]
    assert list(table.columns) == ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df",
                                   "Pr(>Chisq)"]
