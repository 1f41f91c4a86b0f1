"""Factorising the penalised system ``M = Lambda' Z'WZ Lambda + I``, term by term.

Notation of Bates et al. (2015, JSS 67(1), sec. 3): ``Lambda = blockdiag_k(I_{m_k} (x)
L_k)``, ``G = Z'WZ`` with the blocks of :mod:`._crossprod`. ``M`` is factored by block
elimination of whole terms, largest first (lme4's and MixedModels.jl's order):

* A term whose block of ``M`` is block diagonal (one ``q x q`` block per level) is
  eliminated level by level with the batched kernels (:mod:`._batched`). If the term is
  *nested* in every term still to come (each of its levels meets a single level of each),
  the update ``F' B^{-1} F`` of the remaining blocks falls on level pairs that already
  exist: the rest keeps its sparsity and is eliminated the same way (``_Stage``). A
  single term, and any chain of nested factors (lme4's ``(1 | a/b/c)``), is factored
  without a dense matrix.
* A first term that is crossed with the rest (not nested in some later term) is still
  eliminated level by level, but its update fills the rest, which becomes one dense block
  ``S`` of size ``r = sum m_k q_k`` over the remaining terms (``_Crossing``): the Schur
  complement ``S = L_R'(A_RR - A_R1 D A_1R)L_R + I`` with ``D_l = L_1 B_l^{-1} L_1'``,
  whose fill ``A_R1 D A_1R`` is a fixed sparse linear map of ``D`` built once from the
  data (:func:`_pair_map`).
* Otherwise (nested stages, then crossed terms) the remaining blocks are assembled into
  one dense matrix.
* A term whose block of ``G`` has entries between two of its levels (a *self pair*:
  correlated residuals whose groups span its levels, :mod:`._correlation`) is not block
  diagonal: it is never eliminated level by level and goes into the dense block, the
  other terms first (so that a term the residual groups are nested in is the crossing
  term or a stage).

Besides ``log|M|`` and solves with ``M``, the factor gives the *selected inverse*: the
blocks of ``M^{-1}`` on the pattern of ``G`` (the diagonal blocks of every term and the
level pairs of every pair of terms), computed backwards through the stages (Takahashi,
Fagan & Chen 1973) without forming ``M^{-1}``. The gradient of ``log|M|`` and the
conditional variances of the random effects need exactly those blocks.

Vectors in random-effects space are lists with one ``(q_k, c, m_k)`` array per term
(``c`` columns, level last).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from scipy import linalg

from ._batched import (
    batched_cholesky,
    batched_cholesky_inverse,
    batched_logdet,
    batched_matmul,
    batched_sandwich,
    batched_solve_lower,
    batched_solve_lower_t,
)
from ._crossprod import CrossProducts
from ._rounds import NotPositiveDefiniteRest, RoundsFactor, RoundsPlan
from ._tiled import dense_cholesky, dense_cholesky_inverse

__all__ = ["Plan", "BlockOps", "Prepared", "Factor", "NotPositiveDefinite"]

# Largest dense block that is factored (doubles: 8 r^2 bytes, 0.8 GB at 10^4).
MAX_DENSE = 10_000
# A crossing plan's rest block of at most this many effects is always dense (milliseconds).
_ROUNDS_MIN = 1_000
# Largest number of level pairs the fill of a crossing term may have for the exact solver
# (its symbolic map holds ~40 bytes per pair while it is built: 2 GB).
MAX_FILL_PAIRS = 50_000_000


class NotPositiveDefinite(FloatingPointError):
    """A block of M (or of X'V^{-1}X) is not numerically positive definite."""


def _agg(index: np.ndarray, size: int) -> sp.csr_matrix:
    """Sparse (size, len(index)) matrix summing entries with the same ``index``."""
    n = index.size
    return sp.csr_matrix((np.ones(n), (index, np.arange(n))), shape=(size, n))


def _segment_sum(agg: sp.csr_matrix, values: np.ndarray) -> np.ndarray:
    """``values`` (..., m_t) summed into (..., size) by ``agg``."""
    lead = values.shape[:-1]
    out = agg @ values.reshape(-1, values.shape[-1]).T
    return np.asarray(out).T.reshape(lead + (agg.shape[0],))


def _flat(x: np.ndarray) -> np.ndarray:
    """A term's (q, c, m) block as rows ``(level, effect)`` of an (m q, c) array."""
    return x.transpose(2, 0, 1).reshape(-1, x.shape[1])


def _unflat(x: np.ndarray, q: int) -> np.ndarray:
    return x.reshape(-1, q, x.shape[1]).transpose(1, 2, 0)


# ---- the symbolic plan (from the pattern of the cross-products only) -------------------------


@dataclass(frozen=True)
class _Link:
    """How the levels of an eliminated term ``t`` meet a later term ``u`` (t nested in u)."""

    u: int
    block: int  # index into cp.pairs
    t_first: bool  # the block is (t, u): its entries are (q_t, q_u)
    entry: np.ndarray  # (m_t,): the block's entry for each level of t
    parent: np.ndarray  # (m_t,): the level of u each level of t meets
    agg: sp.csr_matrix  # (m_u, m_t): sums over the levels of t within a level of u


@dataclass(frozen=True)
class _PairUpdate:
    """Where the elimination of ``t`` updates the block of two later terms."""

    block: int
    first: int  # position in the stage's links of the block's k term
    second: int  # ... and of its l term
    entry: np.ndarray  # (m_t,): entry of the block touched by each level of t
    agg: sp.csr_matrix  # (nnz, m_t)


@dataclass(frozen=True)
class _Stage:
    t: int
    links: tuple
    updates: tuple


@dataclass(frozen=True)
class _DenseLayout:
    """The terms of a dense block and where their levels sit in it."""

    terms: tuple  # model indices, in the block's order
    offsets: tuple  # first row of each term
    r: int

    def rows(self, k: int, levels: np.ndarray, q: int) -> np.ndarray:
        """Rows of term ``k``'s ``levels`` (each with its q effects): shape (len(levels), q)."""
        return self.offsets[self.terms.index(k)] + levels[:, None] * q + np.arange(q)


def _paired_too_large(cp: CrossProducts, size: int, max_dense: int) -> str:
    """The refusal of self-paired terms (correlated residuals' groups spanning their levels)
    whose dense block, or its core after sparse elimination, has ``size`` random effects."""
    return (f"the correlated residuals' groups span levels of the grouping factors "
            f"{[cp.terms[k].factor for k in sorted(cp.self_paired)]}, whose random effects are "
            f"then held in one dense block: {size} random effects (more than {max_dense}); the "
            "iterative solver does not take them. Use residual groups nested in those factors, "
            "or fewer levels")


class Plan:
    """How ``M`` is eliminated, from the sparsity pattern of the cross-products.

    Attributes
    ----------
    order : tuple of int
        Terms by decreasing size ``m_k q_k`` (ties in the model's order).
    stages : tuple of _Stage
        Terms eliminated level by level with pattern-preserving updates (each nested in
        every later term).
    crossing : int or None
        A first term eliminated level by level whose update fills the rest.
    dense : _DenseLayout or None
        The remaining terms (the rest block's layout), factored as one dense block, or
        with a crossing term and scalar rest terms possibly by ``rounds``.
    rounds : RoundsPlan or None
        The rest block of a crossing plan factored sparsely (:mod:`._rounds`: rounds of
        independent sets and a dense core), chosen over the dense block by a cost
        estimate (:meth:`_choose_rest`).
    rest_cost : float
        Estimated flops of one factorisation and selected inverse of the rest block.
    """

    def __init__(self, cp: CrossProducts, max_dense: int | None = None, rest: str = "auto",
                 max_fill_pairs: int | None = None) -> None:
        if rest not in ("auto", "dense", "rounds"):
            raise ValueError("rest must be 'auto', 'dense' or 'rounds'")
        max_dense = MAX_DENSE if max_dense is None else max_dense
        self.max_fill_pairs = MAX_FILL_PAIRS if max_fill_pairs is None else max_fill_pairs
        terms = cp.terms
        K = len(terms)
        self.n_terms = K
        self.q = tuple(t.q for t in terms)
        self.m = tuple(t.n_levels for t in terms)
        # terms with entries between two of their levels (correlated residuals whose
        # groups span their levels) are not block diagonal: they go last, into the dense
        # block, behind the terms that can be eliminated level by level or cross
        paired = cp.self_paired
        self.order = tuple(sorted(range(K), key=lambda k: (k in paired, -terms[k].size)))
        self._pair_index = {(b.k, b.l): j for j, b in enumerate(cp.pairs)}
        remaining = list(self.order)
        stages: list[_Stage] = []
        self.crossing: int | None = None
        dense_terms: list[int] = []
        while remaining:
            t, later = remaining[0], remaining[1:]
            if t in paired:
                dense_terms = remaining
                break
            if all(self._nested(cp, t, u) for u in later):
                stages.append(self._stage(cp, t, later))
                remaining = later
                continue
            if not stages:
                self.crossing, dense_terms = t, later
            else:
                dense_terms = remaining
            break
        self.stages = tuple(stages)
        self.dense = None
        self.rounds: RoundsPlan | None = None
        self.rest_cost = 0.0
        if dense_terms:
            sizes = [terms[k].size for k in dense_terms]
            offsets = tuple(int(o) for o in np.cumsum([0] + sizes[:-1]))
            self.dense = _DenseLayout(tuple(dense_terms), offsets, int(sum(sizes)))
            self.rest_cost = float(self.dense.r) ** 3
            if self.crossing is not None and rest != "dense":
                self._choose_rest(cp, max_dense, force=rest == "rounds")
            if self.rounds is None and self.dense.r > max_dense:
                if paired:
                    raise ValueError(_paired_too_large(cp, self.dense.r, max_dense))
                raise ValueError(
                    f"the random-effects terms {[terms[k].factor for k in dense_terms]} need a "
                    f"dense block of {self.dense.r} random effects (more than {max_dense}); "
                    "such crossed designs need a sparse or iterative solver"
                )

    def block_index(self, k: int, l: int) -> int:
        return self._pair_index[(min(k, l), max(k, l))]

    def describe(self) -> str:
        parts = [f"level by level: {[s.t for s in self.stages]}"]
        if self.crossing is not None:
            parts.append(f"crossing term {self.crossing}")
        if self.rounds is not None:
            parts.append(f"sparse rest block of {self.dense.r} over terms {list(self.dense.terms)}: "
                         f"{self.rounds.describe()}")
        elif self.dense is not None:
            parts.append(f"dense block of {self.dense.r} over terms {list(self.dense.terms)}")
        return "; ".join(parts)

    # ---- the rest block of a crossing plan: dense or sparse rounds ---------------------------

    def _crossing_rows(self, cp: CrossProducts) -> tuple[np.ndarray, np.ndarray]:
        """Level of the crossing term and rest row of every entry of ``A_1R`` (scalar rest)."""
        t, layout = self.crossing, self.dense
        levels, rows = [], []
        for u, off in zip(layout.terms, layout.offsets):
            block = cp.pairs[self.block_index(t, u)]
            lt, lu = (block.level_k, block.level_l) if t < u else (block.level_l, block.level_k)
            levels.append(lt)
            rows.append(off + lu)
        return np.concatenate(levels), np.concatenate(rows)

    def fill_pairs(self, cp: CrossProducts) -> int:
        """Level pairs of the crossing term's fill of the rest block (lower, with diagonal)."""
        t, layout = self.crossing, self.dense
        deg = np.zeros(self.m[t], dtype=np.int64)
        for u in layout.terms:
            block = cp.pairs[self.block_index(t, u)]
            deg += np.bincount(block.level_k if t < u else block.level_l, minlength=self.m[t]) * self.q[u]
        return int((deg * (deg + 1) // 2).sum()) * self.q[t] ** 2

    def _choose_rest(self, cp: CrossProducts, max_dense: int, force: bool = False) -> None:
        """Dense rest block or sparse rounds, by a cost estimate (flops; memory by size).

        Dense: ``r^3`` (Cholesky and inverse) and ``8 r^2`` bytes per copy. Rounds
        (scalar rest terms only): the symbolic rounds of :mod:`._rounds` on the pattern of
        ``S`` (``A_RR`` plus the crossing term's fill), costed by :meth:`RoundsPlan.flops`.
        ``force``: rounds whenever the rest terms are scalar (tests).
        """
        layout, r = self.dense, self.dense.r
        if any(self.q[k] != 1 for k in layout.terms) or (r <= _ROUNDS_MIN and not force):
            return
        fill = self.fill_pairs(cp)
        if fill > self.max_fill_pairs:
            if r <= max_dense:
                return
            if cp.self_paired:  # the iterative solver does not take them either
                raise ValueError(_paired_too_large(cp, r, max_dense))
            raise ValueError(
                f"the random-effects terms {[cp.terms[k].factor for k in layout.terms]} are crossed "
                f"with {cp.terms[self.crossing].factor!r} in {fill} level pairs (more than "
                f"{self.max_fill_pairs}): too many for the exact solver; use solver='iterative'")
        # Pattern of S: A_RR plus the fill A_R1 A_1R (every pair of rest rows that share a
        # level of the crossing term), by one sparse product of patterns.
        levels, rows = self._crossing_rows(cp)
        ones = np.ones(levels.size)
        a1r = sp.csr_matrix((ones, (levels, rows)), shape=(self.m[self.crossing], r))
        pattern = sp.csr_matrix(a1r.T @ a1r)
        del a1r, levels, rows, ones
        pr, pc = [], []
        for block in cp.pairs:
            if block.k in layout.terms and block.l in layout.terms:
                pr.append(layout.offsets[layout.terms.index(block.k)] + block.level_k)
                pc.append(layout.offsets[layout.terms.index(block.l)] + block.level_l)
        if pr:
            rr, cc = np.concatenate(pr), np.concatenate(pc)
            pattern = pattern + sp.csr_matrix((np.ones(rr.size), (np.maximum(rr, cc), np.minimum(rr, cc))),
                                              shape=(r, r))
        pattern = sp.tril(pattern + sp.eye(r, format="csr"), format="csr")
        pattern.sum_duplicates()  # canonical: sorted indices, so the keys come out sorted
        keys = np.repeat(np.arange(r, dtype=np.int64) * r, np.diff(pattern.indptr)) + pattern.indices
        del pattern
        rounds = RoundsPlan(keys, r)
        if rounds.core > max_dense:
            if r <= max_dense:
                return
            if cp.self_paired:  # the iterative solver does not take them either
                raise ValueError(_paired_too_large(cp, rounds.core, max_dense))
            raise ValueError(
                f"the random-effects terms {[cp.terms[k].factor for k in layout.terms]} leave a "
                f"dense core of {rounds.core} random effects after sparse elimination (more than "
                f"{max_dense}); use solver='iterative'")
        if force or rounds.flops() < self.rest_cost or r > max_dense:
            self.rounds = rounds
            self.rest_cost = rounds.flops()

    def _nested(self, cp: CrossProducts, t: int, u: int) -> bool:
        block = cp.pairs[self.block_index(t, u)]
        m_t = self.m[t]
        if t < u:
            return block.nested(m_t)
        return block.nested_reverse(m_t)

    def _stage(self, cp: CrossProducts, t: int, later: list[int]) -> _Stage:
        m_t = self.m[t]
        links = []
        for u in later:
            j = self.block_index(t, u)
            block = cp.pairs[j]
            if t < u:
                entry = np.arange(m_t)  # nested: one entry per level of t, in level order
                parent = block.level_l
            else:
                entry = np.empty(m_t, dtype=np.int64)
                entry[block.level_l] = np.arange(block.nnz)
                parent = block.level_k[entry]
            links.append(_Link(u, j, t < u, entry, parent, _agg(parent, self.m[u])))
        updates = []
        for a in range(len(links)):
            for b in range(a + 1, len(links)):
                u, v = links[a].u, links[b].u
                first, second = (a, b) if u < v else (b, a)
                j = self.block_index(u, v)
                block = cp.pairs[j]
                m_l = self.m[block.l]
                keys = block.level_k * m_l + block.level_l
                want = links[first].parent * m_l + links[second].parent
                entry = np.searchsorted(keys, want)
                updates.append(_PairUpdate(j, first, second, entry, _agg(entry, block.nnz)))
        return _Stage(t, tuple(links), tuple(updates))


# ---- data-dependent constants of a plan -----------------------------------------------------


@dataclass(frozen=True)
class _PairMapPattern:
    """The structure of :func:`_pair_map` for one pattern of ``A_21``.

    ``slots[key, a]`` is the index into ``A_21.data`` (CSR order) of the entry of key
    ``key = (level, row)`` and component ``a`` (``-1`` where there is none); the map's data
    are products ``vals[ka] vals[kb]`` scattered to ``dest`` (or in order when ``q1 = 1``).
    """

    slots: np.ndarray
    ka: np.ndarray
    kb: np.ndarray
    rows: np.ndarray
    indptr: np.ndarray
    dest: np.ndarray | None
    shape: tuple
    q1: int

    def values(self, a21_data: np.ndarray) -> sp.csc_matrix:
        """The map for ``A_21`` with these data (same pattern)."""
        vals = np.append(a21_data, 0.0)[self.slots]  # slot -1 reads the appended 0
        if self.q1 == 1:
            data = vals[self.ka, 0] * vals[self.kb, 0]
        else:
            data = np.empty(self.dest.size)
            data[self.dest] = (vals[self.ka][:, :, None] * vals[self.kb][:, None, :]).ravel()
        return sp.csc_matrix((data, self.rows, self.indptr), shape=self.shape)


def _pair_map_pattern(a21: sp.csr_matrix, m1: int, q1: int) -> _PairMapPattern:
    """The structure of :func:`_pair_map` (see there), independent of ``A_21``'s values."""
    r = a21.shape[0]
    coo = a21.tocoo()
    level, comp = np.divmod(coo.col, q1)
    # Group the entries of A_21 by (level, row): keys sorted by level, then row.
    keys, inv = np.unique(level.astype(np.int64) * r + coo.row, return_inverse=True)
    slots = np.full((keys.size, q1), -1, dtype=np.int64)
    slots[inv.ravel(), comp] = np.arange(coo.nnz)
    key_level, key_row = np.divmod(keys, r)
    key_row = key_row.astype(np.int64)
    # Key number s within its level pairs with the s + 1 keys before it and itself.
    count = np.bincount(key_level, minlength=m1)
    first_key = np.repeat(np.cumsum(count) - count, count)
    partners = np.arange(1, keys.size + 1) - first_key
    pair_start = np.cumsum(partners) - partners
    ka = np.repeat(np.arange(keys.size, dtype=np.int64), partners)
    kb = np.arange(ka.size, dtype=np.int64) - np.repeat(pair_start - first_key, partners)
    rows = key_row[ka] * r + key_row[kb]
    n_pairs = np.bincount(key_level, weights=partners, minlength=m1).astype(np.int64)
    dest = None
    if q1 > 1:
        # Column (l, a, b) holds all of level l's pairs in pair order: scatter the
        # (pair, a, b) products there.
        lev = key_level[ka]
        lev_start = np.cumsum(n_pairs) - n_pairs
        local = np.arange(ka.size) - lev_start[lev]
        dest = ((q1 * q1 * lev_start[lev] + local)[:, None]
                + np.arange(q1 * q1) * n_pairs[lev][:, None]).ravel()
        rows_all = np.empty(dest.size, dtype=rows.dtype)
        rows_all[dest] = np.repeat(rows, q1 * q1)
        rows = rows_all
    indptr = np.concatenate([[0], np.cumsum(np.repeat(n_pairs, q1 * q1))])
    return _PairMapPattern(slots, ka, kb, rows, indptr, dest, (r * r, m1 * q1 * q1), q1)


def _pair_map(a21: sp.csr_matrix, m1: int, q1: int) -> sp.csc_matrix:
    """Sparse map from ``vec(D)`` to the lower triangle of ``A_21 D A_12``.

    ``(A_21 D A_12)_{ij} = sum_l sum_{ab} A_21[i, (l,a)] D_l[a,b] A_21[j, (l,b)]``: one
    entry per level ``l`` and pair of rows ``i >= j`` that level touches. Rows of the map
    are ``i * r + j``; columns ``(l, a, b)`` in C order, i.e. ``D`` stored (m1, q1, q1).
    Built column by column (CSC) so no sort is needed.
    """
    return _pair_map_pattern(a21, m1, q1).values(a21.tocoo().data)


class _DenseFill:
    """The fill map of :func:`_pair_map` as products with a dense ``A_21`` (r, m1 q1).

    When most levels of the crossing term meet most rows of the rest (VerbAgg's persons
    and items), ``A_21`` is dense and ``A_21 D A_12`` one matrix product: cheaper than
    gathering the map's entries anew each time ``A_21`` changes (a GLMM's reweighting).
    ``fill @ vec(D)`` and ``fill.T @ vec(Omega)`` act as the sparse map's do.
    """

    def __init__(self, a21: np.ndarray, q1: int) -> None:
        self.a21, self.q1 = a21, q1

    def __matmul__(self, vec_d: np.ndarray) -> np.ndarray:
        A, q1 = self.a21, self.q1
        D = vec_d.reshape(-1, q1, q1)
        if q1 == 1:
            return ((A * D[:, 0, 0]) @ A.T).ravel()
        r = A.shape[0]
        AD = np.einsum("ila,lab->ilb", A.reshape(r, -1, q1), D).reshape(r, -1)
        return (AD @ A.T).ravel()

    @property
    def T(self) -> "_DenseFillTranspose":
        return _DenseFillTranspose(self)


class _DenseFillTranspose:
    def __init__(self, fill: _DenseFill) -> None:
        self.fill = fill

    def __matmul__(self, vec_omega: np.ndarray) -> np.ndarray:
        A, q1 = self.fill.a21, self.fill.q1
        r = A.shape[0]
        P = vec_omega.reshape(r, r) @ A
        return np.einsum("ila,ilb->lab", A.reshape(r, -1, q1), P.reshape(r, -1, q1)).ravel()


# A_21 at least this dense (and at most this large) is handled as a dense array on reweighting.
_DENSE_FILL_DENSITY = 0.25
_DENSE_FILL_SIZE = 4_000_000


class BlockOps:
    """One (single-stratum) set of cross-products with products by ``G = Z'WZ``."""

    def __init__(self, cp: CrossProducts) -> None:
        if cp.n_strata != 1:
            raise ValueError("combine the strata first")
        self.cp = cp
        self.q = tuple(t.q for t in cp.terms)
        self.diag = [d[0] for d in cp.diag]
        self.zxy = [z[0] for z in cp.zxy]
        self.xyxy = cp.xyxy[0]
        # Pair blocks as sparse matrices over (level, effect) rows and columns.
        self.pair_mats = []
        for b in cp.pairs:
            qk, ql = self.q[b.k], self.q[b.l]
            rows = np.broadcast_to(b.level_k[:, None, None] * qk + np.arange(qk)[:, None], b.values.shape[1:])
            cols = np.broadcast_to(b.level_l[:, None, None] * ql + np.arange(ql), b.values.shape[1:])
            self.pair_mats.append(sp.csr_matrix(
                (b.values[0].ravel(), (rows.ravel(), cols.ravel())),
                shape=(cp.terms[b.k].n_levels * qk, cp.terms[b.l].n_levels * ql)))

    def g_times(self, x: list) -> list:
        """``G x`` for a random-effects-space vector (list of (q_k, c, m_k) blocks)."""
        out = [batched_matmul(d, xk) for d, xk in zip(self.diag, x)]
        if self.pair_mats:
            flat = [_flat(xk) for xk in x]
            acc = [np.zeros_like(f) for f in flat]
            for b, mat in zip(self.cp.pairs, self.pair_mats):
                acc[b.k] += mat @ flat[b.l]
                acc[b.l] += mat.T @ flat[b.k]
            out = [o + _unflat(a, q) for o, a, q in zip(out, acc, self.q)]
        return out


class Prepared(BlockOps):
    """A plan with the data-dependent constants of one (combined) set of cross-products.

    Besides the products with ``G``, holds for a crossing first term the dense ``A_RR``
    and the fill map. Built once per fit (once per value of the residual variance ratios
    when there are strata).
    """

    def __init__(self, plan: Plan, cp: CrossProducts) -> None:
        super().__init__(cp)
        self.plan = plan
        self.a21 = self.a22 = self.pairs = None
        self._value_maps = None
        self._shared: dict = {}  # symbolic structures built on demand, shared by reweighted copies
        if plan.crossing is not None:
            self._prepare_crossing()

    def reweighted(self, cp: CrossProducts) -> "Prepared":
        """The same plan and sparsity with the values of ``cp``.

        ``cp`` must have the levels and level pairs of this one's cross-products (the same
        rows under new weights, as :class:`._crossprod.DesignPattern` gives them). The
        sparse structure (pair matrices, ``A_R1`` and its fill map) is taken from here
        and only values are recomputed: what a GLMM's inner iteration needs at every step.
        """
        if self._value_maps is None:
            self._value_maps = self._build_value_maps()
        pair_order, a21_order, fill = self._value_maps
        new = object.__new__(Prepared)
        new.cp, new.plan, new.q = cp, self.plan, self.q
        new.diag = [d[0] for d in cp.diag]
        new.zxy = [z[0] for z in cp.zxy]
        new.xyxy = cp.xyxy[0]
        new.pair_mats = []
        for b, mat, order in zip(cp.pairs, self.pair_mats, pair_order):
            new.pair_mats.append(sp.csr_matrix((b.values[0].ravel()[order], mat.indices, mat.indptr),
                                               shape=mat.shape))
        new.a21 = new.a22 = new.pairs = None
        new._value_maps = self._value_maps
        new._shared = self._shared
        if self.plan.crossing is not None:
            flat = np.concatenate([b.values[0].ravel() for b in cp.pairs])
            a21_data = flat[a21_order]
            new.a21 = sp.csr_matrix((a21_data, self.a21.indices, self.a21.indptr), shape=self.a21.shape)
            if self.plan.rounds is not None:
                # A sparse rest block: A_RR and the fill map live on the rest block's lower
                # pattern (as _prepare_rounds lays them out), not on a dense (r, r) array.
                new.rest_rows, new.rest_cols = self.rest_rows, self.rest_cols
                new.rest_off_diag, new.rest_pair_pos = self.rest_off_diag, self.rest_pair_pos
                new.a22 = self._rest_values(new.diag, cp)
                new.pairs = fill.values(a21_data)
                return new
            new.a22 = new.assemble_dense(new.diag, [b.values[0] for b in cp.pairs], add_identity=False)
            if fill is None:
                new.pairs = _DenseFill(new.a21.toarray(), self.plan.q[self.plan.crossing])
            else:
                new.pairs = fill.values(a21_data)
        return new

    def _build_value_maps(self) -> tuple:
        """Where each stored value of the sparse structures comes from in ``cp.pairs``."""
        cp = self.cp
        sizes = [b.values[0].size for b in cp.pairs]
        offsets = np.cumsum([0] + sizes[:-1])
        pair_order, tagged = [], []
        for b, mat, off in zip(cp.pairs, self.pair_mats, offsets):
            # Rebuild each pair matrix with its entries' positions as values.
            qk, ql = self.q[b.k], self.q[b.l]
            shape = b.values.shape[1:]
            rows = np.broadcast_to(b.level_k[:, None, None] * qk + np.arange(qk)[:, None], shape)
            cols = np.broadcast_to(b.level_l[:, None, None] * ql + np.arange(ql), shape)
            tag = sp.csr_matrix((np.arange(1, b.values[0].size + 1, dtype=float), (rows.ravel(), cols.ravel())),
                                shape=mat.shape)
            if not (np.array_equal(tag.indices, mat.indices) and np.array_equal(tag.indptr, mat.indptr)):
                raise RuntimeError("pair matrix layout changed")
            order = tag.data.astype(np.int64) - 1
            pair_order.append(order)
            tagged.append(sp.csr_matrix((order + off + 1.0, mat.indices, mat.indptr), shape=mat.shape))
        a21_order = fill = None
        if self.plan.crossing is not None:
            t, blocks = self.plan.crossing, []
            for u in self.plan.dense.terms:
                mat = tagged[self.plan.block_index(t, u)]
                blocks.append(mat.T if t < u else mat)
            a21 = sp.vstack(blocks).tocsr()
            a21.sum_duplicates()
            if not (np.array_equal(a21.indices, self.a21.indices) and np.array_equal(a21.indptr, self.a21.indptr)):
                raise RuntimeError("A_R1 layout changed")
            a21_order = a21.data.astype(np.int64) - 1
            size = a21.shape[0] * a21.shape[1]
            if self.plan.rounds is not None:
                # The map's rows renumbered to positions on the rest block's lower pattern.
                fill = _pair_map_pattern(a21, self.plan.m[t], self.plan.q[t])
                keys = self.plan.rounds.keys
                fill = replace(fill, rows=np.searchsorted(keys, fill.rows),
                               shape=(keys.size, fill.shape[1]))
            elif a21.nnz < _DENSE_FILL_DENSITY * size or size > _DENSE_FILL_SIZE:
                fill = _pair_map_pattern(a21, self.plan.m[t], self.plan.q[t])
        return pair_order, a21_order, fill

    def crossing_pairs(self) -> "_CrossingPairs":
        """The pairs of rest rows met by each level of the crossing term (sparse rounds),
        for :meth:`Factor.selected_inverse`'s ``Sigma_1R``; built once per pattern."""
        if "crossing_pairs" not in self._shared:
            self._shared["crossing_pairs"] = _crossing_pairs(self)
        return self._shared["crossing_pairs"]

    def _prepare_crossing(self) -> None:
        plan, dense = self.plan, self.plan.dense
        t = plan.crossing
        # A_R1: rows of the dense block, columns (level, effect) of the crossing term.
        blocks = []
        for u in dense.terms:
            j = plan.block_index(t, u)
            mat = self.pair_mats[j]
            blocks.append(mat.T if t < u else mat)
        self.a21 = sp.vstack(blocks).tocsr()
        self.a21.sum_duplicates()
        if plan.rounds is not None:
            self._prepare_rounds()
            return
        self.a22 = self.assemble_dense(self.diag, [b.values[0] for b in self.cp.pairs], add_identity=False)
        self.pairs = _pair_map(self.a21, plan.m[t], plan.q[t])

    def _prepare_rounds(self) -> None:
        """``A_RR`` and the fill map on the sparse rest block's lower pattern."""
        plan, layout = self.plan, self.plan.dense
        rounds, r = plan.rounds, layout.r
        keys = rounds.keys
        self.rest_rows, self.rest_cols = np.divmod(keys, r)
        self.rest_off_diag = np.flatnonzero(self.rest_rows != self.rest_cols)
        full = _pair_map(self.a21, plan.m[plan.crossing], plan.q[plan.crossing])
        self.pairs = sp.csc_matrix((full.data, np.searchsorted(keys, full.indices), full.indptr),
                                   shape=(keys.size, full.shape[1]))
        del full
        self.rest_pair_pos = {}
        for j, b in enumerate(self.cp.pairs):
            if b.k in layout.terms and b.l in layout.terms:
                i = layout.offsets[layout.terms.index(b.k)] + b.level_k
                l = layout.offsets[layout.terms.index(b.l)] + b.level_l
                self.rest_pair_pos[j] = np.searchsorted(keys, np.maximum(i, l) * r + np.minimum(i, l))
        self.a22 = self._rest_values(self.diag, self.cp)

    def _rest_values(self, diag: list, cp: CrossProducts) -> np.ndarray:
        """``A_RR`` of a sparse (rounds) rest block on its lower pattern, from these values."""
        layout, rounds = self.plan.dense, self.plan.rounds
        a22 = np.zeros(rounds.keys.size)
        a22[rounds.diag_pos] = np.concatenate([diag[k][0, 0] for k in layout.terms])
        for j, pos in self.rest_pair_pos.items():
            a22[pos] = cp.pairs[j].values[0, :, 0, 0]
        return a22

    def assemble_dense(self, diag: list, pair_values: list, add_identity: bool) -> np.ndarray:
        """Dense block over the dense terms from per-term diagonal blocks and pair blocks."""
        plan, layout = self.plan, self.plan.dense
        S = np.zeros((layout.r, layout.r))
        for k in layout.terms:
            q, m = plan.q[k], plan.m[k]
            idx = layout.rows(k, np.arange(m), q)  # (m, q)
            S[idx[:, :, None], idx[:, None, :]] = diag[k].transpose(2, 0, 1)
        for j, b in enumerate(self.cp.pairs):
            if b.k in layout.terms and b.l in layout.terms:
                rk = layout.rows(b.k, b.level_k, plan.q[b.k])
                rl = layout.rows(b.l, b.level_l, plan.q[b.l])
                S[rk[:, :, None], rl[:, None, :]] = pair_values[j]
                S[rl[:, :, None], rk[:, None, :]] = pair_values[j].transpose(0, 2, 1)
        if add_identity:
            S.flat[:: layout.r + 1] += 1.0
        return S


@dataclass(frozen=True)
class _CrossingPairs:
    """The entries of ``A_1R`` grouped by (level, row) and their pairs within a level.

    ``slots[key, a]`` indexes ``A_1R.data`` (CSR) for key ``(level, row)`` and component
    ``a`` (``-1``: none); ``ka > kb`` run over every pair of two keys of one level, ``pos``
    is the position of the pair ``(row[ka], row[kb])`` on the rest block's lower pattern
    and ``diag_pos`` that of ``(row, row)`` for each key; ``entry[j]`` is the key of each
    entry of pair block ``j`` between the crossing term and a rest term.
    """

    slots: np.ndarray
    key_row: np.ndarray
    ka: np.ndarray
    kb: np.ndarray
    pos: np.ndarray
    diag_pos: np.ndarray
    entry: dict


def _crossing_pairs(prep: "Prepared") -> _CrossingPairs:
    plan = prep.plan
    layout, t, q1 = plan.dense, plan.crossing, plan.q[plan.crossing]
    r = layout.r
    coo = prep.a21.tocoo()
    level, comp = np.divmod(coo.col.astype(np.int64), q1)
    keys, inv = np.unique(level * r + coo.row, return_inverse=True)
    slots = np.full((keys.size, q1), -1, dtype=np.int64)
    slots[inv.ravel(), comp] = np.arange(coo.nnz)
    key_level, key_row = np.divmod(keys, r)
    # key number s within its level pairs with the keys before it (rows sorted within a
    # level, so row[ka] > row[kb]: a lower-pattern key)
    count = np.bincount(key_level, minlength=plan.m[t])
    first_key = np.repeat(np.cumsum(count) - count, count)
    partners = np.arange(keys.size) - first_key
    pair_start = np.cumsum(partners) - partners
    idx = np.int32 if keys.size < 2**31 - 1 else np.int64
    ka = np.repeat(np.arange(keys.size, dtype=idx), partners)
    kb = (np.arange(ka.size, dtype=np.int64) - np.repeat(pair_start - first_key, partners)).astype(idx)
    pattern = plan.rounds.keys
    pos_type = np.int32 if pattern.size < 2**31 - 1 else np.int64
    pos = np.searchsorted(pattern, key_row[ka] * r + key_row[kb]).astype(pos_type)
    diag_pos = np.searchsorted(pattern, key_row * (r + 1)).astype(pos_type)
    entry = {}
    for u, o in zip(layout.terms, layout.offsets):
        j = plan.block_index(t, u)
        b = prep.cp.pairs[j]
        lt, lu = (b.level_k, b.level_l) if t < u else (b.level_l, b.level_k)
        entry[j] = np.searchsorted(keys, lt.astype(np.int64) * r + o + lu)
    return _CrossingPairs(slots, key_row, ka, kb, pos, diag_pos, entry)


# ---- the numeric factor at one theta --------------------------------------------------------


def _lam_left(lam: np.ndarray, x: np.ndarray, transpose: bool) -> np.ndarray:
    """``L' x`` (transpose) or ``L x`` for a (q, c, m) block."""
    L = lam.T if transpose else lam
    if L.shape[0] == 1:
        return L[0, 0] * x
    return np.einsum("ab,bcm->acm", L, x)


class Factor:
    """``M`` factored at one ``theta`` (see the module docstring).

    Parameters
    ----------
    prep : Prepared
    lams : list of (q_k, q_k) arrays
        ``L_k`` of every term (model order).

    Raises
    ------
    NotPositiveDefinite
        When a block is not numerically positive definite (only with non-finite or
        absurd parameters: ``M`` is ``I`` plus a positive semi-definite matrix).
    """

    def __init__(self, prep: Prepared, lams: list) -> None:
        self.prep, self.lams = prep, lams
        plan = prep.plan
        self.logdet = 0.0
        # M-space blocks the stages and the assembled dense block read (copies: updated).
        needed_terms = {s.t for s in plan.stages} | {lk.u for s in plan.stages for lk in s.links}
        if plan.dense is not None and plan.crossing is None:
            needed_terms |= set(plan.dense.terms)
        self.Md = [None] * plan.n_terms
        for k in needed_terms:
            B = batched_sandwich(lams[k], prep.diag[k])
            B[np.arange(plan.q[k]), np.arange(plan.q[k])] += 1.0
            self.Md[k] = B
        self.Mp = [None] * len(prep.cp.pairs)
        needed_blocks = {lk.block for s in plan.stages for lk in s.links}
        if plan.dense is not None and plan.crossing is None:
            needed_blocks |= {j for j, b in enumerate(prep.cp.pairs)
                              if b.k in plan.dense.terms and b.l in plan.dense.terms}
        for j in needed_blocks:
            b = prep.cp.pairs[j]
            self.Mp[j] = np.einsum("ba,ebc,cd->ead", lams[b.k], b.values[0], lams[b.l])
        # Stages: eliminate level by level; W_u = C^{-1} F_u per link.
        self.chol, self.W = {}, {}
        for stage in plan.stages:
            self._eliminate(stage)
        self.cross = None
        self.rest_factor: RoundsFactor | None = None
        self._rest_inverse: np.ndarray | None = None
        if plan.crossing is not None:
            self._eliminate_crossing()
        self.chol_S = None
        if plan.dense is not None and plan.rounds is None:
            if plan.crossing is None:
                S = prep.assemble_dense(self.Md, self.Mp, add_identity=False)
            else:
                S = self.cross["S"]
            # S = U'U, U the Fortran view of the lower factor L (LAPACK, or tiles on the fit's threads)
            chol_S, info = dense_cholesky(S)
            if info:
                raise NotPositiveDefinite("the dense block of the penalised system is not positive definite")
            self.chol_S = chol_S
            self.logdet += 2.0 * float(np.log(np.diag(chol_S)).sum())

    # ---- elimination ----------------------------------------------------------------------

    def _eliminate(self, stage: _Stage) -> None:
        t = stage.t
        C = batched_cholesky(self.Md[t])
        logdet = batched_logdet(C)
        if not np.isfinite(logdet):
            raise NotPositiveDefinite("a block of the penalised system is not positive definite")
        self.logdet += logdet
        self.chol[t] = C
        Ws = []
        for link in stage.links:
            F = self.Mp[link.block][link.entry]  # (m_t, ., .)
            F = F.transpose(1, 2, 0) if link.t_first else F.transpose(2, 1, 0)  # (q_t, q_u, m_t)
            W = batched_solve_lower(C, F)
            Ws.append(W)
            self.Md[link.u] = self.Md[link.u] - _segment_sum(link.agg, np.einsum("aul,avl->uvl", W, W))
        for up in stage.updates:
            b = self.prep.cp.pairs[up.block]
            prod = np.einsum("aul,avl->luv", Ws[up.first], Ws[up.second])  # (m_t, q_k, q_l)
            upd = up.agg @ prod.reshape(prod.shape[0], -1)
            self.Mp[up.block] = self.Mp[up.block] - np.asarray(upd).reshape(b.nnz, *prod.shape[1:])
        self.W[t] = Ws

    def _eliminate_crossing(self) -> None:
        prep, plan = self.prep, self.prep.plan
        t = plan.crossing
        L1 = self.lams[t]
        q1 = plan.q[t]
        B = batched_sandwich(L1, prep.diag[t])
        B[np.arange(q1), np.arange(q1)] += 1.0
        C = batched_cholesky(B)
        logdet = batched_logdet(C)
        if not np.isfinite(logdet):
            raise NotPositiveDefinite("a block of the penalised system is not positive definite")
        self.logdet += logdet
        Binv = batched_cholesky_inverse(C)
        J = np.einsum("abm,cb->acm", Binv, L1)  # B^{-1} L_1'
        D = np.einsum("ab,bcm->acm", L1, J)  # L_1 B^{-1} L_1'
        r = plan.dense.r
        self.chol[t] = C
        if plan.rounds is not None:
            T = prep.pairs @ D.transpose(2, 0, 1).ravel()  # A_R1 D A_1R on the lower pattern
            scale = self._rest_scale()
            S = (prep.a22 - T) * scale[prep.rest_rows] * scale[prep.rest_cols]
            S[plan.rounds.diag_pos] += 1.0
            try:
                self.rest_factor = RoundsFactor(plan.rounds, S)
            except NotPositiveDefiniteRest as err:
                raise NotPositiveDefinite(str(err)) from None
            self.logdet += self.rest_factor.logdet
            self.cross = {"Binv": Binv, "J": J, "D": D, "T": T, "S": None}
            return
        T = (prep.pairs @ D.transpose(2, 0, 1).ravel()).reshape(r, r)  # lower triangle of A_R1 D A_1R
        S = self._sandwich_rest(prep.a22 - T, transpose=True)
        S.flat[:: r + 1] += 1.0
        self.cross = {"Binv": Binv, "J": J, "D": D, "T": T, "S": S}

    # ---- helpers on the dense block ------------------------------------------------------

    def _rest_scale(self) -> np.ndarray | None:
        """Diagonal of ``L_R`` when every dense term is scalar, else None."""
        plan = self.prep.plan
        if any(plan.q[k] != 1 for k in plan.dense.terms):
            return None
        return np.repeat([self.lams[k][0, 0] for k in plan.dense.terms],
                         [plan.m[k] for k in plan.dense.terms])

    def lam_rows(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        """``L_R' X`` (transpose) or ``L_R X`` for ``X`` with one row per dense row."""
        plan, layout = self.prep.plan, self.prep.plan.dense
        out = np.empty_like(X)
        for k, off in zip(layout.terms, layout.offsets):
            q, m = plan.q[k], plan.m[k]
            rows = slice(off, off + m * q)
            if q == 1:
                out[rows] = self.lams[k][0, 0] * X[rows]
            else:
                L = self.lams[k].T if transpose else self.lams[k]
                blk = X[rows].reshape(m, q, -1)
                out[rows] = np.einsum("ab,mb...->ma...", L, blk).reshape(X[rows].shape)
        return out

    def _sandwich_rest(self, W: np.ndarray, transpose: bool) -> np.ndarray:
        """``L_R' W L_R`` (transpose) or ``L_R W L_R'`` for symmetric ``W`` (r, r).

        Only the lower triangle of ``W`` is read, and with scalar terms only (``W`` then
        scaled in place) only that of the result is valid: all a lower Cholesky
        factorisation reads.
        """
        scale = self._rest_scale()
        if scale is not None:
            W *= scale[:, None]
            W *= scale
            return W
        W = np.tril(W) + np.tril(W, -1).T
        return self.lam_rows(self.lam_rows(W, transpose).T, transpose)

    def _dense_rows(self, x: list) -> np.ndarray:
        layout = self.prep.plan.dense
        return np.concatenate([_flat(x[k]) for k in layout.terms], axis=0)

    def _from_dense_rows(self, flat: np.ndarray, out: list) -> None:
        plan, layout = self.prep.plan, self.prep.plan.dense
        for k, off in zip(layout.terms, layout.offsets):
            out[k] = _unflat(flat[off:off + plan.m[k] * plan.q[k]], plan.q[k])

    def _dense_solve(self, b: np.ndarray, trans: str) -> np.ndarray:
        """``U'^{-1} b`` (trans="T") or ``U^{-1} b`` (trans="N") with ``S = U'U``.

        With sparse rounds the same with their factor ``S = L L'`` (``U = L'``).
        """
        if self.rest_factor is not None:
            return self.rest_factor.forward(b) if trans == "T" else self.rest_factor.backward(b)
        return linalg.solve_triangular(self.chol_S, b, trans=trans, check_finite=False)

    # ---- solves ---------------------------------------------------------------------------

    def forward(self, rhs: list, overwrite: bool = False) -> list:
        """``w = L^{-1} rhs`` with ``M = L L'`` the block factor; ``G = w'w`` block-wise.

        Returns a list with, per term, the transformed block; for the dense terms (and the
        crossing term) see :meth:`backward`'s expectations. ``sum_k <w_k, w_k>`` over all
        blocks equals ``rhs' M^{-1} rhs``. With ``overwrite`` the blocks of ``rhs`` (the
        caller's temporaries) may be overwritten: no copy of them is made.
        """
        plan = self.prep.plan
        w = [None if b is None else (b if overwrite else b.copy()) for b in rhs]
        for stage in plan.stages:
            t = stage.t
            w[t] = batched_solve_lower(self.chol[t], w[t], overwrite=True)
            for link, W in zip(stage.links, self.W[t]):
                w[link.u] = w[link.u] - _segment_sum(link.agg, np.einsum("aul,acl->ucl", W, w[t]))
        if plan.crossing is not None:
            t = plan.crossing
            w[t] = batched_solve_lower(self.chol[t], w[t], overwrite=True)
            # rest -= L_R' A_R1 L_1 C^{-T} w_t = F' B^{-1} rhs_t
            y = _lam_left(self.lams[t], batched_solve_lower_t(self.chol[t], w[t]), False)
            rest = self._dense_rows(w) - self.lam_rows(self.prep.a21 @ _flat(y), True)
            self._from_dense_rows(self._dense_solve(rest, "T"), w)
        elif plan.dense is not None:
            self._from_dense_rows(self._dense_solve(self._dense_rows(w), "T"), w)
        return w

    def backward(self, w: list, overwrite: bool = False) -> list:
        """``x = L'^{-1} w``: with :meth:`forward`, ``x = M^{-1} rhs``. With ``overwrite`` the
        blocks of ``w`` may be overwritten (they become the result's)."""
        plan = self.prep.plan
        x = [None] * plan.n_terms
        if plan.dense is not None:
            self._from_dense_rows(self._dense_solve(self._dense_rows(w), "N"), x)
        if plan.crossing is not None:
            t = plan.crossing
            # x_t = C^{-T} w_t - B^{-1} L_1' A_1R L_R x_R
            z = _unflat(self.prep.a21.T @ self.lam_rows(self._dense_rows(x), False), plan.q[t])
            x[t] = batched_solve_lower_t(self.chol[t], w[t]) - batched_matmul(self.cross["J"], z)
        for stage in reversed(plan.stages):
            t = stage.t
            acc = w[t] if overwrite else w[t].copy()
            for link, W in zip(stage.links, self.W[t]):
                acc -= np.einsum("aul,ucl->acl", W, x[link.u][:, :, link.parent])
            x[t] = batched_solve_lower_t(self.chol[t], acc, overwrite=True)
        return x

    def solve(self, rhs: list) -> list:
        return self.backward(self.forward(rhs))

    # ---- selected inverse -----------------------------------------------------------------

    def dense_inverse(self, lower: bool = False) -> np.ndarray:
        """``S^{-1}`` of the dense block: the full symmetric matrix, or (``lower``) an array
        whose lower triangle holds it and whose upper triangle is not to be read (filling
        it in is a transposed pass over the matrix, a third of the inverse's time)."""
        Sinv, info = dense_cholesky_inverse(self.chol_S)
        if info:
            raise NotPositiveDefinite("potri failed on the dense block")
        # potri fills the upper triangle of the Fortran factor, i.e. the lower in C order.
        Sinv = Sinv.T
        if lower:
            return Sinv
        return np.tril(Sinv) + np.tril(Sinv, -1).T

    def selected_inverse(self, with_crossing_pairs: bool = True):
        """Blocks of ``M^{-1}`` on the pattern of ``G``.

        Returns
        -------
        diag : list of (q_k, q_k, m_k) arrays
        pairs : list of (nnz, q_k, q_l) arrays (None for blocks between the crossing term
            and the dense terms unless ``with_crossing_pairs``)
        """
        prep, plan = self.prep, self.prep.plan
        cp = prep.cp
        diag = [None] * plan.n_terms
        pairs = [None] * len(cp.pairs)
        if plan.rounds is not None:
            self._rounds_inverse(diag, pairs, with_crossing_pairs)
        elif plan.dense is not None:
            Sinv = self.dense_inverse()
            layout = plan.dense
            for k in layout.terms:
                idx = layout.rows(k, np.arange(plan.m[k]), plan.q[k])
                diag[k] = Sinv[idx[:, :, None], idx[:, None, :]].transpose(1, 2, 0)
            for j, b in enumerate(cp.pairs):
                if b.k in layout.terms and b.l in layout.terms:
                    rk = layout.rows(b.k, b.level_k, plan.q[b.k])
                    rl = layout.rows(b.l, b.level_l, plan.q[b.l])
                    pairs[j] = Sinv[rk[:, :, None], rl[:, None, :]]
            if plan.crossing is not None:
                self._crossing_inverse(Sinv, diag, pairs, with_crossing_pairs)
        for stage in reversed(plan.stages):
            self._stage_inverse(stage, diag, pairs)
        for j, b in enumerate(cp.pairs):
            if not b.nnz:  # an empty block (a self pair of a term without one)
                pairs[j] = np.zeros((0, plan.q[b.k], plan.q[b.l]))
        return diag, pairs

    def _stage_inverse(self, stage: _Stage, diag: list, pairs: list) -> None:
        """Takahashi's recursion for one level-by-level stage (nested in all later terms)."""
        t = stage.t
        C = self.chol[t]
        # Y_u = B^{-1} F_u = C^{-T} W_u
        Y = [batched_solve_lower_t(C, W) for W in self.W[t]]
        n = len(stage.links)
        # Sigma_{vu} at (parent_v(l), parent_u(l)) for all link pairs
        sig = [[None] * n for _ in range(n)]
        for a, link in enumerate(stage.links):
            sig[a][a] = diag[link.u][:, :, link.parent]
        for up in stage.updates:
            vals = pairs[up.block][up.entry]  # (m_t, q_k, q_l)
            sig[up.first][up.second] = vals.transpose(1, 2, 0)
            sig[up.second][up.first] = vals.transpose(2, 1, 0)
        cross = []
        for a in range(n):  # Sigma_{t,u_a}[l] = - sum_v Y_v[l] Sigma_{v,u_a}
            acc = -np.einsum("tvl,vul->tul", Y[0], sig[0][a])
            for v in range(1, n):
                acc -= np.einsum("tvl,vul->tul", Y[v], sig[v][a])
            cross.append(acc)
        Sd = batched_cholesky_inverse(C)
        for a in range(n):
            Sd = Sd - np.einsum("tul,sul->tsl", cross[a], Y[a])
        diag[t] = 0.5 * (Sd + Sd.transpose(1, 0, 2))
        for a, link in enumerate(stage.links):
            # the block (t, u) has exactly the entries link.entry, one per level of t
            vals = cross[a].transpose(2, 0, 1) if link.t_first else cross[a].transpose(2, 1, 0)
            out = np.empty_like(vals)
            out[link.entry] = vals
            pairs[link.block] = out

    def _crossing_inverse(self, Sinv: np.ndarray, diag: list, pairs: list, with_pairs: bool) -> None:
        """Blocks of ``M^{-1}`` involving the crossing term (first term, dense rest).

        ``Sigma_11 = B^{-1} + J K J'`` per level with ``K_l = (A_1R Omega A_R1)_ll``,
        ``Omega = L_R S^{-1} L_R'``; ``Sigma_1R = -J A_1R L_R S^{-1}`` on the pattern.
        """
        plan, prep = self.prep.plan, self.prep
        t, q1 = plan.crossing, plan.q[plan.crossing]
        K = self.crossing_K(Sinv)
        J = self.cross["J"]
        diag[t] = self.cross["Binv"] + np.einsum("abm,bcm,dcm->adm", J, K, J)
        if not with_pairs:
            return
        # Sigma_1R = -J (A_1R L_R S^{-1}) restricted to the pattern of A_1R.
        # (A_1R L_R S^{-1}) as a dense (m1 q1, r) array, read on the pattern of A_1R: only
        # fits with strata need these blocks.
        AP = prep.a21.T @ self.lam_rows(Sinv, False)
        layout = plan.dense
        for u in layout.terms:
            j = plan.block_index(t, u)
            b = prep.cp.pairs[j]
            qu = plan.q[u]
            if t < u:
                lt, lu = b.level_k, b.level_l
            else:
                lt, lu = b.level_l, b.level_k
            rows_t = lt[:, None] * q1 + np.arange(q1)  # (nnz, q1)
            cols_u = layout.rows(u, lu, qu)  # (nnz, qu)
            Yb = AP[rows_t[:, :, None], cols_u[:, None, :]]  # (nnz, q1, qu)
            vals = -np.einsum("abe,ebu->eau", J[:, :, lt], Yb)
            pairs[j] = vals if t < u else vals.transpose(0, 2, 1)

    def rest_inverse(self, lower: bool = False) -> np.ndarray:
        """``S^{-1}`` of the rest block: dense (``lower`` as :meth:`dense_inverse`), or on
        the lower pattern with sparse rounds."""
        if self.rest_factor is not None:
            if self._rest_inverse is None:  # the gradient and the conditional variances share it
                self._rest_inverse = self.rest_factor.selected_inverse()
            return self._rest_inverse
        return self.dense_inverse(lower)

    def _rounds_inverse(self, diag: list, pairs: list, with_pairs: bool) -> None:
        """:meth:`selected_inverse` for a crossing term and a sparse (rounds) rest block."""
        prep, plan = self.prep, self.prep.plan
        layout, t, q1 = plan.dense, plan.crossing, plan.q[plan.crossing]
        sig = self.rest_inverse()
        on_diag = sig[plan.rounds.diag_pos]
        for k, off in zip(layout.terms, layout.offsets):
            diag[k] = on_diag[off:off + plan.m[k]].reshape(1, 1, -1).copy()
        for j, pos in prep.rest_pair_pos.items():
            pairs[j] = sig[pos].reshape(-1, 1, 1)
        K = self.crossing_K(sig)
        J = self.cross["J"]
        diag[t] = self.cross["Binv"] + np.einsum("abm,bcm,dcm->adm", J, K, J)
        if not with_pairs:
            return
        # Sigma_1R = -J Y on the pattern of A_1R, Y = A_1R L_R S^{-1} (the GLMM gradient's
        # leverages and fits with strata need it). Y at (level l, row j) sums over the rows
        # k that l meets, and every such (k, j) is a fill pair of S: Y is one pass over
        # the pairs of the fill map (as many as the fill's own products), never a sparse
        # product A_1R S^{-1} whose fill is rows x levels.
        cpairs = prep.crossing_pairs()
        scale = self._rest_scale()
        vals = np.append(prep.a21.data, 0.0)[cpairs.slots] * scale[cpairs.key_row][:, None]  # (keys, q1)
        s = sig[cpairs.pos]
        n_keys = cpairs.key_row.size
        Y = vals * sig[cpairs.diag_pos][:, None]  # each key with itself
        ka, kb = cpairs.ka, cpairs.kb
        for a in range(q1):
            Y[:, a] += np.bincount(kb, weights=vals[ka, a] * s, minlength=n_keys)
            Y[:, a] += np.bincount(ka, weights=vals[kb, a] * s, minlength=n_keys)
        for u in layout.terms:
            j = plan.block_index(t, u)
            lt = prep.cp.pairs[j].level_k if t < u else prep.cp.pairs[j].level_l
            Yb = Y[cpairs.entry[j]]  # (nnz, q1)
            vals_j = -np.einsum("abe,eb->ea", J[:, :, lt], Yb)[:, :, None]
            pairs[j] = vals_j if t < u else vals_j.transpose(0, 2, 1)

    def rounds_rest_gradient(self, sig: np.ndarray) -> list:
        """``d log|M|`` of the scalar rest terms with sparse rounds (see the dense formula in
        :meth:`._deviance.Deviance._logdet_gradient_crossing`): ``2 sum_{i in k} sum_j
        Sigma_ij W_ij lambda_j`` with ``W = A_RR - A_R1 D A_1R`` on the lower pattern."""
        prep, plan = self.prep, self.prep.plan
        layout, r = plan.dense, plan.dense.r
        scale = self._rest_scale()
        P = sig * (prep.a22 - self.cross["T"])
        rows, cols, off = prep.rest_rows, prep.rest_cols, prep.rest_off_diag
        rest = np.bincount(rows, weights=P * scale[cols], minlength=r)
        rest += np.bincount(cols[off], weights=P[off] * scale[rows[off]], minlength=r)
        return [2.0 * rest[o:o + plan.m[k]].sum().reshape(1, 1) for k, o in zip(layout.terms, layout.offsets)]

    def crossing_K(self, Sinv: np.ndarray) -> np.ndarray:
        """``K_l = (A_1R Omega A_R1)_ll``, ``Omega = L_R S^{-1} L_R'`` (q1, q1, m1).

        ``Sinv`` as :meth:`rest_inverse` gives it (dense, or on the sparse lower pattern);
        with scalar dense terms only its lower triangle is read.
        """
        plan, prep = self.prep.plan, self.prep
        q1, r = plan.q[plan.crossing], plan.dense.r
        if plan.rounds is not None:
            scale = self._rest_scale()
            omega = Sinv * scale[prep.rest_rows] * scale[prep.rest_cols]
            omega[plan.rounds.diag_pos] *= 0.5  # the map holds pairs i >= j only
            K = (prep.pairs.T @ omega).reshape(-1, q1, q1)
            return (K + K.transpose(0, 2, 1)).transpose(1, 2, 0)
        scale = self._rest_scale()
        if scale is not None:  # scalar terms: Omega = S^{-1} o s s', from its lower triangle
            Omega = np.tril(Sinv)
            Omega *= scale[:, None]
            Omega *= scale
        else:
            Omega = np.tril(self.lam_rows(self.lam_rows(Sinv, False).T, False))
        # The map holds pairs i >= j only (the dense fill reads the zero upper triangle):
        # halve the diagonal, add the (a, b) transpose.
        Omega.flat[:: r + 1] *= 0.5
        K = (prep.pairs.T @ Omega.ravel()).reshape(-1, q1, q1)
        return (K + K.transpose(0, 2, 1)).transpose(1, 2, 0)
