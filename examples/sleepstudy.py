"""
sleepstudy: random intercept and slope per subject, the lme4 way
================================================================

``Reaction ~ Days + (Days | Subject)`` fitted with the formula interface, then what an
lme4 user looks at: the summary (Satterthwaite tests as in lmerTest), profile-likelihood
intervals, a likelihood-ratio test of the random slope, and a caterpillar plot of the
BLUPs when matplotlib is installed: written to ``--plot PATH``, by default to
``sleepstudy_caterpillar.png`` in a new temporary folder (the path is printed).

Run: ``python examples/sleepstudy.py [--plot PATH]``
"""

import argparse
import tempfile
from pathlib import Path

from mixedlm_sklearn import lmer, lr_test
from mixedlm_sklearn.datasets import load_sleepstudy


# %%
# The example's work: ``main`` (which the tests call too).


def main(plot_path: str | Path | None = None):
    """The example; ``plot_path`` the plot's file (default: in a new temporary folder)."""
    df = load_sleepstudy()
    fit = lmer("Reaction ~ Days + (Days | Subject)", df)
    print(fit.summary())
    print()
    intervals = fit.conf_int(method="profile")
    print("95% profile-likelihood intervals (lme4's confint(fit)):")
    print(intervals.round(4).to_string())
    print()
    # The random slope is a variance component: ML fits, boundary-corrected p-value.
    slopes_ml = lmer("Reaction ~ Days + (Days | Subject)", df, reml=False)
    intercept_ml = lmer("Reaction ~ Days + (1 | Subject)", df, reml=False)
    test = lr_test(intercept_ml, slopes_ml, boundary=True)
    print(f"LR test of the random slope: chi2 = {test.statistic:.3f}, df = {test.df}, "
          f"p = {test.pvalue:.3g} (boundary-corrected)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from mixedlm_sklearn.plotting import caterpillar
    except ImportError:
        print("matplotlib not installed: no plot")
    else:
        if plot_path is None:
            plot_path = Path(tempfile.mkdtemp(prefix="mixedlm_sklearn_")) / "sleepstudy_caterpillar.png"
        ax = caterpillar(fit, column="Days")
        ax.figure.savefig(plot_path, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        print(f"caterpillar plot of the Days BLUPs: {Path(plot_path).resolve()}")
    return fit, intervals, test


# %%
# Run it: what it prints and draws.

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="lme4's sleepstudy analysis")
    parser.add_argument("--plot", metavar="PATH",
                        help="where to write the caterpillar plot (PNG); default: a new "
                             "temporary folder, printed")
    main(parser.parse_args().plot)
