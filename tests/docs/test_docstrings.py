"""The examples in the docstrings run and print what they show.

Every module of the package is collected (a new module is included without being
listed); the public ones, whose docstrings the API reference renders, and the engine
modules that have always carried examples must have them.
"""

import doctest
import importlib
import pkgutil

import pytest

import mixedlm_sklearn

MODULES = sorted(m.name for m in pkgutil.walk_packages(mixedlm_sklearn.__path__,
                                                       prefix="mixedlm_sklearn."))

# Modules whose public names the API reference documents, and engine modules with
# examples: each has runnable examples.
WITH_EXAMPLES = {
    "mixedlm_sklearn._deviance", "mixedlm_sklearn._iterative", "mixedlm_sklearn._validation",
    "mixedlm_sklearn._crossprod", "mixedlm_sklearn._glmm",
    "mixedlm_sklearn.estimator", "mixedlm_sklearn.glm_estimator", "mixedlm_sklearn.formula._frame",
    "mixedlm_sklearn.formula._update",
    "mixedlm_sklearn.plotting", "mixedlm_sklearn.design", "mixedlm_sklearn.datasets",
    "mixedlm_sklearn.inference.summary", "mixedlm_sklearn.inference.wald",
    "mixedlm_sklearn.inference.lrt", "mixedlm_sklearn.inference.satterthwaite",
    "mixedlm_sklearn.inference.profile", "mixedlm_sklearn.inference.kenward_roger",
    "mixedlm_sklearn.inference.anova", "mixedlm_sklearn.inference.ranova",
    "mixedlm_sklearn.inference.emmeans",
    "mixedlm_sklearn.inference.r2", "mixedlm_sklearn.inference.prediction",
    "mixedlm_sklearn.inference.simulation", "mixedlm_sklearn.inference.bootstrap",
    "mixedlm_sklearn.inference.power", "mixedlm_sklearn.inference.many",
}


def test_modules_with_examples_are_collected():
    assert WITH_EXAMPLES <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name == "mixedlm_sklearn.plotting":
        pytest.importorskip("matplotlib")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    if name in WITH_EXAMPLES:
        assert result.attempted > 0
    assert result.failed == 0
