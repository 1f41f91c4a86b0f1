"""Heteroscedastic residuals: one residual variance per stratum (nlme's ``varIdent``).

Model: the residual variance of row ``r`` is ``scale * delta_{s(r)}^2 / w_r``, with
``s(r)`` the row's stratum, ``delta = 1`` for the reference stratum (the first one) and
``w_r`` optional prior weights (Pinheiro & Bates 2000, *Mixed-Effects Models in S and
S-PLUS*, sec. 5.2). For given ratios this is the weighted homoscedastic model with row
weights ``w_r / delta_{s(r)}^2``, and since a row weight multiplies that row's share of
every cross-product, its sufficient statistics are ``sum_s stats_s / delta_s^2`` with
``stats_s`` the statistics of stratum ``s`` alone (prior weights included), computed once.

Optimisation, in three steps:

1. Start from the homoscedastic fit (:func:`~mixedlm_sklearn._optimize.fit_deviance`),
   with each stratum's ratio from its share of the conditional residuals.
2. L-BFGS-B over ``(theta, eta)`` jointly, ``eta_s = log delta_s`` for the non-reference
   strata (a log keeps the ratios positive; its bounds, ratios within 1e-12..1e12, only
   keep a degenerate stratum finite), with ``theta`` in the whitened basis of
   ``fit_deviance`` (its ``_basis``/``_transform``): the analytic gradient in ``theta``
   of :class:`~mixedlm_sklearn._deviance.ProfiledDeviance` and the analytic derivative
   in ``eta`` below.
3. ``fit_deviance`` once more at the fitted ratios (it lands on lme4's boundary when the
   fit is singular), then Newton steps over ``(theta, eta)`` with lme4's convergence
   measure on all parameters (``_newton_polish``). Should that measure fail, the ratios
   are re-fitted by profiling: an outer optimisation over ``eta`` alone, each step a full
   ``fit_deviance`` in ``theta``, whose derivative is the partial one below at
   ``theta*(eta)`` (envelope theorem). Slower (a fit per step) but as robust as the
   homoscedastic fit.

Partial derivative in a stratum weight (derived for this module; checked against finite
differences in the tests). Write ``v_s = 1 / delta_s^2``, ``T_i = L' S_i L + I`` with
``S_i = sum_s v_s S_is``, ``H_i = L T_i^{-1} L'``, ``R_i = H_i Z_i'X_i`` (combined
statistics) and, for the stratum's own statistics, ``e`` the conditional residuals
``y - X beta - Z L u`` restricted to the stratum. Then, ``dof`` being ``n`` (ML) or
``n - p`` (REML) and ``A = X'V^{-1}X`` in units of ``scale``,

* ``d sum_i log|T_i| / dv_s = sum_i tr(H_i S_is)``,
* ``d r2 / dv_s = e' W_s e`` (r2 is a minimum over beta and u),
* ``dA / dv_s = sum_i (X_is'X_is - X_is'Z_is R_i - R_i'Z_is'X_is + R_i'Z_is'Z_is R_i)``
  (REML: ``d log|A| = tr(A^{-1} dA)``),
* the log-weights term ``-sum_r log(w_r v_s(r))`` contributes ``-n_s / v_s``,

and ``dD/deta_s = -2 v_s dD/dv_s``. All of it needs only ``stats_s`` and the solution.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import linalg, optimize

from ._deviance import (
    ProfiledDeviance,
    Solution,
    lambda_from_theta,
    theta_lower_bounds,
)
from ._optimize import (
    _SCALED_GRADIENT_TOL,
    OptimizerInfo,
    _basis,
    _escape_start,
    _theta_of,
    _newton_polish,
    _transform,
    fit_deviance,
    single_threaded_blas,
)
from ._stats import GroupStats, compute_stats

__all__ = [
    "check_strata",
    "combine_stats",
    "fit_heteroscedastic",
    "ratio_gradient",
    "stratum_stats",
]

# Bounds on |log delta| (variance ratios within 1e-12 .. 1e12 of the reference), and the
# |log delta| beyond which a stratum's residual variance counts as running off to 0 or
# infinity (a degenerate fit, reported as not converged). The optimiser creeps towards such
# a boundary slowly, as the deviance flattens out, hence the margin between the two.
_MAX_LOG_RATIO = 0.5 * np.log(1e12)
_RUNAWAY_LOG_RATIO = 0.5 * np.log(1e10)

# Joint Newton steps at the end: at most this many, stopping once lme4's scaled gradient
# is below the goal (well below the convergence tolerance, to gain the last digits).
_NEWTON_STEPS = 5
_NEWTON_GOAL = 1e-8


def _stratum_name(s: int, labels: Sequence | None) -> str:
    return repr(labels[s]) if labels is not None else f"number {s}"


def check_strata(
    strata_codes: np.ndarray, n_strata: int, labels: Sequence | None = None
) -> np.ndarray:
    """Refuse strata whose residual variance cannot be estimated; return rows per stratum.

    Parameters
    ----------
    strata_codes : int ndarray of shape (n,)
        Stratum index of each row, in ``[0, n_strata)``.
    n_strata : int
    labels : sequence, optional
        Stratum labels, used in the error messages.

    Returns
    -------
    counts : ndarray of shape (n_strata,)

    Raises
    ------
    ValueError
        A stratum with fewer than two rows: with one row its residual can be absorbed
        by the random effects and the fixed part, and the likelihood grows without
        bound as that stratum's variance goes to 0.
    """
    counts = np.bincount(np.asarray(strata_codes), minlength=n_strata)
    for s in np.flatnonzero(counts < 2):
        raise ValueError(
            f"stratum {_stratum_name(s, labels)} of the residual variance has "
            f"{'no rows' if counts[s] == 0 else 'a single row'}; a stratum needs at least two "
            "rows to estimate its own residual variance (merge it with another stratum)"
        )
    return counts


def stratum_stats(
    X: np.ndarray,
    y: np.ndarray,
    Z: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    strata_codes: np.ndarray,
    n_strata: int,
    weights: np.ndarray | None = None,
    labels: Sequence | None = None,
    intercept: bool = False,
) -> list[GroupStats]:
    """Sufficient statistics of each stratum's rows, with the shared group coding.

    Parameters
    ----------
    X, y, Z, codes, n_groups, weights
        As for :func:`~mixedlm_sklearn._stats.compute_stats`.
    strata_codes : int ndarray of shape (n,)
        Stratum index of each row; stratum 0 is the reference (variance ratio 1).
    n_strata : int
    labels : sequence, optional
        Stratum labels for error messages.
    intercept : bool
        Prepend a column of ones to ``X``.

    Returns
    -------
    list of GroupStats
        One per stratum, in stratum order; they add up to the statistics of all rows.
    """
    strata_codes = np.asarray(strata_codes)
    check_strata(strata_codes, n_strata, labels)
    out = []
    for s in range(n_strata):
        rows = np.flatnonzero(strata_codes == s)
        out.append(compute_stats(X[rows], y[rows], Z[rows], codes[rows], n_groups,
                                 None if weights is None else weights[rows], intercept=intercept))
    return out


def combine_stats(stats_by_stratum: Sequence[GroupStats], ratios: np.ndarray) -> GroupStats:
    """Statistics of the weighted fit with variance ratios ``delta_s^2`` (``ratios``).

    Row weights ``1 / delta_s^2`` scale every cross-product of stratum ``s``; the
    log-weights term gains ``n_s log(1 / delta_s^2)``.
    """
    inv = 1.0 / np.asarray(ratios, dtype=float)
    first = stats_by_stratum[0]
    ztz = np.zeros_like(first.ztz)
    ztxy = np.zeros_like(first.ztxy)
    xyxy = np.zeros_like(first.xyxy)
    counts = np.zeros_like(first.counts)
    n_obs, sum_log_w = 0, 0.0
    for st, v in zip(stats_by_stratum, inv):
        ztz += v * st.ztz
        ztxy += v * st.ztxy
        xyxy += v * st.xyxy
        counts += st.counts
        n_obs += st.n_obs
        sum_log_w += st.sum_log_weights + st.n_obs * np.log(v)
    return GroupStats(ztz, ztxy, xyxy, counts, n_obs, sum_log_w)


def ratio_gradient(dev: ProfiledDeviance, sol: Solution, stats_by_stratum: Sequence[GroupStats],
                   ratios: np.ndarray) -> np.ndarray:
    """Partial derivative of the deviance in ``log delta_s`` for every stratum, at fixed theta.

    Parameters
    ----------
    dev : ProfiledDeviance
        The deviance on ``combine_stats(stats_by_stratum, ratios)``.
    sol : Solution
        ``dev.solve(theta)``.
    stats_by_stratum : sequence of GroupStats
    ratios : ndarray of shape (n_strata,)
        ``delta_s^2``.

    Returns
    -------
    ndarray of shape (n_strata,)
        Includes the reference stratum's entry (which the fit holds fixed): the entries
        sum to the derivative of scaling all residual variances at once.
    """
    p = dev.p
    comb = dev.stats
    # H_i = L T_i^{-1} L' per group, (q, q, m); conditional_cov is scale * H_i.
    H = np.moveaxis(sol.conditional_cov(), 0, 2) / sol.scale
    if dev.reml:
        a_inv = linalg.cho_solve(sol.a_factor, np.eye(p), check_finite=False)
        R = np.einsum("abm,bkm->akm", H, comb.ztxy[:, :p, :])
    grad = np.empty(len(stats_by_stratum))
    for s, (st, ratio) in enumerate(zip(stats_by_stratum, ratios)):
        d_dv = np.einsum("abm,abm->", H, st.ztz) + dev.dof / sol.r2 * _residual_ss(sol, st)
        if dev.reml:
            zx = st.ztxy[:, :p, :]
            cross = np.einsum("akm,alm->kl", zx, R)
            d_a = st.xyxy[:p, :p] - cross - cross.T + np.einsum("akm,abm,blm->kl", R, st.ztz, R)
            d_dv += np.sum(a_inv * d_a)
        v = 1.0 / ratio
        grad[s] = -2.0 * v * (d_dv - st.n_obs / v)
    return grad


def _residual_ss(sol: Solution, st: GroupStats) -> float:
    """``e' W e`` over the rows of ``st``, ``e = y - X beta - Z b`` the conditional residuals.

    Expanded in the statistics, with ``c = (-beta, 1)`` and ``b_i = L u_i``:
    ``c'[X y]'W[X y]c - 2 sum_i b_i'Z_i'W[X y]c + sum_i b_i'Z_i'W Z_i b_i``.
    """
    coef = np.append(-sol.beta, 1.0)
    b = sol.lam @ sol.u
    zr = np.einsum("jkm,k->jm", st.ztxy, coef)
    quad = np.einsum("am,abm,bm->", b, st.ztz, b)
    return float(coef @ st.xyxy @ coef - 2.0 * np.sum(b * zr) + quad)


def _ratios(eta: np.ndarray) -> np.ndarray:
    """``delta_s^2`` for all strata (reference first) from the non-reference ``log delta_s``."""
    return np.exp(2.0 * np.concatenate([[0.0], eta]))


def _bounds(lower_theta: np.ndarray, n_eta: int) -> optimize.Bounds:
    return optimize.Bounds(
        np.concatenate([lower_theta, np.full(n_eta, -_MAX_LOG_RATIO)]),
        np.concatenate([np.full(lower_theta.size, np.inf), np.full(n_eta, _MAX_LOG_RATIO)]),
    )


def _lbfgsb(fun, x0: np.ndarray, bounds: optimize.Bounds, max_iter: int, tol: float):
    # Same settings as fit_deviance's optimiser, plus the bounds on eta.
    return optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                             options={"maxiter": max_iter, "ftol": tol, "gtol": tol, "maxcor": 20})


class _JointDeviance:
    """The deviance as a function of ``(theta, eta)``, ``eta`` the non-reference log-ratios.

    Has the interface :mod:`~mixedlm_sklearn._optimize` expects of a deviance
    (``lower_bounds``, ``value_and_grad``), so its Newton check applies unchanged.
    """

    def __init__(self, stats_by_stratum: Sequence[GroupStats], reml: bool, diagonal: bool,
                 lower_theta: np.ndarray) -> None:
        self.stats_by_stratum = list(stats_by_stratum)
        self.reml = reml
        self.diagonal = diagonal
        self.n_theta_only = lower_theta.size
        self._lower = np.concatenate([lower_theta, np.full(len(stats_by_stratum) - 1, -np.inf)])
        self.n_theta = self._lower.size

    def lower_bounds(self) -> np.ndarray:
        return self._lower

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """theta and the ratios ``delta_s^2`` (reference first) of a joint vector."""
        k = self.n_theta_only
        return x[:k], _ratios(x[k:])

    def deviance_at(self, ratios: np.ndarray) -> ProfiledDeviance:
        combined = combine_stats(self.stats_by_stratum, ratios)
        return ProfiledDeviance(combined, self.reml, self.diagonal)

    def __call__(self, x: np.ndarray) -> float:
        theta, ratios = self.split(np.asarray(x, dtype=float))
        return self.deviance_at(ratios)(theta)

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        theta, ratios = self.split(np.asarray(x, dtype=float))
        dev = self.deviance_at(ratios)
        value, grad_theta = dev.value_and_grad(theta)
        grad_eta = ratio_gradient(dev, dev.solve(theta), self.stats_by_stratum, ratios)[1:]
        return value, np.concatenate([grad_theta, grad_eta])


class _WhitenedJoint:
    """The deviance over ``(theta_w, eta)``, ``theta_w`` in the optimiser's whitened basis.

    The whitened statistics ``_transform(combined, P)`` give the gradient in ``theta_w``.
    Their value is off by a constant that depends on ``eta`` (``_transform`` rescales
    ``[X, y]`` by the combined statistics' own column norms), so the value and the
    derivative in ``eta`` come from the caller's basis, at the lower-triangular factor
    with the same ``L L'`` (the profiled deviance depends on ``L`` through ``L L'`` only).
    """

    def __init__(self, stats_by_stratum: Sequence[GroupStats], reml: bool, diagonal: bool,
                 P: np.ndarray) -> None:
        self.stats_by_stratum = list(stats_by_stratum)
        self.reml, self.diagonal, self.P = reml, diagonal, P
        self.q = P.shape[0]
        self.lower_theta = theta_lower_bounds(self.q, diagonal)
        self.n_eta = len(stats_by_stratum) - 1
        self.n_eval = 0

    def lower_bounds(self) -> np.ndarray:
        """Bounds as ``_optimize`` reads them: theta's (eta's are only a safeguard)."""
        return np.concatenate([self.lower_theta, np.full(self.n_eta, -np.inf)])

    def __call__(self, x: np.ndarray) -> float:
        return self.value_and_grad(x)[0]

    def to_theta(self, theta_w: np.ndarray) -> np.ndarray:
        return _theta_of(self.P @ lambda_from_theta(theta_w, self.q, self.diagonal), self.diagonal)

    def from_theta(self, theta: np.ndarray) -> np.ndarray:
        return _theta_of(linalg.solve(self.P, lambda_from_theta(theta, self.q, self.diagonal)),
                         self.diagonal)

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.n_eval += 1
        k = self.lower_theta.size
        ratios = _ratios(x[k:])
        combined = combine_stats(self.stats_by_stratum, ratios)
        white = ProfiledDeviance(_transform(combined, self.P), self.reml, self.diagonal)
        try:
            _, grad_theta = white.value_and_grad(x[:k])
            dev = ProfiledDeviance(combined, self.reml, self.diagonal)
            sol = dev.solve(self.to_theta(x[:k]))
        except FloatingPointError:
            # A trial step far out (a ratio of 1e-12 making A numerically singular):
            # tell the line search the step is bad rather than stopping the fit.
            return np.inf, np.zeros(x.size)
        grad_eta = ratio_gradient(dev, sol, self.stats_by_stratum, ratios)[1:]
        return sol.deviance, np.concatenate([grad_theta, grad_eta])


def fit_heteroscedastic(
    stats_by_stratum: Sequence[GroupStats],
    reml: bool = True,
    diagonal: bool = False,
    max_iter: int = 1000,
    tol: float = 1e-12,
    labels: Sequence | None = None,
) -> tuple[ProfiledDeviance, Solution, OptimizerInfo, np.ndarray]:
    """Fit ``theta`` and one residual variance ratio per stratum.

    Parameters
    ----------
    stats_by_stratum : sequence of GroupStats
        Statistics of each stratum's rows (:func:`stratum_stats`), same group coding;
        the first stratum is the reference.
    reml : bool
        REML criterion (True) or maximum likelihood.
    diagonal : bool
        Independent random effects.
    max_iter : int
        Iteration limit of each optimiser run.
    tol : float
        Relative tolerance of the optimisers.
    labels : sequence, optional
        Stratum labels, for the error and convergence messages.

    Returns
    -------
    deviance : ProfiledDeviance
        The deviance on the combined statistics at the fitted ratios (a weighted
        homoscedastic problem: ``-0.5 * deviance(theta)`` is the log-likelihood, nlme's
        ``logLik`` for ML and REML alike).
    solution : Solution
        The fit there; ``solution.scale`` is the reference stratum's residual variance,
        ``solution.cov_beta()`` the covariance of the fixed effects.
    info : OptimizerInfo
        ``scaled_gradient`` is lme4's convergence measure over theta *and* the
        log-ratios; ``at_bound`` refers to theta only.
    ratios : ndarray of shape (n_strata,)
        ``delta_s^2``, reference first (= 1): stratum ``s`` has residual variance
        ``solution.scale * ratios[s]`` (divided by the prior weight of the row).
    """
    stats_by_stratum = list(stats_by_stratum)
    for s, st in enumerate(stats_by_stratum):
        if st.n_obs < 2:
            raise ValueError(
                f"stratum {_stratum_name(s, labels)} of the residual variance has "
                f"{st.n_obs} row(s); a stratum needs at least two rows to estimate its own "
                "residual variance"
            )
    # Single-threaded BLAS, as fit_deviance: evaluations are many small products.
    with single_threaded_blas():
        return _fit(stats_by_stratum, reml, diagonal, max_iter, tol, labels=labels)


def _fit(
    stats_by_stratum: list[GroupStats],
    reml: bool,
    diagonal: bool,
    max_iter: int,
    tol: float,
    method: str = "joint",
    labels: Sequence | None = None,
) -> tuple[ProfiledDeviance, Solution, OptimizerInfo, np.ndarray]:
    """The fit; ``method="profile"`` skips the joint L-BFGS-B (step 2), for the tests."""
    n_strata = len(stats_by_stratum)
    if n_strata == 1:
        dev, sol, info = fit_deviance(stats_by_stratum[0], reml=reml, diagonal=diagonal,
                                      max_iter=max_iter, tol=tol)
        return dev, sol, info, np.ones(1)

    # 1. The homoscedastic fit and each stratum's share of its residuals.
    home_dev, home_sol, home_info = fit_deviance(
        combine_stats(stats_by_stratum, np.ones(n_strata)), reml=reml, diagonal=diagonal,
        max_iter=max_iter, tol=tol)
    theta, eta = home_sol.theta, _start_log_ratios(home_sol, stats_by_stratum)
    n_iter, n_fev = home_info.n_iter, home_info.n_fev
    joint = _JointDeviance(stats_by_stratum, reml, diagonal, home_dev.lower_bounds())
    k = theta.size

    passed = False
    if method == "joint":
        # 2. Joint L-BFGS-B in the whitened basis; as in fit_deviance, restart once off a
        #    bound it stopped on while the deviance still decreases inwards.
        white = _WhitenedJoint(stats_by_stratum, reml, diagonal, _basis(home_dev.stats, diagonal))
        bounds = _bounds(white.lower_theta, n_strata - 1)
        res = _lbfgsb(white.value_and_grad, np.concatenate([white.from_theta(theta), eta]),
                      bounds, max_iter, tol)
        n_iter += res.nit
        nudged = _escape_start(white, res.x, res.fun)
        if nudged is not None:
            retry = _lbfgsb(white.value_and_grad, nudged, bounds, max_iter, tol)
            n_iter += retry.nit
            if retry.fun < res.fun:
                res = retry
        theta, eta = white.to_theta(res.x[:k]), res.x[k:]
        n_fev += white.n_eval
        # 3. theta at those ratios in lme4's basis, then the joint check.
        x, check, used = _settle(joint, theta, eta, max_iter, tol)
        n_iter, n_fev = n_iter + used[0], n_fev + used[1]
        scaled_grad, pos_def, runaway = check
        passed = runaway.any() or (pos_def and scaled_grad < _SCALED_GRADIENT_TOL)
        theta, eta = x[:k], x[k:]
    if not passed:
        # Fallback (or the method asked for): profile the ratios.
        eta, theta, used = _profile_ratios(joint, theta, eta, max_iter, tol)
        n_iter, n_fev = n_iter + used[0], n_fev + used[1]
        x, check, used = _settle(joint, theta, eta, max_iter, tol)
        n_iter, n_fev = n_iter + used[0], n_fev + used[1]
        scaled_grad, pos_def, runaway = check

    theta, ratios = joint.split(x)
    eta = x[k:]
    dev = joint.deviance_at(ratios)
    sol = dev.solve(theta)
    converged = bool(pos_def and scaled_grad < _SCALED_GRADIENT_TOL)
    if runaway.any():
        low = [_stratum_name(s + 1, labels) for s in np.flatnonzero(runaway & (eta < 0))]
        high = [_stratum_name(s + 1, labels) for s in np.flatnonzero(runaway & (eta > 0))]
        message = (
            "degenerate residual variances: relative to the reference stratum, the variance of "
            + "; ".join(
                ([f"stratum {', '.join(low)} tends to 0"] if low else [])
                + ([f"stratum {', '.join(high)} tends to infinity"] if high else [])
            )
            + " (a stratum whose rows the fixed and random effects can fit exactly?)"
        )
    elif not pos_def:
        message = "the Hessian of the deviance is not positive definite at the optimum"
    elif scaled_grad >= _SCALED_GRADIENT_TOL:
        message = (f"scaled gradient {scaled_grad:.2g} at the optimum exceeds "
                   f"{_SCALED_GRADIENT_TOL:g}")
    else:
        message = "converged: scaled gradient below tolerance"
    at_bound = np.isfinite(dev.lower_bounds()) & (theta <= dev.lower_bounds())
    info = OptimizerInfo(converged, message, int(n_iter), int(n_fev + 1), float(scaled_grad),
                         at_bound)
    return dev, sol, info, ratios


def _settle(joint: "_JointDeviance", theta: np.ndarray, eta: np.ndarray, max_iter: int, tol: float):
    """``fit_deviance`` at fixed ratios (lme4's basis and boundary), then the joint Newton check.

    Returns the (polished) joint vector ``(theta, eta)``, the check
    ``(scaled_gradient, positive_definite, runaway)`` and ``(n_iter, n_fev)``.
    """
    _, sol, inner = fit_deviance(combine_stats(joint.stats_by_stratum, _ratios(eta)),
                                 reml=joint.reml, diagonal=joint.diagonal, theta0=theta,
                                 max_iter=max_iter, tol=tol)
    x = np.concatenate([sol.theta, eta])
    runaway = np.abs(eta) > _RUNAWAY_LOG_RATIO
    if runaway.any():
        # Not an interior optimum: a Newton step has nothing to converge to.
        return x, (np.inf, True, runaway), (inner.n_iter, inner.n_fev)
    n_fev = inner.n_fev
    # Newton steps while they help: near a singular fit the deviance is so flat along
    # theta that the optimisers stop a little early, yet Newton converges quadratically.
    for _ in range(_NEWTON_STEPS):
        x_new, scaled_grad, pos_def, n_check = _newton_polish(joint, x)
        n_fev += n_check
        moved = not np.array_equal(x_new, x)
        x = x_new
        if not (moved and pos_def and scaled_grad > _NEWTON_GOAL):
            break
    return x, (scaled_grad, pos_def, runaway), (inner.n_iter, n_fev)


def _profile_ratios(joint: "_JointDeviance", theta: np.ndarray, eta: np.ndarray,
                    max_iter: int, tol: float):
    """Minimise ``min_theta D(theta, eta)`` over ``eta``, a ``fit_deviance`` per evaluation.

    Returns ``eta``, the last ``theta`` and ``(n_iter, n_fev)``.
    """
    state = {"theta": theta, "n_iter": 0, "n_fev": 0}

    def profiled(e: np.ndarray) -> tuple[float, np.ndarray]:
        ratios = _ratios(e)
        dev, sol, info = fit_deviance(combine_stats(joint.stats_by_stratum, ratios),
                                      reml=joint.reml, diagonal=joint.diagonal,
                                      theta0=state["theta"], max_iter=max_iter, tol=tol)
        state["theta"] = sol.theta
        state["n_iter"] += info.n_iter
        state["n_fev"] += info.n_fev
        return sol.deviance, ratio_gradient(dev, sol, joint.stats_by_stratum, ratios)[1:]

    res = _lbfgsb(profiled, eta, _bounds(np.empty(0), eta.size), max_iter, tol)
    return res.x, state["theta"], (state["n_iter"] + res.nit, state["n_fev"])


def _start_log_ratios(sol: Solution, stats_by_stratum: Sequence[GroupStats]) -> np.ndarray:
    """``log delta_s`` from each stratum's mean squared conditional residual."""
    mean_sq = np.array([max(_residual_ss(sol, st), np.finfo(float).tiny) / st.n_obs
                        for st in stats_by_stratum])
    return np.clip(0.5 * np.log(mean_sq[1:] / mean_sq[0]), -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
