"""
What a change of membership costs the requests: p99 latency of lbproxy
under steady load while a DNS name's answer changes ten times a second,
against the same load while it does not change.

    python benchmarks/membership.py              # 3 rounds of 10 s per row
    python benchmarks/membership.py --quick      # 1 round of 3 s

Loopback only, bounded in time.  The script starts:

  - one nginx backend listening on eight loopback addresses,
    127.0.0.2 to 127.0.0.9, all on one port (as the addresses of a
    scaled-out service are);
  - a DNS server (Twisted's, L{lbproxy.testing.startDNSServer}, in a child
    process) answering C{app.bench} with three of those addresses, TTL 0;
  - lbproxy (twistd, CPython) with C{servers = app.bench:PORT resolve},
    C{resolve_min = 100ms}, so that it looks the name up ten times a
    second, and C{resolver} pointed at that server;
  - wrk, 50 connections, C{/tiny}.

and measures, interleaved round by round, three rows:

    static      the same lbproxy with the three addresses listed (no DNS)
    steady      resolve, lookups every 100 ms, the answer never changes
    changing    resolve, and every 100 ms the answer swaps one address for
                another (one backend joins, one leaves and is drained):
                about 100 membership changes in 10 s, counted from
                lbproxy's log ("added (DNS answer")

The DNS server of the steady and changing rows is the same program; only
whether it changes its answer differs.  Each change goes through
L{lbproxy.Pool.setBackends} exactly as in production.

CPU pinning (taskset, when found): lbproxy on CPU 0; wrk, nginx and the
DNS server on CPU 1.  Every process is started by this script, remembered
by PID, and stopped by that PID at the end (also on Ctrl-C).  Raw figures
go to benchmarks/results/membership-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import LOAD_CPU, PROXY_CPU, freePort, parseWrk, which  # noqa: E402

ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]
ROWS = ("static", "steady", "changing")

#: The DNS server of the benchmark, run as a child process: serves
#: app.bench (TTL 0) and, with "changing", swaps one address every
#: interval.  Prints its port, then serves until killed.
DNS_SERVER = r"""
import sys
from twisted.internet import reactor, task
from lbproxy.testing import DNSZone, startDNSServer

addresses = sys.argv[1].split(",")
changing = sys.argv[2] == "changing"
interval = float(sys.argv[3])
zone = DNSZone("bench", ttl=0)
state = {"start": 0}

def answer():
    start = state["start"]
    chosen = [addresses[(start + i) % len(addresses)] for i in range(3)]
    zone.setAddresses("app.bench", chosen, ttl=0)

def change():
    state["start"] += 1
    answer()

answer()
server = startDNSServer(zone, reactor)
print(server.port, flush=True)
if changing:
    task.LoopingCall(change).start(interval, now=False)
reactor.run()
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def portFreeEverywhere(port: int) -> bool:
    for address in ADDRESSES:
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
        f"        listen {address}:{port} backlog=4096;" for address in ADDRESSES
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
    access_log off;
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fcgi; uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 10000000;
    server {{
{listens}
        location = /tiny {{ return 200 "hello\\n"; }}
    }}
}}
"""
    )
    return conf


def lbproxyConfig(
    workdir: Path, row: str, port: int, backend: int, dnsPort: Optional[int]
) -> Path:
    if dnsPort is None:
        servers = "\n    ".join(f"{a}:{backend}" for a in ADDRESSES[:3])
        dns = ""
    else:
        servers = f"app.bench:{backend} resolve"
        dns = f"resolver = 127.0.0.1:{dnsPort}\n"
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
resolve_min = 100ms

[vhost:app]
default = yes
upstream = app
"""
    )
    return conf


def runWrk(url: str, seconds: float, connections: int) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency", url]
    if which("taskset"):
        argv = ["taskset", "-c", LOAD_CPU, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    return parseWrk(proc.stdout)


def changesLogged(path: Path) -> int:
    """
    How many DNS answers changed the pool: lbproxy logs one "added (DNS
    answer" line per backend that joins.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return len(re.findall(r"added \(DNS answer", text))


def measure(
    row: str,
    processes: Processes,
    workdir: Path,
    backend: int,
    seconds: float,
    connections: int,
    interval: float,
) -> dict[str, float]:
    """
    Start the row's DNS server (not for static) and lbproxy, warm up,
    measure with wrk, and stop them.
    """
    dnsPort = None
    dns = None
    if row != "static":
        dns = processes.start(
            [sys.executable, "-c", DNS_SERVER, ",".join(ADDRESSES), row, str(interval)],
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
    config = lbproxyConfig(workdir, row, port, backend, dnsPort)
    logfile = workdir / f"lbproxy-{row}.log"
    if logfile.exists():
        logfile.unlink()
    proxy = processes.start(
        [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", f"--logfile={logfile}", "lbproxy", "--config", str(config),
        ],
        PROXY_CPU,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        waitForPort("127.0.0.1", port, proxy, f"lbproxy ({row})")
        url = f"http://127.0.0.1:{port}/tiny"
        # Until the name resolves, and a short warm-up.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if runWrk(url, 1, 4)["errors"] == 0:
                break
        before = changesLogged(logfile)
        result = runWrk(url, seconds, connections)
        result["changes"] = changesLogged(logfile) - before
        return result
    finally:
        processes.stop(proxy)
        if dns is not None:
            processes.stop(dns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two changes")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 3.0, 1
    nginx = which("nginx")
    if nginx is None or which("wrk") is None:
        raise SystemExit("needs nginx and wrk (apt-get install nginx wrk)")
    processes = Processes()

    def interrupted(signum: int, frame: Any) -> None:
        processes.stopAll()
        raise SystemExit(130)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    results: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
    with tempfile.TemporaryDirectory(prefix="lbproxy-membership-") as tmp:
        workdir = Path(tmp)
        try:
            for _ in range(20):
                backend = freePort()
                if portFreeEverywhere(backend):
                    break
            nginxProc = processes.start(
                [nginx, "-c", str(nginxConfig(workdir, backend))],
                LOAD_CPU,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            for address in ADDRESSES:
                waitForPort(address, backend, nginxProc, "nginx")
            for round in range(args.rounds):
                for row in ROWS:
                    log(f"round {round + 1}/{args.rounds}: {row}")
                    result = measure(
                        row, processes, workdir, backend, args.seconds,
                        args.connections, args.interval,
                    )
                    log(f"  {result}")
                    results[row].append(result)
        finally:
            processes.stopAll()
    print(f"\n{args.rounds} round(s) of {args.seconds:g} s, wrk -c{args.connections}, /tiny; medians")
    print(f"{'row':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'changes':>8} {'errors':>7}")
    for row in ROWS:
        runs = results[row]
        print(
            f"{row:10} {statistics.median(r['rps'] for r in runs):9.0f} "
            f"{statistics.median(r['p50'] for r in runs):8.2f} "
            f"{statistics.median(r['p99'] for r in runs):8.2f} "
            f"{statistics.median(r.get('changes', 0) for r in runs):8.0f} "
            f"{sum(r['errors'] for r in runs):7.0f}"
        )
    steady = statistics.median(r["p99"] for r in results["steady"])
    changing = statistics.median(r["p99"] for r in results["changing"])
    print(f"p99 changing / steady: {changing / steady:.2f}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"membership-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
