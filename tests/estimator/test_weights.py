"""Prior weights: a weight of 0 removes the row, in every kind of fit.

lme4 does not: ``lmer(Reaction ~ Days + (Days | Subject), sleepstudy, weights = w)`` with
``w <- rep(c(1, 0, 2, 1.5), length.out = 180)`` gives logLik -Inf (lme4 1.1-31); with the
rows of weight 0 deleted it gives -659.833211116241, which is what we give for both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import fit_with

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_sleepstudy

LME4_DELETED_LOGLIK = -659.833211116241
LME4_DELETED_FIXEF = [252.553768414301, 9.67526960616854]


@pytest.fixture(scope="module")
def sleep():
    df = load_sleepstudy()
    w = np.resize([1.0, 0.0, 2.0, 1.5], len(df))
    return df, w


def test_zero_weights_equal_deleted_rows_and_lme4(sleep):
    df, w = sleep
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z,
                                 sample_weight=w)
    keep = w > 0
    deleted = MixedLMRegressor().fit(df.loc[keep, ["Days"]], df.loc[keep, "Reaction"],
                                     groups=df.loc[keep, "Subject"], Z=Z[keep], sample_weight=w[keep])
    assert est.llf_ == pytest.approx(LME4_DELETED_LOGLIK, abs=1e-6)
    # the README's standard: within 1e-4 of a standard error of lme4's
    np.testing.assert_allclose([est.intercept_, *est.coef_], LME4_DELETED_FIXEF, rtol=0,
                               atol=1e-4 * est.bse_.min())
    assert est.llf_ == deleted.llf_
    np.testing.assert_array_equal(est.random_effects_.to_numpy(), deleted.random_effects_.to_numpy())
    assert est.model_.n_obs == keep.sum()


def test_a_group_whose_weights_are_all_zero_disappears(data):
    X, y, groups, Z = data
    w = np.where(groups == 2, 0.0, 1.0)
    est = fit_with(X, y, groups=groups, Z=Z, sample_weight=w)
    keep = w > 0
    ref = fit_with(X[keep], y[keep], groups=groups[keep], Z=Z[keep])
    assert list(est.groups_) == [0, 1, 3, 4, 5] and est.n_groups_ == 5
    assert est.llf_ == pytest.approx(ref.llf_, rel=1e-12)
    rows = groups == 2  # an unseen group now: population predictions
    np.testing.assert_allclose(est.predict(X, groups=groups, Z=Z)[rows], est.predict(X)[rows])


@pytest.mark.parametrize("case", ["residual_groups", "several factors", "least squares",
                                  "DataFrame Z", "MultiIndex Z", "offset"])
def test_zero_weights_in_every_kind_of_fit(data, case):
    X, y, groups, Z = data
    w = np.resize([1.0, 0.0, 3.0, 0.5, 2.0], len(y))
    keep = w > 0
    kw = {"groups": groups, "Z": Z}
    if case == "residual_groups":
        kw["residual_groups"] = np.tile(["m", "f", "f"], len(y) // 3)
    elif case == "several factors":
        kw = {"groups": pd.DataFrame({"g": groups, "h": np.tile(np.arange(4), 15)}),
              "Z": {"g": pd.DataFrame(Z, columns=["one", "a"])}}
    elif case == "least squares":
        kw = {}
    elif case == "DataFrame Z":
        kw["Z"] = pd.DataFrame(Z, columns=["one", "a"], index=np.arange(100, 160))
    elif case == "offset":  # once an IndexError: the offset was filtered twice
        kw["offset"] = np.linspace(-1.0, 1.0, len(y))
    else:
        kw = {"groups": pd.DataFrame({"g": groups, "h": np.tile(np.arange(4), 15)}),
              "Z": pd.DataFrame(Z, columns=pd.MultiIndex.from_product([["g"], ["one", "a"]]))}

    def rows(v):
        if isinstance(v, dict):
            return {k: rows(u) for k, u in v.items()}
        return v.iloc[keep] if isinstance(v, (pd.DataFrame, pd.Series)) else v[keep]

    with pytest.warns(UserWarning) if case == "least squares" else _nothing():
        est = fit_with(X, y, sample_weight=w, **kw)
    with pytest.warns(UserWarning) if case == "least squares" else _nothing():
        ref = fit_with(X[keep], y[keep], sample_weight=w[keep], **{k: rows(v) for k, v in kw.items()})
    assert est.llf_ == pytest.approx(ref.llf_, rel=1e-10)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-8)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_zero_weights_in_chunks_and_dask(sleep):
    df, w = sleep
    frame = df.assign(w=w)
    keep = w > 0
    ref = MixedLMRegressor().fit(df.loc[keep, ["Days"]], df.loc[keep, "Reaction"],
                                 groups=df.loc[keep, "Subject"], sample_weight=w[keep])
    # chunk 1 holds only rows of weight 0
    chunks = [frame.iloc[:40], frame.iloc[40:80].assign(w=0.0), frame.iloc[80:]]
    est = MixedLMRegressor().fit_chunks(chunks, y="Reaction", groups="Subject", X=["Days"],
                                        sample_weight="w")
    ref2 = MixedLMRegressor().fit(df.loc[:, ["Days"]], df["Reaction"], groups=df["Subject"],
                                  sample_weight=pd.concat([c["w"] for c in chunks]).to_numpy())
    assert est.llf_ == pytest.approx(ref2.llf_, abs=1e-8)
    assert est.n_groups_ == 14  # the 4 subjects of rows 40-79 are gone
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(frame, npartitions=3)
    est = MixedLMRegressor().fit(ddf[["Days"]], ddf["Reaction"], groups=ddf["Subject"],
                                 sample_weight=ddf["w"])
    assert est.llf_ == pytest.approx(ref.llf_, abs=1e-8)


@pytest.mark.parametrize("bad", [-1.0, -1e-300, np.nan, np.inf])
def test_negative_and_non_finite_weights_stay_refused(data, bad):
    X, y, groups, Z = data
    w = np.ones(len(y))
    w[[5, 9]] = bad
    with pytest.raises(ValueError, match=r"sample_weight must be finite and >= 0.*rows 5, 9"):
        fit_with(X, y, groups=groups, Z=Z, sample_weight=w)


def test_all_weights_zero_is_refused(data):
    X, y, groups, Z = data
    with pytest.raises(ValueError, match="sample_weight is zero in 60 of 60 rows"):
        fit_with(X, y, groups=groups, Z=Z, sample_weight=np.zeros(len(y)))
    frame = X.assign(y=y, g=groups, w=0.0)
    with pytest.raises(ValueError, match="weight 0"):
        MixedLMRegressor().fit_chunks([frame], y="y", groups="g", X=["a"], sample_weight="w")


def test_zero_weight_rows_may_hold_anything_but_nan(data):
    """A removed row still has to be valid input: NaN is refused, as lme4's na.action would not
    silently drop it either."""
    X, y, groups, Z = data
    y = y.copy()
    y[3] = np.nan
    w = np.ones(len(y))
    w[3] = 0.0
    with pytest.raises(ValueError, match="NaN"):
        fit_with(X, y, groups=groups, Z=Z, sample_weight=w)


# ---- lmer's weights= (lme4's prior weights) --------------------------------------------------


@pytest.mark.parametrize("key, reml", [("reml_fit", True), ("ml_fit", False)])
def test_lmer_weights_match_lme4(key, reml):
    from _reference import product_reference
    from mixedlm_sklearn import lmer

    ref = product_reference("lmm_weights")
    fit_ref = ref[key]
    df = load_sleepstudy()
    w = np.resize([1.0, 2.0, 0.5], len(df))  # R: rep(c(1, 2, 0.5), length.out = 180)
    fit = lmer(ref["formula"], df.assign(w=w), REML=reml, weights="w")
    assert fit.llf_ >= fit_ref["llf"] - 1e-6
    assert fit.llf_ == pytest.approx(fit_ref["llf"], abs=1e-6)
    np.testing.assert_allclose(fit.fe_params_, fit_ref["fe_params"], rtol=1e-5)
    np.testing.assert_allclose(fit.bse_, fit_ref["bse_fe"], rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(fit.scale_), fit_ref["sigma"], rtol=1e-4)
    np.testing.assert_allclose(fit.fitted().head(20), fit_ref["fitted_head"], rtol=1e-6)
    same = lmer(ref["formula"], df, REML=reml, weights=w)  # an array by position
    assert same.llf_ == pytest.approx(fit.llf_, abs=1e-10)
