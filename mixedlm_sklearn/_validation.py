"""Turning user input into float arrays and integer group codes; every input error message.

Each check names what is wrong and where (column names, row numbers), so that a bad input
fails here with a readable message instead of as a NaN or a LinAlgError deep inside the
solver.
"""

from __future__ import annotations

import contextlib
import sys
import re
import warnings
from collections.abc import Iterator
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "encode_groups",
    "as_design",
    "check_weights",
    "check_finite",
    "first_rows",
    "clean_failure",
    "canonical_labels",
    "label_kind",
    "unseen_labels_warning",
    "is_sparse",
    "object_columns_to_float",
    "as_response",
    "take_rows",
    "column_names_of",
    "align_columns",
]


def caller_stacklevel() -> int:
    """The ``stacklevel`` of a warning that points at the first frame outside this package
    and scikit-learn's wrappers (the same warning is reached through different numbers of
    frames from fit, fit_chunks and Dask fits)."""
    frame, level = sys._getframe(1), 1
    package = __name__.rsplit(".", 1)[0]
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module.startswith(package) or module.startswith("sklearn") or module == "contextlib"):
            return level
        frame, level = frame.f_back, level + 1
    return level


def first_rows(mask: np.ndarray, limit: int = 5) -> str:
    """Human-readable list of the first row numbers where ``mask`` holds."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({rows.size} rows)" if rows.size > limit else "")


def _dense_integer_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Codes and labels of integer ids by counting, when they span a small range.

    Arithmetic is done where it cannot overflow: signed ids are widened to int64 (an int8
    range -100..99 does not fit int8 once shifted), unsigned ids are shifted in their own
    type (uint64 ids >= 2**63 do not fit int64). Returns None for a wide range.
    """
    low, high = values.min(), values.max()
    if int(high) - int(low) >= 4 * values.size:
        return None
    unsigned = values.dtype.kind == "u"
    # values >= low, so an unsigned shift cannot wrap around
    shifted = (values - low).astype(np.intp) if unsigned else values.astype(np.int64) - int(low)
    present = np.bincount(shifted, minlength=int(high) - int(low) + 1) > 0
    position = np.cumsum(present) - 1
    offsets = np.flatnonzero(present)
    # the labels in the ids' own type (present values, so they fit it)
    labels = offsets.astype(values.dtype) + low if unsigned else (offsets + int(low)).astype(values.dtype)
    return position[shifted].astype(np.intp), labels.astype(object)


def encode_groups(groups: Any, n_rows: int, name: str = "groups") -> tuple[np.ndarray, np.ndarray]:
    """Integer codes ``0..m-1`` and the sorted labels of one grouping factor.

    Labels may be any hashable values (ints, strings, categoricals). Missing labels are
    an error: a row with no group cannot be placed in the model. Labels that mix
    integers and strings follow :func:`canonical_labels` (``22`` and ``"22"`` are one
    group).
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
        dense = _dense_integer_codes(values)  # dense integer ids: counting beats hashing
        if dense is not None:
            return dense
    missing = pd.isna(groups)
    if np.any(missing):
        raise ValueError(f"{name} has missing labels (NaN/None) in rows {first_rows(np.asarray(missing))}")
    if values is not None and values.dtype == object and pd.api.types.infer_dtype(values) == "mixed-integer":
        # ints next to strings in one column: compare them in the canonical form, coding
        # the distinct labels only (not every row) in Python
        codes, uniques = pd.factorize(values)
        (canon,) = canonical_labels([np.asarray(uniques, dtype=object)], name)
        recoded, labels = _factorize_sorted(canon)
        return recoded[codes].astype(np.intp, copy=False), labels
    return _factorize_sorted(groups)


def _factorize_sorted(values: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        codes, labels = pd.factorize(values, sort=True)
    except TypeError:  # labels that cannot be sorted together: keep order of appearance
        codes, labels = pd.factorize(values, sort=False)
    return codes.astype(np.intp, copy=False), np.asarray(labels, dtype=object)


# Text that an integer label prints as: what an integer and a string label are compared by.
_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")


def _is_int_label(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def label_kind(labels: Any) -> str:
    """The kind of a set of group labels: ``"integer"``, ``"string"``, ``"floating"``, ...

    pandas' ``infer_dtype`` of the labels (of the categories for a categorical);
    ``"mixed-integer"`` means integers next to other values, e.g. strings.
    """
    if isinstance(labels, (pd.Categorical, pd.CategoricalIndex)) or isinstance(
            getattr(labels, "dtype", None), pd.CategoricalDtype):
        labels = pd.Categorical(labels).categories
    return pd.api.types.infer_dtype(labels, skipna=True)


def canonical_labels(parts: Sequence[np.ndarray], name: str = "groups") -> list[np.ndarray]:
    """One canonical form for group labels that came with different types.

    The rule, for the labels of one grouping factor seen in several pieces (chunks of a
    file, Dask partitions, or one column of mixed objects): when some labels are
    integers and others strings, as ``pd.read_csv(..., chunksize=...)`` produces when
    only some chunks hold a non-numeric id, an integer label is compared as its decimal
    text: ``22`` and ``"22"`` are one group, labelled ``"22"``. A string that reads as an
    integer without being written that way (``"022"``, ``"+22"``, ``" 22"``) is
    ambiguous (``read_csv`` turns ``022`` into ``22`` in a numeric chunk) and is refused.
    Labels of one kind, or of kinds that compare by value (integers and floats), are
    returned as they are.

    Parameters
    ----------
    parts : sequence of 1-D object arrays
        The distinct labels of each piece.
    name : str
        Names the labels in the error message.

    Returns
    -------
    list of ndarray
        The parts in the canonical form (the same objects when nothing changes).

    Raises
    ------
    ValueError
        For an ambiguous string label.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn._validation import canonical_labels
    >>> a, b = canonical_labels([np.array([7, 22], dtype=object), np.array(["22", "x1"], dtype=object)])
    >>> a.tolist(), b.tolist()
    (['7', '22'], ['22', 'x1'])
    """
    kinds = [label_kind(p) if len(p) else "empty" for p in parts]
    has_int = any(k in ("integer", "mixed-integer") for k in kinds)
    has_str = any(k == "string" for k in kinds) or any(
        k == "mixed-integer" and any(isinstance(v, str) for v in p) for k, p in zip(kinds, parts))
    if not (has_int and has_str):
        return list(parts)
    out = []
    for p in parts:
        values = np.asarray(p, dtype=object)
        bad = [v for v in values if isinstance(v, str) and _CANONICAL_INT.fullmatch(v) is None
               and _reads_as_int(v)]
        if bad:
            raise ValueError(
                f"{name} labels are integers in some rows (or chunks/partitions) and strings in "
                f"others, and string label(s) {bad[:3]} read as integers without being written "
                "as one: whether they are the same group as an integer label is ambiguous. Give "
                "the labels one type, e.g. pd.read_csv(..., dtype={<group column>: str})"
            )
        out.append(np.array([str(int(v)) if _is_int_label(v) else v for v in values], dtype=object))
    return out


def _reads_as_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def unseen_labels_warning(seen: np.ndarray, labels: np.ndarray, fitted: np.ndarray,
                          what: str) -> str | None:
    """The warning for labels passed to predict that fit did not see, or None.

    Unseen labels get population predictions, which is right for new groups and wrong
    when the labels only changed type (``"12"`` for ``12``). Warn when no label was seen
    at all, or when some were not and their kind differs from the fitted labels'.
    """
    if not seen.size or seen.all():
        return None
    unseen = labels[~seen]
    if not seen.any():
        return (f"none of the {what} labels passed to predict was seen in fit (e.g. "
                f"{unseen[0]!r}; fitted labels look like {fitted[0]!r}): the predictions are "
                "population-level. Check that the labels have the type they had in fit.")
    kind_new, kind_fit = label_kind(unseen), label_kind(fitted)
    if kind_new == kind_fit:
        return None
    return (f"{unseen.size} of {labels.size} rows have {what} labels not seen in fit, of "
            f"another type ({kind_new}, e.g. {unseen[0]!r}) than the fitted labels ({kind_fit}, "
            f"e.g. {fitted[0]!r}): those rows get population-level predictions. Give the "
            "labels the type they had in fit.")


def is_sparse(values: Any) -> bool:
    """A scipy sparse matrix/array, or pandas data with a sparse column.

    (``hasattr(frame, "sparse")`` is no test: it holds for a frame without columns.)
    """
    if type(values).__module__.startswith("scipy.sparse"):
        return True
    if isinstance(values, pd.DataFrame):
        return any(isinstance(dt, pd.SparseDtype) for dt in values.dtypes)
    return isinstance(getattr(values, "dtype", None), pd.SparseDtype)


def object_columns_to_float(values: Any, names: Sequence[str], name: str) -> Any:
    """Object-dtype data as floats, by one rule for DataFrames and arrays.

    An object column is numeric when ``float()`` takes each of its values (numbers, and
    numeric text, as numpy's conversion does); otherwise a TypeError names the columns.
    Data without object columns is returned unchanged.
    """
    if isinstance(values, pd.DataFrame):
        columns = [j for j, dt in enumerate(values.dtypes) if dt == object]
        if not columns:
            return values
        out = values.copy()
        get = lambda j: values.iloc[:, j].to_numpy()
    else:
        arr = np.asarray(values)
        if arr.dtype != object:
            return values
        if arr.ndim > 2:
            raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
        out = arr.reshape(arr.shape[0], -1)
        columns = list(range(out.shape[1]))
        get = lambda j: out[:, j]
    converted, bad, reason = {}, [], ""
    for j in columns:
        try:
            converted[j] = np.asarray(get(j), dtype=float)
        except (TypeError, ValueError) as err:
            bad.append(names[j] if j < len(names) else j)
            reason = reason or str(err)
    if bad:
        raise TypeError(f"{name} columns {bad} are not numeric ({reason}); encode them first "
                        "(e.g. OneHotEncoder in a ColumnTransformer)")
    if isinstance(out, pd.DataFrame):
        for j, col in converted.items():
            out.isetitem(j, col)
        return out
    result = np.column_stack([converted[j] for j in columns]) if columns else out.astype(float)
    return result.reshape(arr.shape) if arr.ndim == 1 else result


def as_design(values: Any, n_rows: int, name: str) -> np.ndarray:
    """A finite 2-D float array with ``n_rows`` rows (a 1-D input becomes one column)."""
    if is_sparse(values):
        raise TypeError(f"{name} must be dense; convert it with .toarray()")
    if isinstance(values, pd.DataFrame) and values.shape[1] == 0:
        raise ValueError(f"{name} has no columns")
    if not isinstance(values, pd.DataFrame):
        values = np.asarray(values)
    names = ([str(c) for c in values.columns] if isinstance(values, pd.DataFrame)
             else list(range(values.shape[1])) if values.ndim == 2 else [0])
    try:
        values = object_columns_to_float(values, names, name)
    except TypeError as err:
        raise TypeError(f"{name} must be numeric: {err}") from None
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


def as_response(values: Any) -> np.ndarray:
    """A response given as text or objects, as floats by the rule of object columns.

    ``float()`` of each value (numbers and numeric text; None becomes NaN, reported
    later with its rows); anything else is a TypeError naming the problem.
    """
    arr = np.asarray(values)
    try:
        return arr.astype(object).astype(float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"y must be numeric: {err} (dtype {arr.dtype})") from None


def column_names_of(values: Any) -> list[str] | None:
    """Column names as scikit-learn takes feature names: a DataFrame's (or a named
    Series') when they are all strings; None otherwise."""
    if isinstance(values, pd.DataFrame) or (
            type(values).__module__.startswith("dask") and hasattr(values, "columns")):
        cols = list(values.columns)
    elif isinstance(values, pd.Series) and values.name is not None:
        cols = [values.name]
    else:
        return None
    return [str(c) for c in cols] if cols and all(isinstance(c, str) for c in cols) else None


def align_columns(values: Any, fitted: list[str] | None, what: str, owner: str) -> Any:
    """``values`` with its columns in the order they had in fit, checked by name.

    The rule scikit-learn applies to X's feature names, for the random-effects design:
    named columns (a DataFrame) are matched by name, reordered if need be, and refused
    when the names differ from fit's; a design without names where fit had them, or the
    reverse, is used by position with a warning.

    Parameters
    ----------
    values : array-like or DataFrame
        The design passed to predict/score.
    fitted : list of str or None
        The column names it had in fit (None: fit's had none).
    what : str
        Names the design in messages (``"Z"``, ``"Z['a']"``).
    owner : str
        The estimator's class name.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedlm_sklearn._validation import align_columns
    >>> Z = pd.DataFrame({"Days": [1.0, 2.0], "(Intercept)": [1.0, 1.0]})
    >>> list(align_columns(Z, ["(Intercept)", "Days"], "Z", "MixedLMRegressor").columns)
    ['(Intercept)', 'Days']
    """
    names = column_names_of(values)
    if fitted is None:
        if names is not None:
            warnings.warn(f"{what} has column names, but {owner} was fitted without {what} "
                          "column names", UserWarning, stacklevel=4)
        return values
    if names is None:
        warnings.warn(f"{what} does not have valid column names, but {owner} was fitted with "
                      f"{what} columns {fitted}: its columns are taken in that order",
                      UserWarning, stacklevel=4)
        return values
    if names == fitted:
        return values
    missing = [c for c in fitted if c not in names]
    unexpected = [c for c in names if c not in fitted]
    if missing or unexpected or len(names) != len(fitted):
        raise ValueError(
            f"{what}'s column names must match those passed during fit, {fitted}"
            + (f"; missing: {missing}" if missing else "")
            + (f"; not seen in fit: {unexpected}" if unexpected else "")
        )
    return values[fitted]  # same names in another order: reorder by name


def check_finite(arr: np.ndarray, name: str, columns: Sequence[str] | None = None) -> None:
    """Refuse NaN and infinity, naming the rows (and the columns when names are known)."""
    # A NaN or an infinity makes the sum non-finite: one pass with no boolean copy of the
    # array (at 10^7 x 10 that copy was 100 MB and a tenth of a second). A sum that
    # overflows from finite values only sends us to the exact check below.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(arr)):
            return
    bad = ~np.isfinite(arr)
    if bad.any():
        where = f" in rows {first_rows(bad.any(axis=1) if bad.ndim == 2 else bad)}"
        if columns is not None and bad.ndim == 2:
            where += f", column(s) {[columns[j] for j in np.flatnonzero(bad.any(axis=0))]}"
        raise ValueError(f"Input {name} contains NaN or infinity{where}")


def check_weights(weights: Any, n_rows: int) -> np.ndarray:
    """Prior weights: finite and non-negative, one per row (0 removes the row)."""
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1:
        raise ValueError(f"sample_weight must be one weight per row (1-D), got shape {w.shape}")
    if w.shape[0] != n_rows:
        raise ValueError(f"sample_weight has {w.shape[0]} entries but X has {n_rows} rows")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        raise ValueError(
            "sample_weight must be finite and >= 0 (negative, NaN or infinite weights are "
            f"not allowed; a weight of 0 removes the row); rows {first_rows(bad)} are not"
        )
    return w


def take_rows(values: Any, keep: np.ndarray, name: str) -> Any:
    """The rows ``keep`` (a boolean mask) of a per-row input, in the input's own type.

    For removing rows of weight 0 before anything else: DataFrames and Series keep their
    names, dicts (a Z per grouping factor) are taken value by value, None stays None.
    A length other than the mask's is refused here, in the words the later checks use,
    since the rows could not be matched.
    """
    if values is None:
        return None
    if isinstance(values, dict):
        return {k: take_rows(v, keep, f"{name}[{k!r}]") for k, v in values.items()}
    if not isinstance(values, (pd.DataFrame, pd.Series, pd.Categorical, pd.Index, np.ndarray)):
        values = np.asarray(values, dtype=object)
    if len(values) != keep.size:
        raise ValueError(f"{name} has {len(values)} entries but X has {keep.size} rows")
    if isinstance(values, (pd.DataFrame, pd.Series)):
        return values.iloc[keep]
    return values[keep]


def without_zero_weights(weights: np.ndarray | None, **rows: Any) -> tuple:
    """The rows of positive weight of a fit's per-row values, in the order given.

    A weight of 0 is an infinite residual variance: the row carries no information, so it
    is removed before anything else (a group of such rows is no group). Each keyword is a
    per-row value (arrays, the user's DataFrames, dicts of them, None; taken by
    :func:`take_rows`, named by its keyword in errors); all come back unchanged when every
    weight is positive (or ``weights`` is None).
    """
    if weights is None or weights.all():
        return tuple(rows.values())
    keep = weights > 0
    n = keep.size
    if keep.sum() < 2:
        raise ValueError(f"sample_weight is zero in {n - int(keep.sum())} of {n} rows: a "
                         "model needs at least 2 rows of positive weight")
    return tuple(take_rows(v, keep, k) for k, v in rows.items())


@contextlib.contextmanager
def clean_failure() -> Iterator[None]:
    """A fit that fails raises one clear error and no numpy warnings before it.

    numpy's floating-point warnings (overflow, invalid value, division by zero) are held
    back while the fit runs (``np.errstate`` with a callback: local to this call, no
    warnings filter is touched). If the fit raises, they are dropped: the error says what
    went wrong. If it succeeds, each kind is reported once. A FloatingPointError or
    LinAlgError escaping the solvers becomes a ValueError that says what usually causes it.
    """
    kinds: dict[str, None] = {}

    def record(kind: str, flag: int) -> None:
        kinds[kind] = None

    try:
        with np.errstate(divide="call", over="call", invalid="call", call=record):
            yield
    except (FloatingPointError, np.linalg.LinAlgError) as err:
        raise ValueError(
            f"the fit broke down numerically ({err}). The usual cause is a residual variance "
            "going to 0: the fixed and random effects reproduce y (almost) exactly, e.g. y "
            "constant within each group. Otherwise rescale y, X or Z to moderate values."
        ) from None
    for kind in kinds:
        warnings.warn(f"{kind} encountered in a numpy operation during the fit", RuntimeWarning,
                      stacklevel=3)


def chunk_columns(X: Any, Z: Any, groups: Any) -> tuple[list, dict]:
    """The grouping columns and the random-effects columns per factor of a fit from chunks
    or Dask partitions (columns given by name), or a TypeError/ValueError naming the problem.

    ``Z``: None (random intercepts), a list of columns (one factor) or a dict from factor to
    columns.
    """
    if isinstance(X, str) or (Z is not None and isinstance(Z, str)):
        raise TypeError("X and Z must be lists of column names")
    group_cols = [groups] if isinstance(groups, str) else list(groups)
    if isinstance(Z, dict):
        z_cols = {str(k): list(v) for k, v in Z.items()}
        unknown = [k for k in z_cols if k not in group_cols]
        if unknown:
            raise ValueError(f"Z key(s) {unknown} name no grouping factor; the factors are {group_cols}")
    elif Z is not None:
        if len(group_cols) != 1:
            raise TypeError("with several grouping factors, Z must be a dict from factor to columns")
        z_cols = {group_cols[0]: list(Z)}
    else:
        z_cols = {}
    return group_cols, z_cols
