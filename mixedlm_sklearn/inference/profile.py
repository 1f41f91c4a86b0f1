"""Profile-likelihood intervals (lme4's ``profile`` and ``confint``).

Bates et al. (2015, JSS 67(1), sec. 5.1): parameters on lme4's scale, per random-effects
term the standard deviations and correlations, then ``sigma``, then (residual strata) the
ratio of each stratum's residual standard deviation to the reference's, then the fixed
effects. For a parameter ``psi``, ``zeta(psi) = sign(psi - psi_hat) sqrt(dev(psi) -
dev_min)`` with ``dev(psi)`` the deviance minimised over all other parameters; the bounds
solve ``|zeta| = z_{1-alpha/2}`` (root finding, not read off a grid). As in lme4, REML
fits are profiled on the *maximum-likelihood* deviance by default (``profile.merMod``
refits with ML first, its ``devfun2``; the shared references confirm it: lme4's REML and
ML sleepstudy intervals agree to 2e-6 relative).

``criterion="reml"`` profiles the REML criterion instead (a fit by ML is refitted by REML
first). The difference: the REML criterion accounts for the degrees of freedom the fixed
effects use (it is the likelihood of the residual contrasts, Patterson & Thompson 1971),
so its profiles of the variance parameters sit where the REML estimates are and are
wider for small samples; the ML profiles centre on the ML estimates, which are biased
towards 0 (``sigma^2`` by the factor ``(n - p) / n``). The REML criterion does not
depend on the fixed effects (they are integrated out), so only the variance parameters
have REML profiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, optimize, stats

from .._basis import Conditioned, lower_factor
from .._deviance import MAX_LOG_RATIO
from .._factor import NotPositiveDefinite
from .._terms import theta_from_lambda
from .._table import ResultTable, format_real, percent_headings
from .._threads import single_threaded_blas
from .summary import summary
from ._parameters import (
    check_alpha,
    deviance_at_sigma,
    fitted_model,
    ratio_names,
    theta_to_sdcor,
)
from ._protocol import require

__all__ = ["profile", "conf_int"]

_INNER_FTOL = 1e-11
_INNER_GTOL = 1e-6
# |zeta - target| accepted at a bound: 1e-6 of a standard error, far below the 1% goal.
_ROOT_ZTOL = 1e-6
# A minimum from the other starts lower than the neighbours' by more than this at an
# endpoint means another branch of the profile; below it the endpoint moves by at most
# 1e-6 / (2 * 1.96) in zeta, a quarter of _ROOT_ZTOL.
_BRANCH_DTOL = 1e-6


class _Profiler:
    """Profiles of lme4's parameters on the ML deviance of a fit.

    Parameters are ``psi = (sd/cor of each term, sigma, delta, beta)``, ``delta`` the
    residual standard-deviation ratios of the non-reference strata (``sigma`` is then the
    reference stratum's). Every profile point minimises the deviance over everything but
    ``psi_k``, in the whitened basis's ``x = (theta, eta)`` (:mod:`.._basis`), where the
    problem is well conditioned and every point is a valid model, with ``psi_k`` imposed
    exactly on each trial point (:meth:`_impose`):

    - ``sigma = s``: ``x`` is free, the deviance at ``sigma`` fixed is
      :func:`~._parameters.deviance_at_sigma`.
    - a standard deviation ``sd_j = s``: ``x`` is free and ``sigma = s / |a_j|``, ``a_j``
      the row of ``Lambda`` in lme4's basis that gives ``sd_j = sigma |a_j|``.
    - a correlation ``cor_ij = r``: row ``a_i`` of ``Lambda`` is turned, keeping its
      length and the direction of its part orthogonal to ``a_j``, to ``|a_i| (r a_j/|a_j|
      + sqrt(1 - r^2) w)``; sigma is profiled out. Every trial point is a covariance matrix
      with that correlation; in the correlations themselves a third correlation's range
      shrinks to a point as one approaches +-1, a wall a minimiser stops at.
    - a ratio ``delta_s``: ``eta_s = log delta_s`` fixed, the rest free, sigma profiled.
    - a fixed effect ``beta_j = b``: the penalised RSS is quadratic in beta with Hessian
      ``A``, so minimising over the other fixed effects adds ``c = (b - beta_j)^2 /
      A^{-1}_jj`` to ``r2``; minimising over sigma then gives ``D(x) + dof log(1 + c/r2)``.

    Each point is minimised by L-BFGS-B from the nearest points already computed
    (extrapolated along the profile); without residual strata with analytic gradients
    (:meth:`_value_and_gradient`) in variables preconditioned by the Hessian at the
    estimate (:attr:`_precondition`). The points of the profile curves are also
    minimised from the estimate and the boundary starts, keeping the lowest minimum; an
    interval's endpoint is found from the neighbours alone and then confirmed from those
    starts (:meth:`bound`).
    """

    def __init__(self, est: Any, criterion: str = "ml") -> None:
        if criterion not in ("ml", "reml"):
            raise ValueError(f"criterion must be 'ml' or 'reml', got {criterion!r}")
        model = require(fitted_model(est), "profile")
        self.terms = model.terms
        reml = criterion == "reml"
        profiled = model if model.reml == reml else model.refit(reml=reml)
        self.dev, sol = profiled.profile_deviance()
        # evaluated in the whitened basis: profiles reach variances far from the estimate,
        # where lme4's basis of uncentred slopes loses every digit
        self.conditioned = Conditioned(self.dev)
        sigma = float(np.sqrt(sol.scale))
        sdcor = theta_to_sdcor(sol.theta, sigma, self.terms)
        self.n_sdcor = sdcor.size
        delta = np.sqrt(sol.ratios[1:])
        self.n_var = sdcor.size + 1 + delta.size
        # the REML criterion does not depend on the fixed effects: they have no REML profile
        fixed = [] if reml else list(model.fe_names)
        self.names = self.terms.param_names() + ["sigma"] + ratio_names(model) + fixed
        self.dropped = [] if model.rank is None else model.rank.dropped_names
        self.all_fixed = list(model.fe_names) if model.rank is None else list(model.rank.names)
        self.reml = reml
        self._fe_names = list(model.fe_names if model.rank is None else model.rank.names)
        if reml:
            self.all_fixed = []
        self.estimate = np.concatenate([sdcor, [sigma], delta, sol.beta if not reml else []])
        self.dev_min = sol.deviance
        kinds = [("sd" if r == c else "cor") for t in self.terms for r, c in zip(*t.theta_position)]
        self.kinds = kinds + ["sigma"] + ["ratio"] * delta.size + ["beta"] * len(fixed)
        # per sd/cor: its term, and its row and column in the term's Lambda
        self.position = [(i, r, c) for i, t in enumerate(self.terms) for r, c in zip(*t.theta_position)]
        inf = np.inf
        limits = {"sd": (0.0, inf), "cor": (-1.0, 1.0), "sigma": (0.0, inf), "ratio": (0.0, inf),
                  "beta": (-inf, inf)}
        self.lower = np.array([limits[k][0] for k in self.kinds])
        self.upper = np.array([limits[k][1] for k in self.kinds])
        # the minimisation's variables, whitened x = (theta, eta), and their scales (so that
        # finite-difference steps mean the same thing for every term: theta is relative to
        # sigma, around 1e4 for a very high intra-class correlation)
        self.n_theta = self.terms.n_theta
        basis = self.conditioned.basis
        # x = (theta, eta[, a residual structure's parameters, e.g. a correlation's])
        self.x_hat = self._canonical(basis.from_original(np.concatenate(
            [sol.theta, np.log(delta), sol.x[self.n_theta + delta.size:]])))
        self.x_scale = np.ones(self.x_hat.size)
        for sl in self.terms.slices:
            self.x_scale[sl] = max(float(np.abs(self.x_hat[sl]).max(initial=0.0)), 0.1)
        n_eta = self.x_hat.size - self.n_theta
        n_other = n_eta - delta.size
        # theta is unbounded (Lambda and -Lambda are the same model: no bound to stop at);
        # the residual structure's parameters keep the deviance's own bounds
        self.x_lower = np.concatenate([np.full(self.n_theta, -inf), np.full(delta.size, -MAX_LOG_RATIO),
                                       self.dev.lower_bounds()[self.x_hat.size - n_other:]])
        self.x_upper = np.concatenate([np.full(self.n_theta, inf), np.full(delta.size, MAX_LOG_RATIO),
                                       self.dev.upper_bounds()[self.x_hat.size - n_other:]])
        var_est, var_kinds = self.estimate[: self.n_var], self.kinds[: self.n_var]
        se_beta = np.sqrt(np.diag(sol.cov_beta()))
        # first steps of the root search
        first_step = {"cor": lambda v: 0.3, "sigma": lambda v: 0.1 * v, "ratio": lambda v: 0.1 * v,
                      "sd": lambda v: 0.5 * v if v > 0 else 0.5 * sigma}
        self.step = np.concatenate([[first_step[k](v) for v, k in zip(var_est, var_kinds)],
                                    2.0 * se_beta[:len(fixed)]])
        self._warm: dict[int, list[tuple[float, np.ndarray]]] = {}
        self._zeta: dict[tuple[int, float], float] = {}
        self._zeta_fast: dict[tuple[int, float], float] = {}
        self._dev_at: dict[tuple[tuple[int, float], bool], float] = {}
        # Analytic gradients of the constrained deviances (no residual strata): the fixed
        # effects reported are ``L b + c`` of the whitened deviance's own ``b`` (the
        # origin's and the basis's affine maps); a step of the reported ones is ``L^{-1}``
        # of it in the deviance's coordinates.
        # (the exact deviance's; the matrix-free one of solver='iterative' has finite differences)
        self.analytic = n_eta == 0 and hasattr(self.conditioned.white, "gradient_with_r2")
        if self.analytic and not reml and len(fixed):
            white = self.conditioned.white
            origin = white.cp.origin
            ratio = self.conditioned.sy / self.conditioned.sx

            def reported(b):
                return (b if origin is None else origin.beta(b)) * ratio

            p = ratio.size
            zero = reported(np.zeros(p))
            L = np.column_stack([reported(e) - zero for e in np.eye(p)])
            self._beta_back = np.linalg.inv(L)

    # ---- the constrained deviance ---------------------------------------------------------

    def _canonical(self, x: np.ndarray) -> np.ndarray:
        """The same model with each ``Lambda`` lower triangular with a non-negative diagonal."""
        x = x.copy()
        for t, sl in zip(self.terms, self.terms.slices):
            lam = t.lam(x[sl])
            x[sl] = theta_from_lambda(np.abs(lam) if t.diagonal else lower_factor(lam), t.diagonal)
        return x

    def _set_row(self, x: np.ndarray, term: int, row: int, new: np.ndarray, old: np.ndarray) -> None:
        """Replace row ``row`` of the term's ``Lambda`` in lme4's basis (``old``) by ``new``."""
        t, sl, P = self.terms[term], self.terms.slices[term], self.conditioned.basis.P[term]
        e = np.zeros(t.q)
        e[row] = 1.0
        lam = t.lam(x[sl]) + np.outer(np.linalg.solve(P, e), new - old)
        x[sl] = theta_from_lambda(np.diag(np.abs(np.diag(lam))) if t.diagonal else lower_factor(lam),
                                  t.diagonal)

    def _impose(self, k: int, value: float, x: np.ndarray) -> tuple[np.ndarray, float | None] | None:
        """``(x, sigma)`` with parameter ``k`` at ``value`` (sigma None: profiled out), the
        point nearest ``x`` in the sense of the class docstring; None if there is none."""
        kind = self.kinds[k]
        if kind == "sigma":
            return x, value
        if kind == "ratio":
            x = x.copy()
            x[self.n_theta + k - self.n_sdcor - 1] = np.log(value)
            return x, None
        if kind == "beta":
            return x, None
        term, r, c = self.position[k]
        t, sl = self.terms[term], self.terms.slices[term]
        A = self.conditioned.basis.P[term] @ t.lam(x[sl])  # Lambda in lme4's basis, up to a rotation
        norms = np.sqrt(np.einsum("ij,ij->i", A, A))
        if kind == "sd":
            if value == 0.0:  # the row is 0: sigma is free again
                x = x.copy()
                self._set_row(x, term, r, np.zeros(t.q), A[r])
                return x, None
            return (x, value / norms[r]) if norms[r] > 0 else None
        if norms[r] == 0 or norms[c] == 0:  # the correlation is undefined (reported as 0)
            return x, None
        unit_c = A[c] / norms[c]
        w = A[r] - (A[r] @ unit_c) * unit_c
        if np.linalg.norm(w) <= 1e-12 * norms[r]:  # a_r along a_j: any orthogonal direction
            w = np.eye(t.q)[np.argmin(np.abs(unit_c))]
            w -= (w @ unit_c) * unit_c
        w /= np.linalg.norm(w)
        x = x.copy()
        self._set_row(x, term, r, norms[r] * (value * unit_c + np.sqrt(max(1.0 - value**2, 0.0)) * w), A[r])
        return x, None

    def _deviance(self, k: int, value: float, x: np.ndarray) -> tuple[float, np.ndarray]:
        """The deviance with parameter ``k`` at ``value``, and the point (imposed) it is at."""
        imposed = self._impose(k, value, x)
        if imposed is None:
            return self.dev_min + 1e10, x
        x, sigma = imposed
        try:
            ev = self.conditioned.evaluate_white(x)
        except NotPositiveDefinite:  # a trial point beyond what double precision holds
            return self.dev_min + 1e10, x
        dof = self.dev.dof
        if sigma is not None:
            return deviance_at_sigma(ev, dof, sigma), x
        if self.kinds[k] == "beta":
            j = k - self.n_var
            excess = (value - ev.beta[j]) ** 2 / ev.a_inv[j, j]
            return ev.deviance + dof * np.log1p(excess / ev.r2), x
        return ev.deviance, x

    def _has_gradient(self, k: int, value: float) -> bool:
        """Whether :meth:`_value_and_gradient` covers parameter ``k`` at ``value``: the
        scale, a standard deviation off 0 and a fixed effect (whose constraint leaves
        ``x`` as it is), without residual strata."""
        kind = self.kinds[k]
        return bool(self.analytic and (kind in ("sigma", "beta", "cor") or (kind == "sd" and value > 0)))

    def _value_and_gradient(self, k: int, value: float, x: np.ndarray) -> tuple[float, np.ndarray]:
        """:meth:`_deviance` and its gradient in ``x`` (analytic; see :meth:`_has_gradient`).

        With sigma held the deviance is ``c(x) + dof log sigma^2 + r2(x) / sigma^2``: its
        gradient is the profiled deviance's plus ``dr2 (1/sigma^2 - dof/r2)``. A standard
        deviation held adds the chain through ``sigma = s / |a_j(x)|``. A fixed effect held
        replaces ``r2`` by the penalised RSS at the constrained fixed effects, ``r2 + c``,
        whose gradient is that of ``r2`` at those fixed effects (envelope theorem).
        """
        white, cond = self.conditioned.white, self.conditioned
        try:
            ev = cond.evaluate_white(x)
        except NotPositiveDefinite:
            return self.dev_min + 1e10, np.zeros(x.size)
        dof, kind, sy2 = self.dev.dof, self.kinds[k], cond.sy**2
        if kind == "beta":
            j = k - self.n_var
            t = value - ev.beta[j]
            excess = t * t / ev.a_inv[j, j]
            step = (t / ev.a_inv[j, j]) * (self._beta_back @ ev.a_inv[:, j])
            grad, dr2 = white.gradient_with_r2(x, [np.zeros(step.size), step])
            r2w = ev.r2 / sy2
            grad = grad + dof * (dr2[1] / (r2w + excess / sy2) - dr2[0] / r2w)
            return ev.deviance + dof * np.log1p(excess / ev.r2), grad
        if kind == "cor":
            return self._cor_value_and_gradient(k, value, x)
        grad, dr2 = white.gradient_with_r2(x)
        if kind == "sigma":
            sigma = value
        else:  # sd: sigma = s / |a_j|
            term, r, _ = self.position[k]
            t, sl, P = self.terms[term], self.terms.slices[term], self.conditioned.basis.P[term]
            a = (P @ t.lam(x[sl]))[r]
            norm = float(np.sqrt(a @ a))
            if norm == 0.0:
                return self.dev_min + 1e10, np.zeros(x.size)
            sigma = value / norm
        grad = grad + sy2 * dr2[0] * (1.0 / sigma**2 - dof / ev.r2)
        if kind == "sd":
            rows, cols = t.theta_position
            d_norm = a[cols] * P[r, rows] / norm
            d_sigma = 2.0 * dof / sigma - 2.0 * ev.r2 / sigma**3
            grad[sl] -= d_sigma * (sigma / norm) * d_norm
        return deviance_at_sigma(ev, dof, sigma), grad

    def _cor_value_and_gradient(self, k: int, value: float, x: np.ndarray) -> tuple[float, np.ndarray]:
        """A correlation held: the deviance at the rotated factor of :meth:`_impose` and its
        gradient in ``x``.

        The rotation gives a full factor ``N(x)`` of the term in the whitened basis;
        ``lower_factor`` writes it ``N = T S Q'`` (QR of ``N'``, ``S`` the signs), and the
        deviance's derivatives in every entry of ``T`` (:meth:`~mixedlm_sklearn._deviance.
        Deviance.gradient_in_lambda`) times ``S Q'`` are those in ``N``. ``N(x)`` is
        smooth and explicit: its Jacobian comes from complex steps (exact to rounding).
        """
        imposed = self._impose(k, value, x)
        if imposed is None:
            return self.dev_min + 1e10, np.zeros(x.size)
        xi = imposed[0]
        white = self.conditioned.white
        try:
            dev = self.conditioned.evaluate_white(xi).deviance
        except NotPositiveDefinite:
            return self.dev_min + 1e10, np.zeros(x.size)
        grad, full = white.gradient_in_lambda(xi)
        if xi is x:  # the correlation is undefined here (a zero row): nothing was rotated
            return dev, grad
        term = self.position[k][0]
        sl = self.terms.slices[term]
        jac = self._rotation_jacobian(k, value, x)
        if jac is None:  # a row along the other: _impose turns it in a direction of its own
            return dev, self._numeric_gradient(k, value, x)
        N = jac[1]
        q_, r_ = linalg.qr(N.T)
        signs = np.where(np.diag(r_) < 0, -1.0, 1.0)
        G = full[term] @ (signs[:, None] * q_.T)
        grad[sl] = np.einsum("nab,ab->n", jac[0], G)
        return dev, grad

    def _rotation_jacobian(self, k: int, value: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The derivatives of the rotated factor ``N`` of :meth:`_impose` (a correlation
        held) in the term's entries of ``x`` (complex steps, one per entry, at once), and
        ``N``; None where the rotated row lies along the other."""
        term, r, c = self.position[k]
        t, sl, P = self.terms[term], self.terms.slices[term], self.conditioned.basis.P[term]
        rows, cols = t.theta_position
        n, h = sl.stop - sl.start, 1e-30
        L = np.zeros((n + 1, t.q, t.q), dtype=complex)
        L[:, rows, cols] = x[sl]
        L[np.arange(n), rows, cols] += 1j * h  # the last one unperturbed: N itself
        A = P @ L
        a_r, a_c = A[:, r], A[:, c]
        norm_r = np.sqrt(np.sum(a_r * a_r, axis=1))
        unit_c = a_c / np.sqrt(np.sum(a_c * a_c, axis=1))[:, None]
        w = a_r - np.sum(a_r * unit_c, axis=1)[:, None] * unit_c
        w_norm = np.sqrt(np.sum(w * w, axis=1))
        new = norm_r[:, None] * value * unit_c
        if abs(value) < 1.0:  # at +-1 the row is along the other whatever w is
            if w_norm[-1].real <= 1e-12 * norm_r[-1].real:
                return None
            new += norm_r[:, None] * np.sqrt(1.0 - value**2) * w / w_norm[:, None]
        e = linalg.solve(P, np.eye(t.q)[r])
        N = L + e[None, :, None] * (new - a_r)[:, None, :]
        return N[:n].imag / h, N[n].real

    def _numeric_gradient(self, k: int, value: float, x: np.ndarray) -> np.ndarray:
        """Central differences of :meth:`_deviance` in ``x``."""
        out = np.zeros(x.size)
        for i in range(x.size):
            h = 1e-6 * self.x_scale[i]
            up, down = x.copy(), x.copy()
            up[i] += h
            down[i] -= h
            out[i] = (self._deviance(k, value, up)[0] - self._deviance(k, value, down)[0]) / (2.0 * h)
        return out

    def _boundary_starts(self, k: int) -> list[np.ndarray]:
        """The estimate with one row of the parameter's term's ``Lambda`` shrunk towards 0.

        A standard deviation or correlation pinned far from its estimate can be cheapest
        with another effect's variance at (nearly) 0, where the correlation no longer
        matters: a second minimum, separated from the one the neighbours lead to (the
        correlation of Orthodont's slopes profiles flat to -1 along it).
        """
        if self.kinds[k] not in ("sd", "cor"):
            return []
        term = self.position[k][0]
        t, sl = self.terms[term], self.terms.slices[term]
        if t.q == 1:
            return []
        A = self.conditioned.basis.P[term] @ t.lam(self.x_hat[sl])
        starts = []
        for row in range(t.q):
            x = self.x_hat.copy()
            self._set_row(x, term, row, 1e-3 * A[row], A[row])
            starts.append(x)
        return starts

    def profiled_deviance(self, k: int, value: float, thorough: bool = True) -> float:
        """Minimum of the deviance over everything else, with parameter ``k`` at ``value``.

        From the nearest points already computed (extrapolated along the profile); when
        ``thorough``, also from the estimate and the boundary starts, keeping the lower
        minimum. The endpoints of an interval are found without them and confirmed with
        them (:meth:`bound`).
        """
        warm = self._warm.setdefault(k, [(self.estimate[k], self.x_hat)])
        near = sorted(warm, key=lambda item: abs(item[0] - value))[:2]
        starts = [near[0][1].copy()]
        if len(near) == 2 and near[0][0] != near[1][0]:
            # The optimum moves smoothly along a profile: extrapolate from the two nearest points.
            (c1, v1), (c2, v2) = near
            starts = [v1 + (value - c1) / (c1 - c2) * (v1 - v2)]
        if thorough:
            starts += self._other_starts(k, skip_estimate=np.array_equal(near[0][1], self.x_hat))
        best_value, best_x = self._minimise(k, value, starts)
        warm.append((value, best_x))
        return best_value

    def _other_starts(self, k: int, skip_estimate: bool = False) -> list[np.ndarray]:
        """The starts besides the neighbours: the estimate (where the profile turns, a
        correlation nearing +-1, the neighbours' optimum can lie on a branch that no
        longer holds the minimum) and the boundary starts."""
        return ([] if skip_estimate else [self.x_hat.copy()]) + self._boundary_starts(k)

    def _minimise(self, k: int, value: float, starts: list[np.ndarray]) -> tuple[float, np.ndarray]:
        """The lowest of the local minima from ``starts`` with parameter ``k`` at ``value``
        (L-BFGS-B; analytic gradients where :meth:`_has_gradient`), and where it is."""
        free = np.ones(self.x_hat.size, dtype=bool)
        if self.kinds[k] == "ratio":
            free[self.n_theta + k - self.n_sdcor - 1] = False
        best_value, best_x = np.inf, self.x_hat
        analytic = self._has_gradient(k, value)
        scale = self.x_scale[free]
        if analytic and self._precondition is not None:
            return self._minimise_preconditioned(k, value, starts)
        for start in starts:
            # The deviance is even in Lambda, so Lambda = 0 is a stationary point that a
            # gradient method never leaves, even where the minimum has moved inside
            # (profiling the mean of a singular fit): start zero diagonals off it.
            for t, sl in zip(self.terms, self.terms.slices):
                diag = np.flatnonzero(np.equal(*t.theta_position)) + sl.start
                start[diag] = np.where(start[diag] == 0.0, 0.1 * self.x_scale[diag], start[diag])
            start = np.clip(start, self.x_lower, self.x_upper)
            x = start.copy()

            def objective(z):
                x[free] = z * scale
                if analytic:
                    f, g = self._value_and_gradient(k, value, x)
                    return f, g[free] * scale
                return self._deviance(k, value, x)[0]

            res = optimize.minimize(
                objective, start[free] / scale, method="L-BFGS-B", jac=analytic,
                bounds=optimize.Bounds(self.x_lower[free] / scale, self.x_upper[free] / scale),
                options={"ftol": _INNER_FTOL, "gtol": _INNER_GTOL, "maxiter": 1000},
            )
            if res.fun < best_value:
                x[free] = res.x * scale
                best_value, best_x = float(res.fun), self._canonical(self._deviance(k, value, x)[1])
        return best_value, best_x

    @property
    def _precondition(self) -> np.ndarray | None:
        """``M = H^{-1/2}`` of the Hessian ``H`` of the profiled deviance at the estimate
        (central differences of its gradient; eigenvalues made positive, at least 1e-8 of
        the largest): the constrained searches run in ``z``, ``x = x_hat + M z``, where a
        quasi-Newton method starts with the curvature about right. None with strata
        (their bounds are not boxes in ``z``)."""
        if not hasattr(self, "_M"):
            self._M = None
            if self.analytic and self.x_hat.size:  # (no random effects: nothing to search)
                white, x0 = self.conditioned.white, self.x_hat
                n = x0.size
                H = np.empty((n, n))
                for i in range(n):
                    h = 1e-5 * self.x_scale[i]
                    up, down = x0.copy(), x0.copy()
                    up[i] += h
                    down[i] -= h
                    H[i] = (white.value_and_grad(up)[1] - white.value_and_grad(down)[1]) / (2.0 * h)
                vals, vecs = np.linalg.eigh(0.5 * (H + H.T))
                vals = np.maximum(np.abs(vals), 1e-8 * np.abs(vals).max(initial=0.0))
                if np.all(np.isfinite(vals)) and vals.max() > 0:
                    self._M = (vecs / np.sqrt(vals)) @ vecs.T
        return self._M

    def _minimise_preconditioned(self, k: int, value: float, starts: list[np.ndarray]
                                 ) -> tuple[float, np.ndarray]:
        """:meth:`_minimise` in the preconditioned variables of :attr:`_precondition`."""
        M = self._precondition
        M_inv = np.linalg.inv(M)
        best_value, best_x = np.inf, self.x_hat
        for start in starts:
            for t, sl in zip(self.terms, self.terms.slices):
                diag = np.flatnonzero(np.equal(*t.theta_position)) + sl.start
                start[diag] = np.where(start[diag] == 0.0, 0.1 * self.x_scale[diag], start[diag])

            def objective(z):
                f, g = self._value_and_gradient(k, value, self.x_hat + M @ z)
                return f, M.T @ g

            res = optimize.minimize(objective, M_inv @ (start - self.x_hat), method="L-BFGS-B",
                                    jac=True, options={"ftol": _INNER_FTOL, "gtol": _INNER_GTOL,
                                                       "maxiter": 1000})
            if res.fun < best_value:
                x = self.x_hat + M @ res.x
                best_value, best_x = float(res.fun), self._canonical(self._deviance(k, value, x)[1])
        return best_value, best_x

    def zeta(self, k: int, value: float, thorough: bool = True) -> float:
        """Signed square root of the deviance increase with parameter ``k`` at ``value``
        (``thorough``: see :meth:`profiled_deviance`)."""
        key = (k, float(value))
        cache = self._zeta if thorough else self._zeta_fast
        if key not in cache:
            dev = self.dev_min
            if value != self.estimate[k]:
                dev = self.profiled_deviance(k, value, thorough)
            excess = max(dev - self.dev_min, 0.0)
            cache[key] = float(np.sign(value - self.estimate[k]) * np.sqrt(excess))
            self._dev_at[key, thorough] = dev
        return cache[key]

    def bound(self, k: int, z: float, side: int) -> float:
        """Where ``zeta = side * z``, or the parameter's limit if zeta stays short of it.

        Found first from the neighbours alone (each point a warm-started local search);
        then the other starts (:meth:`_other_starts`) are run at that endpoint. When they
        find a lower minimum there (another branch of the profile), the bound is searched
        again with every point from every start.
        """
        try:
            x = self._bound(k, z, side, thorough=False)
        except RuntimeError:
            x = None
        if x is not None and self._confirmed(k, x):
            return x
        self._warm.pop(k, None)  # neighbours on the wrong branch
        return self._bound(k, z, side, thorough=True)

    def _confirmed(self, k: int, value: float) -> bool:
        """Whether the other starts find no lower minimum at ``value`` than the neighbours did."""
        key = (k, float(value))
        if (key, False) not in self._dev_at or value == self.estimate[k]:
            return True
        if key in self._zeta:
            return self._dev_at[key, True] >= self._dev_at[key, False] - _BRANCH_DTOL
        found = self._dev_at[key, False]
        other, _ = self._minimise(k, value, self._other_starts(k))
        at_limit = value in (self.lower[k], self.upper[k])
        if other < found - _BRANCH_DTOL and not at_limit:
            return False
        # (at the parameter's limit zeta stayed short of the cutoff; a lower minimum
        # there leaves it shorter still: the limit is the bound either way)
        # both are the profile here (to within the tolerance): the lower one is kept
        dev = min(found, other)
        self._zeta[key] = float(np.sign(value - self.estimate[k]) * np.sqrt(max(dev - self.dev_min, 0.0)))
        self._dev_at[key, True] = dev
        return True

    def _bound(self, k: int, z: float, side: int, thorough: bool) -> float:
        est = self.estimate[k]
        limit = self.lower[k] if side < 0 else self.upper[k]
        if est == limit:  # e.g. a variance estimated as exactly 0
            return float(limit)
        # A limit of 0 for sigma is never reached (the deviance diverges); for a standard
        # deviation it is a real value of the parameter whose zeta decides the bound.
        open_limit = self.kinds[k] in ("sigma", "ratio") and side < 0
        target = side * z
        inner, z_inner = est, 0.0
        x = est + side * self.step[k]
        for _ in range(100):
            if side * (x - limit) >= 0:
                x = 0.5 * (inner + limit) if open_limit else limit
            zx = self.zeta(k, x, thorough)
            if side * zx >= z:
                return self._root(k, target, inner, z_inner, x, zx, thorough)
            if x == limit:
                return float(limit)
            # Secant toward the target with a small overshoot (to bracket the root in one
            # step where zeta is nearly linear), at most 4x the distance from the estimate.
            slope = (zx - z_inner) / (x - inner)
            jump = abs((target - zx) / slope) * 1.2 if slope > 0 else np.inf
            inner, z_inner = x, zx
            x = x + side * min(jump, 4.0 * abs(x - est))
        raise RuntimeError(f"the profile of {self.names[k]} does not reach |zeta| = {z:g}")

    def _root(self, k: int, target: float, a: float, za: float, b: float, zb: float,
              thorough: bool = True) -> float:
        """``zeta(k, x) = target`` in the bracket ``[a, b]``: safeguarded secant.

        zeta is close to linear, so secant steps through the two latest points converge
        in two or three evaluations; a step that would leave the bracket is replaced by
        regula falsi on the bracket (Illinois variant, which keeps it shrinking).
        """
        fa, fb = za - target, zb - target
        last = [(a, fa), (b, fb)]
        x = b
        for _ in range(100):
            (x1, f1), (x2, f2) = last
            x = x2 - f2 * (x2 - x1) / (f2 - f1) if f2 != f1 else np.nan
            if not min(a, b) < x < max(a, b):
                x = b - fb * (b - a) / (fb - fa)
            fx = self.zeta(k, x, thorough) - target
            if abs(fx) < _ROOT_ZTOL or abs(b - a) <= 1e-12 * abs(x):
                break
            if fx * fb < 0:
                a, fa = b, fb
            else:
                fa *= 0.5
            b, fb = x, fx
            last = [last[1], (x, fx)]
        return float(x)

    def indices(self, which: Any) -> list[int]:
        if which is None:
            return list(range(len(self.names)))
        if isinstance(which, str):
            if which == "variance":
                return list(range(self.n_var))
            which = [which]
        if self.reml:
            fixed = [w for w in which if w == "fixed" or w in self._fe_names]
            if fixed:
                raise ValueError(f"the REML criterion does not depend on the fixed effects "
                                 f"({fixed}: they are integrated out); profile them with "
                                 "criterion='ml'")
        if which == ["fixed"]:
            return list(range(self.n_var, len(self.names)))
        dropped = [w for w in which if w in self.dropped]
        if dropped:
            raise ValueError(f"fixed effect(s) {dropped} were dropped from the fit as aliased "
                             "(rank-deficient X): they have no profile")
        unknown = [w for w in which if w not in self.names]
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; the parameters are {self.names}")
        return [self.names.index(w) for w in which]

    def requested(self, which: Any) -> list[str]:
        """The parameter names ``which`` asks for, dropped (aliased) fixed effects included."""
        fixed = self.all_fixed
        if self.reml and which is not None:
            self.indices(which)  # refuses fixed effects, which have no REML profile
        if which is None:
            return self.names[: self.n_var] + fixed
        if isinstance(which, str):
            return (self.names[: self.n_var] if which == "variance" else fixed if which == "fixed"
                    else [which])
        return list(which)




def profile(est: Any, which: Any = None, alpha_max: float = 0.01, n_points: int = 21,
            criterion: str = "ml") -> pd.DataFrame:
    """Profile zeta of lme4's parameters: the data behind the profile intervals.

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted linear mixed model.
    which : None, str or list of str, default=None
        Parameter names as in :func:`conf_int` (``"sd_(Intercept)|Subject"``, ``"sigma"``,
        fixed-effect names), or ``"variance"`` / ``"fixed"``; default all.
    alpha_max : float, default=0.01
        The grid of each parameter spans ``|zeta| <= z_{1 - alpha_max/2}`` (or up to the
        parameter's limit: 0 for a standard deviation, +-1 for a correlation).
    n_points : int, default=21
        Points per parameter, equally spaced on each side of the estimate (which is one).
    criterion : {"ml", "reml"}, default="ml"
        The deviance profiled: the ML deviance (lme4's ``profile``, also for REML fits) or
        the REML criterion (variance parameters only; see the module docstring).

    Returns
    -------
    DataFrame
        Columns ``param``, ``value``, ``zeta`` (signed square root of the deviance increase;
        0 at the ML estimate, increasing in ``value``), rows sorted by value per parameter.

    Raises
    ------
    NotImplementedError
        For a heteroscedastic fit without its per-stratum statistics (see :func:`conf_int`).

    See Also
    --------
    mixedlm_sklearn.inference.conf_int : The intervals where zeta reaches the normal quantiles.
    mixedlm_sklearn.plotting.profile_zeta : Plot the profiles.

    Notes
    -----
    REML fits are profiled on the ML deviance, as lme4 does, unless ``criterion="reml"``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> est.profile(which=["sigma"], n_points=5).round(3)
       param   value   zeta
    0  sigma  22.149 -2.576
    1  sigma  23.870 -1.210
    2  sigma  25.592  0.000
    3  sigma  27.810  1.373
    4  sigma  30.028  2.576
    """
    z_max = stats.norm.ppf(1.0 - check_alpha(alpha_max) / 2.0)
    if n_points < 3:
        raise ValueError(f"n_points must be at least 3, got {n_points}")
    rows = []
    with single_threaded_blas():
        prof = _Profiler(est, criterion)
        for k in prof.indices(which):
            est_k = prof.estimate[k]
            lo, hi = prof.bound(k, z_max, -1), prof.bound(k, z_max, +1)
            half = n_points // 2
            below = np.linspace(est_k, lo, half + 1)[1:] if lo < est_k else np.empty(0)
            above = np.linspace(est_k, hi, n_points - half)[1:] if hi > est_k else np.empty(0)
            # Outward from the estimate, so each point warm-starts from its neighbour.
            values = np.concatenate([[est_k], below, above])
            zetas = [prof.zeta(k, v) for v in values]
            order = np.argsort(values)
            rows.extend((prof.names[k], values[i], zetas[i]) for i in order)
    return pd.DataFrame(rows, columns=["param", "value", "zeta"])


def _held_parameters(model) -> list[tuple[str, int]]:
    """Names and indices in ``x = (theta, beta)`` of the parameters a held refit can vary alone:
    the standard deviation of a scalar or diagonal term's effect (its theta entry) and each
    fixed effect."""
    out = []
    for term, sl in zip(model.terms, model.terms.slices):
        if term.q == 1 or term.diagonal:
            for j, name in enumerate(term.param_names()):
                out.append((name, sl.start + j))
    out.extend((name, model.n_theta + j) for j, name in enumerate(model.fe_names))
    return out


def _held_bound(model, index: int, side: int, target: float, d_min: float) -> float:
    """The value of parameter ``index`` on ``side`` where the deviance, refitted with
    ``x[index]`` held, rises by ``target``."""
    dev = model.deviance
    x_hat = model.x
    center = x_hat[index]
    lower = dev.lower_bounds()[index]
    cache = {}

    def rise(v: float) -> float:
        if v not in cache:
            start = cache.get("start", x_hat)
            refit = model.refit(x0=start, fixed={index: v})
            value = float(refit.solution.deviance) if refit.info.converged else np.inf
            cache[v] = value - d_min
            if np.isfinite(value):
                cache["start"] = refit.x
        return cache[v]

    se = np.sqrt(max(2.0 / max(model.info.hessian[index, index], 1e-12), 1e-12)) \
        if model.info.hessian is not None else max(abs(center), 1.0)
    step = se * np.sqrt(target)
    a, b = center, center + side * step
    for _ in range(30):
        if side < 0 and b <= lower:
            b = lower
            if rise(b) < target:
                return lower  # the interval reaches the bound (a variance of 0)
            break
        if rise(b) >= target:
            break
        a, b = b, b + side * step
        step *= 1.6
    else:
        return np.inf * side
    lo, hi = (b, a) if side < 0 else (a, b)
    return float(optimize.brentq(lambda v: rise(v) - target, lo, hi, xtol=1e-6 * max(se, 1e-8)))


def _held_conf_int(model, alpha: float, which: Any) -> pd.DataFrame:
    """Profile intervals of a model without a profiled deviance (a GLMM, whose ``x =
    (theta, beta)`` holds the fixed effects): each bound is where the deviance, refitted with
    one entry of ``x`` held (:meth:`~mixedlm_sklearn._model.FittedModel.refit`), rises by
    the chi-square quantile (lme4's ``profile`` of a ``glmer`` fit). Only the standard
    deviations of scalar or diagonal terms and the fixed effects can be held one by one."""
    available = _held_parameters(model)
    names = [n for n, _ in available]
    if which is None:
        chosen = available
    else:
        which = [which] if isinstance(which, str) else list(which)
        unknown = [w for w in which if w not in names]
        if unknown:
            raise ValueError(f"cannot profile {unknown}; the parameters that can be profiled are "
                             f"{names} (correlated random effects are not profiled one by one)")
        chosen = [(n, i) for n, i in available if n in which]
    target = float(stats.chi2.ppf(1.0 - alpha, 1))
    d_min = float(model.solution.deviance)
    rows = {}
    with single_threaded_blas():
        for name, index in chosen:
            rows[name] = (_held_bound(model, index, -1, target, d_min),
                          _held_bound(model, index, +1, target, d_min))
            model.deviance.modes(model.x)  # leave the deviance's modes at the estimate
    return pd.DataFrame(rows, index=["lower", "upper"]).T


def interval_table(frame: pd.DataFrame, alpha: float, title: str, notes: list[str]) -> ResultTable:
    """Intervals (columns ``lower``, ``upper``) as a table printed as R's ``confint``
    (R's percent headings), under ``title`` at the confidence level, with ``notes``."""
    level = format_real([100.0 * (1.0 - alpha)], 7)[0]
    return ResultTable(frame, title=f"{title}, {level}% level", notes=notes, layout="frame",
                       headings=percent_headings(alpha))


def conf_int(est: Any, alpha: float = 0.05, method: str = "wald", which: Any = None,
             ddf: str | None = None, criterion: str = "ml", *, n_boot: int = 1000,
             boot_type: str = "percentile", random_state: Any = None,
             n_jobs: int | None = None) -> ResultTable:
    """Confidence intervals: Wald, profile likelihood or parametric bootstrap.

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        A fitted mixed model.
    alpha : float, default=0.05
        One minus the confidence level.
    method : {"wald", "profile", "boot"}, default="wald"
        ``"wald"``: fixed effects, ``estimate -+ z_{1-alpha/2} * std_error`` (lme4's
        ``confint(method = "Wald")``). ``"profile"``: profile-likelihood intervals of the
        variance parameters on lme4's scale, then of the fixed effects (lme4's
        ``confint(method = "profile")``). ``"boot"``: parametric bootstrap intervals of
        the same parameters (lme4's ``confint(method = "boot")``; see
        :func:`~mixedlm_sklearn.inference.bootstrap`).
    which : None, str or list of str, default=None
        Profile and boot: parameter names, or ``"variance"`` / ``"fixed"``; default all.
    ddf : {None, "satterthwaite", "kenward-roger"}, default=None
        Wald only: None for normal quantiles (lme4); otherwise ``estimate -+ t_{df} SE``
        with Satterthwaite's df, or with Kenward-Roger's adjusted SE and df (lmerTest's
        ``confint`` of its summary).
    criterion : {"ml", "reml"}, default="ml"
        Profile only: see :func:`~mixedlm_sklearn.inference.profile`.
    n_boot : int, default=1000
        Boot only: number of replicates.
    boot_type : {"percentile", "basic", "normal"}, default="percentile"
        Boot only: the interval type (lme4's ``boot.type``).
    random_state : None, int or numpy Generator, default=None
        Boot only: seed.
    n_jobs : int, optional
        Boot only: worker processes.

    Returns
    -------
    ResultTable
        A DataFrame with columns ``lower`` and ``upper``, indexed by parameter name,
        printed as R prints ``confint`` (bounds headed ``2.5 %`` / ``97.5 %``) under a
        title naming the method and level, with notes saying how the bounds were found
        (normal or t quantiles and whose df; profile criterion; bootstrap type and
        replicates). Profile names follow
        lme4: per random-effects term (grouping factors in the order of the fit)
        ``sd_<effect>|<group>`` and ``cor_<effect1>.<effect2>|<group>`` (the covariance's
        lower triangle column by column), then ``sigma``, then the fixed effects. A
        heteroscedastic fit adds, after ``sigma`` (the reference stratum's residual
        standard deviation), the ratio of each other stratum's to it,
        ``sigma_<stratum>/sigma_<reference>`` (nlme's ``varIdent`` parameters).
        A GLMM (no ``sigma``) profiles the standard deviations of its scalar or diagonal
        terms and its fixed effects, each bound where the deviance refitted with that
        parameter held rises by the chi-square quantile (lme4's ``profile`` of a ``glmer``
        fit); correlated terms are not profiled one by one.

    Raises
    ------
    NotImplementedError
        ``method="profile"`` on a heteroscedastic fit that does not keep its per-stratum
        statistics: the profiles must be minimised over the variance ratios too.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.conf_int : The same, as a method.
    mixedlm_sklearn.inference.profile : The profiles behind the profile intervals.
    mixedlm_sklearn.inference.bootstrap : The replicates behind the bootstrap intervals.

    Notes
    -----
    Profile intervals of REML fits use the ML deviance, as lme4 does. A standard
    deviation whose profile does not reach the cutoff before 0 (always the case for an
    estimate of exactly 0) has the lower bound 0; a correlation likewise -1 or 1.
    Wald intervals use the covariance of the fixed effects at the estimates (for a
    heteroscedastic fit, at the estimated variance ratios, as nlme's ``intervals``).
    With correlated residuals, ``method="profile", which=["Phi"]`` (``"range"``,
    ``"Rho"``) profiles the correlation parameter on the fit's own criterion (REML or
    ML), the variance components re-optimised at each value; the other parameters'
    profiles (as lme4's, on the ML deviance by default) re-estimate the correlation at
    every point (it is a coordinate of the minimised deviance: rows with at most 16
    distinct time gaps or group sizes).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> print(est.conf_int().round(2))
    Wald confidence intervals, 95% level
                 2.5 % 97.5 %
    (Intercept) 238.03 264.78
    Days          7.44  13.50
    estimate -+ 1.96 * SE (normal quantiles; lme4's confint(method = "Wald"))
    >>> ci = est.conf_int(method="profile", which=["sigma"])
    >>> ci.round(2).loc["sigma"].tolist()
    [22.9, 28.86]
    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    >>> print(fit.conf_int(method="profile", which=["sd_(Intercept)|herd"]).round(4))  # lme4: 0.3461 1.1000
    Profile likelihood confidence intervals, 95% level
                         2.5 % 97.5 %
    sd_(Intercept)|herd 0.3461    1.1
    Bounds where the deviance, refitted with the parameter held, rises by 3.841 (lme4's profile of a glmer fit)
    """
    z = stats.norm.ppf(1.0 - check_alpha(alpha) / 2.0)
    model = fitted_model(est)
    if method == "boot":
        from .bootstrap import boot_conf_int

        return boot_conf_int(est, alpha, which, n_boot, boot_type, random_state, n_jobs)
    if method == "wald":
        if which is not None:
            raise ValueError("which= applies to method='profile' only")
        if ddf is None:
            fe, se = est.fe_params_, est.bse_
            if model.rank is not None:  # dropped (aliased) columns: NaN, as lme4's NA
                fe = fe.where(model.rank.kept)
            frame = pd.DataFrame({"lower": fe - z * se, "upper": fe + z * se}, index=fe.index)
            note = (f"estimate -+ {format_real([z], 4)[0]} * SE (normal quantiles; lme4's "
                    "confint(method = \"Wald\"))")
            return interval_table(frame, alpha, "Wald confidence intervals", [note])
        result = summary(est, alpha=alpha, ddf=ddf)
        table = result.fixed_effects
        frame = pd.DataFrame({"lower": table["ci_lower"], "upper": table["ci_upper"]},
                             index=table.index)
        if result.ddf == "Kenward-Roger":
            note = ("estimate -+ t(df) * SE, Kenward-Roger's adjusted SE and df (Kenward & Roger "
                    "1997; pbkrtest)")
        elif result.ddf == "Satterthwaite":
            note = "estimate -+ t(df) * SE, Satterthwaite's df (lmerTest)"
        else:
            note = f"estimate -+ {format_real([z], 4)[0]} * SE (normal quantiles: fixed dispersion)"
        return interval_table(frame, alpha, "Wald confidence intervals", [note])
    if method != "profile":
        raise ValueError(f"method must be 'wald', 'profile' or 'boot', got {method!r}")
    if ddf is not None:
        raise ValueError("ddf= applies to method='wald' only")
    corr = model.correlation
    if corr is not None and which is not None and list(np.atleast_1d(which)) == [corr.name]:
        # the correlation parameter's profile, on the criterion of the fit (nlme's)
        with single_threaded_blas():
            bounds = corr.profile_interval(check_alpha(alpha))
        frame = pd.DataFrame([bounds], index=pd.Index([corr.name], name="parameter"),
                             columns=["lower", "upper"])
        criterion_name = "REML criterion" if model.reml else "ML deviance"
        return interval_table(frame, alpha, "Profile likelihood confidence intervals", [
            f"Bounds where the {criterion_name}, refitted with {corr.name} held, rises by "
            f"{format_real([stats.chi2.ppf(1.0 - alpha, 1)], 4)[0]} (the fit's own criterion, as nlme's)"])
    if model.supports("profile") is not None:  # no profiled deviance: refits with x[k] held
        if criterion != "ml":
            raise ValueError(f"criterion={criterion!r}: this model is fitted by maximum likelihood "
                             "and profiled on it (criterion='ml')")
        frame = _held_conf_int(model, check_alpha(alpha), which)
        return interval_table(frame, alpha, "Profile likelihood confidence intervals", [
            "Bounds where the deviance, refitted with the parameter held, rises by "
            f"{format_real([stats.chi2.ppf(1.0 - alpha, 1)], 4)[0]} (lme4's profile of a glmer fit)"])
    with single_threaded_blas():
        prof = _Profiler(est, criterion)
        wanted = prof.requested(which)
        idx = prof.indices([w for w in wanted if w not in prof.dropped])
        bounds = {prof.names[k]: (prof.bound(k, z, -1), prof.bound(k, z, +1)) for k in idx}
    # fixed effects dropped as aliased (rank-deficient X) have no interval: NaN, as lme4's NA
    frame = pd.DataFrame([bounds.get(w, (np.nan, np.nan)) for w in wanted],
                         index=pd.Index(wanted, name="parameter"), columns=["lower", "upper"])
    deviance = "ML deviance" if criterion == "ml" else "REML criterion"
    return interval_table(frame, alpha, "Profile likelihood confidence intervals", [
        f"Bounds where the signed root of the {deviance}'s rise is -+ {format_real([z], 4)[0]} "
        "(lme4's confint(method = \"profile\"))"])


# ---- summary ------------------------------------------------------------------------------
