"""Per-group sufficient statistics of the linear mixed model.

Everything the profiled likelihood needs is a function of a few cross-products:
per group ``Z_i'Z_i``, ``Z_i'X_i``, ``Z_i'y_i`` and the totals ``X'X``, ``X'y``, ``y'y``,
``n`` (Bates et al. 2015, JSS 67(1), sec. 3). They are computed in one pass over the
rows and they *add*: statistics of two chunks of rows (or two Dask partitions) with the
same group coding sum to the statistics of their union. That is what lets a fit scale with
the number of groups rather than the number of rows.

Layout: the group index is the last axis (``(q, q, m)`` and ``(q, p + 1, m)``), so the
deviance can update all groups with a handful of vectorised operations on ``(m,)`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["GroupStats", "compute_stats"]

# Rows per block in the statistics pass. Each block's sparse product writes a dense
# (groups * q, k) result, so a block must hold at least about groups * q rows for that
# cost to stay proportional to the rows; the cap bounds the temporaries (~0.5 GB).
_MIN_BLOCK_ROWS = 1 << 17
_MAX_BLOCK_ROWS = 1 << 22


@dataclass
class GroupStats:
    """Additive sufficient statistics for one grouping factor.

    Attributes
    ----------
    ztz : ndarray of shape (q, q, m)
        ``Z_i' W_i Z_i`` per group (``W_i`` the prior row weights, identity by default).
    ztxy : ndarray of shape (q, p + 1, m)
        ``Z_i' W_i [X_i, y_i]`` per group; the last column is ``Z_i' W_i y_i``.
    xyxy : ndarray of shape (p + 1, p + 1)
        ``[X, y]' W [X, y]`` over all rows.
    counts : ndarray of shape (m,)
        Number of rows per group.
    n_obs : int
        Number of rows.
    sum_log_weights : float
        ``sum(log w_r)``; enters the log-likelihood of a weighted fit.
    """

    ztz: np.ndarray
    ztxy: np.ndarray
    xyxy: np.ndarray
    counts: np.ndarray
    n_obs: int
    sum_log_weights: float = 0.0

    @property
    def n_groups(self) -> int:
        return self.ztz.shape[2]

    @property
    def n_re(self) -> int:
        return self.ztz.shape[0]

    @property
    def n_fe(self) -> int:
        return self.xyxy.shape[0] - 1

    def __add__(self, other: "GroupStats") -> "GroupStats":
        return GroupStats(
            self.ztz + other.ztz,
            self.ztxy + other.ztxy,
            self.xyxy + other.xyxy,
            self.counts + other.counts,
            self.n_obs + other.n_obs,
            self.sum_log_weights + other.sum_log_weights,
        )


def compute_stats(
    X: np.ndarray,
    y: np.ndarray,
    Z: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    weights: np.ndarray | None = None,
    intercept: bool = False,
) -> GroupStats:
    """One pass over the rows: the statistics of ``(X, y, Z)`` grouped by ``codes``.

    Parameters
    ----------
    X : ndarray of shape (n, p)
    y : ndarray of shape (n,)
    Z : ndarray of shape (n, q)
    codes : int ndarray of shape (n,)
        Group index of each row, in ``[0, n_groups)``.
    n_groups : int
    weights : ndarray of shape (n,), optional
        Prior weights (residual variance of row r is ``scale / w_r``).
    intercept : bool
        Prepend a column of ones to ``X`` (block by block, so X is never copied whole).

    Returns
    -------
    GroupStats
    """
    n, p = X.shape
    p += int(intercept)
    q = Z.shape[1]
    k = q + p + 1
    zw = np.zeros((n_groups * q, k))
    xyxy = np.zeros((p + 1, p + 1))
    counts = np.bincount(codes, minlength=n_groups)
    block_rows = int(min(max(_MIN_BLOCK_ROWS, 2 * n_groups * q), _MAX_BLOCK_ROWS))
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        rows = stop - start
        # [Z, X, y] of the block in one buffer: the right-hand side of the sparse product
        block = np.empty((rows, k))
        zb, xyb = block[:, :q], block[:, q:]
        zb[:] = Z[start:stop]
        if intercept:
            xyb[:, 0] = 1.0
        xyb[:, int(intercept):p] = X[start:stop]
        xyb[:, p] = y[start:stop]
        if weights is not None:
            block *= np.sqrt(weights[start:stop])[:, None]
        # Row r of the block-sparse Z has its q entries in columns codes[r]*q + (0..q-1);
        # Z_blocks' @ [Z, X, y] then yields every per-group cross-product in one product.
        index_type = np.int32 if n_groups * q < 2**31 else np.int64  # scipy's own index type
        cols = (codes[start:stop, None].astype(index_type) * q + np.arange(q, dtype=index_type)).ravel()
        z_values = zb.ravel() if weights is not None else np.ascontiguousarray(Z[start:stop]).ravel()
        z_blocks = sp.csr_matrix(
            (z_values, cols, np.arange(0, rows * q + 1, q, dtype=index_type)),
            shape=(rows, n_groups * q),
        )
        zw += z_blocks.T @ block
        xyxy += xyb.T @ xyb
    per_group = zw.reshape(n_groups, q, k).transpose(1, 2, 0)
    sum_log_w = float(np.log(weights).sum()) if weights is not None else 0.0
    return GroupStats(
        ztz=np.ascontiguousarray(per_group[:, :q, :]),
        ztxy=np.ascontiguousarray(per_group[:, q:, :]),
        xyxy=xyxy,
        counts=counts,
        n_obs=n,
        sum_log_weights=sum_log_w,
    )


class StatsAccumulator:
    """Sums statistics whose groups are known by label, each part with its own coding.

    Chunks of rows or Dask partitions see different subsets of the groups. Each part is
    reduced to statistics over its own groups; this adds them into running totals indexed
    by label, so memory stays proportional to the number of groups, never the rows.
    """

    def __init__(self) -> None:
        self._labels: list[np.ndarray] = []
        self._index = None
        self._total: GroupStats | None = None
        self._size = 0
        self._kind = ""

    def add(self, labels: np.ndarray, part: GroupStats) -> None:
        import pandas as pd

        from ._validation import canonical_labels, label_kind

        if self._total is not None and label_kind(labels) != self._kind:
            # parts whose labels came with different types (int ids in one chunk, str in
            # another): one canonical form, so that no group is split in two
            known, labels = canonical_labels([np.asarray(self._index, dtype=object), labels])
            self._index = pd.Index(known, dtype=object)
            self._kind = label_kind(self._index)
        if self._total is None:
            self._kind = label_kind(labels)
            self._index = pd.Index(labels)
            self._total = GroupStats(part.ztz.copy(), part.ztxy.copy(), part.xyxy.copy(),
                                     part.counts.copy(), part.n_obs, part.sum_log_weights)
            self._size = labels.size
            return
        if part.ztz.shape[0] != self._total.ztz.shape[0] or part.xyxy.shape != self._total.xyxy.shape:
            raise ValueError("chunks have different numbers of columns")
        idx = self._index.get_indexer(labels)
        new = idx < 0
        if new.any():
            idx[new] = self._size + np.arange(new.sum())
            self._index = self._index.append(pd.Index(labels[new]))
            self._kind = label_kind(self._index)
            self._grow(self._size + int(new.sum()))
        t = self._total
        t.ztz[:, :, idx] += part.ztz
        t.ztxy[:, :, idx] += part.ztxy
        t.counts[idx] += part.counts
        t.xyxy += part.xyxy
        t.n_obs += part.n_obs
        t.sum_log_weights += part.sum_log_weights

    def _grow(self, size: int) -> None:
        t = self._total
        capacity = t.counts.size
        if size > capacity:
            extra = max(size, 2 * capacity) - capacity
            pad = lambda a: np.concatenate([a, np.zeros(a.shape[:-1] + (extra,), a.dtype)], axis=-1)
            t.ztz, t.ztxy, t.counts = pad(t.ztz), pad(t.ztxy), pad(t.counts)
        self._size = size

    def result(self) -> tuple[np.ndarray, GroupStats]:
        """Sorted labels and the statistics in that order (as an in-memory fit codes them)."""
        if self._total is None:
            raise ValueError("no data: every chunk was empty (or had only rows of weight 0)")
        t, size = self._total, self._size
        try:
            labels, order = self._index.sort_values(return_indexer=True)
        except TypeError:  # unorderable mixed labels: keep order of appearance
            labels, order = self._index, np.arange(size)
        stats = GroupStats(
            np.ascontiguousarray(t.ztz[:, :, :size][:, :, order]),
            np.ascontiguousarray(t.ztxy[:, :, :size][:, :, order]),
            t.xyxy,
            t.counts[:size][order],
            t.n_obs,
            t.sum_log_weights,
        )
        return np.asarray(labels, dtype=object), stats
