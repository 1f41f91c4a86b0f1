"""GLMMs from chunks and Dask partitions: the Laplace deviance with its rows read in parts.

A GLMM has no sufficient statistics: every step of PIRLS reweights the rows. What each
step needs from them is additive, though -- the weighted cross-products ``Z'WZ`` per
level (and per pair of crossed levels), ``Z'r``, the log-likelihood, and for the
gradient ``Z'a``, ``X'(c - 2r)`` and ``Z_k'F_k`` (:mod:`._glmm`'s module docstring) -- so
each is one pass over the chunks: every chunk's rows are coded by the levels of all the
data (found in a first pass), the in-memory deviance's own methods are applied to them
(:class:`~._glmm.GLMMDeviance` takes the rows as an argument, ``R``), and the results add.
:class:`ChunkedGLMMDeviance` is that deviance with the passes in place of the in-memory
sums; PIRLS, the gradient's algebra and the optimiser are the in-memory ones. A pass
holds one chunk (or, with Dask, computes each partition's sums where it lives) next to
the per-level totals; no row is kept between passes.

Sources are re-iterable: a sequence of DataFrames, a zero-argument callable returning a
fresh iterable of them (``lambda: pd.read_csv(path, chunksize=...)``), or a Dask
DataFrame (:class:`ChunkSource`).
"""

from __future__ import annotations

import collections.abc
import copy
from typing import Any, Callable

import numpy as np
import pandas as pd

from ._chunked import _merge_labels, _sorted_labels, is_dask_collection, reiterable
from ._crossprod import CrossProducts, DesignPattern, PairBlock
from ._design import INTERCEPT
from ._factor import NotPositiveDefinite, Plan, Prepared
from ._family import Family, Link
from ._glmm import GLMMDeviance, PIRLSDivergence, _Modes
from ._terms import Term, Terms
from ._validation import check_weights, encode_groups

__all__ = ["ChunkSource", "ChunkedGLMMDeviance", "chunked_glm_start"]

_ONE_SHOT = ("chunks is a one-shot iterator (e.g. a generator or pd.read_csv(..., chunksize=...)): "
             "a GLMM fit reads the chunks many times (one pass per PIRLS step). Pass a list of "
             "DataFrames or a zero-argument callable that returns a fresh iterator, e.g. "
             "lambda: pd.read_csv(path, chunksize=100_000)")


class _Rows:
    """One chunk's rows coded by the levels of all the data (what :class:`~._glmm.GLMMDeviance`'s
    row methods read): ``X`` (the kept fixed-effects columns), ``y``, ``prior``, ``offset``,
    ``factors`` (global codes, Z); and, made when first asked for (a pass for the
    log-likelihood needs none of them), ``pattern`` (the cross-products' structure),
    ``_entries`` (each row's entry in the data's pair blocks) and ``pair_pos`` (the
    positions of the chunk's level pairs among the data's)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, prior: np.ndarray, offset: np.ndarray,
                 factors: list, terms: Terms, pair_keys: list) -> None:
        self.X, self.y, self.prior, self.offset, self.factors = X, y, prior, offset, factors
        self.n = y.shape[0]
        self._terms, self._pair_keys = terms, pair_keys
        self._pattern: DesignPattern | None = None

    @property
    def pattern(self) -> DesignPattern:
        if self._pattern is None:
            self._pattern = DesignPattern(np.empty((self.n, 0)), self.factors, self._terms)
            self._pair_entries, self._pair_pos = [], []
            for j, (k, l, inv, lk, ll) in enumerate(self._pattern._pairs):
                where = np.searchsorted(self._pair_keys[j], lk * self._terms[l].n_levels + ll)
                self._pair_pos.append(where)
                self._pair_entries.append(where[inv])
        return self._pattern

    @property
    def _entries(self) -> list:
        self.pattern  # noqa: B018 -- made with the pattern
        return self._pair_entries

    @property
    def pair_pos(self) -> list:
        self.pattern  # noqa: B018
        return self._pair_pos


class ChunkSource:
    """Re-iterable chunks of a GLMM's rows, named by column.

    Parameters
    ----------
    chunks : sequence of DataFrame, callable or Dask DataFrame
        A list/tuple of DataFrames, a zero-argument callable returning a fresh iterable of
        DataFrames at each call, or a Dask DataFrame (each pass computes every
        partition's sums with ``dask.delayed``). A one-shot iterator is refused.
    y, X, groups, Z, sample_weight, offset :
        Column names: the response, the fixed-effects columns, the grouping factors (one
        term each), the random-effects columns per factor (``"(Intercept)"``: ones),
        the prior weights and the offset.
    fit_intercept : bool
    encode_y : callable, optional
        Maps a chunk's response column to the fit's numeric response.
    z_names : dict, optional
        Factor -> the names of its random-effects columns, where they differ from the
        chunks' column names.
    """

    def __init__(self, chunks: Any, *, y: str, X: list, groups: list, Z: dict,
                 sample_weight: str | None = None, offset: str | None = None,
                 fit_intercept: bool = True, encode_y: Callable | None = None,
                 z_names: dict | None = None) -> None:
        self.dask = is_dask_collection(chunks)
        if self.dask:
            self._frames = None
            self._parts = chunks
        elif isinstance(chunks, pd.DataFrame):
            raise TypeError("chunks is one DataFrame: fit it with fit(), or pass a list of DataFrames")
        elif reiterable(chunks) is not None:
            self._frames = reiterable(chunks)
        elif isinstance(chunks, collections.abc.Iterator):
            raise ValueError(_ONE_SHOT)
        else:
            raise TypeError(f"chunks is a {type(chunks).__name__}: expected a list of DataFrames, a "
                            "callable returning an iterable of them, or a Dask DataFrame")
        self.y, self.X, self.groups, self.Z = y, list(X), list(groups), dict(Z)
        self.sample_weight, self.offset = sample_weight, offset
        self.fit_intercept = fit_intercept
        self.z_names = dict(z_names or {})
        self.encode_y = encode_y or (lambda v: np.asarray(v, dtype=float))
        self.kept: np.ndarray | None = None  # the kept fixed-effects columns (set by the fit)
        self.terms: Terms | None = None
        self._index: dict = {}  # factor -> labels in order of appearance
        self._rank: dict = {}  # factor -> each label's position in sorted order
        self._pair_keys: list = []

    # ---- the chunks ---------------------------------------------------------------------

    def frames(self):
        """The chunks of one pass (a fresh iterator; Dask: its partitions, delayed)."""
        if self.dask:
            return self._parts.to_delayed()
        it = self._frames()
        if isinstance(it, pd.DataFrame):
            raise TypeError("the chunks callable returned one DataFrame: it must return an "
                            "iterable of DataFrames (e.g. a list, or pd.read_csv(..., chunksize=...))")
        return iter(it)

    def _needed(self) -> list:
        cols = [self.y, *self.groups, *self.X]
        cols += [c for cols in self.Z.values() for c in cols if c != INTERCEPT]
        return cols + [c for c in (self.sample_weight, self.offset) if c is not None]

    def _columns(self, frame: pd.DataFrame, number: int) -> tuple | None:
        """A chunk's checked columns without its rows of weight 0 (None: no rows left)."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"chunk {number} is a {type(frame).__name__}, expected a pandas DataFrame")
        missing = [c for c in self._needed() if c not in frame.columns]
        if missing:
            raise ValueError(f"chunk {number} lacks column(s) {missing}")
        n = len(frame)
        if n == 0:
            return None
        try:
            w = np.ones(n) if self.sample_weight is None else check_weights(frame[self.sample_weight], n)
        except ValueError as err:
            raise ValueError(f"chunk {number}: {err}") from None
        if not w.all():
            frame, w = frame[w > 0], w[w > 0]
            if len(frame) == 0:
                return None
        # column by column: a DataFrame's take of a list of columns costs more than the
        # columns themselves in a pass over small chunks
        start = int(self.fit_intercept)
        x = np.ones((len(frame), start + len(self.X)))
        for j, c in enumerate(self.X):
            x[:, start + j] = frame[c].to_numpy(dtype=float)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"chunk {number}: X has non-finite values")
        try:
            y = self.encode_y(frame[self.y])
        except ValueError as err:
            raise ValueError(f"chunk {number}: {err}") from None
        off = np.zeros(len(frame)) if self.offset is None else frame[self.offset].to_numpy(dtype=float)
        if not np.all(np.isfinite(off)):  # else the fit fails later as a numerical breakdown
            raise ValueError(f"chunk {number}: the offset has non-finite values")
        return frame, x, y, w, off

    # ---- the first pass: the levels, the level pairs, the constant parts -------------------

    def survey(self, family: Family, diagonal: dict) -> dict:
        """Read every chunk once: the levels of each factor (coded as in memory: sorted
        labels), the level pairs of crossed factors, the terms, and the sums the fit needs
        before PIRLS (``X'WX`` with the prior weights, the log-density's constant, the
        rows). ``diagonal``: factor -> whether its term is diagonal."""
        index: dict = {g: None for g in self.groups}
        keys_local: list = []
        xtx, n, const, z_names = None, 0, 0.0, {}
        results = self._map(lambda frame, number: self._survey_one(frame, number, family))
        for result in results:
            if result is None:
                continue
            labels, pair_labels, xtx_c, n_c, const_c, names = result
            codes = {}
            for g in self.groups:
                index[g], codes[g] = _merge_labels(index[g], labels[g], f"groups[{g!r}]")
            keys_local.append([(codes[self.groups[k]][a], codes[self.groups[l]][b])
                               for (k, l), (a, b) in pair_labels])
            xtx = xtx_c if xtx is None else xtx + xtx_c
            n += n_c
            const += const_c
            z_names = names
        if n == 0:
            raise ValueError("no data: every chunk was empty (or had only rows of weight 0)")
        terms = []
        for g in self.groups:
            sorted_labels, self._rank[g] = _sorted_labels(index[g])
            self._index[g] = index[g]
            terms.append(Term(g, z_names[g], len(index[g]), diagonal.get(g, False)))
        self.terms = Terms(terms)
        self.labels = {g: np.asarray(_sorted_labels(index[g])[0], dtype=object) for g in self.groups}
        # in the labels' own dtype (integers: a hash table of ints, not of objects)
        self._sorted = {g: pd.Index(self.labels[g]).infer_objects() for g in self.groups}
        # each pair of factors' level pairs: sorted keys level_k * m_l + level_l (global codes)
        self._pair_keys = []
        j = 0
        for k in range(len(self.groups)):
            for l in range(k + 1, len(self.groups)):
                m_l = terms[l].n_levels
                rk, rl = self._rank[self.groups[k]], self._rank[self.groups[l]]
                found = [rk[a].astype(np.int64) * m_l + rl[b] for chunk in keys_local for a, b in [chunk[j]]]
                self._pair_keys.append(np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64))
                j += 1
        return {"xtx": xtx, "n": n, "log_constant": const}

    def _survey_one(self, frame, number: int, family: Family):
        cols = self._columns(frame, number)
        if cols is None:
            return None
        frame, x, y, w, off = cols
        try:
            family.check_response(y, w)
        except ValueError as err:  # its rows are the chunk's: name the chunk, as X's check does
            raise ValueError(f"chunk {number}: {err}") from None
        n = len(frame)
        labels, codes, names = {}, {}, {}
        for g in self.groups:
            codes[g], labels[g] = encode_groups(frame[g], n, name=f"groups[{g!r}]")
            names[g] = tuple(str(c) for c in self.z_names.get(g, self.Z.get(g, [INTERCEPT])))
        pair_labels = []
        for k in range(len(self.groups)):
            for l in range(k + 1, len(self.groups)):
                ck, cl = codes[self.groups[k]], codes[self.groups[l]]
                m_l = labels[self.groups[l]].size
                uniq = np.unique(ck.astype(np.int64) * m_l + cl)
                pair_labels.append(((k, l), np.divmod(uniq, m_l)))
        const = float(family.log_constant(y, w).sum())
        return labels, pair_labels, x.T @ (w[:, None] * x), n, const, names

    # ---- the rows of a chunk ------------------------------------------------------------

    def rows(self, frame: pd.DataFrame, number: int) -> _Rows | None:
        """A chunk's rows coded by the data's levels (None: no rows)."""
        cols = self._columns(frame, number)
        if cols is None:
            return None
        frame, x, y, w, off = cols
        n = len(frame)
        factors = []
        for g, term in zip(self.groups, self.terms):
            # the labels as the first pass coded them; where a label is only equal in the
            # canonical form (22 and "22"), the first pass's merge
            codes = self._sorted[g].get_indexer(frame[g])
            if (codes < 0).any():
                local, labels = encode_groups(frame[g], n, name=f"groups[{g!r}]")
                index, at = _merge_labels(self._index[g], labels, f"groups[{g!r}]")
                if len(index) != term.n_levels:
                    raise ValueError(f"chunk {number} has levels of {g} that the first pass did "
                                     "not see: the chunks must be the same at every pass")
                codes = self._rank[g][at][local]
            z = np.ones((n, len(self.Z.get(g, [INTERCEPT]))))
            for j, c in enumerate(self.Z.get(g, [])):
                if not (c == INTERCEPT and c not in frame.columns):  # "(Intercept)": ones
                    z[:, j] = frame[c].to_numpy(dtype=float)
            if not np.all(np.isfinite(z)):
                raise ValueError(f"chunk {number}: the random-effects columns of {g} have "
                                 "non-finite values")
            factors.append((codes, z))
        X = x if self.kept is None else np.ascontiguousarray(x[:, self.kept])
        return _Rows(X, y, w, off, factors, self.terms, self._pair_keys)

    def _map(self, fn: Callable) -> list:
        """``fn(frame, number)`` of every chunk (Dask: computed partition by partition where
        the data live, with the active scheduler)."""
        if self.dask:
            import dask

            return list(dask.compute(*[dask.delayed(fn)(part, number)
                                       for number, part in enumerate(self.frames())]))
        return [fn(frame, number) for number, frame in enumerate(self.frames())]

    def total(self, fn: Callable) -> Any:
        """The sum over the chunks of ``fn(rows)`` (nested tuples/lists of arrays and
        numbers; None from a chunk adds nothing). Holds one chunk at a time (Dask: each
        partition's sums)."""
        def one(frame, number):
            R = self.rows(frame, number)
            return None if R is None else fn(R)

        if self.dask:
            return _sum(self._map(one))
        out = None
        for number, frame in enumerate(self.frames()):
            out = _sum([out, one(frame, number)])
        return out

    def global_products(self, cp: CrossProducts, R: _Rows) -> CrossProducts:
        """A chunk's cross-products with its pair blocks laid out on the data's level pairs."""
        pairs = []
        for j, block in enumerate(cp.pairs):
            m_l = self.terms[block.l].n_levels
            keys = self._pair_keys[j]
            values = np.zeros((block.values.shape[0], keys.size) + block.values.shape[2:])
            values[:, R.pair_pos[j]] = block.values
            pairs.append(PairBlock(block.k, block.l, keys // m_l, keys % m_l, values))
        return CrossProducts(cp.terms, cp.diag, cp.zxy, tuple(pairs), cp.xyxy, cp.n_obs,
                             cp.sum_log_weights, cp.counts, None)


def _sum(parts: list) -> Any:
    """Elementwise sum of like nested results (None parts skipped)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, CrossProducts):
        return CrossProducts(
            first.terms,
            tuple(_sum([p.diag[k] for p in parts]) for k in range(len(first.diag))),
            tuple(_sum([p.zxy[k] for p in parts]) for k in range(len(first.zxy))),
            tuple(PairBlock(b.k, b.l, b.level_k, b.level_l, _sum([p.pairs[j].values for p in parts]))
                  for j, b in enumerate(first.pairs)),
            _sum([p.xyxy for p in parts]), _sum([p.n_obs for p in parts]),
            _sum([p.sum_log_weights for p in parts]),
            tuple(_sum([p.counts[k] for p in parts]) for k in range(len(first.counts))), None)
    if isinstance(first, (tuple, list)):
        return type(first)(_sum([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, bool):
        return all(parts)  # a flag holds for the data when it holds for every chunk
    out = first + parts[1]
    for p in parts[2:]:
        out = out + p
    return out


class ChunkedGLMMDeviance(GLMMDeviance):
    """The Laplace deviance of a GLMM whose rows are read from a :class:`ChunkSource`.

    The in-memory :class:`~._glmm.GLMMDeviance` with each sum over the rows replaced by a
    pass over the chunks (the row methods applied to each chunk's rows, added up).
    Per-row arrays are not kept: the modes' ``eta`` is ``(beta, Lambda u)``.

    Parameters
    ----------
    source : ChunkSource
        Surveyed (:meth:`ChunkSource.survey`), with its kept columns set.
    p : int
        Fixed-effects columns kept.
    log_constant : float
        The log-density's constant summed over the rows.
    family, link :
    """

    def __init__(self, source: ChunkSource, p: int, log_constant: float, n: int,
                 family: Family, link: Link) -> None:
        self.source = source
        self.terms = terms = source.terms
        self.family, self.link = family, link
        self.canonical = link.name == family.canonical
        self.observed = family.observed_laplace and not self.canonical
        self.n, self.p = n, p
        self.n_theta = terms.n_theta
        self.n_params = self.n_theta + p
        self.n_agq = 1
        self._log_constant = float(log_constant)
        cp0 = self._pass(lambda R: self._global(R.pattern.cross_products(np.zeros(R.n), np.ones(R.n)), R))
        self.plan = Plan(cp0)
        self._prepared = Prepared(self.plan, cp0)
        self._pairs_kl = [(b.k, b.l) for b in cp0.pairs]
        self._last = self._base = self._best = None
        self.n_evaluations = self.n_pirls = 0
        self.n_passes = 1

    # ---- passes -------------------------------------------------------------------------

    def _pass(self, fn: Callable) -> Any:
        self.n_passes = getattr(self, "n_passes", 0) + 1
        return self.source.total(fn)

    def _global(self, cp: CrossProducts, R: _Rows) -> CrossProducts:
        return self.source.global_products(cp, R)

    def _eta_rows(self, state: tuple, R: _Rows) -> np.ndarray:
        beta, b = state
        fixed = R.offset + R.X @ beta if self.p else R.offset.copy()
        return fixed + self._z_times(b, R)

    def _rows_at(self, state: tuple, R: _Rows) -> tuple:
        rows = self._weights_at(self._eta_rows(state, R), R)
        if self.observed:  # the modes' M holds the observed weights (as in memory)
            rows = rows[:5] + (self._observed_at(rows, R), rows[6])
        return rows

    @staticmethod
    def _state(m: _Modes) -> tuple:
        return m.beta, [lam @ u for lam, u in zip(m.lams, m.u)]

    # ---- the row sums of GLMMDeviance, one pass each --------------------------------------

    def _fixed(self, beta: np.ndarray):
        return np.array(beta, dtype=float)

    def _evaluate(self, fixed, b: list):
        """The log-likelihood at ``(beta, b)`` and, in the same pass, PIRLS's cross-products
        there (:meth:`_working`'s and the chord's score, :meth:`_score_products`): the point
        a step accepts is the last one evaluated, so PIRLS reads each chunk once per step
        (where the working weights are not finite, the cross-products are left to
        :meth:`_working`, which says so)."""
        def one(R):
            eta, _, ll = self._eta_of(R.offset + R.X @ fixed if self.p else R.offset.copy(), b, R)
            try:
                _, _, _, _, _, W, r = self._weights_at(eta, R)
            except PIRLSDivergence:
                return ll, False, None
            with np.errstate(over="ignore"):
                return ll, True, self._global(R.pattern.cross_products(r / W, W), R)

        state = (fixed, b)
        ll, ok, cp = self._pass(one)
        self._at_last = (state, cp if ok else None)
        return state, None, self._log_constant + ll

    def _products_of_last(self, eta) -> CrossProducts | None:
        """The cross-products :meth:`_evaluate` made at ``eta``, if it was the last point."""
        last = getattr(self, "_at_last", None)
        return last[1] if last is not None and last[0] is eta else None

    def _working(self, eta, observed: bool = False, rows: tuple | None = None):
        cp = None if observed else self._products_of_last(eta)
        if cp is not None:
            return cp, (None,) * 7

        def one(R):
            rows_c = self._weights_at(self._eta_rows(eta, R), R)
            W, r = rows_c[5], rows_c[6]
            if observed:
                W = self._observed_at(rows_c, R)
                if not (np.all(W > 0) and np.all(np.isfinite(W))):
                    raise NotPositiveDefinite("the Hessian of the joint log-density in the "
                                              "random effects is not positive definite")
            with np.errstate(over="ignore"):
                return self._global(R.pattern.cross_products(r / W, W), R)

        return self._pass(one), (None,) * 7

    def _newton_products(self, eta, rows: tuple):
        def one(R):
            H = self._observed_at(self._weights_at(self._eta_rows(eta, R), R), R)
            ok = bool(np.all(H > 0) and np.all(np.isfinite(H)))
            cp = self._global(R.pattern.cross_products(np.zeros(R.n), np.where(ok, H, 1.0)), R)
            return ok, cp

        ok, cp = self._pass(one)
        return cp if ok else None

    def _score_products(self, eta, mu) -> list | None:
        cp = self._products_of_last(eta)
        if cp is not None:  # Z'W (r / W), the score's products made with the point's
            return [z[0, :, 0, :] for z in cp.zxy]

        def one(R):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                mu_c, d1, _, var, _ = self._response(self._eta_rows(eta, R))
                r = R.prior * (R.y - mu_c) * (d1 / var)
            ok = bool(np.all(np.isfinite(r)))
            return ok, self._zt_times(np.where(ok, r, 0.0), R)

        ok, zr = self._pass(one)
        return zr if ok else None

    def _shift_products(self, base: _Modes, d_lams: list, d_beta: np.ndarray) -> list:
        state = self._state(base)
        db = [dl @ u for dl, u in zip(d_lams, base.u)]

        def one(R):
            shift = self._z_times(db, R)
            if self.p:
                shift = shift + R.X @ d_beta
            return self._zt_times(self._rows_at(state, R)[5] * shift, R)

        return self._pass(one)

    def _x_products(self, m: _Modes):
        state = self._state(m)

        def one(R):
            pattern = DesignPattern(R.X, R.factors, self.terms)
            return self._global(pattern.cross_products(np.zeros(R.n), self._rows_at(state, R)[5]), R)

        return self._pass(one)

    def _laplace_gradient(self, m: _Modes) -> np.ndarray | None:
        state = self._state(m)
        sel = m.factor.selected_inverse(with_crossing_pairs=True)
        other = not (self.canonical or self.observed)

        def first(R):
            rows = self._rows_at(state, R)
            _, a, H = self._gradient_rows(m, rows, sel, R)
            za = self._zt_times(a, R)
            if not other:
                return za
            return za, self._global(R.pattern.cross_products(np.zeros(R.n), H), R)

        out = self._pass(first)
        factor_h = m.factor
        if other:
            out, cp_h = out
            factor_h = self._h_factor(m, cp_h)
            if factor_h is None:
                return None
        s = [x[:, 0, :] for x in factor_h.solve([(lam.T @ g)[:, None, :] for lam, g in zip(m.lams, out)])]

        def second(R):
            rows = self._rows_at(state, R)
            return self._gradient_sums(m, rows, self._gradient_rows(m, rows, sel, R), s, R)

        return self._gradient_of(m, *self._pass(second))

    # ---- the family's free parameter (negative binomial, Gamma) ----------------------------

    def family_start(self, beta: np.ndarray) -> dict:
        def one(R):
            with np.errstate(all="ignore"):
                mu0 = self.link.inverse(R.offset + R.X @ beta)
            return self.family.start_sums(R.y, mu0, R.prior)

        return self.family.start_from_sums(self._pass(one))

    def set_family_values(self, values: dict) -> None:
        self.family = self.family.with_values(values)
        self.link = self.family.link
        family = self.family
        self._log_constant = float(self._pass(lambda R: float(family.log_constant(R.y, R.prior).sum())))
        self._last = self._base = self._best = self._at_last = None

    # ---- what needs the rows themselves ----------------------------------------------------

    def saturated_loglik(self) -> float:
        return float(self._pass(lambda R: float(self.family.saturated_loglik(R.y, R.prior).sum())))

    def deviance_and_extremes(self, m: _Modes) -> tuple[float, bool]:
        """The GLM deviance (sum of deviance residuals) at the modes and whether a fitted
        probability is numerically 0 or 1 (one pass)."""
        from ._family import separated

        state = self._state(m)

        def one(R):
            eta = self._eta_rows(state, R)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                mu = self.link.inverse(eta)
            dev = float(self.family.deviance_residuals(R.y, eta, mu, R.prior, self.link).sum())
            return dev, not separated(self.family, mu)

        dev, none_separated = self._pass(one)
        return dev, not none_separated

    def row_moments(self) -> tuple:
        """``X'X``, ``X'1``, the rows and ``Z_k'Z_k`` per term, unweighted (Nakagawa's R2
        and the ICC, as the in-memory :meth:`~._model.FittedModel.variance_moments`)."""
        return self._pass(lambda R: (R.X.T @ R.X, R.X.sum(axis=0), R.n,
                                     [Z.T @ Z for _, Z in R.factors]))

    def _refuse(self, what: str):
        raise ValueError(f"{what} needs the rows in memory; this GLMM was fitted from chunks")

    def with_nodes(self, n_agq: int):
        if int(n_agq) == 1:
            other = copy.copy(self)
            other._last = other._base = other._best = None
            return other
        self._refuse("adaptive Gauss-Hermite quadrature (n_agq > 1)")

    def with_response(self, y):
        self._refuse("a refit to another response")

    def with_columns(self, columns):
        self._refuse("a refit with other fixed effects")

    def _agq(self, m):
        self._refuse("adaptive Gauss-Hermite quadrature (n_agq > 1)")


def chunked_glm_start(source: ChunkSource, family: Family, link: Link, p: int,
                      max_iter: int = 50) -> np.ndarray:
    """:func:`~._glmm.glm_start` (the GLM without random effects by IRLS, lme4's start)
    with one pass over the chunks per step."""
    beta = np.zeros(p)

    def one(R, beta, first):
        if first:
            mu = (R.prior * R.y + 0.5) / (R.prior + 1.0) if family.name == "binomial" else R.y + 0.1
            eta = link(mu)
        else:
            eta = R.offset + R.X @ beta
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            mu, d1, _ = link.derivatives(eta)
            var, _ = family.variance(np.clip(mu, 1e-12, 1 - 1e-12) if family.name == "binomial" else mu)
            w = R.prior * d1 * d1 / np.maximum(var, 1e-300)
            z = eta - R.offset + (R.y - mu) / d1
        ok = bool(np.all(np.isfinite(w)) and np.all(np.isfinite(z)))
        if not ok:
            return False, np.zeros((p, p)), np.zeros(p)
        return True, R.X.T @ (w[:, None] * R.X), R.X.T @ (w * z)

    from scipy import linalg

    for it in range(max_iter):
        ok, xtwx, xtwz = source.total(lambda R: one(R, beta, it == 0))
        if not ok:
            break
        try:
            new = linalg.solve(xtwx, xtwz, assume_a="pos", check_finite=False)
        except (linalg.LinAlgError, ValueError):
            break
        done = np.max(np.abs(new - beta)) < 1e-10 * (1.0 + np.max(np.abs(new)))
        beta = new
        if done:
            break
    return beta
