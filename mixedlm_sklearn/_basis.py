"""The whitened basis: where the deviance is well conditioned, for every computation.

The optimiser, the profiles and the Satterthwaite derivatives all evaluate the deviance
of ``Z_k P_k`` and ``[X y] / s`` instead of ``Z_k`` and ``[X y]``: ``P_k`` the inverse
Cholesky factor of the pooled ``Z_k'Z_k / n`` (column scaling only for a diagonal
covariance, where mixing columns would change the model) and ``s`` the root mean squares
of the columns of ``[X y]``. For an unstructured covariance the model is invariant under
this change of basis; it removes the scale and collinearity of ``Z``'s columns (an
intercept next to uncentred ``age`` and ``age^2``), under which the factorisation of
``M = L'Z'ZL + I`` in the raw basis can lose every digit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import linalg

from ._crossprod import CrossProducts
from ._deviance import Deviance
from ._terms import theta_from_lambda

__all__ = ["Basis", "Conditioned", "Evaluation", "lower_factor"]


def lower_factor(M: np.ndarray) -> np.ndarray:
    """Lower-triangular ``L`` with non-negative diagonal and ``L L' = M M'`` (M may be singular)."""
    r = linalg.qr(M.T, mode="r")[0]
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return (signs[:, None] * r).T


class Basis:
    """The change of basis ``Z_k -> Z_k P_k`` and the map of ``theta`` between the bases."""

    def __init__(self, cp: CrossProducts) -> None:
        comb = cp.combined()
        n = comb.n
        self.terms = cp.terms
        self.P = []
        for term, d in zip(cp.terms, comb.diag):
            pooled = d[0].sum(axis=2) / n
            if term.diagonal or term.q == 1:
                self.P.append(np.diag(1.0 / np.sqrt(np.diag(pooled))))
            else:
                chol = linalg.cholesky(pooled, lower=True)
                self.P.append(linalg.solve_triangular(chol, np.eye(term.q), lower=True).T)
        self.xy_scale = np.sqrt(np.maximum(np.diag(comb.xyxy[0]), np.finfo(float).tiny) / n)
        # the whitened cross-products are formed once, by the deviance's ``in_basis``: a
        # second copy here held as much memory as the data's per-level statistics

    def _map(self, theta: np.ndarray, forward: bool) -> np.ndarray:
        out = []
        for term, sl, P in zip(self.terms, self.terms.slices, self.P):
            lam = term.lam(theta[sl])
            lam = P @ lam if forward else linalg.solve(P, lam)
            out.append(theta_from_lambda(lam if term.diagonal else lower_factor(lam), term.diagonal))
        return np.concatenate(out) if out else np.empty(0)

    def to_original(self, x: np.ndarray) -> np.ndarray:
        """Whitened ``(theta, eta)`` -> lme4's (``eta`` is the same in both)."""
        k = self.terms.n_theta
        return np.concatenate([self._map(x[:k], True), x[k:]])

    def from_original(self, x: np.ndarray) -> np.ndarray:
        k = self.terms.n_theta
        return np.concatenate([self._map(x[:k], False), x[k:]])


class Evaluation(NamedTuple):
    """The deviance and the fixed-effects solution at given parameters (original units)."""

    deviance: float
    r2: float
    beta: np.ndarray
    a_inv: np.ndarray
    scale: float


class Conditioned:
    """A deviance evaluated in the whitened basis and reported in the original units.

    The two deviances differ by a constant: ``log|M|`` is invariant, ``r2`` scales by
    ``s_y^2`` and (REML) ``A`` by ``s_x s_x'``. Profiles and numerical derivatives use this
    where lme4's basis would factor matrices whose entries span twenty orders of magnitude.
    """

    def __init__(self, dev: Deviance) -> None:
        self.dev = dev
        self.basis = Basis(dev.cp)
        s = self.basis.xy_scale
        self.white = dev.in_basis(self.basis.P, s)
        self.sx, self.sy = s[:-1], s[-1]
        self.offset = 2.0 * dev.dof * np.log(self.sy) + (2.0 * np.log(self.sx).sum() if dev.reml else 0.0)

    def evaluate(self, x: np.ndarray) -> Evaluation:
        return self.evaluate_white(self.basis.from_original(np.asarray(x, dtype=float)))

    def evaluate_white(self, x: np.ndarray) -> Evaluation:
        """As :meth:`evaluate`, at parameters already in the whitened basis."""
        sol = self.white.solution(x)
        r2 = sol.r2 * self.sy**2
        return Evaluation(sol.deviance + self.offset, r2, sol.beta * self.sy / self.sx,
                          sol.a_inv / np.outer(self.sx, self.sx), r2 / self.dev.dof)

    def __call__(self, x: np.ndarray) -> float:
        return self.evaluate(x).deviance
