"""Matrix-free profiled deviance for large crossed random effects (``solver="iterative"``).

Notation of Bates, Maechler, Bolker & Walker (2015, JSS 67(1), sec. 3) and of
:mod:`._deviance`: terms ``k`` with ``m_k`` levels and ``q_k`` effects per level,
``Lambda = blockdiag_k(I (x) L_k)``, ``A = Z'WZ`` and ``M = Lambda' A Lambda + I``. The
deviance, its parameters (``theta`` in lme4's order) and its solution are those of
:class:`._deviance.Deviance`; only how ``log|M|`` and the solves with ``M`` are computed
differs. Everything is built from the engine's :class:`._crossprod.CrossProducts` (the
sparse ``Z_k'WZ_l`` pair blocks, never a dense block of ``M``).

How it is computed
------------------
*Exact elimination of the largest term.* The term with the largest ``m_1 q_1`` (users)
has a block-diagonal block ``M_11 = blockdiag_l(B_l)``, so it is eliminated in closed form,
level by level, and everything iterative works on the Schur complement of the other terms
(size ``r``; items), ``S = M_22 - M_21 M_11^{-1} M_12`` and ``log|M| = sum_l log|B_l| +
log|S|``. A product with ``S`` costs two products with the sparse ``Z_1'WZ_R`` and one
with ``Z_R'WZ_R``: O(nnz). Conjugate gradients on ``S`` preconditioned by the diagonal
blocks of ``M_22`` is conjugate gradients on ``M`` with the symmetric block Gauss-Seidel
preconditioner by terms (one backfitting sweep of Ghosh, Hastie & Owen 2022, Ann.
Statist. 50(1); GPBoost's "ssor" for grouped effects), at half the sparse products. On
the issue's data it needs 6-7 iterations to 1e-8 at every size.

*Log-determinant.* ``log|S| = log|P| + log|A~|``, ``A~ = C^{-1} S C^{-T}`` (``P = C C'``),
and for ``log|A~|`` (``E = A~ - I``): the smallest eigenpairs of ``A~`` exactly (ARPACK
from a fixed start: the grand mean shared by the eliminated term and each other term is
an isolated eigenvalue near 0.1), ``tr E`` and ``||E||_F^2`` exactly (diagonal blocks;
the sparse Schur complement in chunks), and only the remainder ``tr f(E)``, ``f(x) =
log(1+x) - x + x^2/2``, on the deflated complement by stochastic Lanczos quadrature
(Ubaru, Chen & Saad 2017, SIAM J. Matrix Anal. Appl. 38(4)) from the CG coefficients
(Saad 2003, sec. 6.7.3; Gardner et al. 2018). The probes are Rademacher vectors
(Hutchinson 1990) drawn once from a seeded generator when the plan is built, so the
objective is a deterministic function of ``theta`` and a fit is reproducible bit for bit.

*Gradient.* The data part (``r2``, REML ``log|A|``) exactly from the ``p + 1`` PCG solves
(envelope theorem, as in :mod:`._deviance`); ``tr(S^{-1} dS)`` with the same probes and
a control variate whose expectation ``tr(P^{-1} dS)`` is exact. It is the gradient of the
expected objective, not the exact derivative of the fixed-probe one: they differ by the
stochastic error (measured in the tests).

*Average information* (Gilmour, Thompson & Cullis 1995): one more batched PCG solve with
one right-hand side per ``theta`` entry; exact up to the PCG tolerance.

*The solution* (:class:`IterativeSolution`, the protocol of :class:`._deviance.Solution`):
beta, its covariance and the modes from the same solves; prediction errors ``r'M^{-1}r``
by one PCG solve per distinct row. Conditional covariances (the diagonal blocks of
``M^{-1}``) exactly while one solve per random effect of the Schur complement is cheap
(``S^{-1}`` column by column; the eliminated term's blocks ``B_l^{-1} + (W S^{-1}
W')_ll``, ``W = M_11^{-1} M_12``), else with the probes (Bekas, Kokiopoulou & Saad 2007)
and their standard errors. Inference differentiates the fixed-probe deviance numerically
(Satterthwaite, profiles): with CG converged to 1e-8 it is a smooth function of theta,
and its stochastic error varies slowly with theta, so its differences are far more
accurate than its value (measured against the exact solver in the tests).

Measurements behind the choices (preconditioners, probes, deflation):
``benchmarks/crossed_notes.md``. Not taken (a ValueError names them): residual strata
(``residual_groups``) and models with a single random-effects term (solved exactly level
by level anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, sparse
from scipy.sparse import linalg as sparse_linalg

from ._crossprod import CrossProducts
from ._deviance import Solution, profiled_over_beta

__all__ = ["IterativePlan", "IterativeDeviance", "IterativeSolution", "N_PROBES", "PROBE_SEED",
           "EXACT_CONDITIONAL_COV_FLOPS"]

# Probe vectors of the stochastic estimates and the seed of their private generator: 32
# probes give log-likelihood errors of ~1.5e-4 at 2x10^5 and 10^6 rows (notes, sec. 3).
N_PROBES = 32
PROBE_SEED = 20261202
# Work arrays of one block of right-hand sides are kept below this many doubles per
# (m_1 q_1)-long array: 2^21 doubles = 16 MiB. About eight such arrays are alive at once
# in the gradient; at 10^7 rows (10^6 users) this is a block of 2 columns, and the sparse
# products cost the same flops in any blocking.
_BLOCK_DOUBLES = 1 << 21
# The conditional covariances are computed exactly (one PCG solve per random effect of the
# Schur complement) while that costs at most this many flops (about a second), else
# estimated with the probes.
EXACT_CONDITIONAL_COV_FLOPS = 2e9
# PCG iterations assumed by that cost estimate (6-7 to 1e-8 on the notes' data).
_CG_ITERATIONS = 10


def _colsum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise dot products of two (r, c) arrays."""
    return np.einsum("ij,ij->j", a, b)


def _flat(x: np.ndarray) -> np.ndarray:
    """A (q, c, m) per-level block as rows ``(level, effect)``: (m q, c)."""
    return x.transpose(2, 0, 1).reshape(-1, x.shape[1])


@dataclass
class _TermLayout:
    """One term's place in the eliminated / Schur-complement split."""

    m: int
    q: int
    theta: slice  # this term's entries of theta
    rows: np.ndarray  # row and column in L_k of each entry
    cols: np.ndarray
    rest_offset: int = -1  # first row in the Schur complement (terms after the first)

    @property
    def size(self) -> int:
        return self.m * self.q

    def lam(self, theta: np.ndarray) -> np.ndarray:
        lam = np.zeros((self.q, self.q))
        lam[self.rows, self.cols] = theta[self.theta]
        return lam


@dataclass
class _State:
    """Everything one ``theta`` needs, before any solve."""

    theta: np.ndarray
    lams: list  # L_k per term, model order
    Binv: np.ndarray  # (m1, q1, q1)
    G: np.ndarray  # (m1, q1, q1): L_1 B_l^{-1} L_1'
    logdet_B: float
    P_chol: list  # per rest term: (m, q, q) lower Cholesky factors of the preconditioner
    logdet_P: float
    lam_rest: np.ndarray | None  # diagonal of Lambda_R when every rest term is scalar
    Gfac: np.ndarray  # (m1, q1, q1): F_l with G_l = F_l F_l'
    P_chol_flat: np.ndarray | None  # the Cholesky factors as one vector when all scalar
    S_blocks: list = field(default_factory=list)  # diagonal blocks of S per rest term


def _sparse_pair(block, q_k: int, q_l: int, shape: tuple, col_offset: int, transpose: bool) -> sparse.csr_matrix:
    """A pair block ``Z_k'WZ_l`` as a sparse matrix over (level, effect) rows and columns.

    ``transpose``: the matrix of ``Z_l'WZ_k`` instead. Columns are shifted by
    ``col_offset`` (the term's first row in the Schur complement).
    """
    values = block.values[0]
    if q_k == 1 and q_l == 1 and not transpose:
        # Entries sorted by (level_k, level_l): CSR directly, sharing nothing but indices.
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(block.level_k, minlength=shape[0]), out=indptr[1:])
        index_type = np.int32 if shape[1] < 2**31 and block.nnz < 2**31 else np.int64
        return sparse.csr_matrix((values.ravel(), (block.level_l + col_offset).astype(index_type),
                                  indptr.astype(index_type)), shape=shape)
    rows = np.broadcast_to(block.level_k[:, None, None] * q_k + np.arange(q_k)[:, None], values.shape)
    cols = np.broadcast_to(block.level_l[:, None, None] * q_l + np.arange(q_l), values.shape)
    if transpose:
        rows, cols = cols, rows
    return sparse.csr_matrix((values.ravel(), (rows.ravel(), cols.ravel() + col_offset)), shape=shape)


class IterativePlan:
    """The theta-independent part of the matrix-free deviance, from the cross-products.

    Holds only what depends on the random-effects design and the weights (the blocks of
    ``Z'WZ``, the probes), nothing of ``[X y]``: shared by the REML and ML deviances of
    the same data and by refits to other responses (inference).

    Parameters
    ----------
    cp : CrossProducts
        One stratum, two or more terms.
    n_probes : int
    seed : int
        Seed of the probes' private generator (no global state).
    """

    def __init__(self, cp: CrossProducts, n_probes: int = N_PROBES, seed: int = PROBE_SEED) -> None:
        if cp.n_strata != 1:
            raise ValueError("solver='iterative' does not take residual_groups (a residual variance "
                             "per stratum); use solver='exact'")
        if cp.self_paired:
            raise ValueError("solver='iterative' does not take random effects whose "
                             "cross-products connect two levels of one term (correlated "
                             "residuals); use solver='exact'")
        if len(cp.terms) < 2:
            raise ValueError("solver='iterative' is for crossed random effects (two or more grouping "
                             "factors); a single factor is solved exactly level by level: use "
                             "solver='exact' or 'auto'")
        terms = cp.terms
        self.blocks: list[_TermLayout] = []
        for term, sl in zip(terms, terms.slices):
            rows, cols = term.theta_position
            self.blocks.append(_TermLayout(term.n_levels, term.q, sl, np.asarray(rows), np.asarray(cols)))
        self.N = sum(t.size for t in self.blocks)
        # Elimination order: largest block first (ties: the model's first), as _factor.Plan.
        self.first = int(np.argmax([t.size for t in self.blocks]))
        f = self.blocks[self.first]
        self.rest = [k for k in range(len(terms)) if k != self.first]
        ro = 0
        for k in self.rest:
            self.blocks[k].rest_offset = ro
            ro += self.blocks[k].size
        self.r = ro
        q = [t.q for t in self.blocks]
        # The eliminated term's own block, (m1, q1, q1).
        self.a11 = np.ascontiguousarray(cp.diag[self.first][0].transpose(2, 0, 1))
        # Cross block first x rest, (m1 q1, r): rows level-major; the reverse direction
        # uses its transpose (a CSC view, no copy).
        parts = []
        for k in self.rest:
            t = self.blocks[k]
            block = cp.pair(min(self.first, k), max(self.first, k))
            if self.first < k:
                parts.append(_sparse_pair(block, q[self.first], q[k], (f.size, t.size), 0, False))
            else:
                parts.append(_sparse_pair(block, q[k], q[self.first], (f.size, t.size), 0, True))
        self.a1R = parts[0] if len(parts) == 1 else sparse.hstack(parts, format="csr")
        del parts
        self.a1R.sort_indices()
        # Z_R'WZ_R: the rest terms' diagonal blocks and their pair blocks, (r, r).
        rows_all, cols_all, vals_all = [], [], []
        self.aRR_diag = []
        for k in self.rest:
            t = self.blocks[k]
            d = cp.diag[k][0].transpose(2, 0, 1)  # (m, q, q)
            self.aRR_diag.append(np.ascontiguousarray(d))
            base = t.rest_offset + np.arange(t.m)[:, None, None] * t.q
            rows_all.append(np.broadcast_to(base + np.arange(t.q)[:, None], d.shape).ravel())
            cols_all.append(np.broadcast_to(base + np.arange(t.q)[None, :], d.shape).ravel())
            vals_all.append(d.ravel())
        for a, k in enumerate(self.rest):
            for l in self.rest[a + 1:]:
                lo, hi = min(k, l), max(k, l)
                block = cp.pair(lo, hi)
                tk, tl = self.blocks[lo], self.blocks[hi]
                v = block.values[0]
                rr = tk.rest_offset + np.broadcast_to(block.level_k[:, None, None] * tk.q
                                                      + np.arange(tk.q)[:, None], v.shape).ravel()
                cc = tl.rest_offset + np.broadcast_to(block.level_l[:, None, None] * tl.q
                                                      + np.arange(tl.q), v.shape).ravel()
                rows_all += [rr, cc]
                cols_all += [cc, rr]
                vals_all += [v.ravel(), v.ravel()]
        self.aRR = sparse.csr_matrix((np.concatenate(vals_all), (np.concatenate(rows_all),
                                                                 np.concatenate(cols_all))),
                                     shape=(self.r, self.r))
        self.aRR.sum_duplicates()
        self.aRR.sort_indices()
        self.all_scalar = all(t.q == 1 for t in self.blocks)
        # Column ranges of K'K (for ||E||_F^2) holding at most ~2^20 entries each: column
        # j of K'K has at most sum over j's first-term levels of their rest entries.
        deg = np.diff(self.a1R.indptr).astype(np.float64)
        work = np.bincount(self.a1R.indices, weights=np.repeat(deg, np.diff(self.a1R.indptr)),
                           minlength=self.a1R.shape[1])
        work = np.minimum(work, self.a1R.shape[1])  # a column has at most r entries
        cuts = np.searchsorted(np.cumsum(work), np.arange(1, int(work.sum() // 2**20) + 1) * 2.0**20)
        edges = np.unique(np.concatenate([[0], cuts, [self.a1R.shape[1]]]))
        self.frob_chunks = list(zip(edges[:-1], edges[1:]))
        self.n_probes = int(n_probes)
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        # Rademacher probes on the Schur complement's space, fixed for the plan's life.
        self.probes = rng.integers(0, 2, size=(self.r, self.n_probes), dtype=np.int8) * np.int8(2) - np.int8(1)
        # One near-null direction of the preconditioned Schur complement per other term
        # (its grand mean, confounded with the eliminated term's).
        self.n_deflate = len(self.rest)
        ids, base = [], 0
        for k in self.rest:
            t = self.blocks[k]
            ids.append(base + np.repeat(np.arange(t.m), t.q))
            base += t.m
        self.rest_block_id = np.concatenate(ids)  # rest row -> its (term, level) block
        self.block_size = max(1, _BLOCK_DOUBLES // max(1, f.size))

    def describe(self) -> str:
        f = self.blocks[self.first]
        return (f"iterative: term {self.first} ({f.m} levels) eliminated exactly, preconditioned CG "
                f"on the other {self.r} random effects ({self.a1R.nnz} level pairs), "
                f"{self.n_probes} fixed probes")


class IterativeDeviance:
    """The profiled deviance, matrix-free: a stochastic estimate, deterministic in ``theta``.

    Same protocol as :class:`._deviance.Deviance` (``x = theta``; no strata).

    Parameters
    ----------
    cp : CrossProducts
    reml : bool
    plan : IterativePlan, optional
        Built from ``cp`` when not given.
    rtol : float
        PCG stops a right-hand side when its residual norm is below ``rtol`` times its norm.
    max_iter : int
        PCG iteration limit.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn._terms import Term, Terms
    >>> from mixedlm_sklearn._crossprod import cross_products
    >>> rng = np.random.default_rng(0)
    >>> u, item = rng.integers(0, 40, 800), rng.integers(0, 15, 800)
    >>> y = rng.standard_normal(40)[u] + rng.standard_normal(15)[item] + rng.standard_normal(800)
    >>> terms = Terms([Term("u", ("(Intercept)",), 40), Term("item", ("(Intercept)",), 15)])
    >>> ones = np.ones((800, 1))
    >>> cp = cross_products(ones, y, [(u, ones), (item, ones)], terms)
    >>> dev = IterativeDeviance(cp, reml=False)
    >>> value, grad = dev.value_and_grad(np.array([1.0, 1.0]))
    >>> value == dev(np.array([1.0, 1.0])), grad.shape
    (True, (2,))
    """

    stochastic = True

    def __init__(self, cp: CrossProducts, reml: bool = True, plan: IterativePlan | None = None, *,
                 rtol: float = 1e-8, max_iter: int = 1000) -> None:
        self.cp = cp
        self.reml = bool(reml)
        self.terms = cp.terms
        self.p = cp.p
        self.n = cp.n
        self.dof = self.n - self.p if self.reml else self.n
        if self.dof <= 0:
            raise ValueError(f"{self.n} observations are too few for {self.p} fixed effects"
                             + (" with REML" if reml else ""))
        self.plan = plan if plan is not None else IterativePlan(cp)
        self.n_theta = self.terms.n_theta
        self.n_eta = self.n_ratios = 0
        self.sum_log_weights = float(cp.sum_log_weights[0])
        self.rtol, self.max_iter = float(rtol), int(max_iter)
        self.preconditioner = "gs"
        pl = self.plan
        # The plan's arrays under the names the algorithms below use (references).
        self.blocks, self.first, self.rest, self.r = pl.blocks, pl.first, pl.rest, pl.r
        self.a11, self.a1R, self.aRR, self.aRR_diag = pl.a11, pl.a1R, pl.aRR, pl.aRR_diag
        # Z_1'W[X y] and Z_R'W[X y] as rows (level, effect).
        # (a view of the cross-products for a scalar first term: no m_1-long copy)
        z1 = cp.zxy[self.first][0]
        self.r1 = z1[0].T if z1.shape[0] == 1 else _flat(z1)
        self.rR = np.concatenate([_flat(cp.zxy[k][0]) for k in self.rest], axis=0)
        self.xyxy = cp.xyxy[0]
        self.probes, self.n_probes, self.n_deflate = pl.probes, pl.n_probes, pl.n_deflate
        self._all_scalar, self._frob_chunks = pl.all_scalar, pl.frob_chunks
        self._rest_block_id, self.block_size = pl.rest_block_id, pl.block_size
        self.n_evaluations = 0
        self._cache: tuple | None = None

    @property
    def n_params(self) -> int:
        return self.n_theta

    @property
    def strata_counts(self) -> np.ndarray:
        """Rows per residual stratum: one (the protocol of :class:`._deviance.Deviance`)."""
        return self.cp.n_obs

    def residual_start(self) -> None:
        """No residual parameters: nothing to start."""
        return None

    def lower_bounds(self) -> np.ndarray:
        return self.terms.lower_bounds()

    def upper_bounds(self) -> np.ndarray:
        return np.full(self.n_theta, np.inf)

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``theta`` and the stratum weights (one stratum: ``[1.0]``)."""
        return np.asarray(x, dtype=float)[:self.n_theta], np.ones(1)

    # ---- set-up helpers -------------------------------------------------------------------

    # ---- Lambda and the Schur complement -----------------------------------------------------

    def _lam1(self, st: _State, x: np.ndarray, transpose: bool) -> np.ndarray:
        """``(I (x) L_1) x`` or its transpose for x (m1 q1, c)."""
        f = self.blocks[self.first]
        L = st.lams[self.first]
        if f.q == 1:
            return L[0, 0] * x
        xb = x.reshape(f.m, f.q, -1)
        return np.einsum("ba,mbc->mac" if transpose else "ab,mbc->mac", L, xb).reshape(x.shape)

    def _lamR(self, st: _State, x: np.ndarray, transpose: bool) -> np.ndarray:
        """``Lambda_R x`` or ``Lambda_R' x`` for x (r, c)."""
        if st.lam_rest is not None:
            return st.lam_rest[:, None] * x
        out = np.empty_like(x)
        for k in self.rest:
            t, L = self.blocks[k], st.lams[k]
            s = slice(t.rest_offset, t.rest_offset + t.size)
            xb = x[s].reshape(t.m, t.q, -1)
            out[s] = np.einsum("ba,mbc->mac" if transpose else "ab,mbc->mac", L, xb).reshape(t.size, -1)
        return out

    def _blocks1(self, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Per-level ``blocks_l x_l`` for (m1, q1, q1) blocks and x (m1 q1, c)."""
        f = self.blocks[self.first]
        if f.q == 1:
            return blocks[:, 0, 0, None] * x
        return np.einsum("mab,mbc->mac", blocks, x.reshape(f.m, f.q, -1)).reshape(x.shape)

    def _state(self, theta: np.ndarray) -> _State:
        theta = np.asarray(theta, dtype=float)
        lams = [t.lam(theta) for t in self.blocks]
        f = self.blocks[self.first]
        L1 = lams[self.first]
        B = np.einsum("ba,mbc,cd->mad", L1, self.a11, L1)
        B[:, np.arange(f.q), np.arange(f.q)] += 1.0
        C = np.linalg.cholesky(B)
        logdet_B = 2.0 * float(np.log(np.diagonal(C, axis1=1, axis2=2)).sum())
        Binv = np.linalg.inv(B)
        G = np.einsum("ab,mbc,dc->mad", L1, Binv, L1)
        Gfac = np.einsum("ab,mcb->mac", L1, np.linalg.inv(C))  # L_1 C^{-T}
        lam_rest = None
        if all(self.blocks[k].q == 1 for k in self.rest):
            lam_rest = np.concatenate([np.full(self.blocks[k].m, lams[k][0, 0]) for k in self.rest])
        # Diagonal blocks of S = M_22 - M_21 M_11^{-1} M_12: per rest level c,
        # L' (A_RR,cc - sum_l A_1R[l,c]' G_l A_1R[l,c]) L + I.
        if self._all_scalar:
            # The diagonal of A_R1 G A_1R is (A_1R o A_1R)' g: the squared values on A_1R's
            # indices, made here and dropped (kept, they would hold an nnz-long array
            # through the whole fit: 58 MiB at 10^7 rows).
            a = self.a1R
            squared = sparse.csr_matrix((a.data * a.data, a.indices, a.indptr), shape=a.shape)
            corr = np.asarray(squared.T @ G[:, 0, 0]).ravel()
            del squared
            corr_blocks = None
        else:
            corr = None
            T = sparse.bsr_matrix((G, np.arange(f.m), np.arange(f.m + 1)), shape=(f.size, f.size)) @ self.a1R
            T = sparse.csr_matrix(T)
            corr_blocks = []
            for k in self.rest:
                t = self.blocks[k]
                out = np.zeros((t.m, t.q, t.q))
                for a in range(t.q):
                    ca = t.rest_offset + np.arange(t.m) * t.q + a
                    for b in range(t.q):
                        cb = t.rest_offset + np.arange(t.m) * t.q + b
                        out[:, a, b] = np.asarray(self.a1R[:, ca].multiply(T[:, cb]).sum(axis=0)).ravel()
                corr_blocks.append(out)
        P_chol, logdet_P, S_blocks = [], 0.0, []
        eye = np.arange(0)
        for j, k in enumerate(self.rest):
            t, L = self.blocks[k], lams[k]
            eye = np.arange(t.q)
            if corr is not None:
                W = self.aRR_diag[j] - corr[t.rest_offset : t.rest_offset + t.size].reshape(t.m, 1, 1)
            else:
                W = self.aRR_diag[j] - corr_blocks[j]
            Sd = np.einsum("ba,mbc,cd->mad", L, W, L)
            Sd[:, eye, eye] += 1.0
            S_blocks.append(Sd)
            if self.preconditioner == "schur":
                Pd = Sd
            else:  # "gs": the diagonal blocks of M_22 (symmetric block Gauss-Seidel on M)
                Pd = np.einsum("ba,mbc,cd->mad", L, self.aRR_diag[j], L)
                Pd[:, eye, eye] += 1.0
            Cj = np.linalg.cholesky(Pd)
            P_chol.append(Cj)
            logdet_P += 2.0 * float(np.log(np.diagonal(Cj, axis1=1, axis2=2)).sum())
        flat = np.concatenate([c[:, 0, 0] for c in P_chol]) if lam_rest is not None else None
        st = _State(theta, lams, Binv, G, logdet_B, P_chol, logdet_P, lam_rest, Gfac, flat, S_blocks)
        return st

    def _trace_Pinv_S(self, st: _State, S_blocks: list) -> float:
        """``sum_c tr(P_c^{-1} S_cc)`` over the diagonal blocks, ``P`` from ``st``."""
        tot = 0.0
        for Cj, Sd in zip(st.P_chol, S_blocks):
            Ci = np.linalg.inv(Cj)
            tot += float(np.einsum("mab,mbc,mac->", Ci, Sd, Ci))
        return tot

    def _diag_block_frob2(self, st: _State) -> float:
        """``sum_c ||C_c^{-1} S_cc C_c^{-T} - I||_F^2`` (0 for the "schur" preconditioner)."""
        if self.preconditioner == "schur":
            return 0.0
        tot = 0.0
        for Cj, Sd in zip(st.P_chol, st.S_blocks):
            Ci = np.linalg.inv(Cj)
            E = np.einsum("mab,mbc,mdc->mad", Ci, Sd, Ci)
            E[:, np.arange(E.shape[1]), np.arange(E.shape[1])] -= 1.0
            tot += float(np.square(E).sum())
        return tot

    def _schur(self, st: _State, y: np.ndarray) -> np.ndarray:
        """``S y`` for y (r, c): two products with ``Z_1'Z_R``, one with ``Z_R'Z_R``."""
        t1 = self._lamR(st, y, False)
        u = self._blocks1(st.G, self.a1R @ t1)
        w = self.aRR @ t1
        w -= self.a1R.T @ u
        return y + self._lamR(st, w, True)

    def _prec_apply(self, st: _State, x: np.ndarray, how: str) -> np.ndarray:
        """Block-Jacobi ``P = C C'`` applied to x (r, c).

        ``how``: "inv" (P^{-1} x), "half" (C x), "halfT" (C' x), "halfinv" (C^{-1} x),
        "halfinvT" (C^{-T} x).
        """
        if st.P_chol_flat is not None:
            c = st.P_chol_flat[:, None]
            if how == "inv":
                return x / (c * c)
            return x * c if how in ("half", "halfT") else x / c
        out = np.empty_like(x, dtype=float)
        for j, k in enumerate(self.rest):
            t, C = self.blocks[k], st.P_chol[j]
            s = slice(t.rest_offset, t.rest_offset + t.size)
            xb = x[s].reshape(t.m, t.q, -1).astype(float)
            if how == "half":
                yb = np.einsum("mab,mbc->mac", C, xb)
            elif how == "halfT":
                yb = np.einsum("mba,mbc->mac", C, xb)
            else:
                Ci = np.linalg.inv(C)
                if how == "halfinv":
                    yb = np.einsum("mab,mbc->mac", Ci, xb)
                else:
                    if how == "inv":  # C^{-T} C^{-1} x
                        xb = np.einsum("mab,mbc->mac", Ci, xb)
                    yb = np.einsum("mba,mbc->mac", Ci, xb)  # C^{-T} x
            out[s] = yb.reshape(t.size, -1)
        return out

    # ---- PCG with Lanczos coefficients ----------------------------------------------------------

    def _pcg(self, st: _State, b: np.ndarray, lanczos: bool):
        """Solve ``S X = b`` column by column (vectorised), preconditioned by ``P``.

        Returns ``(X, iterations, coeffs)``; ``coeffs[j]`` the (alphas, betas) of column j
        when ``lanczos`` (for the quadrature), else None.
        """
        r_, c = b.shape
        X = np.zeros((r_, c))
        bnorm = np.sqrt(_colsum(b, b))
        active = np.flatnonzero(bnorm > 0)
        coeffs = [([], []) for _ in range(c)] if lanczos else None
        if active.size == 0:
            return X, 0, coeffs
        R = b[:, active].copy()
        Xa = np.zeros_like(R)
        Zc = self._prec_apply(st, R, "inv")
        D = Zc.copy()
        rz = _colsum(R, Zc)
        tol = self.rtol * bnorm[active]
        it = 0
        for it in range(1, self.max_iter + 1):
            Q = self._schur(st, D)
            alpha = rz / _colsum(D, Q)
            Xa += alpha * D
            R -= alpha * Q
            Zc = self._prec_apply(st, R, "inv")
            rz_new = _colsum(R, Zc)
            beta = rz_new / rz
            if lanczos:
                for j, col in enumerate(active):
                    coeffs[col][0].append(alpha[j])
                    coeffs[col][1].append(beta[j])
            done = np.sqrt(_colsum(R, R)) <= tol
            if done.any():
                X[:, active[done]] = Xa[:, done]
                keep = ~done
                active, R, Xa, Zc, D = active[keep], R[:, keep], Xa[:, keep], Zc[:, keep], D[:, keep]
                rz_new, beta, tol = rz_new[keep], beta[keep], tol[keep]
                if active.size == 0:
                    break
            D = Zc + beta * D
            rz = rz_new
        else:
            X[:, active] = Xa
        return X, it, coeffs

    @staticmethod
    def _quadrature(alphas: list, betas: list) -> float:
        """``e_1' f(T) e_1``, ``f(x) = log x - (x - 1) + (x - 1)^2 / 2``, for the Lanczos
        tridiagonal ``T`` of a CG run (Gauss quadrature; exact for the polynomial part)."""
        a = np.asarray(alphas)
        b = np.asarray(betas)
        k = a.size
        d = 1.0 / a
        d[1:] += b[: k - 1] / a[: k - 1]
        e = np.sqrt(b[: k - 1]) / a[: k - 1]
        if k == 1:
            lam, w = d, np.ones(1)
        else:
            lam, Q = linalg.eigh_tridiagonal(d, e)
            w = Q[0] ** 2
        x = lam - 1.0
        return float(w @ (np.log(lam) - x + 0.5 * x * x))

    def _solve_blocks(self, st: _State, b: np.ndarray, lanczos: bool):
        """:meth:`_pcg` over blocks of at most ``block_size`` columns."""
        out = np.empty_like(b, dtype=float)
        coeffs, its = [], 0
        size = self.block_size
        for s in range(0, b.shape[1], size):
            X, it, co = self._pcg(st, np.asarray(b[:, s: s + size], dtype=float), lanczos)
            out[:, s: s + size] = X
            its = max(its, it)
            if lanczos:
                coeffs.extend(co)
        return out, its, coeffs

    # ---- full-space helpers ---------------------------------------------------------------

    def _solve_M(self, st: _State, b1: np.ndarray, b2: np.ndarray):
        """``M^{-1} [b1; b2]`` by eliminating the first term (PCG on ``S``)."""
        y1 = self._blocks1(st.Binv, b1)
        rhs = b2 - self._lamR(st, self.a1R.T @ self._lam1(st, y1, False), True)
        x2, its, _ = self._solve_blocks(st, rhs, False)
        x1 = y1 - self._back1(st, x2)
        return x1, x2, its

    def _back1(self, st: _State, x2: np.ndarray) -> np.ndarray:
        """``M_11^{-1} M_12 x2 = B^{-1} L_1' A_1R Lambda_R x2``."""
        return self._blocks1(st.Binv, self._lam1(st, self.a1R @ self._lamR(st, x2, False), True))

    def _a_lam(self, st: _State, x1: np.ndarray, x2: np.ndarray):
        """``A Lambda [x1; x2]`` split by first / rest."""
        l1, l2 = self._lam1(st, x1, False), self._lamR(st, x2, False)
        return self._blocks1(self.a11, l1) + self.a1R @ l2, self.a1R.T @ l1 + self.aRR @ l2

    def _term_view(self, k: int, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
        """Term k's rows of a first/rest split array as (m, q, c)."""
        t = self.blocks[k]
        if k == self.first:
            return x1.reshape(t.m, t.q, -1)
        return x2[t.rest_offset : t.rest_offset + t.size].reshape(t.m, t.q, -1)

    # ---- evaluation -------------------------------------------------------------------------

    def _evaluate(self, theta: np.ndarray, grad: bool):
        theta = np.asarray(theta, dtype=float)
        if self._cache is not None and np.array_equal(self._cache[0], theta) and (self._cache[2] or not grad):
            return self._cache[1]
        if self._cache is not None and np.array_equal(self._cache[0], theta):
            res = self._cache[1]  # value known, only the gradient is missing
        else:
            self._cache = None  # another theta: its first-term-sized arrays go first (memory)
            res = self._value(theta)
        if grad:
            res["grad"] = self._gradient(res)
        self._cache = (theta.copy(), res, grad)
        return res

    def _value(self, theta: np.ndarray) -> dict:
        self.n_evaluations += 1
        st = self._state(theta)
        p = self.p
        # ||E||_F^2 (see below) first: its sparse products' temporaries then do not meet
        # the first-term-sized arrays of the solves (the peak memory of an evaluation).
        e2 = self._frob2(st) + self._diag_block_frob2(st)
        # Near-null directions of A~ = C^{-1} S C^{-T} (the grand mean shared by the
        # eliminated term and each other term: one per other term), exactly.
        mu, Vd = self._deflation(st)
        # Right-hand sides: c = Lambda' Z'[X y] (p+1 columns), then the deflated probes
        # z = C Q w, Q = I - V V'.
        c1, c2 = self._lam1(st, self.r1, True), self._lamR(st, self.rR, True)
        y1 = self._blocks1(st.Binv, c1)
        rhs_xy = c2 - self._lamR(st, self.a1R.T @ self._lam1(st, y1, False), True)
        wq = self.probes.astype(float)
        if mu.size:
            wq -= Vd @ (Vd.T @ wq)
        z = self._prec_apply(st, wq, "half")
        X2, its, coeffs = self._solve_blocks(st, np.hstack([rhs_xy, z]), True)
        V2 = X2[:, : p + 1]
        V1 = self._back1(st, V2)
        np.subtract(y1, V1, out=V1)
        del y1
        # log|A~| = sum log mu + tr(Q E Q) - tr(Q E^2 Q)/2 + tr(Q f(E) Q), E = A~ - I,
        # f(x) = log(1+x) - x + x^2/2 = O(x^3): the first three exactly (tr E = 0 for
        # the block-Jacobi P, ||E||_F^2 from the sparse Schur complement), only the small
        # remainder by Lanczos quadrature on the deflated probes.
        wn = _colsum(wq, wq)
        quad = np.array([self._quadrature(*coeffs[p + 1 + j]) for j in range(self.n_probes)]) * wn
        # tr E: 0 when P holds S's diagonal blocks, else sum_c tr(P_c^{-1} S_cc) - r.
        tr_e = 0.0 if self.preconditioner == "schur" else self._trace_Pinv_S(st, st.S_blocks) - self.r
        exact = float(np.log(mu).sum() + tr_e - (mu - 1.0).sum() - 0.5 * (e2 - ((mu - 1.0) ** 2).sum()))
        logdet = st.logdet_B + st.logdet_P + exact + float(quad.mean())
        logdet_se = float(quad.std(ddof=1) / np.sqrt(self.n_probes)) if self.n_probes > 1 else np.nan
        Gm = c1.T @ V1 + c2.T @ V2
        Cxy = self.xyxy - 0.5 * (Gm + Gm.T)
        chol_A, beta, r2, dev = profiled_over_beta(Cxy, logdet, self.dof, self.reml, self.sum_log_weights)
        return dict(st=st, V1=V1, V2=V2, beta=beta, r2=r2, chol_A=chol_A, deviance=float(dev),
                    logdet=logdet, logdet_se=logdet_se, its=its, X2=X2[:, p + 1 :], wq=wq,
                    mu=mu, Vd=Vd, frob2=e2)

    def _tilde(self, st: _State, v: np.ndarray) -> np.ndarray:
        """``A~ v = C^{-1} S C^{-T} v``."""
        return self._prec_apply(st, self._schur(st, self._prec_apply(st, v, "halfinvT")), "halfinv")

    def _deflation(self, st: _State):
        """The ``n_deflate`` smallest eigenpairs of ``A~`` (ARPACK, fixed start vector)."""
        k = self.n_deflate
        if k == 0:
            return np.zeros(0), np.zeros((self.r, 0))
        if self.r <= max(50, 4 * k):  # tiny: dense
            T = self._tilde(st, np.eye(self.r))
            mu, V = np.linalg.eigh(0.5 * (T + T.T))
            return mu[:k], V[:, :k]
        op = sparse_linalg.LinearOperator((self.r, self.r), matvec=lambda v: self._tilde(st, v.reshape(-1, 1)).ravel(),
                                          matmat=lambda V: self._tilde(st, V), dtype=float)
        # Start: C' 1, the grand-mean direction in A~'s coordinates (deterministic).
        v0 = self._prec_apply(st, np.ones((self.r, 1)), "halfT").ravel()
        mu, V = sparse_linalg.eigsh(op, k=k, which="SA", v0=v0, tol=1e-10, ncv=min(self.r - 1, max(2 * k + 1, 20)))
        order = np.argsort(mu)
        return mu[order], V[:, order]

    def _rest_blockdiag(self, st: _State) -> sparse.csr_matrix:
        """``Lambda_R C^{-T}`` as a sparse block-diagonal (r, r) matrix."""
        blocks = []
        for j, k in enumerate(self.rest):
            Ci = np.linalg.inv(st.P_chol[j])
            blocks.append(np.einsum("ab,mcb->mac", st.lams[k], Ci))
        out = [sparse.bsr_matrix((b, np.arange(b.shape[0]), np.arange(b.shape[0] + 1))) for b in blocks]
        return sparse.block_diag(out, format="csr")

    def _frob2(self, st: _State) -> float:
        """``||A~ - I||_F^2`` exactly, from the sparse Schur complement in column chunks.

        ``A~ - I`` vanishes on the diagonal blocks (block-Jacobi ``P``); off them it is
        ``C^{-1}(Lambda_R' A_RR Lambda_R - K'K)C^{-T}`` with ``K = F' A_1R Lambda_R``,
        ``F F' = G``. Cost: the flops of ``K'K``, sum over first-term levels of (their
        number of rest entries)^2; memory one chunk of it.
        """
        f = self.blocks[self.first]
        bid = self._rest_block_id
        if self._all_scalar:
            # K = diag(sqrt g) A_1R diag(lambda / c), sharing A_1R's index arrays; row
            # chunks of K'K as K'[J] K with K' converted to CSR once (a product of a
            # transposed view with a CSR matrix would convert the whole K per chunk:
            # measured 6 s and ~300 MiB at 10^7 rows).
            a = self.a1R
            scale = st.lam_rest / st.P_chol_flat
            kdata = scale[a.indices]  # in place from here: one nnz-long temporary at a time
            kdata *= a.data
            kdata *= np.repeat(np.sqrt(st.G[:, 0, 0]), np.diff(a.indptr))
            K = sparse.csr_matrix((kdata, a.indices, a.indptr), shape=a.shape)
            Kt = K.T.tocsr()
            R = sparse.csr_matrix(sparse.diags(scale) @ self.aRR @ sparse.diags(scale))
            total = 0.0
            for lo, hi in self._frob_chunks:
                E = (R[lo:hi] - Kt[lo:hi] @ K).tocoo()
                keep = bid[E.row + lo] != bid[E.col]
                total += float(np.square(E.data[keep]).sum())
            return total
        else:
            F = st.Gfac
            Fs = sparse.bsr_matrix((F.transpose(0, 2, 1), np.arange(f.m), np.arange(f.m + 1)), shape=(f.size, f.size))
            right = self._rest_blockdiag(st)
            Kt = sparse.csc_matrix(Fs @ self.a1R @ right)
            R = sparse.csr_matrix(right.T @ self.aRR @ right)
        Kr = Kt.T.tocsr()
        Rc = sparse.csc_matrix(R)
        total = 0.0
        step = max(256, self.r // 64)  # chunks of K'K: memory ~ 1/64 of its nnz
        for s in range(0, self.r, step):
            J = slice(s, min(self.r, s + step))
            E = (Rc[:, J] - Kr @ Kt[:, J]).tocoo()
            keep = bid[E.row] != bid[E.col + s]
            total += float(np.square(E.data[keep]).sum())
        return total

    def _probe_pairs(self, res, control: bool = False):
        """Full-space pairs ``(X, Y)`` whose weighted sum of ``X Y'`` estimates the part
        of ``M^{-1}`` that is not exact, and the weights.

        Probe j: ``x = S^{-1} C Q w_j`` (from the solve), ``y = C^{-T} Q w_j``, weight
        ``1/s``; deflation vector i: ``x = C^{-T} v_i / mu_i``, ``y = C^{-T} v_i``,
        weight 1 (its part of ``S^{-1}`` exactly). Then ``E[x y'] = S^{-1}`` and
        ``X = [-M_11^{-1} M_12 x; x]``, ``Y = [-M_11^{-1} M_12 y; y]``.

        With ``control=True`` the pairs estimate ``S^{-1} - P^{-1}`` instead (``x - y``
        for ``x``, and ``u_i (1/mu_i - 1)``): since ``E[y y'] = P^{-1} - sum u_i u_i'``,
        the caller adds the exact ``P^{-1}`` part (a control variate; the probes then
        only carry ``(A~^{-1} - I)`` on the deflated complement, which is small).
        """
        st = res["st"]
        ud = self._prec_apply(st, res["Vd"], "halfinvT")
        yq = self._prec_apply(st, res["wq"], "halfinvT")
        if control:
            x2 = np.hstack([res["X2"] - yq, ud * (1.0 / res["mu"] - 1.0)])
        else:
            x2 = np.hstack([res["X2"], ud / res["mu"]])
        y2 = np.hstack([yq, ud])
        w = np.concatenate([np.full(self.n_probes, 1.0 / self.n_probes), np.ones(res["mu"].size)])
        return x2, y2, w

    def _lifted_pairs(self, res, control: bool = False):
        """:meth:`_probe_pairs` lifted to the full space, in blocks of ``block_size``
        columns (the first term's rows are the big ones: never all columns at once)."""
        st = res["st"]
        x2, y2, w = self._probe_pairs(res, control)
        for s0 in range(0, w.size, self.block_size):
            c = slice(s0, s0 + self.block_size)
            yield -self._back1(st, x2[:, c]), x2[:, c], -self._back1(st, y2[:, c]), y2[:, c], w[c]

    def _gradient(self, res) -> np.ndarray:
        st, p = res["st"], self.p
        V1, V2 = res["V1"], res["V2"]
        AV1, AV2 = self._a_lam(st, V1, V2)
        # In place: R = Z'[X y] - A Lambda V (the m_1 x (p+1) arrays dominate memory).
        R1 = np.subtract(self.r1, AV1, out=AV1)
        R2 = np.subtract(self.rR, AV2, out=AV2)
        g = np.append(-res["beta"], 1.0)
        A_inv = linalg.cho_solve((res["chol_A"], True), np.eye(p), check_finite=False) if p \
            else np.zeros((0, 0))
        # tr(S^{-1} dS) ~ sum_j w_j X_j' dM Y_j, dM = dL' A L + L' A dL; for entry (a, c)
        # of L_k: sum_l (A L X)_{l,a} Y_{l,c} + (A L Y)_{l,a} X_{l,c}.
        dlogMs = [np.zeros((t.q, t.q)) for t in self.blocks]
        for X1, X2, Y1, Y2, wts in self._lifted_pairs(res, control=True):
            AX1, AX2 = self._a_lam(st, X1, X2)
            AY1, AY2 = self._a_lam(st, Y1, Y2)
            for k in range(len(self.blocks)):
                Xk, Yk = self._term_view(k, X1, X2), self._term_view(k, Y1, Y2)
                AXk, AYk = self._term_view(k, AX1, AX2), self._term_view(k, AY1, AY2)
                dlogMs[k] += np.einsum("mas,mcs,s->ac", AXk, Yk, wts) + np.einsum("mas,mcs,s->ac", AYk, Xk, wts)
        grad = np.empty(self.n_theta)
        # Exact d sum_l log|B_l| for the first term: 2 (B_l^{-1} L_1' A_l)_{c,a}.
        JA = np.einsum("mab,cb,mcd->mad", st.Binv, st.lams[self.first], self.a11).sum(axis=0)
        for k, t in enumerate(self.blocks):
            Rk, Vk = self._term_view(k, R1, R2), self._term_view(k, V1, V2)
            dlogM = dlogMs[k]
            if k == self.first:
                dlogM = dlogM + 2.0 * JA.T
            d_r2 = -2.0 * np.einsum("ma,mc->ac", Rk @ g, Vk @ g)
            gk = dlogM + self.dof / res["r2"] * d_r2
            if self.reml:
                gk -= 2.0 * np.einsum("max,xy,mcy->ac", Rk[:, :, :p], A_inv, Vk[:, :, :p])
            grad[t.theta] = gk[t.rows, t.cols]
        # The control variate's exact part: tr(P^{-1} dS) = sum_c tr(P_c^{-1} dS_cc) (only
        # the diagonal blocks of dS enter), by central differences of S's diagonal blocks
        # (O(nnz), no solve) with P held at theta. For "schur" it is d log|P|.
        theta = st.theta
        for j in range(self.n_theta):
            h = 1e-6 * max(1.0, abs(theta[j]))
            e = np.zeros(self.n_theta)
            e[j] = h
            up = self._trace_Pinv_S(st, self._state(theta + e).S_blocks)
            down = self._trace_Pinv_S(st, self._state(theta - e).S_blocks)
            grad[j] += (up - down) / (2.0 * h)
        return grad

    # ---- the Deviance protocol ----------------------------------------------------------

    def rounding_of_scale(self, x: np.ndarray) -> float:
        """The size of a rounding error in the residual variance (see ``Deviance``)."""
        return np.finfo(float).eps * float(self.cp.combined().xyxy[0][-1, -1]) / self.dof

    def __call__(self, x: np.ndarray) -> float:
        """Deviance estimate at ``x = theta`` (deterministic given the probes)."""
        return self._evaluate(x, False)["deviance"]

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Deviance estimate and its gradient estimate (same probes)."""
        res = self._evaluate(x, True)
        return res["deviance"], res["grad"].copy()

    def average_information(self, x: np.ndarray) -> np.ndarray:
        """Average-information matrix (Gilmour, Thompson & Cullis 1995) of the deviance.

        ``AI_ij = (dof / r2) (w_i' P w_j - (w_i' e)(w_j' e) / r2)`` with working variates
        ``w_i = Z c_i``, ``c_i = dLambda_i u + Lambda dLambda_i' Z'e`` (``u`` the spherical
        modes, ``e`` the conditional residuals) and ``P`` the REML projection; one batched
        PCG solve with one right-hand side per theta entry.
        """
        res = self._evaluate(x, False)
        st, p = res["st"], self.p
        V1, V2 = res["V1"], res["V2"]
        AV1, AV2 = self._a_lam(st, V1, V2)
        g = np.append(-res["beta"], 1.0)
        u1, u2 = V1 @ g, V2 @ g
        e1, e2 = self.r1 @ g - AV1 @ g, self.rR @ g - AV2 @ g  # Z'We
        del AV1, AV2
        nt = self.n_theta
        C1 = np.zeros((self.blocks[self.first].size, nt))
        C2 = np.zeros((self.r, nt))
        for k, t in enumerate(self.blocks):
            L = st.lams[k]
            uk = self._term_view(k, u1[:, None], u2[:, None])[:, :, 0]
            ek = self._term_view(k, e1[:, None], e2[:, None])[:, :, 0]
            for j, a, c in zip(range(t.theta.start, t.theta.stop), t.rows, t.cols):
                blk = ek[:, a, None] * L[:, c]  # L dL' e: (dL' e)_c = e_a
                blk[:, a] += uk[:, c]  # dL u: (dL u)_a = u_c
                if k == self.first:
                    C1[:, j] = blk.ravel()
                else:
                    C2[t.rest_offset: t.rest_offset + t.size, j] = blk.ravel()
        AC1 = self._blocks1(self.a11, C1) + self.a1R @ C2
        AC2 = self.a1R.T @ C1 + self.aRR @ C2
        H1, H2 = self._lam1(st, AC1, True), self._lamR(st, AC2, True)
        Y1, Y2, _ = self._solve_M(st, H1, H2)
        c1, c2 = self._lam1(st, self.r1, True), self._lamR(st, self.rR, True)
        PW = C1.T @ AC1 + C2.T @ AC2 - H1.T @ Y1 - H2.T @ Y2
        XW = self.r1[:, :p].T @ C1 + self.rR[:, :p].T @ C2 - c1[:, :p].T @ Y1 - c2[:, :p].T @ Y2
        if p:
            PW -= XW.T @ linalg.cho_solve((res["chol_A"], True), XW, check_finite=False)
        we = C1.T @ e1 + C2.T @ e2
        H = (PW - np.outer(we, we) / res["r2"]) * self.dof / res["r2"]
        return 0.5 * (H + H.T)

    def solution(self, x: np.ndarray) -> "IterativeSolution":
        """Fixed effects, modes and scale at ``x`` from the converged PCG solve."""
        res = self._evaluate(x, False)
        st, p = res["st"], self.p
        g = np.append(-res["beta"], 1.0)
        u1, u2 = res["V1"] @ g, res["V2"] @ g
        u = []
        for k, t in enumerate(self.blocks):
            u.append(self._term_view(k, u1[:, None], u2[:, None])[:, :, 0].T.copy())  # (q, m)
        a_inv = linalg.cho_solve((res["chol_A"], True), np.eye(p), check_finite=False) if p \
            else np.zeros((0, 0))
        theta = np.asarray(x, dtype=float)[:self.n_theta].copy()
        beta, a_inv = res["beta"].copy(), 0.5 * (a_inv + a_inv.T)
        if self.cp.origin is not None:  # the fixed effects of the columns as given
            beta, a_inv = self.cp.origin.beta(beta), self.cp.origin.cov(a_inv)
        return IterativeSolution(
            theta.copy(), theta, np.ones(1), beta, res["r2"], res["deviance"],
            res["r2"] / self.dof, a_inv, st.lams, u, res["logdet_se"], res["its"],
            self)

    def with_data(self, cp: CrossProducts, reml: bool | None = None, replan: bool = False
                  ) -> "IterativeDeviance":
        """The deviance of other data with the same terms and levels (another response, a
        subset of the fixed effects): this plan (its probes) unless ``replan`` (other rows)."""
        plan = IterativePlan(cp, self.plan.n_probes, self.plan.seed) if replan else self.plan
        return IterativeDeviance(cp, self.reml if reml is None else reml, plan=plan, rtol=self.rtol,
                                 max_iter=self.max_iter)

    def in_basis(self, bases: list, xy_scale: np.ndarray) -> "IterativeDeviance":
        """The deviance of ``Z_k P_k`` and ``[X y] / xy_scale`` (the basis of :mod:`._basis`).

        ``M`` is the same matrix in either basis and the probes are drawn from the same
        seed, so the estimate differs from this one by the basis' constant only (to
        rounding): the whitened evaluations of inference see the same stochastic error.
        """
        cp = self.cp.transformed(bases, xy_scale)
        return IterativeDeviance(cp, self.reml, plan=IterativePlan(cp, self.plan.n_probes, self.plan.seed),
                                 rtol=self.rtol, max_iter=self.max_iter)

    # ---- conditional covariances and prediction errors -----------------------------------------

    def exact_conditional_cov_flops(self) -> float:
        """Flops of the exact conditional covariances: one PCG solve per random effect of
        the Schur complement (``r`` of them; ~10 iterations each) and two products with
        the eliminated term's blocks per solve."""
        f = self.blocks[self.first]
        per_iteration = 4.0 * self.a1R.nnz + 2.0 * self.aRR.nnz + 2.0 * f.size * f.q + 4.0 * self.r
        return self.r * (_CG_ITERATIONS * per_iteration + 4.0 * self.a1R.nnz + 4.0 * f.size * f.q)

    def _conditional_cov(self, theta: np.ndarray) -> tuple[list, list | None]:
        """Conditional covariances ``scale * L_k Sigma_kk,l L_k'`` per term and level (m_k,
        q_k, q_k), and their standard errors (None when exact).

        Exact (to the PCG tolerance) while :meth:`exact_conditional_cov_flops` is at most
        :data:`EXACT_CONDITIONAL_COV_FLOPS`, a stochastic estimate beyond.
        """
        res = self._evaluate(theta, False)
        st = res["st"]
        sigma2 = res["r2"] / self.dof
        if self.exact_conditional_cov_flops() <= EXACT_CONDITIONAL_COV_FLOPS:
            blocks = self._inverse_blocks(st)
            blocks, se = [np.einsum("ab,mbc,dc->mad", L, b, L) for L, b in zip(st.lams, blocks)], None
        else:
            blocks, se = self._inverse_blocks_stochastic(res)
        out = [sigma2 * 0.5 * (b + b.transpose(0, 2, 1)) for b in blocks]
        return out, (None if se is None else [sigma2 * e for e in se])

    def _inverse_blocks(self, st: _State) -> list:
        """The diagonal blocks of ``M^{-1}`` per term and level (m_k, q_k, q_k), exactly.

        ``S^{-1}`` column by column (PCG on unit vectors, in blocks); the rest terms' blocks
        are read from it, the eliminated term's are ``B_l^{-1} + (W S^{-1} W')_ll`` with
        ``W = M_11^{-1} M_12`` (Schur complement: ``M^{-1}_11 = M_11^{-1} + W S^{-1} W'``).
        """
        f = self.blocks[self.first]
        first = st.Binv.copy()
        rest = [np.zeros((self.blocks[k].m, self.blocks[k].q, self.blocks[k].q)) for k in self.rest]
        for s0 in range(0, self.r, self.block_size):
            cols = np.arange(s0, min(self.r, s0 + self.block_size))
            E = np.zeros((self.r, cols.size))
            E[cols, np.arange(cols.size)] = 1.0
            X, _, _ = self._solve_blocks(st, E, False)
            Y = self._back1(st, X).reshape(f.m, f.q, -1)  # W S^{-1} E
            first += np.einsum("mac,mbc->mab", Y, self._back1(st, E).reshape(f.m, f.q, -1))
            del Y
            for j, k in enumerate(self.rest):
                t = self.blocks[k]
                sel = np.flatnonzero((cols >= t.rest_offset) & (cols < t.rest_offset + t.size))
                if not sel.size:
                    continue
                level, b = np.divmod(cols[sel] - t.rest_offset, t.q)
                rows = t.rest_offset + level[:, None] * t.q + np.arange(t.q)
                rest[j][level, :, b] = X[rows, sel[:, None]]
        out = [None] * len(self.blocks)
        out[self.first] = first
        for j, k in enumerate(self.rest):
            out[k] = rest[j]
        return out

    def _inverse_blocks_stochastic(self, res: dict) -> tuple[list, list]:
        """Stochastic diagonal blocks of ``Lambda M^{-1} Lambda'`` per term and level, and
        their standard errors.

        Estimator of the diagonal (Bekas, Kokiopoulou & Saad 2007) with the fixed probes:
        the exact ``B_l^{-1}`` (first term) and ``P^{-1}`` (other terms) parts plus a
        stochastic correction, whose standard error is the spread of the per-probe terms
        over the square root of their number; one pass over the probe pairs (about a
        gradient's cost).
        """
        st = res["st"]
        n = self.n_probes
        acc = [np.zeros((t.m, t.q, t.q)) for t in self.blocks]
        probe_sum = [np.zeros_like(a) for a in acc]
        probe_sq = [np.zeros_like(a) for a in acc]
        start = 0
        for X1, X2, Y1, Y2, wts in self._lifted_pairs(res):
            probe = np.arange(start, start + wts.size) < n  # the probes come first
            start += wts.size
            for k in range(len(self.blocks)):
                Xk, Yk = self._term_view(k, X1, X2), self._term_view(k, Y1, Y2)
                if k != self.first:
                    Xk = Xk - Yk
                L = st.lams[k]
                T = np.einsum("mas,mbs->mabs", np.einsum("ab,mbs->mas", L, Xk), np.einsum("ab,mbs->mas", L, Yk))
                T = 0.5 * (T + T.transpose(0, 2, 1, 3))
                acc[k] += T @ wts
                if probe.any():
                    probe_sum[k] += T[..., probe].sum(axis=-1)
                    probe_sq[k] += np.square(T[..., probe]).sum(axis=-1)
        blocks, se = [], []
        for k, t in enumerate(self.blocks):
            if k == self.first:
                exact = st.Binv
            else:
                Cinv = np.linalg.inv(st.P_chol[self.rest.index(k)])
                exact = np.einsum("mba,mbc->mac", Cinv, Cinv)
            L = st.lams[k]
            blocks.append(np.einsum("ab,mbc,dc->mad", L, exact, L) + acc[k])
            var = np.maximum(probe_sq[k] - probe_sum[k] ** 2 / n, 0.0) / max(n - 1, 1) / n
            se.append(np.sqrt(var))
        return blocks, se

    def _prediction_products(self, theta: np.ndarray, seen: list) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`._deviance.Solution.prediction_products` by PCG: one solve with ``M`` per
        distinct row (its levels and design), in blocks; the shift from the modes."""
        res = self._evaluate(theta, False)
        st, p = res["st"], self.p
        given = [(k, s) for k, s in enumerate(seen) if s is not None]
        n = given[0][1][1].shape[0]
        shift = np.zeros((n, p))
        any_seen = np.zeros(n, dtype=bool)
        for k, (idx, r) in given:
            rows = np.flatnonzero(idx >= 0)
            any_seen[rows] = True
            Vk = self._term_view(k, res["V1"], res["V2"])  # (m, q, p + 1)
            shift[rows] += np.einsum("ia,iap->ip", r[rows], Vk[idx[rows], :, :p])
        if self.cp.origin is not None:  # the modes are of X measured from its origin
            shift = self.cp.origin.x_rows(shift)
        quad = np.zeros(n)
        rows = np.flatnonzero(any_seen)
        if not rows.size:
            return quad, shift
        key = np.column_stack([idx[rows] for _, (idx, _) in given] + [r[rows] for _, (_, r) in given])
        distinct, inverse = np.unique(key, axis=0, return_inverse=True)
        f = self.blocks[self.first]
        values = np.empty(distinct.shape[0])
        col = len(given)
        parts = []
        for j, (k, _) in enumerate(given):
            q = self.blocks[k].q
            parts.append((k, distinct[:, j].astype(np.int64), distinct[:, col:col + q]))
            col += q
        for s0 in range(0, distinct.shape[0], self.block_size):
            sl = slice(s0, min(distinct.shape[0], s0 + self.block_size))
            c = sl.stop - sl.start
            b1, b2 = np.zeros((f.size, c)), np.zeros((self.r, c))
            for k, level, r in parts:
                t = self.blocks[k]
                ok = np.flatnonzero(level[sl] >= 0)
                target, offset = (b1, 0) if k == self.first else (b2, t.rest_offset)
                for a in range(t.q):
                    target[offset + level[sl][ok] * t.q + a, ok] = r[sl][ok, a]
            x1, x2, _ = self._solve_M(st, b1, b2)
            values[sl] = _colsum(b1, x1) + _colsum(b2, x2)
        quad[rows] = values[np.asarray(inverse).reshape(-1)]
        return quad, shift


@dataclass(frozen=True)
class IterativeSolution(Solution):
    """:class:`._deviance.Solution` of the matrix-free deviance.

    Everything of the protocol is exact up to the PCG tolerance except, beyond a cost
    (:data:`EXACT_CONDITIONAL_COV_FLOPS`), the conditional covariances: a stochastic
    estimate then, computed on request (about a gradient's cost), whose standard errors
    :meth:`conditional_cov_se` gives (typically a few percent of the variance with 32
    probes; measured in the tests). ``deviance`` is the fixed-probe estimate.

    Attributes
    ----------
    logdet_se : float
        Standard error of the stochastic part of ``log|M|`` (deviance units).
    cg_iterations : int
        Most PCG iterations any right-hand side needed.
    """

    _u: list = field(repr=False, compare=False, default=None)
    logdet_se: float = np.nan
    cg_iterations: int = 0
    _deviance: IterativeDeviance = field(repr=False, compare=False, default=None)
    _cache: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def u(self) -> list:
        """Spherical modes per term, each (q_k, m_k)."""
        return self._u

    @property
    def conditional_cov_on_request(self) -> bool:
        """True where the conditional covariances are a stochastic estimate (costly)."""
        return self._deviance.exact_conditional_cov_flops() > EXACT_CONDITIONAL_COV_FLOPS

    def _conditional(self) -> tuple[list, list | None]:
        if "condvar" not in self._cache:
            self._cache["condvar"] = self._deviance._conditional_cov(self.theta)
        return self._cache["condvar"]

    def conditional_cov(self) -> list:
        """Conditional covariances (lme4's condVar) per term, (m_k, q_k, q_k): exact while
        cheap, else a stochastic estimate (:meth:`conditional_cov_se`)."""
        return self._conditional()[0]

    def conditional_cov_se(self) -> list | None:
        """Standard errors of a stochastic :meth:`conditional_cov` (None when exact)."""
        return self._conditional()[1]

    def prediction_products(self, seen: list) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`._deviance.Solution.prediction_products`: one PCG solve per distinct row."""
        return self._deviance._prediction_products(self.theta, seen)
