"""Property tests against a dense brute-force oracle: one grouping factor, then several.

Random designs (``hypothesis``, derandomised so CI is deterministic): unbalanced groups,
groups of one row, q = 1..3 random effects, random-effects variances from 0 to 1e3 times
the residual variance, ML and REML, unstructured and diagonal covariances, with and
without prior weights. Every fit is compared with the n x n multivariate normal density
(``_dense.py``) at the fit's own estimates, and with an independent maximisation of that
density from several starts (``_dense.py``).

The design space is the one where the likelihood is bounded: more rows than fixed and
random effects together (``n > p + m q``, a little stricter than lme4's
``check.nobs.vs.nRE``), padded into the first group.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from _dense import (Design, DenseLikelihood, DenseTermsDeviance, TermsDesign, dense_loglik,
                    dense_profiled_deviance, make_design, make_terms_design, profiled_dense_loglik,
                    scaled_gradient)
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

from mixedlm_sklearn import MixedLMRegressor, SingularFitWarning
from mixedlm_sklearn._terms import theta_index


def _settings(n: int, shrink: bool = True) -> settings:
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    phases=phases, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Case:
    design: Design
    reml: bool
    diagonal: bool

    @property
    def q(self) -> int:
        return self.design.Z.shape[1]


@st.composite
def cases(draw, max_q: int = 3, max_m: int = 12) -> Case:
    q = draw(st.integers(1, max_q))
    m = draw(st.integers(2, max_m))
    sizes = draw(st.lists(st.integers(1, 7), min_size=m, max_size=m))
    p_extra = draw(st.integers(0, 2))
    # log10(random-effects variance / residual variance); None: random effects exactly 0
    log_ratio = draw(st.one_of(st.none(), st.floats(-3.0, 3.0)))
    reml, diagonal, weights = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    fit_intercept = draw(st.booleans()) if p_extra else True
    slope_on_x = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    # lme4 refuses n <= m q (more random effects than rows). With n <= p + m q, y can be
    # fitted exactly by X beta + Z b, the likelihood is unbounded as the scale goes to 0
    # (test_bad_input covers that case), so ask for one more row than that; the
    # extra rows go to the first group so that groups of one row stay.
    p = p_extra + int(fit_intercept) if p_extra else 1
    need = m * q + p + 1
    sizes[0] += max(0, need - sum(sizes))
    d = make_design(sizes, p_extra, q, log_ratio, seed, fit_intercept=fit_intercept,
                    weights=weights, slope_on_x=slope_on_x)
    return Case(d, reml, diagonal)


def _fit(case: Case, **params) -> tuple[MixedLMRegressor, list]:
    d = case.design
    est = MixedLMRegressor(reml=case.reml, fit_intercept=d.fit_intercept,
                           cov_type="diagonal" if case.diagonal else "unstructured", **params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(d.X, d.y, groups=d.codes, Z=d.Z, sample_weight=d.weights)
    return est, caught


def _dense_blups(d: Design, beta: np.ndarray, cov_re: np.ndarray, scale: float) -> np.ndarray:
    """``b_i = cov_re Z_i' V^{-1} (y - X beta)`` from the dense V."""
    n = len(d.y)
    same = d.codes[:, None] == d.codes[None, :]
    V = same * (d.Z @ cov_re @ d.Z.T)
    V[np.diag_indices(n)] += scale / (np.ones(n) if d.weights is None else d.weights)
    a = np.linalg.solve(V, d.y - d.X_full @ beta)
    m = d.codes.max() + 1
    return np.array([cov_re @ d.Z[d.codes == i].T @ a[d.codes == i] for i in range(m)])


# ---- the oracle itself ----------------------------------------------------------------------

@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("diagonal", [False, True])
def test_dense_helpers_agree_with_the_oracle(reml, diagonal):
    d = make_design([3, 1, 5, 4, 2], 2, 3, 0.5, 7, weights=True)
    dl = DenseLikelihood(d, reml, diagonal)
    rng = np.random.default_rng(1)
    k = 3 if diagonal else 6
    x = np.append(rng.standard_normal(k), 0.3)
    L = np.zeros((3, 3))
    L[(np.arange(3),) * 2 if diagonal else np.tril_indices(3)] = x[:-1]
    expected, _ = profiled_dense_loglik(d.X_full, d.y, d.Z, d.codes, L @ L.T, np.exp(0.3), reml, d.weights)
    value, grad = dl.neg_value_and_grad(x)
    np.testing.assert_allclose(-value, expected, rtol=1e-12)
    h = 1e-6
    numeric = [(dl(x - h * e) - dl(x + h * e)) / (2 * h) for e in np.eye(k + 1)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)
    # the profiled deviance of theta = L / sigma is -2 log L at the profiled scale
    theta = (L / np.exp(0.15))[theta_index(3, diagonal)]
    dev = dense_profiled_deviance(d, theta, reml, diagonal)
    ll_at = [profiled_dense_loglik(d.X_full, d.y, d.Z, d.codes, L @ L.T * s, np.exp(0.3) * s, reml,
                                   d.weights)[0] for s in np.geomspace(0.5, 2.0, 41)]
    assert -0.5 * dev >= max(ll_at) - 1e-12


# ---- every fit against the dense oracle at its own estimates ----------------------------------

@_settings(400)
@given(cases())
def test_fit_agrees_with_the_dense_oracle(case):
    d = case.design
    est, caught = _fit(case)
    beta = est.fe_params_.to_numpy()
    cov_re, scale = est.cov_re_, est.scale_

    # log-likelihood (REML criterion) at the fit's own estimates, 1e-8 relative
    dense = dense_loglik(d.X_full, d.y, d.Z, d.codes, beta, cov_re, scale, case.reml, d.weights)
    np.testing.assert_allclose(est.llf_, dense, rtol=1e-8)
    # the fixed effects are the GLS estimate and the scale its profiled value at theta_
    _, gls = profiled_dense_loglik(d.X_full, d.y, d.Z, d.codes, cov_re, scale, case.reml, d.weights)
    np.testing.assert_allclose(beta, gls, rtol=1e-7, atol=1e-9 * (np.abs(gls).max() + np.sqrt(scale)))
    np.testing.assert_allclose(-2 * est.llf_, dense_profiled_deviance(d, est.theta_, case.reml, case.diagonal),
                               rtol=1e-8)
    blups = _dense_blups(d, beta, cov_re, scale)
    np.testing.assert_allclose(est.random_effects_.to_numpy(), blups, rtol=1e-6,
                               atol=1e-8 * (np.abs(blups).max() + np.sqrt(scale)))

    # the covariance is a covariance, of the requested structure
    assert scale > 0
    np.testing.assert_allclose(cov_re, cov_re.T, rtol=0, atol=1e-14 * np.abs(cov_re).max())
    eig = np.linalg.eigvalsh(cov_re)
    assert eig.min() >= -1e-10 * max(eig.max(), 0.0) - 1e-300
    if case.diagonal:
        np.testing.assert_array_equal(cov_re, np.diag(np.diag(cov_re)))

    # singular_ means a diagonal entry of the relative factor at its bound 0 (a variance
    # 0 or a correlation +-1), and then cov_re is singular
    rows, cols = theta_index(case.q, case.diagonal)
    on_bound = (rows == cols) & (est.theta_ == 0.0)
    assert est.singular_ == bool(on_bound.any())
    if est.singular_:
        assert eig.min() <= 1e-10 * max(eig.max(), 1e-300)

    # exactly one warning per problem, none otherwise
    kinds = [w.category for w in caught]
    assert kinds.count(SingularFitWarning) == int(est.singular_)
    assert kinds.count(ConvergenceWarning) == int(not est.converged_)
    assert len(kinds) == int(est.singular_) + int(not est.converged_), [str(w.message) for w in caught]

    # converged_ is lme4's verdict, computed independently here: on the parameters off
    # their bound, the gradient of the dense profiled deviance scaled by its Hessian is
    # below lme4's tolerance 2e-3, and that Hessian is positive definite
    if est.converged_:
        f = lambda t: dense_profiled_deviance(d, t, case.reml, case.diagonal)
        measure, hess_eig = scaled_gradient(f, est.theta_, ~on_bound)
        assert measure < 2e-3, (measure, hess_eig)


# ---- nobody finds a higher likelihood -------------------------------------------------------

_LOCAL_OPTIMA = (
    "bug: the optimiser stops at a local optimum or at a boundary point that is not one. "
    "(1) no comparison with other starts / with theta=0: an ML random intercept fit can "
    "return a local maximum (see test_ml_random_intercept_*); (2) on the boundary "
    "L[j,j]=0 the deviance is even in column j of L, so the region L[j,j]>0 with the "
    "sub-column negated is never explored (see test_boundary_sign_flip_*)."
)


# Designs on which the property fails today (found by random search); as
# explicit examples they keep the xfail strict however the random draws change.
def _literal(x, y, g, Z=None):
    x, y, g = np.array(x), np.array(y), np.array(g)
    return Design(x[:, None], y, np.ones((len(y), 1)) if Z is None else Z(x), g, None, True)


ML_INTERCEPT_LOCAL_MAX = Case(_literal(
    [-1.3, -0.4, 1.1, -0.7, -0.0, -0.3, -0.2, -0.4, 1.4, 0.6],
    [0.8, -0.4, 0.1, -0.6, -0.5, -0.2, 0.2, -3.4, 0.9, -1.1],
    [0, 0, 0, 1, 1, 1, 1, 2, 3, 3]), reml=False, diagonal=False)
SIGN_FLIP_Q2 = Case(_literal(
    [-0.8, 1.7, 0.3, -0.3, 0.2, 0.3, 1.0, 0.1, 1.3, -0.5, -0.1, -0.6, 0.1, 2.1, -1.7, -1.5],
    [-2.7, 4.0, -0.8, -0.3, -1.6, 2.7, -1.0, -2.1, -0.3, 0.1, 0.9, -1.1, -3.4, -1.5, 0.4, -2.5],
    np.repeat(np.arange(4), [5, 2, 4, 5]), Z=lambda x: np.column_stack([np.ones_like(x), x])),
    reml=True, diagonal=False)
# q = 3, ML: stops on L[1,1] = L[2,2] = 0, the dense likelihood rises by 0.08 from there
SIGN_FLIP_Q3 = Case(make_design([5, 3, 3, 4, 5, 6, 2], 2, 3, -0.962659742467582, 416935416,
                                fit_intercept=False), reml=False, diagonal=False)
# q = 3, ML, weights: a boundary local optimum 0.74 below the best one
Q3_OTHER_BOUNDARY_FACE = Case(make_design([4, 2, 1, 7, 3, 1, 7, 3], 1, 3, 0.7105868279698431, 210844007,
                                          fit_intercept=False, weights=True), reml=False, diagonal=False)


@_settings(150, shrink=False)
@example(case=ML_INTERCEPT_LOCAL_MAX)
@example(case=SIGN_FLIP_Q2)
@example(case=Q3_OTHER_BOUNDARY_FACE)
@given(cases(max_m=8))
def test_no_start_finds_a_higher_likelihood(case):
    est, _ = _fit(case)
    best, _ = DenseLikelihood(case.design, case.reml, case.diagonal).multistart_max(est.cov_re_, est.scale_)
    assert best <= est.llf_ + 1e-6


@_settings(150, shrink=False)
@example(case=SIGN_FLIP_Q3)
@given(cases(max_m=8))
def test_the_oracle_started_at_the_fit_cannot_improve_it(case):
    """A local version: L-BFGS-B on the dense likelihood from the fit's own estimates only."""
    est, _ = _fit(case)
    best, _ = DenseLikelihood(case.design, case.reml, case.diagonal).multistart_max(
        est.cov_re_, est.scale_, local=True)
    assert best <= est.llf_ + 1e-6


@_settings(60, shrink=False)
@example(case=ML_INTERCEPT_LOCAL_MAX)
@example(case=Q3_OTHER_BOUNDARY_FACE)
@example(case=SIGN_FLIP_Q3)
@given(cases(max_m=8))
def test_screening_the_starts_together_changes_no_answer(case):
    """The other starts of a small fit first run together in the batched kernel (with the
    first search, whose answer they join), and only those that settle lower or do not
    settle get a search of their own: the answer is the one every start searched on its
    own gives."""
    from unittest import mock

    from mixedlm_sklearn import _optimize

    screened, _ = _fit(case)
    with mock.patch.object(_optimize, "_screen_starts", lambda dev, starts, best, best_x, ran=None: starts):
        each, _ = _fit(case)
    assert screened.llf_ >= each.llf_ - 1e-8 * max(1.0, abs(each.llf_))


@pytest.mark.parametrize("case", [ML_INTERCEPT_LOCAL_MAX, Q3_OTHER_BOUNDARY_FACE],
                         ids=["ml-intercept", "q3-boundary-faces"])
def test_screening_keeps_the_start_that_reaches_the_better_optimum(case):
    """Two local optima, the first search stopping at the worse one: the screening of the
    other starts, which lets a start go once it comes near the first search's answer,
    hands on a start that leads to the better optimum, and the fit reaches it (the dense
    likelihood from several starts finds nothing higher). Without the other starts the
    fit stays at the worse optimum: the case needs them."""
    from unittest import mock

    from mixedlm_sklearn import _optimize

    handed_on = []
    screen = _optimize._screen_starts

    def spy(dev, starts, best, best_x, ran=None):
        out = screen(dev, starts, best, best_x, ran)
        handed_on.append(len(out))
        return out

    with mock.patch.object(_optimize, "_screen_starts", spy):
        screened, _ = _fit(case)
    with mock.patch.object(_optimize, "_extra_starts", lambda dev: []):
        alone, _ = _fit(case)
    best, _ = DenseLikelihood(case.design, case.reml, case.diagonal).multistart_max(
        screened.cov_re_, screened.scale_)
    assert handed_on and handed_on[0] >= 1
    assert alone.llf_ < screened.llf_ - 1e-3
    assert best <= screened.llf_ + 1e-6


# Minimal reproducers of the two failures (data rounded to one decimal). Each asserts only
# what must hold once fixed, so that a fix turns it into an XPASS (strict: remove the mark).

def _ml_intercept(x, y, g):
    x, y, g = np.array(x), np.array(y), np.array(g)
    d = Design(x[:, None], y, np.ones((len(y), 1)), g, None, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        est = MixedLMRegressor(reml=False).fit(x[:, None], y, groups=g)
    grid = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 121)])
    profile = [-0.5 * est.model_.deviance(np.array([t])) for t in grid]
    best, _ = DenseLikelihood(d, False, False).multistart_max(est.cov_re_, est.scale_)
    return est, max(profile), best


def test_ml_random_intercept_local_maximum_on_the_boundary():
    est, profile_max, best = _ml_intercept(
        [-1.3, -0.4, 1.1, -0.7, -0.0, -0.3, -0.2, -0.4, 1.4, 0.6],
        [0.8, -0.4, 0.1, -0.6, -0.5, -0.2, 0.2, -3.4, 0.9, -1.1],
        [0, 0, 0, 1, 1, 1, 1, 2, 3, 3])
    assert est.llf_ >= max(profile_max, best) - 1e-6


def test_ml_random_intercept_local_maximum_inside():
    est, profile_max, best = _ml_intercept(
        [-0.4, 0.2, 0.3, 0.0, -0.4, -0.5], [-0.3, 0.1, -0.9, -1.4, 1.6, 0.9], [0, 0, 0, 1, 2, 2])
    assert est.llf_ >= max(profile_max, best) - 1e-6


def _boundary_is_a_local_minimum(dev, theta, q, step=1e-2):
    """On ``L[j,j] = 0`` the deviance is even in column j of L, so ``(0, c)`` and ``(0, -c)``
    are the same point: a minimum must not fall inwards from either representation."""
    rows, cols = theta_index(q)
    value = dev(theta)
    for j in range(q):
        jj = np.flatnonzero((rows == j) & (cols == j))[0]
        if theta[jj] != 0.0:
            continue
        for sign in (1.0, -1.0):
            trial = theta.copy()
            trial[(cols == j) & (rows > j)] *= sign
            trial[jj] = step
            if dev(trial) < value - 1e-9:
                return False
    return True


def test_boundary_sign_flip_is_not_a_minimum():
    x = np.array([-0.8, 1.7, 0.3, -0.3, 0.2, 0.3, 1.0, 0.1, 1.3, -0.5, -0.1, -0.6, 0.1, 2.1, -1.7, -1.5])
    y = np.array([-2.7, 4.0, -0.8, -0.3, -1.6, 2.7, -1.0, -2.1, -0.3, 0.1, 0.9, -1.1, -3.4, -1.5, 0.4, -2.5])
    g = np.repeat(np.arange(4), [5, 2, 4, 5])
    Z = np.column_stack([np.ones_like(x), x])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        est = MixedLMRegressor().fit(x[:, None], y, groups=g, Z=Z)
    assert _boundary_is_a_local_minimum(est.model_.deviance, est.theta_, 2)
    d = Design(x[:, None], y, Z, g, None, True)
    best, _ = DenseLikelihood(d, True, False).multistart_max(est.cov_re_, est.scale_)
    assert est.llf_ >= best - 1e-6


# ---- converged_, singular_ and their warnings on known cases -----------------------------------

def _fit_recording(X, y, g, Z=None, **params):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = MixedLMRegressor(**params).fit(X, y, groups=g, Z=Z)
    return est, [w.category for w in caught], [str(w.message) for w in caught]


def test_zero_variance_is_singular_with_one_warning():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(30), 6)
    x = rng.standard_normal(g.size)
    e = rng.standard_normal(g.size)
    e -= np.bincount(g, e)[g] / 6  # group means of the noise exactly 0: variance estimate 0
    est, kinds, messages = _fit_recording(x[:, None], 1 + 2 * x + e, g)
    assert est.singular_ and est.converged_
    assert est.cov_re_[0, 0] == 0.0 and est.theta_[0] == 0.0
    assert kinds == [SingularFitWarning]
    assert "consider removing" in messages[0]  # says what to do


def test_correlation_at_one_is_singular_with_one_warning():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(10), 6)
    x = np.tile(np.arange(6.0), 10)
    u = rng.standard_normal(10)
    y = np.round(5 + 0.5 * x + u[g] * (1 + 0.3 * x) + rng.standard_normal(g.size), 1)
    Z = np.column_stack([np.ones_like(x), x])
    est, kinds, _ = _fit_recording(x[:, None], y, g, Z)
    cov = est.cov_re_
    assert np.all(np.diag(cov) > 0)  # both variances positive ...
    assert abs(cov[0, 1]) / np.sqrt(cov[0, 0] * cov[1, 1]) == pytest.approx(1.0, abs=1e-12)  # ... correlation 1
    assert est.singular_ and est.converged_
    assert kinds == [SingularFitWarning]
    d = Design(x[:, None], y, Z, g, None, True)
    best, _ = DenseLikelihood(d, True, False).multistart_max(cov, est.scale_)
    assert est.llf_ >= best - 1e-6


def test_regular_fit_warns_nothing():
    from mixedlm_sklearn.datasets import load_sleepstudy

    df = load_sleepstudy()
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    est, kinds, _ = _fit_recording(df[["Days"]], df["Reaction"], df["Subject"], Z)
    assert kinds == [] and est.converged_ and not est.singular_


@pytest.mark.parametrize("max_iter", [1, 2])
def test_iteration_limit_gives_one_convergence_warning(max_iter):
    from mixedlm_sklearn.datasets import load_sleepstudy

    df = load_sleepstudy()
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    est, kinds, messages = _fit_recording(df[["Days"]], df["Reaction"], df["Subject"], Z, max_iter=max_iter)
    assert not est.converged_
    assert kinds == [ConvergenceWarning]
    assert "max_iter" in messages[0]  # says what to do
    full = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    assert est.llf_ < full.llf_ - 1e-6  # and it really is short of the optimum


# ==== several grouping factors =============================================================
#
# Random designs (``hypothesis``, derandomised so CI is deterministic): two factors, crossed
# (levels assigned at random, unbalanced) or nested (each inner level inside one outer
# level, 1 to 4 rows each); a random slope on neither, either or both factors, on a
# covariate that is uncentred and badly scaled (``10^k (c + N(0, 1))``, ``|k| <= 3``,
# ``0 <= c <= 30``); each term's true variance zero or ``10^[-2, 2]`` times the residual
# variance; REML and ML; each slope term diagonal or unstructured on its own (``cov_type``
# a dict). Every fit must
#
# * not crash and leak no numpy warning,
# * have the log-likelihood of the n x n multivariate normal density at its own estimates
#   (``tests/_dense.py``'s ``DenseTermsDeviance``, no code shared with the package), with
#   the GLS fixed effects,
# * keep its diagonal terms diagonal,
# * reach the dense likelihood's maximum: no start of L-BFGS-B on the dense profiled
#   deviance (the fit's own estimates, the identity, a small start, random starts) finds a
#   log-likelihood more than 1e-6 above the fit's.
#
# As above, there are more rows than fixed and random effects together.


def _terms_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass
class TermsCase:
    design: TermsDesign
    reml: bool

    @property
    def cov_type(self) -> dict:
        return {name: "diagonal" if diagonal else "unstructured"
                for name, _, _, diagonal in self.design.factors}

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        d = self.design
        terms = [(name, int(codes.max()) + 1, Z.shape[1], diagonal) for name, codes, Z, diagonal in d.factors]
        return f"TermsCase(n={len(d.y)}, terms={terms}, reml={self.reml})"


@st.composite
def terms_cases(draw) -> TermsCase:
    nested = draw(st.booleans())
    m_a = draw(st.integers(2, 8))
    m_b = draw(st.integers(2, 3) if nested else st.integers(2, 8))
    slopes = draw(st.sampled_from(["none", "a", "b", "both"]))
    # a true variance of zero for one term in four (small true variances and few levels
    # give singular fits often enough besides)
    log_ratios = tuple(draw(st.integers(0, 3).flatmap(lambda k: st.none() if k == 0 else st.floats(-2.0, 2.0)))
                       for _ in range(2))
    diagonal = (draw(st.booleans()), draw(st.booleans()))
    x_scale = 10.0 ** draw(st.floats(-3.0, 3.0))
    x_shift = draw(st.floats(0.0, 30.0))
    reml = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    n_blocks = m_a * m_b if nested else draw(st.integers(4, 12))
    sizes = draw(st.lists(st.integers(1, 4) if nested else st.integers(3, 8),
                          min_size=n_blocks, max_size=n_blocks))
    # more rows than fixed and random effects together (3 fixed effects)
    q_a, q_b = 1 + (slopes in ("a", "both")), 1 + (slopes in ("b", "both"))
    n_b = m_a * m_b if nested else m_b
    need = m_a * q_a + n_b * q_b + 3 + 2
    sizes[0] += max(0, need - sum(sizes))
    return TermsCase(make_terms_design(nested, m_a, m_b, sizes, slopes, log_ratios, diagonal, x_scale,
                                  x_shift, seed), reml)


def _fit_terms(case: TermsCase) -> tuple[MixedLMRegressor, list]:
    d = case.design
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = MixedLMRegressor(reml=case.reml, cov_type=case.cov_type).fit(
            pd.DataFrame(d.X, columns=["x", "w"]), d.y, groups=pd.DataFrame(d.groups),
            Z={name: Z for name, Z in d.Z.items() if Z.shape[1] > 1})
    return est, caught


def test_dense_terms_deviance_is_the_multivariate_normal_density():
    """The oracle checked against scipy's density and its own finite differences."""
    from scipy import stats

    d = make_terms_design(False, 4, 3, [6] * 5, "both", (0.3, -0.5), (False, True), 20.0, 5.0, 3)
    for reml in (False, True):
        dense = DenseTermsDeviance(d, reml)
        theta = np.array([0.7, -0.02, 0.03, 0.4, 0.05])  # a: (L00, L10, L11), b: diagonal (L00, L11)
        value, grad = dense.value_and_grad(theta)
        # at the profiled scale and GLS beta, -dev/2 is the density (REML: plus its term)
        n, p = len(d.y), 3
        V0 = np.eye(n)
        for (_, codes, Z, _), L in zip(d.factors, dense.lams(theta)):
            V0 += (codes[:, None] == codes[None, :]) * (Z @ L @ L.T @ Z.T)
        Xf = d.X_full
        beta = np.linalg.solve(Xf.T @ np.linalg.solve(V0, Xf), Xf.T @ np.linalg.solve(V0, d.y))
        r = d.y - Xf @ beta
        scale = r @ np.linalg.solve(V0, r) / (n - p if reml else n)
        llf = stats.multivariate_normal(Xf @ beta, scale * V0).logpdf(d.y)
        if reml:
            llf += 0.5 * p * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(Xf.T @ np.linalg.solve(scale * V0, Xf))[1]
        assert -0.5 * value == pytest.approx(llf, rel=1e-11)
        covs = [scale * L @ L.T for L in dense.lams(theta)]
        assert dense.loglik(covs, scale)[0] == pytest.approx(llf, rel=1e-11)
        h = 1e-6
        numeric = [(dense(theta + h * e) - dense(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-4)


@_terms_settings(30)
@given(terms_cases())
def test_several_factors_reach_the_dense_maximum(case):
    d = case.design
    est, caught = _fit_terms(case)
    leaked = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not leaked

    dense = DenseTermsDeviance(d, case.reml)
    covs = [np.atleast_2d(est.cov_re_[name]) for name, _, _, _ in d.factors]
    # the fit's log-likelihood is the dense one at its own estimates, beta the GLS estimate
    llf, gls = dense.loglik(covs, est.scale_)
    np.testing.assert_allclose(est.llf_, llf, rtol=1e-8)
    beta = est.fe_params_.to_numpy()
    np.testing.assert_allclose(beta, gls, rtol=1e-6, atol=1e-8 * np.abs(gls).max())
    for (name, _, Z, diagonal), cov in zip(d.factors, covs):
        assert cov.shape == (Z.shape[1],) * 2
        if diagonal:
            assert cov[0, 1] == cov[1, 0] == 0.0
        assert np.linalg.eigvalsh(cov).min() >= -1e-10 * max(np.abs(cov).max(), 1e-300)

    # nobody finds a higher likelihood
    best = dense.multistart_min([dense.theta_of(covs, est.scale_)])
    assert -0.5 * best <= est.llf_ + 1e-6, (-0.5 * best - est.llf_, est.converged_, est.singular_)


# ---- a failure found by a wider random search (300 non-derandomised examples) ---------------------

def _literal_two_boundary_faces() -> TermsCase:
    """15 rows, ``y ~ x + w + (1 | a) + (x | b)``, REML; ``b`` happens to be nested in ``a``
    (2 levels) and ``x`` is uncentred (13.7 to 17.3)."""
    x = np.array([16.12, 15.87, 16.64, 16.1, 15.46, 16.36, 17.3, 16.94, 15.29, 14.73, 15.37, 16.04, 13.67,
                  15.78, 14.75])
    w = np.array([-23.23, -4.43, 18.37, 91.16, 154.25, 37.15, 186.65, -16.52, 85.15, 140.35, 59.4, -24.35,
                  -42.17, 4.23, 72.02])
    y = np.array([20.94, 21.32, 21.7, 21.07, 19.21, 21.01, 22.39, 23.4, 18.66, 20.69, 30.04, -3.44, -11.68,
                  -15.16, -12.26])
    a = np.repeat([0, 1], [11, 4])
    b = np.repeat([0, 1, 2, 3], [10, 1, 1, 3])
    factors = [("a", a, np.ones((15, 1)), False), ("b", b, np.column_stack([np.ones(15), x]), False)]
    return TermsCase(TermsDesign(np.column_stack([x, w]), y, factors), reml=True)


def test_two_boundary_faces_reach_the_better_one():
    """The search used to stop on one boundary face (var(a) = 307, corr(b) = -1; log L =
    -34.44696, reported converged) while the maximum is on another (var(a) = 0, corr(b) =
    -1), 0.088 log-lik units higher: it now also starts from each face where one term is
    absent (``_optimize._face_starts``)."""
    case = _literal_two_boundary_faces()
    est, _ = _fit_terms(case)
    # lme4: lmer(y ~ x + w + (1 | a) + (x | b), REML = TRUE) gives logLik -34.3587028276
    assert est.llf_ >= -34.3587028276 - 1e-6
    dense = DenseTermsDeviance(case.design, True)
    covs = [np.atleast_2d(est.cov_re_[name]) for name in ("a", "b")]
    assert -0.5 * dense.multistart_min([dense.theta_of(covs, est.scale_)]) <= est.llf_ + 1e-6


# ---- more failures of the wider search (2,400 non-derandomised examples) ----------------------

def _saved_cases() -> list[TermsCase]:
    """Designs kept in ``data/several_factor_faces.json`` (as the search drew them)."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "several_factor_faces.json"
    terms_cases = []
    for c in json.loads(path.read_text()):
        factors = [(f["name"], np.array(f["codes"]), np.array(f["Z"]), f["diagonal"]) for f in c["factors"]]
        terms_cases.append(TermsCase(TermsDesign(np.array(c["X"]), np.array(c["y"]), factors), c["reml"]))
    return terms_cases


def _shortfall(case: TermsCase) -> float:
    est, _ = _fit_terms(case)
    dense = DenseTermsDeviance(case.design, case.reml)
    covs = [np.atleast_2d(est.cov_re_[name]) for name, _, _, _ in case.design.factors]
    return -0.5 * dense.multistart_min([dense.theta_of(covs, est.scale_)]) - est.llf_


@pytest.mark.parametrize("index", [0, 1])
def test_the_vanished_effect_can_be_another(index):
    """ML, slopes on both factors, the second term diagonal. TermsCase 0 (35 rows) stopped with
    b's intercept variance at 0 and its slope's > 0, 0.438 log-lik units below the maximum
    (b's slope at 0, its intercept > 0, a's correlation -1); case 1 (19 rows) with b's slope
    at 0 and a non-singular, 0.0135 below the maximum (a's correlation +1, b's slope > 0).
    Both reported converged. The search now also starts with a term's vanished effects
    raised and with the vanished and the present effect swapped."""
    assert _shortfall(_saved_cases()[index]) <= 1e-6


@pytest.mark.xfail(strict=True, reason=(
    "50 rows, two scalar terms, REML: both variances nearly 0 (the maximum has var(a) = "
    "2e-4 scale units); the fit stops at var(a) = 1.3e-6 in a flat valley, 3.6e-6 log-lik "
    "units short, and reports converged=False (Hessian not positive definite)"))
def test_flat_valley_next_to_zero_variances():
    assert _shortfall(_saved_cases()[2]) <= 1e-6
