"""Responses drawn from a fitted model, and the machinery that refits the model to them.

A fitted linear mixed model is a distribution of the response: per term ``k`` and level
``l`` the random effects ``b_kl ~ N(0, sigma^2 L_k L_k')``, and the residual of row ``r``
``e_r ~ N(0, sigma^2 delta_s(r)^2 / w_r)`` (``delta_s`` the residual standard-deviation
ratio of the row's stratum, ``w_r`` its prior weight), so ``y = X beta + sum_k Z_k b_k +
e`` (lme4's ``simulate.merMod``; Bates et al. 2015, JSS 67(1), sec. 1). With
``conditional=True`` the random effects are the fit's conditional modes instead
(lme4's ``use.u = TRUE``).

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._batched_refit import OneTermBatch
from .._crossprod import CrossProducts, ResponseMap, ResponseProducts
from .._deviance import Deviance, Solution
from .._model import FittedModel
from .._optimize import OptimizerInfo, fit
from .._terms import Terms
from .._threads import single_threaded_blas
from ._parameters import fitted_model, ratio_names, theta_to_sdcor

__all__ = ["simulate", "Rows", "Parameters", "Sampler", "Refit", "Refitter", "run_replicates",
           "replicate_generators", "parameter_names", "lme4_parameters", "lme4_parameters_many",
           "model_rows"]

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
    """

    X: np.ndarray
    factors: tuple
    terms: Terms
    weights: np.ndarray | None
    strata: np.ndarray | None
    n_strata: int
    offset: np.ndarray | None

    @property
    def n(self) -> int:
        return self.X.shape[0]


def model_rows(model: FittedModel, what: str = "simulation") -> Rows:
    """The rows of an in-memory fit; a clear error for fits that do not keep them."""
    design = model.design
    if design is None:
        raise NotImplementedError(
            f"{what} needs the rows of the fit; a model fitted from chunks or Dask keeps only "
            "its cross-products. Fit the data in memory (MixedLMRegressor.fit) to simulate.")
    X = design.X_full
    if model.rank is not None:
        X = X[:, model.rank.kept]
    return Rows(np.ascontiguousarray(X, dtype=float), tuple(design.factors), model.terms,
                design.weights, design.strata, design.n_strata, getattr(design, "offset", None))


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
    """

    def __init__(self, rows: Rows, params: Parameters, conditional: bool = False,
                 with_offset: bool = True) -> None:
        if conditional and params.modes is None:
            raise ValueError("conditional simulation needs the conditional modes")
        self.rows, self.conditional = rows, conditional
        mean = rows.X @ params.beta
        if with_offset and rows.offset is not None:
            mean = mean + rows.offset
        if conditional:
            for (codes, Z), modes in zip(rows.factors, params.modes):
                mean = mean + np.einsum("rq,rq->r", Z, modes[codes])
        self.mean = mean
        variance = params.scale * (params.ratios[rows.strata] if rows.strata is not None
                                   else np.full(rows.n, params.ratios[0]))
        if rows.weights is not None:
            variance = variance / rows.weights
        self.residual_sd = np.sqrt(variance)
        # b_l = sigma L u_l with u_l standard normal: rows of U times (sigma L)'.
        self.factors_t = [np.sqrt(params.scale) * lam.T for lam in params.lams]

    def draw(self, generators: Sequence[np.random.Generator]) -> np.ndarray:
        """One response per generator, (n, k). Each generator draws, in this order, the
        standard normal random effects of every term (levels by rows, ``(m_k, q_k)``; not
        when conditional) and then the ``n`` residuals."""
        rows, k = self.rows, len(generators)
        U = [np.empty((k, t.n_levels, t.q)) for t in rows.terms] if not self.conditional else []
        E = np.empty((rows.n, k))
        for j, gen in enumerate(generators):
            for u, t in zip(U, rows.terms):
                u[j] = gen.standard_normal((t.n_levels, t.q))
            E[:, j] = gen.standard_normal(rows.n)
        Y = E
        Y *= self.residual_sd[:, None]
        Y += self.mean[:, None]
        for u, (codes, Z), factor_t in zip(U, rows.factors, self.factors_t):
            B = u @ factor_t  # (k, m, q): the random effects of each replicate
            for a in range(Z.shape[1]):
                Y += Z[:, a, None] * B[:, codes, a].T
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


def parameter_names(model: FittedModel) -> list[str]:
    """lme4's names of the parameters (as in ``conf_int(method="profile")``)."""
    fixed = list(model.fe_names) if model.rank is None else list(model.rank.names)
    return model.terms.param_names() + ["sigma"] + ratio_names(model) + fixed


def lme4_parameters(solution: Any, model: FittedModel) -> np.ndarray:
    """A solution's (or :class:`Refit`'s) parameters on lme4's scale, in
    :func:`parameter_names`' order (NaN for fixed effects dropped as aliased)."""
    sigma = float(np.sqrt(solution.scale))
    beta = solution.beta if model.rank is None else model.rank.expand(solution.beta, np.nan)
    return np.concatenate([theta_to_sdcor(solution.theta, sigma, model.terms), [sigma],
                           np.sqrt(solution.ratios[1:]), beta])


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
    return np.column_stack(parts + [sigma, np.sqrt(ratios[:, 1:]), beta])


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

    def solved(self) -> tuple[Deviance, Solution]:
        if self._solved is None:
            refitter, products, j = self._source
            dev = Deviance(refitter.template.with_response(products, j), refitter.reml, plan=refitter.plan)
            self._solved = (dev, dev.solution(self.x))
        return self._solved


class Refitter:
    """Refits one model to responses of its rows, reusing everything that does not depend
    on the response: the response-free cross-products, the elimination plan and a start.

    Parameters
    ----------
    rows : Rows
    template : CrossProducts
        Cross-products of ``rows`` with any response (the fit's own).
    reml : bool
    x0 : ndarray
        Start of every refit: the parameters the responses are drawn from.
    plan : Plan, optional
        The template's elimination plan (computed when not given).
    multistart : bool
        Also the optimiser's other starts (small problems). By default a refit runs the
        local search from ``x0`` and the cheap safeguards only: the comparison with the
        zero end and the escapes from bounds (see :data:`REFIT_MULTISTART`).
    max_iter, tol : as the estimator's.
    """

    def __init__(self, rows: Rows, template: CrossProducts, reml: bool, x0: np.ndarray, plan=None,
                 multistart: bool = REFIT_MULTISTART, max_iter: int = 1000, tol: float = 1e-8) -> None:
        self.rows, self.template, self.reml = rows, template, reml
        self.x0 = np.asarray(x0, dtype=float)
        self.plan = plan if plan is not None else Deviance(template, reml).plan
        self.multistart, self.max_iter, self.tol = multistart, max_iter, tol
        self.response_map = ResponseMap(rows.X, rows.factors, rows.terms, rows.weights, rows.strata,
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
        return cls(rows, model.cross_products, model.reml if reml is None else reml,
                   model.x if x0 is None else x0, model.deviance.plan, multistart, model.max_iter,
                   model.tol)

    def products(self, Y: np.ndarray) -> ResponseProducts:
        """The response-dependent cross-products of responses ``Y`` (n, k) *with* offset."""
        if self.rows.offset is not None:
            Y = Y - self.rows.offset[:, None]
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
                out[j] = Refit(batch.theta[j], ratios, batch.beta[j], float(batch.scale[j]),
                               float(batch.deviance[j]), info, _source=(self, products, j))
        for j in range(k):
            if out[j] is None:
                res = self.refit(products, j)
                out[j] = res if isinstance(res, str) else Refit(
                    res[1].theta, res[1].ratios, res[1].beta, float(res[1].scale),
                    float(res[1].deviance), res[2], _solved=(res[0], res[1]))
        return out

    def refit(self, products: ResponseProducts, j: int) -> tuple[Deviance, Solution, OptimizerInfo] | str:
        """The engine's fit to response ``j``, or the reason it failed."""
        cp = self.template.with_response(products, j)
        try:
            dev = Deviance(cp, self.reml, plan=self.plan)
            with np.errstate(all="ignore"):
                if dev.n_params == 0:
                    sol = dev.solution(np.empty(0))
                    info = OptimizerInfo(True, "no variance parameters", 0, 1, 0.0,
                                         np.zeros(0, dtype=bool))
                else:
                    sol, info = fit(dev, x0=self.x0, max_iter=self.max_iter, tol=self.tol,
                                    search=True, multistart=self.multistart)
        except (FloatingPointError, ValueError, np.linalg.LinAlgError) as err:
            return f"{type(err).__name__}: {err}"
        if not (np.isfinite(sol.deviance) and np.isfinite(sol.scale) and sol.scale > 0):
            return "the refit gave a non-finite deviance or a zero residual variance"
        return dev, sol, info


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
    """Responses drawn from a fitted model (lme4's ``simulate``).

    Parameters
    ----------
    est : fitted MixedLMRegressor
        Fitted in memory (a fit from chunks or Dask keeps no rows to simulate).
    n_sim : int, default 1
        Number of responses.
    random_state : None, int, numpy SeedSequence or Generator
        Seed. Response ``j`` is drawn from the ``j``-th child generator of
        ``np.random.default_rng(random_state)``, the same as replicate ``j`` of
        :func:`~mixedlm_sklearn.inference.bootstrap` with this ``random_state``.
    conditional : bool, default False
        Keep the fit's conditional modes (BLUPs) of the random effects and draw only new
        residuals (lme4's ``use.u = TRUE``); by default new random effects are drawn too.

    Returns
    -------
    ndarray of shape (n_obs, n_sim)
        One column per response, one row per row of the fit (rows of weight 0 are not
        part of the fit). The offset, if any, is included.

    Notes
    -----
    Works for every model kind: several grouping factors, a residual variance per stratum
    (``residual_groups``; row variance ``scale * ratio``), prior weights (variance
    ``scale / w``). Aliased fixed-effects columns contribute nothing (their coefficient is
    0, as in ``predict``).

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
    """
    model = fitted_model(est)
    n_sim = check_count(n_sim, "n_sim")
    if not isinstance(conditional, (bool, np.bool_)):
        raise TypeError(f"conditional must be True or False, got {conditional!r}")
    rows = model_rows(model, "simulate")
    sampler = Sampler(rows, Parameters.of(model.solution, modes=bool(conditional)), bool(conditional))
    generators = replicate_generators(random_state, n_sim)
    return np.concatenate([sampler.draw(generators[sl]) for sl in _batches(n_sim, _BATCH * 8)], axis=1)
