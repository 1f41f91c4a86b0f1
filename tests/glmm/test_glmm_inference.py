"""GLMM inference against R: emmeans (link and response scale, odds and rate ratios with
Tukey and Holm), performance's r2/icc, drop1's LR chi-square, car's Wald chi-square tables,
fitted values and residuals, prediction intervals on the response scale, and power.

References: ``data/reference/product/glmm_inference_{cbpp,grouseticks}.json`` (R 4.2.2,
lme4 1.1-31, emmeans 1.8.4-1, performance 0.10.2 / insight 0.19.0, car 3.1-1; R's fit is the
better of bobyqa and Nelder-Mead with ``tolPwrss = 1e-12``). cbpp: binomial logit
``cbind(incidence, size - incidence) ~ period + (1 | herd)``; grouseticks: Poisson
``TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)`` with ``cHEIGHT`` centred.
Tolerances as for the linear model: estimates 1e-4 relative; our fits are at the Laplace
optimum (llf at or above R's), so R's tables are compared at our estimates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mixedlm_sklearn import glmer
from mixedlm_sklearn.datasets import load_cbpp, load_grouseticks
from mixedlm_sklearn.inference import r2 as r2_module
from mixedlm_sklearn.inference.anova import anova, drop1
from mixedlm_sklearn.inference.emmeans import adjust_pvalues, emmeans
from mixedlm_sklearn.inference.prediction import fitted, predict_interval, residuals

from _reference import product_reference, r_table

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
GROUSE = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)"
RTOL = 1e-4


def _grouse_data() -> pd.DataFrame:
    df = load_grouseticks()
    df["cHEIGHT"] = df["HEIGHT"] - df["HEIGHT"].mean()
    return df


@pytest.fixture(scope="module")
def cbpp():
    return glmer(CBPP, load_cbpp())


@pytest.fixture(scope="module")
def grouse():
    return glmer(GROUSE, _grouse_data(), family="poisson")


@pytest.fixture(scope="module")
def ref_cbpp():
    return product_reference("glmm_inference_cbpp")


@pytest.fixture(scope="module")
def ref_grouse():
    return product_reference("glmm_inference_grouseticks")


def _r(entry: dict) -> pd.DataFrame:
    return r_table({k: v for k, v in entry.items() if k != "mesg"})


def _close(ours, theirs, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float),
                               rtol=rtol, atol=atol)


def _p_values(ours: pd.DataFrame, theirs: pd.DataFrame, adjust: str, k: int):
    """Adjusted p-values. A p-value moves with its z ratio by a factor ~z^2 relative (at
    z = 3.7, a 7e-6 relative difference of an SE, ours from the Hessian at the Laplace
    optimum and R's at its own point, moves p by 1.1e-4), so the z ratios are compared to
    1e-4 (the estimates' tolerance) and the p-values through them: R's p from R's z by our
    adjustment (the adjustment reproduced exactly), ours from our z. Below 1e-12 R's
    ptukey has hit its floor (grouseticks YEAR96 / YEAR97: R 2.1e-14, the Bonferroni
    bound 6 Phi(-8.897) = 1.7e-18): both sides are only required to be that small."""
    def adjusted(z):
        z = np.asarray(z, dtype=float)
        return adjust_pvalues(2 * stats.norm.sf(np.abs(z)), adjust, z, np.inf, k)

    p_r = theirs["p.value"].to_numpy(dtype=float)
    tiny = p_r < 1e-12
    assert np.all(ours["p.value"].to_numpy()[tiny] < 1e-12)
    _close(adjusted(theirs["z.ratio"])[~tiny], p_r[~tiny], rtol=1e-6)
    _close(ours["p.value"], adjusted(ours["z.ratio"]), rtol=1e-12)


# ---- emmeans ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case, spec, key", [("cbpp", "period", "emmeans_period"),
                                             ("grouse", "YEAR", "emmeans_year")])
def test_emmeans_link_and_response_scale(case, spec, key, request):
    fit = request.getfixturevalue(case)
    ref = request.getfixturevalue(f"ref_{case}")
    link = emmeans(fit, spec).table
    expected = _r(ref[f"{key}_link"])
    assert list(link.columns) == list(expected.columns)
    assert link[spec].astype(str).tolist() == expected[spec].astype(str).tolist()
    for column in ("emmean", "SE", "asymp.LCL", "asymp.UCL"):
        _close(link[column], expected[column])
    assert np.all(np.isinf(link["df"]))
    response = emmeans(fit, spec, type="response").table
    expected = _r(ref[f"{key}_response"])
    column = {"cbpp": "prob", "grouse": "rate"}[case]
    assert list(response.columns) == [spec, column, "SE", "df", "asymp.LCL", "asymp.UCL"]
    assert list(response.columns) == list(expected.columns)
    for name in (column, "SE", "asymp.LCL", "asymp.UCL"):
        _close(response[name], expected[name])


def test_emmeans_response_scale_by_the_delta_method(cbpp):
    """The response-scale SE is |dmu/deta| times the link-scale SE (cbpp period 1:
    0.19805 x 0.80195 x 0.23247 = 0.036923) and the interval the link interval
    back-transformed."""
    link = emmeans(cbpp, "period").table
    response = emmeans(cbpp, "period", type="response").table
    p = 1.0 / (1.0 + np.exp(-link["emmean"]))
    _close(response["prob"], p, rtol=1e-12)
    _close(response["SE"], p * (1 - p) * link["SE"], rtol=1e-12)
    _close(response["asymp.LCL"], 1.0 / (1.0 + np.exp(-link["asymp.LCL"])), rtol=1e-12)
    assert round(float(response["SE"].iloc[0]), 6) == 0.036923


@pytest.mark.parametrize("case, spec, key", [("cbpp", "period", "emmeans_period"),
                                             ("grouse", "YEAR", "emmeans_year")])
def test_pairs_as_ratios_with_tukey(case, spec, key, request):
    fit = request.getfixturevalue(case)
    ref = request.getfixturevalue(f"ref_{case}")
    link = emmeans(fit, spec).pairs()
    expected = _r(ref[f"{key}_pairs_link"])
    assert list(link.columns) == list(expected.columns)
    assert link["contrast"].tolist() == expected["contrast"].tolist()
    for column in ("estimate", "SE", "z.ratio"):
        _close(link[column], expected[column])
    _p_values(link, expected, "tukey", len(emmeans(fit, spec).labels))
    response = emmeans(fit, spec, type="response").pairs()
    expected = _r(ref[f"{key}_pairs_response"])
    ratio = {"cbpp": "odds.ratio", "grouse": "ratio"}[case]
    assert list(response.columns) == ["contrast", ratio, "SE", "df", "null", "z.ratio", "p.value"]
    assert list(response.columns) == list(expected.columns)
    assert response["contrast"].tolist() == expected["contrast"].tolist()
    for column in (ratio, "SE", "null", "z.ratio"):
        _close(response[column], expected[column])
    _p_values(response, expected, "tukey", len(emmeans(fit, spec).labels))
    # the same ratios from link-scale means asked for on the response scale
    again = emmeans(fit, spec).pairs(type="response")
    pd.testing.assert_frame_equal(again, response)


def test_pairs_holm(cbpp, ref_cbpp):
    pairs = emmeans(cbpp, "period", type="response").pairs(adjust="holm")
    expected = _r(ref_cbpp["emmeans_period_pairs_response_holm"])
    _close(pairs["odds.ratio"], expected["odds.ratio"])
    _close(pairs["z.ratio"], expected["z.ratio"])
    _p_values(pairs, expected, "holm", 4)


def test_tukey_with_infinite_df_is_the_studentized_range(cbpp):
    """Tukey's p of a z ratio: P(Q_{k, inf} > sqrt(2)|z|), checked against a simulated
    studentized range of k standard normals."""
    pairs = emmeans(cbpp, "period").pairs()
    z = float(pairs["z.ratio"].iloc[0])
    gen = np.random.default_rng(0)
    draws = gen.standard_normal((400_000, 4))
    q = draws.max(axis=1) - draws.min(axis=1)
    simulated = float(np.mean(q > np.sqrt(2.0) * z))
    se = np.sqrt(simulated * (1 - simulated) / q.size)
    assert abs(float(pairs["p.value"].iloc[0]) - simulated) < 4 * se


def test_emmeans_of_a_glmm_refuses_finite_df(cbpp):
    with pytest.raises(ValueError, match="asymptotic"):
        emmeans(cbpp, "period", ddf="kenward-roger")
    with pytest.raises(ValueError, match="type must be"):
        emmeans(cbpp, "period", type="prob")
    asymptotic = emmeans(cbpp, "period", ddf="asymptotic").table
    pd.testing.assert_frame_equal(asymptotic, emmeans(cbpp, "period").table)


# ---- r2 and icc ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["cbpp", "grouse"])
def test_r2_and_icc_as_performance(case, request):
    fit = request.getfixturevalue(case)
    ref = request.getfixturevalue(f"ref_{case}")
    vc = r2_module.variance_components(fit)
    expected = ref["variance_components"]
    _close(vc.fixed, expected["var_fixed"])
    _close(vc.random, expected["var_random"])
    _close(vc.residual, expected["var_distribution"])
    r2, icc = r2_module.r2(fit), r2_module.icc(fit)
    _close(r2.marginal, ref["r2_marginal"])
    _close(r2.conditional, ref["r2_conditional"])
    _close(icc.adjusted, ref["icc_adjusted"])
    _close(icc.unadjusted, ref["icc_unadjusted"])


def test_r2_distribution_variances(cbpp, grouse, ref_grouse):
    """Binomial logit: pi^2/3 whatever the data; Poisson log: log1p(1/mu0), mu0 the mean of
    the null model refitted (insight's intercept 0.5233028; the Laplace optimum 0.5233021)."""
    assert r2_module.variance_components(cbpp).residual == pytest.approx(np.pi ** 2 / 3, rel=1e-15)
    null = glmer("TICKS ~ (1 | BROOD) + (1 | LOCATION)", _grouse_data(), family="poisson")
    oracle = ref_grouse["r2_null_model"]["laplace_oracle"]
    _close(null.fe_params_["(Intercept)"], oracle["fe_params"], rtol=1e-5)
    mu0 = np.exp(null.fe_params_["(Intercept)"])
    assert r2_module.variance_components(grouse).residual == pytest.approx(np.log1p(1 / mu0),
                                                                           rel=1e-10)


def test_standard_errors_against_a_brute_force_hessian(cbpp, ref_cbpp):
    """lme4's vcov of a GLMM is 2 H^-1 on beta, H the Hessian of the deviance in (theta,
    beta). Brute force: central second differences of the deviance at two steps,
    Richardson-extrapolated. R's standard errors agree with it to 2e-6; ours (the
    optimiser's Hessian from differences of the analytic gradient) to 1e-5: both within
    the 1e-4 tolerance, and the few 1e-6 of the SEs between us and R in the emmeans
    tables are that Hessian's error, not a different formula."""
    model = cbpp.model_
    dev, x = model.deviance, model.x.copy()
    n = x.size

    def hessian(h):
        H = np.zeros((n, n))
        E = np.eye(n) * h
        for i in range(n):
            for j in range(i, n):
                H[i, j] = H[j, i] = (dev(x + E[i] + E[j]) - dev(x + E[i] - E[j])
                                     - dev(x - E[i] + E[j]) + dev(x - E[i] - E[j])) / (4 * h * h)
        return H

    H = (4 * hessian(1e-3) - hessian(2e-3)) / 3
    se = np.sqrt(np.diag(2 * np.linalg.inv(H))[1:])
    _close(ref_cbpp["fit"]["bse_fe"], se, rtol=2e-6)
    _close(cbpp.bse_.to_numpy(), se, rtol=1e-5)


# ---- Wald chi-square tables (car::Anova) and drop1 -------------------------------------------


def _chisq_p(ours: pd.DataFrame, theirs: pd.DataFrame, column: str, p_column: str, df_column: str):
    """The statistic to 1e-4; its p-value through it (a chi-square p at 1e-11 moves ~z^2
    times faster than the statistic): R's p from R's statistic, ours from ours."""
    theirs = theirs.apply(pd.to_numeric)
    _close(ours[column], theirs[column])
    _close(stats.chi2.sf(theirs[column], theirs[df_column]), theirs[p_column], rtol=1e-6)
    _close(ours[p_column], stats.chi2.sf(ours[column], ours[df_column]), rtol=1e-12)


@pytest.mark.parametrize("case", ["cbpp", "grouse"])
@pytest.mark.parametrize("kind", [3, 2])
def test_wald_chisq_tables_as_car(case, kind, request):
    fit = request.getfixturevalue(case)
    ref = request.getfixturevalue(f"ref_{case}")
    table = anova(fit, type=kind)  # a GLMM's default test: Wald chi-square
    expected = r_table(ref[f"anova_type{kind}_wald"])
    assert list(table.index) == list(expected.index)
    assert list(table.columns) == ["Chisq", "Df", "Pr(>Chisq)"]
    np.testing.assert_array_equal(table["Df"], expected["Df"])
    _chisq_p(table, expected, "Chisq", "Pr(>Chisq)", "Df")


def test_type3_wald_statistic_is_the_squared_z(cbpp, ref_cbpp):
    """cbpp's intercept: Chisq = z^2 = 6.01592^2 = 36.1913."""
    table = anova(cbpp, type="III", test="Chisq")
    z = cbpp.fe_params_["(Intercept)"] / cbpp.bse_["(Intercept)"]
    assert table.loc["(Intercept)", "Chisq"] == pytest.approx(z * z, rel=1e-12)


def test_type2_wald_against_sums_of_squares():
    """car's type II with interactions, checked without its conjugate-complement algebra: for
    least squares (beta the OLS fit, V = sigma^2 (X'X)^-1) the type II Wald statistic of a
    term is the drop in the residual sum of squares when it is added to the terms that do
    not contain it, over sigma^2 (A: RSS(B) - RSS(A + B); A:B: RSS(A + B) - RSS(A * B)), on
    an unbalanced 2 x 3 factorial."""
    from mixedlm_sklearn.formula import FixedTerm
    from mixedlm_sklearn.inference.anova import wald_chisq_table, wald_type2_contrasts

    gen = np.random.default_rng(3)
    a = gen.integers(0, 2, 60)
    b = gen.integers(0, 3, 60)
    y = 1.0 + 0.5 * a - 0.4 * (b == 1) + 0.3 * a * (b == 2) + gen.standard_normal(60)
    A = np.column_stack([a == 1]).astype(float)
    B = np.column_stack([b == 1, b == 2]).astype(float)
    AB = A * B
    one = np.ones((60, 1))

    def rss(*blocks):
        X = np.column_stack([one, *blocks])
        return float(np.sum((y - X @ np.linalg.lstsq(X, y, rcond=None)[0]) ** 2))

    X = np.column_stack([one, A, B, AB])
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    sigma2 = 1.7  # any scale: both sides divide by it
    V = sigma2 * np.linalg.inv(X.T @ X)
    terms = [FixedTerm("a", (1,), ("a",)), FixedTerm("b", (2, 3), ("b",)),
             FixedTerm("a:b", (4, 5), ("a", "b"))]
    table = wald_chisq_table(wald_type2_contrasts(terms, 6, V), beta, V)
    expected = {"a": (rss(B) - rss(A, B)) / sigma2, "b": (rss(A) - rss(A, B)) / sigma2,
                "a:b": (rss(A, B) - rss(A, B, AB)) / sigma2}
    for name, value in expected.items():
        assert table.loc[name, "Chisq"] == pytest.approx(value, rel=1e-9)
    assert table["Df"].tolist() == [1, 2, 2]


@pytest.mark.parametrize("case", ["cbpp", "grouse"])
def test_drop1_likelihood_ratio(case, request):
    """lme4's drop1(fit, test = "Chisq"): every reduced model refitted (grouseticks without
    YEAR is singular and needs the escapes from the bound). Each reduced fit reaches R's
    best (llf not below it by more than 1e-6), and the LRT agrees with the Laplace
    oracle's at the fits (``drop1_check``)."""
    fit = request.getfixturevalue(case)
    ref = request.getfixturevalue(f"ref_{case}")
    table = drop1(fit)
    expected = r_table(ref["drop1"])
    assert list(table.index) == list(expected.index)
    assert list(table.columns) == ["npar", "AIC", "LRT", "Pr(Chi)"]
    np.testing.assert_array_equal(table["npar"].iloc[1:], expected["npar"].iloc[1:].astype(float))
    _close(table["AIC"], expected["AIC"], rtol=1e-8)
    check = ref["drop1_check"]
    llf_reduced = -0.5 * (table["AIC"].iloc[1:].to_numpy()
                          - 2 * (fit.model_.n_parameters - table["npar"].iloc[1:].to_numpy()))
    assert np.all(llf_reduced >= np.asarray(check["llf_reduced_kept"]) - 1e-6)
    _close(table["LRT"].iloc[1:], check["lrt_laplace_oracle_at_fits"], rtol=1e-6)
    _chisq_p(table.iloc[1:], expected.iloc[1:], "LRT", "Pr(Chi)", "npar")


# ---- fitted values, residuals, prediction intervals ------------------------------------------


@pytest.mark.parametrize("case", ["cbpp", "grouse"])
def test_fitted_values_are_the_mean_response(case, request):
    """lme4's fitted(): the conditional mean (proportions, rates); type="link" the linear
    predictor."""
    fit = request.getfixturevalue(case)
    ref = request.getfixturevalue(f"ref_{case}")
    mu = fitted(fit)
    assert isinstance(mu, pd.Series)  # indexed like the data's rows
    head = ref["fitted_head"]
    _close(mu.iloc[:len(head)], head)
    eta = fitted(fit, type="link")
    _close(mu, fit.model_.family.link.inverse(eta.to_numpy()), rtol=1e-13)
    population = fitted(fit, level="marginal", type="link").to_numpy()
    X = fit.model_.design.X_full
    _close(population, X @ fit.fe_params_.to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("kind", ["deviance", "pearson", "response"])
def test_residuals_as_lme4(cbpp, ref_cbpp, kind):
    """cbpp's response residual is y/size - p; pearson (y/size - p) sqrt(size / (p (1 - p)));
    deviance the signed root of the binomial unit deviance (lme4's default type)."""
    head = np.asarray(ref_cbpp[f"residuals_{kind}_head"])
    ours = residuals(cbpp, type=kind)
    _close(ours.iloc[:head.size], head)
    if kind == "deviance":
        pd.testing.assert_series_equal(residuals(cbpp), ours)


def test_residuals_definitions(grouse):
    """Poisson: pearson (y - mu) / sqrt(mu); deviance sign(y - mu) sqrt(2 (y log(y/mu) - (y - mu)));
    the squared deviance residuals sum to lme4's deviance()."""
    y = grouse.model_.response()
    mu = fitted(grouse).to_numpy()
    _close(residuals(grouse, type="pearson"), (y - mu) / np.sqrt(mu), rtol=1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = 2 * (np.where(y > 0, y * np.log(y / mu), 0.0) - (y - mu))
    _close(residuals(grouse), np.sign(y - mu) * np.sqrt(unit), rtol=1e-10, atol=1e-12)
    assert float(np.sum(residuals(grouse) ** 2)) == pytest.approx(grouse.deviance_, rel=1e-10)
    with pytest.raises(ValueError, match="type must be one of"):
        residuals(grouse, type="working")


def _newdata(fit, ref):
    new = pd.DataFrame(ref["newdata"]).assign(incidence=0, size=1)
    return fit.model_frame_.new_data(new)


def test_predict_interval_on_the_response_scale(cbpp, ref_cbpp):
    """An interval for the mean response: linkinv(eta -+ z sd(eta)). No R reference exists
    (predict.merMod has no intervals): a herd not in the data adds its effect's full variance
    (x'Vx + sigma_herd^2, checked by hand), a seen herd the conditional variance of its mode
    and its covariance with beta, checked against dense n x n matrices at the modes (M =
    Lambda'Z'WZ Lambda + I with the Fisher weights W)."""
    args = _newdata(cbpp, ref_cbpp)
    _close(cbpp.predict(**args), ref_cbpp["predict_newdata_response"])
    lower, upper = predict_interval(cbpp, **args)
    eta = cbpp.model_.family.link(cbpp.predict(**args))
    _close(eta, ref_cbpp["predict_newdata_link_conditional"])
    z = stats.norm.ppf(0.975)
    logit_lower, logit_upper = np.log(lower / (1 - lower)), np.log(upper / (1 - upper))
    _close(0.5 * (logit_lower + logit_upper), eta, rtol=1e-9)  # symmetric on the link scale
    sd = (logit_upper - logit_lower) / (2 * z)
    # a new herd (rows 2 and 5): x'Vx + sigma^2
    X = np.array([[1, 0, 0, 0], [1, 0, 1, 0]], dtype=float)
    V = cbpp.cov_fe_
    var_new = np.einsum("ia,ab,ib->i", X, V, X) + cbpp.cov_re_[0, 0]
    _close(sd[[2, 5]] ** 2, var_new, rtol=1e-10)
    # seen herds 1 and 5 (rows 0, 1, 3, 4): dense oracle
    model = cbpp.model_
    design = model.design
    codes = design.factors[0][0]
    Zd = np.zeros((codes.size, 15))
    Zd[np.arange(codes.size), codes] = 1.0
    lam = model.solution.lams[0][0, 0]
    eta_fit = model.linear_predictor()
    mu, d1, _ = model.family.link.derivatives(eta_fit)
    W = design.weights * d1 ** 2 / model.family.variance(mu)[0]
    M = lam * lam * (Zd.T * W) @ Zd + np.eye(15)
    Minv = np.linalg.inv(M)
    Xfit = design.X_full
    labels = list(model.labels["herd"])
    level = {"1": labels.index("1"), "5": labels.index("5")}
    for row, herd, x in [(0, "1", X[0]), (1, "5", X[0]), (3, "1", X[1]), (4, "5", X[1])]:
        r = np.zeros(15)
        r[level[herd]] = lam
        shift = (Xfit.T * W) @ Zd @ (lam * (Minv @ r))
        d = x - shift
        _close(sd[row] ** 2, d @ V @ d + r @ Minv @ r, rtol=1e-8)
    with pytest.raises(ValueError, match="no normal prediction interval"):
        predict_interval(cbpp, **args, kind="prediction")


# ---- power -----------------------------------------------------------------------------------


def test_power_of_a_glmm_equals_a_hand_loop(cbpp):
    """simr's powerSim for a glmer fit: each replicate a response drawn from the fit (the
    same generators), refitted with glmer from scratch and tested with a z test of period2.
    power() (warm-started refits, lme4's vcov from each refit's Hessian) gives the same z
    ratios, replicate by replicate, to the estimates' tolerance."""
    from mixedlm_sklearn.inference.power import power
    from mixedlm_sklearn.inference.simulation import (Parameters, Sampler, model_rows,
                                                      replicate_generators)

    n_sim = 6
    result = power(cbpp, "period2", n_sim=n_sim, random_state=11)
    assert result.test == "wald"
    model = cbpp.model_
    sampler = Sampler(model_rows(model), Parameters.of(model.solution))
    data = load_cbpp()
    z_hand = []
    for gen in replicate_generators(11, n_sim):
        y = sampler.draw([gen])[:, 0]
        refit = glmer(CBPP, data.assign(incidence=np.round(y * data["size"]).astype(int)))
        z_hand.append(refit.fe_params_["period2"] / refit.bse_["period2"])
    z_power = stats.norm.isf(result.pvalues / 2)
    _close(z_power, np.abs(z_hand))
    assert result.power == np.mean(result.pvalues < 0.05)
    with pytest.raises(ValueError, match="dispersion is fixed"):
        power(cbpp, "period2", n_sim=2, test="satterthwaite")
    with pytest.raises(ValueError, match="no residual variance"):
        power(cbpp, "period2", n_sim=2, scale=2.0)


# ---- one protocol: the same tests, or a named refusal -------------------------------------------


def test_nested_glmms_compared_as_lme4_anova(cbpp, ref_cbpp):
    """lme4's anova(m0, m1) of glmer fits: npar counts no sigma (2 and 5), AIC as drop1's."""
    from mixedlm_sklearn.inference import compare_models, lr_test

    small = glmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", load_cbpp())
    table = compare_models([small, cbpp])
    assert table["npar"].tolist() == [2, 5]
    _close(table["AIC"].to_numpy()[::-1], r_table(ref_cbpp["drop1"])["AIC"].astype(float), rtol=1e-8)
    test = lr_test(small, cbpp)
    assert test.df == 3
    _close(test.statistic, ref_cbpp["drop1_check"]["lrt_laplace_oracle_at_fits"][0], rtol=1e-6)


def test_linear_model_methods_refuse_a_glmm_by_name(cbpp):
    from mixedlm_sklearn.inference import profile, summary
    from mixedlm_sklearn.inference.anova import ranova
    from mixedlm_sklearn.inference.satterthwaite import satterthwaite_df

    with pytest.raises(ValueError, match="dispersion"):
        satterthwaite_df(cbpp)
    with pytest.raises(ValueError, match="dispersion"):
        summary(cbpp, ddf="satterthwaite")
    with pytest.raises(ValueError, match="conf_int\\(method='profile'\\)"):
        profile(cbpp)
    with pytest.raises(ValueError, match="lr_test"):
        ranova(cbpp)
    with pytest.raises(ValueError, match="test='Chisq'"):
        anova(cbpp, test="F")
    with pytest.raises(ValueError, match="type must be"):
        anova(cbpp, type=1)
