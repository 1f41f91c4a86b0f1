"""Profile-likelihood confidence intervals: ours ``conf_int(method="profile")`` vs lme4 ``confint(m)``.

Cases (REML fits, lme4's default; every parameter's 95% interval):

* ``sleepstudy``: ``Reaction ~ Days + (Days | Subject)`` (180 rows, 18 subjects; the
  bundled data, written to a CSV for R);
* ``oxboys``: nlme's Oxboys quadratic growth model ``height ~ age + I(age^2) + (age +
  I(age^2) | Subject)`` (234 rows, 26 boys, a 3 x 3 covariance). The data are not bundled:
  they are exported from R at run time (``Rscript -e 'write.csv(nlme::Oxboys, ...)'``) into
  a temporary directory; without R (or nlme) the case is skipped with a note.

lme4's call is ``confint(m)`` on ``m <- lmer(formula, d)``: the default method,
``"profile"``, for every parameter (``.sig01`` ... ``.sigma``, then the fixed effects),
level 0.95, as issue 27 timed it. Ours: ``lmer(formula, df).conf_int(method="profile")``
(its defaults: every parameter, lme4's scale and criterion). The model is fitted once per
side, untimed; the time is the best of ``--repeat`` calls of the interval function only
(ours: ``time.perf_counter``; lme4: ``system.time`` inside R, so R's start-up and the CSV
are not counted).

Printed per case: both fits' REML log-likelihood, both times and their ratio (lme4 /
ours; the issue's target is >= 3), then the endpoints side by side (matched by position:
lme4's ``.sig01, .sig02, ...`` are ours' standard deviations and correlations in the same
order), their differences, the largest absolute and relative difference over the
endpoints both report, and lme4's warnings. lme4's profile can miss an endpoint (NA) or
stop short; both are printed as they come, so a large difference says which side to
check against a brute-force profile (the tests have one).

Usage
-----
::

    python benchmarks/bench_profile.py                            # both cases, best of 3
    python benchmarks/bench_profile.py --cases sleepstudy --repeat 5
    python benchmarks/bench_profile.py --peers ours               # without R
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _bench_env as env  # noqa: E402

CASES = {
    "sleepstudy": "Reaction ~ Days + (Days | Subject)",
    "oxboys": "height ~ age + I(age^2) + (age + I(age^2) | Subject)",
}

R_SCRIPT = r"""
suppressMessages(library(lme4))
a <- commandArgs(TRUE)
d <- read.csv(a[1], colClasses = c(Subject = "factor"))
m <- lmer(as.formula(a[2]), d)
cat(sprintf("LOGLIK %.10f\n", as.numeric(logLik(m))))
msg <- m@optinfo$conv$lme4$messages
if (length(msg)) cat(paste0("WARN fit: ", gsub("\n", " ", msg), "\n"), sep = "")
best <- Inf
for (i in seq_len(as.integer(a[3]))) {
  w <- character(0)
  t <- system.time(ci <- withCallingHandlers(confint(m), warning = function(e) {
    w <<- c(w, conditionMessage(e)); invokeRestart("muffleWarning")
  }), gcFirst = TRUE)[["elapsed"]]
  best <- min(best, t)
}
cat(sprintf("TIME %.6f\n", best))
for (v in unique(w)) cat("WARN confint: ", gsub("\n", " ", v), "\n", sep = "")
for (i in seq_len(nrow(ci))) cat(sprintf("CI %s %.10g %.10g\n", rownames(ci)[i], ci[i, 1], ci[i, 2]))
"""


def load_case(name: str, tmp: str) -> tuple[pd.DataFrame | None, str]:
    """The case's data and, when they cannot be had, why."""
    if name == "sleepstudy":
        from mixedlm_sklearn.datasets import load_sleepstudy

        df = load_sleepstudy()
        df["Subject"] = df["Subject"].astype(str)
        return df, ""
    why = env.r_available(("nlme",))
    if why:
        return None, f"Oxboys comes from R's nlme at run time: {why}"
    path = os.path.join(tmp, "oxboys.csv")
    env.run_r(f'write.csv(as.data.frame(nlme::Oxboys), "{path}", row.names = FALSE)', [])
    df = pd.read_csv(path, dtype={"Subject": str, "Occasion": str})
    return df, ""


def ours(df: pd.DataFrame, formula: str, repeat: int) -> dict:
    from mixedlm_sklearn import lmer

    fit = lmer(formula, df)  # REML
    best, ci = np.inf, None
    for _ in range(repeat):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            ci = fit.conf_int(method="profile")
            best = min(best, time.perf_counter() - start)
    notes = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return {"time": best, "llf": float(fit.llf_), "names": list(ci.index),
            "lower": ci["lower"].to_numpy(float), "upper": ci["upper"].to_numpy(float), "notes": notes}


def lme4(df: pd.DataFrame, formula: str, repeat: int, tmp: str) -> dict:
    path = os.path.join(tmp, "data.csv")
    df.to_csv(path, index=False)  # shortest round-trip floats: the same data
    out = env.run_r(R_SCRIPT, [path, formula, str(repeat)])
    res = {"names": [], "lower": [], "upper": [], "notes": []}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        if key == "LOGLIK":
            res["llf"] = float(rest)
        elif key == "TIME":
            res["time"] = float(rest)
        elif key == "WARN":
            res["notes"].append(rest)
        elif key == "CI":
            name, lo, hi = rest.rsplit(" ", 2)
            res["names"].append(name)
            res["lower"].append(float(lo))  # "NA" -> nan
            res["upper"].append(float(hi))
    res["lower"], res["upper"] = np.array(res["lower"]), np.array(res["upper"])
    return res


def _f(v: float) -> str:
    return f"{v:>14.6f}" if np.isfinite(v) else f"{'NA' if np.isnan(v) else v:>14}"


def report(name: str, formula: str, n_rows: int, a: dict | None, b: dict | None, repeat: int) -> None:
    print(f"\n## {name}: {formula}  (REML fit, {n_rows} rows; 95% profile intervals, best of {repeat})")
    if a:
        print(f"ours : {a['time']:10.3f} s   REML logLik {a['llf']:.8f}")
    if b:
        print(f"lme4 : {b['time']:10.3f} s   REML logLik {b['llf']:.8f}")
    if a and b:
        print(f"lme4 / ours = {b['time'] / a['time']:.2f} (target >= 3); logLik ours - lme4 = "
              f"{a['llf'] - b['llf']:.2e}")
    for side, res in (("ours", a), ("lme4", b)):
        for note in (res or {}).get("notes", []):
            print(f"  {side} warning: {note}")
    if not (a and b):
        return
    if len(a["names"]) != len(b["names"]):
        print(f"  different parameter counts: ours {a['names']}, lme4 {b['names']}")
        return
    print(f"{'ours':<34} {'lme4':<12} {'lower ours':>14} {'lower lme4':>14} {'upper ours':>14} "
          f"{'upper lme4':>14} {'|diff| max':>11}")
    diffs, rel, missing = [], [], 0
    for i, (na, nb) in enumerate(zip(a["names"], b["names"])):
        row = []
        for key in ("lower", "upper"):
            x, y = a[key][i], b[key][i]
            if np.isfinite(x) and np.isfinite(y):
                row.append(abs(x - y))
                rel.append(abs(x - y) / max(abs(x), abs(y), 1e-12))
            elif not (np.isfinite(y) or (np.isinf(x) and x == y)):
                missing += 1
        diffs += row
        d = f"{max(row):11.2e}" if row else f"{'-':>11}"
        print(f"{na:<34} {nb:<12} {_f(a['lower'][i])} {_f(b['lower'][i])} {_f(a['upper'][i])} "
              f"{_f(b['upper'][i])} {d}")
    if diffs:
        print(f"max |ours - lme4| over endpoints both report: {max(diffs):.2e} (relative {max(rel):.2e})")
    if missing:
        print(f"lme4 left {missing} endpoint(s) NA or infinite where ours has one")
    if any("bad spline fit" in note for note in b["notes"]):
        print("(lme4's 'bad spline fit' parameters: it interpolated linearly between its profile points, so "
              "its endpoints there are approximate; profile(m, delta.cutoff = 1/64) refines them)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--peers", default="ours,lme4")
    ap.add_argument("--repeat", type=int, default=3, help="best of N calls per side")
    ap.add_argument("--threads", type=int, default=None,
                    help="ours' n_jobs once it has one (recorded otherwise)")
    args = ap.parse_args(argv)
    from mixedlm_sklearn import MixedLMRegressor

    peers = args.peers.split(",")
    bad = [c for c in args.cases.split(",") if c not in CASES] + [p for p in peers if p not in ("ours", "lme4")]
    if bad:
        ap.error(f"unknown cases/peers {bad}; cases: {list(CASES)}, peers: ours, lme4")
    env.header("profile confidence intervals: ours conf_int(method='profile') vs lme4 confint(m)",
               args.threads, MixedLMRegressor, r="lme4" in peers)
    why_r = env.r_available(("lme4",)) if "lme4" in peers else "not asked for"
    if "lme4" in peers and why_r:
        print(f"note: skipping lme4: {why_r}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            formula = CASES[name]
            df, why = load_case(name, tmp)
            if df is None:
                print(f"\n## {name}: skipped: {why}")
                continue
            a = b = None
            if "ours" in peers:
                print(f"[{name}] ours ...", flush=True)
                a = ours(df, formula, args.repeat)
            if not why_r:
                print(f"[{name}] lme4 ...", flush=True)
                try:
                    b = lme4(df, formula, args.repeat, tmp)
                except Exception as exc:  # report and carry on
                    print(f"  lme4 failed: {exc}")
            report(name, formula, len(df), a, b, args.repeat)
    env.footer()


if __name__ == "__main__":
    main()
