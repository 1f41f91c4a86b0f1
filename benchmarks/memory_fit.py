"""Peak memory and time of one in-memory fit at 10^7 rows (issue 4).

The data (the 1e7 design of ``bench_fit.py``: 200,000 groups, p = 10, q = 3) are written
to ``.npy`` files by a first process; a second, fresh process loads them and fits, so
its peak resident memory is the input arrays plus what the fit adds. Prints both and
their ratio (target: under 2).

Usage: ``python benchmarks/memory_fit.py [--rows 1e7] [--dir /tmp/mixedlm-memory]``
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _write(rows: int, folder: Path) -> None:
    from bench_fit import make_data

    data = make_data(rows, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("X", "y", "g", "Z"):
        np.save(folder / f"{key}.npy", data[key])


def _fit(folder: Path) -> None:
    from mixedlm_sklearn import MixedLMRegressor

    arrays = {key: np.load(folder / f"{key}.npy") for key in ("X", "y", "g", "Z")}
    input_bytes = sum(a.nbytes for a in arrays.values())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    est = MixedLMRegressor(verbose=1).fit(arrays["X"], arrays["y"], groups=arrays["g"], Z=arrays["Z"])
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gib = 2.0**30
    print(f"rows {arrays['y'].size:,}, groups {est.n_groups_:,}: fit {elapsed:.2f} s, llf {est.llf_:.4f}")
    print(f"input arrays {input_bytes / gib:.2f} GiB; process peak {peak / gib:.2f} GiB "
          f"(before fit {before / gib:.2f} GiB); peak / input = {peak / input_bytes:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1e7")
    parser.add_argument("--dir", default="/tmp/mixedlm-memory")
    parser.add_argument("--fit-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.dir)
    if args.fit_only:
        _fit(folder)
        return
    _write(int(float(args.rows)), folder)
    subprocess.run([sys.executable, __file__, "--dir", str(folder), "--fit-only"], check=True)


if __name__ == "__main__":
    main()
