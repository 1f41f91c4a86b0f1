"""ANOVA tables: lmerTest's type I / type III contrasts and F tests with
Satterthwaite and Kenward-Roger denominator df, and ``drop1``.

R's tables are compared at lme4's estimates (see ``tests/_tables.py``: ``at_r_point``);
the Satterthwaite df come from the package's own ``varpar_model`` (numerical
derivatives, agreeing with lmerTest's numDeriv to about 4e-7 relative). The public
methods (``est.anova()``, ``drop1``, ``ranova``) are tested in test_inference_tables.py.
"""

from __future__ import annotations

import dataclasses
import doctest
from functools import partial

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mixedlm_sklearn.inference.anova as anova_module
from mixedlm_sklearn.formula import FixedTerm, parse_formula
from mixedlm_sklearn.inference.anova import (TABLE_COLUMNS, anova_table, containment,
                                             kenward_roger_f_test, marginal_contrasts,
                                             marginal_terms, overparametrised_design,
                                             satterthwaite_f_test, type1_contrasts,
                                             type3_contrasts)
from mixedlm_sklearn.inference.satterthwaite import varpar_model as _varpar_model

from _tables import (at_r_point, design, exact_beta_at_r, extras, fitted, frame, kr_at, kr_at_r,
                     our_covs, r_column, r_fixef, r_matrix, r_rows, sum_coded_design,
                     supplementary)

TABLE_CASES = ["orthodont_slopes", "dietox_unbalanced", "grouseticks_crossed",
               "dietox_factorial", "dietox_factorial_sum"]


def test_docstring_examples():
    result = doctest.testmod(anova_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---- inputs: terms and contrasts ---------------------------------------------------------


def _r_name(name):
    return name


def _terms(case):
    return frame(case).fixed_terms(), frame(case).fit_intercept


def _over(case):
    """The over-parametrised design; for the sum-coded case with its own coding ``X`` (the
    formula front end has treatment contrasts only: that fit is made from arrays)."""
    over = overparametrised_design(frame(case))
    if case == "dietox_factorial_sum":
        over = dataclasses.replace(over, X=sum_coded_design(frame(case).rows))
    return over


def _contrasts(case, kind):
    est = fitted(case)
    terms, intercept = _terms(case)
    X = design(est)
    if kind == "type1":
        return type1_contrasts(X.T @ X, terms, intercept)
    if kind == "type3":
        return type3_contrasts(_over(case), terms, intercept)
    return marginal_contrasts(terms, X.shape[1], intercept, X.T @ X)


def test_terms_of_a_formula():
    terms, intercept = _terms("dietox_factorial")
    assert intercept
    assert [(t.name, t.columns, t.factors, sorted(t.numeric)) for t in terms] == [
        ("Time", (1,), ("Time",), ["Time"]),
        ("Evit", (2, 3), ("Evit",), []),
        ("Cu", (4, 5), ("Cu",), []),
        ("Evit:Cu", (6, 7, 8, 9), ("Evit", "Cu"), []),
    ]
    assert containment(terms) == {"Time": [], "Evit": ["Evit:Cu"], "Cu": ["Evit:Cu"],
                                  "Evit:Cu": []}
    assert marginal_terms(terms) == ["Time", "Evit:Cu"]


def test_numeric_variables_decide_containment():
    """``Sex`` is not contained in ``age:Sex`` (lmerTest: the numeric variables must agree),
    so its type III contrast is not orthogonalised against the interaction; ``age`` is."""
    terms, _ = _terms("orthodont_slopes")
    assert containment(terms) == {"age": ["age:Sex"], "Sex": [], "age:Sex": []}
    assert marginal_terms(terms) == ["age:Sex"]


@pytest.mark.parametrize("kind", ["type1", "type3"])
@pytest.mark.parametrize("case", TABLE_CASES)
def test_contrasts_are_lmerTests_hypotheses(case, kind):
    """The matrices lmerTest attaches to its tables (``attr(, "hypotheses")``), entry by
    entry, including R's rounding (an entry 1/3 is 0.3333333 after ``zapsmall``)."""
    ref = supplementary(case)["anova"][f"{kind}_satterthwaite"]["hypotheses"]
    ours = _contrasts(case, kind)
    assert len(ours) == len(ref)
    for (name, L), (r_name, r_L) in zip(ours.items(), ref.items()):
        assert _r_name(name) == r_name
        np.testing.assert_allclose(L, r_matrix(r_L), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", TABLE_CASES)
def test_drop1_contrasts_are_lmerTests(case):
    ref = supplementary(case)["drop1"]["hypotheses"]
    ours = _contrasts(case, "marginal")
    assert len(ours) == len(ref)
    for L, r_L in zip(ours.values(), ref.values()):
        np.testing.assert_allclose(L, r_matrix(r_L), rtol=0, atol=1e-12)


# ---- the tables at lme4's estimates --------------------------------------------------------


def _test(est, ddf, kr=None, beta=None):
    beta = est.fe_params_.to_numpy() if beta is None else beta
    if ddf == "satterthwaite":
        return partial(satterthwaite_f_test, beta=beta, cov_beta=est.cov_fe_, sigma2=est.scale_,
                       t_df=_varpar_model(est).contrast_df)
    return partial(kenward_roger_f_test, beta=beta, kr=kr, sigma2=est.scale_)


def _assert_table(table, ref, ddf_rtol, p_atol):
    for column in ("Sum Sq", "Mean Sq", "F value"):
        np.testing.assert_allclose(table[column], r_column(ref, column), rtol=1e-8)
    np.testing.assert_array_equal(table["NumDF"], r_column(ref, "NumDF"))
    np.testing.assert_allclose(table["DenDF"], r_column(ref, "DenDF"), rtol=ddf_rtol)
    np.testing.assert_allclose(table["Pr(>F)"], r_column(ref, "Pr(>F)"), rtol=0, atol=p_atol)


@pytest.mark.parametrize("ddf", ["satterthwaite", "kenward_roger"])
@pytest.mark.parametrize("kind", ["type1", "type3"])
@pytest.mark.parametrize("case", TABLE_CASES)
def test_table_matches_lmerTest(case, kind, ddf):
    """At lme4's theta and with lme4's own ``fixef``: the inputs R's table came from.

    Our fixed effects at that theta differ from lme4's by the rounding each carries (up
    to 3e-11 absolute, which moves a p-value by 1e-11: see
    ``test_kenward_roger_tables_are_the_exact_ones_up_to_each_betas_rounding``); with
    lme4's, the Kenward-Roger F values agree to 6e-13 and the p-values to 1e-13.
    """
    est = at_r_point(case)
    ref = supplementary(case)["anova"][f"{kind}_{ddf}"]["table"]
    table = anova_table(_contrasts(case, kind), _test(est, ddf, kr_at_r(case), r_fixef(case)))
    assert list(table.columns) == TABLE_COLUMNS
    assert [_r_name(n) for n in table.index] == r_rows(ref)
    if ddf == "satterthwaite":
        _assert_table(table, ref, ddf_rtol=1e-6, p_atol=1e-8)
    else:
        _assert_table(table, ref, ddf_rtol=1e-9, p_atol=1e-12)
        np.testing.assert_allclose(table["F value"], r_column(ref, "F value"), rtol=1e-11)


#: one grouping factor: V is block diagonal and the exact oracle is cheap
EXACT_CASES = ["orthodont_slopes", "dietox_unbalanced", "dietox_factorial",
               "dietox_factorial_sum"]


@pytest.mark.parametrize("kind", ["type1", "type3"])
@pytest.mark.parametrize("case", EXACT_CASES)
def test_kenward_roger_tables_are_the_exact_ones_up_to_each_betas_rounding(case, kind):
    """R's Kenward-Roger F and p, and ours from our fixed effects at lme4's theta, against
    the table at the exact fixed effects (:func:`_tables.exact_beta_at_r`).

    ``F = lambda (L b)'(L Phi_A L')^{-1}(L b) / q`` moves with ``b`` by its gradient
    ``2 lambda L'(L Phi_A L')^{-1} L b / q``; each ``b`` is within the rounding bound of
    its cross-products of the exact one (``test_numerics``), so each F is within the
    gradient times that bound of the exact F, and each p within ``f_pdf(F)`` times that.
    On dietox_unbalanced type III, Evit: lme4's F is 1.7e-11 (relative) above the exact
    one and ours 1.3e-11 below, so the two p-values differ by 1.0e-11: no tolerance
    between R and us below that is justified; the formulas themselves agree to 6e-13
    given the same ``b`` (``test_table_matches_lmerTest``).
    """
    est = at_r_point(case)
    kr = kr_at_r(case)
    exact, rounding = exact_beta_at_r(case)
    ref = supplementary(case)["anova"][f"{kind}_kenward_roger"]["table"]
    F_r, p_r = r_column(ref, "F value"), r_column(ref, "Pr(>F)")
    ours = est.fe_params_.to_numpy()
    for i, L in enumerate(_contrasts(case, kind).values()):
        L = np.atleast_2d(L)
        at_exact = kr.f_test(L, exact)
        S_inv_Lb = np.linalg.solve(L @ kr.cov_beta_adj @ L.T, L @ exact)
        gradient = 2.0 * at_exact.scaling * (L.T @ S_inv_Lb) / at_exact.ndf
        # first order in b, plus the formulas' agreement on identical inputs
        F_tol = np.abs(gradient) @ rounding + 1e-11 * at_exact.statistic
        p_tol = stats.f.pdf(at_exact.statistic, at_exact.ndf, at_exact.ddf) * F_tol + 1e-13
        for F, p in [(F_r[i], p_r[i]), (kr.f_test(L, ours).statistic, kr.f_test(L, ours).pvalue)]:
            assert abs(F - at_exact.statistic) <= F_tol
            assert abs(p - at_exact.pvalue) <= p_tol


@pytest.mark.parametrize("case", TABLE_CASES)
def test_drop1_table_matches_lmerTest(case):
    est = at_r_point(case)
    ref = supplementary(case)["drop1"]["table"]
    table = anova_table(_contrasts(case, "marginal"), _test(est, "satterthwaite", beta=r_fixef(case)))
    assert [_r_name(n) for n in table.index] == r_rows(ref)
    _assert_table(table, ref, ddf_rtol=1e-6, p_atol=1e-8)


@pytest.mark.parametrize("key, kind, ddf", [
    ("anova_type3_satterthwaite", "type3", "satterthwaite"),
    ("anova_type1_satterthwaite", "type1", "satterthwaite"),
    ("anova_type3_kenward_roger", "type3", "kenward_roger"),
    ("drop1", "marginal", "satterthwaite"),
])
def test_shared_reference_orthodont(key, kind, ddf):
    """extras/orthodont_agesex_slopes_reml.json, at lme4's estimates."""
    ref = extras("orthodont_agesex_slopes_reml")[key]
    est = at_r_point("orthodont_slopes")
    table = anova_table(_contrasts("orthodont_slopes", kind),
                        _test(est, ddf, kr_at_r("orthodont_slopes"), r_fixef("orthodont_slopes")))
    assert list(table.index) == r_rows(ref)
    if ddf == "satterthwaite":
        _assert_table(table, ref, ddf_rtol=1e-6, p_atol=1e-8)
    else:
        _assert_table(table, ref, ddf_rtol=1e-9, p_atol=1e-12)


@pytest.mark.parametrize("case, rtol", [("orthodont_slopes", 2e-3), ("dietox_unbalanced", 2e-5)])
def test_from_our_fit(case, rtol):
    """From our own fit the tables agree with R as far as the optima do: on Orthodont ours
    is 5.6e-6 lower in the REML criterion than lme4's, which moves F by up to 1.1e-3."""
    est = fitted(case)
    kr = kr_at(est, our_covs(est, case), est.scale_, case=case)
    for kind, ddf in [("type3", "satterthwaite"), ("type3", "kenward_roger"),
                      ("type1", "satterthwaite")]:
        ref = supplementary(case)["anova"][f"{kind}_{ddf}"]["table"]
        table = anova_table(_contrasts(case, kind), _test(est, ddf, kr))
        for column in ("F value", "Sum Sq", "DenDF"):
            np.testing.assert_allclose(table[column], r_column(ref, column), rtol=rtol)


def test_type3_does_not_depend_on_the_coding():
    """Treatment and sum-to-zero coding of the same model test the same hypotheses."""
    tables = []
    for case in ("dietox_factorial", "dietox_factorial_sum"):
        est = fitted(case)
        kr = kr_at(est, our_covs(est, case), est.scale_, case=case)
        tables.append(anova_table(_contrasts(case, "type3"), _test(est, "kenward_roger", kr)))
    np.testing.assert_allclose(tables[0].to_numpy(), tables[1].to_numpy(), rtol=1e-6)


# ---- special cases -------------------------------------------------------------------------


def test_intercept_only_model_has_no_terms():
    assert type1_contrasts(np.eye(1), [], intercept=True) == {}
    t = [FixedTerm("x", (0,), ("x",), frozenset({"x"}))]
    assert type1_contrasts([[4.0]], t, intercept=False)["x"].tolist() == [[1.0]]


def test_one_term_falls_back_to_type1():
    X = np.column_stack([np.ones(5), np.arange(5.0)])
    t = [FixedTerm("x", (1,), ("x",), frozenset({"x"}))]
    over = anova_module.Overparametrised(X, {"x": [1]}, np.array([0, 1]))
    assert type3_contrasts(over, t)["x"].tolist() == type1_contrasts(X.T @ X, t)["x"].tolist()


def test_empty_contrast_gives_a_missing_row():
    row = satterthwaite_f_test(np.zeros((0, 2)), [1.0, 2.0], np.eye(2), 1.0, lambda M: [5.0])
    assert all(np.isnan(v) for v in row.values())
    table = anova_table({"a": np.zeros((0, 2)), "b": np.array([[0.0, 1.0]])},
                        partial(satterthwaite_f_test, beta=[1.0, 2.0], cov_beta=np.eye(2),
                                sigma2=1.0, t_df=lambda M: np.full(len(M), 5.0)))
    assert np.isnan(table.loc["a", "F value"]) and table.loc["b", "F value"] == 4.0


def test_rank_deficient_hypothesis_uses_its_rank():
    """Two identical rows are one hypothesis (Satterthwaite); Kenward-Roger falls back to
    Satterthwaite with a warning, as lmerTest does when pbkrtest fails."""
    est = fitted("dietox_unbalanced")
    kr = kr_at(est, our_covs(est), est.scale_)
    L = np.zeros((2, 8))
    L[:, 2] = 1.0
    t_df = _varpar_model(est).contrast_df
    beta = est.fe_params_.to_numpy()
    one = satterthwaite_f_test(L[:1], beta, est.cov_fe_, est.scale_, t_df)
    two = satterthwaite_f_test(L, beta, est.cov_fe_, est.scale_, t_df)
    assert two["NumDF"] == 1 and two["F value"] == pytest.approx(one["F value"], rel=1e-10)
    with pytest.warns(UserWarning, match="Satterthwaite"):
        row = kenward_roger_f_test(L, beta, kr, est.scale_, t_df=t_df, cov_beta=est.cov_fe_)
    assert row["F value"] == pytest.approx(one["F value"], rel=1e-10)
    with pytest.raises(ValueError, match="rank deficient"):
        kenward_roger_f_test(L, beta, kr, est.scale_)


def test_nonzero_rhs_tests_the_shifted_hypothesis():
    beta, C = np.array([1.0, 3.0]), np.diag([1.0, 4.0])
    row = satterthwaite_f_test([[0.0, 1.0]], beta, C, 1.0, lambda M: [10.0], rhs=[1.0])
    assert row["F value"] == pytest.approx(1.0)


def test_a_term_without_its_margins_is_tested_as_r_codes_it():
    """y ~ a:b: R codes both factors by indicators (lme4 drops the last column, aliased
    with the intercept); the table has one row a:b, the joint F test of its coefficients
    (the default type III raised NotImplementedError)."""
    from mixedlm_sklearn import RankDeficientWarning, lmer
    from mixedlm_sklearn.inference._parameters import fitted_model

    rng = np.random.default_rng(11)
    n = 90
    df = pd.DataFrame({"a": rng.choice(["u", "v", "w"], n), "b": rng.choice(["p", "q"], n),
                       "g": np.repeat(np.arange(15), 6)})
    df["y"] = (1.0 + 0.8 * (df["a"] == "v") + np.repeat(rng.normal(size=15), 6)
               + rng.normal(size=n))
    with pytest.warns(RankDeficientWarning, match=r"\['aw:bq'\]"):
        est = lmer("y ~ a:b + (1 | g)", df)
    frame = est.model_frame_
    over = overparametrised_design(frame)
    assert over.full_columns == {"a:b": [1, 2, 3, 4, 5, 6]}
    # the Wald F test of the five kept a:b coefficients, by hand
    sol = fitted_model(est).solution
    beta, cov = sol.beta, sol.cov_beta()
    b, V = beta[1:], cov[1:, 1:]
    wald_f = float(b @ np.linalg.solve(V, b)) / 5
    np.testing.assert_allclose(b, est.fe_params_.iloc[1:6], rtol=1e-12)
    # lmerTest tests a model's only term with its type I contrasts (Doolittle rows of
    # X'X; their Satterthwaite df depend on the rows, F does not): X by hand, R's columns
    cells = [((df["a"] == la) & (df["b"] == lb)).to_numpy(float)
             for lb in ("p", "q") for la in ("u", "v", "w")]
    X = np.column_stack([np.ones(n), *cells[:5]])
    L = type1_contrasts(X.T @ X, [FixedTerm("a:b", (1, 2, 3, 4, 5), ("a", "b"))])["a:b"]
    by_hand = satterthwaite_f_test(L, beta, cov, est.scale_, _varpar_model(est).contrast_df)
    assert by_hand["F value"] == pytest.approx(wald_f, rel=1e-10)
    for kind in (3, 1):
        table = est.anova(type=kind)
        assert list(table.index) == ["a:b"]
        row = table.loc["a:b"]
        assert row["NumDF"] == 5
        assert row["F value"] == pytest.approx(wald_f, rel=1e-8)
        assert row["DenDF"] == pytest.approx(by_hand["DenDF"], rel=1e-8)
        assert row["Pr(>F)"] == pytest.approx(stats.f.sf(wald_f, 5, by_hand["DenDF"]), rel=1e-6)
    kr = est.anova(ddf="kenward-roger")
    assert list(kr.index) == ["a:b"] and kr.loc["a:b", "NumDF"] == 5
    assert np.isfinite(kr.to_numpy(dtype=float)).all()


# ---- random effects: ranova -----------------------------------------------------------------

RANOVA_CASES = ["dietox_unbalanced", "grouseticks_crossed", "sleepstudy_diagonal",
                "penicillin_crossed", "dietox_q3", "dietox_factorial"]


def _ranova(case, full=None):
    """Our ranova (lmerTest's reduced models refitted on the fit's rows); ``full`` replaces
    the full model's (logLik, npar) to recompute the tests from R's full model."""
    from mixedlm_sklearn.inference.anova import ranova_table

    table = fitted(case).ranova()
    if full is None:
        return table
    reduced = {name: (row.logLik, row.npar) for name, row in table.iloc[1:].iterrows()}
    return ranova_table(full, reduced)


def _assert_ranova(table, ref, lrt_rtol=1e-8, p_atol=1e-10, ll_rtol=1e-9):
    assert list(table.index) == r_rows(ref)
    np.testing.assert_array_equal(table["npar"], r_column(ref, "npar"))
    np.testing.assert_array_equal(table["Df"], r_column(ref, "Df"))
    np.testing.assert_allclose(table["logLik"], r_column(ref, "logLik"), rtol=ll_rtol)
    np.testing.assert_allclose(table["AIC"], r_column(ref, "AIC"), rtol=ll_rtol)
    np.testing.assert_allclose(table["LRT"], r_column(ref, "LRT"), rtol=lrt_rtol)
    np.testing.assert_allclose(table["Pr(>Chisq)"], r_column(ref, "Pr(>Chisq)"), rtol=0, atol=p_atol)


@pytest.mark.parametrize("case", RANOVA_CASES)
def test_ranova_matches_lmerTest(case):
    """Reduced models named and built as lmerTest's (a slope dropped from a correlated term,
    an intercept-only term removed, ``||`` split first, least squares when nothing random
    is left), refitted on the fit's rows."""
    _assert_ranova(_ranova(case), supplementary(case)["ranova"])


def test_ranova_formulas_are_lmerTests():
    from mixedlm_sklearn.inference.anova import ranova_formulas

    assert ranova_formulas("y ~ x + (x || g)") == {
        "(1 | g)": "y ~ x + (0 + x | g)", "x in (0 + x | g)": "y ~ x + (1 | g)"}
    assert list(ranova_formulas("y ~ x + (1 | a/b)")) == ["(1 | b:a)", "(1 | a)"]
    assert ranova_formulas("y ~ x + (x + z | g)") == {
        "x in (x + z | g)": "y ~ x + (z | g)", "z in (x + z | g)": "y ~ x + (x | g)"}
    assert ranova_formulas("y ~ 0 + x + (0 + x + z | g)")["x in (0 + x + z | g)"] == \
        "y ~ 0 + x + (0 + z | g)"
    # only marginal terms of the left side are dropped
    assert list(ranova_formulas("y ~ x + (x*w | g)")) == ["x:w in (x * w | g)"]
    assert ranova_formulas("y ~ x + (1 | g)") == {"(1 | g)": None}


@pytest.mark.parametrize("case, ref_name", [("orthodont_slopes", "orthodont_agesex_slopes_reml"),
                                            ("penicillin_crossed", "penicillin_crossed_kr")])
def test_shared_reference_ranova(case, ref_name):
    """extras: ``ranova``. On Orthodont lme4's full fit stops 2.8e-6 short in logLik, so its
    LRT is 5.6e-6 smaller than ours (4.7e-6 relative, p 1.5e-6); with lme4's full logLik the
    table is R's to 1e-8."""
    ref = extras(ref_name)["ranova"]
    if case == "orthodont_slopes":
        ours = _ranova(case)
        assert ours["logLik"].iloc[0] > r_column(ref, "logLik")[0]  # ours is the better optimum
        _assert_ranova(ours, ref, lrt_rtol=1e-5, p_atol=2e-6, ll_rtol=2e-8)
        full = (r_column(ref, "logLik")[0], int(r_column(ref, "npar")[0]))
        _assert_ranova(_ranova(case, full=full), ref, lrt_rtol=1e-7, p_atol=1e-8)
    else:
        _assert_ranova(_ranova(case), ref)


# ---- the entry points the estimator will call -----------------------------------------------


def test_entry_points_reproduce_the_tables():
    """contrasts() + f_tests() give lmerTest's tables (Orthodont, at lme4's estimates)."""
    from mixedlm_sklearn.inference.anova import contrasts, f_tests as anova

    est = at_r_point("orthodont_slopes")
    terms, intercept = _terms("orthodont_slopes")
    X = design(est)
    over = overparametrised_design(est.model_frame_)
    t_df = _varpar_model(est).contrast_df
    for kind, ddf, key in [(3, "satterthwaite", "type3_satterthwaite"),
                           ("I", "kenward-roger", "type1_kenward_roger"),
                           ("marginal", "satterthwaite", None)]:
        L = contrasts(kind, terms, X.shape[1], intercept, X.T @ X, over)
        table = anova(L, est.fe_params_, est.cov_fe_, est.scale_, ddf=ddf, t_df=t_df,
                      kr=kr_at_r("orthodont_slopes"))
        ref = (supplementary("orthodont_slopes")["anova"][key]["table"] if key
               else supplementary("orthodont_slopes")["drop1"]["table"])
        np.testing.assert_allclose(table["F value"], r_column(ref, "F value"), rtol=1e-8)
    with pytest.raises(ValueError, match="t_df"):
        anova(L, est.fe_params_, est.cov_fe_, est.scale_)
    with pytest.raises(ValueError, match="kr"):
        anova(L, est.fe_params_, est.cov_fe_, est.scale_, ddf="kenward-roger")
    with pytest.raises(ValueError, match="type"):
        contrasts(2, terms, X.shape[1], intercept, X.T @ X, over)


def test_fit_from_arrays_one_term_per_column_or_grouped():
    """Without a formula: terms are columns (or groups of them); type III is then the
    identity rows (no term contains another), type I sequential as usual."""
    from mixedlm_sklearn.inference.anova import contrasts, f_tests as anova, terms_from_columns

    est = fitted("dietox_unbalanced")
    names = list(est.fe_params_.index)
    X = design(est)
    groups = {"Evit": ["EvitEvit100", "EvitEvit200"], "Cu": ["CuCu035", "CuCu175"]}
    terms, intercept = terms_from_columns(names, groups)
    assert [t.name for t in terms] == ["Time", "Evit", "Cu", "Time:EvitEvit100", "Time:EvitEvit200"]
    L3 = contrasts(3, terms, len(names), intercept, X.T @ X)
    assert L3["Evit"].tolist() == np.eye(8)[[2, 3]].tolist()
    t_df = _varpar_model(est).contrast_df
    table = anova(contrasts(1, terms, len(names), intercept, X.T @ X), est.fe_params_,
                  est.cov_fe_, est.scale_, t_df=t_df)
    # the grouped factor Evit tested jointly, as in the formula fit's type I table
    formula_terms = est.model_frame_.fixed_terms()
    ref = anova(contrasts(1, formula_terms, len(names), True, X.T @ X), est.fe_params_,
                est.cov_fe_, est.scale_, t_df=t_df)
    assert table.loc["Evit", "NumDF"] == 2
    np.testing.assert_allclose(table.loc[["Time", "Evit", "Cu"]].to_numpy(),
                               ref.loc[["Time", "Evit", "Cu"]].to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="not fixed effects"):
        terms_from_columns(names, {"Machine": ["MachineB"]})
    with pytest.raises(ValueError, match="over-parametrised"):
        contrasts(3, formula_terms, len(names), True, X.T @ X)
