"""R-squared and intraclass correlation of a linear mixed model, as performance 0.10.2.

Nakagawa & Schielzeth (2013, Methods Ecol. Evol. 4(2)); Johnson (2014, Methods Ecol.
Evol. 5(9)) for random slopes; Nakagawa, Johnson & Schielzeth (2017, J. R. Soc.
Interface 14). With the variance of the fixed-effects predictions, of the random effects
and of the residuals,

    var_fixed    = var(X beta)                          (n - 1 in the denominator)
    var_random   = sum_k mean_r z_rk' Sigma_k z_rk = sum_k tr(Z_k'Z_k Sigma_k) / n
    var_residual = sigma^2

(``z_rk`` the row ``r`` of term ``k``'s design, ``Sigma_k`` its covariance: for a random
intercept ``var_random`` is its variance, with random slopes Johnson's mean over the rows),

    R2_marginal    = var_fixed / (var_fixed + var_random + var_residual)
    R2_conditional = (var_fixed + var_random) / (var_fixed + var_random + var_residual)
    ICC_adjusted   = var_random / (var_random + var_residual)
    ICC_unadjusted = var_random / (var_fixed + var_random + var_residual)

performance (through insight 0.19) leaves out terms with one level per row and, for a
singular fit (a variance parameter below 1e-5), reports no random-effect variance: the
marginal R2 is then ``var_fixed / (var_fixed + var_residual)`` and the conditional R2 and
the ICCs are missing (NaN here). It takes each term's ``Z_k`` from the columns of the
*fixed-effects* design with the random effects' names, silently dropping a random slope
whose variable is not a fixed effect, and it loses the slope variance of ``(x || g)``
(lme4 splits it into two terms of the same name and insight keeps one); the functions
here use every term's own ``Z_k``.

For a fit, the moments come from its cross-products (:func:`variance_components`), so
chunked and Dask fits have them too. Two choices where the definition leaves room: with
prior weights the averages over the rows are weighted by them (the moments the engine
keeps; performance ignores the weights), and with a residual variance per stratum the
residual variance is the rows' average ``sum_s n_s sigma_s^2 / n``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._parameters import fitted_model
from ._protocol import require

__all__ = ["VarianceComponents", "R2", "ICC", "variance_components", "r2", "icc",
           "components_from_moments", "components_from_designs"]

# performance's check_singularity: lme4's isSingular(fit, tol = 1e-5)
_SINGULAR_TOL = 1e-5


def _performance_text(title: str, rows: Sequence[tuple[str, float]]) -> str:
    """performance's printing: ``# title``, a blank line, then the labels right-aligned and
    each value with 3 decimals (insight's ``format_value``; a missing value as ``NA``)."""
    width = max(len(label) for label, _ in rows)
    lines = [f"# {title}", ""]
    for label, value in rows:
        shown = "NA" if not np.isfinite(value) else f"{value:.3f}"
        lines.append(f"  {label.rjust(width)}: {shown}")
    return "\n".join(lines)


def _html(text: str) -> str:
    head, _, body = text.partition("\n\n")
    return (f"<div class=\"mixedlm-result\"><p><b>{html.escape(head.lstrip('# '))}</b></p>"
            f"<pre>{html.escape(body)}</pre></div>")


@dataclass(frozen=True)
class R2:  # numpydoc ignore=PR01
    """Nakagawa's marginal and conditional R2.

    Attributes
    ----------
    marginal : float
        The fixed effects' share of the variance.
    conditional : float
        The fixed and random effects' share.

    See Also
    --------
    mixedlm_sklearn.inference.r2.r2 : Make one.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> fit = lmer("Reaction ~ Days + (1 | Subject)", load_sleepstudy())
    >>> r = fit.r2()
    >>> bool(0 < r.marginal < r.conditional < 1)
    True
    >>> print(r)
    # R2 for Mixed Models
    <BLANKLINE>
      Conditional R2: 0.704
         Marginal R2: 0.280
    """

    marginal: float
    conditional: float

    def __str__(self) -> str:
        return _performance_text("R2 for Mixed Models", [("Conditional R2", self.conditional),
                                                         ("Marginal R2", self.marginal)])

    def _repr_html_(self) -> str:
        return _html(str(self))


@dataclass(frozen=True)
class ICC:  # numpydoc ignore=PR01
    """Adjusted and unadjusted (conditional) intraclass correlation.

    Attributes
    ----------
    adjusted : float
        Random-effects variance over random plus residual variance.
    unadjusted : float
        Random-effects variance over the total, the fixed effects' variance included.

    See Also
    --------
    mixedlm_sklearn.inference.r2.icc : Make one.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> fit = lmer("Reaction ~ Days + (1 | Subject)", load_sleepstudy())
    >>> i = fit.icc()
    >>> bool(0 < i.unadjusted < i.adjusted < 1)
    True
    >>> print(i)
    # Intraclass Correlation Coefficient
    <BLANKLINE>
        Adjusted ICC: 0.589
      Unadjusted ICC: 0.424
    """

    adjusted: float
    unadjusted: float

    def __str__(self) -> str:
        return _performance_text("Intraclass Correlation Coefficient",
                                 [("Adjusted ICC", self.adjusted), ("Unadjusted ICC", self.unadjusted)])

    def _repr_html_(self) -> str:
        return _html(str(self))


@dataclass(frozen=True)
class VarianceComponents:
    """``fixed``, ``random``, ``residual`` variances (insight's ``get_variance``).

    ``singular``: the fit is singular as performance decides it (a diagonal entry of
    theta below 1e-5); then the random-effect variance is not used.
    """

    fixed: float
    random: float
    residual: float
    singular: bool = False

    def r2(self) -> R2:
        """Marginal and conditional R2 (performance ``r2_nakagawa``); for a singular fit
        the marginal R2 leaves out the random variance and the conditional is NaN.

        Examples
        --------
        >>> VarianceComponents(6.0, 3.0, 1.0).r2()
        R2(marginal=0.6, conditional=0.9)
        >>> VarianceComponents(6.0, 3.0, 1.0, singular=True).r2()
        R2(marginal=0.8571428571428571, conditional=nan)
        """
        if self.singular:
            return R2(self.fixed / (self.fixed + self.residual), np.nan)
        total = self.fixed + self.random + self.residual
        return R2(self.fixed / total, (self.fixed + self.random) / total)

    def icc(self) -> ICC:
        """Adjusted and unadjusted ICC (performance ``icc``); NaN for a singular fit.

        Examples
        --------
        >>> VarianceComponents(6.0, 3.0, 1.0).icc()
        ICC(adjusted=0.75, unadjusted=0.3)
        """
        if self.singular:
            return ICC(np.nan, np.nan)
        return ICC(self.random / (self.random + self.residual),
                   self.random / (self.fixed + self.random + self.residual))


def components_from_moments(
    beta: Any, xtx: Any, x_sum: Any, n_obs: float, ztz_terms: Sequence[Any],
    covs: Sequence[Any], sigma2: float, n_levels: Sequence[int] | None = None,
    singular: bool = False,
) -> VarianceComponents:
    """The three variances from cross-products.

    Parameters
    ----------
    beta : array-like of shape (p,)
    xtx : array-like of shape (p, p)
        ``X'X``.
    x_sum : array-like of shape (p,)
        Column sums of ``X``.
    n_obs : float
        Number of rows (their total weight, with prior weights).
    ztz_terms : sequence of (q_k, q_k) arrays
        Per random-effects term ``Z_k'Z_k`` summed over all rows (not expanded by level).
    covs : sequence of (q_k, q_k) arrays
        Each term's covariance.
    sigma2 : float
    n_levels : sequence of int, optional
        Levels per term: a term with one level per row is left out, as performance does.
    singular : bool

    Examples
    --------
    >>> import numpy as np
    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> vc = components_from_moments([1.0, 2.0], X.T @ X, X.sum(0), 4,
    ...                              [np.array([[4.0]])], [np.array([[3.0]])], 1.5)
    >>> round(vc.fixed, 6), vc.random, vc.residual
    (6.666667, 3.0, 1.5)
    """
    beta = np.asarray(beta, dtype=float).reshape(-1)
    xtx = np.asarray(xtx, dtype=float)
    mean_pred = float(np.asarray(x_sum, dtype=float) @ beta) / n_obs
    ss = float(beta @ xtx @ beta) - n_obs * mean_pred**2
    fixed = ss / (n_obs - 1)
    random = 0.0
    for k, (S, C) in enumerate(zip(ztz_terms, covs)):
        if n_levels is not None and n_levels[k] == n_obs:
            continue  # an observation-level term (performance leaves it out)
        random += float(np.sum(np.atleast_2d(S) * np.atleast_2d(C).T)) / n_obs
    return VarianceComponents(fixed, random, float(sigma2), bool(singular))


def components_from_designs(X: Any, beta: Any, Z_terms: Sequence[Any], covs: Sequence[Any],
                            sigma2: float, n_levels: Sequence[int] | None = None
                            ) -> VarianceComponents:
    """The three variances from the designs (the definition, written out).

    Parameters
    ----------
    X : array-like of shape (n, p)
        Fixed-effects design (intercept included).
    beta : array-like of shape (p,)
    Z_terms : sequence of (n, q_k) arrays
        Each random-effects term's design (its columns, not expanded by level).
    covs : sequence of (q_k, q_k) arrays
    sigma2 : float
    n_levels : sequence of int, optional
        Levels per term (observation-level terms are left out).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> vc = components_from_designs(X, [1.0, 2.0], [np.ones((4, 1))], [[[3.0]]], 1.5)
    >>> round(vc.fixed, 6), vc.random, vc.residual
    (6.666667, 3.0, 1.5)
    """
    X = np.asarray(X, dtype=float)
    Zs = [np.asarray(Z, dtype=float).reshape(X.shape[0], -1) for Z in Z_terms]
    return components_from_moments(beta, X.T @ X, X.sum(axis=0), X.shape[0],
                                   [Z.T @ Z for Z in Zs], covs, sigma2, n_levels)


def variance_components(est: Any) -> VarianceComponents:
    """The variances of the fixed part, the random effects and the residuals of a fit.

    From the fit's cross-products (module docstring): ``X'X``, the column sums of ``X``
    (the intercept's row of ``X'X``, or the stratum counts), ``sum_l Z_kl'Z_kl`` per term.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> vc = variance_components(lmer("Reaction ~ Days + (1 | Subject)", load_sleepstudy()))
    >>> round(vc.fixed, 2), round(vc.random, 2), round(vc.residual, 2)
    (908.95, 1378.18, 960.46)
    """
    model = require(fitted_model(est), "variance-components")
    sol = model.solution
    if model.fe_names[0] != "(Intercept)":
        raise ValueError("R2 needs the intercept's column (the mean of the predictions) in the "
                         "fixed effects: fit with fit_intercept=True")
    beta, xtx, x_sum, n, ztz = model.variance_moments()
    lower = model.terms.lower_bounds()
    singular = bool(np.any(sol.theta[lower == 0.0] < _SINGULAR_TOL))
    residual = model.distribution_variance()
    return components_from_moments(beta, xtx, x_sum, n, ztz, sol.cov_re(), residual,
                                   [t.n_levels for t in model.terms], singular)


def r2(est: Any) -> R2:
    """Compute Nakagawa and Schielzeth's marginal and conditional R2 (performance ``r2_nakagawa``).

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted linear mixed model.

    Returns
    -------
    R2
        ``.marginal`` (the fixed effects' share of the variance) and ``.conditional``
        (fixed and random effects'); random slopes enter by Johnson's (2014) extension.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.r2 : The same, as a method.
    mixedlm_sklearn.inference.r2.icc : The intraclass correlation.

    References
    ----------
    .. [1] Nakagawa, S. and Schielzeth, H. (2013). A general and simple method for
       obtaining R2 from generalized linear mixed-effects models. Methods in Ecology
       and Evolution 4(2), 133-142.
    .. [2] Johnson, P. C. D. (2014). Extension of Nakagawa & Schielzeth's R2GLMM to
       random slopes models. Methods in Ecology and Evolution 5(9), 944-946.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> est = lmer("distance ~ age * Sex + (1 | Subject)", load_orthodont())
    >>> r = est.r2()
    >>> round(r.marginal, 4), round(r.conditional, 4)  # performance: 0.4098, 0.7827
    (0.4098, 0.7827)
    """
    return variance_components(est).r2()


def icc(est: Any) -> ICC:
    """Compute the adjusted and unadjusted intraclass correlation (performance ``icc``).

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted linear mixed model.

    Returns
    -------
    ICC
        ``.adjusted`` and ``.unadjusted``.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.icc : The same, as a method.
    mixedlm_sklearn.inference.r2.r2 : Nakagawa's R2.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> est = lmer("distance ~ age * Sex + (1 | Subject)", load_orthodont())
    >>> i = est.icc()
    >>> round(i.adjusted, 4), round(i.unadjusted, 4)  # performance: 0.6318, 0.3729
    (0.6318, 0.3729)
    """
    return variance_components(est).icc()
