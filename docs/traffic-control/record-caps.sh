#!/bin/bash
# Records the backend protection session of docs/traffic-control.rst:
# lbproxy in front of a backend that takes 1 s per request, with
# max_conns=1 and queue = 1 (three requests at once: one served, one
# waits and is served next, one gets 503), and in front of two backends of
# which one answers 500, with eject_on = 5xx and max_fails = 2 (the 500s
# reach the client, then the backend is ejected, comes back after
# fail_timeout, and, still failing, is ejected again for twice as long).
#
#   PATH=.venv/bin:$PATH bash docs/traffic-control/record-caps.sh > transcript.txt
#
# Needs twistd (with lbproxy installed), python3 and curl on PATH.  The
# ports are chosen free when it starts; every process it starts is
# stopped by its PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
free() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
port=$(free); slow=$(free); good=$(free); bad=$(free)
sed "s/SLOW/$slow/g; s/GOOD/$good/g; s/BAD/$bad/g; s/PORT/$port/g" "$here/caps.ini" > "$work/site.ini"
cd "$work"
. "$here/../recording.sh"
pids=()
cleanup() {
    [ -e twistd.pid ] && kill "$(cat twistd.pid)" 2>/dev/null
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

python3 "$here/backend.py" "$slow" 1 200 slow 2>/dev/null & pids+=($!)
python3 "$here/backend.py" "$good" 0 200 good 2>/dev/null & pids+=($!)
python3 "$here/backend.py" "$bad" 0 500 bad 2>/dev/null & pids+=($!)
for p in "$slow" "$good" "$bad"; do waitport "$p"; done
twistd --pidfile twistd.pid --logfile twistd.log lbproxy --config site.ini
waitport "$port"
url="http://127.0.0.1:$port"
echo "##### three at once to the backend with max_conns=1 (queue = 1)"
run "for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code} after %{time_total}s\n' $url/ & done; wait"
run "grep -o 'upstream slow: .*' twistd.log"
echo "##### the backend answering 500"
run "for i in 1 2 3 4 5 6; do curl -s -w ' %{http_code}\n' $url/flaky/; done"
run "grep -o 'backend .*: up -> failed.*' twistd.log"
echo "##### after fail_timeout"
sleep 3.5
run "for i in 1 2 3 4; do curl -s -w ' %{http_code}\n' $url/flaky/; done"
run "grep -o 'backend .* -> .*' twistd.log"
pid=$(cat twistd.pid)
kill "$pid"
waitgone "$pid"
