"""
Power by simulation: how many subjects does a study need?
=========================================================

simr's question (``powerSim``, ``powerCurve``) answered from a pilot fit: with the
variances of sleepstudy's ``Reaction ~ Days + (Days | Subject)``, how many subjects
does a study need to detect an average slope of 3 ms per day (a third of the one
observed) with 80% power?

For each number of subjects, responses are drawn from the model with the slope set
to 3 (the subjects' rows repeated under new labels, as simr's ``extend``), the model is
refitted and the slope tested with Satterthwaite's t test; the power is the fraction of
significant tests, shown with its 95% Clopper-Pearson interval.

Run: ``python examples/power_analysis.py [folder]``: the figure is written to ``folder``
(default a new temporary folder, whose name is printed).
"""

import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from mixedlm_sklearn import lmer, power_curve
from mixedlm_sklearn.datasets import load_sleepstudy


# %%
# The example's work: ``main`` (which the tests call too). Without ``plot_dir`` the
# figure is returned open; with it it is written there and closed.


def main(plot_dir: str | None = None, n_sim: int = 60,
         n_subjects: tuple[int, ...] = (6, 12, 18, 24, 30)):
    pilot = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    curve = power_curve(pilot, "Days", along="Subject", n_groups=list(n_subjects),
                        effect=3.0, n_sim=n_sim, random_state=1)
    print(f"Power to detect a slope of 3 ms/day ({n_sim} simulations per size):")
    print(curve.round(3).to_string(index=False))

    figure, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(curve["n_groups"], curve["power"],
                yerr=[curve["power"] - curve["lower"], curve["upper"] - curve["power"]],
                fmt="o-", capsize=3)
    ax.axhline(0.8, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="number of subjects", ylabel="power", ylim=(0, 1),
           title="Power of the test of the Days slope (effect 3 ms/day)")
    if plot_dir is not None:
        path = Path(plot_dir) / "sleepstudy_power_curve.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        print(f"power curve: {path}")
    return curve, figure


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="mixedlm_"))
