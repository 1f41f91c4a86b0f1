"""String options in one spelling: R's names and any case map to the Python spelling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["canonical"]


def canonical(value: Any, name: str, choices: Mapping[str, Sequence[str]]) -> Any:
    """The Python spelling of a string option, from itself, any case or an R alias.

    Parameters
    ----------
    value : Any
        What the caller gave; a non-string is returned as it is (the caller checks it).
    name : str
        The argument's name, for the error message.
    choices : mapping
        Python spelling -> its aliases (R's spellings), compared case-insensitively with
        ``_`` read as ``-``.

    Returns
    -------
    Any
        The Python spelling, or ``value`` itself when it is not a string.

    Raises
    ------
    ValueError
        For a string that is no spelling of any choice; the message lists the choices and
        their R aliases.

    Examples
    --------
    >>> canonical("Wald", "method", {"wald": (), "profile": (), "boot": ()})
    'wald'
    >>> canonical("KR", "ddf", {"kenward-roger": ("KR",), "satterthwaite": ()})
    'kenward-roger'
    """
    if not isinstance(value, str):
        return value
    key = value.strip().lower().replace("_", "-")
    for python, aliases in choices.items():
        if key == python.lower() or key in (a.lower().replace("_", "-") for a in aliases):
            return python
    listed = ", ".join(repr(p) + (f" (R: {', '.join(map(repr, a))})" if a else "")
                       for p, a in choices.items())
    raise ValueError(f"{name} must be one of {listed}; got {value!r}")
