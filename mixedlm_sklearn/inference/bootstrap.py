"""The parametric bootstrap: refits to responses drawn from a fitted model.

* :func:`bootstrap` — lme4's ``bootMer``: the replicates of every parameter (and of a
  statistic of the caller's), with percentile, basic and normal intervals (lme4's
  ``confint(method = "boot")``, Davison & Hinkley 1997, sec. 5.2-5.3).
* :func:`pb_test` — pbkrtest's ``PBmodcomp`` (Halekoh & Hojsgaard 2014, JSS 59(9)): the
  reference distribution of the likelihood-ratio statistic simulated under the smaller
  model, both models refitted by maximum likelihood to every response.

Replicates are drawn and refitted by :mod:`.simulation` (shared cross-products, a start
at the generating parameters, per-replicate generators so that ``n_jobs`` does not change
the result). The same code serves linear mixed models and GLMMs: the sampler draws from
the model's family, and the refitter is the model's own fitting path. A replicate is a
converged refit, or it has failed: a refit that raises, or that does not converge from
the generating parameters nor from a plain fit's start, gives a NaN row with its reason,
and a warning gives the count. The point where a non-converged optimiser stopped (often
its start) is never reported as a result.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.exceptions import ConvergenceWarning

from .._table import ResultTable, format_real, percent_headings
from .._validation import caller_stacklevel
from ._parameters import check_alpha
from .lrt import check_comparable, check_nested, check_same_data
from .simulation import (
    FAILED,
    OK,
    Parameters,
    RefitCounts,
    Sampler,
    check_count,
    lme4_parameters,
    lme4_parameters_many,
    model_rows,
    parameter_names,
    refitter_for,
    replicate_generators,
    run_replicates,
    simulation_model,
)

__all__ = ["BootstrapResult", "bootstrap", "boot_conf_int", "PBTestResult", "pb_test", "BOOT_METHODS"]

BOOT_METHODS = ("percentile", "basic", "normal")


def _failure(refit: Any) -> str | None:
    """Why a refit is no replicate (it raised, or did not converge), or None."""
    if isinstance(refit, str):
        return refit
    if not refit.info.converged:
        return f"did not converge ({refit.info.message})"
    return None


_STATISTIC_FAILED = "the statistic raised"


def _report(status: np.ndarray, messages: list, what: str) -> None:
    """One warning with the count of failed replicates and the first reason (lme4's
    "some bootstrap runs failed (k/n)"): a ConvergenceWarning when refits failed, a
    UserWarning when only the caller's statistic did."""
    failed = int(np.sum(status == FAILED))
    if not failed:
        return
    first = messages[0][1] if messages else ""
    refits = any(not text.startswith(_STATISTIC_FAILED) for _, text in messages)
    warnings.warn(f"{what}: some runs failed ({failed}/{status.size}); their rows are NaN. "
                  f"First reason: {first}", ConvergenceWarning if refits else UserWarning,
                  stacklevel=caller_stacklevel())


# ---- bootstrap ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapResult(RefitCounts):  # numpydoc ignore=PR01
    """Parametric bootstrap replicates (lme4's ``bootMer``).

    Attributes
    ----------
    estimate : Series
        The fit's own values: lme4's parameters (as in ``conf_int(method="profile")``:
        per term ``sd_<effect>|<group>`` and ``cor_<e1>.<e2>|<group>``, ``sigma``, the
        residual standard-deviation ratios of a heteroscedastic fit, the fixed effects),
        then the statistic's values, if any (lme4's ``t0``).
    replicates : DataFrame of shape (n_boot, len(estimate))
        One row per replicate (lme4's ``t``); NaN rows for replicates that failed.
    converged : ndarray of bool
        Whether each replicate is a converged refit with its statistic (the
        complement of ``failed``).
    failed : ndarray of bool
        Whether each replicate failed: its refit raised or did not converge (from the
        generating parameters nor from a plain fit's start), a GLMM's simulated classes
        were separated (estimates not finite), or ``statistic`` raised on it.
    messages : dict
        Replicate index -> why it failed.
    n_params : int
        The first ``n_params`` columns are lme4's parameters, the rest the statistic's.

    See Also
    --------
    mixedlm_sklearn.inference.bootstrap : Make one.
    mixedlm_sklearn.MixedLMRegressor.conf_int : Bootstrap intervals in one call (``method="boot"``).

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> boot = fit.bootstrap(n_boot=50, random_state=0)
    >>> boot.n_boot, list(boot.estimate.index[:2])
    (50, ['sd_(Intercept)|Subject', 'cor_Days.(Intercept)|Subject'])
    """

    estimate: pd.Series
    replicates: pd.DataFrame
    converged: np.ndarray
    failed: np.ndarray
    messages: dict = field(default_factory=dict)
    n_params: int = 0

    @property
    def n_boot(self) -> int:
        """Number of replicates.

        See Also
        --------
        BootstrapResult.summary : Bias and standard errors over the replicates.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.bootstrap(n_boot=20, random_state=0).n_boot
        20
        """
        return len(self.replicates)

    def summary(self) -> ResultTable:
        """Tabulate the estimate, the bootstrap bias and the standard error per column.

        As lme4's ``print(bootMer(...))``: the bias is the mean of the replicates minus the
        estimate; replicates whose refit failed are left out.

        Returns
        -------
        ResultTable
            A DataFrame printed under the heading ``PARAMETRIC BOOTSTRAP: n replicates, k
            failed`` (R's ``print.data.frame`` numbers). Columns ``estimate``, ``bias``,
            ``std_error``, ``n`` (replicates used), a row per parameter.

        See Also
        --------
        BootstrapResult.conf_int : The intervals.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> boot = fit.bootstrap(n_boot=50, random_state=0)
        >>> list(boot.summary().columns)
        ['estimate', 'bias', 'std_error', 'n']
        """
        rep = self.replicates
        table = pd.DataFrame({"estimate": self.estimate, "bias": rep.mean() - self.estimate,
                              "std_error": rep.std(ddof=1), "n": rep.notna().sum()})
        return ResultTable(table, title=f"{self._heading()}\n\nBootstrap Statistics :",
                           formats={"n": "int"}, layout="frame")

    def _heading(self) -> str:
        return f"PARAMETRIC BOOTSTRAP: {self.n_boot} replicates, {self.n_failed} failed"

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

    def conf_int(self, alpha: float = 0.05, method: str = "percentile") -> ResultTable:
        """Bootstrap confidence intervals of every column.

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the confidence level.
        method : {"percentile", "basic", "normal"}, default="percentile"
            With ``t`` the estimate and ``q_a`` the ``a`` quantile of the replicates
            (numpy's default, linear interpolation): ``"percentile"`` ``(q_{alpha/2},
            q_{1-alpha/2})``; ``"basic"`` ``(2t - q_{1-alpha/2}, 2t - q_{alpha/2})``;
            ``"normal"`` ``t - bias -+ z_{1-alpha/2} sd`` (bias and sd of the
            replicates), as the boot package's ``boot.ci`` types ``perc``, ``basic`` and
            ``norm``. Replicates that failed are left out (they are counted in
            :attr:`n_failed`).

        Returns
        -------
        ResultTable
            A DataFrame printed under ``Bootstrap <method> confidence intervals, 95% level``
            with the number of replicates used: ``lower`` and ``upper``, indexed by parameter (fixed effects dropped as
            aliased: NaN).

        See Also
        --------
        BootstrapResult.summary : Bias and standard errors.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> boot = fit.bootstrap(n_boot=200, random_state=0)
        >>> ci = boot.conf_int(method="basic")
        >>> bool(ci.loc["Days", "lower"] < 10.467 < ci.loc["Days", "upper"])
        True
        """
        a = check_alpha(alpha)
        if method not in BOOT_METHODS:
            raise ValueError(f"method must be one of {BOOT_METHODS}, got {method!r}")
        lower, upper = [], []
        for name in self.replicates.columns:
            values = self.replicates[name].to_numpy()
            values = values[np.isfinite(values)]
            t0 = float(self.estimate[name])
            if values.size < 2 or not np.isfinite(t0):
                lower.append(np.nan)
                upper.append(np.nan)
                continue
            if method == "normal":
                z = stats.norm.ppf(1.0 - a / 2.0)
                centre, sd = 2.0 * t0 - values.mean(), values.std(ddof=1)
                lower.append(centre - z * sd)
                upper.append(centre + z * sd)
                continue
            lo, hi = np.quantile(values, [a / 2.0, 1.0 - a / 2.0])
            if method == "basic":
                lo, hi = 2.0 * t0 - hi, 2.0 * t0 - lo
            lower.append(float(lo))
            upper.append(float(hi))
        level = format_real([100.0 * (1.0 - a)], 7)[0]
        return ResultTable({"lower": lower, "upper": upper},
                           index=pd.Index(self.replicates.columns, name="parameter"),
                           title=f"Bootstrap {method} confidence intervals, {level}% level",
                           notes=[f"Based on {self.n_boot - self.n_failed} of {self.n_boot} "
                                  "replicates (the others failed)" if self.n_failed else
                                  f"Based on {self.n_boot} replicates"], layout="frame",
                           headings=percent_headings(a))

    def __str__(self) -> str:
        return self.summary().text()


@dataclass
class _BootstrapJob:
    """Draws responses from the fit and refits it to each (a picklable unit of work)."""

    model: Any
    sampler: Sampler
    refitter: Any
    estimator: Any = None
    statistic: Callable | None = None
    several: bool = False
    n_statistic: int = 0

    def __call__(self, generators: list) -> dict:
        Y = self.sampler.draw(generators)
        products = self.refitter.products(Y)
        k = len(generators)
        n_par = len(parameter_names(self.model))
        values = np.full((k, n_par + self.n_statistic), np.nan)
        status = np.full(k, FAILED, dtype=np.int8)
        messages = []
        fits = self.refitter.refit_all(products)
        done = [j for j, out in enumerate(fits) if not isinstance(out, str)]
        if done:
            values[done, :n_par] = lme4_parameters_many([fits[j] for j in done], self.model)
        for j, out in enumerate(fits):
            reason = _failure(out)
            if reason is not None:
                values[j] = np.nan
                messages.append((j, reason))
                continue
            if self.statistic is not None:
                # As lme4's bootMer: a statistic that raises on one replicate fails that
                # replicate (a NaN row), not the bootstrap.
                try:
                    values[j, n_par:] = _statistic_values(
                        self.statistic(self._estimator(Y[:, j], out)), self.n_statistic)
                except Exception as err:  # noqa: BLE001 - the caller's code: any error
                    values[j] = np.nan
                    messages.append((j, f"{_STATISTIC_FAILED} {type(err).__name__}: {err}"))
                    continue
            status[j] = OK
        return {"values": values, "status": status, "messages": messages}

    def _estimator(self, y: np.ndarray, refit):
        """The estimator as fitted to one replicate (for the caller's statistic)."""
        rep = copy.copy(self.estimator)
        rep.model_ = self.refitter.replicate_model(self.model, y, refit)
        rep._set_fitted(self.several, warn=False)
        return rep


def _statistic_values(value: Any, size: int | None = None) -> np.ndarray:
    if isinstance(value, dict):  # named values (the keys name the columns)
        value = list(value.values())
    out = np.asarray(value, dtype=float).reshape(-1)
    if size is not None and out.size != size:
        raise ValueError(f"statistic returned {out.size} values for a replicate and {size} for "
                         "the fit: it must return the same number every time")
    return out


def _statistic_names(value: Any, size: int) -> list[str]:
    if isinstance(value, pd.Series):
        return [str(k) for k in value.index]
    if isinstance(value, dict):
        return [str(k) for k in value]
    if np.ndim(value) == 0:
        return ["statistic"]
    return [f"statistic_{j}" for j in range(size)]


def bootstrap(est: Any, n_boot: int = 1000, random_state: Any = None, n_jobs: int | None = None,
              statistic: Callable[[Any], Any] | None = None) -> BootstrapResult:
    """Parametric bootstrap of a fit (lme4's ``bootMer``).

    Each replicate draws a response from the fitted model (new random effects and
    residuals, as :func:`~mixedlm_sklearn.inference.simulate`) and refits the model to it
    (REML or ML as fitted).

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMRegressor or MixedGLMClassifier
        Fitted in memory. A GLMM's replicates are drawn from its family
        (:func:`~mixedlm_sklearn.inference.simulate`) and refitted by its own fitting path
        (PIRLS with the Laplace or AGQ deviance), started from the fit.
    n_boot : int, default=1000
        Number of replicates.
    random_state : None, int, numpy SeedSequence or Generator, default=None
        Replicate ``j`` draws from the ``j``-th child generator of
        ``np.random.default_rng(random_state)``: the same ``random_state`` gives the same
        replicates whatever ``n_jobs`` is.
    n_jobs : int, optional
        Workers (joblib, its default process backend unless a ``joblib.parallel_config``
        context says otherwise; ``-1`` all cores). None: one, unless inside such a
        context. Workers pay off for models whose refits take more than a few
        milliseconds (several grouping factors, large data); one-term models refit a
        whole batch of responses together and are fastest in one process.
    statistic : callable, optional
        ``statistic(fitted_estimator)`` -> a number, array, Series or dict, evaluated on
        the fit (the estimate) and on the estimator refitted to each replicate; its values
        are added as columns (a Series' or dict's keys name them). An exception on the
        fit is raised; on a replicate it fails that replicate (a NaN row, the error in
        ``messages``), as lme4's ``bootMer`` records NA.

    Returns
    -------
    BootstrapResult
        The estimate and the replicates of every parameter (lme4's ``t0`` and ``t``).

    Warns
    -----
    ConvergenceWarning
        When replicates fail (NaN rows): ``some runs failed (k/n)`` with the first
        reason (lme4's bootMer warns alike); a UserWarning when only ``statistic``
        raised.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.bootstrap : The same, as a method.
    BootstrapResult.conf_int : Intervals from the replicates.
    mixedlm_sklearn.inference.simulate : The responses the replicates are fitted to.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> est = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> boot = est.bootstrap(n_boot=200, random_state=1)
    >>> boot.replicates.shape, boot.n_failed
    ((200, 6), 0)
    >>> list(boot.estimate.index)
    ['sd_(Intercept)|Subject', 'cor_Days.(Intercept)|Subject', 'sd_Days|Subject', 'sigma', '(Intercept)', 'Days']
    >>> ci = boot.conf_int()
    >>> bool(ci.loc["Days", "lower"] < 10.467 < ci.loc["Days", "upper"])
    True

    A GLMM (lme4's parameters of a binomial ``glmer``: no ``sigma``):

    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    >>> boot = fit.bootstrap(n_boot=40, random_state=1)
    >>> list(boot.estimate.index), boot.n_failed
    (['sd_(Intercept)|herd', '(Intercept)', 'period2', 'period3', 'period4'], 0)
    """
    model = simulation_model(est)
    n_boot = check_count(n_boot, "n_boot")
    if statistic is not None and not callable(statistic):
        raise TypeError(f"statistic must be a callable taking the fitted estimator, got {statistic!r}")
    rows = model_rows(model, "bootstrap")
    sampler = Sampler(rows, Parameters.of_model(model))
    refitter = refitter_for(model)
    names = parameter_names(model)
    estimate = lme4_parameters(model.solution, model)
    stat_names: list[str] = []
    if statistic is not None:
        t0 = statistic(est)
        t0_values = _statistic_values(t0)
        stat_names = _statistic_names(t0, t0_values.size)
        clash = sorted(set(stat_names) & set(names))
        if clash:
            raise ValueError(f"statistic names {clash} are also parameter names; return a Series "
                             "or dict with other keys")
        estimate = np.concatenate([estimate, t0_values])
    job = _BootstrapJob(model, sampler, refitter, est if statistic is not None else None, statistic,
                        isinstance(getattr(est, "cov_re_", None), dict), len(stat_names))
    out = run_replicates(job, replicate_generators(random_state, n_boot), n_jobs, refitter.batch_size)
    status, messages = out["status"], out.get("messages", [])
    _report(status, messages, "bootstrap")
    columns = names + stat_names
    return BootstrapResult(pd.Series(estimate, index=columns, name="estimate"),
                           pd.DataFrame(out["values"], columns=columns), status == OK,
                           status == FAILED, dict(messages), len(names))


def boot_conf_int(est: Any, alpha: float = 0.05, which: Any = None, n_boot: int = 1000,
                  boot_type: str = "percentile", random_state: Any = None,
                  n_jobs: int | None = None) -> ResultTable:
    """Bootstrap intervals of lme4's parameters (``conf_int(method="boot")`` of the linear
    and the generalized estimators; lme4's ``confint(method = "boot")``).

    ``which``: parameter names, or ``"variance"`` (the random-effects and residual
    parameters) / ``"fixed"``; default all. ``boot_type`` as :meth:`BootstrapResult.conf_int`'s
    ``method``; the rest as :func:`bootstrap`.
    """
    a = check_alpha(alpha)
    model = simulation_model(est)
    names = parameter_names(model)
    n_fixed = len(model.fe_names) if model.rank is None else len(model.rank.names)
    n_var = len(names) - n_fixed
    groups = {"variance": names[:n_var], "fixed": names[n_var:]}
    wanted = names if which is None else groups.get(which, [which]) if isinstance(which, str) \
        else list(which)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; the parameters are {names}")
    if boot_type not in BOOT_METHODS:
        raise ValueError(f"boot_type must be one of {BOOT_METHODS}, got {boot_type!r}")
    boot = bootstrap(est, n_boot=n_boot, random_state=random_state, n_jobs=n_jobs)
    return boot.conf_int(a, boot_type).loc[wanted]


# ---- parametric bootstrap likelihood-ratio test -------------------------------------------------


@dataclass(frozen=True)
class PBTestResult(RefitCounts):  # numpydoc ignore=PR01
    """Parametric bootstrap likelihood-ratio test (pbkrtest's ``PBmodcomp``).

    Attributes
    ----------
    statistic : float
        ``LR = 2 (llf_full - llf_restricted)`` of the maximum-likelihood fits.
    df : int
        Difference in the number of parameters.
    pvalue_chi2 : float
        ``P(chi2_df >= LR)``.
    pvalue : float
        The bootstrap p-value ``(1 + #{LR* >= LR}) / (1 + n)``, ``n`` the replicates whose
        refits did not fail.
    pvalue_bartlett : float
        ``P(chi2_df >= LR df / mean(LR*))`` (pbkrtest's Bartlett correction).
    replicates : ndarray of shape (n_boot,)
        ``LR*`` of each simulated response (NaN where a refit failed).
    converged : ndarray of bool
        Per replicate: whether both refits converged.
    failed : ndarray of bool
        Per replicate: whether a refit failed (raised or did not converge, as in
        :class:`BootstrapResult`).
    llf_restricted : float
        Maximum-likelihood log-likelihood of the restricted model.
    llf_full : float
        Maximum-likelihood log-likelihood of the full model.
    elapsed : float
        Seconds the replicates took (pbkrtest's ``time``).
    formula_full : str or None
        The full model's formula (None for a fit from arrays).
    formula_restricted : str or None
        The restricted model's formula (None for a fit from arrays).

    See Also
    --------
    mixedlm_sklearn.pb_test : Make one.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer, pb_test
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> m0 = lmer("Reaction ~ 1 + (Days | Subject)", df, reml=False)
    >>> m1 = lmer("Reaction ~ Days + (Days | Subject)", df, reml=False)
    >>> test = pb_test(m0, m1, n_boot=50, random_state=0)
    >>> test.n_boot, test.df
    (50, 1)
    """

    statistic: float
    df: int
    pvalue_chi2: float
    pvalue: float
    pvalue_bartlett: float
    replicates: np.ndarray
    converged: np.ndarray
    failed: np.ndarray
    llf_restricted: float
    llf_full: float
    messages: dict = field(default_factory=dict)
    elapsed: float = float("nan")
    formula_full: str | None = None
    formula_restricted: str | None = None

    @property
    def n_boot(self) -> int:
        """Number of simulated responses.

        See Also
        --------
        mixedlm_sklearn.pb_test : Make the test.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer, pb_test
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> m0 = lmer("Reaction ~ 1 + (1 | Subject)", df, reml=False)
        >>> m1 = lmer("Reaction ~ Days + (1 | Subject)", df, reml=False)
        >>> pb_test(m0, m1, n_boot=20, random_state=0).n_boot
        20
        """
        return int(self.replicates.size)

    @property
    def table(self) -> ResultTable:
        """Tabulate the tests as pbkrtest's ``PBmodcomp`` table.

        Rows ``LRT`` (chi-square), ``PBtest`` (bootstrap) and ``Bartlett`` (``LR df /
        mean(LR*)`` on ``df``); columns ``stat``, ``df``, ``p.value``. It prints under
        pbkrtest's heading: ``Bootstrap test; time: ... sec; samples: n; extremes: e;``
        (extremes: the replicates with ``LR* >= LR``), the requested and used samples when
        some refits failed, then (fits from formulas) ``large : <formula>`` and the small
        model's formula on a line of its own, as pbkrtest 0.5 prints them.

        Returns
        -------
        ResultTable
            The three tests.

        See Also
        --------
        mixedlm_sklearn.pb_test : The test.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer, pb_test
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> m0 = lmer("Reaction ~ 1 + (1 | Subject)", df, reml=False)
        >>> m1 = lmer("Reaction ~ Days + (1 | Subject)", df, reml=False)
        >>> list(pb_test(m0, m1, n_boot=20, random_state=0).table.index)
        ['LRT', 'PBtest', 'Bartlett']
        """
        finite = self.replicates[np.isfinite(self.replicates)]
        extremes = int(np.sum(finite >= self.statistic))
        mean = float(finite.mean()) if finite.size else np.nan
        bartlett = self.statistic * self.df / mean if finite.size and mean > 0 else np.nan
        # pbkrtest's .PBcommon: time and samples, used samples when fewer, the two formulas
        heading = ["Bootstrap test; " + (f"time: {self.elapsed:.2f} sec;" if np.isfinite(self.elapsed)
                                          else "") + f" samples: {self.n_boot}; extremes: {extremes};"]
        if self.n_failed:
            heading.append(f"Requested samples: {self.n_boot} Used samples: "
                           f"{self.n_boot - self.n_failed} Extremes: {extremes}")
        if self.formula_full is not None:
            heading.append(f"large : {self.formula_full}")
        if self.formula_restricted is not None:  # pbkrtest prints it without "small : "
            heading.append(self.formula_restricted)
        return ResultTable({"stat": [self.statistic] * 2 + [bartlett],
                            "df": [self.df, np.nan, self.df],
                            "p.value": [self.pvalue_chi2, self.pvalue, self.pvalue_bartlett]},
                           index=["LRT", "PBtest", "Bartlett"], title="\n".join(heading),
                           formats={"stat": "stat", "df": "int", "p.value": "p"}, stars="p.value")

    def __str__(self) -> str:
        return self.table.text()

    def _repr_html_(self) -> str:
        return self.table._repr_html_()


@dataclass
class _PBJob:
    """Draws responses from the restricted model and refits both models to each."""

    sampler: Sampler
    small: Any
    big: Any

    def __call__(self, generators: list) -> dict:
        Y = self.sampler.draw(generators)
        ps, pb = self.small.products(Y), self.big.products(Y)
        k = len(generators)
        lr = np.full(k, np.nan)
        status = np.full(k, FAILED, dtype=np.int8)
        messages = []
        for j, (a, b) in enumerate(zip(self.small.refit_all(ps), self.big.refit_all(pb))):
            failure = _failure(a) or _failure(b)
            if failure is not None:
                messages.append((j, failure))
                continue
            lr[j] = a.deviance - b.deviance
            status[j] = OK
        return {"lr": lr, "status": status, "messages": messages}


def _ml(model: Any) -> Any:
    """The maximum-likelihood fit of a model (a REML fit refitted by ML, with the search)."""
    return model.refit(reml=False, search=True) if model.reml else model


def pb_test(small: Any, big: Any, n_boot: int = 1000, random_state: Any = None,
            n_jobs: int | None = None) -> PBTestResult:
    """Parametric bootstrap likelihood-ratio test of nested models (pbkrtest's ``PBmodcomp``).

    Responses are drawn from the restricted model, both models are refitted to each by
    maximum likelihood, and the observed ``LR`` is compared with the ``LR*`` of the
    replicates. Useful where the chi-square reference is doubtful: few groups, or a
    variance on its boundary under the null hypothesis.

    Parameters
    ----------
    small : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        The restricted model, fitted in memory.
    big : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        The full model, fitted in memory to the same rows. REML fits
        are refitted by maximum likelihood first (as pbkrtest does). GLMMs (fitted by
        maximum likelihood) must share the family, link, ``n_agq`` and offset; their
        responses are drawn from the restricted model's family.
    n_boot : int, default=1000
        Number of simulated responses.
    random_state : None, int, numpy SeedSequence or Generator, default=None
        Seed, as in :func:`~mixedlm_sklearn.inference.bootstrap`.
    n_jobs : int, optional
        Worker processes, as in :func:`~mixedlm_sklearn.inference.bootstrap`.

    Returns
    -------
    PBTestResult
        The statistic and its bootstrap, chi-square and Bartlett-corrected p-values.

    Raises
    ------
    ValueError
        As :func:`~mixedlm_sklearn.lr_test`: different data, models not nested, or
        ``big`` not larger than ``small``; GLMMs of different families, links, ``n_agq``
        or offsets.
    TypeError
        A linear mixed model against a GLMM.

    See Also
    --------
    mixedlm_sklearn.lr_test : The chi-square likelihood-ratio test.
    mixedlm_sklearn.anova : Several nested fits.

    References
    ----------
    .. [1] Halekoh, U. and Hojsgaard, S. (2014). A Kenward-Roger approximation and
       parametric bootstrap methods for tests in linear mixed models - the R package
       pbkrtest. Journal of Statistical Software 59(9).

    Examples
    --------
    >>> from mixedlm_sklearn import lmer, pb_test
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> m0 = lmer("Reaction ~ 1 + (Days | Subject)", df, reml=False)
    >>> m1 = lmer("Reaction ~ Days + (Days | Subject)", df, reml=False)
    >>> test = pb_test(m0, m1, n_boot=200, random_state=1)
    >>> round(test.statistic, 3), test.df, test.pvalue == 1 / 201
    (23.537, 1, True)
    """
    model_s, model_b = simulation_model(small, "small"), simulation_model(big, "big")
    n_boot = check_count(n_boot, "n_boot")
    check_comparable(model_s, model_b, ("small", "big"))
    check_same_data(model_s, model_b)
    problems = check_nested(model_s, model_b)
    if problems:
        raise ValueError("the restricted model is not nested in the full one: " + "; ".join(problems)
                         + ". A likelihood-ratio test compares nested models only.")
    df = int(big.df_model_ - small.df_model_)
    if df <= 0:
        raise ValueError(f"big has {big.df_model_} parameters and small {small.df_model_}: pass "
                         "the smaller (nested) model first")
    rows = model_rows(model_s, "pb_test")
    model_rows(model_b, "pb_test")  # refuse before the refits below
    ml_s, ml_b = _ml(model_s), _ml(model_b)
    sampler = Sampler(rows, Parameters.of_model(ml_s))
    start = time.perf_counter()
    job = _PBJob(sampler, refitter_for(ml_s), refitter_for(ml_b))
    out = run_replicates(job, replicate_generators(random_state, n_boot), n_jobs,
                         min(job.small.batch_size, job.big.batch_size))
    elapsed = time.perf_counter() - start
    status, messages, lr_star = out["status"], out.get("messages", []), out["lr"]
    _report(status, messages, "pb_test")
    statistic = float(ml_s.solution.deviance - ml_b.solution.deviance)
    valid = lr_star[np.isfinite(lr_star)]
    s = max(statistic, 0.0)
    if valid.size:
        p_boot = float((1 + np.sum(valid >= statistic)) / (1 + valid.size))
        mean = float(valid.mean())
        p_bartlett = float(stats.chi2.sf(s * df / mean, df)) if mean > 0 else np.nan
    else:
        p_boot = p_bartlett = np.nan
    return PBTestResult(statistic, df, float(stats.chi2.sf(s, df)), p_boot, p_bartlett, lr_star,
                        status == OK, status == FAILED, -0.5 * ml_s.solution.deviance,
                        -0.5 * ml_b.solution.deviance, dict(messages), elapsed,
                        _formula(big), _formula(small))


def _formula(est: Any) -> str | None:
    """The formula a fit came from, None for a fit from arrays."""
    formula = getattr(est, "formula", None)
    if not isinstance(formula, str):
        return None
    # the residual correlation is no part of the formula (nlme's correlation = argument)
    corr = getattr(getattr(est, "model_", None), "correlation", None)
    if corr is not None:
        formula = f"{formula}, correlation = {corr.structure.nlme_class}(form = {corr.group_name})"
    return formula
