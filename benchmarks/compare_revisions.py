"""Time the same fits with two checkouts of the package, interleaved (before/after a change).

Each measurement runs in a fresh interpreter with one checkout first on ``sys.path`` and
prints the best of ``--repeat`` whole ``MixedLMRegressor.fit`` calls (after one untimed
warm-up fit). The checkouts alternate, A B A B ..., ``--rounds`` times per case, so a drift
in the machine's speed hits both alike. Cases: the synthetic data of ``bench_fit.py``
(REML, correlated random intercept and slopes) at 10^4, 10^5 and 10^6 rows, and InstEval's
crossed ``y ~ service + (1|s) + (1|d) + (1|dept)`` of ``bench_insteval.py``.

Usage
-----
::

    git worktree add /tmp/before <commit>
    python benchmarks/compare_revisions.py /tmp/before .
    python benchmarks/compare_revisions.py /tmp/before . --cases 1e4,insteval --rounds 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

REPEATS = {"1e4": 40, "1e5": 15, "1e6": 7, "insteval": 5}

_CHILD = r"""
import sys, time
root, case, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
import pandas as pd
from mixedlm_sklearn import MixedLMRegressor
if case == "insteval":
    from mixedlm_sklearn.datasets import load_insteval
    df = load_insteval()
    X = pd.get_dummies(df[["service"]], drop_first=True).astype(float)
    fit = lambda: MixedLMRegressor().fit(X, df["y"], groups=df[["s", "d", "dept"]])
else:
    sys.path.insert(0, sys.argv[4])
    import bench_fit
    d = bench_fit.make_data(int(float(case)), 0)
    fit = lambda: MixedLMRegressor(reml=True).fit(d["X"], d["y"], groups=d["g"], Z=d["Z"])
fit()
best = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter()
    est = fit()
    best = min(best, time.perf_counter() - t0)
print(best, est.llf_)
"""


def run(root: str, case: str, repeat: int) -> tuple[float, float]:
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(root), case, str(repeat), here],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="checkout A (e.g. the revision before a change)")
    ap.add_argument("b", help="checkout B")
    ap.add_argument("--cases", default="1e4,1e5,1e6,insteval")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"# load (1, 5, 15 min): {os.getloadavg()}  cpus: {os.cpu_count()}")
    print(f"{'case':<10} {'A best of each round (ms)':<32} {'B best of each round (ms)':<32} B/A (medians)  logLik A - B")
    for case in args.cases.split(","):
        a, b = [], []
        for _ in range(args.rounds):
            a.append(run(args.a, case, REPEATS[case]))
            b.append(run(args.b, case, REPEATS[case]))
        ta = sorted(t for t, _ in a)
        tb = sorted(t for t, _ in b)
        ratio = tb[len(tb) // 2] / ta[len(ta) // 2]
        fmt = lambda ts: " ".join(f"{1e3 * t:.1f}" for t in ts)
        print(f"{case:<10} {fmt(ta):<32} {fmt(tb):<32} {ratio:>5.2f}          {a[0][1] - b[0][1]:.2e}")
    print(f"# load at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
