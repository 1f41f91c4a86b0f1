"""
Choosing REML vs ML and the random-effects covariance with GridSearchCV
=======================================================================

sleepstudy: Reaction ~ Days with a random intercept and slope per Subject. Two ways to
validate:

* ``GroupKFold`` holds out whole subjects: the test subjects are new, predictions are
  population-level, and only the fixed effects matter;
* ``KFold`` over rows holds out some days of every subject: ``score`` then uses the
  subjects' BLUPs (``groups`` and ``Z`` routed to ``score``), which is where the
  random-effects covariance and REML vs ML make a difference.

Run: ``python examples/grid_search.py``
"""

import numpy as np
import pandas as pd
import sklearn
from sklearn.model_selection import GridSearchCV, KFold

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_sleepstudy


# %%
# The example's work: ``main`` (which the tests call too).


def main():
    sklearn.set_config(enable_metadata_routing=True)
    df = load_sleepstudy()
    Z = np.column_stack([np.ones(len(df)), df["Days"]])
    estimator = (MixedLMRegressor()
                 .set_fit_request(groups=True, Z=True)
                 .set_score_request(groups=True, Z=True))
    search = GridSearchCV(
        estimator,
        {"reml": [True, False], "cov_type": ["unstructured", "diagonal"]},
        cv=KFold(n_splits=5, shuffle=True, random_state=0),
    )
    search.fit(df[["Days"]], df["Reaction"], groups=df["Subject"].to_numpy(), Z=Z)
    table = pd.DataFrame(search.cv_results_)[["param_reml", "param_cov_type", "mean_test_score", "rank_test_score"]]
    print("conditional R^2 on held-out days of seen subjects:")
    print(table.to_string(index=False))
    best = search.best_estimator_
    print(f"best: {search.best_params_}; refit on all {best.n_groups_} subjects, llf {best.llf_:.3f}")
    sklearn.set_config(enable_metadata_routing=False)
    return search


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    main()
