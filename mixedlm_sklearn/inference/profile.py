"""Profile-likelihood intervals (lme4's ``profile`` and ``confint``).

Bates et al. (2015, JSS 67(1), sec. 5.1): parameters on lme4's scale, per random-effects
term the standard deviations and correlations, then ``sigma``, then (residual strata) the
ratio of each stratum's residual standard deviation to the reference's, then the fixed
effects. For a parameter ``psi``, ``zeta(psi) = sign(psi - psi_hat) sqrt(dev(psi) -
dev_min)`` with ``dev(psi)`` the deviance minimised over all other parameters; the bounds
solve ``|zeta| = z_{1-alpha/2}`` (root finding, not read off a grid). As in lme4, REML
fits are profiled on the *maximum-likelihood* deviance by default (``profile.merMod``
refits with ML first, its ``devfun2``; the shared references confirm it: lme4's REML and
ML sleepstudy intervals agree to 2e-6 relative).

``criterion="reml"`` profiles the REML criterion instead (a fit by ML is refitted by REML
first). The difference: the REML criterion accounts for the degrees of freedom the fixed
effects use (it is the likelihood of the residual contrasts, Patterson & Thompson 1971),
so its profiles of the variance parameters sit where the REML estimates are and are
wider for small samples; the ML profiles centre on the ML estimates, which are biased
towards 0 (``sigma^2`` by the factor ``(n - p) / n``). The REML criterion does not
depend on the fixed effects (they are integrated out), so only the variance parameters
have REML profiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .._basis import Conditioned
from .._factor import NotPositiveDefinite
from .._threads import single_threaded_blas
from .summary import summary
from ._parameters import (
    check_alpha,
    deviance_at_sigma,
    fitted_model,
    ratio_names,
    sdcor_to_theta,
    theta_to_sdcor,
)

__all__ = ["profile", "conf_int"]

_INNER_FTOL = 1e-11
_INNER_GTOL = 1e-6
# |zeta - target| accepted at a bound: 1e-6 of a standard error, far below the 1% goal.
_ROOT_ZTOL = 1e-6


class _Profiler:
    """Profiles of lme4's parameters on the ML deviance of a fit.

    Parameters are ``psi = (sd/cor of each term, sigma, delta, beta)``, ``delta`` the
    residual standard-deviation ratios of the non-reference strata (``sigma`` is then the
    reference stratum's). The deviance as a function of ``psi`` comes from the solution at
    ``x = (theta(psi), log delta)``: sigma enters through
    :func:`~._parameters.deviance_at_sigma`, and fixing ``beta_j = b`` adds
    ``(b - beta_j(theta))^2 / (A^{-1}_jj sigma^2)`` (the penalised RSS is quadratic in
    beta with Hessian ``A``, so minimising over the other fixed effects leaves this term).
    Every profile point minimises over the variance parameters (``sigma`` and ``delta``
    included) with L-BFGS-B, warm-started from the nearest point already computed.
    """

    def __init__(self, est: Any, criterion: str = "ml") -> None:
        if criterion not in ("ml", "reml"):
            raise ValueError(f"criterion must be 'ml' or 'reml', got {criterion!r}")
        model = fitted_model(est)
        self.terms = model.terms
        reml = criterion == "reml"
        profiled = model if model.reml == reml else model.refit(reml=reml)
        self.dev, sol = profiled.deviance, profiled.solution
        # evaluated in the whitened basis: profiles reach variances far from the estimate,
        # where lme4's basis of uncentred slopes loses every digit
        self.conditioned = Conditioned(self.dev)
        sigma = float(np.sqrt(sol.scale))
        sdcor = theta_to_sdcor(sol.theta, sigma, self.terms)
        self.n_sdcor = sdcor.size
        delta = np.sqrt(sol.ratios[1:])
        self.n_var = sdcor.size + 1 + delta.size
        # the REML criterion does not depend on the fixed effects: they have no REML profile
        fixed = [] if reml else list(model.fe_names)
        self.names = self.terms.param_names() + ["sigma"] + ratio_names(model) + fixed
        self.dropped = [] if model.rank is None else model.rank.dropped_names
        self.all_fixed = list(model.fe_names) if model.rank is None else list(model.rank.names)
        self.reml = reml
        self._fe_names = list(model.fe_names if model.rank is None else model.rank.names)
        if reml:
            self.all_fixed = []
        self.estimate = np.concatenate([sdcor, [sigma], delta, sol.beta if not reml else []])
        self.dev_min = sol.deviance
        kinds = [("sd" if r == c else "cor") for t in self.terms for r, c in zip(*t.theta_position)]
        self.kinds = kinds + ["sigma"] + ["ratio"] * delta.size + ["beta"] * len(fixed)
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
                                    2.0 * se_beta[:len(fixed)]])
        self._warm: dict[int, list[tuple[float, np.ndarray]]] = {}
        self._zeta: dict[tuple[int, float], float] = {}

    def _deviance(self, var: np.ndarray, fixed_beta: tuple[int, float] | None) -> float:
        k = self.n_sdcor
        sigma = var[k]
        theta = sdcor_to_theta(var[:k], sigma, self.terms)
        if theta is None:  # correlations outside the correlation matrices (q >= 3 only)
            return self.dev_min + 1e10
        x = np.concatenate([theta, np.log(var[k + 1:self.n_var])])
        try:
            sol = self.conditioned.evaluate(x)
        except NotPositiveDefinite:  # a trial point beyond what double precision holds
            return self.dev_min + 1e10
        value = deviance_at_sigma(sol, self.dev.dof, sigma)
        if fixed_beta is not None:
            j, b = fixed_beta
            value += (b - sol.beta[j]) ** 2 / (sol.a_inv[j, j] * sigma**2)
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
            which = [which]
        if self.reml:
            fixed = [w for w in which if w == "fixed" or w in self._fe_names]
            if fixed:
                raise ValueError(f"the REML criterion does not depend on the fixed effects "
                                 f"({fixed}: they are integrated out); profile them with "
                                 "criterion='ml'")
        if which == ["fixed"]:
            return list(range(self.n_var, len(self.names)))
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
        if self.reml and which is not None:
            self.indices(which)  # refuses fixed effects, which have no REML profile
        if which is None:
            return self.names[: self.n_var] + fixed
        if isinstance(which, str):
            return (self.names[: self.n_var] if which == "variance" else fixed if which == "fixed"
                    else [which])
        return list(which)




def profile(est: Any, which: Any = None, alpha_max: float = 0.01, n_points: int = 21,
            criterion: str = "ml") -> pd.DataFrame:
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
    criterion : {"ml", "reml"}, default "ml"
        The deviance profiled: the ML deviance (lme4's ``profile``, also for REML fits) or
        the REML criterion (variance parameters only; see the module docstring).

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
    REML fits are profiled on the ML deviance, as lme4 does, unless ``criterion="reml"``.

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
    z_max = stats.norm.ppf(1.0 - check_alpha(alpha_max) / 2.0)
    if n_points < 3:
        raise ValueError(f"n_points must be at least 3, got {n_points}")
    rows = []
    with single_threaded_blas():
        prof = _Profiler(est, criterion)
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


def conf_int(est: Any, alpha: float = 0.05, method: str = "wald", which: Any = None,
             ddf: str | None = None, criterion: str = "ml", *, n_boot: int = 1000,
             boot_type: str = "percentile", random_state: Any = None,
             n_jobs: int | None = None) -> pd.DataFrame:
    """Confidence intervals.

    Parameters
    ----------
    est : fitted MixedLMRegressor
    alpha : float, default 0.05
        1 - confidence level.
    method : {"wald", "profile", "boot"}
        ``"wald"``: fixed effects, ``estimate -+ z_{1-alpha/2} * std_error`` (lme4's
        ``confint(method = "Wald")``). ``"profile"``: profile-likelihood intervals of the
        variance parameters on lme4's scale, then of the fixed effects (lme4's
        ``confint(method = "profile")``). ``"boot"``: parametric bootstrap intervals of
        the same parameters (lme4's ``confint(method = "boot")``; see
        :func:`~mixedlm_sklearn.inference.bootstrap`).
    which : None, str or list of str
        Profile and boot: parameter names, or ``"variance"`` / ``"fixed"``; default all.
    ddf : {None, "satterthwaite", "kenward-roger"}
        Wald only: None for normal quantiles (lme4); otherwise ``estimate -+ t_{df} SE``
        with Satterthwaite's df, or with Kenward-Roger's adjusted SE and df (lmerTest's
        ``confint`` of its summary).
    criterion : {"ml", "reml"}
        Profile only: see :func:`profile`.
    n_boot, boot_type, random_state, n_jobs
        Boot only: replicates, interval type (``"percentile"``, ``"basic"``, ``"normal"``;
        lme4's ``boot.type``), seed and worker processes.

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
    z = stats.norm.ppf(1.0 - check_alpha(alpha) / 2.0)
    if method == "boot":
        from .bootstrap import boot_conf_int

        fitted_model(est)
        return boot_conf_int(est, alpha, which, n_boot, boot_type, random_state, n_jobs)
    if method == "wald":
        if which is not None:
            raise ValueError("which= applies to method='profile' only")
        if ddf is None:
            fe, se = est.fe_params_, est.bse_
            return pd.DataFrame({"lower": fe - z * se, "upper": fe + z * se}, index=fe.index)
        table = summary(est, alpha=alpha, ddf=ddf).fixed_effects
        return pd.DataFrame({"lower": table["ci_lower"], "upper": table["ci_upper"]},
                            index=table.index)
    if method != "profile":
        raise ValueError(f"method must be 'wald', 'profile' or 'boot', got {method!r}")
    if ddf is not None:
        raise ValueError("ddf= applies to method='wald' only")
    with single_threaded_blas():
        prof = _Profiler(est, criterion)
        wanted = prof.requested(which)
        idx = prof.indices([w for w in wanted if w not in prof.dropped])
        bounds = {prof.names[k]: (prof.bound(k, z, -1), prof.bound(k, z, +1)) for k in idx}
    # fixed effects dropped as aliased (rank-deficient X) have no interval: NaN, as lme4's NA
    return pd.DataFrame([bounds.get(w, (np.nan, np.nan)) for w in wanted],
                        index=pd.Index(wanted, name="parameter"), columns=["lower", "upper"])


# ---- summary ------------------------------------------------------------------------------
