"""The profiled deviance of the linear mixed model: value, analytic gradient, solution.

Parameters ``x = (theta, eta)``: ``theta`` the relative covariance factors of all terms
(:mod:`._terms`), ``eta_s = log delta_s`` the log ratio of stratum ``s``'s residual
standard deviation to the reference stratum's (``s = 1..S-1``; none without strata).
With row weights ``v_s = delta_s^{-2}`` on stratum ``s`` the model is a weighted
homoscedastic one, whose deviance (Bates et al. 2015, JSS 67(1), sec. 3.4; nlme's
varIdent, Pinheiro & Bates 2000, sec. 5.2) is, with ``G = [X y]'Z Lambda M^{-1} Lambda'
Z'[X y]``, ``A = X'WX - G_xx``, ``beta = A^{-1}(X'Wy - G_xy)``,
``r2 = y'Wy - G_yy - beta'(X'Wy - G_xy)``,

    ML:    log|M| + n (1 + log(2 pi r2 / n))           - sum log w
    REML:  log|M| + log|A| + (n-p)(1 + log(2 pi r2 / (n-p))) - sum log w

(``sum log w`` over the prior weights times ``v_s``). Derivatives, derived for this module
and checked against finite differences in the tests; for the entry ``(a, c)`` of ``L_k``:

* ``d log|M| = 2 [sum_l (Sigma Lambda' G)_{(k,l),(k,l)}]_{c,a}`` with ``Sigma = M^{-1}``
  needed on the pattern of ``G`` only (the selected inverse of :mod:`._factor`);
* ``d r2 = -2 sum_l e_{k,l,a} u_{k,l,c}`` (envelope theorem: r2 is a minimum over beta
  and u), ``u = M^{-1} Lambda' Z'W(y - X beta)`` the spherical modes, ``e = Z'W(y - X
  beta - Z Lambda u)``;
* ``d log|A| = -2 tr(A^{-1} sum_l R_{k,l,a,x}' V_{k,l,c,x})`` with ``V = M^{-1} Lambda'
  Z'WX`` and ``R = Z'WX - G Lambda V`` (REML only).

For a stratum weight ``v_s`` (``G_s``, ``X_s`` ... the stratum's own cross-products):
``d log|M| = tr(Sigma Lambda' G_s Lambda)``, ``d r2 = e_s' e_s`` (its conditional residuals),
``dA = X_s'X_s - V_x'Lambda'Z_s'X_s - (.)' + V_x'Lambda'G_s Lambda V_x``, and the weights
term gives ``-n_s / v_s``; then ``d/d eta_s = -2 v_s d/dv_s``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg
from scipy.linalg import lapack

from ._batched import left_matmul
from ._crossprod import CrossProducts
from ._factor import BlockOps, Factor, NotPositiveDefinite, Plan, Prepared

__all__ = ["Deviance", "Solution", "ExactSolution", "Shift", "MAX_LOG_RATIO"]

_LOG_2PI = float(np.log(2.0 * np.pi))
# Bounds on |log delta| (variance ratios within 1e-12 .. 1e12 of the reference).
MAX_LOG_RATIO = 0.5 * np.log(1e12)
# Doubles of the right-hand sides of one batch of solves (prediction rows whose levels the
# selected inverse does not hold).
_SOLVE_BUDGET = 1 << 22


def _combine(blocks: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """``sum_j coef_j blocks[:, j, :]`` for a (q, k, m) array: (q, m)."""
    out = coef[0] * blocks[:, 0, :]
    for j in range(1, coef.size):
        out += coef[j] * blocks[:, j, :]
    return out


def _gram(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``sum_{a, l} A[a, i, l] B[a, j, l]`` for (q, i, m) and (q, j, m) arrays: (i, j).

    One product per ``a`` on views: a transposed reshape would copy both arrays, which
    at 10^5 levels is most of a fit's memory.
    """
    out = A[0] @ B[0].T
    for a in range(1, A.shape[0]):
        out += A[a] @ B[a].T
    return out


def profiled_over_beta(F: np.ndarray, logdet: float, dof: int, reml: bool, sum_log_weights: float
                       ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Fixed effects, penalised RSS and deviance from ``F = [X y]'V^{-1}[X y]`` (scale 1).

    ``F`` is (p + 1, p + 1) and ``logdet`` is ``log|M|`` (exact or estimated). Returns the
    Cholesky factor of ``A = X'V^{-1}X``, beta, ``r2`` and the (REML) deviance profiled
    over beta and the scale (Bates et al. 2015, eqs. 34 and 41).
    """
    p = F.shape[0] - 1
    if p:
        chol_a, info = lapack.dpotrf(F[:p, :p], lower=1, clean=1)
        if info != 0:
            raise NotPositiveDefinite("X'V^{-1}X is not positive definite")
        beta = lapack.dpotrs(chol_a, F[:p, p], lower=1)[0]
    else:
        chol_a, beta = np.zeros((0, 0)), np.zeros(0)
    # An exact fit (least squares through the points) has r2 = 0 to rounding: a tiny
    # floor keeps the deviance finite; the estimator refuses such mixed-model fits.
    r2 = max(float(F[p, p] - F[:p, p] @ beta), np.finfo(float).tiny)
    if not np.isfinite(r2):
        raise NotPositiveDefinite("the penalised residual sum of squares is not finite")
    dev = logdet + dof * (1.0 + _LOG_2PI + np.log(r2 / dof)) - sum_log_weights
    if reml and p:
        dev += 2.0 * float(np.log(np.diag(chol_a)).sum())
    return chol_a, beta, r2, float(dev)


@dataclass(frozen=True)
class Shift:
    """The data moved by a point of random-effects space, for precision.

    ``D = [X y]`` (the columns the deviance's cross-products hold: measured from their
    :class:`~._crossprod.Origin` when they have one, and so ``beta0`` too) is written
    ``D = D' + Z C`` with ``C`` (per term (q_k, p + 1, m_k)) the
    conditional modes of each column at a reference fit, and ``cp`` the cross-products of
    the residual ``D'`` (same terms, levels and weights). The response is first moved by
    ``X beta0`` (the reference fixed effects: a shift of beta that changes no likelihood)
    so that ``r2`` too is a sum of small numbers rather than a difference of large ones.
    With ``A = Lambda^{-1} C``,

        D'V^{-1}D = D''WD' + A'A - (Lambda'Z'WD' - A)' M^{-1} (Lambda'Z'WD' - A)

    exactly (derived from ``Z'V^{-1} = Lambda^{-T} M^{-1} Lambda'Z'W``). Where most of a
    column lies in the span of ``Z`` (a very high intra-class correlation, covariates
    with random slopes), every term on the right is small, while the unshifted form
    subtracts two nearly equal large numbers and loses as many digits as the
    random-effects variance exceeds the residual one.
    """

    cp: CrossProducts
    C: list
    beta0: np.ndarray  # the y column of D' is y - X beta0 - Z C_y: beta is found relative to it


@dataclass
class _Point:
    """Everything one evaluation computes, reused by the gradient and the solution."""

    x: np.ndarray
    prep: Prepared
    lams: list
    factor: Factor
    # forward-solved Lambda' Z'[X y] per term (shifted: Lambda'Z'WD' - A); None once the
    # modes are formed from it, in its place (two such arrays at 10^5 levels are most of a
    # fit's memory)
    w: list | None
    chol_a: np.ndarray  # lower Cholesky factor of A (p x p)
    beta: np.ndarray  # relative to the shift's beta0 when shifted
    r2: float
    deviance: float
    F: np.ndarray  # D'V^{-1}D in units of sigma^2, (p + 1) x (p + 1)
    zxy: list  # the Z'W[X y] the point used (of D' when shifted)
    A: list | None  # Lambda^{-1} C per term when shifted
    ops: Prepared  # where zxy and the strata's cross-products come from
    cache: dict = field(default_factory=dict)


# Forming a point's modes overwrites its ``w``: a fitted solution's point is shared by
# whoever reads it (threads predicting with one estimator), so the first formation is
# serialised (a module lock: a point is pickled with its estimator, a lock is not).
_MODES_LOCK = threading.Lock()


def _point_modes(pt: _Point) -> list:
    """``M^{-1}`` times the right-hand sides ``pt.w`` was forward-solved from, per term (the
    modes of the point's own data, ``D'`` when shifted), formed once in ``pt.w``'s place."""
    V = pt.cache.get("V")
    if V is None:
        with _MODES_LOCK:
            V = pt.cache.get("V")
            if V is None:
                V = pt.cache["V"] = pt.factor.backward(pt.w, overwrite=True)
                pt.w = None
    return V


@dataclass(frozen=True)
class Solution:
    """The fit at given parameters: the protocol every deviance's solution honours.

    Inference reads a fit only through what is listed here, whichever engine computed it
    (:class:`ExactSolution` from the factorisation of :class:`Deviance`,
    :class:`._iterative.IterativeSolution` from conjugate gradients). Where an engine
    cannot give a quantity exactly it says so here, not by its type: inference never
    asks which engine it has.

    Attributes
    ----------
    x : ndarray
        ``(theta, eta)``.
    theta : ndarray
    ratios : ndarray of shape (S,)
        Residual variance ratios ``delta_s^2`` (reference first, 1).
    beta : ndarray of shape (p,)
        Of the columns as given (the cross-products' :class:`~._crossprod.Origin` undone).
    r2 : float
        Penalised residual sum of squares.
    deviance : float
        -2 log-likelihood (ML) or the REML criterion, profiled over beta and the scale.
    scale : float
        Residual variance of the reference stratum (``r2 / n``, REML ``r2 / (n - p)``).
    a_inv : ndarray (p, p)
        ``A^{-1}``: ``scale * a_inv`` is the covariance of beta (columns as given).
    lams : list of (q_k, q_k)
    conditional_cov_on_request : bool
        True where :meth:`conditional_cov` is costly (a stochastic estimate): the
        estimator then leaves ``random_effects_cov_`` empty and computes it when asked.

    Methods
    -------
    u
        Spherical modes per term, each (q_k, m_k); the BLUPs are ``L_k u_k``.
    cov_beta(), cov_re(), blups()
        Covariance of beta, of each term's random effects, the conditional modes.
    conditional_cov(), conditional_cov_se()
        Conditional covariances of the random effects per term and level (lme4's
        condVar), and the standard errors of a stochastic estimate of them (None: exact).
    prediction_products(seen)
        ``r'M^{-1}r`` and ``X'Omega Z Lambda M^{-1} r`` for rows with spherical
        random-effects designs ``r`` (the prediction errors of
        :mod:`.inference.prediction`).
    """

    x: np.ndarray
    theta: np.ndarray
    ratios: np.ndarray
    beta: np.ndarray
    r2: float
    deviance: float
    scale: float
    a_inv: np.ndarray
    lams: list

    conditional_cov_on_request = False

    @property
    def u(self) -> list:
        """Spherical modes per term, each (q_k, m_k); the BLUPs are ``L_k u_k``."""
        raise NotImplementedError

    def cov_beta(self) -> np.ndarray:
        return self.scale * self.a_inv

    def blups(self) -> list:
        """Conditional modes per term, each (m_k, q_k)."""
        return [(lam @ u).T for lam, u in zip(self.lams, self.u)]

    def cov_re(self) -> list:
        """``scale * L_k L_k'`` per term."""
        out = []
        for lam in self.lams:
            c = self.scale * lam @ lam.T
            out.append(0.5 * (c + c.T))
        return out

    def conditional_cov(self) -> list:
        """``scale * L_k Sigma_kk,l L_k'`` per term and level, each (m_k, q_k, q_k) (lme4's
        condVar), ``Sigma = M^{-1}``."""
        raise NotImplementedError

    def conditional_cov_se(self) -> list | None:
        """Standard errors of the entries of :meth:`conditional_cov` where it is a
        stochastic estimate (same shapes); None where it is exact."""
        return None

    def prediction_products(self, seen: list) -> tuple[np.ndarray, np.ndarray]:
        """``r'M^{-1}r`` (n,) and ``X'Omega Z Lambda M^{-1} r`` (n, p) for n rows.

        ``seen`` holds per term ``(level, r)`` (level of each row, -1 where not seen;
        ``r = Lambda_k' z`` rows, zero where not seen) or None (the term not given):
        ``r`` is the row's spherical random-effects design placed at its levels.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class ExactSolution(Solution):
    """:class:`Solution` from the factorisation of :class:`Deviance` (everything exact)."""

    _point: _Point = field(repr=False, compare=False, default=None)
    _modes: object = field(repr=False, compare=False, default=None)

    @property
    def u(self) -> list:
        """Spherical modes per term, each (q_k, m_k); the BLUPs are ``L_k u_k``."""
        V = self._modes(self._point)
        gamma = np.append(-self._point.beta, 1.0)  # in the coordinates of the data it used
        return [_combine(Vk, gamma) for Vk in V]

    def conditional_cov(self) -> list:
        """``scale * L_k Sigma_kk,l L_k'`` per term and level, each (m_k, q_k, q_k) (lme4's condVar)."""
        pt = self._point
        diag, _ = pt.factor.selected_inverse(with_crossing_pairs=False)
        out = []
        for lam, d in zip(self.lams, diag):
            cv = np.einsum("ab,bcm,dc->mad", lam, d, lam)
            out.append(self.scale * 0.5 * (cv + cv.transpose(0, 2, 1)))
        return out

    def prediction_products(self, seen: list) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Solution.prediction_products`: from the blocks of ``M^{-1}`` the
        factorisation provides for a row's levels (its selected inverse); a row whose
        combination of levels of crossed factors never occurred in the data is solved for."""
        factor = self._point.factor
        terms = factor.prep.cp.terms
        p = self.beta.size
        n = next(s[1].shape[0] for s in seen if s is not None)
        seen_terms = np.zeros(n, dtype=int)
        for s in seen:
            if s is not None:
                seen_terms += s[0] >= 0
        several = bool(np.any(seen_terms > 1))
        diag, pairs = factor.selected_inverse(with_crossing_pairs=several)
        modes = self._modes(self._point)
        quad = np.zeros(n)
        shift = np.zeros((n, p))
        unsolved = np.zeros(n, dtype=bool)
        for k, s in enumerate(seen):
            if s is None:
                continue
            idx, r = s
            rows = np.flatnonzero(idx >= 0)
            levels = idx[rows]
            quad[rows] += np.einsum("ia,abi,ib->i", r[rows], diag[k][:, :, levels], r[rows])
            shift[rows] += np.einsum("ia,api->ip", r[rows], modes[k][:, :p, levels])
        if several:
            for j, block in enumerate(factor.prep.cp.pairs):
                sk, sl = seen[block.k], seen[block.l]
                # a row has one level of each term: a self pair (two levels of one term,
                # correlated residuals) is no product of its
                if sk is None or sl is None or block.k == block.l:
                    continue
                rows = np.flatnonzero((sk[0] >= 0) & (sl[0] >= 0))
                if not rows.size:
                    continue
                m_l = terms[block.l].n_levels
                keys = block.level_k.astype(np.int64) * m_l + block.level_l
                wanted = sk[0][rows].astype(np.int64) * m_l + sl[0][rows]
                pos = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
                found = np.zeros(rows.size, dtype=bool)
                if keys.size and pairs[j] is not None:
                    found = keys[pos] == wanted
                unsolved[rows[~found]] = True
                rows, pos = rows[found], pos[found]
                if rows.size:
                    quad[rows] += 2.0 * np.einsum("ia,iab,ib->i", sk[1][rows], pairs[j][pos],
                                                  sl[1][rows])
        if unsolved.any():
            rows = np.flatnonzero(unsolved)
            quad[rows], shift[rows] = self._solved(terms, seen, rows)
        origin = factor.prep.cp.origin
        if origin is not None:  # the modes are of X measured from its origin
            shift = origin.x_rows(shift)
        return quad, shift

    def _solved(self, terms: list, seen: list, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``r'M^{-1}r`` and the shift for ``rows`` by forward solves (levels never seen together)."""
        factor = self._point.factor
        # r'V_x with V the modes of the data's own columns (D, not the shifted point's D':
        # the rows whose levels were seen take the same, prediction_products' ``modes``)
        V = self._modes(self._point)
        p = self.beta.size
        size = sum(t.size for t in terms)
        batch = max(1, _SOLVE_BUDGET // max(size, 1))
        quad, shift = np.empty(rows.size), np.empty((rows.size, p))
        for start in range(0, rows.size, batch):
            chunk = rows[start:start + batch]
            c = chunk.size
            rhs = []
            for t, s in zip(terms, seen):
                block = np.zeros((t.q, c, t.n_levels))
                if s is not None:
                    idx, r = s
                    ok = idx[chunk] >= 0
                    block[:, np.flatnonzero(ok), idx[chunk][ok]] = r[chunk][ok].T
                rhs.append(block)
            w = factor.forward(rhs)
            quad[start:start + c] = sum(np.einsum("aic,aic->i", wk, wk) for wk in w)
            shift[start:start + c] = sum(np.einsum("apl,ail->ip", v[:, :p, :], r)
                                         for v, r in zip(V, rhs))
        return quad, shift


# Entries of the temporaries of :meth:`Deviance._residual_blocks` (``R``, ``Lambda V`` and
# ``G Lambda V`` for some columns), summed over the terms: 16 MB. At 2x10^5 levels with
# q = 3 and p = 10 the whole arrays are 55 MB each, and they were what a 10^7-row fit's
# memory peaked at; small fits take all columns at once.
_COLUMN_BLOCK_SIZE = 2**21


def _column_blocks(blocks: list) -> list[slice]:
    """Slices of the columns (axis 1) of per-term ``(q_k, c, m_k)`` arrays, each with at most
    :data:`_COLUMN_BLOCK_SIZE` entries over all terms (at least one column)."""
    c = blocks[0].shape[1] if blocks else 0
    per_column = sum(b.shape[0] * b.shape[2] for b in blocks)
    step = max(1, min(c, _COLUMN_BLOCK_SIZE // max(per_column, 1)))
    return [slice(a, min(a + step, c)) for a in range(0, c, step)]


class Deviance:
    """The profiled deviance as a function of ``x = (theta, eta)``.

    Parameters
    ----------
    cp : CrossProducts
        The data (any number of terms and strata).
    reml : bool

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn._terms import Term, Terms
    >>> from mixedlm_sklearn._crossprod import cross_products
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(10), 5)
    >>> y = rng.standard_normal(10)[g] + rng.standard_normal(50)
    >>> terms = Terms([Term("g", ("(Intercept)",), 10)])
    >>> cp = cross_products(np.ones((50, 1)), y, [(g, np.ones((50, 1)))], terms)
    >>> dev = Deviance(cp, reml=True)
    >>> value, grad = dev.value_and_grad(np.array([1.0]))
    >>> bool(np.isfinite(value)) and grad.shape
    (1,)
    """

    # The value is exact (not a stochastic estimate): the full optimiser applies.
    stochastic = False
    # Whether the strata are rows reweighted by ``v_s`` (their ``n_s log v_s`` enters the
    # deviance) or components of a sum (:class:`._correlation.JointDeviance`).
    row_weights = True

    @property
    def weights_vary(self) -> bool:
        """Whether the strata are combined with weights that change with ``x``: those of
        the strata's ratios (the correlation's components are weighted even where ``x``
        holds no ratio: :class:`._correlation.JointDeviance`)."""
        return self.n_eta > 0

    def __init__(self, cp: CrossProducts, reml: bool = True, plan: Plan | None = None,
                 shift: Shift | None = None) -> None:
        self.cp = cp
        self.shift = shift
        self._shifted: dict[bytes, Prepared] = {}
        self.reml = reml
        self.terms = cp.terms
        self.p = cp.p
        self.n = cp.n
        self.dof = self.n - self.p if reml else self.n
        if self.dof <= 0:
            raise ValueError(f"{self.n} observations are too few for {self.p} fixed effects"
                             + (" with REML" if reml else ""))
        self.n_theta = self.terms.n_theta
        self.n_eta = cp.n_strata - 1
        # residual parameters that are variance ratios (the rest, e.g. a correlation, are
        # not checked for running off to 0 or infinity)
        self.n_ratios = self.n_eta
        self.plan = plan if plan is not None else Plan(cp.combined())
        self._prepared: dict[bytes, Prepared] = {}
        self._strata_ops: dict[bool, list[BlockOps]] = {}
        self._last: _Point | None = None
        self.n_evaluations = 0

    # ---- parameters -----------------------------------------------------------------------

    @property
    def n_params(self) -> int:
        return self.n_theta + self.n_eta

    @property
    def strata_counts(self) -> np.ndarray:
        """Rows per residual stratum (the order of :attr:`Solution.ratios`)."""
        return self.cp.n_obs

    def lower_bounds(self) -> np.ndarray:
        return np.concatenate([self.terms.lower_bounds(), np.full(self.n_eta, -MAX_LOG_RATIO)])

    def upper_bounds(self) -> np.ndarray:
        return np.concatenate([np.full(self.n_theta, np.inf), np.full(self.n_eta, MAX_LOG_RATIO)])

    def residual_start(self) -> np.ndarray | None:
        """A start for the residual parameters (None: the optimiser's default, ratios from
        the pooled OLS residuals)."""
        return None

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``theta`` and the stratum weights ``v_s = exp(-2 eta_s)`` (reference first)."""
        x = np.asarray(x, dtype=float)
        return x[:self.n_theta], np.exp(-2.0 * np.concatenate([[0.0], x[self.n_theta:]]))

    def _prepare(self, v: np.ndarray, shifted: bool = False) -> Prepared:
        cache, cp = (self._shifted, self.shift.cp) if shifted else (self._prepared, self.cp)
        key = v.tobytes() if self.weights_vary else b""
        prep = cache.get(key)
        if prep is None:
            if len(cache) > 8:  # keep the reference (eta = 0) and a few recent ones
                for k in list(cache)[1:5]:
                    del cache[k]
            combined = cp.combined(v if self.weights_vary else None, row_weights=self.row_weights)
            prep = BlockOps(combined) if shifted else Prepared(self.plan, combined)
            cache[key] = prep
        return prep

    def _shift_at(self, lams: list) -> list | None:
        """``A_k = L_k^{-1} C_k`` of the shift, or None where ``L`` is too close to singular
        for it (then the unshifted form is the accurate one)."""
        if self.shift is None:
            return None
        out = []
        for lam, C in zip(lams, self.shift.C):
            d = np.abs(np.diag(lam))
            if d.min() <= 1e-6 * max(1.0, np.abs(lam).max()):
                return None
            q = lam.shape[0]
            A = linalg.solve_triangular(lam, C.reshape(q, -1), lower=True, check_finite=False)
            out.append(A.reshape(C.shape))
        return out

    # ---- evaluation -----------------------------------------------------------------------

    def _evaluate(self, x: np.ndarray) -> _Point:
        x = np.asarray(x, dtype=float)
        if self._last is not None and np.array_equal(self._last.x, x):
            return self._last
        self.n_evaluations += 1
        # the previous point's per-level arrays go before this point's are formed (unless a
        # solution holds them): at 10^5 levels two points at once are what a fit's memory peaks at
        self._last = None
        theta, v = self.split(x)
        prep = self._prepare(v)
        lams = self.terms.lams(theta)
        factor = Factor(prep, lams)
        A = self._shift_at(lams)
        ops = prep if A is None else self._prepare(v, shifted=True)
        rhs = [left_matmul(lam.T, z) if lam.shape[0] > 1 else lam[0, 0] * z
               for lam, z in zip(lams, ops.zxy)]
        xyxy = ops.xyxy
        if A is not None:
            rhs = [r - a for r, a in zip(rhs, A)]
            xyxy = xyxy + sum(_gram(a, a) for a in A)
        w = factor.forward(rhs, overwrite=True)
        del rhs
        p = self.p
        G = np.zeros((p + 1, p + 1))
        for wk in w:
            for wa in wk:  # (p + 1, m): a product with a long inner dimension
                G += wa @ wa.T
        F = xyxy - G
        chol_a, beta, r2, dev = profiled_over_beta(F, factor.logdet, self.dof, self.reml,
                                                   float(prep.cp.sum_log_weights[0]))
        self._last = _Point(x.copy(), prep, lams, factor, w, chol_a, beta, r2, float(dev),
                            F, ops.zxy, A, ops)
        return self._last

    def __call__(self, x: np.ndarray) -> float:
        return self._evaluate(x).deviance

    def rounding_of_scale(self, x: np.ndarray) -> float:
        """The size of a rounding error in the residual variance at ``x``.

        ``r2`` comes from ``y'Wy`` minus what the model explains, so it carries the rounding
        of ``y'Wy`` (of the shifted response when the point is shifted): a residual
        variance of that size means y was reproduced exactly.
        """
        pt = self._evaluate(x)
        yy = float(pt.ops.xyxy[-1, -1]) + (sum(float(np.sum(a[:, -1, :] ** 2)) for a in pt.A)
                                           if pt.A is not None else 0.0)
        return np.finfo(float).eps * yy / self.dof

    def in_basis(self, bases: list, xy_scale: np.ndarray) -> "Deviance":
        """The deviance of ``Z_k P_k`` and ``[X y] / xy_scale`` (the optimiser's basis)."""
        shift = None
        if self.shift is not None:
            inv = 1.0 / np.asarray(xy_scale, dtype=float)
            C = [linalg.solve(P, c.reshape(P.shape[0], -1)).reshape(c.shape) * inv[None, :, None]
                 for P, c in zip(bases, self.shift.C)]
            beta0 = self.shift.beta0 * xy_scale[:-1] * inv[-1]
            shift = Shift(self.shift.cp.transformed(bases, xy_scale), C, beta0)
        return Deviance(self.cp.transformed(bases, xy_scale), self.reml, plan=self.plan, shift=shift)

    def with_data(self, cp: CrossProducts, reml: bool | None = None, replan: bool = False) -> "Deviance":
        """The deviance of other data with the same terms and levels (another response, a
        subset of the fixed effects): this plan unless ``replan`` (other rows)."""
        return Deviance(cp, self.reml if reml is None else reml, plan=None if replan else self.plan)

    def digits_lost(self, x: np.ndarray) -> float:
        """How many digits forming ``D'V^{-1}D`` from the cross-products cancels at ``x``.

        ``log10`` of the largest ratio ``(D'WD)_jj / (D'V^{-1}D)_jj`` over the columns of
        ``[X y]``: the share of a column that the random effects absorb.
        """
        pt = self._evaluate(x)
        if pt.A is not None:
            return 0.0
        raw = np.diag(pt.prep.xyxy)
        kept = np.maximum(np.diag(pt.F), np.finfo(float).tiny)
        return float(np.log10(np.max(raw / kept)))

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        pt = self._evaluate(x)
        return pt.deviance, self._gradient(pt)

    def gradient_with_r2(self, x: np.ndarray, beta_steps: list | tuple = ()
                         ) -> tuple[np.ndarray, np.ndarray]:
        """The gradient of the deviance and, in ``theta``, of the penalised residual sum of
        squares at fixed effects ``beta + step`` (minimised over the random effects only)
        for each step of ``beta_steps`` (in the coordinates of :meth:`solution`'s
        ``pt.beta``; no steps: at the optimum ``beta``, the ``r2`` of the deviance).

        By the envelope theorem (``r2(b)`` is a minimum over the modes) each is ``-2 e
        u'`` with ``e`` and ``u`` the residual products and modes of ``D gamma``, ``gamma
        = (-b, 1)``, both linear in ``gamma``. A profile that holds the scale or a fixed
        effect needs these apart from the deviance's own gradient. Without strata only.
        """
        if self.n_eta:
            raise NotImplementedError("the r2 gradients cover fits without residual strata")
        pt = self._evaluate(x)
        steps = list(beta_steps) if len(beta_steps) else [np.zeros(self.p)]
        gammas = [np.append(-(pt.beta + s), 1.0) for s in steps]
        r2_grads = np.empty((len(gammas), self.n_theta))
        return self._gradient(pt, gammas, r2_grads), r2_grads

    def solution(self, x: np.ndarray) -> Solution:
        pt = self._evaluate(x)
        theta, v = self.split(pt.x)
        beta = self.centred_beta(pt)
        a_inv = self._a_inv(pt)
        origin = self.cp.origin
        if origin is not None:  # the fixed effects of the columns as given
            beta, a_inv = origin.beta(beta), origin.cov(a_inv)
        return ExactSolution(pt.x.copy(), theta.copy(), 1.0 / v, beta.copy(), pt.r2, pt.deviance,
                             pt.r2 / self.dof, a_inv, pt.lams, pt, self._modes_of_data)

    def centred_beta(self, pt: _Point) -> np.ndarray:
        """The fixed effects of the columns the cross-products hold (measured from their
        origin): the coordinates of the modes and of ``A``."""
        return pt.beta if pt.A is None else pt.beta + self.shift.beta0

    # ---- derivatives ----------------------------------------------------------------------

    def _modes(self, pt: _Point) -> list:
        """``V = M^{-1} Lambda' Z'[X y]`` per term, (q_k, p + 1, m_k): the spherical modes of
        each column (of ``D'`` when shifted: add ``A`` for those of ``D``)."""
        return _point_modes(pt)

    def _modes_of_data(self, pt: _Point) -> list:
        """The spherical modes of the columns of ``D`` itself."""
        V = self._modes(pt)
        return V if pt.A is None else [v + a for v, a in zip(V, pt.A)]

    def _a_inv(self, pt: _Point) -> np.ndarray:
        if "a_inv" not in pt.cache:
            a_inv = lapack.dpotri(pt.chol_a, lower=1)[0] if self.p else np.zeros((0, 0))
            pt.cache["a_inv"] = np.tril(a_inv) + np.tril(a_inv, -1).T
        return pt.cache["a_inv"]

    @staticmethod
    def _residuals(pt: _Point, modes: list, zxy: list) -> tuple[list, list]:
        """``Lambda V`` and ``R = Z'D - G Lambda V`` per term for some columns: their
        (shifted) modes ``V`` and ``Z'D`` (each (q_k, c, m_k)). Z' times the residuals of
        those columns, from the modes, so nothing cancels; the same for ``D`` and ``D'``."""
        lv = [left_matmul(lam, v) for lam, v in zip(pt.lams, modes)]
        return lv, [z - g for z, g in zip(zxy, pt.prep.g_times(lv))]

    def _residual_blocks(self, pt: _Point, stop: int | None = None):
        """``(cols, R)`` (:meth:`_residuals`) for blocks of the columns ``< stop`` (all by
        default), each per term (q_k, len(cols), m_k).

        A few columns at a time (:func:`_column_blocks`): the whole of ``R``, ``Lambda V`` and
        ``G Lambda V`` are each as large as the modes, and at 10^5 levels such arrays are
        what a fit's memory peaks at. Small fits get all columns in one block.
        """
        V = self._modes(pt)
        c = V[0].shape[1] if V else 0
        c = c if stop is None else min(stop, c)
        for cols in _column_blocks([v[:, :c] for v in V]):
            yield cols, self._residuals(pt, [v[:, cols] for v in V], [z[:, cols] for z in pt.zxy])[1]

    def _residual_products(self, pt: _Point) -> tuple[list, list]:
        """``Lambda V`` and ``R`` (:meth:`_residuals`) per term, whole (q_k, p + 1, m_k)."""
        return self._residuals(pt, self._modes(pt), pt.zxy)

    def _residual_combinations(self, pt: _Point, gammas: list) -> list:
        """``R gamma`` per term (q_k, m_k) for each column combination ``gamma`` of ``gammas``,
        without forming ``R``: the residual products of the combined column ``D gamma``."""
        V = self._modes(pt)
        out = []
        for gm in gammas:
            R = self._residuals(pt, [_combine(v, gm)[:, None, :] for v in V],
                                [_combine(z, gm)[:, None, :] for z in pt.zxy])[1]
            out.append([r[:, 0, :] for r in R])
        return out

    def gradient_in_lambda(self, x: np.ndarray) -> tuple[np.ndarray, list]:
        """The gradient of the deviance and, per term, its derivatives in *every* entry of
        ``L_k`` (a (q_k, q_k) array; the formulas of the module docstring hold for any
        entry, the strict upper triangle too). With ``D`` a function of ``L L'`` only,
        the gradient at any ``N = L Q`` (``Q`` orthogonal) is that array times ``Q``:
        a profile whose constraint moves a full (not triangular) factor chains through it."""
        pt = self._evaluate(x)
        full: list = []
        return self._gradient(pt, full=full), full

    def _gradient(self, pt: _Point, r2_gammas: list | None = None,
                  r2_grads: np.ndarray | None = None, full: list | None = None) -> np.ndarray:
        """The deviance's gradient; with ``r2_gammas``, row ``i`` of ``r2_grads`` (filled
        in) the theta gradient of the penalised RSS of ``D gamma_i`` (:meth:`gradient_with_r2`);
        with ``full``, each term's derivatives in every entry of ``L_k`` appended to it."""
        p = self.p
        V = self._modes_of_data(pt)
        gamma = np.append(-pt.beta, 1.0)
        gms = list(r2_gammas or ())
        E = self._residual_combinations(pt, [gamma] + gms)
        a_inv = self._a_inv(pt)
        dlogm = self._logdet_gradient(pt)
        # the REML term sum_l R_x A^{-1} V_x' per term, by blocks of R's columns j:
        # sum_j R[:, j] (A^{-1} V_x)[:, j]', both factors (q, len(cols) m) with no transposes
        reml_terms = [np.zeros((t.q, t.q)) for t in self.terms]
        if self.reml and p:
            for cols, Rb in self._residual_blocks(pt, stop=p):
                for k, (term, rb) in enumerate(zip(self.terms, Rb)):
                    AV = np.stack([left_matmul(a_inv[cols], V[k][c, :p]) for c in range(term.q)])
                    reml_terms[k] += rb.reshape(term.q, -1) @ AV.reshape(term.q, -1).T
        grad = np.empty(self.n_params)
        for k, (term, sl) in enumerate(zip(self.terms, self.terms.slices)):
            e, u = E[0][k], _combine(V[k], gamma)
            g = dlogm[k].T - (2.0 * self.dof / pt.r2) * (e @ u.T) - 2.0 * reml_terms[k]
            rows, cols = term.theta_position
            grad[sl] = g[rows, cols]
            if full is not None:
                full.append(g)
            for i, gm in enumerate(gms):
                r2_grads[i, sl] = -2.0 * (E[i + 1][k] @ _combine(V[k], gm).T)[rows, cols]
        if self.n_eta:
            LV, R = self._residual_products(pt)
            grad[self.n_theta:] = self._ratio_gradient(pt, LV, R, gamma)[1:]
        return grad

    def _logdet_gradient(self, pt: _Point) -> list:
        """``2 sum_l (Sigma Lambda' G)_{(k,l),(k,l)}`` per term (q_k, q_k), indexed [c, a]."""
        plan = self.plan
        if plan.crossing is not None:
            return self._logdet_gradient_crossing(pt)
        diag, pairs = pt.factor.selected_inverse()
        pt.cache["selected"] = (diag, pairs)
        prep, lams = pt.prep, pt.lams
        # X_k = sum_l Sigma_l L_k' A_l: (q, q m) times (q m, q), the long inner dimension last
        X = []
        for d, lam, A in zip(diag, lams, prep.diag):
            LA = left_matmul(lam.T, A)  # (q, q, m): L' A_l
            q = lam.shape[0]
            X.append(d.reshape(q, -1) @ LA.transpose(1, 0, 2).reshape(q, -1).T)
        for j, b in enumerate(prep.cp.pairs):
            vals, sig = b.values[0], pairs[j]
            X[b.k] += np.einsum("eab,cb,edc->ad", sig, lams[b.l], vals)
            X[b.l] += np.einsum("eba,cb,ecd->ad", sig, lams[b.k], vals)
        return [2.0 * x for x in X]

    def _logdet_gradient_crossing(self, pt: _Point) -> list:
        """The same for a crossing first term and a dense rest, without ``Sigma_1R``.

        First term: ``2 sum_l [J_l A_l - J_l K_l (I - D_l A_l)]`` (``J = B^{-1} L_1'``,
        ``D = L_1 J``, ``K_l = (A_1R Omega A_R1)_ll``, ``Omega = L_R S^{-1} L_R'``); a
        dense term: ``2 [S^{-1} L_R' (A_RR - A_R1 D A_1R)]`` summed over its diagonal blocks.
        """
        plan, prep, fac = self.plan, pt.prep, pt.factor
        t, layout = plan.crossing, plan.dense
        r = layout.r
        scale = fac._rest_scale()
        # dense, or on the lower pattern of sparse rounds; with scalar dense terms (a
        # diagonal L_R) only the lower triangle is read below
        Sinv = fac.rest_inverse(lower=scale is not None)
        out = [None] * plan.n_terms
        cross = fac.cross
        K = fac.crossing_K(Sinv)
        A = prep.diag[t]
        q1 = plan.q[t]
        IDA = np.eye(q1)[:, :, None] - np.einsum("abm,bcm->acm", cross["D"], A)
        JA = np.einsum("abm,bcm->acm", cross["J"], A)
        JK = np.einsum("abm,bcm->acm", cross["J"], K)
        out[t] = 2.0 * (JA - np.einsum("abm,bcm->acm", JK, IDA)).sum(axis=2)
        if plan.rounds is not None:
            for k, g in zip(layout.terms, fac.rounds_rest_gradient(Sinv)):
                out[k] = g
            return out
        W = prep.a22 - cross["T"]  # lower triangle valid
        if scale is not None:
            P = np.tril(Sinv) * W  # S^{-1} o W, symmetric, held as its lower triangle
            rest = 2.0 * (P @ scale + P.T @ scale - np.diag(P) * scale)
        else:
            W = np.tril(W) + np.tril(W, -1).T
        for k, off in zip(layout.terms, layout.offsets):
            q, m = plan.q[k], plan.m[k]
            rows = slice(off, off + m * q)
            if scale is not None:
                out[k] = rest[rows].sum().reshape(1, 1)
            else:
                # (S^{-1} L_R')[rows, :] = (L_R S^{-1})[:, rows]'
                Phi = fac.lam_rows(Sinv[:, rows], False).reshape(r, m, q)
                out[k] = 2.0 * np.einsum("jlc,jla->ca", Phi, W[:, rows].reshape(r, m, q))
        return out

    def average_information(self, x: np.ndarray) -> np.ndarray:
        """Average-information approximation of the Hessian in ``theta`` (no strata).

        Gilmour, Thompson & Cullis (1995, Biometrics 51): with ``P`` the REML projection
        and ``w_j = (dV/dphi_j) P y``, ``-2 log L`` has Hessian ``~ w_i' P w_j``. Here
        ``phi = (theta, sigma^2)``: ``w_j = Z (E_j u + L E_j' Z'e)`` for a theta entry
        and ``(y - X beta) / sigma^2`` for the scale, which is then profiled out (Schur
        complement). All products come from the cross-products and one solve with ``M``
        (no pass over the rows).
        """
        if self.n_eta:
            raise NotImplementedError("the average information covers theta only")
        pt = self._evaluate(x)
        prep, p, lams = pt.prep, self.p, pt.lams
        V = self._modes_of_data(pt)
        gamma = np.append(-pt.beta, 1.0)
        E = self._residual_combinations(pt, [gamma])[0]
        n = self.n_theta
        C = []
        for term, sl, lam, Vk, e in zip(self.terms, self.terms.slices, lams, V, E):
            u = _combine(Vk, gamma)
            Ck = np.zeros((term.q, n, term.n_levels))
            rows, cols = term.theta_position
            for j, a, c in zip(range(sl.start, sl.stop), rows, cols):
                Ck[a, j] += u[c]
                Ck[:, j] += lam[:, c, None] * e[a]
            C.append(Ck)
        # (each temporary below is as large as C; they are dropped as soon as used)
        b = prep.g_times(C)  # G C, then (in its place) b = Lambda' G C
        PW = sum((_gram(Ck, g) for Ck, g in zip(C, b)), np.zeros((n, n)))
        for lam, g in zip(lams, b):
            left_matmul(lam.T, g, out=g)
        # b' M^{-1} b = w'w with w = L^{-1} b: one triangular solve instead of two
        w = pt.factor.forward(b, overwrite=True)
        del b
        PW -= sum((_gram(wk, wk) for wk in w), np.zeros((n, n)))
        del w
        XW = np.zeros((p, n))
        for cols, Rb in self._residual_blocks(pt, stop=p):
            for Ck, rb in zip(C, Rb):
                XW[cols] += _gram(rb, Ck)  # (X - Z Lambda V_x)' W Z C_j
        we = sum(np.einsum("ajm,am->j", Ck, e) for Ck, e in zip(C, E)) if C else np.zeros(n)
        if p:
            PW -= XW.T @ self._a_inv(pt) @ XW
        return (PW - np.outer(we, we) / pt.r2) * self.dof / pt.r2

    def _strata(self, shifted: bool) -> list[BlockOps]:
        """Per-stratum block operations (for the ratio gradient), of ``D`` or of ``D'``."""
        if shifted not in self._strata_ops:
            cp = self.shift.cp if shifted else self.cp
            self._strata_ops[shifted] = [BlockOps(cp.stratum(s)) for s in range(cp.n_strata)]
        return self._strata_ops[shifted]

    def _ratio_gradient(self, pt: _Point, LV: list, R: list, gamma: np.ndarray) -> np.ndarray:
        """d deviance / d eta_s for every stratum (the reference's entry included)."""
        v = self.split(pt.x)[1]
        d = self._weight_derivatives(pt, LV, R, gamma)
        return -2.0 * v * (d - self.cp.n_obs / v)

    def _weight_derivatives(self, pt: _Point, LV: list, R: list, gamma: np.ndarray) -> np.ndarray:
        """The derivative of the deviance (without its ``sum log w``) in the weight ``v_s``
        of each stratum's cross-products in the combined ones (linear in them, so any
        sign of weight: the components of :mod:`._correlation` too)."""
        if "selected" in pt.cache:
            diag, pairs = pt.cache["selected"]
        else:
            diag, pairs = pt.factor.selected_inverse()
        p, lams = self.p, pt.lams
        # residual terms from the modes of the data the point used (D' when shifted)
        b = [np.einsum("ab,bjm,j->am", lam, Vk, gamma) for lam, Vk in zip(lams, self._modes(pt))]
        a_inv = self._a_inv(pt)
        LVx = [x[:, :p, :] for x in LV]
        grad = np.empty(self.cp.n_strata)
        for s, ops in enumerate(self._strata(pt.A is not None)):
            dlogm = sum(float(np.einsum("abl,ca,cdl,db->", d, lam, A, lam))
                        for d, lam, A in zip(diag, lams, ops.diag))
            for j, blk in enumerate(ops.cp.pairs):
                dlogm += 2.0 * float(np.einsum("eab,ca,ecd,db->", pairs[j], lams[blk.k], blk.values[0],
                                               lams[blk.l]))
            Gb = ops.g_times([bk[:, None, :] for bk in b])
            zr = sum(float(np.einsum("am,ajm,j->", bk, z, gamma)) for bk, z in zip(b, ops.zxy))
            quad = sum(float(np.einsum("am,am->", bk, g[:, 0, :])) for bk, g in zip(b, Gb))
            d_r2 = float(gamma @ ops.xyxy @ gamma) - 2.0 * zr + quad
            d = dlogm + self.dof / pt.r2 * d_r2
            if self.reml and p:
                zero = np.zeros((p, p))  # (a model without random-effects terms: gls)
                cross = sum((np.einsum("axm,aym->xy", lv, z[:, :p, :]) for lv, z in zip(LVx, ops.zxy)),
                            zero)
                GLVx = ops.g_times(LVx)
                quad_x = sum((np.einsum("axm,aym->xy", lv, g) for lv, g in zip(LVx, GLVx)), zero)
                dA = ops.xyxy[:p, :p] - cross - cross.T + quad_x
                d += float(np.sum(a_inv * dA))
            grad[s] = d
        return grad
