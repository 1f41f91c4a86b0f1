"""Minimising the profiled deviance over ``theta``: transformation, optimiser, checks.

The optimiser works in a *whitened* random-effects basis: ``Z P`` with ``P`` the inverse
Cholesky factor of the pooled ``Z'Z / n``. For an unstructured covariance the model is
invariant under this change of basis, and removing the scale and the collinearity of the
``Z`` columns (age and age^2, an intercept next to an uncentred slope) turns a badly
conditioned problem into a well conditioned one: L-BFGS-B in the raw basis can stall on a
bound far from the optimum (Orthodont, ``(age | Subject)``). With ``diagonal=True`` only
column scaling is allowed, since mixing columns would change the model.

The answer is mapped back to lme4's parametrisation, re-polished there when it lies on
the boundary (a singular fit), and checked as lme4 checks (Bates et al. 2015, sec. 5.2):
the gradient scaled by the inverse Hessian must be small on the free parameters, and the
Hessian positive definite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import linalg, optimize
from threadpoolctl import ThreadpoolController

from ._deviance import (
    ProfiledDeviance,
    Solution,
    batched_cholesky,
    batched_solve_lower,
    batched_solve_lower_t,
    lambda_from_theta,
    theta_from_lambda,
)
from ._stats import GroupStats

__all__ = ["OptimizerInfo", "fit_deviance"]

# Largest |H^{-1} g| on free parameters accepted as converged (lme4 warns above 2e-3 on
# its own scale; we ask for much less because an analytic gradient makes it cheap).
_SCALED_GRADIENT_TOL = 1e-4

_THREADPOOLS: ThreadpoolController | None = None

# With this many groups or fewer the optimiser also starts from these multiples of the
# identity (whitened basis) and from a few seeded random factors, and keeps the best
# answer: small data are where the profiled deviance has several local minima (found by
# the property tests against a dense likelihood), and there each start costs little.
_MULTISTART_MAX_GROUPS = 100
_EXTRA_STARTS = (1.0, 0.1, 10.0)
_RANDOM_STARTS = 6
_MULTISTART_SEED = 20261126


@dataclass(frozen=True)
class OptimizerInfo:
    """How the optimiser went.

    Attributes
    ----------
    converged : bool
    message : str
    n_iter, n_fev : int
        Iterations and deviance evaluations (the final checks included).
    scaled_gradient : float
        ``max |H^{-1} g|`` on the parameters off their bounds (0 when all are on bounds).
    at_bound : ndarray of bool
        Which entries of ``theta`` sit exactly on their lower bound.
    """

    converged: bool
    message: str
    n_iter: int
    n_fev: int
    scaled_gradient: float
    at_bound: np.ndarray


def _basis(stats: GroupStats, diagonal: bool) -> np.ndarray:
    """Matrix ``P`` (q x q): the optimiser sees ``Z P`` instead of ``Z``."""
    pooled = stats.ztz.sum(axis=2) / stats.n_obs
    if diagonal or stats.n_re == 1:
        return np.diag(1.0 / np.sqrt(np.diag(pooled)))
    chol = linalg.cholesky(pooled, lower=True)
    return linalg.solve_triangular(chol, np.eye(stats.n_re), lower=True).T


def _transform(stats: GroupStats, P: np.ndarray) -> GroupStats:
    xy_scale = np.sqrt(np.maximum(np.diag(stats.xyxy), np.finfo(float).tiny) / stats.n_obs)
    return GroupStats(
        np.einsum("ba,bcm,cd->adm", P, stats.ztz, P),
        np.einsum("ba,bkm->akm", P, stats.ztxy) / xy_scale[None, :, None],
        stats.xyxy / np.outer(xy_scale, xy_scale),
        stats.counts,
        stats.n_obs,
        stats.sum_log_weights,
    )


def _moment_start(stats: GroupStats, diagonal: bool) -> np.ndarray:
    """A method-of-moments start for ``theta`` (whitened basis), or the identity.

    Per group the least-squares random effects ``b_i = S_i^{-1} Z_i'r_i`` of the pooled
    OLS residuals have covariance ``cov_re + scale * E[S_i^{-1}]``; subtracting the
    second term estimates ``cov_re / scale``. Only groups whose ``S_i`` is well
    conditioned take part. A start near the optimum saves a third of the evaluations on
    large data; eigenvalues are floored so that the start stays off the boundary, where
    the deviance is flat in sign-symmetric directions.
    """
    q, p = stats.n_re, stats.n_fe
    identity = theta_from_lambda(np.eye(q), diagonal)
    xtx = stats.xyxy[:p, :p]
    try:
        beta = linalg.solve(xtx, stats.xyxy[:p, p], assume_a="pos")
    except (linalg.LinAlgError, ValueError):
        return identity
    coef = np.append(-beta, 1.0)
    scale = float(coef @ stats.xyxy @ coef) / max(stats.n_obs - p, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        chol = batched_cholesky(stats.ztz)
    diag = chol[np.arange(q), np.arange(q)]
    tiny = 1e-6 * np.sqrt(stats.ztz[np.arange(q), np.arange(q)].max(axis=1))
    usable = np.all(np.isfinite(diag) & (diag > tiny[:, None]), axis=0) & (stats.counts > q)
    if usable.sum() <= 2 * q or not np.isfinite(scale) or scale <= 0:
        return identity
    chol = chol[:, :, usable]
    b = batched_solve_lower_t(chol, batched_solve_lower(chol, coef @ stats.ztxy[:, :, usable]))
    s_inv_diag = batched_solve_lower(chol, np.broadcast_to(np.eye(q)[:, :, None], chol.shape))
    mean_s_inv = np.einsum("kam,kbm->ab", s_inv_diag, s_inv_diag) / usable.sum()
    cov = np.cov(b).reshape(q, q) / scale - mean_s_inv
    if diagonal:
        cov = np.diag(np.diag(cov))
    vals, vecs = linalg.eigh(cov)
    top = max(vals.max(), 1.0)
    cov = (vecs * np.maximum(vals, 1e-2 * top)) @ vecs.T
    lam = linalg.cholesky(cov, lower=True)
    return theta_from_lambda(lam, diagonal)


def _lower_factor(M: np.ndarray) -> np.ndarray:
    """Lower-triangular ``L`` with non-negative diagonal and ``L L' = M M'`` (M may be singular)."""
    r = linalg.qr(M.T, mode="r")[0]
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return (signs[:, None] * r).T


def _theta_of(lam: np.ndarray, diagonal: bool) -> np.ndarray:
    """``theta`` of the lower-triangular factor of ``lam lam'`` (``lam`` itself if diagonal).

    Maps between the whitened basis and lme4's, where ``P @ lam`` is no longer triangular.
    """
    return theta_from_lambda(lam if diagonal else _lower_factor(lam), diagonal)


def _minimize(dev: ProfiledDeviance, theta0: np.ndarray, max_iter: int, tol: float,
              callback: Callable[[int, float], None] | None = None):
    bounds = optimize.Bounds(dev.lower_bounds(), np.full(dev.n_theta, np.inf))
    iteration = 0

    def report(intermediate_result):
        nonlocal iteration
        iteration += 1
        callback(iteration, float(intermediate_result.fun))

    return optimize.minimize(
        dev.value_and_grad,
        theta0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        callback=None if callback is None else report,
        options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-6, "maxcor": 20},
    )


def _extra_starts(q: int, diagonal: bool) -> list[np.ndarray]:
    """Further starts for small problems: multiples of the identity and a few fixed,
    pseudo-random factors (seeded: the same data always give the same fit)."""
    eye = theta_from_lambda(np.eye(q), diagonal)
    starts = [s * eye for s in _EXTRA_STARTS]
    rng = np.random.default_rng(_MULTISTART_SEED)
    for _ in range(_RANDOM_STARTS):
        lam = np.tril(rng.standard_normal((q, q)))
        lam[np.diag_indices(q)] = np.abs(lam[np.diag_indices(q)]) * rng.choice([1.0, 3.0, 10.0])
        starts.append(theta_from_lambda(lam, diagonal))
    return starts


def _escape_start(dev: ProfiledDeviance, theta: np.ndarray, value: float) -> np.ndarray | None:
    """A start off the bound from which the deviance is lower, if ``theta`` is not a minimum.

    L-BFGS-B stops on a bound whenever the projected gradient vanishes, which includes
    stationary points that are not minima. Where a diagonal entry of ``L`` is 0, the
    deviance depends on the rest of that column only up to its sign (flipping a column of
    ``L`` leaves ``L L'`` unchanged), but only one sign can be left by raising the
    diagonal entry: both are tried, with a small step inwards.
    """
    lower = dev.lower_bounds()
    on_bound = np.flatnonzero(np.isfinite(lower) & (theta <= lower))
    best, best_value = None, value - 1e-10 * max(1.0, abs(value))
    # deviances over theta and more (the joint heteroscedastic one) have no such layout
    rows, cols = getattr(dev, "theta_position", (np.empty(0, int), np.empty(0, int)))
    for j in on_bound:
        column = (np.flatnonzero((cols == cols[j]) & (rows > rows[j]))
                  if j < rows.size else np.empty(0, dtype=int))
        for sign in (1.0, -1.0) if column.size and np.any(theta[column] != 0) else (1.0,):
            trial = theta.copy()
            trial[column] *= sign
            trial[j] = lower[j] + 1e-3 * max(1.0, np.abs(theta).max())
            trial_value = dev(trial)
            if trial_value < best_value:
                best, best_value = trial, trial_value
    return best


def _snap_to_bounds(dev: ProfiledDeviance, theta: np.ndarray, value: float) -> tuple[np.ndarray, float]:
    """Put near-zero bounded parameters exactly on their bound when that costs nothing.

    Near a zero variance the deviance is flat (even in that entry), so a quasi-Newton
    method approaches the bound without reaching it. lme4 reports such fits as singular
    with the variance exactly 0; so do we, when the deviance at the bound is not higher
    beyond rounding.
    """
    lower = dev.lower_bounds()
    near = np.flatnonzero(np.isfinite(lower) & (theta > lower) & (theta - lower < 1e-4))
    if near.size == 0:
        return theta, value
    trial = theta.copy()
    trial[near] = lower[near]
    trial_value = dev(trial)
    if trial_value <= value + 1e-12 * max(1.0, abs(value)):
        return trial, trial_value
    return theta, value


def _settle(dev: ProfiledDeviance, res) -> tuple[np.ndarray, float, bool, int]:
    """Snap near-zero variances onto the bound, then the Newton step and check."""
    x, _ = _snap_to_bounds(dev, res.x, res.fun)
    if x is res.x:
        return _newton_polish(dev, x, res.fun, res.jac)
    return _newton_polish(dev, x)


def _newton_polish(
    dev: ProfiledDeviance, theta: np.ndarray, value: float | None = None, grad: np.ndarray | None = None
) -> tuple[np.ndarray, float, bool, int]:
    """One Newton step on the free parameters, and lme4's convergence measure.

    The Hessian comes from forward differences of the analytic gradient. The step both
    checks convergence (``max |H^{-1} g|``, invariant to rescaling the parameters) and,
    from an L-BFGS-B answer, gains the last digits. Returns the (possibly improved)
    theta, the scaled gradient there, whether the Hessian is positive definite, and the
    number of evaluations used.
    """
    lower = dev.lower_bounds()
    at_bound = np.isfinite(lower) & (theta <= lower)
    free = np.flatnonzero(~at_bound)
    if value is None or grad is None:
        value, grad = dev.value_and_grad(theta)
    if free.size == 0:
        return theta, 0.0, True, 1
    step = 1e-6 * np.maximum(np.abs(theta[free]), 1e-2)
    hess = np.empty((free.size, free.size))
    for k, j in enumerate(free):
        shifted = theta.copy()
        shifted[j] += step[k]
        hess[:, k] = (dev.value_and_grad(shifted)[1][free] - grad[free]) / step[k]
    hess = 0.5 * (hess + hess.T)
    try:
        newton = linalg.solve(hess, grad[free], assume_a="pos")
    except (linalg.LinAlgError, ValueError):
        return theta, float(np.max(np.abs(grad[free]))), False, free.size + 1
    trial = theta.copy()
    trial[free] -= newton
    n_eval = free.size + 1
    if np.all(trial[free] >= lower[free]):
        trial_value, trial_grad = dev.value_and_grad(trial)
        n_eval += 1
        trial_scaled = float(np.max(np.abs(linalg.solve(hess, trial_grad[free], assume_a="pos"))))
        # Near the optimum the decrease (~ g'H^{-1}g / 2) is below the rounding of the
        # deviance itself; then the smaller gradient decides.
        rounding = 1e-13 * max(1.0, abs(value))
        if trial_value <= value or (trial_value <= value + rounding and trial_scaled < np.max(np.abs(newton))):
            return trial, trial_scaled, True, n_eval
    return theta, float(np.max(np.abs(newton))), True, n_eval


class _Counter:
    """Counts iterations and evaluations over all optimiser runs of one fit."""

    def __init__(self) -> None:
        self.n_iter = 0
        self.n_fev = 0

    def run(self, dev, start, max_iter, tol, callback=None):
        res = _minimize(dev, start, max_iter, tol, callback)
        self.n_iter += res.nit
        self.n_fev += res.nfev
        return res


def _search(white: ProfiledDeviance, res, q: int, diagonal: bool, n_groups: int,
            max_iter: int, tol: float, counter: _Counter):
    """Improve a first L-BFGS-B answer: other starts, the zero end, escapes from bounds.

    The profiled deviance can have several local minima, mostly with few groups: there
    further starts are cheap. The all-zero end (no random effects) is always compared, and
    bound points that are not minima are left (:func:`_escape_start`).
    """
    starts = _extra_starts(q, diagonal) if n_groups <= _MULTISTART_MAX_GROUPS else []
    zero = np.zeros_like(res.x)
    zero_value = white(zero)
    counter.n_fev += 1
    if zero_value < res.fun:
        starts.append(1e-3 * theta_from_lambda(np.eye(q), diagonal))
    for other in starts:
        retry = counter.run(white, other, max_iter, tol)
        if retry.fun < res.fun:
            res = retry
    if zero_value < res.fun:
        res = optimize.OptimizeResult(x=zero, fun=zero_value, jac=white.value_and_grad(zero)[1],
                                      nit=0, nfev=1, status=0, success=True,
                                      message="no random-effects variance")
    for _ in range(3):
        escape = _escape_start(white, res.x, res.fun)
        if escape is None:
            break
        retry = counter.run(white, escape, max_iter, tol)
        if retry.fun >= res.fun:
            break
        res = retry
    return res


def _lme4_theta(dev: ProfiledDeviance, P: np.ndarray, x: np.ndarray, lower: np.ndarray,
                max_iter: int, tol: float, counter: _Counter) -> np.ndarray | None:
    """For a fit singular in the whitened basis, lme4's theta exactly on its boundary.

    Mapped back from the whitened basis, a zero variance is zero only to rounding; a short
    polish in lme4's basis, from the mapped point with rounding-level entries set to 0,
    lands on the bound exactly. None when the fit is not singular there (or cannot be:
    diagonal and scalar fits map entry by entry).
    """
    q = dev.q
    if dev.diagonal or q == 1 or not np.any(np.isfinite(lower) & (x <= lower)):
        return None
    theta = _theta_of(P @ lambda_from_theta(x, q), diagonal=False)
    theta[np.isfinite(dev.lower_bounds()) & (np.abs(theta) <= 1e-10 * np.abs(theta).max())] = 0.0
    polish = counter.run(dev, theta, max_iter, tol)
    return polish.x if polish.fun <= dev(theta) else theta


def single_threaded_blas():
    """Context in which BLAS runs on one thread (see :func:`fit_deviance` for why)."""
    global _THREADPOOLS
    if _THREADPOOLS is None:  # inspecting the loaded libraries costs milliseconds: once
        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


def fit_deviance(*args, **kwargs) -> tuple[ProfiledDeviance, Solution, OptimizerInfo]:
    """Fit ``theta``; see :func:`_fit_deviance` for the parameters.

    Every deviance evaluation is a string of small matrix products (q x q or p x p times
    a vector per group). Multi-threaded BLAS only adds synchronisation to those, and on a
    busy machine it made evaluations 5-10x slower, so the optimiser runs single-threaded.
    """
    with single_threaded_blas():
        return _fit_deviance(*args, **kwargs)


def _fit_deviance(
    stats: GroupStats,
    reml: bool = True,
    diagonal: bool = False,
    theta0: np.ndarray | None = None,
    max_iter: int = 1000,
    tol: float = 1e-8,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[ProfiledDeviance, Solution, OptimizerInfo]:
    """Fit ``theta`` by minimising the profiled deviance.

    Parameters
    ----------
    stats : GroupStats
    reml : bool
        REML criterion (True) or maximum likelihood.
    diagonal : bool
        Independent random effects (lme4's ``||``).
    theta0 : ndarray, optional
        Start in lme4's parametrisation; default: a method-of-moments estimate.
    max_iter : int
        Iteration limit of the optimiser.
    tol : float
        Relative change of the deviance that stops the quasi-Newton phase.
    callback : callable, optional
        Called as ``callback(iteration, deviance)`` after each quasi-Newton iteration.

    Returns
    -------
    deviance : ProfiledDeviance
        The deviance on the caller's statistics (for inference).
    solution : Solution
        The fit at the optimum.
    info : OptimizerInfo
    """
    q = stats.n_re
    P = _basis(stats, diagonal)
    white = ProfiledDeviance(_transform(stats, P), reml=reml, diagonal=diagonal)
    if theta0 is None:
        start = _moment_start(white.stats, diagonal)
    else:
        lam0 = lambda_from_theta(np.asarray(theta0, float), q, diagonal)
        start = _theta_of(linalg.solve(P, lam0), diagonal)
    if callback is not None:  # report deviances on the caller's scale, not the whitened one
        theta_start = _theta_of(P @ lambda_from_theta(start, q, diagonal), diagonal)
        shift = ProfiledDeviance(stats, reml=reml, diagonal=diagonal)(theta_start) - white(start)
        user_callback = callback
        callback = lambda iteration, value: user_callback(iteration, value + shift)  # noqa: E731
    counter = _Counter()
    res = counter.run(white, start, max_iter, tol, callback)
    limited = res.status == 1  # max_iter bounds the work: such a run is reported, not retried
    if not limited:
        res = _search(white, res, q, diagonal, stats.n_groups, max_iter, tol, counter)
    x, scaled_grad, pos_def, n_check = _settle(white, res)
    counter.n_fev += n_check
    if not limited and (not pos_def or scaled_grad >= _SCALED_GRADIENT_TOL):
        # A saddle or a flat valley near a zero variance (the deviance is even there):
        # restart with the small diagonal entries raised, and keep what is lower.
        nudged = x.copy()
        small = np.isfinite(white.lower_bounds()) & (x < 0.05 * max(1.0, np.abs(x).max()))
        nudged[small] = 0.1 * max(1.0, np.abs(x).max())
        retry = counter.run(white, nudged, max_iter, tol)
        if retry.fun < white(x):
            x, scaled_grad, pos_def, n_check = _settle(white, retry)
            counter.n_fev += n_check
    dev = ProfiledDeviance(stats, reml=reml, diagonal=diagonal)
    theta = _lme4_theta(dev, P, x, white.lower_bounds(), max_iter, tol, counter)
    if theta is not None:  # re-polished on lme4's boundary: check there
        theta, scaled_grad, pos_def, n_check = _newton_polish(dev, theta)
        counter.n_fev += n_check
    else:
        theta = _theta_of(P @ lambda_from_theta(x, q, diagonal), diagonal)
    n_iter, n_fev = counter.n_iter, counter.n_fev
    solution = dev.solve(theta)
    at_bound = np.isfinite(dev.lower_bounds()) & (theta <= dev.lower_bounds())
    # L-BFGS-B's own verdict is not used: at the optimum its line search can fail on
    # rounding ("ABNORMAL"), which the Newton check tells apart from a real failure.
    converged = not limited and scaled_grad < _SCALED_GRADIENT_TOL and pos_def
    if limited:
        message = f"iteration limit reached ({res.message})"
    elif not pos_def:
        message = "the Hessian of the deviance is not positive definite at the optimum"
    elif scaled_grad >= _SCALED_GRADIENT_TOL:
        message = f"scaled gradient {scaled_grad:.2g} at the optimum exceeds {_SCALED_GRADIENT_TOL:g}"
    else:
        message = str(res.message)
    info = OptimizerInfo(converged, message, int(n_iter), int(n_fev), scaled_grad, at_bound)
    return dev, solution, info
