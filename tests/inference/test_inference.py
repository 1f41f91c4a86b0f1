"""Inference against lme4 1.1-31 and lmerTest: every single-factor reference, several
grouping factors and heteroscedastic residuals.

Targets: standard errors and Wald intervals within 1e-4 relative, Satterthwaite df within
1e-3 relative (and their p-values), profile-interval bounds within 1% of the interval's
width, LR statistics within 1e-4, log-likelihood/AIC/BIC within 1e-6.
"""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from _dense import profiled_dense_loglik, profiled_dense_ml_deviance
from _reference import SINGLE_FACTOR_CASES, fit_single_factor, load_case, reference_path, single_factor_arrays
from scipy import optimize, stats
from threadpoolctl import threadpool_limits

from mixedlm_sklearn import MixedLMRegressor, SingularFitWarning
from mixedlm_sklearn.datasets import load_sleepstudy
from mixedlm_sklearn.inference import Summary, lr_test, satterthwaite_df, wald_test

Z95 = stats.norm.ppf(0.975)
FIXED_COLUMNS = ["estimate", "std_error", "df", "t_value", "p_value", "ci_lower", "ci_upper"]

# Reference profile bounds that are lme4 failures, not profile bounds; each is checked
# against the dense brute-force likelihood in test_orthodont_sigma_profile_by_brute_force.
# Orthodont (age | Subject): along sigma's profile the optimal correlation jumps from
# about -0.3 to the boundary +1 (between sigma = 1.4 and 1.5); lme4's profile breaks
# there: its upper bound is Inf (the deviance diverges as sigma grows, so a finite bound
# exists), and its lower bound 1.2036 has zeta = -0.91 on the true profile.
LME4_PROFILE_FAILURES = {
    ("orthodont_slopes_ml", "sigma", "lower"),
    ("orthodont_slopes_ml", "sigma", "upper"),
}


_fit = fit_single_factor


@pytest.fixture(scope="module", params=SINGLE_FACTOR_CASES)
def fitted(request):
    case = single_factor_arrays(request.param)
    return case, _fit(case)


@pytest.fixture(scope="module")
def profile_ci(fitted):
    case, est = fitted
    return case, est, est.conf_int(method="profile")


# ---- standard errors, Wald intervals, Satterthwaite ---------------------------------------


def test_standard_errors(fitted):
    case, est = fitted
    np.testing.assert_allclose(est.bse_.to_numpy(), case["bse_fe"], rtol=1e-4)


def test_wald_intervals(fitted):
    case, est = fitted
    ci = est.conf_int()
    assert list(ci.columns) == ["lower", "upper"]
    assert list(ci.index) == list(est.fe_params_.index)
    np.testing.assert_allclose(ci["lower"].to_numpy(), case["wald_ci_fe"]["lower"], rtol=1e-4)
    np.testing.assert_allclose(ci["upper"].to_numpy(), case["wald_ci_fe"]["upper"], rtol=1e-4)


def test_satterthwaite_df_t_and_p(fitted):
    case, est = fitted
    fe = est.summary().fixed_effects
    assert list(fe.columns) == FIXED_COLUMNS
    np.testing.assert_allclose(fe["df"].to_numpy(), case["satterthwaite_df"], rtol=1e-3)
    np.testing.assert_allclose(fe["t_value"].to_numpy(), case["t_values"], rtol=1e-4)
    ref_p = case["satterthwaite_p"]
    # R printed p-values below the double range as 0: ours must underflow there too.
    assert np.all(fe["p_value"].to_numpy()[ref_p == 0] < 1e-300)
    np.testing.assert_allclose(fe["p_value"].to_numpy()[ref_p > 0], ref_p[ref_p > 0], rtol=1e-3)


def test_information_criteria(fitted):
    case, est = fitted
    assert est.df_model_ == case["df_model"]
    for ours, ref in [(est.llf_, case["llf"]), (est.aic_, case["aic"]), (est.bic_, case["bic"])]:
        assert abs(ours - ref) <= 1e-6


def test_summary_tables(fitted):
    case, est = fitted
    s = est.summary(alpha=0.1)
    assert isinstance(s, Summary)
    fe = s.fixed_effects
    np.testing.assert_allclose(fe["estimate"], est.fe_params_, rtol=1e-12)
    np.testing.assert_allclose(fe["std_error"], est.bse_, rtol=1e-12)
    # the interval is the one the t test inverts: it excludes 0 iff p < alpha
    half = stats.t.ppf(0.95, fe["df"]) * fe["std_error"]
    np.testing.assert_allclose(fe["ci_lower"], fe["estimate"] - half, rtol=1e-12)
    np.testing.assert_allclose(fe["ci_upper"], fe["estimate"] + half, rtol=1e-12)
    assert ((fe["ci_lower"] > 0) | (fe["ci_upper"] < 0)).equals(fe["p_value"] < 0.1)

    re = s.random_effects
    assert list(re.columns) == ["group", "name", "name2", "variance", "std_dev", "correlation"]
    q = case["cov_re"].shape[0]
    variances = re[(re["group"] != "Residual") & (re["name2"] == "")]
    np.testing.assert_allclose(variances["variance"], np.diag(case["cov_re"]), rtol=1e-4, atol=1e-10)
    np.testing.assert_allclose(variances["std_dev"] ** 2, variances["variance"], rtol=1e-12)
    cors = re[re["name2"] != ""]
    assert len(cors) == q * (q - 1) // 2
    ref_cov = case["cov_re"]
    for _, row in cors.iterrows():
        names = list(est.model_.terms[0].z_names)
        r, c = names.index(row["name"]), names.index(row["name2"])
        expected = ref_cov[r, c] / np.sqrt(ref_cov[r, r] * ref_cov[c, c])
        assert abs(row["correlation"] - expected) < 1e-4
    residual = re[re["group"] == "Residual"].iloc[0]
    assert residual["variance"] == pytest.approx(case["scale"], rel=1e-4)

    assert s.method == ("REML" if case["reml"] else "ML")
    assert s.n_obs == case["n"] and list(s.n_groups.values()) == [case["n_groups"]]
    assert s.singular == case["singular"]
    assert (s.llf, s.aic, s.bic) == (est.llf_, est.aic_, est.bic_)


def test_summary_renders():
    case = single_factor_arrays("sleepstudy_slopes_reml")
    df = load_sleepstudy()
    Z = pd.DataFrame({"(Intercept)": 1.0, "Days": df["Days"]})
    est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    text = str(est.summary())
    for piece in ["REML", "Subject (18)", "Residual", "(Intercept)", "Days", "Satterthwaite",
                  f"{case['aic']:.4f}", "0.066"]:  # 0.066: lme4's printed correlation
        assert piece in text, piece
    page = est.summary()._repr_html_()
    assert page.count("<table>") == 2 and "Subject" in page and "Pr(&gt;|t|)" in page


# ---- profile likelihood ------------------------------------------------------------------


def test_profile_intervals(profile_ci):
    case, est, ci = profile_ci
    ref = case["profile_ci"]
    group = case["group"]
    # lme4's names, with our names of the columns (the reference was fitted from arrays)
    z_names, x_names = list(est.model_.terms[0].z_names), list(est.fe_params_.index)
    renamed = []
    for name in ref["names"]:
        for ref_name, ours in zip(case["z_names"], z_names):
            name = name.replace(f"_{ref_name}|", f"_{ours}|").replace(f".{ref_name}|", f".{ours}|")
            name = name.replace(f"_{ref_name}.", f"_{ours}.")
        name = name.replace(f"|{group}", "|group")
        renamed.append(x_names[case["x_names"].index(name)] if name in case["x_names"] else name)
    assert list(ci.index) == renamed
    width = ref["upper"].astype(float) - ref["lower"]
    checked = 0
    for i, name in enumerate(ref["names"]):
        for side in ("lower", "upper"):
            if (case["name"], name, side) in LME4_PROFILE_FAILURES:
                continue
            ours, theirs = ci[side].iloc[i], ref[side][i]
            assert abs(ours - theirs) <= 0.01 * width[i], (name, side, ours, theirs)
            checked += 1
    assert checked >= 2 * len(ref["names"]) - 2


def test_profile_boundaries_are_exact(profile_ci):
    case, est, ci = profile_ci
    ref = case["profile_ci"]
    for i, name in enumerate(ref["names"]):
        # where lme4 reports a bound on the parameter's limit, ours is exactly that limit
        if name.startswith("sd_") and ref["lower"][i] == 0:
            assert ci["lower"].iloc[i] == 0.0
        if name.startswith("cor_"):
            for side in ("lower", "upper"):
                if abs(ref[side][i]) == 1:
                    assert ci[side].iloc[i] == ref[side][i]


def test_orthodont_sigma_profile_by_brute_force():
    """The skipped reference bounds are wrong, and ours are right, by the dense likelihood."""
    case = single_factor_arrays("orthodont_slopes_ml")
    est = _fit(case)
    ci = est.conf_int(method="profile", which="sigma")
    lower, upper = ci.loc["sigma"]
    codes = np.unique(case["groups"], return_inverse=True)[1]
    dev_min = -2.0 * est.llf_

    def profiled(sigma, start):
        # ML deviance with sigma fixed, minimised over (sd_1, cor, sd_2); beta by GLS
        def dev(v):
            sd0, sd1, cor = abs(v[0]), abs(v[2]), np.clip(v[1], -1.0, 1.0)
            cov = np.array([[sd0**2, cor * sd0 * sd1], [cor * sd0 * sd1, sd1**2]])
            return -2.0 * profiled_dense_loglik(case["X"], case["y"], case["Z"], codes, cov,
                                                sigma**2, reml=False)[0]
        with threadpool_limits(limits=1):  # 108 x 108 solves: threads only add overhead
            res = optimize.minimize(dev, start, method="Nelder-Mead",
                                    options={"xatol": 1e-6, "fatol": 1e-7, "maxiter": 2000})
        return res.fun - dev_min

    at_estimate = [2.13, -0.60, 0.154]
    # lme4's lower bound 1.2036 is well inside the interval: |zeta| < 1 there
    assert profiled(1.20364687536162, at_estimate) < 1.0
    # ours sit where the deviance has risen by exactly the chi2(1) cutoff; the upper one
    # only with the correlation at +1, the branch lme4 lost
    assert profiled(lower, at_estimate) == pytest.approx(Z95**2, abs=2e-3)
    assert profiled(upper, [1.3, 0.99, 0.036]) == pytest.approx(Z95**2, abs=2e-3)
    assert profiled(upper, at_estimate) >= Z95**2 - 2e-3
    assert 1.0 < lower < 1.2 and 1.5 < upper < 1.7


# ---- three correlated random effects: every endpoint by brute force ------------

def _three_levels(seed: int, sd_last: float = 1.5):
    """A random effect per level of a 3-level factor, 6 groups, 3 replicates per cell:
    ``y ~ cond + (0 + cond | group)``; the first two levels' effects correlate at -0.9."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(6), 9)
    Z = np.eye(3)[np.tile(np.repeat(np.arange(3), 3), 6)]
    R = np.array([[1.0, -0.9, 0.3], [-0.9, 1.0, 0.1], [0.3, 0.1, 1.0]])
    sd = [3.0, 2.0, sd_last]
    b = rng.multivariate_normal(np.zeros(3), np.outer(sd, sd) * R, 6)
    y = 50.0 + Z @ [0.0, 2.0, -1.0] + np.einsum("ij,ij->i", Z, b[g]) + rng.standard_normal(g.size)
    return Z[:, 1:], y, Z, g


class _BruteProfile:
    """ML deviance with one of ``(sd_0, cor_10, cor_20, sd_1, cor_21, sd_2, sigma)`` fixed,
    minimised over the others by Nelder-Mead from several starts on the dense likelihood
    (beta by GLS). The correlation matrix is written with unit rows ``(1, 0, 0)``,
    ``(cos a, sin a, 0)``, ``(cos b, sin b cos c, sin b sin c)`` (every 3 x 3 correlation
    matrix, singular ones included, and nothing else), ordered so that a fixed correlation
    is ``cos a``: no constraint is left for the minimiser to trip on."""

    NAMES = ["sd_z0|group", "cor_z1.z0|group", "cor_z2.z0|group", "sd_z1|group", "cor_z2.z1|group",
             "sd_z2|group", "sigma"]
    SD = {"sd_z0|group": 0, "sd_z1|group": 1, "sd_z2|group": 2}
    COR = {"cor_z1.z0|group": (1, 0), "cor_z2.z0|group": (2, 0), "cor_z2.z1|group": (2, 1)}

    def __init__(self, X, y, Z, g, est):
        self.args = (np.column_stack([np.ones(len(y)), X]), y, Z, g)
        self.dev_min = -2.0 * est.llf_
        self.sd = np.sqrt(np.diag(est.cov_re_))
        self.R = est.cov_re_ / np.outer(self.sd, self.sd)
        self.sigma = np.sqrt(est.scale_)

    @staticmethod
    def _corr(a, b, c):
        L = np.array([[1.0, 0.0, 0.0], [np.cos(a), np.sin(a), 0.0],
                      [np.cos(b), np.sin(b) * np.cos(c), np.sin(b) * np.sin(c)]])
        return L @ L.T

    @staticmethod
    def _angles(R):
        a, b = np.arccos(np.clip(R[1, 0], -1, 1)), np.arccos(np.clip(R[2, 0], -1, 1))
        den = np.sin(a) * np.sin(b)
        c = np.arccos(np.clip((R[2, 1] - np.cos(a) * np.cos(b)) / den, -1, 1)) if den > 1e-12 else 0.0
        return [a, b, c]

    def __call__(self, name: str, value: float) -> float:
        """Profile deviance increase at ``name = value``."""
        i, j = self.COR.get(name, (1, 0))
        perm = [j, i, 3 - i - j]
        inv = np.argsort(perm)
        n_sd = 2 if name in self.SD else 3

        def unpack(z):
            sd = np.exp(z[:n_sd])
            if name in self.SD:
                sd = np.insert(sd, self.SD[name], value)
            sigma, angles = (value, z[n_sd:]) if name == "sigma" else (np.exp(z[-1]), z[n_sd:-1])
            if name in self.COR:
                angles = [np.arccos(value), *angles]
            return sd, self._corr(*angles)[np.ix_(inv, inv)], sigma

        def deviance(z):
            sd, R, sigma = unpack(z)
            return profiled_dense_ml_deviance(*self.args, np.outer(sd, sd) * R, sigma**2)

        best = np.inf
        for shrink in (1.0, 0.0):  # the estimate, and the same with its correlations at 0
            R = shrink * self.R + (1 - shrink) * np.eye(3)
            sd = [s for k, s in enumerate(self.sd) if name not in self.SD or k != self.SD[name]]
            angles = self._angles(R[np.ix_(perm, perm)])[1 if name in self.COR else 0:]
            z = np.array([*np.log(sd), *angles] + ([] if name == "sigma" else [np.log(self.sigma)]))
            with threadpool_limits(limits=1):
                for _ in range(3):  # restarted: Nelder-Mead's simplex collapses
                    res = optimize.minimize(deviance, z, method="Nelder-Mead", options={
                        "xatol": 1e-10, "fatol": 1e-12, "maxfev": 20000, "adaptive": True})
                    z = res.x
            best = min(best, res.fun)
        return best - self.dev_min


@pytest.mark.parametrize("seed", [1, 3])
def test_three_correlated_effects_profile_endpoints_by_brute_force(seed):
    """Every endpoint of every variance parameter's interval lies where the brute-force
    profile deviance has risen by the chi2(1) cutoff. Seed 3's correlation of the first two
    effects profiles to -0.9987, seed 1's below the cutoff all the way to -1."""
    X, y, Z, g = _three_levels(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        est = MixedLMRegressor(reml=False).fit(X, y, groups=g, Z=Z)
    ci = est.conf_int(method="profile", which="variance")
    assert list(ci.index) == _BruteProfile.NAMES
    brute = _BruteProfile(X, y, Z, g, est)
    for name in _BruteProfile.NAMES:
        for side in ("lower", "upper"):
            value = ci.loc[name, side]
            if abs(value) == 1.0:
                continue
            assert brute(name, value) == pytest.approx(Z95**2, abs=1e-4), (name, side, value)
    # a correlation interval ends at exactly -1 only where the profile stays below the cutoff
    # all the way to it
    lower = ci.loc["cor_z1.z0|group", "lower"]
    if seed == 1:
        assert lower == -1.0
        assert all(brute("cor_z1.z0|group", r) < Z95**2 for r in (-0.9, -0.99, -1.0))
    else:
        assert -0.9995 < lower < -0.998
        assert brute("cor_z1.z0|group", -1.0) > Z95**2


def test_profile_endpoints_at_a_zero_variance_and_near_a_perfect_correlation_by_brute_force():
    """Each endpoint, found from the neighbouring profile points alone and confirmed from
    the other starts, is where the brute-force profile deviance (several starts on the
    dense likelihood) has risen by the chi2(1) cutoff, or a limit the profile stays below
    the cutoff up to: here the third effect's standard deviation profiles down to 0, the
    first two effects' correlation to -0.978 (near -1), and the third effect's
    correlations across all of [-1, 1]. The fixed effects too (beta_j held: the response
    less b x_j, GLS on the other columns)."""
    X, y, Z, g = _three_levels(7, sd_last=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        est = MixedLMRegressor(reml=False).fit(X, y, groups=g, Z=Z)
    ci = est.conf_int(method="profile")
    brute = _BruteProfile(X, y, Z, g, est)
    for name in _BruteProfile.NAMES:
        for side in ("lower", "upper"):
            value = ci.loc[name, side]
            if value == 0.0 or abs(value) == 1.0:
                assert brute(name, value) < Z95**2, (name, side, value)
            else:
                assert brute(name, value) == pytest.approx(Z95**2, abs=1e-4), (name, side, value)
    assert ci.loc["sd_z2|group", "lower"] == 0.0
    assert -0.99 < ci.loc["cor_z1.z0|group", "lower"] < -0.96
    assert ci.loc["cor_z2.z0|group"].tolist() == [-1.0, 1.0]
    # the fixed effects: the deviance with beta_j = b is the model of y - b x_j without x_j
    design = np.column_stack([np.ones(len(y)), X])
    for j, name in enumerate(ci.index[len(_BruteProfile.NAMES):]):
        for side in ("lower", "upper"):
            b = ci.loc[name, side]
            held = _BruteProfile(X, y, Z, g, est)
            held.args = (np.delete(design, j, axis=1), y - b * design[:, j], Z, g)
            assert held(name, b) == pytest.approx(Z95**2, abs=1e-4), (name, side, b)


def test_profile_reml_fits_use_ml_deviance():
    # lme4 profiles a REML fit on the ML deviance: zeta is 0 at the ML estimates
    case = single_factor_arrays("dyestuff_reml")
    reml, ml = _fit(case), _fit({**case, "reml": False})
    prof = reml.profile(which=["sd_z0|group", "sigma"], n_points=5)
    at_zero = prof[prof["zeta"] == 0.0].set_index("param")["value"]
    assert at_zero["sd_z0|group"] == pytest.approx(np.sqrt(ml.cov_re_[0, 0]), rel=1e-6)
    assert at_zero["sigma"] == pytest.approx(np.sqrt(ml.scale_), rel=1e-6)
    # and the REML and ML fits have the same profile intervals
    ci_reml = reml.conf_int(method="profile", which="variance")
    ci_ml = ml.conf_int(method="profile", which="variance")
    np.testing.assert_allclose(ci_reml.to_numpy(), ci_ml.to_numpy(), rtol=1e-6)


def test_profile_zeta_curves():
    case = single_factor_arrays("sleepstudy_slopes_ml")
    est = _fit(case)
    which = ["sd_z0|group", "cor_z1.z0|group", "sigma", "x1"]
    prof = est.profile(which=which, n_points=9, alpha_max=0.01)
    assert list(prof.columns) == ["param", "value", "zeta"]
    assert list(prof["param"].unique()) == which
    ci = est.conf_int(method="profile", which=which)
    z_max = stats.norm.ppf(0.995)
    estimates = dict(zip(which, [np.sqrt(est.cov_re_[0, 0]),
                                 est.cov_re_[1, 0] / np.sqrt(est.cov_re_[0, 0] * est.cov_re_[1, 1]),
                                 np.sqrt(est.scale_), est.fe_params_["x1"]]))
    for name, curve in prof.groupby("param", sort=False):
        value, zeta = curve["value"].to_numpy(), curve["zeta"].to_numpy()
        assert len(curve) == 9
        assert np.all(np.diff(value) > 0) and np.all(np.diff(zeta) > 0), name
        assert zeta[4] == 0.0 and value[4] == pytest.approx(estimates[name], rel=1e-6)
        assert zeta[0] == pytest.approx(-z_max, abs=1e-5) and zeta[-1] == pytest.approx(z_max, abs=1e-5)
        # the 95% bounds lie on the curve (linear interpolation on 9 points: 2% of width)
        lo, hi = np.interp([-Z95, Z95], zeta, value)
        width = ci.loc[name, "upper"] - ci.loc[name, "lower"]
        assert abs(lo - ci.loc[name, "lower"]) < 0.02 * width
        assert abs(hi - ci.loc[name, "upper"]) < 0.02 * width


def test_profile_of_a_zero_variance_starts_at_zero():
    case = single_factor_arrays("dyestuff2_singular_reml")
    est = _fit(case)
    prof = est.profile(which="sd_z0|group", n_points=7)
    assert prof["value"].iloc[0] == 0.0 and prof["zeta"].iloc[0] == 0.0
    assert np.all(np.diff(prof["zeta"]) > 0)


def test_conf_int_rejects_bad_arguments():
    est = _fit(single_factor_arrays("dyestuff_reml"))
    with pytest.raises(ValueError, match="method"):
        est.conf_int(method="bootstrap")
    with pytest.raises(ValueError, match="alpha"):
        est.conf_int(alpha=1.5)
    with pytest.raises(ValueError, match="unknown parameter"):
        est.conf_int(method="profile", which=["sd_nothing|group"])


# ---- Wald tests ----------------------------------------------------------------------------


def test_wald_test_single_coefficient_is_the_t_test():
    est = _fit(single_factor_arrays("sleepstudy_slopes_reml"))
    fe = est.summary().fixed_effects
    by_name = wald_test(est, "x1")
    by_matrix = est.wald_test([[0.0, 1.0]])
    for res in (by_name, by_matrix):
        assert res.df_num == 1
        assert res.statistic == pytest.approx(fe.loc["x1", "t_value"] ** 2, rel=1e-10)
        assert res.df_denom == pytest.approx(fe.loc["x1", "df"], rel=1e-10)
        assert res.pvalue == pytest.approx(fe.loc["x1", "p_value"], rel=1e-8)
    # a hypothesis at the estimate: nothing to reject
    at_estimate = est.wald_test(["x1"], rhs=[est.fe_params_["x1"]])
    assert at_estimate.statistic == pytest.approx(0.0, abs=1e-20) and at_estimate.pvalue == 1.0


def test_wald_test_joint_hypothesis():
    case = single_factor_arrays("orthodont_slopes_ml")
    est = _fit(case)
    names = ["x2", "x3"]  # the sex effects on intercept and slope
    chi2 = est.wald_test(names, ddf="chi2")
    b = est.fe_params_[names].to_numpy()
    C = est.cov_fe_[np.ix_([2, 3], [2, 3])]
    assert chi2.statistic * chi2.df_num == pytest.approx(b @ np.linalg.solve(C, b), rel=1e-10)
    assert chi2.pvalue == pytest.approx(stats.chi2.sf(b @ np.linalg.solve(C, b), 2), rel=1e-8)
    F = est.wald_test(names)
    assert F.statistic == pytest.approx(chi2.statistic, rel=1e-12)
    # every contrast of this balanced design has lmerTest's df 27 (the reference), so the
    # F test's denominator df is 27 as well
    assert F.df_denom == pytest.approx(27.0, rel=1e-3)
    assert F.pvalue == pytest.approx(stats.f.sf(F.statistic, 2, F.df_denom), rel=1e-10)
    # a linearly dependent row does not change the test
    dependent = est.wald_test(np.array([[0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 1, 1]]))
    assert dependent.df_num == 2
    assert dependent.statistic == pytest.approx(F.statistic, rel=1e-8)


def test_wald_test_rejects_bad_contrasts():
    est = _fit(single_factor_arrays("sleepstudy_slopes_reml"))
    with pytest.raises(ValueError, match="unknown fixed effect"):
        est.wald_test(["Days"])
    with pytest.raises(ValueError, match="2 columns"):
        est.wald_test([[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="rhs"):
        est.wald_test(["x0", "x1"], rhs=[0.0])


# ---- likelihood-ratio tests -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sleep_fits():
    df = load_sleepstudy()
    Z = pd.DataFrame({"(Intercept)": 1.0, "Days": df["Days"]})
    ones = pd.DataFrame({"(Intercept)": np.ones(len(df))})

    def fit(X, Z=None, reml=False, intercept=True, **kw):
        return MixedLMRegressor(reml=reml, fit_intercept=intercept, **kw).fit(
            X, df["Reaction"], groups=df["Subject"], Z=Z)

    return {
        "slopes": fit(df[["Days"]], Z),
        "intercept": fit(df[["Days"]]),
        "no_days": fit(ones, Z, intercept=False),
        "diagonal": fit(df[["Days"]], Z, cov_type="diagonal"),
        "slopes_reml": fit(df[["Days"]], Z, reml=True),
        "intercept_reml": fit(df[["Days"]], reml=True),
        "no_days_reml": fit(ones, Z, reml=True, intercept=False),
    }


@pytest.mark.parametrize("test, restricted", [("sleepstudy_re_slopes", "intercept"),
                                              ("sleepstudy_fe_days", "no_days")])
def test_lr_statistics_match_lme4(sleep_fits, test, restricted):
    with reference_path("lrt.json").open() as handle:
        ref = json.load(handle)[test]
    res = lr_test(sleep_fits[restricted], sleep_fits["slopes"])
    assert abs(res.statistic - ref["chisq"]) <= 1e-4
    assert res.df == ref["df"]
    assert res.pvalue == pytest.approx(ref["p"], rel=1e-4)
    assert abs(res.llf_restricted - ref["llf_null"]) <= 1e-6
    assert abs(res.llf_full - ref["llf_alt"]) <= 1e-6
    assert not res.boundary


def test_lr_boundary_mixture(sleep_fits):
    # (Days || Subject) against (1 | Subject): one variance on its boundary, df = 1
    plain = lr_test(sleep_fits["intercept"], sleep_fits["diagonal"])
    mixed = lr_test(sleep_fits["intercept"], sleep_fits["diagonal"], boundary=True)
    assert plain.df == 1 and mixed.boundary
    assert mixed.statistic == plain.statistic
    assert mixed.pvalue == pytest.approx(0.5 * stats.chi2.sf(plain.statistic, 1), rel=1e-12)
    # df = 2: the 50:50 mixture of chi2(1) and chi2(2)
    two = lr_test(sleep_fits["intercept"], sleep_fits["slopes"], boundary=True)
    expected = 0.5 * (stats.chi2.sf(two.statistic, 1) + stats.chi2.sf(two.statistic, 2))
    assert two.df == 2 and two.pvalue == pytest.approx(expected, rel=1e-12)


def test_lr_test_reml(sleep_fits):
    with pytest.raises(ValueError, match="reml=False"):
        lr_test(sleep_fits["no_days_reml"], sleep_fits["slopes_reml"])
    with pytest.raises(ValueError, match="reml=False"):
        lr_test(sleep_fits["intercept"], sleep_fits["slopes_reml"])
    # same fixed effects: REML likelihoods compare random effects, as lme4's anova(refit = FALSE)
    res = lr_test(sleep_fits["intercept_reml"], sleep_fits["slopes_reml"])
    expected = 2.0 * (sleep_fits["slopes_reml"].llf_ - sleep_fits["intercept_reml"].llf_)
    assert res.statistic == pytest.approx(expected, rel=1e-12) and res.df == 2


def test_lr_test_refuses_different_data(sleep_fits):
    df = load_sleepstudy()
    shifted = MixedLMRegressor(reml=False).fit(df[["Days"]], df["Reaction"] + 1.0, groups=df["Subject"])
    with pytest.raises(ValueError, match="different data"):
        lr_test(shifted, sleep_fits["slopes"])
    fewer = df.iloc[:170]
    subset = MixedLMRegressor(reml=False).fit(
        fewer[["Days"]], fewer["Reaction"], groups=fewer["Subject"])
    with pytest.raises(ValueError, match="different data"):
        lr_test(subset, sleep_fits["slopes"])
    regrouped = MixedLMRegressor(reml=False).fit(
        df[["Days"]], df["Reaction"], groups=df["Subject"].rename("Subject").replace({"308": "309"}))
    with pytest.raises(ValueError, match="different data"):
        lr_test(regrouped, sleep_fits["slopes"])


def test_lr_test_needs_the_smaller_model_first(sleep_fits):
    with pytest.raises(ValueError, match="smaller"):
        lr_test(sleep_fits["slopes"], sleep_fits["intercept"])
    with pytest.raises(TypeError, match="fitted"):
        lr_test(MixedLMRegressor(), sleep_fits["slopes"])


def test_without_random_effects_the_tests_are_least_squares():
    df = load_sleepstudy()
    with pytest.warns(UserWarning, match="no groups"):
        est = MixedLMRegressor().fit(df[["Days"]], df["Reaction"])
    fe = est.summary().fixed_effects
    X = np.column_stack([np.ones(len(df)), df["Days"]])
    beta, rss = np.linalg.lstsq(X, df["Reaction"], rcond=None)[:2]
    se = np.sqrt(rss[0] / (len(df) - 2) * np.diag(np.linalg.inv(X.T @ X)))
    np.testing.assert_allclose(fe["std_error"], se, rtol=1e-10)
    np.testing.assert_allclose(fe["df"], len(df) - 2, rtol=1e-6)
    np.testing.assert_allclose(fe["p_value"], 2 * stats.t.sf(np.abs(beta / se), len(df) - 2), rtol=1e-5)
    ci = est.conf_int(method="profile")
    assert list(ci.index) == ["sigma", "(Intercept)", "Days"]


# ---- likelihood-ratio tests refuse what is not a comparison of nested fits -------


def _sleep_fits(**cols):
    from mixedlm_sklearn.datasets import load_sleepstudy

    df = load_sleepstudy()
    rng = np.random.default_rng(0)
    df = df.assign(noise1=rng.standard_normal(len(df)), noise2=rng.standard_normal(len(df)))
    return df


def test_lr_test_refuses_models_that_are_not_nested():
    df = _sleep_fits()
    small = MixedLMRegressor(reml=False).fit(df[["noise1"]], df["Reaction"], groups=df["Subject"])
    big = MixedLMRegressor(reml=False).fit(df[["noise2", "Days"]], df["Reaction"], groups=df["Subject"])
    with pytest.raises(ValueError, match="not nested.*fixed effects"):
        lr_test(small, big)
    # random parts: a slope on Days is not within a random intercept for another factor
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    slopes = MixedLMRegressor(reml=False).fit(df[["Days"]], df["Reaction"], groups=df["Subject"], Z=Z)
    other = MixedLMRegressor(reml=False).fit(  # Subject: an intercept only; a slope on another factor
        df[["Days"]], df["Reaction"], groups=pd.DataFrame({"Subject": df["Subject"], "half": df["Days"] > 4}),
        Z={"half": Z})
    assert other.df_model_ > slopes.df_model_
    with pytest.raises(ValueError, match="random-effects term 'Subject'"):
        lr_test(slopes, other)


def test_lr_test_refuses_fits_whose_rows_were_shuffled():
    df = _sleep_fits()
    order = np.random.default_rng(1).permutation(len(df))
    small = MixedLMRegressor(reml=False).fit(df[["noise1"]], df["Reaction"], groups=df["Subject"])
    shuffled_x = df[["noise1", "Days"]].to_numpy()[order]
    big = MixedLMRegressor(reml=False).fit(shuffled_x, df["Reaction"], groups=df["Subject"])
    with pytest.raises(ValueError, match="not nested"):
        lr_test(small, big)
    shuffled = df.iloc[order]
    big2 = MixedLMRegressor(reml=False).fit(shuffled[["noise1", "Days"]], shuffled["Reaction"],
                                            groups=shuffled["Subject"])
    with pytest.raises(ValueError, match="y differs row by row"):
        lr_test(small, big2)
    # the same rows, nested: accepted
    ok = MixedLMRegressor(reml=False).fit(df[["noise1", "Days"]], df["Reaction"], groups=df["Subject"])
    assert lr_test(small, ok).df == 1


# ==== several grouping factors and heteroscedastic residuals ================================
#
# References:
# * lme4's profile intervals of Penicillin, ``diameter ~ 1 + (1|plate) + (1|sample)`` by ML:
#   lme4's own regression test (lme4/lme4, tests/profile.R, ``lme4a_CIpr2``). REML fits are
#   profiled on the ML deviance, so the REML fit has the same intervals.
# * Satterthwaite df of the intercept of a balanced crossed or nested design: the classical
#   Satterthwaite df of the mean squares that estimate ``Var(mean)``, which lmerTest's df
#   reproduce when the REML estimates are the ANOVA estimates (all interior).
# * A dense brute-force likelihood (no sufficient statistics, no shared code) for the
#   profile bounds and for the Satterthwaite df of a heteroscedastic fit.
# * A single-factor model fitted through the crossed path must give what the single-factor
#   path gives, and lme4's single-factor references.

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


def _fit_crossed(X, y, groups, reml=True, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        return MixedLMRegressor(reml=reml, fit_intercept=False).fit(X, y, groups=groups, **kw)


@pytest.fixture(scope="module")
def penicillin():
    X, y, groups, ref = _crossed_case("penicillin_crossed_reml")
    return X, y, groups, ref, _fit_crossed(X, y, groups), _fit_crossed(X, y, groups, reml=False)


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
    est = _fit_crossed(X, y, groups, reml=False)
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
    est = _fit_crossed(X, y, groups)
    assert satterthwaite_df(est) == pytest.approx([9.0], rel=1e-5)
    res = wald_test(est, "(Intercept)", rhs=[60.0])
    assert res.df_denom == pytest.approx(9.0, rel=1e-5)
    t = (est.fe_params_.iloc[0] - 60.0) / est.bse_.iloc[0]
    assert res.statistic == pytest.approx(t**2, rel=1e-10)


# ---- a single factor through the crossed path ------------------------------------------------


@pytest.mark.parametrize("name", ["sleepstudy_slopes_reml", "dyestuff2_singular_reml"])
def test_single_factor_through_the_crossed_path(name):
    case = single_factor_arrays(name)
    single = _fit_crossed(case["X"], case["y"], case["groups"], reml=case["reml"], Z=case["Z"])
    crossed = _fit_crossed(case["X"], case["y"], pd.DataFrame({"group": case["groups"]}),
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
    plate_only = _fit_crossed(X, y, groups["plate"], reml=False)
    res = lr_test(plate_only, ml)
    assert res.df == 1
    assert res.statistic == pytest.approx(2 * (ml.llf_ - plate_only.llf_), rel=1e-12)
    assert res.pvalue == pytest.approx(stats.chi2.sf(res.statistic, 1), rel=1e-12)
    # the plate-only model fitted through the crossed path: the same test
    plate_crossed = _fit_crossed(X, y, groups[["plate"]], reml=False, Z={"plate": np.ones((len(y), 1))})
    assert lr_test(plate_crossed, ml).statistic == pytest.approx(res.statistic, rel=1e-9)
    # the dense likelihood of the plate-only model at its estimates
    codes = pd.factorize(groups["plate"])[0]
    dense = profiled_dense_loglik(np.ones((len(y), 1)), y, np.ones((len(y), 1)), codes,
                                  plate_only.cov_re_, plate_only.scale_, reml=False)[0]
    assert plate_only.llf_ == pytest.approx(dense, abs=1e-8)
    # REML: same fixed effects, so the REML likelihoods compare
    plate_reml = _fit_crossed(X, y, groups["plate"])
    assert lr_test(plate_reml, reml).statistic == pytest.approx(2 * (reml.llf_ - plate_reml.llf_))
    with pytest.raises(ValueError, match="REML"):
        lr_test(plate_reml, ml)


def test_lr_test_crossed_refuses_different_data(penicillin):
    X, y, groups, ref, reml, ml = penicillin
    shifted = _fit_crossed(X, y + 1.0, groups["plate"], reml=False)
    with pytest.raises(ValueError, match="different data.*y differs"):
        lr_test(shifted, ml)
    relabelled = _fit_crossed(X, y, groups["plate"].replace({"a": "zz"}), reml=False)
    with pytest.raises(ValueError, match="grouping factor 'plate'"):
        lr_test(relabelled, ml)
    fewer = _fit_crossed(X.iloc[:-6], y[:-6], groups.iloc[:-6], reml=False)
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


# ---- Satterthwaite's df with correlated residuals ------------------------------------------------


def _dense_ovary_varpar(df, X, params, reml=True):
    """The REML deviance (sigma not profiled) and Cov(beta) of Ovary's AR(1) model at
    ``params = (sd_Mare, sigma, phi)``, from ``V_g = sd^2 11' + sigma^2 phi^|i-j|`` built
    densely per mare (no package code)."""
    sd, sigma, phi = params
    y = df.follicles.to_numpy()
    XtViX = np.zeros((X.shape[1], X.shape[1]))
    XtViy = np.zeros(X.shape[1])
    logdet, blocks = 0.0, []
    for mare in df.Mare.unique():
        rows = (df.Mare == mare).to_numpy()
        t = df.visit.to_numpy()[rows].astype(float)
        V = sd ** 2 + sigma ** 2 * phi ** np.abs(t[:, None] - t[None, :])
        c = np.linalg.cholesky(V)
        Xw, yw = np.linalg.solve(c, X[rows]), np.linalg.solve(c, y[rows])
        XtViX += Xw.T @ Xw
        XtViy += Xw.T @ yw
        logdet += 2 * np.log(np.diag(c)).sum()
        blocks.append((Xw, yw))
    cov = np.linalg.inv(XtViX)
    beta = cov @ XtViy
    quad = sum(float(np.sum((yw - Xw @ beta) ** 2)) for Xw, yw in blocks)
    dev = logdet + quad + (np.linalg.slogdet(XtViX)[1] if reml else 0.0)
    return dev, cov


def test_satterthwaite_df_of_a_correlated_fit_equal_a_dense_brute_force():
    """Satterthwaite's formula ``2 C_jj^2 / (g' 2 H^-1 g)`` evaluated here with the dense
    REML deviance and Cov(beta) of Ovary's AR(1) model as functions of (sd, sigma, phi)
    and central differences (the df do not depend on the parametrisation at the optimum):
    the model's df, whose derivatives step the correlation's internal parameter too."""
    import pandas as pd

    from _reference import REFERENCE_DIR
    from mixedlm_sklearn import lmer
    from mixedlm_sklearn.inference import satterthwaite_df

    df = pd.read_csv(REFERENCE_DIR / "structures" / "ovary_ar1_reml.csv", dtype={"Mare": str})
    est = lmer("follicles ~ sin(2*pi*Time) + cos(2*pi*Time) + (1 | Mare)", df,
               correlation="ar1(~ visit | Mare)")
    X = np.column_stack([np.ones(len(df)), np.sin(2 * np.pi * df.Time), np.cos(2 * np.pi * df.Time)])
    p0 = np.array([np.sqrt(est.cov_re_[0, 0]), np.sqrt(est.scale_), est.correlation_params_["Phi"]])
    np.testing.assert_allclose(_dense_ovary_varpar(df, X, p0)[1], est.cov_fe_,
                               rtol=1e-6)
    h = 1e-4 * p0
    k = p0.size
    E = np.diag(h)
    f = lambda p: _dense_ovary_varpar(df, X, p)[0]  # noqa: E731
    H = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            H[i, j] = (f(p0 + E[i] + E[j]) - f(p0 + E[i] - E[j]) - f(p0 - E[i] + E[j])
                       + f(p0 - E[i] - E[j])) / (4 * h[i] * h[j])
    G = np.stack([(_dense_ovary_varpar(df, X, p0 + E[i])[1] - _dense_ovary_varpar(df, X, p0 - E[i])[1])
                  / (2 * h[i]) for i in range(k)])
    C = _dense_ovary_varpar(df, X, p0)[1]
    g = np.stack([G[:, j, j] for j in range(3)])  # (contrast, param)
    expected = 2 * np.diag(C) ** 2 / np.einsum("ck,kl,cl->c", g, 2 * np.linalg.inv(H), g)
    np.testing.assert_allclose(satterthwaite_df(est), expected, rtol=1e-5)  # 4e-7 measured
    # independence would be far off: the within-mare effects' df fall from 295 to ~50
    assert np.all(expected[1:] < 100)
