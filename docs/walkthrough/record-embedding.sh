#!/bin/bash
# Records the transcript of "Running the example" in docs/embedding.rst, for
# docs/walkthrough/sync.py.  Run from the repository root, with twistd (with
# lbproxy) and curl on PATH and 127.0.0.1 ports 8080, 8081, 9001 and 9002
# free.  Both processes are stopped by their PIDs; every wait is bounded.
set -u
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT
. "$(dirname "$0")/../recording.sh"

echo "\$ twistd -n --pidfile= lbproxy --config examples/site.ini > site.log 2>&1 &"
twistd -n --pidfile= lbproxy --config examples/site.ini > "$work/site.log" 2>&1 &
pids+=($!)
echo "\$ twistd -n --pidfile= -y examples/embedding.py > embedding.log 2>&1 &"
twistd -n --pidfile= -y examples/embedding.py > "$work/embedding.log" 2>&1 &
pids+=($!)
waitport 9001; waitport 9002; waitport 8081
run "curl -s http://127.0.0.1:8081/"
run "for i in 1 2 3 4; do curl -s http://127.0.0.1:8081/app/; done"
run "curl -s 'http://127.0.0.1:8081/app/some/page?format=json'"
