"""
Cross-validating a mixed model inside a scikit-learn Pipeline
=============================================================

Orthodont (nlme): distance ~ age * Sex with a random intercept and slope on age per
Subject. A ColumnTransformer centres age and one-hot encodes Sex; MixedLMRegressor gets
the groups and the random-effects design through metadata routing; GroupKFold keeps
every subject's rows in one fold, so each test fold is made of unseen subjects and is
scored on population predictions.

Run: ``python examples/cross_validation.py``
"""

import numpy as np
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import GroupKFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures, StandardScaler

from mixedlm_sklearn import MixedLMRegressor
from mixedlm_sklearn.datasets import load_orthodont


# %%
# The example's work: ``main`` (which the tests call too).


def main(n_splits: int = 3):
    sklearn.set_config(enable_metadata_routing=True)
    df = load_orthodont()
    X = df[["age", "Sex"]]
    features = ColumnTransformer([
        ("age", StandardScaler(with_std=False), ["age"]),
        ("sex", OneHotEncoder(drop="first", sparse_output=False), ["Sex"]),
    ])
    model = Pipeline([
        ("features", features),
        ("interactions", PolynomialFeatures(degree=2, interaction_only=True, include_bias=False)),
        ("lmm", MixedLMRegressor().set_fit_request(groups=True, Z=True)),
    ])
    Z = np.column_stack([np.ones(len(df)), df["age"] - df["age"].mean()])
    cv = cross_validate(model, X, df["distance"], cv=GroupKFold(n_splits=n_splits),
                        params={"groups": df["Subject"].to_numpy(), "Z": Z},
                        scoring="neg_root_mean_squared_error", return_estimator=True)
    rmse = -cv["test_score"]
    print(f"GroupKFold({n_splits}) RMSE on unseen subjects: {np.round(rmse, 3)}, mean {rmse.mean():.3f}")
    for fold, fitted in enumerate(cv["estimator"]):
        lmm = fitted["lmm"]
        print(f"fold {fold}: {lmm.n_groups_} training subjects, sd(intercept) "
              f"{np.sqrt(lmm.cov_re_[0, 0]):.3f}, residual sd {np.sqrt(lmm.scale_):.3f}")
    sklearn.set_config(enable_metadata_routing=False)
    return rmse, cv["estimator"]


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    main()
