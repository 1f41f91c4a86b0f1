"""BLAS threads while the package computes.

A fit is a long string of small matrix products (``q x q`` per level, ``p x p``, dense
blocks of a few thousand rows). OpenBLAS splits even tiny products across its threads and
synchronises them by spinning; on a machine whose cores are busy (another process, a
cross-validation running folds in parallel) that made a 1,142-row Cholesky 30x and a
9 x 9 by 9 x 20,000 product 100x slower than on one thread (measured here). So the
package's numerical work runs with BLAS on one thread, and parallelism, where it pays,
comes from the package's own threads over blocks of levels.

OpenBLAS has no per-thread setting (``openblas_set_num_threads_local`` of the pthreads
build that numpy and scipy ship changes the global count: measured), so the limit is
process-wide while any fit runs. It is reference-counted under a lock: fits running in
several threads at once share one limit, and the last one to finish restores the
setting the first one found, so the process is left as it was.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from threadpoolctl import ThreadpoolController

__all__ = ["single_threaded_blas"]

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
