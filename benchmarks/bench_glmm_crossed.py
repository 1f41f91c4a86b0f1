"""GLMMs at the scale of ML data: binary (and Poisson) users x items, ours vs gpboost, one run.

Data (issue 27: the generator of ``bench_crossed.py`` with a binary response; numpy
``default_rng(1)``), exactly::

    u = rng.integers(0, users, n); it = minimum(rng.zipf(1.3, n) - 1, items - 1)
    x = rng.standard_normal((n, 3))
    eta = b0 + x @ [1, -0.5, 0.2] + 0.8 * N(0,1)[u] + 0.5 * N(0,1)[it]
    binomial: y = rng.binomial(1, 1 / (1 + exp(-eta))), b0 = -0.5
    poisson:  y = rng.poisson(exp(eta)),                 b0 = -1.0 (mean count about 1.1)

(``N(0,1)[u]`` is ``rng.standard_normal(users)[u]``, drawn after ``x``, then the items'.)
The driver draws the data once and saves them as ``.npy`` files in a temporary directory;
every fit runs in its own fresh process that loads them (so both sides fit the same arrays
whatever numpy each venv has).

Model: ``y ~ x + (1 | u) + (1 | item)``, Laplace approximation, maximum likelihood.

* ours: ``MixedGLMClassifier()`` (binomial, logit) or ``MixedGLMRegressor(family="poisson")``,
  ``fit(x, y, groups=DataFrame({"u": u, "item": it}))`` with default settings (``verbose=1``
  output captured for the evaluation counts).
* gpboost: ``GPModel(group_data=column_stack([u, it]), likelihood="bernoulli_logit" |
  "poisson")`` and ``fit(y=y, X=column_stack([ones, x]))``, its default optimiser settings,
  run by the interpreter of ``--gpboost-python`` (its own venv: ``python3 -m venv
  /work/venvs/crossed && /work/venvs/crossed/bin/pip install gpboost numpy pandas``).

Timed: the fit call only, best of ``--repeat``, in the worker. Log-likelihoods: each
package's own (ours ``llf_``, the Laplace approximation with constants; gpboost ``-
get_current_neg_log_likelihood()``, its own approximate marginal likelihood), and, to
compare on one scale, OUR Laplace log-likelihood evaluated at gpboost's estimates
(``est.model_.deviance(x)``, ``x = (theta, beta)`` with ``theta`` the standard deviations
of the two scalar terms: ``-deviance / 2``; checked first to reproduce ``llf_`` at ours'
own estimates). gpboost runs first so its estimates can be handed to our worker.
"ours - at gpboost" >= 0 means ours found the higher Laplace likelihood.

Usage (issue 27's rows; the README's table)::

    python benchmarks/bench_glmm_crossed.py --gpboost-python /work/venvs/crossed/bin/python
    python benchmarks/bench_glmm_crossed.py --gpboost-python /work/venvs/crossed/bin/python \\
        --sizes 5e4:4e3:1e3 --families binomial --repeat 3

A size is ``rows:users:items``. Load average and threads are printed at the start and the
end; timings on a shared machine are upper bounds. The default sizes end with the issue's
10^6 rows (``1e6:5e4:1e4``: 9,508 items present, a dense core of 3,291 items in our exact
Laplace factorisation): on the shared 2-core machine (load ~6) ours took ~77 s (binary)
and ~52 s (Poisson), gpboost ~195 s and ~203 s; run it alone with ``--sizes 1e6:5e4:1e4``
(``--timeout`` bounds each worker, one hour by default).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_SIZES = "5e4:4e3:1e3,2e5:1e4:2e3,1e6:5e4:1e4"
INTERCEPT = {"binomial": -0.5, "poisson": -1.0}
GPBOOST_LIKELIHOOD = {"binomial": "bernoulli_logit", "poisson": "poisson"}


def synthetic(n: int, users: int, items: int, family: str):
    """The issue's data (see the module docstring), numpy only."""
    rng = np.random.default_rng(1)
    u = rng.integers(0, users, n)
    it = np.minimum(rng.zipf(1.3, n) - 1, items - 1)
    x = rng.standard_normal((n, 3))
    eta = INTERCEPT[family] + x @ [1, -0.5, 0.2] + 0.8 * rng.standard_normal(users)[u] \
        + 0.5 * rng.standard_normal(items)[it]
    if family == "binomial":
        y = rng.binomial(1, 1.0 / (1.0 + np.exp(-eta)))
    else:
        y = rng.poisson(np.exp(eta))
    return x, y, u, it


def parse_size(s: str) -> tuple[int, int, int]:
    n, users, items = (int(float(v)) for v in s.split(":"))
    return n, users, items


# ---- the workers (each in its own process) ---------------------------------------------------


def _load(folder: str):
    return tuple(np.load(os.path.join(folder, f"{k}.npy")) for k in ("x", "y", "u", "it"))


def worker_gpboost(folder: str, family: str, repeat: int) -> dict:
    import gpboost as gpb

    x, y, u, it = _load(folder)
    group_data = np.column_stack([u, it])
    X = np.column_stack([np.ones(len(y)), x])
    best, model = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        model = gpb.GPModel(group_data=group_data, likelihood=GPBOOST_LIKELIHOOD[family])
        model.fit(y=y, X=X)
        best = min(best, time.perf_counter() - start)
    cov = np.asarray(model.get_cov_pars(format_pandas=False), float).ravel()
    coef = np.asarray(model.get_coef(format_pandas=False), float).ravel()
    return {"time": best, "llf": -float(model.get_current_neg_log_likelihood()),
            "var": [float(cov[0]), float(cov[1])], "beta": coef.tolist(),
            "info": f"gpboost {gpb.__version__}, likelihood={GPBOOST_LIKELIHOOD[family]}, defaults"}


def worker_ours(folder: str, family: str, repeat: int, at: dict | None, threads: int | None) -> dict:
    import pandas as pd

    sys.path.insert(0, HERE)
    import _bench_env as env
    from mixedlm_sklearn import MixedGLMClassifier, MixedGLMRegressor

    x, y, u, it = _load(folder)
    groups = pd.DataFrame({"u": u, "item": it})
    if family == "binomial":
        cls, params = MixedGLMClassifier, {}
    else:
        cls, params = MixedGLMRegressor, {"family": "poisson"}
    params.update(env.ours_n_jobs(cls, threads)[0])
    best, est, lines = np.inf, None, []
    for _ in range(repeat):
        buf = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            est = cls(verbose=1, **params).fit(x, y, groups=groups)
        best = min(best, time.perf_counter() - start)
        lines = buf.getvalue().splitlines()
    counts = next((re.sub(r"^\[\w+\] ", "", s) for s in lines if "deviance evaluations" in s), "")
    out = {"time": best, "llf": float(est.llf_), "converged": bool(est.converged_),
           "var": [float(est.cov_re_["u"][0, 0]), float(est.cov_re_["item"][0, 0])],
           "beta": est.fe_params_.to_numpy(float).tolist(), "info": counts}
    if at is not None:
        out["llf_at_gpboost"], out["at_note"] = _ours_at(est, at)
    return out


def _ours_at(est, at: dict) -> tuple[float | None, str]:
    """Our Laplace log-likelihood at another fit's (variances, fixed effects)."""
    model = getattr(est, "model_", None)
    dev = getattr(model, "deviance", None)
    if dev is None or not callable(dev):
        return None, "ours exposes no deviance at given parameters (est.model_.deviance)"
    names = list(est.cov_re_)
    sd = {k: float(np.sqrt(est.cov_re_[k][0, 0])) for k in names}
    # theta_ is the terms' standard deviations in the model's term order: find that order.
    order = sorted(names, key=lambda k: int(np.argmin(np.abs(est.theta_ - sd[k]))))
    x_own = np.concatenate([[sd[k] for k in order], est.fe_params_.to_numpy(float)])
    if x_own.shape != np.shape(model.x) or not np.allclose(x_own, model.x, rtol=1e-10, atol=1e-12):
        return None, "could not map (theta, beta) onto ours' parameter vector"
    offset = est.llf_ + 0.5 * dev(model.x)  # 0 when deviance is -2 llf exactly
    if abs(offset) > 1e-6 * max(1.0, abs(est.llf_)):
        return None, f"ours' deviance at its own optimum is not -2 llf_ (off by {offset:.3g})"
    var = dict(zip(("u", "item"), at["var"]))
    x_at = np.concatenate([[np.sqrt(var[k]) for k in order], at["beta"]])
    return -0.5 * float(dev(x_at)), ""


# ---- the driver -------------------------------------------------------------------------------


def run_worker(python: str, side: str, folder: str, family: str, repeat: int, timeout: float,
               threads: int | None = None, at: dict | None = None) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", side, "--dir", folder, "--families", family,
           "--repeat", str(repeat)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if at is not None:
        cmd += ["--at", json.dumps(at)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"over --timeout ({timeout:.0f} s)"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    threads_msg = next((s for s in lines if "OpenMP threads" in s), "")
    if threads_msg:
        res["info"] += "; " + re.sub(r".*using (\d+) OpenMP threads.*", r"\1 OpenMP threads", threads_msg)
    return res


def available(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="rows:users:items, comma-separated")
    ap.add_argument("--families", default="binomial,poisson")
    ap.add_argument("--sides", default="gpboost,ours")
    ap.add_argument("--repeat", type=int, default=1, help="best of N fits in each worker")
    ap.add_argument("--gpboost-python", default=sys.executable, help="interpreter that has gpboost")
    ap.add_argument("--threads", type=int, default=None, help="ours' n_jobs once it has one (recorded otherwise)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--at", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "gpboost":
        print(json.dumps(worker_gpboost(args.dir, args.families, args.repeat)))
        return
    if args.worker == "ours":
        at = json.loads(args.at) if args.at else None
        print(json.dumps(worker_ours(args.dir, args.families, args.repeat, at, args.threads)))
        return

    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)
    import _bench_env as env
    from mixedlm_sklearn import MixedGLMClassifier

    env.header("crossed users x items GLMMs (Laplace): ours vs gpboost, each fit in its own process",
               args.threads, MixedGLMClassifier)
    sides = args.sides.split(",")
    bad = [f for f in args.families.split(",") if f not in INTERCEPT] + \
        [s for s in sides if s not in ("gpboost", "ours")]
    if bad:
        ap.error(f"unknown families/sides {bad}; families: {list(INTERCEPT)}, sides: gpboost, ours")
    has_gpb = "gpboost" in sides and available(args.gpboost_python, "gpboost")
    if "gpboost" in sides and not has_gpb:
        print(f"note: gpboost not importable by {args.gpboost_python}: skipped (see --gpboost-python)")
    print(f"# intercepts: {INTERCEPT}")
    for family in args.families.split(","):
        for size in args.sizes.split(","):
            n, users, items = parse_size(size)
            with tempfile.TemporaryDirectory() as folder:
                x, y, u, it = synthetic(n, users, items, family)
                for key, arr in zip(("x", "y", "u", "it"), (x, y, u, it)):
                    np.save(os.path.join(folder, f"{key}.npy"), arr)
                print(f"\n## {family}, n={n:.0e} users={users:.0e} items={items:.0e} "
                      f"({np.unique(u).size} users and {np.unique(it).size} items present; "
                      f"mean y {y.mean():.3f}; best of {args.repeat})", flush=True)
                del x, y, u, it
                res = {}
                if has_gpb:
                    res["gpboost"] = run_worker(args.gpboost_python, "gpboost", folder, family, args.repeat,
                                                args.timeout)
                if "ours" in sides:
                    gpb = res.get("gpboost", {})
                    at = {"var": gpb["var"], "beta": gpb["beta"]} if "var" in gpb else None
                    res["ours"] = run_worker(sys.executable, "ours", folder, family, args.repeat,
                                             args.timeout, args.threads, at)
            _print(res)
    env.footer()


def _print(res: dict) -> None:
    print(f"{'side':<9}{'time s':>10}{'gpb/ours':>10}{'own logLik':>19}{'ours Laplace at its est.':>26}"
          f"{'var user':>10}{'var item':>10}  beta; info")
    ours, gpb = res.get("ours", {}), res.get("gpboost", {})
    for name, r in (("ours", ours), ("gpboost", gpb)):
        if not r:
            continue
        if "error" in r:
            print(f"{name:<9}{'failed':>10}  {r['error']}")
            continue
        ratio = f"{gpb['time'] / r['time']:.2f}" if "time" in gpb and name == "ours" else ""
        at = r["llf"] if name == "ours" else ours.get("llf_at_gpboost")
        at_s = f"{at:.5f}" if at is not None else "-"
        beta = "[" + ", ".join(f"{b:.4f}" for b in r["beta"]) + "]"
        note = "" if name != "ours" or r.get("converged", True) else "; NOT converged"
        print(f"{name:<9}{r['time']:>10.2f}{ratio:>10}{r['llf']:>19.5f}{at_s:>26}{r['var'][0]:>10.5f}"
              f"{r['var'][1]:>10.5f}  {beta}; {r['info']}{note}", flush=True)
    if "llf_at_gpboost" in ours and ours["llf_at_gpboost"] is not None:
        print(f"ours - ours' Laplace at gpboost's estimates: {ours['llf'] - ours['llf_at_gpboost']:.5f} "
              "(>= 0: ours reached the higher Laplace likelihood)")
    elif ours.get("at_note"):
        print(f"ours at gpboost's estimates: not computed: {ours['at_note']}")


if __name__ == "__main__":
    main()
