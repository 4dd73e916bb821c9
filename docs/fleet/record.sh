#!/bin/bash
# Records the session of docs/fleet.rst: one etcd member, two lbproxy
# instances running the same fleet.ini (ports 8081/9901 and 8082/9902),
# two demo backends; servers are added and removed with etcdctl and each
# instance's admin API shows the result, and /metrics that they agree.
#
#   PATH=$PWD/.venv/bin:$PATH bash docs/fleet/record.sh > transcript.txt
#
# Needs etcd and etcdctl (sh .ci/tools.sh etcd-server etcd-client),
# twistd with lbproxy, curl and python3 on PATH, and 127.0.0.1 ports 2379,
# 2380, 8081, 8082, 9001, 9002, 9901 and 9902 free.  Every process it
# starts is stopped by its PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cp "$here/backends.ini" "$here/fleet.ini" "$work/"
sed 's/tcp:8081/tcp:8082/; s/tcp:9901/tcp:9902/' "$here/fleet.ini" > "$work/fleet-2.ini"
cd "$work"
. "$here/../recording.sh"
pids=()
cleanup() {
    stopPids
    rm -rf "$work"
}
trap cleanup EXIT

etcd --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 > etcd.log 2>&1 & pids+=($!)
twistd -n --pidfile= lbproxy --config backends.ini > backends.log 2>&1 & pids+=($!)
twistd -n --pidfile= lbproxy --config fleet.ini > fleet-1.log 2>&1 & pids+=($!)
twistd -n --pidfile= lbproxy --config fleet-2.ini > fleet-2.log 2>&1 & pids+=($!)
for port in 2379 9001 9002 8081 8082 9901 9902; do waitport $port; done
export ETCDCTL_API=3

# upstreams PORT: the backends of upstream app, as instance PORT's admin
# API shows them (name, state, weight).
upstreams() {
    curl -s "http://127.0.0.1:$1/api/upstreams/app" | python3 -c '
import json, sys
for b in json.load(sys.stdin)["backends"]:
    print(sys.argv[1], b["name"], b["state"], "weight=%d" % b["weight"])' "admin $1:"
}
export -f upstreams

echo "##### empty"
run "curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8081/"
echo "##### put"
run "etcdctl put /lbproxy/upstreams/app/blue '127.0.0.1:9001'"
run "etcdctl put /lbproxy/upstreams/app/green '127.0.0.1:9002 weight=2'"
sleep 0.5
run "upstreams 9901; upstreams 9902"
run "curl -s -c jar http://127.0.0.1:8081/; grep -o 'lbproxy_sticky.*' jar"
run "for port in 8082 8082 8081 8082; do curl -s -b jar http://127.0.0.1:\$port/; done"
echo "##### bad value"
run "etcdctl put /lbproxy/upstreams/app/typo '127.0.0.1:9003 wieght=2'"
sleep 0.5
run "grep -h 'not a server line' fleet-1.log | cut -d' ' -f3-"
echo "##### delete"
run "etcdctl del /lbproxy/upstreams/app/blue"
sleep 0.5
run "upstreams 9901; upstreams 9902"
run "grep -h 'blue\|9001' fleet-2.log | grep -v 'starting on' | cut -d' ' -f3-"
echo "##### agree"
run "for port in 9901 9902; do curl -s http://127.0.0.1:\$port/metrics | grep -E '^lbproxy_(etcd_(revision|watching|keys|rejected_keys)|backends_(added|removed)_total)\\{' | sed \"s/^/admin \$port: /\"; done"
