"""Sphinx configuration of the pyro-vae site.

Build (offline, warnings are errors), from the repository root::

    pip install -e ".[dev,docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

The guide, benchmark and tutorial pages and the API pages are generated at build time from
README.md, tutorials/ and the package (``_ext/pyro_vae_docs.py``); the notebooks are
rendered with their committed outputs, never executed.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "pyro-vae"
author = "the pyro-vae authors"
copyright = "the pyro-vae authors, Apache-2.0"
release = metadata.version("pyro-vae")

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "sphinx-mathjax-offline",  # MathJax from the package, not from a CDN
    "pyro_vae_docs",
]

exclude_patterns = ["_build", "_ext", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"pyro-vae {release}"

# generated pages (_ext/pyro_vae_docs.py)
readme_special_sections = {"Tutorials": "tutorials/index", "Benchmarks": "benchmarks/index"}
api_package = "pyro_vae"
api_order = ["parts", "models", "objectives", "inference", "check", "train", "runs", "data"]
api_exclude = ["cli"]  # the command line is documented in the guide

# autodoc: members found in each module; re-exports are documented where they are defined
autodoc_default_options = {"member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autosummary_generate = False

# MyST: README.md and tutorials are GitHub-flavoured Markdown; notebooks use $...$ maths
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the committed outputs as they are

# offline: no intersphinx, nothing fetched at build time
