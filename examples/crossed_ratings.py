"""
User x item ratings: crossed random effects in a Pipeline
=========================================================

High-cardinality ids (users, items) enter as crossed random intercepts,
``rating ~ x + (1 | user) + (1 | item)``, instead of one-hot columns: the model shrinks
each id's effect by how much data it has. The data are the issue's synthetic ratings
(Zipf-popular items). MixedLMRegressor sits at the end of a Pipeline; the ids reach it by
metadata routing (aliased ``groups`` so that GroupKFold gets the user ids); GroupKFold
over users makes every test fold a set of new users, scored with the items' effects
(known from training) and the population value for the unseen users, as a recommender
meets cold-start users. ``solver="auto"`` picks the exact or the iterative solver by a
cost estimate (``verbose=1`` prints which); ``solver="iterative"`` fits 10^7 ratings with
10^6 users and 10^5 items in minutes (README, "Crossed random effects at scale").

Run: ``python examples/crossed_ratings.py``
"""

import numpy as np
import pandas as pd
import sklearn
from sklearn.model_selection import GroupKFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mixedlm_sklearn import MixedLMRegressor


def ratings(n: int, users: int, items: int, seed: int = 1) -> pd.DataFrame:
    """The issue's generator: user and item effects, three covariates, Zipf items."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    item = np.minimum(rng.zipf(1.3, n) - 1, items - 1)
    x = rng.standard_normal((n, 3))
    y = x @ [1, -0.5, 0.2] + 0.8 * rng.standard_normal(users)[user] \
        + 0.5 * rng.standard_normal(items)[item] + rng.standard_normal(n)
    return pd.DataFrame({"user": user, "item": item, "x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2],
                         "rating": y})


# %%
# The example's work: ``main`` (which the tests call too).


def main(n: int = 200_000, users: int = 10_000, items: int = 2_000, n_splits: int = 3,
         solver: str = "auto"):
    sklearn.set_config(enable_metadata_routing=True)
    try:
        df = ratings(n, users, items)
        X, y = df[["x0", "x1", "x2"]], df["rating"]
        lmm = (MixedLMRegressor(reml=False, solver=solver)
               .set_fit_request(groups="ids")  # fit: both ids (crossed terms)
               .set_score_request(groups="item_ids"))  # score: items only (users are new)
        model = Pipeline([("scale", StandardScaler()), ("lmm", lmm)])
        cv = cross_validate(model, X, y, cv=GroupKFold(n_splits=n_splits),
                            params={"groups": df["user"],  # GroupKFold: folds of users
                                    "ids": df[["user", "item"]], "item_ids": df[["item"]]},
                            return_estimator=True)
    finally:
        sklearn.set_config(enable_metadata_routing=False)
    print(f"GroupKFold({n_splits}) over users, R^2 on new users: {np.round(cv['test_score'], 4)}")
    for fold, fitted in enumerate(cv["estimator"]):
        m = fitted["lmm"]
        chosen = "iterative" if getattr(m.model_.deviance, "stochastic", False) else "exact"
        print(f"fold {fold}: {m.n_groups_['user']} users, {m.n_groups_['item']} items, "
              f"{chosen} solver, var(user) {m.cov_re_['user'][0, 0]:.3f}, "
              f"var(item) {m.cov_re_['item'][0, 0]:.3f}, residual {m.scale_:.3f}, "
              f"fit {cv['fit_time'][fold]:.2f} s")
    return cv


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    main()
