"""The solver for several random-effects terms (``mixedlm_sklearn._crossed``).

Against lme4 (crossed, nested, InstEval and the single-factor fits), against a dense
n x n likelihood written out independently here, and for properties: analytic gradient
vs. central differences, invariance to the caller's order of terms, singular fits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _reference import CROSSED_CASES, load_case, single_factor_arrays
from scipy import linalg

from mixedlm_sklearn._crossed import build_crossed_model, crossed_fitted, fit_crossed


def _crossed_case(name):
    frame, answers = load_case(name)
    X = frame[[c for c in frame.columns if c.startswith("X_")]].to_numpy(float)
    terms, k = [], 1
    while f"g{k}" in frame.columns:
        codes = pd.factorize(frame[f"g{k}"], sort=True)[0]
        Z = frame[[c for c in frame.columns if c.startswith(f"Z{k}_")]].to_numpy(float)
        terms.append((codes, Z, False))
        k += 1
    return X, frame["y"].to_numpy(float), terms, answers


# ---- lme4 references -----------------------------------------------------------------------


@pytest.mark.parametrize("name", CROSSED_CASES)
def test_matches_lme4(name):
    X, y, terms, ref = _crossed_case(name)
    fit = fit_crossed(build_crossed_model(X, y, terms), reml=True)
    assert fit.converged and not fit.singular
    # Never worse than lme4's optimum (higher only where lme4 stopped early).
    assert fit.llf >= ref["llf"] - 1e-6
    assert fit.llf - ref["llf"] < 1e-4
    bse = np.atleast_1d(ref["bse_fe"])
    np.testing.assert_array_less(np.abs(fit.beta - np.atleast_1d(ref["fe_params"])), 1e-3 * bse)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov_beta)), bse, rtol=1e-3)
    assert fit.scale == pytest.approx(ref["scale"], rel=1e-3)
    # The JSON gives each term's variance under its "vc_key" (lme4's VarCorr name).
    groups = [t["group"] for t in ref["terms"]]
    for t in ref["terms"]:
        got = fit.cov_re[groups.index(t["vc_key"])]
        np.testing.assert_allclose(got, np.atleast_2d(t["cov_re"]), rtol=1e-3)
    fitted = crossed_fitted(X[:50], [(c[:50], Z[:50]) for c, Z, _ in terms], fit)
    np.testing.assert_allclose(fitted, ref["fitted_head"], rtol=1e-4)
    assert np.isclose(fit.deviance, -2.0 * fit.llf)


@pytest.mark.parametrize(
    "name", ["sleepstudy_slopes_reml", "sleepstudy_slopes_ml", "dyestuff_reml", "orthodont_slopes_ml"]
)
def test_single_term_matches_lme4(name):
    ref = single_factor_arrays(name)
    codes, labels = pd.factorize(ref["groups"], sort=True)
    model = build_crossed_model(ref["X"], ref["y"], [(codes, ref["Z"], False)])
    fit = fit_crossed(model, reml=name.endswith("reml"))
    assert fit.llf >= ref["llf"] - 1e-6
    np.testing.assert_allclose(fit.beta, ref["fe_params"], atol=1e-3 * ref["bse_fe"].min())
    np.testing.assert_allclose(fit.cov_re[0], ref["cov_re"], rtol=1e-3, atol=1e-6)
    # lme4 lists levels in factor order, not necessarily sorted.
    at = ref["ranef"].index.get_indexer(labels)
    np.testing.assert_allclose(fit.blups[0], ref["ranef"].to_numpy()[at], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fit.condvar[0], ref["ranef_condvar"][at], rtol=1e-3, atol=1e-8)
    fitted = crossed_fitted(ref["X"], [(codes, ref["Z"])], fit)
    np.testing.assert_allclose(fitted, ref["fitted"], rtol=1e-4)


def test_sleepstudy_llf():
    ref = single_factor_arrays("sleepstudy_slopes_reml")
    codes = pd.factorize(ref["groups"], sort=True)[0]
    fit = fit_crossed(build_crossed_model(ref["X"], ref["y"], [(codes, ref["Z"], False)]))
    assert fit.llf == pytest.approx(-871.814135979246, abs=1e-6)


def test_singular_single_term_lands_on_zero():
    ref = single_factor_arrays("dyestuff2_singular_reml")
    codes = pd.factorize(ref["groups"], sort=True)[0]
    fit = fit_crossed(build_crossed_model(ref["X"], ref["y"], [(codes, ref["Z"], False)]))
    assert fit.theta[0] == 0.0 and fit.singular
    assert fit.llf >= ref["llf"] - 1e-6
    np.testing.assert_array_equal(fit.blups[0], 0.0)
    np.testing.assert_array_equal(fit.condvar[0], 0.0)


def test_start_on_the_bound_is_left():
    # The deviance is even in a scalar term's theta: its gradient is 0 at theta = 0 although
    # 0 is a maximum here. The fit must probe off the bound rather than stop there.
    ref = single_factor_arrays("dyestuff_reml")
    codes = pd.factorize(ref["groups"], sort=True)[0]
    model = build_crossed_model(ref["X"], ref["y"], [(codes, ref["Z"], False)])
    assert model.deviance_and_gradient(np.array([0.0]))[1][0] == 0.0
    fit = fit_crossed(model, theta0=np.array([0.0]))
    assert fit.llf >= ref["llf"] - 1e-6 and not fit.singular


# ---- dense oracle ----------------------------------------------------------------------------


def _design(seed, n=240, sizes=(30, 12, 5), qs=(2, 2, 1), diagonal=(False, True, False), weights=False):
    """Random crossed design with vector terms; levels drawn independently per term."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.standard_normal(n), rng.uniform(0, 3, n)])
    y = X @ [1.0, 0.5, -0.3] + rng.standard_normal(n)
    terms = []
    for m, q, diag in zip(sizes, qs, diagonal):
        codes = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
        Z = np.column_stack([np.ones(n), rng.standard_normal((n, q - 1))])
        b = rng.standard_normal((m, q)) * 0.7
        y += np.einsum("ia,ia->i", Z, b[codes])
        terms.append((codes, Z, diag))
    w = rng.uniform(0.5, 2.0, n) if weights else None
    return X, y, terms, w


def _dense_Zlam(terms, theta):
    """Dense ``Z`` and ``Lambda`` (block diagonal) written out from the definitions."""
    blocks, lams, start = [], [], 0
    for codes, Z, diag in terms:
        m, q = codes.max() + 1, Z.shape[1]
        Zk = np.zeros((len(codes), m * q))
        for a in range(q):
            Zk[np.arange(len(codes)), codes * q + a] = Z[:, a]
        L = np.zeros((q, q))
        idx = np.tril_indices(q) if not diag else (np.arange(q), np.arange(q))
        order = np.lexsort((idx[0], idx[1])) if not diag else np.arange(q)
        k = len(order)
        L[idx[0][order], idx[1][order]] = theta[start : start + k]
        start += k
        blocks.append(Zk)
        lams.append(np.kron(np.eye(m), L))
    return np.hstack(blocks), linalg.block_diag(*lams)


def _dense_deviance(X, y, terms, theta, reml, w=None):
    """-2 log L (ML) or lme4's REML criterion at the GLS beta and the optimal scale."""
    n, p = X.shape
    Z, Lam = _dense_Zlam(terms, theta)
    V = Z @ Lam @ Lam.T @ Z.T + np.diag(1.0 / (np.ones(n) if w is None else w))  # / scale
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    res = y - X @ beta
    dof = n - p if reml else n
    scale = res @ Vi @ res / dof
    dev = n * np.log(2 * np.pi * scale) + np.linalg.slogdet(V)[1] + dof
    if reml:
        dev += np.linalg.slogdet(X.T @ Vi @ X / scale)[1] - p * np.log(2 * np.pi)
    return dev, beta, scale, Z, Lam


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("weights", [False, True])
def test_deviance_matches_dense_likelihood(reml, weights):
    X, y, terms, w = _design(1, weights=weights)
    model = build_crossed_model(X, y, terms, weights=w)
    rng = np.random.default_rng(2)
    for _ in range(3):
        theta = rng.uniform(0.1, 1.5, model.n_theta) * np.where(model.lower_bounds() == 0, 1, 0.3)
        expected = _dense_deviance(X, y, terms, theta, reml, w)[0]
        assert model.deviance(theta, reml) == pytest.approx(expected, rel=1e-10, abs=1e-8)


@pytest.mark.parametrize("reml", [True, False])
def test_fit_results_match_dense_formulas(reml):
    X, y, terms, w = _design(3, weights=True)
    fit = fit_crossed(build_crossed_model(X, y, terms, weights=w), reml=reml)
    assert fit.converged
    dev, beta, scale, Z, Lam = _dense_deviance(X, y, terms, fit.theta, reml, w)
    assert fit.deviance == pytest.approx(dev, rel=1e-10)
    np.testing.assert_allclose(fit.beta, beta, rtol=1e-8, atol=1e-10)
    assert fit.scale == pytest.approx(scale, rel=1e-8)
    # PLS with weights W: M = L'Z'WZL + I, BLUPs L M^{-1} L'Z'W(y - X beta),
    # conditional covariance scale * L M^{-1} L'.
    ZL = Z @ Lam
    M = ZL.T @ (w[:, None] * ZL) + np.eye(ZL.shape[1])
    b = Lam @ np.linalg.solve(M, ZL.T @ (w * (y - X @ beta)))
    cond = scale * Lam @ np.linalg.solve(M, Lam.T)
    start = 0
    for k, (codes, Zk, _) in enumerate(terms):
        m, q = codes.max() + 1, Zk.shape[1]
        sl = slice(start, start + m * q)
        np.testing.assert_allclose(fit.blups[k], b[sl].reshape(m, q), rtol=1e-7, atol=1e-10)
        blocks = np.array([cond[sl, sl][i * q : (i + 1) * q, i * q : (i + 1) * q] for i in range(m)])
        np.testing.assert_allclose(fit.condvar[k], blocks, rtol=1e-7, atol=1e-12)
        start += m * q
    fitted = X @ beta + Z @ b
    np.testing.assert_allclose(crossed_fitted(X, terms, fit), fitted, rtol=1e-8)


# ---- properties ------------------------------------------------------------------------------


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("case", ["vector", "scalar"])
def test_gradient_matches_central_differences(reml, case):
    if case == "vector":
        X, y, terms, w = _design(4, weights=True)
    else:
        X, y, terms, _ = _crossed_case("penicillin_crossed_reml")
        w = None
    model = build_crossed_model(X, y, terms, weights=w)
    rng = np.random.default_rng(5)
    theta = rng.uniform(0.2, 1.2, model.n_theta) * np.where(model.lower_bounds() == 0, 1, 0.4)
    _, grad = model.deviance_and_gradient(theta, reml)
    h = 1e-6
    fd = [
        (model.deviance(theta + h * e, reml) - model.deviance(theta - h * e, reml)) / (2 * h)
        for e in np.eye(theta.size)
    ]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5)


def test_gradient_with_a_term_at_zero():
    X, y, terms, _ = _design(6)
    model = build_crossed_model(X, y, terms)
    theta = np.full(model.n_theta, 0.4)
    theta[-1] = 0.0  # the scalar third term switched off
    _, grad = model.deviance_and_gradient(theta)
    assert grad[-1] == 0.0
    h = 1e-6
    e = np.zeros(theta.size)
    e[0] = h
    fd0 = (model.deviance(theta + e) - model.deviance(theta - e)) / (2 * h)
    assert grad[0] == pytest.approx(fd0, rel=1e-5)


def test_order_of_terms_does_not_matter():
    X, y, terms, w = _design(7, weights=True)
    base = fit_crossed(build_crossed_model(X, y, terms, weights=w))
    perm = [2, 0, 1]
    other = fit_crossed(build_crossed_model(X, y, [terms[k] for k in perm], weights=w))
    assert other.llf == pytest.approx(base.llf, abs=1e-8)
    np.testing.assert_allclose(other.beta, base.beta, rtol=1e-6)
    for j, k in enumerate(perm):
        np.testing.assert_allclose(other.cov_re[j], base.cov_re[k], rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(other.blups[j], base.blups[k], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(other.condvar[j], base.condvar[k], rtol=1e-4, atol=1e-8)
    # theta follows the caller's order: the permuted model at the permuted theta agrees.
    sizes = [3, 2, 1]  # theta entries per term: full 2x2, diagonal 2x2, scalar
    pieces = np.split(base.theta, np.cumsum(sizes)[:-1])
    permuted = np.concatenate([pieces[k] for k in perm])
    model = build_crossed_model(X, y, [terms[k] for k in perm], weights=w)
    assert model.deviance(permuted) == pytest.approx(base.deviance, rel=1e-12)


def test_singular_crossed_fit_lands_on_zero():
    # A crossed factor that adds nothing: its variance goes to exactly 0 and the fit is
    # the fit without it.
    rng = np.random.default_rng(8)
    n = 300
    g1, g2 = rng.integers(0, 40, n), rng.integers(0, 8, n)
    y = 2.0 + rng.standard_normal(40)[g1] + rng.standard_normal(n)
    g2_effect = np.bincount(g2, y - y.mean(), 8) / np.bincount(g2, minlength=8)
    y -= g2_effect[g2]  # remove every trace of g2 from the data
    X, one = np.ones((n, 1)), np.ones((n, 1))
    fit = fit_crossed(build_crossed_model(X, y, [(g1, one, False), (g2, one, False)]))
    alone = fit_crossed(build_crossed_model(X, y, [(g1, one, False)]))
    assert fit.theta[1] == 0.0 and fit.singular
    assert fit.llf == pytest.approx(alone.llf, abs=1e-7)
    np.testing.assert_array_equal(fit.blups[1], 0.0)
