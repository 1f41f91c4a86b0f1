"""Contrasts in formulas: ``C(x, contr.sum)``, ``C(x, contr.helmert)``, ``C(x, contr.treatment)``
(also ``Sum``, ``Helmert``, ``Treatment``) and ``relevel(x, ref)``, with lme4's parametrisation.

R's numbers: ``tests/data/reference/product/contrasts_coding.json`` (its ``note`` has the R
calls): lme4/lmerTest fits of Oats (``yield ~ <coding of N, Variety> + (1 | Block/Variety)``,
REML) and glmer fits of cbpp for each coding, with lme4's coefficient names, lmerTest's type
III table and the marginal means. The coding changes the estimates and, as in lme4, the REML
criterion (it contains ``log det X'V^-1 X``, which moves by ``2 log|det A|`` when ``X``
becomes ``X A``); fitted values, type III tests and marginal means do not change.
"""

import numpy as np
import pandas as pd
import pytest

from _reference import product_data, product_reference, r_table
from _tables import sum_coded_design
from mixedlm_sklearn import glmer, lmer, update
from mixedlm_sklearn.datasets import load_cbpp, load_dietox
from mixedlm_sklearn.formula import CONTRASTS, parse_formula

REF = product_reference("contrasts_coding")
# the codings written in the formula (the others in the JSON use lmer's contrasts= argument)
OATS = ["treatment", "sum_in_formula", "helmert_in_formula", "relevel_in_formula",
        "relevel_positional"]
CBPP = ["treatment", "sum_in_formula", "relevel_in_formula"]


@pytest.fixture(scope="module")
def oats():
    return product_data("oats")


@pytest.fixture(scope="module")
def oats_fits(oats):
    return {key: lmer(REF["oats"][key]["formula"], oats) for key in OATS}


@pytest.fixture(scope="module")
def cbpp_fits():
    data = load_cbpp()
    return {key: glmer(REF["cbpp"][key]["formula"], data, family="binomial") for key in CBPP}


def _names(fit):
    return list(fit.fe_params_.index)


# ---- R's names and estimates ------------------------------------------------------------------


@pytest.mark.parametrize("key", OATS)
def test_lmer_fits_match_lme4_for_each_coding(oats_fits, key):
    ref = REF["oats"][key]["fit"]
    fit = oats_fits[key]
    assert _names(fit) == ref["fe_names"]
    np.testing.assert_allclose(fit.fe_params_, ref["fe_params"], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(fit.bse_, ref["bse_fe"], rtol=1e-4)
    assert np.sqrt(fit.scale_) == pytest.approx(ref["sigma"], rel=1e-4)
    # the REML criterion of this coding (not the treatment coding's): never below R's
    assert fit.llf_ >= ref["llf"] - 1e-6
    assert fit.llf_ == pytest.approx(ref["llf"], abs=1e-6)


@pytest.mark.parametrize("key", CBPP)
def test_glmer_fits_match_lme4_for_each_coding(cbpp_fits, key):
    ref = REF["cbpp"][key]["fit"]
    fit = cbpp_fits[key]
    assert _names(fit) == ref["fe_names"]
    np.testing.assert_allclose(fit.fe_params_, ref["fe_params"], rtol=1e-4)
    np.testing.assert_allclose(fit.bse_, ref["bse_fe"], rtol=1e-4)
    assert fit.llf_ >= ref["llf"] - 1e-6
    # the Laplace likelihood is invariant to the coding (no REML term)
    assert fit.llf_ == pytest.approx(cbpp_fits["treatment"].llf_, abs=1e-7)


@pytest.mark.parametrize("key", CBPP)
def test_glmer_link_scale_means_are_lme4s(cbpp_fits, key):
    """Each period's mean on the link scale, ``L b`` with ``L`` the design row of the period
    (emmeans' values for this one-factor model), and its SE from ``vcov``."""
    ref = REF["cbpp"][key]["means_period_link"]
    fit = cbpp_fits[key]
    grid = pd.DataFrame({"period": [str(level) for level in ref["level"]]})
    L = fit.model_frame_.fixed_design(grid).to_numpy()
    np.testing.assert_allclose(L @ fit.fe_params_.to_numpy(), ref["emmean"], rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(np.diag(L @ fit.cov_fe_ @ L.T)), ref["SE"], rtol=1e-4)


def test_the_reml_criterion_moves_with_the_coding_as_log_det_xtx(oats_fits):
    """lme4's REML criterion contains ``log det X'V^-1 X``: recoding ``X`` as ``X A`` moves the
    log-likelihood by ``-log|det A|``, which is ``-(1/2)(log det X_A'X_A - log det X'X)``.
    Our own designs and likelihoods must show that shift (R's ``half_log_det_XtX``)."""
    def half_log_det(fit):
        X = fit.model_frame_.fixed_design(fit.model_frame_.rows).to_numpy()
        return 0.5 * np.linalg.slogdet(X.T @ X)[1]

    base = oats_fits["treatment"]
    for key in OATS:
        ref = REF["oats_invariance"][key]
        shift = half_log_det(oats_fits[key]) - half_log_det(base)
        assert half_log_det(oats_fits[key]) == pytest.approx(ref["half_log_det_XtX"], abs=1e-8)
        assert oats_fits[key].llf_ - base.llf_ == pytest.approx(-shift, abs=1e-6)
        # ... while the variance parameters and the fitted values stay
        assert oats_fits[key].scale_ == pytest.approx(base.scale_, rel=1e-6)
        np.testing.assert_allclose(oats_fits[key].predict(**oats_fits[key].model_frame_.new_data(
            oats_fits[key].model_frame_.rows)), base.predict(
            **base.model_frame_.new_data(base.model_frame_.rows)), rtol=1e-7)


@pytest.mark.parametrize("key", ["sum_in_formula", "helmert_in_formula"])
def test_the_contrast_matrices_are_rs(key):
    """The rows of the design of a main-effects model at each level are the contrast matrix
    R used (``attr(getME(m, 'X'), 'contrasts')``)."""
    for expr, matrix in REF["oats"][key]["contrast_matrices"].items():
        if not isinstance(matrix, dict):
            continue
        variable = expr[2:expr.index(",")]
        data = product_data("oats")
        frame = parse_formula(f"yield ~ {expr} + (1 | Block)", data)
        rows = frame.fixed_design(pd.DataFrame({variable: matrix["rows"]}))
        assert list(rows.columns[1:]) == [f"{expr}{j}" for j in range(1, len(matrix["rows"]))]
        np.testing.assert_array_equal(rows.to_numpy()[:, 1:], matrix["values"])


@pytest.mark.parametrize("key, contr", [("sum_argument", "contr.sum"),
                                        ("helmert_argument", "contr.helmert")])
def test_lmers_contrasts_argument_is_c_in_the_formula(oats, key, contr):
    """R's ``lmer(..., contrasts = list(N = "contr.helmert", ...))`` (4 and 3 levels) is
    ``C(N, contr.helmert) * C(Variety, contr.helmert)`` here: the same estimates and REML
    criterion under other names."""
    ref = REF["oats"][key]["fit"]
    fit = lmer(f"yield ~ C(N, {contr}) * C(Variety, {contr}) + (1 | Block/Variety)", oats)
    renamed = [name.replace(f"C(N, {contr})", "N").replace(f"C(Variety, {contr})", "Variety")
               for name in _names(fit)]
    assert renamed == ref["fe_names"]
    np.testing.assert_allclose(fit.fe_params_, ref["fe_params"], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(fit.bse_, ref["bse_fe"], rtol=1e-4)
    assert fit.llf_ >= ref["llf"] - 1e-6


def test_sum_contrasts_in_an_interaction_are_the_hand_coded_design():
    """``C(x, contr.sum)`` crossed with another: the design equals a hand-coded contr.sum
    design (the last level -1, R's column order: the first factor varying fastest)."""
    data = load_dietox()
    frame = parse_formula("Weight ~ Time + C(Evit, contr.sum) * C(Cu, contr.sum) + (1 | Pig)",
                          data)
    X = frame.fixed_design(frame.rows).to_numpy()
    np.testing.assert_array_equal(X, sum_coded_design(frame.rows))
    assert list(frame.X.columns)[-1] == "C(Evit, contr.sum)2:C(Cu, contr.sum)2"


# ---- the other spellings -----------------------------------------------------------------------


def test_formulaic_spellings_and_treatment_names(oats):
    """``Sum``/``Helmert`` are ``contr.sum``/``contr.helmert``. ``C(x, contr.treatment)`` is
    named by position, as R's ``contrasts<-`` calls ``contr.treatment(nlevels(x))``;
    ``C(x, Treatment)`` by level, as ``factor(x)``."""
    frame = parse_formula("yield ~ C(N, Sum) + C(Variety, Helmert) + (1 | Block)", oats)
    assert list(frame.X.columns) == ["C(N, Sum)1", "C(N, Sum)2", "C(N, Sum)3",
                                     "C(Variety, Helmert)1", "C(Variety, Helmert)2"]
    same = parse_formula("yield ~ C(N, contr.sum) + C(Variety, contr.helmert) + (1 | Block)",
                         oats)
    np.testing.assert_array_equal(frame.X.to_numpy(), same.X.to_numpy())
    assert list(parse_formula("yield ~ C(N, contr.treatment) + (1 | Block)", oats).X.columns) \
        == ["C(N, contr.treatment)2", "C(N, contr.treatment)3", "C(N, contr.treatment)4"]
    treat = parse_formula("yield ~ C(N, Treatment) + (1 | Block)", oats)
    assert list(treat.X.columns) == ["C(N, Treatment)0.2", "C(N, Treatment)0.4",
                                     "C(N, Treatment)0.6"]
    np.testing.assert_array_equal(treat.X.to_numpy(),
                                  parse_formula("yield ~ N + (1 | Block)", oats).X.to_numpy())
    keyword = parse_formula("yield ~ C(N, contr = contr.sum) + (1 | Block)", oats)
    assert list(keyword.X.columns)[0] == "C(N, contr = contr.sum)1"
    assert set(CONTRASTS) == {"contr.treatment", "contr.sum", "contr.helmert", "Treatment",
                              "Sum", "Helmert"}


def test_treatment_contrasts_against_another_level_are_rs_relevel(oats):
    """``C(N, contr.treatment, base = 3)``: the columns of relevel(N, "0.4") in level order
    (R names them by position: 1, 2, 4); the estimates are R's relevel fit's."""
    fit = lmer("yield ~ C(N, contr.treatment, base = 3) * Variety + (1 | Block/Variety)", oats)
    ref = REF["oats"]["relevel_positional"]["fit"]
    prefix = "C(N, contr.treatment, base = 3)"
    assert _names(fit)[1:4] == [f"{prefix}1", f"{prefix}2", f"{prefix}4"]
    ours = dict(zip(_names(fit), fit.fe_params_))
    theirs = dict(zip(ref["fe_names"], ref["fe_params"]))
    for old, new in (("0", "1"), ("0.2", "2"), ("0.6", "4")):
        assert ours[prefix + new] == pytest.approx(theirs[f'relevel(N, "0.4"){old}'], rel=1e-4)
        assert ours[f"{prefix}{new}:VarietyVictory"] == pytest.approx(
            theirs[f'relevel(N, "0.4"){old}:VarietyVictory'], rel=1e-4, abs=1e-8)
    assert fit.llf_ >= ref["llf"] - 1e-6  # the same column space: the same REML criterion
    # lmerTest's type III table (mapped from the treatment coding as lmerTest maps it)
    table, r = fit.anova(), r_table(REF["oats"]["relevel_positional"]["anova_type3_satterthwaite"])
    for column in ("F value", "NumDF", "DenDF", "Pr(>F)"):
        np.testing.assert_allclose(table[column].to_numpy(dtype=float),
                                   r[column].to_numpy(dtype=float), rtol=1e-4)
    with pytest.raises(ValueError, match=r"C\(\): base = 5 but the factor has 4 levels"):
        parse_formula("yield ~ C(N, contr.treatment, base = 5) + (1 | Block)", oats)


def test_relevel_by_label_position_and_the_reference_level(oats):
    by_label = parse_formula('yield ~ relevel(Variety, ref = "Victory") + (1 | Block)', oats)
    assert list(by_label.X.columns) == ['relevel(Variety, ref = "Victory")Golden Rain',
                                        'relevel(Variety, ref = "Victory")Marvellous']
    by_position = parse_formula("yield ~ relevel(Variety, 3) + (1 | Block)", oats)
    assert list(by_position.X.columns) == ["relevel(Variety, 3)Golden Rain",
                                           "relevel(Variety, 3)Marvellous"]
    np.testing.assert_array_equal(by_label.X.to_numpy(), by_position.X.to_numpy())
    assert by_label.fixed_factors()['relevel(Variety, ref = "Victory")'].levels == \
        ("Victory", "Golden Rain", "Marvellous")
    # single quotes are R's too; R deparses them as double quotes
    single = parse_formula("yield ~ relevel(Variety, 'Victory') + (1 | Block)", oats)
    assert list(single.X.columns)[0] == 'relevel(Variety, "Victory")Golden Rain'
    with pytest.raises(ValueError, match=r"relevel\(\): ref = 'Gold' is not a level of the "
                                         r"factor \(levels: \['Golden Rain', 'Marvellous', "
                                         r"'Victory'\]\)"):
        parse_formula('yield ~ relevel(Variety, "Gold") + (1 | Block)', oats)
    with pytest.raises(ValueError, match=r"ref = 4 but the factor has 3 levels"):
        parse_formula("yield ~ relevel(Variety, 4) + (1 | Block)", oats)
    # numbers and logicals as R's as.character writes them
    data = oats.assign(n=oats["N"].astype(float) * 5, flag=oats["N"] == "0")
    frame = parse_formula('yield ~ relevel(n, "2") + relevel(flag, "TRUE") + (1 | Block)', data)
    assert list(frame.X.columns) == ['relevel(n, "2")0', 'relevel(n, "2")1',
                                     'relevel(n, "2")3', 'relevel(flag, "TRUE")FALSE']


def test_labels_with_any_characters_and_relevel_inside_c(oats):
    """A label is matched exactly as written, whatever its characters (none is read as a
    name); ``C(relevel(x, ref), contr)`` codes the releveled factor (R's order: ref first)."""
    data = oats.assign(Variety=oats["Variety"].map({"Golden Rain": 'Größe "G" + `x`|1',
                                                    "Marvellous": "M", "Victory": "V"}))
    frame = parse_formula('yield ~ relevel(Variety, "Größe \\"G\\" + `x`|1") + (1 | Block)',
                          data)
    assert list(frame.X.columns) == ['relevel(Variety, "Größe \\"G\\" + `x`|1")M',
                                     'relevel(Variety, "Größe \\"G\\" + `x`|1")V']
    nested = parse_formula('yield ~ C(relevel(Variety, "Victory"), contr.sum) + (1 | Block)',
                           oats)
    rows = nested.fixed_design(pd.DataFrame({"Variety": ["Victory", "Golden Rain",
                                                         "Marvellous"]}))
    np.testing.assert_array_equal(rows.to_numpy()[:, 1:], [[1, 0], [0, 1], [-1, -1]])


# ---- what is computed from such fits ----------------------------------------------------------


@pytest.mark.parametrize("key", OATS)
def test_type3_anova_is_lmertests_for_every_coding(oats_fits, key):
    ref = r_table(REF["oats"][key]["anova_type3_satterthwaite"])
    table = oats_fits[key].anova()
    assert list(table.index) == list(ref.index)
    for column in ("Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"):
        np.testing.assert_allclose(table[column].to_numpy(dtype=float),
                                   ref[column].to_numpy(dtype=float), rtol=1e-4, err_msg=column)


@pytest.mark.parametrize("key", OATS)
def test_emmeans_do_not_depend_on_the_coding(oats_fits, key):
    """The means over the N x Variety grid, their Kenward-Roger SEs and df are R's (emmeans
    itself cannot rebuild the grid of C(x, contr.sum) or relevel in a formula; R computed
    them from the design rows of the grid)."""
    for variable in ("N", "Variety"):
        ref = REF["oats"][key][f"means_{variable}"]
        table = oats_fits[key].emmeans(variable).table
        assert [str(level) for level in table[variable]] == ref["level"]
        np.testing.assert_allclose(table["emmean"], ref["emmean"], rtol=1e-4)
        np.testing.assert_allclose(table["SE"], ref["SE"], rtol=1e-4)
        np.testing.assert_allclose(table["df"], ref["df"], rtol=1e-4)


def test_prediction_on_new_data_uses_the_fitted_levels(oats_fits, oats):
    """New rows with some levels only (and in another order) are coded with the fit's levels:
    every coding predicts what the treatment coding predicts, conditional and population."""
    new = oats[oats["Variety"].isin(["Victory", "Marvellous"]) & (oats["N"] != "0")] \
        .iloc[::-1].head(9)
    base = oats_fits["treatment"]
    for key in OATS[1:]:
        fit = oats_fits[key]
        np.testing.assert_allclose(fit.predict(new), base.predict(new), rtol=1e-7)
        np.testing.assert_allclose(fit.predict(new, re_form=None),
                                   base.predict(new, re_form=None), rtol=1e-7)
        np.testing.assert_allclose(fit.predict(**fit.model_frame_.new_data(new)),
                                   base.predict(new), rtol=1e-7)
    with pytest.raises(ValueError, match="factor levels the fit has not seen"):
        oats_fits["sum_in_formula"].predict(new.assign(N="0.8"))


def test_update_keeps_the_coding(oats_fits, oats):
    fit = oats_fits["sum_in_formula"]
    smaller = update(fit, ". ~ . - C(N, contr.sum):C(Variety, contr.sum)")
    direct = lmer("yield ~ C(N, contr.sum) + C(Variety, contr.sum) + (1 | Block/Variety)", oats)
    assert _names(smaller) == _names(direct) == [
        "(Intercept)", "C(N, contr.sum)1", "C(N, contr.sum)2", "C(N, contr.sum)3",
        "C(Variety, contr.sum)1", "C(Variety, contr.sum)2"]
    assert smaller.llf_ == pytest.approx(direct.llf_, abs=1e-9)
    releveled = update(oats_fits["relevel_in_formula"],
                       '. ~ . - N:relevel(Variety, ref = "Victory")')
    assert _names(releveled)[-2:] == ['relevel(Variety, ref = "Victory")Golden Rain',
                                      'relevel(Variety, ref = "Victory")Marvellous']


def test_contrasts_left_of_a_bar(oats):
    """lme4 codes a factor left of a bar as in the fixed part: the random-effects design has
    R's columns; an unstructured covariance makes the fit invariant to that coding."""
    frame = parse_formula("yield ~ C(Variety, contr.sum) + (C(Variety, contr.sum) | Block)",
                          oats)
    Z = frame.terms[0].Z
    assert list(Z.columns) == ["(Intercept)", "C(Variety, contr.sum)1",
                               "C(Variety, contr.sum)2"]
    np.testing.assert_array_equal(Z.to_numpy()[:, 1:], frame.X.to_numpy())
    full = parse_formula("yield ~ N + (0 + C(Variety, contr.sum) | Block)", oats)
    assert list(full.terms[0].Z.columns) == [f"C(Variety, contr.sum){level}" for level in
                                             ("Golden Rain", "Marvellous", "Victory")]
    coded = lmer('yield ~ N + (relevel(Variety, "Victory") | Block)', oats)
    plain = lmer("yield ~ N + (Variety | Block)", oats)
    assert coded.llf_ == pytest.approx(plain.llf_, abs=1e-6)


def test_indicator_coding_follows_rs_rule(oats):
    """R codes a factor by indicators, named by level, where its term has no margin in the
    model (the first factor of a model without intercept, a factor nested in another); there
    the contrast does not apply, as in R's model.matrix."""
    frame = parse_formula("yield ~ 0 + C(N, contr.sum) + C(Variety, contr.helmert) + (1|Block)",
                          oats)
    assert list(frame.X.columns) == ["C(N, contr.sum)0", "C(N, contr.sum)0.2",
                                     "C(N, contr.sum)0.4", "C(N, contr.sum)0.6",
                                     "C(Variety, contr.helmert)1", "C(Variety, contr.helmert)2"]
    nested = parse_formula("yield ~ Variety + C(N, contr.sum):Variety + (1|Block)", oats)
    assert list(nested.X.columns)[2:5] == ["VarietyGolden Rain:C(N, contr.sum)1",
                                           "VarietyMarvellous:C(N, contr.sum)1",
                                           "VarietyVictory:C(N, contr.sum)1"]
    # the same column space as the treatment coding: the same fitted values
    treat = lmer("yield ~ Variety + N:Variety + (1|Block)", oats)
    coded = lmer("yield ~ Variety + C(N, contr.sum):Variety + (1|Block)", oats)
    np.testing.assert_allclose(coded.predict(oats), treat.predict(oats), rtol=1e-7)


def test_a_formula_estimator_with_contrasts(oats_fits, oats):
    from mixedlm_sklearn import MixedLMRegressor

    formula = REF["oats"]["sum_in_formula"]["formula"]
    est = MixedLMRegressor(formula=formula).fit(oats)
    assert list(est.fe_params_.index) == REF["oats"]["sum_in_formula"]["fit"]["fe_names"]
    np.testing.assert_allclose(est.predict(oats.head(5)),
                               oats_fits["sum_in_formula"].predict(oats.head(5)), rtol=1e-9)
