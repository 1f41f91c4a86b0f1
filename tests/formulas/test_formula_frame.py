"""The model frame around a fit (formula crashes and stale state).

Prediction from a formula that uses ``context=`` names, formulas without fixed effects,
``model_frame_`` after a refit, and new data that cannot be evaluated.
"""

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import lmer
from mixedlm_sklearn.datasets import load_orthodont, load_sleepstudy


@pytest.fixture
def df():
    data = load_sleepstudy()
    data["off"] = (data["Days"] - 4.5) ** 2 / 2
    return data


# ---- prediction with context= names -------------------------------------------------------


def test_a_formula_with_context_names_predicts(df):
    """A formula using a caller variable fitted but new_data raised NameError."""
    est = lmer("Reaction ~ I(Days - centre) + (1 | Subject)", df, context={"centre": 4.5})
    fitted = est.predict(**est.model_frame_.new_data(df))
    same = lmer("Reaction ~ I(Days - 4.5) + (1 | Subject)", df)
    np.testing.assert_allclose(fitted, same.predict(**same.model_frame_.new_data(df)))
    assert est.llf_ == pytest.approx(same.llf_, abs=1e-9)


def test_context_arrays_are_columns_and_new_data_must_have_them(df):
    w = np.where(df["Days"].to_numpy() > 4, 1.0, 0.0)
    est = lmer("Reaction ~ Days + late + (1 | Subject)", df, context={"late": w})
    assert list(est.fe_params_.index) == ["(Intercept)", "Days", "late"]
    with pytest.raises(ValueError, match=r"new data has no column \['late'\]"):
        est.model_frame_.new_data(df)
    pred = est.predict(**est.model_frame_.new_data(df.assign(late=w)))
    assert np.isfinite(pred).all()


def test_a_context_series_is_matched_with_rows_by_index_as_pandas_aligns(df):
    """A Series in context= was paired with the rows by position, ignoring its index: on
    reordered data the variable was scrambled (a wrong slope, without a word)."""
    shuffled = df.iloc[np.random.default_rng(0).permutation(len(df))]
    k = df["Days"] * 2.0  # labelled like df's rows, in df's order
    by_column = lmer("Reaction ~ kk + (1 | Subject)", shuffled.assign(kk=k))
    by_context = lmer("Reaction ~ k + (1 | Subject)", shuffled, context={"k": k})
    np.testing.assert_array_equal(by_context.model_frame_.X["k"], shuffled["Days"] * 2.0)
    assert by_context.fe_params_["k"] == pytest.approx(by_column.fe_params_["kk"], rel=1e-10)
    assert by_context.llf_ == pytest.approx(by_column.llf_, abs=1e-9)
    # extra labels are ignored, as pandas ignores them; plain arrays pair by position
    longer = pd.concat([k, pd.Series([7.0], index=[10_000])])
    frame = lmer("Reaction ~ k + (1 | Subject)", shuffled, context={"k": longer}).model_frame_
    np.testing.assert_array_equal(frame.X["k"], shuffled["Days"] * 2.0)
    frame = lmer("Reaction ~ k + (1 | Subject)", shuffled,
                 context={"k": k.to_numpy()}).model_frame_
    np.testing.assert_array_equal(frame.X["k"], k.to_numpy())
    # labels that do not cover the rows, or repeat, are refused rather than guessed
    with pytest.raises(ValueError, match=r"context\['k'\] is a Series whose index has no "
                                         r"label for 1 row"):
        lmer("Reaction ~ k + (1 | Subject)", shuffled, context={"k": k.iloc[1:]})
    with pytest.raises(ValueError, match=r"no label for 180 row.*\.to_numpy\(\)"):
        lmer("Reaction ~ k + (1 | Subject)", shuffled.set_index(shuffled.index.astype(str)),
             context={"k": k})
    with pytest.raises(ValueError, match="repeated index labels"):
        lmer("Reaction ~ k + (1 | Subject)", shuffled,
             context={"k": pd.concat([k, k.iloc[:1]])})


# ---- formulas without fixed effects, stale model frames -----------------------------------


@pytest.mark.parametrize("formula", ["Reaction ~ 0 + (1 | Subject)",
                                     "Reaction ~ -1 + (Days | Subject)",
                                     "Reaction ~ 0 + offset(off) + (1 | Subject)"])
def test_no_fixed_effects_is_refused_with_advice_for_lmer_users(df, formula):
    with pytest.raises(ValueError, match="has no fixed effects") as info:
        lmer(formula, df)
    assert "fit_intercept" not in str(info.value)  # lmer refuses that parameter
    assert "Keep the intercept" in str(info.value)


def test_a_plain_refit_drops_the_model_frame(df):
    """Model_frame_ of lmer survived a later fit() on other data."""
    est = lmer("Reaction ~ Days + (1 | Subject)", df)
    assert len(est.model_frame_.y) == 180
    other = load_orthodont()
    est.set_params(formula=None).fit(other[["age"]], other["distance"], groups=other["Subject"])
    assert not hasattr(est, "model_frame_")
    assert not hasattr(est, "_formula_columns_")
    np.testing.assert_array_equal(est.feature_names_in_, ["age"])
    # a refit that fails leaves the estimator as it was, model frame included
    est = lmer("Reaction ~ Days + (1 | Subject)", df)
    with pytest.raises(TypeError, match="put their variables in X"):
        est.fit(df, groups=df["Subject"])
    with pytest.raises(ValueError):
        est.fit(df.drop(columns="Days"))
    assert len(est.model_frame_.y) == 180


# ---- new data -------------------------------------------------------------------------------


def test_new_data_errors_are_clear(df):
    est = lmer("Reaction ~ Days + factor(Days > 4) + (Days | Subject)", df)
    with pytest.raises(ValueError, match=r"new data has no column \['Days'\]"):
        est.model_frame_.new_data(df[["Subject"]])
    with pytest.raises(ValueError, match=r"missing values in \['Days'\]"):
        est.model_frame_.new_data(df.assign(Days=np.r_[np.nan, df["Days"].to_numpy()[1:]]))
    with pytest.raises(TypeError, match="DataFrame"):
        est.model_frame_.new_data(df.to_dict())
    # the response is not needed to predict
    args = est.model_frame_.new_data(df.drop(columns="Reaction"))
    assert list(args["X"].columns) == ["Days", "factor(Days > 4)TRUE"]  # lme4's name


def test_unseen_factor_level_in_new_data_is_a_value_error():
    df = load_sleepstudy()
    est = lmer("Reaction ~ factor(Days) + (1 | Subject)", df)
    with pytest.raises(ValueError, match=r"has factor levels the fit has not seen: \{.*100"):
        est.model_frame_.new_data(df.assign(Days=df["Days"] + 100))
