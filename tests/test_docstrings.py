"""The examples in the public docstrings run and print what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "mixedlm_sklearn.estimator",
    "mixedlm_sklearn.inference.summary",
    "mixedlm_sklearn.inference.satterthwaite",
    "mixedlm_sklearn.inference.wald",
    "mixedlm_sklearn.inference.profile",
    "mixedlm_sklearn.inference.lrt",
    "mixedlm_sklearn.inference.kenward_roger",
    "mixedlm_sklearn.inference.anova",
    "mixedlm_sklearn.inference.emmeans",
    "mixedlm_sklearn.inference.r2",
    "mixedlm_sklearn.inference.prediction",
    "mixedlm_sklearn.inference.simulation",
    "mixedlm_sklearn.inference.bootstrap",
    "mixedlm_sklearn.inference.power",
    "mixedlm_sklearn._deviance",
    "mixedlm_sklearn._iterative",
    "mixedlm_sklearn.design",
    "mixedlm_sklearn.datasets",
    "mixedlm_sklearn._validation",
    "mixedlm_sklearn._crossprod",
    "mixedlm_sklearn._glmm",
    "mixedlm_sklearn.glm_estimator",
    "mixedlm_sklearn.inference.glmm",
    "mixedlm_sklearn.formula",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
