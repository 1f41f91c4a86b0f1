"""Kenward-Roger: the cross-product implementation against pbkrtest and a dense
brute-force oracle.

R's numbers are compared at lme4's own estimates (stored by
``data/reference/inference_tables/make_references.R``), so they test the formulas; our fits
stop at the same optimum or below it (up to 5.6e-6 lower REML criterion), which moves the
covariances themselves by up to 5.6e-4 relative (see ``test_from_our_fit_*``).
"""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mixedlm_sklearn.inference.kenward_roger as kr_module
from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.inference.kenward_roger import (KRInputs, RandomBlock,
                                                     covariance_derivatives, kenward_roger)

from _tables import (dense_kenward_roger, design, extras, fitted, kr_at, kr_at_r, our_covs,
                     r_column, r_covs, r_matrix, r_rows, re_designs, sleepstudy_weighted,
                     supplementary)

#: Supplementary cases without prior weights (pbkrtest mishandles those, see below).
R_CASES = ["orthodont_slopes", "dietox_unbalanced", "grouseticks_crossed",
           "sleepstudy_diagonal", "dietox_q3", "penicillin_crossed"]


def rel_err(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_docstring_examples():
    result = doctest.testmod(kr_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---- pbkrtest at lme4's estimates ---------------------------------------------------------


@pytest.mark.parametrize("case", R_CASES)
def test_unadjusted_covariance_is_lme4_vcov(case):
    """Phi from the cross-products is lme4's vcov at lme4's variance parameters."""
    ref = supplementary(case)
    assert list(fitted(case).fe_params_.index) == r_rows(ref["vcov"])
    assert rel_err(kr_at_r(case).cov_beta, r_matrix(ref["vcov"])) < 1e-9


@pytest.mark.parametrize("case", R_CASES)
def test_adjusted_covariance_matches_pbkrtest_vcovAdj(case):
    ref = supplementary(case)
    assert rel_err(kr_at_r(case).cov_beta_adj, r_matrix(ref["vcov_kr"])) < 1e-9


@pytest.mark.parametrize("case", R_CASES)
def test_coefficient_table_matches_lmerTest_summary_kenward_roger(case):
    """SE from Phi_A, df from Lb_ddf per coefficient, t and p: lmerTest's summary(ddf = "K-R")."""
    ref = supplementary(case)
    coef = ref["coef_kr"]
    beta = r_column(coef, "Estimate")
    table = kr_at_r(case).t_test(np.eye(beta.size), beta)
    assert rel_err(table["std_error"], r_column(coef, "Std. Error")) < 1e-9
    np.testing.assert_allclose(table["df"], r_column(coef, "df"), rtol=1e-9)
    np.testing.assert_allclose(table["t_value"], r_column(coef, "t value"), rtol=1e-9)
    np.testing.assert_allclose(table["p_value"], r_column(coef, "Pr(>|t|)"), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("case", R_CASES)
def test_lb_ddf_of_arbitrary_contrasts(case):
    ref = supplementary(case)["lb_ddf"]
    kr = kr_at_r(case)
    np.testing.assert_allclose(kr.row_ddf(np.asarray(ref["L"])), ref["ddf"], rtol=1e-9)


@pytest.mark.parametrize("case", [c for c in R_CASES if len(supplementary(c)["fixef"]) >= 3])
def test_f_test_matches_KRmodcomp(case):
    """Three random contrast rows tested jointly: F, its scaling, ddf and both p-values."""
    ref = supplementary(case)
    km = ref["krmodcomp"]
    L = np.atleast_2d(np.asarray(km["L"], dtype=float))
    beta = np.array(list(ref["fixef"].values()), dtype=float)
    test = kr_at_r(case).f_test(L, beta)
    tab = km["test"]
    stat, ddf, scaling, p = (r_column(tab, c) for c in ("stat", "ddf", "F.scaling", "p.value"))
    assert test.ndf == int(r_column(tab, "ndf")[0])
    np.testing.assert_allclose([test.statistic, test.statistic_unscaled], stat, rtol=1e-9)
    np.testing.assert_allclose(test.ddf, ddf[0], rtol=1e-9)
    np.testing.assert_allclose(test.scaling, scaling[0], rtol=1e-9)
    np.testing.assert_allclose([test.pvalue, test.pvalue_unscaled], p, rtol=1e-6, atol=1e-300)


def test_shared_reference_orthodont():
    """extras/orthodont_agesex_slopes_reml.json: ``kr_vcov`` and ``kr_coefficients``."""
    ref = extras("orthodont_agesex_slopes_reml")
    kr = kr_at_r("orthodont_slopes")
    assert rel_err(kr.cov_beta_adj, np.asarray(ref["kr_vcov"])) < 1e-9
    coef = ref["kr_coefficients"]
    table = kr.t_test(np.eye(4), r_column(coef, "Estimate"))
    assert rel_err(table["std_error"], r_column(coef, "Std. Error")) < 1e-9
    np.testing.assert_allclose(table["df"], r_column(coef, "df"), rtol=1e-9)
    np.testing.assert_allclose(table["p_value"], r_column(coef, "Pr(>|t|)"), rtol=1e-7)


def test_shared_reference_penicillin_two_crossed_factors():
    """extras/penicillin_crossed_kr.json: df 5.487 of the intercept with two crossed factors."""
    ref = extras("penicillin_crossed_kr")
    kr = kr_at_r("penicillin_crossed")
    assert rel_err(kr.cov_beta_adj, np.atleast_2d(ref["kr_vcov"])) < 1e-9
    coef = ref["kr_coefficients"]
    table = kr.t_test([[1.0]], [coef["Estimate"]])
    np.testing.assert_allclose(table["std_error"], coef["Std. Error"], rtol=1e-9)
    np.testing.assert_allclose(table["df"], coef["df"], rtol=1e-9)
    np.testing.assert_allclose(table["t_value"], coef["t value"], rtol=1e-9)
    np.testing.assert_allclose(table["p_value"], coef["Pr(>|t|)"], rtol=1e-7)


@pytest.mark.parametrize("case, ref_name, agreement", [
    ("orthodont_slopes", "orthodont_agesex_slopes_reml", 1e-3),
    ("penicillin_crossed", "penicillin_crossed_kr", 1e-4),
])
def test_from_our_fit_agrees_as_far_as_the_optima_do(case, ref_name, agreement):
    """From our own fit: Phi is ``cov_fe_`` and Phi_A is pbkrtest's up to the optimiser gap.

    Our REML criterion is at or below lme4's (the likelihood is flat: on Orthodont lme4
    stops 5.6e-6 above our optimum), and the covariances follow the parameters at first
    order, so they differ from R's by up to 5.6e-4 relative.
    """
    est = fitted(case)
    sup = supplementary(case)
    assert -2.0 * est.llf_ <= sup["reml_criterion"] + 1e-8
    kr = kr_at(est, our_covs(est), est.scale_)
    assert rel_err(kr.cov_beta, est.cov_fe_) < 1e-9
    assert rel_err(kr.cov_beta_adj, np.atleast_2d(extras(ref_name)["kr_vcov"])) < agreement


# ---- the dense oracle ---------------------------------------------------------------------


def _random_model(seed, sizes_a, n_b=0, q_a=2, weights=False, n_strata=1, singular=False):
    """Unbalanced random designs: factor a with a q_a-column term, optional crossed factor b."""
    rng = np.random.default_rng(seed)
    n = int(sum(sizes_a))
    a = np.repeat(np.arange(len(sizes_a)), sizes_a)
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x, rng.normal(size=n), rng.integers(0, 2, n)])
    terms = [(a, np.column_stack([np.ones(n), x]) if q_a == 2 else np.ones((n, 1)))]
    A = rng.normal(size=(q_a, q_a))
    covs = [A @ A.T + 0.3 * np.eye(q_a)]
    if singular:
        v = rng.normal(size=q_a)
        covs[0] = np.outer(v, v)  # rank 1: a correlation of +-1
    if n_b:
        b = rng.integers(0, n_b, n)
        terms.append((b, np.column_stack([np.ones(n), X[:, 2]])))
        B = rng.normal(size=(2, 2))
        covs.append(B @ B.T + 0.2 * np.eye(2))
    w = rng.uniform(0.5, 2.0, n) if weights else np.ones(n)
    strata = rng.integers(0, n_strata, n)
    s2 = rng.uniform(0.5, 2.0, n_strata)
    return X, terms, covs, w, strata, s2


DENSE = {
    "one factor, unbalanced": dict(seed=1, sizes_a=[3, 5, 2, 7, 4, 6]),
    "one factor, prior weights": dict(seed=2, sizes_a=[4, 4, 6, 2, 5, 3, 7], weights=True),
    "crossed, slopes in both": dict(seed=3, sizes_a=[5, 6, 4, 8, 3], n_b=4),
    "three residual strata": dict(seed=4, sizes_a=[6, 5, 7, 4, 6, 5], n_strata=3, weights=True),
    "crossed and two strata": dict(seed=5, sizes_a=[5, 7, 6, 4, 6], n_b=3, n_strata=2),
    "singular covariance": dict(seed=6, sizes_a=[4, 6, 5, 7, 5, 6]),
}


@pytest.mark.parametrize("name", list(DENSE))
def test_cross_products_equal_the_dense_n_by_n_computation(name):
    kw = DENSE[name]
    X, terms, covs, w, strata, s2 = _random_model(singular=name == "singular covariance", **kw)
    cp = KRInputs.from_designs(X, terms, weights=w, strata=strata if len(s2) > 1 else None)
    blocks = [RandomBlock(n, c) for n, c in zip(cp.n_levels, covs)]
    got = kenward_roger(cp, blocks, list(s2) if len(s2) > 1 else float(s2[0]))
    residual = s2[strata] / w
    derivs = [np.where(strata == s, 1.0 / w, 0.0) for s in range(len(s2))]
    Phi, Phi_A, P, W = dense_kenward_roger(X, terms, covs, residual, derivs)
    assert rel_err(got.cov_beta, Phi) < 1e-10
    assert rel_err(got.cov_beta_adj, Phi_A) < 1e-9
    assert rel_err(got.P, P) < 1e-9
    assert rel_err(got.W, W) < 1e-8
    assert rel_err(got.cov_beta_adj, got.cov_beta) > 1e-6  # unbalanced: a real adjustment


def test_prior_weights_differ_from_pbkrtest_which_ignores_them():
    """pbkrtest 0.5.2 builds Sigma = Z G Z' + sigma^2 I without the weights, but takes Phi
    from the weighted fit; the mixture reproduces R's numbers exactly. We use the weighted
    model (the one that was fitted), which here -- the same design and weights for every
    subject -- needs no adjustment at all, where pbkrtest reports one of 3%.
    """
    case = "sleepstudy_weighted"
    ref = supplementary(case)
    w = sleepstudy_weighted()["w"].to_numpy()
    ours = kr_at_r(case, weights=w)
    assert rel_err(ours.cov_beta, r_matrix(ref["vcov"])) < 1e-9
    assert rel_err(ours.cov_beta_adj, ours.cov_beta) < 1e-9
    X = design(fitted(case))
    terms = [(lab, Z) for _, lab, Z in re_designs(fitted(case))]
    covs = list(r_covs(ref).values())
    s2 = ref["sigma"] ** 2
    dense = dense_kenward_roger(X, terms, covs, s2 / w, [1.0 / w])
    assert rel_err(ours.cov_beta_adj, dense[1]) < 1e-9
    # pbkrtest's mixture: Sigma without the weights, Phi of the weighted fit
    mixture = dense_kenward_roger(X, terms, covs, np.full(len(w), s2), [np.ones(len(w))],
                                  phi=r_matrix(ref["vcov"]))
    assert rel_err(mixture[1], r_matrix(ref["vcov_kr"])) < 1e-9
    assert rel_err(mixture[1], ours.cov_beta_adj) > 0.03


def test_per_stratum_residual_variances_of_a_fit():
    """residual_groups (nlme's varIdent) on Orthodont: Phi is the fit's cov_fe_, and the
    adjustment is the dense oracle's with one variance parameter per stratum."""
    from mixedlm_sklearn.datasets import load_orthodont
    df = load_orthodont()
    X = np.column_stack([np.ones(len(df)), df["age"]])
    est = MixedLMRegressor().fit(df[["age"]], df["distance"], groups=df["Subject"],
                                 residual_groups=df["Sex"])
    labels = list(est.residual_var_)
    strata = pd.Categorical(df["Sex"], categories=labels)
    cp = KRInputs.from_designs(X, [(df["Subject"], np.ones((len(df), 1)))], strata=strata)
    assert cp.strata == labels
    s2 = [est.residual_var_[k] for k in labels]
    got = kenward_roger(cp, [RandomBlock(cp.n_levels[0], np.atleast_2d(est.cov_re_))], s2)
    assert rel_err(got.cov_beta, est.cov_fe_) < 1e-8
    codes = np.asarray(strata.codes)
    residual = np.asarray(s2)[codes]
    derivs = [(codes == s).astype(float) for s in range(len(labels))]
    dense = dense_kenward_roger(X, [(df["Subject"], np.ones((len(df), 1)))],
                                [np.atleast_2d(est.cov_re_)], residual, derivs)
    assert rel_err(got.cov_beta_adj, dense[1]) < 1e-9
    assert got.param_names == ["cov[0,0]|", "sigma2|Female", "sigma2|Male"]


# ---- properties -----------------------------------------------------------------------------


def _small():
    X, terms, covs, w, strata, s2 = _random_model(seed=11, sizes_a=[4, 6, 3, 5, 7, 2], n_b=3)
    cp = KRInputs.from_designs(X, terms)
    return X, cp, covs, float(s2[0])


def test_linear_reparametrisation_of_the_covariance_changes_nothing():
    """Another basis of the same symmetric matrices (here variances and a correlation-like
    mix) gives the same Phi_A and df: only the span of the derivatives matters."""
    X, cp, covs, s2 = _small()
    base = [RandomBlock(m, c) for m, c in zip(cp.n_levels, covs)]
    E = covariance_derivatives(2)
    mixed = [RandomBlock(cp.n_levels[0], covs[0], derivatives=[E[0] + E[2], E[1] - E[0], 2 * E[2]]),
             base[1]]
    a = kenward_roger(cp, base, s2)
    b = kenward_roger(cp, mixed, s2)
    assert rel_err(b.cov_beta_adj, a.cov_beta_adj) < 1e-10
    L = np.array([[0, 1, -1, 0], [0, 0, 1, 1.0]])
    assert b.ddf(L) == pytest.approx(a.ddf(L), rel=1e-10)


def test_one_row_f_test_is_the_squared_t_test():
    """q = 1: pbkrtest's F scaling is exactly 1 and F = t^2 with the same df."""
    X, cp, covs, s2 = _small()
    kr = kenward_roger(cp, [RandomBlock(m, c) for m, c in zip(cp.n_levels, covs)], s2)
    beta = np.array([1.0, -0.5, 0.25, 2.0])
    l = np.array([[0.0, 1.0, 0.5, -1.0]])
    f = kr.f_test(l, beta)
    t = kr.t_test(l, beta)
    assert f.scaling == pytest.approx(1.0, abs=1e-12)
    assert f.statistic == pytest.approx(t["t_value"][0] ** 2, rel=1e-12)
    assert f.ddf == pytest.approx(t["df"][0], rel=1e-12)
    assert f.pvalue == pytest.approx(t["p_value"][0], rel=1e-10)


def test_t_test_interval_uses_the_kr_df():
    X, cp, covs, s2 = _small()
    kr = kenward_roger(cp, [RandomBlock(m, c) for m, c in zip(cp.n_levels, covs)], s2)
    t = kr.t_test(np.eye(4), np.zeros(4), alpha=0.1, names=list("abcd"))
    from scipy import stats
    half = stats.t.ppf(0.95, t["df"]) * t["std_error"]
    np.testing.assert_allclose(t["ci_upper"], half, rtol=1e-12)
    assert list(t.index) == list("abcd")


def test_dense_and_sparse_ztz_agree():
    X, cp, covs, s2 = _small()
    blocks = [RandomBlock(m, c) for m, c in zip(cp.n_levels, covs)]
    a = kenward_roger(cp, blocks, s2)
    dense = KRInputs(cp.xtx, cp.ztx, [cp.ztz[0].toarray()], cp.n_obs, cp.n_levels, cp.strata)
    b = kenward_roger(dense, blocks, s2)
    assert sp.issparse(cp.ztz[0])
    assert rel_err(b.cov_beta_adj, a.cov_beta_adj) < 1e-13


def test_bad_inputs_are_refused():
    X, cp, covs, s2 = _small()
    blocks = [RandomBlock(m, c) for m, c in zip(cp.n_levels, covs)]
    with pytest.raises(ValueError, match="shapes"):
        kenward_roger(cp, blocks[:1], s2)
    with pytest.raises(ValueError, match="positive"):
        kenward_roger(cp, blocks, -1.0)
    with pytest.raises(ValueError, match="one entry per stratum"):
        kenward_roger(cp, blocks, [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        kenward_roger(KRInputs(cp.xtx, [np.zeros((0, 4))], [np.zeros((0, 0))], cp.n_obs, [],
                               cp.strata), [], s2)
    with pytest.raises(ValueError, match="square"):
        RandomBlock(3, np.ones((2, 3)))
    with pytest.raises(ValueError, match="shape of cov"):
        RandomBlock(3, np.eye(2), derivatives=[np.eye(3)])


def test_inputs_from_the_fits_cross_products():
    """A fit's cross-products (one term, and per stratum) give the same inputs as the
    designs, so the estimator can feed kenward_roger directly."""
    from mixedlm_sklearn.datasets import load_orthodont

    est = fitted("orthodont_slopes")
    a = KRInputs.from_cross_products(est.model_.cross_products)
    b = KRInputs.from_designs(design(est), [(lab, Z) for _, lab, Z in re_designs(est)])
    assert rel_err(a.xtx[0], b.xtx[0]) < 1e-14 and rel_err(a.ztx[0], b.ztx[0]) < 1e-14
    assert rel_err(a.ztz[0].toarray(), b.ztz[0].toarray()) < 1e-14
    df = load_orthodont()
    het = MixedLMRegressor().fit(df[["age"]], df["distance"], groups=df["Subject"],
                                 residual_groups=df["Sex"])
    cp = KRInputs.from_cross_products(het.model_.cross_products, het.model_.strata)
    strata = pd.Categorical(df["Sex"], categories=list(het.model_.strata))
    ref = KRInputs.from_designs(np.column_stack([np.ones(len(df)), df["age"]]),
                                [(df["Subject"], np.ones((len(df), 1)))], strata=strata)
    for s in range(2):
        assert rel_err(cp.ztx[s], ref.ztx[s]) < 1e-14 and cp.n_obs[s] == ref.n_obs[s]
    kr = kenward_roger(cp, [RandomBlock(cp.n_levels[0], np.atleast_2d(het.cov_re_))],
                       [het.residual_var_[k] for k in het.model_.strata])
    assert rel_err(kr.cov_beta, het.cov_fe_) < 1e-8
