#!/bin/sh
# Run lbproxy's whole test suite on PyPy (Debian's pypy3, Python 3.9).
#
#   sh .ci/pypy.sh                 # every test
#   sh .ci/pypy.sh tests.test_proxy
#
# The PyPy venv lives in .tox/pypy (set LBPROXY_PYPY_VENV to move it); it
# is created when it is missing, and lbproxy installed into it with its
# test extras under the pins of .ci/constraints-pypy.txt (which says
# why).  pypy3 comes from apt (.ci/tools.sh) when it is missing.
set -eu
cd "$(dirname "$0")/.."
venv=${LBPROXY_PYPY_VENV:-.tox/pypy}

sh .ci/tools.sh pypy3
if [ ! -x "$venv/bin/python" ]; then
    pypy3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q -c .ci/constraints-pypy.txt -e '.[test]'
"$venv/bin/python" -V
if [ $# -eq 0 ]; then
    set -- tests
fi
exec "$venv/bin/python" -m twisted.trial --temp-directory="$venv/_trial_temp" "$@"
