"""Wald tests of linear hypotheses on the fixed effects (lmerTest's ``contest``).

``L C L'`` is diagonalised, ``L C L' = P D P'``; the rows of ``P'L`` are independent t
statistics whose Satterthwaite df ``nu_m`` combine into the F test's denominator df
(Kuznetsova et al. 2017, sec. 3.2; Fai & Cornelius 1996).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ._parameters import fitted_model
from ._protocol import choose_df
from .kenward_roger import kenward_roger_model
from .satterthwaite import varpar_model

__all__ = ["WaldTestResult", "wald_test", "contrast_matrix", "combined_ddf"]


@dataclass(frozen=True)
class WaldTestResult:  # numpydoc ignore=PR01
    """A Wald test of ``L beta = rhs``.

    Attributes
    ----------
    statistic : float
        F statistic ``(L b - rhs)' (L C L')^- (L b - rhs) / rank`` (with one row, the
        squared t statistic).
    df_num : int
        Rank of ``L C L'``.
    df_denom : float
        Denominator degrees of freedom (Satterthwaite or Kenward-Roger); ``inf`` for the
        chi-square test.
    pvalue : float
        The p-value.
    estimate : ndarray
        ``L b - rhs``.
    method : str
        ``"satterthwaite"`` or ``"kenward-roger"`` (F tests) or ``"chi2"``. With
        Kenward-Roger ``statistic`` is pbkrtest's scaled F (``KRmodcomp``'s ``Ftest``).

    See Also
    --------
    mixedlm_sklearn.inference.wald_test : Make one.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    >>> test = fit.wald_test("Days")
    >>> test.df_num, round(test.df_denom, 3), test.method
    (1, 17.0, 'satterthwaite')
    """

    statistic: float
    df_num: int
    df_denom: float
    pvalue: float
    estimate: np.ndarray
    method: str

    def __str__(self) -> str:
        if self.method == "chi2":
            return (f"Wald chi2 test: chi2 = {self.statistic * self.df_num:.4g}, "
                    f"df = {self.df_num}, p = {self.pvalue:.4g}")
        name = "Kenward-Roger" if self.method == "kenward-roger" else "Satterthwaite"
        return (f"Wald F test ({name}): F = {self.statistic:.4g}, df = "
                f"({self.df_num}, {self.df_denom:.4g}), p = {self.pvalue:.4g}")


def contrast_matrix(L: Any, names: list[str]) -> np.ndarray:
    p = len(names)
    if isinstance(L, str):
        L = [L]
    if isinstance(L, pd.DataFrame):
        missing = [c for c in L.columns if c not in names]
        if missing:
            raise ValueError(f"L has columns {missing} that are not fixed effects {names}")
        return L.reindex(columns=names, fill_value=0.0).to_numpy(dtype=float)
    if isinstance(L, Sequence) and len(L) > 0 and all(isinstance(v, str) for v in L):
        unknown = [v for v in L if v not in names]
        if unknown:
            raise ValueError(f"unknown fixed effect(s) {unknown}; the fixed effects are {names}")
        return np.eye(p)[[names.index(v) for v in L]]
    M = np.atleast_2d(np.asarray(L, dtype=float))
    if M.ndim != 2:
        raise ValueError(f"L must be a vector or a matrix (one row per hypothesis, {p} columns "
                         f"for the fixed effects {names}); got a {M.ndim}-D array of shape {M.shape}")
    if M.shape[1] != p:
        raise ValueError(f"L must have {p} columns (one per fixed effect {names}); got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError("L contains NaN or infinite values")
    return M


def combined_ddf(nu: np.ndarray) -> float:
    """Denominator df of an F test from the df of its independent t components.

    Fai & Cornelius (1996), as lmerTest: with ``E = sum nu_m / (nu_m - 2)``, the F
    statistic's ``ddf = 2 E / (E - r)``; 2 when some ``nu_m <= 2`` (no finite moments).
    """
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < 1e-8):
        return float(nu.mean())
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - nu.size)


def wald_test(est: Any, L: Any, rhs: Any = None, ddf: str | None = None) -> WaldTestResult:
    """Wald test of the linear hypothesis ``L beta = rhs`` on the fixed effects.

    Parameters
    ----------
    est : MixedLMRegressor, MixedGLMClassifier or MixedGLMRegressor
        A fitted model (a GLMM with ``ddf="chi2"`` only).
    L : str, sequence of str, array-like of shape (r, p) or (p,), or DataFrame
        Names of fixed effects (joint test that they are all 0), a contrast matrix whose
        columns follow ``est.fe_params_``, or a DataFrame with fixed-effect names as columns.
    rhs : array-like of shape (r,), optional
        Hypothesised values of ``L beta``; default 0.
    ddf : {"satterthwaite", "kenward-roger", "chi2"}, optional
        F test with Satterthwaite denominator df (lmerTest's ``contest``; the default where
        the dispersion is estimated), Kenward-Roger's F test (pbkrtest's ``KRmodcomp``:
        adjusted covariance, scaled statistic; REML fits), or the asymptotic chi-square
        test (the default, and the only choice, for a binomial or Poisson GLMM).

    Returns
    -------
    WaldTestResult
        The statistic, its degrees of freedom and p-value.

    Raises
    ------
    ValueError
        For a GLMM with an F test, a ``rhs`` of the wrong length, or a hypothesis that
        tests nothing (``L cov L'`` zero).

    See Also
    --------
    mixedlm_sklearn.MixedLMRegressor.anova : The F tests of every term.
    mixedlm_sklearn.inference.satterthwaite_df : The df of single contrasts.

    Notes
    -----
    ``L C L'`` is diagonalised, ``L C L' = P D P'``; the rows of ``P'L`` are independent
    t statistics whose Satterthwaite df ``nu_m`` combine into the F test's denominator
    df (Kuznetsova et al. 2017, sec. 3.2). A rank-deficient ``L`` is tested on its rank.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedlm_sklearn import MixedLMRegressor
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> df = load_sleepstudy()
    >>> Z = np.column_stack([np.ones(len(df)), df["Days"]])
    >>> est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    >>> print(est.wald_test("Days"))
    Wald F test (Satterthwaite): F = 45.85, df = (1, 17), p = 3.264e-06
    """
    model = fitted_model(est)
    ddf = choose_df(model, ddf, ("satterthwaite", "kenward-roger", "asymptotic"))
    ddf = "chi2" if ddf == "asymptotic" else ddf
    names = list(est.fe_params_.index)
    M = contrast_matrix(L, names)
    r = M.shape[0]
    c = np.zeros(r) if rhs is None else np.asarray(rhs, dtype=float).reshape(-1)
    if c.shape != (r,):
        raise ValueError(f"rhs must have {r} values (one per row of L), got {c.size}")
    estimate = M @ est.fe_params_.to_numpy() - c
    rank = model.rank
    cov = est.cov_fe_
    if rank is not None:
        ok = rank.estimable(M)
        if not ok.all():
            # as lmerTest: a hypothesis on aliased (dropped) columns has no test
            involved = [n for n, used in zip(rank.names, np.any(M[~ok] != 0, axis=0))
                        if used and n in rank.dropped_names]
            warnings.warn(f"rows {np.flatnonzero(~ok).tolist()} of L involve the fixed effect(s) "
                          f"{involved}, dropped from the fit as aliased: the hypothesis is not "
                          "estimable, its test is NaN", UserWarning, stacklevel=2)
            estimate[~ok] = np.nan
            return WaldTestResult(np.nan, r, np.nan, np.nan, estimate, ddf)
        M = M[:, rank.kept]
        cov = cov[np.ix_(rank.kept, rank.kept)]
    d, P = np.linalg.eigh(M @ cov @ M.T)
    d, P = d[::-1], P[:, ::-1]
    # rank as lmerTest's contestMD decides it: eigenvalues above sqrt(eps) * the largest
    keep = d > max(np.sqrt(np.finfo(float).eps) * d[0], 0.0)
    rank = int(keep.sum())
    if rank == 0:
        raise ValueError("L @ cov(beta) @ L.T is zero: the hypothesis tests nothing")
    d, P = d[keep], P[:, keep]
    F = float(np.sum((P.T @ estimate) ** 2 / d) / rank)
    if ddf == "chi2":
        return WaldTestResult(F, rank, np.inf, float(stats.chi2.sf(F * rank, rank)), estimate, "chi2")
    if ddf == "kenward-roger":
        # the hypothesis on its rank: the rows P'L span the same space with full row rank
        sol = fitted_model(est).solution
        test = kenward_roger_model(est).f_test(P.T @ M, sol.beta, P.T @ c)
        return WaldTestResult(test.statistic, test.ndf, test.ddf, test.pvalue, estimate,
                              "kenward-roger")
    nu = varpar_model(est).contrast_df(P.T @ M)
    df_denom = combined_ddf(nu)
    return WaldTestResult(F, rank, df_denom, float(stats.f.sf(F, rank, df_denom)), estimate,
                          "satterthwaite")


