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
* Kenward-Roger: pbkrtest's ``KRmodcomp`` (see :mod:`._kenward_roger`); ``F value`` is the
  scaled statistic, ``Mean Sq`` uses the unscaled one, as lmerTest prints them.

``Mean Sq = F sigma^2`` and ``Sum Sq = NumDF Mean Sq`` (lmerTest's convention: the sums of
squares a linear model with the same F statistic would have).

The functions take explicit inputs: the term structure (:class:`FixedTerm`, derived from
a formulaic model spec by :func:`fixed_terms`), ``X'X`` or the over-parametrised design
(:func:`overparametrised_design`), the estimates, their covariance and a df function.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

# lmerTest's get_Fstat_ddf (Fai & Cornelius 1996): the package's one implementation
from .inference.wald import combined_ddf as _combined_ddf

__all__ = [
    "FixedTerm",
    "Overparametrised",
    "fixed_terms",
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
    "anova",
    "ranova_formulas",
    "ranova_table",
    "ols_loglik",
    "TABLE_COLUMNS",
]

TABLE_COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]

_EPS = np.finfo(float).eps


@dataclass(frozen=True)
class FixedTerm:
    """One fixed-effects term of a model.

    Attributes
    ----------
    name : str
        The term as R labels it (``"age:Sex"``).
    columns : tuple of int
        Its columns in the design, in ``fe_params_`` order (intercept first).
    variables : tuple of str
        The variables whose interaction the term is (``("age", "Sex")``).
    numeric : frozenset of str
        Those of ``variables`` that are numeric (covariates), not factors.
    """

    name: str
    columns: tuple[int, ...]
    variables: tuple[str, ...]
    numeric: frozenset = frozenset()

    @property
    def order(self) -> int:
        """Number of variables (R's ``attr(terms, "order")``)."""
        return len(self.variables)


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
        va = set(a.variables)
        out[a.name] = [b.name for b in terms
                       if va <= set(b.variables) and set(b.variables) - va
                       and set(a.numeric) == set(b.numeric)]
    return out


def marginal_terms(terms: Sequence[FixedTerm]) -> list[str]:
    """Terms whose variables are not all in another term (R's ``drop.scope``)."""
    return [a.name for a in terms
            if not any(set(a.variables) <= set(b.variables) for b in terms if b is not a)]


def fixed_terms(spec: Any) -> tuple[list[FixedTerm], bool]:
    """The fixed-effects terms of a formulaic model spec, and whether it has an intercept.

    Column indices follow ``fe_params_``: the intercept first, then the spec's other
    columns in order (``ModelFrame.X``'s order). A factor is numeric when formulaic
    encoded it as numerical.

    Parameters
    ----------
    spec : formulaic.ModelSpec
        ``ModelFrame._fixed_spec``.

    Returns
    -------
    terms : list of FixedTerm
    intercept : bool

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedlm_sklearn.formula import parse_formula
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> mf = parse_formula("distance ~ age * Sex + (age | Subject)", load_orthodont())
    >>> terms, intercept = fixed_terms(mf._fixed_spec)
    >>> [(t.name, t.columns, sorted(t.numeric)) for t in terms], intercept
    ([('age', (1,), ['age']), ('Sex', (2,), []), ('age:Sex', (3,), ['age'])], True)
    """
    order = _fe_order(spec)
    position = {c: i for i, c in enumerate(order)}
    terms, intercept = [], False
    for term, cols in spec.term_indices.items():
        if str(term) == "1":
            intercept = True
            continue
        variables = tuple(str(f.expr) for f in term.factors)
        numeric = frozenset(v for v in variables if _kind(spec, v) == "numerical")
        terms.append(FixedTerm(str(term), tuple(position[c] for c in cols), variables, numeric))
    return terms, intercept


def _kind(spec: Any, expr: str) -> str:
    kind = spec.encoder_state.get(expr, (None, None))[0]
    return str(getattr(kind, "value", kind))


def _fe_order(spec: Any) -> list[int]:
    """Spec column indices in ``fe_params_`` order: intercept column(s) first."""
    intercept = [i for t, cols in spec.term_indices.items() if str(t) == "1" for i in cols]
    return intercept + [i for i in range(len(spec.column_names)) if i not in intercept]


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


def _factor_matrix(spec: Any, data: pd.DataFrame, expr: str, context: Mapping[str, Any]
                   ) -> tuple[np.ndarray, list[str] | None]:
    """A factor's columns on the data: full indicators (levels as encoded) or its values."""
    one = spec.update(formula=f"0 + {expr}", structure=None, ensure_full_rank=False)
    # na_action="raise": every factor must keep every row, or the products misalign
    matrix = one.get_model_matrix(data, context=dict(context), na_action="raise")
    values = np.asarray(matrix, dtype=float)
    if _kind(spec, expr) != "categorical":
        return values, None
    state = spec.encoder_state[expr][1]
    levels = [str(v) for v in state["contrasts"].levels]
    names = [str(c) for c in matrix.columns]
    order = [names.index(f"{expr}[{lev}]") for lev in levels]
    return values[:, order], levels


def overparametrised_design(spec: Any, data: pd.DataFrame,
                            context: Mapping[str, Any] | None = None) -> Overparametrised:
    """The over-parametrised design of a formulaic model spec on its data.

    Parameters
    ----------
    spec : formulaic.ModelSpec
        ``ModelFrame._fixed_spec``.
    data : DataFrame
        The rows the model was fitted to (any rows on which its design has full column
        rank give the same contrasts).
    context : mapping, optional
        Names used by the formula's expressions (``np`` for ``np.log(x)``).

    Returns
    -------
    Overparametrised

    Raises
    ------
    NotImplementedError
        For a term formulaic encodes in several pieces (a term without the terms it is
        marginal to, such as ``a:b`` without ``a`` or ``b``).

    Examples
    --------
    >>> from mixedlm_sklearn.formula import parse_formula
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> df = load_orthodont()
    >>> mf = parse_formula("distance ~ age * Sex + (age | Subject)", df)
    >>> over = overparametrised_design(mf._fixed_spec, df)
    >>> over.X_full.shape, over.full_columns, over.treatment.tolist()
    ((108, 6), {'age': [1], 'Sex': [2, 3], 'age:Sex': [4, 5]}, [0, 1, 3, 5])
    """
    context = {"np": np} if context is None else context
    terms, intercept = fixed_terms(spec)
    structure = {str(s.term): s for s in spec.structure}
    blocks = [np.ones((len(data), 1))] if intercept else []
    full_columns, treatment_of_term = {}, {}
    factors: dict[str, tuple[np.ndarray, list[str] | None]] = {}  # a factor is in several terms
    start = 1 if intercept else 0
    for t in terms:
        scoped = structure[t.name].scoped_terms
        if len(scoped) != 1 or [str(f.factor) for f in scoped[0].factors] != list(t.variables):
            raise NotImplementedError(
                f"the term {t.name!r} is encoded in pieces {[str(s) for s in scoped]}; type III "
                "contrasts need each term to be a product of its factors (include the terms it "
                "is marginal to)")
        reduced = {str(f.factor): bool(f.reduced) for f in scoped[0].factors}
        # the term's columns: the row-wise product of its factors, the first varying fastest
        block = np.ones((len(data), 1))
        keep = np.ones(1, dtype=bool)
        for expr in t.variables:
            if expr not in factors:
                factors[expr] = _factor_matrix(spec, data, expr, context)
            F, levels = factors[expr]
            block = (F[:, :, None] * block[:, None, :]).reshape(len(data), -1)
            k = F.shape[1]
            # treatment coding drops the first level of a factor encoded with contrasts
            mine = np.ones(k, dtype=bool)
            if levels is not None and reduced[expr]:
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
    X_full = np.hstack(blocks) if blocks else np.zeros((len(data), 0))
    p = sum(len(t.columns) for t in terms) + int(intercept)
    treatment = np.zeros(p, dtype=int)
    for t in terms:
        treatment[list(t.columns)] = treatment_of_term[t.name]
    X = np.asarray(spec.get_model_matrix(data, context=dict(context), na_action="raise"),
                   dtype=float)[:, _fe_order(spec)]
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
        From :func:`mixedlm_sklearn._kenward_roger.kenward_roger`.
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


def anova(contrast_matrices: Mapping[str, np.ndarray], beta: Any, cov_beta: Any, sigma2: float,
          ddf: str = "satterthwaite", t_df: Callable[[np.ndarray], np.ndarray] | None = None,
          kr: Any = None) -> pd.DataFrame:
    """The ANOVA table (lmerTest's ``anova``/``drop1``) for given contrasts.

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
    >>> anova(L, [1.0, 2.0], np.diag([1.0, 0.25]), 2.0, t_df=lambda M: np.full(len(M), 10.0)).round(4)
       Sum Sq  Mean Sq  NumDF  DenDF  F value  Pr(>F)
    x    32.0     32.0      1   10.0     16.0  0.0025
    """
    from functools import partial

    ddf = ddf.lower().replace("_", "-")
    beta = np.asarray(beta, dtype=float).reshape(-1)
    if ddf == "satterthwaite":
        if t_df is None:
            raise ValueError("Satterthwaite's method needs t_df (the df of contrast rows)")
        test = partial(satterthwaite_f_test, beta=beta, cov_beta=cov_beta, sigma2=sigma2, t_df=t_df)
    elif ddf == "kenward-roger":
        if kr is None:
            raise ValueError("Kenward-Roger's method needs kr (kenward_roger(...))")
        test = partial(kenward_roger_f_test, beta=beta, kr=kr, sigma2=sigma2, t_df=t_df,
                       cov_beta=cov_beta)
    else:
        raise ValueError(f"ddf must be 'satterthwaite' or 'kenward-roger', got {ddf!r}")
    return anova_table(contrast_matrices, test)


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
    from .formula import _as_bar, _bar_positions, _signed_pieces, _split_top
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


def ols_loglik(X: Any, y: Any, reml: bool = True) -> tuple[float, int]:
    """Log-likelihood and parameter count of least squares, as R's ``logLik.lm``.

    For the row of ``ranova`` whose reduced model has no random effects left; with
    ``reml=True`` the REML log-likelihood ``-(n-p)/2 (log(2 pi RSS/(n-p)) + 1) - log|R|``
    (``R`` the QR factor of ``X``).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.column_stack([np.ones(5), np.arange(5.0)]); y = np.array([1.0, 3, 2, 5, 4])
    >>> [round(float(v), 6) for v in ols_loglik(X, y, reml=False)]  # R: -6.273432 (df=3)
    [-6.273432, 3.0]
    >>> round(float(ols_loglik(X, y)[0]), 6)  # R: logLik(lm(y ~ x), REML = TRUE)
    -6.486309
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).reshape(-1)
    n, p = X.shape
    Q, R = np.linalg.qr(X)
    rss = float(np.sum((y - Q @ (Q.T @ y)) ** 2))
    N = n - p if reml else n
    val = 0.5 * (-N * (np.log(2.0 * np.pi) + 1.0 - np.log(N) + np.log(rss)))
    if reml:
        val -= float(np.sum(np.log(np.abs(np.diag(R)))))
    return float(val), p + 1
