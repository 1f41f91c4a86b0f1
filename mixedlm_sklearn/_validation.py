"""Turning user input into float arrays and integer group codes; every input error message.

Each check names what is wrong and where (column names, row numbers), so that a bad input
fails here with a readable message instead of as a NaN or a LinAlgError deep inside the
solver.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import linalg

__all__ = [
    "encode_groups",
    "as_design",
    "check_full_rank",
    "check_weights",
    "check_cross_products",
    "check_residual_variance",
    "check_finite",
    "check_counts",
    "check_response",
    "check_random_design",
    "first_rows",
]


def first_rows(mask: np.ndarray, limit: int = 5) -> str:
    """Human-readable list of the first row numbers where ``mask`` holds."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({rows.size} rows)" if rows.size > limit else "")


def encode_groups(groups: Any, n_rows: int, name: str = "groups") -> tuple[np.ndarray, np.ndarray]:
    """Integer codes ``0..m-1`` and the sorted labels of one grouping factor.

    Labels may be any hashable values (ints, strings, categoricals). Missing labels are
    an error: a row with no group cannot be placed in the model.
    """
    if isinstance(groups, pd.DataFrame) or (hasattr(groups, "ndim") and groups.ndim > 1):
        values = np.asarray(groups)
        if values.ndim != 2 or values.shape[1] != 1:
            raise ValueError(f"{name} must be one label per row (1-D), got shape {values.shape}")
        groups = values[:, 0]
    if not isinstance(groups, (pd.Series, pd.Categorical, np.ndarray, pd.Index)):
        groups = np.asarray(groups, dtype=object)
    if np.ndim(groups) != 1:
        raise ValueError(f"{name} must be one label per row (1-D), got shape {np.shape(groups)}; "
                         "several grouping factors go in a DataFrame, one column each")
    if len(groups) != n_rows:
        raise ValueError(f"{name} has {len(groups)} entries but X has {n_rows} rows")
    values = np.asarray(groups) if not isinstance(groups, pd.Categorical) else None
    if values is not None and values.dtype.kind in "iu" and values.size:
        low, high = int(values.min()), int(values.max())
        if high - low < 4 * values.size:  # dense integer ids: counting beats hashing
            present = np.bincount(values - low, minlength=high - low + 1) > 0
            position = np.cumsum(present) - 1
            return position[values - low].astype(np.intp), (np.flatnonzero(present) + low).astype(object)
    missing = pd.isna(groups)
    if np.any(missing):
        raise ValueError(f"{name} has missing labels (NaN/None) in rows {first_rows(np.asarray(missing))}")
    try:
        codes, labels = pd.factorize(groups, sort=True)
    except TypeError:  # labels that cannot be sorted together: keep order of appearance
        codes, labels = pd.factorize(groups, sort=False)
    return codes.astype(np.intp, copy=False), np.asarray(labels, dtype=object)


def as_design(values: Any, n_rows: int, name: str) -> np.ndarray:
    """A finite 2-D float array with ``n_rows`` rows (a 1-D input becomes one column)."""
    if hasattr(values, "sparse") or type(values).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name} must be dense; convert it with .toarray()")
    arr = np.asarray(values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real, got complex values")
    if isinstance(values, pd.DataFrame):
        dup = values.columns[values.columns.duplicated()].unique().tolist()
        if dup:
            raise ValueError(f"{name} has duplicate column names {dup}")
    arr = arr.astype(float, copy=False)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but X has {n_rows}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no columns")
    check_finite(arr, name)
    return arr


def check_finite(arr: np.ndarray, name: str, columns: Sequence[str] | None = None) -> None:
    """Refuse NaN and infinity, naming the rows (and the columns when names are known)."""
    bad = ~np.isfinite(arr)
    if bad.any():
        where = f" in rows {first_rows(bad.any(axis=1) if bad.ndim == 2 else bad)}"
        if columns is not None and bad.ndim == 2:
            where += f", column(s) {[columns[j] for j in np.flatnonzero(bad.any(axis=0))]}"
        raise ValueError(f"Input {name} contains NaN or infinity{where}")


def check_full_rank(xtx: np.ndarray, names: Sequence[str], what: str = "X") -> None:
    """Refuse a rank-deficient fixed-effects design, naming the dependent columns."""
    scale = np.sqrt(np.diag(xtx))
    zero = scale == 0
    if zero.any():
        cols = [names[j] for j in np.flatnonzero(zero)]
        raise ValueError(f"{what} column(s) {cols} are all zeros")
    corr = xtx / np.outer(scale, scale)
    eigval, eigvec = linalg.eigh(corr)
    null = eigval <= 1e-10 * eigval[-1]
    if null.any():
        involved = np.flatnonzero(np.abs(eigvec[:, null]).max(axis=1) > 1e-6)
        cols = [names[j] for j in involved]
        raise ValueError(
            f"{what} is rank deficient (rank {len(names) - int(null.sum())} < {len(names)} "
            f"columns): column(s) {cols} are linearly dependent; drop one of them"
        )


def check_weights(weights: Any, n_rows: int) -> np.ndarray:
    """Prior weights: finite and strictly positive, one per row."""
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1:
        raise ValueError(f"sample_weight must be one weight per row (1-D), got shape {w.shape}")
    if w.shape[0] != n_rows:
        raise ValueError(f"sample_weight has {w.shape[0]} entries but X has {n_rows} rows")
    bad = ~np.isfinite(w) | (w <= 0)
    if bad.any():
        raise ValueError(
            "sample_weight must be finite and > 0 (zero, negative, NaN or infinite weights "
            f"are not allowed); rows {first_rows(bad)} are not"
        )
    return w


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
    level. A column of zeros has no variance to estimate. Two columns proportional within
    every group (a slope on a covariate that is constant within each group, next to a
    random intercept) cannot be told apart within any group: their variances and
    correlation are not identified from within-group information.
    """
    q = ztz.shape[0]
    diag = ztz[np.arange(q), np.arange(q)]
    zero = diag.sum(axis=1) == 0
    if zero.any():
        raise ValueError(f"Z column(s) {[names[j] for j in np.flatnonzero(zero)]} are all zeros")
    several = counts >= 2
    if not several.any() or q < 2:
        return
    for j in range(q):
        for c in range(j):
            sjj, scc, sjc = diag[j, several], diag[c, several], ztz[j, c, several]
            if np.all(sjj * scc - sjc**2 <= 1e-10 * sjj * scc):
                raise ValueError(
                    f"Z columns {names[c]!r} and {names[j]!r} are proportional within every "
                    "group (e.g. a random slope on a covariate that is constant within each "
                    "group, next to a random intercept); their random effects are not "
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


def check_residual_variance(scale: float, xyxy: np.ndarray, n_obs: int) -> None:
    """Refuse a fit whose residual variance collapsed to 0 (an unbounded likelihood)."""
    p = xyxy.shape[0] - 1
    beta = linalg.lstsq(xyxy[:p, :p], xyxy[:p, p])[0]
    ols_scale = (xyxy[p, p] - xyxy[:p, p] @ beta) / max(n_obs - p, 1)
    if not scale > 1e-10 * ols_scale:
        raise ValueError(
            f"the residual variance is 0: with {n_obs} observations the fixed and random "
            "effects reproduce y exactly within every group (e.g. y constant within each "
            "group), so the likelihood is unbounded"
        )


def check_cross_products(*arrays: np.ndarray) -> None:
    """Refuse data whose cross-products overflow double precision (values beyond ~1e154)."""
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError(
            "the cross-products of the data overflow double precision (values beyond about "
            "1e154): rescale y, X or Z, e.g. divide by a power of 10"
        )
