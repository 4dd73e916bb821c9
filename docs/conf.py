"""
Sphinx configuration of lbproxy's documentation.

Build it with ``tox -e docs``, or directly::

    sphinx-build -W -b html docs docs/_build/html
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

project = "lbproxy"
author = "the lbproxy developers"
copyright = "the lbproxy developers"

try:
    from lbproxy._version import __version__ as release
except ImportError:  # pragma: no cover - building without the package
    release = "unknown"
version = release

extensions = []
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
highlight_language = "none"
pygments_style = "sphinx"
html_theme = "alabaster"
html_static_path = []
