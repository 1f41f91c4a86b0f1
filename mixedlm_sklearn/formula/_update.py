"""R's ``update.formula`` on lme4 formulas (``update(fit, ". ~ . + x")``).
"""

from __future__ import annotations

import re
from typing import Any


from ._parser import _as_bar, _bar_positions, _signed_pieces, _split_top, _wraps


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
