"""Time the same fits with two checkouts of the package, interleaved (before/after a change).

Each measurement runs in a fresh interpreter with one checkout first on ``sys.path`` and
prints the best of ``--repeat`` whole fits (after one untimed warm-up). The checkouts
alternate, A B A B ..., ``--rounds`` times per case, so a drift in the machine's speed hits
both alike. Cases: the synthetic data of ``bench_fit.py`` (REML, correlated random intercept
and slopes) at 10^4, 10^5 and 10^6 rows; InstEval's crossed ``y ~ service + (1|s) + (1|d) +
(1|dept)`` of ``bench_insteval.py``; ``small``: the three small REML fits of
``bench_small.py`` (sleepstudy, dietox, Orthodont, random intercept and slope) timed
together; ``glmm``: the four ``glmer`` fits of ``bench_glmm.py`` (cbpp Laplace and 25-node
AGQ, grouseticks Poisson, VerbAgg) timed together. The last column is the largest
log-likelihood difference between the checkouts over the case's fits.

Usage
-----
::

    git worktree add /tmp/before <commit>
    python benchmarks/compare_revisions.py /tmp/before .
    python benchmarks/compare_revisions.py /tmp/before . --cases 1e4,insteval --rounds 5
    python benchmarks/compare_revisions.py /tmp/before . --cases small,glmm

The evaluation counts behind these times (no timing, usable on a busy machine) are
``benchmarks/evaluations.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

REPEATS = {"1e4": 40, "1e5": 15, "1e6": 7, "insteval": 5, "small": 40, "glmm": 3}

_CHILD = r"""
import sys, time, warnings
root, case, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
import numpy as np
import pandas as pd
from mixedlm_sklearn import MixedLMRegressor
sys.path.insert(0, sys.argv[4])
if case == "insteval":
    from mixedlm_sklearn.datasets import load_insteval
    df = load_insteval()
    X = pd.get_dummies(df[["service"]], drop_first=True).astype(float)
    fits = [lambda: MixedLMRegressor().fit(X, df["y"], groups=df[["s", "d", "dept"]])]
elif case == "small":
    import bench_small
    def small(loader, yname, xname, gname):
        df = loader()
        x = df[xname].to_numpy(float)
        Z = np.column_stack([np.ones(len(df)), x])
        y, g = df[yname].to_numpy(float), df[gname].to_numpy()
        return lambda: MixedLMRegressor().fit(x[:, None], y, groups=g, Z=Z)
    fits = [small(*spec) for spec in bench_small.CASES.values()]
elif case == "glmm":
    import bench_glmm
    from mixedlm_sklearn import glmer
    def glmm(formula, load, family, n_agq, _):
        data = load()
        return lambda: glmer(formula, data, family=family, n_agq=n_agq)
    fits = [glmm(*spec) for spec in bench_glmm.CASES.values()]
else:
    import bench_fit
    d = bench_fit.make_data(int(float(case)), 0)
    fits = [lambda: MixedLMRegressor(reml=True).fit(d["X"], d["y"], groups=d["g"], Z=d["Z"])]
warnings.simplefilter("ignore")
ests = [fit() for fit in fits]
best = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter()
    ests = [fit() for fit in fits]
    best = min(best, time.perf_counter() - t0)
print(best, *[est.llf_ for est in ests])
"""


def run(root: str, case: str, repeat: int) -> tuple[float, list[float]]:
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(root), case, str(repeat), here],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), [float(v) for v in out[1:]]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="checkout A (e.g. the revision before a change)")
    ap.add_argument("b", help="checkout B")
    ap.add_argument("--cases", default="1e4,1e5,1e6,insteval",
                    help="comma-separated, from: " + ", ".join(REPEATS))
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
        diff = max((la - lb for la, lb in zip(a[0][1], b[0][1])), key=abs)
        print(f"{case:<10} {fmt(ta):<32} {fmt(tb):<32} {ratio:>5.2f}          {diff:.2e}")
    print(f"# load at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
