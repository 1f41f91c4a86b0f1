"""Time GLMM fits (glmer) against lme4 and mixedlm 1.3, side by side in one run.

Cases (the issue's references):

* ``verbagg``: ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)``, Bernoulli,
  7,584 rows, 316 x 24 crossed, Laplace;
* ``cbpp``: ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, Laplace;
* ``cbpp_agq25``: the same with 25 quadrature nodes;
* ``grouse``: ``TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)``, Poisson, Laplace.

Usage
-----
::

    python benchmarks/bench_glmm.py                         # all cases and peers, best of 3
    python benchmarks/bench_glmm.py --cases verbagg --repeat 5 --peers ours,lme4

Timing is the best of ``--repeat`` runs around the fit call only (formula parsing and
model frame included for every peer, since each takes a formula); lme4 is timed inside R
with ``system.time`` (one R process per case, data read before timing). The
log-likelihood column is the log-likelihood itself (constants included); lme4's nAGQ > 1
``logLik`` omits the saturated model's log-density (a constant, -41.978 for cbpp), which
is added back here so that the column compares like with like. mixedlm 1.3 has no
``cbind`` response: it is given the proportion with the trials as weights (the same
model). The machine load (``os.getloadavg``) is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench_env as env  # noqa: E402
from mixedlm_sklearn import MixedGLMClassifier, glmer  # noqa: E402
from mixedlm_sklearn.datasets import load_cbpp, load_grouseticks, load_verbagg  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "mixedlm_sklearn", "datasets", "data")


def _grouse() -> pd.DataFrame:
    df = load_grouseticks()
    df["cHEIGHT"] = df["HEIGHT"] - df["HEIGHT"].mean()
    return df


# name -> (formula, data loader, family, nAGQ, R data preparation)
CASES = {
    "verbagg": ("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", load_verbagg,
                "binomial", 1, 'd <- read.csv(file.path(dir, "verbagg.csv"), colClasses = c(id = "factor", item = "factor"))'),
    "cbpp": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp, "binomial", 1,
             'd <- read.csv(file.path(dir, "cbpp.csv"), colClasses = c(herd = "factor", period = "factor"))'),
    "cbpp_agq25": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp, "binomial", 25,
                   'd <- read.csv(file.path(dir, "cbpp.csv"), colClasses = c(herd = "factor", period = "factor"))'),
    "grouse": ("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", _grouse, "poisson", 1,
               'd <- read.csv(file.path(dir, "grouseticks.csv"), colClasses = c(BROOD = "factor", '
               'YEAR = "factor", LOCATION = "factor")); d$cHEIGHT <- d$HEIGHT - mean(d$HEIGHT)'),
}


def time_ours(case: str, repeat: int) -> tuple[float, float, str]:
    formula, load, family, n_agq, _ = CASES[case]
    data = load()
    best, fit = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        fit = glmer(formula, data, family=family, n_agq=n_agq)
        best = min(best, time.perf_counter() - start)
    return best, fit.llf_, "" if fit.converged_ else "not converged"


def time_mixedlm(case: str, repeat: int) -> tuple[float, float, str]:
    import mixedlm

    formula, load, family, n_agq, _ = CASES[case]
    data, weights = load(), None
    if formula.startswith("cbind"):
        data = data.assign(prop=data["incidence"] / data["size"])
        formula = "prop ~ " + formula.split("~", 1)[1]
        weights = data["size"].to_numpy(float)
    fam = mixedlm.families.Binomial() if family == "binomial" else mixedlm.families.Poisson()
    best, fit = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = mixedlm.glmer(formula, data, family=fam, weights=weights, nAGQ=n_agq)
        best = min(best, time.perf_counter() - start)
    return best, float(fit.logLik().value), ""


def time_lme4(case: str, repeat: int, saturated: float) -> tuple[float, float, str]:
    formula, _, family, n_agq, prepare = CASES[case]
    script = f"""
suppressMessages(library(lme4))
dir <- "{DATA}"
{prepare}
best <- Inf
for (i in seq_len({repeat})) {{
  t <- system.time(fit <- glmer({formula}, d, family = {family}, nAGQ = {n_agq}))[["elapsed"]]
  best <- min(best, t)
}}
msg <- fit@optinfo$conv$lme4$messages
cat(best, as.numeric(logLik(fit)), if (is.null(msg)) "" else gsub("\\n", " ", msg[1]), sep = "\\t")
"""
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        out = subprocess.run(["Rscript", path], capture_output=True, text=True, timeout=1800)
    finally:
        os.unlink(path)
    fields = out.stdout.strip().split("\t")
    if out.returncode != 0 or len(fields) < 2:
        return np.nan, np.nan, "failed: " + out.stderr.strip()[-200:]
    llf = float(fields[1]) + (saturated if n_agq > 1 else 0.0)
    return float(fields[0]), llf, fields[2] if len(fields) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--peers", default="ours,mixedlm,lme4")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    peers = args.peers.split(",")
    env.header(f"glmer fits, best of {args.repeat} per peer", None, MixedGLMClassifier, r="lme4" in peers)
    print(f"{'case':<12}{'peer':<10}{'seconds':>10}{'log-likelihood':>18}{'vs ours':>10}  note")
    for case in args.cases.split(","):
        formula, load, family, n_agq, _ = CASES[case]
        fit = glmer(formula, load(), family=family, n_agq=n_agq)  # warm-up; the saturated constant
        saturated = fit.model_.deviance.saturated_loglik()
        ours_time = None
        for peer in peers:
            if peer == "ours":
                result = time_ours(case, args.repeat)
            elif peer == "mixedlm":
                try:
                    import mixedlm  # noqa: F401
                except ImportError:
                    print(f"{case:<12}{peer:<10}{'':>10}{'':>18}{'':>10}  not installed")
                    continue
                result = time_mixedlm(case, args.repeat)
            elif peer == "lme4":
                if shutil.which("Rscript") is None:
                    print(f"{case:<12}{peer:<10}{'':>10}{'':>18}{'':>10}  Rscript not found")
                    continue
                result = time_lme4(case, args.repeat, saturated)
            else:
                raise SystemExit(f"unknown peer {peer!r}")
            seconds, llf, note = result
            if peer == "ours":
                ours_time = seconds
            ratio = f"{seconds / ours_time:.1f}x" if ours_time and peer != "ours" else ""
            print(f"{case:<12}{peer:<10}{seconds:>10.3f}{llf:>18.5f}{ratio:>10}  {note}", flush=True)
    env.footer()


if __name__ == "__main__":
    main()
