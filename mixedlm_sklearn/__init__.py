"""Linear mixed-effects models as scikit-learn estimators, with lme4's answers.

Main entry point: :class:`MixedLMRegressor`.
"""

from .estimator import MixedLMRegressor, SingularFitWarning

__version__ = "0.1.0"

__all__ = ["MixedLMRegressor", "SingularFitWarning", "__version__"]
