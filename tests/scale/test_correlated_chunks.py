"""Correlated residuals fitted from chunks and Dask partitions equal the in-memory fit.

Every residual group lies in one chunk (partition); the chunks' whitened cross-products,
split into the joint fit's components (per lag, or per group size for compound symmetry),
add up by level label and lag to the components of all rows."""

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import MixedLMRegressor, lr_test

PARAM = {"ar1": "Phi", "car1": "Phi", "cs": "Rho"}


def _ar1_series(rng, gaps, phi):
    """Continuous-time AR(1) noise at the given gaps (first entry ignored)."""
    e = np.empty(gaps.size)
    e[0] = rng.standard_normal()
    for t in range(1, gaps.size):
        c = phi ** gaps[t]
        e[t] = c * e[t - 1] + np.sqrt(1 - c * c) * rng.standard_normal()
    return e


def _repeated(seed=0, n_subjects=160, n_visits=7, irregular=False):
    """Subjects with a random intercept and slope in x, AR(1) noise within subject (phi 0.5),
    visits 1..n_visits (``irregular``: some skipped, gaps 1-3), and blocks of 3-4 visits
    nested in subjects (the compound-symmetry case's residual groups, with their own
    shared effect)."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_subjects):
        visits = np.arange(1, n_visits + 1)
        if irregular:
            visits = np.sort(rng.choice(np.arange(1, 2 * n_visits), n_visits, replace=False))
        gaps = np.diff(visits, prepend=visits[0]).astype(float)
        x = rng.standard_normal(n_visits)
        b0, b1 = rng.normal(0, 1.0), rng.normal(0, 0.4)
        block = s * 2 + (np.arange(n_visits) >= n_visits // 2)
        shared = rng.normal(0, 0.7, 2)[block - s * 2]
        y = 1 + 0.5 * x + b0 + b1 * x + _ar1_series(rng, gaps, 0.5) + shared
        frames.append(pd.DataFrame({"g": f"s{s:03d}", "visit": visits, "x": x, "y": y,
                                    "block": block}))
    df = pd.concat(frames, ignore_index=True)
    df["one"] = 1.0
    return df


def _chunks_at_group_bounds(df, column, size, seed=1):
    """Chunks of about ``size`` rows cut between groups of ``column``, the groups in a
    shuffled order (so levels arrive in no particular order)."""
    labels = df[column].unique()
    order = np.random.default_rng(seed).permutation(labels.size)
    by = {k: v for k, v in df.groupby(column, sort=False)}
    parts, current, rows = [], [], 0
    for i in order:
        current.append(by[labels[i]])
        rows += len(current[-1])
        if rows >= size:
            parts.append(pd.concat(current))
            current, rows = [], 0
    if current:
        parts.append(pd.concat(current))
    return parts


def _assert_same(a, b, name, tol=1e-8):
    assert list(a.groups_) == list(b.groups_)
    np.testing.assert_allclose(a.llf_, b.llf_, rtol=tol)
    np.testing.assert_allclose(a.correlation_params_[name], b.correlation_params_[name], rtol=tol)
    np.testing.assert_allclose(a.fe_params_.to_numpy(), b.fe_params_.to_numpy(), rtol=tol)
    np.testing.assert_allclose(a.bse_.to_numpy(), b.bse_.to_numpy(), rtol=tol)
    np.testing.assert_allclose(a.cov_re_, b.cov_re_, rtol=tol, atol=tol * np.abs(b.cov_re_).max())
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=tol)
    ref = b.random_effects_.to_numpy()
    np.testing.assert_allclose(a.random_effects_.to_numpy(), ref, rtol=1e-6, atol=tol * np.abs(ref).max())


@pytest.fixture(scope="module")
def regular():
    return _repeated()


@pytest.fixture(scope="module")
def irregular():
    return _repeated(seed=3, irregular=True)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("slope", [False, True])
@pytest.mark.parametrize("kind", ["ar1", "car1", "cs"])
def test_chunks_equal_in_memory(kind, slope, reml, regular, irregular):
    """AR(1) on integer visits, continuous-time AR(1) on irregular visits (gaps 1 to 3), and
    compound symmetry within blocks nested in the subjects (subjects span chunks, blocks
    do not; blocks of 3 and 4 rows: two group sizes), each with a random intercept (and a
    random slope), REML and ML."""
    df = irregular if kind == "car1" else regular
    cs = kind == "cs"
    Z = df[["one", "x"]].to_numpy() if slope else None
    in_memory = MixedLMRegressor(correlation=kind, reml=reml).fit(
        df[["x"]], df["y"], groups=df["g"], Z=Z, time=None if cs else df["visit"],
        correlation_groups=df["block"] if cs else None)
    chunks = _chunks_at_group_bounds(df, "block" if cs else "g", 150)
    assert len(chunks) > 5
    if cs:  # some subject has rows in two chunks: its level's products add up by label
        seen = [set(c["g"]) for c in chunks]
        assert any(seen[i] & seen[j] for i in range(len(seen)) for j in range(i))
    est = MixedLMRegressor(correlation=kind, reml=reml).fit_chunks(
        iter(chunks), y="y", groups="g", X=["x"], Z=["(Intercept)", "x"] if slope else None,
        time=None if cs else "visit", correlation_groups="block" if cs else None)
    assert in_memory.converged_ and est.converged_
    assert 0.2 < abs(est.correlation_params_[PARAM[kind]]) < 0.9  # an interior estimate
    _assert_same(est, in_memory, PARAM[kind])
    assert est.model_.correlation.describe() == in_memory.model_.correlation.describe()


def test_chunk_fit_infers_from_the_components(regular):
    """Without rows, a chunk fit's Satterthwaite df (derivatives in the correlation too), the
    profile interval of phi and its ML refit come from the components, as in memory."""
    df = regular
    in_memory = MixedLMRegressor(correlation="ar1").fit(df[["x"]], df["y"], groups=df["g"],
                                                        time=df["visit"])
    est = MixedLMRegressor(correlation="ar1").fit_chunks(
        _chunks_at_group_bounds(df, "g", 200), y="y", groups="g", X=["x"], time="visit")
    a, b = est.model_, in_memory.model_
    np.testing.assert_allclose(a.correlation.profile_interval(), b.correlation.profile_interval(),
                               rtol=1e-7)
    np.testing.assert_allclose(a.refit(reml=False).llf, b.refit(reml=False).llf, rtol=1e-10)
    sa = est.summary().fixed_effects
    sb = in_memory.summary().fixed_effects
    np.testing.assert_allclose(np.asarray(sa["df"], float), np.asarray(sb["df"], float), rtol=1e-6)
    # R2 and the ICC from the rows' own moments (the components holding each row once)
    np.testing.assert_allclose([est.r2().marginal, est.r2().conditional, est.icc().adjusted],
                               [in_memory.r2().marginal, in_memory.r2().conditional,
                                in_memory.icc().adjusted], rtol=1e-8)
    # likelihood-ratio test against independent residuals, also fitted from chunks (the
    # check that both saw the same rows reads the unwhitened products)
    kw = dict(y="y", groups="g", X=["x"])
    ml = MixedLMRegressor(correlation="ar1", reml=False)
    chunked = lr_test(MixedLMRegressor(reml=False).fit_chunks(_chunks_at_group_bounds(df, "g", 200), **kw),
                      ml.fit_chunks(_chunks_at_group_bounds(df, "g", 200), time="visit", **kw))
    whole = lr_test(MixedLMRegressor(reml=False).fit(df[["x"]], df["y"], groups=df["g"]),
                    MixedLMRegressor(correlation="ar1", reml=False).fit(
                        df[["x"]], df["y"], groups=df["g"], time=df["visit"]))
    assert chunked.statistic > 10
    np.testing.assert_allclose(chunked.statistic, whole.statistic, rtol=1e-7)
    other = df.assign(y=df["y"] * 1.01)
    with pytest.raises(ValueError, match="different responses"):
        lr_test(MixedLMRegressor(reml=False).fit_chunks(_chunks_at_group_bounds(other, "g", 200), **kw),
                ml)


def test_dask_partitions_equal_in_memory(regular):
    dd = pytest.importorskip("dask.dataframe")
    dask = pytest.importorskip("dask")
    df = regular
    in_memory = MixedLMRegressor(correlation="ar1", reml=False).fit(
        df[["x"]], df["y"], groups=df["g"], Z=df[["one", "x"]].to_numpy(), time=df["visit"])
    # partitions on the subjects' boundaries (an index sorted by subject keeps each in one)
    ddf = dd.from_pandas(df.set_index(pd.Index(df["g"].str[1:].astype(int), name="k")),
                         npartitions=4, sort=True)
    assert ddf.npartitions > 1
    with dask.config.set(scheduler="synchronous"):
        est = MixedLMRegressor(correlation="ar1", reml=False).fit(
            ddf[["x"]], ddf["y"], groups=ddf["g"], Z=ddf[["one", "x"]], time=ddf["visit"])
    _assert_same(est, in_memory, "Phi")
    assert est.model_.correlation.describe() == "corAR1(form = ~ visit | g), Phi = %.6g" % (
        in_memory.correlation_params_["Phi"])


def test_a_residual_group_split_across_chunks_is_refused(regular):
    df = regular
    chunks = [df.iloc[:500], df.iloc[500:]]  # row 500 is inside subject s071
    assert df["g"].iloc[499] == df["g"].iloc[500]
    est = MixedLMRegressor(correlation="ar1")
    with pytest.raises(ValueError, match=r"chunk 1: the residual group 's071' of g also has "
                                         r"rows in chunk 0"):
        est.fit_chunks(iter(chunks), y="y", groups="g", X=["x"], time="visit")
    assert not hasattr(est, "model_")
    dd = pytest.importorskip("dask.dataframe")
    dask = pytest.importorskip("dask")
    ddf = dd.from_pandas(df, npartitions=3, sort=False)
    with dask.config.set(scheduler="synchronous"), pytest.raises(
            ValueError, match=r"partition \d: the residual group 's\d+' of g also has rows in "
                              r"partition \d"):
        est.fit(ddf[["x"]], ddf["y"], groups=ddf["g"], time=ddf["visit"])


def test_chunks_refuse_what_needs_the_rows_or_a_second_pass(regular):
    df = regular
    chunks = _chunks_at_group_bounds(df, "g", 200)
    with pytest.raises(TypeError, match="time describe correlated residuals"):
        MixedLMRegressor().fit_chunks(iter(chunks), y="y", groups="g", X=["x"], time="visit")
    # times at many distinct gaps (more than 16 components): the outer search reads the
    # chunks once per value of phi, which a one-shot iterator cannot give
    rng = np.random.default_rng(0)
    wild = df.assign(t=df.groupby("g").cumcount() + rng.uniform(0, 0.5, len(df)))
    with pytest.raises(ValueError, match="chunk 0: .*more than 16.*outer search.*one-shot "
                                         "iterator.*list of DataFrames or a zero-argument callable"):
        MixedLMRegressor(correlation="car1").fit_chunks(
            iter(_chunks_at_group_bounds(wild, "g", 200)), y="y", groups="g", X=["x"], time="t")
    # as in memory, the rows of a group come in time order
    backwards = [chunks[0], chunks[1].iloc[::-1]]
    with pytest.raises(ValueError, match="chunk 1: times are not increasing within a group"):
        MixedLMRegressor(correlation="ar1").fit_chunks(iter(backwards), y="y", groups="g",
                                                       X=["x"], time="visit")
    est = MixedLMRegressor(correlation="ar1").fit_chunks(iter(chunks), y="y", groups="g",
                                                         X=["x"], time="visit")
    with pytest.raises(NotImplementedError, match="rows"):
        est.simulate(n_sim=1)


def _site_chunk(i, rows, visits=5):
    """Chunk ``i``: subjects of ``visits`` rows each (their own), in 20 sites shared by every
    chunk (a random intercept per site), AR(1) within subject."""
    rng = np.random.default_rng(i)
    m = rows // visits
    subject = np.repeat(np.arange(i * m, (i + 1) * m), visits)
    site = subject % 20
    x = rng.standard_normal(rows)
    e = rng.standard_normal(rows)
    for t in range(1, visits):
        e[t::visits] = 0.6 * e[t - 1::visits] + 0.8 * e[t::visits]
    y = 1 + 0.5 * x + np.linspace(-1, 1, 20)[site] + e
    return pd.DataFrame({"y": y, "x": x, "site": site, "subject": subject,
                         "visit": np.tile(np.arange(1, visits + 1), m)})


def test_peak_memory_is_one_chunk_plus_the_levels():
    """The chunks are made one at a time: four times the rows (and residual groups) raise the
    fit's peak memory by the residual groups' labels only, far below the rows' own size."""
    rows = 20_000

    def peak(n_chunks):
        tracemalloc.start()
        try:
            est = MixedLMRegressor(correlation="ar1").fit_chunks(
                (_site_chunk(i, rows) for i in range(n_chunks)), y="y", groups="site", X=["x"],
                time="visit", correlation_groups="subject")
            return tracemalloc.get_traced_memory()[1], est
        finally:
            tracemalloc.stop()

    small, _ = peak(2)
    large, est = peak(8)
    chunk_bytes = _site_chunk(0, rows).memory_usage(index=True).sum()
    assert est.model_.n_obs == 8 * rows and 0.5 < est.correlation_params_["Phi"] < 0.7
    assert large < small + 2 * chunk_bytes  # not the 6 more chunks' 6 x chunk_bytes


def test_weighted_chunks_equal_the_weighted_fit(regular):
    """Prior weights next to AR(1) (nlme's varFixed(~ 1/w)): the rows scaled by sqrt(w)
    before whitening in each chunk, sum log w in the deviance."""
    df = regular.assign(w=1 + (regular["visit"] % 3) / 2)
    in_memory = MixedLMRegressor(correlation="ar1").fit(
        df[["x"]], df["y"], groups=df["g"], time=df["visit"], sample_weight=df["w"])
    est = MixedLMRegressor(correlation="ar1").fit_chunks(
        iter(_chunks_at_group_bounds(df, "g", 300)), y="y", groups="g", X=["x"], time="visit",
        sample_weight="w")
    unweighted = MixedLMRegressor(correlation="ar1").fit(df[["x"]], df["y"], groups=df["g"],
                                                         time=df["visit"])
    assert abs(unweighted.llf_ - in_memory.llf_) > 1.0  # the weights matter
    _assert_same(est, in_memory, "Phi")
    with pytest.raises(NotImplementedError, match="R2 and the ICC of a fit from chunks"):
        est.r2()
    with pytest.raises(ValueError, match="chunk 0: with correlation=, sample_weight must be positive"):
        MixedLMRegressor(correlation="ar1").fit_chunks(
            [df.assign(w=0.0)], y="y", groups="g", X=["x"], time="visit", sample_weight="w")


def test_an_estimate_on_the_bound_of_independence_equals_in_memory():
    """Negatively correlated neighbours: continuous-time AR(1) (0 < phi < 1) ends on phi = 0,
    the bound of independent residuals, which the fit from chunks evaluates from its
    components (weights at phi = 0) as the in-memory fit does from the rows; its profile
    interval too."""
    rng = np.random.default_rng(5)
    n_groups, visits = 100, 6
    z = rng.standard_normal(n_groups * visits)
    e = z.copy()
    for k in range(1, visits):
        e[k::visits] = -0.6 * e[k - 1::visits] + 0.8 * z[k::visits]
    g = np.repeat(np.arange(n_groups), visits)
    x = rng.standard_normal(g.size)
    df = pd.DataFrame({"y": 1 + x + rng.standard_normal(n_groups)[g] + e, "x": x, "g": g,
                       "t": np.tile(np.arange(visits) * 1.5, n_groups)})
    in_memory = MixedLMRegressor(correlation="car1").fit(df[["x"]], df["y"], groups=df["g"],
                                                         time=df["t"])
    est = MixedLMRegressor(correlation="car1").fit_chunks(
        iter(_chunks_at_group_bounds(df, "g", 100)), y="y", groups="g", X=["x"], time="t")
    assert est.correlation_params_["Phi"] == in_memory.correlation_params_["Phi"] == 0.0
    _assert_same(est, in_memory, "Phi")
    np.testing.assert_allclose(est.model_.correlation.profile_interval(),
                               in_memory.model_.correlation.profile_interval(), rtol=1e-8)


def test_residual_groups_of_their_own_column_split_across_chunks_are_refused(regular):
    """Compound symmetry within blocks (correlation_groups): a block in two chunks is named."""
    df = regular.sort_values("block", kind="stable")
    cut = int(np.flatnonzero(df["block"].to_numpy() == 7)[1])  # inside block 7
    with pytest.raises(ValueError, match="chunk 1: the residual group 7 of block also has rows "
                                         "in chunk 0"):
        MixedLMRegressor(correlation="cs").fit_chunks(
            iter([df.iloc[:cut], df.iloc[cut:]]), y="y", groups="g", X=["x"],
            correlation_groups="block")


@pytest.mark.parametrize("kind,within", [("ar1", True), ("ar1", False), ("car1", True),
                                         ("cs", True), ("cs", False)])
def test_residual_strata_with_a_correlation_from_chunks_equal_in_memory(kind, within, regular,
                                                                      irregular):
    """A residual variance per stratum next to the correlation (nlme's varIdent with a
    corStruct): strata varying within a residual group (early and late visits: the
    components are held per pair of strata, a lag's for the strata of its two rows) or
    constant within one (by subject; the first chunks may hold one stratum only), added
    up from chunks by stratum label as in memory."""
    df = irregular if kind == "car1" else regular
    cs = kind == "cs"
    if within:
        s = np.where(df["visit"].to_numpy() <= 3, "early", "late")
    else:
        s = np.where(df["g"].str[1:].astype(int).to_numpy() % 3 == 0, "third", "rest")
    # extra noise in one stratum: the strata's residual variances differ
    extra = np.random.default_rng(5).normal(0.0, 1.2, len(df)) * (s == s[0])
    df = df.assign(s=s, y=df["y"] + extra)
    kw = dict(time=None if cs else "visit", correlation_groups="block" if cs else None,
              residual_groups="s")
    in_memory = MixedLMRegressor(correlation=kind).fit(
        df[["x"]], df["y"], groups=df["g"], time=None if cs else df["visit"],
        correlation_groups=df["block"] if cs else None, residual_groups=df["s"])
    chunks = _chunks_at_group_bounds(df, "block" if cs else "g", 150)
    est = MixedLMRegressor(correlation=kind).fit_chunks(iter(chunks), y="y", groups="g", X=["x"],
                                                         **kw)
    assert in_memory.converged_ and est.converged_
    _assert_same(est, in_memory, PARAM[kind])
    assert list(est.residual_var_) == list(in_memory.residual_var_)
    np.testing.assert_allclose(list(est.residual_var_.values()),
                               list(in_memory.residual_var_.values()), rtol=1e-8)
    ratio = np.divide(*list(in_memory.residual_var_.values()))
    assert abs(np.log(ratio)) > 0.3  # the strata's variances differ: the strata matter


def test_residual_strata_with_a_correlation_from_dask_equal_in_memory(regular):
    dd = pytest.importorskip("dask.dataframe")
    dask = pytest.importorskip("dask")
    df = regular.assign(s=np.where(regular["visit"] <= 3, "early", "late"))
    in_memory = MixedLMRegressor(correlation="ar1", reml=False).fit(
        df[["x"]], df["y"], groups=df["g"], time=df["visit"], residual_groups=df["s"])
    ddf = dd.from_pandas(df.set_index(pd.Index(df["g"].str[1:].astype(int), name="k")),
                         npartitions=4, sort=True)
    with dask.config.set(scheduler="synchronous"):
        est = MixedLMRegressor(correlation="ar1", reml=False).fit(
            ddf[["x"]], ddf["y"], groups=ddf["g"], time=ddf["visit"], residual_groups=ddf["s"])
    _assert_same(est, in_memory, "Phi")
    np.testing.assert_allclose(list(est.residual_var_.values()),
                               list(in_memory.residual_var_.values()), rtol=1e-8)
