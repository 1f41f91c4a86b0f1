"""Diagnostic plots: what is drawn must be the model's numbers.

Drawn with the Agg backend; the plotted data are read back from the Axes and compared with
the fit, lme4's reference values, or scipy.
"""

import doctest
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from _reference import single_factor_arrays  # noqa: E402
from scipy import stats  # noqa: E402

import mixedlm_sklearn.plotting as plotting_module  # noqa: E402
from mixedlm_sklearn import MixedLMRegressor  # noqa: E402
from mixedlm_sklearn.datasets import load_dietox, load_sleepstudy  # noqa: E402
from mixedlm_sklearn import lmer  # noqa: E402
from mixedlm_sklearn.plotting import (  # noqa: E402
    Z_95,
    caterpillar,
    profile_zeta,
    qq_ranef,
    residuals_vs_fitted,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sleep():
    """lme4's sleepstudy slopes fit (REML) and our fit of it from the formula."""
    return single_factor_arrays("sleepstudy_slopes_reml"), lmer(
        "Reaction ~ Days + (Days | Subject)", load_sleepstudy())


def _half_widths(ax):
    """Half-widths and centres of the horizontal interval segments, bottom to top."""
    segments = np.array(ax.collections[0].get_segments())  # (m, 2, 2): [[x0, y], [x1, y]]
    order = np.argsort(segments[:, 0, 1])
    segments = segments[order]
    return (segments[:, 1, 0] - segments[:, 0, 0]) / 2, (segments[:, 1, 0] + segments[:, 0, 0]) / 2


@pytest.mark.parametrize("column", [0, 1, "Days"])
def test_caterpillar_points_are_sorted_blups(sleep, column):
    ref, est = sleep
    ax = caterpillar(est, column=column)
    j = column if isinstance(column, int) else 1
    blups = est.random_effects_.iloc[:, j]
    points = ax.lines[0]
    assert len(points.get_xdata()) == est.n_groups_ == 18
    np.testing.assert_array_equal(points.get_xdata(), np.sort(blups.to_numpy()))
    np.testing.assert_array_equal(points.get_ydata(), np.arange(18))
    # labels follow the points; and the sorted values are lme4's BLUPs too
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == list(blups.sort_values(kind="stable").index)
    lme4 = ref["ranef"].iloc[:, j].loc[labels].to_numpy()
    np.testing.assert_allclose(points.get_xdata(), lme4, rtol=1e-4,
                               atol=1e-4 * np.abs(lme4).max())


def test_caterpillar_intervals_are_z_times_conditional_sd(sleep):
    ref, est = sleep
    ax = caterpillar(est, column="Days")
    half, centre = _half_widths(ax)
    order = np.argsort(est.random_effects_["Days"].to_numpy(), kind="stable")
    expected = 1.959963984540054 * np.sqrt(est.random_effects_cov_[order, 1, 1])
    np.testing.assert_allclose(half, expected, rtol=1e-12)
    np.testing.assert_allclose(centre, np.sort(est.random_effects_["Days"]), rtol=1e-12)
    # and against lme4's condVar
    labels = est.random_effects_.index[order]
    position = [list(ref["ranef"].index).index(label) for label in labels]
    lme4 = 1.959963984540054 * np.sqrt(ref["ranef_condvar"][position, 1, 1])
    np.testing.assert_allclose(half, lme4, rtol=1e-4)


def test_caterpillar_level_changes_the_width(sleep):
    _, est = sleep
    wide, _ = _half_widths(caterpillar(est, level=0.95))
    narrow, _ = _half_widths(caterpillar(est, level=0.5))
    np.testing.assert_allclose(narrow / wide, stats.norm.ppf(0.75) / stats.norm.ppf(0.975))


def test_caterpillar_zero_line_and_labels(sleep):
    _, est = sleep
    ax = caterpillar(est, column="Days")
    zero = ax.lines[1]
    np.testing.assert_array_equal(zero.get_xdata(), [0.0, 0.0])
    assert ax.get_ylabel() == "Subject"
    assert ax.get_xlabel() == "Days | Subject"
    assert "95%" in ax.get_title()


def test_caterpillar_draws_on_the_given_axes(sleep):
    _, est = sleep
    fig, axes = plt.subplots(1, 2)
    assert caterpillar(est, column=0, ax=axes[1]) is axes[1]
    assert len(axes[0].lines) == 0 and len(axes[1].lines) == 2


def test_caterpillar_hides_labels_for_many_groups():
    est = lmer("Weight ~ Time + (1 | Pig)", load_dietox())
    ax = caterpillar(est)
    assert len(ax.lines[0].get_xdata()) == 72 > plotting_module.MAX_LABELS
    assert len(ax.get_yticks()) == 0
    shown = caterpillar(est, show_labels=True)
    assert len(shown.get_yticklabels()) == 72


def test_caterpillar_errors(sleep):
    _, est = sleep
    with pytest.raises(ValueError, match="unknown random-effects column"):
        caterpillar(est, column="Time")
    with pytest.raises(ValueError, match="out of range"):
        caterpillar(est, column=2)
    with pytest.raises(ValueError, match="level"):
        caterpillar(est, level=95)
    with pytest.raises(ValueError, match="unknown term"):
        caterpillar(est, term="Pig")
    with pytest.raises(ValueError, match="not fitted"):
        caterpillar(MixedLMRegressor())


def test_term_selects_from_several_factors():
    """A fit with several terms stores a mapping term -> BLUPs (and -> covariances)."""
    a = pd.DataFrame({"(Intercept)": [0.3, -0.1, -0.2]}, index=pd.Index(list("xyz"), name="a"))
    b = pd.DataFrame({"(Intercept)": [1.0, -1.0]}, index=pd.Index(["p", "q"], name="b"))
    fake = SimpleNamespace(random_effects_={"a": a, "b": b},
                           random_effects_cov_={"a": np.full((3, 1, 1), 0.04),
                                                "b": np.full((2, 1, 1), 0.25)},
                           n_groups_=5)
    ax = caterpillar(fake, term="b")
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [-1.0, 1.0])
    np.testing.assert_allclose(_half_widths(ax)[0], Z_95 * 0.5)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["q", "p"]
    first = caterpillar(fake)
    np.testing.assert_array_equal(first.lines[0].get_xdata(), [-0.2, -0.1, 0.3])
    np.testing.assert_array_equal(qq_ranef(fake, term="b").lines[0].get_ydata(), [-1.0, 1.0])
    with pytest.raises(ValueError, match=r"unknown term 'c'.*\['a', 'b'\]"):
        caterpillar(fake, term="c")


@pytest.mark.parametrize("column", [0, "Days"])
def test_qq_points_are_sorted_blups_against_normal_quantiles(sleep, column):
    _, est = sleep
    ax = qq_ranef(est, column=column)
    values = est.random_effects_[est.random_effects_.columns[0 if column == 0 else 1]]
    points = ax.lines[0]
    assert len(points.get_ydata()) == 18
    np.testing.assert_array_equal(points.get_ydata(), np.sort(values))
    (osm, osr), (slope, intercept, _) = stats.probplot(values.to_numpy(), dist="norm")
    np.testing.assert_allclose(points.get_xdata(), osm, rtol=1e-12)
    line = ax.lines[1]
    x = np.asarray(line.get_xdata())
    np.testing.assert_allclose(line.get_ydata(), intercept + slope * x, rtol=1e-9, atol=1e-9)
    assert ax.get_xlabel() == "Standard normal quantiles"
    assert ax.get_ylabel() == f"{values.name} | Subject"


def test_residuals_vs_fitted_are_lme4s(sleep):
    ref, est = sleep
    ax = residuals_vs_fitted(est)  # data from the model frame of lmer
    points = ax.lines[0]
    np.testing.assert_allclose(points.get_xdata(), ref["fitted"], rtol=1e-6)
    np.testing.assert_allclose(points.get_ydata(), ref["y"] - points.get_xdata(), rtol=1e-12)
    assert ax.get_xlabel() == "Fitted values" and ax.get_ylabel() == "Residuals"
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), [0.0, 0.0])


def test_residuals_vs_fitted_with_explicit_data(sleep):
    ref, _ = sleep
    df = load_sleepstudy()
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    ax = residuals_vs_fitted(est, df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), ref["fitted"], rtol=1e-6)
    with pytest.raises(ValueError, match="give X and y"):
        residuals_vs_fitted(est)
    with pytest.raises(ValueError, match="y has 10 values"):
        residuals_vs_fitted(est, df[["Days"]], df["Reaction"][:10], groups=df["Subject"], Z=Z)


@pytest.fixture
def synthetic_profile():
    return pd.DataFrame({
        "param": ["sigma"] * 4 + ["Days"] * 3,
        "value": [26.0, 22.0, 25.5, 30.0, 9.0, 10.5, 12.0],
        "zeta": [0.2, -2.6, 0.0, 2.4, -1.0, 0.0, 1.1],
    })


def test_profile_zeta_draws_the_parameters_curve(synthetic_profile):
    ax = profile_zeta(synthetic_profile, "sigma")
    curve = ax.lines[0]
    np.testing.assert_array_equal(curve.get_xdata(), [22.0, 25.5, 26.0, 30.0])
    np.testing.assert_array_equal(curve.get_ydata(), [-2.6, 0.0, 0.2, 2.4])
    levels = sorted(line.get_ydata()[0] for line in ax.lines[1:])
    np.testing.assert_allclose(levels, [-1.959963984540054, 1.959963984540054])
    assert ax.get_xlabel() == "sigma" and ax.get_ylabel() == "zeta"


def test_profile_zeta_parameter_choice(synthetic_profile):
    with pytest.raises(ValueError, match="several parameters"):
        profile_zeta(synthetic_profile)
    with pytest.raises(ValueError, match="not in the profile"):
        profile_zeta(synthetic_profile, "Time")
    only = synthetic_profile[synthetic_profile["param"] == "Days"]
    np.testing.assert_array_equal(profile_zeta(only).lines[0].get_xdata(), [9.0, 10.5, 12.0])
    with pytest.raises(ValueError, match="columns param, value, zeta"):
        profile_zeta(only.rename(columns={"zeta": "z"}))


def test_profile_zeta_of_an_estimator(sleep):
    ref, est = sleep
    with pytest.raises(ValueError, match="give param="):
        profile_zeta(est)
    ax = profile_zeta(est, "sigma")
    x, z = np.asarray(ax.lines[0].get_xdata()), np.asarray(ax.lines[0].get_ydata())
    assert np.all(np.diff(x) > 0) and np.all(np.diff(z) > 0)
    # the curve crosses +-1.96 at lme4's 95% profile interval for sigma
    k = ref["profile_ci"]["names"].index("sigma")
    lower, upper = np.interp([-Z_95, Z_95], z, x)
    assert lower == pytest.approx(ref["profile_ci"]["lower"][k], rel=2e-3)
    assert upper == pytest.approx(ref["profile_ci"]["upper"][k], rel=2e-3)


def test_docstring_examples():
    result = doctest.testmod(plotting_module)
    assert result.attempted >= 8
    assert result.failed == 0
