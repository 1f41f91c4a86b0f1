"""Column names as lme4 writes them (``"(Intercept)"``, ``"SexFemale"``, ``"I(Days^2)"``)
and R's coding of the terms (which factors of a term get contrasts, as ``model.matrix``).
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ._parser import _r_label, _r_number, _r_string


# ---- column names as lme4 writes them -------------------------------------------------------


@dataclass(frozen=True)
class _Naming:
    """What lme4's column names need: the variables' names as R writes them (by alias) and
    the order in which factors first appear in the formula."""

    display: dict[str, str]
    order: dict[str, int]
# R's operator precedence (higher binds tighter) and spelling in deparsed names.
_R_PRECEDENCE = {ast.Pow: 15, ast.Mod: 12, ast.FloorDiv: 12, ast.Mult: 11, ast.Div: 11,
                 ast.Add: 10, ast.Sub: 10}
_R_UNARY_PRECEDENCE, _R_COMPARE_PRECEDENCE = 14, 9
_R_BINARY = {ast.Pow: "^", ast.Mod: "%%", ast.FloorDiv: "%/%", ast.Mult: " * ", ast.Div: "/",
             ast.Add: " + ", ast.Sub: " - "}
_R_COMPARE = {ast.Lt: " < ", ast.LtE: " <= ", ast.Gt: " > ", ast.GtE: " >= ", ast.Eq: " == ",
              ast.NotEq: " != "}


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
