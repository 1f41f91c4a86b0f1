"""Small-data fits, where most users live: ours vs mixedlm-rs, mixedlm (and lme4).

REML, random intercept + slope with a full covariance, on the bundled data sets:
sleepstudy ``Reaction ~ Days + (Days | Subject)``, dietox ``Weight ~ Time + (Time | Pig)``,
Orthodont ``distance ~ age + (age | Subject)``. Each peer's best wall time of ``--repeat``
fits in one process, with its log-likelihood and the ratio to ours. lme4 joins when
``Rscript`` with lme4 is installed (timed inside R).

    python benchmarks/bench_small.py --repeat 20
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_fit import best_of  # noqa: E402

from mixedlm_sklearn import MixedLMRegressor  # noqa: E402
from mixedlm_sklearn.datasets import load_dietox, load_orthodont, load_sleepstudy  # noqa: E402

CASES = {  # name: (loader, response, covariate, group)
    "sleepstudy": (load_sleepstudy, "Reaction", "Days", "Subject"),
    "dietox": (load_dietox, "Weight", "Time", "Pig"),
    "orthodont": (load_orthodont, "distance", "age", "Subject"),
}

R_SCRIPT = r"""
suppressMessages(library(lme4))
a <- commandArgs(TRUE)
d <- read.csv(a[1]); d$g <- factor(d$g)
best <- Inf
for (i in seq_len(as.integer(a[2]))) {
  best <- min(best, system.time(fit <- lmer(y ~ x + (x | g), d, REML = TRUE))[["elapsed"]])
}
cat(sprintf("RESULT %.6f %.12f\n", best, as.numeric(logLik(fit))))
"""


def run_case(name: str, repeat: int) -> list[tuple[str, float, float]]:
    loader, yname, xname, gname = CASES[name]
    df = loader()
    y = df[yname].to_numpy(float)
    x = df[xname].to_numpy(float)
    g = df[gname].to_numpy()
    Z = np.column_stack([np.ones(len(df)), x])
    X = x[:, None]
    rows = []
    t, est = best_of(lambda: MixedLMRegressor().fit(X, y, groups=g, Z=Z), repeat)
    rows.append(("ours", t, float(est.llf_)))
    Xc = np.column_stack([np.ones(len(df)), x])
    try:
        import mixedlm_rs
        t, res = best_of(lambda: mixedlm_rs.MixedLM(y, Xc, groups=g, exog_re=Z).fit(reml=True), repeat)
        rows.append(("mixedlm-rs", t, float(res.llf)))
    except ImportError:
        pass
    try:
        import mixedlm
        import pandas as pd
        frame = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
        t, res = best_of(lambda: mixedlm.lmer("y ~ x + (x | g)", frame, REML=True), repeat)
        rows.append(("mixedlm", t, float(res.logLik())))
    except ImportError:
        pass
    if shutil.which("Rscript"):
        with tempfile.TemporaryDirectory() as tmp:
            import pandas as pd
            path = os.path.join(tmp, "d.csv")
            pd.DataFrame({"y": y, "x": x, "g": g.astype(str)}).to_csv(path, index=False)
            script = os.path.join(tmp, "fit.R")
            with open(script, "w") as fh:
                fh.write(R_SCRIPT)
            out = subprocess.run(["Rscript", script, path, str(repeat)], capture_output=True, text=True)
            for line in out.stdout.splitlines():
                if line.startswith("RESULT"):
                    _, t, llf = line.split()
                    rows.append(("lme4", float(t), float(llf)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20, help="best of N fits per peer")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} (2-core machine); best of {args.repeat}")
    for name in args.cases.split(","):
        rows = run_case(name, args.repeat)
        ours = rows[0][1]
        print(f"\n{name}")
        for peer, t, llf in rows:
            print(f"  {peer:<11} {1000 * t:9.2f} ms  ratio to ours {t / ours:6.2f}  REML logLik {llf:.6f}")


if __name__ == "__main__":
    main()
