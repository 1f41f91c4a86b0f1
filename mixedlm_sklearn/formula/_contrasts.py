"""R's contrasts in formulas: ``C(x, contr.sum)``, ``contr.helmert``, ``contr.treatment``
(``base = k``) and ``relevel(x, ref)``, with R's parametrisation and column names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._parser import _r_label


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
