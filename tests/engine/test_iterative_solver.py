"""The iterative solver keeps the fitted-model protocol: every method of an iterative fit
works and agrees with the exact solver.

Random crossed designs (seeded: users x items, a factor and a covariate, sometimes a
random slope), each fitted with ``solver="exact"`` and ``solver="iterative"``. Two
comparisons:

* **At the same parameters**: the iterative fit moved to the exact optimum
  (:meth:`FittedModel.at`), so the engines alone differ (conjugate gradients to 1e-8 and
  the fixed-probe log-determinant against the factorisation). Everything computed from
  the solution agrees to 1e-5 relative; the Satterthwaite derivatives are differences of
  the stochastic deviance, whose error varies smoothly with theta (same probes), so they
  agree too.
* **End to end**: each solver's own optimum. The iterative optimum lies ~1e-4 relative
  from the exact one (the stochastic error of its deviance), and every method agrees to
  1e-3 relative (or 1e-3 of the quantity's scale where it is near 0), the bootstrap's
  replicates included (same seed: the same responses, each refitted by its own solver).
"""

import copy
import warnings

import numpy as np
import pandas as pd
import pytest

import mixedlm_sklearn._iterative as iterative_module
import mixedlm_sklearn._model as model_module
from mixedlm_sklearn import MixedLMRegressor, lmer, lr_test, pb_test, plotting, power
from mixedlm_sklearn._iterative import IterativeDeviance
from mixedlm_sklearn.inference import kenward_roger as kenward_roger_module


def crossed_frame(seed):
    """A random crossed design: 2,500-4,000 rows, 120-300 users, 40-90 items (uniform or
    Zipf-skewed), a covariate ``x``, a factor ``f``; a random slope of ``x`` on users in
    every third design."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2500, 4000))
    users, items = int(rng.integers(120, 300)), int(rng.integers(40, 90))
    u = rng.integers(0, users, n)
    item = np.minimum(rng.zipf(1.4, n) - 1, items - 1) if seed % 2 else rng.integers(0, items, n)
    x = rng.standard_normal(n)
    f = rng.choice(["a", "b", "c"], n)
    su, si = rng.uniform(0.4, 1.2, 2)
    slope = seed % 3 == 2
    y = (0.5 + x - 0.3 * (f == "b") + 0.2 * (f == "c") + su * rng.standard_normal(users)[u]
         + si * rng.standard_normal(items)[item] + rng.standard_normal(n))
    if slope:
        y += 0.4 * rng.standard_normal(users)[u] * x
    df = pd.DataFrame({"y": y, "x": x, "f": f, "u": u, "item": item})
    formula = "y ~ x + f + " + ("(x | u)" if slope else "(1 | u)") + " + (1 | item)"
    return df, formula


def moved(est, x):
    """A copy of ``est`` whose fit sits at the parameters ``x`` (no optimisation)."""
    out = copy.copy(est)
    out.model_ = est.model_.at(x)
    out._set_fitted(True, warn=False)
    return out


def new_rows(df, seed):
    """Rows to predict: seen users and items, new ones, and level pairs never seen together."""
    rng = np.random.default_rng(seed + 100)
    k = 40
    rows = df.sample(k, random_state=seed).reset_index(drop=True)
    rows["x"] = rng.standard_normal(k)
    rows.loc[:4, "u"] = -1  # a new user
    rows.loc[5:9, "item"] = -7  # a new item
    rows.loc[10:19, "item"] = rng.choice(df["item"].unique(), 10)  # pairs perhaps never seen
    return rows


def columns(out, name, table, names):
    """The columns of a table as separate outputs (each compared on its own scale)."""
    for column in names:
        out[f"{name}:{column}"] = table[column].to_numpy()


def solution_outputs(est, df, seed):
    """What the solution itself gives: estimates, their covariance, the conditional
    variances, prediction errors; and lmerTest's df (the Satterthwaite derivatives)."""
    new = est.model_frame_.new_data(new_rows(df, seed))
    out = {"coef": est.fe_params_.to_numpy(), "se": est.bse_.to_numpy(), "scale": [est.scale_]}
    for name, cov in est.random_effects_cov_.items():
        out[f"condvar_{name}"] = cov
    mean, std = est.predict(**new, return_std=True)
    out["predict"], out["predict_std"] = mean, std
    out["interval_lower"], out["interval_upper"] = est.predict_interval(**new)
    out["confidence_lower"], out["confidence_upper"] = est.predict_interval(**new, kind="confidence")
    columns(out, "summary", est.summary().fixed_effects, ["df", "t_value"])
    columns(out, "anova3", est.anova(type=3), ["F value", "DenDF"])
    return out


def outputs(est, df, seed):
    """Every number the methods give, by name (arrays)."""
    out = solution_outputs(est, df, seed)
    test = est.wald_test(["fb", "fc"])
    out["wald"] = [test.statistic, test.df_denom]
    columns(out, "anova1", est.anova(type=1), ["F value", "DenDF"])
    columns(out, "drop1", est.drop1(), ["F value", "DenDF"])
    columns(out, "wald_ci", est.conf_int(), ["lower", "upper"])
    r2, icc = est.r2(), est.icc()
    out["r2"] = [r2.marginal, r2.conditional, icc.adjusted, icc.unadjusted]
    emm = est.emmeans("f", ddf="satterthwaite")
    columns(out, "emmeans", emm.table, ["emmean", "SE", "df"])
    columns(out, "pairs", emm.pairs(), ["estimate", "SE", "df"])
    replicates = est.bootstrap(n_boot=3, random_state=seed).replicates
    columns(out, "bootstrap", replicates, list(replicates.columns))
    return out


def assert_agree(a, b, rtol):
    """``a`` and ``b`` agree to ``rtol`` relative, or ``rtol`` of the largest magnitude of
    the quantity (a column of a table) where an entry is near 0 (a contrast, a prediction,
    a fixed effect)."""
    assert a.keys() == b.keys()
    for name in a:
        want = np.asarray(b[name], dtype=float)
        np.testing.assert_allclose(a[name], want, rtol=rtol, atol=rtol * np.max(np.abs(want)),
                                   err_msg=name)


@pytest.fixture(scope="module", params=[0, 1, 2])
def fits(request):
    seed = request.param
    df, formula = crossed_frame(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = lmer(formula, df, solver="exact")
        iterative = lmer(formula, df, solver="iterative")
    return seed, df, exact, iterative


def test_every_method_agrees_at_the_same_parameters(fits):
    seed, df, exact, iterative = fits
    assert isinstance(iterative.model_.deviance, IterativeDeviance) and iterative.converged_
    at_exact = moved(iterative, exact.model_.x)
    assert isinstance(at_exact.model_.deviance, IterativeDeviance)
    assert_agree(solution_outputs(at_exact, df, seed), solution_outputs(exact, df, seed), rtol=1e-5)


def test_every_method_agrees_end_to_end(fits):
    seed, df, exact, iterative = fits
    assert_agree(outputs(iterative, df, seed), outputs(exact, df, seed), rtol=1e-3)


def test_kenward_roger_and_profiles_agree():
    """Kenward-Roger (dense algebra on the cross-products, at the fit's covariances) and
    profile intervals (minima of the stochastic deviance: its error varies slowly with
    theta, so the deviance differences that make zeta are far more accurate than its
    ~1e-3 value) agree with the exact solver's."""
    df, formula = crossed_frame(3)
    fits = [lmer(formula, df, solver=s) for s in ("exact", "iterative")]
    emm = [est.emmeans("f", ddf="kenward-roger").table[["emmean", "SE", "df"]].to_numpy()
           for est in fits]
    np.testing.assert_allclose(emm[1], emm[0], rtol=1e-3)
    which = ["sd_(Intercept)|item"]
    profiles = [est.conf_int(method="profile", which=which).to_numpy() for est in fits]
    np.testing.assert_allclose(profiles[1], profiles[0], rtol=1e-4)


def test_comparisons_of_iterative_fits_agree():
    """lme4's anova of nested fits and the parametric bootstrap LR test (both refit by ML
    through the iterative path)."""
    df, formula = crossed_frame(4)
    small_formula = formula.replace(" + f", "")
    results = []
    for solver in ("exact", "iterative"):
        big = lmer(formula, df, reml=False, solver=solver)
        small = lmer(small_formula, df, reml=False, solver=solver)
        lr = lr_test(small, big)
        pb = pb_test(small, big, n_boot=3, random_state=4)
        results.append((lr.statistic, pb.statistic, pb.replicates))
    for a, b in zip(*results):
        # deviance differences: the stochastic error of the log-determinant (~1e-3 at
        # most) against statistics of order 1-100
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-3)


def test_auto_on_large_crossed_data_never_leads_to_a_crash(monkeypatch, tmp_path):
    """Where "auto" picks the iterative solver, every method runs (here with the
    conditional variances beyond the exact budget: estimated, on request)."""
    monkeypatch.setattr(model_module, "AUTO_MAX_EXACT_FLOPS", 1.0)
    monkeypatch.setattr(iterative_module, "EXACT_CONDITIONAL_COV_FLOPS", 0.0)
    df, formula = crossed_frame(5)
    est = lmer(formula, df)
    assert isinstance(est.model_.deviance, IterativeDeviance)
    assert est.random_effects_cov_ is None  # stochastic: on request
    cov, se = est.model_.solution.conditional_cov(), est.model_.solution.conditional_cov_se()
    assert [c.shape for c in cov] == [s.shape for s in se]
    rows = est.model_frame_.new_data(new_rows(df, 5))
    est.predict(**rows, return_std=True)
    est.predict_interval(**rows)
    est.summary()
    est.wald_test("x")
    est.anova()
    est.drop1()
    est.ranova()
    est.r2()
    est.icc()
    est.conf_int()
    est.emmeans("f", ddf="satterthwaite")
    est.fitted()
    est.residuals()
    est.simulate(2, random_state=0)
    est.bootstrap(n_boot=2, random_state=0)
    power(est, "x", n_sim=2, random_state=0)
    import matplotlib

    matplotlib.use("Agg")
    plotting.caterpillar(est, term="item")
    # Kenward-Roger's dense algebra has a size limit (whatever the solver): it refuses
    # by name, pointing to the Satterthwaite df
    monkeypatch.setattr(kenward_roger_module, "MAX_DIMENSION", 10)
    with pytest.raises(ValueError, match="ddf='satterthwaite'"):
        est.summary(ddf="kenward-roger")


def test_bootstrap_of_a_singular_fit_leaves_the_bound():
    """An item variance of 0: the refits to simulated responses start from it, and where a
    replicate's own optimum has a positive variance the iterative refit finds it, as the
    exact optimiser's escapes from the bound do."""
    rng = np.random.default_rng(3)
    n = 4000
    u, item = rng.integers(0, 200, n), rng.integers(0, 50, n)
    x = rng.standard_normal((n, 1))
    y = x[:, 0] + rng.standard_normal(200)[u] + rng.standard_normal(n)
    g = pd.DataFrame({"u": u, "item": item})
    reps = []
    for solver in ("exact", "iterative"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = MixedLMRegressor(reml=False, solver=solver).fit(x, y, groups=g)
        assert est.theta_[1] == 0.0
        reps.append(est.bootstrap(n_boot=6, random_state=1).replicates)
    sd_item = reps[0]["sd_(Intercept)|item"]
    assert (sd_item > 0.01).sum() >= 2 and (sd_item == 0).sum() >= 2
    for name in reps[0].columns:
        want = reps[0][name].to_numpy()
        np.testing.assert_allclose(reps[1][name], want, rtol=1e-3, atol=1e-3 * np.abs(want).max(),
                                   err_msg=name)
