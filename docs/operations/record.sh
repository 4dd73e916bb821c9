#!/bin/bash
# Records the sessions of docs/operations.rst: the admin API of a running
# lbproxy (one process, then workers = 2) read and changed with curl, and
# a reload, in a fresh temporary directory holding site.ini of this
# directory.
#
#   PATH=$PWD/.venv/bin:$PATH bash docs/operations/record.sh > transcript.txt
#
# Needs twistd (with lbproxy installed), curl and jq on PATH, and
# 127.0.0.1 ports 8080, 9000, 9001 and 9002 free.  Every process it starts
# is stopped by its PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cp "$here/site.ini" "$work/"
cd "$work"
. "$here/../recording.sh"
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && waitgone "$pid"
    rm -rf "$work"
}
trap cleanup EXIT

start() {
    twistd -n --pidfile= lbproxy --config site.ini > twistd.log 2>&1 & pid=$!
    waitport 8080
    waitport 9000
}
stop() {
    kill "$pid"; waitgone "$pid"; pid=
}

echo "##### one process"
start
run "for i in 1 2 3 4; do curl -s http://127.0.0.1:8080/; done"
run "curl -s http://127.0.0.1:9000/api/upstreams"
run "curl -s -X PATCH -d '{\"state\": \"drain\"}' http://127.0.0.1:9000/api/upstreams/app/servers/127.0.0.1:9001"
run "curl -s -X PATCH -H 'Authorization: Bearer s3cret' -d '{\"state\": \"drain\"}' http://127.0.0.1:9000/api/upstreams/app/servers/127.0.0.1:9001"
run "for i in 1 2 3; do curl -s http://127.0.0.1:8080/; done"
run "curl -s -X PATCH -H 'Authorization: Bearer s3cret' -d '{\"weight\": 0}' http://127.0.0.1:9000/api/upstreams/app/servers/127.0.0.1:9002"
run "curl -s -X PATCH -H 'Authorization: Bearer s3cret' -d '{\"state\": \"up\", \"weight\": 3}' http://127.0.0.1:9000/api/upstreams/app/servers/127.0.0.1:9001 | jq -c '{state, weight}'"
run "curl -s http://127.0.0.1:9000/api/upstreams/nope"
echo "##### reload"
run "kill -HUP $pid"
sleep 1
run "curl -s http://127.0.0.1:9000/api/upstreams/app | jq -c '.backends[] | {name, state, weight}'"
run "grep -o 'reloaded.*' twistd.log"
stop

echo "##### workers"
sed -i 's/^access_log = off$/access_log = off\nworkers = 2/' site.ini
start
# Both workers serve their admin socket once each has logged its site.
for i in $(seq 100); do
    [ "$(grep -c 'Starting factory <lbproxy._site.ProxySite' twistd.log)" -ge 2 ] && break
    sleep 0.1
done
run "for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:8080/; done"
run "curl -s http://127.0.0.1:9000/api/upstreams/app/servers/127.0.0.1:9001"
run "curl -s -X PATCH -H 'Authorization: Bearer s3cret' -d '{\"state\": \"drain\"}' http://127.0.0.1:9000/api/upstreams/app/servers/127.0.0.1:9001 | jq '{state, requests, workers: [.workers[] | {worker, pid, state: .answer.state, requests: .answer.requests}]}'"
worker=$(grep -o 'worker 1 started, pid [0-9]*' twistd.log | grep -o '[0-9]*$')
kill -STOP "$worker"
run "time curl -s http://127.0.0.1:9000/api/upstreams | jq -c '.workers[] | {worker, answered, error}'"
kill -CONT "$worker"
stop
