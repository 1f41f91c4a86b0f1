"""emmeans as analysts call it: means within the levels of another factor (``by``, ``~ N |
V``), formula specs (``"pairwise ~ N | V"``), contrast families within each by group with
emmeans' adjustments, and the tables printed as emmeans prints them.

References: ``tests/data/reference/product/emmeans_oats.json`` and
``emmeans_orthodont.json`` (their ``note`` holds each R call). Our fits are compared, at our
own estimates, with R's answers at lme4's (the fits agree to ~1e-7).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats

from mixedlm_sklearn import lmer
from mixedlm_sklearn.inference.emmeans import (EMMeansContrasts, EmmeansTable, emmeans,
                                               studentized_range_sf)
from mixedlm_sklearn.inference._emm_spec import EmmSpec, parse_emm_spec

from _reference import product_data, product_reference, r_table

RTOL = 1e-4


@pytest.fixture(scope="module")
def oats():
    return lmer("yield ~ N * Variety + (1 | Block/Variety)", product_data("oats"))


@pytest.fixture(scope="module")
def orthodont():
    from mixedlm_sklearn.datasets import load_orthodont
    df = load_orthodont()
    df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])
    return lmer("distance ~ age * Sex + (age | Subject)", df)


def assert_matches(ours: pd.DataFrame, entry: dict, text: bool = True,
                   p_through_stat: bool = False) -> None:
    """Every column of R's table (names, order, values to 1e-4) and R's printed text.

    ``p_through_stat``: Tukey p-values are checked by applying our adjustment to R's own
    statistics and df (for fits whose statistics differ from R's by a few 1e-6, which a
    p-value in the tail amplifies past 1e-4)."""
    theirs = r_table(entry["table"])
    assert list(ours.columns) == list(theirs.columns)
    for column in theirs.columns:
        if column == "p.value" and "tukey" in " ".join(entry.get("notes", [])):
            if p_through_stat:
                stat = "t.ratio" if "t.ratio" in ours.columns else "z.ratio"
                k = int(next(n for n in ours.notes if "family of" in n)
                        .split("family of ")[1].split()[0])
                df = theirs["df"].to_numpy(dtype=float)
                df = np.where(np.isnan(df), np.inf, df)
                from mixedlm_sklearn.inference.emmeans import adjust_pvalues
                np.testing.assert_allclose(
                    adjust_pvalues(theirs["p.value"], "tukey", theirs[stat], df, k),
                    theirs["p.value"], rtol=RTOL)
                theirs = theirs.copy()
                theirs["p.value"] = adjust_pvalues(ours["p.value"], "tukey", ours[stat],
                                                   ours["df"], k)
            assert_tukey_p(ours, theirs)
        elif pd.api.types.is_numeric_dtype(theirs[column]):
            expected = theirs[column].to_numpy(dtype=float)
            if column == "df":  # R's JSON writes Inf (asymptotic df) as null
                expected = np.where(np.isnan(expected), np.inf, expected)
            np.testing.assert_allclose(ours[column].to_numpy(dtype=float), expected,
                                       rtol=RTOL, err_msg=column)
        else:
            assert [str(v) for v in ours[column]] == [str(v) for v in theirs[column]], column
    notes = entry.get("notes")
    if notes is not None:
        assert list(ours.notes) == list(notes)
    if text:
        assert ours.text(width=80).split("\n") == [line.rstrip("\n") for line in entry["text"]]


def _phi(z: float) -> float:
    """The standard normal density (a scalar; scipy.stats' frozen-distribution machinery
    costs ~100 us a call, which the quadratures below make hundreds of thousands of)."""
    return np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)


def tukey_sf_oracle(q: float, k: int, df: float) -> float:
    """P(Q_{k,df} > q) by direct quadrature of positive terms only.

    ``P(range of k normals > w) = k int phi(z) [Phi(z)^(k-1) - (Phi(z) - Phi(z-w))^(k-1)] dz``
    with ``a^n - (a-b)^n = b sum_i a^i (a-b)^(n-1-i)`` (no cancellation in the tail), then
    averaged over ``s = sqrt(chi2_df / df)``.
    """
    def range_sf(w):
        def f(z):
            a, b = special.ndtr(z), special.ndtr(z - w)
            return _phi(z) * b * sum(a**i * (a - b)**(k - 2 - i) for i in range(k - 1))
        return k * integrate.quad(f, -12.0, w + 12.0, epsabs=0, epsrel=1e-13, limit=500,
                                  points=sorted({0.0, w / 2, w}))[0]

    if not np.isfinite(df):  # z statistics: the range of normals itself
        return range_sf(q)

    def log_density(s):
        return (np.log(2) + (df / 2) * np.log(df / 2) - special.gammaln(df / 2)
                + (df - 1) * np.log(s) - df * s * s / 2)
    return integrate.quad(lambda s: np.exp(log_density(s)) * range_sf(q * s), 1e-9, 4.0,
                          epsabs=0, epsrel=1e-11, limit=500, points=[0.5, 0.8, 1.0, 1.2])[0]


@pytest.mark.parametrize("q, k, df", [(14.800588143497176, 4, 51.0), (12.0, 6, 200.0),
                                       (16.0, 2, 30.0), (11.0, 4, np.inf), (40.0, 3, 2.0)])
def test_tukey_tail_probabilities_equal_the_quadrature(q, k, df):
    """Below 1e-8, where scipy's studentized range loses its relative accuracy (1.52e-13
    or 1.51e-13 for the first case depending on the ulps of its q, where the answer is
    1.5995e-13), the tail is integrated by the package to the quadrature's accuracy."""
    exact = tukey_sf_oracle(q, k, df)
    assert studentized_range_sf(q, k, df) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("q", [1e3, 1e6])
@pytest.mark.parametrize("df", [1.5, 4.0, np.inf])
def test_tukey_tail_of_two_means_is_the_t_distributions_at_large_ratios(q, df):
    """With two means ``Q = sqrt(2) |T|``: exactly ``2 P(T > q / sqrt(2))``. At ``q = 10^6``
    the quadrature used to run over ~10^7 panels (killed for memory); it stops where the
    range's tail is 0 in doubles."""
    exact = 2.0 * (stats.t.sf(q / np.sqrt(2.0), df) if np.isfinite(df) else stats.norm.sf(q / np.sqrt(2.0)))
    assert studentized_range_sf(q, 2, df) == pytest.approx(exact, rel=1e-9, abs=0.0)


def assert_tukey_p(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    """Tukey p-values: R's to 1e-4 down to 1e-8; below, R's ptukey (a complement of a
    cdf) loses its relative accuracy (R 4.276e-12 where the quadrature above gives
    4.0022e-12 for Oats' N0 - N0.6), so there ours are checked against the quadrature."""
    p_ours = ours["p.value"].to_numpy(dtype=float)
    p_r = theirs["p.value"].to_numpy(dtype=float)
    big = p_r > 1e-8
    stat = "t.ratio" if "t.ratio" in ours.columns else "z.ratio"
    note = next(n for n in ours.notes if "family of" in n)
    k = int(note.split("family of ")[1].split()[0])
    apart = big & (np.abs(p_ours - p_r) > RTOL * p_r)
    for i in np.flatnonzero(apart):
        # R's ptukey is not accurate to 1e-4 at small df (oats sqrt, regrid pairs on 6.8
        # df: R 1.20361e-4 where the quadrature at R's own t and df gives 1.20320e-4, as
        # scipy does): the quadrature decides
        q = np.sqrt(2.0) * abs(float(theirs[stat].iloc[i]))
        df_r = float(theirs["df"].iloc[i]) if np.isfinite(theirs["df"].iloc[i]) else np.inf
        exact = tukey_sf_oracle(q, k, df_r)
        assert abs(exact - p_r[i]) > RTOL * exact  # R is off
        q = np.sqrt(2.0) * abs(float(ours[stat].iloc[i]))
        exact = tukey_sf_oracle(q, k, float(ours["df"].iloc[i]))
        np.testing.assert_allclose(p_ours[i], exact, rtol=1e-6)
    np.testing.assert_allclose(p_ours[big & ~apart], p_r[big & ~apart], rtol=RTOL)
    for i in np.flatnonzero(~big):
        q = np.sqrt(2.0) * abs(float(ours[stat].iloc[i]))
        exact = tukey_sf_oracle(q, k, float(ours["df"].iloc[i]))
        # ours is the quadrature's there (scipy's studentized range, which ours takes
        # above 1e-8, is 5-6% off; R's ptukey 7% for Oats' N0 - N0.6)
        assert p_ours[i] == pytest.approx(exact, rel=1e-9)
        assert p_r[i] <= 1e-8 and p_ours[i] <= 1e-8


# ---- specs -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec, parsed", [
    ("N", EmmSpec(("N",))),
    (["N", "Variety"], EmmSpec(("N", "Variety"))),
    ("~ N", EmmSpec(("N",))),
    ("~N*Variety", EmmSpec(("N", "Variety"))),
    ("~ N + Variety", EmmSpec(("N", "Variety"))),
    ("~ N:Variety", EmmSpec(("N", "Variety"))),
    ("~ N | Variety", EmmSpec(("N",), ("Variety",))),
    ("pairwise ~ N | Variety", EmmSpec(("N",), ("Variety",), "pairwise")),
    ("revpairwise ~ N", EmmSpec(("N",), (), "revpairwise")),
    ("trt.vs.ctrl ~ N | Variety * Block", EmmSpec(("N",), ("Variety", "Block"), "trt.vs.ctrl")),
    ("~ `odd name` | Variety", EmmSpec(("odd name",), ("Variety",))),
])
def test_specs_are_read_as_emmeans_reads_them(spec, parsed):
    assert parse_emm_spec(spec) == parsed


@pytest.mark.parametrize("spec", [
    "~ log(N)", "~ N + 1", "~ N | ", "~ | V", "N ~ V", "poly ~ N", "~ N | V | W",
    "pairwise ~ N ~ V", "~ N; import os", "~ __import__('os')", "~ 'N'", "~ N - V",
    "~ N * ", "~",
])
def test_anything_but_names_and_spec_operators_is_refused(spec):
    with pytest.raises(ValueError, match="spec"):
        parse_emm_spec(spec)


def test_spec_names_must_be_variables_of_the_model(oats):
    with pytest.raises(ValueError, match="not variables of the model"):
        emmeans(oats, "~ N | Block2")
    with pytest.raises(ValueError, match="both"):
        emmeans(oats, "~ N | N")
    with pytest.raises(TypeError, match="specs"):
        emmeans(oats, 3)


# ---- by ----------------------------------------------------------------------------------


def test_means_within_levels_of_another_factor(oats):
    ref = product_reference("emmeans_oats")
    e = emmeans(oats, "~ N | Variety")
    assert e.by == ("Variety",)
    assert_matches(e.table, ref["emmeans_N_by_Variety"])
    np.testing.assert_allclose(e.linfct, ref["emmeans_N_by_Variety_linfct"]["L"]["values"])


def test_by_argument_is_the_bar_spec(oats):
    ref = product_reference("emmeans_oats")
    assert_matches(emmeans(oats, "N", by="Variety").table, ref["emmeans_N_by_argument"])
    assert_matches(emmeans(oats, "~ N", by=["Variety"]).table, ref["emmeans_N_by_argument"])


def test_by_with_satterthwaite_df(oats):
    ref = product_reference("emmeans_oats")
    # Satterthwaite df are numerical derivatives (ours and lmerTest's): ~1e-7 apart
    assert_matches(emmeans(oats, "~ N | Variety", ddf="satterthwaite").table,
                   ref["emmeans_N_by_Variety_satterthwaite"])


def test_crossed_spec_averages_over_nothing(oats):
    ref = product_reference("emmeans_oats")
    assert_matches(emmeans(oats, "~ N * Variety").table, ref["emmeans_N_x_Variety"])


def test_means_averaged_over_a_factor_say_so(oats):
    ref = product_reference("emmeans_oats")
    e = emmeans(oats, "~ N")
    assert_matches(e.table, ref["emmeans_N"])
    np.testing.assert_allclose(e.linfct, ref["emmeans_N_linfct"]["L"]["values"])
    assert_matches(e.pairs(), ref["pairs_N"])


def test_by_a_covariate_at_given_values(orthodont):
    ref = product_reference("emmeans_orthodont")
    e = emmeans(orthodont, "~ Sex | age", at={"age": [8, 10, 12, 14]})
    assert_matches(e.table, ref["emmeans_Sex_by_age"])
    np.testing.assert_allclose(e.linfct, ref["emmeans_Sex_by_age_linfct"]["L"]["values"])
    e = emmeans(orthodont, "~ age | Sex", at={"age": [8, 14]})
    assert_matches(e.table, ref["emmeans_age_by_Sex"])
    assert_matches(e.pairs(), ref["pairs_age_by_Sex"])


def test_means_without_by_print_as_emmeans(orthodont):
    ref = product_reference("emmeans_orthodont")
    assert_matches(emmeans(orthodont, "~ Sex").table, ref["emmeans_Sex"])


# ---- contrasts within by groups ----------------------------------------------------------


@pytest.mark.parametrize("adjust", ["tukey", "holm", "bonferroni", "none"])
def test_pairs_within_each_by_group_adjusted_per_group(oats, adjust):
    ref = product_reference("emmeans_oats")["pairs_N_by_Variety"][adjust]
    assert_matches(emmeans(oats, "~ N | Variety").pairs(adjust=adjust), ref)


def test_tukey_family_is_the_by_group_not_the_table(oats):
    # an independent check of the family size: Tukey over the 4 means of a Variety, not 12
    out = emmeans(oats, "~ N | Variety").pairs(adjust="none")
    t, df = out["t.ratio"].to_numpy(), out["df"].to_numpy()
    tukey = emmeans(oats, "~ N | Variety").pairs()
    expected = stats.studentized_range.sf(np.sqrt(2) * np.abs(t), 4, df)
    np.testing.assert_allclose(tukey["p.value"], expected, rtol=1e-10)


def test_reverse_pairs_and_revpairwise(oats):
    ref = product_reference("emmeans_oats")
    assert_matches(emmeans(oats, "~ N | Variety").pairs(reverse=True),
                   ref["pairs_N_by_Variety_reverse"])
    res = emmeans(oats, "revpairwise ~ N | Variety")
    assert_matches(res.emmeans.table, ref["revpairwise_N_by_Variety"]["emmeans"])
    assert_matches(res.contrasts, ref["revpairwise_N_by_Variety"]["contrasts"])


def test_pairwise_spec_gives_means_and_contrasts(oats):
    ref = product_reference("emmeans_oats")["pairwise_N_by_Variety"]
    res = emmeans(oats, "pairwise ~ N | Variety")
    assert isinstance(res, EMMeansContrasts)
    assert_matches(res.emmeans.table, ref["emmeans"])
    assert_matches(res.contrasts, ref["contrasts"])
    assert str(res).startswith("$emmeans\nVariety = Golden Rain:")
    assert "\n$contrasts\nVariety = Golden Rain:\n contrast" in str(res)


def test_pairwise_spec_by_a_covariate(orthodont):
    ref = product_reference("emmeans_orthodont")["pairwise_Sex_by_age"]
    res = emmeans(orthodont, "pairwise ~ Sex | age", at={"age": [8, 10, 12, 14]})
    assert_matches(res.emmeans.table, ref["emmeans"])
    assert_matches(res.contrasts, ref["contrasts"])


def test_consecutive_differences_with_holm(oats):
    ref = product_reference("emmeans_oats")["contrast_consec_by_Variety_holm"]
    assert_matches(emmeans(oats, "~ N | Variety").contrast("consec", adjust="holm"), ref)


def test_treatment_versus_control_with_emmeans_dunnett_approximation(oats):
    ref = product_reference("emmeans_oats")["contrast_trt_vs_ctrl_by_Variety"]
    assert_matches(emmeans(oats, "~ N | Variety").contrast("trt.vs.ctrl"), ref)


def test_dunnettx_lies_between_exact_dunnett_and_sidak(oats):
    # independent of emmeans: for 3 comparisons with a control (correlation 1/2) the exact
    # Dunnett p-value, by quadrature over the shared term, is below Sidak's and close to
    # emmeans' approximation
    out = emmeans(oats, "~ N | Variety").contrast("trt.vs.ctrl", adjust="none")
    t, df = out["t.ratio"].to_numpy()[:3], 45.0
    approx = emmeans(oats, "~ N | Variety").contrast("trt.vs.ctrl")["p.value"].to_numpy()[:3]

    def dunnett(c):
        # T_i = (Z_i - Z_0) / sqrt(2) / s, Z standard normal, s = sqrt(chi2_df / df)
        def given_s(s):
            inner = integrate.quad(lambda z: _phi(z) * (
                special.ndtr(z + c * s * np.sqrt(2)) - special.ndtr(z - c * s * np.sqrt(2)))
                ** 3, -10, 10, epsabs=1e-13)[0]
            return inner * np.exp(np.log(2) + (df / 2) * np.log(df / 2) - special.gammaln(df / 2)
                                  + (df - 1) * np.log(s) - df * s * s / 2)
        return 1.0 - integrate.quad(given_s, 1e-9, 4.0, epsabs=1e-13, limit=200)[0]

    exact = np.array([dunnett(abs(x)) for x in t])
    sidak = 1.0 - (1.0 - 2.0 * stats.t.sf(np.abs(t), df)) ** 3
    assert np.all(exact <= sidak)
    np.testing.assert_allclose(approx, exact, rtol=0.05)


def test_custom_coefficients_apply_in_each_by_group(oats):
    e = emmeans(oats, "~ N | Variety")
    out = e.contrast({"linear": [-3, -1, 1, 3]})
    assert out["Variety"].tolist() == ["Golden Rain", "Marvellous", "Victory"]
    means = e.table["emmean"].to_numpy().reshape(3, 4)
    np.testing.assert_allclose(out["estimate"], means @ [-3, -1, 1, 3], rtol=1e-12)
    with pytest.raises(ValueError, match="4 coefficients"):
        e.contrast([1, -1])
    with pytest.raises(ValueError, match="contrast method"):
        e.contrast("poly")


def test_tables_stay_dataframes(oats):
    e = emmeans(oats, "~ N | Variety")
    assert isinstance(e.table, EmmeansTable) and isinstance(e.table, pd.DataFrame)
    sub = e.table[e.table["Variety"] == "Victory"]
    assert isinstance(sub, EmmeansTable) and sub.by == ("Variety",)
    assert sub.text(width=80).startswith("Variety = Victory:\n N   emmean")
    assert "<table" in e.table._repr_html_()
