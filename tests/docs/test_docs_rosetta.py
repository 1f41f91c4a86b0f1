"""Every row of the documentation's Rosetta tables runs and gives R's answer.

The rows (an R or statsmodels call, this package's call, the differences) live in
``docs/rosetta.py``, from which the pages are also built, so a row whose Python side
breaks or drifts from R's numbers fails here. R's numbers are in
``docs/_data/r_reference.json`` (copied from the reference fits in ``tests/data``).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"

if not (DOCS / "rosetta.py").is_file():  # e.g. an installed package without the sources
    pytest.skip("docs/rosetta.py is not available", allow_module_level=True)

pytest.importorskip("formulaic")


def _load_rosetta():
    spec = importlib.util.spec_from_file_location("docs_rosetta", DOCS / "rosetta.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rosetta = _load_rosetta()
R = rosetta.r_reference()


@lru_cache(maxsize=None)
def _context(name: str) -> dict:
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(rosetta.CONTEXTS[name], f"<context {name}>", "exec"), namespace)
    return namespace


def _run(code: str, namespace: dict, origin: str):
    """Execute ``code``; the value of its last statement when that is an expression."""
    tree = ast.parse(code, filename=origin)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, origin, "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), origin, "eval"), namespace)


def _row_id(row) -> str:
    return f"{row.source}-{row.r.splitlines()[0][:40]}"


@pytest.mark.parametrize("row", rosetta.ROWS, ids=_row_id)
def test_rosetta_row_runs_and_agrees(row):
    namespace = dict(_context(row.context))
    namespace["R"] = R
    namespace["np"] = np
    with warnings.catch_warnings():
        # lme4's refit message and the like are part of the calls' documented behaviour
        warnings.simplefilter("ignore")
        result = _run(row.py, namespace, f"<{row.r}>")
    namespace["result"] = result
    exec(compile(row.check, f"<check of {row.r}>", "exec"), namespace)


def test_every_listed_r_call_has_a_row():
    """The R functions the pages for R users promise to cover each have a row."""
    wanted = ["lmer(", "glmer(", "fixef(", "ranef(", "VarCorr(", "sigma(", "logLik(", "AIC(",
              "BIC(", "summary(", "anova(m)", "anova(m0, m, m2)", "confint(", "method = \"boot\"",
              "method = \"Wald\"", "predict(", "re.form = NA", "allow.new.levels", "simulate(",
              "bootMer(", "PBmodcomp(", "KRmodcomp(", "vcovAdj(", "ranova(", "drop1(",
              "emmeans(", "pairs(", "contrast(", "r2_nakagawa(", "icc(", "powerSim(",
              "isSingular(", "update(", "REML = FALSE", "control =", "nAGQ"]
    calls = "\n".join(row.r for row in rosetta.ROWS if row.source == "lme4")
    missing = [w for w in wanted if w not in calls]
    assert not missing
    statsmodels = "\n".join(row.r for row in rosetta.ROWS if row.source == "statsmodels")
    for w in ["mixedlm(", "re_formula", "vc_formula", "reml=False", "random_effects", "profile_re"]:
        assert w in statsmodels
