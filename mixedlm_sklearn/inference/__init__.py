"""Inference for a fitted :class:`~mixedlm_sklearn.MixedLMRegressor`: lme4's and lmerTest's numbers.

Written once against :class:`~mixedlm_sklearn._model.FittedModel` (the deviance of the
variance parameters, the solution there, a refit), with no branch on the kind of model:
one or several grouping factors, a residual variance per stratum, prior weights.

* :mod:`.summary`: lme4's ``summary`` with lmerTest's Satterthwaite t tests.
* :mod:`.satterthwaite`: Satterthwaite degrees of freedom (Kuznetsova et al. 2017).
* :mod:`.wald`: Wald F tests of linear hypotheses (lmerTest's ``contest``).
* :mod:`.profile`: profile-likelihood intervals (lme4's ``profile``/``confint``).
* :mod:`.lrt`: likelihood-ratio tests between nested fits, lme4's ``anova(m0, m1, ...)``.
* :mod:`.kenward_roger`: Kenward-Roger's adjusted covariance and df (pbkrtest).
* :mod:`.anova`: lmerTest's ``anova`` (type I and III F tests), ``drop1``, ``ranova``.
* :mod:`.emmeans`: estimated marginal means and their contrasts (emmeans).
* :mod:`.r2`: Nakagawa's R2 and the ICC (performance).
* :mod:`.prediction`: fitted values, residuals, prediction intervals.
* :mod:`.simulation`: responses drawn from a fit (lme4's ``simulate``).
* :mod:`.bootstrap`: the parametric bootstrap (lme4's ``bootMer``) and its LR test
  (pbkrtest's ``PBmodcomp``).
* :mod:`.power`: simulation-based power (simr's ``powerSim`` and ``powerCurve``).
* :mod:`.many`: the multi-output fit (many responses, one design) and its tables across
  responses (variancePartition's fractions, ``dream``-style tests with BH-adjusted p).
"""

from .bootstrap import BootstrapResult, PBTestResult, bootstrap, pb_test
from .lrt import LRTestResult, compare_models, lr_test
from .power import PowerResult, power, power_curve
from .profile import conf_int, profile
from .satterthwaite import satterthwaite_df
from .simulation import simulate
from .summary import Summary, summary
from .wald import WaldTestResult, wald_test

__all__ = [
    "Summary",
    "WaldTestResult",
    "LRTestResult",
    "summary",
    "conf_int",
    "profile",
    "wald_test",
    "lr_test",
    "compare_models",
    "satterthwaite_df",
    "simulate",
    "bootstrap",
    "BootstrapResult",
    "pb_test",
    "PBTestResult",
    "power",
    "power_curve",
    "PowerResult",
]
