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
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import linalg
from scipy.linalg.lapack import dtrtrs as _trtrs

__all__ = [
    "encode_groups",
    "as_design",
    "RankDeficientWarning",
    "FixedEffectsRank",
    "fixed_effects_rank",
    "drop_aliased_columns",
    "check_weights",
    "check_cross_products",
    "check_residual_variance",
    "check_finite",
    "check_counts",
    "check_exact_fit",
    "check_response",
    "check_random_design",
    "first_rows",
    "clean_failure",
    "canonical_labels",
    "label_kind",
    "unseen_labels_warning",
    "is_sparse",
    "object_columns_to_float",
    "as_response",
    "take_rows",
    "least_squares_reml",
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


class RankDeficientWarning(UserWarning):
    """The fixed-effects design is rank deficient: aliased columns were dropped (as lme4).

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.fit : Where aliased columns are dropped.

    Notes
    -----
    Issued by ``fit`` when columns of ``X`` are linear combinations of earlier ones
    (lme4's "fixed-effect model matrix is rank deficient so dropping k columns"). The
    dropped columns get ``coef_`` 0 and NaN standard errors.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor, RankDeficientWarning
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal(60)
    >>> X = np.column_stack([x, 2 * x])  # the second column is aliased
    >>> y = x + rng.standard_normal(60)
    >>> g = np.repeat(np.arange(12), 5)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     est = MixedLMRegressor().fit(X, y, groups=g)
    >>> any(issubclass(w.category, RankDeficientWarning) for w in caught), float(est.coef_[1])
    (True, 0.0)
    """


@dataclass(frozen=True)
class FixedEffectsRank:
    """Which fixed-effects columns a fit keeps, and how the dropped ones are aliased.

    Attributes
    ----------
    names : list of str
        All fixed-effects columns, intercept first.
    kept : ndarray of bool
        The columns the model is fitted with.
    """

    names: list[str]
    kept: np.ndarray

    @property
    def deficient(self) -> bool:
        return not bool(self.kept.all())

    @property
    def kept_names(self) -> list[str]:
        return [n for n, k in zip(self.names, self.kept) if k]

    @property
    def dropped_names(self) -> list[str]:
        return [n for n, k in zip(self.names, self.kept) if not k]

    def expand(self, values: np.ndarray, fill: float) -> np.ndarray:
        """A vector over the kept columns as one over all columns, ``fill`` for the dropped."""
        out = np.full(self.kept.size, fill)
        out[self.kept] = values
        return out

    def expand_cov(self, cov: np.ndarray) -> np.ndarray:
        """A kept-columns covariance with NaN rows and columns for the dropped ones."""
        out = np.full((self.kept.size, self.kept.size), np.nan)
        out[np.ix_(self.kept, self.kept)] = cov
        return out

    def estimable(self, L: np.ndarray) -> np.ndarray:
        """For each row of ``L`` (over all columns): does it leave the dropped columns out?

        The model is the model of the kept columns (as lme4 refits without the dropped
        ones), so a contrast that puts weight on a dropped coefficient has no estimate.
        """
        return np.all(np.atleast_2d(L)[:, ~self.kept] == 0, axis=1)

    def message(self) -> str:
        k = int((~self.kept).sum())
        return (f"fixed-effect model matrix is rank deficient so dropping {k} column"
                f"{'s' if k > 1 else ''} / coefficient{'s' if k > 1 else ''}: "
                f"{self.dropped_names} (aliased with the columns before them; their "
                "coefficients are reported as 0, their standard errors as NaN)")


def _solve_lower(block: np.ndarray, b: np.ndarray, trans: int) -> np.ndarray:
    """``block^{-1} b`` (``trans=0``) or ``block'^{-1} b`` (1) for a lower-triangular float
    ``block``: what ``linalg.solve_triangular(block, b, lower=True, trans=trans,
    check_finite=False)`` computes, by the LAPACK call it makes (the same numbers), without
    its argument handling (most of the cost on the few columns of ``X``)."""
    if block.flags.f_contiguous:
        x, info = _trtrs(block, b, lower=1, trans=trans)
    else:  # the transposed system, as scipy solves a C-ordered one
        x, info = _trtrs(block.T, b, lower=0, trans=1 - trans)
    if info != 0:
        return linalg.solve_triangular(block, b, lower=True, trans=trans, check_finite=False)
    return x


def fixed_effects_rank(xtx: np.ndarray, names: Sequence[str], n_obs: int,
                       tol: float = 1e-7) -> FixedEffectsRank:
    """lme4's rank check of the fixed effects, on ``X'X``: which columns to keep.

    lme4 (``chkRank.drop.cols``) takes R's ``qr(X, tol = 1e-7)``, a QR with limited
    pivoting that keeps the earlier columns: column ``j`` is dropped when the part of it
    that the kept columns before it do not explain has a norm below ``tol`` times its
    own. The same test on ``X'X`` (all that chunked and Dask fits have) is a Cholesky
    factorisation of the scaled cross-products that keeps the earlier columns: with
    ``A = D^-1/2 X'X D^-1/2`` and ``K`` the columns kept so far, ``d_j = A_jj -
    A_jK A_KK^-1 A_Kj`` is that squared norm ratio, and ``j`` is dropped when
    ``d_j <= tol^2``. Forming ``X'X`` rounds it, so ``d_j`` of an exactly aliased
    column comes out as a rounding error of about ``eps (1 + |c|_1)^2`` (``c`` its
    coefficients on the kept columns, in scaled units; measured up to 12 eps at 10^6
    rows): that much is added to the threshold, so exact aliases are found whatever
    their coefficients. All-zero columns are dropped.

    Parameters
    ----------
    xtx : ndarray of shape (p, p)
        ``X' W X`` of the fixed-effects design (intercept first, if any).
    names : sequence of str
        The column names.
    n_obs : int
        Rows summed in ``xtx`` (the rounding error grows with it).
    tol : float, default 1e-7
        lme4's tolerance on the norm ratio.

    Returns
    -------
    FixedEffectsRank

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn._validation import fixed_effects_rank
    >>> a = np.array([1.0, 0.0, 1.0, 0.0]); X = np.column_stack([np.ones(4), a, 1 - a])
    >>> rank = fixed_effects_rank(X.T @ X, ["(Intercept)", "a", "b"], 4)
    >>> rank.kept_names, rank.dropped_names
    (['(Intercept)', 'a'], ['b'])
    """
    p = xtx.shape[0]
    diag = np.diag(xtx).copy()
    scale = np.sqrt(np.where(diag > 0, diag, 1.0))
    A = xtx / np.outer(scale, scale)
    gamma = np.finfo(float).eps * (4.0 + np.sqrt(max(n_obs, 1)) / 32.0)
    kept: list[int] = []
    # lower Cholesky factor of A over the kept columns, in the order kept: its leading
    # k x k block is a view, so each step costs two triangular solves and no copy
    factor = np.zeros((p, p))
    for j in range(p):
        if diag[j] <= 0:
            continue
        k = len(kept)
        if k:
            block = factor[:k, :k]
            w = _solve_lower(block, A[kept, j], 0)
            c = _solve_lower(block, w, 1)
        else:
            w = c = np.zeros(0)
        d_j = A[j, j] - w @ w
        if d_j > tol**2 + gamma * (1.0 + np.abs(c).sum()) ** 2:
            factor[k, :k] = w
            factor[k, k] = np.sqrt(d_j)
            kept.append(j)
    mask = np.zeros(p, dtype=bool)
    mask[kept] = True
    return FixedEffectsRank(list(names), mask)


def drop_aliased_columns(xtx: np.ndarray, names: Sequence[str], n_obs: int,
                         what: str = "X") -> FixedEffectsRank:
    """:func:`fixed_effects_rank`, with lme4's warning when it drops columns.

    Refuses a design none of whose columns can be kept (all zeros).
    """
    rank = fixed_effects_rank(xtx, names, n_obs)
    if not rank.kept.any():
        raise ValueError(f"{what} column(s) {list(names)} are all zeros: the model has no fixed effects")
    if rank.deficient:
        warnings.warn(rank.message(), RankDeficientWarning, stacklevel=caller_stacklevel())
    return rank


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
    sizes = [int(m) * Z.shape[1] for (_, Z), m in zip(factors, n_levels)]
    N = sum(sizes)
    if n > p + N or p + N > EXACT_FIT_MAX_COLUMNS:
        return
    Y = np.zeros((n, p + N))
    Y[:, :p] = X
    start, rows = p, np.arange(n)[:, None]
    for (codes, Z), size in zip(factors, sizes):
        q = Z.shape[1]
        Y[rows, start + codes[:, None] * q + np.arange(q)] = Z
        start += size
    norms = np.linalg.norm(Y, axis=0)
    Y /= np.where(norms > 0, norms, 1.0)
    if np.linalg.matrix_rank(Y) >= n:
        raise ValueError(
            f"{n} observations for {p} fixed and {N} random effects: the fixed and random "
            "effects can reproduce any response exactly (the columns of [X Z] span all "
            f"{n} observations), so the residual variance would be 0 and the likelihood "
            "unbounded; use more observations or fewer fixed or random effects"
        )


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
