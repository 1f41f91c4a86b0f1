"""Checks that a model can be fitted to these data, on its cross-products and designs.

Each refuses, with a message that says what to change, what would otherwise end as a NaN,
an unbounded likelihood or a LinAlgError inside the solver: a response reproduced
exactly, a random-effects column with nothing to estimate, more effects than rows, a
residual variance that collapses, cross-products that overflow.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import linalg

from ._validation import caller_stacklevel

__all__ = ["check_response", "check_random_design", "check_counts", "EXACT_FIT_MAX_COLUMNS",
           "check_exact_fit", "check_stratum_exact_fit", "check_residual_variance", "check_cross_products", "least_squares_reml"]


def check_response(xyxy: np.ndarray) -> None:
    """Refuse a response that the fixed effects reproduce exactly (e.g. a constant y).

    ``xyxy`` is ``[X, y]'[X, y]``. The residual variance would be 0 and the likelihood
    unbounded.
    """
    p = xyxy.shape[0] - 1
    xtx, xty, yty = xyxy[:p, :p], xyxy[:p, p], xyxy[p, p]
    beta = linalg.lstsq(xtx, xty)[0]
    rss = yty - xty @ beta
    if rss <= 1e-12 * max(yty, np.finfo(float).tiny):
        raise ValueError(
            "y is constant or an exact linear function of X: the residual variance would be 0"
        )


def check_random_design(ztz: np.ndarray, counts: np.ndarray, names: Sequence[str]) -> None:
    """Refuse random-effects designs whose covariance cannot be estimated.

    ``ztz`` holds one term's ``Z_l'Z_l`` per level (q, q, m) and ``counts`` its rows per
    level. A column of zeros has no variance to estimate. Columns that are linearly
    dependent in every row (two of them proportional with the same ratio in every group,
    e.g. a slope on a covariate that takes one value everywhere next to a random
    intercept) leave the covariance unidentified: only the variance of their combination
    enters the model. Columns that are proportional within each group but with a ratio
    that differs between groups (a slope on a covariate constant within each group, as
    lme4's ``(cHEIGHT | LOCATION)`` on grouseticks) are identified between the groups:
    the group effect's variance is a quadratic in the covariate. Such a term is fitted
    (each level's ``Z_l'Z_l`` is then singular, which the penalised factorisation
    ``Lambda'Z'Z Lambda + I`` does not mind).
    """
    q = ztz.shape[0]
    diag = ztz[np.arange(q), np.arange(q)]
    zero = diag.sum(axis=1) == 0
    if zero.any():
        raise ValueError(f"Z column(s) {[names[j] for j in np.flatnonzero(zero)]} are all zeros")
    if q < 2:
        return
    pooled = ztz.sum(axis=2)
    scale = np.sqrt(np.diag(pooled))
    A = pooled / np.outer(scale, scale)
    # a Cholesky factorisation of the scaled Z'Z that keeps the earlier columns: d_j is
    # the squared sine of column j's angle with the span of the columns before it
    kept: list[int] = []
    factor = np.zeros((q, q))
    for j in range(q):
        k = len(kept)
        w = (linalg.solve_triangular(factor[:k, :k], A[kept, j], lower=True, check_finite=False)
             if k else np.zeros(0))
        d_j = A[j, j] - w @ w
        if d_j > 1e-10:
            factor[k, :k] = w
            factor[k, k] = np.sqrt(d_j)
            kept.append(j)
            continue
        pair = [c for c in kept if A[j, c] ** 2 >= 1.0 - 1e-10]
        if pair:
            raise ValueError(
                f"Z columns {names[pair[0]]!r} and {names[j]!r} are proportional with the same "
                "ratio in every group (e.g. a random slope on a covariate that takes one value "
                "everywhere, next to a random intercept); their random effects are not "
                "identifiable: drop one of them"
            )
        raise ValueError(
            f"Z column {names[j]!r} is a linear combination of the columns "
            f"{[names[c] for c in kept]} in every row; their random effects are not "
            "identifiable: drop one of them"
        )


def check_counts(n_obs: int, levels: dict[str, int], n_random: int) -> None:
    """lme4's identifiability checks on counts (``check.nobs.vs.nlev``, ``check.nobs.vs.nRE``).

    With as many levels as rows a random intercept cannot be told from the residual;
    with as many random effects as rows the variances are not identified.
    """
    for name, m in levels.items():
        if m >= n_obs:
            raise ValueError(
                f"grouping factor {name!r} has {m} levels for {n_obs} observations: the number "
                "of levels must be smaller than the number of observations (one row per group "
                "confounds the random effect with the residual)"
            )
    if n_random >= n_obs:
        raise ValueError(
            f"{n_random} random effects for {n_obs} observations: the number of observations "
            "must exceed the number of random effects"
        )


#: Largest number of fixed plus random effects for which :func:`check_exact_fit` forms
#: ``[X Z]`` densely: an SVD of at most ``(p + N) x (p + N)``, measured 0.4 s at 500 (3.6 s
#: at 1,000) on a shared 2-core machine at load 6.
EXACT_FIT_MAX_COLUMNS = 500


def check_exact_fit(X: np.ndarray, factors: Sequence[tuple[np.ndarray, np.ndarray]],
                    n_levels: Sequence[int]) -> None:
    """Refuse a model whose fixed and random effects can reproduce any response exactly.

    With ``n <= p + N`` rows (``p`` fixed, ``N`` random effects) the columns of ``[X Z]``
    may span every direction of the ``n`` observations. Then ``y = X b + Z u`` exactly for
    some ``b`` and ``u``, the residual variance can go to 0 and the likelihood is unbounded
    (lme4's ``check.nobs.vs.rankZ``, off by default, compares ``n`` with the rank of ``Z``
    alone). Decided from the
    rank of ``[X Z]`` on the rows, columns scaled to unit length (so no unit of a column
    decides it), with numpy's tolerance. Fits with fewer effects than rows, or more columns
    than :data:`EXACT_FIT_MAX_COLUMNS`, are left to :func:`check_residual_variance`, as
    are data whose rows are not at hand (chunks, Dask).

    Parameters
    ----------
    X : ndarray of shape (n, p)
        The fixed-effects columns fitted (intercept included, aliased columns dropped).
    factors : sequence of (codes, Z)
        Per random-effects term: the level of each row and the term's ``(n, q)`` design.
    n_levels : sequence of int
        Levels per term.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.column_stack([np.ones(4), [0.1, 0.5, 0.2, 0.9]])
    >>> check_exact_fit(X, [(np.array([0, 0, 1, 1]), np.ones((4, 1)))], [2])  # rank 3 < 4
    >>> check_exact_fit(X, [(np.array([0, 0, 1, 1]), np.column_stack([np.ones(4), [1, 2, 2, 3]]))],
    ...                 [2])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: 4 observations for 2 fixed and 4 random effects: ...
    """
    n, p = X.shape
    N = sum(int(m) * Z.shape[1] for (_, Z), m in zip(factors, n_levels))
    if n > p + N or p + N > EXACT_FIT_MAX_COLUMNS:
        return
    if _rank(_dense_design(X, factors, n_levels)) >= n:
        raise ValueError(
            f"{n} observations for {p} fixed and {N} random effects: the fixed and random "
            "effects can reproduce any response exactly (the columns of [X Z] span all "
            f"{n} observations), so the residual variance would be 0 and the likelihood "
            "unbounded; use more observations or fewer fixed or random effects"
        )


def _dense_design(X: np.ndarray, factors: Sequence[tuple[np.ndarray, np.ndarray]],
                  n_levels: Sequence[int]) -> np.ndarray:
    """``[X Z]`` as one dense matrix (random effects term by term, level by level)."""
    n, p = X.shape
    sizes = [int(m) * Z.shape[1] for (_, Z), m in zip(factors, n_levels)]
    Y = np.zeros((n, p + sum(sizes)))
    Y[:, :p] = X
    start, rows = p, np.arange(n)[:, None]
    for (codes, Z), size in zip(factors, sizes):
        q = Z.shape[1]
        Y[rows, start + codes[:, None] * q + np.arange(q)] = Z
        start += size
    return Y


def _rank(A: np.ndarray) -> int:
    """Rank with the columns scaled to unit length (no unit of a column decides it)."""
    norms = np.linalg.norm(A, axis=0)
    return int(np.linalg.matrix_rank(A / np.where(norms > 0, norms, 1.0))) if A.size else 0


def check_stratum_exact_fit(X: np.ndarray, y: np.ndarray,
                            factors: Sequence[tuple[np.ndarray, np.ndarray]],
                            n_levels: Sequence[int], strata: np.ndarray,
                            labels: Sequence, reml: bool = True) -> None:
    """Refuse residual strata whose variance has no finite estimate: rows the fixed and
    random effects reproduce exactly, with directions left over.

    With a residual variance per stratum, let stratum ``s``'s variance go to 0. Where
    ``y_s`` lies in the span of ``[X_s Z_s]`` (``y_s - X_s b = Z_s u`` for some ``b``,
    ``u``), the residual stays out of the directions of the stratum's rows that the
    random effects leave free, ``n_s - rank(Z_s)`` of them, along which ``log|V|`` goes
    to minus infinity: the likelihood is unbounded when there is one. REML's
    ``log|X'V^{-1}X|`` rises along those of them that ``X`` reaches, so the REML
    criterion is unbounded only when ``rank([X_s Z_s]) < n_s``. A residual correlation
    within groups does not change this: the stratum's rows decouple as its variance goes
    to 0. Whether the optimiser runs down that ridge or stops at a local optimum beside it
    depends on rounding (the same data gave either on two machines), so the design is
    checked before the fit. Only strata with at most as many rows as columns of
    ``[X_s Z_s]`` (at most :data:`EXACT_FIT_MAX_COLUMNS`) are checked: with more rows,
    ``y_s`` in that span is a property of particular data (``y`` constant within groups),
    left to :func:`check_residual_variance`.

    Parameters
    ----------
    X : ndarray of shape (n, p)
        Fixed-effects design (with the intercept column).
    y : ndarray of shape (n,)
        Response.
    factors : sequence of (codes, Z)
        Level codes and random-effects design per term.
    n_levels : sequence of int
        Levels per term.
    strata : ndarray of shape (n,)
        Stratum code of each row.
    labels : sequence
        Stratum labels, for the message.
    reml : bool, default=True
        Whether the fit is by REML.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.repeat([0, 1, 2], 3)
    >>> X = np.column_stack([np.ones(9), np.arange(9.0)])
    >>> y = np.array([0.3, 1.2, -0.4, 2.0, 0.1, 0.8, -1.1, 0.5, 0.9])
    >>> Z = np.ones((9, 1))  # a random intercept
    >>> strata = np.array([0, 0, 1, 0, 0, 1, 0, 1, 1])  # stratum 'b': 1, 1 and 2 rows per group
    >>> check_stratum_exact_fit(X, y, [(g, Z)], [3], strata, ["a", "b"], reml=True)  # bounded
    >>> check_stratum_exact_fit(X, y, [(g, Z)], [3], strata, ["a", "b"], reml=False)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the residual variance of stratum 'b' has no finite estimate: ...
    """
    for s, label in enumerate(labels):
        rows = np.flatnonzero(strata == s)
        n_s = rows.size
        if n_s < 2 or n_s > EXACT_FIT_MAX_COLUMNS:
            continue
        # the stratum's own levels: [X Z] on its rows without the columns of other levels
        local = [np.unique(codes[rows], return_inverse=True) for codes, _ in factors]
        n_columns = X.shape[1] + sum(u.size * Z.shape[1] for (u, _), (_, Z) in zip(local, factors))
        if n_columns < n_s:
            continue
        Zs = _dense_design(np.zeros((n_s, 0)), [(inv, Z[rows]) for (_, inv), (_, Z)
                                                 in zip(local, factors)], [u.size for u, _ in local])
        Ys = np.column_stack([X[rows], Zs])
        rank = _rank(Ys)
        if _rank(np.column_stack([Ys, y[rows]])) > rank:
            continue  # y_s is not in the span: the residual reaches every free direction
        free = n_s - (rank if reml else _rank(Zs))
        if free > 0:
            raise ValueError(
                f"the residual variance of stratum {label!r} has no finite estimate: the fixed "
                f"and random effects reproduce that stratum's {n_s} rows exactly (y in the span "
                "of [X Z] on them, with a direction no random effect covers), so the "
                f"{'REML criterion' if reml else 'likelihood'} grows without bound as that "
                "variance goes to 0; merge the stratum with another, or simplify the random "
                "effects")


def check_residual_variance(scale: float, xyxy: np.ndarray, n_obs: int,
                            strata: dict | None = None, rounding: float = 0.0) -> None:
    """Refuse a fit whose residual variance collapsed to 0 (an unbounded likelihood).

    ``rounding`` is the size of a rounding error in ``scale`` (see
    :meth:`._deviance.Deviance.rounding_of_scale`): a residual variance within 1000 of
    those, or below 1e-20 of the least-squares one, means y was reproduced exactly. Data
    with a real residual SD of 1e-6 of the group effects are fitted. ``strata`` (label ->
    residual variance) checks each stratum's: a stratum whose rows the fixed and random
    effects reproduce exactly has no finite optimum.
    """
    p = xyxy.shape[0] - 1
    beta = linalg.lstsq(xyxy[:p, :p], xyxy[:p, p])[0]
    ols_scale = (xyxy[p, p] - xyxy[:p, p] @ beta) / max(n_obs - p, 1)
    floor = max(1e-20 * ols_scale, 1e3 * rounding)
    if not scale > floor:
        raise ValueError(
            f"the residual variance is 0: with {n_obs} observations the fixed and random "
            "effects reproduce y exactly within every group (e.g. y constant within each "
            "group), so the likelihood is unbounded"
        )
    collapsed = [label for label, var in (strata or {}).items() if not var > floor]
    if collapsed:
        raise ValueError(
            f"the residual variance of stratum(s) {collapsed} is 0: the fixed and random effects "
            "reproduce those rows exactly, so the likelihood is unbounded (merge such a stratum "
            "with another, or simplify the model)"
        )


def check_cross_products(*arrays: np.ndarray) -> None:
    """Refuse data whose cross-products overflow double precision (values beyond ~1e154)."""
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError(
            "the cross-products of the data overflow double precision (values beyond about "
            "1e154): rescale y, X or Z, e.g. divide by a power of 10"
        )


def least_squares_reml(reml: bool, n_obs: int, n_fixed: int) -> bool:
    """Whether a fit without random effects can use REML.

    REML needs residual degrees of freedom (``n > p``). Least squares with as many rows
    as (kept) columns interpolates y; its coefficients exist (R's ``lm`` gives them, with
    0 residual df), so it is fitted by maximum likelihood, with a warning, rather than
    refused. (Rows of weight 0 do not count, as in ``lm``.)
    """
    if reml and n_obs <= n_fixed:
        warnings.warn(f"{n_obs} observations for {n_fixed} fixed effects leave REML no residual "
                      "degrees of freedom: this least-squares fit (no random effects) is by "
                      "maximum likelihood; it reproduces y exactly", UserWarning,
                      stacklevel=caller_stacklevel())
        return False
    return reml
