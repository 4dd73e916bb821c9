"""
lbproxy's fault-injection soak: steady load while backends die and return.

    python benchmarks/soak.py                  # 10 s warm-up + 120 s soak
    python benchmarks/soak.py --duration 30    # shorter
    python benchmarks/soak.py --source HEAD    # the last commit, not the checkout

Loopback only, bounded in time (the default run takes about 2.5 minutes,
and no setting can take it past 5: --warmup + --duration is capped at 270
seconds).  It starts, each as a subprocess remembered by its PID:

  - three backends (this script with C{--backend PORT}: a plain Twisted
    web server answering every GET with 1 KiB);
  - lbproxy, as C{twistd -n --pidfile= lbproxy --config <tmp>/soak.ini},
    balancing over them with passive health checks only.

Then a bounded client loop (Twisted's C{Agent}, C{--concurrency} requests
in flight on persistent connections) sends GETs for C{--warmup} seconds,
measures the proxy, and goes on for C{--duration} seconds while a killer
sends SIGKILL to one live backend every C{--kill-every} seconds and
restarts it C{--down-for} seconds later.  The killer never kills the last
live backend, so at least one backend is up at every moment, and every
non-2xx answer or failed request counts against lbproxy.

The report gives: requests sent, answers by status, failed requests,
non-2xx while at least one backend was up (target 0 for GET), the proxy's
RSS after warm-up and at the end (target: growth under 10%), and its open
file descriptors after warm-up and at the end, under load and idle
(target: no growth beyond the pooled backend connections).  C{--json PATH}
also writes the figures as JSON.  The exit status is 0 when every target
is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent

#: The longest the warm-up plus the soak may take, in seconds.
MAX_RUN = 270.0
#: Idle keep-alive connections lbproxy keeps per backend in the soak.
KEEPALIVE = 4


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _waitListening(port: int, process: subprocess.Popen[bytes], limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with {process.returncode}")
        if _listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {limit} s")


def _rss(pid: int) -> int:
    """
    Resident set size of C{pid} in KiB.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _remotePorts(pid: int) -> Counter[int]:
    """
    The remote ports of C{pid}'s established TCP connections (IPv4), by
    count: tells pooled backend connections from anything else.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports: Counter[int] = Counter()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
            ports[int(fields[2].split(":")[1], 16)] += 1
    return ports


def _stop(process: Optional[subprocess.Popen[bytes]], sig: int = signal.SIGTERM) -> None:
    """
    Stop C{process} by its PID: C{sig}, then SIGKILL if it lingers.
    """
    if process is None or process.poll() is not None:
        return
    try:
        os.kill(process.pid, sig)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


# The backend: this script with --backend PORT.


def runBackend(port: int) -> None:
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    body = b"x" * 1024

    class Answer(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain")
            return body

    site = Site(Answer())
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
    reactor.run()  # type: ignore[attr-defined]


class Backends:
    """
    The backend subprocesses, each killable and restartable by PID, with a
    record of when each was up.
    """

    def __init__(self, count: int, logDir: Path) -> None:
        self.ports = [_freePort() for _ in range(count)]
        self.processes: list[Optional[subprocess.Popen[bytes]]] = [None] * count
        self.up = [False] * count
        self.kills = 0
        self.restarts = 0
        self._logDir = logDir
        #: (time, number of backends up) at every change.
        self.timeline: list[tuple[float, int]] = []

    def start(self, i: int) -> subprocess.Popen[bytes]:
        log = open(self._logDir / f"backend-{i}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, __file__, "--backend", str(self.ports[i])],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes[i] = process
        return process

    def markUp(self, i: int) -> None:
        self.up[i] = True
        self.timeline.append((time.monotonic(), sum(self.up)))

    def kill(self, i: int) -> None:
        self.up[i] = False
        self.timeline.append((time.monotonic(), sum(self.up)))
        process = self.processes[i]
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        self.processes[i] = None
        self.kills += 1

    def stopAll(self) -> None:
        for i, process in enumerate(self.processes):
            _stop(process, signal.SIGKILL)
            self.processes[i] = None

    def minimumUp(self, start: float, end: float) -> int:
        """
        The fewest backends up at any moment in C{[start, end]}.
        """
        count = 0
        for t, n in self.timeline:
            if t <= start:
                count = n
        lowest = count
        for t, n in self.timeline:
            if start < t <= end:
                lowest = min(lowest, n)
        return lowest


def _writeConfig(directory: Path, proxyPort: int, backendPorts: list[int]) -> Path:
    servers = "\n".join(f"    127.0.0.1:{port}" for port in backendPorts)
    path = directory / "soak.ini"
    path.write_text(
        f"""\
[lbproxy]
listen = tcp:{proxyPort}:interface=127.0.0.1
access_log = off

[upstream:app]
servers =
{servers}
max_fails = 1
fail_timeout = 1s
connect_timeout = 1s
read_timeout = 5s
next_upstream_tries = 0
keepalive = {KEEPALIVE}

[vhost:app]
server_names = soak.example
default = yes
upstream = app
"""
    )
    return path


def _twistd() -> str:
    candidate = Path(sys.executable).parent / "twistd"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("twistd")
    if found is None:
        raise SystemExit("twistd not found next to this Python or on PATH")
    return found


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
    from twisted.internet.task import LoopingCall, deferLater
    from twisted.web.client import Agent, HTTPConnectionPool, readBody
    from twisted.web.http_headers import Headers

    rng = random.Random(args.seed)
    directory = Path(tempfile.mkdtemp(prefix="lbproxy-soak-"))
    backends = Backends(args.backends, directory)
    proxy: Optional[subprocess.Popen[bytes]] = None
    try:
        for i in range(args.backends):
            _waitListening(backends.ports[i], backends.start(i), 20)
            backends.markUp(i)
        proxyPort = _freePort()
        config = _writeConfig(directory, proxyPort, backends.ports)
        env = dict(os.environ)
        if args.source != "checkout":
            # Run lbproxy from a commit exported next to the config, ahead
            # of the editable install on the path.
            export = directory / "source"
            export.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.source, "src"],
                check=True,
                capture_output=True,
                timeout=60,
            ).stdout
            subprocess.run(
                ["tar", "-x", "-C", str(export)], input=archive, check=True, timeout=60
            )
            env["PYTHONPATH"] = str(export / "src")
        proxyLog = open(directory / "proxy.log", "ab")
        proxy = subprocess.Popen(
            [_twistd(), "-n", "--pidfile=", "lbproxy", "--config", str(config)],
            stdout=proxyLog,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=env,
        )
        proxyLog.close()
        _waitListening(proxyPort, proxy, 30)
        proxyPid = proxy.pid
        figures: dict[str, Any] = {
            "source": args.source,
            "backends": args.backends,
            "concurrency": args.concurrency,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "kill_every_s": args.kill_every,
            "down_for_s": args.down_for,
            "rss_kib_idle_start": _rss(proxyPid),
            "fds_idle_start": _fds(proxyPid),
        }

        url = b"http://127.0.0.1:%d/soak" % proxyPort
        headers = Headers({b"host": [b"soak.example"]})
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = args.concurrency
        pool.retryAutomatically = False
        agent = Agent(reactor, pool=pool)
        statuses: Counter[str] = Counter()
        # (start, end, ok) of every request of the soak phase.
        results: list[tuple[float, float, bool]] = []
        phase = {"name": "warmup"}
        begin = time.monotonic()
        soakStart = begin + args.warmup
        soakEnd = soakStart + args.duration

        @inlineCallbacks
        def worker() -> Any:
            while time.monotonic() < soakEnd:
                started = time.monotonic()
                try:
                    d = agent.request(b"GET", url, headers)
                    d.addTimeout(10, reactor)
                    response = yield d
                    body = readBody(response)
                    body.addTimeout(10, reactor)
                    yield body
                    status = str(response.code)
                    ok = 200 <= response.code < 300
                except Exception as e:
                    status = type(e).__name__
                    ok = False
                if phase["name"] == "soak":
                    statuses[status] += 1
                    results.append((started, time.monotonic(), ok))

        @inlineCallbacks
        def restart(i: int) -> Any:
            process = backends.start(i)
            for _ in range(200):
                if process.poll() is not None:
                    break
                if _listening(backends.ports[i]):
                    backends.markUp(i)
                    backends.restarts += 1
                    return
                yield deferLater(reactor, 0.05, lambda: None)
            _stop(process, signal.SIGKILL)

        def killOne() -> None:
            if phase["name"] != "soak" or time.monotonic() > soakEnd - args.down_for:
                return
            live = [i for i, up in enumerate(backends.up) if up]
            if len(live) < 2:
                return
            victim = rng.choice(live)
            backends.kill(victim)
            reactor.callLater(args.down_for, restart, victim)  # type: ignore[attr-defined]

        def measure(prefix: str) -> None:
            figures[f"rss_kib_{prefix}"] = _rss(proxyPid)
            figures[f"fds_{prefix}"] = _fds(proxyPid)

        def startSoak() -> None:
            measure("after_warmup")
            phase["name"] = "soak"

        killer = LoopingCall(killOne)
        killer.clock = reactor

        @inlineCallbacks
        def run() -> Any:
            reactor.callLater(args.warmup, startSoak)  # type: ignore[attr-defined]
            killer.start(args.kill_every, now=False)
            workers = [worker() for _ in range(args.concurrency)]
            yield DeferredList(workers)
            measure("end_under_load")
            phase["name"] = "done"
            if killer.running:
                killer.stop()
            yield pool.closeCachedConnections()
            # Let the proxy see the clients go, boundedly.
            for _ in range(50):
                if _fds(proxyPid) <= figures["fds_end_under_load"] - args.concurrency:
                    break
                yield deferLater(reactor, 0.1, lambda: None)
            measure("idle_end")
            remote = _remotePorts(proxyPid)
            figures["idle_end_backend_connections"] = sum(
                remote[port] for port in backends.ports
            )
            figures["idle_end_other_connections"] = sum(remote.values()) - (
                figures["idle_end_backend_connections"]
            )

        done: Deferred[Any] = run()
        failure: list[Any] = []
        done.addErrback(failure.append)
        done.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
        guard = reactor.callLater(  # type: ignore[attr-defined]
            args.warmup + args.duration + 60, reactor.stop  # type: ignore[attr-defined]
        )
        reactor.run()  # type: ignore[attr-defined]
        if guard.active():
            guard.cancel()
        if failure:
            failure[0].raiseException()

        sent = len(results)
        failedWhileUp = sum(
            1 for s, e, ok in results if not ok and backends.minimumUp(s, e) >= 1
        )
        figures.update(
            requests_sent=sent,
            requests_per_second=round(sent / args.duration, 1),
            statuses=dict(statuses),
            non_2xx_or_failed=sum(1 for _, _, ok in results if not ok),
            non_2xx_while_a_backend_was_up=failedWhileUp,
            kills=backends.kills,
            restarts=backends.restarts,
            proxy_alive_at_end=proxy.poll() is None,
        )
        rssGrowth = (
            figures["rss_kib_end_under_load"] - figures["rss_kib_after_warmup"]
        ) / figures["rss_kib_after_warmup"]
        figures["rss_growth_percent"] = round(100 * rssGrowth, 2)
        figures["fd_growth_idle"] = figures["fds_idle_end"] - figures["fds_idle_start"]
        # What the idle growth is once the pooled backend connections (at
        # most KEEPALIVE per backend, kept on purpose) are set aside.
        figures["fd_growth_idle_unexplained"] = (
            figures["fd_growth_idle"] - figures["idle_end_backend_connections"]
        )
        figures["fd_growth_under_load"] = (
            figures["fds_end_under_load"] - figures["fds_after_warmup"]
        )
        slack = args.backends * KEEPALIVE
        figures["targets_met"] = {
            "no_non_2xx_while_up": failedWhileUp == 0,
            "rss_growth_under_10_percent": rssGrowth < 0.10,
            "no_fd_leak": figures["fd_growth_idle_unexplained"] <= 0
            and figures["idle_end_backend_connections"] <= slack
            and figures["idle_end_other_connections"] == 0
            and figures["fd_growth_under_load"] <= slack,
            "proxy_alive": figures["proxy_alive_at_end"],
        }
        figures["fd_slack_pooled_backend_connections"] = slack
        return figures
    finally:
        _stop(proxy)
        backends.stopAll()
        shutil.rmtree(directory, ignore_errors=True)


def _report(figures: dict[str, Any]) -> str:
    lines = [
        f"lbproxy fault-injection soak (lbproxy from: {figures['source']})",
        f"  backends {figures['backends']}, concurrency {figures['concurrency']}, "
        f"warm-up {figures['warmup_s']:g} s, soak {figures['duration_s']:g} s, "
        f"a kill every {figures['kill_every_s']:g} s, down {figures['down_for_s']:g} s",
        f"  kills / restarts:                     {figures['kills']} / {figures['restarts']}",
        f"  requests sent:                        {figures['requests_sent']} "
        f"({figures['requests_per_second']}/s)",
        f"  answers:                              {figures['statuses']}",
        f"  non-2xx or failed:                    {figures['non_2xx_or_failed']}",
        f"  non-2xx while >= 1 backend was up:    "
        f"{figures['non_2xx_while_a_backend_was_up']} (target 0)",
        f"  proxy RSS after warm-up / at end:     {figures['rss_kib_after_warmup']} KiB / "
        f"{figures['rss_kib_end_under_load']} KiB ({figures['rss_growth_percent']:+.2f}%, "
        f"target < 10%)",
        f"  proxy fds idle at start / idle at end: {figures['fds_idle_start']} / "
        f"{figures['fds_idle_end']} (at the end: {figures['idle_end_backend_connections']} "
        f"pooled backend connections, {figures['idle_end_other_connections']} other "
        f"connections; growth not explained by the pool: "
        f"{figures['fd_growth_idle_unexplained']})",
        f"  proxy fds after warm-up / end (load): {figures['fds_after_warmup']} / "
        f"{figures['fds_end_under_load']} (slack for pooled backend connections: "
        f"{figures['fd_slack_pooled_backend_connections']})",
        f"  proxy alive at end:                   {figures['proxy_alive_at_end']}",
        f"  targets met:                          {figures['targets_met']}",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backends", type=int, default=3, choices=[2, 3])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--kill-every", type=float, default=3.0)
    parser.add_argument("--down-for", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument(
        "--source",
        default="checkout",
        help="run lbproxy as installed (checkout, the default) or from a git "
        "commit such as HEAD",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.backend is not None:
        runBackend(args.backend)
        return 0
    if args.warmup + args.duration > MAX_RUN:
        parser.error(f"--warmup + --duration must be at most {MAX_RUN:g} s")
    if not 1 <= args.concurrency <= 256:
        parser.error("--concurrency must be between 1 and 256")
    # Agent's pooled connections trip a deprecation warning in readBody.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    figures = soak(args)
    print(_report(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(figures["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
