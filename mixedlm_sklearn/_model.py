"""A fitted model as the estimator and inference see it, and the fit that makes one.

lme4's pipeline (Bates et al. 2015; ``lFormula -> mkLmerDevfun -> optimizeLmer ->
mkMerMod``): cross-products (:mod:`._crossprod`) -> deviance (:mod:`._deviance`) ->
optimiser (:mod:`._optimize`) -> :class:`FittedModel`. Inference is written once against
the small protocol of :class:`FittedModel`: the deviance at given parameters, the
solution there, a refit (by ML, from a start, with the search off), the names and the
bounds of the parameters. It never asks what kind of model it has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ._crossprod import CrossProducts
from ._design import Design
from ._deviance import Deviance, Solution
from ._optimize import OptimizerInfo, fit
from ._terms import Terms
from ._threads import single_threaded_blas

__all__ = ["FittedModel", "fit_model"]


@dataclass(frozen=True)
class FittedModel:
    """A fitted linear mixed model.

    Attributes
    ----------
    deviance : Deviance
        ``x = (theta, eta) -> deviance`` on the fitted data (REML or ML as fitted).
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
    """

    deviance: Deviance
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

    @property
    def reml(self) -> bool:
        return self.deviance.reml

    @property
    def cross_products(self) -> CrossProducts:
        return self.deviance.cp

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
              search: bool = False) -> "FittedModel":
        """The same data fitted again (by ML with ``reml=False``), from ``x0`` (default the fit)."""
        reml = self.reml if reml is None else reml
        dev = self.deviance if reml == self.reml else Deviance(self.deviance.cp, reml, plan=self.deviance.plan)
        x0 = self.x if x0 is None else x0
        with single_threaded_blas():
            if dev.n_params == 0:
                sol, info = dev.solution(x0), self.info
            else:
                sol, info = fit(dev, x0=x0, max_iter=self.max_iter, tol=self.tol, search=search)
        return dataclasses.replace(self, deviance=dev, solution=sol, info=info)


def fit_model(cp: CrossProducts, reml: bool, *, max_iter: int = 1000, tol: float = 1e-8,
              callback: Callable[[int, float], None] | None = None) -> tuple[Deviance, Solution, OptimizerInfo]:
    """Deviance, optimum and optimiser report of one data set (BLAS on one thread)."""
    dev = Deviance(cp, reml)
    with single_threaded_blas():
        if dev.n_params == 0:
            sol = dev.solution(np.empty(0))
            info = OptimizerInfo(True, "no variance parameters", 0, 1, 0.0, np.zeros(0, dtype=bool))
        else:
            sol, info = fit(dev, max_iter=max_iter, tol=tol, callback=callback)
    return dev, sol, info
