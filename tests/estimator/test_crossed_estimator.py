"""Several grouping factors through MixedLMRegressor: crossed and nested."""

import json

import numpy as np
import pandas as pd
import pytest
import sklearn
from _reference import CROSSED_CASES, load_case
from sklearn.model_selection import GroupKFold, cross_validate

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_penicillin
from mixedlm_sklearn.design import nested_groups


def _case(name):
    df, ref = load_case(name)
    X = df.filter(regex="^X_").to_numpy()
    factors = [c for c in df.columns if c[0] == "g" and c[1:].isdigit()]
    # CSV column g{k} is the factor `group` of term k; the JSON's covariances belong to
    # `vc_key` (they differ in the nested case: lme4 gives 8.434 to batch:cask ("bc")).
    groups = df[factors].set_axis([t["group"] for t in ref["terms"]], axis=1)
    return df, X, groups, ref


@pytest.fixture(scope="module", params=CROSSED_CASES)
def fitted(request):
    df, X, groups, ref = _case(request.param)
    est = MixedLMRegressor(reml=ref["reml"], fit_intercept=False).fit(X, df["y"], groups=groups)
    return df, X, groups, ref, est


def test_reference_agreement(fitted):
    df, X, groups, ref, est = fitted
    assert est.llf_ >= ref["llf"] - 1e-6
    se = np.atleast_1d(ref["bse_fe"])
    assert np.max(np.abs(est.fe_params_.to_numpy() - np.atleast_1d(ref["fe_params"])) / se) < 1e-3
    np.testing.assert_allclose(est.bse_.to_numpy(), se, rtol=1e-3)
    np.testing.assert_allclose(est.scale_, ref["scale"], rtol=1e-3)
    for term in ref["terms"]:
        np.testing.assert_allclose(est.cov_re_[term["vc_key"]], term["cov_re"], rtol=1e-3)
        assert est.n_groups_[term["group"]] == term["n_groups"]
    fitted_head = est.predict(X[:50], groups=groups.iloc[:50])
    np.testing.assert_allclose(fitted_head, ref["fitted_head"], rtol=1e-4)
    assert est.df_model_ == ref["df_model"]
    np.testing.assert_allclose([est.aic_, est.bic_], [ref["aic"], ref["bic"]], atol=1e-5)
    assert est.converged_ and not est.singular_


def test_random_effects_tables(fitted):
    df, X, groups, ref, est = fitted
    for name in groups.columns:
        table = est.random_effects_[name]
        assert list(table.index) == sorted(groups[name].unique())
        assert table.shape[1] == 1 and est.random_effects_cov_[name].shape == (len(table), 1, 1)
        # BLUPs of each factor are shrunken deviations: they sum to ~0 for balanced designs
        assert abs(table.to_numpy().mean()) < 0.05 * table.to_numpy().std() + 1e-12


def test_prediction_seen_and_unseen_levels():
    df = load_penicillin()
    groups = df[["plate", "sample"]]
    est = MixedLMRegressor(fit_intercept=False).fit(np.ones((len(df), 1)), df["diameter"], groups=groups)
    X1 = np.ones((3, 1))
    seen = pd.DataFrame({"plate": ["a", "a", "new"], "sample": ["A", "new", "new"]})
    pred = est.predict(X1, groups=seen)
    b_plate, b_sample = est.random_effects_["plate"], est.random_effects_["sample"]
    mu = est.coef_[0]
    np.testing.assert_allclose(pred, [mu + b_plate.loc["a"].iloc[0] + b_sample.loc["A"].iloc[0],
                                      mu + b_plate.loc["a"].iloc[0], mu])
    np.testing.assert_allclose(est.predict(X1), mu)


def test_nested_helper_builds_lme4_labels():
    df, X, groups, ref = _case("pastes_nested_reml")
    # rebuild the nested factor from batch and a cask label that repeats across batches
    cask = groups["bc"].str.split(".").str[1]  # "A.a" -> "a"
    built = nested_groups(groups["batch"].rename("batch"), cask.rename("cask"))
    assert list(built.columns) == ["batch", "batch:cask"]
    assert built["batch:cask"].nunique() == 30 and cask.nunique() == 3
    est = MixedLMRegressor(fit_intercept=False).fit(X, df["y"], groups=built)
    assert est.llf_ == pytest.approx(ref["llf"], abs=1e-6)
    np.testing.assert_allclose(est.cov_re_["batch:cask"], [[8.43366661489089]], rtol=1e-3)


def test_random_slopes_in_one_factor_and_group_kfold_on_another():
    rng = np.random.default_rng(0)
    n, m_a, m_b = 1200, 40, 15
    a, b = rng.integers(0, m_a, n), rng.integers(0, m_b, n)
    x = rng.standard_normal(n)
    y = 1 + 0.5 * x + rng.standard_normal(m_a)[a] + 0.3 * rng.standard_normal(m_a)[a] * x \
        + 0.7 * rng.standard_normal(m_b)[b] + rng.standard_normal(n)
    groups = pd.DataFrame({"a": a, "b": b})
    Z = {"a": np.column_stack([np.ones(n), x])}
    # the DataFrame form with (factor, column) columns is what CV can split by rows
    Z_frame = pd.DataFrame({("a", "(Intercept)"): np.ones(n), ("a", "x"): x})
    with sklearn.config_context(enable_metadata_routing=True):
        est = MixedLMRegressor().set_fit_request(groups=True, Z=True)
        splits = list(GroupKFold(n_splits=3).split(x[:, None], y, groups=a))
        cv = cross_validate(est, x[:, None], y, cv=splits, params={"groups": groups, "Z": Z_frame},
                            return_estimator=True)
    for fold in cv["estimator"]:
        assert fold.cov_re_["a"].shape == (2, 2) and fold.cov_re_["b"].shape == (1, 1)
        assert set(fold.random_effects_) == {"a", "b"}
        assert list(fold.random_effects_["a"].columns) == ["(Intercept)", "x"]
    full = MixedLMRegressor(cov_type="diagonal").fit(x[:, None], y, groups=groups, Z=Z)
    assert full.cov_re_["a"][0, 1] == 0.0


def test_bad_multi_factor_input():
    df = load_penicillin()
    X = np.ones((len(df), 1))
    groups = df[["plate", "sample"]].assign(one="only")
    with pytest.raises(ValueError, match="grouping factor 'one' has a single level"):
        MixedLMRegressor(fit_intercept=False).fit(X, df["diameter"], groups=groups)
    with pytest.raises(ValueError, match=r"Z key\(s\) \['plates'\] name no grouping factor"):
        MixedLMRegressor(fit_intercept=False).fit(X, df["diameter"], groups=df[["plate", "sample"]],
                                                  Z={"plates": np.ones((len(df), 1))})


def test_nested_fit_with_many_levels_keeps_memory_linear_and_the_exact_likelihood():
    """20,000 outer levels x up to 5 inner each, 2 x 10^5 rows, through the estimator.

    A dense block of the inner factor (86,716 levels) would take 6 x 10^10 bytes; the fit
    must stay within a few hundred bytes per row and level. The groups of the outer factor
    are independent, so the exact log-likelihood is a sum over 20,000 small dense blocks
    (computed here batched, padded with identity rows), against which the fit's is checked.
    """
    import tracemalloc

    rng = np.random.default_rng(0)
    outer_m, per, n = 20_000, 5, 200_000
    outer = rng.integers(0, outer_m, n)
    outer[:outer_m] = np.arange(outer_m)
    inner = np.unique(outer * per + rng.integers(0, per, n), return_inverse=True)[1]
    x = rng.standard_normal(n)
    y = 1 + 2 * x + rng.standard_normal(outer_m)[outer] + 0.5 * rng.standard_normal(inner.max() + 1)[inner] \
        + rng.standard_normal(n)
    groups = pd.DataFrame({"outer": outer, "inner": inner})
    tracemalloc.start()
    est = MixedLMRegressor().fit(x[:, None], y, groups=groups)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    n_levels = outer_m + int(inner.max()) + 1
    assert est.model_.deviance.plan.dense is None
    assert peak < 1_000 * (n + n_levels), peak  # measured: 54 MB, 2.5e2 bytes per row and level
    assert est.converged_ and not est.singular_

    # the REML log-likelihood at the fit's estimates, outer group by outer group
    order = np.argsort(outer, kind="stable")
    sizes = np.bincount(outer)
    k = sizes.max()
    slot = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # position within its group
    cell = (outer[order], slot)
    Xf = np.zeros((outer_m, k, 2))
    Xf[cell] = np.column_stack([np.ones(n), x])[order]
    yf = np.zeros((outer_m, k))
    yf[cell] = y[order]
    inn = np.full((outer_m, k), -1)
    inn[cell] = inner[order]
    real = inn >= 0
    s2, v_o, v_i = est.scale_, est.cov_re_["outer"][0, 0], est.cov_re_["inner"][0, 0]
    V = (v_o * (real[:, :, None] & real[:, None, :]) + v_i * (real[:, :, None] & (inn[:, :, None] == inn[:, None, :]))
         + np.eye(k) * np.where(real, s2, 1.0)[:, :, None])
    r = yf - Xf @ est.fe_params_.to_numpy()
    logdet = np.linalg.slogdet(V)[1].sum()
    quad = np.einsum("gi,gi->", r, np.linalg.solve(V, r[..., None])[..., 0])
    xvx = np.einsum("gia,gib->ab", Xf, np.linalg.solve(V, Xf))
    llf = -0.5 * (n * np.log(2 * np.pi) + logdet + quad) + np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(xvx)[1]
    assert est.llf_ == pytest.approx(llf, rel=1e-9)
    # and the simulated variances (1, 0.25, 1) are recovered
    np.testing.assert_allclose([v_o, v_i, s2], [1.0, 0.25, 1.0], rtol=0.06)
