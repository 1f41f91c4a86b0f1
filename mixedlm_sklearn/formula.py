"""lme4-style model formulas, the parser behind ``lmer("Reaction ~ Days + (Days | Subject)", data)``.

:func:`~mixedlm_sklearn.lmer` and :func:`~mixedlm_sklearn.glmer` live in
:mod:`mixedlm_sklearn.api`, next to the estimators: the parser imports no estimator.

The random-effects terms (``( ... | ... )``, ``||``, nesting with ``/``) are parsed here;
the fixed part, the response and the left side of each bar are checked here and then
evaluated by `formulaic <https://matthewwardrop.github.io/formulaic/>`_ (an optional
dependency: ``pip install formulaic``). Supported syntax, with R's meaning:

=========================  ===========================================================
``y ~ x + (x | g)``         correlated random intercept and slope per level of ``g``
``(1 | a) + (1 | b)``       several terms: crossed or nested factors
``(x || g)``                intercept and slope independent (diagonal covariance)
``(0 + x | g)``             slope only (``- 1`` works too)
``(1 | a/b)``               nesting: ``(1 | a) + (1 | a:b)``; ``(1 | a:b)`` for the
                            interaction factor alone (labels ``"a1:b1"``)
``x:z``, ``x * z``,         interactions; ``(a + b)^2``: all terms up to order 2
``(a + b)^2``, ``a/b``
``0 +``, ``- 1``            no fixed intercept
``I(x^2)``, ``log(x)``      expressions: ``^`` is a power (as in R), never Python's XOR
``factor(x)``, ``C(x)``     ``x`` as a categorical variable (treatment contrasts)
``C(x, contr.sum)``         R's contrasts: ``contr.treatment`` (``base = k``: against
                            the k-th level), ``contr.sum``, ``contr.helmert`` (also
                            ``Treatment``, ``Sum``, ``Helmert``); columns named as R
                            names them (``C(x, contr.sum)1``)
``relevel(x, ref = "b")``   treatment contrasts against level ``"b"`` (``relevel(x, "b")``;
                            a number ``k``: the k-th level)
``scale(x)``, ``poly(x,2)`` R's ``scale`` (sd with n - 1) and orthogonal polynomials;
``center(x)``, ``bs(x)``    their state (mean, sd, coefficients, knots) is kept for
                            :meth:`ModelFrame.new_data`
``offset(x)``               a known term added to the linear predictor (several sum)
``Days.x``, `` `my var` ``  column names with dots, or anything in backticks
=========================  ===========================================================

What a formula may contain
--------------------------
A formula is not Python code. Every name and expression in it is checked before
anything is evaluated, and evaluated with nothing but:

- columns of ``data``, and names given explicitly through ``context=`` (numbers, or
  arrays with one value per row of ``data``, which then act as columns: a Series by its
  index, as pandas aligns it, other arrays by position); the caller's variables are
  never looked up; names are matched exactly as the data spells them (Python's own
  parser would read a full-width ``ｘ`` as ``x``);
- numbers and R's constant ``pi`` (unless the data have a column ``pi``); the arithmetic operators ``+ - * / ^`` (power; ``**`` too), R's ``%%`` and
  ``%/%`` (``%`` and ``//`` too); the comparisons ``< <= > >= == !=``;
- calls of the functions listed in :data:`ALLOWED_FUNCTIONS`, with numbers (or ``TRUE``,
  ``FALSE``, ``c(...)`` of numbers) as their extra parameters; ``C``'s contrast is one of
  the names in :data:`CONTRASTS` (markers, never looked up elsewhere), ``relevel``'s
  ``ref`` a string (the only place a formula may hold one) or a number.

Anything else (attributes such as ``x.__class__`` or ``np.random``, subscripts, strings,
lambdas, comprehensions, ``:=``, keyword arguments a function does not have, other
functions, callables in ``context=``) is refused with a :class:`ValueError` or
:class:`TypeError` naming the offending piece.

Column names follow lme4: the intercept is ``"(Intercept)"``, a treatment-contrast
column of factor ``Sex`` at level ``Female`` is ``"SexFemale"`` (formulaic's
``"Sex[T.Female]"``), expressions are written as R deparses them (``"I(Days^2)"``,
``"exp(Days/5)"``, ``"poly(Days, 2)1"``, ``"factor(Days)1"``, ``"I(x > 3)TRUE"``). The
reference level is the first level: the first category of a :class:`pandas.Categorical`,
otherwise the smallest label, as in R. Other contrasts are R's ``contr.sum`` (the last
level -1 in every column), ``contr.helmert`` (column ``j``: level ``j + 1`` against the
levels before it) and ``contr.treatment`` against another level; as in lme4, the
estimates and the REML criterion (which contains ``log det X'V^-1 X``) depend on the
coding, the fitted values, the ML likelihood, type III tests and marginal means do not.
Terms are coded as R's ``model.matrix`` codes
them: a factor of a term gets contrasts when the term without it is in the model before
it, else a column per level, so ``y ~ a:b`` has the intercept and a column per level
combination (``au:bp``, ``av:bp``, ...); the last, aliased with the intercept and the
others, is dropped as lme4 drops it.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import numbers
import re
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ALLOWED_FUNCTIONS", "CONTRASTS", "RandomTerm", "FixedTerm", "FixedFactor", "ModelFrame",
           "parse_formula", "update_formula"]

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


# ---- the allow-list ------------------------------------------------------------------------
#
# Everything a formula may call is declared here, once: the checker, the evaluation
# context handed to formulaic and the error messages use these tables (the README and
# the module docstring list the same names; a test keeps the README in step).

# Elementwise numpy ufuncs, callable as ``log(x)`` or ``np.log(x)``. One argument each:
# a ufunc's second positional argument is ``out``, which would write into an array.
_UFUNCS: dict[str, np.ufunc] = {
    name: getattr(np, name) for name in (
        "log", "log2", "log10", "log1p", "exp", "expm1", "sqrt", "abs", "sign", "floor",
        "ceil", "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
    )
}
_NP_UFUNCS: dict[str, np.ufunc] = {**_UFUNCS, "absolute": np.absolute}
# R's spellings of the same functions (bare names only: R has no np.)
_UFUNCS.update(ceiling=np.ceil, asin=np.arcsin, acos=np.arccos, atan=np.arctan)


@dataclass(frozen=True)
class _Transform:
    """A function of a formula's variables other than a ufunc.

    ``params`` are the parameters after the data argument, each with the kind of literal
    it takes; the first ``positional`` of them may be given by position (R's order).
    """

    name: str
    params: tuple[tuple[str, str], ...] = ()
    positional: int = 0
    usage: str = ""


# The contrasts C(x, contr) may name (R's contrast functions and formulaic's spellings):
# written as names in the formula, they are never looked up anywhere but here.
_CONTRAST_KINDS: dict[str, tuple[str, bool]] = {  # name -> (coding, columns numbered)
    # R names the columns of C(x, contr.treatment) by position, as contrasts<- calls
    # contr.treatment(nlevels(x)); those of contr.sum / contr.helmert have no names: 1, 2, ...
    "contr.treatment": ("treatment", True), "contr.sum": ("sum", True),
    "contr.helmert": ("helmert", True),
    # formulaic's (patsy's) spellings; Treatment names its columns by level, as factor(x)
    "Treatment": ("treatment", False), "Sum": ("sum", True), "Helmert": ("helmert", True),
}
#: The contrasts ``C(x, contr)`` accepts.
CONTRASTS: tuple[str, ...] = tuple(_CONTRAST_KINDS)

# Kinds of parameter: "count" a positive integer smaller than the number of rows,
# "bool" TRUE/FALSE, "bool_or_number" either, "numbers" c(...) or [...] of numbers,
# "contrast" one of CONTRASTS, "position" a positive integer, "level" a string or a
# positive integer (a factor level by label or position).
_TRANSFORMS: dict[str, _Transform] = {t.name: t for t in (
    _Transform("I", usage="I(x): arithmetic, as computed"),
    _Transform("C", (("contr", "contrast"), ("base", "position")), 1,
               "C(x, contr, base = k): x as a categorical variable coded by contr, one of "
               + ", ".join(CONTRASTS) + " (treatment contrasts without contr); base = k: "
               "treatment contrasts against the k-th level"),
    _Transform("relevel", (("ref", "level"),), 1,
               'relevel(x, ref = "b"): x as a categorical variable whose first (reference) '
               "level is b (a number k: the k-th level)"),
    _Transform("factor", usage="factor(x): R's name for C(x)"),
    _Transform("center", usage="center(x): x minus its mean"),
    _Transform("scale", (("center", "bool_or_number"), ("scale", "bool_or_number")), 2,
               "scale(x, center = TRUE, scale = TRUE): R's scale"),
    _Transform("poly", (("degree", "count"), ("raw", "bool")), 1,
               "poly(x, degree = 1, raw = FALSE): R's orthogonal polynomials"),
    _Transform("bs", (("df", "count"), ("knots", "numbers"), ("degree", "count")), 3,
               "bs(x, df, knots, degree = 3): B-spline basis as R's splines::bs"),
)}

#: Every function a formula may call (``offset`` only as a term of the fixed part).
ALLOWED_FUNCTIONS: tuple[str, ...] = (
    *_TRANSFORMS, *_UFUNCS, *(f"np.{name}" for name in _NP_UFUNCS), "offset",
)

# R's logical constants, accepted as function parameters (``poly(x, 2, raw = TRUE)``).
_R_LOGICAL = {"TRUE": True, "FALSE": False}


def _allowed_text() -> str:
    return ("A formula may contain columns of data, names given in context= (numbers or "
            "arrays), numbers, the operators + - * / ^ (power, as in R; also **) %% %/% "
            "(also % //) and comparisons, and calls of " + ", ".join(ALLOWED_FUNCTIONS[:-1]) +
            "; offset(x) only as a term of the fixed part")


def _evaluation_functions() -> dict[str, Any]:
    """The functions formulaic may call, by the names the checked code uses."""
    from formulaic.transforms import C, basis_spline, center, identity, poly, scale

    functions: dict[str, Any] = {"I": identity, "C": _coded, "factor": C, "center": center,
                                 "scale": scale, "poly": poly, "bs": basis_spline,
                                 "relevel": _relevel}
    functions.update(_UFUNCS)
    # ``np`` is a namespace holding only the allowed ufuncs, not the numpy module.
    functions["np"] = types.SimpleNamespace(**_NP_UFUNCS)
    functions["pi"] = math.pi  # R's constant (a column named pi is aliased, never this)
    # the contrasts C(x, contr) names: markers _coded reads, nothing callable
    contr = {name.removeprefix("contr."): _Coding(*kind) for name, kind in
             _CONTRAST_KINDS.items() if name.startswith("contr.")}
    functions["contr"] = types.SimpleNamespace(**contr)
    functions.update({name: _Coding(*kind) for name, kind in _CONTRAST_KINDS.items()
                      if "." not in name})
    return functions


# ---- contrasts (C(x, contr), relevel) ---------------------------------------------------------


@dataclass(frozen=True)
class _Coding:
    """A contrast named in a formula: its coding and how R names its columns."""

    kind: str
    numbered: bool


def _contrast_matrix(kind: str, n: int, base: int) -> np.ndarray:
    """R's ``contr.treatment(n, base)``, ``contr.sum(n)``, ``contr.helmert(n)`` (n x n-1)."""
    if kind == "treatment":
        return np.delete(np.eye(n), base, axis=1)
    if kind == "sum":
        matrix = np.eye(n, n - 1)
        matrix[-1] = -1.0
        return matrix
    # helmert: column j contrasts level j + 1 with the mean of the levels before it
    matrix = np.triu(np.full((n, n - 1), -1.0))
    matrix[np.arange(1, n), np.arange(n - 1)] = np.arange(1.0, n)
    return matrix


@functools.lru_cache(maxsize=None)
def _r_contrasts_class() -> type:
    """formulaic's Contrasts with R's codings and column names (made on first use:
    formulaic is an optional dependency)."""
    from formulaic.transforms.contrasts import Contrasts

    @dataclass
    class RContrasts(Contrasts):
        """R's contr.treatment (reference level ``base``, 0-based), contr.sum, contr.helmert.

        Reduced-rank columns are named as R's model.matrix names them: by position (R's
        contrast functions called with the number of levels), or by level for treatment
        contrasts named by level; full-rank columns (a factor coded by indicators, as in
        ``0 + C(x, contr.sum)``) by level.
        """

        FACTOR_FORMAT = "{name}[{field}]"
        FACTOR_FORMAT_REDUCED = "{name}[{field}]"

        kind: str = "treatment"
        base: int = 0
        numbered: bool = True

        def _base(self, levels: Any) -> int:
            if self.kind == "treatment" and not 0 <= self.base < len(levels):
                raise ValueError(f"C(): base = {self.base + 1} but the factor has "
                                 f"{len(levels)} levels")
            return self.base

        @Contrasts.override
        def _get_coding_matrix(self, levels: Any, reduced_rank: bool = True,
                               sparse: bool = False) -> Any:
            n = len(levels)
            matrix = _contrast_matrix(self.kind, n, self._base(levels)) if reduced_rank \
                else np.eye(n)
            if sparse:
                import scipy.sparse

                return scipy.sparse.csc_matrix(matrix)
            return matrix

        @Contrasts.override
        def get_coding_column_names(self, levels: Any, reduced_rank: bool = True) -> Any:
            if not reduced_rank:
                return list(levels)
            if self.kind != "treatment":
                return [str(i) for i in range(1, len(levels))]
            keep = [i for i in range(len(levels)) if i != self._base(levels)]
            return [str(i + 1) for i in keep] if self.numbered else [levels[i] for i in keep]

        @Contrasts.override
        def get_coefficient_row_names(self, levels: Any, reduced_rank: bool = True) -> Any:
            if not reduced_rank:
                return list(levels)
            return ["(Intercept)", *self.get_coding_column_names(levels, reduced_rank)]

        @Contrasts.override
        def get_drop_field(self, levels: Any, reduced_rank: bool = True) -> Any:
            if reduced_rank:
                return None
            return levels[self._base(levels) if self.kind == "treatment" else 0]

    return RContrasts


def _factor_levels(values: pd.Series) -> list:
    """The levels formulaic gives a categorical variable (a Categorical's own order,
    otherwise sorted), before any relevel."""
    return list(pd.Series(values).astype("category").cat.categories)


def _r_label(level: Any) -> str:
    """A factor level as R's ``as.character`` writes it: ``TRUE``, ``1`` for the number 1.0."""
    if isinstance(level, (bool, np.bool_)):
        return str(bool(level)).upper()
    if isinstance(level, numbers.Real) and math.isfinite(level):
        return _r_number(level)
    return str(level)


def _releveled(levels: list, ref: Any) -> list:
    """R's ``relevel``: ``ref`` (a label, or a 1-based position) first, the others after."""
    if isinstance(ref, str):
        # a level as R's as.character writes it (TRUE, 1 for the number 1.0) or as Python does
        labels = [_r_label(level) for level in levels]
        matches = [i for i, (level, label) in enumerate(zip(levels, labels))
                   if ref in (label, str(level))]
        if not matches:
            raise ValueError(f"relevel(): ref = {ref!r} is not a level of the factor "
                             f"(levels: {labels})")
        at = matches[0]
    else:
        if not 1 <= ref <= len(levels):
            raise ValueError(f"relevel(): ref = {ref} but the factor has {len(levels)} levels")
        at = int(ref) - 1
    return [levels[at], *levels[:at], *levels[at + 1:]]


def _categorical(data: Any, contrasts: Any, ref: Any = None) -> Any:
    """``data`` as a categorical factor coded by ``contrasts`` (formulaic's), its levels
    reordered by ``relevel(., ref)``. The levels are learned on the fitted data and kept in
    the encoder's state: new data are coded with the fit's levels, in the fit's order."""
    from formulaic.materializers.types import FactorValues
    from formulaic.transforms.contrasts import encode_contrasts

    def encoder(values: Any, reduced_rank: bool, drop_rows: list, encoder_state: dict,
                model_spec: Any) -> Any:
        values = pd.Series(values.__wrapped__ if isinstance(values, FactorValues) else values)
        values = values.drop(index=values.index[drop_rows])
        levels = encoder_state.get("categories")
        if levels is None and ref is not None:
            levels = _releveled(_factor_levels(values), ref)
        return encode_contrasts(values, contrasts=contrasts, levels=levels,
                                reduced_rank=reduced_rank, _state=encoder_state,
                                _spec=model_spec)

    encoder.relevel_ref = ref  # C(relevel(x, ref), contr) keeps the reordering
    raw = data.__wrapped__ if isinstance(data, FactorValues) else data
    return FactorValues(raw, kind="categorical", spans_intercept=True, encoder=encoder)


def _relevel_ref(data: Any) -> Any:
    """The ``ref`` of a ``relevel(...)`` result (None for anything else)."""
    metadata = getattr(data, "__formulaic_metadata__", None)
    return getattr(getattr(metadata, "encoder", None), "relevel_ref", None)


def _coded(data: Any, contr: _Coding | None = None, base: int | None = None) -> Any:
    """The formula's ``C(x, contr, base = k)``: R's contrasts (see :data:`CONTRASTS`)."""
    from formulaic.transforms import C

    ref = _relevel_ref(data)
    if contr is None and base is None and ref is None:
        return C(data)
    coding = contr if contr is not None else _Coding("treatment", True)
    contrasts = _r_contrasts_class()(coding.kind, 0 if base is None else int(base) - 1,
                                     coding.numbered or base is not None)
    return _categorical(data, contrasts, ref)


def _relevel(data: Any, ref: Any) -> Any:
    """The formula's ``relevel(x, ref)``: treatment contrasts against level ``ref``."""
    from formulaic.transforms.contrasts import TreatmentContrasts

    return _categorical(data, TreatmentContrasts(), ref)


def _allowed_object(name: str) -> Any:
    """The object an allowed function name stands for (for comparing with context=)."""
    if name == "np":
        return np
    return _UFUNCS.get(name)


# ---- scanning ----------------------------------------------------------------------------


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


# ---- names: data columns and context= ---------------------------------------------------


def _is_array_like(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray, pd.Series, pd.Index, pd.Categorical,
                              pd.api.extensions.ExtensionArray))


class _Names:
    """What the names of one formula refer to: columns of ``data``, then ``context=``.

    Each variable the formula uses gets an alias (``_v0``, ``_v1``, ...): formulaic sees
    only the aliases, so column names with dots, spaces or Python keywords need no
    quoting, and no name of the formula can reach anything but its own column.
    """

    def __init__(self, formula: str, data: pd.DataFrame, context: Mapping[str, Any] | None):
        self.formula = formula
        self.data = data
        self.columns = {c for c in data.columns if isinstance(c, str)}
        self.context = {} if context is None else context
        self.aliases: dict[str, str] = {}        # variable -> alias, in order of use
        self.arrays: dict[str, pd.Series] = {}   # context= arrays, aligned with data
        self.scalars: dict[str, float] = {}      # alias -> context= number
        # Variables of the terms (not only of the response): what new data must have.
        self.predictors: set[str] = set()
        self.in_response = False
        # Factor expressions (aliases, checked code) in order of first appearance: R
        # writes the variables of an interaction in this order (Sex + age:Sex -> Sex:age).
        self.order: dict[str, int] = {}

    def appear(self, expr: str) -> str:
        self.order.setdefault(expr, len(self.order))
        return expr

    def is_variable(self, name: str) -> bool:
        return name in self.columns or name in self.context

    def variable(self, name: str) -> str:
        """The alias of a variable, checking a context= value on first use."""
        if not self.in_response:
            self.predictors.add(name)
        if name in self.aliases:
            return self.aliases[name]
        if name not in self.columns:
            if name not in self.context:
                self.unknown(name)
            self._take_context(name)
        alias = f"_v{len(self.aliases)}"
        self.aliases[name] = alias
        if name in self.context and name not in self.columns and name not in self.arrays:
            self.scalars[alias] = self._context_number(name)
        return alias

    def group(self, name: str) -> str:
        """A grouping factor: a column of data or a context= array."""
        self.variable(name)
        if name not in self.columns and name not in self.arrays:
            raise TypeError(f"in formula {self.formula!r}, grouping factor {name!r} from "
                            "context= is a number; a grouping factor needs one label per row")
        return name

    def unknown(self, name: str) -> None:
        hint = ""
        if name in _TRANSFORMS or name in _UFUNCS or name == "offset":
            hint = f"; {name} is a function: call it, {name}(x)"
        raise ValueError(f"formula {self.formula!r} uses [{name!r}], which are not columns of "
                         f"data (columns: {list(map(str, self.data.columns))}) nor names given "
                         f"in context={hint}")

    def function(self, name: str) -> None:
        """Refuse a call whose function name is also a column or a different context value."""
        if name in self.columns:
            raise ValueError(f"in formula {self.formula!r}, {name!r} is both a column of data "
                             f"and the function {name}(); rename the column")
        if name in self.context and self.context[name] is not _allowed_object(name):
            raise TypeError(f"in formula {self.formula!r}, context[{name!r}] would replace the "
                            f"allowed function {name}(); remove it from context")

    def _take_context(self, name: str) -> None:
        value = self.context[name]
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, numbers.Real):
            return  # a number: checked by _context_number
        if _is_array_like(value):
            if np.ndim(value) != 1:
                raise ValueError(f"context[{name!r}] must be one-dimensional (one value per row "
                                 f"of data), got shape {np.shape(value)}")
            if isinstance(value, pd.Series):
                self.arrays[name] = self._aligned(name, value)
                return
            # an array has no labels: by position, in the row order of data
            values = pd.Series(value).reset_index(drop=True)
            if len(values) != len(self.data):
                raise ValueError(f"context[{name!r}] has {len(values)} values, data has "
                                 f"{len(self.data)} rows: an array in context= is a variable "
                                 "with one value per row of data")
            values.index = self.data.index
            self.arrays[name] = values
            return
        what = ("a function or module" if callable(value) or isinstance(value, types.ModuleType)
                else f"a {type(value).__name__}")
        raise TypeError(f"in formula {self.formula!r}, context[{name!r}] is {what}: context= "
                        "may hold numbers and arrays (one value per row of data) only. "
                        + _allowed_text())

    def _aligned(self, name: str, series: pd.Series) -> pd.Series:
        """A context= Series on the rows of data, matched by index label as pandas
        aligns (``data.assign(k=series)``); refused where pandas would leave holes."""
        index = self.data.index
        if series.index.equals(index):
            return series.set_axis(index)
        if not series.index.is_unique:
            dup = list(series.index[series.index.duplicated()].unique()[:5])
            raise ValueError(f"context[{name!r}] is a Series with repeated index labels {dup}: "
                             "it is matched with the rows of data by index label, so each "
                             "label must appear once (pass .to_numpy() to pair by position)")
        absent = index[~index.isin(series.index)]
        if len(absent):
            raise ValueError(f"context[{name!r}] is a Series whose index has no label for "
                             f"{len(absent)} row(s) of data (e.g. {list(absent[:5])}): a Series "
                             "is matched with the rows of data by index label, as pandas "
                             "aligns it (pass .to_numpy() to pair by position)")
        return series.reindex(index)

    def _context_number(self, name: str) -> float:
        value = self.context[name]
        value = value.item() if isinstance(value, np.ndarray) else value
        if isinstance(value, bool) or not math.isfinite(float(value)):
            raise ValueError(f"context[{name!r}] must be a finite number, got {value!r}")
        return float(value)

    def frame(self) -> pd.DataFrame:
        """The variables the formula uses, by their names, with the index of data."""
        return pd.DataFrame({name: self.data[name] if name in self.columns else
                             self.arrays[name] for name in self.aliases
                             if name in self.columns or name in self.arrays},
                            index=self.data.index)

    def naming(self) -> _Naming:
        return _Naming({alias: _r_name(name) for name, alias in self.aliases.items()},
                       dict(self.order))


@dataclass(frozen=True)
class _Naming:
    """What lme4's column names need: the variables' names as R writes them (by alias) and
    the order in which factors first appear in the formula."""

    display: dict[str, str]
    order: dict[str, int]


# ---- checking expressions -------------------------------------------------------------------

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
           ast.Mod: "%", ast.FloorDiv: "//"}
_UNARY = (ast.USub, ast.UAdd)
_COMPARE = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
# Plain-words names of the refused Python constructs, for the error messages.
_REFUSED = {
    ast.Subscript: "a subscript", ast.Lambda: "a lambda", ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a generator expression", ast.NamedExpr: "an assignment expression (:=)",
    ast.IfExp: "a conditional expression", ast.BoolOp: "'and'/'or'",
    ast.JoinedStr: "an f-string", ast.Starred: "a starred argument", ast.Dict: "a dict",
    ast.Set: "a set", ast.List: "a list", ast.Tuple: "a tuple", ast.Slice: "a slice",
    ast.Await: "'await'", ast.Yield: "'yield'", ast.YieldFrom: "'yield'",
}


# A backticked name, or a run of name characters (R's: word characters and dots; any
# character outside ASCII but whitespace, so that nothing outside ASCII reaches Python's
# parser, which would normalise it).
# A string literal is kept as written (only relevel's ref takes one; everywhere else the
# checker refuses it).
_QUOTED_OR_NAME = re.compile(r"`([^`]*)`|((?:[\w.]|[^\x00-\x7f\s])+)"
                             r"""|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_STRING = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


class _Refused(Exception):
    """A piece of an expression outside the allow-list (becomes a ValueError)."""

    def __init__(self, what: str, node: ast.AST):
        super().__init__(what)
        self.what, self.node = what, node


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name (R's dotted names), else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


class _Checker:
    """Checks the Python parts of a formula against the allow-list and rewrites them.

    The rewritten code uses the variables' aliases, R's ``^`` as ``**``, numbers as
    floats in arithmetic (R's numbers are doubles: no integer overflow, no huge Python
    integers from ``10^10^10``) and TRUE/FALSE as Python booleans. Only that code is
    handed to formulaic.
    """

    def __init__(self, formula: str, names: _Names):
        self.formula = formula
        self.names = names

    # -- entry points --

    def expression(self, text: str, piece: str) -> str:
        """Checked and rewritten Python code for the expression ``text``."""
        tree, quoted, code = self._parse(text, piece)
        try:
            self._no_dunders(tree, quoted)
            node = self._value(tree.body, quoted)
        except _Refused as refused:
            raise self._error(refused, code, quoted, piece) from None
        return ast.unparse(node)

    def offset_argument(self, text: str, piece: str) -> str | None:
        """The checked argument of ``offset(...)`` when ``text`` is such a call, else None."""
        if not re.match(r"\s*offset\s*\(", text):
            return None
        tree, quoted, code = self._parse(text, piece)
        call = tree.body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == "offset"):
            return None
        if self.names.is_variable("offset"):
            self.names.function("offset")
        try:
            self._no_dunders(tree, quoted)
            if len(call.args) != 1 or call.keywords or isinstance(call.args[0], ast.Starred):
                raise _Refused("offset() takes one argument", call)
            node = self._value(call.args[0], quoted)
        except _Refused as refused:
            raise self._error(refused, code, quoted, piece) from None
        return ast.unparse(node)

    # -- parsing and messages --

    def _parse(self, text: str, piece: str) -> tuple[ast.Expression, dict[str, str], str]:
        # Backticks quote a name (formulaic's and R's convention): replace each by a
        # placeholder identifier that occurs nowhere else in the text. So is every name
        # with a character outside ASCII: Python's parser NFKC-normalises identifiers
        # (full-width ``ｘ`` reads as ``x``, the micro sign ``µ`` as Greek ``μ``), and
        # a name must be matched exactly as the data spells it.
        prefix = "_q"
        while prefix in text:
            prefix += "_"
        quoted: dict[str, str] = {}

        def placeholder(match: re.Match) -> str:
            if match.group(3) is not None:
                return match.group(3)  # a string literal: its characters are not names
            name = match.group(1) if match.group(1) is not None else match.group(2)
            if match.group(1) is None and name.isascii():
                return name
            key = f"{prefix}{len(quoted)}"
            quoted[key] = name
            return key

        code = _QUOTED_OR_NAME.sub(placeholder, text)
        # R's power, remainder and integer division, in Python's spelling. ``^`` becomes
        # ``**`` in the text, not in the tree: Python's ``^`` (XOR) binds more loosely than
        # ``+`` and associates to the left, ``**`` like R's ``^`` binds tightest and
        # associates to the right (``2*x^2 + 1``, ``x^2^0.5``).
        code = code.replace("^", "**").replace("%/%", "//").replace("%%", "%")
        if "`" in _STRING.sub("", code):
            raise ValueError(f"in formula {self.formula!r}, {piece!r} has an unmatched backtick")
        try:
            tree = ast.parse(code.strip(), mode="eval")
        except SyntaxError as err:
            raise ValueError(f"in formula {self.formula!r}, {text.strip()!r} is not a valid "
                             f"expression ({err.msg}). " + _allowed_text()) from None
        return tree, quoted, code.strip()

    def _error(self, refused: _Refused, code: str, quoted: dict[str, str],
               piece: str) -> ValueError:
        segment = ast.get_source_segment(code, refused.node) or ast.unparse(refused.node)
        for key, name in quoted.items():
            segment = segment.replace(key, f"`{name}`")
        return ValueError(f"in formula {self.formula!r}: {segment!r} in {piece.strip()!r} is not "
                          f"allowed ({refused.what}). " + _allowed_text())

    @staticmethod
    def _no_dunders(tree: ast.AST, quoted: dict[str, str]) -> None:
        # Reported first, whatever else the expression does: the clearest message for
        # the classic escapes through __class__, __globals__, __builtins__, __import__.
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else \
                node.id if isinstance(node, ast.Name) and node.id not in quoted else None
            if name is not None and name.startswith("__"):
                raise _Refused(f"it uses the dunder name {name!r}", node)

    # -- the rules --

    def _value(self, node: ast.AST, quoted: dict[str, str]) -> ast.expr:
        """An expression that computes values from the data."""
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                what = "a string" if isinstance(value, (str, bytes)) else \
                    f"the constant {value!r}"
                raise _Refused(f"{what}; only numbers are allowed", node)
            if not math.isfinite(value):
                raise _Refused("a number that is not finite", node)
            return ast.Constant(float(value))
        if isinstance(node, ast.Name):
            name = quoted.get(node.id, node.id)
            if node.id == "pi" and not self.names.is_variable(name):
                # R's constant (``sin(2 * pi * Time)``); a column or context name wins, as
                # the data come before R's base environment in model.frame; kept as a name
                # so that the column is named as R deparses it
                return ast.Name("pi", ast.Load())
            if node.id not in quoted and not self.names.is_variable(name) and (
                    name in _TRANSFORMS or name in _UFUNCS or name in ("np", "offset")
                    or name in _R_LOGICAL):
                what = "a logical constant (only as a function's parameter)" \
                    if name in _R_LOGICAL else f"the function {name} without a call"
                raise _Refused(what, node)
            return ast.Name(self.names.variable(name), ast.Load())
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted is not None and self.names.is_variable(dotted):
                return ast.Name(self.names.variable(dotted), ast.Load())  # R's Days.x
            raise _Refused("attribute access; only calls np.<function>(x) of the allowed "
                           "functions", node)
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise _Refused(f"the operator {_op_text(node.op)!r}", node)
            return ast.BinOp(self._value(node.left, quoted), node.op,
                             self._value(node.right, quoted))
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, _UNARY):
                raise _Refused(f"the operator {_op_text(node.op)!r}", node)
            return ast.UnaryOp(node.op, self._value(node.operand, quoted))
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise _Refused("a chained comparison", node)
            if not isinstance(node.ops[0], _COMPARE):
                raise _Refused(f"the operator {_op_text(node.ops[0])!r}", node)
            return ast.Compare(self._value(node.left, quoted), node.ops,
                               [self._value(node.comparators[0], quoted)])
        if isinstance(node, ast.Call):
            return self._call(node, quoted)
        raise _Refused(_REFUSED.get(type(node), f"a {type(node).__name__} expression"), node)

    def _function(self, func: ast.AST, quoted: dict[str, str]) -> tuple[str, ast.expr]:
        """The allowed function a call names, and the node that calls it."""
        if isinstance(func, ast.Name) and func.id not in quoted:
            name = func.id
            if name in _TRANSFORMS or name in _UFUNCS:
                self.names.function(name)
                return name, ast.Name(name, ast.Load())
            if name == "offset":
                raise _Refused("offset() inside an expression or a random-effects term "
                               "(it must be a term of its own in the fixed part: "
                               "y ~ x + offset(z) + (1 | g))", func)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                func.value.id == "np" and func.attr in _NP_UFUNCS:
            self.names.function("np")
            return f"np.{func.attr}", ast.Attribute(ast.Name("np", ast.Load()), func.attr,
                                                    ast.Load())
        described = ast.unparse(func)
        for key, name in quoted.items():
            described = described.replace(key, f"`{name}`")
        raise _Refused(f"{described!r} is not an allowed function", func)

    def _call(self, node: ast.Call, quoted: dict[str, str]) -> ast.Call:
        name, func = self._function(node.func, quoted)
        for arg in [*node.args, *node.keywords]:
            if isinstance(arg, ast.Starred) or (isinstance(arg, ast.keyword) and arg.arg is None):
                raise _Refused("*args or **kwargs", arg)
        if not node.args:
            raise _Refused(f"{name}() without its data argument", node)
        spec = _TRANSFORMS.get(name, _Transform(name))
        params = dict(spec.params)
        if len(node.args) - 1 > spec.positional:
            plural = "s" if spec.positional else ""
            raise _Refused(f"{name}() takes at most {1 + spec.positional} positional "
                           f"argument{plural}: {spec.usage or name + '(x)'}", node)
        args = [self._value(node.args[0], quoted)]
        given = set()
        for (param, kind), arg in zip(spec.params, node.args[1:]):
            given.add(param)
            args.append(self._parameter(name, param, kind, arg))
        keywords = []
        for keyword in node.keywords:
            if keyword.arg not in params:
                raise _Refused(f"{name}() has no parameter {keyword.arg!r}: "
                               f"{spec.usage or name + '(x)'}", keyword)
            if keyword.arg in given:
                raise _Refused(f"{keyword.arg!r} given twice", keyword)
            given.add(keyword.arg)
            keywords.append(ast.keyword(keyword.arg, self._parameter(
                name, keyword.arg, params[keyword.arg], keyword.value)))
        if name == "relevel" and "ref" not in given:
            raise _Refused(f"relevel() without ref: {spec.usage}", node)
        if name == "C" and "base" in given:
            contr = args[1] if len(args) > 1 else next(
                (k.value for k in keywords if k.arg == "contr"), None)
            if contr is not None and _CONTRAST_KINDS[_dotted(contr)][0] != "treatment":
                raise _Refused(f"C(): base = is a parameter of treatment contrasts, not of "
                               f"{_dotted(contr)}", node)
        return ast.Call(func, args, keywords)

    def _parameter(self, function: str, param: str, kind: str, node: ast.AST) -> ast.expr:
        """A literal parameter value (no variables, no arithmetic: nothing to evaluate)."""
        if kind == "contrast":
            # a name of the list, as written (never a variable: R's C() takes no column here)
            if not isinstance(node, (ast.Name, ast.Attribute)) or \
                    _dotted(node) not in _CONTRAST_KINDS:
                quoted = isinstance(node, ast.Constant) and node.value in _CONTRAST_KINDS
                raise _Refused(f"{function}(): {param} must be one of {', '.join(CONTRASTS)}"
                               + (" (a name, without quotes)" if quoted else ""), node)
            return ast.parse(_dotted(node), mode="eval").body
        if kind == "level" and isinstance(node, ast.Constant) and isinstance(node.value, str):
            return ast.Constant(node.value)
        value = _literal(node)
        bad = _Refused(f"{function}(): {param} must be {_KIND_TEXT[kind]}", node)
        if kind == "bool":
            if not isinstance(value, bool):
                raise bad
        elif kind == "bool_or_number":
            if not isinstance(value, (bool, float)):
                raise bad
        elif kind == "count":
            if isinstance(value, bool) or not isinstance(value, float) or \
                    not value.is_integer() or not 1 <= value < max(len(self.names.data), 2):
                raise _Refused(f"{function}(): {param} must be a whole number from 1 to the "
                               f"number of rows - 1 ({len(self.names.data) - 1})", node)
            value = int(value)
        elif kind == "numbers":
            if not isinstance(value, list):
                raise bad
        elif kind in ("position", "level"):
            if isinstance(value, bool) or not isinstance(value, float) or \
                    not value.is_integer() or not 1 <= value <= 1e9:
                raise bad
            value = int(value)
        if isinstance(value, list):
            return ast.List([ast.Constant(v) for v in value], ast.Load())
        return ast.Constant(value)


_KIND_TEXT = {"bool": "TRUE or FALSE", "bool_or_number": "TRUE, FALSE or a number",
              "numbers": "c(...) of numbers", "count": "a whole number",
              "position": "a whole number from 1 (a level's position)",
              "level": 'a level as a string ("b") or its position (a whole number from 1)'}


def _literal(node: ast.AST) -> Any:
    """The value of a literal parameter: a number, TRUE/FALSE, or c(...)/[...] of numbers.

    Returns float, bool or list of float; None when ``node`` is no such literal.
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value) if math.isfinite(node.value) else None
    if isinstance(node, ast.Name) and node.id in _R_LOGICAL:
        return _R_LOGICAL[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
        inner = _literal(node.operand)
        if isinstance(inner, float):
            return -inner if isinstance(node.op, ast.USub) else inner
        return None
    items = None
    if isinstance(node, (ast.List, ast.Tuple)):
        items = node.elts
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == "c" and not node.keywords:
        items = node.args
    if items is not None:
        values = [_literal(item) for item in items]
        if all(isinstance(v, float) for v in values):
            return values
    return None


def _op_text(op: ast.AST) -> str:
    return {ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>",
            ast.MatMult: "@", ast.Invert: "~", ast.Not: "not", ast.Is: "is",
            ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}.get(type(op),
                                                                        type(op).__name__)


# ---- the formula language around the expressions --------------------------------------------

_WORD = re.compile(r"[\w.]+")  # R's names: letters (any alphabet), digits, "_", "."
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_OPERATOR = re.compile(r"[+\-*/:^~|!&<>=,;@$?]+")
_FORMULA_OPERATOR = re.compile(r"[+\-]+|(?:\*\*|[*/:^])[+\-]*")


def _closing(text: str, start: int, formula: str) -> int:
    """Index of the bracket closing the one at ``start`` (quotes and backticks skipped)."""
    stack, pos, quote = [], start, None
    while pos < len(text):
        char = text[pos]
        if quote is not None:
            if char == "\\":
                pos += 1
            elif char == quote:
                quote = None
        elif char in _QUOTES:
            quote = char
        elif char in _OPEN:
            stack.append(_OPEN[char])
        elif char in _CLOSE:
            if not stack or stack.pop() != char:
                break
            if not stack:
                return pos
        pos += 1
    raise ValueError(f"in formula {formula!r}, the bracket at {text[start:start + 20]!r} is "
                     "never closed")


def _tokens(text: str, formula: str) -> Iterator[tuple[str, str]]:
    """Tokens of a formula part: ``("name" | "number" | "code" | "op" | "(" | ")", text)``.

    ``code`` is Python evaluated by formulaic: a call ``f(...)`` (a name followed at once
    by a bracket, as formulaic reads it, with whatever brackets and names follow) or the
    inside of ``{...}``. Everything else is the formula language, whose names are
    variables.
    """
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char.isspace():
            pos += 1
        elif char == "`":
            end = text.find("`", pos + 1)
            if end < 0:
                raise ValueError(f"in formula {formula!r}, {text.strip()!r} has an unmatched "
                                 "backtick")
            yield "name", text[pos + 1:end]
            pos = end + 1
        elif char == "{":
            end = _closing(text, pos, formula)
            yield "code", text[pos + 1:end]
            pos = end + 1
        elif char in "()":
            yield char, char
            pos += 1
        elif char == "%":
            end = text.find("%", pos + 1)
            operator = text[pos:end + 1] if end > 0 else text[pos:]
            if operator != "%in%":
                raise ValueError(f"in formula {formula!r}, the operator {operator!r} is not "
                                 "part of the formula language (%in% is)")
            yield "op", operator
            pos = end + 1
        elif _WORD.match(text, pos):
            end = _WORD.match(text, pos).end()
            if end < len(text) and text[end] in "([":
                # A call (or subscript): formulaic hands all of it to Python, so we check
                # all of it, including brackets and names chained after it.
                while end < len(text) and (text[end] in "([" or _WORD.match(text, end)):
                    end = _closing(text, end, formula) + 1 if text[end] in "([" else \
                        _WORD.match(text, end).end()
                yield "code", text[pos:end]
            elif _NUMBER.fullmatch(text, pos, end):
                yield "number", text[pos:end]
            else:
                yield "name", text[pos:end]
            pos = end
        elif _OPERATOR.match(text, pos):
            end = _OPERATOR.match(text, pos).end()
            yield "op", text[pos:end]
            pos = end
        elif char in "'\"":
            raise ValueError(f"in formula {formula!r}, {text.strip()!r}: strings are not allowed "
                             "in a formula. " + _allowed_text())
        else:
            raise ValueError(f"in formula {formula!r}, unexpected character {char!r} in "
                             f"{text.strip()!r}")


def _compile_part(text: str, checker: _Checker, what: str) -> str:
    """A checked formula part (terms), rewritten for formulaic with aliases and code blocks."""
    formula = checker.formula
    out = []
    for kind, token in _tokens(text, formula):
        if kind == "name":
            if token == ".":
                raise ValueError(f"in formula {formula!r}, '.' (all other columns) is not "
                                 "supported: list the variables")
            out.append(checker.names.appear(checker.names.variable(token)))
        elif kind == "code":
            out.append("{" + checker.names.appear(checker.expression(token, text)) + "}")
        elif kind == "op":
            if token == "~":
                raise ValueError(f"in formula {formula!r}, '~' may appear once, between the "
                                 "response and the terms")
            if token == "|":
                raise ValueError(f"in formula {formula!r}, {text.strip()!r}: a random-effects "
                                 "term must be written '(left | group)'")
            if token != "%in%" and not _FORMULA_OPERATOR.fullmatch(token):
                raise ValueError(f"in formula {formula!r}, the operator {token!r} in "
                                 f"{text.strip()!r} is not part of the formula language "
                                 "(+ - * / : ^ %in% are)")
            # R's "b %in% a" is the term a:b (formulaic's %in% adds a as well); ":" binds
            # tighter than %in% in R, but the terms come out the same.
            out.append(":" if token == "%in%" else token)
        else:
            out.append(token)
    if not out:
        raise ValueError(f"in formula {formula!r}, the {what} is empty")
    return " ".join(out)


def _compile_response(text: str, checker: _Checker) -> str:
    tokens = list(_tokens(text, checker.formula))
    if len(tokens) > 1 and not any(kind == "op" and token in ("+", "~", "|", "||", "%in%")
                                   for kind, token in tokens):
        # an arithmetic response (R's incidence/size ~ ...): one expression, checked as code
        tokens = [("code", text.strip())]
    if len(tokens) != 1 or tokens[0][0] not in ("name", "code"):
        raise ValueError(f"in formula {checker.formula!r}, the response {text.strip()!r} must "
                         "be one variable or one expression such as log(y)")
    kind, token = tokens[0]
    checker.names.in_response = True
    try:
        if kind == "name":
            return checker.names.appear(checker.names.variable(token))
        return "{" + checker.names.appear(checker.expression(token, text)) + "}"
    finally:
        checker.names.in_response = False


def _formula(formulaic: Any, text: str, names: _Names, formula: str) -> Any:
    """formulaic's parse of checked text, with every factor checked once more."""
    try:
        parsed = formulaic.Formula(text)
    except Exception as err:  # formulaic's grammar errors: report them on the user's formula
        raise ValueError(f"formula {formula!r} could not be parsed: {err}") from None
    allowed_names = set(names.aliases.values()) | set(names.scalars)
    for factor in _factors(parsed):
        method = factor.eval_method.value
        if (method == "lookup" and factor.expr not in allowed_names) or \
                (method == "literal" and not _NUMBER.fullmatch(factor.expr)) or \
                (method == "python" and not _verified(factor.expr, allowed_names)) or \
                method not in ("lookup", "literal", "python"):
            # Cannot happen for text built by _compile_part; a second line of defence.
            raise ValueError(f"formula {formula!r}: refused the factor {factor.expr!r}")
    return parsed


def _factors(parsed: Any) -> Iterator[Any]:
    if hasattr(parsed, "lhs") or hasattr(parsed, "rhs"):
        for side in ("lhs", "rhs"):
            if hasattr(parsed, side):
                yield from _factors(getattr(parsed, side))
        return
    for term in parsed:
        yield from term.factors


def _verified(code: str, variables: set[str]) -> bool:
    """An independent whitelist walk over code produced by :class:`_Checker`."""
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        return False
    functions = set(_TRANSFORMS) | set(_UFUNCS)
    parameters = {param for transform in _TRANSFORMS.values() for param, _ in transform.params}
    contrasts = {name for name in _CONTRAST_KINDS if "." not in name}
    # strings: only as relevel's ref
    levels = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call) and
              isinstance(node.func, ast.Name) and node.func.id == "relevel"
              for arg in [*node.args[1:2], *(k.value for k in node.keywords if k.arg == "ref")]}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in variables and node.id not in functions and \
                    node.id not in contrasts and node.id not in ("np", "contr", "pi"):
                return False
        elif isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id == "np"
                    and node.attr in _NP_UFUNCS) and _dotted(node) not in _CONTRAST_KINDS:
                return False
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)) and not (  # bool is an int
                    isinstance(node.value, str) and id(node) in levels):
                return False
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in functions) and not \
                    isinstance(node.func, ast.Attribute):
                return False
        elif isinstance(node, ast.keyword):
            if node.arg not in parameters:
                return False
        elif not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare,
                                   ast.List, ast.Load, ast.operator,
                                   ast.unaryop, ast.cmpop)):
            return False
    return True


# ---- column names as lme4 writes them -------------------------------------------------------

_R_RESERVED = {"if", "else", "repeat", "while", "function", "for", "next", "break", "TRUE",
               "FALSE", "NULL", "Inf", "NaN", "NA", "in"}
# R's operator precedence (higher binds tighter) and spelling in deparsed names.
_R_PRECEDENCE = {ast.Pow: 15, ast.Mod: 12, ast.FloorDiv: 12, ast.Mult: 11, ast.Div: 11,
                 ast.Add: 10, ast.Sub: 10}
_R_UNARY_PRECEDENCE, _R_COMPARE_PRECEDENCE = 14, 9
_R_BINARY = {ast.Pow: "^", ast.Mod: "%%", ast.FloorDiv: "%/%", ast.Mult: " * ", ast.Div: "/",
             ast.Add: " + ", ast.Sub: " - "}
_R_COMPARE = {ast.Lt: " < ", ast.LtE: " <= ", ast.Gt: " > ", ast.GtE: " >= ", ast.Eq: " == ",
              ast.NotEq: " != "}


def _r_name(name: str) -> str:
    """A variable name as R writes it: backticks unless it is a syntactic name."""
    syntactic = re.fullmatch(r"(?:[^\W\d_]|\.(?!\d))[\w.]*|\.", name)  # [^\W\d_]: a letter
    return name if syntactic and name not in _R_RESERVED else f"`{name}`"


def _r_number(value: float) -> str:
    """A number as R's deparse writes it: 15 significant digits, the shorter notation."""
    value = float(f"{value:.15g}")
    fixed = np.format_float_positional(value, trim="-")
    scientific = np.format_float_scientific(value, trim="-", exp_digits=2)
    return fixed if len(fixed) <= len(scientific) else scientific


def _r_string(value: str) -> str:
    """A string as R's deparse writes it: in double quotes, with R's escapes."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return '"' + "".join(escapes.get(c, c) for c in value) + '"'


def _deparse(node: ast.AST, names: Mapping[str, str]) -> str:
    """Checked code written back as R would deparse it (aliases -> names, ** -> ^)."""

    def precedence(n: ast.AST) -> int:
        if isinstance(n, ast.BinOp):
            return _R_PRECEDENCE[type(n.op)]
        if isinstance(n, ast.UnaryOp) or (isinstance(n, ast.Constant) and
                                          isinstance(n.value, (int, float)) and n.value < 0):
            return _R_UNARY_PRECEDENCE
        return _R_COMPARE_PRECEDENCE if isinstance(n, ast.Compare) else 100

    def wrapped(n: ast.AST, needed: int) -> str:
        text = go(n)
        return f"({text})" if precedence(n) < needed else text

    def go(n: ast.AST) -> str:
        if isinstance(n, ast.Name):
            return names.get(n.id, n.id)
        if isinstance(n, ast.Constant):
            if isinstance(n.value, bool):
                return "TRUE" if n.value else "FALSE"
            if isinstance(n.value, str):
                return _r_string(n.value)
            return _r_number(n.value)
        if isinstance(n, ast.Attribute):
            return f"{go(n.value)}.{n.attr}"
        if isinstance(n, ast.BinOp):
            level = _R_PRECEDENCE[type(n.op)]
            if isinstance(n.op, ast.Pow):  # right-associative; R writes x^-1 unbracketed
                right = go(n.right) if isinstance(n.right, ast.UnaryOp) else \
                    wrapped(n.right, level)
                return f"{wrapped(n.left, level + 1)}^{right}"
            return f"{wrapped(n.left, level)}{_R_BINARY[type(n.op)]}{wrapped(n.right, level + 1)}"
        if isinstance(n, ast.UnaryOp):
            sign = "-" if isinstance(n.op, ast.USub) else "+"
            return sign + wrapped(n.operand, _R_UNARY_PRECEDENCE)
        if isinstance(n, ast.Compare):
            return (wrapped(n.left, _R_COMPARE_PRECEDENCE + 1) + _R_COMPARE[type(n.ops[0])]
                    + wrapped(n.comparators[0], _R_COMPARE_PRECEDENCE + 1))
        if isinstance(n, ast.Call):
            args = [go(a) for a in n.args] + [f"{k.arg} = {go(k.value)}" for k in n.keywords]
            return f"{go(n.func)}({', '.join(args)})"
        if isinstance(n, (ast.List, ast.Tuple)):
            return f"c({', '.join(go(e) for e in n.elts)})"
        return ast.unparse(n)  # pragma: no cover - the checker admits nothing else

    return go(node)


def _is_logical(node: ast.AST) -> bool:
    """A comparison, or I() of one: lme4 names its column with the suffix TRUE."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "I" \
            and len(node.args) == 1:
        node = node.args[0]
    return isinstance(node, ast.Compare)


def _raw_poly(node: ast.AST) -> bool:
    """``poly(x, k, raw = TRUE)``: formulaic numbers its columns from 0, R from 1."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
        node.func.id == "poly" and any(k.arg == "raw" and isinstance(k.value, ast.Constant)
                                       and k.value.value is True for k in node.keywords)


def _factor_name(expr: str, names: Mapping[str, str]) -> tuple[str, str, int]:
    """A formulaic factor as lme4 names it, the suffix lme4 adds for a logical, and the
    shift from formulaic's column numbers to R's."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:  # pragma: no cover - factors come from checked code
        return expr, "", 0
    return (_deparse(tree.body, names), "TRUE" if _is_logical(tree.body) else "",
            int(_raw_poly(tree.body)))


def _lme4_names(spec: Any, naming: _Naming) -> list[str]:
    """formulaic's column names in lme4's spelling.

    ``Intercept`` -> ``(Intercept)``; each factor of a column's term written as R
    deparses it (``I(_v0 ** 2.0)`` -> ``I(Days^2)``); a dummy column of a categorical
    variable ``Sex`` (``Sex[T.Female]`` with treatment contrasts, ``Sex[Female]`` with full
    dummy coding) -> ``SexFemale``, also inside interactions (``age:SexFemale``); the
    column ``k`` of a multi-column transform (``poly(Days, 2)[1]``) -> ``poly(Days, 2)1``;
    the factors of an interaction in the order they first appear in the formula.
    """
    levels: dict[str, dict[str, str]] = {}  # factor -> formulaic's level name -> R's
    for var, (kind, state) in spec.encoder_state.items():
        contrasts = state.get("contrasts") if isinstance(state, Mapping) else None
        if getattr(kind, "value", kind) == "categorical" and contrasts is not None:
            levels[str(var)] = {str(level): _r_label(level) for level in contrasts.levels}
    out = list(spec.column_names)
    crossed = _crossed_factors(spec)
    for term, columns in spec.term_indices.items():
        exprs = crossed.get(str(term)) or [factor.expr for factor in term.factors]
        for i in columns:
            out[i] = "(Intercept)" if str(term) == "1" else \
                _column_name(out[i], exprs, levels, naming)
    return out


def _crossed_factors(spec: Any) -> dict[str, list[str]]:
    """For each term coded as one product of its factors, the factors in the order their
    columns are crossed (the first varies fastest; formulaic names the columns in it)."""
    out = {}
    for s in spec.structure:
        if len(s.scoped_terms) == 1 and s.scoped_terms[0].scale == 1:
            exprs = [str(f.factor.expr) for f in s.scoped_terms[0].factors]
            if sorted(exprs) == sorted(str(f.expr) for f in s.term.factors):
                out[str(s.term)] = exprs
    return out


def _column_name(column: str, exprs: list[str], levels: dict[str, dict[str, str]],
                 naming: _Naming) -> str:
    names = naming.display
    pieces, pos = [], 0
    for k, expr in enumerate(exprs):
        if not column.startswith(expr, pos):
            return _fallback_name(column, names)
        pos += len(expr)
        name, suffix, shift = _factor_name(expr, names)
        if column.startswith("[", pos):
            end = column.find("]:" + exprs[k + 1], pos) if k + 1 < len(exprs) else \
                len(column) - 1 if column.endswith("]") else -1
            if end < 0:
                return _fallback_name(column, names)
            suffix = column[pos + 1:end]
            factor_levels = levels.get(expr, {})
            if suffix.startswith("T.") and suffix[2:] in factor_levels:
                suffix = factor_levels[suffix[2:]]
            elif suffix in factor_levels:
                suffix = factor_levels[suffix]
            elif shift and suffix.isdigit():
                suffix = str(int(suffix) + shift)
            pos = end + 1
        pieces.append((naming.order.get(expr, len(naming.order)), name + suffix))
        if k + 1 < len(exprs):
            if not column.startswith(":", pos):
                return _fallback_name(column, names)
            pos += 1
    if pos != len(column):
        return _fallback_name(column, names)
    return ":".join(piece for _, piece in sorted(pieces, key=lambda p: p[0]))


def _fallback_name(column: str, names: Mapping[str, str]) -> str:  # pragma: no cover
    # A column name of a shape formulaic did not use so far: at least no aliases in it.
    return re.sub(r"\b_v\d+\b", lambda m: names.get(m.group(0), m.group(0)), column)


def _factor_key(spec: Any, expr: str) -> Any:
    """The key of ``spec.factor_variables`` whose expression is ``expr``."""
    for key in spec.factor_variables:
        if str(key) == expr:
            return key
    return expr


def _intercept_columns(spec: Any) -> list[int]:
    return [i for term, cols in spec.term_indices.items() if str(term) == "1" for i in cols]


# ---- R's coding of the terms ------------------------------------------------------------------


def _r_coding(spec: Any, naming: _Naming, data: pd.DataFrame,
              environment: Mapping[str, Any]) -> Any:
    """``spec`` with each term coded as R's ``model.matrix`` codes it, or None if it is
    (``data``: the aliased rows the spec was made from).

    R (the heuristic of Chambers & Hastie 1992, Statistical Models in S, p. 38, which R's
    ``model.matrix`` implements) codes a categorical variable ``F`` of a term ``T`` by
    contrasts when ``T`` without ``F`` is empty or contained in a term before ``T``
    (terms ordered by degree), and by one indicator column per level otherwise; without
    an intercept, the first categorical variable of the first term that has one gets
    indicators. A term's columns are the product of its variables' codings, the first
    variable (in the order the formula names them) varying fastest. So ``a:b`` alone
    codes both factors by indicators: with the intercept the design is rank deficient,
    and lme4 drops the last, aliased column and keeps ``au:bp, ..., av:bq``. formulaic
    instead splits such a term into pieces that keep the design of full rank
    (``b[T.q]``, ``a[T.v]:b[p]``, ...): the same column space, other coefficients.
    Terms formulaic codes as R does are kept.
    """
    from formulaic.materializers.base import EncodedTermStructure
    from formulaic.materializers.types import ScopedFactor, ScopedTerm

    structure = list(spec.structure)
    categorical = {expr for expr, (kind, _) in spec.encoder_state.items()
                   if str(getattr(kind, "value", kind)) == "categorical"}
    evaluated = {str(f.factor.expr): f.factor for s in structure for scoped in s.scoped_terms
                 for f in scoped.factors}
    intercept = any(str(s.term) == "1" for s in structure)
    unset = len(naming.order)

    previous: list[set[str]] = []
    free = not intercept  # R's rule for the first factor of a model without intercept
    rebuilt, changed = [], False
    for s in structure:
        exprs = sorted((str(f.expr) for f in s.term.factors if str(f.expr) != "1"),
                       key=lambda e: naming.order.get(e, unset))
        if not exprs:
            rebuilt.append(s)
            continue
        term_set = set(exprs)
        reduced = {e: e in categorical and (not term_set - {e} or
                                            any(term_set - {e} <= p for p in previous))
                   for e in exprs}
        if free and term_set & categorical:
            reduced[next(e for e in exprs if e in categorical)] = False
            free = False
        previous.append(term_set)
        scoped = s.scoped_terms
        as_r = (len(scoped) == 1 and scoped[0].scale == 1
                and [str(f.factor.expr) for f in scoped[0].factors] == exprs
                and all(bool(f.reduced) == reduced[str(f.factor.expr)] or
                        str(f.factor.expr) not in categorical for f in scoped[0].factors))
        if as_r:
            rebuilt.append(s)
            continue
        if any(e not in evaluated for e in exprs) or any(t.scale != 1 for t in scoped):
            return None  # pragma: no cover - a shape formulaic has not produced so far
        names = [_coded_names(spec, e, reduced[e], data, environment) for e in exprs]
        # formulaic crosses a term's factors with the first varying fastest, as R does
        columns = [":".join(reversed(combo)) for combo in itertools.product(*reversed(names))]
        rebuilt.append(EncodedTermStructure(
            s.term, [ScopedTerm([ScopedFactor(evaluated[e], reduced=reduced[e]) for e in exprs])],
            columns))
        changed = True
    return spec.update(structure=rebuilt) if changed else None


def _coded_names(spec: Any, expr: str, reduced: bool, data: pd.DataFrame,
                 environment: Mapping[str, Any]) -> list[str]:
    """formulaic's names of the columns of one factor, coded by contrasts (``reduced``) or
    by indicators (a numeric factor: its one or several columns)."""
    one = spec.update(formula=f"{int(reduced)} + {expr}", structure=None,
                      ensure_full_rank=reduced)
    names = [str(c) for c in one.get_model_matrix(data.head(1), context=dict(environment),
                                                  na_action="ignore").columns]
    return [n for n in names if n != "Intercept"]


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


@dataclass(frozen=True)
class FixedTerm:
    """One term of the fixed part: the fixed effects it contributes and what it is made of.

    A fit from arrays has terms too (one per column, or columns grouped by the caller): see
    :func:`mixedlm_sklearn.inference.anova.terms_from_columns`.

    Attributes
    ----------
    name : str
        The term as R labels it (``"age:Sex"``: its factors in the order they first appear
        in the formula).
    columns : tuple of int
        Its columns among the fixed effects (``fe_params_`` order, intercept first).
    factors : tuple of str
        The factors whose product the term is, as R writes them (``"Sex"``,
        ``"log(age)"``), in the order their columns are crossed (the first varies fastest).
    numeric : frozenset of str
        Those of ``factors`` that are numeric (covariates), not categorical.
    contrasts : tuple of bool or None
        Per factor, whether it enters through contrasts (``k - 1`` columns for ``k``
        levels, as a factor next to its margins) rather than one column per level (R's
        choice, as :func:`parse_formula` codes every term: ``a:b`` alone has one column
        per level of both). None when the term's columns are not one product of its
        factors.
    """

    name: str
    columns: tuple[int, ...]
    factors: tuple[str, ...]
    numeric: frozenset = frozenset()
    contrasts: tuple[bool, ...] | None = None

    @property
    def order(self) -> int:
        """Number of factors (R's ``attr(terms, "order")``)."""
        return len(self.factors)


@dataclass(frozen=True)
class FixedFactor:
    """One factor of the fixed part (a variable or an expression of variables).

    Attributes
    ----------
    name : str
        As R writes it (``"Sex"``, ``"I(age^2)"``, ``"factor(Days)"``).
    variables : tuple of str
        The variables of the data it is computed from.
    categorical : bool
        Encoded by its levels (a non-numeric column, ``factor(x)``, ``C(x)``), not as numbers.
    levels : tuple or None
        A categorical factor's levels in the fit's order (the first is the reference).
    """

    name: str
    variables: tuple[str, ...]
    categorical: bool
    levels: tuple | None = None


@dataclass
class ModelFrame:  # numpydoc ignore=PR01
    """A formula evaluated on a data frame: the arrays :class:`~mixedlm_sklearn.MixedLMRegressor` fits.

    Attributes
    ----------
    formula : str
        The formula, as given.
    X : DataFrame of shape (n, p)
        Fixed-effects design with lme4 column names, WITHOUT the intercept column when the
        formula has an intercept (the estimator adds it: ``fit_intercept``).
    y : Series of shape (n,)
        The response on the fitted rows.
    terms : list
        Random-effects terms after expanding nesting (``a/b`` gives two terms).
    fit_intercept : bool
        Whether the formula has a fixed intercept (False after ``0 +`` or ``- 1``).
    dropped : Index
        Labels of the rows of ``data`` left out because a model variable is missing
        (lme4's ``na.action = na.omit``).
    offset : Series of shape (n,) or None
        The sum of the formula's ``offset(...)`` terms (None without one).
    rows : DataFrame of shape (n, k)
        The model's variables (by their names: response, covariates, grouping factors,
        ``context=`` arrays) on the fitted rows, indexed like ``X``: the rows after
        dropping those with a missing value, categoricals without their unused levels.

    See Also
    --------
    mixedlm_sklearn.lmer : Fit a formula; the fit keeps its frame as ``model_frame_``.
    ModelFrame.new_data : The arguments of ``predict`` for new rows.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
    >>> mf = fit.model_frame_
    >>> mf.formula, list(mf.X.columns), len(mf.y)
    ('distance ~ age * Sex + (age | Subject)', ['age', 'SexMale', 'age:SexMale'], 108)
    """

    formula: str
    X: pd.DataFrame
    y: pd.Series
    terms: list[RandomTerm]
    fit_intercept: bool
    dropped: pd.Index = field(default_factory=lambda: pd.Index([]))
    _fixed_spec: Any = field(default=None, repr=False)
    _term_specs: list = field(default_factory=list, repr=False)
    offset: pd.Series | None = None
    _offset_spec: Any = field(default=None, repr=False)
    # variable name -> alias for the columns formulaic sees, and the evaluation context
    # (the allowed functions and the context= numbers): what new_data needs.
    _variables: dict[str, str] = field(default_factory=dict, repr=False)
    _environment: dict[str, Any] = field(default_factory=dict, repr=False)
    _naming: _Naming | None = field(default=None, repr=False)
    rows: pd.DataFrame | None = field(default=None, repr=False)
    # context= numbers by name: what a formula derived from this one (ranova) is evaluated with
    _context_numbers: dict[str, float] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        fixed = (["(Intercept)"] if self.fit_intercept else []) + list(self.X.columns)
        offset = "" if self.offset is None else ", with an offset"
        return (f"ModelFrame({self.formula!r}: {len(self.y)} rows ({len(self.dropped)} dropped), "
                f"fixed {fixed}{offset}, terms {self.terms})")

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
        """Whether the model has one random-effects term (fitted by the one-factor path).

        See Also
        --------
        ModelFrame.fit_arguments : How the terms are passed to the estimator.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> mf = fit.model_frame_
        >>> mf.single_factor
        True
        """
        return len(self.terms) == 1

    def estimator_params(self) -> dict[str, Any]:
        """Give ``fit_intercept`` and ``cov_type`` for :class:`~mixedlm_sklearn.MixedLMRegressor`.

        Returns
        -------
        dict
            The estimator parameters the formula decides.

        See Also
        --------
        ModelFrame.fit_arguments : The arguments of ``fit``.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> mf = fit.model_frame_
        >>> mf.estimator_params()
        {'fit_intercept': True, 'cov_type': 'unstructured'}
        """
        diagonal = self.single_factor and self.terms[0].diagonal
        return {
            "fit_intercept": self.fit_intercept and not self._explicit_intercept,
            "cov_type": "diagonal" if diagonal else "unstructured",
        }

    def fit_arguments(self) -> dict[str, Any]:
        """Give ``X``, ``y``, ``groups``, ``Z`` (and ``offset``) for :meth:`~mixedlm_sklearn.MixedLMRegressor.fit`.

        One term: ``groups`` a Series and ``Z`` a DataFrame. Several terms: ``groups`` a
        DataFrame with a column per term and ``Z`` a dict from that column name to the
        term's design. ``offset`` is there only when the formula has ``offset(...)``.

        Returns
        -------
        dict
            Keyword arguments of ``fit``.

        Raises
        ------
        ValueError
            When the formula has no fixed effects (``y ~ 0 + (1 | g)``), which lme4 fits
            but the estimator cannot (it needs at least one fixed-effects column).

        See Also
        --------
        ModelFrame.estimator_params : The estimator's parameters.
        ModelFrame.new_data : The same for new rows, for ``predict``.

        Examples
        --------
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> mf = fit.model_frame_
        >>> args = mf.fit_arguments()
        >>> sorted(args)
        ['X', 'Z', 'groups', 'y']
        >>> refit = MixedLMRegressor(**mf.estimator_params()).fit(**args)
        >>> bool(abs(refit.llf_ - fit.llf_) < 1e-8)
        True
        """
        if not self.fit_intercept and self.X.shape[1] == 0:
            raise ValueError(
                f"formula {self.formula!r} has no fixed effects ('0 +' or '- 1' removed the "
                "intercept and there is no other fixed term); the estimator needs at least one "
                "fixed-effects column. Keep the intercept (drop '0 +' / '- 1') or add a "
                "covariate; an intercept fixed at 0 is not supported")
        args = self._design_arguments(self.X, self.terms if self.single_factor else None,
                                      self._pieces())
        args["y"] = self.y
        if self.offset is not None:
            args["offset"] = self.offset
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
        """Build the designs of new rows for :meth:`~mixedlm_sklearn.MixedLMRegressor.predict`: ``X``, ``groups``, ``Z``.

        Categorical levels and stateful transforms (``center(x)``, ``scale(x)``,
        ``poly(x, 2)``, ``bs(x)``) are those of the fitted data; numbers given through
        ``context=`` are those of the fit, arrays given through ``context=`` must be
        columns of ``data`` now. With ``offset(...)`` in the formula the result has an
        ``offset`` entry too. No response is needed; rows with missing values are an error.

        Parameters
        ----------
        data : DataFrame
            The new rows, with the model's variables (the response is not needed).

        Returns
        -------
        dict
            Keyword arguments of ``predict`` (and of ``predict_interval``).

        Raises
        ------
        ValueError
            When a row has a missing value, or a variable is missing.

        See Also
        --------
        ModelFrame.fit_arguments : The same for the fitted rows.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> est = lmer("Reaction ~ Days + (Days | Subject)", df)
        >>> new = df[df["Days"] == 9].head(2)
        >>> est.predict(**est.model_frame_.new_data(new)).round(2).tolist()
        [430.66, 227.63]
        """
        aliased = self._aliased(data, list(self._variables))
        X = _evaluate(self._fixed_spec, aliased, self._environment, self._naming, self.formula)
        intercept = _intercept_columns(self._fixed_spec)
        X = X.drop(columns=[X.columns[i] for i in intercept])
        terms = []
        for term, spec in zip(self.terms, self._term_specs):
            labels = _group_labels(data, list(term.factors), term.group)
            Z = _evaluate(spec, aliased, self._environment, self._naming, self.formula)
            terms.append(RandomTerm(term.group, labels, Z, term.diagonal, term.left,
                                    term.factors))
        pieces = ModelFrame(self.formula, X, pd.Series(dtype=float), terms,
                            self.fit_intercept)._pieces()
        args = self._design_arguments(X, terms if self.single_factor else None, pieces)
        if self._offset_spec is not None:
            args["offset"] = self.offset_values(data)
        return args


    def reduced(self, formula: str) -> "ModelFrame":
        """Evaluate another formula (a reduced model, e.g. of ``ranova``) on this frame's rows.

        The formula is evaluated on the fitted rows with the same ``context=`` numbers.

        Parameters
        ----------
        formula : str
            The other formula, of the same data.

        Returns
        -------
        ModelFrame
            Its frame.

        See Also
        --------
        mixedlm_sklearn.inference.anova.ranova : The tests that use it.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> frame = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy()).model_frame_
        >>> [list(t.Z.columns) for t in frame.reduced("Reaction ~ Days + (1 | Subject)").terms]
        [['(Intercept)']]
        """
        return parse_formula(formula, self.rows, context=self._context_numbers or None)

    def _aliased(self, data: pd.DataFrame, variables: list[str]) -> pd.DataFrame:
        """``variables`` of ``data`` under the aliases formulaic knows them by (checked)."""
        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        absent = [name for name in variables if name not in data.columns]
        if absent:
            raise ValueError(f"new data has no column {absent} (variables of the formula "
                             f"{self.formula!r}; columns: {list(map(str, data.columns))})")
        missing = [name for name in variables if data[name].isna().any()]
        if missing:
            raise ValueError(f"new data has missing values in {missing}: predictions need "
                             "every model variable")
        return pd.DataFrame({self._variables[name]: data[name] for name in variables},
                            index=data.index)

    # ---- the fixed part's structure (what anova tables and marginal means need) ---------

    def _fe_order(self) -> list[int]:
        """Columns of the fixed spec in ``fe_params_`` order: the intercept first."""
        intercept = _intercept_columns(self._fixed_spec)
        return intercept + [i for i in range(len(self._fixed_spec.column_names))
                            if i not in intercept]

    def _factor_kind(self, expr: str) -> str:
        kind = self._fixed_spec.encoder_state.get(expr, (None, None))[0]
        return str(getattr(kind, "value", kind))

    def _factor_exprs(self) -> dict[str, str]:
        """R's name of each factor of the fixed part -> its checked (aliased) code."""
        out = {}
        for term in self._fixed_spec.term_indices:
            for factor in term.factors:
                expr = str(factor.expr)
                if expr != "1":
                    out[_factor_name(expr, self._naming.display)[0]] = expr
        return out

    def fixed_factors(self) -> dict[str, FixedFactor]:
        """List the factors of the fixed part, by R's name, in order of appearance.

        Returns
        -------
        dict
            From name to a record of the factor's variables, whether it is categorical and
            its levels.

        See Also
        --------
        ModelFrame.fixed_terms : The terms built from the factors.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> mf = lmer("distance ~ log(age) * Sex + (1 | Subject)", load_orthodont()).model_frame_
        >>> {name: (f.variables, f.categorical, f.levels) for name, f in mf.fixed_factors().items()}
        {'log(age)': (('age',), False, None), 'Sex': (('Sex',), True, ('Female', 'Male'))}
        """
        spec = self._fixed_spec
        names_of = {alias: name for name, alias in self._variables.items()}
        out = {}
        for name, expr in self._factor_exprs().items():
            uses = [v for v in spec.factor_variables.get(_factor_key(spec, expr), set())
                    if v in names_of]
            variables = tuple(sorted((names_of[v] for v in uses),
                                     key=lambda n: list(self._variables).index(n)))
            categorical = self._factor_kind(expr) == "categorical"
            levels = None
            if categorical:
                state = spec.encoder_state[expr][1]
                levels = tuple(state["contrasts"].levels if "contrasts" in state
                               else state["categories"])
            out[name] = FixedFactor(name, variables, categorical, levels)
        return out

    def fixed_terms(self) -> list[FixedTerm]:
        """List the terms of the fixed part (the intercept is not a term), in the formula's order.

        Returns
        -------
        list
            A record per term: its name, columns of ``X`` (intercept first), factors and
            numeric variables.

        See Also
        --------
        ModelFrame.fixed_factors : The factors.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> mf = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont()).model_frame_
        >>> [(t.name, t.columns, t.factors, sorted(t.numeric)) for t in mf.fixed_terms()]
        [('age', (1,), ('age',), ['age']), ('Sex', (2,), ('Sex',), []), ('age:Sex', (3,), ('age', 'Sex'), ['age'])]
        """
        spec, display = self._fixed_spec, self._naming.display
        position = {c: i for i, c in enumerate(self._fe_order())}
        structure = {str(s.term): s for s in spec.structure}
        crossed = _crossed_factors(spec)
        terms = []
        for term, cols in spec.term_indices.items():
            if str(term) == "1":
                continue
            # the factors in the order their columns are crossed, when the term is one
            # product of them (as R codes every term; see _r_coding)
            exprs = crossed.get(str(term)) or [str(f.expr) for f in term.factors]
            names = [_factor_name(e, display)[0] for e in exprs]
            label = ":".join(n for _, n in sorted(
                zip(exprs, names), key=lambda en: self._naming.order.get(en[0], len(exprs))))
            numeric = frozenset(n for e, n in zip(exprs, names)
                                if self._factor_kind(e) != "categorical")
            contrasts = None
            if str(term) in crossed:
                scoped = structure[str(term)].scoped_terms[0]
                reduced = {str(f.factor.expr): bool(f.reduced) for f in scoped.factors}
                contrasts = tuple(reduced[e] and self._factor_kind(e) == "categorical"
                                  for e in exprs)
            terms.append(FixedTerm(label, tuple(position[c] for c in cols), tuple(names),
                                   numeric, contrasts))
        return terms

    def factor_columns(self, factor: str) -> np.ndarray:
        """Evaluate a factor of the fixed part on the fitted rows.

        A categorical factor gives one column per level (in the order of its levels), a
        numeric one its values.

        Parameters
        ----------
        factor : str
            The factor's name, as :meth:`fixed_factors` names it.

        Returns
        -------
        ndarray of shape (n, levels) or (n, 1)
            The columns.

        See Also
        --------
        ModelFrame.fixed_factors : The factors and their levels.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> mf = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont()).model_frame_
        >>> mf.factor_columns("Sex")[:2].tolist(), mf.factor_columns("age")[:2].tolist()
        ([[0.0, 1.0], [0.0, 1.0]], [[8.0], [10.0]])
        """
        exprs = self._factor_exprs()
        if factor not in exprs:
            raise ValueError(f"{factor!r} is not a factor of the fixed part {list(exprs)}")
        expr = exprs[factor]
        one = self._fixed_spec.update(formula=f"0 + {expr}", structure=None,
                                      ensure_full_rank=False)
        rows = self._aliased(self.rows, self._fixed_variables())
        matrix = one.get_model_matrix(rows, context=dict(self._environment), na_action="raise")
        values = np.asarray(matrix, dtype=float)
        if self._factor_kind(expr) != "categorical":
            return values
        state = self._fixed_spec.encoder_state[expr][1]
        names = [str(c) for c in matrix.columns]
        return values[:, [names.index(f"{expr}[{level}]") for level in state["contrasts"].levels]]

    def _fixed_variables(self) -> list[str]:
        """The variables the fixed part reads (by name, in the order of the formula)."""
        return self._spec_variables(self._fixed_spec)

    def _spec_variables(self, spec: Any) -> list[str]:
        used = set()
        for variables in spec.factor_variables.values():
            used |= set(variables)
        return [name for name, alias in self._variables.items() if alias in used]

    def offset_variables(self) -> list[str]:
        """List the variables the formula's ``offset(...)`` terms read.

        Returns
        -------
        list of str
            The variables in the formula's order; empty without an offset.

        See Also
        --------
        ModelFrame.offset_values : The offset evaluated on rows of a data frame.

        Examples
        --------
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy().assign(hours=8.0)
        >>> parse_formula("Reaction ~ Days + offset(log(hours)) + (1 | Subject)", df
        ...               ).offset_variables()
        ['hours']
        """
        return [] if self._offset_spec is None else self._spec_variables(self._offset_spec)

    def offset_values(self, data: pd.DataFrame) -> pd.Series | None:
        """Evaluate the sum of the formula's ``offset(...)`` terms on rows of ``data``.

        Parameters
        ----------
        data : pandas.DataFrame
            Rows to evaluate; needs the variables of :meth:`offset_variables` only.

        Returns
        -------
        pandas.Series or None
            The offset of each row, named ``"offset"``; None without an offset.

        See Also
        --------
        ModelFrame.offset_variables : The variables the offset reads.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> frame = parse_formula("Reaction ~ Days + offset(2 * Days) + (1 | Subject)",
        ...                       load_sleepstudy())
        >>> frame.offset_values(pd.DataFrame({"Days": [0.0, 4.5]})).tolist()
        [0.0, 9.0]
        """
        if self._offset_spec is None:
            return None
        aliased = self._aliased(data, self.offset_variables())
        offsets = _evaluate(self._offset_spec, aliased, self._environment, self._naming,
                            self.formula)
        return offsets.sum(axis=1).rename("offset")

    def fixed_design(self, data: pd.DataFrame) -> pd.DataFrame:
        """Build the fixed-effects design of rows of ``data``, intercept column included.

        Columns in ``fe_params_`` order with lme4's names; evaluated as :meth:`new_data`
        evaluates new rows (the fit's levels and transforms); ``data`` needs the variables
        of the fixed part only.

        Parameters
        ----------
        data : DataFrame
            Rows with the variables of the fixed part.

        Returns
        -------
        DataFrame
            A column per fixed effect, named as lme4 names them.

        See Also
        --------
        ModelFrame.new_data : All the arguments of ``predict``.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> mf = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont()).model_frame_
        >>> mf.fixed_design(pd.DataFrame({"age": [11.0, 11.0], "Sex": ["Female", "Male"]}))
           (Intercept)   age  SexMale  age:SexMale
        0          1.0  11.0      0.0          0.0
        1          1.0  11.0      1.0         11.0
        """
        aliased = self._aliased(data, self._fixed_variables())
        X = _evaluate(self._fixed_spec, aliased, self._environment, self._naming, self.formula)
        return X.iloc[:, self._fe_order()]


def _evaluate(spec: Any, data: pd.DataFrame, environment: Mapping[str, Any],
              naming: _Naming, formula: str) -> pd.DataFrame:
    """A formulaic model spec applied to new data, as a float DataFrame with lme4 names."""
    from formulaic.errors import DataMismatchWarning

    try:
        # formulaic only warns about a factor level the fit has not seen and codes the row
        # as the reference level: a wrong prediction. lme4 refuses new levels; so do we.
        with warnings.catch_warnings():
            warnings.simplefilter("error", DataMismatchWarning)
            matrix = spec.get_model_matrix(data, context=dict(environment), na_action="raise")
    except DataMismatchWarning as err:
        unseen = re.search(r"\{.*\}", str(err))
        raise ValueError(f"the new data of formula {formula!r} has factor levels the fit has "
                         f"not seen: {unseen.group(0) if unseen else err}") from None
    except Exception as err:  # formulaic's evaluation errors
        raise ValueError(f"could not evaluate formula {formula!r} on the new data: "
                         f"{_short(err, naming.display)}") from None
    return pd.DataFrame(np.asarray(matrix, dtype=float), index=matrix.index,
                        columns=_lme4_names(spec, naming))


def _short(err: Exception, names: Mapping[str, str]) -> str:
    """formulaic's error message, first line, with its code in the formula's terms."""
    text = f"{type(err).__name__}: {err}".split("\n")[0]

    def readable(match: re.Match) -> str:
        try:
            return f"`{_deparse(ast.parse(match.group(1), mode='eval').body, names)}`"
        except SyntaxError:
            return match.group(0)

    return re.sub(r"`([^`]+)`", readable, text)


def _group_labels(data: pd.DataFrame, names: list[str], group: str) -> pd.Series:
    if len(names) == 1:
        labels = data[names[0]]
    else:
        labels = data[names[0]].astype(str)
        for name in names[1:]:
            labels = labels + ":" + data[name].astype(str)
    return pd.Series(labels.to_numpy(), index=data.index, name=group)


def parse_formula(formula: str, data: pd.DataFrame, *,
                  context: Mapping[str, Any] | None = None) -> ModelFrame:
    """Evaluate an lme4 formula on a data frame.

    Parameters
    ----------
    formula : str
        ``response ~ fixed part + (left | group) + ...`` (see the module docstring for
        the syntax and for what a formula may contain).
    data : DataFrame
        The variables. Rows where any model variable (response, fixed-effects or
        random-effects covariate, offset, grouping factor) is missing are dropped, as
        lme4's default ``na.action = na.omit`` does; unused categories are dropped too.
    context : mapping, optional
        Further names the formula may use (the caller's variables are not looked up):
        numbers (``{"k": 4.5}`` for ``I(Days - k)``), or arrays with one value per row of
        ``data``, which act as columns. A pandas Series is matched with the rows by its
        index, as pandas aligns it (its index must have every row's label), other arrays
        by position. Functions and modules are refused; the allowed functions
        (:data:`ALLOWED_FUNCTIONS`) need no context.

    Returns
    -------
    ModelFrame

    Raises
    ------
    ValueError
        Malformed formulas (unbalanced parentheses, a bar without a grouping factor or
        without a left side, a bar that is not a term of its own, no response, no
        random-effects term), names that are neither columns of ``data`` nor in
        ``context``, and anything outside the allow-list (a message names the piece).
    TypeError
        A ``context`` value that is not a number or an array.

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
    >>> list(parse_formula("distance ~ I(age^2) + poly(age, 2) + (1 | Subject)", df).X.columns)
    ['I(age^2)', 'poly(age, 2)1', 'poly(age, 2)2']
    >>> frame = parse_formula("distance ~ I(age - k) + (1 | Subject)", df, context={"k": 11})
    >>> frame.X["I(age - k)"].tolist()[:4]
    [-3.0, -1.0, 1.0, 3.0]
    """
    formulaic = _import_formulaic()
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if context is not None and not isinstance(context, Mapping):
        raise TypeError(f"context must be a mapping of names to numbers or arrays, got "
                        f"{type(context).__name__}")
    try:
        return _parse_formula(formulaic, formula, data, context)
    except RecursionError:  # Python's parser and ast walks: x + x + ... a thousand times
        raise ValueError(f"formula {formula[:60]!r}... is too long or too deeply nested "
                         "to be checked") from None


def _parse_formula(formulaic: Any, formula: str, data: pd.DataFrame,
                   context: Mapping[str, Any] | None) -> ModelFrame:
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

    # Check everything (and learn which variables the model uses) before formulaic
    # evaluates anything: even parsing a formula makes formulaic evaluate function names.
    names = _Names(formula, data, context)
    checker = _Checker(formula, names)
    response = _compile_response(lhs, checker)
    fixed_parts, offsets = [], []
    for sign, piece in fixed:
        tokens = list(_tokens(piece, formula))
        argument = checker.offset_argument(tokens[0][1], piece) \
            if len(tokens) == 1 and tokens[0][0] == "code" else None
        if argument is None:
            fixed_parts.append(f"{sign} {_compile_part(piece, checker, 'fixed part')}")
        elif sign == "-":
            raise ValueError(f"in formula {formula!r}: an offset cannot be subtracted "
                             f"(- {piece}); write offset(-x)")
        else:
            offsets.append(argument)
    lefts = [_compile_part(left, checker, "left side of a bar") for left, _, _ in bars]
    for _, factors, _ in bars:
        for group in factors:
            for name in group:
                names.group(name)

    # lme4 (like R) keeps the intercept unless the formula removes it: "1" if nothing is left.
    fixed_rhs = " ".join(fixed_parts) if fixed_parts else "1"
    if fixed_rhs.startswith("+ "):
        fixed_rhs = fixed_rhs[2:]
    fixed_formula = _formula(formulaic, f"{response} ~ {fixed_rhs}", names, formula)
    left_formulas = [_formula(formulaic, f"~ {left}", names, formula) for left in lefts]
    offset_formula = None
    if offsets:
        offset_formula = _formula(formulaic, "~ 0 + " + " + ".join(f"{{{code}}}" for code in
                                                                 offsets), names, formula)

    # Rows: those without a missing value in any variable of the model.
    variables = names.frame()
    missing = variables.isna().any(axis=1).to_numpy()
    work = variables.loc[~missing].reset_index(drop=True)
    for column in work.columns:
        if isinstance(work[column].dtype, pd.CategoricalDtype):
            # R's model.frame drops unused levels: an empty level would give a zero column.
            work[column] = work[column].cat.remove_unused_categories()
    if len(work) == 0:
        raise ValueError(f"no rows left: every row of data has a missing value in "
                         f"{list(variables.columns)}")
    aliased = pd.DataFrame({names.aliases[name]: work[name] for name in work.columns})
    environment = {**_evaluation_functions(), **names.scalars}
    naming = names.naming()

    def materialize(parsed: Any) -> Any:
        try:
            return formulaic.model_matrix(parsed, aliased, context=dict(environment))
        except Exception as err:  # evaluation errors of formulaic: name the formula
            raise ValueError(f"could not evaluate formula {formula!r}: "
                             f"{_short(err, naming.display)}") from None

    matrices = materialize(fixed_formula)
    lhs_matrix, rhs_matrix = matrices.lhs, matrices.rhs
    if lhs_matrix.shape[1] != 1:
        raise ValueError(f"the response {lhs!r} must be one numeric column, got "
                         f"{_lme4_names(lhs_matrix.model_spec, naming)}")
    fixed_spec = rhs_matrix.model_spec
    r_spec = _r_coding(fixed_spec, naming, aliased, environment)
    if r_spec is not None:  # formulaic coded a term otherwise (a:b alone): R's columns
        try:
            rhs_matrix = r_spec.get_model_matrix(aliased, context=dict(environment))
        except Exception as err:  # pragma: no cover - the first materialisation succeeded
            raise ValueError(f"could not evaluate formula {formula!r}: "
                             f"{_short(err, naming.display)}") from None
        fixed_spec = rhs_matrix.model_spec
    term_mats = [materialize(f) for f in left_formulas]
    offset_matrix = None if offset_formula is None else materialize(offset_formula)
    if offset_matrix is not None and offset_matrix.shape[1] != len(offset_matrix.model_spec.terms):
        columns = _lme4_names(offset_matrix.model_spec, naming)
        raise ValueError(f"in formula {formula!r}, an offset must be numeric (one number per "
                         f"row), got {len(columns)} columns {columns[:3]}...")
    # Transformations can still produce missing values (log of 0); keep rows every part has.
    keep = lhs_matrix.index.intersection(rhs_matrix.index)
    for m in [*term_mats, *([] if offset_matrix is None else [offset_matrix])]:
        keep = keep.intersection(m.index)
    keep = keep.sort_values()
    kept_rows = np.flatnonzero(~missing)[keep.to_numpy()]
    row_index = data.index[kept_rows]
    dropped = data.index[np.setdiff1d(np.arange(len(data)), kept_rows)]

    y = pd.Series(np.asarray(lhs_matrix.loc[keep].iloc[:, 0], dtype=float), index=row_index,
                  name=_lme4_names(lhs_matrix.model_spec, naming)[0])
    X = pd.DataFrame(np.asarray(rhs_matrix.loc[keep], dtype=float), index=row_index,
                     columns=_lme4_names(fixed_spec, naming))
    intercept = _intercept_columns(fixed_spec)
    X = X.drop(columns=[X.columns[i] for i in intercept])
    offset = None
    if offset_matrix is not None:
        offset = pd.Series(np.asarray(offset_matrix.loc[keep], dtype=float).sum(axis=1),
                           index=row_index, name="offset")

    terms, term_specs = [], []
    rows = work.loc[keep]
    for (left, factors, diagonal), m in zip(bars, term_mats):
        spec = m.model_spec
        Z = pd.DataFrame(np.asarray(m.loc[keep], dtype=float), index=row_index,
                         columns=_lme4_names(spec, naming))
        if Z.shape[1] == 0:
            raise ValueError(f"in formula {formula!r}, the random-effects term with left side "
                             f"{left!r} has no columns")
        for group_names in factors:
            group = ":".join(group_names)
            labels = _group_labels(rows, list(group_names), group)
            labels.index = row_index
            terms.append(RandomTerm(group, labels, Z, diagonal, left, tuple(group_names)))
            term_specs.append(spec)
    fitted_rows = rows.copy()
    fitted_rows.index = row_index
    numbers = {name: names.scalars[alias] for name, alias in names.aliases.items()
               if alias in names.scalars}
    return ModelFrame(formula, X, y, terms, bool(intercept), dropped, fixed_spec, term_specs,
                      offset, None if offset_matrix is None else offset_matrix.model_spec,
                      {name: names.aliases[name] for name in work.columns
                       if name in names.predictors}, environment, naming, fitted_rows, numbers)


def _cbind(response: str, formula: str) -> tuple[str, str] | None:
    """The two columns of a ``cbind(successes, failures)`` response, or None."""
    match = re.fullmatch(r"\s*cbind\s*\((.*)\)\s*", response, flags=re.S)
    if match is None:
        return None
    parts = _split_top(match.group(1), ",")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"in formula {formula!r}, cbind() takes two arguments: "
                         "cbind(successes, failures)")
    return parts[0].strip(), parts[1].strip()


# ---- update(): R's update.formula on lme4 formulas ------------------------------------------


def _norm(text: str) -> str:
    """A formula piece with R's spacing: one space around binary + and -, none inside names."""
    text = " ".join(text.split())
    return re.sub(r"\s*([+])\s*", r" \1 ", text)


def _bar_text(inner: str) -> str:
    positions = _bar_positions(inner)
    bar = "||" if len(positions) == 2 else "|"
    left, right = inner[:positions[0]], inner[positions[-1] + 1:]
    return f"({_norm(left)} {bar} {' '.join(right.split())})"


def _unwrap(text: str) -> str:
    text = text.strip()
    while _wraps(text):
        text = text[1:-1].strip()
    return text


def _expand(text: str, order: dict[str, int]) -> list[tuple[str, ...]]:
    """The terms of a fixed-effects expression (``a*b``, ``a:b``, ``(a + b)^2``, ``a/b``):
    each a tuple of factors, as R's ``terms`` expands them (without the intercept)."""
    text = _unwrap(text)
    pieces = _signed_pieces(text) if len(_split_top(text, "+")) > 1 else [("+", text)]
    if len(pieces) > 1:
        out: list[tuple[str, ...]] = []
        for sign, piece in pieces:
            for term in _expand(piece, order):
                key = frozenset(term)
                if sign == "-":
                    out = [t for t in out if frozenset(t) != key]
                elif key not in {frozenset(t) for t in out}:
                    out.append(term)
        return out
    if len(parts := _split_top(text, "*")) > 1:
        terms = _expand(parts[0], order)
        for part in parts[1:]:
            right = _expand(part, order)
            terms = terms + right + [a + tuple(f for f in b if f not in a) for a in terms for b in right]
        return _unique(terms)
    if len(parts := _split_top(text, "/")) > 1:
        terms = _expand(parts[0], order)
        factors = tuple(dict.fromkeys(f for t in terms for f in t))
        for part in parts[1:]:
            terms = terms + [factors + tuple(f for f in b if f not in factors)
                             for b in _expand(part, order)]
        return _unique(terms)
    if len(parts := _split_top(text, "^")) == 2 and parts[1].strip().isdigit():
        base = _expand(parts[0], order)
        terms = list(base)
        for _ in range(int(parts[1]) - 1):
            terms = terms + [a + tuple(f for f in b if f not in a) for a in terms for b in base]
        return _unique([t for t in terms if len(t) <= int(parts[1])])
    if len(parts := _split_top(text, ":")) > 1:
        terms: list[tuple[str, ...]] = [()]
        for part in parts:
            terms = [a + tuple(f for f in b if f not in a) for a in terms
                     for b in _expand(part, order)]
        return _unique(terms)
    name = " ".join(text.split())
    order.setdefault(name, len(order))
    return [(name,)]


def _unique(terms: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    seen, out = set(), []
    for t in terms:
        if frozenset(t) not in seen:
            seen.add(frozenset(t))
            out.append(t)
    return out


def _terms_of(rhs: str, old: tuple | None, order: dict[str, int]) -> tuple[list, bool]:
    """``(terms, intercept)`` of a right side: fixed terms (tuples) and bars (strings), with
    ``.`` standing for ``old``'s."""
    terms: list = []
    intercept = True
    for sign, piece in _signed_pieces(rhs):
        bar = _as_bar(piece)
        if piece == ".":
            if old is None:
                raise ValueError("'.' in a formula that updates nothing")
            new = list(old[0])
            if not old[1]:
                intercept = False
        elif bar is not None:
            new = [_bar_text(bar)]
        elif piece in ("1", "0"):
            intercept = (sign == "+") == (piece == "1")
            continue
        else:
            new = _expand(piece, order)
        keys = {_key(t) for t in new}
        if sign == "-":
            terms = [t for t in terms if _key(t) not in keys]
        else:
            terms = terms + [t for t in new if _key(t) not in {_key(u) for u in terms}]
    return terms, intercept


def _key(term: Any) -> Any:
    return term if isinstance(term, str) else frozenset(term)


def split_formula_sides(formula: str) -> tuple[str | None, str]:
    """``(lhs or None, rhs)`` of a formula (a formula without ``~`` is a right side)."""
    sides = _split_top(formula, "~")
    if len(sides) == 1:
        return None, sides[0].strip()
    return (sides[0].strip() or None), sides[1].strip()


def update_formula(old: str, new: str) -> str:
    """Apply R's ``update.formula(old, new)`` to an lme4 formula.

    ``.`` on the left of ``new`` stands for ``old``'s response (``log(.) ~ .``), on the right
    for ``old``'s terms; ``+ term`` adds, ``- term`` removes a fixed term (after expanding
    ``*``, ``/`` and ``^`` as R does) or a random-effects term ``(left | group)`` (matched
    after normalising spaces); ``- 1`` / ``+ 0`` remove the intercept. Terms print as R's
    ``terms`` orders them: by order (main effects and random-effects terms, then two-way
    interactions, ...), in order of appearance within an order; a removed intercept is
    written ``- 1`` at the end.

    Parameters
    ----------
    old : str
        The formula being updated, ``"Reaction ~ Days + (Days | Subject)"``.
    new : str
        The update, ``". ~ . - Days"``; without ``~`` it is a right side (``". + x"``).

    Returns
    -------
    str
        The updated formula.

    Raises
    ------
    ValueError
        A malformed formula.

    See Also
    --------
    mixedlm_sklearn.update : Refit a fit with the updated formula.

    Examples
    --------
    >>> update_formula("Reaction ~ Days + (Days | Subject)", ". ~ . - Days")
    'Reaction ~ (Days | Subject)'
    >>> update_formula("distance ~ age * Sex + (age | Subject)", ". ~ . - Sex")
    'distance ~ age + (age | Subject) + age:Sex'
    >>> update_formula("Reaction ~ Days + (Days | Subject)", "log(.) ~ . - 1")
    'log(Reaction) ~ Days + (Days | Subject) - 1'
    """
    old_sides = _split_top(old, "~")
    if len(old_sides) != 2:
        raise ValueError(f"formula {old!r} must have one '~'")
    new_sides = _split_top(new, "~")
    if len(new_sides) == 1:
        new_sides = [".", new_sides[0]]
    if len(new_sides) != 2:
        raise ValueError(f"update {new!r} must have at most one '~'")
    old_lhs, new_lhs = old_sides[0].strip(), new_sides[0].strip()
    if not new_lhs:
        lhs = ""
    else:
        lhs = re.sub(r"(?<![\w.])\.(?![\w.])", lambda _: old_lhs, " ".join(new_lhs.split()))
    order: dict[str, int] = {}
    old_terms = _terms_of(old_sides[1].strip(), None, order)
    terms, intercept = _terms_of(new_sides[1].strip(), old_terms, order)
    degree = [1 if isinstance(t, str) else len(t) for t in terms]
    ordered = [t for _, _, t in sorted(zip(degree, range(len(terms)), terms),
                                       key=lambda item: (item[0], item[1]))]
    texts = [t if isinstance(t, str) else ":".join(t) for t in ordered]
    rhs = " + ".join(texts) if texts else ("1" if intercept else "0")
    if texts and not intercept:
        rhs += " - 1"
    return f"{lhs} ~ {rhs}" if lhs else f"~ {rhs}"
