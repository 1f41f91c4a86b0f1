"""A sparse symmetric positive definite block factored by rounds of independent sets.

The rest block ``S`` of a crossing plan (:mod:`._factor`: the Schur complement of the
other terms after the largest is eliminated level by level) is sparse with a dense core:
with Zipf-like items, a fill-reducing ordering leaves most items with a few dozen factor
entries and only the popular ones dense (``benchmarks/crossed_notes.md``, sec. 4). This
module factors exactly that shape without a compiled sparse Cholesky:

1. *Rounds of independent sets.* In the graph of ``S``, take the nodes of low degree that
   are local minima of (degree, index) among their neighbours: an independent set ``I``,
   so ``S_II = D`` is diagonal and the round is ``S <- S_JJ - W D^{-1} W'`` (``W = S_JI``),
   whose fill lands on level pairs enumerated once. This is the multiple-minimum-degree
   idea (Liu 1985, ACM TOMS 11) restricted to independent sets, so each round is a few
   vectorised gathers and one ``bincount``, never a loop over pivots.
2. *Dense core.* What is left is factored by LAPACK (``dpotrf``).

The rounds depend only on the pattern (:class:`RoundsPlan`, once per fit); every numeric
step moves values between fixed positions (:class:`RoundsFactor`, once per ``theta``).
The factor gives ``log|S|``, solves with ``L`` and ``L'`` (``S = L L'``) and the
*selected inverse*: ``S^{-1}`` on the pattern of ``S``, by Takahashi's recursion
(Takahashi, Fagan & Chin 1973; Erisman & Tinney 1975) backwards through the rounds: with
``Sigma = S_next^{-1}``, ``Sigma_JI = -Sigma W D^{-1}`` needs ``Sigma`` only on the pairs
of neighbours of each eliminated node, which is where that node's fill went, and
``Sigma_ii = (1 + w_i' Sigma w_i) / D_i`` (``w_i = W_i / sqrt(D_i)``).

Patterns are lower triangles (diagonal included) stored as sorted keys
``row * n + col``; values are vectors aligned with the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import linalg

from ._tiled import dense_cholesky, dense_cholesky_inverse

__all__ = ["RoundsPlan", "RoundsFactor", "lower_pattern_keys"]

# Rounds stop when fewer than this fraction of the nodes left would go (each round has a
# fixed cost), or when at most _DENSE_OK nodes remain (their dense factor costs
# milliseconds); only nodes of degree at most _CAP_FRACTION of the nodes left are taken
# (a high-degree node's fill is dense anyway). Measured on the data (notes, sec. 4).
_MIN_FRACTION = 0.05
_DENSE_OK = 1500
_CAP_FRACTION = 0.25
# A round whose pattern has at most this many possible keys (n^2) finds positions in a
# table (4 bytes a key: 128 MiB) instead of by binary search.
_TABLE_ENTRIES = 1 << 25


def _index_type(n: int):
    return np.int32 if n < 2**31 - 1 else np.int64


def lower_pattern_keys(rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique keys ``max * n + min`` of symmetric entries, the diagonal added."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    keys = np.concatenate([np.maximum(rows, cols) * n + np.minimum(rows, cols),
                           np.arange(n, dtype=np.int64) * (n + 1)])
    return _sorted_unique(keys)


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``np.unique`` of int64 keys by an in-place sort (several times faster here)."""
    keys.sort()
    if keys.size == 0:
        return keys
    mask = np.empty(keys.size, dtype=bool)
    mask[0] = True
    np.not_equal(keys[1:], keys[:-1], out=mask[1:])
    return keys[mask]


@dataclass(frozen=True)
class _Round:
    """One round's fixed positions (``before``: the pattern it starts from)."""

    n_before: int
    nnz_before: int
    elim_nodes: np.ndarray  # original rows of the eliminated nodes (for the solves' layout)
    elim: np.ndarray  # positions (before) of the eliminated nodes
    keep: np.ndarray  # positions (before) of the kept nodes
    diag_elim: np.ndarray  # data positions (before) of (i, i), i eliminated
    kk_src: np.ndarray  # data positions (before) of entries between kept nodes
    kk_dst: np.ndarray  # ... and (after)
    w_pos: np.ndarray  # data positions (before) of W = S_JI, column by column
    w_rows: np.ndarray  # kept-node index (after) of each W entry
    w_col: np.ndarray  # eliminated column of each W entry
    w_indptr: np.ndarray
    diag_dst: np.ndarray  # data position (after) of (j, j) for each W entry: fill w_j^2
    pair_a: np.ndarray  # W entries of each off-diagonal fill pair (row of a > row of b)
    pair_b: np.ndarray
    pair_dst: np.ndarray  # data position (after) of each pair
    nnz_after: int

    @property
    def n_pairs(self) -> int:
        return self.pair_a.size + self.w_pos.size


class RoundsPlan:
    """The symbolic rounds on a lower pattern, and the dense core left.

    Parameters
    ----------
    keys : int64 ndarray
        Sorted keys ``row * n + col`` (``row >= col``) of the lower triangle, the full
        diagonal included.
    n : int

    Attributes
    ----------
    rounds : list of _Round
    core : int
        Nodes of the dense core.
    pairs : int
        Fill pairs of all rounds (their numeric cost).
    diag_pos : ndarray
        Data positions of the diagonal of the original pattern.
    """

    def __init__(self, keys: np.ndarray, n: int) -> None:
        self.n = n
        self.keys = keys
        rows, cols = np.divmod(keys, n)
        self.diag_pos = np.flatnonzero(rows == cols)
        nodes = np.arange(n)
        self.rounds: list[_Round] = []
        while n > _DENSE_OK:
            rd = self._round(rows, cols, n, nodes)
            if rd is None:
                break
            self.rounds.append(rd)
            n = rd.keep.size
            nodes = nodes[rd.keep]
            rows, cols = np.divmod(self._next_keys, n)
            del self._next_keys
        self.core = n
        self.core_nodes = nodes
        self.core_rows, self.core_cols = rows, cols
        self.pairs = int(sum(rd.n_pairs for rd in self.rounds))

    def flops(self) -> float:
        """Rough cost of one numeric factorisation and selected inverse, in flops.

        A fill pair costs a few gathers and a scatter (~20 flops' time); the core a
        Cholesky factor and an inverse (``c^3``).
        """
        return 20.0 * self.pairs + float(self.core) ** 3

    def describe(self) -> str:
        eliminated = self.n - self.core
        return (f"{len(self.rounds)} sparse rounds eliminating {eliminated} of {self.n} "
                f"({self.pairs} fill pairs), dense core of {self.core}")

    def _round(self, rows: np.ndarray, cols: np.ndarray, n: int, nodes: np.ndarray) -> _Round | None:
        off = rows != cols
        ro, co = rows[off], cols[off]
        deg = np.bincount(ro, minlength=n) + np.bincount(co, minlength=n)
        key = deg.astype(np.float64) * n + np.arange(n)
        key[deg > max(1, int(_CAP_FRACTION * n))] = np.inf
        neighbour_min = np.full(n, np.inf)
        np.minimum.at(neighbour_min, ro, key[co])
        np.minimum.at(neighbour_min, co, key[ro])
        elim = np.flatnonzero((key < neighbour_min) & np.isfinite(key))
        if elim.size < max(1, _MIN_FRACTION * n):
            return None
        is_elim = np.zeros(n, dtype=bool)
        is_elim[elim] = True
        keep = np.flatnonzero(~is_elim)
        n_after = keep.size
        new = np.cumsum(~is_elim) - 1  # index after the round of a kept node
        elim_index = np.cumsum(is_elim) - 1
        positions = np.arange(rows.size)
        diag_elim = positions[(rows == cols) & is_elim[rows]]
        re, ce = is_elim[rows], is_elim[cols]
        kk = ~re & ~ce
        kk_src = positions[kk]
        kk_keys = new[rows[kk]].astype(np.int64) * n_after + new[cols[kk]]
        w_sel = positions[re != ce]  # exactly one end eliminated (no edge joins two)
        i_node = np.where(re[w_sel], rows[w_sel], cols[w_sel])
        j_node = np.where(re[w_sel], cols[w_sel], rows[w_sel])
        w_col = elim_index[i_node]
        w_rows = new[j_node]
        order = np.lexsort((w_rows, w_col))
        w_pos, w_rows, w_col = w_sel[order], w_rows[order], w_col[order]
        counts = np.bincount(w_col, minlength=elim.size)
        w_indptr = np.concatenate([[0], np.cumsum(counts)])
        # Fill pairs within each column, lower (rows sorted within a column): entry a
        # pairs with the entries before it in its column.
        local = np.arange(w_pos.size) - w_indptr[w_col]
        pair_start = np.cumsum(local) - local
        n_off = int(local.sum())
        idx = _index_type(max(w_pos.size, 1))
        pair_a = np.repeat(np.arange(w_pos.size, dtype=idx), local)
        pair_b = (np.arange(n_off, dtype=np.int64)
                  - np.repeat(pair_start - w_indptr[w_col], local)).astype(idx)
        fill_keys = w_rows[pair_a].astype(np.int64) * n_after + w_rows[pair_b]
        diag_keys = w_rows.astype(np.int64) * (n_after + 1)
        if n_after * n_after <= _TABLE_ENTRIES:
            # A table over all n^2 keys: presence gives the sorted pattern, a scatter every
            # entry's position (no sort, no binary search).
            present = np.zeros(n_after * n_after, dtype=bool)
            present[kk_keys] = True
            present[fill_keys] = True
            present[diag_keys] = True
            next_keys = np.flatnonzero(present)
            del present
            table = np.zeros(n_after * n_after, dtype=_index_type(next_keys.size))  # pages on touch
            table[next_keys] = np.arange(next_keys.size)

            def position(k: np.ndarray) -> np.ndarray:
                return table[k]
        else:
            next_keys = _sorted_unique(np.concatenate([kk_keys, fill_keys, diag_keys]))

            def position(k: np.ndarray) -> np.ndarray:
                return np.searchsorted(next_keys, k)
        pos_type = _index_type(next_keys.size)
        rd = _Round(
            n_before=n, nnz_before=rows.size, elim_nodes=nodes[elim], elim=elim, keep=keep,
            diag_elim=diag_elim, kk_src=kk_src, kk_dst=position(kk_keys).astype(pos_type),
            w_pos=w_pos, w_rows=w_rows.astype(_index_type(n_after)), w_col=w_col,
            w_indptr=w_indptr, diag_dst=position(diag_keys).astype(pos_type),
            pair_a=pair_a, pair_b=pair_b, pair_dst=position(fill_keys).astype(pos_type),
            nnz_after=next_keys.size)
        self._next_keys = next_keys
        return rd


class NotPositiveDefiniteRest(FloatingPointError):
    """A pivot of the rest block is not positive (raised as _factor.NotPositiveDefinite)."""


class RoundsFactor:
    """``S = L L'`` through the rounds and the dense core, at one set of values.

    Parameters
    ----------
    plan : RoundsPlan
    data : ndarray
        Values of ``S`` on the plan's lower pattern.
    """

    def __init__(self, plan: RoundsPlan, data: np.ndarray) -> None:
        self.plan = plan
        self.sqrt_d, self.w, self.wmat = [], [], []
        logdet = 0.0
        for rd in plan.rounds:
            d = data[rd.diag_elim]
            if not np.all(d > 0.0):
                raise NotPositiveDefiniteRest("a pivot of the rest block is not positive")
            sd = np.sqrt(d)
            w = data[rd.w_pos] / sd[rd.w_col]
            nxt = np.zeros(rd.nnz_after)
            nxt[rd.kk_dst] = data[rd.kk_src]
            nxt -= np.bincount(rd.diag_dst, weights=w * w, minlength=rd.nnz_after)
            nxt -= np.bincount(rd.pair_dst, weights=w[rd.pair_a] * w[rd.pair_b], minlength=rd.nnz_after)
            self.sqrt_d.append(sd)
            self.w.append(w)
            self.wmat.append(sp.csc_matrix((w, rd.w_rows, rd.w_indptr),
                                           shape=(rd.keep.size, rd.elim.size)))
            logdet += 2.0 * float(np.log(sd).sum())
            data = nxt
        c = plan.core
        core = np.zeros((c, c))
        core[plan.core_rows, plan.core_cols] = data
        # core = U'U, U the Fortran view of L_core (LAPACK, or tiles on the fit's threads)
        chol, info = dense_cholesky(core)
        if info:
            raise NotPositiveDefiniteRest("the dense core of the rest block is not positive definite")
        self.chol = chol
        self.logdet = logdet + 2.0 * float(np.log(np.diag(chol)).sum())

    def forward(self, b: np.ndarray) -> np.ndarray:
        """``L^{-1} b`` for ``b`` (n, c); the result is in ``b``'s row layout."""
        plan = self.plan
        out = np.empty_like(b, dtype=float)
        x = np.asarray(b, dtype=float)
        for rd, sd, wmat in zip(plan.rounds, self.sqrt_d, self.wmat):
            xe = x[rd.elim] / sd[:, None]
            out[rd.elim_nodes] = xe
            x = x[rd.keep] - wmat @ xe
        out[plan.core_nodes] = linalg.solve_triangular(self.chol, x, trans="T", check_finite=False)
        return out

    def backward(self, w: np.ndarray) -> np.ndarray:
        """``L'^{-1} w`` for ``w`` in the layout :meth:`forward` returns."""
        plan = self.plan
        x = linalg.solve_triangular(self.chol, w[plan.core_nodes], trans="N", check_finite=False)
        for rd, sd, wmat in zip(reversed(plan.rounds), reversed(self.sqrt_d), reversed(self.wmat)):
            full = np.empty((rd.n_before, x.shape[1]))
            full[rd.keep] = x
            full[rd.elim] = (w[rd.elim_nodes] - wmat.T @ x) / sd[:, None]
            x = full
        return x

    def selected_inverse(self) -> np.ndarray:
        """``S^{-1}`` on the plan's lower pattern (values aligned with its keys)."""
        plan = self.plan
        inv, info = dense_cholesky_inverse(self.chol)
        if info:
            raise NotPositiveDefiniteRest("potri failed on the dense core")
        # potri fills the upper triangle of the Fortran factor, i.e. the lower in C order.
        sig = inv.T[plan.core_rows, plan.core_cols]
        del inv
        for rd, sd, w in zip(reversed(plan.rounds), reversed(self.sqrt_d), reversed(self.w)):
            cur = np.empty(rd.nnz_before)
            cur[rd.kk_src] = sig[rd.kk_dst]
            # acc_e = (Sigma w_i)_j for the W entry e = (j, i)
            v = sig[rd.pair_dst]
            acc = sig[rd.diag_dst] * w
            acc += np.bincount(rd.pair_a, weights=v * w[rd.pair_b], minlength=w.size)
            acc += np.bincount(rd.pair_b, weights=v * w[rd.pair_a], minlength=w.size)
            cur[rd.w_pos] = -acc / sd[rd.w_col]
            cur[rd.diag_elim] = (1.0 + np.bincount(rd.w_col, weights=w * acc, minlength=sd.size)) / sd**2
            sig = cur
        return sig
