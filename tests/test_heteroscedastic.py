"""Heteroscedastic residuals (nlme varIdent): against nlme 3.1-162 and against independent math."""

import numpy as np
import pytest
from _oracle import profiled_dense_loglik
from _reference import VARIDENT_CASES, load_case

from mixedlm_sklearn._deviance import ProfiledDeviance, theta_from_lambda
from mixedlm_sklearn._heteroscedastic import (
    _fit as _fit_by_method,
    _WhitenedJoint,
    check_strata,
    combine_stats,
    fit_heteroscedastic,
    ratio_gradient,
    stratum_stats,
)
from mixedlm_sklearn._optimize import _basis, fit_deviance
from mixedlm_sklearn._stats import compute_stats
from mixedlm_sklearn._validation import encode_groups


def _case(name):
    frame, answers = load_case(name)
    X = frame[[c for c in frame if c.startswith("X_")]].to_numpy(float)
    Z = frame[[c for c in frame if c.startswith("Z_")]].to_numpy(float)
    y = frame["y"].to_numpy(float)
    codes, groups = encode_groups(frame["group"], len(frame))
    strata, labels = encode_groups(frame["stratum"], len(frame))
    return X, y, Z, codes, groups.size, strata, labels, answers


def _fit(X, y, Z, codes, m, strata, n_strata, reml, weights=None):
    stats = stratum_stats(X, y, Z, codes, m, strata, n_strata, weights)
    return fit_heteroscedastic(stats, reml=reml, diagonal=False, max_iter=1000, tol=1e-12)


def _data(n=150, m=12, q=2, n_strata=3, seed=0, weights=False):
    """Random-slope data whose residual SD differs by stratum (1, 2, 0.5, ...)."""
    rng = np.random.default_rng(seed)
    codes = np.sort(rng.integers(0, m, n))
    codes[:m] = np.arange(m)
    strata = rng.integers(0, n_strata, n)
    strata[:n_strata] = np.arange(n_strata)
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    Z = np.column_stack([np.ones(n), rng.uniform(0, 3, n)])[:, :q]
    b = rng.standard_normal((m, q)) * np.array([1.2, 0.5])[:q]
    sd = np.array([1.0, 2.0, 0.5, 1.5])[:n_strata]
    y = X @ [2.0, -1.0] + np.einsum("ij,ij->i", Z, b[codes]) + sd[strata] * rng.standard_normal(n)
    w = rng.uniform(0.5, 2.0, n) if weights else None
    return X, y, Z, codes, m, strata, n_strata, w


# ---- against nlme -----------------------------------------------------------------------

@pytest.fixture(scope="module", params=VARIDENT_CASES)
def nlme_fit(request):
    X, y, Z, codes, m, strata, labels, answers = _case(request.param)
    dev, sol, info, ratios = _fit(X, y, Z, codes, m, strata, labels.size, answers["reml"])
    return dev, sol, info, ratios, labels, answers


def test_nlme_loglik(nlme_fit):
    dev, sol, info, _, _, answers = nlme_fit
    assert info.converged, info.message
    llf = -0.5 * sol.deviance
    # nlme stops a little short of the optimum: we may only be higher, and by little.
    assert llf == pytest.approx(answers["llf"], abs=1e-6)
    assert llf >= answers["llf"] - 1e-9


def test_nlme_fixed_effects_and_standard_errors(nlme_fit):
    _, sol, _, _, _, answers = nlme_fit
    bse = np.asarray(answers["bse_fe"])
    np.testing.assert_allclose((sol.beta - answers["fe_params"]) / bse, 0.0, atol=1e-4)
    # nlme's vcov is scale * (X'V^{-1}X)^{-1} at the estimates, as ours.
    np.testing.assert_allclose(np.sqrt(np.diag(sol.cov_beta())), bse, rtol=1e-4)


def test_nlme_variances(nlme_fit):
    _, sol, _, ratios, labels, answers = nlme_fit
    cov_re = sol.scale * sol.lam @ sol.lam.T
    expected = np.asarray(answers["cov_re"]).reshape(cov_re.shape)
    np.testing.assert_allclose(cov_re, expected, rtol=1e-3)
    residual = {label: sol.scale * r for label, r in zip(labels, ratios)}
    assert ratios[0] == 1.0
    assert set(residual) == set(answers["residual_var_by_stratum"])
    for label, value in answers["residual_var_by_stratum"].items():
        assert residual[label] == pytest.approx(value, rel=1e-4), label


def test_nlme_information_criteria(nlme_fit):
    dev, sol, _, ratios, _, answers = nlme_fit
    # nlme counts fixed effects, theta, the scale and the free variance ratios ...
    df_model = dev.p + dev.n_theta + 1 + (ratios.size - 1)
    assert df_model == answers["df_model"]
    llf = -0.5 * sol.deviance
    assert -2 * llf + 2 * df_model == pytest.approx(answers["aic"], abs=2e-6)
    # ... and its BIC uses n - p observations for REML fits (lme4 uses n).
    n_bic = dev.stats.n_obs - (dev.p if answers["reml"] else 0)
    assert -2 * llf + np.log(n_bic) * df_model == pytest.approx(answers["bic"], abs=2e-6)


def test_nlme_loglik_convention_at_nlme_estimates():
    """At nlme's estimates our log-likelihood is nlme's: same REML constant, same weights term."""
    for name in VARIDENT_CASES:
        X, y, Z, codes, m, strata, labels, answers = _case(name)
        stats = stratum_stats(X, y, Z, codes, m, strata, labels.size)
        resid = np.array([answers["residual_var_by_stratum"][label] for label in labels])
        q = Z.shape[1]
        lam = np.linalg.cholesky(np.asarray(answers["cov_re"]).reshape(q, q) / resid[0])
        dev = ProfiledDeviance(combine_stats(stats, resid / resid[0]), reml=answers["reml"])
        sol = dev.solve(theta_from_lambda(lam))
        assert -0.5 * sol.deviance == pytest.approx(answers["llf"], abs=1e-8), name
        assert sol.scale == pytest.approx(resid[0], rel=1e-9), name


# ---- properties -------------------------------------------------------------------------

def test_statistics_with_unit_ratios_are_the_homoscedastic_statistics():
    X, y, Z, codes, m, strata, k, w = _data(weights=True)
    combined = combine_stats(stratum_stats(X, y, Z, codes, m, strata, k, w), np.ones(k))
    whole = compute_stats(X, y, Z, codes, m, w)
    for field in ("ztz", "ztxy", "xyxy", "counts"):
        np.testing.assert_allclose(getattr(combined, field), getattr(whole, field), rtol=1e-12)
    assert combined.n_obs == whole.n_obs
    assert combined.sum_log_weights == pytest.approx(whole.sum_log_weights, rel=1e-12)


@pytest.mark.parametrize("reml", [True, False])
def test_single_stratum_is_the_homoscedastic_fit(reml):
    X, y, Z, codes, m, _, _, _ = _data()
    one = np.zeros(len(y), dtype=int)
    _, sol, info, ratios = _fit(X, y, Z, codes, m, one, 1, reml)
    _, ref, _ = fit_deviance(compute_stats(X, y, Z, codes, m), reml=reml)
    np.testing.assert_array_equal(ratios, [1.0])
    assert sol.deviance == pytest.approx(ref.deviance, rel=1e-12)
    np.testing.assert_allclose(sol.beta, ref.beta, rtol=1e-9)


@pytest.mark.parametrize("reml", [True, False])
def test_equal_strata_give_ratios_near_one_and_the_homoscedastic_fit(reml):
    """Strata that are a random split of homoscedastic data: ratios ~ 1, fit ~ homoscedastic."""
    rng = np.random.default_rng(5)
    X, y, Z, codes, m, _, _, _ = _data(n=3000, m=40, n_strata=1, seed=5)
    strata = rng.integers(0, 2, y.size)
    _, sol, info, ratios = _fit(X, y, Z, codes, m, strata, 2, reml)
    _, ref, _ = fit_deviance(compute_stats(X, y, Z, codes, m), reml=reml)
    assert info.converged
    assert ratios[1] == pytest.approx(1.0, abs=0.1)
    # one extra parameter can only raise the likelihood, by about chi2_1 / 2
    assert 0.0 <= ref.deviance - sol.deviance < 5.0
    np.testing.assert_allclose(sol.beta, ref.beta, rtol=1e-2)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("weights", [False, True])
def test_ratio_gradient_matches_finite_differences(reml, q, weights):
    X, y, Z, codes, m, strata, k, w = _data(q=q, seed=3, weights=weights)
    stats = stratum_stats(X, y, Z, codes, m, strata, k, w)
    theta = np.array([0.7, -0.2, 0.4])[: 1 if q == 1 else 3]
    eta = np.array([0.0, 0.3, -0.5])

    def deviance(e):
        return ProfiledDeviance(combine_stats(stats, np.exp(2 * e)), reml=reml)(theta)

    dev = ProfiledDeviance(combine_stats(stats, np.exp(2 * eta)), reml=reml)
    grad = ratio_gradient(dev, dev.solve(theta), stats, np.exp(2 * eta))
    h = 1e-6
    numeric = [(deviance(eta + h * e) - deviance(eta - h * e)) / (2 * h) for e in np.eye(k)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("diagonal", [False, True])
def test_whitened_joint_gradient_matches_finite_differences(reml, diagonal):
    """Value from the caller's basis, theta-gradient from the whitened one: consistent."""
    X, y, Z, codes, m, strata, k, w = _data(seed=6, weights=True)
    stats = stratum_stats(X, y, Z, codes, m, strata, k, w)
    P = _basis(combine_stats(stats, np.ones(k)), diagonal)
    white = _WhitenedJoint(stats, reml, diagonal, P)
    x = np.array([0.9, 0.3, 0.6, 0.4, -0.7]) if not diagonal else np.array([0.9, 0.6, 0.4, -0.7])
    _, grad = white.value_and_grad(x)
    h = 1e-6
    numeric = [(white(x + h * e) - white(x - h * e)) / (2 * h) for e in np.eye(x.size)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)
    # the value is the deviance in lme4's parametrisation at the same covariance
    ratios = np.exp(2 * np.concatenate([[0.0], x[-2:]]))
    dev = ProfiledDeviance(combine_stats(stats, ratios), reml=reml, diagonal=diagonal)
    assert white(x) == pytest.approx(dev(white.to_theta(x[:-2])), rel=1e-13)


@pytest.mark.parametrize("reml", [True, False])
def test_deviance_equals_dense_heteroscedastic_likelihood(reml):
    """combine_stats + ProfiledDeviance against a dense n x n Gaussian likelihood."""
    X, y, Z, codes, m, strata, k, w = _data(n=80, weights=True)
    ratios = np.array([1.0, 3.0, 0.4])
    dev = ProfiledDeviance(combine_stats(stratum_stats(X, y, Z, codes, m, strata, k, w), ratios),
                           reml=reml)
    sol = dev.solve(np.array([0.9, 0.1, 0.3]))
    cov_re = sol.scale * sol.lam @ sol.lam.T
    row_weights = w / ratios[strata]
    dense, beta = profiled_dense_loglik(X, y, Z, codes, cov_re, sol.scale, reml, row_weights)
    assert -0.5 * sol.deviance == pytest.approx(dense, rel=1e-11)
    np.testing.assert_allclose(sol.beta, beta, rtol=1e-9)


@pytest.mark.parametrize("reml", [True, False])
def test_fit_is_the_optimum_of_the_dense_likelihood(reml):
    """Moving any variance parameter away from the fit lowers the dense likelihood."""
    X, y, Z, codes, m, strata, k, _ = _data(n=90, q=1)
    _, sol, info, ratios = _fit(X, y, Z, codes, m, strata, k, reml)
    assert info.converged, info.message

    def loglik(tau, scale, r):
        cov_re = np.array([[tau]])
        return profiled_dense_loglik(X, y, Z, codes, cov_re, scale, reml, 1 / r[strata])[0]

    tau, best = sol.scale * sol.lam[0, 0] ** 2, -0.5 * sol.deviance
    assert loglik(tau, sol.scale, ratios) == pytest.approx(best, rel=1e-11)
    for factor in (0.99, 1.01):
        assert loglik(tau * factor, sol.scale, ratios) < best
        assert loglik(tau, sol.scale * factor, ratios) < best
        for s in (1, 2):
            r = ratios.copy()
            r[s] *= factor
            assert loglik(tau, sol.scale, r) < best


@pytest.mark.parametrize("reml", [True, False])
def test_equal_prior_weights_change_only_the_scale(reml):
    X, y, Z, codes, m, strata, k, _ = _data(seed=2)
    c = 4.0
    _, plain, _, ratios = _fit(X, y, Z, codes, m, strata, k, reml)
    _, weighted, info, ratios_w = _fit(X, y, Z, codes, m, strata, k, reml, np.full(y.size, c))
    assert info.converged
    assert weighted.scale == pytest.approx(c * plain.scale, rel=1e-7)
    np.testing.assert_allclose(ratios_w, ratios, rtol=1e-7)
    np.testing.assert_allclose(weighted.beta, plain.beta, rtol=1e-7)
    np.testing.assert_allclose(weighted.cov_beta(), plain.cov_beta(), rtol=1e-6)
    # the covariance of the random effects and the likelihood are those of the same model
    np.testing.assert_allclose(weighted.scale * weighted.lam @ weighted.lam.T,
                               plain.scale * plain.lam @ plain.lam.T, rtol=1e-6)
    assert weighted.deviance == pytest.approx(plain.deviance, rel=1e-11)


def test_choice_of_reference_stratum_does_not_change_the_fit():
    X, y, Z, codes, m, strata, k, _ = _data(seed=4)
    _, a, _, ratios_a = _fit(X, y, Z, codes, m, strata, k, True)
    relabel = np.array([2, 0, 1])  # stratum 2 becomes the reference
    _, b, _, ratios_b = _fit(X, y, Z, codes, m, relabel[strata], k, True)
    assert b.deviance == pytest.approx(a.deviance, rel=1e-11)
    np.testing.assert_allclose(b.scale * ratios_b[relabel], a.scale * ratios_a, rtol=1e-6)
    np.testing.assert_allclose(b.beta, a.beta, rtol=1e-7)


def test_recovers_simulated_standard_deviations():
    X, y, Z, codes, m, strata, k, _ = _data(n=6000, m=60, seed=7)
    _, sol, info, ratios = _fit(X, y, Z, codes, m, strata, k, True)
    assert info.converged
    np.testing.assert_allclose(np.sqrt(sol.scale * ratios), [1.0, 2.0, 0.5], rtol=0.05)


def _singular_data(seed=3):
    """Random intercept and slope, but no slope variance in truth: a singular fit."""
    rng = np.random.default_rng(seed)
    n, m = 200, 20
    codes = rng.integers(0, m, n)
    codes[:m] = np.arange(m)
    strata = rng.integers(0, 2, n)
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    Z = np.column_stack([np.ones(n), rng.uniform(0, 3, n)])
    intercepts = rng.standard_normal(m)
    y = X @ [1.0, 2.0] + intercepts[codes] + np.where(strata, 3.0, 1.0) * rng.standard_normal(n)
    return X, y, Z, codes, m, strata, 2


@pytest.mark.parametrize("diagonal", [False, True])
def test_singular_fit_lands_on_the_boundary(diagonal):
    X, y, Z, codes, m, strata, k = _singular_data()
    stats = stratum_stats(X, y, Z, codes, m, strata, k)
    dev, sol, info, ratios = fit_heteroscedastic(stats, reml=True, diagonal=diagonal)
    assert info.converged, info.message
    if diagonal:
        # fit_deviance does not snap a diagonal fit onto its bound (it ends at ~1e-18)
        assert sol.theta[-1] < 1e-8
    else:
        assert info.at_bound[-1] and sol.theta[-1] == 0.0  # the slope's variance
    # residual SDs 1 and 3 in truth (3.4 / 1.2 in the sample's OLS residuals)
    assert np.sqrt(ratios[1]) == pytest.approx(3.0, rel=0.3)

    # no direction into the feasible region improves the deviance
    def joint_at(t, r):
        return ProfiledDeviance(combine_stats(stats, r), reml=True, diagonal=diagonal)(t)

    for j in range(sol.theta.size):
        for h in (-1e-4, 1e-4):
            moved = sol.theta.copy()
            moved[j] += h
            if moved[j] >= dev.lower_bounds()[j]:
                assert joint_at(moved, ratios) > sol.deviance
    for factor in (0.999, 1.001):
        assert joint_at(sol.theta, ratios * [1.0, factor]) > sol.deviance


@pytest.mark.parametrize(
    "case", ["orthodont_varident_reml", "dietox_varident_ml", "simulated", "singular", "diagonal"])
def test_profiling_fallback_agrees_with_the_joint_fit(case):
    """The two optimisation paths (joint L-BFGS-B; profiling the ratios) find the same optimum."""
    diagonal = case == "diagonal"
    if case in VARIDENT_CASES:
        X, y, Z, codes, m, strata, labels, answers = _case(case)
        k, reml = labels.size, answers["reml"]
    elif case == "singular":
        X, y, Z, codes, m, strata, k = _singular_data()
        reml = False
    else:
        X, y, Z, codes, m, strata, k, _ = _data(seed=9)
        reml = True
    stats = stratum_stats(X, y, Z, codes, m, strata, k)
    _, joint, info_j, ratios_j = _fit_by_method(stats, reml, diagonal, 1000, 1e-12, method="joint")
    _, prof, info_p, ratios_p = _fit_by_method(stats, reml, diagonal, 1000, 1e-12, method="profile")
    assert info_j.converged and info_p.converged
    assert joint.deviance == pytest.approx(prof.deviance, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(ratios_j, ratios_p, rtol=1e-6)
    np.testing.assert_allclose(joint.theta, prof.theta, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(joint.beta, prof.beta, rtol=1e-8)


# ---- errors and degenerate fits ---------------------------------------------------------

def test_single_row_stratum_is_refused_by_name():
    X, y, Z, codes, m, strata, k, _ = _data()
    strata = strata.copy()
    strata[strata == 2] = 1
    strata[7] = 2
    with pytest.raises(ValueError, match="stratum 'Girls'.*single row"):
        check_strata(strata, 3, labels=["Boys", "Men", "Girls"])
    with pytest.raises(ValueError, match="stratum 'Girls'.*single row"):
        stratum_stats(X, y, Z, codes, m, strata, 3, labels=["Boys", "Men", "Girls"])
    stats = [compute_stats(X[strata == s], y[strata == s], Z[strata == s], codes[strata == s], m)
             for s in range(3)]
    with pytest.raises(ValueError, match="stratum number 2 .* 1 row"):
        fit_heteroscedastic(stats, reml=True, diagonal=False, max_iter=1000, tol=1e-12)


def test_empty_stratum_is_refused():
    with pytest.raises(ValueError, match="stratum 'b'.*no rows"):
        check_strata(np.array([0, 0, 2, 2]), 3, labels=["a", "b", "c"])
    np.testing.assert_array_equal(check_strata(np.array([0, 1, 0, 1]), 2), [2, 2])


def test_exactly_fitted_stratum_is_reported_not_converged():
    """Two rows with their own intercept and slope: the likelihood rises (to a finite
    supremum) as their residual variance goes to 0, so there is no interior optimum."""
    X, y, Z, codes, m, strata, _, _ = _data(n=60, n_strata=1, q=1)
    strata = np.zeros(y.size, dtype=int)
    strata[[3, 40]] = 1
    own = (strata == 1).astype(float)
    X = np.column_stack([X, own, own * X[:, 1]])
    _, _, info, ratios = _fit(X, y, Z, codes, m, strata, 2, False)
    assert not info.converged
    assert "stratum number 1 tends to 0" in info.message
    stats = stratum_stats(X, y, Z, codes, m, strata, 2)
    _, _, info, _ = fit_heteroscedastic(stats, reml=True, labels=["main", "odd pair"])
    assert not info.converged
    assert "stratum 'odd pair' tends to 0" in info.message
    assert ratios[1] < 1e-11
