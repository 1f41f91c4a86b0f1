"""Families with a parameter of their own: negative binomial (NB2, ``theta``) and Gamma
(``shape``). Agreement with glmmTMB (the references' primary fits: the Laplace
approximation with the exact Hessian, the family's parameter estimated jointly), the
log-densities against scipy's, the Laplace deviance against an independent per-group
computation, quadrature against numerical integration, and bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, stats

from mixedlm_sklearn import MixedGLMRegressor
from mixedlm_sklearn._family import family_and_link, make_family
from mixedlm_sklearn._glmm import GLMMDeviance
from mixedlm_sklearn._terms import Term, Terms

DATA = Path(__file__).resolve().parents[1] / "data" / "reference" / "structures"


def _reference(name):
    ref = json.loads((DATA / f"{name}.json").read_text())
    labels = {"grouseticks_nb_crossed": ["INDEX", "BROOD", "YEAR", "LOCATION"],
              "gamma_log_sim": ["g"]}[name]
    data = pd.read_csv(DATA / f"{name}.csv", dtype={c: str for c in labels})
    return data, ref


@pytest.fixture(scope="module")
def grouseticks_nb():
    data, ref = _reference("grouseticks_nb_crossed")
    fit = MixedGLMRegressor(family="negative_binomial",
                            formula="TICKS ~ YEAR + cHEIGHT + (1|BROOD) + (1|LOCATION)").fit(data)
    return fit, ref, data


@pytest.fixture(scope="module")
def gamma_log():
    data, ref = _reference("gamma_log_sim")
    fit = MixedGLMRegressor(family="gamma", link="log", formula="y ~ x + (1|g)").fit(data)
    return fit, ref, data


def _assert_agrees(fit, ref, parameter):
    # logLik never below glmmTMB's by more than 1e-6; estimates within 1e-4 relative
    assert fit.llf_ >= ref["llf"] - 1e-6
    assert fit.llf_ == pytest.approx(ref["llf"], abs=1e-4)
    assert fit.converged_
    assert list(fit.fe_params_.index) == ref["fe_names"]
    np.testing.assert_allclose(fit.fe_params_, ref["fe_params"], rtol=1e-4)
    np.testing.assert_allclose(fit.bse_, ref["bse_fe"], rtol=1e-4)
    assert fit.family_params_[parameter] == pytest.approx(ref[parameter], rel=1e-4)
    cov = fit.cov_re_ if isinstance(fit.cov_re_, dict) else {next(iter(ref["sd_re"])): fit.cov_re_}
    for name, sd in ref["sd_re"].items():
        assert np.sqrt(cov[name][0, 0]) == pytest.approx(sd[0], rel=1e-4)
    assert fit.df_model_ == ref["df_model"]
    assert fit.aic_ == pytest.approx(ref["aic"], abs=2e-4)


def test_negative_binomial_crossed_agrees_with_glmmtmb(grouseticks_nb):
    fit, ref, _ = grouseticks_nb
    assert ref["primary_fit"] == "glmmTMB"
    _assert_agrees(fit, ref, "theta")
    # glmer.nb's objective (Fisher weights in log|M|) differs; ours is glmmTMB's
    assert abs(fit.llf_ - ref["fits"]["lme4"]["llf"]) > 0.05


def test_gamma_log_link_agrees_with_glmmtmb(gamma_log):
    fit, ref, _ = gamma_log
    assert ref["primary_fit"] == "glmmTMB"
    _assert_agrees(fit, ref, "shape")
    # the deviance of the response, as R's Gamma()$dev.resids (free of the shape)
    mu = fit.model_.solution.mu
    y = fit.model_.response()
    assert fit.deviance_ == pytest.approx(np.sum(2 * (-np.log(y / mu) + (y - mu) / mu)), rel=1e-12)


def test_held_family_parameter_is_the_profile(grouseticks_nb):
    fit, ref, data = grouseticks_nb
    formula = "TICKS ~ YEAR + cHEIGHT + (1|BROOD) + (1|LOCATION)"
    theta = fit.family_params_["theta"]
    held = MixedGLMRegressor(family="negative_binomial", family_params={"theta": theta},
                             formula=formula).fit(data)
    assert held.family_params_ == {"theta": theta}
    assert held.df_model_ == fit.df_model_ - 1
    assert held.llf_ == pytest.approx(fit.llf_, abs=1e-7)
    # away from the estimate the profile is lower
    other = MixedGLMRegressor(family="negative_binomial", family_params={"theta": 1.5 * theta},
                              formula=formula).fit(data)
    assert other.llf_ < fit.llf_ - 0.1


@pytest.mark.parametrize("theta", [0.3, 2.0, 50.0])
def test_negative_binomial_density_is_scipys(theta):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 30, 200).astype(float)
    eta = rng.normal(1.0, 1.5, 200)
    fam, link = family_and_link("negative_binomial", None, {"theta": theta})
    mu = link.inverse(eta)
    expected = stats.nbinom.logpmf(y, theta, theta / (theta + mu))
    np.testing.assert_allclose(fam.loglik(y, eta, mu, np.ones(200), link), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fam.saturated_loglik(y, np.ones(200)),
                               stats.nbinom.logpmf(y, theta, theta / (theta + np.maximum(y, 1e-300))),
                               rtol=1e-10, atol=1e-10)
    var, _ = fam.variance(mu)
    np.testing.assert_allclose(var, stats.nbinom.var(theta, theta / (theta + mu)), rtol=1e-12)


@pytest.mark.parametrize("link", ["log", "inverse"])
@pytest.mark.parametrize("shape", [0.5, 3.0, 40.0])
def test_gamma_density_is_scipys(shape, link):
    rng = np.random.default_rng(4)
    y = rng.gamma(2.0, 1.5, 200)
    mu = rng.uniform(0.2, 6.0, 200)
    fam, lnk = family_and_link("gamma", link, {"shape": shape})
    eta = lnk(mu)
    expected = stats.gamma.logpdf(y, shape, scale=mu / shape)
    # atol: the log-density is a sum of terms of order 100 (shape 40) that cancel near 0
    np.testing.assert_allclose(fam.loglik(y, eta, mu, np.ones(200), lnk), expected, rtol=1e-12,
                               atol=1e-12)
    var, _ = fam.variance(mu)
    np.testing.assert_allclose(var, stats.gamma.var(shape, scale=mu / shape), rtol=1e-12)


def _one_factor(seed, family, link=None, values=None, n_levels=8, n=64):
    rng = np.random.default_rng(seed)
    codes = np.concatenate([np.arange(n_levels), rng.integers(0, n_levels, n - n_levels)])
    x = rng.standard_normal(n)
    X = np.column_stack([np.ones(n), x])
    eta = 0.8 + 0.4 * x + 0.7 * rng.standard_normal(n_levels)[codes]
    if family == "negative_binomial":
        y = rng.negative_binomial(2.0, 2.0 / (2.0 + np.exp(eta))).astype(float)
    else:
        mu = np.exp(eta) if link == "log" else np.exp(eta)
        y = rng.gamma(3.0, mu / 3.0)
    fam, lnk = family_and_link(family, link, values)
    terms = Terms([Term("g", ("(Intercept)",), n_levels)])
    return X, y, codes, fam, lnk, terms


def _per_group(fam, lnk, y, eta_fixed, lam, laplace):
    """``-2 log`` of one group's integral over its effect ``b = lam u``, ``u ~ N(0, 1)``:
    the Laplace approximation with the exact second derivative at the mode, or the
    integral by adaptive quadrature."""
    def g(u):
        eta = eta_fixed + lam * u
        return -2.0 * fam.loglik(y, eta, lnk.inverse(eta), np.ones(y.size), lnk).sum() + u * u

    mode = optimize.minimize_scalar(g, bracket=(-1.0, 1.0), tol=1e-12).x
    if laplace:
        def second(h):
            return (g(mode + h) - 2.0 * g(mode) + g(mode - h)) / h ** 2

        # Richardson's extrapolation of central differences: truncation O(h^4), and a
        # step large enough for rounding (eps |g| / h^2) to stay below 1e-9
        curvature = (4.0 * second(1e-3) - second(2e-3)) / 3.0
        return g(mode) + np.log(curvature / 2.0)
    g0 = g(mode)
    value, _ = integrate.quad(lambda u: np.exp(-0.5 * (g(u) - g0)), mode - 40, mode + 40,
                              points=[mode], epsabs=1e-13, epsrel=1e-12, limit=400)
    return g0 - 2.0 * np.log(value / np.sqrt(2.0 * np.pi))


@pytest.mark.parametrize("family, link, values", [
    ("negative_binomial", None, {"theta": 1.7}),
    ("gamma", "log", {"shape": 2.5}),
    ("gamma", "inverse", {"shape": 2.5}),
])
def test_laplace_and_quadrature_match_an_independent_computation(family, link, values):
    X, y, codes, fam, lnk, terms = _one_factor(5, family, link, values)
    beta = np.array([0.7, 0.3]) if lnk.name == "log" else np.array([0.4, 0.02])
    # the inverse link's mean is defined for eta > 0 only: a small effect keeps the
    # integrand's edge at eta = 0 (where quadrature converges slowly) far in the tail
    lam = 0.8 if lnk.name == "log" else 0.05
    eta_fixed = X @ beta
    groups = range(codes.max() + 1)
    laplace = sum(_per_group(fam, lnk, y[codes == j], eta_fixed[codes == j], lam, True) for j in groups)
    exact = sum(_per_group(fam, lnk, y[codes == j], eta_fixed[codes == j], lam, False) for j in groups)
    x = np.concatenate([[lam], beta])
    factors = [(codes, np.ones((y.size, 1)))]
    one = GLMMDeviance(X, y, np.ones(y.size), np.zeros(y.size), factors, terms, fam, lnk)
    assert one(x) == pytest.approx(laplace, abs=1e-6)
    many = GLMMDeviance(X, y, np.ones(y.size), np.zeros(y.size), factors, terms, fam, lnk, n_agq=30)
    assert many(x) == pytest.approx(exact, abs=1e-7)
    assert abs(many(x) - exact) < abs(one(x) - exact)


@pytest.mark.parametrize("family, link, values", [
    ("negative_binomial", None, {"theta": 1.7}),
    ("negative_binomial", None, {"theta": 40.0}),
    ("gamma", "log", {"shape": 2.5}),
])
def test_analytic_gradient_of_the_exact_hessian_laplace_is_the_deviance_slope(family, link, values):
    # The gradient follows log|M| through the modes with the slope of the observed
    # weights; Richardson-extrapolated central differences of the deviance (truncation
    # O(h^4)) are the independent check, at points away from the optimum, with prior
    # weights and a random slope (q = 2).
    X, y, codes, fam, lnk, _ = _one_factor(11, family, link, values, n=80)
    rng = np.random.default_rng(3)
    terms = Terms([Term("g", ("(Intercept)", "x"), 8)])
    factors = [(codes, X.copy())]
    weights = rng.uniform(0.5, 2.0, y.size)
    dev = GLMMDeviance(X, y, weights, np.zeros(y.size), factors, terms, fam, lnk)
    assert dev.analytic_gradient
    for x in (np.array([0.6, 0.1, 0.3, 0.8, 0.2]), np.array([1.1, -0.4, 0.5, 0.5, 0.5])):
        _, grad = dev.value_and_grad(x)

        def slope(j, h):
            up, down = x.copy(), x.copy()
            up[j] += h
            down[j] -= h
            return (dev(up) - dev(down)) / (2.0 * h)

        numeric = [(4.0 * slope(j, 1e-4) - slope(j, 2e-4)) / 3.0 for j in range(x.size)]
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


def test_family_parameters_refused_clearly():
    with pytest.raises(ValueError, match="theta must be positive"):
        make_family("negative_binomial", None, {"theta": 0.0})
    with pytest.raises(ValueError, match="theta must be positive"):
        make_family("negative_binomial", None, {"theta": -2.0})
    with pytest.raises(ValueError, match="shape must be positive"):
        make_family("gamma", None, {"shape": np.inf})
    with pytest.raises(TypeError, match="must be a number"):
        make_family("gamma", None, {"shape": "3"})
    with pytest.raises(ValueError, match=r"has \['shape'\], got \['theta'\]"):
        make_family("gamma", None, {"theta": 3.0})
    with pytest.raises(ValueError, match="poisson family has no parameters"):
        make_family("poisson", None, {"theta": 3.0})
    with pytest.raises(ValueError, match="takes the links"):
        make_family("gamma", "logit")


def test_bad_responses_refused_and_the_estimator_unchanged():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 1))
    g = np.repeat(np.arange(8), 5)
    est = MixedGLMRegressor(family="negative_binomial")
    counts = rng.poisson(3.0, 40).astype(float)
    with pytest.raises(ValueError, match="negative binomial counts must be non-negative"):
        est.fit(X, np.where(np.arange(40) == 3, -1.0, counts), groups=g)
    with pytest.raises(ValueError, match="whole numbers"):
        est.fit(X, counts + 0.5, groups=g)
    assert not hasattr(est, "model_")
    with pytest.raises(ValueError, match="Gamma response must be positive"):
        MixedGLMRegressor(family="gamma").fit(X, np.where(np.arange(40) == 5, 0.0, counts + 1), groups=g)
    with pytest.raises(ValueError, match="theta must be positive"):
        MixedGLMRegressor(family="negative_binomial", family_params={"theta": -1.0}).fit(X, counts, groups=g)


def test_glmer_families_and_r_spellings(gamma_log):
    from mixedlm_sklearn import glmer, glmer_nb

    fit, ref, data = gamma_log
    again = glmer("y ~ x + (1|g)", data, family="gamma", link="log")
    assert again.llf_ == pytest.approx(fit.llf_, abs=1e-9)
    as_r_writes_it = glmer("y ~ x + (1|g)", data, family='Gamma(link = "log")')
    assert as_r_writes_it.llf_ == again.llf_ and as_r_writes_it.link == "log"
    with pytest.raises(ValueError, match='family="negative_binomial".*glmer_nb'):
        glmer("y ~ x + (1|g)", data, family="nbinom2")
    with pytest.raises(ValueError, match=r'family_params=\{"theta": 2.5\}'):
        glmer("y ~ x + (1|g)", data, family="MASS::negative.binomial(theta = 2.5)")
    with pytest.raises(ValueError, match="family must be one of"):
        glmer("y ~ x + (1|g)", data, family="tweedie")
    counts, nb_ref = _reference("grouseticks_nb_crossed")
    nb = glmer_nb("TICKS ~ YEAR + cHEIGHT + (1|BROOD) + (1|LOCATION)", counts)
    assert nb.llf_ >= nb_ref["llf"] - 1e-6
    assert nb.family_params_["theta"] == pytest.approx(nb_ref["theta"], rel=1e-4)


def test_summary_names_the_family_parameter(grouseticks_nb, gamma_log):
    nb, _, _ = grouseticks_nb
    theta = nb.family_params_["theta"]
    text = str(nb.summary())
    assert f"Negative Binomial({round(theta, 4):.10g}) (log)" in text
    assert "df: 7" in text
    gamma, _, _ = gamma_log
    assert f"Gamma(shape = {round(gamma.family_params_['shape'], 4):.10g}) (log)" in str(gamma.summary())


def test_r2_and_icc_use_the_family_distribution_variance(gamma_log):
    # Nakagawa et al. (2017), as performance (insight's compute_variances.R): a Gamma
    # model with a log link has the observation-level variance log(1 + 1/shape)
    fit, _, data = gamma_log
    shape = fit.family_params_["shape"]
    var_re = float(fit.cov_re_[0, 0])
    beta = fit.fe_params_.to_numpy()
    var_fixed = np.var(beta[0] + beta[1] * data["x"].to_numpy(), ddof=1)
    var_dist = np.log1p(1.0 / shape)
    r2 = fit.r2()
    total = var_fixed + var_re + var_dist
    assert r2.marginal == pytest.approx(var_fixed / total, rel=1e-6)
    assert r2.conditional == pytest.approx((var_fixed + var_re) / total, rel=1e-6)
    assert fit.icc().adjusted == pytest.approx(var_re / (var_re + var_dist), rel=1e-6)


def _brute_force_rise(fit, j, value):
    """The deviance's rise with parameter ``j`` of ``x = (theta, beta)`` held at ``value``,
    everything else (the random-effect sd, the fixed effects, the family's log shape)
    minimised by Nelder-Mead from two starts: independent of the profile's own search."""
    dev = fit.model_.deviance.with_nodes(1)
    x_hat, s_hat = fit.model_.x.copy(), np.log(fit.family_params_["shape"])
    rest = [k for k in range(x_hat.size) if k != j]

    def f(z):
        dev.set_family_values({"shape": np.exp(z[-1])})
        x = x_hat.copy()
        x[rest] = z[:-1]
        x[j] = value
        x[:dev.n_theta] = np.abs(x[:dev.n_theta])
        return dev(x)

    start = np.append(x_hat[rest], s_hat)
    best = min(optimize.minimize(f, z0, method="Nelder-Mead",
                                 options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).fun
               for z0 in (start, start * 1.1))
    return best - fit.model_.solution.deviance


def test_profile_intervals_reestimate_the_family_parameter(gamma_log):
    # glmmTMB's confint(method = "profile") (extras/gamma_profile.json); the shape is
    # re-estimated at every held value. glmmTMB interpolates its profile: at its lower
    # ends of x and of the sd the brute-force profile decides (the deviance rises there by
    # 3.8475 and 3.8442; at ours by qchisq(0.95, 1) = 3.84146).
    fit, _, _ = gamma_log
    ref = json.loads((DATA.parent / "extras" / "gamma_profile.json").read_text())
    ci = fit.conf_int(method="profile")
    np.testing.assert_allclose(ci.loc["(Intercept)"], [ref["lower"][0], ref["upper"][0]], rtol=1e-6)
    assert ci.loc["x"].iloc[1] == pytest.approx(ref["upper"][1], rel=1e-6)
    assert np.log(ci.loc["sd_(Intercept)|g"].iloc[1]) == pytest.approx(ref["upper"][2], rel=1e-5)
    cutoff = stats.chi2.ppf(0.95, 1)
    for j, ours, theirs in ((2, ci.loc["x"].iloc[0], ref["lower"][1]),
                            (0, ci.loc["sd_(Intercept)|g"].iloc[0], np.exp(ref["lower"][2]))):
        assert _brute_force_rise(fit, j, ours) == pytest.approx(cutoff, abs=1e-4)
        assert _brute_force_rise(fit, j, theirs) > cutoff + 2e-3


@pytest.mark.parametrize("family, values", [("negative_binomial", {"theta": 1.3}),
                                            ("gamma", {"shape": 2.2})])
def test_simulated_responses_have_the_family_moments(family, values):
    fam = make_family(family, "log", values)
    mu = np.repeat([0.5, 4.0, 30.0], 200_000)
    y = fam.sample(np.random.default_rng(1), mu, np.ones(mu.size))
    var, _ = fam.variance(mu)
    for m, v in zip([0.5, 4.0, 30.0], var[::200_000]):
        block = y[mu == m]
        assert block.mean() == pytest.approx(m, rel=0.01)
        assert block.var() == pytest.approx(v, rel=0.03)


def test_drop1_refits_reestimate_the_family_parameter(gamma_log):
    fit, _, data = gamma_log
    table = fit.drop1()
    null = MixedGLMRegressor(family="gamma", link="log", formula="y ~ 1 + (1|g)").fit(data)
    assert null.family_params_["shape"] != pytest.approx(fit.family_params_["shape"], rel=1e-3)
    lrt = np.asarray(table.to_frame()["LRT"] if hasattr(table, "to_frame") else table["LRT"], dtype=float)
    assert np.nanmax(lrt) == pytest.approx(2.0 * (fit.llf_ - null.llf_), abs=1e-5)


def test_adaptive_quadrature_fit_is_the_maximum_of_the_integrated_likelihood(gamma_log):
    # nAGQ = 25 on the Gamma reference (one scalar random effect): the log-likelihood at the
    # fit is the integral by numerical quadrature, and no nearby point is higher
    _, _, data = gamma_log
    fit = MixedGLMRegressor(family="gamma", link="log", n_agq=25, formula="y ~ x + (1|g)").fit(data)
    assert fit.converged_
    codes, levels = pd.factorize(data["g"])
    X = np.column_stack([np.ones(len(data)), data["x"].to_numpy()])
    y = data["y"].to_numpy()

    def deviance(shape, sd, beta):
        fam, lnk = family_and_link("gamma", "log", {"shape": shape})
        eta = X @ beta
        return sum(_per_group(fam, lnk, y[codes == j], eta[codes == j], sd, False)
                   for j in range(levels.size))

    shape, sd = fit.family_params_["shape"], float(np.sqrt(fit.cov_re_[0, 0]))
    beta = fit.fe_params_.to_numpy()
    best = deviance(shape, sd, beta)
    assert -0.5 * best == pytest.approx(fit.llf_, abs=1e-6)
    for step in ([1.01, 1.0, 0.0, 0.0], [0.99, 1.0, 0.0, 0.0], [1.0, 1.02, 0.0, 0.0],
                 [1.0, 0.98, 0.0, 0.0], [1.0, 1.0, 0.01, 0.0], [1.0, 1.0, 0.0, -0.005]):
        assert deviance(shape * step[0], sd * step[1], beta + np.array(step[2:])) > best


@pytest.mark.parametrize("s_min, s0, width", [(1.19, -0.17, 0.5), (-3.0, 4.0, 0.5), (2.5, 2.4999, 0.05),
                                            (0.0, 7.0, 0.05)])
def test_search_on_the_family_parameter_finds_the_profile_minimum(s_min, s0, width):
    # the search on log phi closes on the root of the profile's slope: a smooth,
    # asymmetric profile (quartic and exponential terms), several starts and first steps
    from mixedlm_sklearn._glmm import _LOG_FAMILY_RANGE, _root_of_slope

    lo, hi = _LOG_FAMILY_RANGE
    seen = []

    def value(s):
        d = s - s_min
        return d ** 2 + 0.1 * d ** 4 + np.expm1(0.3 * d) - 0.3 * d

    def profile(s):
        seen.append(s)
        return value(s)

    def slope(s):
        d = s - s_min
        return 2 * d + 0.4 * d ** 3 + 0.3 * np.exp(0.3 * d) - 0.3

    result = _root_of_slope(profile, slope, s0, width, lo, hi)
    assert result.success
    assert min(seen, key=value) == pytest.approx(s_min, abs=1e-7)
    assert len(seen) <= 25


def test_search_on_the_family_parameter_stops_at_the_end_of_the_range():
    from mixedlm_sklearn._glmm import _LOG_FAMILY_RANGE, _root_of_slope

    lo, hi = _LOG_FAMILY_RANGE
    seen = []
    result = _root_of_slope(lambda s: seen.append(s) or -s, lambda s: -1.0, 0.0, 0.5, lo, hi)
    assert result.success and max(seen) == hi  # no overdispersion: theta runs to its end
    assert _root_of_slope(lambda s: 0.0, lambda s: np.nan, 0.0, 0.5, lo, hi) is None
