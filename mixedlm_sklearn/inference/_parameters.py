"""lme4's parameters of a fitted model and the numerical derivatives inference needs.

Inference sees a fit only through :class:`~mixedlm_sklearn._model.FittedModel`: its
deviance of ``x = (theta, eta)``, the solution there and a refit. This module maps
``theta`` to lme4's scale (per term the standard deviations and correlations, then
``sigma``, then for residual strata the ratio ``delta_s`` of each stratum's residual
standard deviation to the reference's) and back.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._model import FittedModel
from .._terms import Terms
from ._protocol import spell_df

__all__ = ["fitted_model", "check_ddf", "n_parameters", "log_likelihood", "theta_to_sdcor", "sdcor_to_theta", "deviance_at_sigma", "hessian",
           "jacobian", "check_alpha", "ratio_names"]


def fitted_model(est: Any, role: str = "est") -> FittedModel:
    """The fitted model of an estimator (or the model itself), or a TypeError naming the argument."""
    if isinstance(est, FittedModel):
        return est
    model = getattr(est, "model_", None)
    if not isinstance(model, FittedModel):
        if hasattr(est, "many_"):
            raise TypeError(several_responses(role))
        raise TypeError(f"{role} must be a fitted mixed model (MixedLMRegressor, "
                        "MixedGLMClassifier or MixedGLMRegressor)")
    return model


def several_responses(role: str = "est") -> str:
    """The message for single-response inference asked of a multi-output fit."""
    return (f"{role} was fitted to several responses: use {role}.for_response(j) for one "
            "response's inference, or the tables across responses in "
            "mixedlm_sklearn.inference.many")


def n_parameters(model: FittedModel) -> int:
    """lme4's parameter count: fixed effects (kept), theta, the variance ratios, and sigma
    where the scale is estimated (:attr:`FittedModel.n_parameters`)."""
    return model.n_parameters


def log_likelihood(model: FittedModel) -> float:
    """lme4's ``logLik``: -1/2 the deviance (the REML criterion of a REML fit)."""
    return -0.5 * float(model.solution.deviance)


def check_alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


def check_ddf(ddf: Any, allowed: tuple[str, ...], name: str = "ddf") -> str:
    """A denominator-df method in canonical spelling (``"Kenward-Roger"``, ``"kenward_roger"``,
    ``"KR"`` -> ``"kenward-roger"``), or a ValueError listing the allowed ones."""
    canonical = spell_df(ddf)
    if canonical not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {ddf!r}")
    return canonical


def ratio_names(model: FittedModel) -> list[str]:
    """Names of the residual standard-deviation ratios (nlme's varIdent parameters)."""
    if model.strata is None:
        return []
    ref = model.strata[0]
    return [f"sigma_{label}/sigma_{ref}" for label in model.strata[1:]]


def theta_to_sdcor(theta: np.ndarray, sigma: float, terms: Terms) -> np.ndarray:
    """lme4's standard deviations and correlations (``theta``'s order) of ``theta``."""
    out = []
    for t, sl in zip(terms, terms.slices):
        lam = t.lam(theta[sl])
        rel = lam @ lam.T
        sd = np.sqrt(np.diag(rel))
        rows, cols = t.theta_position
        denom = sd[rows] * sd[cols]
        # A correlation is undefined when a standard deviation is 0; report 0 there.
        cor = np.divide(rel[rows, cols], denom, out=np.zeros(rows.size), where=denom > 0)
        out.append(np.where(rows == cols, sigma * sd[rows], cor))
    return np.concatenate(out) if out else np.empty(0)


def _psd_cholesky(R: np.ndarray) -> np.ndarray | None:
    """Lower factor of a positive *semi*-definite correlation matrix; None if indefinite.

    A correlation of +-1 is a legitimate point of a profile, where ``numpy``'s Cholesky
    would fail; a pivot that is zero (to rounding) gets a zero column.
    """
    q = R.shape[0]
    L = np.zeros_like(R)
    for j in range(q):
        d = R[j, j] - L[j, :j] @ L[j, :j]
        if d < -1e-10:
            return None
        L[j, j] = np.sqrt(max(d, 0.0))
        for i in range(j + 1, q):
            rest = R[i, j] - L[i, :j] @ L[j, :j]
            if L[j, j] > 1e-12:
                L[i, j] = rest / L[j, j]
            elif abs(rest) > 1e-10:
                return None
    return L


def sdcor_to_theta(sdcor: np.ndarray, sigma: float, terms: Terms) -> np.ndarray | None:
    """Inverse of :func:`theta_to_sdcor`; None if the correlations are no correlation matrix."""
    theta = np.zeros(terms.n_theta)
    pos = 0
    for t, sl in zip(terms, terms.slices):
        rows, cols = t.theta_position
        values = sdcor[pos:pos + rows.size]
        pos += rows.size
        diag = rows == cols
        R = np.eye(t.q)
        R[rows[~diag], cols[~diag]] = R[cols[~diag], rows[~diag]] = values[~diag]
        try:
            L = np.linalg.cholesky(R)
        except np.linalg.LinAlgError:  # a correlation of +-1, or not a correlation matrix
            L = _psd_cholesky(R)
            if L is None:
                return None
        sd = np.zeros(t.q)
        sd[rows[diag]] = values[diag]
        lam = (sd / sigma)[:, None] * L
        theta[sl] = lam[rows, cols]
    return theta


def deviance_at_sigma(sol: Any, dof: float, sigma: float) -> float:
    """The deviance at ``(x, sigma)`` with sigma *not* profiled out.

    For fixed ``x`` the (ML or REML) deviance in sigma is ``c + dof log(sigma^2) +
    r2 / sigma^2``, minimal at ``s2 = r2 / dof`` where it equals the profiled value, so
    ``D(x, sigma) = D_prof(x) + dof (s2/sigma^2 - log(s2/sigma^2) - 1)``.
    """
    ratio = sol.r2 / dof / sigma**2
    return sol.deviance + dof * (ratio - np.log(ratio) - 1.0)


# ---- numerical derivatives (central differences, one Richardson step) ----------------------


def hessian(f: Callable[[np.ndarray], float], x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Hessian of ``f`` at ``x`` by central differences with one Richardson step."""
    f0 = f(x)

    def at(h):
        k = x.size
        H = np.empty((k, k))
        E = np.diag(h)
        for i in range(k):
            H[i, i] = (f(x + E[i]) - 2.0 * f0 + f(x - E[i])) / h[i] ** 2
            for j in range(i):
                H[i, j] = H[j, i] = (
                    f(x + E[i] + E[j]) - f(x + E[i] - E[j]) - f(x - E[i] + E[j]) + f(x - E[i] - E[j])
                ) / (4.0 * h[i] * h[j])
        return H

    # The O(h^2) error of the central differences cancels between h and h/2.
    return (4.0 * at(h / 2.0) - at(h)) / 3.0


def jacobian(F: Callable[[np.ndarray], np.ndarray], x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``dF/dx_k`` stacked on the first axis (central differences, one Richardson step)."""

    def at(h):
        E = np.diag(h)
        return np.stack([(F(x + E[k]) - F(x - E[k])) / (2.0 * h[k]) for k in range(x.size)])

    return (4.0 * at(h / 2.0) - at(h)) / 3.0
