"""Bad input fails early with an error that names the problem."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import fit_with  # shared with the other input tests

from mixedlm_sklearn import MixedLMRegressor, RankDeficientWarning


_fit = fit_with


@pytest.mark.parametrize("where", ["X", "y", "Z"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values(data, where, value):
    X, y, groups, Z = data
    X, y, Z = X.copy(), y.copy(), Z.copy()
    if where == "X":
        X.iloc[3, 1] = value
    elif where == "y":
        y[3] = value
    else:
        Z[3, 1] = value
    with pytest.raises(ValueError, match="(?i)nan|inf"):
        _fit(X, y, groups=groups, Z=Z)


def test_missing_group_labels_name_the_rows(data):
    X, y, groups, Z = data
    labels = groups.astype(object)
    labels[[4, 7]] = None
    with pytest.raises(ValueError, match="groups has missing labels.*rows 4, 7"):
        _fit(X, y, groups=labels, Z=Z)


@pytest.mark.parametrize("what", ["y", "groups", "Z"])
def test_mismatched_lengths(data, what):
    X, y, groups, Z = data
    kw = {"groups": groups, "Z": Z}
    if what == "y":
        y = y[:-1]
        pattern = "inconsistent numbers of samples"
    elif what == "groups":
        kw["groups"] = groups[:-2]
        pattern = "groups has 58 entries but X has 60 rows"
    else:
        kw["Z"] = Z[:-2]
        pattern = "Z has 58 rows but X has 60"
    with pytest.raises(ValueError, match=pattern):
        _fit(X, y, **kw)


def test_single_group(data):
    X, y, _, Z = data
    with pytest.raises(ValueError, match="at least two groups"):
        _fit(X, y, groups=np.zeros(len(y)), Z=Z)


def test_rank_deficient_x_warns_naming_the_dropped_column(data):
    X, y, groups, Z = data
    X = X.assign(c=2 * X["a"] - X["b"])
    with pytest.warns(RankDeficientWarning, match=r"dropping 1 column / coefficient: \['c'\]"):
        est = _fit(X, y, groups=groups, Z=Z)
    assert est.coef_[2] == 0.0 and np.isnan(est.bse_["c"])  # tests/test_rank_deficiency.py


def test_zero_z_column(data):
    X, y, groups, Z = data
    Z = np.column_stack([Z, np.zeros(len(y))])
    with pytest.raises(ValueError, match=r"Z column\(s\) \['z2'\] are all zeros"):
        _fit(X, y, groups=groups, Z=Z)


@pytest.mark.parametrize("params, pattern", [
    ({"cov_type": "banded"}, "cov_type"),
    ({"reml": "yes"}, "reml"),
    ({"max_iter": 0}, "max_iter"),
    ({"tol": -1.0}, "tol"),
])
def test_unknown_or_invalid_options(data, params, pattern):
    X, y, groups, Z = data
    with pytest.raises(ValueError, match=pattern):
        _fit(X, y, groups=groups, Z=Z, params=params)


def test_object_columns_in_x(data):
    X, y, groups, Z = data
    with pytest.raises(TypeError, match=r"\['kind'\] are not numeric"):
        _fit(X.assign(kind="x"), y, groups=groups, Z=Z)


def test_duplicate_column_names(data):
    X, y, groups, Z = data
    X = pd.concat([X, X[["a"]]], axis=1)
    with pytest.raises(ValueError, match=r"duplicate column names \['a'\]"):
        _fit(X, y, groups=groups, Z=Z)


def test_sparse_x_is_refused_with_advice(data):
    X, y, groups, Z = data
    with pytest.raises(TypeError, match="(?i)sparse"):
        _fit(sp.csr_matrix(X.to_numpy()), y, groups=groups, Z=Z)


@pytest.mark.parametrize("bad", [-1.0, np.nan])  # 0 removes the row: tests/test_weights.py
def test_bad_sample_weight(data, bad):
    X, y, groups, Z = data
    w = np.ones(len(y))
    w[5] = bad
    with pytest.raises(ValueError, match="sample_weight.*rows 5"):
        _fit(X, y, groups=groups, Z=Z, sample_weight=w)


def test_predict_checks_feature_count(data):
    X, y, groups, Z = data
    est = _fit(X, y, groups=groups, Z=Z)
    with pytest.raises(ValueError, match="features"):
        est.predict(X.to_numpy()[:, :1])


def test_constant_y(data):
    X, y, groups, Z = data
    with pytest.raises(ValueError, match="y is constant"):
        _fit(X, np.full_like(y, 3.0), groups=groups, Z=Z)


def test_z_columns_with_the_same_ratio_in_every_group(data):
    X, y, groups, _ = data
    Z = np.column_stack([np.ones(len(y)), np.full(len(y), 4.0)])  # 4 times the intercept
    with pytest.raises(ValueError, match="'z0' and 'z1' are proportional with the same ratio in "
                                         "every group"):
        _fit(X, y, groups=groups, Z=Z)


def test_empty_input():
    with pytest.raises(ValueError, match="0 sample"):
        MixedLMRegressor().fit(np.empty((0, 2)), np.empty(0), groups=np.empty(0))


def test_groups_as_nested_lists_get_a_clear_error(data):
    X, y, groups, Z = data
    with pytest.raises(ValueError, match="one label per row"):
        _fit(X, y, groups=[[g] for g in groups.tolist()], Z=Z)


def test_y_with_none_names_the_problem(data):
    X, y, groups, Z = data
    with pytest.raises(ValueError, match="(?i)y contains NaN"):
        _fit(X, list(y[:-1]) + [None], groups=groups, Z=Z)


def test_two_dimensional_sample_weight(data):
    X, y, groups, Z = data
    with pytest.raises(ValueError, match="one weight per row"):
        _fit(X, y, groups=groups, Z=Z, sample_weight=np.ones((len(y), 2)))
