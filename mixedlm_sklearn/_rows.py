"""The rows of an in-memory fit (:class:`Design`), as the fitted model keeps them.

A leaf of the engine: :class:`~mixedlm_sklearn._model.FittedModel` holds one, and
:mod:`._design` builds it from the estimator's arguments (and re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Design"]


@dataclass(frozen=True)
class Design:
    """The rows of an in-memory fit, kept (by reference) for simulation and data checks.

    ``X`` excludes the intercept column, which :attr:`X_full` adds when ``intercept``.
    ``y`` is the fitted response: for a linear model the response minus ``offset``, for a
    GLMM the response itself (its offset is inside the link); ``index`` is the row labels of
    a DataFrame ``X`` (for fitted values and residuals indexed like the input).
    """

    X: np.ndarray
    intercept: bool
    y: np.ndarray
    factors: tuple  # of (codes, Z) per term
    weights: np.ndarray | None
    strata: np.ndarray | None
    n_strata: int = 1
    offset: np.ndarray | None = None  # the known part of the linear predictor
    index: pd.Index | None = None

    @property
    def X_full(self) -> np.ndarray:
        if self.intercept:
            return np.column_stack([np.ones(len(self.y)), self.X])
        return self.X
