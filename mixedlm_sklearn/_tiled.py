"""The Cholesky factor and inverse of a large dense block on the package's threads.

A crossed design's rest block (:mod:`._factor`, :mod:`._rounds`: a dense core of a few
thousand items) is factored and inverted once per deviance; at orders in the thousands
these two LAPACK calls are most of a fit. With several threads (``n_jobs``,
:func:`._threads.level_threads`) they run here in tiles instead: the right-looking tiled
Cholesky factorisation and, for the inverse, ``L^{-1}`` by columns of tiles then
``L^{-T} L^{-1}`` by rows of tiles, each step a handful of matrix products that numpy runs
with the GIL released, spread over the fit's threads. BLAS stays on one thread: OpenBLAS's
own threads synchronise by spinning, and on this shared 2-core machine (load 4-8) raising
the BLAS limit for these two calls made the 2x10^5-row users x items GLMMs up to 11x and
the 10^6-row LMM 2-3.5x slower than one thread; the package's threads wait on a lock and
lose at most what the busy cores take from them. With tiles, those fits took 0.6-1.2x one
thread's time at load 1.8-6.6 (interleaved runs): no collapse, and no gain that the
noise of this shared machine lets one measure; the calls alone, 0.7-0.9x from order 1,399.

Each tile is computed by the same sequence of products whatever the number of threads, so
the results do not depend on it; they differ from LAPACK's one-thread calls (which the fit
uses with one thread) only in the order of the sums: rounding.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from ._threads import n_level_threads, run_in_threads

__all__ = ["dense_cholesky", "dense_cholesky_inverse", "MIN_TILED_ORDER", "TILE"]

# Smallest order factored and inverted in tiles on the fit's threads, and the tiles' size.
# Measured on 2 cores (OpenBLAS 0.3.30; potrf + potri, best of 7, one other busy process):
# LAPACK on one thread against two threads over tiles of 256 took 0.041 s / 0.050 s at
# order 1,000, 0.091 / 0.079 s at 1,399 and 0.67 / 0.45 s at 3,291 (two OpenBLAS threads:
# 1.8 s, 0.91 s and 0.36 s). Tiles of 128-350 at order 1,399: 256 the fastest inverse. One
# thread runs the tiles 1.2-2x slower than LAPACK (extra products on the diagonal tiles,
# solves as products with the diagonal tiles' inverses), hence LAPACK with one thread.
MIN_TILED_ORDER = 1200
TILE = 256


def _bounds(n: int, tile: int) -> np.ndarray:
    count = max(1, round(n / tile))
    return np.linspace(0, n, count + 1).astype(int)


def _tiled() -> bool:
    return n_level_threads() > 1


def dense_cholesky(S: np.ndarray) -> tuple[np.ndarray, int]:
    """``U`` with ``S = U'U`` from the lower triangle of the C-ordered ``S`` (overwritten).

    LAPACK's ``dpotrf`` on the Fortran view ``S'`` (so ``U`` is that view of ``L'``, ``S = L
    L'``), or, in a fit with several threads and ``S`` of order
    :data:`MIN_TILED_ORDER` or more, the tiled factorisation; ``info`` as LAPACK's (0, or
    the order of the leading minor that is not positive definite).
    """
    n = S.shape[0]
    if n < MIN_TILED_ORDER or not _tiled():
        return lapack.dpotrf(S.T, lower=0, overwrite_a=1, clean=1)
    if not S.flags.c_contiguous:
        S = np.ascontiguousarray(S)
    info = _tiled_cholesky(S, _bounds(n, TILE))
    return S.T, info


def dense_cholesky_inverse(U: np.ndarray) -> tuple[np.ndarray, int]:
    """``S^{-1}`` from :func:`dense_cholesky`'s ``U``, in the upper triangle of the
    Fortran-ordered result (LAPACK's ``dpotri``; its transpose's lower triangle in C
    order), the rest not to be read; tiled as :func:`dense_cholesky`."""
    n = U.shape[0]
    if n < MIN_TILED_ORDER or not _tiled():
        return lapack.dpotri(U, lower=0)
    L = np.array(U.T, order="C")  # a copy: the factor is read again after the inverse
    return _tiled_inverse(L, _bounds(n, TILE)).T, 0


def _tiled_cholesky(A: np.ndarray, b: np.ndarray) -> int:
    """Right-looking tiled Cholesky factorisation of ``A``'s lower triangle, in place (C
    order, lower; the upper triangle set to 0). Per diagonal tile ``k``: its factor
    ``L_kk`` (LAPACK), the column of tiles below it times ``L_kk^{-T}`` (one product per
    tile row, on the threads), then the trailing rows minus the products of that column
    (one product per tile row, on the threads)."""
    T = b.size - 1
    for k in range(T):
        kk = slice(b[k], b[k + 1])
        Lkk, info = lapack.dpotrf(A[kk, kk], lower=1, clean=1)
        if info:
            return int(b[k] + info)
        A[kk, kk] = Lkk
        A[b[k]:b[k + 1], b[k + 1]:] = 0.0
        if k == T - 1:
            break
        inv_t = lapack.dtrtri(Lkk, lower=1)[0].T  # L_kk^{-T}: the column's solves as products
        rows = [slice(b[i], b[i + 1]) for i in range(k + 1, T)]

        def panel(r: slice) -> None:
            A[r, kk] = A[r, kk] @ inv_t

        def trailing(i: int) -> None:
            # row of tiles i from column k + 1 to its diagonal (whose upper part is
            # computed too and cleared when that tile is factored)
            r, cols = slice(b[i], b[i + 1]), slice(b[k + 1], b[i + 1])
            A[r, cols] -= A[r, kk] @ A[cols, kk].T

        run_in_threads([lambda r=r: panel(r) for r in rows])
        # the largest rows first, so that the threads end together
        run_in_threads([lambda i=i: trailing(i) for i in range(T - 1, k, -1)])
    return 0


def _tiled_inverse(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The lower triangle (C order) of ``(L L')^{-1} = X'X``, ``X = L^{-1}``, for the lower
    factor ``L`` (C order; its memory is reused for the result).

    ``X`` by columns of tiles, each on a thread (a column's tiles depend only on its own
    earlier ones: ``X_ij = -X_ii sum_{j<=k<i} L_ik X_kj``, the diagonal tiles' inverses
    first), then ``X'X`` by rows of tiles (``(X'X)_ij = sum_{k>=i} X_ki' X_kj``, ``j <= i``).
    """
    T = b.size - 1
    tiles = [slice(b[i], b[i + 1]) for i in range(T)]
    diag_inv = [lapack.dtrtri(L[t, t], lower=1)[0] for t in tiles]
    X = np.zeros_like(L)

    def column(j: int) -> None:
        jj = tiles[j]
        X[jj, jj] = diag_inv[j]
        for i in range(j + 1, T):
            X[tiles[i], jj] = -diag_inv[i] @ (L[tiles[i], b[j]:b[i]] @ X[b[j]:b[i], jj])

    run_in_threads([lambda j=j: column(j) for j in range(T)])  # the longest (left) first
    out = L  # no longer read: the lower triangle of X'X goes into its memory

    def row(i: int) -> None:
        out[tiles[i], :b[i + 1]] = X[b[i]:, tiles[i]].T @ X[b[i]:, :b[i + 1]]

    work = [(int(b[T] - b[i]) * int(b[i + 1]), i) for i in range(T)]
    run_in_threads([lambda i=i: row(i) for _, i in sorted(work, reverse=True)])
    return out
