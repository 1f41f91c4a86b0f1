"""Newton's method with a Hessian for the outer parameters: one loop for every caller.

The engine minimises small smooth functions of a few parameters (the profiled deviance
of a linear model in ``theta``, a GLMM's deviance in ``(theta, beta)``, the fixed-probe
deviance of the iterative solver) with the same iteration: a Newton step from a
Hessian, a guard that keeps the step feasible, a backtracking line search, a stopping
rule on the Newton decrement or on the scaled gradient. The callers differ in where
their Hessian comes from (the average information, differences of the analytic
gradient; recomputed each step or kept), in how the bounds are kept (the iterates
strictly inside, or projected onto the bounds), and in what they call converged;
:func:`minimize` takes those as arguments and is otherwise the same loop for all: the
linear model's Newton phase, settling polish and large-problem check
(:mod:`._optimize`), the stochastic optimiser and its exact finish, the GLMM's Newton
steps (:mod:`._glmm`).

The batched refits of :mod:`._batched_refit` (and the screening of :mod:`._many`) run
many problems in lockstep, each replicate its own course of steps and line-search trials
in one shared evaluation; that is a scheduler over many problems, not this loop, and
its step floors the eigenvalues of a Hessian that is not positive definite (where every
caller of :func:`minimize` stops). They share the Hessian pieces below
(:func:`batched_shifts`, :func:`batched_fd_hessian`, :func:`floored_eigenvalues`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import linalg
from scipy.linalg.lapack import dpotrf as _potrf, dpotrs as _potrs

__all__ = ["NewtonResult", "OptimizerInfo", "SCALED_GRADIENT_TOL", "minimize", "solve_pd", "interior_step", "fd_hessian", "central_hessian",
           "batched_shifts", "batched_fd_hessian", "floored_eigenvalues"]


# Largest |H^{-1} g| on free parameters accepted as converged (lme4 warns above 2e-3 on
# its own scale; we ask for much less because an analytic gradient makes it cheap): the
# linear model's and the GLMM's optimisers alike.
SCALED_GRADIENT_TOL = 1e-4


@dataclass(frozen=True)
class OptimizerInfo:
    """How an outer optimisation went (the linear model's and the GLMM's).

    Attributes
    ----------
    converged : bool
    message : str
    n_iter, n_fev : int
        Iterations and deviance evaluations (the final checks included).
    scaled_gradient : float
        ``max |H^{-1} g|`` on the parameters off their bounds (0 when all are on bounds).
    at_bound : ndarray of bool
        Which entries of ``theta`` sit exactly on their lower bound (0).
    hessian : ndarray or None
        The Hessian at the optimum where the optimiser keeps it (the GLMM's, in ``(theta,
        beta)``: lme4's covariance of beta is ``2 H^{-1}``).
    """

    converged: bool
    message: str
    n_iter: int
    n_fev: int
    scaled_gradient: float
    at_bound: np.ndarray
    hessian: np.ndarray | None = None


def solve_pd(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``A^{-1} b`` for a symmetric positive definite ``A`` by Cholesky.

    Raises ``LinAlgError`` when ``A`` is not positive definite. (scipy's ``solve`` would
    also warn about ill-conditioning, a warning the fit must not leak: an ill-conditioned
    Hessian is a normal event the checks handle.)
    """
    A, b = np.asarray(A), np.asarray(b)
    if (A.dtype != np.float64 or b.dtype != np.float64 or A.ndim != 2 or A.size == 0
            or A.shape[0] != A.shape[1] or b.ndim not in (1, 2) or b.shape[0] != A.shape[0]):
        return linalg.cho_solve(linalg.cho_factor(A, check_finite=False), b, check_finite=False)
    # The LAPACK routines cho_factor and cho_solve call, called directly: the same numbers
    # without their ~45 us of argument handling per call, which on matrices of a few rows
    # is all of the cost (the optimiser solves several per fit).
    c, info = _potrf(A, lower=0, clean=0)
    if info > 0:
        raise linalg.LinAlgError(f"{info}-th leading minor of the array is not positive definite")
    if info < 0:
        raise ValueError(f"LAPACK reported an illegal value in {-info}-th argument on entry to POTRF")
    x, info = _potrs(c, b, lower=0)
    if info != 0:
        raise ValueError(f"illegal value in {-info}th argument of internal potrs")
    return x


def interior_step(x: np.ndarray, step: np.ndarray, lower: np.ndarray, shrink: float) -> np.ndarray:
    """``step`` with each bounded coordinate moving at most ``shrink`` of the way to its
    lower bound (``0 < shrink < 1``): the iterates stay strictly inside."""
    limit = np.where(np.isfinite(lower), -shrink * (x - lower), -np.inf)
    return np.maximum(step, limit)


def fd_hessian(grad: Callable[[np.ndarray], np.ndarray], x: np.ndarray, g: np.ndarray,
               free: np.ndarray, rel_step: float, floor: float) -> np.ndarray:
    """Hessian from forward differences of an analytic gradient, symmetrised.

    Column ``j`` (for each ``free[j]``) is ``(grad(x + h_j e_j) - g) / h_j`` with
    ``h_j = rel_step * max(|x_j|, floor)``; the other columns are 0 before the
    symmetrisation ``(H + H') / 2``. Costs one gradient per free parameter.
    """
    k = x.size
    H = np.zeros((k, k))
    for j in np.flatnonzero(free):
        h = rel_step * max(abs(x[j]), floor)
        up = x.copy()
        up[j] += h
        H[:, j] = (grad(up) - g) / h
    return 0.5 * (H + H.T)


@dataclass
class NewtonResult:
    """Where :func:`minimize` stopped.

    Attributes
    ----------
    x, value, grad
        The last accepted point, its value and gradient.
    status : str
        ``"converged"`` (the caller's test held, or every entry is held), ``"iteration
        limit"``, ``"not finite"`` (the value at the point), ``"not positive definite"``
        (the Hessian on the free entries), ``"step refused"`` (the caller's step guard
        returned None, or the guarded step is not a descent direction) or ``"line search
        failed"``.
    n_iter : int
        Iterations entered (the one that stopped included).
    newton : ndarray or None
        ``H^{-1} g`` on the free entries at the last Newton step computed.
    decrement : float
        ``g' H^{-1} g`` there (the Newton decrement, about twice the predicted decrease).
    pos_def : bool
        Whether the last Hessian was positive definite on the free entries.
    hessian : ndarray or None
        The last Hessian (all entries).
    free : ndarray of bool or None
        The free entries of the last step.
    """

    x: np.ndarray
    value: float
    grad: np.ndarray
    status: str
    n_iter: int
    newton: np.ndarray | None = None
    decrement: float = np.inf
    pos_def: bool = False
    hessian: np.ndarray | None = None
    free: np.ndarray | None = None

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    @property
    def scaled(self) -> float:
        """``max |H^{-1} g|`` on the free entries (0 with none free, inf before any step)."""
        if self.newton is None:
            return np.inf
        return float(np.max(np.abs(self.newton))) if self.newton.size else 0.0


def minimize(
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    hessian: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    converged: Callable[[int, float, float, np.ndarray], bool],
    *,
    max_iter: int,
    value: Callable[[np.ndarray], float] | None = None,
    start: tuple[float, np.ndarray] | None = None,
    held: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    guard: Callable[[np.ndarray, np.ndarray, int], np.ndarray | None] | None = None,
    project: Callable[[np.ndarray], np.ndarray] | None = None,
    armijo: float = 1e-4,
    slack: float = 0.0,
    max_trials: int = 30,
    accept: Callable[[float, np.ndarray, float, np.ndarray | None], bool | None] | None = None,
    full_step_below: float = 0.0,
    after_step: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    stop_after_step: Callable[[int, np.ndarray, np.ndarray], bool] | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
    on_step: Callable[[float], None] | None = None,
) -> NewtonResult:
    """Minimise a smooth function by Newton steps with a backtracking line search.

    Each iteration (Nocedal & Wright 2006, *Numerical Optimization*, 2nd ed., sec. 3.1
    and 3.5; bounds by holding the active entries and projecting, the projected Newton
    method of Bertsekas 1982, SIAM J. Control Optim. 20(2), 221-246):

    1. the entries ``held(x, g)`` are fixed this iteration (e.g. those on their bound, or
       only those whose gradient points outwards, so that a bound is released when the
       descent direction points inside); with none free the point is converged;
    2. the Newton step ``-H_ff^{-1} g_f`` on the free entries ``f`` (Cholesky; a Hessian
       that is not positive definite on them stops the loop, status ``"not positive
       definite"``: the callers treat that as information, e.g. a saddle to escape);
    3. ``converged(iteration, value, decrement, newton)`` decides on the Newton decrement
       ``g_f' H_ff^{-1} g_f`` or on the scaled gradient ``max |H_ff^{-1} g_f|``;
    4. ``guard(x, step, iteration)`` may shorten the step (e.g. :func:`interior_step`:
       the iterates stay strictly inside the bounds) or refuse it (None); a guarded step
       that is not a descent direction is refused too;
    5. a backtracking line search along the step, trial points ``project(x + t d)`` for
       ``t = 1, 1/2, ...`` (at most ``max_trials``), accepts the first with
       ``f <= f(x) + armijo * t * g'd + slack * |f(x)|`` (Armijo's condition; with
       ``armijo = 0`` simple decrease, ``slack`` allowing the rounding of ``f``), or as
       ``accept(t, trial, f_trial, g_trial)`` says (True, False: halve, None: give up).
       Below a decrement of ``full_step_below`` an unshortened step is taken without a
       trial (where the objective's own noise exceeds the predicted decrease; no
       ``after_step`` then);
    6. ``stop_after_step`` may end the loop at the accepted point.

    Guarantees: no step is taken from a Hessian that is not positive definite on the
    free entries, nor along a direction that is not a descent direction; every accepted
    point passed the acceptance test (with Armijo's and ``slack = 0`` the value strictly
    decreases); every iterate is ``guard``-ed and ``project``-ed (feasible when those
    keep it so); held entries move only through ``project`` or ``after_step``; the loop
    ends after at most ``max_iter`` iterations, each with one Hessian, at most
    ``max_trials`` trial evaluations and one gradient at the accepted point. The result
    is the last accepted point with its own value and gradient.

    Parameters
    ----------
    value_and_grad : callable
        ``x -> (f, g)``; a failed evaluation should return ``(inf, anything)``.
    hessian : callable
        ``(x, g) -> H`` (all entries; only the free block is used). Called once per iteration:
        a caller that keeps one Hessian returns it every time. ``LinAlgError`` or
        ``ValueError`` from it count as a Hessian that is not positive definite.
    x : ndarray
        Start.
    converged : callable
        ``(iteration, f, decrement, newton) -> bool``.
    max_iter : int
    value : callable, optional
        ``x -> f`` for the trial points (their gradient is then evaluated once, at the
        accepted point); default ``value_and_grad``, whose gradient is kept.
    start : (f, g), optional
        Value and gradient at ``x`` if already known.
    held, guard, project, accept, after_step : callable, optional
        See above; ``after_step(x_new, d) -> x`` may move an accepted point (e.g. onto a
        bound) before its gradient is evaluated.
    armijo, slack, max_trials, full_step_below : float, int
    on_iteration : callable, optional
        ``(iteration, f)`` at the start of each iteration.
    on_step : callable, optional
        ``f`` after each accepted step.
    stop_after_step : callable, optional
        ``(iteration, x_old, x_new) -> bool`` after each accepted step: True ends the loop
        (status ``"converged"``) without a further Hessian, for a caller that measures
        convergence at the new point with the Hessian of the step.

    Returns
    -------
    NewtonResult
    """
    x = np.asarray(x, dtype=float)
    f, g = value_and_grad(x) if start is None else start
    newton, decrement, pos_def, H, free = None, np.inf, False, None, None
    trial_value = value if value is not None else (lambda z: value_and_grad(z)[0])

    def result(status: str, it: int) -> NewtonResult:
        return NewtonResult(x, f, g, status, it, newton, decrement, pos_def, H, free)

    for it in range(1, max_iter + 1):
        if on_iteration is not None:
            on_iteration(it, f)
        if not np.isfinite(f):
            return result("not finite", it)
        free = np.ones(x.size, dtype=bool) if held is None else ~held(x, g)
        if not free.any():
            newton, decrement, pos_def = np.zeros(0), 0.0, True
            return result("converged", it)
        try:
            H = hessian(x, g)
            newton = solve_pd(H[np.ix_(free, free)] if not free.all() else H, g[free])
        except (linalg.LinAlgError, ValueError):
            pos_def = False
            return result("not positive definite", it)
        pos_def = True
        decrement = float(g[free] @ newton)
        if converged(it, f, decrement, newton):
            return result("converged", it)
        step = np.zeros(x.size)
        step[free] = -newton
        d = step if guard is None else guard(x, step, it)
        if d is None:
            return result("step refused", it)
        slope = float(g @ d)
        if not slope < 0:
            return result("step refused", it)
        if decrement < full_step_below and np.array_equal(d, step):
            x = x + d if project is None else project(x + d)
            f, g = value_and_grad(x)
            if on_step is not None:
                on_step(f)
            continue
        threshold_slack = slack * abs(f)
        t = 1.0
        for _ in range(max_trials):
            trial = x + t * d if project is None else project(x + t * d)
            if value is None:
                tf, tg = value_and_grad(trial)
            else:
                tf, tg = trial_value(trial), None
            if accept is not None:
                ok = accept(t, trial, tf, tg)
            else:
                ok = bool(tf <= f + armijo * t * slope + threshold_slack)
            if ok:
                break
            if ok is None:
                return result("line search failed", it)
            t *= 0.5
        else:
            return result("line search failed", it)
        x_old, x = x, trial
        if after_step is not None:
            x = after_step(x, d)
        if value is None and x is trial:
            f, g = tf, tg
        else:
            f, g = value_and_grad(x)
        if on_step is not None:
            on_step(f)
        if stop_after_step is not None and stop_after_step(it, x_old, x):
            return result("converged", it)
    return result("iteration limit", max_iter)


# ---- the batched refits' pieces --------------------------------------------------------------
# (:mod:`._batched_refit` and :mod:`._many` run many problems in lockstep, with a step that
# floors the Hessian's eigenvalues instead of stopping where it is not positive definite.)


def batched_shifts(x: np.ndarray, with_center: bool) -> tuple[np.ndarray, np.ndarray]:
    """The points of a forward-difference Hessian for each row of ``x`` (K, nt).

    Returns the points (nt, K, nt), shifted copies of ``x`` (entry ``j`` of the ``j``-th
    by ``h``), preceded by ``x`` itself with ``with_center`` ((nt + 1, K, nt)), and the
    steps ``h = 1e-6 max(|x|, 1e-2)`` (K, nt): all evaluated in one batched call.
    """
    nt = x.shape[1]
    h = 1e-6 * np.maximum(np.abs(x), 1e-2)
    off = 1 if with_center else 0
    points = np.repeat(x[None], nt + off, axis=0)
    for j in range(nt):
        points[j + off, :, j] += h[:, j]
    return points, h


def batched_fd_hessian(g_shift: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Hessians (K, nt, nt), symmetrised, from the gradients (nt, K, nt) at the shifted
    points of :func:`batched_shifts`, the gradients ``g`` (K, nt) at the points and the
    steps ``h`` (K, nt)."""
    H = np.swapaxes((g_shift - g[None]) / h.T[:, :, None], 0, 1)
    H = np.swapaxes(H, 1, 2)  # H[k, i, j] = d grad_i / d x_j
    return 0.5 * (H + np.swapaxes(H, 1, 2))


def floored_eigenvalues(vals: np.ndarray) -> np.ndarray:
    """``|vals|`` floored at 1e-6 of the largest per row (K, nt): the eigenvalues of a
    positive definite stand-in for a Hessian that is not (a descent step from it)."""
    floor = 1e-6 * np.maximum(np.abs(vals).max(axis=1, keepdims=True), 1e-12)
    return np.maximum(np.abs(vals), floor)


def central_hessian(f: Callable[[np.ndarray], float], x: np.ndarray, free: np.ndarray,
                    lower: np.ndarray, rel_step: float = 1e-4) -> np.ndarray:
    """Hessian on the ``free`` entries from central second differences of ``f`` alone.

    For a function without an analytic gradient (an adaptive Gauss-Hermite deviance):
    steps ``h_j = rel_step * max(1, |x_j|)``, shortened to stay above ``lower`` (at least
    1e-7); the diagonal from ``f(x +- h_a)``, the off-diagonal from the four points
    ``x +- h_a +- h_b``. With ``rel_step = 1e-4`` truncation (~1e-8) and rounding
    (~eps |f| / 1e-8) errors are both small; differences of a finite-difference gradient
    would amplify its rounding error. Entries not free are 0. ``f(x)`` is evaluated first.
    """
    k = x.size
    H = np.zeros((k, k))
    idx = np.flatnonzero(free)
    steps = rel_step * np.maximum(1.0, np.abs(x))
    steps = np.where(x - steps < lower, np.maximum(x - lower, 1e-7), steps)
    f0 = f(x)
    for a in idx:
        ea = np.zeros(k)
        ea[a] = steps[a]
        H[a, a] = (f(x + ea) - 2.0 * f0 + f(x - ea)) / steps[a] ** 2
        for b in idx[idx > a]:
            eb = np.zeros(k)
            eb[b] = steps[b]
            H[a, b] = H[b, a] = (f(x + ea + eb) - f(x + ea - eb) - f(x - ea + eb)
                                 + f(x - ea - eb)) / (4.0 * steps[a] * steps[b])
    return H
