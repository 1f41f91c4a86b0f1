"""Model selection on formula fits: :func:`update` (lme4's ``update``) and :func:`compare`
(a table of several fits: R's ``AIC(m0, m1)``, ``BIC`` and lme4's ``anova(m0, m1)``)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from ._table import ResultTable
from .formula import split_formula_sides, update_formula
from .inference._parameters import fitted_model
from .inference.lrt import check_same_data, compare_models

__all__ = ["update", "compare"]

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
