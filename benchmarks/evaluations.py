"""Deterministic proxies of speed: deviance evaluations, iterations and log-likelihood per fit.

Timings on a shared machine are noise; the optimiser's path is not. This script fits a fixed
set of models once each and prints, per case, the number of deviance evaluations
(``model_.info.n_fev``), optimiser iterations (``model_.info.n_iter``) and the
log-likelihood. A refactor that should not change the optimiser's path (moving code,
porting a Newton loop onto a shared routine) must leave every line unchanged: LMM cases
identical counts and llf to 1e-10; GLMM cases no more evaluations and no lower llf.

Cases (the data of ``bench_small.py``, ``bench_fit.py``, ``bench_insteval.py``,
``bench_crossed.py`` and ``bench_glmm.py``):

=================  ==================================================================
sleepstudy         ``Reaction ~ Days + (Days | Subject)``, REML
dietox             ``Weight ~ Time + (Time | Pig)``, REML
orthodont          ``distance ~ age + (age | Subject)``, REML
insteval           ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, REML, 73,421 rows
single_1e5         ``bench_fit.make_data(1e5, 0)``: 10^5 rows, 5,000 groups, q = 3, REML
crossed_2e5        ``bench_crossed.synthetic(2e5, 1e4, 2e3)``: users x items, ML, exact (the
                   iterative path then exact Newton steps: ``info.n_fev`` counts the exact
                   steps only, ``n_iter`` both)
crossed_2e5_iter   the same with ``solver="iterative"``
cbpp               ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, Laplace
cbpp_agq25         the same with 25 quadrature nodes
grouse             ``TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)``, Poisson
verbagg            ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)``, Bernoulli
=================  ==================================================================

Usage
-----
::

    python benchmarks/evaluations.py                       # every case, this checkout
    python benchmarks/evaluations.py --cases sleepstudy,cbpp
    python benchmarks/evaluations.py --root /tmp/before    # the package of another checkout
    python benchmarks/evaluations.py > after.txt
    python benchmarks/evaluations.py --against before.txt  # exit status 1 on a change

With ``--against`` the output of an earlier run is read back and each case is marked
``same``, or what changed (LMM: any count or llf beyond 1e-10; GLMM: more evaluations or a
lower llf; fewer GLMM evaluations or a higher llf are marked ``better``).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
GLMM = ("cbpp", "cbpp_agq25", "grouse", "verbagg")


def _small(name: str):
    from mixedlm_sklearn import MixedLMRegressor
    from mixedlm_sklearn.datasets import load_dietox, load_orthodont, load_sleepstudy
    import numpy as np

    loader, yname, xname, gname = {
        "sleepstudy": (load_sleepstudy, "Reaction", "Days", "Subject"),
        "dietox": (load_dietox, "Weight", "Time", "Pig"),
        "orthodont": (load_orthodont, "distance", "age", "Subject"),
    }[name]
    df = loader()
    x = df[xname].to_numpy(float)
    Z = np.column_stack([np.ones(len(df)), x])
    return MixedLMRegressor().fit(x[:, None], df[yname].to_numpy(float), groups=df[gname].to_numpy(), Z=Z)


def _insteval():
    import pandas as pd

    from mixedlm_sklearn import MixedLMRegressor
    from mixedlm_sklearn.datasets import load_insteval

    df = load_insteval()
    X = pd.get_dummies(df[["service"]], drop_first=True).astype(float)
    return MixedLMRegressor().fit(X, df["y"], groups=df[["s", "d", "dept"]])


def _single():
    import bench_fit

    from mixedlm_sklearn import MixedLMRegressor

    d = bench_fit.make_data(100_000, 0)
    return MixedLMRegressor(reml=True).fit(d["X"], d["y"], groups=d["g"], Z=d["Z"])


def _crossed(solver: str):
    import pandas as pd
    import bench_crossed

    from mixedlm_sklearn import MixedLMRegressor

    x, y, u, item = bench_crossed.synthetic(200_000, 10_000, 2_000)
    return MixedLMRegressor(reml=False, solver=solver).fit(x, y, groups=pd.DataFrame({"u": u, "item": item}))


def _glmm(name: str):
    import bench_glmm

    from mixedlm_sklearn import glmer

    formula, load, family, n_agq, _ = bench_glmm.CASES[name]
    return glmer(formula, load(), family=family, n_agq=n_agq)


CASES = {
    "sleepstudy": lambda: _small("sleepstudy"),
    "dietox": lambda: _small("dietox"),
    "orthodont": lambda: _small("orthodont"),
    "insteval": _insteval,
    "single_1e5": _single,
    "crossed_2e5": lambda: _crossed("exact"),
    "crossed_2e5_iter": lambda: _crossed("iterative"),
    **{name: (lambda name=name: _glmm(name)) for name in GLMM},
}


def measure(case: str) -> tuple[int, int, float]:
    """(deviance evaluations, iterations, log-likelihood) of one fit of ``case``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a convergence note does not change the counts
        est = CASES[case]()
    info = est.model_.info
    return int(info.n_fev), int(info.n_iter), float(est.llf_)


def read(path: str) -> dict[str, tuple[int, int, float]]:
    """The table an earlier run printed."""
    rows = {}
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 4 and parts[0] in CASES:
                rows[parts[0]] = (int(parts[1]), int(parts[2]), float(parts[3]))
    return rows


def verdict(case: str, before: tuple[int, int, float], after: tuple[int, int, float]) -> str:
    (f0, i0, l0), (f1, i1, l1) = before, after
    if case in GLMM:
        worse = [w for w, bad in (("more evaluations", f1 > f0), ("lower llf", l1 < l0 - 1e-10)) if bad]
        if worse:
            return "WORSE: " + ", ".join(worse) + f" (was {f0} {i0} {l0:.10f})"
        return "same" if (f1, i1) == (f0, i0) and abs(l1 - l0) <= 1e-10 else f"better (was {f0} {i0} {l0:.10f})"
    if (f1, i1) == (f0, i0) and abs(l1 - l0) <= 1e-10:
        return "same"
    return f"CHANGED (was {f0} {i0} {l0:.10f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    ap.add_argument("--root", default=os.path.dirname(HERE), help="checkout whose package is measured")
    ap.add_argument("--against", help="an earlier output of this script to compare with")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.root))
    sys.path.insert(0, HERE)
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    before = read(args.against) if args.against else {}
    import mixedlm_sklearn

    print(f"# package: {os.path.dirname(os.path.abspath(mixedlm_sklearn.__file__))}")
    print(f"{'case':<18}{'n_fev':>7}{'n_iter':>8}{'llf':>22}")
    changed = False
    for case in cases:
        result = measure(case)
        line = f"{case:<18}{result[0]:>7}{result[1]:>8}{result[2]:>22.10f}"
        if case in before:
            note = verdict(case, before[case], result)
            changed |= note.startswith(("CHANGED", "WORSE"))
            line += f"  {note}"
        print(line, flush=True)
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
