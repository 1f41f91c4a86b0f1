"""The formula interface is not a back door.

A formula string may come from a user, a config file or a web form. Before the fix,
``lmer("Reaction ~ Days + {Days.__class__...('os').system('touch f') + 1} + (1|Subject)")``
ran the shell command, as did the same code inside ``I(...)``, in the response, on the
left of a bar and through names in the caller's frame. Each exploit below tries to create
a file; the test asserts that a ValueError/TypeError names the offending piece and that
no file appears. Then one test per family of bypass: attribute chains, subscripts,
lambdas, comprehensions, ``:=``, strings fed to functions, keyword arguments, other
``np.`` attributes, names shadowing the allowed functions, formulaic's own evaluating
features (``{...}``, ``C(x, contr...)``, stateful transforms' hidden parameters), and the
arguments of ``C(x, contr)`` and ``relevel(x, ref)`` (a name of a fixed list; a label).
"""

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixedlm_sklearn import lmer
from mixedlm_sklearn.datasets import load_sleepstudy
from mixedlm_sklearn.formula import ALLOWED_FUNCTIONS, parse_formula


@pytest.fixture
def df():
    return load_sleepstudy()


@pytest.fixture
def target(tmp_path):
    """A file each exploit tries to create; it must not exist afterwards."""
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "the formula ran code"


GLOBALS_ESCAPE = ("Days.__class__.__init__.__globals__['__builtins__']['__import__']('os')"
                  ".system('touch {path}')")
IMPORT = "__import__('os').system('touch {path}')"

EXPLOITS = [
    # a reported string and its variants
    "Reaction ~ Days + {{" + GLOBALS_ESCAPE + " + 1}} + (1|Subject)",
    "Reaction ~ Days + I(" + GLOBALS_ESCAPE + ") + (1|Subject)",
    "Reaction ~ Days + I(" + IMPORT + ") + (1|Subject)",
    "Reaction ~ Days + {{" + IMPORT + "}} + (1|Subject)",
    "Reaction ~ Days + log(" + IMPORT + ") + (1|Subject)",
    "Reaction ~ Days + " + IMPORT + " + (1|Subject)",
    # the response
    "{{" + IMPORT + "}} ~ Days + (1|Subject)",
    "I(" + GLOBALS_ESCAPE + ") ~ Days + (1|Subject)",
    "log(" + IMPORT + ") ~ Days + (1|Subject)",
    # the left side of a bar
    "Reaction ~ Days + ({{" + IMPORT + "}} | Subject)",
    "Reaction ~ Days + (I(" + GLOBALS_ESCAPE + ") | Subject)",
    "Reaction ~ Days + (0 + I(" + IMPORT + ") || Subject)",
    # an offset, a nested term, an interaction
    "Reaction ~ Days + offset(" + IMPORT + ") + (1|Subject)",
    "Reaction ~ Days:I(" + IMPORT + ") + (1|Subject)",
    "Reaction ~ (Days + I(" + IMPORT + "))^2 + (1|Subject)",
    # without dunders: through modules and the caller's names (os is imported here)
    "Reaction ~ Days + I(os.system('touch {path}')) + (1|Subject)",
    "Reaction ~ Days + np.os.system('touch {path}') + (1|Subject)",
    "Reaction ~ Days + I(np.lib.format.os.system('touch {path}')) + (1|Subject)",
    "Reaction ~ Days + I(open('{path}', 'w')) + (1|Subject)",
    "Reaction ~ Days + I(exec(\"open('{path}', 'w')\")) + (1|Subject)",
    "Reaction ~ Days + C(Days, contr.__class__.__init__.__globals__) + (1|Subject)",
    "Reaction ~ Days + I((lambda: open('{path}', 'w'))()) + (1|Subject)",
    "Reaction ~ Days + I([open('{path}', 'w') for _ in 'a']) + (1|Subject)",
    "Reaction ~ Days + I((f := open)('{path}', 'w')) + (1|Subject)",
    "Reaction ~ Days + center(Days, _context=open('{path}', 'w')) + (1|Subject)",
    "Reaction ~ Days + I(Days.to_csv('{path}')) + (1|Subject)",
    "Reaction ~ Days + `__import__`('os').system('touch {path}') + (1|Subject)",
    # contrasts and relevel: their extra argument is a name of a list, or a literal level
    "Reaction ~ C(Days, os.system('touch {path}')) + (1|Subject)",
    "Reaction ~ C(Days, contr.sum.__init__.__globals__) + (1|Subject)",
    "Reaction ~ C(Days, Sum.__class__) + (1|Subject)",
    "Reaction ~ C(Days, contr=__import__('os').system('touch {path}')) + (1|Subject)",
    "Reaction ~ relevel(Subject, ref=open('{path}', 'w')) + (1|Subject)",
    "Reaction ~ relevel(Subject, " + IMPORT + ") + (1|Subject)",
    "Reaction ~ relevel(Subject, '308').__class__ + (1|Subject)",
    "Reaction ~ Days + (relevel(Subject, ref=open('{path}', 'w')) | Subject)",
]


@pytest.mark.parametrize("template", EXPLOITS)
def test_exploits_raise_and_run_nothing(df, target, template):
    formula = template.format(path=target)
    with pytest.raises((ValueError, TypeError)) as info:
        lmer(formula, df)
    message = str(info.value)
    assert "not allowed" in message or "not columns of data" in message or \
        "strings are not allowed" in message


def test_the_issue_string_is_refused_naming_the_dunder(df, target):
    formula = "Reaction ~ Days + {" + GLOBALS_ESCAPE.format(path=target) + " + 1} + (1|Subject)"
    with pytest.raises(ValueError, match="it uses the dunder name '__globals__'"):
        lmer(formula, df)


def test_caller_variables_are_not_looked_up(df, target):
    def evil(values):
        target.write_text("ran")
        return values

    threshold = 3  # noqa: F841 - a local the formula names
    with pytest.raises(ValueError, match=r"'evil' is not an allowed function"):
        lmer("Reaction ~ evil(Days) + (1|Subject)", df)
    with pytest.raises(ValueError, match=r"\['threshold'\].*nor names given in context="):
        lmer("Reaction ~ I(Days > threshold) + (1|Subject)", df)
    # ... only through context=, and context= holds numbers and arrays
    with pytest.raises(TypeError, match=r"context\['evil'\] is a function"):
        lmer("Reaction ~ I(Days + evil) + (1|Subject)", df, context={"evil": evil})
    with pytest.raises(ValueError, match=r"'evil' is not an allowed function"):
        lmer("Reaction ~ evil(Days) + (1|Subject)", df, context={"evil": evil})
    with pytest.raises(TypeError, match=r"context\['os'\] is a function or module"):
        lmer("Reaction ~ I(Days + os) + (1|Subject)", df, context={"os": os})
    with pytest.raises(ValueError, match="'os.system' is not an allowed function"):
        lmer(f"Reaction ~ I(os.system('touch {target}')) + (1|Subject)", df, context={"os": os})


def test_error_messages_name_the_piece_and_list_the_allowed_functions(df):
    with pytest.raises(ValueError) as info:
        parse_formula("Reaction ~ Days + I(Days[0]) + (1|Subject)", df)
    message = str(info.value)
    assert "'Days[0]' in 'I(Days[0])' is not allowed (a subscript)" in message
    for name in ("I", "factor", "poly", "scale", "bs", "log", "np.log", "exp", "sqrt", "offset"):
        assert name in ALLOWED_FUNCTIONS and f" {name}" in message


# ---- one test per family of bypass ----------------------------------------------------------


@pytest.mark.parametrize("expression, reason", [
    ("Days.__class__", "dunder name '__class__'"),
    # Python would read a fullwidth c as c; the formula takes the name as written
    ("Days.__\uff43lass__", r"uses \['Days.__\uff43lass__'\], which are not columns"),
    ("Days.real", "attribute access"),
    ("Days.values.sum()", "'Days.values.sum' is not an allowed function"),
    ("Days.values", "attribute access"),
    ("log(Days).__class__", "dunder name"),
    ("np.random.seed(1)", "'np.random.seed' is not an allowed function"),
    ("np.log.__call__(Days)", "dunder name"),
    ("np.loadtxt(Days)", "'np.loadtxt' is not an allowed function"),
    ("np.exp.reduce(Days)", "'np.exp.reduce' is not an allowed function"),
])
def test_attribute_chains(df, expression, reason):
    with pytest.raises(ValueError, match=reason):
        parse_formula(f"Reaction ~ I({expression}) + (1|Subject)", df)


@pytest.mark.parametrize("expression, reason", [
    ("Days[0]", "a subscript"),
    ("Days[:3]", "a subscript"),
    ("(lambda d: d)(Days)", "is not an allowed function"),
    ("(lambda: 1)", "a lambda"),
    ("[d for d in Days]", "a comprehension"),
    ("{d for d in Days}", "a comprehension"),
    ("sum(d for d in Days)", "'sum' is not an allowed function"),
    ("(z := Days)", r"an assignment expression \(:=\)"),
    ("Days if Days else 1", "a conditional expression"),
    ("Days and 1", "'and'/'or'"),
    ("f'{Days}'", "an f-string"),
    ("[Days, 1]", "a list"),
    ("{'a': Days}", "a dict"),
    ("Days @ Days", "the operator '@'"),
    ("Days & 1", "the operator '&'"),
    ("Days | 1", "the operator '|'"),
    ("~Days", "the operator '~'"),
    ("not Days", "the operator 'not'"),
    ("Days in Days", "the operator 'in'"),
    ("Days < 1 < 2", "a chained comparison"),
    ("1j * Days", "the constant 1j"),
    ("True + Days", "the constant True"),
    ("TRUE + Days", "a logical constant"),
    ("None", "the constant None"),
    ("...", "the constant Ellipsis"),
])
def test_python_constructs_outside_the_allow_list(df, expression, reason):
    with pytest.raises(ValueError, match=reason):
        parse_formula(f"Reaction ~ I({expression}) + (1|Subject)", df)


@pytest.mark.parametrize("expression, reason", [
    ("I('Days')", "a string"),
    ("C(Days, 'contr.sum')", r"C\(\): contr must be one of contr.treatment, .*, Helmert "
                             r"\(a name, without quotes\)"),
    ("relevel(Days, ref=b)", r"relevel\(\): ref must be a level as a string"),
    ("poly(Days, '2')", "degree must be a whole number"),
    ("scale(Days, center='x')", "center must be TRUE, FALSE or a number"),
    ("bs(Days, knots=['a'])", "knots must be c"),
    ("log('Days')", "a string"),
])
def test_strings_fed_to_functions(df, expression, reason):
    with pytest.raises(ValueError, match=reason):
        parse_formula(f"Reaction ~ {expression} + (1|Subject)", df)


def test_string_literals_in_the_formula_language(df):
    with pytest.raises(ValueError, match="strings are not allowed"):
        parse_formula("Reaction ~ Days + 'Days' + (1|Subject)", df)


@pytest.mark.parametrize("expression, reason", [
    ("log(Days, out=Days)", "log\\(\\) has no parameter 'out'"),
    ("np.log(Days, Days)", "takes at most 1 positional argument"),  # the 2nd is ufunc's out
    ("exp(Days, where=Days > 3)", "has no parameter 'where'"),
    ("log(*Days)", r"\*args or \*\*kwargs"),
    ("log(**Days)", r"\*args or \*\*kwargs"),
    ("poly(Days, degree=2, degree=3)", "'degree' given twice"),
    ("poly(Days, 2, degree=3)", "'degree' given twice"),
    ("center(Days, _state={})", "center\\(\\) has no parameter '_state'"),
    ("scale(Days, _spec=1)", "has no parameter '_spec'"),
    ("scale(Days, ddof=0)", "has no parameter 'ddof'"),
    ("bs(Days, extrapolation=1)", "has no parameter 'extrapolation'"),
    ("C(Days, levels=[1, 2])", "has no parameter 'levels'"),
    ("C(Days, contr.treatment, 2)", "takes at most 2 positional arguments"),
    ("poly(Days, degree=Days)", "degree must be a whole number"),
    ("poly(Days, 2 + 1)", "degree must be a whole number"),
    ("poly(Days, 10**9)", "degree must be a whole number"),
    ("poly(Days, 100000000)", "degree must be a whole number from 1 to the number of rows"),
    ("bs(Days, df=0)", "df must be a whole number"),
    ("poly(Days, raw=1)", "raw must be TRUE or FALSE"),
])
def test_keyword_and_parameter_arguments(df, expression, reason):
    before = df.copy()
    with pytest.raises(ValueError, match=reason):
        parse_formula(f"Reaction ~ {expression} + (1|Subject)", df)
    pd.testing.assert_frame_equal(df, before)  # no ufunc wrote into a column


@pytest.mark.parametrize("expression, reason", [
    ("C(Days, os.system)", "contr must be one of contr.treatment, contr.sum, contr.helmert, "
                           "Treatment, Sum, Helmert"),
    ("C(Days, contr.poly)", "contr must be one of"),
    ("C(Days, contr)", "contr must be one of"),
    ("C(Days, Sum())", "contr must be one of"),
    ("C(Days, sum)", "contr must be one of"),
    ("C(Days, Days)", "contr must be one of"),
    ("C(Days, `Sum`)", "contr must be one of"),
    ("C(Days, contr.sum, base=2)", "base = is a parameter of treatment contrasts, not of "
                                   "contr.sum"),
    ("C(Days, Helmert, base=2)", "base = is a parameter of treatment contrasts"),
    ("C(Days, base=0)", "base must be a whole number from 1"),
    ("C(Days, base=Days)", "base must be a whole number from 1"),
    ("C(Days, contr.sum, how=2)", "C\\(\\) has no parameter 'how'"),
    ("relevel(Days)", "relevel\\(\\) without ref"),
    ("relevel(Days, ref=Days)", "ref must be a level as a string"),
    ("relevel(Days, 'a' + 'b')", "ref must be a level as a string"),
    ("relevel(Days, f'{Days}')", "ref must be a level as a string"),
    ("relevel(Days, b'1')", "ref must be a level as a string"),
    ("relevel(Days, 0)", "ref must be a level as a string"),
    ("relevel(Days, 1.5)", "ref must be a level as a string"),
    ("relevel(Days, c(1, 2))", "ref must be a level as a string"),
    ("relevel(Days, ref=TRUE)", "ref must be a level as a string"),
    ("relevel('Days', '1')", "a string; only numbers are allowed"),
    ("I(relevel(Days, '1') + 'x')", "a string; only numbers are allowed"),
])
def test_contrast_and_relevel_arguments(df, expression, reason):
    with pytest.raises(ValueError, match=reason):
        parse_formula(f"Reaction ~ {expression} + (1|Subject)", df)


def test_contrast_names_and_levels_never_reach_anything(df, target):
    """The contrasts are markers of the evaluation namespace: context= cannot replace them
    and a column of the same name is not read; a level that reads like code is a label."""
    def evil(*args, **kwargs):
        target.write_text("ran")

    plain = parse_formula("Reaction ~ C(Subject, Sum) + (1|Subject)", df)
    for context in ({"Sum": evil}, {"contr": evil}, {"relevel": np.log}):
        frame = parse_formula("Reaction ~ C(Subject, Sum) + (1|Subject)", df, context=context)
        np.testing.assert_array_equal(frame.X.to_numpy(), plain.X.to_numpy())
    frame = parse_formula("Reaction ~ C(Subject, contr.sum) + (1|Subject)",
                          df.assign(Sum=1.0, contr=2.0))
    np.testing.assert_array_equal(frame.X.to_numpy(), plain.X.to_numpy())
    with pytest.raises(ValueError, match="'relevel' is both a column of data and the function"):
        parse_formula("Reaction ~ relevel(Subject, '308') + (1|Subject)",
                      df.assign(relevel=1.0))
    code = f"__import__('os').system('touch {target}')"
    with pytest.raises(ValueError, match=r"relevel\(\): ref = .* is not a level of the factor"):
        parse_formula(f'Reaction ~ relevel(Subject, ref = "{code}") + (1|Subject)', df)


def test_names_shadowing_allowed_functions(df, target):
    def evil(values):
        target.write_text("ran")
        return values

    with pytest.raises(TypeError, match=r"context\['log'\] would replace the allowed function"):
        parse_formula("Reaction ~ log(Days + 1) + (1|Subject)", df, context={"log": evil})
    fake_np = type(os)("np")
    fake_np.log = evil
    with pytest.raises(TypeError, match=r"context\['np'\] would replace"):
        parse_formula("Reaction ~ np.log(Days + 1) + (1|Subject)", df, context={"np": fake_np})
    with pytest.raises(ValueError, match="'log' is both a column of data and the function"):
        parse_formula("Reaction ~ log(Days + 1) + (1|Subject)", df.assign(log=df["Days"]))
    # the real objects under their own names are harmless
    frame = parse_formula("Reaction ~ np.log(Days + 1) + (1|Subject)", df,
                          context={"np": np, "log": np.log})
    np.testing.assert_allclose(frame.X.iloc[:, 0], np.log1p(df["Days"]))
    # a column may be called like a function when it is used as a variable
    frame = parse_formula("Reaction ~ log + (1|Subject)", df.assign(log=df["Days"]))
    assert list(frame.X.columns) == ["log"]


def test_functions_used_without_a_call(df):
    with pytest.raises(ValueError, match="the function log without a call"):
        parse_formula("Reaction ~ I(log) + (1|Subject)", df)
    with pytest.raises(ValueError, match="log is a function: call it"):
        parse_formula("Reaction ~ log + (1|Subject)", df)


def test_formulaic_features_that_evaluate_or_reach_further(df):
    # '.' would insert every other column; '[ ~ ]' is formulaic's multistage syntax
    with pytest.raises(ValueError, match="'.' \\(all other columns\\) is not supported"):
        parse_formula("Reaction ~ . + (1|Subject)", df)
    with pytest.raises(ValueError, match="not a valid expression"):
        parse_formula("Reaction ~ Days[Days ~ 1] + (1|Subject)", df)
    with pytest.raises(ValueError, match="'~' may appear once"):
        parse_formula("Reaction ~ Days + (Days ~ 1) + (1|Subject)", df)
    with pytest.raises(ValueError, match="operator '%%' is not part of the formula language"):
        parse_formula("Reaction ~ Days %% Subject + (1|Subject)", df)
    for name in ("hashed", "lag", "cr", "cc", "contr", "Q", "standardize", "eval", "getattr"):
        with pytest.raises(ValueError, match=f"'{name}' is not an allowed function"):
            parse_formula(f"Reaction ~ {name}(Days) + (1|Subject)", df)


def test_unchecked_code_never_reaches_formulaic():
    """The second line of defence: after formulaic parses the checked text, every factor it
    would evaluate is checked again (here fed unchecked text directly)."""
    import formulaic

    from mixedlm_sklearn.formula._allow_list import _formula, _Names

    names = _Names("f", load_sleepstudy(), None)
    names.variable("Days")
    with pytest.raises(ValueError, match="refused the factor"):
        _formula(formulaic, "~ _v0 + {__import__('os').getcwd()}", names, "f")
    with pytest.raises(ValueError, match="refused the factor"):
        _formula(formulaic, "~ _v0 + Subject", names, "f")
    # strings only as relevel's ref; contrasts only from the list
    for code in ("{I('x')}", "{relevel(_v0, ref=open)}", "{relevel(_v0, open('x'))}",
                 "{C(_v0, contr.__class__)}", "{C(_v0, contr.poly)}", "{log(_v0, 'x')}",
                 "{C(_v0, Sum, base='x')}"):
        with pytest.raises(ValueError, match="refused the factor"):
            _formula(formulaic, f"~ {code}", names, "f")
    _formula(formulaic, "~ {relevel(_v0, ref='1')} + {C(_v0, contr.sum)}", names, "f")


def test_huge_powers_are_floats_not_endless_integers(df):
    # 10^10^10 in Python integers would run for ever; in R's doubles it overflows at once
    with pytest.raises(ValueError, match=r"could not evaluate.*I\(10\^10\^10 \+ 0 \* Days\)"
                                         ".*OverflowError"):
        parse_formula("Reaction ~ Days + I(10^10^10 + 0*Days) + (1|Subject)", df)
    frame = parse_formula("Reaction ~ Days + I(Days^1000) + (1|Subject)", df)
    assert np.isinf(frame.X["I(Days^1000)"][df["Days"] > 2]).all()
    with pytest.raises(ValueError, match="NaN or infinity"):
        lmer("Reaction ~ Days + I(Days^1000) + (1|Subject)", df)


def test_expressions_too_deep_for_python_are_a_value_error(df):
    # Python's parser and the checker recurse; a RecursionError would be a crash
    with pytest.raises(ValueError, match="too long or too deeply nested"):
        parse_formula("Reaction ~ I(" + "+".join(["Days"] * 5000) + ") + (1|Subject)", df)


# ---- context= -------------------------------------------------------------------------------


def test_context_numbers_and_arrays(df):
    frame = parse_formula("Reaction ~ I(Days - k) + w + (1|Subject)", df,
                          context={"k": 4.5, "w": np.arange(len(df)) % 3})
    np.testing.assert_allclose(frame.X["I(Days - k)"], df["Days"] - 4.5)
    np.testing.assert_allclose(frame.X["w"], np.arange(len(df)) % 3)
    # unused entries are never looked at (they cannot be reached from the formula)
    frame = parse_formula("Reaction ~ I(Days - k) + (1|Subject)", df,
                          context={"k": np.float32(1), "os": os, "f": print})
    np.testing.assert_allclose(frame.X.iloc[:, 0], df["Days"] - 1)
    # a data column wins over a context name, as in R
    frame = parse_formula("Reaction ~ Days + (1|Subject)", df, context={"Days": 100})
    np.testing.assert_allclose(frame.X["Days"], df["Days"])


@pytest.mark.parametrize("value, error, message", [
    ("abc", TypeError, r"context\['k'\] is a str"),
    (None, TypeError, r"context\['k'\] is a NoneType"),
    ({"a": 1}, TypeError, r"context\['k'\] is a dict"),
    (print, TypeError, r"context\['k'\] is a function or module"),
    (np, TypeError, r"context\['k'\] is a function or module"),
    (np.log, TypeError, r"context\['k'\] is a function or module"),
    (float("nan"), ValueError, "must be a finite number"),
    (True, ValueError, "must be a finite number"),
    (np.ones((180, 2)), ValueError, "one-dimensional"),
    (np.ones(3), ValueError, "has 3 values, data has 180 rows"),
])
def test_context_values_are_checked(df, value, error, message):
    with pytest.raises(error, match=message):
        parse_formula("Reaction ~ I(Days - k) + (1|Subject)", df, context={"k": value})


def test_context_must_be_a_mapping(df):
    with pytest.raises(TypeError, match="context must be a mapping"):
        parse_formula("Reaction ~ Days + (1|Subject)", df, context=[("k", 1)])


def test_readme_lists_every_allowed_function():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**What a formula may contain.**"):]
    for name in ALLOWED_FUNCTIONS:
        base = name.removeprefix("np.")
        assert re.search(rf"`(np\.)?{re.escape(base)}\b", section), name
