"""The repository's own instructions: README's commands are what CI runs, and the plain
test command works on a machine without a display."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def _readme_commands():
    """The commands of README's first ``bash`` block (comments and blank lines dropped)."""
    block = re.search(r"```bash\n(.*?)```", (REPOSITORY / "README.md").read_text(), re.DOTALL)
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_ci_runs_readmes_test_command_verbatim():
    """README's second command (install with the test extras, check the installed versions
    are consistent, run the tests) and its third (build the documentation, warnings as
    errors) are lines of ``.ci/run``, with nothing set around it
    that a reader of the README would not have (no environment variables exported)."""
    install, test, docs = _readme_commands()
    assert install.startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert "pip check" in test  # the resolver can pair mismatched dask and distributed
    ci = [line.strip() for line in (REPOSITORY / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith("#")]
    assert test in commands
    assert docs in commands and docs.endswith("python -m sphinx -W -b html docs docs/_build/html")
    assert ". .venv/bin/activate" in commands
    assert not [line for line in commands if line.startswith("export")]


def test_the_test_session_draws_with_agg_whatever_the_environment_says():
    """tests/conftest.py selects matplotlib's Agg backend for the test process, whatever
    ``MPLBACKEND`` says (a desktop's interactive backend would open windows; here ``svg``,
    which loads anywhere and so shows the choice), and leaves the variable as it was."""
    env = {**os.environ, "MPLBACKEND": "svg", "MIXEDLM_BACKEND_PROBE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{Path(__file__).name}::test_backend_probe"],
        cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


if os.environ.get("MIXEDLM_BACKEND_PROBE") == "1":  # collected only in that session

    def test_backend_probe():
        """Run by the test above in a session of its own."""
        import matplotlib
        import matplotlib.pyplot as plt

        assert matplotlib.get_backend().lower() == "agg"
        assert os.environ["MPLBACKEND"] == "svg"
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        fig.canvas.draw()
        plt.close(fig)
