"""What every benchmark prints about the machine, threads and R, shared by the scripts.

Not a benchmark itself. The scripts print, at the start: the load average, the number of
cores, the versions, the BLAS libraries numpy/scipy loaded and their thread counts
(``threadpoolctl``), and what each side's threads are; at the end the load average
again. Timings are only comparable when the load stayed near 0 from start to end.

Threads: ours runs its numerical work with BLAS on one thread (the package limits it
while a fit runs and restores it after); ``--threads N`` is passed to ours as ``n_jobs``
when its estimators have that parameter (they do not yet: the option is then recorded
and has no effect). The peers keep their defaults, free to use every core: mixedlm-rs
(Rayon), mixedlm and statsmodels (numpy's OpenBLAS), gpboost (OpenMP); lme4 runs on the
BLAS R was built with (printed).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile

PEER_THREADS = ("peers keep their own threading, free to use every core: mixedlm-rs (Rayon), "
                "mixedlm/statsmodels (numpy's BLAS), gpboost (OpenMP), lme4 (R's BLAS)")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def blas_threads() -> str:
    """The BLAS/OpenMP libraries loaded in this process and their thread counts."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    import numpy  # noqa: F401  (load numpy's and scipy's BLAS before looking)
    import scipy.linalg  # noqa: F401

    seen = []
    for info in threadpool_info():
        name = " ".join(str(v) for v in (info.get("internal_api"), info.get("version")) if v)
        item = f"{name} ({info['user_api']}): {info['num_threads']} threads"
        if item not in seen:
            seen.append(item)
    return "; ".join(seen) or "none found"


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def ours_n_jobs(estimator_cls, threads: int | None) -> tuple[dict, str]:
    """``{"n_jobs": threads}`` when the estimator takes it, and a sentence for the header."""
    if threads is None:
        return {}, "ours: BLAS on 1 thread inside a fit (the package's setting); --threads not given"
    if "n_jobs" in estimator_cls().get_params():
        return {"n_jobs": threads}, f"ours: n_jobs={threads} (--threads)"
    return {}, (f"ours: --threads {threads} recorded but not applied ({estimator_cls.__name__} has no "
                "n_jobs yet); BLAS on 1 thread inside a fit")


def header(title: str, threads: int | None = None, estimator_cls=None, r: bool = False) -> None:
    """Print the machine, versions and threads before a benchmark."""
    import numpy

    print(f"# {title}")
    print(f"# load average at start (1, 5, 15 min): {load()}; cores: {os.cpu_count()}")
    vers = [f"python {sys.version.split()[0]}", f"numpy {numpy.__version__}"]
    for dist in ("mixedlm-sklearn", "mixedlm-rs", "mixedlm", "statsmodels"):
        v = version(dist)
        if v:
            vers.append(f"{dist} {v}")
    try:
        import mixedlm_sklearn

        vers.append(f"mixedlm_sklearn (imported) {mixedlm_sklearn.__version__} from "
                    f"{os.path.dirname(os.path.dirname(mixedlm_sklearn.__file__))}")
    except ImportError:
        pass
    print("# versions: " + ", ".join(vers))
    print(f"# BLAS in this process: {blas_threads()}")
    if estimator_cls is not None:
        print("# " + ours_n_jobs(estimator_cls, threads)[1])
    print("# " + PEER_THREADS)
    if r:
        print(f"# R: {r_description()}")
    sys.stdout.flush()


def footer() -> None:
    print(f"\n# load average at end (1, 5, 15 min): {load()}")


# ---- R ------------------------------------------------------------------------------------

_R_INFO = r"""
cat(R.version.string, "; lme4", tryCatch(as.character(packageVersion("lme4")), error = function(e) "missing"),
    "; BLAS", extSoftVersion()[["BLAS"]], "; LAPACK", La_library(), "\n")
"""


def r_available(packages: tuple[str, ...] = ("lme4",)) -> str | None:
    """Why R with ``packages`` cannot run here, or None when it can."""
    if shutil.which("Rscript") is None:
        return "Rscript not on PATH"
    code = "; ".join(f"suppressMessages(library({p}))" for p in packages)
    if subprocess.run(["Rscript", "-e", code], capture_output=True).returncode != 0:
        return f"R packages {', '.join(packages)} do not all load"
    return None


def r_description() -> str:
    if shutil.which("Rscript") is None:
        return "not installed (lme4 rows skipped)"
    out = subprocess.run(["Rscript", "-e", _R_INFO], capture_output=True, text=True)
    text = " ".join(out.stdout.split())
    return (text or out.stderr.strip()[-200:]) + " (timed inside R: its start-up is not counted)"


def run_r(script: str, args: list[str], timeout: float = 24 * 3600) -> str:
    """Run an R script (text) with ``Rscript script args...``; its stdout (raises on failure)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.R")
        with open(path, "w") as fh:
            fh.write(script)
        out = subprocess.run(["Rscript", path, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError("R failed: " + out.stderr.strip()[-400:])
    return out.stdout


def verbose_lines(fit) -> tuple[object, list[str]]:
    """``fit()`` with its stdout captured (``verbose=1`` progress lines), and those lines."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = fit()
    return result, buf.getvalue().splitlines()


def solver_line(lines: list[str]) -> str:
    """The solver an estimator with ``verbose=1`` says it chose ("exact", "iterative"), or ""."""
    for line in lines:
        m = re.search(r"\] solver (\w+)", line)
        if m:
            return m.group(1)
    return ""
