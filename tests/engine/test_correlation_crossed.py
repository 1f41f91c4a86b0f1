"""Correlated residuals whose groups span levels of a grouping factor.

AR(1) within subjects next to a crossed item factor ``(1 | subject) + (1 | item)`` (the
repeated-measures-with-items design), or residual groups that are a column not nested in
the single factor: whitened rows fall on several levels of a term, whose cross-products
then hold self pairs (blocks between two levels of one term), factored in the dense block.

Oracle: the dense marginal likelihood with ``V = sum_k Z_k G_k Z_k' + sigma^2 S^{1/2} R
S^{1/2}`` built explicitly (``n x n``) and maximised with scipy from several starts.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, optimize

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn._crossprod import entry_cross_products
from mixedlm_sklearn._deviance import Deviance
from mixedlm_sklearn._factor import Plan
from mixedlm_sklearn._terms import Term, Terms

from _dense import correlation_matrix

_LOG_2PI = float(np.log(2.0 * np.pi))
_PARAM = {"ar1": "Phi", "car1": "Phi", "exp": "range", "cs": "Rho"}


# ---- the dense oracle -------------------------------------------------------------------------


def _residual_cov(kind, value, groups, times, sd):
    n = groups.size
    R = np.zeros((n, n))
    for g in np.unique(groups):
        i = np.flatnonzero(groups == g)
        R[np.ix_(i, i)] = correlation_matrix(kind, value, times[i]) * np.outer(sd[i], sd[i])
    return R


def _dense_deviance(d, covs, sigma2, value, reml, ratios=None):
    """-2 log-likelihood (REML without log|X'X|), beta by GLS; ``ratios`` the strata's
    variance ratios (reference first)."""
    n = d["y"].size
    sd = np.ones(n) if ratios is None else np.sqrt(np.asarray(ratios)[d["strata"]])
    if d.get("weights") is not None:  # nlme's varFixed(~ 1/w)
        sd = sd / np.sqrt(d["weights"])
    V = sigma2 * _residual_cov(d["kind"], value, d["groups"], d["times"], sd)
    for (codes, Z), cov in zip(d["factors"], covs):
        ZD = np.zeros((n, Z.shape[1] * (codes.max() + 1)))
        for a in range(Z.shape[1]):
            ZD[np.arange(n), codes * Z.shape[1] + a] = Z[:, a]
        V += ZD @ np.kron(np.eye(codes.max() + 1), cov) @ ZD.T
    X, y = d["X"], d["y"]
    c = linalg.cho_factor(V)
    Vi_X = linalg.cho_solve(c, X)
    A = X.T @ Vi_X
    beta = np.linalg.solve(A, Vi_X.T @ y)
    r = y - X @ beta
    dev = 2.0 * np.log(np.diag(c[0])).sum() + r @ linalg.cho_solve(c, r) + n * _LOG_2PI
    if reml:
        dev += np.linalg.slogdet(A)[1] - X.shape[1] * _LOG_2PI
    return float(dev), beta, V


def _value(kind, u, n_max):
    if kind == "ar1":
        return np.tanh(u)
    if kind == "car1":
        return 1.0 / (1.0 + np.exp(-u))
    if kind == "exp":
        return np.exp(u)
    lo = -1.0 / (n_max - 1)
    return lo + (1.0 - lo) / (1.0 + np.exp(-u))


def _unpack(d, par):
    covs, at = [], 0
    for _, Z in d["factors"]:
        q = Z.shape[1]
        L = np.zeros((q, q))
        L[np.tril_indices(q)] = par[at:at + q * (q + 1) // 2]
        covs.append(L @ L.T)
        at += q * (q + 1) // 2
    sigma2 = float(np.exp(par[at]))
    n_ratios = 0 if d.get("strata") is None else int(d["strata"].max())
    ratios = None if not n_ratios else np.exp(np.append(0.0, par[at + 1:at + 1 + n_ratios]))
    value = _value(d["kind"], par[-1], np.bincount(d["groups"]).max())
    return covs, sigma2, value, ratios


def _oracle(d, reml, starts):
    """The lowest dense deviance from each start (Nelder-Mead, then BFGS) and its parameters."""

    def f(par):
        covs, sigma2, value, ratios = _unpack(d, par)
        try:
            return _dense_deviance(d, covs, sigma2, value, reml, ratios)[0]
        except (np.linalg.LinAlgError, ValueError):
            return np.inf

    best = None
    for s in starts:
        res = optimize.minimize(f, s, method="Nelder-Mead",
                                options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 40000,
                                         "maxfev": 40000})
        res = optimize.minimize(f, res.x, method="BFGS", options={"gtol": 1e-9})
        if best is None or res.fun < best.fun:
            best = res
    return best.fun, _unpack(d, best.x)


def _starts(d, u0):
    out = []
    for scale, du in [(1.0, 0.0), (0.4, -1.5), (2.0, 1.5)]:
        par = []
        for _, Z in d["factors"]:
            q = Z.shape[1]
            par.extend(np.eye(q)[np.tril_indices(q)] * np.sqrt(scale))
        par.append(np.log(scale))
        if d.get("strata") is not None:
            par.extend(np.zeros(int(d["strata"].max())))
        par.append(u0 + du)
        out.append(np.array(par))
    return out


# ---- designs ---------------------------------------------------------------------------------


def _subjects_items(kind, seed, slope=False, n_subjects=9, n_items=6, size=(4, 8), true=0.6,
                    strata=None):
    """Subjects with series of uneven length, each row an item drawn at random (crossed);
    residual groups = subjects. Times: integer positions with gaps (ar1), uneven reals
    (car1, exp), 1..n (cs)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(size[0], size[1] + 1, n_subjects)
    subject = np.repeat(np.arange(n_subjects), sizes)
    n = subject.size
    item = rng.integers(0, n_items, n)
    times = []
    for s in sizes:
        if kind == "ar1":
            times.append(np.cumsum(rng.integers(1, 3, s)).astype(float))
        elif kind == "cs":
            times.append(np.arange(1.0, s + 1))
        else:
            times.append(np.cumsum(rng.uniform(0.3, 2.0, s)))
    times = np.concatenate(times)
    x = rng.standard_normal(n)
    X = np.column_stack([np.ones(n), x])
    Zs = np.column_stack([np.ones(n), times / times.max()]) if slope else np.ones((n, 1))
    cov_s = np.diag([1.0, 0.5][:Zs.shape[1]])
    y = X @ np.array([1.0, 0.5])
    b_s = rng.multivariate_normal(np.zeros(Zs.shape[1]), cov_s, n_subjects)
    y += np.einsum("ij,ij->i", Zs, b_s[subject]) + 0.8 * rng.standard_normal(n_items)[item]
    sd = np.ones(n) if strata is None else np.sqrt(np.array([1.0, 2.5])[strata])
    for g in range(n_subjects):
        i = np.flatnonzero(subject == g)
        R = correlation_matrix(kind, true, times[i]) * np.outer(sd[i], sd[i])
        y[i] += np.linalg.cholesky(R) @ rng.standard_normal(i.size)
    return {"kind": kind, "X": X, "y": y, "groups": subject, "times": times,
            "factors": [(subject, Zs), (item, np.ones((n, 1)))], "subject": subject,
            "item": item, "strata": strata}


def _fit(d, reml, names=("subject", "item"), **kwargs):
    n_terms = len(d["factors"])
    groups = pd.DataFrame({name: codes for name, (codes, _) in zip(names, d["factors"])})
    Z = {name: Z for name, (_, Z) in zip(names, d["factors"]) if Z.shape[1] > 1}
    return MixedLMRegressor(correlation=d["kind"], reml=reml, **kwargs).fit(
        pd.DataFrame({"x": d["X"][:, 1]}), d["y"],
        groups=groups if n_terms > 1 else groups.iloc[:, 0], Z=Z or None, time=d["times"],
        correlation_groups=d["groups"], sample_weight=d.get("weights"),
        residual_groups=None if d.get("strata") is None else d["strata"])


def _estimates(est, names):
    covs = [np.atleast_2d(est.cov_re_[name]) if isinstance(est.cov_re_, dict)
            else np.atleast_2d(est.cov_re_) for name in names]
    return covs, est.scale_, est.correlation_params_[_PARAM[est.correlation]]


def _check_against_oracle(d, est, reml, names, u0, rtol=1e-4):
    covs, sigma2, value = _estimates(est, names)
    ratios = None if d.get("strata") is None else np.asarray(est.model_.solution.ratios)
    ours, _, _ = _dense_deviance(d, covs, sigma2, value, reml, ratios)
    # our log-likelihood is the dense one at our estimates ...
    np.testing.assert_allclose(-2.0 * est.llf_, ours, rtol=1e-10, atol=1e-8)
    # ... the dense optimiser finds no better one, and its optimum is ours
    best, (o_covs, o_sigma2, o_value, o_ratios) = _oracle(d, reml, _starts(d, u0))
    assert -2.0 * est.llf_ <= best + 2e-6
    assert abs(-2.0 * est.llf_ - best) < 2e-6
    for mine, theirs in zip(covs, o_covs):
        # a variance at its bound 0 (singular fit) is compared on the residual's scale
        np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=rtol * o_sigma2)
    np.testing.assert_allclose(sigma2, o_sigma2, rtol=rtol)
    np.testing.assert_allclose(value, o_value, rtol=rtol, atol=rtol)
    if ratios is not None:
        np.testing.assert_allclose(ratios, o_ratios, rtol=rtol)


# ---- the likelihood at its optimum equals the dense one -----------------------------------------


@pytest.mark.parametrize("kind,reml,slope,seed", [
    ("ar1", True, False, 1),   # joint fit (few distinct gaps)
    ("ar1", False, True, 2),   # a random slope on subject, ML
    ("car1", True, False, 3),  # uneven real times: the outer search
    ("exp", False, False, 4),
])
def test_correlation_within_subjects_next_to_crossed_items_reaches_the_dense_optimum(
        kind, reml, slope, seed):
    d = _subjects_items(kind, seed, slope=slope)
    est = _fit(d, reml)
    u0 = {"ar1": 0.5, "car1": 0.0, "exp": 0.0}[kind]
    _check_against_oracle(d, est, reml, ("subject", "item"), u0)


@pytest.mark.parametrize("kind,reml", [("cs", False), ("ar1", True)])
def test_residual_groups_not_nested_in_the_single_factor_reach_the_dense_optimum(kind, reml):
    """The residual groups (subjects) cut across the one grouping factor (items): the
    factor's random effects are all in the dense block."""
    d = _subjects_items(kind, 10 + reml, true=0.4)
    d["factors"] = d["factors"][1:]
    est = _fit(d, reml, names=("item",))
    _check_against_oracle(d, est, reml, ("item",), 0.0)


@pytest.mark.filterwarnings("ignore::mixedlm_sklearn.SingularFitWarning")
@pytest.mark.parametrize("mixed", [False, True])
def test_a_variance_per_stratum_next_to_crossed_items_reaches_the_dense_optimum(mixed):
    """nlme's varIdent next to AR(1) within subjects and crossed items: strata constant
    within a subject (the whitened rows weighted) or varying within it (the joint form)."""
    rng = np.random.default_rng(21)
    d = _subjects_items("ar1", 21)
    if mixed:
        strata = rng.integers(0, 2, d["y"].size)
    else:
        strata = (d["subject"] % 2).astype(int)
    d = _subjects_items("ar1", 21, strata=strata)
    est = _fit(d, True)
    _check_against_oracle(d, est, True, ("subject", "item"), 0.5)


@pytest.mark.parametrize("kind,reml", [("ar1", True), ("cs", False)])
def test_prior_weights_with_groups_spanning_levels_reach_the_dense_optimum(kind, reml):
    """Positive sample_weight next to the correlation (the rows scaled before whitening),
    AR(1) within subjects next to crossed items, CS within subjects across the item factor."""
    d = _subjects_items(kind, 30, true=0.4)
    if kind == "cs":
        d["factors"] = d["factors"][1:]
    d["weights"] = np.random.default_rng(30).uniform(0.5, 2.0, d["y"].size)
    names = ("subject", "item") if kind == "ar1" else ("item",)
    _check_against_oracle(d, _fit(d, reml, names=names), reml, names, 0.5 if kind == "ar1" else 0.0)


# ---- the engine: self pairs ---------------------------------------------------------------------


def _dense_designs(n, rows, factors):
    """Per term the dense (n, m * q) design of entries ``(codes, Z, m)`` at their rows (a
    row's entries at one level add up)."""
    out = []
    for codes, Z, m in factors:
        q = Z.shape[1]
        D = np.zeros((n, m * q))
        np.add.at(D, (rows[:, None], codes[:, None] * q + np.arange(q)), Z)
        out.append(D)
    return out


def _entry_design(seed, q0=2):
    """Rows whose item part falls on one or two items, with signed coefficients."""
    rng = np.random.default_rng(seed)
    n, m0, m1 = 60, 6, 5
    subject = np.repeat(np.arange(m0), n // m0)
    rows, c0, c1, z0, z1 = [], [], [], [], []
    for r in range(n):
        for _ in range(rng.integers(1, 3)):
            coef = rng.standard_normal()
            rows.append(r)
            c0.append(subject[r])
            c1.append(rng.integers(m1))
            z0.append(coef * np.array([1.0, rng.standard_normal()])[:q0])
            z1.append([coef])
    rows, c0, c1 = np.array(rows), np.array(c0), np.array(c1)
    z0, z1 = np.array(z0), np.array(z1)
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = rng.standard_normal(n)
    w = rng.uniform(0.5, 2.0, n)
    terms = Terms([Term("s", tuple(f"z{a}" for a in range(q0)), m0), Term("i", ("z",), m1)])
    Zd = _dense_designs(n, rows, ((c0, z0, m0), (c1, z1, m1)))
    return X, y, w, rows, [(c0, z0), (c1, z1)], terms, Zd


def _dense_profiled(X, y, w, Zd, terms, theta, reml):
    """The profiled deviance of rows with weights ``w`` and dense designs ``Zd``."""
    lams, at = [], 0
    for t in terms:
        L = np.zeros((t.q, t.q))
        L[np.tril_indices(t.q)] = theta[at:at + t.q * (t.q + 1) // 2]
        at += t.q * (t.q + 1) // 2
        lams.append(np.kron(np.eye(t.n_levels), L))
    Lam = linalg.block_diag(*lams)
    Z = np.hstack(Zd)
    V = Z @ Lam @ Lam.T @ Z.T + np.diag(1.0 / w)
    n, p = X.shape
    Vi = np.linalg.inv(V)
    A = X.T @ Vi @ X
    r = y - X @ np.linalg.solve(A, X.T @ Vi @ y)
    dof = n - p if reml else n
    dev = np.linalg.slogdet(V)[1] + dof * (1.0 + _LOG_2PI + np.log(r @ Vi @ r / dof))
    return dev + (np.linalg.slogdet(A)[1] if reml else 0.0) + np.log(w).sum()


@pytest.mark.parametrize("rest", ["auto", "rounds"])
@pytest.mark.parametrize("reml", [True, False])
def test_self_pairs_deviance_and_gradient_equal_the_dense_ones(reml, rest):
    """A crossing first term and a self-paired rest (dense or sparse rounds): the value is
    the dense profiled deviance (``sum log w`` aside: the weights of components are no
    prior weights) and the analytic gradient central differences."""
    X, y, w, rows, factors, terms, Zd = _entry_design(5, q0=2 if rest == "auto" else 1)
    cp = entry_cross_products(np.column_stack([X, y]), w, rows, factors, terms)
    assert cp.self_paired == {1}
    plan = Plan(cp.combined(), rest=rest)
    assert plan.crossing == 0 and (plan.rounds is not None) == (rest == "rounds")
    dev = Deviance(cp, reml, plan=plan)
    theta = np.array([0.8, 0.3, 0.5, 1.3]) if rest == "auto" else np.array([0.8, 1.3])
    value, grad = dev.value_and_grad(theta)
    np.testing.assert_allclose(value, _dense_profiled(X, y, w, Zd, terms, theta, reml), rtol=1e-10)
    h = 1e-6
    numeric = [(dev(theta + h * e) - dev(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


def test_entries_of_a_row_at_the_same_levels_are_merged_exactly():
    """A row on many entries at few level combinations (a compound-symmetry group's sum):
    its entries at the same levels are merged before the pairs are formed (a group of 2,000
    rows took 1.6 GB, n_g^2 pairs); the deviance is the dense one."""
    rng = np.random.default_rng(3)
    n, m0, m1, per_row = 12, 3, 4, 40
    rows = np.repeat(np.arange(n), per_row)
    c0 = np.repeat(np.arange(n) % m0, per_row)
    c1 = rng.integers(0, m1, rows.size)
    z0 = rng.standard_normal((rows.size, 2))
    z1 = rng.standard_normal((rows.size, 1))
    terms = Terms([Term("s", ("z0", "z1"), m0), Term("i", ("z",), m1)])
    Zd = _dense_designs(n, rows, ((c0, z0, m0), (c1, z1, m1)))
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y, w = rng.standard_normal(n), rng.uniform(0.5, 2.0, n)
    cp = entry_cross_products(np.column_stack([X, y]), w, rows, [(c0, z0), (c1, z1)], terms)
    assert sum(cp.counts[1]) <= n * m1 < rows.size  # merged: at most one entry per row and item
    theta = np.array([0.8, 0.3, 0.5, 1.3])
    np.testing.assert_allclose(Deviance(cp, True)(theta), _dense_profiled(X, y, w, Zd, terms, theta, True),
                               rtol=1e-10)


def test_too_many_fill_pairs_next_to_self_pairs_are_refused_naming_the_spanning_groups():
    """The crossing term's fill beyond the plan's limit with a self-paired rest: the same
    refusal as a dense block too large (not 'use solver=iterative', which refuses them)."""
    X, y, w, rows, factors, terms, _ = _entry_design(5, q0=1)
    cp = entry_cross_products(np.column_stack([X, y]), w, rows, factors, terms)
    with pytest.raises(ValueError, match=r"span levels of the grouping factors \['i'\]"):
        Plan(cp.combined(), max_dense=2, rest="rounds", max_fill_pairs=0)


def test_self_pairs_of_every_term_are_factored_in_one_dense_block():
    """Both terms self-paired (residual groups nested in neither): no level-by-level term."""
    X, y, w, rows, factors, terms, Zd = _entry_design(6)
    rng = np.random.default_rng(0)
    c0, z0 = factors[0]
    c0 = rng.integers(0, terms[0].n_levels, c0.size)  # the subject of each entry at random
    factors[0] = (c0, z0)
    Zd[0] = np.zeros_like(Zd[0])
    np.add.at(Zd[0], (rows[:, None], c0[:, None] * 2 + np.arange(2)), z0)
    cp = entry_cross_products(np.column_stack([X, y]), w, rows, factors, terms)
    assert cp.self_paired == {0, 1}
    dev = Deviance(cp, True)
    assert dev.plan.crossing is None and not dev.plan.stages
    theta = np.array([0.8, 0.3, 0.5, 1.3])
    value, grad = dev.value_and_grad(theta)
    np.testing.assert_allclose(value, _dense_profiled(X, y, w, Zd, terms, theta, True), rtol=1e-10)
    h = 1e-6
    numeric = [(dev(theta + h * e) - dev(theta - h * e)) / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


# ---- what the fit gives: predictions, inference, simulation -------------------------------------


def _item_fit():
    d = _subjects_items("ar1", 1)
    return d, _fit(d, True)


def test_predict_is_the_dense_conditional_mean():
    """``X beta + Z b`` with ``b = G Z'V^{-1}(y - X beta)`` of the dense V at the estimates
    (nlme's level-1 fitted values: the random effects' BLUPs, no kriging of residuals)."""
    d, est = _item_fit()
    covs, sigma2, value = _estimates(est, ("subject", "item"))
    _, beta, V = _dense_deviance(d, covs, sigma2, value, True)
    r = linalg.solve(V, d["y"] - d["X"] @ beta, assume_a="pos")
    n = d["y"].size
    fitted = d["X"] @ beta
    for (codes, Z), cov in zip(d["factors"], covs):
        for g in np.unique(codes):
            i = codes == g
            b = cov @ (Z[i].T @ r[i])
            fitted[i] += Z[i] @ b
    X = pd.DataFrame({"x": d["X"][:, 1]})
    groups = pd.DataFrame({"subject": d["subject"], "item": d["item"]})
    np.testing.assert_allclose(est.predict(X, groups=groups), fitted, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(est.model_.solution.beta, beta, rtol=1e-7)
    assert n == fitted.size


def test_summary_satterthwaite_and_simulate_work_and_kenward_roger_is_refused():
    """The fixed effects' covariance is the dense ``sigma^2 (X'V^{-1}X)^{-1}``; Satterthwaite's
    df, the summary and simulated responses are formed; Kenward-Roger's df are refused,
    naming Satterthwaite's."""
    d, est = _item_fit()
    covs, sigma2, value = _estimates(est, ("subject", "item"))
    _, _, V = _dense_deviance(d, covs, sigma2, value, True)
    dense = np.linalg.inv(d["X"].T @ linalg.solve(V, d["X"], assume_a="pos"))
    np.testing.assert_allclose(est.cov_fe_, dense, rtol=1e-6)
    assert "corAR1" in str(est.summary())
    table = est.wald_test(np.array([[0.0, 1.0]]), ddf="satterthwaite")
    assert np.isfinite(table.df_denom) and 1.0 < table.df_denom < d["y"].size
    with pytest.raises((ValueError, NotImplementedError), match="satterthwaite"):
        est.wald_test(np.array([[0.0, 1.0]]), ddf="kenward-roger")
    sims = est.simulate(n_sim=3, random_state=0)
    assert sims.shape == (d["y"].size, 3) and np.all(np.isfinite(sims))


def test_chunks_with_residual_groups_spanning_levels_are_refused():
    d = _subjects_items("ar1", 1)
    frame = pd.DataFrame({"y": d["y"], "x": d["X"][:, 1], "subject": d["subject"],
                          "item": d["item"], "t": d["times"]})
    with pytest.raises(ValueError, match="fit the data in memory"):
        MixedLMRegressor(correlation="ar1").fit_chunks(
            [frame], y="y", groups=["subject", "item"], X=["x"], time="t",
            correlation_groups="subject")


def test_too_many_effects_in_the_dense_block_are_refused():
    """Residual groups spanning the levels of a factor with more effects than the dense
    block holds: a clear refusal naming the factor."""
    rng = np.random.default_rng(0)
    n, m = 10_400, 10_100
    g = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
    series = np.arange(n) // 4
    X = rng.standard_normal((n, 1))
    y = rng.standard_normal(n)
    with pytest.raises(ValueError, match="span levels of the grouping factors"):
        MixedLMRegressor(correlation="ar1").fit(X, y, groups=g, correlation_groups=series)


def test_lmer_with_the_correlation_within_subjects_next_to_crossed_items_is_the_same_fit():
    from mixedlm_sklearn import lmer

    d, est = _item_fit()
    frame = pd.DataFrame({"y": d["y"], "x": d["X"][:, 1], "subject": d["subject"],
                          "item": d["item"], "t": d["times"]})
    fit = lmer("y ~ x + (1 | subject) + (1 | item)", frame, correlation="ar1(~ t | subject)")
    np.testing.assert_allclose(fit.llf_, est.llf_, rtol=1e-10)
    np.testing.assert_allclose(fit.correlation_params_["Phi"], est.correlation_params_["Phi"],
                               rtol=1e-6)


@pytest.mark.parametrize("kind,slope,strata", [("ar1", True, False), ("ar1", False, True),
                                                ("cs", False, True)])
def test_component_derivatives_at_once_equal_the_engines_per_stratum_ones(kind, slope, strata):
    """The joint deviance's derivatives in its components' weights, formed for all of them
    at once (adjoint arrays contracted with the components), equal the engine's formula
    stratum by stratum (:meth:`Deviance._weight_derivatives`), self pairs between items
    included: nested terms (subjects only) and subjects crossed with items, with strata."""
    from mixedlm_sklearn._correlation import JointDeviance

    rng = np.random.default_rng(5)
    d = _subjects_items(kind, 31, slope=slope)
    if strata:
        d["strata"] = (rng.uniform(size=d["y"].size) < 0.4).astype(int)
    for names in (("subject",), ("subject", "item")):
        e = dict(d, factors=d["factors"][:len(names)])
        with warnings.catch_warnings():  # (cs: a degenerate estimate; not what is checked)
            warnings.simplefilter("ignore")
            est = _fit(e, reml=True, names=names)
        data = est.model_.correlation.data
        assert data.crossed == (len(names) == 2)
        dev = JointDeviance(data.joint_components, reml=True)
        for u in (-2.0, 0.4, 2.5):
            x = np.append(np.linspace(0.4, 1.3, dev.n_params - 1), u)
            pt = dev._evaluate(x)
            LV, R = dev._residual_products(pt)
            gamma = np.append(-pt.beta, 1.0)
            ours = dev._weight_derivatives(pt, LV, R, gamma)
            engine = Deviance._weight_derivatives(dev, pt, LV, R, gamma)
            np.testing.assert_allclose(ours, engine, rtol=1e-10, atol=1e-10 * np.abs(engine).max())


@pytest.mark.parametrize("solver", ["auto", "exact"])
def test_too_large_a_core_next_to_a_crossing_term_is_refused_without_pointing_to_iterative(
        monkeypatch, solver):
    """AR(1) within subjects next to crossed items with more items than the dense block
    holds (here 2,100 for a limit of 2,000): the sparse elimination of the rest leaves a core
    too large, and the refusal names the spanning groups instead of sending the user to
    solver='iterative' (which refuses self pairs)."""
    import mixedlm_sklearn._factor as factor_module

    monkeypatch.setattr(factor_module, "MAX_DENSE", 2000)
    rng = np.random.default_rng(0)
    n_items, n_subjects = 2100, 20
    n = 2 * n_items
    subject = np.repeat(np.arange(n_subjects), n // n_subjects)
    item = rng.permutation(np.tile(np.arange(n_items), 2))
    t = pd.Series(np.ones(n)).groupby(subject).cumsum().to_numpy()
    x = rng.standard_normal(n)
    y = x + rng.standard_normal(n_subjects)[subject] + rng.standard_normal(n_items)[item] + rng.standard_normal(n)
    with pytest.raises(ValueError, match=r"span levels of the grouping factors \['item'\]") as err:
        MixedLMRegressor(correlation="ar1", solver=solver).fit(
            pd.DataFrame({"x": x}), y, groups=pd.DataFrame({"subject": subject, "item": item}),
            time=t, correlation_groups=pd.Series(subject))
    assert "use solver='iterative'" not in str(err.value)
