"""
Fitting data that arrive in chunks, or as a Dask DataFrame
==========================================================

The sufficient statistics of each chunk add up by group, so memory holds one chunk
plus a few numbers per group. Here a 200,000-row synthetic data set with 2,000 groups is
written to CSV and fitted from chunks of 50,000 rows, then from a Dask DataFrame (when
dask is installed); both equal the in-memory fit.

Run: ``python examples/large_data.py``
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mixedlm_sklearn import MixedLMRegressor


def make_data(n=200_000, m=2_000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.standard_normal((n, 3)), columns=["x0", "x1", "x2"])
    df["store"] = rng.integers(0, m, n)
    b = rng.multivariate_normal([0, 0], [[1.0, 0.2], [0.2, 0.25]], m)
    df["y"] = 2 + df[["x0", "x1", "x2"]] @ [0.5, -0.3, 0.1] + b[df["store"], 0] + b[df["store"], 1] * df["x0"] \
        + rng.standard_normal(n)
    return df


# %%
# The example's work: ``main`` (which the tests call too).


def main(n=200_000):
    df = make_data(n)
    spec = dict(y="y", groups="store", X=["x0", "x1", "x2"], Z=["(Intercept)", "x0"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stores.csv"
        df.to_csv(path, index=False)
        start = time.perf_counter()
        chunked = MixedLMRegressor(verbose=1).fit_chunks(pd.read_csv(path, chunksize=50_000), **spec)
        print(f"from CSV chunks: {time.perf_counter() - start:.2f} s, llf {chunked.llf_:.4f}")
    in_memory = MixedLMRegressor().fit(df[spec["X"]], df["y"], groups=df["store"],
                                       Z=np.column_stack([np.ones(len(df)), df["x0"]]))
    print(f"in memory: llf {in_memory.llf_:.4f}; max |cov_re difference| "
          f"{np.abs(chunked.cov_re_ - in_memory.cov_re_).max():.1e}")
    dask_fit = None
    try:
        import dask.dataframe as dd
    except ImportError:
        print("dask not installed: pip install 'mixedlm-sklearn[dask]'")
    else:
        ddf = dd.from_pandas(df.assign(one=1.0), npartitions=4)
        dask_fit = MixedLMRegressor().fit(ddf[spec["X"]], ddf["y"], groups=ddf["store"], Z=ddf[["one", "x0"]])
        print(f"from Dask partitions: llf {dask_fit.llf_:.4f}")
    return chunked, in_memory, dask_fit


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    main()
