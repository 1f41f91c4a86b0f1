"""GLMMs from chunks and Dask partitions (fit_chunks): the in-memory fit, to 1e-8.

Each PIRLS step and each gradient is one pass over the chunks adding per-level
cross-products; the oracle is the estimator's fit on the concatenated rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedGLMClassifier, MixedGLMRegressor
from mixedlm_sklearn.datasets import load_cbpp, load_grouseticks, load_verbagg

TOL = 1e-8


def _same_fit(chunked, in_memory) -> None:
    """Log-likelihood, fixed effects and their covariance, theta, random effects."""
    assert abs(chunked.llf_ - in_memory.llf_) < TOL
    assert abs(chunked.intercept_ - in_memory.intercept_) < TOL
    np.testing.assert_allclose(chunked.coef_, in_memory.coef_, rtol=0, atol=TOL)
    np.testing.assert_allclose(chunked.theta_, in_memory.theta_, rtol=0, atol=TOL)
    np.testing.assert_allclose(chunked.cov_fe_, in_memory.cov_fe_, rtol=0, atol=TOL)
    # the GLM deviance is a sum of the rows' deviance residuals (10^2 to 10^3 here): to 1e-8
    # relative. (A negative binomial's depends on theta, which its search ends at to ~1e-10
    # in both fits; their deviance_ then differs by ~1e-8 absolute on 340.)
    assert abs(chunked.deviance_ - in_memory.deviance_) < TOL * max(1.0, abs(in_memory.deviance_))
    re_c, re_m = chunked.random_effects_, in_memory.random_effects_
    if isinstance(re_m, dict):
        for name in re_m:
            pd.testing.assert_frame_equal(re_c[name], re_m[name], check_exact=False, rtol=0, atol=TOL,
                                          check_index_type=False, check_dtype=False)
    else:
        pd.testing.assert_frame_equal(re_c, re_m, check_exact=False, rtol=0, atol=TOL,
                                      check_index_type=False, check_dtype=False)


@pytest.fixture(scope="module")
def cbpp():
    df = load_cbpp()
    df["p"] = df["incidence"] / df["size"]
    return pd.concat([df, pd.get_dummies(df["period"], prefix="period", dtype=float)], axis=1)


CBPP_X = ["period_2", "period_3", "period_4"]


@pytest.fixture(scope="module")
def cbpp_in_memory(cbpp):
    return MixedGLMRegressor(family="binomial").fit(cbpp[CBPP_X], cbpp["p"], groups=cbpp["herd"],
                                                    sample_weight=cbpp["size"])


# ---- binomial with trials, one factor ---------------------------------------------------------


def test_binomial_trials_chunks_splitting_levels_equal_in_memory(cbpp, cbpp_in_memory):
    # chunks of 13 rows: herds (4 rows each, in order) split across chunk boundaries
    chunks = [cbpp.iloc[i:i + 13] for i in range(0, len(cbpp), 13)]
    assert cbpp.iloc[12]["herd"] == cbpp.iloc[13]["herd"]
    est = MixedGLMRegressor(family="binomial").fit_chunks(chunks, y="p", groups="herd", X=CBPP_X,
                                                          sample_weight="size")
    _same_fit(est, cbpp_in_memory)
    # lme4: logLik(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp))
    assert round(est.llf_, 4) == -92.0263


def test_a_callable_source_is_read_afresh_at_every_pass(cbpp, cbpp_in_memory, tmp_path):
    path = tmp_path / "cbpp.csv"
    cbpp.sample(frac=1.0, random_state=0).to_csv(path, index=False)  # levels across chunks
    calls = []

    def chunks():
        calls.append(1)
        return pd.read_csv(path, chunksize=10, dtype={"herd": str})  # labels as in memory

    est = MixedGLMRegressor(family="binomial").fit_chunks(chunks, y="p", groups="herd", X=CBPP_X,
                                                          sample_weight="size")
    _same_fit(est, cbpp_in_memory)
    assert len(calls) > 10  # one reader per pass


def test_predictions_and_wald_intervals_need_no_rows(cbpp, cbpp_in_memory):
    chunks = [cbpp.iloc[i:i + 20] for i in range(0, len(cbpp), 20)]
    est = MixedGLMRegressor(family="binomial").fit_chunks(chunks, y="p", groups="herd", X=CBPP_X,
                                                          sample_weight="size")
    new = cbpp.iloc[::3]
    np.testing.assert_allclose(est.predict(new[CBPP_X], groups=new["herd"]),
                               cbpp_in_memory.predict(new[CBPP_X], groups=new["herd"]), atol=TOL)
    a = est.conf_int(method="wald").to_numpy(dtype=float)
    b = cbpp_in_memory.conf_int(method="wald").to_numpy(dtype=float)
    np.testing.assert_allclose(a, b, atol=TOL)
    assert "binomial" in str(est.summary())


def test_profile_intervals_and_r2_from_passes_equal_in_memory(cbpp, cbpp_in_memory):
    # profiles refit with held parameters (passes over the chunks); R2 reads the rows'
    # moments in one pass
    chunks = [cbpp.iloc[i:i + 20] for i in range(0, len(cbpp), 20)]
    est = MixedGLMRegressor(family="binomial").fit_chunks(chunks, y="p", groups="herd", X=CBPP_X,
                                                          sample_weight="size")
    np.testing.assert_allclose(est.conf_int(method="profile").to_numpy(dtype=float),
                               cbpp_in_memory.conf_int(method="profile").to_numpy(dtype=float),
                               rtol=0, atol=TOL)
    a, b = est.r2(), cbpp_in_memory.r2()
    assert abs(a.marginal - b.marginal) < TOL and abs(a.conditional - b.conditional) < TOL


# ---- Poisson, crossed factors -------------------------------------------------------------------


@pytest.fixture(scope="module")
def grouse():
    df = load_grouseticks()
    df["y96"] = (df["YEAR"].astype(str) == "96").astype(float)
    df["y97"] = (df["YEAR"].astype(str) == "97").astype(float)
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)


GROUSE_X = ["y96", "y97", "cHEIGHT"]


@pytest.fixture(scope="module")
def grouse_in_memory(grouse):
    return MixedGLMRegressor(family="poisson").fit(
        grouse[GROUSE_X], grouse["TICKS"], groups=grouse[["BROOD", "LOCATION"]])


def test_poisson_crossed_chunks_equal_in_memory(grouse, grouse_in_memory):
    # shuffled rows: every brood and location has rows in several chunks
    chunks = [grouse.iloc[i:i + 150] for i in range(0, len(grouse), 150)]
    est = MixedGLMRegressor(family="poisson").fit_chunks(
        chunks, y="TICKS", groups=["BROOD", "LOCATION"], X=GROUSE_X)
    _same_fit(est, grouse_in_memory)


def test_poisson_crossed_dask_partitions_equal_in_memory(grouse, grouse_in_memory):
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(grouse[["TICKS", "BROOD", "LOCATION", *GROUSE_X]], npartitions=3)
    est = MixedGLMRegressor(family="poisson").fit_chunks(
        ddf, y="TICKS", groups=["BROOD", "LOCATION"], X=GROUSE_X)
    _same_fit(est, grouse_in_memory)


# ---- a family's free parameter: negative binomial, Gamma ----------------------------------------


def test_negative_binomial_theta_searched_from_chunks_equals_in_memory(grouse):
    # the search over log(theta) from its moment start (sums over the chunks), each point a
    # fit; its log-density's constant summed again at every theta
    in_memory = MixedGLMRegressor(family="negative_binomial").fit(grouse[GROUSE_X], grouse["TICKS"],
                                                                  groups=grouse["BROOD"])
    chunks = [grouse.iloc[i:i + 150] for i in range(0, len(grouse), 150)]
    est = MixedGLMRegressor(family="negative_binomial").fit_chunks(chunks, y="TICKS", groups="BROOD",
                                                                   X=GROUSE_X)
    _same_fit(est, in_memory)
    assert abs(est.family_params_["theta"] - in_memory.family_params_["theta"]) < TOL


def test_gamma_shape_searched_from_chunks_equals_in_memory():
    rng = np.random.default_rng(5)
    n, m = 400, 20
    g = rng.integers(0, m, n)
    x = rng.standard_normal(n)
    mu = np.exp(0.5 + 0.3 * x + 0.4 * rng.standard_normal(m)[g])
    df = pd.DataFrame({"y": rng.gamma(3.0, mu / 3.0), "g": g, "x": x})
    in_memory = MixedGLMRegressor(family="gamma", link="log").fit(df[["x"]], df["y"], groups=df["g"])
    chunks = [df.iloc[i:i + 150] for i in range(0, n, 150)]
    est = MixedGLMRegressor(family="gamma", link="log").fit_chunks(chunks, y="y", groups="g", X=["x"])
    _same_fit(est, in_memory)
    assert abs(est.family_params_["shape"] - in_memory.family_params_["shape"]) < TOL


# ---- Bernoulli: the classifier, crossed; a non-canonical link ------------------------------------


def test_bernoulli_classifier_crossed_chunks_equal_in_memory():
    df = load_verbagg()
    df = df[df["id"].astype(int) <= 60].reset_index(drop=True)  # 60 subjects x 24 items
    df["male"] = (df["Gender"] == "M").astype(float)
    df["answer"] = np.where(df["r2"] == 1, "Y", "N")
    X = ["Anger", "male"]
    in_memory = MixedGLMClassifier().fit(df[X], df["answer"], groups=df[["id", "item"]])
    chunks = [df.iloc[i:i + 500] for i in range(0, len(df), 500)]
    est = MixedGLMClassifier().fit_chunks(chunks, y="answer", groups=["id", "item"], X=X)
    assert est.classes_.tolist() == ["N", "Y"]
    _same_fit(est, in_memory)


def test_probit_with_a_correlated_slope_equals_in_memory():
    rng = np.random.default_rng(3)
    n, m = 400, 20
    g = rng.integers(0, m, n)
    x = rng.standard_normal(n)
    b = rng.multivariate_normal([0, 0], [[0.5, 0.1], [0.1, 0.2]], m)
    eta = 0.2 + 0.6 * x + b[g, 0] + b[g, 1] * x
    df = pd.DataFrame({"y": (rng.standard_normal(n) < eta).astype(int), "g": g, "x": x})
    in_memory = MixedGLMClassifier(link="probit").fit(
        df[["x"]], df["y"], groups=df["g"], Z=pd.DataFrame({"(Intercept)": 1.0, "x": x}))
    chunks = [df.iloc[i:i + 150] for i in range(0, n, 150)]
    est = MixedGLMClassifier(link="probit").fit_chunks(chunks, y="y", groups="g", X=["x"],
                                                       Z=["(Intercept)", "x"])
    _same_fit(est, in_memory)


# ---- refusals -----------------------------------------------------------------------------------


def test_a_one_shot_iterator_is_refused_naming_what_to_pass(cbpp):
    chunks = (cbpp.iloc[i:i + 20] for i in range(0, len(cbpp), 20))
    with pytest.raises(ValueError, match="one-shot iterator.*list of DataFrames or a zero-argument callable"):
        MixedGLMRegressor(family="binomial").fit_chunks(chunks, y="p", groups="herd", X=CBPP_X,
                                                        sample_weight="size")


@pytest.mark.parametrize("est, match", [
    (MixedGLMRegressor(family="binomial", n_agq=5), "Laplace"),
    (MixedGLMRegressor(family="binomial", formula="p ~ period + (1 | herd)"), "formula"),
])
def test_what_is_not_fitted_from_chunks_is_refused(cbpp, est, match):
    with pytest.raises((ValueError, TypeError), match=match):
        est.fit_chunks([cbpp], y="p", groups="herd", X=CBPP_X, sample_weight="size")


@pytest.mark.parametrize("column, match", [("off", "chunk 1: the offset has non-finite"),
                                           ("z", "chunk 1: the random-effects columns of herd"),
                                           ("p", "chunk 1: Input y contains NaN")])
def test_non_finite_offset_or_random_effects_column_is_refused_by_name(cbpp, column, match):
    """As the in-memory fit's refusal (not a numerical breakdown at the start), naming the
    chunk (the rows the message counts are the chunk's)."""
    df = cbpp.assign(off=0.0, z=1.0)
    df.loc[df.index[40], column] = np.nan
    with pytest.raises(ValueError, match=match):
        MixedGLMRegressor(family="binomial").fit_chunks(
            [df.iloc[:30], df.iloc[30:]], y="p", groups="herd", X=CBPP_X, sample_weight="size",
            offset="off", Z={"herd": ["(Intercept)", "z"]})


@pytest.mark.parametrize("method", ["fitted", "residuals", "simulate", "bootstrap"])
def test_methods_that_need_the_rows_are_refused(cbpp, method):
    est = MixedGLMRegressor(family="binomial").fit_chunks(
        [cbpp.iloc[:30], cbpp.iloc[30:]], y="p", groups="herd", X=CBPP_X, sample_weight="size")
    with pytest.raises(NotImplementedError, match="rows"):
        getattr(est, method)()


def test_poisson_offset_and_rows_of_weight_zero_equal_in_memory():
    rng = np.random.default_rng(7)
    n, m = 300, 15
    g = rng.integers(0, m, n)
    x = rng.standard_normal(n)
    exposure = rng.uniform(0.5, 3.0, n)
    y = rng.poisson(exposure * np.exp(0.1 + 0.4 * x + 0.5 * rng.standard_normal(m)[g]))
    w = np.where(rng.uniform(size=n) < 0.1, 0.0, 1.0)  # rows of weight 0 drop out
    df = pd.DataFrame({"y": y, "g": g, "x": x, "log_e": np.log(exposure), "w": w})
    in_memory = MixedGLMRegressor(family="poisson").fit(df[["x"]], df["y"], groups=df["g"],
                                                        offset=df["log_e"], sample_weight=df["w"])
    chunks = [df.iloc[i:i + 70] for i in range(0, n, 70)]
    est = MixedGLMRegressor(family="poisson").fit_chunks(chunks, y="y", groups="g", X=["x"],
                                                         offset="log_e", sample_weight="w")
    _same_fit(est, in_memory)


def test_dask_on_a_local_cluster_with_two_workers(cbpp, cbpp_in_memory):
    dd = pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        ddf = dd.from_pandas(cbpp[["p", "herd", "size", *CBPP_X]], npartitions=3)
        est = MixedGLMRegressor(family="binomial").fit_chunks(ddf, y="p", groups="herd", X=CBPP_X,
                                                              sample_weight="size")
    _same_fit(est, cbpp_in_memory)


def test_dask_collections_in_fit_are_fitted_from_their_partitions():
    dd = pytest.importorskip("dask.dataframe")
    rng = np.random.default_rng(11)
    n, m = 500, 25
    g = rng.integers(0, m, n)
    x = rng.standard_normal(n)
    h = rng.integers(0, 6, n)
    eta = 0.3 + 0.5 * x + 0.6 * rng.standard_normal(m)[g] + 0.4 * rng.standard_normal(6)[h]
    df = pd.DataFrame({"count": rng.poisson(np.exp(eta)), "g": g, "x": x, "one": 1.0,
                       "h": np.array(list("abcdef"))[h]})
    # Z named by the user (a column "one"), crossed factors
    in_memory = MixedGLMRegressor(family="poisson").fit(
        df[["x"]], df["count"], groups=df[["g", "h"]], Z={"g": df[["one"]]})
    ddf = dd.from_pandas(df, npartitions=3)
    est = MixedGLMRegressor(family="poisson").fit(
        ddf[["x"]], ddf["count"], groups=ddf[["g", "h"]], Z={"g": ddf[["one"]]})
    _same_fit(est, in_memory)
    new = df.iloc[:20]
    kw = dict(groups=new[["g", "h"]], Z={"g": new[["one"]]})
    np.testing.assert_allclose(est.predict(new[["x"]], **kw), in_memory.predict(new[["x"]], **kw),
                               rtol=1e-8)


def test_refits_with_other_fixed_effects_are_refused(cbpp):
    est = MixedGLMRegressor(family="binomial").fit_chunks(
        [cbpp.iloc[:30], cbpp.iloc[30:]], y="p", groups="herd", X=CBPP_X, sample_weight="size")
    with pytest.raises(ValueError, match="needs the rows in memory; this GLMM was fitted from chunks"):
        est.drop1()
