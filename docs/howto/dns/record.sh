#!/bin/bash
# Records the session of docs/howto/dns.rst: a DNS server whose answer for
# app.internal changes (dnsserver.py, Twisted's server from
# lbproxy.testing), two demo backends on 127.0.0.2 and 127.0.0.3 port
# 9001, and lbproxy with "servers = app.internal:9001 resolve" asking that
# server; the admin API shows the backends follow the answer.
#
#   PATH=$PWD/.venv/bin:$PATH bash docs/howto/dns/record.sh > transcript.txt
#
# Needs twistd with lbproxy, curl and python3 on PATH, and ports 8080, 9900
# (127.0.0.1) and 9001 (127.0.0.2, 127.0.0.3) free.  Every process it
# starts is stopped by its PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cp "$here/backends.ini" "$here/dnsserver.py" "$work/"
cd "$work"
. "$here/../../recording.sh"
pids=()
cleanup() {
    stopPids
    rm -rf "$work"
}
trap cleanup EXIT

echo 127.0.0.2 > answer
mkfifo port
python3 dnsserver.py answer > port & pids+=($!)
dnsport=$(timeout 10 head -1 port)
dns=${pids[0]}
sed "s/DNSPORT/$dnsport/" "$here/site.ini" > site.ini
twistd -n --pidfile= lbproxy --config backends.ini > backends.log 2>&1 & pids+=($!)
twistd -n --pidfile= lbproxy --config site.ini > site.log 2>&1 & pids+=($!)
for port in 8080 9900; do waitport $port; done

# upstreams: the backends of upstream app as the admin API lists them
# (name, state, reason when not up).
upstreams() {
    curl -s http://127.0.0.1:9900/api/upstreams/app | python3 -c '
import json, sys
for b in json.load(sys.stdin)["backends"]:
    print(b["name"], b["state"], *([] if b["state"] == "up" else [b["reason"]]))'
}
export -f upstreams
# answer ADDRESSES: make the DNS server answer them from now on.
answer() { echo "$1" > answer; kill -HUP "$dns"; }

echo "##### one address"
run "cat site.ini"
run "upstreams"
run "curl -s http://127.0.0.1:8080/"
echo "##### a second address"
answer 127.0.0.2,127.0.0.3
sleep 2
run "upstreams"
run "for i in 1 2 3 4; do curl -s http://127.0.0.1:8080/; done"
echo "##### the first leaves"
answer 127.0.0.3
sleep 2
run "upstreams"
run "grep -h 'DNS answer' site.log | cut -d' ' -f3-"
echo "##### lookups that change nothing log nothing"
run "grep -c 'DNSDatagramProtocol\|UDP Port' site.log"
echo "##### the source in /metrics"
run "curl -s http://127.0.0.1:9900/metrics | grep -E '^lbproxy_(dns|backends)_[a-z_]*\\{'"
