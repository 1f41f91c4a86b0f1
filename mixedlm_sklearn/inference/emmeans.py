"""Estimated marginal means over a reference grid (R's emmeans 1.8 for lmer fits).

The reference grid (Lenth, emmeans' ``ref_grid``) has a row for every combination of the
levels of the model's factors, with each numeric covariate at its mean over the fitted
rows (of the *variable*: a term ``np.log(x)`` is evaluated at the mean of ``x``) unless
``at`` gives other values; the model's design evaluated on the grid gives one linear
function ``x_g`` per cell. The estimated marginal mean of a level (combination) of the
``specs`` factors is the equally weighted average of the cells' ``x_g`` over the other
factors, ``l = mean_g x_g``: ``emmean = l'beta``, ``SE = sqrt(l'Vl)``. A formula's
``offset(...)`` terms are part of each cell's prediction: evaluated on the grid (their
variables at their means, or at ``at``'s values) and averaged like ``x_g``, so ``emmean =
l'beta + mean_g offset_g``. That is emmeans' rule for ``offset()`` terms of the formula:
the variables an offset reads are variables of the grid, reduced to their means like
other covariates, and the offset is computed on the grid (emmeans vignettes
"sophisticated", section "Models with offsets", and "xplanations", section "Intricacies
of offsets"; ``.get.offset`` evaluates the offset expressions on the grid rows). So
``offset(log(n))`` enters as ``log(mean(n))``, not as the mean of ``log(n)``.

For lmer fits emmeans' default uses the Kenward-Roger adjusted ``V`` (pbkrtest
``vcovAdj``) and the df of each row from pbkrtest's ``Lb_ddf``; Satterthwaite (``V``
unadjusted, lmerTest's df) and asymptotic (``df = inf``) are the alternatives. Intervals
are ``emmean -+ t_{df} SE``.

``pairs`` forms every difference ``m_i - m_j`` (``i < j`` in the table's order, named
``"Male - Female"``; with several factors the levels are joined by a space,
``"Evit000 Cu000 - Evit100 Cu000"``; levels that read as numbers get the variable's name,
``"YEAR95 - YEAR96"``) and p-values adjusted over the family: Tukey's
studentized range for ``k`` means (``P(Q_{k,df} > sqrt(2) |t|)``), Holm, Bonferroni,
Sidak or none.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import integrate, special, stats

from .._table import ResultTable, _blocks, format_real
from ._emm_spec import CONTRAST_METHODS, EmmSpec, parse_emm_spec
from ._parameters import fitted_model
from ._protocol import choose_df
from .kenward_roger import kenward_roger_model, kenward_roger_refusal
from .satterthwaite import varpar_model

__all__ = ["emmeans", "ReferenceGrid", "EMMeans", "EMMeansContrasts", "EmmeansTable",
           "reference_grid", "marginal_means", "adjust_pvalues", "joint_tests"]

DfFunction = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ReferenceGrid:
    """The reference grid of a model.

    Attributes
    ----------
    grid : DataFrame
        A row per cell: the factors' levels and the covariates' values (the first
        variable varies fastest, as R's ``expand.grid``).
    X : ndarray of shape (cells, p)
        The model's design on the grid, columns in ``fe_params_`` order.
    factors : list of str
        The grid's variables with several values (factors, and covariates given several
        values in ``at``), in the model's order.
    offset : ndarray of shape (cells,) or None
        The formula's ``offset(...)`` terms on the grid (None without an offset): added
        to ``X beta`` in each cell's prediction.
    """

    grid: pd.DataFrame
    X: np.ndarray
    factors: list
    offset: np.ndarray | None = None


def _is_categorical(series: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def _levels(series: pd.Series) -> list:
    if isinstance(series.dtype, pd.CategoricalDtype):
        present = set(series.dropna())
        return [c for c in series.cat.categories if c in present]
    return sorted(series.dropna().unique().tolist())


def reference_grid(frame: Any, at: Mapping[str, Any] | None = None) -> ReferenceGrid:
    """emmeans' reference grid of a formula fit.

    The variables of the formula's ``offset(...)`` terms are variables of the grid too
    (covariates at their mean unless ``at`` gives values), and the offset is evaluated
    on it, as emmeans does for ``offset()`` terms.

    Parameters
    ----------
    frame : ModelFrame
        ``model_frame_`` of an :func:`~mixedlm_sklearn.lmer` fit (covariate means are over
        its fitted rows).
    at : mapping, optional
        Variable -> value or list of values: covariates at these values instead of their
        mean, factors restricted to these levels.

    Returns
    -------
    ReferenceGrid

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedlm_sklearn.formula import parse_formula
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> df = load_orthodont()
    >>> df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])
    >>> rg = reference_grid(parse_formula("distance ~ age * Sex + (age | Subject)", df))
    >>> rg.grid
        age     Sex
    0  11.0    Male
    1  11.0  Female
    >>> rg.X.tolist()
    [[1.0, 11.0, 0.0, 0.0], [1.0, 11.0, 1.0, 11.0]]
    """
    at = dict(at or {})
    data = frame.rows
    factors_of = frame.fixed_factors()
    # the model's variables in order of first appearance in its terms
    variables: list[str] = []
    for term in frame.fixed_terms():
        for factor in term.factors:
            for v in factors_of[factor].variables:
                if v not in variables:
                    variables.append(v)
    # then those only the offset reads: emmeans puts them in the grid too
    variables += [v for v in frame.offset_variables() if v not in variables]
    unknown = sorted(set(at) - set(variables))
    if unknown:
        raise ValueError(f"at= names {unknown}, which are not variables of the model {variables}")
    values: dict[str, list] = {}
    is_factor: dict[str, bool] = {}
    for v in variables:
        # a variable is a factor when its column is not numeric or when it only enters the
        # model through categorical factors (C(x)); otherwise a covariate
        uses = [f for f in factors_of.values() if v in f.variables]
        is_factor[v] = _is_categorical(data[v]) or bool(uses) and all(f.categorical for f in uses)
        if v in at:
            given = at[v]
            given = list(given) if isinstance(given, (list, tuple, np.ndarray, pd.Series)) else [given]
            if is_factor[v]:
                missing = [g for g in given if g not in _levels(data[v])]
                if missing:
                    raise ValueError(f"at[{v!r}] has levels {missing} not in the data")
            values[v] = given
        elif is_factor[v]:
            values[v] = _levels(data[v])
        else:
            values[v] = [float(np.mean(data[v]))]
    names = list(values)
    # expand.grid: the first variable varies fastest
    combos = list(itertools.product(*[values[v] for v in reversed(names)]))
    grid = pd.DataFrame([tuple(reversed(c)) for c in combos], columns=names)
    for v in names:
        if isinstance(data[v].dtype, pd.CategoricalDtype):
            grid[v] = pd.Categorical(grid[v], categories=data[v].cat.categories)
    X = frame.fixed_design(grid).to_numpy(dtype=float)
    offset = frame.offset_values(grid)
    varying = [v for v in names if is_factor[v] or len(values[v]) > 1]
    return ReferenceGrid(grid, X, varying, None if offset is None else offset.to_numpy(dtype=float))


def adjust_pvalues(p: Any, method: str, t: Any = None, df: Any = None, n_means: int = 0
                   ) -> np.ndarray:
    """Multiplicity adjustment of a family of two-sided t-test p-values.

    Parameters
    ----------
    p : array-like
        Unadjusted p-values.
    method : {"tukey", "dunnettx", "holm", "bonferroni", "sidak", "none"}
        ``"tukey"``: ``P(Q > sqrt(2)|t|)`` for the studentized range of ``n_means`` means on
        ``df`` df (for all pairwise differences of ``n_means`` means); ``"dunnettx"``:
        emmeans' approximation to Dunnett's test of ``m`` comparisons with a control, one
        minus ``w P(Q_{k'} < sqrt(2)|t|) + (1 - w) P(F_{1,df} < t^2)^m`` with ``w = (m -
        1)/m`` and ``k' = (1 + sqrt(1 + 8m))/2`` (emmeans' ``summary.emmGrid``,
        "P-value adjustments"); ``"holm"`` and
        ``"bonferroni"`` as R's ``p.adjust``; ``"sidak"``: ``1 - (1 - p)^m``.
    t, df : array-like, optional
        t ratios and df (Tukey and dunnettx only).
    n_means : int
        Tukey only.

    Examples
    --------
    >>> adjust_pvalues([0.01, 0.04, 0.03], "holm").round(4).tolist()
    [0.03, 0.06, 0.06]
    >>> adjust_pvalues([0.01, 0.04, 0.03], "bonferroni").round(4).tolist()
    [0.03, 0.12, 0.09]
    """
    p = np.asarray(p, dtype=float)
    m = p.size
    if method == "none" or m == 0:
        return p
    if method == "bonferroni":
        return np.minimum(1.0, m * p)
    if method == "sidak":
        return 1.0 - (1.0 - p) ** m
    if method == "holm":
        order = np.argsort(p, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
        out = np.empty(m)
        out[order] = adj
        return out
    if method == "dunnettx":
        # emmeans' approximation to Dunnett's distribution for m comparisons with a control
        # (correlations 1/2): a mixture, weight (m - 1)/m, of the studentized range of
        # (1 + sqrt(1 + 8m))/2 means and the Sidak bound P(F_{1,df} < t^2)^m
        t = np.abs(np.asarray(t, dtype=float))
        df = np.broadcast_to(np.asarray(df, dtype=float), t.shape)
        if m < 2:
            return p
        weight = (m - 1.0) / m
        means = (1.0 + np.sqrt(1.0 + 8.0 * m)) / 2.0
        tukey = np.array([float(stats.studentized_range.cdf(np.sqrt(2.0) * ti, means, di))
                          for ti, di in zip(t, df)])
        sidak = np.where(np.isinf(df), stats.chi2.cdf(t * t, 1), stats.f.cdf(t * t, 1, df)) ** m
        return np.clip(1.0 - (weight * tukey + (1.0 - weight) * sidak), 0.0, 1.0)
    if method == "tukey":
        t = np.abs(np.asarray(t, dtype=float))
        df = np.broadcast_to(np.asarray(df, dtype=float), t.shape)
        if n_means < 2:
            return p
        return np.array([studentized_range_sf(np.sqrt(2.0) * ti, n_means, di)
                         for ti, di in zip(t, df)])
    raise ValueError("adjust must be 'tukey', 'dunnettx', 'holm', 'bonferroni', 'sidak' or "
                     f"'none', got {method!r}")


# Below this scipy's studentized range survival function loses its relative accuracy
# (5-6% at 1e-13: Oats' N0 - N0.6 moved 1.1% with the ulps of its t ratio), and the tail
# is integrated from positive terms instead.
_TUKEY_TAIL = 1e-8
# A range of standard normals beyond which its survival function is 0 in doubles (below
# k^2 exp(-w^2 / 4) < 1e-390): the tail's quadrature stops there, so that its cost does
# not grow with the statistic (a t ratio of 10^5 took gigabytes)
_RANGE_ZERO = 60.0


def studentized_range_sf(q: float, k: int, df: float) -> float:
    """``P(Q > q)`` for the studentized range of ``k`` means on ``df`` df (inf: normals).

    scipy's ``studentized_range.sf`` where it is above ``1e-8``; below, where its relative
    accuracy goes, by quadrature of positive terms only: the range ``R`` of ``k`` standard
    normals has ``P(R > w) = k int phi(z) [Phi(z)^(k-1) - (Phi(z) - Phi(z - w))^(k-1)] dz``
    (the smallest at ``z``), and ``a^n - (a - b)^n = b sum_i a^i (a - b)^(n-1-i)`` removes
    the cancellation; then ``Q = R / s`` with ``df s^2 ~ chi2_df`` (Hochberg & Tamhane
    1987, sec. 3.1).
    """
    p = float(stats.studentized_range.sf(q, k, df))
    if p >= _TUKEY_TAIL or q <= 0:
        return p
    powers = np.arange(k - 1)
    nodes, weights = np.polynomial.legendre.leggauss(16)

    def range_sf(w: float) -> float:
        if w > _RANGE_ZERO:  # the integrand is below exp(-w^2 / 4): 0 in doubles
            return 0.0
        # Gauss-Legendre on panels of width 1/2 over [-12, w + 12]: both phi(z) and
        # Phi(z - w) vary on a scale of 1, so each panel is integrated to rounding
        mid = np.arange(-12.0, w + 12.0, 0.5) + 0.25
        z = (mid[:, None] + 0.25 * nodes).ravel()
        a, b = special.ndtr(z), special.ndtr(z - w)
        terms = (a[:, None] ** powers * (a - b)[:, None] ** (k - 2 - powers)).sum(axis=1)
        phi = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
        return float(k * np.sum(np.tile(0.25 * weights, mid.size) * phi * b * terms))

    if not np.isfinite(df):
        return range_sf(q)
    log_norm = np.log(2.0) + 0.5 * df * np.log(0.5 * df) - special.gammaln(0.5 * df)

    def outer(s: float) -> float:
        return float(np.exp(log_norm + (df - 1.0) * np.log(s) - 0.5 * df * s * s)) * range_sf(q * s)
    # the density of s peaks at about 1 with spread 1/sqrt(2 df); range_sf(q s) is 0 beyond
    # s = _RANGE_ZERO / q and falls on a scale of 1 / q (where a large q's tail lies, its
    # edges on that scale). quad reads no end point: s = 0 is a valid lower end.
    spread = 1.0 / np.sqrt(2.0 * df)
    top = min(max(4.0, 1.0 + 40.0 * spread), _RANGE_ZERO / q)
    edges = {0.0, 1.0 - 12.0 * spread, 1.0, 1.0 + 12.0 * spread, 1.0 + 40.0 * spread}
    edges |= {c / q for c in (1.0, 4.0, 16.0)}
    edges = sorted({e for e in edges if 0.0 <= e < top} | {top})
    return float(sum(integrate.quad(outer, lo, hi, epsabs=0.0, epsrel=1e-10, limit=400)[0]
                     for lo, hi in zip(edges[:-1], edges[1:])))


class EmmeansTable(ResultTable):
    """A :class:`~mixedlm_sklearn._table.ResultTable` printed as emmeans prints a summary.

    ``by`` names the columns whose levels split the table into blocks, each headed by
    ``"V = level:"`` (emmeans' ``print.summary_emm``); the numbers are formatted over the
    whole table, then each block is laid out on its own.

    Examples
    --------
    >>> t = EmmeansTable({"g": ["a", "b", "a", "b"], "V": ["x", "x", "y", "y"],
    ...                   "emmean": [1.0, 2.0, 3.0, 4.0], "SE": [0.5, 0.5, 0.5, 0.5]},
    ...                  by=("V",), layout="emmeans")
    >>> print(t.text(width=80))
    V = x:
     g emmean  SE
     a      1 0.5
     b      2 0.5
    <BLANKLINE>
    V = y:
     g emmean  SE
     a      3 0.5
     b      4 0.5
    <BLANKLINE>
    """

    _metadata = ResultTable._metadata + ["by"]

    def __init__(self, data=None, *args: Any, by: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(data, *args, **kwargs)
        self.by = tuple(by)

    @property
    def _constructor(self):
        return EmmeansTable

    def text(self, width: int | None = None) -> str:
        by = [b for b in getattr(self, "by", ()) if b in self.columns]
        if not by or len(self.index) == 0:
            # without notes emmeans still ends the table with a blank line
            return super().text(width) + ("" if self.notes else "\n")
        if width is None:
            width = shutil.get_terminal_size((80, 24)).columns
        headers, columns, left, _ = self._cells()
        # emmeans formats the whole summary, then prints it group by group: a column has
        # one width in every block
        columns = [[c.ljust(max(map(len, col))) if is_left else c.rjust(max(map(len, col)))
                    for c in col] for col, is_left in zip(columns, left)]
        keep = [j for j, c in enumerate(self.columns) if c not in by]
        labels = {b: _by_strings(self[b]) for b in by}
        lines: list[str] = [self.title] if self.title else []
        keys = list(zip(*[labels[b] for b in by]))
        for key in dict.fromkeys(keys):
            rows = [i for i, k in enumerate(keys) if k == key]
            lines.append(", ".join(f"{b} = {v}" for b, v in zip(by, key)) + ":")
            lines.extend(_blocks(None, [headers[j] for j in keep],
                                 [[columns[j][i] for i in rows] for j in keep],
                                 [left[j] for j in keep], width))
            lines.append("")
        lines.extend(f"{n} " for n in self.notes)
        return "\n".join(lines)


def _by_strings(column: pd.Series) -> list[str]:
    """A by variable's levels as R's ``format`` writes them (numbers right-justified)."""
    values = column.tolist()
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        texts = format_real(np.asarray(values, dtype=float))
        width = max(len(t) for t in texts)
        return [t.rjust(width) for t in texts]
    return [str(v) for v in values]


_FORMATS = {"df": "df", "t.ratio": "stat", "z.ratio": "stat", "F.ratio": "stat",
            "p.value": "p.emmeans"}


def _table(frame: pd.DataFrame, notes: Sequence[str], by: Sequence[str]) -> EmmeansTable:
    formats = {c: _FORMATS[c] for c in frame.columns if c in _FORMATS}
    formats.update({c: "text" for c in frame.columns if c == "contrast" or c == "model term"})
    return EmmeansTable(frame, by=by, notes=list(notes), formats=formats, layout="emmeans")


@dataclass(frozen=True)
class EMMeans:  # numpydoc ignore=PR01
    """Estimated marginal means, their pairwise differences and contrasts.

    Attributes
    ----------
    table : EmmeansTable
        The specs' columns, the ``by`` columns, then ``emmean``, ``SE``, ``df``,
        ``lower.CL``, ``upper.CL`` (``asymp.LCL``, ``asymp.UCL`` when the df are infinite,
        as emmeans names them). A DataFrame that prints as emmeans prints it (a block per
        ``by`` group, then the notes).
    linfct : ndarray of shape (means, p)
        The linear function of the fixed effects of each mean.
    labels : list of str
        Each mean's levels joined by a space (the names in contrasts).
    offset : ndarray of shape (means,) or None
        The known part of each mean (the average offset of its cells): ``emmean =
        linfct beta + offset``; contrasts combine it with their coefficients.
    link : Link or None
        The model's link (None: identity).
    type : {"link", "response"}
        The scale of the table and the default scale of :meth:`pairs`.
    by : tuple of str
        The variables within whose levels means are compared (emmeans' ``by``).
    df_method : str or None
        ``"kenward-roger"``, ``"satterthwaite"`` or None (asymptotic): the notes'.
    averaged : tuple of str
        The factors the means average over (a note).

    See Also
    --------
    mixedlm_sklearn.inference.emmeans.emmeans : Make one.
    mixedlm_sklearn.MixedLMRegressor.emmeans : The same, as a method.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
    >>> emm = fit.emmeans("Sex")
    >>> emm.labels, emm.linfct.shape
    (['Female', 'Male'], (2, 4))
    """

    table: pd.DataFrame
    linfct: np.ndarray
    labels: list
    beta: np.ndarray
    cov_beta: np.ndarray
    df_function: DfFunction | None
    level: float = 0.95
    offset: np.ndarray | None = None
    link: Any = None
    type: str = "link"
    by: tuple = ()
    df_method: str | None = None
    averaged: tuple = ()
    regridded: bool = False
    response_name: str = "response"

    # Printed as emmeans prints the object: its table and notes (the arrays are for code).
    def __str__(self) -> str:
        return str(self.table)

    __repr__ = __str__

    def _repr_html_(self) -> str | None:
        html = getattr(self.table, "_repr_html_", None)
        return html() if html is not None else None

    # ---- the by groups ----

    def _groups(self) -> list[np.ndarray]:
        """Row indices of the means in each ``by`` group (one group without ``by``)."""
        n = len(self.labels)
        if not self.by:
            return [np.arange(n)]
        keys = list(zip(*[self.table[b].tolist() for b in self.by]))
        order = list(dict.fromkeys(keys))
        return [np.array([i for i, k in enumerate(keys) if k == key]) for key in order]

    def _df_note(self) -> list[str]:
        if self.df_method is None:
            return []
        if self.regridded:
            return [f"Degrees-of-freedom method: inherited from {self.df_method} when re-gridding"]
        return [f"Degrees-of-freedom method: {self.df_method}"]

    def _averaged_note(self) -> list[str]:
        if not self.averaged:
            return []
        return ["Results are averaged over the levels of: " + ", ".join(self.averaged)]

    # ---- tests of contrasts ----

    def _tests(self, K: np.ndarray, names: list[str]) -> pd.DataFrame:
        L = K @ self.linfct
        zero = ~np.any(L != 0.0, axis=1)
        if zero.any():
            raise ValueError(
                f"the contrasts {[names[i] for i in np.flatnonzero(zero)][:5]} put no weight on "
                "the fixed effects (their means differ only by the formula's offset, or the "
                "coefficients are 0): a known constant has no standard error to test")
        estimate = L @ self.beta
        if self.offset is not None:
            estimate = estimate + K @ self.offset
        se = np.sqrt(np.einsum("ri,ij,rj->r", L, self.cov_beta, L))
        df = self._contrast_df(K, L)
        t = estimate / se
        # emmeans calls the ratio z when every df is infinite (asymptotic)
        ratio = "z.ratio" if np.all(np.isinf(df)) else "t.ratio"
        return pd.DataFrame({"contrast": names, "estimate": estimate, "SE": se, "df": df,
                             ratio: t, "p.value": 2.0 * stats.t.sf(np.abs(t), df)})

    def _contrast_df(self, K: np.ndarray, L: np.ndarray) -> np.ndarray:
        return _df(self.df_function, L)

    def _family(self, rows_of_group: Callable[[int], tuple[np.ndarray, list]], adjust: str,
                tukey: bool, type: str | None) -> pd.DataFrame:
        """Contrasts formed within each by group, adjusted within each group."""
        k = len(self.labels)
        blocks, names, members, sizes, group_of = [], [], [], [], []
        for g, idx in enumerate(self._groups()):
            C, cnames = rows_of_group(len(idx))
            K = np.zeros((C.shape[0], k))
            K[:, idx] = C
            blocks.append(K)
            names += [_contrast_name(c, [self.labels[i] for i in idx]) if n is None else n
                      for c, n in zip(C, cnames)]
            members.append(idx)
            sizes.append(len(idx))
            group_of += [g] * C.shape[0]
        K = np.vstack(blocks)
        out = self._tests(K, names)
        ratio_col = out.columns[4]
        group_of = np.array(group_of)
        method = adjust if tukey or adjust != "tukey" else "sidak"
        p = out["p.value"].to_numpy(dtype=float).copy()
        for g, size in enumerate(sizes):
            sel = group_of == g
            p[sel] = adjust_pvalues(p[sel], method, out[ratio_col].to_numpy()[sel],
                                    out["df"].to_numpy()[sel], size)
        out["p.value"] = p
        # the by columns after ``contrast``, as emmeans' summary has them
        for j, b in enumerate(self.by):
            values = self.table[b].to_numpy()[[m[0] for m in members]]
            out.insert(1 + j, b, np.repeat(values, np.bincount(group_of, minlength=len(sizes))))
        notes = self._averaged_note() + self._df_note()
        tests = int(np.bincount(group_of).max())
        family = sizes[0] if len(set(sizes)) == 1 else max(sizes)
        if method == "tukey" and family > 2:
            notes.append(f"P value adjustment: tukey method for comparing a family of {family} "
                         "estimates")
        elif method != "none" and tests > 1 and not (method == "tukey" and family <= 2):
            notes.append(f"P value adjustment: {method} method for {tests} tests")
        scale = _check_type(self.type if type is None else type)
        ratio = getattr(self.link, "ratio_column", None)
        link_name = getattr(self.link, "name", "identity")
        if scale == "response" and ratio is None and link_name != "identity" \
                and not self.regridded:
            notes.insert(len(self._averaged_note()),
                         f"Note: contrasts are still on the {link_name} scale")
        if scale == "response" and ratio is not None and not self.regridded:
            # exp of a difference of log odds (logs): the ratio of odds (means)
            estimate = np.exp(out["estimate"].to_numpy())
            out["contrast"] = [n.replace(" - ", " / ", 1) for n in out["contrast"]]
            out = out.rename(columns={"estimate": ratio})
            out[ratio] = estimate
            out["SE"] = estimate * out["SE"].to_numpy()
            out.insert(out.columns.get_loc("df") + 1, "null", 1.0)
            notes.append(f"Tests are performed on the {self.link.name.replace('logit', 'log odds')}"
                         " ratio scale" if self.link.name == "logit" else
                         f"Tests are performed on the {self.link.name} scale")
        return _table(out.reset_index(drop=True), notes, self.by)

    def pairs(self, adjust: str = "tukey", type: str | None = None,
              reverse: bool = False) -> pd.DataFrame:
        """Compute all pairwise differences ``m_i - m_j``, ``i < j`` (emmeans ``pairs``).

        With ``by``, the differences are formed within each by group and the p-values
        adjusted within each group (a family of the group's means, as emmeans does).

        Parameters
        ----------
        adjust : {"tukey", "holm", "bonferroni", "sidak", "none"}, default="tukey"
            The adjustment of the p-values for multiple comparisons.
        type : {"link", "response"}, optional
            Default the means' own scale. ``"response"`` with a logit or log link: the
            differences back-transformed to ratios ``m_i / m_j`` (``odds.ratio`` or
            ``ratio``, ``SE = ratio * SE`` by the delta method, ``null`` 1), tested on the
            link scale (emmeans: "Tests are performed on the log odds ratio scale"); a link
            whose differences are no ratio keeps them on the link scale. After
            :meth:`regrid`, differences of the response-scale means.
        reverse : bool, default=False
            ``m_j - m_i`` in emmeans' ``revpairwise`` order instead.

        Returns
        -------
        EmmeansTable
            Columns ``contrast``, the ``by`` columns, ``estimate``, ``SE``, ``df``,
            ``t.ratio`` (``z.ratio`` with infinite df), ``p.value`` (adjusted by
            ``adjust``).

        See Also
        --------
        EMMeans.contrast : Other contrasts of the means.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> fit.emmeans("Sex").pairs()[["contrast", "estimate"]].round(3).frame()
                contrast  estimate
        0  Female - Male    -2.321
        """
        return self.contrast("revpairwise" if reverse else "pairwise", adjust=adjust, type=type)

    def contrast(self, coefficients: Any, adjust: str | None = None,
                 type: str | None = None) -> pd.DataFrame:
        """Compute contrasts of the means (emmeans ``contrast(emm, method)``).

        Parameters
        ----------
        coefficients : str, mapping of name -> sequence, or array-like of shape (r, means)
            A family by name: ``"pairwise"`` (``m_i - m_j``, ``i < j``), ``"revpairwise"``
            (``m_j - m_i``), ``"consec"`` (``m_{i+1} - m_i``), ``"trt.vs.ctrl"`` (each
            ``m_i - m_1``); or coefficients over the means of a by group in the table's
            order (a matrix's rows are named ``c1``, ``c2``, ...), applied in each group.
        adjust : str, optional
            As in :meth:`pairs`. Default emmeans' for the family: ``"tukey"`` for
            pairwise families, ``"dunnettx"`` for ``"trt.vs.ctrl"`` (as emmeans),
            ``"holm"`` for ``"consec"`` (emmeans uses its multivariate-t ``"mvt"`` there,
            which this package does not compute: pass ``adjust`` to choose), ``"none"`` for
            coefficients.
            ``"tukey"`` is for pairwise differences only, so other contrasts get
            ``"sidak"`` (as emmeans does).
        type : {"link", "response"}, optional
            As in :meth:`pairs`.

        Returns
        -------
        EmmeansTable
            Columns as :meth:`pairs`, a row per contrast (and by group).

        See Also
        --------
        EMMeans.pairs : All pairwise differences.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> emm = fit.emmeans("Sex")
        >>> emm.contrast({"boys minus girls": [-1, 1]})[["contrast", "estimate"]].round(3).frame()
                   contrast  estimate
        0  boys minus girls     2.321
        """
        if isinstance(coefficients, str):
            if coefficients not in CONTRAST_METHODS:
                raise ValueError(f"contrast method must be one of {list(CONTRAST_METHODS)} or "
                                 f"coefficients, got {coefficients!r}")
            default = {"pairwise": "tukey", "revpairwise": "tukey",
                       "trt.vs.ctrl": "dunnettx"}.get(coefficients, "holm")
            adjust = default if adjust is None else adjust
            return self._family(lambda n: (_family_matrix(coefficients, n), [None] * _family_size(
                coefficients, n)), adjust, coefficients in ("pairwise", "revpairwise"), type)
        if isinstance(coefficients, Mapping):
            names = [str(n) for n in coefficients]
            K = np.array([np.asarray(v, dtype=float) for v in coefficients.values()])
        else:
            K = np.atleast_2d(np.asarray(coefficients, dtype=float))
            names = [f"c{i + 1}" for i in range(K.shape[0])]
        sizes = {len(g) for g in self._groups()}
        if K.ndim != 2 or {K.shape[1]} != sizes:
            raise ValueError(f"each contrast needs {sorted(sizes)[0]} coefficients (one per mean"
                             f"{' of a by group' if self.by else ''}), got {K.shape[-1]}")
        return self._family(lambda n: (K, names), "none" if adjust is None else adjust, False,
                            type)

    def regrid(self) -> "EMMeans":
        """Re-grid the means to the response scale (emmeans' ``regrid``).

        The means become ``mu = linkinv(eta)`` with covariance ``D (L V L') D``,
        ``D = diag(dmu/deta)`` (delta method); contrasts of the result (``pairs``) are
        differences of response-scale means, and intervals are ``mu -+ q SE`` (no longer
        back-transformed). The df of a contrast are the smallest of the df of the means it
        involves (emmeans: "inherited ... when re-gridding").

        Returns
        -------
        EMMeans
            The means on the response scale (``type="response"``, ``regridded``).

        See Also
        --------
        EMMeans.pairs : Differences of the re-gridded means.

        Examples
        --------
        >>> from mixedlm_sklearn import glmer
        >>> from mixedlm_sklearn.datasets import load_cbpp
        >>> fit = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp())
        >>> rg = fit.emmeans("period").regrid()
        >>> rg.pairs()["estimate"].round(4).tolist()[:2]
        [0.1142, 0.1241]
        """
        if self.regridded:
            return self
        link = self.link
        eta = self.linfct @ self.beta + (0.0 if self.offset is None else self.offset)
        if link is None or link.name == "identity":
            mu, d1 = eta, np.ones_like(eta)
        else:
            mu, d1, _ = link.derivatives(eta)
        V = self.linfct @ self.cov_beta @ self.linfct.T * np.outer(d1, d1)
        df_rows = _df(self.df_function, self.linfct)
        table = self.table.frame() if isinstance(self.table, ResultTable) else self.table.copy()
        column = "emmean" if "emmean" in table.columns else table.columns[len(self.table.columns) - 5]
        n_vars = list(table.columns).index(column)
        frame = table.iloc[:, :n_vars].copy()
        name = "emmean" if link is None or link.name == "identity" else self.response_name
        se = np.sqrt(np.diag(V))
        q = stats.t.ppf(0.5 + self.level / 2.0, df_rows)
        frame[name] = mu
        frame["SE"] = se
        frame["df"] = df_rows
        lower, upper = _ci_names(df_rows)
        frame[lower] = mu - q * se
        frame[upper] = mu + q * se
        new = dataclasses.replace(
            self, linfct=np.eye(len(mu)), beta=np.asarray(mu, dtype=float), cov_beta=V,
            df_function=None if self.df_function is None else _min_df(df_rows), offset=None,
            type="response", regridded=True)
        notes = new._averaged_note() + new._df_note() + [f"Confidence level used: {self.level:g}"]
        return dataclasses.replace(new, table=_table(frame, notes, self.by))


class _Transform:
    """The response transformation of a linear model's formula as a link (emmeans'
    ``tran``): ``log(y)`` or ``sqrt(y)``; means on the response scale are its inverse."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ratio_column = "ratio" if name == "log" else None

    def inverse(self, eta: Any) -> np.ndarray:
        eta = np.asarray(eta, dtype=float)
        return np.exp(eta) if self.name == "log" else eta * eta

    def derivatives(self, eta: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        eta = np.asarray(eta, dtype=float)
        if self.name == "log":
            mu = np.exp(eta)
            return mu, mu, mu
        return eta * eta, 2.0 * eta, np.full_like(eta, 2.0)


_TRANSFORM = re.compile(r"^\s*(?:np\.|numpy\.)?(log|sqrt)\((.+)\)\s*$")


def response_transform(formula: str) -> _Transform | None:
    """The ``log`` or ``sqrt`` wrapped around a formula's response, if any.

    Examples
    --------
    >>> response_transform("log(yield) ~ N + (1 | Block)").name
    'log'
    >>> response_transform("yield ~ N + (1 | Block)") is None
    True
    """
    lhs = formula.split("~", 1)[0] if "~" in formula else ""
    match = _TRANSFORM.match(lhs)
    return None if match is None else _Transform(match.group(1))


def _min_df(df_rows: np.ndarray) -> DfFunction:
    """df of contrasts of re-gridded means: the smallest df among the means involved."""
    def df(L: np.ndarray) -> np.ndarray:
        L = np.atleast_2d(L)
        masked = np.where(L != 0.0, df_rows[None, :], np.inf)
        return masked.min(axis=1)
    return df


def _ci_names(df: np.ndarray) -> tuple[str, str]:
    return ("asymp.LCL", "asymp.UCL") if np.all(np.isinf(df)) else ("lower.CL", "upper.CL")


def _family_size(method: str, n: int) -> int:
    return {"pairwise": n * (n - 1) // 2, "revpairwise": n * (n - 1) // 2}.get(method, n - 1)


def _family_matrix(method: str, n: int) -> np.ndarray:
    """Coefficients of a named contrast family over ``n`` means (emmeans' ``*.emmc``)."""
    rows = []
    if method == "pairwise":
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    elif method == "revpairwise":
        pairs = [(j, i) for j in range(1, n) for i in range(j)]
    elif method == "consec":
        pairs = [(i + 1, i) for i in range(n - 1)]
    else:  # trt.vs.ctrl: each level against the first
        pairs = [(i, 0) for i in range(1, n)]
    for i, j in pairs:
        row = np.zeros(n)
        row[i], row[j] = 1.0, -1.0
        rows.append(row)
    return np.array(rows).reshape(-1, n)


def _contrast_name(row: np.ndarray, labels: list[str]) -> str:
    plus = labels[int(np.flatnonzero(row == 1.0)[0])]
    minus = labels[int(np.flatnonzero(row == -1.0)[0])]
    return f"{plus} - {minus}"


def _check_type(type: str) -> str:
    if type not in ("link", "response"):
        raise ValueError(f"type must be 'link' or 'response', got {type!r}")
    return type


def on_response_scale(table: pd.DataFrame, link: Any, column: str) -> pd.DataFrame:
    """A table of means on the link scale back-transformed (emmeans' ``type = "response"``):
    the mean ``linkinv(emmean)`` (column ``column``), ``SE = |dmu/deta| SE`` (delta method),
    the interval the link-scale interval back-transformed (emmeans: "Intervals are
    back-transformed from the logit scale"); the df unchanged.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedlm_sklearn._family import make_family
    >>> t = pd.DataFrame({"g": ["a"], "emmean": [0.0], "SE": [0.5], "df": [float("inf")],
    ...                   "asymp.LCL": [-0.98], "asymp.UCL": [0.98]})
    >>> on_response_scale(t, make_family("binomial").link, "prob").round(4)
       g  prob     SE   df  asymp.LCL  asymp.UCL
    0  a   0.5  0.125  inf     0.2729     0.7271
    """
    out = table.copy()
    mu, d1, _ = link.derivatives(table["emmean"].to_numpy(dtype=float))
    position = list(out.columns).index("emmean")
    out = out.drop(columns="emmean")
    out.insert(position, column, mu)
    out["SE"] = np.abs(d1) * table["SE"].to_numpy(dtype=float)
    for bound in out.columns[-2:]:
        out[bound] = link.inverse(table[bound].to_numpy(dtype=float))
    return out


def _df(df_function: DfFunction | None, L: np.ndarray) -> np.ndarray:
    if df_function is None:
        return np.full(L.shape[0], np.inf)
    return np.asarray(df_function(L), dtype=float).reshape(-1)


def marginal_means(grid: ReferenceGrid, specs: str | Sequence[str], beta: Any, cov_beta: Any,
                   df: DfFunction | None = None, level: float = 0.95,
                   by: str | Sequence[str] | None = None,
                   df_method: str | None = None) -> EMMeans:
    """Estimated marginal means of ``specs`` over a reference grid.

    Parameters
    ----------
    grid : ReferenceGrid
        From :func:`reference_grid`.
    specs : str or sequence of str
        The factor(s) whose levels get a mean; the first varies fastest in the table.
    beta : array-like of shape (p,)
    cov_beta : array-like of shape (p, p)
        For emmeans' default on lmer fits the Kenward-Roger adjusted covariance
        (``KenwardRoger.cov_beta_adj``), else ``cov_fe_``.
    df : callable, optional
        Contrast rows -> df of each (``KenwardRoger.row_ddf``, or Satterthwaite's
        ``lambda L: satterthwaite_df(est, L)``); None for asymptotic (``inf``) df.
    level : float, default 0.95
        Confidence level of the intervals.
    by : str or sequence of str, optional
        Variables within whose levels the means of ``specs`` are formed (a mean per
        combination of ``specs`` and ``by``, ``specs`` varying fastest); contrasts are
        then formed within each by group.
    df_method : str, optional
        The df method's name for the notes (``"kenward-roger"``, ``"satterthwaite"``).

    Returns
    -------
    EMMeans

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> X = np.array([[1.0, 0.0], [1.0, 1.0]])
    >>> rg = ReferenceGrid(pd.DataFrame({"g": ["a", "b"]}), X, ["g"])
    >>> emm = marginal_means(rg, "g", beta=[10.0, 2.0], cov_beta=np.diag([1.0, 0.5]))
    >>> emm.table[["g", "emmean", "SE", "df", "asymp.LCL"]].round(4).frame()
       g  emmean      SE   df  asymp.LCL
    0  a    10.0  1.0000  inf     8.0400
    1  b    12.0  1.2247  inf     9.5995
    >>> emm.pairs(adjust="none")[["contrast", "estimate"]].frame()
      contrast  estimate
    0    a - b      -2.0
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
    by = [] if by is None else [by] if isinstance(by, str) else list(by)
    factors = list(specs)
    specs = factors + [b for b in by if b not in factors]
    unknown = [s for s in specs if s not in grid.grid.columns]
    if unknown:
        raise ValueError(f"specs {unknown} are not variables of the reference grid "
                         f"{list(grid.grid.columns)}")
    beta = np.asarray(beta, dtype=float).reshape(-1)
    V = np.asarray(cov_beta, dtype=float)
    # the levels of each spec in grid order, then every combination, the first fastest
    levels = {s: list(dict.fromkeys(grid.grid[s].tolist())) for s in specs}
    cells = [tuple(reversed(c)) for c in itertools.product(*[levels[s] for s in reversed(specs)])]
    rows, offsets = [], []
    keys = list(zip(*[grid.grid[s].tolist() for s in specs]))
    for cell in cells:
        match = np.array([k == cell for k in keys])
        rows.append(grid.X[match].mean(axis=0))  # equal weights over the other factors
        if grid.offset is not None:
            offsets.append(grid.offset[match].mean())
    L = np.array(rows)
    offset = np.array(offsets) if grid.offset is not None else None
    estimate = L @ beta if offset is None else L @ beta + offset
    se = np.sqrt(np.einsum("ri,ij,rj->r", L, V, L))
    dfs = _df(df, L)
    q = stats.t.ppf(0.5 + level / 2.0, dfs)
    table = pd.DataFrame({s: [c[i] for c in cells] for i, s in enumerate(specs)})
    table["emmean"] = estimate
    table["SE"] = se
    table["df"] = dfs
    lower, upper = _ci_names(dfs)
    table[lower] = estimate - q * se
    table[upper] = estimate + q * se
    averaged = tuple(f for f in grid.factors if f not in specs
                     and not pd.api.types.is_numeric_dtype(grid.grid[f]))
    emm = EMMeans(table, L, _labels(table, factors), beta, V, df, level, offset,
                  by=tuple(specs[len(factors):]), df_method=df_method, averaged=averaged)
    return dataclasses.replace(emm, table=_table(table, _means_notes(emm), emm.by))


def _means_notes(emm: EMMeans, tran: str | None = None) -> list[str]:
    """emmeans' notes under a table of means (``tran``: the link's name when the means are
    back-transformed, the scale's name when they are on a transformed scale)."""
    notes = emm._averaged_note() + emm._df_note()
    link = getattr(emm.link, "name", "identity")
    if emm.type == "link" and link != "identity":
        notes.append(f"Results are given on the {link} (not the response) scale.")
    notes.append(f"Confidence level used: {emm.level:g}")
    if emm.type == "response" and link != "identity" and not emm.regridded:
        notes.append(f"Intervals are back-transformed from the {link} scale")
    return notes


def _is_number(value: Any) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _labels(table: pd.DataFrame, specs: list[str]) -> list[str]:
    """The means' names in contrasts, as emmeans' ``contrast`` forms them: a variable whose
    levels all read as numbers gets its name in front (``YEAR95``), the levels of several
    variables are joined by a space, and a name containing ``-``, ``+``, ``/`` or ``*`` is
    put in parentheses."""
    parts = []
    for s in specs:
        values = [str(v) for v in table[s]]
        parts.append([s + v for v in values] if all(_is_number(v) for v in values) else values)
    labels = [" ".join(p) for p in zip(*parts)]
    return [f"({x})" if any(c in x for c in "-+/*") else x for x in labels]


def emmeans(est: Any, specs: str | Sequence[str], by: str | Sequence[str] | None = None,
            at: Mapping[str, Any] | None = None, ddf: str | None = None, level: float = 0.95,
            type: str = "link", adjust: str | None = None) -> "EMMeans | EMMeansContrasts":
    """Estimated marginal means of a formula fit (emmeans' ``emmeans(fit, specs)``).

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        Fitted by :func:`~mixedlm_sklearn.lmer` or :func:`~mixedlm_sklearn.glmer` (the
        means need the formula's terms).
    specs : str or sequence of str
        The factor(s) whose levels get a mean; with several, every combination (the first
        varies fastest). Or an emmeans formula (read, never evaluated): ``"~ N"``,
        ``"~ N * V"`` (every combination), ``"~ N | V"`` (the means of ``N`` within each
        level of ``V``), ``"pairwise ~ N | V"`` (and ``revpairwise``, ``consec``,
        ``trt.vs.ctrl``: the means and that family of contrasts, an
        :class:`EMMeansContrasts`).
    by : str or sequence of str, optional
        Means of ``specs`` within each level (combination) of these variables, as
        ``"~ specs | by"``; contrasts and their adjustments are per by group.
    at : dict, optional
        Variable -> value(s): covariates at these values instead of their mean over the
        fitted rows, factors restricted to these levels (emmeans' ``at``).
    ddf : {"kenward-roger", "satterthwaite", "asymptotic"}, optional
        emmeans' ``lmer.df``: the Kenward-Roger adjusted covariance and df (emmeans'
        default for lmer fits; REML fits only), Satterthwaite's df with ``cov_fe_``, or
        normal quantiles. Default: Kenward-Roger where the model's dispersion is
        estimated, else (a binomial or Poisson GLMM) asymptotic, the only choice there.
    level : float, default=0.95
        Confidence level of the intervals.
    type : {"link", "response"}, default="link"
        The scale of the means: the linear predictor's, or the mean response's
        (``prob`` for a binomial, ``rate`` for a Poisson model: the inverse link of the
        mean, its SE by the delta method, the interval back-transformed); also the
        default scale of :meth:`EMMeans.pairs` (ratios for a logit or log link).
    adjust : str, optional
        With a contrast family in ``specs``: the p-value adjustment of its contrasts
        (default the family's, see :meth:`EMMeans.contrast`).

    Returns
    -------
    EMMeans or EMMeansContrasts
        ``.table`` (the ``specs`` columns, the ``by`` columns, ``emmean``, ``SE``, ``df``,
        ``lower.CL``, ``upper.CL``), ``.pairs(adjust="tukey")``,
        ``.contrast(method_or_coefficients)`` and ``.regrid()``; with a contrast family in
        ``specs``, ``.emmeans`` and ``.contrasts`` (R's ``$emmeans`` and ``$contrasts``).

    Raises
    ------
    ValueError
        For a fit that dropped fixed effects as aliased (``y ~ a:b``, as lme4 drops them),
        for means that depend on the dropped ones (emmeans' ``nonEst``); the others are
        computed from the kept fixed effects.

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.emmeans : The same, as a method.
    EMMeans.pairs : Pairwise differences with Tukey's adjustment.

    Notes
    -----
    emmeans uses Kenward-Roger only up to 3,000 rows (its ``pbkrtest.limit``; above, it
    switches to Satterthwaite, and above ``lmerTest.limit`` to asymptotic df) because
    pbkrtest works with ``n x n`` matrices. Ours works with cross-products, at a cost
    independent of the number of rows (it grows with the number of random effects; beyond 5,000
    fixed and random effects together it is refused), so there is no row
    limit: on more than 3,000 rows pass ``ddf="satterthwaite"`` to reproduce emmeans'
    default numbers.

    References
    ----------
    .. [1] Searle, S. R., Speed, F. M. and Milliken, G. A. (1980). Population marginal
       means in the linear model: an alternative to least squares means. The American
       Statistician 34(4), 216-221.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> df = load_orthodont()
    >>> df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])  # R's order
    >>> est = lmer("distance ~ age * Sex + (age | Subject)", df)
    >>> emm = est.emmeans("Sex")
    >>> print(emm.table)  # as emmeans prints it
     Sex    emmean    SE df lower.CL upper.CL
     Male     25.0 0.486 25     24.0     26.0
     Female   22.6 0.586 25     21.4     23.9
    <BLANKLINE>
    Degrees-of-freedom method: kenward-roger
    Confidence level used: 0.95
    >>> emm.table.round(3).frame()  # a DataFrame for code
          Sex  emmean     SE    df  lower.CL  upper.CL
    0    Male  24.969  0.486  25.0    23.968    25.970
    1  Female  22.648  0.586  25.0    21.441    23.855
    >>> emm.pairs().round(4).frame()  # emmeans: 2.321, 0.7614, 25, 3.048, 0.0054
            contrast  estimate      SE    df  t.ratio  p.value
    0  Male - Female     2.321  0.7614  25.0   3.0483   0.0054

    Means within the levels of another variable, and contrasts within each (R's
    ``emmeans(m, pairwise ~ Sex | age, at = list(age = c(8, 14)))``):

    >>> res = emmeans(est, "pairwise ~ Sex | age", at={"age": [8, 14]})
    >>> print(res.contrasts)
    age =  8:
     contrast      estimate    SE df t.ratio p.value
     Male - Female     1.41 0.825 25   1.705  0.1006
    <BLANKLINE>
    age = 14:
     contrast      estimate    SE df t.ratio p.value
     Male - Female     3.24 0.898 25   3.604  0.0014
    <BLANKLINE>
    Degrees-of-freedom method: kenward-roger
    """
    frame = getattr(est, "model_frame_", None)
    model = fitted_model(est)
    if frame is None:
        raise ValueError("emmeans needs a formula fit (mixedlm_sklearn.lmer): the reference "
                         "grid is made of the levels of the model's factors")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    ddf = _emmeans_df(model, ddf)
    type = _check_type(type)
    spec = parse_emm_spec(specs, by)
    grid = reference_grid(frame, at)
    unknown = [v for v in spec.factors + spec.by if v not in grid.grid.columns]
    if unknown:
        raise ValueError(f"the emmeans spec names {unknown}, which are not variables of the "
                         f"model {list(grid.grid.columns)}")
    emm = _means(est, model, frame, grid, spec, ddf, level, type)
    if spec.contrast is None:
        if adjust is not None:
            raise ValueError("adjust applies to contrasts: give a contrast family in specs "
                             "('pairwise ~ ...') or call .pairs(adjust=...)")
        return emm
    return EMMeansContrasts(emm, emm.contrast(spec.contrast, adjust=adjust))


@dataclass(frozen=True)
class EMMeansContrasts:  # numpydoc ignore=PR01
    """Means and a family of their contrasts, as R's ``emmeans(m, pairwise ~ N | V)``.

    R returns a list of ``$emmeans`` and ``$contrasts``; so does this, as attributes.

    Attributes
    ----------
    emmeans : EMMeans
        The means.
    contrasts : EmmeansTable
        The contrasts, adjusted within each by group.

    See Also
    --------
    mixedlm_sklearn.inference.emmeans.emmeans : Make one (a spec with ``pairwise`` etc.).

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
    >>> res = emmeans(fit, "pairwise ~ Sex")
    >>> res.contrasts["estimate"].round(3).tolist()
    [-2.321]
    """

    emmeans: EMMeans
    contrasts: pd.DataFrame

    def __str__(self) -> str:
        return f"$emmeans\n{self.emmeans.table}\n\n$contrasts\n{self.contrasts}\n"

    __repr__ = __str__

    def _repr_html_(self) -> str | None:
        parts = [getattr(t, "_repr_html_", None) for t in (self.emmeans.table, self.contrasts)]
        if any(p is None for p in parts):
            return None
        return f"<p>$emmeans</p>{parts[0]()}<p>$contrasts</p>{parts[1]()}"


def _means(est: Any, model: Any, frame: Any, grid: ReferenceGrid, spec: EmmSpec, ddf: str,
           level: float, type: str) -> EMMeans:
    specs, by = list(spec.factors), list(spec.by)
    df_method = None if ddf == "asymptotic" else ddf
    sol = model.solution
    if ddf == "kenward-roger":
        kr = kenward_roger_model(est)
        cov, df = kr.cov_beta_adj, kr.row_ddf
    else:
        cov = sol.cov_beta()
        df = varpar_model(est).contrast_df if ddf == "satterthwaite" else None
    if model.rank is None:
        return _on_scale(marginal_means(grid, specs, sol.beta, cov, df, level, by, df_method),
                         model, type, frame)
    # Fixed effects dropped as aliased (lme4 refits without them): each mean is computed
    # on the kept ones, which is right for the estimable means, and the others refused.
    kept = model.rank.kept
    full_cov = np.zeros((kept.size, kept.size))
    full_cov[np.ix_(kept, kept)] = cov
    kept_df = None if df is None else (lambda L: df(np.atleast_2d(L)[:, kept]))
    emm = marginal_means(grid, specs, model.rank.expand(sol.beta, 0.0), full_cov, kept_df,
                         level, by, df_method)
    bad = ~_estimable(emm.linfct, frame, kept)
    if bad.any():
        raise ValueError(f"the marginal means {[emm.labels[i] for i in np.flatnonzero(bad)][:5]} "
                         "are not estimable: fixed effects "
                         f"{model.rank.dropped_names} were dropped as aliased and these means "
                         "depend on them (emmeans reports them as nonEst)")
    return _on_scale(emm, model, type, frame)


def _on_scale(emm: EMMeans, model: Any, type: str, frame: Any = None) -> EMMeans:
    link, name = model.family.link, model.family.response_column
    if link.name == "identity" and frame is not None:
        # a linear model of log(y) or sqrt(y): emmeans back-transforms with that ``tran``
        link = response_transform(frame.formula) or link
    if type == "response" and link.name == "identity":
        lhs = frame.formula.split("~", 1)[0] if frame is not None else ""
        if "(" in lhs:
            raise ValueError(f"type='response' back-transforms log(y) and sqrt(y) responses; "
                             f"the response {lhs.strip()!r} is another transformation")
        type = "link"  # nothing to back-transform (emmeans leaves such means as they are)
    table = emm.table.frame() if type == "link" else on_response_scale(
        emm.table.frame(), link, name)
    emm = dataclasses.replace(emm, link=link, type=type, response_name=name)
    return dataclasses.replace(emm, table=_table(table, _means_notes(emm), emm.by))


def _estimable(L: np.ndarray, frame: Any, kept: np.ndarray) -> np.ndarray:
    """Which rows ``l`` of ``L`` (over all fixed effects) are estimable in a fit that
    dropped the columns ``~kept`` as aliased.

    On the fitted rows each dropped column is a combination of kept ones, ``X_d = X_k C``;
    ``l'beta`` is estimable when ``l`` is in the row space of ``X``, i.e. ``l_d = C'l_k``,
    and then it equals ``l_k'beta_k`` whatever the dropped coefficients.
    """
    X = frame.fixed_design(frame.rows).to_numpy(dtype=float)
    C = np.linalg.lstsq(X[:, kept], X[:, ~kept], rcond=None)[0]
    gap = np.abs(L[:, ~kept] - L[:, kept] @ C).max(axis=1)
    size = np.abs(L).max(axis=1) * (1.0 + np.abs(C).sum(axis=0).max())
    return gap <= np.sqrt(np.finfo(float).eps) * np.maximum(size, 1.0)


def _consec(n: int) -> np.ndarray:
    """Consecutive differences of ``n`` levels, ``(n - 1) x n``."""
    return np.eye(n)[1:] - np.eye(n)[:-1]


def joint_tests(est: Any, by: str | Sequence[str] | None = None,
                ddf: str | None = None) -> pd.DataFrame:
    """F tests of each model term from the marginal means (emmeans' ``joint_tests``).

    For each term of the fixed effects (with ``by``, each term not involving ``by``, within
    each by group) the means of the term's variables over the reference grid (the other
    factors averaged over, covariates at their mean -+ 1, emmeans' ``cov.reduce =
    meanint``) are contrasted with the Kronecker product of each variable's consecutive
    differences (the term's interaction contrasts); the rows are reduced to a basis of
    their span, ``L``, and ``F = (L b)' (L V L')^-1 (L b) / rank(L)`` on ``df1 = rank(L)``
    and ``df2`` the model's df for ``L``: Kenward-Roger (``V`` the adjusted covariance,
    pbkrtest's ``Lb_ddf``; emmeans' default for lmer fits), Satterthwaite (lmerTest's
    ``contestMD`` df) or infinite (a GLMM: ``F = chi2 / df1``).

    Parameters
    ----------
    est : fitted formula model
        From :func:`~mixedlm_sklearn.lmer` or :func:`~mixedlm_sklearn.glmer`.
    by : str or sequence of str, optional
        Test the other terms within each level of these variables.
    ddf : {"kenward-roger", "satterthwaite", "asymptotic"}, optional
        As in :func:`emmeans`.

    Returns
    -------
    EmmeansTable
        Columns ``model term``, the ``by`` columns, ``df1``, ``df2``, ``F.ratio``,
        ``p.value``; printed as emmeans prints it (``F.ratio`` to 3 decimals).

    Raises
    ------
    ValueError
        For a fit that dropped aliased fixed effects (not supported), or a by variable
        that is not a variable of the model.

    See Also
    --------
    mixedlm_sklearn.anova : The lmerTest type III table (the fit's anova), which equals this
        one for factor-only models with a balanced grid.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> df = load_orthodont()
    >>> df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])
    >>> fit = lmer("distance ~ age * Sex + (age | Subject)", df)
    >>> print(joint_tests(fit))  # emmeans: 87.999, 9.292, 5.119
     model term df1 df2 F.ratio p.value
     age          1  25  87.999  <.0001
     Sex          1  25   9.292  0.0054
     age:Sex      1  25   5.119  0.0326
    <BLANKLINE>
    """
    from .anova import satterthwaite_f_test

    frame = getattr(est, "model_frame_", None)
    model = fitted_model(est)
    if frame is None:
        raise ValueError("joint_tests needs a formula fit (mixedlm_sklearn.lmer or glmer)")
    if model.rank is not None:
        raise ValueError("joint_tests is not available for a fit that dropped aliased fixed "
                         f"effects ({model.rank.dropped_names}); refit without them")
    ddf = _emmeans_df(model, ddf)
    by = [] if by is None else [by] if isinstance(by, str) else list(by)
    base = reference_grid(frame)
    unknown = [b for b in by if b not in base.grid.columns]
    if unknown:
        raise ValueError(f"by names {unknown}, which are not variables of the model "
                         f"{list(base.grid.columns)}")
    # covariates at mean -+ 1 (emmeans' meanint), so each is a two-level grid variable
    covariates = [v for v in base.grid.columns if v not in base.factors]
    at = {v: [float(base.grid[v].iloc[0]) - 1.0, float(base.grid[v].iloc[0]) + 1.0]
          for v in covariates}
    grid = reference_grid(frame, at)
    sol = model.solution
    if ddf == "kenward-roger":
        kr = kenward_roger_model(est)
        V = kr.cov_beta_adj
    else:
        V = sol.cov_beta()
        varpar = varpar_model(est) if ddf == "satterthwaite" else None
    beta = np.asarray(sol.beta, dtype=float)
    factors_of = frame.fixed_factors()
    rows: list[dict] = []
    for term in frame.fixed_terms():
        variables: list[str] = []
        for factor in term.factors:
            for v in factors_of[factor].variables:
                if v not in variables and v in grid.grid.columns:
                    variables.append(v)
        if not variables or any(b in variables for b in by):
            continue
        name = ":".join(variables)
        if any(r["model term"] == name for r in rows):
            continue
        emm = marginal_means(grid, variables, beta, V, None, 0.95, by)
        sizes = [len(dict.fromkeys(grid.grid[v].tolist())) for v in variables]
        K = np.ones((1, 1))
        for n in sizes:  # the first variable varies fastest: kron(D_last, ..., D_first)
            K = np.kron(_consec(n), K)
        for idx in emm._groups():
            L = K @ emm.linfct[idx]
            U, s, Vt = np.linalg.svd(L, full_matrices=False)
            rank = int(np.sum(s > max(s[0], 1.0) * 1e-8)) if s.size else 0
            row = {"model term": name}
            for b in by:
                row[b] = emm.table[b].iloc[idx[0]]
            if rank == 0:
                continue
            Lr = Vt[:rank]
            Lb = Lr @ beta
            F = float(Lb @ np.linalg.solve(Lr @ V @ Lr.T, Lb)) / rank
            if ddf == "kenward-roger":
                df2 = kr.ddf(Lr)
            elif ddf == "satterthwaite":
                df2 = float(satterthwaite_f_test(Lr, beta, V, float(sol.scale),
                                                 varpar.contrast_df)["DenDF"])
            else:
                df2 = np.inf
            row.update({"df1": rank, "df2": df2, "F.ratio": F,
                        "p.value": float(stats.f.sf(F, rank, df2)) if np.isfinite(df2)
                        else float(stats.chi2.sf(F * rank, rank))})
            rows.append(row)
    out = pd.DataFrame(rows, columns=["model term", *by, "df1", "df2", "F.ratio", "p.value"])
    if by:  # emmeans lists the tests by group
        order = {key: i for i, key in enumerate(dict.fromkeys(
            zip(*[grid.grid[b].tolist() for b in by])))}
        keys = [order[k] for k in zip(*[out[b].tolist() for b in by])]
        out = out.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)
    table = _table(out, [], by)
    table.formats["df1"] = "int"
    return table


def _emmeans_df(model: Any, ddf: str | None) -> str:
    """emmeans' df method: the one asked for, else Kenward-Roger's (emmeans' default for
    lmer fits) where it can be computed, else Satterthwaite's (a fit by ML, or beyond
    Kenward-Roger's size limits: emmeans itself falls back past ``pbkrtest.limit``)."""
    preference = ("kenward-roger", "satterthwaite", "asymptotic")
    chosen = choose_df(model, ddf, preference)
    if ddf is None and chosen == "kenward-roger" and kenward_roger_refusal(model) is not None:
        chosen = choose_df(model, None, preference[1:])
    return chosen
