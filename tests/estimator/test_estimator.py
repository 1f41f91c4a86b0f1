"""MixedLMRegressor as a scikit-learn estimator: API, prediction, routing, model selection."""

import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_dietox, load_sleepstudy


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


@pytest.fixture(scope="module")
def sleep():
    df = load_sleepstudy()
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    return df, Z


def test_check_estimator():
    # No expected failures: sample-weight equivalence passes since a weight of 0 removes the
    # row and a rank-deficient X (15 rows, 31 columns) has its aliased columns dropped.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(MixedLMRegressor(), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert failed == []
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    assert "check_sample_weight_equivalence_on_dense_data" in passed


def test_fitted_attributes_sleepstudy(sleep):
    df, Z = sleep
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    assert est.n_features_in_ == 1 and list(est.feature_names_in_) == ["Days"]
    np.testing.assert_allclose([est.intercept_, est.coef_[0]], [251.405104848484, 10.4672859595959], rtol=1e-8)
    assert est.cov_re_.shape == (2, 2) and est.n_groups_ == 18
    assert est.random_effects_.shape == (18, 2) and est.random_effects_.index.name == "Subject"
    assert list(est.fe_params_.index) == ["(Intercept)", "Days"]
    assert est.converged_ and est.n_iter_ >= 1 and not est.singular_


def test_statsmodels_documentation_example_converges_to_lme4():
    # statsmodels 0.15 stops on this model with ConvergenceWarnings at llf -2220.39;
    # lme4 reaches -2217.047 (tests/data/reference/dietox_slopes_reml.json).
    df = load_dietox()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = MixedLMRegressor().fit(df[["Time"]], df["Weight"], groups=df["Pig"],
                                     Z=np.column_stack([np.ones(len(df)), df["Time"]]))
    assert est.converged_
    assert est.llf_ == pytest.approx(-2217.04745914549, abs=1e-6)
    assert est.llf_ > -2220.39 + 3


def test_predict_seen_unseen_and_population(sleep):
    df, Z = sleep
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    population = est.predict(df[["Days"]])
    np.testing.assert_allclose(population, est.intercept_ + est.coef_[0] * df["Days"])
    conditional = est.predict(df[["Days"]], groups=df["Subject"], Z=Z)
    blup = est.random_effects_.loc[df["Subject"]].to_numpy()
    np.testing.assert_allclose(conditional - population, np.einsum("ij,ij->i", Z, blup))
    unseen = est.predict(df[["Days"]], groups=np.full(len(df), "new-subject"), Z=Z)
    np.testing.assert_allclose(unseen, population)
    with pytest.raises(ValueError, match="Z is required"):
        est.predict(df[["Days"]], groups=df["Subject"])


def test_random_intercept_predict_needs_no_z(sleep):
    df, _ = sleep
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"])
    pred = est.predict(df[["Days"]], groups=df["Subject"])
    offset = est.random_effects_.loc[df["Subject"], "(Intercept)"].to_numpy()
    np.testing.assert_allclose(pred, est.predict(df[["Days"]]) + offset)


def test_no_groups_is_least_squares_with_a_warning(sleep):
    df, _ = sleep
    with pytest.warns(UserWarning, match="no groups"):
        est = MixedLMRegressor(reml=False).fit(df[["Days"]], df["Reaction"])
    X = np.column_stack([np.ones(len(df)), df["Days"]])
    beta, rss = np.linalg.lstsq(X, df["Reaction"], rcond=None)[:2]
    np.testing.assert_allclose([est.intercept_, est.coef_[0]], beta, rtol=1e-10)
    n = len(df)
    np.testing.assert_allclose(est.scale_, rss[0] / n, rtol=1e-10)
    np.testing.assert_allclose(est.llf_, -0.5 * n * (np.log(2 * np.pi * rss[0] / n) + 1), rtol=1e-12)
    assert np.all(est.cov_re_ == 0)


def test_diagonal_covariance_has_zero_correlation(sleep):
    df, Z = sleep
    full = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    diag = MixedLMRegressor(cov_type="diagonal").fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    assert diag.cov_re_[0, 1] == 0.0 and diag.cov_re_[1, 0] == 0.0
    assert diag.df_model_ == full.df_model_ - 1
    assert diag.llf_ <= full.llf_ + 1e-9
    # lme4: lmer(Reaction ~ Days + (Days || Subject), sleepstudy) gives REML criterion 1743.669
    assert -2 * diag.llf_ == pytest.approx(1743.669, abs=1e-3)


def test_pipeline_cross_validate_with_group_kfold(sleep, routing):
    df, Z = sleep
    est = MixedLMRegressor().set_fit_request(groups=True, Z=True)
    pipe = make_pipeline(StandardScaler(), est)
    cv = cross_validate(pipe, df[["Days"]], df["Reaction"], cv=GroupKFold(n_splits=3),
                        params={"groups": df["Subject"].to_numpy(), "Z": Z}, return_estimator=True)
    fits = cv["estimator"]
    for fold in fits:
        mixed = fold[-1]
        assert mixed.n_groups_ == 12  # two thirds of the 18 subjects in each training fold
    assert np.all(np.isfinite(cv["test_score"]))
    # the held-out subjects are unseen: scores equal R^2 of the population predictions
    assert np.all(cv["test_score"] < 0.5)


def test_grid_search_over_reml_with_groups(sleep, routing):
    df, _ = sleep
    est = MixedLMRegressor().set_fit_request(groups=True)
    search = GridSearchCV(est, {"reml": [True, False]}, cv=GroupKFold(n_splits=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "no groups" would be a routing failure
        search.fit(df[["Days"]], df["Reaction"], groups=df["Subject"].to_numpy())
    assert search.best_estimator_.n_groups_ == 18
    assert set(search.cv_results_["param_reml"]) == {True, False}


def test_sample_weight_all_equal_changes_only_the_scale(sleep):
    df, Z = sleep
    args = (df[["Days"]], df["Reaction"])
    plain = MixedLMRegressor().fit(*args, groups=df["Subject"], Z=Z)
    weighted = MixedLMRegressor().fit(*args, groups=df["Subject"], Z=Z, sample_weight=np.full(len(df), 4.0))
    np.testing.assert_allclose(weighted.coef_, plain.coef_, rtol=1e-7)
    np.testing.assert_allclose(weighted.scale_, 4 * plain.scale_, rtol=1e-7)
    np.testing.assert_allclose(weighted.cov_re_, plain.cov_re_, rtol=1e-6)


def test_group_label_types_do_not_change_the_fit(sleep):
    df, Z = sleep
    ints = df["Subject"].astype(int)
    fits = [MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=g, Z=Z).llf_
            for g in (ints, df["Subject"], ints.astype("category"))]
    np.testing.assert_allclose(fits, fits[0], rtol=0, atol=1e-10)


def test_predict_warns_when_no_label_was_seen(sleep):
    df, Z = sleep
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"].astype(int), Z=Z)
    with pytest.warns(UserWarning, match="none of the groups labels passed to predict was seen"):
        pred = est.predict(df[["Days"]], groups=df["Subject"], Z=Z)  # str labels, int in fit
    np.testing.assert_allclose(pred, est.predict(df[["Days"]]))


def test_group_name_from_a_named_series_or_one_column_frame(sleep):
    df, _ = sleep
    by_frame = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df[["Subject"]])
    by_zero = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"].rename(0))
    assert by_frame.random_effects_.index.name == "Subject"
    assert by_zero.random_effects_.index.name == "0"


def test_least_squares_fit_has_no_random_effects(sleep):
    df, _ = sleep
    with pytest.warns(UserWarning, match="no groups"):
        est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"])
    assert est.n_groups_ == 0 and est.random_effects_.shape == (0, 1) and est.groups_.size == 0


def _fit_by(path, est, df):
    """``est`` fitted to sleepstudy by one of the fitting paths (random intercept and slope)."""
    from mixedlm_sklearn.formula import parse_formula

    if path == "arrays":  # numpy arrays: no column names
        Z = np.column_stack([np.ones(len(df)), df["Days"]])
        return est.fit(df[["Days"]].to_numpy(), df["Reaction"].to_numpy(), groups=df["Subject"], Z=Z)
    if path == "formula":  # what lmer does, on this estimator
        frame = parse_formula("Reaction ~ Days + (Days | Subject)", df)
        est.fit(**frame.fit_arguments())
        est.model_frame_ = frame
        return est
    if path == "several":  # two grouping factors: dict attributes, a DataFrame X
        groups = pd.DataFrame({"Subject": df["Subject"], "half": df["Days"] > 4})
        return _quietly(est.fit, df[["Days"]], df["Reaction"], groups=groups)
    if path == "chunks":
        return est.fit_chunks((df.iloc[i:i + 60] for i in range(0, len(df), 60)), y="Reaction",
                              groups="Subject", X=["Days"], Z=["(Intercept)", "Days"])
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(df.assign(one=1.0), npartitions=3)
    return est.fit(ddf[["Days"]], ddf["Reaction"], groups=ddf["Subject"], Z=ddf[["one", "Days"]])


def _quietly(f, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*args, **kwargs)


@pytest.mark.parametrize("then", ["arrays", "formula", "chunks"])
@pytest.mark.parametrize("first", ["arrays", "formula", "several", "chunks", "dask"])
def test_a_refit_keeps_no_fitted_attribute_of_the_previous_fit(sleep, first, then):
    """Whatever the previous fit's path, a refit has the fitted attributes (names ending in
    ``_``) of a fresh fit by the new path, with its values, and nothing else."""
    df, _ = sleep
    est = _fit_by(then, _fit_by(first, MixedLMRegressor(), df), df)
    fresh = _fit_by(then, MixedLMRegressor(), df)
    attributes = {k for k in vars(fresh) if k.endswith("_")}
    assert {k for k in vars(est) if k.endswith("_")} == attributes
    assert est.llf_ == fresh.llf_
    np.testing.assert_array_equal(est.cov_re_, fresh.cov_re_)
    assert ("model_frame_" in attributes) == (then == "formula")


def test_fitted_tables_follow_the_latest_fit(sleep):
    """fe_params_, bse_ and random_effects_ are built from the fit on first access: the
    same numbers as coef_, cov_fe_ and the BLUPs of the fit they belong to, never those of
    an earlier fit (read before a refit or not, or on a copied estimator given another
    fit), none before a fit, and the same after
    pickling an estimator whose tables were not yet read."""
    import copy
    import pickle

    df, Z = sleep
    assert not hasattr(MixedLMRegressor(), "fe_params_")
    assert not hasattr(MixedLMRegressor(), "random_effects_")
    X, g = df[["Days"]], df["Subject"]
    fresh = [MixedLMRegressor().fit(X, y, groups=g, Z=Z) for y in (df["Reaction"], 2.0 * df["Reaction"])]
    for read_first in (True, False):
        est = MixedLMRegressor().fit(X, df["Reaction"], groups=g, Z=Z)
        if read_first:
            est.fe_params_, est.bse_, est.random_effects_
        est.fit(X, 2.0 * df["Reaction"], groups=g, Z=Z)
        pd.testing.assert_series_equal(est.fe_params_, fresh[1].fe_params_)
        pd.testing.assert_series_equal(est.bse_, fresh[1].bse_)
        pd.testing.assert_frame_equal(est.random_effects_, fresh[1].random_effects_)
    est = fresh[0]
    np.testing.assert_array_equal(est.fe_params_.to_numpy(), [est.intercept_, *est.coef_])
    np.testing.assert_array_equal(est.bse_.to_numpy(), np.sqrt(np.diag(est.cov_fe_)))
    assert list(est.random_effects_.index) == list(est.groups_)
    assert list(est.random_effects_.columns) == ["z0", "z1"]  # Z given as an array
    # a copy of a fitted estimator whose tables were read, given another fit (as the
    # replicates of a bootstrap are made)
    replicate = copy.copy(est)
    replicate.model_ = fresh[1].model_
    replicate._set_fitted(False, warn=False)
    pd.testing.assert_series_equal(replicate.fe_params_, fresh[1].fe_params_)
    pd.testing.assert_frame_equal(replicate.random_effects_, fresh[1].random_effects_)
    unread = pickle.loads(pickle.dumps(MixedLMRegressor().fit(X, 2.0 * df["Reaction"], groups=g, Z=Z)))
    pd.testing.assert_frame_equal(unread.random_effects_, fresh[1].random_effects_)
    pd.testing.assert_series_equal(unread.fe_params_, fresh[1].fe_params_)


def test_a_failed_refit_leaves_the_fitted_model_unchanged(sleep):
    df, Z = sleep
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    before = est.predict(df[["Days"]], groups=df["Subject"], Z=Z)
    X2 = df[["Days"]].assign(other=np.arange(len(df), dtype=float))
    with pytest.raises(ValueError, match="groups has 179 entries"):
        est.fit(X2, df["Reaction"], groups=df["Subject"].iloc[:-1], Z=Z)
    assert est.n_features_in_ == 1 and list(est.feature_names_in_) == ["Days"]
    np.testing.assert_array_equal(est.predict(df[["Days"]], groups=df["Subject"], Z=Z), before)
