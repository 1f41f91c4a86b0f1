"""Prediction uncertainty: ``predict(return_std=True)`` and ``predict_interval``
against a dense n x n computation and by simulation.

The oracle writes the prediction as a linear function of y, ``a'y`` with ``a`` from the
GLS estimate of beta and the BLUP ``G Z'V^{-1}(y - X beta_hat)``, and its error against
the new observation as ``a'y - x'beta - z'b - e``: its variance ``a'Va - 2 a'Z G c +
c'G c (+ sigma^2)`` uses the n x n covariance ``V = Z G Z' + R`` only, nothing of the
package's mixed-model equations (whose Schur complement the package evaluates).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_orthodont, load_penicillin, load_sleepstudy


def dense_prediction_variance(X, terms, covs, residual, x0, terms0, residual0):
    """Variance of the prediction error of new rows, with n x n matrices.

    ``terms``: per random-effects term ``(codes, Z)`` of the fitted rows; ``covs`` their
    covariances; ``residual`` the rows' residual variances. ``terms0``: per term the new
    rows' ``(codes, Z)`` with code -1 for a level not in the fit; ``residual0`` the new
    observations' residual variances (0 for the conditional mean).
    """
    n = X.shape[0]
    blocks, G_blocks, C_blocks, unseen = [], [], [], np.zeros(len(x0))
    for (codes, Z), cov, (codes0, Z0) in zip(terms, covs, terms0):
        m, q = codes.max() + 1, Z.shape[1]
        Zk = np.zeros((n, m * q))
        for j in range(q):
            Zk[np.arange(n), codes * q + j] = Z[:, j]
        blocks.append(Zk)
        G_blocks.append(np.kron(np.eye(m), cov))
        Ck = np.zeros((len(x0), m * q))  # the new rows' z at their (seen) level
        seen = codes0 >= 0
        for j in range(q):
            Ck[np.flatnonzero(seen), codes0[seen] * q + j] = Z0[seen, j]
        C_blocks.append(Ck)
        unseen[~seen] += np.einsum("ia,ab,ib->i", Z0[~seen], cov, Z0[~seen])
    from scipy.linalg import block_diag
    Zd, G, C = np.hstack(blocks), block_diag(*G_blocks), np.hstack(C_blocks)
    V = Zd @ G @ Zd.T + np.diag(residual)
    Vi = np.linalg.inv(V)
    H = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)  # beta_hat = H y
    A = x0 @ H + C @ G @ Zd.T @ Vi @ (np.eye(n) - X @ H)  # prediction = A y
    return (np.einsum("ij,jk,ik->i", A, V, A) - 2.0 * np.einsum("ij,jk,ik->i", A, Zd @ G, C)
            + np.einsum("ij,jk,ik->i", C, G, C) + unseen + residual0)


def _codes(fitted_labels, labels):
    return pd.Index(fitted_labels).get_indexer(np.asarray(labels, dtype=object))


def test_one_factor_with_slopes_seen_and_new_subjects():
    df = load_sleepstudy()
    Z = df[["Days"]].assign(one=1.0)[["one", "Days"]].to_numpy()
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    new = pd.DataFrame({"Days": [0.0, 4.5, 12.0, 3.0, 20.0],
                        "Subject": ["308", "309", "372", "new", "other"]})
    Z0 = np.column_stack([np.ones(len(new)), new["Days"]])
    mean, std = est.predict(new[["Days"]], groups=new["Subject"], Z=Z0, return_std=True)
    np.testing.assert_allclose(mean, est.predict(new[["Days"]], groups=new["Subject"], Z=Z0))
    X = np.column_stack([np.ones(len(df)), df["Days"]])
    codes = _codes(est.groups_, df["Subject"])
    x0 = np.column_stack([np.ones(len(new)), new["Days"]])
    terms0 = [(_codes(est.groups_, new["Subject"]), Z0)]
    for kind, resid0 in [("prediction", est.scale_), ("confidence", 0.0)]:
        dense = dense_prediction_variance(X, [(codes, Z)], [est.cov_re_],
                                          np.full(len(df), est.scale_), x0, terms0,
                                          np.full(len(new), resid0))
        lower, upper = est.predict_interval(new[["Days"]], groups=new["Subject"], Z=Z0,
                                            kind=kind, alpha=0.1)
        half = stats.norm.ppf(0.95) * np.sqrt(dense)
        np.testing.assert_allclose(lower, mean - half, rtol=1e-9)
        np.testing.assert_allclose(upper, mean + half, rtol=1e-9)
    np.testing.assert_allclose(std ** 2, dense_prediction_variance(
        X, [(codes, Z)], [est.cov_re_], np.full(len(df), est.scale_), x0, terms0,
        np.full(len(new), est.scale_)), rtol=1e-9)
    # without groups every row is a new subject
    _, pop = est.predict(new[["Days"]], Z=Z0, return_std=True)
    new_rows = [(np.full(len(new), -1), Z0)]
    np.testing.assert_allclose(pop ** 2, dense_prediction_variance(
        X, [(codes, Z)], [est.cov_re_], np.full(len(df), est.scale_), x0, new_rows,
        np.full(len(new), est.scale_)), rtol=1e-9)
    with pytest.raises(ValueError, match="kind"):
        est.predict_interval(new[["Days"]], kind="tolerance")
    with pytest.raises(ValueError, match="slopes"):
        est.predict(new[["Days"]], return_std=True)  # a slope term needs its Z


def _crossed_data(seed=3):
    """Two crossed factors with many level pairs absent (partly crossed), slopes on a."""
    rng = np.random.default_rng(seed)
    n = 160
    a = rng.integers(0, 12, n)
    b = rng.integers(0, 9, n)
    x = rng.uniform(0, 4, n)
    y = (1.0 + 0.5 * x + rng.normal(0, 1.2, 12)[a] + rng.normal(0, 0.4, 12)[a] * x
         + rng.normal(0, 0.8, 9)[b] + rng.normal(0, 0.7, n))
    return pd.DataFrame({"x": x, "y": y, "a": a.astype(str), "b": b.astype(str)})


def test_crossed_factors_pairs_seen_together_apart_and_new():
    """Rows whose two levels met in the data (a block of M^{-1} the factorisation gives),
    levels that never met (solved for), and new levels of either factor."""
    df = _crossed_data()
    Za = np.column_stack([np.ones(len(df)), df["x"]])
    est = MixedLMRegressor().fit(df[["x"]], df["y"], groups=df[["a", "b"]], Z={"a": Za})
    pairs = set(zip(df["a"], df["b"]))
    absent = next((a, b) for a in sorted(set(df["a"])) for b in sorted(set(df["b"]))
                  if (a, b) not in pairs)
    present = (df["a"].iloc[0], df["b"].iloc[0])
    new = pd.DataFrame({"x": [1.0, 2.5, 0.5, 3.0, 1.5],
                        "a": [present[0], absent[0], "new", present[0], "new"],
                        "b": [present[1], absent[1], present[1], "new", "other"]})
    Z0 = np.column_stack([np.ones(len(new)), new["x"]])
    mean, std = est.predict(new[["x"]], groups=new[["a", "b"]], Z={"a": Z0}, return_std=True)
    X = np.column_stack([np.ones(len(df)), df["x"]])
    terms = [(_codes(est.groups_["a"], df["a"]), Za),
             (_codes(est.groups_["b"], df["b"]), np.ones((len(df), 1)))]
    terms0 = [(_codes(est.groups_["a"], new["a"]), Z0),
              (_codes(est.groups_["b"], new["b"]), np.ones((len(new), 1)))]
    dense = dense_prediction_variance(X, terms, [est.cov_re_["a"], est.cov_re_["b"]],
                                      np.full(len(df), est.scale_),
                                      np.column_stack([np.ones(len(new)), new["x"]]), terms0,
                                      np.full(len(new), est.scale_))
    np.testing.assert_allclose(std ** 2, dense, rtol=1e-8)


def test_penicillin_fully_crossed():
    df = load_penicillin()
    est = MixedLMRegressor(fit_intercept=False).fit(
        pd.DataFrame({"(Intercept)": np.ones(len(df))}), df["diameter"],
        groups=df[["plate", "sample"]])
    new = df[["plate", "sample"]].iloc[[0, 7, 30]].reset_index(drop=True)
    new.loc[2, "sample"] = "G"
    _, std = est.predict(pd.DataFrame({"(Intercept)": np.ones(3)}), groups=new, return_std=True)
    X = np.ones((len(df), 1))
    ones = np.ones((len(df), 1))
    terms = [(_codes(est.groups_[k], df[k]), ones) for k in ("plate", "sample")]
    terms0 = [(_codes(est.groups_[k], new[k]), np.ones((3, 1))) for k in ("plate", "sample")]
    dense = dense_prediction_variance(X, terms, [est.cov_re_["plate"], est.cov_re_["sample"]],
                                      np.full(len(df), est.scale_), np.ones((3, 1)), terms0,
                                      np.full(3, est.scale_))
    np.testing.assert_allclose(std ** 2, dense, rtol=1e-8)


def test_nested_factors():
    rng = np.random.default_rng(7)
    batch = np.repeat(np.arange(8), 12)
    cask = batch * 3 + np.tile(np.repeat(np.arange(3), 4), 8)
    x = rng.normal(size=batch.size)
    y = 2 + x + rng.normal(0, 1.5, 8)[batch] + rng.normal(0, 1.0, 24)[cask] + rng.normal(0, 0.5, x.size)
    df = pd.DataFrame({"x": x, "y": y, "batch": batch.astype(str), "cask": cask.astype(str)})
    est = MixedLMRegressor().fit(df[["x"]], df["y"], groups=df[["batch", "cask"]])
    new = pd.DataFrame({"x": [0.3, -1.0, 0.0], "batch": ["0", "5", "new"], "cask": ["1", "99", "new"]})
    _, std = est.predict(new[["x"]], groups=new[["batch", "cask"]], return_std=True)
    X = np.column_stack([np.ones(len(df)), x])
    ones = np.ones((len(df), 1))
    terms = [(_codes(est.groups_[k], df[k]), ones) for k in ("batch", "cask")]
    terms0 = [(_codes(est.groups_[k], new[k]), np.ones((3, 1))) for k in ("batch", "cask")]
    dense = dense_prediction_variance(X, terms, [est.cov_re_["batch"], est.cov_re_["cask"]],
                                      np.full(len(df), est.scale_),
                                      np.column_stack([np.ones(3), new["x"]]), terms0,
                                      np.full(3, est.scale_))
    np.testing.assert_allclose(std ** 2, dense, rtol=1e-8)


def test_residual_strata_and_prior_weights():
    """Omega = prior weights x stratum ratios in the fit; a new observation's residual
    variance is its stratum's (prior weight 1)."""
    df = load_orthodont()
    w = 1.0 + (df["age"] > 10)
    Z = np.column_stack([np.ones(len(df)), df["age"]])
    est = MixedLMRegressor().fit(df[["age"]], df["distance"], groups=df["Subject"], Z=Z,
                                 residual_groups=df["Sex"], sample_weight=w)
    new = pd.DataFrame({"age": [9.0, 13.0, 11.0], "Subject": ["M01", "F03", "X99"],
                        "Sex": ["Male", "Female", "Female"]})
    Z0 = np.column_stack([np.ones(3), new["age"]])
    _, std = est.predict(new[["age"]], groups=new["Subject"], Z=Z0, return_std=True,
                         residual_groups=new["Sex"])
    residual = np.array([est.residual_var_[s] for s in df["Sex"]]) / w
    residual0 = np.array([est.residual_var_[s] for s in new["Sex"]])
    dense = dense_prediction_variance(
        np.column_stack([np.ones(len(df)), df["age"]]), [(_codes(est.groups_, df["Subject"]), Z)],
        [est.cov_re_], residual, np.column_stack([np.ones(3), new["age"]]),
        [(_codes(est.groups_, new["Subject"]), Z0)], residual0)
    np.testing.assert_allclose(std ** 2, dense, rtol=1e-9)
    with pytest.raises(ValueError, match="residual_groups"):
        est.predict(new[["age"]], groups=new["Subject"], Z=Z0, return_std=True)
    with pytest.raises(ValueError, match="strata"):
        est.predict(new[["age"]], groups=new["Subject"], Z=Z0, return_std=True,
                    residual_groups=["Male", "Other", "Male"])
    # the conditional mean needs no stratum
    lower, upper = est.predict_interval(new[["age"]], groups=new["Subject"], Z=Z0,
                                        kind="confidence")
    assert np.all(upper - lower < 2 * stats.norm.ppf(0.975) * std)


# ---- coverage ---------------------------------------------------------------------------------

BETA = np.array([10.0, 2.0])
COV_RE = np.array([[4.0, 0.5], [0.5, 0.25]])
SIGMA2 = 1.0


def _simulate(rng, m=30, per=6):
    g = np.repeat(np.arange(m), per)
    x = rng.uniform(0, 10, g.size)
    b = rng.multivariate_normal(np.zeros(2), COV_RE, m)
    y = BETA[0] + BETA[1] * x + b[g, 0] + b[g, 1] * x + rng.normal(0, np.sqrt(SIGMA2), g.size)
    return g, x, y, b


def _at(est, x):
    """The fit moved to the variance parameters ``x`` (theta), everything recomputed there."""
    moved = copy.copy(est)
    moved.model_ = dataclasses.replace(est.model_, solution=est.model_.deviance.solution(x))
    moved._set_fitted(False)
    return moved


def _coverage(true_parameters: bool, reps: int = 200, seed: int = 11):
    """Per replicate: the share of new observations (one per seen group, five of new groups)
    inside their 90% prediction intervals."""
    rng = np.random.default_rng(seed)
    L = np.linalg.cholesky(COV_RE / SIGMA2)
    theta = np.array([L[0, 0], L[1, 0], L[1, 1]])  # lme4's order: column by column
    shares = []
    for _ in range(reps):
        g, x, y, b = _simulate(rng)
        est = MixedLMRegressor().fit(x[:, None], y, groups=g, Z=np.column_stack([np.ones_like(x), x]))
        if true_parameters:
            est = _at(est, theta)
        m = b.shape[0]
        x_new = rng.uniform(0, 10, m + 5)
        groups = np.r_[np.arange(m), -1 - np.arange(5)]
        b_new = np.vstack([b, rng.multivariate_normal(np.zeros(2), COV_RE, 5)])
        y_new = (BETA[0] + BETA[1] * x_new + b_new[:, 0] + b_new[:, 1] * x_new
                 + rng.normal(0, np.sqrt(SIGMA2), m + 5))
        lower, upper = est.predict_interval(x_new[:, None], groups=groups,
                                            Z=np.column_stack([np.ones_like(x_new), x_new]),
                                            alpha=0.1)
        shares.append(np.mean((lower <= y_new) & (y_new <= upper)))
    shares = np.array(shares)
    return shares.mean(), shares.std(ddof=1) / np.sqrt(reps)


def test_coverage_at_the_true_variance_parameters_is_nominal():
    """At the true variance parameters the prediction error is exactly Gaussian with the
    computed variance: coverage 90% within Monte Carlo error (3 standard errors)."""
    mean, se = _coverage(true_parameters=True)
    assert abs(mean - 0.90) < 3 * se, (mean, se)


def test_coverage_with_estimated_variance_parameters():
    """With REML estimates plugged in (30 groups) the coverage stays within Monte Carlo error
    of 90% plus the plug-in shortfall the intervals do not model (at most one point)."""
    mean, se = _coverage(true_parameters=False, seed=12)
    assert 0.89 - 3 * se < mean < 0.90 + 3 * se, (mean, se)
