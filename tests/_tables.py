"""Shared helpers of the inference-table tests (Kenward-Roger, anova, emmeans, R2).

* The R references: ``data/reference/extras`` (shared, computed by the lead) and
  ``data/reference/inference_tables`` (``make_references.R`` there: the same tables plus
  lme4's variance parameters, so the formulas can be evaluated at exactly R's point).
* The data sets prepared as in ``make_references.R``.
* Designs and covariances of a fit in the layout :func:`kenward_roger` takes.
* A dense brute-force Kenward-Roger (pbkrtest's ``vcovAdj`` written out with ``n x n``
  matrices), the oracle for the cross-product implementation.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixedlm_sklearn import MixedLMRegressor, lmer
from mixedlm_sklearn.inference.kenward_roger import (KRInputs, RandomBlock,
                                                     covariance_derivatives, kenward_roger)
from mixedlm_sklearn.datasets import (load_dietox, load_orthodont, load_penicillin,
                                      load_sleepstudy)

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
# the bundled copies of the data sets (the repository is complete without ../shared)
DATASETS = Path(__file__).resolve().parent.parent / "mixedlm_sklearn" / "datasets" / "data"


def extras(name: str) -> dict:
    """A shared reference of ``extras/`` (lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2, ...)."""
    return json.loads((REFERENCE / "extras" / f"{name}.json").read_text())


def supplementary(name: str) -> dict:
    """A reference of ``inference_tables/`` (``make_references.R``)."""
    return json.loads((REFERENCE / "inference_tables" / f"{name}.json").read_text())


def r_matrix(entry: dict) -> np.ndarray:
    """A matrix stored by ``make_references.R`` (rows as nested lists)."""
    return np.atleast_2d(np.asarray(entry["values"], dtype=float))


def r_column(table: dict, column: str) -> np.ndarray:
    """A table column as floats (R's JSON unboxes length-one vectors; "NA" -> nan)."""
    values = table[column]
    values = values if isinstance(values, list) else [values]
    return np.array([np.nan if v == "NA" else v for v in values], dtype=float)


def r_rows(table: dict, key: str = "rows") -> list[str]:
    values = table[key]
    return list(values) if isinstance(values, list) else [values]


# ---- data sets, prepared as make_references.R prepares them ------------------------------


def orthodont() -> pd.DataFrame:
    df = load_orthodont()
    df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])  # R's level order
    return df


def grouseticks() -> pd.DataFrame:
    df = pd.read_csv(DATASETS / "grouseticks.csv", dtype={"YEAR": str, "BROOD": str,
                                                          "LOCATION": str, "INDEX": str})
    df["lticks"] = np.log(df["TICKS"] + 1.0)
    return df


def dietox_q3() -> pd.DataFrame:
    df = load_dietox()
    df["T2"] = (df["Time"] - 6.0) ** 2 / 10.0
    return df


def sleepstudy_weighted() -> pd.DataFrame:
    df = load_sleepstudy()
    df["w"] = 1.0 + df["Days"] % 3
    return df


def sum_coded_design(rows: pd.DataFrame) -> np.ndarray:
    """``Time + Evit * Cu`` with R's ``contr.sum`` (the last level -1), R's column order:
    (Intercept), Time, Evit1, Evit2, Cu1, Cu2, Evit1:Cu1, Evit2:Cu1, Evit1:Cu2, Evit2:Cu2.

    The formula front end has treatment contrasts only; this design, fitted from arrays,
    keeps lmerTest's mapping of type III contrasts to another coding under test.
    """
    def contr_sum(values, levels):
        codes = pd.Categorical(values, categories=levels).codes
        out = np.zeros((len(values), len(levels) - 1))
        for j in range(len(levels) - 1):
            out[:, j] = np.where(codes == j, 1.0, np.where(codes == len(levels) - 1, -1.0, 0.0))
        return out

    evit = contr_sum(rows["Evit"], ["Evit000", "Evit100", "Evit200"])
    cu = contr_sum(rows["Cu"], ["Cu000", "Cu035", "Cu175"])
    inter = (evit[:, :, None] * cu[:, None, :]).transpose(0, 2, 1).reshape(len(rows), -1)
    return np.column_stack([np.ones(len(rows)), rows["Time"], evit, cu, inter])


SUM_CODED_NAMES = ["Time", "Evit1", "Evit2", "Cu1", "Cu2", "Evit1:Cu1", "Evit2:Cu1",
                   "Evit1:Cu2", "Evit2:Cu2"]

#: case -> (formula for our lmer, data loader); dietox_factorial_sum is fitted from arrays
#: (sum_coded_design) with the random part of its formula
CASES = {
    "orthodont_slopes": ("distance ~ age * Sex + (age | Subject)", orthodont),
    "dietox_unbalanced": ("Weight ~ Time * Evit + Cu + (Time | Pig)", load_dietox),
    "grouseticks_crossed": ("lticks ~ YEAR * cHEIGHT + (1 | BROOD) + (1 | LOCATION)", grouseticks),
    "sleepstudy_diagonal": ("Reaction ~ Days + (Days || Subject)", load_sleepstudy),
    "dietox_q3": ("Weight ~ Time + T2 + (Time + T2 | Pig)", dietox_q3),
    "sleepstudy_weighted": ("Reaction ~ Days + (Days | Subject)", sleepstudy_weighted),
    "penicillin_crossed": ("diameter ~ 1 + (1 | plate) + (1 | sample)", load_penicillin),
    "orthodont_logage": ("distance ~ np.log(age) * Sex + (1 | Subject)", orthodont),
    "dietox_factorial": ("Weight ~ Time + Evit * Cu + (1 | Pig)", load_dietox),
    "dietox_factorial_sum": ("Weight ~ Time + Evit * Cu + (1 | Pig)", load_dietox),
}


@lru_cache(maxsize=None)
def frame(case: str):
    """The ModelFrame of a case (the sum-coded case: that of its treatment-coded twin, whose
    rows, terms and random part are the same)."""
    formula, load = CASES[case]
    from mixedlm_sklearn.formula import parse_formula
    return parse_formula(formula, load())


@lru_cache(maxsize=None)
def fitted(case: str):
    """Our REML fit of a case (cached: the tests only read it)."""
    formula, load = CASES[case]
    data = load()
    if case == "sleepstudy_weighted":
        mf = lmer(formula, data).model_frame_
        args = mf.fit_arguments()
        est = MixedLMRegressor().fit(args["X"], args["y"], groups=args["groups"], Z=args["Z"],
                                     sample_weight=data["w"].to_numpy())
        est.model_frame_ = mf  # the tables read its terms; lmer has no weights
        return est
    if case == "dietox_factorial_sum":
        mf = frame(case)
        X = pd.DataFrame(sum_coded_design(mf.rows)[:, 1:], columns=SUM_CODED_NAMES,
                         index=mf.rows.index)
        return MixedLMRegressor().fit(X, mf.y, groups=mf.rows["Pig"])
    return lmer(formula, data)


def design(est) -> np.ndarray:
    """The fixed-effects design of a fit, intercept first (``fe_params_`` order)."""
    return est.model_.design.X_full


def re_designs(est, case: str | None = None) -> list[tuple[str, pd.Series, np.ndarray]]:
    """(name, labels, Z) per random-effects term, ``||`` split as lme4 splits it."""
    mf = getattr(est, "model_frame_", None) if case is None else frame(case)
    return [(name, labels, Z.to_numpy()) for name, labels, Z in mf._pieces()]


def our_covs(est, case: str | None = None) -> dict[str, np.ndarray]:
    """The fit's covariance per term (split ``||`` terms get their diagonal entries)."""
    pieces = re_designs(est, case)
    if isinstance(est.cov_re_, dict):
        return {name: np.atleast_2d(est.cov_re_[name]) for name, _, _ in pieces}
    if len(pieces) == 1:
        return {pieces[0][0]: np.atleast_2d(est.cov_re_)}
    # one diagonal term split by column
    return {name: np.atleast_2d(est.cov_re_[i, i]) for i, (name, _, _) in enumerate(pieces)}


def r_covs(ref: dict) -> dict[str, np.ndarray]:
    return {vc["group"]: np.atleast_2d(np.asarray(vc["cov"], dtype=float)) for vc in ref["varcorr"]}


def kr_at(est, covs: dict[str, np.ndarray], sigma2: float, weights: Any = None,
          case: str | None = None):
    """:func:`kenward_roger` for the fit's designs at given variance parameters."""
    pieces = re_designs(est, case)
    inputs = KRInputs.from_designs(design(est), [(lab, Z) for _, lab, Z in pieces],
                                   weights=weights)
    blocks = [RandomBlock(labels.nunique(), np.atleast_2d(covs[name]), name=name)
              for name, labels, _ in pieces]
    return kenward_roger(inputs, blocks, sigma2)


def kr_at_r(case: str, weights: Any = None):
    """:func:`kenward_roger` at lme4's estimates of a supplementary case."""
    ref = supplementary(case)
    return kr_at(fitted(case), r_covs(ref), ref["sigma"] ** 2, weights=weights, case=case)


def r_fixef(case: str) -> np.ndarray:
    """lme4's fixed effects of a supplementary case (``fixef``, in our column order)."""
    return np.array(list(supplementary(case)["fixef"].values()), dtype=float)


def r_lambda(case: str) -> np.ndarray:
    """lme4's relative covariance factor of a one-term case: ``theta`` fills the lower
    triangle column by column."""
    theta = np.atleast_1d(np.asarray(supplementary(case)["theta"], dtype=float))
    q = int(round((np.sqrt(8 * theta.size + 1) - 1) / 2))
    lam = np.zeros((q, q))
    lam[np.triu_indices(q)[::-1]] = theta  # (i, j), i >= j, column by column
    return lam


@lru_cache(maxsize=None)
def exact_beta_at_r(case: str) -> tuple[np.ndarray, np.ndarray]:
    """The fixed effects at lme4's theta solved exactly, and the rounding a double-precision
    solution from cross-products carries (one grouping factor: V is block diagonal).

    ``exact`` is :func:`_dense.exact_gls_beta` (rational arithmetic on the same doubles).
    ``rounding`` is, per coefficient, ``sqrt(n) u |A^{-1}| (|X|'|y| + |X|'|X| |beta|)`` with
    ``A = X'V^{-1}X``: the rounding of cross-products of ``n`` rows (``sqrt(n) u`` per
    entry, the probabilistic bound of Higham & Mary 2019, SIAM J. Sci. Comput. 41(5))
    carried through the solve to first order. lme4 solves from the same cross-products.
    """
    from _dense import exact_gls_beta

    est = fitted(case)
    (_, labels, Z), = re_designs(est, case)
    X, y = design(est), np.asarray(frame(case).y, dtype=float)
    exact, a_inv = exact_gls_beta(X, y, Z, np.asarray(labels), r_lambda(case))
    u = np.finfo(float).eps / 2
    absX = np.abs(X)
    rounding = np.sqrt(len(y)) * u * (np.abs(a_inv) @ (absX.T @ np.abs(y)
                                                       + absX.T @ absX @ np.abs(exact)))
    return exact, rounding


# ---- the dense oracle -----------------------------------------------------------------------


def dense_z(re_terms) -> np.ndarray:
    """Z (n x N) with the random effects term by term, level by level (sorted), effect."""
    cols = []
    for labels, Z in re_terms:
        Z = np.atleast_2d(np.asarray(Z, dtype=float).T).T
        codes, levels = pd.factorize(pd.Series(np.asarray(labels)), sort=True)
        for j in range(len(levels)):
            cols.append(Z * (codes == j)[:, None])
    return np.hstack(cols)


def dense_kenward_roger(X, re_terms, covs, residual_diag, residual_derivs, phi=None):
    """pbkrtest's ``vcovAdj`` with ``n x n`` matrices (Halekoh & Hojsgaard 2014, sec. 3).

    ``covs`` per term, ``residual_diag`` the diagonal of R, ``residual_derivs`` a list of
    diagonals dR/dsigma_s^2; ``phi`` replaces ``(X'V^{-1}X)^{-1}`` (as pbkrtest takes it
    from ``vcov(fit)``). Returns ``(Phi, Phi_A, P, W)``.
    """
    Zd = dense_z(re_terms)
    G_list, Gmat_blocks = [], []
    start = 0
    for (labels, Z), cov in zip(re_terms, covs):
        q = cov.shape[0]
        m = pd.Series(np.asarray(labels)).nunique()
        Zk = Zd[:, start:start + m * q]
        for E in covariance_derivatives(q):
            G_list.append(Zk @ np.kron(np.eye(m), E) @ Zk.T)
        Gmat_blocks.append(np.kron(np.eye(m), cov))
        start += m * q
    for d in residual_derivs:
        G_list.append(np.diag(d))
    from scipy.linalg import block_diag
    Gfull = block_diag(*Gmat_blocks)
    Sigma = Zd @ Gfull @ Zd.T + np.diag(residual_diag)
    Si = np.linalg.inv(Sigma)
    Phi = np.linalg.inv(X.T @ Si @ X) if phi is None else np.asarray(phi, dtype=float)
    k = len(G_list)
    HH = [G @ Si for G in G_list]
    OO = [Hh @ X for Hh in HH]
    TT = Si @ X
    P = [-(O.T @ TT) for O in OO]
    Q = [[OO[i].T @ Si @ OO[j] for j in range(k)] for i in range(k)]
    Kt = np.array([[np.sum(HH[i].T * HH[j]) for j in range(k)] for i in range(k)])
    IE2 = np.array([[Kt[i, j] - 2 * np.sum(Phi * Q[i][j]) + np.sum((Phi @ P[i]) * (P[j] @ Phi))
                     for j in range(k)] for i in range(k)])
    W = 2 * np.linalg.inv(IE2)
    U = sum(W[i, j] * (Q[i][j] - P[i] @ Phi @ P[j]) for i in range(k) for j in range(k))
    return Phi, Phi + 2 * Phi @ U @ Phi, np.array(P), W


def at_r_point(case: str):
    """A copy of our fit moved to lme4's estimates (theta, hence sigma and beta).

    Everything computed from the fit's solution (Satterthwaite df, ``cov_fe_``) is then
    evaluated where R evaluated it, so the comparison checks the formulas, not the two
    optimisers (which stop up to 5.6e-6 apart in the REML criterion).
    """
    import copy
    import dataclasses

    est = fitted(case)
    ref = supplementary(case)
    sol = est.model_.deviance.solution(np.atleast_1d(np.asarray(ref["theta"], dtype=float)))
    moved = copy.copy(est)
    moved.model_ = dataclasses.replace(est.model_, solution=sol)
    moved._set_fitted(isinstance(est.random_effects_, dict))
    return moved
