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
refits go through the model's own fitting path, chosen by the engine
(:func:`mixedlm_sklearn._refit.refitter_for`), started from the fit.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._deviance import Solution
from .._model import FittedModel
from .._terms import Terms
from .._refit import _BATCH, Refit, Refitter, Rows, model_rows, refitter_for, rows_refitters
from .._threads import single_threaded_blas
from ._parameters import fitted_model, ratio_names, theta_to_sdcor
from ._protocol import require

__all__ = ["simulate", "Rows", "Parameters", "Sampler", "GaussianResponse", "FamilyResponse",
           "Refit", "Refitter", "refitter_for", "run_replicates",
           "replicate_generators", "parameter_names", "lme4_parameters", "lme4_parameters_many",
           "model_rows", "simulation_model", "rows_refitters", "RefitCounts"]

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


def simulation_model(est: Any, role: str = "est") -> FittedModel:
    """The fitted model of an estimator (or the model itself), or a TypeError naming the
    argument (:func:`._parameters.fitted_model`), or a ValueError where the model cannot be
    simulated from (:meth:`FittedModel.supports`)."""
    return require(fitted_model(est, role), "simulation")


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
    correlation : ndarray of shape (0,) or (1,)
        The residual correlation's parameter (nlme's scale) of rows with a correlation
        structure (:attr:`Rows.correlation`); empty for independent residuals.
    """

    beta: np.ndarray
    lams: list
    scale: float
    ratios: np.ndarray
    modes: list | None = None
    correlation: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def of(cls, solution: Solution, modes: bool = False,
           correlation: np.ndarray | None = None) -> "Parameters":
        """The parameters of a solution (``correlation``: the model's
        :attr:`~mixedlm_sklearn._model.FittedModel.correlation_values`)."""
        corr = np.zeros(0) if correlation is None else np.array(correlation, dtype=float)
        return cls(solution.beta.copy(), [np.array(lam) for lam in solution.lams], float(solution.scale),
                   np.array(solution.ratios, dtype=float), solution.blups() if modes else None, corr)

    @classmethod
    def of_model(cls, model: FittedModel, modes: bool = False) -> "Parameters":
        """The parameters of a fitted model (its solution and residual correlation)."""
        return cls.of(model.solution, modes, model.correlation_values)

    def x(self, terms: Terms) -> np.ndarray:
        """``(theta, eta)`` of these parameters (the optimiser's start for refits)."""
        return np.concatenate([terms.theta_of(self.lams), 0.5 * np.log(self.ratios[1:])])


class GaussianResponse:
    """A linear mixed model's response: the linear predictor plus a normal residual of
    variance ``scale * ratio_s / w_r`` (stratum ratio, prior weight). With a residual
    correlation structure (:attr:`Rows.correlation`) the residuals of a residual group are
    ``e_g = sigma L_g z_g`` with ``L_g L_g' = R_g`` the group's correlation at the
    parameter drawn from (all groups at once: :meth:`~mixedlm_sklearn._correlation.
    CorrelationStructure.colour`)."""

    def __init__(self, rows: Rows, params: Parameters) -> None:
        variance = params.scale * (params.ratios[rows.strata] if rows.strata is not None
                                   else np.full(rows.n, params.ratios[0]))
        if rows.weights is not None:
            variance = variance / rows.weights
        self.residual_sd = np.sqrt(variance)
        self.correlation = None
        if rows.correlation is not None:
            if params.correlation.size != 1:
                raise ValueError("rows with a residual correlation structure need its parameter "
                                 "(Parameters.correlation)")
            structure, corr_rows = rows.correlation
            self.correlation = (structure, corr_rows, float(params.correlation[0]))

    def draw(self, generator: np.random.Generator, eta: np.ndarray) -> np.ndarray:
        z = generator.standard_normal(eta.size)
        if self.correlation is not None:
            structure, corr_rows, value = self.correlation
            e = np.empty_like(z)
            e[corr_rows.order] = structure.colour(z[corr_rows.order, None], corr_rows, value)[:, 0]
            z = e
        return eta + self.residual_sd * z


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
    return ["sigma"] if model.scale_estimated else []


def parameter_names(model: Any) -> list[str]:
    """lme4's names of the parameters (as in ``conf_int(method="profile")``), the residual
    correlation's (nlme's name, e.g. ``Phi``) before the fixed effects."""
    fixed = list(model.fe_names) if model.rank is None else list(model.rank.names)
    return (model.terms.param_names() + _sigma_names(model) + ratio_names(model)
            + list(model.correlation_names) + fixed)


def _correlation_values(fit: Any, model: Any) -> np.ndarray:
    """The residual correlation's parameters of a :class:`Refit` (its own) or of a solution
    of ``model`` (the model's)."""
    values = getattr(fit, "correlation_values", None)
    return model.correlation_values if values is None else values


def lme4_parameters(solution: Any, model: Any) -> np.ndarray:
    """A solution's (or :class:`Refit`'s) parameters on lme4's scale, in
    :func:`parameter_names`' order (NaN for fixed effects dropped as aliased)."""
    sigma = float(np.sqrt(solution.scale))
    beta = solution.beta if model.rank is None else model.rank.expand(solution.beta, np.nan)
    return np.concatenate([theta_to_sdcor(solution.theta, sigma, model.terms),
                           [sigma] * len(_sigma_names(model)), np.sqrt(solution.ratios[1:]),
                           _correlation_values(solution, model), beta])


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
    corr = np.array([_correlation_values(f, model) for f in fits], dtype=float).reshape(len(fits), -1)
    return np.column_stack(parts + sigmas + [np.sqrt(ratios[:, 1:]), corr, beta])


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
    ``scale / w``), correlated residuals (``correlation=``: each residual group's residuals
    drawn with the fitted correlation). Aliased fixed-effects columns contribute nothing (their coefficient is
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
    sampler = Sampler(rows, Parameters.of_model(model, modes=bool(conditional)), bool(conditional))
    generators = replicate_generators(random_state, n_sim)
    return np.concatenate([sampler.draw(generators[sl]) for sl in _batches(n_sim, _BATCH * 8)], axis=1)
