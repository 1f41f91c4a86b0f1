"""``MixedLMRegressor``: the linear mixed model as a scikit-learn regressor."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._crossed import CrossedDeviance, build_crossed_model, fit_crossed
from ._chunked import INTERCEPT, is_dask_collection, stats_from_chunks, stats_from_dask
from ._deviance import ProfiledDeviance, Solution
from ._heteroscedastic import fit_heteroscedastic, stratum_stats
from ._optimize import OptimizerInfo, fit_deviance, single_threaded_blas
from ._stats import GroupStats, compute_stats
from ._validation import (
    FixedEffectsRank,
    RankDeficientWarning,
    align_columns,
    as_design,
    as_response,
    check_counts,
    check_cross_products,
    check_finite,
    check_random_design,
    check_residual_variance,
    check_response,
    check_weights,
    clean_failure,
    column_names_of,
    drop_aliased_columns,
    encode_groups,
    is_sparse,
    least_squares_reml,
    object_columns_to_float,
    take_rows,
    unseen_labels_warning,
)

__all__ = ["MixedLMRegressor", "SingularFitWarning", "RankDeficientWarning", "FittedModel"]


class SingularFitWarning(UserWarning):
    """The random-effects covariance is singular: a variance or a correlation is on its bound."""


@dataclass(frozen=True)
class FittedModel:
    """What inference needs from a fit: the deviance function, the optimum and the names.

    Attributes
    ----------
    deviance : ProfiledDeviance
        ``theta -> deviance`` on the fitted data (re-optimised by profiles).
    solution : Solution
        The fit at the optimum.
    info : OptimizerInfo
    fe_names, re_names : list of str
        Names of the fixed-effects columns (intercept first) and of the Z columns.
    group_name : str
        Name of the grouping factor (``"group"`` when unnamed); a list of names with
        several factors.
    strata : tuple, optional
        With ``residual_groups``: the statistics of each stratum (reference first) and
        the stratum labels, for inference that treats the variance ratios as parameters.
    """

    deviance: ProfiledDeviance
    solution: Solution
    info: OptimizerInfo
    fe_names: list[str]
    re_names: list[str]
    group_name: str | list[str]
    strata: tuple | None = None
    rank: FixedEffectsRank | None = None  # set when aliased fixed-effects columns were dropped


def _column_names(values: Any, prefix: str, width: int) -> list[str]:
    if isinstance(values, pd.DataFrame):
        return [str(c) for c in values.columns]
    if isinstance(values, pd.Series) and values.name is not None:
        return [str(values.name)]
    return [f"{prefix}{j}" for j in range(width)]


def _check_frame(X: Any) -> Any:
    """Errors for DataFrame problems that array conversion would hide or garble.

    Returns X with object columns (DataFrame or array) converted to floats by the one
    rule of :func:`object_columns_to_float`.
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
def _unchanged_on_error(est: "MixedLMRegressor"):
    """A fit that raises leaves the estimator as it was (no half-updated attributes)."""
    before = dict(est.__dict__)
    try:
        yield
    except BaseException:
        est.__dict__.clear()
        est.__dict__.update(before)
        raise


def _warn_if_none_seen(seen: np.ndarray, labels: np.ndarray, fitted: np.ndarray, what: str) -> None:
    message = unseen_labels_warning(seen, labels, fitted, what)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=3)


def _group_name(groups: Any) -> str:
    """The grouping factor's name: a Series' name or a one-column DataFrame's column."""
    if isinstance(groups, pd.DataFrame) and groups.shape[1] == 1:
        return str(groups.columns[0])
    name = getattr(groups, "name", None)
    return "group" if name is None else str(name)


def _print_iteration(iteration: int, deviance: float) -> None:
    print(f"[MixedLMRegressor] iteration {iteration:3d}: deviance {deviance:.10g}")


def _z_by_factor(Z: Any) -> dict | None:
    """Z given per grouping factor: a dict, or a DataFrame with (factor, column) columns.

    The DataFrame form is what cross-validation can split by rows (a dict is passed to
    every fold whole).
    """
    if isinstance(Z, dict):
        return {str(k): v for k, v in Z.items()}
    if isinstance(Z, pd.DataFrame) and isinstance(Z.columns, pd.MultiIndex):
        return {str(k): Z[k] for k in Z.columns.get_level_values(0).unique()}
    return None


def _several_factors(groups: Any, Z: Any) -> bool:
    """Several grouping factors: a table of them, or Z given per factor."""
    if _z_by_factor(Z) is not None:
        return True
    if isinstance(groups, pd.DataFrame):
        return groups.shape[1] > 1
    return getattr(groups, "ndim", 1) == 2 and np.shape(groups)[1] > 1


def _factor_frame(groups: Any, n: int) -> pd.DataFrame:
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


class MixedLMRegressor(RegressorMixin, BaseEstimator):
    """Linear mixed-effects model fitted by REML or maximum likelihood.

    For each group ``i``: ``y_i = X_i b + Z_i g_i + e_i`` with ``g_i ~ N(0, cov_re)`` and
    ``e_i ~ N(0, scale * I)``, independent across groups. Estimates equal lme4's ``lmer``:
    the relative covariance factor is optimised on the profiled deviance with an analytic
    gradient, from per-group sufficient statistics (cost per evaluation grows with the
    number of groups, not rows).

    Parameters
    ----------
    reml : bool, default=True
        Restricted maximum likelihood (True) or maximum likelihood.
    fit_intercept : bool, default=True
        Add an intercept column to the fixed effects. With False, X is used as given.
    cov_type : {"unstructured", "diagonal"}, default="unstructured"
        Covariance of the random effects: full (lme4 ``(x | g)``) or independent
        (lme4 ``(x || g)``).
    max_iter : int, default=1000
        Iteration limit of each optimiser run (small problems are also started from a
        few other points, each run with this limit; a first run that reaches it ends
        the fit with a ConvergenceWarning).
    tol : float, default=1e-8
        Relative change of the deviance at which the quasi-Newton phase stops; a Newton
        step with a finite-difference Hessian then finishes and checks the optimum.
    verbose : int, default=0
        Print progress (statistics pass, optimiser) when positive.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features_in_,)
        Fixed effects of the columns of X.
    intercept_ : float
        Fixed intercept (0.0 when ``fit_intercept=False``).
    cov_re_ : ndarray of shape (q, q)
        Covariance of the random effects.
    scale_ : float
        Residual variance (of the reference stratum when ``residual_groups`` is given).
    residual_var_ : dict
        Residual variance per stratum of ``residual_groups`` (``{"(all)": scale_}``
        without strata).
    llf_ : float
        Log-likelihood; for REML fits the REML criterion as lme4's ``logLik`` reports it.
    aic_, bic_ : float
        Information criteria with lme4's parameter count ``df_model_``.
    random_effects_ : DataFrame of shape (n_groups_, q)
        BLUPs (conditional modes) of the random effects, a row per group.
    random_effects_cov_ : ndarray of shape (n_groups_, q, q)
        Conditional covariance of each group's random effects (lme4's ``condVar``).
    fe_params_ : Series
        All fixed effects, intercept first, named; 0 for a column dropped as aliased
        (lme4's ``fixef(fit, add.dropped = TRUE)`` has NA there; 0 keeps predict working).
    bse_ : Series
        Standard errors of ``fe_params_`` (NaN for a dropped column).
    cov_fe_ : ndarray
        Covariance matrix of ``fe_params_`` (NaN rows and columns for dropped ones).
    theta_ : ndarray
        Relative covariance factor entries (lme4's ``getME(fit, "theta")``).
    groups_ : ndarray
        Group labels (sorted; a Categorical's in category order): the rows of
        ``random_effects_``.
    n_groups_, n_iter_, converged_, singular_, df_model_ : fit information.
    model_ : FittedModel
        Deviance function and optimum, used by the inference methods.
    n_features_in_, feature_names_in_ : as in scikit-learn.

    Examples
    --------
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> est = MixedLMRegressor().fit(
    ...     df[["Days"]], df["Reaction"], groups=df["Subject"],
    ...     Z=df[["Days"]].assign(intercept=1.0)[["intercept", "Days"]])
    >>> round(est.llf_, 3)
    -871.814
    """

    # score() conditions on the BLUPs only when asked: by default a routed `groups` goes
    # to fit and to the CV splitter, not to score (held-out groups are new anyway).
    __metadata_request__score = {"groups": False, "Z": False}

    _parameter_constraints: dict = {
        "reml": ["boolean"],
        "fit_intercept": ["boolean"],
        "cov_type": [StrOptions({"unstructured", "diagonal"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        reml: bool = True,
        fit_intercept: bool = True,
        cov_type: str = "unstructured",
        max_iter: int = 1000,
        tol: float = 1e-8,
        verbose: int = 0,
    ) -> None:
        self.reml = reml
        self.fit_intercept = fit_intercept
        self.cov_type = cov_type
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose

    # ---- fitting --------------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any, *, groups: Any = None, Z: Any = None, sample_weight: Any = None,
            residual_groups: Any = None):
        """Fit the model.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates (a DataFrame keeps its column names). Object columns
            are numeric when ``float()`` takes every value, in a DataFrame as in an array.
            Columns aliased with earlier ones (e.g. every level of a one-hot encoded
            factor next to the intercept) are dropped as lme4 does, with a
            :class:`RankDeficientWarning` naming them: their ``coef_`` is 0, their
            ``bse_`` and ``cov_fe_`` entries NaN, and ``df_model_`` does not count them.
        y : array-like of shape (n,)
        groups : array-like of shape (n,), optional
            Group label of each row (any hashable values; integers and their decimal
            text are one label, see :func:`~mixedlm_sklearn._validation.canonical_labels`).
            Without it the model has no random effects and reduces to least squares (with
            a warning).
        Z : array-like of shape (n, q), optional
            Random-effects design; default a random intercept (a column of ones).
        sample_weight : array-like of shape (n,), optional
            Prior weights: the residual variance of row ``r`` is ``scale / w_r``
            (lme4's ``weights``). A weight of 0 (an infinite residual variance) removes
            the row before anything else: the fit equals the fit without those rows, and
            a group whose rows all have weight 0 is not a group of the fit (predict treats
            it as unseen). Negative and non-finite weights are refused.
        residual_groups : array-like of shape (n,), optional
            Stratum of each row: each stratum gets its own residual variance (nlme's
            ``weights = varIdent(~ 1 | stratum)``); ``scale_`` is then the variance of the
            first stratum in sorted order and ``residual_var_`` holds them all.

        Returns
        -------
        self

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
        >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
        >>> round(est.llf_, 4), est.n_groups_, est.converged_
        (-871.8141, 18, True)
        >>> est.cov_re_.round(2)
        array([[612.09,   9.6 ],
               [  9.6 ,  35.07]])
        """
        with _unchanged_on_error(self), clean_failure():
            return self._fit(X, y, groups, Z, sample_weight, residual_groups)

    def _fit(self, X, y, groups, Z, sample_weight, residual_groups) -> "MixedLMRegressor":
        self._remember_z_names(Z)
        if is_dask_collection(X):
            if residual_groups is not None or _z_by_factor(Z) is not None:
                raise NotImplementedError("Dask input supports one grouping factor and one "
                                          "residual variance (no residual_groups, no Z per factor)")
            labels, stats = stats_from_dask(X, y, groups, Z, sample_weight,
                                            intercept=self.fit_intercept, verbose=self.verbose)
            re_names = [INTERCEPT] if Z is None else [str(c) for c in Z.columns]
            return self._fit_external(stats, labels, [str(c) for c in X.columns], re_names,
                                      getattr(groups, "name", None))
        X = _check_frame(X)
        X_names_src = X
        y_values = np.asarray(y) if y is not None and not is_sparse(y) else None
        if y_values is not None and y_values.dtype.kind in "USO":  # numpy's isfinite refuses text
            y = y_values = as_response(y_values)
        if y_values is not None and y_values.dtype.kind in "fc":  # sklearn would not name rows
            check_finite(y_values, "y")
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, accept_sparse=False,
                             ensure_all_finite=False)
        check_finite(X, "X", _column_names(X_names_src, "x", X.shape[1]))
        check_finite(y, "y")  # labels such as None only become NaN in validate_data
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"n_samples={n}: a model needs at least 2 samples")
        fe_names = _column_names(X_names_src, "x", X.shape[1])
        if self.fit_intercept:
            fe_names = [INTERCEPT] + fe_names
        if not fe_names:
            raise ValueError("the model has no fixed effects: give X columns or fit_intercept=True")
        weights = None if sample_weight is None else check_weights(sample_weight, n)
        if weights is not None and not weights.all():
            # a weight of 0 is an infinite residual variance: the row carries no information
            keep = weights > 0
            if keep.sum() < 2:
                raise ValueError(f"sample_weight is zero in {n - int(keep.sum())} of {n} rows: a "
                                 "model needs at least 2 rows of positive weight")
            X, y, weights = X[keep], y[keep], weights[keep]
            groups = take_rows(groups, keep, "groups")
            Z = take_rows(Z, keep, "Z")
            residual_groups = take_rows(residual_groups, keep, "residual_groups")
            n = X.shape[0]

        if _several_factors(groups, Z):
            if residual_groups is not None:
                raise ValueError("residual_groups is supported with one grouping factor only; "
                                 "with several factors the residual variance is common")
            self._fit_several(X, y, groups, Z, weights, fe_names)
            return self
        if Z is None:
            z_design = np.ones((n, 1))
            re_names = [INTERCEPT]
        else:
            z_design = as_design(Z, n, "Z")
            re_names = _column_names(Z, "z", z_design.shape[1])
        if groups is None:
            warnings.warn(
                "no groups were given: fitting without random effects (ordinary least "
                "squares). Pass groups=... to fit the mixed model.",
                UserWarning,
                stacklevel=2,
            )
            codes, labels = np.zeros(n, dtype=np.intp), np.array(["(all)"], dtype=object)
        else:
            codes, labels = encode_groups(groups, n)
            if labels.size < 2:
                raise ValueError(
                    f"random effects need at least two groups; groups has {labels.size} level"
                )
        group_name = _group_name(groups)
        if residual_groups is not None:
            if groups is None:
                raise ValueError("residual_groups needs groups: a residual variance per stratum is "
                                 "estimated together with the random effects")
            strata, strata_labels = encode_groups(residual_groups, n, name="residual_groups")
            parts = stratum_stats(X, y, z_design, codes, labels.size, strata, strata_labels.size,
                                  weights, strata_labels, intercept=self.fit_intercept)
            self._fit_from_stats(sum(parts[1:], parts[0]), labels, fe_names, re_names, group_name,
                                 strata=(parts, strata_labels))
            return self
        self._fit_stats(X, y, z_design, codes, labels, weights, fe_names, re_names,
                        group_name=group_name, random=groups is not None)
        return self

    def fit_chunks(
        self,
        chunks: Iterable[pd.DataFrame],
        *,
        y: str,
        groups: str,
        X: Sequence[str],
        Z: Sequence[str] | None = None,
        sample_weight: str | None = None,
    ) -> "MixedLMRegressor":
        """Fit from an iterable of DataFrames, e.g. a file read in chunks.

        The sufficient statistics of each chunk are added up by group label, so peak
        memory is one chunk plus a few numbers per group; a group may span chunks. The
        result equals :meth:`fit` on the concatenated data (to rounding). Group labels
        that are integers in some chunks and strings in others (``read_csv`` infers the
        type per chunk) are compared by the rule of
        :func:`~mixedlm_sklearn._validation.canonical_labels`; aliased columns are
        dropped from the summed cross-products as in :meth:`fit`.

        Parameters
        ----------
        chunks : iterable of DataFrame
            For example ``pd.read_csv(path, chunksize=1_000_000)`` or
            ``(b.to_pandas() for b in pyarrow.parquet.ParquetFile(path).iter_batches())``.
        y, groups : str
            Columns of the response and of the group labels.
        X : list of str
            Fixed-effects columns (the intercept is added when ``fit_intercept``).
        Z : list of str, optional
            Random-effects columns; ``"(Intercept)"`` stands for a column of ones.
            Default: a random intercept.
        sample_weight : str, optional
            Column of prior weights (a weight of 0 removes the row, as in :meth:`fit`).

        Returns
        -------
        self

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> chunks = (df.iloc[i:i + 50] for i in range(0, len(df), 50))
        >>> est = MixedLMRegressor().fit_chunks(
        ...     chunks, y="Reaction", groups="Subject", X=["Days"], Z=["(Intercept)", "Days"])
        >>> round(est.llf_, 3)
        -871.814
        """
        self._validate_params()
        if isinstance(X, str) or (Z is not None and isinstance(Z, str)):
            raise TypeError("X and Z must be lists of column names")
        if len(X) == 0:
            raise ValueError("X is an empty list: give at least one fixed-effects column (for an "
                             "intercept-only model, a column of ones with fit_intercept=False)")
        with _unchanged_on_error(self), clean_failure():
            return self._fit_chunks(chunks, y, groups, X, Z, sample_weight)

    def _fit_chunks(self, chunks, y, groups, X, Z, sample_weight) -> "MixedLMRegressor":
        labels, stats = stats_from_chunks(chunks, y=y, groups=groups, X=list(X), Z=Z,
                                          sample_weight=sample_weight,
                                          intercept=self.fit_intercept, verbose=self.verbose)
        re_names = [INTERCEPT] if Z is None else [str(c) for c in Z]
        self._z_names_in = {} if Z is None else {None: re_names}
        return self._fit_external(stats, labels, [str(c) for c in X], re_names, groups)

    def _fit_external(self, stats: GroupStats, labels: np.ndarray, x_names: list[str],
                      re_names: list[str], group_name: str | None) -> "MixedLMRegressor":
        """Finish a fit whose statistics were computed outside ``fit`` (chunks, Dask)."""
        if labels.size < 2:
            raise ValueError(f"random effects need at least two groups; the data have {labels.size}")
        self.n_features_in_ = len(x_names)
        self.feature_names_in_ = np.asarray(x_names, dtype=object)
        fe_names = ([INTERCEPT] if self.fit_intercept else []) + list(x_names)
        self._fit_from_stats(stats, labels, fe_names, re_names, group_name or "group")
        return self

    def _fit_several(self, X, y, groups, Z, weights, fe_names) -> None:
        """Several grouping factors (crossed or nested): the sparse penalised system."""
        n = X.shape[0]
        frame = _factor_frame(groups, n)
        names = [str(c) for c in frame.columns]
        z_by_name = {} if Z is None else _z_by_factor(Z)
        if z_by_name is None:
            raise TypeError("with several grouping factors, Z must be a dict from factor name to "
                            "that factor's (n, q) design, or a DataFrame with (factor, column) "
                            "MultiIndex columns; a factor missing from it gets a random intercept")
        unknown = [k for k in z_by_name if k not in names]
        if unknown:
            raise ValueError(f"Z key(s) {unknown} name no grouping factor; the factors are {names}")
        diagonal = self.cov_type == "diagonal"
        terms, labels, re_names = [], {}, {}
        for col, name in zip(frame.columns, names):
            codes, levels = encode_groups(frame[col], n, name=f"groups[{name!r}]")
            if levels.size < 2:
                raise ValueError(f"grouping factor {name!r} has a single level; a random effect "
                                 "needs at least two")
            if name in z_by_name:
                z_k = as_design(z_by_name[name], n, f"Z[{name!r}]")
                re_names[name] = _column_names(z_by_name[name], "z", z_k.shape[1])
            else:
                z_k, re_names[name] = np.ones((n, 1)), [INTERCEPT]
            zero = ~np.any(z_k != 0, axis=0)
            if zero.any():
                raise ValueError(f"Z[{name!r}] column(s) {[re_names[name][j] for j in np.flatnonzero(zero)]} "
                                 "are all zeros")
            terms.append((codes, z_k, diagonal))
            labels[name] = levels
        design = np.column_stack([np.ones(n), X]) if self.fit_intercept else X
        root_w = None if weights is None else np.sqrt(weights)
        xw = design if root_w is None else design * root_w[:, None]
        yw = y if root_w is None else y * root_w
        xy = np.column_stack([xw, yw])
        with np.errstate(over="ignore"):
            xyxy = xy.T @ xy
        check_cross_products(xyxy)
        rank = drop_aliased_columns(xyxy[:-1, :-1], fe_names, n)
        if rank.deficient:  # fit the kept columns (lme4's rule)
            cols = np.append(np.flatnonzero(rank.kept), rank.kept.size)
            design, xyxy, fe_names = design[:, rank.kept], xyxy[np.ix_(cols, cols)], rank.kept_names
        check_response(xyxy)
        check_counts(n, {name: labels[name].size for name in names},
                     sum(labels[name].size * t[1].shape[1] for name, t in zip(names, terms)))
        started = time.perf_counter()
        with single_threaded_blas():
            model = build_crossed_model(design, y, terms, weights)
            # fit_crossed's tol bounds the Newton decrement, which must be far smaller than
            # the quasi-Newton stopping rule `tol` to give lme4's digits
            fit = fit_crossed(model, reml=self.reml, max_iter=self.max_iter,
                              tol=min(self.tol, 1e-10))
        if self.verbose:
            print(f"[MixedLMRegressor] {len(terms)} random-effects terms: {fit.n_fev} evaluations, "
                  f"converged={fit.converged} ({time.perf_counter() - started:.3f} s)")
        check_residual_variance(fit.scale, xyxy, n)
        dev = CrossedDeviance(model, reml=self.reml)
        sol = dev.solve(fit.theta)
        at_bound = (model.lower_bounds() == 0.0) & (fit.theta <= 0.0)
        info = OptimizerInfo(fit.converged, fit.message, fit.n_iter, fit.n_fev, 0.0, at_bound)
        self.model_ = FittedModel(dev, sol, info, list(fe_names), re_names, names)
        self._set_common(fit.beta, fit.cov_beta, fe_names, fit.theta, fit.scale, fit.llf,
                         len(fe_names) + model.n_theta + 1, n)
        self.cov_re_ = dict(zip(names, fit.cov_re))
        self.groups_ = labels
        self.n_groups_ = {name: int(labels[name].size) for name in names}
        self.random_effects_ = {
            name: pd.DataFrame(b, index=pd.Index(labels[name], name=name), columns=re_names[name])
            for name, b in zip(names, fit.blups)
        }
        self.random_effects_cov_ = dict(zip(names, fit.condvar))
        self.converged_ = fit.converged
        self.n_iter_ = max(fit.n_iter, 1)
        self.singular_ = bool(at_bound.any())
        self._set_aliased(rank)
        self._warn_fit(info)

    def _fit_stats(self, design, y, z_design, codes, labels, weights, fe_names, re_names,
                   group_name, random) -> None:
        started = time.perf_counter()
        stats = compute_stats(design, y, z_design, codes, labels.size, weights,
                              intercept=self.fit_intercept)
        if self.verbose:
            print(f"[MixedLMRegressor] statistics: {stats.n_obs} rows, {labels.size} groups "
                  f"({time.perf_counter() - started:.3f} s)")
        self._fit_from_stats(stats, labels, fe_names, re_names, group_name, random)

    def _fit_from_stats(self, stats: GroupStats, labels: np.ndarray, fe_names: list[str],
                        re_names: list[str], group_name: str, random: bool = True,
                        strata: tuple[list[GroupStats], np.ndarray] | None = None) -> None:
        """Everything after the statistics pass: checks, optimisation, fitted attributes."""
        check_cross_products(stats.xyxy, stats.ztz, stats.ztxy)
        rank = drop_aliased_columns(stats.xyxy[:-1, :-1], fe_names, stats.n_obs)
        if rank.deficient:  # fit the kept columns (lme4's rule)
            stats, fe_names = rank.subset_stats(stats), rank.kept_names
            if strata is not None:
                strata = ([rank.subset_stats(part) for part in strata[0]], strata[1])
        if random:  # least squares without groups may fit exactly (sklearn's checks do)
            check_response(stats.xyxy)
            check_counts(stats.n_obs, {group_name: stats.n_groups}, stats.n_groups * stats.n_re)
        check_random_design(stats, re_names)
        diagonal = self.cov_type == "diagonal"
        started = time.perf_counter()
        ratios = None
        if strata is not None:
            dev, sol, info, ratios = fit_heteroscedastic(
                strata[0], reml=self.reml, diagonal=diagonal, max_iter=self.max_iter,
                tol=self.tol, labels=list(strata[1]))
        elif random:
            try:
                dev, sol, info = fit_deviance(stats, reml=self.reml, diagonal=diagonal,
                                              max_iter=self.max_iter, tol=self.tol,
                                              callback=_print_iteration if self.verbose else None)
            except FloatingPointError as err:
                raise ValueError(
                    f"the fit broke down numerically ({err}) as the residual variance went to 0: "
                    "the random effects reproduce y (almost) exactly within every group, e.g. "
                    "y constant within each group") from None
        else:
            dev = ProfiledDeviance(stats, reml=least_squares_reml(self.reml, stats.n_obs, len(fe_names)),
                                   diagonal=diagonal)
            sol = dev.solve(np.zeros(dev.n_theta))
            info = OptimizerInfo(True, "no random effects", 1, 1, 0.0, np.ones(dev.n_theta, bool))
        if random:
            check_residual_variance(sol.scale, stats.xyxy, stats.n_obs)
        if self.verbose:
            print(f"[MixedLMRegressor] optimiser: {info.n_fev} evaluations, {info.n_iter} "
                  f"iterations, converged={info.converged} ({time.perf_counter() - started:.3f} s)")
        self._set_fitted(dev, sol, info, labels, fe_names, re_names, group_name, random)
        if strata is not None:
            self.model_ = dataclasses.replace(self.model_, strata=strata)
            self.residual_var_ = {label: float(sol.scale * r) for label, r in zip(strata[1], ratios)}
            self._set_information(self.llf_, self.df_model_ + ratios.size - 1, stats.n_obs)
        self._set_aliased(rank)

    def _set_common(self, beta: np.ndarray, cov_fe: np.ndarray, fe_names: list[str],
                    theta: np.ndarray, scale: float, llf: float, df_model: int, n_obs: int) -> None:
        """Attributes that every kind of fit sets the same way."""
        self.intercept_ = float(beta[0]) if self.fit_intercept else 0.0
        self.coef_ = beta[1:].copy() if self.fit_intercept else beta.copy()
        self.cov_fe_ = cov_fe
        self.fe_params_ = pd.Series(beta, index=fe_names, name="estimate")
        self.bse_ = pd.Series(np.sqrt(np.diag(cov_fe)), index=fe_names, name="std_error")
        self.theta_ = theta.copy()
        self.scale_ = scale
        self.residual_var_ = {"(all)": scale}
        self._set_information(llf, df_model, n_obs)

    def _set_aliased(self, rank: FixedEffectsRank) -> None:
        """Fixed-effects attributes over all columns after aliased ones were dropped.

        As lme4's ``fixef(fit, add.dropped = TRUE)``: a dropped column's coefficient is
        0 (so predict is unchanged), its standard error and covariances NaN; ``df_model_``
        counts the kept columns only (set by the fit of the kept columns).
        """
        if not rank.deficient:
            return
        beta = rank.expand(self.fe_params_.to_numpy(), 0.0)
        cov = rank.expand_cov(self.cov_fe_)
        self.intercept_ = float(beta[0]) if self.fit_intercept else 0.0
        self.coef_ = beta[1:].copy() if self.fit_intercept else beta.copy()
        self.cov_fe_ = cov
        self.fe_params_ = pd.Series(beta, index=rank.names, name="estimate")
        self.bse_ = pd.Series(np.sqrt(np.diag(cov)), index=rank.names, name="std_error")
        self.model_ = dataclasses.replace(self.model_, rank=rank)

    def _set_information(self, llf: float, df_model: int, n_obs: int) -> None:
        """Log-likelihood and lme4's AIC/BIC (BIC with log n, also for REML fits)."""
        self.llf_ = llf
        self.df_model_ = df_model
        self.aic_ = -2.0 * llf + 2.0 * df_model
        self.bic_ = -2.0 * llf + np.log(n_obs) * df_model

    def _set_fitted(self, dev, sol, info, labels, fe_names, re_names, group_name, random) -> None:
        self.model_ = FittedModel(dev, sol, info, list(fe_names), list(re_names), str(group_name))
        self._set_common(sol.beta, sol.cov_beta(), fe_names, sol.theta, sol.scale,
                         -0.5 * sol.deviance, len(fe_names) + (dev.n_theta if random else 0) + 1,
                         dev.stats.n_obs)
        cov_re = sol.scale * sol.lam @ sol.lam.T
        self.cov_re_ = 0.5 * (cov_re + cov_re.T)  # exactly symmetric, whatever BLAS did
        if random:
            self.groups_ = labels
            self.n_groups_ = int(labels.size)
            self.random_effects_ = pd.DataFrame(
                sol.blups(), index=pd.Index(labels, name=group_name), columns=re_names)
            self.random_effects_cov_ = sol.conditional_cov()
        else:  # least squares: no groups, no random effects
            self.groups_ = np.array([], dtype=object)
            self.n_groups_ = 0
            self.random_effects_ = pd.DataFrame(columns=re_names, dtype=float)
            self.random_effects_cov_ = np.zeros((0, len(re_names), len(re_names)))
        self.converged_ = info.converged
        self.n_iter_ = info.n_iter
        self.singular_ = bool(random and info.at_bound.any())
        if random:
            self._warn_fit(info)

    def _warn_fit(self, info: OptimizerInfo) -> None:
        if not info.converged:
            warnings.warn(
                f"the optimiser did not converge ({info.message}). Try: max_iter larger than "
                f"{self.max_iter}, covariates on comparable scales (centre/standardise), or a "
                "simpler random-effects structure (cov_type='diagonal', fewer slopes).",
                ConvergenceWarning,
                stacklevel=3,
            )
        if self.singular_:
            warnings.warn(
                "boundary (singular) fit: a random-effects variance is 0 or a correlation is "
                "+-1. The data do not support this random-effects structure; consider "
                "removing the degenerate term (see lme4's ?isSingular).",
                SingularFitWarning,
                stacklevel=3,
            )

    # ---- prediction -----------------------------------------------------------------------

    def predict(self, X: Any, *, groups: Any = None, Z: Any = None) -> np.ndarray:
        """Predict: fixed part, plus ``Z @ BLUP`` for rows of groups seen in ``fit``.

        Parameters
        ----------
        X : array-like of shape (n, p)
        groups : array-like of shape (n,), optional
            Without it (or for labels not seen in ``fit``) the prediction is the population
            (fixed-effects) prediction. With several grouping factors: a DataFrame with
            the factors' columns; a factor left out contributes nothing (its population
            value, as lme4's ``re.form`` leaving a term out).
        Z : array-like of shape (n, q), optional
            Random-effects design of the new rows (with several factors, a dict or a
            (factor, column) DataFrame as in ``fit``); may be omitted for a random
            intercept. If ``fit`` had a DataFrame, its columns are matched by name (and
            reordered), and other names are refused; an array where ``fit`` had names,
            or the reverse, is taken by position with a warning (scikit-learn's rule for
            X's feature names).

        Returns
        -------
        ndarray of shape (n,)

        Warns
        -----
        UserWarning
            When none of the given labels was seen in ``fit``, or when some were not and
            their type differs from the fitted labels' (e.g. "12" for 12): the warning
            says how many rows got population predictions.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
        >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
        >>> est.predict(df[["Days"]].head(3), groups=df["Subject"].head(3), Z=Z[:3]).round(2)
        array([253.66, 273.33, 293.  ])
        >>> est.predict(df[["Days"]].head(3)).round(2)  # population level
        array([251.41, 261.87, 272.34])
        """
        check_is_fitted(self)
        X = validate_data(self, _check_frame(X), reset=False, dtype=np.float64, accept_sparse=False)
        pred = X @ self.coef_ + self.intercept_
        if groups is None or self.n_groups_ == 0:
            return pred
        if isinstance(self.random_effects_, dict):
            return pred + self._several_blup_part(X.shape[0], groups, Z)
        n = X.shape[0]
        if Z is None:
            if self.model_.re_names != [INTERCEPT]:
                raise ValueError(
                    f"Z is required: the model was fitted with an explicit random-effects "
                    f"design (columns {self.model_.re_names})"
                )
            z_design = np.ones((n, 1))
        else:
            z_design = as_design(self._aligned_z(Z, None, "Z"), n, "Z")
            if z_design.shape[1] != self.random_effects_.shape[1]:
                raise ValueError(f"Z has {z_design.shape[1]} columns, the model was fitted with "
                                 f"{self.random_effects_.shape[1]}")
        labels = np.asarray(groups, dtype=object).ravel()
        if labels.shape[0] != n:
            raise ValueError(f"groups has {labels.shape[0]} entries but X has {n} rows")
        idx = pd.Index(self.groups_).get_indexer(labels)
        seen = idx >= 0
        _warn_if_none_seen(seen, labels, self.groups_, "groups")
        blups = self.random_effects_.to_numpy()
        pred[seen] += np.einsum("ij,ij->i", z_design[seen], blups[idx[seen]])
        return pred

    def _several_blup_part(self, n: int, groups: Any, Z: Any) -> np.ndarray:
        """Sum over grouping factors of ``Z_k @ BLUP`` for rows of seen levels."""
        frame = _factor_frame(groups, n)
        Z = {} if Z is None else _z_by_factor(Z)
        if Z is None:
            raise TypeError("Z must be a dict or a (factor, column) DataFrame for this model")
        unknown = [k for k in Z if k not in self.random_effects_]
        if unknown:
            raise ValueError(f"Z key(s) {unknown} name no grouping factor of the fit "
                             f"({list(self.random_effects_)})")
        out = np.zeros(n)
        for col in frame.columns:
            name = str(col)
            if name not in self.random_effects_:
                raise ValueError(f"groups column {name!r} is not a grouping factor of the fit "
                                 f"({list(self.random_effects_)})")
            blups = self.random_effects_[name]
            if name in Z:
                z_k = as_design(self._aligned_z(Z[name], name, f"Z[{name!r}]"), n, f"Z[{name!r}]")
            elif list(blups.columns) == [INTERCEPT]:
                z_k = np.ones((n, 1))
            else:
                raise ValueError(f"Z[{name!r}] is required: that factor has random slopes")
            labels = np.asarray(frame[col], dtype=object)
            idx = pd.Index(self.groups_[name]).get_indexer(labels)
            seen = idx >= 0
            _warn_if_none_seen(seen, labels, self.groups_[name], f"groups[{name!r}]")
            out[seen] += np.einsum("ij,ij->i", z_k[seen], blups.to_numpy()[idx[seen]])
        return out

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
        elif (by_factor := _z_by_factor(Z)) is not None:
            self._z_names_in = {k: column_names_of(v) for k, v in by_factor.items()}
        else:
            self._z_names_in = {None: column_names_of(Z)}

    def score(self, X: Any, y: Any, sample_weight: Any = None, *, groups: Any = None, Z: Any = None) -> float:
        """R^2 of the predictions: conditional on the BLUPs where ``groups`` are given.

        Parameters
        ----------
        X, y : test data
        sample_weight : array-like, optional
        groups, Z : optional
            As in :meth:`predict`; route them with ``set_score_request(groups=True, Z=True)``
            to score conditional predictions inside model selection.

        Returns
        -------
        float

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
        >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
        >>> round(est.score(df[["Days"]], df["Reaction"]), 3)  # population predictions
        0.286
        >>> round(est.score(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z), 3)
        0.826
        """
        from sklearn.metrics import r2_score

        return float(r2_score(y, self.predict(X, groups=groups, Z=Z), sample_weight=sample_weight))

    # ---- inference (implemented in mixedlm_sklearn.inference) --------------------------

    def summary(self, alpha: float = 0.05):
        """Fixed effects with Satterthwaite tests, random effects and model information.

        See :func:`mixedlm_sklearn.inference.summary`.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
        >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
        >>> est.summary().fixed_effects.loc["Days", ["estimate", "df"]].round(3).tolist()
        [10.467, 17.0]
        """
        from .inference import summary

        check_is_fitted(self)
        return summary(self, alpha=alpha)

    def conf_int(self, alpha: float = 0.05, method: str = "wald", **kwargs) -> pd.DataFrame:
        """Confidence intervals: ``method="wald"`` (fixed effects) or ``"profile"``.

        See :func:`mixedlm_sklearn.inference.conf_int`.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
        >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
        >>> est.conf_int().round(2).loc["Days"].tolist()
        [7.44, 13.5]
        """
        from .inference import conf_int

        check_is_fitted(self)
        return conf_int(self, alpha=alpha, method=method, **kwargs)

    def profile(self, **kwargs):
        """Profile zeta (signed square-root deviance) of each parameter over a grid.

        See :func:`mixedlm_sklearn.inference.profile`.
        """
        from .inference import profile

        check_is_fitted(self)
        return profile(self, **kwargs)

    def wald_test(self, L: Any, **kwargs):
        """Wald test of linear hypotheses ``L beta = c`` on the fixed effects.

        See :func:`mixedlm_sklearn.inference.wald_test`.
        """
        from .inference import wald_test

        check_is_fitted(self)
        return wald_test(self, L, **kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags
