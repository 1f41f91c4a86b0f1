"""Estimated marginal means: reference grids, means, pairwise and custom
contrasts as emmeans 1.8 computes them for lmer fits (Kenward-Roger by default).

R's numbers are compared at lme4's estimates (``tests/_tables.py``); ``est.emmeans()`` is
tested in test_inference_tables.py.
"""

from __future__ import annotations

import dataclasses
import doctest

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mixedlm_sklearn.inference.emmeans as emmeans_module
from mixedlm_sklearn.inference.emmeans import adjust_pvalues, reference_grid
from mixedlm_sklearn.inference.emmeans import marginal_means as emmeans
from mixedlm_sklearn.inference.satterthwaite import varpar_model as _varpar_model

from _tables import (at_r_point, extras, fitted, frame, kr_at, kr_at_r,
                     our_covs, r_column, sum_coded_design, supplementary)

EMM_CASES = ["orthodont_slopes", "dietox_unbalanced", "grouseticks_crossed",
             "dietox_factorial", "dietox_factorial_sum", "orthodont_logage"]

ENTRIES = [(case, i) for case in EMM_CASES for i in range(len(supplementary(case)["emmeans"]))]


def test_docstring_examples():
    result = doctest.testmod(emmeans_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _as_list(v):
    return v if isinstance(v, list) else [v]


def _emm(case, entry):
    """Our emmeans of a reference entry, at lme4's estimates, with the entry's df mode."""
    ref = supplementary(case)
    grid = reference_grid(frame(case), at=entry.get("at"))
    if case == "dietox_factorial_sum":  # fitted from arrays with R's sum coding
        grid = dataclasses.replace(grid, X=sum_coded_design(grid.grid))
    beta = np.array(list(ref["fixef"].values()), dtype=float)
    mode = entry.get("mode", "kenward-roger")
    if mode == "kenward-roger":
        kr = kr_at_r(case)
        return emmeans(grid, entry["specs"], beta, kr.cov_beta_adj, kr.row_ddf)
    moved = at_r_point(case)
    if mode == "satterthwaite":
        return emmeans(grid, entry["specs"], beta, moved.cov_fe_, _varpar_model(moved).contrast_df)
    return emmeans(grid, entry["specs"], beta, moved.cov_fe_, None)


def _tol(entry):
    # Satterthwaite df come from numerical derivatives (ours and lmerTest's): ~4e-7
    return 1e-6 if entry.get("mode") == "satterthwaite" else 1e-9


@pytest.mark.parametrize("case, i", ENTRIES)
def test_means_match_emmeans(case, i):
    entry = supplementary(case)["emmeans"][i]
    emm = _emm(case, entry)
    ref = entry["table"]
    for s in _as_list(entry["specs"]):
        assert [str(v) for v in emm.table[s]] == _as_list(ref[s])
    np.testing.assert_allclose(emm.linfct, np.atleast_2d(entry["grid_X"]), rtol=0, atol=1e-12)
    assert list(emm.table.columns) == [c for c in ref if c != "rows"]
    for column in list(emm.table.columns)[len(_as_list(entry["specs"])):]:
        np.testing.assert_allclose(emm.table[column], r_column(ref, column), rtol=_tol(entry))


@pytest.mark.parametrize("adjust", ["tukey", "holm", "bonferroni", "none"])
@pytest.mark.parametrize("case, i", ENTRIES)
def test_pairs_match_emmeans(case, i, adjust):
    entry = supplementary(case)["emmeans"][i]
    ref = entry["pairs"][adjust]
    pairs = _emm(case, entry).pairs(adjust)
    assert list(pairs.columns) == [c for c in ref if c != "rows"]
    assert list(pairs["contrast"]) == _as_list(ref["contrast"])
    for column in ("estimate", "SE", "df", pairs.columns[4]):
        np.testing.assert_allclose(pairs[column], r_column(ref, column), rtol=_tol(entry), atol=1e-12)
    # Tukey: scipy's and R's studentized range integrals agree to ~1e-9
    np.testing.assert_allclose(pairs["p.value"], r_column(ref, "p.value"), rtol=0, atol=1e-8)


def test_custom_contrasts_match_emmeans():
    entry = supplementary("dietox_unbalanced")["emmeans"][0]
    ref = entry["custom"]["table"]
    out = _emm("dietox_unbalanced", entry).contrast(entry["custom"]["coefficients"])
    assert list(out["contrast"]) == ref["contrast"]
    for column in ("estimate", "SE", "df", "t.ratio"):
        np.testing.assert_allclose(out[column], r_column(ref, column), rtol=1e-9)
    np.testing.assert_allclose(out["p.value"], r_column(ref, "p.value"), atol=1e-12)


def test_shared_reference_orthodont():
    """extras/orthodont_agesex_slopes_reml.json: ``emmeans_sex`` and ``emmeans_sex_pairs``
    (Male, Female at the mean age; Kenward-Roger)."""
    ref = extras("orthodont_agesex_slopes_reml")
    entry = supplementary("orthodont_slopes")["emmeans"][0]
    emm = _emm("orthodont_slopes", entry)
    table = ref["emmeans_sex"]
    assert list(emm.table["Sex"]) == table["Sex"] == ["Male", "Female"]
    for column in ("emmean", "SE", "df", "lower.CL", "upper.CL"):
        np.testing.assert_allclose(emm.table[column], table[column], rtol=1e-9)
    pairs = emm.pairs()
    expected = ref["emmeans_sex_pairs"]
    assert list(pairs["contrast"]) == [expected["contrast"]] == ["Male - Female"]
    for column in ("estimate", "SE", "df", "t.ratio"):
        np.testing.assert_allclose(pairs[column], [expected[column]], rtol=1e-9)
    np.testing.assert_allclose(pairs["p.value"], [expected["p.value"]], atol=1e-10)


def test_from_our_fit():
    """From our own Orthodont fit: the means are least squares (balanced), their SEs move
    with the variance parameters (our optimum is 5.6e-6 below lme4's criterion)."""
    est = fitted("orthodont_slopes")
    kr = kr_at(est, our_covs(est), est.scale_)
    grid = reference_grid(est.model_frame_)
    emm = emmeans(grid, "Sex", est.fe_params_, kr.cov_beta_adj, kr.row_ddf)
    ref = extras("orthodont_agesex_slopes_reml")["emmeans_sex"]
    np.testing.assert_allclose(emm.table["emmean"], ref["emmean"], rtol=1e-10)
    np.testing.assert_allclose(emm.table["SE"], ref["SE"], rtol=5e-4)
    np.testing.assert_allclose(emm.table["df"], ref["df"], rtol=1e-9)


# ---- the reference grid ---------------------------------------------------------------------


def test_grid_covariates_at_their_mean_factors_in_level_order():
    est = fitted("orthodont_logage")
    grid = reference_grid(est.model_frame_)
    assert list(grid.grid.columns) == ["age", "Sex"]
    assert grid.grid["age"].tolist() == [11.0, 11.0]  # the mean of age, not of log(age)
    assert grid.factors == ["Sex"]
    np.testing.assert_allclose(grid.X[:, 1], np.log(11.0))


def test_at_gives_covariate_values_and_restricts_levels():
    est = fitted("dietox_factorial")
    grid = reference_grid(est.model_frame_, at={"Time": [2, 10], "Cu": "Cu035"})
    assert len(grid.grid) == 2 * 3
    assert set(grid.grid["Cu"]) == {"Cu035"} and sorted(set(grid.grid["Time"])) == [2, 10]
    assert grid.factors == ["Time", "Evit", "Cu"]
    # averaging over Time's two values: the mean at Time = 6
    at6 = reference_grid(est.model_frame_, at={"Time": 6, "Cu": "Cu035"})
    beta = est.fe_params_.to_numpy()
    a = emmeans(grid, "Evit", beta, est.cov_fe_).table["emmean"]
    b = emmeans(at6, "Evit", beta, est.cov_fe_).table["emmean"]
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.fixture(scope="module")
def offset_data():
    rng = np.random.default_rng(5)
    n = 60
    df = pd.DataFrame({"a": np.tile(["p", "q", "r"], 20), "x": rng.normal(size=n),
                       "cnt": rng.integers(5, 20, size=n).astype(float),
                       "g": np.repeat(np.arange(10), 6)})
    df["y"] = (1.0 + 2.0 * (df["a"] == "q") + 0.5 * df["x"] + 2.0 * df["cnt"]
               + np.repeat(rng.normal(size=10), 6) + rng.normal(size=n))
    return df


def test_offset_terms_enter_the_means_at_the_covariate_means(offset_data):
    """emmeans evaluates a formula's offset() on the reference grid, its variables at
    their means: emmean = x_grid'beta + offset(mean(cnt)). The offset was left out."""
    from mixedlm_sklearn import lmer

    df = offset_data
    est = lmer("y ~ a + x + offset(2 * cnt) + (1 | g)", df)
    b = est.fe_params_
    linear = b["(Intercept)"] + np.array([0.0, b["aq"], b["ar"]]) + df["x"].mean() * b["x"]
    for ddf in ("kenward-roger", "satterthwaite"):
        emm = est.emmeans("a", ddf=ddf)
        np.testing.assert_allclose(emm.table["emmean"], linear + 2.0 * df["cnt"].mean(),
                                   rtol=1e-12)
        low = emm.table["emmean"] - stats.t.ppf(0.975, emm.table["df"]) * emm.table["SE"]
        np.testing.assert_allclose(emm.table["lower.CL"], low, rtol=1e-12)
        # a constant offset cancels in differences
        np.testing.assert_allclose(emm.pairs()["estimate"],
                                   [-b["aq"], -b["ar"], b["aq"] - b["ar"]], rtol=1e-10)
    grid = reference_grid(est.model_frame_)
    assert list(grid.grid.columns) == ["a", "x", "cnt"]
    np.testing.assert_allclose(grid.offset, 2.0 * df["cnt"].mean())
    # the offset is a function of the grid's variables, not the mean of the offset
    est = lmer("y ~ a + x + offset(log(cnt)) + (1 | g)", df)
    emm = est.emmeans("a")
    b = est.fe_params_
    linear = b["(Intercept)"] + np.array([0.0, b["aq"], b["ar"]]) + df["x"].mean() * b["x"]
    np.testing.assert_allclose(emm.table["emmean"], linear + np.log(df["cnt"].mean()),
                               rtol=1e-12)
    # at= sets the offset's variables (emmeans: at = list(cnt = 1) for rates per unit)
    one = est.emmeans("a", at={"cnt": 1.0})
    np.testing.assert_allclose(one.table["emmean"], linear, rtol=1e-12)
    # several values: a mean per value
    two = est.emmeans("cnt", at={"cnt": [5.0, 20.0]})
    np.testing.assert_allclose(two.table["emmean"], linear.mean() + np.log([5.0, 20.0]),
                               rtol=1e-12)
    np.testing.assert_allclose(two.contrast({"sum": [1.0, 1.0]})["estimate"],
                               [2 * linear.mean() + np.log(100.0)], rtol=1e-12)
    # means that differ only by the offset have no standard error: refused, not 0/0
    with pytest.raises(ValueError, match=r"contrasts \['cnt5.0 - cnt20.0'\] put no weight"):
        two.pairs()
    # contrasts carry the offset's difference
    est = lmer("y ~ a + cnt + offset(log(cnt)) + (1 | g)", df)
    two = est.emmeans("cnt", at={"cnt": [5.0, 20.0]})
    np.testing.assert_allclose(two.pairs()["estimate"],
                               [-15.0 * est.fe_params_["cnt"] + np.log(5.0 / 20.0)], rtol=1e-10)


def test_fits_with_aliased_columns_give_the_estimable_means():
    """y ~ a:b is coded as R codes it (a column per cell, the last dropped as aliased): the
    cell means are estimable and equal those of the full-rank a * b; a mean over an empty
    cell is not (emmeans' nonEst) and is refused."""
    import warnings

    from mixedlm_sklearn import MixedLMRegressor, RankDeficientWarning, lmer

    rng = np.random.default_rng(11)
    n = 90
    df = pd.DataFrame({"a": rng.choice(["u", "v", "w"], n), "b": rng.choice(["p", "q"], n),
                       "g": np.repeat(np.arange(15), 6)})
    df["y"] = 1.0 + 0.8 * (df["a"] == "v") + np.repeat(rng.normal(size=15), 6) + rng.normal(size=n)
    with pytest.warns(RankDeficientWarning):
        cells = lmer("y ~ a:b + (1 | g)", df)
    full = lmer("y ~ a * b + (1 | g)", df)
    for specs in ("a", ["a", "b"]):
        for ddf in ("kenward-roger", "satterthwaite"):
            ours, ref = cells.emmeans(specs, ddf=ddf).table, full.emmeans(specs, ddf=ddf).table
            for column in ("emmean", "SE", "df"):
                np.testing.assert_allclose(ours[column], ref[column], rtol=1e-5)
    np.testing.assert_allclose(cells.emmeans("a").pairs()["estimate"],
                               full.emmeans("a").pairs()["estimate"], rtol=1e-5)
    empty = df[(df["a"] != "w") | (df["b"] != "q")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)
        est = lmer("y ~ a * b + (1 | g)", empty)
    # the estimable means: averages of the cell means of a cell-means fit (full rank)
    names = [f"{la}{lb}" for lb in ("p", "q") for la in ("u", "v", "w")][:5]
    design = pd.DataFrame({c: ((empty["a"] == c[0]) & (empty["b"] == c[1])).astype(float)
                           for c in names}, index=empty.index)
    cell_means = MixedLMRegressor(fit_intercept=False).fit(design, empty["y"],
                                                           groups=empty["g"]).fe_params_
    np.testing.assert_allclose(
        est.emmeans("b", at={"a": ["u", "v"]}).table["emmean"],
        [(cell_means["up"] + cell_means["vp"]) / 2, (cell_means["uq"] + cell_means["vq"]) / 2],
        rtol=1e-5)
    with pytest.raises(ValueError, match=r"marginal means \['q'\] are not estimable"):
        est.emmeans("b")


def test_bad_specs_and_at_are_refused():
    est = fitted("orthodont_slopes")
    with pytest.raises(ValueError, match="not variables of the model"):
        reference_grid(est.model_frame_, at={"height": 3})
    with pytest.raises(ValueError, match="not in the data"):
        reference_grid(est.model_frame_, at={"Sex": ["Other"]})
    grid = reference_grid(est.model_frame_)
    with pytest.raises(ValueError, match="not variables of the reference grid"):
        emmeans(grid, "Subject", est.fe_params_, est.cov_fe_)
    emm = emmeans(grid, "Sex", est.fe_params_, est.cov_fe_)
    with pytest.raises(ValueError, match="one per mean"):
        emm.contrast([[1.0, 0.0, -1.0]])


# ---- p-value adjustments --------------------------------------------------------------------


def test_holm_and_bonferroni_are_r_p_adjust():
    p = np.array([0.01, 0.02, 0.03, 0.04, 0.005])
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.005), "holm")
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.04, 0.06, 0.06, 0.06, 0.025])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), [0.05, 0.1, 0.15, 0.2, 0.025])
    np.testing.assert_allclose(adjust_pvalues(p, "sidak"), 1 - (1 - p) ** 5)


def test_tukey_with_two_means_is_the_t_test():
    t, df = np.array([2.5]), np.array([12.0])
    p = 2 * stats.t.sf(t, df)
    np.testing.assert_allclose(adjust_pvalues(p, "tukey", t, df, n_means=2), p, rtol=1e-8)
    with pytest.raises(ValueError, match="adjust"):
        adjust_pvalues(p, "scheffe")


def test_tukey_for_custom_contrasts_becomes_sidak():
    est = fitted("dietox_unbalanced")
    grid = reference_grid(est.model_frame_)
    emm = emmeans(grid, "Evit", est.fe_params_, est.cov_fe_)
    raw = emm.contrast({"a": [1, -1, 0], "b": [0, 1, -1]})
    sidak = emm.contrast({"a": [1, -1, 0], "b": [0, 1, -1]}, adjust="tukey")
    np.testing.assert_allclose(sidak["p.value"], 1 - (1 - raw["p.value"]) ** 2)
    assert list(emm.contrast(np.eye(3)[:2])["contrast"]) == ["c1", "c2"]


def test_contrast_labels_follow_emmeans():
    """Numeric-looking levels get the factor's name; a label with an operator is wrapped."""
    grid = emmeans_module.ReferenceGrid(pd.DataFrame({"g": ["a-1", "b", "c"]}), np.eye(3), ["g"])
    emm = emmeans(grid, "g", np.zeros(3), np.eye(3))
    assert emm.pairs("none")["contrast"].tolist() == ["(a-1) - b", "(a-1) - c", "b - c"]
    grid = emmeans_module.ReferenceGrid(pd.DataFrame({"YEAR": ["95", "96"]}), np.eye(2), ["YEAR"])
    assert emmeans(grid, "YEAR", np.zeros(2), np.eye(2)).labels == ["YEAR95", "YEAR96"]


def test_means_print_as_emmeans_prints_them():
    """``print(emm)`` (and the notebook's repr) is the table with emmeans' notes, not the
    arrays behind it; the same for means with their contrasts."""
    from mixedlm_sklearn import lmer
    from mixedlm_sklearn.datasets import load_orthodont
    from mixedlm_sklearn.inference.emmeans import emmeans

    fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
    emm = fit.emmeans("Sex")
    assert str(emm) == repr(emm) == str(emm.table)
    assert "linfct" not in repr(emm) and "Degrees-of-freedom method: kenward-roger" in str(emm)
    assert emm._repr_html_() == emm.table._repr_html_()
    both = emmeans(fit, "pairwise ~ Sex")
    assert repr(both).startswith("$emmeans\n") and "$contrasts" in both._repr_html_()


def test_the_default_df_falls_back_to_satterthwaite_where_kenward_roger_is_refused(monkeypatch):
    """emmeans' default df is Kenward-Roger's; for a fit by ML (Kenward-Roger is defined at
    REML estimates) or beyond its size limits the default is Satterthwaite's, the table
    the same as asked for by name, while asking for Kenward-Roger still says why not."""
    import mixedlm_sklearn.inference.kenward_roger as kr_module
    from mixedlm_sklearn import lmer
    from mixedlm_sklearn.datasets import load_orthodont

    d = load_orthodont()
    ml = lmer("distance ~ age + Sex + (1 | Subject)", d, reml=False)
    default, named = ml.emmeans("Sex"), ml.emmeans("Sex", ddf="satterthwaite")
    assert str(default) == str(named)
    assert "Degrees-of-freedom method: satterthwaite" in str(default)
    with pytest.raises(ValueError, match="defined at REML estimates"):
        ml.emmeans("Sex", ddf="kenward-roger")
    reml = lmer("distance ~ age + Sex + (1 | Subject)", d)
    assert "kenward-roger" in str(reml.emmeans("Sex"))
    monkeypatch.setattr(kr_module, "MAX_DIMENSION", 10)  # p + N = 3 + 27
    assert "Degrees-of-freedom method: satterthwaite" in str(reml.emmeans("Sex"))
