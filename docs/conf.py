"""
Sphinx configuration of lbproxy's documentation.

Build it with ``tox -e docs``, or directly::

    sphinx-build -W -b html docs docs/_build/html

The API reference (``api/`` in the output) is built by pydoctor from the
epytext docstrings, through its Sphinx extension, with the same ``-W``:
a docstring link to an lbproxy name that does not exist fails the build.
Links to Twisted and to Python's own names go to their documentation
online, through inventories made here without the network (see
L{apiInventories}); nothing is fetched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_SRC = os.path.join(_HERE, "..", "src")
sys.path.insert(0, _SRC)

project = "lbproxy"
author = "the lbproxy developers"
copyright = "the lbproxy developers"

try:
    from lbproxy import __version__ as release
except ImportError:  # pragma: no cover - building without the package
    release = "unknown"
version = release

extensions = ["sphinx.ext.intersphinx", "pydoctor.sphinx_ext.build_apidocs"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
highlight_language = "none"
pygments_style = "sphinx"
html_theme = "alabaster"
html_static_path = ["_static"]

# No inventory is fetched: the build runs offline.
intersphinx_mapping: dict[str, Any] = {}

# pydoctor writes the API reference into api/ of the HTML output, and its
# inventory lets the pages link to it (:py:class:`lbproxy.Pool`).
pydoctor_url_path = "api/"
pydoctor_args = [
    f"--config={os.path.join(_HERE, '..', 'setup.cfg')}",
    f"--project-base-dir={os.path.join(_HERE, '..')}",
    "--html-output={outdir}/api",
    os.path.join(_SRC, "lbproxy"),
]

#: Where Python's documentation keeps the names lbproxy's docstrings link
#: to: name, role, page and anchor under https://docs.python.org/3/.
_PYTHON_NAMES = [
    *[(n, "data", "library/constants.html", n) for n in ("None", "True", "False")],
    *[
        (n, "class", "library/stdtypes.html", n)
        for n in ("str", "bytes", "tuple", "list", "dict", "frozenset", "set")
    ],
    *[(n, "class", "library/functions.html", n) for n in ("int", "float", "bool")],
    *[
        (n, "exception", "library/exceptions.html", n)
        for n in ("Exception", "ValueError", "KeyError", "OSError", "RuntimeError")
    ],
    ("random.Random", "class", "library/random.html", "random.Random"),
    ("time.monotonic", "function", "library/time.html", "time.monotonic"),
    ("configparser", "module", "library/configparser.html", "module-configparser"),
]


def _writeInventory(path: str, project: str, entries: list[tuple[str, str, str, str]]) -> None:
    """
    Write a Sphinx inventory (version 2) of C{(name, role, page, anchor)}.
    """
    body = "".join(
        f"{name} py:{role} 1 {page}#{anchor} -\n" for name, role, page, anchor in entries
    )
    with open(path, "wb") as f:
        f.write(
            (
                "# Sphinx inventory version 2\n"
                f"# Project: {project}\n"
                "# Version: 3\n"
                "# The remainder of this file is compressed using zlib.\n"
            ).encode()
        )
        f.write(zlib.compress(body.encode()))


def apiInventories(cacheDirectory: str) -> list[str]:
    """
    The C{--intersphinx-file} arguments of pydoctor for Twisted's API and
    Python's names, made offline: Twisted's inventory by pydoctor from the
    installed Twisted (about a minute, so kept in C{cacheDirectory} for
    each Twisted version), Python's from L{_PYTHON_NAMES}.
    """
    import twisted

    os.makedirs(cacheDirectory, exist_ok=True)
    python = os.path.join(cacheDirectory, "python.inv")
    _writeInventory(python, "Python", _PYTHON_NAMES)
    twistedInventory = os.path.join(cacheDirectory, f"twisted-{twisted.__version__}.inv")
    if not os.path.exists(twistedInventory):
        output = os.path.join(cacheDirectory, "twisted-build")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pydoctor",
                "--quiet",
                "--make-intersphinx",
                "--project-name=Twisted",
                f"--html-output={output}",
                os.path.dirname(twisted.__file__),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        os.replace(os.path.join(output, "objects.inv"), twistedInventory)
    return [
        f"--intersphinx-file={twistedInventory}::https://docs.twisted.org/en/stable/api",
        f"--intersphinx-file={python}::https://docs.python.org/3",
    ]


def _addInventories(app: Any) -> None:
    if app.builder.name == "html":
        app.config.pydoctor_args = [
            *app.config.pydoctor_args,
            *apiInventories(os.path.join(app.doctreedir, "api-inventories")),
        ]


def setup(app: Any) -> None:
    # Before pydoctor's extension (priority 490) runs pydoctor.
    app.connect("builder-inited", _addInventories, priority=400)
