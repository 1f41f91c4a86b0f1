"""Time the parametric bootstrap against lme4's ``bootMer`` and mixedlm 1.3's ``bootMer``.

Cases (REML fits, as lme4's default):

* ``sleepstudy``: ``Reaction ~ Days + (Days | Subject)`` (180 rows, 18 subjects).
* ``insteval``: ``y ~ service + (1 | s) + (1 | d) + (1 | dept)`` (73,421 rows; 2,972 x
  1,128 x 14 crossed levels).
* ``cbpp`` (a GLMM, Laplace): ``cbind(incidence, size - incidence) ~ period + (1 | herd)``
  (56 rows, 15 herds; binomial responses, each refit by PIRLS from the fit's parameters);
  lme4 ``glmer``; mixedlm has no GLMM bootstrap.

Each peer fits the model once (untimed), then ``n_boot`` parametric bootstrap replicates
are timed: ours ``est.bootstrap(n_boot, n_jobs=...)`` (simulation and refits, every
parameter kept); lme4 ``bootMer(fit, function(m) c(fixef(m), sigma(m), getME(m, "theta")),
nsim)`` timed inside R with ``system.time``; mixedlm ``bootMer(result, nsim)``. Slow peers
may run fewer replicates (``--peer-n-boot``); their time is then also given scaled to
``n_boot`` (marked ``~``). The table prints best-of-``--repeat`` times, the ratio to ours
(single process) and, as a check that the peers did the same work, the bootstrap
standard error of the fixed-effect slope (sleepstudy ``Days``, InstEval ``service``),
which agree to Monte Carlo error (about 2% with 1,000 replicates).

Usage
-----
::

    python benchmarks/bench_bootstrap.py                       # sleepstudy, 1,000 replicates
    python benchmarks/bench_bootstrap.py --n-jobs 1,2 --repeat 5
    python benchmarks/bench_bootstrap.py --case insteval --n-boot 1000 --peers ours --repeat 1
    python benchmarks/bench_bootstrap.py --case insteval --n-boot 20 --peers ours,lme4
    python benchmarks/bench_bootstrap.py --case cbpp --n-boot 1000 --peers ours,lme4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _bench_env as env  # noqa: E402
from bench_fit import best_of, unavailable  # noqa: E402

CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "Days"),
    "insteval": ("y ~ service + (1 | s) + (1 | d) + (1 | dept)", "service"),
    "cbpp": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "period2"),
}
# GLMM cases: their family (fitted by glmer); the others by lmer
FAMILY = {"cbpp": "binomial"}

R_SCRIPT = r"""
suppressMessages(library(lme4))
a <- commandArgs(TRUE)
d <- read.csv(a[1])
for (v in strsplit(a[5], ",")[[1]]) if (nchar(v)) d[[v]] <- factor(d[[v]])
fit <- if (a[7] == "gaussian") lmer(as.formula(a[2]), d) else glmer(as.formula(a[2]), d, family = a[7])
best <- Inf
for (i in seq_len(as.integer(a[4]))) {
  t <- system.time(b <- bootMer(fit, function(m) c(fixef(m), sigma(m), getME(m, "theta")),
                                nsim = as.integer(a[3]), seed = i))[["elapsed"]]
  best <- min(best, t)
}
se <- sd(b$t[, a[6]], na.rm = TRUE)
cat(sprintf("RESULT %.6f %.10f %d\n", best, se, sum(is.na(b$t[, 1]))))
"""


def load(case: str):
    from mixedlm_sklearn.datasets import load_cbpp, load_insteval, load_sleepstudy

    if case == "sleepstudy":
        return load_sleepstudy(), []
    if case == "cbpp":
        return load_cbpp(), ["herd", "period"]
    df = load_insteval()
    return df, ["s", "d", "dept", "service"]


def ours(df, case, n_boot, repeat, n_jobs):
    from mixedlm_sklearn import glmer, lmer

    formula, slope = CASES[case]
    est = glmer(formula, df, family=FAMILY[case]) if case in FAMILY else lmer(formula, df)
    slope_name = slope if case != "insteval" else [c for c in est.fe_params_.index if c != "(Intercept)"][0]
    est.bootstrap(n_boot=2 * max(n_jobs, 1), random_state=0, n_jobs=n_jobs)  # warm-up (workers, imports)
    t, boot = best_of(lambda: est.bootstrap(n_boot=n_boot, random_state=1, n_jobs=n_jobs), repeat)
    return t, float(boot.replicates[slope_name].std()), boot.n_failed, boot.n_nonconverged


def mixedlm_peer(df, case, n_boot, repeat):
    import mixedlm
    from mixedlm.inference.bootstrap import bootMer

    formula, slope = CASES[case]
    res = mixedlm.lmer(formula, df, REML=True)
    t, boot = best_of(lambda: bootMer(res, nsim=n_boot, seed=1), repeat)
    names = list(boot.fixed_names)
    col = names.index(next(n for n in names if n != "(Intercept)"))
    return t, float(np.nanstd(boot.beta_samples[:, col], ddof=1)), int(boot.n_failed)


def lme4_peer(df, case, factors, n_boot, repeat):
    formula, slope = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        csv, script = os.path.join(tmp, "data.csv"), os.path.join(tmp, "boot.R")
        df.to_csv(csv, index=False)
        with open(script, "w") as fh:
            fh.write(R_SCRIPT)
        column = slope if case != "insteval" else "service1"
        out = subprocess.run(["Rscript", script, csv, formula, str(n_boot), str(repeat), ",".join(factors),
                              column, FAMILY.get(case, "gaussian")], capture_output=True, text=True,
                             timeout=24 * 3600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            _, t, se, failed = line.split()
            return float(t), float(se), int(failed)
    raise RuntimeError(out.stderr[-2000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES), default="sleepstudy")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--peer-n-boot", type=str, default="lme4=1000,mixedlm=200",
                    help="replicates for the peers (slow peers run fewer; times scaled)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-jobs", type=str, default="1,2", help="ours: worker counts to time")
    ap.add_argument("--peers", type=str, default="ours,lme4,mixedlm")
    args = ap.parse_args()
    peers = args.peers.split(",")
    peer_n = {k: int(v) for k, v in (kv.split("=") for kv in args.peer_n_boot.split(",") if kv)}
    df, factors = load(args.case)
    env.header(f"{args.case}: {CASES[args.case][0]}, {args.n_boot} parametric bootstrap replicates; "
               f"best of {args.repeat}", r="lme4" in peers)
    rows = []
    base = None
    if "ours" in peers:
        for n_jobs in [int(j) for j in args.n_jobs.split(",")]:
            t, se, failed, slow = ours(df, args.case, args.n_boot, args.repeat, n_jobs)
            base = t if base is None else base
            rows.append((f"ours (n_jobs={n_jobs})", args.n_boot, t, t, se,
                         f"{failed} failed, {slow} not converged"))
    if "lme4" in peers:
        n = peer_n.get("lme4", args.n_boot)
        why = unavailable("lme4")
        if why:
            rows.append(("lme4 bootMer", n, np.nan, np.nan, np.nan, why))
        else:
            t, se, failed = lme4_peer(df, args.case, factors, n, args.repeat)
            rows.append(("lme4 bootMer", n, t, t * args.n_boot / n, se, f"{failed} failed"))
    if "mixedlm" in peers:
        n = peer_n.get("mixedlm", args.n_boot)
        why = "no GLMM bootstrap" if args.case in FAMILY else unavailable("mixedlm")
        if why:
            rows.append(("mixedlm bootMer", n, np.nan, np.nan, np.nan, why))
        else:
            t, se, failed = mixedlm_peer(df, args.case, n, args.repeat)
            rows.append(("mixedlm 1.3 bootMer", n, t, t * args.n_boot / n, se, f"{failed} failed"))
    print(f"{'peer':24s} {'reps':>6s} {'time (s)':>10s} {f'per {args.n_boot}':>12s} {'x ours':>8s} "
          f"{'SE slope':>10s}  note")
    for name, n, t, scaled, se, note in rows:
        approx = "~" if n != args.n_boot else " "
        ratio = scaled / base if base else np.nan
        print(f"{name:24s} {n:6d} {t:10.3f} {approx}{scaled:11.3f} {ratio:8.1f} {se:10.4f}  {note}")
    env.footer()


if __name__ == "__main__":
    main()
