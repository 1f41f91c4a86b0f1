"""Inference for several grouping factors (issue 5) and heteroscedastic residuals (issue 6).

References:
* lme4's profile intervals of Penicillin, ``diameter ~ 1 + (1|plate) + (1|sample)`` by ML:
  lme4's own regression test (lme4/lme4, tests/profile.R, ``lme4a_CIpr2``). REML fits are
  profiled on the ML deviance, so the REML fit has the same intervals.
* Satterthwaite df of the intercept of a balanced crossed or nested design: the classical
  Satterthwaite df of the mean squares that estimate ``Var(mean)``, which lmerTest's df
  reproduce when the REML estimates are the ANOVA estimates (all interior).
* A dense brute-force likelihood (no sufficient statistics, no shared code) for the
  profile bounds and for the Satterthwaite df of a heteroscedastic fit.
* A single-factor model fitted through the crossed path must give what the single-factor
  path gives, and lme4's single-factor references.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from _oracle import profiled_dense_loglik
from _reference import load_case, single_factor_arrays
from scipy import optimize, stats
from threadpoolctl import threadpool_limits

from mixedlm_sklearn import MixedLMRegressor, SingularFitWarning, lr_test
from mixedlm_sklearn.inference import satterthwaite_df, wald_test

Z95 = stats.norm.ppf(0.975)

# lme4/lme4 tests/profile.R: confint(profile(fm2ML)) for Penicillin (sigma given there as log).
LME4_PENICILLIN_PROFILE = {
    "sd_(Intercept)|plate": (0.633565787613112, 1.1821039843372),
    "sd_(Intercept)|sample": (1.09578224011285, 3.55631937954106),
    "sigma": (np.exp(-0.721864513060904), np.exp(-0.462903300019305)),
    "(Intercept)": (21.2666273835452, 24.6778176174587),
}


def _crossed_case(name):
    df, ref = load_case(name)
    factors = [c for c in df.columns if c[0] == "g" and c[1:].isdigit()]
    groups = df[factors].set_axis([t["group"] for t in ref["terms"]], axis=1)
    names = [ref["x_names"]] if isinstance(ref["x_names"], str) else ref["x_names"]
    X = df.filter(regex="^X_").set_axis(names, axis=1)
    return X, df["y"].to_numpy(float), groups, ref


def _fit(X, y, groups, reml=True, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        return MixedLMRegressor(reml=reml, fit_intercept=False).fit(X, y, groups=groups, **kw)


@pytest.fixture(scope="module")
def penicillin():
    X, y, groups, ref = _crossed_case("penicillin_crossed_reml")
    return X, y, groups, ref, _fit(X, y, groups), _fit(X, y, groups, reml=False)


def _dense_deviance_penicillin(y, groups):
    """ML deviance of (sd_plate, sd_sample, sigma), beta by GLS, from the dense n x n V."""
    Zp = pd.get_dummies(groups["plate"]).to_numpy(float)
    Zs = pd.get_dummies(groups["sample"]).to_numpy(float)
    Pp, Ps, n = Zp @ Zp.T, Zs @ Zs.T, len(y)
    X = np.ones((n, 1))

    def deviance(sd_plate, sd_sample, sigma):
        V = sd_plate**2 * Pp + sd_sample**2 * Ps + sigma**2 * np.eye(n)
        C = np.linalg.cholesky(V)
        vi_x = np.linalg.solve(V, X)
        r = y - X @ np.linalg.solve(X.T @ vi_x, vi_x.T @ y)
        return n * np.log(2 * np.pi) + 2 * np.log(np.diag(C)).sum() + r @ np.linalg.solve(V, r)

    return deviance


# ---- several grouping factors: profiles --------------------------------------------------


def test_penicillin_profile_intervals_match_lme4(penicillin):
    X, y, groups, ref, reml, ml = penicillin
    for est in (reml, ml):
        ci = est.conf_int(method="profile")
        assert list(ci.index) == list(LME4_PENICILLIN_PROFILE)
        for name, (lower, upper) in LME4_PENICILLIN_PROFILE.items():
            width = upper - lower
            # lme4 reads its bounds off an interpolating spline: 5e-5 off at one bound
            # (sample's lower, see the brute-force test); all others agree to 2e-6.
            assert abs(ci.loc[name, "lower"] - lower) < 1e-4 * width, name
            assert abs(ci.loc[name, "upper"] - upper) < 1e-4 * width, name
    np.testing.assert_allclose(reml.conf_int(method="profile").to_numpy(),
                               ml.conf_int(method="profile").to_numpy(), rtol=1e-6)


def test_penicillin_profile_bounds_by_brute_force(penicillin):
    X, y, groups, ref, reml, ml = penicillin
    deviance = _dense_deviance_penicillin(y, groups)
    nm = {"xatol": 1e-9, "fatol": 1e-11, "maxiter": 4000}
    with threadpool_limits(limits=1):
        best = optimize.minimize(lambda v: deviance(*v), [0.85, 1.77, 0.55], method="Nelder-Mead",
                                 options=nm)
        # the ML fit of the crossed path is the dense optimum
        assert -2.0 * ml.llf_ == pytest.approx(best.fun, abs=1e-7)

        def zeta(sd_sample, sign):
            res = optimize.minimize(lambda v: deviance(v[0], sd_sample, v[1]), best.x[[0, 2]],
                                    method="Nelder-Mead", options=nm)
            return sign * np.sqrt(res.fun - best.fun)

        ci = ml.conf_int(method="profile", which="sd_(Intercept)|sample")
        lower, upper = ci.iloc[0]
        assert zeta(lower, -1) == pytest.approx(-Z95, abs=1e-5)
        assert zeta(upper, 1) == pytest.approx(Z95, abs=1e-5)
        # lme4's lower bound is beyond the cutoff: ours is the better root
        assert abs(zeta(LME4_PENICILLIN_PROFILE["sd_(Intercept)|sample"][0], -1) + Z95) > 1e-4


def test_crossed_profile_curves(penicillin):
    X, y, groups, ref, reml, ml = penicillin
    prof = reml.profile(n_points=7)
    assert list(prof["param"].unique()) == list(LME4_PENICILLIN_PROFILE)
    ml_values = {"sd_(Intercept)|plate": np.sqrt(ml.cov_re_["plate"][0, 0]),
                 "sd_(Intercept)|sample": np.sqrt(ml.cov_re_["sample"][0, 0]),
                 "sigma": np.sqrt(ml.scale_), "(Intercept)": ml.fe_params_.iloc[0]}
    for name, curve in prof.groupby("param", sort=False):
        value, zeta = curve["value"].to_numpy(), curve["zeta"].to_numpy()
        assert np.all(np.diff(value) > 0) and np.all(np.diff(zeta) > 0), name
        # zeta is 0 at the ML estimate (the REML fit is refitted by ML)
        assert zeta[3] == 0.0 and value[3] == pytest.approx(ml_values[name], rel=1e-5), name
        assert zeta[0] == pytest.approx(-stats.norm.ppf(0.995), abs=1e-5)


def test_nested_profile_brackets_the_estimates():
    X, y, groups, ref = _crossed_case("pastes_nested_reml")
    est = _fit(X, y, groups, reml=False)
    ci = est.conf_int(method="profile")
    assert list(ci.index) == ["sd_(Intercept)|batch", "sd_(Intercept)|bc", "sigma", "(Intercept)"]
    estimates = [np.sqrt(est.cov_re_["batch"][0, 0]), np.sqrt(est.cov_re_["bc"][0, 0]),
                 np.sqrt(est.scale_), est.fe_params_.iloc[0]]
    assert np.all(ci["lower"] <= estimates) and np.all(estimates < ci["upper"])
    # the batch variance's profile stays above the cutoff down to 0: the bound is exactly 0
    assert ci.loc["sd_(Intercept)|batch", "lower"] == 0.0
    prof = est.profile(which="sd_(Intercept)|batch", n_points=5)
    assert prof["value"].iloc[0] == 0.0 and -Z95 < prof["zeta"].iloc[0] < 0.0
    # the profile bounds of the fixed effect are close to the Wald interval for this
    # nearly balanced design, but wider (the variance uncertainty enters)
    wald = est.conf_int()
    lower, upper = ci.loc["(Intercept)"]
    assert lower < wald.iloc[0, 0] < wald.iloc[0, 1] < upper


# ---- several grouping factors: Satterthwaite -----------------------------------------------


def test_penicillin_satterthwaite_is_the_balanced_anova_df(penicillin):
    X, y, groups, ref, reml, ml = penicillin
    Y = pd.DataFrame({"y": y, "p": groups["plate"], "s": groups["sample"]}).pivot(
        index="p", columns="s", values="y").to_numpy()
    a, b = Y.shape  # 24 plates x 6 samples, one observation per cell
    mean = Y.mean()
    ms_plate = b * ((Y.mean(1) - mean) ** 2).sum() / (a - 1)
    ms_sample = a * ((Y.mean(0) - mean) ** 2).sum() / (b - 1)
    resid = Y - Y.mean(1)[:, None] - Y.mean(0)[None, :] + mean
    ms_error = (resid**2).sum() / ((a - 1) * (b - 1))
    # Var(mean) = (ms_plate + ms_sample - ms_error) / (a b)
    expected = (ms_plate + ms_sample - ms_error) ** 2 / (
        ms_plate**2 / (a - 1) + ms_sample**2 / (b - 1) + ms_error**2 / ((a - 1) * (b - 1)))
    df = satterthwaite_df(reml)
    assert df == pytest.approx([expected], rel=1e-5)
    fe = reml.summary().fixed_effects
    assert fe["df"].iloc[0] == df[0]
    p_expected = 2 * stats.t.sf(fe["t_value"].iloc[0], expected)
    assert fe["p_value"].iloc[0] == pytest.approx(p_expected, rel=1e-4)


def test_nested_satterthwaite_is_the_batch_df():
    # Pastes: 10 batches x 3 casks x 2 samples; Var(mean) = MS_batch / 60, on 9 df
    X, y, groups, ref = _crossed_case("pastes_nested_reml")
    est = _fit(X, y, groups)
    assert satterthwaite_df(est) == pytest.approx([9.0], rel=1e-5)
    res = wald_test(est, "(Intercept)", rhs=[60.0])
    assert res.df_denom == pytest.approx(9.0, rel=1e-5)
    t = (est.fe_params_.iloc[0] - 60.0) / est.bse_.iloc[0]
    assert res.statistic == pytest.approx(t**2, rel=1e-10)


# ---- a single factor through the crossed path ------------------------------------------------


@pytest.mark.parametrize("name", ["sleepstudy_slopes_reml", "dyestuff2_singular_reml"])
def test_single_factor_through_the_crossed_path(name):
    case = single_factor_arrays(name)
    single = _fit(case["X"], case["y"], case["groups"], reml=case["reml"], Z=case["Z"])
    crossed = _fit(case["X"], case["y"], pd.DataFrame({"group": case["groups"]}),
                   reml=case["reml"], Z={"group": case["Z"]})
    assert isinstance(crossed.n_groups_, dict)
    # Satterthwaite: the same, and lmerTest's
    df_single, df_crossed = satterthwaite_df(single), satterthwaite_df(crossed)
    np.testing.assert_allclose(df_crossed, df_single, rtol=1e-4)
    np.testing.assert_allclose(df_crossed, case["satterthwaite_df"], rtol=1e-3)
    # profiles: same names and bounds, and lme4's
    ci_single = single.conf_int(method="profile")
    ci_crossed = crossed.conf_int(method="profile")
    assert list(ci_crossed.index) == list(ci_single.index)
    ref = case["profile_ci"]
    width = (ref["upper"] - ref["lower"]).astype(float)
    for side in ("lower", "upper"):
        gap = np.abs(ci_crossed[side].to_numpy() - ci_single[side].to_numpy())
        assert np.all(gap < 1e-4 * width)
        assert np.all(np.abs(ci_crossed[side].to_numpy() - ref[side]) < 0.01 * width)
    # summary tables agree
    s_single, s_crossed = single.summary(), crossed.summary()
    pd.testing.assert_frame_equal(s_crossed.random_effects, s_single.random_effects,
                                  check_exact=False, rtol=1e-5, atol=1e-8)
    assert s_crossed.n_groups == s_single.n_groups and s_crossed.n_obs == s_single.n_obs


# ---- several grouping factors: summary and LR tests -----------------------------------------


def test_crossed_summary(penicillin):
    X, y, groups, ref, reml, ml = penicillin
    s = reml.summary()
    re = s.random_effects
    assert list(re["group"]) == ["plate", "sample", "Residual"]
    for term in ref["terms"]:
        row = re[re["group"] == term["vc_key"]].iloc[0]
        assert row["variance"] == pytest.approx(term["cov_re"][0][0], rel=1e-4)
        assert row["std_dev"] == pytest.approx(np.sqrt(term["cov_re"][0][0]), rel=1e-4)
    assert re["variance"].iloc[-1] == pytest.approx(ref["scale"], rel=1e-4)
    assert s.n_groups == {"plate": 24, "sample": 6} and s.n_obs == 144
    assert (s.aic, s.bic, s.df_model) == (reml.aic_, reml.bic_, 4)
    assert abs(s.llf - ref["llf"]) < 1e-6
    text = str(s)
    for piece in ["plate (24), sample (6)", "plate", "sample", "Residual", "(Intercept)",
                  "Satterthwaite", f"{ref['aic']:.4f}"]:
        assert piece in text, piece
    assert s._repr_html_().count("<table>") == 2


def test_lr_test_single_factor_against_crossed(penicillin):
    X, y, groups, ref, reml, ml = penicillin
    plate_only = _fit(X, y, groups["plate"], reml=False)
    res = lr_test(plate_only, ml)
    assert res.df == 1
    assert res.statistic == pytest.approx(2 * (ml.llf_ - plate_only.llf_), rel=1e-12)
    assert res.pvalue == pytest.approx(stats.chi2.sf(res.statistic, 1), rel=1e-12)
    # the plate-only model fitted through the crossed path: the same test
    plate_crossed = _fit(X, y, groups[["plate"]], reml=False, Z={"plate": np.ones((len(y), 1))})
    assert lr_test(plate_crossed, ml).statistic == pytest.approx(res.statistic, rel=1e-9)
    # the dense likelihood of the plate-only model at its estimates
    codes = pd.factorize(groups["plate"])[0]
    dense = profiled_dense_loglik(np.ones((len(y), 1)), y, np.ones((len(y), 1)), codes,
                                  plate_only.cov_re_, plate_only.scale_, reml=False)[0]
    assert plate_only.llf_ == pytest.approx(dense, abs=1e-8)
    # REML: same fixed effects, so the REML likelihoods compare
    plate_reml = _fit(X, y, groups["plate"])
    assert lr_test(plate_reml, reml).statistic == pytest.approx(2 * (reml.llf_ - plate_reml.llf_))
    with pytest.raises(ValueError, match="REML"):
        lr_test(plate_reml, ml)


def test_lr_test_crossed_refuses_different_data(penicillin):
    X, y, groups, ref, reml, ml = penicillin
    shifted = _fit(X, y + 1.0, groups["plate"], reml=False)
    with pytest.raises(ValueError, match="different data.*y differs"):
        lr_test(shifted, ml)
    relabelled = _fit(X, y, groups["plate"].replace({"a": "zz"}), reml=False)
    with pytest.raises(ValueError, match="grouping factor 'plate'"):
        lr_test(relabelled, ml)
    fewer = _fit(X.iloc[:-6], y[:-6], groups.iloc[:-6], reml=False)
    with pytest.raises(ValueError, match="observations"):
        lr_test(fewer, ml)


# ---- heteroscedastic residuals -------------------------------------------------------------


def _orthodont():
    df, ref = load_case("orthodont_varident_reml")
    X = df.filter(regex="^X_").to_numpy()
    Z = df.filter(regex="^Z_").to_numpy()
    return df, X, Z, ref


def _with_strata(est):
    """The fit keeps its strata (the cross-products of each) for inference on the ratios."""
    assert list(est.model_.strata) == ["Female", "Male"]
    assert est.model_.cross_products.n_strata == 2
    return est


@pytest.fixture(scope="module")
def orthodont_fits():
    df, X, Z, ref = _orthodont()
    fit = lambda reml, **kw: MixedLMRegressor(reml=reml, fit_intercept=False).fit(
        X, df["y"], groups=df["group"], Z=Z, **kw)
    return {
        "hom": fit(True),
        "het_strata": _with_strata(fit(True, residual_groups=df["stratum"])),
        "het_ml": _with_strata(fit(False, residual_groups=df["stratum"])),
        "ref": ref,
    }


def test_heteroscedastic_summary_has_a_residual_per_stratum(orthodont_fits):
    est, ref = orthodont_fits["het_strata"], orthodont_fits["ref"]
    s = est.summary()
    re = s.random_effects
    assert list(re["group"]) == ["group", "Residual (Female)", "Residual (Male)"]
    for label, value in ref["residual_var_by_stratum"].items():
        row = re[re["group"] == f"Residual ({label})"].iloc[0]
        assert row["variance"] == pytest.approx(value, rel=1e-3)
        assert row["std_dev"] == pytest.approx(np.sqrt(value), rel=1e-3)
    assert re["variance"].iloc[0] == pytest.approx(ref["cov_re"][0][0], rel=1e-3)
    assert s.df_model == 5 and abs(s.llf - ref["llf"]) < 1e-5
    text = str(s)
    assert "Residual (Female)" in text and "Residual (Male)" in text
    fe = s.fixed_effects
    assert s.ddf == "Satterthwaite" and np.all(np.isfinite(fe["df"]))
    assert "Satterthwaite df)" in text


def test_heteroscedastic_lr_test(orthodont_fits):
    hom, ref = orthodont_fits["hom"], orthodont_fits["ref"]
    for key in ("het_strata",):
        het = orthodont_fits[key]
        res = lr_test(hom, het)
        assert res.df == 1  # one variance ratio
        assert res.statistic == pytest.approx(2 * (het.llf_ - hom.llf_), rel=1e-12)
        assert abs(res.llf_full - ref["llf"]) < 1e-5
        assert res.pvalue == pytest.approx(stats.chi2.sf(res.statistic, 1), rel=1e-12)
    with pytest.raises(ValueError, match="smaller"):
        lr_test(orthodont_fits["het_strata"], hom)
    # ML against REML is refused as for any fits
    with pytest.raises(ValueError, match="REML and the other ML"):
        lr_test(hom, orthodont_fits["het_ml"])


def test_heteroscedastic_lr_test_checks_the_data_with_the_strata(orthodont_fits):
    df, X, Z, ref = _orthodont()
    shifted = MixedLMRegressor(fit_intercept=False).fit(X, df["y"] + 1.0, groups=df["group"], Z=Z)
    with pytest.raises(ValueError, match="y differs row by row"):
        lr_test(shifted, orthodont_fits["het_strata"])
    # fewer columns of X: REML fits that differ in their fixed effects are refused
    no_age = MixedLMRegressor(fit_intercept=False).fit(X[:, :1], df["y"], groups=df["group"], Z=Z)
    with pytest.raises(ValueError, match="different fixed effects"):
        lr_test(no_age, orthodont_fits["het_strata"])


def test_heteroscedastic_wald(orthodont_fits):
    est, ref = orthodont_fits["het_strata"], orthodont_fits["ref"]
    ci = est.conf_int()
    se = np.asarray(ref["bse_fe"])
    np.testing.assert_allclose(ci["lower"], np.asarray(ref["fe_params"]) - Z95 * se, rtol=1e-4)
    np.testing.assert_allclose(ci["upper"], np.asarray(ref["fe_params"]) + Z95 * se, rtol=1e-4)
    res = wald_test(est, "x1", ddf="chi2")
    assert res.statistic == pytest.approx((est.fe_params_["x1"] / est.bse_["x1"]) ** 2, rel=1e-12)


def _dense_het(df, X, Z):
    """Dense REML/ML deviance in (sd_b, sigma_ref, delta) of the varIdent model, and Cov(beta)."""
    codes = pd.factorize(df["group"])[0]
    male = (df["stratum"] == "Male").to_numpy()
    y = df["y"].to_numpy(float)

    def weights(delta):
        return np.where(male, 1.0 / delta**2, 1.0)

    def deviance(v, reml):
        sd_b, sigma, delta = v
        return -2.0 * profiled_dense_loglik(X, y, Z, codes, np.array([[sd_b**2]]), sigma**2,
                                            reml=reml, weights=weights(delta))[0]

    def cov_beta(v):
        sd_b, sigma, delta = v
        same = codes[:, None] == codes[None, :]
        V = same * sd_b**2 * (Z @ Z.T) + np.diag(sigma**2 / weights(delta))
        return np.linalg.inv(X.T @ np.linalg.solve(V, X))

    return deviance, cov_beta


def test_heteroscedastic_satterthwaite_by_brute_force(orthodont_fits):
    est = orthodont_fits["het_strata"]
    df, X, Z, ref = _orthodont()
    deviance, cov_beta = _dense_het(df, X, Z)
    x0 = np.array([np.sqrt(est.cov_re_[0, 0]), np.sqrt(est.scale_),
                   np.sqrt(est.residual_var_["Male"] / est.residual_var_["Female"])])
    h = 1e-3 * x0
    E = np.diag(h)
    f = lambda v: deviance(v, reml=True)
    with threadpool_limits(limits=1):
        H = np.empty((3, 3))
        for i in range(3):
            for j in range(3):
                H[i, j] = (f(x0 + E[i] + E[j]) - f(x0 + E[i] - E[j]) - f(x0 - E[i] + E[j])
                           + f(x0 - E[i] - E[j])) / (4 * h[i] * h[j])
        J = np.stack([(cov_beta(x0 + E[k]) - cov_beta(x0 - E[k])) / (2 * h[k]) for k in range(3)])
        C = cov_beta(x0)
    np.testing.assert_allclose(C, est.cov_fe_, rtol=1e-6)
    V = 2.0 * np.linalg.inv(H)
    expected = [2 * C[j, j] ** 2 / (J[:, j, j] @ V @ J[:, j, j]) for j in range(2)]
    np.testing.assert_allclose(satterthwaite_df(est), expected, rtol=1e-4)
    # treating the ratio as known would give other df: the ratio's uncertainty matters
    known = [2 * C[j, j] ** 2 / (J[:2, j, j] @ (2.0 * np.linalg.inv(H[:2, :2])) @ J[:2, j, j])
             for j in range(2)]
    assert np.all(np.abs(np.array(known) / expected - 1) > 0.02)
    # a contrast: the F test's df
    L = np.array([[1.0, 10.0]])
    g = np.einsum("i,kij,j->k", L[0], J, L[0])
    expected_l = 2 * (L[0] @ C @ L[0]) ** 2 / (g @ V @ g)
    assert wald_test(est, L).df_denom == pytest.approx(expected_l, rel=1e-4)


def test_heteroscedastic_profile(orthodont_fits):
    reml, ml = orthodont_fits["het_strata"], orthodont_fits["het_ml"]
    ratio = "sigma_Male/sigma_Female"
    ci = reml.conf_int(method="profile")
    assert list(ci.index) == ["sd_z0|group", "sigma", ratio, "x0", "x1"]
    np.testing.assert_allclose(ci.to_numpy(), ml.conf_int(method="profile").to_numpy(), rtol=1e-5)
    # zeta is 0 at the ML estimates, and the intervals bracket them
    delta_ml = np.sqrt(ml.residual_var_["Male"] / ml.residual_var_["Female"])
    prof = reml.profile(which=[ratio, "sigma"], n_points=5)
    at_zero = prof[prof["zeta"] == 0.0].set_index("param")["value"]
    assert at_zero[ratio] == pytest.approx(delta_ml, rel=1e-5)
    assert at_zero["sigma"] == pytest.approx(np.sqrt(ml.scale_), rel=1e-5)
    assert ci.loc[ratio, "lower"] < delta_ml < ci.loc[ratio, "upper"]
    for _, curve in prof.groupby("param"):
        assert np.all(np.diff(curve["zeta"].to_numpy()) > 0)
    # the bounds of the ratio by the dense ML deviance, minimised over (sd_b, sigma)
    df, X, Z, ref = _orthodont()
    deviance, _ = _dense_het(df, X, Z)
    nm = {"xatol": 1e-8, "fatol": 1e-10, "maxiter": 2000}
    start = np.array([np.sqrt(ml.cov_re_[0, 0]), np.sqrt(ml.scale_)])
    dev_min = deviance(np.append(start, delta_ml), reml=False)
    assert dev_min == pytest.approx(-2.0 * ml.llf_, abs=1e-7)
    with threadpool_limits(limits=1):
        for bound in ci.loc[ratio]:
            res = optimize.minimize(lambda v: deviance([v[0], v[1], bound], reml=False), start,
                                    method="Nelder-Mead", options=nm)
            assert res.fun - dev_min == pytest.approx(Z95**2, abs=1e-4)
    # the fixed effects' profile intervals are wider than their Wald intervals here
    wald = reml.conf_int()
    assert np.all(ci.loc[["x0", "x1"], "lower"] < wald["lower"])
    assert np.all(ci.loc[["x0", "x1"], "upper"] > wald["upper"])
