"""``MixedLMRegressor``: the linear mixed model as a scikit-learn regressor.

A thin estimator over the engine: ``fit`` validates its arguments, builds the terms and
the cross-products (:mod:`._design`, :mod:`._crossprod`), runs the fit
(:func:`._model.fit_model`) and stores the result as fitted attributes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from joblib import effective_n_jobs
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _num_samples, check_is_fitted, validate_data

from ._base import (
    _CONF_INT_METHODS,
    MixedModelBase,
    SingularFitWarning,
    _check_frame,
    _check_offset,
    _level,
    _refitting,
    store_fixed_effects,
    store_random_effects,
)
from ._chunked import (
    check_dask_inputs,
    cross_products_from_chunks,
    cross_products_from_dask,
    is_dask_collection,
    reiterable,
)
from ._crossprod import CrossProducts, cross_products, origin_of
from ._design import (
    INTERCEPT,
    Design,
    check_residual_groups,
    correlation_form,
    column_names,
    group_name,
    random_terms,
    residual_rows,
    several_factors,
)
from ._correlation import (
    Components,
    CorrelatedRows,
    fit_components,
    fit_correlated,
    parse_spec,
    structure,
)
from ._model import FittedModel, fit_model
from ._table import ResultTable
from ._terms import Term, Terms
from ._threads import level_threads, single_threaded_blas
from ._util.choices import canonical
from .formula_mode import ALL_TERMS
from ._validation import (
    as_response,
    caller_stacklevel,
    check_finite,
    check_weights,
    chunk_columns,
    clean_failure,
    encode_groups,
    is_sparse,
    without_zero_weights,
)
from ._rank import RankDeficientWarning, drop_aliased_columns
from ._checks import (
    check_counts,
    check_cross_products,
    check_exact_fit,
    check_stratum_exact_fit,
    check_random_design,
    check_residual_variance,
    check_response,
    least_squares_reml,
)

__all__ = ["MixedLMRegressor", "SingularFitWarning", "RankDeficientWarning"]


# conf_int's methods, with R's spellings (confint(method = "Wald"), "boot" as lme4's)


def _minus_offset(y: Any, offset: Any, X: Any) -> Any:
    """``y - offset``, keeping a Series' index and name."""
    if is_dask_collection(X):
        raise NotImplementedError("offset is not supported with Dask input")
    values = _check_offset(offset, _num_samples(X))
    try:
        y_values = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"y must be numeric to subtract the offset: {err}") from None
    if y_values.ndim == 2 and y_values.shape[1] == 1:
        y_values = y_values[:, 0]
    if y_values.shape != values.shape:
        raise ValueError(f"y has shape {y_values.shape}, offset {values.shape}: both need one "
                         "value per row of X")
    if isinstance(y, pd.Series):
        return pd.Series(y_values - values, index=y.index, name=y.name)
    return y_values - values


def _print_iteration(iteration: int, deviance: float) -> None:
    print(f"[MixedLMRegressor] iteration {iteration:3d}: deviance {deviance:.10g}")


class MixedLMRegressor(RegressorMixin, MixedModelBase):
    """Linear mixed-effects model fitted by REML or maximum likelihood.

    For each group ``i``: ``y_i = X_i b + Z_i g_i + e_i`` with ``g_i ~ N(0, cov_re)`` and
    ``e_i ~ N(0, scale * I)``, independent across groups. Estimates equal lme4's ``lmer``:
    the relative covariance factor is optimised on the profiled deviance with an analytic
    gradient, from per-group sufficient statistics (cost per evaluation grows with the
    number of groups, not rows). Several crossed or nested grouping factors, prior weights
    and a residual variance per stratum are arguments of :meth:`fit`; :func:`lmer` fits
    the same estimator from an lme4 formula.

    Parameters
    ----------
    reml : bool, default=True
        Restricted maximum likelihood (True) or maximum likelihood.
    fit_intercept : bool, default=True
        Add an intercept column to the fixed effects. With False, X is used as given.
    cov_type : {"unstructured", "diagonal"} or dict, default="unstructured"
        Covariance of the random effects: full (lme4 ``(x | g)``) or independent
        (lme4 ``(x || g)``); a dict from grouping factor to either gives each term its own.
    max_iter : int, default=1000
        Iteration limit of each optimiser run (small problems are also started from a
        few other points, each run with this limit; a first run that reaches it ends
        the fit with a ConvergenceWarning).
    tol : float, default=1e-8
        Relative change of the deviance at which the quasi-Newton phase stops; a Newton
        step with a finite-difference Hessian then finishes and checks the optimum.
    verbose : int, default=0
        Print progress (statistics pass, solver chosen and why, optimiser) when positive.
    solver : {"auto", "exact", "iterative"}, default="auto"
        How the penalised system is solved (scikit-learn's ``Ridge(solver=...)`` naming).
        "exact": factorisations (nested terms level by level; crossed terms with the
        largest eliminated level by level and the rest as a dense block or, when cheaper,
        by sparse rounds of rare levels and a dense core), any number of random effects
        while that fits in memory. "iterative": for crossed factors with too many levels
        to factor (user x item data): preconditioned conjugate gradients, stochastic
        Lanczos quadrature for the log-determinant with a fixed set of probe vectors (the
        fit is deterministic and reproducible), Newton steps with the average-information
        matrix; log-likelihood within ~1e-3 of the exact one. It takes two or more
        grouping factors and no ``residual_groups``; every inference method works on
        its fits. Its conditional variances are exact while that is cheap (one solve
        per random effect of the smaller factors); beyond, they are stochastic and
        expensive, so ``random_effects_cov_`` is None and
        ``model_.solution.conditional_cov()`` computes them on request (their standard
        errors: ``model_.solution.conditional_cov_se()``). "auto": exact when
        its cost estimate (time and memory) is affordable, iterative beyond;
        ``verbose`` says which was chosen.
    formula : str, optional
        An lme4 formula, ``"~ Days + (Days | Subject)"`` (the response given as ``y``) or
        ``"Reaction ~ Days + (Days | Subject)"`` (``fit(df)``, as :func:`lmer`). With it,
        ``X`` is a DataFrame holding the formula's variables, grouping factors included,
        so the estimator works in ``Pipeline``, ``cross_validate(..., groups=df.Subject,
        cv=GroupKFold())`` and ``GridSearchCV`` (over ``formula`` too) without metadata
        routing; ``fit_intercept`` and ``cov_type`` then come from the formula, and
        ``predict`` takes a DataFrame of new rows. The fit keeps a reference to ``X``
        (for :func:`update`; a pickle carries it). Default None: the array API.
    correlation : {"ar1", "car1", "exp", "cs"} or str, optional
        Correlated residuals within residual groups (nlme's ``correlation=``): "ar1"
        ``phi^|i - j|`` on integer positions (``corAR1``), "car1" ``phi^|t_i - t_j|`` on
        real times (``corCAR1``), "exp" ``exp(-|t_i - t_j| / range)`` (``corExp``), "cs"
        the same correlation ``rho`` between any two rows of a group (``corCompSymm``).
        :meth:`fit` takes the times (``time``, default the row order within a group) and
        the residual groups (``correlation_groups``, default the grouping factor). A
        residual group may span levels of a grouping factor (AR(1) within subjects next
        to crossed items ``(1 | subject) + (1 | item)``): that factor's random effects are
        then in the factorisation's dense core (refused when it is above 10,000 random
        effects after sparse elimination), the fit is in memory only and
        takes Satterthwaite's df, not Kenward-Roger's. The parameter is estimated jointly with the variance components (one optimiser over
        both; rows with more than 16 distinct time gaps by a search over the likelihood
        profiled in it); ``correlation_params_`` holds it under nlme's name (``Phi``,
        ``range``, ``Rho``). With ``formula``, nlme's form names the columns: ``"car1(~
        Time | Rat)"``, ``"ar1(~ 1 | Mare)"`` (row order), also spelled
        ``"corCAR1(form = ~ Time | Rat)"``; the string is matched by a pattern, never
        evaluated. With ``sample_weight`` ``w`` (positive) the residual covariance of a
        group is ``scale * W^{-1/2} R W^{-1/2}`` (nlme's ``weights = varFixed(~ 1/w)``
        next to the correlation); with ``residual_groups`` it is ``S^{1/2} R S^{1/2}``, ``S``
        the rows' stratum variances (nlme's ``weights = varIdent(form = ~ 1 | s)`` next to
        the correlation; the strata may vary within a residual group, which the joint fit
        handles for up to 16 distinct gaps). Also from chunks (:meth:`fit_chunks`) and Dask
        partitions that each hold whole residual groups (``residual_groups`` too).
        Fitted with the exact solver; not combined with several responses. Default None:
        independent residuals.
    n_jobs : int, optional
        Threads of the fit (joblib's convention: None is 1, -1 every core): the pass over
        the rows and the algebra over the levels of the largest factor run in blocks, one
        per thread (numpy and scipy release the GIL there); the results are identical to
        one thread's, bit for bit. It pays only at the largest sizes (measured on 2 cores:
        no gain at 10^5-10^6 rows; at 10^7 rows and 200,000 levels the optimiser 1.3x
        faster). BLAS stays on one thread. The Cholesky factor and inverse of a crossed
        design's dense block of order 1,200 or more (e.g. a few thousand items) then run
        in tiles on these threads, whose sums run in another order than LAPACK's: the fit
        agrees with one thread's to rounding (measured: log-likelihood identical,
        estimates to 1.6e-14 relative; tested to 1e-10) and is the same for any
        ``n_jobs > 1``, bit for bit.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
        Fixed effects of the columns of X.
    intercept_ : float
        Fixed intercept (0.0 when ``fit_intercept=False``).
    cov_re_ : ndarray of shape (q, q) or dict
        Covariance of the random effects (lme4's ``VarCorr``); with several grouping
        factors a dict from factor name to its term's matrix.
    scale_ : float
        Residual variance (of the reference stratum when ``residual_groups`` is given).
    residual_var_ : dict
        Residual variance per stratum of ``residual_groups`` (``{"(all)": scale_}``
        without strata).
    llf_ : float
        Log-likelihood; for REML fits the REML criterion as lme4's ``logLik`` reports it.
    aic_ : float
        Akaike's information criterion with lme4's parameter count ``df_model_``.
    bic_ : float
        Schwarz's criterion, ``-2 llf_ + df_model_ log(n)``.
    random_effects_ : DataFrame of shape (n_groups, q) or dict
        BLUPs (conditional modes) of the random effects, a row per group (lme4's
        ``ranef``); with several grouping factors a dict of such DataFrames.
    random_effects_cov_ : ndarray of shape (n_groups, q, q), dict or None
        Conditional covariance of each group's random effects (lme4's ``condVar``); None
        where the iterative solver would only estimate them at a cost
        (``model_.solution.conditional_cov()`` on request).
    fe_params_ : Series
        All fixed effects, intercept first, named as lme4 names them (lme4's ``fixef``).
    bse_ : Series
        Standard errors of ``fe_params_``.
    cov_fe_ : ndarray of shape (p, p)
        Covariance matrix of ``fe_params_`` (lme4's ``vcov``).
    theta_ : ndarray
        Relative covariance factor entries (lme4's ``getME(fit, "theta")``).
    groups_ : ndarray or dict
        Group labels (sorted; a Categorical's in category order): the rows of
        ``random_effects_``.
    n_groups_ : int or dict
        Number of groups (per grouping factor with several).
    n_iter_ : int
        Iterations of the optimiser.
    converged_ : bool
        Whether the optimiser met its convergence checks (a ``ConvergenceWarning``
        otherwise).
    singular_ : bool
        Whether the estimate is on the boundary (lme4's ``isSingular``).
    df_model_ : int
        Number of parameters counted by AIC and BIC.
    correlation_params_ : dict
        With ``correlation``: the estimated correlation parameter under nlme's name
        (``{"Phi": ...}``, ``{"range": ...}`` or ``{"Rho": ...}``); empty without.
    model_ : FittedModel
        Deviance function and optimum, used by the inference methods.
    n_features_in_ : int
        Number of columns of X, as in scikit-learn.
    feature_names_in_ : ndarray of shape (n_features,)
        Column names of X when it was a DataFrame with string column names; with
        ``formula``, the variables the formula reads (``predict`` needs them).
    model_frame_ : ModelFrame
        With ``formula``: the formula evaluated on the data (designs, terms, the rows).

    See Also
    --------
    lmer : Fit this estimator from an lme4 formula.
    MixedGLMClassifier : Mixed-effects logistic regression.
    MixedGLMRegressor : Poisson and binomial mixed models.

    References
    ----------
    .. [1] Bates, D., Maechler, M., Bolker, B. and Walker, S. (2015). Fitting linear
       mixed-effects models using lme4. Journal of Statistical Software 67(1).

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
        "cov_type": [StrOptions({"unstructured", "diagonal"}), dict],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "verbose": ["verbose"],
        "solver": [StrOptions({"auto", "exact", "iterative"})],
        "formula": [str, None],
        "correlation": [str, None],
        "n_jobs": [Integral, None],
    }

    def __init__(
        self,
        reml: bool = True,
        fit_intercept: bool = True,
        cov_type: str | dict = "unstructured",
        max_iter: int = 1000,
        tol: float = 1e-8,
        verbose: int = 0,
        solver: str = "auto",
        formula: str | None = None,
        correlation: str | None = None,
        n_jobs: int | None = None,
    ) -> None:
        self.reml = reml
        self.fit_intercept = fit_intercept
        self.cov_type = cov_type
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.solver = solver
        self.formula = formula
        self.correlation = correlation
        self.n_jobs = n_jobs

    # ---- fitting --------------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None, *, groups: Any = None, Z: Any = None,
            sample_weight: Any = None, residual_groups: Any = None, offset: Any = None,
            context: Any = None, progress: Any = None, time: Any = None,
            correlation_groups: Any = None):
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
        y : array-like of shape (n,) or (n, k)
            The response. With ``k`` columns (a 2-D array or DataFrame: genes, proteins,
            traits with one design), ``k`` independent models are fitted, each with its own
            variance components, sharing all work that does not depend on the response
            (scikit-learn's multi-output convention; the user guide's "Many responses").
            A NaN marks a missing value: each response uses its own complete rows. Every
            fitted attribute then has a leading axis of responses (``coef_`` (k, p),
            ``intercept_``, ``llf_``, ``scale_``, ``converged_``, ``singular_`` (k,),
            ``cov_re_`` (k, q, q), ``random_effects_`` (k, n_groups, q), ``fe_params_``
            and ``bse_`` DataFrames with a row per response), plus ``responses_``,
            ``n_obs_``, ``failed_`` and ``fit_messages_``: a response that cannot be
            fitted is NaN and reported there, never losing the others.
            :meth:`for_response` gives one response's single-response estimator.
            ``residual_groups`` is not supported then.
        groups : array-like of shape (n,) or DataFrame, optional
            Group label of each row (any hashable values; integers and their decimal text
            are one label); with several grouping factors
            (crossed or nested) a DataFrame with one column per factor. Without it the
            model has no random effects and reduces to least squares (with a warning).
        Z : array-like of shape (n, q), dict or DataFrame, optional
            Random-effects design; default a random intercept (a column of ones). With
            several factors: a dict from factor name to that factor's design, or a
            DataFrame with (factor, column) MultiIndex columns; a factor left out gets a
            random intercept.
        sample_weight : array-like of shape (n,), optional
            Prior weights: the residual variance of row ``r`` is ``scale / w_r``
            (lme4's ``weights``). A weight of 0 (an infinite residual variance) removes
            the row before anything else: the fit equals the fit without those rows, and
            a group whose rows all have weight 0 is not a group of the fit (predict treats
            it as unseen). Negative and non-finite weights are refused, and weights of 0
            with ``correlation``.
        residual_groups : array-like of shape (n,), optional
            Stratum of each row: each stratum gets its own residual variance (nlme's
            ``weights = varIdent(~ 1 | stratum)``); ``scale_`` is then the variance of the
            first stratum in sorted order and ``residual_var_`` holds them all. With
            ``correlation`` the strata scale the correlated residuals; without groups (a
            generalised least squares fit) they need ``correlation_groups``.
        offset : array-like of shape (n,), optional
            A known part of the linear predictor (lme4's ``offset``): the model is fitted to
            ``y - offset``. Pass the new rows' offset to :meth:`predict`.
        context : mapping, optional
            With ``formula``: further names the formula may use (numbers, or arrays with
            one value per row), as :func:`lmer`'s ``context``.
        progress : callable, optional
            With several responses: ``progress(done, total)`` after each block of
            responses (with ``verbose`` and no callable, a printed line per block).
        time : array-like of shape (n,), optional
            With ``correlation``: the time (car1, exp) or integer position (ar1) of each
            row, increasing strictly within a residual group. Default: the rows' order
            within their group (positions 1, 2, ...).
        correlation_groups : array-like of shape (n,), optional
            With ``correlation``: the residual group of each row (nlme's ``form = ~ t |
            g``); rows of different groups are independent. Default: the grouping factor
            (needed with several factors or none). With Dask input, ``time`` and
            ``correlation_groups`` are Dask Series of the same partitions, and each
            residual group's rows must lie in one partition.

        Returns
        -------
        MixedLMRegressor
            The fitted estimator (``self``).

        Raises
        ------
        ValueError
            For inputs that cannot be fitted (missing or infinite values, fewer than two
            groups, a stratum with a single row, ...), with a message naming the problem; the
            estimator is left as it was.

        Warns
        -----
        ConvergenceWarning
            When the optimiser does not meet its convergence checks.
        SingularFitWarning
            When the estimate is on the boundary.

        See Also
        --------
        MixedLMRegressor.fit_chunks : The same fit from data read in chunks.
        lmer : Fit from an lme4 formula.

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

        Correlated residuals within each group (nlme's ``corCAR1(form = ~ Time | Rat)``):

        >>> car1 = MixedLMRegressor(correlation="car1").fit(
        ...     df[["Days"]], df["Reaction"], groups=df["Subject"], time=df["Days"])
        >>> round(car1.correlation_params_["Phi"], 4), round(car1.llf_, 4)
        (0.6531, -868.0955)

        Several responses with one design (a column each):

        >>> Y = np.column_stack([df["Reaction"], np.log(df["Reaction"])])
        >>> many = MixedLMRegressor().fit(df[["Days"]], Y, groups=df["Subject"], Z=Z)
        >>> many.llf_.round(4), many.coef_.shape, many.predict(df[["Days"]]).shape
        (array([-871.8141,  149.2406]), (2, 1), (180, 2))
        """
        with _refitting(self), clean_failure(), level_threads(effective_n_jobs(self.n_jobs)):
            corr_inputs = {"time": time, "correlation_groups": correlation_groups}
            if self.correlation is None and any(v is not None for v in corr_inputs.values()):
                given = [k for k, v in corr_inputs.items() if v is not None]
                raise TypeError(f"{' and '.join(given)} describe correlated residuals: they need "
                                "correlation='ar1', 'car1', 'exp' or 'cs'")
            if self.formula is not None:
                if progress is not None:
                    raise ValueError("progress reports the responses of a multi-output fit, "
                                     "which takes arrays (or lmer(..., responses=[...]))")
                return self._fit_formula(X, y, groups=groups, Z=Z, offset=offset,
                                         sample_weight=sample_weight,
                                         residual_groups=residual_groups, context=context,
                                         correlated=corr_inputs)
            if context is not None:
                raise TypeError("context= gives names a formula may use: it needs formula=...")
            # ---- several responses (issue: many responses): inference/many.py ----
            from .inference.many import fit_responses, is_multi_output

            if is_multi_output(y):
                if self.correlation is not None:
                    raise NotImplementedError("correlation= is supported with one response; fit "
                                              "each response on its own")
                self._remember_z_names(Z)
                fit_responses(self, X, y, groups, Z, sample_weight, residual_groups, offset, progress)
                if self.singular_.any():
                    first = self.responses_[np.flatnonzero(self.singular_)[0]]
                    warnings.warn(f"boundary (singular) fit for {int(self.singular_.sum())} of "
                                  f"{self.singular_.size} responses (singular_), e.g. {first!r}: a "
                                  "random-effects variance is 0 or a correlation is +-1 (see lme4's "
                                  "?isSingular).", SingularFitWarning, stacklevel=caller_stacklevel())
                return self
            if progress is not None:
                raise ValueError("progress reports the responses of a multi-output fit; y has one")
            return self._fit_arrays(X, y, groups=groups, Z=Z, sample_weight=sample_weight,
                                    residual_groups=residual_groups, offset=offset,
                                    correlated=corr_inputs)

    def _fit_arrays(self, X: Any, y: Any, *, groups: Any = None, Z: Any = None,
                    sample_weight: Any = None, residual_groups: Any = None,
                    offset: Any = None, correlated: dict | None = None) -> "MixedLMRegressor":
        offset_values = None
        if offset is not None:
            y = _minus_offset(y, offset, X)
            offset_values = _check_offset(offset, _num_samples(X))
        return self._fit(X, y, groups, Z, sample_weight, residual_groups, offset_values,
                         correlated=correlated)

    def _fit(self, X, y, groups, Z, sample_weight, residual_groups,
             offset: np.ndarray | None = None, correlated: dict | None = None) -> "MixedLMRegressor":
        self._remember_z_names(Z)
        corr_structure = self._correlation_structure(
            (correlated or {}).get("from_formula", False), "time= and "
            "correlation_groups= to fit")
        if is_dask_collection(X):
            return self._fit_dask(X, y, groups, Z, sample_weight, residual_groups,
                                  corr_structure, correlated or {})
        index = X.index if isinstance(X, pd.DataFrame) else None
        X = _check_frame(X)
        X_names_src = X
        y_values = np.asarray(y) if y is not None and not is_sparse(y) else None
        if y_values is not None and y_values.dtype.kind in "USO":  # numpy's isfinite refuses text
            y = y_values = as_response(y_values)
        if y_values is not None and y_values.dtype.kind in "fc":  # sklearn would not name rows
            check_finite(y_values, "y")
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, accept_sparse=False,
                             ensure_all_finite=False)
        x_names = column_names(X_names_src, "x", X.shape[1])
        check_finite(X, "X", x_names)
        check_finite(y, "y")  # labels such as None only become NaN in validate_data
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"n_samples={n}: a model needs at least 2 samples")
        if not self.fit_intercept and X.shape[1] == 0:
            raise ValueError("the model has no fixed effects: give X columns or fit_intercept=True")
        weights = None if sample_weight is None else check_weights(sample_weight, n)
        if weights is not None and corr_structure is not None and not weights.all():
            # a row of infinite variance would break its residual group's series in two
            raise ValueError("with correlation=, sample_weight must be positive in every row; "
                             "remove rows of weight 0 (with their times) before fitting")
        X, y, weights, offset, index, groups, Z, residual_groups = without_zero_weights(
            weights, X=X, y=y, sample_weight=weights, offset=offset, index=index, groups=groups,
            Z=Z, residual_groups=residual_groups)
        n = X.shape[0]
        if groups is None and corr_structure is None:
            if residual_groups is not None:
                raise ValueError("residual_groups needs groups: a residual variance per stratum is "
                                 "estimated together with the random effects")
        if groups is None and corr_structure is not None:
            terms_in = []  # generalised least squares (nlme's gls)
        elif groups is None:
            warnings.warn(
                "no groups were given: fitting without random effects (ordinary least "
                "squares). Pass groups=... to fit the mixed model.",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )
            terms_in = []
        else:
            terms_in = random_terms(groups, Z, n, self.cov_type)
        self._check_cov_type([t.name for t in terms_in])
        strata, strata_labels, n_strata = None, None, 1
        if residual_groups is not None:
            strata, strata_labels = encode_groups(residual_groups, n, name="residual_groups")
            n_strata = strata_labels.size
        terms = Terms([Term(t.name, t.z_names, t.labels.size, t.diagonal) for t in terms_in])
        factors = tuple((t.codes, t.Z) for t in terms_in)
        started = time.perf_counter()
        # with an intercept, the columns are measured from about their means: y + 1e7 then
        # keeps its digits (the fit reports everything in the data's own units)
        origin = origin_of(X, y) if self.fit_intercept else None
        cp = cross_products(X, y, factors, terms, weights, strata, n_strata, intercept=self.fit_intercept,
                            origin=origin)
        if self.verbose:
            print(f"[MixedLMRegressor] cross-products: {n} rows, "
                  f"{sum(t.n_levels for t in terms)} levels ({time.perf_counter() - started:.3f} s)")
        design = Design(X, self.fit_intercept, y, factors, weights, strata, n_strata, offset, index)
        several = several_factors(groups, Z) if groups is not None else False
        corr = None
        if corr_structure is not None:
            corr = self._correlation_rows(corr_structure, correlated or {}, terms_in, n)
        self._fit_cross_products(cp, x_names, {t.name: t.labels for t in terms_in}, strata_labels,
                                 several, design, correlation=corr)
        return self

    def _correlation_structure(self, from_formula: bool, columns: str):
        """The structure of ``correlation`` (None without), after the checks every fit
        (arrays, chunks, Dask) makes; ``columns`` says where the time and the residual groups
        are given."""
        if self.correlation is None:
            return None
        spec = parse_spec(self.correlation)
        if spec.names_columns and not from_formula:
            raise ValueError(
                f"correlation={self.correlation!r} names columns, which are read in formula "
                f"mode (formula=... or lmer); otherwise give the structure's name and pass "
                f"{columns}")
        if self.solver == "iterative":
            # the correlation's search needs exact deviances (a stochastic estimate's
            # noise would move its optimum)
            raise NotImplementedError("correlation= is fitted with solver='exact' (or 'auto'); "
                                      "the iterative solver's deviance is a stochastic estimate")
        return structure(spec.name)

    def _correlation_rows(self, st, given: dict, terms_in: list, n: int) -> tuple:
        """The structure, its rows and the residual groups' name, checked."""
        groups = given.get("correlation_groups")
        if groups is None:
            name = terms_in[0].name if len(terms_in) == 1 else "correlation_groups"
        else:
            name = group_name(groups) if hasattr(groups, "name") else "correlation_groups"
        rows, _ = residual_rows(st, groups, given.get("time"), [(t.codes, t.Z) for t in terms_in],
                                [t.name for t in terms_in], n, str(name), nested=False)
        return st, rows, correlation_form(given.get("time"), name)

    def fit_chunks(
        self,
        chunks: Iterable[pd.DataFrame],
        *,
        y: str,
        groups: str | Sequence[str],
        X: Sequence[str],
        Z: Sequence[str] | dict | None = None,
        sample_weight: str | None = None,
        residual_groups: str | None = None,
        time: str | None = None,
        correlation_groups: str | None = None,
    ) -> "MixedLMRegressor":
        """Fit from an iterable of DataFrames, e.g. a file read in chunks.

        The cross-products of each chunk are added up by level label, so peak memory is one
        chunk plus a few numbers per level (and per pair of levels of crossed factors that
        share a row); a level may span chunks. The result equals :meth:`fit` on the
        concatenated data (to rounding).

        With ``correlation`` (correlated residuals within residual groups), each chunk's
        whitened cross-products are reduced to the components of the joint fit (per lag
        between consecutive rows, or per group size for ``"cs"``) and added up by level
        label and lag, so the fit equals :meth:`fit` with ``time=`` and
        ``correlation_groups=``. Every residual group must have all its rows in one chunk,
        in time order (a group seen in two chunks is refused, naming it). Rows with more
        than 16 distinct lags (group sizes; continuous times with irregular gaps) are fitted
        by the in-memory fit's outer search, one pass over the chunks per value of the
        correlation parameter: ``chunks`` must then be re-iterable (a list, or a callable
        returning a fresh iterator), a one-shot iterator is refused.

        Parameters
        ----------
        chunks : iterable of DataFrame, or callable
            For example ``pd.read_csv(path, chunksize=1_000_000)`` or
            ``(b.to_pandas() for b in pyarrow.parquet.ParquetFile(path).iter_batches())``;
            or a zero-argument callable returning such an iterable afresh at each call
            (``lambda: pd.read_csv(path, chunksize=1_000_000)``), which a correlated fit
            with many distinct lags reads once per pass.
        y : str
            Column of the response.
        groups : str or list of str
            Column(s) of the grouping factor(s): one term per column.
        X : list of str
            Fixed-effects columns (the intercept is added when ``fit_intercept``).
        Z : list of str or dict, optional
            Random-effects columns (``"(Intercept)"`` stands for a column of ones); with
            several factors a dict from factor column to its list of columns. Default: a
            random intercept for every factor.
        sample_weight : str, optional
            Column of prior weights.
        residual_groups : str, optional
            Column of the residual strata (a residual variance per stratum).
        time : str, optional
            With ``correlation``: column of the time (car1, exp) or integer position (ar1)
            of each row, increasing strictly within a residual group. Default: the rows'
            order within their group.
        correlation_groups : str, optional
            With ``correlation``: column of the residual groups. Default: the grouping
            factor (needed with several factors).

        Returns
        -------
        MixedLMRegressor
            The fitted estimator (``self``). It keeps no rows: methods that need them
            (simulation, bootstrap, fitted values) are refused.

        Raises
        ------
        TypeError
            When ``X`` or ``Z`` is a single string rather than a list of column names.
        ValueError
            When ``X`` is empty or ``Z`` names a column that is not a grouping factor.

        See Also
        --------
        MixedLMRegressor.fit : The fit from arrays, DataFrames or Dask collections.

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

        AR(1) residuals within each subject (every subject's rows in one chunk), as
        ``fit(..., time=df["Days"])``:

        >>> chunks = (df.iloc[i:i + 60] for i in range(0, len(df), 60))
        >>> ar1 = MixedLMRegressor(correlation="ar1").fit_chunks(
        ...     chunks, y="Reaction", groups="Subject", X=["Days"], time="Days")
        >>> in_memory = MixedLMRegressor(correlation="ar1").fit(
        ...     df[["Days"]], df["Reaction"], groups=df["Subject"], time=df["Days"])
        >>> round(ar1.correlation_params_["Phi"], 4), round(ar1.llf_, 4)
        (0.6531, -868.0955)
        >>> bool(abs(ar1.llf_ - in_memory.llf_) < 1e-8)
        True
        """
        self._validate_params()
        if self.formula is not None:
            raise TypeError("fit_chunks reads arrays (columns by name); a formula fit needs the "
                            "rows in memory: use fit(df) or formula=None")
        if len(X) == 0:
            raise ValueError("X is an empty list: give at least one fixed-effects column (for an "
                             "intercept-only model, a column of ones with fit_intercept=False)")
        group_cols, z_cols = chunk_columns(X, Z, groups)
        if self.correlation is None and (time is not None or correlation_groups is not None):
            given = [k for k, v in {"time": time, "correlation_groups": correlation_groups}.items()
                     if v is not None]
            raise TypeError(f"{' and '.join(given)} describe correlated residuals: they need "
                            "correlation='ar1', 'car1', 'exp' or 'cs'")
        with _refitting(self), clean_failure(), level_threads(effective_n_jobs(self.n_jobs)):
            st = self._correlation_structure(False, "the columns as time= and "
                                             "correlation_groups=")
            correlation = None
            if st is not None:
                check_residual_groups(correlation_groups, len(group_cols))
                correlation = (st, correlation_groups, time,
                               correlation_form(time, correlation_groups or group_cols[0]))
            self._z_names_in = ({k: list(v) for k, v in z_cols.items()} if len(group_cols) > 1
                                else {None: v for v in map(list, z_cols.values())})
            # (iterating one DataFrame gives its column names: "chunk 0 is a str")
            if isinstance(chunks, pd.DataFrame):
                raise TypeError("chunks is one DataFrame: fit it with fit(), or pass a list of "
                                "DataFrames")
            if is_dask_collection(chunks):
                raise TypeError("chunks is a Dask collection: give its columns to fit() "
                                "(fit(ddf[X], ddf[y], groups=ddf[groups])), which fits them "
                                "partition by partition")
            again = reiterable(chunks)  # the outer search reads the chunks once per value
            chunks = chunks if again is None else again()
            labels, strata_labels, cp, comps = cross_products_from_chunks(
                chunks, again=again, y=y, groups=group_cols, X=list(X), Z=z_cols, sample_weight=sample_weight,
                residual_groups=residual_groups, intercept=self.fit_intercept,
                cov_type=self.cov_type, verbose=self.verbose, correlation=correlation)
            self._fit_external(cp, [str(c) for c in X], labels, strata_labels, len(group_cols) > 1,
                               None if comps is None else (comps, correlation[3]))
            return self

    def _fit_dask(self, X, y, groups, Z, sample_weight, residual_groups, st=None,
                  correlated: dict | None = None) -> "MixedLMRegressor":
        correlated = correlated or {}
        corr_groups, corr_time = correlated.get("correlation_groups"), correlated.get("time")
        check_dask_inputs(X=X, y=y, groups=groups, sample_weight=sample_weight,
                          residual_groups=residual_groups, correlation_groups=corr_groups,
                          time=corr_time,
                          **({f"Z[{k!r}]": v for k, v in Z.items()} if isinstance(Z, dict) else {"Z": Z}))
        names = list(groups.columns) if hasattr(groups, "columns") else [group_name(groups)]
        if Z is None:
            z = {}
        elif isinstance(Z, dict):
            z = {str(k): v for k, v in Z.items()}
        else:
            z = {names[0]: Z}
        if not hasattr(groups, "columns"):
            groups = groups.rename(names[0]) if getattr(groups, "name", None) != names[0] else groups
        correlation = None
        if st is not None:
            check_residual_groups(corr_groups, len(names))
            name = names[0] if corr_groups is None else group_name(corr_groups)
            correlation = (st, corr_groups, corr_time, correlation_form(corr_time, name))
        labels, strata_labels, cp, comps = cross_products_from_dask(
            X, y, groups, z, sample_weight, residual_groups, intercept=self.fit_intercept,
            cov_type=self.cov_type, verbose=self.verbose, correlation=correlation)
        self._fit_external(cp, [str(c) for c in X.columns], labels, strata_labels, len(names) > 1,
                           None if comps is None else (comps, correlation[3]))
        return self

    def _fit_external(self, cp: CrossProducts, x_names: list[str], labels: dict,
                      strata_labels: np.ndarray | None, several: bool,
                      correlation: tuple | None = None) -> None:
        """Finish a fit whose cross-products were computed outside ``fit`` (chunks, Dask)."""
        for name, lab in labels.items():
            if lab.size < 2:
                raise ValueError(f"random effects need at least two groups; {name!r} has {lab.size}")
        self._check_cov_type(list(labels))
        self.n_features_in_ = len(x_names)
        self.feature_names_in_ = np.asarray(x_names, dtype=object)
        if strata_labels is not None and strata_labels.size == 1 and strata_labels[0] == "(all)":
            strata_labels = None
        self._fit_cross_products(cp, x_names, labels, strata_labels, several, None, correlation)

    def _fit_cross_products(self, cp: CrossProducts, x_names: list[str], labels: dict,
                            strata_labels: np.ndarray | None, several: bool,
                            design: Design | None, correlation: tuple | None = None) -> None:
        """Everything after the cross-products: checks, optimisation, fitted attributes.

        ``correlation``: ``(structure, rows, name)`` with the rows in ``design``, or
        ``(components, name)`` of a fit from chunks or Dask (no rows)."""
        fe_names = ([INTERCEPT] if self.fit_intercept else []) + list(x_names)
        if not fe_names:
            raise ValueError("the model has no fixed effects: give X columns or fit_intercept=True")
        comb = cp.combined()
        # lme4's rank check is on X as given (a column 1e8 + noise is aliased with the
        # intercept); the likelihood is evaluated on the columns measured from their origin
        as_given = comb.xyxy if comb.origin is None else comb.origin.uncentre_gram(comb.xyxy)
        xtx = as_given[0][:-1, :-1]
        check_cross_products(comb.xyxy[0], xtx, *[d for d in comb.diag], *[z for z in comb.zxy])
        rank = drop_aliased_columns(xtx, fe_names, cp.n)
        if rank.deficient:  # fit the kept columns (lme4's rule)
            cp = cp.select_fixed(np.flatnonzero(rank.kept))
            comb, fe_names = cp.combined(), rank.kept_names
        xyxy = comb.xyxy[0]
        terms = cp.terms

        @functools.cache
        def x_kept() -> np.ndarray:
            """The rows' fixed-effects columns the fit keeps, formed once (``X_full`` is a
            new array with the intercept at each call) for whichever check or fit needs them."""
            return design.X_full if not rank.deficient else design.X_full[:, rank.kept]
        if len(terms):  # least squares without groups may fit exactly (sklearn's checks do)
            check_response(xyxy)
            check_counts(cp.n, {t.factor: t.n_levels for t in terms}, sum(t.size for t in terms))
            for term, d, counts in zip(terms, comb.diag, cp.counts):
                check_random_design(d[0], counts, list(term.z_names))
            # no more rows than effects: can [X Z] reproduce any y? (chunks and Dask, whose
            # rows are not at hand, are left to check_residual_variance after the fit)
            if design is not None and cp.n <= len(fe_names) + sum(t.size for t in terms):
                check_exact_fit(x_kept(), design.factors, [t.n_levels for t in terms])
        if strata_labels is not None:
            _check_strata(cp, strata_labels)
            if design is not None and len(terms):
                check_stratum_exact_fit(x_kept(), design.y, design.factors,
                                        [t.n_levels for t in terms], design.strata, strata_labels,
                                        reml=self.reml)
        started = time.perf_counter()
        callback = _print_iteration if self.verbose and len(terms) else None
        try:
            # least squares with as many rows as kept columns: no residual df for REML
            reml = self.reml if len(terms) else least_squares_reml(self.reml, cp.n, len(fe_names))
            fitted_corr = None
            if correlation is not None and design is None:
                comps, corr_name = correlation
                if rank.deficient and isinstance(comps, Components):
                    comps = dataclasses.replace(comps, cp=comps.cp.select_fixed(
                        np.flatnonzero(rank.kept)))
                elif rank.deficient:  # rows read in chunks (the outer search)
                    comps = comps.select_fixed(np.flatnonzero(rank.kept))
                dev, sol, info, fitted_corr = fit_components(
                    comps, reml, corr_name, solver="exact", max_iter=self.max_iter, tol=self.tol)
            elif correlation is not None:
                st, rows, corr_name = correlation
                data = CorrelatedRows.of(st, rows, x_kept(), design.y, design.factors, terms,
                                         design.weights, design.strata, design.n_strata)
                dev, sol, info, fitted_corr = fit_correlated(
                    data, reml, corr_name, solver="exact", max_iter=self.max_iter, tol=self.tol)
            else:
                with np.errstate(all="ignore"):
                    dev, sol, info = fit_model(cp, reml, solver=self.solver, verbose=self.verbose,
                                               max_iter=self.max_iter, tol=self.tol,
                                               callback=callback, design=design,
                                               kept=None if not rank.deficient else rank.kept)
        except FloatingPointError as err:
            raise ValueError(
                f"the fit broke down numerically ({err}) as the residual variance went to 0: "
                "the random effects reproduce y (almost) exactly within every group, e.g. "
                "y constant within each group") from None
        if len(terms):
            check_residual_variance(sol.scale, xyxy, cp.n, None if strata_labels is None else
                                    dict(zip(strata_labels, sol.scale * sol.ratios)),
                                    rounding=dev.rounding_of_scale(sol.x))
        if fitted_corr is not None and fitted_corr.degenerate:
            warnings.warn(
                f"the residual correlation is (nearly) singular at the estimate ({fitted_corr.name} = "
                f"{fitted_corr.value:.6g}): the likelihood keeps increasing towards a singular "
                "residual correlation (e.g. compound symmetry next to random effects that can fit "
                "a group's mean). The fit is degenerate: simplify the random effects or the "
                "correlation structure.", ConvergenceWarning, stacklevel=caller_stacklevel())
        if self.verbose:
            print(f"[MixedLMRegressor] optimiser: {info.n_fev} evaluations, {info.n_iter} "
                  f"iterations, converged={info.converged} ({time.perf_counter() - started:.3f} s)")
        self.model_ = FittedModel(dev, sol, info, fe_names, terms, dict(labels), strata_labels, design,
                                  self.max_iter, self.tol, rank if rank.deficient else None,
                                  correlation=fitted_corr)
        self._set_fitted(several)

    def _set_fitted(self, several: bool, warn: bool = True) -> None:
        """The fitted attributes from ``model_`` (``warn=False``: no convergence or
        singularity warnings, for the refits of a bootstrap, which count them instead)."""
        model = self.model_
        sol, info, terms = model.solution, model.info, model.terms
        store_fixed_effects(self, model, sol.cov_beta())
        self.scale_ = float(sol.scale)
        if model.strata is not None:
            self.residual_var_ = {label: float(sol.scale * r) for label, r in zip(model.strata, sol.ratios)}
        else:
            self.residual_var_ = {"(all)": float(sol.scale)}
        df_model = len(model.fe_names) + terms.n_theta + 1 + model.n_eta + model.n_corr
        self.correlation_params_ = ({} if model.correlation is None
                                    else {model.correlation.name: float(model.correlation.value)})
        llf = -0.5 * sol.deviance
        self.llf_ = llf
        self.df_model_ = df_model
        self.aic_ = -2.0 * llf + 2.0 * df_model
        self.bic_ = -2.0 * llf + np.log(model.n_obs) * df_model  # lme4: log n, also for REML
        if not len(terms) or not sol.conditional_cov_on_request:
            with single_threaded_blas():  # a dense inverse: threads collapse under load
                condvar = sol.conditional_cov() if len(terms) else None
        else:
            # Stochastic conditional variances (the iterative solver beyond a cost) cost
            # about a gradient: on request only (model_.solution.conditional_cov()).
            condvar = None
        store_random_effects(self, model, several, condvar)
        self.converged_ = info.converged
        self.n_iter_ = max(info.n_iter, 1)
        self.singular_ = bool(info.at_bound.any())
        if len(terms) and warn:
            self._warn_fit(info)

    # ---- prediction -----------------------------------------------------------------------

    def predict(self, X: Any, *, groups: Any = None, Z: Any = None, offset: Any = None,
                return_std: bool = False, residual_groups: Any = None, re_form: Any = ALL_TERMS,
                allow_new_levels: bool | str = True) -> Any:
        """Predict: fixed part, plus ``Z @ BLUP`` for rows of groups seen in ``fit``.

        Parameters
        ----------
        X : array-like of shape (n, p) or DataFrame
            Fixed-effects covariates of the new rows, with the columns of ``fit``. A formula
            fit (``formula=...``, :func:`lmer`) takes a DataFrame with the formula's
            variables (covariates and grouping factors; the response is not needed), as
            lme4's ``predict(fit, newdata)``.
        groups : array-like of shape (n,), optional
            Without it (or for labels not seen in ``fit``) the prediction is the population
            (fixed-effects) prediction. With several grouping factors: a DataFrame with
            the factors' columns; a factor left out contributes nothing (its population
            value, as lme4's ``re.form`` leaving a term out).
        Z : array-like of shape (n, q), optional
            Random-effects design of the new rows (with several factors, a dict or a
            (factor, column) DataFrame as in ``fit``); may be omitted for a random
            intercept.
        offset : array-like of shape (n,), optional
            The rows' offset, for a model fitted with one; added to the prediction.
        return_std : bool, default=False
            Also return the standard deviation of each row's prediction error as a
            prediction of a new observation (see :meth:`predict_interval`).
        residual_groups : array-like of shape (n,), optional
            With ``return_std``, for a model with a residual variance per stratum: the
            rows' strata.
        re_form : "all", None, list of str or str, default="all"
            The random-effects terms the prediction conditions on (lme4's ``re.form``):
            ``"all"`` every term (``re.form = NULL``), None none: the population level
            (``re.form = NA``); a list of grouping factors keeps their terms; a formula fit
            also takes a formula of whole terms of the fit, ``"~ (1 | Subject)"``.
        allow_new_levels : bool or "warn", default=True
            Levels not seen in ``fit`` get random effect 0, the population prediction of a
            new group (lme4's ``allow.new.levels = TRUE``; lme4's default is FALSE, ours
            True because cross-validation predicts new groups by design). "warn": the same
            with a warning counting them; False: a ValueError listing them.

        Returns
        -------
        ndarray of shape (n,) or (n, k), or tuple of two ndarrays
            The predictions (a column per response of a multi-output fit); with
            ``return_std`` the pair ``(mean, std)``.

        Warns
        -----
        UserWarning
            When none of the given labels was seen in ``fit`` (often labels of another
            type, e.g. "12" for 12).

        See Also
        --------
        MixedLMRegressor.predict_interval : Prediction and confidence intervals.
        mixedlm_sklearn.formula.ModelFrame.new_data : The arguments of ``predict`` for new
            rows of a formula fit.

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
        >>> mean, std = est.predict(df[["Days"]].head(2), groups=df["Subject"].head(2),
        ...                         Z=Z[:2], return_std=True)
        >>> std.round(2)
        array([28.37, 27.68])

        A formula fit predicts from a DataFrame; a new subject gets the population line:

        >>> import pandas as pd
        >>> fit = MixedLMRegressor(formula="Reaction ~ Days + (Days | Subject)").fit(df)
        >>> new = pd.DataFrame({"Days": [0, 9], "Subject": ["308", "new"]})
        >>> fit.predict(new).round(2)
        array([253.66, 345.61])
        >>> fit.predict(new, re_form=None).round(2)
        array([251.41, 345.61])
        """
        X, groups, Z, offset, residual_groups = self._prediction_rows(
            X, groups, Z, offset, re_form, allow_new_levels, residual_groups)
        return self._linear_predictor(X, groups=groups, Z=Z, offset=offset, return_std=return_std,
                                      residual_groups=residual_groups)

    def for_response(self, response: Any) -> "MixedLMRegressor":
        """The fit of one response of a multi-output fit, as a single-response estimator.

        It equals fitting that column alone on its observed rows (the same optimum;
        nothing is refitted), so every method of a single fit works on it (``summary``,
        ``conf_int``, ``anova``, ``bootstrap``, ``predict(return_std=True)``, ...).

        Parameters
        ----------
        response : int or str
            Position or name (a column of ``Y``) of the response.

        Returns
        -------
        MixedLMRegressor
            Fitted to that response.

        Raises
        ------
        ValueError
            When that response's fit failed (``failed_``), or the estimator was fitted to
            one response.

        See Also
        --------
        mixedlm_sklearn.inference.many.fixed_effects_table : Tests across the responses.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> Y = np.column_stack([df["Reaction"], np.log(df["Reaction"])])
        >>> est = MixedLMRegressor().fit(df[["Days"]], Y, groups=df["Subject"])
        >>> round(float(est.llf_[0]), 3), round(est.for_response(0).llf_, 3)
        (-893.233, -893.233)
        """
        if not hasattr(self, "many_"):
            check_is_fitted(self)
            raise ValueError("for_response is for an estimator fitted to several responses")
        from .inference.many import response_estimator

        return response_estimator(self, response)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None, *, groups: Any = None,
              Z: Any = None) -> float:
        """R^2 of the predictions: conditional on the BLUPs where ``groups`` are given.

        A formula fit scores :meth:`predict`'s default predictions: rows of groups seen in
        ``fit`` are conditional on their BLUPs, rows of unseen groups get the population
        prediction. So cross-validation by ``GroupKFold`` scores the prediction of new
        groups (population level), by ``KFold`` the prediction within known groups.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates of the test rows.
        y : array-like of shape (n,)
            Their response.
        sample_weight : array-like of shape (n,), optional
            Weights of the rows in the R^2.
        groups : array-like of shape (n,) or DataFrame, optional
            As in :meth:`predict`; route them with ``set_score_request(groups=True, Z=True)``
            to score conditional predictions inside model selection.
        Z : array-like, dict or DataFrame, optional
            As in :meth:`predict`.

        Returns
        -------
        float
            The coefficient of determination of :meth:`predict`'s predictions.

        See Also
        --------
        MixedLMRegressor.r2 : Nakagawa's marginal and conditional R2 of the fit itself.

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

        y, sample_weight = self._formula_response(X, y, sample_weight)
        return float(r2_score(y, self.predict(X, groups=groups, Z=Z), sample_weight=sample_weight))

    # ---- inference (implemented in mixedlm_sklearn.inference) --------------------------

    def summary(self, alpha: float = 0.05, ddf: str | None = None):
        """Summarise the fit: fixed effects with t tests, random effects, model information.

        As lme4's ``summary`` with lmerTest's t tests (Satterthwaite's degrees of freedom, or
        Kenward-Roger's adjusted standard errors and df).

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the level of the confidence intervals in the table.
        ddf : {"satterthwaite", "kenward-roger", "asymptotic"}, optional
            How the t tests' degrees of freedom are obtained. Default: Satterthwaite's
            (with correlated residuals too); ``"kenward-roger"``: Kenward-Roger's (with
            correlated residuals the correlation's parameter is a variance parameter);
            ``"asymptotic"``: Wald z tests.

        Returns
        -------
        Summary
            Printable; its ``fixed_effects`` and ``random_effects`` are DataFrames.

        See Also
        --------
        mixedlm_sklearn.inference.summary : The function behind this method.
        MixedLMRegressor.conf_int : Wald, profile and bootstrap intervals.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.summary().fixed_effects.loc["Days", ["estimate", "df"]].round(3).tolist()
        [10.467, 17.0]
        """
        from .inference import summary

        check_is_fitted(self)
        return summary(self, alpha=alpha, ddf=ddf)

    def conf_int(self, alpha: float = 0.05, method: str = "wald", **kwargs) -> ResultTable:
        """Confidence intervals of the fixed effects and the variance parameters.

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the confidence level.
        method : {"wald", "profile", "boot"}, default="wald"
            ``"wald"``: fixed effects (``ddf=None`` normal quantiles as lme4,
            ``"satterthwaite"`` or ``"kenward-roger"`` t quantiles); ``"profile"``:
            profile-likelihood intervals of every parameter on lme4's scale
            (``criterion="ml"`` as lme4, or ``"reml"``); ``"boot"``: parametric bootstrap.
        **kwargs
            Further arguments of :func:`mixedlm_sklearn.inference.conf_int`: ``which``,
            ``ddf``, ``criterion``, ``n_boot``, ``boot_type``, ``random_state``, ``n_jobs``.

        Returns
        -------
        ResultTable
            A DataFrame with columns ``lower`` and ``upper``, a row per parameter (lme4's
            names), printed as R's ``confint`` (``2.5 %`` / ``97.5 %``) under a title and
            notes naming the method, the df or criterion and the level.

        See Also
        --------
        mixedlm_sklearn.inference.conf_int : The function behind this method.
        MixedLMRegressor.profile : The profile curves behind the profile intervals.
        MixedLMRegressor.bootstrap : The replicates behind the bootstrap intervals.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.conf_int().round(2).loc["Days"].tolist()
        [7.44, 13.5]
        >>> print(fit.conf_int(method="profile", which="sigma").round(2))
        Profile likelihood confidence intervals, 95% level
              2.5 % 97.5 %
        sigma  22.9  28.86
        Bounds where the signed root of the ML deviance's rise is -+ 1.96 (lme4's confint(method = "profile"))
        """
        from .inference import conf_int

        method = canonical(method, "method", _CONF_INT_METHODS)
        check_is_fitted(self)
        if hasattr(self, "many_"):  # several responses: one response's intervals via for_response
            from .inference._parameters import several_responses

            raise TypeError(several_responses("est"))
        return conf_int(self, alpha=alpha, method=method, **kwargs)

    def profile(self, **kwargs):
        """Profile zeta (signed square-root deviance) of each parameter over a grid.

        Parameters
        ----------
        **kwargs
            Arguments of :func:`mixedlm_sklearn.inference.profile`: ``which``,
            ``alpha_max``, ``n_points``, ``criterion`` (``"ml"``, lme4's, also for REML
            fits; or ``"reml"``).

        Returns
        -------
        DataFrame
            Columns ``param``, ``value``, ``zeta``.

        See Also
        --------
        mixedlm_sklearn.inference.profile : The function behind this method.
        mixedlm_sklearn.plotting.profile_zeta : Plot the profiles.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.profile(which="sigma", n_points=3).round(3)
           param   value   zeta
        0  sigma  22.149 -2.576
        1  sigma  25.592  0.000
        2  sigma  30.028  2.576
        """
        from .inference import profile

        check_is_fitted(self)
        return profile(self, **kwargs)

    def wald_test(self, L: Any, **kwargs):
        """Wald test of linear hypotheses ``L beta = rhs`` on the fixed effects.

        Parameters
        ----------
        L : str, list of str, array-like or DataFrame
            Fixed-effect names (a joint test that they are 0) or a contrast matrix whose
            columns follow ``fe_params_``.
        **kwargs
            Further arguments of :func:`mixedlm_sklearn.inference.wald_test`: ``rhs``
            (default 0) and ``ddf`` (``"satterthwaite"``, ``"kenward-roger"``, ``"chi2"``).

        Returns
        -------
        WaldTestResult
            The F (or chi-square) statistic, its degrees of freedom and p-value.

        See Also
        --------
        mixedlm_sklearn.inference.wald_test : The function behind this method.
        MixedLMRegressor.anova : The tests of every term.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> print(fit.wald_test("Days", ddf="kenward-roger"))
        Wald F test (Kenward-Roger): F = 45.85, df = (1, 17), p = 3.264e-06
        """
        from .inference import wald_test

        check_is_fitted(self)
        return wald_test(self, L, **kwargs)

    # ---- inference tables (mixedlm_sklearn.inference: anova, kenward_roger, emmeans, r2) ---

    def cov_fe(self, adjust: str | None = None) -> np.ndarray:
        """Covariance of the fixed effects, optionally Kenward-Roger's adjusted one.

        Parameters
        ----------
        adjust : {None, "kenward-roger"}, default=None
            None: ``cov_fe_``; ``"kenward-roger"``: the small-sample adjusted covariance
            (pbkrtest's ``vcovAdj``; REML fits only).

        Returns
        -------
        ndarray of shape (p, p)
            Rows and columns in the order of ``fe_params_``.

        See Also
        --------
        mixedlm_sklearn.inference.kenward_roger.cov_fe : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.cov_fe(adjust="kenward-roger").round(3)
        array([[46.575, -1.451],
               [-1.451,  2.389]])
        """
        from .inference.kenward_roger import cov_fe

        check_is_fitted(self)
        return cov_fe(self, adjust=adjust)

    def anova(self, type: Any = 3, ddf: str = "satterthwaite", terms: dict | None = None
              ) -> pd.DataFrame:
        """ANOVA table of the fixed effects: an F test per term (lmerTest's ``anova``).

        Parameters
        ----------
        type : {3, 1}, default=3
            Type III (each term adjusted for all others) or type I (sequential) tests.
        ddf : {"satterthwaite", "kenward-roger"}, default="satterthwaite"
            The denominator degrees of freedom.
        terms : dict, optional
            For a fit from arrays: a term per column of ``X`` by default; a dict from term
            name to its columns groups them.

        Returns
        -------
        DataFrame
            The columns of lmerTest: ``Sum Sq``, ``Mean Sq``, ``NumDF``, ``DenDF``,
            ``F value``, ``Pr(>F)``, a row per term.

        See Also
        --------
        mixedlm_sklearn.anova : The function behind this method; with several fits it
            compares them.
        MixedLMRegressor.drop1 : Tests of dropping single terms.
        MixedLMRegressor.ranova : Tests of the random-effects terms.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> print(fit.anova())
        Type III Analysis of Variance Table with Satterthwaite's method
             Sum Sq Mean Sq NumDF DenDF F value    Pr(>F)
        Days  30031   30031     1    17  45.853 3.264e-06 ***
        ---
        Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1
        """
        from .inference.anova import anova

        check_is_fitted(self)
        return anova(self, type=type, ddf=ddf, terms=terms)

    def drop1(self, ddf: str = "satterthwaite", terms: dict | None = None) -> pd.DataFrame:
        """F tests of dropping each term no other term contains (lmerTest's ``drop1``).

        Parameters
        ----------
        ddf : {"satterthwaite", "kenward-roger"}, default="satterthwaite"
            The denominator degrees of freedom.
        terms : dict, optional
            As in :meth:`anova`.

        Returns
        -------
        DataFrame
            The columns of :meth:`anova`, a row per droppable term.

        See Also
        --------
        mixedlm_sklearn.inference.anova.drop1 : The function behind this method.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> df = load_orthodont()
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", df)
        >>> list(fit.drop1().index)  # age and Sex are contained in age:Sex
        ['age:Sex']
        """
        from .inference.anova import drop1

        check_is_fitted(self)
        return drop1(self, ddf=ddf, terms=terms)

    def ranova(self) -> pd.DataFrame:
        """Likelihood-ratio tests of the random-effects terms (lmerTest's ``ranova``).

        Returns
        -------
        DataFrame
            A row for the model and one per reduction of a random-effects term: ``npar``,
            ``logLik``, ``AIC``, ``LRT``, ``Df``, ``Pr(>Chisq)``.

        See Also
        --------
        mixedlm_sklearn.inference.anova.ranova : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> print(fit.ranova())
        ANOVA-like table for random-effects: Single term deletions
        <BLANKLINE>
        Model:
        Reaction ~ Days + (Days | Subject)
                                 npar  logLik    AIC    LRT Df Pr(>Chisq)
        <none>                      6 -871.81 1755.6
        Days in (Days | Subject)    4 -893.23 1794.5 42.837  2   4.99e-10 ***
        ---
        Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1
        """
        from .inference.anova import ranova

        check_is_fitted(self)
        return ranova(self)

    def emmeans(self, specs: Any, at: dict | None = None, ddf: str | None = None,
                level: float = 0.95, by: Any = None):
        """Estimated marginal means of a formula fit (emmeans).

        Parameters
        ----------
        specs : str or list of str
            The factor(s) whose levels' means are estimated, averaging over the others, or
            an emmeans formula (``"~ N | V"``, ``"pairwise ~ N | V"``).
        at : dict, optional
            Values of covariates (default their means) or levels at which to evaluate.
        ddf : {"kenward-roger", "satterthwaite"}, optional
            The degrees of freedom of the means' t intervals, as emmeans. Default
            Kenward-Roger's, Satterthwaite's where the model has no Kenward-Roger df
            (correlated residuals).
        level : float, default=0.95
            Confidence level of the intervals.
        by : str or list of str, optional
            Means within each level of these variables (emmeans' ``by``).

        Returns
        -------
        EMMeans or EMMeansContrasts
            ``.table`` (a DataFrame printed as emmeans prints it), ``.pairs(adjust="tukey")``,
            ``.contrast(method_or_coefficients)``; with a contrast family in ``specs``,
            ``.emmeans`` and ``.contrasts``.

        See Also
        --------
        mixedlm_sklearn.inference.emmeans.emmeans : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> fit.emmeans("Sex").table[["Sex", "emmean"]].round(3).frame()
              Sex  emmean
        0  Female  22.648
        1    Male  24.969
        """
        from .inference.emmeans import emmeans

        check_is_fitted(self)
        return emmeans(self, specs, by=by, at=at, ddf=ddf, level=level)

    def r2(self):
        """Compute Nakagawa's marginal and conditional R2 (performance's ``r2_nakagawa``).

        Returns
        -------
        R2
            ``.marginal`` (fixed effects) and ``.conditional`` (fixed and random effects).

        See Also
        --------
        mixedlm_sklearn.inference.r2.r2 : The function behind this method.
        MixedLMRegressor.icc : The intraclass correlation.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (1 | Subject)", load_sleepstudy())
        >>> r2 = fit.r2()
        >>> round(r2.marginal, 3), round(r2.conditional, 3)
        (0.28, 0.704)
        """
        from .inference.r2 import r2

        check_is_fitted(self)
        return r2(self)

    def icc(self):
        """Compute the adjusted and unadjusted intraclass correlation (performance's ``icc``).

        Returns
        -------
        ICC
            ``.adjusted`` (random-effects variance over random plus residual) and
            ``.unadjusted`` (over the total, fixed effects included).

        See Also
        --------
        mixedlm_sklearn.inference.r2.icc : The function behind this method.
        MixedLMRegressor.r2 : Nakagawa's R2.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (1 | Subject)", load_sleepstudy())
        >>> round(fit.icc().adjusted, 3)
        0.589
        """
        from .inference.r2 import icc

        check_is_fitted(self)
        return icc(self)

    def fitted(self, level: str | None = None, *, re_form: Any = ALL_TERMS) -> Any:
        """Compute the fitted values of the fit's rows (lme4's ``fitted``).

        Parameters
        ----------
        level : {"conditional", "marginal"}, optional
            The older spelling of ``re_form``: ``"conditional"`` is ``re_form="all"``,
            ``"marginal"`` is ``re_form=None``.
        re_form : "all", None, list of str or str, default="all"
            With the BLUPs (lme4's ``fitted``) or the fixed effects only (lme4's
            ``predict(fit, re.form = NA)``); a formula fit also takes some of the terms,
            as :meth:`predict`.

        Returns
        -------
        Series or ndarray of shape (n,)
            A Series indexed like ``X`` when ``X`` was a DataFrame.

        See Also
        --------
        mixedlm_sklearn.inference.prediction.fitted : The function behind this method.
        MixedLMRegressor.residuals : The residuals.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.fitted().head(2).round(2).tolist()
        [253.66, 273.33]
        """
        from .inference.prediction import fitted

        check_is_fitted(self)
        frame = getattr(self, "model_frame_", None)
        if level is None and frame is not None and re_form is not None and not (
                isinstance(re_form, str) and re_form == ALL_TERMS):
            # some of the terms: the formula's prediction on the fitted rows
            return pd.Series(self.predict(frame.rows, re_form=re_form), index=frame.rows.index,
                             name="fitted")
        return fitted(self, level=_level(level, re_form))

    def residuals(self, type: str = "response", level: str | None = None, *,
                  re_form: Any = ALL_TERMS) -> Any:
        """Compute the residuals of the fit's rows (lme4's ``residuals``).

        Parameters
        ----------
        type : {"response", "pearson"}, default="response"
            Observed minus fitted, or that divided by the residual standard deviation (of
            the row's stratum, with the prior weight).
        level : {"conditional", "marginal"}, optional
            As in :meth:`fitted`.
        re_form : "all" or None, default="all"
            As in :meth:`fitted`.

        Returns
        -------
        Series or ndarray of shape (n,)
            A Series indexed like ``X`` when ``X`` was a DataFrame.

        See Also
        --------
        mixedlm_sklearn.inference.prediction.residuals : The function behind this method.
        mixedlm_sklearn.plotting.residuals_vs_fitted : Plot them.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.residuals(type="pearson").head(2).round(3).tolist()
        [-0.16, -0.571]
        """
        from .inference.prediction import residuals

        check_is_fitted(self)
        return residuals(self, type=type, level=_level(level, re_form))

    def predict_interval(self, X: Any, *, groups: Any = None, Z: Any = None, offset: Any = None,
                         residual_groups: Any = None, alpha: float = 0.05,
                         kind: str = "prediction", re_form: Any = ALL_TERMS,
                         allow_new_levels: bool | str = True) -> tuple[np.ndarray, np.ndarray]:
        """Prediction or confidence intervals of :meth:`predict`.

        Parameters
        ----------
        X : array-like of shape (n, p)
            As in :meth:`predict`.
        groups : array-like of shape (n,) or DataFrame, optional
            As in :meth:`predict`; a row of an unseen group gets the random effects' full
            variance.
        Z : array-like, dict or DataFrame, optional
            As in :meth:`predict`.
        offset : array-like of shape (n,), optional
            As in :meth:`predict`.
        residual_groups : array-like of shape (n,), optional
            The rows' strata, for a model with a residual variance per stratum.
        alpha : float, default=0.05
            One minus the coverage.
        kind : {"prediction", "confidence"}, default="prediction"
            An interval for a new observation (residual variance included) or for its
            conditional mean.
        re_form : "all", None, list of str or str, default="all"
            As in :meth:`predict`; a term left out contributes its random effect's full
            variance.
        allow_new_levels : bool or "warn", default=True
            As in :meth:`predict`.

        Returns
        -------
        tuple of two ndarrays of shape (n,)
            The lower and upper bounds.

        See Also
        --------
        mixedlm_sklearn.inference.prediction.predict_interval : The function behind it.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", df)
        >>> lower, upper = fit.predict_interval(df.head(2))
        >>> lower.round(1), upper.round(1)
        (array([198.1, 219.1]), array([309.3, 327.6]))
        """
        from .inference.prediction import predict_interval

        check_is_fitted(self)
        X, groups, Z, offset, residual_groups = self._prediction_rows(
            X, groups, Z, offset, re_form, allow_new_levels, residual_groups)
        return predict_interval(self, X, groups=groups, Z=Z, offset=offset,
                                residual_groups=residual_groups, alpha=alpha, kind=kind)
    def simulate(self, n_sim: int = 1, random_state: Any = None, conditional: bool = False) -> np.ndarray:
        """Draw responses from the fitted model (lme4's ``simulate``).

        Parameters
        ----------
        n_sim : int, default=1
            Number of responses to draw.
        random_state : None, int or numpy Generator, default=None
            Seed; column ``j`` draws from the ``j``-th child of
            ``np.random.default_rng(random_state)``.
        conditional : bool, default=False
            Keep the fitted random effects (the BLUPs) instead of drawing new ones.

        Returns
        -------
        ndarray of shape (n_obs, n_sim)
            A column per simulated response.

        See Also
        --------
        mixedlm_sklearn.inference.simulate : The function behind this method.
        MixedLMRegressor.bootstrap : Refit the model to simulated responses.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.simulate(n_sim=5, random_state=0).shape
        (180, 5)
        """
        from .inference import simulate

        check_is_fitted(self)
        return simulate(self, n_sim=n_sim, random_state=random_state, conditional=conditional)

    def bootstrap(self, n_boot: int = 1000, random_state: Any = None, n_jobs: int | None = None,
                  statistic: Any = None):
        """Parametric bootstrap: refit the model to responses drawn from it (lme4's ``bootMer``).

        Parameters
        ----------
        n_boot : int, default=1000
            Number of replicates.
        random_state : None, int or numpy Generator, default=None
            Seed; the same seed gives the same replicates whatever ``n_jobs`` is.
        n_jobs : int, optional
            Worker processes (joblib).
        statistic : callable, optional
            ``statistic(fitted_estimator)`` returning numbers to record besides the
            parameters.

        Returns
        -------
        BootstrapResult
            The replicates of every parameter on lme4's scale, with ``conf_int`` and
            ``summary``.

        See Also
        --------
        mixedlm_sklearn.inference.bootstrap : The function behind this method.
        mixedlm_sklearn.pb_test : The parametric-bootstrap likelihood-ratio test.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> boot = fit.bootstrap(n_boot=100, random_state=0)
        >>> boot.replicates.shape, boot.n_failed
        ((100, 6), 0)
        """
        from .inference import bootstrap

        check_is_fitted(self)
        return bootstrap(self, n_boot=n_boot, random_state=random_state, n_jobs=n_jobs,
                         statistic=statistic)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.target_tags.multi_output = True  # Y (n, k): k models (inference/many.py)
        return tags


def _check_strata(cp: CrossProducts, labels: np.ndarray) -> None:
    """Refuse strata whose residual variance cannot be estimated.

    A stratum with fewer than two rows: with one row its residual can be absorbed by the
    random effects and the fixed part, and the likelihood grows without bound as that
    stratum's variance goes to 0.
    """
    for s in np.flatnonzero(cp.n_obs < 2):
        raise ValueError(
            f"stratum {labels[s]!r} of the residual variance has "
            f"{'no rows' if cp.n_obs[s] == 0 else 'a single row'}; a stratum needs at least two "
            "rows to estimate its own residual variance (merge it with another stratum)"
        )


