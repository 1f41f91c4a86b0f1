"""Scanning formula text: brackets and quotes, the top-level pieces of a formula, its
bars, and R's spelling of names, numbers and strings.

Nothing here evaluates anything; every function reads text and returns text.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import numpy as np



_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_QUOTES = {"'", '"', "`"}


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


# ---- the formula language's tokens ---------------------------------------------------------

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


# ---- R's spelling of names, numbers, strings and factor levels ---------------------------

_R_RESERVED = {"if", "else", "repeat", "while", "function", "for", "next", "break", "TRUE",
               "FALSE", "NULL", "Inf", "NaN", "NA", "in"}


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


def _r_label(level: Any) -> str:
    """A factor level as R's ``as.character`` writes it: ``TRUE``, ``1`` for the number 1.0."""
    if isinstance(level, (bool, np.bool_)):
        return str(bool(level)).upper()
    if isinstance(level, numbers.Real) and math.isfinite(level):
        return _r_number(level)
    return str(level)
