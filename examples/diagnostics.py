"""
Diagnostic plots: residuals, random effects, likelihood profiles
================================================================

Three checks of ``Reaction ~ Days + (Days | Subject)`` on sleepstudy, the plots an lme4
user draws with ``plot(fit)``, ``qqmath(ranef(fit))`` and ``xyplot(profile(fit))``:

1. conditional residuals against fitted values: no trend and an even spread;
2. normal QQ plots of the conditional modes (BLUPs) of the intercept and the slope:
   the model assumes the random effects normal;
3. profile zeta of the two standard deviations and of sigma: each curve crosses the
   dashed lines at +-1.96 at the 95% profile-likelihood bounds, and a straight line
   would mean that the Wald interval is as good (the standard deviations' curves bend:
   their intervals are not symmetric).

Run: ``python examples/diagnostics.py [folder]``: the figures are written to ``folder``
(default a new temporary folder, whose name is printed).
"""

import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from mixedlm_sklearn import lmer
from mixedlm_sklearn.datasets import load_sleepstudy
from mixedlm_sklearn.plotting import profile_zeta, qq_ranef, residuals_vs_fitted

PROFILED = ["sd_(Intercept)|Subject", "sd_Days|Subject", "sigma"]


# %%
# The example's work: ``main`` (which the tests call too). Without ``plot_dir`` the
# figures are returned open; with it they are written there and closed.


def main(plot_dir: str | None = None, n_points: int = 9):
    fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())

    residuals, ax = plt.subplots(figsize=(6, 4))
    residuals_vs_fitted(fit, ax=ax)
    ax.set_title("Conditional residuals against fitted values")

    qq, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, column in zip(axes, ["(Intercept)", "Days"]):
        qq_ranef(fit, column=column, ax=ax)
        ax.set_title(f"BLUPs of {column}")

    prof = fit.profile(which=PROFILED, n_points=n_points)
    zeta, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, param in zip(axes, PROFILED):
        profile_zeta(prof, param, ax=ax)
    zeta.tight_layout()

    intervals = fit.conf_int(method="profile", which=PROFILED)
    print("95% profile-likelihood intervals (lme4's confint(fit)):")
    print(intervals.round(3).to_string())

    figures = {"residuals_vs_fitted": residuals, "qq_ranef": qq, "profile_zeta": zeta}
    if plot_dir is not None:
        for name, figure in figures.items():
            path = Path(plot_dir) / f"sleepstudy_{name}.png"
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            print(f"{name}: {path}")
    return fit, prof, figures


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="mixedlm_"))
