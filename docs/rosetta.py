"""The Rosetta tables of the pages for users coming from R and from statsmodels.

One list of rows feeds both the pages (the ``rosetta-table`` directive of
``docs/_ext/rosetta_table.py`` renders them) and the test that runs every row's Python
side (``tests/docs/test_docs_rosetta.py``), so the tables cannot drift from the package.

A row is an R call (or a statsmodels call), this package's equivalent, and one line on
the differences. ``py`` is run in the namespace made by ``CONTEXTS[row.context]``; its
last expression's value is ``result`` for ``check``, which asserts against the R numbers
in ``docs/_data/r_reference.json`` (``R``) where R computed them, or against a property
where the answer is random (simulation, power). Rows with ``today=False`` are calls that
do not exist yet: ``py`` is what to write today.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

R_REFERENCE = Path(__file__).resolve().parent / "_data" / "r_reference.json"


def r_reference() -> dict:
    """R's numbers (lme4 1.1-31 and companions), as copied from the reference fits."""
    return json.loads(R_REFERENCE.read_text())


@dataclass(frozen=True)
class Row:
    """One line of a Rosetta table."""

    source: str   # "lme4" (lme4 and its companion R packages) or "statsmodels"
    section: str  # the table the row belongs to
    r: str        # the call in R (or in statsmodels)
    py: str       # the call here (Python code; the last expression is `result`)
    note: str     # differences, one line (MyST inline markup: ``code``, {class}`...`)
    context: str  # the key of CONTEXTS whose code makes the objects `py` uses
    check: str    # Python code run after `py`: asserts on `result`, with R's numbers in `R`
    today: bool = True  # False: not in the package yet, `py` is today's way


CONTEXTS = {
    "sleepstudy": """
import numpy as np
import pandas as pd
import mixedlm_sklearn
from mixedlm_sklearn import lmer, lr_test, pb_test, power, power_curve
from mixedlm_sklearn.datasets import load_sleepstudy

sleepstudy = load_sleepstudy()
m = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
m0 = lmer("Reaction ~ 1 + (Days | Subject)", sleepstudy)
m2 = lmer("Reaction ~ Days + I(Days^2) + (Days | Subject)", sleepstudy)
newdata = pd.DataFrame({"Subject": ["308", "335", "999"] * 3,
                        "Days": np.repeat([0, 4.5, 12], 3)})
""",
    "orthodont": """
import numpy as np
import pandas as pd
from mixedlm_sklearn import lmer
from mixedlm_sklearn.datasets import load_orthodont
from mixedlm_sklearn.inference.emmeans import emmeans, joint_tests

orthodont = load_orthodont()
orthodont["Sex"] = pd.Categorical(orthodont["Sex"], categories=["Male", "Female"])
m = lmer("distance ~ age * Sex + (age | Subject)", orthodont)
m1 = lmer("distance ~ age * Sex + (1 | Subject)", orthodont)
""",
    "cbpp": """
from mixedlm_sklearn import glmer
from mixedlm_sklearn.datasets import load_cbpp

cbpp = load_cbpp()
""",
    "dietox": """
import numpy as np
from mixedlm_sklearn import MixedLMRegressor, lmer
from mixedlm_sklearn.datasets import load_dietox

dietox = load_dietox()
m = lmer("Weight ~ Time + (Time | Pig)", dietox)
""",
    "beyond": """
import numpy as np
from mixedlm_sklearn import MixedLMRegressor, glmer_nb, lmer, lr_test
from mixedlm_sklearn.datasets import load_bodyweight, load_grouseticks, load_ovary

ovary, bodyweight, grouseticks = load_ovary(), load_bodyweight(), load_grouseticks()
""",
}

_S = 'R["sleepstudy"]'
_O = 'R["orthodont"]'

ROWS: list[Row] = [
    # ---- lme4: fitting ----------------------------------------------------------------
    Row("lme4", "fit",
        "m <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy)",
        'm = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)',
        "The same formula language, with R's meaning; returns a fitted "
        "{class}`~mixedlm_sklearn.MixedLMRegressor`, a scikit-learn estimator.",
        "sleepstudy",
        f"assert abs(m.llf_ - {_S}['logLik']) < 1e-6"),
    Row("lme4", "fit",
        "lmer(..., REML = FALSE)",
        'lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, reml=False)',
        "Python spelling ``reml``; ``MixedLMRegressor(reml=False)`` for the array interface.",
        "sleepstudy",
        f"assert abs(result.llf_ - {_S}['logLik_ML']) < 1e-6"),
    Row("lme4", "fit",
        "lmer(..., control = lmerControl(optCtrl = list(maxfun = 1e5)))",
        'lmer("Reaction ~ Days + (Days | Subject)", sleepstudy,\n'
        '     max_iter=100_000, tol=1e-10, verbose=1)',
        "Estimator parameters (``max_iter``, ``tol``, ``verbose``, ``solver``) instead of a "
        "control object; there is one optimiser, so no ``optimizer =`` choice.",
        "sleepstudy",
        f"assert result.converged_ and abs(result.llf_ - {_S}['logLik']) < 1e-6"),
    Row("lme4", "fit",
        "gm <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd),\n"
        "            cbpp, family = binomial)",
        'gm = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",\n'
        '           cbpp, family="binomial")',
        "``family`` is a string; ``link=`` is separate. lme4's default fit stops 2.8e-4 "
        "short of the maximum; this one reaches it.",
        "cbpp",
        # R's reference is a tight-tolerance refit (tolPwrss 1e-12) that still stops 2.9e-4
        # below our log-likelihood: we are at least as high, the estimates within 1e-3
        'R_cbpp = R["cbpp"]\n'
        'assert gm.llf_ >= R_cbpp["logLik"] - 1e-6\n'
        'np.testing.assert_allclose(gm.fe_params_, R_cbpp["fixef"], rtol=1e-3)'),
    Row("lme4", "fit",
        "glmer(cbind(incidence, size - incidence) ~ C(period, contr.sum) + (1 | herd),\n"
        "      cbpp, family = binomial)",
        'glmer("cbind(incidence, size - incidence) ~ C(period, contr.sum) + (1 | herd)",\n'
        '      cbpp, family="binomial")',
        "R's contrasts and names in the formula: ``C(x, contr.sum)``, ``contr.helmert``, "
        "``contr.treatment``, ``relevel(x, ref = \"b\")``; lmer's ``contrasts =`` argument "
        "is not there.",
        "cbpp",
        'R_sum = R["cbpp"]["contr_sum"]\n'
        'assert list(result.fe_params_.index) == R_sum["fe_names"]\n'
        'assert result.llf_ >= R_sum["logLik"] - 1e-6\n'
        'np.testing.assert_allclose(result.fe_params_, R_sum["fixef"], rtol=1e-4)'),
    Row("lme4", "fit",
        "glmer(..., nAGQ = 25)",
        'glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",\n'
        '      cbpp, family="binomial", n_agq=25)',
        "``n_agq``; as in lme4, more than one node needs a single scalar random effect. "
        "``llf_`` keeps all constants, lme4's ``logLik`` for nAGQ > 1 omits one.",
        "cbpp",
        "assert result.converged_ and abs(float(result.cov_re_[0, 0]) - 0.4193) < 1e-4"),
    # ---- lme4: parameters -------------------------------------------------------------
    Row("lme4", "parameters", "fixef(m)", "m.fe_params_",
        "A pandas Series with lme4's names; ``coef_`` and ``intercept_`` as in scikit-learn.",
        "sleepstudy",
        f"np.testing.assert_allclose(result, {_S}['fixef'], rtol=1e-6)"),
    Row("lme4", "parameters", "ranef(m)", "m.random_effects_",
        "A DataFrame with a row per level (several grouping factors: a dict of them).",
        "sleepstudy",
        f"np.testing.assert_allclose(result.loc['308'], {_S}['ranef_308'], rtol=1e-4)\n"
        f"np.testing.assert_allclose(result.loc['309'], {_S}['ranef_309'], rtol=1e-4)"),
    Row("lme4", "parameters", "ranef(m, condVar = TRUE)", "m.random_effects_cov_",
        "An array of shape (levels, q, q), in the order of ``random_effects_``.",
        "sleepstudy",
        f"np.testing.assert_allclose(result[0].ravel(), {_S}['condVar_308'], rtol=1e-4)"),
    Row("lme4", "parameters", "VarCorr(m)", "m.cov_re_\nm.summary().random_effects",
        "The covariance matrix (a dict by factor with several terms); the summary's "
        "table has the variances, standard deviations and correlations.",
        "sleepstudy",
        f"np.testing.assert_allclose(m.cov_re_, {_S}['VarCorr_cov'], rtol=1e-4)"),
    Row("lme4", "parameters", "sigma(m)", "np.sqrt(m.scale_)",
        "``scale_`` is the residual variance, as statsmodels names it.",
        "sleepstudy",
        f"assert abs(result / np.sqrt({_S}['sigma2']) - 1) < 1e-5"),
    Row("lme4", "parameters", "getME(m, \"theta\")", "m.theta_",
        "The relative covariance factor, in lme4's order.",
        "sleepstudy",
        f"L = np.linalg.cholesky(np.array({_S}['VarCorr_cov']) / {_S}['sigma2'])\n"
        "np.testing.assert_allclose(result, L[np.tril_indices(2)][[0, 1, 2]], rtol=1e-4)"),
    Row("lme4", "parameters", "logLik(m)", "m.llf_",
        "For a REML fit the REML criterion on ``logLik``'s scale, as lme4 reports it.",
        "sleepstudy",
        f"assert abs(result - {_S}['logLik']) < 1e-6"),
    Row("lme4", "parameters", "AIC(m); BIC(m)", "m.aic_, m.bic_",
        "lme4's parameter count (``df_model_``); BIC with log(n), as lme4.",
        "sleepstudy",
        f"np.testing.assert_allclose(result, [{_S}['AIC'], {_S}['BIC']], rtol=1e-9)"),
    Row("lme4", "parameters", "isSingular(m)", "m.singular_",
        "A {class}`~mixedlm_sklearn.SingularFitWarning` is also issued at fit time.",
        "sleepstudy",
        f"assert result == {_S}['isSingular']"),
    Row("lme4", "parameters", "fitted(m); residuals(m)", "m.fitted(), m.residuals()",
        "Series indexed like the data; ``level=\"marginal\"`` leaves the random effects "
        "out; ``type=\"pearson\"`` scales by the residual standard deviation.",
        "sleepstudy",
        f"np.testing.assert_allclose(result[0].iloc[:5], {_S}['fitted_head'], rtol=1e-6)\n"
        "np.testing.assert_allclose(result[0] + result[1], sleepstudy['Reaction'], rtol=1e-12)"),
    # ---- lme4 + lmerTest + pbkrtest: tests and tables ----------------------------------
    Row("lme4", "tests", "summary(m)  # lmerTest", "print(m.summary())",
        "lmerTest's Satterthwaite t tests; ``m.summary(ddf=\"kenward-roger\")`` is "
        "``summary(m, ddf = \"Kenward-Roger\")``. A {class}`~mixedlm_sklearn.Summary` "
        "whose tables are DataFrames.",
        "sleepstudy",
        "fe = m.summary().fixed_effects\n"
        f"np.testing.assert_allclose(fe['df'], {_S}['df_satterthwaite'], rtol=1e-4)\n"
        f"np.testing.assert_allclose(fe['p_value'], {_S}['p_satterthwaite'], rtol=1e-3)"),
    Row("lme4", "tests", "anova(m)  # lmerTest, type III", "m.anova()",
        "F tests with Satterthwaite's df; ``type=1`` for the sequential table.",
        "orthodont",
        # lme4 stops 5.6e-6 short of the REML optimum on Orthodont: 8e-4 relative in F
        f"np.testing.assert_allclose(result['F value'], {_O}['anova_type3_satterthwaite']['F value'], rtol=1e-3)\n"
        f"np.testing.assert_allclose(result['DenDF'], {_O}['anova_type3_satterthwaite']['DenDF'], rtol=1e-3)"),
    Row("lme4", "tests", "anova(m, type = 1)", "m.anova(type=1)",
        "Sequential (type I) F tests.",
        "orthodont",
        f"np.testing.assert_allclose(result['F value'], {_O}['anova_type1_satterthwaite']['F value'], rtol=1e-3)"),
    Row("lme4", "tests", "anova(m, ddf = \"Kenward-Roger\")", 'm.anova(ddf="kenward-roger")',
        "Kenward-Roger needs a REML fit; an ML fit is refused rather than silently refitted.",
        "orthodont",
        f"np.testing.assert_allclose(result['DenDF'], {_O}['anova_type3_kenward_roger']['DenDF'], rtol=1e-9)\n"
        f"np.testing.assert_allclose(result['F value'], {_O}['anova_type3_kenward_roger']['F value'], rtol=1e-3)"),
    Row("lme4", "tests", "anova(m0, m, m2)", "mixedlm_sklearn.anova(m0, m, m2)",
        "REML fits are refitted by ML with lme4's message (a ``UserWarning``); "
        "``refit=False`` compares REML fits of the same fixed effects.",
        "sleepstudy",
        f"ref = {_S}['anova_m0_m_m2']\n"
        "np.testing.assert_allclose(result['logLik'], ref['logLik'], rtol=1e-9)\n"
        "np.testing.assert_allclose(result['Chisq'].iloc[1:], ref['Chisq'][1:], rtol=1e-6)"),
    Row("lme4", "tests", "drop1(m)  # lmerTest", "m.drop1()",
        "F tests of dropping each term no other term contains.",
        "orthodont",
        f"np.testing.assert_allclose(result['F value'], [{_O}['drop1']['F value']], rtol=1e-3)"),
    Row("lme4", "tests", "ranova(m)  # lmerTest", "m.ranova()",
        "Likelihood-ratio tests of each random-effects term's reduction.",
        "orthodont",
        f"np.testing.assert_allclose(result['LRT'].iloc[1], {_O}['ranova']['LRT'][1], rtol=1e-5)"),
    Row("lme4", "tests", "anova(m_small, m_big)  # both ML",
        'small = lmer("Reaction ~ Days + (1 | Subject)", sleepstudy, reml=False)\n'
        'big = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, reml=False)\n'
        "lr_test(small, big)",
        "One pair of fits; ``boundary=True`` halves the p-value's chi-square mixture for a "
        "variance on its bound (lme4 does not).",
        "sleepstudy",
        f"assert abs(result.statistic / {_S}['lrt_random_slope_ML']['chisq'] - 1) < 1e-6"),
    Row("lme4", "tests", "confint(m, method = \"Wald\")", 'm.conf_int(method="wald")',
        "The fixed effects only (lme4 adds NA rows for the variance parameters); normal "
        "quantiles by default, ``ddf=\"satterthwaite\"`` for t quantiles.",
        "sleepstudy",
        f"np.testing.assert_allclose(result['lower'], {_S}['confint_Wald']['lower'], rtol=1e-6)\n"
        f"np.testing.assert_allclose(result['upper'], {_S}['confint_Wald']['upper'], rtol=1e-6)"),
    Row("lme4", "tests", "confint(m)  # profile", 'm.conf_int(method="profile")',
        "lme4's parameter names and its ML profile; ``criterion=\"reml\"`` profiles the "
        "REML criterion instead.",
        "sleepstudy",
        f"ci = {_S}['confint_profile']\n"
        "width = np.subtract(ci['upper'], ci['lower'])\n"
        "assert list(result.index) == ci['names']\n"
        "assert np.all(np.abs(result['lower'] - ci['lower']) < 1e-3 * width)\n"
        "assert np.all(np.abs(result['upper'] - ci['upper']) < 1e-3 * width)"),
    Row("lme4", "tests", "confint(m, method = \"boot\", nsim = 1000)",
        'm.conf_int(method="boot", n_boot=1000, random_state=0)',
        "Percentile intervals by default (``boot_type``); the same ``random_state`` gives "
        "the same replicates whatever ``n_jobs`` is.",
        "sleepstudy",
        # Monte Carlo: R's bounds carry an error of a few % of the width
        f"ci = {_S}['confint_boot_percentile']\n"
        "width = np.subtract(ci['upper'], ci['lower'])\n"
        "assert np.all(np.abs(result['lower'] - ci['lower']) < 0.15 * width)\n"
        "assert np.all(np.abs(result['upper'] - ci['upper']) < 0.15 * width)"),
    Row("lme4", "tests", "KRmodcomp(m, m_without_age_Sex)  # pbkrtest",
        'm.wald_test("age:SexFemale", ddf="kenward-roger")',
        "A hypothesis on the fixed effects (names or a contrast matrix) rather than a "
        "second fit.",
        "orthodont",
        f"kr = {_O}['anova_type3_kenward_roger']\n"
        "assert abs(result.statistic / kr['F value'][2] - 1) < 1e-3\n"
        "assert abs(result.df_denom / kr['DenDF'][2] - 1) < 1e-6"),
    Row("lme4", "tests", "vcovAdj(m)  # pbkrtest", 'm.cov_fe(adjust="kenward-roger")',
        "Computed from the cross-products, so emmeans' 3,000-row limit does not apply.",
        "orthodont",
        # lme4 stops short on Orthodont: 5.6e-4 relative at our optimum (README)
        f"np.testing.assert_allclose(result, {_O}['kr_vcov'], rtol=1e-3, atol=1e-6)"),
    Row("lme4", "tests", "PBmodcomp(m, m0, nsim = 1000)  # pbkrtest",
        "pb_test(m0, m, n_boot=1000, random_state=0)",
        "The smaller model first; REML fits are refitted by ML, as pbkrtest does.",
        "sleepstudy",
        f"ref = {_S}['PBmodcomp_m0_m']\n"
        "assert abs(result.statistic / ref['stat'] - 1) < 1e-6\n"
        "assert result.pvalue < 0.01 and ref['p_pb'] < 0.01"),
    Row("lme4", "tests", "bootMer(m, fixef, nsim = 500)",
        "m.bootstrap(n_boot=500, random_state=0,\n"
        "            statistic=lambda fit: fit.fe_params_.rename(lambda k: 'b ' + k))",
        "Every parameter on lme4's scale by default; ``statistic`` adds columns. "
        "``.replicates``, ``.summary()``, ``.conf_int()``.",
        "sleepstudy",
        "assert result.replicates.shape == (500, 8) and result.n_failed == 0\n"
        f"assert abs(result.replicates['b Days'].std() / {_S}['se'][1] - 1) < 0.15"),
    Row("lme4", "tests", "simulate(m, nsim = 10)", "m.simulate(n_sim=10, random_state=0)",
        "An array (rows, n_sim); ``conditional=True`` keeps the fitted random effects "
        "(lme4's ``re.form = NULL``).",
        "sleepstudy",
        "assert result.shape == (180, 10)\n"
        "assert abs(result.mean() - sleepstudy['Reaction'].mean()) < 30"),
    # ---- emmeans, performance, simr ----------------------------------------------------
    Row("lme4", "means", "emmeans(m, \"Sex\")  # emmeans", 'm.emmeans("Sex").table',
        "Kenward-Roger df by default, as emmeans; ``ddf=\"satterthwaite\"`` for the other.",
        "orthodont",
        f"np.testing.assert_allclose(result['emmean'], {_O}['emmeans_sex']['emmean'], rtol=1e-8)\n"
        f"np.testing.assert_allclose(result['SE'], {_O}['emmeans_sex']['SE'], rtol=5e-4)"),
    Row("lme4", "means", "pairs(emmeans(m, \"Sex\"))", 'm.emmeans("Sex").pairs()',
        "Tukey's adjustment by default; ``adjust=\"holm\" | \"bonferroni\" | \"none\"``.",
        "orthodont",
        f"assert abs(result['estimate'].iloc[0] - {_O}['emmeans_sex_pairs']['estimate']) < 1e-8\n"
        f"assert abs(result['p.value'].iloc[0] - {_O}['emmeans_sex_pairs']['p.value']) < 1e-5"),
    Row("lme4", "means", "contrast(emmeans(m, \"Sex\"), list(c1 = c(1, -1)))",
        'm.emmeans("Sex").contrast([1, -1])',
        "Coefficients as a list, array or dict of named rows.",
        "orthodont",
        f"assert abs(result['estimate'].iloc[0] - {_O}['emmeans_sex_pairs']['estimate']) < 1e-8"),
    Row("lme4", "means",
        "emmeans(m, pairwise ~ Sex | age, at = list(age = c(8, 10, 12, 14)))",
        'emmeans(m, "pairwise ~ Sex | age", at={"age": [8, 10, 12, 14]}).contrasts',
        "Specs as emmeans writes them (read, never evaluated); ``by=`` as an argument too; "
        "``.emmeans`` and ``.contrasts`` print as ``$emmeans`` and ``$contrasts``.",
        "orthodont",
        "# emmeans 1.8.4: tests/data/reference/product/emmeans_orthodont.json\n"
        "np.testing.assert_allclose(result['estimate'], [1.406534, 2.016193, 2.625852, "
        "3.235511], rtol=1e-6)\n"
        "np.testing.assert_allclose(result['p.value'], [0.1005637, 0.01362261, 0.002644248, "
        "0.00135821], rtol=1e-4)"),
    Row("lme4", "means", "joint_tests(m)  # emmeans", "joint_tests(m)",
        "Kenward-Roger df by default, as emmeans; ``by=`` and ``ddf=`` as there.",
        "orthodont",
        "# emmeans 1.8.4: F from its est.fcns, unrounded\n"
        "np.testing.assert_allclose(result['F.ratio'], [87.99874, 9.29211, 5.118599], "
        "rtol=1e-5)\n"
        "np.testing.assert_allclose(result['df2'], [25, 25, 25], rtol=1e-6)"),
    Row("lme4", "means", "r2_nakagawa(m1)  # performance", "m1.r2()",
        "``.marginal`` and ``.conditional``; random slopes as Johnson (2014).",
        "orthodont",
        f"r2 = {_O}['r2_intercept_model']\n"
        "np.testing.assert_allclose([result.marginal, result.conditional], "
        "[r2['r2_marginal'], r2['r2_conditional']], rtol=1e-7)"),
    Row("lme4", "means", "icc(m1)  # performance", "m1.icc()",
        "``.adjusted`` and ``.unadjusted``.",
        "orthodont",
        f"r2 = {_O}['r2_intercept_model']\n"
        "np.testing.assert_allclose([result.adjusted, result.unadjusted], "
        "[r2['icc_adjusted'], r2['icc_unadjusted']], rtol=1e-7)"),
    Row("lme4", "means", "powerSim(m, fixed(\"Days\"), nsim = 100)  # simr",
        'power(m, "Days", effect=3.0, n_sim=100, random_state=0)',
        "Effect sizes, variances and numbers of groups are arguments (simr changes the "
        "model object); the result has a Clopper-Pearson interval.",
        "sleepstudy",
        "assert 0.0 <= result.lower <= result.power <= result.upper <= 1.0\n"
        "assert result.power > 0.2  # a slope of 3 against sd(slope) 5.9 with 18 subjects"),
    Row("lme4", "means",
        "powerCurve(extend(m, along = \"Subject\", n = 20), along = \"Subject\")  # simr",
        'power_curve(m, "Days", along="Subject", n_groups=[5, 10, 20],\n'
        "            effect=3.0, n_sim=50, random_state=0)",
        "More groups repeat the rows of existing ones under new labels, as simr's "
        "``extend``. A DataFrame, a row per size.",
        "sleepstudy",
        "assert list(result['n_groups']) == [5, 10, 20]\n"
        "assert result['power'].iloc[-1] > result['power'].iloc[0]"),
    # ---- prediction -----------------------------------------------------------------------
    Row("lme4", "prediction", "predict(m, newdata, allow.new.levels = TRUE)",
        "m.predict(newdata)",
        "New levels (subject ``999``) get the population prediction without being asked "
        "(``allow_new_levels=True``, the default here; ``False`` refuses them, lme4's default).",
        "sleepstudy",
        f"np.testing.assert_allclose(result, {_S}['predict_newdata']['allow_new_levels'], rtol=1e-6)"),
    Row("lme4", "prediction", "predict(m, newdata, re.form = NA)",
        "m.predict(newdata, re_form=None)",
        "``re_form`` also takes a formula of terms (``\"~ (1 | Subject)\"``) or factor names.",
        "sleepstudy",
        f"np.testing.assert_allclose(result, {_S}['predict_newdata']['re_form_NA'], rtol=1e-9)"),
    Row("lme4", "prediction", "update(m, . ~ . + I(Days^2))",
        'mixedlm_sklearn.update(m, ". ~ . + I(Days^2)")',
        "R's ``update.formula`` rules; ``REML=False`` and other parameters as keywords.",
        "sleepstudy",
        "assert result.converged_\n"
        f"assert abs(mixedlm_sklearn.anova(m, result)['Chisq'].iloc[1] - {_S}['anova_m0_m_m2']['Chisq'][2]) < 1e-6"),
    # ---- beyond lme4: nlme's correlated residuals, glmmTMB's families ---------------------
    Row("lme4", "beyond",
        "lme(follicles ~ sin(2*pi*Time) + cos(2*pi*Time), Ovary,\n"
        "    random = ~ 1 | Mare, correlation = corAR1(form = ~ 1 | Mare))",
        'lmer("follicles ~ sin(2*pi*Time) + cos(2*pi*Time) + (1 | Mare)", ovary,\n'
        '     correlation="corAR1(form = ~ 1 | Mare)")',
        "nlme's ``corAR1``, ``corCAR1``, ``corExp``, ``corCompSymm`` as ``correlation=`` "
        "(nlme's spelling or ``\"ar1(~ visit | Mare)\"``), the random part in lme4's syntax; "
        "``correlation_params_`` holds ``Phi``.",
        "beyond",
        'R_ov = R["ovary"]\n'
        'assert result.llf_ >= R_ov["logLik"] - 1e-6\n'
        'assert abs(result.correlation_params_["Phi"] / R_ov["Phi"] - 1) < 1e-4\n'
        'np.testing.assert_allclose(result.fe_params_, R_ov["fixef"], rtol=1e-4)'),
    Row("lme4", "beyond",
        "lme(weight ~ Time * Diet, BodyWeight, random = ~ Time | Rat,\n"
        "    correlation = corCAR1(form = ~ Time | Rat))",
        'lmer("weight ~ Time * Diet + (Time | Rat)", bodyweight,\n'
        '     correlation="car1(~ Time | Rat)")',
        "Continuous time: the correlation of two rows is ``Phi^|t - s|`` (uneven gaps).",
        "beyond",
        'R_bw = R["bodyweight"]\n'
        'assert result.llf_ >= R_bw["logLik"] - 1e-6\n'
        'assert abs(result.correlation_params_["Phi"] / R_bw["Phi"] - 1) < 1e-4'),
    Row("lme4", "beyond",
        'intervals(fit, which = "var-cov")$corStruct',
        'fit = lmer("follicles ~ sin(2*pi*Time) + cos(2*pi*Time) + (1 | Mare)", ovary,\n'
        '           correlation="ar1(~ visit | Mare)")\n'
        'fit.conf_int(method="profile", which=["Phi"])',
        "A profile-likelihood interval (nlme's is a Wald interval on a transformed scale).",
        "beyond",
        'lo, hi = result.iloc[0]\n'
        'assert lo < R["ovary"]["Phi"] < hi'),
    Row("lme4", "beyond",
        "glmer.nb(TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION), grouseticks)\n"
        "glmmTMB(..., family = nbinom2)",
        'glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", grouseticks)',
        "NB2, theta estimated jointly as by glmmTMB, whose Laplace approximation (exact "
        "Hessian) this is: its log-likelihood is glmmTMB's, not glmer.nb's (-888.84, Fisher "
        "weights). ``family_params_`` holds ``theta``; ``family=\"gamma\", link=\"log\"`` "
        "(or R's ``'Gamma(link = \"log\")'``) fits glmmTMB's Gamma GLMM the same way.",
        "beyond",
        'R_nb = R["grouseticks_nb"]\n'
        'assert result.llf_ >= R_nb["logLik_glmmTMB"] - 1e-6\n'
        'assert abs(result.family_params_["theta"] / R_nb["theta_glmmTMB"] - 1) < 1e-4\n'
        'np.testing.assert_allclose(result.fe_params_, R_nb["fixef_glmmTMB"], rtol=1e-4)'),
    # ---- statsmodels MixedLM ------------------------------------------------------------
    Row("statsmodels", "statsmodels",
        'smf.mixedlm("Weight ~ Time", dietox, groups=dietox["Pig"]).fit()',
        'lmer("Weight ~ Time + (1 | Pig)", dietox)\n'
        "# or, arrays:\n"
        'MixedLMRegressor().fit(dietox[["Time"]], dietox["Weight"], groups=dietox["Pig"])',
        "The grouping factor is part of the formula (lme4's syntax) or the ``groups`` "
        "argument of ``fit``; the estimator is configured, then fitted.",
        "dietox",
        "assert result.converged_ and result.n_groups_ == 72"),
    Row("statsmodels", "statsmodels",
        'smf.mixedlm("Weight ~ Time", dietox, groups=dietox["Pig"],\n'
        '            re_formula="~Time").fit()',
        'lmer("Weight ~ Time + (Time | Pig)", dietox)\n'
        "# or, arrays: Z is the random-effects design\n"
        'Z = dietox[["Time"]].assign(Intercept=1.0)[["Intercept", "Time"]]\n'
        'MixedLMRegressor().fit(dietox[["Time"]], dietox["Weight"],\n'
        '                       groups=dietox["Pig"], Z=Z)',
        "statsmodels stops at log-likelihood -2220.39 with convergence warnings; lme4 and "
        "this package reach -2217.05.",
        "dietox",
        'assert abs(result.llf_ - R["dietox"]["logLik"]) < 1e-6'),
    Row("statsmodels", "statsmodels",
        'smf.mixedlm("Weight ~ Time", dietox, groups="Litter",\n'
        '            vc_formula={"Pig": "0 + C(Pig)"}).fit()',
        'lmer("Weight ~ Time + (1 | Litter/Pig)", dietox)',
        "Variance components inside a group are nested random effects: "
        "``(1 | Litter/Pig)`` is ``(1 | Litter) + (1 | Litter:Pig)``. Crossed factors "
        "(``(1 | a) + (1 | b)``), which ``vc_formula`` cannot express, work the same way.",
        "dietox",
        "assert result.converged_ and set(result.n_groups_) == {'Litter', 'Litter:Pig'}\n"
        "assert result.n_groups_['Litter:Pig'] == 72"),
    Row("statsmodels", "statsmodels",
        ".fit(reml=False)",
        'lmer("Weight ~ Time + (Time | Pig)", dietox, reml=False)\n'
        "MixedLMRegressor(reml=False)",
        "A hyper-parameter of the estimator (so a grid search can choose it), not of ``fit``.",
        "dietox",
        "assert result.reml is False"),
    Row("statsmodels", "statsmodels",
        "result.fe_params, result.bse_fe, result.cov_re, result.scale, result.llf",
        "m.fe_params_, m.bse_, m.cov_re_, m.scale_, m.llf_",
        "The same quantities under scikit-learn's trailing-underscore names.",
        "dietox",
        'np.testing.assert_allclose(result[0], R["dietox"]["fixef"], rtol=1e-6)\n'
        'np.testing.assert_allclose(result[2], R["dietox"]["VarCorr_cov"], rtol=1e-4)\n'
        'assert abs(result[3] / R["dietox"]["sigma2"] - 1) < 1e-4'),
    Row("statsmodels", "statsmodels",
        "result.random_effects",
        "m.random_effects_",
        "One DataFrame with a row per level, instead of a dict of Series per group.",
        "dietox",
        "assert result.shape == (72, 2)"),
    Row("statsmodels", "statsmodels",
        'result.profile_re(0, "re", dist_low=..., dist_high=...)',
        'm.conf_int(method="profile", which="sd_(Intercept)|Pig")',
        "Profiles lme4's parameters (standard deviations, correlations, sigma, fixed "
        "effects): ``m.profile(which=...)`` gives the zeta curve on a grid, "
        "{func}`~mixedlm_sklearn.plotting.profile_zeta` plots it.",
        "dietox",
        "assert list(result.index) == ['sd_(Intercept)|Pig']\n"
        "assert result['lower'].iloc[0] < np.sqrt(m.cov_re_[0, 0]) < result['upper'].iloc[0]"),
    Row("statsmodels", "statsmodels",
        "result.summary()",
        "print(m.summary())",
        "Satterthwaite t tests and lme4's layout; statsmodels gives z tests.",
        "dietox",
        "assert 'Satterthwaite' in str(m.summary())"),
    Row("statsmodels", "statsmodels",
        "result.predict(exog)",
        'm.predict(dietox[["Time"]], re_form=None)',
        "``re_form=None``: the population prediction, as statsmodels'; by default a formula "
        "fit adds the random effects of the pigs it has seen (``Pig`` in the new rows).",
        "dietox",
        "np.testing.assert_allclose(result, m.intercept_ + m.coef_[0] * dietox['Time'], rtol=1e-12)"),
]
