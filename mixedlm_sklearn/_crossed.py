"""Profiled deviance of a linear mixed model with several random-effects terms.

Model (Bates, Maechler, Bolker & Walker 2015, "Fitting linear mixed-effects models using
lme4", JSS 67(1), sec. 3): ``y = X beta + sum_k Z_k b_k + e``, term ``k`` has ``m_k``
levels with ``q_k`` effects each, ``b_k`` per level ~ ``N(0, sigma^2 L_k L_k')``. With
``Z = [Z_1 ... Z_K]``, ``L = blockdiag(I_{m_k} (x) L_k)`` and ``M = L'Z'ZL + I``::

    G      = [X y]' Z L M^{-1} L' Z' [X y]          ((p+1) x (p+1))
    A      = X'X - G_xx,  beta = A^{-1}(X'y - G_xy),  r2 = y'y - G_yy - beta'(X'y - G_xy)
    ML:    -2 llf = log|M| + n (1 + log(2 pi r2 / n))
    REML:  -2 llf = log|M| + log|A| + (n - p)(1 + log(2 pi r2 / (n - p)))

How ``M`` is factored (the fill-reducing ordering of lme4 and MixedModels.jl): the term
with the largest block ``m_1 q_1`` goes first. Its block of ``Z'Z`` is block diagonal
(one ``q_1 x q_1`` block per level), so it is eliminated level by level in closed form;
what remains is the Schur complement on the other terms,

    S = L_2' (A_22 - A_21 D A_12) L_2 + I,   D = blockdiag_l(L_1 B_l^{-1} L_1'),
    B_l = L_1' (Z_1'Z_1)_l L_1 + I,          log|M| = sum_l log|B_l| + log|S|,

of size ``r = sum_{k>1} m_k q_k``, small for typical crossed designs (InstEval: 1128 +
14), which is factored dense. ``A_21 D A_12`` is linear in ``D``: the map ``D -> A_21 D
A_12`` is a sparse matrix (:func:`_pair_map`) built once from the sparsity pattern, so an
evaluation costs one sparse mat-vec, one dense Cholesky of ``S`` and ``O(m q^3)`` batched
small-matrix work. Nothing loops over levels in Python. Prior weights scale the rows of
``X``, ``y`` and ``Z`` by ``sqrt(w)`` and add ``sum log w`` to ``-2 llf``.

Gradient (derived for this module; checked against finite differences in the tests). For
the entry (a, c) of ``L_k`` let ``E`` be its unit matrix, repeated over the levels;
``V = M^{-1} L'Z'[X y]`` (spherical modes of each column of ``[X y]``) and
``R = Z'[X y] - Z'Z L V`` (``Z'`` times the residuals of each column). Then

* ``d r2 = -2 sum_l (R g)_{l,a} (V g)_{l,c}``, ``g = [-beta; 1]`` (envelope theorem),
* ``d log|A| = -2 tr(A^{-1} sum_l R_{l,a,x}' V_{l,c,x})`` (``x``: the columns of X),
* first term: ``d log|M| = 2 sum_l [J_l A_l - J_l K_l (I - D_l A_l)]_{c,a}`` with
  ``A_l = (Z_1'Z_1)_l``, ``J_l = B_l^{-1} L_1'``, ``K_l = (A_12 Omega A_21)_{ll}``,
  ``Omega = L_2 S^{-1} L_2'``;
* other terms: ``d log|M| = 2 sum_l [S^{-1} L_2' (A_22 - A_21 D A_12)]_{(l,c),(l,a)}``.

The conditional covariances of the random effects (lme4's ``ranef(condVar = TRUE)``) are
the diagonal blocks of ``sigma^2 L M^{-1} L'``: ``D_l + D_l K_l D_l`` for the first term
and the diagonal blocks of ``Omega`` for the others, so no dense inverse of ``M`` is formed.

Optimisation: a gradient costs about three deviances here (``S^{-1}`` from the factor is
twice a Cholesky), so the number of evaluations is what matters. Newton's method with the
average-information matrix (Gilmour, Thompson & Cullis 1995) as Hessian needs 4-9
iterations on the reference fits (InstEval: 7), against 13-22 for L-BFGS-B, which here
only finishes fits whose optimum lies on a bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from scipy import linalg, optimize, sparse
from scipy.linalg import lapack

from ._deviance import batched_cholesky, batched_cholesky_inverse, batched_matmul, theta_index

__all__ = ["CrossedModel", "CrossedFit", "build_crossed_model", "fit_crossed", "crossed_fitted"]

_LOG_2PI = float(np.log(2.0 * np.pi))
# lme4's isSingular() tolerance on bounded theta entries.
_SINGULAR_TOL = 1e-4
# Newton steps may shrink a bounded theta entry by at most this fraction.
_MAX_SHRINK = 0.75
# Largest Schur complement factored dense (doubles: 8 r^2 bytes, 128 MB at 4000).
_MAX_DENSE = 4000


@dataclass(frozen=True)
class _Term:
    """One random-effects term, in the model's elimination order."""

    position: int  # index in the caller's list of terms
    n_levels: int
    q: int
    theta_slice: slice  # entries of the caller's theta
    rows: np.ndarray  # theta entry -> row / column of L_k
    cols: np.ndarray
    offset: int  # first row in the Schur complement (terms after the first)

    def lam(self, theta: np.ndarray) -> np.ndarray:
        lam = np.zeros((self.q, self.q))
        lam[self.rows, self.cols] = theta[self.theta_slice]
        return lam

    @property
    def size(self) -> int:
        return self.n_levels * self.q


class _Point(NamedTuple):
    """Everything one evaluation computes, reused by the gradient and the final fit."""

    lams: list
    Binv: np.ndarray  # (q1, q1, m1): B_l^{-1}
    J: np.ndarray  # (q1, q1, m1): B_l^{-1} L_1'
    D: np.ndarray  # (q1, q1, m1): L_1 B_l^{-1} L_1'
    DR: np.ndarray  # (q1, p+1, m1): D_l (Z_1'[X y])_l
    T: np.ndarray | None  # (r, r): lower triangle of A_21 D A_12
    chol_S: np.ndarray | None  # upper Cholesky factor U of S = U'U, Fortran order
    chol_A: np.ndarray  # lower Cholesky factor of A
    beta: np.ndarray
    r2: float
    deviance: float


@dataclass(frozen=True)
class CrossedModel:
    """Everything about the data that does not depend on ``theta``.

    Built by :func:`build_crossed_model`; ``theta`` and all per-term results use the
    caller's order of terms. Arrays are in the internal elimination order: the first term
    (largest ``m q``) is eliminated level by level, the others form the dense Schur
    complement of size ``r``.
    """

    n: int
    p: int
    terms: tuple  # of _Term, elimination order
    sum_log_weights: float
    a11: np.ndarray  # (q1, q1, m1): (Z_1'Z_1) per level
    r1: np.ndarray  # (q1, p+1, m1): Z_1'[X y] per level
    a21: sparse.csr_matrix  # (r, m1 q1): Z_2'Z_1, columns level-major
    pairs: sparse.csc_matrix  # (r*r, m1 q1^2): vec(D) -> lower triangle of A_21 D A_12
    a22: np.ndarray  # (r, r): Z_2'Z_2
    r2: np.ndarray  # (r, p+1): Z_2'[X y]
    xyxy: np.ndarray  # (p+1, p+1): [X y]'[X y]

    # ---- theta bookkeeping --------------------------------------------------------------

    @property
    def n_theta(self) -> int:
        return sum(t.rows.size for t in self.terms)

    @property
    def r(self) -> int:
        return self.a22.shape[0]

    def lower_bounds(self) -> np.ndarray:
        """0 on the diagonal of each ``L_k`` (a variance can reach exactly 0), else -inf."""
        lower = np.empty(self.n_theta)
        for t in self.terms:
            lower[t.theta_slice] = np.where(t.rows == t.cols, 0.0, -np.inf)
        return lower

    def theta_start(self) -> np.ndarray:
        """lme4's start: every ``L_k`` the identity."""
        return (self.lower_bounds() == 0.0).astype(float)

    # ---- public evaluation --------------------------------------------------------------

    def deviance(self, theta: np.ndarray, reml: bool = True) -> float:
        """Profiled deviance: -2 log-likelihood (ML) or the REML criterion."""
        return self._evaluate(np.asarray(theta, dtype=float), reml).deviance

    def deviance_and_gradient(self, theta: np.ndarray, reml: bool = True) -> tuple[float, np.ndarray]:
        """Profiled deviance and its analytic gradient in ``theta``."""
        theta = np.asarray(theta, dtype=float)
        pt = self._evaluate(theta, reml)
        return pt.deviance, self._gradient(pt, reml)[0]

    # ---- internals ----------------------------------------------------------------------

    def _lam_rows(self, lams: list, X: np.ndarray, transpose: bool) -> np.ndarray:
        """``L_2' X`` (transpose) or ``L_2 X`` for ``X`` with one row per Schur column."""
        out = np.empty_like(X, shape=X.shape)
        for t, lam in zip(self.terms[1:], lams[1:]):
            rows = slice(t.offset, t.offset + t.size)
            if t.q == 1:
                out[rows] = lam[0, 0] * X[rows]
            else:
                blk = X[rows].reshape(t.n_levels, t.q, -1)
                out[rows] = np.einsum("ab,mb...->ma...", lam.T if transpose else lam, blk).reshape(
                    X[rows].shape
                )
        return out

    def _rest_scale(self, lams: list) -> np.ndarray | None:
        """Diagonal of ``L_2`` when every term after the first is scalar, else None."""
        if any(t.q != 1 for t in self.terms[1:]):
            return None
        return np.repeat([lam[0, 0] for lam in lams[1:]], [t.n_levels for t in self.terms[1:]])

    def _sandwich(self, lams: list, W: np.ndarray, transpose: bool) -> np.ndarray:
        """``L_2' W L_2`` (transpose) or ``L_2 W L_2'`` for symmetric ``W`` (r, r).

        Only the lower triangle of ``W`` is read, and with scalar terms only (``W`` then
        scaled in place) only that of the result is valid: all a lower Cholesky
        factorisation reads.
        """
        scale = self._rest_scale(lams)
        if scale is not None:
            W *= scale[:, None]
            W *= scale
            return W
        W = np.tril(W) + np.tril(W, -1).T
        return self._lam_rows(lams, self._lam_rows(lams, W, transpose).T, transpose)

    def _evaluate(self, theta: np.ndarray, reml: bool) -> _Point:
        first, q1, p = self.terms[0], self.terms[0].q, self.p
        lams = [t.lam(theta) for t in self.terms]
        L1 = lams[0]
        # First term, level by level.
        B = np.einsum("ba,bcm,cd->adm", L1, self.a11, L1)
        B[np.arange(q1), np.arange(q1)] += 1.0
        C = batched_cholesky(B)
        logdet = 2.0 * np.log(np.einsum("aam->am", C)).sum()
        Binv = batched_cholesky_inverse(C)
        J = np.einsum("abm,cb->acm", Binv, L1)
        D = np.einsum("ab,bcm->acm", L1, J)
        DR = batched_matmul(D, self.r1)
        G = np.einsum("akm,ajm->kj", self.r1, DR)
        T = chol_S = None
        r = self.r
        if r:
            # Schur complement on the other terms; the sparse map gives A_21 D A_12.
            T = (self.pairs @ D.transpose(2, 0, 1).ravel()).reshape(r, r)
            S = self._sandwich(lams, self.a22 - T, True)
            S.flat[:: r + 1] += 1.0
            # LAPACK on the Fortran view S' (no copy): its upper factor U is L' and the
            # factor's other triangle is zeroed (potri below relies on it).
            chol_S, info = lapack.dpotrf(S.T, lower=0, overwrite_a=1, clean=1)
            if info:
                raise np.linalg.LinAlgError("the Schur complement is not positive definite")
            logdet += 2.0 * np.log(np.diag(chol_S)).sum()
            DRf = DR.transpose(2, 0, 1).reshape(first.size, p + 1)
            H = self._lam_rows(lams, self.r2 - self.a21 @ DRf, True)
            Hs = linalg.solve_triangular(chol_S, H, trans="T", check_finite=False)
            G = G + Hs.T @ Hs
        Cxy = self.xyxy - G
        chol_A = linalg.cholesky(Cxy[:p, :p], lower=True, check_finite=False)
        beta = linalg.cho_solve((chol_A, True), Cxy[:p, p], check_finite=False)
        r2 = float(Cxy[p, p] - Cxy[:p, p] @ beta)
        dof = self.n - p if reml else self.n
        dev = logdet + dof * (1.0 + _LOG_2PI + np.log(r2 / dof)) - self.sum_log_weights
        if reml:
            dev += 2.0 * np.log(np.diag(chol_A)).sum()
        return _Point(lams, Binv, J, D, DR, T, chol_S, chol_A, beta, r2, float(dev))

    def _modes(self, pt: _Point):
        """Spherical modes ``V`` and ``L V``, ``R``, ``S^{-1}``, ``Omega`` and ``K``.

        ``V``, ``L V`` and ``R`` (module docstring) have one column per column of
        ``[X y]``; first-term blocks are (q1, p+1, m1), the others (r, p+1).
        """
        q1, r = self.terms[0].q, self.r
        L1 = pt.lams[0]
        # V = M^{-1} L'Z'[X y]
        V1, V2 = self._solve_M(
            pt, np.einsum("ba,bkm->akm", L1, self.r1), self._lam_rows(pt.lams, self.r2, True)
        )
        LV1, LV2 = np.einsum("ab,bkm->akm", L1, V1), self._lam_rows(pt.lams, V2, False)
        ZZ1, ZZ2 = self._zz(LV1, LV2)
        R1, R2 = self.r1 - ZZ1, self.r2 - ZZ2
        if r:
            # S^{-1}: potri fills the upper triangle of the Fortran factor, i.e. the lower
            # triangle in C order; the other one stays zero (cleaned by potrf).
            Sinv, info = lapack.dpotri(pt.chol_S, lower=0)
            if info:
                raise np.linalg.LinAlgError("potri failed on the Schur complement")
            Sinv = Sinv.T
            Omega = self._sandwich(pt.lams, Sinv.copy(), False)
            # The map holds pairs i >= j only: halve the diagonal, add the (a, b) transpose.
            Omega.flat[:: r + 1] *= 0.5
            K = (self.pairs.T @ Omega.ravel()).reshape(-1, q1, q1)
            K = (K + K.transpose(0, 2, 1)).transpose(1, 2, 0)
            Omega.flat[:: r + 1] *= 2.0
        else:
            Sinv = Omega = np.zeros((0, 0))
            K = np.zeros_like(pt.D)
        return _Modes(V1, LV1, R1, V2, LV2, R2, Sinv, Omega, K)

    def _flat(self, x1: np.ndarray) -> np.ndarray:
        """First-term block (q1, k, m1) as rows ``(level, effect)`` of an (m1 q1, k) array."""
        return x1.transpose(2, 0, 1).reshape(-1, x1.shape[1])

    def _unflat(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.terms[0].n_levels, self.terms[0].q, -1).transpose(1, 2, 0)

    def _zz(self, c1: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``Z'Z c`` for ``c`` split into first-term (q1, k, m1) and other (r, k) blocks."""
        z1 = batched_matmul(self.a11, c1)
        if not self.r:
            return z1, c2
        return z1 + self._unflat(self.a21.T @ c2), self.a21 @ self._flat(c1) + self.a22 @ c2

    def _solve_M(self, pt: _Point, b1: np.ndarray, b2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``M^{-1} b`` by block elimination, ``b`` split as in :meth:`_zz`."""
        x1 = batched_matmul(pt.Binv, b1)
        if not self.r:
            return x1, b2
        # x2 = S^{-1}(b2 - M21 M11^{-1} b1), M21 M11^{-1} = L2' A21 L1 B^{-1}
        y = np.einsum("ab,bkm->akm", pt.lams[0], x1)
        x2 = b2 - self._lam_rows(pt.lams, self.a21 @ self._flat(y), True)
        x2 = linalg.solve_triangular(pt.chol_S, x2, trans="T", check_finite=False)
        x2 = linalg.solve_triangular(pt.chol_S, x2, check_finite=False)
        # x1 = B^{-1}(b1 - M12 x2), M12 = L1' A12 L2 and B^{-1} L1' = J
        z = self._unflat(self.a21.T @ self._lam_rows(pt.lams, x2, False))
        return x1 - batched_matmul(pt.J, z), x2

    def _average_information(self, pt: _Point, md: "_Modes", reml: bool) -> np.ndarray:
        """Average-information approximation of the Hessian of the profiled deviance.

        Gilmour, Thompson & Cullis (1995, Biometrics 51): with ``P`` the REML projection
        and ``w_j = (dV/dphi_j) P y``, ``-2 log L`` has Hessian ``~ w_i' P w_j``. Here
        ``phi = (theta, sigma^2)``: ``w_j = Z (E_j u + L E_j' Z'e)`` for a theta entry
        and ``(y - X beta) / sigma^2`` for the scale, which is then profiled out (Schur
        complement). All products come from the stored cross-products and one solve
        with ``M`` (no pass over the rows).
        """
        p, r = self.p, self.r
        gamma = np.append(-pt.beta, 1.0)
        u1, u2 = np.einsum("akm,k->am", md.V1, gamma), md.V2 @ gamma  # spherical modes
        e1, e2 = np.einsum("akm,k->am", md.R1, gamma), md.R2 @ gamma  # Z' (conditional residuals)
        C1 = np.zeros((self.terms[0].q, self.n_theta, self.terms[0].n_levels))
        C2 = np.zeros((r, self.n_theta))
        for k, t in enumerate(self.terms):
            lam = pt.lams[k]
            for j, a, c in zip(range(t.theta_slice.start, t.theta_slice.stop), t.rows, t.cols):
                if k == 0:
                    C1[a, j] += u1[c]
                    C1[:, j] += lam[:, c, None] * e1[a]
                else:
                    rows = slice(t.offset, t.offset + t.size)
                    uk, ek = u2[rows].reshape(t.n_levels, t.q), e2[rows].reshape(t.n_levels, t.q)
                    blk = ek[:, a, None] * lam[:, c]
                    blk[:, a] += uk[:, c]
                    C2[rows, j] = blk.ravel()
        Z1, Z2 = self._zz(C1, C2)
        b1, b2 = np.einsum("ba,bkm->akm", pt.lams[0], Z1), self._lam_rows(pt.lams, Z2, True)
        Y1, Y2 = self._solve_M(pt, b1, b2)
        PW = np.einsum("ajm,akm->jk", C1, Z1) + C2.T @ Z2 - np.einsum("ajm,akm->jk", b1, Y1) - b2.T @ Y2
        XW = np.einsum("axm,ajm->xj", self.r1[:, :p] , C1) + self.r2[:, :p].T @ C2
        XW -= np.einsum("axm,ajm->xj", md.LV1[:, :p], Z1) + md.LV2[:, :p].T @ Z2
        PW -= XW.T @ linalg.cho_solve((pt.chol_A, True), XW, check_finite=False)
        we = np.einsum("ajm,am->j", C1, e1) + C2.T @ e2  # w_j' P (y - X beta)
        dof = self.n - p if reml else self.n
        return (PW - np.outer(we, we) / pt.r2) * dof / pt.r2

    def _gradient(self, pt: _Point, reml: bool) -> tuple[np.ndarray, "_Modes"]:
        p = self.p
        md = self._modes(pt)
        dof = self.n - p if reml else self.n
        gamma = np.append(-pt.beta, 1.0)
        A_inv = linalg.cho_solve((pt.chol_A, True), np.eye(p), check_finite=False)
        grad = np.empty(self.n_theta)
        if self.r:
            # d log|S| / d L_2 needs sum_j (S^{-1} L_2')_{ij} W_{ji}, W = A_22 - A_21 D A_12.
            W = self.a22 - pt.T  # lower triangle valid; S^{-1} is zero above the diagonal
            scale = self._rest_scale(pt.lams)
            if scale is not None:
                # P = S^{-1} o W is symmetric and held as its lower triangle.
                P = md.Sinv * W
                rest_dlogM = 2.0 * (P @ scale + P.T @ scale - np.diag(P) * scale)
            else:
                W = np.tril(W) + np.tril(W, -1).T
                Sinv = md.Sinv + md.Sinv.T
                Sinv.flat[:: self.r + 1] *= 0.5
        for k, t in enumerate(self.terms):
            if k == 0:
                Rk, Vk = md.R1, md.V1
                A, D, J = self.a11, pt.D, pt.J
                IDA = np.eye(t.q)[:, :, None] - batched_matmul(D, A)
                dlogM = 2.0 * (batched_matmul(J, A) - batched_matmul(batched_matmul(J, md.K), IDA)).sum(axis=2)
            else:
                rows = slice(t.offset, t.offset + t.size)

                def per_level(X: np.ndarray) -> np.ndarray:
                    return X[rows].reshape(t.n_levels, t.q, p + 1).transpose(1, 2, 0)

                Rk, Vk = per_level(md.R2), per_level(md.V2)
                if scale is not None:
                    dlogM = rest_dlogM[rows].sum().reshape(1, 1)
                else:
                    # (S^{-1} L_2')[rows, :] = (L_2 S^{-1})[:, rows]'
                    Phi = self._lam_rows(pt.lams, Sinv[:, rows], False).reshape(self.r, t.n_levels, t.q)
                    dlogM = 2.0 * np.einsum("jlc,jla->ca", Phi, W[:, rows].reshape(self.r, t.n_levels, t.q))
            # Entry (a, c) of L_k: d log|M| = dlogM[c, a]; the others pair row a of R with
            # row c of V.
            d_r2 = -2.0 * np.einsum("am,cm->ac", Rk.transpose(0, 2, 1) @ gamma, Vk.transpose(0, 2, 1) @ gamma)
            g = dlogM.T + dof / pt.r2 * d_r2
            if reml:
                g -= 2.0 * np.einsum("akm,kj,cjm->ac", Rk[:, :p], A_inv, Vk[:, :p])
            grad[t.theta_slice] = g[t.rows, t.cols]
        return grad, md


class _Modes(NamedTuple):
    V1: np.ndarray
    LV1: np.ndarray
    R1: np.ndarray
    V2: np.ndarray
    LV2: np.ndarray
    R2: np.ndarray
    Sinv: np.ndarray
    Omega: np.ndarray
    K: np.ndarray


# ---- building the model ------------------------------------------------------------------


def _pair_map(a21: sparse.csr_matrix, m1: int, q1: int) -> sparse.csc_matrix:
    """Sparse map from ``vec(D)`` to the lower triangle of ``A_21 D A_12``.

    ``(A_21 D A_12)_{ij} = sum_l sum_{ab} A_21[i, (l,a)] D_l[a,b] A_21[j, (l,b)]``: one
    entry per level ``l`` and pair of rows ``i >= j`` that level touches. Rows of the map
    are ``i * r + j``; columns ``(l, a, b)`` in C order, i.e. ``D`` stored (m1, q1, q1).
    Built column by column (CSC) so no sort is needed.
    """
    r = a21.shape[0]
    coo = a21.tocoo()
    level, comp = np.divmod(coo.col, q1)
    # Group the entries of A_21 by (level, row): keys sorted by level, then row.
    keys, inv = np.unique(level.astype(np.int64) * r + coo.row, return_inverse=True)
    vals = np.zeros((keys.size, q1))
    np.add.at(vals, (inv.ravel(), comp), coo.data)
    key_level, key_row = np.divmod(keys, r)
    key_row = key_row.astype(np.int32)
    # Key number s within its level pairs with the s + 1 keys before it and itself.
    count = np.bincount(key_level, minlength=m1)
    first_key = np.repeat(np.cumsum(count) - count, count)
    partners = np.arange(1, keys.size + 1) - first_key
    pair_start = np.cumsum(partners) - partners
    ka = np.repeat(np.arange(keys.size, dtype=np.int32), partners)
    kb = np.arange(ka.size, dtype=np.int64) - np.repeat(pair_start - first_key, partners)
    rows = key_row[ka] * np.int32(r) + key_row[kb]
    n_pairs = np.bincount(key_level, weights=partners, minlength=m1).astype(np.int64)
    if q1 == 1:
        data = vals[ka, 0] * vals[kb, 0]
    else:
        # Column (l, a, b) holds all of level l's pairs in pair order: scatter the
        # (pair, a, b) products there.
        lev = key_level[ka]
        lev_start = np.cumsum(n_pairs) - n_pairs
        local = np.arange(ka.size) - lev_start[lev]
        dest = (q1 * q1 * lev_start[lev] + local)[:, None] + np.arange(q1 * q1) * n_pairs[lev][:, None]
        data = np.empty(dest.size)
        data[dest.ravel()] = (vals[ka][:, :, None] * vals[kb][:, None, :]).ravel()
        rows_all = np.empty(dest.size, dtype=rows.dtype)
        rows_all[dest.ravel()] = np.repeat(rows, q1 * q1)
        rows = rows_all
    indptr = np.concatenate([[0], np.cumsum(np.repeat(n_pairs, q1 * q1))])
    return sparse.csc_matrix((data, rows, indptr), shape=(r * r, m1 * q1 * q1))


def build_crossed_model(
    X: np.ndarray,
    y: np.ndarray,
    terms: Sequence[tuple[np.ndarray, np.ndarray, bool]],
    weights: np.ndarray | None = None,
) -> CrossedModel:
    """Precompute the theta-independent parts of the profiled deviance.

    Parameters
    ----------
    X : ndarray (n, p)
        Fixed-effects design (full column rank).
    y : ndarray (n,)
        Response.
    terms : sequence of (codes, Z, diagonal)
        One entry per random-effects term: integer level codes ``0..m_k-1`` (n,), the
        term's design ``Z_k`` (n, q_k), and whether only the diagonal of ``L_k`` is free.
        Every level ``0..max(codes)`` is taken to exist.
    weights : ndarray (n,), optional
        Prior weights: row ``i`` has residual variance ``sigma^2 / weights[i]``.

    Returns
    -------
    CrossedModel
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).reshape(-1)
    n, p = X.shape
    if y.shape != (n,):
        raise ValueError(f"y has {y.size} values but X has {n} rows")
    if not terms:
        raise ValueError("at least one random-effects term is needed")
    if weights is None:
        sqrt_w, sum_log_w = None, 0.0
    else:
        weights = np.asarray(weights, dtype=float).reshape(-1)
        if weights.shape != (n,) or not np.all(weights > 0):
            raise ValueError("weights must be n strictly positive numbers")
        sqrt_w, sum_log_w = np.sqrt(weights), float(np.log(weights).sum())
    XY = np.column_stack([X, y])
    if sqrt_w is not None:
        XY *= sqrt_w[:, None]

    codes, designs, info = [], [], []
    start = 0
    for position, (g, Z, diagonal) in enumerate(terms):
        g = np.asarray(g).reshape(-1)
        if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer) or (n and g.min() < 0):
            raise ValueError(f"term {position}: codes must be n non-negative integers")
        Z = np.asarray(Z, dtype=float).reshape(n, -1)
        if sqrt_w is not None:
            Z = Z * sqrt_w[:, None]
        q = Z.shape[1]
        rows, cols = theta_index(q, bool(diagonal))
        codes.append(g.astype(np.int64))
        designs.append(Z)
        info.append((position, int(g.max()) + 1, q, slice(start, start + rows.size), rows, cols))
        start += rows.size
    # Elimination order: largest block first (stable, so ties keep the caller's order).
    order = sorted(range(len(info)), key=lambda k: -info[k][1] * info[k][2])
    sorted_terms, offset = [], 0
    for rank, k in enumerate(order):
        sorted_terms.append(_Term(*info[k], offset=offset))
        if rank:
            offset += info[k][1] * info[k][2]
    r = offset
    if r > _MAX_DENSE:
        raise ValueError(
            f"the terms after the largest one have {r} random effects in all; more than "
            f"{_MAX_DENSE} would need a sparse factorisation of their block, not implemented"
        )

    first = sorted_terms[0]
    c1, Z1, q1, m1 = codes[order[0]], designs[order[0]], first.q, first.n_levels
    a11 = np.empty((q1, q1, m1))
    for a in range(q1):
        for b in range(a, q1):
            a11[a, b] = a11[b, a] = np.bincount(c1, Z1[:, a] * Z1[:, b], minlength=m1)
    r1 = np.empty((q1, p + 1, m1))
    for a in range(q1):
        for j in range(p + 1):
            r1[a, j] = np.bincount(c1, Z1[:, a] * XY[:, j], minlength=m1)

    if r:
        # Sparse Z of the other terms: n rows, sum q_k entries per row, columns level-major.
        cols = np.column_stack(
            [t.offset + codes[t.position][:, None] * t.q + np.arange(t.q) for t in sorted_terms[1:]]
        )
        vals = np.column_stack([designs[t.position] for t in sorted_terms[1:]])
        Z2 = sparse.csr_matrix(
            (vals.ravel(), cols.ravel(), np.arange(0, cols.size + 1, cols.shape[1])), shape=(n, r)
        )
        Z1s = sparse.csr_matrix(
            (Z1.ravel(), (c1[:, None] * q1 + np.arange(q1)).ravel(), np.arange(0, n * q1 + 1, q1)),
            shape=(n, m1 * q1),
        )
        Z2t = Z2.T.tocsr()
        a21 = (Z2t @ Z1s).tocsr()
        a21.sum_duplicates()
        a22 = (Z2t @ Z2).toarray()
        r2 = Z2t @ XY
        pairs = _pair_map(a21, m1, q1)
    else:
        a21 = sparse.csr_matrix((0, m1 * q1))
        a22, r2 = np.zeros((0, 0)), np.zeros((0, p + 1))
        pairs = sparse.csc_matrix((0, m1 * q1 * q1))
    return CrossedModel(
        n=n,
        p=p,
        terms=tuple(sorted_terms),
        sum_log_weights=sum_log_w,
        a11=a11,
        r1=r1,
        a21=a21,
        pairs=pairs,
        a22=a22,
        r2=r2,
        xyxy=XY.T @ XY,
    )


# ---- fitting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossedFit:
    """A fitted model with several random-effects terms (caller's order of terms).

    Attributes
    ----------
    theta : ndarray
        Relative covariance factors, each term's lower triangle column by column.
    beta : ndarray (p,)
        Fixed effects.
    cov_beta : ndarray (p, p)
        ``scale * A^{-1}``.
    scale : float
        Residual variance ``sigma^2``.
    llf : float
        Log-likelihood (ML) or the REML criterion as lme4's ``logLik`` reports it.
    deviance : float
        ``-2 llf``.
    reml : bool
    cov_re : list of ndarray (q_k, q_k)
        ``scale * L_k L_k'`` per term.
    blups : list of ndarray (m_k, q_k)
        Conditional modes ``L_k u_k`` per term.
    condvar : list of ndarray (m_k, q_k, q_k)
        Conditional covariances of the random effects per level (lme4's
        ``ranef(condVar = TRUE)``): diagonal blocks of ``scale * L M^{-1} L'``.
    converged : bool
    n_iter, n_fev : int
        Optimiser iterations and deviance evaluations.
    message : str
    singular : bool
        Some bounded entry of ``theta`` (a standard deviation) is (near) 0.
    """

    theta: np.ndarray
    beta: np.ndarray
    cov_beta: np.ndarray
    scale: float
    llf: float
    deviance: float
    reml: bool
    cov_re: list
    blups: list
    condvar: list
    converged: bool
    n_iter: int
    n_fev: int
    message: str
    singular: bool


class _Counter:
    """Counts deviance evaluations and keeps the last point, whose factor and modes the
    gradient and the final results reuse."""

    def __init__(self, model: CrossedModel, reml: bool) -> None:
        self.model, self.reml, self.n_fev = model, reml, 0
        self._last: tuple | None = None  # (theta, point, modes or None)

    def value(self, theta: np.ndarray) -> _Point:
        if self._last is not None and np.array_equal(self._last[0], theta):
            return self._last[1]
        self.n_fev += 1
        pt = self.model._evaluate(theta, self.reml)
        self._last = (np.array(theta, dtype=float), pt, None)
        return pt

    def grad(self, theta: np.ndarray) -> tuple[_Point, np.ndarray, "_Modes"]:
        pt = self.value(theta)
        g, md = self.model._gradient(pt, self.reml)
        self._last = (self._last[0], pt, md)
        return pt, g, md

    def modes(self, theta: np.ndarray) -> tuple[_Point, "_Modes"]:
        pt = self.value(theta)
        if self._last[2] is None:
            self._last = (self._last[0], pt, self.model._modes(pt))
        return pt, self._last[2]

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        pt, g, _ = self.grad(theta)
        return pt.deviance, g


def _newton(
    ev: _Counter, theta: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, bool, int]:
    """Newton iterations with the average-information Hessian and backtracking.

    Each coordinate of the step may shrink a bounded entry by at most 90% so the
    iterates stay strictly inside; reaching a bound (a singular fit) is left to
    L-BFGS-B. Returns ``(theta, converged, iterations)``.
    """
    model, reml = ev.model, ev.reml
    lower = model.lower_bounds()
    bounded = np.isfinite(lower)
    for it in range(1, max_iter + 1):
        pt, grad, md = ev.grad(theta)
        H = model._average_information(pt, md, reml)
        try:
            step = -linalg.solve(H, grad, assume_a="pos", check_finite=False)
        except (linalg.LinAlgError, ValueError):
            return theta, False, it
        decrement = -grad @ step  # ~ twice the predicted decrease
        if decrement < tol:
            return theta, True, it
        limit = np.where(bounded, -_MAX_SHRINK * (theta - lower), -np.inf)
        clipped = np.maximum(step, limit)
        if np.any(clipped != step) and it > 3:
            return theta, False, it  # heading for a bound: hand over to L-BFGS-B
        slope = grad @ clipped
        if slope >= 0:
            return theta, False, it
        t = 1.0
        for _ in range(30):
            trial = ev.value(theta + t * clipped)
            if trial.deviance <= pt.deviance + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            return theta, False, it
        theta = theta + t * clipped
    return theta, False, max_iter


def fit_crossed(
    model: CrossedModel,
    reml: bool = True,
    theta0: np.ndarray | None = None,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> CrossedFit:
    """Fit ``theta`` by minimising the profiled deviance, then everything else.

    Newton's method with the average-information Hessian (each iteration: one deviance,
    its analytic gradient and a few solves) does the work from lme4's start (each
    ``L_k`` the identity); bounded L-BFGS-B with the analytic gradient takes over when
    an entry heads for its bound (a singular fit lands exactly on 0) or Newton stalls.
    A bounded entry left at 0 is probed once: the deviance is even in a scalar term's
    theta, so its gradient vanishes there whether or not 0 is a minimum.

    Parameters
    ----------
    model : CrossedModel
    reml : bool
        REML criterion (True) or maximum likelihood.
    theta0 : ndarray, optional
        Start; default lme4's.
    max_iter : int
        Iteration limit of each optimiser phase.
    tol : float
        Convergence tolerance on the deviance (Newton decrement; L-BFGS-B ``ftol``
        relative, ``gtol`` scaled).

    Returns
    -------
    CrossedFit
    """
    ev = _Counter(model, reml)
    lower = model.lower_bounds()
    theta = model.theta_start() if theta0 is None else np.maximum(np.asarray(theta0, float), lower)
    theta, converged, n_iter = _newton(ev, theta, max_iter, tol)
    message = "Newton (average information) converged"
    bounds = optimize.Bounds(lower, np.full(lower.size, np.inf))
    for _ in range(2):  # polish; a second round only after a successful probe off a bound
        if not converged:
            res = optimize.minimize(
                ev.value_and_grad,
                theta,
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": max_iter, "ftol": tol * 1e-2, "gtol": 1e-8},
            )
            theta, converged, n_iter = res.x, bool(res.success), n_iter + res.nit
            message = f"L-BFGS-B: {res.message}"
        at_zero = np.flatnonzero((lower == 0.0) & (theta <= 0.0))
        if not at_zero.size:
            break
        base = ev.value(theta).deviance
        probe = theta.copy()
        probe[at_zero] = 1e-3 * max(1.0, np.abs(theta).max())
        if ev.value(probe).deviance >= base:
            break
        theta, converged = probe, False
    return _finish(model, ev, theta, reml, converged, n_iter, message)


def _finish(
    model: CrossedModel,
    ev: _Counter,
    theta: np.ndarray,
    reml: bool,
    converged: bool,
    n_iter: int,
    message: str,
) -> CrossedFit:
    pt, md = ev.modes(theta)
    p, dof = model.p, model.n - model.p if reml else model.n
    scale = pt.r2 / dof
    gamma = np.append(-pt.beta, 1.0)
    cov_beta = scale * linalg.cho_solve((pt.chol_A, True), np.eye(p), check_finite=False)
    n_terms = len(model.terms)
    cov_re, blups, condvar = [None] * n_terms, [None] * n_terms, [None] * n_terms
    for k, t in enumerate(model.terms):
        lam = pt.lams[k]
        cov_re[t.position] = scale * 0.5 * (lam @ lam.T + (lam @ lam.T).T)
        if k == 0:
            blups[t.position] = np.einsum("akm,k->ma", md.LV1, gamma)
            D = pt.D
            cv = D + batched_matmul(batched_matmul(D, md.K), D)
            condvar[t.position] = scale * cv.transpose(2, 0, 1)
        else:
            rows = slice(t.offset, t.offset + t.size)
            blups[t.position] = (md.LV2[rows] @ gamma).reshape(t.n_levels, t.q)
            # Diagonal blocks of Omega (symmetric whenever some q_k > 1; else 1 x 1).
            idx = t.offset + np.arange(t.n_levels)[:, None] * t.q + np.arange(t.q)
            condvar[t.position] = scale * md.Omega[idx[:, :, None], idx[:, None, :]]
    singular = bool(np.any((model.lower_bounds() == 0.0) & (theta < _SINGULAR_TOL)))
    return CrossedFit(
        theta=np.asarray(theta, dtype=float),
        beta=pt.beta,
        cov_beta=cov_beta,
        scale=float(scale),
        llf=-0.5 * pt.deviance,
        deviance=pt.deviance,
        reml=reml,
        cov_re=cov_re,
        blups=blups,
        condvar=condvar,
        converged=bool(converged),
        n_iter=int(n_iter),
        n_fev=ev.n_fev,
        message=message,
        singular=singular,
    )


def crossed_fitted(X: np.ndarray, terms: Sequence[tuple], fit: CrossedFit) -> np.ndarray:
    """Conditional fitted values ``X beta + sum_k Z_k b_k`` for rows ``X``, ``terms``.

    ``terms`` as in :func:`build_crossed_model` (the ``diagonal`` flags are ignored);
    codes outside a term's fitted levels are an error.
    """
    out = np.asarray(X, dtype=float) @ fit.beta
    for (codes, Z, *_), b in zip(terms, fit.blups):
        Z = np.asarray(Z, dtype=float).reshape(out.size, -1)
        out += np.einsum("ia,ia->i", Z, b[np.asarray(codes)])
    return out


@dataclass(frozen=True)
class CrossedSolution:
    """The fit at one ``theta`` (the part of :class:`~mixedlm_sklearn._deviance.Solution`
    that inference uses)."""

    theta: np.ndarray
    beta: np.ndarray
    r2: float
    deviance: float
    scale: float
    _cov_beta_unscaled: np.ndarray

    def cov_beta(self) -> np.ndarray:
        return self.scale * self._cov_beta_unscaled


class CrossedDeviance:
    """``theta -> deviance`` of a several-term model, with ProfiledDeviance's interface.

    Parameters
    ----------
    model : CrossedModel
    reml : bool
    """

    def __init__(self, model: CrossedModel, reml: bool = True) -> None:
        self.model = model
        self.reml = reml
        self.p = model.p
        self.dof = model.n - model.p if reml else model.n

    @property
    def n_theta(self) -> int:
        return self.model.n_theta

    def lower_bounds(self) -> np.ndarray:
        return self.model.lower_bounds()

    def term_slices(self) -> list[tuple[int, bool, slice]]:
        """``(q_k, diagonal_k, slice of theta)`` per term, in the caller's order."""
        out = [None] * len(self.model.terms)
        for t in self.model.terms:
            out[t.position] = (t.q, bool(np.all(t.rows == t.cols)), t.theta_slice)
        return out

    def __call__(self, theta: np.ndarray) -> float:
        return self.model.deviance(theta, self.reml)

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        return self.model.deviance_and_gradient(theta, self.reml)

    def solve(self, theta: np.ndarray) -> CrossedSolution:
        theta = np.asarray(theta, dtype=float)
        pt = self.model._evaluate(theta, self.reml)
        a_inv = linalg.cho_solve((pt.chol_A, True), np.eye(self.p), check_finite=False)
        return CrossedSolution(theta, pt.beta, float(pt.r2), float(pt.deviance),
                               float(pt.r2 / self.dof), a_inv)
