"""Many responses with one design: the multi-output fit and its tables across responses.

``MixedLMRegressor().fit(X, Y, groups=g, Z=Z)`` with ``Y`` of shape (n, k) fits ``k``
independent linear mixed models (scikit-learn's multi-output convention), sharing every
computation that does not depend on the response (:mod:`.._many`). This module holds the
estimator's side of it (validation, the per-response attributes, a single-response
estimator per response) and the tables analysts read across responses:

* :func:`fixed_effects_table`: per fixed effect and response the estimate, its standard
  error, Satterthwaite df, t and p, and the Benjamini-Hochberg adjusted p over responses
  (lmerTest per response, then ``p.adjust(p, "BH")``; variancePartition's ``dream`` +
  ``topTable``).
* :func:`variance_fractions`: the share of variance of each random-effects term, of each
  fixed-effect covariate and of the residual per response, as variancePartition's
  ``fitExtractVarPartModel`` / ``calcVarPart`` reports them.
* :func:`contrast_table`: a linear contrast of the fixed effects per response (``dream``'s
  contrasts), with Satterthwaite df and BH-adjusted p.
* :func:`p_adjust_bh`: Benjamini & Hochberg (1995) adjusted p-values (R's
  ``p.adjust(p, "BH")``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from .._design import Design, column_names, several_factors
from .._family import Family, gaussian
from .._batched_refit import _subset
from .._many import ManyFit, PatternDesign, fit_many, one_term_parts
from .._model import FittedModel
from .._terms import Term, Terms
from ._parameters import check_ddf
from .._validation import caller_stacklevel, check_finite, check_weights, without_zero_weights
from .._checks import check_counts, check_exact_fit, check_random_design

__all__ = ["ManyResponses", "fit_responses", "response_estimator", "fixed_effects_table",
           "variance_fractions", "contrast_table", "p_adjust_bh"]

INTERCEPT = "(Intercept)"


@dataclass
class ManyResponses:
    """What a multi-output fit keeps: the engine's fits and the data they came from.

    Attributes
    ----------
    fit : ManyFit
        Per-response estimates (:mod:`.._many`).
    responses : list of str
        Names of the responses (``Y``'s columns).
    fe_names : list of str
        Fixed effects (intercept first).
    labels : dict
        Factor name -> level labels of the whole data.
    several : bool
        Several grouping factors (dict-valued per-term attributes).
    X : ndarray (n, p_x)
        The covariates (without the intercept).
    Y : ndarray (n, k)
        The responses as fitted (offset subtracted; NaN = missing).
    factors : tuple of (codes, Z)
    weights, offset : ndarray or None
    index : Index or None
    family : Family
        The responses' family (Gaussian here; the GLMMs' :class:`.many_glmm.ManyGLMMResponses`
        has theirs): whether the dispersion is estimated decides the tables' tests.
    """

    fit: ManyFit
    responses: list
    fe_names: list
    labels: dict
    several: bool
    X: np.ndarray
    Y: np.ndarray
    factors: tuple
    weights: np.ndarray | None
    offset: np.ndarray | None
    index: pd.Index | None
    intercept: bool
    family: Family = field(default_factory=gaussian)


def is_multi_output(y: Any) -> bool:
    """Whether ``y`` holds several responses (2-D: an array or DataFrame of columns)."""
    if y is None or isinstance(y, pd.Series) or hasattr(y, "dask"):
        return False
    ndim = getattr(y, "ndim", None)
    if ndim is None:
        try:
            ndim = np.asarray(y, dtype=object).ndim
        except (TypeError, ValueError):
            return False
    return ndim == 2


def _as_responses(Y: Any, n: int) -> tuple[np.ndarray, list[str]]:
    names = [str(c) for c in Y.columns] if isinstance(Y, pd.DataFrame) else None
    try:
        values = np.asarray(Y, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Y must hold numbers (NaN for a missing value): {err}") from None
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"Y must have shape (n_samples, n_responses) with at least one column, "
                         f"got shape {values.shape}")
    if values.shape[0] != n:
        raise ValueError(f"Y has {values.shape[0]} rows and X {n}")
    if np.isinf(values).any():
        col = int(np.flatnonzero(np.isinf(values).any(axis=0))[0])
        raise ValueError(f"Y contains an infinite value (response {names[col] if names else col}); "
                         "mark a missing value with NaN")
    if names is None:
        names = [f"y{j}" for j in range(values.shape[1])]
    return values, names


def read_responses(est: Any, X: Any, Y: Any, offset: Any, progress: Any) -> tuple:
    """The checks and validation every multi-output fit starts with (linear or counts):
    ``X`` validated (its index and column names), ``Y`` as an (n, k) array with the
    responses' names, and the offset as n finite numbers (None when not given)."""
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable progress(done, total), got {progress!r}")
    if hasattr(X, "dask") or hasattr(Y, "dask"):
        raise TypeError("several responses are fitted in memory: pass numpy arrays or DataFrames")
    index = X.index if isinstance(X, pd.DataFrame) else None
    x_names_src = X
    Xv = validate_data(est, X, dtype=np.float64, accept_sparse=False, ensure_all_finite=False,
                       ensure_min_features=0)
    n = Xv.shape[0]
    x_names = column_names(x_names_src, "x", Xv.shape[1])
    check_finite(Xv, "X", x_names)
    Yv, names = _as_responses(Y, n)
    if n < 2:
        raise ValueError(f"n_samples={n}: a model needs at least 2 samples")
    if not est.fit_intercept and Xv.shape[1] == 0:
        raise ValueError("the model has no fixed effects: give X columns or fit_intercept=True")
    offset_values = None
    if offset is not None:
        offset_values = np.asarray(offset, dtype=float).reshape(-1)
        if offset_values.shape[0] != n or not np.all(np.isfinite(offset_values)):
            raise ValueError(f"offset must be {n} finite numbers")
    return index, Xv, x_names, Yv, names, offset_values


def fit_responses(est: Any, X: Any, Y: Any, groups: Any, Z: Any, sample_weight: Any,
                  residual_groups: Any, offset: Any,
                  progress: Callable[[int, int], None] | None = None) -> Any:
    """Fit ``est`` (a MixedLMRegressor) to every column of ``Y`` (see
    :meth:`~mixedlm_sklearn.MixedLMRegressor.fit`); stores the per-response attributes."""
    if residual_groups is not None:
        raise ValueError("residual_groups is not supported with several responses: fit each "
                         "response alone for a residual variance per stratum")
    index, Xv, x_names, Yv, names, offset_values = read_responses(est, X, Y, offset, progress)
    n = Xv.shape[0]
    if offset_values is not None:
        Yv = Yv - offset_values[:, None]
    weights = None if sample_weight is None else check_weights(sample_weight, n)
    Xv, Yv, weights, offset_values, index, groups, Z = without_zero_weights(
        weights, X=Xv, Y=Yv, sample_weight=weights, offset=offset_values, index=index,
        groups=groups, Z=Z)
    n = Xv.shape[0]
    terms_in = est._random_terms(groups, Z, n, instead="ordinary least squares per response")
    terms = Terms([Term(t.name, t.z_names, t.labels.size, t.diagonal) for t in terms_in])
    factors = tuple((t.codes, t.Z) for t in terms_in)
    X_full = np.column_stack([np.ones(n), Xv]) if est.fit_intercept else Xv
    fe_names = ([INTERCEPT] if est.fit_intercept else []) + list(x_names)

    def check(pat: PatternDesign) -> str | None:
        cp = pat.template
        try:
            check_counts(cp.n, {t.factor: t.n_levels for t in cp.terms}, sum(t.size for t in cp.terms))
            for term, d, counts in zip(cp.terms, cp.diag, cp.counts):
                check_random_design(d[0], counts, list(term.z_names))
            # no more rows than effects: can [X Z] reproduce any y? (as the single fit asks)
            if cp.n <= cp.p + sum(t.size for t in cp.terms):
                check_exact_fit(X_full[pat.rows], pat.factors, [t.n_levels for t in cp.terms])
        except ValueError as err:
            return str(err)
        return None

    def design_of(rows: np.ndarray, y: np.ndarray, sub_factors: tuple) -> Design:
        return Design(Xv[rows], est.fit_intercept, y, sub_factors,
                      None if weights is None else weights[rows], None, 1)

    if est.verbose and progress is None:
        def progress(done: int, total: int) -> None:
            print(f"[MixedLMRegressor] {done}/{total} responses")

    many = fit_many(X_full, Yv, factors, terms, weights=weights, reml=est.reml, solver=est.solver,
                    max_iter=est.max_iter, tol=est.tol, progress=progress, design_of=design_of,
                    check=check)
    est.n_features_in_ = Xv.shape[1]
    est.many_ = ManyResponses(many, names, fe_names, {t.name: t.labels for t in terms_in},
                              several_factors(groups, Z) if groups is not None else False, Xv, Yv,
                              factors, weights, offset_values,
                              index, est.fit_intercept)
    _store(est)
    warn_responses(est)
    return est


def _store(est: Any) -> None:
    """The per-response fitted attributes (scikit-learn's multi-output layout: a leading
    axis of responses)."""
    mr = est.many_
    f = mr.fit
    # the parameters: beta, theta and sigma
    store_fixed_part(est, mr, f, len(mr.fe_names) + f.terms.n_theta + 1)
    est.scale_ = f.scale
    est.residual_var_ = {"(all)": f.scale}
    store_random_part(est, mr, f, f.scale)


def store_fixed_part(est: Any, mr: Any, f: Any, n_params: int) -> None:
    """The per-response fixed effects, theta and likelihood criteria of a many-response fit
    ``f`` (linear or GLMM) with ``n_params`` parameters per response."""
    k = f.n_responses
    beta = f.beta
    est.responses_ = np.asarray(mr.responses, dtype=object)
    est.intercept_ = beta[:, 0].copy() if est.fit_intercept else np.zeros(k)
    est.coef_ = beta[:, 1:].copy() if est.fit_intercept else beta.copy()
    est.cov_fe_ = f.cov_beta
    est.fe_params_ = pd.DataFrame(beta, index=mr.responses, columns=mr.fe_names)
    se = np.sqrt(np.diagonal(f.cov_beta, axis1=1, axis2=2))
    est.bse_ = pd.DataFrame(se, index=mr.responses, columns=mr.fe_names)
    est.theta_ = f.theta.copy()
    est.llf_ = -0.5 * f.deviance
    est.df_model_ = n_params
    est.aic_ = f.deviance + 2.0 * n_params
    with np.errstate(divide="ignore"):
        est.bic_ = f.deviance + np.log(f.n_obs) * n_params


def store_random_part(est: Any, mr: Any, f: Any, scale: np.ndarray) -> None:
    """The per-response random-effects attributes and the fits' reports of a many-response
    fit ``f`` (linear or GLMM: ``scale`` is sigma^2 per response, or ones for a GLMM)."""
    k = f.theta.shape[0]
    cov_re = {}
    at = 0
    for term in f.terms:
        lam = np.zeros((k, term.q, term.q))
        rows, cols = term.theta_position
        lam[:, rows, cols] = f.theta[:, at:at + term.n_theta]
        at += term.n_theta
        cov_re[term.factor] = np.einsum("kab,kcb->kac", lam, lam) * scale[:, None, None]
    blups = {t.factor: b for t, b in zip(f.terms, f.blups)}
    if not len(f.terms):  # least squares: no groups, no random effects
        est.cov_re_ = np.zeros((k, 1, 1))
        est.random_effects_ = np.zeros((k, 0, 1))
        est.groups_ = np.array([], dtype=object)
        est.n_groups_ = 0
    elif mr.several:
        est.cov_re_ = cov_re
        est.random_effects_ = blups
        est.groups_ = dict(mr.labels)
        est.n_groups_ = {t.factor: t.n_levels for t in f.terms}
    else:
        name = f.terms[0].factor
        est.cov_re_ = cov_re[name]
        est.random_effects_ = blups[name]
        est.groups_ = mr.labels[name]
        est.n_groups_ = f.terms[0].n_levels
    est.converged_ = f.converged.copy()
    est.failed_ = f.failed.copy()
    est.singular_ = f.at_bound.any(axis=1) & ~f.failed
    est.n_iter_ = np.maximum(f.n_iter, 1)
    est.n_obs_ = f.n_obs.copy()
    est.fit_messages_ = pd.Series(f.messages, index=mr.responses, name="message")


def warn_responses(est: Any) -> None:
    """One warning per kind with the count of responses and the first of them."""
    names = est.responses_
    failed = np.flatnonzero(est.failed_)
    if failed.size:
        warnings.warn(f"{failed.size} of {names.size} responses could not be fitted (their "
                      f"estimates are NaN; fit_messages_ says why), e.g. {names[failed[0]]!r}: "
                      f"{est.fit_messages_.iloc[failed[0]]}", UserWarning, stacklevel=caller_stacklevel())
    bad = np.flatnonzero(~est.converged_ & ~est.failed_)
    if bad.size:
        warnings.warn(f"the optimiser did not converge for {bad.size} of {names.size} responses "
                      f"(converged_ is False; fit_messages_ says why), e.g. {names[bad[0]]!r}: "
                      f"{est.fit_messages_.iloc[bad[0]]}. Try covariates on comparable scales or a "
                      "simpler random-effects structure.", ConvergenceWarning,
                      stacklevel=caller_stacklevel())


def response_estimator(est: Any, response: Any) -> Any:
    """The single-response estimator of one response of a multi-output fit.

    Equal to fitting that column alone on its observed rows (the same optimum; nothing is
    refitted): every method of a single fit (summary, conf_int, anova, bootstrap, ...)
    works on it.
    """
    check_is_fitted(est, "many_")
    mr = est.many_
    j = _response_index(mr, response)
    f = mr.fit
    if f.failed[j]:
        raise ValueError(f"response {mr.responses[j]!r} has no fit: {f.messages[j]}")
    dev, sol = f.deviance_and_solution(j)
    pat = f.patterns[f.pattern[j]]
    rows = pat.rows
    labels = {t.factor: np.asarray(mr.labels[t.factor])[lev] for t, lev in zip(f.terms, pat.levels)}
    design = Design(mr.X[rows], mr.intercept, mr.Y[rows, j], pat.factors,
                    None if mr.weights is None else mr.weights[rows], None, 1,
                    None if mr.offset is None else mr.offset[rows],
                    None if mr.index is None else mr.index[rows])
    model = FittedModel(dev, sol, f.info(j), list(mr.fe_names), dev.terms, labels, None, design,
                        est.max_iter, est.tol, None)
    single = type(est)(**est.get_params())
    single.n_features_in_ = est.n_features_in_
    if hasattr(est, "feature_names_in_"):
        single.feature_names_in_ = est.feature_names_in_
    single._z_names_in = getattr(est, "_z_names_in", None)
    single.model_ = model
    single._set_fitted(mr.several, warn=False)
    return single


def _response_index(mr: ManyResponses, response: Any) -> int:
    if isinstance(response, (int, np.integer)) and not isinstance(response, bool):
        j = int(response)
        if not -len(mr.responses) <= j < len(mr.responses):
            raise IndexError(f"response {j} out of range for {len(mr.responses)} responses")
        return j % len(mr.responses)
    if str(response) in mr.responses:
        return mr.responses.index(str(response))
    raise KeyError(f"no response named {response!r}")


# ---- tables across responses ---------------------------------------------------------------


def p_adjust_bh(p: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (R's ``p.adjust(p, "BH")``).

    ``p_(i) * m / i`` over the sorted p-values, made monotone from the largest down and
    capped at 1 (Benjamini & Hochberg 1995); NaN entries are left out (and stay NaN), as R's
    ``p.adjust`` with its default ``n = length(p[!is.na(p)])``.

    Parameters
    ----------
    p : array-like of shape (m,)
        The p-values (NaN for a missing one).

    Returns
    -------
    ndarray of shape (m,)
        The adjusted p-values, in the order of ``p``.

    See Also
    --------
    fixed_effects_table : Adjusted p-values of the fixed effects across responses.

    Examples
    --------
    >>> from mixedlm_sklearn.inference.many import p_adjust_bh
    >>> p_adjust_bh([0.01, 0.04, 0.03, 0.2]).round(3)
    array([0.04 , 0.053, 0.053, 0.2  ])
    """
    p = np.asarray(p, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = np.argsort(p[ok])[::-1]
    ranks = np.arange(m, 0, -1)
    adjusted = np.minimum.accumulate(p[ok][order] * m / ranks)
    out[ok[order]] = np.minimum(adjusted, 1.0)
    return out


def _contrast_rows(est: Any, L: Any, names: list[str]) -> np.ndarray:
    L = np.atleast_2d(np.asarray(L, dtype=float))
    if L.shape[1] != len(names):
        raise ValueError(f"a contrast needs {len(names)} entries (one per fixed effect "
                         f"{names}), got {L.shape[1]}")
    return L


def _satterthwaite(est: Any, L: np.ndarray, j: int) -> np.ndarray:
    from .satterthwaite import satterthwaite_df

    return satterthwaite_df(response_estimator(est, j), L)


def _varpar_batched(f: ManyFit, pat: PatternDesign, cols: np.ndarray) -> tuple:
    """lmerTest's variance-parameter model (:mod:`.satterthwaite`) of the one-term fits
    ``cols`` (responses of pattern ``pat``), for all of them at once: the Hessian of the
    deviance in ``(theta, sigma)`` (sigma not profiled) and the Jacobian of Cov(beta), by
    the same central differences with one Richardson step and the same steps (1% of each
    parameter, at least 1e-3), every stencil point one batched evaluation.

    Returns Cov(beta) (K, p, p), its Jacobian (K, nv, p, p) and ``2 H^+`` (K, nv, nv).
    """
    where = np.searchsorted(pat.columns, cols)
    products = _subset(pat.products, where)
    theta, sigma = f.theta[cols], np.sqrt(f.scale[cols])
    dof = pat.template.n - (pat.template.p if f.reml else 0)
    x0 = np.column_stack([theta, sigma])
    K, nv = x0.shape
    nt = nv - 1
    h0 = 1e-2 * np.maximum(np.abs(x0), 0.1)
    h0[:, -1] = 1e-2 * sigma
    cache: dict[bytes, tuple] = {}

    def parts(v: np.ndarray) -> tuple:
        key = v[:, :nt].tobytes()
        if key not in cache:
            cache[key] = one_term_parts(pat.template, products, v[:, :nt], f.reml)
        return cache[key]

    def deviance(v: np.ndarray) -> np.ndarray:
        dev, r2, _ = parts(v)
        ratio = r2 / dof / v[:, -1] ** 2
        return dev + dof * (ratio - np.log(ratio) - 1.0)

    def cov_beta(v: np.ndarray) -> np.ndarray:
        return v[:, -1, None, None] ** 2 * parts(v)[2]

    f0 = deviance(x0)

    def hessian_at(h: np.ndarray) -> np.ndarray:
        H = np.empty((K, nv, nv))
        E = [np.where(np.arange(nv) == i, h, 0.0) for i in range(nv)]  # (K, nv) steps
        for i in range(nv):
            H[:, i, i] = (deviance(x0 + E[i]) - 2.0 * f0 + deviance(x0 - E[i])) / h[:, i] ** 2
            for j in range(i):
                H[:, i, j] = H[:, j, i] = (
                    deviance(x0 + E[i] + E[j]) - deviance(x0 + E[i] - E[j])
                    - deviance(x0 - E[i] + E[j]) + deviance(x0 - E[i] - E[j])) / (4.0 * h[:, i] * h[:, j])
        return H

    def jacobian_at(h: np.ndarray) -> np.ndarray:
        E = [np.where(np.arange(nv) == k, h, 0.0) for k in range(nv)]
        return np.stack([(cov_beta(x0 + E[k]) - cov_beta(x0 - E[k])) / (2.0 * h[:, k, None, None])
                         for k in range(nv)], axis=1)

    with np.errstate(all="ignore"):
        H = (4.0 * hessian_at(h0 / 2.0) - hessian_at(h0)) / 3.0
        J = (4.0 * jacobian_at(h0 / 2.0) - jacobian_at(h0)) / 3.0
    H = 0.5 * (H + np.swapaxes(H, 1, 2))
    H = np.where(np.all(np.isfinite(H), axis=(1, 2))[:, None, None], H, np.nan)
    w, U = np.linalg.eigh(np.nan_to_num(H))
    pos = w > 1e-8  # lmerTest's generalised inverse on the positive eigenvalues
    inv_w = np.where(pos, 1.0 / np.where(pos, w, 1.0), 0.0)
    V = 2.0 * np.einsum("kab,kb,kcb->kac", U, inv_w, U)
    V[~np.all(np.isfinite(H), axis=(1, 2))] = np.nan
    return f.cov_beta[cols], J, V


def _contrast_df(est: Any, L: np.ndarray) -> np.ndarray:
    """Satterthwaite df (k, r) of the rows of ``L`` for every response: batched for the
    one-term fits of the batched kernel, the single fit's computation for the others."""
    f = est.many_.fit
    df = np.full((f.n_responses, L.shape[0]), np.nan)
    done = np.zeros(f.n_responses, dtype=bool)
    if len(f.terms) == 1:
        for s, pat in enumerate(f.patterns):
            cols = pat.columns[f.batched[pat.columns] & ~f.failed[pat.columns]]
            if not cols.size:
                continue
            for at in range(0, cols.size, 2000):  # bounded memory
                part = cols[at:at + 2000]
                C, J, V = _varpar_batched(f, pat, part)
                var = np.einsum("ri,kij,rj->kr", L, C, L)
                grad = np.einsum("ri,kvij,rj->krv", L, J, L)
                denom = np.einsum("krv,kvw,krw->kr", grad, V, grad)
                with np.errstate(divide="ignore", invalid="ignore"):
                    df[part] = np.where(denom > 0, 2.0 * var ** 2 / np.where(denom > 0, denom, 1.0), np.inf)
                done[part] = True
    for j in np.flatnonzero(~done & ~f.failed):
        df[j] = _satterthwaite(est, L, int(j))
    return df


def _dispersion_fixed(est: Any) -> bool:
    """Whether the responses' family has a fixed dispersion (binomial, Poisson, negative
    binomial: the GLMMs of :mod:`.many_glmm`): Wald z tests and no residual variance, as
    :attr:`~.._model.FittedModel.scale_estimated` decides for one fit."""
    return not est.many_.family.scale_estimated


def _table_ddf(est: Any, ddf: str | None) -> str:
    """The df method of a table across responses: Satterthwaite's for linear fits by
    default, the normal reference (Wald z, as lme4's ``summary`` of a ``glmer`` fit) for
    GLMMs, which have no Satterthwaite df."""
    if ddf is None:
        return "normal" if _dispersion_fixed(est) else "satterthwaite"
    ddf = check_ddf(ddf, ("satterthwaite", "normal"))
    if ddf == "satterthwaite" and _dispersion_fixed(est):
        raise ValueError("Satterthwaite df are for linear mixed models; the GLMMs' tests are Wald "
                         "z tests (ddf='normal', the default for them), as lme4's summary of glmer")
    return ddf


def _wald_frame(est: Any, estimate: np.ndarray, se: np.ndarray, df: np.ndarray, ddf: str,
                index: Any) -> pd.DataFrame:
    """Estimate, SE, (df,) t or z, p and BH-adjusted p of one quantity across responses."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = estimate / se
        p = 2.0 * (stats.t.sf(np.abs(t), df) if ddf == "satterthwaite" else stats.norm.sf(np.abs(t)))
    if _dispersion_fixed(est):
        return pd.DataFrame({"estimate": estimate, "std_error": se, "z": t, "p": p,
                             "p_bh": p_adjust_bh(p)}, index=index)
    return pd.DataFrame({"estimate": estimate, "std_error": se, "df": df, "t": t, "p": p,
                         "p_bh": p_adjust_bh(p)}, index=index)


def contrast_table(est: Any, L: Any, ddf: str | None = None) -> pd.DataFrame:
    """A linear contrast of the fixed effects for every response (``dream``'s contrasts).

    Parameters
    ----------
    est : MixedLMRegressor or MixedGLMRegressor
        Fitted to several responses.
    L : array-like of shape (p,) or dict
        The contrast's weights on ``fe_params_``'s columns (a dict: name -> weight, the
        others 0).
    ddf : {"satterthwaite", "normal"}, optional
        Degrees of freedom of the t test: lmerTest's Satterthwaite approximation (the
        default for linear models; its Hessian costs tens of deviance evaluations per
        response; for the responses of a one-term model fitted together they are
        evaluated together), or a normal reference (z test, no df; the default and the
        only choice for GLMMs, as lme4's ``summary`` of a ``glmer`` fit).

    Returns
    -------
    DataFrame
        Indexed by response: ``estimate``, ``std_error``, ``df``, ``t``, ``p``, ``p_bh``
        (Benjamini-Hochberg over the responses); for GLMMs ``estimate``, ``std_error``,
        ``z``, ``p``, ``p_bh``. Failed responses are NaN rows.

    Raises
    ------
    ValueError
        For a contrast of the wrong length or naming no fixed effect, or an unknown ``ddf``.

    See Also
    --------
    fixed_effects_table : Every fixed effect across responses.
    mixedlm_sklearn.inference.wald_test : Tests of one response's fit.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.inference.many import contrast_table
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(10), 6)
    >>> X = rng.standard_normal((60, 2))
    >>> Y = X @ [[1.0, 0.0], [0.0, 1.0]] + rng.standard_normal((10, 2))[g] + rng.standard_normal((60, 2))
    >>> est = MixedLMRegressor().fit(X, Y, groups=g)
    >>> contrast_table(est, {"x0": 1.0, "x1": -1.0}).columns.tolist()
    ['estimate', 'std_error', 'df', 't', 'p', 'p_bh']
    """
    check_is_fitted(est, "many_")
    mr = est.many_
    names = list(mr.fe_names)
    if isinstance(L, dict):
        unknown = [key for key in L if key not in names]
        if unknown:
            raise ValueError(f"the contrast names {unknown}, which are not fixed effects {names}")
        L = [float(L.get(name, 0.0)) for name in names]
    row = _contrast_rows(est, L, names)
    if row.shape[0] != 1:
        raise ValueError("contrast_table takes one contrast (a vector); call it once per contrast")
    ddf = _table_ddf(est, ddf)
    f = mr.fit
    l = row[0]
    estimate = f.beta @ l
    se = np.sqrt(np.einsum("i,kij,j->k", l, f.cov_beta, l))
    df = np.full(f.n_responses, np.nan)
    if ddf == "satterthwaite":
        df = _contrast_df(est, row)[:, 0]
        df[f.failed] = np.nan
    return _wald_frame(est, estimate, se, df, ddf, pd.Index(mr.responses, name="response"))


def fixed_effects_table(est: Any, term: str | None = None, ddf: str | None = None) -> pd.DataFrame:
    """Per fixed effect and response: estimate, SE, df, t, p and the BH-adjusted p.

    lmerTest's ``summary(fit)$coefficients`` of every response, with ``p_bh`` the
    Benjamini-Hochberg adjustment over the responses of each fixed effect (R's
    ``p.adjust(p, "BH")``; variancePartition's ``topTable`` of a ``dream`` fit). For
    GLMMs (a multi-output :class:`~mixedlm_sklearn.MixedGLMRegressor`) lme4's ``summary``
    of each ``glmer`` fit: Wald z tests.

    Parameters
    ----------
    est : MixedLMRegressor or MixedGLMRegressor
        Fitted to several responses.
    term : str, optional
        One fixed effect (e.g. ``"x"``); default all of them.
    ddf : {"satterthwaite", "normal"}, optional
        As :func:`contrast_table` (default Satterthwaite for linear models, the normal
        reference for GLMMs).

    Returns
    -------
    DataFrame
        Rows ``(term, response)``; columns ``estimate``, ``std_error``, ``df``, ``t``, ``p``,
        ``p_bh`` (for GLMMs ``estimate``, ``std_error``, ``z``, ``p``, ``p_bh``).

    Raises
    ------
    ValueError
        For a ``term`` that is not a fixed effect, or an unknown ``ddf``.

    See Also
    --------
    contrast_table : A combination of fixed effects across responses.
    variance_fractions : The variance components across responses.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.inference.many import fixed_effects_table
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(10), 6)
    >>> x = rng.standard_normal((60, 1))
    >>> Y = x * [0.0, 1.0, 2.0] + rng.standard_normal((10, 3))[g] + rng.standard_normal((60, 3))
    >>> est = MixedLMRegressor().fit(x, Y, groups=g)
    >>> table = fixed_effects_table(est, term="x0")
    >>> table.shape
    (3, 6)
    >>> bool(table["p_bh"].iloc[2] < 0.001)
    True
    """
    check_is_fitted(est, "many_")
    names = list(est.many_.fe_names)
    if term is not None and term not in names:
        raise ValueError(f"term {term!r} is not a fixed effect of the fit {names}")
    chosen = names if term is None else [term]
    ddf = _table_ddf(est, ddf)
    f = est.many_.fit
    L = np.eye(len(names))[[names.index(c) for c in chosen]]
    df = np.full((f.n_responses, len(chosen)), np.nan)
    if ddf == "satterthwaite":
        df = _contrast_df(est, L)
    parts = []
    for i, name in enumerate(chosen):
        c = names.index(name)
        index = pd.MultiIndex.from_product([[name], est.many_.responses], names=["term", "response"])
        parts.append(_wald_frame(est, f.beta[:, c], np.sqrt(f.cov_beta[:, c, c]), df[:, i], ddf,
                                 index))
    return pd.concat(parts)


def variance_fractions(est: Any) -> pd.DataFrame:
    """Give the variance fractions per response, as variancePartition reports them.

    The share of variance of each random-effects column, covariate and the residual
    (variancePartition's ``fitExtractVarPartModel``), as its ``calcVarPart`` computes them
    for an ``lmerMod`` (Hoffman & Schadt 2016, BMC Bioinformatics 17:483; the definition
    in its ``getVarianceComponents``):

    * per random-effects term, terms sorted by grouping factor, the variance of each of its
      columns: the diagonal of the term's covariance (lme4's ``attr(VarCorr(fit)[[g]],
      "stddev")^2``), named by the factor for the intercept and ``factor.column`` for a
      random slope (``donor.x``). The covariances between the columns do not enter, and a
      slope's variance is per unit of its covariate, as variancePartition reports it;
    * per non-intercept fixed-effect column the population variance of ``X_j beta_j`` over
      the response's rows, rescaled so that they sum to the variance of the whole fixed
      part ``X beta``;
    * ``Residuals``: the residual variance; for a GLMM the variance of the family's
      distribution on the link scale (Nakagawa, Johnson & Schielzeth 2017, J. R. Soc.
      Interface 14: 20170213, as ``calcVarPart`` of a ``glmerMod``): Poisson
      ``log(1 + 1/exp(b0))``, negative binomial ``log(1 + 1/exp(b0) + 1/theta)``, ``b0`` the
      intercept.

    Fractions are each over their sum. Fit by ML for variancePartition's numbers
    (``reml=False``, its default).

    Parameters
    ----------
    est : MixedLMRegressor or MixedGLMRegressor
        Fitted to several responses.

    Returns
    -------
    DataFrame
        Indexed by response; a column per random-effects column (sorted by factor name, as
        variancePartition), per non-intercept fixed effect, and ``Residuals``; rows sum to 1
        (NaN rows for failed responses).

    Raises
    ------
    ValueError
        For a GLMM without an intercept (its distribution variance is taken at the
        intercept).

    See Also
    --------
    fixed_effects_table : Tests of the fixed effects across responses.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.inference.many import variance_fractions
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(10), 6)
    >>> Y = rng.standard_normal((10, 2))[g] * [0.5, 2.0] + rng.standard_normal((60, 2))
    >>> est = MixedLMRegressor(reml=False).fit(np.zeros((60, 0)), Y, groups=g)
    >>> fractions = variance_fractions(est)
    >>> fractions.columns.tolist(), bool(np.allclose(fractions.sum(axis=1), 1.0))
    (['group', 'Residuals'], True)

    With a random slope, its variance is a component of its own:

    >>> x = rng.standard_normal(60)
    >>> b = rng.standard_normal((10, 2))
    >>> Y = b[g, :1] + (1 + b[g, 1:]) * x[:, None] + rng.standard_normal((60, 2))
    >>> est = MixedLMRegressor(reml=False).fit(x[:, None], Y, groups=g,
    ...                                        Z=np.column_stack([np.ones(60), x]))
    >>> variance_fractions(est).columns.tolist()
    ['group', 'group.z1', 'x0', 'Residuals']
    """
    check_is_fitted(est, "many_")
    mr = est.many_
    f = mr.fit
    k = f.n_responses
    fixed_dispersion = _dispersion_fixed(est)
    if fixed_dispersion and not mr.intercept:
        raise ValueError("variance fractions of a GLMM take the distribution's variance at the "
                         "intercept (variancePartition's calcVarPart): fit with an intercept")
    columns: dict[str, np.ndarray] = {}
    starts = np.cumsum([0] + [t.n_theta for t in f.terms])
    for t in sorted(range(len(f.terms)), key=lambda i: f.terms[i].factor):
        term = f.terms[t]
        rows, cols = term.theta_position
        lam = np.zeros((k, term.q, term.q))
        lam[:, rows, cols] = f.theta[:, starts[t]:starts[t + 1]]
        variances = f.scale[:, None] * (lam ** 2).sum(axis=2)  # diag(scale Lambda Lambda')
        z = mr.factors[t][1]
        for a, column in enumerate(term.z_names):
            intercept = column == INTERCEPT or bool(np.all(z[:, a] == 1.0))
            columns[term.factor if intercept else f"{term.factor}.{column}"] = variances[:, a]
    names = list(mr.fe_names)
    slopes = [i for i, name in enumerate(names) if name != INTERCEPT]
    if slopes:
        X_full = np.column_stack([np.ones(mr.X.shape[0]), mr.X]) if mr.intercept else mr.X
        parts = np.full((k, len(slopes)), np.nan)
        total = np.full(k, np.nan)
        for s, pat in enumerate(f.patterns):
            cols = pat.columns[~f.failed[pat.columns]]
            if not cols.size:
                continue
            Xp = X_full[pat.rows]
            B = f.beta[cols]  # (c, p)
            each = np.stack([np.var(Xp[:, i][:, None] * B[:, i][None], axis=0) for i in slopes], axis=1)
            fixed = Xp[:, slopes] @ B[:, slopes].T  # (rows, c)
            parts[cols] = each
            total[cols] = np.var(fixed, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            parts = parts * (total / parts.sum(axis=1))[:, None]
        for i, c in enumerate(slopes):
            columns[names[c]] = parts[:, i]
    if fixed_dispersion:  # the distribution's variance on the log link's scale
        inverse_mean = np.exp(-f.beta[:, 0])  # 1 / exp(b0)
        if mr.family.name == "negative_binomial":
            inverse_mean = inverse_mean + 1.0 / f.family_values["theta"]
        columns["Residuals"] = np.log1p(inverse_mean)
    else:
        columns["Residuals"] = f.scale.copy()
    table = pd.DataFrame(columns, index=pd.Index(mr.responses, name="response"))
    return table.div(table.sum(axis=1), axis=0)
