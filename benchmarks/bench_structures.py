"""Time correlated-residual LMMs and negative binomial / Gamma GLMMs against nlme, glmmTMB and lme4.

Cases (issue "Beyond lme4"; the first five are the references in
``tests/data/reference/structures``, where the R calls are recorded):

* ``ovary_ar1``: ``follicles ~ sin(2*pi*Time) + cos(2*pi*Time) + (1 | Mare)``, AR(1) within
  Mare, REML, 308 rows; nlme ``lme(..., correlation = corAR1(form = ~ 1 | Mare))``;
* ``bodyweight_car1``: ``weight ~ Time * Diet + (Time | Rat)``, continuous-time AR(1) on
  Time within Rat, REML, 176 rows; nlme ``corCAR1(form = ~ Time | Rat)``;
* ``orthodont_cs``: ``distance ~ age * Sex``, compound symmetry within Subject, REML, no
  random effects; nlme ``gls(..., correlation = corCompSymm(form = ~ 1 | Subject))``;
* ``ar1_1e4`` / ``ar1_1e5``: simulated, 10^4 / 10^5 rows, 10 visits per subject, random
  intercept per subject and AR(1) residuals (phi = 0.6), ``y ~ x + (1 | g)``, REML; nlme;
* ``ar1_1e6``: the same with 10^6 rows (10^5 subjects), fitted from arrays
  (``MixedLMRegressor(correlation="ar1").fit(X, y, groups=g, time=visit)``); nlme with
  ``--slow-r`` only;
* ``ar1_1e6_chunks``: the same data fitted from chunks of 10^5 rows
  (``MixedLMRegressor(correlation="ar1").fit_chunks(chunks, ..., time="visit")``, each
  subject's rows in one chunk), printed next to the in-memory fit of ``ar1_1e6`` (its time
  and the difference in log-likelihood);
* ``grouse_nb``: ``TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)``, negative binomial
  (NB2, theta estimated), Laplace; ``glmer.nb`` and glmmTMB ``nbinom2``;
* ``gamma_log``: ``y ~ x + (1 | g)``, Gamma with log link, 480 rows, Laplace; ``glmer`` and
  glmmTMB ``Gamma(link = "log")``;
* ``nb_crossed_1e5``: simulated, 10^5 rows, 2,000 x 500 crossed factors, NB2 (theta = 2),
  ``y ~ x + (1 | u) + (1 | v)``, Laplace; glmmTMB (``glmer.nb`` with ``--slow-r``).

Timing is the best of ``--repeat`` calls around the fit (ours: ``lmer``/``glmer_nb``/
``glmer``, or the estimator where the model has no random-effects term; R: ``system.time``
inside one R process per case, data read before). The log-likelihood column compares like
with like (REML criterion for the REML cases: nlme's and ours are the same quantity). For
the NB and Gamma GLMMs ours is the Laplace approximation with the exact Hessian of the
joint log-density in the random effects, as glmmTMB's; lme4 builds the log-determinant from
the PIRLS (Fisher) weights and, for Gamma, plugs in a moment estimate of the dispersion, so
its log-likelihood is a different quantity (see ``comparison`` in the references' JSON).

Usage
-----
::

    python benchmarks/bench_structures.py
    python benchmarks/bench_structures.py --cases ovary_ar1,grouse_nb --repeat 5
    python benchmarks/bench_structures.py --peers ours       # without R
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import _bench_env as env  # noqa: E402
from mixedlm_sklearn import MixedLMRegressor, glmer, glmer_nb, lmer  # noqa: E402

REFERENCE = os.path.join(os.path.dirname(HERE), "tests", "data", "reference", "structures")
_LABELS = {"Mare": str, "Rat": str, "Diet": str, "Subject": str, "Sex": str, "BROOD": str,
           "LOCATION": str, "YEAR": str, "g": str, "u": str, "v": str}


def _reference_csv(name: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(REFERENCE, f"{name}.csv"), dtype=_LABELS)


def _ar1_sim(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(2026)
    visits = 10
    n_groups = n // visits
    g = np.repeat(np.arange(n_groups), visits)
    e = np.empty((n_groups, visits))
    e[:, 0] = rng.standard_normal(n_groups)
    for t in range(1, visits):  # stationary AR(1), phi = 0.6, unit variance
        e[:, t] = 0.6 * e[:, t - 1] + np.sqrt(1 - 0.36) * rng.standard_normal(n_groups)
    x = rng.standard_normal(n)
    y = 1.0 + 0.5 * x + 0.8 * rng.standard_normal(n_groups)[g] + e.ravel()
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{i}" for i in g],
                         "visit": np.tile(np.arange(1, visits + 1), n_groups)})


def _nb_crossed(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    u, v = rng.integers(0, 2000, n), rng.integers(0, 500, n)
    x = rng.standard_normal(n)
    eta = 0.5 + 0.3 * x + 0.5 * rng.standard_normal(2000)[u] + 0.3 * rng.standard_normal(500)[v]
    mu = np.exp(eta)
    y = rng.poisson(rng.gamma(2.0, mu / 2.0))  # NB2 with theta = 2
    return pd.DataFrame({"y": y, "x": x, "u": [f"u{i}" for i in u], "v": [f"v{i}" for i in v]})


def _grouse() -> pd.DataFrame:
    return _reference_csv("grouseticks_nb_crossed")


# name -> (data, our fit (data -> fitted estimator), R set-up, R fits {peer: call}, REML)
def _ours_ovary(d):
    return lmer("follicles ~ sin(2*pi*Time) + cos(2*pi*Time) + (1 | Mare)", d, correlation="ar1(~ visit | Mare)")


def _ours_bodyweight(d):
    return lmer("weight ~ Time * Diet + (Time | Rat)", d, correlation="car1(~ Time | Rat)")


def _ours_orthodont(d):
    male = (d.Sex == "Male").astype(float)
    X = pd.DataFrame({"age": d.age, "SexMale": male, "age:SexMale": d.age * male})
    return MixedLMRegressor(correlation="cs").fit(X, d.distance, correlation_groups=d.Subject)


def _ours_ar1(d):
    return lmer("y ~ x + (1 | g)", d, correlation="ar1(~ visit | g)")


def _ours_ar1_arrays(d):
    return MixedLMRegressor(correlation="ar1").fit(d[["x"]].to_numpy(), d.y.to_numpy(),
                                                   groups=d.g.to_numpy(), time=d.visit.to_numpy())


def _ours_ar1_chunks(d, rows=100_000):
    # 10 visits per subject: chunks of 10^5 rows hold whole subjects
    chunks = (d.iloc[i:i + rows] for i in range(0, len(d), rows))
    return MixedLMRegressor(correlation="ar1").fit_chunks(chunks, y="y", groups="g", X=["x"],
                                                          time="visit")


_LABEL_READ = 'd <- read.csv(path, colClasses = "character"); for (v in names(d)) {{ if (!(v %in% c({labels}))) d[[v]] <- as.numeric(d[[v]]) }}'

CASES = {
    "ovary_ar1": (lambda: _reference_csv("ovary_ar1_reml"), _ours_ovary, '"Mare"', {
        "nlme": "lme(follicles ~ sin(2*pi*Time) + cos(2*pi*Time), data = d, random = ~ 1 | Mare, "
                "correlation = corAR1(form = ~ 1 | Mare), method = 'REML')"}),
    "bodyweight_car1": (lambda: _reference_csv("bodyweight_car1_reml"), _ours_bodyweight, '"Rat", "Diet"', {
        "nlme": "lme(weight ~ Time * Diet, data = d, random = ~ Time | Rat, "
                "correlation = corCAR1(form = ~ Time | Rat), method = 'REML')"}),
    "orthodont_cs": (lambda: _reference_csv("orthodont_cs_reml"), _ours_orthodont, '"Subject", "Sex"', {
        "nlme": "gls(distance ~ age * Sex, data = d, correlation = corCompSymm(form = ~ 1 | Subject), "
                "method = 'REML')"}),
    "ar1_1e4": (lambda: _ar1_sim(10_000), _ours_ar1, '"g"', {
        "nlme": "lme(y ~ x, data = d, random = ~ 1 | g, correlation = corAR1(form = ~ visit | g), "
                "method = 'REML')"}),
    "ar1_1e5": (lambda: _ar1_sim(100_000), _ours_ar1, '"g"', {
        "nlme": "lme(y ~ x, data = d, random = ~ 1 | g, correlation = corAR1(form = ~ visit | g), "
                "method = 'REML')"}),
    "ar1_1e6": (lambda: _ar1_sim(1_000_000), _ours_ar1_arrays, '"g"', {
        "nlme": "lme(y ~ x, data = d, random = ~ 1 | g, correlation = corAR1(form = ~ visit | g), "
                "method = 'REML')"}),
    "ar1_1e6_chunks": (lambda: _ar1_sim(1_000_000), _ours_ar1_chunks, '"g"', {}),
    "grouse_nb": (_grouse, lambda d: glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", d),
                  '"BROOD", "LOCATION", "YEAR", "INDEX"', {
                      "glmer.nb": "glmer.nb(TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION), data = d)",
                      "glmmTMB": "glmmTMB(TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION), "
                                 "family = nbinom2, data = d)"}),
    "gamma_log": (lambda: _reference_csv("gamma_log_sim"),
                  lambda d: glmer("y ~ x + (1 | g)", d, family="gamma", link="log"), '"g"', {
                      "glmer": "glmer(y ~ x + (1 | g), family = Gamma(link = 'log'), data = d)",
                      "glmmTMB": "glmmTMB(y ~ x + (1 | g), family = Gamma(link = 'log'), data = d)"}),
    "nb_crossed_1e5": (lambda: _nb_crossed(100_000), lambda d: glmer_nb("y ~ x + (1 | u) + (1 | v)", d),
                       '"u", "v"', {
                           "glmmTMB": "glmmTMB(y ~ x + (1 | u) + (1 | v), family = nbinom2, data = d)",
                           "glmer.nb": "glmer.nb(y ~ x + (1 | u) + (1 | v), data = d)"}),
}
_SLOW_R = {("nb_crossed_1e5", "glmer.nb"), ("ar1_1e6", "nlme")}
_REML = {"ovary_ar1", "bodyweight_car1", "orthodont_cs", "ar1_1e4", "ar1_1e5", "ar1_1e6",
         "ar1_1e6_chunks"}
# cases printed next to another fit of ours: case -> (its label, the fit)
_ALSO_OURS = {"ar1_1e6_chunks": ("in memory", _ours_ar1_arrays)}
_PACKAGE = {"nlme": "nlme", "glmer.nb": "lme4", "glmer": "lme4", "glmmTMB": "glmmTMB"}


def time_ours(case: str, data: pd.DataFrame, repeat: int, fit_ours=None) -> tuple[float, float, str]:
    fit_ours = CASES[case][1] if fit_ours is None else fit_ours
    best, fit = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = fit_ours(data)
        best = min(best, time.perf_counter() - start)
    note = "; ".join(sorted({str(w.message)[:60] for w in caught}))
    return best, float(fit.llf_), note


def time_r(case: str, peer: str, path: str, repeat: int) -> tuple[float, float, str]:
    labels, call = CASES[case][2], CASES[case][3][peer]
    script = f"""
suppressMessages(library({_PACKAGE[peer]}))
path <- "{path}"
{_LABEL_READ.format(labels=labels)}
best <- Inf
for (i in seq_len({repeat})) {{
  t <- system.time(fit <- suppressWarnings({call}))[["elapsed"]]
  best <- min(best, t)
}}
cat(best, format(as.numeric(logLik(fit)), digits = 15), sep = "\\t")
"""
    try:
        out = env.run_r(script, [], timeout=3600)
    except Exception as exc:  # a peer that fails is reported, the others still run
        return np.nan, np.nan, f"failed: {str(exc)[-160:]}"
    seconds, llf = out.strip().split("\t")[:2]
    return float(seconds), float(llf), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--peers", default="ours,R", help="ours and/or R (nlme, glmmTMB, lme4)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slow-r", action="store_true", help="also glmer.nb on the 10^5-row crossed case and nlme on 10^6 rows")
    args = parser.parse_args()
    peers = args.peers.split(",")
    r_missing = env.r_available(("lme4", "nlme", "glmmTMB")) if "R" in peers else "not asked"
    env.header(f"correlated residuals and NB/Gamma GLMMs, best of {args.repeat} per peer", None,
               MixedLMRegressor, r=r_missing is None)
    print(f"{'case':<16}{'peer':<10}{'seconds':>10}{'log-likelihood':>18}{'peer/ours':>11}  note")
    for case in args.cases.split(","):
        data = CASES[case][0]()
        CASES[case][1](data)  # warm-up (imports, caches)
        ours = time_ours(case, data, args.repeat) if "ours" in peers else None
        if ours:
            print(f"{case:<16}{'ours':<10}{ours[0]:>10.3f}{ours[1]:>18.6f}{'':>11}  {ours[2]}", flush=True)
        if ours and case in _ALSO_OURS:
            label, fit_other = _ALSO_OURS[case]
            other = time_ours(case, data, args.repeat, fit_other)
            note = f"logLik - ours = {other[1] - ours[1]:.2e}" + (f"; {other[2]}" if other[2] else "")
            print(f"{case:<16}{label:<10}{other[0]:>10.3f}{other[1]:>18.6f}"
                  f"{other[0] / ours[0]:>10.2f}x  {note}", flush=True)
        if "R" not in peers:
            continue
        if r_missing:
            print(f"{case:<16}{'R':<10}{'':>10}{'':>18}{'':>11}  {r_missing}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "data.csv")
            data.to_csv(path, index=False)
            for peer in CASES[case][3]:
                if (case, peer) in _SLOW_R and not args.slow_r:
                    print(f"{case:<16}{peer:<10}{'':>10}{'':>18}{'':>11}  skipped (--slow-r)")
                    continue
                seconds, llf, note = time_r(case, peer, path, args.repeat)
                ratio = f"{seconds / ours[0]:.2f}x" if ours and np.isfinite(seconds) else ""
                print(f"{case:<16}{peer:<10}{seconds:>10.3f}{llf:>18.6f}{ratio:>11}  {note}", flush=True)
    if shutil.which("Rscript") is None and "R" in peers:
        print("# Rscript not found: R rows skipped")
    env.footer()


if __name__ == "__main__":
    main()
