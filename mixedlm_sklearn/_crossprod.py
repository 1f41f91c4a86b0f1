"""Additive blocked cross-products: everything the likelihood needs from the rows.

For terms ``k = 1..K`` with level codes ``c_k`` and designs ``Z_k`` (row weights ``W``)
the profiled likelihood of Bates et al. (2015, JSS 67(1), sec. 3) needs only

* per term and level ``l``: ``Z_kl' W Z_kl`` (``diag``) and ``Z_kl' W [X y]`` (``zxy``),
* per pair of terms ``k < l``: ``Z_k' W Z_l``, one ``q_k x q_l`` block per pair of levels
  that share a row (:class:`PairBlock`; at most one entry per distinct level pair),
* ``[X y]' W [X y]``, the number of rows and ``sum log w``;
* with rows whose random-effects part falls on several levels of a term (whitened rows of
  correlated residuals, :func:`entry_cross_products`), per term the blocks between two of
  its levels (a *self pair* ``k == l``).

They *add*: the cross-products of two sets of rows with the same level coding sum to
those of their union, which is how chunks and Dask partitions are combined
(:class:`~mixedlm_sklearn._chunked.Accumulator`). A residual variance per stratum (nlme's ``varIdent``) is a
reweighting of the rows of each stratum by ``v_s = 1 / delta_s^2``, so every array
carries a leading stratum axis and :meth:`CrossProducts.combined` forms
``sum_s v_s (cross-products of stratum s)`` for the deviance at given ratios.

The columns of ``[X y]`` may be measured from an :class:`Origin`: with an intercept, each
column minus a multiple of the intercept column close to its mean (a change of the
fixed-effects basis that changes no likelihood), so that the cross-products do not
carry ``n mean^2`` next to the variation (``y + 1e7`` would leave ``y'y`` with no digits
of it).

Layout: the level index is the last axis of the per-level arrays (``(S, q, q, m)``) so
the batched kernels of :mod:`._batched` act on contiguous ``(m,)`` rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._terms import Terms
from ._threads import n_level_threads, run_in_threads

__all__ = ["PairBlock", "CrossProducts", "cross_products", "entry_cross_products", "DesignPattern",
           "ResponseProducts", "ResponseMap", "Origin", "origin_of"]

# Rows per block in the pass over the rows. Each block's sparse product is added into the
# per-level sums in place (:func:`_add_product`), so a block costs what its rows cost: the
# size only bounds the block's temporaries (2^17 rows of 16 columns: 17 MB). Where the
# in-place product is not available each block's product is a dense (levels * q, k)
# result, and a block must hold at least about levels * q rows for that cost to stay
# proportional to the rows (the cap bounding the temporaries, ~0.5 GB). The blocks do not
# depend on the number of threads (n_jobs), so neither do the sums.
_BLOCK_ROWS = 1 << 17
_MIN_BLOCK_ROWS = 1 << 15
_MAX_BLOCK_ROWS = 1 << 22
try:  # scipy's kernel of ``A @ B`` for a compressed A; it adds into its output
    from scipy.sparse._sparsetools import csc_matvecs as _csc_matvecs
except ImportError:  # pragma: no cover - a scipy without it takes the public product
    _csc_matvecs = None


def _add_product(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_rows: int,
                 block: np.ndarray, out: np.ndarray) -> None:
    """``out += A' block`` for the CSR matrix ``A`` (``n_rows`` by ``out.shape[0]``) of
    ``(indptr, indices, data)``, without a temporary of ``out``'s size.

    ``A'`` is the CSC matrix of the same arrays; scipy's kernel for it (what ``A.T @
    block`` runs) adds its product into the output it is given. The private kernel is
    used when scipy has it with this signature, and the public product otherwise.
    """
    block = np.ascontiguousarray(block)
    if _csc_matvecs is not None and out.flags.c_contiguous:
        try:
            _csc_matvecs(out.shape[0], n_rows, block.shape[1], indptr, indices, data,
                         block.ravel(), out.reshape(-1))
            return
        except (TypeError, ValueError):  # pragma: no cover - another signature
            pass
    out += sp.csr_matrix((data, indices, indptr), shape=(n_rows, out.shape[0])).T @ block


# Rows whose means make the origin (:func:`origin_of`): enough to land within a fraction of
# a standard deviation of the mean, few enough to cost nothing (at 131072 rows the means
# were 3% of a fit of 10^5 rows; measured).
_ORIGIN_ROWS = 1024


@dataclass(frozen=True)
class PairBlock:
    """``Z_k' W Z_l`` for two terms ``k < l``: a ``q_k x q_l`` block per level pair; or,
    ``k == l`` (a self pair, :func:`entry_cross_products`), the blocks between two levels
    ``level_k < level_l`` of one term.

    Attributes
    ----------
    k, l : int
        The terms, in the model's order.
    level_k, level_l : int ndarray of shape (nnz,)
        Level pairs that share at least one row, sorted by ``(level_k, level_l)``.
    values : ndarray of shape (S, nnz, q_k, q_l)
        The blocks, per stratum.
    """

    k: int
    l: int
    level_k: np.ndarray
    level_l: np.ndarray
    values: np.ndarray

    @property
    def nnz(self) -> int:
        return self.level_k.size

    def nested(self, m_k: int) -> bool:
        """Every level of term ``k`` meets a single level of term ``l`` (``k`` nested in ``l``)."""
        return self.nnz == m_k and np.array_equal(self.level_k, np.arange(m_k))

    def nested_reverse(self, m_l: int) -> bool:
        """Every level of term ``l`` meets a single level of term ``k``."""
        return self.nnz == m_l and np.unique(self.level_l).size == m_l


@dataclass(frozen=True, eq=False)
class Origin:
    """Where the columns of ``[X y]`` are measured from: a change of the fixed-effects basis.

    Cross-products with an origin are those of ``D' = D - d shift'``, ``D = [X y]`` the
    columns as given and ``d`` its intercept column (column ``column`` of ``X``, a constant
    column; ``shift[column] = 0``). ``D' = D T`` with ``T = I - e shift'`` (``e`` the
    intercept's unit vector), ``det T = 1``: the model of ``D'`` is the model of ``D`` with
    the fixed effects reparametrised, ``beta = beta' + e (shift_y - shift_x' beta')``, and
    the same ML and REML likelihood, variance parameters, random effects and residuals.
    Shifts close to the columns' means keep the cross-products free of the ``n mean^2``
    that would otherwise cancel in every difference the likelihood takes.

    Attributes
    ----------
    shift : ndarray of shape (p + 1,)
        Per column of ``[X y]``, the multiple of ``d`` subtracted (0 for ``d`` itself).
    column : int
        The intercept column of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> o = Origin(np.array([0.0, 3.0, 100.0]))
    >>> o.beta(np.array([1.0, 2.0]))  # intercept 1 - 3 * 2 + 100
    array([95.,  2.])
    >>> o.centred_beta(o.beta(np.array([1.0, 2.0])))
    array([1., 2.])
    """

    shift: np.ndarray
    column: int = 0

    @property
    def _x(self) -> np.ndarray:
        return self.shift[:-1]

    def beta(self, beta: np.ndarray) -> np.ndarray:
        """Fixed effects of the columns as given from those of the shifted columns."""
        out = np.array(beta, dtype=float)
        out[self.column] += self.shift[-1] - self._x @ beta
        return out

    def centred_beta(self, beta: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`beta`."""
        out = np.array(beta, dtype=float)
        out[self.column] += self._x @ beta - self.shift[-1]
        return out

    def cov(self, cov: np.ndarray) -> np.ndarray:
        """A covariance of the shifted columns' fixed effects as one of the columns' own:
        ``T_x cov T_x'`` with ``T_x = I - e shift_x'``."""
        out = np.array(cov, dtype=float)
        row = self._x @ out
        out[self.column] -= row
        out[:, self.column] -= row
        out[self.column, self.column] += self._x @ row
        return out

    def x_rows(self, R: np.ndarray) -> np.ndarray:
        """Rows ``r'X'`` (n, p) of the shifted columns as ``r'X`` of the columns as given
        (``R T_x^{-1}``, ``T_x^{-1} = I + e shift_x'``)."""
        return R + np.outer(R[:, self.column], self._x)

    def rows(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The shifted columns of the rows ``X`` (the intercept column included) and ``y``."""
        d = X[:, self.column]
        return X - np.outer(d, self._x), y - d * self.shift[-1]

    def response(self, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Responses ``Y`` (n, k) measured from the origin (``X`` the rows, intercept included)."""
        return Y - X[:, self.column, None] * self.shift[-1]

    def select(self, keep: np.ndarray) -> "Origin":
        """The origin of the fixed-effects columns ``keep`` (the intercept among them)."""
        keep = np.asarray(keep, dtype=int)
        column = int(np.flatnonzero(keep == self.column)[0])
        return Origin(self.shift[np.append(keep, self.shift.size - 1)], column)

    def scaled(self, xy_scale: np.ndarray) -> "Origin":
        """The origin of the columns ``D / xy_scale`` (the intercept column scaled too)."""
        return Origin(self.shift * xy_scale[self.column] / xy_scale, self.column)

    def uncentre_gram(self, F: np.ndarray) -> np.ndarray:
        """``T^{-T} F T^{-1}`` for a (S, p + 1, p + 1) array ``F`` of the shifted columns:
        the same for the columns as given."""
        d = F[:, self.column, :]  # d'D' per stratum
        out = F + d[:, :, None] * self.shift[None, None, :]
        out += out[:, self.column, :][:, None, :] * self.shift[None, :, None]
        return out


def origin_of(X: np.ndarray, y: np.ndarray, rows: int = _ORIGIN_ROWS) -> Origin | None:
    """An origin for rows ``X`` (intercept column not included) and ``y``, intercept first.

    The shift of a column is the mean of its first ``rows`` rows where that mean exceeds
    their standard deviation, else 0: a column ``k`` standard deviations from 0 loses about
    ``2 log10(1 + k)`` digits to its cross-products, under one digit up to ``k = 1`` (and
    a shift costs a subtraction per value in the pass over the rows). Any value within a
    few standard deviations of the mean keeps the digits. A constant column stays
    constant (every row minus the same number). None when no column is shifted.
    """
    head = slice(0, min(len(y), rows))
    # each column's moments summed along a contiguous copy: the same bits whatever the
    # memory layout of X (a DataFrame's columns, an array's rows)
    columns = np.concatenate([np.ascontiguousarray(X[head].T), np.asarray(y[head], float)[None]])
    mean = columns.mean(axis=1)
    far = np.abs(mean) > columns.std(axis=1)
    shift = np.concatenate([[0.0], np.where(far & np.isfinite(mean), mean, 0.0)])
    return Origin(shift) if shift.any() else None


@dataclass(frozen=True)
class CrossProducts:
    """The additive cross-products of one data set (see the module docstring).

    Attributes
    ----------
    terms : Terms
        The random-effects terms (their levels and ``q`` give the shapes below).
    diag : tuple of ndarray, each (S, q_k, q_k, m_k)
    zxy : tuple of ndarray, each (S, q_k, p + 1, m_k); the last column is ``Z'W y``
    pairs : tuple of PairBlock
        One per pair of terms ``k < l`` (in that order).
    xyxy : ndarray of shape (S, p + 1, p + 1)
    n_obs : int ndarray of shape (S,)
    sum_log_weights : ndarray of shape (S,)
        ``sum log w`` of the prior weights of each stratum's rows.
    counts : tuple of int ndarray, each (m_k,)
        Rows per level of each term.
    origin : Origin or None
        Where the columns of ``[X y]`` are measured from (None: as given). Every array
        above is then of the shifted columns; :meth:`uncentred` gives them as given.
    """

    terms: Terms
    diag: tuple
    zxy: tuple
    pairs: tuple
    xyxy: np.ndarray
    n_obs: np.ndarray
    sum_log_weights: np.ndarray
    counts: tuple
    origin: Origin | None = None

    @property
    def n_strata(self) -> int:
        return self.xyxy.shape[0]

    @property
    def p(self) -> int:
        return self.xyxy.shape[1] - 1

    @property
    def n(self) -> int:
        return int(self.n_obs.sum())

    @property
    def self_paired(self) -> frozenset:
        """The terms with entries between two of their levels (a self pair block ``(k, k)``
        with entries, :func:`entry_cross_products`): they are factored in the dense block."""
        return frozenset(b.k for b in self.pairs if b.k == b.l and b.nnz)

    def pair(self, k: int, l: int) -> PairBlock | None:
        """The block of terms ``k < l``."""
        for block in self.pairs:
            if block.k == k and block.l == l:
                return block
        return None

    def combined(self, weights: np.ndarray | None = None, row_weights: bool = True) -> "CrossProducts":
        """``sum_s weights_s * (stratum s)``: one stratum (all ones by default).

        The log-weights become ``sum_s (sum_log_weights_s + n_s log weights_s)``: row
        weights ``weights_s`` on top of the prior weights. With ``row_weights=False`` the
        strata are components of a sum (of any sign, e.g. the lag products of a residual
        correlation, :mod:`._correlation`) rather than reweighted rows: the log-weights
        stay the prior weights'.
        """
        if weights is None:
            if self.n_strata == 1:
                return self
            weights = np.ones(self.n_strata)
        w = np.asarray(weights, dtype=float)

        def comb(a: np.ndarray) -> np.ndarray:
            if a.shape[0] == 1:
                return a * w[0] if w[0] != 1.0 else a
            return np.tensordot(w, a, axes=1)[None]

        return CrossProducts(
            terms=self.terms,
            diag=tuple(comb(d) for d in self.diag),
            zxy=tuple(comb(z) for z in self.zxy),
            pairs=tuple(dataclasses.replace(b, values=comb(b.values)) for b in self.pairs),
            xyxy=comb(self.xyxy),
            n_obs=np.array([self.n]),
            sum_log_weights=np.array([float(self.sum_log_weights.sum()
                                            + (self.n_obs @ np.log(w) if row_weights else 0.0))]),
            counts=self.counts,
            origin=self.origin,
        )

    def stratum(self, s: int) -> "CrossProducts":
        """The cross-products of stratum ``s`` alone (one stratum)."""
        return CrossProducts(
            terms=self.terms,
            diag=tuple(d[s:s + 1] for d in self.diag),
            zxy=tuple(z[s:s + 1] for z in self.zxy),
            pairs=tuple(dataclasses.replace(b, values=b.values[s:s + 1]) for b in self.pairs),
            xyxy=self.xyxy[s:s + 1],
            n_obs=self.n_obs[s:s + 1],
            sum_log_weights=self.sum_log_weights[s:s + 1],
            counts=self.counts,
            origin=self.origin,
        )

    def transformed(self, bases: Sequence[np.ndarray], xy_scale: np.ndarray) -> "CrossProducts":
        """Cross-products of ``Z_k P_k`` and ``[X y] / xy_scale`` (a change of basis).

        Parameters
        ----------
        bases : sequence of (q_k, q_k) arrays ``P_k``
        xy_scale : ndarray of shape (p + 1,)
        """
        inv = 1.0 / np.asarray(xy_scale, dtype=float)
        return dataclasses.replace(
            self,
            diag=tuple(np.einsum("ba,sbcm,cd->sadm", P, d, P) for P, d in zip(bases, self.diag)),
            zxy=tuple(np.einsum("ba,sbjm,j->sajm", P, z, inv) for P, z in zip(bases, self.zxy)),
            pairs=tuple(dataclasses.replace(
                b, values=np.einsum("ba,sebc,cd->sead", bases[b.k], b.values, bases[b.l]))
                for b in self.pairs),
            xyxy=self.xyxy * inv[None, :, None] * inv[None, None, :],
            origin=None if self.origin is None else self.origin.scaled(np.asarray(xy_scale, float)),
        )

    def uncentred(self) -> "CrossProducts":
        """The cross-products of the columns as given (``self`` when it has no origin).

        Formed from the shifted ones (``Z'D = Z'D' T^{-1}``, ``D'D = T^{-T} D''D' T^{-1}``):
        as accurate as forming them from the rows, for consumers that want the data's own
        units (Kenward-Roger, R2, ANOVA contrasts). The likelihood is evaluated on the
        shifted ones.
        """
        if self.origin is None:
            return self
        cached = self.__dict__.get("_uncentred")
        if cached is None:  # kept: consumers ask for it repeatedly
            o = self.origin
            shift = o.shift[None, None, :, None]
            cached = dataclasses.replace(
                self,
                zxy=tuple(z + z[:, :, o.column:o.column + 1, :] * shift for z in self.zxy),
                xyxy=o.uncentre_gram(self.xyxy),
                origin=None,
            )
            object.__setattr__(self, "_uncentred", cached)
        return cached

    def with_response(self, response: "ResponseProducts", j: int = 0) -> "CrossProducts":
        """The same design with response ``j`` of ``response`` in place of ``y``.

        Only ``Z_k'W y``, ``X'W y`` and ``y'W y`` depend on the response: every other
        array (``Z'WZ``, the pair blocks, ``X'WX``, ``Z'WX``, the counts) is shared with
        ``self``. A refit to a simulated response (the parametric bootstrap) needs nothing
        else, and keeps the pattern, hence the :class:`~._factor.Plan`, of the original.
        With an :attr:`origin` the products must be those of the response measured from it
        (:meth:`Origin.response`) and the shifted ``X``.
        """
        p = self.p
        zxy = []
        for z, zy in zip(self.zxy, response.zy):
            new = z.copy()
            new[:, :, p, :] = zy[:, :, j, :]
            zxy.append(new)
        xyxy = self.xyxy.copy()
        xyxy[:, :p, p] = xyxy[:, p, :p] = response.xy[:, :, j]
        xyxy[:, p, p] = response.yy[:, j]
        return dataclasses.replace(self, zxy=tuple(zxy), xyxy=xyxy)

    def select_fixed(self, keep: np.ndarray) -> "CrossProducts":
        """Keep the fixed-effects columns ``keep`` (indices into X; y stays last)."""
        cols = np.append(np.asarray(keep, dtype=int), self.p)
        return dataclasses.replace(
            self,
            zxy=tuple(np.ascontiguousarray(z[:, :, cols, :]) for z in self.zxy),
            xyxy=np.ascontiguousarray(self.xyxy[:, cols][:, :, cols]),
            origin=None if self.origin is None else self.origin.select(keep),
        )

    def __add__(self, other: "CrossProducts") -> "CrossProducts":
        """Cross-products of the union of two sets of rows with the same coding."""
        if self.terms != other.terms or self.xyxy.shape != other.xyxy.shape:
            raise ValueError("cross-products of different models cannot be added")
        if not _same_origin(self.origin, other.origin):
            raise ValueError("cross-products measured from different origins cannot be added")
        pairs = tuple(_merge_pairs(a, b, self.terms[a.l].n_levels)
                      for a, b in zip(self.pairs, other.pairs))
        return CrossProducts(
            terms=self.terms,
            diag=tuple(a + b for a, b in zip(self.diag, other.diag)),
            zxy=tuple(a + b for a, b in zip(self.zxy, other.zxy)),
            pairs=pairs,
            xyxy=self.xyxy + other.xyxy,
            n_obs=self.n_obs + other.n_obs,
            sum_log_weights=self.sum_log_weights + other.sum_log_weights,
            counts=tuple(a + b for a, b in zip(self.counts, other.counts)),
            origin=self.origin,
        )


def _same_origin(a: Origin | None, b: Origin | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.column == b.column and np.array_equal(a.shift, b.shift)


def _merge_pairs(a: PairBlock, b: PairBlock, m_l: int) -> PairBlock:
    """Sum of two pair blocks of the same terms (entries for the same level pair added)."""
    return _coalesce(a.k, a.l, np.concatenate([a.level_k, b.level_k]),
                     np.concatenate([a.level_l, b.level_l]),
                     np.concatenate([a.values, b.values], axis=1), m_l)


def _coalesce(k: int, l: int, level_k: np.ndarray, level_l: np.ndarray, values: np.ndarray,
              m_l: int) -> PairBlock:
    """Pair entries summed per distinct ``(level_k, level_l)``, sorted."""
    key = level_k.astype(np.int64) * m_l + level_l
    codes, uniq = pd.factorize(key, sort=True)
    out = np.zeros((values.shape[0], uniq.size) + values.shape[2:])
    np.add.at(out, (slice(None), codes), values)
    lk, ll = np.divmod(np.asarray(uniq, dtype=np.int64), m_l)
    return PairBlock(k, l, lk, ll, out)


# ---- the pass over the rows -------------------------------------------------------------------


def _term_blocks(Z: np.ndarray, codes: np.ndarray, n_levels: int, X: np.ndarray, y: np.ndarray,
                 sqrt_w: np.ndarray | None, intercept: bool, shift: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Z'W Z`` and ``Z'W [X y]`` per level, and ``[X y]'W[X y]``, in one pass.

    The rows are processed in blocks; each block's ``[Z, X, y]`` sits in one buffer and a
    sparse block matrix with the level structure of ``Z`` multiplies it, giving every
    level's cross-products in one product (no loop over levels). ``shift`` (with
    ``intercept``): the origin's shifts of ``X``'s columns and ``y``, subtracted as the
    block is copied.
    """
    n, p = X.shape
    p += int(intercept)
    q = Z.shape[1]
    k = q + p + 1
    xyxy = np.zeros((p + 1, p + 1))
    in_place = _csc_matvecs is not None
    block_rows = _BLOCK_ROWS if in_place else int(min(max(_MIN_BLOCK_ROWS, 2 * n_levels * q),
                                                      _MAX_BLOCK_ROWS))
    shift_x = None if shift is None or not np.any(shift[1:p]) else shift[1:p]
    shift_y = 0.0 if shift is None else float(shift[p])
    index_type = np.int32 if n_levels * q < 2**31 else np.int64  # scipy's own index type
    # With the package's threads, each thread adds the products of its own columns of
    # [Z X y] into its own part of the sums: every sum is formed row after row in the rows'
    # order whatever the number of threads, so the sums are those of one thread, bit for bit.
    bounds = np.linspace(0, k, min(n_level_threads(), k) + 1).astype(int)
    groups = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    sums = [np.zeros((n_levels * q, g.stop - g.start)) for g in groups]

    def fill_block(start: int, stop: int) -> np.ndarray:
        block = np.empty((stop - start, k))
        zb, xyb = block[:, :q], block[:, q:]
        zb[:] = Z[start:stop]
        if intercept:
            xyb[:, 0] = 1.0
        if shift_x is None:
            xyb[:, int(intercept):p] = X[start:stop]
        else:  # a subtraction costs twice a copy: only when a column is shifted
            np.subtract(X[start:stop], shift_x, out=xyb[:, 1:p])
        if shift_y:
            np.subtract(y[start:stop], shift_y, out=xyb[:, p])
        else:
            xyb[:, p] = y[start:stop]
        if sqrt_w is not None:
            block *= sqrt_w[start:stop, None]
        return block

    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        rows = stop - start
        block = fill_block(start, stop)
        xyb = block[:, q:]
        xyxy += xyb.T @ xyb
        # Row r of the block-sparse Z has its q entries in columns codes[r]*q + (0..q-1).
        cols = (codes[start:stop, None].astype(index_type) * q + np.arange(q, dtype=index_type)).ravel()
        z_values = block[:, :q].ravel() if sqrt_w is not None else np.ascontiguousarray(Z[start:stop]).ravel()
        indptr = np.arange(0, rows * q + 1, q, dtype=index_type)
        run_in_threads([partial(_add_product, indptr, cols, z_values, rows, block[:, g], out)
                        for g, out in zip(groups, sums)])
        del block, cols, z_values
    zw = sums[0] if len(sums) == 1 else np.concatenate(sums, axis=1)
    del sums
    per_level = zw.reshape(n_levels, q, k).transpose(1, 2, 0)
    return (np.ascontiguousarray(per_level[:, :q, :]), np.ascontiguousarray(per_level[:, q:, :]),
            xyxy)


def _pair_values(codes_k: np.ndarray, Z_k: np.ndarray, m_k: int, codes_l: np.ndarray, Z_l: np.ndarray,
                 m_l: int, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level pairs that share a row and their ``Z_k' W Z_l`` blocks (one stratum).

    Each entry of the blocks is a sparse (m_k, m_l) matrix summed from the rows (scipy's
    coordinate-to-CSR conversion): sorted by ``(level_k, level_l)``, the same pattern for
    every entry (explicit zeros are kept), and at 10^7 rows 10x faster and 40% smaller
    at its peak than factorising the level-pair keys with a hash table (measured).
    """
    qk, ql = Z_k.shape[1], Z_l.shape[1]
    values = indptr = indices = None
    for a in range(qk):
        za = Z_k[:, a] if w is None else Z_k[:, a] * w
        for b in range(ql):
            mat = sp.csr_matrix((za * Z_l[:, b], (codes_k, codes_l)), shape=(m_k, m_l))
            mat.sum_duplicates()
            if values is None:
                indptr, indices = mat.indptr, mat.indices
                values = np.empty((mat.nnz, qk, ql))
            values[:, a, b] = mat.data[:values.shape[0]]
            del mat
    lk = np.repeat(np.arange(m_k, dtype=np.int64), np.diff(indptr))
    return lk, indices.astype(np.int64), values


def cross_products(
    X: np.ndarray,
    y: np.ndarray,
    factors: Sequence[tuple[np.ndarray, np.ndarray]],
    terms: Terms,
    weights: np.ndarray | None = None,
    strata: np.ndarray | None = None,
    n_strata: int = 1,
    intercept: bool = False,
    origin: Origin | None = None,
) -> CrossProducts:
    """The cross-products of arrays.

    Parameters
    ----------
    X : ndarray of shape (n, p)
    y : ndarray of shape (n,)
    factors : sequence of (codes, Z)
        Per term: level codes in ``[0, n_levels)`` (n,) and the design ``Z_k`` (n, q_k).
    terms : Terms
    weights : ndarray of shape (n,), optional
        Prior weights (residual variance of row r is ``scale / w_r``).
    strata : int ndarray of shape (n,), optional
        Stratum of each row in ``[0, n_strata)``.
    n_strata : int
    intercept : bool
        Prepend a column of ones to ``X`` (block by block, so X is never copied whole).
    origin : Origin, optional
        Measure the columns from it (with ``intercept``: the intercept is column 0);
        see :func:`origin_of`.

    Returns
    -------
    CrossProducts
    """
    if origin is not None and not (intercept and origin.column == 0
                                   and origin.shift.shape == (X.shape[1] + 2,)):
        raise ValueError("an origin needs the intercept column (intercept=True) and a shift "
                         "per column of [1 X y]")
    if strata is not None and n_strata > 1:
        parts = []
        for s in range(n_strata):
            rows = np.flatnonzero(strata == s)
            parts.append(cross_products(
                X[rows], y[rows], [(c[rows], Z[rows]) for c, Z in factors], terms,
                None if weights is None else weights[rows], intercept=intercept, origin=origin))
        return _stack_strata(parts)
    sqrt_w = None if weights is None else np.sqrt(weights)
    shift = None if origin is None else origin.shift
    diag, zxy, counts = [], [], []
    xyxy = None
    for (codes, Z), term in zip(factors, terms):
        d, z, xx = _term_blocks(Z, codes, term.n_levels, X, y, sqrt_w, intercept, shift)
        diag.append(d[None])
        zxy.append(z[None])
        counts.append(np.bincount(codes, minlength=term.n_levels))
        xyxy = xx if xyxy is None else xyxy
    if xyxy is None:  # no terms (least squares)
        _, _, xyxy = _term_blocks(np.ones((len(y), 1)), np.zeros(len(y), np.intp), 1, X, y, sqrt_w,
                                  intercept, shift)
    pairs = []
    for k in range(len(factors)):
        for l in range(k + 1, len(factors)):
            lk, ll, values = _pair_values(factors[k][0], factors[k][1], terms[k].n_levels, factors[l][0],
                                          factors[l][1], terms[l].n_levels, weights)
            pairs.append(PairBlock(k, l, lk, ll, values[None]))
    return CrossProducts(
        terms=terms,
        diag=tuple(diag),
        zxy=tuple(zxy),
        pairs=tuple(pairs),
        xyxy=xyxy[None],
        n_obs=np.array([len(y)]),
        sum_log_weights=np.array([0.0 if weights is None else float(np.log(weights).sum())]),
        counts=tuple(counts),
        origin=origin,
    )


def entry_cross_products(xy: np.ndarray, weights: np.ndarray, entry_row: np.ndarray,
                         factors: Sequence[tuple[np.ndarray, np.ndarray]], terms: Terms
                         ) -> CrossProducts:
    """The cross-products ``sum_r w_r v_r v_r'`` of rows ``v_r = [x_r y_r z_r]`` whose
    random-effects part ``z_r`` may fall on several levels of a term (one stratum).

    A whitened row of correlated residuals whose group spans levels of a term (AR(1)
    within subjects next to a crossed item factor) is a combination of rows of different
    levels: ``Z_k' R^{-1} Z_k`` then has entries between levels of one term, which the
    result holds as a *self pair* block ``(k, k)`` (level pairs ``i < j``; the block of
    ``j, i`` is its transpose), after the blocks ``k < l`` of :func:`cross_products`.
    Every term gets its self pair block (possibly empty), so that cross-products of the
    same terms from other rows stack and add.

    Parameters
    ----------
    xy : ndarray of shape (n_rows, p + 1)
        ``[x_r y_r]`` of each row.
    weights : ndarray of shape (n_rows,)
        ``w_r``, of any sign (components of a sum, :mod:`._correlation`).
    entry_row : int ndarray of shape (E,)
        The row of each entry of the random-effects parts, non-decreasing.
    factors : sequence of (codes, Z)
        Per term, each entry's level (E,) and its values (E, q_k): ``z_r`` of term ``k``
        is the sum of its entries' values at their levels.
    terms : Terms

    Returns
    -------
    CrossProducts
        ``n_obs`` is ``n_rows`` and ``counts`` the (merged) entries per level: callers
        whose rows are not the data's set both.
    """
    xy = np.asarray(xy, dtype=float)
    w = np.asarray(weights, dtype=float)
    entry_row = np.asarray(entry_row, dtype=np.int64)
    n_rows, E = xy.shape[0], entry_row.size
    if E and np.any(np.diff(entry_row) < 0):
        raise ValueError("entry_row must be non-decreasing")
    if E:
        # a row's entries at the same level of every term are one entry, their values summed
        # (z_r is linear in them): a row of a group's sum (compound symmetry) then has one
        # entry per level combination, not one per member row, and its pairs below are not
        # n_g^2 (a group of 2,000 rows took 1.6 GB)
        keys = np.column_stack([entry_row] + [np.asarray(c, dtype=np.int64) for c, _ in factors])
        order = np.lexsort(keys.T[::-1])  # by row first: entry_row stays non-decreasing
        keys = keys[order]
        first = np.ones(E, dtype=bool)
        first[1:] = np.any(keys[1:] != keys[:-1], axis=1)
        if not first.all():
            starts = np.flatnonzero(first)
            entry_row = keys[starts, 0]
            factors = [(keys[starts, 1 + j], np.add.reduceat(np.asarray(Z, dtype=float)[order], starts, axis=0))
                       for j, (_, Z) in enumerate(factors)]
            E = entry_row.size
        del keys, order, first
    # every ordered pair (a, b) of entries of one row: the row's product z z' summed
    count = np.bincount(entry_row, minlength=n_rows)
    first = (np.cumsum(count) - count)[entry_row]
    partners = count[entry_row]
    ea = np.repeat(np.arange(E, dtype=np.int64), partners)
    eb = np.repeat(first, partners) + (np.arange(ea.size, dtype=np.int64)
                                       - np.repeat(np.cumsum(partners) - partners, partners))
    w_pair = w[entry_row[ea]]
    wxy = xy * w[:, None]
    diag, zxy, pairs, self_pairs = [], [], [], []
    for (codes, Z), term in zip(factors, terms):
        q, m = Z.shape[1], term.n_levels
        zt = sp.csr_matrix((Z.ravel(), ((codes[:, None].astype(np.int64) * q + np.arange(q)).ravel(),
                                         np.repeat(np.arange(E), q))), shape=(m * q, E))
        zxy.append(np.ascontiguousarray((zt @ wxy[entry_row]).reshape(m, q, -1).transpose(1, 2, 0))[None])
        ca, cb = codes[ea], codes[eb]
        vals = Z[ea][:, :, None] * Z[eb][:, None, :] * w_pair[:, None, None]
        same = ca == cb
        d = np.zeros((m, q, q))
        np.add.at(d, ca[same], vals[same])
        diag.append(np.ascontiguousarray(d.transpose(1, 2, 0))[None])
        below = ca < cb
        k = len(diag) - 1
        self_pairs.append(_coalesce(k, k, ca[below], cb[below], vals[below][None], m))
    for k in range(len(factors)):
        for l in range(k + 1, len(factors)):
            (ck, Zk), (cl, Zl) = factors[k], factors[l]
            vals = Zk[ea][:, :, None] * Zl[eb][:, None, :] * w_pair[:, None, None]
            pairs.append(_coalesce(k, l, ck[ea], cl[eb], vals[None], terms[l].n_levels))
    return CrossProducts(
        terms=terms,
        diag=tuple(diag),
        zxy=tuple(zxy),
        pairs=tuple(pairs + self_pairs),
        xyxy=(xy.T @ wxy)[None],
        n_obs=np.array([n_rows]),
        sum_log_weights=np.zeros(1),
        counts=tuple(np.bincount(c, minlength=t.n_levels) for (c, _), t in zip(factors, terms)),
    )


class DesignPattern:
    """One design's index structure, for its cross-products under new row weights and responses.

    :func:`cross_products` finds the level pairs of crossed terms and lays out the sparse
    level structure of every ``Z_k`` each time it is called. A fit that reweights the same
    rows many times (the working weights of penalised iteratively reweighted least squares
    in a GLMM, a new simulated response in a parametric bootstrap) builds this once: each
    call of :meth:`cross_products` then only recomputes values (one sparse product per term
    and a ``bincount`` per entry of each pair block).

    Parameters
    ----------
    X : ndarray of shape (n, p)
        Fixed-effects columns (the intercept included if wanted; may have 0 columns).
    factors : sequence of (codes, Z)
    terms : Terms

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn._terms import Term, Terms
    >>> rng = np.random.default_rng(0)
    >>> g, h = rng.integers(0, 4, 30), rng.integers(0, 3, 30)
    >>> terms = Terms([Term("g", ("(Intercept)",), 4), Term("h", ("(Intercept)",), 3)])
    >>> factors = [(g, np.ones((30, 1))), (h, np.ones((30, 1)))]
    >>> X, y, w = np.ones((30, 1)), rng.standard_normal(30), rng.uniform(1, 2, 30)
    >>> a = DesignPattern(X, factors, terms).cross_products(y, w)
    >>> b = cross_products(X, y, factors, terms, weights=w)
    >>> bool(np.allclose(a.pairs[0].values, b.pairs[0].values) and np.allclose(a.xyxy, b.xyxy))
    True
    """

    def __init__(self, X: np.ndarray, factors: Sequence[tuple[np.ndarray, np.ndarray]],
                 terms: Terms) -> None:
        self.X = np.ascontiguousarray(X, dtype=float)
        self.factors = [(np.asarray(c), np.ascontiguousarray(Z, dtype=float)) for c, Z in factors]
        self.terms = terms
        n = self.X.shape[0]
        self.n = n
        # Z_k' as a sparse (m_k q_k, n) matrix: Z_k' [W Z_k, W X, W y] holds every level's blocks.
        self._zt = []
        for (codes, Z), term in zip(self.factors, terms):
            q = Z.shape[1]
            rows = (codes[:, None].astype(np.int64) * q + np.arange(q)).ravel()
            cols = np.repeat(np.arange(n), q)
            self._zt.append(sp.csr_matrix((Z.ravel(), (rows, cols)), shape=(term.n_levels * q, n)))
        self.counts = tuple(np.bincount(c, minlength=t.n_levels) for (c, _), t in zip(self.factors, terms))
        # Level pairs of crossed terms: each row's pair entry, found once.
        self._pairs = []
        for k in range(len(self.factors)):
            for l in range(k + 1, len(self.factors)):
                m_l = terms[l].n_levels
                key = self.factors[k][0].astype(np.int64) * m_l + self.factors[l][0]
                inv, uniq = pd.factorize(key, sort=True)
                lk, ll = np.divmod(np.asarray(uniq, dtype=np.int64), m_l)
                self._pairs.append((k, l, inv, lk, ll))

    def pair_entry(self, j: int) -> np.ndarray:
        """The entry of pair block ``j`` (in :attr:`CrossProducts.pairs` order) of each row."""
        return self._pairs[j][2]

    def cross_products(self, y: np.ndarray, weights: np.ndarray | None = None) -> CrossProducts:
        """The cross-products of ``[X y]`` under row weights ``weights`` (one stratum).

        Equal to :func:`cross_products` on the same rows (to rounding).
        """
        y = np.asarray(y, dtype=float)
        w = np.ones(self.n) if weights is None else np.asarray(weights, dtype=float)
        p = self.X.shape[1]
        xy = np.empty((self.n, p + 1))
        xy[:, :p] = self.X
        xy[:, p] = y
        wxy = xy * w[:, None]
        diag, zxy = [], []
        for (codes, Z), term, zt in zip(self.factors, self.terms, self._zt):
            q = Z.shape[1]
            blocks = zt @ np.hstack([Z * w[:, None], wxy])  # (m q, q + p + 1)
            per_level = blocks.reshape(term.n_levels, q, q + p + 1).transpose(1, 2, 0)
            diag.append(np.ascontiguousarray(per_level[:, :q])[None])
            zxy.append(np.ascontiguousarray(per_level[:, q:])[None])
        pairs = []
        for k, l, inv, lk, ll in self._pairs:
            Zk, Zl = self.factors[k][1], self.factors[l][1]
            values = np.empty((lk.size, Zk.shape[1], Zl.shape[1]))
            for a in range(Zk.shape[1]):
                za = Zk[:, a] * w
                for b in range(Zl.shape[1]):
                    values[:, a, b] = np.bincount(inv, za * Zl[:, b], minlength=lk.size)
            pairs.append(PairBlock(k, l, lk, ll, values[None]))
        return CrossProducts(
            terms=self.terms,
            diag=tuple(diag),
            zxy=tuple(zxy),
            pairs=tuple(pairs),
            xyxy=(xy.T @ wxy)[None],
            n_obs=np.array([self.n]),
            sum_log_weights=np.array([float(np.log(w).sum()) if weights is not None else 0.0]),
            counts=self.counts,
        )


def _stack_strata(parts: Sequence[CrossProducts]) -> CrossProducts:
    """Stack one-stratum cross-products of the same coding on the stratum axis.

    Pair blocks are put on the union of the strata's level pairs (zeros where a stratum
    has no row of that pair), so that combining strata is a weighted sum of arrays.
    """
    first = parts[0]
    pairs = []
    for j, block in enumerate(first.pairs):
        blocks = [p.pairs[j] for p in parts]
        m_l = first.terms[block.l].n_levels
        union = _coalesce(block.k, block.l, np.concatenate([b.level_k for b in blocks]),
                          np.concatenate([b.level_l for b in blocks]),
                          np.concatenate([b.values for b in blocks], axis=1), m_l)
        key_union = union.level_k * m_l + union.level_l
        values = np.zeros((len(parts),) + union.values.shape[1:])
        for s, b in enumerate(blocks):
            values[s, np.searchsorted(key_union, b.level_k * m_l + b.level_l)] = b.values[0]
        pairs.append(dataclasses.replace(union, values=values))
    return CrossProducts(
        terms=first.terms,
        diag=tuple(np.concatenate([p.diag[k] for p in parts]) for k in range(len(first.diag))),
        zxy=tuple(np.concatenate([p.zxy[k] for p in parts]) for k in range(len(first.zxy))),
        pairs=tuple(pairs),
        xyxy=np.concatenate([p.xyxy for p in parts]),
        n_obs=np.concatenate([p.n_obs for p in parts]),
        sum_log_weights=np.concatenate([p.sum_log_weights for p in parts]),
        counts=tuple(sum(p.counts[k] for p in parts) for k in range(len(first.counts))),
        origin=first.origin,
    )


# ---- the response-dependent part, for many responses -----------------------------------------


@dataclass(frozen=True)
class ResponseProducts:
    """The response-dependent cross-products of ``k`` responses on one design.

    Attributes
    ----------
    zy : tuple of ndarray, each (S, q_k, k, m_k)
        ``Z_kl' W y`` per level, per response.
    xy : ndarray of shape (S, p, k)
        ``X'W y``.
    yy : ndarray of shape (S, k)
        ``y'W y``.
    """

    zy: tuple
    xy: np.ndarray
    yy: np.ndarray

    @property
    def n_responses(self) -> int:
        return self.yy.shape[1]


class ResponseMap:
    """``y -> (Z_k'W y per level, X'W y, y'W y)`` per stratum, for a fixed design.

    The linear part is one sparse operator built once (a row per stratum, term, column of
    ``Z_k`` and level, then per stratum and column of ``X``), so the products of a batch
    of responses ``Y`` (n, k) are one sparse-dense product; ``y'W y`` is the stratum sums
    of ``w Y**2``. With :meth:`CrossProducts.with_response` this replaces the pass over
    the rows when only the response changes.

    Parameters
    ----------
    X : ndarray of shape (n, p)
        The fixed-effects columns of the model (intercept included when ``intercept``
        is False; aliased columns already dropped).
    factors, terms, weights, strata, n_strata, intercept
        As in :func:`cross_products`.
    """

    def __init__(self, X: np.ndarray, factors: Sequence[tuple[np.ndarray, np.ndarray]], terms: Terms,
                 weights: np.ndarray | None = None, strata: np.ndarray | None = None,
                 n_strata: int = 1, intercept: bool = False) -> None:
        X = np.asarray(X, dtype=float)
        n = X.shape[0]
        if intercept:
            X = np.column_stack([np.ones(n), X])
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        s = np.zeros(n, dtype=np.int64) if strata is None or n_strata == 1 else np.asarray(strata, np.int64)
        S = n_strata if strata is not None else 1
        self.shapes = [(t.q, t.n_levels) for t in terms]
        self.n_strata, self.p, self.n = S, X.shape[1], n
        rows, cols, values = [], [], []
        offset = 0
        all_rows = np.arange(n)
        for (codes, Z), term in zip(factors, terms):
            q, m = term.q, term.n_levels
            for a in range(q):
                rows.append(offset + (s * q + a) * m + codes)
                cols.append(all_rows)
                values.append(w * Z[:, a])
            offset += S * q * m
        for a in range(self.p):
            rows.append(offset + s * self.p + a)
            cols.append(all_rows)
            values.append(w * X[:, a])
        self._linear = sp.csr_matrix(
            (np.concatenate(values) if values else np.empty(0),
             (np.concatenate(rows) if rows else np.empty(0, np.int64),
              np.concatenate(cols) if cols else np.empty(0, np.int64))),
            shape=(offset + S * self.p, n))
        self._squares = sp.csr_matrix((w, (s, all_rows)), shape=(S, n))

    def __call__(self, Y: np.ndarray) -> ResponseProducts:
        """The products of the responses ``Y`` (n,) or (n, k)."""
        Y = np.asarray(Y, dtype=float)
        Y = Y[:, None] if Y.ndim == 1 else Y
        k, S = Y.shape[1], self.n_strata
        lin = np.asarray(self._linear @ Y)
        zy, offset = [], 0
        for q, m in self.shapes:
            size = S * q * m
            zy.append(np.ascontiguousarray(lin[offset:offset + size].reshape(S, q, m, k).transpose(0, 1, 3, 2)))
            offset += size
        xy = lin[offset:].reshape(S, self.p, k)
        yy = np.asarray(self._squares @ (Y * Y))
        return ResponseProducts(tuple(zy), xy, yy)
