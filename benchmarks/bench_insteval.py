"""Time the crossed InstEval fit against mixedlm (and lme4 when R is installed).

Model (lme4's documentation example): ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``,
REML, 73,421 rows; 2,972 students x 1,128 lecturers x 14 departments, on the InstEval
data bundled with mixedlm-sklearn. All peers fit the same data in one process run;
best of ``--repeat`` runs; the table gives time, ratio to ours and log-likelihood.

Usage: ``python benchmarks/bench_insteval.py [--repeat 5] [--peers ours,mixedlm,lme4]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _bench_env as env  # noqa: E402
from bench_fit import best_of, unavailable  # noqa: E402

FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"

R_SCRIPT = r"""
suppressMessages(library(lme4))
a <- commandArgs(TRUE)
d <- read.csv(a[1], colClasses = c(s = "factor", d = "factor", dept = "factor", service = "factor"))
best <- Inf
for (i in seq_len(as.integer(a[2]))) {
  best <- min(best, system.time(fit <- lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept), d))[["elapsed"]])
}
cat(sprintf("RESULT %.6f %.12f\n", best, as.numeric(logLik(fit))))
"""


def _ours(df, repeat):
    from mixedlm_sklearn import MixedLMRegressor

    X = (df[["service"]] == "1").astype(float)
    groups = df[["s", "d", "dept"]]
    # Timed: the whole fit from a DataFrame of labels (factor coding included).
    t, est = best_of(lambda: MixedLMRegressor().fit(X, df["y"], groups=groups), repeat)
    return t, est.llf_


def _mixedlm(df, repeat):
    import mixedlm

    t, res = best_of(lambda: mixedlm.lmer(FORMULA, df, REML=True), repeat)
    return t, float(res.logLik())


def _lme4(df, repeat):
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        csv, script = os.path.join(tmp, "insteval.csv"), os.path.join(tmp, "fit.R")
        df.to_csv(csv, index=False)
        with open(script, "w") as fh:
            fh.write(R_SCRIPT)
        out = subprocess.run(["Rscript", script, csv, str(repeat)], capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    _, t, llf = line.split()
    return float(t), float(llf)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--peers", default="ours,mixedlm,lme4")
    args = parser.parse_args(argv)
    from mixedlm_sklearn import MixedLMRegressor
    from mixedlm_sklearn.datasets import load_insteval

    env.header(f"crossed InstEval REML fit, best of {args.repeat} per peer", None, MixedLMRegressor,
               r="lme4" in args.peers)

    df = load_insteval()
    runners = {"ours": _ours, "mixedlm": _mixedlm, "lme4": _lme4}
    rows = []
    for peer in args.peers.split(","):
        why = unavailable(peer)
        if why:
            print(f"skipping {peer}: {why}")
            continue
        t, llf = runners[peer](df, args.repeat)
        rows.append((peer, t, llf))
    ours = next((t for p, t, _ in rows if p == "ours"), None)
    print(f"\nInstEval {FORMULA}, REML, {len(df):,} rows (best of {args.repeat})")
    print(f"{'peer':10s} {'time (s)':>9s} {'/ours':>7s} {'REML logLik':>16s}")
    for peer, t, llf in rows:
        ratio = f"{t / ours:7.2f}" if ours else "      -"
        print(f"{peer:10s} {t:9.3f} {ratio} {llf:16.6f}")
    env.footer()


if __name__ == "__main__":
    main()
