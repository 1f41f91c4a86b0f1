"""
Crossed random effects on InstEval: students x lecturers x departments
======================================================================

``y ~ service + (1 | s) + (1 | d) + (1 | dept)`` by REML, the model lme4's documentation
fits (statsmodels' MixedLM cannot fit crossed factors). Three grouping factors go in
``groups`` as a DataFrame; every factor without a ``Z`` entry gets a random intercept.

Run: ``python examples/insteval.py``
"""

import time

import numpy as np

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_insteval


# %%
# The example's work: ``main`` (which the tests call too).


def main():
    df = load_insteval()
    X = (df[["service"]] == "1").astype(float)
    start = time.perf_counter()
    est = MixedLMRegressor().fit(X, df["y"], groups=df[["s", "d", "dept"]])
    elapsed = time.perf_counter() - start
    print(f"fit in {elapsed:.2f} s: REML log-likelihood {est.llf_:.4f} (lme4: -118866.9171)")
    print(f"fixed effects: intercept {est.intercept_:.5f}, service {est.coef_[0]:.5f}")
    for name, cov in est.cov_re_.items():
        print(f"  {name:5s} {est.n_groups_[name]:5d} levels, sd {np.sqrt(cov[0, 0]):.4f}")
    print(f"  residual sd {np.sqrt(est.scale_):.4f}")
    top = est.random_effects_["d"]["(Intercept)"].sort_values().tail(3)
    print("lecturers with the largest BLUPs:", ", ".join(f"{k} ({v:+.3f})" for k, v in top.items()))
    return est


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    main()
