"""Generalized linear mixed models as scikit-learn estimators (lme4's ``glmer``).

:class:`MixedGLMClassifier` (binary outcomes) and :class:`MixedGLMRegressor` (Poisson
counts, binomial proportions) share the validation, the random-effects terms and the
prediction of the linear predictor with :class:`~mixedlm_sklearn.MixedLMRegressor`
(:mod:`._design`, :mod:`._validation`), and fit on the same engine (:mod:`._glmm`: PIRLS
on the one factorisation, Laplace or adaptive Gauss-Hermite deviance).
"""

from __future__ import annotations

import time
import warnings
from numbers import Integral, Real
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from joblib import effective_n_jobs
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from ._design import INTERCEPT, Design, column_names, factor_frame, several_factors, term_is_diagonal
from ._factor import NotPositiveDefinite
from ._family import FAMILIES, family_and_link, non_integer_counts, separated
from ._glmm import PIRLSDivergence, GLMMDeviance, fit_glmm, glm_start
from ._model import FittedModel
from ._table import ResultTable
from ._terms import Term, Terms
from ._threads import level_threads
from ._validation import (
    as_design,
    caller_stacklevel,
    check_finite,
    check_weights,
    chunk_columns,
    clean_failure,
    first_rows,
    without_zero_weights,
)
from ._rank import drop_aliased_columns
from ._base import (_CONF_INT_METHODS, MixedModelBase, SingularFitWarning, _check_frame,
                    _check_offset, _level, _refitting, store_fixed_effects, store_random_effects)
from ._util.choices import canonical
from .formula_mode import ALL_TERMS

__all__ = ["MixedGLMClassifier", "MixedGLMRegressor"]

# Gauss-Hermite nodes for the marginal (population-averaged) mean of a new group.
_MARGINAL_NODES = 40


class _MixedGLMBase(MixedModelBase):
    """What the GLMM classifier and regressor share: fit, attributes, linear predictor."""

    # score() conditions on the BLUPs only when asked (see MixedLMRegressor).
    __metadata_request__score = {"groups": False, "Z": False}

    _shared_constraints: dict = {
        "n_agq": [Interval(Integral, 1, 100, closed="both")],
        "fit_intercept": ["boolean"],
        "cov_type": [StrOptions({"unstructured", "diagonal"}), dict],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "verbose": ["verbose"],
        "formula": [str, None],
        "n_jobs": [Integral, None],
    }

    def _family_link(self):
        raise NotImplementedError

    def _encode_y(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_counts(self, family, y: np.ndarray, weights: np.ndarray) -> None:
        """Warn of a response that is not a count of its family (see the regressor)."""

    # ---- fitting --------------------------------------------------------------------------

    def _fit_either(self, X, y, groups, Z, sample_weight, offset, context):
        """``fit``'s body: the formula mode or the arrays."""
        if self.formula is not None:
            return self._fit_formula(X, y, groups=groups, Z=Z, offset=offset,
                                     sample_weight=sample_weight, context=context)
        if context is not None:
            raise TypeError("context= gives names a formula may use: it needs formula=...")
        return self._fit(X, y, groups, Z, sample_weight, offset)

    def _fit_arrays(self, X: Any, y: Any, *, groups: Any = None, Z: Any = None,
                    sample_weight: Any = None, offset: Any = None):
        return self._fit(X, y, groups, Z, sample_weight, offset)

    def _fit(self, X, y, groups, Z, sample_weight, offset):
        from ._chunked import is_dask_collection

        if is_dask_collection(X):  # from the partitions, where they live
            return self._fit_dask(X, y, groups, Z, sample_weight, offset)
        family, link = self._family_link()
        self._remember_z_names(Z)
        X = _check_frame(X)
        x_names_src = X
        # the rows' labels: fitted values and residuals are indexed like the input's rows
        index = X.index if isinstance(X, pd.DataFrame) else None
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False, accept_sparse=False,
                             ensure_all_finite=False)
        x_names = column_names(x_names_src, "x", X.shape[1])
        check_finite(X, "X", x_names)
        y = self._encode_y(y)
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"n_samples={n}: a model needs at least 2 samples")
        if not self.fit_intercept and X.shape[1] == 0:
            raise ValueError("the model has no fixed effects: give X columns or fit_intercept=True")
        weights = np.ones(n) if sample_weight is None else check_weights(sample_weight, n)
        off = np.zeros(n) if offset is None else _check_offset(offset, n)
        self._check_counts(family, y, weights)
        X, y, weights, off, index, groups, Z = without_zero_weights(
            weights, X=X, y=y, sample_weight=weights, offset=off, index=index, groups=groups, Z=Z)
        n = X.shape[0]
        family.check_response(y, weights)
        terms_in = self._random_terms(groups, Z, n, instead="a GLM")
        X_full = np.column_stack([np.ones(n), X]) if self.fit_intercept else X
        names = ([INTERCEPT] if self.fit_intercept else []) + list(x_names)
        rank = drop_aliased_columns(X_full.T @ (weights[:, None] * X_full), names, n)
        X_kept = np.ascontiguousarray(X_full[:, rank.kept])
        terms = Terms([Term(t.name, t.z_names, t.labels.size, t.diagonal) for t in terms_in])
        factors = tuple((t.codes, t.Z) for t in terms_in)
        dev = GLMMDeviance(X_kept, y, weights, off, factors, terms, family, link, self.n_agq)
        beta0, _ = glm_start(X_kept, y, weights, off, family, link)
        x0 = np.concatenate([terms.identity_theta(), beta0])
        started = time.perf_counter()
        try:
            sol, info = fit_glmm(dev, x0, self.max_iter, ftol=self.tol)
        except (PIRLSDivergence, NotPositiveDefinite) as err:
            raise ValueError(
                f"the GLMM fit broke down numerically ({err}). Usual causes: covariates on very "
                "different scales (centre and scale them), counts or a linear predictor so "
                "extreme that the mean over- or underflows, or classes separated by the "
                "covariates.") from None
        if self.verbose:
            print(f"[{type(self).__name__}] {info.n_fev} deviance evaluations, {dev.n_pirls} PIRLS "
                  f"iterations, converged={info.converged} ({time.perf_counter() - started:.3f} s)")
        design = Design(X, self.fit_intercept, y, factors, weights, None,
                        offset=off if offset is not None else None, index=index)
        self.model_ = FittedModel(dev, sol, info, rank.kept_names, terms,
                                  {t.name: t.labels for t in terms_in}, design=design,
                                  rank=rank if rank.deficient else None, max_iter=self.max_iter,
                                  tol=self.tol, family=dev.family)
        self._set_fitted(several_factors(groups, Z) if groups is not None else False)
        return self

    def fit_chunks(self, chunks: Any, *, y: str, groups: str | Sequence[str], X: Sequence[str],
                   Z: Sequence[str] | dict | None = None, sample_weight: str | None = None,
                   offset: str | None = None):
        """Fit from DataFrames read in chunks, or from a Dask DataFrame's partitions.

        Each step of PIRLS (and each gradient and information the optimiser asks for) is
        one pass over the chunks, adding up the weighted cross-products of each chunk's
        rows per level (and per pair of levels of crossed factors that share a row); a
        level may span chunks. Peak memory is one chunk plus a few numbers per level: no
        row is kept between passes. The fit is the in-memory one (:meth:`fit` on the
        concatenated data, to rounding), with the Laplace approximation (``n_agq=1``); a
        negative binomial's ``theta`` or a Gamma's ``shape`` is searched as in memory, each
        point of the search a fit.

        A fit reads the chunks many times (hundreds of passes), so they must be
        re-iterable: a list of DataFrames, a zero-argument callable returning a fresh
        iterable of them, or a Dask DataFrame (each pass computes every partition's sums
        where it lives, with the active scheduler). A one-shot iterator is refused. Dask
        collections given to :meth:`fit` (``X``, ``y``, ``groups``, ``Z``, ``sample_weight``,
        ``offset``: columns of one Dask DataFrame) are fitted the same way.

        Parameters
        ----------
        chunks : list of DataFrame, callable or Dask DataFrame
            For example ``[df.iloc[i:i + 10_000] for i in range(0, len(df), 10_000)]``,
            ``lambda: pd.read_csv(path, chunksize=1_000_000)`` or
            ``dask.dataframe.read_parquet(path)``.
        y : str
            Column of the response (class labels for the classifier; counts, or
            proportions of ``sample_weight`` trials, for the regressor).
        groups : str or list of str
            Column(s) of the grouping factor(s): one term per column.
        X : list of str
            Fixed-effects columns (the intercept is added when ``fit_intercept``).
        Z : list of str or dict, optional
            Random-effects columns (``"(Intercept)"`` stands for a column of ones); with
            several factors a dict from factor column to its list of columns. Default: a
            random intercept for every factor.
        sample_weight : str, optional
            Column of prior weights (binomial: the number of trials).
        offset : str, optional
            Column of the offset.

        Returns
        -------
        self
            The fitted estimator. It keeps no rows: predictions on new data, ``summary``,
            Wald tests and intervals work; what needs the fit's rows (fitted values,
            residuals, simulation, bootstrap, profiles, refits) is refused.

        Raises
        ------
        ValueError
            For a one-shot iterator, ``n_agq > 1``, or inputs that cannot be fitted.
        TypeError
            For a formula fit or column lists given as one string.

        See Also
        --------
        MixedGLMClassifier.fit : The classifier's fit from arrays in memory.
        MixedGLMRegressor.fit : The regressor's fit from arrays in memory.
        MixedLMRegressor.fit_chunks : The linear mixed model from chunks.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedlm_sklearn import MixedGLMRegressor
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> df = load_cbpp()
        >>> df["p"] = df["incidence"] / df["size"]
        >>> df = pd.concat([df, pd.get_dummies(df["period"], prefix="period", dtype=float)], axis=1)
        >>> X = ["period_2", "period_3", "period_4"]
        >>> chunks = [df.iloc[i:i + 20] for i in range(0, len(df), 20)]
        >>> est = MixedGLMRegressor(family="binomial").fit_chunks(
        ...     chunks, y="p", groups="herd", X=X, sample_weight="size")
        >>> round(est.llf_, 4)  # glmer's logLik: -92.0263
        -92.0263
        >>> in_memory = MixedGLMRegressor(family="binomial").fit(
        ...     df[X], df["p"], groups=df["herd"], sample_weight=df["size"])
        >>> bool(abs(est.llf_ - in_memory.llf_) < 1e-8)
        True
        """
        self._validate_params()
        if self.formula is not None:
            raise TypeError("fit_chunks reads columns by name; a formula fit needs the rows in "
                            "memory: use fit(df) or formula=None")
        group_cols, z_cols = chunk_columns(X, Z, groups)
        with _refitting(self), clean_failure(), level_threads(effective_n_jobs(self.n_jobs)):
            return self._fit_source(chunks, y, group_cols, [str(c) for c in X], z_cols,
                                    sample_weight, offset)

    def _fit_source(self, chunks: Any, y: str, group_cols: list, X: list, z_cols: dict,
                    sample_weight: str | None, offset: str | None, z_names: dict | None = None):
        """The fit from chunks or a Dask DataFrame of named columns (:meth:`fit_chunks`;
        ``z_names``: the random-effects columns' names where the frame's differ)."""
        from ._glmm_chunks import ChunkSource, ChunkedGLMMDeviance, chunked_glm_start

        if self.n_agq != 1:
            raise ValueError(f"n_agq={self.n_agq}: a GLMM from chunks or Dask partitions is fitted "
                             "with the Laplace approximation (n_agq=1); adaptive quadrature needs "
                             "the rows in memory")
        if not self.fit_intercept and len(X) == 0:
            raise ValueError("the model has no fixed effects: give X columns or fit_intercept=True")
        family, link = self._family_link()
        source = ChunkSource(chunks, y=y, X=X, groups=group_cols, Z=z_cols,
                             sample_weight=sample_weight, offset=offset,
                             fit_intercept=self.fit_intercept, z_names=z_names)
        source.encode_y = self._chunk_encoder(source, y)
        self._check_cov_type(group_cols)
        diagonal = {g: term_is_diagonal(self.cov_type, g) for g in group_cols}
        survey = source.survey(family, diagonal)
        terms = source.terms
        for term in terms:
            if term.n_levels < 2:
                raise ValueError(f"random effects need at least two groups; {term.name!r} has "
                                 f"{term.n_levels}")
        names = ([INTERCEPT] if self.fit_intercept else []) + X
        rank = drop_aliased_columns(survey["xtx"], names, survey["n"])
        source.kept = np.asarray(rank.kept)
        p = len(rank.kept_names)
        dev = ChunkedGLMMDeviance(source, p, survey["log_constant"], survey["n"], family, link)
        beta0 = chunked_glm_start(source, family, link, p)
        x0 = np.concatenate([terms.identity_theta(), beta0])
        started = time.perf_counter()
        try:
            sol, info = fit_glmm(dev, x0, self.max_iter, ftol=self.tol)
        except (PIRLSDivergence, NotPositiveDefinite) as err:
            raise ValueError(f"the GLMM fit broke down numerically ({err}); see fit()") from None
        if self.verbose:
            print(f"[{type(self).__name__}] {info.n_fev} deviance evaluations, {dev.n_pirls} "
                  f"PIRLS iterations, {dev.n_passes} passes over the chunks, "
                  f"converged={info.converged} ({time.perf_counter() - started:.3f} s)")
        self.n_features_in_ = len(X)
        self.feature_names_in_ = np.asarray(X, dtype=object)
        shown = {g: list(terms[k].z_names) for k, g in enumerate(group_cols) if g in z_cols}
        self._z_names_in = shown if len(group_cols) > 1 else {None: v for v in shown.values()}
        self.model_ = FittedModel(dev, sol, info, rank.kept_names, terms, dict(source.labels),
                                  design=None, rank=rank if rank.deficient else None,
                                  max_iter=self.max_iter, tol=self.tol, family=dev.family)
        self._set_fitted(len(group_cols) > 1)
        return self

    def _fit_dask(self, X, y, groups, Z, sample_weight, offset):
        """``fit`` with Dask collections: the columns joined into one Dask DataFrame (they
        must be partitioned alike, as columns of one DataFrame are), fitted from its
        partitions (:meth:`_fit_source`)."""
        import dask.dataframe as dd

        from ._chunked import check_dask_inputs

        check_dask_inputs(X=X, y=y, groups=groups, sample_weight=sample_weight, offset=offset,
                          **({f"Z[{k!r}]": v for k, v in Z.items()} if isinstance(Z, dict) else {"Z": Z}))
        if not hasattr(X, "columns"):
            raise TypeError("with Dask input, X must be a Dask DataFrame (named columns)")
        x_names = [str(c) for c in X.columns]
        if hasattr(groups, "columns"):
            g_names = [str(c) for c in groups.columns]
            parts = [groups[c].rename(f"__g{k}") for k, c in enumerate(groups.columns)]
        else:
            g_names = [str(groups.name) if groups.name is not None else "group"]
            parts = [groups.rename("__g0")]
        if Z is None:
            by_factor = {}
        elif isinstance(Z, dict):
            by_factor = {str(k): v for k, v in Z.items()}
        else:
            by_factor = {g_names[0]: Z}
        unknown = [k for k in by_factor if k not in g_names]
        if unknown:
            raise ValueError(f"Z key(s) {unknown} name no grouping factor; the factors are {g_names}")
        z_cols, z_names = {}, {}
        for k, (g, z) in enumerate(by_factor.items()):
            z = z.to_frame() if not hasattr(z, "columns") else z
            z_cols[f"__g{g_names.index(g)}"] = [f"__z{k}_{j}" for j in range(len(z.columns))]
            z_names[f"__g{g_names.index(g)}"] = [str(c) for c in z.columns]
            parts += [z[c].rename(f"__z{k}_{j}") for j, c in enumerate(z.columns)]
        parts.append(y.rename("__y"))
        if sample_weight is not None:
            parts.append(sample_weight.rename("__w"))
        if offset is not None:
            parts.append(offset.rename("__offset"))
        frame = dd.concat([X.rename(columns=dict(zip(X.columns, x_names))), *parts], axis=1)
        # the factors by their own names (the terms'), renamed in each partition
        rename = {f"__g{k}": g for k, g in enumerate(g_names)}
        frame = frame.rename(columns=rename)
        z_cols = {rename[k]: v for k, v in z_cols.items()}
        z_names = {rename[k]: v for k, v in z_names.items()}
        clash = sorted(set(x_names) & set(g_names))
        if clash:
            raise ValueError(f"{clash} name(s) both a column of X and a grouping factor")
        return self._fit_source(frame, "__y", g_names, x_names, z_cols,
                                None if sample_weight is None else "__w",
                                None if offset is None else "__offset", z_names)

    def _chunk_encoder(self, source: Any, column: str):
        """The response of a chunk as the fit takes it (the classifier's reads the classes
        of all chunks first)."""
        return lambda values: self._encode_y(np.asarray(values))

    def _set_fitted(self, several: bool, warn: bool = True) -> None:
        """The fitted attributes of ``model_`` (``warn=False``: without the convergence and
        separation warnings, for the refits of a bootstrap, which count them instead)."""
        model = self.model_
        sol, info, terms, dev = model.solution, model.info, model.terms, model.deviance
        store_fixed_effects(self, model, sol.cov_beta())
        self.llf_ = -0.5 * sol.deviance
        self.df_model_ = model.n_parameters
        self.family_params_ = dict(dev.family.values)
        self.aic_ = sol.deviance + 2.0 * self.df_model_
        self.bic_ = sol.deviance + np.log(model.n_obs) * self.df_model_
        if model.design is None:  # from chunks: one pass over them
            self.deviance_, extreme = dev.deviance_and_extremes(sol._modes)
        else:
            self.deviance_ = float(dev.family.deviance_residuals(dev.y, sol.eta, sol.mu, dev.prior,
                                                                  dev.link).sum())
            extreme = separated(dev.family, sol.mu)
        store_random_effects(self, model, several, sol.conditional_cov() if len(terms) else None)
        self.converged_ = info.converged
        self.n_iter_ = max(info.n_iter, 1)
        self.singular_ = bool(info.at_bound.any())
        if len(terms) and warn:
            self._warn_fit(info)
        if warn and extreme:
            warnings.warn("fitted probabilities numerically 0 or 1 occurred: the classes may "
                          "be (quasi-)separated by the covariates, and the estimates of the "
                          "coefficients involved are then not finite", UserWarning,
                          stacklevel=caller_stacklevel())

    # ---- prediction -------------------------------------------------------------------

    def _mean(self, X: Any, groups: Any, Z: Any, offset: Any, marginal: bool) -> np.ndarray:
        """The mean response: conditional on the BLUPs of seen levels; for the other levels
        the population value (effect 0) or, with ``marginal``, the mean over their effects."""
        eta = self._linear_predictor(X, groups=groups, Z=Z, offset=offset)
        if hasattr(self, "many_"):  # several responses: (n, k)
            if marginal:
                raise ValueError("marginal=True averages over one response's random effects: use "
                                 "for_response(j).predict(..., marginal=True)")
            with np.errstate(over="ignore"):
                return self.many_.family.link.inverse(eta)
        link = self.model_.deviance.link
        if not marginal or self.model_.terms is None or not len(self.model_.terms):
            return link.inverse(eta)
        var = self._unseen_variance(eta.shape[0], groups, Z)
        nodes, w = np.polynomial.hermite_e.hermegauss(_MARGINAL_NODES)
        w = w / w.sum()
        mu = link.inverse(eta[:, None] + np.sqrt(var)[:, None] * nodes[None, :]) @ w
        return mu

    def _unseen_variance(self, n: int, groups: Any, Z: Any) -> np.ndarray:
        """Variance of the random part of the linear predictor over the terms at an unseen level."""
        var = np.zeros(n)
        terms = self.model_.terms
        if groups is None:
            frame = None
        elif len(terms) == 1 and not isinstance(self.random_effects_, dict):
            frame = pd.DataFrame({terms[0].factor: np.asarray(groups, dtype=object).ravel()})
        else:
            frame = factor_frame(groups, n)
            frame.columns = [str(c) for c in frame.columns]
        by_factor = None
        if Z is not None and isinstance(self.random_effects_, dict):
            from ._design import z_by_factor
            by_factor = z_by_factor(Z)
        for k, term in enumerate(terms):
            cov = self.model_.solution.cov_re()[k]
            if Z is None or (by_factor is not None and term.factor not in by_factor):
                z = np.ones((n, 1))
            elif by_factor is not None:
                z = as_design(self._aligned_z(by_factor[term.factor], term.factor, "Z"), n, "Z")
            else:
                z = as_design(self._aligned_z(Z, None, "Z"), n, "Z")
            if z.shape[1] != term.q:
                raise ValueError(f"Z has {z.shape[1]} columns for {term.factor!r}, the model {term.q}")
            unseen = np.ones(n, dtype=bool)
            if frame is not None and term.factor in frame.columns:
                labels = np.asarray(frame[term.factor], dtype=object)
                unseen = pd.Index(self.model_.labels[term.factor]).get_indexer(labels) < 0
            var += unseen * np.einsum("ia,ab,ib->i", z, cov, z)
        return var

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags

    # ---- inference -------------------------------------------------------------------

    def emmeans(self, specs: Any, at: dict | None = None, type: str = "link", level: float = 0.95,
                by: Any = None):
        """Compute estimated marginal means of a formula fit (emmeans).

        Parameters
        ----------
        specs : str or list of str
            The factor(s) whose levels' means are estimated, averaging over the others.
        at : dict, optional
            Values of covariates (default their means) or levels at which to evaluate.
        type : {"link", "response"}, default="link"
            The linear predictor's scale, or the mean response's (probabilities, rates:
            delta-method SEs, back-transformed intervals; pairs as odds or rate ratios).
        level : float, default=0.95
            Confidence level of the (asymptotic) intervals.
        by : str or list of str, optional
            Means within each level of these variables (emmeans' ``by``).

        Returns
        -------
        EMMeans
            ``.table`` and ``.pairs(adjust="tukey")``.

        See Also
        --------
        mixedlm_sklearn.inference.emmeans.emmeans : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> fit.emmeans("period", type="response").table["prob"].round(4).tolist()
        [0.198, 0.0839, 0.074, 0.0484]
        >>> fit.emmeans("period", type="response").pairs()["odds.ratio"].round(3).tolist()[:3]
        [2.698, 3.092, 4.856]
        """
        from .inference.emmeans import emmeans

        check_is_fitted(self)
        return emmeans(self, specs, by=by, at=at, level=level, type=type)

    def anova(self, *others: Any, type: Any = 3):
        """Test the fixed-effects terms by Wald chi-square tests (car's ``Anova``).

        With further fits, the likelihood-ratio comparison of nested fits instead (lme4's
        ``anova(m0, m1)``).

        Parameters
        ----------
        *others : fitted GLMMs
            Further fits of the same rows: then the comparison table.
        type : {3, 2}, default=3
            car's type III (each term's coefficients, and the intercept's, being 0) or
            type II (each term after the others but those containing it).

        Returns
        -------
        DataFrame
            ``Chisq``, ``Df``, ``Pr(>Chisq)`` per term.

        See Also
        --------
        mixedlm_sklearn.anova : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> fit.anova()["Chisq"].round(2).tolist()  # car: 36.19, 24.95
        [36.19, 24.95]
        """
        from .inference.anova import anova

        check_is_fitted(self)
        return anova(self, *others, type=type)

    def drop1(self):
        """Test dropping each term no other term contains by likelihood ratios.

        lme4's ``drop1(fit, test = "Chisq")``: each reduced model refitted.

        Returns
        -------
        DataFrame
            ``npar``, ``AIC``, ``LRT``, ``Pr(Chi)``; a first row ``<none>``.

        See Also
        --------
        mixedlm_sklearn.inference.anova.drop1 : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> fit.drop1()["LRT"].round(3).tolist()  # lme4: NA, 25.61
        [nan, 25.61]
        """
        from .inference.anova import drop1

        check_is_fitted(self)
        return drop1(self)

    def r2(self):
        """Compute Nakagawa's marginal and conditional R2 (performance ``r2_nakagawa``).

        Returns
        -------
        R2
            ``.marginal``, ``.conditional`` (the distribution-specific variance: pi^2/3 for
            a logit link, log1p(1/mu0) for Poisson).

        See Also
        --------
        mixedlm_sklearn.inference.r2.r2 : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> round(fit.r2().marginal, 4)  # performance: 0.0854
        0.0854
        """
        from .inference.r2 import r2

        check_is_fitted(self)
        return r2(self)

    def icc(self):
        """Compute the adjusted and unadjusted intraclass correlation (performance ``icc``).

        Returns
        -------
        ICC
            ``.adjusted``, ``.unadjusted``.

        See Also
        --------
        mixedlm_sklearn.inference.r2.icc : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> round(fit.icc().adjusted, 4)  # performance: 0.1114
        0.1114
        """
        from .inference.r2 import icc

        check_is_fitted(self)
        return icc(self)

    def fitted(self, level: str | None = None, *, re_form: Any = ALL_TERMS,
               type: str = "response") -> Any:
        """Compute the fitted means of the fit's rows (lme4's ``fitted``).

        Parameters
        ----------
        level : {"conditional", "marginal"}, optional
            The older spelling of ``re_form``: ``"conditional"`` is ``re_form="all"``,
            ``"marginal"`` is ``re_form=None``.
        re_form : "all" or None, default="all"
            With the conditional modes of the random effects (lme4's ``fitted``) or at
            population level (lme4's ``predict(fit, re.form = NA)``).
        type : {"response", "link"}, default="response"
            The mean response, or the linear predictor.

        Returns
        -------
        Series or ndarray of shape (n,)
            A Series indexed like ``X`` when ``X`` was a DataFrame.

        See Also
        --------
        mixedlm_sklearn.inference.prediction.fitted : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> fit.fitted().head(2).round(4).tolist()  # lme4: 0.3082, 0.1417
        [0.3082, 0.1417]
        """
        from .inference.prediction import fitted

        check_is_fitted(self)
        return fitted(self, level=_level(level, re_form), type=type)

    def residuals(self, type: str = "deviance", level: str | None = None, *,
                  re_form: Any = ALL_TERMS) -> Any:
        """Compute the residuals of the fit's rows (lme4's ``residuals``).

        Parameters
        ----------
        type : {"deviance", "pearson", "response"}, default="deviance"
            Signed roots of the deviance contributions (lme4's default), Pearson's, or
            observed minus fitted mean.
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

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> fit.residuals().head(2).round(4).tolist()  # lme4: -1.438, 0.9887
        [-1.438, 0.9887]
        """
        from .inference.prediction import residuals

        check_is_fitted(self)
        return residuals(self, type=type, level=_level(level, re_form))

    def predict_interval(self, X: Any, *, groups: Any = None, Z: Any = None, offset: Any = None,
                         alpha: float = 0.05, re_form: Any = ALL_TERMS,
                         allow_new_levels: bool | str = True) -> tuple[np.ndarray, np.ndarray]:
        """Compute confidence intervals of the mean response of new rows.

        The interval of the linear predictor mapped through the inverse link.

        Parameters
        ----------
        X : array-like of shape (n, p)
            As in ``predict``.
        groups : array-like or DataFrame, optional
            As in ``predict``.
        Z : array-like, dict or DataFrame, optional
            As in ``predict``.
        offset : array-like of shape (n,), optional
            As in ``predict``.
        alpha : float, default=0.05
            One minus the coverage.
        re_form : "all", None, list of str or str, default="all"
            As in ``predict``; a term left out contributes its random effect's full
            variance to the linear predictor's.
        allow_new_levels : bool or "warn", default=True
            As in ``predict``.

        Returns
        -------
        lower : ndarray of shape (n,)
            ``linkinv(eta - z sd(eta))``.
        upper : ndarray of shape (n,)
            ``linkinv(eta + z sd(eta))``.

        See Also
        --------
        mixedlm_sklearn.inference.prediction.predict_interval : The function behind this method.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> new = pd.DataFrame({"herd": ["1"], "period": ["1"], "incidence": [0], "size": [1]})
        >>> lower, upper = fit.predict_interval(new)
        >>> bool(lower[0] < fit.predict(new)[0] < upper[0])
        True
        """
        from .inference.prediction import predict_interval

        check_is_fitted(self)
        X, groups, Z, offset, _ = self._prediction_rows(X, groups, Z, offset, re_form,
                                                        allow_new_levels, None)
        return predict_interval(self, X, groups=groups, Z=Z, offset=offset, alpha=alpha)

    def summary(self, alpha: float = 0.05):
        """Summarise the fit: fixed effects with Wald z tests, random effects (glmer's summary).

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the level of the Wald confidence intervals in the table.

        Returns
        -------
        Summary
            Printable; its ``fixed_effects`` and ``random_effects`` are DataFrames.

        See Also
        --------
        mixedlm_sklearn.inference.summary : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> fit.summary().fixed_effects.loc["period2", "estimate"].round(3)
        np.float64(-0.992)
        """
        from .inference.summary import summary

        check_is_fitted(self)
        return summary(self, alpha=alpha)

    def wald_test(self, L: Any, rhs: Any = None):
        """Wald chi-square test of ``L beta = rhs`` on the fixed effects.

        Parameters
        ----------
        L : str, list of str, array-like or DataFrame
            Fixed-effect names (a joint test that they are 0) or a contrast matrix whose
            columns follow ``fe_params_``.
        rhs : array-like, optional
            Hypothesised values of ``L beta``; default 0.

        Returns
        -------
        WaldTestResult
            The statistic (chi-square over its df), df and p-value.

        See Also
        --------
        mixedlm_sklearn.inference.wald_test : The function behind this method (here
            always ``ddf="chi2"``).

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> print(fit.wald_test(["period2", "period3", "period4"]))
        Wald chi2 test: chi2 = 24.95, df = 3, p = 1.583e-05
        """
        from .inference import wald_test

        check_is_fitted(self)
        return wald_test(self, L, rhs=rhs, ddf="chi2")

    def conf_int(self, alpha: float = 0.05, method: str = "wald", which: Any = None,
                 **kwargs) -> ResultTable:
        """Confidence intervals: Wald, profile likelihood or parametric bootstrap.

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the confidence level.
        method : {"wald", "profile", "boot"}, default="wald"
            ``"wald"`` (fixed effects), ``"profile"`` (likelihood) or ``"boot"``
            (parametric bootstrap).
        which : None, str or list of str
            Profile and boot: parameter names, or ``"variance"`` / ``"fixed"``.
        **kwargs
            Boot only: ``n_boot``, ``boot_type``, ``random_state``, ``n_jobs``.

        Returns
        -------
        ResultTable
            A DataFrame with columns ``lower`` and ``upper``, a row per parameter, printed
            as R's ``confint`` under a title and notes naming the method and level.

        See Also
        --------
        mixedlm_sklearn.inference.conf_int : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> fit.conf_int().round(3).loc["period2"].tolist()
        [-1.593, -0.391]
        """
        from .inference.profile import conf_int

        method = canonical(method, "method", _CONF_INT_METHODS)
        check_is_fitted(self)
        return conf_int(self, alpha=alpha, method=method, which=which, **kwargs)

    def simulate(self, n_sim: int = 1, random_state: Any = None, conditional: bool = False) -> np.ndarray:
        """Draw responses from the fitted model (lme4's ``simulate``).

        New random effects are drawn from ``cov_re_`` (``conditional=True``: the conditional
        modes are kept), then the response from the family (binomial proportions of
        ``sample_weight`` trials, Poisson counts) at the linear predictor with the offset.

        Parameters
        ----------
        n_sim : int, default=1
            Number of responses to draw.
        random_state : None, int or numpy Generator, default=None
            Seed.
        conditional : bool, default=False
            Keep the fitted conditional modes instead of drawing new random effects.

        Returns
        -------
        ndarray of shape (n_obs, n_sim)
            A column per simulated response.

        See Also
        --------
        mixedlm_sklearn.inference.simulate : The function behind this method.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMRegressor
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(20), 10)
        >>> x = rng.standard_normal(200)
        >>> y = rng.poisson(np.exp(0.5 + 0.3 * x + 0.5 * rng.standard_normal(20)[g]))
        >>> reg = MixedGLMRegressor(family="poisson").fit(x[:, None], y, groups=g)
        >>> Y = reg.simulate(n_sim=4000, random_state=1)
        >>> Y.shape
        (200, 4000)
        >>> # the mean count of a row: exp(x'b + var_re / 2) (lognormal random effect)
        >>> mean = np.exp(reg.intercept_ + reg.coef_[0] * x[0] + reg.cov_re_[0, 0] / 2)
        >>> bool(abs(Y[0].mean() / mean - 1) < 0.05)
        True
        """
        from .inference import simulate

        check_is_fitted(self)
        return simulate(self, n_sim=n_sim, random_state=random_state, conditional=conditional)

    def bootstrap(self, n_boot: int = 1000, random_state: Any = None, n_jobs: int | None = None,
                  statistic: Any = None):
        """Parametric bootstrap: refit the model to responses drawn from it (lme4's ``bootMer``).

        Each replicate is refitted from the fit's parameters.

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
            The replicates, with ``conf_int`` and ``summary``.

        See Also
        --------
        mixedlm_sklearn.inference.bootstrap : The function behind this method.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> boot = fit.bootstrap(n_boot=40, random_state=0)
        >>> boot.replicates.shape, boot.n_failed
        ((40, 5), 0)
        """
        from .inference import bootstrap

        check_is_fitted(self)
        return bootstrap(self, n_boot=n_boot, random_state=random_state, n_jobs=n_jobs,
                         statistic=statistic)


_CLASSIFIER_DOC_EXAMPLE = ""


class MixedGLMClassifier(ClassifierMixin, _MixedGLMBase):
    """Mixed-effects logistic (probit, cloglog) regression: lme4's binomial ``glmer``.

    For row ``i`` of group ``g``: ``P(y_i = classes_[1]) = g^{-1}(x_i'b + z_i'u_g)`` with
    ``u_g ~ N(0, cov_re)``, fitted by maximum likelihood with the Laplace approximation
    (any number of crossed or nested grouping factors and random slopes) or adaptive
    Gauss-Hermite quadrature (``n_agq > 1``, one grouping factor with a random intercept).

    Parameters
    ----------
    link : {"logit", "probit", "cloglog"}, default="logit"
        The link function of the probability of ``classes_[1]``.
    n_agq : int, default=1
        Quadrature nodes per group: 1 is the Laplace approximation (lme4's ``nAGQ``);
        more nodes need a single grouping factor with a random intercept.
    fit_intercept : bool, default=True
        Add an intercept column to the fixed effects.
    cov_type : {"unstructured", "diagonal"} or dict, default="unstructured"
        Covariance of each term's random effects (a dict per grouping factor).
    max_iter : int, default=1000
        Iteration limit of the optimiser.
    tol : float, default=1e-8
        Relative change of the deviance at which the quasi-Newton phase hands over to
        Newton steps (with a finite-difference Hessian), which finish the fit and check
        it as lme4 does (scaled gradient below 1e-4).
    verbose : int, default=0
        Print the optimiser's work when positive.
    formula : str, optional
        An lme4 formula; ``X`` is then a DataFrame with the formula's variables (grouping
        factors included), as :class:`MixedLMRegressor`'s ``formula``.
    n_jobs : int, optional
        Threads of the fit (joblib's convention: None is 1, -1 every core), as
        :class:`MixedLMRegressor`'s ``n_jobs``: the algebra over the levels of the largest
        factor in slices, and the Cholesky factor and inverse of a crossed design's dense
        block (order 1,200 or more, e.g. a few thousand items) in tiles; BLAS stays on
        one thread. The tiles sum in another order than LAPACK: the fit agrees with one
        thread's to rounding (measured: log-likelihood identical, estimates to 2.5e-15
        relative; tested to 1e-10) and is the same for any ``n_jobs > 1``, bit for bit.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The two labels; the model is for ``classes_[1]``.
    coef_ : ndarray of shape (n_features,)
        Fixed effects of the columns of X (link scale).
    intercept_ : float
        Fixed intercept (0.0 when ``fit_intercept=False``).
    cov_re_ : ndarray of shape (q, q) or dict
        Covariance of the random effects (one term: an array; several: a dict by factor).
    random_effects_ : DataFrame or dict
        Conditional modes of the random effects, a row per level (lme4's ``ranef``).
    random_effects_cov_ : ndarray or dict
        Their conditional covariance (lme4's ``condVar``).
    llf_ : float
        Log-likelihood (Laplace or AGQ approximation, constants included).
    aic_ : float
        Akaike's information criterion.
    bic_ : float
        Schwarz's criterion (log(n) per parameter).
    deviance_ : float
        Sum of squared deviance residuals at the conditional modes (lme4's ``deviance``).
    fe_params_ : Series
        All fixed effects, intercept first, with lme4's names.
    bse_ : Series
        Standard errors of ``fe_params_``.
    cov_fe_ : ndarray of shape (p, p)
        Covariance of ``fe_params_`` (lme4's ``vcov``: from the Hessian of the deviance in
        ``(theta, beta)``).
    theta_ : ndarray
        Relative covariance factors (lme4's ``getME(fit, "theta")``).
    groups_ : ndarray or dict
        Group labels: the rows of ``random_effects_``.
    n_groups_ : int or dict
        Number of groups (per grouping factor with several).
    n_iter_ : int
        Iterations of the optimiser.
    converged_ : bool
        Whether the optimiser met its convergence checks.
    singular_ : bool
        Whether a variance or correlation is on its bound.
    df_model_ : int
        Number of parameters counted by AIC and BIC.
    model_ : FittedModel
        The deviance function and the optimum, used by the inference methods.
    n_features_in_ : int
        Number of columns of X.
    feature_names_in_ : ndarray of shape (n_features,)
        Column names of X when it was a DataFrame with string column names.

    See Also
    --------
    MixedGLMRegressor : Poisson counts and binomial proportions.
    glmer : Fit from an lme4 formula.
    MixedLMRegressor : The linear mixed model.

    References
    ----------
    .. [1] Bates, D., Maechler, M., Bolker, B. and Walker, S. (2015). Fitting linear
       mixed-effects models using lme4. Journal of Statistical Software 67(1).
    .. [2] Pinheiro, J. C. and Chao, E. C. (2006). Efficient Laplacian and adaptive
       Gaussian quadrature algorithms for multilevel generalized linear mixed models.
       Journal of Computational and Graphical Statistics 15(1), 58-81.

    Examples
    --------
    >>> from mixedlm_sklearn import MixedGLMClassifier
    >>> from mixedlm_sklearn.datasets import load_verbagg
    >>> df = load_verbagg()
    >>> X = df[["Anger"]].assign(male=(df["Gender"] == "M") * 1.0)
    >>> clf = MixedGLMClassifier().fit(X, df["r2"], groups=df[["id", "item"]])
    >>> round(clf.llf_, 2), clf.n_groups_
    (-4094.56, {'id': 316, 'item': 24})
    >>> clf.predict_proba(X.head(2)).round(3)  # population level (new respondents, items)
    array([[0.479, 0.521],
           [0.607, 0.393]])
    >>> clf.predict_proba(X.head(2), groups=df[["id", "item"]].head(2)).round(3)[:, 1]
    array([0.673, 0.205])
    """

    _parameter_constraints: dict = {
        **_MixedGLMBase._shared_constraints,
        "link": [StrOptions({"logit", "probit", "cloglog"})],
    }

    def __init__(self, link: str = "logit", n_agq: int = 1, fit_intercept: bool = True,
                 cov_type: str | dict = "unstructured", max_iter: int = 1000, tol: float = 1e-8,
                 verbose: int = 0, formula: str | None = None, n_jobs: int | None = None) -> None:
        self.formula = formula
        self.link = link
        self.n_agq = n_agq
        self.fit_intercept = fit_intercept
        self.cov_type = cov_type
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.n_jobs = n_jobs

    _formula_labels = True  # formula mode: y holds class labels

    def _family_link(self):
        return family_and_link("binomial", self.link)

    def _encode_y(self, y: np.ndarray) -> np.ndarray:
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"Unknown label type: MixedGLMClassifier needs class labels; y is of "
                             f"type {kind!r}")
        classes, codes = np.unique(y, return_inverse=True)
        if classes.size != 2:
            raise ValueError(f"Only binary classification is supported: y has {classes.size} "
                             f"class{'es' if classes.size != 1 else ''} ({list(classes[:5])}); "
                             "MixedGLMClassifier needs exactly 2")
        self.classes_ = classes
        return codes.astype(float)

    def _chunk_encoder(self, source: Any, column: str):
        """0/1 codes of the classes of all chunks (one pass over them, first), as
        :meth:`_encode_y` codes those of the rows in memory."""
        def classes_of(frame, number):
            if not isinstance(frame, pd.DataFrame) or column not in frame.columns:
                return np.array([])
            return pd.unique(frame[column].dropna())

        values = [c for c in source._map(classes_of) if len(c)]
        classes = np.unique(np.concatenate(values)) if values else np.array([])
        self._encode_y(classes)  # the checks and classes_ of fit (two classes)
        classes = self.classes_

        def encode(values):
            values = np.asarray(values)
            codes = np.searchsorted(classes, values)
            return (codes == 1).astype(float)
        return encode

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None, *, groups: Any = None, Z: Any = None,
            sample_weight: Any = None, offset: Any = None,
            context: Any = None) -> "MixedGLMClassifier":
        """Fit the model.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates.
        y : array-like of shape (n,)
            Two class labels (any values).
        groups : array-like of shape (n,) or DataFrame, optional
            Group labels; a DataFrame with a column per grouping factor for several.
            Without it the model is a GLM (with a warning).
        Z : array-like, dict or DataFrame, optional
            Random-effects design (default: a random intercept per factor), as in
            :meth:`MixedLMRegressor.fit`.
        sample_weight : array-like of shape (n,), optional
            Prior weights (a row of weight 2 counts as two identical rows).
        offset : array-like of shape (n,), optional
            Known part of the linear predictor.
        context : mapping, optional
            With ``formula``: further names the formula may use (see :func:`lmer`).

        Returns
        -------
        MixedGLMClassifier
            The fitted estimator (``self``).

        Raises
        ------
        ValueError
            When ``y`` does not have exactly two classes, or for inputs that cannot be
            fitted; the estimator is left as it was.

        See Also
        --------
        glmer : The same fit from an lme4 formula.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMClassifier
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(30), 8)
        >>> x = rng.standard_normal(240)
        >>> y = np.where(x + rng.standard_normal(30)[g] + rng.logistic(size=240) > 0, "yes", "no")
        >>> clf = MixedGLMClassifier().fit(x[:, None], y, groups=g)
        >>> clf.classes_.tolist(), clf.n_groups_
        (['no', 'yes'], 30)
        """
        from .inference.many import is_multi_output

        if is_multi_output(y) and np.shape(y)[1] > 1:
            raise ValueError(f"MixedGLMClassifier fits one binary response; y has shape "
                             f"{np.shape(y)}. Several responses with one design are fitted for "
                             "counts (MixedGLMRegressor(family='poisson' or 'negative_binomial')); "
                             "fit each binary response on its own.")
        with _refitting(self), clean_failure(), level_threads(effective_n_jobs(self.n_jobs)):
            return self._fit_either(X, y, groups, Z, sample_weight, offset, context)

    def decision_function(self, X: Any, *, groups: Any = None, Z: Any = None,
                          offset: Any = None, re_form: Any = ALL_TERMS,
                          allow_new_levels: bool | str = True) -> np.ndarray:
        """Compute the linear predictor: ``X b`` plus the BLUPs of seen groups (link scale).

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates.
        groups : array-like of shape (n,) or DataFrame, optional
            Rows of seen groups add their conditional modes; other rows get 0.
        Z : array-like, dict or DataFrame, optional
            Random-effects design of the rows, as in ``fit``.
        offset : array-like of shape (n,), optional
            The rows' offset.
        re_form : "all", None, list of str or str, default="all"
            The random-effects terms to condition on, as in
            :meth:`MixedLMRegressor.predict` (None: the population level).
        allow_new_levels : bool or "warn", default=True
            As in :meth:`MixedLMRegressor.predict`.

        Returns
        -------
        ndarray of shape (n,)
            The linear predictor of ``classes_[1]``.

        See Also
        --------
        MixedGLMClassifier.predict_proba : The probabilities.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMClassifier
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(30), 8)
        >>> x = rng.standard_normal(240)
        >>> y = (x + rng.standard_normal(30)[g] + rng.logistic(size=240) > 0).astype(int)
        >>> clf = MixedGLMClassifier().fit(x[:, None], y, groups=g)
        >>> eta = clf.decision_function(x[:3, None])
        >>> np.allclose(1 / (1 + np.exp(-eta)), clf.predict_proba(x[:3, None])[:, 1])
        True
        """
        check_is_fitted(self)
        X, groups, Z, offset, _ = self._prediction_rows(X, groups, Z, offset, re_form,
                                                        allow_new_levels)
        return self._linear_predictor(X, groups=groups, Z=Z, offset=offset)

    def predict_proba(self, X: Any, *, groups: Any = None, Z: Any = None, offset: Any = None,
                      marginal: bool = False, re_form: Any = ALL_TERMS,
                      allow_new_levels: bool | str = True) -> np.ndarray:
        """Predict class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates.
        groups : array-like of shape (n,) or DataFrame, optional
            Rows of seen groups are conditional on their BLUPs.
        Z : array-like, dict or DataFrame, optional
            Random-effects design of the rows, as in ``fit``.
        offset : array-like of shape (n,), optional
            The rows' offset.
        marginal : bool, default=False
            For rows of unseen groups (all rows without ``groups``): False gives the
            population prediction (random effect 0); True the probability averaged over
            the random effect's distribution (what a new group's rows have on average).
        re_form : "all", None, list of str or str, default="all"
            The random-effects terms to condition on, as in
            :meth:`MixedLMRegressor.predict` (None: the population level).
        allow_new_levels : bool or "warn", default=True
            As in :meth:`MixedLMRegressor.predict`.

        Returns
        -------
        ndarray of shape (n, 2)
            The probabilities of ``classes_[0]`` and ``classes_[1]``.

        See Also
        --------
        MixedGLMClassifier.predict : The more probable class.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMClassifier
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(30), 8)
        >>> x = rng.standard_normal(240)
        >>> y = (x + rng.standard_normal(30)[g] + rng.logistic(size=240) > 0).astype(int)
        >>> clf = MixedGLMClassifier().fit(x[:, None], y, groups=g)
        >>> population = clf.predict_proba(np.array([[2.0]]))[0, 1]
        >>> averaged = clf.predict_proba(np.array([[2.0]]), marginal=True)[0, 1]
        >>> bool(averaged < population)  # averaging over groups flattens the curve
        True
        """
        check_is_fitted(self)
        X, groups, Z, offset, _ = self._prediction_rows(X, groups, Z, offset, re_form,
                                                        allow_new_levels)
        p1 = np.clip(self._mean(X, groups, Z, offset, marginal), 0.0, 1.0)
        return np.column_stack([1.0 - p1, p1])

    def predict(self, X: Any, *, groups: Any = None, Z: Any = None, offset: Any = None,
                marginal: bool = False, re_form: Any = ALL_TERMS,
                allow_new_levels: bool | str = True) -> np.ndarray:
        """Predict the more probable class of each row.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates.
        groups : array-like of shape (n,) or DataFrame, optional
            As in :meth:`predict_proba`.
        Z : array-like, dict or DataFrame, optional
            As in :meth:`predict_proba`.
        offset : array-like of shape (n,), optional
            As in :meth:`predict_proba`.
        marginal : bool, default=False
            As in :meth:`predict_proba`.
        re_form : "all", None, list of str or str, default="all"
            As in :meth:`predict_proba`.
        allow_new_levels : bool or "warn", default=True
            As in :meth:`predict_proba`.

        Returns
        -------
        ndarray of shape (n,)
            Labels from ``classes_``.

        See Also
        --------
        MixedGLMClassifier.predict_proba : The probabilities.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMClassifier
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(30), 8)
        >>> x = rng.standard_normal(240)
        >>> y = np.where(x + rng.standard_normal(30)[g] + rng.logistic(size=240) > 0, "yes", "no")
        >>> clf = MixedGLMClassifier().fit(x[:, None], y, groups=g)
        >>> clf.predict(np.array([[-3.0], [3.0]])).tolist()
        ['no', 'yes']
        """
        proba = self.predict_proba(X, groups=groups, Z=Z, offset=offset, marginal=marginal,
                                   re_form=re_form, allow_new_levels=allow_new_levels)
        return self.classes_[(proba[:, 1] > 0.5).astype(int)]

    def simulate(self, n_sim: int = 1, random_state: Any = None, conditional: bool = False) -> np.ndarray:
        """Draw class labels from the fitted model (lme4's ``simulate``).

        New random effects are drawn from ``cov_re_`` (``conditional=True``: the
        conditional modes are kept), then a Bernoulli draw per row with the model's
        probability of ``classes_[1]``.

        Parameters
        ----------
        n_sim : int, default=1
            Number of responses to draw.
        random_state : None, int or numpy Generator, default=None
            Seed.
        conditional : bool, default=False
            Keep the fitted conditional modes instead of drawing new random effects.

        Returns
        -------
        ndarray of shape (n_obs, n_sim)
            Labels from ``classes_``.

        Raises
        ------
        ValueError
            For a fit with ``sample_weight`` other than 1: such a row stands for several
            rows and has no single label to draw (use
            :func:`mixedlm_sklearn.inference.simulate`, which returns the proportion of
            ``classes_[1]`` among them).

        See Also
        --------
        mixedlm_sklearn.inference.simulate : The function behind this method.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMClassifier
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(30), 8)
        >>> x = rng.standard_normal(240)
        >>> y = np.where(x + rng.standard_normal(30)[g] + rng.logistic(size=240) > 0, "yes", "no")
        >>> clf = MixedGLMClassifier().fit(x[:, None], y, groups=g)
        >>> Y = clf.simulate(n_sim=3, random_state=1)
        >>> Y.shape, Y[:4, 0].tolist()
        ((240, 3), ['yes', 'no', 'no', 'yes'])
        """
        from .inference import simulate

        check_is_fitted(self)
        weights = self.model_.design.weights
        if np.any(weights != 1.0):
            raise ValueError("a classifier fitted with sample_weight has no single label per row "
                             "to simulate (a row of weight w stands for w rows); "
                             "mixedlm_sklearn.inference.simulate gives the proportion of "
                             "classes_[1] among them")
        Y = simulate(self, n_sim=n_sim, random_state=random_state, conditional=conditional)
        return self.classes_[Y.astype(np.intp)]

    def predict_log_proba(self, X: Any, **kwargs) -> np.ndarray:
        """Predict the logarithm of the class probabilities.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates.
        **kwargs
            ``groups``, ``Z``, ``offset``, ``marginal`` as in :meth:`predict_proba`.

        Returns
        -------
        ndarray of shape (n, 2)
            ``log(predict_proba(X, **kwargs))``.

        See Also
        --------
        MixedGLMClassifier.predict_proba : The probabilities.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMClassifier
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(30), 8)
        >>> x = rng.standard_normal(240)
        >>> y = (x + rng.standard_normal(30)[g] + rng.logistic(size=240) > 0).astype(int)
        >>> clf = MixedGLMClassifier().fit(x[:, None], y, groups=g)
        >>> bool(np.allclose(np.exp(clf.predict_log_proba(x[:3, None])), clf.predict_proba(x[:3, None])))
        True
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X, **kwargs))

    def score(self, X: Any, y: Any = None, sample_weight: Any = None, *, groups: Any = None,
              Z: Any = None) -> float:
        """Compute the accuracy, conditional on the BLUPs where ``groups`` are given.

        A formula fit scores :meth:`predict`'s default: rows of groups seen in ``fit``
        conditional on their modes, rows of unseen groups at the population level (so
        ``GroupKFold`` scores the prediction of new groups); ``y`` may be left out when the
        formula's response is a column of ``X``.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates of the test rows.
        y : array-like of shape (n,)
            Their labels.
        sample_weight : array-like of shape (n,), optional
            Weights of the rows.
        groups : array-like of shape (n,) or DataFrame, optional
            As in :meth:`predict_proba`; route them with ``set_score_request``.
        Z : array-like, dict or DataFrame, optional
            As in :meth:`predict_proba`.

        Returns
        -------
        float
            The fraction of rows whose predicted class is the observed one.

        See Also
        --------
        sklearn.metrics.log_loss : A score of the probabilities (``scoring="neg_log_loss"``).

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMClassifier
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(30), 8)
        >>> x = rng.standard_normal(240)
        >>> y = (x + rng.standard_normal(30)[g] + rng.logistic(size=240) > 0).astype(int)
        >>> clf = MixedGLMClassifier().fit(x[:, None], y, groups=g)
        >>> bool(clf.score(x[:, None], y, groups=g) > clf.score(x[:, None], y))
        True
        """
        from sklearn.metrics import accuracy_score

        y, sample_weight = self._formula_response(X, y, sample_weight)
        return float(accuracy_score(y, self.predict(X, groups=groups, Z=Z), sample_weight=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class MixedGLMRegressor(RegressorMixin, _MixedGLMBase):
    """Generalized linear mixed models for counts, proportions and positive responses.

    lme4's ``glmer`` and ``glmer.nb``, glmmTMB's ``nbinom2`` and ``Gamma``.

    ``E[y_i | u] = g^{-1}(x_i'b + z_i'u_g)``, ``u_g ~ N(0, cov_re)``; Poisson or negative
    binomial counts, binomial proportions with ``sample_weight`` the number of trials
    (R's ``glm`` convention: ``cbind(successes, failures)`` is ``y = successes / trials``),
    or positive Gamma responses.

    The negative binomial (NB2, ``Var = mu + mu^2 / theta``) and the Gamma family
    (``Var = mu^2 / shape``) have a parameter of their own, estimated jointly with the
    others (or held at the value given in ``family_params``); their Laplace
    approximation takes the exact Hessian of the joint log-density in the random
    effects, as glmmTMB does (lme4's ``glmer.nb`` uses the Fisher weights, which differ
    for the log link: its logLik is not the same approximation).

    Parameters
    ----------
    family : {"poisson", "binomial", "negative_binomial", "gamma"}, default="poisson"
        The conditional distribution of the response.
    link : str, optional
        Default the canonical link (log, logit, inverse for Gamma) and log for the
        negative binomial; binomial also takes probit, cloglog; Gamma also log.
    n_agq : int, default=1
        Quadrature nodes per group: 1 is the Laplace approximation (lme4's ``nAGQ``);
        more nodes need a single grouping factor with a random intercept.
    fit_intercept : bool, default=True
        Add an intercept column to the fixed effects.
    cov_type : {"unstructured", "diagonal"} or dict, default="unstructured"
        Covariance of each term's random effects (a dict per grouping factor).
    max_iter : int, default=1000
        Iteration limit of the optimiser.
    tol : float, default=1e-8
        Relative change of the deviance at which the quasi-Newton phase hands over to
        Newton steps (with a finite-difference Hessian), which finish the fit and check
        it as lme4 does (scaled gradient below 1e-4).
    verbose : int, default=0
        Print the optimiser's work when positive.
    formula : str, optional
        An lme4 formula; ``X`` is then a DataFrame with the formula's variables (grouping
        factors included), as :class:`MixedLMRegressor`'s ``formula``.
    family_params : dict, optional
        Values at which to hold the family's parameters (R's names: ``{"theta": 2.0}``
        for the negative binomial, as MASS's ``negative.binomial(theta)``;
        ``{"shape": 3.0}`` for Gamma); the ones not given are estimated.
    n_jobs : int, optional
        Threads of the fit, as :class:`MixedGLMClassifier`'s ``n_jobs`` (joblib's
        convention: None is 1, -1 every core).

    Attributes
    ----------
    family_params_ : dict
        The family's parameters (estimated or held): ``theta`` of the negative binomial
        (glmer.nb's ``getME(fit, "glmer.nb.theta")``), ``shape`` of Gamma (glmmTMB's
        ``sigma(fit)^-2``); empty for binomial and Poisson.
    coef_ : ndarray of shape (n_features,)
        Fixed effects of the columns of X (link scale).
    intercept_ : float
        Fixed intercept (0.0 when ``fit_intercept=False``).
    cov_re_ : ndarray of shape (q, q) or dict
        Covariance of the random effects (one term: an array; several: a dict by factor).
    random_effects_ : DataFrame or dict
        Conditional modes of the random effects, a row per level (lme4's ``ranef``).
    random_effects_cov_ : ndarray or dict
        Their conditional covariance (lme4's ``condVar``).
    llf_ : float
        Log-likelihood (Laplace or AGQ approximation, constants included).
    aic_ : float
        Akaike's information criterion.
    bic_ : float
        Schwarz's criterion (log(n) per parameter).
    deviance_ : float
        Sum of squared deviance residuals at the conditional modes (lme4's ``deviance``).
    fe_params_ : Series
        All fixed effects, intercept first, with lme4's names.
    bse_ : Series
        Standard errors of ``fe_params_``.
    cov_fe_ : ndarray of shape (p, p)
        Covariance of ``fe_params_`` (lme4's ``vcov``: from the Hessian of the deviance in
        ``(theta, beta)``).
    theta_ : ndarray
        Relative covariance factors (lme4's ``getME(fit, "theta")``).
    groups_ : ndarray or dict
        Group labels: the rows of ``random_effects_``.
    n_groups_ : int or dict
        Number of groups (per grouping factor with several).
    n_iter_ : int
        Iterations of the optimiser.
    converged_ : bool
        Whether the optimiser met its convergence checks.
    singular_ : bool
        Whether a variance or correlation is on its bound.
    df_model_ : int
        Number of parameters counted by AIC and BIC.
    model_ : FittedModel
        The deviance function and the optimum, used by the inference methods.
    n_features_in_ : int
        Number of columns of X.
    feature_names_in_ : ndarray of shape (n_features,)
        Column names of X when it was a DataFrame with string column names.

    See Also
    --------
    MixedGLMClassifier : Binary outcomes with class labels.
    glmer : Fit from an lme4 formula.

    Examples
    --------
    >>> from mixedlm_sklearn import MixedGLMRegressor
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> df = load_cbpp()
    >>> X = df["period"].str.get_dummies().iloc[:, 1:]  # periods 2, 3, 4 against 1
    >>> reg = MixedGLMRegressor(family="binomial").fit(
    ...     X, df["incidence"] / df["size"], groups=df["herd"], sample_weight=df["size"])
    >>> round(reg.llf_, 3), reg.fe_params_.round(3).tolist()
    (-92.026, [-1.399, -0.992, -1.129, -1.58])
    """

    _parameter_constraints: dict = {
        **_MixedGLMBase._shared_constraints,
        "family": [StrOptions(set(FAMILIES))],
        "link": [StrOptions({"logit", "probit", "cloglog", "log", "inverse"}), None],
        "family_params": [dict, None],
    }

    def __init__(self, family: str = "poisson", link: str | None = None, n_agq: int = 1,
                 fit_intercept: bool = True, cov_type: str | dict = "unstructured",
                 max_iter: int = 1000, tol: float = 1e-8, verbose: int = 0,
                 formula: str | None = None, family_params: dict | None = None,
                 n_jobs: int | None = None) -> None:
        self.formula = formula
        self.family = family
        self.family_params = family_params
        self.link = link
        self.n_agq = n_agq
        self.fit_intercept = fit_intercept
        self.cov_type = cov_type
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.n_jobs = n_jobs

    def _family_link(self):
        return family_and_link(self.family, self.link, self.family_params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # count matrices: k GLMMs (inference/many_glmm.py)
        return tags

    def _formula_counts(self) -> bool:
        return self.family == "binomial"

    def _check_counts(self, family, y: np.ndarray, weights: np.ndarray) -> None:
        # A binomial y is the proportion of successes of sample_weight trials, so y * w
        # counts successes; lme4's glmer warns "non-integer #successes in a binomial glm!".
        # (The classifier's y are labels and its weights importance weights: no counts.)
        if family.name != "binomial":
            return
        bad = non_integer_counts(y, weights)
        if bad.any():
            warnings.warn(
                f"non-integer numbers of successes or failures in a binomial model (rows "
                f"{first_rows(bad)}; e.g. y = {y[bad][0]:.6g} with sample_weight = "
                f"{weights[bad][0]:.6g}): y is the proportion of successes and sample_weight "
                "the number of trials, so y * sample_weight and (1 - y) * sample_weight are "
                "counts. Give the trials: sample_weight = trials with y = successes / trials "
                "(in glmer, the response cbind(successes, failures) of whole numbers); "
                "a proportion without its trials is fitted as one trial per row.",
                UserWarning, stacklevel=caller_stacklevel())

    def _encode_y(self, y: np.ndarray) -> np.ndarray:
        try:
            values = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"y must be numeric for a {self.family} model: {err}") from None
        check_finite(values, "y")
        return values

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None, *, groups: Any = None, Z: Any = None,
            sample_weight: Any = None, offset: Any = None,
            context: Any = None, progress: Any = None) -> "MixedGLMRegressor":
        """Fit the model.

        For ``family="binomial"``, ``y`` is the proportion of successes and
        ``sample_weight`` the number of trials (default 1: Bernoulli).

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates.
        y : array-like of shape (n,) or (n, k)
            Counts (Poisson) or proportions of successes (binomial). With ``k`` columns
            (genes, proteins with one design; ``family="poisson"`` or
            ``"negative_binomial"``) ``k`` independent GLMMs are fitted, each with its own
            variance components (and ``theta``), sharing all set-up that does not depend on
            the response (NEBULA's use case; the user guide's "Many responses"). A NaN
            marks a missing value: each response uses its own complete rows. Every fitted
            attribute then has a leading axis of responses (``coef_`` (k, p),
            ``intercept_``, ``llf_``, ``aic_``, ``deviance_``, ``converged_``,
            ``singular_`` (k,), ``cov_re_`` (k, q, q), ``random_effects_`` (k, n_groups,
            q), ``family_params_`` a dict of (k,) arrays, ``fe_params_`` and ``bse_``
            DataFrames with a row per response), plus ``responses_``, ``n_obs_``,
            ``failed_`` and ``fit_messages_``: a response that cannot be fitted is NaN and
            reported there, never losing the others. :meth:`for_response` gives one
            response's single-response estimator.
        groups : array-like of shape (n,) or DataFrame, optional
            Group labels; a DataFrame with a column per grouping factor for several.
            Without it the model is a GLM (with a warning).
        Z : array-like, dict or DataFrame, optional
            Random-effects design (default: a random intercept per factor), as in
            :meth:`MixedLMRegressor.fit`.
        sample_weight : array-like of shape (n,), optional
            Prior weights; for binomial proportions the numbers of trials.
        offset : array-like of shape (n,), optional
            Known part of the linear predictor.
        context : mapping, optional
            With ``formula``: further names the formula may use (see :func:`lmer`).
        progress : callable, optional
            With several responses: ``progress(done, total)`` after each block of
            responses (with ``verbose`` and no callable, a printed line per block).

        Returns
        -------
        MixedGLMRegressor
            The fitted estimator (``self``).

        Raises
        ------
        ValueError
            For negative or non-integer counts, proportions outside [0, 1], or inputs that
            cannot be fitted; the estimator is left as it was.

        See Also
        --------
        glmer : The same fit from an lme4 formula.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMRegressor
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(20), 10)
        >>> x = rng.standard_normal(200)
        >>> y = rng.poisson(np.exp(0.5 + 0.3 * x + 0.5 * rng.standard_normal(20)[g]))
        >>> reg = MixedGLMRegressor(family="poisson").fit(x[:, None], y, groups=g)
        >>> reg.converged_, reg.n_groups_
        (True, 20)

        Several count responses with one design (a column each):

        >>> Y = rng.poisson(np.exp(0.5 + 0.5 * rng.standard_normal((20, 3)))[g])
        >>> many = MixedGLMRegressor(family="poisson").fit(x[:, None], Y, groups=g)
        >>> many.llf_.shape, many.coef_.shape, many.predict(x[:5, None], groups=g[:5]).shape
        ((3,), (3, 1), (5, 3))
        """
        from .inference.many import is_multi_output

        with _refitting(self), clean_failure(), level_threads(effective_n_jobs(self.n_jobs)):
            if is_multi_output(y) and self.formula is None:
                # ---- several responses: inference/many_glmm.py ----
                from .inference.many_glmm import fit_count_responses

                if context is not None:
                    raise TypeError("context= gives names a formula may use: it needs formula=...")
                self._remember_z_names(Z)
                fit_count_responses(self, X, y, groups, Z, sample_weight, offset, progress)
                if self.singular_.any():
                    first = self.responses_[np.flatnonzero(self.singular_)[0]]
                    warnings.warn(f"boundary (singular) fit for {int(self.singular_.sum())} of "
                                  f"{self.singular_.size} responses (singular_), e.g. {first!r}: a "
                                  "random-effects variance is 0 or a correlation is +-1 (see lme4's "
                                  "?isSingular).", SingularFitWarning, stacklevel=caller_stacklevel())
                return self
            if progress is not None:
                raise ValueError("progress reports the responses of a multi-output fit (y of "
                                 "shape (n, k), or glmer(..., responses=[...])); y has one")
            return self._fit_either(X, y, groups, Z, sample_weight, offset, context)

    def for_response(self, response: Any) -> "MixedGLMRegressor":
        """The fit of one response of a multi-output fit, as a single-response estimator.

        Its optimum is the multi-output fit's, which is the single fit of that column on its
        observed rows (nothing is optimised again), so every method of a single fit works
        on it (``summary``, ``conf_int``, ``anova``, ``emmeans``, ``predict(marginal=True)``,
        ...).

        Parameters
        ----------
        response : int or str
            Position or name (a column of ``Y``) of the response.

        Returns
        -------
        MixedGLMRegressor
            Fitted to that response.

        Raises
        ------
        ValueError
            When that response's fit failed (``failed_``), or the estimator was fitted to
            one response.

        See Also
        --------
        mixedlm_sklearn.inference.many.fixed_effects_table : Wald tests across the responses.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMRegressor
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(20), 10)
        >>> Y = rng.poisson(np.exp(0.5 + 0.5 * rng.standard_normal((20, 2)))[g])
        >>> est = MixedGLMRegressor(family="poisson").fit(np.zeros((200, 0)), Y, groups=g)
        >>> one = est.for_response(1)
        >>> bool(np.isclose(one.llf_, est.llf_[1], rtol=1e-10)), one.cov_re_.shape
        (True, (1, 1))
        """
        if not hasattr(self, "many_"):
            check_is_fitted(self)
            raise ValueError("for_response is for an estimator fitted to several responses")
        from .inference.many_glmm import count_response_estimator

        return count_response_estimator(self, response)

    def predict(self, X: Any, *, groups: Any = None, Z: Any = None, offset: Any = None,
                marginal: bool = False, type: str = "response", re_form: Any = ALL_TERMS,
                allow_new_levels: bool | str = True) -> np.ndarray:
        """Predict the mean response (counts per unit offset, proportions).

        Rows of seen groups are conditional on their BLUPs.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates.
        groups : array-like of shape (n,) or DataFrame, optional
            Rows of seen groups are conditional on their BLUPs.
        Z : array-like, dict or DataFrame, optional
            Random-effects design of the rows, as in ``fit``.
        offset : array-like of shape (n,), optional
            The rows' offset.
        marginal : bool, default=False
            As in :meth:`MixedGLMClassifier.predict_proba`: for rows of unseen groups the
            mean averaged over the random effect's distribution.
        type : {"response", "link"}, default="response"
            The mean response, or the linear predictor (lme4's ``type``; ``"link"`` is
            :meth:`decision_function`).
        re_form : "all", None, list of str or str, default="all"
            The random-effects terms to condition on, as in
            :meth:`MixedLMRegressor.predict` (None: the population level).
        allow_new_levels : bool or "warn", default=True
            As in :meth:`MixedLMRegressor.predict`.

        Returns
        -------
        ndarray of shape (n,)
            The predicted means on the response scale.

        See Also
        --------
        MixedGLMRegressor.decision_function : The linear predictor.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMRegressor
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(20), 10)
        >>> x = rng.standard_normal(200)
        >>> y = rng.poisson(np.exp(0.5 + 0.3 * x + 0.5 * rng.standard_normal(20)[g]))
        >>> reg = MixedGLMRegressor(family="poisson").fit(x[:, None], y, groups=g)
        >>> bool(np.allclose(reg.predict(x[:3, None]), np.exp(reg.decision_function(x[:3, None]))))
        True
        """
        check_is_fitted(self)
        if type not in ("response", "link"):
            raise ValueError(f"type must be 'response' or 'link', got {type!r}")
        X, groups, Z, offset, _ = self._prediction_rows(X, groups, Z, offset, re_form,
                                                        allow_new_levels)
        if type == "link":
            return self._linear_predictor(X, groups=groups, Z=Z, offset=offset)
        return self._mean(X, groups, Z, offset, marginal)

    def decision_function(self, X: Any, *, groups: Any = None, Z: Any = None,
                          offset: Any = None, re_form: Any = ALL_TERMS,
                          allow_new_levels: bool | str = True) -> np.ndarray:
        """Compute the linear predictor (link scale).

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates.
        groups : array-like of shape (n,) or DataFrame, optional
            Rows of seen groups add their conditional modes.
        Z : array-like, dict or DataFrame, optional
            Random-effects design of the rows, as in ``fit``.
        offset : array-like of shape (n,), optional
            The rows' offset.
        re_form : "all", None, list of str or str, default="all"
            The random-effects terms to condition on, as in
            :meth:`MixedLMRegressor.predict` (None: the population level).
        allow_new_levels : bool or "warn", default=True
            As in :meth:`MixedLMRegressor.predict`.

        Returns
        -------
        ndarray of shape (n,)
            ``X b`` (plus offset and the conditional modes of seen groups).

        See Also
        --------
        MixedGLMRegressor.predict : The mean response.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMRegressor
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(20), 10)
        >>> x = rng.standard_normal(200)
        >>> y = rng.poisson(np.exp(0.5 + 0.3 * x + 0.5 * rng.standard_normal(20)[g]))
        >>> reg = MixedGLMRegressor(family="poisson").fit(x[:, None], y, groups=g)
        >>> bool(np.isclose(reg.decision_function(np.array([[0.0]]))[0], reg.intercept_))
        True
        """
        check_is_fitted(self)
        X, groups, Z, offset, _ = self._prediction_rows(X, groups, Z, offset, re_form,
                                                        allow_new_levels)
        return self._linear_predictor(X, groups=groups, Z=Z, offset=offset)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None, *, groups: Any = None,
              Z: Any = None) -> float:
        """Compute D^2, the fraction of deviance explained (scikit-learn's ``d2_tweedie_score``).

        A formula fit scores :meth:`predict`'s default means (conditional on the modes of
        groups seen in ``fit``, population level for unseen ones); without ``y`` the
        formula's response is read from ``X`` (``cbind``: the trials are the weights).

        ``1 - D(y, mu) / D(y, mean(y))`` with the family's deviance; for binomial
        proportions pass the trials as ``sample_weight``.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Fixed-effects covariates of the test rows.
        y : array-like of shape (n,)
            Their response.
        sample_weight : array-like of shape (n,), optional
            Weights (binomial: the numbers of trials).
        groups : array-like of shape (n,) or DataFrame, optional
            As in :meth:`predict`.
        Z : array-like, dict or DataFrame, optional
            As in :meth:`predict`.

        Returns
        -------
        float
            D^2 of :meth:`predict`'s means.

        See Also
        --------
        sklearn.metrics.d2_tweedie_score : The same score for GLMs.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedlm_sklearn import MixedGLMRegressor
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat(np.arange(20), 10)
        >>> x = rng.standard_normal(200)
        >>> y = rng.poisson(np.exp(0.5 + 0.3 * x + 0.5 * rng.standard_normal(20)[g]))
        >>> reg = MixedGLMRegressor(family="poisson").fit(x[:, None], y, groups=g)
        >>> bool(reg.score(x[:, None], y, groups=g) > reg.score(x[:, None], y) > 0)
        True
        """
        check_is_fitted(self)
        if hasattr(self, "many_"):
            raise ValueError("score is for a single response: use for_response(j).score")
        mu = self.predict(X, groups=groups, Z=Z)
        y, sample_weight = self._formula_response(X, y, sample_weight)
        if getattr(self, "response_levels_", None) is not None and not pd.api.types.is_numeric_dtype(
                np.asarray(y).dtype):
            y = (np.asarray(y) == self.response_levels_[1]).astype(float)
        y = np.asarray(y, dtype=float)
        w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        dev = self.model_.deviance
        fam, link = dev.family, dev.link
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            eta = link(np.clip(mu, 1e-300, 1 - 1e-16) if fam.name == "binomial" else np.maximum(mu, 1e-300))
            ybar = np.full_like(y, np.average(y, weights=w))
            eta0 = link(ybar)
            num = fam.deviance_residuals(y, eta, mu, w, link).sum()
            den = fam.deviance_residuals(y, eta0, ybar, w, link).sum()
        return float(1.0 - num / den) if den > 0 else float("nan")
