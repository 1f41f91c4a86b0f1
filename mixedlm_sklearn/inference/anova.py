"""ANOVA tables of the fixed effects: lmerTest's type I and type III F tests.

Each row tests the hypothesis ``L_T beta = 0`` of one fixed-effects term ``T`` with an F
test whose denominator df are Satterthwaite's (Kuznetsova, Brockhoff & Christensen 2017,
JSS 82(13), sec. 3.2 and 4) or Kenward-Roger's (Kenward & Roger 1997; pbkrtest). The
contrast matrices ``L_T`` are lmerTest 3.1's:

* **type I** (sequential): with the LU factorisation without pivoting ``X'X = L U``
  (Doolittle's algorithm, entries below 1e-6 set to 0), the rows of ``L'`` of the term's
  columns. Each term is tested adjusted for the terms before it.
* **type III**: for the over-parametrised design ``X_full`` (an intercept, then every
  term with a column for every level of each of its factors), ``L = (X^+ X_full)'``
  (rows: columns of ``X_full``, columns: the parameters) expresses each parameter in the
  over-parametrised coefficients; then, from the highest-order term down, the columns of
  each term are replaced by their residuals after least-squares regression on the
  columns of the terms that *contain* it (term ``A`` is contained in ``B`` when ``B``'s
  variables include all of ``A``'s and more, and both have the same numeric variables).
  ``L_T`` is the transpose of ``L``'s rows of the parameters and columns of ``T``; zero
  rows are dropped. lmerTest computes all this with the treatment-coded design and maps
  the result to another coding by ``X_trt^+ X``; so does :func:`type3_contrasts`.
  Entries are rounded as R's ``zapsmall`` (7 significant digits of the largest), so an
  entry 1/3 is 0.3333333, as in lmerTest.
* **marginal** (``drop1``): identity rows of the columns of the terms contained in no other.

The F statistics (lmerTest ``contestMD``):

* Satterthwaite: ``L C L' = P D P'`` (eigenvalues above ``sqrt(eps)`` of the largest);
  ``F = sum_m (p_m'L beta)^2 / d_m / q`` over the ``q`` kept components; each component's
  t df ``nu_m`` combine into ``ddf = 2E / (E - q)``, ``E = sum nu_m / (nu_m - 2)`` (the mean
  if all equal, 2 if any ``nu_m <= 2``). One row: the t test, ``F = t^2``.
* Kenward-Roger: pbkrtest's ``KRmodcomp`` (see :mod:`.kenward_roger`); ``F value`` is the
  scaled statistic, ``Mean Sq`` uses the unscaled one, as lmerTest prints them.

``Mean Sq = F sigma^2`` and ``Sum Sq = NumDF Mean Sq`` (lmerTest's convention: the sums of
squares a linear model with the same F statistic would have).

A fit's tables (:func:`anova`, :func:`drop1`) take its terms from its
formula (:meth:`~mixedlm_sklearn.formula.ModelFrame.fixed_terms`) or, for a fit from
arrays, from its columns (:func:`terms_from_columns`). The building blocks take explicit
inputs: the terms (:class:`~mixedlm_sklearn.formula.FixedTerm`), ``X'X`` or the
over-parametrised design (:func:`overparametrised_design`), the estimates, their
covariance and a df function.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .._table import ResultTable
from ..formula import FixedTerm
from ._parameters import check_ddf, fitted_model
from ._protocol import choose_df
from .kenward_roger import kenward_roger_model
from .satterthwaite import varpar_model
# lmerTest's get_Fstat_ddf (Fai & Cornelius 1996): the package's one implementation
from .wald import combined_ddf as _combined_ddf
# lmerTest's ranova lives in its own module; its functions stay importable from here
from .ranova import ranova, ranova_formulas, ranova_table

__all__ = [
    "anova",
    "drop1",
    "ranova",
    "FixedTerm",
    "Overparametrised",
    "overparametrised_design",
    "containment",
    "marginal_terms",
    "type1_contrasts",
    "type3_contrasts",
    "marginal_contrasts",
    "satterthwaite_f_test",
    "kenward_roger_f_test",
    "anova_table",
    "terms_from_columns",
    "contrasts",
    "f_tests",
    "ranova_formulas",
    "ranova_table",
    "TABLE_COLUMNS",
]

TABLE_COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]

_EPS = np.finfo(float).eps


def _zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest entry."""
    x = np.asarray(x, dtype=float)
    finite = x[np.isfinite(x)]
    mx = np.max(np.abs(finite)) if finite.size else 0.0
    if mx <= 0:
        return x
    return np.round(x, max(0, digits - int(np.ceil(np.log10(mx)))))


# ---- term structure -----------------------------------------------------------------------


def containment(terms: Sequence[FixedTerm]) -> dict[str, list[str]]:
    """For each term, the terms containing it (lmerTest ``term_contain``).

    ``A`` is contained in ``B`` when ``B``'s variables include all of ``A``'s and at least
    one more, and both have the same numeric variables.

    Examples
    --------
    ``Sex`` is not contained in ``age:Sex`` (the numeric ``age`` is not in ``Sex``), so
    its type III hypothesis is the Sex difference at age 0:

    >>> t = [FixedTerm("age", (1,), ("age",), frozenset({"age"})),
    ...      FixedTerm("Sex", (2,), ("Sex",)),
    ...      FixedTerm("age:Sex", (3,), ("age", "Sex"), frozenset({"age"}))]
    >>> containment(t)
    {'age': ['age:Sex'], 'Sex': [], 'age:Sex': []}
    >>> t.append(FixedTerm("Sex:Diet", (4,), ("Sex", "Diet")))
    >>> containment(t)["Sex"]
    ['Sex:Diet']
    """
    out = {}
    for a in terms:
        va = set(a.factors)
        out[a.name] = [b.name for b in terms
                       if va <= set(b.factors) and set(b.factors) - va
                       and set(a.numeric) == set(b.numeric)]
    return out


def marginal_terms(terms: Sequence[FixedTerm]) -> list[str]:
    """Terms whose variables are not all in another term (R's ``drop.scope``)."""
    return [a.name for a in terms
            if not any(set(a.factors) <= set(b.factors) for b in terms if b is not a)]


# ---- type I --------------------------------------------------------------------------------


def _doolittle(x: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """LU without pivoting as lmerTest's ``doolittle``: a tiny pivot zeroes its column of
    ``L``, and entries below ``eps`` in absolute value are set to 0 at the end."""
    n = x.shape[0]
    L, U = np.eye(n), np.zeros((n, n))
    for i in range(n):
        U[i, :] = x[i, :] - L[i, :i] @ U[:i, :]
        if i + 1 < n:
            col = x[i + 1:, i] - L[i + 1:, :i] @ U[:i, i]
            L[i + 1:, i] = 0.0 if abs(U[i, i]) < eps else col / U[i, i]
    L[np.abs(L) < eps] = 0.0
    U[np.abs(U) < eps] = 0.0
    return L, U


def type1_contrasts(xtx: Any, terms: Sequence[FixedTerm], intercept: bool = True
                    ) -> dict[str, np.ndarray]:
    """Sequential (type I) contrasts, lmerTest ``get_contrasts_type1``.

    Parameters
    ----------
    xtx : array-like of shape (p, p)
        ``X'X`` of the model's design (unweighted, as lmerTest's ``crossprod(X)``).
    terms : sequence of FixedTerm
    intercept : bool
        Whether the design has an intercept (an intercept-only model has no terms).

    Returns
    -------
    dict
        Term name -> contrast matrix of shape (columns of the term, p).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.column_stack([np.ones(4), [1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 1.0]])
    >>> t = [FixedTerm("x", (1,), ("x",), frozenset({"x"})), FixedTerm("g", (2,), ("g",))]
    >>> {k: v.round(3).tolist() for k, v in type1_contrasts(X.T @ X, t).items()}
    {'x': [[0.0, 1.0, 0.2]], 'g': [[0.0, 0.0, 1.0]]}
    """
    xtx = np.atleast_2d(np.asarray(xtx, dtype=float))
    p = xtx.shape[0]
    if p == 0 or (p == 1 and intercept):
        return {t.name: np.zeros((0, p)) for t in terms}
    Lt = np.ones((1, 1)) if p == 1 else _doolittle(xtx)[0].T
    return {t.name: Lt[list(t.columns), :] for t in terms}


# ---- type III ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overparametrised:
    """The over-parametrised design of lmerTest's type III contrasts.

    Attributes
    ----------
    X_full : ndarray of shape (r, p_full)
        An intercept column (if the model has one), then each term with a column for every
        level combination of its factors (times its numeric variables), on rows where the
        model's design has full column rank (the data's).
    full_columns : dict
        Term name -> its columns of ``X_full``.
    treatment : ndarray of int, shape (p,)
        For each parameter (``fe_params_`` order) the column of ``X_full`` that is its
        column in the treatment-coded design: ``X_trt = X_full[:, treatment]``.
    X : ndarray of shape (r, p), optional
        The model's design on the same rows, when its coding is not treatment coding
        (then the contrasts are mapped by ``X_trt^+ X``).
    """

    X_full: np.ndarray
    full_columns: dict
    treatment: np.ndarray
    X: np.ndarray | None = None


def type3_contrasts(over: Overparametrised, terms: Sequence[FixedTerm],
                    intercept: bool = True, xtx: Any = None) -> dict[str, np.ndarray]:
    """lmerTest's type III contrasts (``get_contrasts_type3``; see the module docstring).

    Parameters
    ----------
    over : Overparametrised
    terms : sequence of FixedTerm
    intercept : bool
    xtx : array-like of shape (p, p), optional
        ``X'X``, for lmerTest's fallback to type I when the design has at most one column
        or the model at most one term.

    Returns
    -------
    dict
        Term name -> contrast matrix (rows with nonzero entries only, columns the ``p``
        parameters).

    Examples
    --------
    Two factors with 2 levels each and their interaction, treatment coded: the main
    effects are tested at the average over the other factor's levels.

    >>> import numpy as np
    >>> a = np.array([0, 0, 1, 1, 0, 1]); b = np.array([0, 1, 0, 1, 1, 0])
    >>> A = np.eye(2)[a]; B = np.eye(2)[b]
    >>> AB = (A[:, :, None] * B[:, None, :]).transpose(0, 2, 1).reshape(6, 4)
    >>> X_full = np.column_stack([np.ones(6), A, B, AB])
    >>> over = Overparametrised(X_full, {"a": [1, 2], "b": [3, 4], "a:b": [5, 6, 7, 8]},
    ...                         np.array([0, 2, 4, 8]))
    >>> t = [FixedTerm("a", (1,), ("a",)), FixedTerm("b", (2,), ("b",)),
    ...      FixedTerm("a:b", (3,), ("a", "b"))]
    >>> {k: v.tolist() for k, v in type3_contrasts(over, t).items()}
    {'a': [[0.0, 1.0, 0.0, 0.5]], 'b': [[0.0, 0.0, 1.0, 0.5]], 'a:b': [[0.0, 0.0, 0.0, 1.0]]}
    """
    X_trt = over.X_full[:, over.treatment]
    p = X_trt.shape[1]
    if p <= 1 or len(terms) <= 1:
        if xtx is None:
            X = X_trt if over.X is None else over.X
            xtx = X.T @ X
        return type1_contrasts(xtx, terms, intercept)
    L = _zapsmall(np.linalg.pinv(X_trt) @ over.X_full).T  # (p_full, p)
    contained_in = containment(terms)
    cols = {t.name: list(t.columns) for t in terms}
    # highest order first; equal orders keep the formula's order (R's order() is stable)
    for t in sorted(terms, key=lambda t: -t.order):
        bigger = [c for name in contained_in[t.name] for c in cols[name]]
        if bigger:
            Xc, Y = L[:, bigger], L[:, cols[t.name]]
            coef = np.linalg.lstsq(Xc, Y, rcond=None)[0]
            L[:, cols[t.name]] = _zapsmall(Y - Xc @ coef)
    L = L[over.treatment, :]  # the rows of the parameters (lmerTest: L[colnames(X), ])
    mapping = None
    if over.X is not None:
        mapping = _zapsmall(np.linalg.pinv(X_trt) @ over.X)
    out = {}
    for t in terms:
        C = L[:, cols[t.name]].T
        C = C[np.sum(np.abs(C), axis=1) > 1e-8]
        out[t.name] = (C if mapping is None else C @ mapping) + 0.0  # no negative zeros
    return out


def overparametrised_design(frame: Any) -> Overparametrised:
    """The over-parametrised design of a formula fit on its fitted rows.

    Parameters
    ----------
    frame : ModelFrame
        ``model_frame_`` of an :func:`~mixedlm_sklearn.lmer` fit.

    Returns
    -------
    Overparametrised

    Raises
    ------
    NotImplementedError
        For a term whose columns are not one product of its factors (formula fits code
        every term as such a product, as R does).

    Examples
    --------
    >>> from mixedlm_sklearn.formula import parse_formula
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> frame = parse_formula("distance ~ age * Sex + (age | Subject)", load_orthodont())
    >>> over = overparametrised_design(frame)
    >>> over.X_full.shape, over.full_columns, over.treatment.tolist()
    ((108, 6), {'age': [1], 'Sex': [2, 3], 'age:Sex': [4, 5]}, [0, 1, 3, 5])
    """
    terms = frame.fixed_terms()
    n = len(frame.y)
    intercept = frame.fit_intercept
    blocks = [np.ones((n, 1))] if intercept else []
    full_columns, treatment_of_term = {}, {}
    factors: dict[str, np.ndarray] = {}  # a factor is in several terms: evaluate it once
    start = 1 if intercept else 0
    for t in terms:
        if t.contrasts is None:
            raise NotImplementedError(
                f"the term {t.name!r} is not one product of its factors; type III contrasts "
                "need each term to be")
        # the term's columns: the row-wise product of its factors, the first varying fastest
        block = np.ones((n, 1))
        keep = np.ones(1, dtype=bool)
        for factor, coded in zip(t.factors, t.contrasts):
            if factor not in factors:
                factors[factor] = frame.factor_columns(factor)
            F = factors[factor]
            block = (F[:, :, None] * block[:, None, :]).reshape(n, -1)
            # treatment coding drops the first level of a factor encoded with contrasts
            mine = np.ones(F.shape[1], dtype=bool)
            if coded:
                mine[0] = False
            keep = (mine[:, None] & keep[None, :]).reshape(-1)
        blocks.append(block)
        cols = list(range(start, start + block.shape[1]))
        full_columns[t.name] = cols
        treatment_of_term[t.name] = [c for c, k in zip(cols, keep) if k]
        start += block.shape[1]
        if len(treatment_of_term[t.name]) != len(t.columns):
            raise NotImplementedError(f"cannot match the columns of term {t.name!r} with its "
                                      "treatment coding")
    X_full = np.hstack(blocks) if blocks else np.zeros((n, 0))
    p = sum(len(t.columns) for t in terms) + int(intercept)
    treatment = np.zeros(p, dtype=int)
    for t in terms:
        treatment[list(t.columns)] = treatment_of_term[t.name]
    X = frame.fixed_design(frame.rows).to_numpy(dtype=float)
    same = np.allclose(X_full[:, treatment], X, rtol=0.0, atol=1e-12 * max(1.0, np.max(np.abs(X))))
    return Overparametrised(X_full, full_columns, treatment, None if same else X)


# ---- marginal (drop1) -------------------------------------------------------------------------


def marginal_contrasts(terms: Sequence[FixedTerm], p: int, intercept: bool = True,
                       xtx: Any = None) -> dict[str, np.ndarray]:
    """lmerTest's ``drop1`` contrasts: identity rows of each marginal term's columns.

    With at most one column or one term lmerTest falls back to type I, which needs ``xtx``
    (``X'X``).
    """
    if p <= 1 or len(terms) <= 1:
        if xtx is None:
            raise ValueError("with at most one column or term drop1 uses the type I "
                             "contrasts: pass xtx")
        return type1_contrasts(xtx, terms, intercept)
    eye = np.eye(p)
    keep = set(marginal_terms(terms))
    return {t.name: eye[list(t.columns)] for t in terms if t.name in keep}


# ---- F tests --------------------------------------------------------------------------------


def _row(F: float, ndf: float, ddf: float, sigma2: float, F_ms: float | None = None) -> dict:
    ms = (F if F_ms is None else F_ms) * sigma2
    p = float(stats.f.sf(F, ndf, ddf)) if np.isfinite(F) else np.nan
    return dict(zip(TABLE_COLUMNS, [ms * ndf, ms, ndf, ddf, F, p]))


def _na_row() -> dict:
    return dict.fromkeys(TABLE_COLUMNS, np.nan)


def satterthwaite_f_test(L: Any, beta: Any, cov_beta: Any, sigma2: float,
                         t_df: Callable[[np.ndarray], np.ndarray], rhs: Any = None) -> dict:
    """F test of ``L beta = rhs`` with Satterthwaite's df (lmerTest ``contestMD``).

    Parameters
    ----------
    L : array-like of shape (r, p)
    beta : array-like of shape (p,)
    cov_beta : array-like of shape (p, p)
    sigma2 : float
        Residual variance (for ``Sum Sq`` and ``Mean Sq``).
    t_df : callable
        Satterthwaite df of each row of a contrast matrix (for a fitted estimator:
        ``lambda M: mixedlm_sklearn.inference.satterthwaite_df(est, M)``).
    rhs : array-like of shape (r,), optional

    Returns
    -------
    dict
        ``Sum Sq``, ``Mean Sq``, ``NumDF``, ``DenDF``, ``F value``, ``Pr(>F)`` (all NaN for a
        contrast with no rows or of rank 0).

    Examples
    --------
    >>> import numpy as np
    >>> row = satterthwaite_f_test([[0.0, 1.0]], [1.0, 2.0], np.diag([1.0, 0.25]), 2.0,
    ...                            lambda M: np.full(len(M), 10.0))
    >>> {k: round(float(v), 4) for k, v in row.items()}
    {'Sum Sq': 32.0, 'Mean Sq': 32.0, 'NumDF': 1.0, 'DenDF': 10.0, 'F value': 16.0, 'Pr(>F)': 0.0025}
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    beta = np.asarray(beta, dtype=float).reshape(-1)
    C = np.asarray(cov_beta, dtype=float)
    if L.shape[0] == 0:
        return _na_row()
    if rhs is not None and np.any(np.asarray(rhs, dtype=float) != 0):
        beta = beta - np.linalg.pinv(L) @ np.asarray(rhs, dtype=float).reshape(-1)
    if L.shape[0] == 1:
        t = float(L[0] @ beta) / np.sqrt(float(L[0] @ C @ L[0]))
        return _row(t * t, 1, float(np.asarray(t_df(L)).reshape(-1)[0]), sigma2)
    d, P = np.linalg.eigh(L @ C @ L.T)
    d, P = d[::-1], P[:, ::-1]
    keep = d > max(np.sqrt(_EPS) * d[0], 0.0)
    q = int(keep.sum())
    if q == 0:
        return _na_row()
    PtL = P[:, keep].T @ L
    nu = np.asarray(t_df(PtL), dtype=float).reshape(-1)
    if q == 1:
        t = float(PtL[0] @ beta) / np.sqrt(float(PtL[0] @ C @ PtL[0]))
        return _row(t * t, 1, float(nu[0]), sigma2)
    F = float(np.sum((PtL @ beta) ** 2 / d[keep]) / q)
    return _row(F, q, _combined_ddf(nu), sigma2)


def kenward_roger_f_test(L: Any, beta: Any, kr: Any, sigma2: float, rhs: Any = None,
                         t_df: Callable[[np.ndarray], np.ndarray] | None = None,
                         cov_beta: Any = None) -> dict:
    """F test of ``L beta = rhs`` with Kenward-Roger's method (lmerTest via pbkrtest).

    ``F value`` is pbkrtest's scaled statistic; ``Mean Sq = F_unscaled sigma^2``. For a
    rank-deficient ``L``, where pbkrtest fails, lmerTest falls back to Satterthwaite with a
    warning: so does this function when ``t_df`` and ``cov_beta`` are given (else it
    raises).

    Parameters
    ----------
    L : array-like of shape (r, p)
    beta : array-like of shape (p,)
    kr : KenwardRoger
        From :func:`mixedlm_sklearn.inference.kenward_roger.kenward_roger_model`.
    sigma2 : float
    rhs : array-like of shape (r,), optional
    t_df, cov_beta : optional
        For the Satterthwaite fallback.

    Returns
    -------
    dict
        As :func:`satterthwaite_f_test`.
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    if L.shape[0] == 0:
        return _na_row()
    if np.linalg.matrix_rank(L) < L.shape[0]:
        if t_df is None or cov_beta is None:
            raise ValueError("L is rank deficient: the Kenward-Roger F test needs full row rank")
        warnings.warn("Unable to compute Kenward-Roger F-test (rank-deficient contrast): "
                      "using Satterthwaite instead", UserWarning, stacklevel=2)
        return satterthwaite_f_test(L, beta, cov_beta, sigma2, t_df, rhs)
    test = kr.f_test(L, beta, rhs)
    return _row(test.statistic, test.ndf, test.ddf, sigma2, F_ms=test.statistic_unscaled)


def anova_table(contrasts: Mapping[str, np.ndarray], test: Callable[[np.ndarray], dict]
                ) -> pd.DataFrame:
    """One F test per term: a DataFrame indexed by term, lmerTest's columns.

    Parameters
    ----------
    contrasts : mapping
        Term name -> contrast matrix (:func:`type1_contrasts`, :func:`type3_contrasts`,
        :func:`marginal_contrasts`).
    test : callable
        Contrast matrix -> row (a partial :func:`satterthwaite_f_test` or
        :func:`kenward_roger_f_test`).

    Returns
    -------
    DataFrame
        Columns ``Sum Sq``, ``Mean Sq``, ``NumDF``, ``DenDF``, ``F value``, ``Pr(>F)``.

    Examples
    --------
    >>> import numpy as np
    >>> from functools import partial
    >>> test = partial(satterthwaite_f_test, beta=[1.0, 2.0], cov_beta=np.diag([1.0, 0.25]),
    ...                sigma2=2.0, t_df=lambda M: np.full(len(M), 10.0))
    >>> anova_table({"x": np.array([[0.0, 1.0]])}, test)[["NumDF", "F value"]]
       NumDF  F value
    x      1     16.0
    """
    rows = [test(np.asarray(L, dtype=float)) for L in contrasts.values()]
    table = pd.DataFrame(rows, index=pd.Index(list(contrasts), dtype=object), columns=TABLE_COLUMNS)
    if len(table) and table["NumDF"].notna().all():
        table["NumDF"] = table["NumDF"].astype(int)
    return table


# ---- one entry point ---------------------------------------------------------------------------


def terms_from_columns(names: Sequence[str], groups: Mapping[str, Sequence[str]] | None = None
                       ) -> tuple[list[FixedTerm], bool]:
    """Terms of a fit without a formula: one per column, or as ``groups`` gathers them.

    Parameters
    ----------
    names : sequence of str
        The fixed effects in order (``fe_params_.index``); ``"(Intercept)"`` is the
        intercept, not a term.
    groups : mapping, optional
        Term name -> its columns (``{"Machine": ["MachineB", "MachineC"]}``); columns in no
        group are terms of their own.

    Returns
    -------
    terms : list of FixedTerm
        Each term its own variable: no term contains another, so type III contrasts are
        the identity rows of each term's columns.
    intercept : bool

    Examples
    --------
    >>> terms, intercept = terms_from_columns(["(Intercept)", "x", "MachineB", "MachineC"],
    ...                                       {"Machine": ["MachineB", "MachineC"]})
    >>> [(t.name, t.columns) for t in terms], intercept
    ([('x', (1,)), ('Machine', (2, 3))], True)
    """
    names = list(names)
    groups = dict(groups or {})
    grouped = {c: g for g, cols in groups.items() for c in cols}
    unknown = sorted(set(grouped) - set(names))
    if unknown:
        raise ValueError(f"terms name columns {unknown} that are not fixed effects {names}")
    terms: list[FixedTerm] = []
    seen = set()
    for j, name in enumerate(names):
        if name == "(Intercept)":
            continue
        term = grouped.get(name, name)
        if term in seen:
            continue
        seen.add(term)
        cols = tuple(names.index(c) for c in groups[term]) if term in groups else (j,)
        terms.append(FixedTerm(term, cols, (term,)))
    return terms, "(Intercept)" in names


def contrasts(kind: Any, terms: Sequence[FixedTerm], p: int, intercept: bool, xtx: Any,
              over: Overparametrised | None = None) -> dict[str, np.ndarray]:
    """The contrast matrices of an ANOVA table.

    Parameters
    ----------
    kind : {1, 3, "I", "III", "marginal"}
        Type I (sequential), type III, or ``drop1``'s marginal tests.
    terms : sequence of FixedTerm
    p : int
        Number of fixed effects.
    intercept : bool
    xtx : array-like of shape (p, p)
        ``X'X`` (type I; lmerTest's fallbacks).
    over : Overparametrised, optional
        Type III of a formula fit (:func:`overparametrised_design`). Without it, type III
        needs terms of which none contains another (a fit from arrays): then the contrasts
        are the identity rows of each term's columns.

    Returns
    -------
    dict
        Term name -> contrast matrix.
    """
    kind = {"I": 1, "1": 1, "III": 3, "3": 3}.get(str(kind), kind)
    if kind == 1:
        return type1_contrasts(xtx, terms, intercept)
    if kind == "marginal":
        return marginal_contrasts(terms, p, intercept, xtx)
    if kind != 3:
        raise ValueError(f"type must be 1, 3 or 'marginal', got {kind!r}")
    if over is not None:
        return type3_contrasts(over, terms, intercept, xtx)
    if any(containment(terms).values()):
        raise ValueError("type III contrasts of terms that contain others need the "
                         "over-parametrised design (overparametrised_design)")
    if p <= 1 or len(terms) <= 1:
        return type1_contrasts(xtx, terms, intercept)
    eye = np.eye(p)
    return {t.name: eye[list(t.columns)] for t in terms}


def f_tests(contrast_matrices: Mapping[str, np.ndarray], beta: Any, cov_beta: Any, sigma2: float,
            ddf: str = "satterthwaite", t_df: Callable[[np.ndarray], np.ndarray] | None = None,
            kr: Any = None) -> pd.DataFrame:
    """The F test of each term's contrasts (lmerTest's ``anova``/``drop1`` tables).

    Parameters
    ----------
    contrast_matrices : mapping
        From :func:`contrasts`.
    beta, cov_beta : array-like
        Estimates and their (unadjusted) covariance.
    sigma2 : float
        Residual variance.
    ddf : {"satterthwaite", "kenward-roger"}
    t_df : callable, optional
        Satterthwaite df of contrast rows (``lambda L: satterthwaite_df(est, L)``); needed
        for Satterthwaite and for Kenward-Roger's fallback on rank-deficient contrasts.
    kr : KenwardRoger, optional
        Needed for Kenward-Roger.

    Returns
    -------
    DataFrame
        A row per term; ``Sum Sq``, ``Mean Sq``, ``NumDF``, ``DenDF``, ``F value``, ``Pr(>F)``.

    Examples
    --------
    >>> import numpy as np
    >>> L = {"x": np.array([[0.0, 1.0]])}
    >>> f_tests(L, [1.0, 2.0], np.diag([1.0, 0.25]), 2.0, t_df=lambda M: np.full(len(M), 10.0)).round(4)
       Sum Sq  Mean Sq  NumDF  DenDF  F value  Pr(>F)
    x    32.0     32.0      1   10.0     16.0  0.0025
    """
    from functools import partial

    ddf = check_ddf(ddf, ("satterthwaite", "kenward-roger"))
    beta = np.asarray(beta, dtype=float).reshape(-1)
    if ddf == "satterthwaite":
        if t_df is None:
            raise ValueError("Satterthwaite's method needs t_df (the df of contrast rows)")
        test = partial(satterthwaite_f_test, beta=beta, cov_beta=cov_beta, sigma2=sigma2, t_df=t_df)
    else:
        if kr is None:
            raise ValueError("Kenward-Roger's method needs kr (kenward_roger(...))")
        test = partial(kenward_roger_f_test, beta=beta, kr=kr, sigma2=sigma2, t_df=t_df,
                       cov_beta=cov_beta)
    return anova_table(contrast_matrices, test)


# ---- Wald chi-square tables (car::Anova) --------------------------------------------------------


def wald_type3_contrasts(terms: Sequence[FixedTerm], p: int, intercept: bool = True
                         ) -> dict[str, np.ndarray]:
    """car's type III hypotheses: per term (and ``(Intercept)``) its coefficients are 0,
    ``L`` the identity rows of its columns (car's ``Anova.III``; not lmerTest's
    containment-adjusted type III, which it equals without interactions).

    Examples
    --------
    >>> t = [FixedTerm("a", (1, 2), ("a",))]
    >>> {k: v.tolist() for k, v in wald_type3_contrasts(t, 3).items()}
    {'(Intercept)': [[1.0, 0.0, 0.0]], 'a': [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]}
    """
    eye = np.eye(p)
    out = {"(Intercept)": eye[[0]]} if intercept else {}
    for t in terms:
        out[t.name] = eye[list(t.columns)]
    return out


def wald_type2_contrasts(terms: Sequence[FixedTerm], p: int, cov_beta: Any
                         ) -> dict[str, np.ndarray]:
    """car's type II hypotheses (Fox and Weisberg, car's ``Anova.II``): for a term ``T``
    with relatives ``R`` (the terms whose factors include all of ``T``'s), the hypothesis
    on the coefficients of ``T`` and ``R`` that is conjugate, under the inner product of
    ``V = cov_beta``, to the hypothesis ``R = 0``: ``L = N'H_2`` with ``H_2`` the identity
    rows of ``T``'s and ``R``'s columns and ``N`` spanning the orthogonal complement of
    ``H_2 V H_1'`` (``H_1`` the rows of ``R``'s columns). Without relatives, ``T``'s
    coefficients are 0 (as type III).
    """
    eye = np.eye(p)
    V = np.asarray(cov_beta, dtype=float)
    out = {}
    for t in terms:
        relatives = [b for b in terms if b is not t and set(t.factors) <= set(b.factors)]
        rel_cols = [c for b in relatives for c in b.columns]
        H2 = eye[list(t.columns) + rel_cols]
        if not rel_cols:
            out[t.name] = H2
            continue
        H1 = eye[rel_cols]
        M = H2 @ V @ H1.T
        u, sv, _ = np.linalg.svd(M, full_matrices=True)
        rank = int(np.sum(sv > sv.max(initial=0.0) * max(M.shape) * np.finfo(float).eps))
        L = u[:, rank:].T @ H2
        out[t.name] = L[np.any(np.abs(L) > 1e-12, axis=1)]
    return out


def wald_chisq_table(contrast_matrices: Mapping[str, np.ndarray], beta: Any, cov_beta: Any
                     ) -> pd.DataFrame:
    """Wald chi-square tests ``(Lb)'(LVL')^-1(Lb)`` on ``rank(L)`` df (car's
    ``linearHypothesis``): columns ``Chisq``, ``Df``, ``Pr(>Chisq)``, a row per hypothesis.

    Examples
    --------
    >>> import numpy as np
    >>> wald_chisq_table({"a": np.eye(2)}, [1.0, 2.0], np.eye(2)).round(4)
       Chisq  Df  Pr(>Chisq)
    a    5.0   2      0.0821
    """
    beta = np.asarray(beta, dtype=float)
    V = np.asarray(cov_beta, dtype=float)
    rows = {}
    for name, L in contrast_matrices.items():
        L = np.atleast_2d(L)
        Lb, LVL = L @ beta, L @ V @ L.T
        w, Q = np.linalg.eigh(0.5 * (LVL + LVL.T))
        keep = w > w.max(initial=0.0) * L.shape[0] * 1e-10
        df = int(keep.sum())
        chisq = float(np.sum((Q[:, keep].T @ Lb) ** 2 / w[keep])) if df else np.nan
        rows[name] = (chisq, df, float(stats.chi2.sf(chisq, df)) if df else np.nan)
    return pd.DataFrame.from_dict(rows, orient="index", columns=["Chisq", "Df", "Pr(>Chisq)"])


# ---- a fitted model ----------------------------------------------------------------------------


def _on_kept_columns(terms: Sequence[FixedTerm], kept: np.ndarray) -> list[FixedTerm]:
    """Terms with their columns among the kept fixed effects (aliased ones dropped, as
    lmerTest sees the model: lme4 refits without them); a term left without columns goes."""
    index = np.cumsum(kept) - 1
    out = []
    for t in terms:
        cols = tuple(int(index[c]) for c in t.columns if kept[c])
        if cols:
            out.append(dataclasses.replace(t, columns=cols))
    return out


# ---- printing: the headings lmerTest, lme4 and car print -------------------------------------

F_FORMATS = {"NumDF": "int", "DenDF": "df", "F value": "stat", "Pr(>F)": "p"}
CHISQ_FORMATS = {"Df": "int", "Chisq": "stat", "Pr(>Chisq)": "p"}
DROP1_LR_FORMATS = {"npar": "int", "Pr(Chi)": "p"}
MODELS_FORMATS = {"npar": "int", "Df": "int", "Chisq": "stat", "Pr(>Chisq)": "p"}
_METHOD = {"satterthwaite": "Satterthwaite's method", "kenward-roger": "Kenward-Roger's method"}


def _model_line(est: Any) -> list[str]:
    """R's ``Model:`` lines under a drop1 heading: the formula, or what a fit from arrays is."""
    formula = getattr(est, "formula", None)
    return ["", "Model:", formula if formula else f"{type(est).__name__} fitted from arrays"]


def _response(est: Any) -> str:
    """car's ``Response:``: the formula's left side (``y`` for a fit from arrays)."""
    formula = getattr(est, "formula", None)
    if formula and "~" in formula:
        from ..formula import split_formula_sides

        lhs = split_formula_sides(formula)[0]
        if lhs:
            return str(lhs)
    return "y"


def _f_table(table: pd.DataFrame, title: str) -> ResultTable:
    return ResultTable(table, title=title, formats=F_FORMATS, stars="Pr(>F)")


def _type(kind: Any, test: str) -> Any:
    canonical = {"1": 1, "I": 1, "2": 2, "II": 2, "3": 3, "III": 3}.get(str(kind).upper(), None)
    if canonical is None or (canonical == 1 and test == "Chisq") or (canonical == 2 and test == "F"):
        raise ValueError(f"type must be 1 (sequential) or 3 (lmerTest's type III) for F tests, 2 or "
                         f"3 (car's) for Wald chi-square tests; got {kind!r} with test={test!r}")
    return canonical


def _test(model: Any, test: str | None) -> str:
    """"F" (lmerTest's) where the model has finite denominator df, else "Chisq" (Wald)."""
    if test is None:
        return "F" if any(m != "asymptotic" for m in model.df_methods) else "Chisq"
    canonical = {"f": "F", "chisq": "Chisq", "chi2": "Chisq", "lrt": "Chisq"}.get(str(test).lower())
    if canonical is None:
        raise ValueError(f"test must be 'F' or 'Chisq', got {test!r}")
    if canonical == "F" and not any(m != "asymptotic" for m in model.df_methods):
        raise ValueError(f"F tests need an estimated dispersion; a {model.family.name} model's "
                         "is fixed: use test='Chisq'")
    return canonical


def _fixed_terms(est: Any, model: Any, terms: Mapping[str, Sequence[str]] | None
                 ) -> tuple[list, bool, np.ndarray]:
    """The fit's fixed-effects terms on its kept columns, whether it has an intercept, and
    which columns were kept."""
    rank = model.rank
    names = list(model.fe_names) if rank is None else list(rank.names)
    kept = np.ones(len(names), dtype=bool) if rank is None else rank.kept
    frame = getattr(est, "model_frame_", None) if terms is None else None
    if frame is not None:
        fixed, intercept = frame.fixed_terms(), "(Intercept)" in names
    else:
        fixed, intercept = terms_from_columns(names, terms)
    return _on_kept_columns(fixed, kept), intercept, kept


def _wald_table(est: Any, kind: int, terms: Mapping[str, Sequence[str]] | None) -> pd.DataFrame:
    """car's ``Anova(fit, type, test = "Chisq")``: Wald chi-square tests of the terms."""
    model = fitted_model(est)
    fixed, intercept, kept = _fixed_terms(est, model, terms)
    sol = model.solution
    cov = sol.cov_beta()
    p = int(kept.sum())
    L = (wald_type3_contrasts(fixed, p, intercept) if kind == 3
         else wald_type2_contrasts(fixed, p, cov))
    return wald_chisq_table(L, sol.beta, cov)


def _term_table(est: Any, kind: Any, ddf: str | None, terms: Mapping[str, Sequence[str]] | None
                ) -> tuple[pd.DataFrame, str]:
    """F tests of the terms of a fit (``kind``: 1, 3 or "marginal") and R's name of the
    df method (``"Satterthwaite's method"``)."""
    model = fitted_model(est)
    ddf = choose_df(model, ddf, ("satterthwaite", "kenward-roger"))
    fixed, intercept, kept = _fixed_terms(est, model, terms)
    frame = getattr(est, "model_frame_", None) if terms is None else None
    p = int(kept.sum())
    # lmerTest's crossprod(X): X'X of the rows, without the prior weights
    if model.design is not None:
        X = model.design.X_full[:, kept]
        xtx = X.T @ X
    else:  # chunks and Dask keep X'WX only
        xtx = model.cross_products.combined().xyxy[0][:p, :p]
    over = None
    if kind == 3 and frame is not None:
        full = overparametrised_design(frame)
        over = Overparametrised(full.X_full, full.full_columns, full.treatment[kept],
                                None if full.X is None else full.X[:, kept])
    L = contrasts(kind, fixed, p, intercept, xtx, over)
    sol = model.solution
    varpar = []

    def t_df(M: np.ndarray) -> np.ndarray:  # Satterthwaite: one variance-parameter model
        if not varpar:
            varpar.append(varpar_model(est))
        return varpar[0].contrast_df(M)

    kr = kenward_roger_model(est) if ddf == "kenward-roger" else None
    table = f_tests(L, sol.beta, sol.cov_beta(), float(sol.scale), ddf, t_df, kr)
    return table, _METHOD.get(ddf, f"{ddf} method")


def anova(est: Any, *others: Any, type: Any = 3, ddf: str | None = None,
          terms: Mapping[str, Sequence[str]] | None = None, names: Sequence[str] | None = None,
          refit: bool = True, test: str | None = None) -> ResultTable:
    """ANOVA table of a fit's fixed effects, or the comparison of several nested fits.

    With one fit, lmerTest's ``anova(fit, type, ddf)``: an F test per fixed-effects term.
    With several, lme4's ``anova(m0, m1, ...)``: likelihood-ratio tests of each model
    against the previous one (see :func:`mixedlm_sklearn.inference.compare_models`).

    Parameters
    ----------
    est : MixedLMRegressor
        A fitted linear mixed model.
    *others : MixedLMRegressor
        Further fits of the same data: then the comparison table.
    type : {3, 1}, default=3
        lmerTest's type III (each term adjusted for all others, marginal to the terms that
        contain it) or type I (sequential, in the formula's order).
    ddf : {"satterthwaite", "kenward-roger"}, optional
        Denominator df of the F tests (default Satterthwaite; Kenward-Roger: REML fits only).
    terms : dict, optional
        Term name -> its fixed-effects columns (``{"Machine": ["MachineB", "MachineC"]}``),
        for a fit from arrays: columns in no group are terms of their own. Formula fits
        take their terms from the formula unless ``terms`` is given.
    names : sequence of str, optional
        Several fits only: the row names (see
        :func:`~mixedlm_sklearn.inference.compare_models`).
    refit : bool, default=True
        Several fits only: refit REML fits by ML first, as lme4.
    test : {"F", "Chisq"}, optional
        One fit: lmerTest's F tests (the default where the dispersion is estimated), or
        car's ``Anova(fit, type, test = "Chisq")`` Wald chi-square tests (the default, and
        the only choice, for a binomial or Poisson GLMM): type 3 tests each term's
        coefficients (and the intercept's) being 0, type 2 each term after the others
        but the terms containing it (car's conjugate hypotheses).

    Returns
    -------
    ResultTable
        A DataFrame that prints as lmerTest (``Type III Analysis of Variance Table with
        Satterthwaite's method``) or car (``Analysis of Deviance Table (Type III Wald
        chisquare tests)``) print it. One fit: a row per term, columns ``Sum Sq``, ``Mean Sq``, ``NumDF``, ``DenDF``,
        ``F value``, ``Pr(>F)`` (lmerTest's; ``Mean Sq`` is ``F sigma^2``), or with
        ``test="Chisq"`` ``Chisq``, ``Df``, ``Pr(>Chisq)`` (car's). Several fits:
        ``npar``, ``AIC``, ``BIC``, ``logLik``, ``deviance``, ``Chisq``, ``Df``,
        ``Pr(>Chisq)``.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.anova : One fit's table, as a method.
    mixedlm_sklearn.inference.anova.drop1 : Tests of dropping single terms.
    mixedlm_sklearn.lr_test : One pair of fits.

    Notes
    -----
    The contrasts are lmerTest 3.1's (module docstring), on the terms of the formula as R
    codes them (``a:b`` without ``a`` and ``b``: one column per level combination, one of
    them dropped as aliased with the intercept, as lme4 does). A fit from arrays has no
    formula: its terms are columns (or the groups ``terms`` names), none contains another,
    and type III tests each term's coefficients jointly. Fixed effects dropped as aliased
    are left out of the contrasts.

    References
    ----------
    .. [1] Kuznetsova, A., Brockhoff, P. B. and Christensen, R. H. B. (2017). lmerTest
       package: tests in linear mixed effects models. Journal of Statistical Software
       82(13).

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> est = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
    >>> print(est.anova())  # lmerTest at lme4's (less converged) optimum: F 88.04, 0.419, 5.121
    Type III Analysis of Variance Table with Satterthwaite's method
             Sum Sq Mean Sq NumDF DenDF F value    Pr(>F)
    age     151.024 151.024     1    25 87.9987 1.146e-09 ***
    Sex       0.718   0.718     1    25  0.4183   0.52366
    age:Sex   8.785   8.785     1    25  5.1186   0.03261 *
    ---
    Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1
    >>> round(float(est.anova().loc["age:Sex", "F value"]), 4)  # still a DataFrame
    5.1186
    """
    if others:
        from .lrt import compare_models

        fits = [est, *others]
        table = compare_models(fits, names=names, refit=refit)
        given = [f"model{i + 1}" for i in range(len(fits))] if names is None else [str(n) for n in names]
        lines = ["Models:"]
        for name in table.index:  # lme4's heading: each model's formula, in the table's order
            fit = fits[given.index(name)]
            lines.append(f"{name}: {getattr(fit, 'formula', None) or type(fit).__name__ + ' (arrays)'}")
        return ResultTable(table, title="\n".join(lines), formats=MODELS_FORMATS, stars="Pr(>Chisq)")
    test = _test(fitted_model(est), test)
    kind = _type(type, test)
    if test == "Chisq":
        heading = (f"Analysis of Deviance Table (Type {'I' * kind} Wald chisquare tests)\n\n"
                   f"Response: {_response(est)}")
        return ResultTable(_wald_table(est, kind, terms), title=heading, formats=CHISQ_FORMATS,
                           stars="Pr(>Chisq)")
    table, method = _term_table(est, kind, ddf, terms)
    return _f_table(table, f"Type {'I' * kind} Analysis of Variance Table with {method}")


def drop1(est: Any, ddf: str | None = None,
          terms: Mapping[str, Sequence[str]] | None = None, test: str | None = None
          ) -> ResultTable:
    """Test dropping each term that no other term contains (lmerTest's or lme4's ``drop1``).

    lmerTest's F tests, or likelihood-ratio tests (lme4's ``drop1(fit, test = "Chisq")``).

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        A fitted mixed model.
    ddf : {"satterthwaite", "kenward-roger"}, optional
        Denominator df of the F tests (default Satterthwaite).
    terms : dict, optional
        As in :func:`mixedlm_sklearn.anova`.
    test : {"F", "Chisq"}, optional
        ``"F"`` where the dispersion is estimated (the default there), ``"Chisq"``: each
        reduced model refitted by maximum likelihood (from a fresh start, with the
        optimiser's escapes from bounds) and compared by the likelihood ratio (the
        default, and the only choice, for a binomial or Poisson GLMM; for a linear
        model not yet).

    Returns
    -------
    ResultTable
        A DataFrame printed as lmerTest's (``Single term deletions using Satterthwaite's
        method:``) or lme4's ``drop1`` print it. F tests: a row per droppable term, columns as :func:`mixedlm_sklearn.anova`'s.
        Chisq: a first row ``<none>`` (the model), then a row per droppable term; columns
        ``npar`` (parameters dropped), ``AIC`` (of the reduced model), ``LRT``,
        ``Pr(Chi)``.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.drop1 : The same, as a method.
    mixedlm_sklearn.anova : The type III and type I tables.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> est = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
    >>> print(est.drop1())
    Single term deletions using Satterthwaite's method:
    <BLANKLINE>
    Model:
    distance ~ age * Sex + (age | Subject)
            Sum Sq Mean Sq NumDF DenDF F value  Pr(>F)
    age:Sex 8.7846  8.7846     1    25  5.1186 0.03261 *
    ---
    Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1
    """
    model = fitted_model(est)
    if _test(model, test) == "Chisq":
        return ResultTable(_drop1_lr(est, model, terms),
                           title="\n".join(["Single term deletions"] + _model_line(est)),
                           formats=DROP1_LR_FORMATS, stars="Pr(Chi)")
    table, method = _term_table(est, "marginal", ddf, terms)
    return _f_table(table, "\n".join([f"Single term deletions using {method}:"] + _model_line(est)))


def _drop1_lr(est: Any, model: Any, terms: Mapping[str, Sequence[str]] | None) -> pd.DataFrame:
    """lme4's ``drop1(fit, test = "Chisq")`` by refits without each marginal term."""
    if model.reml:
        raise NotImplementedError("drop1(test='Chisq') of a REML fit: refit by ML first")
    fixed, intercept, kept = _fixed_terms(est, model, terms)
    droppable = marginal_terms(fixed)
    p = int(kept.sum())
    aic = -2.0 * model.llf + 2.0 * model.n_parameters
    rows = {"<none>": (np.nan, aic, np.nan, np.nan)}
    for t in fixed:
        if t.name not in droppable:
            continue
        keep = np.setdiff1d(np.arange(p), t.columns)
        reduced = model.refit(columns=keep)
        lrt = 2.0 * (model.llf - reduced.llf)
        df = p - keep.size
        rows[t.name] = (df, -2.0 * reduced.llf + 2.0 * reduced.n_parameters, lrt,
                        float(stats.chi2.sf(max(lrt, 0.0), df)))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["npar", "AIC", "LRT", "Pr(Chi)"])
    return table
