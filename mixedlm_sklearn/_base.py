"""What the linear and the generalized mixed-model estimators share.

:class:`MixedModelBase` holds the parts of the estimators that do not depend on the model
kind: reading the grouping factors and ``Z`` of new rows (seen and unseen levels, one
factor or several), the linear predictor of new rows, the checks of ``cov_type``, the
warnings of a fit, and storing the fitted fixed and random effects. Both
:class:`~mixedlm_sklearn.MixedLMRegressor` and the GLMM estimators derive from it, so
neither borrows the other's private methods.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from ._design import INTERCEPT, factor_frame, random_terms, z_by_factor
from ._optimize import OptimizerInfo
from ._validation import (
    align_columns,
    as_design,
    caller_stacklevel,
    check_finite,
    column_names_of,
    object_columns_to_float,
    unseen_labels_warning,
)
from .formula_mode import ALL_TERMS, FormulaMode

class SingularFitWarning(UserWarning):
    """The random-effects covariance is singular: a variance or a correlation is on its bound.

    Issued by ``fit`` when the estimate lies on the boundary of the parameter space (a
    variance of 0, a correlation of -1 or 1), lme4's ``isSingular``. The fit is still the
    maximum; its ``singular_`` attribute is True. A simpler random-effects structure
    (fewer terms, ``cov_type="diagonal"``) often describes such data as well.

    See Also
    --------
    MixedLMRegressor : Its ``singular_`` attribute says the same after the fit.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor, SingularFitWarning
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(10), 5)
    >>> X = rng.standard_normal((50, 1))
    >>> y = X[:, 0] + rng.standard_normal(50)  # no group effect at all
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     est = MixedLMRegressor().fit(X, y, groups=g)
    >>> est.singular_, any(issubclass(w.category, SingularFitWarning) for w in caught)
    (True, True)
    """


def _warn_if_none_seen(seen: np.ndarray, labels: np.ndarray, fitted: np.ndarray, what: str) -> None:
    message = unseen_labels_warning(seen, labels, fitted, what)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=caller_stacklevel())


def _fitted_terms(est: Any) -> Any:
    """The random-effects terms of a fit (single or multi-output; also the GLMM
    estimators, which share the prediction helpers)."""
    return est.many_.fit.terms if hasattr(est, "many_") else est.model_.terms


_CONF_INT_METHODS = {"wald": ("Wald",), "profile": (), "boot": ()}


def _check_frame(X: Any) -> Any:
    """Errors for DataFrame problems that array conversion would hide or garble.

    Returns X with object columns (DataFrame or array) converted to floats by the one
    rule of :func:`~mixedlm_sklearn._validation.object_columns_to_float`.
    """
    if not isinstance(X, pd.DataFrame):
        if getattr(X, "dtype", None) == object and np.ndim(X) == 2:
            return object_columns_to_float(X, list(range(np.shape(X)[1])), "X")
        return X
    if X.shape[1] == 0:
        raise ValueError(f"0 feature(s) (shape={X.shape}) while a minimum of 1 is required: X has "
                         "no columns; for an intercept-only model pass a column of ones with "
                         "fit_intercept=False")
    dup = X.columns[X.columns.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"X has duplicate column names {dup}")
    bad = [str(c) for c, dt in X.dtypes.items() if dt != object and not (
        pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt))]
    if bad:
        raise TypeError(
            f"X columns {bad} are not numeric; encode them first (e.g. OneHotEncoder in a "
            "ColumnTransformer)"
        )
    return object_columns_to_float(X, [str(c) for c in X.columns], "X")


@contextlib.contextmanager
def _refitting(est: Any):
    """The state of an estimator being fitted: the fit stores its attributes on an
    estimator without any fitted attribute, and a fit that raises leaves it as it was.

    Fitted attributes are the instance attributes whose names end in ``_``
    (scikit-learn's convention; class attributes such as properties are not in the
    instance's ``__dict__`` and are left alone), also those a front end attached after
    an earlier fit (``model_frame_`` of ``lmer``/``glmer``): a refit by another path
    (arrays, a formula, chunks, Dask) keeps nothing of the previous one.
    """
    before = dict(est.__dict__)
    for name in [k for k in before if k.endswith("_") and not k.startswith("__")]:
        del est.__dict__[name]
    try:
        yield
    except BaseException:
        est.__dict__.clear()
        est.__dict__.update(before)
        raise


def _check_offset(offset: Any, n: int) -> np.ndarray:
    """A known offset: one finite number per row."""
    try:
        values = np.asarray(offset, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"offset must be numbers, one per row: {err}") from None
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != n:
        raise ValueError(f"offset must have one value per row ({n} rows), got shape "
                         f"{values.shape}")
    check_finite(values, "offset")
    return values


def _level(level: str | None, re_form: Any) -> str:
    """``fitted``'s and ``residuals``' older ``level`` from ``re_form`` ("all" or None)."""
    if level is not None:
        return level
    if re_form is None:
        return "marginal"
    if isinstance(re_form, str) and re_form == ALL_TERMS:
        return "conditional"
    raise ValueError(f"fitted values and residuals take re_form='all' or None, got {re_form!r}")


def fitted_intercept(est: Any, model: Any) -> bool:
    """Whether the fit added an intercept column: the formula decides in formula mode."""
    design = getattr(model, "design", None)
    return bool(design.intercept) if design is not None else bool(est.fit_intercept)


def _fixed_effects_of(model: Any) -> tuple[np.ndarray, list]:
    """The coefficients with the dropped (aliased) columns' back in, and all names."""
    beta, fe_names = model.solution.beta, model.fe_names
    if model.rank is not None:
        # As lme4's fixef(fit, add.dropped = TRUE): a dropped (aliased) column's
        # coefficient is 0 (so predict is unchanged), its standard error NaN.
        beta, fe_names = model.rank.expand(beta, 0.0), model.rank.names
    return beta, fe_names


def store_fixed_effects(est: Any, model: Any, cov_fe: np.ndarray) -> None:
    """``intercept_``, ``coef_``, ``cov_fe_``, ``theta_`` of a fit (the linear and the
    generalized estimators alike); ``fe_params_`` and ``bse_`` follow from them on first
    access (:class:`_FittedTable`)."""
    beta, _ = _fixed_effects_of(model)
    for name in ("fe_params_", "bse_"):  # tables built from an earlier fit (a copied estimator's)
        est.__dict__.pop(name, None)
    if model.rank is not None:
        cov_fe = model.rank.expand_cov(cov_fe)
    intercept = fitted_intercept(est, model)
    est.intercept_ = float(beta[0]) if intercept else 0.0
    est.coef_ = beta[1:].copy() if intercept else beta.copy()
    est.cov_fe_ = cov_fe
    est.theta_ = model.solution.theta.copy()


def store_random_effects(est: Any, model: Any, several: bool, condvar: list | None) -> None:
    """``cov_re_``, ``groups_``, ``n_groups_``, ``random_effects_``, ``random_effects_cov_``:
    arrays and a DataFrame for one term, dicts keyed by factor for several; ``condvar``
    (the conditional covariances per term) None when they are left to be asked for."""
    terms, sol = model.terms, model.solution
    if not len(terms):  # least squares: no groups, no random effects
        est.cov_re_ = np.zeros((1, 1))
        est.groups_ = np.array([], dtype=object)
        est.n_groups_ = 0
        est.random_effects_ = pd.DataFrame(columns=[INTERCEPT], dtype=float)
        est.random_effects_cov_ = np.zeros((0, 1, 1))
        return
    cov_re = sol.cov_re()
    # random_effects_ follows on first access (_FittedTable), by factor when cov_re_ is;
    # one built from an earlier fit (a copied estimator's, as a bootstrap's replicates) goes
    est.__dict__.pop("random_effects_", None)
    if several:
        est.cov_re_ = {t.factor: c for t, c in zip(terms, cov_re)}
        est.groups_ = {t.factor: model.labels[t.factor] for t in terms}
        est.n_groups_ = {t.factor: t.n_levels for t in terms}
        est.random_effects_cov_ = None if condvar is None else {t.factor: c for t, c in zip(terms, condvar)}
    else:
        term = terms[0]
        est.cov_re_ = cov_re[0]
        est.groups_ = model.labels[term.factor]
        est.n_groups_ = term.n_levels
        est.random_effects_cov_ = None if condvar is None else condvar[0]


def _fe_params_table(est: Any, model: Any) -> pd.Series:
    beta, fe_names = _fixed_effects_of(model)
    return pd.Series(beta, index=fe_names, name="estimate")


def _bse_table(est: Any, model: Any) -> pd.Series:
    return pd.Series(np.sqrt(np.diag(est.cov_fe_)), index=_fixed_effects_of(model)[1], name="std_error")


def _random_effects_table(est: Any, model: Any) -> pd.DataFrame | dict:
    tables = {t.factor: pd.DataFrame(b, index=pd.Index(model.labels[t.factor], name=t.factor),
                                     columns=list(t.z_names))
              for t, b in zip(model.terms, model.solution.blups())}
    return tables if isinstance(est.cov_re_, dict) else tables[model.terms[0].factor]


class _FittedTable:
    """A fitted attribute that is a pandas table of numbers stored by the fit, built from
    ``model_`` on first access and then kept on the instance.

    Building the tables (a pandas index of the names or group labels each) cost a fifth of
    a 10^4-row fit and a tenth of a small one, and many fits (a bootstrap, a grid search)
    never read them. A non-data descriptor: a value stored on the instance (the
    multi-response fits store theirs) takes precedence; the refit's clearing of the fitted
    attributes (:func:`_refitting`) and storing a fit's attributes on an estimator (a
    bootstrap's copies of the fitted one) clear a built one. Before a fit, or after a
    fit that stores its own, reading it is an ``AttributeError`` as for any fitted
    attribute that is not there.
    """

    def __init__(self, build) -> None:
        self.build = build

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, est, owner=None):
        if est is None:
            return self
        model = est.__dict__.get("model_")
        if model is None or getattr(model, "solution", None) is None or "cov_re_" not in est.__dict__:
            raise AttributeError(f"{type(est).__name__!r} object has no attribute {self.name!r}")
        value = self.build(est, model)
        est.__dict__[self.name] = value
        return value


class MixedModelBase(FormulaMode, BaseEstimator):
    """The estimators' shared machinery (no public API of its own)."""

    fe_params_ = _FittedTable(_fe_params_table)
    bse_ = _FittedTable(_bse_table)
    random_effects_ = _FittedTable(_random_effects_table)

    def _check_cov_type(self, names: Sequence[str]) -> None:
        if isinstance(self.cov_type, dict):
            unknown = [k for k in self.cov_type if k not in names]
            bad = {k: v for k, v in self.cov_type.items() if v not in ("unstructured", "diagonal")}
            if unknown:
                raise ValueError(f"cov_type names {unknown}, which are not grouping factors of the "
                                 f"fit {list(names)}")
            if bad:
                raise ValueError(f"cov_type values must be 'unstructured' or 'diagonal', got {bad}")

    def _random_terms(self, groups: Any, Z: Any, n: int, instead: str) -> list:
        """The random-effects terms of ``groups`` and ``Z`` (``cov_type`` checked against
        their names, and ``n_agq`` where the estimator has it). Without ``groups`` there are
        none, with a warning naming what is fitted ``instead``."""
        if groups is None:
            warnings.warn(f"no groups were given: fitting without random effects ({instead}). "
                          "Pass groups=... to fit the mixed model.", UserWarning,
                          stacklevel=caller_stacklevel())
            terms_in = []
        else:
            terms_in = random_terms(groups, Z, n, self.cov_type)
        self._check_cov_type([t.name for t in terms_in])
        if getattr(self, "n_agq", 1) > 1 and (len(terms_in) != 1 or terms_in[0].Z.shape[1] != 1):
            raise ValueError("n_agq > 1 (adaptive Gauss-Hermite quadrature) needs a single grouping "
                             "factor with a scalar random effect, as in lme4; use n_agq=1 (Laplace)")
        return terms_in

    def _warn_fit(self, info: OptimizerInfo) -> None:
        if not info.converged:
            warnings.warn(
                f"the optimiser did not converge ({info.message}). Try: max_iter larger than "
                f"{self.max_iter}, covariates on comparable scales (centre/standardise), or a "
                "simpler random-effects structure (cov_type='diagonal', fewer slopes).",
                ConvergenceWarning,
                stacklevel=caller_stacklevel(),
            )
        if self.singular_:
            warnings.warn(
                "boundary (singular) fit: a random-effects variance is 0 or a correlation is "
                "+-1. The data do not support this random-effects structure; consider "
                "removing the degenerate term (see lme4's ?isSingular).",
                SingularFitWarning,
                stacklevel=caller_stacklevel(),
            )

    def _linear_predictor(self, X: Any, *, groups: Any = None, Z: Any = None, offset: Any = None,
                          return_std: bool = False, residual_groups: Any = None) -> Any:
        """The linear predictor of new rows (the linear model's prediction), and with
        ``return_std`` its standard error as a prediction of a new response."""
        pred, X, parts = self._predict_rows(X, groups, Z, offset)
        if return_std and hasattr(self, "many_"):
            raise ValueError("return_std is for a single response: use for_response(j).predict")
        if return_std:
            from .inference.prediction import prediction_std

            return pred, prediction_std(self, X, parts, residual_groups, kind="prediction")
        return pred

    def _predict_rows(self, X: Any, groups: Any, Z: Any, offset: Any) -> tuple:
        """Predictions, the validated ``X`` and the rows' levels (:meth:`_new_levels`)."""
        check_is_fitted(self)
        if getattr(self, "_formula_columns_", None) is None:
            X = validate_data(self, _check_frame(X), reset=False, dtype=np.float64,
                              accept_sparse=False)
        else:
            X = self._formula_design(X)
        if hasattr(self, "many_"):  # several responses: (n, k)
            pred = X @ self.coef_.T + self.intercept_
            if offset is not None:
                pred = pred + _check_offset(offset, X.shape[0])[:, None]
            parts = self._new_levels(X.shape[0], groups, Z)
            blups = (list(self.random_effects_.values()) if isinstance(self.random_effects_, dict)
                     else [self.random_effects_])
            for part, b in zip(parts, blups):
                if part is not None:
                    idx, z = part
                    seen = idx >= 0
                    pred[seen] += np.einsum("iq,kiq->ik", z[seen], b[:, idx[seen]])
            return pred, X, parts
        pred = X @ self.coef_ + self.intercept_
        if offset is not None:
            pred = pred + _check_offset(offset, X.shape[0])
        parts = self._new_levels(X.shape[0], groups, Z)
        blups = self.model_.solution.blups() if len(self.model_.terms) else []
        for part, b in zip(parts, blups):
            if part is not None:
                idx, z = part
                seen = idx >= 0
                pred[seen] += np.einsum("ij,ij->i", z[seen], b[idx[seen]])
        return pred, X, parts

    def _new_levels(self, n: int, groups: Any, Z: Any) -> list:
        """Per random-effects term (model order): ``(level, z)`` of new rows, the level's
        index among the fitted ones (-1 unseen) and the rows' design; None for a term
        whose factor is not given (no ``groups``, or a factor left out of them)."""
        terms = _fitted_terms(self)
        if not len(terms) or (groups is None and Z is None):
            return [None] * len(terms)
        if isinstance(self.random_effects_, dict):
            return self._several_levels(n, groups, Z)
        if Z is None:
            z_names = list(terms[0].z_names)
            if z_names != [INTERCEPT]:
                raise ValueError(
                    f"Z is required: the model was fitted with an explicit random-effects "
                    f"design (columns {z_names})"
                )
            z_design = np.ones((n, 1))
        else:
            z_design = as_design(self._aligned_z(Z, None, "Z"), n, "Z")
            if z_design.shape[1] != terms[0].q:
                raise ValueError(f"Z has {z_design.shape[1]} columns, the model was fitted with "
                                 f"{terms[0].q}")
        if groups is None:  # a design without levels: every row of a new group
            return [(np.full(n, -1), z_design)]
        labels = np.asarray(groups, dtype=object).ravel()
        if labels.shape[0] != n:
            raise ValueError(f"groups has {labels.shape[0]} entries but X has {n} rows")
        idx = pd.Index(self.groups_).get_indexer(labels)
        if getattr(self, "_formula_columns_", None) is None:  # formula fits check their own
            _warn_if_none_seen(idx >= 0, labels, self.groups_, "groups")
        return [(idx, z_design)]

    def _several_levels(self, n: int, groups: Any, Z: Any) -> list:
        """:meth:`_new_levels` with several grouping factors."""
        frame = factor_frame(groups, n) if groups is not None else pd.DataFrame(index=range(n))
        Z = {} if Z is None else z_by_factor(Z)
        if Z is None:
            raise TypeError("Z must be a dict or a (factor, column) DataFrame for this model")
        unknown = [k for k in Z if k not in self.random_effects_]
        if unknown:
            raise ValueError(f"Z key(s) {unknown} name no grouping factor of the fit "
                             f"({list(self.random_effects_)})")
        parts = {}
        for col in frame.columns:
            name = str(col)
            if name not in self.random_effects_:
                raise ValueError(f"groups column {name!r} is not a grouping factor of the fit "
                                 f"({list(self.random_effects_)})")
            z_names = [list(t.z_names) for t in _fitted_terms(self) if t.factor == name][0]
            if name in Z:
                z_k = as_design(self._aligned_z(Z[name], name, f"Z[{name!r}]"), n, f"Z[{name!r}]")
            elif z_names == [INTERCEPT]:
                z_k = np.ones((n, 1))
            else:
                raise ValueError(f"Z[{name!r}] is required: that factor has random slopes")
            labels = np.asarray(frame[col], dtype=object)
            idx = pd.Index(self.groups_[name]).get_indexer(labels)
            if getattr(self, "_formula_columns_", None) is None:  # formula fits check their own
                _warn_if_none_seen(idx >= 0, labels, self.groups_[name], f"groups[{name!r}]")
            parts[name] = (idx, z_k)
        for name, z in Z.items():  # a design without levels: rows of a new level
            if name not in parts:
                z_k = as_design(self._aligned_z(z, name, f"Z[{name!r}]"), n, f"Z[{name!r}]")
                parts[name] = (np.full(n, -1), z_k)
        return [parts.get(t.factor) for t in _fitted_terms(self)]

    def _aligned_z(self, Z: Any, factor: str | None, what: str) -> Any:
        """Z of new rows checked by column name against fit's (see :func:`align_columns`)."""
        fitted = getattr(self, "_z_names_in", {})
        if factor not in fitted:  # no Z in fit (a random intercept)
            return Z
        return align_columns(Z, fitted[factor], what, type(self).__name__)

    def _remember_z_names(self, Z: Any) -> None:
        """The column names of fit's Z, per factor, for predict's name checks."""
        if Z is None:
            self._z_names_in = {}
        elif (by_factor := z_by_factor(Z)) is not None:
            self._z_names_in = {k: column_names_of(v) for k, v in by_factor.items()}
        else:
            self._z_names_in = {None: column_names_of(Z)}
