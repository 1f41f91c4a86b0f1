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
