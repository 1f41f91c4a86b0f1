"""Kenward-Roger with correlated residuals (corAR1, corCAR1, corExp, corCompSymm).

There is no R reference: pbkrtest takes lme4 fits only, and lme4 has no residual
correlation; mmrm's Kenward-Roger (models without random effects) differentiates in its
own unconstrained parameters with ``W`` from the observed information, so its numbers
differ by design (the second-derivative terms depend on the parametrisation).

The cross-product implementation is checked against a brute-force oracle written here
with ``n x n`` matrices: ``V`` built from the fitted parameters, its first and second
derivatives in every variance parameter (each covariance entry, each stratum's residual
variance and the correlation's parameter on nlme's scale) by central finite differences
of ``V`` itself, and Kenward & Roger's (1997) formulas with their second-derivative terms
``R_ij`` (SAS PROC MIXED's DDFM=KR). A continuity property ties the correlated
adjustment at ``Phi -> 0`` to the uncorrelated one, whose numbers are pbkrtest's
(tests/inference/test_kenward_roger.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.inference.kenward_roger import kenward_roger_model

from _reference import REFERENCE_DIR

STRUCT_DIR = REFERENCE_DIR / "structures"


def rel_err(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---- the dense oracle ------------------------------------------------------------------------


def _correlation(kind, value, d):
    """The oracle's own correlation of two rows ``d`` apart (nlme's parametrisations)."""
    if kind == "ar1":
        return np.where(d == 0, 1.0, np.sign(value) ** np.round(d) * np.abs(value) ** d)
    if kind == "car1":
        return value ** d
    if kind == "exp":
        return np.exp(-d / value)
    return np.where(d == 0, 1.0, value)  # cs


@dataclasses.dataclass
class Design:
    """A correlated model's rows, in their own order."""

    X: np.ndarray  # (n, p), intercept included
    terms: list  # per term: (labels (n,), Z (n, q))
    resgroups: np.ndarray  # residual group of each row
    times: np.ndarray
    kind: str
    strata: np.ndarray | None = None  # stratum label of each row
    weights: np.ndarray | None = None


def _params_of(est):
    """The fit's variance parameters in Kenward-Roger's order: each term's covariance
    entries (lower triangle, column by column), each stratum's residual variance, the
    correlation's parameter."""
    gamma = []
    for cov in est.model_.solution.cov_re():
        q = cov.shape[0]
        gamma += [cov[i, j] for j in range(q) for i in range(j, q)]
    gamma += list(est.residual_var_.values())
    gamma += list(est.correlation_params_.values())
    return np.array(gamma, dtype=float), list(est.residual_var_)


def _V(design: Design, gamma: np.ndarray, strata_labels: list) -> np.ndarray:
    """``V = sum_k Z_k (I (x) Sigma_k) Z_k' + S^{1/2} W^{-1/2} R(phi) W^{-1/2} S^{1/2}``."""
    n = design.X.shape[0]
    V = np.zeros((n, n))
    at = 0
    for labels, Z in design.terms:
        q = Z.shape[1]
        cov = np.zeros((q, q))
        for j in range(q):
            for i in range(j, q):
                cov[i, j] = cov[j, i] = gamma[at]
                at += 1
        same = np.asarray(labels)[:, None] == np.asarray(labels)[None, :]
        V += (Z @ cov @ Z.T) * same
    S = len(strata_labels)
    sig2 = gamma[at:at + S]
    phi = gamma[at + S]
    if design.strata is None:
        var = np.full(n, sig2[0])
    else:
        var = np.array([sig2[strata_labels.index(s)] for s in design.strata])
    if design.weights is not None:
        var = var / design.weights
    same = design.resgroups[:, None] == design.resgroups[None, :]
    d = np.abs(design.times[:, None] - design.times[None, :])
    R = np.where(same, _correlation(design.kind, phi, d), 0.0)
    sd = np.sqrt(var)
    return V + sd[:, None] * R * sd[None, :]


def dense_kenward_roger(design: Design, gamma: np.ndarray, strata_labels: list):
    """Kenward & Roger (1997) with ``n x n`` matrices: ``(Phi, Phi_A, P, W, info)``.

    ``G_i = dV/dgamma_i`` and ``d^2V/dgamma_i dgamma_j`` by central differences of ``V``
    (no parameter is assumed to enter ``V`` linearly); ``R_ij = X'V^{-1} (d^2V) V^{-1}X``,
    ``Phi_A = Phi + 2 Phi (sum_ij W_ij (Q_ij - P_i Phi P_j - R_ij / 4)) Phi``."""
    X = design.X
    k = gamma.size
    h = 1e-4 * np.maximum(np.abs(gamma), 1e-2 * np.max(np.abs(gamma[:-1])))
    h[-1] = 1e-4 * max(abs(gamma[-1]), 0.5)  # second differences lose eps |V| / h^2

    def V_at(*moves):
        g = gamma.copy()
        for i, s in moves:
            g[i] += s * h[i]
        return _V(design, g, strata_labels)

    V = V_at()
    G = [(V_at((i, 1)) - V_at((i, -1))) / (2 * h[i]) for i in range(k)]
    D2 = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(i, k):
            if i == j:
                D2[i][i] = (V_at((i, 1)) - 2 * V + V_at((i, -1))) / h[i] ** 2
            else:
                D2[i][j] = (V_at((i, 1), (j, 1)) - V_at((i, 1), (j, -1)) - V_at((i, -1), (j, 1))
                            + V_at((i, -1), (j, -1))) / (4 * h[i] * h[j])
                D2[j][i] = D2[i][j]
    Vi = np.linalg.inv(V)
    ViX = Vi @ X
    Phi = np.linalg.inv(X.T @ ViX)
    P = np.array([-ViX.T @ Gi @ ViX for Gi in G])
    Q = np.array([[ViX.T @ G[i] @ Vi @ G[j] @ ViX for j in range(k)] for i in range(k)])
    R = np.array([[ViX.T @ D2[i][j] @ ViX for j in range(k)] for i in range(k)])
    Kt = np.array([[np.trace(Vi @ G[i] @ Vi @ G[j]) for j in range(k)] for i in range(k)])
    info = np.array([[Kt[i, j] - 2 * np.trace(Phi @ Q[i, j]) + np.trace(Phi @ P[i] @ Phi @ P[j])
                      for j in range(k)] for i in range(k)])
    W = 2 * np.linalg.inv(info)
    U = sum(W[i, j] * (Q[i, j] - P[i] @ Phi @ P[j] - 0.25 * R[i, j])
            for i in range(k) for j in range(k))
    return Phi, Phi + 2 * Phi @ U @ Phi, P, W, info


def dense_ddf(Phi, P, W, L):
    """Kenward & Roger's (1997, sec. 4) denominator df of ``L beta = 0``."""
    L = np.atleast_2d(L)
    q = L.shape[0]
    Theta = L.T @ np.linalg.inv(L @ Phi @ L.T) @ L
    M = [Theta @ Phi @ Pi @ Phi for Pi in P]
    A1 = sum(W[i, j] * np.trace(M[i]) * np.trace(M[j]) for i in range(len(P)) for j in range(len(P)))
    A2 = sum(W[i, j] * np.trace(M[i] @ M[j]) for i in range(len(P)) for j in range(len(P)))
    B = (A1 + 6 * A2) / (2 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
    rho = ((1 - A2 / q) / (1 - c2 * B)) ** 2 * (1 + c1 * B) / (q * (1 - c3 * B))
    return 4 + (q + 2) / (q * rho - 1)


# ---- the cases ---------------------------------------------------------------------------------


def _ovary():
    """Ovary (nlme): follicles ~ sin + cos + (1 | Mare), corAR1(~ visit | Mare)."""
    df = pd.read_csv(STRUCT_DIR / "ovary_ar1_reml.csv", dtype={"Mare": str})
    X = pd.DataFrame({"sin": np.sin(2 * np.pi * df.Time), "cos": np.cos(2 * np.pi * df.Time)})
    est = MixedLMRegressor(correlation="ar1").fit(X, df.follicles, groups=df.Mare, time=df.visit)
    n = len(df)
    design = Design(np.column_stack([np.ones(n), X]), [(df.Mare.to_numpy(), np.ones((n, 1)))],
                    df.Mare.to_numpy(), df.visit.to_numpy(float), "ar1")
    return est, design


def _bodyweight(strata: bool):
    """BodyWeight (nlme): weight ~ Time * Diet + (Time | Rat), corCAR1(~ Time | Rat) on
    uneven days (1, 8, 15, ..., 43, 44, ...); with ``strata`` a residual variance per Diet
    (constant within a rat)."""
    name = "bodyweight_car1_varident.csv" if strata else "bodyweight_car1_reml.csv"
    df = pd.read_csv(STRUCT_DIR / name, dtype={"Rat": str, "Diet": str})
    d2, d3 = (df.Diet == "2").astype(float), (df.Diet == "3").astype(float)
    X = pd.DataFrame({"Time": df.Time, "Diet2": d2, "Diet3": d3, "Time:Diet2": df.Time * d2,
                      "Time:Diet3": df.Time * d3})
    Z = np.column_stack([np.ones(len(df)), df.Time])
    est = MixedLMRegressor(correlation="car1").fit(
        X, df.weight, groups=df.Rat, Z=Z, time=df.Time,
        residual_groups=df.Diet if strata else None)
    design = Design(np.column_stack([np.ones(len(df)), X]), [(df.Rat.to_numpy(), Z)],
                    df.Rat.to_numpy(), df.Time.to_numpy(float), "car1",
                    df.Diet.to_numpy() if strata else None)
    return est, design


def _simulated(kind, seed=0, weights=False):
    """Random intercepts of 12 groups; the correlation within 2 residual groups per group
    (a sub-group, e.g. a period) at uneven times (cs: exchangeable rows)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 8, size=24)
    sub = np.repeat(np.arange(24), sizes)
    g = sub // 2
    n = sub.size
    times = np.concatenate([np.cumsum(rng.uniform(0.3, 2.0, s)) for s in sizes])
    x = rng.standard_normal((n, 2))
    true = {"exp": 1.5, "cs": 0.4, "car1": 0.5}[kind]
    R = np.where(sub[:, None] == sub[None, :],
                 _correlation(kind, true, np.abs(times[:, None] - times[None, :])), 0.0)
    e = np.linalg.cholesky(R + 1e-12 * np.eye(n)) @ rng.standard_normal(n)
    w = rng.uniform(0.5, 2.0, n) if weights else None
    y = x @ [1.0, -0.5] + 0.8 * rng.standard_normal(12)[g] + (e if w is None else e / np.sqrt(w))
    est = MixedLMRegressor(correlation=kind).fit(
        x, y, groups=g, time=None if kind == "cs" else times, correlation_groups=sub,
        sample_weight=w)
    design = Design(np.column_stack([np.ones(n), x]), [(g, np.ones((n, 1)))], sub,
                    times if kind != "cs" else np.arange(n, dtype=float), kind, None, w)
    return est, design


def _orthodont_gls():
    """Orthodont (nlme): gls(distance ~ age * Sex, corCompSymm(~ 1 | Subject)), no random
    effects: V = sigma^2 R(Rho)."""
    df = pd.read_csv(STRUCT_DIR / "orthodont_cs_reml.csv", dtype={"Subject": str, "Sex": str})
    male = (df.Sex == "Male").astype(float)
    X = pd.DataFrame({"age": df.age, "SexMale": male, "age:SexMale": df.age * male})
    est = MixedLMRegressor(correlation="cs").fit(X, df.distance, correlation_groups=df.Subject)
    design = Design(np.column_stack([np.ones(len(df)), X]), [], df.Subject.to_numpy(),
                    np.arange(len(df), dtype=float), "cs")
    return est, design


def _two_factors_aliased():
    """Two nested grouping factors (subjects within 10 sites) with the AR(1) within
    subjects, and an aliased column (dropped, as lme4 does)."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(3, 7, size=30)
    sub = np.repeat(np.arange(30), sizes)
    g = sub // 3
    n = sub.size
    visit = np.concatenate([np.arange(1, s + 1) for s in sizes]).astype(float)
    x = rng.standard_normal((n, 2))
    y = (x @ [1, -0.5] + rng.standard_normal(10)[g] + 0.7 * rng.standard_normal(30)[sub]
         + rng.standard_normal(n))
    with pytest.warns(UserWarning, match="rank deficient"):
        est = MixedLMRegressor(correlation="ar1").fit(
            np.column_stack([x, x[:, 0]]), y, groups=pd.DataFrame({"site": g, "subject": sub}),
            time=visit, correlation_groups=sub)
    design = Design(np.column_stack([np.ones(n), x]), [(g, np.ones((n, 1))), (sub, np.ones((n, 1)))],
                    sub, visit, "ar1")
    return est, design


def _negative_ar1_missing_visits():
    """AR(1) with a negative Phi on visits with gaps (missed visits: lags above 1)."""
    rng = np.random.default_rng(8)
    sizes = rng.integers(4, 9, size=25)
    g = np.repeat(np.arange(25), sizes)
    n = g.size
    visit = np.concatenate([np.sort(rng.choice(np.arange(1, 12), s, replace=False))
                            for s in sizes]).astype(float)
    R = np.where(g[:, None] == g[None, :],
                 _correlation("ar1", -0.45, np.abs(visit[:, None] - visit[None, :])), 0.0)
    x = rng.standard_normal((n, 1))
    y = x[:, 0] + rng.standard_normal(25)[g] + np.linalg.cholesky(R) @ rng.standard_normal(n)
    est = MixedLMRegressor(correlation="ar1").fit(x, y, groups=g, time=visit)
    design = Design(np.column_stack([np.ones(n), x]), [(g, np.ones((n, 1)))], g, visit, "ar1")
    return est, design


def _strata_within_groups():
    """A variance per period (visits 1-3, then later ones) varying within each subject, next
    to an AR(1) within subjects: V is not linear in the strata's variances (each entry is
    sigma_a sigma_b R), so their second derivatives enter as well."""
    rng = np.random.default_rng(11)
    sizes = rng.integers(5, 9, size=30)
    g = np.repeat(np.arange(30), sizes)
    n = g.size
    visit = np.concatenate([np.arange(1, s + 1) for s in sizes]).astype(float)
    period = np.where(visit <= 3, "early", "late")
    sd = np.where(period == "early", 1.0, 1.8)
    R = np.where(g[:, None] == g[None, :],
                 _correlation("ar1", 0.5, np.abs(visit[:, None] - visit[None, :])), 0.0)
    x = rng.standard_normal((n, 2))
    e = sd * (np.linalg.cholesky(R) @ rng.standard_normal(n))
    y = x @ [1.0, 0.5] + rng.standard_normal(30)[g] + e
    est = MixedLMRegressor(correlation="ar1").fit(x, y, groups=g, time=visit,
                                                   residual_groups=period)
    design = Design(np.column_stack([np.ones(n), x]), [(g, np.ones((n, 1)))], g, visit, "ar1",
                    period)
    return est, design


CASES = {
    "strata_within_groups_ar1": _strata_within_groups,
    "negative_ar1_missing_visits": _negative_ar1_missing_visits,
    "two_factors_aliased_ar1": _two_factors_aliased,
    "orthodont_cs_gls": _orthodont_gls,
    "ovary_ar1": _ovary,
    "bodyweight_car1_slopes": lambda: _bodyweight(False),
    "bodyweight_car1_slopes_strata": lambda: _bodyweight(True),
    "simulated_exp": lambda: _simulated("exp"),
    "simulated_cs": lambda: _simulated("cs", seed=1),
    "simulated_car1_weights": lambda: _simulated("car1", seed=2, weights=True),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    est, design = CASES[request.param]()
    gamma, strata = _params_of(est)
    return est, kenward_roger_model(est), dense_kenward_roger(design, gamma, strata)


def test_the_fits_are_interior():
    """The oracle's differences need the correlation inside its bounds."""
    for name, make in CASES.items():
        est, _ = make()
        value = next(iter(est.correlation_params_.values()))
        assert 0.05 < abs(value) < 0.95 or name == "simulated_exp", (name, value)


def test_unadjusted_covariance_is_the_fits(case):
    est, kr, (Phi, *_) = case
    assert rel_err(kr.cov_beta, Phi) < 1e-8
    cov = np.asarray(est.cov_fe_)
    kept = np.isfinite(np.diag(cov))  # aliased columns are NaN
    assert rel_err(kr.cov_beta, cov[np.ix_(kept, kept)]) < 1e-7


def test_p_matrices_and_the_information_match_the_oracle(case):
    _, kr, (Phi, Phi_A, P, W, info) = case
    assert rel_err(kr.P, P) < 1e-6
    assert rel_err(kr.information, info) < 1e-6
    assert rel_err(kr.W, W) < 1e-6


def test_adjusted_covariance_matches_the_oracle_with_the_second_derivative_terms(case):
    _, kr, (Phi, Phi_A, P, W, info) = case
    assert rel_err(kr.cov_beta_adj, Phi_A) < 1e-6
    # the correction is resolved, not just the unadjusted covariance
    assert rel_err(kr.cov_beta_adj - kr.cov_beta, Phi_A - Phi) < 1e-5


def test_df_of_coefficients_and_a_joint_contrast_match_the_oracle(case):
    _, kr, (Phi, Phi_A, P, W, info) = case
    p = Phi.shape[0]
    for row in np.eye(p):
        np.testing.assert_allclose(kr.ddf(row), dense_ddf(Phi, P, W, row), rtol=1e-6)
    L = np.eye(p)[1:]
    np.testing.assert_allclose(kr.ddf(L), dense_ddf(Phi, P, W, L), rtol=1e-6)


def test_parameter_names_end_with_the_correlation():
    """pbkrtest's order (covariance entries, residual variances), then nlme's name of the
    correlation's parameter."""
    est, _ = _bodyweight(True)
    names = kenward_roger_model(est).param_names
    assert names == ["cov[0,0]|Rat", "cov[0,1]|Rat", "cov[1,1]|Rat", "sigma2|1", "sigma2|2",
                     "sigma2|3", "Phi"]


# ---- the continuity at independence ----------------------------------------------------------


def test_at_phi_near_zero_the_other_parameters_are_the_uncorrelated_adjustments():
    """Orthodont's distance ~ age + (age | Subject) (pbkrtest's numbers: the uncorrelated
    tests) with an AR(1) on the visits, held at Phi = 1e-9 and the uncorrelated fit's
    estimates: Phi, the P_i and the information of the covariance entries and sigma^2 are
    the uncorrelated ones, the correlation adds a row and column (nonzero: Phi is a
    parameter of the model even at 0)."""
    from mixedlm_sklearn.datasets import load_orthodont

    df = load_orthodont()
    Z = np.column_stack([np.ones(len(df)), df.age])
    plain = MixedLMRegressor().fit(df[["age"]], df.distance, groups=df.Subject, Z=Z)
    corr = MixedLMRegressor(correlation="ar1").fit(df[["age"]], df.distance, groups=df.Subject,
                                                    Z=Z, time=(df.age - 6) // 2)
    held = copy.copy(corr)
    model = corr.model_
    held.model_ = dataclasses.replace(
        model, solution=plain.model_.solution,
        correlation=dataclasses.replace(model.correlation, value=1e-9))
    a, b = kenward_roger_model(held), kenward_roger_model(plain)
    assert a.param_names == b.param_names + ["Phi"]
    assert rel_err(a.cov_beta, b.cov_beta) < 1e-8
    assert rel_err(a.P[:-1], b.P) < 1e-8
    assert rel_err(a.information[:-1, :-1], b.information) < 1e-8
    assert a.information[-1, -1] > 0 and np.all(a.information[-1] != 0)
    # and it is the oracle's (which the uncorrelated fit's held parameters give)
    design = Design(np.column_stack([np.ones(len(df)), df.age]), [(df.Subject.to_numpy(), Z)],
                    df.Subject.to_numpy(), ((df.age - 6) // 2).to_numpy(float), "ar1")
    gamma = np.append(_params_of(plain)[0], 1e-9)
    Phi, Phi_A, P, W, info = dense_kenward_roger(design, gamma, ["(all)"])
    assert rel_err(a.cov_beta_adj, Phi_A) < 1e-6


def test_a_correlation_estimated_on_its_bound_drops_out():
    """car1's Phi = 0 (exp's range = 0) is the bound of independent residuals, where R's
    derivative in Phi is not finite: the adjustment is then the uncorrelated model's."""
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(15), 5)
    t = np.tile(np.arange(5.0), 15) + rng.uniform(0, 0.5, g.size)
    x = rng.standard_normal(g.size)
    y = x + rng.standard_normal(15)[g] + rng.standard_normal(g.size)
    est = MixedLMRegressor(correlation="car1").fit(x[:, None], y, groups=g, time=t)
    plain = MixedLMRegressor().fit(x[:, None], y, groups=g)
    held = copy.copy(est)
    held.model_ = dataclasses.replace(
        est.model_, solution=plain.model_.solution,
        correlation=dataclasses.replace(est.model_.correlation, value=0.0))
    a, b = kenward_roger_model(held), kenward_roger_model(plain)
    assert a.param_names == b.param_names
    assert rel_err(a.cov_beta_adj, b.cov_beta_adj) < 1e-10


# ---- the estimator's tests use it --------------------------------------------------------------


@pytest.fixture(scope="module")
def bodyweight():
    from mixedlm_sklearn import lmer

    df = pd.read_csv(STRUCT_DIR / "bodyweight_car1_reml.csv", dtype={"Rat": str, "Diet": str})
    return lmer("weight ~ Time * Diet + (Time | Rat)", df, correlation="car1(~ Time | Rat)")


def test_summary_with_kenward_roger(bodyweight):
    kr = kenward_roger_model(bodyweight)
    s = bodyweight.summary(ddf="kenward-roger")
    assert s.ddf == "Kenward-Roger"
    fe = s.fixed_effects
    np.testing.assert_allclose(fe["std_error"], np.sqrt(np.diag(kr.cov_beta_adj)), rtol=1e-12)
    np.testing.assert_allclose(fe["df"], kr.row_ddf(np.eye(6)), rtol=1e-12)
    np.testing.assert_allclose(bodyweight.cov_fe(adjust="kenward-roger"), kr.cov_beta_adj,
                               rtol=1e-12)


def test_wald_test_and_anova_with_kenward_roger(bodyweight):
    kr = kenward_roger_model(bodyweight)
    names = list(bodyweight.fe_params_.index)
    L = np.zeros((2, 6))
    L[0, names.index("Time:Diet2")] = L[1, names.index("Time:Diet3")] = 1.0
    test = bodyweight.wald_test(["Time:Diet2", "Time:Diet3"], ddf="kenward-roger")
    ref = kr.f_test(L, bodyweight.fe_params_.to_numpy())
    assert test.method == "kenward-roger"
    np.testing.assert_allclose([test.statistic, test.df_denom, test.pvalue],
                               [ref.statistic, ref.ddf, ref.pvalue], rtol=1e-10)
    table = bodyweight.anova(ddf="kenward-roger")
    row = table.loc["Time:Diet"] if hasattr(table, "loc") else table.frame().loc["Time:Diet"]
    np.testing.assert_allclose(row["DenDF"], ref.ddf, rtol=1e-10)


def test_emmeans_default_to_kenward_roger(bodyweight):
    """As for an lmer fit, emmeans' default df are Kenward-Roger's, with the adjusted
    covariance (the means of Diet at the mean time)."""
    kr = kenward_roger_model(bodyweight)
    df = pd.read_csv(STRUCT_DIR / "bodyweight_car1_reml.csv")
    t = df.Time.mean()
    L = np.array([[1, t, 0, 0, 0, 0], [1, t, 1, 0, t, 0], [1, t, 0, 1, 0, t]], dtype=float)
    table = bodyweight.emmeans("Diet").table.frame()
    np.testing.assert_allclose(table["df"].to_numpy(), kr.row_ddf(L), rtol=1e-10)
    np.testing.assert_allclose(table["SE"].to_numpy(),
                               np.sqrt(np.einsum("ri,ij,rj->r", L, kr.cov_beta_adj, L)), rtol=1e-10)


# ---- what is refused -----------------------------------------------------------------------------


def test_a_fit_from_chunks_is_refused():
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(20), 4)
    df = pd.DataFrame({"g": g, "visit": np.tile(np.arange(1, 5), 20), "x": rng.standard_normal(80)})
    df["y"] = df.x + rng.standard_normal(20)[g] + rng.standard_normal(80)
    est = MixedLMRegressor(correlation="ar1").fit_chunks(
        [df.iloc[:40], df.iloc[40:]], y="y", groups="g", X=["x"], time="visit")
    with pytest.raises(ValueError, match="needs the fit's rows|need the fit's rows"):
        est.summary(ddf="kenward-roger")


def test_ml_fits_are_refused():
    df = pd.read_csv(STRUCT_DIR / "ovary_ar1_reml.csv", dtype={"Mare": str})
    est = MixedLMRegressor(correlation="ar1", reml=False).fit(
        df[["Time"]], df.follicles, groups=df.Mare, time=df.visit)
    with pytest.raises(ValueError, match="REML"):
        kenward_roger_model(est)


def test_residual_groups_too_large_for_dense_algebra_are_refused(monkeypatch):
    import mixedlm_sklearn._correlation as corr

    est, _ = _ovary()
    monkeypatch.setattr(corr, "MAX_KR_COST", 1e3)
    with pytest.raises(ValueError, match="dense matrices per residual group"):
        est.summary(ddf="kenward-roger")


def test_too_many_dense_products_are_refused(monkeypatch):
    import mixedlm_sklearn.inference.kenward_roger as kr_module

    est, _ = _bodyweight(True)
    monkeypatch.setattr(kr_module, "MAX_RESIDUAL_ENTRIES", 1e4)
    with pytest.raises(ValueError, match="3 residual strata holds 25 dense matrices"):
        kenward_roger_model(est)


def test_computed_once_per_fit_and_read_only(bodyweight):
    """summary, anova, wald_test and emmeans share one computation; its arrays cannot be
    changed through any of them, and cov_fe returns a copy."""
    kr = kenward_roger_model(bodyweight)
    assert kenward_roger_model(bodyweight) is kr
    with pytest.raises(ValueError, match="read-only"):
        kr.cov_beta_adj[0, 0] = 0.0
    cov = bodyweight.cov_fe(adjust="kenward-roger")
    cov[0, 0] = 0.0
    assert kr.cov_beta_adj[0, 0] != 0.0
