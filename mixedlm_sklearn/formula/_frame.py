"""The model frame: a parsed formula evaluated on data (X, y, the random-effects terms,
offsets), kept to build the same columns from new data (:meth:`ModelFrame.new_data`).
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._allow_list import (_Checker, _Names, _compile_part, _compile_response, _evaluation_functions,
                          _formula, _import_formulaic, _tokens)
from ._lme4_names import (_Naming, _crossed_factors, _deparse, _factor_key, _factor_name,
                          _intercept_columns, _lme4_names, _r_coding)
from ._parser import _as_bar, _bar_positions, _grouping_factors, _has_stray_bar, _signed_pieces, _split_top


# ---- the model frame -----------------------------------------------------------------------


@dataclass
class RandomTerm:
    """One random-effects term ``(left | group)`` evaluated on the data.

    Attributes
    ----------
    group : str
        Grouping-factor name; an interaction of factors is joined with ``":"``
        (``"batch:cask"``).
    labels : Series
        Group label of each row (for interactions, the labels joined with ``":"``),
        named ``group``.
    Z : DataFrame of shape (n, q)
        Random-effects design with lme4 column names (``"(Intercept)"``, ``"Days"``).
    diagonal : bool
        True for ``||``: the columns' random effects are independent.
    left : str
        The term's left side as written (``"Days"``, ``"0 + x"``).
    factors : tuple of str
        The data columns whose interaction is the grouping factor (``("batch", "cask")``).
    """

    group: str
    labels: pd.Series
    Z: pd.DataFrame
    diagonal: bool = False
    left: str = "1"
    factors: tuple[str, ...] = ()

    def __repr__(self) -> str:
        bar = "||" if self.diagonal else "|"
        return (f"RandomTerm(({' + '.join(self.Z.columns)} {bar} {self.group}), "
                f"{self.labels.nunique()} groups)")


@dataclass(frozen=True)
class FixedTerm:
    """One term of the fixed part: the fixed effects it contributes and what it is made of.

    A fit from arrays has terms too (one per column, or columns grouped by the caller): see
    :func:`mixedlm_sklearn.inference.anova.terms_from_columns`.

    Attributes
    ----------
    name : str
        The term as R labels it (``"age:Sex"``: its factors in the order they first appear
        in the formula).
    columns : tuple of int
        Its columns among the fixed effects (``fe_params_`` order, intercept first).
    factors : tuple of str
        The factors whose product the term is, as R writes them (``"Sex"``,
        ``"log(age)"``), in the order their columns are crossed (the first varies fastest).
    numeric : frozenset of str
        Those of ``factors`` that are numeric (covariates), not categorical.
    contrasts : tuple of bool or None
        Per factor, whether it enters through contrasts (``k - 1`` columns for ``k``
        levels, as a factor next to its margins) rather than one column per level (R's
        choice, as :func:`parse_formula` codes every term: ``a:b`` alone has one column
        per level of both). None when the term's columns are not one product of its
        factors.
    """

    name: str
    columns: tuple[int, ...]
    factors: tuple[str, ...]
    numeric: frozenset = frozenset()
    contrasts: tuple[bool, ...] | None = None

    @property
    def order(self) -> int:
        """Number of factors (R's ``attr(terms, "order")``)."""
        return len(self.factors)


@dataclass(frozen=True)
class FixedFactor:
    """One factor of the fixed part (a variable or an expression of variables).

    Attributes
    ----------
    name : str
        As R writes it (``"Sex"``, ``"I(age^2)"``, ``"factor(Days)"``).
    variables : tuple of str
        The variables of the data it is computed from.
    categorical : bool
        Encoded by its levels (a non-numeric column, ``factor(x)``, ``C(x)``), not as numbers.
    levels : tuple or None
        A categorical factor's levels in the fit's order (the first is the reference).
    """

    name: str
    variables: tuple[str, ...]
    categorical: bool
    levels: tuple | None = None


@dataclass
class ModelFrame:  # numpydoc ignore=PR01
    """A formula evaluated on a data frame: the arrays :class:`~mixedlm_sklearn.MixedLMRegressor` fits.

    Attributes
    ----------
    formula : str
        The formula, as given.
    X : DataFrame of shape (n, p)
        Fixed-effects design with lme4 column names, WITHOUT the intercept column when the
        formula has an intercept (the estimator adds it: ``fit_intercept``).
    y : Series of shape (n,)
        The response on the fitted rows.
    terms : list
        Random-effects terms after expanding nesting (``a/b`` gives two terms).
    fit_intercept : bool
        Whether the formula has a fixed intercept (False after ``0 +`` or ``- 1``).
    dropped : Index
        Labels of the rows of ``data`` left out because a model variable is missing
        (lme4's ``na.action = na.omit``).
    offset : Series of shape (n,) or None
        The sum of the formula's ``offset(...)`` terms (None without one).
    rows : DataFrame of shape (n, k)
        The model's variables (by their names: response, covariates, grouping factors,
        ``context=`` arrays) on the fitted rows, indexed like ``X``: the rows after
        dropping those with a missing value, categoricals without their unused levels.

    See Also
    --------
    mixedlm_sklearn.lmer : Fit a formula; the fit keeps its frame as ``model_frame_``.
    ModelFrame.new_data : The arguments of ``predict`` for new rows.

    Examples
    --------
    >>> from mixedlm_sklearn import lmer
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
    >>> mf = fit.model_frame_
    >>> mf.formula, list(mf.X.columns), len(mf.y)
    ('distance ~ age * Sex + (age | Subject)', ['age', 'SexMale', 'age:SexMale'], 108)
    """

    formula: str
    X: pd.DataFrame
    y: pd.Series
    terms: list[RandomTerm]
    fit_intercept: bool
    dropped: pd.Index = field(default_factory=lambda: pd.Index([]))
    _fixed_spec: Any = field(default=None, repr=False)
    _term_specs: list = field(default_factory=list, repr=False)
    offset: pd.Series | None = None
    _offset_spec: Any = field(default=None, repr=False)
    # variable name -> alias for the columns formulaic sees, and the evaluation context
    # (the allowed functions and the context= numbers): what new_data needs.
    _variables: dict[str, str] = field(default_factory=dict, repr=False)
    _environment: dict[str, Any] = field(default_factory=dict, repr=False)
    _naming: _Naming | None = field(default=None, repr=False)
    rows: pd.DataFrame | None = field(default=None, repr=False)
    # context= numbers by name: what a formula derived from this one (ranova) is evaluated with
    _context_numbers: dict[str, float] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        fixed = (["(Intercept)"] if self.fit_intercept else []) + list(self.X.columns)
        offset = "" if self.offset is None else ", with an offset"
        return (f"ModelFrame({self.formula!r}: {len(self.y)} rows ({len(self.dropped)} dropped), "
                f"fixed {fixed}{offset}, terms {self.terms})")

    # The estimator cannot take a design with no columns (scikit-learn needs one feature),
    # so an intercept-only fixed part is passed as an explicit "(Intercept)" column.
    @property
    def _explicit_intercept(self) -> bool:
        return self.fit_intercept and self.X.shape[1] == 0

    def _pieces(self) -> list[tuple[str, pd.Series, pd.DataFrame]]:
        """Terms as the estimator's several-factor path takes them: ``||`` split by column.

        lme4 expands ``(x || g)`` to ``(1 | g) + (0 + x | g)``; a repeated factor gets the
        suffix ``.1``, ``.2`` as in lme4's ``VarCorr``.
        """
        pieces = []
        for term in self.terms:
            if term.diagonal and term.Z.shape[1] > 1:
                pieces.extend((term.group, term.labels, term.Z[[c]]) for c in term.Z.columns)
            else:
                pieces.append((term.group, term.labels, term.Z))
        seen: dict[str, int] = {}
        named = []
        for group, labels, Z in pieces:
            count = seen.get(group, 0)
            seen[group] = count + 1
            named.append((group if count == 0 else f"{group}.{count}", labels, Z))
        return named

    @property
    def single_factor(self) -> bool:
        """Whether the model has one random-effects term (fitted by the one-factor path).

        See Also
        --------
        ModelFrame.fit_arguments : How the terms are passed to the estimator.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> mf = fit.model_frame_
        >>> mf.single_factor
        True
        """
        return len(self.terms) == 1

    def estimator_params(self) -> dict[str, Any]:
        """Give ``fit_intercept`` and ``cov_type`` for :class:`~mixedlm_sklearn.MixedLMRegressor`.

        Returns
        -------
        dict
            The estimator parameters the formula decides.

        See Also
        --------
        ModelFrame.fit_arguments : The arguments of ``fit``.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> mf = fit.model_frame_
        >>> mf.estimator_params()
        {'fit_intercept': True, 'cov_type': 'unstructured'}
        """
        diagonal = self.single_factor and self.terms[0].diagonal
        return {
            "fit_intercept": self.fit_intercept and not self._explicit_intercept,
            "cov_type": "diagonal" if diagonal else "unstructured",
        }

    def fit_arguments(self) -> dict[str, Any]:
        """Give ``X``, ``y``, ``groups``, ``Z`` (and ``offset``) for :meth:`~mixedlm_sklearn.MixedLMRegressor.fit`.

        One term: ``groups`` a Series and ``Z`` a DataFrame. Several terms: ``groups`` a
        DataFrame with a column per term and ``Z`` a dict from that column name to the
        term's design. ``offset`` is there only when the formula has ``offset(...)``.

        Returns
        -------
        dict
            Keyword arguments of ``fit``.

        Raises
        ------
        ValueError
            When the formula has no fixed effects (``y ~ 0 + (1 | g)``), which lme4 fits
            but the estimator cannot (it needs at least one fixed-effects column).

        See Also
        --------
        ModelFrame.estimator_params : The estimator's parameters.
        ModelFrame.new_data : The same for new rows, for ``predict``.

        Examples
        --------
        >>> from mixedlm_sklearn import MixedLMRegressor
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> fit = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont())
        >>> mf = fit.model_frame_
        >>> args = mf.fit_arguments()
        >>> sorted(args)
        ['X', 'Z', 'groups', 'y']
        >>> refit = MixedLMRegressor(**mf.estimator_params()).fit(**args)
        >>> bool(abs(refit.llf_ - fit.llf_) < 1e-8)
        True
        """
        if not self.fit_intercept and self.X.shape[1] == 0:
            raise ValueError(
                f"formula {self.formula!r} has no fixed effects ('0 +' or '- 1' removed the "
                "intercept and there is no other fixed term); the estimator needs at least one "
                "fixed-effects column. Keep the intercept (drop '0 +' / '- 1') or add a "
                "covariate; an intercept fixed at 0 is not supported")
        args = self._design_arguments(self.X, self.terms if self.single_factor else None,
                                      self._pieces())
        args["y"] = self.y
        if self.offset is not None:
            args["offset"] = self.offset
        return args

    def _design_arguments(self, X, single_terms, pieces) -> dict[str, Any]:
        if self._explicit_intercept:
            X = pd.DataFrame({"(Intercept)": np.ones(len(X))}, index=X.index)
        if single_terms is not None:
            term = single_terms[0]
            return {"X": X, "groups": term.labels.rename(term.group), "Z": term.Z}
        groups = pd.DataFrame({name: labels for name, labels, _ in pieces}, index=X.index)
        return {"X": X, "groups": groups, "Z": {name: Z for name, _, Z in pieces}}

    def new_data(self, data: pd.DataFrame) -> dict[str, Any]:
        """Build the designs of new rows for :meth:`~mixedlm_sklearn.MixedLMRegressor.predict`: ``X``, ``groups``, ``Z``.

        Categorical levels and stateful transforms (``center(x)``, ``scale(x)``,
        ``poly(x, 2)``, ``bs(x)``) are those of the fitted data; numbers given through
        ``context=`` are those of the fit, arrays given through ``context=`` must be
        columns of ``data`` now. With ``offset(...)`` in the formula the result has an
        ``offset`` entry too. No response is needed; rows with missing values are an error.

        Parameters
        ----------
        data : DataFrame
            The new rows, with the model's variables (the response is not needed).

        Returns
        -------
        dict
            Keyword arguments of ``predict`` (and of ``predict_interval``).

        Raises
        ------
        ValueError
            When a row has a missing value, or a variable is missing.

        See Also
        --------
        ModelFrame.fit_arguments : The same for the fitted rows.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy()
        >>> est = lmer("Reaction ~ Days + (Days | Subject)", df)
        >>> new = df[df["Days"] == 9].head(2)
        >>> est.predict(**est.model_frame_.new_data(new)).round(2).tolist()
        [430.66, 227.63]
        """
        aliased = self._aliased(data, list(self._variables))
        X, _ = _without_intercept(
            _evaluate(self._fixed_spec, aliased, self._environment, self._naming, self.formula),
            self._fixed_spec)
        terms = [_random_term(data, term.factors, term.diagonal, term.left,
                              _evaluate(spec, aliased, self._environment, self._naming, self.formula))
                 for term, spec in zip(self.terms, self._term_specs)]
        pieces = ModelFrame(self.formula, X, pd.Series(dtype=float), terms,
                            self.fit_intercept)._pieces()
        args = self._design_arguments(X, terms if self.single_factor else None, pieces)
        if self._offset_spec is not None:
            args["offset"] = self.offset_values(data)
        return args


    def reduced(self, formula: str) -> "ModelFrame":
        """Evaluate another formula (a reduced model, e.g. of ``ranova``) on this frame's rows.

        The formula is evaluated on the fitted rows with the same ``context=`` numbers.

        Parameters
        ----------
        formula : str
            The other formula, of the same data.

        Returns
        -------
        ModelFrame
            Its frame.

        See Also
        --------
        mixedlm_sklearn.inference.anova.ranova : The tests that use it.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> frame = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy()).model_frame_
        >>> [list(t.Z.columns) for t in frame.reduced("Reaction ~ Days + (1 | Subject)").terms]
        [['(Intercept)']]
        """
        return parse_formula(formula, self.rows, context=self._context_numbers or None)

    def _aliased(self, data: pd.DataFrame, variables: list[str]) -> pd.DataFrame:
        """``variables`` of ``data`` under the aliases formulaic knows them by (checked)."""
        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        absent = [name for name in variables if name not in data.columns]
        if absent:
            raise ValueError(f"new data has no column {absent} (variables of the formula "
                             f"{self.formula!r}; columns: {list(map(str, data.columns))})")
        missing = [name for name in variables if data[name].isna().any()]
        if missing:
            raise ValueError(f"new data has missing values in {missing}: predictions need "
                             "every model variable")
        return pd.DataFrame({self._variables[name]: data[name] for name in variables},
                            index=data.index)

    # ---- the fixed part's structure (what anova tables and marginal means need) ---------

    def _fe_order(self) -> list[int]:
        """Columns of the fixed spec in ``fe_params_`` order: the intercept first."""
        intercept = _intercept_columns(self._fixed_spec)
        return intercept + [i for i in range(len(self._fixed_spec.column_names))
                            if i not in intercept]

    def _factor_kind(self, expr: str) -> str:
        kind = self._fixed_spec.encoder_state.get(expr, (None, None))[0]
        return str(getattr(kind, "value", kind))

    def _factor_exprs(self) -> dict[str, str]:
        """R's name of each factor of the fixed part -> its checked (aliased) code."""
        out = {}
        for term in self._fixed_spec.term_indices:
            for factor in term.factors:
                expr = str(factor.expr)
                if expr != "1":
                    out[_factor_name(expr, self._naming.display)[0]] = expr
        return out

    def fixed_factors(self) -> dict[str, FixedFactor]:
        """List the factors of the fixed part, by R's name, in order of appearance.

        Returns
        -------
        dict
            From name to a record of the factor's variables, whether it is categorical and
            its levels.

        See Also
        --------
        ModelFrame.fixed_terms : The terms built from the factors.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> mf = lmer("distance ~ log(age) * Sex + (1 | Subject)", load_orthodont()).model_frame_
        >>> {name: (f.variables, f.categorical, f.levels) for name, f in mf.fixed_factors().items()}
        {'log(age)': (('age',), False, None), 'Sex': (('Sex',), True, ('Female', 'Male'))}
        """
        spec = self._fixed_spec
        names_of = {alias: name for name, alias in self._variables.items()}
        out = {}
        for name, expr in self._factor_exprs().items():
            uses = [v for v in spec.factor_variables.get(_factor_key(spec, expr), set())
                    if v in names_of]
            variables = tuple(sorted((names_of[v] for v in uses),
                                     key=lambda n: list(self._variables).index(n)))
            categorical = self._factor_kind(expr) == "categorical"
            levels = None
            if categorical:
                state = spec.encoder_state[expr][1]
                levels = tuple(state["contrasts"].levels if "contrasts" in state
                               else state["categories"])
            out[name] = FixedFactor(name, variables, categorical, levels)
        return out

    def fixed_terms(self) -> list[FixedTerm]:
        """List the terms of the fixed part (the intercept is not a term), in the formula's order.

        Returns
        -------
        list
            A record per term: its name, columns of ``X`` (intercept first), factors and
            numeric variables.

        See Also
        --------
        ModelFrame.fixed_factors : The factors.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> mf = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont()).model_frame_
        >>> [(t.name, t.columns, t.factors, sorted(t.numeric)) for t in mf.fixed_terms()]
        [('age', (1,), ('age',), ['age']), ('Sex', (2,), ('Sex',), []), ('age:Sex', (3,), ('age', 'Sex'), ['age'])]
        """
        spec, display = self._fixed_spec, self._naming.display
        position = {c: i for i, c in enumerate(self._fe_order())}
        structure = {str(s.term): s for s in spec.structure}
        crossed = _crossed_factors(spec)
        terms = []
        for term, cols in spec.term_indices.items():
            if str(term) == "1":
                continue
            # the factors in the order their columns are crossed, when the term is one
            # product of them (as R codes every term; see _r_coding)
            exprs = crossed.get(str(term)) or [str(f.expr) for f in term.factors]
            names = [_factor_name(e, display)[0] for e in exprs]
            label = ":".join(n for _, n in sorted(
                zip(exprs, names), key=lambda en: self._naming.order.get(en[0], len(exprs))))
            numeric = frozenset(n for e, n in zip(exprs, names)
                                if self._factor_kind(e) != "categorical")
            contrasts = None
            if str(term) in crossed:
                scoped = structure[str(term)].scoped_terms[0]
                reduced = {str(f.factor.expr): bool(f.reduced) for f in scoped.factors}
                contrasts = tuple(reduced[e] and self._factor_kind(e) == "categorical"
                                  for e in exprs)
            terms.append(FixedTerm(label, tuple(position[c] for c in cols), tuple(names),
                                   numeric, contrasts))
        return terms

    def factor_columns(self, factor: str) -> np.ndarray:
        """Evaluate a factor of the fixed part on the fitted rows.

        A categorical factor gives one column per level (in the order of its levels), a
        numeric one its values.

        Parameters
        ----------
        factor : str
            The factor's name, as :meth:`fixed_factors` names it.

        Returns
        -------
        ndarray of shape (n, levels) or (n, 1)
            The columns.

        See Also
        --------
        ModelFrame.fixed_factors : The factors and their levels.

        Examples
        --------
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> mf = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont()).model_frame_
        >>> mf.factor_columns("Sex")[:2].tolist(), mf.factor_columns("age")[:2].tolist()
        ([[0.0, 1.0], [0.0, 1.0]], [[8.0], [10.0]])
        """
        exprs = self._factor_exprs()
        if factor not in exprs:
            raise ValueError(f"{factor!r} is not a factor of the fixed part {list(exprs)}")
        expr = exprs[factor]
        one = self._fixed_spec.update(formula=f"0 + {expr}", structure=None,
                                      ensure_full_rank=False)
        rows = self._aliased(self.rows, self._fixed_variables())
        matrix = one.get_model_matrix(rows, context=dict(self._environment), na_action="raise")
        values = np.asarray(matrix, dtype=float)
        if self._factor_kind(expr) != "categorical":
            return values
        state = self._fixed_spec.encoder_state[expr][1]
        names = [str(c) for c in matrix.columns]
        return values[:, [names.index(f"{expr}[{level}]") for level in state["contrasts"].levels]]

    def _fixed_variables(self) -> list[str]:
        """The variables the fixed part reads (by name, in the order of the formula)."""
        return self._spec_variables(self._fixed_spec)

    def _spec_variables(self, spec: Any) -> list[str]:
        used = set()
        for variables in spec.factor_variables.values():
            used |= set(variables)
        return [name for name, alias in self._variables.items() if alias in used]

    def offset_variables(self) -> list[str]:
        """List the variables the formula's ``offset(...)`` terms read.

        Returns
        -------
        list of str
            The variables in the formula's order; empty without an offset.

        See Also
        --------
        ModelFrame.offset_values : The offset evaluated on rows of a data frame.

        Examples
        --------
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> df = load_sleepstudy().assign(hours=8.0)
        >>> parse_formula("Reaction ~ Days + offset(log(hours)) + (1 | Subject)", df
        ...               ).offset_variables()
        ['hours']
        """
        return [] if self._offset_spec is None else self._spec_variables(self._offset_spec)

    def offset_values(self, data: pd.DataFrame) -> pd.Series | None:
        """Evaluate the sum of the formula's ``offset(...)`` terms on rows of ``data``.

        Parameters
        ----------
        data : pandas.DataFrame
            Rows to evaluate; needs the variables of :meth:`offset_variables` only.

        Returns
        -------
        pandas.Series or None
            The offset of each row, named ``"offset"``; None without an offset.

        See Also
        --------
        ModelFrame.offset_variables : The variables the offset reads.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedlm_sklearn.datasets import load_sleepstudy
        >>> frame = parse_formula("Reaction ~ Days + offset(2 * Days) + (1 | Subject)",
        ...                       load_sleepstudy())
        >>> frame.offset_values(pd.DataFrame({"Days": [0.0, 4.5]})).tolist()
        [0.0, 9.0]
        """
        if self._offset_spec is None:
            return None
        aliased = self._aliased(data, self.offset_variables())
        offsets = _evaluate(self._offset_spec, aliased, self._environment, self._naming,
                            self.formula)
        return offsets.sum(axis=1).rename("offset")

    def fixed_design(self, data: pd.DataFrame) -> pd.DataFrame:
        """Build the fixed-effects design of rows of ``data``, intercept column included.

        Columns in ``fe_params_`` order with lme4's names; evaluated as :meth:`new_data`
        evaluates new rows (the fit's levels and transforms); ``data`` needs the variables
        of the fixed part only.

        Parameters
        ----------
        data : DataFrame
            Rows with the variables of the fixed part.

        Returns
        -------
        DataFrame
            A column per fixed effect, named as lme4 names them.

        See Also
        --------
        ModelFrame.new_data : All the arguments of ``predict``.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedlm_sklearn import lmer
        >>> from mixedlm_sklearn.datasets import load_orthodont
        >>> mf = lmer("distance ~ age * Sex + (age | Subject)", load_orthodont()).model_frame_
        >>> mf.fixed_design(pd.DataFrame({"age": [11.0, 11.0], "Sex": ["Female", "Male"]}))
           (Intercept)   age  SexMale  age:SexMale
        0          1.0  11.0      0.0          0.0
        1          1.0  11.0      1.0         11.0
        """
        aliased = self._aliased(data, self._fixed_variables())
        X = _evaluate(self._fixed_spec, aliased, self._environment, self._naming, self.formula)
        return X.iloc[:, self._fe_order()]


def _evaluate(spec: Any, data: pd.DataFrame, environment: Mapping[str, Any],
              naming: _Naming, formula: str) -> pd.DataFrame:
    """A formulaic model spec applied to new data, as a float DataFrame with lme4 names."""
    from formulaic.errors import DataMismatchWarning

    try:
        # formulaic only warns about a factor level the fit has not seen and codes the row
        # as the reference level: a wrong prediction. lme4 refuses new levels; so do we.
        with warnings.catch_warnings():
            warnings.simplefilter("error", DataMismatchWarning)
            matrix = spec.get_model_matrix(data, context=dict(environment), na_action="raise")
    except DataMismatchWarning as err:
        unseen = re.search(r"\{.*\}", str(err))
        raise ValueError(f"the new data of formula {formula!r} has factor levels the fit has "
                         f"not seen: {unseen.group(0) if unseen else err}") from None
    except Exception as err:  # formulaic's evaluation errors
        raise ValueError(f"could not evaluate formula {formula!r} on the new data: "
                         f"{_short(err, naming.display)}") from None
    return pd.DataFrame(np.asarray(matrix, dtype=float), index=matrix.index,
                        columns=_lme4_names(spec, naming))


def _short(err: Exception, names: Mapping[str, str]) -> str:
    """formulaic's error message, first line, with its code in the formula's terms."""
    text = f"{type(err).__name__}: {err}".split("\n")[0]

    def readable(match: re.Match) -> str:
        try:
            return f"`{_deparse(ast.parse(match.group(1), mode='eval').body, names)}`"
        except SyntaxError:
            return match.group(0)

    return re.sub(r"`([^`]+)`", readable, text)


def _group_labels(data: pd.DataFrame, names: list[str], group: str) -> pd.Series:
    if len(names) == 1:
        labels = data[names[0]]
    else:
        labels = data[names[0]].astype(str)
        for name in names[1:]:
            labels = labels + ":" + data[name].astype(str)
    return pd.Series(labels.to_numpy(), index=data.index, name=group)


def _without_intercept(X: pd.DataFrame, spec: Any) -> tuple[pd.DataFrame, bool]:
    """The fixed-effects columns without the intercept (the estimators add their own), and
    whether the formula had one; for the fitted rows and for new rows alike."""
    intercept = _intercept_columns(spec)
    return X.drop(columns=[X.columns[i] for i in intercept]), bool(intercept)


def _random_term(rows: pd.DataFrame, group_names: tuple, diagonal: bool, left: str,
                 Z: pd.DataFrame) -> RandomTerm:
    """A random-effects term of ``rows``: its grouping factor's labels (``a:b`` for an
    interaction of factors) with its evaluated design ``Z``."""
    group = ":".join(group_names)
    return RandomTerm(group, _group_labels(rows, list(group_names), group), Z, diagonal, left,
                      tuple(group_names))


def parse_formula(formula: str, data: pd.DataFrame, *,
                  context: Mapping[str, Any] | None = None) -> ModelFrame:
    """Evaluate an lme4 formula on a data frame.

    Parameters
    ----------
    formula : str
        ``response ~ fixed part + (left | group) + ...`` (see the module docstring for
        the syntax and for what a formula may contain).
    data : DataFrame
        The variables. Rows where any model variable (response, fixed-effects or
        random-effects covariate, offset, grouping factor) is missing are dropped, as
        lme4's default ``na.action = na.omit`` does; unused categories are dropped too.
    context : mapping, optional
        Further names the formula may use (the caller's variables are not looked up):
        numbers (``{"k": 4.5}`` for ``I(Days - k)``), or arrays with one value per row of
        ``data``, which act as columns. A pandas Series is matched with the rows by its
        index, as pandas aligns it (its index must have every row's label), other arrays
        by position. Functions and modules are refused; the allowed functions
        (:data:`ALLOWED_FUNCTIONS`) need no context.

    Returns
    -------
    ModelFrame

    Raises
    ------
    ValueError
        Malformed formulas (unbalanced parentheses, a bar without a grouping factor or
        without a left side, a bar that is not a term of its own, no response, no
        random-effects term), names that are neither columns of ``data`` nor in
        ``context``, and anything outside the allow-list (a message names the piece).
    TypeError
        A ``context`` value that is not a number or an array.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> df = load_orthodont()
    >>> mf = parse_formula("distance ~ age * Sex + (age | Subject)", df)
    >>> list(mf.X.columns), mf.fit_intercept
    (['age', 'SexMale', 'age:SexMale'], True)
    >>> term = mf.terms[0]
    >>> term.group, list(term.Z.columns), term.labels.nunique()
    ('Subject', ['(Intercept)', 'age'], 27)
    >>> [t.group for t in parse_formula("distance ~ 1 + (1 | Sex/Subject)", df).terms]
    ['Sex', 'Sex:Subject']
    >>> list(parse_formula("distance ~ I(age^2) + poly(age, 2) + (1 | Subject)", df).X.columns)
    ['I(age^2)', 'poly(age, 2)1', 'poly(age, 2)2']
    >>> frame = parse_formula("distance ~ I(age - k) + (1 | Subject)", df, context={"k": 11})
    >>> frame.X["I(age - k)"].tolist()[:4]
    [-3.0, -1.0, 1.0, 3.0]
    """
    formulaic = _import_formulaic()
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if context is not None and not isinstance(context, Mapping):
        raise TypeError(f"context must be a mapping of names to numbers or arrays, got "
                        f"{type(context).__name__}")
    try:
        return _parse_formula(formulaic, formula, data, context)
    except RecursionError:  # Python's parser and ast walks: x + x + ... a thousand times
        raise ValueError(f"formula {formula[:60]!r}... is too long or too deeply nested "
                         "to be checked") from None


def _parse_formula(formulaic: Any, formula: str, data: pd.DataFrame,
                   context: Mapping[str, Any] | None) -> ModelFrame:
    sides = _split_top(formula, "~")
    if len(sides) != 2 or not sides[0].strip():
        raise ValueError(f"formula {formula!r} must have the form 'response ~ terms' "
                         "(one '~' with a response on its left)")
    lhs, rhs = sides[0].strip(), sides[1].strip()
    if not rhs:
        raise ValueError(f"formula {formula!r} has nothing right of '~'")

    fixed: list[tuple[str, str]] = []
    bars: list[tuple[str, list[tuple[str, ...]], bool]] = []  # (left, factors, diagonal)
    for sign, piece in _signed_pieces(rhs):
        inner = _as_bar(piece)
        if inner is None:
            if _has_stray_bar(piece):
                raise ValueError(f"in formula {formula!r}, {piece!r}: a random-effects term "
                                 "must be written '(left | group)' and added on its own "
                                 "with '+'")
            fixed.append((sign, piece))
            continue
        if sign == "-":
            raise ValueError(f"in formula {formula!r}: a random-effects term cannot be "
                             f"subtracted ({sign} {piece})")
        positions = _bar_positions(inner)
        diagonal = len(positions) == 2 and positions[1] == positions[0] + 1
        if len(positions) > 1 and not diagonal:
            raise ValueError(f"in formula {formula!r}, {piece!r} has more than one bar")
        left = inner[:positions[0]].strip()
        right = inner[positions[-1] + 1:].strip()
        if not left:
            raise ValueError(f"in formula {formula!r}, {piece!r} has nothing left of the "
                             "bar (write '1 | group' for a random intercept)")
        bars.append((left, _grouping_factors(right, formula), diagonal))
    if not bars:
        raise ValueError(f"formula {formula!r} has no random-effects term '(left | group)'; "
                         "for a model without random effects use ordinary least squares")

    # Check everything (and learn which variables the model uses) before formulaic
    # evaluates anything: even parsing a formula makes formulaic evaluate function names.
    names = _Names(formula, data, context)
    checker = _Checker(formula, names)
    response = _compile_response(lhs, checker)
    fixed_parts, offsets = [], []
    for sign, piece in fixed:
        tokens = list(_tokens(piece, formula))
        argument = checker.offset_argument(tokens[0][1], piece) \
            if len(tokens) == 1 and tokens[0][0] == "code" else None
        if argument is None:
            fixed_parts.append(f"{sign} {_compile_part(piece, checker, 'fixed part')}")
        elif sign == "-":
            raise ValueError(f"in formula {formula!r}: an offset cannot be subtracted "
                             f"(- {piece}); write offset(-x)")
        else:
            offsets.append(argument)
    lefts = [_compile_part(left, checker, "left side of a bar") for left, _, _ in bars]
    for _, factors, _ in bars:
        for group in factors:
            for name in group:
                names.group(name)

    # lme4 (like R) keeps the intercept unless the formula removes it: "1" if nothing is left.
    fixed_rhs = " ".join(fixed_parts) if fixed_parts else "1"
    if fixed_rhs.startswith("+ "):
        fixed_rhs = fixed_rhs[2:]
    fixed_formula = _formula(formulaic, f"{response} ~ {fixed_rhs}", names, formula)
    left_formulas = [_formula(formulaic, f"~ {left}", names, formula) for left in lefts]
    offset_formula = None
    if offsets:
        offset_formula = _formula(formulaic, "~ 0 + " + " + ".join(f"{{{code}}}" for code in
                                                                 offsets), names, formula)

    # Rows: those without a missing value in any variable of the model.
    variables = names.frame()
    missing = variables.isna().any(axis=1).to_numpy()
    work = variables.loc[~missing].reset_index(drop=True)
    for column in work.columns:
        if isinstance(work[column].dtype, pd.CategoricalDtype):
            # R's model.frame drops unused levels: an empty level would give a zero column.
            work[column] = work[column].cat.remove_unused_categories()
    if len(work) == 0:
        raise ValueError(f"no rows left: every row of data has a missing value in "
                         f"{list(variables.columns)}")
    aliased = pd.DataFrame({names.aliases[name]: work[name] for name in work.columns})
    environment = {**_evaluation_functions(), **names.scalars}
    naming = names.naming()

    def materialize(parsed: Any) -> Any:
        try:
            return formulaic.model_matrix(parsed, aliased, context=dict(environment))
        except Exception as err:  # evaluation errors of formulaic: name the formula
            raise ValueError(f"could not evaluate formula {formula!r}: "
                             f"{_short(err, naming.display)}") from None

    matrices = materialize(fixed_formula)
    lhs_matrix, rhs_matrix = matrices.lhs, matrices.rhs
    if lhs_matrix.shape[1] != 1:
        raise ValueError(f"the response {lhs!r} must be one numeric column, got "
                         f"{_lme4_names(lhs_matrix.model_spec, naming)}")
    fixed_spec = rhs_matrix.model_spec
    r_spec = _r_coding(fixed_spec, naming, aliased, environment)
    if r_spec is not None:  # formulaic coded a term otherwise (a:b alone): R's columns
        try:
            rhs_matrix = r_spec.get_model_matrix(aliased, context=dict(environment))
        except Exception as err:  # pragma: no cover - the first materialisation succeeded
            raise ValueError(f"could not evaluate formula {formula!r}: "
                             f"{_short(err, naming.display)}") from None
        fixed_spec = rhs_matrix.model_spec
    term_mats = [materialize(f) for f in left_formulas]
    offset_matrix = None if offset_formula is None else materialize(offset_formula)
    if offset_matrix is not None and offset_matrix.shape[1] != len(offset_matrix.model_spec.terms):
        columns = _lme4_names(offset_matrix.model_spec, naming)
        raise ValueError(f"in formula {formula!r}, an offset must be numeric (one number per "
                         f"row), got {len(columns)} columns {columns[:3]}...")
    # Transformations can still produce missing values (log of 0); keep rows every part has.
    keep = lhs_matrix.index.intersection(rhs_matrix.index)
    for m in [*term_mats, *([] if offset_matrix is None else [offset_matrix])]:
        keep = keep.intersection(m.index)
    keep = keep.sort_values()
    kept_rows = np.flatnonzero(~missing)[keep.to_numpy()]
    row_index = data.index[kept_rows]
    dropped = data.index[np.setdiff1d(np.arange(len(data)), kept_rows)]

    y = pd.Series(np.asarray(lhs_matrix.loc[keep].iloc[:, 0], dtype=float), index=row_index,
                  name=_lme4_names(lhs_matrix.model_spec, naming)[0])
    X, intercept = _without_intercept(
        pd.DataFrame(np.asarray(rhs_matrix.loc[keep], dtype=float), index=row_index,
                     columns=_lme4_names(fixed_spec, naming)), fixed_spec)
    offset = None
    if offset_matrix is not None:
        offset = pd.Series(np.asarray(offset_matrix.loc[keep], dtype=float).sum(axis=1),
                           index=row_index, name="offset")

    terms, term_specs = [], []
    rows = work.loc[keep]
    for (left, factors, diagonal), m in zip(bars, term_mats):
        spec = m.model_spec
        Z = pd.DataFrame(np.asarray(m.loc[keep], dtype=float), index=row_index,
                         columns=_lme4_names(spec, naming))
        if Z.shape[1] == 0:
            raise ValueError(f"in formula {formula!r}, the random-effects term with left side "
                             f"{left!r} has no columns")
        for group_names in factors:
            term = _random_term(rows, tuple(group_names), diagonal, left, Z)
            term.labels.index = row_index
            terms.append(term)
            term_specs.append(spec)
    fitted_rows = rows.copy()
    fitted_rows.index = row_index
    numbers = {name: names.scalars[alias] for name, alias in names.aliases.items()
               if alias in names.scalars}
    return ModelFrame(formula, X, y, terms, intercept, dropped, fixed_spec, term_specs,
                      offset, None if offset_matrix is None else offset_matrix.model_spec,
                      {name: names.aliases[name] for name in work.columns
                       if name in names.predictors}, environment, naming, fitted_rows, numbers)


def _cbind(response: str, formula: str) -> tuple[str, str] | None:
    """The two columns of a ``cbind(successes, failures)`` response, or None."""
    match = re.fullmatch(r"\s*cbind\s*\((.*)\)\s*", response, flags=re.S)
    if match is None:
        return None
    parts = _split_top(match.group(1), ",")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"in formula {formula!r}, cbind() takes two arguments: "
                         "cbind(successes, failures)")
    return parts[0].strip(), parts[1].strip()
