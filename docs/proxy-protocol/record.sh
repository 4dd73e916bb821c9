#!/bin/bash
# Records the sessions of docs/proxy-protocol.rst: HAProxy in front of
# a haproxy: listener, then lbproxy with send_proxy_protocol in front of
# HAProxy with accept-proxy, in a fresh temporary directory holding the
# files of this directory.
#
#   PATH=.venv/bin:/usr/sbin:$PATH bash docs/proxy-protocol/record.sh > transcript.txt
#
# Needs twistd (with lbproxy installed), haproxy and curl on PATH, and
# 127.0.0.1 ports 8000, 8001, 8080, 8081 and 9001 free.  Every process it
# starts is stopped by its PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cp "$here"/*.ini "$here"/*.cfg "$work/"
cd "$work"
. "$here/../recording.sh"
cleanup() {
    [ -e twistd.pid ] && kill "$(cat twistd.pid)" 2>/dev/null
    [ -n "${haproxy:-}" ] && kill "$haproxy" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "##### in front"
haproxy -db -f in-front.cfg > haproxy.log 2>&1 & haproxy=$!
run "twistd --pidfile twistd.pid --logfile twistd.log lbproxy --config in-front.ini"
waitport 8000; waitport 8080
run "curl -s --interface 127.0.0.5 'http://127.0.0.1:8000/?format=json'"
run "curl -sS http://127.0.0.1:8080/; echo \"curl exit status \$?\""
pid=$(cat twistd.pid); kill "$pid"; waitgone "$pid"
run "cat access.log"
run "grep 'PROXY protocol' twistd.log | cut -d' ' -f3-"
kill "$haproxy"; waitgone "$haproxy"; haproxy=

echo "##### behind"
haproxy -db -f behind.cfg > haproxy.log 2>&1 & haproxy=$!
run "twistd --pidfile twistd.pid --logfile twistd.log lbproxy --config behind.ini"
waitport 8001; waitport 8081
run "curl -s --interface 127.0.0.6 'http://127.0.0.1:8081/?format=json'"
run "tail -n 1 haproxy.log"
pid=$(cat twistd.pid); kill "$pid"; waitgone "$pid"
kill "$haproxy"; waitgone "$haproxy"; haproxy=
