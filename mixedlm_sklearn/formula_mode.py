"""Formula mode of the estimators: ``MixedLMRegressor(formula="~ Days + (Days | Subject)")``.

With ``formula`` set, an estimator takes a DataFrame ``X`` holding every variable the
formula reads (covariates and grouping factors) and the response as ``y`` (or the
formula's left side, ``fit(df)`` with ``y=None``, as R writes it). This module holds what
the linear and generalized estimators share for it: building the arrays of a fit from the
formula (:class:`FormulaMode`), the designs of new rows for prediction, and the choice of
random-effects terms for a prediction (``re_form``, lme4's ``re.form``) with the handling of
levels not seen in fit (``allow_new_levels``, lme4's ``allow.new.levels``).

The estimators call :meth:`FormulaMode._fit_formula` from ``fit`` and
:meth:`FormulaMode._prediction_rows` at the top of every prediction method; the array API
goes through the same calls unchanged (``formula=None``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._correlation import parse_spec
from ._validation import caller_stacklevel, label_kind
from .formula import ModelFrame, parse_formula
from .formula._frame import _cbind
from .formula._parser import _split_top

__all__ = ["FormulaMode", "split_formula", "ALL_TERMS"]

#: ``re_form`` value that keeps every random-effects term (lme4's ``re.form = NULL``).
ALL_TERMS = "all"

_REFUSED_IN_FORMULA_MODE = ("groups", "Z", "offset")


def _correlation_columns(text: str, given: dict, data: pd.DataFrame, positions: np.ndarray) -> dict:
    """``time`` and ``correlation_groups`` of the fit's rows from the columns a
    ``correlation="car1(~ Time | Rat)"`` names (or as given to fit: columns or arrays)."""
    spec = parse_spec(text)
    out: dict = {"from_formula": True}
    for key, column in (("time", spec.time), ("correlation_groups", spec.groups)):
        value = given.get(key)
        if column is not None and value is not None:
            raise ValueError(f"correlation={text!r} names {key} ({column!r}); do not pass {key}= "
                             "to fit as well")
        source = column if column is not None else value
        if source is None:
            continue
        values = _column_or_array(source, data, len(data), key)
        series = pd.Series(np.asarray(values)[positions],
                           name=source if isinstance(source, str) else key)
        out[key] = series
    return out


def split_formula(formula: str) -> tuple[str | None, str]:
    """The left side (None when empty) and the right side of ``"lhs ~ rhs"`` / ``"~ rhs"``.

    Parameters
    ----------
    formula : str
        A formula with one ``~``.

    Returns
    -------
    tuple
        ``(lhs or None, rhs)``, both stripped.

    Raises
    ------
    ValueError
        When the formula has no ``~`` or several.

    Examples
    --------
    >>> split_formula("Reaction ~ Days + (Days | Subject)")
    ('Reaction', 'Days + (Days | Subject)')
    >>> split_formula("~ Days + (1 | Subject)")
    (None, 'Days + (1 | Subject)')
    """
    sides = _split_top(formula, "~")
    if len(sides) != 2:
        raise ValueError(f"formula {formula!r} must have the form 'response ~ terms' or "
                         "'~ terms' (one '~')")
    lhs, rhs = sides[0].strip(), sides[1].strip()
    if not rhs:
        raise ValueError(f"formula {formula!r} has nothing right of '~'")
    return (lhs or None), rhs


def _response_name(y: Any, data: pd.DataFrame) -> str:
    """A column name for a separately given ``y``: its Series name, else ``y``; unique in data."""
    name = getattr(y, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        name = "y"
    while name in data.columns:
        name = name + "_"
    return name


def _by_position(values: Any, n: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"{what} must have one value per row of X ({n} rows), got shape "
                         f"{array.shape}")
    return array


def _column_or_array(value: Any, data: pd.DataFrame, n: int, what: str) -> np.ndarray | None:
    """``value`` as one entry per row of data: a column name of data, or an array by position."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in data.columns:
            raise ValueError(f"{what}={value!r} is not a column of X (columns: "
                             f"{list(map(str, data.columns))})")
        return data[value].to_numpy()
    return _by_position(value, n, what)


def _two_level_response(values: pd.Series, what: str) -> tuple[np.ndarray, tuple]:
    """A two-level factor, bool or string response as 0/1, failure first (as R's glmer).

    The first level is the failure: a Categorical's first category, ``False``, else the
    smallest label. Missing values stay missing (NaN).
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        levels = list(values.cat.remove_unused_categories().cat.categories)
    else:
        levels = sorted(pd.unique(values.dropna()).tolist(), key=lambda v: (str(type(v)), v))
    if len(levels) != 2:
        raise ValueError(f"the response {what} has {len(levels)} levels {levels[:5]}: a binomial "
                         "response given as labels needs exactly two (the first is the failure)")
    codes = pd.Series(np.where(values.isna(), np.nan, (values == levels[1]).astype(float)),
                      index=values.index)
    return codes.to_numpy(dtype=float), (levels[0], levels[1])


def _is_label_column(values: pd.Series) -> bool:
    dtype = values.dtype
    return (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype)
            or pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype))


class FormulaMode:
    """What the estimators' formula mode adds (a mixin of the estimator classes).

    Subclasses define ``_fit_arrays(**arguments)`` (the array fit, ``self`` returned), and
    say whether the response is a class label (``_formula_labels``) or a binomial count
    that ``cbind(successes, failures)`` may give (``_formula_counts``).
    """

    _formula_labels = False  # the classifier: y holds class labels

    def __str__(self) -> str:
        """lme4's ``print(fit)`` of a fitted estimator (``repr`` stays scikit-learn's)."""
        if getattr(self, "model_", None) is None or not hasattr(self, "fe_params_"):
            return repr(self)
        from ._fit_text import fit_text

        return fit_text(self)

    def _html_repr(self) -> str:
        """Notebooks: lme4's print of a fitted estimator above scikit-learn's diagram."""
        import html

        diagram = super()._html_repr()  # type: ignore[misc]
        if getattr(self, "model_", None) is None or not hasattr(self, "fe_params_"):
            return diagram
        return f"<pre>{html.escape(str(self))}</pre>" + diagram

    def _formula_counts(self) -> bool:
        return False

    # ---- fitting ------------------------------------------------------------------------

    def _fit_formula(self, X: Any, y: Any, *, sample_weight: Any = None,
                     residual_groups: Any = None, context: Any = None,
                     correlated: dict | None = None, **refused: Any):
        """Fit from ``self.formula`` on the DataFrame ``X``: the arrays, then the array fit."""
        given = [name for name in _REFUSED_IN_FORMULA_MODE if refused.get(name) is not None]
        if given:
            raise TypeError(f"{type(self).__name__}(formula=...) reads the grouping factors, "
                            f"random-effects designs and offsets from the formula: put their "
                            f"variables in X (got {', '.join(given)}=)")
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"{type(self).__name__}(formula=...) needs X as a pandas DataFrame "
                            f"holding the formula's variables, got {type(X).__name__}")
        if not isinstance(self.formula, str):
            raise TypeError(f"formula must be a string, got {type(self.formula).__name__}")
        data = X if X.index.is_unique else X.reset_index(drop=True)
        frame, y_fit, weights, levels = self._formula_frame(data, y, context)
        positions = data.index.get_indexer(frame.y.index)
        if sample_weight is not None:
            if weights is not None:
                raise ValueError("cbind(successes, failures) gives the number of trials as the "
                                 "weights; do not pass sample_weight as well")
            weights = _column_or_array(sample_weight, data, len(data), "sample_weight")[positions]
        strata = _column_or_array(residual_groups, data, len(data), "residual_groups")
        arguments = frame.fit_arguments()
        arguments["y"] = y_fit
        if weights is not None:
            arguments["sample_weight"] = np.asarray(weights, dtype=float)
        if strata is not None:
            arguments["residual_groups"] = strata[positions]
        if getattr(self, "correlation", None) is not None:
            arguments["correlated"] = _correlation_columns(self.correlation, correlated or {},
                                                           data, positions)
        decided = self._decided_params(frame)
        saved = {name: self.__dict__[name] for name in decided}
        self.__dict__.update(decided)
        try:
            self._fit_arrays(**arguments)
        finally:
            self.__dict__.update(saved)
        self.model_frame_ = frame
        self._formula_columns_ = list(arguments["X"].columns)
        self._formula_data_ = X  # a reference, for update()
        self._formula_fit_args_ = {"y": y, "sample_weight": sample_weight,
                                   "residual_groups": residual_groups, "context": context}
        self._formula_strata_ = residual_groups if isinstance(residual_groups, str) else None
        names = list(frame._variables)
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        if levels is not None:
            self.response_levels_ = levels
        return self

    def _decided_params(self, frame: ModelFrame) -> dict[str, Any]:
        """``fit_intercept`` and ``cov_type`` as the formula sets them (checked against self's)."""
        decided = frame.estimator_params()
        defaults = {"fit_intercept": True, "cov_type": "unstructured"}
        for name, value in decided.items():
            own = getattr(self, name)
            if own != defaults[name] and own != value:
                raise ValueError(
                    f"{name}={own!r} contradicts the formula {self.formula!r}, which sets it "
                    f"({value!r}): with formula=..., leave {name} at its default ('0 +' removes "
                    "the intercept, '||' makes a covariance diagonal)")
        return decided

    def _formula_frame(self, data: pd.DataFrame, y: Any, context: Any):
        """The model frame, the response as fitted, cbind's trials and a label response's levels."""
        lhs, rhs = split_formula(self.formula)
        if lhs is not None and y is not None:
            raise ValueError(f"the formula {self.formula!r} has a response ({lhs}) and y was "
                             "given too: give one (formula '~ terms' with y, or fit(X) with "
                             "the response in the formula)")
        if lhs is None and y is None:
            raise ValueError(f"the formula {self.formula!r} has no response: pass y to fit, or "
                             "write the response left of '~'")
        pair = _cbind(lhs, self.formula) if lhs is not None else None
        if pair is not None:
            return self._cbind_frame(data, pair, rhs, context)
        levels = None
        if lhs is not None and lhs in data.columns and (
                self._formula_labels or (self._formula_counts() and _is_label_column(data[lhs]))):
            y, lhs = data[lhs], None  # labels: encoded below, as a separate y
        if lhs is not None:
            frame = parse_formula(self.formula, data, context=context)
            return frame, frame.y, None, None
        values = _by_position(y, len(data), "y")
        name = _response_name(y, data)
        if self._formula_labels:
            labels = pd.Series(values, index=data.index)
            codes, _ = pd.factorize(labels, sort=True)
            numeric = np.where(codes < 0, np.nan, codes.astype(float))
            frame = parse_formula(f"{name} ~ {rhs}", data.assign(**{name: numeric}),
                                  context=context)
            positions = data.index.get_indexer(frame.y.index)
            return frame, values[positions], None, None
        labels = pd.Series(y.array if isinstance(y, pd.Series) else values, index=data.index)
        if self._formula_counts() and _is_label_column(labels):  # a Categorical keeps its order
            values, levels = _two_level_response(labels, repr(getattr(y, "name", None) or name))
        frame = parse_formula(f"{name} ~ {rhs}", data.assign(**{name: values}), context=context)
        return frame, frame.y, None, levels

    def _cbind_frame(self, data: pd.DataFrame, pair: tuple[str, str], rhs: str, context: Any):
        """``cbind(successes, failures)``: proportions with the trials as prior weights."""
        if not self._formula_counts():
            raise ValueError(f"cbind(successes, failures) is a binomial response; "
                             f"{type(self).__name__} with family={getattr(self, 'family', None)!r} "
                             "cannot fit it")
        frame = parse_formula(f"I({pair[0]}) ~ {rhs}", data, context=context)
        other = parse_formula(f"I({pair[1]}) ~ {rhs}", data, context=context)
        if not frame.y.index.equals(other.y.index):
            raise ValueError(f"in formula {self.formula!r}, the two columns of cbind() are missing "
                             "in different rows")
        successes, failures = frame.y.to_numpy(), other.y.to_numpy()
        bad = (successes < 0) | (failures < 0)
        if bad.any():
            rows = list(frame.y.index[bad][:5])
            raise ValueError(f"cbind(successes, failures) needs counts >= 0; rows {rows} are negative")
        trials = successes + failures
        with np.errstate(invalid="ignore", divide="ignore"):
            proportion = np.where(trials > 0, successes / np.where(trials > 0, trials, 1.0), 0.0)
        frame.y = pd.Series(proportion, index=frame.y.index, name=f"cbind({pair[0]}, {pair[1]})")
        frame.formula = self.formula
        # a row with no trials carries no information (weight 0 removes it)
        return frame, frame.y, trials, None

    def _formula_response(self, X: Any, y: Any, sample_weight: Any = None) -> tuple[Any, Any]:
        """``(y, sample_weight)`` for ``score``: as given, or from the formula's left side
        evaluated on ``X`` (``cbind(s, f)``: the proportions, the trials as weights)."""
        if y is not None or getattr(self, "formula", None) is None:
            return y, sample_weight
        lhs, _ = split_formula(self.formula)
        if lhs is None or not isinstance(X, pd.DataFrame):
            raise ValueError("score needs y: give it, or fit a formula with a response and "
                             "score a DataFrame")
        levels = getattr(self, "response_levels_", None)
        if lhs in X.columns and (self._formula_labels or levels is not None):
            # labels: the classifier's as they are; a binomial response's by the fit's levels
            y = X[lhs]
            if levels is not None:
                y = np.where(y.isna(), np.nan, (y == levels[1]).astype(float))
            return np.asarray(y), sample_weight
        frame, y_fit, weights, _ = self._formula_frame(X, None, None)
        if len(y_fit) != len(X):
            raise ValueError(f"the response {lhs} is missing in {len(X) - len(y_fit)} rows of X")
        if weights is not None and sample_weight is None:
            sample_weight = weights
        return np.asarray(y_fit), sample_weight

    # ---- prediction ---------------------------------------------------------------------

    def _formula_design(self, X: Any) -> np.ndarray:
        """The fixed-effects design of new rows of a formula fit (``new_data``'s ``X``)."""
        columns = self._formula_columns_
        if isinstance(X, pd.DataFrame):
            missing = [c for c in columns if c not in X.columns]
            if missing:
                raise ValueError(f"the design of the new rows has no column {missing}")
            return np.asarray(X[columns], dtype=np.float64)
        values = np.asarray(X, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(columns):
            raise ValueError(f"X has shape {values.shape}; the formula's design has "
                             f"{len(columns)} columns {columns}")
        return values

    def _prediction_rows(self, X: Any, groups: Any, Z: Any, offset: Any, re_form: Any,
                         allow_new_levels: Any, residual_groups: Any = None) -> tuple:
        """``(X, groups, Z, offset, residual_groups)`` for the array prediction code.

        A formula fit given a DataFrame of variables (and no ``groups``/``Z``/``offset``)
        gets the designs of :meth:`ModelFrame.new_data`; ``re_form`` then keeps the chosen
        terms and ``allow_new_levels`` checks the levels of those kept.
        """
        _check_allow_new_levels(allow_new_levels)
        frame = getattr(self, "model_frame_", None)
        formula_rows = (getattr(self, "_formula_columns_", None) is not None and groups is None
                        and Z is None and offset is None)
        if formula_rows:
            if not isinstance(X, pd.DataFrame):
                raise TypeError(f"this {type(self).__name__} was fitted from a formula: predict "
                                f"takes a DataFrame with the formula's variables, got "
                                f"{type(X).__name__}")
            keep = self._kept_terms(re_form)
            kept_groups = {self._piece_groups()[name] for name in keep}
            data = X
            absent_groups = [factor for term in frame.terms for factor in term.factors
                             if factor not in X.columns and term.group not in kept_groups]
            if absent_groups:  # unused by the kept terms: any label does
                data = X.assign(**{f: self._placeholder(f) for f in dict.fromkeys(absent_groups)})
            missing = [name for name in frame._variables if name not in data.columns]
            if missing:
                grouping = {f for term in frame.terms for f in term.factors}
                hint = (" (grouping factors: give them, or predict at the population level "
                        "with re_form=None)") if grouping & set(missing) else ""
                raise ValueError(f"X has no column {missing}, variables of the formula "
                                 f"{self.formula!r}{hint}")
            args = frame.new_data(data)
            X, groups, Z, offset = args["X"], args["groups"], args["Z"], args.get("offset")
            strata_column = getattr(self, "_formula_strata_", None)
            if residual_groups is None and strata_column is not None and strata_column in data:
                residual_groups = data[self._formula_strata_].to_numpy()
            elif isinstance(residual_groups, str):
                residual_groups = _column_or_array(residual_groups, data, len(data),
                                                   "residual_groups")
            self._check_levels(self._select_terms(groups, Z, keep)[0], allow_new_levels, True)
            groups, Z = self._unconditioned(groups, Z, keep)
            return X, groups, Z, offset, residual_groups
        if re_form is not ALL_TERMS and not (isinstance(re_form, str) and re_form == ALL_TERMS):
            groups, Z = self._select_terms(groups, Z, self._kept_terms(re_form))
        self._check_levels(groups, allow_new_levels, formula_rows)
        return X, groups, Z, offset, residual_groups

    def _piece_groups(self) -> dict[str, str]:
        """Estimator term name -> the grouping factor it belongs to."""
        frame = getattr(self, "model_frame_", None)
        terms = [t.factor for t in self.model_.terms]
        if frame is None:
            return {name: name for name in terms}
        out = {}
        pieces = frame._pieces()
        expanded = [term for term in frame.terms
                    for _ in range(term.Z.shape[1] if term.diagonal and term.Z.shape[1] > 1 else 1)]
        for (name, _, _), term in zip(pieces, expanded):
            out[name] = term.group
        if frame.single_factor:
            out = {terms[0]: frame.terms[0].group}
        return out

    def _placeholder(self, factor: str) -> Any:
        column = self.model_frame_.rows[factor]
        return column.iloc[0]

    def _kept_terms(self, re_form: Any) -> dict[str, frozenset | None]:
        """The estimator's term names ``re_form`` keeps, each with the columns of its
        random effects kept (None: all; lme4 keeps ``(1 | g)`` of a ``(x | g)`` term)."""
        owners = self._piece_groups()
        if re_form is None:
            return {}
        if isinstance(re_form, str):
            if re_form == ALL_TERMS:
                return dict.fromkeys(owners)
            return self._terms_of_formula(re_form, owners)
        if isinstance(re_form, Sequence) and all(isinstance(v, str) for v in re_form):
            unknown = [v for v in re_form if v not in owners.values() and v not in owners]
            if unknown:
                raise ValueError(f"re_form names {unknown}, which are not grouping factors of "
                                 f"the fit ({sorted(set(owners.values()))})")
            return {name: None for name, group in owners.items()
                    if group in re_form or name in re_form}
        raise TypeError(f"re_form must be 'all', None, a formula such as '~ (1 | g)' or a list "
                        f"of grouping factors, got {re_form!r}")

    def _terms_of_formula(self, re_form: str, owners: dict[str, str]) -> dict:
        text = re_form.strip()
        if text == "NA" or text.replace(" ", "") in ("~0", "~-1"):
            return {}
        if not text.startswith("~"):
            raise ValueError(f"re_form {re_form!r} must be 'all', None, a list of grouping "
                             "factors or a formula '~ (left | group) + ...'")
        frame = getattr(self, "model_frame_", None)
        if frame is None:
            raise ValueError("a re_form formula needs a formula fit; give a list of grouping "
                             "factors instead")
        bars = re.findall(r"\(([^()|]*(?:\([^()]*\)[^()|]*)*)\|\|?([^()]*)\)", text)
        if not bars:
            raise ValueError(f"re_form {re_form!r} has no random-effects term '(left | group)'")
        fitted_groups = {t.group for t in frame.terms}
        wanted: dict[str, set[str]] = {}
        for left, right in bars:
            parts = [p.strip() for p in right.split("/")]
            for k in range(len(parts)):
                group = ":".join(parts[:k + 1])
                if group not in fitted_groups:
                    raise ValueError(f"re_form {re_form!r} names {group!r}, which is not a "
                                     f"grouping factor of the fit ({sorted(fitted_groups)})")
                wanted.setdefault(group, set()).update(self._bar_columns(left, group))
        z_names = {t.factor: set(t.z_names) for t in self.model_.terms}
        kept = {}
        for name, group in owners.items():
            if group not in wanted:
                continue
            columns = z_names[name] & wanted[group]
            if columns:
                kept[name] = None if columns == z_names[name] else frozenset(columns)
        return kept

    def _bar_columns(self, left: str, group: str) -> set[str]:
        """The random-effects columns of ``(left | group)`` evaluated on the fitted rows."""
        frame = self.model_frame_
        rows = frame.rows
        name = "y_"
        while name in rows.columns:
            name += "_"
        factors = " : ".join(f"`{f}`" if not str(f).isidentifier() else str(f)
                             for f in group.split(":"))
        sub = parse_formula(f"{name} ~ 1 + ({left} | {factors})", rows.assign(**{name: 0.0}),
                            context=frame._context_numbers or None)
        return {str(c) for term in sub.terms for c in term.Z.columns}

    def _unconditioned(self, groups: Any, Z: Any, keep: dict) -> tuple[Any, Any]:
        """New rows' designs where a term ``re_form`` leaves out is at a level never seen:
        its prediction is the population's (effect 0), and its random effect's variance
        counts fully in intervals, as for a new group."""
        names = [t.factor for t in self.model_.terms]
        z_names = {t.factor: t.z_names for t in self.model_.terms}
        if isinstance(groups, pd.Series):
            name = names[0]
            if name not in keep:
                return pd.Series([_NOT_CONDITIONED] * len(groups), index=groups.index,
                                 name=groups.name, dtype=object), Z
            return groups, _masked(Z, z_names[name], keep[name])
        groups = groups.copy()
        for column in groups.columns:
            if str(column) not in keep:
                groups[column] = pd.Series([_NOT_CONDITIONED] * len(groups), index=groups.index,
                                           dtype=object)
        Z = {k: _masked(v, z_names[k], keep.get(k)) for k, v in Z.items()}
        return groups, Z

    def _select_terms(self, groups: Any, Z: Any, keep: dict) -> tuple[Any, Any]:
        if groups is None and Z is None:
            return None, None
        names = [t.factor for t in self.model_.terms]
        if len(names) == 1 and not isinstance(getattr(self, "random_effects_", None), dict):
            if names[0] not in keep:
                return None, None
            return groups, _masked(Z, self.model_.terms[0].z_names, keep[names[0]])
        if groups is not None:
            if isinstance(groups, pd.DataFrame):
                groups = groups[[c for c in groups.columns if str(c) in keep]]
                groups = None if groups.shape[1] == 0 else groups
        z_names = {t.factor: t.z_names for t in self.model_.terms}
        if isinstance(Z, dict):
            Z = {k: _masked(v, z_names[k], keep[k]) for k, v in Z.items() if k in keep} or None
        elif isinstance(Z, pd.DataFrame) and isinstance(Z.columns, pd.MultiIndex):
            Z = Z.loc[:, [c for c in Z.columns if str(c[0]) in keep]]
            Z = None if Z.shape[1] == 0 else Z
        return groups, Z

    def _check_levels(self, groups: Any, allow_new_levels: Any, formula_rows: bool) -> None:
        """``allow_new_levels``: False refuses, "warn" warns, True accepts unseen levels."""
        if groups is None or (allow_new_levels is True and not formula_rows):
            return
        fitted = self.groups_
        if isinstance(fitted, dict):
            frame = groups if isinstance(groups, pd.DataFrame) else pd.DataFrame(groups)
            columns = {str(c): frame[c].to_numpy(dtype=object) for c in frame.columns}
        else:
            name = self.model_.terms[0].factor
            labels = groups.iloc[:, 0] if isinstance(groups, pd.DataFrame) else groups
            columns = {name: np.asarray(labels, dtype=object).ravel()}
            fitted = {name: fitted}
        new = {}
        for name, labels in columns.items():
            if name not in fitted:
                continue
            seen = pd.Index(fitted[name]).get_indexer(labels) >= 0
            if not seen.all():
                unseen = labels[~seen]
                new[name] = unseen
                if formula_rows and label_kind(unseen) != label_kind(fitted[name]):
                    warnings.warn(
                        f"{unseen.size} of {labels.size} rows have {name!r} labels not seen in "
                        f"fit, of another type ({label_kind(unseen)}, e.g. {unseen[0]!r}) than "
                        f"the fitted labels ({label_kind(fitted[name])}, e.g. "
                        f"{fitted[name][0]!r}): those rows get population-level predictions. "
                        "Give the column the type it had in fit.", UserWarning,
                        stacklevel=caller_stacklevel())
        if not new or allow_new_levels is True:
            return
        counts = ", ".join(f"{name}: {len(pd.unique(v))} ({list(pd.unique(v)[:5])})"
                           for name, v in new.items())
        if allow_new_levels is False:
            raise ValueError(f"new levels in the grouping factors ({counts}); lme4's "
                             "allow.new.levels = FALSE. Pass allow_new_levels=True to give them "
                             "the population prediction (random effect 0)")
        warnings.warn(f"levels not seen in fit get the population prediction (random effect "
                      f"0): {counts}", UserWarning, stacklevel=caller_stacklevel())


class _NotConditioned:
    """The level of a row for a term the prediction does not condition on (never a fitted label)."""

    def __repr__(self) -> str:
        return "<not conditioned>"


_NOT_CONDITIONED = _NotConditioned()


def _masked(Z: Any, z_names: Sequence[str], columns: frozenset | None) -> Any:
    """``Z`` with the columns outside ``columns`` zeroed (their random effects left out)."""
    if columns is None or Z is None:
        return Z
    drop = [j for j, name in enumerate(z_names) if name not in columns]
    if isinstance(Z, pd.DataFrame):
        Z = Z.copy()
        Z.iloc[:, drop] = 0.0
        return Z
    Z = np.array(Z, dtype=float, copy=True)
    Z[:, drop] = 0.0
    return Z


def _check_allow_new_levels(value: Any) -> None:
    if value is True or value is False or value == "warn":
        return
    raise ValueError(f"allow_new_levels must be True, False or 'warn', got {value!r}")
