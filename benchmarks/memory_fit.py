"""Peak memory and time of one in-memory fit at 10^7 rows (issues 4 and 27).

The data (the 1e7 design of ``bench_fit.py``: 200,000 groups, p = 10, q = 3, REML) are
written to ``.npy`` files by a first process; a second, fresh process loads them and fits,
so its peak resident memory is the interpreter, the input arrays and what the fit adds.
Prints the fit time (``MixedLMRegressor(verbose=1).fit``, whose phase times are shown
too), the log-likelihood, the input size and the process's peak resident memory as a
multiple of the input (issue 27's targets: fit < 5 s, peak < 1.5x the input), with the
load average and threads as the other benchmarks print them.

Usage: ``python benchmarks/memory_fit.py [--rows 1e7] [--dir /tmp/mixedlm-memory] [--threads N]``
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def _write(rows: int, folder: Path) -> None:
    from bench_fit import make_data

    data = make_data(rows, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("X", "y", "g", "Z"):
        np.save(folder / f"{key}.npy", data[key])


def _peak_bytes() -> int:
    """This process's peak resident memory. Linux's ``VmHWM`` (reset by ``execve``); not
    ``getrusage``'s ``ru_maxrss``, which a child inherits from the parent that forked it
    and keeps across ``execve`` (the data generator's peak would show as the fit's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fit(folder: Path, threads: int | None) -> None:
    import _bench_env as env
    from mixedlm_sklearn import MixedLMRegressor

    arrays = {key: np.load(folder / f"{key}.npy") for key in ("X", "y", "g", "Z")}
    input_bytes = sum(a.nbytes for a in arrays.values())
    before = _peak_bytes()
    n_jobs = env.ours_n_jobs(MixedLMRegressor, threads)[0]
    start = time.perf_counter()
    est = MixedLMRegressor(verbose=1, **n_jobs).fit(arrays["X"], arrays["y"], groups=arrays["g"], Z=arrays["Z"])
    elapsed = time.perf_counter() - start
    peak = _peak_bytes()
    gib = 2.0**30
    print(f"rows {arrays['y'].size:,}, groups {est.n_groups_:,}: fit {elapsed:.2f} s (target < 5 s), "
          f"REML logLik {est.llf_:.4f}")
    print(f"input arrays {input_bytes / gib:.2f} GiB; process peak {peak / gib:.2f} GiB "
          f"(before the fit {before / gib:.2f} GiB); peak / input = {peak / input_bytes:.2f} (target < 1.5); "
          f"the fit's own increase / input = {(peak - before) / input_bytes:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1e7")
    parser.add_argument("--dir", default="/tmp/mixedlm-memory")
    parser.add_argument("--threads", type=int, default=None,
                        help="ours' n_jobs once it has one (recorded otherwise)")
    parser.add_argument("--fit-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.dir)
    if args.fit_only:
        _fit(folder, args.threads)
        return
    import _bench_env as env
    from mixedlm_sklearn import MixedLMRegressor

    env.header(f"one in-memory REML fit of {float(args.rows):.0e} rows in a fresh process: time and peak memory",
               args.threads, MixedLMRegressor)
    _write(int(float(args.rows)), folder)
    cmd = [sys.executable, __file__, "--dir", str(folder), "--fit-only"]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    subprocess.run(cmd, check=True)
    env.footer()


if __name__ == "__main__":
    main()
