"""Statistics from data that does not sit in memory as one array: chunks and Dask.

Each chunk (a DataFrame from ``pd.read_csv(..., chunksize=...)``, a Parquet batch, ...)
or Dask partition is reduced to the statistics of its own groups; the statistics add up
by group label (:class:`~mixedlm_sklearn._stats.StatsAccumulator`). Peak memory is one
chunk plus statistics proportional to the number of groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._stats import GroupStats, StatsAccumulator, compute_stats
from ._validation import as_design, check_weights, encode_groups, take_rows

__all__ = ["INTERCEPT", "check_dask_inputs", "is_dask_collection", "stats_from_chunks", "stats_from_dask", "partition_stats"]

#: Name that stands for a column of ones in a ``Z`` column list.
INTERCEPT = "(Intercept)"


def is_dask_collection(obj: Any) -> bool:
    """True for Dask DataFrames/Series (checked without importing dask)."""
    return type(obj).__module__.startswith("dask") and hasattr(obj, "to_delayed")


def check_dask_inputs(**inputs: Any) -> None:
    """Refuse Dask input that the partition-wise statistics cannot take, naming it.

    ``X``, ``y`` and ``groups`` are required (the statistics need a response and one
    grouping factor); each must be a Dask DataFrame or Series, not a ``dask.array``
    (whose blocks carry no column names and may split columns).
    """
    for name in ("X", "y", "groups"):
        if inputs.get(name) is None:
            raise ValueError(f"with Dask input, {name} is required: a Dask fit needs X, y and "
                             "groups (one grouping factor), each a Dask DataFrame or Series")
    arrays = [name for name, value in inputs.items()
              if value is not None and type(value).__module__.startswith("dask.array")]
    if arrays:
        raise TypeError(
            f"{arrays} {'is a dask.array' if len(arrays) == 1 else 'are dask.arrays'}: Dask "
            "input must be Dask DataFrames/Series (columns of one DataFrame), e.g. "
            "dask.dataframe.from_dask_array(x, columns=[...]); or compute() the arrays first"
        )


def partition_stats(
    x: Any, y: Any, groups: Any, z: Any = None, weights: Any = None, intercept: bool = True,
    where: str = "data",
) -> tuple[np.ndarray, GroupStats]:
    """Statistics of one chunk with its own group coding.

    Parameters
    ----------
    x, y, groups, z, weights : DataFrame / Series / arrays of one chunk
        ``z=None`` means a random intercept only.
    intercept : bool
        Add the fixed intercept.
    where : str
        Names the chunk in error messages.

    Returns
    -------
    labels : ndarray
        The chunk's group labels (sorted), the last axis of the statistics.
    stats : GroupStats
    """
    try:
        y_arr = as_design(y, len(y), "y")[:, 0]
        n = y_arr.shape[0]
        x_arr = as_design(x, n, "X")
        z_arr = np.ones((n, 1)) if z is None else as_design(z, n, "Z")
        w_arr = None if weights is None else check_weights(weights, n)
        if w_arr is not None and not w_arr.all():
            # rows of weight 0 carry no information: removed before anything else, so a
            # group whose rows all have weight 0 is not a group of the fit
            keep = w_arr > 0
            x_arr, y_arr, z_arr, w_arr = x_arr[keep], y_arr[keep], z_arr[keep], w_arr[keep]
            groups = take_rows(groups, keep, "groups")
            n = y_arr.shape[0]
        codes, labels = encode_groups(groups, n)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where}: {err}") from None
    return labels, compute_stats(x_arr, y_arr, z_arr, codes, labels.size, w_arr, intercept=intercept)


def _z_columns(frame: pd.DataFrame, z: Sequence[str] | None) -> pd.DataFrame | None:
    if z is None:
        return None
    cols = {name: (1.0 if name == INTERCEPT and name not in frame else frame[name]) for name in z}
    return pd.DataFrame(cols, index=frame.index)


def stats_from_chunks(
    chunks: Iterable[pd.DataFrame],
    *,
    y: str,
    groups: str,
    X: Sequence[str],
    Z: Sequence[str] | None = None,
    sample_weight: str | None = None,
    intercept: bool = True,
    verbose: int = 0,
) -> tuple[np.ndarray, GroupStats]:
    """Statistics summed over an iterable of DataFrames, columns named by the caller."""
    acc = StatsAccumulator()
    needed = [y, groups, *X, *(c for c in (Z or []) if c != INTERCEPT)]
    if sample_weight is not None:
        needed.append(sample_weight)
    for number, frame in enumerate(chunks):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"chunk {number} is a {type(frame).__name__}, expected a pandas DataFrame")
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"chunk {number} lacks column(s) {missing}")
        if len(frame) == 0:
            continue
        labels, part = partition_stats(
            frame[list(X)], frame[y], frame[groups], _z_columns(frame, Z),
            None if sample_weight is None else frame[sample_weight], intercept, f"chunk {number}",
        )
        if part.n_obs:  # not a chunk whose weights are all 0
            acc.add(labels, part)
        if verbose:
            print(f"[MixedLMRegressor] chunk {number}: {len(frame)} rows, {labels.size} groups")
    return acc.result()


def stats_from_dask(
    X: Any, y: Any, groups: Any, Z: Any = None, sample_weight: Any = None,
    intercept: bool = True, verbose: int = 0,
) -> tuple[np.ndarray, GroupStats]:
    """Statistics of Dask collections, computed partition by partition where the data live.

    ``X``, ``y``, ``groups`` (and ``Z``, ``sample_weight``) must be partitioned alike, as
    columns selected from one Dask DataFrame are. Uses the active scheduler (a
    ``dask.distributed.Client`` if one exists).
    """
    import dask

    check_dask_inputs(X=X, y=y, groups=groups, Z=Z, sample_weight=sample_weight)
    named = [(name, c) for name, c in
             zip(("X", "y", "groups", "Z", "sample_weight"), (X, y, groups, Z, sample_weight))
             if c is not None]
    pieces = [c for _, c in named]
    not_dask = [name for name, c in named if not is_dask_collection(c)]
    if not_dask:
        raise TypeError(f"with a Dask X, {not_dask} must be Dask collections too (columns of the same DataFrame)")
    counts = {c.npartitions for c in pieces}
    if len(counts) != 1:
        raise ValueError("X, y, groups and Z must have the same Dask partitions")
    parts = [c.to_delayed() for c in pieces]
    has_z, has_w = Z is not None, sample_weight is not None
    tasks = []
    for number, part in enumerate(zip(*parts)):
        xp, yp, gp, *rest = part
        zp = rest.pop(0) if has_z else None
        wp = rest.pop(0) if has_w else None
        tasks.append(dask.delayed(partition_stats)(xp, yp, gp, zp, wp, intercept, f"partition {number}"))
    results = dask.compute(*tasks)
    acc = StatsAccumulator()
    for number, (labels, part) in enumerate(results):
        if part.n_obs:
            acc.add(labels, part)
        if verbose:
            print(f"[MixedLMRegressor] partition {number}: {part.n_obs} rows, {labels.size} groups")
    return acc.result()
