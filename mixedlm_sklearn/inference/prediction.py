"""Fitted values, residuals and the uncertainty of predictions.

Prediction errors (Henderson 1975, Biometrics 31(2); in lme4's spherical form, Bates et
al. 2015, JSS 67(1), sec. 3). With ``u`` the spherical random effects (``b = Lambda u``,
``u ~ N(0, sigma^2 I)``), ``Omega`` the rows' prior weights times their strata's
variance ratios, ``M = Lambda'Z'Omega Z Lambda + I`` and ``A = X'Omega X - X'Omega Z
Lambda M^{-1} Lambda'Z'Omega X``, the estimation errors ``(beta_hat - beta, u_hat - u)``
have covariance ``sigma^2 C^{-1}``, ``C`` the coefficient matrix of the mixed model
equations. For a new row with fixed-effects design ``x`` and, for each term whose level
was seen in the fit, ``r = Lambda' z`` placed at that level,

    Var(x'beta_hat + r'u_hat - x'beta - r'u) = sigma^2 (d'A^{-1}d + r'M^{-1}r),
    d = x - X'Omega Z Lambda M^{-1} r

(the Schur complement of ``C``: fixed-effects uncertainty, the BLUP's conditional
variance and their covariance). Both products come from the fit's solution
(:meth:`~mixedlm_sklearn._deviance.Solution.prediction_products`): the exact solver
reads ``r'M^{-1}r`` from the blocks of ``M^{-1}`` its factorisation provides for a row's
levels and solves for the rest, the iterative solver solves by conjugate gradients (one
solve per distinct row). A term whose level is new (or
whose factor is not given) adds its random effect's full variance ``z'Sigma_k z``, and
a new observation adds the residual variance ``sigma_s^2`` of its stratum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._design import INTERCEPT
from ._parameters import check_alpha, fitted_model

__all__ = ["fitted", "residuals", "prediction_std", "predict_interval"]


def _rows(est: Any) -> Any:
    model = fitted_model(est)
    if model.design is None:
        raise NotImplementedError("fitted values and residuals need the fit's rows; a fit from "
                                  "chunks or Dask keeps only their cross-products")
    return model, model.design


def _check_level(level: str) -> str:
    if level not in ("conditional", "marginal"):
        raise ValueError(f"level must be 'conditional' or 'marginal', got {level!r}")
    return level


def _as_output(values: np.ndarray, design: Any, name: str) -> Any:
    if design.index is None:
        return values
    return pd.Series(values, index=design.index, name=name)


def _fitted_values(est: Any, model: Any, design: Any, level: str) -> np.ndarray:
    """``X beta`` (+ ``Z b`` at the conditional level) + the offset, on the fitted rows."""
    values = design.X @ est.coef_ + est.intercept_
    if level == "conditional":
        for (codes, Z), b in zip(design.factors, model.solution.blups()):
            values = values + np.einsum("ij,ij->i", Z, b[codes])
    if design.offset is not None:
        values = values + design.offset
    return values


def fitted(est: Any, level: str = "conditional") -> Any:
    """Compute the fitted values of the rows of the fit (lme4's ``fitted``).

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted linear mixed model.
    level : {"conditional", "marginal"}, default="conditional"
        ``X beta + Z b`` (with the BLUPs, lme4's ``fitted``) or ``X beta`` (lme4's
        ``predict(fit, re.form = NA)``); the offset included.

    Returns
    -------
    Series or ndarray of shape (n_obs,)
        A Series indexed like the input's rows when ``X`` was a DataFrame (a formula fit:
        the rows of ``data`` that were used), else an array. Rows of weight 0 are not
        rows of the fit.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.fitted : The same, as a method.
    mixedlm_sklearn.inference.prediction.residuals : The residuals.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> est = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> est.fitted().head(3).round(2).tolist()
    [253.66, 273.33, 293.0]
    >>> est.fitted(level="marginal").head(3).round(2).tolist()
    [251.41, 261.87, 272.34]
    """
    model, design = _rows(est)
    return _as_output(_fitted_values(est, model, design, _check_level(level)), design, "fitted")


def residuals(est: Any, type: str = "response", level: str = "conditional") -> Any:
    """Compute the residuals of the rows of the fit (lme4's ``residuals``).

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted linear mixed model.
    type : {"response", "pearson"}, default="response"
        ``y - fitted``, or that divided by the row's residual standard deviation
        ``sigma_s / sqrt(w_r)`` (its stratum's, its prior weight's).
    level : {"conditional", "marginal"}, default="conditional"
        Against the conditional or the marginal fitted values.

    Returns
    -------
    Series or ndarray of shape (n_obs,)
        As :func:`~mixedlm_sklearn.inference.prediction.fitted`.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.residuals : The same, as a method.
    mixedlm_sklearn.plotting.residuals_vs_fitted : Plot them.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> est = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> est.residuals().head(3).round(3).tolist()  # lme4: -4.104, -14.625, -42.196
    [-4.104, -14.625, -42.196]
    >>> est.residuals(type="pearson").head(3).round(4).tolist()
    [-0.1604, -0.5715, -1.6488]
    """
    if type not in ("response", "pearson"):
        raise ValueError(f"type must be 'response' or 'pearson', got {type!r}")
    model, design = _rows(est)
    fit = _fitted_values(est, model, design, _check_level(level))
    offset = 0.0 if design.offset is None else design.offset
    values = design.y + offset - fit
    if type == "pearson":
        sol = model.solution
        variance = np.full(values.shape, float(sol.scale))
        if design.strata is not None:
            variance = variance * sol.ratios[design.strata]
        if design.weights is not None:
            variance = variance / design.weights
        values = values / np.sqrt(variance)
    return _as_output(values, design, "residuals")


# ---- prediction errors ------------------------------------------------------------------------


def _seen_designs(model: Any, parts: list) -> list:
    """Per term: ``(level, r)`` with ``r = z Lambda_k`` rows (zeros where unseen), or None."""
    out = []
    for lam, part in zip(model.solution.lams, parts):
        if part is None:
            out.append(None)
            continue
        idx, z = part
        r = np.where((idx >= 0)[:, None], z @ lam, 0.0)
        out.append((idx, r))
    return out


def _term_design(est: Any, k: int, n: int, part: Any) -> np.ndarray:
    """The design of term ``k`` for rows whose level it does not know."""
    if part is not None:
        return part[1]
    term = est.model_.terms[k]
    if list(term.z_names) == [INTERCEPT]:
        return np.ones((n, 1))
    raise ValueError(f"the random-effects term {term.factor!r} has slopes "
                     f"({list(term.z_names)}): give its Z (and groups) to predict with its "
                     "uncertainty")


def prediction_variance(est: Any, X: np.ndarray, parts: list, residual_groups: Any = None,
                        kind: str = "prediction") -> np.ndarray:
    """Variance of each row's prediction error (module docstring).

    Parameters
    ----------
    est : fitted MixedLMRegressor
    X : ndarray of shape (n, n_features_in_)
        Validated fixed-effects covariates (without the intercept column).
    parts : list
        Per random-effects term, ``(level index, z)`` of the rows or None
        (``MixedLMRegressor._new_levels``).
    residual_groups : array-like, optional
        The rows' strata (a model with a residual variance per stratum, ``kind="prediction"``).
    kind : {"prediction", "confidence"}
    """
    if kind not in ("prediction", "confidence"):
        raise ValueError(f"kind must be 'prediction' or 'confidence', got {kind!r}")
    model = fitted_model(est)
    sol = model.solution
    n = X.shape[0]
    # a formula decides the intercept (formula mode leaves fit_intercept at its default)
    intercept = model.design.intercept if model.design is not None else est.fit_intercept
    X_full = np.column_stack([np.ones(n), X]) if intercept else X
    if model.rank is not None:
        X_full = X_full[:, model.rank.kept]
    d = X_full
    quad = np.zeros(n)
    unknown = np.zeros(n)
    if len(model.terms):
        seen = _seen_designs(model, parts)
        if any(s is not None and np.any(s[0] >= 0) for s in seen):
            quad, shift = sol.prediction_products(seen)
            d = X_full - shift
        for k, (part, cov) in enumerate(zip(parts, sol.cov_re())):
            z = _term_design(est, k, n, part)
            new = np.ones(n, dtype=bool) if part is None else part[0] < 0
            unknown[new] += np.einsum("ia,ab,ib->i", z[new], cov, z[new])
    variance = sol.scale * (np.einsum("ia,ab,ib->i", d, sol.a_inv, d) + quad) + unknown
    if kind == "prediction":
        variance = variance + sol.scale * _residual_ratio(model, residual_groups, n)
    return variance


def _residual_ratio(model: Any, residual_groups: Any, n: int) -> np.ndarray:
    """Each new observation's residual variance over ``sigma^2``: its stratum's ratio."""
    if model.strata is None:
        return np.ones(n)
    if residual_groups is None:
        raise ValueError("the model has a residual variance per stratum: give residual_groups "
                         "(the stratum of each new row) for the prediction of new observations")
    labels = np.asarray(residual_groups, dtype=object).ravel()
    if labels.shape[0] != n:
        raise ValueError(f"residual_groups has {labels.shape[0]} entries but X has {n} rows")
    idx = pd.Index(np.asarray(model.strata, dtype=object)).get_indexer(labels)
    if np.any(idx < 0):
        raise ValueError(f"residual_groups has strata {sorted(set(labels[idx < 0].tolist()))} "
                         f"that the fit does not have ({list(model.strata)})")
    return model.solution.ratios[idx]


def prediction_std(est: Any, X: np.ndarray, parts: list, residual_groups: Any = None,
                   kind: str = "prediction") -> np.ndarray:
    """Standard deviation of each row's prediction error (:func:`prediction_variance`)."""
    return np.sqrt(prediction_variance(est, X, parts, residual_groups, kind))


def predict_interval(est: Any, X: Any, *, groups: Any = None, Z: Any = None, offset: Any = None,
                     residual_groups: Any = None, alpha: float = 0.05,
                     kind: str = "prediction") -> tuple[np.ndarray, np.ndarray]:
    """Compute prediction (or confidence) intervals of :meth:`~mixedlm_sklearn.MixedLMRegressor.predict`.

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted linear mixed model.
    X : array-like of shape (n, p)
        As in :meth:`~mixedlm_sklearn.MixedLMRegressor.predict`.
    groups : array-like of shape (n,) or DataFrame, optional
        As in ``predict``.
    Z : array-like, dict or DataFrame, optional
        As in ``predict``.
    offset : array-like of shape (n,), optional
        As in ``predict``.
    residual_groups : array-like, optional
        The rows' strata, for a model with a residual variance per stratum.
    alpha : float, default=0.05
        One minus the coverage.
    kind : {"prediction", "confidence"}, default="prediction"
        ``"prediction"``: for a new observation of the row (the residual variance
        included); ``"confidence"``: for its conditional mean ``x'beta + z'b``.

    Returns
    -------
    lower : ndarray of shape (n,)
        The lower bounds.
    upper : ndarray of shape (n,)
        ``predict -+ z_{1 - alpha/2} std``: normal quantiles, the prediction error being
        Gaussian at given variance parameters (their estimation error is not included).

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.predict_interval : The same, as a method.
    mixedlm_sklearn.MixedLMRegressor.predict : The predictions (``return_std=True`` for their standard deviation).

    Notes
    -----
    The standard deviation (module docstring) combines the fixed effects' uncertainty,
    the BLUPs' conditional variance and their covariance with the fixed effects, for the
    levels seen in the fit; a level not seen (or a factor not given) contributes its
    random effect's full variance, as the prediction of a new group; ``"prediction"`` adds
    the residual variance (prior weight 1).

    References
    ----------
    .. [1] Henderson, C. R. (1975). Best linear unbiased estimation and prediction
       under a selection model. Biometrics 31(2), 423-447.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> lower, upper = est.predict_interval(df[["Days"]].head(2), groups=df["Subject"].head(2),
    ...                                     Z=Z[:2])
    >>> np.column_stack([lower, upper]).round(1)
    array([[198.1, 309.3],
           [219.1, 327.6]])
    """
    z = stats.norm.ppf(1.0 - check_alpha(alpha) / 2.0)
    fitted_model(est)
    mean, rows, parts = est._predict_rows(X, groups, Z, offset)
    std = prediction_std(est, rows, parts, residual_groups, kind)
    return mean - z * std, mean + z * std
