"""lme4-style model formulas: ``lmer("Reaction ~ Days + (Days | Subject)", data)``.

The fixed-effects part and the left side of each random-effects term are handed to
`formulaic <https://matthewwardrop.github.io/formulaic/>`_ (an optional dependency:
``pip install formulaic``); the random-effects terms themselves (``( ... | ... )``,
``||``, nesting with ``/``) are parsed here, because formulaic gives ``|`` another
meaning. Supported syntax:

======================  ==============================================================
``y ~ x + (x | g)``      correlated random intercept and slope per level of ``g``
``(1 | a) + (1 | b)``    several terms: crossed or nested factors
``(x || g)``             intercept and slope independent (diagonal covariance)
``(0 + x | g)``          slope only (``- 1`` works too)
``(1 | a/b)``            nesting: ``(1 | a) + (1 | a:b)``; ``(1 | a:b)`` for the
                         interaction factor alone (labels ``"a1:b1"``)
``x:z``, ``x * z``,      fixed-effects interactions, categorical expansion and
``C(f)``, ``np.log(x)``  transformations, as formulaic evaluates them
======================  ==============================================================

Column names follow lme4: the intercept is ``"(Intercept)"`` and a treatment-contrast
column of factor ``Sex`` at level ``Female`` is ``"SexFemale"`` (formulaic's
``"Sex[T.Female]"``). The reference level is the first level: the first category of a
:class:`pandas.Categorical`, otherwise the smallest label, as in R.
"""

from __future__ import annotations

import inspect
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["RandomTerm", "ModelFrame", "parse_formula", "lmer"]

_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_QUOTES = {"'", '"', "`"}


def _import_formulaic():
    try:
        import formulaic
    except ImportError as err:  # pragma: no cover - formulaic is installed in the test env
        raise ImportError(
            "the formula interface needs the optional dependency formulaic: "
            "pip install formulaic (or pip install 'mixedlm-sklearn[formula]')"
        ) from err
    return formulaic


# ---- scanning ------------------------------------------------------------------------------


def _depths(text: str) -> list[int]:
    """Bracket depth before each character, ignoring brackets inside quotes or backticks.

    Raises ValueError for unbalanced or mismatched brackets and unclosed quotes, so every
    later step can rely on a well-formed string.
    """
    depths, stack, quote = [], [], None
    for pos, char in enumerate(text):
        depths.append(len(stack) if quote is None else -1)
        if quote is not None:
            if char == quote:
                quote = None
        elif char in _QUOTES:
            quote = char
        elif char in _OPEN:
            stack.append((char, pos))
        elif char in _CLOSE:
            if not stack:
                raise ValueError(f"unbalanced parentheses in formula {text!r}: "
                                 f"{char!r} at position {pos} closes nothing")
            opener, where = stack.pop()
            if opener != _CLOSE[char]:
                raise ValueError(f"mismatched brackets in formula {text!r}: {opener!r} at "
                                 f"position {where} closed by {char!r} at position {pos}")
    if quote is not None:
        raise ValueError(f"unclosed quote {quote} in formula {text!r}")
    if stack:
        raise ValueError(f"unbalanced parentheses in formula {text!r}: {stack[-1][0]!r} at "
                         f"position {stack[-1][1]} is never closed")
    return depths


def _split_top(text: str, sep: str) -> list[str]:
    """Split at occurrences of the one-character ``sep`` outside brackets and quotes."""
    depths = _depths(text)
    parts, start = [], 0
    for pos, char in enumerate(text):
        if char == sep and depths[pos] == 0:
            parts.append(text[start:pos])
            start = pos + 1
    parts.append(text[start:])
    return parts


def _signed_pieces(rhs: str) -> list[tuple[str, str]]:
    """Split a right-hand side at top-level ``+`` and ``-`` into (sign, piece) pairs."""
    depths = _depths(rhs)
    pieces, sign, start = [], "+", 0
    for pos, char in enumerate(rhs):
        if char in "+-" and depths[pos] == 0:
            pieces.append((sign, rhs[start:pos].strip()))
            sign, start = char, pos + 1
    pieces.append((sign, rhs[start:].strip()))
    # A leading "-1" leaves an empty first piece; empty pieces elsewhere are "x + + z".
    if pieces[0][1] == "" and len(pieces) > 1:
        pieces = pieces[1:]
    for _, piece in pieces:
        if piece == "":
            raise ValueError(f"empty term in formula right-hand side {rhs!r}")
    return pieces


def _bar_positions(inner: str) -> list[int]:
    depths = _depths(inner)
    return [pos for pos, char in enumerate(inner) if char == "|" and depths[pos] == 0]


def _wraps(text: str) -> bool:
    """Whether ``text`` is one parenthesised group: ``(a | g)`` yes, ``(a)*(b | g)`` no."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    # Depth 0 anywhere after the first character means the first "(" closed early
    # (quoted characters report -1 and do not count).
    return all(depth != 0 for depth in _depths(text)[1:])


def _as_bar(piece: str) -> str | None:
    """The inside of ``( ... | ... )`` when the whole piece is one such term, else None."""
    if not _wraps(piece):
        return None
    inner = piece[1:-1]
    return inner if _bar_positions(inner) else None


def _has_stray_bar(piece: str) -> bool:
    """``|`` outside a function call's parentheses, e.g. ``x*(1|g)`` or ``1 | g``."""
    depths = _depths(piece)
    stack: list[bool] = []  # for each open "(": is it a plain group (not a call)?
    for pos, char in enumerate(piece):
        if depths[pos] < 0:
            continue
        if char == "(":
            before = piece[:pos].rstrip()
            stack.append(not before or not (before[-1].isalnum() or before[-1] in "_.]`)"))
        elif char == ")":
            stack.pop()
        elif char == "|" and all(stack):
            return True
    return False


def _strip_name(name: str, formula: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == "`":
        return name[1:-1]
    if not name:
        raise ValueError(f"empty grouping-factor name in formula {formula!r}")
    if not all(ch.isalnum() or ch in "_." for ch in name):
        raise ValueError(f"grouping factor {name!r} in formula {formula!r} must be a column "
                         "name (use backticks for other names), '/' for nesting or ':' "
                         "for interactions")
    return name


def _grouping_factors(right: str, formula: str) -> list[tuple[str, ...]]:
    """``a/b:c`` -> [("a",), ("a", "b", "c")]: each nesting level adds the next part."""
    right = right.strip()
    while _wraps(right):
        right = right[1:-1].strip()
    if not right:
        raise ValueError(f"a random-effects term in {formula!r} has no grouping factor "
                         "after '|'")
    factors: list[tuple[str, ...]] = []
    names: tuple[str, ...] = ()
    for part in _split_top(right, "/"):
        part = part.strip()
        if _wraps(part):
            part = part[1:-1]
        names = names + tuple(_strip_name(n, formula) for n in _split_top(part, ":"))
        factors.append(names)
    return factors


# ---- column names --------------------------------------------------------------------------


def _lme4_names(spec: Any) -> list[str]:
    """formulaic's column names in lme4's spelling.

    ``Intercept`` -> ``(Intercept)``; a dummy column of a categorical variable ``Sex``
    (``Sex[T.Female]`` with treatment contrasts, ``Sex[Female]`` with full dummy coding)
    -> ``SexFemale``, also inside interactions (``age:SexFemale``). Other codings keep
    formulaic's names.
    """
    levels: dict[str, list[str]] = {}
    for var, (kind, state) in spec.encoder_state.items():
        contrasts = state.get("contrasts") if isinstance(state, Mapping) else None
        if getattr(kind, "value", kind) == "categorical" and contrasts is not None and \
                type(contrasts.contrasts).__name__ == "TreatmentContrasts":
            levels[str(var)] = [str(level) for level in contrasts.levels]

    def factor_name(piece: str) -> str:
        for var, var_levels in levels.items():
            if piece.startswith(var + "[") and piece.endswith("]"):
                inside = piece[len(var) + 1:-1]
                for candidate in (inside[2:] if inside.startswith("T.") else None, inside):
                    if candidate is not None and candidate in var_levels:
                        return var + candidate
        return piece

    names = []
    for column in spec.column_names:
        if column == "Intercept":
            names.append("(Intercept)")
        else:
            names.append(":".join(factor_name(p) for p in _split_top(column, ":")))
    return names


def _intercept_columns(spec: Any) -> list[int]:
    return [i for term, cols in spec.term_indices.items() if str(term) == "1" for i in cols]


# ---- the model frame -----------------------------------------------------------------------


@dataclass
class RandomTerm:
    """One random-effects term ``(left | group)`` evaluated on the data.

    Attributes
    ----------
    group : str
        Grouping-factor name; an interaction of factors is joined with ``":"``
        (``"batch:cask"``).
    labels : Series
        Group label of each row (for interactions, the labels joined with ``":"``),
        named ``group``.
    Z : DataFrame of shape (n, q)
        Random-effects design with lme4 column names (``"(Intercept)"``, ``"Days"``).
    diagonal : bool
        True for ``||``: the columns' random effects are independent.
    left : str
        The term's left side as written (``"Days"``, ``"0 + x"``).
    factors : tuple of str
        The data columns whose interaction is the grouping factor (``("batch", "cask")``).
    """

    group: str
    labels: pd.Series
    Z: pd.DataFrame
    diagonal: bool = False
    left: str = "1"
    factors: tuple[str, ...] = ()

    def __repr__(self) -> str:
        bar = "||" if self.diagonal else "|"
        return (f"RandomTerm(({' + '.join(self.Z.columns)} {bar} {self.group}), "
                f"{self.labels.nunique()} groups)")


@dataclass
class ModelFrame:
    """A formula evaluated on a data frame: the arrays :class:`MixedLMRegressor` fits.

    Attributes
    ----------
    formula : str
    X : DataFrame of shape (n, p)
        Fixed-effects design with lme4 column names, WITHOUT the intercept column when the
        formula has an intercept (the estimator adds it: ``fit_intercept``).
    y : Series of shape (n,)
    terms : list of RandomTerm
        Random-effects terms after expanding nesting (``a/b`` gives two terms).
    fit_intercept : bool
        Whether the formula has a fixed intercept (False after ``0 +`` or ``- 1``).
    dropped : Index
        Labels of the rows of ``data`` left out because a model variable is missing
        (lme4's ``na.action = na.omit``).
    """

    formula: str
    X: pd.DataFrame
    y: pd.Series
    terms: list[RandomTerm]
    fit_intercept: bool
    dropped: pd.Index = field(default_factory=lambda: pd.Index([]))
    _fixed_spec: Any = field(default=None, repr=False)
    _term_specs: list = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        fixed = (["(Intercept)"] if self.fit_intercept else []) + list(self.X.columns)
        return (f"ModelFrame({self.formula!r}: {len(self.y)} rows ({len(self.dropped)} dropped), "
                f"fixed {fixed}, terms {self.terms})")

    # The estimator cannot take a design with no columns (scikit-learn needs one feature),
    # so an intercept-only fixed part is passed as an explicit "(Intercept)" column.
    @property
    def _explicit_intercept(self) -> bool:
        return self.fit_intercept and self.X.shape[1] == 0

    def _pieces(self) -> list[tuple[str, pd.Series, pd.DataFrame]]:
        """Terms as the estimator's several-factor path takes them: ``||`` split by column.

        lme4 expands ``(x || g)`` to ``(1 | g) + (0 + x | g)``; a repeated factor gets the
        suffix ``.1``, ``.2`` as in lme4's ``VarCorr``.
        """
        pieces = []
        for term in self.terms:
            if term.diagonal and term.Z.shape[1] > 1:
                pieces.extend((term.group, term.labels, term.Z[[c]]) for c in term.Z.columns)
            else:
                pieces.append((term.group, term.labels, term.Z))
        seen: dict[str, int] = {}
        named = []
        for group, labels, Z in pieces:
            count = seen.get(group, 0)
            seen[group] = count + 1
            named.append((group if count == 0 else f"{group}.{count}", labels, Z))
        return named

    @property
    def single_factor(self) -> bool:
        """True when the model has one random-effects term (fitted by the one-factor path)."""
        return len(self.terms) == 1

    def estimator_params(self) -> dict[str, Any]:
        """``fit_intercept`` and ``cov_type`` for :class:`MixedLMRegressor`."""
        diagonal = self.single_factor and self.terms[0].diagonal
        return {
            "fit_intercept": self.fit_intercept and not self._explicit_intercept,
            "cov_type": "diagonal" if diagonal else "unstructured",
        }

    def fit_arguments(self) -> dict[str, Any]:
        """``X``, ``y``, ``groups``, ``Z`` for :meth:`MixedLMRegressor.fit`.

        One term: ``groups`` a Series and ``Z`` a DataFrame. Several terms: ``groups`` a
        DataFrame with a column per term and ``Z`` a dict from that column name to the
        term's design.
        """
        args = self._design_arguments(self.X, self.terms if self.single_factor else None,
                                      self._pieces())
        args["y"] = self.y
        return args

    def _design_arguments(self, X, single_terms, pieces) -> dict[str, Any]:
        if self._explicit_intercept:
            X = pd.DataFrame({"(Intercept)": np.ones(len(X))}, index=X.index)
        if single_terms is not None:
            term = single_terms[0]
            return {"X": X, "groups": term.labels.rename(term.group), "Z": term.Z}
        groups = pd.DataFrame({name: labels for name, labels, _ in pieces}, index=X.index)
        return {"X": X, "groups": groups, "Z": {name: Z for name, _, Z in pieces}}

    def new_data(self, data: pd.DataFrame) -> dict[str, Any]:
        """Designs of new rows for :meth:`MixedLMRegressor.predict`: ``X``, ``groups``, ``Z``.

        Categorical levels and stateful transforms (``center(x)``) are those of the
        fitted data. No response is needed; rows with missing values are an error.

        Examples
        --------
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> est = lmer("Reaction ~ Days + (Days | Subject)", df)
        >>> new = df[df["Days"] == 9].head(2)
        >>> est.predict(**est.model_frame_.new_data(new)).round(2).tolist()
        [430.66, 227.63]
        """
        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        X = _evaluate(self._fixed_spec, data, na_action="raise")
        intercept = _intercept_columns(self._fixed_spec)
        X = X.drop(columns=[X.columns[i] for i in intercept])
        terms = []
        for term, spec in zip(self.terms, self._term_specs):
            labels = _group_labels(data, list(term.factors), term.group)
            terms.append(RandomTerm(term.group, labels, _evaluate(spec, data, na_action="raise"),
                                    term.diagonal, term.left, term.factors))
        pieces = ModelFrame(self.formula, X, pd.Series(dtype=float), terms,
                            self.fit_intercept)._pieces()
        return self._design_arguments(X, terms if self.single_factor else None, pieces)


def _evaluate(spec: Any, data: pd.DataFrame, **overrides: Any) -> pd.DataFrame:
    """A formulaic model spec applied to data, as a float DataFrame with lme4 names."""
    matrix = spec.get_model_matrix(data, **overrides)
    return pd.DataFrame(np.asarray(matrix, dtype=float), index=matrix.index,
                        columns=_lme4_names(spec))


def _group_labels(data: pd.DataFrame, names: list[str], group: str) -> pd.Series:
    if len(names) == 1:
        labels = data[names[0]]
    else:
        labels = data[names[0]].astype(str)
        for name in names[1:]:
            labels = labels + ":" + data[name].astype(str)
    return pd.Series(labels.to_numpy(), index=data.index, name=group)


def _caller_context(depth: int) -> Mapping[str, Any]:
    frame = inspect.currentframe()
    for _ in range(depth + 1):
        frame = frame.f_back
    return ChainMap(dict(frame.f_locals), frame.f_globals)


def parse_formula(formula: str, data: pd.DataFrame, *,
                  context: Mapping[str, Any] | None = None) -> ModelFrame:
    """Evaluate an lme4 formula on a data frame.

    Parameters
    ----------
    formula : str
        ``response ~ fixed part + (left | group) + ...`` (see the module docstring).
    data : DataFrame
        The variables. Rows where any model variable (response, fixed-effects or
        random-effects covariate, grouping factor) is missing are dropped, as lme4's
        default ``na.action = na.omit`` does; unused categories are dropped too.
    context : mapping, optional
        Names available to expressions in the formula (``np.log(x)``); default the
        caller's variables.

    Returns
    -------
    ModelFrame

    Raises
    ------
    ValueError
        Malformed formulas (unbalanced parentheses, a bar without a grouping factor or
        without a left side, a bar that is not a term of its own, no response, no
        random-effects term) and names that are not columns of ``data``.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> df = load_orthodont()
    >>> mf = parse_formula("distance ~ age * Sex + (age | Subject)", df)
    >>> list(mf.X.columns), mf.fit_intercept
    (['age', 'SexMale', 'age:SexMale'], True)
    >>> term = mf.terms[0]
    >>> term.group, list(term.Z.columns), term.labels.nunique()
    ('Subject', ['(Intercept)', 'age'], 27)
    >>> [t.group for t in parse_formula("distance ~ 1 + (1 | Sex/Subject)", df).terms]
    ['Sex', 'Sex:Subject']
    """
    formulaic = _import_formulaic()
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if context is None:
        context = _caller_context(1)

    sides = _split_top(formula, "~")
    if len(sides) != 2 or not sides[0].strip():
        raise ValueError(f"formula {formula!r} must have the form 'response ~ terms' "
                         "(one '~' with a response on its left)")
    lhs, rhs = sides[0].strip(), sides[1].strip()
    if not rhs:
        raise ValueError(f"formula {formula!r} has nothing right of '~'")

    fixed: list[tuple[str, str]] = []
    bars: list[tuple[str, list[tuple[str, ...]], bool]] = []  # (left, factors, diagonal)
    for sign, piece in _signed_pieces(rhs):
        inner = _as_bar(piece)
        if inner is None:
            if _has_stray_bar(piece):
                raise ValueError(f"in formula {formula!r}, {piece!r}: a random-effects term "
                                 "must be written '(left | group)' and added on its own "
                                 "with '+'")
            fixed.append((sign, piece))
            continue
        if sign == "-":
            raise ValueError(f"in formula {formula!r}: a random-effects term cannot be "
                             f"subtracted ({sign} {piece})")
        positions = _bar_positions(inner)
        diagonal = len(positions) == 2 and positions[1] == positions[0] + 1
        if len(positions) > 1 and not diagonal:
            raise ValueError(f"in formula {formula!r}, {piece!r} has more than one bar")
        left = inner[:positions[0]].strip()
        right = inner[positions[-1] + 1:].strip()
        if not left:
            raise ValueError(f"in formula {formula!r}, {piece!r} has nothing left of the "
                             "bar (write '1 | group' for a random intercept)")
        bars.append((left, _grouping_factors(right, formula), diagonal))
    if not bars:
        raise ValueError(f"formula {formula!r} has no random-effects term '(left | group)'; "
                         "for a model without random effects use ordinary least squares")

    # lme4 (like R) keeps the intercept unless the formula removes it: "1" if nothing is left.
    fixed_rhs = " ".join(f"{sign} {piece}" for sign, piece in fixed) if fixed else "1"
    if fixed_rhs.startswith("+ "):
        fixed_rhs = fixed_rhs[2:]
    fixed_formula = formulaic.Formula(f"{lhs} ~ {fixed_rhs}")
    left_formulas = [formulaic.Formula(f"~ {left}") for left, _, _ in bars]

    # Which columns of data the model uses: they decide the rows (NA) and unknown names.
    group_names = {name for _, factors, _ in bars for names in factors for name in names}
    needed = set(fixed_formula.required_variables)
    for f in left_formulas:
        needed |= set(f.required_variables)
    unknown = sorted(name for name in needed if name not in data.columns and name not in context)
    unknown += sorted(name for name in group_names if name not in data.columns)
    if unknown:
        raise ValueError(f"formula {formula!r} uses {unknown}, which are not columns of data "
                         f"(columns: {list(map(str, data.columns))})")
    columns = [c for c in data.columns if c in needed or c in group_names]
    missing = data[columns].isna().any(axis=1).to_numpy()
    work = data.loc[~missing, columns].reset_index(drop=True)
    for column in work.columns:
        if isinstance(work[column].dtype, pd.CategoricalDtype):
            # R's model.frame drops unused levels: an empty level would give a zero column.
            work[column] = work[column].cat.remove_unused_categories()
    if len(work) == 0:
        raise ValueError(f"no rows left: every row of data has a missing value in {columns}")

    ctx = dict(context)
    matrices = formulaic.model_matrix(fixed_formula, work, context=ctx)
    lhs_matrix, rhs_matrix = matrices.lhs, matrices.rhs
    if lhs_matrix.shape[1] != 1:
        raise ValueError(f"the response {lhs!r} must be one numeric column, got "
                         f"{list(lhs_matrix.columns)}")
    fixed_spec = rhs_matrix.model_spec
    term_mats = [formulaic.model_matrix(f, work, context=ctx) for f in left_formulas]
    # Transformations can still produce missing values (log of 0); keep rows every part has.
    keep = lhs_matrix.index.intersection(rhs_matrix.index)
    for m in term_mats:
        keep = keep.intersection(m.index)
    keep = keep.sort_values()
    kept_rows = np.flatnonzero(~missing)[keep.to_numpy()]
    row_index = data.index[kept_rows]
    dropped = data.index[np.setdiff1d(np.arange(len(data)), kept_rows)]

    y = pd.Series(np.asarray(lhs_matrix.loc[keep].iloc[:, 0], dtype=float), index=row_index,
                  name=str(lhs_matrix.columns[0]))
    X = pd.DataFrame(np.asarray(rhs_matrix.loc[keep], dtype=float), index=row_index,
                     columns=_lme4_names(fixed_spec))
    intercept = _intercept_columns(fixed_spec)
    X = X.drop(columns=[X.columns[i] for i in intercept])

    terms, term_specs = [], []
    rows = work.loc[keep]
    for (left, factors, diagonal), m in zip(bars, term_mats):
        spec = m.model_spec
        Z = pd.DataFrame(np.asarray(m.loc[keep], dtype=float), index=row_index,
                         columns=_lme4_names(spec))
        if Z.shape[1] == 0:
            raise ValueError(f"in formula {formula!r}, the random-effects term with left side "
                             f"{left!r} has no columns")
        for names in factors:
            group = ":".join(names)
            labels = _group_labels(rows, list(names), group)
            labels.index = row_index
            terms.append(RandomTerm(group, labels, Z, diagonal, left, tuple(names)))
            term_specs.append(spec)
    return ModelFrame(formula, X, y, terms, bool(intercept), dropped, fixed_spec, term_specs)


def lmer(formula: str, data: pd.DataFrame, reml: bool = True, **estimator_params: Any):
    """Fit a linear mixed model from an lme4 formula, like R's ``lme4::lmer``.

    Parameters
    ----------
    formula : str
        For example ``"Reaction ~ Days + (Days | Subject)"``; see
        :mod:`mixedlm_sklearn.formula` for the syntax.
    data : DataFrame
        Rows with a missing value in any model variable are dropped first (lme4's
        ``na.action = na.omit``); the estimator itself refuses missing values.
    reml : bool, default=True
        REML (lme4's default) or maximum likelihood.
    **estimator_params
        Other :class:`MixedLMRegressor` parameters (``max_iter``, ``tol``, ``verbose``).
        ``fit_intercept`` and ``cov_type`` come from the formula.

    Returns
    -------
    MixedLMRegressor
        Fitted, with the extra attribute ``model_frame_`` (the :class:`ModelFrame`), whose
        :meth:`ModelFrame.fit_arguments` and :meth:`ModelFrame.new_data` give the designs
        ``predict`` takes.

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

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> est = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> round(est.llf_, 4)
    -871.8141
    >>> est.fe_params_.round(3).to_dict()
    {'(Intercept)': 251.405, 'Days': 10.467}
    >>> est = lmer("Reaction ~ Days + (Days || Subject)", load_sleepstudy(), reml=False)
    >>> est.cov_type, float(est.cov_re_[0, 1])
    ('diagonal', 0.0)
    """
    from .estimator import MixedLMRegressor

    clash = {"fit_intercept", "cov_type"} & set(estimator_params)
    if clash:
        raise TypeError(f"{sorted(clash)} are set by the formula ('0 +' removes the intercept, "
                        "'||' makes the covariance diagonal); do not pass them to lmer")
    frame = parse_formula(formula, data, context=_caller_context(1))
    est = MixedLMRegressor(reml=reml, **frame.estimator_params(), **estimator_params)
    est.fit(**frame.fit_arguments())
    est.model_frame_ = frame
    return est
