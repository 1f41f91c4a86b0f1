"""Bad and hostile input fails early with an error that names the problem and where it is.

The first part covers NaN/inf detection, missing labels, mismatched lengths, one group,
rank-deficient X, a zero Z column, object and duplicate X columns, sparse X, bad weights,
constant y, proportional Z columns and empty input; the second, inputs chosen to break
the fit (hostile inputs). Tests marked xfail(strict=True) document a bug; the reason says
what is wrong.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _dense import profiled_dense_loglik
from conftest import fit_with  # shared with the other input tests
from scipy import optimize
from sklearn.utils._param_validation import InvalidParameterError

from mixedlm_sklearn import MixedLMRegressor, RankDeficientWarning, SingularFitWarning


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
    assert est.coef_[2] == 0.0 and np.isnan(est.bse_["c"])  # tests/engine/test_rank_deficiency.py


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


@pytest.mark.parametrize("bad", [-1.0, np.nan])  # 0 removes the row: tests/estimator/test_weights.py
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


# ==== hostile inputs ========================================================================

# ---- non-finite values: the rows (and the column) must be named ------------------------------

@pytest.mark.parametrize("where", ["X", "y"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_x_and_y_name_the_rows(data, where, value):
    X, y, groups, Z = data
    X, y = X.copy(), y.copy()
    if where == "X":
        X.iloc[[4, 17], 1] = value
    else:
        y[[4, 17]] = value
    with pytest.raises(ValueError, match=r"(?i)(nan|inf).*rows? 4, 17"):
        _fit(X, y, groups=groups, Z=Z)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_z_names_the_rows(data, value):
    X, y, groups, Z = data
    Z = Z.copy()
    Z[[4, 17], 1] = value
    with pytest.raises(ValueError, match=r"Z contains NaN or infinity in rows 4, 17"):
        _fit(X, y, groups=groups, Z=Z)


@pytest.mark.parametrize("kind", ["float nan", "None", "pd.NA", "NaT", "categorical nan"])
def test_missing_group_labels_of_every_kind(data, kind):
    X, y, groups, Z = data
    rows = np.isin(np.arange(len(y)), [3, 41])
    if kind == "float nan":
        g = np.where(rows, np.nan, groups.astype(float))
    elif kind == "None":
        g = np.where(rows, None, groups.astype(object))
    elif kind == "pd.NA":
        g = pd.array(np.where(rows, None, groups.astype(object)), dtype="Int64")
    elif kind == "NaT":
        g = pd.Series(pd.to_datetime(groups, unit="D")).mask(rows)
    else:
        g = pd.Categorical(np.where(rows, None, groups.astype(str).astype(object)))
    with pytest.raises(ValueError, match=r"groups has missing labels.*rows 3, 41"):
        _fit(X, y, groups=g, Z=Z)


# ---- empty and degenerate shapes ---------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda X, y, g: (X.iloc[:0], y[:0], g[:0]),
    lambda X, y, g: (X.to_numpy()[:0], y[:0], []),
])
def test_empty_input_variants(data, make):
    X, y, groups, _ = data
    X0, y0, g0 = make(X, y, groups)
    with pytest.raises(ValueError, match="0 sample"):
        MixedLMRegressor().fit(X0, y0, groups=g0)


def test_x_without_columns_in_numpy(data):
    _, y, groups, _ = data
    with pytest.raises(ValueError, match="0 feature"):
        MixedLMRegressor().fit(np.empty((len(y), 0)), y, groups=groups)


def test_x_without_columns_in_a_dataframe(data):
    X, y, groups, _ = data
    with pytest.raises(ValueError, match="(?i)0 feature|no columns|column of ones"):
        MixedLMRegressor().fit(X[[]], y, groups=groups)


def test_z_without_columns(data):
    X, y, groups, _ = data
    with pytest.raises(ValueError, match="Z"):
        _fit(X, y, groups=groups, Z=np.empty((len(y), 0)))


def test_single_group_from_a_categorical_with_unused_levels(data):
    X, y, _, Z = data
    g = pd.Categorical(np.full(len(y), "a"), categories=["a", "b", "c"])
    with pytest.raises(ValueError, match="at least two groups"):
        _fit(X, y, groups=g, Z=Z)


# ---- y that the model fits exactly ---------------------------------------------------------------

@pytest.mark.parametrize("params", [{"reml": True}, {"reml": False}, {"cov_type": "diagonal"}])
@pytest.mark.parametrize("weights", [False, True])
def test_constant_y_variants(data, params, weights):
    X, y, groups, Z = data
    w = np.linspace(0.5, 2.0, len(y)) if weights else None
    with pytest.raises(ValueError, match="y is constant"):
        _fit(X, np.full_like(y, -2.5), groups=groups, Z=Z, sample_weight=w, params=params)


def test_y_an_exact_linear_function_of_x(data):
    X, y, groups, Z = data
    with pytest.raises(ValueError, match="exact linear function of X"):
        _fit(X, 3.0 - 2.0 * X["a"].to_numpy() + 0.5 * X["b"].to_numpy(), groups=groups, Z=Z)


@pytest.mark.parametrize("with_slope", [False, True])
def test_y_constant_within_every_group(data, with_slope):
    X, _, groups, Z = data
    y = np.repeat(np.arange(6.0) ** 2, 10)
    with pytest.raises(ValueError, match="(?i)within (every|each) group"):
        _fit(X, y, groups=groups, Z=Z if with_slope else None)


# ---- too few rows for the parameters ---------------------------------------------------------------

def test_more_columns_than_rows(data):
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.standard_normal((10, 12)), columns=[f"c{j}" for j in range(12)])
    # lme4 drops the 3 aliased columns; the 10 kept ones then reproduce y exactly
    with pytest.warns(RankDeficientWarning, match=r"dropping 3 columns.*\['c9', 'c10', 'c11'\]"):
        with pytest.raises(ValueError, match="exact linear function of X"):
            MixedLMRegressor().fit(X, rng.standard_normal(10), groups=np.repeat([0, 1], 5))


def test_one_row_per_group_is_refused(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="(?i)levels|groups.*observations|one row"):
        _fit(X, y, groups=np.arange(len(y)))


@pytest.mark.parametrize("case", ["n <= m q", "n <= p + m q"])
def test_more_random_effects_than_rows_is_refused(case):
    rng = np.random.default_rng(2)
    if case == "n <= m q":  # 5 groups of 2 rows, random intercept and slope: 10 effects
        g = np.repeat(np.arange(5), 2)
        x = rng.standard_normal(10)
        X, Z = x[:, None], np.column_stack([np.ones(10), x])
        y = x + rng.standard_normal(10)
    else:  # 5 rows, 2 fixed effects, 2 groups x 2 random effects
        X = np.array([[-0.96, -4.77], [2.54, 3.02], [-0.82, 2.21], [0.14, -0.67], [1.24, -0.14]])
        y = np.array([-7.78, 8.08, 3.21, -2.17, 0.05])
        Z = np.column_stack([np.ones(5), [0.57, -0.59, 0.15, -0.87, 0.86]])
        g = np.array([0, 1, 0, 0, 0])
    est = MixedLMRegressor(reml=False, fit_intercept=False)
    with pytest.raises(ValueError, match="(?i)observations|rows"):
        est.fit(X, y, groups=g, Z=Z)
    if case == "n <= p + m q":  # decided by the rank of [X Z] (= 5 = n), before the fit
        with pytest.raises(ValueError, match=r"2 fixed and 4 random effects.*span all 5"):
            est.fit(X, y, groups=g, Z=Z)
        assert not hasattr(est, "model_")


def test_as_many_effects_as_rows_is_fitted_when_they_cannot_reproduce_y():
    """16 rows, 8 fixed effects (3 of them group-level covariates) and 8 random intercepts:
    ``n <= p + N``, but ``[X Z]`` has rank 12 (the group-level columns lie in the span of
    the group indicators), so the likelihood is bounded: fitted, to the maximum of the
    dense likelihood (three starts)."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 2)
    X = np.column_stack([rng.standard_normal((8, 3))[g], rng.standard_normal((16, 4))])
    y = X @ rng.standard_normal(7) + 2 * rng.standard_normal(8)[g] + rng.standard_normal(16)
    est = MixedLMRegressor(reml=False).fit(X, y, groups=g)
    X_full, Z = np.column_stack([np.ones(16), X]), np.ones((16, 1))

    def minus_loglik(t):
        return -profiled_dense_loglik(X_full, y, Z, g, np.exp([[t[0]]]), np.exp(t[1]), False)[0]

    best = min(optimize.minimize(minus_loglik, x0, method="Nelder-Mead",
                                 options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000}).fun
               for x0 in ([0.0, 0.0], [2.0, -1.0], [-2.0, 1.0]))
    assert est.llf_ >= -best - 1e-9
    assert est.cov_re_[0, 0] > 1.0 and est.scale_ > 0.1


# ---- random-effects design ----------------------------------------------------------------------

@pytest.mark.parametrize("cov_type", ["unstructured", "diagonal"])
def test_slope_with_one_value_everywhere_names_the_columns(data, cov_type):
    """A slope on a covariate that takes one value in every group: its column is the
    intercept's times that value in every row, so only the variance of their sum is
    identified."""
    X, y, groups, _ = data
    n = len(y)
    Z = pd.DataFrame({"one": np.ones(n), "dose": np.full(n, 2.5), "a": X["a"]})
    with pytest.raises(ValueError, match="'one' and 'dose' are proportional with the same ratio "
                                         "in every group"):
        _fit(X, y, groups=groups, Z=Z, params={"cov_type": cov_type})


def test_proportional_slopes_with_singleton_groups(data):
    """Two slopes proportional with one ratio in every row; groups of one row (in which any
    two columns are proportional) change nothing."""
    X, y, groups, _ = data
    g = groups.copy()
    g[[0, 10, 20]] = [100, 101, 102]  # three singletons
    Z = pd.DataFrame({"(Intercept)": np.ones(len(y)), "a": X["a"], "3a": 3.0 * X["a"]})
    with pytest.raises(ValueError, match=r"'a' and '3a' are proportional with the same ratio"):
        _fit(X, y, groups=g, Z=Z)


def test_a_z_column_combining_others_in_every_row_is_named(data):
    """Pairwise not proportional, jointly dependent: ``w = 2 + 3 v`` next to 1 and ``v``."""
    X, y, groups, _ = data
    v = (groups % 4).astype(float)  # constant within each group, 4 values between them
    Z = pd.DataFrame({"(Intercept)": np.ones(len(y)), "v": v, "w": 2.0 + 3.0 * v})
    with pytest.raises(ValueError, match=r"Z column 'w' is a linear combination of the columns "
                                         r"\['\(Intercept\)', 'v'\] in every row"):
        _fit(X, y, groups=groups, Z=Z)


# lme4 (REML): logLik -433.8677 (4 decimals printed). The dense n x n likelihood of
# tests/_dense.py (DenseTermsDeviance, L-BFGS-B from our optimum, the identity, a small
# start and 8 seeded random starts) finds -433.867684088676 at best: the correlation of
# LOCATION's effects is -1 (a singular fit).
GROUSETICKS_SLOPE_LOGLIK = -433.867684088676


def test_slope_constant_within_each_group_is_identified_between_groups():
    """``(cHEIGHT | LOCATION)`` with cHEIGHT constant within each location: every level's
    ``Z_l'Z_l`` is singular, but the ratio of the two columns differs between locations,
    so the location effect's variance (a quadratic in cHEIGHT) is identified. lme4 fits
    it; so do we, to the dense likelihood's optimum."""
    from mixedlm_sklearn import lmer
    from mixedlm_sklearn.datasets import load_grouseticks

    df = load_grouseticks()
    assert (df.groupby("LOCATION")["cHEIGHT"].nunique() == 1).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)  # lme4's fit is singular too
        est = lmer("log(TICKS + 1) ~ YEAR + cHEIGHT + (1 | BROOD) + (cHEIGHT | LOCATION)", df)
    assert est.converged_
    assert est.llf_ >= GROUSETICKS_SLOPE_LOGLIK - 1e-6
    assert est.llf_ >= -433.8677 - 1e-6  # lme4's, as printed


@pytest.mark.parametrize("m, seed, reml", [(20, 0, True), (20, 0, False), (110, 1, True)])
def test_one_term_slope_on_a_group_level_covariate_reaches_the_dense_optimum(m, seed, reml):
    """``(1 + x_g | g)`` with ``x_g`` constant within each group: every level's ``Z'Z`` is
    singular (the moment start has no usable level; above 100 levels the fit takes the
    large-problem path). The dense likelihood from several starts finds nothing higher."""
    from _dense import DenseTermsDeviance, TermsDesign

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), rng.integers(1, 6, m) if m < 50 else rng.integers(2, 4, m))
    n = g.size
    x_g = rng.uniform(-2.0, 2.0, m)[g]
    X = np.column_stack([rng.standard_normal(n), x_g])
    Z = np.column_stack([np.ones(n), x_g])
    b = rng.standard_normal((m, 2)) @ np.array([[1.0, 0.0], [0.5, 0.7]]).T
    y = 1.0 + X @ [0.5, 0.3] + np.einsum("ij,ij->i", Z, b[g]) + rng.standard_normal(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        est = MixedLMRegressor(reml=reml).fit(X, y, groups=g, Z=Z)
    assert est.converged_
    dense = DenseTermsDeviance(TermsDesign(X, y, [("g", g, Z, False)]), reml)
    assert est.llf_ == pytest.approx(-0.5 * dense(est.theta_), abs=1e-8)
    assert est.llf_ >= -0.5 * dense.multistart_min([est.theta_], n_random=2 if m < 50 else 0) - 1e-6


def test_duplicate_z_column_names(data):
    X, y, groups, Z = data
    with pytest.raises(ValueError, match=r"duplicate column names \['a'\]"):
        _fit(X, y, groups=groups, Z=pd.DataFrame(Z, columns=["a", "a"]))


def test_complex_z_is_refused(data):
    X, y, groups, Z = data
    with pytest.raises((ValueError, TypeError), match="(?i)complex"):
        _fit(X, y, groups=groups, Z=Z + 1j)


def test_object_z_column_is_refused(data):
    X, y, groups, _ = data
    Z = pd.DataFrame({"one": 1.0, "kind": "x"}, index=range(len(y)))
    with pytest.raises(TypeError, match="Z must be numeric"):
        _fit(X, y, groups=groups, Z=Z)


@pytest.mark.parametrize("column", [pd.Categorical(np.repeat(list("abcdef"), 10)),
                                    pd.array(["x"] * 60, dtype="string"),
                                    pd.to_datetime(np.arange(60), unit="D")])
def test_non_numeric_x_columns_of_every_kind(data, column):
    X, y, groups, Z = data
    with pytest.raises(TypeError, match=r"X columns \['kind'\] are not numeric"):
        _fit(X.assign(kind=column), y, groups=groups, Z=Z)


@pytest.mark.parametrize("which", ["X pandas sparse", "Z scipy sparse", "Z pandas sparse"])
def test_sparse_inputs_are_refused_with_advice(data, which):
    X, y, groups, Z = data
    kw = {"groups": groups, "Z": Z}
    if which == "X pandas sparse":
        X = X.astype(pd.SparseDtype(float, 0.0))
    elif which == "Z scipy sparse":
        kw["Z"] = sp.csr_matrix(Z)
    else:
        kw["Z"] = pd.DataFrame(Z).astype(pd.SparseDtype(float, 0.0))
    with pytest.raises(TypeError, match="(?i)sparse|dense"):
        _fit(X, y, **kw)


# ---- parameters of the wrong type or value (scikit-learn's parameter validation) -------------------

@pytest.mark.parametrize("params, name", [
    ({"reml": 1}, "reml"),
    ({"reml": None}, "reml"),
    ({"fit_intercept": "no"}, "fit_intercept"),
    ({"cov_type": 3}, "cov_type"),
    ({"cov_type": "Unstructured"}, "cov_type"),
    ({"max_iter": 2.5}, "max_iter"),
    ({"max_iter": "10"}, "max_iter"),
    ({"max_iter": -3}, "max_iter"),
    ({"tol": "1e-3"}, "tol"),
    ({"tol": np.nan}, "tol"),
    ({"tol": 0.0}, "tol"),
    ({"verbose": "x"}, "verbose"),
])
def test_parameters_of_the_wrong_type(data, params, name):
    X, y, groups, Z = data
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of MixedLMRegressor"):
        _fit(X, y, groups=groups, Z=Z, params=params)
    # also through set_params and in fit_chunks
    est = MixedLMRegressor().set_params(**params)
    with pytest.raises(InvalidParameterError, match=name):
        est.fit_chunks([X.assign(y=y, g=groups)], y="y", groups="g", X=["a", "b"])


# ---- units beyond double precision's comfort -------------------------------------------------------

def test_y_whose_squares_overflow(data):
    X, y, groups, _ = data
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="overflow double precision.*rescale"):
            _fit(X, y * 1e160, groups=groups)
    assert not [w for w in record if issubclass(w.category, RuntimeWarning)]


def test_hashable_labels_of_unusual_types(data):
    """Labels may be any hashable values (the docstring says so): tuples, frozensets, bools."""
    X, y, groups, Z = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        ref = _fit(X, y, groups=groups, Z=Z)
    for g in (pd.Series([(int(k), "a") for k in groups]), [frozenset([int(k)]) for k in groups],
              np.where(groups < 3, groups, groups + 0.5)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SingularFitWarning)
            est = _fit(X, y, groups=g, Z=Z)
        assert est.llf_ == pytest.approx(ref.llf_, rel=1e-10)


# ---- more inputs that must fail (or work) cleanly ------------------------------------

def _numpy_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("case", ["single", "slopes", "weights", "residual_groups", "several factors"])
@pytest.mark.parametrize("y_kind", ["y * 1e160", "y = group effect"])
def test_clean_errors_leak_no_numpy_warnings(data, case, y_kind):
    X, y, groups, Z = data
    effect = np.repeat(np.random.default_rng(4).standard_normal(6), 10)
    y = y * 1e160 if y_kind == "y * 1e160" else effect
    kw = {"groups": groups}
    if case == "slopes":
        kw["Z"] = Z
    elif case == "weights":
        kw["sample_weight"] = np.linspace(1.0, 2.0, len(y))
    elif case == "residual_groups":
        kw["residual_groups"] = np.tile([0, 1], len(y) // 2)
    elif case == "several factors":
        kw["groups"] = pd.DataFrame({"g": groups, "h": np.tile(np.arange(5), 12)})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="overflow|residual variance"):
            _fit(X, y, **kw)
    assert _numpy_warnings(record) == []


def test_numpy_warnings_of_a_successful_fit_are_still_reported():
    from mixedlm_sklearn._validation import clean_failure

    with pytest.warns(RuntimeWarning, match="overflow encountered in a numpy operation"):
        with clean_failure():
            np.float64(1e300) * np.float64(1e300)


@pytest.mark.parametrize("as_array", [False, True])
def test_object_columns_follow_one_rule(data, as_array):
    X, y, groups, Z = data
    ref = _fit(X, y, groups=groups, Z=Z)
    obj = X.astype({"a": object})
    est = _fit(obj.to_numpy() if as_array else obj, y, groups=groups, Z=Z)
    assert est.llf_ == ref.llf_
    np.testing.assert_allclose(est.predict(obj.to_numpy() if as_array else obj), ref.predict(X), rtol=1e-14)
    bad = obj.copy()
    bad.iloc[3, 0] = "x"
    with pytest.raises(TypeError, match=r"X columns \[(0|'a')\] are not numeric \(could not convert"):
        _fit(bad.to_numpy() if as_array else bad, y, groups=groups, Z=Z)


def test_object_z_of_numbers_is_accepted(data):
    X, y, groups, Z = data
    ref = _fit(X, y, groups=groups, Z=pd.DataFrame(Z, columns=["one", "a"]))
    est = _fit(X, y, groups=groups, Z=pd.DataFrame(Z, columns=["one", "a"]).astype(object))
    assert est.llf_ == ref.llf_


def test_y_as_numpy_strings(data):
    X, y, groups, Z = data
    ref = _fit(X, y, groups=groups, Z=Z)
    est = _fit(X, y.astype(str), groups=groups, Z=Z)  # dtype <U..: numeric text, as object y
    assert est.llf_ == pytest.approx(ref.llf_, rel=1e-12)
    with pytest.raises(TypeError, match=r"y must be numeric: could not convert string to float: 'high'"):
        _fit(X, np.where(np.arange(len(y)) == 7, "high", y.astype(str)), groups=groups, Z=Z)


def test_empty_column_lists_and_frames(data):
    X, y, groups, _ = data
    frame = X.assign(y=y, g=groups)
    with pytest.raises(ValueError, match="X is an empty list"):
        MixedLMRegressor().fit_chunks([frame], y="y", groups="g", X=[])
    with pytest.raises(ValueError, match=r"chunk 0: Z(\['g'\])? has no columns"):
        MixedLMRegressor().fit_chunks([frame], y="y", groups="g", X=["a"], Z=[])
    with pytest.raises(ValueError, match="^Z has no columns$"):
        _fit(X, y, groups=groups, Z=X[[]])


def test_wald_test_with_a_3d_contrast(data):
    X, y, groups, Z = data
    est = _fit(X, y, groups=groups, Z=Z)
    with pytest.raises(ValueError, match=r"L must be a vector or a matrix .* got a 3-D array of shape \(2, 3, 3\)"):
        est.wald_test(np.ones((2, 3, 3)))


@pytest.mark.parametrize("missing", ["groups", "y"])
def test_dask_without_groups_or_y(data, missing):
    dd = pytest.importorskip("dask.dataframe")
    X, y, groups, _ = data
    ddf = dd.from_pandas(X.assign(y=y, g=groups), npartitions=2)
    kw = {"y": ddf["y"], "groups": ddf["g"]}
    kw[missing] = None
    with pytest.raises(ValueError, match=f"with Dask input, {missing} is required"):
        MixedLMRegressor().fit(ddf[["a", "b"]], kw["y"], groups=kw["groups"])


def test_dask_arrays_are_refused_by_name(data):
    da = pytest.importorskip("dask.array")
    X, y, groups, _ = data
    with pytest.raises(TypeError, match=r"\['X', 'y', 'groups'\] are dask.arrays: .*from_dask_array"):
        MixedLMRegressor().fit(da.from_array(X.to_numpy(), chunks=30), da.from_array(y, chunks=30),
                               groups=da.from_array(groups, chunks=30))
