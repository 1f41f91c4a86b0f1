"""The GLMM engine against brute force: PIRLS modes, the Laplace and AGQ deviance, the gradient.

Oracles written independently of the engine: dense matrices for the conditional modes
(Newton on the full vector of random effects) and ``log|M|``; adaptive quadrature of each
group's one-dimensional integral with scipy; finite differences for the gradient.
"""

import numpy as np
import pytest
from scipy import integrate, optimize, special

import mixedlm_sklearn._factor as factor_module
import mixedlm_sklearn._rounds as rounds_module
from mixedlm_sklearn._crossprod import DesignPattern, cross_products
from mixedlm_sklearn._factor import Factor, Plan, Prepared
from mixedlm_sklearn._family import family_and_link
from mixedlm_sklearn._glmm import GLMMDeviance, PIRLSDivergence
from mixedlm_sklearn._terms import Term, Terms


def _design(seed, n_levels=(7, 4), q=(1, 1), n=60, family="binomial", link=None, trials=1):
    """A random GLMM design with its data, simulated from the model."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    factors, terms, eta = [], [], 0.3 * X[:, 1]
    for k, (m, qk) in enumerate(zip(n_levels, q)):
        codes = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
        Z = np.ones((n, 1)) if qk == 1 else np.column_stack([np.ones(n), rng.uniform(-1, 1, n)])
        b = 0.8 * rng.standard_normal((m, qk))
        eta = eta + np.einsum("iq,iq->i", Z, b[codes])
        factors.append((codes, Z))
        names = ("(Intercept)",) if qk == 1 else ("(Intercept)", "x")
        terms.append(Term(f"g{k}", names, m))
    fam, lnk = family_and_link(family, link)
    w = np.full(n, float(trials))
    if family == "binomial":
        y = rng.binomial(trials, lnk.inverse(eta)) / trials
    else:
        y = rng.poisson(np.exp(eta)).astype(float)
    return X, y, w, factors, Terms(terms), fam, lnk


def _dense_z_lambda(factors, terms, lams, n):
    """``Z Lambda`` as a dense (n, sum of levels x effects) matrix, columns (term, level,
    effect)."""
    Zs = []
    for (codes, Z), t, lam in zip(factors, terms, lams):
        full = np.zeros((n, t.n_levels * t.q))
        for a in range(t.q):
            full[np.arange(n), codes * t.q + a] = Z[:, a]
        Zs.append(full @ np.kron(np.eye(t.n_levels), lam))
    return np.hstack(Zs)


def _dense_laplace(X, y, w, factors, terms, fam, lnk, theta, beta):
    """``-2 log p(y | u*) + |u*|^2 + log|M|`` with dense matrices (Newton on all of u)."""
    n = len(y)
    ZL = _dense_z_lambda(factors, terms, terms.lams(theta), n)
    fixed = X @ beta

    def f(u):
        eta = fixed + ZL @ u
        mu = lnk.inverse(eta)
        return -2.0 * fam.loglik(y, eta, mu, w, lnk).sum() + u @ u

    u = np.zeros(ZL.shape[1])
    for _ in range(100):
        eta = fixed + ZL @ u
        mu, d1, _ = lnk.derivatives(eta)
        var, _ = fam.variance(mu)
        W = w * d1 ** 2 / var
        grad = ZL.T @ (w * (y - mu) * d1 / var) - u
        M = np.eye(u.size) + ZL.T @ (W[:, None] * ZL)
        step = np.linalg.solve(M, grad)
        t = 1.0
        while f(u + t * step) > f(u) + 1e-12 and t > 1e-8:
            t /= 2
        u = u + t * step
        if np.abs(step).max() < 1e-13:
            break
    eta = fixed + ZL @ u
    mu, d1, _ = lnk.derivatives(eta)
    var, _ = fam.variance(mu)
    M = np.eye(u.size) + ZL.T @ ((w * d1 ** 2 / var)[:, None] * ZL)
    return f(u) + np.linalg.slogdet(M)[1]


CASES = [
    dict(seed=1, family="binomial"),
    dict(seed=2, family="binomial", link="probit"),
    dict(seed=3, family="binomial", link="cloglog", trials=5),
    dict(seed=4, family="poisson"),
    dict(seed=5, family="poisson", q=(2, 1)),
    dict(seed=6, family="binomial", q=(2, 1), n_levels=(6, 5), n=80),
]


@pytest.mark.parametrize("case", CASES)
def test_laplace_matches_dense_oracle(case):
    X, y, w, factors, terms, fam, lnk = _design(**case)
    dev = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk)
    rng = np.random.default_rng(case["seed"])
    for _ in range(3):
        theta = np.abs(rng.uniform(0.2, 1.5, terms.n_theta)) * (terms.lower_bounds() == 0) \
            + rng.uniform(-0.5, 0.5, terms.n_theta) * (terms.lower_bounds() != 0)
        beta = rng.uniform(-0.5, 0.5, 2)
        expected = _dense_laplace(X, y, w, factors, terms, fam, lnk, theta, beta)
        assert dev(np.concatenate([theta, beta])) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_laplace_with_a_sparse_rest_block_matches_dense_oracle(family, monkeypatch):
    # Crossed factors whose smaller one is past the thresholds of a sparse (rounds) rest
    # block: PIRLS reweights that block at every step (the path of users x items at scale).
    monkeypatch.setattr(factor_module, "_ROUNDS_MIN", 10)
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 12)
    X, y, w, factors, terms, fam, lnk = _design(seed=41, n_levels=(70, 50), n=200, family=family)
    dev = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk)
    assert dev.plan.rounds is not None and len(dev.plan.rounds.rounds) > 0
    for theta, beta in [((0.9, 0.6), (0.2, -0.3)), ((0.4, 1.3), (-0.1, 0.4))]:
        x = np.concatenate([theta, beta])
        expected = _dense_laplace(X, y, w, factors, terms, fam, lnk, np.array(theta), np.array(beta))
        assert dev(x) == pytest.approx(expected, abs=1e-8)
    # the gradient on this path, against central differences
    x = np.array([0.8, 0.5, 0.1, -0.2])
    _, grad = dev.value_and_grad(x)
    numeric = np.array([(dev(x + e) - dev(x - e)) / 2e-5 for e in 1e-5 * np.eye(x.size)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_laplace_gradient_matches_finite_differences(case):
    X, y, w, factors, terms, fam, lnk = _design(**case)
    dev = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk)
    x = np.concatenate([terms.identity_theta() * 0.7 + 0.1 * (terms.lower_bounds() != 0), [0.1, -0.2]])
    _, grad = dev.value_and_grad(x)
    numeric = np.empty_like(x)
    for j in range(x.size):
        h = 1e-5
        e = np.zeros_like(x)
        e[j] = h
        numeric[j] = (dev(x + e) - dev(x - e)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-5)


def _group_integral(y, w, eta_fixed, z, theta, fam, lnk, laplace):
    """``-2 log`` of one group's integral over its scalar effect: quadrature or Laplace."""

    def minus2(u):
        eta = eta_fixed + z * theta * u
        return -2.0 * fam.loglik(y, eta, lnk.inverse(eta), w, lnk).sum() + u * u

    mode = optimize.minimize_scalar(minus2, bracket=(-3, 3), tol=1e-14).x
    # Brent's mode is accurate to ~1e-8 only: finish with the root of the score (secant steps)
    def score(u, h=1e-6):
        return (minus2(u + h) - minus2(u - h)) / (2 * h)

    mode = optimize.brentq(score, mode - 1e-3, mode + 1e-3, xtol=1e-15)
    if laplace:
        eta = eta_fixed + z * theta * mode
        mu, d1, _ = lnk.derivatives(eta)
        var, _ = fam.variance(mu)
        return minus2(mode) + np.log(1.0 + theta ** 2 * np.sum(w * z ** 2 * d1 ** 2 / var))
    base = minus2(mode)
    value, _ = integrate.quad(lambda u: np.exp(-0.5 * (minus2(u) - base)) / np.sqrt(2 * np.pi),
                              mode - 15, mode + 15, epsabs=1e-13, epsrel=1e-12, limit=200)
    return base - 2.0 * np.log(value)


@pytest.mark.parametrize("case", [dict(seed=11, family="binomial", trials=4),
                                  dict(seed=12, family="poisson"),
                                  dict(seed=13, family="binomial", link="probit")])
def test_agq_converges_to_the_integral_and_one_node_is_laplace(case):
    X, y, w, factors, terms, fam, lnk = _design(n_levels=(9,), q=(1,), **case)
    theta, beta = np.array([0.9]), np.array([-0.2, 0.3])
    codes, Z = factors[0]
    eta_fixed = X @ beta
    exact = sum(_group_integral(y[codes == g], w[codes == g], eta_fixed[codes == g], Z[codes == g, 0],
                                theta[0], fam, lnk, laplace=False) for g in range(9))
    laplace = sum(_group_integral(y[codes == g], w[codes == g], eta_fixed[codes == g], Z[codes == g, 0],
                                  theta[0], fam, lnk, laplace=True) for g in range(9))
    x = np.concatenate([theta, beta])
    one = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk, n_agq=1)
    assert one(x) == pytest.approx(laplace, abs=1e-8)
    many = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk, n_agq=25)
    assert many(x) == pytest.approx(exact, abs=1e-7)
    assert abs(many(x) - exact) < abs(one(x) - exact)
    # the quadrature rule with a single node (at the mode) is the Laplace approximation
    single = many.with_nodes(25)
    single._set_nodes(1)
    assert single._agq(single.modes(x)) == pytest.approx(laplace, abs=1e-8)


def test_agq_needs_a_single_scalar_term():
    X, y, w, factors, terms, fam, lnk = _design(seed=3)
    with pytest.raises(ValueError, match="single grouping factor with a scalar"):
        GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk, n_agq=5)


def test_design_pattern_reproduces_cross_products():
    X, y, w, factors, terms, fam, lnk = _design(seed=21, q=(2, 2))
    rng = np.random.default_rng(0)
    pattern = DesignPattern(X, factors, terms)
    for _ in range(2):
        weights, response = rng.uniform(0.5, 2, len(y)), rng.standard_normal(len(y))
        a = pattern.cross_products(response, weights)
        b = cross_products(X, response, factors, terms, weights=weights)
        for da, db in zip(a.diag + a.zxy, b.diag + b.zxy):
            np.testing.assert_allclose(da, db, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.xyxy, b.xyxy, rtol=1e-12)
        for pa, pb in zip(a.pairs, b.pairs):
            np.testing.assert_array_equal(pa.level_k, pb.level_k)
            np.testing.assert_allclose(pa.values, pb.values, rtol=1e-12, atol=1e-12)
        assert a.sum_log_weights[0] == pytest.approx(b.sum_log_weights[0])


@pytest.mark.parametrize("levels, q, rest", [((30, 6), (1, 1), "auto"), ((12, 5), (2, 1), "auto"),
                                            ((40, 25), (1, 2), "auto"),
                                            ((60, 45), (1, 1), "rounds"), ((50, 40), (2, 1), "rounds")])
def test_reweighted_factor_equals_a_fresh_one(levels, q, rest, monkeypatch):
    # dense crossings (every level meets most of the rest) and sparse ones take different
    # paths; so does a rest block factored by sparse rounds (a few rounds, then a dense core)
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 12)
    X, y, w, factors, terms, fam, lnk = _design(seed=31, n_levels=levels, q=q, n=150)
    pattern = DesignPattern(np.empty((len(y), 0)), factors, terms)
    base_cp = pattern.cross_products(np.zeros(len(y)), np.ones(len(y)))
    plan = Plan(base_cp, rest=rest)
    if rest == "rounds":
        assert plan.rounds is not None and len(plan.rounds.rounds) > 0
    base = Prepared(plan, base_cp)
    rng = np.random.default_rng(1)
    lams = terms.lams(terms.identity_theta() * 0.8 + 0.3 * (terms.lower_bounds() != 0))
    for _ in range(2):
        cp = pattern.cross_products(rng.standard_normal(len(y)), rng.uniform(0.1, 3, len(y)))
        fresh, reused = Factor(Prepared(plan, cp), lams), Factor(base.reweighted(cp), lams)
        assert reused.logdet == pytest.approx(fresh.logdet, rel=1e-12)
        rhs = [rng.standard_normal((t.q, 1, t.n_levels)) for t in terms]
        for a, b in zip(reused.solve(rhs), fresh.solve(rhs)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(reused.selected_inverse()[0], fresh.selected_inverse()[0]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _dense_m(factors, terms, weights, lams):
    """``M = Lambda'Z'WZ Lambda + I`` as a dense matrix, columns (term, level, effect)."""
    ZL = _dense_z_lambda(factors, terms, lams, len(weights))
    return np.eye(ZL.shape[1]) + ZL.T @ (weights[:, None] * ZL)


@pytest.mark.parametrize("levels, q, rest", [((60, 45), (1, 1), "rounds"), ((50, 40), (2, 1), "rounds"),
                                            ((30, 6), (1, 1), "auto"), ((12, 5), (2, 1), "auto")])
def test_selected_inverse_with_crossing_pairs_equals_the_dense_inverse(levels, q, rest, monkeypatch):
    # the blocks of M^{-1} between the crossing term and the rest (the GLMM gradient's
    # leverages read them at every evaluation), reweighted, against inv(M) itself
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 12)
    X, y, w, factors, terms, fam, lnk = _design(seed=33, n_levels=levels, q=q, n=150)
    pattern = DesignPattern(np.empty((len(y), 0)), factors, terms)
    plan = Plan(pattern.cross_products(np.zeros(len(y)), np.ones(len(y))), rest=rest)
    if rest == "rounds":
        assert plan.rounds is not None and len(plan.rounds.rounds) > 0
    base = Prepared(plan, pattern.cross_products(np.zeros(len(y)), np.ones(len(y))))
    rng = np.random.default_rng(2)
    lams = terms.lams(terms.identity_theta() * 0.8 + 0.3 * (terms.lower_bounds() != 0))
    weights = rng.uniform(0.1, 3, len(y))
    cp = pattern.cross_products(np.zeros(len(y)), weights)
    diag, pairs = Factor(base.reweighted(cp), lams).selected_inverse(with_crossing_pairs=True)
    inv = np.linalg.inv(_dense_m(factors, terms, weights, lams))
    starts = np.cumsum([0] + [t.n_levels * t.q for t in terms])
    for k, t in enumerate(terms):
        rows = starts[k] + np.arange(t.n_levels)[:, None] * t.q + np.arange(t.q)  # (m, q)
        expected = inv[rows[:, :, None], rows[:, None, :]].transpose(1, 2, 0)
        np.testing.assert_allclose(diag[k], expected, rtol=1e-10, atol=1e-12)
    for b, vals in zip(cp.pairs, pairs):
        rk = starts[b.k] + b.level_k[:, None] * terms[b.k].q + np.arange(terms[b.k].q)
        rl = starts[b.l] + b.level_l[:, None] * terms[b.l].q + np.arange(terms[b.l].q)
        np.testing.assert_allclose(vals, inv[rk[:, :, None], rl[:, None, :]], rtol=1e-10, atol=1e-12)


def _rounds_deviance(design, monkeypatch):
    """The GLMM deviance of ``design`` with sparse rounds at small sizes, and a start."""
    monkeypatch.setattr(factor_module, "_ROUNDS_MIN", 10)
    monkeypatch.setattr(rounds_module, "_DENSE_OK", 12)
    X, y, w, factors, terms, fam, lnk = design
    dev = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk)
    x0 = np.concatenate([terms.identity_theta() * 0.7 + 0.1 * (terms.lower_bounds() != 0), [0.1, -0.2]])
    return dev, x0


def _assert_newton_from_zero(dev, design, x, value, grad):
    """``value``, ``grad`` and ``dev``'s modes at ``x`` equal a fresh deviance's (Newton's
    method from zero modes)."""
    X, y, w, factors, terms, fam, lnk = design
    fresh = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk)
    value0, grad0 = fresh.value_and_grad(x)
    assert value == pytest.approx(value0, rel=1e-13, abs=1e-10)
    np.testing.assert_allclose(grad, grad0, rtol=1e-8, atol=1e-8)
    for a, b in zip(dev.modes(x).u, fresh.modes(x).u):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("case", [dict(seed=41, n_levels=(70, 50), n=200),
                                  dict(seed=42, n_levels=(70, 50), n=200, family="poisson"),
                                  dict(seed=43, q=(2, 1), n_levels=(6, 5), n=80, link="probit")])
def test_chord_steps_give_the_modes_of_a_fresh_newton_iteration(case, monkeypatch):
    # an evaluation next to the last one solves with the last factor (one factorisation,
    # at the modes); its deviance and gradient equal those of Newton's method from zero
    design = _design(**case)
    dev, x0 = _rounds_deviance(design, monkeypatch)
    dev.value_and_grad(x0)
    for shift in (1e-5, 1e-2):
        x = x0 + shift * np.linspace(1.0, -1.0, x0.size)
        before = dev.n_pirls
        value, grad = dev.value_and_grad(x)
        if shift == 1e-5:
            assert dev.n_pirls - before == 1  # the chord converged: only the factor at the modes
        _assert_newton_from_zero(dev, design, x, value, grad)


@pytest.mark.parametrize("case", [dict(seed=41, n_levels=(70, 50), n=200),
                                  dict(seed=42, n_levels=(70, 50), n=200, family="poisson")])
def test_after_a_far_trial_pirls_starts_from_the_lowest_evaluation(case, monkeypatch):
    # a line search's trial far uphill, then one back near the last iterate: PIRLS starts
    # from the lowest evaluation (the chord converges: one factorisation), and the
    # deviance, gradient and modes equal those of Newton's method from zero
    design = _design(**case)
    dev, x0 = _rounds_deviance(design, monkeypatch)
    n_theta = design[4].n_theta
    low = dev.value_and_grad(x0)[0]
    far = x0.copy()
    far[:n_theta] = 3.0  # theta far off: modes extrapolated from here are far off
    far[n_theta] += 1.5
    assert dev.value_and_grad(far)[0] > low + 10.0
    assert dev._best is not dev._base
    x = x0 + 1e-6 * np.linspace(1.0, -1.0, x0.size)
    before = dev.n_pirls
    value, grad = dev.value_and_grad(x)
    assert dev.n_pirls - before == 1
    _assert_newton_from_zero(dev, design, x, value, grad)


def test_hessian_keeps_the_modes_and_gradient_of_its_centre():
    # the optimiser evaluates the centre again after the finite-difference Hessian: its
    # modes and gradient are kept, not recomputed, and equal a fresh evaluation's
    from mixedlm_sklearn._glmm import _hessian

    X, y, w, factors, terms, fam, lnk = _design(seed=1, family="binomial")
    dev = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk)
    x = np.array([0.7, 0.6, 0.1, -0.2])
    value, g = dev.value_and_grad(x)
    before = dev.n_evaluations
    _hessian(dev, x, g, np.ones(x.size, dtype=bool))
    assert dev.n_evaluations - before == x.size
    value2, g2 = dev.value_and_grad(x)
    assert dev.n_evaluations - before == x.size
    fresh = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk)
    value0, g0 = fresh.value_and_grad(x)
    assert value2 == value == pytest.approx(value0, rel=1e-13)
    np.testing.assert_allclose(g2, g0, rtol=1e-9, atol=1e-9)


def test_pirls_divergence_is_reported():
    X, y, w, factors, terms, fam, lnk = _design(seed=4, family="poisson")
    dev = GLMMDeviance(X, y, w, np.zeros(len(y)), factors, terms, fam, lnk)
    with pytest.raises(PIRLSDivergence, match="not finite|ran off"):
        dev(np.array([1.0, 1.0, 800.0, 0.0]))


def test_family_checks_of_the_response():
    fam, _ = family_and_link("poisson", None)
    with pytest.raises(ValueError, match="non-negative; rows 1"):
        fam.check_response(np.array([0.0, -1.0]), np.ones(2))
    with pytest.raises(ValueError, match="whole numbers; rows 0"):
        fam.check_response(np.array([0.5, 1.0]), np.ones(2))
    fam, _ = family_and_link("binomial", None)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        fam.check_response(np.array([0.0, 2.0]), np.ones(2))
    with pytest.raises(ValueError, match="takes the links"):
        family_and_link("poisson", "logit")


def test_beta_information_is_lme4s_rx_covariance():
    # lme4: sqrt(diag(vcov(fit, use.hessian = FALSE))) for cbpp's Laplace fit is
    # 0.22785237 0.30534751 0.32600119 0.42870187 at lme4's estimates
    from mixedlm_sklearn import glmer
    from mixedlm_sklearn.datasets import load_cbpp

    fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    dev = fit.model_.deviance
    x = np.array([0.6420699, -1.39833155181282, -0.991923809038708, -1.12821438763116, -1.57975005595514])
    se = np.sqrt(np.diag(2.0 * np.linalg.inv(dev.beta_information(dev.modes(x)))))
    np.testing.assert_allclose(se, [0.22785237, 0.30534751, 0.32600119, 0.42870187], rtol=1e-4)
