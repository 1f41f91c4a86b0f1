"""Families and links of the generalized linear mixed model.

A family is the conditional distribution of a response given the linear predictor (its
variance function, log-density, deviance residuals, simulation, the checks of a response
it can model) with its own parameters, if any (the negative binomial's ``theta``, the
Gamma's ``shape``: positive, optimised on the log scale next to theta and beta); a link
``eta = g(mu)`` gives the mean and its derivatives. The GLMM's deviance and PIRLS
(:mod:`._glmm`) use them through this interface only, and the linear model is the
Gaussian family with the identity link (:func:`gaussian`). R's spellings of families
(``Gamma(link = "log")``, ``binomial``) are read by :func:`parse_family`.
"""

from __future__ import annotations

import copy
import re

import numpy as np
from scipy import special

__all__ = ["Link", "Family", "LINKS", "FAMILIES", "family_and_link", "make_family", "gaussian",
           "parse_family", "separated", "non_integer_counts"]

_TINY = np.finfo(float).tiny
_EPS = np.finfo(float).eps
_LOG_2PI = float(np.log(2.0 * np.pi))


# ---- links ---------------------------------------------------------------------------------


class Link:
    """A link function ``eta = g(mu)``: the inverse and its first two derivatives.

    ``ratio_column``: emmeans' name of a back-transformed difference of two means on this
    link's scale (``exp`` of a difference of log odds is an odds ratio, of logs a ratio);
    None for a link whose differences do not back-transform to a ratio.
    """

    name = ""
    ratio_column: str | None = None

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, mu: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def derivatives(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``mu``, ``dmu/deta`` and ``d2mu/deta2``."""
        raise NotImplementedError

    def log_mu_pair(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``log mu`` and ``log(1 - mu)`` computed without cancellation (binomial links)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Link({self.name!r})"


class _Logit(Link):
    name = "logit"
    ratio_column = "odds.ratio"

    def __call__(self, mu):
        return np.log(mu) - np.log1p(-mu)

    def inverse(self, eta):
        return special.expit(eta)

    def derivatives(self, eta):
        mu = special.expit(eta)
        # mu (1 - mu) as expit(eta) expit(-eta): from the rounded mu it is 0 for eta > 37
        # (mu rounds to 1), and a zero working weight makes PIRLS break down on
        # nearly separated data. Floored at the smallest normal number: > 0 everywhere.
        d1 = np.maximum(mu * special.expit(-eta), _TINY)
        return mu, d1, d1 * (1.0 - 2.0 * mu)

    def log_mu_pair(self, eta):
        # log mu = -log(1 + e^-eta), written so that exp never overflows (3x np.logaddexp)
        log_mu = np.minimum(eta, 0.0) - np.log1p(np.exp(-np.abs(eta)))
        return log_mu, log_mu - eta  # log(1 - mu) = log mu - eta


class _Probit(Link):
    name = "probit"

    def __call__(self, mu):
        return special.ndtri(mu)

    def inverse(self, eta):
        return special.ndtr(eta)

    def derivatives(self, eta):
        d1 = np.maximum(np.exp(-0.5 * eta * eta - 0.5 * _LOG_2PI), 1e-300)
        return special.ndtr(eta), d1, -eta * d1

    def log_mu_pair(self, eta):
        return special.log_ndtr(eta), special.log_ndtr(-eta)


class _Cloglog(Link):
    name = "cloglog"

    def __call__(self, mu):
        return np.log(-np.log1p(-mu))

    def inverse(self, eta):
        return -np.expm1(-np.exp(eta))

    def derivatives(self, eta):
        e = np.exp(np.minimum(eta, 700.0))
        d1 = np.maximum(np.exp(np.minimum(eta, 700.0) - e), 1e-300)
        return -np.expm1(-e), d1, d1 * (1.0 - e)

    def log_mu_pair(self, eta):
        e = np.exp(np.minimum(eta, 700.0))
        return np.log(np.maximum(-np.expm1(-e), 1e-300)), -e


class _Log(Link):
    name = "log"
    ratio_column = "ratio"

    def __call__(self, mu):
        return np.log(mu)

    def inverse(self, eta):
        return np.exp(eta)

    def derivatives(self, eta):
        mu = np.maximum(np.exp(np.minimum(eta, 700.0)), 1e-300)
        return mu, mu, mu


class _Identity(Link):
    name = "identity"

    def __call__(self, mu):
        return mu

    def inverse(self, eta):
        return eta

    def derivatives(self, eta):
        return eta, np.ones_like(eta), np.zeros_like(eta)


class _Inverse(Link):
    name = "inverse"

    def __call__(self, mu):
        return 1.0 / mu

    def inverse(self, eta):
        with np.errstate(divide="ignore"):
            return 1.0 / eta

    def derivatives(self, eta):
        with np.errstate(divide="ignore", over="ignore"):
            mu = 1.0 / eta
            return mu, -mu * mu, 2.0 * mu * mu * mu


# Link classes by name: every family instance makes its own link object.
LINKS = {"logit": _Logit, "probit": _Probit, "cloglog": _Cloglog, "log": _Log, "identity": _Identity,
         "inverse": _Inverse}


# ---- families --------------------------------------------------------------------------------


class Family:
    """An exponential family with its link: variance function, log-density, the checks of
    ``y`` and what inference reports on its scale.

    One instance per fit (:func:`make_family`), never shared: a family with an estimated
    parameter will carry its value.

    Attributes
    ----------
    name : str
    link : Link
    canonical : str
        The canonical link's name.
    scale_estimated : bool
        Whether the dispersion is estimated (Gaussian: sigma^2) or fixed at 1.
    response_column : str
        emmeans' name of a mean on the response scale ("prob", "rate", "response").
    default_residual : str
        lme4's default type of ``residuals``.
    """

    name = ""
    canonical = ""
    links: tuple = ()
    scale_estimated = False
    response_column = "response"
    default_residual = "deviance"
    # The family's own parameters (R's names), each positive and optimised on the log
    # scale: a slot next to theta and beta (glmer.nb's "theta", glmmTMB's Gamma "shape").
    parameter_names: tuple = ()
    # the link by default when it is not the canonical one
    default_link = ""
    # Whether the Laplace approximation takes log|M| with the exact Hessian of the joint
    # log-density in u (glmmTMB/TMB, the references of the families with a parameter) or
    # with the Fisher weights (lme4's glmer): the two differ for a non-canonical link.
    observed_laplace = False

    def __init__(self, link: str | None = None, values: dict | None = None):
        link = (self.default_link or self.canonical) if link is None else link
        if link not in self.links:
            raise ValueError(f"the {self.name} family takes the links {list(self.links)}, got {link!r}")
        self.link = LINKS[link]()
        values = {} if values is None else dict(values)
        unknown = sorted(set(values) - set(self.parameter_names))
        if unknown:
            names = list(self.parameter_names) or "no parameters"
            raise ValueError(f"the {self.name} family has {names}, got {unknown}")
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"the {self.name} family's {name} must be a number, got {value!r}")
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"the {self.name} family's {name} must be positive and finite, "
                                 f"got {value!r}")
        # Parameters given are held; the others are estimated (their value set by the fit).
        self.fixed = tuple(name for name in self.parameter_names if name in values)
        self.values = {name: float(values.get(name, 1.0)) for name in self.parameter_names}

    @property
    def free(self) -> tuple:
        """Names of the parameters the fit estimates."""
        return tuple(name for name in self.parameter_names if name not in self.fixed)

    def with_values(self, values: dict) -> "Family":
        """A copy with the parameters set to ``values`` (which ones are held is kept)."""
        other = copy.copy(self)
        other.values = {**self.values, **{k: float(v) for k, v in values.items()}}
        return other

    def start_values(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> dict:
        """Moment estimates of the free parameters from a fit's means (a start)."""
        return self.start_from_sums(self.start_sums(y, mu, w))

    def start_sums(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The sums over the rows that :meth:`start_values` is made of: they add over
        chunks of the rows (:meth:`start_from_sums` finishes)."""
        return np.zeros(0)

    def start_from_sums(self, sums: np.ndarray) -> dict:
        """:meth:`start_values` from the rows' :meth:`start_sums`."""
        return {}

    def describe(self) -> str:
        """The family as R prints it (glmer.nb's ``Negative Binomial(3.293)``)."""
        return self.name

    @property
    def canonical_link(self) -> bool:
        return self.link.name == self.canonical

    @property
    def ratio_column(self) -> str | None:
        """emmeans' column of a ratio of two means (pairs on the response scale)."""
        return self.link.ratio_column

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v:.6g}" for k, v in self.values.items())
        return f"{type(self).__name__.lstrip('_')}(link={self.link.name!r}{extra})"

    def __eq__(self, other: object) -> bool:
        # the same model family: nested fits of one family differ in its estimated values
        return (type(self) is type(other)
                and self.link.name == other.link.name  # type: ignore[attr-defined]
                and self.fixed == other.fixed)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.name, self.link.name))

    def __reduce__(self):
        return (_rebuilt_family, (type(self), self.link.name, self.values, self.fixed))

    def unit_deviance(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Each row's contribution to the deviance, ``2 (saturated - fitted)`` log-density
        (R's ``family$dev.resids``), in ``mu``."""
        raise NotImplementedError

    def distribution_variance(self, null_mean) -> float:
        """The distribution-specific variance of Nakagawa et al. (2017) on the link scale
        (performance's ``get_variance_distribution``). ``null_mean`` is a callable giving the
        mean of the null model (intercept and the random part), called only by families
        whose variance depends on it."""
        raise NotImplementedError

    def variance(self, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``V(mu)`` and ``V'(mu)``."""
        raise NotImplementedError

    def log_constant(self, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The part of each row's log-density free of ``mu`` (binomial coefficients, ``log y!``)."""
        raise NotImplementedError

    def log_kernel(self, y: np.ndarray, eta: np.ndarray, mu: np.ndarray, w: np.ndarray,
                   link: Link) -> np.ndarray:
        """The rest of each row's log-density."""
        raise NotImplementedError

    def loglik(self, y: np.ndarray, eta: np.ndarray, mu: np.ndarray, w: np.ndarray,
               link: Link) -> np.ndarray:
        """Log-density of each row (constants included, as R's ``family$aic``)."""
        return self.log_constant(y, w) + self.log_kernel(y, eta, mu, w, link)

    def saturated_loglik(self, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Log-density of each row at ``mu = y``."""
        raise NotImplementedError

    def check_response(self, y: np.ndarray, w: np.ndarray) -> None:
        raise NotImplementedError

    def observed_weight_slope(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray | None:
        """``dH/deta`` per row, ``H = -d^2 log f / d eta^2`` the observed weight of the
        Laplace approximation of an ``observed_laplace`` family (the slope the analytic
        gradient of ``log|M|`` needs); None where the family has no closed form for its
        link (the gradient is then taken by differences)."""
        return None

    def deviance_residuals(self, y, eta, mu, w, link) -> np.ndarray:
        """``2 (saturated - fitted)`` log-density per row (R's ``dev.resids``)."""
        return np.maximum(2.0 * (self.saturated_loglik(y, w) - self.loglik(y, eta, mu, w, link)), 0.0)

    def check_simulation_weights(self, w: np.ndarray) -> None:
        """Refuse prior weights that give no response distribution to draw from."""
        raise NotImplementedError

    def sample(self, generator: np.random.Generator, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
        """A response drawn with mean ``mu`` and prior weights ``w`` (R's ``family$simulate``)."""
        raise NotImplementedError


def _rebuilt_family(cls, link: str, values: dict, fixed: tuple) -> Family:
    family = cls(link, {k: values[k] for k in fixed})
    family.values = dict(values)
    return family


def _xlogy(x, y):
    return special.xlogy(x, y)


def _log_mu(eta: np.ndarray, mu: np.ndarray, link: Link) -> np.ndarray:
    """``log mu``: the linear predictor itself under the log link (no underflow to -inf)."""
    if link.name == "log":
        return eta
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mu > 0, np.log(np.where(mu > 0, mu, 1.0)), -np.inf)


def _check_counts(name: str, y: np.ndarray) -> None:
    if (y < 0).any():
        rows = ", ".join(str(r) for r in np.flatnonzero(y < 0)[:5])
        raise ValueError(f"{name} counts must be non-negative; rows {rows} are negative")
    frac = np.abs(y - np.round(y)) > 1e-8 * np.maximum(1.0, np.abs(y))
    if frac.any():
        rows = ", ".join(str(r) for r in np.flatnonzero(frac)[:5])
        raise ValueError(f"{name} counts must be whole numbers; rows {rows} are not "
                         f"(e.g. {y[np.flatnonzero(frac)[0]]!r})")


class _Binomial(Family):
    name = "binomial"
    canonical = "logit"
    links = ("logit", "probit", "cloglog")
    response_column = "prob"

    def unit_deviance(self, y, mu, w):
        return np.maximum(2.0 * w * (_xlogy(y, y) - _xlogy(y, mu) + _xlogy(1.0 - y, 1.0 - y)
                                     - _xlogy(1.0 - y, 1.0 - mu)), 0.0)

    def distribution_variance(self, null_mean):
        # the variance of the latent-scale residual of each link (insight's theoretical values)
        return {"logit": np.pi ** 2 / 3.0, "probit": 1.0, "cloglog": np.pi ** 2 / 6.0}[self.link.name]

    def variance(self, mu):
        return mu * (1.0 - mu), 1.0 - 2.0 * mu

    def log_constant(self, y, w):
        k = w * y
        return special.gammaln(w + 1.0) - special.gammaln(k + 1.0) - special.gammaln(w - k + 1.0)

    def log_kernel(self, y, eta, mu, w, link):
        log_mu, log_1m = link.log_mu_pair(eta)
        k = w * y
        return k * log_mu + (w - k) * log_1m

    def saturated_loglik(self, y, w):
        return self.log_constant(y, w) + w * (_xlogy(y, y) + _xlogy(1.0 - y, 1.0 - y))

    def check_simulation_weights(self, w):
        frac = np.abs(w - np.round(w)) > 1e-8 * np.maximum(1.0, w)
        if frac.any():
            row = int(np.flatnonzero(frac)[0])
            raise ValueError(
                f"simulating a binomial response needs whole numbers of trials (sample_weight); "
                f"row {row} has {w[row]!r}")

    def sample(self, generator, mu, w):
        # successes of w trials as a proportion (R's glm convention; Bernoulli for w = 1)
        trials = np.round(w).astype(np.int64)
        return generator.binomial(trials, np.clip(mu, 0.0, 1.0)) / w

    def check_response(self, y, w):
        bad = (y < 0) | (y > 1)
        if bad.any():
            rows = ", ".join(str(r) for r in np.flatnonzero(bad)[:5])
            raise ValueError(
                f"binomial y must be 0/1 (or proportions of successes with sample_weight = "
                f"number of trials); rows {rows} are outside [0, 1]")


class _Poisson(Family):
    name = "poisson"
    canonical = "log"
    links = ("log",)
    response_column = "rate"

    def unit_deviance(self, y, mu, w):
        return np.maximum(2.0 * w * (_xlogy(y, y) - _xlogy(y, mu) - (y - mu)), 0.0)

    def distribution_variance(self, null_mean):
        # lognormal approximation (Nakagawa et al. 2017), mu0 the null model's mean
        return float(np.log1p(1.0 / null_mean()))

    def variance(self, mu):
        return mu, np.ones_like(mu)

    def log_constant(self, y, w):
        return -w * special.gammaln(y + 1.0)

    def log_kernel(self, y, eta, mu, w, link):
        return w * (y * eta - mu)

    def saturated_loglik(self, y, w):
        return w * (_xlogy(y, y) - y - special.gammaln(y + 1.0))

    def check_simulation_weights(self, w):
        # R's poisson()$simulate ignores the weights, drawing another model than the one
        # fitted (w identical rows would have a mean count, not a count): refuse instead.
        if np.any(w != 1.0):
            raise ValueError("simulating a Poisson model fitted with sample_weight is not defined "
                             "(a weighted row stands for several identical counts); fit without "
                             "weights, or with an offset for exposures, to simulate")

    def sample(self, generator, mu, w):
        return generator.poisson(mu).astype(float)

    def check_response(self, y, w):
        _check_counts("Poisson", y)


class _NegativeBinomial(Family):
    """NB2 counts: ``Var = mu + mu^2 / theta`` (MASS's ``negative.binomial(theta)``,
    glmer.nb, glmmTMB's ``nbinom2``); ``theta`` estimated unless given. The log-density
    is ``lgamma(y + theta) - lgamma(theta) - lgamma(y + 1) + theta log(theta / (theta + mu))
    + y log(mu / (theta + mu))``, times the prior weight."""

    name = "negative_binomial"
    canonical = "log(mu / (mu + theta))"  # not one of the links offered
    default_link = "log"
    links = ("log",)
    response_column = "response"
    parameter_names = ("theta",)
    observed_laplace = True

    @property
    def theta(self) -> float:
        return self.values["theta"]

    def describe(self):
        # glmer.nb's family name: theta rounded to 4 decimals
        return f"Negative Binomial({round(self.theta, 4):.10g})"

    def start_sums(self, y, mu, w):
        # method of moments on the GLM's means: E[(y - mu)^2 - mu] = mu^2 / theta
        return np.array([np.sum(w * ((y - mu) ** 2 - mu)), np.sum(w * mu * mu)], dtype=float)

    def start_from_sums(self, sums):
        excess, scale = float(sums[0]), float(sums[1])
        theta = scale / excess if excess > 0 else 100.0
        return {"theta": float(np.clip(theta, 1e-2, 1e4))}

    def unit_deviance(self, y, mu, w):
        t = self.theta
        with np.errstate(divide="ignore", invalid="ignore"):
            out = 2.0 * w * (_xlogy(y, y / np.maximum(mu, _TINY)) - (y + t) * np.log((y + t) / (mu + t)))
        return np.maximum(out, 0.0)

    def distribution_variance(self, null_mean):
        # lognormal approximation of the observation-level variance (Nakagawa et al. 2017;
        # insight's compute_variances.R for nbinom2): log(1 + 1/mu0 + 1/theta), mu0 the
        # null model's mean (as the Poisson family's), theta the model's own
        return float(np.log1p(1.0 / null_mean() + 1.0 / self.theta))

    def variance(self, mu):
        return mu + mu * mu / self.theta, 1.0 + 2.0 * mu / self.theta

    def log_constant(self, y, w):
        t = self.theta
        return w * (special.gammaln(y + t) - special.gammaln(t) - special.gammaln(y + 1.0))

    def log_kernel(self, y, eta, mu, w, link):
        t = self.theta
        with np.errstate(divide="ignore", invalid="ignore"):
            log_mu = _log_mu(eta, mu, link)
            # y log mu is 0 at y = 0 whatever mu (also mu = 0)
            y_log_mu = np.where(y > 0, y * log_mu, 0.0)
            return w * (t * np.log(t) - (t + y) * np.log(t + mu) + y_log_mu)

    def saturated_loglik(self, y, w):
        t = self.theta
        return self.log_constant(y, w) + w * (t * np.log(t) - (t + y) * np.log(t + y) + _xlogy(y, y))

    def check_simulation_weights(self, w):
        if np.any(w != 1.0):
            raise ValueError("simulating a negative binomial model fitted with sample_weight is "
                             "not defined (a weighted row stands for several identical counts); "
                             "fit without weights, or with an offset for exposures, to simulate")

    def sample(self, generator, mu, w):
        t = self.theta
        return generator.negative_binomial(t, t / (t + np.maximum(mu, 0.0))).astype(float)

    def check_response(self, y, w):
        _check_counts("negative binomial", y)

    def observed_weight_slope(self, y, mu, w):
        # log link: d log f / d eta = y - (y + t) mu / (t + mu), so
        # H = w (y + t) t mu / (t + mu)^2 and dH/deta = w (y + t) t mu (t - mu) / (t + mu)^3
        if self.link.name != "log":
            return None
        t = self.theta
        return w * (y + t) * t * mu * (t - mu) / (t + mu) ** 3


class _Gamma(Family):
    """Positive continuous responses: ``Var = mu^2 / shape`` (R's ``Gamma()`` with
    dispersion ``1 / shape``, glmmTMB's ``Gamma``); ``shape`` estimated unless given. A
    prior weight ``w`` multiplies the shape of its row (R's ``Gamma()$aic``)."""

    name = "gamma"
    canonical = "inverse"
    links = ("inverse", "log")
    response_column = "response"
    parameter_names = ("shape",)
    observed_laplace = True

    @property
    def shape(self) -> float:
        return self.values["shape"]

    def describe(self):
        return f"Gamma(shape = {round(self.shape, 4):.10g})"

    def start_sums(self, y, mu, w):
        # the moment estimate of the dispersion, mean of w ((y - mu) / mu)^2
        return np.array([np.sum(w * ((y - mu) / mu) ** 2), np.sum(w)], dtype=float)

    def start_from_sums(self, sums):
        disp = float(sums[0] / sums[1])
        return {"shape": float(np.clip(1.0 / disp if disp > 0 else 1.0, 1e-2, 1e6))}

    def unit_deviance(self, y, mu, w):
        # R's Gamma()$dev.resids: free of the shape
        return np.maximum(2.0 * w * (-np.log(y / mu) + (y - mu) / mu), 0.0)

    def deviance_residuals(self, y, eta, mu, w, link):
        return self.unit_deviance(y, mu, w)

    def distribution_variance(self, null_mean):
        # Nakagawa et al. (2017) as insight's compute_variances.R (performance's r2/icc):
        # log link, the lognormal approximation log(1 + CV^2) with CV^2 = 1/shape
        # (sigma^2 in glmmTMB's terms); other links sigma^2 = 1/shape itself
        if self.link.name == "log":
            return float(np.log1p(1.0 / self.shape))
        return 1.0 / self.shape

    def variance(self, mu):
        return mu * mu / self.shape, 2.0 * mu / self.shape

    def log_constant(self, y, w):
        a = self.shape * w
        return a * np.log(a) - special.gammaln(a) + (a - 1.0) * np.log(y)

    def log_kernel(self, y, eta, mu, w, link):
        a = self.shape * w
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out = -a * (y / mu + _log_mu(eta, mu, link))
        return np.where(mu > 0, out, -np.inf)

    def saturated_loglik(self, y, w):
        a = self.shape * w
        return self.log_constant(y, w) - a * (1.0 + np.log(y))

    def check_simulation_weights(self, w):
        return None  # a weight scales the shape of its row's Gamma

    def sample(self, generator, mu, w):
        a = self.shape * w
        return generator.gamma(a, np.maximum(mu, 0.0) / a)

    def check_response(self, y, w):
        bad = ~(y > 0)
        if bad.any():
            rows = ", ".join(str(r) for r in np.flatnonzero(bad)[:5])
            raise ValueError(f"a Gamma response must be positive; rows {rows} are not "
                             f"(e.g. {y[np.flatnonzero(bad)[0]]!r})")

    def observed_weight_slope(self, y, mu, w):
        # log link: d log f / d eta = a (y / mu - 1), so H = a y / mu and dH/deta = -a y / mu
        if self.link.name != "log":
            return None
        return -self.shape * w * y / mu


class _Gaussian(Family):
    """The linear mixed model's family: its dispersion sigma^2 is estimated (profiled)."""

    name = "gaussian"
    canonical = "identity"
    links = ("identity",)
    scale_estimated = True
    default_residual = "response"

    def variance(self, mu):
        return np.ones_like(mu), np.zeros_like(mu)

    def unit_deviance(self, y, mu, w):
        return w * (y - mu) ** 2

    def distribution_variance(self, null_mean):
        raise NotImplementedError("a Gaussian model's residual variance is its estimated scale")


# Family classes by name (glmer's families; "gaussian" is the linear mixed model's).
FAMILIES = {"binomial": _Binomial, "poisson": _Poisson, "negative_binomial": _NegativeBinomial,
            "gamma": _Gamma}


def make_family(family: str, link: str | None = None, values: dict | None = None) -> Family:
    """A new family instance with its link (the family's canonical link by default) and
    the values of its parameters to hold (the others are estimated)."""
    classes = dict(FAMILIES, gaussian=_Gaussian)
    if family not in classes:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    return classes[family](link, values)


def gaussian(link: str = "identity") -> Family:
    """The Gaussian family (the linear mixed model's)."""
    return _Gaussian(link)


def non_integer_counts(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rows of a binomial response whose successes ``y w`` or failures ``(1 - y) w`` are
    not whole numbers (R's ``binomial()$initialize`` tolerance, 1e-3): a proportion
    given without its number of trials, or fractional counts."""
    successes, failures = y * w, (1.0 - y) * w
    return ((np.abs(successes - np.round(successes)) > 1e-3)
            | (np.abs(failures - np.round(failures)) > 1e-3))


def separated(family: Family, mu: np.ndarray) -> bool:
    """Whether fitted binomial probabilities are numerically 0 or 1 (R's ``glm.fit``
    threshold ``10 eps``): the classes are (quasi-)separated by the covariates or the
    random effects, and the estimates involved are not finite."""
    if family.name != "binomial":
        return False
    eps = 10.0 * _EPS
    return bool(np.any((mu < eps) | (mu > 1.0 - eps)))


# R's way of writing a family: ``binomial``, ``binomial()``, ``binomial(link = "probit")``,
# ``binomial(link = probit)``, ``binomial("probit")``; nothing else (the text is never run).
_R_FAMILY = re.compile(r"""\s*([A-Za-z][A-Za-z0-9._]*)\s*(?:\(\s*(?:(?:link\s*=\s*)?
                           (?:"([A-Za-z]+)"|'([A-Za-z]+)'|([A-Za-z]+)))?\s*\))?\s*""", re.VERBOSE)
# R's names of families fitted here under another name (R's function ``Gamma``).
_R_NAMES = {"Gamma": "gamma"}
# R's spellings of the negative binomial, which carry more than a link (MASS's
# ``negative.binomial(theta = k)``, glmmTMB's ``nbinom2``): answered with ours.
_R_NEGATIVE_BINOMIAL = ("nbinom2", "negative.binomial", "negbin", "glmer.nb")
# R's families glmer takes that this package does not fit (named in the error message).
_R_ONLY = ("gaussian", "inverse.gaussian", "quasi", "quasibinomial", "quasipoisson", "tweedie")


def parse_family(text: str, link: str | None = None) -> tuple[str, str | None]:
    """``(family, link)`` from R's spelling of a family, e.g. ``'binomial(link = "probit")'``.

    A strict pattern, never evaluated: a family name, optionally a call with one link given
    as ``link = "name"``, ``link = name`` or ``"name"``. ``link`` (the separate argument)
    must agree with the link in the text when both are given.

    Examples
    --------
    >>> parse_family('binomial(link = "probit")')
    ('binomial', 'probit')
    >>> parse_family("poisson")
    ('poisson', None)
    >>> parse_family('Gamma(link = "log")')
    ('gamma', 'log')
    """
    call = re.fullmatch(r"\s*(?:\w+::)?([\w.]+)\s*(?:\((.*)\))?\s*", text, flags=re.S)
    if call is not None and call.group(1) in _R_NEGATIVE_BINOMIAL:
        theta = re.search(r"theta\s*=\s*([\d.eE+-]+)", call.group(2) or "")
        spelled = 'family="negative_binomial"'
        spelled += (f', family_params={{"theta": {theta.group(1)}}}' if theta
                    else " (or glmer_nb(formula, data), lme4's glmer.nb)")
        raise ValueError(f"family={text!r} is R's spelling; here write {spelled}")
    match = _R_FAMILY.fullmatch(text)
    if match is None:
        raise ValueError(f"family {text!r} is not a family as R writes it: give a name "
                         f"({sorted(FAMILIES)}) or a call such as 'binomial(link = \"probit\")'")
    name, *quoted = match.groups()
    name = _R_NAMES.get(name, name)
    if name not in FAMILIES:
        known = (" (R has it; this package fits binomial, poisson, negative_binomial and "
                 "gamma GLMMs)") if name in _R_ONLY else ""
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {name!r}{known}")
    given = next((q for q in quoted if q is not None), None)
    if given is not None:
        allowed = FAMILIES[name].links
        if given not in allowed:
            raise ValueError(f"link {given!r} is not a link of the {name} family; its links are "
                             f"{list(allowed)}")
        if link is not None and link != given:
            raise ValueError(f"family {text!r} sets link {given!r} but link={link!r} was given too")
    return name, given if given is not None else link


def family_and_link(family: str, link: str | None, values: dict | None = None) -> tuple[Family, Link]:
    """A new family instance (:func:`make_family`) and its link."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    fam = make_family(family, link, values)
    return fam, fam.link
