"""The engine against independent math: cross-products, factorisation, deviance, gradient.

Every structure the one engine factors differently is checked against an n x n dense
computation written out here (no shared code): one term, crossed terms (a first term
eliminated level by level and a dense rest), nested chains (every term level by level,
no dense block), nested stages followed by crossed terms, the same factor in two terms,
random slopes, prior weights and residual strata, REML and ML.
"""

from __future__ import annotations

import numpy as np
import pytest

from mixedlm_sklearn._chunked import Accumulator
from mixedlm_sklearn._crossprod import cross_products
from mixedlm_sklearn._deviance import Deviance
from mixedlm_sklearn._factor import Plan
from mixedlm_sklearn._terms import Term, Terms, lambda_from_theta, theta_index


def _design(name, seed=0, weights=False, n_strata=1):
    """Random data of a named structure: (X, y, factors, terms, weights, strata)."""
    rng = np.random.default_rng(seed)
    n = 300
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    x = rng.standard_normal(n) + 1.0

    def crossed(m):
        c = rng.integers(0, m, n)
        c[:m] = np.arange(m)
        return c

    def nested(parent, per):
        c = parent * per + rng.integers(0, per, n)
        return np.unique(c, return_inverse=True)[1]

    one, slope = np.ones((n, 1)), np.column_stack([np.ones(n), x])
    if name == "single":
        specs = [("g", crossed(12), slope, False)]
    elif name == "single diagonal q3":
        specs = [("g", crossed(12), np.column_stack([slope, x**2]), True)]
    elif name == "crossed":
        specs = [("a", crossed(15), one, False), ("b", crossed(7), one, False)]
    elif name == "crossed slopes":
        specs = [("a", crossed(15), slope, False), ("b", crossed(7), slope, False)]
    elif name == "crossed three":
        specs = [("a", crossed(20), one, False), ("b", crossed(7), slope, True), ("c", crossed(5), one, False)]
    elif name == "nested":
        a = crossed(6)
        specs = [("a", a, slope, False), ("a:b", nested(a, 4), slope, False)]
    elif name == "nested three":
        a = crossed(4)
        ab = nested(a, 3)
        specs = [("a", a, one, False), ("a:b", ab, one, False), ("a:b:c", nested(ab, 3), slope, False)]
    elif name == "interaction of crossed":  # (1|a) + (1|b) + (1|a:b): a nested stage, then dense
        a, b = crossed(8), crossed(6)
        specs = [("a", a, one, False), ("b", b, slope, False),
                 ("a:b", np.unique(a * 6 + b, return_inverse=True)[1], one, False)]
    elif name == "same factor twice":  # lme4's (1|g) + (0 + x|g)
        g = crossed(12)
        specs = [("g", g, one, False), ("g.1", g, x[:, None], False)]
    else:
        raise ValueError(name)
    factors, terms = [], []
    y = X @ [1.0, 2.0] + rng.standard_normal(n)
    for fname, codes, Z, diagonal in specs:
        m = int(codes.max()) + 1
        factors.append((codes, Z))
        terms.append(Term(fname, tuple(f"z{j}" for j in range(Z.shape[1])), m, diagonal))
        y += np.einsum("ij,ij->i", Z, rng.standard_normal((m, Z.shape[1]))[codes])
    w = rng.uniform(0.5, 2.0, n) if weights else None
    strata = rng.integers(0, n_strata, n) if n_strata > 1 else None
    return X, y, factors, Terms(terms), w, strata


STRUCTURES = ["single", "single diagonal q3", "crossed", "crossed slopes", "crossed three", "nested",
              "nested three", "interaction of crossed", "same factor twice"]


def _dense(X, y, factors, terms, theta, row_weights, reml):
    """Profiled deviance and the solution from the n x n marginal covariance."""
    n = len(y)
    blocks = []
    for (codes, Z), t, lam in zip(factors, terms, terms.lams(theta)):
        Zb = np.zeros((n, t.n_levels * t.q))
        for a in range(t.q):
            Zb[np.arange(n), codes * t.q + a] = Z[:, a]
        blocks.append(Zb @ np.kron(np.eye(t.n_levels), lam))
    ZL = np.hstack(blocks)
    V = np.diag(1.0 / row_weights) + ZL @ ZL.T  # in units of sigma^2
    Vi = np.linalg.inv(V)
    A = X.T @ Vi @ X
    beta = np.linalg.solve(A, X.T @ Vi @ y)
    r = y - X @ beta
    r2 = r @ Vi @ r
    dof = n - X.shape[1] if reml else n
    dev = np.linalg.slogdet(V)[1] + dof * (1 + np.log(2 * np.pi * r2 / dof))
    if reml:
        dev += np.linalg.slogdet(A)[1]
    scale = r2 / dof
    # BLUPs and conditional covariances: u = L'Z'V^{-1}r, Cov(u | y) = scale (I - L'Z'V^{-1}ZL)
    u = ZL.T @ Vi @ r
    cond = scale * (np.eye(ZL.shape[1]) - ZL.T @ Vi @ ZL)
    blups, condvar, off = [], [], 0
    for t, lam in zip(terms, terms.lams(theta)):
        size = t.n_levels * t.q
        blups.append(u[off:off + size].reshape(t.n_levels, t.q) @ lam.T)
        cv = cond[off:off + size, off:off + size]
        condvar.append(np.array([lam @ cv[l * t.q:(l + 1) * t.q, l * t.q:(l + 1) * t.q] @ lam.T
                                 for l in range(t.n_levels)]))
        off += size
    return dev, beta, scale, blups, condvar


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("weights, n_strata", [(False, 1), (True, 1), (True, 3)])
def test_deviance_gradient_and_solution_equal_the_dense_computation(name, reml, weights, n_strata):
    X, y, factors, terms, w, strata = _design(name, seed=len(name), weights=weights, n_strata=n_strata)
    cp = cross_products(X, y, factors, terms, w, strata, n_strata)
    dev = Deviance(cp, reml)
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0.3, 1.2, dev.n_theta), rng.uniform(-0.5, 0.5, dev.n_eta)])
    theta, v = dev.split(x)
    row_weights = (np.ones(len(y)) if w is None else w) * (v[strata] if strata is not None else 1.0)
    expected, beta, scale, blups, condvar = _dense(X, y, factors, terms, theta, row_weights, reml)
    value, grad = dev.value_and_grad(x)
    assert value == pytest.approx(expected, rel=1e-12)
    h = 1e-6
    numeric = np.array([(dev(x + h * e) - dev(x - h * e)) / (2 * h) for e in np.eye(x.size)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-5)
    sol = dev.solution(x)
    np.testing.assert_allclose(sol.beta, beta, rtol=1e-10, atol=1e-12)
    assert sol.scale == pytest.approx(scale, rel=1e-10)
    for got, want in zip(sol.blups(), blups):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
    for got, want in zip(sol.conditional_cov(), condvar):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_the_plans_of_the_structures():
    plans = {}
    for name in STRUCTURES:
        X, y, factors, terms, w, strata = _design(name)
        plans[name] = Plan(cross_products(X, y, factors, terms))
    # nested chains and single terms: level by level only, no dense block
    for name in ("single", "nested", "nested three", "same factor twice"):
        assert plans[name].dense is None and plans[name].crossing is None
    # crossed: the largest term level by level, the rest dense
    assert plans["crossed"].crossing == 0 and plans["crossed"].dense.terms == (1,)
    # (1|a) + (1|b) + (1|a:b): a:b (nested in both) first, then a dense block over a and b
    plan = plans["interaction of crossed"]
    assert [s.t for s in plan.stages] == [2] and set(plan.dense.terms) == {0, 1}


@pytest.mark.parametrize("name", ["crossed slopes", "nested", "single diagonal q3"])
def test_average_information_is_close_to_the_hessian_at_the_optimum(name):
    from scipy import optimize

    X, y, factors, terms, w, strata = _design(name, seed=3)
    dev = Deviance(cross_products(X, y, factors, terms), True)
    res = optimize.minimize(dev.value_and_grad, terms.identity_theta(), jac=True, method="L-BFGS-B",
                            bounds=list(zip(dev.lower_bounds(), [None] * dev.n_params)),
                            options={"ftol": 1e-15, "gtol": 1e-10})
    free = res.x > 1e-6  # entries off their bound
    H = np.array([(dev.value_and_grad(res.x + 1e-6 * e)[1] - dev.value_and_grad(res.x - 1e-6 * e)[1]) / 2e-6
                  for e in np.eye(res.x.size)])
    AI = dev.average_information(res.x)
    sub = np.ix_(free, free)
    assert np.max(np.abs(AI[sub] - H[sub])) < 0.1 * np.max(np.abs(H[sub]))
    assert np.linalg.eigvalsh(AI).min() > 0


def test_cross_products_add_up_over_chunks_by_label():
    X, y, factors, terms, w, strata = _design("crossed slopes", weights=True, n_strata=2)
    whole = cross_products(X, y, factors, terms, w, strata, 2)
    acc = Accumulator()
    for rows in (slice(0, 90), slice(90, 200), slice(200, 300)):
        part_factors, labels, part_terms = [], {}, []
        for (codes, Z), t in zip(factors, terms):
            levels, local = np.unique(codes[rows], return_inverse=True)
            part_factors.append((local, Z[rows]))
            labels[t.factor] = levels
            part_terms.append(Term(t.factor, t.z_names, levels.size, t.diagonal))
        s_levels, s_local = np.unique(strata[rows], return_inverse=True)
        part = cross_products(X[rows], y[rows], part_factors, Terms(part_terms), w[rows], s_local,
                              s_levels.size)
        acc.add(labels, part, s_levels)
    labels, strata_labels, total = acc.result()
    assert list(strata_labels) == [0, 1]
    for a, b in zip(total.diag + total.zxy, whole.diag + whole.zxy):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(total.pairs, whole.pairs):
        np.testing.assert_array_equal(a.level_k, b.level_k)
        np.testing.assert_array_equal(a.level_l, b.level_l)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total.xyxy, whole.xyxy, rtol=1e-12)
    np.testing.assert_allclose(total.sum_log_weights, whole.sum_log_weights, rtol=1e-12)
    x = np.concatenate([np.full(whole.terms.n_theta, 0.7), [0.2]])
    assert Deviance(total, True)(x) == pytest.approx(Deviance(whole, True)(x), rel=1e-12)


@pytest.mark.parametrize("in_place", [True, False])
def test_per_level_cross_products_equal_each_levels_own_sums(monkeypatch, in_place):
    """The pass over the rows in several blocks, with the sparse products added into the
    sums in place (scipy's kernel) or through the public product: each level's
    ``Z_l'W Z_l`` and ``Z_l'W [X y]`` equal its rows' own products."""
    import mixedlm_sklearn._crossprod as crossprod_module

    monkeypatch.setattr(crossprod_module, "_BLOCK_ROWS", 70)
    monkeypatch.setattr(crossprod_module, "_MIN_BLOCK_ROWS", 70)
    if not in_place:
        monkeypatch.setattr(crossprod_module, "_csc_matvecs", None)
    X, y, factors, terms, w, _ = _design("single", weights=True)  # 300 rows: five blocks
    cp = cross_products(X, y, factors, terms, w)
    codes, Z = factors[0]
    D = np.column_stack([X, y]) * np.sqrt(w)[:, None]
    Zw = Z * np.sqrt(w)[:, None]
    for level in range(terms[0].n_levels):
        rows = codes == level
        np.testing.assert_allclose(cp.diag[0][0][:, :, level], Zw[rows].T @ Zw[rows], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cp.zxy[0][0][:, :, level], Zw[rows].T @ D[rows], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cp.xyxy[0], D.T @ D, rtol=1e-12)


def test_a_change_of_basis_of_z_leaves_the_deviance_unchanged():
    X, y, factors, terms, w, strata = _design("crossed slopes", seed=5)
    cp = cross_products(X, y, factors, terms)
    P = [np.array([[2.0, 0.0], [0.5, 3.0]]), np.array([[1.5, -0.3], [0.0, 0.7]])]
    transformed = cp.transformed(P, np.ones(cp.p + 1))
    theta_new = np.array([0.8, 0.2, 0.5, 1.1, -0.4, 0.6])
    # Z P with L gives the covariance of Z with P L: map theta through the lower factor
    lams = [P_k @ lam for P_k, lam in zip(P, terms.lams(theta_new))]
    lower = [np.linalg.cholesky(lam @ lam.T) for lam in lams]
    theta_old = terms.theta_of(lower)
    assert Deviance(transformed, True)(theta_new) == pytest.approx(Deviance(cp, True)(theta_old), rel=1e-12)


def test_theta_order_is_lme4s_column_major_lower_triangle():
    rows, cols = theta_index(3)
    assert list(zip(rows, cols)) == [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (2, 2)]
    lam = lambda_from_theta(np.arange(1.0, 7.0), 3)
    np.testing.assert_array_equal(lam, [[1, 0, 0], [2, 4, 0], [3, 5, 6]])
    term = Term("Subject", ("(Intercept)", "Days"), 18)
    assert term.param_names() == ["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject", "sd_Days|Subject"]


def test_nested_factors_with_many_levels_need_no_dense_block():
    """20,000 outer levels x 5 inner each (2 x 10^5 rows): memory stays O(levels)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    outer_m, per = 20_000, 5
    n = 200_000
    outer = rng.integers(0, outer_m, n)
    outer[:outer_m] = np.arange(outer_m)
    inner = outer * per + rng.integers(0, per, n)
    inner = np.unique(inner, return_inverse=True)[1]
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = X @ [1, 2] + rng.standard_normal(outer_m)[outer] + 0.5 * rng.standard_normal(inner.max() + 1)[inner] \
        + rng.standard_normal(n)
    terms = Terms([Term("outer", ("(Intercept)",), outer_m), Term("outer:inner", ("(Intercept)",), int(inner.max()) + 1)])
    cp = cross_products(X, y, [(outer, np.ones((n, 1))), (inner, np.ones((n, 1)))], terms)
    tracemalloc.start()
    dev = Deviance(cp, True)
    value, grad = dev.value_and_grad(np.array([0.9, 0.6]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert dev.plan.dense is None
    n_levels = outer_m + terms[1].n_levels
    # a dense block of the inner factor alone would take 8 * 10^10 bytes
    assert peak < 2_000 * n_levels, peak
    assert np.all(np.isfinite(grad)) and np.isfinite(value)
