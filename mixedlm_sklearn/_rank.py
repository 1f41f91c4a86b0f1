"""The rank of the fixed-effects design: aliased columns found and dropped, as lme4 does.

lme4 drops the columns of a rank-deficient X (with a message) instead of refusing the fit;
so do we, from the cross-products ``X'WX`` alone (a Cholesky factorisation of their scaled
form that keeps the earlier columns, the same test as R's QR), which is all that chunked
and Dask fits have.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import linalg
from scipy.linalg.lapack import dtrtrs as _trtrs

from ._validation import caller_stacklevel

__all__ = ["RankDeficientWarning", "FixedEffectsRank", "fixed_effects_rank", "drop_aliased_columns"]


class RankDeficientWarning(UserWarning):
    """The fixed-effects design is rank deficient: aliased columns were dropped (as lme4).

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.fit : Where aliased columns are dropped.

    Notes
    -----
    Issued by ``fit`` when columns of ``X`` are linear combinations of earlier ones
    (lme4's "fixed-effect model matrix is rank deficient so dropping k columns"). The
    dropped columns get ``coef_`` 0 and NaN standard errors.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor, RankDeficientWarning
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal(60)
    >>> X = np.column_stack([x, 2 * x])  # the second column is aliased
    >>> y = x + rng.standard_normal(60)
    >>> g = np.repeat(np.arange(12), 5)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     est = MixedLMRegressor().fit(X, y, groups=g)
    >>> any(issubclass(w.category, RankDeficientWarning) for w in caught), float(est.coef_[1])
    (True, 0.0)
    """


@dataclass(frozen=True)
class FixedEffectsRank:
    """Which fixed-effects columns a fit keeps, and how the dropped ones are aliased.

    Attributes
    ----------
    names : list of str
        All fixed-effects columns, intercept first.
    kept : ndarray of bool
        The columns the model is fitted with.
    """

    names: list[str]
    kept: np.ndarray

    @property
    def deficient(self) -> bool:
        return not bool(self.kept.all())

    @property
    def kept_names(self) -> list[str]:
        return [n for n, k in zip(self.names, self.kept) if k]

    @property
    def dropped_names(self) -> list[str]:
        return [n for n, k in zip(self.names, self.kept) if not k]

    def expand(self, values: np.ndarray, fill: float) -> np.ndarray:
        """A vector over the kept columns as one over all columns, ``fill`` for the dropped."""
        out = np.full(self.kept.size, fill)
        out[self.kept] = values
        return out

    def expand_cov(self, cov: np.ndarray) -> np.ndarray:
        """A kept-columns covariance with NaN rows and columns for the dropped ones."""
        out = np.full((self.kept.size, self.kept.size), np.nan)
        out[np.ix_(self.kept, self.kept)] = cov
        return out

    def estimable(self, L: np.ndarray) -> np.ndarray:
        """For each row of ``L`` (over all columns): does it leave the dropped columns out?

        The model is the model of the kept columns (as lme4 refits without the dropped
        ones), so a contrast that puts weight on a dropped coefficient has no estimate.
        """
        return np.all(np.atleast_2d(L)[:, ~self.kept] == 0, axis=1)

    def message(self) -> str:
        k = int((~self.kept).sum())
        return (f"fixed-effect model matrix is rank deficient so dropping {k} column"
                f"{'s' if k > 1 else ''} / coefficient{'s' if k > 1 else ''}: "
                f"{self.dropped_names} (aliased with the columns before them; their "
                "coefficients are reported as 0, their standard errors as NaN)")


def _solve_lower(block: np.ndarray, b: np.ndarray, trans: int) -> np.ndarray:
    """``block^{-1} b`` (``trans=0``) or ``block'^{-1} b`` (1) for a lower-triangular float
    ``block``: what ``linalg.solve_triangular(block, b, lower=True, trans=trans,
    check_finite=False)`` computes, by the LAPACK call it makes (the same numbers), without
    its argument handling (most of the cost on the few columns of ``X``)."""
    if block.flags.f_contiguous:
        x, info = _trtrs(block, b, lower=1, trans=trans)
    else:  # the transposed system, as scipy solves a C-ordered one
        x, info = _trtrs(block.T, b, lower=0, trans=1 - trans)
    if info != 0:
        return linalg.solve_triangular(block, b, lower=True, trans=trans, check_finite=False)
    return x


def fixed_effects_rank(xtx: np.ndarray, names: Sequence[str], n_obs: int,
                       tol: float = 1e-7) -> FixedEffectsRank:
    """lme4's rank check of the fixed effects, on ``X'X``: which columns to keep.

    lme4 (``chkRank.drop.cols``) takes R's ``qr(X, tol = 1e-7)``, a QR with limited
    pivoting that keeps the earlier columns: column ``j`` is dropped when the part of it
    that the kept columns before it do not explain has a norm below ``tol`` times its
    own. The same test on ``X'X`` (all that chunked and Dask fits have) is a Cholesky
    factorisation of the scaled cross-products that keeps the earlier columns: with
    ``A = D^-1/2 X'X D^-1/2`` and ``K`` the columns kept so far, ``d_j = A_jj -
    A_jK A_KK^-1 A_Kj`` is that squared norm ratio, and ``j`` is dropped when
    ``d_j <= tol^2``. Forming ``X'X`` rounds it, so ``d_j`` of an exactly aliased
    column comes out as a rounding error of about ``eps (1 + |c|_1)^2`` (``c`` its
    coefficients on the kept columns, in scaled units; measured up to 12 eps at 10^6
    rows): that much is added to the threshold, so exact aliases are found whatever
    their coefficients. All-zero columns are dropped.

    Parameters
    ----------
    xtx : ndarray of shape (p, p)
        ``X' W X`` of the fixed-effects design (intercept first, if any).
    names : sequence of str
        The column names.
    n_obs : int
        Rows summed in ``xtx`` (the rounding error grows with it).
    tol : float, default 1e-7
        lme4's tolerance on the norm ratio.

    Returns
    -------
    FixedEffectsRank

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn._rank import fixed_effects_rank
    >>> a = np.array([1.0, 0.0, 1.0, 0.0]); X = np.column_stack([np.ones(4), a, 1 - a])
    >>> rank = fixed_effects_rank(X.T @ X, ["(Intercept)", "a", "b"], 4)
    >>> rank.kept_names, rank.dropped_names
    (['(Intercept)', 'a'], ['b'])
    """
    p = xtx.shape[0]
    diag = np.diag(xtx).copy()
    scale = np.sqrt(np.where(diag > 0, diag, 1.0))
    A = xtx / np.outer(scale, scale)
    gamma = np.finfo(float).eps * (4.0 + np.sqrt(max(n_obs, 1)) / 32.0)
    kept: list[int] = []
    # lower Cholesky factor of A over the kept columns, in the order kept: its leading
    # k x k block is a view, so each step costs two triangular solves and no copy
    factor = np.zeros((p, p))
    for j in range(p):
        if diag[j] <= 0:
            continue
        k = len(kept)
        if k:
            block = factor[:k, :k]
            w = _solve_lower(block, A[kept, j], 0)
            c = _solve_lower(block, w, 1)
        else:
            w = c = np.zeros(0)
        d_j = A[j, j] - w @ w
        if d_j > tol**2 + gamma * (1.0 + np.abs(c).sum()) ** 2:
            factor[k, :k] = w
            factor[k, k] = np.sqrt(d_j)
            kept.append(j)
    mask = np.zeros(p, dtype=bool)
    mask[kept] = True
    return FixedEffectsRank(list(names), mask)


def drop_aliased_columns(xtx: np.ndarray, names: Sequence[str], n_obs: int,
                         what: str = "X") -> FixedEffectsRank:
    """:func:`fixed_effects_rank`, with lme4's warning when it drops columns.

    Refuses a design none of whose columns can be kept (all zeros).
    """
    rank = fixed_effects_rank(xtx, names, n_obs)
    if not rank.kept.any():
        raise ValueError(f"{what} column(s) {list(names)} are all zeros: the model has no fixed effects")
    if rank.deficient:
        warnings.warn(rank.message(), RankDeficientWarning, stacklevel=caller_stacklevel())
    return rank
