"""The bundled data sets load with the right shapes, types and values."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _reference import load_case

from mixedlm_sklearn import datasets


def assert_labels(column: pd.Series) -> None:
    assert pd.api.types.is_string_dtype(column.dtype)
    assert all(isinstance(value, str) for value in column)


def test_sleepstudy():
    frame = datasets.load_sleepstudy()
    assert frame.shape == (180, 3)
    assert list(frame.columns) == ["Reaction", "Days", "Subject"]
    assert_labels(frame["Subject"])
    assert frame["Subject"].iloc[0] == "308"
    assert (frame["Subject"].value_counts() == 10).all()
    assert frame["Subject"].nunique() == 18
    assert pd.api.types.is_integer_dtype(frame["Days"])
    assert sorted(frame["Days"].unique()) == list(range(10))
    assert frame["Reaction"].dtype == np.float64
    assert frame["Reaction"].iloc[0] == 249.56
    assert frame["Reaction"].sum() == pytest.approx(53731.4205, abs=1e-6)


def test_dietox():
    frame = datasets.load_dietox()
    assert frame.shape == (861, 8)
    assert list(frame.columns) == [
        "Pig", "Evit", "Cu", "Litter", "Start", "Weight", "Feed", "Time"
    ]
    for column in ("Pig", "Evit", "Cu", "Litter"):
        assert_labels(frame[column])
    assert frame["Pig"].iloc[0] == "4601"
    assert frame["Pig"].nunique() == 72
    assert set(frame["Evit"]) == {"Evit000", "Evit100", "Evit200"}
    assert set(frame["Cu"]) == {"Cu000", "Cu035", "Cu175"}
    for column in ("Start", "Weight", "Feed"):
        assert frame[column].dtype == np.float64
    assert pd.api.types.is_integer_dtype(frame["Time"])
    # The first week has no cumulated feed: one NaN per pig, nowhere else.
    missing = frame["Feed"].isna()
    assert missing.sum() == 72
    assert (frame.loc[missing, "Time"] == 1).all()
    assert frame["Weight"].sum() == pytest.approx(52284.88677, abs=1e-6)


def test_penicillin():
    frame = datasets.load_penicillin()
    assert frame.shape == (144, 3)
    assert list(frame.columns) == ["diameter", "plate", "sample"]
    assert_labels(frame["plate"])
    assert_labels(frame["sample"])
    # Fully crossed: every plate meets every sample exactly once.
    assert (pd.crosstab(frame["plate"], frame["sample"]) == 1).all().all()
    assert frame["plate"].nunique() == 24
    assert set(frame["sample"]) == set("ABCDEF")
    assert pd.api.types.is_integer_dtype(frame["diameter"])
    assert frame["diameter"].sum() == 3308


def test_orthodont():
    frame = datasets.load_orthodont()
    assert frame.shape == (108, 4)
    assert list(frame.columns) == ["distance", "age", "Subject", "Sex"]
    assert_labels(frame["Subject"])
    assert_labels(frame["Sex"])
    assert frame["Subject"].nunique() == 27
    assert frame["Sex"].value_counts().to_dict() == {"Male": 64, "Female": 44}
    assert sorted(frame["age"].unique()) == [8, 10, 12, 14]
    assert frame["distance"].dtype == np.float64
    assert frame["distance"].sum() == pytest.approx(2594.5)


def test_insteval():
    frame = datasets.load_insteval()
    assert frame.shape == (73421, 7)
    assert list(frame.columns) == ["s", "d", "studage", "lectage", "service", "dept", "y"]
    for column in ("s", "d", "studage", "lectage", "service", "dept"):
        assert_labels(frame[column])
    assert frame["s"].nunique() == 2972
    assert frame["d"].nunique() == 1128
    assert frame["dept"].nunique() == 14
    assert set(frame["service"]) == {"0", "1"}
    assert set(frame["studage"]) == {"2", "4", "6", "8"}
    assert pd.api.types.is_integer_dtype(frame["y"])
    assert frame["y"].between(1, 5).all()
    assert frame["y"].sum() == 235369


def test_loaders_return_independent_frames():
    first = datasets.load_sleepstudy()
    first.loc[0, "Reaction"] = -1.0
    assert datasets.load_sleepstudy().loc[0, "Reaction"] == 249.56


def test_ovary_and_bodyweight_are_the_correlation_references_data():
    # the nlme references of correlated residuals were fitted to these rows
    ref_dir = Path(__file__).resolve().parents[1] / "data" / "reference" / "structures"
    for frame, name, labels in ((datasets.load_ovary(), "ovary_ar1_reml", ["Mare"]),
                                (datasets.load_bodyweight(), "bodyweight_car1_reml", ["Rat", "Diet"])):
        reference = pd.read_csv(ref_dir / f"{name}.csv", dtype=dict.fromkeys(labels, str))
        pd.testing.assert_frame_equal(frame, reference)
        for column in labels:
            assert_labels(frame[column])
    ovary = datasets.load_ovary()
    assert ovary["Mare"].nunique() == 11
    # visit numbers the rows of a mare in time order
    assert (ovary.groupby("Mare")["Time"].apply(lambda t: t.is_monotonic_increasing)).all()
    assert (ovary.groupby("Mare")["visit"].apply(lambda v: list(v) == list(range(1, len(v) + 1)))).all()
    bodyweight = datasets.load_bodyweight()
    assert bodyweight["Rat"].nunique() == 16
    assert sorted(bodyweight["Time"].unique()) == [1, 8, 15, 22, 29, 36, 43, 44, 50, 57, 64]


@pytest.mark.parametrize(
    ("loader", "case", "response", "group"),
    [
        (datasets.load_sleepstudy, "sleepstudy_slopes_reml", "Reaction", "Subject"),
        (datasets.load_dietox, "dietox_slopes_reml", "Weight", "Pig"),
        (datasets.load_orthodont, "orthodont_slopes_ml", "distance", "Subject"),
    ],
)
def test_bundled_data_match_reference_fits(loader, case, response, group):
    # The reference fits were made on these data in this row order, so tests
    # may fit a loaded data set and compare with them directly.
    frame = loader()
    reference, _ = load_case(case)
    np.testing.assert_array_equal(frame[response].to_numpy(), reference["y"].to_numpy())
    np.testing.assert_array_equal(frame[group].to_numpy(), reference["group"].to_numpy())


def test_insteval_matches_crossed_reference():
    frame = datasets.load_insteval()
    reference, _ = load_case("insteval_crossed_reml")
    np.testing.assert_array_equal(frame["y"].to_numpy(), reference["y"].to_numpy())
    for term, column in (("g1", "s"), ("g2", "d"), ("g3", "dept")):
        np.testing.assert_array_equal(frame[column].to_numpy(), reference[term].to_numpy())
    np.testing.assert_array_equal(
        (frame["service"] == "1").to_numpy(dtype=float), reference["X_service1"].to_numpy()
    )


def test_penicillin_matches_crossed_reference():
    frame = datasets.load_penicillin()
    reference, _ = load_case("penicillin_crossed_reml")
    np.testing.assert_array_equal(frame["diameter"].to_numpy(), reference["y"].to_numpy())
    np.testing.assert_array_equal(frame["plate"].to_numpy(), reference["g1"].to_numpy())
    np.testing.assert_array_equal(frame["sample"].to_numpy(), reference["g2"].to_numpy())
