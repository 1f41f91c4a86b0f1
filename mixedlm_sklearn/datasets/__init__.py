"""Small public data sets for trying and testing linear mixed models.

Each loader reads a CSV bundled with the package and returns a fresh
:class:`pandas.DataFrame` with the data set's original column names.

Columns that are factors in the R original (grouping factors and other
categorical codes) come back as strings, even where the labels look like
numbers (sleepstudy ``Subject`` is ``"308"``, not ``308``): a subject number
is a label, and treating it as a number would invite it into a fixed-effects
design by mistake. Measurements come back as ``float64`` or ``int64``, and
missing values as ``NaN``.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = [
    "load_bodyweight",
    "load_cbpp",
    "load_dietox",
    "load_grouseticks",
    "load_insteval",
    "load_orthodont",
    "load_ovary",
    "load_penicillin",
    "load_sleepstudy",
    "load_verbagg",
]


def _read_csv(filename: str, string_columns: tuple[str, ...]) -> pd.DataFrame:
    # Reading the factor columns as str up front (rather than converting after
    # parsing) keeps labels such as "0" or "04601" exactly as written.
    path = resources.files(__name__).joinpath("data", filename)
    with path.open("rb") as handle:
        return pd.read_csv(handle, dtype=dict.fromkeys(string_columns, str))


def load_sleepstudy() -> pd.DataFrame:
    """Load sleepstudy: reaction times in a sleep-deprivation study.

    Source: R package lme4 (``sleepstudy``), from Belenky et al. (2003),
    Journal of Sleep Research 12, 1-12.

    Returns
    -------
    pandas.DataFrame
        180 rows (18 subjects x 10 days), columns:

        - ``Reaction`` (float): average reaction time in ms;
        - ``Days`` (int): days of sleep deprivation, 0 to 9;
        - ``Subject`` (str): subject label, e.g. ``"308"``.

    See Also
    --------
    load_orthodont : Another longitudinal data set with random slopes.

    Notes
    -----
    Classic model: ``Reaction ~ Days + (Days | Subject)``, a random intercept
    and a random slope on ``Days`` per subject.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_sleepstudy
    >>> load_sleepstudy().shape
    (180, 3)
    """
    return _read_csv("sleepstudy.csv", ("Subject",))


def load_dietox() -> pd.DataFrame:
    """Load dietox: weights of slaughter pigs measured weekly for 12 weeks.

    Source: R package geepack (``dietox``), from Lauridsen, Hojsgaard and
    Sorensen (1999), Journal of Animal Science 77, 906-916; the data set of
    the statsmodels MixedLM documentation example.

    Returns
    -------
    pandas.DataFrame
        861 rows (72 pigs), columns:

        - ``Pig`` (str): pig label, e.g. ``"4601"``;
        - ``Evit`` (str): vitamin E dose, ``"Evit000"``, ``"Evit100"``,
          ``"Evit200"``;
        - ``Cu`` (str): copper dose, ``"Cu000"``, ``"Cu035"``, ``"Cu175"``;
        - ``Litter`` (str): litter label;
        - ``Start`` (float): start weight in kg;
        - ``Weight`` (float): weight in kg;
        - ``Feed`` (float): cumulated feed intake in kg, ``NaN`` in each
          pig's first week (72 missing values);
        - ``Time`` (int): week, 1 to 12.

    See Also
    --------
    load_sleepstudy : A smaller data set of the same shape.

    Notes
    -----
    Classic model: ``Weight ~ Time + (1 | Pig)``, or with random slopes
    ``Weight ~ Time + (Time | Pig)``.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_dietox
    >>> load_dietox().shape
    (861, 8)
    """
    return _read_csv("dietox.csv", ("Pig", "Evit", "Cu", "Litter"))


def load_penicillin() -> pd.DataFrame:
    """Load Penicillin: diameters of growth-inhibition zones in an assay.

    Source: R package lme4 (``Penicillin``), from Davies and Goldsmith (1972),
    Statistical Methods in Research and Production.

    Returns
    -------
    pandas.DataFrame
        144 rows (24 plates x 6 samples, fully crossed), columns:

        - ``diameter`` (int): zone diameter in mm;
        - ``plate`` (str): assay plate, ``"a"`` to ``"x"``;
        - ``sample`` (str): penicillin sample, ``"A"`` to ``"F"``.

    See Also
    --------
    load_insteval : Crossed factors at scale.

    Notes
    -----
    Classic model: ``diameter ~ 1 + (1 | plate) + (1 | sample)``, two crossed
    random intercepts.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_penicillin
    >>> load_penicillin().shape
    (144, 3)
    """
    return _read_csv("penicillin.csv", ("plate", "sample"))


def load_orthodont() -> pd.DataFrame:
    """Load Orthodont: growth of a distance in the skull of children.

    Source: R package nlme (``Orthodont``), from Potthoff and Roy (1964),
    Biometrika 51, 313-326.

    Returns
    -------
    pandas.DataFrame
        108 rows (27 children x 4 ages), columns:

        - ``distance`` (float): distance in mm;
        - ``age`` (int): age in years, 8, 10, 12 or 14;
        - ``Subject`` (str): child label, ``"M01"`` to ``"M16"`` and
          ``"F01"`` to ``"F11"``;
        - ``Sex`` (str): ``"Male"`` or ``"Female"``.

    See Also
    --------
    load_sleepstudy : Another longitudinal data set.

    Notes
    -----
    Classic model: ``distance ~ age * Sex + (age | Subject)``.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_orthodont
    >>> load_orthodont().shape
    (108, 4)
    """
    return _read_csv("orthodont.csv", ("Subject", "Sex"))


def load_insteval() -> pd.DataFrame:
    """Load InstEval: lecture evaluations by students at ETH Zurich.

    Source: R package lme4 (``InstEval``).

    Returns
    -------
    pandas.DataFrame
        73,421 rows, columns:

        - ``s`` (str): student label (2,972 students);
        - ``d`` (str): lecturer label (1,128 lecturers);
        - ``studage`` (str): student's semester of enrolment, banded as
          ``"2"``, ``"4"``, ``"6"``, ``"8"``;
        - ``lectage`` (str): how many semesters ago the rated lecture took
          place, banded as ``"1"`` to ``"6"``;
        - ``service`` (str): ``"1"`` if the lecture is a service course
          for another department, else ``"0"``;
        - ``dept`` (str): department code (14 departments);
        - ``y`` (int): rating, 1 (poor) to 5 (very good).

    See Also
    --------
    load_penicillin : A small crossed design.

    Notes
    -----
    ``studage``, ``lectage`` and ``service`` are factors in lme4 and are
    therefore strings here too; convert them with ``astype(int)`` to use them
    as numbers.

    Classic model: ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, three
    crossed random intercepts.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_insteval
    >>> load_insteval().shape
    (73421, 7)
    """
    return _read_csv(
        "insteval.csv", ("s", "d", "studage", "lectage", "service", "dept")
    )


def load_cbpp() -> pd.DataFrame:
    """Load cbpp: contagious bovine pleuropneumonia in zebu herds of Ethiopia.

    Source: R package lme4 (``cbpp``), from Lesnoff et al. (2004), Preventive
    Veterinary Medicine 64, 149-162.

    Returns
    -------
    pandas.DataFrame
        56 rows, columns:

        - ``herd`` (str): herd label, ``"1"`` to ``"15"``;
        - ``incidence`` (int): new serological cases in the period;
        - ``size`` (int): herd size at the start of the period;
        - ``period`` (str): period, ``"1"`` to ``"4"``.

    See Also
    --------
    load_grouseticks : Counts for a Poisson GLMM.

    Notes
    -----
    Classic model: ``cbind(incidence, size - incidence) ~ period + (1 | herd)``,
    binomial (proportion ``incidence / size`` with ``size`` trials).

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_cbpp
    >>> load_cbpp().shape
    (56, 4)
    """
    return _read_csv("cbpp.csv", ("herd", "period"))


def load_verbagg() -> pd.DataFrame:
    """Load VerbAgg: verbal aggression item responses.

    Source: R package lme4 (``VerbAgg``), from De Boeck & Wilson (2004),
    Explanatory Item Response Models, Springer.

    Returns
    -------
    pandas.DataFrame
        7,584 rows (316 respondents x 24 items), columns ``Anger`` (int,
        trait anger score), ``Gender`` (``"F"``/``"M"``), ``item`` (str),
        ``resp`` (``"no"``, ``"perhaps"``, ``"yes"``), ``id`` (str,
        respondent), ``btype`` (``"curse"``, ``"scold"``, ``"shout"``),
        ``situ`` (``"other"``, ``"self"``), ``mode`` (``"want"``, ``"do"``)
        and ``r2`` (int: 1 when ``resp`` is not ``"no"``).

    See Also
    --------
    load_cbpp : Binomial proportions.

    Notes
    -----
    Classic model: ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)``,
    Bernoulli with crossed random intercepts.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_verbagg
    >>> load_verbagg().shape
    (7584, 9)
    """
    return _read_csv("verbagg.csv", ("Gender", "item", "resp", "id", "btype", "situ", "mode"))


def load_grouseticks() -> pd.DataFrame:
    """Load grouseticks: ticks on red grouse chicks.

    Source: R package lme4 (``grouseticks``), from Elston et al. (2001),
    Parasitology 122, 563-569.

    Returns
    -------
    pandas.DataFrame
        403 rows, columns ``INDEX`` (str, chick), ``TICKS`` (int, count),
        ``BROOD`` (str), ``HEIGHT`` (int, altitude in m), ``YEAR`` (str,
        ``"95"``, ``"96"``, ``"97"``), ``LOCATION`` (str) and ``cHEIGHT``
        (float, ``HEIGHT`` centred).

    See Also
    --------
    load_cbpp : Binomial proportions.

    Notes
    -----
    Classic model: ``TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)``,
    Poisson with crossed random intercepts.

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_grouseticks
    >>> load_grouseticks().shape
    (403, 7)
    """
    return _read_csv("grouseticks.csv", ("INDEX", "BROOD", "YEAR", "LOCATION"))


def load_ovary() -> pd.DataFrame:
    """Load Ovary: ovarian follicles of mares over their oestrus cycles.

    Source: R package nlme (``Ovary``), from Pierson and Ginther (1987), Animal
    Reproduction Science 14, 219-231.

    Returns
    -------
    pandas.DataFrame
        308 rows, columns ``follicles`` (int, follicles above 10 mm), ``Time`` (float,
        time in the cycle, 0 at ovulation and 1 at the next), ``Mare`` (str, 11 mares)
        and ``visit`` (int, 1, 2, ... within each mare, in time order).

    See Also
    --------
    load_bodyweight : Repeated measures at uneven times.

    Notes
    -----
    Classic model (Pinheiro and Bates 2000, section 5.3): ``follicles ~ sin(2*pi*Time) +
    cos(2*pi*Time)`` with a random intercept per mare and AR(1) residuals within mare
    (``lmer(..., correlation="ar1(~ visit | Mare)")``).

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_ovary
    >>> load_ovary().shape
    (308, 4)
    """
    return _read_csv("ovary.csv", ("Mare",))


def load_bodyweight() -> pd.DataFrame:
    """Load BodyWeight: rat body weights under three diets.

    Source: R package nlme (``BodyWeight``), from Crowder and Hand (1990), Analysis of
    Repeated Measures, Chapman and Hall.

    Returns
    -------
    pandas.DataFrame
        176 rows, columns ``weight`` (int, grams), ``Time`` (int, days 1, 8, ..., 43, 44,
        50, 57, 64: uneven gaps), ``Rat`` (str, 16 rats) and ``Diet`` (str, ``"1"``,
        ``"2"``, ``"3"``).

    See Also
    --------
    load_ovary : Repeated counts over a cycle.

    Notes
    -----
    Classic model (Pinheiro and Bates 2000, section 6.3): ``weight ~ Time * Diet`` with
    a random intercept and slope per rat and continuous-time AR(1) residuals on ``Time``
    (``lmer(..., correlation="car1(~ Time | Rat)")``).

    Examples
    --------
    >>> from mixedlm_sklearn.datasets import load_bodyweight
    >>> load_bodyweight().shape
    (176, 4)
    """
    return _read_csv("bodyweight.csv", ("Rat", "Diet"))
