"""Sphinx configuration of the mixedlm-sklearn documentation.

Build (from the repository root)::

    python -m sphinx -W -b html docs docs/_build/html

``-W`` turns every warning into an error: a broken cross-reference, a docstring that
fails numpydoc's validation, a code block of a page or an example that raises.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the package of this checkout, installed or not
sys.path.insert(0, str(DOCS / "_ext"))

import mixedlm_sklearn  # noqa: E402

# -- project ---------------------------------------------------------------------------
project = "mixedlm-sklearn"
author = "The mixedlm-sklearn developers"
copyright = "2026, The mixedlm-sklearn developers"
version = release = mixedlm_sklearn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "runcode",
    "rosetta_table",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "gallery_header.rst", "**.ipynb_checkpoints", "auto_examples/*.ipynb",
                    "auto_examples/*.py", "auto_examples/*.zip", "auto_examples/*.json",
                    "auto_examples/*.md5", "auto_examples/*.pickle"]
templates_path = ["_templates"]

# Every reference must resolve: a broken link fails the -W build.
nitpicky = True
nitpick_ignore_regex = [
    # types named in signatures and docstrings that live in other projects' docs (no
    # intersphinx: the build must not need the network)
    ("py:class", r"(numpy|np|pandas|pd|scipy|sklearn|matplotlib|dask|collections)\..*"),
    ("py:func", r"sklearn\..*"),
    ("py:obj", r"sklearn\..*"),
    # scikit-learn's BaseEstimator methods, listed in the estimators' method tables but
    # documented by scikit-learn (their docstrings refer to scikit-learn's own pages)
    ("py:obj", r"mixedlm_sklearn\.\w+\.(get_params|set_params|get_metadata_routing|set_\w+_request)"),
    ("py:class", r"(array-like|ndarray|DataFrame|Series|Index|Axes|Figure|Generator|"
                 r"RandomState|callable|optional|default.*|of shape.*|mapping|iterable)"),
]

# -- autodoc, autosummary, numpydoc ----------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # the numpydoc sections carry the types
autodoc_default_options = {"members": False}
autodoc_member_order = "groupwise"

numpydoc_show_class_members = True
numpydoc_class_members_toctree = False
numpydoc_show_inherited_class_members = {
    # a warning's page lists no methods of Exception
    "mixedlm_sklearn.SingularFitWarning": False,
    "mixedlm_sklearn.RankDeficientWarning": False,
}
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# numpydoc validation of every public docstring the reference renders. All checks run
# except:
#   ES01  extended summary: a one-line summary is enough for short methods;
#   SA04  a description for every "See Also" entry: the names speak for themselves.
# Result classes (Summary, BootstrapResult, ...) are dataclasses the package builds: their
# fields are documented as Attributes, and a "# numpydoc ignore=PR01" on the class line
# spares them a Parameters section repeating the same list.
numpydoc_validation_checks = {"all", "ES01", "SA04"}
numpydoc_validation_exclude = {
    # inherited from scikit-learn's BaseEstimator and metadata routing; documented there
    r"\.get_params$",
    r"\.set_params$",
    r"\.set_\w+_request$",
    r"\.get_metadata_routing$",
    r"\.__init__$",
}

# -- MyST ------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- sphinx-gallery --------------------------------------------------------------------
# The gallery runs a copy of examples/: the examples write their figures next to
# themselves, and the copy keeps the working tree clean.
_GALLERY_SOURCE = DOCS / "_generated" / "gallery_src"


def _copy_examples() -> None:
    _GALLERY_SOURCE.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in (ROOT / "examples").glob("*.py")}
    wanted["GALLERY_HEADER.rst"] = DOCS / "gallery_header.rst"
    for old in _GALLERY_SOURCE.iterdir():
        if old.is_file() and old.name not in wanted:
            old.unlink()
    for name, src in wanted.items():
        dst = _GALLERY_SOURCE / name
        # copied only when changed: sphinx-gallery re-runs an example whose text changed
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)


_copy_examples()

sphinx_gallery_conf = {
    "examples_dirs": str(_GALLERY_SOURCE),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r".*\.py$",  # run every example (they are scripts with main())
    "image_scrapers": ("gallery_figures.scraper",),
    "reset_modules": ("matplotlib", "gallery_figures.record"),
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 1,
    "within_subsection_order": "FileNameSortKey",
    "capture_repr": (),
}

# -- HTML ------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"mixedlm-sklearn {version}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 7,
    # the pages with wide tables get the page's full width
    "secondary_sidebar_items": {"**": ["page-toc"], "coming_from/lme4": [],
                                "coming_from/statsmodels": [], "performance": []},
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_sidebars = {"index": [], "performance": [], "getting_started": []}
html_show_sourcelink = False
