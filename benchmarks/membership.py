"""
What a change of membership costs the requests: p99 latency of lbproxy
under load while a DNS name's answer changes ten times a second, against
the same load while it does not change.

    python benchmarks/membership.py              # 3 rounds of 10 s per row
    python benchmarks/membership.py --quick      # 1 round of 3 s
    python benchmarks/membership.py --rows alternating,control,fresh --loads paced \
        --rate 40% --rounds 6                    # the figure for issue 14
    python benchmarks/membership.py --python .tox/pypy/bin/python --warmup 20 \
        --rows alternating,control,fresh --loads paced --rate 3400   # lbproxy on PyPy
    python benchmarks/membership.py --resolving-nginx /usr/local/sbin/nginx \
        --rows fresh,nginx-fresh,control,nginx-control --upstream "resolve_min = 1s" \
        --loads paced --rate 40% --rounds 4       # beside nginx, on the same lookups

Loopback only, bounded in time.  The script starts:

  - one nginx backend listening on eight loopback addresses,
    127.0.0.2 to 127.0.0.9 (and 254 more for the fresh row), all on one
    port (as the addresses of a scaled-out service are);
  - a DNS server (Twisted's, L{lbproxy.testing.startDNSServer}, in a child
    process) answering C{app.bench} with three of those addresses, TTL 0;
  - lbproxy (twistd, on CPython or the C{--python} given, with
    C{PYPY_GC_NURSERY=64MB} unless set, as docs/performance.rst advises
    for PyPy) with
    C{servers = app.bench:PORT resolve}, C{resolve_min = 100ms}, so that
    it looks the name up ten times a second, and C{resolver} pointed at
    that server;

and measures, interleaved round by round, these rows:

    nginx       nginx as the proxy, the three addresses listed: the
                reference (Debian 12's nginx has no upstream C{resolve}:
                see the nginx- rows)
    static      lbproxy with the three addresses listed (no DNS)
    steady      resolve, lookups every 100 ms, the answer never changes
    changing    resolve, and every 100 ms the answer swaps one address for
                another (one backend joins, one leaves and is drained):
                about 100 membership changes in 10 s, counted from
                lbproxy's log ("added (DNS answer")
    alternating one proxy, one paced run of twice C{--seconds}: the answer
                changes every 100 ms for a second, then stays for a
                second, and so on (C{--interval}, C{--block}); the
                requests are split into those that started during
                changes (up to 200 ms after one, C{--window}) and
                those between them, reported as rows "during" and
                "between", and pooled over all rounds too.  Both halves
                see the same process and the same minutes of the machine,
                which the steady and changing rows, run one after the
                other, do not.
    control     the same, with a DNS server that sets the same answer
                again where the alternating row's changes it ("ctl
                during", "ctl between"): the two halves differ only by
                chance, which shows how far apart the alternating row's
                may be for no cause.
    fresh       the alternating row's schedule, but each change brings an
                address never in the answer before ("new during", "new
                between"), from 254 more that nginx listens on,
                127.0.1.1 to 127.0.1.254: the alternating row's addresses
                come back (eight in turn), which lets lbproxy hand a
                returning backend the idle connections it left with;
                here every joining backend is new, as an autoscaled
                instance is, and its connections must be opened.
    churn       the control (no change), while another process, on the
                proxy's CPU, opens three connections to new addresses of
                the backend at each of the control's changes, one request
                on each, keeping the last 64 ("churn during", "churn
                between"): the connections the fresh row makes lbproxy
                open and close, without lbproxy opening them.

    haproxy-alternating, haproxy-control, haproxy-fresh
                the same three with HAProxy (Debian's, one thread) as the
                proxy: three C{server-template} slots filled from the same
                DNS server, asked every 100 ms ("hap during", "hap
                between", and so on).  HAProxy keeps a slot's idle
                connections when its address changes and goes on sending
                requests on them, to the address that left: the "stale"
                column counts them.
    nginx-alternating, nginx-control, nginx-fresh
                the same three with nginx as the proxy, one C{server ...
                resolve} line (nginx 1.27.3 or later: C{--resolving-nginx},
                as Debian 12's 1.22 has no C{resolve}).  nginx asks for
                the name once a second (it counts validity in whole
                seconds), so it follows the ten changes a second one
                second at a time, and sends requests meanwhile to
                addresses that left ("stale"); with C{--upstream
                "resolve_min = 1s"} lbproxy asks as often, for the two to
                see the same answers.

each under two loads, one after the other on the same proxy (the
alternating, control, fresh and churn rows, and HAProxy's, under the paced
one only):

    paced       h2load, 50 connections, a fixed C{--rate} of requests per
                second (default 4000; C{--rate 40%} measures first what
                the static row serves saturated, and takes that share of
                it), spread evenly: h2load paces each connection from
                when it opened, so the connections are opened over one
                pacing period, not all at once (which sent all 50
                requests in the same millisecond).  Latency percentiles
                come from every request's time (h2load's C{--log-file}).
                This is the figure for "a membership change costs no
                request latency": the proxy has room, so what a change
                costs shows as latency.
    saturating  wrk, 50 connections, as fast as the proxy answers: every
                CPU second a change takes is a second no request moves,
                so this shows the throughput a change costs.

The "connects" column counts the connections the backend nginx accepted
during the measurement (its C{stub_status}): the connections the proxy
opened.  The "stale" column (the rows that change the answer) counts the
requests the backend served on an address that had left the DNS answer
more than 250 ms before (its access log gives each request's address):
requests the proxy should have sent elsewhere.

C{--server OPTIONS} adds options to lbproxy's server line (C{--server
max_conns=8}), and C{--upstream KEY=VALUE} (repeatable) adds keys to its
upstream (C{--upstream slow_start=1s}): to measure a setting's effect on
the changes.

The DNS server of the steady and changing rows is the same program; only
whether it changes its answer differs.  Each change goes through
L{lbproxy.Pool.setBackends} exactly as in production.

CPU pinning (taskset, when found): the proxy on CPU 0; wrk, h2load, nginx
and the DNS server on CPU 1.  Every process is started by this script,
remembered by PID, and stopped by that PID at the end (also on Ctrl-C).
Raw figures go to benchmarks/results/membership-*.json.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    LOAD_CPU,
    PROXY_CPU,
    PYPY_NURSERY,
    freePort,
    nginxProxyConfig,
    parseWrk,
    which,
)

ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]
#: The addresses of the fresh row: one round's 100 changes never bring
#: one back.
FRESH_ADDRESSES = [f"127.0.1.{i}" for i in range(1, 255)]
ROWS = (
    "nginx", "static", "steady", "changing", "alternating", "control", "fresh", "churn",
    "haproxy-alternating", "haproxy-control", "haproxy-fresh",
    "nginx-alternating", "nginx-control", "nginx-fresh",
)
#: The prefix of the rows measured with HAProxy as the proxy.
HAPROXY = "haproxy-"
#: The prefix of the rows measured with a resolving nginx as the proxy.
NGINX = "nginx-"
#: The two halves of the alternating row, of its control, of the fresh
#: and churn rows, and of the same with HAProxy, reported as rows of their
#: own.
HALVES = {
    "alternating": ("during", "between"),
    "control": ("ctl during", "ctl between"),
    "fresh": ("new during", "new between"),
    "churn": ("churn during", "churn between"),
    "haproxy-alternating": ("hap during", "hap between"),
    "haproxy-control": ("hap ctl during", "hap ctl between"),
    "haproxy-fresh": ("hap new during", "hap new between"),
    "nginx-alternating": ("ngx during", "ngx between"),
    "nginx-control": ("ngx ctl during", "ngx ctl between"),
    "nginx-fresh": ("ngx new during", "ngx new between"),
}
SPLIT = {half for halves in HALVES.values() for half in halves}
LOADS = ("paced", "saturating")

#: The DNS server of the benchmark, run as a child process: serves
#: app.bench (TTL 0); with "changing", swaps one address every interval;
#: with "alternating", does so for a block of intervals (the last
#: argument), then not for as many, and so on, writing the time of each
#: change to the file named fourth; with
#: "control", keeps that schedule but sets the same answer again; with
#: "fresh", keeps it too, and is given so many addresses that none comes
#: back.  Prints its port, then serves until killed.
DNS_SERVER = r"""
import sys, time
from twisted.internet import reactor, task
from lbproxy.testing import DNSZone, startDNSServer

addresses = sys.argv[1].split(",")
mode = sys.argv[2]
interval = float(sys.argv[3])
changes = open(sys.argv[4], "w", buffering=1)
block = int(sys.argv[5])
size = int(sys.argv[6])
zone = DNSZone("bench", ttl=0)
state = {"start": 0, "tick": 0}

def answer():
    start = state["start"]
    chosen = [addresses[(start + i) % len(addresses)] for i in range(size)]
    zone.setAddresses("app.bench", chosen, ttl=0)

def tick():
    state["tick"] += 1
    if mode == "changing" or (state["tick"] // block) % 2 == 1:
        if mode != "control":
            state["start"] += 1
        answer()
        changes.write(f"{time.time():.6f}\n")

answer()
server = startDNSServer(zone, reactor)
print(server.port, flush=True)
if mode != "steady":
    task.LoopingCall(tick).start(interval, now=False)
reactor.run()
"""


#: The churn row's other client, run as a child process: at each change
#: the control's DNS server writes down (its file named first), opens
#: three connections to new addresses of the backend (C{FRESH_ADDRESSES}),
#: sends one request on each, and keeps the last 64 open, closing the
#: oldest: the connections the fresh row's changes make lbproxy open and
#: close, made by another process, while lbproxy's own members stay.
CHURN = r"""
import collections, os, socket, sys, time
changes, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
addresses = sys.argv[4].split(",")
request = b"GET /tiny HTTP/1.1\r\nHost: churn\r\n\r\n"
kept, opened, seen = collections.deque(), 0, None
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        with open(changes) as f:
            count = len(f.read().split())
    except OSError:
        count = 0
    if seen is None:
        seen = count
    for _ in range(count - seen):
        for _ in range(3):
            s = socket.create_connection((addresses[opened % len(addresses)], port), timeout=5)
            opened += 1
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request)
            answer = b""
            while not answer.endswith(b"hello\n"):
                answer += s.recv(4096)
            kept.append(s)
            while len(kept) > 64:
                kept.popleft().close()
    seen = count
    time.sleep(0.005)
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def portFreeEverywhere(port: int) -> bool:
    for address in ADDRESSES + FRESH_ADDRESSES:
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def waitForPort(host: str, port: int, proc: subprocess.Popen[Any], name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name} did not listen on {host}:{port} within 30s")


class Processes:
    """
    Every process the benchmark starts, stopped by PID.
    """

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[Any]] = []

    def start(self, argv: list[str], cpu: Optional[str], **kwargs: Any) -> subprocess.Popen[Any]:
        if cpu is not None and which("taskset"):
            argv = ["taskset", "-c", cpu, *argv]
        proc = subprocess.Popen(argv, **kwargs)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if proc in self.running:
            self.running.remove(proc)

    def stopAll(self) -> None:
        for proc in list(self.running):
            self.stop(proc)


def nginxConfig(workdir: Path, port: int) -> Path:
    listens = "\n".join(
        f"        listen {address}:{port} backlog=4096;"
        for address in ADDRESSES + FRESH_ADDRESSES
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = workdir / "nginx-tmp"
    temp.mkdir(exist_ok=True)
    conf = workdir / "backend.conf"
    conf.write_text(
        f"""
{user}daemon off;
master_process off;
worker_processes 1;
pid {workdir}/backend.pid;
error_log {workdir}/backend.error.log warn;
events {{ worker_connections 20000; }}
http {{
    log_format addr '$msec $server_addr $host';
    access_log {workdir}/backend.access.log addr buffer=64k flush=100ms;
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fcgi; uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 10000000;
    server {{
{listens}
        location = /tiny {{ return 200 "hello\\n"; }}
        location = /status {{ stub_status; }}
    }}
}}
"""
    )
    return conf


def startBackend(processes: Processes, workdir: Path) -> int:
    """
    Start the backend nginx (L{nginxConfig}) on a port free on every one
    of its addresses, and wait until it listens on all of them.

    @return: its port.
    """
    for _ in range(20):
        port = freePort()
        if portFreeEverywhere(port):
            break
    nginx = processes.start(
        [str(which("nginx")), "-c", str(nginxConfig(workdir, port))],
        LOAD_CPU,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    for address in ADDRESSES + FRESH_ADDRESSES:
        waitForPort(address, port, nginx, "nginx")
    return port


def backendAccepts(port: int) -> int:
    """
    How many connections the backend nginx has accepted so far (its
    C{stub_status}), not counting the one that asks.
    """
    url = f"http://{ADDRESSES[0]}:{port}/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode("ascii")
    accepts = int(text.splitlines()[2].split()[0])
    return accepts - 1


def answers(
    mode: str, addresses: list[str], changes: int, size: int = 3
) -> list[frozenset[str]]:
    """
    The DNS server's answers (L{DNS_SERVER}) of C{size} addresses: the
    first, then the one after each of C{changes} changes.
    """
    step = 0 if mode == "control" else 1
    return [
        frozenset(addresses[(k * step + i) % len(addresses)] for i in range(size))
        for k in range(changes + 1)
    ]


def staleRequests(
    accessLog: Path,
    offset: int,
    since: float,
    changes: list[float],
    answers: list[frozenset[str]],
    grace: float = 0.25,
) -> list[float]:
    """
    When the backend served a request, from C{since} on, on an address that
    had left the DNS answer more than C{grace} seconds before (or was
    never in it): a request the proxy should have sent elsewhere.  The
    grace covers the proxy's lookup interval and the requests in flight
    when it drains an address.

    @param accessLog: the backend nginx's log, C{$msec $server_addr
        $host} per request; the churn row's other client's requests
        (C{Host: churn}) are not the proxy's, and are left out.
    @param offset: where in C{accessLog} to start reading: its size when
        the run began (the log holds every row's requests).
    @param changes: when the answer changed, in order.
    @param answers: the answer before the first change, then after each.
    """
    stale = []
    with open(accessLog, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("ascii", "replace").splitlines()
    for line in lines:
        fields = line.split()
        if len(fields) != 3 or fields[2] == "churn" or float(fields[0]) < since:
            continue
        served, address = float(fields[0]), fields[1]
        current = bisect.bisect_right(changes, served)
        if address in answers[min(current, len(answers) - 1)]:
            continue
        # The last change that took the address out of the answer.
        left = next(
            (
                changes[k - 1]
                for k in range(min(current, len(answers) - 1), 0, -1)
                if address in answers[k - 1] and address not in answers[k]
            ),
            -math.inf,
        )
        if served - left > grace:
            stale.append(served)
    return stale


def lbproxyConfig(
    workdir: Path,
    row: str,
    port: int,
    backend: int,
    dnsPort: Optional[int],
    serverOptions: str = "",
    upstreamOptions: tuple[str, ...] = (),
) -> Path:
    """
    lbproxy's configuration for C{row}.

    @param serverOptions: more options for the server line (C{--server}).
    @param upstreamOptions: more keys of the upstream (C{--upstream}).
    """
    more = f" {serverOptions}" if serverOptions else ""
    if dnsPort is None:
        servers = "\n    ".join(f"{a}:{backend}{more}" for a in ADDRESSES[:3])
        dns = ""
    else:
        servers = f"app.bench:{backend} resolve{more}"
        dns = f"resolver = 127.0.0.1:{dnsPort}\n"
    upstream = "".join(f"{option}\n" for option in upstreamOptions)
    if not any(option.split("=")[0].strip() == "resolve_min" for option in upstreamOptions):
        # Ten lookups a second, as often as the DNS server changes.
        upstream += "resolve_min = 100ms\n"
    conf = workdir / f"lbproxy-{row}.ini"
    conf.write_text(
        f"""
[lbproxy]
listen = tcp:{port}:interface=127.0.0.1:backlog=4096
access_log = off
{dns}
[upstream:app]
servers =
    {servers}
keepalive = 64
{upstream}
[vhost:app]
default = yes
upstream = app
"""
    )
    return conf


def haproxyConfig(
    workdir: Path, row: str, port: int, backend: int, dnsPort: int, slots: int = 3
) -> Path:
    """
    HAProxy as the proxy of the C{haproxy-} rows: as many
    C{server-template} slots as an answer has addresses, filled from the
    benchmark's DNS server, asked every 100 ms (as lbproxy's C{resolve_min
    = 100ms}); an address that leaves the answer
    frees its slot at once (C{hold obsolete 0s}) for the one that joins.
    One thread, as lbproxy is one process; connections to the backends
    are kept and reused (HAProxy's default, C{http-reuse safe}).  Its
    warnings (a slot's new address among them) go to its output, which
    L{measure} writes to the row's log.
    """
    conf = workdir / f"{row}.cfg"
    conf.write_text(
        f"""
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s

resolvers bench
    nameserver dns 127.0.0.1:{dnsPort}
    hold valid 100ms
    hold obsolete 0s
    timeout resolve 100ms
    timeout retry 100ms

frontend app
    bind 127.0.0.1:{port} backlog 4096
    default_backend app

backend app
    balance roundrobin
    server-template app {slots} app.bench:{backend} resolvers bench init-addr none resolve-prefer ipv4
"""
    )
    return conf


def resolvingNginxConfig(
    workdir: Path, row: str, port: int, backend: int, dnsPort: int
) -> Path:
    """
    nginx as the proxy of the C{nginx-} rows (nginx 1.27.3 or later, whose
    upstream C{server} takes C{resolve}): one server line for the name,
    each address a peer, and the same C{keepalive} as lbproxy's; nginx's
    keepalive cache finds a connection by its peer's address, so a request
    is never sent on a connection to an address that left.  nginx counts
    an answer's validity in whole seconds (C{resolver ... valid=} takes
    no less), so with the answers' TTL of 0 it asks once a second: to
    compare the two on the same lookups, give lbproxy C{--upstream
    "resolve_min = 1s"}.
    """
    return nginxProxyConfig(
        workdir,
        port,
        backend,
        name=f"{row}-proxy",
        extra=f"resolver 127.0.0.1:{dnsPort} ipv6=off; resolver_timeout 1s;",
        servers=[f"app.bench:{backend} resolve"],
        upstreamExtra="zone app 1m;",
    )


def runWrk(url: str, seconds: float, connections: int) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency", url]
    if which("taskset"):
        argv = ["taskset", "-c", LOAD_CPU, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    return parseWrk(proc.stdout)


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def runPaced(
    url: str, seconds: float, connections: int, rate: float, workdir: Path
) -> list[tuple[float, float, bool]]:
    """
    h2load over HTTP/1.1, C{connections} connections sending C{rate}
    requests per second in all, for C{seconds}.

    @return: every request (its C{--log-file}): when it started (seconds
        since the epoch), how long it took (ms), and whether its status
        was 2xx.
    """
    logfile = workdir / "h2load.log"
    if logfile.exists():
        logfile.unlink()
    # h2load paces each connection on its own timer, started when the
    # connection is: opened all at once, the connections would send their
    # requests in the same millisecond, a burst of C{connections} requests
    # every C{connections / rate} seconds.  Opening them at a steady rate
    # (C{-r} per millisecond, which rules out C{-D}: hence C{-n}) over one
    # such period spreads their requests evenly.
    period = connections / rate
    perMillisecond = max(1, math.ceil(connections / (period * 1000)))
    argv = [
        "h2load", "--h1", "-t1", f"-c{connections}",
        f"-r{perMillisecond}", "--rate-period=1ms",
        f"-n{round(rate * seconds)}", f"--rps={rate / connections:g}",
        f"--log-file={logfile}", url,
    ]
    if which("taskset"):
        argv = ["taskset", "-c", LOAD_CPU, *argv]
    subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    requests = []
    for line in logfile.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        requests.append(
            (int(fields[0]) / 1e6, int(fields[2]) / 1000.0, fields[1].startswith("2"))
        )
    if not requests:
        raise SystemExit("h2load sent no request")
    return requests


def summarize(requests: list[tuple[float, float, bool]], seconds: float) -> dict[str, float]:
    """
    The rate, latency percentiles and errors of the requests of
    L{runPaced}, sent over C{seconds}.
    """
    times = sorted(ms for _, ms, _ in requests)
    errors = sum(1 for _, _, ok in requests if not ok)
    return {
        "rps": len(times) / seconds,
        "requests": len(times),
        "p50": percentile(times, 0.5),
        "p99": percentile(times, 0.99),
        "p999": percentile(times, 0.999),
        "max": times[-1],
        "errors": errors,
    }


def splitByChanges(
    requests: list[tuple[float, float, bool]], changes: list[float], window: float
) -> tuple[list[tuple[float, float, bool]], list[tuple[float, float, bool]]]:
    """
    Split the requests of the alternating row: those that started at most
    C{window} seconds after a change (lbproxy sees a change up to one
    lookup interval after the DNS server makes it, and the aftermath of
    the last change of a block counts as during), and the others.
    """
    during, between = [], []
    ordered = sorted(changes)
    for request in requests:
        latest = bisect.bisect_right(ordered, request[0]) - 1
        if latest >= 0 and request[0] - ordered[latest] <= window:
            during.append(request)
        else:
            between.append(request)
    return during, between


#: What the proxy logs of the backends that join: lbproxy's line (one per
#: answer, naming them all), and HAProxy's warning when a
#: C{server-template} slot takes a new address (one per slot).
JOINED = re.compile(r"backends? (\S+(?:, \S+)*) of upstream \S+ added \(DNS answer|changed its IP from")


def changesLogged(path: Path) -> int:
    """
    How many backends joined the pool, from the proxy's log (L{JOINED}).
    """
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(
        len(joined.group(1).split(", ")) if joined.group(1) else 1
        for joined in JOINED.finditer(text)
    )


def changesMade(path: Path) -> int:
    """
    How many changes the DNS server made: it writes down the time of each
    in C{path} (L{DNS_SERVER}).  For nginx, which logs none.
    """
    try:
        return len(path.read_text().split())
    except OSError:
        return 0


def counting(changesSoFar: Callable[[], int], backend: int) -> Callable[[], dict[str, int]]:
    """
    Start counting the membership changes (C{changesSoFar}: L{changesLogged}
    or L{changesMade}) and the connections the backend accepts.

    @return: a callable that gives both counts since.
    """
    changes, accepted = changesSoFar(), backendAccepts(backend)
    return lambda: {
        "changes": changesSoFar() - changes,
        "connects": backendAccepts(backend) - accepted,
    }


def dnsMode(row: str) -> str:
    """
    The mode of the row's DNS server (L{DNS_SERVER}): the C{haproxy-}
    and C{nginx-} rows are the rows they name, and the churn row is the control.
    """
    if row == "churn":
        return "control"
    for prefix in (HAPROXY, NGINX):
        if row.startswith(prefix):
            return row[len(prefix):]
    return row


def measure(
    row: str,
    processes: Processes,
    workdir: Path,
    backend: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """
    Start the row's DNS server (all rows but nginx and static) and proxy,
    warm up, measure under each load (the rows of L{HALVES}:
    L{measureAlternating}), and stop them.
    """
    dnsPort = None
    dns = None
    changesFile = workdir / "changes.txt"
    mode = dnsMode(row)
    addresses = FRESH_ADDRESSES if mode == "fresh" else ADDRESSES
    if row not in ("nginx", "static"):
        dns = processes.start(
            [
                sys.executable, "-c", DNS_SERVER, ",".join(addresses), mode,
                str(args.interval), str(changesFile), str(args.block), str(args.answer),
            ],
            LOAD_CPU,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert dns.stdout is not None
        line = dns.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit("the DNS server did not start")
        dnsPort = int(line)
    port = freePort()
    logfile = workdir / f"lbproxy-{row}.log"
    if logfile.exists():
        logfile.unlink()
    if row == "nginx":
        # The three addresses lbproxy's static row lists, the same keepalive.
        servers = [f"{a}:{backend}" for a in ADDRESSES[:3]]
        conf = nginxProxyConfig(workdir, port, backend, servers=servers)
        argv = [str(which("nginx")), "-c", str(conf)]
    elif row.startswith(HAPROXY):
        assert dnsPort is not None
        conf = haproxyConfig(workdir, row, port, backend, dnsPort, args.answer)
        argv = [str(which("haproxy")), "-db", "-f", str(conf)]
    elif row.startswith(NGINX):
        assert dnsPort is not None
        conf = resolvingNginxConfig(workdir, row, port, backend, dnsPort)
        argv = [*shlex.split(args.resolving_nginx), "-c", str(conf)]
    else:
        config = lbproxyConfig(
            workdir, row, port, backend, dnsPort, args.server, tuple(args.upstream)
        )
        argv = [
            args.python, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", f"--logfile={logfile}", "lbproxy", "--config", str(config),
        ]
    # lbproxy runs on PyPy with the nursery docs/performance.rst advises
    # (CPython ignores it), unless the environment sets one.
    env = {"PYPY_GC_NURSERY": PYPY_NURSERY, **os.environ}
    with open(logfile, "ab") as output:
        # lbproxy logs to C{logfile} itself; HAProxy, to its output.
        proxy = processes.start(
            argv,
            PROXY_CPU,
            stdout=output if row.startswith(HAPROXY) else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        waitForPort("127.0.0.1", port, proxy, row)
        url = f"http://127.0.0.1:{port}/tiny"
        # Until the name resolves, and a short warm-up.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if runWrk(url, 1, 4)["errors"] == 0:
                break
        if args.warmup:
            # PyPy's JIT compiles the paths a request and a change take
            # in the first seconds (the DNS server changes its answer from
            # the start).
            runWrk(url, args.warmup, args.connections)
        results = {}
        if row in HALVES:
            churn = None
            if row == "churn":
                churn = processes.start(
                    [
                        sys.executable, "-c", CHURN, str(changesFile), str(backend),
                        str(4 * args.seconds + 30), ",".join(FRESH_ADDRESSES),
                    ],
                    PROXY_CPU,
                )
            try:
                counted = counting(
                    # nginx logs no change: the DNS server's own count (the
                    # control's sets the same answer again: no change).
                    (lambda: changesMade(changesFile) if mode != "control" else 0)
                    if row.startswith(NGINX)
                    else (lambda: changesLogged(logfile)),
                    backend,
                )
                halves = measureAlternating(
                    row, url, args, workdir, changesFile, mode, addresses
                )
                halves[HALVES[row][0]].update(counted())
            finally:
                if churn is not None:
                    processes.stop(churn)
            return halves
        for load in args.loads:
            counted = counting(lambda: changesLogged(logfile), backend)
            if load == "paced":
                requests = runPaced(url, args.seconds, args.connections, args.rate, workdir)
                result = summarize(requests, args.seconds)
            else:
                result = runWrk(url, args.seconds, args.connections)
            result.update(counted())
            results[load] = result
        return results
    finally:
        processes.stop(proxy)
        if dns is not None:
            processes.stop(dns)


def measureAlternating(
    row: str,
    url: str,
    args: argparse.Namespace,
    workdir: Path,
    changesFile: Path,
    mode: str,
    addresses: list[str],
) -> dict[str, Any]:
    """
    The alternating row: one paced run of twice C{--seconds}, during
    which the DNS answer changes every interval for C{--block} intervals,
    then stays for as many, and so on; the requests are split into those
    during changes and those between them (L{splitByChanges}), so that both
    halves see the same proxy, connections and machine at the same
    minutes, and a drift of the machine's speed falls on both alike.

    The control row does the same with a DNS server that sets the same
    answer again where the alternating row's changes it: its two halves
    differ only by chance, which is how far apart the alternating row's
    may be for no cause.  The fresh row does the same with addresses that
    never come back; the churn row is the control while another process
    opens connections to new addresses at each change (L{CHURN}).

    Each half also counts its "stale" requests (L{staleRequests}): those
    the backend served on an address out of the answer (C{mode}'s answers,
    from C{addresses}: see L{answers}).
    """
    seconds = 2 * args.seconds
    accessLog = workdir / "backend.access.log"
    offset = accessLog.stat().st_size
    requests = runPaced(url, seconds, args.connections, args.rate, workdir)
    changes = [float(t) for t in changesFile.read_text().split()]
    during, between = splitByChanges(requests, changes, args.window)
    share = len(during) / len(requests)
    duringName, betweenName = HALVES[row]
    stale = staleRequests(
        flushedAccessLog(accessLog, max(t for t, _, _ in requests)),
        offset,
        min(t for t, _, _ in requests),
        changes,
        answers(mode, addresses, len(changes), args.answer),
    )
    staleDuring, staleBetween = splitByChanges(
        [(t, 0.0, True) for t in stale], changes, args.window
    )
    return {
        duringName: {**summarize(during, seconds * share), "stale": len(staleDuring)},
        betweenName: {
            **summarize(between, seconds * (1 - share)),
            "changes": 0,
            "connects": 0,
            "stale": len(staleBetween),
        },
        "times": {
            duringName: [ms for _, ms, _ in during],
            betweenName: [ms for _, ms, _ in between],
        },
    }


def flushedAccessLog(path: Path, last: float) -> Path:
    """
    The backend's access log at C{path}, once nginx has written its buffer
    (every 100 ms) up to a request that started at C{last} (waiting 5 s at
    most).
    """
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 200))
            tail = f.read().split()
        if len(tail) >= 3 and float(tail[-3]) >= last:
            break
        time.sleep(0.05)
    return path


def pacedRow(
    seconds: float, rate: float, python: str = sys.executable, warmup: float = 0.0
) -> argparse.Namespace:
    """
    The arguments L{measure} takes to run one row of L{HALVES} under the
    paced load, for the scripts that trace a run from inside the proxy
    (C{exchanges.py}, C{turns.py}).

    @param python: the interpreter that runs lbproxy (C{--python}).
    @param warmup: seconds of load before the measurement (C{--warmup}).
    """
    return argparse.Namespace(
        seconds=seconds, connections=50, rate=rate, interval=0.1, block=10, window=0.2, answer=3,
        loads=["paced"],
        python=python, warmup=warmup, server="", upstream=[],
    )


#: The end of a C{sitecustomize} module (L{whenTwistdRuns}): its
#: C{_install} runs once twistd starts its application, in the proxy only
#: (the benchmark's other Python processes load the module too).
_WHEN_TWISTD_RUNS = r'''
if os.environ.get(%r) is not None:
    from twisted.application import app

    _run = app.ApplicationRunner.run

    def run(self):
        _install()
        return _run(self)

    app.ApplicationRunner.run = run
'''


def whenTwistdRuns(source: str, variable: str) -> str:
    """
    A C{sitecustomize} module (for L{addSitecustomize}) made of C{source},
    which imports C{os} and defines C{_install()}, and of the lines that
    call C{_install()} when twistd runs its application, if the
    environment variable C{variable} is set.
    """
    return source + _WHEN_TWISTD_RUNS % (variable,)


def addSitecustomize(workdir: Path, source: str) -> None:
    """
    Have every Python process started from now on (the proxy among them)
    load C{source} as its C{sitecustomize} module, from C{workdir/site}.
    """
    (workdir / "site").mkdir()
    (workdir / "site" / "sitecustomize.py").write_text(source)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(workdir / "site"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )


def parseRate(text: str) -> tuple[float, bool]:
    """
    Parse C{--rate}: requests per second (C{4000}), or a share of
    saturation (C{40%}).

    @return: the number, and whether it is a share in percent.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(%?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            "requests per second (4000) or a share of saturation (40%)"
        )
    return float(match.group(1)), bool(match.group(2))


def pacedRate(
    args: argparse.Namespace, processes: Processes, workdir: Path, backend: int
) -> float:
    """
    The paced load's requests per second: C{--rate} as given, or, for a
    share such as C{40%}, that share of what the static row serves
    saturated, measured now (so that runs on machines of different speed
    load lbproxy alike).
    """
    value, isShare = args.rate
    if not isShare:
        return value
    share = value / 100
    calibrating = argparse.Namespace(**{**vars(args), "loads": ["saturating"]})
    saturated = measure("static", processes, workdir, backend, calibrating)["saturating"]
    rate = round(saturated["rps"] * share)
    log(f"paced rate: {value:g}% of {saturated['rps']:.0f} req/s (static, saturated) = {rate}")
    return float(rate)


def compare(
    runs: dict[str, list[dict[str, float]]],
    medians: dict[str, dict[str, float]],
    row: str,
    reference: str,
) -> None:
    """
    Print how C{row} compares with C{reference}: the ratios of their
    medians, and each round's p99 ratio.
    """
    if not (runs.get(row) and runs.get(reference)):
        return
    changed, base = medians[row], medians[reference]
    ratios = [f"p99 {changed['p99'] / base['p99']:.2f}"]
    if not math.isnan(base["p999"]):
        ratios.append(f"p99.9 {changed['p999'] / base['p999']:.2f}")
    if reference not in SPLIT:
        # The halves of one run share its rate.
        ratios.append(f"req/s {changed['rps'] / base['rps']:.2f}")
    print(f"{row} / {reference}: " + ", ".join(ratios))
    # Each round's pair ran back to back (or, for the alternating row,
    # together): the spread of their ratios is what the machine's drift
    # does to one comparison.
    pairs = zip(runs[reference], runs[row])
    perRound = [c["p99"] / s["p99"] for s, c in pairs]
    print("  p99 by round: " + ", ".join(f"{r:.2f}" for r in perRound))


def checkResolvingNginx(command: str) -> None:
    """
    Refuse to start the C{nginx-} rows with an nginx older than 1.27.3,
    whose upstream has no C{resolve} (Debian 12's is 1.22).
    """
    try:
        shown = subprocess.run(
            [*shlex.split(command), "-v"], capture_output=True, text=True, timeout=10
        ).stderr
    except OSError as e:
        raise SystemExit(f"--resolving-nginx {command!r}: {e}") from None
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", shown)
    if found is None or tuple(map(int, found.groups())) < (1, 27, 3):
        raise SystemExit(
            f"the nginx- rows need nginx 1.27.3 or later (upstream 'resolve'); "
            f"{command!r} says {shown.strip()!r}: see docs/performance.rst"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--rate",
        type=parseRate,
        default="4000",
        help="requests per second of the paced load, or a share of what lbproxy "
        "serves saturated (static row, measured first), such as 40%%",
    )
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two changes")
    parser.add_argument(
        "--block", type=int, default=10,
        help="changes in a row in the rows that alternate, then as many intervals without",
    )
    parser.add_argument(
        "--answer", type=int, default=3,
        help="addresses in each DNS answer (the fresh row's all new after as many changes)",
    )
    parser.add_argument(
        "--window", type=float,
        help="seconds after a change that a request counts as during changes "
        "(default: two intervals; at least the proxy's time between lookups)",
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows, comma-separated")
    parser.add_argument("--loads", default=",".join(LOADS), help="which loads, comma-separated")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    parser.add_argument(
        "--python", default=sys.executable, help="the Python that runs lbproxy (PyPy: see --warmup)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.0,
        help="seconds of saturating load on each proxy before it is measured "
        "(20 for PyPy, whose JIT compiles meanwhile)",
    )
    parser.add_argument(
        "--resolving-nginx", default="nginx", metavar="COMMAND",
        help="the nginx of the nginx- rows, 1.27.3 or later (upstream 'resolve'): "
        "a command, split as a shell would",
    )
    parser.add_argument(
        "--server", default="", metavar="OPTIONS",
        help="more options for lbproxy's server line, such as 'max_conns=8'",
    )
    parser.add_argument(
        "--upstream", action="append", default=[], metavar="KEY = VALUE",
        help="one more key of lbproxy's upstream, such as 'slow_start = 1s' (repeatable)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 3.0, 1
    if args.window is None:
        args.window = 2 * args.interval
    args.rows = [r for r in args.rows.split(",") if r]
    args.loads = [load for load in args.loads.split(",") if load]
    if not set(args.rows) <= set(ROWS) or not set(args.loads) <= set(LOADS):
        parser.error(f"rows are among {', '.join(ROWS)}; loads among {', '.join(LOADS)}")
    if args.answer > len(ADDRESSES) and any(
        dnsMode(row) in ("steady", "changing", "alternating", "control") for row in args.rows
    ):
        parser.error(f"an answer of those rows has at most {len(ADDRESSES)} addresses")
    nginx = which("nginx")
    if nginx is None or which("wrk") is None or which("h2load") is None:
        raise SystemExit("needs nginx, wrk and h2load (apt-get install nginx wrk nghttp2-client)")
    if any(row.startswith(HAPROXY) for row in args.rows) and which("haproxy") is None:
        raise SystemExit("the haproxy- rows need HAProxy (apt-get install haproxy)")
    if any(row.startswith(NGINX) for row in args.rows):
        checkResolvingNginx(args.resolving_nginx)
    processes = Processes()

    def interrupted(signum: int, frame: Any) -> None:
        processes.stopAll()
        raise SystemExit(130)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    if set(HALVES) & set(args.rows) and "paced" not in args.loads:
        parser.error("the alternating and control rows are measured under the paced load")
    # The alternating and control rows are reported as their two halves.
    reported = [half for row in args.rows for half in HALVES.get(row, (row,))]
    #: Every request's time in each half of the alternating row, over all
    #: rounds.
    pooled: dict[str, list[float]] = {half: [] for half in SPLIT}
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        load: {row: [] for row in reported} for load in args.loads
    }
    with tempfile.TemporaryDirectory(prefix="lbproxy-membership-") as tmp:
        workdir = Path(tmp)
        try:
            backend = startBackend(processes, workdir)
            args.rate = pacedRate(args, processes, workdir, backend)
            for round in range(args.rounds):
                for row in args.rows:
                    log(f"round {round + 1}/{args.rounds}: {row}")
                    measured = measure(row, processes, workdir, backend, args)
                    if row in HALVES:
                        # Reported as its two halves, under the paced load.
                        for half in HALVES[row]:
                            log(f"  paced, {half}: {measured[half]}")
                            results["paced"][half].append(measured[half])
                            pooled[half].extend(measured["times"][half])
                        continue
                    for load, result in measured.items():
                        log(f"  {load}: {result}")
                        results[load][row].append(result)
        finally:
            processes.stopAll()
    print(
        f"\n{args.rounds} round(s) of {args.seconds:g} s, {args.connections} connections, "
        f"/tiny, a change every {args.interval:g} s in the changing row; medians"
    )
    for load in args.loads:
        what = f"h2load at {args.rate:g} req/s" if load == "paced" else "wrk, as fast as it goes"
        print(f"\n{load} ({what})")
        print(
            f"{'row':11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
            f"{'changes':>8} {'connects':>9} {'stale':>6} {'errors':>7}"
        )
        medians: dict[str, dict[str, float]] = {}
        for row, runs in results[load].items():
            if not runs:
                continue
            medians[row] = {
                key: statistics.median(r.get(key, float("nan")) for r in runs)
                for key in ("rps", "p50", "p99", "p999", "changes", "connects", "stale")
            }
            m = medians[row]
            # wrk gives no p99.9.
            p999 = "-" if math.isnan(m["p999"]) else f"{m['p999']:.2f}"
            # Counted for the halves of the rows that change the answer.
            stale = "-" if math.isnan(m["stale"]) else f"{m['stale']:.0f}"
            print(
                f"{row:11} {m['rps']:8.0f} {m['p50']:8.2f} {m['p99']:8.2f} "
                f"{p999:>9} {m['changes']:8.0f} {m['connects']:9.0f} {stale:>6} "
                f"{sum(r['errors'] for r in runs):7.0f}"
            )
        compare(results[load], medians, "changing", "steady")
        for duringName, betweenName in HALVES.values():
            compare(results[load], medians, duringName, betweenName)
            if load == "paced" and pooled[duringName] and pooled[betweenName]:
                # A 10 s half's p99 rests on its few slowest moments (on a
                # shared machine, mostly when the hypervisor took the
                # CPU); all rounds' requests together rest on more.
                print(f"  pooled over {args.rounds} round(s):")
                d, b = sorted(pooled[duringName]), sorted(pooled[betweenName])
                for share, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")):
                    print(
                        f"    {name:6} {duringName} {percentile(d, share):7.2f} ms, "
                        f"{betweenName} {percentile(b, share):7.2f} ms: "
                        f"{percentile(d, share) / percentile(b, share):.2f}"
                    )
        if "nginx" in medians and "changing" in medians:
            print(f"changing / nginx: p99 {medians['changing']['p99'] / medians['nginx']['p99']:.2f}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"membership-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
