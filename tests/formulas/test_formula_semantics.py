"""Formula semantics: lme4 users get what they wrote.

Every R idiom a user copies from lme4 code is fitted here from the raw data and compared
with lme4 itself: ``tests/data/formula_lme4.json``, written by
``tests/data/formula_lme4.R`` (lme4 1.1-31; the R script fits the same bundled CSV files
and states the formulas, which are used here verbatim). For each case: log-likelihood
within 1e-6, fixed effects with lme4's column names (1e-4 relative), their standard
errors, the variance components, lme4's fitted values and ``predict(fit, newdata)`` on a
few new rows (stateful transforms such as ``scale`` and ``poly`` must reuse the fitted
data's mean, sd and coefficients there).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor, RankDeficientWarning, lmer
from mixedlm_sklearn.datasets import load_dietox, load_orthodont, load_sleepstudy
from mixedlm_sklearn.formula import parse_formula

from _dense import profiled_dense_loglik

REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "data" / "formula_lme4.json").read_text())
RTOL = 1e-4


def _sleepstudy():
    """sleepstudy with the two extra columns the R script adds."""
    df = load_sleepstudy()
    df["off"] = (df["Days"] - 4.5) ** 2 / 2
    df["Days.x"] = df["Days"]
    return df


LOADERS = {"sleepstudy": _sleepstudy, "dietox": load_dietox, "orthodont": load_orthodont}


@pytest.fixture(scope="module", params=sorted(REFERENCE), ids=sorted(REFERENCE))
def case(request):
    ref = REFERENCE[request.param]
    data = LOADERS[ref["data"]]()
    return ref, data, lmer(ref["formula"], data, reml=ref["reml"])


def test_loglikelihood_matches_lme4(case):
    ref, _, est = case
    assert abs(est.llf_ - ref["loglik"]) < 1e-6


def test_fixed_effects_have_lme4_names_and_values(case):
    ref, _, est = case
    assert list(est.fe_params_.index) == ref["fe_names"]
    np.testing.assert_allclose(est.fe_params_.to_numpy(), ref["fe_params"], rtol=RTOL)
    np.testing.assert_allclose(est.bse_.to_numpy(), ref["bse"], rtol=RTOL)


def test_variance_components_match_lme4(case):
    ref, _, est = case
    ((group, cov),) = ref["cov_re"].items()  # every case has one grouping factor
    assert est.random_effects_.index.name == group
    assert list(est.random_effects_.columns) == cov["names"]
    expected = np.array(cov["matrix"], dtype=float).reshape(len(cov["names"]), -1)
    np.testing.assert_allclose(est.cov_re_, expected, rtol=RTOL,
                               atol=RTOL * np.abs(expected).max())
    assert est.scale_ == pytest.approx(ref["scale"], rel=RTOL)


def test_fitted_values_match_lme4(case):
    ref, data, est = case
    rows = data.iloc[ref["fitted_rows"]]  # lme4 leaves out rows with missing values
    assert len(rows) == ref["n"] == len(est.model_frame_.y)
    pred = est.predict(**est.model_frame_.new_data(rows))
    np.testing.assert_allclose(pred, ref["fitted"], rtol=1e-6)


def test_predictions_on_new_data_match_lme4(case):
    ref, _, est = case
    new = pd.DataFrame(ref["newdata"])
    pred = est.predict(**est.model_frame_.new_data(new))
    np.testing.assert_allclose(pred, ref["predict_new"], rtol=1e-6)


# ---- the idioms one by one: what went wrong before, and equivalent spellings ----------------


def test_caret_is_a_power_not_xor():
    """``I(Days^2)`` was Python's XOR (coefficient 1.536, logLik -891.30)."""
    ref = REFERENCE["sleep_quadratic"]
    df = load_sleepstudy()
    est = lmer("Reaction ~ Days + I(Days^2) + (1|Subject)", df)
    assert est.fe_params_["I(Days^2)"] == pytest.approx(0.3370223, rel=1e-6)
    assert est.llf_ == pytest.approx(ref["loglik"], abs=1e-6)
    np.testing.assert_allclose(est.model_frame_.X["I(Days^2)"], df["Days"] ** 2)
    # Python's spelling is the same model, named as R deparses it
    same = lmer("Reaction ~ Days + I(Days**2) + (1|Subject)", df)
    assert list(same.fe_params_.index) == ["(Intercept)", "Days", "I(Days^2)"]
    assert same.llf_ == pytest.approx(est.llf_, abs=1e-9)


@pytest.mark.parametrize("expression, expected", [
    ("I(2 * Days^2 + 1)", lambda d: 2 * d**2 + 1),    # ^ before * and +, unlike Python's ^
    ("I(Days^2^0.5)", lambda d: d ** 2 ** 0.5),       # right-associative
    ("I(-Days^2)", lambda d: -(d**2)),
    ("I((-Days)^2)", lambda d: d**2),
    ("I(Days %% 4)", lambda d: d % 4),                # R's remainder and integer division
    ("I(Days %/% 4)", lambda d: d // 4),
    ("I(Days / 2)", lambda d: d / 2),
])
def test_expressions_follow_r_arithmetic(expression, expected):
    df = load_sleepstudy()
    X = parse_formula(f"Reaction ~ {expression} + (1 | Subject)", df).X
    np.testing.assert_allclose(X.iloc[:, 0], expected(df["Days"].astype(float)))


def test_integer_columns_are_doubles_as_in_r():
    # int64 Days ** 40 would wrap around silently; R's numbers are doubles
    df = load_sleepstudy()
    X = parse_formula("Reaction ~ I(Days^40) + I(Days^-1 + Days) + (1 | Subject)",
                      df[df["Days"] > 0]).X
    np.testing.assert_allclose(X["I(Days^40)"], df.loc[df["Days"] > 0, "Days"] ** 40.0)


def test_elementwise_functions_with_and_without_np():
    df = load_sleepstudy()
    bare = parse_formula("Reaction ~ log(Days + 1) + sqrt(Days) + exp(Days/5) + abs(Days - 4.5)"
                         " + (1 | Subject)", df).X
    prefixed = parse_formula("Reaction ~ np.log(Days + 1) + np.sqrt(Days) + np.exp(Days/5) + "
                             "np.abs(Days - 4.5) + (1 | Subject)", df).X
    np.testing.assert_array_equal(bare.to_numpy(), prefixed.to_numpy())
    assert list(bare.columns) == ["log(Days + 1)", "sqrt(Days)", "exp(Days/5)", "abs(Days - 4.5)"]
    assert list(prefixed.columns)[0] == "np.log(Days + 1)"
    np.testing.assert_allclose(bare["log(Days + 1)"], np.log1p(df["Days"]))


def test_factor_is_c():
    df = load_sleepstudy()
    factor = lmer("Reaction ~ factor(Days) + (1 | Subject)", df)
    c = lmer("Reaction ~ C(Days) + (1 | Subject)", df)
    assert factor.llf_ == pytest.approx(c.llf_, abs=1e-9)
    assert list(c.fe_params_.index)[1:3] == ["C(Days)1", "C(Days)2"]
    np.testing.assert_allclose(factor.fe_params_.to_numpy(), c.fe_params_.to_numpy())


@pytest.mark.parametrize("formula, reference", [
    # each raised NameError: name 'Days' is not defined
    ("Reaction ~ center(Days) + (1|Subject)", "sleep_centre"),
    ("Reaction ~ scale(Days) + (scale(Days)|Subject)", "sleep_scale"),
    ("Reaction ~ poly(Days, 2) + (1|Subject)", "sleep_poly_only"),
    ("Reaction ~ bs(Days, df=3) + (1|Subject)", "sleep_bs"),
])
def test_stateful_transforms_of_variables_used_nowhere_else(formula, reference):
    ref = REFERENCE[reference]
    est = lmer(formula, load_sleepstudy())
    assert abs(est.llf_ - ref["loglik"]) < 1e-6
    np.testing.assert_allclose(est.fe_params_.to_numpy(), ref["fe_params"], rtol=RTOL)
    # new data: the transform's state is the fitted data's (4 rows would give another
    # mean, sd, polynomial basis or knots)
    pred = est.predict(**est.model_frame_.new_data(pd.DataFrame(ref["newdata"])))
    np.testing.assert_allclose(pred, ref["predict_new"], rtol=1e-6)


def test_centre_is_r_scale_without_scaling():
    df = load_sleepstudy()
    X = parse_formula("Reaction ~ center(Days) + scale(Days) + scale(Days, scale = FALSE) + "
                      "scale(Days, center = FALSE) + (1 | Subject)", df).X
    days = df["Days"].astype(float)
    np.testing.assert_allclose(X["center(Days)"], days - days.mean())
    np.testing.assert_allclose(X["scale(Days, scale = FALSE)"], days - days.mean())
    np.testing.assert_allclose(X["scale(Days)"], (days - days.mean()) / days.std(ddof=1))
    # R: without centring, scale divides by the root mean square sqrt(sum(x^2) / (n - 1))
    np.testing.assert_allclose(X["scale(Days, center = FALSE)"],
                               days / np.sqrt((days**2).sum() / (len(days) - 1)))


def test_poly_columns_are_r_orthonormal_polynomials():
    """Same numbers as R's poly(): orthonormal columns, leading coefficient positive
    (so lme4's coefficient signs and names carry over unchanged)."""
    df = load_sleepstudy()
    X = parse_formula("Reaction ~ poly(Days, 3) + (1 | Subject)", df).X
    assert list(X.columns) == ["poly(Days, 3)1", "poly(Days, 3)2", "poly(Days, 3)3"]
    np.testing.assert_allclose(X.T @ X, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(X.sum(axis=0), 0.0, atol=1e-12)
    assert (np.diff(X["poly(Days, 3)1"].to_numpy()[:10]) > 0).all()
    raw = parse_formula("Reaction ~ poly(Days, 2, raw = TRUE) + (1 | Subject)", df).X
    np.testing.assert_allclose(raw["poly(Days, 2, raw = TRUE)2"], df["Days"] ** 2)


def test_bs_knots_as_an_r_vector_or_a_python_list():
    df = load_sleepstudy()
    r = parse_formula("Reaction ~ bs(Days, knots = c(3, 6), degree = 2) + (1 | Subject)", df).X
    python = parse_formula("Reaction ~ bs(Days, knots=[3, 6], degree=2) + (1 | Subject)", df).X
    assert list(r.columns) == REFERENCE["sleep_bs_knots"]["fe_names"][1:]
    np.testing.assert_array_equal(r.to_numpy(), python.to_numpy())


def test_logical_expressions_are_named_as_lme4_names_them():
    est = lmer("Reaction ~ Days + I(Days > 4) + (1 | Subject)", load_sleepstudy())
    assert list(est.fe_params_.index) == REFERENCE["sleep_logical"]["fe_names"]
    assert "I(Days > 4)TRUE" in est.fe_params_.index


@pytest.mark.parametrize("rhs", ["0 + Days", "Days - 1", "-1 + Days", "Days + 0"])
def test_intercept_removal_spellings(rhs):
    ref = REFERENCE["sleep_no_intercept_zero"]
    est = lmer(f"Reaction ~ {rhs} + (Days | Subject)", load_sleepstudy())
    assert list(est.fe_params_.index) == ["Days"]
    assert abs(est.llf_ - ref["loglik"]) < 1e-6


def test_formula_powers_and_products_expand_as_in_r():
    df = load_dietox()
    power = parse_formula("Weight ~ (Time + Feed + Evit)^2 + (1 | Pig)", df)
    explicit = parse_formula("Weight ~ Time + Feed + Evit + Time:Feed + Time:Evit + Feed:Evit "
                             "+ (1 | Pig)", df)
    assert list(power.X.columns) == list(explicit.X.columns) == \
        REFERENCE["dietox_power"]["fe_names"][1:]
    product = parse_formula("Weight ~ Time * Feed + (1 | Pig)", df)
    assert list(product.X.columns) == ["Time", "Feed", "Time:Feed"]
    np.testing.assert_allclose(product.X["Time:Feed"], product.X["Time"] * product.X["Feed"])
    # Days^2 in the formula language is the interaction of Days with itself: Days
    assert list(parse_formula("Reaction ~ Days^2 + (1 | Subject)", load_sleepstudy()).X) \
        == ["Days"]


@pytest.mark.parametrize("formula", [
    "Reaction ~ Days.x + (Days.x | Subject)",
    "Reaction ~ `Days.x` + (`Days.x` | Subject)",
    "Reaction ~ {Days.x} + ({Days.x} | Subject)",
    "Reaction ~ I(Days.x + 0) + (I(Days.x + 0) | Subject)",
])
def test_column_names_with_dots(formula):
    """R-style names such as Days.x could not be used, not even in backticks."""
    ref = REFERENCE["sleep_dotted_name"]
    est = lmer(formula, _sleepstudy())
    assert abs(est.llf_ - ref["loglik"]) < 1e-6
    assert est.fe_params_.iloc[1] == pytest.approx(ref["fe_params"][1], rel=1e-6)


def test_other_column_names_in_backticks_get_r_names():
    df = load_sleepstudy().rename(columns={"Days": "days of sleep deprivation"})
    frame = parse_formula("Reaction ~ `days of sleep deprivation` + "
                          "log(`days of sleep deprivation` + 1) + (1 | Subject)", df)
    assert list(frame.X.columns) == ["`days of sleep deprivation`",
                                     "log(`days of sleep deprivation` + 1)"]
    np.testing.assert_allclose(frame.X.iloc[:, 0], df["days of sleep deprivation"])


def test_python_keywords_and_function_names_as_column_names():
    df = load_sleepstudy().assign(**{"lambda": lambda d: d["Days"], "scale": lambda d: d["Days"]})
    frame = parse_formula("Reaction ~ `lambda` + scale + (1 | Subject)", df)
    np.testing.assert_array_equal(frame.X.to_numpy(), df[["Days", "Days"]].to_numpy())


def test_transformed_response():
    ref = REFERENCE["sleep_log"]
    est = lmer(ref["formula"], load_sleepstudy())
    assert est.model_frame_.y.name == "log(Reaction)"
    assert abs(est.llf_ - ref["loglik"]) < 1e-6


def test_names_in_other_alphabets_need_no_backticks():
    df = load_sleepstudy().rename(columns={"Days": "días", "Subject": "sujeto"})
    frame = parse_formula("Reaction ~ días + log(días + 1) + (días | sujeto)", df)
    assert list(frame.X.columns) == ["días", "log(días + 1)"]
    assert frame.terms[0].group == "sujeto"


def test_names_are_matched_as_spelled_not_as_python_normalises_them():
    """Python's parser NFKC-normalises identifiers: full-width ``ｘ`` read as ``x``, the
    micro sign ``µ`` (U+00B5) as Greek ``μ`` (U+03BC), ``ｌｏｇ`` as ``log``."""
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"y": rng.normal(size=40), "x": rng.normal(size=40),
                       "ｘ": rng.normal(size=40), "dose_µg": rng.uniform(1.0, 2.0, size=40),
                       "g": np.repeat(np.arange(8), 5)})
    frame = parse_formula("y ~ I(ｘ*2) + I(x*2) + log(dose_µg) + exp(ｘ) + (1 | g)", df)
    assert list(frame.X.columns) == ["I(ｘ * 2)", "I(x * 2)", "log(dose_µg)", "exp(ｘ)"]
    np.testing.assert_array_equal(frame.X["I(ｘ * 2)"], 2 * df["ｘ"])
    np.testing.assert_array_equal(frame.X["I(x * 2)"], 2 * df["x"])
    np.testing.assert_array_equal(frame.X["log(dose_µg)"], np.log(df["dose_µg"]))
    np.testing.assert_array_equal(frame.X["exp(ｘ)"], np.exp(df["ｘ"]))
    # the response and a random-effects term too; new data reads the same columns
    frame = parse_formula("log(dose_µg) ~ ｘ + (0 + I(ｘ) | g)", df)
    np.testing.assert_array_equal(frame.y, np.log(df["dose_µg"]))
    np.testing.assert_array_equal(frame.terms[0].Z.iloc[:, 0], df["ｘ"])
    np.testing.assert_array_equal(frame.new_data(df.iloc[:3])["Z"].iloc[:, 0], df["ｘ"][:3])
    # a name that is no column is refused as written, never replaced by its normal form
    only_x = df.drop(columns=["ｘ"])
    with pytest.raises(ValueError, match=r"uses \['ｘ'\], which are not columns"):
        parse_formula("y ~ I(ｘ*2) + (1 | g)", only_x)
    greek_mu = "dose_\u03bcg"
    with pytest.raises(ValueError, match=rf"uses \['{greek_mu}'\], which are not columns"):
        parse_formula(f"y ~ log({greek_mu}) + (1 | g)", df)
    with pytest.raises(ValueError, match="'`ｌｏｇ`' is not an allowed function"):
        parse_formula("y ~ ｌｏｇ(dose_µg) + (1 | g)", df)


def _interaction_data():
    rng = np.random.default_rng(11)
    n = 90
    df = pd.DataFrame({"a": rng.choice(["u", "v", "w"], n), "b": rng.choice(["p", "q"], n),
                       "g": np.repeat(np.arange(15), 6)})
    df["y"] = (1.0 + 0.8 * (df["a"] == "v") - 0.5 * (df["a"] + df["b"] == "wq")
               + np.repeat(rng.normal(size=15), 6) + rng.normal(size=n))
    return df


def _indicators(df, a_levels=("u", "v", "w"), b_levels=("p", "q")):
    """R's columns of a:b coded by indicators of both factors, a varying fastest."""
    return pd.DataFrame({f"a{la}:b{lb}": ((df["a"] == la) & (df["b"] == lb)).astype(float)
                         for lb in b_levels for la in a_levels}, index=df.index)


@pytest.mark.parametrize("rhs", ["a:b", "a %in% b"])
def test_interaction_without_its_margins_is_coded_as_r_codes_it(rhs):
    """R's model.matrix codes a factor of a term by contrasts only when the term without it
    is in the model before it: a:b alone gets one indicator per level of each factor
    (with the intercept, the last column is aliased and lme4 drops it). formulaic's
    full-rank split (b[T.q], a[T.v]:b[p], ...) gave other coefficients and names."""
    df = _interaction_data()
    frame = parse_formula(f"y ~ {rhs} + (1 | g)", df)
    R = _indicators(df)
    assert list(frame.X.columns) == list(R.columns) == \
        ["au:bp", "av:bp", "aw:bp", "au:bq", "av:bq", "aw:bq"]
    np.testing.assert_array_equal(frame.X, R)
    assert [(t.name, t.columns, t.contrasts) for t in frame.fixed_terms()] == \
        [("a:b", (1, 2, 3, 4, 5, 6), (False, False))]
    with pytest.warns(RankDeficientWarning, match=r"dropping 1 column.*\['aw:bq'\]"):
        est = lmer(f"y ~ {rhs} + (1 | g)", df)
    assert list(est.fe_params_.index) == ["(Intercept)", *R.columns]
    assert est.fe_params_["aw:bq"] == 0.0
    # the fit of the hand-built design with lme4's kept columns
    kept = R.iloc[:, :5]
    by_hand = MixedLMRegressor().fit(kept, df["y"], groups=df["g"])
    np.testing.assert_allclose(est.fe_params_.iloc[:6], by_hand.fe_params_, rtol=1e-6)
    assert est.llf_ == pytest.approx(by_hand.llf_, abs=1e-8)
    np.testing.assert_allclose(est.predict(**est.model_frame_.new_data(df)),
                               by_hand.predict(kept, groups=df["g"]), rtol=1e-8)
    # and a brute-force likelihood of that design at the fit's variance parameters
    X = np.column_stack([np.ones(len(df)), kept])
    llf, beta = profiled_dense_loglik(X, df["y"].to_numpy(), np.ones((len(df), 1)),
                                      df["g"].to_numpy(), np.atleast_2d(est.cov_re_),
                                      est.scale_, reml=True)
    assert est.llf_ == pytest.approx(llf, abs=1e-6)
    np.testing.assert_allclose(est.fe_params_.iloc[:6], beta, rtol=1e-6)


def test_interaction_columns_follow_r_variable_order_and_margins():
    """b + a:b: a gets contrasts (b is in the model), b indicators; R names the term b:a
    (b appears first) and crosses b fastest. a + a:b: b gets contrasts."""
    df = _interaction_data()
    frame = parse_formula("y ~ b + a:b + (1 | g)", df)
    assert list(frame.X.columns) == ["bq", "bp:av", "bq:av", "bp:aw", "bq:aw"]
    for level_a in ("v", "w"):
        for level_b in ("p", "q"):
            np.testing.assert_array_equal(frame.X[f"b{level_b}:a{level_a}"],
                                          (df["a"] == level_a) & (df["b"] == level_b))
    assert [(t.name, t.factors, t.contrasts) for t in frame.fixed_terms()] == \
        [("b", ("b",), (True,)), ("b:a", ("b", "a"), (False, True))]
    frame = parse_formula("y ~ a + a:b + (1 | g)", df)
    assert list(frame.X.columns) == ["av", "aw", "au:bq", "av:bq", "aw:bq"]
    # without an intercept the first factor is coded by indicators
    frame = parse_formula("y ~ 0 + a + a:b + (1 | g)", df)
    assert list(frame.X.columns) == ["au", "av", "aw", "au:bq", "av:bq", "aw:bq"]
