"""Many responses with one design: ``k`` independent linear mixed models fitted together.

Genomics, proteomics and multi-trait data fit the same model (samples, covariates,
grouping) to thousands of responses. Everything that does not depend on the response is
computed once per *missingness pattern* (the set of rows a response is observed on): the
cross-products of ``X`` and ``Z`` (:func:`._crossprod.cross_products`), the sparse map
``y -> (Z'Wy, X'Wy, y'Wy)`` (:class:`._crossprod.ResponseMap`), the deviance's plan. Only
the response's products change.

With one random-effects term and one residual stratum the responses of a block are fitted
*together* by the batched Newton kernel of :mod:`._batched_refit` (the parametric
bootstrap's), every numpy call serving the whole block, each response from its own
method-of-moments start. A response is accepted there only when it passes the single
fit's safeguards, batched as well:

* Newton converged to an interior optimum with a positive definite Hessian, or to a
  variance held at 0 whose inward gradient is not negative (a singular fit);
* the zero end (every variance 0) is not lower;
* on small problems (at most ``_MULTISTART_MAX_LEVELS`` levels, as the single fit's
  other starts), the single fit's other starts (multiples of the identity and seeded
  random factors) are run too (:func:`screen_starts`), and none reaches a lower deviance.

Any other response (several terms, residual strata, a Hessian that is not positive
definite, a variance on the way to 0 that Newton cannot hold, a lower minimum from another
start) is fitted by the single fit's own path (:func:`._model.fit_model`) on its
cross-products: its answer *is* the single fit. A response whose fit raises is reported as
failed with the reason; the others are unaffected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ._batched import batched_cholesky, batched_solve_lower, batched_solve_lower_t
from ._batched_refit import _LOG_2PI, LevelClasses, OneTermBatch, _cholesky_inverse, _subset
from ._crossprod import _ORIGIN_ROWS, CrossProducts, Origin, ResponseMap, ResponseProducts, cross_products
from ._deviance import Deviance, Solution
from ._newton import batched_fd_hessian, batched_shifts, floored_eigenvalues
from ._model import fit_model
from ._optimize import _MULTISTART_MAX_LEVELS, _MULTISTART_SEED, _EXTRA_STARTS, _RANDOM_STARTS, OptimizerInfo
from ._terms import Term, Terms, theta_from_lambda
from ._threads import single_threaded_blas

__all__ = ["ManyFit", "fit_many", "missing_patterns", "block_size_for"]

# Memory per block: the batched kernel's largest arrays hold (q, p + 1 + q) numbers per
# (pseudo-)level for every response and every shifted point of the Hessian (n_theta + 1
# of them), about ten such arrays at once. Blocks are sized to keep that below this many
# bytes (measured: 4,000 benchmark responses in one block, peak RSS 262 MB with the
# interpreter, numpy and the data); larger blocks were not faster.
_BLOCK_BYTES = 64 * 2**20
_MIN_BLOCK, _MAX_BLOCK = 16, 20000
# Iterations of the runs from the other starts of small problems: they only have to show
# whether a start leads below the first answer (which sends the response to the single
# fit's full search) ...
_SCREEN_ITER = 25
# ... and a run within this fraction (in L L' terms) of the first answer has reached it
# (99% of the runs do on the benchmark's design, none of the others went lower).
_SCREEN_JOIN = 1e-2


def block_size_for(q: int, p: int, n_levels: int, n_theta: int) -> int:
    """Responses per block of the batched kernel for a term of ``q`` effects and
    ``n_levels`` levels, ``p`` fixed effects (bounded memory, see ``_BLOCK_BYTES``)."""
    per_response = 10 * 8 * q * (p + 1 + q) * max(n_levels, 1) * (n_theta + 1)
    return int(np.clip(_BLOCK_BYTES // max(per_response, 1), _MIN_BLOCK, _MAX_BLOCK))


def missing_patterns(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct sets of observed rows of the columns of ``Y`` (NaN = missing).

    Returns
    -------
    observed : ndarray of bool, shape (n_patterns, n)
        Rows observed in each pattern (patterns in order of first appearance).
    pattern : ndarray of int, shape (k,)
        Pattern of each column.
    """
    observed = ~np.isnan(Y)
    packed = np.packbits(observed, axis=0).T  # (k, ceil(n/8)): one row of bytes per column
    keys = [row.tobytes() for row in packed]
    index: dict[bytes, int] = {}
    pattern = np.empty(len(keys), dtype=np.int64)
    firsts = []
    for j, key in enumerate(keys):
        if key not in index:
            index[key] = len(firsts)
            firsts.append(j)
        pattern[j] = index[key]
    return observed[:, firsts].T.copy(), pattern


@dataclass
class PatternDesign:
    """The design of the rows one missingness pattern observes.

    Attributes
    ----------
    rows : ndarray of bool (n,)
        Rows observed.
    levels : list of int ndarrays
        Per term, the levels (of the whole data) present in these rows; the pattern's
        codes index into them.
    template : CrossProducts
        Cross-products of these rows (their response part unused).
    response_map : ResponseMap
    columns : ndarray of int
        The responses with this pattern.
    products : ResponseProducts or None
        Their response products (kept by the fit for per-response models).
    problem : str or None
        Why these rows cannot be fitted (every response of the pattern fails with it).
    """

    rows: np.ndarray
    levels: list
    template: CrossProducts | None
    response_map: ResponseMap | None
    columns: np.ndarray
    factors: tuple = ()
    products: ResponseProducts | None = None
    problem: str | None = None


@dataclass
class ManyFit:
    """The fits of ``k`` responses on one design (NaN rows for failed responses).

    Attributes
    ----------
    theta : ndarray (k, n_theta)
    beta : ndarray (k, p)
    scale, deviance : ndarray (k,)
    cov_beta : ndarray (k, p, p)
    blups : list of ndarray, each (k, m_t, q_t)
        Conditional modes per term on the levels of the whole data (0 for levels a
        response does not observe).
    converged, failed, batched : ndarray of bool (k,)
        Met the convergence checks; failed (no fit: ``messages`` says why); fitted by the
        batched kernel (else by the single fit's path).
    at_bound : ndarray of bool (k, n_theta)
    n_iter, n_obs, pattern : ndarray of int (k,)
    messages : list of str
        The optimiser's message, or why the response failed.
    patterns : list of PatternDesign
    terms : Terms
        The terms on the whole data.
    reml : bool
    y_shift : ndarray (k,)
        Where each response is measured from (its products are those of ``y - y_shift``;
        0 without an intercept column): the mean of its first observed values where that
        exceeds their standard deviation, as the single fit's origin
        (:func:`._crossprod.origin_of`). The deviance does not change; the intercept is
        reported for ``y`` as given.
    """

    theta: np.ndarray
    beta: np.ndarray
    scale: np.ndarray
    deviance: np.ndarray
    cov_beta: np.ndarray
    blups: list
    converged: np.ndarray
    failed: np.ndarray
    batched: np.ndarray
    at_bound: np.ndarray
    n_iter: np.ndarray
    n_obs: np.ndarray
    pattern: np.ndarray
    messages: list
    patterns: list
    terms: Terms
    reml: bool
    y_shift: np.ndarray | None = None
    solver: str = "auto"
    max_iter: int = 1000
    tol: float = 1e-8
    _models: dict = field(default_factory=dict, repr=False)

    @property
    def n_responses(self) -> int:
        return self.theta.shape[0]

    def cross_products(self, j: int) -> CrossProducts:
        """The cross-products of response ``j`` on its own rows (measured from its origin)."""
        pat = self.patterns[self.pattern[j]]
        where = int(np.flatnonzero(pat.columns == j)[0])
        return _with_origin(pat.template.with_response(pat.products, where), self.y_shift[j])

    def deviance_and_solution(self, j: int) -> tuple[Any, Solution]:
        """The single fit's deviance of response ``j`` and its solution at the fit."""
        if self.failed[j]:
            raise ValueError(f"response {j} has no fit: {self.messages[j]}")
        if j not in self._models:
            pat = self.patterns[self.pattern[j]]
            dev = Deviance(self.cross_products(j), self.reml)
            x = self.theta[j, _theta_positions(self.terms, pat)]
            self._models[j] = (dev, dev.solution(x))
        return self._models[j]

    def info(self, j: int) -> OptimizerInfo:
        pat = self.patterns[self.pattern[j]]
        return OptimizerInfo(bool(self.converged[j]), self.messages[j], int(self.n_iter[j]),
                             int(self.n_iter[j]), 0.0,
                             self.at_bound[j, _theta_positions(self.terms, pat)].copy())


def _theta_positions(terms: Terms, pat: PatternDesign) -> np.ndarray:
    """All theta entries (a pattern has every term; the hook for per-pattern terms)."""
    return np.arange(terms.n_theta)


# ---- starts ------------------------------------------------------------------------------


def moment_starts(batch: OneTermBatch, template: CrossProducts, products: ResponseProducts) -> np.ndarray:
    """Method-of-moments starts (K, n_theta) of a one-term model, one per response.

    As the single fit's start (:func:`._optimize._moment_start`), for every response of the
    block at once and in lme4's parametrisation: per level the least-squares random effects
    ``b_l = S_l^{-1} Z_l'r_l`` of the pooled OLS residuals have covariance ``cov_re + scale
    E[S_l^{-1}]``. Eigenvalues are floored at 1e-2 of the largest (or 1) so that the start
    stays off the boundary; the identity where too few levels are usable.
    """
    term, q, p = batch.term, batch.q, batch.p
    K = products.n_responses
    identity = np.tile(theta_from_lambda(np.eye(q), term.diagonal), (K, 1))
    xx = template.xyxy[0][:p, :p]
    try:
        chol_x = np.linalg.cholesky(xx)
    except np.linalg.LinAlgError:
        return identity
    xy = products.xy[0]  # (p, K)
    beta = np.linalg.solve(chol_x.T, np.linalg.solve(chol_x, xy))
    rss = products.yy[0] - (xy * beta).sum(axis=0)
    scale = rss / max(template.n - p, 1)
    ztz = template.diag[0][0]
    counts = template.counts[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        chol = batched_cholesky(ztz)
    diag = chol[np.arange(q), np.arange(q)]
    tiny = 1e-6 * np.sqrt(ztz[np.arange(q), np.arange(q)].max(axis=1))
    usable = np.all(np.isfinite(diag) & (diag > tiny[:, None]), axis=0) & (counts > q)
    m = int(usable.sum())
    if m <= 2 * q:
        return identity
    chol = chol[:, :, usable]
    zx = template.zxy[0][0][:, :p, usable]  # (q, p, m)
    r = products.zy[0][0][:, :, usable] - np.einsum("apm,pk->akm", zx, beta)  # (q, K, m)
    b = batched_solve_lower_t(chol[:, :, None], batched_solve_lower(chol[:, :, None], r))
    s_inv = batched_solve_lower(chol, np.broadcast_to(np.eye(q)[:, :, None], chol.shape))
    mean_s_inv = np.einsum("kam,kbm->ab", s_inv, s_inv) / m
    centred = b - b.mean(axis=-1, keepdims=True)
    cov = np.einsum("akm,bkm->kab", centred, centred) / (m - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = cov / scale[:, None, None] - mean_s_inv[None]
    if term.diagonal:
        cov = cov * np.eye(q)[None]
    good = np.all(np.isfinite(cov), axis=(1, 2)) & (scale > 0)
    cov = np.where(good[:, None, None], cov, np.eye(q)[None])
    vals, vecs = np.linalg.eigh(cov)
    top = np.maximum(vals.max(axis=1, keepdims=True), 1.0)
    vals = np.maximum(vals, 1e-2 * top)
    cov = np.einsum("kab,kb,kcb->kac", vecs, vals, vecs)
    lam = np.linalg.cholesky(cov)
    return lam[:, batch.rows, batch.cols]


def other_starts(term: Term) -> np.ndarray:
    """The single fit's other starts of a small problem (multiples of the identity, seeded
    random factors), in lme4's parametrisation: (n_starts, n_theta)."""
    q = term.q
    eye = theta_from_lambda(np.eye(q), term.diagonal)
    starts = [s * eye for s in _EXTRA_STARTS]
    rng = np.random.default_rng(_MULTISTART_SEED)
    for _ in range(_RANDOM_STARTS):
        lam = np.tril(rng.standard_normal((q, q)))
        lam[np.diag_indices(q)] = np.abs(lam[np.diag_indices(q)]) * rng.choice([1.0, 3.0, 10.0])
        starts.append(theta_from_lambda(lam, term.diagonal))
    return np.array(starts)


# ---- the batched path ----------------------------------------------------------------------


def _one_term_solution(batch: OneTermBatch, template: CrossProducts, products: ResponseProducts,
                       theta: np.ndarray, beta: np.ndarray, scale: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``cov(beta)`` (K, p, p) and the conditional modes (K, m, q) of a one-term model at
    ``theta`` (K, n_theta) for every response (``beta`` (K, p), ``scale`` (K,) there).

    The penalised least-squares system per level: ``M_l = L'A_l L + I``, spherical modes
    ``u_l = M_l^{-1} L'(Z_l'y - Z_l'X beta)``, BLUPs ``L u_l``; ``cov(beta) = scale
    (X'X - X'Z L M^{-1} L'Z'X)^{-1}`` (Bates et al. 2015, sec. 3).
    """
    q, p = batch.q, batch.p
    K = theta.shape[0]
    m = batch.A.shape[-1]
    L = batch.lams(theta)  # (q, q, K, 1)
    Lt = np.swapaxes(L, 0, 1)
    LA = _mul4(Lt, batch.A)
    B = _mul4(LA, L)
    B[np.arange(q), np.arange(q)] += 1.0
    C = batched_cholesky(B)  # (q, q, K, m)
    ZX = np.broadcast_to(batch.ZX, (q, p, K, m))
    w = batched_solve_lower(C, _mul4(Lt, np.ascontiguousarray(ZX)), overwrite=True)  # (q, p, K, m)
    G = np.einsum("aikm,ajkm->kij", w, w)
    A = template.xyxy[0][:p, :p][None] - G
    cov_beta = scale[:, None, None] * np.linalg.inv(A)
    zy = products.zy[0][0]  # (q, K, m)
    r = zy - np.einsum("apkm,kp->akm", ZX, beta)
    rhs = _mul4(Lt, r[:, None])[:, 0]  # (q, K, m)
    u = batched_solve_lower_t(C, batched_solve_lower(C, rhs[:, None]), overwrite=True)[:, 0]
    b = _mul4(L, u[:, None])[:, 0]  # (q, K, m)
    return cov_beta, np.transpose(b, (1, 2, 0))


def one_term_parts(template: CrossProducts, products: ResponseProducts, theta: np.ndarray,
                   reml: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The profiled deviance (K,), the penalised residual sum of squares ``r2`` (K,) and
    ``A^{-1}`` (K, p, p) (``scale A^{-1}`` is Cov(beta)) of a one-term model for every
    response of ``products`` at its ``theta`` (K, n_theta): what Satterthwaite's df need
    at the points of their finite differences, for all responses at once."""
    classes = LevelClasses.of(template)
    batch = classes.batch(template, reml) if classes is not None else OneTermBatch(template, reml)
    folded = classes.products(products) if classes is not None else products
    dev, _, scale, _ = batch.evaluate(theta, folded, gradient=False)
    q, p = batch.q, batch.p
    K = theta.shape[0]
    L = batch.lams(theta)
    Lt = np.swapaxes(L, 0, 1)
    B = _mul4(_mul4(Lt, batch.A), L)
    B[np.arange(q), np.arange(q)] += 1.0
    C = batched_cholesky(B)
    ZX = np.ascontiguousarray(np.broadcast_to(batch.ZX, (q, p, K, batch.A.shape[-1])))
    w = batched_solve_lower(C, _mul4(Lt, ZX), overwrite=True)
    A = template.xyxy[0][:p, :p][None] - np.einsum("aikm,ajkm->kij", w, w)
    return dev, scale * batch.dof, np.linalg.inv(A)


def _mul4(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Per-element product of (a, b, ...) and (b, c, ...) arrays (the small axes first)."""
    out = A[:, 0, None] * B[None, 0]
    for k in range(1, A.shape[1]):
        out = out + A[:, k, None] * B[None, k]
    return out


def _add(terms) -> np.ndarray | float:
    """The sum of arrays (without the extra pass of adding them to 0); 0 when there are none."""
    it = iter(terms)
    out = next(it, 0.0)
    for term in it:
        out = out + term
    return out


class RunDeviance:
    """The deviance and its gradient of a one-term model for many runs at once, each run a
    response and a point: what the screening of the other starts evaluates.

    The formulas of :meth:`._batched_refit.OneTermBatch.evaluate` (value and gradient only,
    no scale or fixed effects), laid out for speed: each entry of a per-level ``q x q`` or
    ``q x (p + 1)`` matrix is a contiguous (levels, runs) array, so that the small matrix
    algebra (Cholesky factors, triangular solves, products) is unrolled into elementwise
    operations on whole arrays and the sums over levels add rows of contiguous memory. (The
    kernel's layout puts the few levels of a folded design last, where numpy's reductions
    are slow, and loops over ``(q, q, runs, levels)`` blocks.) Evaluated at the same point,
    both give the same numbers to rounding (checked by the tests).

    Parameters
    ----------
    batch : OneTermBatch
        The kernel (possibly on folded pseudo-levels, with their weights).
    products : ResponseProducts
        The response of each run (``R`` of them, repeated as needed).
    """

    def __init__(self, batch: OneTermBatch, products: ResponseProducts) -> None:
        self.q, self.p, self.reml, self.dof = batch.q, batch.p, batch.reml, batch.dof
        self.rows, self.cols = batch.rows, batch.cols
        self.nonzero = set(zip(self.rows.tolist(), self.cols.tolist()))
        q, p = self.q, self.p
        # The levels whose Z_l'WX is not 0 first: the X-columns of the per-level solves
        # vanish on the others (a folded design's pseudo-levels of the deviations from the
        # class means), so those columns are computed on the first n_x levels only.
        ZX = batch.ZX[:, :, 0]  # (q, p, m)
        has_x = np.any(ZX.reshape(q * p, -1) != 0.0, axis=0)
        order = np.concatenate([np.flatnonzero(has_x), np.flatnonzero(~has_x)])
        self.n_x = int(has_x.sum())
        A = batch.A[:, :, 0][:, :, order]  # (q, q, m)
        m = A.shape[-1]
        # Levels with the same Z_l'WZ_l (all of them in a balanced design) share their
        # B_l = L'A_l L + I and its factor: those are computed once per distinct A_l and
        # spread to the levels (by broadcasting when there is one).
        _, first, inverse = np.unique(A.reshape(q * q, m).T, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        self.spread = None if first.size in (1, m) else inverse
        distinct = np.arange(m) if first.size == m else first
        self.A = [[np.ascontiguousarray(A[a, b, distinct])[:, None] for b in range(q)] for a in range(q)]
        self.ZX = [[np.ascontiguousarray(ZX[a, j, order[:self.n_x]])[:, None] for j in range(p)] for a in range(q)]
        weights = np.ones(m) if batch.level_weights is None else np.asarray(batch.level_weights, dtype=float)[order]
        # log|M| and its gradient weight each level by its multiplicity: per distinct A_l,
        # the sum of the weights of its levels
        index = np.arange(m) if first.size == m else inverse
        self.weights = np.bincount(index, weights=weights, minlength=distinct.size)[:, None]
        self.XX = batch.XX
        self.constant = -batch.sum_log_w + self.dof * (1.0 + _LOG_2PI)
        self.zy = np.ascontiguousarray(np.swapaxes(products.zy[0][0][:, :, order], 1, 2))  # (q, m, R)
        self.xy, self.yy = products.xy[0], products.yy[0]

    def __call__(self, theta: np.ndarray, runs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Deviance (r,) and gradient (r, n_theta) at ``theta`` (r, n_theta) for the runs
        ``runs`` (all when None); ``inf``/NaN where the point is not admissible."""
        q, p, nx = self.q, self.p, self.n_x
        if runs is None:
            zy, xy, yy = self.zy, self.xy, self.yy
        else:
            zy, xy, yy = np.take(self.zy, runs, axis=2), np.take(self.xy, runs, axis=1), self.yy[runs]
        r = theta.shape[0]
        zero = np.zeros(r)
        L = [[zero] * q for _ in range(q)]
        for k, (a, c) in enumerate(zip(self.rows, self.cols)):
            L[a][c] = theta[:, k]
        A, Lr = self.A, [[L[a][c][None] for c in range(q)] for a in range(q)]
        nz = self.nonzero  # (a, c) where L can be nonzero: the sums below skip the others
        # L' A_l and B_l = L' A_l L + I, per distinct A_l
        LA = [[_add(Lr[c][a] * A[c][b] for c in range(q) if (c, a) in nz) for b in range(q)] for a in range(q)]
        B = [[None] * q for _ in range(q)]
        for a in range(q):
            for b in range(a + 1):
                B[a][b] = _add(LA[a][c] * Lr[c][b] for c in range(q) if (c, b) in nz)
            B[a][a] = B[a][a] + 1.0
        C = [[None] * q for _ in range(q)]
        for j in range(q):
            d = B[j][j]
            for k in range(j):
                d = d - C[j][k] * C[j][k]
            C[j][j] = np.sqrt(d)
            for i in range(j + 1, q):
                v = B[i][j]
                for k in range(j):
                    v = v - C[i][k] * C[j][k]
                C[i][j] = v / C[j][j]
        logdet_m = 2.0 * (_add(np.log(C[a][a]) for a in range(q)) * self.weights).sum(axis=0)
        # the factors and A_l on the levels (Cy, Ay) and on the first n_x of them (Cx, Ax)
        Cy = C if self.spread is None else [[None if c is None else c[self.spread] for c in row] for row in C]
        Ay = A if self.spread is None else [[x[self.spread] for x in row] for row in A]
        Cx = [[c if c is None or c.shape[0] == 1 else c[:nx] for c in row] for row in Cy]
        Ax = [[x if x.shape[0] == 1 else x[:nx] for x in row] for row in Ay]
        # w = C^{-1} L' Z'[X y]: its X-columns (n_x levels) and its y-column (all levels)
        wx = [[_add(Lr[c][a] * self.ZX[c][j] for c in range(q) if (c, a) in nz) for j in range(p)] for a in range(q)]
        wy = [_add(Lr[c][a] * zy[c] for c in range(q) if (c, a) in nz) for a in range(q)]
        for a in range(q):
            for k in range(a):
                wx[a] = [wx[a][j] - Cx[a][k] * wx[k][j] for j in range(p)]
                wy[a] = wy[a] - Cy[a][k] * wy[k]
            wx[a] = [wx[a][j] / Cx[a][a] for j in range(p)]
            wy[a] = wy[a] / Cy[a][a]
        F = np.empty((p + 1, p + 1, r))
        F[:p, :p] = self.XX[:, :, None]
        F[:p, p], F[p, :p], F[p, p] = xy, xy, yy
        for i in range(p):
            for j in range(i + 1):
                g_ij = _add(wx[a][i] * wx[a][j] for a in range(q)).sum(axis=0)
                F[i, j] -= g_ij
                if i != j:
                    F[j, i] -= g_ij
            g_ip = _add(wx[a][i] * wy[a][:nx] for a in range(q)).sum(axis=0)
            F[i, p] -= g_ip
            F[p, i] -= g_ip
        F[p, p] -= _add(wy[a] * wy[a] for a in range(q)).sum(axis=0)
        chol_a = batched_cholesky(F[:p, :p])
        beta = batched_solve_lower_t(chol_a, batched_solve_lower(chol_a, F[:p, p]))
        r2 = np.maximum(F[p, p] - (F[:p, p] * beta).sum(axis=0), np.finfo(float).tiny)
        dev = logdet_m + self.constant + self.dof * np.log(r2 / self.dof)
        if self.reml:
            dev = dev + 2.0 * np.log(chol_a[np.arange(p), np.arange(p)]).sum(axis=0)
        dev = np.where(np.isfinite(dev), dev, np.inf)
        # V = C'^{-1} w = M^{-1} L' Z'[X y]
        Vx, Vy = [list(row) for row in wx], list(wy)
        for a in reversed(range(q)):
            for k in range(a + 1, q):
                Vx[a] = [Vx[a][j] - Cx[k][a] * Vx[k][j] for j in range(p)]
                Vy[a] = Vy[a] - Cy[k][a] * Vy[k]
            Vx[a] = [Vx[a][j] / Cx[a][a] for j in range(p)]
            Vy[a] = Vy[a] / Cy[a][a]
        # u = V [-beta; 1] and e = R [-beta; 1] with R = Z'[X y] - A_l L V (the residuals)
        gamma = [-beta[j][None] for j in range(p)]
        u = []
        for a in range(q):
            ua = Vy[a].copy()
            ua[:nx] += _add(Vx[a][j] * gamma[j] for j in range(p))
            u.append(ua)
        LVx = [[_add(Lr[b][c] * Vx[c][j] for c in range(q) if (b, c) in nz) for j in range(p)] for b in range(q)]
        LVy = [_add(Lr[b][c] * Vy[c] for c in range(q) if (b, c) in nz) for b in range(q)]
        Rx = [[self.ZX[a][j] - _add(Ax[a][b] * LVx[b][j] for b in range(q)) for j in range(p)] for a in range(q)]
        e = []
        for a in range(q):
            ea = zy[a] - _add(Ay[a][b] * LVy[b] for b in range(q))
            ea[:nx] += _add(Rx[a][j] * gamma[j] for j in range(p))
            e.append(ea)
        # B_l^{-1} = C'^{-1} C^{-1}
        Ci = [[None] * q for _ in range(q)]  # C^{-1}, lower
        for j in range(q):
            Ci[j][j] = 1.0 / C[j][j]
            for i in range(j + 1, q):
                v = _add(C[i][k] * Ci[k][j] for k in range(j, i))
                Ci[i][j] = -v / C[i][i]
        sigma = [[_add(Ci[k][a] * Ci[k][b] for k in range(max(a, b), q)) for b in range(q)] for a in range(q)]
        scale = 2.0 * self.dof / r2
        grad = np.empty((r, self.rows.size))
        if self.reml:
            a_inv = _cholesky_inverse(chol_a)  # (p, p, r)
            RA = [[_add(Rx[a][i] * a_inv[i, j][None] for i in range(p)) for j in range(p)] for a in range(q)]
        for k, (a, c) in enumerate(zip(self.rows, self.cols)):
            # d log|M| / dL[a, c] = 2 sum_l (B_l^{-1} L' A_l)[c, a]
            dl = (_add(sigma[c][b] * LA[b][a] for b in range(q)) * self.weights).sum(axis=0)
            total = scale * (e[a] * u[c]).sum(axis=0)
            if self.reml and p:
                total = total + 2.0 * _add(RA[a][j] * Vx[c][j] for j in range(p)).sum(axis=0)
            grad[:, k] = 2.0 * dl - total
        return dev, np.where(np.isfinite(grad), grad, np.nan)


def _hessian(run: RunDeviance, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Hessians (R, nt, nt) from differences of the analytic gradient (as the kernel)."""
    R, nt = x.shape
    shifted, h = batched_shifts(x, with_center=False)
    g_shift = run(shifted.reshape(-1, nt), np.tile(np.arange(R), nt))[1]
    return batched_fd_hessian(g_shift.reshape(nt, R, nt), grad, h)


def screen_starts(batch: OneTermBatch, products: ResponseProducts, starts: np.ndarray,
                  known: np.ndarray, known_value: np.ndarray, margin: np.ndarray,
                  max_iter: int = _SCREEN_ITER, join: float = _SCREEN_JOIN) -> np.ndarray:
    """Which runs from ``starts`` (R, nt) reach a deviance below ``known_value - margin``:
    a lower point than the answer ``known`` of their response (whose fit then goes to the
    single fit's full search).

    Quasi-Newton descent from each start: the Hessian from differences of the gradient at
    the start (positive definite by flooring its eigenvalues), BFGS updates after, an
    Armijo backtracking line search (one gradient evaluation per iteration instead of
    Newton's ``1 + n_theta``). A run stops when it comes within ``join`` (relative, in
    ``L L'`` terms) of ``known`` (it is on its way there), when its steps vanish (a
    minimum no lower), or after ``max_iter`` iterations. The deviance depends on ``L``
    through ``L L'`` only, so the runs are unconstrained in ``theta``. Values and
    gradients come from :class:`RunDeviance` (the kernel's numbers in a layout made for
    many runs on few levels: the screen is most of a small problem's cost).
    """
    R, nt = starts.shape
    x = starts.copy()
    run = RunDeviance(batch, products)
    value, grad = run(x)
    lower = np.isfinite(value) & (value < known_value - margin)
    active = np.isfinite(value) & np.all(np.isfinite(grad), axis=1) & ~lower
    H = _hessian(run, x, np.where(np.isfinite(grad), grad, 0.0))
    H = np.where(np.all(np.isfinite(H), axis=(1, 2))[:, None, None], H, np.eye(nt))
    vals, vecs = np.linalg.eigh(H)
    vals = floored_eigenvalues(vals)
    inv_h = np.einsum("rab,rb,rcb->rac", vecs, 1.0 / vals, vecs)
    target = batch.normalised(known)
    reach = np.maximum(1.0, np.abs(target).max(axis=1))
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        near = np.abs(batch.normalised(x[idx]) - target[idx]).max(axis=1) < join * reach[idx]
        active[idx[near]] = False
        idx = idx[~near]
        if not idx.size:
            break
        g = grad[idx]
        d = -np.einsum("rab,rb->ra", inv_h[idx], g)
        uphill = ~((g * d).sum(axis=1) < 0)
        d[uphill] = -g[uphill]
        # steps of at most half the size of the point (theta entries are relative scales):
        # a quasi-Newton step from a poor model overshoots by orders of magnitude
        cap = 0.5 * np.maximum(np.abs(x[idx]).max(axis=1), 0.1)
        d *= np.minimum(1.0, cap / np.maximum(np.abs(d).max(axis=1), 1e-300))[:, None]
        slope = (g * d).sum(axis=1)
        t = np.ones(idx.size)
        new_v, new_g = value[idx].copy(), g.copy()
        accepted = np.zeros(idx.size, dtype=bool)
        for _ in range(20):
            todo = np.flatnonzero(~accepted)
            if not todo.size:
                break
            trial = x[idx[todo]] + t[todo, None] * d[todo]
            tv, tg = run(trial, idx[todo])
            good = np.isfinite(tv) & (tv <= value[idx[todo]] + 1e-4 * t[todo] * slope[todo])
            good &= np.all(np.isfinite(tg), axis=1)
            acc = todo[good]
            accepted[acc] = True
            new_v[acc], new_g[acc] = tv[good], tg[good]
            t[todo[~good]] *= 0.5
        step = t[:, None] * d
        moved = accepted & (np.abs(step).max(axis=1) > 1e-8 * np.maximum(1.0, np.abs(x[idx]).max(axis=1)))
        active[idx[~moved]] = False  # no descent left: a minimum (or a flat spot) no lower
        sel = np.flatnonzero(moved)
        if not sel.size:
            continue
        rows = idx[sel]
        s, yv = step[sel], new_g[sel] - g[sel]
        x[rows] = x[rows] + s
        value[rows], grad[rows] = new_v[sel], new_g[sel]
        sy = (s * yv).sum(axis=1)
        ok = sy > 1e-12 * np.sqrt((s * s).sum(axis=1) * (yv * yv).sum(axis=1))
        if ok.any():  # BFGS update of the inverse Hessian
            r, so, yo, rho = rows[ok], s[ok], yv[ok], 1.0 / sy[ok]
            Hi = inv_h[r]
            Hy = np.einsum("rab,rb->ra", Hi, yo)
            yHy = (yo * Hy).sum(axis=1)
            inv_h[r] = (Hi - rho[:, None, None] * (Hy[:, :, None] * so[:, None, :] + so[:, :, None] * Hy[:, None, :])
                        + (rho ** 2 * yHy + rho)[:, None, None] * so[:, :, None] * so[:, None, :])
        hit = value[rows] < known_value[rows] - margin[rows]
        lower[rows[hit]] = True
        active[rows[hit]] = False
    return lower


@dataclass
class _BlockResult:
    accepted: np.ndarray
    theta: np.ndarray
    beta: np.ndarray
    scale: np.ndarray
    deviance: np.ndarray
    at_bound: np.ndarray
    n_iter: np.ndarray


def _fit_block(batch: OneTermBatch, template: CrossProducts, products: ResponseProducts,
               multistart: bool, max_iter: int, classes: LevelClasses | None = None,
               block_size: int = _MAX_BLOCK) -> _BlockResult:
    """The batched fits of a block; ``accepted`` marks those that passed the safeguards.
    ``batch`` is on ``classes``' pseudo-levels when given."""
    K = products.n_responses
    starts = moment_starts(OneTermBatch(template, batch.reml), template, products)
    if classes is not None:
        products = classes.products(products)
    found = batch.fit(products, starts, max_iter)
    _retry_near_bound(batch, products, found, max_iter)
    accepted = found.settled & np.isfinite(found.deviance) & (found.scale > 0)
    margin = 1e-10 * np.maximum(1.0, np.abs(found.deviance))
    # the zero end: every variance 0
    zero = batch.evaluate(np.zeros_like(found.theta), products, gradient=False)[0]
    accepted &= ~(zero < found.deviance - margin)
    if multistart and accepted.any():
        extra = other_starts(batch.term)
        n_s = extra.shape[0]
        worse = np.zeros(K, dtype=bool)
        # n_s runs per response: in chunks of at most block_size runs (bounded memory)
        accepted_idx = np.flatnonzero(accepted)
        step = max(1, block_size // n_s)
        for at in range(0, accepted_idx.size, step):
            idx = accepted_idx[at:at + step]
            theta0 = np.repeat(extra[None], idx.size, axis=0).reshape(-1, batch.n_theta)
            owner = np.repeat(idx, n_s)
            lower = screen_starts(batch, _subset(products, owner), theta0, found.theta[owner],
                                  found.deviance[owner], margin[owner])
            np.logical_or.at(worse, owner, lower)
        accepted &= ~worse
    return _BlockResult(accepted, found.theta, found.beta, found.scale, found.deviance,
                        found.at_bound, found.n_iter)


def _fixable(batch: OneTermBatch) -> np.ndarray:
    """The theta entries the batched kernel may hold at 0 (see :meth:`OneTermBatch.fit`)."""
    rows, cols = batch.rows, batch.cols
    diagonal = rows == cols
    below = np.array([np.any((cols == c) & (rows > r)) for r, c in zip(rows, cols)])
    return diagonal & ~below if batch.term.diagonal else diagonal & (cols == batch.q - 1)


def _retry_near_bound(batch: OneTermBatch, products: ResponseProducts, found: Any, max_iter: int) -> None:
    """Run again, from where they stopped, the responses the kernel declined near a zero
    variance it can hold (``found`` is updated where a retry settles):

    1. converged a rounding error away from a zero variance without holding it: restart
       with those entries just inside the holding threshold, so that the kernel puts them
       on the bound and checks the inward gradient;
    2. still creeping towards the bound after the iteration limit (the deviance is flat
       there, Newton's convergence linear): the same from the bound for every holdable
       entry;
    3. held at 0 but the inward gradient is negative (the optimum is inside): restart with
       the held entries at a fifth of the largest entry.

    A retry that settles passes the kernel's own checks; the zero end and the other starts
    are checked after it."""
    fixable = _fixable(batch)
    diagonal = batch.rows == batch.cols
    for step in (1, 2, 3):
        reach = np.maximum(np.abs(found.theta).max(axis=1), 1e-300)[:, None]
        near = diagonal & (np.abs(found.theta) < 1e-3 * reach)
        todo = ~found.settled & np.isfinite(found.deviance)
        if step == 1:
            todo &= near.any(axis=1) & ~(near & ~fixable).any(axis=1)
            move = near
        elif step == 2:
            todo &= ~found.at_bound.any(axis=1)
            move = np.broadcast_to(fixable, found.theta.shape)
        else:
            todo &= found.at_bound.any(axis=1)
            move = found.at_bound
        idx = np.flatnonzero(todo)
        if not idx.size or not fixable.any():
            continue
        to = 5e-4 if step < 3 else 0.2
        theta0 = np.where(move[idx], to * reach[idx], found.theta[idx])
        again = batch.fit(_subset(products, idx), theta0, max_iter)
        ok = again.settled
        for name in ("theta", "deviance", "scale", "beta", "at_bound", "scaled_gradient"):
            getattr(found, name)[idx[ok]] = getattr(again, name)[ok]
        found.n_iter[idx[ok]] += again.n_iter[ok]
        found.settled[idx[ok]] = True


# ---- the driver ------------------------------------------------------------------------------


def _pattern_design(X: np.ndarray, factors: Sequence, terms: Terms, weights: np.ndarray | None,
                    rows: np.ndarray, columns: np.ndarray) -> PatternDesign:
    """The design of the observed rows ``rows``: levels present re-coded (as a fit of those
    rows alone codes them), its cross-products and response map, or why it cannot be fitted."""
    Xp = X[rows]
    w = None if weights is None else weights[rows]
    levels, sub_factors, sub_terms = [], [], []
    for (codes, Z), term in zip(factors, terms):
        present, new_codes = np.unique(codes[rows], return_inverse=True)
        levels.append(present)
        sub_factors.append((new_codes.astype(np.int64), np.ascontiguousarray(Z[rows])))
        sub_terms.append(dataclasses.replace(term, n_levels=int(present.size)))
    sub_terms = Terms(sub_terms)
    n = int(rows.sum())
    pat = PatternDesign(rows, levels, None, None, columns, tuple(sub_factors))
    p = X.shape[1]
    if n <= p:
        pat.problem = f"{n} observed rows for {p} fixed effects"
        return pat
    small = [t.factor for t in sub_terms if t.n_levels < 2]
    if small:
        pat.problem = f"random effects need at least two groups; {small[0]!r} has fewer on the observed rows"
        return pat
    template = cross_products(Xp, np.zeros(n), sub_factors, sub_terms, w)
    xx = template.xyxy[0][:p, :p]
    eig = np.linalg.eigvalsh(xx) if p else np.ones(1)
    if p and not eig.min() > 1e-10 * max(eig.max(), np.finfo(float).tiny):
        pat.problem = "the fixed-effects columns are aliased (rank deficient) on the observed rows"
        return pat
    pat.template = template
    pat.response_map = ResponseMap(Xp, sub_factors, sub_terms, w)
    return pat


def fit_many(X: np.ndarray, Y: np.ndarray, factors: Sequence[tuple[np.ndarray, np.ndarray]],
             terms: Terms, *, weights: np.ndarray | None = None, reml: bool = True,
             solver: str = "auto", max_iter: int = 1000, tol: float = 1e-8,
             block_size: int | None = None, multistart: bool | None = None,
             progress: Callable[[int, int], None] | None = None,
             design_of: Callable[[np.ndarray, np.ndarray, tuple], Any] | None = None,
             check: Callable[[PatternDesign], str | None] | None = None) -> ManyFit:
    """Fit the columns of ``Y`` as independent linear mixed models of one design.

    Parameters
    ----------
    X : ndarray (n, p)
        The fixed-effects columns (intercept included).
    Y : ndarray (n, k)
        The responses; NaN marks a missing value (each response is fitted to its own
        observed rows).
    factors, terms, weights
        As :func:`._crossprod.cross_products` (every row).
    reml, solver, max_iter, tol
        As the single fit (:func:`._model.fit_model`).
    block_size : int, optional
        Responses fitted together by the batched kernel (default: from a memory bound).
    multistart : bool, optional
        Run the other starts of the batched path (default: the single fit's rule, on
        problems of at most ``_MULTISTART_MAX_LEVELS`` levels; False only to measure what
        they cost, the fits may then differ from the single fits).
    progress : callable, optional
        ``progress(done, total)`` after each block.
    design_of : callable, optional
        ``design_of(rows, y, factors)``: the rows of a response as the single fit keeps them
        (for its refinement of fits that lose digits); None: no refinement.
    check : callable, optional
        ``check(pattern)``: why the rows of a missingness pattern cannot be fitted (the
        single fit's checks of the design), or None; its responses then fail with that.

    Returns
    -------
    ManyFit
    """
    n, k = Y.shape
    p = X.shape[1]
    nt = terms.n_theta
    observed, pattern = missing_patterns(Y)
    intercept = p > 0 and bool(np.all(X[:, 0] == 1.0))
    out = ManyFit(theta=np.full((k, nt), np.nan), beta=np.full((k, p), np.nan),
                  scale=np.full(k, np.nan), deviance=np.full(k, np.nan),
                  cov_beta=np.full((k, p, p), np.nan),
                  blups=[np.zeros((k, t.n_levels, t.q)) for t in terms],
                  converged=np.zeros(k, dtype=bool), failed=np.zeros(k, dtype=bool),
                  batched=np.zeros(k, dtype=bool), at_bound=np.zeros((k, nt), dtype=bool),
                  n_iter=np.zeros(k, dtype=np.int64), n_obs=observed.sum(axis=1)[pattern],
                  pattern=pattern, messages=[""] * k, patterns=[], terms=terms, reml=reml,
                  y_shift=np.zeros(k), solver=solver, max_iter=max_iter, tol=tol)
    done = 0
    with single_threaded_blas():
        for s in range(observed.shape[0]):
            columns = np.flatnonzero(pattern == s)
            pat = _pattern_design(X, factors, terms, weights, observed[s], columns)
            if pat.problem is None and check is not None:
                pat.problem = check(pat)
            out.patterns.append(pat)
            if pat.problem is not None:
                out.failed[columns] = True
                for j in columns:
                    out.messages[j] = pat.problem
                done += columns.size
                if progress is not None:
                    progress(done, k)
                continue
            Yp = Y[np.ix_(pat.rows, columns)]
            if intercept:
                out.y_shift[columns] = _response_origin(Yp)
                Yp = Yp - out.y_shift[columns][None]
            pat.products = pat.response_map(Yp)
            one_term = len(terms) == 1
            batch = classes = None
            if one_term:
                classes = LevelClasses.of(pat.template)
                batch = classes.batch(pat.template, reml) if classes is not None else \
                    OneTermBatch(pat.template, reml)
            size = block_size or (block_size_for(terms[0].q, p, batch.A.shape[-1], nt)
                                  if one_term else 64)
            small = sum(t.n_levels for t in pat.template.terms) <= _MULTISTART_MAX_LEVELS
            other_starts_on = small if multistart is None else (multistart and small)
            for start in range(0, columns.size, size):
                local = np.arange(start, min(columns.size, start + size))
                _fit_columns(out, pat, batch, classes, local, other_starts_on, design_of, Y, size)
                done += local.size
                if progress is not None:
                    progress(done, k)
    return out


def _fit_columns(out: ManyFit, pat: PatternDesign, batch: OneTermBatch | None,
                 classes: LevelClasses | None, local: np.ndarray, multistart: bool, design_of,
                 Y: np.ndarray, block_size: int = _MAX_BLOCK) -> None:
    """Fit the responses ``pat.columns[local]`` into ``out``."""
    products = _subset(pat.products, local)
    # the single fit's check of the response: not reproduced exactly by X (e.g. constant)
    todo = _response_ok(pat.template, products)
    for j in pat.columns[local[~todo]]:
        out.failed[j] = True
        out.messages[j] = "y is constant or an exact linear function of X: the residual variance would be 0"
    if batch is not None and todo.any():
        sel = np.flatnonzero(todo)
        sub = _subset(products, sel)
        with np.errstate(all="ignore"):
            res = _fit_block(batch, pat.template, sub, multistart, out.max_iter, classes, block_size)
        ok = res.accepted & _residual_ok(res.scale, pat.template, sub)
        if ok.any():
            acc = np.flatnonzero(ok)
            with np.errstate(all="ignore"):
                cov_beta, blups = _one_term_solution(OneTermBatch(pat.template, out.reml), pat.template, _subset(sub, acc), res.theta[acc],
                                                     res.beta[acc], res.scale[acc])
            cols = pat.columns[local[sel[acc]]]
            out.theta[cols], out.beta[cols] = res.theta[acc], res.beta[acc]
            out.beta[cols, 0] += out.y_shift[cols]  # the intercept of y as given
            out.scale[cols], out.deviance[cols] = res.scale[acc], res.deviance[acc]
            out.cov_beta[cols] = cov_beta
            out.at_bound[cols] = res.at_bound[acc]
            out.n_iter[cols] = res.n_iter[acc]
            out.converged[cols] = True
            out.batched[cols] = True
            for j in cols:
                out.messages[j] = "converged: batched Newton"
            out.blups[0][np.ix_(cols, pat.levels[0])] = blups
            todo[sel[acc]] = False
    for i in np.flatnonzero(todo):
        _single_fit(out, pat, products, i, int(pat.columns[local[i]]), design_of, Y)


def _single_fit(out: ManyFit, pat: PatternDesign, products: ResponseProducts, i: int, j: int,
                design_of, Y: np.ndarray) -> None:
    """Response ``j`` (``i`` in ``products``) by the single fit's path."""
    cp = _with_origin(pat.template.with_response(products, i), out.y_shift[j])
    design = design_of(pat.rows, Y[pat.rows, j], pat.factors) if design_of is not None else None
    try:
        with np.errstate(all="ignore"):
            dev, sol, info = fit_model(cp, out.reml, solver=out.solver, max_iter=out.max_iter,
                                       tol=out.tol, design=design)
    except (FloatingPointError, ValueError, np.linalg.LinAlgError) as err:
        out.failed[j] = True
        out.messages[j] = f"{type(err).__name__}: {err}"
        return
    if not _residual_ok(np.array([sol.scale]), pat.template, _subset(products, np.array([i])))[0]:
        out.failed[j] = True
        out.messages[j] = _ZERO_RESIDUAL
        return
    out.theta[j], out.beta[j] = sol.theta, sol.beta
    out.scale[j], out.deviance[j] = sol.scale, sol.deviance
    out.cov_beta[j] = sol.cov_beta()
    out.at_bound[j] = info.at_bound
    out.n_iter[j] = info.n_iter
    out.converged[j] = info.converged
    out.messages[j] = info.message
    for t, b in enumerate(sol.blups()):
        out.blups[t][j, pat.levels[t]] = b
    out._models[j] = (dev, sol)


def _response_origin(Y: np.ndarray, rows: int = _ORIGIN_ROWS) -> np.ndarray:
    """Per column of ``Y``, the single fit's origin of ``y`` (:func:`._crossprod.origin_of`):
    the mean of the first ``rows`` values where it exceeds their standard deviation, else 0.
    Responses far from 0 relative to their spread keep their digits in the cross-products."""
    head = Y[:rows]
    mean, sd = head.mean(axis=0), head.std(axis=0)
    return np.where((np.abs(mean) > sd) & np.isfinite(mean), mean, 0.0)


def _with_origin(cp: CrossProducts, shift: float) -> CrossProducts:
    """Cross-products of ``y - shift`` labelled with that origin, so that the engine's
    solution reports the fixed effects of ``y`` as given (``X``'s first column the
    intercept)."""
    if shift == 0.0:
        return cp
    return dataclasses.replace(cp, origin=Origin(np.append(np.zeros(cp.p), shift)))


_ZERO_RESIDUAL = ("the residual variance is 0: the fixed and random effects reproduce y exactly "
                  "within every group, so the likelihood is unbounded")


def _response_ok(template: CrossProducts, products: ResponseProducts) -> np.ndarray:
    """Responses X does not reproduce exactly (the single fit's ``check_response``)."""
    p = template.p
    xy, yy = products.xy[0], products.yy[0]
    beta = np.linalg.lstsq(template.xyxy[0][:p, :p], xy, rcond=None)[0]
    rss = yy - (xy * beta).sum(axis=0)
    return rss > 1e-12 * np.maximum(yy, np.finfo(float).tiny)


def _residual_ok(scale: np.ndarray, template: CrossProducts, products: ResponseProducts) -> np.ndarray:
    """Residual variances not collapsed to 0 (the single fit's ``check_residual_variance``
    floor: 1e-20 of the least-squares one)."""
    p = template.p
    xx = template.xyxy[0][:p, :p]
    xy = products.xy[0]
    beta = np.linalg.lstsq(xx, xy, rcond=None)[0]
    ols = (products.yy[0] - (xy * beta).sum(axis=0)) / max(template.n - p, 1)
    return np.asarray(scale > 1e-20 * ols)
