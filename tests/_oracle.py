"""Dense brute-force log-likelihood of the linear mixed model, for small n.

y ~ N(X beta, V) with V = scale * (W^{-1} + Z_blk (I_m kron Lambda Lambda') Z_blk'), written
out as an n x n matrix: no sufficient statistics, no profiling, no shared code with the
package. REML adds -0.5 log|X'V^{-1}X| + 0.5 p log(2 pi) (Harville 1977), the
convention lme4 uses for its REML criterion.
"""

import numpy as np


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
