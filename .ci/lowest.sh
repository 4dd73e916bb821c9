#!/bin/sh
# Run lbproxy's whole test suite on the oldest dependencies it supports
# (Twisted 24.7.0 and the pyOpenSSL, cryptography, h2, treq... that go with
# it), pinned in .ci/constraints-lowest.txt, on CPython.
#
#   sh .ci/lowest.sh                 # every test
#   sh .ci/lowest.sh tests.test_proxy
#
# The venv lives in .tox/ci-lowest (set LBPROXY_LOWEST_VENV to move it) and
# is made with python3 (set LBPROXY_LOWEST_PYTHON to use another CPython;
# the pins are for 3.9 to 3.13).  lbproxy is installed into it with its
# test extras under those pins each time (pip then only checks, about 20 s,
# and puts back any pin that was changed).  `tox -e lowest` uses the same
# pins.
set -eu
cd "$(dirname "$0")/.."
venv=${LBPROXY_LOWEST_VENV:-.tox/ci-lowest}
python=${LBPROXY_LOWEST_PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q -c .ci/constraints-lowest.txt -e '.[test]'
"$venv/bin/python" -c 'import sys, twisted; print("Python", sys.version.split()[0], "Twisted", twisted.__version__)'
if [ $# -eq 0 ]; then
    set -- tests
fi
exec "$venv/bin/python" -m twisted.trial --temp-directory="$venv/_trial_temp" "$@"
