"""Group labels: every integer dtype, one canonical form across chunks and Dask
partitions, and a warning when predict's labels changed type."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import fit_with

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn._validation import encode_groups
from mixedlm_sklearn.datasets import load_sleepstudy


@pytest.fixture(scope="module")
def sleep():
    df = load_sleepstudy()
    return df, np.column_stack([np.ones(len(df)), df["Days"]])


# ---- integer labels of every dtype -------------------------------------------------------------

# Ids chosen to span a range narrower than 4 rows per id, where the counting fast path runs.
INTEGER_IDS = {
    "int8 -100..99": np.array([-100, -60, -1, 0, 57, 99], dtype=np.int8),
    "int16 +-20000": np.array([-20000, -7, 0, 3, 11000, 20000], dtype=np.int16),
    "uint8 up to 255": np.array([0, 3, 100, 200, 254, 255], dtype=np.uint8),
    "uint64 >= 2**63": np.uint64(2**63) + np.array([0, 1, 5, 6, 9, 11], dtype=np.uint64),
    "uint64 near 2**64": np.array([2**64 - 1, 2**64 - 7, 2**64 - 3, 2**64 - 2, 2**64 - 11,
                                   2**64 - 4], dtype=np.uint64),
    "int64 near -2**63": np.int64(-(2**63)) + np.array([0, 1, 2, 3, 5, 8], dtype=np.int64),
}


def _rows(ids: np.ndarray, n: int) -> np.ndarray:
    """n rows of the six ids, 10 each, padded with a large block of the first so that the
    counting path (range < 4 * rows) is taken even for the int16 range."""
    return np.repeat(ids, n // ids.size)


@pytest.mark.parametrize("kind", list(INTEGER_IDS))
def test_encode_groups_takes_every_integer_dtype(kind):
    ids = INTEGER_IDS[kind]
    rows = np.tile(ids, 10_000)  # 60,000 rows: even +-20000 is a dense range
    codes, labels = encode_groups(rows, rows.size)
    order = np.argsort(ids.astype(object))
    assert [int(v) for v in labels] == [int(v) for v in ids[order]]
    np.testing.assert_array_equal(codes[: ids.size], np.argsort(order))


@pytest.mark.parametrize("kind", list(INTEGER_IDS))
def test_integer_label_dtypes_do_not_change_the_fit(data, kind):
    X, y, groups, Z = data
    ref = fit_with(X, y, groups=groups, Z=Z)
    est = fit_with(X, y, groups=INTEGER_IDS[kind][groups], Z=Z)
    assert est.llf_ == pytest.approx(ref.llf_, rel=1e-12)
    # est's rows follow the sorted ids, ref's the codes 0..5
    in_est_order = ref.random_effects_.to_numpy()[np.argsort(INTEGER_IDS[kind].astype(object))]
    np.testing.assert_allclose(est.random_effects_.to_numpy(), in_est_order, rtol=1e-9, atol=1e-12)
    # predict finds the groups by value, whatever integer type the new labels have
    new = INTEGER_IDS[kind][groups].astype(object)
    np.testing.assert_allclose(est.predict(X, groups=new, Z=Z), ref.predict(X, groups=groups, Z=Z))


def test_residual_groups_of_small_integer_dtype(data):
    X, y, groups, Z = data
    strata = np.tile(np.array([-100, 99], dtype=np.int8), len(y) // 2)
    ref = fit_with(X, y, groups=groups, Z=Z, residual_groups=np.tile([0, 1], len(y) // 2))
    est = fit_with(X, y, groups=groups, Z=Z, residual_groups=strata)
    assert est.llf_ == pytest.approx(ref.llf_, rel=1e-12)
    assert list(est.residual_var_) == [-100, 99]


def test_chunk_labels_of_small_integer_dtype(data):
    X, y, groups, _ = data
    frame = X.assign(y=y, g=INTEGER_IDS["int8 -100..99"][groups])
    # 55 rows over a range of 199 ids: the counting path
    est = MixedLMRegressor().fit_chunks([frame.iloc[:55], frame.iloc[55:]], y="y", groups="g",
                                        X=["a", "b"])
    ref = fit_with(X, y, groups=groups)
    assert est.llf_ == pytest.approx(ref.llf_, rel=1e-10)


# ---- one canonical form across chunks and partitions -------------------------------------------

def _csv_with_one_text_id(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """sleepstudy as CSV where the last subject has a non-numeric id: read in chunks, the
    last chunk's ids are strings and the others' int64."""
    d = df.copy()
    d["Subject"] = d["Subject"].astype(str)
    d.loc[d["Subject"] == "372", "Subject"] = "x372"
    return d.to_csv(index=False), d


def test_read_csv_chunks_with_int_and_str_ids_keep_one_group_per_subject(sleep):
    df, _ = sleep
    csv, as_text = _csv_with_one_text_id(df)
    chunks = list(pd.read_csv(io.StringIO(csv), chunksize=45))
    integer = [pd.api.types.is_integer_dtype(c["Subject"]) for c in chunks]
    assert integer == [True, True, True, False]  # the situation of the issue
    # chunk 3 starts mid-subject: subject 369's rows are int in chunk 2 and str in chunk 3
    assert set(chunks[2]["Subject"]) & {int(s) for s in chunks[3]["Subject"] if s.isdigit()}
    est = MixedLMRegressor().fit_chunks(iter(chunks), y="Reaction", groups="Subject", X=["Days"],
                                        Z=["(Intercept)", "Days"])
    ref = MixedLMRegressor().fit(as_text[["Days"]], as_text["Reaction"], groups=as_text["Subject"],
                                 Z=np.column_stack([np.ones(len(df)), df["Days"]]))
    assert est.n_groups_ == 18
    assert sorted(est.groups_) == sorted(ref.groups_)
    assert est.llf_ == pytest.approx(ref.llf_, abs=1e-7)
    np.testing.assert_allclose(est.random_effects_.sort_index().to_numpy(),
                               ref.random_effects_.sort_index().to_numpy(), atol=1e-5)


def test_dask_partitions_with_int_and_str_ids_keep_one_group_per_subject(sleep):
    dd = pytest.importorskip("dask.dataframe")
    df, _ = sleep
    csv, as_text = _csv_with_one_text_id(df)
    parts = [c for c in pd.read_csv(io.StringIO(csv), chunksize=45)]
    delayed = __import__("dask").delayed
    # partitions whose id column has different dtypes (dask would refuse them by default)
    ddf = dd.from_delayed([delayed(p) for p in parts], meta=parts[3].iloc[:0], verify_meta=False)
    est = MixedLMRegressor().fit(ddf[["Days"]], ddf["Reaction"], groups=ddf["Subject"])
    ref = MixedLMRegressor().fit(as_text[["Days"]], as_text["Reaction"], groups=as_text["Subject"])
    assert est.n_groups_ == 18
    assert est.llf_ == pytest.approx(ref.llf_, abs=1e-7)


def test_ambiguous_integer_text_across_chunks_is_refused(data):
    X, y, groups, _ = data
    frame = X.assign(y=y, g=groups)
    text = frame.assign(g=[f"0{g}" for g in groups])  # "03" may or may not be group 3
    with pytest.raises(ValueError, match=r"(?s)integers in some rows.*\['03', '04', '05'\].*dtype="):
        MixedLMRegressor().fit_chunks([frame.iloc[:30], text.iloc[30:]], y="y", groups="g", X=["a"])


def test_canonical_rule():
    from mixedlm_sklearn._validation import canonical_labels

    ints = np.array([7, np.int16(22), 5], dtype=object)
    text = np.array(["22", "x", "-3"], dtype=object)
    a, b = canonical_labels([ints, text])
    assert a.tolist() == ["7", "22", "5"] and b.tolist() == ["22", "x", "-3"]
    # one kind (or kinds that compare by value): unchanged, the same objects
    same = [np.array([1, 2], dtype=object), np.array([2.0, 3.5], dtype=object)]
    assert all(p is q for p, q in zip(canonical_labels(same), same))
    with pytest.raises(ValueError, match="ambiguous"):
        canonical_labels([ints, np.array(["+22"], dtype=object)])


def test_in_memory_labels_mixing_int_and_str_are_one_group(data):
    X, y, groups, Z = data
    mixed = groups.astype(object)
    mixed[::2] = [str(g) for g in groups[::2]]  # half the rows of every group as text
    ref = fit_with(X, y, groups=groups.astype(str), Z=Z)
    est = fit_with(X, y, groups=mixed, Z=Z)
    assert est.n_groups_ == 6
    assert est.llf_ == pytest.approx(ref.llf_, rel=1e-12)


# ---- predict with labels of another type --------------------------------------------------------

def test_predict_warns_with_the_count_when_some_labels_changed_type(sleep):
    df, Z = sleep
    ints = df["Subject"].astype(int)
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=ints, Z=Z)
    half = ints.astype(object).copy()
    half.iloc[::2] = half.iloc[::2].astype(str)
    with pytest.warns(UserWarning, match=r"90 of 180 rows have groups labels not seen in fit, of "
                                         r"another type \(string"):
        pred = est.predict(df[["Days"]], groups=half, Z=Z)
    population = est.predict(df[["Days"]])
    np.testing.assert_allclose(pred[::2], population[::2])  # what the warning is about
    np.testing.assert_allclose(pred[1::2], est.predict(df[["Days"]], groups=ints, Z=Z)[1::2])
    with pytest.warns(UserWarning, match="90 of 180 rows"):
        est.score(df[["Days"]], df["Reaction"], groups=half, Z=Z)


def test_new_groups_of_the_fitted_type_do_not_warn(sleep):
    df, Z = sleep
    ints = df["Subject"].astype(int)
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=ints, Z=Z)
    new = ints.copy()
    new.iloc[:20] = 9999  # a new subject: population predictions, as documented
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = est.predict(df[["Days"]], groups=new, Z=Z)
    np.testing.assert_allclose(pred[:20], est.predict(df[["Days"]].iloc[:20]))


def test_predict_with_several_factors_warns_per_factor():
    rng = np.random.default_rng(5)
    n = 240
    a, b = np.repeat(np.arange(12), 20), np.tile(np.arange(8), 30)
    y = rng.standard_normal(12)[a] + rng.standard_normal(8)[b] + rng.standard_normal(n)
    X = pd.DataFrame({"x": rng.standard_normal(n)})
    est = MixedLMRegressor().fit(X, y + X["x"], groups=pd.DataFrame({"a": a, "b": b}))
    b_text = b.astype(object)
    b_text[:30] = [str(v) for v in b[:30]]
    with pytest.warns(UserWarning, match=r"30 of 240 rows have groups\['b'\] labels"):
        pred = est.predict(X, groups=pd.DataFrame({"a": a, "b": b_text}))
    full = est.predict(X, groups=pd.DataFrame({"a": a, "b": b}))
    blup_b = est.random_effects_["b"].to_numpy()[b[:30], 0]
    np.testing.assert_allclose(pred[:30], full[:30] - blup_b)
