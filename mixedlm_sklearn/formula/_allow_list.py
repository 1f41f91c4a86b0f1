"""The security boundary: what a formula may contain, checked before anything runs.

Everything a formula may call is declared here, once (:data:`ALLOWED_FUNCTIONS`); the
names a formula may use are the data's columns and what ``context=`` gives
(:class:`_Names`); every expression is parsed and checked node by node (:class:`_Checker`)
and rewritten for formulaic, then verified again before formulaic sees it.
"""

from __future__ import annotations

import ast
import math
import numbers
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._contrasts import _Coding, _coded, _relevel
from ._lme4_names import _Naming
from ._parser import _FORMULA_OPERATOR, _NUMBER, _OPERATOR, _WORD, _closing, _r_name


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


def _allowed_object(name: str) -> Any:
    """The object an allowed function name stands for (for comparing with context=)."""
    if name == "np":
        return np
    return _UFUNCS.get(name)


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
