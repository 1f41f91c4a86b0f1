"""Inference for generalized linear mixed models: glmer's ``summary``, ``confint``, ``anova``.

A GLMM's dispersion is fixed at 1, so the fixed effects are tested with Wald z statistics
(lme4's ``summary.merMod`` for a GLMM), their covariance being lme4's: twice the inverse
Hessian of the deviance in ``(theta, beta)`` (:meth:`.._glmm.GLMMSolution.cov_beta`).
Profile intervals invert the likelihood-ratio statistic of one parameter, the others
re-optimised (lme4's ``profile``/``confint(method = "profile")``); likelihood-ratio tests
compare nested fits of the same rows.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .._model import FittedModel
from ._parameters import check_alpha
from .summary import _fmt, _fmt_p, _text_table, random_effects_rows

__all__ = ["GLMMSummary", "summary", "conf_int", "glmm_model"]


def glmm_model(est: Any, role: str = "est"):
    """The :class:`~mixedlm_sklearn._model.FittedModel` of a fitted GLMM estimator."""
    model = getattr(est, "model_", None)
    if not isinstance(model, FittedModel) or model.scale_estimated:
        raise TypeError(f"{role} must be a fitted MixedGLMClassifier or MixedGLMRegressor")
    return model


@dataclass(frozen=True)
class GLMMSummary:  # numpydoc ignore=PR01
    """Summary of a fitted GLMM (lme4's ``summary`` of a ``glmer`` fit).

    Attributes
    ----------
    fixed_effects : DataFrame
        Columns ``estimate``, ``std_error``, ``z_value``, ``p_value`` (two-sided, normal),
        ``ci_lower``, ``ci_upper`` (Wald).
    random_effects : DataFrame
        Columns ``group``, ``name``, ``name2``, ``variance``, ``std_dev``, ``correlation``
        (as :class:`~mixedlm_sklearn.Summary`; no residual row).
    family : str
        ``"binomial"`` or ``"poisson"``.
    link : str
        The link function.
    method : str
        ``"Laplace"`` or ``"AGQ (n nodes)"``.
    n_obs : int
        Number of rows fitted.
    n_groups : dict
        Levels per grouping factor.
    llf : float
        Log-likelihood.
    aic : float
        Akaike's criterion.
    bic : float
        Schwarz's criterion.
    deviance : float
        lme4's ``deviance()``: the sum of squared deviance residuals.
    df_model : int
        Parameters counted by AIC and BIC.
    converged : bool
        Whether the optimiser met its checks.
    singular : bool
        Whether the estimate is on the boundary.
    alpha : float
        One minus the level of the Wald intervals.

    See Also
    --------
    mixedlm_sklearn.inference.glmm.summary : Make one.

    Examples
    --------
    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    >>> s = fit.summary()
    >>> s.family, s.link, s.method, s.n_groups
    ('binomial', 'logit', 'Laplace', {'herd': 15})
    """

    fixed_effects: pd.DataFrame
    random_effects: pd.DataFrame
    family: str
    link: str
    method: str
    n_obs: int
    n_groups: dict = field(default_factory=dict)
    llf: float = np.nan
    aic: float = np.nan
    bic: float = np.nan
    deviance: float = np.nan
    df_model: int = 0
    converged: bool = True
    singular: bool = False
    alpha: float = 0.05

    def _header(self) -> list[str]:
        groups = ", ".join(f"{g} ({n})" for g, n in self.n_groups.items()) or "none"
        return [
            f"Generalized linear mixed model fit by maximum likelihood ({self.method})",
            f"Family: {self.family} ({self.link})",
            f"Observations: {self.n_obs}   Groups: {groups}",
            f"AIC: {self.aic:.4f}   BIC: {self.bic:.4f}   log-likelihood: {self.llf:.4f}   "
            f"deviance: {self.deviance:.4f}   df: {self.df_model}",
            f"Converged: {'yes' if self.converged else 'NO'}   "
            f"Singular fit: {'YES' if self.singular else 'no'}",
        ]

    def _random_rows(self) -> tuple[list[str], list[list[str]]]:
        return random_effects_rows(self.random_effects)

    def _fixed_rows(self) -> tuple[list[str], list[list[str]]]:
        lo, hi = self.alpha / 2.0, 1.0 - self.alpha / 2.0
        header = ["", "Estimate", "Std.Error", "z value", "Pr(>|z|)", f"[{lo:g}", f"{hi:g}]"]
        fe = self.fixed_effects
        rows = [[str(name), _fmt(r.estimate), _fmt(r.std_error), _fmt(r.z_value, ".4g"),
                 _fmt_p(r.p_value), _fmt(r.ci_lower), _fmt(r.ci_upper)]
                if np.isfinite(r.estimate) else [str(name)] + ["NA"] * 6
                for name, r in zip(fe.index, fe.itertuples())]
        return header, rows

    def __str__(self) -> str:
        return "\n".join(self._header() + [
            "", "Random effects:", _text_table(*self._random_rows(), left=2),
            "", "Fixed effects (Wald z tests):", _text_table(*self._fixed_rows(), left=1),
        ])

    def __repr__(self) -> str:
        return self.__str__()

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(self.__str__()) + "</pre>"


def summary(est: Any, alpha: float = 0.05) -> GLMMSummary:
    """Summarise a GLMM: fixed effects with Wald z tests, random effects, information.

    Parameters
    ----------
    est : MixedGLMClassifier or MixedGLMRegressor
        A fitted GLMM.
    alpha : float, default=0.05
        One minus the level of the Wald intervals.

    Returns
    -------
    GLMMSummary
        The tables and the model information.

    See Also
    --------
    mixedlm_sklearn.MixedGLMClassifier.summary : The same, as a method.
    mixedlm_sklearn.inference.summary : The summary of a linear mixed model.

    Examples
    --------
    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    >>> fit.summary().fixed_effects[["estimate", "z_value"]].round(2)
                 estimate  z_value
    (Intercept)     -1.40    -6.02
    period2         -0.99    -3.24
    period3         -1.13    -3.46
    period4         -1.58    -3.70
    """
    alpha = check_alpha(alpha)
    model = glmm_model(est)
    beta, se = est.fe_params_, est.bse_
    if model.rank is not None:
        beta = beta.where(model.rank.kept)
    z = beta / se
    q = stats.norm.ppf(1.0 - alpha / 2.0)
    fixed = pd.DataFrame({
        "estimate": beta, "std_error": se, "z_value": z,
        "p_value": 2.0 * stats.norm.sf(np.abs(z)),
        "ci_lower": beta - q * se, "ci_upper": beta + q * se,
    }, index=beta.index)
    table = _random_effects_table(model)
    return GLMMSummary(
        fixed_effects=fixed, random_effects=table, family=model.family.name, link=model.family.link.name,
        method=model.method,
        n_obs=model.n_obs, n_groups={t.factor: int(t.n_levels) for t in model.terms},
        llf=float(est.llf_), aic=float(est.aic_), bic=float(est.bic_),
        deviance=float(est.deviance_), df_model=int(est.df_model_),
        converged=bool(est.converged_), singular=bool(est.singular_), alpha=alpha)


def _random_effects_table(model) -> pd.DataFrame:
    """Per term its variances, then its correlations (no residual: the dispersion is 1)."""
    rows = []
    for t, cov in zip(model.terms, model.solution.cov_re()):
        sd = np.sqrt(np.diag(cov))
        for r in range(t.q):
            rows.append((t.factor, t.z_names[r], "", cov[r, r], sd[r], np.nan))
        for r, c in zip(*t.theta_position):
            if r != c:
                cor = cov[r, c] / (sd[r] * sd[c]) if sd[r] > 0 and sd[c] > 0 else np.nan
                rows.append((t.factor, t.z_names[r], t.z_names[c], cov[r, c], np.nan, cor))
    return pd.DataFrame(rows, columns=["group", "name", "name2", "variance", "std_dev", "correlation"])


def _profile_parameters(model) -> list[tuple[str, int]]:
    """Names and indices in ``x = (theta, beta)`` of the parameters a profile can vary alone:
    the standard deviation of a scalar or diagonal term's effect (its theta entry) and each
    fixed effect."""
    out = []
    for term, sl in zip(model.terms, model.terms.slices):
        if term.q == 1 or term.diagonal:
            for j, name in enumerate(term.param_names()):
                out.append((name, sl.start + j))
    out.extend((name, model.n_theta + j) for j, name in enumerate(model.fe_names))
    return out


def _profile_bound(model, index: int, side: int, target: float, d_min: float) -> float:
    """The value of parameter ``index`` on ``side`` where the profiled deviance rises by ``target``."""
    dev = model.deviance
    x_hat = model.x
    center = x_hat[index]
    lower = dev.lower_bounds()[index]
    cache = {}

    def rise(v: float) -> float:
        if v not in cache:
            start = cache.get("start", x_hat)
            refit = model.refit(x0=start, fixed={index: v})
            value = float(refit.solution.deviance) if refit.info.converged else np.inf
            cache[v] = value - d_min
            if np.isfinite(value):
                cache["start"] = refit.x
        return cache[v]

    se = np.sqrt(max(2.0 / max(model.info.hessian[index, index], 1e-12), 1e-12)) \
        if model.info.hessian is not None else max(abs(center), 1.0)
    step = se * np.sqrt(target)
    a, b = center, center + side * step
    for _ in range(30):
        if side < 0 and b <= lower:
            b = lower
            if rise(b) < target:
                return lower  # the interval reaches the bound (a variance of 0)
            break
        if rise(b) >= target:
            break
        a, b = b, b + side * step
        step *= 1.6
    else:
        return np.inf * side
    lo, hi = (b, a) if side < 0 else (a, b)
    return float(optimize.brentq(lambda v: rise(v) - target, lo, hi, xtol=1e-6 * max(se, 1e-8)))


def conf_int(est: Any, alpha: float = 0.05, method: str = "wald", which: Any = None, *,
             n_boot: int = 1000, boot_type: str = "percentile", random_state: Any = None,
             n_jobs: int | None = None) -> pd.DataFrame:
    """Compute confidence intervals of a GLMM's parameters.

    Parameters
    ----------
    est : MixedGLMClassifier or MixedGLMRegressor
        A fitted GLMM.
    alpha : float, default=0.05
        One minus the confidence level.
    method : {"wald", "profile", "boot"}, default="wald"
        ``"wald"``: fixed effects, estimate -+ z * std. error (lme4's ``method = "Wald"``).
        ``"profile"``: likelihood-ratio intervals, the other parameters re-optimised at
        each value (lme4's ``method = "profile"``), for the fixed effects and the standard
        deviations of scalar or diagonal random-effects terms (named as lme4 names
        them, ``sd_(Intercept)|herd``).
        ``"boot"``: parametric bootstrap intervals of every parameter (random-effects
        standard deviations and correlations, fixed effects; lme4's ``method = "boot"``;
        see :func:`~mixedlm_sklearn.inference.bootstrap`).
    which : list of str, optional
        Parameters to profile (default all that can be); boot: names, or ``"variance"`` /
        ``"fixed"``.
    n_boot : int, default=1000
        Boot only: number of replicates.
    boot_type : {"percentile", "basic", "normal"}, default="percentile"
        Boot only: the interval type (lme4's ``boot.type``).
    random_state : None, int or numpy Generator, default=None
        Boot only: seed.
    n_jobs : int, optional
        Boot only: worker processes.

    Returns
    -------
    DataFrame
        Columns ``lower``, ``upper``, a row per parameter.

    See Also
    --------
    mixedlm_sklearn.MixedGLMClassifier.conf_int : The same, as a method.
    mixedlm_sklearn.inference.conf_int : The intervals of a linear mixed model.

    Examples
    --------
    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    >>> fit.conf_int(method="profile", which=["sd_(Intercept)|herd"]).round(4)  # lme4: 0.3461 1.1000
                          lower  upper
    sd_(Intercept)|herd  0.3461    1.1
    >>> ci = fit.conf_int(method="boot", n_boot=40, random_state=1, which="fixed")
    >>> list(ci.index)
    ['(Intercept)', 'period2', 'period3', 'period4']
    """
    alpha = check_alpha(alpha)
    model = glmm_model(est)
    if method == "boot":
        from .bootstrap import boot_conf_int

        return boot_conf_int(est, alpha, which, n_boot, boot_type, random_state, n_jobs)
    if method == "wald":
        q = stats.norm.ppf(1.0 - alpha / 2.0)
        fe, se = est.fe_params_, est.bse_
        if model.rank is not None:
            fe = fe.where(model.rank.kept)
        return pd.DataFrame({"lower": fe - q * se, "upper": fe + q * se}, index=fe.index)
    if method != "profile":
        raise ValueError(f"method must be 'wald', 'profile' or 'boot', got {method!r}")
    available = _profile_parameters(model)
    names = [n for n, _ in available]
    if which is None:
        chosen = available
    else:
        which = [which] if isinstance(which, str) else list(which)
        unknown = [w for w in which if w not in names]
        if unknown:
            raise ValueError(f"cannot profile {unknown}; the parameters that can be profiled are "
                             f"{names} (correlated random effects are not profiled one by one)")
        chosen = [(n, i) for n, i in available if n in which]
    target = float(stats.chi2.ppf(1.0 - alpha, 1))
    d_min = float(model.solution.deviance)
    rows = {}
    from .._threads import single_threaded_blas

    with single_threaded_blas():
        for name, index in chosen:
            rows[name] = (_profile_bound(model, index, -1, target, d_min),
                          _profile_bound(model, index, +1, target, d_min))
            model.deviance.modes(model.x)
    return pd.DataFrame(rows, index=["lower", "upper"]).T
