"""Simulation-based inference: simulate, the parametric bootstrap, pb_test, power.

References:
* lme4 1.1-31 ``confint(m1, method = "boot", nsim = 1000, boot.type = "perc")`` and pbkrtest
  0.5.2 ``PBmodcomp`` of the Days fixed effect (extras/sleepstudy_model_sequence.json).
  Bootstrap results differ by Monte Carlo error: endpoints of our 2,000-replicate
  percentile intervals must be within 10% of the interval's width of lme4's.
* pbkrtest 0.5.2, ``PBrefdist(m1, m0, nsim = 3000)`` after ``set.seed(20261202)`` (R 4.2,
  lme4 1.1-31; run for this file): the mean and standard deviation of the simulated LR.
* Moments: the covariance of the response written out densely here (no package code).
* Closed-form power: a balanced random-intercept design whose Wald statistic of a
  between-group effect is exactly noncentral t (REML estimates = ANOVA estimates).
* Brute force: replicate ``j`` of a bootstrap (or power simulation) equals a plain fit of
  the estimator to ``simulate(...)[:, j]`` (same ``random_state``).
"""

import json
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.exceptions import ConvergenceWarning

from mixedlm_sklearn import MixedLMRegressor, lmer, lr_test, pb_test, power
from mixedlm_sklearn import _refit as refit_module
from mixedlm_sklearn._crossprod import ResponseMap, cross_products
from mixedlm_sklearn._terms import Term, Terms
from mixedlm_sklearn.datasets import load_sleepstudy
from mixedlm_sklearn.inference import bootstrap, simulate
from mixedlm_sklearn.inference import simulation as simulation_module

EXTRAS = Path(__file__).resolve().parents[1] / "data" / "reference" / "extras" / "sleepstudy_model_sequence.json"
REF = json.loads(EXTRAS.read_text())

# pbkrtest 0.5.2 PBrefdist(m1, m0, nsim = 3000) after set.seed(20261202), m1 and m0 the ML
# fits of Reaction ~ Days + (Days | Subject) and Reaction ~ 1 + (Days | Subject): the mean
# and standard deviation of all 3,000 simulated LR (2,989 of them positive).
R_PB_MEAN, R_PB_SD, R_PB_N = 1.073113, 1.561235, 3000

SLEEP_FORMULA = "Reaction ~ Days + (Days | Subject)"


def _quiet(f, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*args, **kwargs)


@pytest.fixture(scope="module")
def sleep():
    return load_sleepstudy()


@pytest.fixture(scope="module")
def sleep_fit(sleep):
    return lmer(SLEEP_FORMULA, sleep)


@pytest.fixture(scope="module")
def sleep_boot(sleep_fit):
    return bootstrap(sleep_fit, n_boot=2000, random_state=20261202)


def _mixed_kind_data(seed=3):
    """Two crossed factors (one with a random slope), two residual strata, prior weights."""
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(8), 6)
    b = np.tile(np.arange(6), 8)
    n = a.size
    x = rng.standard_normal(n)
    stratum = rng.integers(0, 2, n)
    w = rng.uniform(0.5, 2.0, n)
    y = (1.0 + 0.5 * x + rng.standard_normal(8)[a] * 0.8 + rng.standard_normal(8)[a] * 0.4 * x
         + rng.standard_normal(6)[b] * 0.6 + rng.standard_normal(n) * np.where(stratum, 1.5, 0.7) / np.sqrt(w))
    X = pd.DataFrame({"x": x})
    groups = pd.DataFrame({"a": a, "b": b})
    Z = {"a": pd.DataFrame({"(Intercept)": np.ones(n), "x": x})}
    return X, y, groups, Z, stratum, w


@pytest.fixture(scope="module")
def mixed_fit():
    X, y, groups, Z, stratum, w = _mixed_kind_data()
    est = _quiet(MixedLMRegressor().fit, X, y, groups=groups, Z=Z, residual_groups=stratum,
                 sample_weight=w)
    return est, (X, y, groups, Z, stratum, w)


# ---- the response-dependent cross-products -------------------------------------------------------


def test_with_response_equals_a_pass_over_the_rows():
    rng = np.random.default_rng(0)
    n = 300
    g1, g2 = rng.integers(0, 7, n), rng.integers(0, 5, n)
    Z1 = np.column_stack([np.ones(n), rng.standard_normal(n)])
    factors = [(g1, Z1), (g2, np.ones((n, 1)))]
    terms = Terms([Term("a", ("1", "x"), 7), Term("b", ("1",), 5)])
    X, w, s = rng.standard_normal((n, 2)), rng.uniform(0.5, 2.0, n), rng.integers(0, 3, n)
    template = cross_products(X, rng.standard_normal(n), factors, terms, w, s, 3, intercept=True)
    Y = rng.standard_normal((n, 3))
    products = ResponseMap(X, factors, terms, w, s, 3, intercept=True)(Y)
    for j in range(3):
        got = template.with_response(products, j)
        want = cross_products(X, Y[:, j], factors, terms, w, s, 3, intercept=True)
        for a, b in zip(got.zxy + got.diag + (got.xyxy,), want.zxy + want.diag + (want.xyxy,)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        for a, b in zip(got.pairs, want.pairs):
            np.testing.assert_array_equal(a.values, b.values)


# ---- simulate -----------------------------------------------------------------------------


def _check_moments(Y, mean, V, z=5.0):
    """Sample mean and covariance of the columns of Y against ``mean`` and ``V``, entry by
    entry in units of their standard errors (normal data: Var(s_ij) ~ (V_ii V_jj + V_ij^2) / N)."""
    N = Y.shape[1]
    m_hat = Y.mean(axis=1)
    assert np.max(np.abs(m_hat - mean) / np.sqrt(np.diag(V) / N)) < z
    C = np.cov(Y)
    se = np.sqrt((np.outer(np.diag(V), np.diag(V)) + V**2) / N)
    assert np.max(np.abs(C - V) / se) < z


def test_simulate_moments_sleepstudy(sleep, sleep_fit):
    est = sleep_fit
    Y = est.simulate(n_sim=20000, random_state=7)
    assert Y.shape == (180, 20000)
    rows = np.flatnonzero(sleep["Subject"].to_numpy() == sleep["Subject"].iloc[0])
    other = np.flatnonzero(sleep["Subject"].to_numpy() == sleep["Subject"].iloc[-1])[:3]
    take = np.concatenate([rows, other])
    Z = np.column_stack([np.ones(take.size), sleep["Days"].to_numpy()[take]])
    same = sleep["Subject"].to_numpy()[take][:, None] == sleep["Subject"].to_numpy()[take][None, :]
    V = same * (Z @ est.cov_re_ @ Z.T) + est.scale_ * np.eye(take.size)
    mean = est.intercept_ + est.coef_[0] * sleep["Days"].to_numpy()[take]
    _check_moments(Y[take], mean, V)


def test_simulate_moments_crossed_strata_weights(mixed_fit):
    est, (X, y, groups, Z, stratum, w) = mixed_fit
    n = len(y)
    Y = est.simulate(n_sim=40000, random_state=11)
    x = X["x"].to_numpy()
    Za = np.column_stack([np.ones(n), x])
    a, b = groups["a"].to_numpy(), groups["b"].to_numpy()
    V = (a[:, None] == a[None, :]) * (Za @ est.cov_re_["a"] @ Za.T)
    V = V + (b[:, None] == b[None, :]) * est.cov_re_["b"][0, 0]
    residual = np.array([est.residual_var_[s] for s in stratum]) / w
    V[np.diag_indices(n)] += residual
    mean = est.intercept_ + est.coef_[0] * x
    take = np.arange(0, n, 2)  # 24 rows: a few levels of each factor and both strata
    _check_moments(Y[take], mean[take], V[np.ix_(take, take)])


def test_simulate_conditional_keeps_the_modes(sleep, sleep_fit):
    est = sleep_fit
    Y = est.simulate(n_sim=20000, random_state=3, conditional=True)
    Zfull = pd.DataFrame({"(Intercept)": 1.0, "Days": sleep["Days"]})
    mean = est.predict(sleep[["Days"]], groups=sleep["Subject"], Z=Zfull)
    take = np.arange(0, 180, 9)
    _check_moments(Y[take], mean[take], est.scale_ * np.eye(take.size))


def test_simulate_includes_the_offset(sleep):
    off = np.linspace(-50.0, 50.0, len(sleep))
    est = lmer("Reaction ~ Days + offset(off) + (1 | Subject)", sleep.assign(off=off))
    Y = est.simulate(n_sim=4000, random_state=0)
    V_diag = est.cov_re_[0, 0] + est.scale_
    expected = est.intercept_ + est.coef_[0] * sleep["Days"].to_numpy() + off
    assert np.max(np.abs(Y.mean(axis=1) - expected) / np.sqrt(V_diag / 4000)) < 5


def test_simulate_is_reproducible(sleep_fit):
    a = sleep_fit.simulate(3, random_state=5)
    np.testing.assert_array_equal(a, simulate(sleep_fit, 3, random_state=5))
    np.testing.assert_array_equal(a[:, :2], sleep_fit.simulate(2, random_state=5))
    assert not np.array_equal(a, sleep_fit.simulate(3, random_state=6))
    gen = np.random.default_rng(5)
    assert not np.array_equal(sleep_fit.simulate(3, random_state=gen), sleep_fit.simulate(3, random_state=gen))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_simulate_refuses_bad_counts(sleep_fit, bad):
    with pytest.raises(ValueError, match="n_sim"):
        sleep_fit.simulate(bad)


def test_simulate_refuses_a_fit_without_rows(sleep):
    est = MixedLMRegressor().fit_chunks([sleep.iloc[:90], sleep.iloc[90:]], y="Reaction",
                                        groups="Subject", X=["Days"])
    with pytest.raises(NotImplementedError, match="rows of the fit"):
        est.simulate()
    with pytest.raises(NotImplementedError, match="rows of the fit"):
        est.bootstrap(n_boot=2)


def test_legacy_random_state_is_refused(sleep_fit):
    with pytest.raises(TypeError, match="RandomState"):
        sleep_fit.simulate(random_state=np.random.RandomState(0))


# ---- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_percentile_intervals_match_lme4(sleep_boot):
    ref = REF["boot_ci_percentile"]
    ci = sleep_boot.conf_int(0.05, "percentile")
    assert list(ci.index) == ref["rows"]
    width = np.array(ref["upper"]) - np.array(ref["lower"])
    assert np.all(np.abs(ci["lower"].to_numpy() - ref["lower"]) < 0.1 * width)
    assert np.all(np.abs(ci["upper"].to_numpy() - ref["upper"]) < 0.1 * width)
    assert sleep_boot.n_failed == 0 and sleep_boot.n_nonconverged == 0


def test_bootstrap_replicates_match_an_independent_simulation(sleep, sleep_fit, sleep_boot):
    """Our own sampler (numpy, per subject) and plain fits of the estimator."""
    est = sleep_fit
    rng = np.random.default_rng(99)
    subj = pd.factorize(sleep["Subject"])[0]
    days = sleep["Days"].to_numpy()
    Z = np.column_stack([np.ones(len(sleep)), days])
    chol = np.linalg.cholesky(est.cov_re_)
    n_ind = 200
    names = list(sleep_boot.estimate.index)
    values = []
    for _ in range(n_ind):
        b = rng.standard_normal((18, 2)) @ chol.T
        y = (est.intercept_ + est.coef_[0] * days + np.sum(Z * b[subj], axis=1)
             + rng.standard_normal(len(sleep)) * np.sqrt(est.scale_))
        fit = _quiet(MixedLMRegressor().fit, sleep[["Days"]], y, groups=sleep["Subject"], Z=Z)
        sd = np.sqrt(np.diag(fit.cov_re_))
        values.append([sd[0], fit.cov_re_[0, 1] / (sd[0] * sd[1]) if sd.all() else 0.0, sd[1],
                       np.sqrt(fit.scale_), fit.intercept_, fit.coef_[0]])
    ind = pd.DataFrame(values, columns=names)
    boot = sleep_boot.replicates
    for name in names:
        se = np.sqrt(boot[name].var() / len(boot) + ind[name].var() / n_ind)
        assert abs(boot[name].mean() - ind[name].mean()) < 4 * se, name
        assert stats.ks_2samp(boot[name], ind[name]).pvalue > 1e-3, name


def test_bootstrap_replicate_is_a_plain_fit_to_simulate(mixed_fit):
    """Every model kind: replicate j == the estimator fitted to simulate()[:, j]."""
    est, (X, y, groups, Z, stratum, w) = mixed_fit
    boot = _quiet(bootstrap, est, n_boot=6, random_state=4, statistic=lambda e: e.llf_)
    Y = est.simulate(6, random_state=4)
    names = [c for c in boot.replicates.columns if c != "statistic"]
    assert "sigma_1/sigma_0" in names and "sd_x|a" in names and "sd_(Intercept)|b" in names
    for j in range(6):
        fit = _quiet(MixedLMRegressor().fit, X, Y[:, j], groups=groups, Z=Z, residual_groups=stratum,
                     sample_weight=w)
        assert boot.replicates["statistic"].iloc[j] >= fit.llf_ - 1e-6
        assert abs(boot.replicates["statistic"].iloc[j] - fit.llf_) < 1e-6
        plain = pd.Series(np.concatenate([
            [np.sqrt(fit.cov_re_["a"][0, 0]),
             fit.cov_re_["a"][0, 1] / np.sqrt(fit.cov_re_["a"][0, 0] * fit.cov_re_["a"][1, 1]),
             np.sqrt(fit.cov_re_["a"][1, 1]), np.sqrt(fit.cov_re_["b"][0, 0]), np.sqrt(fit.scale_),
             np.sqrt(fit.residual_var_[1] / fit.residual_var_[0])],
            fit.fe_params_.to_numpy()]), index=names)
        np.testing.assert_allclose(boot.replicates[names].iloc[j], plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_bootstrap_is_the_same_for_any_n_jobs(sleep_fit, backend):
    one = bootstrap(sleep_fit, n_boot=24, random_state=8)
    with joblib.parallel_config(backend=backend):
        two = bootstrap(sleep_fit, n_boot=24, random_state=8, n_jobs=2)
    np.testing.assert_array_equal(one.replicates.to_numpy(), two.replicates.to_numpy())
    # replicate j does not depend on how many there are
    np.testing.assert_array_equal(one.replicates.to_numpy()[:10],
                                  bootstrap(sleep_fit, n_boot=10, random_state=8).replicates.to_numpy())


def test_bootstrap_statistic_columns(sleep_fit, sleep):
    boot = bootstrap(sleep_fit, n_boot=8, random_state=2,
                     statistic=lambda e: pd.Series({"slope": e.coef_[0], "first": e.predict(sleep.iloc[:1], re_form=None)[0]}))
    assert boot.estimate["slope"] == pytest.approx(sleep_fit.coef_[0], rel=1e-12)
    np.testing.assert_allclose(boot.replicates["slope"], boot.replicates["Days"], rtol=1e-12)
    np.testing.assert_allclose(boot.replicates["first"],
                               boot.replicates["(Intercept)"] + 0.0 * boot.replicates["Days"], rtol=1e-12)
    assert boot.n_params == 6
    with pytest.raises(ValueError, match="parameter names"):
        bootstrap(sleep_fit, n_boot=2, statistic=lambda e: pd.Series({"sigma": 1.0}))


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_statistic_that_raises_fails_only_its_replicate(sleep_fit, n_jobs):
    """As lme4's bootMer: the replicates where the statistic raises are NaN rows, the
    others are kept, and one warning says "some runs failed (k/n)" with the first error."""
    plain = bootstrap(sleep_fit, n_boot=12, random_state=5)
    t0 = sleep_fit.coef_[0]

    def slope(est):
        if est.coef_[0] > t0:
            raise ZeroDivisionError(f"too steep: {est.coef_[0]:.3f}")
        return est.coef_[0]

    steep = (plain.replicates["Days"] > t0).to_numpy()
    assert 0 < steep.sum() < 12
    first = int(np.flatnonzero(steep)[0])
    match = rf"some runs failed \({steep.sum()}/12\); .*First reason: .*ZeroDivisionError: too steep"
    with pytest.warns(UserWarning, match=match) as caught:
        boot = bootstrap(sleep_fit, n_boot=12, random_state=5, n_jobs=n_jobs, statistic=slope)
    assert np.array_equal(boot.failed, steep) and boot.n_failed == steep.sum()
    assert boot.replicates[steep].isna().all().all()
    np.testing.assert_array_equal(boot.replicates.loc[~steep, plain.replicates.columns],
                                  plain.replicates[~steep])
    np.testing.assert_allclose(boot.replicates.loc[~steep, "statistic"],
                               plain.replicates.loc[~steep, "Days"], rtol=1e-10)
    # the first error's message: that of the first replicate that failed
    assert boot.messages[first] == (f"the statistic raised ZeroDivisionError: too steep: "
                                    f"{plain.replicates['Days'].iloc[first]:.3f}")
    assert boot.messages[first] in str(caught[0].message)


def test_bootstrap_interval_types(sleep_boot):
    rep, t0 = sleep_boot.replicates, sleep_boot.estimate
    lo, hi = rep.quantile(0.05), rep.quantile(0.95)
    basic = sleep_boot.conf_int(0.1, "basic")
    np.testing.assert_allclose(basic["lower"], 2 * t0 - hi, rtol=1e-12)
    np.testing.assert_allclose(basic["upper"], 2 * t0 - lo, rtol=1e-12)
    normal = sleep_boot.conf_int(0.1, "normal")
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(normal["lower"], 2 * t0 - rep.mean() - z * rep.std(), rtol=1e-12)
    summary = sleep_boot.summary()
    np.testing.assert_allclose(summary["bias"], rep.mean() - t0, rtol=1e-12)
    with pytest.raises(ValueError, match="method"):
        sleep_boot.conf_int(method="bca")


def test_conf_int_method_boot(sleep_fit):
    ci = sleep_fit.conf_int(method="boot", n_boot=30, random_state=1, which="fixed")
    want = bootstrap(sleep_fit, n_boot=30, random_state=1).conf_int().loc[["(Intercept)", "Days"]]
    pd.testing.assert_frame_equal(ci, want)
    with pytest.raises(ValueError, match="unknown parameter"):
        sleep_fit.conf_int(method="boot", n_boot=2, which=["nope"])
    with pytest.raises(ValueError, match="boot_type"):
        sleep_fit.conf_int(method="boot", n_boot=2, boot_type="student")


def test_failed_and_nonconverged_refits_are_counted(sleep_fit, monkeypatch):
    """A replicate is a converged refit: one that raised or did not converge is a NaN row
    with its reason, counted in one warning (k/n)."""
    real = simulation_module.Refitter.refit_all

    def flaky(self, products):
        out = real(self, products)
        for j in range(len(out)):
            if j % 3 == 2:
                out[j] = "FloatingPointError: injected"
            elif j % 3 == 0:
                info = out[j].info
                out[j].info = type(info)(False, "injected: not converged", info.n_iter, info.n_fev,
                                         info.scaled_gradient, info.at_bound)
        return out

    monkeypatch.setattr(simulation_module.Refitter, "refit_all", flaky)
    with pytest.warns(ConvergenceWarning, match=r"some runs failed \(6/9\).*First reason: did not "
                                                r"converge \(injected: not converged\)"):
        boot = bootstrap(sleep_fit, n_boot=9, random_state=0)
    assert boot.n_failed == 6 and boot.n_nonconverged == 0
    assert boot.replicates.iloc[2::3].isna().all().all()
    assert boot.replicates.iloc[0::3].isna().all().all()  # not converged: no estimates
    assert boot.replicates.iloc[1::3].notna().all().all()
    assert np.array_equal(boot.converged, np.tile([False, True, False], 3))
    assert np.array_equal(boot.failed, ~boot.converged)
    assert all("injected" in boot.messages[j] for j in (0, 2, 3, 5, 6, 8))
    kept = boot.replicates.dropna()
    np.testing.assert_allclose(boot.conf_int()["lower"], kept.quantile(0.025), rtol=1e-12)


def test_a_refit_that_does_not_converge_is_run_again_as_a_plain_fit(sleep, monkeypatch):
    """Every refit from the generating parameters reported as not converged: each
    replicate is then the plain fit's (its start, its search), equal to the estimator
    fitted to the simulated response, and none is lost."""
    X, groups = sleep[["Days"]], pd.DataFrame({"Subject": sleep["Subject"], "late": sleep["Days"] > 4})
    est = _quiet(MixedLMRegressor().fit, X, sleep["Reaction"], groups=groups)  # two terms: no batch
    real = refit_module.minimise  # the refitters live in the engine (mixedlm_sklearn._refit)

    def warm_fails(dev, **kwargs):
        sol, info = real(dev, **kwargs)
        if kwargs.get("x0") is not None:
            info = type(info)(False, "injected", info.n_iter, info.n_fev, info.scaled_gradient,
                              info.at_bound)
        return sol, info

    monkeypatch.setattr(refit_module, "minimise", warm_fails)
    boot = _quiet(bootstrap, est, n_boot=3, random_state=4, statistic=lambda e: e.llf_)
    assert boot.n_failed == 0
    Y = est.simulate(3, random_state=4)
    for j in range(3):
        fit = _quiet(MixedLMRegressor().fit, X, Y[:, j], groups=groups)
        assert abs(boot.replicates["statistic"].iloc[j] - fit.llf_) < 1e-6
        np.testing.assert_allclose(boot.replicates["(Intercept)"].iloc[j], fit.intercept_, rtol=1e-4)


def test_engine_failures_are_recorded(sleep_fit, monkeypatch):
    """A refit the engine cannot do (here: every one, with the batched path off) is a
    failure with its reason, not an exception."""
    def broken(dev, *args, **kwargs):
        raise FloatingPointError("injected")

    monkeypatch.setattr(refit_module, "minimise", broken)
    refitter = simulation_module.Refitter.of_model(sleep_fit.model_)
    refitter.batch = None
    products = refitter.products(sleep_fit.simulate(3, random_state=0))
    assert refitter.refit_all(products) == ["FloatingPointError: injected"] * 3


def test_batched_refits_equal_the_engine(sleep_fit):
    """The one-term batched path against the engine's refit of the replicates: singular
    ones (on the bound in the batch or handed to the engine) and every 20th."""
    model = sleep_fit.model_
    refitter = simulation_module.Refitter.of_model(model)
    assert refitter.batch is not None
    products = refitter.products(sleep_fit.simulate(1000, random_state=12))
    fits = refitter.refit_all(products)
    batched = np.array([f.info.message.endswith("batched Newton") for f in fits])
    singular = np.array([f.info.at_bound.any() for f in fits])
    assert batched.sum() > 950 and (singular & batched).sum() > 5 and (singular & ~batched).any()
    for j in np.flatnonzero(singular | ~batched | (np.arange(1000) % 20 == 0)):
        f = fits[j]
        dev, sol, info = refitter.refit(products, j)
        np.testing.assert_array_equal(f.info.at_bound, info.at_bound)
        assert f.deviance <= sol.deviance + 1e-8
        assert abs(f.deviance - sol.deviance) < 1e-8
        np.testing.assert_allclose(f.theta, sol.theta, rtol=1e-4, atol=1e-6 * np.abs(sol.theta).max())
        np.testing.assert_allclose(f.beta, sol.beta, rtol=1e-6)
        assert f.scale == pytest.approx(sol.scale, rel=1e-6)
        d2, s2 = f.solved()
        assert s2.deviance == pytest.approx(f.deviance, abs=1e-9)


@pytest.mark.parametrize("kind", ["diagonal", "weighted_intercept", "three_effects"])
def test_batched_refits_equal_the_engine_other_terms(sleep, kind):
    """Independent effects (every entry can be held at 0), prior weights with a random
    intercept, and q = 3 (entries other than the last heading for 0 go to the engine)."""
    days = sleep["Days"].to_numpy()
    if kind == "diagonal":
        est = lmer("Reaction ~ Days + (Days || Subject)", sleep)
    elif kind == "weighted_intercept":
        w = np.random.default_rng(1).uniform(0.3, 3.0, len(sleep))
        est = MixedLMRegressor().fit(sleep[["Days"]], sleep["Reaction"], groups=sleep["Subject"],
                                     sample_weight=w)
    else:
        est = _quiet(lmer, "Reaction ~ Days + (Days + I(Days^2) | Subject)", sleep.assign(Days=days / 3))
    refitter = simulation_module.Refitter.of_model(est.model_)
    assert refitter.batch is not None
    products = refitter.products(est.simulate(200, random_state=3))
    fits = refitter.refit_all(products)
    batched = np.array([f.info.message.endswith("batched Newton") for f in fits])
    assert batched.sum() > 100
    for j in range(0, 200, 4):
        f = fits[j]
        dev, sol, info = refitter.refit(products, j)
        np.testing.assert_array_equal(f.info.at_bound, info.at_bound)
        assert abs(f.deviance - sol.deviance) < 1e-8
        scale = np.abs(sol.theta).max()
        np.testing.assert_allclose(f.theta, sol.theta, rtol=1e-4, atol=1e-6 * scale)
        np.testing.assert_allclose(f.beta, sol.beta, rtol=1e-6)


def test_bootstrap_without_random_effects(sleep):
    """A least-squares fit (no groups) simulates and refits too (sigma and beta only)."""
    est = _quiet(MixedLMRegressor().fit, sleep[["Days"]], sleep["Reaction"])
    boot = bootstrap(est, n_boot=400, random_state=0)
    assert list(boot.estimate.index) == ["sigma", "(Intercept)", "Days"]
    # OLS: the bootstrap SE of the slope is the OLS standard error (to Monte Carlo error)
    assert boot.replicates["Days"].std() == pytest.approx(est.bse_["Days"], rel=0.15)


def test_bootstrap_refits_with_the_fit_settings(sleep):
    """A fit stopped by max_iter: its refits are stopped too, and are failed replicates."""
    Z = np.column_stack([np.ones(len(sleep)), sleep["Days"]])
    est = _quiet(MixedLMRegressor(max_iter=1, reml=False).fit, sleep[["Days"]], sleep["Reaction"],
                 groups=sleep["Subject"], Z=Z)
    with pytest.warns(ConvergenceWarning, match=r"failed \(5/5\).*did not converge \(iteration limit"):
        boot = bootstrap(est, n_boot=5, random_state=0)
    assert boot.n_failed == 5 and boot.replicates.isna().all().all()


# ---- pb_test --------------------------------------------------------------------------------


def test_pb_test_matches_pbkrtest(sleep):
    ref = REF["pb_lrt"]
    m0 = lmer("Reaction ~ 1 + (Days | Subject)", sleep)  # REML: refitted by ML, as pbkrtest
    m1 = lmer(SLEEP_FORMULA, sleep)
    test = pb_test(m0, m1, n_boot=1000, random_state=1)
    assert test.statistic == pytest.approx(ref["stat"], rel=1e-6)
    assert test.pvalue_chi2 == pytest.approx(ref["p_chisq"], rel=1e-5)
    valid = test.n_boot - test.n_failed
    # pbkrtest: no simulated LR reached the observed one (p = 1 / (1 + 996)); nor here
    assert ref["p_pb"] == pytest.approx(1 / 997)
    assert test.pvalue == pytest.approx(1 / (1 + valid))
    lr = test.replicates[np.isfinite(test.replicates)]
    se = np.sqrt(lr.var() / lr.size + R_PB_SD**2 / R_PB_N)
    assert abs(lr.mean() - R_PB_MEAN) < 4 * se
    assert test.pvalue_bartlett == pytest.approx(stats.chi2.sf(test.statistic / lr.mean(), 1), rel=1e-10)


def test_pb_test_refuses_what_lr_test_refuses(sleep):
    m1 = lmer(SLEEP_FORMULA, sleep, reml=False)
    other = lmer("Reaction ~ Days + (1 | Subject)", sleep.iloc[::-1].reset_index(drop=True), reml=False)
    with pytest.raises(ValueError, match="different data"):
        pb_test(other, m1, n_boot=2)
    wide = lmer("Reaction ~ Days + u + (1 | Subject)", sleep.assign(u=np.arange(180.0) % 7), reml=False)
    with pytest.raises(ValueError, match="not nested"):
        pb_test(m1, wide, n_boot=2)
    with pytest.raises(ValueError, match="smaller"):
        pb_test(m1, m1, n_boot=2)


# ---- power ---------------------------------------------------------------------------------


def _between_group_design(m, n, tau, sigma, beta, seed=0):
    x_levels = np.linspace(-1.0, 1.0, m)
    g = np.repeat(np.arange(m), n)
    rng = np.random.default_rng(seed)
    y = 1.0 + beta * x_levels[g] + tau * rng.standard_normal(m)[g] + sigma * rng.standard_normal(m * n)
    est = MixedLMRegressor().fit(pd.DataFrame({"x": x_levels[g]}), y, groups=pd.Series(g, name="g"))
    return est, x_levels


def _closed_form_power(x_levels, n, tau, sigma, beta, critical):
    """Balanced random intercepts, x constant within groups: the REML Wald statistic of x is
    the t statistic of the regression of the group means on x, noncentral t with m - 2 df."""
    m = x_levels.size
    sxx = np.sum((x_levels - x_levels.mean()) ** 2)
    ncp = beta / np.sqrt((tau**2 + sigma**2 / n) / sxx)
    return stats.nct.sf(critical, m - 2, ncp) + stats.nct.cdf(-critical, m - 2, ncp)


@pytest.mark.parametrize("test", ["satterthwaite", "wald"])
def test_power_matches_the_noncentral_t(test):
    m, n, tau, sigma, beta = 12, 5, 1.5, 1.0, 1.6
    est, x_levels = _between_group_design(m, n, 1.0, 1.0, 0.5)
    critical = stats.t.ppf(0.975, m - 2) if test == "satterthwaite" else stats.norm.ppf(0.975)
    want = _closed_form_power(x_levels, n, tau, sigma, beta, critical)
    assert 0.3 < want < 0.8
    res = power(est, "x", effect=beta, cov_re=[[tau**2]], scale=sigma**2, test=test, n_sim=1000,
                random_state=5)
    assert abs(res.power - want) < 4 * np.sqrt(want * (1 - want) / 1000)
    assert res.lower < res.power < res.upper and res.n_failed == 0
    assert res.effect["x"] == beta and res.n_groups == {"g": 12}


def test_power_with_more_groups_matches_the_noncentral_t():
    """Six fitted groups extended to twelve: the x pattern repeats."""
    n, tau, sigma, beta = 5, 1.5, 1.0, 1.4
    est, x_levels = _between_group_design(6, n, 1.0, 1.0, 0.5)
    want = _closed_form_power(np.tile(x_levels, 2), n, tau, sigma, beta, stats.norm.ppf(0.975))
    res = power(est, "x", effect=beta, cov_re=[[tau**2]], scale=sigma**2, test="wald",
                n_groups={"g": 12}, n_sim=1000, random_state=6)
    assert res.n_groups == {"g": 12}
    assert abs(res.power - want) < 4 * np.sqrt(want * (1 - want) / 1000)


def test_power_pvalues_are_those_of_plain_fits(sleep):
    """With the fit's own parameters, replicate j's response is simulate()[:, j]."""
    est = lmer("Reaction ~ Days + (1 | Subject)", sleep)
    Y = est.simulate(4, random_state=9)
    sat = power(est, "Days", test="satterthwaite", n_sim=4, random_state=9)
    lr = power(est, "Days", test="lr", n_sim=4, random_state=9)
    for j in range(4):
        data = sleep.assign(Reaction=Y[:, j])
        fit = lmer("Reaction ~ Days + (1 | Subject)", data)
        assert sat.pvalues[j] == pytest.approx(fit.wald_test("Days").pvalue, rel=1e-4)
        full = lmer("Reaction ~ Days + (1 | Subject)", data, reml=False)
        small = lmer("Reaction ~ 1 + (1 | Subject)", data, reml=False)
        assert lr.pvalues[j] == pytest.approx(lr_test(small, full).pvalue, rel=1e-4)


def test_power_of_a_formula_is_that_of_its_fit(sleep):
    formula = "Reaction ~ Days + (1 | Subject)"
    a = power(formula, "Days", data=sleep, effect=2.0, test="wald", n_sim=8, random_state=2)
    b = power(lmer(formula, sleep), "Days", effect=2.0, test="wald", n_sim=8, random_state=2)
    np.testing.assert_array_equal(a.pvalues, b.pvalues)
    with pytest.raises(ValueError, match="data"):
        power(formula, "Days", n_sim=2)


def test_power_refuses_bad_input(sleep_fit):
    with pytest.raises(ValueError, match="term"):
        power(sleep_fit, "nope", n_sim=2)
    with pytest.raises(ValueError, match="not a fixed effect"):
        power(sleep_fit, "Days", effect={"nope": 1.0}, n_sim=2)
    with pytest.raises(ValueError, match="2 x 2"):
        power(sleep_fit, "Days", cov_re=np.eye(3), n_sim=2)
    with pytest.raises(ValueError, match="positive semi-definite"):
        power(sleep_fit, "Days", cov_re=np.array([[1.0, 2.0], [2.0, 1.0]]), n_sim=2)
    with pytest.raises(ValueError, match="not a grouping factor"):
        power(sleep_fit, "Days", n_groups={"nope": 4}, n_sim=2)
    with pytest.raises(ValueError, match="test must be"):
        power(sleep_fit, "Days", test="kr", n_sim=2)


def test_power_refuses_to_extend_a_factor_with_a_nested_one():
    rng = np.random.default_rng(0)
    school = np.repeat(np.arange(4), 12)
    klass = np.repeat(np.arange(12), 4)
    df = pd.DataFrame({"y": rng.standard_normal(48) + rng.standard_normal(4)[school]
                       + rng.standard_normal(12)[klass], "x": rng.standard_normal(48),
                       "school": school, "klass": klass})
    est = _quiet(lmer, "y ~ x + (1 | school/klass)", df)
    with pytest.raises(ValueError, match="nested"):
        power(est, "x", n_groups={"school": 8}, n_sim=2)


# ---- correlated residuals within groups (nlme's corAR1, corCAR1, corCompSymm) ---------------------

OVARY_DIR = Path(__file__).resolve().parents[1] / "data" / "reference" / "structures"


def _ovary_fits(reml=True):
    df = pd.read_csv(OVARY_DIR / "ovary_ar1_ml.csv", dtype={"Mare": str})
    X = pd.DataFrame({"sin": np.sin(2 * np.pi * df.Time), "cos": np.cos(2 * np.pi * df.Time)})
    m0 = MixedLMRegressor(reml=reml).fit(X, df.follicles, groups=df.Mare)
    m1 = MixedLMRegressor(reml=reml, correlation="ar1").fit(X, df.follicles, groups=df.Mare,
                                                           time=df.visit)
    return df, X, m0, m1


def _correlated_design(kind, seed=11, n_groups=6, size=8):
    """Groups of ``size`` rows (uneven real times for car1, gaps of 1-2 for ar1), a random
    intercept, residuals drawn with the structure's correlation (dense Cholesky here)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), size)
    if kind == "car1":
        t = np.concatenate([np.cumsum(rng.uniform(0.3, 2.0, size)) for _ in range(n_groups)])
    else:
        t = np.concatenate([np.cumsum(rng.integers(1, 3, size)) for _ in range(n_groups)]).astype(float)
    x = rng.standard_normal(g.size)
    e = np.concatenate([np.linalg.cholesky(_dense_corr(kind, 0.6, t[g == k])) @ rng.standard_normal(size)
                        for k in range(n_groups)])
    y = 1.0 + 0.5 * x + 0.7 * rng.standard_normal(n_groups)[g] + e
    return pd.DataFrame({"x": x}), y, g, t


def _dense_corr(kind, value, t):
    d = np.abs(t[:, None] - t[None, :])
    return np.where(d == 0, 1.0, value) if kind == "cs" else value ** d


@pytest.mark.parametrize("kind", ["ar1", "car1", "cs"])
@pytest.mark.parametrize("conditional", [True, False])
def test_correlated_residuals_are_drawn_with_the_fitted_covariance(kind, conditional):
    """The covariance of the simulated responses of a group over many draws is the model's:
    ``sigma^2 R_g`` about the conditional mean (BLUPs kept), ``sd^2 11' + sigma^2 R_g``
    about the fixed part (new random effects; compound symmetry without random effects, as
    nlme's gls), ``R_g`` built densely here. Every entry is
    within 4.5 Monte Carlo standard errors (``sqrt((S_ii S_jj + S_ij^2) / N)``); drawing
    independent residuals misses a lag-1 entry by more than 8 of them."""
    X, y, g, t = _correlated_design(kind)
    # compound symmetry is the random intercept's covariance: fitted without one (gls)
    kw = {"correlation_groups": g} if kind == "cs" else {"time": t, "groups": g}
    est = MixedLMRegressor(correlation=kind).fit(X, y, **kw)
    value = next(iter(est.correlation_params_.values()))
    n_sim = 4000
    Y = est.simulate(n_sim=n_sim, random_state=3, conditional=conditional)
    mean = np.asarray(est.fitted() if conditional else est.predict(X))
    for k in (0, 3):
        rows = g == k
        E = Y[rows] - mean[rows, None]
        S = E @ E.T / n_sim
        R = _dense_corr(kind, value, t[rows])
        model = est.scale_ * R
        if not conditional and kind != "cs":
            model = model + est.cov_re_[0, 0]
        se = np.sqrt((np.outer(np.diag(model), np.diag(model)) + model ** 2) / n_sim)
        assert np.all(np.abs(S - model) < 4.5 * se), np.max(np.abs(S - model) / se)
        # the test's power: independent residuals would miss a lag-1 entry by this much
        assert np.max(np.abs(np.diag(est.scale_ * R, 1)) / np.diag(se, 1)) > 8


def test_bootstrap_replicates_of_a_correlated_fit_are_plain_fits():
    """Replicate j of a bootstrap of Ovary's AR(1) fit is the estimator fitted to
    ``simulate(...)[:, j]`` (the refits search the correlation in a bracket around the
    fit's, the plain fits over the whole range: the same optimum)."""
    df, X, _, m1 = _ovary_fits()
    boot = bootstrap(m1, n_boot=4, random_state=7)
    Y = simulate(m1, n_sim=4, random_state=7)
    assert list(boot.estimate.index) == ["sd_(Intercept)|Mare", "sigma", "Phi", "(Intercept)",
                                         "sin", "cos"]
    assert boot.estimate["Phi"] == m1.correlation_params_["Phi"]
    for j in range(4):
        plain = MixedLMRegressor(correlation="ar1").fit(X, Y[:, j], groups=df.Mare, time=df.visit)
        expected = np.concatenate([[np.sqrt(plain.cov_re_[0, 0]), np.sqrt(plain.scale_),
                                    plain.correlation_params_["Phi"]], plain.fe_params_])
        np.testing.assert_allclose(boot.replicates.iloc[j].to_numpy(), expected, rtol=1e-5)


def test_bootstrap_of_a_correlated_fit_recovers_its_phi_on_average():
    """The bootstrap's mean Phi equals the mean estimate of fits to responses drawn here
    (an AR(1) recursion in numpy, no package code) from the same parameters: both estimate
    E[Phi_hat] (which differs from Phi by the estimator's bias), so the two means agree
    within 4.5 standard errors of their difference; residuals drawn independently would
    give a mean near 0."""
    rng = np.random.default_rng(5)
    n_groups, size = 100, 10
    g = np.repeat(np.arange(n_groups), size)
    t = np.tile(np.arange(1, size + 1), n_groups)
    X = pd.DataFrame({"x": rng.standard_normal(g.size)})

    def ar1(phi, sigma, rng):
        z = rng.standard_normal((n_groups, size))
        e = np.empty_like(z)
        e[:, 0] = z[:, 0]
        for k in range(1, size):
            e[:, k] = phi * e[:, k - 1] + np.sqrt(1 - phi ** 2) * z[:, k]
        return sigma * e.ravel()

    y = 1.0 + 0.5 * X["x"].to_numpy() + ar1(0.5, 1.0, rng)
    est = MixedLMRegressor(correlation="ar1").fit(X, y, correlation_groups=g, time=t)
    phi, sigma = est.correlation_params_["Phi"], np.sqrt(est.scale_)
    n = 40
    boot = bootstrap(est, n_boot=n, random_state=2).replicates["Phi"].to_numpy()
    mean_fit = X.to_numpy() @ est.coef_ + est.intercept_
    oracle = np.array([
        MixedLMRegressor(correlation="ar1").fit(X, mean_fit + ar1(phi, sigma, rng), correlation_groups=g,
                                                time=t).correlation_params_["Phi"] for _ in range(n)])
    se = np.sqrt(boot.var(ddof=1) / n + oracle.var(ddof=1) / n)
    assert abs(boot.mean() - oracle.mean()) < 4.5 * se
    assert abs(boot.mean() - phi) < 0.05


def test_pb_test_of_ar1_against_independent_residuals_on_ovary():
    """pbkrtest's PBmodcomp of nlme's Ovary AR(1) model against independent residuals: the
    statistic is the ML likelihood ratio (nlme's ML logLik of the AR(1) fit, in
    ovary_ar1_ml.json), no simulated LR (phi = 0) reaches it."""
    ref = json.loads((OVARY_DIR / "ovary_ar1_ml.json").read_text())
    _, _, m0, m1 = _ovary_fits()
    _, _, m0_ml, _ = _ovary_fits(reml=False)
    test = pb_test(m0, m1, n_boot=10, random_state=1)
    assert test.df == 1
    np.testing.assert_allclose(test.statistic, 2 * (ref["llf"] - m0_ml.llf_), rtol=1e-6)
    assert test.n_failed == 0
    assert np.all(test.replicates > -1e-6) and np.all(test.replicates < test.statistic)
    assert test.pvalue == 1 / 11


def test_power_of_a_correlated_fit_refits_with_its_correlation():
    """power's replicates are refits of the correlated model (Wald and LR); designs with
    other numbers of levels are refused (the residual groups would change)."""
    _, _, _, m1 = _ovary_fits()
    res = power(m1, "cos", effect=-2.0, test="lr", n_sim=6, random_state=1)
    assert res.n_failed == 0 and 0 <= res.power <= 1
    with pytest.raises(NotImplementedError, match="correlated residuals"):
        power(m1, "cos", n_groups={"Mare": 20}, n_sim=2, test="wald")
