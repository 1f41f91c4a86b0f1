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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._crossprod import CrossProducts, Origin, _coalesce, _same_origin, cross_products, origin_of
from ._design import INTERCEPT, term_is_diagonal
from ._terms import Term, Terms
from ._validation import as_design, canonical_labels, check_weights, encode_groups, take_rows

__all__ = ["check_dask_inputs", "is_dask_collection", "cross_products_from_chunks", "cross_products_from_dask",
           "partition_cross_products", "Accumulator"]


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
    origin: Origin | None | str = "own",
) -> tuple[dict, np.ndarray | None, CrossProducts]:
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

    Returns
    -------
    labels : dict
        Term name -> the chunk's level labels (its codes 0..m-1).
    strata_labels : ndarray or None
    cp : CrossProducts
        (None instead of the triple when every row has weight 0.)
    """
    try:
        y_arr = as_design(y, len(y), "y")[:, 0]
        n = y_arr.shape[0]
        x_arr = as_design(x, n, "X") if np.shape(x)[1] else np.empty((n, 0))
        w_arr = None if weights is None else check_weights(weights, n)
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
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where}: {err}") from None
    if isinstance(origin, str):
        origin = origin_of(x_arr, y_arr) if intercept else None
    cp = cross_products(x_arr, y_arr, factors, Terms(terms), w_arr, strata_codes, n_strata,
                        intercept=intercept, origin=origin if intercept else None)
    return labels, strata_labels, cp


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
) -> tuple[dict, np.ndarray, CrossProducts]:
    """Cross-products summed over an iterable of DataFrames, columns named by the caller.

    Returns the labels per term (sorted), the stratum labels and the cross-products.
    """
    acc = Accumulator()
    origin = "own"  # until the first chunk with rows gives its own to every chunk
    needed = [y, *groups, *X, *(c for cols in Z.values() for c in cols if c != INTERCEPT)]
    needed += [c for c in (sample_weight, residual_groups) if c is not None]
    for number, frame in enumerate(chunks):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"chunk {number} is a {type(frame).__name__}, expected a pandas DataFrame")
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"chunk {number} lacks column(s) {missing}")
        if len(frame) == 0:
            continue
        result = partition_cross_products(
            frame[list(X)], frame[y], frame[list(groups)],
            {name: _z_columns(frame, cols) for name, cols in Z.items()},
            None if sample_weight is None else frame[sample_weight],
            None if residual_groups is None else frame[residual_groups],
            intercept, cov_type, f"chunk {number}", origin,
        )
        if result is None:  # every row of the chunk has weight 0
            continue
        labels, strata_labels, part = result
        origin = part.origin
        acc.add(labels, part, strata_labels)
        if verbose:
            sizes = ", ".join(f"{k}: {v.size}" for k, v in labels.items())
            print(f"[MixedLMRegressor] chunk {number}: {len(frame)} rows, levels {sizes}")
    return acc.result()


def cross_products_from_dask(
    X: Any, y: Any, groups: Any, Z: dict, sample_weight: Any = None, residual_groups: Any = None,
    intercept: bool = True, cov_type: str | dict = "unstructured", verbose: int = 0,
) -> tuple[dict, np.ndarray, CrossProducts]:
    """Cross-products of Dask collections, computed partition by partition where the data live.

    ``X``, ``y``, ``groups`` (a Series or a DataFrame with a column per term), the designs
    in ``Z`` and the optional columns must be partitioned alike, as columns selected from
    one Dask DataFrame are. Uses the active scheduler (a ``dask.distributed.Client`` if
    one exists).
    """
    import dask

    names = list(Z)
    named = [("X", X), ("y", y), ("groups", groups)] + [(f"Z[{k!r}]", Z[k]) for k in names] \
        + [("sample_weight", sample_weight), ("residual_groups", residual_groups)]
    named = [(label, c) for label, c in named if c is not None]
    not_dask = [label for label, c in named if not is_dask_collection(c)]
    if not_dask:
        raise TypeError(f"with a Dask X, {not_dask} must be Dask collections too (columns of "
                        "the same DataFrame)")
    if len({c.npartitions for _, c in named}) != 1:
        raise ValueError("X, y, groups and Z must have the same Dask partitions")
    parts = [c.to_delayed() for _, c in named]
    has_w, has_s = sample_weight is not None, residual_groups is not None

    def one(number, origin, xp, yp, gp, *rest):
        rest = list(rest)
        zp = {k: rest.pop(0) for k in names}
        wp = rest.pop(0) if has_w else None
        sp_ = rest.pop(0) if has_s else None
        frame = gp.to_frame() if isinstance(gp, pd.Series) else gp
        if len(frame) == 0:
            return None
        return partition_cross_products(xp, yp, frame, zp, wp, sp_, intercept, cov_type,
                                        f"partition {number}", origin)

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
    for number, result in enumerate(results):
        if result is None:
            continue
        labels, strata_labels, part = result
        acc.add(labels, part, strata_labels)
        if verbose:
            print(f"[MixedLMRegressor] partition {number}: {part.n} rows")
    return acc.result()


# ---- adding up parts whose levels are known by label ----------------------------------------


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

    def __init__(self) -> None:
        self._factor_labels: dict[str, pd.Index] = {}
        self._strata_labels: pd.Index | None = None
        self._parts: list[tuple[list[np.ndarray], np.ndarray, CrossProducts]] = []
        self._template: CrossProducts | None = None

    def add(self, labels: dict[str, np.ndarray], part: CrossProducts,
            strata_labels: np.ndarray | None = None) -> None:
        """Add a part.

        Parameters
        ----------
        labels : dict
            Grouping factor name -> the part's labels of its levels (codes 0..m-1).
        part : CrossProducts
            The part's cross-products in its own coding.
        strata_labels : ndarray, optional
            The part's stratum labels (its strata axis), when there are strata.
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
        codes = []
        for term in part.terms:
            index, code = _merge_labels(self._factor_labels.get(term.factor), labels[term.factor],
                                        f"groups[{term.factor!r}]")
            self._factor_labels[term.factor] = index
            codes.append(code)
        if strata_labels is None:
            strata_labels = np.array(["(all)"], dtype=object)
        self._strata_labels, strata_codes = _merge_labels(self._strata_labels, strata_labels,
                                                          "residual_groups")
        self._parts.append((codes, strata_codes, part))

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray, CrossProducts]:
        """Sorted labels per factor, sorted stratum labels, and the summed cross-products.

        Levels are numbered in sorted label order, as an in-memory fit codes them.
        """
        if self._template is None:
            raise ValueError("no data: every chunk was empty (or had only rows of weight 0)")
        order, labels = {}, {}
        for factor, index in self._factor_labels.items():
            try:
                sorted_labels, perm = index.sort_values(return_indexer=True)
            except TypeError:  # unorderable mixed labels: keep order of appearance
                sorted_labels, perm = index, np.arange(len(index))
            rank = np.empty(len(index), dtype=np.int64)
            rank[perm] = np.arange(len(index))
            order[factor] = rank
            labels[factor] = np.asarray(sorted_labels, dtype=object)
        try:
            strata_sorted, strata_perm = self._strata_labels.sort_values(return_indexer=True)
        except TypeError:
            strata_sorted, strata_perm = self._strata_labels, np.arange(len(self._strata_labels))
        strata_rank = np.empty(len(strata_perm), dtype=np.int64)
        strata_rank[strata_perm] = np.arange(len(strata_perm))
        n_strata = len(strata_perm)

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
