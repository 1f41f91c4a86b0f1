"""sphinx-gallery hooks for the examples in ``examples/``.

The examples are scripts a user runs; they save their figures to files and close them
(``fig.savefig(path)``, ``plt.close(fig)``), which sphinx-gallery's matplotlib scraper,
looking only at the figures still open, would miss. While the gallery runs an example,
:func:`record` makes ``Figure.savefig`` remember each figure it saves, and
:func:`scraper` puts those figures (and any left open) on the example's page. The
examples themselves stay unchanged.
"""

from __future__ import annotations

_saved: list = []
_original_savefig = None
_recording = False


def record(gallery_conf, fname, when=None):
    """``reset_modules`` hook: from now on, remember the figures the example saves."""
    global _original_savefig, _recording
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    if _original_savefig is None:
        _original_savefig = Figure.savefig

        def savefig(self, *args, **kwargs):
            if _recording and not any(f is self for f in _saved):
                _saved.append(self)
            return _original_savefig(self, *args, **kwargs)

        Figure.savefig = savefig
    _saved.clear()
    _recording = True


def scraper(block, block_vars, gallery_conf, **kwargs):
    """Image scraper: the figures saved by the code block, then those left open."""
    global _recording
    import matplotlib.pyplot as plt
    from sphinx_gallery.scrapers import figure_rst

    figures = list(_saved)
    for number in plt.get_fignums():
        fig = plt.figure(number)
        if not any(f is fig for f in figures):
            figures.append(fig)
    _saved.clear()
    paths = []
    was_recording, _recording = _recording, False
    try:
        for fig, path in zip(figures, block_vars["image_path_iterator"]):
            fig.savefig(path, dpi=100, bbox_inches="tight")
            paths.append(path)
    finally:
        _recording = was_recording
        plt.close("all")
    return figure_rst(paths, gallery_conf["src_dir"])
