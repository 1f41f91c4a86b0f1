"""Dense brute-force helpers for the property tests: random designs, an
independent maximiser of the dense likelihood, an independent convergence check.

Nothing here calls the package: the likelihood is the n x n multivariate normal density
of :func:`dense_loglik` (below), maximised with scipy over the natural parameters
``(Cholesky factor of cov_re, log scale)`` with beta profiled out by GLS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass
class Design:
    """One random data set; ``X`` excludes the intercept, ``X_full`` includes it if fitted."""

    X: np.ndarray
    y: np.ndarray
    Z: np.ndarray
    codes: np.ndarray
    weights: np.ndarray | None
    fit_intercept: bool

    @property
    def X_full(self) -> np.ndarray:
        if self.fit_intercept:
            return np.column_stack([np.ones(len(self.y)), self.X])
        return self.X


def make_design(sizes, p_extra, q, log_ratio, seed, fit_intercept=True, weights=False,
                slope_on_x=True) -> Design:
    """A random LMM data set.

    Parameters
    ----------
    sizes : list of int
        Rows per group (unbalanced, possibly 1).
    p_extra : int
        Covariates in X besides the intercept.
    q : int
        Columns of Z: an intercept, then slopes (on the first X covariates when
        ``slope_on_x``, otherwise on fresh covariates).
    log_ratio : float or None
        log10 of the random-effects variance over the residual variance; None for 0.
    """
    rng = np.random.default_rng(seed)
    m = len(sizes)
    codes = np.repeat(np.arange(m), sizes)
    rng.shuffle(codes)  # groups interleaved, as in real data
    n = codes.size
    X = rng.standard_normal((n, p_extra)) * rng.uniform(0.5, 3.0, p_extra) + rng.uniform(-2, 2, p_extra)
    slopes = []
    for j in range(q - 1):
        if slope_on_x and j < p_extra:
            slopes.append(X[:, j])
        else:
            slopes.append(rng.standard_normal(n) + rng.uniform(-1, 1))
    Z = np.column_stack([np.ones(n)] + slopes)
    if log_ratio is None:
        b = np.zeros((m, q))
    else:
        A = rng.standard_normal((q, q)) * 0.5 + np.eye(q)
        b = rng.standard_normal((m, q)) @ A.T * 10.0 ** (0.5 * log_ratio)
    if p_extra == 0:
        # intercept-only model: scikit-learn refuses an X without columns, so the
        # intercept is passed as a column of X
        X, fit_intercept = np.ones((n, 1)), False
    Xf = np.column_stack([np.ones(n), X]) if fit_intercept else X
    beta = rng.uniform(-2, 2, Xf.shape[1])
    w = rng.uniform(0.3, 3.0, n) if weights else None
    noise = rng.standard_normal(n) / (np.sqrt(w) if weights else 1.0)
    y = Xf @ beta + np.einsum("ij,ij->i", Z, b[codes]) + noise
    return Design(X, y, Z, codes, w, fit_intercept)


# ---- dense likelihood in natural parameters ---------------------------------------------

def _pack(cov_re: np.ndarray, log_scale: float, diagonal: bool) -> np.ndarray:
    q = cov_re.shape[0]
    if diagonal:
        return np.append(np.sqrt(np.maximum(np.diag(cov_re), 0.0)), log_scale)
    # a tiny ridge: a singular fit's cov_re has no Cholesky factor
    jitter = 1e-12 * max(np.trace(cov_re), 1e-300) * np.eye(q)
    L = np.linalg.cholesky(cov_re + jitter)
    return np.append(L[np.tril_indices(q)], log_scale)


class DenseLikelihood:
    """``(Cholesky entries of cov_re, log scale) -> log L``, beta profiled by GLS, dense.

    Written with an explicit ``V^{-1}`` (n is small) so that the analytic gradient is
    cheap: with ``P = V^{-1}`` (ML) or ``P = V^{-1} - V^{-1}X(X'V^{-1}X)^{-1}X'V^{-1}``
    (REML) and ``a = P y``, ``d log L = tr(G dV)`` with ``G = (a a' - P) / 2`` (Harville
    1977; beta at its GLS value, so it needs no derivative). ``dV/dL`` and ``dV/d log s``
    then give ``2 Z'(G o same)Z L`` and ``s tr(G W^{-1})``. The value agrees with
    :func:`profiled_dense_loglik` and the gradient with finite differences (tested).
    """

    def __init__(self, d: Design, reml: bool, diagonal: bool) -> None:
        self.X, self.y, self.Z, self.reml, self.diagonal = d.X_full, d.y, d.Z, reml, diagonal
        self.same = d.codes[:, None] == d.codes[None, :]
        self.inv_w = np.ones(len(d.y)) if d.weights is None else 1.0 / d.weights
        self.q = d.Z.shape[1]
        if diagonal:
            self._rows = self._cols = np.arange(self.q)
        else:
            self._rows, self._cols = np.tril_indices(self.q)

    def _evaluate(self, cov_re: np.ndarray, scale: float, gradient: bool):
        X, y, n, p = self.X, self.y, len(self.y), self.X.shape[1]
        V = self.same * (self.Z @ cov_re @ self.Z.T)
        V[np.diag_indices(n)] += scale * self.inv_w
        try:
            cf = linalg.cho_factor(V, lower=True, check_finite=False)
            v_inv = linalg.cho_solve(cf, np.eye(n), check_finite=False)
            vi_x = v_inv @ X
            xf = linalg.cho_factor(X.T @ vi_x, lower=True, check_finite=False)
        except (linalg.LinAlgError, ValueError):
            return -np.inf, None
        beta = linalg.cho_solve(xf, vi_x.T @ y, check_finite=False)
        a = v_inv @ (y - X @ beta)  # = P y in both cases
        logdet = 2.0 * np.log(np.diag(cf[0])).sum()
        llf = -0.5 * (n * _LOG_2PI + logdet + a @ (y - X @ beta))
        if self.reml:
            llf += 0.5 * p * _LOG_2PI - np.log(np.diag(xf[0])).sum()
        if not np.isfinite(llf):
            return -np.inf, None
        if not gradient:
            return float(llf), None
        P = v_inv
        if self.reml:
            P = v_inv - vi_x @ linalg.cho_solve(xf, vi_x.T, check_finite=False)
        G = 0.5 * (np.outer(a, a) - P)
        return float(llf), G

    def loglik(self, cov_re: np.ndarray, scale: float) -> float:
        return self._evaluate(cov_re, scale, gradient=False)[0]

    def _unpack(self, params):
        L = np.zeros((self.q, self.q))
        L[self._rows, self._cols] = params[:-1]
        return L, float(params[-1])

    def __call__(self, params: np.ndarray) -> float:
        L, log_scale = self._unpack(params)
        if not -80.0 < log_scale < 80.0:
            return -np.inf
        return self.loglik(L @ L.T, np.exp(log_scale))

    def neg_value_and_grad(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        L, log_scale = self._unpack(params)
        if not -80.0 < log_scale < 80.0:
            return np.inf, np.zeros_like(params)
        scale = np.exp(log_scale)
        llf, G = self._evaluate(L @ L.T, scale, gradient=True)
        if G is None:
            return np.inf, np.zeros_like(params)
        M = self.Z.T @ (G * self.same) @ self.Z
        d_l = 2.0 * M @ L
        grad = np.append(d_l[self._rows, self._cols], scale * np.dot(np.diag(G), self.inv_w))
        return -llf, -grad

    def multistart_max(self, cov_re: np.ndarray, scale: float, n_random: int = 3,
                       seed: int = 0, local: bool = False) -> tuple[float, np.ndarray]:
        """Best log L found by L-BFGS-B (unconstrained: the Cholesky entries may take any
        sign, so no bound can trap it) from the fit's own estimates, a start with
        the variance of y split evenly, and ``n_random`` random starts; ``local``: from
        the fit's estimates only. Returns (max, params)."""
        rng = np.random.default_rng(seed)
        var_y = float(np.var(self.y))
        z_rms = np.sqrt(np.mean(self.Z**2, axis=0))
        starts = [_pack(cov_re, np.log(scale), self.diagonal)]
        if local:
            n_random = 0
        else:
            starts.append(_pack(np.diag(0.5 * var_y / z_rms**2), np.log(0.5 * var_y), self.diagonal))
        k = starts[0].size - 1
        for _ in range(n_random):
            cov = rng.standard_normal((self.q, self.q)) * np.sqrt(var_y * 10.0 ** rng.uniform(-2, 1)) / z_rms[:, None]
            start = _pack(cov @ cov.T, np.log(var_y * 10.0 ** rng.uniform(-2, 0)), self.diagonal)
            starts.append(start[: k + 1])
        best_val, best_x = -np.inf, starts[0]
        for x0 in starts:
            if not np.isfinite(self(x0)):
                continue
            res = optimize.minimize(self.neg_value_and_grad, x0, jac=True, method="L-BFGS-B",
                                    options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10})
            if -res.fun > best_val:
                best_val, best_x = -res.fun, res.x
        return best_val, best_x


# ---- an independent profiled deviance of theta, for the convergence check -----------------

def dense_profiled_deviance(d: Design, theta: np.ndarray, reml: bool, diagonal: bool) -> float:
    """-2 log L (or the REML criterion) at ``theta``, beta and the scale profiled, dense.

    With ``V = scale * V0`` and ``V0 = W^{-1} + Z_blk (I kron L L') Z_blk'``, the scale's
    optimum is ``r' V0^{-1} r / dof`` (dof = n, or n - p for REML), which gives
    ``log|V0| + dof (1 + log(2 pi r'V0^{-1}r / dof)) [+ log|X'V0^{-1}X| - ...]``.
    """
    X, y, Z = d.X_full, d.y, d.Z
    n, p, q = len(y), X.shape[1], Z.shape[1]
    L = np.zeros((q, q))
    if diagonal:
        L[np.diag_indices(q)] = theta
    else:
        cols, rows = np.triu_indices(q)  # lme4's order: lower triangle column by column
        L[rows, cols] = theta
    same = d.codes[:, None] == d.codes[None, :]
    V0 = same * (Z @ L @ L.T @ Z.T)
    V0[np.diag_indices(n)] += 1.0 if d.weights is None else 1.0 / d.weights
    cf = linalg.cho_factor(V0, lower=True)
    vi_x = linalg.cho_solve(cf, X)
    xf = linalg.cho_factor(X.T @ vi_x, lower=True)
    beta = linalg.cho_solve(xf, vi_x.T @ y)
    r = y - X @ beta
    dof = n - p if reml else n
    r2 = r @ linalg.cho_solve(cf, r)
    # log|V0| carries -sum(log w), as the package's -2 log L of a weighted fit does
    dev = 2.0 * np.log(np.diag(cf[0])).sum() + dof * (1.0 + _LOG_2PI + np.log(r2 / dof))
    if reml:
        dev += 2.0 * np.log(np.diag(xf[0])).sum()
    return float(dev)


def scaled_gradient(f, theta: np.ndarray, free: np.ndarray, h: float = 1e-4) -> tuple[float, np.ndarray]:
    """lme4's convergence measure ``max |H^{-1} g|`` over the ``free`` entries, from
    central finite differences of ``f``; also returns the Hessian's eigenvalues."""
    idx = np.flatnonzero(free)
    k = idx.size
    if k == 0:
        return 0.0, np.ones(0)
    steps = h * np.maximum(np.abs(theta[idx]), 0.1)
    f0 = f(theta)
    g = np.empty(k)
    H = np.empty((k, k))
    E = np.zeros((k, theta.size))
    E[np.arange(k), idx] = steps
    for a in range(k):
        fp, fm = f(theta + E[a]), f(theta - E[a])
        g[a] = (fp - fm) / (2 * steps[a])
        H[a, a] = (fp - 2 * f0 + fm) / steps[a] ** 2
        for b in range(a):
            H[a, b] = H[b, a] = (f(theta + E[a] + E[b]) - f(theta + E[a] - E[b])
                                 - f(theta - E[a] + E[b]) + f(theta - E[a] - E[b])) / (4 * steps[a] * steps[b])
    eig = np.linalg.eigvalsh(H)
    if eig.min() <= 0:
        return np.inf, eig
    return float(np.max(np.abs(np.linalg.solve(H, g)))), eig


# ---- several random-effects terms ---------------------------------------------------

@dataclass
class TermsDesign:
    """A random data set with several random-effects terms (crossed or nested).

    ``factors`` holds per term ``(name, codes, Z, diagonal)``; ``X`` excludes the
    intercept, which is always fitted.
    """

    X: np.ndarray
    y: np.ndarray
    factors: list

    @property
    def X_full(self) -> np.ndarray:
        return np.column_stack([np.ones(len(self.y)), self.X])

    @property
    def groups(self) -> dict:
        return {name: codes for name, codes, _, _ in self.factors}

    @property
    def Z(self) -> dict:
        return {name: Z for name, _, Z, _ in self.factors}


def make_terms_design(nested: bool, m_a: int, m_b: int, sizes: list[int], slopes: str,
                      log_ratios: tuple, diagonal: tuple, x_scale: float, x_shift: float,
                      seed: int) -> TermsDesign:
    """Two factors ``a`` and ``b``; ``m_b`` is the number of inner levels per outer level
    when ``nested``; ``sizes`` the rows per level of ``b`` (nested) or the rows of each
    of ``len(sizes)`` blocks of random assignments (crossed)."""
    rng = np.random.default_rng(seed)
    if nested:
        inner = np.repeat(np.arange(m_a * m_b), sizes[: m_a * m_b])
        a, b = inner // m_b, inner
    else:
        n = sum(sizes)
        a, b = rng.integers(0, m_a, n), rng.integers(0, m_b, n)
        a[:m_a], b[:m_b] = np.arange(m_a), np.arange(m_b)  # every level present
    n = a.size
    x = x_scale * (x_shift + rng.standard_normal(n))
    X = np.column_stack([x, rng.standard_normal(n) * 100.0 + 50.0])
    y = 3.0 + X @ (rng.uniform(-1, 1, 2) / np.std(X, axis=0)) + rng.standard_normal(n)
    factors = []
    for name, codes, slope, log_ratio, diag in (("a", a, slopes in ("a", "both"), log_ratios[0], diagonal[0]),
                                                ("b", b, slopes in ("b", "both"), log_ratios[1], diagonal[1])):
        Z = np.column_stack([np.ones(n), x]) if slope else np.ones((n, 1))
        m, q = int(codes.max()) + 1, Z.shape[1]
        if log_ratio is not None:
            # effects of comparable size on the intercept and on the (scaled) slope, correlated
            A = np.eye(q) + 0.5 * rng.standard_normal((q, q))
            sd = 10.0 ** (0.5 * log_ratio) / np.array([1.0, np.std(x)][:q])
            y = y + np.einsum("ij,ij->i", Z, (rng.standard_normal((m, q)) @ A.T * sd)[codes])
        factors.append((name, codes, Z, bool(diag and q > 1)))
    return TermsDesign(X, y, factors)


class DenseTermsDeviance:
    """The profiled deviance of ``theta`` for several terms, from the n x n covariance.

    ``theta`` is per term the free entries of the relative factor ``L_k`` (``cov_k =
    scale L_k L_k'``): the lower triangle row by row, or the diagonal for a diagonal term.
    The entries are unconstrained (``L_k L_k'`` does not care about signs), so scipy may
    minimise over them without bounds. With ``V0 = I + sum_k Zb_k (I kron L_k L_k') Zb_k'``
    (``Zb_k`` the n x m_k q_k block design of term k), beta by GLS and the scale at its
    optimum ``r'V0^{-1}r / dof``:

        dev = log|V0| + dof (1 + log(2 pi r'V0^{-1}r / dof)) [+ log|X'V0^{-1}X| for REML]

    and, with ``P = V0^{-1}`` (ML) or ``V0^{-1} - V0^{-1}X(X'V0^{-1}X)^{-1}X'V0^{-1}``
    (REML) and ``a = P y``, ``d dev = tr((P - dof a a' / r'V0^{-1}r) dV0)`` (the GLS beta
    needs no derivative), so ``d dev / d L_k = 2 (sum over levels of the q_k x q_k diagonal
    blocks of Zb_k' H Zb_k) L_k``. No code is shared with the package.
    """

    def __init__(self, d: TermsDesign, reml: bool) -> None:
        self.X, self.y, self.reml = d.X_full, d.y, reml
        n = len(d.y)
        self.blocks, self.layout, self.sizes = [], [], []
        self.z_rms = [np.sqrt(np.mean(Z**2, axis=0)) for _, _, Z, _ in d.factors]
        for _, codes, Z, diagonal in d.factors:
            m, q = int(codes.max()) + 1, Z.shape[1]
            Zb = np.zeros((n, m * q))
            for j in range(q):
                Zb[np.arange(n), codes * q + j] = Z[:, j]
            self.blocks.append((Zb, m, q))
            idx = (np.arange(q), np.arange(q)) if diagonal else np.tril_indices(q)
            self.layout.append(idx)
            self.sizes.append(idx[0].size)
        self.n_theta = sum(self.sizes)

    def lams(self, theta: np.ndarray) -> list[np.ndarray]:
        out, off = [], 0
        for (_, _, q), idx, k in zip(self.blocks, self.layout, self.sizes):
            L = np.zeros((q, q))
            L[idx] = theta[off:off + k]
            out.append(L)
            off += k
        return out

    def theta_of(self, covs: list[np.ndarray], scale: float) -> np.ndarray:
        """theta of relative covariances ``covs / scale`` (a tiny ridge for singular ones)."""
        parts = []
        for cov, idx in zip(covs, self.layout):
            rel = np.asarray(cov, dtype=float) / scale
            q = rel.shape[0]
            L = np.linalg.cholesky(rel + 1e-12 * max(np.trace(rel), 1e-300) * np.eye(q))
            parts.append(L[idx])
        return np.concatenate(parts)

    def _V0(self, theta):
        V0 = np.eye(len(self.y))
        for (Zb, m, q), L in zip(self.blocks, self.lams(theta)):
            ZL = Zb @ np.kron(np.eye(m), L)
            V0 += ZL @ ZL.T
        return V0

    def loglik(self, covs: list[np.ndarray], scale: float) -> tuple[float, np.ndarray]:
        """log L (REML criterion) at the given covariances and scale, beta by GLS."""
        n = len(self.y)
        V = scale * np.eye(n)
        for (Zb, m, q), cov in zip(self.blocks, covs):
            V += Zb @ np.kron(np.eye(m), np.asarray(cov, dtype=float)) @ Zb.T
        cf = linalg.cho_factor(V, lower=True)
        vi_x = linalg.cho_solve(cf, self.X)
        xf = linalg.cho_factor(self.X.T @ vi_x, lower=True)
        beta = linalg.cho_solve(xf, vi_x.T @ self.y)
        r = self.y - self.X @ beta
        llf = -0.5 * (n * _LOG_2PI + 2.0 * np.log(np.diag(cf[0])).sum() + r @ linalg.cho_solve(cf, r))
        if self.reml:
            llf += 0.5 * self.X.shape[1] * _LOG_2PI - np.log(np.diag(xf[0])).sum()
        return float(llf), beta

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        X, y, n, p = self.X, self.y, len(self.y), self.X.shape[1]
        try:
            cf = linalg.cho_factor(self._V0(theta), lower=True, check_finite=False)
            v_inv = linalg.cho_solve(cf, np.eye(n), check_finite=False)
            vi_x = v_inv @ X
            xf = linalg.cho_factor(X.T @ vi_x, lower=True, check_finite=False)
        except (linalg.LinAlgError, ValueError):
            return np.inf, np.zeros_like(theta)
        beta = linalg.cho_solve(xf, vi_x.T @ y, check_finite=False)
        r = y - X @ beta
        a = v_inv @ r
        r2 = float(r @ a)
        dof = n - p if self.reml else n
        dev = 2.0 * np.log(np.diag(cf[0])).sum() + dof * (1.0 + _LOG_2PI + np.log(r2 / dof))
        P = v_inv
        if self.reml:
            dev += 2.0 * np.log(np.diag(xf[0])).sum()
            P = v_inv - vi_x @ linalg.cho_solve(xf, vi_x.T, check_finite=False)
        H = P - (dof / r2) * np.outer(a, a)
        grad = []
        for (Zb, m, q), L, idx in zip(self.blocks, self.lams(theta), self.layout):
            M = (Zb.T @ H @ Zb).reshape(m, q, m, q)[np.arange(m), :, np.arange(m), :].sum(axis=0)
            grad.append((2.0 * M @ L)[idx])
        if not np.isfinite(dev):
            return np.inf, np.zeros_like(theta)
        return float(dev), np.concatenate(grad)

    def __call__(self, theta: np.ndarray) -> float:
        return self.value_and_grad(theta)[0]

    def multistart_min(self, starts: list[np.ndarray], n_random: int = 3, seed: int = 0) -> float:
        """Smallest deviance L-BFGS-B finds from ``starts``, from ``L_k = I``, from a small
        start and from ``n_random`` random ones. It works on ``theta`` with row ``i`` of
        each ``L_k`` divided by the root mean square of column ``i`` of ``Z_k`` (so that a
        badly scaled slope does not stall it) and without bounds (signs are free)."""
        rng = np.random.default_rng(seed)
        unit = np.concatenate([1.0 / rms[idx[0]] for rms, idx in zip(self.z_rms, self.layout)])
        on_diag = np.concatenate([(idx[0] == idx[1]).astype(float) for idx in self.layout])
        scaled = [np.asarray(x0, dtype=float) / unit for x0 in starts] + [on_diag, 0.1 * on_diag]
        scaled += [on_diag * 10.0 ** rng.uniform(-2, 1, self.n_theta)
                   + (1 - on_diag) * rng.standard_normal(self.n_theta) for _ in range(n_random)]

        def f(w):
            value, grad = self.value_and_grad(w * unit)
            return value, grad * unit

        best = np.inf
        for w0 in scaled:
            res = optimize.minimize(f, w0, jac=True, method="L-BFGS-B",
                                    options={"maxiter": 3000, "ftol": 1e-15, "gtol": 1e-9})
            best = min(best, float(res.fun))
        return best


# ---- the dense log-likelihood in lme4's parametrisation, for small n -----------------------
#
# y ~ N(X beta, V) with V = scale * (W^{-1} + Z_blk (I_m kron Lambda Lambda') Z_blk'), written
# out as an n x n matrix: no sufficient statistics, no profiling, no shared code with the
# package. REML adds -0.5 log|X'V^{-1}X| + 0.5 p log(2 pi) (Harville 1977), the
# convention lme4 uses for its REML criterion.


def dense_loglik(X, y, Z, codes, beta, cov_re, scale, reml, weights=None):
    n = len(y)
    same = codes[:, None] == codes[None, :]
    V = same * (Z @ cov_re @ Z.T)
    V[np.diag_indices(n)] += scale / (np.ones(n) if weights is None else weights)
    sign, logdet = np.linalg.slogdet(V)
    assert sign > 0
    r = y - X @ beta
    llf = -0.5 * (n * np.log(2 * np.pi) + logdet + r @ np.linalg.solve(V, r))
    if reml:
        p = X.shape[1]
        xvx = X.T @ np.linalg.solve(V, X)
        llf += 0.5 * p * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(xvx)[1]
    return llf


def profiled_dense_loglik(X, y, Z, codes, cov_re, scale, reml, weights=None):
    """Dense log-likelihood at the GLS estimate of beta for the given variances."""
    n = len(y)
    same = codes[:, None] == codes[None, :]
    V = same * (Z @ cov_re @ Z.T)
    V[np.diag_indices(n)] += scale / (np.ones(n) if weights is None else weights)
    vi_x = np.linalg.solve(V, X)
    beta = np.linalg.solve(X.T @ vi_x, vi_x.T @ y)
    return dense_loglik(X, y, Z, codes, beta, cov_re, scale, reml, weights), beta


def profiled_dense_ml_deviance(X, y, Z, codes, cov_re, scale):
    """``-2`` times :func:`profiled_dense_loglik` (ML) through one Cholesky factor of ``V``.

    The same dense likelihood: ``V = L L'``, the GLS fit on the whitened ``L^{-1} X`` and
    ``L^{-1} y`` (normal equations), ``log|V| = 2 sum log L_ii``. A few times faster than
    three dense solves and two determinants per call, for oracles that minimise it
    thousands of times; inf where ``V`` is not positive definite.
    """
    n = len(y)
    same = codes[:, None] == codes[None, :]
    V = same * (Z @ cov_re @ Z.T)
    V[np.diag_indices(n)] += scale
    try:
        L = np.linalg.cholesky(V)
    except np.linalg.LinAlgError:
        return np.inf
    wxy = linalg.solve_triangular(L, np.column_stack([X, y]), lower=True, check_finite=False)
    wx, wy = wxy[:, :-1], wxy[:, -1]
    beta = np.linalg.solve(wx.T @ wx, wx.T @ wy)
    r = wy - wx @ beta
    return float(n * np.log(2 * np.pi) + 2.0 * np.log(np.diag(L)).sum() + r @ r)


def exact_gls_beta(X, y, Z, codes, lam):
    """The GLS fixed effects at a given relative covariance factor, in exact arithmetic.

    ``V`` is proportional to ``I + Z_blk (I_m kron lam lam') Z_blk'`` (one grouping
    factor; ``sigma^2`` cancels from beta). Every input double is taken as the exact binary
    fraction it is and everything after is rational (``fractions.Fraction``): per group
    Woodbury, ``V_g^{-1} = I - Z_g lam M_g^{-1} lam' Z_g'`` with ``M_g = I + lam' Z_g' Z_g
    lam`` (q x q), then ``X'V^{-1}X beta = X'V^{-1}y`` by exact elimination. No rounding
    anywhere: the answer is the exact solution of the model at those inputs.

    Returns
    -------
    beta : ndarray of shape (p,)
        The exact solution rounded once to double.
    a_inv : ndarray of shape (p, p)
        ``(X'V^{-1}X)^{-1}`` (in units of ``sigma^2``), rounded to double.
    """
    from fractions import Fraction

    def frac(a):
        return [[Fraction(float(v)) for v in row] for row in np.atleast_2d(a)]

    def matmul(a, b):
        return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0))
                 for j in range(len(b[0]))] for i in range(len(a))]

    def transpose(a):
        return [list(col) for col in zip(*a)]

    def solve(a, b):
        """``a^{-1} b`` by Gauss-Jordan elimination with exact pivots."""
        n = len(a)
        aug = [list(a[i]) + list(b[i]) for i in range(n)]
        for k in range(n):
            piv = next(i for i in range(k, n) if aug[i][k] != 0)
            aug[k], aug[piv] = aug[piv], aug[k]
            aug[k] = [v / aug[k][k] for v in aug[k]]
            for i in range(n):
                if i != k and aug[i][k] != 0:
                    f = aug[i][k]
                    aug[i] = [u - f * v for u, v in zip(aug[i], aug[k])]
        return [row[n:] for row in aug]

    X, Z = np.atleast_2d(X), np.asarray(Z, dtype=float).reshape(len(y), -1)
    p, q = X.shape[1], Z.shape[1]
    lam_f = frac(lam)
    A = [[Fraction(0)] * (p + 1) for _ in range(p)]  # [X'V^{-1}X | X'V^{-1}y]
    for g in np.unique(codes):
        rows = np.flatnonzero(codes == g)
        D = frac(np.column_stack([X[rows], y[rows]]))  # (n_g, p + 1)
        ZL = matmul(frac(Z[rows]), lam_f)  # (n_g, q)
        M = matmul(transpose(ZL), ZL)
        for i in range(q):
            M[i][i] += 1
        LD = matmul(transpose(ZL), D)  # lam' Z_g' [X y]
        MLD = solve(M, LD)
        DD = matmul(transpose([r[:p] for r in D]), D)  # X_g'[X_g y_g]
        for i in range(p):
            for j in range(p + 1):
                A[i][j] += DD[i][j] - sum((LD[k][i] * MLD[k][j] for k in range(q)), Fraction(0))
    sol = solve([row[:p] for row in A], [row[p:] + [Fraction(int(i == j)) for j in range(p)]
                                          for i, row in enumerate(A)])
    beta = np.array([float(row[0]) for row in sol])
    a_inv = np.array([[float(v) for v in row[1:]] for row in sol])
    return beta, a_inv


def correlation_matrix(kind: str, value: float, t: np.ndarray) -> np.ndarray:
    """nlme's correlation of the rows of one residual group at times ``t``: ``ar1``/``car1``
    ``phi^d``, ``exp`` ``exp(-d / range)``, ``cs`` ``rho`` off the diagonal."""
    d = np.abs(t[:, None] - t[None, :])
    if kind in ("ar1", "car1"):
        return np.where(d == 0, 1.0, np.sign(value) ** np.round(d) * np.abs(value) ** d)
    if kind == "exp":
        return np.exp(-d / value)
    return np.where(d == 0, 1.0, value)
