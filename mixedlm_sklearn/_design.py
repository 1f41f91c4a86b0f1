"""From the estimator's arguments to the model's design: random-effects terms and rows.

``groups`` and ``Z`` come in two forms. One grouping factor: ``groups`` one label per row
(a Series, array or one-column DataFrame) and ``Z`` an (n, q) array or DataFrame.
Several: ``groups`` a DataFrame with a column per term and ``Z`` a dict from column name
to that term's design, or a DataFrame with (term, column) MultiIndex columns (the form
cross-validation can split by rows); a term missing from ``Z`` gets a random intercept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._correlation import CorrelationRows, CorrelationStructure, check_nested
from ._rows import Design
from ._terms import INTERCEPT  # defined with the terms: the engine names it too
from ._validation import as_design, encode_groups

__all__ = ["INTERCEPT", "TermInput", "Design", "random_terms", "check_residual_groups", "correlation_form", "residual_rows", "several_factors",
           "z_by_factor", "factor_frame", "group_name", "column_names", "term_is_diagonal"]


@dataclass(frozen=True)
class TermInput:
    """One random-effects term read from the estimator's arguments."""

    name: str
    codes: np.ndarray  # level of each row, 0..len(labels)-1
    Z: np.ndarray  # (n, q)
    z_names: tuple[str, ...]
    labels: np.ndarray  # level labels (sorted; a Categorical's in category order)
    diagonal: bool


def column_names(values: Any, prefix: str, width: int) -> list[str]:
    """Column names of a DataFrame (or a named Series), else ``prefix0, prefix1, ...``."""
    if isinstance(values, pd.DataFrame):
        return [str(c) for c in values.columns]
    if isinstance(values, pd.Series) and values.name is not None:
        return [str(values.name)]
    return [f"{prefix}{j}" for j in range(width)]


def group_name(groups: Any) -> str:
    """The grouping factor's name: a Series' name or a one-column DataFrame's column."""
    if isinstance(groups, pd.DataFrame) and groups.shape[1] == 1:
        return str(groups.columns[0])
    name = getattr(groups, "name", None)
    return "group" if name is None else str(name)


def z_by_factor(Z: Any) -> dict | None:
    """Z given per term: a dict, or a DataFrame with (term, column) columns; else None."""
    if isinstance(Z, dict):
        return {str(k): v for k, v in Z.items()}
    if isinstance(Z, pd.DataFrame) and isinstance(Z.columns, pd.MultiIndex):
        return {str(k): Z[k] for k in Z.columns.get_level_values(0).unique()}
    return None


def several_factors(groups: Any, Z: Any) -> bool:
    """Several grouping factors: a table of them, or Z given per factor."""
    if z_by_factor(Z) is not None:
        return True
    if isinstance(groups, pd.DataFrame):
        return groups.shape[1] > 1
    return getattr(groups, "ndim", 1) == 2 and np.shape(groups)[1] > 1


def factor_frame(groups: Any, n: int) -> pd.DataFrame:
    """``groups`` as a DataFrame with one column per term."""
    if isinstance(groups, pd.DataFrame):
        frame = groups
    elif isinstance(groups, pd.Series):
        frame = groups.to_frame(name=groups.name if groups.name is not None else "group")
    else:
        values = np.asarray(groups, dtype=object)
        values = values[:, None] if values.ndim == 1 else values
        frame = pd.DataFrame(values, columns=[f"g{k}" for k in range(values.shape[1])])
    if len(frame) != n:
        raise ValueError(f"groups has {len(frame)} rows but X has {n}")
    dup = frame.columns[frame.columns.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"groups has duplicate column names {dup}")
    return frame


def term_is_diagonal(cov_type: str | dict, name: str) -> bool:
    """The covariance structure of a term: ``cov_type`` itself, or its entry for ``name``."""
    if isinstance(cov_type, dict):
        return cov_type.get(name, "unstructured") == "diagonal"
    return cov_type == "diagonal"


def _zero_columns(Z: np.ndarray, names: list[str], what: str) -> None:
    zero = ~np.any(Z != 0, axis=0)
    if zero.any():
        raise ValueError(f"{what} column(s) {[names[j] for j in np.flatnonzero(zero)]} are all zeros")


def _intercept_column(n: int) -> np.ndarray:
    """A random intercept's ``Z``: a read-only (n, 1) view of one 1.0 (no n-long array;
    at 10^7 rows each factor's column of ones was 76 MiB)."""
    return np.broadcast_to(np.ones(1), (n, 1))


def random_terms(groups: Any, Z: Any, n: int, cov_type: str | dict) -> list[TermInput]:
    """The random-effects terms of the estimator's ``groups`` and ``Z``.

    Raises
    ------
    ValueError, TypeError
        Malformed or inconsistent ``groups``/``Z`` (each message names the problem).
    """
    if not several_factors(groups, Z):
        codes, labels = encode_groups(groups, n)
        if labels.size < 2:
            raise ValueError(f"random effects need at least two groups; groups has {labels.size} level")
        if Z is None:
            z, z_names = _intercept_column(n), [INTERCEPT]
        else:
            z = as_design(Z, n, "Z")
            z_names = column_names(Z, "z", z.shape[1])
        name = group_name(groups)
        return [TermInput(name, codes, z, tuple(z_names), labels, term_is_diagonal(cov_type, name))]
    frame = factor_frame(groups, n)
    names = [str(c) for c in frame.columns]
    z_by_name = {} if Z is None else z_by_factor(Z)
    if z_by_name is None:
        raise TypeError("with several grouping factors, Z must be a dict from factor name to "
                        "that factor's (n, q) design, or a DataFrame with (factor, column) "
                        "MultiIndex columns; a factor missing from it gets a random intercept")
    unknown = [k for k in z_by_name if k not in names]
    if unknown:
        raise ValueError(f"Z key(s) {unknown} name no grouping factor; the factors are {names}")
    out = []
    for col, name in zip(frame.columns, names):
        codes, labels = encode_groups(frame[col], n, name=f"groups[{name!r}]")
        if labels.size < 2:
            raise ValueError(f"grouping factor {name!r} has a single level; a random effect "
                             "needs at least two")
        if name in z_by_name:
            z = as_design(z_by_name[name], n, f"Z[{name!r}]")
            z_names = column_names(z_by_name[name], "z", z.shape[1])
        else:
            z, z_names = _intercept_column(n), [INTERCEPT]
        _zero_columns(z, z_names, f"Z[{name!r}]")
        out.append(TermInput(name, codes, z, tuple(z_names), labels, term_is_diagonal(cov_type, name)))
    return out


def correlation_form(time: Any, groups: str) -> str:
    """nlme's ``form`` of a correlation, ``~ time | groups``: ``time`` a column name, an
    array or Series (its name, else "time"), or None (``1``: the rows' order)."""
    if time is None:
        name = "1"
    elif isinstance(time, str):
        name = time
    else:
        name = str(getattr(time, "name", None) or "time")
    return f"~ {name} | {groups}"


def check_residual_groups(groups: Any, n_factors: int) -> None:
    """Refuse correlated residuals without their groups where the model has no single
    grouping factor to take them from (before any chunk or partition is read, too)."""
    if groups is None and n_factors != 1:
        raise ValueError("correlation= needs correlation_groups= (the residual groups) "
                         f"when the model has {'no' if not n_factors else 'several'} "
                         "grouping factors")


def residual_rows(structure: CorrelationStructure, groups: Any, times: Any, factors: list,
                  factor_names: list, n: int, group_name: str, nested: bool = True
                  ) -> tuple[CorrelationRows, np.ndarray | None]:
    """The rows of correlated residuals in residual-group and time order, checked: the
    residual groups ``groups`` (None: the levels of the model's one grouping factor) must
    lie within one level of every grouping factor (``factors``, ``(codes, Z)`` each) and
    ``times`` (None: positions in row order) must be numeric, one per row. Also the groups'
    labels (None when they are the grouping factor's). For a fit's rows and for each chunk
    or partition of them alike. ``nested=False`` (a fit in memory): residual groups may
    span levels of the grouping factors (:attr:`._correlation.CorrelatedRows.crossed`).
    """
    check_residual_groups(groups, len(factors))
    if groups is None:
        codes, labels = factors[0][0], None
    else:
        codes, labels = encode_groups(groups, n, name="correlation_groups")
    if times is not None:
        times = np.asarray(times)
        if times.ndim != 1 or times.shape[0] != n:
            raise ValueError(f"time must have one value per row ({n}), got shape {times.shape}")
        try:
            times = times.astype(float)
        except (TypeError, ValueError):
            raise ValueError("time must be numeric (times or integer positions)") from None
    rows = CorrelationRows.from_arrays(codes, times, structure.needs_integer_times,
                                       group_name=group_name)
    if nested:
        check_nested(rows, factors, factor_names, group_name)
    return rows, labels
