"""Correlated residuals within groups: the residual correlation structures of the linear model.

The residuals of the rows of one residual group ``g`` have covariance ``sigma^2 R_g``
with ``R_g`` a correlation matrix given by one parameter (nlme's ``corStruct`` classes,
Pinheiro & Bates 2000, sec. 5.3). With ``L_g`` a factor of ``R_g`` (``R_g = L_g L_g'``)
the model of ``L_g^{-1}[y X Z]`` has independent residuals, so the deviance (ML and REML
alike) is the deviance of the whitened data plus ``log|R| = sum_g log|R_g|`` (the
Jacobian of the transformation; ``X'V^{-1}X`` of the REML term is the whitened one).
Whitening stays within a residual group, so a row's random-effects design keeps the
support of its own level when every residual group lies within one level of every
grouping factor. Where a group spans levels of a factor (AR(1) within subjects next to a
crossed item factor, or residual groups that are another column), a whitened row is a
combination of rows of several levels, and ``Z_k'R^{-1}Z_k`` has blocks between two
levels of one term (for AR(1), items adjacent in a subject's series; for ``cs``, any two
items of a subject): the cross-products hold them as *self pairs*
(:func:`._crossprod.entry_cross_products`, :attr:`CorrelatedRows.crossed`) and the
factorisation puts such terms in its dense block, behind a term the groups are nested in
(eliminated level by level or crossing, :class:`._factor.Plan`; sparse rounds where they
pay), refused when the dense core left is above ``MAX_DENSE`` random effects. Fits from chunks and Dask still need
nested groups (:func:`check_nested`); Kenward-Roger's adjustment (dense per residual
group) refuses such fits, naming Satterthwaite's df.

Structures, with ``d`` the distance in time between two rows of a group:

* ``ar1``: ``phi^d`` on integer positions (nlme's ``corAR1``; ``-1 < phi < 1``);
* ``car1``: ``phi^d`` on real times (``corCAR1``; ``0 < phi < 1``);
* ``exp``: ``exp(-d / range)`` (``corExp`` without nugget; ``range > 0``);
* ``cs``: ``rho`` between any two rows of a group (``corCompSymm``;
  ``-1/(n_max - 1) < rho < 1`` with ``n_max`` the largest group).

The first three are Markov in time: with rows sorted by time and ``c_t`` the correlation
of row ``t`` with the previous row of its group, ``L^{-1}`` is bidiagonal (the
Prais-Winsten transform): row ``t`` of the whitened data is ``(e_t - c_t e_{t-1}) /
sqrt(1 - c_t^2)``, the first row of a group is kept, and ``log|R_g| = sum_t log(1 - c_t^2)``.
For ``cs`` the symmetric inverse root is ``R_g^{-1/2} = a (I - P) + b P`` with
``P = 11'/n_g``, ``a = (1 - rho)^{-1/2}``, ``b = (1 + (n_g - 1) rho)^{-1/2}``, and
``log|R_g| = (n_g - 1) log(1 - rho) + log(1 + (n_g - 1) rho)``. All are vectorised over
groups (shifted rows with a "same group as the previous row" mask, group sums by
``np.add.reduceat``).

Each structure is a :class:`CorrelationStructure`: its parameter's name (nlme's),
its internal (unconstrained) parameter with bounds and transform, the correlation of
two rows, the whitening and the log-determinant.

The fit (:func:`fit_correlated`) is joint: the correlation's internal parameter ``u`` is a
coordinate of the deviance's ``x = (theta, u)`` (:class:`JointDeviance`, with an analytic
gradient), minimised by the linear model's optimiser with its safeguards run once. The
whitened cross-products are a weighted sum of :class:`Components` formed once from the
rows (weights and ``log|R|`` closed forms in ``u``), as the strata's variances are. Rows
with more than :data:`MAX_COMPONENTS` distinct lags (continuous times with irregular
gaps) or group sizes are fitted by the outer search: the deviance profiled over ``u`` by
a grid and a bounded Brent search around whole fits of the whitened rows.

The components are sums over residual groups, so those of rows read in chunks (or Dask
partitions) that each hold whole residual groups add up to those of all rows
(:mod:`._chunked`); :func:`fit_components` fits from them alone, the structures reading
only a :class:`RowsSummary` of the rows. The outer search reads the rows whitened at each
value: from chunks, one pass over them per value (:class:`._chunked.ChunkedRows`, which
stands for the rows where the search reads them).

A residual variance per stratum (``residual_groups``, nlme's ``varIdent``) makes a
group's residual covariance ``sigma^2 S^{1/2} R_g S^{1/2}``: the strata's log ratios join
``x = (theta, eta, u)`` and the components are held per pair of strata (see
:class:`Components`). Strata constant within each residual group commute with the
whitening (the whitened rows keep their stratum's variance), so the outer search fits
them as row weights of the whitened rows; strata varying within a group need the joint
form. From chunks the components of each pair of strata add up by the strata's labels.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass

import numpy as np

from ._deviance import MAX_LOG_RATIO, Deviance

__all__ = ["CorrelationStructure", "CorrelationRows", "RowsSummary", "STRUCTURES", "structure",
           "check_nested", "CorrelationSpec", "parse_spec", "components", "fit_components"]

# Internal parameters are searched within these bounds: correlations within about 1e-9
# of their limits (beyond, 1 - phi^2 loses all its digits).
_MAX_INTERNAL = 20.0


@dataclass(frozen=True)
class CorrelationRows:
    """The rows of a fit arranged for whitening.

    Attributes
    ----------
    order : ndarray of int
        Permutation putting the rows in residual-group order (stable: within a group the
        rows keep their order, which is their time order).
    same : ndarray of bool
        In that order: whether a row belongs to the group of the previous row.
    gaps : ndarray of float
        In that order: time since the previous row of the group (1 where ``same`` is False).
    starts : ndarray of int
        First row (in that order) of each group.
    sizes : ndarray of int
        Rows per group.
    """

    order: np.ndarray
    same: np.ndarray
    gaps: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    @property
    def n(self) -> int:
        return int(self.order.size)

    @property
    def n_max(self) -> int:
        return int(self.sizes.max(initial=1))

    @property
    def inner_gap_min(self) -> float | None:
        """The shortest time between consecutive rows of a group (None: no group has two rows)."""
        inner = self.gaps[self.same]
        return float(inner.min()) if inner.size else None

    @property
    def inner_gap_sum(self) -> float | None:
        """The sum of the times between consecutive rows of the groups (None: no group has
        two rows)."""
        inner = self.gaps[self.same]
        return float(inner.sum()) if inner.size else None

    def summary(self) -> "RowsSummary":
        """What the structures' bounds and scales need of the rows (:class:`RowsSummary`)."""
        return RowsSummary(self.n, self.n_max, self.inner_gap_min, self.inner_gap_sum)

    @classmethod
    def from_arrays(cls, codes: np.ndarray, times: np.ndarray | None, integer: bool,
                    group_name: str = "correlation_groups") -> "CorrelationRows":
        """Rows of residual groups ``codes`` (ints) at ``times`` (None: positions 1, 2, ...
        within the group in row order). Times must increase strictly within a group."""
        codes = np.asarray(codes)
        n = codes.size
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        same = np.zeros(n, dtype=bool)
        same[1:] = sorted_codes[1:] == sorted_codes[:-1]
        starts = np.flatnonzero(~same)
        sizes = np.diff(np.append(starts, n))
        if times is None:
            gaps = np.ones(n)
        else:
            t = np.asarray(times, dtype=float)[order]
            if not np.all(np.isfinite(t)):
                raise ValueError("the correlation's times contain missing or infinite values")
            if np.any(t < 0):
                raise ValueError("the correlation's times must be non-negative (times or "
                                 "positions within a group)")
            if integer and np.any(t != np.round(t)):
                raise ValueError("correlation='ar1' needs integer positions (e.g. visit 1, 2, 3 "
                                 "within a group); for real-valued times use 'car1' or 'exp'")
            gaps = np.ones(n)
            gaps[1:] = t[1:] - t[:-1]
            inner = same.copy()
            if np.any(gaps[inner] == 0):
                raise ValueError(f"duplicate times within a group of {group_name}: each row of a "
                                 "group needs its own time")
            if np.any(gaps[inner] < 0):
                raise ValueError(f"times are not increasing within a group of {group_name}: sort "
                                 "the rows of each group by time")
            gaps[~same] = 1.0
        return cls(order, same, gaps, starts, sizes)


@dataclass(frozen=True)
class RowsSummary:
    """What a structure's bounds, parameter scale and singularity check read of the rows:
    their number, the largest group and the shortest and summed times between consecutive
    rows of a group (the attributes of :class:`CorrelationRows` of the same names). A fit
    from chunks (:mod:`._chunked`) holds this instead of the rows; the summaries of chunks
    whose residual groups are disjoint add up (:meth:`merged`)."""

    n: int
    n_max: int
    inner_gap_min: float | None
    inner_gap_sum: float | None

    def merged(self, other: "RowsSummary") -> "RowsSummary":
        def both(a, b, f):
            return b if a is None else a if b is None else f(a, b)

        return RowsSummary(self.n + other.n, max(self.n_max, other.n_max),
                           both(self.inner_gap_min, other.inner_gap_min, min),
                           both(self.inner_gap_sum, other.inner_gap_sum, lambda a, b: a + b))


class CorrelationStructure:
    """A residual correlation structure with one parameter (abstract).

    Attributes
    ----------
    name : str
        The spelling of ``MixedLMRegressor(correlation=...)``.
    nlme_class : str
        nlme's class of the same structure.
    param_name : str
        nlme's name of the parameter (``Phi``, ``range``, ``Rho``).
    needs_integer_times : bool
    """

    name = ""
    nlme_class = ""
    param_name = ""
    needs_integer_times = False

    def bounds(self, rows: CorrelationRows) -> tuple[float, float]:
        """Bounds of the internal parameter searched."""
        return -_MAX_INTERNAL, _MAX_INTERNAL

    def value(self, u: float, rows: CorrelationRows) -> float:
        """The parameter (nlme's scale) of internal parameter ``u``."""
        raise NotImplementedError

    def internal(self, value: float, rows: CorrelationRows) -> float:
        """Inverse of :meth:`value`."""
        raise NotImplementedError

    def lag_correlation(self, u: float, d: np.ndarray, rows: CorrelationRows
                        ) -> tuple[np.ndarray, np.ndarray]:
        """The correlation of two rows ``d > 0`` apart at internal parameter ``u`` and its
        derivative in ``u`` (the joint fit's gradient, :class:`JointDeviance`)."""
        raise NotImplementedError

    def boundary_value(self) -> float | None:
        """The parameter of independent residuals where it is a bound of the internal scale
        (None where it is an interior value): the search reaches it only in the limit, so
        it is evaluated on its own."""
        return None

    def near_singular(self, value: float, rows: CorrelationRows) -> bool:
        """Whether ``R`` at ``value`` is within rounding of singular (a degenerate estimate)."""
        raise NotImplementedError

    def correlation(self, value: float, d: np.ndarray) -> np.ndarray:
        """The correlation of two rows of one group ``d`` apart in time (``d >= 0``)."""
        raise NotImplementedError

    def correlation_derivatives(self, value: float, d: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The correlation of two rows ``d >= 0`` apart and its first and second derivatives
        in the parameter on nlme's scale (``Phi``, ``range``, ``Rho``): Kenward-Roger's
        variance parameter (:meth:`CorrelatedRows.kr_products`)."""
        raise NotImplementedError

    def whiten(self, M: np.ndarray, rows: CorrelationRows, value: float) -> np.ndarray:
        """``L^{-1} M`` of rows ``M`` given in residual-group order (n, k)."""
        raise NotImplementedError

    def logdet(self, rows: CorrelationRows, value: float) -> float:
        """``log|R| = sum_g log|R_g|``."""
        raise NotImplementedError

    def colour(self, M: np.ndarray, rows: CorrelationRows, value: float) -> np.ndarray:
        """``L M`` of rows ``M`` in residual-group order (n, k): the inverse of
        :meth:`whiten`, so that ``L z`` of standard normal ``z`` has covariance ``R``
        (simulated residuals)."""
        raise NotImplementedError

    def dense(self, value: float, times: np.ndarray) -> np.ndarray:
        """``R_g`` of one group with times ``times`` (tests' oracle, printing)."""
        t = np.asarray(times, dtype=float)
        return self.correlation(value, np.abs(t[:, None] - t[None, :]))


class _Markov(CorrelationStructure):
    """Structures whose correlation at lag ``d1 + d2`` is the product of those at ``d1``, ``d2``:
    ``L^{-1}`` bidiagonal."""

    def _lag_corr(self, rows: CorrelationRows, value: float) -> np.ndarray:
        c = self.correlation(value, rows.gaps)
        return np.where(rows.same, c, 0.0)

    def near_singular(self, value, rows):
        # |c(d)| decreases in the gap d (>= 1 for ar1's integer positions): the shortest
        # gap's is the largest
        d = rows.inner_gap_min
        return d is not None and bool(abs(float(self.correlation(value, d))) > 1.0 - 1e-6)

    def whiten(self, M: np.ndarray, rows: CorrelationRows, value: float) -> np.ndarray:
        c = self._lag_corr(rows, value)
        scale = 1.0 / np.sqrt(1.0 - c * c)
        out = M.copy()
        out[1:] -= c[1:, None] * M[:-1]
        return out * scale[:, None]

    def logdet(self, rows: CorrelationRows, value: float) -> float:
        c = self._lag_corr(rows, value)
        return float(np.log1p(-c * c).sum())

    def colour(self, M: np.ndarray, rows: CorrelationRows, value: float) -> np.ndarray:
        # e_t = c_t e_{t-1} + sqrt(1 - c_t^2) z_t: one step per position within a group,
        # all groups at once (the first row of a group has c = 0)
        c = self._lag_corr(rows, value)
        out = M * np.sqrt(1.0 - c * c)[:, None]
        position = np.arange(rows.n) - np.repeat(rows.starts, rows.sizes)
        by_position = np.argsort(position, kind="stable")
        bounds = np.searchsorted(position[by_position], np.arange(1, rows.n_max + 1))
        for k in range(1, rows.n_max):
            at = by_position[bounds[k - 1]:bounds[k]]
            out[at] += c[at, None] * out[at - 1]
        return out


class AR1(_Markov):
    name, nlme_class, param_name = "ar1", "corAR1", "Phi"
    needs_integer_times = True

    def value(self, u, rows):
        return float(np.tanh(0.5 * u))  # nlme's log((1 + phi) / (1 - phi))

    def internal(self, value, rows):
        return float(2.0 * np.arctanh(value))

    def lag_correlation(self, u, d, rows):
        phi = np.tanh(0.5 * u)
        d = np.asarray(d, dtype=float)  # integer lags >= 1: a negative base is exact
        return np.power(phi, d), d * np.power(phi, d - 1.0) * 0.5 * (1.0 - phi * phi)

    def correlation(self, value, d):
        d = np.asarray(d, dtype=float)
        # integer lags: a negative phi alternates in sign
        return np.where(d == 0, 1.0, np.sign(value) ** np.round(d) * np.abs(value) ** d)

    def correlation_derivatives(self, value, d):
        d = np.round(np.asarray(d, dtype=float))
        # phi^d, d phi^(d-1), d (d-1) phi^(d-2) with integer exponents (exact for a negative
        # phi); the exponents are clipped at 0 where their factor d or d - 1 vanishes
        power = lambda e: np.power(float(value), np.maximum(e, 0.0))  # noqa: E731
        return power(d), d * power(d - 1.0), d * (d - 1.0) * power(d - 2.0)


class CAR1(_Markov):
    name, nlme_class, param_name = "car1", "corCAR1", "Phi"

    def value(self, u, rows):
        return float(1.0 / (1.0 + np.exp(-u)))  # nlme's log(phi / (1 - phi))

    def internal(self, value, rows):
        return float(np.log(value / (1.0 - value)))

    def correlation(self, value, d):
        return np.power(value, np.asarray(d, dtype=float))

    def correlation_derivatives(self, value, d):
        d = np.asarray(d, dtype=float)
        c = np.power(value, d)  # 0 < phi < 1 inside the bounds: phi^(d-k) = c / phi^k
        return c, d * c / value, d * (d - 1.0) * c / value ** 2

    def lag_correlation(self, u, d, rows):
        phi = 1.0 / (1.0 + np.exp(-u))
        c = np.power(phi, np.asarray(d, dtype=float))
        return c, np.asarray(d, dtype=float) * c * (1.0 - phi)

    def bounds(self, rows):
        # down to a correlation of 1e-10 at the shortest gap (phi^d with d << 1 stays large
        # for a tiny phi: the search must reach far below the usual bound)
        d_min = rows.inner_gap_min if rows.inner_gap_min is not None else 1.0
        return min(-_MAX_INTERNAL, np.log(1e-10) / d_min), _MAX_INTERNAL

    def boundary_value(self):
        return 0.0


class Exp(_Markov):
    name, nlme_class, param_name = "exp", "corExp", "range"

    def bounds(self, rows):
        # range from far below the smallest gap to far above the largest time span
        lo = rows.inner_gap_min if rows.inner_gap_min is not None else 1.0
        hi = rows.inner_gap_sum if rows.inner_gap_sum is not None else 1.0
        return float(np.log(lo) - 6.0), float(np.log(max(hi, lo)) + 12.0)

    def value(self, u, rows):
        return float(np.exp(u))  # nlme's log(range)

    def internal(self, value, rows):
        return float(np.log(value))

    def boundary_value(self):
        return 0.0

    def lag_correlation(self, u, d, rows):
        d = np.asarray(d, dtype=float)
        c = np.exp(-d * np.exp(-u))
        return c, c * d * np.exp(-u)

    def correlation(self, value, d):
        d = np.asarray(d, dtype=float)
        if value == 0:
            return np.where(d == 0, 1.0, 0.0)
        return np.exp(-d / value)

    def correlation_derivatives(self, value, d):
        d = np.asarray(d, dtype=float)
        c = np.exp(-d / value)
        a = d / value ** 2  # d/drange of -d / range
        return c, a * c, (a * a - 2.0 * a / value) * c


class CompoundSymmetry(CorrelationStructure):
    name, nlme_class, param_name = "cs", "corCompSymm", "Rho"

    def _lower(self, rows: CorrelationRows) -> float:
        return -1.0 / (rows.n_max - 1) if rows.n_max > 1 else -1.0

    def value(self, u, rows):
        lo = self._lower(rows)
        return float(lo + (1.0 - lo) / (1.0 + np.exp(-u)))

    def internal(self, value, rows):
        lo = self._lower(rows)
        f = (value - lo) / (1.0 - lo)
        return float(np.log(f / (1.0 - f)))

    def correlation(self, value, d):
        return np.where(np.asarray(d) == 0, 1.0, value)

    def correlation_derivatives(self, value, d):
        off = np.asarray(d) != 0
        return np.where(off, value, 1.0), off.astype(float), np.zeros(off.shape)

    def lag_correlation(self, u, d, rows):
        lo = self._lower(rows)
        f = 1.0 / (1.0 + np.exp(-u))
        shape = np.shape(d)
        return np.full(shape, lo + (1.0 - lo) * f), np.full(shape, (1.0 - lo) * f * (1.0 - f))

    def near_singular(self, value, rows):
        lo = self._lower(rows)
        return bool((value - lo) / (1.0 - lo) < 1e-4 or value > 1.0 - 1e-6)

    def whiten(self, M, rows, value):
        n_g = rows.sizes.astype(float)
        a = 1.0 / np.sqrt(1.0 - value)
        b = 1.0 / np.sqrt(1.0 + (n_g - 1.0) * value)
        means = np.add.reduceat(M, rows.starts, axis=0) / n_g[:, None]
        per_row = np.repeat(np.arange(rows.starts.size), rows.sizes)
        return a * M + ((b - a)[:, None] * means)[per_row]

    def logdet(self, rows, value):
        n_g = rows.sizes.astype(float)
        return float(((n_g - 1.0) * np.log1p(-value) + np.log1p((n_g - 1.0) * value)).sum())

    def colour(self, M, rows, value):
        # the symmetric root R_g^{1/2} = a (I - P) + b P, a = (1 - rho)^{1/2},
        # b = (1 + (n_g - 1) rho)^{1/2}
        n_g = rows.sizes.astype(float)
        a = np.sqrt(1.0 - value)
        b = np.sqrt(1.0 + (n_g - 1.0) * value)
        means = np.add.reduceat(M, rows.starts, axis=0) / n_g[:, None]
        per_row = np.repeat(np.arange(rows.starts.size), rows.sizes)
        return a * M + ((b - a)[:, None] * means)[per_row]


STRUCTURES: dict[str, type[CorrelationStructure]] = {
    cls.name: cls for cls in (AR1, CAR1, Exp, CompoundSymmetry)}


_NLME_NAMES = {"corar1": "ar1", "corcar1": "car1", "corexp": "exp",
               "corcompsymm": "cs"}
_NAME = r"[A-Za-z_.][A-Za-z0-9_.]*"
# "ar1", "car1(~ Time | Rat)", "corAR1(form = ~ 1 | Mare)": read by this pattern, never evaluated
_SPEC = re.compile(rf"^\s*(?P<name>[A-Za-z0-9]+)\s*(?:\(\s*(?:form\s*=\s*)?~\s*(?P<time>{_NAME}|1)"
                   rf"\s*(?:\|\s*(?P<groups>{_NAME})\s*)?\)|\(\s*\))?\s*$")


@dataclass(frozen=True)
class CorrelationSpec:
    """A parsed ``correlation=`` string: the structure's name, the time column (None: the
    row order) and the residual groups' column (None: the grouping factor)."""

    name: str
    time: str | None = None
    groups: str | None = None

    @property
    def names_columns(self) -> bool:
        return self.time is not None or self.groups is not None


def parse_spec(text: str) -> CorrelationSpec:
    """``"ar1"``, ``"car1(~ Time | Rat)"``, nlme's ``"corCAR1(form = ~ Time | Rat)"``, or a
    ValueError naming the accepted forms. Only this pattern is read; nothing is evaluated."""
    accepted = (f"correlation must be one of {sorted(STRUCTURES)}, optionally with nlme's form "
                "('car1(~ Time | Rat)', 'ar1(~ 1 | Mare)', 'corAR1(form = ~ visit | Mare)'), or None")
    if not isinstance(text, str):
        raise ValueError(f"{accepted}; got {text!r}")
    m = _SPEC.match(text)
    if m is None:
        raise ValueError(f"{accepted}; got {text!r}")
    name = m.group("name").lower()
    name = _NLME_NAMES.get(name, name)
    if name not in STRUCTURES:
        raise ValueError(f"{accepted}; got {text!r}")
    time = m.group("time")
    return CorrelationSpec(name, None if time in (None, "1") else time, m.group("groups"))


def structure(name: str) -> CorrelationStructure:
    """The structure of a ``correlation=`` string (:func:`parse_spec`), or a ValueError."""
    return STRUCTURES[parse_spec(name).name]()


def check_nested(rows: CorrelationRows, factors: list, factor_names: list, group_name: str) -> None:
    """A ValueError unless every residual group lies within one level of every grouping
    factor: the fits from chunks and Dask partitions, whose components are summed with
    the levels' block structure of independent rows. A fit in memory takes residual groups
    spanning levels (:attr:`CorrelatedRows.crossed`) and does not call this."""
    for (codes, _), fname in zip(factors, factor_names):
        c = np.asarray(codes)[rows.order]
        if np.any(rows.same[1:] & (c[1:] != c[:-1])):
            raise ValueError(
                f"the residual groups ({group_name}) are not nested in the levels of the grouping "
                f"factor {fname!r}: a residual group has rows of several of its levels. A fit "
                "from chunks or Dask takes correlated residuals within groups that lie in one "
                "level of every grouping factor (e.g. the grouping factor itself, or a factor "
                "nested in it); fit the data in memory (fit) for other residual groups")


# ---- the joint fit: the correlation parameter next to theta in the deviance's x --------------

# Distinct lags (Markov structures) or group sizes (compound symmetry) up to which the
# correlated cross-products are held as components; beyond, the outer search is used
# (each component is a stratum of the cross-products that every evaluation combines).
MAX_COMPONENTS = 16


# The kinds of component weight, functions of the correlation ``c`` of a lag class (Markov)
# or of ``rho`` and the group size ``m`` (compound symmetry), ``g = (1 - rho)(1 + (m - 1) rho)``:
# 0: 1; 1: 1/(1+c); 2: -c/(1+c); 3: c/(1-c^2) (a lag's three components);
# 8: 1/(1-rho); 9: -rho/g; 10: -rho/(2g); 11: rho/(2g).


def _g(c: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``g = (1 - rho)(1 + (m - 1) rho)`` and ``dg / drho``."""
    return (1.0 - c) * (1.0 + (m - 1.0) * c), (m - 2.0) - 2.0 * (m - 1.0) * c


def _cs_weight(scale: float):
    """Kinds 9-11: ``scale * (-rho / g)`` and its derivative."""
    def weight(c, m):
        g, dg = _g(c, m)
        return scale * (-c / g), scale * (-(g - c * dg) / (g * g))
    return weight


# kind -> (c, m) -> (weight, derivative in c), evaluated only on the components of the kind
_KIND_WEIGHTS = {
    0: lambda c, m: (np.ones_like(c), np.zeros_like(c)),
    1: lambda c, m: (1.0 / (1.0 + c), -1.0 / (1.0 + c) ** 2),
    2: lambda c, m: (-c / (1.0 + c), -1.0 / (1.0 + c) ** 2),
    3: lambda c, m: (c / (1.0 - c * c), (1.0 + c * c) / (1.0 - c * c) ** 2),
    8: lambda c, m: (1.0 / (1.0 - c), 1.0 / (1.0 - c) ** 2),
    9: _cs_weight(1.0),
    10: _cs_weight(0.5),
    11: _cs_weight(-0.5),
}


def _kind_weights(kind: np.ndarray, c: np.ndarray, m: np.ndarray,
                  groups: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each component's weight of its kind and its derivative in ``c`` (``rho``);
    ``groups``: the ``(kind, components)`` pairs of ``kind`` (:func:`_kind_groups`)."""
    f, df = np.zeros(kind.size), np.zeros(kind.size)
    for k, at in _kind_groups(kind) if groups is None else groups:
        f[at], df[at] = _KIND_WEIGHTS[k](c[at], m[at])
    return f, df


def _kind_groups(kind: np.ndarray) -> list:
    """The kinds present and the components of each."""
    return [(int(k), np.flatnonzero(kind == k)) for k in np.unique(kind)]


@dataclass(frozen=True)
class Components:
    """The cross-products of correlated rows as a weighted sum of components.

    Markov structures (``ar1``, ``car1``, ``exp``): with rows in time order within a group,
    ``c_t`` the correlation of row ``t`` with the previous row and ``x_t`` a row of
    ``[X y Z]``, the whitened products are ``x_1 x_1' + sum_t (x_t - c_t x_{t-1})(x_t -
    c_t x_{t-1})' / (1 - c_t^2)`` (the Prais-Winsten rows of the module docstring). Written
    with ``x_t x_t'``, ``x_{t-1} x_{t-1}'`` and ``(x_t - x_{t-1})(x_t - x_{t-1})'`` (which
    carries the lag products by polarisation) summed over the rows whose lag ``d`` is
    ``d_j``, this is the sum of the first rows' products and, per lag class ``j``, those
    three with weights ``1 / (1 + c)``, ``-c / (1 + c)`` and ``c / (1 - c^2)``,
    ``c = c(d_j)``. Compound symmetry: ``R_g^{-1} = (I - c_m 11') / (1 - rho)``,
    ``c_m = rho / (1 + (m - 1) rho)`` for a group of size ``m``, so the products are
    those of all rows with weight ``1 / (1 - rho)`` and, per group size ``m``, those of the
    groups' sums ``s_g`` with weight ``-c_m / (1 - rho)``. Where residual groups lie within
    one level of every grouping factor the lag rows and the sums keep the level of their
    rows, and no new pair of levels appears; otherwise (:attr:`CorrelatedRows.crossed`)
    the earlier rows are at their own levels and the differences and sums on the levels of
    all their rows (:func:`._crossprod.entry_cross_products`: self pairs).

    With a residual variance per stratum (nlme's ``varIdent`` next to the correlation) the
    residuals of a group have covariance ``sigma^2 S^{1/2} R_g S^{1/2}``, ``S`` the
    diagonal of the rows' variance ratios ``1 / v_s``: the whitened products are those of
    ``R_g^{-1/2} S^{-1/2}`` applied to the rows, and ``log|S| = -sum_s n_s log v_s`` joins
    ``log|R|``. The components are held per lag class (group size) and pair of strata.
    With ``e_s = sqrt(v_s)``, a lag from a row of stratum ``b`` to one of stratum ``a``
    whitens ``e_a x_t - c e_b x_{t-1}``; the same three components as above (``x_t``,
    ``x_{t-1}`` and ``D = x_t - x_{t-1}``) carry it, with ``k = c / (1 - c^2)`` and
    ``delta = e_b - e_a``, by weights ``e_a^2 / (1 + c) - k e_a delta``, ``-c e_b^2 / (1 +
    c) + k e_b delta`` and ``k e_a e_b`` (expand ``(e_a D - delta x_{t-1})(.)'``): within
    one stratum (``delta = 0``) the stable weights above times ``v_a``, and across two
    strata (varying within a group, as nlme allows) the large weights ``k`` cancel only
    to the size of ``delta``. Compound symmetry: the rows' products with ``v_a / (1 -
    rho)``, and ``s_g s_g'`` of the sums ``s_g = sum_a e_a s_{g,a}`` of each stratum's rows,
    written with ``s_{g,a} s_{g,a}'`` and, by polarisation, ``(s_{g,a} +- s_{g,b})(.)'``.

    Attributes
    ----------
    cp : CrossProducts
        One stratum per component (``n_obs`` puts the rows' count on the components
        holding each row once, so that ``cp.n`` is the number of rows).
    structure : CorrelationStructure
    rows : CorrelationRows
    lags : ndarray
        The distinct lags (Markov) or group sizes (compound symmetry).
    counts : ndarray
        Rows per lag class (Markov) or groups per size (compound symmetry).
    weighted : bool
        Whether the rows had prior weights (each row scaled by ``sqrt(w)``).
    kind, lag_of, pair : ndarray
        Per component: the kind of its weight (:func:`_kind_weights`), its lag class (-1:
        none) and its two strata ``(a, b)`` (``(0, 0)`` without strata; a lag's: the
        stratum of the later row, then of the earlier).
    strata_counts : ndarray
        Rows per stratum.
    """

    cp: object
    structure: CorrelationStructure
    rows: CorrelationRows
    lags: np.ndarray
    counts: np.ndarray
    weighted: bool = False
    kind: np.ndarray = None
    lag_of: np.ndarray = None
    pair: np.ndarray = None
    strata_counts: np.ndarray = None

    def rows_products(self):
        """The cross-products of the rows as given (prior-weighted, not whitened): the sum
        of the components that hold each row once (those with rows counted in ``n_obs``)."""
        return self.cp.combined((self.cp.n_obs > 0).astype(float), row_weights=False)

    @property
    def markov(self) -> bool:
        return isinstance(self.structure, _Markov)

    @property
    def n_strata(self) -> int:
        return int(self.strata_counts.size)

    def weights(self, u: float, eta: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The components' weights at internal parameter ``u`` and the strata's log ratios
        ``eta`` (reference first; None: no strata), their derivatives in ``u`` and in each
        ``eta_s`` (J, S)."""
        c, dc = self.structure.lag_correlation(float(u), self.lags, self.rows)
        c = np.broadcast_to(np.asarray(c, dtype=float), self.lags.shape)
        dc = np.broadcast_to(np.asarray(dc, dtype=float), self.lags.shape)
        J = self.kind.size
        at, has_lag, m, cross, groups = self._layout
        if self.markov:
            cj = np.where(has_lag, c[at], 0.0) if c.size else np.zeros(J)
            dcj = np.where(has_lag, dc[at], 0.0) if c.size else np.zeros(J)
        else:  # compound symmetry: one rho for every component
            cj, dcj = np.full(J, float(c[0])), np.full(J, float(dc[0]))
        f, dfdc = _kind_weights(self.kind, cj, m, groups)
        rows = np.arange(J)
        a, b = self.pair[:, 0], self.pair[:, 1]
        if self.n_strata == 1:  # (the joint search's every evaluation: no ratios to weigh)
            return f, dfdc * dcj, (-2.0 * f)[:, None]
        e = np.exp(-(np.zeros(self.n_strata) if eta is None else np.asarray(eta, dtype=float)))
        ea, eb = e[a], e[b]
        w, dw = f * ea * eb, dfdc * ea * eb
        jac = np.zeros((J, self.n_strata))
        np.add.at(jac, (rows, a), -w)
        np.add.at(jac, (rows, b), -w)
        if cross.any():
            # a lag across two strata (see the class docstring); the third component's
            # k e_a e_b is of the general form
            x, ca, cb = cj[cross], ea[cross], eb[cross]
            one = 1.0 - x * x
            k, dk = x / one, (1.0 + x * x) / one ** 2
            f1, df1 = f[cross], dfdc[cross]
            later = self.kind[cross] == 1
            w_now = ca * ca * f1 - k * ca * cb + k * ca * ca
            w_before = cb * cb * f1 + k * (cb * cb - ca * cb)
            d_now = ca * ca * df1 - dk * (ca * cb - ca * ca)
            d_before = cb * cb * df1 + dk * (cb * cb - ca * cb)
            ja_now = -2.0 * ca * ca * f1 + k * ca * cb - 2.0 * k * ca * ca
            jb_now = k * ca * cb
            ja_before = k * ca * cb
            jb_before = -2.0 * cb * cb * f1 + k * (ca * cb - 2.0 * cb * cb)
            idx = rows[cross]
            w[idx] = np.where(later, w_now, w_before)
            dw[idx] = np.where(later, d_now, d_before)
            jac[idx] = 0.0
            jac[idx, a[idx]] = np.where(later, ja_now, ja_before)
            jac[idx, b[idx]] = np.where(later, jb_now, jb_before)
        return w, dw * dcj, jac

    @functools.cached_property
    def _layout(self) -> tuple:
        """What :meth:`weights` reads of the components alone (not of ``u``): each one's
        lag class (0 for none), whether it has one, its group size (compound symmetry),
        whether it is a lag across two strata, and the components of each kind."""
        J = self.kind.size
        at = np.maximum(self.lag_of, 0)
        m = self.lags.astype(float)[at] if self.lags.size else np.ones(J)
        a, b = self.pair[:, 0], self.pair[:, 1]
        cross = (a != b) & np.isin(self.kind, (1, 2)) if self.markov else np.zeros(J, dtype=bool)
        return at, self.lag_of >= 0, m, cross, _kind_groups(self.kind)

    def median_lag(self) -> float:
        """The median of the lags between consecutive rows of a group (Markov structures),
        each lag as its class's."""
        order = np.argsort(self.lags)
        lags, cum = self.lags[order], np.cumsum(self.counts[order])
        n = int(cum[-1])
        at = np.searchsorted(cum, [(n - 1) // 2, n // 2], side="right")
        return float(0.5 * (lags[at[0]] + lags[at[1]]))

    def whitened(self, u: float):
        """The cross-products of the rows whitened at internal parameter ``u`` (the
        components combined) and ``log|R|`` there."""
        return self.cp.combined(self.weights(u)[0], row_weights=False), self.logdet(u)[0]

    def logdet(self, u: float) -> tuple[float, float]:
        """``log|R|`` at internal parameter ``u`` and its derivative in ``u``."""
        c, dc = self.structure.lag_correlation(float(u), self.lags, self.rows)
        if self.markov:
            return (float(self.counts @ np.log1p(-c * c)),
                    float(self.counts @ (-2.0 * c * dc / (1.0 - c * c))))
        m1 = self.lags.astype(float) - 1.0
        rho, drho = float(c[0]), float(dc[0])
        value = self.counts @ (m1 * np.log1p(-rho) + np.log1p(m1 * rho))
        deriv = self.counts @ (-m1 / (1.0 - rho) + m1 / (1.0 + m1 * rho))
        return float(value), float(deriv * drho)


# Lags equal to this relative precision are one class (times computed in floating point,
# e.g. 0.37 * visit, give gaps that differ in the last digits).
_LAG_RTOL = 1e-12
# Components (lag classes times pairs of strata) beyond which the joint fit is not used.
MAX_CLASSES = 64


def _lag_classes(gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct lags (each class's smallest) and each gap's class."""
    if not gaps.size:
        return np.empty(0), np.empty(0, dtype=int)
    order = np.argsort(gaps, kind="stable")
    s = gaps[order]
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] - s[:-1] > _LAG_RTOL * s[1:]
    cls = np.empty(s.size, dtype=int)
    cls[order] = np.cumsum(new) - 1
    return s[new], cls


def components(data: "CorrelatedRows") -> Components | None:
    """The :class:`Components` of the rows, or None where there are more than
    :data:`MAX_COMPONENTS` distinct lags or group sizes (the outer search then fits)."""
    from ._crossprod import _stack_strata, cross_products

    st, rows = data.structure, data.rows
    p = data.X.shape[1]
    D = data.scaled()
    s = data.strata_codes
    n_strata = data.n_strata
    parts, n_obs, kinds, lag_of, pairs = [], [], [], [], []

    def products(block: np.ndarray, at):
        """The cross-products of rows ``block`` at the levels of rows ``at``; with residual
        groups spanning levels (:attr:`CorrelatedRows.crossed`) ``at`` is the rows
        ``block`` combine, an index per row or ``(entry_row, entry_at, coef)``."""
        if data.crossed:
            if not isinstance(at, tuple):
                at = (np.arange(at.size), at, np.ones(at.size))
            return data.entry_products(block[:, :p + 1], np.ones(block.shape[0]), *at)
        factors, col = [], p + 1
        for codes, Z in data.factors:
            factors.append((codes[at], block[:, col:col + Z.shape[1]]))
            col += Z.shape[1]
        return cross_products(block[:, :p], block[:, p], factors, data.terms)

    def members(groups: np.ndarray, coef: np.ndarray):
        """The entries of the sums over ``groups`` (residual groups) of their rows times
        ``coef`` (per row; 0: not in the sum)."""
        size = rows.sizes[groups]
        entry_row = np.repeat(np.arange(groups.size), size)
        entry_at = (np.repeat(rows.starts[groups], size) + np.arange(size.sum())
                    - np.repeat(np.cumsum(size) - size, size))
        keep = coef[entry_at] != 0
        return entry_row[keep], entry_at[keep], coef[entry_at][keep]

    def add(block, at, kind, lag, a, b, count=0):
        parts.append(products(block, at))
        n_obs.append(count)
        kinds.append(kind)
        lag_of.append(lag)
        pairs.append((a, b))

    if isinstance(st, _Markov):
        inner = np.flatnonzero(rows.same)
        lags, cls = _lag_classes(rows.gaps[inner])
        if lags.size > MAX_COMPONENTS:
            return None
        counts = np.bincount(cls, minlength=lags.size)
        now_s, before_s = s[inner], s[inner - 1]
        # one integer per (lag class, stratum of the row, of its predecessor), ordered as
        # the triples are (a row-wise np.unique(axis=0) sorts ~10x slower)
        key = (cls.astype(np.int64) * n_strata + now_s) * n_strata + before_s
        keys = np.unique(key)
        if keys.size > MAX_CLASSES:
            return None
        first = np.flatnonzero(~rows.same)
        for a in range(n_strata):
            f = first[s[first] == a]
            if f.size:
                add(D[f], f, 0, -1, a, a, f.size)
        for k in keys:
            j, a, b = int(k // (n_strata * n_strata)), int(k // n_strata % n_strata), int(k % n_strata)
            t = inner[key == k]
            now, before = D[t], D[t - 1]
            add(now, t, 1, j, a, b, t.size)
            if data.crossed:  # the earlier rows at their own levels, the differences at both
                pair_row = np.repeat(np.arange(t.size), 2)
                pair_at = np.column_stack([t, t - 1]).ravel()
                add(before, t - 1, 2, j, a, b)
                add(now - before, (pair_row, pair_at, np.tile([1.0, -1.0], t.size)), 3, j, a, b)
            else:
                add(before, t, 2, j, a, b)
                add(now - before, t, 3, j, a, b)
    else:
        lags, size_class = np.unique(rows.sizes, return_inverse=True)
        if lags.size > MAX_COMPONENTS:
            return None
        counts = np.bincount(size_class, minlength=lags.size)
        for a in range(n_strata):
            r = np.flatnonzero(s == a)
            if r.size:
                add(D[r], r, 8, -1, a, a, r.size)
        group_of = np.repeat(np.arange(rows.starts.size), rows.sizes)
        # per group, the sums of its rows of each stratum
        # (rows in group order: one reduceat per stratum, not an unbuffered np.add.at)
        sums = np.empty((rows.starts.size, n_strata, D.shape[1]))
        for a in range(n_strata):
            sums[:, a] = np.add.reduceat(D if n_strata == 1 else D * (s == a)[:, None], rows.starts, axis=0)
        present = np.zeros((rows.starts.size, n_strata), dtype=bool)
        present[group_of, s] = True
        n_pairs = sum(1 for a in range(n_strata) for b in range(a + 1, n_strata)
                      if np.any(present[:, a] & present[:, b]))
        if lags.size * (n_strata + 2 * n_pairs) > MAX_CLASSES:
            return None
        for j in range(lags.size):
            in_size = size_class == j
            for a in range(n_strata):
                g = np.flatnonzero(in_size & present[:, a])
                if g.size:
                    at = (members(g, (s == a).astype(float)) if data.crossed else rows.starts[g])
                    add(sums[g, a], at, 9, j, a, a)
            for a in range(n_strata):
                for b in range(a + 1, n_strata):
                    g = np.flatnonzero(in_size & present[:, a] & present[:, b])
                    if g.size:
                        plus = minus = rows.starts[g]
                        if data.crossed:
                            in_a, in_b = (s == a).astype(float), (s == b).astype(float)
                            plus, minus = members(g, in_a + in_b), members(g, in_a - in_b)
                        add(sums[g, a] + sums[g, b], plus, 10, j, a, b)
                        add(sums[g, a] - sums[g, b], minus, 11, j, a, b)
    cp = _stack_strata(parts)
    cp = dataclasses.replace(
        cp, n_obs=np.array(n_obs),
        sum_log_weights=np.append(data.sum_log_weights, np.zeros(len(n_obs) - 1)),
        counts=tuple(np.bincount(c, minlength=t.n_levels) for (c, _), t in zip(data.factors, data.terms)))
    return Components(cp, st, rows, lags.astype(float) if isinstance(st, _Markov) else lags, counts,
                      weighted=data.weights is not None, kind=np.array(kinds),
                      lag_of=np.array(lag_of), pair=np.array(pairs, dtype=int).reshape(-1, 2),
                      strata_counts=np.bincount(s, minlength=n_strata))


class JointDeviance(Deviance):
    """The profiled deviance of a model with correlated residuals as a function of ``x =
    (theta, eta, u)``, ``eta`` the strata's log ratios (none without strata) and ``u`` the
    correlation's internal parameter: the cross-products at ``(eta, u)`` are the
    :class:`Components` combined with their weights ``f_j(u) sqrt(v_a v_b)``, the deviance
    is theirs plus ``log|R| + log|S|``. The derivative in ``u`` (``eta_s``) is that of each
    weight times the deviance's derivative in it (the formulas of the strata's weights,
    :mod:`._deviance`, linear in a stratum's cross-products whatever the weight's sign)
    plus that of ``log|R|`` (``log|S|``), so the one optimiser fits theta, the strata and
    the correlation together. With ``held`` the correlation is held at ``u = held`` and
    ``x = (theta, eta)``.
    """

    row_weights = False
    # the components' weights change with u, also where x holds no stratum ratio
    weights_vary = True
    # the other starts of small problems run by L-BFGS-B in (theta, eta, u), not in the
    # batched screen: each stops once it reaches the basin of a minimum found before (on
    # BodyWeight every one of the nine joins the first answer's, saving about a sixth of
    # their evaluations)
    joins_other_starts = True

    def __init__(self, comps: Components, reml: bool = True, plan=None, cp=None,
                 held: float | None = None) -> None:
        super().__init__(comps.cp if cp is None else cp, reml, plan=plan)
        self.components = comps
        self.held = None if held is None else float(held)
        self.n_ratios = comps.n_strata - 1
        self.n_eta = self.n_ratios + (held is None)
        # the components' weights and log|R| at the last (u, eta): an evaluation and its
        # gradient both need them
        self._at: tuple | None = None

    @property
    def strata_counts(self) -> np.ndarray:
        """Rows per residual stratum (the cross-products' strata are components)."""
        return self.components.strata_counts

    def residual_start(self) -> np.ndarray:
        comps = self.components
        st, rows = comps.structure, comps.rows
        eta = np.zeros(self.n_ratios)
        if self.held is not None:
            return eta
        lo, hi = st.bounds(rows)
        if isinstance(st, Exp) and comps.counts.sum():  # a range of the typical lag
            return np.append(eta, np.clip(np.log(comps.median_lag()), lo, hi))
        return np.append(eta, np.clip(0.0, lo, hi))

    def lower_bounds(self) -> np.ndarray:
        lo, _ = self.components.structure.bounds(self.components.rows)
        out = np.append(self.terms.lower_bounds(), np.full(self.n_ratios, -MAX_LOG_RATIO))
        return out if self.held is not None else np.append(out, lo)

    def upper_bounds(self) -> np.ndarray:
        _, hi = self.components.structure.bounds(self.components.rows)
        out = np.append(np.full(self.n_theta, np.inf), np.full(self.n_ratios, MAX_LOG_RATIO))
        return out if self.held is not None else np.append(out, hi)

    def _parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """``theta``, the strata's ``eta`` (reference first, 0) and ``u``."""
        x = np.asarray(x, dtype=float)
        eta = np.concatenate([[0.0], x[self.n_theta:self.n_theta + self.n_ratios]])
        u = self.held if self.held is not None else float(x[self.n_theta + self.n_ratios])
        return x[:self.n_theta], eta, u

    def _weights_at(self, u: float, eta: np.ndarray) -> tuple:
        """:meth:`Components.weights` and :meth:`Components.logdet` at ``(u, eta)``, kept for
        the last pair."""
        if self._at is None or self._at[0] != u or not np.array_equal(self._at[1], eta):
            comps = self.components
            weights = comps.weights(u, eta)
            for a in weights:  # shared by the evaluation and its gradient: not to be changed
                a.flags.writeable = False
            self._at = (u, eta.copy(), weights, comps.logdet(u))
        return self._at[2], self._at[3]

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``theta`` and the components' weights."""
        theta, eta, u = self._parts(x)
        return theta, self._weights_at(u, eta)[0][0]

    def log_jacobian(self, x: np.ndarray) -> float:
        """``log|R| + log|S|`` at ``x``."""
        _, eta, u = self._parts(x)
        return self._weights_at(u, eta)[1][0] + 2.0 * float(self.components.strata_counts @ eta)

    def _evaluate(self, x: np.ndarray):
        x = np.asarray(x, dtype=float)
        if self._last is not None and np.array_equal(self._last.x, x):
            return self._last
        pt = super()._evaluate(x)
        pt.deviance += self.log_jacobian(x)
        return pt

    def _weight_derivatives(self, pt, LV: list, R: list, gamma: np.ndarray) -> np.ndarray:
        """The deviance's derivative in each component's weight (as
        :meth:`._deviance.Deviance._weight_derivatives`), for all components at once.

        Each derivative is linear in its component's cross-products (``log|M|``, ``r2``
        and the REML term alike), so it is their inner product with one set of arrays
        formed once from the point (the adjoints of ``diag``, ``zxy``, the pair blocks and
        ``xyxy``): a few products over the components' axis instead of a dozen per
        component (a joint fit's gradient spent most of its time in that loop)."""
        if pt.A is not None:  # a shifted point: the engine's form, stratum by stratum
            return super()._weight_derivatives(pt, LV, R, gamma)
        diag, pairs = pt.cache["selected"] if "selected" in pt.cache else pt.factor.selected_inverse()
        cp, p, lams = self.cp, self.p, pt.lams
        c = self.dof / pt.r2
        b = [np.einsum("ab,bjm,j->am", lam, Vk, gamma) for lam, Vk in zip(lams, self._modes(pt))]
        reml = bool(self.reml and p)
        a_inv = self._a_inv(pt)
        LVx = [x[:, :p, :] for x in LV]
        adj = c * np.outer(gamma, gamma)
        if reml:
            adj[:p, :p] += a_inv
        out = np.einsum("sij,ij->s", cp.xyxy, adj)
        for k, (dk, lam, bk) in enumerate(zip(diag, lams, b)):
            # log|M|: Lambda' Sigma Lambda; r2: b b'; REML: LV_x A^{-1} LV_x'
            adj = np.einsum("abl,ca,db->cdl", dk, lam, lam) + c * (bk[:, None, :] * bk[None, :, :])
            if reml:
                adj += np.einsum("axl,xy,cyl->acl", LVx[k], a_inv, LVx[k])
            out += np.einsum("sacl,acl->s", cp.diag[k], adj)
            adj = (-2.0 * c) * (bk[:, None, :] * gamma[None, :, None])
            if reml:
                adj[:, :p] -= 2.0 * np.einsum("axl,xy->ayl", LVx[k], a_inv)
            out += np.einsum("sajl,ajl->s", cp.zxy[k], adj)
        for j, blk in enumerate(cp.pairs):
            k, l = blk.k, blk.l
            adj = 2.0 * np.einsum("eab,ca,db->ecd", pairs[j], lams[k], lams[l])
            adj += (2.0 * c) * (b[k][:, blk.level_k].T[:, :, None] * b[l][:, blk.level_l].T[:, None, :])
            if reml:
                adj += 2.0 * np.einsum("axe,xy,bye->eab", LVx[k][:, :, blk.level_k], a_inv,
                                       LVx[l][:, :, blk.level_l])
            out += np.einsum("seab,eab->s", blk.values, adj)
        return out

    def _ratio_gradient(self, pt, LV, R, gamma) -> np.ndarray:
        _, eta, u = self._parts(pt.x)
        d = self._weight_derivatives(pt, LV, R, gamma)
        comps = self.components
        (_, dw, jac), logdet = self._weights_at(u, eta)
        out = d @ jac + 2.0 * comps.strata_counts
        out[0] = 0.0
        if self.held is None:
            out = np.append(out, float(d @ dw) + logdet[1])
        return out

    def solution(self, x: np.ndarray):
        sol = super().solution(x)
        _, eta, _ = self._parts(sol.x)
        return dataclasses.replace(sol, ratios=np.exp(2.0 * eta))

    def in_basis(self, bases: list, xy_scale: np.ndarray) -> "JointDeviance":
        return JointDeviance(self.components, self.reml, plan=self.plan,
                             cp=self.cp.transformed(bases, xy_scale), held=self.held)

    def with_data(self, cp, reml: bool | None = None, replan: bool = False) -> "JointDeviance":
        return JointDeviance(self.components, self.reml if reml is None else reml,
                             plan=None if replan else self.plan, cp=cp, held=self.held)

    def held_at(self, u: float) -> "JointDeviance":
        """This deviance with the correlation held at ``u`` (``x = (theta, eta)``)."""
        return JointDeviance(self.components, self.reml, plan=self.plan, held=u)


# ---- the fit: the correlation parameter profiled by a bounded search -------------------------

# Starting grid of the search, in internal units (nlme's scale: |phi| up to 0.995 for ar1).
_GRID = np.linspace(-6.0, 6.0, 13)
# Tolerance of the bounded search on the internal parameter.
_XATOL = 1e-9


@dataclass(frozen=True)
class CorrelatedRows:
    """A fit's rows in residual-group order: ``[X y]`` (intercept column included), the
    random-effects designs, the prior weights (None: all 1) and the structure that whitens
    them.

    With weights ``w`` the residuals' covariance is ``sigma^2 W^{-1/2} R W^{-1/2}`` (a
    row's variance ``sigma^2 / w``, nlme's ``varFixed(~ 1/w)`` next to the correlation):
    the rows are scaled by ``sqrt(w)`` before whitening and ``sum log w`` enters the
    deviance as the prior weights' term."""

    structure: CorrelationStructure
    rows: CorrelationRows
    X: np.ndarray
    y: np.ndarray
    factors: tuple
    terms: object
    weights: np.ndarray | None = None
    strata: np.ndarray | None = None
    n_strata: int = 1

    @classmethod
    def of(cls, structure: CorrelationStructure, rows: CorrelationRows, X: np.ndarray,
           y: np.ndarray, factors, terms, weights: np.ndarray | None = None,
           strata: np.ndarray | None = None, n_strata: int = 1) -> "CorrelatedRows":
        o = rows.order
        return cls(structure, rows, np.ascontiguousarray(X[o]), np.asarray(y, dtype=float)[o],
                   tuple((np.asarray(c)[o], np.asarray(Z, dtype=float)[o]) for c, Z in factors), terms,
                   None if weights is None else np.asarray(weights, dtype=float)[o],
                   None if strata is None or n_strata < 2 else np.asarray(strata, dtype=np.intp)[o],
                   int(n_strata) if strata is not None and n_strata > 1 else 1)

    @functools.cached_property
    def joint_components(self) -> "Components | None":
        """The rows' :class:`Components` (None beyond the joint form's limits), formed once
        per rows: the fit, the profiles of theta and the deviance at each correlation
        parameter held (strata varying within groups) all use them."""
        return components(self)

    @functools.cached_property
    def crossed(self) -> bool:
        """Whether a residual group spans levels of a grouping factor. A whitened row is
        then a combination of rows of several levels of the factor, and ``Z_k'R^{-1}Z_k``
        has entries between its levels (self pairs: :func:`._crossprod.entry_cross_products`),
        which the factorisation holds in its dense block (:class:`._factor.Plan`)."""
        same = self.rows.same[1:]
        return any(bool(np.any(same & (np.asarray(c)[1:] != np.asarray(c)[:-1])))
                   for c, _ in self.factors)

    @functools.cached_property
    def _scaled_z(self) -> list:
        """The random-effects designs times ``sqrt(w)`` (:meth:`scaled`'s Z columns)."""
        root = None if self.weights is None else np.sqrt(self.weights)[:, None]
        return [Z if root is None else Z * root for _, Z in self.factors]

    def entry_products(self, xy: np.ndarray, weights: np.ndarray, entry_row: np.ndarray,
                       entry_at: np.ndarray, coef: np.ndarray):
        """:func:`._crossprod.entry_cross_products` of rows ``xy`` (weights ``weights``)
        whose random-effects parts are the sums of ``coef`` times the scaled designs of
        the data's rows ``entry_at``, at those rows' levels."""
        from ._crossprod import entry_cross_products

        factors = [(np.asarray(c)[entry_at], Z[entry_at] * coef[:, None])
                   for (c, _), Z in zip(self.factors, self._scaled_z)]
        return entry_cross_products(xy, weights, entry_row, factors, self.terms)

    def _crossed_products(self, value: float):
        """:meth:`cross_products` of residual groups spanning levels: ``Z'R^{-1}Z`` as the
        cross-products of rows on several levels. Markov structures: the Prais-Winsten rows
        (a row and its predecessor); compound symmetry: ``R_g^{-1} = a^2 I + (b_g^2 - a^2)
        11' / n_g`` (the module docstring's ``a``, ``b``), the rows with weight ``a^2`` and
        the groups' sums with weight ``(b_g^2 - a^2) / n_g``. One stratum per residual
        stratum (constant within a group: :meth:`whitens_exactly`)."""
        from ._crossprod import _stack_strata

        rows, st = self.rows, self.structure
        xy = np.column_stack([self.X, self.y])
        if self.weights is not None:
            xy = xy * np.sqrt(self.weights)[:, None]
        n = rows.n
        idx = np.arange(n)
        if isinstance(st, _Markov):
            c = st._lag_corr(rows, value)
            scale = 1.0 / np.sqrt(1.0 - c * c)
            later = np.flatnonzero(rows.same)
            order = np.argsort(np.concatenate([idx, later]), kind="stable")
            entry_row = np.concatenate([idx, later])[order]
            entry_at = np.concatenate([idx, later - 1])[order]
            coef = np.concatenate([scale, -c[later] * scale[later]])[order]
            xy_rows, weights = st.whiten(xy, rows, value), np.ones(n)
            row_stratum = self.strata_codes
        else:
            n_g = rows.sizes.astype(float)
            a2 = 1.0 / (1.0 - value)
            b2 = 1.0 / (1.0 + (n_g - 1.0) * value)
            groups = np.arange(rows.starts.size)
            member_row = np.repeat(groups, rows.sizes) + n
            entry_row = np.concatenate([idx, member_row])
            entry_at = np.concatenate([idx, idx])
            coef = np.ones(2 * n)
            xy_rows = np.concatenate([xy, np.add.reduceat(xy, rows.starts, axis=0)])
            weights = np.concatenate([np.full(n, a2), (b2 - a2) / n_g])
            row_stratum = np.concatenate([self.strata_codes, self.strata_codes[rows.starts]])
        parts = []
        for s in range(self.n_strata):
            keep = row_stratum == s
            new_row = np.cumsum(keep) - 1
            at = keep[entry_row]
            parts.append(self.entry_products(xy_rows[keep], weights[keep], new_row[entry_row[at]],
                                             entry_at[at], coef[at]))
        cp = _stack_strata(parts) if len(parts) > 1 else parts[0]
        logw = np.zeros(n) if self.weights is None else np.log(self.weights)
        return dataclasses.replace(
            cp, n_obs=np.bincount(self.strata_codes, minlength=self.n_strata),
            sum_log_weights=np.bincount(self.strata_codes, weights=logw,
                                        minlength=self.n_strata).astype(float),
            counts=tuple(np.bincount(c, minlength=t.n_levels)
                         for (c, _), t in zip(self.factors, self.terms)))

    @property
    def strata_codes(self) -> np.ndarray:
        """The stratum of each row (all 0 without strata)."""
        return np.zeros(self.rows.n, dtype=np.intp) if self.strata is None else self.strata

    @property
    def mixed_strata(self) -> bool:
        """Whether the strata vary within a residual group (then whitening by the
        correlation and weighting by the strata do not commute: the fit holds the
        cross-products as :class:`Components` of strata pairs)."""
        if self.strata is None:
            return False
        s = self.strata
        return bool(np.any(self.rows.same[1:] & (s[1:] != s[:-1])))

    @property
    def sum_log_weights(self) -> float:
        return 0.0 if self.weights is None else float(np.log(self.weights).sum())

    def scaled(self) -> np.ndarray:
        """``[X y Z]`` (n, p + 1 + sum q_k), rows times ``sqrt(w)``."""
        D = np.column_stack([self.X, self.y[:, None]] + [Z for _, Z in self.factors])
        return D if self.weights is None else D * np.sqrt(self.weights)[:, None]

    def whitens_exactly(self, value: float) -> bool:
        """Whether the rows whitened at ``value`` with the strata as row weights are the
        model (strata constant within each residual group, or independent residuals)."""
        return not self.mixed_strata or value == self.structure.boundary_value()

    def cross_products(self, value: float):
        """The cross-products of the data whitened at parameter ``value``, one stratum per
        residual stratum (exact where :meth:`whitens_exactly`: a group's rows share the
        stratum's variance, a scalar that commutes with the whitening)."""
        from ._crossprod import cross_products

        if self.crossed:
            return self._crossed_products(value)
        p = self.X.shape[1]
        W = self.structure.whiten(self.scaled(), self.rows, value)
        factors, at = [], p + 1
        for codes, Z in self.factors:
            factors.append((codes, W[:, at:at + Z.shape[1]]))
            at += Z.shape[1]
        cp = cross_products(W[:, :p], W[:, p], factors, self.terms, strata=self.strata,
                            n_strata=self.n_strata)
        logw = np.zeros(self.rows.n) if self.weights is None else np.log(self.weights)
        return dataclasses.replace(cp, sum_log_weights=np.bincount(
            self.strata_codes, weights=logw, minlength=self.n_strata).astype(float))


    def kr_refusal(self) -> str | None:
        """Why :meth:`kr_products` refuses these rows (dense algebra within residual groups
        beyond :data:`MAX_KR_COST`, or residual groups spanning levels of a grouping
        factor), or None."""
        if self.crossed:
            return ("Kenward-Roger's adjustment with correlated residuals works within residual "
                    "groups that lie in one level of every grouping factor; these span levels "
                    "of one (the products of the random effects' design with V^{-1} then leave "
                    "their rows' levels): use ddf='satterthwaite'")
        cost = float(np.sum(self.rows.sizes.astype(float) ** 3)) * (self.n_strata + 1)
        if cost <= MAX_KR_COST:
            return None
        return (f"Kenward-Roger's adjustment with correlated residuals works with dense "
                f"matrices per residual group: (strata + 1) * sum of n_g^3 = {cost:.3g} is above "
                f"the limit {MAX_KR_COST:.3g} (largest group {self.rows.n_max} rows); use "
                "ddf='satterthwaite'")

    def kr_products(self, value: float, sigma2) -> "KRProducts":
        """What Kenward-Roger's adjustment needs of the rows at parameter ``value`` (nlme's
        scale) and the strata's residual variances ``sigma2``: :class:`KRProducts`.

        The residual covariance of a group is ``V_g = d d' * R_g`` (elementwise), ``d_r =
        sqrt(sigma2_{s(r)} / w_r)``; its variance parameters are the strata's ``sigma2_s``
        then ``value``. With ``n_s = u_s 1' + 1 u_s'`` (``u_s`` the rows of stratum ``s``),
        ``V_g`` is ``prod_s sigma2_s^(n_s / 2)`` times a constant entry by entry, so

            dV/dsigma2_s = n_s / (2 sigma2_s) * V,   dV/dvalue = d d' * R',
            d2V/dsigma2_s dsigma2_t = n_s (n_t - 2 delta_st) / (4 sigma2_s sigma2_t) * V,
            d2V/dsigma2_s dvalue = n_s / (2 sigma2_s) * d d' * R',   d2V/dvalue2 = d d' * R''

        (strata constant within a group: ``n_s`` is 2 or 0 on the whole block, ``V`` is
        linear in each ``sigma2_s``). Dense within each residual group, vectorised over the
        groups of each size (a batch of at most :data:`_KR_BATCH` entries per array); the
        cost is ``O((n_strata + 1) sum_g n_g^3)``, refused above :data:`MAX_KR_COST`
        (:meth:`kr_refusal`)."""
        reason = self.kr_refusal()
        if reason is not None:
            raise ValueError(reason)
        rows, st = self.rows, self.structure
        sigma2 = np.asarray(sigma2, dtype=float).reshape(-1)
        S = self.n_strata
        if sigma2.size != S:
            raise ValueError(f"sigma2 needs one residual variance per stratum ({S})")
        Y = self.scaled()
        n, k = Y.shape
        stratum = self.strata_codes
        # the rows' residual standard deviations (the prior weights are in Y already)
        sd = np.sqrt(sigma2)[stratum]
        # times within each group (ar1: positions; cs: any distinct times)
        cum = np.cumsum(np.where(rows.same, rows.gaps, 0.0))
        t = cum - np.repeat(cum[rows.starts], rows.sizes)
        n_par = S + 1
        pairs = [(a, b) for a in range(n_par) for b in range(a, n_par)]
        inverse = np.empty((n, k))
        first = np.empty((n_par, n, k))
        inverse_first = np.empty((n_par, n, k))
        second = np.empty((len(pairs), n, k))
        traces = np.zeros((n_par, n_par))
        for m in np.unique(rows.sizes):
            starts = rows.starts[rows.sizes == m]
            n_batches = int(np.ceil(starts.size * m * max(m, k) * n_par / _KR_BATCH))
            for batch in np.array_split(starts, max(n_batches, 1)):
                idx = batch[:, None] + np.arange(m)  # (G, m) rows of each group
                tt = t[idx]
                c, dc, d2c = st.correlation_derivatives(value, np.abs(tt[:, :, None] - tt[:, None, :]))
                dd = sd[idx][:, :, None] * sd[idx][:, None, :]
                V = dd * c
                u = (stratum[idx][None, :, :] == np.arange(S)[:, None, None]).astype(float)
                half = 0.5 * (u[:, :, :, None] + u[:, :, None, :])  # n_s / 2, (S, G, m, m)
                G = [half[s] * V / sigma2[s] for s in range(S)] + [dd * dc]
                VY = np.linalg.solve(V, Y[idx])
                inverse[idx] = VY
                ViG = [np.linalg.solve(V, g) for g in G]
                for a in range(n_par):
                    first[a][idx] = G[a] @ VY
                    inverse_first[a][idx] = ViG[a] @ VY
                for j, (a, b) in enumerate(pairs):
                    traces[a, b] += np.einsum("gij,gji->", ViG[a], ViG[b])
                    if b < S:  # two variances
                        H = half[a] * (half[b] - (a == b)) * V / (sigma2[a] * sigma2[b])
                    elif a < S:  # a variance and the correlation
                        H = half[a] * G[S] / sigma2[a]
                    else:
                        H = dd * d2c
                    second[j][idx] = H @ VY
        traces = np.triu(traces) + np.triu(traces, 1).T
        return KRProducts(Y, inverse, first, inverse_first, second, pairs, traces)


# Entries of one batch of per-group arrays in :meth:`CorrelatedRows.kr_products`.
_KR_BATCH = 1 << 20
#: Largest ``(n_strata + 1) sum_g n_g^3`` (residual groups of ``n_g`` rows) for which
#: Kenward-Roger's adjustment is computed with correlated residuals (dense algebra within
#: each group): one stratum, measured 0.04 s for 1,000 groups of 10 rows, 4.6 s for 4
#: groups of 1,000 (8e9) and 11.6 s for one of 2,500 (3.1e10; 2 shared cores at load 4.5).
MAX_KR_COST = 2e10


@dataclass(frozen=True)
class KRProducts:
    """Rows of a correlated model for Kenward-Roger's adjustment, in residual-group order.

    With ``Y`` the rows ``[X y Z]`` (times ``sqrt(w)``), ``V`` the block-diagonal residual
    covariance and ``G_a``, ``H_ab`` its first and second derivatives in the variance
    parameters (the strata's residual variances, then the correlation's parameter), the
    bilinear forms Kenward-Roger needs are ``A'B`` of the row arrays below (each row keeps
    its levels where a residual group lies within one level of every grouping factor: other
    groups are refused, :meth:`CorrelatedRows.kr_refusal`).

    Attributes
    ----------
    rows : ndarray (n, k)
        ``Y``.
    inverse : ndarray (n, k)
        ``V^{-1}Y``: ``rows' inverse = Y'V^{-1}Y``.
    first : ndarray (n_par, n, k)
        ``G_a V^{-1}Y``: ``inverse' first[a] = Y'V^{-1}G_aV^{-1}Y``.
    inverse_first : ndarray (n_par, n, k)
        ``V^{-1}G_aV^{-1}Y``: ``inverse_first[a]' first[b] = Y'V^{-1}G_aV^{-1}G_bV^{-1}Y``.
    second : ndarray (len(pairs), n, k)
        ``H_ab V^{-1}Y`` for each pair: ``inverse' second[j] = Y'V^{-1}H_abV^{-1}Y``.
    pairs : list of (a, b)
        The pairs ``a <= b`` of :attr:`second`.
    traces : ndarray (n_par, n_par)
        ``tr(V^{-1}G_aV^{-1}G_b)``.
    """

    rows: np.ndarray
    inverse: np.ndarray
    first: np.ndarray
    inverse_first: np.ndarray
    second: np.ndarray
    pairs: list
    traces: np.ndarray


class WhitenedDeviance:
    """The deviance of a correlated model at a fixed correlation parameter: the deviance of
    the whitened data (``x = (theta, eta)``) plus ``log|R|``. Everything else (the
    solution's covariances, modes, bounds) is the whitened model's."""

    def __init__(self, inner, logdet: float) -> None:
        self._inner = inner
        self.logdet = float(logdet)

    def __getattr__(self, name):
        # private and dunder names are this object's own (pickle looks up __setstate__
        # before _inner exists)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def n_params(self) -> int:
        return self._inner.n_params

    @property
    def inner(self):
        """The deviance of the whitened data (its plan serves other responses)."""
        return self._inner

    def __call__(self, x: np.ndarray) -> float:
        return float(self._inner(x)) + self.logdet

    def value_and_grad(self, x: np.ndarray):
        value, grad = self._inner.value_and_grad(x)
        return float(value) + self.logdet, grad

    def solution(self, x: np.ndarray):
        import dataclasses

        sol = self._inner.solution(x)
        return dataclasses.replace(sol, deviance=float(sol.deviance) + self.logdet)

    def with_data(self, cp, reml=None, replan=False):
        raise NotImplementedError(
            "refits of a model with correlated residuals (other columns, another criterion) "
            "must re-estimate the correlation: fit the model again with the estimator")


def _deviance_at(data: "CorrelatedRows | Components", reml: bool, solver: str, max_iter: int,
                 tol: float, value: float):
    """``(deviance, dev, sol, info)`` at parameter ``value``, theta (and the strata's
    ratios) re-optimised; ``data`` the rows (whitened at ``value``) or their
    :class:`Components` (combined there: a fit from chunks)."""
    from ._model import fit_model, minimise

    st, rows = data.structure, data.rows
    if not isinstance(data, CorrelatedRows):  # Components, or rows read in chunks
        edge = st.boundary_value()
        u = -np.inf if edge is not None and value == edge else st.internal(value, rows)
        with np.errstate(all="ignore"):
            cp, logdet = data.whitened(u)
    elif not data.whitens_exactly(value):
        held = _held_deviance(data, reml, st.internal(value, rows))
        with np.errstate(all="ignore"):
            sol, info = minimise(held, None, max_iter=max_iter, tol=tol, search=True)
        dev = WhitenedDeviance(held, 0.0)
        sol = dev.solution(sol.x)
        return float(sol.deviance), dev, sol, info
    else:
        cp, logdet = data.cross_products(value), st.logdet(rows, value)
    with np.errstate(all="ignore"):
        dev, sol, info = fit_model(cp, reml, solver=solver, max_iter=max_iter, tol=tol)
    dev = WhitenedDeviance(dev, logdet)
    sol = dev.solution(sol.x)
    return float(sol.deviance), dev, sol, info


def _held_deviance(data: CorrelatedRows, reml: bool, u: float) -> JointDeviance:
    """The deviance in ``(theta, eta)`` of rows whose strata vary within a residual group,
    the correlation held at internal parameter ``u`` (its :class:`Components`)."""
    comps = data.joint_components
    if comps is None:
        raise NotImplementedError(_MIXED_TOO_MANY)
    return JointDeviance(comps, reml, held=u)


_MIXED_TOO_MANY = (
    f"residual_groups that vary within a residual group of the correlation are fitted with "
    f"at most {MAX_COMPONENTS} distinct time lags (group sizes for 'cs') and {MAX_CLASSES} "
    "combinations of lag and strata; these rows have more. Use residual strata constant "
    "within each residual group, or times on fewer distinct gaps")


@dataclass(frozen=True)
class FittedCorrelation:
    """The correlation of a fit: structure, estimate, and what its profile needs.

    Attributes
    ----------
    data : CorrelatedRows or None
        The rows (residual-group order) and the structure; None for a fit from chunks,
        which keeps :attr:`components` instead.
    value : float
        The estimate on nlme's scale (``Phi``, ``range``, ``Rho``).
    internal : float
        Its internal (unconstrained) parameter.
    group_name : str
        nlme's ``form`` of the structure (``~ visit | Mare``: the times and the groups).
    bounds : tuple
        Bounds of the internal parameter.
    reml : bool
    deviance : float
        The deviance at the estimate.
    solver : str
    max_iter : int
    tol : float
    components : Components or None
        Of a fit from chunks (no rows): the whitened cross-products' components, from which
        the profile, the solution at other parameters and the refits (ML, REML) are
        computed.
    """

    data: CorrelatedRows | None
    value: float
    internal: float
    group_name: str
    bounds: tuple
    reml: bool
    deviance: float
    solver: str = "auto"
    max_iter: int = 1000
    tol: float = 1e-8
    components: Components | None = None

    @property
    def source(self) -> "CorrelatedRows | Components":
        """The rows, or the components of a fit from chunks."""
        return self.data if self.data is not None else self.components

    @property
    def structure(self) -> CorrelationStructure:
        return self.source.structure

    @property
    def rows(self) -> "CorrelationRows | RowsSummary":
        return self.source.rows

    def rows_statistics(self) -> tuple[np.ndarray, float]:
        """``[X y]'W[X y]`` of the rows as given (prior weights ``W``, not whitened) and
        ``sum log w``: what tells two fits' data apart (:func:`~.inference.lrt.check_same_data`)."""
        if self.data is None:
            cp = self.components.rows_products()
            return cp.xyxy[0], float(cp.sum_log_weights[0])
        D = self.data.scaled()[:, :self.data.X.shape[1] + 1]
        return D.T @ D, self.data.sum_log_weights

    @property
    def name(self) -> str:
        return self.structure.param_name

    @property
    def degenerate(self) -> bool:
        """Whether the estimate makes ``R`` (nearly) singular: e.g. compound symmetry at
        rho -> -1/(n_max - 1), where a group's mean residual fitted exactly by random
        effects makes the likelihood unbounded, or phi -> 1."""
        return self.structure.near_singular(self.value, self.rows)

    def deviance_at(self, u: float, reml: bool | None = None) -> float:
        """The deviance profiled over theta (and beta, sigma) at internal parameter ``u``."""
        reml = self.reml if reml is None else reml
        value = self.structure.value(float(u), self.rows)
        return _deviance_at(self.source, reml, self.solver, self.max_iter, self.tol, value)[0]

    def profile_interval(self, alpha: float = 0.05) -> tuple[float, float]:
        """The profile-likelihood interval of the parameter (nlme's scale): where the deviance,
        theta re-optimised, exceeds its minimum by the chi-square(1) quantile. A side whose
        profile stays below it up to a bound of the parameter ends at that bound."""
        from scipy import optimize, stats

        q = float(stats.chi2.ppf(1.0 - alpha, 1))
        st, rows = self.structure, self.rows
        lo, hi = self.bounds

        def excess(u: float) -> float:
            return self.deviance_at(u) - self.deviance - q

        def side(direction: int) -> float:
            start = self.internal if np.isfinite(self.internal) else lo
            if direction < 0 and not np.isfinite(self.internal):
                return self.value  # at the bound of independence already
            inner, step = start, 0.25
            while True:
                outer = float(np.clip(inner + direction * step, lo, hi))
                if excess(outer) > 0:
                    a, b = sorted((inner, outer))
                    u = optimize.brentq(excess, a, b, xtol=1e-10)
                    return st.value(u, rows)
                if outer in (lo, hi):
                    edge = st.boundary_value()
                    return edge if (direction < 0 and edge is not None) else st.value(outer, rows)
                inner, step = outer, 2.0 * step

        return side(-1), side(+1)

    def solution_at(self, x: np.ndarray, u: float, prototype):
        """The solution (deviance with ``log|R|``) at ``x = (theta, eta)`` and internal
        correlation parameter ``u``, no optimisation; ``prototype`` a deviance of the
        whitened data whose plan serves."""
        if self.data is None:  # a fit from chunks: the components combined at u
            with np.errstate(all="ignore"):
                cp, logdet = self.components.whitened(float(u))
            dev = WhitenedDeviance(prototype.with_data(cp, self.reml), logdet)
        elif isinstance(prototype, JointDeviance):  # strata varying within groups
            dev = WhitenedDeviance(prototype.held_at(float(u)), 0.0)
        else:
            value = self.structure.value(float(u), self.data.rows)
            inner = prototype.with_data(self.data.cross_products(value), self.reml)
            dev = WhitenedDeviance(inner, self.structure.logdet(self.data.rows, value))
        with np.errstate(all="ignore"):
            return dev.solution(np.asarray(x, dtype=float))

    def joint_deviance(self, x: np.ndarray):
        """The :class:`JointDeviance` of the rows (``x = (theta, eta, u)``) and its solution at
        ``x = (theta, eta)`` of the fit and the estimate ``u`` (its bound where the estimate
        is independence): the deviance that profiles of theta and sigma minimise."""
        # the rows' components; a fit from chunks holds them (or, outer search, none)
        comps = self.data.joint_components if self.data is not None else getattr(
            self.components, "joint_components", self.components)
        if comps is None:
            raise NotImplementedError(
                f"profiles of the variance parameters of a model with correlated residuals "
                f"hold the correlation in the optimiser, which takes rows with at most "
                f"{MAX_COMPONENTS} distinct time gaps (or group sizes); these have more. "
                f"The correlation's own profile works: which=[{self.name!r}]")
        dev = JointDeviance(comps, self.reml)
        lo, hi = self.bounds
        u = float(np.clip(self.internal, lo, hi)) if np.isfinite(self.internal) else lo
        with np.errstate(all="ignore"):
            return dev, dev.solution(np.append(np.asarray(x, dtype=float), u))

    def refit(self, reml: bool | None = None, max_iter: int | None = None, tol: float | None = None,
              random: tuple | None = None):
        """The model fitted again to the same rows (``reml`` default as fitted; ``random``:
        other random effects ``(factors, terms)``, the factors in the rows' own order):
        :func:`fit_correlated`'s ``(deviance, solution, info, FittedCorrelation)``."""
        data = self.data
        max_iter = self.max_iter if max_iter is None else max_iter
        tol = self.tol if tol is None else tol
        reml = self.reml if reml is None else bool(reml)
        if data is None:
            if random is not None:
                raise NotImplementedError(
                    "refits with other random effects need the fit's rows; a fit from chunks "
                    "or Dask keeps only their cross-products: fit the data in memory")
            return fit_components(self.components, reml, self.group_name, self.solver, max_iter,
                                  tol)
        if random is not None:
            factors, terms = random
            o = data.rows.order
            data = dataclasses.replace(data, terms=terms, factors=tuple(
                (np.asarray(c)[o], np.asarray(Z, dtype=float)[o]) for c, Z in factors))
        return fit_correlated(data, reml, self.group_name, self.solver, max_iter, tol)

    def describe(self) -> str:
        """nlme's spelling of the structure and the estimate: ``corAR1(form = ~ visit | Mare),
        Phi = 0.607``."""
        return f"{self.structure.nlme_class}(form = {self.group_name}), {self.name} = {self.value:.6g}"


def _deviance_from(data: CorrelatedRows, reml: bool, prototype, x0: np.ndarray, max_iter: int,
                   tol: float, value: float):
    """As :func:`_deviance_at`, theta re-optimised by a local search from ``x0`` on the plan
    of ``prototype`` (a deviance of the same terms): the refits' inner fit."""
    from ._model import minimise

    st, rows = data.structure, data.rows
    if not data.whitens_exactly(value):
        inner = _held_deviance(data, reml, st.internal(value, rows))
        logdet = 0.0
    else:
        inner = prototype.with_data(data.cross_products(value), reml)
        logdet = st.logdet(rows, value)
    with np.errstate(all="ignore"):
        sol, info = minimise(inner, x0, max_iter=max_iter, tol=tol, search=True, multistart=False)
    dev = WhitenedDeviance(inner, logdet)
    sol = dev.solution(sol.x)
    return float(sol.deviance), dev, sol, info


# Half-width (internal units) of the bracket a refit searches around its start; an optimum
# on its edge sends the refit to the full search.
_START_HALF_WIDTH = 3.0


def fit_correlated(data: CorrelatedRows, reml: bool, group_name: str, solver: str = "auto",
                   max_iter: int = 1000, tol: float = 1e-8, start: tuple | None = None):
    """Deviance, solution, optimiser report and :class:`FittedCorrelation` of a correlated
    model: jointly in ``(theta, u)`` where the rows have few components (:func:`_fit_joint`),
    otherwise the deviance profiled over the correlation parameter (theta re-optimised at
    each value), minimised over a grid of starts then by a bounded Brent search around the
    best (the profile in the correlation may have several local optima; the grid catches
    the far ones).

    ``start`` (a refit to a response simulated from known parameters): ``(u0, x0, dev0)``,
    the internal correlation parameter and ``(theta, eta)`` the response was drawn from and
    a deviance whose plan serves the inner fits. The search then runs in a bracket around
    ``u0`` and the inner fits locally from ``x0`` (as the refits of independent residuals:
    ``._refit.REFIT_MULTISTART``); an optimum on the bracket's edge runs the full search.
    """
    from scipy import optimize

    joint = _fit_joint(data, reml, group_name, solver, max_iter, tol, start)
    if joint is not None:
        return joint
    st, rows = data.structure, data.rows
    lo, hi = st.bounds(rows)
    if start is not None:
        u0, x0, prototype = start
        if np.isfinite(u0):
            a = max(lo, float(u0) - _START_HALF_WIDTH)
            b = min(hi, float(u0) + _START_HALF_WIDTH)
            local: dict = {}

            def near(u: float):
                u = float(u)
                if u not in local:
                    local[u] = _deviance_from(data, reml, prototype, x0, max_iter, tol,
                                              st.value(u, rows))
                return local[u]

            res = optimize.minimize_scalar(lambda u: near(u)[0], bounds=(a, b), method="bounded",
                                           options={"xatol": _XATOL, "maxiter": 200})
            u_hat = float(res.x)
            inside = (u_hat - a > 1e-3 or a == lo) and (b - u_hat > 1e-3 or b == hi)
            if inside and np.isfinite(res.fun):
                _, dev, sol, info = near(u_hat)
                on_edge = _edge_fit(data, reml, solver, max_iter, tol, st, u_hat, a, sol)
                if on_edge is not None:
                    (_, dev, sol, info), u_hat = on_edge, -np.inf
                value = st.boundary_value() if not np.isfinite(u_hat) else st.value(u_hat, rows)
                fitted = FittedCorrelation(data, value, u_hat, group_name, (lo, hi), reml,
                                           float(sol.deviance), solver, max_iter, tol)
                return dev, sol, info, fitted
    cache: dict = {}

    def at(u: float):
        u = float(u)
        if u not in cache:
            cache[u] = _deviance_at(data, reml, solver, max_iter, tol, st.value(u, rows))
        return cache[u]

    grid = _GRID if (lo, hi) == (-_MAX_INTERNAL, _MAX_INTERNAL) else np.unique(np.concatenate(
        [_GRID[(_GRID > lo) & (_GRID < hi)], np.linspace(lo, hi, 15)[1:-1]]))
    values = np.array([at(u)[0] for u in grid])
    values[~np.isfinite(values)] = np.inf
    best = int(np.argmin(values))
    left = grid[best - 1] if best > 0 else lo
    right = grid[best + 1] if best < grid.size - 1 else hi
    res = optimize.minimize_scalar(lambda u: at(u)[0], bounds=(left, right), method="bounded",
                                   options={"xatol": _XATOL, "maxiter": 200})
    u_hat = float(res.x) if at(res.x)[0] <= values[best] else float(grid[best])
    value = st.value(u_hat, rows)
    _, dev, sol, info = at(u_hat)
    edge = st.boundary_value()
    if edge is not None and u_hat <= grid[0]:
        # the optimum runs to the bound of independent residuals: take the bound itself
        on_edge = _deviance_at(data, reml, solver, max_iter, tol, edge)
        if on_edge[0] <= sol.deviance:
            _, dev, sol, info = on_edge
            u_hat, value = -np.inf, edge
    fitted = FittedCorrelation(data, value, u_hat, group_name, (lo, hi), reml, float(sol.deviance),
                               solver, max_iter, tol)
    return dev, sol, info, fitted


def _edge_fit(data, reml, solver, max_iter, tol, st, u_hat, a, sol):
    """The fit at the bound of independent residuals where a bracket reaching down to the
    lowest bound ends there and the bound is better (None otherwise). ``data``: the rows
    (:class:`CorrelatedRows`) or their :class:`Components`."""
    edge = st.boundary_value()
    if edge is None or u_hat - a > 1e-3:
        return None
    on_edge = _deviance_at(data, reml, solver, max_iter, tol, edge)
    return on_edge if on_edge[0] <= sol.deviance else None


# Distance (internal units) from its bounds of the joint search's outermost grid points,
# and the gain in deviance that makes one of them the start.
_NEAR_BOUND = 0.5
_BOUND_GAIN = 1e-4


def _search_grid(lo: float, hi: float) -> np.ndarray:
    """The starting grid of the correlation's internal parameter within its bounds: the
    outer search's and points next to the bounds (where a degenerate ``R`` can make the
    likelihood run off beyond a flat stretch, which the joint search would not cross)."""
    inner = (_GRID if (lo, hi) == (-_MAX_INTERNAL, _MAX_INTERNAL) else np.concatenate(
        [_GRID[(_GRID > lo) & (_GRID < hi)], np.linspace(lo, hi, 15)[1:-1]]))
    return np.unique(inner), np.array([lo + _NEAR_BOUND, hi - _NEAR_BOUND])


# Relative tolerance of the grid points' local searches (the fit's own is tighter).
_GRID_TOL = 1e-5


def _vertex(grid: np.ndarray, found: dict, i: int) -> float:
    """The joint search's start in ``u`` from grid point ``i``: the vertex of the parabola
    through its profiled deviance and its two neighbours' (``found[j][1]``), within them,
    where both were fitted and it is a minimum of the three; ``grid[i]`` otherwise."""
    if i - 1 not in found or i + 1 not in found:
        return float(grid[i])
    (a, fa), (b, fb), (c, fc) = ((grid[j], found[j][1]) for j in (i - 1, i, i + 1))
    if not (fb <= fa and fb <= fc):
        return float(b)
    den = (b - a) * (fb - fc) - (b - c) * (fb - fa)
    if not den != 0.0:
        return float(b)
    step = 0.5 * ((b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)) / den
    return float(np.clip(b - step, a, c))


def _fit_joint(data: CorrelatedRows, reml: bool, group_name: str, solver: str, max_iter: int,
               tol: float, start: tuple | None):
    """:func:`fit_components` of the rows' :class:`Components`; None where the rows have
    too many components (or the iterative solver is asked for): the outer search fits."""
    if solver == "iterative":
        return None
    comps = data.joint_components
    if comps is None:
        return None
    return fit_components(comps, reml, group_name, solver, max_iter, tol, start, data)


def fit_components(comps: Components, reml: bool, group_name: str, solver: str = "auto",
                   max_iter: int = 1000, tol: float = 1e-8, start: tuple | None = None,
                   data: CorrelatedRows | None = None):
    """:func:`fit_correlated`'s result by one optimiser over ``x = (theta, u)``
    (:class:`JointDeviance`), started from the best point of a grid of ``u`` (the deviance
    may have local minima in it: a random intercept against a strong correlation), where
    theta is found by a local search on the components combined at each ``u`` (no pass
    over the rows). With ``start`` (a refit to a simulated response) one search from it.

    ``data``: the rows the components are of, where they are in memory; the solution is
    then formed from the rows whitened at the estimate. Without them (a fit from chunks,
    :mod:`._chunked`, whose components were added up) everything comes from the
    components, and :class:`FittedCorrelation` keeps them instead of the rows.
    """
    if not isinstance(comps, Components):  # rows read in chunks: the outer search over them
        return comps.fit(reml, group_name, solver, max_iter, tol)
    from ._model import minimise
    from ._optimize import ITERATION_LIMIT, local_minimum
    from ._threads import single_threaded_blas

    st, rows = comps.structure, comps.rows
    lo, hi = st.bounds(rows)
    dev = JointDeviance(comps, reml)
    n_in = dev.n_theta + dev.n_ratios  # (theta, eta): the parameters at a held u

    def held(u: float):
        """The deviance in ``(theta, eta)`` at ``u`` and what to add to it (``log|R|``
        where the deviance is of the combined components alone: Newton steps in theta)."""
        if dev.n_ratios:
            return dev.held_at(u), 0.0
        at = Deviance(comps.cp.combined(comps.weights(u)[0], row_weights=False), reml,
                      plan=dev.plan)
        return at, comps.logdet(u)[0]

    with single_threaded_blas(), np.errstate(all="ignore"):
        if start is not None and np.isfinite(start[0]):
            u0, x0, _ = start
            x0 = np.append(np.asarray(x0, dtype=float)[:n_in], np.clip(u0, lo, hi))
        else:
            best, x0 = np.inf, None
            inner, outer = _search_grid(lo, hi)

            def grid_point(u: float, x_start, near_bound: bool):
                """``(x, deviance, held deviance, x whitened)`` at ``u`` (None: failed);
                ``x_start`` in the whitened basis."""
                at, extra = held(u)
                # inside, a local search from a neighbour's theta; next to the bounds one
                # from the default start, and no random effects (a degenerate R is reached
                # with other random effects: another basin)
                try:
                    if near_bound:
                        # (what the full fit's search adds, its zero end; the point
                        # chooses the start only, which is fitted in full below)
                        x_at, value, x_white = local_minimum(at, None, max_iter=max_iter,
                                                             tol=max(tol, _GRID_TOL))
                        zero = x_at.copy()
                        zero[:dev.n_theta] = 0.0
                        zero_value = float(at(zero))
                        if zero_value < value:
                            x_at, value, x_white = zero, zero_value, zero
                    else:
                        # a grid point only chooses the start, which is fitted in full
                        # below: one local search, without the fit's settling and check,
                        # to a deviance within about 1e-7 of its size (the grid's points
                        # differ by far more; the vertex between them moves by little)
                        # (from the last point's whitened optimum: the whitened basis
                        # follows the weights of the rows as u moves, lme4's does not)
                        x_at, value, x_white = local_minimum(at, None, max_iter=max_iter,
                                                             tol=max(tol, _GRID_TOL),
                                                             whitened=x_start)
                except (ValueError, FloatingPointError, np.linalg.LinAlgError):
                    return None
                value += extra
                return (x_at, value, at, x_white) if np.isfinite(value) else None

            def inside(x_at, at) -> bool:
                # a variance that ended on its bound (the deviance is even there: a
                # gradient method would stay) is no start for the next point
                return not np.any(x_at[:dev.n_theta] <= at.lower_bounds()[:dev.n_theta])

            # every other grid point first (each from the previous one's theta), then the
            # two next to the best of them (from its theta): the grid only chooses the
            # joint search's start, and the profile in u varies on the grid's scale
            coarse = np.zeros(inner.size, dtype=bool)
            coarse[::2] = True
            coarse[-1] = True
            found: dict = {}
            previous = None
            for i in np.flatnonzero(coarse):
                got = grid_point(inner[i], previous, False)
                if got is not None:
                    found[i] = got
                    previous = got[3] if inside(got[0], got[2]) else previous
            if found:
                top = min(found, key=lambda i: found[i][1])
                near = found[top][3] if inside(found[top][0], found[top][2]) else None
                for i in (top - 1, top + 1):
                    if 0 <= i < inner.size and i not in found:
                        got = grid_point(inner[i], near, False)
                        if got is not None:
                            found[i] = got
            for i in sorted(found):
                x_at, value, at, _ = found[i]
                if value < best:
                    best, x0, best_dev = value, np.append(x_at, _vertex(inner, found, i)), at
            for u in outer:
                got = grid_point(u, None, True)
                # next to a bound only a clear gain counts (a ridge of equal heights, as
                # compound symmetry next to a random intercept, keeps its interior point)
                if got is not None and got[1] < best - _BOUND_GAIN:
                    best, x0, best_dev = got[1], np.append(got[0], u), got[2]
        # the small-problem other starts: with scalar random effects (or none) and no
        # strata in theta at the joint estimate of u (_other_basins); otherwise, or
        # without a start from the grid (every grid point failed), by the joint search
        # itself, in (theta, eta, u). With strata: on Orthodont with a variance per age the
        # joint starts reach the basin where the variance at age 10 runs to 0 at Phi 0.67,
        # and those in (theta, eta) at the first estimate of Phi, near 0, do not. With a
        # random slope: on a simulated AR(1) design (phi 0.95, seed 104 of the tests'
        # designs, REML) the joint starts from u = 0 reach a singular covariance at Phi
        # 0.95, 0.028 lower in deviance, which no start in theta at the first estimate
        # (Phi 0.74) leads to.
        in_theta = (start is None and x0 is not None and not dev.n_ratios
                    and all(t.q == 1 for t in dev.terms))
        if x0 is not None and start is None and not in_theta:
            # theta's other starts (small problems) at the best grid point, where the
            # deviance in theta alone takes Newton steps; then the joint search from it.
            # (Where _other_basins runs them at the joint estimate, it also follows a
            # lower basin found there: the same starts at the grid point would be a
            # second batch of them.)
            sol, _ = minimise(best_dev, x0[:-1], max_iter=max_iter, tol=tol, search=True)
            x0 = np.append(sol.x, x0[-1])
        sol, info = minimise(dev, x0, max_iter=max_iter, tol=tol, search=True,
                             multistart=start is None and not in_theta)
        if in_theta:
            sol, info = _other_basins(dev, held, sol, info, max_iter, tol)
        if not info.converged and not info.message.startswith(ITERATION_LIMIT):
            # a Hessian singular in a direction that moves u: a ridge of equal optima
            # (compound symmetry next to a random intercept) or a likelihood running off
            # to a singular R (warned as degenerate). Convergence is then judged in theta
            # at the estimate of u, as the outer search judges it.
            u = float(sol.x[-1])
            at, extra = held(u)
            fixed, held_info = minimise(at, sol.x[:-1], max_iter=max_iter, tol=tol, search=False)
            if held_info.converged and fixed.deviance + extra <= sol.deviance + 1e-9:
                sol, info = dev.solution(np.append(fixed.x, u)), held_info
    theta, u_hat = sol.x[:-1], float(sol.x[-1])
    value = st.value(u_hat, rows)
    # the solution from the rows whitened at the estimate (as the outer search's); with
    # strata varying within groups the components' at the estimate; from chunks the
    # components combined there (with strata: weighed by their ratios too, as held_at does)
    if data is None and not dev.n_ratios:
        wdev = WhitenedDeviance(*_whitened_deviance(comps, u_hat, reml))
    elif data is None:
        wdev = WhitenedDeviance(dev.held_at(u_hat), 0.0)
    elif data.whitens_exactly(value):
        wdev = WhitenedDeviance(Deviance(data.cross_products(value), reml), st.logdet(rows, value))
    else:
        wdev = WhitenedDeviance(dev.held_at(u_hat), 0.0)
    with np.errstate(all="ignore"):
        wsol = wdev.solution(theta)
    source = data if data is not None else comps
    on_edge = _edge_fit(source, reml, solver, max_iter, tol, st, u_hat, lo, wsol)
    if on_edge is not None:
        (_, wdev, wsol, info), u_hat, value = on_edge, -np.inf, st.boundary_value()
    fitted = FittedCorrelation(data, value, u_hat, group_name, (lo, hi), reml, float(wsol.deviance),
                               solver, max_iter, tol, None if data is not None else comps)
    return wdev, wsol, info, fitted


# At most this many times the joint search follows a lower minimum in theta found at its
# estimate of u, and the gain in deviance that counts as lower (beyond the polish's digits).
_MAX_BASINS = 3
_BASIN_GAIN = 1e-8


def _other_basins(dev: "JointDeviance", held, sol, info, max_iter: int, tol: float):
    """The joint search's answer ``(sol, info)`` moved to a lower basin where the other
    starts find one (rows without strata, scalar random effects or none).

    The other starts of small problems (:func:`._optimize.fit`) run in theta at the joint
    estimate of ``u`` (``held(u)``: the deviance in theta there and what to add to it),
    where the deviance in theta alone runs them batched with Newton steps, instead of in
    ``(theta, u)`` (nine searches by L-BFGS-B, about half of a small fit). A minimum in
    theta lower than the joint answer's lies in another basin of ``(theta, u)`` (e.g. a
    singular random-effects covariance next to a non-singular one, each at its own
    correlation), which the joint search then follows from there; its answer is checked
    the same way."""
    from ._model import minimise

    for _ in range(_MAX_BASINS):
        u = float(sol.x[-1])
        at, extra = held(u)
        try:
            other, _ = minimise(at, sol.x[:-1], max_iter=max_iter, tol=tol, search=True)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            break
        if not float(other.deviance) + extra < float(sol.deviance) - _BASIN_GAIN:
            break
        moved, moved_info = minimise(dev, np.append(other.x, u), max_iter=max_iter, tol=tol,
                                     search=True, multistart=False)
        if not moved.deviance < sol.deviance:
            break
        sol, info = moved, moved_info
    return sol, info


def _whitened_deviance(comps: Components, u: float, reml: bool) -> tuple:
    """The deviance of the components combined at ``u`` (the whitened rows') and ``log|R|``."""
    with np.errstate(all="ignore"):  # u = -inf: the bound of independent residuals
        cp, logdet = comps.whitened(u)
    return Deviance(cp, reml), logdet
