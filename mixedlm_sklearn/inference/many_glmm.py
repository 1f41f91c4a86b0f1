"""Many count responses with one design: ``k`` independent GLMMs (NEBULA's use case).

``MixedGLMRegressor(family="poisson" | "negative_binomial").fit(X, Y, groups=g)`` with ``Y``
of shape (n, k) fits every column as its own generalized linear mixed model (its own
variance components, fixed effects and, for the negative binomial, its own ``theta``),
following the conventions of the linear multi-output fit (:mod:`.many`): per-response
attributes with a leading axis of responses, ``predict`` (n, k), ``for_response(j)``,
``failed_`` and ``fit_messages_``, each response on its own complete rows.

Everything that does not depend on the response is done once: the validation of ``X``,
``groups``, ``Z``, weights and offset, the random-effects terms, and per *missingness
pattern* (the rows a response is observed on) the deviance's design, its sparse pattern
and elimination plan (:meth:`._glmm.GLMMDeviance.with_response` shares them). Each response
is then fitted by the single fit's own path (:func:`._glmm.glm_start`,
:func:`._glmm.fit_glmm`) from the single fit's start, so its fit *is* the single fit of
that column (the same numbers). A response whose fit breaks down is reported as failed
with the reason; the others are unaffected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from .._design import Design, random_terms, several_factors
from .._factor import NotPositiveDefinite
from .._glmm import GLMMDeviance, PIRLSDivergence, fit_glmm, glm_start
from .._many import missing_patterns
from .._model import FittedModel
from .._terms import Term, Terms
from .._threads import single_threaded_blas
from .._validation import check_weights, take_rows, without_zero_weights
from .many import INTERCEPT, read_responses, store_fixed_part, store_random_part, warn_responses

__all__ = ["ManyGLMMFit", "COUNT_FAMILIES", "fit_count_responses", "count_response_estimator"]

#: The families of the multi-output GLMM fit.
COUNT_FAMILIES = ("poisson", "negative_binomial")

# Responses between two progress reports.
_PROGRESS_BLOCK = 64

_BREAKDOWN = ("the GLMM fit broke down numerically ({}). Usual causes: counts or a linear "
              "predictor so extreme that the mean over- or underflows (e.g. a response that is "
              "0 in every row)")


@dataclass
class CountPattern:
    """The design of the rows one missingness pattern observes (every response of the
    pattern shares it).

    Attributes
    ----------
    rows : ndarray of bool (n,)
    columns : ndarray of int
        The responses with this pattern.
    levels : list of int ndarrays
        Per term, the positions among the whole data's levels of the levels these rows have.
    labels : dict
        Term name -> the labels of these rows' levels (as a fit of these rows alone has them).
    factors : tuple of (codes, Z)
        The random-effects design of these rows (codes into their own levels).
    terms : Terms
        The terms on these rows.
    deviance : GLMMDeviance or None
        The deviance of these rows (with a response of zeros), whose structure every
        response's deviance shares.
    problem : str or None
        Why these rows cannot be fitted (every response of the pattern fails with it).
    """

    rows: np.ndarray
    columns: np.ndarray
    levels: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    factors: tuple = ()
    terms: Terms | None = None
    deviance: GLMMDeviance | None = None
    problem: str | None = None


@dataclass
class ManyGLMMFit:
    """The fits of ``k`` count responses on one design (NaN rows for failed responses).

    Attributes
    ----------
    x : ndarray (k, n_theta + p)
        ``(theta, beta)`` at each optimum.
    deviance : ndarray (k,)
        ``-2 log L`` (Laplace or AGQ).
    residual_deviance : ndarray (k,)
        Sum of the squared deviance residuals (lme4's ``deviance``).
    cov_beta : ndarray (k, p, p)
    hessian_cov : ndarray of bool (k,)
        ``cov_beta`` is lme4's ``2 H^{-1}`` from the Hessian (else the Fisher-information
        fallback, which a rebuilt solution recomputes).
    blups : list of ndarray, each (k, m_t, q_t)
        Conditional modes per term on the levels of the whole data (0 for levels a response
        does not observe).
    family_values : dict
        Name of the family's parameter -> ndarray (k,) (its estimate or given value).
    converged, failed : ndarray of bool (k,)
    at_bound : ndarray of bool (k, n_theta)
    n_iter, n_obs, pattern : ndarray of int (k,)
    messages : list of str
    patterns : list of CountPattern
    terms : Terms
        The terms on the whole data.
    """

    x: np.ndarray
    deviance: np.ndarray
    residual_deviance: np.ndarray
    cov_beta: np.ndarray
    hessian_cov: np.ndarray
    blups: list
    family_values: dict
    converged: np.ndarray
    failed: np.ndarray
    at_bound: np.ndarray
    n_iter: np.ndarray
    n_fev: np.ndarray
    n_obs: np.ndarray
    pattern: np.ndarray
    messages: list
    patterns: list
    terms: Terms
    infos: dict = field(default_factory=dict, repr=False)

    @property
    def n_responses(self) -> int:
        return self.x.shape[0]

    @property
    def theta(self) -> np.ndarray:
        return self.x[:, :self.terms.n_theta]

    @property
    def beta(self) -> np.ndarray:
        return self.x[:, self.terms.n_theta:]

    @property
    def scale(self) -> np.ndarray:
        """A GLMM's dispersion is fixed at 1 (the layout of the linear fit's ``scale``)."""
        return np.where(self.failed, np.nan, 1.0)


@dataclass
class ManyGLMMResponses:
    """What a multi-output GLMM fit keeps: the fits and the data they came from (as
    :class:`.many.ManyResponses`)."""

    fit: ManyGLMMFit
    responses: list
    fe_names: list
    labels: dict
    several: bool
    X: np.ndarray
    Y: np.ndarray
    factors: tuple
    weights: np.ndarray
    offset: np.ndarray | None
    index: pd.Index | None
    intercept: bool
    family: Any


def _pattern(X_full: np.ndarray, groups: Any, Z: Any, weights: np.ndarray, offset: np.ndarray,
             rows: np.ndarray, columns: np.ndarray, est: Any, all_labels: dict, family, link,
             y_zero: np.ndarray) -> CountPattern:
    """The design of the observed rows ``rows``, made as the single fit of those rows makes
    it (:meth:`MixedGLMRegressor.fit` on ``X[rows]``, ``groups[rows]``), or why it cannot be
    fitted."""
    pat = CountPattern(rows, columns)
    n = int(rows.sum())
    p = X_full.shape[1]
    if n < 2:
        pat.problem = f"n_samples={n}: a model needs at least 2 samples"
        return pat
    if n <= p:
        pat.problem = f"{n} observed rows for {p} fixed effects"
        return pat
    if groups is None:
        terms_in = []
    else:
        try:
            terms_in = random_terms(take_rows(groups, rows, "groups"), take_rows(Z, rows, "Z"), n,
                                    est.cov_type)
        except (ValueError, TypeError) as err:
            pat.problem = str(err)
            return pat
    Xp, w = X_full[rows], weights[rows]
    xtwx = Xp.T @ (w[:, None] * Xp)
    eig = np.linalg.eigvalsh(xtwx) if p else np.ones(1)
    if p and not eig.min() > 1e-10 * max(eig.max(), np.finfo(float).tiny):
        pat.problem = "the fixed-effects columns are aliased (rank deficient) on the observed rows"
        return pat
    pat.terms = Terms([Term(t.name, t.z_names, t.labels.size, t.diagonal) for t in terms_in])
    pat.factors = tuple((t.codes, t.Z) for t in terms_in)
    pat.labels = {t.name: t.labels for t in terms_in}
    pat.levels = [pd.Index(all_labels[t.name]).get_indexer(t.labels) for t in terms_in]
    try:
        pat.deviance = GLMMDeviance(np.ascontiguousarray(Xp), y_zero, w, offset[rows], pat.factors,
                                    pat.terms, family, link, est.n_agq)
    except (ValueError, NotPositiveDefinite) as err:
        pat.problem = str(err)
    return pat


def fit_count_responses(est: Any, X: Any, Y: Any, groups: Any, Z: Any, sample_weight: Any,
                        offset: Any, progress: Callable[[int, int], None] | None = None) -> Any:
    """Fit ``est`` (a MixedGLMRegressor of a count family) to every column of ``Y`` (see
    :meth:`~mixedlm_sklearn.MixedGLMRegressor.fit`); stores the per-response attributes."""
    family, link = est._family_link()
    if family.name not in COUNT_FAMILIES:
        raise ValueError(f"several responses (y of shape (n, k)) are fitted for the count families "
                         f"{list(COUNT_FAMILIES)}; family={est.family!r} takes one response: fit "
                         "each column on its own")
    index, Xv, x_names, Yv, names, offset_values = read_responses(est, X, Y, offset, progress)
    n = Xv.shape[0]
    weights = np.ones(n) if sample_weight is None else check_weights(sample_weight, n)
    Xv, Yv, weights, offset_values, index, groups, Z = without_zero_weights(
        weights, X=Xv, Y=Yv, sample_weight=weights, offset=offset_values, index=index,
        groups=groups, Z=Z)
    n = Xv.shape[0]
    off = np.zeros(n) if offset_values is None else offset_values
    terms_in = est._random_terms(groups, Z, n, instead="a GLM per response")
    terms = Terms([Term(t.name, t.z_names, t.labels.size, t.diagonal) for t in terms_in])
    all_labels = {t.name: t.labels for t in terms_in}
    X_full = np.column_stack([np.ones(n), Xv]) if est.fit_intercept else Xv
    fe_names = ([INTERCEPT] if est.fit_intercept else []) + list(x_names)
    if est.verbose and progress is None:
        def progress(done: int, total: int) -> None:
            print(f"[{type(est).__name__}] {done}/{total} responses")

    k, p, nt = Yv.shape[1], X_full.shape[1], terms.n_theta
    observed, pattern = missing_patterns(Yv)
    out = ManyGLMMFit(
        x=np.full((k, nt + p), np.nan), deviance=np.full(k, np.nan),
        residual_deviance=np.full(k, np.nan), cov_beta=np.full((k, p, p), np.nan),
        hessian_cov=np.zeros(k, dtype=bool),
        blups=[np.zeros((k, t.n_levels, t.q)) for t in terms],
        family_values={name: np.full(k, np.nan) for name in family.parameter_names},
        converged=np.zeros(k, dtype=bool), failed=np.zeros(k, dtype=bool),
        at_bound=np.zeros((k, nt), dtype=bool), n_iter=np.zeros(k, dtype=np.int64),
        n_fev=np.zeros(k, dtype=np.int64), n_obs=observed.sum(axis=1)[pattern], pattern=pattern,
        messages=[""] * k, patterns=[], terms=terms)
    done = 0
    with single_threaded_blas():
        for s in range(observed.shape[0]):
            columns = np.flatnonzero(pattern == s)
            rows = observed[s]
            # the structure does not depend on the response: built with zeros, each
            # response's deviance takes its own y (with_response)
            pat = _pattern(X_full, groups, Z, weights, off, rows, columns, est, all_labels, family,
                           link, np.zeros(int(rows.sum())))
            out.patterns.append(pat)
            for j in columns:
                if pat.problem is not None:
                    out.failed[j] = True
                    out.messages[j] = pat.problem
                else:
                    _fit_one(out, pat, Yv[rows, j], int(j), est)
                done += 1
                if progress is not None and (done % _PROGRESS_BLOCK == 0 or done == k):
                    progress(done, k)
    est.n_features_in_ = Xv.shape[1]
    est.many_ = ManyGLMMResponses(out, names, fe_names, all_labels,
                                  several_factors(groups, Z) if groups is not None else False,
                                  Xv, Yv, tuple((t.codes, t.Z) for t in terms_in), weights,
                                  offset_values, index, est.fit_intercept, family)
    _store(est)
    warn_responses(est)
    return est


def _fit_one(out: ManyGLMMFit, pat: CountPattern, y: np.ndarray, j: int, est: Any) -> None:
    """Response ``j`` by the single fit's path (its start, its optimiser) on the pattern's
    shared structure."""
    dev0 = pat.deviance
    try:
        dev0.family.check_response(y, dev0.prior)
    except ValueError as err:
        out.failed[j] = True
        out.messages[j] = str(err)
        return
    if not np.any(y > 0):
        # the rate's maximum-likelihood estimate is 0: the intercept runs off to minus
        # infinity (single-cell data have many such genes; they carry no information)
        out.failed[j] = True
        out.messages[j] = ("every count is 0 on the response's observed rows: the mean's "
                           "maximum-likelihood estimate is 0 (a log-mean of minus infinity)")
        return
    dev = dev0.with_response(y)
    try:
        beta0, _ = glm_start(dev.X, y, dev.prior, dev.offset, dev.family, dev.link)
        x0 = np.concatenate([pat.terms.identity_theta(), beta0])
        with np.errstate(all="ignore"):
            sol, info = fit_glmm(dev, x0, est.max_iter, ftol=est.tol)
            cov = sol.cov_beta()
            blups = sol.blups() if len(pat.terms) else []
            resid = float(dev.family.deviance_residuals(dev.y, sol.eta, sol.mu, dev.prior,
                                                        dev.link).sum())
    except (PIRLSDivergence, NotPositiveDefinite, FloatingPointError, np.linalg.LinAlgError) as err:
        out.failed[j] = True
        out.messages[j] = _BREAKDOWN.format(err)
        return
    if not (np.isfinite(sol.deviance) and np.all(np.isfinite(sol.x))):
        out.failed[j] = True
        out.messages[j] = _BREAKDOWN.format("the deviance at the optimum is not finite")
        return
    out.x[j] = sol.x
    out.deviance[j] = sol.deviance
    out.residual_deviance[j] = resid
    out.cov_beta[j] = cov
    out.hessian_cov[j] = sol._cov is not None
    for t, b in enumerate(blups):
        out.blups[t][j, pat.levels[t]] = b
    for name, value in dev.family.values.items():
        if name in out.family_values:
            out.family_values[name][j] = value
    out.converged[j] = info.converged
    out.at_bound[j] = info.at_bound
    out.n_iter[j] = max(info.n_iter, 1)
    out.n_fev[j] = info.n_fev
    out.messages[j] = info.message
    out.infos[j] = info


def _store(est: Any) -> None:
    """The per-response fitted attributes (a leading axis of responses, as the linear
    multi-output fit's)."""
    mr = est.many_
    f = mr.fit
    # as the single fit's FittedModel.n_parameters: beta, theta and the family's free parameter
    store_fixed_part(est, mr, f, len(mr.fe_names) + f.terms.n_theta + len(mr.family.free))
    est.deviance_ = f.residual_deviance.copy()
    est.family_params_ = {name: v.copy() for name, v in f.family_values.items()}
    store_random_part(est, mr, f, np.ones(f.theta.shape[0]))


def count_response_estimator(est: Any, response: Any) -> Any:
    """The single-response estimator of one response of a multi-output GLMM fit.

    Its optimum is the multi-output fit's (nothing is optimised again): the deviance of that
    response on its rows is rebuilt and evaluated there, so every method of a single fit
    (summary, conf_int, anova, emmeans, ...) works on it.
    """
    from .many import _response_index

    check_is_fitted(est, "many_")
    mr = est.many_
    j = _response_index(mr, response)
    f = mr.fit
    if f.failed[j]:
        raise ValueError(f"response {mr.responses[j]!r} has no fit: {f.messages[j]}")
    pat = f.patterns[f.pattern[j]]
    rows = pat.rows
    y = mr.Y[rows, j]
    dev = pat.deviance.with_response(y)
    values = {name: float(v[j]) for name, v in f.family_values.items() if dev.family.free}
    if values:
        dev.set_family_values(values)
    with single_threaded_blas(), np.errstate(all="ignore"):
        sol = dev.solution(f.x[j])
    if f.hessian_cov[j]:
        sol = dataclasses.replace(sol, _cov=f.cov_beta[j].copy())
    design = Design(mr.X[rows], mr.intercept, y, pat.factors, mr.weights[rows], None,
                    offset=None if mr.offset is None else mr.offset[rows],
                    index=None if mr.index is None else mr.index[rows])
    model = FittedModel(dev, sol, f.infos[j], list(mr.fe_names), pat.terms, dict(pat.labels),
                        design=design, max_iter=est.max_iter, tol=est.tol, family=dev.family)
    single = type(est)(**est.get_params())
    single.n_features_in_ = est.n_features_in_
    if hasattr(est, "feature_names_in_"):
        single.feature_names_in_ = est.feature_names_in_
    single._z_names_in = getattr(est, "_z_names_in", None)
    single.model_ = model
    single._set_fitted(mr.several, warn=False)
    return single
