"""Correlated residuals from chunks and Dask where the rows have more than 16 distinct lags
(group sizes): the outer search over re-iterable chunks equals the in-memory outer search.

Each value of the correlation parameter is one pass over the chunks (partitions), each
chunk's rows whitened within their residual groups and the cross-products added by level
label; the fit of those is the ordinary one. The in-memory fit whitens all rows at the same
values.

Agreement: the log-likelihood and the fixed effects to 1e-8. The correlation parameter and
theta are the minimum of a profile found by a bounded Brent search on deviance values, which
resolves the minimum to about the square root of the values' rounding: the chunks' sums,
added in another order, differ from the in-memory ones in the last digits, so the two
estimates differ by up to ~1e-7 (measured: 6e-8) where the profile is flat. The oracle for
them is that the chunk estimate is a minimum of the in-memory profile: the in-memory
deviance there equals its own minimum to 1e-9."""

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor

from test_correlated_chunks import _chunks_at_group_bounds, _repeated

PARAM = {"ar1": "Phi", "car1": "Phi", "exp": "range", "cs": "Rho"}


@pytest.fixture(scope="module")
def data():
    """The repeated-measures rows with times that have many distinct gaps: continuous times
    (visit + uniform jitter: every gap its own) and integer positions with gaps of 1 to 20
    (for ar1), and residual blocks of 1 to 27 rows nested in quartets of subjects (for cs)."""
    df = _repeated()
    rng = np.random.default_rng(0)
    visit = df.groupby("g").cumcount().to_numpy()
    df["t"] = visit + rng.uniform(0, 0.5, len(df))
    pos = 1 + rng.integers(0, 20, len(df))
    df["pos"] = pd.Series(pos).groupby(df["g"]).cumsum().to_numpy()
    # blocks of many sizes: cut each quartet of subjects' rows at a random point
    df["pair"] = df["g"].str[1:].astype(int) // 4
    within = df.groupby("pair").cumcount().to_numpy()
    cut = rng.integers(1, 28, df["pair"].max() + 1)[df["pair"]]
    df["cblock"] = df["pair"] * 2 + (within >= cut)
    return df


def _fit_both(df, kind, reml, source, **extra):
    cs = kind == "cs"
    time = {"ar1": "pos", "car1": "t", "exp": "t", "cs": None}[kind]
    groups = "pair" if cs else "g"
    block = "cblock" if cs else None
    in_memory = MixedLMRegressor(correlation=kind, reml=reml).fit(
        df[["x"]], df["y"], groups=df[groups], Z=None if cs else df[["one", "x"]].to_numpy(),
        time=None if time is None else df[time],
        correlation_groups=None if block is None else df[block],
        residual_groups=None if "residual_groups" not in extra else df[extra["residual_groups"]])
    parts = _chunks_at_group_bounds(df, groups, 150)
    assert len(parts) > 5
    chunks = {"list": parts, "callable": lambda: iter(parts)}[source]
    est = MixedLMRegressor(correlation=kind, reml=reml).fit_chunks(
        chunks, y="y", groups=groups, X=["x"], Z=None if cs else ["(Intercept)", "x"], time=time,
        correlation_groups=block, **extra)
    return est, in_memory


def _assert_same(est, in_memory, name):
    """The log-likelihood and the fixed effects to 1e-8; the correlation parameter and theta
    a minimum of the in-memory profile (see the module docstring)."""
    assert est.converged_ and in_memory.converged_
    assert list(est.groups_) == list(in_memory.groups_)
    np.testing.assert_allclose(est.llf_, in_memory.llf_, rtol=1e-8)
    np.testing.assert_allclose(est.fe_params_.to_numpy(), in_memory.fe_params_.to_numpy(),
                               rtol=1e-8)
    corr = in_memory.model_.correlation
    assert corr.deviance_at(est.model_.correlation.internal) - corr.deviance < 1e-9
    np.testing.assert_allclose(est.correlation_params_[name], in_memory.correlation_params_[name],
                               rtol=1e-6)
    np.testing.assert_allclose(est.model_.solution.x, in_memory.model_.solution.x, rtol=1e-6,
                               atol=1e-6)
    assert est.model_.correlation.describe()[:30] == corr.describe()[:30]


@pytest.mark.parametrize("reml,source", [(True, "list"), (False, "callable")])
@pytest.mark.parametrize("kind", ["car1", "exp", "ar1", "cs"])
def test_outer_search_from_chunks_equals_in_memory(kind, reml, source, data):
    """CAR(1) and exponential correlation on jittered times, AR(1) on positions with gaps of
    1 to 20 (random intercept and slope), compound symmetry in blocks of 1 to 27 rows (a
    random intercept per quartet of subjects, which spans chunks): more than 16 lags (sizes),
    where an in-memory fit runs the outer search too."""
    est, in_memory = _fit_both(data, kind, reml, source)
    assert est.model_.correlation.data is None  # a fit without rows
    assert in_memory.model_.correlation.data.joint_components is None  # the outer search
    _assert_same(est, in_memory, PARAM[kind])


def test_outer_search_reads_a_file_through_a_callable(data, tmp_path):
    """The motivating source: a CSV read in chunks, once per pass, by a callable."""
    path = tmp_path / "rows.csv"
    data.sort_values(["g", "t"]).to_csv(path, index=False)
    whole = pd.read_csv(path)  # the rows as the file holds them
    in_memory = MixedLMRegressor(correlation="car1").fit(whole[["x"]], whole["y"],
                                                         groups=whole["g"], time=whole["t"])
    est = MixedLMRegressor(correlation="car1").fit_chunks(
        lambda: pd.read_csv(path, chunksize=140), y="y", groups="g", X=["x"], time="t")
    _assert_same(est, in_memory, "Phi")


def test_outer_search_from_dask_partitions_equals_in_memory(data):
    """A Dask fit makes each pass by computing every partition's whitened sums."""
    dd = pytest.importorskip("dask.dataframe")
    dask = pytest.importorskip("dask")
    df = data
    in_memory = MixedLMRegressor(correlation="car1", reml=False).fit(
        df[["x"]], df["y"], groups=df["g"], Z=df[["one", "x"]].to_numpy(), time=df["t"])
    ddf = dd.from_pandas(df.set_index(pd.Index(df["g"].str[1:].astype(int), name="k")),
                         npartitions=4, sort=True)
    with dask.config.set(scheduler="synchronous"):
        est = MixedLMRegressor(correlation="car1", reml=False).fit(
            ddf[["x"]], ddf["y"], groups=ddf["g"], Z=ddf[["one", "x"]], time=ddf["t"])
    _assert_same(est, in_memory, "Phi")


def test_outer_search_with_residual_strata_equals_in_memory(data):
    """A residual variance per stratum constant within each residual group (by subject):
    the strata weight the whitened rows, in each chunk as in memory. Strata varying within a
    group need the components, which more than 16 lags do not give: refused as in memory."""
    s = np.where(data["g"].str[1:].astype(int) % 3 == 0, "third", "rest")
    extra = np.random.default_rng(5).normal(0.0, 1.2, len(data)) * (s == "third")
    df = data.assign(s=s, y=data["y"] + extra)
    est, in_memory = _fit_both(df, "car1", True, "list", residual_groups="s")
    _assert_same(est, in_memory, "Phi")
    np.testing.assert_allclose(list(est.residual_var_.values()),
                               list(in_memory.residual_var_.values()), rtol=1e-6)
    assert abs(np.log(np.divide(*list(in_memory.residual_var_.values())))) > 0.3
    mixed = df.assign(s=np.where(df["visit"] <= 3, "early", "late"))
    with pytest.raises(NotImplementedError, match="residual_groups that vary within"):
        MixedLMRegressor(correlation="car1").fit(mixed[["x"]], mixed["y"], groups=mixed["g"],
                                                 time=mixed["t"], residual_groups=mixed["s"])
    with pytest.raises(NotImplementedError, match="residual_groups that vary within"):
        MixedLMRegressor(correlation="car1").fit_chunks(
            _chunks_at_group_bounds(mixed, "g", 150), y="y", groups="g", X=["x"], time="t",
            residual_groups="s")


def test_one_shot_iterators_are_refused_once_the_lags_add_up_beyond_16(data):
    """Each chunk with one lag of its own (times scaled per chunk): no chunk has more than 16,
    the data do; a one-shot iterator is refused after its one pass, naming a list or a
    callable, and the list of the same chunks is fitted as in memory."""
    chunks = [c.assign(t=c.groupby("g").cumcount() * (1.0 + 0.01 * i))
              for i, c in enumerate(_chunks_at_group_bounds(data, "g", 60))]
    assert len(chunks) > 16
    with pytest.raises(ValueError, match=r"the data have \d+ distinct lags between consecutive "
                                         r"rows \(more than 16\).*one-shot iterator.*list of "
                                         "DataFrames or a zero-argument callable"):
        MixedLMRegressor(correlation="car1").fit_chunks(iter(chunks), y="y", groups="g",
                                                        X=["x"], time="t")
    whole = pd.concat(chunks)
    in_memory = MixedLMRegressor(correlation="car1").fit(whole[["x"]], whole["y"],
                                                         groups=whole["g"], time=whole["t"])
    est = MixedLMRegressor(correlation="car1").fit_chunks(chunks, y="y", groups="g", X=["x"],
                                                          time="t")
    _assert_same(est, in_memory, "Phi")


def test_inference_after_the_outer_search_from_chunks(data):
    """Without rows, the profile interval of phi, the ML refit, Satterthwaite's df, R2 and
    the ICC come from passes over the chunks, as in memory from the rows; the profiles of
    the variance parameters, which need the joint form, are refused as in memory."""
    df = data
    in_memory = MixedLMRegressor(correlation="car1").fit(df[["x"]], df["y"], groups=df["g"],
                                                         time=df["t"])
    est = MixedLMRegressor(correlation="car1").fit_chunks(
        _chunks_at_group_bounds(df, "g", 200), y="y", groups="g", X=["x"], time="t")
    a, b = est.model_, in_memory.model_
    np.testing.assert_allclose(a.correlation.profile_interval(), b.correlation.profile_interval(),
                               rtol=1e-6)
    np.testing.assert_allclose(a.refit(reml=False).llf, b.refit(reml=False).llf, rtol=1e-10)
    np.testing.assert_allclose([est.r2().marginal, est.r2().conditional, est.icc().adjusted],
                               [in_memory.r2().marginal, in_memory.r2().conditional,
                                in_memory.icc().adjusted], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(est.summary().fixed_effects["df"], float),
                               np.asarray(in_memory.summary().fixed_effects["df"], float),
                               rtol=1e-6)
    for fitted in (est, in_memory):
        with pytest.raises(NotImplementedError, match="at most 16 distinct time gaps.*which="):
            fitted.conf_int(method="profile")


def test_a_source_that_changes_between_passes_is_refused(data):
    """Every pass must read the rows of the first: a callable giving fewer rows later (e.g.
    a file being appended to or truncated) is refused rather than fitted to a mixture."""
    parts = _chunks_at_group_bounds(data, "g", 150)
    calls = []

    def source():
        calls.append(1)
        return iter(parts if len(calls) < 3 else parts[:-1])

    with pytest.raises(ValueError, match="the chunks changed between passes"):
        MixedLMRegressor(correlation="car1").fit_chunks(source, y="y", groups="g", X=["x"],
                                                        time="t")


def test_weighted_rows_in_the_outer_search_from_chunks_equal_in_memory(data):
    """Prior weights next to CAR(1) (varFixed(~ 1/w)): each chunk's rows scaled by sqrt(w)
    before whitening, sum log w in the deviance; R2 and the ICC, which need the unweighted
    moments, refused as from components."""
    # 2 at visits 1-3, 1/2 at 4-6, 1 at 7: log w sums to about 0 (the refusal of R2 reads
    # whether weights were given, not their log-sum)
    df = data.assign(w=np.select([data["visit"] <= 3, data["visit"] <= 6], [2.0, 0.5], 1.0))
    in_memory = MixedLMRegressor(correlation="car1").fit(df[["x"]], df["y"], groups=df["g"],
                                                         time=df["t"], sample_weight=df["w"])
    est = MixedLMRegressor(correlation="car1").fit_chunks(
        _chunks_at_group_bounds(df, "g", 150), y="y", groups="g", X=["x"], time="t",
        sample_weight="w")
    _assert_same(est, in_memory, "Phi")
    with pytest.raises(NotImplementedError, match="R2 and the ICC of a fit from chunks"):
        est.r2()


def test_an_aliased_column_is_dropped_from_every_pass(data):
    """lme4's rank rule on the first pass's products: the aliased column (2 x) is dropped,
    and each pass's whitened products keep the same columns, as in memory."""
    df = data.assign(x2=2 * data["x"])
    with pytest.warns(UserWarning, match="x2"):
        in_memory = MixedLMRegressor(correlation="car1").fit(df[["x", "x2"]], df["y"],
                                                             groups=df["g"], time=df["t"])
    with pytest.warns(UserWarning, match="x2"):
        est = MixedLMRegressor(correlation="car1").fit_chunks(
            _chunks_at_group_bounds(df, "g", 150), y="y", groups="g", X=["x", "x2"], time="t")
    assert est.fe_params_["x2"] == in_memory.fe_params_["x2"] == 0.0
    _assert_same(est, in_memory, "Phi")
