"""The reference helpers turn R's JSON into arrays of the documented shapes."""

import numpy as np
import pytest
from _reference import (
    CROSSED_CASES,
    FAMILY_CASES,
    JSON_ONLY_CASES,
    NESTED_VARIDENT_CASES,
    PRODUCT_CASES,
    PRODUCT_COPIED_CASES,
    PRODUCT_DATA,
    PRODUCT_DIR,
    REFERENCE_DIR,
    SINGLE_FACTOR_CASES,
    STRUCTURE_CASES,
    STRUCTURE_INFERENCE_FILES,
    VARIDENT_CASES,
    VARIDENT_CORRELATED_CASES,
    VARIDENT_CORRELATED_FILES,
    load_case,
    product_data,
    product_reference,
    r_table,
    reference_path,
    single_factor_arrays,
)


def test_case_lists_cover_every_reference_file():
    cases = SINGLE_FACTOR_CASES + CROSSED_CASES + VARIDENT_CASES + NESTED_VARIDENT_CASES
    assert len(set(cases)) == len(cases)
    expected = {f"{case}.{ext}" for case in cases for ext in ("csv", "json")}
    expected |= {f"{case}.json" for case in JSON_ONLY_CASES}
    expected |= {"lrt.json", "extras", "inference_tables", "product"}  # the last two: R scripts
    expected |= {"structures"}  # STRUCTURE_CASES and FAMILY_CASES
    assert {path.name for path in REFERENCE_DIR.iterdir()} == expected
    structures = {f"{case}.{ext}" for case in STRUCTURE_CASES + FAMILY_CASES for ext in ("csv", "json")}
    structures |= set(STRUCTURE_INFERENCE_FILES)
    structures |= {f"{case}.json" for case in VARIDENT_CORRELATED_CASES}
    structures |= set(VARIDENT_CORRELATED_FILES)
    assert {path.name for path in (REFERENCE_DIR / "structures").iterdir()} == structures


def test_reference_path_rejects_unknown_file():
    with pytest.raises(FileNotFoundError):
        reference_path("no_such_case.json")


def test_q1_p1_case_unboxes_scalars():
    # dyestuff2: p = q = 1, so R wrote bare numbers, and a singular fit.
    case = single_factor_arrays("dyestuff2_singular_reml")
    n, m = 30, 6
    assert case["X"].shape == (n, 1)
    assert case["Z"].shape == (n, 1)
    assert case["y"].shape == (n,)
    assert case["groups"].shape == (n,)
    assert case["groups"].dtype == object
    assert all(isinstance(label, str) for label in case["groups"])
    for key in ("fe_params", "bse_fe", "t_values", "satterthwaite_df", "satterthwaite_p"):
        assert case[key].shape == (1,), key
    assert case["fe_params"][0] == 5.6656
    assert case["wald_ci_fe"]["lower"].shape == (1,)
    assert case["cov_re"].shape == (1, 1)
    assert case["cov_re"][0, 0] == 0.0
    assert case["ranef"].shape == (m, 1)
    assert list(case["ranef"].index) == list("ABCDEF")
    assert list(case["ranef"].columns) == ["(Intercept)"]
    assert (case["ranef"].to_numpy() == 0.0).all()
    assert case["ranef_condvar"].shape == (m, 1, 1)
    assert case["fitted"].shape == (n,)
    assert case["x_names"] == ["(Intercept)"]
    assert case["profile_ci"]["lower"].shape == (3,)
    # The raw JSON is kept untouched next to the normalised values.
    assert case["json"]["fe_params"] == 5.6656


def test_q1_p2_case():
    case = single_factor_arrays("sleepstudy_intercept_reml")
    assert case["X"].shape == (180, 2)
    assert case["fe_params"].shape == (2,)
    assert case["cov_re"].shape == (1, 1)
    assert case["cov_re"][0, 0] == pytest.approx(1378.17853923869)
    assert case["ranef"].shape == (18, 1)
    assert case["ranef"].loc["308", "(Intercept)"] == pytest.approx(40.7837098934643)
    assert case["ranef_condvar"].shape == (18, 1, 1)
    assert case["ranef_condvar"][0, 0, 0] == pytest.approx(89.788286260176)


def test_q2_case():
    case = single_factor_arrays("sleepstudy_slopes_reml")
    assert case["X"].shape == (180, 2)
    assert case["Z"].shape == (180, 2)
    np.testing.assert_array_equal(case["Z"][:, 1], case["X"][:, 1])  # Days in both
    assert case["cov_re"].shape == (2, 2)
    np.testing.assert_allclose(
        case["cov_re"],
        [[612.089746819563, 9.60433412009733], [9.60433412009733, 35.0716625139281]],
        rtol=1e-15,
    )
    assert case["ranef"].shape == (18, 2)
    assert list(case["ranef"].columns) == ["(Intercept)", "Days"]
    assert case["ranef"].index.name == "Subject"
    np.testing.assert_allclose(
        case["ranef"].loc["309"], [-40.3985768564895, -8.61970319060992], rtol=1e-15
    )
    assert case["ranef_condvar"].shape == (18, 2, 2)
    np.testing.assert_allclose(
        case["ranef_condvar"][0],
        [[145.705094430851, -21.4444252275531], [-21.4444252275531, 5.3122735145934]],
        rtol=1e-15,
    )


@pytest.mark.parametrize("name", SINGLE_FACTOR_CASES)
def test_normalised_case_reproduces_r_fitted_values(name):
    # X beta + Z_i b_i must give lme4's conditional fitted values: this fails
    # if BLUP rows, labels or columns were paired up wrongly.
    case = single_factor_arrays(name)
    assert sorted(case["ranef"].index) == sorted(set(case["groups"]))
    blups = case["ranef"].loc[case["groups"]].to_numpy()
    fitted = case["X"] @ case["fe_params"] + np.sum(case["Z"] * blups, axis=1)
    np.testing.assert_allclose(fitted, case["fitted"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        case["fe_params"] / case["bse_fe"], case["t_values"], rtol=1e-9
    )


@pytest.mark.parametrize("name", CROSSED_CASES + VARIDENT_CASES)
def test_label_columns_are_strings(name):
    frame, answers = load_case(name)
    label_columns = [c for c in frame.columns if c in ("group", "stratum") or c[:1] == "g"]
    assert label_columns
    for column in label_columns:
        assert all(isinstance(value, str) for value in frame[column])
    assert len(frame) == answers["n"]


def test_product_directory_holds_the_listed_references():
    expected = {f"{name}.json" for name in PRODUCT_CASES + PRODUCT_COPIED_CASES}
    expected |= {f"{name}.csv" for name in PRODUCT_DATA}
    expected |= {"make_product_refs.R", "make_many_counts_refs.R", "README.md"}
    assert {path.name for path in PRODUCT_DIR.iterdir()} == expected


# Keys that identify a reference rather than hold an answer.
_IDENTIFICATION = {"name", "formula", "versions", "data_note", "controls", "note"}


@pytest.mark.parametrize("name", PRODUCT_CASES + PRODUCT_COPIED_CASES)
def test_product_reference_loads_with_its_note(name):
    answers = product_reference(name)
    assert answers["versions"]["lme4"] == "1.1.31"
    assert isinstance(answers["note"], dict) and answers["note"]
    assert all(isinstance(text, str) and text for text in answers["note"].values())
    if name in PRODUCT_CASES:
        # make_product_refs.R writes the R call behind every answer
        assert answers["name"] == name
        assert answers["formula"]
        assert set(answers) - _IDENTIFICATION <= set(answers["note"])


def test_product_reference_rejects_unknown_name():
    with pytest.raises(ValueError, match="not a product reference"):
        product_reference("no_such_reference")


def test_r_table_builds_frames_with_row_names_and_missing_values():
    answers = product_reference("model_selection")
    anova = r_table({k: v for k, v in answers["anova"].items()
                     if k not in ("heading", "messages", "text")})
    assert list(anova.index) == ["m0", "m1", "m2"]
    assert anova["npar"].tolist() == [3, 4, 6]
    assert np.isnan(anova.loc["m0", "Chisq"]) and anova.loc["m1", "Chisq"] > 0
    # a by-table without meaningful row names: one row per (Variety, contrast)
    pairs = r_table(product_reference("emmeans_oats")["pairwise_N_by_Variety"]["contrasts"]["table"])
    assert pairs.shape[0] == 18
    assert pairs.groupby("Variety").size().tolist() == [6, 6, 6]
    with pytest.raises(ValueError, match="different lengths"):
        r_table({"a": [1, 2], "b": [1]})


def test_product_data_keeps_labels_as_strings():
    oats = product_data("oats")
    assert len(oats) == 72
    assert sorted(oats["N"].unique()) == ["0", "0.2", "0.4", "0.6"]
    assert (oats["N"].astype(float) == oats["nitro"]).all()
    many = product_data("many_responses")
    assert many.shape == (200, 24)
    assert many["y15"].isna().sum() == 40 and many["y05"].isna().sum() == 20
    assert many["donor"].nunique() == 40 and many["batch"].nunique() == 4
    # fitted row counts agree with the data's missing values
    fits = product_reference("many_responses")["fits_reml"]
    assert [fits[c]["n_obs"] for c in ("y01", "y05", "y15")] == [200, 180, 160]
