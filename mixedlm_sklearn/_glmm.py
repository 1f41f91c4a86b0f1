"""Generalized linear mixed models: PIRLS, the Laplace and AGQ deviance, the optimiser.

The families and links are in :mod:`._family`.

A GLMM's response has a density from an exponential family with mean ``mu = g^{-1}(eta)``,
``eta = offset + X beta + Z Lambda u`` and spherical random effects ``u ~ N(0, I)``
(Bates et al. 2015, JSS 67(1); lme4's ``glmer``). The likelihood integrates over ``u``:

* **Laplace** (``n_agq = 1``, any terms): the conditional mode ``u*`` minimises
  ``f(u) = -2 log p(y | u) + |u|^2``, found by penalised iteratively reweighted least
  squares (PIRLS: Fisher scoring, whose step solves the weighted linear mixed model with
  working weights ``W = w mu'^2 / V(mu)`` on the one engine -- the same cross-products,
  factorisation and solves as :mod:`._deviance`). The deviance is
  ``-2 log L ~ f(u*) + log|M|``, ``M = Lambda'Z'WZ Lambda + I`` at ``u*`` (lme4's
  definition; ``-2 log p`` is the full log-density, binomial coefficients included).
* **Adaptive Gauss-Hermite quadrature** (``n_agq > 1``, one scalar term): each group's
  integral is taken on the nodes ``u*_g + z_k / sqrt(M_g)`` (Pinheiro & Bates 1995,
  JCGS 4(1)); with one node it is the Laplace approximation.

The parameters ``x = (theta, beta)`` are optimised jointly as lme4's second stage does.
The Laplace deviance has an analytic gradient (derived for this module, checked against
finite differences in the tests). With ``r = d log p / d eta`` (per row), ``H = -dr/deta``
(``= W`` for a canonical link), ``v_i = M^{-1} Lambda' z_i`` on the selected inverse,
leverages ``h_i = z_i' Lambda v_i``, ``a_i = h_i dW_i/deta_i``, ``s = M_H^{-1} Lambda'Z'a``
(``M_H`` as ``M`` with ``H``) and ``c = a - H Z Lambda s``:

* ``dD/dbeta = X'(c - 2 r)``;
* ``dD/dL_k[a, b] = sum_i z_ik[a] F_ik[b]``,
  ``F_ik = (c_i - 2 r_i) u_k(i) + 2 W_i v_ik + r_i s_k(i)``

(``u*`` moves with the parameters through ``M_H du = dLambda'Z'r - Lambda'Z'H d eta``; the
envelope theorem removes it from ``f``). The AGQ deviance is optimised with
finite-difference gradients (a handful of parameters).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import linalg, optimize

from ._crossprod import DesignPattern
from ._factor import Factor, NotPositiveDefinite, Plan, Prepared
from ._family import Family, Link
from ._newton import SCALED_GRADIENT_TOL, OptimizerInfo, central_hessian, fd_hessian, minimize, solve_pd
from ._optimize import _columns_below, _extra_starts, _is_small
from ._terms import Terms
from ._threads import single_threaded_blas

__all__ = ["PIRLSDivergence", "GLMMDeviance", "GLMMSolution", "fit_glmm", "fit_with_fixed", "fit_with_fixed_family", "glm_start"]

_EPS = np.finfo(float).eps


# Chord steps of PIRLS (solves with a nearby evaluation's factor): at most this many, each
# cutting the decrement by at least this factor, ending below this decrement (whose square
# root bounds the error of the modes: 1e-10, the rounding of the deviance's gradient).
_CHORD_STEPS = 12
_CHORD_RATE = 0.1
_CHORD_TOL = 1e-20


class PIRLSDivergence(FloatingPointError):
    """The inner iteration for the conditional modes did not converge."""


# ---- the model on its rows -------------------------------------------------------------------


@dataclass
class _Modes:
    """PIRLS at one ``(theta, beta)``: the conditional modes and what they give."""

    theta: np.ndarray
    beta: np.ndarray
    u: list  # per term (q_k, m_k)
    eta: np.ndarray
    mu: np.ndarray
    d1: np.ndarray  # dmu/deta
    d2: np.ndarray
    var: np.ndarray
    dvar: np.ndarray
    weights: np.ndarray  # Fisher working weights W
    score: np.ndarray  # r = d log p / d eta
    loglik: float
    penalty: float  # |u|^2
    factor: Factor
    cp: object
    lams: list
    n_iter: int
    cache: dict = field(default_factory=dict)

    @property
    def laplace(self) -> float:
        return -2.0 * self.loglik + self.penalty + self.factor.logdet


def _halving_step(u: list, delta: list, f: float, objective, tries: int):
    """The step ``u + s delta`` with the largest ``s`` in 1, 1/2, 1/4, ... (at most ``tries``)
    that does not raise the penalised deviance ``f``: ``((u, eta, f, ll, pen), s)``, or None
    when none of them does (PIRLS's Newton and chord steps alike)."""
    step = 1.0
    for _ in range(tries):
        trial = [a + step * d for a, d in zip(u, delta)]
        eta_t, f_t, ll_t, pen_t = objective(trial)
        if np.isfinite(f_t) and f_t <= f + 1e-10 * max(1.0, abs(f)):
            return (trial, eta_t, f_t, ll_t, pen_t), step
        step *= 0.5
    return None


class GLMMDeviance:
    """``-2 log L`` of a GLMM as a function of ``x = (theta, beta)``.

    Parameters
    ----------
    X : ndarray (n, p)
        Fixed-effects columns (intercept included).
    y : ndarray (n,)
        Response: 0/1 or proportions (binomial), counts (Poisson).
    weights : ndarray (n,)
        Prior weights (binomial: number of trials).
    offset : ndarray (n,)
    factors : sequence of (codes, Z)
    terms : Terms
    family : Family
    link : Link
    n_agq : int
        Quadrature nodes (1 = Laplace; more needs one scalar term).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn._family import family_and_link
    >>> from mixedlm_sklearn._terms import Term, Terms
    >>> rng = np.random.default_rng(1)
    >>> g = np.repeat(np.arange(8), 6)
    >>> y = (rng.standard_normal(8)[g] + rng.standard_normal(48) > 0).astype(float)
    >>> fam, link = family_and_link("binomial", None)
    >>> dev = GLMMDeviance(np.ones((48, 1)), y, np.ones(48), np.zeros(48),
    ...                    [(g, np.ones((48, 1)))], Terms([Term("g", ("(Intercept)",), 8)]), fam, link)
    >>> value, grad = dev.value_and_grad(np.array([0.5, 0.0]))
    >>> bool(np.isfinite(value)), grad.shape
    (True, (2,))
    """

    # A GLMM is fitted by maximum likelihood; x has no residual-variance ratios.
    reml = False
    n_eta = 0
    stochastic = False

    def __init__(self, X, y, weights, offset, factors, terms: Terms, family: Family, link: Link,
                 n_agq: int = 1) -> None:
        self.X = np.ascontiguousarray(X, dtype=float)
        self.y = np.asarray(y, dtype=float)
        self.prior = np.asarray(weights, dtype=float)
        self.offset = np.asarray(offset, dtype=float)
        self.factors = [(np.asarray(c, dtype=np.intp), np.ascontiguousarray(Z, dtype=float))
                        for c, Z in factors]
        self.terms = terms
        self.family, self.link = family, link
        self.canonical = link.name == family.canonical
        # log|M| with the exact Hessian of the joint log-density (see Family.observed_laplace)
        self.observed = family.observed_laplace and not self.canonical
        self.n, self.p = self.X.shape
        self.n_theta = terms.n_theta
        self.n_params = self.n_theta + self.p
        self.n_agq = int(n_agq)
        if self.n_agq > 1 and (len(terms) != 1 or terms[0].q != 1):
            raise ValueError("adaptive Gauss-Hermite quadrature (n_agq > 1) needs a single grouping "
                             "factor with a scalar random effect (as lme4); use n_agq=1 (Laplace)")
        self._log_constant = float(family.log_constant(self.y, self.prior).sum())
        self.pattern = DesignPattern(np.empty((self.n, 0)), self.factors, terms)
        cp0 = self.pattern.cross_products(np.zeros(self.n), np.ones(self.n))
        self.plan = Plan(cp0)
        self._prepared = Prepared(self.plan, cp0)  # the sparse structure, reused for new weights
        self._entries = [self.pattern.pair_entry(j) for j in range(len(self.pattern._pairs))]
        self._pairs_kl = [(k, l) for k, l, *_ in self.pattern._pairs]
        self._last: _Modes | None = None
        self._base: _Modes | None = None  # the last evaluation with a finite deviance
        self._best: _Modes | None = None  # the one with the lowest deviance (another start)
        self._pattern_x: DesignPattern | None = None
        self.n_evaluations = 0
        self.n_pirls = 0
        if self.n_agq > 1:
            self._set_nodes(self.n_agq)
            codes = self.factors[0][0]
            self._group_sum = sp.csr_matrix((np.ones(self.n), (codes, np.arange(self.n))),
                                            shape=(terms[0].n_levels, self.n))

    def _set_nodes(self, n_agq: int) -> None:
        """Gauss-Hermite nodes ``z_k`` and log weights for ``int g(z) dz / sqrt(2 pi)``."""
        nodes, w = np.polynomial.hermite_e.hermegauss(n_agq)
        self._nodes = nodes
        # hermegauss integrates against exp(-z^2 / 2); the integrand is over dz / sqrt(2 pi)
        self._log_node_weights = np.log(w / np.sqrt(2.0 * np.pi)) + 0.5 * nodes ** 2

    # ---- parameters ---------------------------------------------------------------------

    def lower_bounds(self) -> np.ndarray:
        return np.concatenate([self.terms.lower_bounds(), np.full(self.p, -np.inf)])

    def with_nodes(self, n_agq: int) -> "GLMMDeviance":
        """The same data and structure with another number of quadrature nodes."""
        other = copy.copy(self)
        other.n_agq = int(n_agq)
        other._last, other._base, other._best = None, None, None
        other.n_evaluations = other.n_pirls = 0
        return other

    def with_response(self, y: np.ndarray) -> "GLMMDeviance":
        """The same rows and structure (pattern, elimination plan) with another response:
        a refit to a simulated response needs no new symbolic work."""
        other = copy.copy(self)
        other.y = np.asarray(y, dtype=float)
        other._log_constant = float(self.family.log_constant(other.y, self.prior).sum())
        other._last, other._base, other._best = None, None, None
        other.n_evaluations = other.n_pirls = 0
        return other

    def upper_bounds(self) -> np.ndarray:
        return np.full(self.n_params, np.inf)

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=float)
        return x[:self.n_theta], x[self.n_theta:]

    # ---- rows <-> random effects ----------------------------------------------------------

    # The methods below that take ``R`` work on the rows ``R`` (default: this deviance's
    # own): a deviance over chunks (:mod:`._glmm_chunks`) applies them to each chunk's rows
    # (:class:`_RowsLike`: X, y, prior, offset, factors, pattern, entries, n) and adds up.

    def _per_row(self, k: int, A: np.ndarray, R: Any = None) -> np.ndarray:
        """A term's (q, m) per-level values at each row: (n, q)."""
        return A[:, (R or self).factors[k][0]].T

    def _z_times(self, b: list, R: Any = None) -> np.ndarray:
        """``Z b`` for per-term (q, m) effects ``b``."""
        R = R or self
        out = np.zeros(R.n)
        for k, (codes, Z) in enumerate(R.factors):
            if Z.shape[1] == 1:
                out += Z[:, 0] * b[k][0, codes]
            else:
                out += np.einsum("iq,qi->i", Z, b[k][:, codes])
        return out

    def _zt_times(self, v: np.ndarray, R: Any = None) -> list:
        """``Z_k' v`` per level of every term: (q_k, m_k)."""
        R = R or self
        out = []
        for (codes, Z), term, zt in zip(R.factors, self.terms, R.pattern._zt):
            out.append((zt @ v).reshape(term.n_levels, Z.shape[1]).T)
        return out

    def _eta_of(self, fixed: np.ndarray, b: list, R: Any = None):
        """The linear predictor ``fixed + Z b``, its mean and the log-likelihood of rows ``R``."""
        R = R or self
        eta = fixed + self._z_times(b, R)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            mu = self.link.inverse(eta)
            ll = float(self.family.log_kernel(R.y, eta, mu, R.prior, self.link).sum())
        return eta, mu, ll

    def _weights_at(self, eta: np.ndarray, R: Any = None) -> tuple:
        """``(mu, d1, d2, var, dvar, W, r)`` at ``eta`` on rows ``R``: the Fisher working
        weights ``W`` and the score ``r``; PIRLSDivergence where they are not finite."""
        R = R or self
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            mu, d1, d2, var, dvar = self._response(eta)
            # d1 / var first: d1 * d1 underflows to 0 where mu is within ~1e-154 of
            # 0 or 1, and a zero weight makes the working response r / W undefined
            ratio = d1 / var
            W = R.prior * d1 * ratio
            r = R.prior * (R.y - mu) * ratio
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(r))):
            raise PIRLSDivergence("the working weights are not finite (the linear predictor "
                                  "ran off to infinity)")
        return mu, d1, d2, var, dvar, W, r

    def _observed_at(self, rows: tuple, R: Any = None) -> np.ndarray:
        """The observed weights ``H = -dr/deta`` (the exact Hessian of the log-density)."""
        R = R or self
        mu, d1, d2, var, dvar, W, _ = rows
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return W - R.prior * (R.y - mu) * (d2 * var - d1 * d1 * dvar) / (var * var)

    # ---- the rows' sums: what a deviance over chunks replaces (one pass each) ---------------

    def _fixed(self, beta: np.ndarray):
        """What the linear predictor's fixed part is kept as (here the rows' values)."""
        return self.offset + self.X @ beta if self.p else self.offset.copy()

    def _evaluate(self, fixed, b: list):
        """``(eta, mu, loglik)`` at ``fixed + Z b`` (``eta``, ``mu``: what :meth:`_working`
        and :meth:`_score_products` take; the log-likelihood with its constant)."""
        eta, mu, ll = self._eta_of(fixed, b)
        return eta, mu, self._log_constant + ll

    def _working(self, eta, observed: bool = False, rows: tuple | None = None):
        """The cross-products of PIRLS at ``eta``: of ``r / W`` with weights ``W`` (with
        ``observed``, ``H`` for ``W``: NotPositiveDefinite unless all positive), and the
        per-row ``(mu, d1, d2, var, dvar, W, r)`` (``rows``: those of ``eta`` already)."""
        rows = self._weights_at(eta) if rows is None else rows
        W, r = rows[5], rows[6]
        if observed:
            W = self._observed_at(rows)
            if not (np.all(W > 0) and np.all(np.isfinite(W))):
                raise NotPositiveDefinite("the Hessian of the joint log-density in the "
                                          "random effects is not positive definite")
            rows = rows[:5] + (W, r)
        with np.errstate(over="ignore"):
            # PIRLS uses Z'W z = Z'r and Z'WZ; the unused z'Wz overflows when a row's
            # mean is numerically 0 or 1 against its response (a far trial point)
            cp = self.pattern.cross_products(r / W, W)
        return cp, rows

    def _newton_products(self, eta, rows: tuple):
        """The cross-products with the observed weights ``H`` (a non-canonical link's
        Newton step), or None where ``H`` is not positive and finite everywhere."""
        H = self._observed_at(rows)
        if np.all(H > 0) and np.all(np.isfinite(H)):
            return self.pattern.cross_products(np.zeros(self.n), H)
        return None

    def _score_products(self, eta, mu: np.ndarray | None) -> list | None:
        """``Z'r`` per level at ``eta`` (``mu``: its mean, when the logit score is
        ``y - mu``), or None where ``r`` is not finite."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            if mu is not None:
                r = self.prior * (self.y - mu)
            else:
                mu, d1, _, var, _ = self._response(eta)
                r = self.prior * (self.y - mu) * (d1 / var)
        if not np.all(np.isfinite(r)):
            return None
        return self._zt_times(r)

    def _shift_products(self, base: _Modes, d_lams: list, d_beta: np.ndarray) -> list:
        """``Z'W (Z dLambda u + X dbeta)`` per level with the weights of ``base``."""
        shift = self._z_times([dl @ u for dl, u in zip(d_lams, base.u)])
        if self.p:
            shift = shift + self.X @ d_beta
        return self._zt_times(base.weights * shift)

    def _x_products(self, m: _Modes):
        """The cross-products of ``[X 0]`` with the modes' weights (``beta``'s information)."""
        if self._pattern_x is None:
            self._pattern_x = DesignPattern(self.X, self.factors, self.terms)
        return self._pattern_x.cross_products(np.zeros(self.n), m.weights)

    def _response(self, eta: np.ndarray):
        mu, d1, d2 = self.link.derivatives(eta)
        if self.family.name == "binomial" and self.link.name == "logit":
            # the variance mu (1 - mu) is dmu/deta, computed without cancellation
            return mu, d1, d2, d1.copy(), 1.0 - 2.0 * mu
        if self.family.name == "binomial":
            mu = np.clip(mu, _EPS * 1e-10, 1.0 - _EPS * 1e-10)
        var, dvar = self.family.variance(mu)
        var = np.maximum(var, 1e-300)
        return mu, d1, d2, var, dvar

    # ---- PIRLS ----------------------------------------------------------------------------

    def _modes(self, theta: np.ndarray, beta: np.ndarray, u0: list | None = None,
               tol: float = 1e-10, max_iter: int = 60, chord: Factor | None = None) -> _Modes:
        """Conditional modes at ``(theta, beta)``: Newton's method with step halving.

        The step solves with the Fisher weights ``W`` (scoring; for a canonical link the
        observed information, so Newton's method). For another link the observed weights
        ``H`` are used where all positive (otherwise scoring), so that the iteration
        converges quadratically: the modes must be exact for ``log|M|`` and the gradient.
        Returns with the factor of ``M`` (Fisher weights, lme4's definition) at the modes.

        ``chord``: the factor of a nearby evaluation. Steps that solve with it (a chord
        method: no factorisation, linear convergence) are taken first while they converge
        fast (:meth:`_chord_steps`); when they reach a gradient far below ``tol`` the
        factor at the modes, needed for ``log|M|``, is the only factorisation. After a
        Newton step that is not the last, chord steps with its factor go on the same way.
        """
        lams = self.terms.lams(theta)
        fixed = self._fixed(beta)
        u = [np.zeros((t.q, t.n_levels)) for t in self.terms] if u0 is None else [a.copy() for a in u0]

        def objective(u):
            eta, mu, ll = self._evaluate(fixed, [lam @ a for lam, a in zip(lams, u)])
            pen = float(sum((a * a).sum() for a in u))
            objective.mu = mu  # the mean at the point last evaluated (the chord steps' score)
            return eta, -2.0 * ll + pen, ll, pen

        eta, f, ll, pen = objective(u)
        if not np.isfinite(f):
            u = [np.zeros_like(a) for a in u]
            eta, f, ll, pen = objective(u)
            if not np.isfinite(f):
                raise PIRLSDivergence("the deviance is not finite at the fixed effects (the "
                                      "linear predictor ran off to infinity)")
        decrement = np.inf
        if chord is not None:
            u, eta, f, ll, pen, decrement = self._chord_steps(chord, lams, u, eta, f, ll, pen, objective)
        for it in range(max_iter):
            cp, rows = self._working(eta)
            factor = Factor(self._prepared.reweighted(cp), lams)
            self.n_pirls += 1
            if decrement < tol:
                if self.observed:
                    # the Laplace approximation's curvature: the exact Hessian H
                    cp, rows = self._working(eta, observed=True, rows=rows)
                    factor = Factor(self._prepared.reweighted(cp), lams)
                return _Modes(theta, beta, u, eta, *rows, ll, pen, factor, cp, lams, it)
            zr = [z[0, :, 0, :] for z in cp.zxy]  # Z'r per level (q, m)
            rhs = [(lam.T @ g - a)[:, None, :] for lam, g, a in zip(lams, zr, u)]
            step_factor = factor
            if not self.canonical:
                # a far trial point's non-finite H falls back to scoring
                cp_h = self._newton_products(eta, rows)
                if cp_h is not None:
                    try:
                        step_factor = Factor(self._prepared.reweighted(cp_h), lams)
                    except NotPositiveDefinite:
                        step_factor = factor
            delta = [d[:, 0, :] for d in step_factor.solve(rhs)]
            decrement = float(sum((d * b[:, 0, :]).sum() for d, b in zip(delta, rhs)))
            accepted = _halving_step(u, delta, f, objective, 30)
            if accepted is None:
                raise PIRLSDivergence("step halving failed to reduce the penalised deviance of "
                                      "the conditional modes")
            (u, eta, f, ll, pen), step = accepted
            decrement *= step
            if decrement >= tol:
                # on with the factor just made (linear convergence) while that is fast; a
                # chord that reaches the modes leaves only the factorisation at them
                u, eta, f, ll, pen, chord_decrement = self._chord_steps(
                    step_factor, lams, u, eta, f, ll, pen, objective)
                decrement = min(decrement, chord_decrement) if chord_decrement < _CHORD_TOL else np.inf
        raise PIRLSDivergence(f"the conditional modes did not converge in {max_iter} iterations")

    def _chord_steps(self, chord: Factor, lams: list, u: list, eta, f, ll, pen, objective):
        """Steps ``M_0^{-1} g`` with a nearby evaluation's factor ``M_0`` (``g`` the gradient
        of ``-f / 2`` in ``u``), with step halving, while each cuts the decrement
        ``g'M_0^{-1}g`` by at least ``_CHORD_RATE``.

        Returns the point and, when the decrement at it is below ``_CHORD_TOL`` (the modes
        to ~1e-10 in ``M``'s norm: the gradient in ``theta`` and its differences then as
        exact as after Newton's method), that decrement; otherwise ``inf`` (Newton's method
        goes on from the point).
        """
        previous = np.inf
        logit = self.family.name == "binomial" and self.link.name == "logit"
        for k in range(_CHORD_STEPS):
            # logit: the score y - mu (dmu/deta is the variance) with the mean of the point
            # just accepted (the last one evaluated), as _response would give it
            zr = self._score_products(eta, objective.mu if logit and k else None)
            if zr is None:
                break
            rhs = [(lam.T @ g - a)[:, None, :] for lam, g, a in zip(lams, zr, u)]
            try:
                delta = [d[:, 0, :] for d in chord.solve(rhs)]
            except (NotPositiveDefinite, FloatingPointError, ValueError):
                break
            decrement = float(sum((d * b[:, 0, :]).sum() for d, b in zip(delta, rhs)))
            if not np.isfinite(decrement) or decrement > _CHORD_RATE * previous:
                break
            if decrement < _CHORD_TOL:
                return u, eta, f, ll, pen, decrement
            accepted = _halving_step(u, delta, f, objective, 10)
            if accepted is None:
                break
            (u, eta, f, ll, pen), _ = accepted
            previous = decrement
        return u, eta, f, ll, pen, np.inf

    def modes(self, x: np.ndarray) -> _Modes:
        x = np.asarray(x, dtype=float)
        if self._last is not None and np.array_equal(np.concatenate([self._last.theta, self._last.beta]), x):
            return self._last
        theta, beta = self.split(x)
        base, start = self._start_base(theta, beta)
        try:
            m = self._modes(theta, beta, start, chord=None if base is None else base.factor)
        except (PIRLSDivergence, NotPositiveDefinite):
            if start is None:
                raise
            m = self._modes(theta, beta, None)
        self.n_evaluations += 1
        self._last = m
        if np.isfinite(m.laplace):
            self._base = m
            if self._best is None or m.laplace <= self._best.laplace:
                self._best = m
        return m

    def _start_base(self, theta: np.ndarray, beta: np.ndarray) -> tuple:
        """``(base, start)``: the evaluation PIRLS starts from at ``(theta, beta)`` and the
        modes it predicts there (None, None before any): the last one with a finite
        deviance or, when that is not the lowest so far, whichever of the two predicts
        modes (:meth:`_predicted_modes`) of the lower penalised deviance there.

        After a line search's trial far uphill (a step too long), the next trial lies
        between it and the last iterate: modes extrapolated from the trial were far off
        (at 10^6 rows, users x items, PIRLS then took 26 factorisations instead of 1-2);
        the lower start costs one pass over the rows per candidate, no factorisation. The
        lowest is taken only when its start is lower by more than a deviance unit.
        """
        base, best = self._base, self._best
        if base is None:
            return None, None
        if best is None or best is base:
            return base, self._predicted_modes(base, theta, beta)
        lams = self.terms.lams(theta)
        fixed = self._fixed(beta)

        def penalised(m: _Modes) -> tuple[float, list]:
            u = self._predicted_modes(m, theta, beta)
            try:
                _, _, ll = self._evaluate(fixed, [lam @ a for lam, a in zip(lams, u)])
            except (PIRLSDivergence, FloatingPointError, ValueError):
                return np.inf, u
            f = -2.0 * ll + float(sum((a * a).sum() for a in u))
            return (f if np.isfinite(f) else np.inf), u

        f_best, u_best = penalised(best)
        f_base, u_base = penalised(base)
        # a clear margin (a deviance unit): near-ties keep the last evaluation, so that the
        # path does not hang on rounding (the same fit over chunks takes the same starts)
        margin = 1.0 + 1e-9 * abs(f_base) if np.isfinite(f_base) else 0.0
        return (best, u_best) if f_best < f_base - margin else (base, u_base)

    def _predicted_modes(self, base: _Modes, theta: np.ndarray, beta: np.ndarray) -> list:
        """The modes at ``(theta, beta)`` to first order from those of a nearby evaluation.

        Differentiating ``u = Lambda'Z'r(eta)`` (the modes' equation) gives
        ``M du = dLambda'Z'r - Lambda'Z'H (X dbeta + Z dLambda u)`` with ``M`` the base
        point's factor (``H = W`` for a canonical link; for another link ``M`` is an
        approximation, fine for a start). ``Lambda`` is linear in ``theta``, so ``dLambda``
        is exact. A start this close saves PIRLS about one factorisation per evaluation.
        """
        lams = self.terms.lams(theta)
        d_lams = [a - b for a, b in zip(lams, base.lams)]
        zr = [z[0, :, 0, :] for z in base.cp.zxy]
        zhv = self._shift_products(base, d_lams, beta - base.beta)
        rhs = [(dl.T @ g - lam.T @ h)[:, None, :] for dl, lam, g, h in zip(d_lams, base.lams, zr, zhv)]
        try:
            du = base.factor.solve(rhs)
        except (NotPositiveDefinite, FloatingPointError, ValueError):
            return base.u
        start = [u + d[:, 0, :] for u, d in zip(base.u, du)]
        return start if all(np.all(np.isfinite(a)) for a in start) else base.u

    # ---- the deviance ------------------------------------------------------------------------

    def __call__(self, x: np.ndarray) -> float:
        m = self.modes(x)
        if self.n_agq == 1:
            return m.laplace
        return self._agq(m)

    def _agq(self, m: _Modes) -> float:
        """Adaptive Gauss-Hermite quadrature over each group's scalar effect."""
        if "agq" in m.cache:
            return m.cache["agq"]
        codes, Z = self.factors[0]
        lam = m.lams[0][0, 0]
        Mg = m.factor.prep.diag[0][0, 0] * lam * lam + 1.0  # per level
        sd = 1.0 / np.sqrt(Mg)
        u = m.u[0][0]
        nodes = self._nodes
        shift = (Z[:, 0] * lam * sd[codes])[:, None] * nodes[None, :]  # (n, K)
        eta = m.eta[:, None] + shift
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            mu = self.link.inverse(eta)
            if self.family.name == "binomial" and self.link.name != "logit":
                mu = np.clip(mu, _EPS * 1e-10, 1.0 - _EPS * 1e-10)
            # the mu-free constants cancel in each group's differences
            ll = self.family.log_kernel(self.y[:, None], eta, mu, self.prior[:, None], self.link)
        devc = -2.0 * (self._group_sum @ ll) + (u[:, None] + sd[:, None] * nodes[None, :]) ** 2
        ll0 = self.family.log_kernel(self.y, m.eta, m.mu, self.prior, self.link)
        devc0 = -2.0 * (self._group_sum @ ll0) + u * u
        expo = -0.5 * (devc - devc0[:, None]) + self._log_node_weights[None, :]
        top = expo.max(axis=1)
        log_mult = top + np.log(np.exp(expo - top[:, None]).sum(axis=1))
        value = float(devc0.sum() - 2.0 * self._log_constant + np.log(Mg).sum()
                      - 2.0 * log_mult.sum())
        if not np.isfinite(value):
            value = np.inf
        m.cache["agq"] = value
        return value

    @property
    def analytic_gradient(self) -> bool:
        """Whether :meth:`value_and_grad` differentiates analytically (the Laplace deviance,
        with Fisher weights in ``M`` or with the observed weights of a family that gives
        their slope, :meth:`Family.observed_weight_slope`); otherwise by central differences."""
        return self.n_agq == 1 and (not self.observed or self._observed_slope_known)

    @property
    def _observed_slope_known(self) -> bool:
        probe = np.ones(1)
        return self.family.observed_weight_slope(probe, probe, probe) is not None

    def family_start(self, beta: np.ndarray) -> dict:
        """The family's moment estimates at the fixed effects ``beta`` (its search's start)."""
        with np.errstate(all="ignore"):
            mu0 = self.link.inverse(self.offset + self.X @ beta)
        return self.family.start_values(self.y, mu0, self.prior)

    def set_family_values(self, values: dict) -> None:
        """Set the family's parameters (a new family instance: the old one may be shared by
        another fit's deviance) and forget the modes of the old values."""
        self.family = self.family.with_values(values)
        self.link = self.family.link
        self._log_constant = float(self.family.log_constant(self.y, self.prior).sum())
        self._last, self._base, self._best = None, None, None

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        if not self.analytic_gradient:
            return self(x), self._numeric_gradient(x)
        m = self.modes(x)
        g = m.cache.get("grad")
        if g is None:
            g = self._laplace_gradient(m)
            if g is None:
                g = self._numeric_gradient(x)
            m.cache["grad"] = g
        return m.laplace, g.copy()

    def restore(self, m: _Modes) -> None:
        """Make ``m`` (modes computed earlier, at a point evaluated again next) the last
        evaluation, instead of recomputing them."""
        self._last = m

    def _numeric_gradient(self, x: np.ndarray) -> np.ndarray:
        """Central differences (the AGQ deviance, or a non-canonical link whose ``M_H`` fails)."""
        x = np.asarray(x, dtype=float)
        g = np.empty(x.size)
        lower = self.lower_bounds()
        for j in range(x.size):
            h = 1e-6 * max(1.0, abs(x[j]))
            up, down = x.copy(), x.copy()
            up[j] += h
            if down[j] - h >= lower[j]:
                down[j] -= h
                g[j] = (self(up) - self(down)) / (2.0 * h)
            else:
                g[j] = (self(up) - self(x)) / h
        self.modes(x)
        return g

    # ---- the analytic gradient of the Laplace deviance ---------------------------------

    def _selected_rows(self, m: _Modes, sel: tuple, R: Any = None) -> tuple[list, np.ndarray]:
        """``v_ik = (M^{-1} Lambda' z_i)`` at row i's level of term k, and the leverages h
        (``sel``: the selected inverse of ``M`` with the crossing pairs)."""
        R = R or self
        diag, pairs = sel
        Y = [Z @ lam for (codes, Z), lam in zip(R.factors, m.lams)]  # rows of Lambda' z_i
        V = []
        for k, ((codes, Z), d) in enumerate(zip(R.factors, diag)):
            if Z.shape[1] == 1:
                V.append(d[0, 0, codes][:, None] * Y[k])
            else:
                V.append(np.einsum("abi,ib->ia", d[:, :, codes], Y[k]))
        for j, (k, l) in enumerate(self._pairs_kl):
            S = pairs[j][R._entries[j]]  # (n, q_k, q_l)
            V[k] += np.einsum("iab,ib->ia", S, Y[l])
            V[l] += np.einsum("iab,ia->ib", S, Y[k])
        h = sum((y * v).sum(axis=1) for y, v in zip(Y, V))
        return V, h

    def _gradient_rows(self, m: _Modes, rows: tuple, sel: tuple, R: Any = None) -> tuple:
        """The gradient's per-row parts on rows ``R`` at the modes ``m`` (their
        ``(mu, d1, d2, var, dvar, W, r)``): ``(V, a, H)`` (see the module docstring)."""
        R = R or self
        mu, d1, d2, var, dvar, W, r = rows
        prior, y = R.prior, R.y
        if self.observed:
            # M holds the observed weights H themselves (the modes' Hessian): the slope
            # of log|M| in eta is that of H, and the modes move with H's factor
            dW = self.family.observed_weight_slope(y, mu, prior)
        else:
            ratio = d1 / var  # first, as in PIRLS: var ** 2 underflows where mu is near 0 or 1
            dW = prior * ratio * (2.0 * d2 - ratio * d1 * dvar)
        V, h = self._selected_rows(m, sel, R)
        a = h * dW
        if self.canonical or self.observed:
            H = W
        else:
            H = W - prior * (y - mu) * (d2 * var - d1 * d1 * dvar) / var ** 2
        return V, a, H

    def _gradient_sums(self, m: _Modes, rows: tuple, parts: tuple, s: list,
                       R: Any = None) -> tuple[np.ndarray, list]:
        """``X'(c - 2 r)`` and ``Z_k'F_k`` per term on rows ``R`` (see the module docstring),
        given :meth:`_gradient_rows`'s ``parts`` and ``s = M_H^{-1} Lambda'Z'a``."""
        R = R or self
        W, r = rows[5], rows[6]
        V, a, H = parts
        t = self._z_times([lam @ sk for lam, sk in zip(m.lams, s)], R)
        c = a - H * t
        xg = R.X.T @ (c - 2.0 * r) if self.p else np.zeros(0)
        zg = []
        for k in range(len(self.terms)):
            F = ((c - 2.0 * r)[:, None] * self._per_row(k, m.u[k], R) + 2.0 * W[:, None] * V[k]
                 + r[:, None] * self._per_row(k, s[k], R))
            zg.append(R.factors[k][1].T @ F)
        return xg, zg

    def _gradient_of(self, m: _Modes, xg: np.ndarray, zg: list) -> np.ndarray | None:
        """The gradient from the sums of :meth:`_gradient_sums` (None where not finite)."""
        grad = np.empty(self.n_params)
        grad[self.n_theta:] = xg
        for term, sl, G in zip(self.terms, self.terms.slices, zg):
            rows, cols = term.theta_position
            grad[sl] = G[rows, cols]
        if not np.all(np.isfinite(grad)):
            return None
        return grad

    def _h_factor(self, m: _Modes, cp_h) -> Factor | None:
        """The factor of ``M_H`` (a non-canonical link's observed weights), or None."""
        try:
            factor_h = Factor(self._prepared.reweighted(cp_h), m.lams)
            if not np.isfinite(factor_h.logdet):
                return None
        except (NotPositiveDefinite, FloatingPointError, ValueError):
            return None
        return factor_h

    def _laplace_gradient(self, m: _Modes) -> np.ndarray | None:
        rows = (m.mu, m.d1, m.d2, m.var, m.dvar, m.weights, m.score)
        sel = m.factor.selected_inverse(with_crossing_pairs=True)
        parts = self._gradient_rows(m, rows, sel)
        V, a, H = parts
        factor_h = m.factor
        if not (self.canonical or self.observed):
            factor_h = self._h_factor(m, self.pattern.cross_products(np.zeros(self.n), H))
            if factor_h is None:
                return None
        za = self._zt_times(a)
        s = [x[:, 0, :] for x in factor_h.solve([(lam.T @ g)[:, None, :] for lam, g in zip(m.lams, za)])]
        return self._gradient_of(m, *self._gradient_sums(m, rows, parts, s))

    def beta_information(self, m: _Modes) -> np.ndarray:
        """``2 (X'WX - X'WZ Lambda M^{-1} Lambda'Z'WX)`` at the modes ``m``.

        The Fisher information of the fixed effects with the random effects integrated
        out (Laplace): the ``beta`` block of the deviance's Hessian up to the change of the
        weights with ``beta``; ``2 / it`` is lme4's ``vcov(use.hessian = FALSE)``.
        """
        p = self.p
        cp = self._x_products(m)
        xtwx = cp.xyxy[0][:p, :p]
        if not len(self.terms):
            return 2.0 * xtwx
        w = self._solved_x(m, cp)
        G = np.zeros((p, p))
        for wk in w:
            for wa in wk:
                G += wa @ wa.T
        return 2.0 * (xtwx - G)

    def _solved_x(self, m: _Modes, cp=None) -> list:
        """``L^{-1} Lambda'Z'WX`` per term at the modes ``m`` (``M = LL'``), each (q_k, p, m_k)."""
        if cp is None:
            cp = self._x_products(m)
        p = self.p
        rhs = [np.einsum("ba,bjm->ajm", lam, z[0, :, :p, :]) for lam, z in zip(m.lams, cp.zxy)]
        return m.factor.forward(rhs)

    def prediction_products(self, m: _Modes, seen: list) -> tuple[np.ndarray, np.ndarray]:
        """``r'M^{-1}r`` (n,) and ``X'WZ Lambda M^{-1} r`` (n, p) for new rows at the modes
        ``m`` (``M`` with the Fisher weights; as :meth:`._deviance.Solution.prediction_products`),
        by forward solves in batches."""
        terms = list(self.terms)
        p = self.p
        n = next(s_[1].shape[0] for s_ in seen if s_ is not None)
        w_x = self._solved_x(m)
        size = sum(t.q * t.n_levels for t in terms)
        batch = max(1, 2_000_000 // max(size, 1))
        quad, shift = np.empty(n), np.empty((n, p))
        for start in range(0, n, batch):
            chunk = np.arange(start, min(n, start + batch))
            rhs = []
            for t, s_ in zip(terms, seen):
                block = np.zeros((t.q, chunk.size, t.n_levels))
                if s_ is not None:
                    idx, r = s_
                    ok = idx[chunk] >= 0
                    block[:, np.flatnonzero(ok), idx[chunk][ok]] = r[chunk][ok].T
                rhs.append(block)
            w = m.factor.forward(rhs)
            quad[chunk] = sum(np.einsum("aic,aic->i", wk, wk) for wk in w)
            shift[chunk] = sum(np.einsum("apl,ail->ip", wx, wk) for wx, wk in zip(w_x, w))
        return quad, shift

    # ---- results ----------------------------------------------------------------------------

    def solution(self, x: np.ndarray) -> "GLMMSolution":
        x = np.asarray(x, dtype=float)
        m = self.modes(x)
        theta, beta = self.split(x)
        return GLMMSolution(x.copy(), theta.copy(), beta.copy(), self(x), m,
                            _information=self.beta_information,
                            _products=self.prediction_products)

    def saturated_loglik(self) -> float:
        return float(self.family.saturated_loglik(self.y, self.prior).sum())

    def with_columns(self, columns: np.ndarray) -> "GLMMDeviance":
        """The same model with only the fixed-effects ``columns`` of ``X`` (a nested model)."""
        return GLMMDeviance(self.X[:, columns], self.y, self.prior, self.offset, self.factors,
                            self.terms, self.family, self.link, self.n_agq)


def fit_with_fixed(dev: GLMMDeviance, x0: np.ndarray, fixed: dict) -> tuple[float, np.ndarray]:
    """Minimum of the deviance over the parameters not in ``fixed`` (index -> value; profiles)."""
    idx = np.array(sorted(fixed), dtype=int)
    free = np.setdiff1d(np.arange(dev.n_params), idx)
    base = np.array(x0, dtype=float)
    base[idx] = [fixed[i] for i in idx]

    def fun(z):
        x = base.copy()
        x[free] = z
        try:
            value, grad = dev.value_and_grad(x)
        except (PIRLSDivergence, NotPositiveDefinite):
            return np.inf, np.zeros(z.size)
        return value, grad[free]

    lower = dev.lower_bounds()[free]
    res = optimize.minimize(fun, np.maximum(base[free], lower), jac=True, method="L-BFGS-B",
                            bounds=optimize.Bounds(lower, np.full(free.size, np.inf)),
                            options={"ftol": 1e-12, "gtol": 1e-7, "maxiter": 500})
    x = base.copy()
    x[free] = res.x
    return float(res.fun), x


@dataclass(frozen=True)
class GLMMSolution:
    """The fit at ``x = (theta, beta)``.

    Attributes
    ----------
    deviance : float
        ``-2 log L`` (Laplace or AGQ).
    """

    x: np.ndarray
    theta: np.ndarray
    beta: np.ndarray
    deviance: float
    _modes: _Modes = field(repr=False, compare=False)

    scale: float = 1.0  # a GLMM's dispersion is fixed at 1
    # the deviance's beta_information (the fallback covariance of beta)
    _information: Any = field(default=None, repr=False, compare=False)
    # lme4's vcov from the optimiser's Hessian (with_hessian), when there is one
    _cov: Any = field(default=None, repr=False, compare=False)
    # the deviance's prediction_products
    _products: Any = field(default=None, repr=False, compare=False)

    def prediction_products(self, seen: list) -> tuple[np.ndarray, np.ndarray]:
        """``r'M^{-1}r`` and ``X'WZ Lambda M^{-1} r`` of new rows at the modes (see
        :meth:`GLMMDeviance.prediction_products`)."""
        return self._products(self._modes, seen)

    def with_hessian(self, hessian: np.ndarray | None, at_bound: np.ndarray) -> "GLMMSolution":
        """The solution whose :meth:`cov_beta` is ``2 H^{-1}`` on beta, ``H`` the Hessian of the
        deviance in ``(theta, beta)`` (entries of theta ``at_bound`` held), as lme4's ``vcov``
        (``use.hessian = TRUE``); the fallback when ``H`` is absent or not positive definite."""
        p, nt = self.beta.size, self.theta.size
        if hessian is not None:
            free = np.ones(hessian.shape[0], dtype=bool)
            free[:nt] = ~at_bound
            Hf = hessian[np.ix_(free, free)]
            try:
                inv = linalg.cho_solve(linalg.cho_factor(Hf, check_finite=False),
                                       np.eye(Hf.shape[0]), check_finite=False)
                return dataclasses.replace(self, _cov=2.0 * inv[-p:, -p:] if p else np.zeros((0, 0)))
            except (linalg.LinAlgError, ValueError):
                pass
        return self

    def cov_beta(self) -> np.ndarray:
        """Covariance of beta: lme4's ``vcov`` (:meth:`with_hessian`), else its
        ``use.hessian = FALSE`` form, twice the inverse Fisher information of beta with the
        random effects integrated out (:meth:`GLMMDeviance.beta_information`)."""
        if self._cov is not None:
            return self._cov.copy()
        p = self.beta.size
        if not p:
            return np.zeros((0, 0))
        info_beta = self._information(self._modes)
        try:
            return 2.0 * linalg.cho_solve(linalg.cho_factor(info_beta, check_finite=False), np.eye(p),
                                          check_finite=False)
        except (linalg.LinAlgError, ValueError):
            return np.full((p, p), np.nan)

    @property
    def ratios(self) -> np.ndarray:
        """Residual variance ratios of the strata: a GLMM has none (one, the reference)."""
        return np.ones(1)

    @property
    def lams(self) -> list:
        return self._modes.lams

    @property
    def u(self) -> list:
        return self._modes.u

    @property
    def eta(self) -> np.ndarray:
        return self._modes.eta

    @property
    def mu(self) -> np.ndarray:
        return self._modes.mu

    def blups(self) -> list:
        """Conditional modes of the random effects per term, each (m_k, q_k)."""
        return [(lam @ u).T for lam, u in zip(self.lams, self.u)]

    def cov_re(self) -> list:
        out = []
        for lam in self.lams:
            c = lam @ lam.T
            out.append(0.5 * (c + c.T))
        return out

    def conditional_cov(self) -> list:
        """``L_k (M^{-1})_kk,l L_k'`` per level (lme4's ``condVar``), each (m_k, q_k, q_k)."""
        diag, _ = self._modes.factor.selected_inverse(with_crossing_pairs=False)
        out = []
        for lam, d in zip(self.lams, diag):
            cv = np.einsum("ab,bcm,dc->mad", lam, d, lam)
            out.append(0.5 * (cv + cv.transpose(0, 2, 1)))
        return out


# ---- starting values and the optimiser --------------------------------------------------------


def glm_start(X, y, weights, offset, family: Family, link: Link, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """The GLM without random effects by IRLS: ``beta`` and ``X'WX`` at the fit (lme4's start)."""
    n, p = X.shape
    if family.name == "binomial":
        mu = (weights * y + 0.5) / (weights + 1.0)
    else:
        mu = y + 0.1
    eta = link(mu)
    beta = np.zeros(p)
    xtwx = np.eye(p)
    for _ in range(max_iter):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            mu, d1, _ = link.derivatives(eta)
            var, _ = family.variance(np.clip(mu, 1e-12, 1 - 1e-12) if family.name == "binomial" else mu)
            w = weights * d1 * d1 / np.maximum(var, 1e-300)
            z = eta - offset + (y - mu) / d1
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(z))):
            break
        xtwx = X.T @ (w[:, None] * X)
        try:
            new = linalg.solve(xtwx, X.T @ (w * z), assume_a="pos", check_finite=False)
        except (linalg.LinAlgError, ValueError):
            break
        done = np.max(np.abs(new - beta)) < 1e-10 * (1.0 + np.max(np.abs(new)))
        beta = new
        eta = offset + X @ beta
        if done:
            break
    return beta, xtwx


def _hessian(dev: GLMMDeviance, x: np.ndarray, g: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Hessian of the deviance on the free parameters.

    Laplace: forward differences of the analytic gradient. AGQ (no analytic gradient):
    central second differences of the deviance with steps of 1e-4, whose truncation
    (~1e-8) and rounding (~eps |D| / 1e-8) errors are both small; differences of a
    finite-difference gradient would amplify its rounding error.
    """
    center = dev.modes(x)  # (the point just evaluated) kept, not recomputed, at the end
    if dev.analytic_gradient:
        H = fd_hessian(lambda z: dev.value_and_grad(z)[1], x, g, free, 1e-5, 1.0)
    else:
        H = central_hessian(dev, x, free, dev.lower_bounds())
    dev.restore(center)
    return H


def _safe(dev: GLMMDeviance, x: np.ndarray) -> tuple[float, np.ndarray | None]:
    try:
        value, grad = dev.value_and_grad(x)
    except (PIRLSDivergence, NotPositiveDefinite):
        return np.inf, None
    return (value, grad) if np.isfinite(value) else (np.inf, None)


def _lbfgsb(dev: GLMMDeviance, x0: np.ndarray, max_iter: int, ftol: float = 1e-8):
    """Bounded L-BFGS-B in a basis where the deviance is well scaled.

    With ``H`` the finite-difference Hessian at the start, ``beta = beta0 + T z`` with
    ``T'H_bb T = I`` and each ``theta`` entry divided by ``sqrt(H_tt)`` (a diagonal map
    keeps the bounds on ``theta`` box bounds). Without this scaling L-BFGS-B needs several
    times as many iterations (the fixed effects' scales and the random-effects variances
    differ by orders of magnitude). It stops at a relative change ``ftol``: Newton's
    method (:func:`_newton`) converges faster from there than L-BFGS-B's last iterations.
    """
    nt, p = dev.n_theta, dev.p
    try:
        value, g = dev.value_and_grad(x0)
    except (PIRLSDivergence, NotPositiveDefinite) as err:
        raise PIRLSDivergence(f"at the starting values: {err}") from None
    if not np.isfinite(value):
        raise PIRLSDivergence("the deviance is not finite at the starting values")
    # theta: the diagonal of the Hessian by differences of the gradient; beta: the Fisher
    # information at the modes (one solve instead of p gradients)
    free = np.zeros(x0.size, dtype=bool)
    free[:nt] = True
    H = _hessian(dev, x0, g, free)
    H_beta = dev.beta_information(dev.modes(x0))
    top = max(1.0, np.abs(np.diag(H)[:nt]).max(initial=0.0), np.abs(np.diag(H_beta)).max(initial=0.0))
    d = np.sqrt(np.maximum(np.diag(H)[:nt], 1e-8 * top))
    try:
        T = linalg.solve_triangular(linalg.cholesky(H_beta, lower=True), np.eye(p), lower=True).T
    except (linalg.LinAlgError, ValueError):
        T = np.diag(1.0 / np.sqrt(np.maximum(np.abs(np.diag(H_beta)), 1e-8 * top)))
    beta0 = x0[nt:].copy()
    lower = np.concatenate([dev.terms.lower_bounds(), np.full(p, -np.inf)])
    z, x, value, n_iter, shrink = np.concatenate([x0[:nt] * d, np.zeros(p)]), x0, float(value), 0, 1.0
    # L-BFGS-B treats a failed evaluation (PIRLS breaking down far from the start, where
    # a unit step of the basis lands on nearly separated data) as the end of its search
    # and may return its start as "converged". A run that met a failure is therefore
    # rerun from where it stopped with steps ten times shorter while that helps.
    for _ in range(_LBFGSB_RESTARTS + 1):
        z_new, x_new, nit, limited, failures = _lbfgsb_run(dev, z, beta0, d * shrink, T / shrink,
                                                           lower, max_iter - n_iter, ftol)
        n_iter += nit
        if not failures:
            return x_new, n_iter, limited
        new_value = _safe(dev, x_new)[0]
        progress = new_value < value - ftol * max(1.0, abs(value))
        if new_value <= value:
            z, x, value = z_new, x_new, new_value
        if limited or n_iter >= max_iter:
            break
        if not progress:
            shrink *= 10.0
            z = z * 10.0  # the same point in the basis of shorter steps
    return x, n_iter, limited


# Reruns of L-BFGS-B with shorter steps after a run that met a failed evaluation.
_LBFGSB_RESTARTS = 4


def _lbfgsb_run(dev: GLMMDeviance, z0: np.ndarray, beta0: np.ndarray, d: np.ndarray,
                T: np.ndarray, lower: np.ndarray, max_iter: int, ftol: float):
    """One L-BFGS-B run from ``z0`` in the basis ``theta = z_t / d``, ``beta = beta0 + T z_b``.

    Returns the end in both parametrisations, the iterations, whether the iteration
    limit ended it and how many evaluations failed (PIRLS breaking down, a non-finite
    deviance).
    """
    nt = dev.n_theta
    failures = 0

    def to_x(z):
        return np.concatenate([z[:nt] / d, beta0 + T @ z[nt:]])

    def fun(z):
        nonlocal failures
        value, grad = _safe(dev, to_x(z))
        if grad is None:
            failures += 1
            return np.inf, np.zeros(z.size)
        return value, np.concatenate([grad[:nt] / d, T.T @ grad[nt:]])

    res = optimize.minimize(fun, z0, jac=True, method="L-BFGS-B",
                            bounds=optimize.Bounds(lower, np.full(lower.size, np.inf)),
                            options={"maxiter": max(max_iter, 1), "ftol": ftol, "gtol": 1e-6,
                                     "maxcor": 20})
    return res.x, to_x(res.x), int(res.nit), res.status == 1, failures


def _newton(dev: GLMMDeviance, x: np.ndarray, max_steps: int = 8,
            approximation: GLMMDeviance | None = None):
    """Newton steps with one finite-difference Hessian; lme4's convergence measure.

    With ``approximation`` (the Laplace deviance of an AGQ fit) the steps use its Hessian,
    cheap with the analytic gradient and close to the AGQ one, and the AGQ Hessian is
    computed once, at the end. Returns the point, its Hessian (recomputed if the point
    moved), the scaled gradient ``max |H^{-1} g|`` on the free parameters and whether
    ``H`` is positive definite.
    """
    lower = dev.lower_bounds()
    value, g = _safe(dev, x)
    if g is None:
        return x, None, np.inf, False
    free = ~(np.isfinite(lower) & (x <= lower))
    if approximation is not None:
        g_approx = _safe(approximation, x)[1]
        H = None if g_approx is None else _hessian(approximation, x, g_approx, free)
    if approximation is None or H is None:
        H = _hessian(dev, x, g, free)
        approximation = None
    x_h = x.copy()
    tol = 1e-10 if approximation is None else 1e-7

    def value_and_grad(z: np.ndarray) -> tuple[float, np.ndarray | None]:
        return _safe(dev, z)  # (inf, None) where PIRLS breaks down: never accepted

    # one Hessian for every step (computed above), the steps projected onto the bounds
    res = minimize(value_and_grad, lambda z, g: H, x,
                   lambda it, f, decrement, newton: (float(np.max(np.abs(newton))) if newton.size else 0.0) < tol,
                   max_iter=max_steps, start=(value, g), held=lambda z, g: np.isfinite(lower) & (z <= lower),
                   project=lambda z: np.maximum(z, lower), armijo=0.0, slack=1e-13, max_trials=8)
    x, value, g = res.x, res.value, res.grad
    scaled, pos_def = res.scaled, res.pos_def
    if approximation is not None or np.max(np.abs(x - x_h)) > 1e-3:
        free = ~(np.isfinite(lower) & (x <= lower))
        H = _hessian(dev, x, g, free)
        try:
            step = solve_pd(H[np.ix_(free, free)], g[free])
            scaled, pos_def = float(np.max(np.abs(step))) if step.size else 0.0, True
        except (linalg.LinAlgError, ValueError):
            pos_def = False
    dev.modes(x)
    return x, H, scaled, pos_def


# Values of a variance parameter on its bound (theta_k = 0) probed for a lower deviance
# (0.01: the deviance is even there, so a minimum at t lies below the bound's value only
# between 0 and about 1.4 t; one at 0.03 was missed with 0.05 the smallest probe).
_BOUND_PROBES = (0.01, 0.05, 0.2, 0.5)


def _off_bound(dev: GLMMDeviance, x: np.ndarray) -> np.ndarray | None:
    """A point off the variance bounds where the deviance is lower than at ``x``, or None.

    On its bound ``theta_k = 0`` the Laplace deviance is even in ``theta_k``, so its
    gradient there is 0 whether 0 is a minimum along ``theta_k`` or a maximum: a gradient
    method that reaches the bound stops there even when the deviance falls off it (seen
    on simulated cbpp responses: 0 chosen where ``theta = 0.22`` is 0.6 lower; lme4's
    derivative-free optimiser does not stop there). Each entry on its bound is probed at
    a few positive values, the other parameters held. With the diagonal entry of a column
    of ``L`` at 0 the deviance depends on the rest of that column only up to its sign,
    and only one sign can be left by raising the diagonal: both are probed (the linear
    model's :func:`._optimize._escape_start`; on a simulated ``(x | g)`` design the other
    sign was 0.1 lower).
    """
    lower = dev.lower_bounds()
    at = np.flatnonzero(np.isfinite(lower) & (x <= lower))
    if not at.size:
        return None
    f0 = _safe(dev, x)[0]
    if not np.isfinite(f0):
        return None
    center = dev.modes(x)
    below = _columns_below(dev)
    best, best_x = f0 - 1e-8 * max(1.0, abs(f0)), None
    for k in at:
        column = below[k]
        for sign in (1.0, -1.0) if column.size and np.any(x[column] != 0) else (1.0,):
            for h in _BOUND_PROBES:
                trial = x.copy()
                trial[column] *= sign
                trial[k] = lower[k] + h
                try:
                    value = dev(trial)
                except (PIRLSDivergence, NotPositiveDefinite):
                    continue
                if value < best:
                    best, best_x = value, trial
    dev.restore(center)
    return best_x


# The other starts (:func:`_other_starts`) screened: this many, those of lowest deviance;
# each gets _SCREEN_ITER L-BFGS-B iterations and must be below the first search's deviance
# by then to be searched on.
_SCREENED_STARTS = 4
_SCREEN_ITER = 8


def _other_starts(dev: GLMMDeviance) -> list[np.ndarray]:
    """``theta`` of the other starts: the linear model's (:func:`._optimize._extra_starts`)
    for the problems it calls small, if some term is a vector (a slope).

    Unlike the linear model's, these starts run no batched kernel: each costs a search with
    PIRLS inside. With scalar terms only none is run: on 60 simulated small crossed
    binomial designs ``(1 | g1) + (1 | g2)`` the fit from lme4's start alone was never
    above a brute force from these starts, while with a correlated slope (``(x | g)``,
    binomial and Poisson, and ``(x | g1) + (1 | g2)``, Poisson) 36 of 166 were, by up to
    13.9 deviance units.
    """
    if not _is_small(dev) or all(term.q == 1 for term in dev.terms):
        return []
    return [start[:dev.n_theta] for start in _extra_starts(dev)]


def _from_other_starts(dev: GLMMDeviance, x: np.ndarray, max_iter: int, ftol: float
                       ) -> tuple[np.ndarray | None, int, bool]:
    """A lower minimum than ``x``'s from the other starts (:func:`_other_starts`), or None.

    The starts (each its ``theta`` with ``x``'s ``beta``) are ranked by their deviance (a
    PIRLS each); the ``_SCREENED_STARTS`` lowest get ``_SCREEN_ITER`` iterations of
    :func:`_lbfgsb`, and one that has gone below ``x``'s deviance by then is searched on to
    convergence. (A search from every start cost 10 to 40 times the first search on small
    ``(x | g)`` designs, PIRLS taking many iterations far from the optimum. Of the 36
    designs of :func:`_other_starts` where the first search stopped above the brute force,
    34 now reach it; on 29 of them a search from every start did as well as these four
    but for one.) Returns the lowest point (None without one), the iterations spent and
    whether its search reached ``max_iter``.
    """
    starts = _other_starts(dev)
    if not starts:
        return None, 0, False
    best = _safe(dev, x)[0]
    if not np.isfinite(best):
        return None, 0, False
    center = dev.modes(x)
    points = [np.concatenate([theta, x[dev.n_theta:]]) for theta in starts]
    values = []
    for point in points:
        try:
            values.append(dev(point))
        except (PIRLSDivergence, NotPositiveDefinite):
            values.append(np.inf)
    dev.restore(center)
    margin = 1e-10 * max(1.0, abs(best))
    found, n_iter = None, 0
    for k in np.argsort(values, kind="stable")[:_SCREENED_STARTS]:
        if not np.isfinite(values[k]):
            break
        try:
            z, nit, limited = _lbfgsb(dev, points[k], _SCREEN_ITER, ftol)
            n_iter += nit
            value = _safe(dev, z)[0]
            if not value < best - margin:
                continue
            if limited:  # leads below the first answer: search on
                z, nit, limited = _lbfgsb(dev, z, max_iter, ftol)
                n_iter += nit
                value = _safe(dev, z)[0]
        except (PIRLSDivergence, NotPositiveDefinite):  # breaks down here: not a candidate
            continue
        if value < best - margin:
            best, found = value, (z, limited)
    if found is None:
        # the first answer goes on from its own modes, not the last start's (PIRLS is warm
        # started from the last modes: the settling would otherwise depend on the starts)
        dev.restore(center)
        return None, n_iter, False
    return found[0], n_iter, found[1]


def fit_glmm(dev: GLMMDeviance, x0: np.ndarray, max_iter: int = 1000, ftol: float = 1e-8,
             multistart: bool = True) -> tuple[GLMMSolution, OptimizerInfo]:
    """Minimise the deviance over ``(theta, beta)`` and the family's free parameter (the
    deviance's family is then set to its estimate). See :func:`_fit_theta_beta` and
    :func:`_fit_family`. ``multistart``: also the other starts of small problems
    (:func:`_other_starts`). Refits to simulated responses (the bootstrap's refitter) keep
    them, unlike the linear model's: from the generating parameters they lowered 3 of 100
    refits of small ``(x | g)`` designs."""
    if dev.family.free:
        return _fit_family(dev, x0, max_iter, ftol, multistart)
    return _fit_theta_beta(dev, x0, max_iter, ftol, multistart)


# Range of the log of a family's parameter searched (theta of the negative binomial:
# 1e-4 is a variance 1e4 mu^2, 1e7 the Poisson model to seven digits).
_LOG_FAMILY_RANGE = (np.log(1e-4), np.log(1e7))


def _search_family(dev: GLMMDeviance, x0: np.ndarray, inner, s0: float | None = None,
                   width: float = 0.5) -> tuple[float, Any, Any]:
    """Minimise over ``s = log phi`` (``phi`` the family's free parameter) the profile
    ``P(s)`` given by ``inner(dev, x) -> (value, x, payload)``, the deviance minimised over
    the other parameters at ``phi`` (warm started from the last answer).

    By the envelope theorem ``P'(s)`` is the deviance's partial derivative in ``s`` at the
    inner optimum: a central difference at fixed ``x`` (two PIRLS solves, no refit). The
    search brackets the root of the slope from ``s0`` (default: the moment estimate at
    ``x0``'s fixed effects) with steps from ``width`` on, then closes the bracket by
    secant steps: fewer refits than Brent's search on the values alone, which stays the
    fallback where a slope is not finite. Returns the best ``s`` (the
    deviance's family is left there), its ``(value, x, payload)`` and a record of the
    search (``success``, ``nit``, ``nfev``, ``message``).
    """
    (name,) = dev.family.free  # the families have one parameter each
    lo, hi = _LOG_FAMILY_RANGE
    x0 = np.asarray(x0, dtype=float)
    if s0 is None:
        s0 = np.log(dev.family_start(x0[dev.n_theta:])[name])
    s0 = float(np.clip(s0, lo + 1.0, hi - 1.0))
    state = {"x": x0}
    fits: dict = {}

    def profile(s: float) -> float:
        s_in = float(np.clip(s, lo, hi))
        if s_in not in fits:
            dev.set_family_values({name: np.exp(s_in)})
            try:
                value, x, payload = inner(dev, state["x"])
            except (PIRLSDivergence, NotPositiveDefinite):
                fits[s_in] = (np.inf, None, None)
            else:
                fits[s_in] = (value, x, payload)
                if np.isfinite(value):
                    state["x"] = x
        # outside the range: the value at its end, rising (Brent steps back in)
        return fits[s_in][0] + (s - s_in) ** 2

    def slope(s: float) -> float:
        value, x, _ = fits[s]
        if x is None or not np.isfinite(value):
            return np.nan
        ends = []
        try:
            for t in (s + _SLOPE_STEP, s - _SLOPE_STEP):
                dev.set_family_values({name: np.exp(t)})
                ends.append(dev(x))
        except (PIRLSDivergence, NotPositiveDefinite):
            return np.nan
        finally:
            dev.set_family_values({name: np.exp(s)})
        return (ends[0] - ends[1]) / (2.0 * _SLOPE_STEP)

    result = _root_of_slope(profile, slope, s0, width, lo, hi)
    if result is None:  # a slope was not finite: Brent's search on the values
        res = optimize.minimize_scalar(profile, bracket=(s0 - width, s0 + width), method="brent",
                                       tol=1e-7, options={"maxiter": 100})
        result = optimize.OptimizeResult(success=bool(res.success), nit=int(res.nit),
                                         message=str(res.message))
    best = min(fits, key=lambda k: fits[k][0])
    if fits[best][1] is None:
        raise PIRLSDivergence(f"no value of the family's {name} gave a finite deviance")
    dev.set_family_values({name: np.exp(best)})
    result.nfev = len(fits)
    return best, fits[best], result


# Step in log phi of the central difference of the deviance (truncation ~1e-8 P''',
# rounding ~eps |D| / 1e-4), and the width of the bracket that ends the search.
_SLOPE_STEP = 1e-4
_SEARCH_XTOL = 1e-7


def _root_of_slope(profile, slope, s0: float, width: float, lo: float, hi: float):
    """The minimum of a smooth profile on ``[lo, hi]`` where its slope changes sign:
    growing steps downhill from ``s0`` until the slope turns (or the range ends), then
    secant steps kept inside the bracket. None when a slope is not finite."""
    def at(s):
        s = float(np.clip(s, lo, hi))
        profile(s)
        return s, slope(s)

    a, ga = at(s0)
    if not np.isfinite(ga):
        return None
    step = -np.sign(ga) * width
    nit = 0
    while ga != 0.0:
        nit += 1
        b, gb = at(a + step)
        if not np.isfinite(gb):
            return None
        if np.sign(gb) != np.sign(ga):
            break
        if b in (lo, hi):  # the profile falls to the end of the range
            return optimize.OptimizeResult(success=True, nit=nit, message="at the end of the range")
        curvature = (gb - ga) / (b - a)
        a, ga = b, gb
        # past the secant's root where the slope rises towards 0 (at least the last
        # step, at most four times it), else four times the last step
        guess = -gb / curvature if curvature > 0 else np.inf
        step = np.sign(step) * min(max(abs(guess) * 1.5, abs(step)), 4.0 * abs(step))
        if nit > 60:
            return optimize.OptimizeResult(success=False, nit=nit, message="the slope does not change sign")
    else:
        return optimize.OptimizeResult(success=True, nit=nit, message="zero slope")
    # the bracket [a, b] (slopes of opposite signs); secant steps through the two latest
    # points while they land inside it (superlinear), else the bracket's midpoint
    last, g_last = a, ga
    while abs(b - a) > _SEARCH_XTOL and nit < 100:
        nit += 1
        c = b - gb * (b - last) / (gb - g_last) if gb != g_last else np.nan
        if not (min(a, b) < c < max(a, b)):
            c = 0.5 * (a + b)
        elif abs(c - b) <= _SEARCH_XTOL:
            break  # the secant's step is below the tolerance: b is the root
        c, gc = at(c)
        if not np.isfinite(gc):
            return None
        if gc == 0.0:
            break
        last, g_last = b, gb
        if np.sign(gc) == np.sign(gb):
            b, gb = c, gc
        else:
            a, ga, b, gb = b, gb, c, gc
        if abs(c - last) <= _SEARCH_XTOL:
            break
    return optimize.OptimizeResult(success=True, nit=nit, message="converged")


def _fit_family(dev: GLMMDeviance, x0: np.ndarray, max_iter: int, ftol: float,
                multistart: bool = True) -> tuple[GLMMSolution, OptimizerInfo]:
    """The joint optimum over ``(theta, beta, log phi)``, ``phi`` the family's free parameter.

    The deviance minimised over ``(theta, beta)`` at fixed ``phi`` (a full fit, warm
    started from the last) is minimised over ``log phi`` by Brent's method
    (:func:`_search_family`): at the minimum of this profile the gradient in all
    parameters is 0, so it is the joint optimum (glmmTMB's; glmer.nb alternates between
    theta and a glmer fit to the same end). The covariance of beta is then lme4's
    ``2 H^{-1}`` with the Hessian ``H`` in all parameters, phi included (as TMB's
    ``sdreport``), by :func:`_joint_hessian`.
    """
    (name,) = dev.family.free
    lo, hi = _LOG_FAMILY_RANGE

    def inner(dev, x):
        # every point of the profile the same way (warm started from the last answer, no
        # other starts): a profile whose first point alone had them is not one function,
        # and its search stopped short of its own maximum (a small (x | g) NB design)
        sol, info = _fit_theta_beta(dev, x, max_iter, ftol, False)
        return sol.deviance, sol.x, (sol, info)

    best, (value, _, (sol, info)), res = _search_family(dev, x0, inner)
    if multistart:
        # the other starts at the estimate of phi; a lower minimum there is another basin
        # of the profile, searched again from it
        lower, _, _ = _from_other_starts(dev, sol.x, max_iter, ftol)
        if lower is not None:
            again = _search_family(dev, lower, inner, s0=best, width=0.05)
            if again[1][0] < value:
                best, (value, _, (sol, info)), res = again
            else:
                dev.set_family_values({name: np.exp(best)})
    with single_threaded_blas():
        sol = dev.solution(sol.x)
        H = _joint_hessian(dev, sol.x, name, best, info.at_bound)
    sol = sol.with_hessian(H, info.at_bound)
    at_edge = best <= lo or best >= hi
    converged = bool(info.converged and res.success and not at_edge)
    message = info.message
    if at_edge:
        message = (f"the family's {name} is at the end of its range ({np.exp(best):.3g}): "
                   "the model may not fit this family (e.g. no overdispersion)")
    elif not res.success:
        message = f"the search for the family's {name} did not converge: {res.message}"
    n_fev = info.n_fev + int(res.nfev)
    return sol, dataclasses.replace(info, converged=converged, message=message,
                                    n_iter=info.n_iter + int(res.nit), n_fev=n_fev)


def fit_with_fixed_family(dev: GLMMDeviance, x0: np.ndarray, fixed: dict) -> tuple[float, np.ndarray]:
    """:func:`fit_with_fixed` with the family's free parameter re-estimated as well (the
    profile of a negative binomial or Gamma GLMM); ``dev``'s family is left at its
    estimate for the held values."""
    if not dev.family.free:
        return fit_with_fixed(dev, x0, fixed)

    def inner(dev, x):
        value, x = fit_with_fixed(dev, x, fixed)
        return value, x, None

    # along a profile the family's estimate moves little from the fit's: start there
    (name,) = dev.family.free
    _, (value, x, _), _ = _search_family(dev, x0, inner, s0=np.log(dev.family.values[name]), width=0.05)
    return value, x


def _joint_hessian(dev: GLMMDeviance, x: np.ndarray, name: str, s: float,
                   at_bound: np.ndarray) -> np.ndarray:
    """Hessian of the deviance in ``(theta, log phi, beta)`` (this order: beta last, as
    :meth:`GLMMSolution.with_hessian` reads it; entries of theta on their bound left 0).

    With the analytic gradient in ``x = (theta, beta)``: the ``x`` block by forward
    differences of it (:func:`_hessian`), the cross terms by central differences of it in
    ``log phi`` and the ``log phi`` entry by a central second difference of the deviance,
    all with steps 1e-4 in ``log phi`` (truncation ~1e-8, rounding ~eps |D| / 1e-8).
    Without it, central second differences of the deviance in every pair.
    """
    nt = dev.n_theta
    k = x.size + 1
    free = np.ones(k, dtype=bool)
    free[:nt] = ~at_bound
    h = 1e-4 * max(1.0, abs(s))
    H = np.zeros((k, k))
    xs = np.r_[0:nt, nt + 1:k]  # positions of x in the joint order
    if dev.analytic_gradient:
        f0, g0 = dev.value_and_grad(x)
        H[np.ix_(xs, xs)] = _hessian(dev, x, g0, free[xs])
        dev.set_family_values({name: np.exp(s + h)})
        f_up, g_up = dev.value_and_grad(x)
        dev.set_family_values({name: np.exp(s - h)})
        f_down, g_down = dev.value_and_grad(x)
        cross = (g_up - g_down) / (2.0 * h)
        cross[:nt][at_bound] = 0.0
        H[xs, nt] = H[nt, xs] = cross
        H[nt, nt] = (f_up - 2.0 * f0 + f_down) / h ** 2
    else:
        z0 = np.concatenate([x[:nt], [s], x[nt:]])

        def f(z):
            dev.set_family_values({name: np.exp(z[nt])})
            return dev(np.concatenate([z[:nt], z[nt + 1:]]))

        lower = np.concatenate([dev.terms.lower_bounds(), [-np.inf], np.full(dev.p, -np.inf)])
        H = central_hessian(f, z0, free, lower)
    dev.set_family_values({name: np.exp(s)})
    dev.modes(x)
    return H


def _settle(dev: GLMMDeviance, laplace: GLMMDeviance, x: np.ndarray, n_iter: int, limited: bool,
            max_iter: int, ftol: float):
    """From a search's end ``x``: the escape from the variance bounds (:func:`_off_bound`,
    on the Laplace deviance), then Newton steps on ``dev`` (:func:`_newton`; with AGQ
    from the Laplace Hessian, and a search on the AGQ deviance first where that Hessian is
    not positive definite). Returns ``x``, its Hessian, the scaled gradient, whether the
    Hessian is positive definite, the iterations so far and whether a search reached
    ``max_iter``."""
    escape = _off_bound(laplace, x)
    if escape is not None:
        x_esc, more, limited_esc = _lbfgsb(laplace, escape, max_iter, ftol)
        n_iter += more
        if _safe(laplace, x_esc)[0] < _safe(laplace, x)[0]:
            x, limited = x_esc, limited_esc
    x, H, scaled, pos_def = _newton(dev, x, approximation=laplace if laplace is not dev else None)
    if not pos_def and dev.n_agq > 1:  # far from the Laplace optimum: search first
        x, more, limited = _lbfgsb(dev, x, max_iter)
        n_iter += more
        x, H, scaled, pos_def = _newton(dev, x)
    return x, H, scaled, pos_def, n_iter, limited


def _fit_theta_beta(dev: GLMMDeviance, x0: np.ndarray, max_iter: int = 1000, ftol: float = 1e-8,
                    multistart: bool = True) -> tuple[GLMMSolution, OptimizerInfo]:
    """Minimise the deviance over ``(theta, beta)`` (BLAS on one thread).

    Laplace: bounded L-BFGS-B with the analytic gradient in a basis scaled by the
    Hessian at the start (:func:`_lbfgsb`). AGQ: the same Laplace fit first (lme4 also
    starts its quadrature from a cheaper fit). Then (:func:`_settle`), as for the Laplace
    fit, Newton steps with a Hessian from differences of the gradient (central differences
    of the AGQ deviance), which also give lme4's convergence check: the gradient scaled by
    the inverse Hessian on the parameters off their bounds. A fit that ends with a
    variance on its bound restarts from a lower point off it if there is one
    (:func:`_off_bound`). With ``multistart``, the other starts of small problems
    (:func:`_from_other_starts`) are tried after the first search; a lower minimum found
    from one is settled the same way, and kept if it is still lower.
    """
    from ._threads import single_threaded_blas

    x0 = np.asarray(x0, dtype=float)
    with single_threaded_blas():
        laplace = dev if dev.n_agq == 1 else dev.with_nodes(1)
        x, n_iter, limited = _lbfgsb(laplace, x0, max_iter, ftol)
        x_other, more, limited_other = (_from_other_starts(laplace, x, max_iter, ftol)
                                        if multistart and not limited else (None, 0, False))
        settled = _settle(dev, laplace, x, n_iter + more, limited, max_iter, ftol)
        if x_other is not None:
            # Both ends settled, the other start's kept only if lower by more than rounding:
            # one that went below the first search's unpolished end may have found the same
            # minimum (from inside, where the first landed exactly on a bound).
            moved = _settle(dev, laplace, x_other, settled[4], limited_other, max_iter, ftol)
            first = _safe(dev, settled[0])[0]
            if _safe(dev, moved[0])[0] < first - 1e-10 * max(1.0, abs(first)):
                settled = moved
            else:
                settled = settled[:4] + (moved[4], settled[5])
        x, H, scaled, pos_def, n_iter, limited = settled
        sol = dev.solution(x)
    lower = dev.lower_bounds()
    at_bound = (np.isfinite(lower) & (x <= lower))[:dev.n_theta]
    sol = sol.with_hessian(H, at_bound)
    converged = bool(not limited and pos_def and scaled < SCALED_GRADIENT_TOL)
    if converged:
        message = "converged"
    elif limited:
        message = f"iteration limit reached ({max_iter})"
    elif not pos_def:
        message = "the Hessian is not positive definite at the optimum"
    else:
        message = f"scaled gradient {scaled:.2g} above {SCALED_GRADIENT_TOL}"
    n_fev = dev.n_evaluations + (laplace.n_evaluations if laplace is not dev else 0)
    return sol, OptimizerInfo(converged, message, n_iter, n_fev, scaled, at_bound, H)
