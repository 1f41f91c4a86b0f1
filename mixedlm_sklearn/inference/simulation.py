"""Responses drawn from a fitted model, and the machinery that refits the model to them.

A fitted linear mixed model is a distribution of the response: per term ``k`` and level
``l`` the random effects ``b_kl ~ N(0, sigma^2 L_k L_k')``, and the residual of row ``r``
``e_r ~ N(0, sigma^2 delta_s(r)^2 / w_r)`` (``delta_s`` the residual standard-deviation
ratio of the row's stratum, ``w_r`` its prior weight), so ``y = X beta + sum_k Z_k b_k +
e`` (lme4's ``simulate.merMod``; Bates et al. 2015, JSS 67(1), sec. 1). With
``conditional=True`` the random effects are the fit's conditional modes instead
(lme4's ``use.u = TRUE``).

A generalized linear mixed model (:class:`~mixedlm_sklearn.MixedGLMRegressor`,
:class:`~mixedlm_sklearn.MixedGLMClassifier`) is the same up to its last step: the random
effects ``b_kl ~ N(0, L_k L_k')`` (dispersion 1) give the linear predictor
``eta = offset + X beta + sum_k Z_k b_k``, and the response is drawn from the family with
mean ``g^{-1}(eta)`` (R's ``family$simulate``): binomial successes of ``w_r`` trials as a
proportion (Bernoulli 0/1 for ``w_r = 1``; R's ``glm`` convention), Poisson counts. So
:class:`Sampler` draws the linear predictor once for both kinds of model, and only the
response's distribution (:class:`GaussianResponse`, :class:`FamilyResponse`) differs;
refits go through the model's own fitting path (:class:`Refitter`: the linear engine;
:class:`GLMMRefitter`: PIRLS and the Laplace or AGQ deviance), both started from the fit.

Everything simulation-based (:mod:`.bootstrap`, :mod:`.power`) refits models to such
responses. Only ``Z'Wy``, ``X'Wy`` and ``y'Wy`` depend on the response, so a refit needs
neither a pass over the rows nor a new elimination plan:
:class:`~mixedlm_sklearn._crossprod.ResponseMap` computes those products for a whole
batch of responses in one sparse product,
:meth:`~mixedlm_sklearn._crossprod.CrossProducts.with_response` puts one of them into the
original cross-products, and the optimiser starts from the parameters the responses were
drawn from.

Reproducibility: replicate ``j`` draws everything from its own generator, the ``j``-th
child of ``np.random.default_rng(random_state)`` (``Generator.spawn``). Replicates are
therefore the same whether they run in one process or are spread over several
(``n_jobs``), and ``simulate(n, random_state)[:, j]`` is the response of replicate ``j``
of a bootstrap with the same ``random_state``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._batched_refit import OneTermBatch
from .._crossprod import CrossProducts, ResponseMap, ResponseProducts
from .._deviance import Deviance, Solution
from .._factor import NotPositiveDefinite
from .._glmm import (Family, GLMMDeviance, Link, PIRLSDivergence, fit_glmm, glm_start,
                     separated)
from .._model import FittedModel, minimise
from .._optimize import OptimizerInfo
from .._terms import Terms
from .._threads import single_threaded_blas
from ._parameters import ratio_names, theta_to_sdcor

__all__ = ["simulate", "Rows", "Parameters", "Sampler", "GaussianResponse", "FamilyResponse",
           "Refit", "Refitter", "GLMMRefitter", "refitter_for", "run_replicates",
           "replicate_generators", "parameter_names", "lme4_parameters", "lme4_parameters_many",
           "model_rows", "simulation_model", "is_glmm", "RefitCounts"]

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

# Replicate status codes.
OK, NOT_CONVERGED, FAILED = 0, 1, 2


class RefitCounts:
    """Count the failed and the non-converged refits of a result of many refits.

    Computed from its ``failed`` and ``converged`` arrays (one entry per refit; a
    failed refit is not counted as non-converged).

    See Also
    --------
    mixedlm_sklearn.inference.BootstrapResult : A result of many refits.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> boot = fit.bootstrap(n_boot=20, random_state=0)
    >>> boot.n_failed, boot.n_nonconverged
    (0, 0)
    """

    @property
    def n_failed(self) -> int:
        """Number of refits that failed (their rows are NaN).

        See Also
        --------
        mixedlm_sklearn.inference.bootstrap : A result with refits.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.bootstrap(n_boot=20, random_state=0).n_failed
        0
        """
        return int(np.sum(self.failed))

    @property
    def n_nonconverged(self) -> int:
        """Number of refits that did not converge (kept, as lme4 keeps them).

        See Also
        --------
        mixedlm_sklearn.inference.bootstrap : A result with refits.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
        >>> fit.bootstrap(n_boot=20, random_state=0).n_nonconverged
        0
        """
        return int(np.sum(~self.converged & ~self.failed))


# ---- the rows and the parameters a response is drawn from ----------------------------------


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

    @property
    def n(self) -> int:
        return self.X.shape[0]


def is_glmm(model: Any) -> bool:
    """Whether a fitted model is a GLMM's (:class:`~mixedlm_sklearn.glm_estimator.GLMMFit`)."""
    from ..glm_estimator import GLMMFit

    return isinstance(model, GLMMFit)


def simulation_model(est: Any, role: str = "est") -> Any:
    """The fitted model of a linear or generalized linear mixed-model estimator (or the
    model itself), or a TypeError naming the argument."""
    if isinstance(est, FittedModel) or is_glmm(est):
        return est
    model = getattr(est, "model_", None)
    if not (isinstance(model, FittedModel) or is_glmm(model)):
        if hasattr(est, "many_"):
            from ._parameters import several_responses

            raise TypeError(several_responses(role))
        raise TypeError(f"{role} must be a fitted MixedLMRegressor, MixedGLMClassifier or "
                        "MixedGLMRegressor")
    return model


def model_rows(model: Any, what: str = "simulation") -> Rows:
    """The rows of an in-memory fit (linear or GLMM); a clear error for fits that do not
    keep them."""
    design = model.design
    if design is None:
        raise NotImplementedError(
            f"{what} needs the rows of the fit; a model fitted from chunks or Dask keeps only "
            "its cross-products. Fit the data in memory (MixedLMRegressor.fit) to simulate.")
    X = design.X_full
    if model.rank is not None:
        X = X[:, model.rank.kept]
    family, link = (model.deviance.family, model.deviance.link) if is_glmm(model) else (None, None)
    return Rows(np.ascontiguousarray(X, dtype=float), tuple(design.factors), model.terms,
                design.weights, design.strata, design.n_strata, getattr(design, "offset", None),
                family, link)


@dataclass(frozen=True)
class Parameters:
    """The parameters a response is drawn from.

    Attributes
    ----------
    beta : ndarray of shape (p,)
    lams : list of (q_k, q_k) arrays
        Relative covariance factors: ``Cov(b_kl) = scale * L_k L_k'``.
    scale : float
        Residual variance of the reference stratum.
    ratios : ndarray of shape (S,)
        Residual variance of each stratum relative to the reference (first, 1).
    modes : list of (m_k, q_k) arrays or None
        Conditional modes of the random effects (for ``conditional=True``).
    """

    beta: np.ndarray
    lams: list
    scale: float
    ratios: np.ndarray
    modes: list | None = None

    @classmethod
    def of(cls, solution: Solution, modes: bool = False) -> "Parameters":
        return cls(solution.beta.copy(), [np.array(lam) for lam in solution.lams], float(solution.scale),
                   np.array(solution.ratios, dtype=float), solution.blups() if modes else None)

    def x(self, terms: Terms) -> np.ndarray:
        """``(theta, eta)`` of these parameters (the optimiser's start for refits)."""
        return np.concatenate([terms.theta_of(self.lams), 0.5 * np.log(self.ratios[1:])])


class GaussianResponse:
    """A linear mixed model's response: the linear predictor plus a normal residual of
    variance ``scale * ratio_s / w_r`` (stratum ratio, prior weight)."""

    def __init__(self, rows: Rows, params: Parameters) -> None:
        variance = params.scale * (params.ratios[rows.strata] if rows.strata is not None
                                   else np.full(rows.n, params.ratios[0]))
        if rows.weights is not None:
            variance = variance / rows.weights
        self.residual_sd = np.sqrt(variance)

    def draw(self, generator: np.random.Generator, eta: np.ndarray) -> np.ndarray:
        return eta + self.residual_sd * generator.standard_normal(eta.size)


class FamilyResponse:
    """A GLMM's response: drawn from the family with mean ``g^{-1}(eta)`` and the rows'
    prior weights (binomial: the number of trials)."""

    def __init__(self, rows: Rows) -> None:
        self.family, self.link = rows.family, rows.link
        self.weights = np.ones(rows.n) if rows.weights is None else rows.weights
        self.family.check_simulation_weights(self.weights)

    def draw(self, generator: np.random.Generator, eta: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", under="ignore"):
            mu = self.link.inverse(eta)
        return self.family.sample(generator, mu, self.weights)


class Sampler:
    """Draws responses of given rows from given parameters.

    Parameters
    ----------
    rows : Rows
    params : Parameters
    conditional : bool
        Keep the conditional modes ``params.modes`` instead of drawing new random effects.
    with_offset : bool
        Add the rows' offset (the response as the user sees it); refits subtract it again.
        A GLMM's offset is inside the link: always added.
    """

    def __init__(self, rows: Rows, params: Parameters, conditional: bool = False,
                 with_offset: bool = True) -> None:
        if conditional and params.modes is None:
            raise ValueError("conditional simulation needs the conditional modes")
        self.rows, self.conditional = rows, conditional
        mean = rows.X @ params.beta
        if (with_offset or rows.family is not None) and rows.offset is not None:
            mean = mean + rows.offset
        if conditional:
            for (codes, Z), modes in zip(rows.factors, params.modes):
                mean = mean + np.einsum("rq,rq->r", Z, modes[codes])
        self.mean = mean
        self.response = GaussianResponse(rows, params) if rows.family is None else FamilyResponse(rows)
        # b_l = sigma L u_l with u_l standard normal: rows of U times (sigma L)'.
        self.factors_t = [np.sqrt(params.scale) * lam.T for lam in params.lams]

    def draw(self, generators: Sequence[np.random.Generator]) -> np.ndarray:
        """One response per generator, (n, k). Each generator draws, in this order, the
        standard normal random effects of every term (levels by rows, ``(m_k, q_k)``; not
        when conditional) and then the response given the linear predictor (the ``n``
        standard normal residuals; a GLMM's family draws)."""
        rows, k = self.rows, len(generators)
        U = [np.empty((k, t.n_levels, t.q)) for t in rows.terms] if not self.conditional else []
        for j, gen in enumerate(generators):
            for u, t in zip(U, rows.terms):
                u[j] = gen.standard_normal((t.n_levels, t.q))
        eta = np.repeat(self.mean[:, None], k, axis=1)
        for u, (codes, Z), factor_t in zip(U, rows.factors, self.factors_t):
            B = u @ factor_t  # (k, m, q): the random effects of each replicate
            for a in range(Z.shape[1]):
                eta += Z[:, a, None] * B[:, codes, a].T
        Y = np.empty((rows.n, k))
        for j, gen in enumerate(generators):
            Y[:, j] = self.response.draw(gen, eta[:, j])
        return Y


def replicate_generators(random_state: Any, n: int) -> list[np.random.Generator]:
    """One independent generator per replicate: the children of ``default_rng(random_state)``."""
    if isinstance(random_state, np.random.RandomState):
        raise TypeError("random_state must be None, an int, a numpy SeedSequence or Generator; "
                        "a legacy RandomState cannot spawn independent streams")
    try:
        root = np.random.default_rng(random_state)
    except (TypeError, ValueError) as err:
        raise TypeError(f"random_state must be None, an int, a numpy SeedSequence or Generator: "
                        f"{err}") from None
    return root.spawn(n)


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ---- parameters on lme4's scale -------------------------------------------------------------


def _sigma_names(model: Any) -> list[str]:
    """``sigma`` when the model estimates a residual scale (a GLMM's dispersion is fixed at 1,
    and lme4 reports no sigma for a binomial or Poisson glmer)."""
    return [] if getattr(model, "fixed_scale", False) else ["sigma"]


def parameter_names(model: Any) -> list[str]:
    """lme4's names of the parameters (as in ``conf_int(method="profile")``)."""
    fixed = list(model.fe_names) if model.rank is None else list(model.rank.names)
    return model.terms.param_names() + _sigma_names(model) + ratio_names(model) + fixed


def lme4_parameters(solution: Any, model: Any) -> np.ndarray:
    """A solution's (or :class:`Refit`'s) parameters on lme4's scale, in
    :func:`parameter_names`' order (NaN for fixed effects dropped as aliased)."""
    sigma = float(np.sqrt(solution.scale))
    beta = solution.beta if model.rank is None else model.rank.expand(solution.beta, np.nan)
    return np.concatenate([theta_to_sdcor(solution.theta, sigma, model.terms),
                           [sigma] * len(_sigma_names(model)), np.sqrt(solution.ratios[1:]), beta])


def lme4_parameters_many(fits: Sequence[Any], model: FittedModel) -> np.ndarray:
    """:func:`lme4_parameters` of many solutions or refits at once, (K, n_params)."""
    theta = np.array([f.theta for f in fits], dtype=float).reshape(len(fits), -1)
    sigma = np.sqrt(np.array([f.scale for f in fits], dtype=float))
    ratios = np.array([f.ratios for f in fits], dtype=float).reshape(len(fits), -1)
    beta = np.array([f.beta for f in fits], dtype=float).reshape(len(fits), -1)
    if model.rank is not None:
        full = np.full((len(fits), model.rank.kept.size), np.nan)
        full[:, model.rank.kept] = beta
        beta = full
    parts = []
    for t, sl in zip(model.terms, model.terms.slices):
        lam = np.zeros((len(fits), t.q, t.q))
        rows, cols = t.theta_position
        lam[:, rows, cols] = theta[:, sl]
        rel = lam @ np.swapaxes(lam, 1, 2)
        sd = np.sqrt(np.diagonal(rel, axis1=1, axis2=2))
        denom = sd[:, rows] * sd[:, cols]
        cor = np.divide(rel[:, rows, cols], denom, out=np.zeros_like(denom), where=denom > 0)
        parts.append(np.where(rows == cols, sigma[:, None] * sd[:, rows], cor))
    sigmas = [sigma] * len(_sigma_names(model))
    return np.column_stack(parts + sigmas + [np.sqrt(ratios[:, 1:]), beta])


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

    @property
    def x(self) -> np.ndarray:
        return np.concatenate([self.theta, 0.5 * np.log(self.ratios[1:])])

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
    from there is run again from a plain fit's start (:meth:`refit`).

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


def refitter_for(model: Any) -> "Refitter | GLMMRefitter":
    """The refitter of a fit's own rows, started from its parameters."""
    return GLMMRefitter.of_model(model) if is_glmm(model) else Refitter.of_model(model)


# ---- running replicates ----------------------------------------------------------------------


def _batches(n: int, size: int) -> list[slice]:
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


def run_replicates(job: Callable[[list], dict], generators: list, n_jobs: int | None,
                   batch_size: int = _BATCH) -> dict:
    """``job(generators)`` over batches of replicates, serially or with joblib, concatenated
    in replicate order (so ``n_jobs`` does not change the result).

    ``job`` returns a dict of arrays whose first axis is the batch's replicates (and may
    hold a list under ``"messages"``: ``(replicate index in the batch, text)``).
    """
    import joblib

    n = len(generators)
    workers = min(joblib.effective_n_jobs(n_jobs), max(n, 1))
    if workers <= 1:
        parts = []
        with single_threaded_blas():
            for sl in _batches(n, batch_size):
                parts.append(job(generators[sl]))
    else:
        # A few batches per worker balance the load; each batch pickles the job once.
        size = max(1, min(batch_size, math.ceil(n / (2 * workers))))
        slices = _batches(n, size)
        parts = joblib.Parallel(n_jobs=workers)(
            joblib.delayed(_run_batch)(job, generators[sl]) for sl in slices)
    out: dict = {}
    offset = 0
    for part in parts:
        count = None
        for key, value in part.items():
            if key == "messages":
                out.setdefault(key, []).extend((offset + i, text) for i, text in value)
            else:
                out.setdefault(key, []).append(value)
                count = len(value)
        offset += count or 0
    return {k: (v if k == "messages" else np.concatenate(v)) for k, v in out.items()}


def _run_batch(job: Callable[[list], dict], generators: list) -> dict:
    with single_threaded_blas():
        return job(generators)


# ---- simulate -----------------------------------------------------------------------------


def simulate(est: Any, n_sim: int = 1, random_state: Any = None, conditional: bool = False) -> np.ndarray:
    """Draw responses from a fitted model (lme4's ``simulate``).

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMRegressor or MixedGLMClassifier
        Fitted in memory (a fit from chunks or Dask keeps no rows to simulate).
    n_sim : int, default=1
        Number of responses.
    random_state : None, int, numpy SeedSequence or Generator, default=None
        Seed. Response ``j`` is drawn from the ``j``-th child generator of
        ``np.random.default_rng(random_state)``, the same as replicate ``j`` of
        :func:`~mixedlm_sklearn.inference.bootstrap` with this ``random_state``.
    conditional : bool, default=False
        Keep the fit's conditional modes (BLUPs) of the random effects and draw only new
        residuals (lme4's ``use.u = TRUE``); by default new random effects are drawn too.

    Returns
    -------
    ndarray of shape (n_obs, n_sim)
        One column per response, one row per row of the fit (rows of weight 0 are not
        part of the fit). The offset, if any, is included. A GLMM's responses are on the
        scale it was fitted to: 0/1 (a classifier's ``classes_`` codes; its
        :meth:`~mixedlm_sklearn.MixedGLMClassifier.simulate` gives the labels), binomial
        proportions of ``sample_weight`` trials, Poisson counts.

    Raises
    ------
    ValueError
        A binomial GLMM whose ``sample_weight`` (trials) are not whole numbers, or a
        Poisson GLMM fitted with ``sample_weight``: no response distribution to draw from
        (R's ``simulate`` ignores a Poisson model's weights; this refuses).

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.simulate : The same, as a method.
    mixedlm_sklearn.inference.bootstrap : Refit the model to each response.

    Notes
    -----
    Works for every model kind: several grouping factors, a residual variance per stratum
    (``residual_groups``; row variance ``scale * ratio``), prior weights (variance
    ``scale / w``). Aliased fixed-effects columns contribute nothing (their coefficient is
    0, as in ``predict``). For a GLMM the random effects are drawn from ``cov_re_``, the
    linear predictor includes the offset, and the response is drawn from the family
    (binomial, Poisson) with mean ``g^{-1}(eta)``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> est = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> Y = est.simulate(n_sim=2000, random_state=1)
    >>> Y.shape
    (180, 2000)
    >>> # the variance of the first row: sd_(Intercept)^2 + sigma^2 (Days = 0)
    >>> bool(abs(Y[0].var() / (est.cov_re_[0, 0] + est.scale_) - 1) < 0.1)
    True

    A GLMM's responses come from its family: here binomial proportions of ``size`` trials.

    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> cbpp = load_cbpp()
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp)
    >>> Y = fit.simulate(n_sim=500, random_state=1)
    >>> bool(np.allclose(Y * cbpp["size"].to_numpy()[:, None], np.round(Y * cbpp["size"].to_numpy()[:, None])))
    True
    """
    model = simulation_model(est)
    n_sim = check_count(n_sim, "n_sim")
    if not isinstance(conditional, (bool, np.bool_)):
        raise TypeError(f"conditional must be True or False, got {conditional!r}")
    rows = model_rows(model, "simulate")
    sampler = Sampler(rows, Parameters.of(model.solution, modes=bool(conditional)), bool(conditional))
    generators = replicate_generators(random_state, n_sim)
    return np.concatenate([sampler.draw(generators[sl]) for sl in _batches(n_sim, _BATCH * 8)], axis=1)
