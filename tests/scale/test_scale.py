"""Chunked and Dask fits equal the in-memory fit; no timing here."""

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor


def _synthetic(n=6000, m=300, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"g": rng.integers(0, m, n).astype(str), "x0": rng.standard_normal(n),
                       "x1": rng.standard_normal(n), "x2": rng.standard_normal(n)})
    b = rng.multivariate_normal([0, 0, 0], [[1, .15, -.06], [.15, .25, .015], [-.06, .015, .09]], m)
    codes = df["g"].astype(int).to_numpy()
    df["y"] = (1 + df[["x0", "x1", "x2"]] @ [0.8, -0.5, 0.3] + b[codes, 0] + b[codes, 1] * df["x0"]
               + b[codes, 2] * df["x1"] + rng.standard_normal(n))
    df["w"] = rng.uniform(0.5, 2, n)
    return df


X_COLS, Z_COLS = ["x0", "x1", "x2"], ["(Intercept)", "x0", "x1"]


@pytest.fixture(scope="module")
def data():
    return _synthetic()


@pytest.fixture(scope="module")
def in_memory(data):
    Z = np.column_stack([np.ones(len(data)), data["x0"], data["x1"]])
    return MixedLMRegressor().fit(data[X_COLS], data["y"], groups=data["g"], Z=Z)


def _assert_same_fit(a, b, tol=1e-8):
    assert list(a.groups_) == list(b.groups_)
    np.testing.assert_allclose(a.llf_, b.llf_, rtol=tol)
    np.testing.assert_allclose(a.fe_params_.to_numpy(), b.fe_params_.to_numpy(), rtol=tol)
    np.testing.assert_allclose(a.cov_re_, b.cov_re_, rtol=tol, atol=tol * np.abs(b.cov_re_).max())
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=tol)
    np.testing.assert_allclose(a.random_effects_.to_numpy(), b.random_effects_.to_numpy(),
                               rtol=1e-6, atol=tol * np.abs(b.random_effects_.to_numpy()).max())


def test_chunks_equal_in_memory(data, in_memory):
    shuffled = data.sample(frac=1.0, random_state=1)  # every group spans several chunks
    chunks = (shuffled.iloc[i:i + 700] for i in range(0, len(shuffled), 700))
    est = MixedLMRegressor().fit_chunks(chunks, y="y", groups="g", X=X_COLS, Z=Z_COLS)
    _assert_same_fit(est, in_memory)
    assert list(est.feature_names_in_) == X_COLS and est.n_features_in_ == 3
    np.testing.assert_allclose(est.predict(data[X_COLS]), in_memory.predict(data[X_COLS]), rtol=1e-8)


def test_csv_and_parquet_read_in_chunks(data, in_memory, tmp_path):
    path = tmp_path / "data.csv"
    data.to_csv(path, index=False)
    est = MixedLMRegressor().fit_chunks(pd.read_csv(path, chunksize=1000, dtype={"g": str}),
                                        y="y", groups="g", X=X_COLS, Z=Z_COLS)
    _assert_same_fit(est, in_memory, tol=1e-7)  # CSV round-trips floats to ~1e-16 relative
    pq = pytest.importorskip("pyarrow.parquet")
    ppath = tmp_path / "data.parquet"
    data.to_parquet(ppath, row_group_size=1500)
    batches = (b.to_pandas() for b in pq.ParquetFile(ppath).iter_batches(batch_size=1500))
    est = MixedLMRegressor().fit_chunks(batches, y="y", groups="g", X=X_COLS, Z=Z_COLS)
    _assert_same_fit(est, in_memory)


def test_weighted_chunks_equal_weighted_fit(data):
    Z = np.column_stack([np.ones(len(data)), data["x0"], data["x1"]])
    whole = MixedLMRegressor(reml=False).fit(data[X_COLS], data["y"], groups=data["g"], Z=Z,
                                             sample_weight=data["w"])
    chunks = (data.iloc[i:i + 2000] for i in range(0, len(data), 2000))
    est = MixedLMRegressor(reml=False).fit_chunks(chunks, y="y", groups="g", X=X_COLS, Z=Z_COLS,
                                                  sample_weight="w")
    _assert_same_fit(est, whole)


def test_chunk_errors_name_the_chunk(data):
    bad = data.copy()
    bad.loc[2500, "x1"] = np.nan
    chunks = (bad.iloc[i:i + 1000] for i in range(0, len(bad), 1000))
    with pytest.raises(ValueError, match="chunk 2: Input X contains NaN"):
        MixedLMRegressor().fit_chunks(chunks, y="y", groups="g", X=X_COLS, Z=Z_COLS)
    with pytest.raises(ValueError, match=r"chunk 0 lacks column\(s\) \['x9'\]"):
        MixedLMRegressor().fit_chunks([data], y="y", groups="g", X=["x9"])
    with pytest.raises(ValueError, match="no data"):
        MixedLMRegressor().fit_chunks([], y="y", groups="g", X=X_COLS)


def test_one_dataframe_or_a_dask_dataframe_as_chunks_is_refused_naming_fit(data):
    """Iterating either gives column names ("chunk 0 is a str" before); the GLMM's
    fit_chunks takes a Dask DataFrame, the linear model's takes its columns in fit()."""
    with pytest.raises(TypeError, match="one DataFrame: fit it with fit"):
        MixedLMRegressor().fit_chunks(data, y="y", groups="g", X=X_COLS)
    dd = pytest.importorskip("dask.dataframe")
    with pytest.raises(TypeError, match=r"Dask collection: give its columns to fit\(\)"):
        MixedLMRegressor().fit_chunks(dd.from_pandas(data, npartitions=2), y="y", groups="g", X=X_COLS)


def test_dask_partitions_equal_in_memory(data, in_memory):
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(data.assign(one=1.0), npartitions=5)
    est = MixedLMRegressor().fit(ddf[X_COLS], ddf["y"], groups=ddf["g"], Z=ddf[["one", "x0", "x1"]])
    _assert_same_fit(est, in_memory)


def test_dask_on_a_local_cluster_with_two_workers(data, in_memory):
    dd = pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        ddf = dd.from_pandas(data.assign(one=1.0), npartitions=4)
        est = MixedLMRegressor().fit(ddf[X_COLS], ddf["y"], groups=ddf["g"], Z=ddf[["one", "x0", "x1"]])
    _assert_same_fit(est, in_memory)


def test_verbose_reports_chunks_and_iterations(data, capsys):
    chunks = (data.iloc[i:i + 3000] for i in range(0, len(data), 3000))
    est = MixedLMRegressor(verbose=1).fit_chunks(chunks, y="y", groups="g", X=X_COLS, Z=Z_COLS)
    lines = capsys.readouterr().out.splitlines()
    assert sum("chunk" in line for line in lines) == 2
    deviances = [float(line.rsplit(" ", 1)[1]) for line in lines if ": deviance " in line]
    assert len(deviances) >= 2 and np.all(np.diff(deviances) <= 1e-9)  # monotone
    assert deviances[-1] == pytest.approx(-2 * est.llf_, abs=1e-4)


def test_dask_refuses_what_it_cannot_do(data):
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(data, npartitions=2)
    with pytest.raises(TypeError, match=r"\['sample_weight'\] must be Dask collections"):
        MixedLMRegressor().fit(ddf[X_COLS], ddf["y"], groups=ddf["g"], sample_weight=np.ones(len(data)))


# ---- several factors: InstEval ---------------------------------------------------------

@pytest.fixture(scope="module")
def insteval():
    """InstEval with lme4's service dummy; rows shuffled so that every level spans chunks."""
    from mixedlm_sklearn.datasets import load_insteval

    df = load_insteval()
    df = df.assign(service1=(df["service"] == "1").astype(float), y=df["y"].astype(float))
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


def _assert_same_crossed_fit(a, b, tol=1e-8):
    np.testing.assert_allclose(a.llf_, b.llf_, rtol=tol)
    np.testing.assert_allclose(a.fe_params_.to_numpy(), b.fe_params_.to_numpy(), rtol=tol)
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=tol)
    assert list(a.cov_re_) == list(b.cov_re_)
    for name in b.cov_re_:
        np.testing.assert_allclose(a.cov_re_[name], b.cov_re_[name], rtol=tol)
        assert list(a.random_effects_[name].index) == list(b.random_effects_[name].index)
        ref = b.random_effects_[name].to_numpy()
        np.testing.assert_allclose(a.random_effects_[name].to_numpy(), ref, rtol=1e-6, atol=tol * np.abs(ref).max())


def test_insteval_chunks_and_dask_with_three_crossed_factors_equal_in_memory(insteval):
    """lme4: lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept), InstEval)."""
    from _reference import load_case

    _, ref = load_case("insteval_crossed_reml")
    factors = ["s", "d", "dept"]
    whole = MixedLMRegressor().fit(insteval[["service1"]], insteval["y"], groups=insteval[factors])
    assert whole.llf_ >= ref["llf"] - 1e-6
    chunks = (insteval.iloc[i:i + 10_000] for i in range(0, len(insteval), 10_000))
    est = MixedLMRegressor().fit_chunks(chunks, y="y", groups=factors, X=["service1"])
    _assert_same_crossed_fit(est, whole)
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(insteval[["service1", "y", *factors]], npartitions=4)
    est = MixedLMRegressor().fit(ddf[["service1"]], ddf["y"], groups=ddf[factors])
    _assert_same_crossed_fit(est, whole)
    np.testing.assert_allclose(est.predict(insteval[["service1"]].iloc[:100], groups=insteval[factors].iloc[:100]),
                               whole.predict(insteval[["service1"]].iloc[:100], groups=insteval[factors].iloc[:100]),
                               rtol=1e-8)


def test_chunks_with_several_factors_slopes_and_strata_equal_in_memory():
    """Oats (Block/Variety, a residual variance per Variety), plus a random nitro slope per
    Block given as a Z dict (its correlation lands on 1: a boundary fit, which chunks and
    Dask must reproduce too): chunks of 20 rows, Dask in 3 partitions."""
    from _reference import load_case

    from mixedlm_sklearn import SingularFitWarning

    df, _ = load_case("oats_nested_varident_reml")
    df = df.sample(frac=1.0, random_state=2).reset_index(drop=True).assign(one=1.0)
    X = list(df.filter(regex="^X_").columns)
    Z = {"g1": np.column_stack([np.ones(len(df)), df["X_nitro"]])}
    with pytest.warns(SingularFitWarning):
        whole = MixedLMRegressor(fit_intercept=False).fit(df[X], df["y"], groups=df[["g1", "g2"]], Z=Z,
                                                          residual_groups=df["stratum"])
    assert whole.singular_ and len(whole.residual_var_) == 3
    chunks = (df.iloc[i:i + 20] for i in range(0, len(df), 20))
    with pytest.warns(SingularFitWarning):
        est = MixedLMRegressor(fit_intercept=False).fit_chunks(
            chunks, y="y", groups=["g1", "g2"], X=X, Z={"g1": ["(Intercept)", "X_nitro"]},
            residual_groups="stratum")
    _assert_same_crossed_fit(est, whole)
    assert est.residual_var_ == pytest.approx(whole.residual_var_, rel=1e-8)
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(df, npartitions=3)
    with pytest.warns(SingularFitWarning):
        est = MixedLMRegressor(fit_intercept=False).fit(
            ddf[X], ddf["y"], groups=ddf[["g1", "g2"]], Z={"g1": ddf[["one", "X_nitro"]]},
            residual_groups=ddf["stratum"])
    _assert_same_crossed_fit(est, whole)
    assert est.residual_var_ == pytest.approx(whole.residual_var_, rel=1e-8)
