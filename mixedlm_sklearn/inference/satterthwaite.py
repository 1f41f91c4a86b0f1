"""Satterthwaite degrees of freedom for t and F tests of the fixed effects (lmerTest).

Kuznetsova, Brockhoff & Christensen (2017, JSS 82(13), sec. 3.1 and 3.2): for a contrast
``l``, ``df = 2 (l'Cl)^2 / (g'Vg)`` with ``C = Cov(beta)`` seen as a function of the
variance parameters ``varpar``, ``g`` its gradient and ``V`` twice the inverse Hessian of
the deviance in ``varpar`` (sigma *not* profiled; the REML criterion for REML fits).
Derivatives are central differences with one Richardson step.

``varpar = (theta, eta, sigma)``: ``eta_s = log delta_s`` are the log ratios of the
residual standard deviations of the non-reference strata (none without strata); with
correlated residuals the correlation's internal parameter follows ``eta``
(:meth:`~mixedlm_sklearn._model.FittedModel.variance_parameters`), so ``Cov(beta)``'s
dependence on it and its uncertainty enter the df. The
ratios are estimated like ``theta``, so their uncertainty belongs in ``V``. (The df do not
depend on how the variance parameters are parametrised: at the optimum ``g'H^{-1}g`` is
invariant.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._threads import single_threaded_blas
from ._parameters import deviance_at_sigma, fitted_model, hessian, jacobian
from ._protocol import require

__all__ = ["satterthwaite_df", "VarparModel", "varpar_model"]


@dataclass(frozen=True)
class VarparModel:
    """Cov(beta) as a function of ``varpar`` at the optimum (lmerTest)."""

    cov_beta: np.ndarray  # (p, p) at the optimum
    jacobian: np.ndarray  # (k, p, p): d Cov(beta) / d varpar_k
    vcov_varpar: np.ndarray  # (k, k): 2 H^{-1}

    def contrast_df(self, L: np.ndarray) -> np.ndarray:
        """Satterthwaite df of each row ``l`` of ``L``: ``2 (l'Cl)^2 / (g'Vg)``."""
        L = np.atleast_2d(L)
        var = np.einsum("ri,ij,rj->r", L, self.cov_beta, L)
        grad = np.einsum("ri,kij,rj->rk", L, self.jacobian, L)
        denom = np.einsum("rk,kl,rl->r", grad, self.vcov_varpar, grad)
        with np.errstate(divide="ignore"):
            return np.where(denom > 0, 2.0 * var**2 / np.where(denom > 0, denom, 1.0), np.inf)


def varpar_model(est: Any) -> VarparModel:
    """lmerTest's variance-parameter model of a fit (computed once per fit: its Hessian
    costs tens of deviance evaluations)."""
    model = require(fitted_model(est), "satterthwaite")
    if "varpar" not in model.derived:
        model.derived["varpar"] = _varpar_model(model)
    return model.derived["varpar"]


def _varpar_model(model: Any) -> VarparModel:
    dev, sol = model.deviance, model.solution
    # (theta, eta[, the residual correlation's parameter]) and the evaluation there (in a
    # whitened basis where that keeps steps in badly scaled slopes accurate)
    x_fit, evaluate = model.variance_parameters()
    x0 = np.append(x_fit, np.sqrt(sol.scale))
    solved: dict[bytes, Any] = {}

    def solve(v):
        # Steps in sigma alone reuse the solution at the same x: on a crossed model that
        # halves the number of factorisations.
        key = v[:-1].tobytes()
        if key not in solved:
            solved[key] = evaluate(v[:-1])
        return solved[key]

    def deviance(v):
        return deviance_at_sigma(solve(v), dev.dof, v[-1])

    def cov_beta(v):
        s = solve(v)
        return v[-1] ** 2 * s.a_inv

    # Steps of 1% of the parameter: the Richardson step removes the O(h^2) error, and
    # smaller steps lose more to rounding in the deviance than they gain (on Orthodont,
    # 0.1% steps move the df by 6e-5 relative, 1% steps agree with lmerTest to 3e-7).
    # theta entries are relative scales (order 0.01-10), so 1e-3 is a sensible absolute
    # step at 0 (a singular fit); the deviance is even in a zero diagonal entry of Lambda,
    # so stepping to negative values is harmless. Log ratios near 0 get the same 1e-3.
    h = 1e-2 * np.maximum(np.abs(x0), 0.1)
    h[-1] = 1e-2 * x0[-1]
    with single_threaded_blas():
        H = hessian(deviance, x0, h)
        J = jacobian(cov_beta, x0, h)
    # lmerTest's choice: a generalised inverse on the positive eigenvalues, so a flat
    # direction (a variance on its bound) does not blow the df up.
    w, U = np.linalg.eigh(0.5 * (H + H.T))
    pos = w > 1e-8
    vcov = 2.0 * (U[:, pos] / w[pos]) @ U[:, pos].T
    return VarparModel(sol.cov_beta(), J, vcov)


def satterthwaite_df(est: Any, L: Any | None = None) -> np.ndarray:
    """Satterthwaite degrees of freedom of contrasts of the fixed effects (lmerTest).

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted linear mixed model.
    L : array-like of shape (r, p) or (p,), optional
        Contrast rows; default the identity (one df per fixed effect).

    Returns
    -------
    ndarray of shape (r,)
        The degrees of freedom of each contrast row.

    See Also
    --------
    mixedlm_sklearn.inference.wald_test : F tests of several rows.
    mixedlm_sklearn.MixedLMRegressor.summary : The t tests of the fixed effects.

    References
    ----------
    .. [1] Kuznetsova, A., Brockhoff, P. B. and Christensen, R. H. B. (2017). lmerTest
       package: tests in linear mixed effects models. Journal of Statistical Software
       82(13).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> from mixedlm_sklearn.inference import satterthwaite_df
    >>> satterthwaite_df(est).round(3)
    array([17., 17.])
    """
    vp = varpar_model(est)
    p = len(est.fe_params_)
    L = np.eye(p) if L is None else np.atleast_2d(np.asarray(L, dtype=float))
    rank = fitted_model(est).rank
    if rank is None:
        return vp.contrast_df(L)
    # over all columns: a contrast of dropped (aliased) columns is not estimable: NaN
    ok = rank.estimable(L)
    df = np.full(L.shape[0], np.nan)
    if ok.any():
        df[ok] = vp.contrast_df(L[ok][:, rank.kept])
    return df
