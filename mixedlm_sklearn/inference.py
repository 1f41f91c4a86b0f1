"""Inference for a fitted :class:`~mixedlm_sklearn.MixedLMRegressor`: lme4's and lmerTest's numbers.

* Standard errors and Wald intervals of the fixed effects, ``Cov(beta) = sigma^2 A^{-1}``
  (lme4's ``vcov`` and ``confint(method = "Wald")``, normal quantiles).
* Satterthwaite degrees of freedom for t and F tests of the fixed effects (lmerTest;
  Kuznetsova, Brockhoff & Christensen 2017, JSS 82(13), sec. 3.1 and 3.2): for a contrast
  ``l``, ``df = 2 (l'Cl)^2 / (g'Vg)`` with ``C = Cov(beta)`` seen as a function of the
  variance parameters ``varpar = (theta, sigma)``, ``g`` its gradient and ``V`` twice the
  inverse Hessian of the deviance in ``varpar`` (sigma *not* profiled; REML criterion for
  REML fits). Derivatives are central differences with one Richardson step.
* Profile-likelihood intervals (lme4's ``profile``/``confint``; Bates et al. 2015, JSS
  67(1), sec. 5.1) on lme4's scale: per random-effects term the standard deviations and
  correlations, then ``sigma``, then the fixed effects. For a parameter ``psi``,
  ``zeta(psi) = sign(psi - psi_hat) sqrt(dev(psi) - dev_min)`` with ``dev(psi)`` the
  deviance minimised over all other parameters; the bounds solve ``|zeta| = z_{1-alpha/2}``
  (found by root finding, not read off a grid). As in lme4, REML fits are profiled on the
  *maximum-likelihood* deviance (``profile.merMod`` refits with ML first; the shared
  references confirm it: lme4's REML and ML sleepstudy intervals agree to 2e-6 relative).
* Likelihood-ratio tests between nested fits, AIC/BIC with lme4's parameter count.

Everything is computed from the deviance object of the fit: ``solve(theta)`` (beta,
``r2``, ``deviance``, ``scale``, ``cov_beta()``), ``dof``, ``n_theta``, ``reml`` and
``stats``. Two functions know the single-factor model (:func:`_terms`, the map from
``theta`` to the covariance of each random-effects term, and :func:`_ml_fit`, the ML
refit); a model with several terms needs only those two extended.
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats
from threadpoolctl import threadpool_limits

from ._deviance import ProfiledDeviance, Solution, lambda_from_theta, theta_index
from ._optimize import fit_deviance

__all__ = [
    "Summary",
    "WaldTestResult",
    "LRTestResult",
    "summary",
    "conf_int",
    "profile",
    "wald_test",
    "lr_test",
    "satterthwaite_df",
]


# ---- variance parameters on lme4's scale ----------------------------------------------------


@dataclass(frozen=True)
class _ReTerm:
    """One random-effects term: its grouping factor, effect names and ``theta`` entries."""

    group: str
    names: tuple[str, ...]
    diagonal: bool
    theta: slice

    @property
    def q(self) -> int:
        return len(self.names)

    @cached_property
    def layout(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of each sd/cor parameter in the covariance, in lme4's order.

        The covariance's lower triangle column by column: ``sd_1, cor_21, ..., sd_2, ...``
        (a standard deviation for each diagonal entry, a correlation below it); the order
        of ``theta`` in lme4, so the same index pairs locate ``theta`` in ``Lambda``.
        """
        return theta_index(self.q, self.diagonal)

    def param_names(self) -> list[str]:
        return [
            f"sd_{self.names[r]}|{self.group}" if r == c
            else f"cor_{self.names[r]}.{self.names[c]}|{self.group}"
            for r, c in zip(*self.layout)
        ]


def _terms(est: Any) -> list[_ReTerm]:
    """The random-effects terms of a fitted model (one grouping factor, or none)."""
    model = est.model_
    if not est.n_groups_:
        return []
    dev = model.deviance
    return [_ReTerm(model.group_name, tuple(model.re_names), dev.diagonal, slice(0, dev.n_theta))]


def _ml_fit(est: Any) -> tuple[ProfiledDeviance, Solution]:
    """The ML deviance and its optimum (a REML fit is refitted, starting from its theta)."""
    model = est.model_
    dev = model.deviance
    if not dev.reml:
        return dev, model.solution
    if not est.n_groups_:  # no random effects: theta stays 0, only the criterion changes
        ml_dev = ProfiledDeviance(dev.stats, reml=False, diagonal=dev.diagonal)
        return ml_dev, ml_dev.solve(model.solution.theta)
    ml_dev, ml_sol, _ = fit_deviance(dev.stats, reml=False, diagonal=dev.diagonal,
                                     theta0=model.solution.theta)
    return ml_dev, ml_sol


def _theta_to_sdcor(theta: np.ndarray, sigma: float, terms: list[_ReTerm]) -> np.ndarray:
    """lme4's standard deviations and correlations (:meth:`_ReTerm.layout` order) of ``theta``."""
    out = []
    for t in terms:
        lam = lambda_from_theta(theta[t.theta], t.q, t.diagonal)
        rel = lam @ lam.T
        sd = np.sqrt(np.diag(rel))
        rows, cols = t.layout
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


def _sdcor_to_theta(
    sdcor: np.ndarray, sigma: float, terms: list[_ReTerm], n_theta: int
) -> np.ndarray | None:
    """Inverse of :func:`_theta_to_sdcor`; None if the correlations are no correlation matrix."""
    theta = np.zeros(n_theta)  # entries of no term (a fit without random effects) stay 0
    pos = 0
    for t in terms:
        rows, cols = t.layout
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
        lam = (values[diag] / sigma)[:, None] * L
        theta[t.theta] = lam[rows, cols]
    return theta


def _deviance_at_sigma(dev: ProfiledDeviance, sol: Solution, sigma: float) -> float:
    """The deviance at ``(theta, sigma)`` with sigma *not* profiled out.

    For fixed ``theta`` the (ML or REML) deviance in sigma is ``c + dof log(sigma^2) +
    r2 / sigma^2``, minimal at ``s2 = r2 / dof`` where it equals the profiled value, so
    ``D(theta, sigma) = D_prof(theta) + dof (s2/sigma^2 - log(s2/sigma^2) - 1)``.
    """
    ratio = sol.r2 / dev.dof / sigma**2
    return sol.deviance + dev.dof * (ratio - np.log(ratio) - 1.0)


# ---- numerical derivatives (central differences, one Richardson step) ----------------------


def _hessian(f: Callable[[np.ndarray], float], x: np.ndarray, h: np.ndarray) -> np.ndarray:
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


def _jacobian(F: Callable[[np.ndarray], np.ndarray], x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``dF/dx_k`` stacked on the first axis."""

    def at(h):
        E = np.diag(h)
        return np.stack([(F(x + E[k]) - F(x - E[k])) / (2.0 * h[k]) for k in range(x.size)])

    return (4.0 * at(h / 2.0) - at(h)) / 3.0


# ---- Satterthwaite -----------------------------------------------------------------------


@dataclass(frozen=True)
class _VarparModel:
    """Cov(beta) as a function of ``varpar = (theta, sigma)`` at the optimum (lmerTest)."""

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


def _varpar_model(est: Any) -> _VarparModel:
    model = est.model_
    dev, sol = model.deviance, model.solution
    # Without random effects theta is not a parameter: varpar is sigma alone, and the df
    # come out as the residual df of least squares (n - p for REML).
    n_free = dev.n_theta if est.n_groups_ else 0
    x0 = np.append(sol.theta[:n_free], np.sqrt(sol.scale))

    def solve(v):
        return dev.solve(np.concatenate([v[:-1], sol.theta[n_free:]]))

    def deviance(v):
        return _deviance_at_sigma(dev, solve(v), v[-1])

    def cov_beta(v):
        s = solve(v)
        return v[-1] ** 2 * s.cov_beta() / s.scale

    # Steps of 1% of the parameter: the Richardson step removes the O(h^2) error, and
    # smaller steps lose more to rounding in the deviance than they gain (on Orthodont,
    # 0.1% steps move the df by 6e-5 relative, 1% steps agree with lmerTest to 3e-7).
    # theta entries are relative scales (order 0.01-10), so 1e-3 is a sensible absolute
    # step at 0 (a singular fit); the deviance is even in a zero diagonal entry of Lambda,
    # so stepping to negative values is harmless.
    h = 1e-2 * np.maximum(np.abs(x0), 0.1)
    h[-1] = 1e-2 * x0[-1]
    with threadpool_limits(limits=1, user_api="blas"):
        H = _hessian(deviance, x0, h)
        J = _jacobian(cov_beta, x0, h)
    # lmerTest's choice: a generalised inverse on the positive eigenvalues, so a flat
    # direction (a variance on its bound) does not blow the df up.
    w, U = np.linalg.eigh(0.5 * (H + H.T))
    pos = w > 1e-8
    vcov = 2.0 * (U[:, pos] / w[pos]) @ U[:, pos].T
    return _VarparModel(est.cov_fe_, J, vcov)


def satterthwaite_df(est: Any, L: Any | None = None) -> np.ndarray:
    """Satterthwaite degrees of freedom of contrasts of the fixed effects (lmerTest).

    Parameters
    ----------
    est : fitted MixedLMRegressor
    L : array-like of shape (r, p) or (p,), optional
        Contrast rows; default the identity (one df per fixed effect).

    Returns
    -------
    ndarray of shape (r,)
    """
    vp = _varpar_model(est)
    p = vp.cov_beta.shape[0]
    L = np.eye(p) if L is None else np.atleast_2d(np.asarray(L, dtype=float))
    return vp.contrast_df(L)


# ---- Wald tests --------------------------------------------------------------------------


@dataclass(frozen=True)
class WaldTestResult:
    """A Wald test of ``L beta = rhs``.

    Attributes
    ----------
    statistic : float
        F statistic ``(L b - rhs)' (L C L')^- (L b - rhs) / rank`` (with one row, the
        squared t statistic).
    df_num : int
        Rank of ``L C L'``.
    df_denom : float
        Denominator degrees of freedom (Satterthwaite); ``inf`` for the chi-square test.
    pvalue : float
    estimate : ndarray
        ``L b - rhs``.
    method : str
        ``"satterthwaite"`` (F test) or ``"chi2"``.
    """

    statistic: float
    df_num: int
    df_denom: float
    pvalue: float
    estimate: np.ndarray
    method: str

    def __str__(self) -> str:
        if self.method == "chi2":
            return (f"Wald chi2 test: chi2 = {self.statistic * self.df_num:.4g}, "
                    f"df = {self.df_num}, p = {self.pvalue:.4g}")
        return (f"Wald F test (Satterthwaite): F = {self.statistic:.4g}, df = "
                f"({self.df_num}, {self.df_denom:.4g}), p = {self.pvalue:.4g}")


def _contrast_matrix(L: Any, names: list[str]) -> np.ndarray:
    p = len(names)
    if isinstance(L, str):
        L = [L]
    if isinstance(L, pd.DataFrame):
        missing = [c for c in L.columns if c not in names]
        if missing:
            raise ValueError(f"L has columns {missing} that are not fixed effects {names}")
        return L.reindex(columns=names, fill_value=0.0).to_numpy(dtype=float)
    if isinstance(L, Sequence) and len(L) > 0 and all(isinstance(v, str) for v in L):
        unknown = [v for v in L if v not in names]
        if unknown:
            raise ValueError(f"unknown fixed effect(s) {unknown}; the fixed effects are {names}")
        return np.eye(p)[[names.index(v) for v in L]]
    M = np.atleast_2d(np.asarray(L, dtype=float))
    if M.ndim != 2 or M.shape[1] != p:
        raise ValueError(f"L must have {p} columns (one per fixed effect {names}); got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError("L contains NaN or infinite values")
    return M


def _combined_ddf(nu: np.ndarray) -> float:
    """Denominator df of an F test from the df of its independent t components.

    Fai & Cornelius (1996), as lmerTest: with ``E = sum nu_m / (nu_m - 2)``, the F
    statistic's ``ddf = 2 E / (E - r)``; 2 when some ``nu_m <= 2`` (no finite moments).
    """
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < 1e-8):
        return float(nu.mean())
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - nu.size)


def wald_test(est: Any, L: Any, rhs: Any = None, ddf: str = "satterthwaite") -> WaldTestResult:
    """Wald test of the linear hypothesis ``L beta = rhs`` on the fixed effects.

    Parameters
    ----------
    est : fitted MixedLMRegressor
    L : str, sequence of str, array-like of shape (r, p) or (p,), or DataFrame
        Names of fixed effects (joint test that they are all 0), a contrast matrix whose
        columns follow ``est.fe_params_``, or a DataFrame with fixed-effect names as columns.
    rhs : array-like of shape (r,), optional
        Hypothesised values of ``L beta``; default 0.
    ddf : {"satterthwaite", "chi2"}
        F test with Satterthwaite denominator df (lmerTest's ``contest``), or the
        asymptotic chi-square test.

    Returns
    -------
    WaldTestResult

    Notes
    -----
    ``L C L'`` is diagonalised, ``L C L' = P D P'``; the rows of ``P'L`` are independent
    t statistics whose Satterthwaite df ``nu_m`` combine into the F test's denominator
    df (Kuznetsova et al. 2017, sec. 3.2). A rank-deficient ``L`` is tested on its rank.
    """
    if ddf not in ("satterthwaite", "chi2"):
        raise ValueError(f"ddf must be 'satterthwaite' or 'chi2', got {ddf!r}")
    names = list(est.fe_params_.index)
    M = _contrast_matrix(L, names)
    r = M.shape[0]
    c = np.zeros(r) if rhs is None else np.asarray(rhs, dtype=float).reshape(-1)
    if c.shape != (r,):
        raise ValueError(f"rhs must have {r} values (one per row of L), got {c.size}")
    estimate = M @ est.fe_params_.to_numpy() - c
    d, P = np.linalg.eigh(M @ est.cov_fe_ @ M.T)
    d, P = d[::-1], P[:, ::-1]
    # rank as lmerTest's contestMD decides it: eigenvalues above sqrt(eps) * the largest
    keep = d > max(np.sqrt(np.finfo(float).eps) * d[0], 0.0)
    rank = int(keep.sum())
    if rank == 0:
        raise ValueError("L @ cov(beta) @ L.T is zero: the hypothesis tests nothing")
    d, P = d[keep], P[:, keep]
    F = float(np.sum((P.T @ estimate) ** 2 / d) / rank)
    if ddf == "chi2":
        return WaldTestResult(F, rank, np.inf, float(stats.chi2.sf(F * rank, rank)), estimate, "chi2")
    nu = _varpar_model(est).contrast_df(P.T @ M)
    df_denom = _combined_ddf(nu)
    return WaldTestResult(F, rank, df_denom, float(stats.f.sf(F, rank, df_denom)), estimate,
                          "satterthwaite")


# ---- profile likelihood -----------------------------------------------------------------

_INNER_FTOL = 1e-11
_INNER_GTOL = 1e-6
# |zeta - target| accepted at a bound: 1e-6 of a standard error, far below the 1% goal.
_ROOT_ZTOL = 1e-6


class _Profiler:
    """Profiles of lme4's parameters on the ML deviance of a fit.

    Parameters are ``psi = (sd/cor of each term, sigma, beta)``. The deviance as a function
    of ``psi`` comes from the PLS solution at ``theta(psi)``: sigma enters through
    :func:`_deviance_at_sigma`, and fixing ``beta_j = b`` adds ``(b - beta_j(theta))^2 /
    (A^{-1}_jj sigma^2)`` (the penalised RSS is quadratic in beta with Hessian ``A``, so
    minimising over the other fixed effects leaves this term). Every profile point
    minimises over the variance parameters (``sigma`` included) with L-BFGS-B,
    warm-started from the nearest point already computed.
    """

    def __init__(self, est: Any) -> None:
        model = est.model_
        self.dev, sol = _ml_fit(est)
        self.terms = _terms(est)
        sigma = float(np.sqrt(sol.scale))
        sdcor = _theta_to_sdcor(sol.theta, sigma, self.terms)
        self.n_var = sdcor.size + 1
        self.names = [n for t in self.terms for n in t.param_names()] + ["sigma"] + list(model.fe_names)
        self.estimate = np.concatenate([sdcor, [sigma], sol.beta])
        self.dev_min = sol.deviance
        kinds = [("sd" if r == c else "cor") for t in self.terms for r, c in zip(*t.layout)]
        self.kinds = kinds + ["sigma"] + ["beta"] * sol.beta.size
        inf = np.inf
        limits = {"sd": (0.0, inf), "cor": (-1.0, 1.0), "sigma": (0.0, inf), "beta": (-inf, inf)}
        self.lower = np.array([limits[k][0] for k in self.kinds])
        self.upper = np.array([limits[k][1] for k in self.kinds])
        # Scales of the optimiser's variables (so finite-difference steps mean the same
        # thing for every parameter) and of the first steps of the root search.
        var_scale = np.array([max(v, 0.1 * sigma) if k == "sd" else 1.0
                              for v, k in zip(sdcor, kinds)] + [sigma])
        self.var_scale = var_scale
        self.var_lower = np.append(self.lower[: self.n_var - 1], 1e-6 * sigma) / var_scale
        self.var_upper = self.upper[: self.n_var] / var_scale
        se_beta = np.sqrt(np.diag(sol.cov_beta()))
        self.step = np.concatenate([
            [(0.5 * v if v > 0 else 0.5 * sigma) if k == "sd" else 0.3 for v, k in zip(sdcor, kinds)],
            [0.1 * sigma],
            2.0 * se_beta,
        ])
        self._warm: dict[int, list[tuple[float, np.ndarray]]] = {}
        self._zeta: dict[tuple[int, float], float] = {}

    def _deviance(self, var: np.ndarray, fixed_beta: tuple[int, float] | None) -> float:
        sigma = var[-1]
        theta = _sdcor_to_theta(var[:-1], sigma, self.terms, self.dev.n_theta)
        if theta is None:  # correlations outside the correlation matrices (q >= 3 only)
            return self.dev_min + 1e10
        sol = self.dev.solve(theta)
        value = _deviance_at_sigma(self.dev, sol, sigma)
        if fixed_beta is not None:
            j, b = fixed_beta
            a_inv_jj = sol.cov_beta()[j, j] / sol.scale
            value += (b - sol.beta[j]) ** 2 / (a_inv_jj * sigma**2)
        return value

    def profiled_deviance(self, k: int, value: float) -> float:
        """Minimum of the deviance over everything else, with parameter ``k`` at ``value``."""
        n_var = self.n_var
        free = np.arange(n_var) if k >= n_var else np.delete(np.arange(n_var), k)
        fixed_beta = (k - n_var, value) if k >= n_var else None
        warm = self._warm.setdefault(k, [(self.estimate[k], self.estimate[:n_var] / self.var_scale)])
        near = sorted(warm, key=lambda item: abs(item[0] - value))[:2]
        start = near[0][1].copy()
        if len(near) == 2 and near[0][0] != near[1][0]:
            # The optimum moves smoothly along a profile: extrapolate from the two nearest points.
            (c1, v1), (c2, v2) = near
            start += (value - c1) / (c1 - c2) * (v1 - v2)
            start = np.clip(start, self.var_lower, self.var_upper)
        # The deviance is even in a standard deviation, so 0 is a stationary point that a
        # gradient method never leaves, even where the minimum has moved inside (profiling
        # the mean of a singular fit): start such entries off the bound.
        start[(self.var_lower == 0.0) & (start == 0.0)] = 0.1
        var = start.copy()
        if k < n_var:
            var[k] = value / self.var_scale[k]

        def objective(x):
            var[free] = x
            return self._deviance(var * self.var_scale, fixed_beta)

        res = optimize.minimize(
            objective, start[free], method="L-BFGS-B",
            bounds=optimize.Bounds(self.var_lower[free], self.var_upper[free]),
            options={"ftol": _INNER_FTOL, "gtol": _INNER_GTOL, "maxiter": 500},
        )
        var[free] = res.x
        warm.append((value, var.copy()))
        return float(res.fun)

    def zeta(self, k: int, value: float) -> float:
        """Signed square root of the deviance increase with parameter ``k`` at ``value``."""
        key = (k, float(value))
        if key not in self._zeta:
            excess = 0.0
            if value != self.estimate[k]:
                excess = max(self.profiled_deviance(k, value) - self.dev_min, 0.0)
            self._zeta[key] = float(np.sign(value - self.estimate[k]) * np.sqrt(excess))
        return self._zeta[key]

    def bound(self, k: int, z: float, side: int) -> float:
        """Where ``zeta = side * z``, or the parameter's limit if zeta stays short of it."""
        est = self.estimate[k]
        limit = self.lower[k] if side < 0 else self.upper[k]
        if est == limit:  # e.g. a variance estimated as exactly 0
            return float(limit)
        # A limit of 0 for sigma is never reached (the deviance diverges); for a standard
        # deviation it is a real value of the parameter whose zeta decides the bound.
        open_limit = self.kinds[k] == "sigma" and side < 0
        target = side * z
        inner, z_inner = est, 0.0
        x = est + side * self.step[k]
        for _ in range(100):
            if side * (x - limit) >= 0:
                x = 0.5 * (inner + limit) if open_limit else limit
            zx = self.zeta(k, x)
            if side * zx >= z:
                return self._root(k, target, inner, z_inner, x, zx)
            if x == limit:
                return float(limit)
            # Secant toward the target with a small overshoot (to bracket the root in one
            # step where zeta is nearly linear), at most 4x the distance from the estimate.
            slope = (zx - z_inner) / (x - inner)
            jump = abs((target - zx) / slope) * 1.2 if slope > 0 else np.inf
            inner, z_inner = x, zx
            x = x + side * min(jump, 4.0 * abs(x - est))
        raise RuntimeError(f"the profile of {self.names[k]} does not reach |zeta| = {z:g}")

    def _root(self, k: int, target: float, a: float, za: float, b: float, zb: float) -> float:
        """``zeta(k, x) = target`` in the bracket ``[a, b]``: safeguarded secant.

        zeta is close to linear, so secant steps through the two latest points converge
        in two or three evaluations; a step that would leave the bracket is replaced by
        regula falsi on the bracket (Illinois variant, which keeps it shrinking).
        """
        fa, fb = za - target, zb - target
        last = [(a, fa), (b, fb)]
        x = b
        for _ in range(100):
            (x1, f1), (x2, f2) = last
            x = x2 - f2 * (x2 - x1) / (f2 - f1) if f2 != f1 else np.nan
            if not min(a, b) < x < max(a, b):
                x = b - fb * (b - a) / (fb - fa)
            fx = self.zeta(k, x) - target
            if abs(fx) < _ROOT_ZTOL or abs(b - a) <= 1e-12 * abs(x):
                break
            if fx * fb < 0:
                a, fa = b, fb
            else:
                fa *= 0.5
            b, fb = x, fx
            last = [last[1], (x, fx)]
        return float(x)

    def indices(self, which: Any) -> list[int]:
        if which is None:
            return list(range(len(self.names)))
        if isinstance(which, str):
            if which == "variance":
                return list(range(self.n_var))
            if which == "fixed":
                return list(range(self.n_var, len(self.names)))
            which = [which]
        unknown = [w for w in which if w not in self.names]
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; the parameters are {self.names}")
        return [self.names.index(w) for w in which]


def _check_alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


def profile(est: Any, which: Any = None, alpha_max: float = 0.01, n_points: int = 21) -> pd.DataFrame:
    """Profile zeta of lme4's parameters: the data behind the profile intervals.

    Parameters
    ----------
    est : fitted MixedLMRegressor
    which : None, str or list of str
        Parameter names as in :func:`conf_int` (``"sd_(Intercept)|Subject"``, ``"sigma"``,
        fixed-effect names), or ``"variance"`` / ``"fixed"``; default all.
    alpha_max : float, default 0.01
        The grid of each parameter spans ``|zeta| <= z_{1 - alpha_max/2}`` (or up to the
        parameter's limit: 0 for a standard deviation, +-1 for a correlation).
    n_points : int, default 21
        Points per parameter, equally spaced on each side of the estimate (which is one).

    Returns
    -------
    DataFrame
        Columns ``param``, ``value``, ``zeta`` (signed square root of the deviance increase;
        0 at the ML estimate, increasing in ``value``), rows sorted by value per parameter.

    Notes
    -----
    REML fits are profiled on the ML deviance, as lme4 does.
    """
    z_max = stats.norm.ppf(1.0 - _check_alpha(alpha_max) / 2.0)
    if n_points < 3:
        raise ValueError(f"n_points must be at least 3, got {n_points}")
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        prof = _Profiler(est)
        for k in prof.indices(which):
            est_k = prof.estimate[k]
            lo, hi = prof.bound(k, z_max, -1), prof.bound(k, z_max, +1)
            half = n_points // 2
            below = np.linspace(est_k, lo, half + 1)[1:] if lo < est_k else np.empty(0)
            above = np.linspace(est_k, hi, n_points - half)[1:] if hi > est_k else np.empty(0)
            # Outward from the estimate, so each point warm-starts from its neighbour.
            values = np.concatenate([[est_k], below, above])
            zetas = [prof.zeta(k, v) for v in values]
            order = np.argsort(values)
            rows.extend((prof.names[k], values[i], zetas[i]) for i in order)
    return pd.DataFrame(rows, columns=["param", "value", "zeta"])


def conf_int(est: Any, alpha: float = 0.05, method: str = "wald", which: Any = None) -> pd.DataFrame:
    """Confidence intervals.

    Parameters
    ----------
    est : fitted MixedLMRegressor
    alpha : float, default 0.05
        1 - confidence level.
    method : {"wald", "profile"}
        ``"wald"``: fixed effects, ``estimate -+ z_{1-alpha/2} * std_error`` (lme4's
        ``confint(method = "Wald")``). ``"profile"``: profile-likelihood intervals of the
        variance parameters on lme4's scale, then of the fixed effects (lme4's
        ``confint(method = "profile")``).
    which : None, str or list of str
        Profile only: parameter names, or ``"variance"`` / ``"fixed"``; default all.

    Returns
    -------
    DataFrame
        Columns ``lower`` and ``upper``, indexed by parameter name. Profile names follow
        lme4: per random-effects term ``sd_<effect>|<group>`` and
        ``cor_<effect1>.<effect2>|<group>`` (the covariance's lower triangle column by
        column), then ``sigma``, then the fixed effects.

    Notes
    -----
    Profile intervals of REML fits use the ML deviance, as lme4 does. A standard
    deviation whose profile does not reach the cutoff before 0 (always the case for an
    estimate of exactly 0) has the lower bound 0; a correlation likewise -1 or 1.
    """
    z = stats.norm.ppf(1.0 - _check_alpha(alpha) / 2.0)
    if method == "wald":
        if which is not None:
            raise ValueError("which= applies to method='profile' only")
        fe, se = est.fe_params_, est.bse_
        return pd.DataFrame({"lower": fe - z * se, "upper": fe + z * se}, index=fe.index)
    if method != "profile":
        raise ValueError(f"method must be 'wald' or 'profile', got {method!r}")
    with threadpool_limits(limits=1, user_api="blas"):
        prof = _Profiler(est)
        idx = prof.indices(which)
        bounds = [(prof.bound(k, z, -1), prof.bound(k, z, +1)) for k in idx]
    return pd.DataFrame(bounds, index=pd.Index([prof.names[k] for k in idx], name="parameter"),
                        columns=["lower", "upper"])


# ---- summary ------------------------------------------------------------------------------


def _random_effects_table(est: Any) -> pd.DataFrame:
    """Per term its variances, then its correlations; the residual last."""
    sol = est.model_.solution
    rows = []
    for t in _terms(est):
        lam = lambda_from_theta(sol.theta[t.theta], t.q, t.diagonal)
        cov = est.scale_ * lam @ lam.T
        sd = np.sqrt(np.diag(cov))
        for r in range(t.q):
            rows.append((t.group, t.names[r], "", cov[r, r], sd[r], np.nan))
        for r, c in zip(*t.layout):
            if r != c:
                cor = cov[r, c] / (sd[r] * sd[c]) if sd[r] > 0 and sd[c] > 0 else np.nan
                rows.append((t.group, t.names[r], t.names[c], cov[r, c], np.nan, cor))
    rows.append(("Residual", "", "", est.scale_, np.sqrt(est.scale_), np.nan))
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


@dataclass(frozen=True)
class Summary:
    """Summary of a fitted linear mixed model (lme4's ``summary`` with lmerTest's tests).

    Attributes
    ----------
    fixed_effects : DataFrame
        Indexed by fixed effect; columns ``estimate``, ``std_error``, ``df`` (Satterthwaite),
        ``t_value``, ``p_value`` (two-sided t test on ``df``), ``ci_lower``, ``ci_upper``
        (``estimate -+ t_{df, 1-alpha/2} * std_error``, the interval matching the test;
        :func:`conf_int` gives lme4's normal-quantile Wald intervals).
    random_effects : DataFrame
        Columns ``group``, ``name``, ``name2``, ``variance``, ``std_dev``, ``correlation``.
        Per term a row per variance (``name2`` empty), then a row per pair of effects
        (``name``, ``name2``; ``variance`` holds their covariance, ``correlation`` their
        correlation); ``Residual`` last.
    method : {"REML", "ML"}
    n_obs : int
    n_groups : dict
        Levels per grouping factor.
    llf : float
        Log-likelihood (for REML fits -1/2 the REML criterion, as lme4's ``logLik``).
    aic, bic : float
    df_model : int
        Parameters counted by AIC/BIC (lme4's ``df``).
    converged, singular : bool
    alpha : float
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

    def _header(self) -> list[str]:
        groups = ", ".join(f"{g} ({n})" for g, n in self.n_groups.items()) or "none"
        crit = "REML criterion" if self.method == "REML" else "deviance"
        return [
            f"Linear mixed model fit by {'REML' if self.method == 'REML' else 'maximum likelihood'}",
            f"Observations: {self.n_obs}   Groups: {groups}",
            f"{crit}: {-2.0 * self.llf:.4f}   log-likelihood: {self.llf:.4f}   "
            f"AIC: {self.aic:.4f}   BIC: {self.bic:.4f}   df: {self.df_model}",
            f"Converged: {'yes' if self.converged else 'NO'}   "
            f"Singular fit: {'YES' if self.singular else 'no'}",
        ]

    def _random_rows(self) -> tuple[list[str], list[list[str]]]:
        """lme4's layout: a row per variance, correlations to the earlier effects beside it."""
        re = self.random_effects
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

    def _fixed_rows(self) -> tuple[list[str], list[list[str]]]:
        lo, hi = self.alpha / 2.0, 1.0 - self.alpha / 2.0
        header = ["", "Estimate", "Std.Error", "df", "t value", "Pr(>|t|)", f"[{lo:g}", f"{hi:g}]"]
        fe = self.fixed_effects
        rows = [[str(name), _fmt(r.estimate), _fmt(r.std_error), _fmt(r.df, ".4g"),
                 _fmt(r.t_value, ".4g"), _fmt_p(r.p_value), _fmt(r.ci_lower), _fmt(r.ci_upper)]
                for name, r in zip(fe.index, fe.itertuples())]
        return header, rows

    def __str__(self) -> str:
        return "\n".join(self._header() + [
            "", "Random effects:", _text_table(*self._random_rows(), left=2),
            "", "Fixed effects (Satterthwaite df):", _text_table(*self._fixed_rows(), left=1),
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
                f"<p><b>Fixed effects</b> (Satterthwaite df)</p>{table(*self._fixed_rows(), 1)}</div>")


def summary(est: Any, alpha: float = 0.05) -> Summary:
    """Fixed effects with Satterthwaite t tests, random effects and model information.

    Parameters
    ----------
    est : fitted MixedLMRegressor
    alpha : float, default 0.05
        1 - level of the fixed effects' confidence intervals.

    Returns
    -------
    Summary
        Prints as a compact table; renders as HTML in notebooks.
    """
    alpha = _check_alpha(alpha)
    beta, se = est.fe_params_, est.bse_
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
    model = est.model_
    return Summary(
        fixed_effects=fixed,
        random_effects=_random_effects_table(est),
        method="REML" if model.deviance.reml else "ML",
        n_obs=int(model.deviance.stats.n_obs),
        n_groups={t.group: est.n_groups_ for t in _terms(est)},
        llf=float(est.llf_),
        aic=float(est.aic_),
        bic=float(est.bic_),
        df_model=int(est.df_model_),
        converged=bool(est.converged_),
        singular=bool(est.singular_),
        alpha=alpha,
    )


# ---- likelihood-ratio tests ---------------------------------------------------------------


@dataclass(frozen=True)
class LRTestResult:
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
    llf_restricted, llf_full : float
    boundary : bool
        Whether ``pvalue`` is the boundary-corrected one.
    """

    statistic: float
    df: int
    pvalue: float
    llf_restricted: float
    llf_full: float
    boundary: bool = False

    def __str__(self) -> str:
        kind = "50:50 chi2 mixture (boundary)" if self.boundary else "chi2"
        return (f"Likelihood-ratio test: statistic = {self.statistic:.4f}, df = {self.df}, "
                f"p = {self.pvalue:.4g} ({kind}); llf {self.llf_restricted:.4f} -> {self.llf_full:.4f}")


def _check_fitted(est: Any, role: str) -> None:
    if not hasattr(est, "model_"):
        raise TypeError(f"{role} must be a fitted MixedLMRegressor")


def _same_data(a: Any, b: Any) -> None:
    """Raise unless two fits saw the same response (and, where comparable, the same groups)."""
    sa, sb = a.model_.deviance.stats, b.model_.deviance.stats
    problems = []
    if sa.n_obs != sb.n_obs:
        problems.append(f"{sa.n_obs} vs {sb.n_obs} observations")
    else:
        if not np.isclose(sa.xyxy[-1, -1], sb.xyxy[-1, -1], rtol=1e-10, atol=0.0):
            problems.append("different responses (sum of y^2 differs)")
        if not np.isclose(sa.sum_log_weights, sb.sum_log_weights, rtol=1e-10, atol=1e-10):
            problems.append("different sample weights")
        # sum(y) is visible when both designs have the intercept column.
        if a.fe_params_.index[0] == "(Intercept)" == b.fe_params_.index[0] and not np.isclose(
                sa.xyxy[0, -1], sb.xyxy[0, -1], rtol=1e-10, atol=1e-12 * np.sqrt(sa.xyxy[-1, -1])):
            problems.append("different responses (sum of y differs)")
        if (a.n_groups_ and b.n_groups_ and a.model_.group_name == b.model_.group_name
                and not (np.array_equal(a.groups_, b.groups_)
                         and np.array_equal(sa.counts, sb.counts))):
            problems.append(f"different levels of the grouping factor {a.model_.group_name!r}")
    if problems:
        raise ValueError("the two fits used different data: " + "; ".join(problems)
                         + ". A likelihood-ratio test needs both models fitted to the same rows.")


def _same_fixed_effects(a: Any, b: Any) -> bool:
    xa, xb = a.model_.deviance.stats.xyxy, b.model_.deviance.stats.xyxy
    return xa.shape == xb.shape and np.allclose(xa[:-1], xb[:-1], rtol=1e-10, atol=0.0)


def lr_test(restricted: Any, full: Any, *, boundary: bool = False) -> LRTestResult:
    """Likelihood-ratio test of ``restricted`` against ``full`` (nested fits, same data).

    Parameters
    ----------
    restricted, full : fitted MixedLMRegressor
        The smaller and the larger model, fitted to the same rows.
    boundary : bool, default False
        For a test of a variance component (the restricted model puts a variance on its
        boundary 0), use the 50:50 mixture of chi-square distributions with ``df - 1`` and
        ``df`` degrees of freedom (Self & Liang 1987; Stram & Lee 1994); with ``df = 1``
        this halves the chi-square p-value. The plain chi-square test is conservative there.

    Returns
    -------
    LRTestResult

    Raises
    ------
    ValueError
        If the fits used different data; if ``full`` has no more parameters than
        ``restricted``; if one fit is REML and the other ML; or if REML fits differ in
        their fixed effects (REML likelihoods of different fixed effects are not comparable:
        refit both with ``reml=False``).
    """
    _check_fitted(restricted, "restricted")
    _check_fitted(full, "full")
    reml_r, reml_f = restricted.model_.deviance.reml, full.model_.deviance.reml
    _same_data(restricted, full)
    if reml_r != reml_f:
        raise ValueError("one fit is REML and the other ML; their likelihoods are not "
                         "comparable. Refit both with reml=False.")
    if reml_r and not _same_fixed_effects(restricted, full):
        raise ValueError("REML likelihoods of models with different fixed effects are not "
                         "comparable (REML integrates the fixed effects out). Refit both "
                         "models with reml=False (maximum likelihood) to test fixed effects.")
    df = int(full.df_model_ - restricted.df_model_)
    if df <= 0:
        raise ValueError(f"full has {full.df_model_} parameters and restricted "
                         f"{restricted.df_model_}: pass the smaller (nested) model first")
    statistic = 2.0 * (full.llf_ - restricted.llf_)
    if statistic < -1e-6 * max(1.0, abs(full.llf_)):
        warnings.warn(f"the restricted model fits better than the full one (statistic "
                      f"{statistic:.3g}): the models may not be nested, or a fit did not "
                      "converge", UserWarning, stacklevel=2)
    s = max(statistic, 0.0)
    p = float(stats.chi2.sf(s, df))
    if boundary:
        # chi2 with 0 df is a point mass at 0: its tail beyond s > 0 is 0.
        below = float(stats.chi2.sf(s, df - 1)) if df > 1 else float(s <= 0.0)
        p = 0.5 * (below + p)
    return LRTestResult(float(statistic), df, p, float(restricted.llf_), float(full.llf_), boundary)
