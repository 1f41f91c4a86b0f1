"""Execute a page's code blocks at build time and show what they print.

A ``runcode`` directive holds Python code. The blocks of one page run in order in one
namespace (as cells of a notebook would), with the repository's package importable.
What the code prints, the ``repr`` of a last bare expression (as an interactive
session shows it; not when the block ends with ``;``), the warnings it raises and the matplotlib figures it leaves open
are inserted under the code. A block that raises stops the build with its traceback:
a page's examples cannot rot silently.

Options: ``:hide-code:`` (show only the output), ``:hide-output:`` (run, show only the
code), ``:figure-width:`` (CSS width of the figures, default ``80%``).

In MyST Markdown::

    ```{runcode}
    fit = lmer("Reaction ~ Days + (Days | Subject)", load_sleepstudy())
    print(fit.summary())
    ```
"""

from __future__ import annotations

import ast
import contextlib
import io
import textwrap
import traceback
import warnings
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

_FIGURE_DIR = "_generated/runcode"


def _namespace(env) -> dict:
    """The namespace of the page being read (``env.temp_data`` is per document).

    ``DOCS`` is the documentation's source folder (a ``pathlib.Path``), for pages that
    read the data files kept there.
    """
    return env.temp_data.setdefault("runcode_namespace",
                                    {"__name__": "__runcode__", "DOCS": Path(env.srcdir)})


def _run(code: str, namespace: dict, origin: str) -> str:
    """Execute ``code``; return what it printed, its warnings and a last expression's repr."""
    tree = ast.parse(code, filename=origin)
    last = None
    # a last bare expression is shown, unless the line ends with ";" (as in a notebook)
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
        last = ast.Expression(tree.body.pop().value)
    out = io.StringIO()
    import pandas as pd

    with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught, \
            pd.option_context("display.width", 100, "display.max_columns", 30):
        warnings.simplefilter("default")
        exec(compile(tree, origin, "exec"), namespace)
        if last is not None:
            value = eval(compile(last, origin, "eval"), namespace)
            if value is not None:
                print(repr(value))
    text = out.getvalue()
    for w in caught:
        text += f"{w.category.__name__}: {w.message}\n"
    return text.rstrip("\n")


def _figures(app, docname: str, counter: int) -> list[str]:
    """Save and close the open matplotlib figures; their paths relative to the source dir."""
    import sys

    if "matplotlib.pyplot" not in sys.modules:
        return []
    import matplotlib.pyplot as plt

    paths = []
    folder = Path(app.srcdir) / _FIGURE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for k, number in enumerate(plt.get_fignums()):
        name = f"{docname.replace('/', '-')}-{counter}-{k}.png"
        plt.figure(number).savefig(folder / name, dpi=100, bbox_inches="tight")
        paths.append(f"/{_FIGURE_DIR}/{name}")
    plt.close("all")
    return paths


class RunCode(SphinxDirective):
    has_content = True
    option_spec = {
        "hide-code": directives.flag,
        "hide-output": directives.flag,
        "figure-width": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        code = textwrap.dedent("\n".join(self.content))
        env = self.env
        counter = env.temp_data["runcode_counter"] = env.temp_data.get("runcode_counter", 0) + 1
        source, line = self.get_source_info()
        origin = f"{source}:{line}"
        try:
            output = _run(code, _namespace(env), origin)
        except Exception as err:
            raise ExtensionError(
                f"runcode block at {origin} raised {type(err).__name__}:\n"
                + "".join(traceback.format_exception(err))) from None
        result: list[nodes.Node] = []
        if "hide-code" not in self.options:
            block = nodes.literal_block(code, code, language="python")
            block["classes"].append("runcode-input")
            result.append(block)
        if output and "hide-output" not in self.options:
            block = nodes.literal_block(output, output, language="none")
            block["classes"].append("runcode-output")
            result.append(block)
        for path in _figures(env.app, env.docname, counter):
            image = nodes.image(uri=path, alt="figure drawn by the code above",
                                width=self.options.get("figure-width", "80%"))
            image["classes"].append("runcode-figure")
            result.append(image)
        return result


def setup(app):
    app.add_directive("runcode", RunCode)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
