"""The lme4 formula interface: parsing, and lme4's fits from the raw data sets.

Fits start from the raw data in ``mixedlm_sklearn.datasets`` (not the reference design
CSVs), so they check the whole path: formula -> designs -> estimator -> lme4's numbers.
"""

import doctest
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from _reference import load_case, single_factor_arrays

import mixedlm_sklearn.formula as formula_module
from mixedlm_sklearn import MixedLMRegressor, SingularFitWarning
from mixedlm_sklearn.datasets import (
    load_dietox,
    load_orthodont,
    load_penicillin,
    load_sleepstudy,
)
from mixedlm_sklearn import lmer
from mixedlm_sklearn.formula import ModelFrame, RandomTerm, parse_formula

RTOL = 1e-4


def _orthodont_lme4_levels():
    """Orthodont with R's level order of Sex (Male first), so the contrast is SexFemale."""
    df = load_orthodont()
    df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])
    return df


def _raw_from_reference(name, response, group):
    """A raw frame (response, group) rebuilt from a reference CSV with no bundled data set."""
    case = single_factor_arrays(name)
    return pd.DataFrame({response: case["y"], group: case["groups"]})


# (reference case, formula, data loader, reml)
SINGLE_CASES = [
    ("sleepstudy_slopes_reml", "Reaction ~ Days + (Days | Subject)", load_sleepstudy, True),
    ("sleepstudy_slopes_ml", "Reaction ~ Days + (Days | Subject)", load_sleepstudy, False),
    ("sleepstudy_intercept_reml", "Reaction ~ Days + (1 | Subject)", load_sleepstudy, True),
    ("dietox_slopes_reml", "Weight ~ Time + (Time | Pig)", load_dietox, True),
    ("dietox_intercept_reml", "Weight ~ Time + (1|Pig)", load_dietox, True),
    ("orthodont_slopes_ml", "distance ~ age * Sex + (age | Subject)", _orthodont_lme4_levels,
     False),
    # intercept-only fixed part: the model frame passes an explicit "(Intercept)" column
    ("dyestuff_reml", "Yield ~ 1 + (1 | Batch)",
     lambda: _raw_from_reference("dyestuff_reml", "Yield", "Batch"), True),
]


@pytest.fixture(scope="module", params=SINGLE_CASES, ids=[c[0] for c in SINGLE_CASES])
def single_fit(request):
    name, formula, loader, reml = request.param
    ref = single_factor_arrays(name)
    assert ref["formula"].replace(" ", "") == formula.replace(" ", "")
    assert ref["reml"] == reml
    return ref, lmer(formula, loader(), reml=reml)


def test_single_factor_loglikelihood(single_fit):
    ref, est = single_fit
    assert abs(est.llf_ - ref["llf"]) < 1e-6


def test_single_factor_fixed_effects_by_name(single_fit):
    ref, est = single_fit
    assert list(est.fe_params_.index) == ref["x_names"]
    err = np.abs(est.fe_params_.to_numpy() - ref["fe_params"]) / ref["bse_fe"]
    assert err.max() < 1e-4
    np.testing.assert_allclose(est.bse_.to_numpy(), ref["bse_fe"], rtol=RTOL)


def test_single_factor_variance_components(single_fit):
    ref, est = single_fit
    assert list(est.random_effects_.columns) == ref["z_names"]
    assert est.random_effects_.index.name == ref["group"]
    atol = RTOL * np.abs(ref["cov_re"]).max()
    np.testing.assert_allclose(est.cov_re_, ref["cov_re"], rtol=RTOL, atol=atol)
    np.testing.assert_allclose(est.scale_, ref["scale"], rtol=RTOL)


def test_single_factor_blups_by_label(single_fit):
    ref, est = single_fit
    ours = est.random_effects_.loc[ref["ranef"].index.astype(str)]
    scale = np.abs(ref["ranef"].to_numpy()).max()
    np.testing.assert_allclose(ours.to_numpy(), ref["ranef"].to_numpy(), rtol=RTOL,
                               atol=RTOL * scale)


def test_new_data_reproduces_lme4_fitted_values(single_fit):
    ref, est = single_fit
    # The reference CSVs keep the raw data's row order.
    pred = est.predict(**est.model_frame_.new_data(_raw_data(ref)))
    np.testing.assert_allclose(pred, ref["fitted"], rtol=1e-6)


def _raw_data(ref):
    name = ref["name"]
    for case, _, loader, _ in SINGLE_CASES:
        if case == name:
            return loader()
    raise KeyError(name)


def test_default_levels_give_the_other_contrast_same_likelihood():
    """Without R's level order the reference level is Female (the smallest label):
    the columns are named SexMale, and the ML fit is a reparametrisation of lme4's."""
    ref = single_factor_arrays("orthodont_slopes_ml")
    est = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont(), reml=False)
    assert list(est.fe_params_.index) == ["(Intercept)", "age", "SexMale", "age:SexMale"]
    assert abs(est.llf_ - ref["llf"]) < 1e-6
    b = dict(zip(ref["x_names"], ref["fe_params"]))
    # Female intercept and slope are the same numbers under either coding.
    assert est.fe_params_["(Intercept)"] == pytest.approx(b["(Intercept)"] + b["SexFemale"],
                                                          rel=1e-6)
    assert est.fe_params_["age"] == pytest.approx(b["age"] + b["age:SexFemale"], rel=1e-6)
    assert est.fe_params_["SexMale"] == pytest.approx(-b["SexFemale"], rel=1e-5)


def test_double_bar_is_the_diagonal_fit():
    df = load_sleepstudy()
    est = lmer("Reaction ~ Days + (Days || Subject)", df)
    assert est.cov_type == "unstructured"  # the formula decides; the parameter stays default
    assert est.cov_re_[0, 1] == 0.0
    direct = MixedLMRegressor(cov_type="diagonal").fit(
        df[["Days"]], df["Reaction"], groups=df["Subject"],
        Z=np.column_stack([np.ones(len(df)), df["Days"]]))
    assert est.llf_ == pytest.approx(direct.llf_, abs=1e-9)
    np.testing.assert_allclose(est.cov_re_, direct.cov_re_, rtol=1e-8)
    # lme4 (JSS 2015, fm2): REML criterion at convergence 1743.669
    assert -2 * est.llf_ == pytest.approx(1743.669, abs=2e-3)


def test_slope_only_term_equals_explicit_design():
    df = load_sleepstudy()
    est = lmer("Reaction ~ Days + (0 + Days | Subject)", df)
    direct = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"],
                                    Z=df[["Days"]])
    assert list(est.random_effects_.columns) == ["Days"]
    assert est.llf_ == pytest.approx(direct.llf_, abs=1e-9)


def test_estimator_parameters_pass_through_and_formula_owns_the_rest():
    df = load_sleepstudy()
    est = lmer("Reaction ~ Days + (1 | Subject)", df, max_iter=500, tol=1e-9)
    assert (est.max_iter, est.tol) == (500, 1e-9)
    with pytest.raises(TypeError, match="set by the formula"):
        lmer("Reaction ~ Days + (1 | Subject)", df, fit_intercept=False)
    with pytest.raises(TypeError, match="set by the formula"):
        lmer("Reaction ~ Days + (1 | Subject)", df, cov_type="diagonal")


# ---- missing values -----------------------------------------------------------------------


def test_rows_with_missing_model_variables_are_dropped_like_na_omit():
    df = load_dietox()  # Feed is missing in each pig's first week
    assert df["Feed"].isna().sum() == 72
    full = parse_formula("Weight ~ Time + (1 | Pig)", df)
    assert len(full.y) == 861 and len(full.dropped) == 0  # Feed is not a model variable
    frame = parse_formula("Weight ~ Time + Feed + (1 | Pig)", df)
    assert len(frame.y) == 789
    assert sorted(frame.dropped) == sorted(df.index[df["Feed"].isna()])
    assert list(frame.X.index) == list(df.index[df["Feed"].notna()])

    est = lmer("Weight ~ Time + Feed + (1 | Pig)", df)
    kept = df.dropna(subset=["Feed"])
    direct = MixedLMRegressor().fit(kept[["Time", "Feed"]], kept["Weight"], groups=kept["Pig"])
    assert est.llf_ == pytest.approx(direct.llf_, abs=1e-9)


def test_missing_response_group_or_slope_drops_the_row_and_keeps_the_index():
    df = load_sleepstudy()
    df.index = [f"r{i}" for i in range(len(df))]
    df.loc["r3", "Reaction"] = np.nan
    df.loc["r15", "Subject"] = None
    df.loc["r27", "Days"] = np.nan
    frame = parse_formula("Reaction ~ Days + (Days | Subject)", df)
    assert list(frame.dropped) == ["r3", "r15", "r27"]
    assert len(frame.y) == 177
    assert frame.y.index.equals(frame.terms[0].Z.index)
    assert frame.y.index.equals(frame.terms[0].labels.index)
    assert "r4" in frame.X.index and "r3" not in frame.X.index


def test_unused_categories_after_dropping_rows_give_no_zero_column():
    df = pd.DataFrame({
        "y": [1.0, 2.0, 2.5, 4.0, 3.0, 6.5, np.nan, 1.2],
        "f": pd.Categorical(["a", "b", "a", "b", "a", "b", "c", "a"], categories=["a", "b", "c"]),
        "g": ["u", "u", "v", "v", "w", "w", "w", "u"],
    })
    frame = parse_formula("y ~ f + (1 | g)", df)
    assert list(frame.X.columns) == ["fb"]  # level c only occurred in the dropped row


def test_all_rows_missing_is_an_error():
    df = pd.DataFrame({"y": [np.nan, np.nan], "g": ["a", "b"]})
    with pytest.raises(ValueError, match="no rows left"):
        parse_formula("y ~ 1 + (1 | g)", df)


# ---- several random-effects terms --------------------------------------------------------


def _pastes():
    """Pastes (lme4) rebuilt from the reference CSV: batch, cask within batch, strength."""
    frame, _ = load_case("pastes_nested_reml")
    return pd.DataFrame({"strength": frame["y"], "batch": frame["g1"],
                         "cask": frame["g2"].str.split(".").str[1]})


def test_crossed_terms_are_parsed_into_a_factor_frame_and_design_dict():
    df = load_penicillin()
    frame = parse_formula("diameter ~ 1 + (1 | plate) + (1 | sample)", df)
    assert [t.group for t in frame.terms] == ["plate", "sample"]
    assert [t.labels.nunique() for t in frame.terms] == [24, 6]
    assert not frame.single_factor
    args = frame.fit_arguments()
    assert list(args["groups"].columns) == ["plate", "sample"]
    assert list(args["Z"]) == ["plate", "sample"]
    assert all(list(z.columns) == ["(Intercept)"] for z in args["Z"].values())
    assert (args["groups"]["plate"] == df["plate"]).all()
    assert list(args["X"].columns) == ["(Intercept)"]
    assert frame.estimator_params() == {"fit_intercept": False, "cov_type": "unstructured"}


def test_nesting_expands_to_the_factor_and_the_interaction():
    df = _pastes()
    frame = parse_formula("strength ~ 1 + (1 | batch/cask)", df)
    assert [t.group for t in frame.terms] == ["batch", "batch:cask"]
    assert [t.factors for t in frame.terms] == [("batch",), ("batch", "cask")]
    assert [t.labels.nunique() for t in frame.terms] == [10, 30]
    ref, _ = load_case("pastes_nested_reml")
    # lme4's batch:cask labels are the reference's g2 ("A.a") with ":" for "."
    assert (frame.terms[1].labels == ref["g2"].str.replace(".", ":", regex=False)).all()
    assert frame.terms[1].labels.name == "batch:cask"
    same = parse_formula("strength ~ 1 + (1 | batch) + (1 | batch:cask)", df)
    for a, b in zip(frame.terms, same.terms):
        assert a.group == b.group and a.labels.equals(b.labels) and a.Z.equals(b.Z)


def test_three_level_nesting_and_interaction_only():
    df = pd.DataFrame({"y": np.arange(8.0), "a": list("aabbaabb"), "b": list("xyxyxyxy"),
                       "c": list("pppqqqqp")})
    frame = parse_formula("y ~ (1 | a/b/c)", df)
    assert [t.group for t in frame.terms] == ["a", "a:b", "a:b:c"]
    assert frame.terms[2].labels.iloc[0] == "a:x:p"
    single = parse_formula("y ~ (1 | a:b)", df)
    assert [t.group for t in single.terms] == ["a:b"]
    assert single.single_factor
    assert list(single.fit_arguments()["groups"]) == ["a:x", "a:y", "b:x", "b:y"] * 2


def test_double_bar_with_another_term_is_split_as_lme4_does():
    df = load_sleepstudy().assign(Lab=lambda d: np.where(d["Days"] < 5, "L1", "L2"))
    frame = parse_formula("Reaction ~ Days + (Days || Subject) + (1 | Lab)", df)
    args = frame.fit_arguments()
    assert list(args["groups"].columns) == ["Subject", "Subject.1", "Lab"]
    assert list(args["Z"]["Subject"].columns) == ["(Intercept)"]
    assert list(args["Z"]["Subject.1"].columns) == ["Days"]
    assert frame.estimator_params()["cov_type"] == "unstructured"


@pytest.mark.parametrize("name, formula, loader", [
    ("penicillin_crossed_reml", "diameter ~ 1 + (1 | plate) + (1 | sample)", load_penicillin),
    ("pastes_nested_reml", "strength ~ 1 + (1 | batch/cask)", _pastes),
])
def test_several_terms_reproduce_lme4(name, formula, loader):
    _, ref = load_case(name)
    est = lmer(formula, loader())
    assert abs(est.llf_ - ref["llf"]) < 1e-6
    assert est.fe_params_["(Intercept)"] == pytest.approx(ref["fe_params"], rel=1e-6)
    assert est.scale_ == pytest.approx(ref["scale"], rel=RTOL)
    pred = est.predict(**est.model_frame_.new_data(loader()))
    np.testing.assert_allclose(pred[:50], ref["fitted_head"], rtol=1e-6)
    lme4_names = {"plate": "plate", "sample": "sample", "batch": "batch", "bc": "batch:cask"}
    for term in ref["terms"]:  # covariances belong to vc_key (see test_crossed_estimator)
        np.testing.assert_allclose(est.cov_re_[lme4_names[term["vc_key"]]], term["cov_re"], rtol=RTOL)


# ---- parsing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    n = 60
    return pd.DataFrame({
        "y": rng.normal(size=n),
        "x": rng.normal(size=n),
        "z": rng.uniform(1, 2, size=n),
        "f": rng.choice(["A", "B", "C"], size=n),
        "g": np.repeat([f"g{i}" for i in range(6)], 10),
        "h": np.tile(["h1", "h2", "h3"], 20),
        "my group": np.repeat(["p", "q", "r"], 20),
    })


def test_random_slope_term(toy):
    frame = parse_formula("y ~ x + (x | g)", toy)
    assert isinstance(frame, ModelFrame)
    assert list(frame.X.columns) == ["x"] and frame.fit_intercept
    (term,) = frame.terms
    assert isinstance(term, RandomTerm)
    assert term.group == "g" and not term.diagonal
    assert list(term.Z.columns) == ["(Intercept)", "x"]
    np.testing.assert_array_equal(term.Z["x"], toy["x"])
    np.testing.assert_array_equal(term.Z["(Intercept)"], 1.0)
    assert (term.labels == toy["g"]).all() and term.labels.name == "g"
    np.testing.assert_array_equal(frame.y, toy["y"])
    assert frame.estimator_params() == {"fit_intercept": True, "cov_type": "unstructured"}
    args = frame.fit_arguments()
    assert args["groups"].name == "g" and list(args["Z"].columns) == ["(Intercept)", "x"]


def test_two_intercept_terms(toy):
    frame = parse_formula("y ~ x + (1 | g) + (1 | h)", toy)
    assert [t.group for t in frame.terms] == ["g", "h"]
    assert all(list(t.Z.columns) == ["(Intercept)"] for t in frame.terms)


@pytest.mark.parametrize("left", ["0 + x", "x - 1", "-1 + x", "x + 0"])
def test_slope_without_intercept(toy, left):
    frame = parse_formula(f"y ~ x + ({left} | g)", toy)
    assert list(frame.terms[0].Z.columns) == ["x"]


def test_double_bar_flags_a_diagonal_term(toy):
    frame = parse_formula("y ~ x + (x || g)", toy)
    (term,) = frame.terms
    assert term.diagonal and list(term.Z.columns) == ["(Intercept)", "x"]
    assert frame.estimator_params()["cov_type"] == "diagonal"


@pytest.mark.parametrize("rhs, fit_intercept", [
    ("0 + x + (1 | g)", False), ("x - 1 + (1 | g)", False), ("-1 + x + (1 | g)", False),
    ("(1 | g) + x - 1", False), ("x + (1 | g)", True), ("1 + x + (1 | g)", True),
])
def test_fixed_intercept_removal(toy, rhs, fit_intercept):
    frame = parse_formula(f"y ~ {rhs}", toy)
    assert frame.fit_intercept is fit_intercept
    assert list(frame.X.columns) == ["x"]


def test_intercept_only_fixed_part(toy):
    for formula in ("y ~ (1 | g)", "y ~ 1 + (1 | g)"):
        frame = parse_formula(formula, toy)
        assert frame.X.shape == (60, 0) and frame.fit_intercept
        # the estimator needs one column: an explicit intercept, fit_intercept off
        args = frame.fit_arguments()
        assert list(args["X"].columns) == ["(Intercept)"]
        np.testing.assert_array_equal(args["X"]["(Intercept)"], 1.0)
        assert frame.estimator_params()["fit_intercept"] is False


def test_interactions(toy):
    assert list(parse_formula("y ~ x*z + (1 | g)", toy).X.columns) == ["x", "z", "x:z"]
    frame = parse_formula("y ~ x:z + (1 | g)", toy)
    assert list(frame.X.columns) == ["x:z"]
    np.testing.assert_allclose(frame.X["x:z"], toy["x"] * toy["z"])


def test_categorical_columns_get_lme4_names(toy):
    frame = parse_formula("y ~ x * f + (1 | g)", toy)
    assert list(frame.X.columns) == ["x", "fB", "fC", "x:fB", "x:fC"]
    np.testing.assert_array_equal(frame.X["fB"], (toy["f"] == "B").astype(float))
    np.testing.assert_allclose(frame.X["x:fC"], toy["x"] * (toy["f"] == "C"))
    full = parse_formula("y ~ 0 + f + (1 | g)", toy)
    assert list(full.X.columns) == ["fA", "fB", "fC"]  # full dummy coding, as R's 0 + f


def test_categorical_order_sets_the_reference_level(toy):
    data = toy.assign(f=pd.Categorical(toy["f"], categories=["C", "A", "B"]))
    assert list(parse_formula("y ~ f + (1 | g)", data).X.columns) == ["fA", "fB"]


def test_categorical_in_random_part(toy):
    frame = parse_formula("y ~ f + (f | h)", toy)
    assert list(frame.terms[0].Z.columns) == ["(Intercept)", "fB", "fC"]


def test_transformations_and_context_variables(toy):
    # columns named as R deparses the expressions (lme4 writes I(x^2) for I(x ** 2))
    frame = parse_formula("y ~ np.log(z) + I(x ** 2) + (np.log(z) | g)", toy)
    np.testing.assert_allclose(frame.X["np.log(z)"], np.log(toy["z"]))
    np.testing.assert_allclose(frame.X["I(x^2)"], toy["x"] ** 2)
    assert list(frame.terms[0].Z.columns) == ["(Intercept)", "np.log(z)"]

    # the caller's variables are not looked up; numbers come through context=
    shift = 100.0
    with pytest.raises(ValueError, match=r"\['shift'\], which are not columns"):
        parse_formula("y ~ I(x + shift) + (1 | g)", toy)
    frame = parse_formula("y ~ I(x + shift) + (1 | g)", toy, context={"shift": shift})
    np.testing.assert_allclose(frame.X["I(x + shift)"], toy["x"] + 100.0)


def test_pi_is_rs_constant_unless_the_data_have_it(toy):
    """``sin(2*pi*x)`` as nlme's and lme4's seasonal terms write it: the column is named as R
    deparses it (``sin(2 * pi * x)``); a column or context value called ``pi`` wins, as the
    data come before R's base environment in ``model.frame``."""
    frame = parse_formula("y ~ sin(2*pi*x) + I(x/pi) + (1 | g)", toy)
    assert list(frame.X.columns) == ["sin(2 * pi * x)", "I(x/pi)"]
    np.testing.assert_allclose(frame.X["sin(2 * pi * x)"], np.sin(2 * np.pi * toy["x"]), rtol=1e-15)
    np.testing.assert_allclose(frame.X["I(x/pi)"], toy["x"] / np.pi, rtol=1e-15)
    frame = parse_formula("y ~ sin(2*pi*x) + (1 | g)", toy.assign(pi=0.25))
    np.testing.assert_allclose(frame.X["sin(2 * pi * x)"], np.sin(0.5 * toy["x"]), rtol=1e-15)
    frame = parse_formula("y ~ sin(2*pi*x) + (1 | g)", toy, context={"pi": 0.25})
    np.testing.assert_allclose(frame.X["sin(2 * pi * x)"], np.sin(0.5 * toy["x"]), rtol=1e-15)
    new = frame.new_data(toy.head(3))["X"]
    np.testing.assert_allclose(new["sin(2 * pi * x)"], np.sin(0.5 * toy["x"].head(3)), rtol=1e-15)
    with pytest.raises(ValueError, match="'pi' is not an allowed function"):
        parse_formula("y ~ pi(x) + (1 | g)", toy)


def test_backticked_grouping_factor(toy):
    frame = parse_formula("y ~ x + (1 | `my group`)", toy)
    assert frame.terms[0].group == "my group" and frame.terms[0].labels.nunique() == 3


def test_new_data_keeps_the_fitted_levels():
    df = _orthodont_lme4_levels()
    est = lmer("distance ~ age * Sex + (age | Subject)", df, reml=False)
    boys = df[df["Sex"] == "Male"].head(6)
    args = est.model_frame_.new_data(boys)
    assert list(args["X"].columns) == ["age", "SexFemale", "age:SexFemale"]
    np.testing.assert_array_equal(args["X"]["SexFemale"], 0.0)
    ref = single_factor_arrays("orthodont_slopes_ml")
    np.testing.assert_allclose(est.predict(**args), ref["fitted"][boys.index], rtol=1e-6)


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("formula, message", [
    ("y ~ x + (x | g", "unbalanced parentheses"),
    ("y ~ x + x | g)", "unbalanced parentheses"),
    ("y ~ x + (x | g]", "mismatched brackets"),
    ("y ~ x + (x | )", "no grouping factor"),
    ("y ~ x + (x || )", "no grouping factor"),
    ("y ~ x + ( | g)", "nothing left of the bar"),
    ("y ~ x + (1 | g | h)", "more than one bar"),
    ("y ~ x + (1 | g + h)", "must be a column name"),
    ("y ~ x*(1 | g)", "added on its own"),
    ("y ~ x + 1 | g", "added on its own"),
    ("y ~ x - (1 | g)", "cannot be subtracted"),
    ("y ~ x", "no random-effects term"),
    ("y ~ x ~ z + (1 | g)", "response ~ terms"),
    ("~ x + (1 | g)", "response ~ terms"),
    ("x + (1 | g)", "response ~ terms"),
    ("y ~ ", "nothing right of"),
    ("y ~ x + + (1 | g)", "empty term"),
    ("y ~ x + (1 | nosuch)", r"\['nosuch'\].*not columns"),
    ("y ~ nosuch + (1 | g)", r"\['nosuch'\].*not columns"),
    ("y ~ x + (nosuch | g)", r"\['nosuch'\].*not columns"),
    ("nosuch ~ x + (1 | g)", r"\['nosuch'\].*not columns"),
    ("y ~ x + (1 | g/nosuch)", r"\['nosuch'\].*not columns"),
    ("y ~ x + (0 | g)", "has no columns"),
    ("f ~ x + (1 | g)", "one numeric column"),
])
def test_malformed_formulas_raise_value_error(toy, formula, message):
    with pytest.raises(ValueError, match=message):
        parse_formula(formula, toy)


def test_wrong_argument_types(toy):
    with pytest.raises(TypeError, match="formula must be a string"):
        parse_formula(["y ~ x + (1 | g)"], toy)
    with pytest.raises(TypeError, match="DataFrame"):
        parse_formula("y ~ x + (1 | g)", toy.to_dict())


def test_missing_formulaic_names_the_install(monkeypatch, toy):
    monkeypatch.setitem(sys.modules, "formulaic", None)  # makes `import formulaic` fail
    with pytest.raises(ImportError, match="pip install formulaic"):
        parse_formula("y ~ x + (1 | g)", toy)


def test_docstring_examples():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        results = [doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
                   for module in _formula_modules()]
    assert sum(r.attempted for r in results) >= 5
    assert sum(r.failed for r in results) == 0


def _formula_modules() -> list:
    """The formula subpackage and each of its modules."""
    import importlib
    import pkgutil

    names = [info.name for info in pkgutil.iter_modules(formula_module.__path__)]
    return [formula_module] + [importlib.import_module(f"{formula_module.__name__}.{n}") for n in names]


def test_insteval_crossed_from_the_raw_data():
    from mixedlm_sklearn.datasets import load_insteval

    _, ref = load_case("insteval_crossed_reml")
    est = lmer("y ~ service + (1 | s) + (1 | d) + (1 | dept)", load_insteval())
    assert abs(est.llf_ - ref["llf"]) < 1e-6
    assert list(est.fe_params_.index) == ref["x_names"]  # lme4's "service1"
    np.testing.assert_allclose(est.fe_params_.to_numpy(), ref["fe_params"], rtol=1e-6)
    for term in ref["terms"]:
        np.testing.assert_allclose(est.cov_re_[term["vc_key"]], term["cov_re"], rtol=1e-3)


def test_lme4_argument_spellings():
    """lmer takes lme4's REML= (or reml=), answers lme4-only arguments with the Python
    spelling, and conf_int's method takes R's "Wald"."""
    df = load_sleepstudy()
    ml = lmer("Reaction ~ Days + (Days | Subject)", df, REML=False)
    assert ml.reml is False and ml.llf_ == pytest.approx(
        lmer("Reaction ~ Days + (Days | Subject)", df, reml=False).llf_, abs=1e-12)
    assert lmer("Reaction ~ Days + (1 | Subject)", df, False).reml is False  # positional, as R
    with pytest.raises(TypeError, match="not both"):
        lmer("Reaction ~ Days + (1 | Subject)", df, REML=False, reml=False)
    with pytest.raises(TypeError, match="data\\[rows\\]"):
        lmer("Reaction ~ Days + (1 | Subject)", df, subset=df["Days"] > 1)
    pd.testing.assert_frame_equal(ml.conf_int(method="Wald"), ml.conf_int(method="wald"))
    with pytest.raises(ValueError, match="'wald' \\(R: 'Wald'\\)"):
        ml.conf_int(method="normal")
