"""A rank-deficient X: aliased columns are dropped as lme4 drops them.

Reference (lme4 1.1-31, lmerTest 3.1; ``d`` is sleepstudy with ``period`` = early
(Days 0-2), mid (3-5), late (6-9) and its three 0/1 indicator columns)::

    m <- lmerTest::lmer(Reaction ~ Days + p_early + p_late + p_mid + (Days | Subject), d, REML = reml)
    # "fixed-effect model matrix is rank deficient so dropping 1 column / coefficient"
    logLik(m); fixef(m); summary(m)$coefficients; attr(logLik(m), "df")

lme4 reports a convergence warning on the REML fit; our optimum is 1.2e-7 above its
log-likelihood (4.7e-8 for ML).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from conftest import fit_with

from mixedlm_sklearn import MixedLMRegressor, RankDeficientWarning, lr_test
from mixedlm_sklearn._rank import fixed_effects_rank
from mixedlm_sklearn.datasets import load_sleepstudy
from mixedlm_sklearn.inference import satterthwaite_df

LME4 = {
    True: {"logLik": -865.825157315936, "npar": 8,
           "fixef": [248.415318518517, 11.2428277777782, 2.51167407407528, -3.13413518518608],
           "se": [10.5665361221432, 2.45721571111292, 7.8373307535434, 8.46528473022875],
           "df": [79.1684394112611, 84.8427103178439, 142.002551502446, 142.002551994962]},
    False: {"logLik": -875.88587693229, "npar": 8,
            "fixef": [248.415318518518, 11.2428277777776, 2.51167407407401, -3.13413518518545],
            "se": [10.3999471239737, 2.41954939654072, 7.7828036276789, 8.40638870293584],
            "df": [85.9502128806256, 91.9392913714398, 143.999857939082, 143.999857616598]},
}
KEPT = ["(Intercept)", "Days", "period_early", "period_late"]


@pytest.fixture(scope="module")
def sleep():
    df = load_sleepstudy()
    df["period"] = np.where(df["Days"] <= 2, "early", np.where(df["Days"] <= 5, "mid", "late"))
    ct = ColumnTransformer([("num", "passthrough", ["Days"]),
                            ("cat", OneHotEncoder(sparse_output=False), ["period"])],
                           verbose_feature_names_out=False).set_output(transform="pandas")
    X = ct.fit_transform(df)
    assert list(X.columns) == ["Days", "period_early", "period_late", "period_mid"]
    return df, X, np.column_stack([np.ones(len(df)), df["Days"]])


def _fit(X, y, **kw):
    params = kw.pop("params", {})
    with pytest.warns(RankDeficientWarning, match=r"dropping 1 column / coefficient: \['period_mid'\]"):
        return MixedLMRegressor(**params).fit(X, y, **kw)


@pytest.mark.parametrize("reml", [True, False])
def test_one_hot_design_with_intercept_matches_lme4(sleep, reml):
    df, X, Z = sleep
    est = _fit(X, df["Reaction"], groups=df["Subject"], Z=Z, params={"reml": reml})
    ref = LME4[reml]
    assert est.llf_ == pytest.approx(ref["logLik"], abs=1e-6)
    assert est.llf_ >= ref["logLik"] - 1e-9  # at least lme4's optimum
    assert est.df_model_ == ref["npar"]
    assert list(est.fe_params_.index) == KEPT + ["period_mid"]
    kept = est.fe_params_[KEPT].to_numpy()
    np.testing.assert_allclose(kept, ref["fixef"], rtol=0, atol=1e-4 * min(ref["se"]))
    np.testing.assert_allclose(est.bse_[KEPT], ref["se"], rtol=1e-4)
    np.testing.assert_allclose(satterthwaite_df(est)[:4], ref["df"], rtol=1e-3)
    assert est.fe_params_["period_mid"] == 0.0 and est.coef_[3] == 0.0
    assert np.isnan(est.bse_["period_mid"])
    assert np.isnan(est.cov_fe_[4]).all() and np.isnan(est.cov_fe_[:, 4]).all()
    assert np.isfinite(est.cov_fe_[:4, :4]).all()


def test_the_fit_is_the_fit_of_the_kept_columns(sleep):
    df, X, Z = sleep
    est = _fit(X, df["Reaction"], groups=df["Subject"], Z=Z)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankDeficientWarning)
        ref = MixedLMRegressor().fit(X.drop(columns="period_mid"), df["Reaction"],
                                     groups=df["Subject"], Z=Z)
    assert est.llf_ == ref.llf_ and est.df_model_ == ref.df_model_
    np.testing.assert_array_equal(est.fe_params_[KEPT], ref.fe_params_)
    np.testing.assert_array_equal(est.predict(X, groups=df["Subject"], Z=Z),
                                  ref.predict(X.drop(columns="period_mid"), groups=df["Subject"], Z=Z))


def test_pipeline_with_a_default_one_hot_encoder(sleep):
    df, _, _ = sleep
    encode = ColumnTransformer([("num", "passthrough", ["Days"]),
                                ("cat", OneHotEncoder(sparse_output=False), ["period"])])
    pipe = make_pipeline(encode.set_output(transform="pandas"), MixedLMRegressor())
    with pytest.warns(RankDeficientWarning, match="cat__period_mid"):
        pipe.fit(df[["Days", "period"]], df["Reaction"], mixedlmregressor__groups=df["Subject"])
    # lme4: lmer(Reaction ~ Days + p_early + p_late + p_mid + (1 | Subject), d) drops p_mid
    assert pipe[-1].llf_ == pytest.approx(-886.887653707914, abs=1e-6)
    pred = pipe.predict(df[["Days", "period"]])
    coef = pipe[-1].fe_params_
    period = df["period"].map({"early": coef["cat__period_early"], "late": coef["cat__period_late"],
                               "mid": 0.0})
    np.testing.assert_allclose(pred, coef["(Intercept)"] + coef["num__Days"] * df["Days"] + period)


# ---- the rank test itself ---------------------------------------------------------------------

def _brute_force_kept(X: np.ndarray, tol: float = 1e-7) -> list[int]:
    """R's qr(X, tol) with limited pivoting, by least squares on X itself: a column is kept
    when its residual on the kept columns before it has norm >= tol * its norm."""
    kept: list[int] = []
    for j in range(X.shape[1]):
        norm = np.linalg.norm(X[:, j])
        if norm == 0:
            continue
        if kept:
            coef = np.linalg.lstsq(X[:, kept], X[:, j], rcond=None)[0]
            resid = np.linalg.norm(X[:, j] - X[:, kept] @ coef)
        else:
            resid = norm
        if resid >= tol * norm:
            kept.append(j)
    return kept


@pytest.mark.parametrize("seed", range(12))
def test_rank_on_cross_products_agrees_with_qr_on_x(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([50, 2000, 200_000]))
    base = rng.standard_normal((n, 4)) * rng.uniform(0.01, 100, 4) + rng.uniform(-50, 50, 4)
    cols = [np.ones(n), *base.T]
    # exact aliases with small and large coefficients, near-aliases either side of 1e-7
    cols.append(3 * cols[1] - 0.5 * cols[2])
    cols.append(1e4 * (cols[2] - 1e-4 * cols[3]))
    near = cols[1] + cols[3]
    noise = rng.standard_normal(n)
    noise -= np.column_stack(cols[:4]) @ np.linalg.lstsq(np.column_stack(cols[:4]), noise, rcond=None)[0]
    scale = np.linalg.norm(near) / np.linalg.norm(noise)
    cols.append(near + 1e-5 * scale * noise)   # residual ratio 1e-5: kept
    cols.append(near + 1e-10 * scale * noise)  # 1e-10: dropped
    cols.append(np.zeros(n))
    X = np.column_stack(cols)
    perm = np.concatenate([[0], 1 + rng.permutation(X.shape[1] - 1)])
    X = X[:, perm]
    names = [f"c{j}" for j in range(X.shape[1])]
    rank = fixed_effects_rank(X.T @ X, names, n)
    assert list(np.flatnonzero(rank.kept)) == _brute_force_kept(X)


def test_zero_and_all_zero_columns(data):
    X, y, groups, Z = data
    with pytest.warns(RankDeficientWarning, match=r"\['zero'\]"):
        est = fit_with(X.assign(zero=0.0), y, groups=groups, Z=Z, params={"fit_intercept": False})
    ref = fit_with(X, y, groups=groups, Z=Z, params={"fit_intercept": False})
    assert est.llf_ == pytest.approx(ref.llf_, rel=1e-12)
    with pytest.raises(ValueError, match="all zeros: the model has no fixed effects"):
        fit_with(X * 0.0, y, groups=groups, Z=Z, params={"fit_intercept": False})


# ---- every kind of fit ----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["chunks", "dask", "residual_groups", "several factors",
                                  "least squares"])
def test_every_kind_of_fit_drops_the_same_columns(data, case):
    X, y, groups, Z = data
    X3 = X.assign(c=2 * X["a"] - X["b"], d=X["a"])
    frame = X3.assign(y=y, g=groups)
    kw = {"groups": groups}
    if case == "residual_groups":
        kw["residual_groups"] = np.tile([0, 1], len(y) // 2)
    elif case == "several factors":
        kw["groups"] = pd.DataFrame({"g": groups, "h": np.tile(np.arange(5), 12)})
    elif case == "least squares":
        kw = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = fit_with(X, y, **kw)
    with pytest.warns(RankDeficientWarning, match=r"dropping 2 columns / coefficients: \['c', 'd'\]"):
        if case == "chunks":
            est = MixedLMRegressor().fit_chunks([frame.iloc[:33], frame.iloc[33:]], y="y",
                                                groups="g", X=["a", "b", "c", "d"])
        elif case == "dask":
            dd = pytest.importorskip("dask.dataframe")
            ddf = dd.from_pandas(frame, npartitions=3)
            est = MixedLMRegressor().fit(ddf[["a", "b", "c", "d"]], ddf["y"], groups=ddf["g"])
        else:
            est = fit_with(X3, y, **kw)
    assert est.llf_ == pytest.approx(ref.llf_, rel=1e-10)
    assert est.df_model_ == ref.df_model_
    np.testing.assert_allclose(est.coef_, [*ref.coef_, 0.0, 0.0], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(est.predict(X3), ref.predict(X), rtol=1e-10)


# ---- inference on a fit with dropped columns ----------------------------------------------------

@pytest.fixture(scope="module")
def aliased(sleep):
    df, X, Z = sleep
    with pytest.warns(RankDeficientWarning):
        est = MixedLMRegressor().fit(X, df["Reaction"], groups=df["Subject"], Z=Z)
    ref = MixedLMRegressor().fit(X.drop(columns="period_mid"), df["Reaction"],
                                 groups=df["Subject"], Z=Z)
    return est, ref


def test_summary_has_na_rows_for_dropped_columns(aliased):
    est, ref = aliased
    fixed = est.summary().fixed_effects
    assert list(fixed.index) == KEPT + ["period_mid"]
    assert fixed.loc["period_mid"].isna().all()
    pd.testing.assert_frame_equal(fixed.loc[KEPT], ref.summary().fixed_effects, rtol=1e-6)
    assert re.search(r"\n period_mid +NA +NA", str(est.summary()))


def test_intervals_have_nan_rows_for_dropped_columns(aliased):
    est, ref = aliased
    wald = est.conf_int()
    assert wald.loc["period_mid"].isna().all()
    pd.testing.assert_frame_equal(wald.loc[KEPT], ref.conf_int())
    prof = est.conf_int(method="profile", which="fixed")
    assert list(prof.index) == KEPT + ["period_mid"] and prof.loc["period_mid"].isna().all()
    np.testing.assert_allclose(prof.loc[["Days"]], ref.conf_int(method="profile", which=["Days"]),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"\['period_mid'\] were dropped from the fit as aliased"):
        est.profile(which=["period_mid"])


def test_wald_tests_of_kept_and_dropped_columns(aliased):
    est, ref = aliased
    mine, theirs = est.wald_test(["period_early", "period_late"]), ref.wald_test(["period_early", "period_late"])
    assert mine.statistic == pytest.approx(theirs.statistic, rel=1e-8)
    assert mine.df_denom == pytest.approx(theirs.df_denom, rel=1e-6)
    with pytest.warns(UserWarning, match=r"rows \[0\] of L involve the fixed effect\(s\) \['period_mid'\]"):
        test = est.wald_test(["period_mid"])
    assert np.isnan(test.statistic) and np.isnan(test.pvalue) and np.isnan(test.estimate[0])


def test_lr_test_counts_only_kept_columns(sleep):
    df, X, Z = sleep
    with pytest.warns(RankDeficientWarning):
        full = MixedLMRegressor(reml=False).fit(X, df["Reaction"], groups=df["Subject"], Z=Z)
    small = MixedLMRegressor(reml=False).fit(X[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    test = lr_test(small, full)
    assert test.df == 2  # three indicator columns, one aliased with the intercept
    assert test.statistic == pytest.approx(2 * (LME4[False]["logLik"] - small.llf_), abs=1e-5)
