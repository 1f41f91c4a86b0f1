"""Refitting a fitted model to new responses of its rows (the engine side of simulation).

A bootstrap, a parametric LR test or a power simulation draws responses from a fit and
refits the model to each; everything that does not depend on the response is reused. Each
kind of fit is refitted through its own fitting path: a linear model through its
cross-products (:class:`Refitter`: the exact or the matrix-free deviance, one-term models
in batches), a GLMM on its rows (:class:`GLMMRefitter`: PIRLS and the Laplace or AGQ
deviance). Inference asks :func:`refitter_for` / :func:`rows_refitters` and never which
kind it has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._batched_refit import OneTermBatch
from ._crossprod import CrossProducts, ResponseMap, ResponseProducts, cross_products
from ._deviance import Deviance, Solution
from ._factor import NotPositiveDefinite
from ._family import Family, Link, separated
from ._glmm import GLMMDeviance, PIRLSDivergence, fit_glmm, glm_start
from ._model import FittedModel, minimise
from ._optimize import OptimizerInfo
from ._terms import Terms

__all__ = ["Rows", "model_rows", "Refit", "Refitter", "GLMMRefitter", "CorrelatedRefitter",
           "refitter_for", "rows_refitters", "REFIT_MULTISTART"]

# Responses simulated and refitted together: their cross-products come from one sparse
# product, and the (n, batch) block of responses stays small (73,421 x 32 doubles for
# InstEval: 19 MB). The batched one-term path gains from larger batches (one numpy call
# serves the whole batch): 250 to 1,000 responses cost the same per response on
# sleepstudy, 50 a third more.
_BATCH = 32
_BATCH_TOGETHER = 500

# Refits to simulated responses start from the generating parameters and skip the
# optimiser's other starts, keeping its zero-end comparison and escapes from bounds.
# Measured (400 replicates each, deviances compared with the full search): on sleepstudy
# (slopes; intercepts; 5 subjects), Orthodont (all; 6 subjects) and Penicillin the full
# search never lowered a refit by more than 1e-9 and cost 8-10 times as much; on a small
# crossed design with a singular fit (5 x 4 levels, a random slope) a refit without any
# search stayed on the bound in 86 of 400 replicates (up to 3.8 deviance units above the
# optimum), with the escapes alone in none.
REFIT_MULTISTART = False


@dataclass(frozen=True)
class Rows:
    """The rows of a model as simulation needs them.

    Attributes
    ----------
    X : ndarray of shape (n, p)
        The fixed-effects columns the model estimates (intercept included, aliased
        columns dropped): ``X @ beta`` is the fixed part.
    factors : tuple of (codes, Z)
        Per term: level of each row and the term's design.
    terms : Terms
    weights : ndarray or None
        Prior weights.
    strata : ndarray or None
        Residual stratum of each row (codes into the fit's strata).
    n_strata : int
    offset : ndarray or None
        The known part of the linear predictor (lme4's ``offset``).
    family, link : Family and Link, or None
        A GLMM's response distribution and link; None for a linear mixed model (normal
        residuals, identity link).
    correlation : tuple or None
        Correlated residuals within residual groups: the structure
        (:class:`~._correlation.CorrelationStructure`) and the rows' arrangement
        (:class:`~._correlation.CorrelationRows`); the parameter's value is one of the
        parameters a response is drawn from. None: independent residuals.
    """

    X: np.ndarray
    factors: tuple
    terms: Terms
    weights: np.ndarray | None
    strata: np.ndarray | None
    n_strata: int
    offset: np.ndarray | None
    family: Family | None = None
    link: Link | None = None
    correlation: tuple | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0]


def model_rows(model: Any, what: str = "simulation") -> Rows:
    """The rows of an in-memory fit (linear or GLMM); a clear error for fits that do not
    keep them."""
    design = model.design
    if design is None:
        raise NotImplementedError(
            f"{what} needs the rows of the fit; a model fitted from chunks or Dask keeps only "
            "its cross-products (a GLMM's, re-read at every step). Fit the data in memory "
            "(the estimator's fit) to simulate.")
    X = design.X_full
    if model.rank is not None:
        X = X[:, model.rank.kept]
    # a response drawn from the family (None: normal about the mean with the fit's scale)
    family = None if model.family.scale_estimated else model.family
    link = None if family is None else family.link
    corr = model.correlation
    correlation = None if corr is None else (corr.structure, corr.data.rows)
    return Rows(np.ascontiguousarray(X, dtype=float), tuple(design.factors), model.terms,
                design.weights, design.strata, design.n_strata, getattr(design, "offset", None),
                family, link, correlation)


# ---- refitting a model to new responses -----------------------------------------------------


@dataclass
class Refit:
    """One refit: its optimum, how the optimiser went, and the engine's solution on demand.

    ``theta``, ``ratios``, ``beta``, ``scale`` and ``deviance`` are those of
    :class:`~mixedlm_sklearn._deviance.Solution`; :meth:`solved` gives the engine's
    deviance function and solution there (computed when first asked for a refit of the
    batched path, which does not form them).
    """

    theta: np.ndarray
    ratios: np.ndarray
    beta: np.ndarray
    scale: float
    deviance: float
    info: OptimizerInfo
    _solved: tuple | None = None
    _source: tuple | None = None  # (refitter, products, j) to solve on demand
    # the refit's residual correlation (a FittedCorrelation) with correlated residuals
    correlation: Any = None

    @property
    def x(self) -> np.ndarray:
        return np.concatenate([self.theta, 0.5 * np.log(self.ratios[1:])])

    @property
    def correlation_values(self) -> np.ndarray:
        """The residual correlation's parameters of the refit (empty: independent
        residuals), as :attr:`~._model.FittedModel.correlation_values`."""
        return np.array([] if self.correlation is None else [self.correlation.value], dtype=float)

    @property
    def converged(self) -> bool:
        return self.info.converged

    def solved(self) -> tuple[Any, Solution]:
        if self._solved is None:
            refitter, products, j = self._source
            dev = refitter.deviance_of(refitter.template.with_response(products, j))
            self._solved = (dev, dev.solution(self.x))
        return self._solved


class Refitter:
    """Refits one model to responses of its rows, reusing everything that does not depend
    on the response: the response-free cross-products, the deviance's plan and a start.

    Each refit goes through the fitting path of the model's own kind of deviance (the
    exact one, or the matrix-free one of ``solver="iterative"``: :func:`~mixedlm_sklearn.
    _model.minimise`).

    Parameters
    ----------
    rows : Rows
    template : CrossProducts
        Cross-products of ``rows`` with any response (the fit's own). With an
        :class:`~mixedlm_sklearn._crossprod.Origin` the responses are measured from it too,
        so that a response far from 0 keeps its digits; the refits report the fixed
        effects of the columns as given either way.
    reml : bool
    x0 : ndarray
        Start of every refit: the parameters the responses are drawn from.
    deviance : ProfiledDeviance, optional
        A deviance of the same terms and levels (the fit's): its kind and plan serve the
        refits (:meth:`~mixedlm_sklearn._model.ProfiledDeviance.with_data`). Default an
        exact deviance planned for ``template``.
    multistart : bool
        Also the optimiser's other starts (small problems). By default a refit runs the
        local search from ``x0`` and the cheap safeguards only: the comparison with the
        zero end and the escapes from bounds (see :data:`REFIT_MULTISTART`).
    max_iter, tol : as the estimator's.
    """

    def __init__(self, rows: Rows, template: CrossProducts, reml: bool, x0: np.ndarray,
                 deviance: Any = None, multistart: bool = REFIT_MULTISTART, max_iter: int = 1000,
                 tol: float = 1e-8) -> None:
        self.rows, self.template, self.reml = rows, template, reml
        self.x0 = np.asarray(x0, dtype=float)
        self.prototype = deviance if deviance is not None else Deviance(template, reml)
        self.multistart, self.max_iter, self.tol = multistart, max_iter, tol
        self.origin = template.origin
        X = rows.X if self.origin is None else self.origin.rows(rows.X, np.zeros(rows.n))[0]
        self.response_map = ResponseMap(X, rows.factors, rows.terms, rows.weights, rows.strata,
                                        rows.n_strata)
        # One term and one stratum: the responses of a batch are refitted together
        # (:mod:`.._batched_refit`), the engine taking over replicates that do not settle.
        self.batch = None
        if len(template.terms) == 1 and template.n_strata == 1 and not multistart:
            self.batch = OneTermBatch(template, reml)
            theta0 = self.x0[:template.terms.n_theta].copy()
            # From a zero variance Newton's method cannot leave (the deviance is even in
            # that entry): the batch starts off the bound.
            zero = np.isfinite(template.terms.lower_bounds()) & (theta0 <= 0.0)
            largest = float(np.abs(theta0).max())
            theta0[zero] = 0.1 * largest if largest > 0 else 0.1
            self.batch_start = theta0

    @property
    def batch_size(self) -> int:
        """Responses per batch: many for the batched path, fewer for the engine's."""
        return _BATCH_TOGETHER if self.batch is not None else _BATCH

    @classmethod
    def of_model(cls, model: FittedModel, reml: bool | None = None, x0: np.ndarray | None = None,
                 multistart: bool = REFIT_MULTISTART) -> "Refitter":
        """A refitter of a fit's own rows (``reml`` and ``x0`` default to the fit's)."""
        rows = model_rows(model)
        return cls(rows, model.deviance.cp, model.reml if reml is None else reml,
                   model.x if x0 is None else x0, model.deviance, multistart, model.max_iter,
                   model.tol)

    def deviance_of(self, cp: CrossProducts) -> Any:
        """The refits' deviance of cross-products ``cp`` (the prototype's kind and plan)."""
        return self.prototype.with_data(cp, self.reml)

    def products(self, Y: np.ndarray) -> ResponseProducts:
        """The response-dependent cross-products of responses ``Y`` (n, k) *with* offset."""
        if self.rows.offset is not None:
            Y = Y - self.rows.offset[:, None]
        if self.origin is not None:
            Y = self.origin.response(Y, self.rows.X)
        return self.response_map(Y)

    def refit_all(self, products: ResponseProducts) -> list:
        """The refit (:class:`Refit`) to every response of ``products``, or why it failed."""
        k = products.n_responses
        out: list = [None] * k
        if self.batch is not None:
            with np.errstate(all="ignore"):
                batch = self.batch.fit(products, self.batch_start, self.max_iter)
            ratios = np.ones(1)
            for j in np.flatnonzero(batch.settled):
                info = OptimizerInfo(True, "converged: batched Newton", int(batch.n_iter[j]),
                                     int(batch.n_iter[j]), float(batch.scaled_gradient[j]),
                                     batch.at_bound[j].copy())
                beta = batch.beta[j] if self.origin is None else self.origin.beta(batch.beta[j])
                out[j] = Refit(batch.theta[j], ratios, beta, float(batch.scale[j]),
                               float(batch.deviance[j]), info, _source=(self, products, j))
        for j in range(k):
            if out[j] is None:
                res = self.refit(products, j)
                out[j] = res if isinstance(res, str) else Refit(
                    res[1].theta, res[1].ratios, res[1].beta, float(res[1].scale),
                    float(res[1].deviance), res[2], _solved=(res[0], res[1]))
        return out

    def refit(self, products: ResponseProducts, j: int) -> tuple[Any, Solution, OptimizerInfo] | str:
        """The engine's fit to response ``j``, or the reason it failed: from :attr:`x0`,
        and when that does not converge, again as a plain fit runs (its start and
        search)."""
        cp = self.template.with_response(products, j)
        try:
            dev = self.deviance_of(cp)
            with np.errstate(all="ignore"):
                sol, info = minimise(dev, x0=self.x0, max_iter=self.max_iter, tol=self.tol,
                                     search=True, multistart=self.multistart)
                if not info.converged:  # run again as a plain fit runs
                    sol, info = minimise(dev, max_iter=self.max_iter, tol=self.tol, search=True)
        except (FloatingPointError, ValueError, np.linalg.LinAlgError) as err:
            return f"{type(err).__name__}: {err}"
        if not (np.isfinite(sol.deviance) and np.isfinite(sol.scale) and sol.scale > 0):
            return "the refit gave a non-finite deviance or a zero residual variance"
        return dev, sol, info

    def replicate_model(self, model: FittedModel, y: np.ndarray, refit: Refit) -> FittedModel:
        """``model`` as refitted to the response ``y`` (offset included) by ``refit``."""
        dev, sol = refit.solved()
        design = model.design
        y_model = y - design.offset if design.offset is not None else y
        return dataclasses.replace(model, deviance=dev, solution=sol, info=refit.info,
                                   design=dataclasses.replace(design, y=y_model))


class GLMMRefitter:
    """Refits a GLMM to responses of its rows through its own fitting path
    (:func:`~mixedlm_sklearn._glmm.fit_glmm`: PIRLS inside, the Laplace or AGQ deviance
    outside), reusing the deviance's structure (the design's sparsity pattern and
    elimination plan: :meth:`~mixedlm_sklearn._glmm.GLMMDeviance.with_response`) and
    starting from the fit's ``(theta, beta)``; a refit that fails or does not converge
    from there is run again from a plain fit's start (:meth:`refit`). Unlike the linear
    model's refits (:data:`REFIT_MULTISTART`) these keep the other starts of small problems
    (:func:`~mixedlm_sklearn._glmm._other_starts`): on four small ``(x | g)`` designs
    they lowered 3 of 100 refits started from the generating parameters, by up to 0.27
    deviance units (at about 8 times the cost of such a refit).

    Parameters
    ----------
    deviance : GLMMDeviance
        The fit's deviance (any response).
    x0 : ndarray
        Start of every refit: the parameters the responses are drawn from. A variance
        parameter on its bound 0 starts off it (at a tenth of the largest, or 0.1): the
        deviance is even in it, so a gradient method could not leave 0.
    max_iter, tol : as the estimator's.
    """

    batch_size = _BATCH

    def __init__(self, deviance: GLMMDeviance, x0: np.ndarray, max_iter: int = 1000,
                 tol: float = 1e-8) -> None:
        self.deviance, self.max_iter, self.tol = deviance, max_iter, tol
        x0 = np.array(x0, dtype=float)
        theta = x0[:deviance.n_theta]
        zero = np.isfinite(deviance.terms.lower_bounds()) & (theta <= 0.0)
        largest = float(np.abs(theta).max(initial=0.0))
        theta[zero] = 0.1 * largest if largest > 0 else 0.1
        self.x0 = x0

    @classmethod
    def of_model(cls, model: Any) -> "GLMMRefitter":
        return cls(model.deviance, model.x, model.max_iter, model.tol)

    def products(self, Y: np.ndarray) -> np.ndarray:
        """What a refit needs of responses ``Y`` (n, k): the responses themselves (PIRLS
        weights change with the response; nothing is computed ahead)."""
        return Y

    def refit_all(self, Y: np.ndarray) -> list:
        """The refit (:class:`Refit`) to every column of ``Y``, or why it failed."""
        return [self.refit(Y[:, j]) for j in range(Y.shape[1])]

    def refit(self, y: np.ndarray) -> Refit | str:
        """The refit to ``y``, or why it failed.

        From the fit's parameters first; a refit that fails or does not converge there
        is run again as a plain fit of ``y`` runs (:meth:`cold_start`), and that one is
        the result (its ``info`` says whether it converged). A fit whose probabilities
        are numerically 0 or 1 (separated classes: estimates not finite) has failed.
        """
        warm = self._fit(self.deviance.with_response(y), self.x0)
        if isinstance(warm, Refit) and warm.info.converged:
            return warm
        dev = self.deviance.with_response(y)
        return self._fit(dev, self.cold_start(dev))

    @staticmethod
    def cold_start(dev: GLMMDeviance) -> np.ndarray:
        """The start of a plain fit (the estimator's): identity ``theta`` and the GLM's
        ``beta`` (lme4's)."""
        beta0, _ = glm_start(dev.X, dev.y, dev.prior, dev.offset, dev.family, dev.link)
        return np.concatenate([dev.terms.identity_theta(), beta0])

    def _fit(self, dev: GLMMDeviance, x0: np.ndarray) -> Refit | str:
        try:
            with np.errstate(all="ignore"):
                sol, info = fit_glmm(dev, x0, self.max_iter, ftol=self.tol)
        except (PIRLSDivergence, NotPositiveDefinite, FloatingPointError, ValueError,
                np.linalg.LinAlgError) as err:
            return f"{type(err).__name__}: {err}"
        if not (np.isfinite(sol.deviance) and np.all(np.isfinite(sol.x))):
            return "the refit gave a non-finite deviance or estimates"
        if separated(dev.family, sol.mu):
            return ("fitted probabilities numerically 0 or 1: the simulated classes are "
                    "(quasi-)separated, and the estimates are not finite")
        return Refit(sol.theta, sol.ratios, sol.beta, sol.scale, float(sol.deviance), info,
                     _solved=(dev, sol))

    def replicate_model(self, model: Any, y: np.ndarray, refit: Refit) -> Any:
        """``model`` as refitted to the response ``y`` by ``refit``."""
        dev, sol = refit.solved()
        return dataclasses.replace(model, deviance=dev, solution=sol, info=refit.info,
                                   design=dataclasses.replace(model.design, y=np.asarray(y, dtype=float)))


class CorrelatedRefitter:
    """Refits a model with correlated residuals to responses of its rows through its own
    fitting path (:func:`~._correlation.fit_correlated`: the correlation parameter searched
    as in the fit, theta, beta and sigma of the whitened data at each value). Only the
    response changes: the rows' arrangement, whitening structure and designs are the fit's.

    Parameters
    ----------
    correlation : FittedCorrelation
        The fit's correlation (its rows in residual-group order and its settings).
    reml : bool
    offset : ndarray or None
        The rows' offset (in the rows' own order), subtracted from the responses.
    columns : ndarray of int, optional
        Keep these fixed-effects columns only (a nested model).
    start : tuple, optional
        ``(value, x0, deviance)``: the correlation parameter (nlme's scale) and the
        ``(theta, eta)`` the responses are drawn from, and a deviance of the fit (its plan
        serves the inner fits). Each refit then searches the correlation in a bracket
        around it, the inner fits locally from ``x0``
        (:func:`~._correlation.fit_correlated`); None: every refit as a plain fit runs.
    max_iter, tol : as the estimator's.
    rows : Rows, optional
        The rows the responses belong to (as :attr:`Refitter.rows`).
    """

    batch_size = _BATCH

    def __init__(self, correlation: Any, reml: bool, offset: np.ndarray | None = None,
                 columns: np.ndarray | None = None, max_iter: int = 1000, tol: float = 1e-8,
                 start: tuple | None = None, rows: Rows | None = None) -> None:
        self.rows = rows
        data = correlation.data
        if columns is not None:
            data = dataclasses.replace(data, X=np.ascontiguousarray(data.X[:, np.asarray(columns)]))
        self.data, self.correlation, self.reml, self.offset = data, correlation, bool(reml), offset
        self.max_iter, self.tol = max_iter, tol
        self.start = None
        if start is not None:
            value, x0, deviance = start
            st = correlation.structure
            edge = st.boundary_value()
            u0 = -np.inf if edge is not None and value == edge else st.internal(value, data.rows)
            inner = getattr(deviance, "inner", deviance)
            self.start = (u0, np.asarray(x0, dtype=float), inner)

    @classmethod
    def of_model(cls, model: FittedModel) -> "CorrelatedRefitter":
        return cls(model.correlation, model.reml, model.design.offset, None, model.max_iter,
                   model.tol, (model.correlation.value, model.x, model.deviance), model_rows(model))

    def products(self, Y: np.ndarray) -> np.ndarray:
        """The responses without offset, in residual-group order (n, k)."""
        if self.offset is not None:
            Y = Y - self.offset[:, None]
        return np.asarray(Y, dtype=float)[self.data.rows.order]

    def refit_all(self, Y: np.ndarray) -> list:
        """The refit (:class:`Refit`) to every column of ``Y`` (from :meth:`products`), or
        why it failed."""
        return [self.refit(Y[:, j]) for j in range(Y.shape[1])]

    def refit(self, y_sorted: np.ndarray) -> Refit | str:
        from ._correlation import fit_correlated

        data = dataclasses.replace(self.data, y=np.ascontiguousarray(y_sorted))
        corr = self.correlation
        try:
            dev, sol, info, fitted = fit_correlated(data, self.reml, corr.group_name, corr.solver,
                                                    self.max_iter, self.tol, self.start)
        except (FloatingPointError, ValueError, np.linalg.LinAlgError) as err:
            return f"{type(err).__name__}: {err}"
        if not (np.isfinite(sol.deviance) and np.isfinite(sol.scale) and sol.scale > 0):
            return "the refit gave a non-finite deviance or a zero residual variance"
        return Refit(sol.theta, sol.ratios, sol.beta, float(sol.scale), float(sol.deviance), info,
                     _solved=(dev, sol), correlation=fitted)

    def replicate_model(self, model: FittedModel, y: np.ndarray, refit: Refit) -> FittedModel:
        """``model`` as refitted to the response ``y`` (offset included) by ``refit``."""
        dev, sol = refit.solved()
        design = model.design
        y_model = y - design.offset if design.offset is not None else y
        return dataclasses.replace(model, deviance=dev, solution=sol, info=refit.info,
                                   correlation=refit.correlation,
                                   design=dataclasses.replace(design, y=y_model))


def rows_refitters(model: FittedModel, rows: Rows, params: Any, keep: np.ndarray | None = None,
                   reml: bool = False, resized: bool = False) -> tuple[Any, Any]:
    """Refitters of ``model`` on ``rows`` (the fit's, or resized ones: ``resized``), started
    from ``params`` (``beta``, ``lams``; a :class:`~.inference.simulation.Parameters`): the
    full model and, with ``keep``, the model with only those fixed-effects columns (by
    maximum likelihood). A linear model is refitted through its cross-products (``reml``
    for the full model), a GLMM on its rows."""
    theta = rows.terms.theta_of(params.lams)
    if model.correlation is not None:
        if resized:
            raise NotImplementedError(
                "simulated designs with other numbers of levels (n_groups) are not supported "
                "with correlated residuals: the residual groups would have to be resized too")
        offset = model.design.offset
        start = (float(params.correlation[0]), params.x(rows.terms), model.deviance)
        full = CorrelatedRefitter(model.correlation, reml, offset, None, model.max_iter, model.tol,
                                  start, rows)
        if keep is None:
            return full, None
        return full, CorrelatedRefitter(model.correlation, False, offset, keep, model.max_iter,
                                        model.tol, start,
                                        dataclasses.replace(rows, X=np.ascontiguousarray(rows.X[:, keep])))
    if not model.profiled_beta:
        # the refits' deviance on these rows (every refit replaces the response)
        dev = GLMMDeviance(rows.X, np.zeros(rows.n),
                           np.ones(rows.n) if rows.weights is None else rows.weights,
                           np.zeros(rows.n) if rows.offset is None else rows.offset,
                           rows.factors, rows.terms, rows.family, rows.link, model.n_agq)
        full = GLMMRefitter(dev, np.concatenate([theta, params.beta]), model.max_iter, model.tol)
        if keep is None:
            return full, None
        return full, GLMMRefitter(dev.with_columns(keep),
                                  np.concatenate([theta, params.beta[keep]]), model.max_iter,
                                  model.tol)
    if resized:
        template = cross_products(rows.X, rows.X @ params.beta, rows.factors, rows.terms,
                                  rows.weights, rows.strata, rows.n_strata)
        prototype = model.deviance.with_data(template, reml, replan=True)
    else:
        template, prototype = model.cross_products, model.deviance
    x0 = params.x(rows.terms)
    full = Refitter(rows, template, reml, x0, prototype, max_iter=model.max_iter, tol=model.tol)
    if keep is None:
        return full, None
    return full, Refitter(dataclasses.replace(rows, X=np.ascontiguousarray(rows.X[:, keep])),
                          template.select_fixed(keep), False, x0, prototype,
                          max_iter=model.max_iter, tol=model.tol)


def refitter_for(model: Any) -> "Refitter | GLMMRefitter":
    """The refitter of a fit's own rows, started from its parameters."""
    if model.correlation is not None:
        return CorrelatedRefitter.of_model(model)
    return Refitter.of_model(model) if model.profiled_beta else GLMMRefitter.of_model(model)
