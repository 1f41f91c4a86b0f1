"""lme4-style model formulas, the parser behind ``lmer("Reaction ~ Days + (Days | Subject)", data)``.

:func:`~mixedlm_sklearn.lmer` and :func:`~mixedlm_sklearn.glmer` live in
:mod:`mixedlm_sklearn.api`, next to the estimators: the parser imports no estimator.

The random-effects terms (``( ... | ... )``, ``||``, nesting with ``/``) are parsed here;
the fixed part, the response and the left side of each bar are checked here and then
evaluated by `formulaic <https://matthewwardrop.github.io/formulaic/>`_ (an optional
dependency: ``pip install formulaic``). Supported syntax, with R's meaning:

=========================  ===========================================================
``y ~ x + (x | g)``         correlated random intercept and slope per level of ``g``
``(1 | a) + (1 | b)``       several terms: crossed or nested factors
``(x || g)``                intercept and slope independent (diagonal covariance)
``(0 + x | g)``             slope only (``- 1`` works too)
``(1 | a/b)``               nesting: ``(1 | a) + (1 | a:b)``; ``(1 | a:b)`` for the
                            interaction factor alone (labels ``"a1:b1"``)
``x:z``, ``x * z``,         interactions; ``(a + b)^2``: all terms up to order 2
``(a + b)^2``, ``a/b``
``0 +``, ``- 1``            no fixed intercept
``I(x^2)``, ``log(x)``      expressions: ``^`` is a power (as in R), never Python's XOR
``factor(x)``, ``C(x)``     ``x`` as a categorical variable (treatment contrasts)
``C(x, contr.sum)``         R's contrasts: ``contr.treatment`` (``base = k``: against
                            the k-th level), ``contr.sum``, ``contr.helmert`` (also
                            ``Treatment``, ``Sum``, ``Helmert``); columns named as R
                            names them (``C(x, contr.sum)1``)
``relevel(x, ref = "b")``   treatment contrasts against level ``"b"`` (``relevel(x, "b")``;
                            a number ``k``: the k-th level)
``scale(x)``, ``poly(x,2)`` R's ``scale`` (sd with n - 1) and orthogonal polynomials;
``center(x)``, ``bs(x)``    their state (mean, sd, coefficients, knots) is kept for
                            :meth:`ModelFrame.new_data`
``offset(x)``               a known term added to the linear predictor (several sum)
``Days.x``, `` `my var` ``  column names with dots, or anything in backticks
=========================  ===========================================================

What a formula may contain
--------------------------
A formula is not Python code. Every name and expression in it is checked before
anything is evaluated, and evaluated with nothing but:

- columns of ``data``, and names given explicitly through ``context=`` (numbers, or
  arrays with one value per row of ``data``, which then act as columns: a Series by its
  index, as pandas aligns it, other arrays by position); the caller's variables are
  never looked up; names are matched exactly as the data spells them (Python's own
  parser would read a full-width ``ｘ`` as ``x``);
- numbers and R's constant ``pi`` (unless the data have a column ``pi``); the arithmetic operators ``+ - * / ^`` (power; ``**`` too), R's ``%%`` and
  ``%/%`` (``%`` and ``//`` too); the comparisons ``< <= > >= == !=``;
- calls of the functions listed in :data:`ALLOWED_FUNCTIONS`, with numbers (or ``TRUE``,
  ``FALSE``, ``c(...)`` of numbers) as their extra parameters; ``C``'s contrast is one of
  the names in :data:`CONTRASTS` (markers, never looked up elsewhere), ``relevel``'s
  ``ref`` a string (the only place a formula may hold one) or a number.

Anything else (attributes such as ``x.__class__`` or ``np.random``, subscripts, strings,
lambdas, comprehensions, ``:=``, keyword arguments a function does not have, other
functions, callables in ``context=``) is refused with a :class:`ValueError` or
:class:`TypeError` naming the offending piece.

Column names follow lme4: the intercept is ``"(Intercept)"``, a treatment-contrast
column of factor ``Sex`` at level ``Female`` is ``"SexFemale"`` (formulaic's
``"Sex[T.Female]"``), expressions are written as R deparses them (``"I(Days^2)"``,
``"exp(Days/5)"``, ``"poly(Days, 2)1"``, ``"factor(Days)1"``, ``"I(x > 3)TRUE"``). The
reference level is the first level: the first category of a :class:`pandas.Categorical`,
otherwise the smallest label, as in R. Other contrasts are R's ``contr.sum`` (the last
level -1 in every column), ``contr.helmert`` (column ``j``: level ``j + 1`` against the
levels before it) and ``contr.treatment`` against another level; as in lme4, the
estimates and the REML criterion (which contains ``log det X'V^-1 X``) depend on the
coding, the fitted values, the ML likelihood, type III tests and marginal means do not.
Terms are coded as R's ``model.matrix`` codes
them: a factor of a term gets contrasts when the term without it is in the model before
it, else a column per level, so ``y ~ a:b`` has the intercept and a column per level
combination (``au:bp``, ``av:bp``, ...); the last, aliased with the intercept and the
others, is dropped as lme4 drops it.
"""

from ._allow_list import ALLOWED_FUNCTIONS, CONTRASTS
from ._frame import FixedFactor, FixedTerm, ModelFrame, RandomTerm, parse_formula
from ._update import split_formula_sides, update_formula

# The subpackage's modules, along its seams: ``_allow_list`` (the security boundary: what a
# formula may contain, checked before anything runs), ``_parser`` (scanning the text),
# ``_contrasts``, ``_lme4_names`` (lme4's column names and R's coding of terms), ``_frame``
# (the model frame) and ``_update`` (R's update.formula).
__all__ = ["ALLOWED_FUNCTIONS", "CONTRASTS", "RandomTerm", "FixedTerm", "FixedFactor", "ModelFrame",
           "parse_formula", "split_formula_sides", "update_formula"]
