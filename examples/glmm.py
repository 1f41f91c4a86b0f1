"""
Mixed-effects logistic regression on crossed factors, and glmer formulas
========================================================================

VerbAgg (lme4): 316 respondents answer 24 items; ``r2`` is 1 when a respondent would
(perhaps) react verbally aggressively in a situation. Respondents and items are crossed
random intercepts. The example fits the classifier, compares conditional, population and
marginal predictions, scores new respondents by cross-validation with ``GroupKFold``, and
fits lme4's cbpp model from a formula.

Run: ``python examples/glmm.py``
"""

from __future__ import annotations

import warnings

import numpy as np
import sklearn
from sklearn.model_selection import GroupKFold, cross_validate

from mixedlm_sklearn import MixedGLMClassifier, glmer
from mixedlm_sklearn.datasets import load_cbpp, load_verbagg


# %%
# The example's work: ``main`` (which the tests call too).


def main():
    df = load_verbagg()
    X = df[["Anger"]].assign(male=(df["Gender"] == "M") * 1.0,
                             scold=(df["btype"] == "scold") * 1.0,
                             shout=(df["btype"] == "shout") * 1.0,
                             self_=(df["situ"] == "self") * 1.0)
    groups = df[["id", "item"]]
    clf = MixedGLMClassifier().fit(X, df["r2"], groups=groups)
    print(clf.summary())
    # lme4: glmer(r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), VerbAgg, binomial)
    print(f"\nlog-likelihood {clf.llf_:.5f} (lme4 stops at -4075.70025)")

    rows = X.head(3)
    print("conditional on the BLUPs:", clf.predict_proba(rows, groups=groups.head(3))[:, 1].round(3))
    print("population (effects 0):   ", clf.predict_proba(rows)[:, 1].round(3))
    print("marginal (new id, item):  ", clf.predict_proba(rows, marginal=True)[:, 1].round(3))

    # New respondents: GroupKFold by respondent; the routed groups go to the splitter and
    # to fit (one grouping factor here: the splitter needs one label per row), and the
    # held-out respondents are unseen, so the log loss is that of population predictions.
    with sklearn.config_context(enable_metadata_routing=True):
        est = MixedGLMClassifier().set_fit_request(groups=True)
        cv = cross_validate(est, X, df["r2"], cv=GroupKFold(n_splits=3), scoring="neg_log_loss",
                            params={"groups": df["id"]})
    print("\nlog loss on unseen respondents:", (-cv["test_score"]).round(4))

    cbpp = glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_cbpp(), n_agq=25)
    print("\ncbpp, 25 quadrature nodes:")
    print(cbpp.summary())
    return clf, cv, cbpp


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        main()
