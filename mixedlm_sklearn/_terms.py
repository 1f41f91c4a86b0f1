"""Random-effects terms: the one term type of the model, and where each lives in ``theta``.

A term ``(z | factor)`` has a grouping factor with ``n_levels`` levels, ``q`` columns of
``Z`` and per level ``b_l ~ N(0, sigma^2 L L')`` with ``L`` lower triangular (Bates,
Maechler, Bolker & Walker 2015, "Fitting linear mixed-effects models using lme4", JSS
67(1), sec. 2). ``theta`` holds the free entries of ``L``: the lower triangle column by
column (lme4's order) for an unstructured covariance, the diagonal alone for a diagonal
one (lme4's ``||``). Terms of a model concatenate their ``theta`` in the model's order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "INTERCEPT",
    "Term",
    "Terms",
    "lambda_from_theta",
    "theta_from_lambda",
    "theta_index",
    "theta_lower_bounds",
]

#: Name of the intercept column (fixed or random), as lme4 prints it.
INTERCEPT = "(Intercept)"


@functools.lru_cache(maxsize=64)
def theta_index(q: int, diagonal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices in ``L`` of each entry of ``theta`` (lme4's order)."""
    if diagonal:
        rows = cols = np.arange(q)
    else:
        cols, rows = np.triu_indices(q)  # upper triangle row-major == lower triangle column-major
    rows.flags.writeable = cols.flags.writeable = False  # cached: shared by every caller
    return rows, cols


def lambda_from_theta(theta: np.ndarray, q: int, diagonal: bool = False) -> np.ndarray:
    """Lower-triangular relative covariance factor ``L`` from ``theta``."""
    lam = np.zeros((q, q))
    lam[theta_index(q, diagonal)] = theta
    return lam


def theta_from_lambda(lam: np.ndarray, diagonal: bool = False) -> np.ndarray:
    """Inverse of :func:`lambda_from_theta`."""
    return lam[theta_index(lam.shape[0], diagonal)].copy()


def theta_lower_bounds(q: int, diagonal: bool = False) -> np.ndarray:
    """0 for diagonal entries of ``L`` (a variance can reach exactly 0), -inf otherwise."""
    rows, cols = theta_index(q, diagonal)
    return np.where(rows == cols, 0.0, -np.inf)


@dataclass(frozen=True)
class Term:
    """One random-effects term.

    Attributes
    ----------
    factor : str
        Name of the grouping factor (lme4's group: ``"Subject"``, ``"batch:cask"``).
    z_names : tuple of str
        Names of the term's ``Z`` columns (``"(Intercept)"``, ``"Days"``).
    n_levels : int
        Levels of the grouping factor present in the data.
    diagonal : bool
        Independent effects (only the diagonal of ``L`` is free).
    """

    factor: str
    z_names: tuple[str, ...]
    n_levels: int
    diagonal: bool = False

    @property
    def q(self) -> int:
        return len(self.z_names)

    @property
    def size(self) -> int:
        """Random effects of the term: ``n_levels * q``."""
        return self.n_levels * self.q

    @property
    def theta_position(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column in ``L`` of each of the term's ``theta`` entries."""
        return theta_index(self.q, self.diagonal)

    @property
    def n_theta(self) -> int:
        return self.theta_position[0].size

    def lower_bounds(self) -> np.ndarray:
        return theta_lower_bounds(self.q, self.diagonal)

    def lam(self, theta: np.ndarray) -> np.ndarray:
        """``L`` from the term's own ``theta`` entries."""
        return lambda_from_theta(theta, self.q, self.diagonal)

    def param_names(self) -> list[str]:
        """lme4's names of the term's standard deviations and correlations, in ``theta``'s order."""
        rows, cols = self.theta_position
        names = self.z_names
        return [f"sd_{names[r]}|{self.factor}" if r == c else f"cor_{names[r]}.{names[c]}|{self.factor}"
                for r, c in zip(rows, cols)]


class Terms(Sequence):
    """The random-effects terms of a model, in the model's order, and their ``theta`` slices."""

    def __init__(self, terms: Sequence[Term]) -> None:
        self._terms = tuple(terms)
        bounds = np.cumsum([0] + [t.n_theta for t in self._terms])
        self.slices = tuple(slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]))
        self._lower = (np.concatenate([t.lower_bounds() for t in self._terms])
                       if self._terms else np.empty(0))
        self._lower.flags.writeable = False

    def __getitem__(self, k):
        return self._terms[k]

    def __len__(self) -> int:
        return len(self._terms)

    def __repr__(self) -> str:
        return f"Terms({list(self._terms)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Terms) and self._terms == other._terms

    def __hash__(self) -> int:
        return hash(self._terms)

    @property
    def n_theta(self) -> int:
        return self._lower.size

    def lower_bounds(self) -> np.ndarray:
        """0 on the diagonal of each ``L_k``, -inf elsewhere."""
        return self._lower

    def lams(self, theta: np.ndarray) -> list[np.ndarray]:
        """``L_k`` of every term."""
        return [t.lam(theta[s]) for t, s in zip(self._terms, self.slices)]

    def theta_of(self, lams: Sequence[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`lams`."""
        if not self._terms:
            return np.empty(0)
        return np.concatenate([theta_from_lambda(lam, t.diagonal) for t, lam in zip(self._terms, lams)])

    def identity_theta(self) -> np.ndarray:
        """Every ``L_k`` the identity (lme4's start)."""
        return (self._lower == 0.0).astype(float)

    def param_names(self) -> list[str]:
        return [name for t in self._terms for name in t.param_names()]
