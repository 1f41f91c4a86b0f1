"""
The statsmodels MixedLM documentation example, fitted to lme4's optimum
=======================================================================

Pig growth (dietox): ``Weight ~ Time`` with a random intercept per pig, then a random
intercept and a random slope on Time. statsmodels 0.15 stops on the second model with
ConvergenceWarnings at log-likelihood -2220.39; lme4 reaches -2217.047, and so do we.

Run: ``python examples/dietox.py``
"""

import warnings

import numpy as np

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_dietox


def fit_models():
    df = load_dietox()
    X, y, pig = df[["Time"]], df["Weight"], df["Pig"]
    intercept = MixedLMRegressor().fit(X, y, groups=pig)
    slopes = MixedLMRegressor().fit(
        X, y, groups=pig, Z=df[["Time"]].assign(Intercept=1.0)[["Intercept", "Time"]]
    )
    return intercept, slopes


def statsmodels_llf():
    """statsmodels' answer on the random-slope model, if statsmodels is installed."""
    try:
        import statsmodels.formula.api as smf
    except ImportError:
        return None
    df = load_dietox()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = smf.mixedlm("Weight ~ Time", df, groups=df["Pig"], re_formula="~Time").fit()
    return res.llf, len(caught)


# %%
# The example's work: ``main`` (which the tests call too).


def main():
    intercept, slopes = fit_models()
    for title, est in [("random intercept", intercept), ("random intercept + slope on Time", slopes)]:
        print(f"== Weight ~ Time, {title} per Pig (REML) ==")
        print(est.summary())
        print()
    sm = statsmodels_llf()
    if sm is not None:
        print(f"statsmodels MixedLM (random slope): llf {sm[0]:.3f} with {sm[1]} warnings; "
              f"mixedlm-sklearn: {slopes.llf_:.3f}, converged={slopes.converged_}")
    return intercept, slopes


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    np.set_printoptions(precision=4, suppress=True)
    main()
