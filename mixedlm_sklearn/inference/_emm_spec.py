"""emmeans' ``specs`` formulas, parsed without evaluating anything.

emmeans (Lenth) reads ``specs`` as a one- or two-sided formula: ``~ N`` (the means of
``N``), ``~ N * V`` or ``~ N + V`` or ``~ N:V`` (every combination), ``~ N | V`` (the means
of ``N`` within each level of ``V``), and a left-hand side naming a contrast family applied
to them, ``pairwise ~ N | V``. Only names, ``~``, ``|``, ``*``, ``+``, ``:`` and the
contrast keywords emmeans has for such formulas are admitted here; anything else (calls,
numbers, operators, strings) is refused with a ValueError before any model is looked at.
Whether the names are variables of the model is checked by the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["EmmSpec", "parse_emm_spec", "CONTRAST_METHODS"]

#: The contrast families a spec's left-hand side (or ``EMMeans.contrast``) may name.
CONTRAST_METHODS = ("pairwise", "revpairwise", "consec", "trt.vs.ctrl")

# a name as R writes it (letters, digits, ``.``, ``_``, not starting with a digit) or any
# text in backticks (R's quoting of non-syntactic names)
_TOKEN = re.compile(r"\s*(?:(`[^`]+`)|([A-Za-z.][A-Za-z0-9._]*)|([~|*+:]))")


@dataclass(frozen=True)
class EmmSpec:
    """A parsed ``specs``.

    Attributes
    ----------
    factors : tuple of str
        The variables whose levels (combinations) get a mean.
    by : tuple of str
        The variables within whose levels the means (and contrasts) are formed.
    contrast : str or None
        The contrast family of the left-hand side (``"pairwise"``, ...), None without one.
    """

    factors: tuple
    by: tuple = ()
    contrast: str | None = None


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(
                f"cannot read the emmeans spec {text!r} at {text[pos:].strip()!r}: a spec is "
                "factor names joined by '*', '+' or ':', optionally '| by-factors', after '~' "
                f"and an optional contrast family ({', '.join(CONTRAST_METHODS)})")
        quoted, name, op = match.groups()
        out.append(("name", quoted[1:-1]) if quoted else ("name", name) if name else ("op", op))
        pos = match.end()
    return out


def _names(tokens: list[tuple[str, str]], text: str, where: str) -> tuple:
    """Names separated by ``*``, ``+`` or ``:``."""
    if not tokens:
        raise ValueError(f"the emmeans spec {text!r} names no factor {where}")
    names = []
    for i, (kind, value) in enumerate(tokens):
        expect_name = i % 2 == 0
        if expect_name and kind != "name" or not expect_name and value not in "*+:":
            raise ValueError(f"cannot read the emmeans spec {text!r}: expected "
                             f"{'a factor name' if expect_name else chr(39) + '*' + chr(39)} "
                             f"{where}, got {value!r}")
        if expect_name and value not in names:
            names.append(value)
    if tokens[-1][0] != "name":
        raise ValueError(f"the emmeans spec {text!r} ends in an operator {where}")
    return tuple(names)


def parse_emm_spec(specs: Any, by: str | Sequence[str] | None = None) -> EmmSpec:
    """Read emmeans' ``specs`` (a name, a list of names or a formula string) and ``by``.

    Parameters
    ----------
    specs : str or sequence of str
        ``"N"``, ``["N", "V"]``, or an emmeans formula: ``"~ N"``, ``"~ N * V"``,
        ``"~ N | V"``, ``"pairwise ~ N | V"``, ``"revpairwise ~ N"``, ...
    by : str or sequence of str, optional
        emmeans' ``by`` argument; added to the by-variables of the formula.

    Returns
    -------
    EmmSpec

    Raises
    ------
    ValueError
        For anything but names, ``~ | * + :`` and a contrast family on the left.

    Examples
    --------
    >>> parse_emm_spec("pairwise ~ N | Variety")
    EmmSpec(factors=('N',), by=('Variety',), contrast='pairwise')
    >>> parse_emm_spec("~ N * Variety")
    EmmSpec(factors=('N', 'Variety'), by=(), contrast=None)
    >>> parse_emm_spec("Sex", by="age")
    EmmSpec(factors=('Sex',), by=('age',), contrast=None)
    >>> try:
    ...     parse_emm_spec("~ log(N)")
    ... except ValueError as error:
    ...     print(str(error)[:48])
    cannot read the emmeans spec '~ log(N)' at '(N)'
    """
    extra = () if by is None else (by,) if isinstance(by, str) else tuple(by)
    if not all(isinstance(b, str) for b in extra):
        raise TypeError(f"by must be a variable name or a list of names, got {by!r}")
    if isinstance(specs, str) and not any(c in specs for c in "~|*+:"):
        if not specs.strip():
            raise ValueError("specs is empty: name the factor(s) whose means are wanted")
        factors: tuple = (specs.strip(),)
        return EmmSpec(factors, _merge_by(factors, extra), None)
    if not isinstance(specs, str):
        if isinstance(specs, Sequence) and specs and all(isinstance(s, str) for s in specs):
            factors = tuple(dict.fromkeys(specs))
            return EmmSpec(factors, _merge_by(factors, extra), None)
        raise TypeError(f"specs must be a factor name, a list of names or an emmeans formula "
                        f"string such as 'pairwise ~ N | V', got {specs!r}")
    tokens = _tokens(specs)
    tildes = [i for i, t in enumerate(tokens) if t == ("op", "~")]
    if len(tildes) != 1:
        raise ValueError(f"the emmeans spec {specs!r} needs exactly one '~' "
                         "(e.g. '~ N', '~ N | V', 'pairwise ~ N')")
    left, right = tokens[:tildes[0]], tokens[tildes[0] + 1:]
    contrast = None
    if left:
        if len(left) != 1 or left[0][0] != "name" or left[0][1] not in CONTRAST_METHODS:
            got = " ".join(v for _, v in left)
            raise ValueError(f"the left side of the emmeans spec {specs!r} must be one of "
                             f"{', '.join(CONTRAST_METHODS)}, got {got!r}")
        contrast = left[0][1]
    bars = [i for i, t in enumerate(right) if t == ("op", "|")]
    if len(bars) > 1:
        raise ValueError(f"the emmeans spec {specs!r} has more than one '|'")
    if bars:
        factors = _names(right[:bars[0]], specs, "before '|'")
        by_names = _names(right[bars[0] + 1:], specs, "after '|'")
    else:
        factors, by_names = _names(right, specs, "after '~'"), ()
    return EmmSpec(factors, _merge_by(factors, by_names + extra), contrast)


def _merge_by(factors: tuple, by: tuple) -> tuple:
    merged = tuple(dict.fromkeys(by))
    both = [b for b in merged if b in factors]
    if both:
        raise ValueError(f"{both} cannot be both a factor of the means and a by variable")
    return merged
