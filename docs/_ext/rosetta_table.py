"""The ``rosetta-table`` directive: a table of ``docs/rosetta.py``'s rows.

    ```{rosetta-table}
    :source: lme4
    :section: fit
    ```

renders the rows of that source and section as a three-column table (the R or
statsmodels call, this package's call, the differences). The same rows are run by
``tests/docs/test_docs_rosetta.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from docutils import nodes
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

_ROSETTA = Path(__file__).resolve().parent.parent / "rosetta.py"


def _rows():
    spec = importlib.util.spec_from_file_location("_docs_rosetta", _ROSETTA)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.ROWS


class RosettaTable(SphinxDirective):
    has_content = False
    option_spec = {"source": str, "section": str}

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(str(_ROSETTA))
        source, section = self.options.get("source"), self.options.get("section")
        rows = [r for r in _rows() if r.source == source and r.section == section]
        if not rows:
            raise ExtensionError(f"rosetta-table: no rows with source={source!r}, "
                                 f"section={section!r} in {_ROSETTA}")
        other = "R" if source == "lme4" else "statsmodels"
        # "colwidths-given": the HTML writer then keeps the column widths below
        table = nodes.table(classes=["rosetta", "colwidths-given"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (34, 38, 28):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row([nodes.paragraph(text=other), nodes.paragraph(text="mixedlm-sklearn"),
                           nodes.paragraph(text="differences")])
        body = nodes.tbody()
        group += body
        for row in rows:
            language = "r" if source == "lme4" else "python"
            left = nodes.literal_block(row.r, row.r, language=language)
            middle = nodes.literal_block(row.py, row.py, language="python")
            text = row.note if row.today else f"*Not yet in the package.* {row.note}"
            inline, messages = self.state.inline_text(text, self.lineno)
            if messages:
                raise ExtensionError(f"rosetta-table: bad markup in the note of {row.r!r}")
            right = nodes.paragraph("", "", *inline)
            body += self._row([left, middle, right])
        return [table]

    @staticmethod
    def _row(cells: list[nodes.Node]) -> nodes.row:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += cell
            row += entry
        return row


def setup(app):
    app.add_directive("rosetta-table", RosettaTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
