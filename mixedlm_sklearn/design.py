"""Helpers that build grouping factors for MixedLMRegressor."""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["nested_groups"]


def nested_groups(outer: Any, inner: Any, sep: str = ":") -> pd.DataFrame:
    """Grouping factors of a nested design: ``outer`` and ``outer:inner``.

    lme4's ``(1 | batch/cask)`` is ``(1 | batch) + (1 | batch:cask)``: cask ``a`` of
    batch ``A`` and cask ``a`` of batch ``B`` are different casks. Pass the result as
    ``groups`` to :meth:`~mixedlm_sklearn.MixedLMRegressor.fit`.

    Parameters
    ----------
    outer : array-like of shape (n,)
        Labels of the outer factor (a Series' name is used as the column name).
    inner : array-like of shape (n,)
        Labels of the inner factor within it.
    sep : str, default=":"
        Separator of the interaction labels (lme4 uses ":").

    Returns
    -------
    DataFrame
        Columns ``outer`` and ``outer:inner`` (named after the inputs).

    See Also
    --------
    mixedlm_sklearn.lmer : ``(1 | batch/cask)`` in a formula does the same.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedlm_sklearn.design import nested_groups
    >>> nested_groups(pd.Series(["A", "A", "B"], name="batch"), pd.Series(["a", "b", "a"], name="cask"))
      batch batch:cask
    0     A        A:a
    1     A        A:b
    2     B        B:a
    """
    outer_s = pd.Series(outer).reset_index(drop=True)
    inner_s = pd.Series(inner).reset_index(drop=True)
    if len(outer_s) != len(inner_s):
        raise ValueError(f"outer has {len(outer_s)} labels, inner {len(inner_s)}")
    if outer_s.isna().any() or inner_s.isna().any():
        raise ValueError("nested_groups: missing labels")
    o_name = str(outer_s.name) if outer_s.name is not None else "outer"
    i_name = str(inner_s.name) if inner_s.name is not None else "inner"
    return pd.DataFrame({o_name: outer_s.astype(str),
                         f"{o_name}{sep}{i_name}": outer_s.astype(str) + sep + inner_s.astype(str)})
