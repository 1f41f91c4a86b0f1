"""Likelihood-ratio tests between nested fits of the same data."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, stats

from .._model import FittedModel
from .._table import ResultTable, format_real
from .._validation import caller_stacklevel
from ._parameters import fitted_model, log_likelihood, n_parameters

__all__ = ["LRTestResult", "lr_test", "compare_models", "check_same_data", "check_nested",
           "check_comparable"]

# Relative residual below which a column counts as lying in the span of others.
_SPAN_TOL = 1e-8


@dataclass(frozen=True)
class LRTestResult:  # numpydoc ignore=PR01
    """Likelihood-ratio test of a restricted model against a fuller one.

    Attributes
    ----------
    statistic : float
        ``2 (llf_full - llf_restricted)``.
    df : int
        Difference in the number of parameters (``df_model_``).
    pvalue : float
        Chi-square p-value, or with ``boundary=True`` the p-value of the 50:50 mixture of
        chi-square distributions with ``df - 1`` and ``df`` degrees of freedom.
    llf_restricted : float
        Log-likelihood of the restricted model.
    llf_full : float
        Log-likelihood of the full model.
    boundary : bool
        Whether ``pvalue`` is the boundary-corrected one.

    See Also
    --------
    mixedlm_sklearn.lr_test : Make one.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer, lr_test
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> small = lmer("Reaction ~ Days + (1 | Subject)", df, reml=False)
    >>> big = lmer("Reaction ~ Days + (Days | Subject)", df, reml=False)
    >>> result = lr_test(small, big, boundary=True)
    >>> result.df, result.boundary, bool(result.pvalue < 1e-8)
    (2, True, True)
    >>> print(result)
    Likelihood ratio test
    logLik: restricted -897.04, full -875.97
         stat df   p.value
    LRT 42.139  2 3.961e-10 ***
    ---
    Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1
    p-value: 50:50 mixture of chi-square(1) and chi-square(2) (a variance on its boundary)
    """

    statistic: float
    df: int
    pvalue: float
    llf_restricted: float
    llf_full: float
    boundary: bool = False

    @property
    def table(self) -> ResultTable:
        """Tabulate the test as pbkrtest's one-row ``LRT`` table.

        Columns ``stat``, ``df``, ``p.value``; it prints with a heading, the
        log-likelihoods and, for the boundary test, how the p-value was found.

        Returns
        -------
        ResultTable
            Index ``["LRT"]``.

        See Also
        --------
        mixedlm_sklearn.lr_test : The test.

        Examples
        --------
        >>> from mixedlm_sklearn.inference.lrt import LRTestResult
        >>> LRTestResult(4.0, 1, 0.0455, -10.0, -8.0).table["p.value"].tolist()
        [0.0455]
        """
        notes = []
        if self.boundary:
            notes.append(f"p-value: 50:50 mixture of chi-square({self.df - 1}) and "
                         f"chi-square({self.df}) (a variance on its boundary)")
        restricted, full = format_real([self.llf_restricted, self.llf_full], 5)
        return ResultTable({"stat": [self.statistic], "df": [self.df], "p.value": [self.pvalue]},
                           index=["LRT"], title=f"Likelihood ratio test\nlogLik: restricted "
                                                f"{restricted}, full {full}",
                           notes=notes, formats={"stat": "stat", "df": "int", "p.value": "p"},
                           stars="p.value")

    def __str__(self) -> str:
        return self.table.text()

    def _repr_html_(self) -> str:
        return self.table._repr_html_()


def _statistics(model: FittedModel) -> tuple[np.ndarray, float]:
    """``[X y]'W[X y]`` with the prior weights only, and ``sum log w`` (of the rows as given:
    with correlated residuals the deviance's cross-products are those of whitened rows)."""
    if model.correlation is not None:
        return model.correlation.rows_statistics()
    comb = model.cross_products.combined()
    return comb.xyxy[0], float(comb.sum_log_weights[0])


def check_same_data(a: FittedModel, b: FittedModel) -> None:
    """Raise unless two fits saw the same rows (same response in the same order).

    With the rows of both fits at hand (in-memory fits) ``y`` and the weights are compared
    row by row; otherwise (chunks, Dask) ``y'y``, ``sum y`` and ``sum log w``. Grouping
    factors of the same name must have the same levels.
    """
    problems = []
    if a.n_obs != b.n_obs:
        problems.append(f"{a.n_obs} vs {b.n_obs} observations")
    elif a.design is not None and b.design is not None:
        if not np.array_equal(a.design.y, b.design.y):
            problems.append("different responses (y differs row by row: other data, or the rows "
                            "in another order)")
        wa, wb = a.design.weights, b.design.weights
        if (wa is None) != (wb is None) or (wa is not None and not np.array_equal(wa, wb)):
            problems.append("different sample weights")
    else:
        xa, la = _statistics(a)
        xb, lb = _statistics(b)
        if not np.isclose(xa[-1, -1], xb[-1, -1], rtol=1e-10, atol=0.0):
            problems.append("different responses (sum of y^2 differs)")
        # sum(y) is visible when both designs have the intercept column.
        if a.fe_names[:1] == ["(Intercept)"] == b.fe_names[:1] and not np.isclose(
                xa[0, -1], xb[0, -1], rtol=1e-10, atol=1e-12 * np.sqrt(xa[-1, -1])):
            problems.append("different responses (sum of y differs)")
        if not np.isclose(la, lb, rtol=1e-10, atol=1e-10):
            problems.append("different sample weights")
    if not problems:
        for name in [f for f in a.labels if f in b.labels]:
            if not np.array_equal(np.asarray(a.labels[name], dtype=object),
                                  np.asarray(b.labels[name], dtype=object)):
                problems.append(f"different levels of the grouping factor {name!r}")
    if problems:
        raise ValueError("the two fits used different data: " + "; ".join(problems)
                         + ". A likelihood-ratio test needs both models fitted to the same rows.")


def _in_span(columns: np.ndarray, basis: np.ndarray) -> bool:
    """Whether every column of ``columns`` lies in the column space of ``basis``."""
    if columns.shape[1] == 0:
        return True
    if basis.shape[1] == 0:
        return not np.any(columns)
    coef = linalg.lstsq(basis, columns)[0]
    resid = columns - basis @ coef
    return bool(np.all(np.linalg.norm(resid, axis=0) <= _SPAN_TOL * np.maximum(np.linalg.norm(columns, axis=0), 1e-300)))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two level codings of the rows group them identically."""
    pairs = np.unique(np.column_stack([a, b]), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def _coarser(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every class of the coding ``a`` is a union of classes of ``b``."""
    pairs = np.unique(np.column_stack([a, b]), axis=0)
    return len(np.unique(pairs[:, 1])) == len(pairs)


def check_nested(small: FittedModel, big: FittedModel) -> list[str]:
    """Why ``small`` is not nested in ``big`` (an empty list when it is).

    With the rows of both fits: the fixed-effects columns of ``small`` must lie in the
    column space of ``big``'s; each random-effects term of ``small`` must have a term of
    ``big`` that groups the rows the same way and whose ``Z`` columns span its own (an
    unstructured covariance is not within a diagonal one); ``small``'s residual strata must
    be unions of ``big``'s. Without the rows (chunks, Dask) what the names allow: fixed
    effects and terms by name.
    """
    problems = []
    ds, db = small.design, big.design
    if ds is not None and db is not None:
        if not _in_span(ds.X_full, db.X_full):
            problems.append("the fixed effects of the restricted model are not within the full "
                            "model's (its X columns are not in the span of the full X)")
        for ts, (cs, zs) in zip(small.terms, ds.factors):
            ok = False
            for tb, (cb, zb) in zip(big.terms, db.factors):
                if not _same_partition(cs, cb) or not _in_span(zs, zb):
                    continue
                if tb.diagonal and not ts.diagonal and ts.q > 1:
                    continue
                ok = True
                break
            if not ok:
                problems.append(f"the random-effects term {ts.factor!r} "
                                f"({' + '.join(ts.z_names)}) of the restricted model has no "
                                "counterpart in the full model")
        strata_s = ds.strata if ds.strata is not None else np.zeros(len(ds.y), dtype=int)
        strata_b = db.strata if db.strata is not None else np.zeros(len(db.y), dtype=int)
        if not _coarser(strata_s, strata_b):
            problems.append("the residual strata of the restricted model are not unions of the "
                            "full model's")
        return problems
    missing = [n for n in small.fe_names if n not in big.fe_names]
    if missing:
        problems.append(f"fixed effects {missing} of the restricted model are not in the full model")
    for ts in small.terms:
        tb = next((t for t in big.terms if t.factor == ts.factor), None)
        if tb is None or not set(ts.z_names) <= set(tb.z_names):
            problems.append(f"the random-effects term {ts.factor!r} of the restricted model has no "
                            "counterpart in the full model")
    return problems


def _same_fixed_effects(a: FittedModel, b: FittedModel) -> bool:
    if a.design is not None and b.design is not None:
        return _in_span(a.design.X_full, b.design.X_full) and _in_span(b.design.X_full, a.design.X_full)
    xa, xb = _statistics(a)[0], _statistics(b)[0]
    return xa.shape == xb.shape and np.allclose(xa[:-1], xb[:-1], rtol=1e-10, atol=0.0)


def check_comparable(a: FittedModel, b: FittedModel, roles: tuple[str, str] = ("restricted", "full")
                     ) -> None:
    """Refuse two fits whose likelihoods are not comparable: a linear model against a GLMM
    (TypeError), other families or links, other approximations of the likelihood (AGQ
    nodes), other offsets (the same rows are :func:`check_same_data`'s)."""
    if a.family.scale_estimated != b.family.scale_estimated:
        raise TypeError("the test compares two linear mixed models or two GLMMs; got one of each "
                        "(their likelihoods are not comparable)")
    if a.family != b.family:
        raise ValueError(f"the fits have different families or links ({a.family.name}/"
                         f"{a.family.link.name} and {b.family.name}/{b.family.link.name}): their "
                         "likelihoods are not comparable")
    if a.n_agq != b.n_agq:
        raise ValueError(f"the fits use different approximations (n_agq {a.n_agq} and {b.n_agq}); "
                         "refit with the same n_agq")
    if a.design is not None and b.design is not None:
        oa, ob = a.design.offset, b.design.offset
        if (oa is None) != (ob is None) or (oa is not None and not np.array_equal(oa, ob)):
            check_same_data(a, b)  # other data is the clearer message
            raise ValueError(f"the fits used different offsets ({roles[0]} and {roles[1]}); a "
                             "likelihood-ratio test compares models with the same known part of "
                             "the linear predictor")


def lr_test(restricted: Any, full: Any, *, boundary: bool = False) -> LRTestResult:
    """Likelihood-ratio test of ``restricted`` against ``full`` (nested fits, same data).

    Parameters
    ----------
    restricted : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        The smaller model, fitted to the same rows as ``full``.
    full : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        The larger model (of the same kind).
    boundary : bool, default=False
        For a test of a variance component (the restricted model puts a variance on its
        boundary 0), use the 50:50 mixture of chi-square distributions with ``df - 1`` and
        ``df`` degrees of freedom (Self & Liang 1987; Stram & Lee 1994); with ``df = 1``
        this halves the chi-square p-value. The plain chi-square test is conservative there.

    Returns
    -------
    LRTestResult
        The statistic, its degrees of freedom and p-value.

    Raises
    ------
    ValueError
        If the fits used different data (other rows, or the same rows in another order);
        if ``restricted`` is not nested in ``full``; if ``full`` has no more parameters than
        ``restricted``; if one fit is REML and the other ML; or if REML fits differ in
        their fixed effects (REML likelihoods of different fixed effects are not comparable:
        refit both with ``reml=False``).

    See Also
    --------
    mixedlm_sklearn.anova : The table of several nested fits.
    mixedlm_sklearn.pb_test : The same test with a simulated reference distribution.

    Notes
    -----
    The fits may differ in their grouping factors (a single-factor fit against one with
    several, or crossed against nested) and in their residual variances (one against one
    per stratum, ``df`` counting the variance ratios). Nesting and the same data are
    checked on the rows of both fits; fits from chunks or Dask keep
    only cross-products, and are compared by ``y'y``, ``sum(y)``, the weights and names.

    References
    ----------
    .. [1] Self, S. G. and Liang, K.-Y. (1987). Asymptotic properties of maximum
       likelihood estimators and likelihood ratio tests under nonstandard conditions.
       Journal of the American Statistical Association 82, 605-610.
    .. [2] Stram, D. O. and Lee, J. W. (1994). Variance components testing in the
       longitudinal mixed effects model. Biometrics 50, 1171-1177.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> slopes = MixedLMRegressor(reml=False).fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> intercept = MixedLMRegressor(reml=False).fit(df[["Days"]], df["Reaction"], groups=df["Subject"])
    >>> from mixedlm_sklearn import lr_test
    >>> test = lr_test(intercept, slopes)
    >>> round(test.statistic, 3), test.df
    (42.139, 2)
    """
    small = fitted_model(restricted, "restricted")
    big = fitted_model(full, "full")
    check_comparable(small, big)
    check_same_data(small, big)
    if small.reml != big.reml:
        raise ValueError("one fit is REML and the other ML; their likelihoods are not "
                         "comparable. Refit both with reml=False.")
    if small.reml and not _same_fixed_effects(small, big):
        raise ValueError("REML likelihoods of models with different fixed effects are not "
                         "comparable (REML integrates the fixed effects out). Refit both "
                         "models with reml=False (maximum likelihood) to test fixed effects.")
    df = int(full.df_model_ - restricted.df_model_)
    if df <= 0:
        raise ValueError(f"full has {full.df_model_} parameters and restricted "
                         f"{restricted.df_model_}: pass the smaller (nested) model first")
    problems = check_nested(small, big)
    if problems:
        raise ValueError("the restricted model is not nested in the full one: " + "; ".join(problems)
                         + ". A likelihood-ratio test compares nested models only.")
    statistic = 2.0 * (full.llf_ - restricted.llf_)
    if statistic < -1e-6 * max(1.0, abs(full.llf_)):
        warnings.warn(f"the restricted model fits better than the full one (statistic "
                      f"{statistic:.3g}): the models may not be nested, or a fit did not converge",
                      UserWarning, stacklevel=2)
    s = max(statistic, 0.0)
    p = float(stats.chi2.sf(s, df))
    if boundary:
        # chi2 with 0 df is a point mass at 0: its tail beyond s > 0 is 0.
        below = float(stats.chi2.sf(s, df - 1)) if df > 1 else float(s <= 0.0)
        p = 0.5 * (below + p)
    return LRTestResult(float(statistic), df, p, float(restricted.llf_), float(full.llf_), boundary)


def compare_models(models: Any, names: Any = None, refit: bool = True) -> pd.DataFrame:
    """Likelihood-ratio tests of a sequence of nested fits (lme4's ``anova(m0, m1, ...)``).

    Parameters
    ----------
    models : sequence of fitted MixedLMRegressor
        Two or more fits of the same rows, each nested in the next once ordered by their
        number of parameters.
    names : sequence of str, optional
        Row names (default ``model1``, ``model2``, ... in the order given).
    refit : bool, default=True
        As lme4: if any fit is REML, every fit is refitted by maximum likelihood first,
        with a warning saying so (REML likelihoods of different fixed effects are not
        comparable; the estimators are not changed). With False, REML fits are compared
        by their REML criterion, which requires the same fixed effects in all of them.

    Returns
    -------
    DataFrame
        A row per model in order of complexity (parameters, then the order given); columns
        ``npar``, ``AIC``, ``BIC``, ``logLik``, ``deviance`` (``-2 logLik``), ``Chisq``
        (twice the log-likelihood gain over the previous row, 0 if negative), ``Df``,
        ``Pr(>Chisq)`` (NaN in the first row).

    Raises
    ------
    ValueError
        Fewer than two fits; fits of different data; a fit not
        nested in the next one; with ``refit=False``, REML and ML
        fits mixed or REML fits of different fixed effects.

    Warns
    -----
    UserWarning
        "refitting model(s) with ML (instead of REML)", lme4's message, when it does.

    See Also
    --------
    mixedlm_sklearn.anova : The same table, from the fits as arguments.
    mixedlm_sklearn.lr_test : One pair of fits.

    Examples
    --------
    >>> import warnings
    >>> from mixedlm_sklearn import anova, lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> m0 = lmer("Reaction ~ 1 + (Days | Subject)", df)
    >>> m1 = lmer("Reaction ~ Days + (Days | Subject)", df)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # lme4's "refitting model(s) with ML"
    ...     table = anova(m0, m1, names=["m0", "m1"])
    >>> print(table)
    Models:
    m0: Reaction ~ 1 + (Days | Subject)
    m1: Reaction ~ Days + (Days | Subject)
       npar    AIC    BIC  logLik deviance  Chisq Df Pr(>Chisq)
    m0    5 1785.5 1801.4 -887.74   1775.5
    m1    6 1763.9 1783.1 -875.97   1751.9 23.537  1  1.226e-06 ***
    ---
    Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError("compare at least two models")
    fits = [fitted_model(m, f"model {i + 1}") for i, m in enumerate(models)]
    names = [f"model{i + 1}" for i in range(len(fits))] if names is None else [str(n) for n in names]
    if len(names) != len(fits) or len(set(names)) != len(names):
        raise ValueError(f"names must be {len(fits)} distinct names, one per model, got {names}")
    for i in range(1, len(fits)):
        check_same_data(fits[0], fits[i])
    if refit and any(f.reml for f in fits):
        warnings.warn("refitting model(s) with ML (instead of REML)", UserWarning,
                      stacklevel=caller_stacklevel())
        fits = [f.refit(reml=False) if f.reml else f for f in fits]
    elif len({f.reml for f in fits}) > 1:
        raise ValueError("some fits are REML and others ML; their likelihoods are not comparable "
                         "(refit=True refits the REML ones by ML)")
    elif fits[0].reml and not all(_same_fixed_effects(fits[0], f) for f in fits[1:]):
        raise ValueError("REML likelihoods of models with different fixed effects are not "
                         "comparable (REML integrates the fixed effects out): use refit=True")
    npar = np.array([n_parameters(f) for f in fits])
    order = np.argsort(npar, kind="stable")
    for a, b in zip(order[:-1], order[1:]):
        problems = check_nested(fits[a], fits[b])
        if problems:
            raise ValueError(f"{names[a]} is not nested in {names[b]}: " + "; ".join(problems)
                             + ". Models compared by likelihood-ratio tests must be nested.")
    llf = np.array([log_likelihood(fits[i]) for i in order])
    k = npar[order].astype(float)
    n_obs = fits[0].n_obs
    chisq = np.r_[np.nan, 2.0 * np.maximum(0.0, np.diff(llf))]
    df = np.r_[np.nan, np.diff(k)]
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, stats.chi2.sf(chisq, np.where(df > 0, df, 1.0)), np.nan)
    return pd.DataFrame({
        "npar": npar[order],
        "AIC": -2.0 * llf + 2.0 * k,
        "BIC": -2.0 * llf + np.log(n_obs) * k,
        "logLik": llf,
        "deviance": -2.0 * llf,
        "Chisq": chisq,
        "Df": df,
        "Pr(>Chisq)": np.r_[np.nan, p[1:]],
    }, index=pd.Index([names[i] for i in order], dtype=object))
