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
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ._parameters import fitted_model
from ._protocol import choose_df
from .kenward_roger import kenward_roger_model
from .satterthwaite import varpar_model

__all__ = ["emmeans", "ReferenceGrid", "EMMeans", "reference_grid", "marginal_means",
           "adjust_pvalues"]

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
    method : {"tukey", "holm", "bonferroni", "sidak", "none"}
        ``"tukey"``: ``P(Q > sqrt(2)|t|)`` for the studentized range of ``n_means`` means on
        ``df`` df (for all pairwise differences of ``n_means`` means); ``"holm"`` and
        ``"bonferroni"`` as R's ``p.adjust``; ``"sidak"``: ``1 - (1 - p)^m``.
    t, df : array-like, optional
        t ratios and df (Tukey only).
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
    if method == "tukey":
        t = np.abs(np.asarray(t, dtype=float))
        df = np.broadcast_to(np.asarray(df, dtype=float), t.shape)
        if n_means < 2:
            return p
        return np.array([float(stats.studentized_range.sf(np.sqrt(2.0) * ti, n_means, di))
                         for ti, di in zip(t, df)])
    raise ValueError(f"adjust must be 'tukey', 'holm', 'bonferroni', 'sidak' or 'none', got {method!r}")


@dataclass(frozen=True)
class EMMeans:  # numpydoc ignore=PR01
    """Estimated marginal means, their pairwise differences and contrasts.

    Attributes
    ----------
    table : DataFrame
        The specs' factor columns, then ``emmean``, ``SE``, ``df``, ``lower.CL``, ``upper.CL``
        (``asymp.LCL``, ``asymp.UCL`` when the df are infinite, as emmeans names them).
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
        df = _df(self.df_function, L)
        t = estimate / se
        # emmeans calls the ratio z when every df is infinite (asymptotic)
        ratio = "z.ratio" if np.all(np.isinf(df)) else "t.ratio"
        return pd.DataFrame({"contrast": names, "estimate": estimate, "SE": se, "df": df,
                             ratio: t, "p.value": 2.0 * stats.t.sf(np.abs(t), df)})

    def pairs(self, adjust: str = "tukey", type: str | None = None) -> pd.DataFrame:
        """Compute all pairwise differences ``m_i - m_j``, ``i < j`` (emmeans ``pairs``).

        Parameters
        ----------
        adjust : {"tukey", "holm", "bonferroni", "sidak", "none"}, default="tukey"
            The adjustment of the p-values for multiple comparisons.
        type : {"link", "response"}, optional
            Default the means' own scale. ``"response"`` with a logit or log link: the
            differences back-transformed to ratios ``m_i / m_j`` (``odds.ratio`` or
            ``ratio``, ``SE = ratio * SE`` by the delta method, ``null`` 1), tested on the
            link scale (emmeans: "Tests are performed on the log odds ratio scale"); a link
            whose differences are no ratio keeps them on the link scale.

        Returns
        -------
        DataFrame
            Columns ``contrast``, ``estimate``, ``SE``, ``df``, ``t.ratio`` (``z.ratio`` with
            infinite df), ``p.value`` (adjusted by ``adjust``: ``"tukey"``, ``"holm"``, ``"bonferroni"``,
            ``"sidak"``, ``"none"``).

        See Also
        --------
        EMMeans.contrast : Other contrasts of the means.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> fit.emmeans("Sex").pairs()[["contrast", "estimate"]].round(3)
                contrast  estimate
        0  Female - Male    -2.321
        """
        k = len(self.labels)
        rows, names = [], []
        for i in range(k):
            for j in range(i + 1, k):
                row = np.zeros(k)
                row[i], row[j] = 1.0, -1.0
                rows.append(row)
                names.append(f"{self.labels[i]} - {self.labels[j]}")
        out = self._tests(np.array(rows).reshape(-1, k), names)
        out["p.value"] = adjust_pvalues(out["p.value"], adjust, out.iloc[:, 4], out["df"], k)
        scale = _check_type(self.type if type is None else type)
        ratio = getattr(self.link, "ratio_column", None)
        if scale == "response" and ratio is not None:
            # exp of a difference of log odds (logs): the ratio of odds (means)
            estimate = np.exp(out["estimate"].to_numpy())
            out = pd.DataFrame({
                "contrast": [n.replace(" - ", " / ", 1) for n in names], ratio: estimate,
                "SE": estimate * out["SE"].to_numpy(), "df": out["df"], "null": 1.0,
                out.columns[4]: out.iloc[:, 4], "p.value": out["p.value"]})
        return out

    def contrast(self, coefficients: Any, adjust: str = "none") -> pd.DataFrame:
        """Compute custom contrasts of the means (emmeans ``contrast(emm, list(...))``).

        Parameters
        ----------
        coefficients : mapping of name -> sequence, or array-like of shape (r, means)
            Coefficients of each contrast over the means in the table's order (a matrix's
            rows are named ``c1``, ``c2``, ...).
        adjust : str, default "none"
            As in :meth:`pairs`; ``"tukey"`` is for pairwise differences only, so other
            contrasts get ``"sidak"`` (as emmeans does).

        Returns
        -------
        DataFrame
            Columns as :meth:`pairs`, a row per contrast.

        See Also
        --------
        EMMeans.pairs : All pairwise differences.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> fit.emmeans("Sex").contrast({"boys minus girls": [-1, 1]})[["contrast", "estimate"]].round(3)
                   contrast  estimate
        0  boys minus girls     2.321
        """
        if isinstance(coefficients, Mapping):
            names = [str(n) for n in coefficients]
            K = np.array([np.asarray(v, dtype=float) for v in coefficients.values()])
        else:
            K = np.atleast_2d(np.asarray(coefficients, dtype=float))
            names = [f"c{i + 1}" for i in range(K.shape[0])]
        if K.shape[1] != len(self.labels):
            raise ValueError(f"each contrast needs {len(self.labels)} coefficients (one per mean), "
                             f"got {K.shape[1]}")
        out = self._tests(K, names)
        method = "sidak" if adjust == "tukey" else adjust
        out["p.value"] = adjust_pvalues(out["p.value"], method)
        return out


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
    >>> from mixedlm_sklearn._glmm import make_family
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
                   df: DfFunction | None = None, level: float = 0.95) -> EMMeans:
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

    Returns
    -------
    EMMeans

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> X = np.array([[1.0, 0.0], [1.0, 1.0]])
    >>> rg = ReferenceGrid(pd.DataFrame({"g": ["a", "b"]}), X, ["g"])
    >>> emm = marginal_means(rg, "g", beta=[10.0, 2.0], cov_beta=np.diag([1.0, 0.5]))
    >>> emm.table[["g", "emmean", "SE", "df", "asymp.LCL"]].round(4)
       g  emmean      SE   df  asymp.LCL
    0  a    10.0  1.0000  inf     8.0400
    1  b    12.0  1.2247  inf     9.5995
    >>> emm.pairs(adjust="none")[["contrast", "estimate"]]
      contrast  estimate
    0    a - b      -2.0
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
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
    lower, upper = ("asymp.LCL", "asymp.UCL") if np.all(np.isinf(dfs)) else ("lower.CL", "upper.CL")
    table[lower] = estimate - q * se
    table[upper] = estimate + q * se
    return EMMeans(table, L, _labels(table, specs), beta, V, df, level, offset)


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


def emmeans(est: Any, specs: str | Sequence[str], at: Mapping[str, Any] | None = None,
            ddf: str | None = None, level: float = 0.95, type: str = "link") -> EMMeans:
    """Estimated marginal means of a formula fit (emmeans' ``emmeans(fit, specs)``).

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        Fitted by :func:`~mixedlm_sklearn.lmer` or :func:`~mixedlm_sklearn.glmer` (the
        means need the formula's terms).
    specs : str or sequence of str
        The factor(s) whose levels get a mean; with several, every combination (the first
        varies fastest).
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

    Returns
    -------
    EMMeans
        ``.table`` (the ``specs`` columns, ``emmean``, ``SE``, ``df``, ``lower.CL``,
        ``upper.CL``), ``.pairs(adjust="tukey")`` and ``.contrast(coefficients)``.

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
    >>> emm.table.round(3)
          Sex  emmean     SE    df  lower.CL  upper.CL
    0    Male  24.969  0.486  25.0    23.968    25.970
    1  Female  22.648  0.586  25.0    21.441    23.855
    >>> emm.pairs().round(4)  # emmeans: 2.321, 0.7614, 25, 3.048, 0.0054
            contrast  estimate      SE    df  t.ratio  p.value
    0  Male - Female     2.321  0.7614  25.0   3.0483   0.0054
    """
    frame = getattr(est, "model_frame_", None)
    model = fitted_model(est)
    if frame is None:
        raise ValueError("emmeans needs a formula fit (mixedlm_sklearn.lmer): the reference "
                         "grid is made of the levels of the model's factors")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    ddf = choose_df(model, ddf, ("kenward-roger", "satterthwaite", "asymptotic"))
    type = _check_type(type)
    grid = reference_grid(frame, at)
    sol = model.solution
    if ddf == "kenward-roger":
        kr = kenward_roger_model(est)
        cov, df = kr.cov_beta_adj, kr.row_ddf
    else:
        cov = sol.cov_beta()
        df = varpar_model(est).contrast_df if ddf == "satterthwaite" else None
    if model.rank is None:
        return _on_scale(marginal_means(grid, specs, sol.beta, cov, df, level), model, type)
    # Fixed effects dropped as aliased (lme4 refits without them): each mean is computed
    # on the kept ones, which is right for the estimable means, and the others refused.
    kept = model.rank.kept
    full_cov = np.zeros((kept.size, kept.size))
    full_cov[np.ix_(kept, kept)] = cov
    kept_df = None if df is None else (lambda L: df(np.atleast_2d(L)[:, kept]))
    emm = marginal_means(grid, specs, model.rank.expand(sol.beta, 0.0), full_cov, kept_df,
                         level)
    bad = ~_estimable(emm.linfct, frame, kept)
    if bad.any():
        raise ValueError(f"the marginal means {[emm.labels[i] for i in np.flatnonzero(bad)][:5]} "
                         "are not estimable: fixed effects "
                         f"{model.rank.dropped_names} were dropped as aliased and these means "
                         "depend on them (emmeans reports them as nonEst)")
    return _on_scale(emm, model, type)


def _on_scale(emm: EMMeans, model: Any, type: str) -> EMMeans:
    link = model.family.link
    table = emm.table if type == "link" else on_response_scale(emm.table, link,
                                                               model.family.response_column)
    return dataclasses.replace(emm, table=table, link=link, type=type)


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
