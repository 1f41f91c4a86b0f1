"""Every single-grouping-factor reference fit of lme4 1.1-31, reproduced.

Targets: log-likelihood never more than 1e-6 below lme4's, fixed effects within
1e-4 of their standard errors, cov_re and scale within 1e-4 relative, and BLUPs, their
conditional variances and the fitted values to the same relative precision.
"""

import warnings

import numpy as np
import pytest
from _reference import fit_single_factor, SINGLE_FACTOR_CASES, single_factor_arrays

from mixedlm_sklearn import MixedLMRegressor, SingularFitWarning

RTOL = 1e-4


_fit = fit_single_factor


@pytest.fixture(scope="module", params=SINGLE_FACTOR_CASES)
def fitted(request):
    case = single_factor_arrays(request.param)
    return case, _fit(case)


def _close(actual, expected, rtol=RTOL):
    """Relative agreement; exact zeros in the reference must be (numerically) zero here."""
    expected = np.asarray(expected, dtype=float)
    atol = rtol * 1e-6 * max(np.abs(expected).max(), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def test_loglikelihood_not_below_lme4(fitted):
    case, est = fitted
    assert est.llf_ >= case["llf"] - 1e-6
    # and not absurdly above: lme4 reaches its optimum on these data
    assert est.llf_ <= case["llf"] + 1e-6


def test_fixed_effects_within_1e4_standard_errors(fitted):
    case, est = fitted
    err = np.abs(est.coef_ - case["fe_params"]) / case["bse_fe"]
    assert err.max() < 1e-4


def test_variance_parameters(fitted):
    case, est = fitted
    _close(est.cov_re_, case["cov_re"])
    _close(est.scale_, case["scale"])


def test_blups_and_conditional_variances(fitted):
    case, est = fitted
    ours = est.random_effects_.loc[case["ranef"].index]
    scale = np.abs(case["ranef"].to_numpy()).max()
    np.testing.assert_allclose(ours.to_numpy(), case["ranef"].to_numpy(), rtol=RTOL,
                               atol=RTOL * max(scale, 1e-12) * 1e-2 + 1e-12)
    order = [list(est.groups_).index(label) for label in case["ranef"].index]
    _close(est.random_effects_cov_[order], case["ranef_condvar"])


def test_fitted_values(fitted):
    case, est = fitted
    _close(est.predict(case["X"], groups=case["groups"], Z=case["Z"]), case["fitted"])


def test_information_criteria(fitted):
    case, est = fitted
    assert est.df_model_ == case["df_model"]
    np.testing.assert_allclose([est.aic_, est.bic_], [case["aic"], case["bic"]], rtol=0, atol=2e-6)


def test_singular_fit_lands_exactly_on_the_boundary():
    case = single_factor_arrays("dyestuff2_singular_reml")
    with pytest.warns(SingularFitWarning):
        est = MixedLMRegressor(fit_intercept=False).fit(case["X"], case["y"], groups=case["groups"])
    assert est.cov_re_[0, 0] == 0.0
    assert est.theta_[0] == 0.0
    assert est.singular_ and est.converged_
    assert np.all(est.random_effects_.to_numpy() == 0.0)


def test_regular_fits_are_not_flagged_singular(fitted):
    case, est = fitted
    assert est.singular_ == case["singular"]
    assert est.converged_
