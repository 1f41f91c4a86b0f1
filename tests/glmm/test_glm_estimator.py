"""MixedGLMClassifier and MixedGLMRegressor as scikit-learn estimators: API, predictions,
routing, inference against lme4, bad input."""

import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from scipy import integrate, special, stats
from sklearn.metrics import d2_tweedie_score
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from mixedlm_sklearn import MixedGLMClassifier, MixedGLMRegressor, glmer, lr_test
from mixedlm_sklearn.datasets import load_cbpp, load_grouseticks, load_verbagg

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


@pytest.fixture(scope="module")
def cbpp():
    df = load_cbpp()
    X = df["period"].str.get_dummies().iloc[:, 1:].add_prefix("period")
    return df, X, (df["incidence"] / df["size"]).to_numpy(), df["size"].to_numpy(float)


@pytest.fixture(scope="module")
def bernoulli():
    """A small Bernoulli data set: 20 groups of 15 rows, a covariate, a random intercept."""
    rng = np.random.default_rng(7)
    g = np.repeat(np.arange(20), 15)
    x = rng.standard_normal(g.size)
    eta = -0.3 + 0.8 * x + 1.1 * rng.standard_normal(20)[g]
    y = rng.binomial(1, special.expit(eta))
    return pd.DataFrame({"x": x}), y, pd.Series(g, name="g")


def test_check_estimator_classifier():
    # The one expected failure: sample-weight equivalence on 15 rows with 30 columns, a
    # saturated logistic model whose maximum-likelihood estimate is at infinity (complete
    # separation), where no two optimiser runs stop at the same point.
    separated = "check_sample_weight_equivalence_on_dense_data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(MixedGLMClassifier(), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert failed == [separated]
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    assert {"check_classifiers_train", "check_fit_idempotent", "check_methods_subset_invariance",
            "check_decision_proba_consistency"} <= passed


def test_any_two_labels(bernoulli):
    X, y, g = bernoulli
    numeric = MixedGLMClassifier().fit(X, y, groups=g)
    text = MixedGLMClassifier().fit(X, np.where(y == 1, "yes", "no"), groups=g)
    assert list(text.classes_) == ["no", "yes"]
    assert text.llf_ == pytest.approx(numeric.llf_, rel=1e-10)
    np.testing.assert_allclose(text.coef_, numeric.coef_, rtol=1e-6)
    # the other label order models the other class: every coefficient changes sign
    flipped = MixedGLMClassifier().fit(X, np.where(y == 1, "a", "b"), groups=g)
    np.testing.assert_allclose(flipped.coef_, -numeric.coef_, rtol=1e-5)
    assert set(text.predict(X)) <= {"no", "yes"}
    proba = text.predict_proba(X, groups=g)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba[:, 1], special.expit(text.decision_function(X, groups=g)))
    np.testing.assert_array_equal(text.predict(X, groups=g), text.classes_[(proba[:, 1] > 0.5).astype(int)])
    assert text.score(X, np.where(y == 1, "yes", "no"), groups=g) == pytest.approx(
        np.mean(text.predict(X, groups=g) == np.where(y == 1, "yes", "no")))


def test_conditional_population_and_marginal_predictions(bernoulli):
    X, y, g = bernoulli
    clf = MixedGLMClassifier().fit(X, y, groups=g)
    eta_pop = clf.intercept_ + X["x"].to_numpy() * clf.coef_[0]
    blup = clf.random_effects_.iloc[:, 0].to_numpy()[g.to_numpy()]
    np.testing.assert_allclose(clf.decision_function(X, groups=g), eta_pop + blup)
    np.testing.assert_allclose(clf.decision_function(X), eta_pop)
    unseen = pd.Series(np.full(len(g), 999), name="g")
    with pytest.warns(UserWarning, match="none of the groups labels"):
        np.testing.assert_allclose(clf.decision_function(X, groups=unseen), eta_pop)
    # marginal: the probability averaged over a new group's random intercept
    s = np.sqrt(clf.cov_re_[0, 0])
    marginal = clf.predict_proba(X.head(3), marginal=True)[:, 1]
    for eta, p in zip(eta_pop[:3], marginal):
        expected = integrate.quad(lambda b: special.expit(eta + b) * stats.norm.pdf(b, scale=s), -12 * s, 12 * s)[0]
        assert p == pytest.approx(expected, abs=1e-10)
    # seen groups stay conditional on their BLUPs with marginal=True
    np.testing.assert_allclose(clf.predict_proba(X, groups=g, marginal=True), clf.predict_proba(X, groups=g))


def test_probit_marginal_is_closed_form(bernoulli):
    X, y, g = bernoulli
    clf = MixedGLMClassifier(link="probit").fit(X, y, groups=g)
    eta = clf.decision_function(X)
    expected = stats.norm.cdf(eta / np.sqrt(1 + clf.cov_re_[0, 0]))
    np.testing.assert_allclose(clf.predict_proba(X, marginal=True)[:, 1], expected, atol=1e-10)


def test_weights_equal_repeated_rows(bernoulli):
    X, y, g = bernoulli
    w = np.random.default_rng(3).integers(1, 4, len(y))
    weighted = MixedGLMClassifier().fit(X, y, groups=g, sample_weight=w)
    rows = np.repeat(np.arange(len(y)), w)
    repeated = MixedGLMClassifier().fit(X.iloc[rows], y[rows], groups=g.iloc[rows])
    assert weighted.llf_ == pytest.approx(repeated.llf_, rel=1e-9)
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-6)
    np.testing.assert_allclose(weighted.cov_re_, repeated.cov_re_, rtol=1e-5)


def test_binomial_regressor_from_arrays_equals_glmer(cbpp):
    df, X, p, trials = cbpp
    reg = MixedGLMRegressor(family="binomial").fit(X, p, groups=df["herd"], sample_weight=trials)
    fit = glmer(CBPP, df)
    assert reg.llf_ == pytest.approx(fit.llf_, rel=1e-10)
    np.testing.assert_allclose(reg.fe_params_.to_numpy(), fit.fe_params_.to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(reg.predict(X, groups=df["herd"]), special.expit(
        reg.decision_function(X, groups=df["herd"])))


def test_poisson_regressor_predict_and_d2():
    df = load_grouseticks()
    X = pd.get_dummies(df["YEAR"], prefix="YEAR", drop_first=True, dtype=float).assign(
        cHEIGHT=df["HEIGHT"] - df["HEIGHT"].mean())
    reg = MixedGLMRegressor().fit(X, df["TICKS"], groups=df[["BROOD", "LOCATION"]])
    groups = df[["BROOD", "LOCATION"]]
    mu = reg.predict(X, groups=groups)
    np.testing.assert_allclose(mu, np.exp(reg.decision_function(X, groups=groups)))
    assert reg.score(X, df["TICKS"], groups=groups) == pytest.approx(
        d2_tweedie_score(df["TICKS"], mu, power=1), rel=1e-10)
    assert reg.score(X, df["TICKS"]) == pytest.approx(d2_tweedie_score(df["TICKS"], reg.predict(X), power=1), rel=1e-10)


def test_pipeline_cross_validate_log_loss(bernoulli, routing):
    X, y, g = bernoulli
    est = MixedGLMClassifier().set_fit_request(groups=True)
    pipe = make_pipeline(StandardScaler(), est)
    cv = cross_validate(pipe, X, y, cv=GroupKFold(n_splits=4), scoring="neg_log_loss",
                        params={"groups": g.to_numpy()}, return_estimator=True)
    for fold in cv["estimator"]:
        assert fold[-1].n_groups_ == 15  # three quarters of the 20 groups
    # held-out groups are unseen: the score is the log loss of the population predictions
    first = cv["estimator"][0]
    test = np.setdiff1d(np.arange(20), first[-1].groups_.astype(int))
    rows = np.isin(g.to_numpy(), test)
    proba = first.predict_proba(X[rows])
    expected = -np.mean(np.where(y[rows] == 1, np.log(proba[:, 1]), np.log(proba[:, 0])))
    assert cv["test_score"][0] == pytest.approx(-expected, rel=1e-10)


def test_grid_search_over_link_with_groups(bernoulli, routing):
    X, y, g = bernoulli
    est = MixedGLMClassifier().set_fit_request(groups=True)
    search = GridSearchCV(est, {"link": ["logit", "probit"]}, cv=GroupKFold(n_splits=4),
                          scoring="neg_log_loss")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "no groups" would be a routing failure
        search.fit(X, y, groups=g.to_numpy())
    assert search.best_estimator_.n_groups_ == 20
    assert set(search.cv_results_["param_link"]) == {"logit", "probit"}


def test_inference_against_lme4(cbpp):
    df = cbpp[0]
    fit = glmer(CBPP, df)
    # lme4: confint(fit, method = "profile") (lme4 interpolates the profile with splines)
    ci = fit.conf_int(method="profile")
    expected = {"sd_(Intercept)|herd": (0.3460732, 1.0999746), "(Intercept)": (-1.9012120, -0.9477540),
                "period2": (-1.6167833, -0.4077631), "period3": (-1.8010244, -0.5115361),
                "period4": (-2.5007506, -0.8007553)}
    for name, (lo, hi) in expected.items():
        assert ci.loc[name, "lower"] == pytest.approx(lo, abs=5e-5)
        assert ci.loc[name, "upper"] == pytest.approx(hi, abs=5e-5)
    s = fit.summary()
    np.testing.assert_allclose(s.fixed_effects["z_value"], fit.fe_params_ / fit.bse_)
    assert "Wald z" in str(s) and "binomial (logit)" in str(s)
    # lme4: anova(glmer(cbind(...) ~ 1 + (1 | herd)), fit): Chisq 25.609938 on 3 df; lme4's
    # full fit stops 2.8e-4 short of the optimum, so ours is larger by up to twice that
    small = glmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", df)
    test = lr_test(small, fit)
    assert test.df == 3
    assert 0 <= test.statistic - 25.609938 <= 6e-4
    with pytest.raises(ValueError, match="different approximations"):
        lr_test(small, glmer(CBPP, df, n_agq=5))


@pytest.mark.parametrize("make, y, message", [
    (lambda: MixedGLMClassifier(), np.arange(60) % 3, "Only binary classification"),
    (lambda: MixedGLMRegressor(), -np.ones(60), "non-negative"),
    (lambda: MixedGLMRegressor(), np.full(60, 1.5), "whole numbers"),
    (lambda: MixedGLMRegressor(family="binomial"), np.full(60, 2.0), "outside \\[0, 1\\]"),
])
def test_bad_input_is_refused_and_leaves_the_estimator(make, y, message):
    rng = np.random.default_rng(0)
    X, g = rng.standard_normal((60, 1)), np.repeat(np.arange(6), 10)
    est = make()
    good_y = (rng.uniform(size=60) > 0.5).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a singular fit of pure noise: not the point here
        est.fit(X, good_y, groups=g)
    before = est.coef_.copy()
    with pytest.raises(ValueError, match=message):
        est.fit(X, y, groups=g)
    np.testing.assert_array_equal(est.coef_, before)


def _glmm_fit_by(path, est, df):
    """``est`` fitted to cbpp (as proportions of trials: a classifier gets the Bernoulli
    rows ``incidence > 0``) by arrays, a formula (what glmer does) or with two factors."""
    from mixedlm_sklearn.formula import parse_formula

    y = (df["incidence"] > 0).to_numpy(float) if isinstance(est, MixedGLMClassifier) else \
        (df["incidence"] / df["size"]).to_numpy()
    w = None if isinstance(est, MixedGLMClassifier) else df["size"].to_numpy(float)
    X = df["period"].str.get_dummies().iloc[:, 1:].to_numpy(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path == "arrays":
            return est.fit(X, y, groups=df["herd"].to_numpy(), sample_weight=w)
        if path == "several":
            groups = pd.DataFrame({"herd": df["herd"], "half": df.index % 2})
            return est.fit(pd.DataFrame(X, columns=["p2", "p3", "p4"]), y, groups=groups,
                           sample_weight=w, offset=np.zeros(len(df)))
        frame = parse_formula("y ~ period + (1 | herd)", df.assign(y=y))
        est.fit(**frame.fit_arguments(), sample_weight=w)
        est.model_frame_ = frame
        return est


@pytest.mark.parametrize("make", [MixedGLMClassifier, lambda: MixedGLMRegressor(family="binomial")])
@pytest.mark.parametrize("first, then", [("formula", "arrays"), ("arrays", "formula"),
                                         ("several", "arrays"), ("formula", "several")])
def test_a_refit_keeps_no_fitted_attribute_of_the_previous_fit(cbpp, make, first, then):
    """A refit has the fitted attributes (names ending in ``_``) of a fresh fit by its
    path and nothing else: no ``model_frame_`` of an earlier formula fit, whose
    ``new_data`` would feed predict the old formula's columns."""
    df = cbpp[0]
    est = _glmm_fit_by(then, _glmm_fit_by(first, make(), df), df)
    fresh = _glmm_fit_by(then, make(), df)
    attributes = {k for k in vars(fresh) if k.endswith("_")}
    assert {k for k in vars(est) if k.endswith("_")} == attributes
    assert ("model_frame_" in attributes) == (then == "formula")
    assert est.llf_ == fresh.llf_


def test_glmer_then_a_plain_fit_drops_the_model_frame(cbpp):
    df, X, y, size = cbpp
    est = glmer(CBPP, df)
    with pytest.raises(ValueError):  # a fit that raises leaves the model frame
        est.fit(df, sample_weight=size[:3])
    assert est.model_frame_.fit_arguments()["X"].shape == (56, 3)
    est.set_params(formula=None).fit(X.iloc[:, :2], y, groups=df["herd"], sample_weight=size)
    assert not hasattr(est, "model_frame_")


def _count_warnings(f, *args, **kwargs):
    """The messages of the non-integer-counts warnings of a fit (other warnings ignored)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f(*args, **kwargs)
    return [str(w.message) for w in caught if "non-integer" in str(w.message)]


def test_non_integer_successes_warn_and_say_how_to_give_the_trials(cbpp):
    """glmer warns "non-integer #successes in a binomial glm!"; so do we, for a proportion
    without its trials and for fractional counts, and say how to give the trials."""
    df, X, y, size = cbpp
    binomial = MixedGLMRegressor(family="binomial")
    # a proportion without trials (sample_weight 1)
    [message] = _count_warnings(binomial.fit, X, y, groups=df["herd"])
    assert "rows 0, 1, 2, 4, 5" in message and "sample_weight = trials" in message
    assert "cbind(successes, failures)" in message
    # fractional successes (y * w = 1.25), and whole successes with fractional failures
    w = np.full(len(y), 2.5)
    assert len(_count_warnings(binomial.fit, X, np.full(len(y), 0.5), groups=df["herd"],
                               sample_weight=w)) == 1
    assert len(_count_warnings(binomial.fit, X, np.full(len(y), 0.8), groups=df["herd"],
                               sample_weight=w)) == 1
    # counts: the proportion with its trials, glmer's cbind of whole numbers
    assert _count_warnings(binomial.fit, X, y, groups=df["herd"], sample_weight=size) == []
    assert _count_warnings(glmer, CBPP, df) == []
    # glmer: a proportion as the response, or cbind of fractional counts
    [message] = _count_warnings(glmer, "I(incidence / size) ~ period + (1 | herd)", df)
    assert "cbind(successes, failures)" in message
    assert len(_count_warnings(glmer, "cbind(incidence / 2, size - incidence) ~ period + (1 | herd)",
                               df)) == 1


def test_fractional_weights_of_a_classifier_are_no_counts(bernoulli):
    """The classifier's y are labels and its sample_weight importance weights."""
    X, y, g = bernoulli
    w = np.random.default_rng(0).uniform(0.2, 2.0, len(y))
    assert _count_warnings(MixedGLMClassifier().fit, X, y, groups=g, sample_weight=w) == []


def test_link_must_suit_the_family():
    with pytest.raises(ValueError, match="the poisson family takes the links \\['log'\\], got 'logit'"):
        MixedGLMRegressor(family="poisson", link="logit").fit(np.ones((4, 1)), np.ones(4), groups=[0, 0, 1, 1])


def test_agq_needs_one_scalar_term():
    df = load_verbagg().head(600)
    with pytest.raises(ValueError, match="single grouping factor with a scalar"):
        MixedGLMClassifier(n_agq=5).fit(df[["Anger"]], df["r2"], groups=df[["id", "item"]])


def test_a_large_offset_shifts_only_the_intercept(bernoulli):
    # an offset of 800 on the log scale: the start and the inner iteration must not overflow
    rng = np.random.default_rng(1)
    X, g = rng.standard_normal((80, 1)), np.repeat(np.arange(16), 5)
    y = rng.poisson(np.exp(0.5 + 0.8 * rng.standard_normal(16)[g])).astype(float)
    plain = MixedGLMRegressor().fit(X, y, groups=g)
    shifted = MixedGLMRegressor().fit(X, y, groups=g, offset=np.full(80, 800.0))
    assert shifted.intercept_ == pytest.approx(plain.intercept_ - 800.0, abs=1e-5)
    assert shifted.llf_ == pytest.approx(plain.llf_, abs=1e-6)
    np.testing.assert_allclose(shifted.cov_re_, plain.cov_re_, rtol=1e-4)


def test_pirls_breakdown_becomes_a_clear_error(monkeypatch, bernoulli):
    from mixedlm_sklearn import _glmm

    def diverge(*args, **kwargs):
        raise _glmm.PIRLSDivergence("step halving failed")

    monkeypatch.setattr(_glmm.GLMMDeviance, "_modes", diverge)
    X, y, g = bernoulli
    est = MixedGLMClassifier()
    with pytest.raises(ValueError, match="GLMM fit broke down numerically \\(at the starting values: step halving failed\\)"):
        est.fit(X, y, groups=g)
    assert not hasattr(est, "coef_")


def test_verbose_reports_the_optimiser(bernoulli, capsys):
    X, y, g = bernoulli
    MixedGLMClassifier(verbose=1).fit(X, y, groups=g)
    assert "[MixedGLMClassifier]" in capsys.readouterr().out


def test_singular_fit_matches_lme4():
    # No group effect in the data: the variance lands on its bound, as in lme4, where
    # glmer(y ~ x + (1 | g), d, family = binomial) on these rows reports a singular fit,
    # logLik -135.162788828 and fixed effects -0.02751098717, 0.39583314326.
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(10), 20)
    x = rng.standard_normal(200)
    y = rng.binomial(1, special.expit(0.3 + 0.5 * x))
    from mixedlm_sklearn import SingularFitWarning

    with pytest.warns(SingularFitWarning):
        clf = MixedGLMClassifier().fit(x[:, None], y, groups=g)
    assert clf.singular_ and clf.converged_ and clf.theta_[0] == 0.0
    assert clf.llf_ == pytest.approx(-135.162788828, abs=1e-8)
    np.testing.assert_allclose([clf.intercept_, clf.coef_[0]], [-0.02751098717, 0.39583314326], atol=1e-7)


def test_crossed_random_slope_with_a_singular_correlation():
    # lme4: glmer(y ~ x + (x | g) + (1 | h), d, binomial) on these rows: a singular fit
    # (correlation -1), logLik -355.9309512, sd 0.730910, 0.081822, 0.662663; with
    # (x | g) alone logLik -369.52653672. Ours reach at least as high.
    rng = np.random.default_rng(3)
    n = 600
    g, h, x = np.repeat(np.arange(30), 20), rng.integers(0, 8, n), rng.standard_normal(n)
    b, c = rng.standard_normal((30, 2)) * [0.8, 0.5], rng.standard_normal(8) * 0.6
    y = rng.binomial(1, special.expit(0.2 + 0.7 * x + b[g, 0] + b[g, 1] * x + c[h]))
    X, Z = pd.DataFrame({"x": x}), pd.DataFrame({"(Intercept)": np.ones(n), "x": x})
    with pytest.warns(UserWarning, match="singular"):
        crossed = MixedGLMClassifier().fit(X, y, groups=pd.DataFrame({"g": g, "h": h}), Z={"g": Z})
    assert crossed.singular_ and crossed.converged_
    assert crossed.llf_ >= -355.9309512 - 1e-6
    sd = np.sqrt(np.diag(crossed.cov_re_["g"]))
    np.testing.assert_allclose(sd, [0.730910, 0.081822], rtol=2e-3)
    cov = crossed.cov_re_["g"]
    assert cov[0, 1] / np.prod(sd) == pytest.approx(-1.0, abs=1e-8)
    with pytest.warns(UserWarning, match="singular"):
        single = MixedGLMClassifier().fit(X, y, groups=pd.Series(g, name="g"), Z=Z)
    assert single.llf_ >= -369.52653672 - 1e-6
    # marginal predictions integrate over the unseen term only
    new = pd.DataFrame({"g": g[:4], "h": 99})
    with pytest.warns(UserWarning, match="none of the groups"):
        conditional = crossed.decision_function(X.head(4), groups=new, Z={"g": Z.head(4)})
        marginal = crossed.predict_proba(X.head(4), groups=new, Z={"g": Z.head(4)}, marginal=True)[:, 1]
    s = np.sqrt(crossed.cov_re_["h"][0, 0])
    for eta, p in zip(conditional, marginal):
        expected = integrate.quad(lambda u: special.expit(eta + u) * stats.norm.pdf(u, scale=s), -12 * s, 12 * s)[0]
        assert p == pytest.approx(expected, abs=1e-10)


def test_wald_chi_square_test_of_the_periods(cbpp):
    # lme4 + car::linearHypothesis(fit, c("period2 = 0", "period3 = 0", "period4 = 0")) is
    # the quadratic form of beta over vcov(beta): checked here against its definition
    df = cbpp[0]
    fit = glmer(CBPP, df)
    test = fit.wald_test(["period2", "period3", "period4"])
    b = fit.fe_params_.to_numpy()[1:]
    V = fit.cov_fe_[1:, 1:]
    chi2 = float(b @ np.linalg.solve(V, b))
    assert test.method == "chi2" and test.df_num == 3
    assert test.statistic * test.df_num == pytest.approx(chi2, rel=1e-10)
    assert test.pvalue == pytest.approx(stats.chi2.sf(chi2, 3), rel=1e-10)
    from mixedlm_sklearn.inference import wald_test

    with pytest.raises(ValueError, match="ddf='chi2'"):
        wald_test(fit, "period2", ddf="satterthwaite")
    assert wald_test(fit, "period2").method == "chi2"  # the only test of a GLMM: the default
