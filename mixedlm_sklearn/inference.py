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
``r2``, ``deviance``, ``scale``, ``cov_beta()``), ``dof``, ``n_theta`` and ``reml``;
single-factor fits (:class:`~mixedlm_sklearn._deviance.ProfiledDeviance`) and fits with
several grouping factors (:class:`~mixedlm_sklearn._crossed.CrossedDeviance`) share that
interface. What differs between them is confined to :func:`_terms` (the map from
``theta`` to the covariance of each random-effects term), :func:`_ml_fit` (the ML refit)
and :func:`_data` (what identifies the data of a fit, for the LR test's checks).

Heteroscedastic fits (``residual_groups``, nlme's ``varIdent``) have one more parameter
per non-reference stratum, the ratio ``delta_s`` of its residual standard deviation to
the reference stratum's. Wald intervals and LR tests need nothing beyond the fit; the
Satterthwaite df and the profiles treat the ratios as parameters like ``theta`` (their
uncertainty enters ``V`` and every profile is minimised over them), which needs each
stratum's statistics (``model_.strata``). Without them those two raise
``NotImplementedError`` rather than silently treating the ratios as known.
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ._crossed import CrossedDeviance, fit_crossed
from ._deviance import ProfiledDeviance, lambda_from_theta, theta_index
from ._heteroscedastic import combine_stats, fit_heteroscedastic
from ._optimize import fit_deviance, single_threaded_blas
from ._stats import GroupStats

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


def _several(est: Any) -> bool:
    """Whether the fit has several random-effects terms (the crossed/nested solver)."""
    return isinstance(est.model_.deviance, CrossedDeviance)


def _terms(est: Any) -> list[_ReTerm]:
    """The random-effects terms of a fitted model, in the order of their ``theta`` entries."""
    model = est.model_
    dev = model.deviance
    if _several(est):
        return [_ReTerm(name, tuple(model.re_names[name]), diagonal, sl)
                for name, (_, diagonal, sl) in zip(model.group_name, dev.term_slices())]
    if not est.n_groups_:
        return []
    return [_ReTerm(model.group_name, tuple(model.re_names), dev.diagonal, slice(0, dev.n_theta))]


def _rank(est: Any) -> Any:
    """The fit's :class:`~mixedlm_sklearn._validation.FixedEffectsRank` when aliased
    fixed-effects columns were dropped (the deviance knows the kept columns only), else None."""
    return getattr(est.model_, "rank", None)


def _kept_cov(est: Any) -> np.ndarray:
    """Cov(beta) of the kept fixed effects (``cov_fe_`` has NaN rows for dropped ones)."""
    rank = _rank(est)
    return est.cov_fe_ if rank is None else est.cov_fe_[np.ix_(rank.kept, rank.kept)]


def _n_obs(est: Any) -> int:
    dev = est.model_.deviance
    return int(dev.model.n if _several(est) else dev.stats.n_obs)


# ---- heteroscedastic residuals ------------------------------------------------------------


def _heteroscedastic(est: Any) -> bool:
    """Whether the fit has a residual variance per stratum (``residual_groups``)."""
    return len(getattr(est, "residual_var_", {})) > 1


@dataclass(frozen=True)
class _Strata:
    """The residual strata of a heteroscedastic fit: what the variance ratios act on.

    ``ratios`` are the fitted ``delta_s^2`` (reference stratum first, exactly 1).
    """

    stats: tuple
    labels: tuple
    ratios: np.ndarray
    diagonal: bool

    def deviance(self, ratios: np.ndarray, reml: bool) -> ProfiledDeviance:
        """The deviance in ``theta`` with the variance ratios held at ``ratios``."""
        return ProfiledDeviance(combine_stats(self.stats, ratios), reml=reml, diagonal=self.diagonal)


def _strata(est: Any, purpose: str) -> _Strata | None:
    """The strata of a heteroscedastic fit (None for one residual variance).

    Raises
    ------
    NotImplementedError
        For a heteroscedastic fit that does not keep its per-stratum statistics: without
        them the ratios could only be treated as known, which understates uncertainty.
    """
    if not _heteroscedastic(est):
        return None
    stored = getattr(est.model_, "strata", None)
    if stored is None:
        raise NotImplementedError(
            f"{purpose} of a fit with residual_groups treat the residual variance ratios as "
            "parameters, which needs each stratum's sufficient statistics, and this fit does "
            "not keep them (model_.strata). Available: conf_int(method='wald'), "
            "wald_test(..., ddf='chi2') and lr_test."
        )
    stats, labels = list(stored[0]), list(stored[1])
    # residual_var_ is in stratum order, the reference (ratio 1) first
    ratios = np.array(list(est.residual_var_.values()), dtype=float) / est.scale_
    if len(stats) != ratios.size:
        raise ValueError(f"model_.strata holds {len(stats)} strata but residual_var_ {ratios.size}")
    return _Strata(tuple(stats), tuple(labels), ratios, bool(est.model_.deviance.diagonal))


# ---- the maximum-likelihood fit (profiles use it) ---------------------------------------


class _MLFit(NamedTuple):
    """The ML deviance in ``theta``, its optimum and (heteroscedastic fits) the ratios there."""

    dev: Any
    sol: Any
    ratios: np.ndarray | None = None


def _ml_fit(est: Any, strata: _Strata | None = None) -> _MLFit:
    """The ML deviance and its optimum (a REML fit is refitted, starting from its theta)."""
    model = est.model_
    dev, sol = model.deviance, model.solution
    if strata is not None:
        if not dev.reml:
            return _MLFit(dev, sol, strata.ratios)
        ml_dev, ml_sol, _, ratios = fit_heteroscedastic(
            list(strata.stats), reml=False, diagonal=strata.diagonal, labels=list(strata.labels))
        return _MLFit(ml_dev, ml_sol, ratios)
    if not dev.reml:
        return _MLFit(dev, sol)
    if isinstance(dev, CrossedDeviance):
        ml_dev = CrossedDeviance(dev.model, reml=False)
        with single_threaded_blas():
            fit = fit_crossed(dev.model, reml=False, theta0=sol.theta)
            return _MLFit(ml_dev, ml_dev.solve(fit.theta))
    if not est.n_groups_:  # no random effects: theta stays 0, only the criterion changes
        ml_dev = ProfiledDeviance(dev.stats, reml=False, diagonal=dev.diagonal)
        return _MLFit(ml_dev, ml_dev.solve(sol.theta))
    ml_dev, ml_sol, _ = fit_deviance(dev.stats, reml=False, diagonal=dev.diagonal,
                                     theta0=sol.theta)
    return _MLFit(ml_dev, ml_sol)


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


def _deviance_at_sigma(dev: Any, sol: Any, sigma: float) -> float:
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
    """Cov(beta) as a function of ``varpar = (theta, [eta,] sigma)`` at the optimum (lmerTest)."""

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
    """lmerTest's variance-parameter model of the fit.

    ``varpar`` is ``(theta, sigma)``, with heteroscedastic residuals ``(theta, eta, sigma)``
    where ``eta_s = log delta_s`` are the log ratios of the non-reference strata's residual
    standard deviations to the reference's (``sigma``): the ratios are estimated like
    ``theta``, so their uncertainty belongs in ``V``. (The df do not depend on how the
    variance parameters are parametrised: at the optimum ``g'H^{-1}g`` is invariant.)
    """
    model = est.model_
    dev, sol = model.deviance, model.solution
    strata = _strata(est, "Satterthwaite degrees of freedom")
    # Without random effects theta is not a parameter: varpar is sigma alone, and the df
    # come out as the residual df of least squares (n - p for REML).
    n_free = dev.n_theta if est.n_groups_ else 0
    eta0 = np.empty(0) if strata is None else 0.5 * np.log(strata.ratios[1:])
    x0 = np.concatenate([sol.theta[:n_free], eta0, [np.sqrt(sol.scale)]])
    solved: dict[bytes, tuple[Any, Any]] = {}

    def solve(v):
        # Steps in sigma alone reuse the solution at the same (theta, eta): on a crossed
        # model that halves the number of factorisations.
        key = v[:-1].tobytes()
        if key not in solved:
            theta = np.concatenate([v[:n_free], sol.theta[n_free:]])
            d = dev
            if strata is not None:
                d = strata.deviance(np.exp(2.0 * np.concatenate([[0.0], v[n_free:-1]])), dev.reml)
            solved[key] = (d, d.solve(theta))
        return solved[key]

    def deviance(v):
        d, s = solve(v)
        return _deviance_at_sigma(d, s, v[-1])

    def cov_beta(v):
        s = solve(v)[1]
        return v[-1] ** 2 * s.cov_beta() / s.scale

    # Steps of 1% of the parameter: the Richardson step removes the O(h^2) error, and
    # smaller steps lose more to rounding in the deviance than they gain (on Orthodont,
    # 0.1% steps move the df by 6e-5 relative, 1% steps agree with lmerTest to 3e-7).
    # theta entries are relative scales (order 0.01-10), so 1e-3 is a sensible absolute
    # step at 0 (a singular fit); the deviance is even in a zero diagonal entry of Lambda,
    # so stepping to negative values is harmless. Log ratios near 0 get the same 1e-3.
    h = 1e-2 * np.maximum(np.abs(x0), 0.1)
    h[-1] = 1e-2 * x0[-1]
    with single_threaded_blas():
        H = _hessian(deviance, x0, h)
        J = _jacobian(cov_beta, x0, h)
    # lmerTest's choice: a generalised inverse on the positive eigenvalues, so a flat
    # direction (a variance on its bound) does not blow the df up.
    w, U = np.linalg.eigh(0.5 * (H + H.T))
    pos = w > 1e-8
    vcov = 2.0 * (U[:, pos] / w[pos]) @ U[:, pos].T
    return _VarparModel(_kept_cov(est), J, vcov)


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

    Raises
    ------
    NotImplementedError
        For a heteroscedastic fit that does not keep its per-stratum statistics: its
        variance ratios are parameters whose uncertainty the df must include.

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
    vp = _varpar_model(est)
    p = len(est.fe_params_)
    L = np.eye(p) if L is None else np.atleast_2d(np.asarray(L, dtype=float))
    rank = _rank(est)
    if rank is None:
        return vp.contrast_df(L)
    # over all columns: a contrast of dropped (aliased) columns is not estimable: NaN
    ok = rank.estimable(L)
    df = np.full(L.shape[0], np.nan)
    if ok.any():
        df[ok] = vp.contrast_df(L[ok][:, rank.kept])
    return df


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
    if M.ndim != 2:
        raise ValueError(f"L must be a vector or a matrix (one row per hypothesis, {p} columns "
                         f"for the fixed effects {names}); got a {M.ndim}-D array of shape {M.shape}")
    if M.shape[1] != p:
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

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> print(est.wald_test("Days"))
    Wald F test (Satterthwaite): F = 45.85, df = (1, 17), p = 3.264e-06
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
    rank = _rank(est)
    if rank is not None:
        ok = rank.estimable(M)
        if not ok.all():
            # as lmerTest: a hypothesis on aliased (dropped) columns has no test
            involved = [n for n, used in zip(rank.names, np.any(M[~ok] != 0, axis=0))
                        if used and n in rank.dropped_names]
            warnings.warn(f"rows {np.flatnonzero(~ok).tolist()} of L involve the fixed effect(s) "
                          f"{involved}, dropped from the fit as aliased: the hypothesis is not "
                          "estimable, its test is NaN", UserWarning, stacklevel=2)
            estimate[~ok] = np.nan
            return WaldTestResult(np.nan, r, np.nan, np.nan, estimate, ddf if ddf == "chi2" else "satterthwaite")
        M = M[:, rank.kept]
    d, P = np.linalg.eigh(M @ _kept_cov(est) @ M.T)
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

    Parameters are ``psi = (sd/cor of each term, sigma, [delta,] beta)``, ``delta`` the
    residual standard-deviation ratios of a heteroscedastic fit's non-reference strata
    (``sigma`` is then the reference stratum's). The deviance as a function of ``psi``
    comes from the PLS solution at ``theta(psi)`` (on the statistics reweighted by
    ``delta``): sigma enters through :func:`_deviance_at_sigma`, and fixing ``beta_j = b``
    adds ``(b - beta_j(theta))^2 / (A^{-1}_jj sigma^2)`` (the penalised RSS is quadratic in
    beta with Hessian ``A``, so minimising over the other fixed effects leaves this term).
    Every profile point minimises over the variance parameters (``sigma`` and ``delta``
    included) with L-BFGS-B, warm-started from the nearest point already computed.
    """

    def __init__(self, est: Any) -> None:
        model = est.model_
        self.terms = _terms(est)
        self.strata = _strata(est, "Profile-likelihood intervals")
        ml = _ml_fit(est, self.strata)
        self.dev, sol = ml.dev, ml.sol
        sigma = float(np.sqrt(sol.scale))
        sdcor = _theta_to_sdcor(sol.theta, sigma, self.terms)
        self.n_sdcor = sdcor.size
        delta, ratio_names = np.empty(0), []
        if self.strata is not None:
            delta = np.sqrt(ml.ratios[1:])
            ref = self.strata.labels[0]
            ratio_names = [f"sigma_{label}/sigma_{ref}" for label in self.strata.labels[1:]]
        self.n_var = sdcor.size + 1 + delta.size
        self.names = ([n for t in self.terms for n in t.param_names()] + ["sigma"] + ratio_names
                      + list(model.fe_names))
        rank = _rank(est)
        self.dropped = [] if rank is None else rank.dropped_names
        self.all_fixed = list(model.fe_names) if rank is None else list(rank.names)
        self.estimate = np.concatenate([sdcor, [sigma], delta, sol.beta])
        self.dev_min = sol.deviance
        kinds = [("sd" if r == c else "cor") for t in self.terms for r, c in zip(*t.layout)]
        self.kinds = kinds + ["sigma"] + ["ratio"] * delta.size + ["beta"] * sol.beta.size
        inf = np.inf
        limits = {"sd": (0.0, inf), "cor": (-1.0, 1.0), "sigma": (0.0, inf), "ratio": (0.0, inf),
                  "beta": (-inf, inf)}
        self.lower = np.array([limits[k][0] for k in self.kinds])
        self.upper = np.array([limits[k][1] for k in self.kinds])
        # Scales of the optimiser's variables (so finite-difference steps mean the same
        # thing for every parameter) and of the first steps of the root search. sigma and
        # the ratios never reach 0 (the deviance diverges there): a small positive floor.
        var_est, var_kinds = self.estimate[: self.n_var], self.kinds[: self.n_var]
        self.var_scale = np.array([max(v, 0.1 * sigma) if k == "sd" else 1.0 if k == "cor" else v
                                   for v, k in zip(var_est, var_kinds)])
        floor = np.where(np.isin(var_kinds, ["sigma", "ratio"]), 1e-6 * var_est, self.lower[: self.n_var])
        self.var_lower = floor / self.var_scale
        self.var_upper = self.upper[: self.n_var] / self.var_scale
        se_beta = np.sqrt(np.diag(sol.cov_beta()))
        first_step = {"cor": lambda v: 0.3, "sigma": lambda v: 0.1 * v, "ratio": lambda v: 0.1 * v,
                      "sd": lambda v: 0.5 * v if v > 0 else 0.5 * sigma}
        self.step = np.concatenate([[first_step[k](v) for v, k in zip(var_est, var_kinds)],
                                    2.0 * se_beta])
        self._warm: dict[int, list[tuple[float, np.ndarray]]] = {}
        self._zeta: dict[tuple[int, float], float] = {}
        self._reweighted: tuple[bytes, Any] | None = None

    def _deviance_at_ratios(self, delta: np.ndarray) -> Any:
        """The ML deviance in theta with the strata's SD ratios at ``delta``."""
        if self.strata is None:
            return self.dev
        key = delta.tobytes()
        # Consecutive evaluations mostly share delta (finite differences move one variable).
        if self._reweighted is None or self._reweighted[0] != key:
            ratios = np.concatenate([[1.0], delta**2])
            self._reweighted = (key, self.strata.deviance(ratios, reml=False))
        return self._reweighted[1]

    def _deviance(self, var: np.ndarray, fixed_beta: tuple[int, float] | None) -> float:
        k = self.n_sdcor
        sigma = var[k]
        theta = _sdcor_to_theta(var[:k], sigma, self.terms, self.dev.n_theta)
        if theta is None:  # correlations outside the correlation matrices (q >= 3 only)
            return self.dev_min + 1e10
        dev = self._deviance_at_ratios(var[k + 1:self.n_var])
        sol = dev.solve(theta)
        value = _deviance_at_sigma(dev, sol, sigma)
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
        open_limit = self.kinds[k] in ("sigma", "ratio") and side < 0
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
        dropped = [w for w in which if w in self.dropped]
        if dropped:
            raise ValueError(f"fixed effect(s) {dropped} were dropped from the fit as aliased "
                             "(rank-deficient X): they have no profile")
        unknown = [w for w in which if w not in self.names]
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; the parameters are {self.names}")
        return [self.names.index(w) for w in which]

    def requested(self, which: Any) -> list[str]:
        """The parameter names ``which`` asks for, dropped (aliased) fixed effects included."""
        fixed = self.all_fixed
        if which is None:
            return self.names[: self.n_var] + fixed
        if isinstance(which, str):
            return (self.names[: self.n_var] if which == "variance" else fixed if which == "fixed"
                    else [which])
        return list(which)


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

    Raises
    ------
    NotImplementedError
        For a heteroscedastic fit without its per-stratum statistics (see :func:`conf_int`).

    Notes
    -----
    REML fits are profiled on the ML deviance, as lme4 does.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> est.profile(which=["sigma"], n_points=5).round(3)
       param   value   zeta
    0  sigma  22.149 -2.576
    1  sigma  23.870 -1.210
    2  sigma  25.592  0.000
    3  sigma  27.810  1.373
    4  sigma  30.028  2.576
    """
    z_max = stats.norm.ppf(1.0 - _check_alpha(alpha_max) / 2.0)
    if n_points < 3:
        raise ValueError(f"n_points must be at least 3, got {n_points}")
    rows = []
    with single_threaded_blas():
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
        lme4: per random-effects term (grouping factors in the order of the fit)
        ``sd_<effect>|<group>`` and ``cor_<effect1>.<effect2>|<group>`` (the covariance's
        lower triangle column by column), then ``sigma``, then the fixed effects. A
        heteroscedastic fit adds, after ``sigma`` (the reference stratum's residual
        standard deviation), the ratio of each other stratum's to it,
        ``sigma_<stratum>/sigma_<reference>`` (nlme's ``varIdent`` parameters).

    Raises
    ------
    NotImplementedError
        ``method="profile"`` on a heteroscedastic fit that does not keep its per-stratum
        statistics: the profiles must be minimised over the variance ratios too.

    Notes
    -----
    Profile intervals of REML fits use the ML deviance, as lme4 does. A standard
    deviation whose profile does not reach the cutoff before 0 (always the case for an
    estimate of exactly 0) has the lower bound 0; a correlation likewise -1 or 1.
    Wald intervals use the covariance of the fixed effects at the estimates (for a
    heteroscedastic fit, at the estimated variance ratios, as nlme's ``intervals``).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> est.conf_int().round(2)
                  lower   upper
    (Intercept)  238.03  264.78
    Days           7.44   13.50
    >>> est.conf_int(method="profile", which=["sigma"]).round(2)
               lower  upper
    parameter
    sigma       22.9  28.86
    """
    z = stats.norm.ppf(1.0 - _check_alpha(alpha) / 2.0)
    if method == "wald":
        if which is not None:
            raise ValueError("which= applies to method='profile' only")
        fe, se = est.fe_params_, est.bse_
        return pd.DataFrame({"lower": fe - z * se, "upper": fe + z * se}, index=fe.index)
    if method != "profile":
        raise ValueError(f"method must be 'wald' or 'profile', got {method!r}")
    with single_threaded_blas():
        prof = _Profiler(est)
        wanted = prof.requested(which)
        idx = prof.indices([w for w in wanted if w not in prof.dropped])
        bounds = {prof.names[k]: (prof.bound(k, z, -1), prof.bound(k, z, +1)) for k in idx}
    # fixed effects dropped as aliased (rank-deficient X) have no interval: NaN, as lme4's NA
    return pd.DataFrame([bounds.get(w, (np.nan, np.nan)) for w in wanted],
                        index=pd.Index(wanted, name="parameter"), columns=["lower", "upper"])


# ---- summary ------------------------------------------------------------------------------


def _random_effects_table(est: Any) -> pd.DataFrame:
    """Per term its variances, then its correlations; the residual (per stratum) last."""
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
    if _heteroscedastic(est):
        for label, var in est.residual_var_.items():
            rows.append((f"Residual ({label})", "", "", var, np.sqrt(var), np.nan))
    else:
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
        correlation); ``Residual`` last, or with heteroscedastic residuals a row
        ``Residual (<stratum>)`` per stratum.
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
    ddf : {"Satterthwaite", "normal"}
        How ``df`` was obtained: Satterthwaite, or ``inf`` (normal approximation) for a
        heteroscedastic fit that lacks what the Satterthwaite df need (printed as such).
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
        # df = inf is the normal approximation (see ``ddf``), not a missing value
        rows = [[str(name), _fmt(r.estimate), _fmt(r.std_error),
                 "inf" if r.df == np.inf else _fmt(r.df, ".4g"),
                 _fmt(r.t_value, ".4g"), _fmt_p(r.p_value), _fmt(r.ci_lower), _fmt(r.ci_upper)]
                if np.isfinite(r.estimate) else [str(name)] + ["NA"] * 7  # dropped as aliased
                for name, r in zip(fe.index, fe.itertuples())]
        return header, rows

    def _fixed_title(self) -> str:
        if self.ddf == "Satterthwaite":
            return "Fixed effects (Satterthwaite df)"
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
    """
    alpha = _check_alpha(alpha)
    beta, se = est.fe_params_, est.bse_
    if _rank(est) is not None:  # dropped (aliased) columns: NaN as lm's NA, not the 0 of coef_
        beta = beta.where(_rank(est).kept)
    ddf = "Satterthwaite"
    try:
        df = satterthwaite_df(est)
    except NotImplementedError:
        # A heteroscedastic fit without its per-stratum statistics: the summary still
        # has everything else; its tests say they are normal approximations.
        ddf, df = "normal", np.full(beta.size, np.inf)
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
        n_obs=_n_obs(est),
        n_groups={t.group: int(est.n_groups_[t.group] if _several(est) else est.n_groups_)
                  for t in _terms(est)},
        llf=float(est.llf_),
        aic=float(est.aic_),
        bic=float(est.bic_),
        df_model=int(est.df_model_),
        converged=bool(est.converged_),
        singular=bool(est.singular_),
        alpha=alpha,
        ddf=ddf,
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


@dataclass(frozen=True)
class _Data:
    """What identifies the data of a fit, for the LR test's same-data checks.

    ``xyxy`` is ``[X y]' W [X y]`` with the prior weights ``W`` only, and None (with
    ``sum_log_weights``) for a heteroscedastic fit that keeps only the statistics
    reweighted by its variance ratios. ``factors`` maps each grouping factor to its
    sorted levels, ``counts`` to its rows per level where the fit keeps them.
    """

    n_obs: int
    xyxy: np.ndarray | None
    sum_log_weights: float | None
    factors: dict
    counts: dict


def _data(est: Any) -> _Data:
    model = est.model_
    dev = model.deviance
    if _several(est):
        m = dev.model
        return _Data(m.n, m.xyxy, m.sum_log_weights, dict(est.groups_), {})
    random = bool(est.n_groups_)
    factors = {model.group_name: est.groups_} if random else {}
    counts = {model.group_name: dev.stats.counts} if random else {}
    st: GroupStats = dev.stats
    if _heteroscedastic(est):
        stored = getattr(model, "strata", None)
        if stored is None:
            return _Data(st.n_obs, None, None, factors, counts)
        st = combine_stats(list(stored[0]), np.ones(len(stored[0])))  # undo the ratios
    return _Data(st.n_obs, st.xyxy, st.sum_log_weights, factors, counts)


def _same_data(a: Any, b: Any) -> None:
    """Raise unless two fits saw the same response (and, where comparable, the same groups)."""
    da, db = _data(a), _data(b)
    problems = []
    if da.n_obs != db.n_obs:
        problems.append(f"{da.n_obs} vs {db.n_obs} observations")
    else:
        if da.xyxy is not None and db.xyxy is not None:
            if not np.isclose(da.xyxy[-1, -1], db.xyxy[-1, -1], rtol=1e-10, atol=0.0):
                problems.append("different responses (sum of y^2 differs)")
            # sum(y) is visible when both designs have the intercept column.
            if a.fe_params_.index[0] == "(Intercept)" == b.fe_params_.index[0] and not np.isclose(
                    da.xyxy[0, -1], db.xyxy[0, -1], rtol=1e-10,
                    atol=1e-12 * np.sqrt(da.xyxy[-1, -1])):
                problems.append("different responses (sum of y differs)")
        if da.sum_log_weights is not None and db.sum_log_weights is not None and not np.isclose(
                da.sum_log_weights, db.sum_log_weights, rtol=1e-10, atol=1e-10):
            problems.append("different sample weights")
        # Grouping factors of the same name in both fits must have the same levels (a
        # single-factor fit nested in a crossed one shares one of its factors).
        for name in [f for f in da.factors if f in db.factors]:
            la, lb = da.factors[name], db.factors[name]
            same = np.array_equal(la, lb)
            if same and name in da.counts and name in db.counts:
                same = np.array_equal(da.counts[name], db.counts[name])
            if not same:
                problems.append(f"different levels of the grouping factor {name!r}")
    if problems:
        raise ValueError("the two fits used different data: " + "; ".join(problems)
                         + ". A likelihood-ratio test needs both models fitted to the same rows.")


def _same_fixed_effects(a: Any, b: Any) -> bool:
    xa, xb = _data(a).xyxy, _data(b).xyxy
    if xa is None or xb is None:
        # A heteroscedastic fit without its unweighted statistics: the fixed-effects
        # columns can only be compared by name.
        return list(a.fe_params_.index) == list(b.fe_params_.index)
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

    Notes
    -----
    The fits may differ in their grouping factors (a single-factor fit against one with
    several, or crossed against nested) and in their residual variances (one against one
    per stratum, ``df`` counting the variance ratios). The same-data check compares the
    number of rows, ``y'y``, ``sum(y)`` (with intercepts), the prior weights, and the
    levels of every grouping factor the two fits share. A heteroscedastic fit that does
    not keep its per-stratum statistics (``model_.strata``) only has the response's
    statistics reweighted by its variance ratios: then only the rows and the groups are
    compared, and the fixed effects of REML fits by their names.

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
