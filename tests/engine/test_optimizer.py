"""The one optimiser on every kind of model: lme4's and nlme's optima, boundaries, hard cases.

Fits go through the engine directly (cross-products -> deviance -> optimiser), so that a
failure points at the optimiser, not at input handling.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _reference import (
    CROSSED_CASES,
    SINGLE_FACTOR_CASES,
    VARIDENT_CASES,
    load_case,
    reference_path,
    single_factor_arrays,
)
from scipy import optimize

from mixedlm_sklearn._crossprod import cross_products
from mixedlm_sklearn._deviance import Deviance
from mixedlm_sklearn._optimize import fit
from mixedlm_sklearn._terms import Term, Terms
from mixedlm_sklearn.datasets import load_insteval


def _fit(X, y, factors, names=None, reml=True, diagonal=False, weights=None, strata=None):
    terms = Terms([Term(names[k] if names else f"g{k}", tuple(f"z{j}" for j in range(Z.shape[1])),
                        int(codes.max()) + 1, diagonal) for k, (codes, Z) in enumerate(factors)])
    n_strata = 1 if strata is None else int(strata.max()) + 1
    dev = Deviance(cross_products(X, y, factors, terms, weights, strata, n_strata), reml)
    sol, info = fit(dev)
    return dev, sol, info


def _no_better_neighbour(dev, x, value, step=1e-4, tol=1e-9):
    lower, upper = dev.lower_bounds(), dev.upper_bounds()
    for j in range(x.size):
        for h in (-step, step):
            trial = x.copy()
            trial[j] += h * max(1.0, abs(x[j]))
            if lower[j] <= trial[j] <= upper[j]:
                assert dev(trial) >= value - tol * max(1.0, abs(value)), (j, h)


# ---- lme4 and nlme -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE_FACTOR_CASES)
def test_single_factor_references(name):
    ref = single_factor_arrays(name)
    codes = pd.factorize(ref["groups"], sort=True)[0]
    dev, sol, info = _fit(ref["X"], ref["y"], [(codes, ref["Z"])], reml=bool(ref["reml"]))
    llf = -0.5 * sol.deviance
    assert llf >= ref["llf"] - 1e-6 and llf - ref["llf"] < 1e-4
    assert info.converged
    np.testing.assert_allclose(sol.cov_re()[0], ref["cov_re"], rtol=1e-4, atol=1e-6 * np.abs(ref["cov_re"]).max())
    assert info.at_bound.any() == bool(ref["singular"])


@pytest.mark.parametrize("name", SINGLE_FACTOR_CASES)
def test_one_local_search_reaches_the_fits_optimum_where_it_is_inside(name):
    """local_minimum (the correlation's grid points: one local search, no safeguards or
    check) from the fit's start and from a start off the optimum: the deviance there is
    the fit's to rounding where the fit's optimum is inside the bounds (a singular fit is
    the safeguards' job), and never below it; the deviance it reports (the whitened
    basis's plus the basis's constant) is the deviance at the point it returns, also from
    a start given in the whitened basis, whose point it returns too."""
    from mixedlm_sklearn._basis import Basis
    from mixedlm_sklearn._optimize import local_minimum

    ref = single_factor_arrays(name)
    codes = pd.factorize(ref["groups"], sort=True)[0]
    dev, sol, info = _fit(ref["X"], ref["y"], [(codes, ref["Z"])], reml=bool(ref["reml"]))
    basis = Basis(dev.cp)
    for x0 in (None, 1.5 * sol.x):
        x, value, white = local_minimum(dev, x0)
        np.testing.assert_allclose(basis.to_original(white), x, rtol=1e-12, atol=1e-14)
        again = local_minimum(dev, None, whitened=basis.from_original(1.5 * sol.x) if x0 is not None else white)
        for x, value, _ in ((x, value, white), again):
            assert value == pytest.approx(float(dev(x)), rel=1e-12)
            assert value >= sol.deviance - 1e-8 * abs(sol.deviance)
            if not info.at_bound.any():
                assert value == pytest.approx(sol.deviance, abs=1e-7)


@pytest.mark.parametrize("name", CROSSED_CASES)
def test_several_term_references(name):
    frame, ref = load_case(name)
    X = frame.filter(regex="^X_").to_numpy(float)
    factors, k = [], 1
    while f"g{k}" in frame.columns:
        factors.append((pd.factorize(frame[f"g{k}"], sort=True)[0], frame.filter(regex=f"^Z{k}_").to_numpy(float)))
        k += 1
    dev, sol, info = _fit(X, frame["y"].to_numpy(float), factors)
    llf = -0.5 * sol.deviance
    assert llf >= ref["llf"] - 1e-6 and llf - ref["llf"] < 1e-4
    assert info.converged
    groups = [t["group"] for t in ref["terms"]]
    for t in ref["terms"]:
        np.testing.assert_allclose(sol.cov_re()[groups.index(t["vc_key"])], np.atleast_2d(t["cov_re"]), rtol=1e-4)


@pytest.mark.parametrize("name", VARIDENT_CASES)
def test_residual_strata_references(name):
    frame, ref = load_case(name)
    X = frame.filter(regex="^X_").to_numpy(float)
    Z = frame.filter(regex="^Z_").to_numpy(float)
    codes = pd.factorize(frame["group"], sort=True)[0]
    strata, labels = pd.factorize(frame["stratum"], sort=True)
    dev, sol, info = _fit(X, frame["y"].to_numpy(float), [(codes, Z)], reml=ref["reml"], strata=strata)
    assert info.converged
    llf = -0.5 * sol.deviance
    assert llf >= ref["llf"] - 1e-6 and llf - ref["llf"] < 1e-4
    for label, ratio in zip(labels, sol.ratios):
        assert sol.scale * ratio == pytest.approx(ref["residual_var_by_stratum"][label], rel=1e-4)


def _insteval_slope():
    df = load_insteval()
    n = len(df)
    service = (df["service"].astype(str) == "1").to_numpy(float)
    X = np.column_stack([np.ones(n), service])
    factors = [(pd.factorize(df[g], sort=True)[0], Z) for g, Z in
               (("s", np.ones((n, 1))), ("d", np.ones((n, 1))), ("dept", np.column_stack([np.ones(n), service])))]
    return X, df["y"].to_numpy(float), factors


def _independent_reml_llf(X, y, factors, theta):
    """REML log-likelihood from the rows: M = L'Z'ZL + I dense (4128 x 4128), no engine code."""
    import scipy.sparse as sp

    n = len(y)
    blocks, lams = [], []
    pos = 0
    for codes, Z in factors:
        m, q = codes.max() + 1, Z.shape[1]
        rows = np.repeat(np.arange(n), q)
        cols = (codes[:, None] * q + np.arange(q)).ravel()
        blocks.append(sp.csr_matrix((Z.ravel(), (rows, cols)), shape=(n, m * q)))
        k = q * (q + 1) // 2
        L = np.zeros((q, q))
        idx = np.triu_indices(q)  # lme4's order: the lower triangle column by column
        L[idx[1], idx[0]] = theta[pos:pos + k]
        pos += k
        lams.append(sp.kron(sp.identity(m), L))
    ZL = (sp.hstack(blocks) @ sp.block_diag(lams)).tocsc()
    M = (ZL.T @ ZL).toarray() + np.eye(ZL.shape[1])
    chol = np.linalg.cholesky(M)

    def vinv(v):  # V^{-1} v in units of sigma^2, by Woodbury
        t = np.linalg.solve(chol, ZL.T @ v)
        return v - ZL @ np.linalg.solve(chol.T, t)

    ViX = np.column_stack([vinv(X[:, j]) for j in range(X.shape[1])])
    A = X.T @ ViX
    beta = np.linalg.solve(A, ViX.T @ y)
    r = y - X @ beta
    dof = n - X.shape[1]
    dev = 2 * np.log(np.diag(chol)).sum() + np.linalg.slogdet(A)[1] + dof * (1 + np.log(2 * np.pi * (r @ vinv(r)) / dof))
    return -0.5 * dev


def test_insteval_crossed_random_slope_beats_lme4s_false_boundary():
    """``y ~ service + (1|s) + (1|d) + (service|dept)``: lme4 stops on the boundary.

    lme4 1.1-31 reports a singular fit (dept's intercept variance 0) at logLik
    -118830.6556; the optimum is 2.1 higher, confirmed here by a likelihood computed from
    the rows with a dense M and no engine code, at both points.
    """
    X, y, factors = _insteval_slope()
    with reference_path("insteval_slope_crossed_reml.json").open() as handle:
        ref = json.load(handle)
    dev, sol, info = _fit(X, y, factors, names=["s", "d", "dept"])
    llf = -0.5 * sol.deviance
    assert info.converged and not info.at_bound.any()
    assert llf > ref["llf"] + 2.0
    lme4_theta = np.array([0.275560670, 0.437217070, 0.0, 0.0, 0.133813110])
    assert _independent_reml_llf(X, y, factors, lme4_theta) == pytest.approx(ref["llf"], abs=1e-4)
    assert _independent_reml_llf(X, y, factors, sol.theta) == pytest.approx(llf, abs=1e-6)
    _no_better_neighbour(dev, sol.x, sol.deviance)


def test_crossed_correlated_slope_leaves_the_false_boundary():
    """A random intercept for one factor and a correlated intercept + slope for a
    crossed second one used to stop on a false boundary (an intercept variance of 0)."""
    rng = np.random.default_rng(12)
    n, m_a, m_b = 2000, 60, 25
    a, b = rng.integers(0, m_a, n), rng.integers(0, m_b, n)
    x = rng.uniform(0, 10, n)  # uncentred: intercept and slope strongly correlated
    X = np.column_stack([np.ones(n), x])
    u_b = rng.multivariate_normal([0, 0], [[1.0, 0.15], [0.15, 0.04]], m_b)
    y = X @ [5.0, 0.3] + 0.8 * rng.standard_normal(m_a)[a] + u_b[b, 0] + u_b[b, 1] * x + rng.standard_normal(n)
    factors = [(a, np.ones((n, 1))), (b, X.copy())]
    for reml in (True, False):
        dev, sol, info = _fit(X, y, factors, reml=reml)
        assert info.converged and not info.at_bound.any()
        _no_better_neighbour(dev, sol.x, sol.deviance)
        # independent multi-start L-BFGS-B on the same deviance finds nothing better
        rng2 = np.random.default_rng(0)
        bounds = list(zip(dev.lower_bounds(), [None] * dev.n_params))
        for _ in range(5):
            start = rng2.uniform(0.05, 2.0, dev.n_params) * np.where(np.isfinite(dev.lower_bounds()), 1, 0.3)
            res = optimize.minimize(dev, start, method="L-BFGS-B", bounds=bounds)
            assert res.fun >= sol.deviance - 1e-6


# ---- boundaries ---------------------------------------------------------------------------------


def _intercept_only(seed, centre_groups):
    rng = np.random.default_rng(seed)
    m, per = 30, 6
    codes = np.repeat(np.arange(m), per)
    X = np.column_stack([np.ones(m * per), rng.standard_normal(m * per)])
    e = rng.standard_normal(m * per)
    if centre_groups:  # group means carry less spread than pure noise would: variance 0
        e -= np.bincount(codes, e)[codes] / per
    return X, X @ [1.0, 2.0] + e, [(codes, np.ones((m * per, 1)))]


def test_zero_gradient_on_the_boundary_does_not_trap_the_optimiser():
    # q = 1: the deviance is even in theta, so its gradient at 0 vanishes; here the
    # deviance still falls inwards and the optimum is a positive variance.
    dev, sol, info = _fit(*_intercept_only(5, centre_groups=False))
    assert dev(np.array([1e-2])) < dev(np.zeros(1))
    assert sol.theta[0] > 0.05 and info.converged and not info.at_bound[0]


def test_zero_variance_lands_exactly_on_the_boundary():
    dev, sol, info = _fit(*_intercept_only(5, centre_groups=True))
    assert dev(np.array([1e-2])) > dev(np.zeros(1))
    assert sol.theta[0] == 0.0 and info.at_bound[0] and info.converged


def test_zero_variance_of_a_diagonal_fit_lands_exactly_on_the_boundary():
    rng = np.random.default_rng(13)
    m, per = 40, 8
    codes = np.repeat(np.arange(m), per)
    X = np.column_stack([np.ones(m * per), rng.standard_normal(m * per)])
    y = X @ [1.0, 0.5] + rng.standard_normal(m)[codes] + rng.standard_normal(m * per)
    dev, sol, info = _fit(X, y, [(codes, X)], diagonal=True)
    assert sol.theta[1] == 0.0 and info.at_bound[1] and not info.at_bound[0]
    assert dev(sol.theta + [0, 1e-3]) > sol.deviance


def test_singular_crossed_fit_lands_on_zero_and_equals_the_fit_without_the_term():
    rng = np.random.default_rng(8)
    n = 300
    g1, g2 = rng.integers(0, 40, n), rng.integers(0, 8, n)
    y = 2.0 + rng.standard_normal(40)[g1] + rng.standard_normal(n)
    y -= (np.bincount(g2, y - y.mean(), 8) / np.bincount(g2, minlength=8))[g2]  # no trace of g2
    X, one = np.ones((n, 1)), np.ones((n, 1))
    _, both, info = _fit(X, y, [(g1, one), (g2, one)])
    _, alone, _ = _fit(X, y, [(g1, one)])
    assert both.theta[1] == 0.0 and info.at_bound[1]
    assert both.deviance == pytest.approx(alone.deviance, abs=1e-7)
    np.testing.assert_array_equal(both.blups()[1], 0.0)


def test_badly_scaled_slopes_converge():
    # age and age^2 as raw columns with random slopes on both
    rng = np.random.default_rng(3)
    m, per = 40, 8
    codes = np.repeat(np.arange(m), per)
    age = np.tile(np.linspace(20, 70, per), m) + rng.uniform(-2, 2, m * per)
    X = np.column_stack([np.ones_like(age), age, age**2])
    b = rng.standard_normal((m, 3)) * [2.0, 0.05, 0.0005]
    y = X @ [10, 0.5, -0.004] + np.einsum("ij,ij->i", X, b[codes]) + rng.standard_normal(age.size)
    dev, sol, info = _fit(X, y, [(codes, X.copy())])
    assert info.converged
    res = optimize.minimize(dev, sol.theta, method="Nelder-Mead",
                            bounds=[(lb if np.isfinite(lb) else None, None) for lb in dev.lower_bounds()],
                            options={"xatol": 1e-10, "fatol": 1e-12, "maxfev": 4000})
    assert res.fun >= sol.deviance - 1e-7


def test_order_of_terms_does_not_matter():
    rng = np.random.default_rng(7)
    n = 400
    a, b, c = rng.integers(0, 30, n), rng.integers(0, 12, n), rng.integers(0, 5, n)
    x = rng.standard_normal(n)
    X = np.column_stack([np.ones(n), x])
    y = X @ [1, 2] + rng.standard_normal(30)[a] + 0.5 * rng.standard_normal(12)[b] * x \
        + 0.7 * rng.standard_normal(5)[c] + rng.standard_normal(n)
    factors = [(a, X.copy()), (b, X.copy()), (c, np.ones((n, 1)))]
    _, base, _ = _fit(X, y, factors)
    perm = [2, 0, 1]
    _, other, _ = _fit(X, y, [factors[k] for k in perm])
    assert other.deviance == pytest.approx(base.deviance, abs=1e-8)
    for j, k in enumerate(perm):
        np.testing.assert_allclose(other.cov_re()[j], base.cov_re()[k], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(other.blups()[j], base.blups()[k], rtol=1e-5, atol=1e-7)


# ---- residual strata ----------------------------------------------------------------------------


def _strata_data(n=150, m=12, q=2, n_strata=3, seed=0):
    """Random-slope data whose residual SD differs by stratum (1, 2, 0.5)."""
    rng = np.random.default_rng(seed)
    codes = np.sort(rng.integers(0, m, n))
    codes[:m] = np.arange(m)
    strata = rng.integers(0, n_strata, n)
    strata[:n_strata] = np.arange(n_strata)
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    Z = np.column_stack([np.ones(n), rng.uniform(0, 3, n)])[:, :q]
    b = rng.standard_normal((m, q)) * np.array([1.2, 0.5])[:q]
    sd = np.array([1.0, 2.0, 0.5])[:n_strata]
    y = X @ [2.0, -1.0] + np.einsum("ij,ij->i", Z, b[codes]) + sd[strata] * rng.standard_normal(n)
    return X, y, [(codes, Z)], strata


@pytest.mark.parametrize("reml", [True, False])
def test_equal_prior_weights_change_only_the_scale(reml):
    X, y, factors, strata = _strata_data(seed=2)
    _, plain, _ = _fit(X, y, factors, reml=reml, strata=strata)
    _, weighted, info = _fit(X, y, factors, reml=reml, strata=strata, weights=np.full(y.size, 4.0))
    assert info.converged
    assert weighted.scale == pytest.approx(4.0 * plain.scale, rel=1e-7)
    np.testing.assert_allclose(weighted.ratios, plain.ratios, rtol=1e-7)
    np.testing.assert_allclose(weighted.beta, plain.beta, rtol=1e-7)
    np.testing.assert_allclose(weighted.cov_re()[0], plain.cov_re()[0], rtol=1e-6)


def test_choice_of_reference_stratum_does_not_change_the_fit():
    X, y, factors, strata = _strata_data(seed=4)
    _, a, _ = _fit(X, y, factors, strata=strata)
    relabel = np.array([2, 0, 1])  # stratum 2 becomes the reference
    _, b, _ = _fit(X, y, factors, strata=relabel[strata])
    assert b.deviance == pytest.approx(a.deviance, rel=1e-11)
    np.testing.assert_allclose(b.scale * b.ratios[relabel], a.scale * a.ratios, rtol=1e-6)
    np.testing.assert_allclose(b.beta, a.beta, rtol=1e-7)


def test_recovers_simulated_standard_deviations():
    X, y, factors, strata = _strata_data(n=6000, m=60, seed=7)
    _, sol, info = _fit(X, y, factors, strata=strata)
    assert info.converged
    np.testing.assert_allclose(np.sqrt(sol.scale * sol.ratios), [1.0, 2.0, 0.5], rtol=0.05)


def test_strata_with_a_singular_fit_land_on_the_boundary():
    rng = np.random.default_rng(3)
    n, m = 200, 20
    codes = rng.integers(0, m, n)
    codes[:m] = np.arange(m)
    strata = rng.integers(0, 2, n)
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    Z = np.column_stack([np.ones(n), rng.uniform(0, 3, n)])
    y = X @ [1.0, 2.0] + rng.standard_normal(m)[codes] + np.where(strata, 3.0, 1.0) * rng.standard_normal(n)
    dev, sol, info = _fit(X, y, [(codes, Z)], strata=strata)
    assert info.converged, info.message
    assert info.at_bound[-1] and sol.theta[-1] == 0.0  # the slope's variance
    assert np.sqrt(sol.ratios[1]) == pytest.approx(3.0, rel=0.3)
    _no_better_neighbour(dev, sol.x, sol.deviance)


def test_exactly_fitted_stratum_is_reported_not_converged():
    """Two rows with their own intercept and slope: the likelihood rises (to a finite
    supremum) as their residual variance goes to 0, so there is no interior optimum."""
    X, y, factors, _ = _strata_data(n=60, n_strata=1, q=1)
    strata = np.zeros(y.size, dtype=int)
    strata[[3, 40]] = 1
    own = (strata == 1).astype(float)
    X = np.column_stack([X, own, own * X[:, 1]])
    _, sol, info = _fit(X, y, factors, reml=False, strata=strata)
    assert not info.converged
    assert "degenerate residual variances" in info.message
    assert sol.ratios[1] < 1e-9


def test_a_screened_start_stopped_at_a_saddle_on_the_bound_continues_to_the_optimum():
    """Orthodont ``(age | Subject)``, REML, whitened as the optimiser sees it: from the other
    start 0.1 x identity, the batched kernel holds the last diagonal entry of ``L`` at 0 at
    a point 1.2 above the optimum where the deviance still falls moving inwards (a saddle
    on the bound). The screening continues from there (the held entry raised) and joins
    the first search's answer instead of leaving the start unsettled for a search of its
    own; that answer is the optimum, as the engine's search from the start finds."""
    from mixedlm_sklearn._batched_refit import OneTermBatch, repeated_response
    from mixedlm_sklearn._optimize import _Tracker, _local
    from mixedlm_sklearn.datasets import load_orthodont

    dev, basis, white = _whitened_slope_model(load_orthodont(), "distance", "age", "Subject")
    start = 0.1 * white.terms.identity_theta()
    tracker = _Tracker(white)
    own = _local(tracker, start, 1000, 1e-8)  # the start searched on its own
    best = _local(tracker, basis.from_original(fit(dev)[0].theta), 1000, 1e-8)
    assert own.fun == pytest.approx(best.fun, rel=1e-12)
    batch = OneTermBatch(white.cp, True)
    products = repeated_response(white.cp, 1)
    stopped = batch.fit(products, start, known=best.x)
    assert stopped.at_bound[0, 2] and not stopped.settled[0] and not stopped.joined[0]
    assert stopped.deviance[0] > best.fun + 1.0
    resumed = batch.fit(products, start, known=best.x, resume=True)
    assert resumed.joined[0]
    assert np.abs(resumed.theta[0] - best.x).max() < 1e-3 * np.abs(best.x).max()


def test_the_first_search_leads_the_other_starts_in_one_batch():
    """Sleepstudy ``(Days | Subject)``, REML, whitened as the optimiser sees it: the first
    search runs in the batched kernel together with the other starts of a small fit and
    leads them. It reaches the minimum the engine's own search from the same start
    reaches; every other start joins it once it has settled (none needs a search of its
    own), and none joins before: with the leader stopped after one iteration, unsettled,
    a start placed on the minimum itself is not reported as joined, and the first search
    is left to the engine."""
    from mixedlm_sklearn._batched_refit import OneTermBatch, repeated_response
    from mixedlm_sklearn._optimize import (_Tracker, _extra_starts, _lead, _local, _moment_start,
                                           _screen_starts)
    from mixedlm_sklearn.datasets import load_sleepstudy

    dev, basis, white = _whitened_slope_model(load_sleepstudy(), "Reaction", "Days", "Subject")
    start = _moment_start(white.cp)
    others = _extra_starts(white)
    first, ran = _lead(_Tracker(white), start, others)
    own = _local(_Tracker(white), start, 1000, 1e-8)
    assert first.fun == pytest.approx(own.fun, abs=1e-8)
    assert np.abs(first.x - own.x).max() < 1e-4 * np.abs(own.x).max()
    assert ran.joined.all() and len(ran.theta) == len(others)
    assert _screen_starts(white, others, first.fun, first.x, ran) == []
    batch = OneTermBatch(white.cp, True)
    early = batch.fit(repeated_response(white.cp, 2), np.array([start, first.x]), max_iter=1, leader=0)
    assert not early.settled[0] and not early.joined.any()

@pytest.mark.parametrize("q", [1, 2, 3, 4])
@pytest.mark.parametrize("diagonal", [False, True])
def test_batched_refit_normalises_by_flipping_columns(q, diagonal):
    """The batched refit reports each replicate's ``L`` with a non-negative diagonal: the
    columns with a negative diagonal entry flipped, so ``L L'`` is unchanged to the bit and
    the other columns are left alone."""
    from mixedlm_sklearn._batched_refit import OneTermBatch

    rng = np.random.default_rng(q)
    n, m = 40, 6
    Z = np.column_stack([np.ones(n)] + [rng.standard_normal(n) for _ in range(q - 1)])
    g = np.arange(n) % m
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    terms = Terms([Term("g", tuple(f"z{i}" for i in range(q)), m, diagonal)])
    batch = OneTermBatch(cross_products(X, rng.standard_normal(n), [(g, Z)], terms), True)
    theta = rng.standard_normal((25, batch.n_theta))
    out = batch.normalised(theta)
    L, L_out = batch.lams(theta)[..., 0], batch.lams(out)[..., 0]
    diag = np.arange(q)
    assert np.all(L_out[diag, diag] >= 0.0)
    flipped = L[diag, diag] < 0.0  # (q, K)
    assert np.array_equal(L_out, np.where(flipped[None], -L, L))
    assert np.array_equal(np.einsum("abk,cbk->ack", L_out, L_out), np.einsum("abk,cbk->ack", L, L))

@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("diagonal, weighted", [(False, False), (False, True), (True, False)])
def test_batched_two_effect_kernel_equals_the_engines_deviance(reml, diagonal, weighted):
    """The batch's closed form for two effects per level (the adjugate of ``B_l``) gives
    the engine's deviance and gradient at every theta of a batch, signs of L's entries
    and near-singular factors included."""
    from mixedlm_sklearn._batched_refit import OneTermBatch, repeated_response

    rng = np.random.default_rng(11 + 2 * reml + weighted)
    n, m = 90, 9
    g = rng.integers(0, m, n)
    g[:m] = np.arange(m)
    x = rng.standard_normal(n)
    Z, X = np.column_stack([np.ones(n), x]), np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = X @ [1.0, 0.5] + rng.standard_normal(m)[g] + 0.4 * rng.standard_normal(m)[g] * x + rng.standard_normal(n)
    w = rng.uniform(0.5, 2.0, n) if weighted else None
    cp = cross_products(X, y, [(g, Z)], Terms([Term("g", ("z0", "z1"), m, diagonal)]), w)
    batch, dev = OneTermBatch(cp, reml), Deviance(cp, reml)
    theta = rng.standard_normal((12, batch.n_theta)) * rng.choice([0.01, 1.0, 5.0], (12, 1))
    value, grad, _, _ = batch.evaluate(theta, repeated_response(cp, theta.shape[0]))
    for k in range(theta.shape[0]):
        want, want_grad = dev.value_and_grad(theta[k])
        assert value[k] == pytest.approx(want, rel=1e-11)
        np.testing.assert_allclose(grad[k], want_grad, rtol=1e-8, atol=1e-8 * max(1.0, abs(want)))


def test_batched_two_effect_kernel_keeps_its_digits_when_b_is_ill_conditioned():
    """x nearly constant within each level and large theta: ``B_l`` has one eigenvalue of
    ~10^7 and one of ~1. The closed form factors it as the engine does and gives the
    engine's deviance (the adjugate's cancellation was 0.07 deviance units off at 10^3)."""
    from mixedlm_sklearn._batched_refit import OneTermBatch, repeated_response

    rng = np.random.default_rng(0)
    m, per = 10, 2000
    g = np.repeat(np.arange(m), per)
    x = rng.standard_normal(m)[g] + 1e-3 * rng.standard_normal(m * per)
    Z, X = np.column_stack([np.ones(g.size), x]), np.column_stack([np.ones(g.size), rng.standard_normal(g.size)])
    y = X @ [1.0, 0.5] + rng.standard_normal(m)[g] + rng.standard_normal(g.size)
    cp = cross_products(X, y, [(g, Z)], Terms([Term("g", ("z0", "z1"), m, False)]))
    batch, dev = OneTermBatch(cp, True), Deviance(cp, True)
    theta = np.array([[s, 0.5 * s, 0.3 * s] for s in (1.0, 1e2, 1e3, 1e4)])
    value, grad, _, _ = batch.evaluate(theta, repeated_response(cp, theta.shape[0]))
    for k in range(theta.shape[0]):
        want, want_grad = dev.value_and_grad(theta[k])
        assert value[k] == pytest.approx(want, rel=1e-10)
        np.testing.assert_allclose(grad[k], want_grad, rtol=1e-6, atol=1e-6 * np.abs(want_grad).max())


# ---- the Newton routine every caller shares -------------------------------------------------


def _whitened_slope_model(df, y, x, group):
    """``y ~ x + (x | group)`` by REML: the deviance, the optimiser's basis and the deviance
    in it (whitened, as the optimiser sees it)."""
    from mixedlm_sklearn._basis import Basis

    codes = pd.factorize(df[group], sort=True)[0]
    X = np.column_stack([np.ones(len(df)), df[x].to_numpy(float)])
    terms = Terms([Term(group, ("(Intercept)", x), int(codes.max()) + 1, False)])
    dev = Deviance(cross_products(X, df[y].to_numpy(float), [(codes, X)], terms), True)
    basis = Basis(dev.cp)
    return dev, basis, dev.in_basis(basis.P, basis.xy_scale)


def _quadratic(A, c):
    A, c = np.asarray(A, dtype=float), np.asarray(c, dtype=float)
    calls = []

    def value_and_grad(x):
        calls.append(x.copy())
        r = x - c
        return 0.5 * float(r @ A @ r), A @ r

    return value_and_grad, (lambda x, g: A), calls


def _scaled_below(tol):
    return lambda it, value, decrement, newton: (np.max(np.abs(newton)) if newton.size else 0.0) < tol


def test_newton_reaches_a_bound_of_a_quadratic_in_one_projected_step():
    from mixedlm_sklearn._newton import minimize

    # separable quadratic whose unconstrained minimum (2, -3) lies outside x >= 0: the
    # projected Newton step lands on the constrained minimum (2, 0) at once, and the next
    # iteration, with the entry on its bound held, finds nothing left to do
    lower = np.zeros(2)
    value_and_grad, hessian, calls = _quadratic(np.diag([2.0, 5.0]), [2.0, -3.0])
    res = minimize(value_and_grad, hessian, np.array([1.0, 1.0]), _scaled_below(1e-12), max_iter=10,
                   held=lambda x, g: np.isfinite(lower) & (x <= lower) & (g > 0),
                   project=lambda x: np.maximum(x, lower))
    assert res.converged and res.n_iter == 2
    assert res.x[1] == 0.0 and res.x[0] == pytest.approx(2.0, rel=1e-15)
    assert len(calls) == 2  # the start and the one accepted trial
    assert res.free.tolist() == [True, False]


def test_newton_halves_a_step_that_overshoots():
    from mixedlm_sklearn._newton import minimize

    # f = sqrt(1 + x^2): a full Newton step from |x| > 1 lands at -x^3, further out and
    # higher; backtracking halves it until Armijo's condition holds, every step descends
    values = []
    trials = []

    def value_and_grad(x):
        return float(np.sqrt(1.0 + x[0] ** 2)), np.array([x[0] / np.sqrt(1.0 + x[0] ** 2)])

    def value(x):
        trials.append(x[0])
        return value_and_grad(x)[0]

    res = minimize(value_and_grad, lambda x, g: np.array([[(1.0 + x[0] ** 2) ** -1.5]]), np.array([3.0]),
                   _scaled_below(1e-10), max_iter=50, value=value, on_step=values.append)
    assert res.converged and abs(res.x[0]) < 1e-10
    assert len(trials) > res.n_iter  # some steps needed more than the full-length trial
    assert trials[0] == pytest.approx(-27.0)  # the full step, rejected
    assert np.all(np.diff([np.sqrt(10.0)] + values) < 0)


def test_newton_releases_a_bound_when_the_gradient_points_inside():
    from mixedlm_sklearn._newton import minimize

    # x0 starts on its bound with the descent direction pointing inside: it is free and
    # moves to its minimum 1; x1 heads out of the region, is projected onto its bound and
    # held there (its gradient then points outwards)
    lower = np.zeros(2)
    value_and_grad, hessian, _ = _quadratic(np.eye(2), [1.0, -1.0])
    res = minimize(value_and_grad, hessian, np.array([0.0, 0.5]), _scaled_below(1e-12), max_iter=10,
                   held=lambda x, g: np.isfinite(lower) & (x <= lower) & (g > 0),
                   project=lambda x: np.maximum(x, lower))
    assert res.converged and res.x[1] == 0.0 and res.x[0] == pytest.approx(1.0, rel=1e-15)


def test_newton_interior_guard_keeps_the_iterates_strictly_inside():
    from mixedlm_sklearn._newton import interior_step, minimize

    # the minimum is on the bound x >= 0; with the interior guard (each step goes at most
    # 75% of the way to the bound) the iterates approach it but never reach it
    lower = np.zeros(1)
    value_and_grad, hessian, calls = _quadratic(np.eye(1), [-1.0])
    res = minimize(value_and_grad, hessian, np.array([1.0]), _scaled_below(1e-12), max_iter=8,
                   guard=lambda x, step, it: interior_step(x, step, lower, 0.75))
    assert res.status == "iteration limit" and res.n_iter == 8
    assert all(point[0] > 0.0 for point in calls)
    assert res.x[0] == pytest.approx(0.25 ** 8)


def test_newton_stops_where_the_hessian_is_not_positive_definite():
    from mixedlm_sklearn._newton import minimize

    # a saddle's Hessian: no step is taken, the point is reported with pos_def False (the
    # callers treat that as information: a saddle to escape, a fit reported not converged)
    A = np.diag([1.0, -1.0])
    value_and_grad, hessian, calls = _quadratic(A, [0.0, 0.0])
    x0 = np.array([0.5, 0.5])
    res = minimize(value_and_grad, hessian, x0, _scaled_below(1e-12), max_iter=10)
    assert res.status == "not positive definite" and not res.pos_def and not res.converged
    np.testing.assert_array_equal(res.x, x0)
    assert len(calls) == 1


def test_newton_finite_difference_hessian_of_a_quadratic():
    from mixedlm_sklearn._newton import fd_hessian

    A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
    x = np.array([0.3, -1.2, 2.0])
    H = fd_hessian(lambda z: A @ z, x, A @ x, np.array([True, True, False]), 1e-6, 1e-2)
    np.testing.assert_allclose(H[:2, :2], A[:2, :2], rtol=1e-8)
    np.testing.assert_allclose(H[2, :2], 0.5 * A[2, :2], rtol=1e-8)  # a held column: half, by symmetrising
