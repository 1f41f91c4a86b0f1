"""Simulation-based inference for GLMMs: simulate, bootstrap, pb_test.

References and oracles:
* Moments written out here, no package code: a Poisson GLMM's counts given a normal
  random effect are lognormal-Poisson mixtures, so with ``v_ij = z_i' cov_re z_j`` and
  ``m_i = exp(offset_i + x_i'b + v_ii / 2)``: ``E y_i = m_i``,
  ``Cov(y_i, y_j) = m_i m_j (exp(v_ij) - 1) + [i = j] m_i`` in a group, 0 across groups.
  A logistic GLMM's marginal probabilities ``int expit(eta_i + s z) phi(z) dz`` (and of
  two rows of a group both being 1) by adaptive quadrature (scipy.integrate.quad).
  Monte Carlo tolerance: every simulated moment within 4.5 standard errors (estimated
  from the draws) of the exact one.
* lme4 1.1-31 ``bootMer(fit, nsim = 1000)`` of the cbpp binomial model
  (extras/glmm_bootstrap.json, written by glmm_bootstrap.R): median and quartiles of every
  parameter's replicates; ours must agree within 4 standard errors.
* Brute force: replicate ``j`` of a bootstrap equals a plain (cold-start) fit of the
  estimator to ``simulate(...)[:, j]``; an independent simulation written here with numpy
  and refitted with plain fits gives the same replicate distribution.
"""

import json
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats
from sklearn.exceptions import ConvergenceWarning

from mixedlm_sklearn import MixedGLMClassifier, MixedGLMRegressor, glmer, lmer, pb_test
from mixedlm_sklearn.datasets import load_cbpp, load_sleepstudy
from mixedlm_sklearn.inference import bootstrap, simulate
from mixedlm_sklearn import _refit as refit_module

R_BOOT = json.loads((Path(__file__).resolve().parents[1] / "data" / "reference" / "extras"
                     / "glmm_bootstrap.json").read_text())

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
Z_TOL = 4.5  # simulated moments: standard errors from the exact value


def _quiet(f, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*args, **kwargs)


@pytest.fixture(scope="module")
def cbpp():
    return load_cbpp()


@pytest.fixture(scope="module")
def cbpp_fit(cbpp):
    return glmer(CBPP, cbpp)


@pytest.fixture(scope="module")
def cbpp_boot(cbpp_fit):
    return bootstrap(cbpp_fit, n_boot=200, random_state=20261202)


def _cbpp_design(cbpp):
    return cbpp["period"].astype(str).str.get_dummies().iloc[:, 1:].add_prefix("period")


def _poisson_data(seed=1):
    """A random intercept and slope, and an offset (log exposure)."""
    rng = np.random.default_rng(seed)
    m, n = 12, 8
    g = np.repeat(np.arange(m), n)
    x = rng.uniform(-1.5, 1.5, m * n)
    exposure = rng.uniform(0.5, 2.0, m * n)
    b = rng.multivariate_normal([0.0, 0.0], [[0.3, 0.05], [0.05, 0.25]], m)
    y = rng.poisson(exposure * np.exp(0.8 + 0.4 * x + b[g, 0] + b[g, 1] * x))
    return x, g, np.log(exposure), y


@pytest.fixture(scope="module")
def poisson_fit():
    x, g, offset, y = _poisson_data()
    Z = np.column_stack([np.ones_like(x), x])
    est = MixedGLMRegressor(family="poisson").fit(x[:, None], y, groups=g, Z=Z, offset=offset)
    return est, (x, g, offset, y, Z)


def _max_z(simulated_mean, exact, se):
    return float(np.max(np.abs(simulated_mean - exact) / se))


# ---- simulate --------------------------------------------------------------------------------


def test_poisson_simulate_moments(poisson_fit):
    """Means of all rows and the covariance of the rows of two groups (within: the
    lognormal-Poisson covariance; across: 0) against the exact moments of the fitted model."""
    est, (x, g, offset, y, Z) = poisson_fit
    n_sim = 20000
    Y = est.simulate(n_sim=n_sim, random_state=11)
    assert Y.shape == (x.size, n_sim)
    assert np.array_equal(Y, np.round(Y)) and Y.min() >= 0
    cov = est.cov_re_
    eta = offset + est.intercept_ + est.coef_[0] * x
    V = np.einsum("ia,ab,jb->ij", Z, cov, Z) * (g[:, None] == g[None, :])
    mean = np.exp(eta + 0.5 * np.diag(V))
    exact_cov = np.outer(mean, mean) * np.expm1(V) + np.diag(mean)
    assert _max_z(Y.mean(axis=1), mean, Y.std(axis=1) / np.sqrt(n_sim)) < Z_TOL
    rows = np.flatnonzero(g < 2)  # two groups: the within and the across blocks
    D = Y[rows] - mean[rows, None]
    products = D[:, None, :] * D[None, :, :]
    se = products.std(axis=2) / np.sqrt(n_sim)
    assert _max_z(products.mean(axis=2), exact_cov[np.ix_(rows, rows)], se) < Z_TOL
    # the test can tell: the moments without the random slope's variance are far off
    V_wrong = V.copy()
    V_wrong[g[:, None] == g[None, :]] = cov[0, 0]
    wrong = np.exp(eta + 0.5 * np.diag(V_wrong))
    assert _max_z(Y.mean(axis=1), wrong, Y.std(axis=1) / np.sqrt(n_sim)) > 10


def test_poisson_simulate_conditional_keeps_the_modes(poisson_fit):
    est, (x, g, offset, y, Z) = poisson_fit
    n_sim = 20000
    Y = est.simulate(n_sim=n_sim, random_state=3, conditional=True)
    mu = est.predict(x[:, None], groups=g, Z=Z, offset=offset)  # conditional on the BLUPs
    np.testing.assert_allclose(mu, est.model_.solution.mu, rtol=1e-10)
    assert _max_z(Y.mean(axis=1), mu, np.sqrt(mu / n_sim)) < Z_TOL
    # Poisson: variance = mean; the variance of (y - mu)^2 is mu + 2 mu^2
    assert _max_z(((Y - mu[:, None]) ** 2).mean(axis=1), mu, np.sqrt((mu + 2 * mu**2) / n_sim)) < Z_TOL


def _marginal(eta, s, other=None):
    """P(y = 1) of a row, or of two rows of a group both being 1, by quadrature."""
    def f(z):
        p = special.expit(eta + s * z)
        if other is not None:
            p = p * special.expit(other + s * z)
        return p * stats.norm.pdf(z)
    return integrate.quad(f, -np.inf, np.inf, epsabs=1e-12)[0]


def test_bernoulli_simulate_marginal_probabilities():
    rng = np.random.default_rng(2)
    m, n = 15, 10
    g = np.repeat(np.arange(m), n)
    x = rng.standard_normal(m * n)
    y = np.where(rng.uniform(size=m * n) < special.expit(-0.3 + 0.8 * x + 1.0 * rng.standard_normal(m)[g]),
                 "sick", "well")
    clf = MixedGLMClassifier().fit(x[:, None], y, groups=g)
    n_sim = 20000
    Y = clf.simulate(n_sim=n_sim, random_state=5)
    assert set(np.unique(Y)) == {"sick", "well"}
    hit = Y == clf.classes_[1]
    eta = clf.intercept_ + clf.coef_[0] * x
    s = float(np.sqrt(clf.cov_re_[0, 0]))
    p = np.array([_marginal(e, s) for e in eta])
    assert _max_z(hit.mean(axis=1), p, np.sqrt(p * (1 - p) / n_sim)) < Z_TOL
    # two rows of a group are dependent through their shared effect
    pairs = [(0, j) for j in range(1, n)]
    both = np.array([_marginal(eta[i], s, eta[j]) for i, j in pairs])
    sim_both = np.array([(hit[i] & hit[j]).mean() for i, j in pairs])
    assert _max_z(sim_both, both, np.sqrt(both * (1 - both) / n_sim)) < Z_TOL
    assert np.all(both > p[0] * p[1:n] + 0.01)  # not independent
    # the codes of simulate() are the labels' positions in classes_
    np.testing.assert_array_equal(simulate(clf, 4, random_state=5), hit[:, :4].astype(float))


def test_binomial_simulate_proportions_of_trials(cbpp, cbpp_fit):
    """cbpp: successes of size trials, as proportions; their mean and variance as the model's
    (E[mu] and E[mu(1 - mu)] / size + Var(mu) by quadrature)."""
    n_sim = 20000
    Y = cbpp_fit.simulate(n_sim=n_sim, random_state=9)
    size = cbpp["size"].to_numpy(dtype=float)
    k = Y * size[:, None]
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert Y.min() >= 0 and Y.max() <= 1
    eta = cbpp_fit.decision_function(cbpp, re_form=None)  # the population level
    s = float(np.sqrt(cbpp_fit.cov_re_[0, 0]))
    mean = np.array([_marginal(e, s) for e in eta])
    second = np.array([_marginal(e, s, e) for e in eta])  # E[mu^2]
    var = (mean - second) / size + second - mean**2
    assert _max_z(Y.mean(axis=1), mean, np.sqrt(var / n_sim)) < Z_TOL
    D2 = (Y - mean[:, None]) ** 2
    assert _max_z(D2.mean(axis=1), var, D2.std(axis=1) / np.sqrt(n_sim)) < Z_TOL


def test_simulate_refuses_what_has_no_distribution(cbpp):
    x, g, offset, y = _poisson_data()
    weighted = MixedGLMRegressor(family="poisson").fit(x[:, None], y, groups=g,
                                                       sample_weight=np.full(x.size, 2.0))
    with pytest.raises(ValueError, match="Poisson model fitted with sample_weight"):
        weighted.simulate(2)
    frac = _quiet(MixedGLMRegressor(family="binomial").fit, _cbpp_design(cbpp),
                  cbpp["incidence"] / cbpp["size"], groups=cbpp["herd"],
                  sample_weight=cbpp["size"] + 0.5)
    with pytest.raises(ValueError, match="whole numbers of trials"):
        frac.bootstrap(n_boot=2)
    y01 = (y > np.median(y)).astype(int)
    clf = MixedGLMClassifier().fit(x[:, None], y01, groups=g, sample_weight=np.full(x.size, 3.0))
    with pytest.raises(ValueError, match="no single label per row"):
        clf.simulate(2)
    props = simulate(clf, 2000, random_state=1)  # the proportions of 3 "rows"
    np.testing.assert_allclose(props * 3, np.round(props * 3), atol=1e-12)


def test_simulate_is_reproducible_and_replicate_wise(cbpp_fit):
    a = cbpp_fit.simulate(7, random_state=np.random.SeedSequence(4))
    np.testing.assert_array_equal(a, cbpp_fit.simulate(7, random_state=np.random.SeedSequence(4)))
    np.testing.assert_array_equal(a[:, :3], cbpp_fit.simulate(3, random_state=np.random.SeedSequence(4)))
    assert not np.array_equal(a, cbpp_fit.simulate(7, random_state=5))


# ---- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_cbpp_matches_lme4(cbpp_boot):
    """Median and interquartile range of each parameter's replicates against lme4's bootMer
    (1,000 replicates), within 4 standard errors (normal-theory errors of sample quantiles,
    sigma = IQR / 1.349: median 1.2533 sigma / sqrt(n), IQR 1.573 sigma / sqrt(n)). Quartiles,
    not moments: a replicate without a case in period 4 has an estimate of about -20 (ours
    and lme4's alike), which moves a mean and a standard deviation but not a quartile. The
    percentile interval covers the fit."""
    assert cbpp_boot.n_failed == 0
    assert list(cbpp_boot.estimate.index) == R_BOOT["names"]
    np.testing.assert_allclose(cbpp_boot.estimate, R_BOOT["estimate"], rtol=2e-3, atol=1e-3)
    rep = cbpp_boot.replicates
    n, n_r = len(rep), R_BOOT["n_ok"]
    for i, name in enumerate(R_BOOT["names"]):
        q25, med, q75 = rep[name].quantile([0.25, 0.5, 0.75])
        iqr, iqr_r = q75 - q25, R_BOOT["q75"][i] - R_BOOT["q25"][i]
        s, s_r = iqr / 1.349, iqr_r / 1.349
        assert abs(med - R_BOOT["median"][i]) < 4 * 1.2533 * np.sqrt(s**2 / n + s_r**2 / n_r), name
        assert abs(iqr - iqr_r) < 4 * 1.573 * np.sqrt(s**2 / n + s_r**2 / n_r), name
    ci = cbpp_boot.conf_int()
    assert np.all((ci["lower"] < cbpp_boot.estimate) & (cbpp_boot.estimate < ci["upper"]))
    # the interval of a fixed effect is about as wide as its Wald interval (+-1.96 SE)
    width = (ci["upper"] - ci["lower"]).iloc[1:]
    wald = 2 * 1.96 * np.array([0.231212, 0.303150, 0.322829, 0.422049])  # lme4's SEs
    np.testing.assert_allclose(width, wald, rtol=0.3)


def test_bootstrap_cbpp_matches_an_independent_simulation(cbpp, cbpp_fit, cbpp_boot):
    """Responses drawn here with numpy from the fitted parameters, refitted by plain fits."""
    rng = np.random.default_rng(77)
    X = _cbpp_design(cbpp)
    herd = cbpp["herd"].to_numpy()
    codes = pd.factorize(herd)[0]
    size = cbpp["size"].to_numpy()
    eta = cbpp_fit.decision_function(cbpp, re_form=None)  # the population level
    sd = float(np.sqrt(cbpp_fit.cov_re_[0, 0]))
    rows = []
    for _ in range(60):
        b = sd * rng.standard_normal(codes.max() + 1)
        k = rng.binomial(size, special.expit(eta + b[codes]))
        fit = _quiet(MixedGLMRegressor(family="binomial").fit, X, k / size, groups=herd, sample_weight=size)
        rows.append(np.r_[np.sqrt(fit.cov_re_[0, 0]), fit.fe_params_.to_numpy()])
    ind = pd.DataFrame(rows, columns=cbpp_boot.replicates.columns)
    rep = cbpp_boot.replicates
    for name in ind.columns:
        se = np.sqrt(rep[name].var() / len(rep) + ind[name].var() / len(ind))
        assert abs(rep[name].mean() - ind[name].mean()) < 4 * se, name
        assert stats.ks_2samp(rep[name], ind[name]).pvalue > 1e-3, name


@pytest.mark.parametrize("n_agq", [1, 5])
def test_bootstrap_replicate_is_a_plain_fit_to_simulate(cbpp, n_agq):
    """Replicate j (warm-started refit, AGQ too) == a cold fit to simulate()[:, j]; the
    statistic sees the replicate's estimator."""
    X, y, size = _cbpp_design(cbpp), cbpp["incidence"] / cbpp["size"], cbpp["size"]
    est = MixedGLMRegressor(family="binomial", n_agq=n_agq).fit(X, y, groups=cbpp["herd"], sample_weight=size)
    boot = bootstrap(est, n_boot=4, random_state=6, statistic=lambda e: {"llf": e.llf_, "n_agq": e.n_agq})
    Y = est.simulate(4, random_state=6)
    for j in range(4):
        fit = _quiet(MixedGLMRegressor(family="binomial", n_agq=n_agq).fit, X, Y[:, j],
                     groups=cbpp["herd"], sample_weight=size)
        plain = np.r_[np.sqrt(fit.cov_re_[0, 0]), fit.fe_params_.to_numpy()]
        np.testing.assert_allclose(boot.replicates.iloc[j, :5], plain, rtol=1e-4, atol=1e-5)
        assert abs(boot.replicates["llf"].iloc[j] - fit.llf_) < 1e-6
    assert np.all(boot.replicates["n_agq"] == n_agq)


def test_bootstrap_with_slopes_and_offset(poisson_fit):
    """A random slope (a correlation parameter) and an offset: replicate == plain fit."""
    est, (x, g, offset, y, Z) = poisson_fit
    boot = bootstrap(est, n_boot=3, random_state=2)
    assert list(boot.estimate.index) == ["sd_z0|group", "cor_z1.z0|group", "sd_z1|group",
                                         "(Intercept)", "x0"]
    Y = est.simulate(3, random_state=2)
    for j in range(3):
        fit = _quiet(MixedGLMRegressor(family="poisson").fit, x[:, None], Y[:, j], groups=g, Z=Z,
                     offset=offset)
        c = fit.cov_re_
        plain = [np.sqrt(c[0, 0]), c[0, 1] / np.sqrt(c[0, 0] * c[1, 1]), np.sqrt(c[1, 1]),
                 fit.intercept_, fit.coef_[0]]
        np.testing.assert_allclose(boot.replicates.iloc[j], plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_bootstrap_is_the_same_for_any_n_jobs(cbpp_fit, backend):
    one = bootstrap(cbpp_fit, n_boot=6, random_state=8)
    with joblib.parallel_config(backend=backend):
        two = bootstrap(cbpp_fit, n_boot=6, random_state=8, n_jobs=2)
    np.testing.assert_array_equal(one.replicates.to_numpy(), two.replicates.to_numpy())
    np.testing.assert_array_equal(one.replicates.to_numpy()[:3],
                                  bootstrap(cbpp_fit, n_boot=3, random_state=8).replicates.to_numpy())


def test_conf_int_method_boot(cbpp_fit):
    ci = cbpp_fit.conf_int(method="boot", n_boot=8, random_state=1, which="variance")
    want = bootstrap(cbpp_fit, n_boot=8, random_state=1).conf_int().loc[["sd_(Intercept)|herd"]]
    pd.testing.assert_frame_equal(ci, want)
    with pytest.raises(ValueError, match="unknown parameter"):
        cbpp_fit.conf_int(method="boot", n_boot=2, which=["sigma"])  # a GLMM has none
    with pytest.raises(ValueError, match="boot_type"):
        cbpp_fit.conf_int(method="boot", n_boot=2, boot_type="bca")


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_statistic_that_raises_fails_only_its_replicate(cbpp_fit, n_jobs):
    """A GLMM as the linear model: the statistic's failures are NaN rows, the rest kept."""
    plain = bootstrap(cbpp_fit, n_boot=6, random_state=3)
    t0 = cbpp_fit.fe_params_["period2"]

    def effect(est):
        if est.fe_params_["period2"] < t0:
            raise ValueError("below the estimate")
        return {"p2": est.fe_params_["period2"]}

    low = (plain.replicates["period2"] < t0).to_numpy()
    assert 0 < low.sum() < 6
    with pytest.warns(UserWarning, match=rf"some runs failed \({low.sum()}/6\).*ValueError: below"):
        boot = bootstrap(cbpp_fit, n_boot=6, random_state=3, n_jobs=n_jobs, statistic=effect)
    assert np.array_equal(boot.failed, low)
    assert boot.replicates[low].isna().all().all()
    np.testing.assert_allclose(boot.replicates.loc[~low, "p2"], plain.replicates.loc[~low, "period2"],
                               rtol=1e-10)


def test_failed_and_nonconverged_refits_are_counted(cbpp_fit, monkeypatch):
    """A refit that raises, or does not converge from the fit nor from a plain fit's
    start, is a failed replicate (NaN row, its reason), counted in one warning (k/n)."""
    # the refitters live in the engine (mixedlm_sklearn._refit): the GLMM refit is patched there
    real = refit_module.fit_glmm
    calls = {"n": 0}

    def flaky(dev, x0, max_iter, ftol):
        calls["n"] += 1
        if calls["n"] % 3 == 2:
            raise refit_module.PIRLSDivergence("injected")
        sol, info = real(dev, x0, max_iter, ftol=ftol)
        if calls["n"] % 3 == 0:
            info = type(info)(False, "injected: not converged", info.n_iter, info.n_fev,
                              info.scaled_gradient, info.at_bound, info.hessian)
        return sol, info

    # calls 1, 2 (raises; the plain start: 3, not converged), 4, 5 (raises; 6, not
    # converged), 7, ...: every other replicate fails, the others converge at once
    monkeypatch.setattr(refit_module, "fit_glmm", flaky)
    with pytest.warns(ConvergenceWarning, match=r"some runs failed \(4/9\).*First reason: did not "
                                                r"converge \(injected: not converged\)"):
        boot = bootstrap(cbpp_fit, n_boot=9, random_state=0)
    assert boot.n_failed == 4 and boot.n_nonconverged == 0
    assert boot.replicates.iloc[1::2].isna().all().all()
    assert boot.replicates.iloc[0::2].notna().all().all()
    assert np.array_equal(boot.converged, np.arange(9) % 2 == 0)
    assert all("injected: not converged" in boot.messages[j] for j in (1, 3, 5, 7))
    kept = boot.replicates.dropna()
    np.testing.assert_allclose(boot.conf_int()["lower"], kept.quantile(0.025), rtol=1e-12)


def _nearly_separated(seed, slope, m=6, n=6):
    """A Bernoulli GLMM with few groups and a strong covariate: some simulated responses
    are (quasi-)separated, and the deviance is flat far from the start."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    x = np.round(rng.standard_normal(m * n), 2)
    eta = slope * x + rng.standard_normal(m)[g]
    y = (rng.uniform(size=m * n) < 1 / (1 + np.exp(-eta))).astype(int)
    return x[:, None], y, g


def _plain_fit(X, y, g):
    """A cold fit's lme4 parameters, or None when it raises, does not converge or has
    separated classes (estimates not finite)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = MixedGLMClassifier().fit(X, y, groups=g)
        except ValueError:
            return None
    if not fit.converged_ or any("numerically 0 or 1" in str(w.message) for w in caught):
        return None
    return np.r_[np.sqrt(fit.cov_re_[0, 0]), fit.fe_params_.to_numpy()]


@pytest.mark.parametrize("seed, slope", [(0, 4.0), (46, 5.0)])
def test_bootstrap_replicates_of_nearly_separated_data_are_plain_fits_or_failed(seed, slope):
    """Every replicate equals a cold fit of its simulated response, or it has failed and
    so has the cold fit: the optimiser's start (the fit's estimate) is never a result.
    (Before: replicates stopped at their start by a failed PIRLS evaluation, or
    non-converged ones, were kept; with seed 46, 3 of 12 equal to the estimate.)"""
    X, y, g = _nearly_separated(seed, slope)
    est = _quiet(MixedGLMClassifier().fit, X, y, groups=g)
    boot = _quiet(bootstrap, est, n_boot=12, random_state=1)
    Y = est.simulate(12, random_state=1)
    for j in range(12):
        cold = _plain_fit(X, Y[:, j], g)
        if cold is None:
            assert boot.failed[j] and boot.replicates.iloc[j].isna().all(), j
            assert boot.messages[j], j
        else:
            assert not boot.failed[j] and boot.converged[j], (j, boot.messages.get(j))
            np.testing.assert_allclose(boot.replicates.iloc[j], cold, rtol=1e-4, atol=1e-5)
    assert np.array_equal(boot.failed, ~boot.converged)
    if seed == 0:
        assert 0 < boot.n_failed < 12  # both kinds of replicate occur


# ---- pb_test -------------------------------------------------------------------------------------


def test_pb_test_cbpp(cbpp, cbpp_fit):
    """The LR statistic is lme4's anova(m0, m1) (from lme4's llf of the full fit); the period
    effect is strong, so no simulated LR reaches it."""
    m0 = glmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", cbpp)
    test = pb_test(m0, cbpp_fit, n_boot=40, random_state=3)
    assert test.df == 3
    # lme4 stops 2.8e-4 short of the optimum (see tests/r_agreement/test_reference_glmm.py)
    assert -92.0265663875511 - 1e-6 <= test.llf_full < -92.0265663875511 + 1e-3
    assert test.statistic == pytest.approx(2 * (cbpp_fit.llf_ - m0.llf_), rel=1e-12)
    assert test.pvalue == 1 / 41 and test.n_failed == 0
    assert test.pvalue_chi2 == pytest.approx(stats.chi2.sf(test.statistic, 3), rel=1e-12)
    # a chi2_3 reference: the simulated LR average about 3
    assert abs(np.mean(test.replicates) - 3) < 4 * np.sqrt(6 / 40)


def test_pb_test_pvalues_are_uniform_under_the_null():
    """Poisson data without the tested effect: the rank of the observed LR among the
    simulated ones is uniform (the p-values (1 + #{LR* >= LR}) / 10 about uniform on
    {0.1, ..., 1}), and the simulated LR follow about chi2_1."""
    rng = np.random.default_rng(31)
    m, n, n_data, n_boot = 10, 6, 30, 9
    g = np.repeat(np.arange(m), n)
    x = rng.standard_normal(m * n)
    pvalues, lr_star = [], []
    for _ in range(n_data):
        y = rng.poisson(np.exp(0.5 + 0.5 * rng.standard_normal(m)[g]))
        # some fits are singular (10 groups, a small variance): fine for the test
        small = _quiet(MixedGLMRegressor(family="poisson", fit_intercept=False).fit,
                       np.ones((m * n, 1)), y, groups=g)
        big = _quiet(MixedGLMRegressor(family="poisson").fit, x[:, None], y, groups=g)
        test = _quiet(pb_test, small, big, n_boot=n_boot, random_state=rng.integers(2**32))
        pvalues.append(test.pvalue)
        lr_star.extend(test.replicates[np.isfinite(test.replicates)])
    counts = np.histogram(pvalues, bins=[0, 0.25, 0.45, 0.65, 0.85, 1.0])[0]  # 2 values a bin
    assert stats.chisquare(counts).pvalue > 1e-3
    lr_star = np.array(lr_star)
    assert abs(lr_star.mean() - 1) < 4 * np.sqrt(2 / lr_star.size)
    assert stats.kstest(lr_star, "chi2", args=(1,)).pvalue > 1e-3


def test_pb_test_refuses_mismatched_models(cbpp, cbpp_fit):
    x, g, offset, y = _poisson_data()
    y01 = (y > np.median(y)).astype(float)
    X0, X1 = np.ones((x.size, 1)), np.column_stack([np.ones_like(x), x])

    def fit(X, family="binomial", y=y01, **kwargs):
        params = {k: kwargs.pop(k) for k in ("link", "n_agq") if k in kwargs}
        return MixedGLMRegressor(family=family, fit_intercept=False, **params).fit(X, y, groups=g, **kwargs)

    small, big = fit(X0), fit(X1)
    with pytest.raises(ValueError, match="different families or links"):
        pb_test(small, fit(X1, family="poisson"), n_boot=2)
    with pytest.raises(ValueError, match="different families or links"):
        pb_test(small, fit(X1, link="probit"), n_boot=2)
    with pytest.raises(ValueError, match="different approximations"):
        pb_test(small, fit(X1, n_agq=5), n_boot=2)
    with pytest.raises(ValueError, match="different data"):
        pb_test(fit(X0, y=y01[::-1]), big, n_boot=2)
    with pytest.raises(ValueError, match="different offsets"):
        pb_test(small, fit(X1, offset=0.1 * x), n_boot=2)
    with pytest.raises(ValueError, match="not nested"):
        pb_test(fit(np.column_stack([X0, x**2])), big, n_boot=2)
    with pytest.raises(ValueError, match="smaller"):
        pb_test(big, big, n_boot=2)
    sleep = load_sleepstudy()
    with pytest.raises(TypeError, match="one of each"):
        pb_test(lmer("Reaction ~ 1 + (1 | Subject)", sleep, reml=False), cbpp_fit, n_boot=2)


def test_fit_leaves_a_variance_bound_the_deviance_falls_off(cbpp, cbpp_fit):
    """A simulated cbpp response whose profiled deviance falls from theta = 0 (an even
    function there: gradient 0 at a maximum along theta) to its minimum near 0.24: the fit
    (cold start, as the bootstrap's warm one) finds the interior minimum, at or below the
    brute-force profile (beta re-optimised on a theta grid)."""
    from mixedlm_sklearn._glmm import fit_with_fixed as _fit_with_fixed

    y = cbpp_fit.simulate(25, random_state=20261202)[:, 24]
    dev = cbpp_fit.model_.deviance.with_response(y)
    x = cbpp_fit.model_.x.copy()
    grid = np.linspace(0.0, 0.6, 13)
    profile = []
    for t in grid:
        value, x = _fit_with_fixed(dev, x, {0: t})
        profile.append(value)
    assert profile[0] - min(profile) > 0.5  # 0 is far from the minimum
    fit = MixedGLMRegressor(family="binomial").fit(_cbpp_design(cbpp), y, groups=cbpp["herd"],
                                                   sample_weight=cbpp["size"])
    assert not fit.singular_ and 0.2 < np.sqrt(fit.cov_re_[0, 0]) < 0.3
    assert -2 * fit.llf_ <= min(profile) + 1e-6
    boot = bootstrap(cbpp_fit, n_boot=25, random_state=20261202)
    assert boot.replicates["sd_(Intercept)|herd"].iloc[24] == pytest.approx(np.sqrt(fit.cov_re_[0, 0]), rel=1e-4)
