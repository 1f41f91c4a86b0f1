"""Correlated residuals within groups (nlme's corAR1, corCAR1, corExp, corCompSymm).

References: nlme fits in ``data/reference/structures`` (see /work/shared/README.md,
"reference/structures/"); their REML log-likelihood excludes ``0.5 log|X'X|``, as ours.
Oracle: the dense marginal likelihood with ``V = Z D Z' + sigma^2 R`` built explicitly and
maximised with scipy from several starts.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, optimize

from mixedlm_sklearn import MixedLMRegressor, SingularFitWarning

from _dense import correlation_matrix
from _reference import REFERENCE_DIR, STRUCTURE_CASES, VARIDENT_CORRELATED_CASES

STRUCT_DIR = REFERENCE_DIR / "structures"
_LOG_2PI = float(np.log(2.0 * np.pi))


def _load(name):
    assert name in STRUCTURE_CASES
    ref = json.loads((STRUCT_DIR / f"{name}.json").read_text())
    labels = {"Mare": str, "Rat": str, "Diet": str, "Subject": str, "Sex": str}
    return pd.read_csv(STRUCT_DIR / f"{name}.csv", dtype=labels), ref


def _ovary(name):
    df, ref = _load(name)
    X = pd.DataFrame({"sin": np.sin(2 * np.pi * df.Time), "cos": np.cos(2 * np.pi * df.Time)})
    est = MixedLMRegressor(correlation="ar1", reml=ref["method"] == "REML").fit(
        X, df.follicles, groups=df.Mare, time=df.visit)
    return df, ref, est


def _bodyweight():
    df, ref = _load("bodyweight_car1_reml")
    d2, d3 = (df.Diet == "2").astype(float), (df.Diet == "3").astype(float)
    X = pd.DataFrame({"Time": df.Time, "Diet2": d2, "Diet3": d3, "Time:Diet2": df.Time * d2,
                      "Time:Diet3": df.Time * d3})
    Z = np.column_stack([np.ones(len(df)), df.Time])
    est = MixedLMRegressor(correlation="car1").fit(X, df.weight, groups=df.Rat, Z=Z, time=df.Time)
    return df, ref, est


def _orthodont():
    df, ref = _load("orthodont_cs_reml")
    male = (df.Sex == "Male").astype(float)
    X = pd.DataFrame({"age": df.age, "SexMale": male, "age:SexMale": df.age * male})
    est = MixedLMRegressor(correlation="cs").fit(X, df.distance, correlation_groups=df.Subject)
    return df, ref, est


def _check_against(ref, est, param):
    assert est.llf_ >= ref["llf"] - 1e-6
    np.testing.assert_allclose(est.fe_params_.to_numpy(), ref["fe_params"], rtol=1e-4)
    np.testing.assert_allclose(est.bse_.to_numpy(), ref["bse_fe"], rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(est.scale_), ref["sigma"], rtol=1e-4)
    np.testing.assert_allclose(est.correlation_params_[param], ref["correlation_params"][param],
                               rtol=1e-4)
    np.testing.assert_allclose(est.df_model_, ref["df_model"])
    np.testing.assert_allclose(est.aic_, ref["aic"], rtol=1e-8, atol=2e-6)


@pytest.mark.parametrize("name", ["ovary_ar1_reml", "ovary_ar1_ml"])
def test_ar1_agrees_with_nlme_on_ovary(name):
    _, ref, est = _ovary(name)
    _check_against(ref, est, "Phi")
    np.testing.assert_allclose(est.cov_re_, ref["cov_re"]["Mare"], rtol=1e-4)
    np.testing.assert_allclose(est.fitted()[:30], ref["fitted_head"], rtol=1e-6)


def test_car1_with_random_slopes_agrees_with_nlme_on_bodyweight():
    _, ref, est = _bodyweight()
    _check_against(ref, est, "Phi")
    np.testing.assert_allclose(est.cov_re_, ref["cov_re"]["Rat"], rtol=1e-4)


def test_compound_symmetry_agrees_with_nlme_gls_on_orthodont():
    _, ref, est = _orthodont()
    _check_against(ref, est, "Rho")


def test_compound_symmetry_equals_the_random_intercept_model():
    """nlme's note: with rho >= 0, compound symmetry and a random intercept are one marginal
    covariance: the same log-likelihood, rho = s_u^2 / (s_u^2 + s_e^2)."""
    df, ref, est = _orthodont()
    male = (df.Sex == "Male").astype(float)
    X = pd.DataFrame({"age": df.age, "SexMale": male, "age:SexMale": df.age * male})
    ri = MixedLMRegressor().fit(X, df.distance, groups=df.Subject)
    assert abs(ri.llf_ - est.llf_) < 1e-6
    rho = float(ri.cov_re_[0, 0] / (ri.cov_re_[0, 0] + ri.scale_))
    np.testing.assert_allclose(est.correlation_params_["Rho"], rho, rtol=1e-4)


def test_reference_marginal_covariance_of_the_first_group():
    """nlme's marginal covariance of the first group rebuilt from our estimates."""
    df, ref, est = _bodyweight()
    g1 = ref["group1"]
    rows = np.asarray(g1["rows_1based"]) - 1
    t = df.Time.to_numpy()[rows]
    R = est.correlation_params_["Phi"] ** np.abs(t[:, None] - t[None, :])
    Z = np.column_stack([np.ones(rows.size), t])
    V = Z @ est.cov_re_ @ Z.T + est.scale_ * R
    np.testing.assert_allclose(est.scale_ * R, g1["resid_cov"], rtol=2e-4)
    np.testing.assert_allclose(V, g1["marginal_cov"], rtol=2e-4)


# ---- the dense oracle ---------------------------------------------------------------------------


def _dense_deviance(X, y, Z, codes, times, kind, cov_re, sigma2, value, reml, weights=None):
    """-2 log-likelihood (REML: lme4's/nlme's criterion, without log|X'X|), beta by GLS;
    with weights ``w`` the residual covariance ``sigma^2 D^{1/2} C D^{1/2}``, ``D =
    diag(1/w)`` (nlme's varFixed(~ 1/w) next to the correlation)."""
    n = y.size
    sd = np.ones(n) if weights is None else 1.0 / np.sqrt(weights)
    V = np.zeros((n, n))
    for g in np.unique(codes):
        i = np.flatnonzero(codes == g)
        C = correlation_matrix(kind, value, times[i]) * np.outer(sd[i], sd[i])
        V[np.ix_(i, i)] = Z[i] @ cov_re @ Z[i].T + sigma2 * C
    c = linalg.cho_factor(V)
    Vi_X = linalg.cho_solve(c, X)
    A = X.T @ Vi_X
    beta = np.linalg.solve(A, Vi_X.T @ y)
    r = y - X @ beta
    logdet = 2.0 * np.log(np.diag(c[0])).sum()
    dev = logdet + r @ linalg.cho_solve(c, r) + n * _LOG_2PI
    if reml:
        dev += np.linalg.slogdet(A)[1] - X.shape[1] * _LOG_2PI
    return float(dev)


def _unpack(par, q, kind, n_max):
    L = np.zeros((q, q))
    L[np.tril_indices(q)] = par[:q * (q + 1) // 2]
    sigma2 = float(np.exp(par[q * (q + 1) // 2]))
    u = par[-1]
    if kind == "ar1":
        value = np.tanh(u)
    elif kind == "car1":
        value = 1.0 / (1.0 + np.exp(-u))
    elif kind == "exp":
        value = np.exp(u)
    else:
        lo = -1.0 / (n_max - 1)
        value = lo + (1.0 - lo) / (1.0 + np.exp(-u))
    return L @ L.T, sigma2, value


def _oracle_min(X, y, Z, codes, times, kind, reml, starts, weights=None):
    q = Z.shape[1]
    n_max = np.bincount(codes).max()

    def f(par):
        cov_re, sigma2, value = _unpack(par, q, kind, n_max)
        try:
            return _dense_deviance(X, y, Z, codes, times, kind, cov_re, sigma2, value, reml,
                                   weights)
        except (np.linalg.LinAlgError, ValueError):
            return np.inf

    return _lowest_from(f, starts, 20000)


def _lowest_from(f, starts, max_evaluations: int) -> float:
    """The lowest value of ``f`` found from each start by Nelder-Mead, then BFGS from
    where it stopped (the brute-force oracles' minimiser)."""
    best = np.inf
    for s in starts:
        res = optimize.minimize(f, s, method="Nelder-Mead",
                                options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": max_evaluations,
                                         "maxfev": max_evaluations})
        res = optimize.minimize(f, res.x, method="BFGS", options={"gtol": 1e-9})
        best = min(best, res.fun)
    return best


def _random_design(kind, q, true_value, seed, few_gaps=False):
    """Uneven gaps: integers 1-2 for ar1; otherwise real ones, all distinct or (few_gaps)
    three distinct values."""
    rng = np.random.default_rng(seed)
    m = 7
    sizes = rng.integers(3, 7, m)
    codes = np.repeat(np.arange(m), sizes)
    times = []
    for s in sizes:
        if kind == "ar1":
            times.append(np.cumsum(rng.integers(1, 3, s)).astype(float))
        elif few_gaps:
            times.append(np.cumsum(rng.choice([0.4, 1.0, 1.7], s)))
        else:
            times.append(np.cumsum(rng.uniform(0.2, 2.0, s)))
    times = np.concatenate(times)
    n = codes.size
    x = rng.standard_normal(n)
    X = np.column_stack([np.ones(n), x])
    Z = np.column_stack([np.ones(n), times])[:, :q]
    cov_re = np.diag([1.0, 0.1][:q])
    y = X @ np.array([1.0, 0.5])
    for g in range(m):
        i = np.flatnonzero(codes == g)
        R = correlation_matrix(kind, true_value, times[i])
        y[i] += Z[i] @ rng.multivariate_normal(np.zeros(q), cov_re)
        y[i] += np.linalg.cholesky(R) @ rng.standard_normal(i.size)
    return X, y, Z, codes, times


CASES = [("ar1", 0.05), ("ar1", 0.95), ("car1", 0.05), ("car1", 0.95), ("exp", 0.3),
         ("exp", 5.0), ("cs", 0.05), ("cs", 0.9)]


@pytest.mark.parametrize("q", [0, 1, 2])
@pytest.mark.parametrize("kind,true_value", CASES)
def test_likelihood_equals_the_dense_one_at_its_optimum(kind, true_value, q):
    """Random intercept (q=1, REML), random intercept and slope (q=2, ML), none (q=0,
    generalised least squares, REML). Compound symmetry with random effects whose
    group means can absorb a group's mean residual (a slope, or an intercept) has an
    unbounded likelihood as rho -> -1/(n_max - 1) or a ridge of optima (nlme's note on
    Orthodont): it is checked with a random intercept, whose ridge has one height."""
    if kind == "cs" and q == 2:
        pytest.skip("compound symmetry with a random slope: see the docstring")
    reml = q != 2
    seed = CASES.index((kind, true_value)) * 10 + q
    X, y, Z, codes, times = _random_design(kind, max(q, 1), true_value, seed=seed)
    Z = Z if q else np.zeros((y.size, 0))
    est = MixedLMRegressor(correlation=kind, reml=reml).fit(
        X[:, 1:], y, groups=codes if q else None, Z=Z if q else None, time=times,
        correlation_groups=None if q else codes)
    value = est.correlation_params_[{"ar1": "Phi", "car1": "Phi", "exp": "range", "cs": "Rho"}[kind]]
    cov_re = np.atleast_2d(est.cov_re_) if q else np.zeros((0, 0))
    ours = _dense_deviance(X, y, Z, codes, times, kind, cov_re, est.scale_, value, reml)
    # our log-likelihood is the dense one at our estimates ...
    np.testing.assert_allclose(-2.0 * est.llf_, ours, rtol=1e-9, atol=1e-8)
    # ... and no start of the dense optimiser finds a better one
    k = q * (q + 1) // 2
    u0 = {"ar1": 0.5, "car1": 0.0, "exp": 0.0, "cs": 0.0}[kind]
    starts = []
    for scale, u in [(1.0, u0), (0.3, u0 - 2.0), (2.0, u0 + 2.0)]:
        chol = np.eye(q)[np.tril_indices(q)] * scale
        starts.append(np.concatenate([chol[:k], [np.log(scale)], [u]]))
    best = _oracle_min(X, y, Z, codes, times, kind, reml, starts)
    assert -2.0 * est.llf_ <= best + 2e-6


# ---- the joint deviance: the correlation parameter in the optimiser's x -------------------------


def _joint(kind, q, true_value, seed, reml):
    from mixedlm_sklearn._correlation import (STRUCTURES, CorrelatedRows, CorrelationRows,
                                              JointDeviance, components)
    from mixedlm_sklearn._terms import Term, Terms

    X, y, Z, codes, times = _random_design(kind, q, true_value, seed, few_gaps=True)
    terms = Terms([Term("g", tuple(f"z{j}" for j in range(q)), int(codes.max()) + 1)])
    st = STRUCTURES[kind]()
    rows = CorrelationRows.from_arrays(codes, times, kind == "ar1")
    comps = components(CorrelatedRows.of(st, rows, X, y, [(codes, Z)], terms))
    assert comps is not None  # few lags or group sizes: the components
    return X, y, Z, codes, times, st, rows, JointDeviance(comps, reml)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("kind", ["ar1", "car1", "exp", "cs"])
def test_joint_deviance_is_the_dense_one_and_its_gradient_the_central_differences(kind, reml):
    """x = (theta, u) with a random intercept and slope: the value is the dense profiled
    deviance at the solution's parameters, the analytic gradient (the correlation's
    coordinate included) equals central differences; u from near independence to a
    strong correlation."""
    X, y, Z, codes, times, st, rows, dev = _joint(kind, 2, 0.5 if kind != "exp" else 1.0, 3, reml)
    for u in (-3.0, 0.3, 3.0):
        x = np.array([1.2, -0.3, 0.5, u])
        value, grad = dev.value_and_grad(x)
        sol = dev.solution(x)
        L = np.array([[x[0], 0.0], [x[1], x[2]]])
        dense = _dense_deviance(X, y, Z, codes, times, kind, sol.scale * L @ L.T, sol.scale,
                                st.value(u, rows), reml)
        np.testing.assert_allclose(value, dense, rtol=1e-10)
        h = 1e-5
        numeric = np.array([(dev(x + h * e) - dev(x - h * e)) / (2 * h) for e in np.eye(x.size)])
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind,true_value", [("ar1", 0.05), ("ar1", 0.95), ("car1", 0.05),
                                             ("car1", 0.95), ("exp", 0.3), ("exp", 5.0),
                                             ("cs", 0.05), ("cs", 0.6)])
def test_joint_fit_equals_the_outer_search_and_the_dense_optimum(kind, true_value, monkeypatch):
    """Gaps of three distinct lengths (the joint fit's components): the estimate equals the
    outer search's (the correlation profiled by a bounded search around whole fits) and the
    dense likelihood's optimum from several starts. Compound symmetry without random
    effects (next to a random intercept its optima form a ridge of one height)."""
    import mixedlm_sklearn._correlation as corr

    q = 0 if kind == "cs" else 2
    reml = kind in ("ar1", "cs")
    X, y, Z, codes, times = _random_design(kind, max(q, 1), true_value, seed=7, few_gaps=True)
    Z = Z[:, :q]

    def fit():
        return MixedLMRegressor(correlation=kind, reml=reml).fit(
            X[:, 1:], y, groups=codes if q else None, Z=Z if q else None, time=times,
            correlation_groups=None if q else codes)

    joint = fit()
    monkeypatch.setattr(corr, "MAX_COMPONENTS", 0)  # every design to the outer search
    outer = fit()
    assert joint.llf_ >= outer.llf_ - 1e-7
    name = {"ar1": "Phi", "car1": "Phi", "exp": "range", "cs": "Rho"}[kind]
    if abs(joint.llf_ - outer.llf_) < 1e-6:
        np.testing.assert_allclose(joint.correlation_params_[name], outer.correlation_params_[name],
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(joint.fe_params_, outer.fe_params_, rtol=1e-4, atol=1e-6)
    value = joint.correlation_params_[name]
    cov_re = np.atleast_2d(joint.cov_re_) if q else np.zeros((0, 0))
    ours = _dense_deviance(X, y, Z, codes, times, kind, cov_re, joint.scale_, value, reml)
    np.testing.assert_allclose(-2.0 * joint.llf_, ours, rtol=1e-9, atol=1e-8)
    k = q * (q + 1) // 2
    u0 = {"ar1": 0.5, "car1": 0.0, "exp": 0.0, "cs": 0.0}[kind]
    starts = [np.concatenate([np.eye(q)[np.tril_indices(q)][:k] * s, [np.log(s)], [u]])
              for s, u in [(1.0, u0), (0.3, u0 - 2.0), (2.0, u0 + 2.0)]]
    assert -2.0 * joint.llf_ <= _oracle_min(X, y, Z, codes, times, kind, reml, starts) + 2e-6


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_weighted_ar1_agrees_with_nlme_varfixed_on_ovary(method):
    """sample_weight w with AR(1): nlme's lme(..., weights = varFixed(~ 1/w)), w = 1 +
    (visit mod 3) / 2."""
    df, _ = _load("ovary_ar1_reml")
    ref = json.loads((STRUCT_DIR / "ovary_ar1_weighted.json").read_text())[method]
    X = pd.DataFrame({"sin": np.sin(2 * np.pi * df.Time), "cos": np.cos(2 * np.pi * df.Time)})
    est = MixedLMRegressor(correlation="ar1", reml=method == "REML").fit(
        X, df.follicles, groups=df.Mare, time=df.visit, sample_weight=1 + (df.visit % 3) / 2)
    assert est.llf_ >= ref["llf"] - 1e-6
    np.testing.assert_allclose(est.fe_params_.to_numpy(), ref["fe_params"], rtol=1e-4)
    np.testing.assert_allclose(est.bse_.to_numpy(), ref["bse_fe"], rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(est.scale_), ref["sigma"], rtol=1e-4)
    np.testing.assert_allclose(est.correlation_params_["Phi"], ref["Phi"], rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(est.cov_re_[0, 0]), ref["sd_re"], rtol=1e-4)


@pytest.mark.parametrize("kind,few_gaps", [("ar1", False), ("car1", True), ("car1", False),
                                           ("exp", True), ("cs", False)])
def test_weights_with_a_correlation_equal_the_dense_likelihood(kind, few_gaps):
    """sample_weight w next to a correlation: the residual covariance sigma^2 D^{1/2} C
    D^{1/2}, D = diag(1/w). Our log-likelihood is the dense one at our estimates, and no
    start of the dense optimiser finds a better one (joint fit and, with irregular times,
    the outer search). Compound symmetry without random effects (gls)."""
    X, y, Z, codes, times = _random_design(kind, 1, 0.6 if kind != "exp" else 1.0, seed=11,
                                           few_gaps=few_gaps)
    q = 0 if kind == "cs" else 1
    Z = Z[:, :q]
    w = np.random.default_rng(5).uniform(0.3, 3.0, y.size)

    def fit(**kwargs):
        return MixedLMRegressor(correlation=kind).fit(
            X[:, 1:], y, groups=codes if q else None, Z=Z if q else None, time=times,
            correlation_groups=None if q else codes, **kwargs)

    est = fit(sample_weight=w)
    name = {"ar1": "Phi", "car1": "Phi", "exp": "range", "cs": "Rho"}[kind]
    value = est.correlation_params_[name]
    cov_re = np.atleast_2d(est.cov_re_) if q else np.zeros((0, 0))
    ours = _dense_deviance(X, y, Z, codes, times, kind, cov_re, est.scale_, value, True, w)
    np.testing.assert_allclose(-2.0 * est.llf_, ours, rtol=1e-9, atol=1e-8)
    u0 = {"ar1": 0.5, "car1": 0.0, "exp": 0.0, "cs": 0.0}[kind]
    starts = [np.array([s] * q + [np.log(s), u]) for s, u in [(1.0, u0), (0.3, u0 - 2.0),
                                                              (2.0, u0 + 2.0)]]
    assert -2.0 * est.llf_ <= _oracle_min(X, y, Z, codes, times, kind, True, starts, w) + 2e-6
    # unit weights are no weights
    plain, ones = fit(), fit(sample_weight=np.ones(y.size))
    np.testing.assert_allclose(ones.llf_, plain.llf_, rtol=1e-12)


# ---- input ---------------------------------------------------------------------------------------


def _small(n_groups=5, size=4, seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), size)
    t = np.tile(np.arange(1.0, size + 1), n_groups)
    X = rng.standard_normal((g.size, 1))
    y = X[:, 0] + rng.standard_normal(n_groups)[g] + rng.standard_normal(g.size)
    return X, y, g, t


@pytest.mark.parametrize("change,match", [
    (lambda t: t[[1, 0, 2, 3] + list(range(4, t.size))], "not increasing"),
    (lambda t: np.where(np.arange(t.size) == 1, t[0], t), "duplicate times"),
    (lambda t: t - 3.0, "non-negative"),
    (lambda t: np.where(np.arange(t.size) == 2, np.nan, t), "missing or infinite"),
])
def test_bad_times_are_refused(change, match):
    X, y, g, t = _small()
    est = MixedLMRegressor(correlation="car1")
    with pytest.raises(ValueError, match=match):
        est.fit(X, y, groups=g, time=change(t))
    assert not hasattr(est, "model_")


def test_ar1_needs_integer_positions():
    X, y, g, t = _small()
    with pytest.raises(ValueError, match="integer positions"):
        MixedLMRegressor(correlation="ar1").fit(X, y, groups=g, time=t + 0.5)


def test_unknown_structure_is_refused():
    X, y, g, t = _small()
    with pytest.raises(ValueError, match="correlation must be one of"):
        MixedLMRegressor(correlation="arma").fit(X, y, groups=g)


def test_correlation_inputs_without_a_structure_are_refused():
    X, y, g, t = _small()
    with pytest.raises(TypeError, match="need correlation="):
        MixedLMRegressor().fit(X, y, groups=g, time=t)


def test_zero_weights_with_a_correlation_are_refused():
    X, y, g, t = _small()
    w = np.ones(20)
    w[3] = 0.0
    est = MixedLMRegressor(correlation="ar1")
    with pytest.raises(ValueError, match="sample_weight must be positive"):
        est.fit(X, y, groups=g, sample_weight=w)
    assert not hasattr(est, "model_")


def test_residual_groups_nested_within_the_grouping_factor():
    """A residual group inside a level (two series per subject): whitening per series equals
    the dense likelihood with a block-diagonal R within each level."""
    X, y, g, t = _small(n_groups=6, size=6, seed=3)
    series = g * 2 + (np.arange(g.size) % 6 >= 3)
    t = np.tile([1.0, 2.0, 3.0, 1.0, 2.0, 3.0], 6)
    est = MixedLMRegressor(correlation="ar1").fit(X, y, groups=g, time=t, correlation_groups=series)
    phi = est.correlation_params_["Phi"]
    n = y.size
    V = est.cov_re_[0, 0] * (g[:, None] == g[None, :]) + est.scale_ * np.where(
        series[:, None] == series[None, :], phi ** np.abs(t[:, None] - t[None, :]), 0.0)
    Xf = np.column_stack([np.ones(n), X])
    c = linalg.cho_factor(V)
    A = Xf.T @ linalg.cho_solve(c, Xf)
    r = y - Xf @ np.linalg.solve(A, Xf.T @ linalg.cho_solve(c, y))
    dev = (2 * np.log(np.diag(c[0])).sum() + r @ linalg.cho_solve(c, r) + (n - 2) * _LOG_2PI
           + np.linalg.slogdet(A)[1])
    np.testing.assert_allclose(-2 * est.llf_, dev, rtol=1e-10)


def test_a_singular_residual_correlation_at_the_estimate_warns():
    """Compound symmetry next to a random intercept and slope: rho runs to -1/(n_max - 1),
    where fitting a group's mean exactly makes the likelihood unbounded."""
    from sklearn.exceptions import ConvergenceWarning

    X, y, Z, codes, times = _random_design("cs", 2, 0.05, seed=0)
    with pytest.warns(ConvergenceWarning, match="nearly\\) singular"):
        est = MixedLMRegressor(correlation="cs", reml=False).fit(
            X[:, 1:], y, groups=codes, Z=Z, time=times)
    assert est.correlation_params_["Rho"] < -0.19999


# ---- inference -----------------------------------------------------------------------------------


def test_summary_and_print_report_the_correlation_and_its_tests():
    _, ref, est = _ovary("ovary_ar1_reml")
    s = est.summary()
    assert s.ddf == "Satterthwaite"  # the df's own test: tests/inference/test_inference.py
    assert "corAR1(form = ~ visit | Mare), Phi = 0.607442" in str(s)
    np.testing.assert_allclose(s.fixed_effects["std_error"], ref["bse_fe"], rtol=1e-4)
    assert est.summary(ddf="asymptotic").ddf == "asymptotic"
    assert "Residual correlation: corAR1" in str(est)
    # the Wald intervals of the fixed effects use nlme's covariance of beta
    ci = est.conf_int()
    z = 1.959963984540054
    np.testing.assert_allclose(ci["upper"] - ci["lower"], 2 * z * np.asarray(ref["bse_fe"]), rtol=1e-4)


def test_kenward_roger_takes_the_correlation_as_a_variance_parameter():
    """summary(ddf="kenward-roger") of a correlated fit: the correlation's parameter is a
    variance parameter (the numbers: tests/inference/test_kenward_roger_correlation.py)."""
    from mixedlm_sklearn.inference.kenward_roger import kenward_roger_model

    _, _, est = _ovary("ovary_ar1_reml")
    s = est.summary(ddf="kenward-roger")
    assert s.ddf == "Kenward-Roger"
    kr = kenward_roger_model(est)
    assert kr.param_names[-1] == "Phi"
    np.testing.assert_allclose(s.fixed_effects["std_error"], np.sqrt(np.diag(kr.cov_beta_adj)),
                               rtol=1e-12)


def test_ranova_keeps_the_correlation_as_nlme_anova():
    """ranova drops a random-effects term and keeps the residual correlation, searched
    again: nlme's anova of the REML fits with and without the term (ranova_correlated.json:
    Ovary's AR(1) lme against its gls, BodyWeight's CAR1 (Time | Rat) against (1 | Rat))."""
    from mixedlm_sklearn import lmer

    ref = json.loads((STRUCT_DIR / "ranova_correlated.json").read_text())
    _, _, ovary = _ovary("ovary_ar1_reml")
    df, _ = _load("bodyweight_car1_reml")
    bodyweight = lmer("weight ~ Time * Diet + (Time | Rat)", df, correlation="car1(~ Time | Rat)")
    for est, r in ((ovary, ref["ovary"]), (bodyweight, ref["bodyweight"])):
        table = est.ranova()
        assert table["logLik"].iloc[1] >= r["llf_reduced"] - 1e-6
        np.testing.assert_allclose(table["logLik"].to_numpy(), [r["llf_full"], r["llf_reduced"]],
                                   rtol=1e-7)
        np.testing.assert_allclose(table["LRT"].iloc[1], r["L_ratio"], rtol=1e-5)
        assert list(table["npar"]) == list(r["df"])
        np.testing.assert_allclose(table["Pr(>Chisq)"].iloc[1], r["p"], rtol=1e-3)


@pytest.mark.parametrize("name", ["ovary_ar1_ml", "ovary_ar1_reml"])
def test_lr_test_against_independent_residuals(name):
    """Independent residuals are phi = 0 of the AR(1) model: one parameter fewer (nlme's
    anova(m0, m1) with the same fixed effects, REML or ML)."""
    from mixedlm_sklearn import lr_test

    df, ref, m1 = _ovary(name)
    X = pd.DataFrame({"sin": np.sin(2 * np.pi * df.Time), "cos": np.cos(2 * np.pi * df.Time)})
    m0 = MixedLMRegressor(reml=ref["method"] == "REML").fit(X, df.follicles, groups=df.Mare)
    res = lr_test(m0, m1)
    assert res.df == 1
    np.testing.assert_allclose(res.statistic, 2 * (ref["llf"] - m0.llf_), rtol=1e-6)


# ---- formulas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["ar1(~ visit | Mare)", "corAR1(form = ~ 1 | Mare)", "ar1"])
def test_lmer_with_nlme_correlation_forms_on_ovary(spec):
    from mixedlm_sklearn import lmer

    df, ref = _load("ovary_ar1_reml")
    m = lmer("follicles ~ sin(2*pi*Time) + cos(2*pi*Time) + (1 | Mare)", df, correlation=spec)
    _check_against(ref, m, "Phi")
    assert list(m.fe_params_.index) == ref["fe_names"]


def test_lmer_car1_with_random_slopes_on_bodyweight():
    from mixedlm_sklearn import lmer

    df, ref = _load("bodyweight_car1_reml")
    m = lmer("weight ~ Time * Diet + (Time | Rat)", df, correlation="car1(~ Time | Rat)")
    _check_against(ref, m, "Phi")
    assert list(m.fe_params_.index) == ref["fe_names"]
    assert "corCAR1(form = ~ Time | Rat)" in str(m.summary())


@pytest.mark.parametrize("spec", ['ar1(~ __import__("os").getcwd() | Mare)', "ar1(~ visit + 1 | Mare)",
                                  "arma(~ visit | Mare)", "ar1(~ visit | Mare); 1"])
def test_correlation_strings_are_matched_never_evaluated(spec):
    from mixedlm_sklearn import lmer

    df, _ = _load("ovary_ar1_reml")
    with pytest.raises(ValueError, match="correlation must be one of"):
        lmer("follicles ~ Time + (1 | Mare)", df, correlation=spec)


def test_correlation_columns_outside_formula_mode_are_refused():
    X, y, g, t = _small()
    with pytest.raises(ValueError, match="read in formula mode"):
        MixedLMRegressor(correlation="car1(~ Time | Rat)").fit(X, y, groups=g)


def test_correlation_column_must_exist():
    from mixedlm_sklearn import lmer

    df, _ = _load("ovary_ar1_reml")
    with pytest.raises(ValueError, match="not a column"):
        lmer("follicles ~ Time + (1 | Mare)", df, correlation="ar1(~ day | Mare)")


def test_profile_interval_of_phi_reaches_the_chi_square_cutoff_of_the_dense_profile():
    """The interval's ends are where the dense REML criterion, minimised over the other
    parameters at phi held, exceeds the minimum by the chi-square(1) 95% quantile."""
    from scipy import stats

    X, y, Z, codes, times = _random_design("car1", 1, 0.6, seed=2)  # an interior fit
    est = MixedLMRegressor(correlation="car1").fit(X[:, 1:], y, groups=codes, Z=Z, time=times)
    ci = est.conf_int(method="profile", which=["Phi"])
    # printed as every conf_int table: a title with the level, R's percent headings
    text = str(ci)
    assert text.startswith("Profile likelihood confidence intervals, 95% level")
    assert "2.5 %" in text and "97.5 %" in text and "REML criterion" in text
    lower, upper = ci.loc["Phi"]
    phi = est.correlation_params_["Phi"]
    assert lower < phi < upper
    q = stats.chi2.ppf(0.95, 1)

    def dense_profile(value):
        f = lambda p: _dense_deviance(X, y, Z, codes, times, "car1", np.array([[np.exp(p[0])]]),
                                      np.exp(p[1]), value, True)
        best = np.inf
        for s in ([0.0, 0.0], [-2.0, 0.5], [1.0, -1.0]):
            r = optimize.minimize(f, s, method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000})
            best = min(best, r.fun)
        return best

    for end in (lower, upper):
        np.testing.assert_allclose(dense_profile(end), -2 * est.llf_ + q, atol=1e-6)
    # the variance parameters' profiles hold the correlation in the optimiser, which these
    # irregular times (more lag classes than the joint deviance holds) do not allow
    with pytest.raises(NotImplementedError, match="distinct time gaps"):
        est.conf_int(method="profile")


@pytest.mark.parametrize("criterion,seed", [("ml", 13), ("reml", 13), ("ml", 16)])
def test_profile_intervals_of_sd_and_sigma_with_a_correlation_equal_the_dense_profile(criterion, seed):
    """A random intercept with CAR(1) residuals (gaps of three lengths): the profile
    intervals of the random intercept's sd and of sigma (the correlation re-estimated at
    every point: the joint deviance's x holds it) have the endpoints of a brute-force
    profile of the dense criterion (minimised over the other variance parameters and the
    correlation from several starts, the endpoint by root finding) to 1e-4; a lower end of 0
    where the brute-force profile stays below the cutoff there (the correlation takes over
    the within-rat covariance)."""
    from scipy import stats

    X, y, Z, codes, times = _random_design("car1", 1, 0.5, seed=seed, few_gaps=True)
    reml = criterion == "reml"
    est = MixedLMRegressor(correlation="car1", reml=reml).fit(X[:, 1:], y, groups=codes, Z=Z,
                                                                time=times)
    ci = est.conf_int(method="profile", criterion=criterion, which=["sd_z0|group", "sigma"])
    q = stats.chi2.ppf(0.95, 1)

    def dense(log_sd, log_sigma, u):
        return _dense_deviance(X, y, Z, codes, times, "car1", np.array([[np.exp(2 * log_sd)]]),
                               np.exp(2 * log_sigma), 1.0 / (1.0 + np.exp(-u)), reml)

    def dense_min(held, value):
        """The dense criterion minimised over the other parameters with one held."""
        def f(p):
            args = (np.log(value), p[0], p[1]) if held == "sd" else (p[0], np.log(value), p[1])
            return dense(*args)
        best = np.inf
        for s in ([0.0, 0.5], [-1.0, -1.0], [0.5, 2.0]):
            r = optimize.minimize(f, s, method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})
            best = min(best, r.fun)
        return best

    d_min = -2.0 * est.llf_
    for name, held in (("sd_z0|group", "sd"), ("sigma", "sigma")):
        for end in ci.loc[name]:
            excess = lambda v: dense_min(held, v) - d_min - q
            if end == 0.0:  # the profile stays below the cutoff down to a variance of 0
                assert held == "sd" and excess(1e-8) < 0
                continue
            a, b = 0.97 * end, 1.03 * end
            assert excess(a) * excess(b) < 0  # the brute-force endpoint lies within 3%
            brute = optimize.brentq(excess, a, b, xtol=1e-9 * end)
            np.testing.assert_allclose(end, brute, rtol=1e-4)


def test_predict_on_seen_groups_is_nlmes_conditional_prediction():
    df, ref, est = _ovary("ovary_ar1_reml")
    X = pd.DataFrame({"sin": np.sin(2 * np.pi * df.Time), "cos": np.cos(2 * np.pi * df.Time)})
    np.testing.assert_allclose(est.predict(X[:30], groups=df.Mare[:30]), ref["fitted_head"], rtol=1e-6)
    np.testing.assert_allclose(est.fitted(level="marginal")[:30], ref["fitted_head_fixed"], rtol=1e-6)


def test_a_correlated_fit_pickles_and_clones():
    import pickle

    from sklearn.base import clone

    df, _, est = _ovary("ovary_ar1_reml")
    again = pickle.loads(pickle.dumps(est))
    assert again.llf_ == est.llf_
    assert again.summary().correlation == est.summary().correlation
    X = pd.DataFrame({"sin": np.sin(2 * np.pi * df.Time), "cos": np.cos(2 * np.pi * df.Time)})[:5]
    np.testing.assert_array_equal(again.predict(X, groups=df.Mare[:5]), est.predict(X, groups=df.Mare[:5]))
    assert clone(est).get_params()["correlation"] == "ar1"


def test_the_iterative_solver_is_refused():
    X, y, g, t = _small()
    with pytest.raises(NotImplementedError, match="solver='exact'"):
        MixedLMRegressor(correlation="ar1", solver="iterative").fit(X, y, groups=g)


def test_emmeans_of_a_correlated_fit_with_satterthwaite_df():
    """emmeans(..., ddf="satterthwaite") of a correlated fit: each mean's df is
    satterthwaite_df of its row of the design at the mean time (BodyWeight's CAR1 fit; the
    default, Kenward-Roger: tests/inference/test_kenward_roger_correlation.py)."""
    from mixedlm_sklearn import lmer
    from mixedlm_sklearn.inference import satterthwaite_df

    df, _ = _load("bodyweight_car1_reml")
    m = lmer("weight ~ Time * Diet + (Time | Rat)", df, correlation="car1(~ Time | Rat)")
    table = m.emmeans("Diet", ddf="satterthwaite").table.frame()
    t = df.Time.mean()
    L = np.array([[1, t, 0, 0, 0, 0], [1, t, 1, 0, t, 0], [1, t, 0, 1, 0, t]], dtype=float)
    np.testing.assert_allclose(table["df"].to_numpy(), satterthwaite_df(m, L), rtol=1e-10)
    np.testing.assert_allclose(table["emmean"].to_numpy(), L @ m.fe_params_.to_numpy(), rtol=1e-10)


@pytest.mark.parametrize("kind", ["car1", "exp"])
def test_generalised_least_squares_on_independent_rows_reaches_the_dense_optimum(kind):
    """No random effects and independent rows: the correlation's estimate lands at or near
    its independence edge (exp's range at its lower bound, car1's phi at 0), where the
    first search does not pass the convergence check; the fit ends at the dense optimum
    (it raised numpy's 'zero-size array' error from the restart meant for variances)."""
    rng = np.random.default_rng(1)
    codes = np.repeat(np.arange(20), 6)
    times = np.tile(np.arange(1.0, 7.0), 20)
    x = rng.standard_normal(codes.size)
    y = x + rng.standard_normal(codes.size)
    X = np.column_stack([np.ones(codes.size), x])
    est = MixedLMRegressor(correlation=kind).fit(x[:, None], y, correlation_groups=codes,
                                                 time=times)
    name = {"ar1": "Phi", "car1": "Phi", "exp": "range", "cs": "Rho"}[kind]
    Z = np.zeros((codes.size, 0))
    ours = _dense_deviance(X, y, Z, codes, times, kind, np.zeros((0, 0)), est.scale_,
                           est.correlation_params_[name], True)
    np.testing.assert_allclose(-2.0 * est.llf_, ours, rtol=1e-9, atol=1e-8)
    u0 = {"ar1": 0.5, "car1": 0.0, "exp": 0.0, "cs": 0.0}[kind]
    starts = [np.array([np.log(s), u]) for s, u in [(1.0, u0), (0.5, u0 - 4.0), (2.0, u0 + 4.0)]]
    assert -2.0 * est.llf_ <= _oracle_min(X, y, Z, codes, times, kind, True, starts) + 2e-6


def test_joint_fit_leaves_a_local_optimum_for_a_singular_random_slope_basin(monkeypatch):
    """car1 next to a random intercept and slope, weighted, ML: the grid's theta searches
    stay in the non-singular basin (Phi 0.5625, -30.1128); the joint search's other starts
    reach the better optimum, a singular random-effects covariance at Phi 0.6064 (-30.0908),
    which the outer search and a dense oracle also find."""
    import mixedlm_sklearn._correlation as corr

    X, y, Z, codes, times = _random_design("car1", 2, 0.9, 12, few_gaps=True)
    w = np.random.default_rng(112).uniform(0.3, 3.0, y.size)

    def fit():
        return MixedLMRegressor(correlation="car1", reml=False).fit(
            X[:, 1:], y, groups=codes, Z=Z, time=times, sample_weight=w)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        joint = fit()
        monkeypatch.setattr(corr, "MAX_COMPONENTS", 0)
        outer = fit()
    assert joint.llf_ >= outer.llf_ - 1e-7
    assert joint.llf_ == pytest.approx(-30.0907608683, abs=1e-8)
    ours = _dense_deviance(X, y, Z, codes, times, "car1", joint.cov_re_, joint.scale_,
                           joint.correlation_params_["Phi"], False, w)
    np.testing.assert_allclose(-2.0 * joint.llf_, ours, rtol=1e-9, atol=1e-8)


# ---- a residual variance per stratum next to the correlation (nlme's varIdent) -------------------

VARIDENT_CASES = ("bodyweight_car1_varident_reml", "bodyweight_car1_varident_ml",
                  "orthodont_ar1_varident_sex_reml", "orthodont_ar1_varident_sex_ml",
                  "orthodont_cs_varident_sex_reml", "orthodont_cs_varident_sex_ml",
                  "orthodont_cs_varident_age_reml",
                  "orthodont_cs_varident_age_ml")


def _varident_fit(name, **kwargs):
    """nlme's lme/gls with correlation= and weights = varIdent(form = ~ 1 | s): the call
    is in the JSON (tests/data/reference/structures/varident_correlated.R)."""
    assert name in VARIDENT_CORRELATED_CASES
    ref = json.loads((STRUCT_DIR / f"{name}.json").read_text())
    reml = ref["method"] == "REML"
    if name.startswith("bodyweight"):
        df = pd.read_csv(STRUCT_DIR / "bodyweight_car1_varident.csv", dtype={"Rat": str, "Diet": str})
        d2, d3 = (df.Diet == "2").astype(float), (df.Diet == "3").astype(float)
        X = pd.DataFrame({"Time": df.Time, "Diet2": d2, "Diet3": d3, "Time:Diet2": df.Time * d2,
                          "Time:Diet3": df.Time * d3})
        Z = np.column_stack([np.ones(len(df)), df.Time])
        est = MixedLMRegressor(correlation="car1", reml=reml, **kwargs).fit(
            X, df.weight, groups=df.Rat, Z=Z, time=df.Time, residual_groups=df.Diet)
        return df, ref, est
    df = pd.read_csv(STRUCT_DIR / "orthodont_varident.csv", dtype={"Subject": str, "Sex": str})
    male = (df.Sex == "Male").astype(float)
    X = pd.DataFrame({"age": df.age, "SexMale": male, "age:SexMale": df.age * male})
    strata = df.Sex if name.endswith(("sex_reml", "sex_ml")) else df.age.astype(str)
    if "_ar1_" in name:
        est = MixedLMRegressor(correlation="ar1", reml=reml, **kwargs).fit(
            X, df.distance, groups=df.Subject, time=(df.age - 6) // 2, residual_groups=strata)
    else:  # gls
        est = MixedLMRegressor(correlation="cs", reml=reml, **kwargs).fit(
            X, df.distance, correlation_groups=df.Subject, residual_groups=strata)
    return df, ref, est


def _stratum_sds(est):
    """Each stratum's residual standard deviation."""
    return {k: float(np.sqrt(v)) for k, v in est.residual_var_.items()}


@pytest.mark.parametrize("name", VARIDENT_CASES)
def test_correlation_with_a_variance_per_stratum_agrees_with_nlme(name):
    """BodyWeight (corCAR1, random slopes, a variance per Diet), Orthodont (corAR1 with a
    random intercept, corCompSymm without random effects; a variance per Sex, constant
    within a subject, or per age (gls), varying within a subject), REML and ML. The strata's
    standard deviations are compared (nlme's reference stratum is its first level met).
    nlme's gls by ML scales the covariance of beta by N / (N - p) (as without strata)."""
    df, ref, est = _varident_fit(name)
    assert est.converged_
    assert est.llf_ >= ref["llf"] - 1e-6
    np.testing.assert_allclose(est.llf_, ref["llf"], atol=1e-5)
    np.testing.assert_allclose(est.fe_params_.to_numpy(), ref["fe_params"], rtol=1e-4)
    gls_ml = "cov_re" not in ref and ref["method"] == "ML"
    n, p = len(df), len(ref["fe_params"])
    factor = np.sqrt(n / (n - p)) if gls_ml else 1.0
    np.testing.assert_allclose(est.bse_.to_numpy() * factor, ref["bse_fe"], rtol=1e-4)
    sds = _stratum_sds(est)
    theirs = {k: ref["sigma"] * r for k, r in ref["var_ratios_sd"].items()}
    assert set(sds) == set(theirs)
    for k in theirs:
        np.testing.assert_allclose(sds[k], theirs[k], rtol=1e-4)
    value = ref["correlation"]["value"]
    ours = est.correlation_params_[ref["correlation"]["name"]]
    np.testing.assert_allclose(ours, value, rtol=1e-4, atol=1e-5)
    if "cov_re" in ref:
        np.testing.assert_allclose(est.cov_re_, np.atleast_2d(ref["cov_re"]), rtol=2e-4)
        np.testing.assert_allclose(est.fitted()[:20], ref["fitted_head"], rtol=1e-6)


def _dense_strata_deviance(X, y, Z, codes, times, kind, cov_re, sigma2, value, reml, strata,
                           ratios):
    """The dense deviance with the residual covariance sigma^2 S^{1/2} C S^{1/2}, S the
    rows' variance ratios (stratum ``s`` has ``ratios[s]``)."""
    return _dense_deviance(X, y, Z, codes, times, kind, cov_re, sigma2, value, reml,
                           1.0 / np.asarray(ratios)[strata])


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_orthodont_ar1_with_a_variance_per_age_goes_beyond_nlmes_optimum(method):
    """AR(1), a random intercept and a variance per age (varying within a subject): our
    deviance at nlme's estimates is nlme's (and the dense one), but nlme stops at a local
    optimum (Phi near 0): beyond it the likelihood keeps rising as the variance at age 10
    runs to 0 with Phi near 0.67 (dense likelihood: higher than nlme's by more than 0.5).
    The fit warns that it did not converge (a boundary of the variances)."""
    from mixedlm_sklearn._correlation import JointDeviance, components

    ref = json.loads((STRUCT_DIR / f"orthodont_ar1_varident_age_{method}.json").read_text())
    reml = method == "reml"
    df = pd.read_csv(STRUCT_DIR / "orthodont_varident.csv", dtype={"Subject": str, "Sex": str})
    male = (df.Sex == "Male").astype(float).to_numpy()
    X = np.column_stack([np.ones(len(df)), df.age, male, df.age * male])
    y = df.distance.to_numpy(float)
    codes = pd.factorize(df.Subject)[0]
    visit = ((df.age - 6) // 2).to_numpy(float)
    ages = ["10", "12", "14", "8"]  # our strata (sorted labels; the reference first)
    strata = np.array([ages.index(str(a)) for a in df.age])
    with pytest.warns(Warning, match="did not converge"):
        _, _, est = _varident_fit(f"orthodont_ar1_varident_age_{method}")
    # nlme's estimates in our parameters: x = (theta, eta, u) relative to stratum "10"
    sds = np.array([ref["sigma"] * ref["var_ratios_sd"][a] for a in ages])
    theta = np.sqrt(ref["cov_re"][0][0]) / sds[0]
    u = 2.0 * np.arctanh(ref["correlation"]["value"])
    dev = JointDeviance(components(est.model_.correlation.data), reml)
    x = np.concatenate([[theta], np.log(sds[1:] / sds[0]), [u]])
    np.testing.assert_allclose(-0.5 * dev(x), ref["llf"], rtol=1e-9)
    theirs = _dense_strata_deviance(X, y, np.ones((y.size, 1)), codes, visit, "ar1",
                                    np.atleast_2d(ref["cov_re"]), sds[0] ** 2,
                                    ref["correlation"]["value"], reml, strata, (sds / sds[0]) ** 2)
    np.testing.assert_allclose(-0.5 * theirs, ref["llf"], rtol=1e-10)
    # ours: higher, and the dense likelihood at our estimates confirms it
    assert est.llf_ > ref["llf"] + 0.5
    ratios = [est.residual_var_[a] / est.scale_ for a in ages]
    ours = _dense_strata_deviance(X, y, np.ones((y.size, 1)), codes, visit, "ar1",
                                  np.atleast_2d(est.cov_re_), est.scale_,
                                  est.correlation_params_["Phi"], reml, strata, ratios)
    assert -0.5 * ours > ref["llf"] + 0.5
    assert est.residual_var_["10"] < 1e-3 * min(est.residual_var_[a] for a in ages[1:])


def _strata_design(kind, q, seed, mixed):
    """A random design with two or three strata of residual variance: constant within each
    group (``mixed=False``) or varying within groups; few distinct gaps (the joint fit)."""
    X, y, Z, codes, times = _random_design(kind, max(q, 1), 0.6 if kind != "exp" else 1.0,
                                           seed=seed, few_gaps=True)
    rng = np.random.default_rng(seed + 100)
    if mixed:
        strata = rng.integers(0, 3, y.size)
    else:
        strata = rng.integers(0, 2, codes.max() + 1)[codes]
    sd = np.array([1.0, 2.0, 0.6])[strata]
    # the residuals scaled per stratum (a generating model with a variance per stratum)
    fixed = X @ np.array([1.0, 0.5])
    y = fixed + (y - fixed) * sd
    return X, y, Z[:, :q], codes, times, strata


def _strata_oracle_min(X, y, Z, codes, times, kind, reml, strata, starts):
    q = Z.shape[1]
    k = q * (q + 1) // 2
    n_max = np.bincount(codes).max()
    S = strata.max() + 1

    def f(par):
        cov_re, sigma2, value = _unpack(np.append(par[:k + 1], par[-1]), q, kind, n_max)
        ratios = np.exp(np.append(0.0, par[k + 1:k + S]))
        try:
            return _dense_strata_deviance(X, y, Z, codes, times, kind, cov_re, sigma2, value, reml,
                                          strata, ratios)
        except (np.linalg.LinAlgError, ValueError):
            return np.inf

    return _lowest_from(f, starts, 40000)


@pytest.mark.parametrize("kind,q,reml,mixed", [
    ("ar1", 1, True, False), ("ar1", 1, True, True), ("car1", 2, False, False),
    ("car1", 1, False, True), ("exp", 2, True, False), ("exp", 1, True, True),
    ("cs", 0, True, False), ("cs", 0, True, True)])
def test_a_variance_per_stratum_with_a_correlation_reaches_the_dense_optimum(kind, q, reml, mixed):
    """Strata constant within each group or varying within groups (as nlme allows), uneven
    gaps, with and without random slopes (compound symmetry without random effects): our
    log-likelihood is the dense one at our estimates, and no start of the dense optimiser
    finds a better one. (Strata varying within groups of 3-6 rows next to a random slope
    leave a stratum with at most two rows of a group, which the slope fits exactly: the
    likelihood is unbounded there, and the fit says so.)"""
    X, y, Z, codes, times, strata = _strata_design(kind, q, seed=21 + q, mixed=mixed)
    est = MixedLMRegressor(correlation=kind, reml=reml).fit(
        X[:, 1:], y, groups=codes if q else None, Z=Z if q else None, time=times,
        correlation_groups=None if q else codes, residual_groups=strata)
    assert est.converged_
    name = {"ar1": "Phi", "car1": "Phi", "exp": "range", "cs": "Rho"}[kind]
    value = est.correlation_params_[name]
    S = strata.max() + 1
    ratios = np.array([est.residual_var_[s] / est.scale_ for s in range(S)])
    cov_re = np.atleast_2d(est.cov_re_) if q else np.zeros((0, 0))
    ours = _dense_strata_deviance(X, y, Z, codes, times, kind, cov_re, est.scale_, value, reml,
                                  strata, ratios)
    np.testing.assert_allclose(-2.0 * est.llf_, ours, rtol=1e-9, atol=1e-8)
    k = q * (q + 1) // 2
    u0 = {"ar1": 0.5, "car1": 0.0, "exp": 0.0, "cs": 0.0}[kind]
    starts = [np.concatenate([np.eye(q)[np.tril_indices(q)][:k] * s, [np.log(s)],
                              np.full(S - 1, r), [u]])
              for s, r, u in [(1.0, 0.0, u0), (0.3, 1.0, u0 - 2.0), (2.0, -0.5, u0 + 2.0)]]
    best = _strata_oracle_min(X, y, Z, codes, times, kind, reml, strata, starts)
    assert -2.0 * est.llf_ <= best + 2e-6


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("kind", ["ar1", "car1", "cs"])
def test_joint_deviance_with_strata_is_the_dense_one_and_its_gradient_the_central_differences(
        kind, reml):
    """x = (theta, eta, u) with strata varying within groups: the value is the dense
    deviance at the solution's parameters and the analytic gradient (eta and u included)
    equals central differences."""
    from mixedlm_sklearn._correlation import (STRUCTURES, CorrelatedRows, CorrelationRows,
                                              JointDeviance, components)
    from mixedlm_sklearn._terms import Term, Terms

    X, y, Z, codes, times, strata = _strata_design(kind, 2, seed=4, mixed=True)
    terms = Terms([Term("g", ("z0", "z1"), int(codes.max()) + 1)])
    st = STRUCTURES[kind]()
    rows = CorrelationRows.from_arrays(codes, times, kind == "ar1")
    data = CorrelatedRows.of(st, rows, X, y, [(codes, Z)], terms, strata=strata, n_strata=3)
    assert data.mixed_strata
    dev = JointDeviance(components(data), reml)
    assert dev.n_eta == 3 and dev.n_ratios == 2
    for u in (-2.0, 0.3, 2.5):
        x = np.array([1.2, -0.3, 0.5, 0.4, -0.7, u])
        value, grad = dev.value_and_grad(x)
        sol = dev.solution(x)
        np.testing.assert_allclose(sol.ratios, np.exp(2.0 * np.array([0.0, 0.4, -0.7])))
        L = np.array([[x[0], 0.0], [x[1], x[2]]])
        dense = _dense_strata_deviance(X, y, Z, codes, times, kind, sol.scale * L @ L.T,
                                       sol.scale, st.value(u, rows), reml, strata, sol.ratios)
        np.testing.assert_allclose(value, dense, rtol=1e-10)
        h = 1e-5
        numeric = np.array([(dev(x + h * e) - dev(x - h * e)) / (2 * h) for e in np.eye(x.size)])
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


def test_a_stratum_the_random_slopes_fit_exactly_is_refused():
    """Strata varying within groups, a random intercept and slope: the fixed and random
    effects span the 10 rows of one stratum with a direction left free of random effects
    (rank of Z on them 9), so the likelihood is unbounded as that stratum's variance goes to
    0. A dense brute force confirms it: 12 Nelder-Mead starts all stop at a local optimum
    (deviance 63.8235, the stratum's log ratio -6.4), but the deviance profiled over that
    log ratio falls past a ridge (67.0 at -8) without bound (61.8 at -15, 51.8 at -25).
    One machine's optimiser ran down the ridge, another's stopped at the local optimum:
    the design is refused before the fit, with a clear error, the estimator as it was."""
    X, y, Z, codes, times, strata = _strata_design("car1", 2, seed=23, mixed=True)
    est = MixedLMRegressor(correlation="car1", reml=False)
    with pytest.raises(ValueError, match="residual variance of stratum"):
        est.fit(X[:, 1:], y, groups=codes, Z=Z, time=times, residual_groups=strata)
    assert not hasattr(est, "model_")



def test_a_stratum_reproduced_exactly_is_bounded_under_reml():
    """A random intercept, a stratum of three rows (two in one group): the fixed and random
    effects span them with one direction no random effect covers, so the likelihood is
    unbounded as the stratum's variance goes to 0 (ML: refused), but REML's log|X'V^-1X|
    rises along that direction as fast (rank [X_s Z_s] = n_s): the REML criterion has an
    interior optimum, which the fit reaches (a dense REML deviance minimised from several
    starts by Nelder-Mead, then BFGS)."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(12), 4)
    n = g.size
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=12)[g] + rng.normal(size=n)
    strata = np.zeros(n, dtype=int)
    strata[[0, 1, 4]] = 1
    with pytest.raises(ValueError, match="residual variance of stratum 1 has no finite"):
        MixedLMRegressor(reml=False).fit(x[:, None], y, groups=g, residual_groups=strata)
    est = MixedLMRegressor().fit(x[:, None], y, groups=g, residual_groups=strata)
    X = np.column_stack([np.ones(n), x])
    Z = (g[:, None] == np.arange(12)).astype(float)

    def reml_deviance(par):
        tau2, s0, s1 = np.exp(par)
        V = tau2 * Z @ Z.T + np.diag(np.where(strata == 1, s1, s0))
        Vi = np.linalg.inv(V)
        A = X.T @ Vi @ X
        beta = np.linalg.solve(A, X.T @ Vi @ y)
        r = y - X @ beta
        return (np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1] + r @ Vi @ r
                + (n - 2) * np.log(2 * np.pi))

    starts = [np.log([1.0, 1.0, 1.0]), np.log([0.5, 1.5, 0.2]), np.log([2.0, 0.8, 2.0])]
    best = _lowest_from(reml_deviance, starts, 4000)
    assert est.converged_ and est.residual_var_[1] > 1e-3
    np.testing.assert_allclose(-2 * est.llf_, best, rtol=1e-9)

def test_outer_search_with_strata_equals_the_joint_fit(monkeypatch):
    """Strata constant within each group: the rows whitened by the correlation keep their
    stratum, so the outer search (whole fits of the whitened rows, the strata as row
    weights) finds the joint fit's optimum. Strata varying within groups with more lag
    classes than the joint fit holds are refused, naming what works."""
    import mixedlm_sklearn._correlation as corr

    X, y, Z, codes, times, strata = _strata_design("car1", 1, seed=31, mixed=False)

    def fit(s):
        return MixedLMRegressor(correlation="car1").fit(X[:, 1:], y, groups=codes, Z=Z, time=times,
                                                        residual_groups=s)

    joint = fit(strata)
    monkeypatch.setattr(corr, "MAX_COMPONENTS", 0)  # every design to the outer search
    outer = fit(strata)
    np.testing.assert_allclose(outer.llf_, joint.llf_, atol=1e-7)
    np.testing.assert_allclose(outer.correlation_params_["Phi"], joint.correlation_params_["Phi"],
                               rtol=1e-4)
    for k in joint.residual_var_:
        np.testing.assert_allclose(outer.residual_var_[k], joint.residual_var_[k], rtol=1e-4)
    mixed = np.random.default_rng(0).integers(0, 2, y.size)
    est = MixedLMRegressor(correlation="car1")
    with pytest.raises(NotImplementedError, match="vary within a residual group"):
        est.fit(X[:, 1:], y, groups=codes, Z=Z, time=times, residual_groups=mixed)
    assert not hasattr(est, "model_")


def test_strata_with_a_correlation_in_lmer_summary_simulation_and_intervals():
    """lmer with correlation= and residual_groups= a column: nlme's fit; summary prints each
    stratum's residual variance next to the correlation; simulated residuals (the fitted
    random effects kept) have each stratum's variance and the CAR(1) correlation between a
    rat's consecutive weeks; a prediction interval's variance exceeds the confidence
    interval's by the row's stratum variance; a parametric bootstrap refits the strata."""
    from scipy import stats

    from mixedlm_sklearn import lmer

    df = pd.read_csv(STRUCT_DIR / "bodyweight_car1_varident.csv", dtype={"Rat": str, "Diet": str})
    ref = json.loads((STRUCT_DIR / "bodyweight_car1_varident_reml.json").read_text())
    est = lmer("weight ~ Time * Diet + (Time | Rat)", df, correlation="car1(~ Time | Rat)",
               residual_groups="Diet")
    assert est.llf_ >= ref["llf"] - 1e-6
    for k, r in ref["var_ratios_sd"].items():
        np.testing.assert_allclose(np.sqrt(est.residual_var_[k]), ref["sigma"] * r, rtol=1e-4)
    text = str(est.summary())
    assert "corCAR1(form = ~ Time | Rat)" in text
    for k in ("1", "2", "3"):
        assert f"Residual ({k})" in text
    # simulation: e = y_sim - conditional mean, 4000 draws
    sims = est.simulate(n_sim=4000, random_state=1, conditional=True)
    e = sims - est.fitted().to_numpy()[:, None]
    diet = df.Diet.to_numpy()
    for k in ("1", "2", "3"):
        rows = diet == k
        var = e[rows].var(axis=1).mean()
        se = est.residual_var_[k] * np.sqrt(2.0 / 4000)  # of one row's variance
        assert abs(var - est.residual_var_[k]) < 4.0 * se, (k, var, est.residual_var_[k])
    phi = est.correlation_params_["Phi"]
    week = (df.Rat.to_numpy()[1:] == df.Rat.to_numpy()[:-1]) & (np.diff(df.Time.to_numpy()) == 7)
    r = np.array([np.corrcoef(e[i], e[i + 1])[0, 1] for i in np.flatnonzero(week)])
    assert abs(r.mean() - phi ** 7) < 4.0 * (1 - phi ** 14) / np.sqrt(4000 * week.sum())
    # prediction intervals: the stratum's residual variance on top of the confidence's
    rows = df.iloc[[0, 70, 150]]
    lo, hi = est.predict_interval(rows)
    lo_c, hi_c = est.predict_interval(rows, kind="confidence")
    extra = ((hi - lo) / 2) ** 2 - ((hi_c - lo_c) / 2) ** 2
    expected = stats.norm.ppf(0.975) ** 2 * np.array([est.residual_var_[d] for d in rows.Diet])
    np.testing.assert_allclose(extra, expected, rtol=1e-8)
    assert len(set(np.round(extra, 6))) > 1  # the strata differ
    # a parametric bootstrap refits the correlation and the strata from their estimates
    boot = est.bootstrap(n_boot=4, random_state=0)
    assert np.all(np.isfinite(np.asarray(boot.replicates, dtype=float)))


@pytest.mark.parametrize("mixed", [False, True])
def test_r2_residual_variance_of_a_correlated_fit_averages_the_rows_strata(mixed):
    """R2's residual variance (insight's get_variance) of a model with a variance per
    stratum is the rows' average of their strata's variances, also where the strata vary
    within the correlation's groups (whose deviance holds the strata as components)."""
    from mixedlm_sklearn.inference.r2 import variance_components

    X, y, Z, codes, times, strata = _strata_design("ar1", 1, seed=22, mixed=mixed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        est = MixedLMRegressor(correlation="ar1").fit(X[:, 1:], y, groups=codes, Z=Z, time=times,
                                                      residual_groups=strata)
    rows = np.array([est.residual_var_[s] for s in strata])
    np.testing.assert_allclose(variance_components(est).residual, rows.mean(), rtol=1e-12)


def test_profile_of_sigma_with_strata_varying_within_groups_equals_the_dense_profile():
    """AR(1), a random intercept and two strata of residual variance varying within the
    groups: the profile interval of sigma (the reference stratum's; the other stratum's
    ratio, the random intercept and the correlation re-estimated at every point) has the
    endpoints of a brute-force profile of the dense ML deviance to 1e-4."""
    from scipy import stats

    X, y, Z, codes, times, strata = _strata_design("ar1", 1, seed=29, mixed=True)
    strata = strata % 2
    est = MixedLMRegressor(correlation="ar1", reml=False).fit(
        X[:, 1:], y, groups=codes, Z=Z, time=times, residual_groups=strata)
    assert est.converged_ and est.cov_re_[0, 0] > 0
    lower, upper = est.conf_int(method="profile", which=["sigma"]).loc["sigma"]
    q = stats.chi2.ppf(0.95, 1)

    def dense_min(sigma):
        def f(p):  # log sd, log ratio of stratum 1, the AR(1)'s internal parameter
            return _dense_strata_deviance(X, y, Z, codes, times, "ar1",
                                          np.array([[np.exp(2 * p[0])]]), sigma ** 2,
                                          np.tanh(p[2]), False, strata, [1.0, np.exp(p[1])])
        best = np.inf
        for s in ([0.0, 0.0, 0.5], [-1.0, 1.0, -0.5], [0.5, -1.0, 1.5]):
            r = optimize.minimize(f, s, method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 6000})
            best = min(best, r.fun)
        return best

    d_min = -2.0 * est.llf_
    for end in (lower, upper):
        excess = lambda v: dense_min(v) - d_min - q
        a, b = 0.97 * end, 1.03 * end
        assert excess(a) * excess(b) < 0
        brute = optimize.brentq(excess, a, b, xtol=1e-9 * end)
        np.testing.assert_allclose(end, brute, rtol=1e-4)


def test_joint_fit_with_a_random_slope_keeps_the_joint_other_starts():
    """AR(1) (phi 0.95) next to a random intercept and slope, REML (the design of the dense
    test above, seed 104): the grid's best point leads the joint search to a non-singular
    optimum at Phi 0.74 (log-likelihood -30.3731); the joint search's other starts from
    u = 0 reach a singular covariance at Phi 0.95 (-30.3591), to which no start in theta
    at Phi 0.74 leads, so the joint fit keeps them where a term has a slope. The dense
    likelihood at our estimates is our log-likelihood."""
    X, y, Z, codes, times = _random_design("ar1", 2, 0.95, seed=104)
    est = MixedLMRegressor(correlation="ar1", reml=True).fit(X[:, 1:], y, groups=codes, Z=Z, time=times)
    assert est.llf_ == pytest.approx(-30.35906485334902, abs=1e-7)
    ours = _dense_deviance(X, y, Z, codes, times, "ar1", np.atleast_2d(est.cov_re_), est.scale_,
                           est.correlation_params_["Phi"], True)
    np.testing.assert_allclose(-2.0 * est.llf_, ours, rtol=1e-9, atol=1e-8)
