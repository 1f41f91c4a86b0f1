"""Time many responses with one design against a loop of single fits and lme4's loop.

The case (the issue's): ``--responses`` responses (default 20,000) on 200 samples, 40
donors x 5 samples, a covariate ``t`` (0..4 within each donor), random intercept and
slope per donor: ``y_j ~ t + (t | donor)``, REML (lme4's default). Responses are simulated
with their own variance components (some with a zero slope variance: singular fits occur,
as in real data).

Timed:

* ours: ``MixedLMRegressor().fit(X, Y, groups=donor, Z=[1, t])`` with ``Y`` (200, k), the
  whole multi-output fit, best of ``--repeat`` (3; each run printed) (every response fitted with the single fit's safeguards), and
  the share of the single fit's other starts (40 donors is a "small problem": the single
  fit starts from ten points) measured by the engine without them;
* our loop: ``MixedLMRegressor().fit`` per response, on a sample of ``--loop-sample``
  responses, extrapolated to all of them (marked ``~``);
* lme4's loop (when ``Rscript`` with lme4 is installed): ``lmer(y ~ t + (t | donor))`` per
  response inside R (``system.time`` around the loop, data read before), on a sample of
  ``--r-sample`` responses, extrapolated (``~``).

As a check that the work is the same, the largest difference of the log-likelihoods of
the sampled responses between ours and the loops is printed.

With ``--family poisson`` or ``--family negative_binomial`` the case is NEBULA's: counts
on the same samples, ``c_j ~ t + (1 | donor)`` per response (``MixedGLMRegressor``), each
response with its own rate, donor variance and (NB2) ``theta``; our multi-output fit on
``--responses`` responses (or on ``--ours-sample`` of them, extrapolated), our loop of
single fits and lme4's loop (``glmer(..., family = poisson)`` / ``glmer.nb``, lme4's
default controls) on samples, extrapolated.

Usage
-----
::

    python benchmarks/bench_many_responses.py
    python benchmarks/bench_many_responses.py --responses 2000 --loop-sample 100 --r-sample 100
    python benchmarks/bench_many_responses.py --no-r
    python benchmarks/bench_many_responses.py --family poisson --responses 2000 --loop-sample 200 --r-sample 50
    python benchmarks/bench_many_responses.py --family negative_binomial --responses 2000 \
        --ours-sample 100 --loop-sample 50 --r-sample 20
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _bench_env as env  # noqa: E402

from mixedlm_sklearn import MixedGLMRegressor, MixedLMRegressor  # noqa: E402

R_SCRIPT = r"""
suppressMessages(library(lme4))
a <- commandArgs(TRUE)
d <- read.csv(a[1])
d$donor <- factor(d$donor)
ys <- grep("^y", names(d), value = TRUE)
ll <- numeric(length(ys))
tm <- system.time(for (i in seq_along(ys)) {
  f <- as.formula(paste(ys[i], "~ t + (t | donor)"))
  m <- suppressMessages(suppressWarnings(lmer(f, data = d)))
  ll[i] <- as.numeric(logLik(m))
})[["elapsed"]]
cat(tm, "\n")
cat(sprintf("%.10f", ll), sep = "\n")
"""


def simulate(k: int, seed: int = 20240611) -> tuple[pd.DataFrame, np.ndarray]:
    """Samples (donor, t) and k responses (200, k)."""
    rng = np.random.default_rng(seed)
    donors, per = 40, 5
    donor = np.repeat(np.arange(donors), per)
    t = np.tile(np.arange(per, dtype=float), donors)
    sd0 = rng.uniform(0.2, 2.0, k)
    sd1 = rng.uniform(0.0, 0.5, k) * (rng.random(k) > 0.1)
    sigma = rng.uniform(0.5, 1.5, k)
    beta = np.where(rng.random(k) < 0.2, rng.normal(0.0, 0.5, k), 0.0)
    b0 = rng.standard_normal((donors, k)) * sd0
    b1 = rng.standard_normal((donors, k)) * sd1
    Y = 10.0 + beta * t[:, None] + b0[donor] + b1[donor] * t[:, None] + sigma * rng.standard_normal((donors * per, k))
    return pd.DataFrame({"donor": [f"D{d:02d}" for d in donor], "t": t}), Y


R_COUNTS_SCRIPT = r"""
suppressMessages(library(lme4))
a <- commandArgs(TRUE)
d <- read.csv(a[1])
d$donor <- factor(d$donor)
ys <- grep("^c", names(d), value = TRUE)
ll <- numeric(length(ys))
tm <- system.time(for (i in seq_along(ys)) {
  f <- as.formula(paste(ys[i], "~ t + (1 | donor)"))
  m <- suppressMessages(suppressWarnings(
    if (a[2] == "poisson") glmer(f, data = d, family = poisson) else glmer.nb(f, data = d)))
  ll[i] <- as.numeric(logLik(m))
})[["elapsed"]]
cat(tm, "\n")
cat(sprintf("%.10f", ll), sep = "\n")
"""


def simulate_counts(k: int, seed: int = 20261207) -> tuple[pd.DataFrame, np.ndarray]:
    """Samples (donor, t) and k count responses (200, k): NB2 with a donor effect per
    response (log-rates 0..3, donor sds 0.2..1, theta 1..20; Poisson-like for large theta)."""
    rng = np.random.default_rng(seed)
    donors, per = 40, 5
    donor = np.repeat(np.arange(donors), per)
    t = np.tile(np.arange(per, dtype=float), donors)
    base = rng.uniform(0.0, 3.0, k)
    sd = rng.uniform(0.2, 1.0, k)
    beta = np.where(rng.random(k) < 0.2, rng.normal(0.0, 0.2, k), 0.0)
    theta = np.exp(rng.uniform(np.log(1.0), np.log(20.0), k))
    mu = np.exp(base + beta * t[:, None] + (rng.standard_normal((donors, k)) * sd)[donor])
    Y = rng.negative_binomial(theta, theta / (theta + mu)).astype(float)
    return pd.DataFrame({"donor": [f"D{d:02d}" for d in donor], "t": t}), Y


def counts_main(args: argparse.Namespace) -> None:
    """The counts case (``--family poisson`` / ``negative_binomial``)."""
    k, family = args.responses, args.family
    samples, Y = simulate_counts(k)
    X, donor = samples[["t"]], samples["donor"]
    use_r = not args.no_r and shutil.which("Rscript") is not None
    env.header(f"many count responses: {k} responses x {len(samples)} samples (40 donors x 5), "
               f"c ~ t + (1 | donor), {family}", None, MixedGLMRegressor, r=use_r)
    rng = np.random.default_rng(0)
    fitted = np.arange(k) if not args.ours_sample else np.sort(
        rng.choice(k, size=min(args.ours_sample, k), replace=False))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MixedGLMRegressor(family=family).fit(X, Y[:, fitted], groups=donor)
    ours = (time.perf_counter() - started) * k / fitted.size
    mark = "~" if fitted.size < k else " "
    print(f"ours (multi-output fit):  {mark}{ours:8.2f} s   ({fitted.size} fitted"
          f"{', extrapolated' if fitted.size < k else ''}; {int(est.failed_.sum())} failed, "
          f"{int((~est.converged_).sum())} not converged, {int(est.singular_.sum())} singular)")
    llf_of = dict(zip(fitted.tolist(), est.llf_))

    sample = np.sort(rng.choice(fitted, size=min(args.loop_sample, fitted.size), replace=False))
    started = time.perf_counter()
    llf = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in sample:
            try:
                llf.append(MixedGLMRegressor(family=family).fit(X, Y[:, j], groups=donor).llf_)
            except ValueError:
                llf.append(np.nan)
    loop = (time.perf_counter() - started) * k / sample.size
    diff = float(np.nanmax(np.abs(np.array(llf) - np.array([llf_of[j] for j in sample]))))
    print(f"our loop of single fits:  ~{loop:8.2f} s   (timed on {sample.size}, extrapolated; ratio "
          f"{loop / ours:.2f}x; max |logLik difference| {diff:.2e})")
    if not use_r:
        print("lme4 loop: skipped (" + ("--no-r" if args.no_r else "Rscript not found") + ")")
        env.footer()
        return
    r_sample = np.sort(rng.choice(fitted, size=min(args.r_sample, fitted.size), replace=False))
    with tempfile.TemporaryDirectory() as tmp:
        data = pd.concat([samples, pd.DataFrame(Y[:, r_sample], columns=[f"c{j}" for j in r_sample])], axis=1)
        path = os.path.join(tmp, "counts.csv")
        script = os.path.join(tmp, "loop.R")
        data.to_csv(path, index=False)
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(R_COUNTS_SCRIPT)
        run = subprocess.run(["Rscript", script, path, family], capture_output=True, text=True,
                             check=False)
    if run.returncode != 0:
        print("lme4 loop: failed (" + run.stderr.strip().splitlines()[-1] + ")")
        env.footer()
        return
    lines = run.stdout.split()
    r_time = float(lines[0]) * k / r_sample.size
    r_llf = np.array([float(v) for v in lines[1:]])
    gap = float(np.nanmax(r_llf - np.array([llf_of[j] for j in r_sample])))
    name = "glmer" if family == "poisson" else "glmer.nb"
    print(f"lme4 loop ({name} per response): ~{r_time:8.2f} s   (timed on {r_sample.size}, "
          f"extrapolated; ratio {r_time / ours:.1f}x; largest logLik of lme4 above ours {gap:.2e})")
    env.footer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=20000)
    parser.add_argument("--loop-sample", type=int, default=200)
    parser.add_argument("--r-sample", type=int, default=200)
    parser.add_argument("--no-r", action="store_true", help="skip lme4 even when Rscript is there")
    parser.add_argument("--family", choices=["gaussian", "poisson", "negative_binomial"],
                        default="gaussian", help="gaussian: lmer (the default); counts: glmer")
    parser.add_argument("--repeat", type=int, default=3,
                        help="best of this many multi-output fits (as the other benchmarks)")
    parser.add_argument("--ours-sample", type=int, default=0,
                        help="counts: fit only this many responses with ours and extrapolate")
    args = parser.parse_args()
    if args.family != "gaussian":
        counts_main(args)
        return
    k = args.responses
    samples, Y = simulate(k)
    X, donor = samples[["t"]], samples["donor"]
    Z = np.column_stack([np.ones(len(samples)), samples["t"]])
    use_r = not args.no_r and shutil.which("Rscript") is not None
    env.header(f"many responses: {k} responses x {len(samples)} samples (40 donors x 5), "
               "y ~ t + (t | donor), REML", None, MixedLMRegressor, r=use_r)

    times = []
    for _ in range(max(1, args.repeat)):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = MixedLMRegressor().fit(X, Y, groups=donor, Z=Z)
        times.append(time.perf_counter() - started)
    ours = min(times)
    print(f"# ours, each of {len(times)} multi-output fits: " + ", ".join(f"{t:.2f} s" for t in times))
    batched = int(est.many_.fit.batched.sum())
    print(f"ours (multi-output fit):   {ours:8.2f} s   ({batched} batched, {k - batched} by the "
          f"single fit's path, {int(est.singular_.sum())} singular, {int(est.failed_.sum())} failed, "
          f"{int((~est.converged_).sum())} not converged)")

    # What the single fit's other starts (small problems: at most 100 levels) cost: the same
    # engine without them (not a public option; its fits may differ from the single fits).
    from mixedlm_sklearn._many import fit_many
    from mixedlm_sklearn._terms import Term, Terms

    codes = pd.factorize(donor, sort=True)[0]
    X_full = np.column_stack([np.ones(len(samples)), samples["t"]])
    no_starts = np.inf
    for _ in range(max(1, args.repeat)):
        started = time.perf_counter()
        with np.errstate(all="ignore"):
            bare = fit_many(X_full, Y, [(codes, Z)], Terms([Term("donor", ["(Intercept)", "t"], 40, False)]),
                            multistart=False)
        no_starts = min(no_starts, time.perf_counter() - started)
    same = float(np.nanmax(np.abs(bare.deviance - est.many_.fit.deviance)))
    print(f"  of which the other starts: {ours - no_starts:8.2f} s   (engine without them: "
          f"{no_starts:.2f} s; max |deviance change| {same:.1e})")

    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(k, size=min(args.loop_sample, k), replace=False))
    started = time.perf_counter()
    llf = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in sample:
            llf.append(MixedLMRegressor().fit(X, Y[:, j], groups=donor, Z=Z).llf_)
    loop = (time.perf_counter() - started) * k / sample.size
    diff = float(np.max(np.abs(np.array(llf) - est.llf_[sample])))
    print(f"our loop of single fits:  ~{loop:8.2f} s   (timed on {sample.size}, extrapolated; ratio "
          f"{loop / ours:.1f}x; max |logLik difference| {diff:.2e})")

    if not use_r:
        print("lme4 loop: skipped (" + ("--no-r" if args.no_r else "Rscript not found") + ")")
        env.footer()
        return
    r_sample = np.sort(rng.choice(k, size=min(args.r_sample, k), replace=False))
    with tempfile.TemporaryDirectory() as tmp:
        data = pd.concat([samples, pd.DataFrame(Y[:, r_sample], columns=[f"y{j}" for j in r_sample])], axis=1)
        path = os.path.join(tmp, "many.csv")
        script = os.path.join(tmp, "loop.R")
        data.to_csv(path, index=False)
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(R_SCRIPT)
        run = subprocess.run(["Rscript", script, path], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print("lme4 loop: failed (" + run.stderr.strip().splitlines()[-1] + ")")
        env.footer()
        return
    lines = run.stdout.split()
    r_time = float(lines[0]) * k / r_sample.size
    r_llf = np.array([float(v) for v in lines[1:]])
    gap = float(np.max(r_llf - est.llf_[r_sample]))
    print(f"lme4 loop (lmer per response): ~{r_time:8.2f} s   (timed on {r_sample.size}, extrapolated; "
          f"ratio {r_time / ours:.1f}x; largest logLik of lme4 above ours {gap:.2e})")
    env.footer()


if __name__ == "__main__":
    main()
