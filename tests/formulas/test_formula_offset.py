"""Offsets: lme4's ``offset()`` in a formula, and ``offset=`` of the estimator.

``offset(x)`` was refused. Now the formula's offsets are summed, the model is fitted to
``y - offset`` and ``predict`` adds the new rows' offset back, as lme4 does; lme4's numbers
for the offset models are in ``tests/data/formula_lme4.json`` (``tests/data/formula_lme4.R``).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor, lmer
from mixedlm_sklearn.datasets import load_sleepstudy
from mixedlm_sklearn.formula import parse_formula

REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "data" / "formula_lme4.json").read_text())


@pytest.fixture
def df():
    data = load_sleepstudy()
    data["off"] = (data["Days"] - 4.5) ** 2 / 2
    return data


# ---- offsets in formulas ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sleep_offset_expression", "sleep_offset_column",
                                  "sleep_two_offsets"])
def test_offset_models_match_lme4(df, name):
    ref = REFERENCE[name]
    est = lmer(ref["formula"], df, reml=ref["reml"])
    assert abs(est.llf_ - ref["loglik"]) < 1e-6
    assert list(est.fe_params_.index) == ref["fe_names"]  # the offset is no column
    np.testing.assert_allclose(est.fe_params_.to_numpy(), ref["fe_params"], rtol=1e-4)
    assert est.scale_ == pytest.approx(ref["scale"], rel=1e-4)
    # lme4's fitted values include the offset; so do ours from the model frame
    np.testing.assert_allclose(est.predict(**est.model_frame_.new_data(df)), ref["fitted"],
                               rtol=1e-6)
    new = pd.DataFrame(ref["newdata"])
    args = est.model_frame_.new_data(new)
    assert "offset" in args
    np.testing.assert_allclose(est.predict(**args), ref["predict_new"], rtol=1e-6)


def test_offsets_are_summed_and_passed_to_fit(df):
    frame = parse_formula("Reaction ~ Days + offset(off) + offset(2 * Days) + (1 | Subject)", df)
    np.testing.assert_allclose(frame.offset, df["off"] + 2 * df["Days"])
    assert list(frame.X.columns) == ["Days"] and frame.fit_intercept
    np.testing.assert_array_equal(frame.fit_arguments()["offset"], frame.offset)
    assert "offset" not in parse_formula("Reaction ~ Days + (1 | Subject)", df).fit_arguments()
    # an offset alone keeps the intercept, as in R
    only = parse_formula("Reaction ~ offset(off) + (1 | Subject)", df)
    assert only.fit_intercept and only.X.shape[1] == 0


def test_offset_variables_count_for_missing_rows(df):
    df.loc[[3, 7], "off"] = np.nan
    frame = parse_formula("Reaction ~ Days + offset(off) + (1 | Subject)", df)
    assert list(frame.dropped) == [3, 7] and len(frame.offset) == 178


def test_offset_with_a_stateful_transform_keeps_its_state(df):
    est = lmer("Reaction ~ Days + offset(10 * scale(off)) + (1 | Subject)", df)
    new = df.head(3)
    off = est.model_frame_.new_data(new)["offset"]
    z = (df["off"] - df["off"].mean()) / df["off"].std()
    np.testing.assert_allclose(off, 10 * z[:3])  # the fitted data's mean and sd


@pytest.mark.parametrize("formula, message", [
    ("Reaction ~ Days - offset(off) + (1 | Subject)", "an offset cannot be subtracted"),
    ("Reaction ~ Days + offset(Subject) + (1 | Subject)", "an offset must be numeric"),
    ("Reaction ~ Days + offset(off, 2) + (1 | Subject)", "offset\\(\\) takes one argument"),
    ("Reaction ~ Days + offset(off):Days + (1 | Subject)", "must be a term of its own"),
    ("Reaction ~ Days + (offset(off) | Subject)", "must be a term of its own"),
    ("offset(Reaction) ~ Days + (1 | Subject)", "must be a term of its own"),
])
def test_misplaced_offsets(df, formula, message):
    with pytest.raises(ValueError, match=message):
        parse_formula(formula, df)


# ---- the estimator's offset= --------------------------------------------------------------


def test_estimator_fits_y_minus_offset_and_predicts_with_it(df):
    X, y, g = df[["Days"]], df["Reaction"], df["Subject"]
    offset = 0.5 * df["Days"].to_numpy()
    with_offset = MixedLMRegressor().fit(X, y, groups=g, offset=offset)
    direct = MixedLMRegressor().fit(X, y - offset, groups=g)
    assert with_offset.llf_ == pytest.approx(direct.llf_, abs=1e-12)
    np.testing.assert_allclose(with_offset.fe_params_, direct.fe_params_, rtol=1e-12)
    new_offset = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(with_offset.predict(X[:5], groups=g[:5], offset=new_offset),
                               direct.predict(X[:5], groups=g[:5]) + new_offset)
    # a column vector, a list and a Series are one value per row too
    for form in (offset[:, None], list(offset), pd.Series(offset)):
        again = MixedLMRegressor().fit(X, y.to_numpy(), groups=g, offset=form)
        assert again.llf_ == pytest.approx(direct.llf_, abs=1e-12)


@pytest.mark.parametrize("offset, error, message", [
    (np.ones(179), ValueError, r"one value per row \(180 rows\)"),
    (np.ones((180, 2)), ValueError, "one value per row"),
    (np.r_[np.nan, np.ones(179)], ValueError, "offset contains NaN or infinity in rows"),
    (np.r_[np.inf, np.ones(179)], ValueError, "offset contains NaN or infinity"),
    (["a"] * 180, TypeError, "offset must be numbers"),
])
def test_estimator_offset_is_validated(df, offset, error, message):
    est = MixedLMRegressor()
    with pytest.raises(error, match=message):
        est.fit(df[["Days"]], df["Reaction"], groups=df["Subject"], offset=offset)
    fitted = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"])
    with pytest.raises(error, match=message):
        fitted.predict(df[["Days"]], offset=offset)
