"""
Orthodont: from the fit to the tables of a paper
================================================

``distance ~ age * Sex + (age | Subject)`` (nlme's Orthodont: the distance from the
pituitary to the pterygomaxillary fissure of 27 children, measured at ages 8 to 14):

1. the fit and its summary with Kenward-Roger t tests (lmerTest's ``summary(ddf = "K-R")``),
2. the type III ANOVA table (lmerTest's ``anova``) and the random-effects tests (``ranova``),
3. the marginal means of Sex at the mean age with Tukey-adjusted pairs (emmeans),
4. Nakagawa's R2 and the ICC of the random-intercept model (performance),
5. 95% prediction intervals of new measurements, for three children and a new child,
   plotted when matplotlib is installed: to ``--plot PATH``, by default to
   ``orthodont_prediction_intervals.png`` in a new temporary folder (the path is printed).

Run: ``python examples/analysis.py [--plot PATH]``
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mixedlm_sklearn import lmer
from mixedlm_sklearn.datasets import load_orthodont


# %%
# The example's work: ``main`` (which the tests call too).


def main(plot_path: str | Path | None = None) -> dict:
    """The example; ``plot_path`` the plot's file (default: in a new temporary folder)."""
    df = load_orthodont()
    df["Sex"] = pd.Categorical(df["Sex"], categories=["Male", "Female"])  # R's level order
    fit = lmer("distance ~ age * Sex + (age | Subject)", df)
    print(fit.summary(ddf="kenward-roger"))

    print("\nType III ANOVA (Kenward-Roger):")
    table = fit.anova(type=3, ddf="kenward-roger")
    print(table.round(4).to_string())
    print("\nRandom effects (likelihood-ratio tests):")
    ranova = fit.ranova()
    print(ranova.round(4).to_string())

    emm = fit.emmeans("Sex")
    pairs = emm.pairs(adjust="tukey")
    print("\nMarginal means of Sex at the mean age (Kenward-Roger df):")
    print(emm.table.round(4).to_string(index=False))
    print(pairs.round(4).to_string(index=False))

    intercept_model = lmer("distance ~ age * Sex + (1 | Subject)", df)
    r2, icc = intercept_model.r2(), intercept_model.icc()
    print(f"\nRandom-intercept model: R2 marginal {r2.marginal:.4f}, conditional "
          f"{r2.conditional:.4f}; ICC adjusted {icc.adjusted:.4f}")

    # 95% prediction intervals of a new measurement, ages 8 to 14, for three children seen
    # in the fit and for a child who was not (the random effects' full variance enters)
    ages = np.linspace(8.0, 14.0, 25)
    children = ["M01", "F05", "M16", "new girl"]
    curves = {}
    for child in children:
        sex = "Female" if child.startswith("F") or child == "new girl" else "Male"
        rows = pd.DataFrame({"age": ages, "Sex": pd.Categorical([sex] * ages.size,
                                                              categories=["Male", "Female"]),
                             "Subject": child, "distance": 0.0})
        # a child of no group of the fit is a new level: the population curve, and the
        # random effects' full variance in the interval
        mean = fit.predict(rows)
        lower, upper = fit.predict_interval(rows)
        curves[child] = (mean, lower, upper)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
    else:
        if plot_path is None:
            plot_path = (Path(tempfile.mkdtemp(prefix="mixedlm_sklearn_"))
                         / "orthodont_prediction_intervals.png")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for child, (mean, lower, upper) in curves.items():
            line, = ax.plot(ages, mean, label=child)
            ax.fill_between(ages, lower, upper, color=line.get_color(), alpha=0.15)
            seen = df[df["Subject"] == child]
            ax.plot(seen["age"], seen["distance"], "o", color=line.get_color())
        ax.set(xlabel="age (years)", ylabel="distance (mm)",
               title="95% prediction intervals of a new measurement")
        ax.legend()
        fig.savefig(plot_path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        print(f"\nprediction intervals: {Path(plot_path).resolve()}")
    return {"fit": fit, "anova": table, "ranova": ranova, "emmeans": emm.table, "pairs": pairs,
            "r2": r2, "icc": icc, "intervals": curves}


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Orthodont: from the fit to a paper's tables")
    parser.add_argument("--plot", metavar="PATH",
                        help="where to write the plot of prediction intervals (PNG); default: "
                             "a new temporary folder, printed")
    main(parser.parse_args().plot)
