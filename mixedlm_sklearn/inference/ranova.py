"""Likelihood-ratio tests of the random effects: lmerTest's ``ranova``.

Each random-effects term of a fit is reduced by lmerTest's rules (:func:`ranova_formulas`
for a formula fit, each column of ``Z`` a term of the left side for a fit from arrays),
the reduced model refitted on the same rows with the same criterion, and the
log-likelihoods compared (:func:`ranova_table`). :func:`ranova` is also importable from
:mod:`mixedlm_sklearn.inference.anova`, where it lived.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .._table import ResultTable
from .._design import INTERCEPT, TermInput
from .._terms import Term, Terms
from ._parameters import fitted_model, log_likelihood, n_parameters
from ._protocol import require

__all__ = ["ranova", "ranova_formulas", "ranova_table"]

RANOVA_FORMATS = {"npar": "int", "Df": "int", "Pr(>Chisq)": "p"}


# ---- random effects: lmerTest's ranova ---------------------------------------------------------


def _deparse(text: str) -> str:
    """R's spacing of a formula piece: spaces around + - * / |, none around : and ^."""
    import re

    text = re.sub(r"\s+", " ", text.strip())
    text = re.sub(r"\s*([+*/|-])\s*", r" \1 ", text)
    text = re.sub(r"\s*([:^])\s*", r"\1", text)
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", text)).strip()


def _random_bars(formula: str) -> tuple[str, str, list[tuple[str, str]]]:
    """Response, fixed part and lme4's ``findbars`` terms ``(left, group)`` of a formula.

    ``(x || g)`` becomes ``(1 | g)`` and ``(0 + x | g)`` (lme4's ``expandDoubleVerts``);
    ``(1 | a/b)`` becomes ``(1 | b:a)`` and ``(1 | a)`` (its ``expandSlash``).
    """
    from ..formula._parser import _as_bar, _bar_positions, _signed_pieces, _split_top
    import formulaic

    lhs, rhs = (s.strip() for s in _split_top(formula, "~"))
    fixed, bars = [], []
    for sign, piece in _signed_pieces(rhs):
        inner = _as_bar(piece)
        if inner is None:
            fixed.append(piece if sign == "+" else f"- {piece}")
            continue
        positions = _bar_positions(inner)
        left, right = inner[:positions[0]].strip(), inner[positions[-1] + 1:].strip()
        groups = [p.strip() for p in _split_top(right, "/")]
        # expandSlash: a/b -> b:a, a (innermost first)
        expanded = [":".join(reversed(groups[:i])) for i in range(len(groups), 0, -1)]
        for group in expanded:
            if len(positions) == 2:  # ||
                terms = [str(t) for t in formulaic.Formula(f"~ {left}")]
                if "1" in terms:
                    bars.append(("1", group))
                bars.extend((f"0 + {t}", group) for t in terms if t != "1")
            else:
                bars.append((_deparse(left), _deparse(group)))
    fixed_text = " + ".join(fixed).replace("+ -", "-") if fixed else "1"
    return lhs, fixed_text, bars


def _terms_formula(formula: str, fixed_terms: Sequence[str], intercept: bool) -> str:
    """The formula as R's ``formula(terms(f))`` deparses it, which lmerTest's ``ranova``
    prints: the terms ordered by degree (a random-effects term is of degree one), ``/`` and
    ``||`` expanded, the intercept implicit (``- 1`` when absent)."""
    lhs, _, bars = _random_bars(formula)
    degree = [(t.count(":") + 1, i, t) for i, t in enumerate(fixed_terms)]
    first = [t for d, _, t in degree if d == 1]
    higher = [t for _, _, t in sorted(x for x in degree if x[0] > 1)]
    pieces = first + [f"({left} | {group})" for left, group in bars] + higher
    rhs = " + ".join(dict.fromkeys(pieces)) if pieces else "1"
    if not intercept:
        rhs += " - 1"
    return f"{lhs} ~ {rhs}"


def ranova_formulas(formula: str) -> dict[str, str | None]:
    """The reduced models of lmerTest's ``ranova``: one per random-effects term.

    A term ``(left | g)`` whose left side has terms (besides the intercept) is reduced by
    each of its marginal terms (``"age in (age | Subject)"``: ``(age | Subject)`` becomes
    ``(1 | Subject)``); a term without (``(1 | plate)``) is removed. Identical random terms
    left after a reduction are merged, as R's formula algebra does. ``None`` for a model
    without random effects (lmerTest fits it with ``lm``; see :func:`ols_loglik`).

    Parameters
    ----------
    formula : str
        An lme4 formula.

    Returns
    -------
    dict
        Row name -> formula of the reduced model.

    Examples
    --------
    >>> ranova_formulas("distance ~ age * Sex + (age | Subject)")
    {'age in (age | Subject)': 'distance ~ age * Sex + (1 | Subject)'}
    >>> ranova_formulas("diameter ~ 1 + (1 | plate) + (1 | sample)")
    {'(1 | plate)': 'diameter ~ 1 + (1 | sample)', '(1 | sample)': 'diameter ~ 1 + (1 | plate)'}
    """
    import formulaic

    lhs, fixed, bars = _random_bars(formula)
    labels = [f"{left} | {group}" for left, group in bars]
    out: dict[str, str | None] = {}

    def assemble(terms: list[str]) -> str | None:
        unique = list(dict.fromkeys(terms))
        if not unique:
            return None
        return f"{lhs} ~ {fixed} + " + " + ".join(f"({t})" for t in unique)

    for i, (left, group) in enumerate(bars):
        others = labels[:i] + labels[i + 1:]
        f = formulaic.Formula(f"~ {left}")
        names = [str(t) for t in f if str(t) != "1"]
        variables = {str(t): {str(x.expr) for x in t.factors} for t in f if str(t) != "1"}
        scope = [n for n in names if not any(variables[n] < variables[m] for m in names if m != n)]
        if not names or not scope:
            out[f"({labels[i]})"] = assemble(others)
            continue
        intercept = any(str(t) == "1" for t in f)
        for term in scope:
            rest = [n for n in names if n != term]
            if not rest:
                new_left = "1"
            else:
                new_left = ("" if intercept else "0 + ") + " + ".join(rest)
            reduced = labels[:i] + [f"{new_left} | {group}"] + labels[i + 1:]
            out[f"{term} in ({labels[i]})"] = assemble(reduced)
    return out


def ranova_table(full: tuple[float, int], reduced: Mapping[str, tuple[float, int]]) -> pd.DataFrame:
    """lmerTest's ``ranova`` table: likelihood-ratio tests of the reduced models.

    Parameters
    ----------
    full : (loglik, npar)
        The model's log-likelihood (REML criterion scale for REML fits, as ``logLik``) and
        number of parameters (fixed effects, variance parameters, residual variance).
    reduced : mapping
        Row name -> (loglik, npar) of each reduced model, refitted the same way.

    Returns
    -------
    DataFrame
        Rows ``<none>`` then the reduced models; columns ``npar``, ``logLik``, ``AIC``,
        ``LRT``, ``Df``, ``Pr(>Chisq)`` (NaN in the first row).

    Examples
    --------
    >>> ranova_table((-216.29, 8), {"age in (age | Subject)": (-216.88, 6)}).round(3)
                            npar  logLik     AIC   LRT   Df  Pr(>Chisq)
    <none>                     8 -216.29  448.58   NaN  NaN         NaN
    age in (age | Subject)     6 -216.88  445.76  1.18  2.0       0.554
    """
    rows = [("<none>", full[0], full[1])] + [(k, v[0], v[1]) for k, v in reduced.items()]
    table = pd.DataFrame({
        "npar": [int(r[2]) for r in rows],
        "logLik": [float(r[1]) for r in rows],
    }, index=pd.Index([r[0] for r in rows], dtype=object))
    table["AIC"] = -2.0 * table["logLik"] + 2.0 * table["npar"]
    lrt = 2.0 * (full[0] - table["logLik"].to_numpy())
    df = full[1] - table["npar"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, stats.chi2.sf(lrt, np.where(df > 0, df, 1.0)), np.nan)
    table["LRT"] = np.r_[np.nan, lrt[1:]]
    table["Df"] = np.r_[np.nan, df[1:]]
    table["Pr(>Chisq)"] = np.r_[np.nan, p[1:]]
    return table


# ---- ranova: refits with reduced random effects ------------------------------------------------


def _same_term(a: TermInput, b: TermInput) -> bool:
    return (a.Z.shape == b.Z.shape and np.array_equal(a.codes, b.codes)
            and np.array_equal(a.Z, b.Z))


def _formula_reductions(frame: Any) -> dict[str, list[TermInput]]:
    """lmerTest's reduced models of a formula fit, evaluated on its fitted rows."""
    out = {}
    for name, formula in ranova_formulas(frame.formula).items():
        terms = []
        if formula is not None:
            for group, labels, Z in frame.reduced(formula)._pieces():
                codes, levels = pd.factorize(labels, sort=True)
                terms.append(TermInput(name=group, codes=codes, Z=Z.to_numpy(dtype=float),
                                       z_names=tuple(Z.columns), labels=np.asarray(levels),
                                       diagonal=False))
        out[name] = terms
    return out


def _array_reductions(model: Any) -> dict[str, list[TermInput]]:
    """The reductions of a fit from arrays, by lmerTest's rules with each column of ``Z``
    a term of the left side: a random intercept alone is removed; otherwise each slope
    column is dropped in turn (a term of one slope without intercept becomes a random
    intercept); a diagonal term is lme4's ``||``, one term per column. A reduced term
    identical to another term of the model merges with it."""
    terms = [TermInput(name=t.factor, codes=codes, Z=Z, z_names=tuple(t.z_names),
                       labels=np.asarray(model.labels.get(t.factor, np.unique(codes))),
                       diagonal=t.diagonal)
             for t, (codes, Z) in zip(model.terms, model.design.factors)]
    out: dict[str, list[TermInput]] = {}

    def with_term(k: int, columns: list[int], add_intercept: bool = False) -> list[TermInput]:
        t = terms[k]
        Z, names = t.Z[:, columns], [t.z_names[j] for j in columns]
        if add_intercept:
            Z, names = np.column_stack([np.ones(len(t.codes)), Z]), [INTERCEPT, *names]
        rest = terms[:k] + terms[k + 1:]
        new = dataclasses.replace(t, Z=Z, z_names=tuple(names), diagonal=t.diagonal and len(names) > 1)
        if not names or any(_same_term(new, r) for r in rest):
            return rest
        return terms[:k] + [new] + terms[k + 1:]

    for k, t in enumerate(terms):
        names = list(t.z_names)
        has_intercept = INTERCEPT in names
        slopes = [c for c in names if c != INTERCEPT]
        if t.diagonal:  # (1 | g) + (0 + x | g) + ...: each column its own term
            for j, c in enumerate(names):
                others = [i for i in range(len(names)) if i != j]
                if c == INTERCEPT:
                    out[f"(1 | {t.name})"] = with_term(k, others)
                else:  # (0 + x | g) becomes (1 | g), which merges with an intercept column
                    out[f"{c} in (0 + {c} | {t.name})"] = with_term(k, others, not has_intercept)
        elif not slopes:
            out[f"(1 | {t.name})"] = with_term(k, [])
        else:
            left = " + ".join(slopes) if has_intercept else "0 + " + " + ".join(slopes)
            for j, c in enumerate(names):
                if c == INTERCEPT:
                    continue
                others = [i for i in range(len(names)) if i != j]
                out[f"{c} in ({left} | {t.name})"] = with_term(k, others, not others)
    return out


def _fit_random(model: Any, terms: Sequence[TermInput]) -> tuple[float, int]:
    """Log-likelihood and parameter count of the fit's data with other random effects."""
    model_terms = Terms([Term(t.name, t.z_names, int(t.codes.max()) + 1, t.diagonal)
                         for t in terms])
    deviance = model.deviance_with_random_effects([(t.codes, t.Z) for t in terms], model_terms)
    n_params = (len(model.fe_names) + model_terms.n_theta + model.design.n_strata
                + len(model.correlation_names))
    return -0.5 * deviance, n_params


def ranova(est: Any) -> ResultTable:
    """Likelihood-ratio tests of the random effects, as lmerTest's ``ranova``.

    Each random-effects term is reduced and the model refitted (REML fits by REML, ML
    fits by ML) on the same rows: a term whose left side has slopes loses each marginal
    slope term in turn (``age in (age | Subject)``: ``(age | Subject)`` becomes
    ``(1 | Subject)``), a random intercept alone is removed, ``||`` and ``/`` are expanded
    as lme4 expands them first; a fit from arrays treats each
    column of ``Z`` as a term of the left side. A model left without random effects is
    least squares, whose REML log-likelihood is R's ``logLik(lm, REML = TRUE)``.

    Parameters
    ----------
    est : MixedLMRegressor
        An in-memory fit (the reduced models are refitted from its rows).

    Returns
    -------
    ResultTable
        A DataFrame printed as lmerTest prints it (``ANOVA-like table for random-effects:
        Single term deletions``, the model's formula as R's ``terms`` orders it). Rows
        ``<none>`` (the model) and one per reduction; columns ``npar``, ``logLik``,
        ``AIC``, ``LRT``, ``Df``, ``Pr(>Chisq)`` (the plain chi-square p-value, as
        lmerTest; see :func:`~mixedlm_sklearn.lr_test` with
        ``boundary=True`` for the boundary-corrected one).

    Raises
    ------
    ValueError
        For a model without random effects.
    NotImplementedError
        For a fit from chunks or Dask, which keeps cross-products, not rows.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.ranova : The same, as a method.
    mixedlm_sklearn.lr_test : The test of one pair of fits.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> est = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
    >>> print(est.ranova())
    ANOVA-like table for random-effects: Single term deletions
    <BLANKLINE>
    Model:
    distance ~ age + Sex + (age | Subject) + age:Sex
                           npar  logLik    AIC    LRT Df Pr(>Chisq)
    <none>                    8 -216.29 448.58
    age in (age | Subject)    6 -216.88 445.76 1.1756  2     0.5556
    """
    model = require(fitted_model(est), "random-refit")
    if not len(model.terms):
        raise ValueError("the model has no random effects to test")
    if model.design is None:
        raise NotImplementedError("ranova refits reduced models from the fit's rows; a fit from "
                                  "chunks or Dask keeps only their cross-products")
    frame = getattr(est, "model_frame_", None)
    reductions = _formula_reductions(frame) if frame is not None else _array_reductions(model)
    reduced = {name: _fit_random(model, terms) for name, terms in reductions.items()}
    table = ranova_table((log_likelihood(model), n_parameters(model)), reduced)
    if frame is not None:
        names = list(getattr(model, "fe_names", ()))
        shown = _terms_formula(frame.formula, [t.name for t in frame.fixed_terms()],
                               "(Intercept)" in names)
    else:
        shown = f"{type(est).__name__} fitted from arrays"
    return ResultTable(table, formats=RANOVA_FORMATS, stars="Pr(>Chisq)",
                       title="ANOVA-like table for random-effects: Single term deletions\n\n"
                             f"Model:\n{shown}")
