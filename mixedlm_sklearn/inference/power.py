"""Simulation-based power of tests of fixed effects (simr's ``powerSim`` and ``powerCurve``).

Green & MacLeod (2016, Methods Ecol. Evol. 7(4)): take a fitted model, change what the
analysis is about (the size of a fixed effect, the variances, the number of groups),
draw responses from it, refit the model to each and test; the power is the fraction of
significant tests, with its binomial (Clopper-Pearson) interval. The number of groups of
a factor changes as simr's ``extend``/``powerCurve`` do: fewer groups keep the rows of the
first ones (in label order), more groups repeat the rows of the existing ones under new
levels (other factors keep their levels, so a crossed design stays crossed).

Responses are drawn and refitted by :mod:`.simulation` (shared cross-products, a start at
the generating parameters, per-replicate generators: ``n_jobs`` does not change the result).
"""

from __future__ import annotations

import dataclasses
import html
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, stats
from sklearn.exceptions import ConvergenceWarning

from .._model import FittedModel
from .._table import format_real
from .._terms import Terms
from .._validation import caller_stacklevel
from ._parameters import check_alpha, fitted_model
from ._protocol import require
from .satterthwaite import varpar_model
from .simulation import (
    rows_refitters,
    FAILED,
    NOT_CONVERGED,
    OK,
    Parameters,
    RefitCounts,
    Refitter,
    Rows,
    Sampler,
    check_count,
    model_rows,
    replicate_generators,
    run_replicates,
)
from .wald import combined_ddf

__all__ = ["PowerResult", "power", "power_curve", "POWER_TESTS"]

POWER_TESTS = ("satterthwaite", "wald", "lr")


@dataclass(frozen=True)
class PowerResult(RefitCounts):  # numpydoc ignore=PR01
    """Simulated power of a test of fixed effects.

    Attributes
    ----------
    power : float
        Fraction of the replicates (whose refits did not fail) with ``p < alpha``.
    lower : float
        Lower bound of the 95% Clopper-Pearson interval of the power (simr's
        ``binom.test`` interval).
    upper : float
        Its upper bound.
    n_significant : int
        Number of replicates with ``p < alpha``.
    pvalues : ndarray of shape (n_sim,)
        Per replicate (NaN where a refit failed).
    converged : ndarray of bool
        Per replicate: whether the refits converged.
    failed : ndarray of bool
        Per replicate: whether a refit failed.
    term : list of str
        The fixed effects tested (jointly when several).
    test : str
        The test used.
    alpha : float
        Its significance level.
    effect : dict
        The fixed effects the responses were drawn with.
    n_groups : dict
        Levels of each grouping factor in the simulated design.

    See Also
    --------
    mixedlm_sklearn.power : Make one.
    mixedlm_sklearn.power_curve : Power against the number of groups.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> from mixedlm_sklearn import power
    >>> result = power(fit, "Days", effect=3.0, test="wald", n_sim=20, random_state=0)
    >>> result.n_sim, result.term, 0.0 <= result.power <= 1.0
    (20, ['Days'], True)
    >>> print(result)  # doctest: +ELLIPSIS
    Power for predictor 'Days', (95% confidence interval):
          ...% (..., ...)
    <BLANKLINE>
    Test: Wald z or chi-square test
          Effect size for Days is 3
    <BLANKLINE>
    Based on 20 simulations, (0 failed, 0 not converged)
    alpha = 0.05, groups: Subject 18
    """

    power: float
    lower: float
    upper: float
    n_significant: int
    pvalues: np.ndarray
    converged: np.ndarray
    failed: np.ndarray
    term: list
    test: str
    alpha: float
    effect: dict
    n_groups: dict
    messages: dict = field(default_factory=dict)

    @property
    def n_sim(self) -> int:
        """Number of simulated data sets.

        See Also
        --------
        mixedlm_sklearn.power : Make the result.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> from mixedlm_sklearn import power
        >>> power(fit, "Days", effect=3.0, test="wald", n_sim=20, random_state=0).n_sim
        20
        """
        return int(self.pvalues.size)

    def __str__(self) -> str:
        # simr's print.powerSim layout: the power in percent with 2 decimals and its 95% CI
        tested = ", ".join(f"'{t}'" for t in self.term)
        noun = "predictor" if len(self.term) == 1 else "predictors"
        lines = [f"Power for {noun} {tested}, (95% confidence interval):",
                 f"      {100 * self.power:.2f}% ({100 * self.lower:.2f}, {100 * self.upper:.2f})",
                 "", f"Test: {_TEST_NAMES.get(self.test, self.test)}"]
        for name in self.term:  # simr shows the tested effects only
            value = self.effect.get(name, np.nan)
            lines.append(f"      Effect size for {name} is {format_real([value], 7)[0]}")
        lines += ["", f"Based on {self.n_sim} simulations, ({self.n_failed} failed, "
                      f"{self.n_nonconverged} not converged)"]
        groups = ", ".join(f"{k} {v}" for k, v in self.n_groups.items())
        lines.append(f"alpha = {format_real([self.alpha], 7)[0]}" + (f", groups: {groups}" if groups else ""))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head, _, body = str(self).partition("\n")
        return (f"<div class=\"mixedlm-result\"><p><b>{html.escape(head)}</b></p>"
                f"<pre>{html.escape(body)}</pre></div>")


_TEST_NAMES = {"satterthwaite": "t or F test with Satterthwaite's denominator df (lmerTest)",
               "wald": "Wald z or chi-square test", "lr": "Likelihood ratio (chi-square) test"}


# ---- the simulated design and parameters ----------------------------------------------------


def _relative_factor(cov: Any, scale: float, q: int, diagonal: bool, name: str) -> np.ndarray:
    """Lower-triangular ``L`` with ``scale L L' = cov`` (cov positive semi-definite)."""
    cov = np.asarray(cov, dtype=float)
    if cov.ndim == 0 and q == 1:
        cov = cov.reshape(1, 1)
    if cov.shape != (q, q):
        raise ValueError(f"cov_re for {name!r} must be a {q} x {q} matrix, got shape {cov.shape}")
    if not np.all(np.isfinite(cov)) or not np.allclose(cov, cov.T, rtol=1e-10, atol=0.0):
        raise ValueError(f"cov_re for {name!r} must be a finite symmetric matrix")
    if diagonal and np.any(cov[~np.eye(q, dtype=bool)] != 0):
        raise ValueError(f"the term {name!r} has independent effects (cov_type 'diagonal'): its "
                         "cov_re must be diagonal")
    vals, vecs = linalg.eigh(cov)
    if vals.min() < -1e-10 * max(vals.max(), 1.0):
        raise ValueError(f"cov_re for {name!r} is not positive semi-definite")
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))  # root root' = cov
    r = linalg.qr(root.T, mode="r")[0]  # root = (QR)' -> root root' = R'R
    lam = r.T * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
    return lam / np.sqrt(scale)


def _parameters(model: FittedModel, effect: Any, term: list, cov_re: Any, scale: Any) -> Parameters:
    params = Parameters.of_model(model)
    names = list(model.fe_names)
    beta = params.beta.copy()
    if effect is not None:
        if not isinstance(effect, Mapping):
            if len(term) != 1:
                raise ValueError("effect must be a dict {fixed effect: value} when several "
                                 "fixed effects are tested")
            effect = {term[0]: effect}
        for name, value in effect.items():
            if name not in names:
                raise ValueError(f"effect names {name!r}, which is not a fixed effect of the fit "
                                 f"{names}")
            value = float(value)
            if not np.isfinite(value):
                raise ValueError(f"effect of {name!r} must be finite, got {value}")
            beta[names.index(name)] = value
    new_scale = params.scale
    if scale is not None:
        new_scale = float(scale)
        if not np.isfinite(new_scale) or new_scale <= 0:
            raise ValueError(f"scale must be a positive residual variance, got {scale!r}")
    lams = [lam * np.sqrt(params.scale / new_scale) for lam in params.lams]  # keep cov_re
    if cov_re is not None:
        terms = model.terms
        if not isinstance(cov_re, Mapping):
            if len(terms) != 1:
                raise ValueError("with several random-effects terms, cov_re must be a dict from "
                                 "term name to its covariance")
            cov_re = {terms[0].factor: cov_re}
        known = [t.factor for t in terms]
        unknown = [k for k in cov_re if k not in known]
        if unknown:
            raise ValueError(f"cov_re names {unknown}, which are not random-effects terms {known}")
        for k, t in enumerate(terms):
            if t.factor in cov_re:
                lams[k] = _relative_factor(cov_re[t.factor], new_scale, t.q, t.diagonal, t.factor)
    return Parameters(beta, lams, new_scale, params.ratios, correlation=params.correlation)


def _meets_one(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Every level of ``inner`` meets a single level of ``outer``."""
    pairs = np.unique(np.column_stack([inner, outer]), axis=0)
    return len(pairs) == len(np.unique(inner))


def _resized(rows: Rows, params: Parameters, factor: str, n: int) -> tuple[Rows, Parameters]:
    """The rows with ``n`` levels of ``factor``: the first ``n`` (fewer), or the existing
    ones' rows repeated under new levels (more)."""
    ks = [k for k, t in enumerate(rows.terms) if t.factor == factor]
    if not ks:
        raise ValueError(f"n_groups names {factor!r}, which is not a grouping factor "
                         f"{[t.factor for t in rows.terms]}")
    if n < 2:
        raise ValueError(f"n_groups[{factor!r}] must be at least 2, got {n}")
    codes = rows.factors[ks[0]][0]
    m = rows.terms[ks[0]].n_levels
    for k, (other, _) in enumerate(rows.factors):
        if k not in ks and n > m and len(np.unique(other)) > m and _meets_one(other, codes):
            raise ValueError(f"the factor {rows.terms[k].factor!r} is nested in {factor!r}: more "
                             f"levels of {factor!r} would share its levels. Give the nested factor "
                             "new levels in the data (or resize the nested factor instead)")
    by_level = [np.flatnonzero(codes == level) for level in range(m)]
    take = np.concatenate([by_level[j % m] for j in range(n)])
    new_codes = np.concatenate([np.full(by_level[j % m].size, j) for j in range(n)])
    factors, terms = [], []
    for k, ((c, Z), t) in enumerate(zip(rows.factors, rows.terms)):
        if k in ks:
            c_new, levels = new_codes, n
        else:
            used, c_new = np.unique(c[take], return_inverse=True)
            levels = used.size
        factors.append((c_new.astype(np.intp), Z[take]))
        terms.append(dataclasses.replace(t, n_levels=int(levels)))
    strata, n_strata = rows.strata, rows.n_strata
    if strata is not None:
        used, strata = np.unique(strata[take], return_inverse=True)
        n_strata = used.size
        ref = params.ratios[used[0]]
        params = dataclasses.replace(params, scale=params.scale * ref, ratios=params.ratios[used] / ref,
                                     lams=[lam / np.sqrt(ref) for lam in params.lams])
    new = Rows(rows.X[take], tuple(factors), Terms(terms),
               None if rows.weights is None else rows.weights[take], strata, n_strata,
               None if rows.offset is None else rows.offset[take], rows.family, rows.link)
    return new, params


# ---- one replicate's test ---------------------------------------------------------------------


def _wald_pvalue(model: FittedModel, sol, cols: np.ndarray, satterthwaite: bool) -> float:
    beta, cov = sol.beta[cols], sol.cov_beta()[np.ix_(cols, cols)]
    d, P = np.linalg.eigh(cov)
    keep = d > np.sqrt(np.finfo(float).eps) * d.max()
    d, P = d[keep], P[:, keep]
    r = d.size
    F = float(np.sum((P.T @ beta) ** 2 / d) / r)
    if not satterthwaite:
        return float(stats.chi2.sf(F * r, r))
    L = np.zeros((r, sol.beta.size))
    L[:, cols] = P.T
    nu = varpar_model(model).contrast_df(L)
    return float(stats.f.sf(F, r, combined_ddf(nu)))


@dataclass
class _PowerJob:
    """Draws responses, refits and tests (a picklable unit of work)."""

    model: FittedModel
    sampler: Sampler
    full: Refitter
    reduced: Refitter | None
    cols: np.ndarray
    test: str

    def __call__(self, generators: list) -> dict:
        Y = self.sampler.draw(generators)
        pf = self.full.products(Y)
        pr = self.reduced.products(Y) if self.reduced is not None else None
        k = len(generators)
        pvalues = np.full(k, np.nan)
        status = np.full(k, FAILED, dtype=np.int8)
        messages = []
        fulls = self.full.refit_all(pf)
        smalls = self.reduced.refit_all(pr) if self.reduced is not None else [None] * k
        for j, (out, small) in enumerate(zip(fulls, smalls)):
            failure = out if isinstance(out, str) else small if isinstance(small, str) else None
            if failure is not None:
                messages.append((j, failure))
                continue
            converged = out.converged
            if self.test == "lr":
                converged = converged and small.converged
                stat = max(small.deviance - out.deviance, 0.0)
                pvalues[j] = stats.chi2.sf(stat, self.cols.size)
            else:
                dev, sol = out.solved()
                rep = None
                if self.test == "satterthwaite":  # Satterthwaite's df need the refit's model
                    rep = dataclasses.replace(self.model, deviance=dev, solution=sol,
                                              info=out.info, terms=self.full.rows.terms,
                                              design=None, correlation=out.correlation)
                pvalues[j] = _wald_pvalue(rep, sol, self.cols, self.test == "satterthwaite")
            status[j] = OK if converged else NOT_CONVERGED
        return {"pvalues": pvalues, "status": status, "messages": messages}


# ---- power ---------------------------------------------------------------------------------------


def _refuse_formula(est: Any, name: str) -> None:
    """A formula is fitted by :mod:`mixedlm_sklearn.api` (inference imports no estimator)."""
    if isinstance(est, str):
        raise TypeError(f"{name} here takes a fitted model; for a formula use "
                        f"mixedlm_sklearn.{name}(formula, ..., data=df), which fits it with lmer")


def power(est: Any, term: str | Sequence[str], *, effect: Any = None, n_groups: Mapping[str, int] | None = None,
          cov_re: Any = None, scale: float | None = None, test: str | None = None,
          n_sim: int = 1000, alpha: float = 0.05,
          random_state: Any = None, n_jobs: int | None = None) -> PowerResult:
    """Simulated power of a test of fixed effects (simr's ``powerSim``).

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        The model (fitted in memory; :func:`mixedlm_sklearn.power` also takes an lme4
        formula and its data). The fit supplies the design and the
        parameters the responses are drawn with, except those given below; a GLMM's
        responses are drawn from its family.
    term : str or list of str
        The fixed effect(s) tested (several: jointly).
    effect : float or dict, optional
        The value of ``term`` in the simulation (a float, one term), or a dict from fixed
        effect names to values (simr's ``fixef(model)["x"] <- value``); others keep their
        estimates.
    n_groups : dict, optional
        Levels of grouping factors in the simulated design: ``{"Subject": 30}`` (simr's
        ``extend(model, along = "Subject", n = 30)``; fewer than fitted keeps the first).
    cov_re : array or dict, optional
        Covariance of the random effects (a dict by term name with several terms).
    scale : float, optional
        Residual variance (of the reference stratum; a linear model's only).
    test : {"satterthwaite", "wald", "lr"}, optional
        ``"satterthwaite"``: t test (one term) or F test with Satterthwaite df, as
        lmerTest's ``summary``/``contest`` (simr's default for ``lmer`` is the close
        Kenward-Roger test; the default for a linear model). ``"wald"``: z / chi-square
        Wald test (the default for a binomial or Poisson GLMM, simr's ``z`` test, with
        each refit's covariance of beta as lme4's ``vcov``). ``"lr"``: likelihood-ratio
        chi-square test of ML refits with and without ``term``.
    n_sim : int, default=1000
        Number of simulated data sets.
    alpha : float, default=0.05
        Significance level of the test.
    random_state : None, int, numpy SeedSequence or Generator, default=None
        Seed, as in :func:`~mixedlm_sklearn.inference.bootstrap`.
    n_jobs : int, optional
        Worker processes, as in :func:`~mixedlm_sklearn.inference.bootstrap`.

    Returns
    -------
    PowerResult
        The power with its Clopper-Pearson interval and the replicates' p-values.

    See Also
    --------
    mixedlm_sklearn.power_curve : Power against the number of groups.
    mixedlm_sklearn.inference.simulate : Draw responses from a fit.

    References
    ----------
    .. [1] Green, P. and MacLeod, C. J. (2016). SIMR: an R package for power analysis
       of generalized linear mixed models by simulation. Methods in Ecology and
       Evolution 7(4), 493-498.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer, power
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> est = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> result = power(est, "Days", effect=3.0, test="wald", n_sim=200, random_state=1)
    >>> print(result)  # doctest: +ELLIPSIS
    Power for predictor 'Days', (95% confidence interval):
          ...% (..., ...)
    <BLANKLINE>
    Test: Wald z or chi-square test
          Effect size for Days is 3
    <BLANKLINE>
    Based on 200 simulations, (0 failed, 0 not converged)
    alpha = 0.05, groups: Subject 18
    >>> bool(0.4 < result.power < 0.9)
    True
    """
    _refuse_formula(est, "power")
    model = require(fitted_model(est), "simulation")
    alpha = check_alpha(alpha)
    n_sim = check_count(n_sim, "n_sim")
    if test is None:
        test = "satterthwaite" if "satterthwaite" in model.df_methods else "wald"
    if test not in POWER_TESTS:
        raise ValueError(f"test must be one of {POWER_TESTS}, got {test!r}")
    if test == "satterthwaite" and test not in model.df_methods:
        raise ValueError(f"a {model.family.name} model's dispersion is fixed: its tests are "
                         "asymptotic; use test='wald' (z) or 'lr'")
    if scale is not None and not model.scale_estimated:
        raise ValueError(f"a {model.family.name} model has no residual variance to set (scale)")
    terms_tested = [term] if isinstance(term, str) else list(term)
    names = list(model.fe_names)
    unknown = [t for t in terms_tested if t not in names]
    if unknown or not terms_tested:
        raise ValueError(f"term must name fixed effects of the fit {names}, got {term!r}")
    cols = np.array([names.index(t) for t in terms_tested])
    rows = model_rows(model, "power")
    params = _parameters(model, effect, terms_tested, cov_re, scale)
    resized = False
    for factor, n in (n_groups or {}).items():
        n = check_count(n, f"n_groups[{factor!r}]", 2)
        rows, params = _resized(rows, params, factor, n)
        resized = True
    reml = model.reml and test != "lr"
    keep = np.setdiff1d(np.arange(len(names)), cols) if test == "lr" else None
    if keep is not None and keep.size == 0:
        raise ValueError("the LR test needs a fixed effect left in the reduced model")
    full, reduced = rows_refitters(model, rows, params, keep, reml, resized)
    job = _PowerJob(model, Sampler(rows, params), full, reduced, cols, test)
    return _power_result(job, random_state, n_sim, n_jobs, full.batch_size, names, params, rows,
                         terms_tested, test, alpha)


def _power_result(job: "_PowerJob", random_state: Any, n_sim: int, n_jobs: int | None,
                  batch_size: int, names: list, params: Any, rows: Any, terms_tested: list,
                  test: str, alpha: float) -> PowerResult:
    out = run_replicates(job, replicate_generators(random_state, n_sim), n_jobs, batch_size)
    pvalues, status, messages = out["pvalues"], out["status"], out.get("messages", [])
    failed, slow = int(np.sum(status == FAILED)), int(np.sum(status == NOT_CONVERGED))
    if failed or slow:
        warnings.warn(f"power: of {n_sim} refits, {failed} failed (left out of the power) and "
                      f"{slow} did not converge (kept)", ConvergenceWarning,
                      stacklevel=caller_stacklevel())
    valid = pvalues[np.isfinite(pvalues)]
    hits = int(np.sum(valid < alpha))
    if valid.size:
        ci = stats.binomtest(hits, valid.size).proportion_ci(confidence_level=0.95, method="exact")
        estimate, lower, upper = hits / valid.size, float(ci.low), float(ci.high)
    else:
        estimate = lower = upper = np.nan
    return PowerResult(estimate, lower, upper, hits, pvalues, status == OK, status == FAILED,
                       terms_tested, test, alpha, dict(zip(names, params.beta)),
                       {t.factor: t.n_levels for t in rows.terms}, dict(messages))


def power_curve(est: Any, term: str | Sequence[str], along: str, n_groups: Sequence[int], *,
                random_state: Any = None, **kwargs: Any) -> pd.DataFrame:
    """Power against the number of levels of one grouping factor (simr's ``powerCurve``).

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        As in :func:`~mixedlm_sklearn.inference.power` (:func:`mixedlm_sklearn.power_curve`
        also takes a formula).
    term : str or list of str
        As in :func:`~mixedlm_sklearn.power`.
    along : str
        The grouping factor whose number of levels varies.
    n_groups : sequence of int
        Its numbers of levels.
    random_state : None, int, numpy SeedSequence or Generator, default=None
        Each point draws from its own child generator.
    **kwargs
        Passed to :func:`~mixedlm_sklearn.power` (``effect``, ``test``, ``n_sim``, ``alpha``, ``n_jobs``, ...).

    Returns
    -------
    DataFrame
        One row per number of levels: ``n_groups``, ``power``, ``lower``, ``upper``,
        ``n_sim``, ``n_failed``.

    See Also
    --------
    mixedlm_sklearn.power : The power at one design.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer, power_curve
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> est = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> curve = power_curve(est, "Days", "Subject", [6, 12], effect=3.0, test="wald",
    ...                     n_sim=100, random_state=1)
    >>> list(curve.columns)
    ['n_groups', 'power', 'lower', 'upper', 'n_sim', 'n_failed']
    >>> bool(curve["power"].iloc[0] < curve["power"].iloc[1])
    True
    """
    values = [check_count(v, "n_groups", 2) for v in n_groups]
    if not values:
        raise ValueError("n_groups must hold at least one number of levels")
    if "n_groups" in kwargs:
        raise ValueError("give the numbers of levels as n_groups=[...] with along=...")
    _refuse_formula(est, "power_curve")
    seeds = replicate_generators(random_state, len(values))
    rows = []
    for n, seed in zip(values, seeds):
        res = power(est, term, n_groups={along: n}, random_state=seed, **kwargs)
        rows.append((n, res.power, res.lower, res.upper, res.n_sim, res.n_failed))
    return pd.DataFrame(rows, columns=["n_groups", "power", "lower", "upper", "n_sim", "n_failed"])
