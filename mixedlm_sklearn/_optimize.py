"""Minimising the profiled deviance: one optimiser for every model.

Phases (each written once, for any number of terms and strata):

1. **Whitening.** The optimiser sees ``Z_k P_k`` instead of ``Z_k``, ``P_k`` the inverse
   Cholesky factor of the pooled ``Z_k'Z_k / n`` (column scaling only for a diagonal
   covariance, where mixing columns would change the model), and ``[X y]`` scaled to unit
   mean square. For an unstructured covariance the model is invariant under this change of
   basis; it removes the scale and collinearity of ``Z``'s columns (an intercept next to an
   uncentred slope), under which L-BFGS-B can stall on a bound far from the optimum
   (Orthodont, ``(age | Subject)``).
2. **Local search** from a method-of-moments start (one term) or the identity (lme4's
   start): Newton's method with the average-information Hessian (Gilmour, Thompson &
   Cullis 1995) while the iterates stay inside, then bounded L-BFGS-B with the analytic
   gradient (it lands exactly on a bound: a singular fit). With strata, L-BFGS-B over
   ``(theta, eta)`` jointly.
3. **Global safeguards.** The profiled deviance can have several local minima, mostly with
   few levels: small problems also start from multiples of the identity and a few seeded
   random factors. With one term and one stratum these starts run in lockstep in the
   batched kernel of :mod:`._batched_refit` together with the first search (Newton with a
   finite-difference Hessian from the same start, which then replaces the search of
   phase 2 when it settles inside), and stop once they join its answer
   (:func:`_lead`, :func:`_screen_starts`). The all-zero end is always compared. Where a diagonal entry of some
   ``L_k`` is 0 the deviance is even in the rest of that column (flipping a column of ``L``
   leaves ``L L'`` unchanged), so a gradient method never leaves such a point even when it
   is not a minimum: both signs are probed inwards (:func:`_escape_start`).
4. **Settle and check.** Near-zero variances are put exactly on their bound when that
   costs nothing; a Newton step with a Hessian from differences of the analytic gradient
   gains the last digits and gives lme4's convergence measure (Bates et al. 2015, sec.
   5.2): the gradient scaled by the inverse Hessian, on the parameters off their bounds,
   with a positive definite Hessian. A saddle or flat valley is restarted once. A large
   problem (more levels than get the other starts) whose Newton phase converged with every
   variance clear of 0 is checked with the average-information Hessian instead
   (:func:`_information_check`), which costs no further gradients. A first search that
   settled in the batch of phase 3 clear of every bound, and that nothing replaced, was
   checked there: its last step was a Newton step with a positive definite Hessian from
   differences of the same analytic gradient, below the measure's tolerance
   (:func:`_settled_lead`).
5. **lme4's basis.** The answer is mapped back (``theta`` of the lower-triangular factor
   of ``P L L' P'``); a fit singular in the whitened basis is re-polished in lme4's basis
   so that its zero lands exactly on the bound, and checked there.

Every Newton iteration here (phases 2 and 4, the large-problem check, the stochastic
optimiser and its exact finish) is one call of :func:`._newton.minimize`, the routine the
GLMM's optimiser uses too; they differ only in the Hessian, the bounds' handling and the
stopping rule they pass.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from typing import Callable

import numpy as np
from scipy import linalg, optimize

from ._batched import batched_cholesky, batched_solve_lower, batched_solve_lower_t
from ._crossprod import CrossProducts, ResponseProducts
from ._deviance import Deviance, Solution
from ._factor import NotPositiveDefinite
from ._basis import Basis
from ._batched_refit import _MAX_NEWTON, BatchFit, LevelClasses, OneTermBatch, _subset, repeated_response
from ._terms import theta_from_lambda
from ._newton import SCALED_GRADIENT_TOL, OptimizerInfo, fd_hessian, interior_step, minimize, solve_pd as _solve_pd

__all__ = ["OptimizerInfo", "fit", "fit_stochastic", "SCALED_GRADIENT_TOL"]

# How the report of a search stopped by max_iter begins.
ITERATION_LIMIT = "iteration limit reached"
# |log delta| beyond which a stratum's residual variance counts as running off to 0 or
# infinity (a degenerate fit, reported as not converged).
_RUNAWAY_LOG_RATIO = 0.5 * np.log(1e10)

# With this many levels or fewer (all terms together) the optimiser also starts from
# these multiples of the identity and from a few seeded random factors and keeps the best
# answer: small data are where the profiled deviance has several local minima (found by
# the property tests against a dense likelihood), and there each start costs little.
_MULTISTART_MAX_LEVELS = 100
_EXTRA_STARTS = (1.0, 0.1, 10.0)
_RANDOM_STARTS = 6
_MULTISTART_SEED = 20261126
# The screening of those starts (:func:`_screen_starts`) stops a start once it comes
# within this of the first search's answer (relative, in ``L L'``'s terms) or a Newton
# step lands there: it has entered that minimum's basin.
_SCREEN_JOIN = 1e-2
# :func:`_snap_to_bounds` tries a bounded entry closer than this to its bound on the bound.
_SNAP_REACH = 1e-4
# Newton steps may shrink a bounded theta entry by at most this fraction.
_MAX_SHRINK = 0.75
_NEWTON_MESSAGE = "Newton (average information)"
_LEAD_MESSAGE = "Newton (finite-difference Hessian, in lockstep with the other starts)"
# A whitened diagonal entry of L_k above this (relative to the term's largest entry) is
# clear of its bound for :func:`_information_check`.
_CLEAR_OF_BOUND = 1e-2


# ---- the whitened basis ------------------------------------------------------------------


# ---- starting values -----------------------------------------------------------------------


def _moment_start(cp: CrossProducts) -> np.ndarray | None:
    """A method-of-moments start for ``theta`` (whitened basis), term by term.

    Per level of a term the least-squares random effects ``b_l = S_l^{-1} Z_l'r_l`` of the
    pooled OLS residuals have covariance ``cov_re + scale * E[S_l^{-1}]``; subtracting the
    second term estimates ``cov_re / scale``. Only levels whose ``S_l`` is well conditioned
    take part. With several terms each is estimated as if it were alone (the others' share
    of a level's residual mean averages out over its rows; a term with too few usable
    levels starts from the identity, lme4's start). A start near the optimum saves a third
    of the evaluations on large data (two Newton iterations on InstEval); eigenvalues are
    floored so that the start stays off the boundary, where the deviance is flat in
    sign-symmetric directions. None when no term's estimate can be formed.
    """
    if cp.n_strata != 1:
        return None
    p, xyxy = cp.p, cp.xyxy[0]
    try:
        beta = _solve_pd(xyxy[:p, :p], xyxy[:p, p]) if p else np.zeros(0)
    except (linalg.LinAlgError, ValueError):
        return None
    coef = np.append(-beta, 1.0)
    scale = float(coef @ xyxy @ coef) / max(cp.n - p, 1)
    if not np.isfinite(scale) or scale <= 0:
        return None
    parts = [_term_moments(term, cp.diag[k][0], cp.zxy[k][0], cp.counts[k], coef, scale)
             for k, term in enumerate(cp.terms)]
    if all(part is None for part in parts):
        return None
    return np.concatenate([part if part is not None else theta_from_lambda(np.eye(t.q), t.diagonal)
                           for part, t in zip(parts, cp.terms)])


def _term_moments(term, ztz: np.ndarray, ztxy: np.ndarray, counts: np.ndarray, coef: np.ndarray,
                  scale: float) -> np.ndarray | None:
    """One term's moment estimate of :func:`_moment_start` (None: too few usable levels)."""
    q = term.q
    with np.errstate(invalid="ignore", divide="ignore"):
        chol = batched_cholesky(ztz)
    diag = chol[np.arange(q), np.arange(q)]
    tiny = 1e-6 * np.sqrt(ztz[np.arange(q), np.arange(q)].max(axis=1))
    usable = np.all(np.isfinite(diag) & (diag > tiny[:, None]), axis=0) & (counts > q)
    if usable.sum() <= 2 * q:
        return None
    chol = chol[:, :, usable]
    b = batched_solve_lower_t(chol, batched_solve_lower(chol, np.einsum("akm,k->am", ztxy[:, :, usable], coef)))
    s_inv = batched_solve_lower(chol, np.broadcast_to(np.eye(q)[:, :, None], chol.shape))
    mean_s_inv = np.einsum("kam,kbm->ab", s_inv, s_inv) / usable.sum()
    cov = np.cov(b).reshape(q, q) / scale - mean_s_inv
    if term.diagonal:
        cov = np.diag(np.diag(cov))
    vals, vecs = linalg.eigh(cov)
    top = max(vals.max(), 1.0)
    cov = (vecs * np.maximum(vals, 1e-2 * top)) @ vecs.T
    return theta_from_lambda(linalg.cholesky(cov, lower=True), term.diagonal)


def _ratio_start(cp: CrossProducts) -> np.ndarray:
    """``log delta_s`` from each stratum's mean squared residual of the pooled OLS fit."""
    if cp.n_strata == 1:
        return np.empty(0)
    comb = cp.combined()
    p = cp.p
    xyxy = comb.xyxy[0]
    try:
        beta = linalg.lstsq(xyxy[:p, :p], xyxy[:p, p])[0] if p else np.zeros(0)
    except (linalg.LinAlgError, ValueError):
        return np.zeros(cp.n_strata - 1)
    coef = np.append(-beta, 1.0)
    mean_sq = np.array([max(float(coef @ cp.xyxy[s] @ coef), np.finfo(float).tiny) / cp.n_obs[s]
                        for s in range(cp.n_strata)])
    return np.clip(0.5 * np.log(mean_sq[1:] / mean_sq[0]), -_RUNAWAY_LOG_RATIO, _RUNAWAY_LOG_RATIO)


def _is_small(dev: Deviance) -> bool:
    """Few enough levels for the other starts (and the full polish) to be affordable."""
    return sum(t.n_levels for t in dev.terms) <= _MULTISTART_MAX_LEVELS


def _extra_starts(dev: Deviance) -> list[np.ndarray]:
    """Further starts for small problems: multiples of the identity and a few fixed,
    pseudo-random factors (seeded: the same data always give the same fit)."""
    shape = tuple((term.q, term.diagonal) for term in dev.terms)
    return [start.copy() for start in _extra_starts_of(shape, dev.n_eta)]


@functools.lru_cache(maxsize=64)
def _extra_starts_of(shape: tuple[tuple[int, bool], ...], n_eta: int) -> tuple[np.ndarray, ...]:
    """:func:`_extra_starts` for terms of these ``(q, diagonal)``: they depend on nothing
    else, and drawing them (a generator, a dozen small draws) cost more than a tenth of a
    small fit, so each shape's are drawn once."""
    eye = np.concatenate([theta_from_lambda(np.eye(q), diagonal) for q, diagonal in shape] + [np.zeros(0)])
    eta = np.zeros(n_eta)
    if not shape:
        # no random effects: the starts differ only in theta, so they are one point (the
        # same local search ten times over, e.g. generalised least squares with a
        # correlation, whose joint search runs the other starts)
        start = eta.copy()
        start.flags.writeable = False
        return (start,)
    starts = [np.concatenate([s * eye, eta]) for s in _EXTRA_STARTS]
    rng = np.random.default_rng(_MULTISTART_SEED)
    for _ in range(_RANDOM_STARTS):
        parts = []
        for q, diagonal in shape:
            lam = np.tril(rng.standard_normal((q, q)))
            lam[np.diag_indices(q)] = np.abs(lam[np.diag_indices(q)]) * rng.choice([1.0, 3.0, 10.0])
            parts.append(theta_from_lambda(lam, diagonal))
        starts.append(np.concatenate(parts + [eta]))
    for start in starts:
        start.flags.writeable = False
    return tuple(starts)


# ---- one local search ----------------------------------------------------------------------


def _average_information(dev) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The deviance's average-information matrix as the Newton routine's Hessian (a
    factor that is not positive definite at the point counts as a Hessian that is not)."""

    def hessian(x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        try:
            return dev.average_information(x)
        except NotPositiveDefinite as err:
            raise linalg.LinAlgError(str(err)) from None

    return hessian


class _Tracker:
    """Counts iterations and evaluations over all runs of one fit, and records failures."""

    def __init__(self, dev: Deviance, callback: Callable[[int, float], None] | None = None,
                 shift: float = 0.0) -> None:
        self.dev, self.callback, self.shift = dev, callback, shift
        self.n_iter = 0
        self.iteration = 0

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            value, grad = self.dev.value_and_grad(x)
        except NotPositiveDefinite:
            # A trial step far out (an extreme ratio making A numerically singular): tell
            # the line search the step is bad rather than stopping the fit.
            return np.inf, np.zeros(x.size)
        if not np.all(np.isfinite(grad)):
            # The same far out where the random effects reproduce y to rounding (r2 at its
            # floor): a NaN gradient would send L-BFGS-B to an arbitrary bound.
            return np.inf, np.zeros(x.size)
        return value, grad

    def value(self, x: np.ndarray) -> float:
        try:
            return self.dev(x)
        except NotPositiveDefinite:
            return np.inf

    def report(self, value: float) -> None:
        self.iteration += 1
        if self.callback is not None:
            self.callback(self.iteration, value + self.shift)

    def lbfgsb(self, x0: np.ndarray, max_iter: int, tol: float, report: bool = False,
               join: list | None = None):
        """L-BFGS-B from ``x0``; with ``join`` (minima found already) the search stops once
        an iterate comes within ``_SCREEN_JOIN`` of one (relative to its largest entry):
        it is in that minimum's basin, where it finds nothing lower."""
        dev = self.dev
        bounds = optimize.Bounds(dev.lower_bounds(), dev.upper_bounds())
        known = [(x, _SCREEN_JOIN * max(1.0, float(np.max(np.abs(x))))) for x in join or ()]

        def on_iteration(intermediate_result):
            if report:
                self.report(float(intermediate_result.fun))
            if any(np.max(np.abs(intermediate_result.x - x)) < reach for x, reach in known):
                raise StopIteration

        res = optimize.minimize(
            self.value_and_grad, np.clip(x0, dev.lower_bounds(), dev.upper_bounds()), jac=True,
            method="L-BFGS-B", bounds=bounds,
            callback=on_iteration if report or known else None,
            options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-6, "maxcor": 20},
        )
        self.n_iter += res.nit
        return res

    def newton(self, x: np.ndarray, max_iter: int, tol: float):
        """Newton iterations with the average-information Hessian and backtracking.

        Each coordinate of a step may shrink a bounded entry by at most ``_MAX_SHRINK`` so
        the iterates stay strictly inside; reaching a bound (a singular fit) is left to
        L-BFGS-B. Returns ``(x, value, gradient, converged, limited)``.
        """
        dev = self.dev
        lower = dev.lower_bounds()

        def guard(z: np.ndarray, step: np.ndarray, it: int) -> np.ndarray | None:
            # Far from the optimum the average information can be a poor model: a step
            # longer than the parameters themselves (whitened, so of order 1) can throw
            # the iterates onto the plateau of a variance going to infinity, where the
            # deviance is nearly flat. Such steps are shortened to that length.
            longest = np.max(np.abs(step))
            reach = max(1.0, np.max(np.abs(z)))
            if longest > reach:
                step = step * (reach / longest)
            clipped = interior_step(z, step, lower, _MAX_SHRINK)
            if np.any(clipped != step) and it > 3:
                return None  # heading for a bound: L-BFGS-B's job
            return clipped

        res = minimize(self.value_and_grad, _average_information(dev), x,
                       lambda it, value, decrement, newton: decrement < tol * max(1.0, abs(value)) * 1e-2,
                       max_iter=max_iter, value=self.value, guard=guard, armijo=1e-4, max_trials=30,
                       on_step=self.report)
        self.n_iter += res.n_iter
        return res.x, res.value, res.grad, res.converged, res.status == "iteration limit"


def _local(tracker: _Tracker, x0: np.ndarray, max_iter: int, tol: float, report: bool = False,
           join: list | None = None):
    """One local minimisation from ``x0``: Newton (no strata), then L-BFGS-B (stopped on
    reaching ``join``, see :meth:`_Tracker.lbfgsb`)."""
    dev = tracker.dev
    if dev.n_eta == 0:
        x, value, grad, converged, limited = tracker.newton(x0, max_iter, tol)
        if converged or limited:
            return optimize.OptimizeResult(x=x, fun=value, jac=grad, status=int(limited),
                                           message=_NEWTON_MESSAGE, nit=0)
        x0 = x
    return tracker.lbfgsb(x0, max_iter, tol, report=report, join=join)


# ---- safeguards ----------------------------------------------------------------------------


def _columns_below(dev: Deviance) -> list[np.ndarray]:
    """For each parameter: the entries of the same column of its ``L_k`` below it."""
    out = []
    for term, sl in zip(dev.terms, dev.terms.slices):
        rows, cols = term.theta_position
        for j in range(rows.size):
            out.append(sl.start + np.flatnonzero((cols == cols[j]) & (rows > rows[j])))
    out.extend(np.empty(0, dtype=int) for _ in range(dev.n_eta))
    return out


def _escape_start(tracker: _Tracker, x: np.ndarray, value: float) -> np.ndarray | None:
    """A start off the bound from which the deviance is lower, if ``x`` is not a minimum.

    L-BFGS-B stops on a bound whenever the projected gradient vanishes, which includes
    stationary points that are not minima. Where a diagonal entry of ``L`` is 0, the
    deviance depends on the rest of that column only up to its sign, but only one sign
    can be left by raising the diagonal entry: both are tried, with a small step inwards.
    """
    dev = tracker.dev
    lower = dev.lower_bounds()[:dev.n_theta]
    on_bound = np.flatnonzero(np.isfinite(lower) & (x[:dev.n_theta] <= lower))
    below = _columns_below(dev)
    best, best_value = None, value - 1e-10 * max(1.0, abs(value))
    for j in on_bound:
        column = below[j]
        for sign in (1.0, -1.0) if column.size and np.any(x[column] != 0) else (1.0,):
            trial = x.copy()
            trial[column] *= sign
            trial[j] = lower[j] + 1e-3 * max(1.0, np.abs(x[:dev.n_theta]).max())
            trial_value = tracker.value(trial)
            if trial_value < best_value:
                best, best_value = trial, trial_value
    return best


def _face_starts(dev: Deviance, x: np.ndarray) -> list[np.ndarray]:
    """With several terms: starts on the other faces of the boundary near ``x``.

    Two terms, or two effects of one term, can explain the same variation (one factor
    nested in the other, a random slope that mimics an intercept), so the likelihood can
    have a maximum on each face where one of them vanishes. A search that settles on one
    face never visits the other: the deviance is even in each column of ``L_k``, so its
    gradient does not lead off a zero. Two kinds of start, each searched locally (the
    escapes from the bounds then tell whether leaving a face pays):

    - ``x`` with one term's ``L_k`` at 0, for each term not already there;
    - ``x`` with the effects of a term that ``x`` has at 0 raised to the size of its
      largest (a larger step off the bound than the escapes' probe);
    - ``x`` with one column of some ``L_k`` at 0 (one effect gone) and the term's effects
      that ``x`` has at 0 raised to that column's size (swapping which effect vanishes).
    """
    if len(dev.terms) < 2:
        return []
    out = []
    for term, sl in zip(dev.terms, dev.terms.slices):
        theta = x[sl]
        if not np.any(theta != 0.0):
            continue
        face = x.copy()
        face[sl] = 0.0
        out.append(face)
        rows, cols = term.theta_position
        diag = np.flatnonzero(rows == cols)
        if diag.size < 2:
            continue
        zero = diag[theta[diag] == 0.0]
        if zero.size == 0:
            continue
        raised = x.copy()  # the vanished effects back, at the size of the term's largest
        raised[sl.start + zero] = np.abs(theta[diag]).max()
        out.append(raised)
        for j in diag[theta[diag] != 0.0]:  # effect j gone, the vanished ones back at its size
            swapped = theta.copy()
            swapped[cols == cols[j]] = 0.0
            swapped[zero] = abs(theta[j])
            face = x.copy()
            face[sl] = swapped
            out.append(face)
    return out


def _screenable(dev: Deviance) -> bool:
    """One term, one stratum, no ratios: the batched kernel of :mod:`._batched_refit`."""
    return len(dev.terms) == 1 and not dev.n_eta and dev.cp.n_strata == 1 and dev.shift is None


def _starts_batch(dev: Deviance, k: int) -> tuple[OneTermBatch, ResponseProducts]:
    """The batched kernel for ``k`` starts of one fit, and the fit's response ``k`` times.

    Levels that share ``Z_l'WZ_l`` and ``Z_l'WX`` (a balanced design: every subject of
    sleepstudy or Orthodont has the same days or ages) are folded into a few pseudo-levels
    (:class:`._batched_refit.LevelClasses`, the same deviance): an evaluation then costs per
    class, not per level, and with ten starts and their shifted copies the levels' rows
    were half of it.
    """
    classes = LevelClasses.of(dev.cp)
    if classes is None:
        return OneTermBatch(dev.cp, dev.reml), repeated_response(dev.cp, k)
    folded = classes.products(repeated_response(dev.cp, 1))
    return classes.batch(dev.cp, dev.reml), _subset(folded, np.zeros(k, dtype=int))


def _lead(tracker: _Tracker, start: np.ndarray, others: list[np.ndarray]):
    """The first search and the screening of the other starts in one batch.

    The first search's start leads (:meth:`OneTermBatch.fit`'s ``leader``): once it
    settles inside, its answer is the minimum the others join, as the first search's is
    for :func:`_screen_starts`, and they run in lockstep with it instead of after it (a
    small fit's first search cost about a sixth of the fit, the batch's row little).
    Returns the first search's result and the batch's outcome for ``others`` (for
    :func:`_screen_starts`), or ``(None, None)`` when the leader did not settle (the
    engine's search then runs from the start and the others are screened after it).
    """
    dev = tracker.dev
    theta0 = np.array([start[:dev.n_theta]] + [s[:dev.n_theta] for s in others])
    batch, products = _starts_batch(dev, len(theta0))
    with np.errstate(all="ignore"):
        found = batch.fit(products, theta0, join_tol=_SCREEN_JOIN, resume=True, leader=0)
    if not found.settled[0]:
        return None, None
    x = found.theta[0].copy()
    # Settled with no entry held at 0 and every variance clear of the snapping zone of
    # :func:`_snap_to_bounds`: the batch's last step was a Newton step of a positive
    # definite Hessian shorter than 1e-5 (or, where no decrease was left to rounding,
    # 1e-4): lme4's measure (the step, absolute: at least the relative one) is
    # passed, and a polish would only repeat it (:func:`_settled_lead`). Nothing then
    # reads the gradient at the answer (the polish would start from it).
    clean = (not found.at_bound[0].any() and found.scaled_gradient[0] < SCALED_GRADIENT_TOL
             and _clear_of_snap(dev, x))
    value, grad = (tracker.value(x), None) if clean else tracker.value_and_grad(x)
    if not np.isfinite(value):
        return None, None
    tracker.n_iter += int(found.n_iter[0])
    first = optimize.OptimizeResult(x=x, fun=value, jac=grad, status=0, message=_LEAD_MESSAGE,
                                    nit=int(found.n_iter[0]),
                                    lead_scaled=float(found.scaled_gradient[0]) if clean else None)
    return first, BatchFit(*(getattr(found, f.name)[1:] for f in fields(BatchFit)))


def _clear_of_snap(dev: Deviance, x: np.ndarray) -> bool:
    """No bounded entry of ``x`` within :func:`_snap_to_bounds`' reach of its bound."""
    lower = dev.lower_bounds()[:dev.n_theta]
    bounded = np.isfinite(lower)
    return bool(np.all(x[:dev.n_theta][bounded] - lower[bounded] >= _SNAP_REACH))


def _settled_lead(res) -> tuple[np.ndarray, float, bool] | None:
    """The check of a first search that settled cleanly in the batch (:func:`_lead`) and
    that no other start, zero end or escape replaced: its answer, measure and a positive
    definite Hessian, without the polish (on a small fit a tenth of its time). None
    otherwise."""
    scaled = getattr(res, "lead_scaled", None) if res.message == _LEAD_MESSAGE else None
    return None if scaled is None else (res.x, scaled, True)


def _screen_starts(dev: Deviance, starts: list[np.ndarray], best: float,
                   best_x: np.ndarray, ran: BatchFit | None = None) -> list[np.ndarray]:
    """The starts that still need a local search of their own.

    With one term and one stratum the starts run together, in the batched kernel of
    :mod:`._batched_refit` (every numpy call serves all of them, so ten starts cost about
    what one does). A start that settles there at a deviance no lower than ``best`` is
    done: it found a minimum no better than the first search's. One that settles lower is
    handed on from where it settled (the engine's search finishes it with its
    safeguards); one that does not settle (a zero variance on the way, a Hessian that is
    not positive definite) is searched from its own start, as without the screening. A
    start that comes within ``_SCREEN_JOIN`` of ``best_x`` (the first search's answer), or
    whose Newton step lands there, stops: it is in that minimum's basin. ``ran``: the
    batch's outcome for these starts, run already (:func:`_lead`).
    """
    if ran is not None:
        found = ran
    elif not starts or not _screenable(dev):
        return starts
    else:
        theta0 = np.array([s[:dev.n_theta] for s in starts])
        batch, products = _starts_batch(dev, len(starts))
        with np.errstate(all="ignore"):
            found = batch.fit(products, theta0, known=best_x[:dev.n_theta], join_tol=_SCREEN_JOIN, resume=True)
    margin = 1e-10 * max(1.0, abs(best))
    out = []
    for start, settled, joined, value, theta in zip(starts, found.settled, found.joined,
                                                    found.deviance, found.theta):
        if joined:
            continue
        if not settled or not np.isfinite(value):
            out.append(start)
        elif value < best - margin:
            out.append(theta.copy())
    return out


def _search(tracker: _Tracker, res, max_iter: int, tol: float, multistart: bool = True,
            ran: BatchFit | None = None):
    """Improve a first answer: other starts (small problems), the zero end, escapes.
    ``ran``: the batch's outcome for the first of the other starts (:func:`_lead`)."""
    dev = tracker.dev
    starts = []
    if multistart and _is_small(dev):
        starts = _extra_starts(dev) + _face_starts(dev, res.x)
    zero = res.x.copy()
    zero[:dev.n_theta] = 0.0
    zero_value = tracker.value(zero)
    if zero_value < res.fun:
        small = zero.copy()
        small[:dev.n_theta] = 1e-3 * dev.terms.identity_theta()
        starts.append(small)
    if ran is not None:
        n_ran = len(ran.theta)
        others = (_screen_starts(dev, starts[:n_ran], res.fun, res.x, ran)
                  + _screen_starts(dev, starts[n_ran:], res.fun, res.x))
    else:
        others = _screen_starts(dev, starts, res.fun, res.x)
    # deviances the batched screen cannot run (the correlation's joint one) stop each
    # other start's L-BFGS-B on reaching the basin of a minimum found before instead
    joins = [res.x.copy()] if getattr(dev, "joins_other_starts", False) else None
    for other in others:
        retry = _local(tracker, other, max_iter, tol, join=joins)
        if retry.fun < res.fun:
            res = retry
            if joins is not None:
                joins.append(res.x.copy())
    if zero_value < res.fun:
        res = optimize.OptimizeResult(x=zero, fun=zero_value, jac=tracker.value_and_grad(zero)[1],
                                      status=0, message="no random-effects variance", nit=0)
    for _ in range(3):
        escape = _escape_start(tracker, res.x, res.fun)
        if escape is None:
            break
        retry = _local(tracker, escape, max_iter, tol)
        if retry.fun >= res.fun:
            break
        res = retry
    return res


def _snap_to_bounds(tracker: _Tracker, x: np.ndarray, value: float) -> tuple[np.ndarray, float]:
    """Put near-zero bounded ``theta`` entries exactly on their bound when that costs nothing.

    Near a zero variance the deviance is flat (even in that entry), so a quasi-Newton
    method approaches the bound without reaching it. lme4 reports such fits as singular
    with the variance exactly 0; so do we, when the deviance at the bound is not higher
    beyond rounding.
    """
    dev = tracker.dev
    lower = dev.lower_bounds()[:dev.n_theta]
    theta = x[:dev.n_theta]
    near = np.flatnonzero(np.isfinite(lower) & (theta > lower) & (theta - lower < _SNAP_REACH))
    if near.size == 0:
        return x, value
    trial = x.copy()
    trial[near] = lower[near]
    trial_value = tracker.value(trial)
    if trial_value <= value + 1e-12 * max(1.0, abs(value)):
        return trial, trial_value
    return x, value


def _newton_polish(tracker: _Tracker, x: np.ndarray, value: float | None = None,
                   grad: np.ndarray | None = None, max_steps: int = 1,
                   polish_steps: int = 1) -> tuple[np.ndarray, float, bool]:
    """Newton steps on the free parameters, and lme4's convergence measure.

    The Hessian comes from forward differences of the analytic gradient. A step both
    checks convergence (``max |H^{-1} g|``, invariant to rescaling the parameters) and,
    from an L-BFGS-B answer, gains the last digits. A step that leaves the feasible region
    or does not lower the deviance is projected onto the bounds and halved until it does
    (in a flat valley ending on a zero variance the quasi-Newton phase can stop short).
    After each step the measure is taken at the new point with the step's Hessian; the
    steps (at most ``max_steps``) continue while it fails and a step still moves, and at
    least ``polish_steps`` are taken while they improve the last digits. Returns the
    (possibly improved) ``x``, the scaled gradient there and whether the Hessian is
    positive definite.
    """
    dev = tracker.dev
    lower, upper = dev.lower_bounds(), dev.upper_bounds()
    bounded = np.isfinite(lower)
    bounded[dev.n_theta:] = False  # (only variances are held on their bound)
    measured = {}

    def held(z: np.ndarray, g: np.ndarray) -> np.ndarray:
        return bounded & (z <= lower)

    def hessian(z: np.ndarray, g: np.ndarray) -> np.ndarray:
        free = ~held(z, g)
        H = fd_hessian(lambda u: tracker.value_and_grad(u)[1], z, g, free, 1e-6, 1e-2)
        hess = H[np.ix_(free, free)]
        if not np.all(np.isfinite(hess)):
            raise linalg.LinAlgError("the finite-difference Hessian is not finite")
        # lme4's measure, relative for entries above 1: a standard deviation ratio of 5000
        # (a very high intra-class correlation) is not known to 1e-4 absolute, whose
        # deviance changes by less than its own rounding over such a step
        measured.update(hess=hess, free=free, unit=np.maximum(1.0, np.abs(z[free])))
        return H

    def converged(it: int, f: float, decrement: float, newton: np.ndarray) -> bool:
        measured.update(value=f, scaled=float(np.max(np.abs(newton) / measured["unit"])))
        return False  # the step is taken in any case: it gains the last digits

    def accept(t: float, trial: np.ndarray, trial_value: float, trial_grad: np.ndarray) -> bool | None:
        current, scaled, free = measured["value"], measured["scaled"], measured["free"]
        # Near the optimum the decrease (~ g'H^{-1}g / 2) is below the rounding of the
        # deviance itself; then the smaller gradient decides.
        rounding = 1e-13 * max(1.0, abs(current))
        if np.isfinite(trial_value):
            if held(trial, trial_grad)[free].any():  # the step reached a bound: measured at the next step
                if trial_value < current - rounding:
                    return True
            else:
                trial_scaled = float(np.max(np.abs(_solve_pd(measured["hess"], trial_grad[free]))
                                            / measured["unit"]))
                if trial_value <= current or (trial_value <= current + rounding and trial_scaled < scaled):
                    measured["scaled"] = trial_scaled
                    return True
        # already converged: nothing to gain from shorter steps
        return None if scaled < SCALED_GRADIENT_TOL else False

    def stop_after_step(it: int, x_old: np.ndarray, x_new: np.ndarray) -> bool:
        scaled = measured["scaled"]
        return (np.array_equal(x_new, x_old)
                or scaled < SCALED_GRADIENT_TOL and (it >= polish_steps or scaled < 1e-8))

    res = minimize(tracker.value_and_grad, hessian, x, converged, max_iter=max_steps,
                   start=None if value is None or grad is None else (value, grad), held=held,
                   project=lambda z: np.clip(z, lower, upper), accept=accept, max_trials=12,
                   stop_after_step=stop_after_step)
    if res.status == "not positive definite":
        return res.x, float(np.max(np.abs(res.grad[res.free]))), False
    if res.status == "not finite":
        return res.x, np.inf, False
    if res.newton is not None and res.newton.size == 0:  # every entry on its bound
        return res.x, 0.0, True
    return res.x, measured["scaled"], True


def _information_check(tracker: _Tracker, res) -> tuple[np.ndarray, float, bool] | None:
    """lme4's convergence measure with the average-information Hessian, where it is valid.

    For a large problem whose Newton phase converged inside the bounds the finite-
    difference Hessian of :func:`_newton_polish` costs ``n_theta + 1`` gradients (on
    InstEval or 10^6 rows a third of the fit) to confirm what the Newton phase already
    measured: with many levels the observed information is close to the average
    information, the iterates converged quadratically, and no variance is near 0 (where
    the deviance is even in ``L_k`` and a saddle could hide, the full polish runs). Returns
    None when the cheap check does not apply or does not pass.
    """
    dev = tracker.dev
    if dev.n_eta or res.message != _NEWTON_MESSAGE or res.status != 0:
        return None
    if _is_small(dev):
        return None
    x = res.x
    for term, sl in zip(dev.terms, dev.terms.slices):
        rows, cols = term.theta_position
        diag = np.abs(x[sl][rows == cols])
        if diag.min() < _CLEAR_OF_BOUND * max(1.0, np.abs(x[sl]).max()):
            return None
    unit = np.maximum(1.0, np.abs(x))

    def only_if_converged(z: np.ndarray, step: np.ndarray, it: int) -> np.ndarray | None:
        return step if np.max(np.abs(step) / unit) < SCALED_GRADIENT_TOL else None

    # the measure at x, then one more Newton step gains the last digits (what the
    # polish's step did), kept if it does not raise the deviance
    step = minimize(tracker.value_and_grad, _average_information(dev), x, lambda *_: False, max_iter=1,
                    start=(res.fun, res.jac), guard=only_if_converged, armijo=0.0, max_trials=1)
    if step.status != "iteration limit":  # (not positive definite, not converged, or higher)
        return None
    scaled = float(np.max(np.abs(_solve_pd(step.hessian, step.grad)) / unit))
    return (step.x, scaled, True) if scaled < SCALED_GRADIENT_TOL else None


def _settle(tracker: _Tracker, res, polish_steps: int = 1) -> tuple[np.ndarray, float, bool]:
    """Snap near-zero variances onto the bound, then Newton steps and the check.

    Steps continue (up to 10) while the check fails and a step still moves, and at least
    ``polish_steps`` are taken while they improve the last digits.
    """
    x, value = _snap_to_bounds(tracker, res.x, res.fun)
    known = (res.fun, res.jac) if x is res.x and res.jac is not None else (None, None)
    x_new, scaled, pos_def = _newton_polish(tracker, x, *known, max_steps=10, polish_steps=polish_steps)
    # The polish may have walked a variance down towards 0 (a valley ending on the
    # bound): put it there if that costs nothing, and check there.
    snapped, _ = _snap_to_bounds(tracker, x_new, tracker.value(x_new))
    if snapped is not x_new:
        x_new, scaled, pos_def = _newton_polish(tracker, snapped)
    return x_new, scaled, pos_def


# ---- the driver ----------------------------------------------------------------------------


def fit(
    dev: Deviance,
    x0: np.ndarray | None = None,
    max_iter: int = 1000,
    tol: float = 1e-8,
    callback: Callable[[int, float], None] | None = None,
    search: bool = True,
    multistart: bool = True,
) -> tuple[Solution, OptimizerInfo]:
    """Minimise the profiled deviance.

    Parameters
    ----------
    dev : Deviance
    x0 : ndarray, optional
        Start ``(theta, eta)`` in lme4's parametrisation; default a method-of-moments
        estimate (one term) or the identity, and ratios from the OLS residuals.
    max_iter : int
        Iteration limit of each local search (a first search that reaches it ends the fit,
        reported as not converged).
    tol : float
        Relative change of the deviance that stops the quasi-Newton phase.
    callback : callable, optional
        ``callback(iteration, deviance)`` after each iteration of the first search.
    search : bool
        Run the global safeguards (other starts, zero end, escapes). Refits started from
        a nearby optimum (profiles) skip them.
    multistart : bool
        With ``search``, also the other starts of small problems (the costly part: ten
        times a local search). Refits to simulated responses started from the generating
        parameters keep the zero end and the escapes from the bounds but skip them (on
        sleepstudy, Orthodont, Penicillin and small crossed designs the other starts never
        lowered such a refit; the escapes did, from a singular start).

    Returns
    -------
    solution : Solution
        The fit at the optimum, in lme4's parametrisation.
    info : OptimizerInfo
    """
    basis, white, start = _whitened_start(dev, x0)
    shift = 0.0
    if callback is not None:  # report deviances on the caller's scale, not the whitened one
        shift = dev(basis.to_original(start)) - white(start)
    tracker = _Tracker(white, callback, shift)
    first, ran = None, None
    if (search and multistart and callback is None and max_iter >= _MAX_NEWTON and _is_small(white)
            and _screenable(white)):
        first, ran = _lead(tracker, start, _extra_starts(white))
    res = first if first is not None else _local(tracker, start, max_iter, tol, report=True)
    limited = res.status == 1  # max_iter bounds the work: such a run is reported, not retried
    if not limited and search:
        res = _search(tracker, res, max_iter, tol, multistart, ran)
    polish = 5 if dev.n_eta else 1
    if limited:  # max_iter bounds the work: report the check where the search stopped
        x = res.x
        scaled, pos_def = _newton_polish(tracker, x)[1:]
    else:
        checked = _settled_lead(res) if not dev.n_eta else None
        if checked is None:
            checked = _information_check(tracker, res)
        x, scaled, pos_def = checked if checked is not None else _settle(tracker, res, polish)
    if not limited and dev.n_theta and (not pos_def or scaled >= SCALED_GRADIENT_TOL):
        # A saddle or a flat valley near a zero variance (the deviance is even there):
        # restart with the small diagonal entries raised, and keep what is lower (nothing
        # to raise without random effects: generalised least squares with a correlation).
        nudged = x.copy()
        theta = x[:dev.n_theta]
        lower = dev.lower_bounds()[:dev.n_theta]
        small = np.isfinite(lower) & (theta < 0.05 * max(1.0, np.abs(theta).max()))
        nudged[:dev.n_theta][small] = 0.1 * max(1.0, np.abs(theta).max())
        retry = _local(tracker, nudged, max_iter, tol)
        if retry.fun < tracker.value(x):
            x, scaled, pos_def = _settle(tracker, retry, polish)
    # lme4's basis
    original = _Tracker(dev)
    x_orig = basis.to_original(x)
    at_bound_white = np.isfinite(white.lower_bounds()[:dev.n_theta]) & (x[:dev.n_theta] <= 0.0)
    if not limited and at_bound_white.any() and not all(t.diagonal or t.q == 1 for t in dev.terms):
        # Mapped back, a zero is zero only to rounding: polish in lme4's basis from the
        # mapped point with rounding-level entries set to 0 so the zero lands exactly.
        theta = x_orig[:dev.n_theta]
        tiny = np.isfinite(dev.lower_bounds()[:dev.n_theta]) & (np.abs(theta) <= 1e-10 * max(np.abs(theta).max(), 1e-300))
        theta[tiny] = 0.0
        polished = original.lbfgsb(x_orig, max_iter, tol)
        if polished.fun <= original.value(x_orig):
            x_orig = polished.x
        x_orig, scaled, pos_def = _settle(original, optimize.OptimizeResult(
            x=x_orig, fun=original.value(x_orig), jac=None), polish)
    n_iter = tracker.n_iter + original.n_iter
    n_fev = white.n_evaluations + dev.n_evaluations
    # the whitened cross-products and the search's last point are as large as the data's
    # per-level statistics: they go before the solution's point is formed
    del tracker, white
    solution = dev.solution(x_orig)
    theta = x_orig[:dev.n_theta]
    at_bound = np.isfinite(dev.lower_bounds()[:dev.n_theta]) & (theta <= dev.lower_bounds()[:dev.n_theta])
    eta = x_orig[dev.n_theta:dev.n_theta + dev.n_ratios]
    runaway = np.abs(eta) > _RUNAWAY_LOG_RATIO
    converged = bool(not limited and scaled < SCALED_GRADIENT_TOL and pos_def and not runaway.any())
    if limited:
        message = f"{ITERATION_LIMIT} ({res.message})"
    elif runaway.any():
        message = "degenerate residual variances: a stratum's variance ratio runs off to 0 or infinity"
    elif not pos_def:
        message = "the Hessian of the deviance is not positive definite at the optimum"
    elif scaled >= SCALED_GRADIENT_TOL:
        message = f"scaled gradient {scaled:.2g} at the optimum exceeds {SCALED_GRADIENT_TOL:g}"
    else:
        message = "converged: scaled gradient below tolerance"
    info = OptimizerInfo(converged, message, int(n_iter), int(n_fev), float(scaled), at_bound)
    return solution, info


def _whitened_start(dev: Deviance, x0: np.ndarray | None):
    """The whitened basis of the cross-products, the deviance in it and the start there:
    ``x0`` mapped into it, or (None) the moment start of theta (the identity where there
    is none) with the residual parameters' start."""
    basis = Basis(dev.cp)
    white = dev.in_basis(basis.P, basis.xy_scale)
    if x0 is None:
        theta0 = _moment_start(white.cp)
        if theta0 is None:
            theta0 = dev.terms.identity_theta()
        residual = dev.residual_start()
        start = np.concatenate([theta0, _ratio_start(dev.cp) if residual is None else residual])
    else:
        start = basis.from_original(np.asarray(x0, dtype=float))
    return basis, white, start


def local_minimum(dev: Deviance, x0: np.ndarray | None = None, max_iter: int = 1000,
                  tol: float = 1e-8, whitened: np.ndarray | None = None) -> tuple:
    """One local search of :func:`fit` (its whitened basis and start), without the
    safeguards, the settling and the convergence check: ``(x, deviance, x_whitened)``
    where the search stopped, in lme4's basis and in the whitened one.

    For a point that only chooses a start (the correlation's grid, :mod:`._correlation`):
    the Newton steps of the search reach the minimum to the deviance's rounding, and the
    check's finite-difference Hessian (``n_theta + 1`` gradients) would confirm what the
    fit from the chosen start checks again. ``whitened``: the start in the whitened basis
    (instead of ``x0``), e.g. where the last search stopped in its own basis: along the
    correlation's grid the whitened optimum moves less than lme4's."""
    if dev.n_params == 0:
        return np.empty(0), float(dev(np.empty(0))), np.empty(0)
    # (with a whitened start, zeros stand in for x0: the start mapped is not used)
    basis, white, start = _whitened_start(dev, x0 if whitened is None else np.zeros(dev.n_params))
    if whitened is not None:
        start = np.asarray(whitened, dtype=float)
    res = _local(_Tracker(white), start, max_iter, tol)
    # the deviances of the two bases differ by a constant: ``[X y] / xy_scale`` divides
    # ``r2`` by ``s_y^2`` and (REML) ``|X'V^{-1}X|`` by ``prod s_j^2``; ``Z_k P_k`` with
    # theta mapped leaves ``log|M|`` as it is (one evaluation fewer per point)
    log_scale = np.log(basis.xy_scale)
    shift = 2.0 * dev.dof * log_scale[-1] + (2.0 * float(log_scale[:-1].sum()) if dev.reml else 0.0)
    return basis.to_original(res.x), float(res.fun) + shift, res.x


# ---- a stochastic (fixed-probe) deviance ----------------------------------------------------

# Below this Newton decrement full steps are taken without a line search: the predicted
# decrease is then below the fixed-probe objective's own stochastic error (~1e-3), where
# an Armijo test would compare noise.
_QUADRATIC_DECREMENT = 1e-2
# A bounded entry closer than this to its bound is tried exactly on it.
_NEAR_BOUND = 1e-3


def fit_stochastic(dev, x0: np.ndarray | None = None, max_iter: int = 50, tol: float = 1e-6,
                   callback: Callable[[int, float], None] | None = None) -> tuple[object, OptimizerInfo]:
    """Minimise a stochastic deviance (:class:`._iterative.IterativeDeviance`).

    Newton's method with the average-information matrix (exact up to the PCG tolerance)
    and a backtracking line search on the deterministic fixed-probe objective: 6-7
    evaluations from lme4's start on the issue's data at every size. The gradient is an
    estimate (of the expected objective), so the quasi-Newton and finite-difference
    phases of :func:`fit` do not apply. Bounded entries (standard deviations) are kept
    inside by shrinking at most 75% of the way to the bound per step; one that comes
    within 1e-3 of its bound is tried exactly on it and kept there (a zero variance) when
    that does not raise the deviance.

    Parameters
    ----------
    dev : IterativeDeviance
    x0 : ndarray, optional
        Start; default lme4's (identity ``L_k``).
    max_iter : int
    tol : float
        Stop when the Newton decrement ``-g' step`` is below ``tol``.
    callback : callable, optional
        ``callback(iteration, deviance)``.

    Returns
    -------
    (solution, OptimizerInfo)
    """
    lower = dev.lower_bounds()
    x = dev.terms.identity_theta() if x0 is None else np.maximum(np.asarray(x0, dtype=float), lower)
    bounded = np.isfinite(lower)
    start_fev = dev.n_evaluations

    def value(trial: np.ndarray) -> float:
        try:
            return float(dev(trial))
        except (NotPositiveDefinite, linalg.LinAlgError):
            return np.inf

    def snap(z: np.ndarray, step: np.ndarray) -> np.ndarray:
        # Entries driven towards their bound: the deviance is even in a scalar term's
        # theta, so Newton only approaches 0; compare the value exactly on the bound
        # (held there from then on: an entry on its bound is not free).
        near = np.flatnonzero(bounded & (z > lower) & (z - lower < _NEAR_BOUND) & (step < 0))
        if near.size:
            current = value(z)
            for j in near:
                trial = z.copy()
                trial[j] = lower[j]
                trial_value = value(trial)
                if trial_value <= current:
                    z, current = trial, trial_value
        return z

    res = minimize(dev.value_and_grad, lambda z, g: dev.average_information(z), x,
                   lambda it, val, decrement, newton: decrement < tol, max_iter=max_iter, value=value,
                   held=lambda z, g: bounded & (z <= lower),
                   guard=lambda z, step, it: interior_step(z, step, lower, 0.75),
                   armijo=1e-4, max_trials=10, full_step_below=_QUADRATIC_DECREMENT, after_step=snap,
                   on_iteration=callback)
    x, scaled, converged = res.x, res.scaled, res.converged
    if res.converged:
        message = "every variance on its bound" if res.newton.size == 0 else "Newton decrement below tol"
    elif res.status == "not positive definite":
        message = "average-information matrix not positive definite"
    elif res.status == "line search failed":
        message = "line search failed (gradient estimate inconsistent with the objective)"
        converged = res.decrement < 100 * tol
    elif res.status == "iteration limit":
        message = "iteration limit"
    else:
        message = f"Newton's method stopped: {res.status}"
    sol = dev.solution(x)
    info = OptimizerInfo(converged, message, res.n_iter, dev.n_evaluations - start_fev, scaled,
                         bounded & (sol.theta <= lower))
    return sol, info


def finish_from(dev: Deviance, x0: np.ndarray, max_iter: int = 5) -> tuple[Solution, OptimizerInfo] | None:
    """Newton steps with the average-information matrix from a start near the optimum.

    For an exact deviance started at the optimum of its stochastic estimate
    (:func:`fit_stochastic`, ~1e-4 relative away where the deviance is flat): at least one
    Newton step is taken (the start's deviance can be ~1e-5 above the minimum even where
    the convergence measure is met), then the steps stop once lme4's convergence measure
    holds (``max |H^{-1} g| < SCALED_GRADIENT_TOL`` with ``H`` the average information):
    typically two values with gradients. Returns None when that fails (a variance on its
    bound, a matrix not positive definite, no convergence within ``max_iter`` steps): the
    caller then runs the full :func:`fit` from the best point.
    """
    lower = dev.lower_bounds()
    x = np.maximum(np.asarray(x0, dtype=float), lower)
    if dev.n_eta or np.any(np.isfinite(lower) & (x <= lower)):
        return None
    start_fev = dev.n_evaluations if hasattr(dev, "n_evaluations") else 0
    bounded = np.isfinite(lower)

    def value_and_grad(z: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            return dev.value_and_grad(z)
        except (NotPositiveDefinite, linalg.LinAlgError, ValueError):
            return np.inf, np.zeros(z.size)

    def value(trial: np.ndarray) -> float:
        if bounded.any() and not np.all(trial > lower):
            return np.inf  # (not evaluated) only interior points
        try:
            return dev(trial)
        except NotPositiveDefinite:
            return np.inf

    res = minimize(value_and_grad, _average_information(dev), x,
                   lambda it, val, decrement, newton: it > 1 and float(np.max(np.abs(newton))) < SCALED_GRADIENT_TOL,
                   max_iter=max_iter, value=value, armijo=0.0, max_trials=8)
    if not res.converged:
        return None
    info = OptimizerInfo(True, "Newton steps from the iterative optimum", res.n_iter - 1,
                         dev.n_evaluations - start_fev, res.scaled, np.zeros(x.size, dtype=bool))
    return dev.solution(res.x), info
