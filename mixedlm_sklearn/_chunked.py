"""Cross-products of data that does not sit in memory as one array: chunks and Dask.

Each chunk (a DataFrame from ``pd.read_csv(..., chunksize=...)``, a Parquet batch, ...)
or Dask partition is reduced to the cross-products of its own levels
(:func:`~mixedlm_sklearn._crossprod.cross_products`), and those add up by label
(:class:`Accumulator`), for any number of grouping factors and
residual strata. Peak memory is one chunk plus what is proportional to the levels and
level pairs.

With an intercept the columns are measured from an origin
(:class:`~mixedlm_sklearn._crossprod.Origin`) taken from the first chunk (or partition)
that has rows: its means are close enough to the data's to keep the digits that a
response far from 0 would otherwise lose, in one pass. (Shifting the summed
cross-products afterwards would be exact algebra on numbers that already lost them.)

Correlated residuals (:mod:`._correlation`): the joint fit needs the whitened
cross-products as components (per lag class, or per group size), sums over residual
groups. With every residual group inside one chunk, each chunk's components
(:func:`chunk_components`, the in-memory function applied to the chunk's rows) add up by
level label and lag class (:class:`CorrelatedAccumulator`) to those of all rows. Rows
with more lag classes than components are fitted by the in-memory fit's outer search, each
value of the correlation parameter one pass over re-iterable chunks (:func:`reiterable`)
or the Dask partitions, every chunk's rows whitened there (:class:`ChunkedRows`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._correlation import (
    _MIXED_TOO_MANY,
    MAX_COMPONENTS,
    Components,
    CorrelatedRows,
    CorrelationStructure,
    RowsSummary,
    _lag_classes,
    _LAG_RTOL,
    components,
    fit_correlated,
)
from ._crossprod import CrossProducts, Origin, _coalesce, _same_origin, cross_products, origin_of
from ._design import INTERCEPT, residual_rows, term_is_diagonal
from ._terms import Term, Terms
from ._validation import as_design, canonical_labels, check_weights, encode_groups, take_rows

__all__ = ["check_dask_inputs", "is_dask_collection", "cross_products_from_chunks", "cross_products_from_dask",
           "partition_cross_products", "Accumulator", "ChunkCorrelation", "chunk_components",
           "chunk_whitened", "CorrelatedAccumulator", "ChunkedRows", "reiterable"]


def is_dask_collection(obj: Any) -> bool:
    """True for Dask collections (checked without importing dask)."""
    return type(obj).__module__.startswith("dask") and hasattr(obj, "to_delayed")


def check_dask_inputs(**inputs: Any) -> None:
    """Refuse Dask input that the partition-wise cross-products cannot take, naming it.

    ``X``, ``y`` and ``groups`` are required; each must be a Dask DataFrame or Series,
    not a ``dask.array`` (whose blocks carry no column names and may split columns).
    """
    for name in ("X", "y", "groups"):
        if inputs.get(name) is None:
            raise ValueError(f"with Dask input, {name} is required: a Dask fit needs X, y and "
                             "groups, each a Dask DataFrame or Series")
    arrays = [name for name, value in inputs.items()
              if value is not None and type(value).__module__.startswith("dask.array")]
    if arrays:
        raise TypeError(
            f"{arrays} {'is a dask.array' if len(arrays) == 1 else 'are dask.arrays'}: Dask "
            "input must be Dask DataFrames/Series (columns of one DataFrame), e.g. "
            "dask.dataframe.from_dask_array(x, columns=[...]); or compute() the arrays first"
        )


def partition_cross_products(
    x: Any, y: Any, groups: pd.DataFrame, z: dict, weights: Any = None, strata: Any = None,
    intercept: bool = True, cov_type: str | dict = "unstructured", where: str = "data",
    origin: Origin | None | str = "own", correlation: ChunkCorrelation | None = None,
    whiten_at: float | str | None = None,
) -> tuple[dict, np.ndarray | None, CrossProducts, tuple | None]:
    """Cross-products of one chunk with its own level coding.

    Parameters
    ----------
    x, y : the chunk's fixed-effects columns and response
    groups : DataFrame
        One column per term (the term's name).
    z : dict
        Term name -> the term's design (absent: a random intercept).
    weights, strata : optional columns
    intercept : bool
        Add the fixed intercept.
    cov_type : str or dict
        Covariance structure of the terms.
    where : str
        Names the chunk in error messages.
    origin : Origin, None or "own"
        Where the columns are measured from (with ``intercept``; None: from 0); by
        default this chunk's own (:func:`~mixedlm_sklearn._crossprod.origin_of`), which
        the caller passes on to the other chunks (``cp.origin``).
    correlation : ChunkCorrelation, optional
        Correlated residuals: the structure and the chunk's residual groups and times.
    whiten_at : float or "rows", optional
        With ``correlation``, a pass of the outer search (:class:`ChunkedRows`): instead of
        the components, the chunk's rows whitened at this parameter value (nlme's scale)
        give the cross-products (``"rows"``: the rows as given, not whitened), and
        ``correlated`` is ``log|R|`` of the chunk's residual groups there (0 for "rows").

    Returns
    -------
    labels : dict
        Term name -> the chunk's level labels (its codes 0..m-1).
    strata_labels : ndarray or None
    cp : CrossProducts
    correlated : tuple or None
        With ``correlation``: the chunk's residual-group labels, the
        :class:`~._correlation.Components` of its rows and the largest lag per lag class
        (:func:`chunk_components`).
        (None instead of the tuple when every row has weight 0.)
    """
    try:
        y_arr = as_design(y, len(y), "y")[:, 0]
        n = y_arr.shape[0]
        x_arr = as_design(x, n, "X") if np.shape(x)[1] else np.empty((n, 0))
        w_arr = None if weights is None else check_weights(weights, n)
        if correlation is not None and w_arr is not None and not w_arr.all():
            # as in memory: a row of infinite variance would break its group's series
            raise ValueError("with correlation=, sample_weight must be positive in every row; "
                             "remove rows of weight 0 (with their times) before fitting")
        if w_arr is not None and not w_arr.all():
            # rows of weight 0 carry no information: removed before anything else, so a
            # level whose rows all have weight 0 is not a level of the fit
            keep = w_arr > 0
            x_arr, y_arr, w_arr = x_arr[keep], y_arr[keep], w_arr[keep]
            groups = groups.iloc[keep]
            z = {k: take_rows(v, keep, f"Z[{k!r}]") for k, v in z.items()}
            strata = take_rows(strata, keep, "residual_groups")
            n = y_arr.shape[0]
            if n == 0:
                return None
        factors, terms, labels = [], [], {}
        for name in groups.columns:
            codes, levels = encode_groups(groups[name], n, name=f"groups[{name!r}]")
            if name in z:
                z_arr = as_design(z[name], n, f"Z[{name!r}]")
                z_names = tuple(str(c) for c in z[name].columns)
            else:
                z_arr, z_names = np.ones((n, 1)), (INTERCEPT,)
            factors.append((codes, z_arr))
            terms.append(Term(str(name), z_names, levels.size, term_is_diagonal(cov_type, str(name))))
            labels[str(name)] = levels
        strata_codes, strata_labels, n_strata = None, None, 1
        if strata is not None:
            strata_codes, strata_labels = encode_groups(strata, n, name="residual_groups")
            n_strata = strata_labels.size
        correlated = None
        if correlation is not None and whiten_at is not None:
            x_full = np.column_stack([np.ones(n), x_arr]) if intercept else x_arr
            cp, logdet = chunk_whitened(correlation, x_full, y_arr, factors, Terms(terms), w_arr,
                                        [str(c) for c in groups.columns], strata_codes,
                                        n_strata, whiten_at)
            return labels, strata_labels, cp, logdet
        if correlation is not None:
            x_full = np.column_stack([np.ones(n), x_arr]) if intercept else x_arr
            correlated = chunk_components(correlation, x_full, y_arr, factors, Terms(terms),
                                          w_arr, [str(c) for c in groups.columns],
                                          strata_codes, n_strata)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where}: {err}") from None
    if isinstance(origin, str):
        origin = origin_of(x_arr, y_arr) if intercept else None
    cp = cross_products(x_arr, y_arr, factors, Terms(terms), w_arr, strata_codes, n_strata,
                        intercept=intercept, origin=origin if intercept else None)
    return labels, strata_labels, cp, correlated


@dataclasses.dataclass(frozen=True)
class ChunkCorrelation:
    """Correlated residuals in one chunk: the structure, the chunk's residual groups (None:
    the grouping factor's levels) and times (None: positions 1, 2, ... in row order within a
    group), and the residual groups' name (messages, nlme's form)."""

    structure: CorrelationStructure
    groups: Any
    times: Any
    group_name: str


def chunk_components(correlation: ChunkCorrelation, x_full: np.ndarray, y: np.ndarray,
                     factors: list, terms: Terms, weights: np.ndarray | None,
                     factor_names: list, strata: np.ndarray | None = None,
                     n_strata: int = 1
                     ) -> tuple[np.ndarray | None, Components | None, np.ndarray | tuple]:
    """The residual-group labels of a chunk (None: those of its one grouping factor), the
    :class:`~._correlation.Components` of its
    rows, computed as an in-memory fit computes those of all rows
    (:func:`~._correlation.components`), and the largest lag of each lag class (group size
    for compound symmetry). With every residual group inside one chunk, the components of
    the chunks add up to those of the data (:class:`CorrelatedAccumulator`). The components
    hold the rows' :class:`~._correlation.RowsSummary` instead of the rows (a partition's
    result travels to the client). ``strata``: the rows' codes of the chunk's residual
    strata (``residual_groups``), whose pairs the components are held per.

    Rows with more than :data:`~._correlation.MAX_COMPONENTS` lags (group sizes) have no
    components: then ``(labels, None, (their RowsSummary, whether they have prior
    weights))``, and the fit runs the outer search over the chunks (:class:`ChunkedRows`)."""
    st = correlation.structure
    rows, labels = residual_rows(st, correlation.groups, correlation.times, factors, factor_names,
                                 y.shape[0], correlation.group_name)
    data = CorrelatedRows.of(st, rows, x_full, y, factors, terms, weights, strata, n_strata)
    comps = components(data)
    if comps is None:
        # more lags than components: the outer search (ChunkedRows), which whitens the rows
        # as a scalar stratum's variance commutes with it; strata varying within a group
        # need the components, as in memory
        if data.mixed_strata:
            raise NotImplementedError(_MIXED_TOO_MANY)
        return labels, None, (rows.summary(), weights is not None)
    if comps.markov:
        inner = rows.gaps[rows.same]
        _, cls = _lag_classes(inner)
        lag_max = np.zeros(comps.lags.size)
        np.maximum.at(lag_max, cls, inner)
    else:
        lag_max = comps.lags.astype(float)
    return labels, dataclasses.replace(comps, rows=rows.summary()), lag_max


def chunk_whitened(correlation: ChunkCorrelation, x_full: np.ndarray, y: np.ndarray,
                   factors: list, terms: Terms, weights: np.ndarray | None, factor_names: list,
                   strata: np.ndarray | None, n_strata: int, value: float | str
                   ) -> tuple[CrossProducts, float]:
    """A chunk's cross-products whitened at parameter ``value`` (nlme's scale; ``"rows"``:
    the rows as given) and ``log|R|`` of its residual groups there, as an in-memory fit's
    outer search forms those of all rows
    (:meth:`~._correlation.CorrelatedRows.cross_products`): whitening stays within a
    residual group, so with every group inside one chunk the chunks' sums add up to the
    data's. The columns are not measured from an origin (a whitened intercept is not
    constant), as in memory."""
    st = correlation.structure
    if isinstance(value, str):  # the rows as given: no whitening, prior weights
        return cross_products(x_full, y, factors, terms, weights, strata, n_strata), 0.0
    rows, _ = residual_rows(st, correlation.groups, correlation.times, factors, factor_names,
                            y.shape[0], correlation.group_name)
    data = CorrelatedRows.of(st, rows, x_full, y, factors, terms, weights, strata, n_strata)
    with np.errstate(all="ignore"):
        return data.cross_products(value), float(st.logdet(rows, value))


class CorrelatedAccumulator:
    """Adds up the correlation :class:`~._correlation.Components` of chunks whose residual
    groups are disjoint (:func:`chunk_components`), by level label as :class:`Accumulator`
    does, and by lag class (group size): the components of the chunks' lag classes that
    are one class of the data (lags equal to the in-memory fit's relative precision,
    :data:`~._correlation._LAG_RTOL`) are summed. A residual group seen in two chunks is
    refused, naming it (its rows' lags and whitening would span the chunks).
    """

    def __init__(self, structure: CorrelationStructure, group_name: str,
                 plain: Accumulator) -> None:
        self.structure = structure
        self.group_name = group_name
        self.plain = plain  # the chunks' cross-products as given: the coding of the levels
        self._acc = Accumulator(levels_of=plain)
        self._groups: pd.Index | None = None
        self._group_part: list[np.ndarray] = []
        self._classes: list[list[float]] = []  # [smallest, largest] lag of each class
        self._parent: list[int] = []  # classes joined by a later chunk's lags
        self._counts: list[int] = []
        self._summary: RowsSummary | None = None
        self._weighted = False
        # the components' keys: (kind, lag class or -1, the two strata's codes in _strata);
        # a key's position in this list is its label for the cross-products' accumulator
        self._keys: list[tuple[int, int, int, int]] = []
        self._key_slot: dict[tuple[int, int, int, int], int] = {}
        self._strata: pd.Index | None = None
        self._strata_counts: list[int] = []
        self.outer = False  # a chunk had more lags than components: the outer search fits

    def n_classes(self) -> int | None:
        """The distinct lag classes (group sizes) seen (None: a chunk had too many to hold)."""
        if self.outer:
            return None
        return len({self._root(k) for k in range(len(self._classes))})

    def _root(self, k: int) -> int:
        while self._parent[k] != k:
            k = self._parent[k]
        return k

    def _slot(self, lo: float, hi: float) -> int:
        """The class of a chunk's lag class ``[lo, hi]``: an existing one within the
        relative precision (joining those it bridges), or a new one."""
        rtol = _LAG_RTOL if self.structure.name != "cs" else 0.0
        hits = []
        for k, (a, b) in enumerate(self._classes):
            if self._parent[k] == k and max(lo, a) - min(hi, b) <= rtol * max(lo, a):
                hits.append(k)
        if not hits:
            self._classes.append([lo, hi])
            self._parent.append(len(self._parent))
            self._counts.append(0)
            return len(self._classes) - 1
        root = hits[0]
        for k in hits[1:]:
            self._parent[k] = root
            self._counts[root] += self._counts[k]
            self._counts[k] = 0
        cls = self._classes[root]
        cls[0] = min([lo] + [self._classes[k][0] for k in hits])
        cls[1] = max([hi] + [self._classes[k][1] for k in hits])
        return root

    def add(self, number: int, where: str, labels: dict, part: CrossProducts,
            strata_labels: np.ndarray | None, group_labels: np.ndarray | None, comps: Components,
            lag_max: np.ndarray) -> None:
        """Add chunk ``number`` (``where`` names it): its grouping factors' labels, its
        cross-products as given and stratum labels (added to :attr:`plain`), and its
        residual groups' labels (None: the one grouping factor's), components and largest
        lags per class (:func:`chunk_components`)."""
        if group_labels is None:  # the residual groups are the grouping factor's levels
            factor = part.terms[0].factor
            known = self.plain.n_levels(factor)
            level_codes = self.plain.add(labels, part, strata_labels)
            groups, codes = self.plain.factor_labels(factor), level_codes[0]
        else:
            level_codes = self.plain.add(labels, part, strata_labels)
            known = 0 if self._groups is None else len(self._groups)
            self._groups, codes = _merge_labels(self._groups, group_labels, "correlation_groups")
            groups = self._groups
        again = np.flatnonzero(codes < known)
        if again.size:
            label = groups[codes[again[0]]]
            label = label.item() if isinstance(label, np.generic) else label
            first = int(np.concatenate(self._group_part)[codes[again[0]]])
            column = self.group_name.split("|")[-1].strip()
            raise ValueError(
                f"{where}: the residual group {label!r} of {column} also has rows in "
                f"{'chunk' if where.startswith('chunk') else 'partition'} {first}: a fit from "
                "chunks or partitions needs every residual group's rows in one of them (sort "
                "the data by the group, e.g. write the file in group order, or "
                "set_index/shuffle the Dask DataFrame on it)")
        self._group_part.append(np.full(len(groups) - known, number, dtype=np.int64))
        if comps is None:  # no components (lag_max: the rows' summary, weighted): outer search
            self.outer = True
            summary, weighted = lag_max
            self._summary = summary if self._summary is None else self._summary.merged(summary)
            self._weighted = self._weighted or weighted
            return
        classes = []
        for j in range(comps.lags.size):
            k = self._slot(float(comps.lags[j]), float(lag_max[j]))
            self._counts[k] += int(comps.counts[j])
            classes.append(k)
        # the chunk's strata (one, unnamed, without residual_groups) in the data's
        if strata_labels is None:
            strata_labels = np.array(["(all)"], dtype=object)
        self._strata, stratum = _merge_labels(self._strata, strata_labels, "residual_groups")
        self._strata_counts += [0] * (len(self._strata) - len(self._strata_counts))
        for a, count in enumerate(comps.strata_counts):
            self._strata_counts[stratum[a]] += int(count)
        slots = []
        for kind, lag, (a, b) in zip(comps.kind, comps.lag_of, comps.pair):
            key = (int(kind), -1 if lag < 0 else classes[lag], int(stratum[a]), int(stratum[b]))
            if key not in self._key_slot:
                self._key_slot[key] = len(self._keys)
                self._keys.append(key)
            slots.append(self._key_slot[key])
        rows = comps.rows
        self._weighted = self._weighted or comps.weighted
        self._summary = rows if self._summary is None else self._summary.merged(rows)
        self._acc.add(labels, comps.cp, np.array(slots, dtype=np.int64), codes=level_codes)

    def result(self) -> tuple[dict, "Components | RowsSummary"]:
        """The grouping factors' sorted labels and the data's :class:`Components`, the lag
        classes in increasing order (as :func:`~._correlation.components` orders them);
        where the data have more than :data:`~._correlation.MAX_COMPONENTS` lag classes
        (group sizes), their :class:`~._correlation.RowsSummary` instead: the fit then runs
        the outer search over the chunks (:class:`ChunkedRows`)."""
        roots = sorted({self._root(k) for k in range(len(self._classes))},
                       key=lambda k: self._classes[k][0])
        if self.outer or len(roots) > MAX_COMPONENTS:
            if any(a != b for _, _, a, b in self._keys):
                # a lag between rows of two strata: strata vary within a residual group,
                # which the outer search's whitening cannot take (as in memory)
                raise NotImplementedError(_MIXED_TOO_MANY)
            return self.plain.result()[0], self._summary
        labels, slots, cp = self._acc.result()
        rank = {k: r for r, k in enumerate(roots)}
        # the strata in the order the plain accumulator gives them (sorted where they sort)
        _, order = _sorted_labels(self._strata)
        # each accumulated key's place among the data's components: lag classes joined by
        # later chunks fall on one component
        final: dict[tuple[int, int, int, int], int] = {}
        target = np.zeros(len(slots), dtype=np.int64)
        for s, slot in enumerate(slots):
            kind, k, a, b = self._keys[int(slot)]
            key = (kind, -1 if k < 0 else rank[self._root(k)], int(order[a]), int(order[b]))
            target[s] = final.setdefault(key, len(final))
        cp = _sum_strata(cp, target, len(final))
        keys = np.array(list(final), dtype=np.int64).reshape(-1, 4)
        lags = np.array([self._classes[k][0] for k in roots])
        counts = np.array([self._counts[k] for k in roots], dtype=np.int64)
        if self.structure.name == "cs":
            lags = lags.astype(np.int64)
        strata_counts = np.empty(len(order), dtype=np.int64)
        strata_counts[order] = self._strata_counts
        return labels, Components(cp, self.structure, self._summary, lags, counts, self._weighted,
                                  keys[:, 0], keys[:, 1], keys[:, 2:], strata_counts)


_ONE_SHOT_OUTER = (
    "{what} (more than {limit}): the fit then runs the outer search (the deviance profiled "
    "over the correlation parameter), one pass over the chunks per value of it, but chunks "
    "is a one-shot iterator (e.g. a generator or pd.read_csv(..., chunksize=...)). Pass a "
    "list of DataFrames or a zero-argument callable that returns a fresh iterator, e.g. "
    "lambda: pd.read_csv(path, chunksize=100_000); or round the times to a coarser grid")


def reiterable(chunks: Any) -> "Callable[[], Iterable] | None":
    """A zero-argument callable giving the chunks of one pass afresh at each call, or None
    where ``chunks`` cannot be read twice (a one-shot iterator: a generator,
    ``pd.read_csv(..., chunksize=...)``) or is no iterable. ``chunks``: a sequence of
    DataFrames or a zero-argument callable returning a fresh iterable of them at each call
    (:class:`ChunkedRows`' passes, :class:`._glmm_chunks.ChunkSource`)."""
    if isinstance(chunks, (pd.DataFrame, str)):
        return None
    if callable(chunks):
        def again() -> Iterable:
            it = chunks()
            if isinstance(it, pd.DataFrame):
                raise TypeError("the chunks callable returned one DataFrame: it must return an "
                                "iterable of DataFrames (e.g. a list, or pd.read_csv(..., "
                                "chunksize=...))")
            return iter(it)

        return again
    if isinstance(chunks, Iterable) and not isinstance(chunks, Iterator):
        return lambda: iter(chunks)
    return None


_CHANGED = ("the chunks changed between passes (other rows or levels than the first pass "
            "read): the fit reads them once per value of the correlation parameter, so each "
            "call of the chunks callable must give the same rows")


class ChunkedRows:
    """The rows of a correlated fit read in chunks (or Dask partitions), for the outer search
    (:func:`~._correlation.fit_correlated`) where they have more lags (group sizes) than the
    joint fit's components: each value of the correlation parameter is one pass, every
    chunk's rows whitened there (:func:`chunk_whitened`) and their cross-products added up
    by label (:class:`Accumulator`), then the ordinary fit of those. Stands where the
    search reads :class:`~._correlation.Components` (:meth:`whitened`, :meth:`rows_products`,
    :attr:`structure`, :attr:`rows`); a fit keeps it as its components.

    Parameters
    ----------
    each : callable
        ``each(value)``: the results of one pass at parameter ``value`` (nlme's scale;
        ``"rows"``: not whitened), one per chunk, each ``(labels, strata_labels, cp,
        log|R|)`` of :func:`partition_cross_products` with ``whiten_at`` (None: no rows).
    structure : CorrelationStructure
    rows : RowsSummary
        Of all rows (the parameter's bounds and scale).
    weighted : bool
        Whether the rows have prior weights.
    labels : dict
        Factor -> the labels of all the data's levels (sorted, as the first pass gave
        them): each pass codes a chunk's levels in them (no merging of labels per pass).
    kept : ndarray of int, optional
        The fixed-effects columns the fit keeps (lme4's rank rule).
    """

    joint_components = None  # the outer search is the fit (no components)

    def __init__(self, each: "Callable[[float | str], Iterable]", structure: CorrelationStructure,
                 rows: RowsSummary, weighted: bool, labels: dict,
                 kept: np.ndarray | None = None) -> None:
        self._each = each
        self.labels = labels
        # the coding of every pass's accumulator: the data's levels, known
        self._coding = Accumulator()
        self._coding._factor_labels = {k: pd.Index(v, dtype=object) for k, v in labels.items()}
        self.structure = structure
        self.rows = rows
        self.weighted = bool(weighted)
        self.kept = kept
        self._rows_products: CrossProducts | None = None

    def select_fixed(self, kept: np.ndarray) -> "ChunkedRows":
        """The same rows with the fixed-effects columns ``kept`` only."""
        return ChunkedRows(self._each, self.structure, self.rows, self.weighted, self.labels,
                           np.asarray(kept))

    def _codes(self, factor: str, labels: np.ndarray) -> np.ndarray:
        """A chunk's level labels coded in the data's (canonical form where the data's
        labels mix integers and their text, as the first pass merged them)."""
        index = self._coding._factor_labels[factor]
        codes = index.get_indexer(pd.Index(labels, dtype=object))
        if (codes < 0).any():
            _, labels = canonical_labels([np.asarray(index, dtype=object),
                                          np.asarray(labels, dtype=object)], f"groups[{factor!r}]")
            codes = index.get_indexer(pd.Index(labels, dtype=object))
        if (codes < 0).any():
            raise ValueError(_CHANGED)
        return codes

    def _pass(self, value: float | str) -> tuple[CrossProducts, float]:
        acc, logdet = Accumulator(levels_of=self._coding), 0.0
        for result in self._each(value):
            if result is None:
                continue
            labels, strata_labels, cp, part_logdet = result
            codes = [self._codes(t.factor, labels[t.factor]) for t in cp.terms]
            acc.add(labels, cp, strata_labels, codes=codes)
            logdet += part_logdet
        cp = acc.result()[2]
        if cp.n != self.rows.n:
            raise ValueError(_CHANGED)
        return (cp if self.kept is None else cp.select_fixed(self.kept)), logdet

    def whitened(self, u: float) -> tuple[CrossProducts, float]:
        """The cross-products of the rows whitened at internal parameter ``u`` (``-inf``:
        the bound of independent residuals) and ``log|R|`` there: one pass."""
        st, edge = self.structure, self.structure.boundary_value()
        value = edge if edge is not None and not np.isfinite(u) else st.value(float(u), self.rows)
        return self._pass(value)

    def rows_products(self) -> CrossProducts:
        """The cross-products of the rows as given (prior-weighted, not whitened), one
        stratum: one pass, made once."""
        if self._rows_products is None:
            self._rows_products = self._pass("rows")[0].combined()
        return self._rows_products

    def fit(self, reml: bool, group_name: str, solver: str = "auto", max_iter: int = 1000,
            tol: float = 1e-8):
        """:func:`~._correlation.fit_correlated`'s outer search over the chunks: ``(dev,
        solution, info, FittedCorrelation)``, the fitted correlation holding this object as
        its components (a fit without rows)."""
        dev, sol, info, fitted = fit_correlated(self, reml, group_name, solver, max_iter, tol)
        return dev, sol, info, dataclasses.replace(fitted, data=None, components=self)


def _sum_strata(cp: CrossProducts, target: np.ndarray, n: int) -> CrossProducts:
    """The cross-products with stratum ``s`` added into stratum ``target[s]`` of ``n``."""

    def summed(a: np.ndarray) -> np.ndarray:
        out = np.zeros((n,) + a.shape[1:], dtype=a.dtype)
        for s, t in enumerate(target):
            out[t] += a[s]
        return out

    return dataclasses.replace(
        cp, diag=tuple(summed(d) for d in cp.diag), zxy=tuple(summed(z) for z in cp.zxy),
        pairs=tuple(dataclasses.replace(b, values=summed(b.values)) for b in cp.pairs),
        xyxy=summed(cp.xyxy), n_obs=summed(cp.n_obs), sum_log_weights=summed(cp.sum_log_weights))


def _z_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The named columns of a chunk; ``"(Intercept)"`` stands for a column of ones."""
    cols = {c: (1.0 if c == INTERCEPT and c not in frame else frame[c]) for c in columns}
    return pd.DataFrame(cols, index=frame.index)


def cross_products_from_chunks(
    chunks: Iterable[pd.DataFrame],
    *,
    y: str,
    groups: Sequence[str],
    X: Sequence[str],
    Z: dict[str, Sequence[str]],
    sample_weight: str | None = None,
    residual_groups: str | None = None,
    intercept: bool = True,
    cov_type: str | dict = "unstructured",
    verbose: int = 0,
    correlation: tuple | None = None,
    again: "Callable[[], Iterable[pd.DataFrame]] | None" = None,
) -> tuple[dict, np.ndarray, CrossProducts, "Components | ChunkedRows | None"]:
    """Cross-products summed over an iterable of DataFrames, columns named by the caller.

    ``correlation``: ``(structure, correlation_groups column or None, time column or None,
    the residual groups' name)`` for correlated residuals. ``again``: a zero-argument
    callable giving the chunks afresh (:func:`reiterable`; None: they are read once),
    which the outer search needs where the rows have more lags than components.

    Returns the labels per term (sorted), the stratum labels, the cross-products and, with
    ``correlation``, the correlation's :class:`~._correlation.Components`, or the
    :class:`ChunkedRows` of the outer search (else None).
    """
    acc = Accumulator()
    corr_acc = None if correlation is None else CorrelatedAccumulator(correlation[0], correlation[3], acc)
    origin = "own"  # until the first chunk with rows gives its own to every chunk
    needed = [y, *groups, *X, *(c for cols in Z.values() for c in cols if c != INTERCEPT)]
    needed += [c for c in (sample_weight, residual_groups) if c is not None]
    if correlation is not None:
        needed += [c for c in correlation[1:3] if c is not None]

    def read(number: int, frame: Any, origin: Any, whiten_at: float | str | None = None):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"chunk {number} is a {type(frame).__name__}, expected a pandas DataFrame")
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"chunk {number} lacks column(s) {missing}")
        if len(frame) == 0:
            return None
        chunk_corr = None
        if correlation is not None:
            st, group_col, time_col, name = correlation
            chunk_corr = ChunkCorrelation(st, None if group_col is None else frame[group_col],
                                          None if time_col is None else frame[time_col], name)
        return partition_cross_products(
            frame[list(X)], frame[y], frame[list(groups)],
            {name: _z_columns(frame, cols) for name, cols in Z.items()},
            None if sample_weight is None else frame[sample_weight],
            None if residual_groups is None else frame[residual_groups],
            intercept, cov_type, f"chunk {number}", origin, chunk_corr, whiten_at,
        )

    for number, frame in enumerate(chunks):
        result = read(number, frame, origin)
        if result is None:  # an empty chunk, or every row of it has weight 0
            continue
        labels, strata_labels, part, correlated = result
        origin = part.origin
        if corr_acc is None:
            acc.add(labels, part, strata_labels)
        else:
            if correlated[1] is None and again is None:
                raise ValueError(f"chunk {number}: " + _ONE_SHOT_OUTER.format(
                    what=_too_many(correlation[0], None), limit=MAX_COMPONENTS))
            corr_acc.add(number, f"chunk {number}", labels, part, strata_labels, *correlated)
        if verbose:
            sizes = ", ".join(f"{k}: {v.size}" for k, v in labels.items())
            print(f"[MixedLMRegressor] chunk {number}: {len(frame)} rows, levels {sizes}")

    def each(value: float | str) -> Iterable:
        return (read(number, frame, None, value) for number, frame in enumerate(again()))

    return _results(acc, corr_acc, None if again is None else each)


def _too_many(st: CorrelationStructure, count: int | None) -> str:
    what = "group sizes" if st.name == "cs" else "lags between consecutive rows"
    return (f"the data have {count} distinct {what}" if count is not None
            else f"this chunk has many distinct {what}")


def _results(acc: Accumulator, corr_acc: "CorrelatedAccumulator | None",
             each: "Callable | None" = None) -> tuple:
    """The accumulated labels, stratum labels and cross-products, and the correlation's
    components (None without correlated residuals), or the :class:`ChunkedRows` whose
    passes ``each`` the outer search reads (where the rows have more lags than components;
    refused without ``each``: chunks read once)."""
    labels, strata_labels, cp = acc.result()
    if corr_acc is None:
        return labels, strata_labels, cp, None
    # the components' levels are coded as the cross-products' (Accumulator(levels_of=acc))
    comps = corr_acc.result()[1]
    if isinstance(comps, RowsSummary):
        if each is None:
            raise ValueError(_ONE_SHOT_OUTER.format(
                what=_too_many(corr_acc.structure, corr_acc.n_classes()), limit=MAX_COMPONENTS))
        comps = ChunkedRows(each, corr_acc.structure, comps, corr_acc._weighted, labels)
    return labels, strata_labels, cp, comps


def cross_products_from_dask(
    X: Any, y: Any, groups: Any, Z: dict, sample_weight: Any = None, residual_groups: Any = None,
    intercept: bool = True, cov_type: str | dict = "unstructured", verbose: int = 0,
    correlation: tuple | None = None,
) -> tuple[dict, np.ndarray, CrossProducts, Components | None]:
    """Cross-products of Dask collections, computed partition by partition where the data live.

    ``X``, ``y``, ``groups`` (a Series or a DataFrame with a column per term), the designs
    in ``Z`` and the optional columns must be partitioned alike, as columns selected from
    one Dask DataFrame are. Uses the active scheduler (a ``dask.distributed.Client`` if
    one exists). ``correlation``: ``(structure, correlation_groups, time, the residual
    groups' name)`` with Dask Series (or None) for correlated residuals; every residual
    group's rows must lie in one partition.
    """
    import dask

    names = list(Z)
    st, corr_groups, corr_time, corr_name = correlation if correlation is not None else (None,) * 4
    named = [("X", X), ("y", y), ("groups", groups)] + [(f"Z[{k!r}]", Z[k]) for k in names] \
        + [("sample_weight", sample_weight), ("residual_groups", residual_groups),
           ("correlation_groups", corr_groups), ("time", corr_time)]
    named = [(label, c) for label, c in named if c is not None]
    not_dask = [label for label, c in named if not is_dask_collection(c)]
    if not_dask:
        raise TypeError(f"with a Dask X, {not_dask} must be Dask collections too (columns of "
                        "the same DataFrame)")
    if len({c.npartitions for _, c in named}) != 1:
        raise ValueError("X, y, groups and Z must have the same Dask partitions")
    parts = [c.to_delayed() for _, c in named]
    has_w, has_s = sample_weight is not None, residual_groups is not None
    has_cg, has_t = corr_groups is not None, corr_time is not None

    def one(number, origin, xp, yp, gp, *rest, whiten_at=None):
        rest = list(rest)
        zp = {k: rest.pop(0) for k in names}
        wp = rest.pop(0) if has_w else None
        sp_ = rest.pop(0) if has_s else None
        cgp = rest.pop(0) if has_cg else None
        tp = rest.pop(0) if has_t else None
        frame = gp.to_frame() if isinstance(gp, pd.Series) else gp
        if len(frame) == 0:
            return None
        corr = None if st is None else ChunkCorrelation(st, cgp, tp, corr_name)
        return partition_cross_products(xp, yp, frame, zp, wp, sp_, intercept, cov_type,
                                        f"partition {number}", origin, corr, whiten_at)

    partitions = list(zip(*parts))
    results: list = []
    origin = "own" if intercept else None
    # the first partition with rows alone, for the origin of all (see the module docstring)
    while len(results) < len(partitions) and isinstance(origin, str):
        (result,) = dask.compute(dask.delayed(one)(len(results), "own", *partitions[len(results)]))
        results.append(result)
        origin = origin if result is None else result[2].origin
    rest = [dask.delayed(one)(number, origin, *part)
            for number, part in enumerate(partitions) if number >= len(results)]
    results += list(dask.compute(*rest))
    acc = Accumulator()
    corr_acc = None if st is None else CorrelatedAccumulator(st, corr_name, acc)
    for number, result in enumerate(results):
        if result is None:
            continue
        labels, strata_labels, part, correlated = result
        if corr_acc is None:
            acc.add(labels, part, strata_labels)
        else:
            corr_acc.add(number, f"partition {number}", labels, part, strata_labels, *correlated)
        if verbose:
            print(f"[MixedLMRegressor] partition {number}: {part.n} rows")

    def each(value: float | str) -> list:
        # one pass of the outer search: every partition's whitened sums where it lives
        return list(dask.compute(*[dask.delayed(one)(number, None, *part, whiten_at=value)
                                   for number, part in enumerate(partitions)]))

    return _results(acc, corr_acc, each)


# ---- adding up parts whose levels are known by label ----------------------------------------


def _sorted_labels(index: pd.Index) -> tuple[pd.Index, np.ndarray]:
    """The labels sorted (in order of appearance where they do not sort: mixed types) and
    each label's rank in that order, as an in-memory fit numbers its levels and strata."""
    try:
        sorted_labels, perm = index.sort_values(return_indexer=True)
    except TypeError:  # unorderable mixed labels: keep order of appearance
        sorted_labels, perm = index, np.arange(len(index))
    rank = np.empty(len(index), dtype=np.int64)
    rank[perm] = np.arange(len(index))
    return sorted_labels, rank

def _merge_labels(index: pd.Index | None, labels: np.ndarray, name: str) -> tuple[pd.Index, np.ndarray]:
    """The labels known so far extended by a part's, and the part's codes in them.

    Labels are compared in one canonical form (:func:`._validation.canonical_labels`):
    ``read_csv`` reading ids in chunks gives ``22`` in one and ``"22"`` in another.
    """
    labels = np.asarray(labels, dtype=object)
    if index is None:
        index = pd.Index(labels, dtype=object)
    else:
        known, labels = canonical_labels([np.asarray(index, dtype=object), labels], name)
        if known is not index:
            index = pd.Index(known, dtype=object)
        new = pd.Index(labels, dtype=object)
        fresh = new[index.get_indexer(new) < 0]
        if len(fresh):
            index = index.append(fresh)
    return index, index.get_indexer(pd.Index(labels, dtype=object))


class Accumulator:
    """Sums cross-products of parts (chunks, Dask partitions) that code levels by label.

    Each part is reduced to cross-products over its own levels and strata; this adds them
    into running totals indexed by label, so memory stays proportional to the levels (and
    level pairs), never the rows. Terms on the same grouping factor share one label index.
    """

    def __init__(self, levels_of: "Accumulator | None" = None) -> None:
        # levels_of: an accumulator of the same parts whose level coding this one shares
        # (its add gives the codes: the labels are merged once)
        self._levels_of = levels_of
        self._factor_labels: dict[str, pd.Index] = {}
        self._strata_labels: pd.Index | None = None
        self._parts: list[tuple[list[np.ndarray], np.ndarray, CrossProducts]] = []
        self._template: CrossProducts | None = None

    def add(self, labels: dict[str, np.ndarray], part: CrossProducts,
            strata_labels: np.ndarray | None = None, codes: list | None = None) -> list:
        """Add a part; returns its levels' codes per term in the running coding.

        Parameters
        ----------
        labels : dict
            Grouping factor name -> the part's labels of its levels (codes 0..m-1).
        part : CrossProducts
            The part's cross-products in its own coding.
        strata_labels : ndarray, optional
            The part's stratum labels (its strata axis), when there are strata.
        codes : list, optional
            The codes per term, given by the accumulator whose coding this one shares.
        """
        if self._template is not None:
            t = self._template
            if [(x.factor, x.q) for x in part.terms] != [(x.factor, x.q) for x in t.terms] \
                    or part.p != t.p:
                raise ValueError("chunks have different columns")
            if not _same_origin(part.origin, t.origin):
                raise ValueError("chunks measured from different origins cannot be added")
        else:
            self._template = part
        if codes is None:
            codes = []
            for term in part.terms:
                index, code = _merge_labels(self._factor_labels.get(term.factor),
                                            labels[term.factor], f"groups[{term.factor!r}]")
                self._factor_labels[term.factor] = index
                codes.append(code)
        if strata_labels is None:
            strata_labels = np.array(["(all)"], dtype=object)
        self._strata_labels, strata_codes = _merge_labels(self._strata_labels, strata_labels,
                                                          "residual_groups")
        self._parts.append((codes, strata_codes, part))
        return codes

    def factor_labels(self, factor: str) -> pd.Index | None:
        """The labels of ``factor``'s levels seen so far, in the running coding."""
        return self._factor_labels.get(factor)

    def n_levels(self, factor: str) -> int:
        """Levels of ``factor`` seen so far."""
        index = self.factor_labels(factor)
        return 0 if index is None else len(index)

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray, CrossProducts]:
        """Sorted labels per factor, sorted stratum labels, and the summed cross-products.

        Levels are numbered in sorted label order, as an in-memory fit codes them.
        """
        if self._template is None:
            raise ValueError("no data: every chunk was empty (or had only rows of weight 0)")
        order, labels = {}, {}
        coding = self if self._levels_of is None else self._levels_of
        for factor, index in coding._factor_labels.items():
            sorted_labels, order[factor] = _sorted_labels(index)
            labels[factor] = np.asarray(sorted_labels, dtype=object)
        strata_sorted, strata_rank = _sorted_labels(self._strata_labels)
        n_strata = len(strata_rank)

        template = self._template
        terms = Terms([dataclasses.replace(t, n_levels=len(labels[t.factor])) for t in template.terms])
        S, p1 = n_strata, template.p + 1
        diag = [np.zeros((S, t.q, t.q, t.n_levels)) for t in terms]
        zxy = [np.zeros((S, t.q, p1, t.n_levels)) for t in terms]
        counts = [np.zeros(t.n_levels, dtype=np.int64) for t in terms]
        xyxy = np.zeros((S, p1, p1))
        n_obs = np.zeros(S, dtype=np.int64)
        sum_log_w = np.zeros(S)
        pair_parts: list[list] = [[] for _ in template.pairs]
        for codes, strata_codes, part in self._parts:
            gl = [order[t.factor][c] for t, c in zip(part.terms, codes)]
            st = strata_rank[strata_codes]
            for k in range(len(terms)):
                for s_local, s in enumerate(st):
                    diag[k][s][:, :, gl[k]] += part.diag[k][s_local]
                    zxy[k][s][:, :, gl[k]] += part.zxy[k][s_local]
                counts[k][gl[k]] += part.counts[k]
            for s_local, s in enumerate(st):
                xyxy[s] += part.xyxy[s_local]
                n_obs[s] += part.n_obs[s_local]
                sum_log_w[s] += part.sum_log_weights[s_local]
            for j, block in enumerate(part.pairs):
                values = np.zeros((S,) + block.values.shape[1:])
                values[st] = block.values
                pair_parts[j].append((gl[block.k][block.level_k], gl[block.l][block.level_l], values))
        pairs = []
        for j, block in enumerate(template.pairs):
            lk = np.concatenate([a for a, _, _ in pair_parts[j]])
            ll = np.concatenate([b for _, b, _ in pair_parts[j]])
            values = np.concatenate([v for _, _, v in pair_parts[j]], axis=1)
            pairs.append(_coalesce(block.k, block.l, lk, ll, values, terms[block.l].n_levels))
        total = CrossProducts(terms, tuple(diag), tuple(zxy), tuple(pairs), xyxy, n_obs, sum_log_w,
                              tuple(counts), template.origin)
        return labels, np.asarray(strata_sorted, dtype=object), total
