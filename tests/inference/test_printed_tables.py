"""Inference results print as R prints them: heading, method notes, R's number formats.

R's text: ``printed_text.json`` (R 4.2.2, lmerTest 3.1-3, lme4 1.1-31, car 3.1-1;
``capture.output(print(x))`` at width 80). The tables stay DataFrames: the columns and values
are the same as before they printed as R does.
"""

from __future__ import annotations

import dataclasses
import re

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
# (321.7499...) rounds down at one decimal; ours lands on either side of the tie by a few
# units in the last place, which the machine's BLAS and LAPACK decide (321.8 where it is
# 321.75 or above, as R's round(321.75, 1) = 321.8; 321.7 on another machine's Kenward-Roger
# table). Either printing of an exact tie is R's printing of the exact value's neighbours.
_TIE = ("N:Variety   321.7 ", "N:Variety   321.8 ")

CASES = {
    "anova_oats_type3_satterthwaite": (lambda f: anova(f["oats"]), _TIE),
    "anova_oats_type3_kenward_roger": (lambda f: anova(f["oats"], ddf="kenward-roger"), _TIE),
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
    expected = [_r_text(key)]
    if tie is not None:  # either side of the exact tie (every other character as R prints)
        expected.append([line.replace(*tie) for line in expected[0]])
        assert expected[1] != expected[0]
    assert table.text(width=80).split("\n") in expected


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


# ---- results that are not tables: performance's, pbkrtest's and simr's layouts ---------------


@pytest.mark.parametrize("key, fit, what", [
    ("r2_nakagawa_sleepstudy", "sleepstudy", "r2"), ("icc_sleepstudy", "sleepstudy", "icc"),
    ("r2_nakagawa_cbpp", "cbpp", "r2"), ("icc_cbpp", "cbpp", "icc")])
def test_r2_and_icc_print_as_performance(fits, key, fit, what):
    result = getattr(fits[fit], what)()
    assert str(result).split("\n") == _r_text(key)
    page = result._repr_html_()
    assert "R2 for Mixed Models" in page or "Intraclass Correlation Coefficient" in page


def _numbers(text: str) -> list[float]:
    import re

    return [float(x) for x in re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", text)]


@pytest.fixture(scope="module")
def ml_pair():
    df = load_sleepstudy()
    return (lmer("Reaction ~ Days + (1 | Subject)", df, REML=False),
            lmer("Reaction ~ Days + (Days | Subject)", df, REML=False))


@pytest.mark.parametrize("boundary", [False, True])
def test_lr_test_prints_its_values(ml_pair, boundary):
    from mixedlm_sklearn import lr_test

    result = lr_test(*ml_pair, boundary=boundary)
    text = str(result)
    lines = text.split("\n")
    assert lines[0] == "Likelihood ratio test"
    assert lines[1] == f"logLik: restricted {result.llf_restricted:.2f}, full {result.llf_full:.2f}"
    row = lines[3].split()
    assert row[0] == "LRT" and int(row[2]) == result.df
    assert float(row[1]) == pytest.approx(result.statistic, abs=5e-4)
    assert float(row[3]) == pytest.approx(result.pvalue, rel=5e-4)  # 4 significant digits
    assert ("mixture" in text) == boundary
    assert result.table.loc["LRT", "stat"] == result.statistic
    assert "<table" in result._repr_html_()


def test_pb_test_prints_pbkrtests_rows(ml_pair):
    from mixedlm_sklearn import pb_test

    result = pb_test(*ml_pair, n_boot=19, random_state=1)
    table = result.table
    assert list(table.index) == ["LRT", "PBtest", "Bartlett"]
    assert table["p.value"].tolist() == [result.pvalue_chi2, result.pvalue, result.pvalue_bartlett]
    finite = result.replicates[np.isfinite(result.replicates)]
    # pbkrtest's Bartlett statistic: its p-value is the chi-square one on df
    from scipy import stats

    assert stats.chi2.sf(table.loc["Bartlett", "stat"], result.df) == pytest.approx(
        result.pvalue_bartlett, rel=1e-10)
    lines = str(result).split("\n")
    # pbkrtest's heading (.PBcommon): time, samples, extremes, then the large and small formulas
    extremes = int(np.sum(finite >= result.statistic))
    assert re.fullmatch(rf"Bootstrap test; time: \d+\.\d\d sec; samples: 19; extremes: {extremes};",
                        lines[0])
    assert float(lines[0].split()[3]) == pytest.approx(result.elapsed, abs=0.005)
    # pbkrtest 0.5.2 prints the small model's formula without its "small : " label
    assert lines[1:3] == _r_text("PBmodcomp_sleepstudy")[1:3]
    pb = lines[5].split()
    assert pb[0] == "PBtest" and float(pb[2]) == pytest.approx(result.pvalue, rel=5e-4)
    assert float(pb[1]) == pytest.approx(result.statistic, abs=5e-4)


def test_pb_test_prints_the_used_samples_when_refits_failed(ml_pair):
    from mixedlm_sklearn import pb_test

    result = pb_test(*ml_pair, n_boot=6, random_state=2)
    failed = np.array([True, False, True, False, False, False])
    replicates = np.where(failed, np.nan, result.replicates)
    broken = dataclasses.replace(result, replicates=replicates, failed=failed,
                                 converged=~failed, formula_full=None, formula_restricted=None)
    extremes = int(np.sum(replicates[~failed] >= result.statistic))
    lines = str(broken).split("\n")
    assert lines[0].endswith(f" samples: 6; extremes: {extremes};")
    assert lines[1] == f"Requested samples: 6 Used samples: 4 Extremes: {extremes}"
    assert lines[2].split() == ["stat", "df", "p.value"]  # no formulas: a fit from arrays


def test_bootstrap_tables_print_their_values(fits):
    boot = fits["sleepstudy"].bootstrap(n_boot=12, random_state=3)
    summary, ci = boot.summary(), boot.conf_int(method="basic")
    assert isinstance(summary, ResultTable) and isinstance(ci, ResultTable)
    assert list(summary.columns) == ["estimate", "bias", "std_error", "n"]
    assert list(ci.columns) == ["lower", "upper"]
    text = str(boot)
    assert text.startswith("PARAMETRIC BOOTSTRAP: 12 replicates, 0 failed\n\nBootstrap Statistics :")
    row = [line for line in text.split("\n") if line.startswith("Days ")][0].split()
    assert [float(x) for x in row[1:4]] == pytest.approx(
        summary.loc["Days", ["estimate", "bias", "std_error"]].tolist(), rel=1e-6)
    ci_text = ci.text(width=80).split("\n")
    assert ci_text[0] == "Bootstrap basic confidence intervals, 95% level"
    assert ci_text[-1] == "Based on 12 replicates"
    days = [line for line in ci_text if line.startswith("Days ")][0].split()
    assert [float(x) for x in days[1:]] == pytest.approx(ci.loc["Days"].tolist(), rel=1e-6)
    assert "Bootstrap Statistics" in boot._repr_html_()


def test_power_prints_as_simr(fits):
    from mixedlm_sklearn import power

    result = power(fits["sleepstudy"], "Days", effect=3.0, test="wald", n_sim=10, random_state=0)
    lines = str(result).split("\n")
    assert lines[0] == "Power for predictor 'Days', (95% confidence interval):"
    assert _numbers(lines[1]) == pytest.approx(
        [100 * result.power, 100 * result.lower, 100 * result.upper], abs=0.005)
    assert lines[4] == "      Effect size for Days is 3"
    assert lines[6] == "Based on 10 simulations, (0 failed, 0 not converged)"
    assert lines[7] == "alpha = 0.05, groups: Subject 18"
    assert "Power for predictor" in result._repr_html_()


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


def test_fits_from_arrays_name_themselves_in_the_heading():
    from mixedlm_sklearn import MixedLMRegressor

    df = load_sleepstudy()
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"])
    for table in (est.drop1(), est.ranova()):
        assert table.title.split("\n")[2:] == ["Model:", "MixedLMRegressor fitted from arrays"]
    assert ranova(est).loc["(1 | Subject)", "Df"] == 1


def test_ranova_heading_without_an_intercept():
    fit = lmer("Reaction ~ 0 + Days + (Days | Subject)", load_sleepstudy())
    assert ranova(fit).title.split("\n")[-1] == "Reaction ~ Days + (Days | Subject) - 1"


def test_wald_conf_int_prints_as_r_confint(fits):
    # lme4's confint(m, method = "Wald") prints the bounds under "2.5 %" / "97.5 %" (its
    # variance rows are NA: here only the fixed effects, the rows it has numbers for)
    ci = fits["sleepstudy"].conf_int()
    assert isinstance(ci, ResultTable) and list(ci.columns) == ["lower", "upper"]
    lines = str(ci).split("\n")
    r = _r_text("confint_wald_sleepstudy")
    assert lines[0] == "Wald confidence intervals, 95% level"
    assert lines[1] == r[0]
    for ours, theirs in zip(lines[2:4], r[-2:]):
        assert ours.split()[0] == theirs.split()[0]
        assert [float(x) for x in ours.split()[1:]] == pytest.approx(
            [float(x) for x in theirs.split()[1:]], rel=1e-8)
    assert lines[4] == "estimate -+ 1.96 * SE (normal quantiles; lme4's confint(method = \"Wald\"))"


@pytest.mark.parametrize("kwargs,title,note", [
    ({"ddf": "satterthwaite"}, "Wald", "Satterthwaite's df"),
    ({"ddf": "kenward-roger"}, "Wald", "Kenward-Roger's adjusted SE and df"),
    ({"method": "profile", "which": "sigma"}, "Profile likelihood", "ML deviance"),
    ({"method": "profile", "which": "sd_(Intercept)|Subject", "criterion": "reml"},
     "Profile likelihood", "REML criterion"),
    ({"method": "boot", "n_boot": 8, "random_state": 0}, "Bootstrap percentile",
     "Based on 8 replicates"),
])
def test_every_conf_int_is_a_titled_table(fits, kwargs, title, note):
    from mixedlm_sklearn.inference import summary

    fit = fits["sleepstudy"]
    ci = fit.conf_int(alpha=0.1, **kwargs)
    assert isinstance(ci, ResultTable) and list(ci.columns) == ["lower", "upper"]
    text = str(ci).split("\n")
    assert text[0] == f"{title} confidence intervals, 90% level"
    assert text[1].split() == ["5", "%", "95", "%"]  # R's headings at alpha = 0.1
    assert any(note in line for line in ci.notes)
    if "ddf" in kwargs:  # the numbers are the summary's intervals
        fixed = summary(fit, alpha=0.1, ddf=kwargs["ddf"]).fixed_effects
        np.testing.assert_array_equal(ci["lower"], fixed["ci_lower"])
    assert "<th>5 %</th>" in ci._repr_html_()


def test_glmm_conf_int_tables(fits):
    ci = fits["cbpp"].conf_int()
    assert isinstance(ci, ResultTable) and ci.title == "Wald confidence intervals, 95% level"
    prof = fits["cbpp"].conf_int(method="profile", which=["sd_(Intercept)|herd"])
    assert prof.title == "Profile likelihood confidence intervals, 95% level"
    assert "3.841" in prof.notes[0]  # the chi-square quantile the deviance rises by
