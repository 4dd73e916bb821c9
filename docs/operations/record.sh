#!/bin/bash
# Records the sessions of docs/operations.rst: the admin API and /metrics
# of a running lbproxy (one process, then workers = 2) read and changed
# with curl, a reload, and Prometheus scraping it, in a fresh temporary
# directory holding site.ini and prometheus.yml of this directory; and
# takes a screenshot of the status page of workers = 2 with headless
# chromium, written to docs/_static/status-page-workers.png.
#
#   PATH=$PWD/.venv/bin:$PATH bash docs/operations/record.sh > transcript.txt
#
# Needs twistd (with lbproxy installed), curl, jq, chromium and Debian's
# prometheus (prometheus, promtool) on PATH, and 127.0.0.1 ports 8080,
# 9000, 9001, 9002 and 9090 free.  Every process it starts is stopped by
# its PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cp "$here/site.ini" "$work/"
cd "$work"
. "$here/../recording.sh"
pid=
prom=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && waitgone "$pid"
    [ -n "$prom" ] && kill "$prom" 2>/dev/null && waitgone "$prom"
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
api=http://127.0.0.1:9000/api/upstreams
auth="-H 'Authorization: Bearer s3cret'"
fields='{name, state, reason, weight, active, requests, responses_by_class, failures}'

echo "##### one process"
start
run "for i in 1 2 3 4; do curl -s http://127.0.0.1:8080/; done"
run "curl -s $api | jq '.upstreams[] | {name, retries, backends: [.backends[] | $fields]}'"
run "curl -s -X PATCH -d '{\"state\": \"drain\"}' $api/app/servers/127.0.0.1:9001"
run "curl -s -X PATCH $auth -d '{\"state\": \"drain\"}' $api/app/servers/127.0.0.1:9001 | jq '$fields'"
run "for i in 1 2 3; do curl -s http://127.0.0.1:8080/; done"
run "curl -s -X PATCH $auth -d '{\"weight\": 0}' $api/app/servers/127.0.0.1:9002"
run "curl -s -X PATCH $auth -d '{\"state\": \"up\", \"weight\": 3}' $api/app/servers/127.0.0.1:9001 | jq -c '{state, weight}'"
run "curl -s $api/nope"
run "curl -s http://127.0.0.1:9000/metrics | grep -E '^lbproxy_(upstream_requests_total|backend_weight|reloads_total)'"
echo "##### reload"
run "kill -HUP $pid"
sleep 1
run "curl -s $api/app | jq -c '.backends[] | {name, state, weight, requests}'"
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
run "curl -s $api/app/servers/127.0.0.1:9001 | jq '{name, state, weight, requests, last_latency, workers: [.workers[] | {worker, pid, answered, requests: .answer.requests}]}'"
run "curl -s -X PATCH $auth -d '{\"state\": \"drain\"}' $api/app/servers/127.0.0.1:9001 | jq -c '{state, requests, workers: [.workers[] | {worker, state: .answer.state}]}'"
run "curl -s http://127.0.0.1:9000/metrics | grep -E '^lbproxy_(upstream_requests_total|backend_state.*draining)'"
echo "##### one worker differs"
worker1=$(grep -o 'worker 1 started, pid [0-9]*' twistd.log | grep -o '[0-9]*$')
sock=$(tr '\0' '\n' < /proc/$worker1/environ | sed -n 's/^LBPROXY_WORKER_ADMIN=//p')
run "ls -l $(dirname $sock)"
run "curl -s --unix-socket $sock -X PATCH -d '{\"weight\": 2}' http://worker/api/upstreams/app/servers/127.0.0.1:9002 | jq -c '{name, weight}'"
run "curl -s $api/app/servers/127.0.0.1:9002 | jq -c '{name, weight}'"
for i in $(seq 20); do curl -s -o /dev/null http://127.0.0.1:8080/; done
curl -s -o /dev/null http://127.0.0.1:9000/    # a first reading for the rates
sleep 2
for i in $(seq 20); do curl -s -o /dev/null http://127.0.0.1:8080/; done
timeout 60 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1200,660 --screenshot="$work/status-workers.png" \
    http://127.0.0.1:9000/ > /dev/null 2>&1
cp "$work/status-workers.png" "$here/../_static/status-page-workers.png"

echo "##### prometheus"
cp "$here/prometheus.yml" .
run "promtool check config prometheus.yml"
# Scraped every second for the recording (15 s in the sample).
sed 's/scrape_interval: 15s/scrape_interval: 1s/' prometheus.yml > scrape.yml
prometheus --config.file=scrape.yml --storage.tsdb.path=tsdb \
    --web.listen-address=127.0.0.1:9090 > prometheus.log 2>&1 & prom=$!
waitport 9090
for i in $(seq 30); do
    curl -s 'http://127.0.0.1:9090/api/v1/query?query=up' | grep -q '"1"\]' && break
    sleep 0.5
done
for i in $(seq 40); do curl -s -o /dev/null http://127.0.0.1:8080/; done
sleep 3
run "curl -s 'http://127.0.0.1:9090/api/v1/query' --data-urlencode 'query=sum by (backend) (lbproxy_upstream_requests_total)' | jq -c '.data.result[] | {backend: .metric.backend, value: .value[1]}'"
run "curl -s 'http://127.0.0.1:9090/api/v1/query' --data-urlencode 'query=lbproxy_backend_state{state=\"draining\"} == 1' | jq -c '.data.result[] | .metric'"
kill "$prom"; waitgone "$prom"; prom=
worker=$(grep -o 'worker 1 started, pid [0-9]*' twistd.log | grep -o '[0-9]*$')
run "kill -STOP $worker    # worker 1"
run "time curl -s $api | jq -c '.workers[] | {worker, answered, error}'"
kill -CONT "$worker"
stop
