"""Profiled deviance of the single-factor linear mixed model, its gradient and the BLUPs.

Notation follows Bates, Maechler, Bolker & Walker (2015), "Fitting linear mixed-effects
models using lme4", JSS 67(1), sec. 3: ``cov_re = scale * L L'`` with ``L`` (``lam``) lower
triangular, ``theta`` its free entries (lower triangle column by column, lme4's order).
Per group ``T_i = L' S_i L + I`` with ``S_i = Z_i'Z_i`` and Cholesky ``T_i = C_i C_i'``.
The fixed effects and the scale are profiled out, leaving a function of ``theta`` alone.

All per-group arrays carry the group index on the last axis and every per-group matrix
operation below is written as a loop over the (small) dimension ``q`` acting on ``(m,)``
rows: for q <= 4 this is an order of magnitude faster than stacked LAPACK calls, whose
cost is dominated by per-matrix overhead.

Gradient (derived for this module; checked against finite differences in the tests):
with ``E`` the unit matrix of entry (r, c) of ``L``,

* ``d log|T_i|      = 2 (S_i L T_i^{-1})[r, c]``,
* ``d r2            = -2 sum_i (Z_i' e_i)[r] u_i[c]`` (envelope theorem: r2 is a minimum
  over beta and u; ``e_i`` the conditional residuals, ``u_i`` the spherical modes),
* ``d log|A|        = -2 sum_i ((I - S_i L H_i) K_i H_i')[r, c]`` with
  ``H_i = T_i^{-1} L'``, ``K_i = Z_i'X_i A^{-1} X_i'Z_i`` (REML only).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import linalg
from scipy.linalg import lapack

from ._stats import GroupStats

__all__ = [
    "batched_cholesky",
    "batched_cholesky_inverse",
    "batched_matmul",
    "batched_solve_lower",
    "batched_solve_lower_t",
    "ProfiledDeviance",
    "Solution",
    "lambda_from_theta",
    "theta_from_lambda",
    "theta_lower_bounds",
    "theta_index",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


@functools.lru_cache(maxsize=64)
def theta_index(q: int, diagonal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices in ``L`` of each entry of ``theta`` (lme4's order)."""
    if diagonal:
        rows = cols = np.arange(q)
    else:
        cols, rows = np.triu_indices(q)  # upper triangle row-major == lower triangle column-major
    rows.flags.writeable = cols.flags.writeable = False  # cached: shared by every caller
    return rows, cols


def lambda_from_theta(theta: np.ndarray, q: int, diagonal: bool = False) -> np.ndarray:
    """Lower-triangular relative covariance factor ``L`` from ``theta``."""
    lam = np.zeros((q, q))
    lam[theta_index(q, diagonal)] = theta
    return lam


def theta_from_lambda(lam: np.ndarray, diagonal: bool = False) -> np.ndarray:
    """Inverse of :func:`lambda_from_theta`."""
    return lam[theta_index(lam.shape[0], diagonal)].copy()


def theta_lower_bounds(q: int, diagonal: bool = False) -> np.ndarray:
    """0 for diagonal entries of ``L`` (so a variance can reach exactly 0), -inf otherwise."""
    rows, cols = theta_index(q, diagonal)
    return np.where(rows == cols, 0.0, -np.inf)


# ---- batched small-matrix algebra; group index on the last axis -------------------------

def batched_cholesky(T: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of the (q, q) matrices ``T[:, :, g]``, column by column."""
    q = T.shape[0]
    C = np.zeros_like(T)
    for j in range(q):
        d = T[j, j].copy()
        for k in range(j):
            d -= C[j, k] * C[j, k]
        np.sqrt(d, out=C[j, j])
        for i in range(j + 1, q):
            v = T[i, j].copy()
            for k in range(j):
                v -= C[i, k] * C[j, k]
            np.divide(v, C[j, j], out=C[i, j])
    return C


def batched_solve_lower(C: np.ndarray, B: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """``C^{-1} B`` for lower-triangular ``C`` (q, q, m) and ``B`` (q, ..., m)."""
    X = B if overwrite else B.copy()
    for j in range(C.shape[0]):
        for l in range(j):
            X[j] -= C[j, l] * X[l]
        X[j] /= C[j, j]
    return X


def batched_solve_lower_t(C: np.ndarray, B: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """``C'^{-1} B`` for lower-triangular ``C`` (q, q, m) and ``B`` (q, ..., m)."""
    X = B if overwrite else B.copy()
    for j in reversed(range(C.shape[0])):
        for l in range(j + 1, C.shape[0]):
            X[j] -= C[l, j] * X[l]
        X[j] /= C[j, j]
    return X


def batched_matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Per-group matrix product of (a, b, m) and (b, c, m) arrays."""
    return np.einsum("abm,bcm->acm", A, B)


def batched_cholesky_inverse(C: np.ndarray) -> np.ndarray:
    """``(C C')^{-1}`` per group from lower-triangular factors ``C`` (q, q, m)."""
    c_inv = batched_solve_lower(C, np.broadcast_to(np.eye(C.shape[0])[:, :, None], C.shape))
    return np.einsum("kam,kbm->abm", c_inv, c_inv)


@dataclass(frozen=True)
class Solution:
    """Everything the deviance computes at one ``theta``.

    Attributes
    ----------
    theta, lam : the relative covariance factor
    beta : ndarray (p,)
        Fixed effects (conditional on ``theta``).
    r2 : float
        Penalised residual sum of squares.
    deviance : float
        -2 log-likelihood (ML) or the REML criterion, profiled over beta and the scale.
    scale : float
        Residual variance estimate ``r2 / n`` (ML) or ``r2 / (n - p)`` (REML).
    a_factor : tuple
        ``scipy.linalg.cho_factor`` of ``A = X'V^{-1}X * scale``; ``scale * A^{-1}`` is
        the covariance of beta.
    chol : ndarray (q, q, m)
        Cholesky factors of ``T_i``.
    u : ndarray (q, m)
        Spherical random effects; the BLUPs are ``lam @ u``.
    """

    theta: np.ndarray
    lam: np.ndarray
    beta: np.ndarray
    r2: float
    deviance: float
    scale: float
    a_factor: tuple
    chol: np.ndarray
    u: np.ndarray

    def cov_beta(self) -> np.ndarray:
        p = self.beta.shape[0]
        return self.scale * linalg.cho_solve(self.a_factor, np.eye(p))

    def blups(self) -> np.ndarray:
        """Conditional modes of the random effects, shape (m, q)."""
        return (self.lam @ self.u).T

    def conditional_cov(self) -> np.ndarray:
        """``scale * L T_i^{-1} L'`` per group, shape (m, q, q) (lme4's condVar)."""
        q = self.lam.shape[0]
        cinv_lt = batched_solve_lower(self.chol, np.broadcast_to(self.lam.T[:, :, None], self.chol.shape))
        cov = np.einsum("kam,kbm->mab", cinv_lt, cinv_lt)
        return self.scale * cov.reshape(-1, q, q)


class ProfiledDeviance:
    """The profiled deviance ``theta -> -2 log L`` (ML) or the REML criterion.

    Parameters
    ----------
    stats : GroupStats
        Sufficient statistics (see :func:`mixedlm_sklearn._stats.compute_stats`).
    reml : bool
    diagonal : bool
        Independent random effects: only the diagonal of ``L`` is free.
    """

    def __init__(self, stats: GroupStats, reml: bool = True, diagonal: bool = False) -> None:
        self.stats = stats
        self.reml = reml
        self.diagonal = diagonal
        self.q = stats.n_re
        self.p = stats.n_fe
        self._rows, self._cols = theta_index(self.q, diagonal)
        n = stats.n_obs
        self.dof = n - self.p if reml else n
        if self.dof <= 0:
            raise ValueError(
                f"{n} observations are too few for {self.p} fixed effects"
                + (" with REML" if reml else "")
            )

    @property
    def n_theta(self) -> int:
        return self._rows.size

    @property
    def theta_position(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column in ``L`` of each entry of ``theta``."""
        return self._rows, self._cols

    def lower_bounds(self) -> np.ndarray:
        return theta_lower_bounds(self.q, self.diagonal)

    def __call__(self, theta: np.ndarray) -> float:
        return self.solve(theta).deviance

    def solve(self, theta: np.ndarray) -> Solution:
        """Solve the penalised least-squares problem at ``theta``."""
        sol, _ = self._evaluate(np.asarray(theta, dtype=float), gradient=False)
        return sol

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        sol, grad = self._evaluate(np.asarray(theta, dtype=float), gradient=True)
        return sol.deviance, grad

    def _evaluate(self, theta: np.ndarray, gradient: bool) -> tuple[Solution, np.ndarray | None]:
        st, q, p = self.stats, self.q, self.p
        m = st.n_groups
        lam = lambda_from_theta(theta, q, self.diagonal)
        S = st.ztz
        # vec(L' S L) = (L' kron L') vec(S): one product for all groups
        kron = (lam.T[:, None, :, None] * lam.T[None, :, None, :]).reshape(q * q, q * q)
        T = (kron @ S.reshape(q * q, m)).reshape(q, q, m)
        T[np.arange(q), np.arange(q)] += 1.0
        C = batched_cholesky(T)
        W = batched_solve_lower(C, (lam.T @ st.ztxy.reshape(q, -1)).reshape(q, p + 1, m), overwrite=True)
        G = W[0] @ W[0].T
        for j in range(1, q):
            G += W[j] @ W[j].T
        F = st.xyxy - G
        # LAPACK directly: scipy.linalg's wrappers cost more than these p x p solves
        chol_a, info = lapack.dpotrf(F[:p, :p], lower=1, clean=1)
        if info != 0:
            raise FloatingPointError("X'V^{-1}X is not positive definite")
        a_factor = (chol_a, True)
        beta = lapack.dpotrs(chol_a, F[:p, p], lower=1)[0]
        r2 = max(F[p, p] - F[:p, p] @ beta, np.finfo(float).tiny)
        logdet_t = 2.0 * np.log(C[np.arange(q), np.arange(q)]).sum()
        dev = logdet_t + self.dof * (1.0 + _LOG_2PI + np.log(r2 / self.dof)) - st.sum_log_weights
        if self.reml:
            dev += 2.0 * np.log(np.diag(a_factor[0])).sum()
        coef = np.append(-beta, 1.0)
        u = batched_solve_lower_t(C, coef @ W, overwrite=True)
        sol = Solution(theta, lam, beta, float(r2), float(dev), float(r2 / self.dof), a_factor, C, u)
        if not gradient:
            return sol, None

        resid_z = coef @ st.ztxy - np.einsum("abm,bm->am", S, lam @ u)
        t_inv = batched_cholesky_inverse(C)
        s_lam = np.einsum("abm,bc->acm", S, lam)
        grad = 2.0 * np.einsum("abm,bcm->ac", s_lam, t_inv) - (2.0 * self.dof / r2) * (resid_z @ u.T)
        if self.reml:
            # K_i = Z_i'X_i A^{-1} X_i'Z_i = Y_i'Y_i with Y_i = R_A^{-T} X_i'Z_i
            r_inv = lapack.dtrtri(chol_a, lower=1)[0]
            Y = r_inv @ st.ztxy[:, :p, :]
            K = np.empty((q, q, m))
            for a in range(q):
                for b in range(a + 1):
                    K[a, b] = K[b, a] = np.einsum("km,km->m", Y[a], Y[b])
            H = np.einsum("acm,bc->abm", t_inv, lam)
            N = np.einsum("acm,bcm->abm", K, H)
            grad -= 2.0 * (N - batched_matmul(s_lam, batched_matmul(H, N))).sum(axis=2)
        return sol, grad[self._rows, self._cols]
