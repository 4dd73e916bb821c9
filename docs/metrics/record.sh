#!/bin/bash
# Records the metrics session of docs/admin.rst ("Metrics"): a real twistd
# lbproxy (in the background) with site.ini of this directory (two demo
# backends and a third server that nothing listens on), eight requests to
# the vhost and one for a host no vhost serves, then /api/status and
# /metrics of the [admin] listener.
#
#   PATH=$PWD/.venv/bin:$PATH bash docs/metrics/record.sh > transcript.txt
#
# Needs twistd (with lbproxy installed), curl and jq on PATH, and 127.0.0.1
# ports 8080, 9000, 9001 and 9002 free (and nothing on 9003).  The process
# it starts is stopped by its PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cp "$here/site.ini" "$work/"
cd "$work"
. "$here/../recording.sh"
cleanup() {
    [ -e twistd.pid ] && kill "$(cat twistd.pid)" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

twistd --pidfile twistd.pid --logfile twistd.log lbproxy --config site.ini
waitport 8080
waitport 9000
run "for i in 1 2 3 4 5 6 7 8; do curl -s -H 'Host: app.test' http://127.0.0.1:8080/; done"
run "curl -s -o /dev/null -w '%{http_code}\n' -H 'Host: other.test' http://127.0.0.1:8080/"
# Two health check rounds (health_interval = 2s, with up to 10% jitter).
sleep 4.5
run "curl -s -o /dev/null -D - http://127.0.0.1:9000/metrics"
run "curl -s http://127.0.0.1:9000/metrics | grep -v _bucket | grep -e '^#' -e 'vhost=\"app\"' -e 9003 -e retries -e '^lbproxy_[a-z_]* '"
run "curl -s http://127.0.0.1:9000/metrics | grep 'lbproxy_request_duration_seconds.*vhost=\"app\"'"
run "curl -s http://127.0.0.1:9000/api/status | jq -c '.vhosts, .unrouted.responses_by_class, .upstreams[0].retries'"
run "curl -s http://127.0.0.1:9000/api/status | jq '.upstreams[0].backends[2] | del(.response_time_histogram)'"
pid=$(cat twistd.pid)
kill "$pid"
waitgone "$pid"
