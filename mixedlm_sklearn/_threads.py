"""BLAS threads while the package computes.

A fit is a long string of small matrix products (``q x q`` per level, ``p x p``, dense
blocks of a few thousand rows). OpenBLAS splits even tiny products across its threads and
synchronises them by spinning; on a machine whose cores are busy (another process, a
cross-validation running folds in parallel) that made a 1,142-row Cholesky 30x and a
9 x 9 by 9 x 20,000 product 100x slower than on one thread (measured here). So the
package's numerical work runs with BLAS on one thread, and parallelism, where it pays,
comes from the package's own threads over blocks of levels and, for the Cholesky factor
and inverse of a large dense block, over its tiles (:mod:`._tiled`). Handing those two
LAPACK calls to OpenBLAS's own threads instead (the limit raised for each call) made fits
up to 11x slower at load 4-8 on 2 cores: its threads wait for each other by spinning.

OpenBLAS has no per-thread setting (``openblas_set_num_threads_local`` of the pthreads
build that numpy and scipy ship changes the global count: measured), so the limit is
process-wide while any fit runs. It is reference-counted under a lock: fits running in
several threads at once share one limit, and the last one to finish restores the
setting the first one found, so the process is left as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from typing import Iterator

import numpy as np
from threadpoolctl import ThreadpoolController

__all__ = ["single_threaded_blas", "level_threads", "level_slices", "n_level_threads", "run_in_threads"]

_lock = threading.Lock()
_depth = 0
_limiter = None
_controller: ThreadpoolController | None = None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the body with BLAS on one thread; nested and concurrent uses share one limit."""
    global _depth, _limiter, _controller
    with _lock:
        if _depth == 0:
            if _controller is None:  # inspecting the loaded libraries costs milliseconds: once
                _controller = ThreadpoolController()
            _limiter = _controller.limit(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _limiter.restore_original_limits()
                _limiter = None


# The package's own threads of the fit running in this context (``n_jobs``): a pool and its
# size, or None. A context variable, so that fits in other threads (cross-validation,
# bootstrap workers) each have their own, and the pool's workers, which do not inherit
# it, never split their work again.
_pool: ContextVar[tuple[ThreadPoolExecutor, int] | None] = ContextVar("mixedlm_level_pool",
                                                                       default=None)
# Fewest levels per thread: below this a slice's numpy calls cost more in overhead than
# the thread saves (each batched kernel is a few dozen numpy calls on (m,) rows). Measured
# on 2 cores: slices of 4096 levels made 10^5-10^6-row fits (5,000-20,000 levels) 1.1-1.25x
# slower; at 200,000 levels two slices made the optimiser 1.3x faster.
MIN_LEVELS_PER_THREAD = 65536


@contextmanager
def level_threads(n_threads: int) -> Iterator[None]:
    """Run the body with ``n_threads`` of the package's threads for the work over levels and
    rows (:func:`level_slices`, :func:`run_in_threads`); 1 runs everything on the caller's
    thread. The pool is this call's own and is shut down when it ends."""
    if n_threads <= 1:
        yield
        return
    with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="mixedlm") as pool:
        token = _pool.set((pool, n_threads))
        try:
            yield
        finally:
            _pool.reset(token)


def level_slices(m: int) -> list[slice] | None:
    """Contiguous slices of ``m`` levels, one per thread of :func:`level_threads`, or None
    when the work stays on the caller's thread (no pool, or too few levels to pay)."""
    ctx = _pool.get()
    if ctx is None:
        return None
    k = min(ctx[1], m // MIN_LEVELS_PER_THREAD)
    if k < 2:
        return None
    bounds = np.linspace(0, m, k + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def n_level_threads() -> int:
    """How many of the package's threads the fit in this context has (1 without a pool)."""
    ctx = _pool.get()
    return 1 if ctx is None else ctx[1]


def run_in_threads(jobs: list[Callable[[], object]]) -> list:
    """The results of ``jobs`` in their order, run by the pool of :func:`level_threads` (on
    the caller's thread without one). numpy and scipy release the GIL inside their loops,
    so the threads run at once; each job must write only its own output."""
    ctx = _pool.get()
    if ctx is None or len(jobs) < 2:
        return [job() for job in jobs]

    def in_callers_context(job: Callable[[], object]) -> Callable[[], object]:
        # numpy's errstate (the fit's handling of floating-point warnings) lives in the
        # context: each job runs in a copy of the caller's, without the pool (no nesting)
        context = copy_context()

        def run() -> object:
            def body() -> object:
                _pool.set(None)
                return job()
            return context.run(body)
        return run

    futures = [ctx[0].submit(in_callers_context(job)) for job in jobs]
    return [f.result() for f in futures]
