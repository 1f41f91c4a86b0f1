"""The random-effects design's column names: checked in predict and score as
scikit-learn checks X's feature names."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_sleepstudy


@pytest.fixture(scope="module")
def fitted():
    df = load_sleepstudy()
    Z = pd.DataFrame({"(Intercept)": 1.0, "a": df["Days"].astype(float)})
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    return df, Z, est


def _by_hand(est, df, Z):
    blup = est.random_effects_.loc[df["Subject"], list(Z.columns)].to_numpy()
    return est.predict(df[["Days"]]) + np.einsum("ij,ij->i", Z.to_numpy(), blup)


def test_reordered_z_columns_are_matched_by_name(fitted):
    df, Z, est = fitted
    reordered = Z[["a", "(Intercept)"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = est.predict(df[["Days"]], groups=df["Subject"], Z=reordered)
    np.testing.assert_allclose(pred, _by_hand(est, df, Z), rtol=1e-12)
    np.testing.assert_array_equal(pred, est.predict(df[["Days"]], groups=df["Subject"], Z=Z))
    assert est.score(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=reordered) == \
        est.score(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)


@pytest.mark.parametrize("columns, pattern", [
    (["(Intercept)", "b"], r"missing: \['a'\]; not seen in fit: \['b'\]"),
    (["(Intercept)", "a", "b"], r"not seen in fit: \['b'\]"),
])
def test_other_z_names_are_refused(fitted, columns, pattern):
    df, Z, est = fitted
    other = pd.DataFrame({c: Z.iloc[:, min(j, 1)] for j, c in enumerate(columns)})
    with pytest.raises(ValueError, match=pattern):
        est.predict(df[["Days"]], groups=df["Subject"], Z=other)
    with pytest.raises(ValueError, match=pattern):
        est.score(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=other)


def test_z_without_names_after_a_named_fit_warns(fitted):
    df, Z, est = fitted
    with pytest.warns(UserWarning, match=r"Z does not have valid column names, but MixedLMRegressor "
                                         r"was fitted with Z columns \['\(Intercept\)', 'a'\]"):
        pred = est.predict(df[["Days"]], groups=df["Subject"], Z=Z.to_numpy())
    np.testing.assert_allclose(pred, _by_hand(est, df, Z))


def test_named_z_after_an_unnamed_fit_warns():
    df = load_sleepstudy()
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    with pytest.warns(UserWarning, match="Z has column names, but MixedLMRegressor was fitted without"):
        est.predict(df[["Days"]], groups=df["Subject"], Z=pd.DataFrame(Z, columns=["i", "d"]))


def test_fit_chunks_z_names_are_checked_too():
    df = load_sleepstudy()
    est = MixedLMRegressor().fit_chunks([df.iloc[:90], df.iloc[90:]], y="Reaction", groups="Subject",
                                        X=["Days"], Z=["(Intercept)", "Days"])
    Z = pd.DataFrame({"(Intercept)": 1.0, "Days": df["Days"]})
    ref = est.predict(df[["Days"]], groups=df["Subject"], Z=Z)
    np.testing.assert_array_equal(est.predict(df[["Days"]], groups=df["Subject"], Z=Z[["Days", "(Intercept)"]]), ref)


@pytest.fixture(scope="module")
def crossed():
    rng = np.random.default_rng(3)
    n = 300
    a, b = np.repeat(np.arange(15), 20), np.tile(np.arange(10), 30)
    x = rng.standard_normal(n)
    y = rng.standard_normal(15)[a] * (1 + x) + rng.standard_normal(10)[b] + x + rng.standard_normal(n)
    X = pd.DataFrame({"x": x})
    groups = pd.DataFrame({"a": a, "b": b})
    Za = pd.DataFrame({"one": 1.0, "x": x})
    est = MixedLMRegressor().fit(X, y, groups=groups, Z={"a": Za})
    return X, groups, Za, est


def test_several_factors_match_z_names_per_factor(crossed):
    X, groups, Za, est = crossed
    ref = est.predict(X, groups=groups, Z={"a": Za})
    np.testing.assert_array_equal(est.predict(X, groups=groups, Z={"a": Za[["x", "one"]]}), ref)
    multi = pd.concat({"a": Za[["x", "one"]]}, axis=1)  # (factor, column) MultiIndex columns
    np.testing.assert_array_equal(est.predict(X, groups=groups, Z=multi), ref)
    with pytest.raises(ValueError, match=r"Z\['a'\]'s column names must match"):
        est.predict(X, groups=groups, Z={"a": Za.rename(columns={"x": "slope"})})


def test_unknown_z_keys_are_refused(crossed):
    X, groups, Za, est = crossed
    with pytest.raises(ValueError, match=r"Z key\(s\) \['c'\] name no grouping factor of the fit"):
        est.predict(X, groups=groups, Z={"a": Za, "c": Za})
