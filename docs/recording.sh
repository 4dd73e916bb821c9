# Helpers of the scripts that record the sessions shown in the
# documentation (walkthrough/record.sh, walkthrough/record-embedding.sh,
# production/record.sh), sourced by each.  Every wait is bounded.

# waitport PORT: wait until 127.0.0.1:PORT accepts a connection (10 s at most).
waitport() {
    for i in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "!! port $1 never opened" >&2; exit 1
}

# waitgone PID: wait until process PID has ended (10 s at most); it need
# not be a child of the script, so it is polled.
waitgone() {
    for i in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    echo "!! pid $1 still running" >&2; exit 1
}

# stopPids: stop every process whose PID is in the script's array pids,
# and wait until each has ended (10 s at most each).
stopPids() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do waitgone "$pid"; done
}

# run COMMAND: print "$ COMMAND", then run it and let its output follow.
run() { echo "\$ $1"; bash -c "$1"; }
