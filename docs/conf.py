"""Sphinx configuration of rerelrp's documentation: ``python -m sphinx -W --keep-going docs docs/_build/html``.

Nothing is fetched at build time (no intersphinx inventories): torch, scikit-learn and zennit are linked by plain
URLs. The results pages are written from the committed ``docs/results/**/results.json`` before the build
(``_ext/results_pages.py``); the gallery runs the fast examples of ``examples/`` on scikit-learn's digits.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the gallery's examples: one thread is the fast setting (see Getting started)

import rerelrp  # noqa: E402

project = "rerelrp"
author = "the rerelrp developers"
copyright = "2026, the rerelrp developers"
version = release = rerelrp.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "results_pages",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# docs/results/ holds the benchmarks' committed outputs (their results.md are read by the README); the pages of the
# site about them are generated into benchmarks/results/ from their results.json
exclude_patterns = ["_build", "results/**", "sg_execution_times.rst", "benchmarks/results/headline.md", "**/README.md", "gallery/*.md5", "gallery/*.json"]
templates_path = ["_templates"]

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(avalanche_split_mnist|ddp_digits)\.py",  # longer scripts, run by the tests, not the docs
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "backreferences_dir": "api/backreferences",
    "doc_module": ("rerelrp",),
    "min_reported_time": 1,
}

html_theme = "furo"
html_title = f"rerelrp {release}"
html_static_path = ["_static"]
html_theme_options = {"source_repository": "", "navigation_with_keys": True}
nitpicky = False
