"""Formula in, estimator out: :func:`lmer` and :func:`glmer` (lme4's), model selection on
formula fits, :func:`update` (lme4's ``update``) and :func:`compare` (a table of several fits:
R's ``AIC(m0, m1)``, ``BIC`` and lme4's ``anova(m0, m1)``), and :func:`power` /
:func:`power_curve` of a fit or a formula.

This module sits above the estimators and the formula parser, so the parser imports no
estimator and inference takes fitted models only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from ._family import parse_family
from ._table import ResultTable
from .estimator import MixedLMRegressor
from .formula import parse_formula, split_formula_sides, update_formula
from .formula._frame import _cbind
from .formula._parser import _split_top
from .glm_estimator import MixedGLMRegressor
from .inference._parameters import fitted_model
from .inference.lrt import check_same_data, compare_models
from .inference.power import PowerResult
from .inference.power import power as _power_of_fit
from .inference.power import power_curve as _power_curve_of_fit

__all__ = ["lmer", "glmer", "glmer_nb", "update", "compare", "power", "power_curve"]

# R's argument names update() accepts, and the estimator's.
_R_PARAMETERS = {"REML": "reml", "nAGQ": "n_agq"}

_FORMATS = {"npar": "int", "Df": "int", "Chisq": "stat", "Pr(>Chisq)": "p"}


def update(fit: Any, formula: str | None = None, *, data: pd.DataFrame | None = None,
           **params: Any) -> Any:
    """Refit a formula fit with a changed formula, data or parameters (lme4's ``update``).

    Parameters
    ----------
    fit : fitted estimator
        A formula fit: :func:`~mixedlm_sklearn.lmer`, :func:`~mixedlm_sklearn.glmer`, or an
        estimator fitted with ``formula=...``.
    formula : str, optional
        The change in R's ``update.formula`` syntax: ``". ~ . - Days"``,
        ``". ~ . + (1 | g)"``, ``"log(.) ~ ."`` (see
        :func:`~mixedlm_sklearn.formula.update_formula`). Default: the same formula.
    data : DataFrame, optional
        Other data; default the data the fit saw (kept by reference). The fit's
        ``weights``, ``residual_groups`` and ``context`` are used again.
    **params
        Estimator parameters to change; R's ``REML=`` and ``nAGQ=`` are accepted.

    Returns
    -------
    estimator
        A new fitted estimator; ``fit`` is unchanged.

    Raises
    ------
    TypeError
        When ``fit`` is not a formula fit, or a parameter is given twice.

    See Also
    --------
    compare : A table of the fits.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer, update
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> m = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> m0 = update(m, ". ~ . - Days", REML=False)
    >>> m0.formula, m0.reml, round(m0.llf_, 4)  # lme4: -887.7379
    ('Reaction ~ (Days | Subject)', False, -887.7379)
    """
    check_is_fitted(fit)
    if getattr(fit, "_formula_columns_", None) is None:
        raise TypeError(f"update needs a formula fit (lmer, glmer or {type(fit).__name__}"
                        "(formula=...)); this one was fitted from arrays")
    for r_name, name in _R_PARAMETERS.items():
        if r_name in params:
            if name in params:
                raise TypeError(f"give {r_name}= (lme4's spelling) or {name}=, not both")
            params[name] = params.pop(r_name)
    new = fit.formula
    if formula is not None:
        if split_formula_sides(fit.formula)[0] is None and \
                split_formula_sides(formula)[0] not in (None, "."):
            raise ValueError(f"the fit's response was given as y (formula {fit.formula!r}): "
                             "its update cannot name a response")
        new = update_formula(fit.formula, formula)
    est = clone(fit).set_params(formula=new, **params)
    arguments = {k: v for k, v in fit._formula_fit_args_.items() if v is not None}
    return est.fit(fit._formula_data_ if data is None else data, **arguments)


def compare(*fits: Any, names: Any = None, test: Any = "auto",
            data_name: str | None = None) -> ResultTable:
    """A table of several fits of the same data: R's ``AIC(m0, m1)``/``BIC`` and ``anova``.

    Columns ``npar`` (lme4's parameter count), ``AIC``, ``BIC``, ``logLik`` and ``deviance``
    (``-2 logLik``), a row per fit in the order given. With a test (fits nested in each
    other), lme4's ``anova(m0, m1, ...)``: REML fits are refitted by maximum likelihood
    (with lme4's message), the rows ordered by ``npar``, and ``Chisq``, ``Df``,
    ``Pr(>Chisq)`` test each fit against the previous one.

    Parameters
    ----------
    *fits : fitted estimators
        Two or more fits of the same rows.
    names : sequence of str, optional
        Row names; default ``model1``, ``model2``, ...
    test : {"auto", True, False}, default="auto"
        "auto": the likelihood-ratio tests when the fits are nested, else none; True
        requires nesting (ValueError otherwise); False never tests and compares the fits as
        they are (as R's ``AIC(m0, m1)``: REML criteria for REML fits).
    data_name : str, optional
        The data's name for the heading (``Data: sleepstudy``), as lme4 prints it.

    Returns
    -------
    ResultTable
        Prints as lme4 prints ``anova(m0, m1, ...)``; a DataFrame for code.

    Raises
    ------
    ValueError
        Fewer than two fits, fits of different data, or ``test=True`` with fits that are
        not nested.

    Warns
    -----
    UserWarning
        lme4's "refitting model(s) with ML (instead of REML)" when the test refits.

    See Also
    --------
    update : Change a fit's formula.
    mixedlm_sklearn.anova : The tests alone.

    Examples
    --------
    >>> from mixedlm_sklearn import compare, lmer, update
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> m1 = lmer("Reaction ~ Days + (1 | Subject)", load_sleepstudy(), REML=False)
    >>> m2 = update(m1, ". ~ . - (1 | Subject) + (Days | Subject)")
    >>> print(compare(m1, m2, names=["m1", "m2"], data_name="sleepstudy"))
    Data: sleepstudy
    Models:
    m1: Reaction ~ Days + (1 | Subject)
    m2: Reaction ~ Days + (Days | Subject)
       npar    AIC    BIC  logLik deviance  Chisq Df Pr(>Chisq)    
    m1    4 1802.1 1814.8 -897.04   1794.1                         
    m2    6 1763.9 1783.1 -875.97   1751.9 42.139  2  7.072e-10 ***
    ---
    Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1
    """
    if len(fits) < 2:
        raise ValueError("compare at least two fits")
    if test not in ("auto", True, False):
        raise ValueError(f"test must be 'auto', True or False, got {test!r}")
    names = [f"model{i + 1}" for i in range(len(fits))] if names is None else [str(n) for n in names]
    if len(names) != len(fits) or len(set(names)) != len(names):
        raise ValueError(f"names must be {len(fits)} distinct names, one per fit, got {names}")
    formulas = dict(zip(names, (getattr(f, "formula", None) for f in fits)))
    generalized = [hasattr(f, "deviance_") for f in fits]
    table = None
    if any(generalized):
        if not all(generalized):
            raise ValueError("compare fits of one kind: linear and generalized mixed models "
                             "have likelihoods of different responses")
        table = _generalized_table(fits, names, test)
    else:
        models = [fitted_model(f, f"fit {i + 1}") for i, f in enumerate(fits)]
        for model in models[1:]:
            check_same_data(models[0], model)
    if table is None and test is not False and not any(generalized):
        try:
            table = compare_models(list(fits), names=names)
        except ValueError as err:
            if test is True or "not nested" not in str(err):
                raise
    if table is None:
        llf = np.array([f.llf_ for f in fits], dtype=float)
        npar = np.array([f.df_model_ for f in fits], dtype=float)
        table = pd.DataFrame({"npar": npar.astype(int), "AIC": [f.aic_ for f in fits],
                              "BIC": [f.bic_ for f in fits], "logLik": llf,
                              "deviance": -2.0 * llf}, index=pd.Index(names, dtype=object))
    heading = ([f"Data: {data_name}"] if data_name else []) + ["Models:"] + [
        f"{name}: {formulas[name] if formulas[name] else type(fit).__name__ + ' (arrays)'}"
        for name, fit in zip(table.index, [fits[names.index(n)] for n in table.index])]
    stars = "Pr(>Chisq)" if "Pr(>Chisq)" in table.columns else None
    return ResultTable(table, title="\n".join(heading), formats=_FORMATS, stars=stars)


def _generalized_table(fits: tuple, names: list[str], test: Any) -> pd.DataFrame | None:
    """GLMM fits (maximum likelihood, no refit): the tests of lme4's ``anova`` when nested.

    Nesting is checked on what the fits name: each fit's fixed effects and grouping
    factors among those of the next larger one.
    """
    from scipy import stats

    models = [fitted_model(f, f"fit {i + 1}") for i, f in enumerate(fits)]
    for model in models[1:]:
        check_same_data(models[0], model)
    if test is False:
        return None
    npar = np.array([f.df_model_ for f in fits])
    order = np.argsort(npar, kind="stable")
    problems = []
    for a, b in zip(order[:-1], order[1:]):
        small, big = fits[a], fits[b]
        fixed = set(small.fe_params_.index) - set(big.fe_params_.index)
        factors = ({t.factor for t in small.model_.terms} - {t.factor for t in big.model_.terms})
        if fixed or factors or npar[a] == npar[b]:
            problems.append(f"{names[a]} is not nested in {names[b]}")
    if problems and test is True:
        raise ValueError("; ".join(problems) + ". Models compared by likelihood-ratio tests "
                         "must be nested.")
    if problems:
        return None
    llf = np.array([fits[i].llf_ for i in order], dtype=float)
    k = npar[order].astype(float)
    chisq = np.r_[np.nan, 2.0 * np.maximum(0.0, np.diff(llf))]
    df = np.r_[np.nan, np.diff(k)]
    p = np.r_[np.nan, stats.chi2.sf(chisq[1:], df[1:])]
    return pd.DataFrame({"npar": npar[order], "AIC": [fits[i].aic_ for i in order],
                         "BIC": [fits[i].bic_ for i in order], "logLik": llf,
                         "deviance": -2.0 * llf, "Chisq": chisq, "Df": df, "Pr(>Chisq)": p},
                        index=pd.Index([names[i] for i in order], dtype=object))


# ---- lmer and glmer: a formula fitted by an estimator ----------------------------------------


def _reml_argument(REML: Any, reml: Any) -> bool:
    """lme4's ``REML=`` or the estimator's ``reml=``: one of them."""
    if REML is not None and reml is not None:
        raise TypeError("give REML= (lme4's spelling) or reml= (the estimator's), not both")
    value = REML if REML is not None else reml
    return True if value is None else value


def lmer(formula: str, data: pd.DataFrame, REML: bool | None = None, *, reml: bool | None = None,
         weights: Any = None, residual_groups: Any = None,
         context: Mapping[str, Any] | None = None, responses: Sequence[str] | None = None,
         progress: Any = None, **estimator_params: Any):
    """Fit a linear mixed model from an lme4 formula, like R's ``lme4::lmer``.

    Parameters
    ----------
    formula : str
        For example ``"Reaction ~ Days + (Days | Subject)"``; see
        the user guide's page on random-effects terms for the syntax and for what a formula
        may contain (``mixedlm_sklearn.formula.ALLOWED_FUNCTIONS``).
    data : DataFrame
        The data. Rows with a missing value in any model variable are dropped first (lme4's
        ``na.action = na.omit``); the estimator itself refuses missing values.
    REML : bool, default=True
        REML (lme4's default) or maximum likelihood, lme4's argument.
    reml : bool, optional
        The same under the estimator's name (give one of the two).
    weights : str or array-like, optional
        Prior weights (lme4's ``weights``): a column of ``data`` or one value per row; the
        residual variance of a row is ``sigma^2 / w``.
    residual_groups : str or array-like, optional
        A residual variance per stratum (a column of ``data`` or one label per row), as
        :meth:`MixedLMRegressor.fit`'s ``residual_groups``.
    context : mapping, optional
        Names the formula may use besides the columns of ``data``: numbers, or arrays
        with one value per row. The caller's variables are
        not looked up.
    responses : list of str, optional
        Several responses with one design (genes, proteins, traits): columns of ``data``,
        each fitted as its own model of the one-sided ``formula`` (``"~ x + (1 | donor)"``),
        sharing all work that does not depend on the response (the multi-output fit of
        :meth:`MixedLMRegressor.fit`). Each response uses its own complete rows (a missing
        response value drops the row for that response only); rows with a missing
        covariate or grouping factor are dropped for all. A keyword because ``cbind(...)``
        on the left is glmer's binomial response.
    progress : callable, optional
        With ``responses``: ``progress(done, total)`` after each block of responses.
    **estimator_params
        Other :class:`MixedLMRegressor` parameters (``max_iter``, ``tol``, ``verbose``,
        ``solver``).
        ``fit_intercept`` and ``cov_type`` come from the formula.

    Returns
    -------
    MixedLMRegressor
        ``MixedLMRegressor(formula=formula, reml=REML, ...)`` fitted to ``data``: a
        scikit-learn estimator in formula mode (``predict(new_df)``, ``clone``, pipelines
        and cross-validation work on DataFrames), with ``model_frame_`` (the
        :class:`~mixedlm_sklearn.formula.ModelFrame`).

    Raises
    ------
    ValueError
        For a formula that is not allowed or cannot be evaluated on ``data``, naming the
        offending piece.
    TypeError
        When ``fit_intercept`` or ``cov_type`` is passed (the formula sets them; the
        returned estimator keeps them at their defaults), or both ``REML`` and ``reml``.

    See Also
    --------
    glmer : The generalized linear mixed model.
    MixedLMRegressor : The estimator it fits.

    Notes
    -----
    Factor levels: the first level is the reference, so ``Sex`` with labels ``"Female"``
    and ``"Male"`` gives the column ``SexMale``. To get lme4's ``SexFemale`` for nlme's
    Orthodont (where R's level order is Male, Female) make the column a Categorical:
    ``df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])``.

    Several random-effects terms (``(1 | a) + (1 | b)``, ``(1 | a/b)``, or ``(x || g)``
    together with another term, which is split into one term per column as lme4 does)
    are passed to the estimator as a DataFrame of grouping factors and a dict of designs.

    ``||`` makes every column of the term's design independent. With numeric covariates
    that is lme4's model; with a factor on the left lme4 differs (it expands ``(f || g)`` to
    ``(1 | g) + (0 + f | g)`` and keeps the dummy columns of ``f`` correlated).

    ``offset(x)`` terms are summed and passed to ``fit`` as ``offset=``: the model is fitted
    to ``y - offset``, and ``predict(**model_frame_.new_data(new))`` adds the offset of the
    new rows, as lme4's ``predict(fit, newdata)``. A formula without fixed effects
    (``y ~ 0 + (1 | g)``) is refused.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> est = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> est
    MixedLMRegressor(formula='Reaction ~ Days + (Days | Subject)')
    >>> round(est.llf_, 4)
    -871.8141
    >>> est.fe_params_.round(3).to_dict()
    {'(Intercept)': 251.405, 'Days': 10.467}
    >>> est = lmer("Reaction ~ Days + (Days || Subject)", load_sleepstudy(), REML=False)
    >>> float(est.cov_re_[0, 1])
    0.0
    >>> est = lmer("Reaction ~ Days + I(Days^2) + (1 | Subject)", load_sleepstudy())
    >>> round(est.llf_, 4), est.fe_params_.round(4).to_dict()  # lme4: -892.8976, 0.3370
    (-892.8976, {'(Intercept)': 255.4494, 'Days': 7.4341, 'I(Days^2)': 0.337})

    Several responses with one design:

    >>> import numpy as np
    >>> df = load_sleepstudy().assign(logReaction=lambda d: np.log(d["Reaction"]))
    >>> est = lmer("~ Days + (Days | Subject)", df, responses=["Reaction", "logReaction"])
    >>> est.llf_.round(4), est.coef_.shape
    (array([-871.8141,  149.2406]), (2, 1))
    """
    _check_r_arguments(estimator_params, "lmer")
    if responses is not None:  # ---- several responses (inference/many.py) ----
        if residual_groups is not None:
            raise ValueError("residual_groups is not supported with several responses")
        return _lmer_responses(formula, data, _reml_argument(REML, reml), context, responses,
                               progress, weights, estimator_params)
    if progress is not None:
        raise ValueError("progress reports the responses of lmer(..., responses=[...])")
    est = MixedLMRegressor(formula=formula, reml=_reml_argument(REML, reml), **estimator_params)
    # fit_intercept and cov_type stay at their defaults: the formula decides them, so
    # clone() and a grid over formula= refit any formula
    return est.fit(data, sample_weight=weights, residual_groups=residual_groups,
                   context=context)


# R's argument names of lmer/glmer that have a Python spelling here.
_R_SPELLINGS = {"nAGQ": "n_agq", "control": "max_iter / tol", "subset": "data[rows]",
                "na.action": "(rows with missing values are dropped, as na.omit)",
                "offset": "offset(x) in the formula", "start": "(not supported)"}


def _check_r_arguments(params: Mapping[str, Any], function: str) -> None:
    clash = {"fit_intercept", "cov_type"} & set(params)
    if clash:
        raise TypeError(f"{sorted(clash)} are set by the formula ('0 +' removes the intercept, "
                        f"'||' makes the covariance diagonal); do not pass them to {function}")
    if "formula" in params:
        raise TypeError(f"{function} takes the formula as its first argument")
    for name in params:
        if name in _R_SPELLINGS:
            raise TypeError(f"{function}() got lme4's argument {name!r}: here it is "
                            f"{_R_SPELLINGS[name]}")


def _lmer_responses(formula: str, data: pd.DataFrame, reml: bool, context: Any, responses: Any,
                    progress: Any, weights: Any, estimator_params: dict):
    """:func:`lmer` of a one-sided formula for every column named in ``responses``."""
    return _responses_fit(MixedLMRegressor(reml=reml, **estimator_params), formula, data, context,
                          responses, progress, weights)


def _responses_fit(est: Any, formula: str, data: pd.DataFrame, context: Any, responses: Any,
                   progress: Any, weights: Any):
    """``est`` (not fitted, in array mode) fitted to every column named in ``responses`` with
    the one-sided ``formula``: the formula's design with a placeholder response (so that only
    covariates and factors drop rows), then the multi-output fit of the responses on those
    rows (:func:`lmer` and :func:`glmer` with ``responses``)."""
    if isinstance(responses, str) or not all(isinstance(r, str) for r in responses) or not len(responses):
        raise TypeError("responses must be a non-empty list of column names")
    if not isinstance(data, pd.DataFrame):
        raise TypeError("data must be a DataFrame")
    missing = [r for r in responses if r not in data.columns]
    if missing:
        raise ValueError(f"responses {missing} are not columns of data")
    if "~" not in formula or formula.split("~", 1)[0].strip():
        raise ValueError(f"with responses=, the formula is one-sided ('~ x + (1 | g)'), got {formula!r}")
    placeholder = "response"
    while placeholder in data.columns:
        placeholder += "_"
    rows = data.reset_index(drop=True)
    frame = parse_formula(f"{placeholder} ~ {formula.split('~', 1)[1]}",
                          rows.drop(columns=list(responses)).assign(**{placeholder: 0.0}), context=context)
    arguments = frame.fit_arguments()
    Y = rows.loc[frame.X.index, list(responses)]
    try:
        Y = Y.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"responses must be numeric columns: {err}") from None
    arguments["y"] = Y
    if weights is not None:  # a column of data, or one value per row of data
        w = rows[weights] if isinstance(weights, str) else pd.Series(np.asarray(weights, dtype=float))
        if len(w) != len(rows):
            raise ValueError(f"weights has {len(w)} values for {len(rows)} rows of data")
        arguments["sample_weight"] = np.asarray(w, dtype=float)[frame.X.index.to_numpy()]
    est.set_params(**frame.estimator_params())
    est.fit(**arguments, progress=progress)
    est.model_frame_ = frame
    return est


def glmer(formula: str, data: pd.DataFrame, family: Any = "binomial", link: str | None = None,
          n_agq: int = 1, *, nAGQ: int | None = None, weights: Any = None,
          context: Mapping[str, Any] | None = None, responses: Sequence[str] | None = None,
          progress: Any = None, **estimator_params: Any):
    """Fit a generalized linear mixed model from an lme4 formula, like R's ``lme4::glmer``.

    Parameters
    ----------
    formula : str
        For example ``"r2 ~ Anger + (1 | id) + (1 | item)"``; for binomial counts the
        response may be ``cbind(successes, failures)`` (each an expression such as
        ``size - incidence``): the model is then fitted to the proportion of successes
        with the number of trials as ``sample_weight`` (R's ``glm`` convention). The rest
        of the syntax is :func:`lmer`'s.
    data : DataFrame
        The data (rows with a missing model variable are dropped).
    family : {"binomial", "poisson", "negative_binomial", "gamma"} or R's spelling, default="binomial"
        The conditional distribution of the response. R's spellings are accepted: a
        function named ``binomial`` or ``poisson``, or the text of R's call with its link,
        ``'binomial(link = "probit")'``, ``"binomial(link = 'cloglog')"``,
        ``'poisson(link = "log")'``, ``'Gamma(link = "log")'`` (read by a strict pattern,
        never run; an unknown family or link is refused with the allowed ones). R's
        negative binomial spellings (``nbinom2``, ``negative.binomial(theta = k)``) are
        answered with this one's; lme4's ``glmer.nb`` is :func:`glmer_nb`.
    link : str, optional
        Default the family's canonical link (logit, log, inverse for Gamma; log for the
        negative binomial); binomial also takes "probit" and "cloglog", Gamma "log". When
        ``family`` names a link too, the two must agree.
    n_agq : int, default=1
        The number of quadrature nodes, lme4's ``nAGQ``: 1 is the Laplace approximation; more nodes need a single scalar
        random effect.
    nAGQ : int, optional
        The same as ``n_agq``, under lme4's name (give one of the two).
    weights : str or array-like, optional
        Prior weights, a column of ``data`` or one value per row: for a binomial proportion
        response (``incidence / size``) the numbers of trials (``weights="size"`` fits the
        same model as ``cbind(incidence, size - incidence)``, as in R).
    context : mapping, optional
        As in :func:`lmer`.
    responses : list of str, optional
        Several count responses with one design (genes): columns of ``data``, each fitted
        as its own GLMM of the one-sided ``formula`` (``"~ x + (1 | donor)"``) with
        ``family="poisson"`` or ``"negative_binomial"`` (the multi-output fit of
        :meth:`MixedGLMRegressor.fit`), as :func:`lmer`'s ``responses``: each response uses
        its own complete rows.
    progress : callable, optional
        With ``responses``: ``progress(done, total)`` after each block of responses.
    **estimator_params
        Other :class:`MixedGLMRegressor` parameters (``max_iter``, ``verbose``).

    Returns
    -------
    MixedGLMRegressor
        Fitted (its ``predict`` gives the mean response: probabilities, rates), with
        ``model_frame_`` as :func:`lmer`'s.

    Raises
    ------
    ValueError
        For a formula that is not allowed, ``cbind`` with another family or negative
        counts.
    TypeError
        When ``fit_intercept`` or ``cov_type`` is passed (the formula sets them).

    See Also
    --------
    lmer : The linear mixed model.
    glmer_nb : The negative binomial model, lme4's ``glmer.nb``.
    MixedGLMRegressor : The estimator it fits.

    Examples
    --------
    >>> from mixedlm_sklearn import glmer
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
    >>> round(fit.llf_, 3), fit.fe_params_.round(3).to_dict()
    (-92.026, {'(Intercept)': -1.399, 'period2': -0.992, 'period3': -1.129, 'period4': -1.58})
    >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp(),
    ...             n_agq=25)
    >>> round(float(fit.cov_re_[0, 0]), 4)  # lme4: 0.4193
    0.4193

    Several count responses with one design:

    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(20), 5)
    >>> genes = pd.DataFrame(rng.poisson(np.exp(1 + 0.5 * rng.standard_normal((20, 3)))[g]),
    ...                      columns=["g1", "g2", "g3"]).assign(donor=g, x=rng.standard_normal(100))
    >>> fits = glmer("~ x + (1 | donor)", genes, family="poisson", responses=["g1", "g2", "g3"])
    >>> fits.fe_params_.shape, bool(fits.converged_.all())
    ((3, 2), True)
    """
    _check_r_arguments(estimator_params, "glmer")
    if nAGQ is not None:
        if n_agq != 1:
            raise TypeError("give nAGQ= (lme4's spelling) or n_agq=, not both")
        n_agq = nAGQ
    family, link = _family_name(family, link)
    if responses is not None:  # ---- several responses (inference/many_glmm.py) ----
        est = MixedGLMRegressor(family=family, link=link, n_agq=n_agq, **estimator_params)
        return _responses_fit(est, formula, data, context, responses, progress, weights)
    if progress is not None:
        raise ValueError("progress reports the responses of glmer(..., responses=[...])")
    if isinstance(formula, str) and len(_split_top(formula, "~")) == 2 and family != "binomial" \
            and _cbind(_split_top(formula, "~")[0], formula) is not None:
        raise ValueError(f"cbind(successes, failures) is a binomial response; family is {family!r}")
    est = MixedGLMRegressor(formula=formula, family=family, link=link, n_agq=n_agq,
                            **estimator_params)
    return est.fit(data, sample_weight=weights, context=context)


def glmer_nb(formula: str, data: pd.DataFrame, link: str | None = None, n_agq: int = 1, *,
             nAGQ: int | None = None, weights: Any = None,
             context: Mapping[str, Any] | None = None, responses: Sequence[str] | None = None,
             progress: Any = None, **estimator_params: Any):
    """Fit a negative binomial (NB2) mixed model from an lme4 formula, like ``lme4::glmer.nb``.

    ``Var(y | u) = mu + mu^2 / theta`` with ``theta`` estimated jointly with the other
    parameters (``family_params={"theta": value}`` holds it). The Laplace approximation is
    glmmTMB's (``family = nbinom2``: the exact Hessian in the log-determinant); lme4's
    ``glmer.nb`` uses the Fisher weights there, whose logLik differs slightly.

    Parameters
    ----------
    formula : str
        For example ``"TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)"``.
    data : DataFrame
        The data.
    link : str, optional
        The link (log, the only one offered).
    n_agq : int, default=1
        Quadrature nodes (lme4's ``nAGQ``; more than 1 needs a single scalar random effect).
    nAGQ : int, optional
        The same as ``n_agq``, under lme4's name.
    weights : str or array-like, optional
        Prior weights, a column of ``data`` or one value per row.
    context : mapping, optional
        As in :func:`lmer`.
    responses : list of str, optional
        Several count responses with one design, as :func:`glmer`'s ``responses`` (each with
        its own ``theta``: ``family_params_["theta"]`` has one per response).
    progress : callable, optional
        With ``responses``: ``progress(done, total)`` after each block of responses.
    **estimator_params
        Other :class:`MixedGLMRegressor` parameters (``family_params``, ``max_iter``).

    Returns
    -------
    MixedGLMRegressor
        Fitted; ``family_params_["theta"]`` is glmer.nb's theta.

    See Also
    --------
    glmer : Any family.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from mixedlm_sklearn import glmer_nb
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(15), 10)
    >>> mu = np.exp(1.0 + 0.5 * rng.standard_normal(15))[g]
    >>> df = pd.DataFrame({"y": rng.negative_binomial(2.0, 2.0 / (2.0 + mu)), "g": g})
    >>> fit = glmer_nb("y ~ 1 + (1 | g)", df)
    >>> sorted(fit.family_params_)
    ['theta']
    """
    return glmer(formula, data, family="negative_binomial", link=link, n_agq=n_agq, nAGQ=nAGQ,
                 weights=weights, context=context, responses=responses, progress=progress,
                 **estimator_params)


def _family_name(family: Any, link: str | None) -> tuple[Any, str | None]:
    """``(family, link)`` from ``"binomial"`` or R's ways of writing a family: a function
    called ``binomial`` / ``poisson``, or the text of R's call, ``'binomial(link = "probit")'``
    (parsed by a strict pattern, never run)."""
    name = getattr(family, "__name__", None)
    if callable(family) and name in ("binomial", "poisson"):
        return name, link
    if isinstance(family, str):
        return parse_family(family, link)
    return family, link


# ---- power of a formula ---------------------------------------------------------------------


def _fitted(est: Any, data: pd.DataFrame | None) -> Any:
    """``est`` itself, or the formula ``est`` fitted to ``data`` with :func:`lmer`."""
    if isinstance(est, str):
        if data is None:
            raise ValueError("a formula needs data=...")
        return lmer(est, data)
    if data is not None:
        raise ValueError("data= is for a formula; a fitted estimator carries its own rows")
    return est


def power(est: Any, term: str | Sequence[str], *, effect: Any = None,
          n_groups: Mapping[str, int] | None = None, cov_re: Any = None, scale: float | None = None,
          test: str | None = None, n_sim: int = 1000, alpha: float = 0.05,
          data: pd.DataFrame | None = None, random_state: Any = None,
          n_jobs: int | None = None) -> PowerResult:
    """Simulated power of a test of fixed effects (simr's ``powerSim``).

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier, MixedGLMRegressor or str
        The model (fitted in memory), or an lme4 formula fitted to ``data`` with
        :func:`~mixedlm_sklearn.lmer` (REML). The fit supplies the design and the
        parameters the responses are drawn with, except those given below; a GLMM's
        responses are drawn from its family.
    term : str or list of str
        The fixed effect(s) tested (several: jointly).
    effect : float or dict, optional
        The value of ``term`` in the simulation (a float, one term), or a dict from fixed
        effect names to values (simr's ``fixef(model)["x"] <- value``); others keep their
        estimates.
    n_groups : dict, optional
        Levels of grouping factors in the simulated design: ``{"Subject": 30}`` (simr's
        ``extend(model, along = "Subject", n = 30)``; fewer than fitted keeps the first).
    cov_re : array or dict, optional
        Covariance of the random effects (a dict by term name with several terms).
    scale : float, optional
        Residual variance (of the reference stratum; a linear model's only).
    test : {"satterthwaite", "wald", "lr"}, optional
        ``"satterthwaite"``: t test (one term) or F test with Satterthwaite df, as
        lmerTest's ``summary``/``contest`` (simr's default for ``lmer`` is the close
        Kenward-Roger test; the default for a linear model). ``"wald"``: z / chi-square
        Wald test (the default for a binomial or Poisson GLMM, simr's ``z`` test, with
        each refit's covariance of beta as lme4's ``vcov``). ``"lr"``: likelihood-ratio
        chi-square test of ML refits with and without ``term``.
    n_sim : int, default=1000
        Number of simulated data sets.
    alpha : float, default=0.05
        Significance level of the test.
    data : DataFrame, optional
        The data for a formula ``est``.
    random_state : None, int, numpy SeedSequence or Generator, default=None
        Seed, as in :func:`~mixedlm_sklearn.inference.bootstrap`.
    n_jobs : int, optional
        Worker processes, as in :func:`~mixedlm_sklearn.inference.bootstrap`.

    Returns
    -------
    PowerResult
        The power with its Clopper-Pearson interval and the replicates' p-values.

    See Also
    --------
    mixedlm_sklearn.power_curve : Power against the number of groups.
    mixedlm_sklearn.inference.simulate : Draw responses from a fit.

    Notes
    -----
    simr's method (Green & MacLeod 2016, Methods Ecol. Evol. 7(4), 493-498): responses
    drawn from the fit, the model refitted to each and the test applied.

    Examples
    --------
    >>> from mixedlm_sklearn import power
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> result = power("Reaction ~ Days + (Days | Subject)", "Days", data=load_sleepstudy(),
    ...                effect=3.0, test="wald", n_sim=20, random_state=1)
    >>> result.n_sim
    20
    """
    return _power_of_fit(_fitted(est, data), term, effect=effect, n_groups=n_groups,
                         cov_re=cov_re, scale=scale, test=test, n_sim=n_sim, alpha=alpha,
                         random_state=random_state, n_jobs=n_jobs)


def power_curve(est: Any, term: str | Sequence[str], along: str, n_groups: Sequence[int], *,
                data: pd.DataFrame | None = None, **kwargs: Any) -> pd.DataFrame:
    """Power against the number of levels of one grouping factor (simr's ``powerCurve``).

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier, MixedGLMRegressor or str
        As in :func:`~mixedlm_sklearn.power` (a formula is fitted once).
    term : str or list of str
        The fixed effect(s) tested (several: jointly).
    along : str
        The grouping factor whose number of levels varies.
    n_groups : sequence of int
        Its numbers of levels.
    data : DataFrame, optional
        The data for a formula ``est``.
    **kwargs
        Passed to :func:`~mixedlm_sklearn.power` (``random_state``, each point drawing from
        its own child generator; ``effect``, ``test``, ``n_sim``, ``alpha``, ``n_jobs``, ...).

    Returns
    -------
    DataFrame
        One row per number of levels: ``n_groups``, ``power``, ``lower``, ``upper``,
        ``n_sim``, ``n_failed``.

    See Also
    --------
    mixedlm_sklearn.power : The power at one design.

    Examples
    --------
    >>> from mixedlm_sklearn import power_curve
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> curve = power_curve("Reaction ~ Days + (1 | Subject)", "Days", "Subject", [6, 12],
    ...                     data=load_sleepstudy(), effect=3.0, test="wald", n_sim=10,
    ...                     random_state=1)
    >>> curve["n_groups"].tolist()
    [6, 12]
    """
    return _power_curve_of_fit(_fitted(est, data), term, along, n_groups, **kwargs)
