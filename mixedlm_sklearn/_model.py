"""A fitted model as the estimator and inference see it, and the fit that makes one.

lme4's pipeline (Bates et al. 2015; ``lFormula -> mkLmerDevfun -> optimizeLmer ->
mkMerMod``): cross-products (:mod:`._crossprod`) -> deviance (:mod:`._deviance`) ->
optimiser (:mod:`._optimize`) -> :class:`FittedModel`. Inference is written once against
the small protocol of :class:`FittedModel`: the deviance at given parameters
(:class:`ProfiledDeviance`), the solution there (:class:`._deviance.Solution`), a refit
(by ML, from a start, with the search off), the names and the bounds of the parameters.
It never asks what kind of model it has: the exact deviance (:class:`._deviance.Deviance`)
and the matrix-free one (:class:`._iterative.IterativeDeviance`) honour the same protocol,
and where their capabilities differ the deviance or its solution says so itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from ._crossprod import CrossProducts
from ._rows import Design
from ._crossprod import cross_products
from ._deviance import Deviance, Shift, Solution
from ._factor import Plan
from ._family import Family, gaussian
from ._glmm import GLMMDeviance, fit_glmm, fit_with_fixed_family
from ._iterative import IterativeDeviance, IterativePlan
from ._optimize import OptimizerInfo, finish_from, fit, fit_stochastic
from ._terms import INTERCEPT, Terms
from ._threads import single_threaded_blas

__all__ = ["FittedModel", "ProfiledDeviance", "fit_model", "minimise", "choose_solver", "SOLVERS"]

SOLVERS = ("auto", "exact", "iterative")
# solver="auto" takes the exact solver while one factorisation and selected inverse of
# its rest block cost at most this many flops (~1 s on one core) and it fits in memory
# (:class:`._factor.Plan` refuses it otherwise), the iterative solver beyond. Past
# HYBRID_MIN_FLOPS an exact fit is the iterative path plus an exact finish, so the finish
# is what exactness costs: at 2x10^5 users x items (2.7e9 flops) 0.1 s of 0.5 s, worth the
# exact log-likelihood; at 10^6 (3.6e10 flops) ~2 s of 4.7 s, against 2.6 s for the whole
# iterative fit (bench_crossed.py, idle machine) -- there "auto" takes the faster solver.
AUTO_MAX_EXACT_FLOPS = 1e10
# ... and while the symbolic phase of its sparse rest block (the crossing term's fill,
# enumerated once) stays cheap: beyond this many level pairs "auto" does not even plan
# it (at 10^7 rows, 10^6 users and 10^5 items: 3.4e7 pairs, a dense core far beyond 10^4).
AUTO_MAX_FILL_PAIRS = 20_000_000
# An exact fit whose sparse rest block costs more than this many flops per evaluation
# starts from the iterative optimum (its path is ~3x cheaper per step) and finishes with
# exact Newton steps (typically one exact value and gradient).
HYBRID_MIN_FLOPS = 1e9
# Probes of that path: it only has to land near the optimum (the exact steps finish).
_PATH_PROBES = 8
# Newton-decrement tolerance of the stochastic optimiser (its objective's own error is
# ~1e-3 in deviance units).
_STOCHASTIC_TOL = 1e-6


class ProfiledDeviance(Protocol):
    """What a deviance provides: the protocol of :class:`._deviance.Deviance` (exact) and
    :class:`._iterative.IterativeDeviance` (matrix-free), on which the optimiser, the
    fitted model and inference are written.

    Attributes
    ----------
    cp : CrossProducts
        The data.
    reml : bool
    terms : Terms
    p, n, dof : int
        Fixed effects, observations, residual degrees of freedom (``n - p`` for REML).
    n_theta, n_eta, n_params : int
        Parameters ``x = (theta, eta)``: covariance factors and the residual structure's
        parameters (log residual-variance ratios; a correlation's internal parameter in
        :class:`._correlation.JointDeviance`).
    n_ratios : int
        How many of the residual parameters are variance ratios (checked for running off).
    strata_counts : ndarray
        Rows per residual stratum, in the order of the solution's ``ratios``.
    plan
        What does not depend on ``[X y]`` (shared by refits: :meth:`with_data`).
    stochastic : bool
        True for an estimate with a stochastic error (fixed probes): the optimiser then
        takes Newton steps with the average information only (:func:`minimise`).
    n_evaluations : int

    Methods
    -------
    __call__(x), value_and_grad(x)
        The profiled deviance and its gradient.
    average_information(x)
        The average-information approximation of its Hessian in ``theta``.
    solution(x)
        :class:`._deviance.Solution` at ``x``.
    lower_bounds(), upper_bounds()
    in_basis(bases, xy_scale)
        The same deviance of ``Z_k P_k`` and ``[X y] / xy_scale`` (:mod:`._basis`).
    with_data(cp, reml=None, replan=False)
        The same kind of deviance of other cross-products of the same terms.
    rounding_of_scale(x)
        The size of a rounding error in the residual variance.
    residual_start()
        A start of the residual parameters, or None for the optimiser's default.
    """

    cp: CrossProducts
    reml: bool
    terms: Terms
    p: int
    n: int
    dof: int
    n_theta: int
    n_eta: int
    n_ratios: int
    plan: Any
    stochastic: bool
    n_evaluations: int

    @property
    def n_params(self) -> int: ...
    def __call__(self, x: np.ndarray) -> float: ...
    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]: ...
    def average_information(self, x: np.ndarray) -> np.ndarray: ...
    def solution(self, x: np.ndarray) -> Solution: ...
    def lower_bounds(self) -> np.ndarray: ...
    def upper_bounds(self) -> np.ndarray: ...
    def in_basis(self, bases: list, xy_scale: np.ndarray) -> "ProfiledDeviance": ...
    def with_data(self, cp: CrossProducts, reml: bool | None = None, replan: bool = False
                  ) -> "ProfiledDeviance": ...
    def rounding_of_scale(self, x: np.ndarray) -> float: ...
    def residual_start(self) -> np.ndarray | None: ...


def minimise(dev: ProfiledDeviance, x0: np.ndarray | None = None, *, max_iter: int = 1000,
             tol: float = 1e-8, callback: Callable[[int, float], None] | None = None,
             search: bool = True, multistart: bool = True) -> tuple[Solution, OptimizerInfo]:
    """The optimum of a deviance (BLAS as the caller set it), by the optimiser its kind
    takes: :func:`._optimize.fit` for an exact one (``search``, ``multistart`` as there),
    :func:`._optimize.fit_stochastic` for a stochastic one (its own tolerance; with
    ``search``, entries of ``x0`` on their bound start off it, as the exact optimiser's
    escapes from bounds: Newton steps cannot leave a zero variance, where the deviance is
    even, and the stochastic optimiser puts it back on the bound where it belongs)."""
    if dev.n_params == 0:
        info = OptimizerInfo(True, "no variance parameters", 0, 1, 0.0, np.zeros(0, dtype=bool))
        return dev.solution(np.empty(0)), info
    if dev.stochastic:
        if search and x0 is not None:
            x0 = np.array(x0, dtype=float)
            zero = np.isfinite(dev.lower_bounds()) & (x0 <= dev.lower_bounds())
            largest = float(np.abs(x0).max(initial=0.0))
            x0[zero] = 0.1 * largest if largest > 0 else 0.1
        return fit_stochastic(dev, x0=x0, max_iter=max_iter, tol=_STOCHASTIC_TOL, callback=callback)
    return fit(dev, x0=x0, max_iter=max_iter, tol=tol, callback=callback, search=search,
               multistart=multistart)


@dataclass(frozen=True)
class FittedModel:
    """A fitted mixed model: linear (exact or iterative solver) or generalized.

    Every kind honours the same protocol; inference reads it and never asks the kind.

    Attributes
    ----------
    deviance : ProfiledDeviance or GLMMDeviance
        ``x -> deviance`` on the fitted data: ``x = (theta, eta)`` of a linear model (REML
        or ML as fitted, beta and sigma profiled), ``x = (theta, beta)`` of a GLMM (Laplace
        or AGQ).
    solution : Solution
        The fit at the optimum.
    info : OptimizerInfo
    fe_names : list of str
        Fixed effects estimated (intercept first; columns dropped as aliased excluded).
    terms : Terms
        Random-effects terms (names, Z column names, levels, covariance structure).
    labels : dict
        Term name -> level labels (the rows of that term's BLUPs).
    strata : ndarray or None
        Residual strata labels (reference first) with ``residual_groups``.
    design : Design or None
        The rows of an in-memory fit (None for chunks and Dask).
    rank : FixedEffectsRank or None
        Set when aliased fixed-effects columns were dropped: ``fe_names`` are the kept ones.
    family : Family
        The response distribution and its link (Gaussian/identity for a linear model;
        one instance per fit).
    derived : dict
        Quantities inference computed from this fit and keeps (by name); a new fit, a
        refit or a :meth:`at` copy starts empty.
    """

    deviance: ProfiledDeviance
    solution: Solution
    info: OptimizerInfo
    fe_names: list
    terms: Terms
    labels: dict
    strata: np.ndarray | None = None
    design: Design | None = field(default=None, repr=False)
    max_iter: int = 1000
    tol: float = 1e-8
    rank: Any = None
    family: Family = field(default_factory=gaussian)
    correlation: Any = None  # a FittedCorrelation (._correlation) with correlated residuals
    # What inference derives from this fit alone and reuses (Satterthwaite's derivatives,
    # one Hessian for summary, anova, wald_test and emmeans): empty in every copy.
    derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def reml(self) -> bool:
        return self.deviance.reml

    @property
    def cross_products(self) -> CrossProducts:
        """The cross-products of the columns as given (the deviance's, measured from their
        :class:`~._crossprod.Origin`, undone)."""
        return self.deviance.cp.uncentred()

    @property
    def profiled_beta(self) -> bool:
        """Whether the fixed effects are profiled out of the deviance (a linear model's
        ``x = (theta, eta)``) or parameters of it (a GLMM's ``x = (theta, beta)``)."""
        return not isinstance(self.deviance, GLMMDeviance)

    @property
    def scale_estimated(self) -> bool:
        """Whether the dispersion is estimated (sigma^2 of a linear model) or fixed at 1."""
        return self.family.scale_estimated

    @property
    def dispersion(self) -> float:
        """The family's dispersion: sigma^2 of the reference stratum, 1 for binomial/Poisson."""
        return float(self.solution.scale)

    @property
    def df_methods(self) -> tuple[str, ...]:
        """Denominator degrees of freedom the fixed effects' tests may use, preferred first:
        finite (t and F) ones only where the scale is estimated."""
        if self.scale_estimated:
            return tuple(m for m in ("satterthwaite", "kenward-roger", "asymptotic")
                         if m == "asymptotic" or self.supports(m) is None)
        return ("asymptotic",)

    def supports(self, feature: str) -> str | None:
        """None when the model supports ``feature``, else why not (the refusal inference
        raises). Features: "satterthwaite" and "kenward-roger" (finite denominator df:
        an estimated dispersion), "profile" (profiles of lme4's parameters through the
        profiled linear-model deviance), "random-refit" (refits with reduced random effects,
        ranova), "rows" (the fit's rows: in-memory fits), "simulation" (responses drawn
        from the fitted model: simulate, bootstrap, power), "variance-components" (R2, ICC),
        "refits" (refits with held parameters: profiles).

        With correlated residuals (:mod:`._correlation`) the deviance's parameters do not
        hold the correlation parameter, whose estimation refits with held entries of ``x``
        would have to take into account: they are refused, naming what works (profiles go
        through :meth:`profile_deviance`, whose ``x`` holds the correlation). Kenward-Roger's
        adjustment takes the correlation's parameter as a variance parameter; it needs the
        rows (not a fit from chunks)."""
        if self.correlation is not None and feature == "kenward-roger":
            data = self.correlation.data
            if data is None:
                return ("Kenward-Roger's df with correlated residuals need the fit's rows; a fit "
                        "from chunks or Dask keeps only their cross-products: fit the data in "
                        "memory, or use ddf='satterthwaite'")
        if self.correlation is not None and feature in _NOT_WITH_CORRELATION:
            return (f"{_NOT_WITH_CORRELATION[feature]} of a model with correlated residuals "
                    f"({self.correlation.structure.nlme_class}) is not supported yet; its "
                    "tests take Satterthwaite's df (summary(), wald_test(..., "
                    "ddf='satterthwaite')) or are asymptotic (ddf='asymptotic', "
                    "conf_int(method='wald'))")
        if feature in ("satterthwaite", "kenward-roger"):
            if self.scale_estimated:
                return None
            return (f"{feature} df need an estimated dispersion; a {self.family.name} model's is "
                    "fixed, so its tests are asymptotic (z and chi-square)")
        if feature in ("profile", "random-refit"):
            if self.profiled_beta:
                return None
            what = {"profile": "profiles through the linear model's deviance (use the estimator's "
                               "conf_int(method='profile'))",
                    "random-refit": "refits with reduced random effects (ranova); compare nested "
                                    "fits with lr_test"}[feature]
            return f"a {self.family.name} GLMM has no {what}"
        if feature in ("simulation", "variance-components", "refits"):
            return None
        if feature == "rows":
            return None if self.design is not None else (
                "this needs the fit's rows; a fit from chunks or Dask keeps only their "
                "cross-products: fit the data in memory")
        raise ValueError(f"unknown feature {feature!r}")

    @property
    def n_agq(self) -> int:
        """Quadrature nodes of a GLMM's deviance (1: Laplace); 0 for a linear model's exact
        likelihood."""
        return int(getattr(self.deviance, "n_agq", 0))

    @property
    def method(self) -> str:
        """How the model was fitted: "REML", "ML", "Laplace" or "AGQ (n nodes)"."""
        if not self.n_agq:
            return "REML" if self.reml else "ML"
        return "Laplace" if self.n_agq == 1 else f"AGQ ({self.n_agq} nodes)"

    @property
    def llf(self) -> float:
        """lme4's ``logLik``: -1/2 the deviance (the REML criterion of a REML fit)."""
        return -0.5 * float(self.solution.deviance)

    @property
    def n_parameters(self) -> int:
        """lme4's parameter count: fixed effects (kept), the covariance parameters, the
        residual-variance ratios, the residual correlation's parameter, sigma where the
        scale is estimated and the family's estimated parameters (NB theta, Gamma shape)."""
        return (len(self.fe_names) + self.n_theta + self.n_eta + self.n_corr
                + int(self.scale_estimated) + len(self.family.free))

    @property
    def n_corr(self) -> int:
        """Parameters of the residual correlation (0 with independent residuals)."""
        return 0 if self.correlation is None else 1

    @property
    def correlation_names(self) -> list:
        """nlme's names of the residual correlation's parameters (empty with independent
        residuals)."""
        return [] if self.correlation is None else [self.correlation.name]

    @property
    def correlation_values(self) -> np.ndarray:
        """The residual correlation's parameters at the fit (nlme's scale), as
        :attr:`correlation_names`."""
        return np.array([] if self.correlation is None else [self.correlation.value], dtype=float)

    def linear_predictor(self, population: bool = False) -> np.ndarray:
        """The linear predictor on the fit's rows (offset included): conditional on the
        random effects' modes, or at population level (``X beta + offset``)."""
        design = self._rows()
        X = design.X_full if self.rank is None else design.X_full[:, self.rank.kept]
        eta = X @ self.solution.beta
        if design.offset is not None:
            eta = eta + design.offset
        if not population:
            for (codes, Z), b in zip(design.factors, self.solution.blups()):
                eta = eta + np.einsum("ia,ia->i", Z, b[codes])
        return eta

    def variance_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, list]:
        """What Nakagawa's R2 needs of the rows: fixed effects ``beta`` of columns ``X`` with
        ``X'X``, ``X'1``, their number, and per term ``sum_i z_i z_i'`` (R2's fixed and
        random variances). A linear model's from its cross-products (prior-weighted; the
        columns measured from the engine's origin, with their own fixed effects, so that the
        variance of ``X beta`` has no ``n mean^2`` cancelling); a GLMM's from its rows,
        unweighted (insight's choice: a binomial row's weight is its number of trials)."""
        beta = self.solution.beta
        if hasattr(self.deviance, "row_moments"):  # a GLMM from chunks: one pass over them
            xtx, x_sum, n, ztz = self.deviance.row_moments()
            return beta, xtx, x_sum, float(n), ztz
        if isinstance(self.deviance, GLMMDeviance):
            X = self.deviance.X
            ztz = [Z.T @ Z for _, Z in self.deviance.factors]
            return beta, X.T @ X, X.sum(axis=0), float(X.shape[0]), ztz
        if self.correlation is not None and self.correlation.data is None:
            # a fit from chunks: the components that hold each row once give the moments
            # of the rows as given, where they are unweighted and X has the intercept
            comps = self.correlation.components
            if comps.weighted or self.fe_names[:1] != [INTERCEPT]:
                raise NotImplementedError(
                    "R2 and the ICC of a fit from chunks with correlated residuals need the "
                    "rows' unweighted moments, which its cross-products hold only without "
                    "sample_weight and with an intercept: fit the data in memory")
            cp = comps.rows_products()
            xtx = cp.xyxy[0][:cp.p, :cp.p]
            return beta, xtx, xtx[0], float(cp.n), [d[0].sum(axis=-1) for d in cp.diag]
        if self.correlation is not None:
            # the deviance's cross-products are those of the whitened rows: the moments of
            # the rows as given (R2's variances are of the data, the residual's sigma^2)
            data = self.correlation.data
            ztz = [Z.T @ Z for _, Z in data.factors]
            return beta, data.X.T @ data.X, data.X.sum(axis=0), float(data.X.shape[0]), ztz
        cp = self.deviance.cp.combined()
        if cp.origin is not None:
            beta = cp.origin.centred_beta(beta)
        p = cp.p
        xtx = cp.xyxy[0][:p, :p]
        return beta, xtx, xtx[0], float(cp.xyxy[0][0, 0]), [d[0].sum(axis=-1) for d in cp.diag]

    def distribution_variance(self) -> float:
        """The residual variance of R2 and the ICC on the link scale: a linear model's
        residual variance (averaged over the rows' strata), a GLMM family's distribution-
        specific variance (Nakagawa et al. 2017), for Poisson from the mean of the null
        model (intercept and the same random part) refitted."""
        if self.family.scale_estimated:
            sol = self.solution
            return float(sol.scale * (self.deviance.strata_counts @ sol.ratios) / self.n_obs)

        def null_mean() -> float:
            null = self.refit(columns=np.array([0]))
            return float(self.family.link.inverse(null.solution.beta[:1])[0])

        return float(self.family.distribution_variance(null_mean))

    def response(self) -> np.ndarray:
        """The response of the fit's rows as given (offset included: a linear model's rows
        keep ``y - offset``; a GLMM's response is a proportion or a count)."""
        design = self._rows()
        if isinstance(self.deviance, GLMMDeviance):
            return self.deviance.y
        return design.y if design.offset is None else design.y + design.offset

    def _rows(self) -> Design:
        if self.design is None:
            raise NotImplementedError("this needs the fit's rows; a fit from chunks or Dask keeps "
                                      "only their cross-products: fit the data in memory")
        return self.design

    def fitted_mean(self, population: bool = False) -> np.ndarray:
        """The mean response on the fit's rows: the inverse link of :meth:`linear_predictor`."""
        return self.family.link.inverse(self.linear_predictor(population))

    @property
    def n_obs(self) -> int:
        return self.deviance.n

    @property
    def x(self) -> np.ndarray:
        """The fitted ``(theta, eta)``."""
        return self.solution.x

    @property
    def n_theta(self) -> int:
        return self.deviance.n_theta

    @property
    def n_eta(self) -> int:
        return self.deviance.n_eta

    def refit(self, reml: bool | None = None, x0: np.ndarray | None = None,
              search: bool = False, fixed: dict | None = None,
              columns: np.ndarray | None = None) -> "FittedModel":
        """The same data fitted again (by ML with ``reml=False``), from ``x0`` (default the fit).

        ``fixed`` (index of ``x`` -> value) holds parameters (profiles); ``columns`` keeps
        those fixed-effects columns only (a nested model: ``x0`` then defaults to a fresh
        start). A GLMM is always fitted by maximum likelihood (``reml=True`` raises).
        """
        if isinstance(self.deviance, GLMMDeviance):
            return self._refit_glmm(reml, x0, fixed, columns)
        if self.correlation is not None:
            return self._refit_correlated(reml, fixed, columns)
        if fixed or columns is not None:
            raise NotImplementedError("a linear model's refit with held parameters or other "
                                      "columns goes through its cross-products")
        reml = self.reml if reml is None else reml
        dev = self.deviance if reml == self.reml else self.deviance.with_data(self.deviance.cp, reml)
        x0 = self.x if x0 is None else x0
        with single_threaded_blas():
            if dev.n_params == 0:
                sol, info = dev.solution(x0), self.info
            else:
                sol, info = minimise(dev, x0, max_iter=self.max_iter, tol=self.tol, search=search)
        return dataclasses.replace(self, deviance=dev, solution=sol, info=info)

    def profile_deviance(self) -> tuple[Any, Solution]:
        """The deviance (beta and sigma profiled out) as a function of every other variance
        parameter, and its solution at the fit: ``x = (theta, eta)``, with correlated
        residuals followed by the correlation's internal parameter
        (:class:`._correlation.JointDeviance`; at the bound of independent residuals where
        the estimate is there). Profiles hold one parameter and minimise over the rest."""
        if self.correlation is None:
            return self.deviance, self.solution
        return self.correlation.joint_deviance(self.x)

    def variance_parameters(self) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
        """The variance parameters other than sigma at the fit and the evaluation at given
        ones (Satterthwaite's derivatives): ``v = (theta, eta)``, with correlated residuals
        followed by the correlation's internal parameter (held where the estimate is on
        the bound of independent residuals). ``evaluate(v)`` has the ``deviance`` (sigma
        profiled), ``r2`` and ``a_inv`` (``Cov(beta) = sigma^2 a_inv``) there."""
        from ._basis import Conditioned

        corr = self.correlation
        if corr is None:
            return self.x.copy(), Conditioned(self.deviance).evaluate
        if not np.isfinite(corr.internal):
            return self.x.copy(), self.deviance.solution
        n, inner = self.x.size, self.deviance.inner

        def evaluate(v: np.ndarray) -> Any:
            return corr.solution_at(v[:n], float(v[n]), inner)

        return np.append(self.x, corr.internal), evaluate

    def deviance_with_random_effects(self, factors: list, terms: Terms) -> float:
        """The deviance (the fit's criterion) of the fit's rows with other random effects
        (``factors``: per term the rows' levels and design, in the rows' order; ``terms``
        their :class:`._terms.Terms`), minimised over every parameter: ranova's reduced
        models. With correlated residuals the correlation stays and is searched again."""
        d = self._rows()
        if self.correlation is not None:
            return float(self.correlation.refit(self.reml, self.max_iter, self.tol,
                                                random=(factors, terms))[1].deviance)
        cp = cross_products(d.X, d.y, factors, terms, d.weights, d.strata, d.n_strata,
                            intercept=d.intercept)
        if self.rank is not None:
            cp = cp.select_fixed(np.flatnonzero(self.rank.kept))
        with np.errstate(all="ignore"):
            _, sol, _ = fit_model(cp, self.reml, max_iter=self.max_iter, tol=self.tol)
        return float(sol.deviance)

    def _refit_correlated(self, reml, fixed, columns) -> "FittedModel":
        """A refit of a model with correlated residuals: the correlation parameter searched
        again (:func:`._correlation.fit_correlated`), every refit from scratch."""
        if fixed or columns is not None:
            raise NotImplementedError(
                "refits of a model with correlated residuals with held parameters or other "
                "columns are not supported yet: fit the models to compare with the estimator "
                "and compare them with lr_test")
        corr = self.correlation
        reml = self.reml if reml is None else bool(reml)
        with single_threaded_blas():
            dev, sol, info, fitted = corr.refit(reml, self.max_iter, self.tol)
        return dataclasses.replace(self, deviance=dev, solution=sol, info=info, correlation=fitted)

    def _refit_glmm(self, reml, x0, fixed, columns) -> "FittedModel":
        if reml:
            raise ValueError("a GLMM is fitted by maximum likelihood (reml=True is not defined)")
        from ._glmm import glm_start

        dev = self.deviance
        fe_names, rank = self.fe_names, self.rank
        if columns is not None:
            columns = np.asarray(columns, dtype=int)
            dev = dev.with_columns(columns)
            fe_names = [fe_names[j] for j in columns]
            if rank is not None:
                raise NotImplementedError("a nested refit of a fit with aliased columns dropped")
            if x0 is None:
                beta0, _ = glm_start(dev.X, dev.y, dev.prior, dev.offset, dev.family, dev.link)
                x0 = np.concatenate([self.x[:self.n_theta], beta0])
        x0 = self.x.copy() if x0 is None else np.asarray(x0, dtype=float)
        with single_threaded_blas():
            if fixed:
                if dev.family.free:
                    # the family's parameter is re-estimated at the held values (the
                    # profile): on a copy, the fit's deviance keeps its family
                    dev = dev.with_nodes(dev.n_agq)
                value, x = fit_with_fixed_family(dev, x0, fixed)
                sol = dev.solution(x)
                lower = dev.lower_bounds()
                at_bound = (np.isfinite(lower) & (x <= lower))[:dev.n_theta]
                info = OptimizerInfo(bool(np.isfinite(value)), "held parameters", 0,
                                         dev.n_evaluations, np.nan, at_bound)
            else:
                dev = dev.with_nodes(dev.n_agq)  # a copy: the fit's deviance keeps its state
                sol, info = fit_glmm(dev, x0, self.max_iter, ftol=self.tol)
        return dataclasses.replace(self, deviance=dev, solution=sol, info=info, fe_names=fe_names,
                                   rank=rank, family=dev.family)

    def at(self, x: np.ndarray) -> "FittedModel":
        """The same model with its solution at ``x`` (no optimisation): inference evaluated
        at given parameters (the tests' comparisons at a reference's estimates)."""
        return dataclasses.replace(self, solution=self.deviance.solution(np.asarray(x, dtype=float)))


# What a model with correlated residuals does not support yet (feature -> what it is).
_NOT_WITH_CORRELATION = {
    "refits": "profiling (refits with held parameters)",
}


# Digits the cross-products may cancel before the fit is redone on data moved by the
# random effects' conditional modes (a row pass): beyond 6, the deviance's last digits
# are rounding and the optimum is found only to about that precision.
_MAX_DIGITS_LOST = 6.0


def shifted_deviance(dev: Deviance, sol: Solution, design: Design, kept: np.ndarray | None = None
                     ) -> Deviance | None:
    """The deviance of the same data written ``D = D' + Z C`` (see :class:`._deviance.Shift`).

    ``C`` holds the conditional modes of every column of ``D = [X y]`` (measured from the
    cross-products' origin) at ``sol``; ``D'`` is computed from the rows of ``design`` (one
    pass). None where ``sol`` has a (near-)singular covariance factor, for which the
    unshifted form is the accurate one.
    """
    lams = sol.lams
    if any(np.abs(np.diag(lam)).min() <= 1e-6 * max(1.0, np.abs(lam).max()) for lam in lams):
        return None
    pt = sol._point
    C = [np.einsum("ab,bjm->ajm", lam, V) for lam, V in zip(lams, dev._modes_of_data(pt))]
    X = design.X_full if kept is None else design.X_full[:, kept]
    y = design.y
    if dev.cp.origin is not None:
        X, y = dev.cp.origin.rows(X, y)
    beta = dev.centred_beta(pt)
    # the response relative to the fitted fixed part: its conditional modes move with it
    for c in C:
        c[:, -1, :] -= np.einsum("ajm,j->am", c[:, :-1, :], beta)
    D = np.column_stack([X, y - X @ beta])
    for (codes, Z), Ck in zip(design.factors, C):
        D -= np.einsum("ra,ajr->rj", Z, Ck[:, :, codes])
    cp = cross_products(D[:, :-1], D[:, -1], design.factors, dev.terms, design.weights,
                        design.strata, design.n_strata)
    return Deviance(dev.cp, dev.reml, plan=dev.plan, shift=Shift(cp, C, beta.copy()))


def choose_solver(cp: CrossProducts, solver: str = "auto") -> tuple[str, Plan | None, str]:
    """The solver for ``solver`` ("auto", "exact" or "iterative"), the exact plan, and why.

    "auto" is exact when its plan exists (no block beyond the memory limits of
    :class:`._factor.Plan`, a fill of at most ``AUTO_MAX_FILL_PAIRS`` level pairs) and one
    factorisation of it costs at most ``AUTO_MAX_EXACT_FLOPS``, iterative beyond; with one term or residual strata always
    exact (the iterative solver takes neither).

    Returns
    -------
    solver : {"exact", "iterative"}
    plan : Plan or None
        The exact solver's plan (None for the iterative solver).
    reason : str
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "iterative":
        return "iterative", None, "solver='iterative'"
    if solver == "exact" or len(cp.terms) < 2 or cp.n_strata > 1:
        plan = Plan(cp.combined())
        why = "solver='exact'" if solver == "exact" else "one term or residual strata"
        return "exact", plan, f"{why}: {plan.describe()}"
    try:
        plan = Plan(cp.combined(), max_fill_pairs=AUTO_MAX_FILL_PAIRS)
    except ValueError as err:
        return "iterative", None, f"the exact solver would not fit ({err})"
    if plan.rest_cost > AUTO_MAX_EXACT_FLOPS:
        return "iterative", None, (f"the exact solver would cost ~{plan.rest_cost:.1e} flops per "
                                   f"evaluation ({plan.describe()})")
    return "exact", plan, f"exact ({plan.describe()}; ~{plan.rest_cost:.1e} flops per evaluation)"


def fit_model(cp: CrossProducts, reml: bool, *, solver: str = "auto", max_iter: int = 1000,
              tol: float = 1e-8, callback: Callable[[int, float], None] | None = None,
              verbose: int = 0, design: Design | None = None, kept: np.ndarray | None = None
              ) -> tuple[ProfiledDeviance, Solution, OptimizerInfo]:
    """Deviance, optimum and optimiser report of one data set (BLAS on one thread).

    ``solver`` as :func:`choose_solver`; ``verbose`` prints the choice and why. Where the
    random effects absorb nearly all of some column of ``[X y]`` (a very high intra-class
    correlation; covariates with random slopes) and the rows are at hand (``design``;
    ``kept`` the fixed-effects columns kept), an exact fit is finished on the shifted
    deviance, whose value keeps its digits there.
    """
    chosen, plan, reason = choose_solver(cp, solver)
    if verbose:
        print(f"[MixedLMRegressor] solver {chosen}: {reason}")
    if chosen == "iterative":
        dev = IterativeDeviance(cp, reml)
        if verbose:
            print(f"[MixedLMRegressor] {dev.plan.describe()}")
        with single_threaded_blas():
            sol, info = fit_stochastic(dev, max_iter=max_iter, tol=_STOCHASTIC_TOL, callback=callback)
        return dev, sol, info
    dev = Deviance(cp, reml, plan=plan)
    with single_threaded_blas():
        if dev.n_params == 0:
            sol = dev.solution(np.empty(0))
            info = OptimizerInfo(True, "no variance parameters", 0, 1, 0.0, np.zeros(0, dtype=bool))
            return dev, sol, info
        if plan.rounds is not None and plan.rest_cost > HYBRID_MIN_FLOPS and cp.n_strata == 1:
            # The iterative path, then exact Newton steps (the log-likelihood reported is
            # the exact one); the full optimiser when they do not converge.
            path = IterativeDeviance(cp, reml, plan=IterativePlan(cp, n_probes=_PATH_PROBES))
            x_path, path_info = fit_stochastic(path, max_iter=max_iter, tol=_STOCHASTIC_TOL, callback=callback)
            del path
            finished = finish_from(dev, x_path.x)
            if verbose:
                print(f"[MixedLMRegressor] iterative path: {path_info.n_fev} evaluations; exact finish "
                      + ("converged" if finished is not None else "did not converge: full optimiser"))
            if finished is not None:
                sol, info = finished
                info = dataclasses.replace(info, n_iter=info.n_iter + path_info.n_iter)
                return dev, sol, info
            sol, info = fit(dev, x0=x_path.x, max_iter=max_iter, tol=tol, callback=callback)
            return dev, sol, info
        sol, info = fit(dev, max_iter=max_iter, tol=tol, callback=callback)
        if design is not None and dev.digits_lost(sol.x) > _MAX_DIGITS_LOST:
            precise = shifted_deviance(dev, sol, design, kept)
            if precise is not None:
                refit, refit_info = fit(precise, x0=sol.x, max_iter=max_iter, tol=tol, search=False)
                refit_info = dataclasses.replace(refit_info, n_iter=info.n_iter + refit_info.n_iter,
                                                 n_fev=info.n_fev + refit_info.n_fev)
                return precise, refit, refit_info
    return dev, sol, info
