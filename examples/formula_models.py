"""
Formula models as scikit-learn estimators, without metadata routing
===================================================================

sleepstudy: ``Reaction ~ Days + (Days | Subject)``. ``MixedLMRegressor(formula=...)``
takes a DataFrame whose columns hold the covariates *and* the grouping factor, so that

* ``cross_val_score(..., groups=df["Subject"], cv=GroupKFold())`` compares it with a ridge
  regression in a few lines (``groups=`` goes to the splitter only: no routing);
* ``GridSearchCV`` chooses among random-effects structures and REML vs ML;
* ``predict(new_df)`` predicts new rows as lme4's ``predict(fit, newdata)``: subjects seen
  in the fit get their own line, a new subject the population line (``re_form=None``
  asks for the population line everywhere);
* ``update`` and ``compare`` do lme4's ``update(m, . ~ . - Days)`` and ``anova(m0, m1)``.

Scoring: rows of subjects seen in training are predicted with their BLUPs, rows of unseen
subjects at the population level. ``GroupKFold`` therefore scores the prediction of new
subjects, ``KFold`` over rows the prediction of new days of known subjects.

Run: ``python examples/formula_models.py``
"""

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, cross_val_score
from sklearn.pipeline import make_pipeline

from mixedlm_sklearn import MixedLMRegressor, compare, update
from mixedlm_sklearn.datasets import load_sleepstudy


# %%
# The example's work: ``main`` (which the tests call too).


def main():
    df = load_sleepstudy()
    y = df["Reaction"]

    # 1. five-fold GroupKFold: a mixed model against ridge, both in pipelines
    mixed = MixedLMRegressor(formula="~ Days + (Days | Subject)")
    ridge = make_pipeline(ColumnTransformer([("days", "passthrough", ["Days"])]), Ridge())
    rmse = {name: -cross_val_score(model, df, y, groups=df["Subject"], cv=GroupKFold(5),
                                   scoring="neg_root_mean_squared_error")
            for name, model in {"mixed model": mixed, "ridge": ridge}.items()}
    for name, values in rmse.items():
        print(f"GroupKFold(5) RMSE, {name:11s}: {np.round(values, 2)}, mean {values.mean():.2f}")

    # 2. new days of known subjects: the random-effects structure matters
    search = GridSearchCV(mixed, {"formula": ["~ Days + (1 | Subject)", "~ Days + (Days | Subject)",
                                              "~ Days + (Days || Subject)"],
                                  "reml": [True, False]},
                          cv=KFold(5, shuffle=True, random_state=0),
                          scoring="neg_root_mean_squared_error")
    search.fit(df, y)
    print(f"KFold(5) over rows, best: {search.best_params_} "
          f"(RMSE {-search.best_score_:.2f})")

    # 3. prediction on new data, as lme4's predict(fit, newdata)
    fit = search.best_estimator_
    new = pd.DataFrame({"Days": [0, 9, 9], "Subject": ["308", "308", "a new subject"]})
    print("predictions:", fit.predict(new).round(2),
          "population:", fit.predict(new, re_form=None).round(2))

    # 4. model selection: lme4's update and anova
    m2 = MixedLMRegressor(formula="Reaction ~ Days + (Days | Subject)", reml=False).fit(df)
    m1 = update(m2, ". ~ . - (Days | Subject) + (1 | Subject)")
    m0 = update(m1, ". ~ . - Days")
    table = compare(m0, m1, m2, names=["m0", "m1", "m2"], data_name="sleepstudy")
    print(table)
    print(m2)  # lme4's print(fit)
    return rmse, search, table


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    main()
