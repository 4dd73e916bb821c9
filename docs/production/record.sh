#!/bin/bash
# Records the sessions of docs/production.rst: twistd without -n (in the
# background) started, asked, rotated and stopped by its PID file, and
# the same start with port 8080 taken, in a fresh temporary directory
# holding site.ini and logrotate.conf of this directory.
#
#   PATH=.venv/bin:$PATH bash docs/production/record.sh > transcript.txt
#
# Needs twistd (with lbproxy installed), curl and logrotate on PATH, and
# 127.0.0.1 ports 8080 and 9001 free.  Every process it starts is stopped
# by its PID; every wait is bounded.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cp "$here/site.ini" "$work/"
sed "s|/var/log/lbproxy|$work|; s|systemctl show --property MainPID --value lbproxy.service|cat $work/twistd.pid|; s|create 0640 lbproxy lbproxy|create 0600 $(id -un) $(id -gn)|" \
    "$here/logrotate.conf" > "$work/logrotate.conf"
cd "$work"
. "$here/../recording.sh"
cleanup() {
    [ -e twistd.pid ] && kill "$(cat twistd.pid)" 2>/dev/null
    [ -n "${holder:-}" ] && kill "$holder" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "##### background"
run "twistd lbproxy --config site.ini; echo \"exit status \$?\""
waitport 8080
run "cat twistd.pid; echo"
run "curl -s http://127.0.0.1:8080/"
run "cat access.log"
run "ls -l"
echo "##### rotate"
run "logrotate -s state -f logrotate.conf"
run "curl -s http://127.0.0.1:8080/after-rotation"
run "head access.log access.log.1"
run "grep -c -e reloaded -e '#warn' twistd.log"
echo "##### stop"
pid=$(cat twistd.pid)
run "kill \$(cat twistd.pid)"
waitgone "$pid"
run "tail -n 3 twistd.log"
run "ls"
echo "##### port taken"
python -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',8080)); s.listen(); time.sleep(30)" & holder=$!
waitport 8080
run "twistd lbproxy --config site.ini; echo \"exit status \$?\""
run "ls"
kill "$holder"; holder=
