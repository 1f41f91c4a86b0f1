"""Refits of a one-term model to many responses at once (the parametric bootstrap's hot path).

A bootstrap of a small model spends its time in Python overhead, not arithmetic: one
evaluation of the engine's deviance on sleepstudy (18 levels) is about fifty numpy calls
of a few microseconds each, and a refit needs twenty. Here the ``K`` responses of a batch
are refitted *together*: every array gets a replicate axis, so each numpy call serves all
``K`` refits, and a Newton iteration costs about what one engine evaluation costs.

Scope: one random-effects term (any ``q``, unstructured or diagonal), one residual
stratum, prior weights — the case where overhead dominates. The formulas are those of
:mod:`._deviance` for one term (Bates et al. 2015, JSS 67(1), sec. 3; the gradient as
derived there), with ``M = blockdiag_l(L' A_l L + I)``, ``A_l = Z_l'W Z_l``, on the same
cross-products; the tests check value and gradient against the engine. Each replicate
runs Newton's method with a Hessian from differences of the analytic gradient and a
backtracking line search, from the generating parameters. A diagonal entry of ``L``
with nothing below it in its column that heads for 0 is held there (a singular fit), and
the answer is accepted only if the deviance does not fall moving inwards. A replicate
that does not settle cleanly — not converged in a few iterations, a Hessian that is not
positive definite, another entry heading for 0 (where the engine's escapes are needed) —
is handed back to the engine's optimiser by the caller.

The deviance depends on ``L`` only through ``L L'``, so the iterations run unconstrained
in ``theta`` and the answer is normalised to lme4's (non-negative diagonal) by flipping
column signs, which leaves ``L L'`` unchanged.

With two effects per level the evaluation is written in closed form (the 2 x 2 Cholesky
factor of ``B_l``, :meth:`OneTermBatch._evaluate_q2`), and levels that share their design can be
folded into a few pseudo-levels (:class:`LevelClasses`): both serve the bootstrap and the
other starts of one small fit (:func:`._optimize._lead`), where an evaluation costs its
numpy calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._batched import batched_cholesky, batched_solve_lower, batched_solve_lower_t
from ._crossprod import CrossProducts, ResponseProducts
from ._newton import batched_fd_hessian, batched_shifts, floored_eigenvalues

__all__ = ["OneTermBatch", "BatchFit", "LevelClasses", "repeated_response"]

_LOG_2PI = float(np.log(2.0 * np.pi))
# Newton iterations before a replicate is handed to the engine; a refit from the
# generating parameters needs 3-6 on sleepstudy.
_MAX_NEWTON = 25
# Converged: the Newton step is below this in every theta entry (a relative scale); the
# step is then taken (Newton's error after it is of the order of its square) ...
_STEP_TOL = 1e-5
# ... and no diagonal entry of L is below this fraction of the largest (else: singular
# or nearly so, the engine's job).
_SINGULAR_TOL = 1e-3
# Halvings of a rejected step tried together in one evaluation of the line search (where
# few steps are rejected: an evaluation costs its numpy calls more than its rows).
_HALVINGS = 3
_LINE_ROWS = 12


def _mul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Per-element product of (a, b, ...) and (b, c, ...) arrays (the small axes first)."""
    out = A[:, 0, None] * B[None, 0]
    for k in range(1, A.shape[1]):
        out = out + A[:, k, None] * B[None, k]
    return out


def _t(A: np.ndarray) -> np.ndarray:
    return np.swapaxes(A, 0, 1)


def _gram(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``sum_{a, l} A[a, i, k, l] B[a, j, k, l]``: (i, j, K).

    Written as products and sums over the last (level) axis rather than with einsum, whose
    summation order changes with the shapes: a replicate's result must not depend on which
    other replicates share its batch (n_jobs would change the answers in the last bits).
    """
    out = (A[0][:, None] * B[0][None]).sum(axis=-1)
    for a in range(1, A.shape[0]):
        out = out + (A[a][:, None] * B[a][None]).sum(axis=-1)
    return out


def _combine(A: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """``sum_j A[:, j] gamma[j]`` for (a, j, K, m) and (j, K): (a, K, m)."""
    out = A[:, 0] * gamma[0][:, None]
    for j in range(1, A.shape[1]):
        out = out + A[:, j] * gamma[j][:, None]
    return out


def _cholesky_inverse(C: np.ndarray) -> np.ndarray:
    """``(C C')^{-1}`` from lower factors (q, q, ...) with any trailing axes."""
    q = C.shape[0]
    eye = np.zeros(C.shape)  # (np.broadcast_to costs more than the array)
    for i in range(q):  # (q assignments cost less than two index arrays)
        eye[i, i] = 1.0
    c_inv = batched_solve_lower(C, eye, overwrite=True)
    return _mul(_t(c_inv), c_inv)


@dataclass
class BatchFit:
    """The refits of a batch.

    Attributes
    ----------
    theta : ndarray (K, n_theta)
        lme4's parametrisation (non-negative diagonal).
    deviance, scale : ndarray (K,)
    beta : ndarray (K, p)
    settled : ndarray of bool (K,)
        Converged to an interior optimum here; the others need the engine.
    n_iter : ndarray of int (K,)
    scaled_gradient : ndarray (K,)
        ``max |H^{-1} g|`` at the answer (on the entries off the bound).
    at_bound : ndarray of bool (K, n_theta)
        Entries held at 0 (a singular fit).
    joined : ndarray of bool (K,)
        Stopped on reaching the ``known`` minimum (see :meth:`OneTermBatch.fit`); their
        ``theta`` is where they stopped, their deviance, scale and beta are not evaluated
        (NaN).
    """

    theta: np.ndarray
    deviance: np.ndarray
    scale: np.ndarray
    beta: np.ndarray
    settled: np.ndarray
    n_iter: np.ndarray
    scaled_gradient: np.ndarray
    at_bound: np.ndarray
    joined: np.ndarray


class OneTermBatch:
    """The deviance of a one-term model for ``K`` responses at ``K`` parameter values.

    Parameters
    ----------
    template : CrossProducts
        Cross-products of the rows (one term, one stratum); its response is not used.
    reml : bool
    """

    def __init__(self, template: CrossProducts, reml: bool) -> None:
        if len(template.terms) != 1 or template.n_strata != 1:
            raise ValueError("the batched refit covers one term and one residual stratum")
        term = template.terms[0]
        self.term, self.q, self.p, self.reml = term, term.q, template.p, reml
        p = self.p
        self.rows, self.cols = term.theta_position
        self.n_theta = self.rows.size
        self._diag_q, self._diag_p = np.arange(self.q), np.arange(p)  # (made once: every evaluation indexes them)
        self._slot = self.rows + self.cols  # q = 2: L's entries (0, 0), (1, 0), (1, 1) as 0, 1, 2
        # the entry of theta on the diagonal of each column of L
        self._diag_entry = np.array([np.flatnonzero((self.rows == c) & (self.cols == c))[0] for c in range(self.q)])
        self.A = template.diag[0][0][:, :, None, :]  # (q, q, 1, m)
        self.ZX = template.zxy[0][0][:, :p, None, :]  # (q, p, 1, m)
        self.XX = template.xyxy[0][:p, :p]
        self.n = template.n
        self.dof = self.n - p if reml else self.n
        self.sum_log_w = float(template.sum_log_weights[0])
        # Multiplicity of each level in log|M| (None: 1). A level may stand for several
        # levels of the data that share Z_l'WZ_l and Z_l'WX (:mod:`._many`'s reduction):
        # their y-parts enter quadratically and are folded into the levels' data.
        self.level_weights: np.ndarray | None = None

    def lams(self, theta: np.ndarray) -> np.ndarray:
        """``L`` of each replicate as a (q, q, K, 1) array."""
        L = np.zeros((self.q, self.q, theta.shape[0], 1))
        L[self.rows, self.cols, :, 0] = theta.T
        return L

    def evaluate(self, theta: np.ndarray, products: ResponseProducts, gradient: bool = True):
        """Deviance (K,), and its gradient (K, n_theta), scale and beta at ``theta`` (K, n_theta).

        ``products`` holds the ``K`` responses (their ``Z'Wy``, ``X'Wy``, ``y'Wy``).
        """
        if self.q == 2:
            return self._evaluate_q2(theta, products, gradient)
        q, p = self.q, self.p
        K = theta.shape[0]
        L = self.lams(theta)
        Lt = _t(L)
        ZY = products.zy[0][0][:, None]  # (q, 1, K, m)
        ZXY = np.empty((q, p + 1, K, self.A.shape[-1]))
        ZXY[:, :p] = self.ZX
        ZXY[:, p:] = ZY
        LA = _mul(Lt, self.A)  # L' A_l: (q, q, K, m)
        B = _mul(LA, L)
        dq = self._diag_q
        B[dq, dq] += 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            C = batched_cholesky(B)
            log_diag = np.log(C[dq, dq])
            if self.level_weights is not None:
                log_diag = log_diag * self.level_weights
            logdet_m = 2.0 * log_diag.sum(axis=-1).sum(axis=0)
        w = batched_solve_lower(C, _mul(Lt, ZXY), overwrite=True)  # (q, p+1, K, m)
        G = _gram(w, w)
        dev, beta, r2, chol_a = self._profiled(G, logdet_m, products)
        if not gradient:
            return dev, None, r2 / self.dof, beta.T
        V = batched_solve_lower_t(C, w, overwrite=True)  # M^{-1} L' Z'[X y]
        gamma = np.concatenate([-beta, np.ones((1, K))])  # (p+1, K)
        u = _combine(V, gamma)
        R = ZXY - _mul(self.A, _mul(L, V))
        e = _combine(R, gamma)
        sigma = _cholesky_inverse(C)  # B_l^{-1}
        dlogdet = _mul(sigma, LA)
        if self.level_weights is not None:
            dlogdet = dlogdet * self.level_weights
        g = 2.0 * _t(dlogdet.sum(axis=-1))  # d log|M| / dL, indexed [a, c]
        g -= (2.0 * self.dof / r2) * (e[:, None] * u[None]).sum(axis=-1)
        if self.reml:
            a_inv = _cholesky_inverse(chol_a)  # (p, p, K)
            RA = _mul(R[:, :p], a_inv[:, :, :, None])  # R_x A^{-1}: (q, p, K, m)
            g -= 2.0 * _gram(_t(RA), _t(V[:, :p]))
        grad = g[self.rows, self.cols].T
        return dev, np.where(np.isfinite(grad), grad, np.nan), r2 / self.dof, beta.T

    def _profiled(self, G: np.ndarray, logdet_m: np.ndarray, products: ResponseProducts):
        """The deviance (K,), beta (p, K), the residual sum of squares r2 (K,) and the
        Cholesky factor of the fixed effects' system (p, p, K), from ``G`` (p+1, p+1, K),
        ``sum_l [Z_l'X Z_l'y]' L M_l^{-1} L' [Z_l'X Z_l'y]``, and ``log|M|`` (K,)."""
        p, K = self.p, G.shape[-1]
        F = np.empty((p + 1, p + 1, K))
        F[:p, :p] = self.XX[:, :, None]
        F[:p, p] = F[p, :p] = products.xy[0]
        F[p, p] = products.yy[0]
        F -= G
        with np.errstate(invalid="ignore", divide="ignore"):
            chol_a = batched_cholesky(F[:p, :p])
            beta = batched_solve_lower_t(chol_a, batched_solve_lower(chol_a, F[:p, p]))
            r2 = F[p, p] - (F[:p, p] * beta).sum(axis=0)
            r2 = np.maximum(r2, np.finfo(float).tiny)
            dev = logdet_m + self.dof * (1.0 + _LOG_2PI + np.log(r2 / self.dof)) - self.sum_log_w
            if self.reml:
                dev += 2.0 * np.log(chol_a[self._diag_p, self._diag_p]).sum(axis=0)
        dev = np.where(np.isfinite(dev), dev, np.inf)
        return dev, beta, r2, chol_a

    def _evaluate_q2(self, theta: np.ndarray, products: ResponseProducts, gradient: bool):
        """:meth:`evaluate` for two effects per level, in closed form.

        The same deviance and gradient, with ``L = [[a, 0], [b, c]]``: ``B_l = L'A_lL + I``
        is factored by its 2 x 2 Cholesky factor written out (the general path's loops over
        columns unrolled; the adjugate lost digits where ``B_l`` has one very large
        eigenvalue), and the gradient's two
        quadratic parts are one sum, ``-2 sum_l R_l Phi V_l'`` with ``Phi = (dof / r2)
        gamma gamma' + [A^{-1} 0; 0 0]`` (REML) and ``R_l = Z_l'[X y] - A_l L V_l``,
        ``V_l = B_l^{-1} L' Z_l'[X y]``, ``gamma = (-beta, 1)``: with a folded design's few
        (pseudo-)levels an evaluation costs its numpy calls, and this form has a third
        fewer of them. Every product is per level and every sum over levels is along the
        last axis, as in :meth:`evaluate` (a replicate's result does not depend on its
        batch).
        """
        p = self.p
        K = theta.shape[0]
        ent = np.zeros((3, K, 1))  # a, b, c: L's entries (0, 0), (1, 0), (1, 1)
        ent[self._slot, :, 0] = theta.T
        a, b, c = ent
        A00, A01, A11 = self.A[0, 0, 0], self.A[0, 1, 0], self.A[1, 1, 0]  # (m,)
        m = A00.shape[-1]
        la00, la01 = a * A00 + b * A01, a * A01 + b * A11  # L'A_l: (K, m)
        la10, la11 = c * A01, c * A11
        b00 = la00 * a + la01 * b + 1.0  # B_l
        b01 = la01 * c
        b11 = la11 * c + 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            # B_l = C C' by its 2 x 2 Cholesky factor, as the general path factors it: with
            # one large and one unit eigenvalue (x nearly constant within levels, large
            # theta) the adjugate's products of large numbers cancel where C's do not
            c00 = np.sqrt(b00)
            c10 = b01 / c00
            c11 = np.sqrt(b11 - c10 * c10)  # (positive definite: only rounding fails: NaN)
            log_det = 2.0 * (np.log(c00) + np.log(c11))
            if self.level_weights is not None:
                log_det = log_det * self.level_weights
            logdet_m = log_det.sum(axis=-1)
            r00, r11 = 1.0 / c00, 1.0 / c11
            r10 = -c10 * r00 * r11  # C^{-1} = [[r00, 0], [r10, r11]]
            i00, i01, i11 = r00 * r00 + r10 * r10, r10 * r11, r11 * r11  # B_l^{-1} = C^-T C^-1
        Z0, Z1 = np.empty((p + 1, K, m)), np.empty((p + 1, K, m))  # rows of Z_l'[X y]
        Z0[:p], Z1[:p] = self.ZX[0], self.ZX[1]
        Z0[p], Z1[p] = products.zy[0][0]
        H0, H1 = a * Z0 + b * Z1, c * Z1  # L' Z_l'[X y]
        W0, W1 = r00 * H0, r10 * H0 + r11 * H1  # C^{-1} L' Z_l'[X y]
        V1 = r11 * W1  # B_l^{-1} L' Z_l'[X y] = C^{-T} W
        V0 = r00 * W0 + r10 * W1
        G = (W0[:, None] * W0[None] + W1[:, None] * W1[None]).sum(axis=-1)
        dev, beta, r2, chol_a = self._profiled(G, logdet_m, products)
        if not gradient:
            return dev, None, r2 / self.dof, beta.T
        gamma = np.concatenate([-beta, np.ones((1, K))])  # (p+1, K)
        phi = (self.dof / r2) * (gamma[:, None] * gamma[None])  # (p+1, p+1, K)
        if self.reml:
            phi[:p, :p] += _cholesky_inverse(chol_a)
        W0, W1 = a * V0, b * V0 + c * V1  # L V_l
        R0, R1 = Z0 - (A00 * W0 + A01 * W1), Z1 - (A01 * W0 + A11 * W1)
        RP0 = (R0[:, None] * phi[:, :, :, None]).sum(axis=0)  # R_l Phi: (p+1, K, m)
        RP1 = (R1[:, None] * phi[:, :, :, None]).sum(axis=0)
        # d log|M| / dL = 2 sum_l A_l L B_l^{-1}, entries (0, 0), (1, 0), (1, 1)
        D = np.stack([la00 * i00 + la10 * i01, la01 * i00 + la11 * i01, la01 * i01 + la11 * i11])
        if self.level_weights is not None:
            D = D * self.level_weights
        Q = np.stack([(RP0 * V0).sum(axis=-1).sum(axis=0), (RP1 * V0).sum(axis=-1).sum(axis=0),
                      (RP1 * V1).sum(axis=-1).sum(axis=0)])  # (3, K)
        g = 2.0 * (D.sum(axis=-1) - Q)
        grad = g[self._slot].T
        return dev, np.where(np.isfinite(grad), grad, np.nan), r2 / self.dof, beta.T

    def _with_hessian(self, x: np.ndarray, products: ResponseProducts, owners: np.ndarray):
        """Deviance, gradient and Hessian (K, nt, nt) at ``x`` (K, nt), ``x[i]`` a point of
        response ``owners[i]`` of ``products``, in one evaluation.

        The Hessian is from forward differences of the analytic gradient (steps relative
        to the entries): ``x`` and its ``nt`` shifted copies go through :meth:`evaluate`
        together, since an evaluation costs mostly its numpy calls, not its rows.
        """
        K, nt = x.shape
        points, h = batched_shifts(x, with_center=True)  # (nt + 1, K, nt): x, then its shifts
        value, grad = self.evaluate(points.reshape(-1, nt), _subset(products, np.tile(owners, nt + 1)))[:2]
        value, grad = value[:K], grad.reshape(nt + 1, K, nt)
        return value, grad[0], batched_fd_hessian(grad[1:], grad[0], h)

    def normalised(self, theta: np.ndarray) -> np.ndarray:
        """The same ``L L'`` with a non-negative diagonal (columns flipped)."""
        signs = np.where(theta[:, self._diag_entry] < 0, -1.0, 1.0)  # (K, q): each column's
        return theta * signs[:, self.cols]

    def fit(self, products: ResponseProducts, theta0: np.ndarray, max_iter: int = _MAX_NEWTON,
            known: np.ndarray | None = None, join_tol: float = 1e-3, resume: bool = False,
            leader: int | None = None) -> BatchFit:
        """Newton's method for every response from ``theta0`` (n_theta,) or from a start
        of its own (``theta0`` of shape (K, n_theta)), at most ``max_iter`` iterations (and
        at most 25).

        A diagonal entry of ``L`` with nothing below it in its column (the last one of an
        unstructured term, any of a diagonal term) that heads for 0 is put there and held
        (a singular fit: the deviance is even in that entry, so the optimum is on the
        bound when the curvature there is not negative, which is checked at the end).
        Other entries heading for 0 are left to the engine.

        ``known`` (n_theta,), a minimum found already (several starts of one fit), or
        (K, n_theta), one per response (other starts of many fits): a
        replicate that comes within 1e-4 of it (relative, in ``L L'``'s terms) stops there,
        reported with ``joined`` set (Newton's method from so close converges to it);
        ``join_tol`` sets "within" (relative, default 1e-3). A Newton step (positive definite
        Hessian) that lands within ``join_tol`` of it joins as well.

        ``resume``: a replicate whose held entry turns out not to be a minimum on the bound
        (the deviance falls moving inwards) continues once, from its point with the held
        entries raised to a tenth of the largest entry (as the engine's restart from a
        saddle), instead of being reported unsettled; with ``known``, for the screening of
        the other starts, whose descent this continues.

        ``leader`` (without ``known``): the replicate whose answer is the known minimum of
        the others once it settles (none of its free entries near 0), so that a fit's
        first search runs in the same batch as its other starts; it never joins. Until
        then the others run on their own. Its answer is a minimum only if it is reported
        settled (a held entry passes the check above): otherwise the others' joins are
        void, and the caller screens them again.
        """
        K = products.n_responses
        nt = self.n_theta
        diagonal = self.rows == self.cols
        below = np.array([np.any((self.cols == c) & (self.rows > r)) for r, c in zip(self.rows, self.cols)])
        fixable = diagonal & ~below if self.term.diagonal else diagonal & (self.cols == self.q - 1)
        theta0 = np.asarray(theta0, dtype=float)
        known_given = known
        x = np.tile(theta0, (K, 1)) if theta0.ndim == 1 else theta0.copy()
        fixed = np.zeros((K, nt), dtype=bool)
        active = np.ones(K, dtype=bool)
        settled = np.zeros(K, dtype=bool)
        n_iter = np.zeros(K, dtype=int)
        scaled = np.full(K, np.inf)
        value, grad, hess = self._with_hessian(x, products, np.arange(K))
        eye = np.eye(nt, dtype=bool)
        joined = np.zeros(K, dtype=bool)
        if known is not None:  # (n_theta,) for every response, or (K, n_theta) one each
            known = self.normalised(np.atleast_2d(np.asarray(known, dtype=float)))
            reach_known = np.maximum(1.0, np.abs(known).max(axis=1))
        # Each replicate alternates Newton steps (at a point with its value, gradient and
        # Hessian) and the backtracking line search along the step; the replicates run
        # their own course, so that one evaluation serves every replicate's next event
        # (a first trial, further halvings, a re-evaluation at held entries) instead of
        # every replicate waiting for the slowest line search of an iteration.
        budget = min(max_iter, _MAX_NEWTON)
        searching = np.zeros(K, dtype=bool)  # in a line search (else at a point)
        ls_x, ls_step = np.zeros((K, nt)), np.zeros((K, nt))
        ls_value, ls_slope, ls_t = np.zeros(K), np.zeros(K), np.ones(K)
        ls_first = np.zeros(K, dtype=bool)
        ls_pos_def, ls_size = np.zeros(K, dtype=bool), np.zeros(K)
        while True:
            at_point = active & ~searching & (n_iter < budget)
            if known is not None and at_point.any():
                pidx = np.flatnonzero(at_point)
                kn = known if known.shape[0] == 1 else known[pidx]
                rk = reach_known if known.shape[0] == 1 else reach_known[pidx]
                near = pidx[np.abs(self.normalised(x[pidx]) - kn).max(axis=1) < join_tol * rk]
                joined[near] = True
                active[near] = False
                at_point[near] = False
            idx = np.flatnonzero(at_point)
            hidx = np.empty(0, dtype=int)
            if idx.size:
                # (the masks and index updates below are skipped where they select nothing:
                # on a small fit this block's numpy calls cost about what an evaluation does)
                xa, fa = x[idx], fixed[idx]
                any_held = fa.any()
                ga, H = grad[idx], hess[idx]
                if any_held:
                    ga = np.where(fa, 0.0, ga)
                    held = fa[:, :, None] | fa[:, None, :]
                    H = np.where(held, np.where(eye, 1.0, 0.0), H)  # held entries do not move
                ok = np.isfinite(H).all(axis=(1, 2)) & np.isfinite(ga).all(axis=1)
                all_ok = ok.all()
                if not all_ok:
                    active[idx[~ok]] = False
                vals, vecs = np.linalg.eigh(H if all_ok else np.where(ok[:, None, None], H, np.eye(nt)))
                pos_def = ok & (vals > 0).all(axis=1)
                # Where the Hessian is not positive definite (far from the optimum, or a flat
                # direction near a zero variance), a descent step with |eigenvalues| floored.
                if not pos_def.all():
                    vals = np.where(pos_def[:, None], vals, floored_eigenvalues(vals))
                coef = (np.swapaxes(vecs, 1, 2) @ ga[:, :, None])[:, :, 0] / vals
                step = -(vecs @ coef[:, :, None])[:, :, 0]
                if not all_ok:
                    step[~ok] = 0.0
                size = np.abs(step).max(axis=1)
                n_iter[idx] += 1
                if known is not None:
                    # A Newton step (positive definite Hessian) that lands next to the known
                    # minimum: the quadratic model here has its minimum there, the start has
                    # entered that minimum's basin (one iteration before the test above).
                    kn = known if known.shape[0] == 1 else known[idx]
                    rk = reach_known if known.shape[0] == 1 else reach_known[idx]
                    lands = pos_def & (np.abs(self.normalised(xa + step) - kn).max(axis=1) < join_tol * rk)
                    joined[idx[lands]] = True
                    x[idx[lands]] = xa[lands] + step[lands]  # reported where the step lands
                    active[idx[lands]] = False
                    pos_def = pos_def & ~lands
                    ok = ok & ~lands
                done = pos_def & (size < _STEP_TOL)
                any_done = done.any()
                if any_done:
                    didx = idx[done]
                    x[didx] += step[done]
                    scaled[didx] = size[done]
                    settled[didx] = True
                    active[didx] = False
                # Heading for a zero variance (Newton's method slows down to linear
                # convergence there): hold a fixable entry at 0, else leave it to the engine.
                absx = np.abs(xa)
                reach = np.maximum(absx.max(axis=1, keepdims=True), 1e-300)
                small = diagonal & (absx < _SINGULAR_TOL * reach)
                if any_held:
                    small &= ~fa
                if any_done:
                    small &= ~done[:, None]
                move = ok & ~done
                if small.any():
                    to_engine = (small & ~fixable).any(axis=1)
                    active[idx[to_engine]] = False
                    to_hold = (small & fixable).any(axis=1) & ~to_engine
                    hidx = idx[to_hold]
                    x[hidx] = np.where(small[to_hold] & fixable, 0.0, x[hidx])
                    fixed[hidx] |= small[to_hold] & fixable
                    move &= ~to_engine & ~to_hold
                midx = idx[move]
                searching[midx] = True
                ls_first[midx] = True
                ls_x[midx], ls_step[midx], ls_value[midx] = xa[move], step[move], value[midx]
                ls_slope[midx] = (ga[move] * step[move]).sum(axis=1)
                ls_t[midx] = 1.0
                ls_pos_def[midx], ls_size[midx] = pos_def[move], size[move]
            if leader is not None and known is None and settled[leader]:
                lead = self.normalised(x[leader:leader + 1])
                if not np.any(diagonal & ~fixed[leader] & (lead[0] < _SINGULAR_TOL * max(np.abs(lead).max(), 1e-300))):
                    known, reach_known = lead, np.maximum(1.0, np.abs(lead).max(axis=1))
            # Backtracking (Armijo): the full step first; where it fails, the next
            # _HALVINGS halvings at once (the largest that passes is the one a sequential
            # search would take). Each trial comes with the Hessian's shifted gradients,
            # so an accepted point is ready for its next step.
            sidx = np.flatnonzero(searching)
            if sidx.size == 0 and hidx.size == 0:
                break
            back = sidx[~ls_first[sidx]]
            n_t = 1
            if back.size:  # (within the rows of a trial per replicate, or of a dozen)
                n_t = min(max((max(K, _LINE_ROWS) - hidx.size - (sidx.size - back.size)) // back.size, 1),
                          _HALVINGS)
            if n_t == 1:  # one trial per replicate, in the order of sidx (the usual case)
                rows_s, t_rows = sidx, ls_t[sidx]
            else:
                lengths = np.where(ls_first[sidx][None, :], np.arange(n_t)[:, None] == 0,
                                   0.5 ** np.arange(n_t)[:, None])
                tt = ls_t[sidx][None, :] * lengths  # (n_t, searching); 0: no trial
                tri, tcol = np.nonzero(tt.T > 0)  # per replicate in order, its lengths
                rows_s = sidx[tri]
                t_rows = tt.T[tri, tcol]
            trials = ls_x[rows_s] + t_rows[:, None] * ls_step[rows_s]
            nh = hidx.size
            if nh:
                points, owners = np.concatenate([x[hidx], trials]), np.concatenate([hidx, rows_s])
            else:
                points, owners = trials, rows_s
            pv, pg, ph = self._with_hessian(points, products, owners)
            if nh:
                value[hidx], grad[hidx], hess[hidx] = pv[:nh], pg[:nh], ph[:nh]
            tv, tg, th = pv[nh:], pg[nh:], ph[nh:]
            good = (tv <= ls_value[rows_s] + 1e-4 * t_rows * ls_slope[rows_s]) & (t_rows >= 2.0 ** -19)
            if n_t == 1:
                hit, pick = good, np.flatnonzero(good)
            else:
                # the first (largest) length that passes, per replicate
                goodm = np.zeros(tt.T.shape, dtype=bool)
                goodm[tri, tcol] = good
                hit = goodm.any(axis=1)
                first = np.argmax(goodm, axis=1)
                row_of = np.full(tt.T.shape, -1)
                row_of[tri, tcol] = np.arange(tri.size)
                pick = row_of[np.flatnonzero(hit), first[hit]]
            acc = sidx[hit]
            x[acc], value[acc], grad[acc], hess[acc] = trials[pick], tv[pick], tg[pick], th[pick]
            searching[acc] = False
            ls_first[sidx] = False
            if hit.all():
                continue
            missed = sidx[~hit]
            ls_t[missed] *= 0.5 if n_t == 1 else 0.5 ** (tt.T[~hit] > 0).sum(axis=1)
            # No decrease along a Newton step of a positive definite Hessian: the decrease
            # is below the rounding of the deviance, so the point is the optimum to
            # rounding when the step is already small; otherwise the engine takes over.
            stuck = missed[ls_t[missed] < 2.0 ** -19]
            if stuck.size:
                searching[stuck] = False
                active[stuck] = False
                small_step = stuck[ls_pos_def[stuck] & (ls_size[stuck] < 1e-4)]
                settled[small_step] = True
                scaled[small_step] = ls_size[small_step]
        # A held entry is a minimum on the bound only if the deviance does not fall
        # moving inwards: its gradient just inside is not negative (it is 0 at the bound).
        escaping = np.zeros(K, dtype=bool)
        for j in np.flatnonzero(fixable):
            check = np.flatnonzero(settled & fixed[:, j])
            if check.size:
                inside = x[check].copy()
                inside[:, j] = 1e-4 * np.maximum(np.abs(inside).max(axis=1), 1.0)
                g_in = self.evaluate(inside, _subset(products, check))[1][:, j]
                settled[check[~(g_in >= 0.0)]] = False
                escaping[check[~(g_in >= 0.0)]] = True
        theta = self.normalised(x)
        # The final evaluation leaves out the replicates that joined ``known`` (the
        # screening of the other starts drops them unread): NaN there.
        value, scale, beta = np.full(K, np.nan), np.full(K, np.nan), np.full((K, self.p), np.nan)
        rest = np.flatnonzero(~joined)
        if rest.size:
            value[rest], _, scale[rest], beta[rest] = self.evaluate(theta[rest], _subset(products, rest),
                                                                    gradient=False)
        reach = np.maximum(np.max(np.abs(theta), axis=1), 1e-300)[:, None]
        near_zero = diagonal & (theta < _SINGULAR_TOL * reach) & ~fixed
        settled &= ~near_zero.any(axis=1) & np.isfinite(value) & ~joined
        out = BatchFit(theta, value, scale, beta, settled, n_iter, scaled, fixed, joined)
        again = np.flatnonzero(escaping & ~joined) if resume else np.empty(0, dtype=int)
        if leader is not None:  # the leader is handed back as it is, not resumed
            again = again[again != leader]
            known_given = None if known is None else known[0]
        if again.size:
            start = x[again].copy()
            start[fixed[again]] = 0.0
            raised = np.broadcast_to(0.1 * np.maximum(np.abs(start).max(axis=1), 1.0)[:, None], start.shape)
            start[fixed[again]] = raised[fixed[again]]
            if known_given is not None and np.ndim(known_given) == 2:
                known_given = np.asarray(known_given)[again]
            more = self.fit(_subset(products, again), start, max_iter, known_given, join_tol)
            for name in ("theta", "deviance", "scale", "beta", "settled", "scaled_gradient", "at_bound", "joined"):
                getattr(out, name)[again] = getattr(more, name)
            out.n_iter[again] += more.n_iter
        return out


# ---- levels that share their design ---------------------------------------------------------


@dataclass
class LevelClasses:
    """Levels with identical ``Z_l'WZ_l`` and ``Z_l'WX`` (a balanced design: every donor
    has the same covariate values), folded into a few pseudo-levels.

    For a one-term model the deviance and its gradient depend on the levels through
    ``log|M_l|`` and sums over levels of quadratic forms in ``[Z_l'WX, Z_l'Wy]``. For the
    ``n_c`` levels of a class (one ``A_c``, one ``Z'WX_c``) those sums equal the sums over
    ``1 + q`` pseudo-levels: ``sqrt(n_c) [Z'WX_c, ybar_c]`` with ``log|M|`` counted
    ``n_c`` times, and ``[0, d_a]`` (``a = 1..q``, ``log|M|`` not counted) where
    ``sum_a d_a d_a' = sum_l (Z_l'Wy - ybar_c)(Z_l'Wy - ybar_c)'`` (the cross terms vanish
    about the class mean). The evaluation then costs per class, not per level.

    Attributes
    ----------
    members : list of int ndarrays
        The levels of each class.
    A, ZX : ndarrays (q, q, 1, m') and (q, p, 1, m')
        The pseudo-levels' ``Z'WZ`` and ``Z'WX`` (the batched kernel's layout).
    weights : ndarray (m',)
        Multiplicity of each pseudo-level in ``log|M|``.
    """

    members: list
    A: np.ndarray
    ZX: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, template: CrossProducts) -> "LevelClasses | None":
        """The classes of a one-term template; None when folding saves nothing."""
        p = template.p
        A, ZX = template.diag[0][0], template.zxy[0][0][:, :p]
        q, m = A.shape[0], A.shape[-1]
        keys = np.concatenate([A.reshape(q * q, m), ZX.reshape(q * p, m)]).T
        # the classes in the lexicographic order of their keys: np.unique's (axis=0), at
        # less than half its cost
        order = np.lexsort(keys.T[::-1])
        sorted_keys = keys[order]
        new = np.empty(m, dtype=bool)
        new[:1] = True
        new[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)
        labels = np.cumsum(new) - 1
        inverse = np.empty(m, dtype=int)
        inverse[order] = labels
        sizes = np.bincount(labels)
        if int(np.where(sizes > 1, 1 + q, 1).sum()) >= m:
            return None
        members = [np.flatnonzero(inverse == c) for c in range(sizes.size)]
        As, ZXs, weights = [], [], []
        for idx in members:
            first, n_c = idx[0], idx.size
            As.append(A[:, :, first])
            ZXs.append(np.sqrt(n_c) * ZX[:, :, first])
            weights.append(float(n_c))
            if n_c > 1:
                for _ in range(q):
                    As.append(A[:, :, first])
                    ZXs.append(np.zeros((q, p)))
                    weights.append(0.0)
        return cls(members, np.stack(As, axis=-1)[:, :, None], np.stack(ZXs, axis=-1)[:, :, None],
                   np.array(weights))

    def batch(self, template: CrossProducts, reml: bool) -> OneTermBatch:
        """The batched kernel on the pseudo-levels."""
        batch = OneTermBatch(template, reml)
        batch.A, batch.ZX, batch.level_weights = self.A, self.ZX, self.weights
        return batch

    def products(self, products: ResponseProducts) -> ResponseProducts:
        """The responses' ``Z'Wy`` on the pseudo-levels."""
        zy = products.zy[0][0]  # (q, K, m)
        q, K = zy.shape[0], zy.shape[1]
        out = np.empty((q, K, self.weights.size))
        at = 0
        for idx in self.members:
            part = zy[:, :, idx]
            mean = part.mean(axis=-1)
            out[:, :, at] = np.sqrt(idx.size) * mean
            at += 1
            if idx.size > 1:
                dev = part - mean[:, :, None]
                D = np.einsum("akl,bkl->kab", dev, dev)
                vals, vecs = np.linalg.eigh(D)
                d = vecs * np.sqrt(np.maximum(vals, 0.0))[:, None, :]  # (K, q, a)
                out[:, :, at:at + q] = np.transpose(d, (1, 0, 2))
                at += q
        return ResponseProducts((out[None],), products.xy, products.yy)


def repeated_response(cp: CrossProducts, k: int) -> ResponseProducts:
    """The response of ``cp`` as ``k`` identical responses (several starts of one fit)."""
    p = cp.p
    zy = tuple(np.repeat(z[:, :, p:p + 1, :], k, axis=2) for z in cp.zxy)
    return ResponseProducts(zy, np.repeat(cp.xyxy[:, :p, p:p + 1], k, axis=2),
                            np.repeat(cp.xyxy[:, p, p][:, None], k, axis=1))


def _subset(products: ResponseProducts, idx: np.ndarray) -> ResponseProducts:
    """The products of some of the responses."""
    return ResponseProducts(tuple(z[:, :, idx] for z in products.zy), products.xy[:, :, idx],
                            products.yy[:, idx])
