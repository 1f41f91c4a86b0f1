"""The summary of a fitted model: lme4's ``summary`` with lmerTest's tests.

One summary serves every kind of fit. A model whose dispersion is estimated (the linear
model) has t tests on Satterthwaite's or Kenward-Roger's df; one whose dispersion is fixed
(a binomial or Poisson GLMM) has only asymptotic tests, Wald z tests with lme4's covariance
of the fixed effects, as glmer's ``summary``: the model's ``df_methods`` decide.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ._parameters import check_alpha, fitted_model
from ._protocol import choose_df
from .kenward_roger import kenward_roger_model
from .satterthwaite import satterthwaite_df

__all__ = ["Summary", "summary"]


def _random_effects_table(est: Any) -> pd.DataFrame:
    """Per term its variances, then its correlations; the residual (per stratum) last when
    the model estimates its dispersion (a binomial or Poisson model's is 1: no residual row)."""
    model = fitted_model(est)
    sol = model.solution
    rows = []
    for t, cov in zip(model.terms, sol.cov_re()):
        sd = np.sqrt(np.diag(cov))
        for r in range(t.q):
            rows.append((t.factor, t.z_names[r], "", cov[r, r], sd[r], np.nan))
        for r, c in zip(*t.theta_position):
            if r != c:
                cor = cov[r, c] / (sd[r] * sd[c]) if sd[r] > 0 and sd[c] > 0 else np.nan
                rows.append((t.factor, t.z_names[r], t.z_names[c], cov[r, c], np.nan, cor))
    if not model.scale_estimated:
        pass
    elif model.strata is not None:
        for label, ratio in zip(model.strata, sol.ratios):
            var = sol.scale * ratio
            rows.append((f"Residual ({label})", "", "", var, np.sqrt(var), np.nan))
    else:
        rows.append(("Residual", "", "", sol.scale, np.sqrt(sol.scale), np.nan))
    return pd.DataFrame(rows, columns=["group", "name", "name2", "variance", "std_dev", "correlation"])


def _fmt(value: float, spec: str = ".6g") -> str:
    return "" if not np.isfinite(value) else format(value, spec)


def _fmt_p(value: float) -> str:
    # below R's printing floor the digits are meaningless (as R's format.pval)
    return "<2e-16" if value < 2e-16 else _fmt(value, ".3g")


def _text_table(header: list[str], rows: list[list[str]], left: int) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned."""
    cells = [header] + rows
    widths = [max(len(row[j]) for row in cells) for j in range(len(header))]
    lines = []
    for row in cells:
        parts = [v.ljust(w) if j < left else v.rjust(w) for j, (v, w) in enumerate(zip(row, widths))]
        lines.append(" " + "  ".join(parts).rstrip())
    return "\n".join(lines)


def random_effects_rows(re: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """lme4's layout of a random-effects table: a row per variance, correlations to the
    earlier effects beside it (the linear and the generalized summaries alike)."""
    var = re[re["name2"] == ""]
    cors = re[re["name2"] != ""]
    n_corr = int(cors.groupby(["group", "name"]).size().max()) if len(cors) else 0
    header = ["Group", "Name", "Variance", "Std.Dev."] + (["Corr"] + [""] * (n_corr - 1))[:n_corr]
    rows, previous = [], None
    for _, row in var.iterrows():
        mine = cors[(cors["group"] == row["group"]) & (cors["name"] == row["name"])]
        corr = [_fmt(v, ".3f") for v in mine["correlation"]]
        rows.append([row["group"] if row["group"] != previous else "", row["name"],
                     _fmt(row["variance"]), _fmt(row["std_dev"])]
                    + corr + [""] * (n_corr - len(corr)))
        previous = row["group"]
    return header, rows


@dataclass(frozen=True)
class Summary:  # numpydoc ignore=PR01
    """Summary of a fitted mixed model (lme4's ``summary`` with lmerTest's tests).

    Attributes
    ----------
    fixed_effects : DataFrame
        Indexed by fixed effect; columns ``estimate``, ``std_error``, ``df`` (Satterthwaite,
        or with Kenward-Roger the adjusted standard errors and their df),
        ``t_value``, ``p_value`` (two-sided t test on ``df``), ``ci_lower``, ``ci_upper``
        (``estimate -+ t_{df, 1-alpha/2} * std_error``, the interval matching the test;
        :func:`~mixedlm_sklearn.inference.conf_int` gives lme4's normal-quantile Wald intervals).
        With asymptotic tests (``ddf="asymptotic"``: every test of a binomial or Poisson GLMM,
        whose dispersion is fixed) no ``df``, and ``z_value`` instead of ``t_value``
        (glmer's Wald z tests; normal p-values and intervals).
    random_effects : DataFrame
        Columns ``group``, ``name``, ``name2``, ``variance``, ``std_dev``, ``correlation``.
        Per term a row per variance (``name2`` empty), then a row per pair of effects
        (``name``, ``name2``; ``variance`` holds their covariance, ``correlation`` their
        correlation); ``Residual`` last, or with heteroscedastic residuals a row
        ``Residual (<stratum>)`` per stratum. No residual row when the dispersion is fixed.
    method : str
        The fitting criterion: ``"REML"``, ``"ML"``, ``"Laplace"`` or ``"AGQ (n nodes)"``.
    n_obs : int
        Number of rows fitted.
    n_groups : dict
        Levels per grouping factor.
    llf : float
        Log-likelihood (for REML fits -1/2 the REML criterion, as lme4's ``logLik``).
    aic : float
        Akaike's information criterion.
    bic : float
        Schwarz's criterion.
    df_model : int
        Parameters counted by AIC/BIC (lme4's ``df``).
    converged : bool
        Whether the optimiser met its convergence checks.
    singular : bool
        Whether the estimate is on the boundary.
    alpha : float
        One minus the level of the confidence intervals.
    ddf : {"Satterthwaite", "Kenward-Roger", "normal", "asymptotic"}
        How ``df`` was obtained: Satterthwaite, Kenward-Roger, or ``inf`` (normal approximation) for a
        heteroscedastic fit that lacks what the Satterthwaite df need (printed as such);
        ``"asymptotic"``: Wald z tests (no ``df`` column).
    family : str
        The response's family: ``"gaussian"``, ``"binomial"`` or ``"poisson"``.
    link : str
        The link function.
    deviance : float
        lme4's ``deviance()`` of a GLMM, the sum of squared deviance residuals (printed in
        the header of a fit by Laplace or AGQ); NaN for a linear model.
    correlation : str
        The residual correlation structure and its estimate in nlme's terms
        (``corAR1(form = ~ visit | Mare), Phi = 0.607``); empty without one.

    See Also
    --------
    mixedlm_sklearn.inference.summary : Make one.
    mixedlm_sklearn.MixedLMRegressor.summary : The same, as a method.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> s = fit.summary()
    >>> s.method, s.n_obs, s.n_groups
    ('REML', 180, {'Subject': 18})
    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> g = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp()).summary()
    >>> g.family, g.link, g.method, g.n_groups, g.ddf
    ('binomial', 'logit', 'Laplace', {'herd': 15}, 'asymptotic')
    """

    fixed_effects: pd.DataFrame
    random_effects: pd.DataFrame
    method: str
    n_obs: int
    n_groups: dict = field(default_factory=dict)
    llf: float = np.nan
    aic: float = np.nan
    bic: float = np.nan
    df_model: int = 0
    converged: bool = True
    singular: bool = False
    alpha: float = 0.05
    ddf: str = "Satterthwaite"
    family: str = "gaussian"
    link: str = "identity"
    deviance: float = np.nan
    correlation: str = ""

    def _header(self) -> list[str]:
        groups = ", ".join(f"{g} ({n})" for g, n in self.n_groups.items()) or "none"
        if self.method not in ("REML", "ML"):  # glmer's header: Laplace or AGQ
            return [
                f"Generalized linear mixed model fit by maximum likelihood ({self.method})",
                f"Family: {self.family} ({self.link})",
                f"Observations: {self.n_obs}   Groups: {groups}",
                # two lines: one would be wider than a terminal's or the docs' code blocks
                f"log-likelihood: {self.llf:.4f}   deviance: {self.deviance:.4f}   df: {self.df_model}",
                f"AIC: {self.aic:.4f}   BIC: {self.bic:.4f}",
                f"Converged: {'yes' if self.converged else 'NO'}   "
                f"Singular fit: {'YES' if self.singular else 'no'}",
            ]
        crit = "REML criterion" if self.method == "REML" else "deviance"
        return [
            f"Linear mixed model fit by {'REML' if self.method == 'REML' else 'maximum likelihood'}",
            f"Observations: {self.n_obs}   Groups: {groups}",
        ] + ([f"Residual correlation: {self.correlation}"] if self.correlation else []) + [
            f"{crit}: {-2.0 * self.llf:.4f}   log-likelihood: {self.llf:.4f}   df: {self.df_model}",
            f"AIC: {self.aic:.4f}   BIC: {self.bic:.4f}",
            f"Converged: {'yes' if self.converged else 'NO'}   "
            f"Singular fit: {'YES' if self.singular else 'no'}",
        ]

    def _random_rows(self) -> tuple[list[str], list[list[str]]]:
        return random_effects_rows(self.random_effects)

    def _fixed_rows(self) -> tuple[list[str], list[list[str]]]:
        lo, hi = self.alpha / 2.0, 1.0 - self.alpha / 2.0
        fe = self.fixed_effects
        if self.ddf == "asymptotic":
            header = ["", "Estimate", "Std.Error", "z value", "Pr(>|z|)", f"[{lo:g}", f"{hi:g}]"]
            rows = [[str(name), _fmt(r.estimate), _fmt(r.std_error), _fmt(r.z_value, ".4g"),
                     _fmt_p(r.p_value), _fmt(r.ci_lower), _fmt(r.ci_upper)]
                    if np.isfinite(r.estimate) else [str(name)] + ["NA"] * 6
                    for name, r in zip(fe.index, fe.itertuples())]
            return header, rows
        header = ["", "Estimate", "Std.Error", "df", "t value", "Pr(>|t|)", f"[{lo:g}", f"{hi:g}]"]
        # df = inf is the normal approximation (see ``ddf``), not a missing value
        rows = [[str(name), _fmt(r.estimate), _fmt(r.std_error),
                 "inf" if r.df == np.inf else _fmt(r.df, ".4g"),
                 _fmt(r.t_value, ".4g"), _fmt_p(r.p_value), _fmt(r.ci_lower), _fmt(r.ci_upper)]
                if np.isfinite(r.estimate) else [str(name)] + ["NA"] * 7  # dropped as aliased
                for name, r in zip(fe.index, fe.itertuples())]
        return header, rows

    def _fixed_title(self) -> str:
        if self.ddf == "asymptotic":
            return "Fixed effects (Wald z tests)"
        if self.ddf in ("Satterthwaite", "Kenward-Roger"):
            return f"Fixed effects ({self.ddf} df)"
        return "Fixed effects (normal approximation: Satterthwaite df unavailable for this fit)"

    def __str__(self) -> str:
        return "\n".join(self._header() + [
            "", "Random effects:", _text_table(*self._random_rows(), left=2),
            "", self._fixed_title() + ":", _text_table(*self._fixed_rows(), left=1),
        ])

    def __repr__(self) -> str:
        return self.__str__()

    def _repr_html_(self) -> str:
        def table(header, rows, left):
            def cell(tag, v, j):
                align = "left" if j < left else "right"
                return f'<{tag} style="text-align:{align}">{html.escape(v)}</{tag}>'
            head = "".join(cell("th", v, j) for j, v in enumerate(header))
            body = "".join(
                "<tr>" + "".join(cell("td", v, j) for j, v in enumerate(r)) + "</tr>" for r in rows
            )
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

        head = "<br>".join(html.escape(line) for line in self._header())
        return (f"<div><p>{head}</p><p><b>Random effects</b></p>{table(*self._random_rows(), 2)}"
                f"<p><b>{html.escape(self._fixed_title())}</b></p>{table(*self._fixed_rows(), 1)}</div>")


def summary(est: Any, alpha: float = 0.05, ddf: str | None = None) -> Summary:
    """Fixed effects with t (or z) tests, random effects and model information.

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        A fitted mixed model.
    alpha : float, default=0.05
        One minus the level of the fixed effects' confidence intervals.
    ddf : {None, "satterthwaite", "kenward-roger", "asymptotic"}, default=None
        lmerTest's ``summary(fit, ddf = ...)``: Satterthwaite's df with ``cov_fe_``, or
        Kenward-Roger's adjusted standard errors and df (REML fits); ``"asymptotic"``
        (also ``"chi2"``): Wald z tests, glmer's, the only tests of a model whose
        dispersion is fixed (binomial, Poisson). None: Satterthwaite where the model
        estimates its dispersion, else asymptotic.

    Returns
    -------
    Summary
        The tables and the model information. Prints as a compact table; renders as HTML in notebooks.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.summary : The same, as a method.
    mixedlm_sklearn.MixedGLMClassifier.summary : The summary of a GLMM, as a method.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> s = est.summary()
    >>> s.fixed_effects[["estimate", "std_error", "df"]].round(3)
                 estimate  std_error    df
    (Intercept)   251.405      6.825  17.0
    Days           10.467      1.546  17.0
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
    model = fitted_model(est)
    ddf = choose_df(model, ddf, ("satterthwaite", "kenward-roger", "asymptotic"))
    beta, se = est.fe_params_, est.bse_
    if model.rank is not None:  # dropped (aliased) columns: NaN as lm's NA, not the 0 of coef_
        beta = beta.where(model.rank.kept)
    information = dict(
        random_effects=_random_effects_table(est), method=model.method, n_obs=model.n_obs,
        n_groups={t.factor: int(t.n_levels) for t in model.terms},
        llf=float(est.llf_), aic=float(est.aic_), bic=float(est.bic_), df_model=int(est.df_model_),
        converged=bool(est.converged_), singular=bool(est.singular_), alpha=alpha,
        family=model.family.describe(), link=model.family.link.name,
        # lme4's deviance() of a GLMM: the sum of squared deviance residuals (not -2 logLik)
        deviance=np.nan if model.scale_estimated else float(est.deviance_),
        correlation="" if model.correlation is None else model.correlation.describe())
    if ddf == "asymptotic":
        z = beta / se
        q = stats.norm.ppf(1.0 - alpha / 2.0)
        fixed = pd.DataFrame({
            "estimate": beta, "std_error": se, "z_value": z,
            "p_value": 2.0 * stats.norm.sf(np.abs(z)),
            "ci_lower": beta - q * se, "ci_upper": beta + q * se,
        }, index=beta.index)
        return Summary(fixed_effects=fixed, ddf="asymptotic", **information)
    if ddf == "kenward-roger":
        kr = kenward_roger_model(est)
        p = kr.cov_beta.shape[0]
        kept = np.ones(p, dtype=bool) if model.rank is None else model.rank.kept
        se_kept = np.sqrt(np.diag(kr.cov_beta_adj))
        df_kept = kr.row_ddf(np.eye(p))
        se = pd.Series(np.nan, index=beta.index, name=se.name)
        se[kept] = se_kept
        df = np.full(len(beta), np.nan)
        df[kept] = df_kept
    else:
        df = satterthwaite_df(est)
    t_value = beta / se
    q = stats.t.ppf(1.0 - alpha / 2.0, df)
    fixed = pd.DataFrame({
        "estimate": beta,
        "std_error": se,
        "df": df,
        "t_value": t_value,
        "p_value": 2.0 * stats.t.sf(np.abs(t_value), df),
        "ci_lower": beta - q * se,
        "ci_upper": beta + q * se,
    }, index=beta.index)
    return Summary(fixed_effects=fixed, ddf="Kenward-Roger" if ddf == "kenward-roger" else "Satterthwaite",
                   **information)
