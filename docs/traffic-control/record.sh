#!/bin/bash
# Records the session of docs/traffic-control.rst: lbproxy with
# limit_rate = 1/s and limit_burst = 2 on its vhost, a client sending five
# requests at once (three pass, two get 429 with Retry-After), another
# client (source address 127.0.0.2) served meanwhile, and the same client
# served again once its Retry-After has passed.
#
#   PATH=.venv/bin:$PATH bash docs/traffic-control/record.sh > transcript.txt
#
# Needs twistd (with lbproxy installed) and curl on PATH.  The ports are
# chosen free when it starts; every process it starts is stopped by its
# PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
free() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
port=$(free); backend=$(free)
sed "s/BACKEND/$backend/g; s/PORT/$port/g" "$here/limits.ini" > "$work/site.ini"
cd "$work"
. "$here/../recording.sh"
cleanup() {
    [ -e twistd.pid ] && kill "$(cat twistd.pid)" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

twistd --pidfile twistd.pid --logfile twistd.log lbproxy --config site.ini
waitport "$port"
url="http://127.0.0.1:$port/"
echo "##### five at once"
run "for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{http_code} ' $url; done; echo"
echo "##### a 429"
run "curl -si $url"
echo "##### another client"
run "curl -s --interface 127.0.0.2 -w ' %{http_code}\n' $url"
echo "##### after Retry-After"
sleep 2
run "curl -s -w ' %{http_code}\n' $url"
sleep 1.5  # the access log is written in batches, once a second
run "cut -d' ' -f1,6-9 access.log"
pid=$(cat twistd.pid)
kill "$pid"
waitgone "$pid"
