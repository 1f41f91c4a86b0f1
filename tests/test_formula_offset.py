"""Offsets (issue 11): ``offset=`` of the estimator, and the stale model frame of lmer.
"""

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor, lmer
from mixedlm_sklearn.datasets import load_orthodont, load_sleepstudy


@pytest.fixture
def df():
    data = load_sleepstudy()
    data["off"] = (data["Days"] - 4.5) ** 2 / 2
    return data


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


def test_a_plain_refit_drops_the_model_frame(df):
    """Issue 11: model_frame_ of lmer survived a later fit() on other data."""
    est = lmer("Reaction ~ Days + (1 | Subject)", df)
    assert len(est.model_frame_.y) == 180
    other = load_orthodont()
    est.fit(other[["age"]], other["distance"], groups=other["Subject"])
    assert not hasattr(est, "model_frame_")
    # a refit that fails leaves the estimator as it was, model frame included
    est = lmer("Reaction ~ Days + (1 | Subject)", df)
    with pytest.raises(ValueError):
        est.fit(df[["Days"]], df["Reaction"], groups=df["Subject"], offset=np.ones(3))
    assert len(est.model_frame_.y) == 180
