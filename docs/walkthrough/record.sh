#!/bin/bash
# Records the transcript of docs/tutorial.rst: runs its commands exactly as
# the tutorial shows them, in a fresh temporary directory holding the .ini
# files of this directory, and prints each command and its output.
#
#   PATH=.venv/bin:$PATH bash docs/walkthrough/record.sh > transcript.txt
#
# Needs twistd (with lbproxy installed) and curl on PATH, and 127.0.0.1
# ports 8080, 9001 and 9002 free.  Every process it starts is stopped by its
# PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cp "$here"/*.ini "$work"/
cd "$work"
. "$here/../recording.sh"
startcmd() { # startcmd NAME INI PORT
    local c="twistd -n --pidfile= lbproxy --config $2 > $1.log 2>&1 & echo \$! > $1.pid"
    echo "\$ $c"; bash -c "$c"; waitport "$3"
}
killcmd() {
    local pid; pid=$(cat "$1.pid"); echo "\$ kill \$(cat $1.pid)"
    kill "$pid"; waitgone "$pid"; rm -f "$1.pid"
}
cleanup() {
    for f in "$work"/*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "##### backends"
startcmd blue blue.ini 9001
startcmd green green.ini 9002
run "curl -s http://127.0.0.1:9001/"
run "curl -s http://127.0.0.1:9002/"
echo "##### step 1"
run "twistd -n lbproxy --config step1.ini --check"
startcmd proxy step1.ini 8080
run "curl -si http://127.0.0.1:8080/"
run "curl -s 'http://127.0.0.1:8080/hello?format=json'"
run "grep '\"GET' proxy.log"
killcmd proxy
echo "##### step 2"
run "twistd -n lbproxy --config step2.ini --check"
startcmd proxy step2.ini 8080
run "curl -s -H 'Host: blue.example.com' http://127.0.0.1:8080/"
run "curl -s --resolve green.example.com:8080:127.0.0.1 http://green.example.com:8080/"
run "curl -s -H 'Host: WWW.Green.Example.COM:8080' http://127.0.0.1:8080/"
run "curl -si -H 'Host: unknown.example.org' http://127.0.0.1:8080/"
run "curl -si http://127.0.0.1:8080/ | head -n 1"
killcmd proxy
echo "##### step 3"
startcmd proxy step3.ini 8080
run "for i in 1 2 3 4; do curl -s http://127.0.0.1:8080/; done"
run "curl -s -H 'Host: app.example.com' 'http://127.0.0.1:8080/?format=json' | grep -A1 -e backend -e '\"host'"
killcmd proxy
startcmd proxy step3w.ini 8080
run "for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:8080/; done"
killcmd proxy
echo "##### step 4"
startcmd proxy step3.ini 8080
killcmd green
run "for i in 1 2 3 4; do curl -s http://127.0.0.1:8080/; done"
run "grep -e '#warn' -e '#info] backend' proxy.log"
startcmd green green.ini 9002
run "for i in 1 2 3 4; do curl -s http://127.0.0.1:8080/; done"
run "sleep 10"
run "for i in 1 2 3 4; do curl -s http://127.0.0.1:8080/; done"
run "grep 'failed -> up' proxy.log"
echo "##### step 5"
killcmd blue
killcmd green
run "curl -si http://127.0.0.1:8080/"
run "grep -e '#warn' -e '#error' proxy.log | tail -n 5"
run "for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/; done"
killcmd proxy
run "tail -n 4 proxy.log"
echo "##### done"
