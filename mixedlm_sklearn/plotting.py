"""Diagnostic plots of a fitted :class:`MixedLMRegressor` (matplotlib, optional).

Each function draws on ``ax`` (a new figure when None) and returns the Axes, so plots
compose with the rest of a matplotlib figure. matplotlib is imported only when a plot is
drawn: ``pip install matplotlib``.

- :func:`caterpillar` -- conditional modes (BLUPs) of one random effect with intervals,
  like lme4's ``dotplot(ranef(fit, condVar = TRUE))``;
- :func:`qq_ranef` -- normal QQ plot of the BLUPs;
- :func:`residuals_vs_fitted` -- conditional residuals against conditional fitted values;
- :func:`profile_zeta` -- profile zeta of one parameter, like lme4's ``xyplot(profile(fit))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["caterpillar", "qq_ranef", "residuals_vs_fitted", "profile_zeta"]

#: Labels on the y axis of a caterpillar plot are drawn up to this many groups.
MAX_LABELS = 60


def _axes(ax: Any):
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - matplotlib is installed in the test env
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from err
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _check_fitted(est: Any) -> None:
    if not hasattr(est, "random_effects_"):
        raise ValueError(f"{type(est).__name__} is not fitted: call fit (or lmer) first")


def _ranef(est: Any, term: str | None) -> tuple[pd.DataFrame, np.ndarray, str]:
    """BLUPs (m, q), their conditional covariances (m, q, q) and the term's name.

    A one-factor fit stores a DataFrame; a fit with several terms a mapping from term
    name to DataFrame (and to covariance array), from which ``term`` picks one
    (default: the first).
    """
    _check_fitted(est)
    blups, cov = est.random_effects_, est.random_effects_cov_
    if cov is None:
        # not stored at fit time (stochastic and costly: the iterative solver at scale):
        # computed now, as the fit's solution provides them
        model = est.model_
        covs = model.solution.conditional_cov()
        cov = ({t.factor: c for t, c in zip(model.terms, covs)} if isinstance(blups, Mapping)
               else covs[0])
    if isinstance(blups, Mapping):
        names = list(blups)
        name = names[0] if term is None else term
        if name not in blups:
            raise ValueError(f"unknown term {term!r}; the model's terms are {names}")
        blups, cov = blups[name], cov[name]
    else:
        name = blups.index.name or "group"
        if term is not None and term != name:
            raise ValueError(f"unknown term {term!r}; the model's only term is {name!r}")
    if getattr(est, "n_groups_", 1) == 0:
        raise ValueError("the model was fitted without groups: it has no random effects")
    return blups, np.asarray(cov, dtype=float), str(name)


def _column(blups: pd.DataFrame, column: int | str) -> int:
    names = [str(c) for c in blups.columns]
    if isinstance(column, str):
        if column not in names:
            raise ValueError(f"unknown random-effects column {column!r}; columns are {names}")
        return names.index(column)
    if not -len(names) <= int(column) < len(names):
        raise ValueError(f"column {column} is out of range: the term has columns {names}")
    return int(column) % len(names)


def caterpillar(est: Any, term: str | None = None, column: int | str = 0, level: float = 0.95,
                ax: Any = None, show_labels: bool | None = None):
    """Caterpillar plot: sorted conditional modes of one random effect with intervals.

    Each group's BLUP is drawn with the interval ``BLUP +- z * sqrt(conditional
    variance)``, ``z`` the normal quantile of ``level`` (lme4's ``condVar``); groups are
    sorted by BLUP, from the bottom up.

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted model (a GLMM works too).
    term : str, optional
        Grouping factor, for models with several random-effects terms (default the first).
    column : int or str, default=0
        Random-effects column, by position or name (``"Days"``).
    level : float, default=0.95
        Coverage of the intervals.
    ax : matplotlib Axes, optional
        Where to draw; default a new figure.
    show_labels : bool, optional
        Group labels on the y axis; default when there are at most 50 groups.

    Returns
    -------
    matplotlib Axes
        Points in ``ax.lines[0]`` (x: sorted BLUPs), intervals in ``ax.collections[0]``.

    See Also
    --------
    qq_ranef : Check the normality of the same effects.
    mixedlm_sklearn.MixedLMRegressor : Its ``random_effects_cov_`` are the conditional variances.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> est = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> ax = caterpillar(est, column="Days")
    >>> len(ax.lines[0].get_xdata()), ax.get_ylabel()
    (18, 'Subject')
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    blups, cov, name = _ranef(est, term)
    j = _column(blups, column)
    values = blups.iloc[:, j].to_numpy(dtype=float)
    half = stats.norm.ppf(0.5 + level / 2.0) * np.sqrt(np.clip(cov[:, j, j], 0.0, None))
    order = np.argsort(values, kind="stable")
    position = np.arange(values.size)

    ax = _axes(ax)
    ax.plot(values[order], position, "o", color="C0", markersize=4, zorder=3)
    ax.hlines(position, values[order] - half[order], values[order] + half[order],
              color="C0", linewidth=1.2)
    ax.axvline(0.0, color="0.4", linewidth=0.8, linestyle="--")
    if show_labels is None:
        show_labels = values.size <= MAX_LABELS
    if show_labels:
        ax.set_yticks(position)
        ax.set_yticklabels([str(label) for label in blups.index[order]])
    else:
        ax.set_yticks([])  # positions are ranks, not values: no numbers on the axis
    ax.set_ylim(-1, values.size)
    ax.set_xlabel(f"{blups.columns[j]} | {name}")
    ax.set_ylabel(name)
    ax.set_title(f"Conditional modes with {level:.0%} intervals")
    return ax


def _normal_quantiles(n: int) -> np.ndarray:
    """Normal quantiles at Filliben's (1975) estimates of the uniform order-statistic medians."""
    if n == 0:
        return np.empty(0)
    m = (np.arange(1, n + 1) - 0.3175) / (n + 0.365)
    m[-1] = 0.5 ** (1.0 / n)
    m[0] = 1.0 - m[-1]
    return stats.norm.ppf(m)


def qq_ranef(est: Any, column: int | str = 0, term: str | None = None, ax: Any = None):
    """Normal QQ plot of the conditional modes of one random effect.

    The model assumes the random effects normal; the sorted BLUPs are drawn against normal
    quantiles (Filliben's plotting positions, as ``scipy.stats.probplot``) with the
    least-squares line through the points.

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted model.
    column : int or str, default=0
        Random-effects column, by position or name.
    term : str, optional
        Grouping factor, for models with several random-effects terms (default the first).
    ax : matplotlib Axes, optional
        Where to draw; default a new figure.

    Returns
    -------
    matplotlib Axes
        Points in ``ax.lines[0]`` (y: sorted BLUPs), the line in ``ax.lines[1]``.

    See Also
    --------
    caterpillar : The same effects with intervals.
    residuals_vs_fitted : The residuals.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> ax = qq_ranef(lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy()))
    >>> ax.get_xlabel()
    'Standard normal quantiles'
    """
    blups, _, name = _ranef(est, term)
    j = _column(blups, column)
    values = np.sort(blups.iloc[:, j].to_numpy(dtype=float))
    quantiles = _normal_quantiles(values.size)
    slope, intercept = np.polyfit(quantiles, values, 1) if values.size > 1 else (0.0, values.mean())

    ax = _axes(ax)
    ax.plot(quantiles, values, "o", color="C0", markersize=4)
    ends = np.array([quantiles.min(), quantiles.max()]) if values.size else np.zeros(2)
    ax.plot(ends, intercept + slope * ends, "-", color="C1", linewidth=1)
    ax.set_xlabel("Standard normal quantiles")
    ax.set_ylabel(f"{blups.columns[j]} | {name}")
    ax.set_title("Normal QQ plot of the conditional modes")
    return ax


def residuals_vs_fitted(est: Any, X: Any = None, y: Any = None, groups: Any = None, Z: Any = None,
                        ax: Any = None):
    """Conditional residuals ``y - predict(X, groups, Z)`` against the fitted values.

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted model.
    X : array-like of shape (n, p), optional
        The data, as passed to ``fit``; for a model fitted by
        :func:`~mixedlm_sklearn.lmer` it may be omitted (the model frame is used).
    y : array-like of shape (n,), optional
        As ``X``.
    groups : array-like of shape (n,) or DataFrame, optional
        As ``X``.
    Z : array-like, dict or DataFrame, optional
        As ``X``.
    ax : matplotlib Axes, optional
        Where to draw; default a new figure.

    Returns
    -------
    matplotlib Axes
        Points in ``ax.lines[0]``: x fitted values, y residuals.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.residuals : The residuals as a Series.
    qq_ranef : The random effects' normal QQ plot.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> ax = residuals_vs_fitted(lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy()))
    >>> len(ax.lines[0].get_xdata())
    180
    """
    _check_fitted(est)
    if X is None:
        frame = getattr(est, "model_frame_", None)
        if frame is None:
            raise ValueError("give X and y (and groups, Z as in fit); only models fitted by "
                             "lmer remember their data")
        args = frame.fit_arguments()
        X, y, groups, Z = args["X"], args["y"], args["groups"], args["Z"]
    if y is None:
        raise ValueError("y is required with X")
    fitted = np.asarray(est.predict(X, groups=groups, Z=Z), dtype=float)
    observed = np.asarray(y, dtype=float).reshape(-1)
    if observed.shape != fitted.shape:
        raise ValueError(f"y has {observed.size} values but X has {fitted.size} rows")
    residuals = observed - fitted

    ax = _axes(ax)
    ax.plot(fitted, residuals, "o", color="C0", markersize=3, alpha=0.7)
    ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xlabel("Fitted values")
    ax.set_ylabel("Residuals")
    ax.set_title("Conditional residuals vs fitted")
    return ax


#: Two-sided 95% normal quantile, where lme4's profile intervals cross.
Z_95 = float(stats.norm.ppf(0.975))


def profile_zeta(est_or_profile: Any, param: str | None = None, ax: Any = None):
    """Profile zeta of one parameter against its value, with lines at ``+-1.96``.

    Where the curve crosses the lines are the 95% profile-likelihood bounds; a straight
    line means the Wald interval would be as good.

    Parameters
    ----------
    est_or_profile : MixedLMRegressor or DataFrame
        A DataFrame with columns ``param``, ``value``, ``zeta`` (what
        ``est.profile()`` returns), or an estimator to profile.
    param : str, optional
        Parameter name (``"sigma"``, ``"sd_(Intercept)|Subject"``, a fixed effect);
        required unless the profile has a single parameter.
    ax : matplotlib Axes, optional
        Where to draw; default a new figure.

    Returns
    -------
    matplotlib Axes
        The curve in ``ax.lines[0]``.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.profile : The profile drawn.
    mixedlm_sklearn.MixedLMRegressor.conf_int : The intervals (``method="profile"``).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pandas as pd
    >>> prof = pd.DataFrame({"param": "sigma", "value": [20.0, 25.0, 30.0],
    ...                      "zeta": [-2.5, 0.0, 2.2]})
    >>> ax = profile_zeta(prof)
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('sigma', 'zeta')
    """
    if isinstance(est_or_profile, pd.DataFrame):
        prof = est_or_profile
    else:
        _check_fitted(est_or_profile)
        if param is None:
            names = ["sigma"] + [str(n) for n in est_or_profile.fe_params_.index]
            raise ValueError("give param= to profile an estimator, e.g. one of "
                             f"{names} or a random-effects 'sd_...'/'cor_...' name")
        prof = est_or_profile.profile(which=param)
    missing = {"param", "value", "zeta"} - set(prof.columns)
    if missing:
        raise ValueError(f"the profile needs columns param, value, zeta; missing {sorted(missing)}")
    names = list(pd.unique(prof["param"]))
    if param is None:
        if len(names) != 1:
            raise ValueError(f"the profile has several parameters {names}: give param=")
        param = names[0]
    if param not in names:
        raise ValueError(f"parameter {param!r} is not in the profile; it has {names}")
    rows = prof[prof["param"] == param].sort_values("value")

    ax = _axes(ax)
    ax.plot(rows["value"].to_numpy(dtype=float), rows["zeta"].to_numpy(dtype=float), "-o",
            color="C0", markersize=3)
    for z in (-Z_95, Z_95):
        ax.axhline(z, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xlabel(str(param))
    ax.set_ylabel("zeta")
    ax.set_title(f"Profile zeta of {param}")
    return ax
