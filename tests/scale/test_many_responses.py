"""Many responses with one design: ``fit(X, Y)`` with ``Y`` of shape (n, k).

Each response's fit must be the single fit of that column on its observed rows (a property
over random designs: slopes, crossed factors, missing values, REML and ML); the tables
across responses agree with lme4 + lmerTest per response and variancePartition's fractions
(``tests/data/reference/product/many_responses.json``); a failure in one response leaves
the others intact.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from _reference import product_data, product_reference, r_table
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mixedlm_sklearn import MixedLMRegressor, lmer
from mixedlm_sklearn._batched_refit import OneTermBatch
from mixedlm_sklearn._crossprod import ResponseMap, cross_products
from mixedlm_sklearn._deviance import Deviance
from mixedlm_sklearn._batched_refit import _subset
from mixedlm_sklearn._many import (
    LevelClasses,
    RunDeviance,
    fit_many,
    missing_patterns,
    other_starts,
    screen_starts,
)
from mixedlm_sklearn._terms import Term, Terms
from mixedlm_sklearn.inference.many import (
    contrast_table,
    fixed_effects_table,
    p_adjust_bh,
    variance_fractions,
)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ---- each response is its single fit ------------------------------------------------------------


@st.composite
def many_cases(draw):
    m = draw(st.integers(3, 8))
    sizes = draw(st.lists(st.integers(2, 6), min_size=m, max_size=m))
    slope = draw(st.booleans())
    crossed = draw(st.booleans())
    k = draw(st.integers(2, 4))
    reml = draw(st.booleans())
    missing = draw(st.sampled_from([0.0, 0.05, 0.2]))
    log_ratio = draw(st.floats(-2.0, 2.0))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), sizes)
    n = g.size
    x = rng.standard_normal(n)
    h = rng.integers(0, 3, n)
    sd = 10.0 ** (0.5 * log_ratio)
    Y = np.empty((n, k))
    for j in range(k):
        b = rng.standard_normal((m, 2)) * sd * rng.uniform(0.0, 1.5, 2)
        c = rng.standard_normal(3) * sd * rng.uniform(0.0, 1.0)
        Y[:, j] = 1.0 + 0.5 * x + b[g, 0] + slope * b[g, 1] * x + crossed * c[h] + rng.standard_normal(n)
    Y[rng.random((n, k)) < missing] = np.nan
    if missing:
        Y[:, 0] = np.where(np.arange(n) < 2, np.nan, Y[:, 0])  # a pattern of its own
    return dict(g=g, h=h, x=x, Y=Y, slope=slope, crossed=crossed, reml=reml)


def _arguments(case, rows):
    x = case["x"][rows]
    Zg = np.column_stack([np.ones(x.size), x]) if case["slope"] else None
    if case["crossed"]:
        groups = pd.DataFrame({"g": case["g"][rows], "h": case["h"][rows]})
        Z = {"g": Zg} if Zg is not None else None
    else:
        groups, Z = case["g"][rows], Zg
    return x[:, None], groups, Z


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])
@given(many_cases())
def test_each_response_is_the_single_fit_of_its_column(case):
    Y = case["Y"]
    X, groups, Z = _arguments(case, np.ones(Y.shape[0], dtype=bool))
    est = _quiet(MixedLMRegressor(reml=case["reml"]).fit, X, Y, groups=groups, Z=Z)
    assert est.llf_.shape == (Y.shape[1],) and est.coef_.shape == (Y.shape[1], 1)
    for j in range(Y.shape[1]):
        rows = ~np.isnan(Y[:, j])
        Xj, groups_j, Zj = _arguments(case, rows)
        try:
            single = _quiet(MixedLMRegressor(reml=case["reml"]).fit, Xj, Y[rows, j],
                            groups=groups_j, Z=Zj)
        except ValueError:
            assert est.failed_[j], est.fit_messages_.iloc[j]
            continue
        assert not est.failed_[j], est.fit_messages_.iloc[j]
        assert est.llf_[j] == pytest.approx(single.llf_, rel=1e-8, abs=1e-8)
        assert est.converged_[j] == single.converged_
        assert est.n_obs_[j] == rows.sum()
        # at the same optimum: the fixed effects agree to the optimiser's precision
        np.testing.assert_allclose(est.fe_params_.iloc[j].to_numpy(), single.fe_params_.to_numpy(),
                                   rtol=1e-4, atol=1e-6 * (1 + np.abs(single.fe_params_).max()))


def test_a_response_its_effects_reproduce_exactly_fails_as_its_single_fit():
    """The second response is observed on 4 rows of 3 groups: 2 fixed and 3 random
    effects reproduce any y there, so its single fit refuses it (an unbounded likelihood);
    it fails with that reason, the first response (2 groups) is fitted."""
    g = np.array([0, 0, 1, 1, 2, 2])
    x = np.array([2.04, -2.56, 0.42, -0.57, -0.45, -0.22])[:, None]
    Y = np.array([[np.nan, np.nan], [np.nan, -0.09], [0.2, np.nan], [0.03, 0.58], [0.36, -0.39],
                  [1.87, 0.83]])
    with pytest.raises(ValueError, match="reproduce any response exactly"):
        _quiet(MixedLMRegressor().fit, x[~np.isnan(Y[:, 1])], Y[~np.isnan(Y[:, 1]), 1],
               groups=g[~np.isnan(Y[:, 1])])
    est = _quiet(MixedLMRegressor().fit, x, Y, groups=g)
    assert est.failed_.tolist() == [False, True]
    assert "reproduce any response exactly" in est.fit_messages_.iloc[1]
    rows = ~np.isnan(Y[:, 0])
    single = _quiet(MixedLMRegressor().fit, x[rows], Y[rows, 0], groups=g[rows])
    assert est.llf_[0] == pytest.approx(single.llf_, rel=1e-8)


# Random-intercept ML fits with a second local maximum (test_properties.py's cases): the
# other starts of small problems must find the higher one here too.
@pytest.mark.parametrize("x, y, g", [
    ([-1.3, -0.4, 1.1, -0.7, -0.0, -0.3, -0.2, -0.4, 1.4, 0.6],
     [0.8, -0.4, 0.1, -0.6, -0.5, -0.2, 0.2, -3.4, 0.9, -1.1], [0, 0, 0, 1, 1, 1, 1, 2, 3, 3]),
    ([-0.4, 0.2, 0.3, 0.0, -0.4, -0.5], [-0.3, 0.1, -0.9, -1.4, 1.6, 0.9], [0, 0, 0, 1, 2, 2]),
])
def test_local_maxima_are_escaped_as_the_single_fit_escapes_them(x, y, g):
    x, y = np.array(x)[:, None], np.array(y)
    Y = np.column_stack([y, 2.0 * y + 1.0, -y])
    est = _quiet(MixedLMRegressor(reml=False).fit, x, Y, groups=g)
    for j in range(3):
        single = _quiet(MixedLMRegressor(reml=False).fit, x, Y[:, j], groups=g)
        assert est.llf_[j] == pytest.approx(single.llf_, rel=1e-8)


# ---- the engine's pieces ----------------------------------------------------------------------


def test_folded_levels_give_the_engine_deviance_and_gradient():
    """Levels with one design folded into 1 + q pseudo-levels: the same deviance and
    gradient as the engine's deviance of each response (balanced and one odd level)."""
    rng = np.random.default_rng(3)
    per = 4
    g = np.repeat(np.arange(9), per)
    t = np.tile(np.arange(per, dtype=float), 9)
    t[-1] = 7.0  # the last level has a design of its own
    X = np.column_stack([np.ones(g.size), t])
    terms = Terms([Term("g", ["(Intercept)", "t"], 9, False)])
    Y = rng.standard_normal((g.size, 5)) + rng.standard_normal((9, 5))[g]
    cp = cross_products(X, Y[:, 0], [(g, X)], terms)
    products = ResponseMap(X, [(g, X)], terms)(Y)
    classes = LevelClasses.of(cp)
    assert classes is not None and len(classes.members) == 2
    theta = np.array([[0.7, 0.2, 0.3]] * 5) * rng.uniform(0.5, 2.0, (5, 1))
    for reml in (True, False):
        folded = classes.batch(cp, reml)
        value, grad, _, _ = folded.evaluate(theta, classes.products(products))
        plain = OneTermBatch(cp, reml).evaluate(theta, products)
        for j in range(5):
            dev = Deviance(cp.with_response(products, j), reml)
            v, gr = dev.value_and_grad(theta[j])
            assert value[j] == pytest.approx(v, rel=1e-12)
            np.testing.assert_allclose(grad[j], gr, rtol=1e-8, atol=1e-8)
            assert plain[0][j] == pytest.approx(v, rel=1e-12)


@pytest.mark.parametrize("q, diagonal", [(1, False), (2, False), (3, False), (3, True)])
@pytest.mark.parametrize("design", ["distinct", "balanced", "two kinds"])
def test_the_screens_evaluation_is_the_kernels(q, diagonal, design):
    """The screen's layout of the deviance (one factor per distinct Z_l'Z_l, levels first)
    gives the batched kernel's value and gradient, on every level, on folded balanced
    levels and on levels of two designs (factors spread to the levels), for all runs or
    some of them."""
    rng = np.random.default_rng(q + 10 * diagonal + len(design))
    per, m = 4, 9
    g = np.repeat(np.arange(m), per)
    t = np.tile(np.arange(per, dtype=float), m)
    if design == "distinct":
        t = t + rng.standard_normal(t.size)
    elif design == "two kinds":
        t[g % 3 == 0] *= 2.0
    X = np.column_stack([np.ones(g.size), t])
    Z = np.column_stack([np.ones(g.size), t, t ** 2 / 4])[:, :q]
    terms = Terms([Term("g", ["(Intercept)", "t", "t2"][:q], m, diagonal)])
    Y = rng.standard_normal((g.size, 5)) + rng.standard_normal((m, 5))[g]
    cp = cross_products(X, Y[:, 0], [(g, Z)], terms)
    products = ResponseMap(X, [(g, Z)], terms)(Y)
    classes = LevelClasses.of(cp) if design != "distinct" else None
    for reml in (True, False):
        batch = classes.batch(cp, reml) if classes is not None else OneTermBatch(cp, reml)
        folded = classes.products(products) if classes is not None else products
        theta = rng.standard_normal((5, batch.n_theta))
        value, grad = batch.evaluate(theta, folded)[:2]
        run = RunDeviance(batch, folded)
        got_value, got_grad = run(theta)
        np.testing.assert_allclose(got_value, value, rtol=1e-12)
        np.testing.assert_allclose(got_grad, grad, rtol=1e-9, atol=1e-9 * np.abs(grad).max())
        some = np.array([3, 1, 3])
        part_value, part_grad = run(theta[some], some)
        np.testing.assert_allclose(part_value, value[some], rtol=1e-12)
        np.testing.assert_allclose(part_grad, grad[some], rtol=1e-9, atol=1e-9 * np.abs(grad).max())
    if design == "two kinds" and q > 1:
        assert run.spread is not None  # the factors of two designs spread to the levels


def test_the_other_starts_find_a_lower_minimum_and_only_then():
    """A random-intercept ML deviance with a local minimum on the boundary (30.947 at
    theta = 0) and the global one inside (30.0409 at theta = 1.527; a grid of 600
    points shows no other): runs from the other starts flag the boundary answer only."""
    x = np.array([-1.3, -0.4, 1.1, -0.7, -0.0, -0.3, -0.2, -0.4, 1.4, 0.6])
    y = np.array([0.8, -0.4, 0.1, -0.6, -0.5, -0.2, 0.2, -3.4, 0.9, -1.1])
    g = np.array([0, 0, 0, 1, 1, 1, 1, 2, 3, 3])
    X, Z = np.column_stack([np.ones(10), x]), np.ones((10, 1))
    terms = Terms([Term("g", ["(Intercept)"], 4, False)])
    cp = cross_products(X, y, [(g, Z)], terms)
    products = ResponseMap(X, [(g, Z)], terms)(np.column_stack([y, y]))
    batch = OneTermBatch(cp, False)
    inside = batch.fit(_subset(products, np.array([1])), np.array([1.5])).theta[0]
    answers = np.array([[0.0], inside])
    values = batch.evaluate(answers, products, gradient=False)[0]
    assert values == pytest.approx([30.94667521, 30.04086779], abs=1e-6)
    starts = other_starts(terms[0])
    owner = np.repeat([0, 1], len(starts))
    lower = screen_starts(batch, _subset(products, owner), np.tile(starts, (2, 1)), answers[owner],
                          values[owner], np.full(owner.size, 1e-8))
    assert lower[owner == 0].any() and not lower[owner == 1].any()


def test_missing_patterns_group_identical_columns():
    Y = np.array([[1.0, np.nan, 2.0, np.nan], [1.0, 2.0, 3.0, 4.0], [np.nan, 1.0, 1.0, 1.0]])
    observed, pattern = missing_patterns(Y)
    assert pattern.tolist() == [0, 1, 2, 1]
    assert observed.tolist() == [[True, True, False], [False, True, True], [True, True, True]]


def test_progress_reports_every_block():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(6), 5)
    X = np.column_stack([np.ones(30), rng.standard_normal(30)])
    Y = rng.standard_normal((30, 7)) + rng.standard_normal((6, 7))[g]
    seen = []
    fit_many(X, Y, [(g, np.ones((30, 1)))], Terms([Term("g", ["(Intercept)"], 6, False)]),
             block_size=3, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(3, 7), (6, 7), (7, 7)]


# ---- the estimator ------------------------------------------------------------------------------


def _sleep():
    from mixedlm_sklearn.datasets import load_sleepstudy

    df = load_sleepstudy()
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    return df, Z


def test_predict_and_attributes_match_the_single_fits():
    df, Z = _sleep()
    rng = np.random.default_rng(1)
    Y = pd.DataFrame({"a": df["Reaction"], "b": np.log(df["Reaction"]),
                      "c": df["Reaction"] + 30.0 * rng.standard_normal(len(df))})
    Y.loc[:4, "c"] = np.nan
    est = MixedLMRegressor().fit(df[["Days"]], Y, groups=df["Subject"], Z=Z)
    assert list(est.responses_) == ["a", "b", "c"]
    pred = est.predict(df[["Days"]], groups=df["Subject"], Z=Z)
    assert pred.shape == (len(df), 3)
    for j, name in enumerate("abc"):
        rows = Y[name].notna().to_numpy()
        single = MixedLMRegressor().fit(df[["Days"]][rows], Y[name][rows], groups=df["Subject"][rows],
                                        Z=Z[rows])
        np.testing.assert_allclose(est.cov_re_[j], single.cov_re_, rtol=1e-5)
        np.testing.assert_allclose(est.bse_.loc[name].to_numpy(), single.bse_.to_numpy(), rtol=1e-5)
        np.testing.assert_allclose(pred[:, j], single.predict(df[["Days"]], groups=df["Subject"], Z=Z),
                                   rtol=1e-7)
        one = est.for_response(name)
        assert one.llf_ == pytest.approx(single.llf_, rel=1e-10)
        assert one.summary().fixed_effects["df"].to_numpy() == pytest.approx(
            single.summary().fixed_effects["df"].to_numpy(), rel=1e-5)


def test_a_failing_response_does_not_lose_the_others():
    df, Z = _sleep()
    Y = np.column_stack([df["Reaction"], np.full(len(df), 3.0), np.full(len(df), np.nan),
                         df["Reaction"] * 2.0])
    with pytest.warns(UserWarning, match="2 of 4 responses could not be fitted"):
        est = MixedLMRegressor().fit(df[["Days"]], Y, groups=df["Subject"], Z=Z)
    assert est.failed_.tolist() == [False, True, True, False]
    assert "constant" in est.fit_messages_.iloc[1]
    assert np.isnan(est.llf_[1]) and np.isnan(est.coef_[2]).all()
    assert est.llf_[3] == pytest.approx(est.llf_[0] - (180 - 2) * np.log(2.0), rel=1e-9)  # REML: n - p
    with pytest.raises(ValueError, match="has no fit"):
        est.for_response(1)


def test_one_column_is_the_single_fit_with_a_response_axis():
    df, Z = _sleep()
    est = MixedLMRegressor().fit(df[["Days"]], df[["Reaction"]], groups=df["Subject"], Z=Z)
    single = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    assert est.coef_.shape == (1, 1) and est.intercept_.shape == (1,)
    assert est.llf_[0] == pytest.approx(single.llf_, rel=1e-10)
    assert est.predict(df[["Days"]]).shape == (len(df), 1)


def test_bad_multi_output_input_is_refused_clearly():
    df, Z = _sleep()
    Y = np.column_stack([df["Reaction"], df["Reaction"]])
    with pytest.raises(ValueError, match="residual_groups is not supported"):
        MixedLMRegressor().fit(df[["Days"]], Y, groups=df["Subject"], residual_groups=df["Days"] > 4)
    with pytest.warns(UserWarning, match="no groups"):  # as a single fit: least squares
        ols = MixedLMRegressor().fit(df[["Days"]], Y * [1.0, 2.0])
    X1 = np.column_stack([np.ones(len(df)), df["Days"]])
    np.testing.assert_allclose(ols.fe_params_.to_numpy().T, np.linalg.lstsq(X1, Y * [1.0, 2.0], rcond=None)[0])
    Y[3, 1] = np.inf
    est = MixedLMRegressor()
    with pytest.raises(ValueError, match="infinite"):
        est.fit(df[["Days"]], Y, groups=df["Subject"])
    assert not hasattr(est, "coef_")
    with pytest.raises(ValueError, match="progress"):
        MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], progress=print)


def test_p_adjust_bh_is_r_p_adjust():
    # p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05, 0.5, NA), "BH"): m = 6 non-missing,
    # p_(i) 6 / i = 0.06 for i <= 5 and 0.5, then the running minimum from the top
    p = [0.01, 0.02, 0.03, 0.04, 0.05, 0.5, np.nan]
    np.testing.assert_allclose(p_adjust_bh(p)[:6], [0.06, 0.06, 0.06, 0.06, 0.06, 0.5])
    np.testing.assert_allclose(p_adjust_bh([0.04, 0.001, 0.03]), [0.04, 0.003, 0.04])
    assert np.isnan(p_adjust_bh(p)[6])


# ---- agreement with lme4, lmerTest and variancePartition ---------------------------------------

REF = product_reference("many_responses")
RESPONSES = REF["data"]["truth"]["response"]


def _reference_fit(reml: bool):
    data = product_data("many_responses")
    return _quiet(lmer, "~ x + (1 | donor) + (1 | batch)", data, responses=RESPONSES, reml=reml)


@pytest.fixture(scope="module")
def reml_fit():
    return _reference_fit(True)


@pytest.fixture(scope="module")
def ml_fit():
    return _reference_fit(False)


@pytest.mark.parametrize("reml", [True, False])
def test_each_response_agrees_with_lme4(reml, reml_fit, ml_fit):
    est = reml_fit if reml else ml_fit
    fits = REF["fits_reml" if reml else "fits_ml"]
    for j, name in enumerate(RESPONSES):
        r = fits[name]
        assert est.n_obs_[j] == r["n_obs"]
        assert est.llf_[j] >= r["llf"] - 1e-6
        assert est.llf_[j] == pytest.approx(r["llf"], abs=1e-6)
        np.testing.assert_allclose(est.fe_params_.loc[name].to_numpy(), r["estimate"], rtol=1e-4)
        np.testing.assert_allclose(est.bse_.loc[name].to_numpy(), r["se"], rtol=1e-4)
        np.testing.assert_allclose(np.sqrt(est.scale_[j]), r["sigma"], rtol=1e-4)


@pytest.mark.parametrize("reml", [True, False])
def test_variance_fractions_agree_with_variance_partition(reml, reml_fit, ml_fit):
    est = reml_fit if reml else ml_fit
    expected = r_table(REF["var_fractions_reml" if reml else "var_fractions_ml"]).set_index("response")
    got = variance_fractions(est)
    assert list(got.columns) == ["batch", "donor", "x", "Residuals"]
    np.testing.assert_allclose(got.loc[RESPONSES].to_numpy(), expected.loc[RESPONSES, got.columns].to_numpy(),
                               rtol=1e-4, atol=1e-7)


def test_fixed_effect_table_agrees_with_lmertest_and_p_adjust(reml_fit):
    expected = r_table(REF["fixed_effects"]["x"]).set_index("response")
    got = fixed_effects_table(reml_fit, term="x").loc["x"]
    for column in ("estimate", "std_error", "df", "t", "p", "p_bh"):
        source = {"std_error": "se"}.get(column, column)
        np.testing.assert_allclose(got.loc[RESPONSES, column].to_numpy(),
                                   expected.loc[RESPONSES, source].to_numpy(), rtol=1e-4)
    contrast = contrast_table(reml_fit, {"x": 1.0})
    np.testing.assert_allclose(contrast["p_bh"].to_numpy(), got["p_bh"].to_numpy(), rtol=1e-10)


def test_lmer_responses_refuses_what_it_cannot_fit():
    data = product_data("many_responses")
    with pytest.raises(ValueError, match="one-sided"):
        lmer("y01 ~ x + (1 | donor)", data, responses=["y02"])
    with pytest.raises(ValueError, match="not columns"):
        lmer("~ x + (1 | donor)", data, responses=["y01", "nope"])
    with pytest.raises(TypeError, match="list of column names"):
        lmer("~ x + (1 | donor)", data, responses="y01")
    with pytest.raises(ValueError, match="responses=\\[...\\]"):
        lmer("y01 ~ x + (1 | donor)", data, progress=print)


def test_blocks_and_the_memory_bound_change_no_answer():
    """Blocks of 7 responses (the other starts in chunks of one response) give the
    answers of one block."""
    data = product_data("many_responses")
    X = data[["x"]].to_numpy()
    Y = data[RESPONSES].to_numpy()
    codes = pd.factorize(data["donor"], sort=True)[0]
    Xf = np.column_stack([np.ones(len(X)), X])
    terms = Terms([Term("donor", ["(Intercept)"], 40, False)])
    one = fit_many(Xf, Y, [(codes, np.ones((len(X), 1)))], terms)
    small = fit_many(Xf, Y, [(codes, np.ones((len(X), 1)))], terms, block_size=7)
    np.testing.assert_allclose(small.deviance, one.deviance, rtol=1e-12)
    np.testing.assert_allclose(small.beta, one.beta, rtol=1e-8)


def test_satterthwaite_df_together_equal_each_single_fit():
    """The df of the one-term fits computed for all responses at once (batched
    differences) equal lmerTest's per fit (the single fit's satterthwaite_df)."""
    from mixedlm_sklearn.inference import satterthwaite_df

    df, Z = _sleep()
    rng = np.random.default_rng(4)
    Y = np.column_stack([df["Reaction"], np.log(df["Reaction"])]
                        + [df["Reaction"] + 40.0 * rng.standard_normal(len(df)) for _ in range(3)])
    Y[:7, 3] = np.nan
    est = _quiet(MixedLMRegressor().fit, df[["Days"]], Y, groups=df["Subject"], Z=Z)
    assert est.many_.fit.batched.all()
    table = fixed_effects_table(est)
    contrast = contrast_table(est, [1.0, 2.0])
    for j, name in enumerate(est.responses_):
        single = est.for_response(j)
        expected = satterthwaite_df(single)
        got = [table.loc[("(Intercept)", name), "df"], table.loc[("Days", name), "df"]]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        assert contrast.loc[name, "df"] == pytest.approx(satterthwaite_df(single, [1.0, 2.0])[0], rel=1e-5)


@pytest.mark.parametrize("shift", [1e5, 1e9])
def test_responses_far_from_zero_fit_as_the_single_fit_does(shift):
    """Each response measured from its own origin (the single fit's rule): y + 1e9 with a
    spread of 0.1 keeps its digits; the intercept is reported for y as given."""
    df, Z = _sleep()
    r = df["Reaction"].to_numpy()
    Y = np.column_stack([r + shift, np.log(r) + shift, r])
    Y[:3, 1] = np.nan
    est = _quiet(MixedLMRegressor().fit, df[["Days"]], Y, groups=df["Subject"], Z=Z)
    for j in range(3):
        rows = ~np.isnan(Y[:, j])
        single = _quiet(MixedLMRegressor().fit, df[["Days"]][rows], Y[rows, j],
                        groups=df["Subject"][rows], Z=Z[rows])
        assert est.llf_[j] == pytest.approx(single.llf_, rel=1e-8)
        assert est.intercept_[j] == pytest.approx(single.intercept_, rel=1e-12, abs=1e-6)
        assert est.for_response(j).intercept_ == pytest.approx(single.intercept_, rel=1e-12, abs=1e-6)
    # the deviance does not depend on where y is measured from
    assert est.llf_[2] == pytest.approx(est.llf_[0], rel=1e-10)


@pytest.mark.parametrize("method", ["summary", "conf_int", "r2", "bootstrap", "fitted", "anova"])
def test_single_response_inference_names_for_response(method):
    df, Z = _sleep()
    Y = np.column_stack([df["Reaction"], np.log(df["Reaction"])])
    est = MixedLMRegressor().fit(df[["Days"]], Y, groups=df["Subject"], Z=Z)
    with pytest.raises(TypeError, match="for_response"):
        getattr(est, method)()


# ---- variance fractions with a random slope (variancePartition's calcVarPart) ---------------------

SLOPES = product_reference("many_slopes")
SLOPE_RESPONSES = ["y1", "y2", "y3", "y4"]


@pytest.fixture(scope="module")
def slope_fit():
    return _quiet(lmer, "~ x + (1 + x | donor) + (1 | batch)", product_data("many_slopes"),
                  responses=SLOPE_RESPONSES, reml=False)


def test_random_slopes_agree_with_lme4(slope_fit):
    for j, name in enumerate(SLOPE_RESPONSES):
        r = SLOPES["fits_ml"][name]
        assert slope_fit.n_obs_[j] == r["n_obs"]
        assert slope_fit.llf_[j] >= r["llf"] - 1e-6
        assert slope_fit.llf_[j] == pytest.approx(r["llf"], abs=1e-6)
        np.testing.assert_allclose(slope_fit.fe_params_.loc[name].to_numpy(), r["fe_params"], rtol=1e-4)


def test_variance_fractions_with_a_random_slope_agree_with_variance_partition(slope_fit):
    got = variance_fractions(slope_fit)
    assert list(got.columns) == ["batch", "donor", "donor.x", "x", "Residuals"]
    for name in SLOPE_RESPONSES:
        expected = SLOPES["fits_ml"][name]["fractions"]
        np.testing.assert_allclose(got.loc[name].to_numpy(), [expected[c] for c in got.columns],
                                   rtol=1e-4, atol=1e-6)


def test_variance_fractions_with_slopes_are_the_formula_by_hand(slope_fit):
    # calcVarPart's definition evaluated from the fit's public attributes: each random-effects
    # column's variance (the diagonal of cov_re_), each covariate's population variance of
    # x_j b_j rescaled to the fixed part's variance, sigma^2; fractions of their sum
    data = product_data("many_slopes")
    got = variance_fractions(slope_fit)
    for j, name in enumerate(SLOPE_RESPONSES):
        rows = data[name].notna().to_numpy()
        donor = np.diag(slope_fit.cov_re_["donor"][j])
        batch = slope_fit.cov_re_["batch"][j][0, 0]
        fixed = np.var(data["x"].to_numpy()[rows] * slope_fit.coef_[j, 0])  # one covariate
        parts = np.array([batch, donor[0], donor[1], fixed, slope_fit.scale_[j]])
        np.testing.assert_allclose(got.loc[name].to_numpy(), parts / parts.sum(), rtol=1e-12)
        # the slope's covariance with the intercept does not enter
        assert abs(slope_fit.cov_re_["donor"][j][0, 1]) > 1e-3
