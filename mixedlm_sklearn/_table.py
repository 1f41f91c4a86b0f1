"""Result tables that stay DataFrames and print as R prints them.

:class:`ResultTable` is a :class:`pandas.DataFrame` carrying a title, the notes R prints
under a table, a display kind per column and the p-value column that gets significance
codes. Code and tests use it as a DataFrame (``table.loc[...]``, ``table["F value"]``,
``.round(4)``); ``print(table)`` gives R's text, ``_repr_html_`` the same in a notebook.

The number formatting follows R's rules (R 4.x, ``options(digits = 7)``), re-implemented
here from their documented behaviour:

* ``format(x, digits = d)`` (:func:`format_real`): the whole column shares one layout, fixed
  notation with as many decimals as the element that needs the most to show ``d``
  significant digits, unless scientific notation is narrower (R's ``formatReal``);
* ``zapsmall(x, d)`` (:func:`zapsmall`): round to ``d`` digits relative to the largest value;
* ``format.pval(p, d)`` (:func:`format_pval`): ``< 2.2e-16`` below machine epsilon,
  fixed and scientific values formatted as two groups;
* significance codes ``***`` ``**`` ``*`` ``.`` with R's legend line (:func:`signif_codes`).

Three layouts (``layout``), each what R prints for such a table:

``"anova"``
    ``print.anova`` (lmerTest's ``anova``, ``ranova``, ``drop1``; lme4's ``anova(m0, m1)``):
    ``digits = 5``; numbers through ``zapsmall`` then ``format``; test statistics rounded to
    ``dig.tst = 4`` decimals then formatted; p-values by ``format.pval`` with 4 digits;
    missing values blank; the heading above the table.
``"frame"``
    ``print.data.frame``: every number by ``format(x, digits = 7)``, missing values ``NA``
    (p-value columns, which R would print as plain numbers, by ``format.pval`` with 5 digits).
``"emmeans"``
    emmeans' ``print.summary_emm`` (1.8): numbers through ``zapsmall``; the estimate (the
    column before ``SE``) and the other numbers with the digits that resolve estimate -+ 2 SE
    (at least 3), ``df`` rounded to 2 decimals, test statistics with 3 decimals, p-values
    with 4 (``<.0001`` when they round to 0); no row labels, text columns left-aligned; a
    blank line, then each note.

Column kinds (``formats``): ``"num"`` (a number; the default for numeric columns), ``"int"``
(counts, degrees of freedom of a test: not zapped), ``"df"`` (denominator degrees of
freedom), ``"stat"`` (a test statistic: F, Chisq, t), ``"p"`` (p-value, ``format.pval``),
``"p.emmeans"`` (p-value in emmeans' style), ``"text"`` (printed as is; the default for
other columns).

Tables wider than the terminal are printed in blocks of whole columns, each block with the
row labels, as R does (R's rule: a block takes columns while its width stays below the
terminal width).
"""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ResultTable", "format_real", "format_pval", "zapsmall", "signif_codes", "legend_lines",
           "percent_headings", "SIGNIF_LEGEND"]

FORMATS = ("num", "int", "df", "stat", "p", "p.emmeans", "text")
LAYOUTS = ("anova", "frame", "emmeans")

#: R's legend of the significance codes (``symnum``'s legend, UTF-8 quotes).
SIGNIF_LEGEND = "0 \u2018***\u2019 0.001 \u2018**\u2019 0.01 \u2018*\u2019 0.05 \u2018.\u2019 0.1 \u2018 \u2019 1"

_EPS = float(np.finfo(float).eps)  # R's .Machine$double.eps
_DIGITS = 7  # R's getOption("digits")
_KP_MAX = 27  # powers of ten exact in an 80-bit long double (R's table)

# Powers of ten in long double, as R's ``scientific`` scales by them (exact up to 1e27 in
# x87 extended precision; on platforms where long double is double, R and numpy agree too).
_TEN = [np.longdouble(1)]
for _ in range(_KP_MAX):
    _TEN.append(_TEN[-1] * np.longdouble(10))


# ---- R's number formatting ------------------------------------------------------------------


def _scientific(x: float, digits: int) -> tuple[bool, int, int, bool]:
    """R's ``scientific()``: sign, decimal exponent, significant digits needed (at most
    ``digits``) and whether rounding to ``digits`` widens the fixed notation."""
    if x == 0.0:
        return False, 0, 1, False
    r = abs(x)
    if digits >= 16:  # beyond double precision R formats through sprintf
        text = f"{r:.{digits - 1}e}"
        mantissa, exponent = text.split("e")
        nsig = len(mantissa.replace(".", "").rstrip("0")) or 1
        return x < 0, int(exponent), nsig, False
    kp = math.floor(math.log10(r)) - digits + 1
    scaled = np.longdouble(r)
    if abs(kp) <= _KP_MAX:
        scaled = scaled / _TEN[kp] if kp >= 0 else scaled * _TEN[-kp]
    else:
        scaled = scaled / np.power(np.longdouble(10), np.longdouble(kp))
    if scaled < _TEN[digits - 1]:
        scaled *= 10
        kp -= 1
    alpha = float(np.rint(scaled))  # digits significant digits as an integer
    nsig = digits
    for _ in range(digits):
        alpha /= 10.0
        if alpha == math.floor(alpha):
            nsig -= 1
        else:
            break
    if nsig == 0:
        nsig = 1
        kp += 1
    kpower = kp + digits - 1
    # 9996 to 3 digits is 1e+04 in scientific notation but stays 9996 in fixed notation
    rgt = min(max(digits - kpower, 0), _KP_MAX)
    fuzz = 0.5 / _TEN[rgt]
    widens = 0 < kpower <= _KP_MAX and r < _TEN[kpower] - fuzz
    return x < 0, kpower, nsig, bool(widens)


def _layout(values: np.ndarray, digits: int, nsmall: int = 0, scientific: bool | None = None):
    """R's ``formatReal``: (width, decimals, scientific?) shared by all finite values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0, 0, False
    neg = False
    rgt = mxl = mxsl = mxns = -(10**9)
    mnl = 10**9
    for v in finite:
        negative, kpower, nsig, widens = _scientific(float(v), digits)
        left = kpower + 1 - (1 if widens else 0)
        sleft = int(negative) + (1 if left <= 0 else left)
        neg = neg or negative
        rgt = max(rgt, nsig - left)
        mxl, mnl = max(mxl, left), min(mnl, left)
        mxsl = max(mxsl, sleft)
        mxns = max(mxns, nsig)
    if mxl < 0:
        mxsl = 1 + int(neg)
    rgt = max(rgt, 0)
    width_fixed = mxsl + rgt + (rgt != 0)
    exp_digits = 2 if (mxl > 100 or mnl <= -99) else 1
    decimals = mxns - 1
    width_sci = int(neg) + (decimals > 0) + decimals + 4 + exp_digits
    use_fixed = width_fixed <= width_sci if scientific is None else not scientific
    if use_fixed:
        rgt = max(rgt, nsmall)
        return mxsl + rgt + (rgt != 0), rgt, False
    return width_sci, decimals, True


def _special(v: float) -> str:
    if np.isnan(v):
        return "NA"
    return "Inf" if v > 0 else "-Inf"


def format_real(values: Iterable[float], digits: int = _DIGITS, *, nsmall: int = 0,
                scientific: bool | None = None) -> list[str]:
    """R's ``format(x, digits = digits, nsmall = nsmall)`` of a numeric vector (unpadded).

    One layout for the whole vector: fixed notation with the decimals the element needing
    most requires for ``digits`` significant digits, or scientific notation with a common
    mantissa length when that is narrower. ``scientific=False`` forces fixed notation
    (R's ``scientific = FALSE``). Missing values give ``"NA"``.

    Examples
    --------
    >>> format_real([151.02377, 0.71795, 8.78456], digits=5)
    ['151.02377', '0.71795', '8.78456']
    >>> format_real([1.146e-09], digits=4)
    ['1.146e-09']
    >>> format_real([87.9987, 0.4183, 5.1186], digits=5)
    ['87.9987', '0.4183', '5.1186']
    """
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    _, decimals, sci = _layout(x, digits, nsmall, scientific)
    out = []
    for v in x + 0.0:  # R prints -0 as 0
        if not np.isfinite(v):
            out.append(_special(v))
        elif sci:
            out.append(f"{v:.{decimals}e}")
        else:
            out.append(f"{v:.{decimals}f}")
    return out


def _power_of_ten(n: int) -> float:
    """10^n by binary powering in doubles (1 / 10^-n for n < 0), as R's ``R_pow_di``."""
    x, result, k = 10.0, 1.0, abs(n)
    while True:
        if k & 1:
            result *= x
        k >>= 1
        if not k:
            return 1.0 / result if n < 0 else result
        x *= x


def _round_one(x: float, digits: float) -> float:
    """R's ``round(x, digits)`` (R >= 4.0.0): the nearer of the two candidates with ``digits``
    decimals below and above ``x`` (ties to the even last digit); a fractional ``digits`` is
    taken to the nearest integer; nothing changes when ``digits`` exceeds double precision."""
    if not math.isfinite(x) or x == 0.0 or digits > 323:
        return x
    if digits < -308:
        return 0.0
    if digits == 0:
        return float(np.rint(x))
    dig = math.floor(digits + 0.5)
    sign = -1.0 if x < 0 else 1.0
    x = abs(x)
    if math.log10(2) * (0.5 + (math.frexp(x)[1] - 1)) + dig > 15:
        return sign * x
    if dig <= 308:
        scale = _power_of_ten(dig)
        scaled = x * scale
        low, high = math.floor(scaled) / scale, math.ceil(scaled) / scale
    else:  # |x| tiny: scale in two steps so that 10^dig does not overflow
        extra = _power_of_ten(dig - 308)
        scale = _power_of_ten(308)
        scaled = (x * scale) * extra
        low, high = math.floor(scaled) / scale / extra, math.ceil(scaled) / scale / extra
    up, down = high - x, x - low
    odd = math.fmod(math.floor(scaled), 2.0) == 1
    return sign * (high if (up < down or (odd and up == down)) else low)


def _round(x: np.ndarray, digits: float) -> np.ndarray:
    """R's ``round(x, digits)`` elementwise."""
    return np.array([_round_one(float(v), digits) for v in x], dtype=float)


def zapsmall(values: Iterable[float], digits: int = _DIGITS) -> np.ndarray:
    """R's ``zapsmall(x, digits)``: ``round(x, digits - log10(max|x|))``.

    R's ``round`` takes a fractional number of decimals to the nearest integer, so values are
    kept to about ``digits`` significant digits of the largest one.

    Examples
    --------
    >>> zapsmall([151.126996, 0.718528, 8.790563], digits=5).tolist()
    [151.127, 0.719, 8.791]
    """
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    ok = ~np.isnan(x)
    if not ok.any():
        return x
    mx = float(np.max(np.abs(x[ok])))
    places = max(0.0, digits - math.log10(mx)) if mx > 0 else float(digits)
    return _round(x, places)


def format_pval(pvalues: Iterable[float], digits: int = _DIGITS - 2, eps: float = _EPS,
                na: str = "NA") -> list[str]:
    """R's ``format.pval(pv, digits, eps)``.

    Values below ``eps`` print as ``< 2.2e-16`` (R's ``.Machine$double.eps`` with
    ``digits - 2`` digits); the others are formatted with ``digits`` significant digits,
    values from 1e-4 up (1e-3 when ``digits`` is 1) as one group, smaller ones as another.

    Examples
    --------
    >>> format_pval([1.146e-09, 0.5236630, 0.0326138], digits=4)
    ['1.146e-09', '0.52366', '0.03261']
    >>> format_pval([1e-20, 0.5], digits=4)
    ['<2e-16', '0.5']
    >>> format_pval([1e-24, 2e-63], digits=4)
    ['< 2.2e-16', '< 2.2e-16']
    """
    p = np.asarray(pvalues if isinstance(pvalues, np.ndarray) else list(pvalues), dtype=float).ravel()
    out = [na] * p.size
    ok = np.flatnonzero(~np.isnan(p))
    tiny = [i for i in ok if p[i] < eps]
    rest = [i for i in ok if not p[i] < eps]
    rest_text: list[str] = []
    if rest:
        exponent = np.floor(np.log10(np.where(p[rest] > 0, p[rest], 1e-50)))
        fixed = (exponent >= -3) | ((exponent == -4) & (digits > 1))
        for group in (fixed, ~fixed):
            index = [i for i, g in zip(rest, group) if g]
            if index:
                for i, text in zip(index, format_real(p[index], digits)):
                    out[i] = text
        rest_text = [out[i] for i in rest]
    if tiny:
        d = max(1, digits - 2)
        if rest:
            nc = max(len(t) for t in rest_text)
            if d > 1 and d + 6 > nc:
                d = max(1, nc - 7)
            sep = "" if d == 1 and nc <= 6 else " "
        else:
            sep = "" if d == 1 else " "
        text = "<" + sep + format_real([eps], d)[0]
        for i in tiny:
            out[i] = text
    return out


def signif_codes(pvalues: Iterable[float]) -> list[str]:
    """R's significance codes of p-values (``symnum`` with cutpoints 0, .001, .01, .05, .1, 1,
    intervals closed on the right): ``***``, ``**``, ``*``, ``.``, ``" "``; missing -> ``""``."""
    codes = []
    for v in np.asarray(list(pvalues), dtype=float):
        if np.isnan(v):
            codes.append("")
        else:
            codes.append("***" if v <= 0.001 else "**" if v <= 0.01 else "*" if v <= 0.05
                         else "." if v <= 0.1 else " ")
    return codes


def _strwrap(text: str, width: int, prefix: str) -> list[str]:
    """R's ``strwrap(text, width, prefix = prefix)`` for single-spaced words: greedy lines,
    each word counted with one following space, at most ``width - len(prefix)``."""
    lines, current, used = [], [], 0
    room = width - len(prefix)
    for word in text.split(" "):
        if current and used + len(word) + 1 > room:
            lines.append(prefix + " ".join(current))
            current, used = [], 0
        current.append(word)
        used += len(word) + 1
    if current:
        lines.append(prefix + " ".join(current))
    return lines


def legend_lines(width: int = 80) -> list[str]:
    """The lines printCoefmat prints under a table with significance codes, at ``width``.

    R wraps the legend when the width is below its 46 characters and starts it on a new line
    when ``cat(..., fill = )`` (which counts bytes: the quotes take 3) would overflow."""
    pieces = [SIGNIF_LEGEND]
    if width < len(SIGNIF_LEGEND):
        pieces = _strwrap(SIGNIF_LEGEND, width - 2, "  ")
    fill = width + 4 + max(len(p.encode()) - len(p) for p in pieces)
    text, used = "---\nSignif. codes:  ", len("---\nSignif. codes:  ")
    for piece in pieces:
        size = len(piece.encode())
        if used + size > fill:
            text += "\n"
            used = 0
        text += piece
        used += size
    return text.split("\n")


def percent_headings(alpha: float) -> dict[str, str]:
    """R's ``confint`` headings of the bounds: ``"2.5 %"`` and ``"97.5 %"`` at alpha 0.05
    (``paste(format(100 * a, trim = TRUE, scientific = FALSE, digits = 3), "%")``)."""
    lower, upper = format_real([50.0 * alpha, 100.0 - 50.0 * alpha], 3, scientific=False)
    return {"lower": f"{lower} %", "upper": f"{upper} %"}


# ---- emmeans' choice of digits -------------------------------------------------------------


def _emmeans_digits(estimate: np.ndarray, spread: np.ndarray) -> int:
    """emmeans' optimal digits: per row, enough to resolve the interval (at least 3).

    ``spread`` is (n, 2): the lower and upper ends (estimate -+ 2 SE, or the interval)."""
    best = 3
    for e, (lo, hi) in zip(estimate, spread):
        z = np.array([lo, e, hi], dtype=float)
        if not np.all(np.isfinite(z)):
            continue
        top = np.max(np.abs(z))
        if top == 0:
            continue
        lo_z, hi_z = np.min(z) / top, np.max(z) / top
        width = zapsmall([hi_z - lo_z, lo_z, hi_z], 8)[0]
        if width > 0:
            best = max(best, int(np.round(1.51 - np.log10(width))))
    return best


# ---- the table ------------------------------------------------------------------------------


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _text(value: Any, na: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return na
    return str(value)


class ResultTable(pd.DataFrame):
    """A DataFrame that prints as R prints the same table.

    Parameters
    ----------
    data, index, columns, dtype, copy
        As for :class:`pandas.DataFrame`.
    title : str
        Lines printed above the table (R's heading), e.g.
        ``"Type III Analysis of Variance Table with Satterthwaite's method"``.
    notes : sequence of str
        Lines printed under the table (method notes: degrees of freedom, adjustment, ...).
    formats : dict
        Column -> kind: ``"num"``, ``"int"``, ``"df"``, ``"stat"``, ``"p"``,
        ``"p.emmeans"`` or ``"text"``. Columns not listed print as ``"num"`` when numeric,
        else as ``"text"``.
    stars : str or None
        The p-value column whose values get significance codes (a last, unnamed column and
        R's legend line, when some p-value is below 0.1).
    layout : {"anova", "frame", "emmeans"}
        Which R printer to follow (see the module's description).
    headings : dict
        Column -> the heading printed for it (text and HTML only; code keeps the column's
        name), e.g. ``{"lower": "2.5 %", "upper": "97.5 %"}`` as R's ``confint`` prints.

    Notes
    -----
    Row selections, column selections, ``.round()``, ``.copy()`` and ``pd.concat`` keep the
    title, notes and formats (``pd.concat`` takes them from the first table);
    ``pd.DataFrame(table)`` and :meth:`frame` give a plain DataFrame.

    Examples
    --------
    >>> t = ResultTable({"F value": [87.99874, 0.41834], "Pr(>F)": [1.1463e-09, 0.52366]},
    ...                 index=["age", "Sex"], title="Type III Analysis of Variance Table",
    ...                 formats={"F value": "stat", "Pr(>F)": "p"}, stars="Pr(>F)")
    >>> print(t.text(width=80))
    Type III Analysis of Variance Table
        F value    Pr(>F)
    age 87.9987 1.146e-09 ***
    Sex  0.4183    0.5237
    ---
    Signif. codes:  0 ‘***’ 0.001 ‘**’ 0.01 ‘*’ 0.05 ‘.’ 0.1 ‘ ’ 1
    >>> float(t.loc["age", "F value"])
    87.99874
    """

    _metadata = ["title", "notes", "formats", "stars", "layout", "headings"]

    def __init__(self, data=None, index=None, columns=None, dtype=None, copy=None, *,
                 title: str = "", notes: Sequence[str] = (), formats: Mapping[str, str] | None = None,
                 stars: str | None = None, layout: str = "anova",
                 headings: Mapping[str, str] | None = None) -> None:
        super().__init__(data, index=index, columns=columns, dtype=dtype, copy=copy)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        formats = dict(formats or {})
        bad = {c: k for c, k in formats.items() if k not in FORMATS}
        if bad:
            raise ValueError(f"unknown column formats {bad}; use one of {FORMATS}")
        if isinstance(notes, str):
            notes = (notes,)
        self.title = str(title or "")
        self.notes = tuple(str(n) for n in notes)
        self.formats = formats
        self.stars = stars
        self.layout = layout
        self.headings = dict(headings or {})

    @property
    def _constructor(self):
        return ResultTable

    def __finalize__(self, other, method: str | None = None, **kwargs):
        result = super().__finalize__(other, method=method, **kwargs)
        if method == "concat":
            objs = getattr(other, "input_objs", None) or getattr(other, "objs", ())
            tables = [o for o in objs if isinstance(o, ResultTable)]
            if tables:
                first = tables[0]
                for name in ("title", "notes", "stars", "layout", "headings"):
                    object.__setattr__(result, name, getattr(first, name))
                merged: dict[str, str] = {}
                for t in reversed(tables):
                    merged.update(t.formats)
                object.__setattr__(result, "formats", merged)
        if isinstance(getattr(result, "formats", None), dict):  # slices do not share one dict
            object.__setattr__(result, "formats", dict(result.formats))
        return result

    # ---- conversion ----

    def frame(self) -> pd.DataFrame:
        """A plain :class:`pandas.DataFrame` copy (no title, notes or R printing)."""
        return pd.DataFrame(self, copy=True)

    # ---- formatting ----

    def _kind(self, column: Any) -> str:
        kind = self.formats.get(column)
        if kind is None:
            kind = "num" if _is_numeric(self[column]) else "text"
        return kind

    @property
    def _na(self) -> str:
        return "" if self.layout == "anova" else "NA"

    def _column_digits(self) -> int:
        """The significant digits of the "num" columns."""
        if self.layout == "anova":
            return max(_DIGITS - 2, 3)  # print.anova's default
        if self.layout == "emmeans":
            return self._emmeans_estimate_digits()
        return _DIGITS

    def _emmeans_estimate(self) -> Any:
        """emmeans' estimate column: the one before ``SE`` (or before ``lower.HPD``)."""
        columns = list(self.columns)
        for after in ("SE", "lower.HPD"):
            if after in columns and columns.index(after) > 0:
                return columns[columns.index(after) - 1]
        return None

    def _emmeans_estimate_digits(self) -> int:
        """emmeans 1.8's digits: enough to resolve estimate -+ 2 SE (or the HPD interval)."""
        estimate = self._emmeans_estimate()
        if estimate is None:
            return _DIGITS
        est = zapsmall(self[estimate].to_numpy(float))
        if "SE" in self.columns:
            se = zapsmall(self["SE"].to_numpy(float))
            spread = np.column_stack([est - 2 * se, est + 2 * se])
        elif "upper.HPD" in self.columns:
            spread = np.column_stack([zapsmall(self["lower.HPD"].to_numpy(float)),
                                      zapsmall(self["upper.HPD"].to_numpy(float))])
        else:
            return _DIGITS
        return _emmeans_digits(est, spread)

    def _format_column(self, column: Any, digits: int) -> list[str]:
        kind = self._kind(column)
        values = self[column]
        na = self._na
        if kind == "text" or not _is_numeric(values):
            return [_text(v, na) for v in values]
        x = values.to_numpy(dtype=float)
        missing = np.isnan(x)
        if kind == "p.emmeans" or (kind == "p" and self.layout == "emmeans"):
            rounded = _round(x, 4)
            text = ["<.0001" if v == 0 else f"{v:.4f}" for v in rounded]
        elif kind == "p":
            p_digits = max(1, min(5, digits - 1)) if self.layout == "anova" else max(1, digits - 2)
            text = format_pval(x, p_digits)
        elif self.layout == "anova":
            text = self._format_anova(x, kind, digits)
        elif self.layout == "emmeans":
            x = zapsmall(x)
            if kind == "stat":
                text = format_real(_round(x, 3), _DIGITS, nsmall=3, scientific=False)
            elif kind == "df":
                text = format_real(_round(x, 2), digits)
            else:
                text = format_real(x, digits)
        else:
            text = format_real(x, digits)
        if self.layout == "emmeans" and column == self._emmeans_estimate():
            return ["nonEst" if m else t for t, m in zip(text, missing)]
        return [na if m else t for t, m in zip(text, missing)]

    @staticmethod
    def _format_anova(x: np.ndarray, kind: str, digits: int) -> list[str]:
        """printCoefmat's columns as print.anova sets them up."""
        if kind == "stat":  # tst.ind: round to dig.tst decimals, then format
            return format_real(_round(x, max(1, min(5, digits - 1))), digits)
        shown = x if kind == "int" else zapsmall(x, digits)  # Df columns are not zapped
        text = format_real(shown, digits)
        # a non-zero value shown as zero gets its own digits (printCoefmat's rule)
        for i, (v, t) in enumerate(zip(shown, text)):
            if np.isfinite(v) and v != 0 and float(t) == 0:
                text[i] = format_real([v], max(1, digits - 1))[0]
        return text

    def _cells(self) -> tuple[list[str], list[list[str]], list[bool], bool]:
        """Headers, formatted columns, left-justified?, and whether the legend applies."""
        digits = self._column_digits()
        headings = getattr(self, "headings", None) or {}
        headers = [str(headings.get(c, c)) for c in self.columns]
        columns = [self._format_column(c, digits) for c in self.columns]
        left = [self.layout == "emmeans" and self._kind(c) == "text" for c in self.columns]
        legend = False
        if self.stars is not None and self.stars in self.columns:
            p = self[self.stars].to_numpy(dtype=float)
            if np.any(p[~np.isnan(p)] < 0.1):
                codes = signif_codes(p)
                width = max(len(c) for c in codes)
                headers.append("")
                columns.append([c.ljust(width) for c in codes])
                left.append(False)
                legend = True
        return headers, columns, left, legend

    def text(self, width: int | None = None) -> str:
        """The table as R prints it, in blocks of whole columns at most ``width`` wide.

        ``width`` defaults to the terminal's (``shutil.get_terminal_size``, 80 when unknown).
        """
        if width is None:
            width = shutil.get_terminal_size((80, 24)).columns
        headers, columns, left, legend = self._cells()
        lines: list[str] = []
        if self.title:
            lines.extend(self.title.split("\n"))
        labels = None if self.layout == "emmeans" else [str(i) for i in self.index]
        if len(self.columns) == 0:  # as R prints an empty data frame
            lines.append(f"data frame with 0 columns and {len(self.index)} rows")
        else:
            lines.extend(_blocks(labels, headers, columns, left, width))
            if len(self.index) == 0:
                lines.append("<0 rows> (or 0-length row.names)")
        if legend:
            lines.extend(legend_lines(width))
        if self.notes:
            if self.layout == "emmeans":
                lines.append("")
                lines.extend(f"{n} " for n in self.notes)  # emmeans: cat(paste(msg, "\n"))
            else:
                lines.extend(self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        headers, columns, left, legend = self._cells()
        parts = ['<div class="mixedlm-result-table">']
        if self.title:
            parts.append("<p><b>" + "<br>".join(html.escape(t) for t in self.title.split("\n")) + "</b></p>")
        parts.append('<table class="dataframe">')
        corner = "" if self.layout == "emmeans" else "<th></th>"
        parts.append("<thead><tr>" + corner + "".join(f"<th>{html.escape(h)}</th>" for h in headers)
                     + "</tr></thead>")
        parts.append("<tbody>")
        labels = [str(i) for i in self.index]
        for r, label in enumerate(labels):
            row = "" if self.layout == "emmeans" else f"<th>{html.escape(label)}</th>"
            for column, is_left in zip(columns, left):
                align = "left" if is_left else "right"
                row += f'<td style="text-align: {align}; white-space: pre">{html.escape(column[r].rstrip())}</td>'
            parts.append(f"<tr>{row}</tr>")
        parts.append("</tbody></table>")
        if legend:
            parts.append(f"<p><small>Signif. codes:&nbsp; {html.escape(SIGNIF_LEGEND)}</small></p>")
        if self.notes:
            parts.append("<p>" + "<br>".join(html.escape(n) for n in self.notes) + "</p>")
        parts.append("</div>")
        return "\n".join(parts)


def _blocks(labels: list[str] | None, headers: list[str], columns: list[list[str]],
            left: list[bool], width: int) -> list[str]:
    """R's ``print.default`` of a character matrix (``quote = FALSE, right = TRUE``).

    Row labels left-justified, each column one space then right-justified (text columns of
    emmeans left-justified); when the columns do not fit in ``width``, blocks of whole
    columns, each a header line and every row (R: a block takes the next column while its
    width stays below ``width``)."""
    n_rows = len(columns[0]) if columns else len(labels or [])
    label_width = max((len(s) for s in labels), default=0) if labels is not None else 0
    widths = [max([len(h)] + [len(v) for v in col]) for h, col in zip(headers, columns)]
    lines: list[str] = []
    if not columns:
        return [(s.ljust(label_width)) for s in (labels or [])]
    start = 0
    while start < len(columns):
        end = start
        used = label_width
        while True:
            used += widths[end] + 1
            end += 1
            if end >= len(columns) or used + widths[end] + 1 >= width:
                break
        block = range(start, end)

        def cell(text: str, j: int) -> str:
            return " " + (text.ljust(widths[j]) if left[j] else text.rjust(widths[j]))

        lines.append(" " * label_width + "".join(cell(headers[j], j) for j in block))
        for i in range(n_rows):
            label = labels[i].ljust(label_width) if labels is not None else ""
            lines.append(label + "".join(cell(columns[j][i], j) for j in block))
        start = end
    return lines
