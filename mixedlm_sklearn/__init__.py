"""Linear mixed-effects models as scikit-learn estimators, with lme4's answers.

Main entry point: :class:`MixedLMRegressor`.
"""

from .estimator import MixedLMRegressor, SingularFitWarning
from .formula import lmer

__version__ = "0.1.0"

__all__ = ["MixedLMRegressor", "SingularFitWarning", "lmer", "__version__"]
