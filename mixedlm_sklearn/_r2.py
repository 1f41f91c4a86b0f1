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
whose variable is not a fixed effect; the functions here take ``Z_k`` as given (pass
those columns to reproduce that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["VarianceComponents", "R2", "ICC", "variance_components",
           "variance_components_from_moments", "r2_nakagawa", "icc"]


@dataclass(frozen=True)
class VarianceComponents:
    """``fixed``, ``random``, ``residual`` variances (insight's ``get_variance``)."""

    fixed: float
    random: float
    residual: float


@dataclass(frozen=True)
class R2:
    """Nakagawa's marginal and conditional R2."""

    marginal: float
    conditional: float


@dataclass(frozen=True)
class ICC:
    """Adjusted and unadjusted (conditional) intraclass correlation."""

    adjusted: float
    unadjusted: float


def variance_components_from_moments(
    beta: Any, xtx: Any, x_sum: Any, n_obs: int, ztz_terms: Sequence[Any],
    covs: Sequence[Any], sigma2: float, n_levels: Sequence[int] | None = None,
) -> VarianceComponents:
    """The three variances from cross-products (what the engine's statistics hold).

    Parameters
    ----------
    beta : array-like of shape (p,)
    xtx : array-like of shape (p, p)
        ``X'X`` (unweighted).
    x_sum : array-like of shape (p,)
        Column sums of ``X``.
    n_obs : int
    ztz_terms : sequence of (q_k, q_k) arrays
        Per random-effects term ``Z_k'Z_k`` summed over all rows (not expanded by level).
    covs : sequence of (q_k, q_k) arrays
        Each term's covariance.
    sigma2 : float
    n_levels : sequence of int, optional
        Levels per term: a term with one level per row is left out, as performance does.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> vc = variance_components_from_moments([1.0, 2.0], X.T @ X, X.sum(0), 4,
    ...                                       [np.array([[4.0]])], [np.array([[3.0]])], 1.5)
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
    return VarianceComponents(fixed, random, float(sigma2))


def variance_components(X: Any, beta: Any, Z_terms: Sequence[Any], covs: Sequence[Any],
                        sigma2: float, n_levels: Sequence[int] | None = None
                        ) -> VarianceComponents:
    """The three variances from the designs.

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
    >>> vc = variance_components(X, [1.0, 2.0], [np.ones((4, 1))], [[[3.0]]], 1.5)
    >>> round(vc.fixed, 6), vc.random, vc.residual
    (6.666667, 3.0, 1.5)
    """
    X = np.asarray(X, dtype=float)
    Zs = [np.asarray(Z, dtype=float).reshape(X.shape[0], -1) for Z in Z_terms]
    return variance_components_from_moments(beta, X.T @ X, X.sum(axis=0), X.shape[0],
                                            [Z.T @ Z for Z in Zs], covs, sigma2, n_levels)


def r2_nakagawa(vc: VarianceComponents, singular: bool = False) -> R2:
    """Marginal and conditional R2 (performance ``r2_nakagawa``).

    ``singular``: the fit is singular (performance: a variance parameter below 1e-5);
    then the random-effect variance is not used: the conditional R2 is NaN.

    Examples
    --------
    >>> r = r2_nakagawa(VarianceComponents(6.0, 3.0, 1.0))
    >>> r.marginal, r.conditional
    (0.6, 0.9)
    >>> r2_nakagawa(VarianceComponents(6.0, 3.0, 1.0), singular=True)
    R2(marginal=0.8571428571428571, conditional=nan)
    """
    if singular:
        return R2(vc.fixed / (vc.fixed + vc.residual), np.nan)
    total = vc.fixed + vc.random + vc.residual
    return R2(vc.fixed / total, (vc.fixed + vc.random) / total)


def icc(vc: VarianceComponents, singular: bool = False) -> ICC:
    """Adjusted and unadjusted ICC (performance ``icc``); NaN for a singular fit.

    Examples
    --------
    >>> icc(VarianceComponents(6.0, 3.0, 1.0))
    ICC(adjusted=0.75, unadjusted=0.3)
    """
    if singular:
        return ICC(np.nan, np.nan)
    return ICC(vc.random / (vc.random + vc.residual),
               vc.random / (vc.fixed + vc.random + vc.residual))
