"""Batched algebra on many small matrices, the level index on the last axis.

A random-effects term with ``m`` levels and ``q`` effects per level gives ``m``
independent ``q x q`` blocks. They are stored as ``(q, q, m)`` arrays and every
operation below is a loop over the small dimension ``q`` acting on ``(m,)`` rows: for
``q <= 4`` this is an order of magnitude faster than stacked LAPACK calls, whose cost is
dominated by per-matrix overhead, and it never touches BLAS (so it needs no thread pool).

With the package's threads (``n_jobs``, :func:`._threads.level_threads`) each kernel
splits the levels into contiguous slices, one per thread: every level's arithmetic is the
same as on one thread, so the results are identical bit for bit.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ._threads import level_slices, run_in_threads

__all__ = [
    "left_matmul",
    "batched_cholesky",
    "batched_cholesky_inverse",
    "batched_logdet",
    "batched_matmul",
    "batched_solve_lower",
    "batched_solve_lower_t",
    "batched_sandwich",
]


# Columns per BLAS call in :func:`left_matmul`. A product of a tiny matrix with a very
# wide one is split by OpenBLAS across threads, which on a machine whose cores are busy
# made it 100x slower (measured: 16 ms instead of 0.13 ms for 9 x 9 times 9 x 20000).
# Calls this narrow stay on the calling thread and in cache.
_CHUNK = 2048


def _per_slice(serial, out: np.ndarray, *arrays: np.ndarray) -> np.ndarray | None:
    """``out[..., s] = serial(*arrays[..., s])`` for the threads' slices of the levels (the
    last axis); None (nothing done) when the work stays on one thread."""
    slices = level_slices(out.shape[-1])
    if slices is None:
        return None

    def job(s: slice) -> None:
        out[..., s] = serial(*(a[..., s] for a in arrays))

    run_in_threads([partial(job, s) for s in slices])
    return out


def left_matmul(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``A @ B`` over the first axis of ``B`` (any trailing shape), for a small ``A``.

    Parameters
    ----------
    A : ndarray of shape (a, b)
    B : ndarray of shape (b, ...)
    out : ndarray of shape (a, ...), optional
        Where to write the product (C-contiguous); it may be ``B`` itself (square ``A``):
        each block of columns is read before it is written.

    Returns
    -------
    ndarray of shape (a, ...)
    """
    rest = B.shape[1:]
    flat = B.reshape(B.shape[0], -1)
    if out is None:
        out = np.empty((A.shape[0], flat.shape[1]))
    else:
        if not out.flags.c_contiguous:
            raise ValueError("left_matmul's out must be C-contiguous")
        out = out.reshape(A.shape[0], -1)  # a view of the caller's array
    starts = range(0, flat.shape[1], _CHUNK)

    def columns(chunk: range) -> None:
        for start in chunk:
            np.matmul(A, flat[:, start:start + _CHUNK], out=out[:, start:start + _CHUNK])

    # the threads take runs of whole chunks: every product is the one a single thread makes
    slices = level_slices(flat.shape[1])
    if slices is None:
        columns(starts)
    else:
        bounds = [s.start // _CHUNK for s in slices] + [len(starts)]
        run_in_threads([partial(columns, starts[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a])
    return out.reshape((A.shape[0],) + rest)


def batched_cholesky(T: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of the (q, q) matrices ``T[:, :, l]``, column by column.

    A block that is not positive definite gives NaN (no exception): callers check
    :func:`batched_logdet` for finiteness where that can happen.
    """
    q = T.shape[0]
    C = np.zeros_like(T)
    if _per_slice(batched_cholesky, C, T) is not None:
        return C
    for j in range(q):
        d = T[j, j].copy()
        for k in range(j):
            d -= C[j, k] * C[j, k]
        np.sqrt(d, out=C[j, j])
        for i in range(j + 1, q):
            v = T[i, j].copy()
            for k in range(j):
                v -= C[i, k] * C[j, k]
            np.divide(v, C[j, j], out=C[i, j])
    return C


def batched_logdet(C: np.ndarray) -> float:
    """``sum_l log|C_l C_l'|`` from lower Cholesky factors (q, q, m)."""
    q = C.shape[0]
    return 2.0 * float(np.log(C[np.arange(q), np.arange(q)]).sum())


def batched_solve_lower(C: np.ndarray, B: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """``C^{-1} B`` for lower-triangular ``C`` (q, q, m) and ``B`` (q, ..., m)."""
    X = B if overwrite else B.copy()
    if _per_slice(partial(batched_solve_lower, overwrite=True), X, C, X) is not None:
        return X
    for j in range(C.shape[0]):
        for k in range(j):
            X[j] -= C[j, k] * X[k]
        X[j] /= C[j, j]
    return X


def batched_solve_lower_t(C: np.ndarray, B: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """``C'^{-1} B`` for lower-triangular ``C`` (q, q, m) and ``B`` (q, ..., m)."""
    X = B if overwrite else B.copy()
    if _per_slice(partial(batched_solve_lower_t, overwrite=True), X, C, X) is not None:
        return X
    for j in reversed(range(C.shape[0])):
        for k in range(j + 1, C.shape[0]):
            X[j] -= C[k, j] * X[k]
        X[j] /= C[j, j]
    return X


def batched_matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Per-level matrix product of (a, b, m) and (b, c, m) arrays (a loop over ``b``)."""
    m = max(A.shape[-1], B.shape[-1])
    if level_slices(m) is not None and A.shape[-1] == B.shape[-1]:
        out = np.empty((A.shape[0], B.shape[1], m))
        return _per_slice(batched_matmul, out, A, B)
    out = A[:, 0, None, :] * B[None, 0]
    for k in range(1, A.shape[1]):
        out += A[:, k, None, :] * B[None, k]
    return out


def batched_cholesky_inverse(C: np.ndarray) -> np.ndarray:
    """``(C C')^{-1}`` per level from lower-triangular factors ``C`` (q, q, m)."""
    q = C.shape[0]
    c_inv = batched_solve_lower(C, np.broadcast_to(np.eye(q)[:, :, None], C.shape))
    out = np.empty_like(C)
    for a in range(q):
        for b in range(a + 1):
            # c_inv is lower triangular: rows k >= a contribute
            v = c_inv[a, a] * c_inv[a, b]
            for k in range(a + 1, q):
                v = v + c_inv[k, a] * c_inv[k, b]
            out[a, b] = v
            out[b, a] = v
    return out


def batched_sandwich(lam: np.ndarray, S: np.ndarray, right: np.ndarray | None = None) -> np.ndarray:
    """``lam' S_l right`` for every level (``right`` defaults to ``lam``).

    ``lam`` (q, q) and ``right`` (q, r) are the same for all levels; ``S`` is (q, r, m) ...
    with the level last. One matrix product on ``vec(S)``: ``(right' kron lam') vec(S_l)``.
    """
    right = lam if right is None else right
    q, r = lam.shape[1], right.shape[1]
    kron = (lam.T[:, None, :, None] * right.T[None, :, None, :]).reshape(q * r, S.shape[0] * S.shape[1])
    return left_matmul(kron, S.reshape((S.shape[0] * S.shape[1],) + S.shape[2:])).reshape((q, r) + S.shape[2:])
