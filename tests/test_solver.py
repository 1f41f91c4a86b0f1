"""The numerical core: statistics, deviance, gradient and optimiser against independent math."""

import numpy as np
import pytest
from _oracle import dense_loglik

from mixedlm_sklearn._deviance import ProfiledDeviance, lambda_from_theta, theta_index
from mixedlm_sklearn._optimize import fit_deviance
from mixedlm_sklearn._stats import compute_stats


def _data(n=120, m=9, p=3, q=2, seed=0, weights=False):
    rng = np.random.default_rng(seed)
    codes = np.sort(rng.integers(0, m, n))
    codes[:m] = np.arange(m)  # every group present
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    Z = np.column_stack([np.ones(n), rng.standard_normal((n, q - 1)) * 2 + 1])
    b = rng.standard_normal((m, q)) * np.array([1.5, 0.7, 0.4][:q])
    y = X @ np.arange(1, p + 1) + np.einsum("ij,ij->i", Z, b[codes]) + rng.standard_normal(n)
    w = rng.uniform(0.5, 2.0, n) if weights else None
    return X, y, Z, codes, m, w


@pytest.mark.parametrize("q", [1, 2, 3])
@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("weights", [False, True])
def test_gradient_matches_finite_differences(q, reml, weights):
    X, y, Z, codes, m, w = _data(q=q, seed=q, weights=weights)
    dev = ProfiledDeviance(compute_stats(X, y, Z, codes, m, w), reml=reml)
    rng = np.random.default_rng(1)
    theta = rng.uniform(0.3, 1.2, dev.n_theta)
    _, grad = dev.value_and_grad(theta)
    h = 1e-6
    numeric = np.array([(dev(theta + h * e) - dev(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reml", [True, False])
def test_deviance_equals_dense_likelihood(reml):
    X, y, Z, codes, m, w = _data(q=2, weights=True)
    dev = ProfiledDeviance(compute_stats(X, y, Z, codes, m, w), reml=reml)
    sol = dev.solve(np.array([0.8, -0.3, 0.5]))
    cov_re = sol.scale * sol.lam @ sol.lam.T
    dense = dense_loglik(X, y, Z, codes, sol.beta, cov_re, sol.scale, reml, w)
    np.testing.assert_allclose(-0.5 * sol.deviance, dense, rtol=1e-11)


def test_statistics_add_up_over_chunks():
    X, y, Z, codes, m, w = _data(n=200, q=3, weights=True)
    whole = compute_stats(X, y, Z, codes, m, w)
    parts = [compute_stats(X[s], y[s], Z[s], codes[s], m, w[s]) for s in (slice(0, 70), slice(70, 200))]
    summed = parts[0] + parts[1]
    for field in ("ztz", "ztxy", "xyxy", "counts"):
        np.testing.assert_allclose(getattr(summed, field), getattr(whole, field), rtol=1e-12)
    assert summed.n_obs == whole.n_obs
    np.testing.assert_allclose(summed.sum_log_weights, whole.sum_log_weights)


def test_theta_order_is_lme4s_column_major_lower_triangle():
    rows, cols = theta_index(3)
    assert list(zip(rows, cols)) == [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (2, 2)]
    lam = lambda_from_theta(np.arange(1.0, 7.0), 3)
    np.testing.assert_array_equal(lam, [[1, 0, 0], [2, 4, 0], [3, 5, 6]])


@pytest.mark.parametrize("diagonal", [False, True])
def test_optimum_is_a_stationary_point_no_better_neighbour(diagonal):
    X, y, Z, codes, m, _ = _data(n=300, m=15, q=3, seed=4)
    dev, sol, info = fit_deviance(compute_stats(X, y, Z, codes, m), reml=True, diagonal=diagonal)
    assert info.converged
    rng = np.random.default_rng(0)
    for _ in range(20):
        step = rng.standard_normal(sol.theta.size) * 1e-3
        trial = np.maximum(sol.theta + step, dev.lower_bounds())
        assert dev(trial) >= sol.deviance - 1e-9


def test_badly_scaled_slopes_converge():
    # age and age^2 as raw columns with random slopes on both (issue 2's hard case)
    rng = np.random.default_rng(3)
    m, per = 40, 8
    codes = np.repeat(np.arange(m), per)
    age = np.tile(np.linspace(20, 70, per), m) + rng.uniform(-2, 2, m * per)
    X = np.column_stack([np.ones_like(age), age, age**2])
    Z = X.copy()
    b = rng.standard_normal((m, 3)) * [2.0, 0.05, 0.0005]
    y = X @ [10, 0.5, -0.004] + np.einsum("ij,ij->i", Z, b[codes]) + rng.standard_normal(age.size)
    stats = compute_stats(X, y, Z, codes, m)
    dev, sol, info = fit_deviance(stats, reml=True)
    assert info.converged
    # an independent optimiser started at the answer cannot improve it
    from scipy.optimize import minimize

    res = minimize(dev, sol.theta, method="Nelder-Mead",
                   bounds=[(lb if np.isfinite(lb) else None, None) for lb in dev.lower_bounds()],
                   options={"xatol": 1e-10, "fatol": 1e-12, "maxfev": 4000})
    assert res.fun >= sol.deviance - 1e-7


def _intercept_only(seed, centre_groups):
    rng = np.random.default_rng(seed)
    m, per = 30, 6
    codes = np.repeat(np.arange(m), per)
    X = np.column_stack([np.ones(m * per), rng.standard_normal(m * per)])
    e = rng.standard_normal(m * per)
    if centre_groups:  # group means carry less spread than pure noise would: variance 0
        e -= np.bincount(codes, e)[codes] / per
    y = X @ [1.0, 2.0] + e
    return compute_stats(X, y, np.ones((m * per, 1)), codes, m)


def test_zero_gradient_on_the_boundary_does_not_trap_the_optimiser():
    # q = 1: the deviance is even in theta, so its gradient at 0 vanishes; here the
    # deviance still falls inwards and the optimum is a positive variance.
    dev, sol, info = fit_deviance(_intercept_only(5, centre_groups=False), reml=True)
    assert dev(np.array([1e-2])) < dev(np.zeros(1))
    assert sol.theta[0] > 0.05 and info.converged and not info.at_bound[0]
    assert sol.deviance < dev(np.zeros(1))


def test_zero_variance_lands_exactly_on_the_boundary():
    dev, sol, info = fit_deviance(_intercept_only(5, centre_groups=True), reml=True)
    assert dev(np.array([1e-2])) > dev(np.zeros(1))
    assert sol.theta[0] == 0.0 and info.at_bound[0] and info.converged


def test_zero_variance_of_a_diagonal_fit_lands_exactly_on_the_boundary():
    # random intercept with real variance, random slope with none: lme4 reports the
    # slope's variance as exactly 0 (a singular fit)
    rng = np.random.default_rng(13)
    m, per = 40, 8
    codes = np.repeat(np.arange(m), per)
    x = rng.standard_normal(m * per)
    X = np.column_stack([np.ones(m * per), x])
    y = X @ [1.0, 0.5] + rng.standard_normal(m)[codes] + rng.standard_normal(m * per)
    stats = compute_stats(X, y, X, codes, m)
    dev, sol, info = fit_deviance(stats, reml=True, diagonal=True)
    assert sol.theta[1] == 0.0 and info.at_bound[1] and not info.at_bound[0]
    assert dev(sol.theta + [0, 1e-3]) > sol.deviance
