"""Precision where the random effects absorb nearly all of the data.

A random intercept whose standard deviation is 10^2 to 10^6 times the residual one, and
random slopes on uncentred ``age`` and ``age^2``: formed from cross-products, the deviance
subtracts nearly equal large numbers. The fit is finished on data moved by the conditional
modes (``_deviance.Shift``) and profiles and numerical derivatives run in the whitened
basis (``_basis.Conditioned``). Checked against the log-likelihood computed with 60
significant digits (``decimal``), and against the shifted and whitened forms' equality
with the plain one where the plain one is accurate.
"""

from __future__ import annotations

import warnings
from decimal import Decimal, getcontext

import numpy as np
import pytest
from scipy import optimize

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn._basis import Conditioned
from mixedlm_sklearn._crossprod import Origin, cross_products
from mixedlm_sklearn._design import Design
from mixedlm_sklearn._deviance import Deviance
from mixedlm_sklearn._model import shifted_deviance
from mixedlm_sklearn._terms import Term, Terms

_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494")


def _icc_data(residual_sd: float, seed: int):
    """y = b[g] + x + residual_sd * e: 20 groups of 10, group SD 1."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(20), 10)
    x = rng.standard_normal(200)
    y = rng.standard_normal(20)[g] + x + residual_sd * rng.standard_normal(200)
    return x, y, g


def _exact_loglik(x, y, g, theta: float, reml: bool) -> float:
    """Profiled log-likelihood of ``y ~ x + (1 | g)`` (balanced groups of 10) with 60 digits.

    V = sigma^2 (I + theta^2 J) per group, whose inverse is I - c J with
    c = theta^2 / (1 + 10 theta^2); beta by GLS, sigma^2 profiled out.
    """
    getcontext().prec = 60
    n, m = len(y), int(g.max()) + 1
    t2 = Decimal(float(theta)) ** 2
    c = t2 / (1 + 10 * t2)
    cols = [[Decimal(1)] * n, [Decimal(float(v)) for v in x], [Decimal(float(v)) for v in y]]
    rows = [np.flatnonzero(g == k) for k in range(m)]

    def dot(a, b):
        total = Decimal(0)
        for idx in rows:
            sa, sb = sum(a[i] for i in idx), sum(b[i] for i in idx)
            total += sum(a[i] * b[i] for i in idx) - c * sa * sb
        return total

    F = [[dot(cols[i], cols[j]) for j in range(3)] for i in range(3)]
    det = F[0][0] * F[1][1] - F[0][1] ** 2
    b0 = (F[1][1] * F[0][2] - F[0][1] * F[1][2]) / det
    b1 = (F[0][0] * F[1][2] - F[0][1] * F[0][2]) / det
    r2 = F[2][2] - b0 * F[0][2] - b1 * F[1][2]
    dof = Decimal(n - 2 if reml else n)
    dev = m * (1 + 10 * t2).ln() + dof * (1 + (2 * _PI * r2 / dof).ln())
    if reml:
        dev += det.ln()
    return float(-dev / 2)


@pytest.mark.parametrize("residual_sd, seed", [(2e-4, 0), (2e-4, 1), (1e-3, 2), (1e-6, 3)])
@pytest.mark.parametrize("reml", [True, False])
def test_very_high_intra_class_correlation_converges_to_the_maximum(residual_sd, seed, reml):
    x, y, g = _icc_data(residual_sd, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = MixedLMRegressor(reml=reml).fit(x[:, None], y, groups=g)
    assert est.converged_ and not caught, [str(w.message) for w in caught]
    theta = float(est.theta_[0])
    # the reported log-likelihood is the exact one at the reported theta ...
    assert est.llf_ == pytest.approx(_exact_loglik(x, y, g, theta, reml), abs=1e-6)
    # ... and no theta does better (the exact likelihood maximised over log theta)
    res = optimize.minimize_scalar(lambda lt: -_exact_loglik(x, y, g, np.exp(lt), reml),
                                   bracket=(np.log(theta) - 0.5, np.log(theta) + 0.5),
                                   options={"xtol": 1e-10})
    assert est.llf_ >= -res.fun - 1e-6


def test_residual_sd_of_1e6_of_the_group_effects_beats_the_lme4_port():
    """mixedlm 1.3 (the lme4 port; lme4 itself fails to converge here) reaches REML
    2164.7956 at theta 793857 and ML 2181.0923 at theta 763550 on these data."""
    x, y, g = _icc_data(1e-6, 3)
    reml = MixedLMRegressor().fit(x[:, None], y, groups=g)
    ml = MixedLMRegressor(reml=False).fit(x[:, None], y, groups=g)
    assert reml.llf_ > 2164.7956 and ml.llf_ > 2181.0923
    assert _exact_loglik(x, y, g, 793857.34622297, True) < reml.llf_ + 1e-9


@pytest.mark.parametrize("measured_from_origin", [False, True])
def test_shifted_and_whitened_deviances_equal_the_plain_one_where_it_is_accurate(measured_from_origin):
    """Also with the columns measured from an origin (``_crossprod.Origin``): the same
    deviance, gradient and solution as the plain cross-products of the columns as given."""
    rng = np.random.default_rng(0)
    n = 300
    a, b, s = rng.integers(0, 15, n), rng.integers(0, 7, n), rng.integers(0, 2, n)
    x = rng.standard_normal(n)
    X = np.column_stack([np.ones(n), x])
    Za = np.column_stack([np.ones(n), x])
    y = X @ [1, 2] + 3 * rng.standard_normal(15)[a] + rng.standard_normal(7)[b] + rng.standard_normal(n)
    w = rng.uniform(0.5, 2, n)
    terms = Terms([Term("a", ("1", "x"), 15), Term("b", ("1",), 7)])
    factors = [(a, Za), (b, np.ones((n, 1)))]
    cp = cross_products(X, y, factors, terms, w, s, 2)
    plain_dev = Deviance(cp, True)
    design = Design(X, False, y, tuple(factors), w, s, 2)
    if measured_from_origin:
        origin = Origin(np.array([0.0, 0.7, -3.0]))  # x and y measured from 0.7 and -3
        cp = cross_products(X[:, 1:], y, factors, terms, w, s, 2, intercept=True, origin=origin)
        design = Design(X[:, 1:], True, y, tuple(factors), w, s, 2)
        uncentred = cp.uncentred()
        np.testing.assert_allclose(uncentred.xyxy, plain_dev.cp.xyxy, rtol=1e-12,
                                   atol=1e-12 * np.abs(plain_dev.cp.xyxy).max())
        for got, want in zip(uncentred.zxy, plain_dev.cp.zxy):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    dev = Deviance(cp, True)
    x0 = np.array([1.2, 0.3, 0.4, 0.9, 0.2])
    shifted = shifted_deviance(dev, dev.solution(x0), design)
    conditioned = Conditioned(dev)
    for point in (x0, x0 * 1.3, x0 * 0.7):
        plain, sol = plain_dev.value_and_grad(point), plain_dev.solution(point)
        value, grad = dev.value_and_grad(point)
        assert value == pytest.approx(plain[0], rel=1e-13)
        np.testing.assert_allclose(grad, plain[1], rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(dev.solution(point).beta, sol.beta, rtol=1e-10)
        np.testing.assert_allclose(dev.solution(point).a_inv, sol.a_inv, rtol=1e-10)
        value, grad = shifted.value_and_grad(point)
        assert value == pytest.approx(plain[0], rel=1e-13)
        np.testing.assert_allclose(grad, plain[1], rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(shifted.solution(point).beta, sol.beta, rtol=1e-10)
        for got, want in zip(shifted.solution(point).blups(), sol.blups()):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
        ev = conditioned.evaluate(point)
        assert ev.deviance == pytest.approx(sol.deviance, rel=1e-12)
        np.testing.assert_allclose(ev.beta, sol.beta, rtol=1e-10)
        np.testing.assert_allclose(ev.a_inv, sol.a_inv, rtol=1e-9)


def test_shifted_solution_predicts_rows_of_unseen_level_combinations_as_the_plain_one():
    """Rows whose levels of crossed factors never occurred together are solved for
    (``ExactSolution._solved``): with a shifted point their shift is ``r'`` times the modes
    of the data's ``X``, not of the shifted ``X'`` (measured: 0.0026 for 0.69)."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 15, 300), rng.integers(0, 7, 300)
    keep = ~(((a == 0) & (b == 0)) | ((a == 1) & (b == 2)))  # two combinations never seen
    a, b = a[keep], b[keep]
    n = a.size
    x = rng.standard_normal(n)
    X = np.column_stack([np.ones(n), x])
    Za = np.column_stack([np.ones(n), x])
    y = X @ [1, 2] + 3 * rng.standard_normal(15)[a] + rng.standard_normal(7)[b] + rng.standard_normal(n)
    terms = Terms([Term("a", ("1", "x"), 15), Term("b", ("1",), 7)])
    factors = [(a, Za), (b, np.ones((n, 1)))]
    dev = Deviance(cross_products(X, y, factors, terms, np.ones(n), None, 1), True)
    design = Design(X, False, y, tuple(factors), np.ones(n), None, 1)
    x0 = np.array([1.2, 0.3, 0.4, 0.9])
    shifted = shifted_deviance(dev, dev.solution(x0), design)
    point = 1.3 * x0
    assert shifted.solution(point)._point.A is not None
    xr = np.array([0.5, -1.0, 0.3, 0.2])
    seen = [(np.array([0, 1, 3, 0]), np.column_stack([np.ones(4), xr])),
            (np.array([0, 2, 4, 1]), np.ones((4, 1)))]  # rows 0 and 1 unseen together
    quad, shift = dev.solution(point).prediction_products(seen)
    got_quad, got_shift = shifted.solution(point).prediction_products(seen)
    np.testing.assert_allclose(got_quad, quad, rtol=1e-9)
    np.testing.assert_allclose(got_shift, shift, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", ["orthodont_slopes", "dietox_unbalanced", "dietox_q3",
                                  "dietox_factorial", "dietox_factorial_sum"])
def test_fixed_effects_at_lme4s_theta_are_exact_up_to_the_cross_products_rounding(case):
    """Fixed effects at lme4's theta against the exact solution (rational arithmetic).

    Both ours and lme4's ``fixef`` are solved from cross-products of the rows and carry
    their rounding: on dietox_unbalanced 2.8e-11 and 2.7e-11 absolute on the intercept
    (opposite signs; 1.4e-9 and 1.7e-9 relative on the small ``EvitEvit200``), where a
    solve at ``u cond`` would leave 1e-14. Each must be within the first-order rounding
    bound of its cross-products (:func:`_tables.exact_beta_at_r`); measured, ours reaches
    at most 0.23 of it and lme4 0.34.
    """
    from _tables import at_r_point, exact_beta_at_r, r_fixef

    exact, rounding = exact_beta_at_r(case)
    ours = at_r_point(case).fe_params_.to_numpy()
    assert np.all(np.abs(ours - exact) <= rounding)
    assert np.all(np.abs(r_fixef(case) - exact) <= rounding)
    # the bound is no blanket: at most 5e-11 of the largest coefficient (dietox_factorial)
    assert np.max(rounding) < 1e-10 * np.max(np.abs(exact))


def _growth_fit():
    """Random intercept, slope and curvature on raw age (ML)."""
    rng = np.random.default_rng(0)
    m, per = 30, 8
    g = np.repeat(np.arange(m), per)
    age = np.tile(np.linspace(20, 70, per), m) + rng.uniform(-2, 2, m * per)
    X = np.column_stack([age, age**2])
    Z = np.column_stack([np.ones_like(age), age, age**2])
    b = rng.standard_normal((m, 3)) * [2.0, 0.05, 0.0005]
    y = 10 + 0.5 * age - 0.004 * age**2 + np.einsum("ij,ij->i", Z, b[g]) + rng.standard_normal(age.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MixedLMRegressor(reml=False).fit(X, y, groups=g, Z=Z)
        ci = est.conf_int(method="profile", which=["sd_z0|group", "sigma", "x1"])
    return est, ci


def test_profiles_step_through_random_slopes_on_uncentred_age_and_age_squared():
    """Used to stop with 'X'V^{-1}X is not positive definite' (lme4's basis loses every digit
    far from the estimate); the profiles now run in the whitened basis."""
    est, ci = _growth_fit()
    assert np.all(np.isfinite(ci.to_numpy()))
    assert ci.loc["sd_z0|group", "lower"] < np.sqrt(est.cov_re_[0, 0]) < ci.loc["sd_z0|group", "upper"]
    assert ci.loc["sigma", "lower"] < np.sqrt(est.scale_) < ci.loc["sigma", "upper"]
    assert ci.loc["x1", "lower"] < est.coef_[1] < ci.loc["x1", "upper"]


def test_growth_profile_bounds_reach_the_cutoff_by_brute_force():
    est, ci = _growth_fit()
    cond = Conditioned(est.model_.deviance)
    dev_min = est.model_.solution.deviance
    for sigma in ci.loc["sigma"]:
        def at_sigma(theta):
            ev = cond.evaluate(theta)
            ratio = ev.r2 / cond.dev.dof / sigma**2
            return ev.deviance + cond.dev.dof * (ratio - np.log(ratio) - 1.0)
        best = min(optimize.minimize(at_sigma, est.theta_ * f, method="Nelder-Mead",
                                     options={"xatol": 1e-9, "fatol": 1e-9, "maxfev": 6000}).fun
                   for f in (1.0, 0.8, 1.25))
        assert best - dev_min == pytest.approx(1.959964**2, abs=1e-3)
