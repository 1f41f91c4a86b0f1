"""Many count responses with one design: ``MixedGLMRegressor(family=...).fit(X, Y)`` with ``Y``
of shape (n, k), Poisson and negative binomial (NEBULA's use case).

Each response's fit must be the single fit of that column on its observed rows (random
designs: slopes, crossed factors, missing values, offsets); a response that cannot be fitted
is reported and loses none of the others; the fits agree with lme4's ``glmer`` (Poisson) and
glmmTMB's ``nbinom2`` (negative binomial) per response
(``tests/data/reference/product/many_counts.json``, made by ``make_many_counts_refs.R``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from _reference import product_data, product_reference
from scipy import stats

from mixedlm_sklearn import MixedGLMClassifier, MixedGLMRegressor, glmer, glmer_nb
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


def _case(seed: int, simple: bool = False) -> dict:
    """A random count design: 4-9 groups of 3-8 rows, maybe a random slope, maybe a crossed
    factor (neither when ``simple``), maybe an offset, 2-3 responses with their own rates,
    dispersions and missing rows."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(4, 10))
    g = np.repeat(np.arange(m), rng.integers(3, 9, m))
    n = g.size
    x = np.round(rng.standard_normal(n), 3)
    h = rng.integers(0, 3, n)
    slope, crossed = bool(rng.integers(2)), bool(rng.integers(2))
    if simple:
        slope = crossed = False
    offset = np.log(rng.uniform(0.5, 2.0, n)) if rng.integers(2) else None
    k = 2 if simple else int(rng.integers(2, 4))
    Y = np.empty((n, k))
    for j in range(k):
        b = rng.standard_normal((m, 2)) * rng.uniform(0.1, 0.8, 2)
        c = rng.standard_normal(3) * rng.uniform(0.0, 0.5)
        eta = rng.uniform(0.0, 1.5) + 0.3 * x + b[g, 0] + slope * b[g, 1] * x + crossed * c[h]
        mu = np.exp(eta + (0.0 if offset is None else offset))
        theta = rng.uniform(1.0, 10.0)
        Y[:, j] = rng.negative_binomial(theta, theta / (theta + mu))
    Y[rng.random((n, k)) < rng.choice([0.0, 0.1])] = np.nan
    return dict(g=g, h=h, x=x, Y=Y, slope=slope, crossed=crossed, offset=offset)


def _arguments(case: dict, rows: np.ndarray) -> tuple:
    x = case["x"][rows]
    Zg = np.column_stack([np.ones(x.size), x]) if case["slope"] else None
    if case["crossed"]:
        groups = pd.DataFrame({"g": case["g"][rows], "h": case["h"][rows]})
        Z = {"g": Zg} if Zg is not None else None
    else:
        groups, Z = case["g"][rows], Zg
    offset = None if case["offset"] is None else case["offset"][rows]
    return x[:, None], groups, Z, offset


def _assert_single(est, j, single, family):
    assert not est.failed_[j], est.fit_messages_.iloc[j]
    assert est.llf_[j] == pytest.approx(single.llf_, rel=1e-8)
    np.testing.assert_allclose(est.fe_params_.iloc[j].to_numpy(), single.fe_params_.to_numpy(),
                               rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(est.bse_.iloc[j].to_numpy(), single.bse_.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(est.theta_[j], single.theta_, rtol=1e-8, atol=1e-10)
    assert est.converged_[j] == single.converged_
    assert est.singular_[j] == single.singular_
    assert est.aic_[j] == pytest.approx(single.aic_, rel=1e-8)
    assert est.deviance_[j] == pytest.approx(single.deviance_, rel=1e-8)
    assert est.df_model_ == single.df_model_
    if family == "negative_binomial":
        assert est.family_params_["theta"][j] == pytest.approx(single.family_params_["theta"], rel=1e-8)
    else:
        assert est.family_params_ == {} == single.family_params_


# The negative binomial's fits cost ~30 Poisson fits each (theta is profiled): its cases are
# random intercepts only (its slopes and crossed factors are the Poisson cases' code path).
@pytest.mark.parametrize("family, seed", [("poisson", s) for s in range(6)]
                         + [("negative_binomial", s) for s in (1, 4)])
def test_each_response_is_the_single_fit_of_its_column(family, seed):
    case = _case(1000 * seed + 7, simple=family == "negative_binomial")
    Y = case["Y"]
    X, groups, Z, offset = _arguments(case, np.ones(Y.shape[0], dtype=bool))
    est = _quiet(MixedGLMRegressor(family=family).fit, X, Y, groups=groups, Z=Z, offset=offset)
    assert est.llf_.shape == (Y.shape[1],) and est.coef_.shape == (Y.shape[1], 1)
    for j in range(Y.shape[1]):
        rows = ~np.isnan(Y[:, j])
        Xj, groups_j, Zj, offset_j = _arguments(case, rows)
        try:
            single = _quiet(MixedGLMRegressor(family=family).fit, Xj, Y[rows, j], groups=groups_j,
                            Z=Zj, offset=offset_j)
        except ValueError:
            assert est.failed_[j], est.fit_messages_.iloc[j]
            continue
        _assert_single(est, j, single, family)
        assert est.n_obs_[j] == rows.sum()


@pytest.fixture(scope="module")
def with_failures():
    """Four Poisson responses on 12 groups of 5: a good one, one with missing values, one that is
    0 everywhere, one with a negative count, one observed on a single row, and another good one."""
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(12), 5)
    x = rng.standard_normal(60)
    Y = rng.poisson(np.exp(0.8 + 0.4 * x[:, None] + 0.6 * rng.standard_normal((12, 6))[g])).astype(float)
    Y[rng.random(60) < 0.2, 1] = np.nan
    Y[:, 2] = 0.0
    Y[7, 3] = -1.0
    Y[1:, 4] = np.nan
    return x[:, None], Y, g


def test_a_failing_response_does_not_lose_the_others(with_failures):
    X, Y, g = with_failures
    with pytest.warns(UserWarning, match="3 of 6 responses could not be fitted"):
        est = MixedGLMRegressor(family="poisson").fit(X, Y, groups=g)
    assert est.failed_.tolist() == [False, False, True, True, True, False]
    assert "every count is 0" in est.fit_messages_.iloc[2]
    assert "non-negative" in est.fit_messages_.iloc[3] or "negative" in est.fit_messages_.iloc[3]
    assert "at least 2 samples" in est.fit_messages_.iloc[4]
    assert np.isnan(est.coef_[2:5]).all() and np.isnan(est.llf_[2:5]).all()
    for j in (0, 1, 5):
        rows = ~np.isnan(Y[:, j])
        single = _quiet(MixedGLMRegressor(family="poisson").fit, X[rows], Y[rows, j], groups=g[rows])
        _assert_single(est, j, single, "poisson")
    with pytest.raises(ValueError, match="has no fit"):
        est.for_response(2)
    # the single fit refuses the negative count as the multi-output fit reports it
    with pytest.raises(ValueError) as err:
        MixedGLMRegressor(family="poisson").fit(X, Y[:, 3], groups=g)
    assert str(err.value) == est.fit_messages_.iloc[3]


@pytest.mark.parametrize("family", ["poisson", "negative_binomial"])
def test_predict_and_for_response_are_the_single_fits(family, with_failures):
    X, Y, g = with_failures
    Y = Y[:, [0, 1]]  # the second with missing values
    est = _quiet(MixedGLMRegressor(family=family).fit, X, Y, groups=g)
    new_g = np.r_[g[:4], 99]  # a group not seen in fit: the population level
    new_x = np.r_[X[:4, 0], 0.3][:, None]
    pred = est.predict(new_x, groups=new_g)
    link = est.predict(new_x, groups=new_g, type="link")
    assert pred.shape == (5, 2)
    np.testing.assert_allclose(pred, np.exp(link), rtol=1e-14)
    for j in range(2):
        rows = ~np.isnan(Y[:, j])
        single = _quiet(MixedGLMRegressor(family=family).fit, X[rows], Y[rows, j], groups=g[rows])
        np.testing.assert_allclose(pred[:, j], single.predict(new_x, groups=new_g), rtol=1e-8)
        one = est.for_response(j)
        assert one.llf_ == pytest.approx(single.llf_, rel=1e-10)
        np.testing.assert_allclose(one.bse_, single.bse_, rtol=1e-8)
        np.testing.assert_allclose(one.cov_re_, single.cov_re_, rtol=1e-8)
        np.testing.assert_allclose(one.random_effects_.to_numpy(), single.random_effects_.to_numpy(),
                                   rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(est.random_effects_[j][np.isin(np.arange(12), g[rows])],
                                   single.random_effects_.to_numpy(), rtol=1e-6, atol=1e-9)
        assert one.family_params_ == pytest.approx(single.family_params_, rel=1e-8)
    assert est.for_response(-1).llf_ == pytest.approx(est.llf_[1], rel=1e-10)
    assert est.for_response("y1").llf_ == pytest.approx(est.llf_[1], rel=1e-10)
    with pytest.raises(ValueError, match="marginal"):
        est.predict(new_x, groups=new_g, marginal=True)
    with pytest.raises(ValueError, match="for_response"):
        est.score(X, Y, groups=g)


def test_progress_reports_every_block():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(8), 4)
    Y = rng.poisson(2.0, (32, 70)).astype(float)
    seen = []
    _quiet(MixedGLMRegressor(family="poisson", max_iter=50).fit, np.zeros((32, 0)), Y, groups=g,
           progress=lambda done, total: seen.append((done, total)))
    assert seen == [(64, 70), (70, 70)]
    with pytest.raises(ValueError, match="progress"):
        MixedGLMRegressor().fit(np.zeros((32, 0)), Y[:, 0], groups=g, progress=print)
    with pytest.raises(TypeError, match="progress must be a callable"):
        MixedGLMRegressor().fit(np.zeros((32, 0)), Y, groups=g, progress=3)


def test_what_is_not_counts_is_refused_clearly():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(6), 4)
    X = rng.standard_normal((24, 1))
    Y = rng.integers(0, 2, (24, 2)).astype(float)
    with pytest.raises(ValueError, match="MixedGLMClassifier fits one binary response"):
        MixedGLMClassifier().fit(X, Y, groups=g)
    with pytest.raises(ValueError, match="count families"):
        MixedGLMRegressor(family="binomial").fit(X, Y, groups=g)
    with pytest.raises(ValueError, match="infinite"):
        MixedGLMRegressor().fit(X, np.where(Y > 0, np.inf, Y), groups=g)
    est = MixedGLMRegressor()
    with pytest.raises(ValueError, match="rows"):
        est.fit(X, Y[:10], groups=g)
    assert not hasattr(est, "many_")
    with pytest.raises(ValueError, match="several responses"):
        _quiet(MixedGLMRegressor().fit, X, Y[:, 0], groups=g).for_response(0)


def test_a_single_fit_after_a_multi_output_fit_keeps_nothing_of_it(with_failures):
    X, Y, g = with_failures
    est = _quiet(MixedGLMRegressor().fit, X, Y[:, [0, 5]], groups=g)
    est.fit(X, Y[:, 0], groups=g)
    assert not hasattr(est, "many_") and np.ndim(est.llf_) == 0
    assert est.predict(X[:3], groups=g[:3]).shape == (3,)


# ---- agreement with lme4 (Poisson) and glmmTMB (negative binomial) ------------------------------

REF = product_reference("many_counts")
RESPONSES = ["c01", "c02", "c03", "c04", "c05"]


@pytest.fixture(scope="module")
def poisson_fit():
    return _quiet(glmer, "~ x + (1 | donor)", product_data("many_counts"), family="poisson",
                  responses=RESPONSES)


@pytest.fixture(scope="module")
def nb_fit():
    return _quiet(glmer_nb, "~ x + (1 | donor)", product_data("many_counts"), responses=RESPONSES)


def test_poisson_responses_agree_with_glmer(poisson_fit):
    est = poisson_fit
    assert est.converged_.all()
    for j, name in enumerate(RESPONSES):
        r = REF["poisson"][name]
        assert est.n_obs_[j] == r["n_obs"]
        assert est.llf_[j] >= r["llf"] - 1e-6
        assert est.llf_[j] == pytest.approx(r["llf"], abs=1e-5)
        np.testing.assert_allclose(est.fe_params_.loc[name].to_numpy(), r["fe_params"], rtol=1e-4)
        np.testing.assert_allclose(est.bse_.loc[name].to_numpy(), r["bse_fe"], rtol=1e-4)
        np.testing.assert_allclose(est.theta_[j], r["theta"], rtol=1e-4)
        assert np.sqrt(est.cov_re_[j, 0, 0]) == pytest.approx(r["sd_re"], rel=1e-4)


def test_negative_binomial_responses_agree_with_glmmtmb(nb_fit):
    est = nb_fit
    assert est.converged_.all()
    for j, name in enumerate(RESPONSES):
        r = REF["negative_binomial"][name]
        assert est.n_obs_[j] == r["n_obs"]
        assert est.llf_[j] >= r["llf"] - 1e-6
        assert est.llf_[j] == pytest.approx(r["llf"], abs=1e-5)
        np.testing.assert_allclose(est.fe_params_.loc[name].to_numpy(), r["fe_params"], rtol=1e-4)
        np.testing.assert_allclose(est.bse_.loc[name].to_numpy(), r["bse_fe"], rtol=1e-3)
        assert np.sqrt(est.cov_re_[j, 0, 0]) == pytest.approx(r["sd_re"], rel=1e-4)
        assert est.family_params_["theta"][j] == pytest.approx(r["theta"], rel=1e-4)
        # glmer.nb's Laplace approximation (Fisher weights in log|M|) is another objective
        assert abs(est.llf_[j] - r["glmer_nb"]["llf"]) > 1e-3


def test_glmer_responses_is_the_array_fit(poisson_fit):
    data = product_data("many_counts")
    Y = data[RESPONSES]
    groups = data["donor"]
    est = _quiet(MixedGLMRegressor(family="poisson").fit, data[["x"]], Y, groups=groups)
    np.testing.assert_array_equal(est.llf_, poisson_fit.llf_)
    np.testing.assert_array_equal(est.coef_, poisson_fit.coef_)
    assert list(poisson_fit.responses_) == RESPONSES
    with pytest.raises(ValueError, match="one-sided"):
        glmer("c01 ~ x + (1 | donor)", data, family="poisson", responses=RESPONSES)
    with pytest.raises(ValueError, match="progress"):
        glmer("c01 ~ x + (1 | donor)", data, family="poisson", progress=print)


def test_fixed_effects_table_gives_wald_z_and_bh(poisson_fit, nb_fit):
    for est, key in ((poisson_fit, "poisson"), (nb_fit, "negative_binomial")):
        table = fixed_effects_table(est, term="x").loc["x"]
        assert list(table.columns) == ["estimate", "std_error", "z", "p", "p_bh"]
        ref = REF[key]
        z = np.array([ref[r]["fe_params"][1] / ref[r]["bse_fe"][1] for r in RESPONSES])
        np.testing.assert_allclose(table.loc[RESPONSES, "z"].to_numpy(), z, rtol=1e-3)
        p = 2.0 * stats.norm.sf(np.abs(table["z"].to_numpy()))
        np.testing.assert_allclose(table["p"].to_numpy(), p, rtol=1e-12)
        np.testing.assert_allclose(table["p_bh"].to_numpy(), p_adjust_bh(p), rtol=1e-12)
        contrast = contrast_table(est, {"x": 1.0})
        np.testing.assert_allclose(contrast["p_bh"].to_numpy(), table["p_bh"].to_numpy(), rtol=1e-12)
        with pytest.raises(ValueError, match="Wald z"):
            fixed_effects_table(est, ddf="satterthwaite")


def test_variance_fractions_of_counts_are_calcvarpart_by_hand(poisson_fit, nb_fit):
    # variancePartition's calcVarPart of a glmerMod: the donor variance, the covariate's
    # population variance of x b1, and the distribution's variance on the link scale at the
    # intercept, log(1 + 1/exp(b0)) (Poisson) or log(1 + 1/exp(b0) + 1/theta) (NB2)
    data = product_data("many_counts")
    for est in (poisson_fit, nb_fit):
        got = variance_fractions(est)
        assert list(got.columns) == ["donor", "x", "Residuals"]
        for j, name in enumerate(RESPONSES):
            rows = data[name].notna().to_numpy()
            b0, b1 = est.fe_params_.loc[name]
            extra = 1.0 / est.family_params_["theta"][j] if est.family == "negative_binomial" else 0.0
            parts = np.array([est.cov_re_[j, 0, 0], np.var(data["x"].to_numpy()[rows] * b1),
                              np.log(1.0 + 1.0 / np.exp(b0) + extra)])
            np.testing.assert_allclose(got.loc[name].to_numpy(), parts / parts.sum(), rtol=1e-12)
    no_intercept = _quiet(MixedGLMRegressor(fit_intercept=False).fit, data[["x"]],
                          data[RESPONSES[:2]], groups=data["donor"])
    with pytest.raises(ValueError, match="intercept"):
        variance_fractions(no_intercept)


def test_scikit_learn_sees_a_multi_output_regressor():
    from sklearn.utils.estimator_checks import check_supervised_y_2d

    assert MixedGLMRegressor().__sklearn_tags__().target_tags.multi_output
    assert not MixedGLMClassifier().__sklearn_tags__().target_tags.multi_output
    # y of shape (n, 1) is one response with a response axis: predict().ravel() is the 1-D fit's
    _quiet(check_supervised_y_2d, "MixedGLMRegressor", MixedGLMRegressor())
