"""R2 and ICC: Nakagawa & Schielzeth with Johnson's extension for random slopes,
as performance 0.10.2 (insight 0.19) computes them for lmer fits."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import mixedlm_sklearn.inference.r2 as r2_module
from mixedlm_sklearn import lmer
from mixedlm_sklearn.inference.r2 import (VarianceComponents, components_from_designs,
                                          components_from_moments)

from _tables import (design, extras, fitted, orthodont, our_covs, r_covs, re_designs,
                     supplementary)

R2_CASES = ["orthodont_slopes", "dietox_unbalanced", "grouseticks_crossed", "dietox_q3",
            "dietox_factorial", "penicillin_crossed"]


def test_docstring_examples():
    result = doctest.testmod(r2_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _components(est, covs, beta, sigma2, drop=()):
    pieces = [p for p in re_designs(est) if p[0] not in drop]
    return components_from_designs(design(est), beta, [Z for _, _, Z in pieces],
                                   [covs[name] for name, _, _ in pieces], sigma2)


def _values(vc):
    r, i = vc.r2(), vc.icc()
    return np.array([r.marginal, r.conditional, i.adjusted, i.unadjusted])


def _expected(entry):
    return np.array([entry[k] for k in ("r2_marginal", "r2_conditional", "icc_adjusted",
                                        "icc_unadjusted")], dtype=float)


@pytest.mark.parametrize("case", R2_CASES)
def test_matches_performance_at_lme4_estimates(case):
    """Random intercepts, correlated slopes (q = 2, 3), crossed factors, intercept-only
    fixed part (var_fixed = 0)."""
    ref = supplementary(case)
    beta = np.array(list(ref["fixef"].values()), dtype=float)
    vc = _components(fitted(case), r_covs(ref), beta, ref["sigma"] ** 2)
    np.testing.assert_allclose(_values(vc), _expected(ref["r2"]), rtol=1e-10, atol=1e-14)


def test_shared_reference_random_intercept_model():
    """extras/orthodont_agesex_slopes_reml.json ``r2_intercept_model``, from our own fit of
    ``distance ~ age * Sex + (1 | Subject)``."""
    ref = extras("orthodont_agesex_slopes_reml")["r2_intercept_model"]
    est = lmer(ref["formula"], orthodont())
    vc = _components(est, our_covs(est), est.fe_params_.to_numpy(), est.scale_)
    np.testing.assert_allclose(_values(vc), _expected(ref), rtol=1e-7)
    # for a random intercept var_random is its variance
    assert vc.random == pytest.approx(float(np.squeeze(est.cov_re_)), rel=1e-12)


def test_random_slopes_use_the_mean_over_rows():
    """Johnson (2014): with a random slope on age, var_random is the mean of
    z_r' Sigma z_r over the rows, not the intercept variance."""
    ref = supplementary("orthodont_slopes")
    Sigma = r_covs(ref)["Subject"]
    age = orthodont()["age"].to_numpy()
    expected = np.mean(Sigma[0, 0] + 2 * age * Sigma[0, 1] + age**2 * Sigma[1, 1])
    vc = _components(fitted("orthodont_slopes"), r_covs(ref),
                     np.array(list(ref["fixef"].values())), ref["sigma"] ** 2)
    assert vc.random == pytest.approx(expected, rel=1e-12)


def test_performance_drops_the_second_term_of_a_double_bar():
    """performance/insight disagree with the definition for ``(Days || Subject)``: lme4
    splits it into the terms Subject and Subject.1, insight looks the terms up by the names
    of ``ranef()`` (one per grouping factor) and so loses the slope's variance. R's numbers
    are ours without the term Subject.1; ours include it (Johnson 2014 sums every term)."""
    case = "sleepstudy_diagonal"
    ref = supplementary(case)
    est = fitted(case)
    beta = np.array(list(ref["fixef"].values()))
    as_r = _components(est, r_covs(ref), beta, ref["sigma"] ** 2, drop=("Subject.1",))
    np.testing.assert_allclose(_values(as_r), _expected(ref["r2"]), rtol=1e-10)
    ours = _components(est, r_covs(ref), beta, ref["sigma"] ** 2)
    days = est.model_frame_.X["Days"].to_numpy()
    slope_part = r_covs(ref)["Subject.1"][0, 0] * np.mean(days**2)
    assert ours.random == pytest.approx(as_r.random + slope_part, rel=1e-12)


def test_from_moments_equals_from_designs():
    est = fitted("dietox_q3")
    X = design(est)
    pieces = re_designs(est)
    covs = [our_covs(est)[n] for n, _, _ in pieces]
    a = components_from_designs(X, est.fe_params_, [Z for _, _, Z in pieces], covs, est.scale_)
    b = components_from_moments(est.fe_params_, X.T @ X, X.sum(0), len(X),
                                [Z.T @ Z for _, _, Z in pieces], covs, est.scale_)
    assert a.fixed == pytest.approx(np.var(X @ est.fe_params_, ddof=1), rel=1e-10)
    np.testing.assert_allclose([a.fixed, a.random, a.residual], [b.fixed, b.random, b.residual],
                               rtol=1e-12)


def test_observation_level_terms_are_left_out():
    X = np.column_stack([np.ones(6), np.arange(6.0)])
    vc = components_from_designs(X, [0.0, 1.0], [np.ones((6, 1)), np.ones((6, 1))],
                                 [[[2.0]], [[5.0]]], 1.0, n_levels=[3, 6])
    assert vc.random == 2.0


def test_singular_fit_has_no_random_variance():
    vc = VarianceComponents(2.0, 0.0, 1.0, singular=True)
    r = vc.r2()
    assert r.marginal == pytest.approx(2.0 / 3.0) and np.isnan(r.conditional)
    assert all(np.isnan(v) for v in (vc.icc().adjusted, vc.icc().unadjusted))


# ---- correlated residuals: the residual variance is sigma^2, the marginal variance of a row ----

def _correlated_fits():
    import json

    import pandas as pd

    from _reference import REFERENCE_DIR

    struct = REFERENCE_DIR / "structures"
    ref = json.loads((struct / "r2_correlated.json").read_text())
    ov = pd.read_csv(struct / "ovary_ar1_reml.csv", dtype={"Mare": str})
    bw = pd.read_csv(struct / "bodyweight_car1_reml.csv", dtype={"Rat": str, "Diet": str})
    ovary = lmer("follicles ~ sin(2*pi*Time) + cos(2*pi*Time) + (1 | Mare)", ov,
                 correlation="ar1(~ visit | Mare)")
    bodyweight = lmer("weight ~ Time * Diet + (Time | Rat)", bw, correlation="car1(~ Time | Rat)")
    return ref, ovary, bodyweight


def test_r2_and_icc_of_correlated_fits_agree_with_performance_on_nlme():
    """performance 0.10.2 on nlme's lme fits (r2_correlated.json): BodyWeight (CAR1, random
    slopes) its r2_nakagawa and icc; Ovary (AR(1)) insight's variance components (for that
    fit performance itself reports NA: insight finds no random-effect variance), with R2
    and the ICC formed from them as performance does."""
    from mixedlm_sklearn.inference.r2 import variance_components

    ref, ovary, bodyweight = _correlated_fits()
    o = ref["ovary"]
    vc = variance_components(ovary)
    np.testing.assert_allclose([vc.fixed, vc.random, vc.residual],
                               [o["var_fixed"], o["var_intercept"], o["var_residual"]], rtol=1e-4)
    total = o["var_fixed"] + o["var_intercept"] + o["var_residual"]
    r2, icc = ovary.r2(), ovary.icc()
    np.testing.assert_allclose([r2.marginal, r2.conditional],
                               [o["var_fixed"] / total, (o["var_fixed"] + o["var_intercept"]) / total],
                               rtol=1e-4)
    np.testing.assert_allclose([icc.adjusted, icc.unadjusted],
                               [o["var_intercept"] / (o["var_intercept"] + o["var_residual"]),
                                o["var_intercept"] / total], rtol=1e-4)
    b = ref["bodyweight"]
    vc = variance_components(bodyweight)
    np.testing.assert_allclose([vc.fixed, vc.random, vc.residual],
                               [b["var_fixed"], b["var_random"], b["var_residual"]], rtol=1e-4)
    r2, icc = bodyweight.r2(), bodyweight.icc()
    np.testing.assert_allclose([r2.marginal, r2.conditional, icc.adjusted, icc.unadjusted],
                               [b["r2_marginal"], b["r2_conditional"], b["icc_adjusted"],
                                b["icc_unadjusted"]], rtol=1e-4)
