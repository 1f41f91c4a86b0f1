"""Time REML fits of a correlated random-slope LMM against peer packages.

Every peer fits the same synthetic data in one process run: REML, intercept
plus ``p`` fixed covariates, a random intercept and ``q - 1`` random slopes
with a full ``q x q`` covariance, one grouping factor.

Usage
-----
::

    python benchmarks/bench_fit.py                  # 1e4, 1e5, 1e6; all peers; best of 3
    python benchmarks/bench_fit.py --sizes 1e4 --repeat 5 --peers ours,lme4
    python benchmarks/bench_fit.py --peers ours,mixedlm-rs --sizes 1e7 --repeat 1
    python benchmarks/bench_fit.py --profile --json results.json

Sizes (rows, groups, p, q): 1e4 -> (500, 5, 2), 1e5 -> (5000, 5, 3),
1e6 -> (20000, 10, 3), 1e7 -> (200000, 10, 3).

Peers: ``ours`` (mixedlm_sklearn.MixedLMRegressor), ``mixedlm-rs``,
``mixedlm`` (formula ``lmer``), ``statsmodels`` (MixedLM) and ``lme4`` (via
``Rscript``). A peer that is not installed is skipped with a note.
statsmodels is never run at 1e6 rows or more; a statsmodels fit that
exceeds ``--timeout-statsmodels`` is abandoned and it is skipped at larger
sizes; lme4 runs up to ``--lme4-max-n`` rows (default 1e5: about 85 s a fit at
1e6). Convergence warnings (e.g. lme4's gradient check) go to the note column.
The column "/ours" is the peer's time over ours (above 1: ours is faster).

The load average is printed at the start and the end, with the BLAS libraries'
thread counts: ours keeps BLAS on one thread inside a fit; the peers use their
defaults (both cores). ``--threads N`` is handed to ours as ``n_jobs`` once the
estimator has that parameter (recorded otherwise).

Timing is the best of ``--repeat`` runs of ``time.perf_counter`` around the
fit call only (see each ``_fit_*`` function for what that includes); data
frames, CSV files and design matrices are built outside the timed region.
lme4 is timed inside R with ``system.time``.

The log-likelihood column is the REML log-likelihood on lme4's scale,
``logLik = -REMLcrit / 2`` (constants included). All peers report it on that
scale: mixedlm-rs and mixedlm return ``-deviance / 2`` and statsmodels'
REML ``llf`` carries the same constants (checked: each peer's criterion
evaluated at ours' estimates agrees with ours to < 1e-9). Differences in the
table are therefore where each optimiser stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

# rows -> (groups m, fixed covariates p, random effects q)
DESIGNS = {10**4: (500, 5, 2), 10**5: (5000, 5, 3),
           10**6: (20000, 10, 3), 10**7: (200000, 10, 3)}
RE_SD = np.array([1.0, 0.5, 0.3])
RE_CORR = np.array([[1.0, 0.3, -0.2], [0.3, 1.0, 0.1], [-0.2, 0.1, 1.0]])
INTERCEPT = 1.0
BETA = np.array([0.8, -0.5, 0.3, 0.2, -0.1, 0.6, -0.4, 0.25, -0.15, 0.05])
STATSMODELS_MAX_N = 10**5  # many minutes per fit beyond this (15 s at 1e5)
ALL_PEERS = ("ours", "mixedlm-rs", "mixedlm", "statsmodels", "lme4")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
N_JOBS: dict = {}  # ours' n_jobs (--threads), when the estimator has it


def make_data(n: int, seed: int) -> dict:
    """Simulate ``y = 1 + X beta + sum_k Z_k b_{g,k} + e`` for one size."""
    m, p, q = DESIGNS[n]
    rng = np.random.default_rng(seed)
    g = rng.integers(0, m, size=n)
    X = rng.standard_normal((n, p))
    Z = np.column_stack([np.ones(n), X[:, : q - 1]])
    cov_re = RE_SD[:q, None] * RE_CORR[:q, :q] * RE_SD[None, :q]
    b = rng.multivariate_normal(np.zeros(q), cov_re, size=m)
    y = INTERCEPT + X @ BETA[:p] + np.einsum("ij,ij->i", Z, b[g]) + rng.standard_normal(n)
    return {"n": n, "m": m, "p": p, "q": q, "g": g, "X": X, "Z": Z, "y": y}


def formula(d: dict) -> str:
    fixed = " + ".join(f"x{j}" for j in range(d["p"]))
    slopes = "".join(f" + x{j}" for j in range(d["q"] - 1))
    return f"y ~ {fixed} + (1{slopes} | g)"


def frame(d: dict):
    import pandas as pd
    df = pd.DataFrame(d["X"], columns=[f"x{j}" for j in range(d["p"])])
    df["y"], df["g"] = d["y"], d["g"]
    return df


def best_of(fit, repeat: int, timeout: float | None = None):
    """Best wall time of ``repeat`` calls of ``fit()`` and the last result."""
    best, res = float("inf"), None
    for _ in range(repeat):
        res = None
        gc.collect()
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                res = fit()
                best = min(best, time.perf_counter() - t0)
        finally:
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
    return best, res


def _fit_ours(d, repeat, profile):
    from mixedlm_sklearn import MixedLMRegressor

    # Timed: the whole estimator.fit (validation, statistics pass, optimiser).
    X, y, g, Z = d["X"], d["y"], d["g"], d["Z"]
    t, est = best_of(lambda: MixedLMRegressor(reml=True, **N_JOBS).fit(X, y, groups=g, Z=Z), repeat)
    note = "" if getattr(est, "converged_", True) else "not converged"
    if profile:
        _profile_ours(est, lambda: MixedLMRegressor(reml=True, verbose=1, **N_JOBS).fit(X, y, groups=g, Z=Z))
    return t, float(est.llf_), note


def _profile_ours(est, verbose_fit) -> None:
    """Print what ours exposes about its fit; attributes that are absent are skipped."""
    info = {"n_iter_": getattr(est, "n_iter_", None)}
    opt = getattr(getattr(est, "model_", None), "info", None)
    info["deviance evaluations"] = getattr(opt, "n_fev", None)
    fit_info = getattr(est, "fit_info_", None)
    if isinstance(fit_info, dict):
        info.update(fit_info)
    shown = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in info.items() if isinstance(v, (int, float, str))]
    if shown:
        print("  profile(ours): " + ", ".join(shown))
    # Phase times (statistics pass vs optimiser) are only printed by verbose=1:
    # one extra, untimed fit shows them.
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            verbose_fit()
    except TypeError:  # no verbose parameter
        return
    for line in buf.getvalue().splitlines():
        print("  " + line)


def _fit_statsmodels_api(MixedLM, d, repeat, timeout=None):
    # mixedlm-rs and statsmodels share this array API. Timed: MixedLM(...)
    # construction (group sorting, design checks) + .fit(reml=True) with the
    # default optimiser; one fit needs both. Intercept column built outside.
    Xc = np.column_stack([np.ones(d["n"]), d["X"]])
    y, g, Z = d["y"], d["g"], d["Z"]
    t, res = best_of(lambda: MixedLM(y, Xc, groups=g, exog_re=Z).fit(reml=True), repeat, timeout)
    return t, float(res.llf), "" if res.converged else "not converged"


def _fit_mixedlm_rs(d, repeat, profile):
    import mixedlm_rs
    return _fit_statsmodels_api(mixedlm_rs.MixedLM, d, repeat)


def _fit_statsmodels(d, repeat, profile, timeout=None):
    from statsmodels.regression.mixed_linear_model import MixedLM
    return _fit_statsmodels_api(MixedLM, d, repeat, timeout)


def _fit_mixedlm(d, repeat, profile):
    import mixedlm

    # Timed: lmer(formula, DataFrame) -- formula parsing and model matrices are
    # part of its only entry point. The DataFrame is built outside.
    df, f = frame(d), formula(d)
    t, res = best_of(lambda: mixedlm.lmer(f, df, REML=True), repeat)
    return t, float(res.logLik()), "" if res.converged else "not converged"


R_SCRIPT = r"""
suppressMessages(library(lme4))
a <- commandArgs(TRUE)
d <- read.csv(a[1]); d$g <- factor(d$g)
f <- as.formula(a[2]); best <- Inf
for (i in seq_len(as.integer(a[3]))) {
  best <- min(best, system.time(fit <- lmer(f, d, REML = TRUE))[["elapsed"]])
}
cat(sprintf("RESULT %.6f %.12f\n", best, as.numeric(logLik(fit))))
cat(paste0("MSG ", fit@optinfo$conv$lme4$messages, "\n"), sep = "")
"""


def _fit_lme4(d, repeat, profile):
    # Timed inside R: lmer(formula, data.frame) incl. its model frame and
    # sparse Z construction. CSV writing/reading and R start-up are not timed.
    with tempfile.TemporaryDirectory() as tmp:
        csv, script = os.path.join(tmp, "d.csv"), os.path.join(tmp, "fit.R")
        frame(d).to_csv(csv, index=False)  # shortest round-trip floats: exact data
        with open(script, "w") as fh:
            fh.write(R_SCRIPT)
        out = subprocess.run(["Rscript", script, csv, formula(d), str(repeat)],
                             capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    _, t, llf = next(s for s in lines if s.startswith("RESULT")).split()
    msgs = [s[4:] for s in lines if s.startswith("MSG ")]  # lme4's convergence warnings
    return float(t), float(llf), "; ".join(msgs)


FITTERS = {"ours": _fit_ours, "mixedlm-rs": _fit_mixedlm_rs, "mixedlm": _fit_mixedlm,
           "statsmodels": _fit_statsmodels, "lme4": _fit_lme4}


def unavailable(peer: str) -> str | None:
    """Why ``peer`` cannot run here, or None if it can."""
    if peer == "ours":
        try:
            from mixedlm_sklearn import MixedLMRegressor  # noqa: F401
        except ImportError as exc:
            return f"mixedlm_sklearn.MixedLMRegressor not importable ({exc})"
        return None
    if peer == "lme4":
        if shutil.which("Rscript") is None:
            return "Rscript not on PATH"
        ok = subprocess.run(["Rscript", "-e", "suppressMessages(library(lme4))"],
                            capture_output=True).returncode == 0
        return None if ok else "R package lme4 does not load"
    module = {"mixedlm-rs": "mixedlm_rs"}.get(peer, peer)
    return None if importlib.util.find_spec(module) else f"{module} not installed"


def versions(peers: list[str]) -> dict:
    out = {"python": sys.version.split()[0], "numpy": np.__version__}
    for peer in peers:
        dist = {"ours": "mixedlm-sklearn"}.get(peer, peer)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[peer] = importlib.metadata.version(dist)
    return out


def _timeout(signum, frame):
    raise TimeoutError


def print_table(n: int, d: dict, rows: list[dict]) -> None:
    done = [r for r in rows if r["time_s"] is not None]
    base = next((r for r in done if r["peer"] == "ours"), done[0] if done else None)
    ref = base["peer"] if base else "-"
    print(f"\nn={n:,}  groups={d['m']:,}  p={d['p']}  q={d['q']}  (REML, best of repeats)")
    head = (f"{'peer':<12} {'time (s)':>10} {'/' + ref:>12} "
            f"{'REML logLik (-REMLcrit/2)':>27} {'minus ' + ref:>17}  note")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        if r["time_s"] is None:
            print(f"{r['peer']:<12} {'-':>10} {'-':>12} {'-':>27} {'-':>17}  {r['note']}")
            continue
        ratio = r["time_s"] / base["time_s"]
        diff = r["loglik"] - base["loglik"]
        print(f"{r['peer']:<12} {r['time_s']:>10.4f} {ratio:>12.2f} "
              f"{r['loglik']:>27.6f} {diff:>17.2e}  {r['note']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6",
                    help="comma-separated row counts out of 1e4,1e5,1e6,1e7")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs per peer")
    ap.add_argument("--peers", default=",".join(ALL_PEERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-statsmodels", type=float, default=600.0, metavar="SECONDS",
                    help="abandon a statsmodels fit after this long; skip it at larger sizes")
    ap.add_argument("--lme4-max-n", type=float, default=1e5, metavar="ROWS",
                    help="run lme4 only up to this many rows")
    ap.add_argument("--threads", type=int, default=None,
                    help="ours' n_jobs once it has one (recorded otherwise)")
    ap.add_argument("--profile", action="store_true",
                    help="print ours' iteration counts / phase times if it exposes them")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON")
    args = ap.parse_args(argv)

    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    bad = [s for s in sizes if s not in DESIGNS] + [p for p in peers if p not in FITTERS]
    if bad:
        ap.error(f"unknown sizes/peers {bad}; sizes: {sorted(DESIGNS)}, peers: {ALL_PEERS}")
    import _bench_env as env
    from mixedlm_sklearn import MixedLMRegressor

    N_JOBS.update(env.ours_n_jobs(MixedLMRegressor, args.threads)[0])
    env.header(f"REML fits of a correlated random-slope LMM, best of {args.repeat} per peer, one process",
               args.threads, MixedLMRegressor, r="lme4" in peers)
    skipped = {p: why for p in peers if (why := unavailable(p))}
    for peer, why in skipped.items():
        print(f"note: skipping {peer}: {why}")
    signal.signal(signal.SIGALRM, _timeout)

    results = []
    for n in sizes:
        d = make_data(n, args.seed)
        rows = []
        for peer in peers:
            row = {"n": n, "groups": d["m"], "p": d["p"], "q": d["q"], "peer": peer,
                   "time_s": None, "loglik": None, "note": ""}
            rows.append(row)
            if peer in skipped:
                row["note"] = "skipped: " + skipped[peer].split(" (")[0]
                continue
            if peer == "statsmodels" and n > STATSMODELS_MAX_N:
                row["note"] = "skipped (too slow at this size)"
                continue
            if peer == "lme4" and n > args.lme4_max_n:
                row["note"] = "skipped (n > --lme4-max-n)"
                continue
            kwargs = {"timeout": args.timeout_statsmodels} if peer == "statsmodels" else {}
            print(f"fitting {peer} at n={n:,} ...", flush=True)
            try:
                row["time_s"], row["loglik"], row["note"] = FITTERS[peer](
                    d, args.repeat, args.profile, **kwargs)
            except TimeoutError:
                row["note"] = f"timed out (> {args.timeout_statsmodels:g} s); skipped from here"
                skipped[peer] = "timed out"
            except Exception as exc:  # report and carry on with the other peers
                row["note"] = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
        print_table(n, d, rows)
        results.extend(rows)
        del d
    env.footer()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"seed": args.seed, "repeat": args.repeat, "versions": versions(peers),
                       "threads": args.threads, "blas": env.blas_threads(),
                       "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
