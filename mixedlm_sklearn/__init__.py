"""Linear mixed-effects models as scikit-learn estimators, with lme4's answers.

Main entry points: :class:`MixedLMRegressor`, :class:`MixedGLMClassifier`,
:class:`MixedGLMRegressor` (and :func:`lmer`, :func:`glmer` for R formulas).
"""

from ._rank import RankDeficientWarning
from .api import compare, glmer, glmer_nb, lmer, power, power_curve, update
from .estimator import MixedLMRegressor, SingularFitWarning
from .glm_estimator import MixedGLMClassifier, MixedGLMRegressor
from .inference import LRTestResult, Summary, WaldTestResult, lr_test, pb_test
from .inference.anova import anova

__version__ = "0.1.0"

__all__ = [
    "MixedLMRegressor",
    "MixedGLMClassifier",
    "MixedGLMRegressor",
    "glmer",
    "glmer_nb",
    "SingularFitWarning",
    "RankDeficientWarning",
    "lmer",
    "update",
    "compare",
    "lr_test",
    "anova",
    "pb_test",
    "power",
    "power_curve",
    "Summary",
    "WaldTestResult",
    "LRTestResult",
    "__version__",
]
