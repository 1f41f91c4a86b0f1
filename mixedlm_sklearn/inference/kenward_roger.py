"""Kenward-Roger adjusted covariance of the fixed effects and denominator df (pbkrtest).

Model and parametrisation (Kenward & Roger 1997, Biometrics 53(3); Halekoh & Hojsgaard
2014, JSS 59(9), sec. 3-4 -- the R package pbkrtest, whose numbers this module reproduces):

    V = Z G Z' + R,   G = blockdiag_k(I_{m_k} (x) Sigma_k),   R = diag_rows(sigma_s^2 / w_r)

for random-effects terms k with ``m_k`` levels and ``q_k x q_k`` covariance ``Sigma_k``
(random effects ordered term by term, level by level, effect by effect: lme4's order),
prior weights ``w_r`` and a residual variance ``sigma_s^2`` per residual stratum ``s``
(one stratum for the usual model). The variance parameters ``gamma`` are, term by term,
the entries of ``Sigma_k``'s lower triangle column by column (variances and covariances,
not lme4's theta), then ``sigma_s^2`` per stratum: pbkrtest's order. ``V`` is linear in
``gamma``, with ``G_i = dV/dgamma_i = Z_k (I (x) E_i) Z_k'`` (``E_i`` the unit matrix of
the entry, symmetrised) or ``D_s W^{-1}`` (``D_s`` selecting stratum ``s``); second
derivatives vanish, so Kenward & Roger's ``R_ij`` terms are 0.

With ``Phi = (X'V^{-1}X)^{-1}`` (the REML covariance of beta at the estimates) and

    P_i  = -X'V^{-1} G_i V^{-1} X
    Q_ij =  X'V^{-1} G_i V^{-1} G_j V^{-1} X
    K_ij =  tr(V^{-1} G_i V^{-1} G_j)
    I_ij =  K_ij - 2 tr(Phi Q_ij) + tr(Phi P_i Phi P_j)      (twice the expected REML
                                                             information)
    W    =  2 I^{-1}                                          (asymptotic Cov(gamma))

the adjusted covariance is (K&R eq. 2, pbkrtest ``vcovAdj``)

    Phi_A = Phi + 2 Phi U Phi,   U = sum_ij W_ij (Q_ij - P_i Phi P_j).

For a hypothesis ``L beta = 0`` of rank ``q`` (K&R sec. 4; pbkrtest ``.KR_adjust``,
``Lb_ddf``): ``Theta = L'(L Phi L')^{-1} L``, ``A1 = sum_ij W_ij tr(Theta Phi P_i Phi)
tr(Theta Phi P_j Phi)``, ``A2 = sum_ij W_ij tr(Theta Phi P_i Phi Theta Phi P_j Phi)``,
``B = (A1 + 6 A2) / (2q)``, ``g = ((q+1) A1 - (q+4) A2) / ((q+2) A2)``,
``c1 = g / (3q + 2(1-g))``, ``c2 = (q-g) / (3q + 2(1-g))``, ``c3 = (q+2-g) / (3q + 2(1-g))``,
``rho = ((1 - A2/q) / (1 - c2 B))^2 (1 + c1 B) / (q (1 - c3 B))``, and

    ddf = 4 + (q + 2) / (q rho - 1),   lambda = ddf (1 - A2/q) / (ddf - 2),
    F = lambda (L b)'(L Phi_A L')^{-1}(L b) / q  ~  F(q, ddf).

Everything is computed from cross-products, never from ``n x n`` matrices. With
``T = R^{-1}``, ``Y = [X Z]`` and ``K_s = Y' W_s Y`` per stratum (``W_s`` the prior
weights of the stratum's rows), ``K = Y'TY = sum_s K_s / sigma_s^2``. Woodbury with a
factor ``G = Lambda Lambda'`` (``Lambda`` from each ``Sigma_k``'s eigendecomposition, so
singular ``Sigma_k`` are fine) and ``M = I + Lambda' K_zz Lambda`` gives

    C = Lambda M^{-1} Lambda' ,   V^{-1} Y = T Y Gamma,   Gamma = I - J_z C K_{z.},
    H = Y'V^{-1}Y = K - K_{.z} C K_{z.}      (so Phi = (H_xx)^{-1})

and then, for random parameters ``i`` (term k) and ``j`` (term l), ``E_i`` placed in
term k's block of the random-effects space, and residual parameters ``s``, ``t``:

    Y'V^{-1}G_iV^{-1}Y = H_{.z} E_i H_{z.},         Y'V^{-1}G_sV^{-1}Y = Gamma'K_sGamma / sigma_s^4 =: F_s
    Q_ij = H_xz E_i H_zz E_j H_zx,                  Q_is = H_xz E_i (F_s)_zx
    Q_st = [Gamma'(delta_st K_s / sigma_s^6 - K_{s,.z} C K_{t,z.} / (sigma_s^4 sigma_t^4)) Gamma]_xx
    K_ij = tr(H_zz E_i H_zz E_j),                   K_is = tr(E_i (F_s)_zz)
    K_st = delta_st (n_s / sigma_s^4 - 2 tr(C K_{s,zz}) / sigma_s^6)
           + tr(C K_{s,zz} C K_{t,zz}) / (sigma_s^4 sigma_t^4)

(``n_s`` the number of rows of stratum ``s``). The cost is that of dense algebra in the
``p + N`` dimensional space (``N`` random effects): O((p + N)^3) time, O((p + N)^2)
memory, independent of the number of rows.

Correlated residuals (``MixedLMRegressor(correlation=...)``, nlme's ``corStruct``): the
residual covariance ``V_e`` is block diagonal over residual groups, ``V_e = D R(phi) D``
with ``D = diag(sigma_{s(r)} / sqrt(w_r))`` (a variance per stratum, possibly varying
within a group: nlme's ``varIdent`` next to the correlation). Its variance parameters are
the ``sigma_s^2`` and the correlation's parameter ``phi``, last, on nlme's scale (corAR1's
and corCAR1's ``Phi``, corExp's ``range``, corCompSymm's ``Rho``; the adjustment depends
on this choice through ``R_ij``). ``V`` is not linear in ``phi`` (nor in the
``sigma_s^2`` where strata vary within a group), so Kenward & Roger's (1997, eq. 2)
second-derivative terms stay:

    Phi_A = Phi + 2 Phi (U - 1/4 sum_ij W_ij R_ij) Phi,   R_ij = X'V^{-1} (d^2V / dgamma_i dgamma_j) V^{-1}X.

This is SAS PROC MIXED's ``DDFM=KR`` (its default, not ``KR(FIRSTORDER)``); ``W`` is, as
above, twice the inverse expected information, and the df formulas are unchanged. There
is no R reference for these numbers: pbkrtest takes lme4 fits, which have no residual
correlation, and mmrm (models without random effects) differentiates in its own
unconstrained parameters and takes ``W`` from the observed information; the tests check a
dense ``n x n`` oracle. Everything stays in cross-products: ``K = Y'V_e^{-1}Y`` (one
stratum) in place of ``sum_s K_s / sigma_s^2``, and each residual parameter ``a`` (with
``G_a = dV_e/da``, ``H_ab = d^2V_e/da db``) is treated as the residual variances above with
``A_a = Y'V_e^{-1}G_aV_e^{-1}Y`` in place of ``K_s / sigma_s^4``:

    F_a = Gamma' A_a Gamma,   P_a = -(F_a)_xx,   Q_ia = H_xz E_i (F_a)_zx,   K_ia = tr(E_i (F_a)_zz),
    Q_ab = [Gamma' A_ab Gamma]_xx - (A_a Gamma_{.x})_z' C (A_b Gamma_{.x})_z,
    K_ab = tr(V_e^{-1}G_aV_e^{-1}G_b) - 2 tr(C A_ab,zz) + tr(C A_a,zz C A_b,zz),
    R_ab = [Gamma' (Y'V_e^{-1}H_abV_e^{-1}Y) Gamma]_xx

with ``A_ab = Y'V_e^{-1}G_aV_e^{-1}G_bV_e^{-1}Y`` (:class:`ResidualParameters`). These
products come from the rows, dense within each residual group and vectorised over the
groups (:meth:`~mixedlm_sklearn._correlation.CorrelatedRows.kr_products`, which gives
``G_a`` and ``H_ab`` in closed form). A correlation estimated on its bound of independence
(car1's ``Phi = 0``, exp's ``range = 0``, where ``R'`` is not finite) is left out (the
uncorrelated model's adjustment). Not covered: fits from chunks (no rows).

pbkrtest (0.5.2) builds the residual part as ``sigma^2 I`` even for an lmer fit with prior
weights, while taking ``Phi`` from the weighted fit; with weights the two disagree and the
numbers here (which use ``sigma^2 W^{-1}``, the model that was fitted) differ from R's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import linalg, stats

from ._parameters import fitted_model
from ._protocol import require

__all__ = [
    "RandomBlock",
    "KRInputs",
    "ResidualParameters",
    "KenwardRoger",
    "KRFTest",
    "covariance_derivatives",
    "kenward_roger",
    "kenward_roger_model",
    "cov_fe",
]

# pbkrtest inverts the information with solve() unless its smallest absolute eigenvalue
# is at most 1e-10, then with MASS::ginv (singular values above sqrt(eps) of the largest).
_INFO_COND = 1e-10
_GINV_TOL = float(np.sqrt(np.finfo(float).eps))


def covariance_derivatives(q: int, diagonal: bool = False) -> list[np.ndarray]:
    """pbkrtest's variance parameters of a ``q x q`` covariance, as derivative matrices.

    One matrix per entry of the lower triangle, column by column (R's
    ``lower.tri(diag = TRUE)`` order): ``E_ii`` for a variance, ``E_ij + E_ji`` for a
    covariance. ``diagonal=True`` keeps the variances only (a ``||`` term).

    Examples
    --------
    >>> [d.tolist() for d in covariance_derivatives(2)]
    [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]
    >>> len(covariance_derivatives(3)), len(covariance_derivatives(3, diagonal=True))
    (6, 3)
    """
    out = []
    for j in range(q):
        for i in range(j, q):
            if diagonal and i != j:
                continue
            E = np.zeros((q, q))
            E[i, j] = E[j, i] = 1.0
            out.append(E)
    return out


@dataclass(frozen=True)
class RandomBlock:
    """One random-effects term: ``m`` levels sharing the ``q x q`` covariance ``cov``.

    Attributes
    ----------
    n_levels : int
        Levels of the grouping factor (``m_k``).
    cov : ndarray of shape (q, q)
        The term's covariance on the data's scale (lme4's ``VarCorr``, ``cov_re_``).
    derivatives : sequence of (q, q) arrays, optional
        ``d Sigma_k / d gamma_i`` for the term's variance parameters; default
        :func:`covariance_derivatives` (all variances and covariances, or with
        ``diagonal`` the variances only).
    diagonal : bool
        The term's effects are independent (``(x || g)``): only variances are parameters.
    name : str
        Label for the parameter names (the grouping factor).
    """

    n_levels: int
    cov: np.ndarray
    derivatives: tuple[np.ndarray, ...] | None = None
    diagonal: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        cov = np.atleast_2d(np.asarray(self.cov, dtype=float))
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"cov must be a square matrix, got shape {cov.shape}")
        if int(self.n_levels) < 1:
            raise ValueError(f"n_levels must be positive, got {self.n_levels}")
        derivs = self.derivatives
        if derivs is None:
            derivs = covariance_derivatives(cov.shape[0], self.diagonal)
        derivs = tuple(np.atleast_2d(np.asarray(d, dtype=float)) for d in derivs)
        if any(d.shape != cov.shape for d in derivs):
            raise ValueError(f"every derivative must have the shape of cov {cov.shape}")
        object.__setattr__(self, "cov", 0.5 * (cov + cov.T))
        object.__setattr__(self, "derivatives", derivs)
        object.__setattr__(self, "n_levels", int(self.n_levels))

    @property
    def q(self) -> int:
        return self.cov.shape[0]

    def param_names(self) -> list[str]:
        """``cov[i,j]|name`` for each parameter (indices of its nonzero upper entry)."""
        names = []
        for d in self.derivatives:
            i, j = np.argwhere(d != 0)[-1] if np.any(d) else (0, 0)
            names.append(f"cov[{min(i, j)},{max(i, j)}]|{self.name}")
        return names

    def factor(self) -> np.ndarray:
        """``Lambda_k`` with ``Lambda_k Lambda_k' = cov`` (eigendecomposition: PSD allowed)."""
        w, U = np.linalg.eigh(self.cov)
        return U * np.sqrt(np.clip(w, 0.0, None))


@dataclass(frozen=True)
class KRInputs:
    """What :func:`kenward_roger` needs from the data: per residual stratum ``X'W_sX``,
    ``Z'W_sX``, ``Z'W_sZ`` and the stratum's number of rows.

    ``W_s`` holds the prior weights of stratum ``s``'s rows (0 elsewhere); the random
    effects are ordered term by term, level by level, effect by effect (lme4's order).
    Built from a fit's cross-products (:meth:`from_cross_products`, what the estimator
    uses) or from designs (:meth:`from_designs`, for tests and oracles).

    Attributes
    ----------
    xtx : list of (p, p) arrays
    ztx : list of (N, p) arrays
    ztz : list of (N, N) sparse (or dense) matrices
    n_obs : list of int
    n_levels : list of int
        Levels per random-effects term.
    strata : list
        The stratum labels, in the order of the lists (``[None]`` for one stratum).
    """

    xtx: list
    ztx: list
    ztz: list
    n_obs: list
    n_levels: list
    strata: list

    @classmethod
    def from_designs(cls, X: Any, re_terms: Sequence[tuple[Any, Any]], weights: Any = None,
                     strata: Any = None) -> "KRInputs":
        """The inputs of a model given by its designs.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects design (intercept column included).
        re_terms : sequence of (labels, Z)
            Per random-effects term: the group label of each row and the term's ``(n, q_k)``
            design. Levels are sorted (lme4 orders a factor's levels).
        weights : array-like of shape (n,), optional
            Prior weights (``Var(e_r) = sigma^2 / w_r``).
        strata : array-like of shape (n,), optional
            Residual stratum of each row (a residual variance per stratum); strata in
            sorted order unless ``strata`` is a Categorical (its categories' order).

        Examples
        --------
        >>> import numpy as np
        >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 0.0, 1.0]])
        >>> kr = KRInputs.from_designs(X, [(["a", "a", "b", "b"], np.ones((4, 1)))])
        >>> kr.ztz[0].toarray().tolist(), kr.ztx[0].tolist(), kr.n_levels
        ([[2.0, 0.0], [0.0, 2.0]], [[2.0, 1.0], [2.0, 1.0]], [2])
        """
        X = np.asarray(X, dtype=float)
        n = X.shape[0]
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float).reshape(-1)
        if w.shape != (n,):
            raise ValueError(f"weights must have {n} values, got {w.size}")
        blocks, n_levels = [], []
        for labels, Z in re_terms:
            Z = np.asarray(Z, dtype=float)
            if Z.ndim == 1:
                Z = Z[:, None]
            codes, levels = pd.factorize(pd.Series(np.asarray(labels)), sort=True)
            m, q = len(levels), Z.shape[1]
            rows = np.repeat(np.arange(n), q)
            cols = (codes[:, None] * q + np.arange(q)).reshape(-1)
            blocks.append(sp.csr_matrix((Z.reshape(-1), (rows, cols)), shape=(n, m * q)))
            n_levels.append(m)
        Zs = sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((n, 0))
        if strata is None:
            groups, labels = np.zeros(n, dtype=int), [None]
        else:
            s = pd.Series(np.asarray(strata) if not isinstance(strata, pd.Categorical) else strata)
            groups, uniques = pd.factorize(s, sort=True)
            labels = list(uniques)
        xtx, ztx, ztz, n_obs = [], [], [], []
        for g in range(len(labels)):
            ws = np.where(groups == g, w, 0.0)
            WX = X * ws[:, None]
            xtx.append(X.T @ WX)
            ztx.append(np.asarray(Zs.T @ WX))
            ztz.append((Zs.T @ sp.diags(ws) @ Zs).tocsr())
            n_obs.append(int(np.sum(groups == g)))
        return cls(xtx, ztx, ztz, n_obs, n_levels, labels)

    @classmethod
    def from_cross_products(cls, cp: Any, strata: Any = None) -> "KRInputs":
        """The inputs of a fit from the engine's cross-products (any terms and strata).

        Parameters
        ----------
        cp : mixedlm_sklearn._crossprod.CrossProducts
            ``model_.cross_products`` of a fit (the kept fixed-effects columns).
        strata : sequence, optional
            The strata's labels (``model_.strata``).

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
        >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
        >>> kr = KRInputs.from_cross_products(est.model_.cross_products)
        >>> kr.ztz[0].shape, kr.ztx[0].shape, kr.n_levels
        ((36, 36), (36, 2), [18])
        """
        terms = cp.terms
        sizes = [t.size for t in terms]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        N, p = int(offsets[-1]), cp.p
        xtx, ztx, ztz, n_obs = [], [], [], []
        for s in range(cp.n_strata):
            xtx.append(np.array(cp.xyxy[s][:p, :p], dtype=float))
            ztx.append(np.concatenate([z[s][:, :p, :].transpose(2, 0, 1).reshape(-1, p)
                                       for z in cp.zxy]) if terms else np.zeros((0, p)))
            rows, cols, vals = [], [], []
            for k, (t, d) in enumerate(zip(terms, cp.diag)):
                q, m = t.q, t.n_levels
                r = offsets[k] + np.arange(m)[:, None, None] * q + np.arange(q)[None, :, None]
                c = offsets[k] + np.arange(m)[:, None, None] * q + np.arange(q)[None, None, :]
                rows.append(np.broadcast_to(r, (m, q, q)).ravel())
                cols.append(np.broadcast_to(c, (m, q, q)).ravel())
                vals.append(d[s].transpose(2, 0, 1).ravel())
            for b in cp.pairs:
                qk, ql = terms[b.k].q, terms[b.l].q
                r = np.broadcast_to(offsets[b.k] + b.level_k[:, None, None] * qk
                                    + np.arange(qk)[:, None], b.values.shape[1:])
                c = np.broadcast_to(offsets[b.l] + b.level_l[:, None, None] * ql + np.arange(ql),
                                    b.values.shape[1:])
                for rr, cc in ((r, c), (c, r)):
                    rows.append(rr.ravel())
                    cols.append(cc.ravel())
                    vals.append(b.values[s].ravel())
            ztz.append(sp.csr_matrix((np.concatenate(vals) if vals else np.zeros(0),
                                      (np.concatenate(rows) if rows else np.zeros(0, int),
                                       np.concatenate(cols) if cols else np.zeros(0, int))),
                                     shape=(N, N)))
            n_obs.append(int(cp.n_obs[s]))
        labels = list(strata) if strata is not None else (
            list(range(cp.n_strata)) if cp.n_strata > 1 else [None])
        return cls(xtx, ztx, ztz, n_obs, [t.n_levels for t in terms], labels)


@dataclass(frozen=True)
class ResidualParameters:
    """Variance parameters of a residual covariance ``V_e`` that is not diagonal (correlated
    residuals), given by products of the rows.

    ``V = Z G Z' + V_e`` with ``V_e`` depending on the parameters ``a`` (derivatives ``G_a``,
    second derivatives ``H_ab``); with ``Y = [X Z]`` (the columns of :class:`KRInputs`):

    Attributes
    ----------
    first : list of (p + N, p + N) arrays
        ``Y'V_e^{-1}G_aV_e^{-1}Y`` per parameter.
    product : list of lists of (p + N, p + N) arrays
        ``Y'V_e^{-1}G_aV_e^{-1}G_bV_e^{-1}Y`` (symmetrised) per pair.
    second : list of lists of (p + N, p + N) arrays
        ``Y'V_e^{-1}H_abV_e^{-1}Y`` per pair (Kenward & Roger's ``R_ab`` before the
        projection on ``X``).
    traces : ndarray (k, k)
        ``tr(V_e^{-1}G_aV_e^{-1}G_b)``.
    names : list of str
    """

    first: list
    product: list
    second: list
    traces: np.ndarray
    names: list


class KRFTest(NamedTuple):
    """Kenward-Roger F test of ``L beta = rhs`` (pbkrtest ``KRmodcomp``).

    ``statistic`` is the scaled ``F = scaling * statistic_unscaled`` referred to
    ``F(ndf, ddf)``; ``statistic_unscaled`` the Wald statistic over ``ndf`` with the
    adjusted covariance (pbkrtest's ``FtestU``, whose p-value uses the same ``ddf``).
    """

    statistic: float
    ndf: int
    ddf: float
    scaling: float
    pvalue: float
    statistic_unscaled: float
    pvalue_unscaled: float


def _rank(L: np.ndarray) -> int:
    # Matrix::rankMatrix's default: singular values above max(dim) * eps * the largest
    return int(np.linalg.matrix_rank(L))


@dataclass(frozen=True)
class KenwardRoger:
    """The Kenward-Roger quantities of a fit (see the module docstring for the formulas).

    Attributes
    ----------
    cov_beta : ndarray of shape (p, p)
        ``Phi = (X'V^{-1}X)^{-1}``, the unadjusted covariance (lme4's ``vcov``).
    cov_beta_adj : ndarray of shape (p, p)
        ``Phi_A``, pbkrtest's ``vcovAdj``.
    P : ndarray of shape (k, p, p)
        ``P_i = -X'V^{-1}G_iV^{-1}X`` per variance parameter.
    W : ndarray of shape (k, k)
        ``2 I^{-1}``: the asymptotic covariance of the variance parameters.
    information : ndarray of shape (k, k)
        ``I`` (pbkrtest's ``IE2``, twice the expected REML information).
    param_names : list of str
        The variance parameters in order: each term's ``cov[i,j]|group``, then
        ``sigma2`` (or ``sigma2|<stratum>`` per stratum).
    """

    cov_beta: np.ndarray
    cov_beta_adj: np.ndarray
    P: np.ndarray
    W: np.ndarray
    information: np.ndarray
    param_names: list = field(default_factory=list)

    def _moments(self, L: np.ndarray) -> tuple[float, float]:
        """``A1``, ``A2`` of K&R for the hypothesis rows ``L`` (full row rank)."""
        Phi = self.cov_beta
        Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
        u = np.einsum("ab,kbc,cd->kad", Theta @ Phi, self.P, Phi)
        tr = np.einsum("kaa->k", u)
        A1 = float(tr @ self.W @ tr)
        A2 = float(np.einsum("ij,iab,jba->", self.W, u, u))
        return A1, A2

    @staticmethod
    def _ddf_scaling(A1: float, A2: float, q: int) -> tuple[float, float]:
        """pbkrtest's ``df2`` and ``F.scaling`` from the moments (``.KR_adjust``)."""
        if A2 == 0.0:  # the contrast's variance does not depend on the variance parameters
            return np.inf, 1.0
        B = (A1 + 6.0 * A2) / (2.0 * q)
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        den = 3.0 * q + 2.0 * (1.0 - g)
        c1, c2, c3 = g / den, (q - g) / den, (q + 2.0 - g) / den
        V0 = 1.0 + c1 * B
        V1 = 1.0 - c2 * B
        V2 = 1.0 - c3 * B
        V0 = 0.0 if abs(V0) < 1e-10 else V0
        num = 1.0 - A2 / q
        ratio = 1.0 if abs(num) < 1e-14 and abs(V1) < 1e-14 else num / V1
        rho = ratio**2 * V0 / (q * V2)
        ddf = 4.0 + (q + 2.0) / (q * rho - 1.0)
        scaling = 1.0 if abs(ddf - 2.0) < 1e-2 else ddf * (1.0 - A2 / q) / (ddf - 2.0)
        return float(ddf), float(scaling)

    def ddf(self, L: Any) -> float:
        """Denominator df of the joint hypothesis ``L beta = 0`` (pbkrtest ``Lb_ddf``).

        ``q`` is the number of rows of ``L``, as in ``Lb_ddf`` (which assumes full row
        rank); for one row this is the df of the t test of ``l'beta``.
        """
        L = np.atleast_2d(np.asarray(L, dtype=float))
        return self._ddf_scaling(*self._moments(L), L.shape[0])[0]

    def row_ddf(self, L: Any) -> np.ndarray:
        """The t-test df of each row of ``L`` separately (``Lb_ddf`` row by row)."""
        L = np.atleast_2d(np.asarray(L, dtype=float))
        return np.array([self.ddf(row[None, :]) for row in L])

    def t_test(self, L: Any, beta: Any, rhs: Any = None, alpha: float = 0.05,
               names: Sequence[str] | None = None) -> pd.DataFrame:
        """t tests of the rows of ``L`` with the adjusted covariance (lmerTest ``contest1D``).

        Returns a DataFrame with columns ``estimate``, ``std_error`` (from ``Phi_A``),
        ``df`` (Kenward-Roger), ``t_value``, ``p_value`` (two-sided), ``ci_lower``,
        ``ci_upper`` (``estimate -+ t_{df, 1 - alpha/2} std_error``). With ``L`` the
        identity this is lmerTest's ``summary(fit, ddf = "Kenward-Roger")``.
        """
        L = np.atleast_2d(np.asarray(L, dtype=float))
        beta = np.asarray(beta, dtype=float).reshape(-1)
        c = np.zeros(L.shape[0]) if rhs is None else np.asarray(rhs, dtype=float).reshape(-1)
        estimate = L @ beta
        se = np.sqrt(np.einsum("ri,ij,rj->r", L, self.cov_beta_adj, L))
        df = self.row_ddf(L)
        t = (estimate - c) / se
        qt = stats.t.ppf(1.0 - alpha / 2.0, df)
        return pd.DataFrame({
            "estimate": estimate, "std_error": se, "df": df, "t_value": t,
            "p_value": 2.0 * stats.t.sf(np.abs(t), df),
            "ci_lower": estimate - qt * se, "ci_upper": estimate + qt * se,
        }, index=None if names is None else pd.Index(list(names)))

    def f_test(self, L: Any, beta: Any, rhs: Any = None) -> KRFTest:
        """Kenward-Roger F test of ``L beta = rhs`` (pbkrtest ``KRmodcomp``; lmerTest passes
        ``betaH = ginv(L) rhs``, so a nonzero ``rhs`` is tested as ``L (beta - betaH) = 0``).
        """
        L = np.atleast_2d(np.asarray(L, dtype=float))
        beta = np.asarray(beta, dtype=float).reshape(-1)
        if rhs is not None and np.any(np.asarray(rhs, dtype=float) != 0):
            beta = beta - np.linalg.pinv(L) @ np.asarray(rhs, dtype=float).reshape(-1)
        q = _rank(L)
        A1, A2 = self._moments(L)
        ddf, scaling = self._ddf_scaling(A1, A2, q)
        Lb = L @ beta
        wald = float(Lb @ np.linalg.solve(L @ self.cov_beta_adj @ L.T, Lb))
        F_u = wald / q
        F = scaling * F_u
        return KRFTest(F, q, ddf, scaling, float(stats.f.sf(F, q, ddf)), F_u,
                       float(stats.f.sf(F_u, q, ddf)))


def _as_list(value: Any, n: int | None = None) -> list:
    """A per-stratum argument as a list (one stratum: the bare value)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if n is not None and n > 1:
        raise ValueError("with several strata every per-stratum argument must be a list")
    return [value]


def _dense(a: Any) -> np.ndarray:
    return a.toarray() if sp.issparse(a) else np.asarray(a, dtype=float)


def _apply_blocks(M: np.ndarray, block: RandomBlock, D: np.ndarray) -> np.ndarray:
    """``M (I_m (x) D)`` for the columns ``M`` of one term (level by level, q effects each)."""
    rows = M.shape[0]
    # one (rows * m, q) @ (q, q) product, much faster than a stack of tiny matmuls
    return (M.reshape(rows * block.n_levels, block.q) @ D).reshape(rows, -1)


def kenward_roger(inputs: KRInputs, blocks: Sequence[RandomBlock], sigma2: Any,
                  residual: ResidualParameters | None = None) -> KenwardRoger:
    """Kenward-Roger quantities from the cross-products of a linear mixed model.

    Parameters
    ----------
    inputs : KRInputs
        ``X'W_sX``, ``Z'W_sX``, ``Z'W_sZ`` and the rows of each residual stratum.
    blocks : sequence of RandomBlock
        The random-effects terms in the order of ``Z``'s columns, with their covariances
        at the (REML) estimates.
    sigma2 : float, or a list of float
        Residual variance of each stratum at the estimates.
    residual : ResidualParameters, optional
        A residual covariance ``V_e`` that is not diagonal (correlated residuals): its
        parameters replace the strata's residual variances, with Kenward & Roger's
        second-derivative terms ``R_ij``; ``inputs`` then hold ``Y'V_e^{-1}Y`` as one
        stratum, and ``sigma2`` must be 1.

    Returns
    -------
    KenwardRoger
        With ``cov_beta_adj`` (pbkrtest ``vcovAdj``) and the methods ``ddf``, ``t_test``,
        ``f_test``.

    Notes
    -----
    The formulas are in the module docstring (Kenward & Roger 1997; Halekoh & Hojsgaard
    2014). As pbkrtest, use REML estimates; the residual variances are parameters like
    the random-effects variances and covariances. For a fitted estimator use
    :func:`kenward_roger_model`.

    Examples
    --------
    One factor, random intercepts, balanced: the adjusted covariance is the plain one and
    the df are those of the classical split-plot F test.

    >>> import numpy as np
    >>> g = np.repeat(np.arange(6), 4)
    >>> X = np.column_stack([np.ones(24), np.tile([-1.5, -0.5, 0.5, 1.5], 6)])
    >>> inputs = KRInputs.from_designs(X, [(g, np.ones((24, 1)))])
    >>> kr = kenward_roger(inputs, [RandomBlock(6, [[2.0]])], 1.0)
    >>> np.allclose(kr.cov_beta_adj, kr.cov_beta)
    True
    >>> round(kr.ddf([0.0, 1.0]), 6), round(kr.ddf([1.0, 0.0]), 6)
    (17.0, 5.0)
    """
    S = len(inputs.xtx)
    xtx_l = [_dense(a) for a in inputs.xtx]
    ztx_l = [_dense(a) for a in inputs.ztx]
    ztz_l = [_dense(a) for a in inputs.ztz]
    n_l = [float(v) for v in inputs.n_obs]
    s2 = np.asarray(_as_list(sigma2, S), dtype=float).reshape(-1)
    if not (len(ztx_l) == len(ztz_l) == len(n_l) == s2.size == S):
        raise ValueError("xtx, ztx, ztz, n_obs and sigma2 need one entry per stratum")
    if np.any(s2 <= 0):
        raise ValueError(f"residual variances must be positive, got {s2}")
    blocks = list(blocks)
    if residual is not None and (S != 1 or s2[0] != 1.0):
        raise ValueError("with residual parameters, inputs hold Y'V_e^{-1}Y as one stratum "
                         "and sigma2 is 1")
    if not blocks and residual is None:
        raise ValueError("Kenward-Roger needs at least one random-effects term or a residual "
                         "correlation")
    p = xtx_l[0].shape[0]
    sizes = [b.n_levels * b.q for b in blocks]
    N = int(sum(sizes))
    for a, b, c in zip(xtx_l, ztx_l, ztz_l):
        if a.shape != (p, p) or b.shape != (N, p) or c.shape != (N, N):
            raise ValueError(f"cross-products must have shapes (p, p), (N, p), (N, N) with "
                             f"p = {p}, N = {N} (from blocks); got {a.shape}, {b.shape}, {c.shape}")
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    zsl = [slice(p + starts[k], p + starts[k + 1]) for k in range(len(blocks))]
    D = p + N

    # K_s = Y'W_sY per stratum and K = Y'R^{-1}Y
    K_s = [np.block([[a, b.T], [b, c]]) for a, b, c in zip(xtx_l, ztx_l, ztz_l)]
    K = sum(k / v for k, v in zip(K_s, s2))

    # Woodbury through G = Lambda Lambda': M = I + Lambda' K_zz Lambda is positive definite
    # even when some Sigma_k is singular, where G^{-1} would not exist.
    Lam = (sp.block_diag([sp.kron(sp.identity(b.n_levels), b.factor()) for b in blocks],
                         format="csr") if blocks else sp.csr_matrix((0, 0)))
    LtK = np.asarray((Lam.T @ K[p:, :]))  # Lambda' K_{z.}, (N, D)
    M = np.eye(N) + np.asarray(Lam.T @ LtK[:, p:].T).T
    cho = linalg.cho_factor(0.5 * (M + M.T), lower=True)
    half = linalg.solve_triangular(cho[0], LtK, lower=True)  # L^{-1} Lambda' K_{z.}, M = L L'
    H = K - half.T @ half  # Y'V^{-1}Y = K - K_{.z} Lambda M^{-1} Lambda' K_{z.}
    H = 0.5 * (H + H.T)
    CK = np.asarray(Lam @ linalg.solve_triangular(cho[0], half, lower=True, trans="T"))  # C K_{z.}
    Phi = linalg.inv(H[:p, :p])
    Phi = 0.5 * (Phi + Phi.T)

    # ---- per-parameter pieces ----
    names: list[str] = []
    kinds: list[tuple] = []  # ("re", k, D_i, H E_i) or ("res", s)
    for k, b in enumerate(blocks):
        Hk = H[:, zsl[k]]
        for d, name in zip(b.derivatives, b.param_names()):
            kinds.append(("re", k, d, _apply_blocks(Hk, b, d)))
            names.append(name)
    # Residual parameters need only some blocks of F_s = Gamma'K_sGamma / sigma_s^4: its
    # first p columns and the level-diagonal blocks of its random-effects part. With
    # Gamma = I - J_z C K_{z.}: Gamma_{.x} = [I; -C K_zx], Gamma_zz = I - C K_zz, Gamma_xz = 0.
    Gx = np.vstack([np.eye(p), -CK[:, :p]])
    Gzz = np.eye(N) - CK[:, p:]

    def C_times(A: np.ndarray) -> np.ndarray:
        """``C A = Lambda M^{-1} Lambda' A`` without forming C."""
        return np.asarray(Lam @ linalg.cho_solve(cho, np.asarray(Lam.T @ A)))

    Fx, Fdiag, a_res, CKs = [], [], [], []
    for s in range(S if residual is None else 0):
        KsGx = K_s[s] @ Gx
        Fx.append((KsGx - CK.T @ KsGx[p:]) / s2[s] ** 2)  # F_s[:, :p] = Gamma' K_s Gx / s^4
        a_res.append(KsGx[p:])  # K_{s,z.} Gamma_{.x}
        if S == 1:  # K_s = sigma^2 K, so K_{s,zz} Gamma_zz = sigma^2 H_zz and C K_{s,zz} = sigma^2 C K_zz
            Wz = s2[0] * H[p:, p:]
            CKs.append(s2[0] * CK[:, p:])
        else:
            Wz = K_s[s][p:, p:] @ Gzz
            CKs.append(C_times(K_s[s][p:, p:]))
        blocks_s = []
        for k, b in enumerate(blocks):
            cols = slice(starts[k], starts[k + 1])
            # sum over levels of the level's diagonal block of Gamma_zz' K_s,zz Gamma_zz:
            # one (N m, q)' (N m, q) product
            G3 = np.ascontiguousarray(Gzz[:, cols]).reshape(N * b.n_levels, b.q)
            W3 = np.ascontiguousarray(Wz[:, cols]).reshape(N * b.n_levels, b.q)
            blocks_s.append(G3.T @ W3 / s2[s] ** 2)
        Fdiag.append(blocks_s)
        kinds.append(("res", s))
        names.append("sigma2" if S == 1 else f"sigma2|{inputs.strata[s]}")
    if residual is not None:
        # each parameter as the strata's variances above, with A_a = Y'V_e^{-1}G_aV_e^{-1}Y
        # in place of K_s / sigma_s^4: F_a = Gamma'A_aGamma, and for two of them
        # Q_ab = [Gamma'A_abGamma]_xx - (A_aGamma_{.x})_z' C (A_bGamma_{.x})_z,
        # K_ab = tr(V_e^{-1}G_aV_e^{-1}G_b) - 2 tr(C A_ab,zz) + tr(C A_a,zz C A_b,zz)
        res = residual
        k_res = len(res.first)
        if not (len(res.product) == len(res.second) == len(res.names) == k_res
                and np.shape(res.traces) == (k_res, k_res)):
            raise ValueError("residual parameters need first, product, second, traces and "
                             "names for each")
        A_res = [_dense(a) for a in res.first]
        if any(a.shape != (D, D) for a in A_res):
            raise ValueError(f"the residual parameters' products must be ({D}, {D})")
        Cmat = C_times(np.eye(N))  # once: tr(C A) = sum(C * A) for the k(k+1)/2 pairs
        AG, Fx_gen, Fdiag_gen, CA = [], [], [], []
        for a, A in enumerate(A_res):
            AGa = A @ Gx  # A_a Gamma_{.x}
            AG.append(AGa)
            Fx_gen.append(AGa - CK.T @ AGa[p:])  # F_a[:, :p]
            Wz = A[p:, p:] @ Gzz
            blocks_a = []
            for k, b in enumerate(blocks):
                cols = slice(starts[k], starts[k + 1])
                G3 = np.ascontiguousarray(Gzz[:, cols]).reshape(N * b.n_levels, b.q)
                W3 = np.ascontiguousarray(Wz[:, cols]).reshape(N * b.n_levels, b.q)
                blocks_a.append(G3.T @ W3)
            Fdiag_gen.append(blocks_a)
            CA.append(Cmat @ A[p:, p:])
            kinds.append(("gen", a))
            names.append(res.names[a])
    n_par = len(kinds)

    P = np.empty((n_par, p, p))
    for i, kind in enumerate(kinds):
        if kind[0] == "re":
            k, HE = kind[1], kind[3]
            P[i] = -HE[:p] @ H[zsl[k], :p]
        elif kind[0] == "res":
            P[i] = -Fx[kind[1]][:p]
        else:
            P[i] = -Fx_gen[kind[1]][:p]
        P[i] = 0.5 * (P[i] + P[i].T)

    Q = np.empty((n_par, n_par, p, p))
    Ktr = np.empty((n_par, n_par))
    for i, ki in enumerate(kinds):
        for j in range(i, n_par):
            kj = kinds[j]
            if ki[0] == "re" and kj[0] == "re":
                k, l, HEi, HEj = ki[1], kj[1], ki[3], kj[3]
                # H_xz E_i H_zz E_j H_zx, and tr(H_zz E_i H_zz E_j)
                Q[i, j] = HEi[:p] @ HEj[zsl[k]] @ H[zsl[l], :p]
                Ktr[i, j] = np.sum(HEi[zsl[l]] * HEj[zsl[k]].T)
            elif ki[0] == "re" and kj[0] == "gen":
                k, d, HEi, a = ki[1], ki[2], ki[3], kj[1]
                Q[i, j] = HEi[:p] @ Fx_gen[a][zsl[k]]  # H_xz E_i (F_a)_zx
                Ktr[i, j] = float(np.sum(Fdiag_gen[a][k] * d))  # tr(E_i (F_a)_zz)
            elif ki[0] == "re":
                k, d, HEi, s = ki[1], ki[2], ki[3], kj[1]
                Q[i, j] = HEi[:p] @ Fx[s][zsl[k]]  # H_xz E_i (F_s)_zx
                Ktr[i, j] = float(np.sum(Fdiag[s][k] * d))  # tr(E_i (F_s)_zz)
            elif ki[0] == "gen":
                a, b = ki[1], kj[1]
                Aab = _dense(res.product[a][b])
                Q[i, j] = Gx.T @ Aab @ Gx - AG[a][p:].T @ C_times(AG[b][p:])
                Ktr[i, j] = (float(res.traces[a][b])
                             - 2.0 * float(np.sum(Cmat * Aab[p:, p:]))
                             + float(np.sum(CA[a] * CA[b].T)))
            else:
                s, t = ki[1], kj[1]
                cross = a_res[s].T @ C_times(a_res[t]) / (s2[s] ** 2 * s2[t] ** 2)
                trace = float(np.sum(CKs[s] * CKs[t].T)) / (s2[s] ** 2 * s2[t] ** 2)
                if s == t:
                    cross = Gx.T @ K_s[s] @ Gx / s2[s] ** 3 - cross
                    trace += n_l[s] / s2[s] ** 2 - 2.0 * float(np.trace(CKs[s])) / s2[s] ** 3
                else:
                    cross = -cross
                Q[i, j] = cross
                Ktr[i, j] = trace
            if j != i:
                Q[j, i] = Q[i, j].T
                Ktr[j, i] = Ktr[i, j]

    PhiP = Phi @ P  # (k, p, p): Phi P_i
    info = (Ktr - 2.0 * np.einsum("ab,ijba->ij", Phi, Q)
            + np.einsum("iab,jba->ij", PhiP, PhiP))
    info = 0.5 * (info + info.T)
    if np.min(np.abs(np.linalg.eigvalsh(info))) > _INFO_COND:
        W = 2.0 * np.linalg.inv(info)
    else:  # a variance parameter on its boundary or not identified: as MASS::ginv
        W = 2.0 * np.linalg.pinv(info, rcond=_GINV_TOL)
    W = 0.5 * (W + W.T)
    U = np.einsum("ij,ijab->ab", W, Q) - np.einsum("ij,iab,bc,jcd->ad", W, P, Phi, P)
    if residual is not None:
        # Kenward & Roger's R_ij = X'V^{-1} d^2V/dgamma_i dgamma_j V^{-1}X of the residual
        # parameters: [Gamma' (Y'V_e^{-1}H_abV_e^{-1}Y) Gamma]_xx
        at = [i for i, kind in enumerate(kinds) if kind[0] == "gen"]
        for a, i in enumerate(at):
            for b, j in enumerate(at):
                U -= 0.25 * W[i, j] * (Gx.T @ _dense(res.second[a][b]) @ Gx)
    U = 0.5 * (U + U.T)
    Phi_A = Phi + 2.0 * Phi @ U @ Phi
    return KenwardRoger(Phi, 0.5 * (Phi_A + Phi_A.T), P, W, info, names)


# ---- a fitted model --------------------------------------------------------------------------

#: Largest number of fixed plus random effects (``p + N``) for which the adjustment is
#: computed. The dense algebra holds about a dozen ``(p + N)^2`` arrays and costs
#: ``(p + N)^3``: measured 1.2 s / 0.3 GB at N = 1,000, 23 s / 2.0 GB at 4,000 (one
#: factor, a shared 2-core machine at load 4.5).
MAX_DIMENSION = 5_000


#: Largest number of entries of the dense ``(p + N) x (p + N)`` products a correlated fit's
#: residual parameters hold (``k (k + 1) + k + 1`` of them for ``k`` parameters: the
#: strata's variances and the correlation's): 3e8, 2.4 GB.
MAX_RESIDUAL_ENTRIES = 3e8


def kenward_roger_refusal(model: Any) -> str | None:
    """Why :func:`kenward_roger_model` refuses a fitted model (a fit by ML, no random
    effects, dense algebra beyond the size limits), or None; checked without computing the
    adjustment, so that a default df method (emmeans') can fall back to Satterthwaite's."""
    if not model.reml:
        return ("Kenward-Roger's adjustment is defined at REML estimates and this model was "
                "fitted by maximum likelihood: refit it with reml=True (pbkrtest refits such a "
                "model by REML behind the scenes)")
    if not len(model.terms) and model.correlation is None:
        return ("Kenward-Roger needs random effects: this model has none (least squares); its "
                "t and F tests are exact with n - p df")
    dimension = model.cross_products.p + sum(t.size for t in model.terms)
    if dimension > MAX_DIMENSION:
        return (f"Kenward-Roger works with dense matrices of size p + N = {dimension} (fixed "
                f"plus random effects), above the limit {MAX_DIMENSION}; use "
                "ddf='satterthwaite', whose cost does not grow with N")
    data = None if model.correlation is None else model.correlation.data
    if data is not None:
        reason = data.kr_refusal()
        if reason is not None:
            return reason
        k = data.n_strata + 1
        if (k * (k + 1) + k + 1) * dimension * dimension > MAX_RESIDUAL_ENTRIES:
            return (f"Kenward-Roger with correlated residuals and {data.n_strata} residual strata "
                    f"holds {k * (k + 1) + k + 1} dense matrices of size p + N = {dimension}, "
                    f"above the limit of {MAX_RESIDUAL_ENTRIES:.3g} entries; use "
                    "ddf='satterthwaite'")
    return None


def kenward_roger_model(est: Any) -> KenwardRoger:
    """The Kenward-Roger quantities of a fitted model, at its REML estimates.

    Any random-effects terms (one or several grouping factors, diagonal or full
    covariances), prior weights and a residual variance per stratum: the inputs come from
    the fit's cross-products (:meth:`KRInputs.from_cross_products`), the covariances and
    residual variances from its solution. Fixed effects dropped as aliased are left out
    (the model is the model of the kept columns). With correlated residuals the
    correlation's parameter is a variance parameter too (module docstring), the inputs
    coming from the fit's rows.

    Parameters
    ----------
    est : fitted MixedLMRegressor
        Fitted by REML.

    Returns
    -------
    KenwardRoger

    Raises
    ------
    ValueError
        For a fit by maximum likelihood (Kenward & Roger's adjustment is defined at REML
        estimates; pbkrtest silently refits such a model by REML, we ask for the REML fit
        instead, so the adjusted covariance belongs to the estimates shown); for a model
        without random effects; when ``p + N`` exceeds :data:`MAX_DIMENSION`; with
        correlated residuals, for a fit from chunks or residual groups too large for dense
        algebra (:data:`~mixedlm_sklearn._correlation.MAX_KR_COST`).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> kr = kenward_roger_model(est)
    >>> kr.row_ddf(np.eye(2)).round(6).tolist(), bool(np.allclose(kr.cov_beta_adj, est.cov_fe_))
    ([17.0, 17.0], True)
    """
    model = require(fitted_model(est), "kenward-roger")
    reason = kenward_roger_refusal(model)
    if reason is not None:
        raise ValueError(reason)
    # once per fit: summary, anova, wald_test and emmeans share it (a correlated fit's costs
    # seconds on 10^4 rows)
    if "kenward-roger" not in model.derived:
        kr = _kenward_roger_of(model)
        for a in (kr.cov_beta, kr.cov_beta_adj, kr.P, kr.W, kr.information):
            a.flags.writeable = False  # shared by every later call on this fit
        model.derived["kenward-roger"] = kr
    return model.derived["kenward-roger"]


def _kenward_roger_of(model: Any) -> KenwardRoger:
    """:func:`kenward_roger` of a fitted model (checked by :func:`kenward_roger_model`)."""
    sol = model.solution
    blocks = [RandomBlock(t.n_levels, cov, diagonal=t.diagonal, name=t.factor)
              for t, cov in zip(model.terms, sol.cov_re())]
    sigma2 = [float(v) for v in sol.scale * sol.ratios]
    residual = None
    if model.correlation is None:
        inputs = KRInputs.from_cross_products(model.cross_products, model.strata)
    else:
        inputs, residual = _correlated_inputs(model, sigma2)
        if residual is not None:
            sigma2 = [1.0]  # in Y'V_e^{-1}Y and the residual parameters
    return kenward_roger(inputs, blocks, sigma2 if len(sigma2) > 1 else sigma2[0], residual)


def _correlated_inputs(model: Any, sigma2: list) -> tuple[KRInputs, ResidualParameters | None]:
    """The inputs of a correlated fit from its rows
    (:meth:`~mixedlm_sklearn._correlation.CorrelatedRows.kr_products`): ``Y'V_e^{-1}Y`` and
    the residual parameters (the strata's variances ``sigma2``, the correlation's parameter).

    At a correlation estimated on its bound of independent residuals (``car1``'s ``Phi =
    0``, ``exp``'s ``range = 0``, where ``R``'s derivative is not finite) the parameter is
    left out: the inputs are the uncorrelated model's (per stratum, ``residual`` None)."""
    fitted = model.correlation
    data = fitted.data  # not None: FittedModel.supports refuses fits from chunks
    p = data.X.shape[1]
    codes = [c for c, _ in data.factors]
    qs = [Z.shape[1] for _, Z in data.factors]
    n_levels = [t.n_levels for t in model.terms]
    labels = list(model.strata) if model.strata is not None else [None]

    def expand(A: np.ndarray) -> sp.csr_matrix:
        """Rows ``[X y Z]`` (n, k) as rows of ``[X Z]`` with Z in the random effects' columns."""
        n = A.shape[0]
        cols, vals, col, off = [np.broadcast_to(np.arange(p), (n, p))], [A[:, :p]], p + 1, p
        for c, q, m in zip(codes, qs, n_levels):
            cols.append(off + c[:, None] * q + np.arange(q))
            vals.append(A[:, col:col + q])
            col, off = col + q, off + m * q
        return sp.csr_matrix((np.concatenate(vals, axis=1).ravel(),
                              np.concatenate(cols, axis=1).ravel(),
                              np.arange(n + 1) * (p + sum(qs))),
                             shape=(n, off))

    def product(A: sp.csr_matrix, B: sp.csr_matrix, rows: Any = None) -> np.ndarray:
        """``A'B`` of expanded rows (over ``rows``, a mask, or all), symmetrised, dense."""
        M = (A.T @ (B if rows is None else sp.diags(rows.astype(float)) @ B)).toarray()
        return 0.5 * (M + M.T)

    def inputs_of(K: list, n_obs: list, strata: list) -> KRInputs:
        return KRInputs([k[:p, :p] for k in K], [k[p:, :p] for k in K], [k[p:, p:] for k in K],
                        n_obs, n_levels, strata)

    edge = fitted.structure.boundary_value()
    if edge is not None and fitted.value == edge:  # R = I: per stratum, the rows as they are
        Y = data.scaled()
        stratum = data.strata_codes
        Yx = expand(Y)
        K = [product(Yx, Yx, stratum == s) for s in range(data.n_strata)]
        return inputs_of(K, [int(np.sum(stratum == s)) for s in range(data.n_strata)], labels), None
    k = data.n_strata + 1  # (the size limit is kenward_roger_refusal's)
    pr = data.kr_products(fitted.value, sigma2)
    # each array of rows expanded once: G_aV^{-1}Y enters k + 1 products
    left = expand(pr.inverse)  # V_e^{-1}Y
    first = [expand(pr.first[a]) for a in range(k)]
    firsts = [product(left, first[a]) for a in range(k)]
    products = [[None] * k for _ in range(k)]
    seconds = [[None] * k for _ in range(k)]
    lefts = [expand(pr.inverse_first[a]) for a in range(k)]
    for j, (a, b) in enumerate(pr.pairs):
        products[a][b] = products[b][a] = product(lefts[a], first[b])
        seconds[a][b] = seconds[b][a] = product(left, expand(pr.second[j]))
    names = (["sigma2"] if len(labels) == 1 else [f"sigma2|{s}" for s in labels]) + [fitted.name]
    inputs = inputs_of([product(expand(pr.rows), left)], [pr.rows.shape[0]], [None])
    return inputs, ResidualParameters(firsts, products, seconds, pr.traces, names)


def cov_fe(est: Any, adjust: str | None = None) -> np.ndarray:
    """Compute the covariance of the fixed effects, plain or with Kenward-Roger's adjustment.

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted linear mixed model.
    adjust : {None, "kenward-roger"}, default=None
        None: ``cov_fe_`` (lme4's ``vcov``). ``"kenward-roger"``: pbkrtest's ``vcovAdj``
        (REML fits), the small-sample adjusted covariance ``Phi_A`` of the module docstring.

    Returns
    -------
    ndarray of shape (p, p)
        In ``fe_params_`` order; NaN rows and columns for fixed effects dropped as aliased.

    Raises
    ------
    ValueError
        ``adjust="kenward-roger"`` for an ML fit (the adjustment needs REML).

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.cov_fe : The same, as a method.
    mixedlm_sklearn.MixedLMRegressor.summary : Kenward-Roger t tests (``ddf="kenward-roger"``).

    References
    ----------
    .. [1] Kenward, M. G. and Roger, J. H. (1997). Small sample inference for fixed
       effects from restricted maximum likelihood. Biometrics 53(3), 983-997.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> est = lmer("distance ~ age + (age | Subject)", load_orthodont())
    >>> est.cov_fe(adjust="kenward-roger").round(5)
    array([[ 0.60101, -0.04685],
           [-0.04685,  0.00508]])
    """
    from ._parameters import check_ddf

    model = fitted_model(est)
    if adjust is None:
        return np.array(est.cov_fe_, dtype=float)
    check_ddf(adjust, ("kenward-roger",), "adjust")
    cov = kenward_roger_model(est).cov_beta_adj
    # a copy: the fit keeps its Kenward-Roger quantities
    return cov.copy() if model.rank is None else model.rank.expand_cov(cov)
