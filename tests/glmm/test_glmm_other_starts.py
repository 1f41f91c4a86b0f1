"""The GLMM optimiser's other starts for small problems (:func:`mixedlm_sklearn._glmm._other_starts`).

The oracle is a brute force independent of the optimiser's starts and scaling: scipy's
L-BFGS-B on the Laplace deviance from a grid of seeded starts, each run to convergence;
the deviance at its best point is checked against a dense Laplace approximation.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from mixedlm_sklearn import MixedGLMRegressor, glmer
from mixedlm_sklearn._glmm import _BOUND_PROBES, _off_bound, _other_starts, _safe, fit_glmm, glm_start

from test_glmm import _dense_laplace


def _slope_design(seed: int, family: str) -> pd.DataFrame:
    """``y ~ x + (x | g)``: a random slope correlated with the intercept, few groups, an
    uncentred covariate (so lme4's ``Lambda`` is far from diagonal)."""
    rng = np.random.default_rng(seed)
    m, k = rng.integers(6, 20), rng.integers(8, 30)
    g = np.repeat(np.arange(m), k)
    n = g.size
    x = rng.standard_normal(n) + rng.normal(0, 1 if family == "poisson" else 2)
    high = (1.2, 0.8) if family == "poisson" else (2.0, 1.5)
    sd0, sd1, rho = rng.uniform(0.1, high[0]), rng.uniform(0.05, high[1]), rng.uniform(-0.95, 0.95)
    L = np.array([[sd0, 0.0], [rho * sd1, sd1 * np.sqrt(1 - rho ** 2)]])
    b = rng.standard_normal((m, 2)) @ L.T
    if family == "poisson":
        eta = 0.5 + 0.3 * x + b[g, 0] + b[g, 1] * x
        y = rng.poisson(np.exp(np.clip(eta, -10, 6))).astype(float)
    else:
        eta = -0.3 + 0.5 * x + b[g, 0] + b[g, 1] * x
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})


def _crossed_slope_design(seed: int) -> pd.DataFrame:
    """Poisson ``y ~ x + (x | g1) + (1 | g2)``, crossed factors of few levels."""
    rng = np.random.default_rng(seed)
    m1, m2 = rng.integers(5, 20), rng.integers(3, 10)
    n = int(rng.integers(150, 400))
    g1, g2 = rng.integers(0, m1, n), rng.integers(0, m2, n)
    x = rng.standard_normal(n)
    sd0, sd1, rho = rng.uniform(0.1, 1.0), rng.uniform(0.05, 0.6), rng.uniform(-0.9, 0.9)
    L = np.array([[sd0, 0.0], [rho * sd1, sd1 * np.sqrt(1 - rho ** 2)]])
    b = rng.standard_normal((m1, 2)) @ L.T
    eta = 0.5 + 0.3 * x + b[g1, 0] + b[g1, 1] * x + rng.uniform(0, 1) * rng.standard_normal(m2)[g2]
    y = rng.poisson(np.exp(np.clip(eta, -10, 6))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g1": g1.astype(str), "g2": g2.astype(str)})


def _brute_force(dev, n_starts: int = 12) -> tuple[float, np.ndarray]:
    """The lowest deviance scipy's L-BFGS-B reaches from seeded random ``theta`` (and the
    GLM's ``beta``), each run to convergence in the original parameters."""
    beta0, _ = glm_start(dev.X, dev.y, dev.prior, dev.offset, dev.family, dev.link)
    lower = dev.lower_bounds()
    bounds = [(b if np.isfinite(b) else None, None) for b in lower]
    rng = np.random.default_rng(7)

    def f(z):
        value, grad = _safe(dev, z)
        return (1e10, np.zeros(z.size)) if grad is None else (value, grad)

    best = (np.inf, None)
    for _ in range(n_starts):
        theta = rng.uniform(-1.0, 1.0, dev.n_theta)
        theta[np.isfinite(lower[:dev.n_theta])] = np.abs(theta[np.isfinite(lower[:dev.n_theta])]) + 0.05
        z = np.concatenate([theta, beta0])
        for _ in range(2):  # a second run from the end: L-BFGS-B's own stop is loose
            z = optimize.minimize(f, z, jac=True, method="L-BFGS-B", bounds=bounds,
                                  options={"maxiter": 3000, "ftol": 1e-15, "gtol": 1e-10,
                                           "maxcor": 30}).x
        value = f(z)[0]
        if value < best[0]:
            best = (value, z)
    return best


@pytest.fixture(scope="module")
def stuck():
    """A Poisson ``(x | g)`` design (found by a search over simulated ones) whose fit from
    lme4's start alone stops, converged, at a local minimum 3.73 deviance units above the
    lowest, with both variances of L's diagonal 0."""
    data = _slope_design(46, "poisson")
    fit = glmer("y ~ x + (x | g)", data, family="poisson")
    dev = fit.model_.deviance
    beta0, _ = glm_start(dev.X, dev.y, dev.prior, dev.offset, dev.family, dev.link)
    x0 = np.concatenate([dev.terms.identity_theta(), beta0])
    return fit, dev, x0, _brute_force(dev)


def test_other_starts_reach_the_brute_force_optimum(stuck):
    fit, dev, x0, (best, best_x) = stuck
    assert fit.converged_
    assert -2 * fit.llf_ == pytest.approx(best, abs=1e-6)
    np.testing.assert_allclose(fit.model_.solution.x, best_x, atol=1e-4)
    one_start, info = fit_glmm(dev.with_nodes(1), x0, multistart=False)
    assert info.converged and one_start.deviance - best > 3.7  # the local minimum it fixes
    # the brute force's deviance is the Laplace approximation, by dense matrices
    factors = dev.factors
    dense = _dense_laplace(dev.X, dev.y, dev.prior, factors, dev.terms, dev.family, dev.link,
                           best_x[:dev.n_theta], best_x[dev.n_theta:])
    assert dense == pytest.approx(best, rel=1e-9)


def test_a_start_at_a_worse_minimum_is_rescued(stuck):
    """Started at the worse local minimum itself, the fit leaves it only by the other starts."""
    fit, dev, x0, (best, _) = stuck
    worse, _ = fit_glmm(dev.with_nodes(1), x0, multistart=False)
    held, _ = fit_glmm(dev.with_nodes(1), worse.x, multistart=False)
    assert held.deviance == pytest.approx(worse.deviance, abs=1e-6)
    rescued, info = fit_glmm(dev.with_nodes(1), worse.x)
    assert info.converged and rescued.deviance == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("seed, family", [(0, "binomial"), (1, "binomial"), (2, "poisson"),
                                          (5, "poisson")])
def test_other_starts_never_make_the_fit_worse(seed, family):
    data = _slope_design(seed, family)
    dev = glmer("y ~ x + (x | g)", data, family=family).model_.deviance
    beta0, _ = glm_start(dev.X, dev.y, dev.prior, dev.offset, dev.family, dev.link)
    x0 = np.concatenate([dev.terms.identity_theta(), beta0])
    with_starts, _ = fit_glmm(dev.with_nodes(1), x0)
    without, _ = fit_glmm(dev.with_nodes(1), x0, multistart=False)
    assert with_starts.deviance <= without.deviance + 1e-8


def test_which_problems_get_other_starts(stuck):
    """The linear model's starts (theta only) where some term is a vector and the problem
    is small; none with scalar terms only or many levels."""
    _, dev, _, _ = stuck
    starts = _other_starts(dev)
    assert len(starts) == 9 and all(s.shape == (dev.n_theta,) for s in starts)
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"y": rng.poisson(2.0, 200).astype(float), "g": rng.integers(0, 10, 200).astype(str),
                         "h": rng.integers(0, 8, 200).astype(str), "x": rng.standard_normal(200)})
    scalar = glmer("y ~ x + (1 | g) + (1 | h)", data, family="poisson").model_.deviance
    assert _other_starts(scalar) == []
    data["many"] = (np.arange(200) % 150).astype(str)  # 150 levels: more than the small problems' 100
    large = glmer("y ~ x + (x | many)", data, family="poisson").model_.deviance
    assert _other_starts(large) == []


# ---- the escape from the variance bounds (_off_bound), which the other starts' ends go through


def _probes(dev, x, k, flip=()):
    """The deviance at ``x`` with ``theta_k`` raised to each of the bound's probes (and the
    entries ``flip`` negated), minus the deviance at ``x``."""
    out = []
    for h in _BOUND_PROBES:
        trial = x.copy()
        trial[list(flip)] *= -1.0
        trial[k] = h
        out.append(dev(trial) - dev(x))
    return np.array(out)


def test_escape_probes_both_signs_of_the_column():
    """With the intercept's diagonal entry of ``L`` at 0 the deviance depends on the slope's
    entry below it only up to its sign: raised with one sign the deviance rises at every
    probe, with the other it falls, and the fit leaves the bound that way."""
    data = _slope_design(33, "poisson")
    fit = glmer("y ~ x + (x | g)", data, family="poisson")
    dev, x = fit.model_.deviance, fit.model_.solution.x
    # scipy's L-BFGS-B from lme4's start and 9 others, the lowest end (6 decimals)
    assert fit.model_.solution.deviance == pytest.approx(1201.555125, abs=1e-6)
    assert x[0] > 0 and x[1] != 0
    bad = x.copy()
    bad[0], bad[1] = 0.0, -x[1]  # the mirror of the optimum's column, its diagonal at 0
    assert np.all(_probes(dev, bad, 0) > 0)
    assert _probes(dev, bad, 0, flip=[1]).min() < -0.1
    escape = _off_bound(dev, bad)
    assert escape is not None and escape[0] > 0 and np.sign(escape[1]) == np.sign(x[1])
    refit, info = fit_glmm(dev.with_nodes(1), bad, multistart=False)
    assert info.converged and refit.deviance == pytest.approx(fit.model_.solution.deviance, abs=1e-6)


def test_escape_probes_close_to_the_bound():
    """A slope variance whose minimum is at ``L_22 = 0.029``: the deviance falls off 0 only
    below about 0.04, so only the smallest probe sees it."""
    data = _crossed_slope_design(18)
    fit = glmer("y ~ x + (x | g1) + (1 | g2)", data, family="poisson")
    dev, x = fit.model_.deviance, fit.model_.solution.x
    # scipy's L-BFGS-B from lme4's start and 9 others, the lowest end (6 decimals)
    assert fit.model_.solution.deviance == pytest.approx(785.802385, abs=1e-6)
    assert 0.02 < x[2] < 0.04
    bad = x.copy()
    bad[2] = 0.0
    probes = _probes(dev, bad, 2)
    assert probes[0] < 0 and np.all(probes[1:] > 0)
    refit, info = fit_glmm(dev.with_nodes(1), bad, multistart=False)
    assert info.converged and refit.deviance == pytest.approx(fit.model_.solution.deviance, abs=1e-6)


def test_a_negative_binomial_fit_reaches_its_profile_maximum():
    """A small ``(x | g)`` negative binomial design whose profile over theta had other starts
    at its first point only: the search over theta stopped at 0.562, below the maximum of
    its own profile (fits at theta held near 0.573 were higher, by 4e-4). Every profile
    point is now fitted alike, the other starts run at the estimate: the joint fit is at
    least every fit with theta held around it."""
    rng = np.random.default_rng(29)
    G, m = rng.integers(4, 10), rng.integers(3, 8)
    g = np.repeat(np.arange(G), m)
    n = g.size
    x = rng.normal(size=n) * rng.choice([1, 5])
    b0, b1 = rng.normal(0, 2, G), rng.normal(0, 2, G)
    eta = -0.5 + 1.5 * x + b0[g] + b1[g] * x
    Z = np.column_stack([np.ones(n), x])
    y = rng.negative_binomial(2, 2 / (2 + np.exp(np.clip(eta, -5, 4))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joint = MixedGLMRegressor(family="negative_binomial").fit(x[:, None], y, groups=g, Z=Z)
        held = [MixedGLMRegressor(family="negative_binomial", family_params={"theta": t}).fit(
            x[:, None], y, groups=g, Z=Z).llf_ for t in (0.5624, 0.568, 0.5731, 0.578)]
    assert joint.converged_
    assert joint.llf_ >= max(held) - 1e-9
    assert abs(joint.family_params_["theta"] - 0.5731) < 2e-3
