"""Crossed random effects at scale: sparse rounds (exact) and the iterative solver.

Small sizes only (benchmarks/bench_crossed.py has the large ones). Oracles: a dense
deviance from the full ``Z`` (brute force, lme4's formulas, nothing from the package),
the dense rest block of the same engine (``Plan(rest="dense")``), and the exact fit.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import mixedlm_sklearn._model as model_module
import mixedlm_sklearn._rounds as rounds_module
from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn._crossprod import cross_products
from mixedlm_sklearn._deviance import Deviance
from mixedlm_sklearn._factor import Plan
from mixedlm_sklearn._iterative import IterativeDeviance, IterativePlan
from mixedlm_sklearn._model import choose_solver
from mixedlm_sklearn._rounds import RoundsFactor, RoundsPlan, lower_pattern_keys
from mixedlm_sklearn._terms import Term, Terms


def synthetic(n, users, items, seed=1):
    """The issue's generator (Zipf items), levels recoded to those present."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    item = np.minimum(rng.zipf(1.3, n) - 1, items - 1)
    x = rng.standard_normal((n, 3))
    y = (x @ [1, -0.5, 0.2] + 0.8 * rng.standard_normal(users)[u]
         + 0.5 * rng.standard_normal(items)[item] + rng.standard_normal(n))
    return x, y, np.unique(u, return_inverse=True)[1], np.unique(item, return_inverse=True)[1]


def crossed_cp(n=3000, users=200, items=150, slope=False, third=False, weights=False):
    x, y, u, item = synthetic(n, users, items)
    ones = np.ones((n, 1))
    Zu = np.column_stack([ones[:, 0], x[:, 0]]) if slope else ones
    terms = [Term("u", ("(Intercept)", "x0")[:Zu.shape[1]], u.max() + 1),
             Term("item", ("(Intercept)",), item.max() + 1)]
    factors = [(u, Zu), (item, ones)]
    if third:
        g3 = np.random.default_rng(5).integers(0, 30, n)
        terms.append(Term("g3", ("(Intercept)",), 30))
        factors.append((g3, ones))
    w = np.random.default_rng(7).uniform(0.5, 2.0, n) if weights else None
    cp = cross_products(x, y, factors, Terms(terms), weights=w, intercept=True)
    return cp, (np.column_stack([ones, x]), y, factors, w)


def dense_deviance(rows, terms, theta, reml):
    """Profiled deviance from the full n x N design (Bates et al. 2015, eq. 34 and 41)."""
    X, y, factors, w = rows
    n = y.size
    blocks, lams = [], terms.lams(np.asarray(theta, float))
    for (codes, Z), term in zip(factors, terms):
        Zk = np.zeros((n, term.n_levels * term.q))
        for a in range(term.q):
            Zk[np.arange(n), codes * term.q + a] = Z[:, a]
        blocks.append(Zk @ np.kron(np.eye(term.n_levels), lams[len(blocks)]))
    ZL = np.hstack(blocks)
    sw = np.ones(n) if w is None else np.sqrt(w)
    ZL, Xw, yw = ZL * sw[:, None], X * sw[:, None], y * sw
    M = ZL.T @ ZL + np.eye(ZL.shape[1])
    c = ZL.T @ np.column_stack([Xw, yw])
    C = np.column_stack([Xw, yw]).T @ np.column_stack([Xw, yw]) - c.T @ np.linalg.solve(M, c)
    p = X.shape[1]
    beta = np.linalg.solve(C[:p, :p], C[:p, p])
    r2 = C[p, p] - C[:p, p] @ beta
    dof = n - p if reml else n
    dev = np.linalg.slogdet(M)[1] + dof * (1 + np.log(2 * np.pi * r2 / dof)) - np.log(sw**2).sum()
    if reml:
        dev += np.linalg.slogdet(C[:p, :p])[1]
    return dev


# ---- the sparse rounds themselves ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rounds_factor_equals_dense_algebra(seed, monkeypatch):
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 20)
    rng = np.random.default_rng(seed)
    n_items, n_users = 300, 2000
    users = np.repeat(np.arange(n_users), 3)
    items = np.minimum(rng.zipf(1.3, users.size) - 1, n_items - 1)
    B = sparse.csr_matrix((rng.standard_normal(users.size), (users, items)), shape=(n_users, n_items))
    S = (B.T @ B + sparse.eye(n_items)).toarray()
    coo = sparse.coo_matrix(S)
    keys = lower_pattern_keys(coo.row, coo.col, n_items)
    plan = RoundsPlan(keys, n_items)
    assert plan.rounds and plan.core < n_items
    # Each round eliminates an independent set: no pattern entry joins two of its nodes.
    for rd in plan.rounds:
        assert rd.w_rows.size == rd.w_pos.size and np.all(np.diff(rd.elim) > 0)
    rows, cols = np.divmod(keys, n_items)
    factor = RoundsFactor(plan, S[rows, cols])
    assert factor.logdet == pytest.approx(np.linalg.slogdet(S)[1], rel=1e-12)
    b = rng.standard_normal((n_items, 4))
    w = factor.forward(b)
    np.testing.assert_allclose(w.T @ w, b.T @ np.linalg.solve(S, b), rtol=1e-10)
    np.testing.assert_allclose(factor.backward(w), np.linalg.solve(S, b), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(factor.selected_inverse(), np.linalg.inv(S)[rows, cols], atol=1e-12)


@pytest.mark.parametrize("slope,third,weights", [(False, False, False), (True, False, False),
                                                  (False, True, True), (True, True, False)])
@pytest.mark.parametrize("reml", [False, True])
def test_rounds_deviance_equals_dense_rest_and_brute_force(slope, third, weights, reml, monkeypatch):
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 20)
    cp, rows = crossed_cp(slope=slope, third=third, weights=weights)
    plan = Plan(cp, rest="rounds")
    assert plan.rounds is not None and "sparse rounds" in plan.describe()
    sparse_dev = Deviance(cp, reml, plan=plan)
    dense_dev = Deviance(cp, reml, plan=Plan(cp, rest="dense"))
    theta = 0.7 * cp.terms.identity_theta() + 0.05
    value, grad = sparse_dev.value_and_grad(theta)
    assert value == pytest.approx(dense_deviance(rows, cp.terms, theta, reml), rel=1e-11)
    dense_value, dense_grad = dense_dev.value_and_grad(theta)
    assert value == pytest.approx(dense_value, rel=1e-13)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-9, atol=1e-8)
    # ... and the gradient is the derivative of the deviance (central differences).
    h = 1e-6
    fd = [(sparse_dev(theta + h * e) - sparse_dev(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sparse_dev.average_information(theta), dense_dev.average_information(theta),
                               rtol=1e-9)
    for a, b in zip(sparse_dev.solution(theta).conditional_cov(), dense_dev.solution(theta).conditional_cov()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)


def test_rounds_with_residual_strata_ratio_gradient(monkeypatch):
    """The stratum-ratio gradient reads the selected inverse between the crossing term and
    the rest (Sigma_1R): sparse rounds give the dense block's numbers."""
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 20)
    x, y, u, item = synthetic(3000, 200, 150)
    strata = (x[:, 1] > 0).astype(int)
    ones = np.ones((3000, 1))
    terms = Terms([Term("u", ("(Intercept)",), u.max() + 1), Term("item", ("(Intercept)",), item.max() + 1)])
    cp = cross_products(x, y, [(u, ones), (item, ones)], terms, strata=strata, n_strata=2, intercept=True)
    xs = np.array([0.7, 0.4, 0.2])
    a = Deviance(cp, True, plan=Plan(cp.combined(), rest="rounds")).value_and_grad(xs)
    b = Deviance(cp, True, plan=Plan(cp.combined(), rest="dense")).value_and_grad(xs)
    assert a[0] == pytest.approx(b[0], rel=1e-13)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-9)


def test_plan_chooses_rest_by_cost(monkeypatch):
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 200)
    cp, _ = crossed_cp(n=40000, users=4000, items=3000)
    r = cp.terms[1].n_levels
    plan = Plan(cp)
    # Past _ROUNDS_MIN the rounds are costed; on Zipf items they are far cheaper than r^3.
    assert r > 1000 and plan.rounds is not None
    assert plan.rest_cost == plan.rounds.flops() < 0.5 * r**3
    # Rounds that cannot shrink the block (none below _DENSE_OK nodes) cost r^3: dense.
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 10 * r)
    assert Plan(cp).rounds is None
    small, _ = crossed_cp(n=3000, users=200, items=150)
    assert Plan(small).rounds is None  # a few hundred items: dense (milliseconds)
    # Beyond the dense limit with vector rest terms: a clear refusal.
    x, y, u, item = synthetic(40000, 4000, 3000)
    Z = np.column_stack([np.ones(40000), x[:, 0]])
    terms = Terms([Term("u", ("(Intercept)",), u.max() + 1), Term("item", ("(Intercept)", "x0"), item.max() + 1)])
    cp2 = cross_products(x, y, [(u, np.ones((40000, 1))), (item, Z)], terms, intercept=True)
    assert cp2.terms[1].size < cp2.terms[0].size  # users eliminated first, items the rest
    with pytest.raises(ValueError, match="dense block"):
        Plan(cp2, max_dense=1000)


# ---- the iterative deviance ------------------------------------------------------------------


@pytest.mark.parametrize("reml", [False, True])
def test_iterative_deviance_against_exact(reml):
    cp, rows = crossed_cp()
    exact = Deviance(cp, reml)
    dev = IterativeDeviance(cp, reml)
    for theta in ([0.8, 0.5], [1.0, 1.0], [0.3, 1.5]):
        theta = np.array(theta)
        value, grad = dev.value_and_grad(theta)
        exact_value, exact_grad = exact.value_and_grad(theta)
        assert exact_value == pytest.approx(dense_deviance(rows, cp.terms, theta, reml), rel=1e-11)
        se = dev.solution(theta).logdet_se
        assert se < 3e-3 and abs(value - exact_value) < 4 * se + 1e-6
        # The trace estimator's error only: a fraction of a percent of the gradient.
        np.testing.assert_allclose(grad, exact_grad, rtol=0.02, atol=0.5)
        # The average information and the solution are exact up to the PCG tolerance.
        np.testing.assert_allclose(dev.average_information(theta), exact.average_information(theta), rtol=1e-6)
        a, b = dev.solution(theta), exact.solution(theta)
        np.testing.assert_allclose(a.beta, b.beta, rtol=1e-7, atol=1e-9)
        for ba, bb in zip(a.blups(), b.blups()):
            np.testing.assert_allclose(ba, bb, atol=1e-7)
        # Conditional variances: exact (one PCG solve per random effect of the Schur
        # complement) at this size.
        assert a.conditional_cov_se() is None and not a.conditional_cov_on_request
        for ca, cb in zip(a.conditional_cov(), b.conditional_cov()):
            np.testing.assert_allclose(ca, cb, rtol=1e-6)


def test_iterative_stochastic_conditional_variances_state_their_error(monkeypatch):
    """Beyond the cost of the exact ones, the conditional variances are estimated with the
    probes (exact blocks plus a stochastic correction) and come with standard errors
    that describe their actual error."""
    import mixedlm_sklearn._iterative as iterative_module

    monkeypatch.setattr(iterative_module, "EXACT_CONDITIONAL_COV_FLOPS", 0.0)
    cp, _ = crossed_cp()
    theta = np.array([0.8, 0.5])
    sol = IterativeDeviance(cp, True).solution(theta)
    assert sol.conditional_cov_on_request
    exact = Deviance(cp, True).solution(theta).conditional_cov()
    for est, se, ex in zip(sol.conditional_cov(), sol.conditional_cov_se(), exact):
        np.testing.assert_allclose(est, ex, rtol=0.05)
        assert np.all(se > 0) and np.median(se / ex) < 0.02
        z = (est - ex) / se
        assert 0.5 < np.sqrt(np.mean(z**2)) < 2.0  # calibrated standard errors


def test_iterative_vector_and_three_terms():
    cp, rows = crossed_cp(n=2000, users=150, items=40, slope=True, third=True)
    theta = np.array([0.8, 0.1, 0.3, 0.5, 0.4])
    dev = IterativeDeviance(cp, False, plan=IterativePlan(cp, n_probes=64))
    value, grad = dev.value_and_grad(theta)
    exact_value, exact_grad = Deviance(cp, False).value_and_grad(theta)
    assert abs(value - exact_value) < 4 * dev.solution(theta).logdet_se
    np.testing.assert_allclose(grad, exact_grad, rtol=0.02, atol=1.0)


def test_iterative_refuses_by_name():
    cp, _ = crossed_cp()
    x, y, u, item = synthetic(500, 20, 10)
    one = cross_products(x, y, [(u, np.ones((500, 1)))], Terms([Term("u", ("(Intercept)",), u.max() + 1)]))
    with pytest.raises(ValueError, match="two or more grouping factors"):
        IterativeDeviance(one)
    est = MixedLMRegressor(solver="iterative")
    with pytest.raises(ValueError, match="residual_groups"):
        est.fit(x, y, groups=pd.DataFrame({"u": u, "item": item}), residual_groups=x[:, 0] > 0)
    assert not hasattr(est, "model_")
    with pytest.raises(ValueError, match="two or more grouping factors"):
        MixedLMRegressor(solver="iterative").fit(x, y, groups=u)


# ---- fits through the estimator --------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    x, y, u, item = synthetic(6000, 400, 300)
    return x, y, pd.DataFrame({"u": u, "item": item})


@pytest.fixture(scope="module")
def exact_fit(data):
    x, y, g = data
    return MixedLMRegressor(reml=False, solver="exact").fit(x, y, groups=g)


@pytest.fixture(scope="module")
def iterative_fit(data):
    x, y, g = data
    return MixedLMRegressor(reml=False, solver="iterative").fit(x, y, groups=g)


def _variances(est):
    return np.array([est.cov_re_["u"][0, 0], est.cov_re_["item"][0, 0], est.scale_])


def test_iterative_fit_agrees_with_exact(exact_fit, iterative_fit):
    assert iterative_fit.converged_ and exact_fit.converged_
    assert abs(iterative_fit.llf_ - exact_fit.llf_) < 1e-3
    np.testing.assert_allclose(_variances(iterative_fit), _variances(exact_fit), rtol=5e-3)
    np.testing.assert_allclose(iterative_fit.coef_, exact_fit.coef_, rtol=1e-4)
    np.testing.assert_allclose(iterative_fit.random_effects_["item"], exact_fit.random_effects_["item"],
                               atol=1e-3)
    # The conditional variances: exact at this size (they differ as the estimates do).
    for name in ("u", "item"):
        np.testing.assert_allclose(iterative_fit.random_effects_cov_[name],
                                   exact_fit.random_effects_cov_[name], rtol=5e-3)


def test_iterative_fit_is_deterministic(data, iterative_fit):
    x, y, g = data
    again = MixedLMRegressor(reml=False, solver="iterative").fit(x, y, groups=g)
    assert again.llf_ == iterative_fit.llf_
    assert np.array_equal(again.theta_, iterative_fit.theta_)
    assert np.array_equal(again.random_effects_["u"].to_numpy(), iterative_fit.random_effects_["u"].to_numpy())


def test_exact_hybrid_equals_full_optimiser(data, exact_fit, monkeypatch):
    """Past HYBRID_MIN_FLOPS an exact fit starts from the iterative optimum; it must land on
    the optimum of the full optimiser (the log-likelihood is the exact one)."""
    x, y, g = data
    monkeypatch.setattr(model_module, "HYBRID_MIN_FLOPS", 0.0)
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 20)
    import mixedlm_sklearn._factor as factor_module
    monkeypatch.setattr(factor_module, "_ROUNDS_MIN", 10)
    hybrid = MixedLMRegressor(reml=False, solver="exact").fit(x, y, groups=g)
    assert hybrid.model_.deviance.plan.rounds is not None
    assert hybrid.converged_
    assert hybrid.llf_ >= exact_fit.llf_ - 1e-7
    np.testing.assert_allclose(hybrid.theta_, exact_fit.theta_, rtol=1e-4)


def test_chunks_and_dask_equal_in_memory(data, iterative_fit):
    x, y, g = data
    df = pd.DataFrame(x, columns=["x0", "x1", "x2"]).assign(y=y, u=g["u"], item=g["item"])
    chunks = (df.iloc[i:i + 1700] for i in range(0, len(df), 1700))
    est = MixedLMRegressor(reml=False, solver="iterative").fit_chunks(
        chunks, y="y", groups=["u", "item"], X=["x0", "x1", "x2"])
    # Same cross-products to rounding, so the same fit to rounding (not bit for bit).
    assert est.llf_ == pytest.approx(iterative_fit.llf_, abs=1e-8)
    np.testing.assert_allclose(est.theta_, iterative_fit.theta_, rtol=1e-7)
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(df, npartitions=3)
    est = MixedLMRegressor(reml=False, solver="iterative").fit(
        ddf[["x0", "x1", "x2"]], ddf["y"], groups=ddf[["u", "item"]])
    assert est.llf_ == pytest.approx(iterative_fit.llf_, abs=1e-8)


def test_auto_chooses_by_cost(data, exact_fit, monkeypatch, capsys):
    x, y, g = data
    est = MixedLMRegressor(reml=False, verbose=1).fit(x, y, groups=g)
    assert "solver exact" in capsys.readouterr().out
    assert est.llf_ == exact_fit.llf_
    cp = est.model_.cross_products
    assert choose_solver(cp)[0] == "exact"
    # A large cost estimate (here: a tiny budget) sends auto to the iterative solver ...
    monkeypatch.setattr(model_module, "AUTO_MAX_EXACT_FLOPS", 1.0)
    solver, plan, why = choose_solver(cp)
    assert solver == "iterative" and plan is None and "flops" in why
    est = MixedLMRegressor(reml=False, verbose=1).fit(x, y, groups=g)
    assert "solver iterative" in capsys.readouterr().out
    assert abs(est.llf_ - exact_fit.llf_) < 1e-3
    # ... and so does a fill too large to plan (the exact plan refuses to be built).
    monkeypatch.setattr(model_module, "AUTO_MAX_EXACT_FLOPS", 1e11)
    import mixedlm_sklearn._factor as factor_module
    monkeypatch.setattr(model_module, "AUTO_MAX_FILL_PAIRS", 10)
    monkeypatch.setattr(factor_module, "_ROUNDS_MIN", 10)
    assert choose_solver(cp)[0] == "exact"  # r <= MAX_DENSE: the dense block still fits
    monkeypatch.setattr(factor_module, "MAX_DENSE", 100)
    solver, _, why = choose_solver(cp)
    assert solver == "iterative" and "level pairs" in why and "solver='iterative'" in why
    # solver="exact" plans such fills (up to MAX_FILL_PAIRS) and says why it cannot.
    monkeypatch.setattr(factor_module, "MAX_FILL_PAIRS", 10)
    with pytest.raises(ValueError, match="too many for the exact solver; use solver='iterative'"):
        choose_solver(cp, "exact")
    # One term or residual strata: always exact.
    one = MixedLMRegressor(reml=False).fit(x, y, groups=g["u"])
    assert one.model_.deviance.__class__ is Deviance


def test_iterative_zero_variance():
    """An item variance of 0: the stochastic optimiser puts theta exactly on its bound."""
    rng = np.random.default_rng(3)
    n = 4000
    u, item = rng.integers(0, 200, n), rng.integers(0, 50, n)
    x = rng.standard_normal((n, 1))
    y = x[:, 0] + rng.standard_normal(200)[u] + rng.standard_normal(n)
    g = pd.DataFrame({"u": u, "item": item})
    with pytest.warns(UserWarning, match="singular"):
        exact = MixedLMRegressor(reml=False, solver="exact").fit(x, y, groups=g)
    with pytest.warns(UserWarning, match="singular"):
        it = MixedLMRegressor(reml=False, solver="iterative").fit(x, y, groups=g)
    assert it.singular_ and it.theta_[1] == 0.0
    assert abs(it.llf_ - exact.llf_) < 1e-3
