"""
CPU cost of lbproxy's own code per proxied request, without sockets.

A client connection and a backend connection are in-memory transports
driven by hand (the same set-up as tests/test_proxy.py), so the figure is
lbproxy's and Twisted's Python work per request, free of the kernel, the
network and whatever else the machine is doing.  It complements
benchmarks/run.py, whose req/s include all of those.

    python benchmarks/bench_hotpath.py            # 20,000 requests, 5 runs
    PYTHONPATH=/other/checkout/src python benchmarks/bench_hotpath.py
    python benchmarks/bench_hotpath.py --access-log  # each log format
    python benchmarks/bench_hotpath.py --caps        # max_conns, eject_on, retry_budget
    python benchmarks/bench_hotpath.py --limits      # limit_rate, limit_conn
    python benchmarks/bench_hotpath.py --compare /other/checkout/src
    python benchmarks/bench_hotpath.py --metrics     # the counters alone
    python benchmarks/bench_hotpath.py --scrape      # one /metrics answer

Prints the median µs per request over the runs (keep-alive client, pooled
backend connection, a 6-byte response with Content-Length).  With
C{--access-log}, the runs go round the access log off and each
C{access_log_format} (C{combined}, C{upstream}, C{json}), each writing to
C{/dev/null} opened as lbproxy opens an access log (lines written in
batches of 64 KiB; the fake clock's 1 s flush never comes), and it prints each one's median and what it adds to
the run without a log, then the cost of writing one line to
C{/dev/null} and to a file in a temporary directory, in batches and line
by line.

With C{--caps}, the runs go round backend protection off and on: a
C{max_conns} the backend never reaches (the queue empty), C{max_conns=1}
(the backend at its cap during every request, the queue empty, as with
one client), and C{max_conns=1} with C{eject_on = 5xx} and
C{retry_budget = 20%} as well; each one's median, and what it adds to the
run without.

With C{--limits}, the runs go round no limits, C{limit_rate} (never
reached), C{limit_conn} (never reached) and both, per client address,
timed in CPU time (C{time.process_time}: other processes on a busy
machine do not add to it), and it prints each one's median, what it adds
to the run without limits, then what checking each alone costs per
request (the least of 5 timings, which load on the machine cannot
lower).

With C{--compare SRC}, the runs alternate, each in a process of its own,
between this checkout's lbproxy and the one in C{SRC} (a checkout of
another commit, say the one before a change: C{git worktree add
/tmp/before COMMIT}), and it prints each one's least and median CPU time
(C{time.process_time}, which other processes on the machine do not add to)
per request and the differences.  With C{--metrics}, it times what the
metrics counters do per request (L{metricsWork}), alone, the best of 5
timings.  With C{--scrape}, it times one C{/metrics} answer (the
snapshot and its exposition) of a configuration of 4 vhosts and 4
upstreams of 10 backends each, the best of 60, in CPU time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

import lbproxy
from lbproxy import (
    Backend,
    Pool,
    ProxySite,
    UpstreamResource,
    VirtualHost,
    VirtualHostResource,
)

_REQUEST = (
    b"GET /tiny HTTP/1.1\r\nHost: app.example\r\nUser-Agent: bench\r\n"
    b"Accept: */*\r\n\r\n"
)
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 24 Nov 2026 03:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n"
    b"\r\nhello\n"
)


#: The C{--caps} configurations: a name, the backend's C{max_conns} and
#: the pool's options.
_CAPS: list[tuple[str, Optional[int], dict[str, Any]]] = [
    ("off", None, {}),
    ("max_conns=1000", 1000, {}),
    ("max_conns=1", 1, {}),
    (
        "max_conns=1, eject_on, retry_budget",
        1,
        {"ejectOn": range(500, 600), "retryBudget": 0.2},
    ),
]


def run(
    count: int,
    logFormat: Optional[str] = None,
    maxConns: Optional[int] = None,
    poolOptions: Optional[dict[str, Any]] = None,
    limits: str = "",
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """
    Proxy C{count} requests; return the seconds per request.

    @param logFormat: the C{access_log_format}, or L{None} for no access
        log.
    @param maxConns: the backend's C{max_conns}.
    @param poolOptions: keyword arguments of the L{Pool}.
    @param limits: the vhost's limits (see L{buildLimits}): C{""} for
        none, C{"rate"}, C{"conn"} or C{"rate+conn"}.
    @param timer: the clock timed by: the wall clock, or
        C{time.process_time} (the process's CPU time, which other
        processes on a busy machine do not add to).
    """
    reactor = MemoryReactorClock()
    pool = _pool(reactor, maxConns, poolOptions)
    requestLimits = buildLimits(limits, reactor)
    vhost = VirtualHost(
        "app",
        ["app.example"],
        {b"/": UpstreamResource(pool)},
        # Left out when there are none, so that the default run measures a
        # checkout that has no limits too (--compare).
        **({} if requestLimits is None else {"limits": requestLimits}),
    )
    site = ProxySite(
        VirtualHostResource([vhost], vhost),
        reactor=reactor,
        accessLogFormat=logFormat or "combined",
    )
    site.accessLog = None if logFormat is None else ProxySite.openAccessLog(os.devnull, reactor)
    peer = IPv4Address("TCP", "192.0.2.1", 4321)
    client = site.buildProtocol(peer)
    clientTransport = StringTransport(peerAddress=peer)
    client.makeConnection(clientTransport)

    client.dataReceived(_REQUEST)
    _, port, factory, _, _ = reactor.tcpClients[0]
    backend = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    backendTransport = StringTransport()
    backend.makeConnection(backendTransport)
    backend.dataReceived(_RESPONSE)

    started = timer()
    for _ in range(count):
        clientTransport.clear()
        backendTransport.clear()
        client.dataReceived(_REQUEST)
        backend.dataReceived(_RESPONSE)
    elapsed = timer() - started
    if not clientTransport.value().endswith(b"hello\n"):
        raise SystemExit("the proxy did not answer: " + repr(clientTransport.value()[:200]))
    if len(reactor.tcpClients) != 1:
        raise SystemExit("the backend connection was not reused")
    if site.accessLog is not None:
        site.accessLog.close()
    return elapsed / count


def _pool(
    reactor: Any, maxConns: Optional[int], poolOptions: Optional[dict[str, Any]]
) -> Pool:
    """
    A pool of one backend with C{max_conns} (left out when L{None}, so that
    the default run measures a checkout that has no caps too).
    """
    backendOptions = {} if maxConns is None else {"maxConns": maxConns}
    return Pool(
        "app",
        [Backend("127.0.0.1", 9000, **backendOptions)],
        reactor=reactor,
        **(poolOptions or {}),
    )


def poolCost(
    maxConns: Optional[int], poolOptions: dict[str, Any], count: int
) -> float:
    """
    The seconds the pool's share of one request takes: what the exchange
    asks of it (is anyone queued, the budget's count, the pick) and the
    accounting around the exchange (L{Pool.requestStarted},
    L{Pool.requestFinished} with a 200), the least of 5 timings of
    C{count} requests, which load on the machine cannot lower.
    """
    from lbproxy import Outcome

    pool = _pool(MemoryReactorClock(), maxConns, poolOptions)
    nothing: frozenset[Any] = frozenset()
    success = Outcome.SUCCESS

    def oneRequest(pool: Pool) -> None:
        if pool.queue.waiting:
            raise AssertionError("nothing should wait")
        budget = pool.budget
        if budget is not None:
            budget.request(1.0)
        backend = pool.pick(None, nothing)
        assert backend is not None
        pool.requestStarted(backend, None)
        pool.requestFinished(backend, None, success, 0.001, 200)

    return leastTime(oneRequest, pool, count)


def buildLimits(which: str, reactor: Any) -> Any:
    """
    The limits of the benchmark's vhost, per client address, never
    reached (the figure is what checking them costs, not refusals): C{""}
    for none, C{"rate"} (C{limit_rate = 1000000/s}, C{limit_burst =
    1000000}: the fake clock stands still, so the burst must hold every
    request of a run), C{"conn"} (C{limit_conn = 1000}) or both,
    C{"rate+conn"}.
    """
    if not which:
        return None
    # Imported here, so that the other runs measure a checkout without
    # limits too (--compare).
    from lbproxy import (
        ConcurrencyLimiter,
        RateLimiter,
        RequestLimits,
        limitKeyFunction,
    )

    kinds = set(which.split("+"))
    return RequestLimits(
        limitKeyFunction("remote_addr"),
        reactor,
        rate=RateLimiter(1e6, 1e6, reactor) if "rate" in kinds else None,
        conn=ConcurrencyLimiter(1000) if "conn" in kinds else None,
    )


def admitCost(which: str, count: int) -> float:
    """
    The CPU seconds that checking the limits C{which} (see L{buildLimits})
    takes for one request, and giving back its place in flight when it is
    over: the least of 5 timings of C{count} checks of a request from one
    client, as C{timeit} reports.
    """
    from lbproxy.testing import makeRequest

    limits = buildLimits(which, MemoryReactorClock())
    assert limits is not None
    request = makeRequest()

    def check(request: Any) -> None:
        limits.admit(request, None)
        # What the request's finish does.
        request._callDone()

    return leastTime(check, request, count, time.process_time)


def leastTime(
    call: Callable[[Any], object],
    argument: Any,
    count: int,
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """
    The seconds one C{call(argument)} takes: the least of 5 timings of
    C{count} calls, as C{timeit} reports (the call looked up once, outside
    the timed loop).
    """
    best = float("inf")
    for _ in range(5):
        started = timer()
        for _ in range(count):
            call(argument)
        best = min(best, timer() - started)
    return best / count


def logLineCost(logFormat: str, count: int) -> float:
    """
    The seconds that writing one access log line in C{logFormat} takes
    (formatting and the write to C{/dev/null}), for a request proxied
    once: the least of 5 timings of C{count} lines, as C{timeit} reports,
    which load on the machine cannot lower.
    """
    reactor = MemoryReactorClock()
    pool = Pool("app", [Backend("127.0.0.1", 9000)], reactor=reactor)
    vhost = VirtualHost("app", ["app.example"], {b"/": UpstreamResource(pool)})
    site = ProxySite(
        VirtualHostResource([vhost], vhost), reactor=reactor, accessLogFormat=logFormat
    )
    site.accessLog = None
    logged: list[Any] = []
    site.log = logged.append  # type: ignore[method-assign]
    peer = IPv4Address("TCP", "192.0.2.1", 4321)
    client = site.buildProtocol(peer)
    client.makeConnection(StringTransport(peerAddress=peer))
    client.dataReceived(_REQUEST)
    _, port, factory, _, _ = reactor.tcpClients[0]
    backend = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    backend.makeConnection(StringTransport())
    backend.dataReceived(_RESPONSE)
    (request,) = logged
    del site.log
    site.accessLog = ProxySite.openAccessLog(os.devnull, reactor)
    cost = leastTime(site.log, request, count)
    site.accessLog.close()
    return cost


def writeCost(path: str, batched: bool, count: int) -> float:
    """
    The seconds that handing one 90-byte access log line to the file at
    C{path} takes: written in batches by L{lbproxy._logbuffer.BufferedLog}
    (as lbproxy does), or line by line through a line-buffered text file
    (one C{write()} per line, as lbproxy did before); the least of 5
    timings of C{count} lines.
    """
    from twisted.internet.task import Clock

    from lbproxy._logbuffer import BufferedLog

    line = (
        '192.0.2.1 - - [02/Dec/2026:04:39:00 +0000] "GET /tiny HTTP/1.1" 200 6 '
        '"-" "bench"\n'
    )
    log: Any = (
        BufferedLog.open(path, Clock())
        if batched
        else open(path, "a", buffering=1, encoding="utf-8")
    )
    cost = leastTime(log.write, line, count)
    log.close()
    return cost


def metricsWork(count: int) -> float:
    """
    The seconds that what the metrics counters do for one proxied request
    takes, alone (the best of 5 timings of C{count} requests, in CPU
    time, less that of a call doing what lbproxy did there before): the clock
    read when the request is made (L{lbproxy._site.TimedProxyRequest}),
    the vhost's counts handed to the request, the retry test of the
    exchange, the backend's status class and response time, the clock
    read, status class and duration of the request when it ends
    (L{ProxySite.log}).  The same statements as lbproxy's, on the same
    kinds of objects, for a request answered 200 by the first backend.
    """
    from lbproxy._counters import RequestCounts

    reactor = MemoryReactorClock()
    backend = Backend("127.0.0.1", 9000)
    pool = Pool("app", [backend], reactor=reactor)
    vhostCounts = RequestCounts()
    unrouted = RequestCounts()

    class Request:
        code = 200
        received: Optional[float] = None
        requestCounts: Any = None

    def oneRequest(request: Any) -> None:
        request.received = reactor.seconds()
        request.requestCounts = vhostCounts
        tried: set[Any] = set()
        if tried:
            pool.retries += 1
        took = reactor.seconds() - 0.0
        code = 200
        backend.responseClasses[code // 100] += 1
        if code != 101:
            backend.responseTimes.observe(took)
        now = reactor.seconds()
        counts = request.requestCounts or unrouted
        counts.classes[request.code // 100] += 1
        received = request.received
        if received is not None:
            counts.durations.observe(now - received)

    def nothing(request: Any) -> None:
        tried: set[Any] = set()
        took = reactor.seconds() - 0.0
        del tried, took

    request = Request()
    # What the request's work is measured against: the call, and what
    # lbproxy did before at the same places (the set of tried backends,
    # the exchange's clock read).
    cpu = time.process_time
    return leastTime(oneRequest, request, count, cpu) - leastTime(nothing, request, count, cpu)


def scrapeCost() -> tuple[float, int, int]:
    """
    The CPU seconds one C{/metrics} answer takes (the snapshot, then its
    exposition), the best of 60, for 4 vhosts and 4 upstreams of 10
    backends each; with the size of the answer and its number of samples.
    """
    from lbproxy import LoadBalancerService, parseConfigText
    from lbproxy._metrics import metricsText

    sections = [
        f"[upstream:u{u}]\nservers =\n"
        + "".join(f"    127.0.0.1:{9000 + u * 100 + b}\n" for b in range(10))
        + f"[vhost:v{u}]\nserver_names = v{u}.test\nupstream = u{u}\n"
        for u in range(4)
    ]
    config = parseConfigText(
        "[lbproxy]\nlisten = tcp:8080\naccess_log = off\n" + "".join(sections)
    )
    service = LoadBalancerService(config, MemoryReactorClock())
    best = float("inf")
    for _ in range(60):
        started = time.process_time()
        body, _ = metricsText(service.snapshot())
        best = min(best, time.process_time() - started)
    samples = sum(1 for line in body.splitlines() if not line.startswith(b"#"))
    return best, len(body), samples


def compare(other: str, runs: int, requests: int) -> None:
    """
    Alternate C{runs} runs of C{requests} requests of this checkout's
    lbproxy and of the one in the directory C{other}, each in a process of
    its own (which goes first changing every time), and print the CPU time
    per request of each (least and median) and their differences.
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(lbproxy.__file__)))
    trees = {"this": here, "other": os.path.abspath(other)}
    results: dict[str, list[float]] = {name: [] for name in trees}
    for index in range(runs):
        # Each goes first every other time: the one that runs second does
        # not always get whatever the first leaves (a warmer cache).
        order = list(trees.items())
        for name, tree in order if index % 2 else order[::-1]:
            output = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child",
                 "--requests", str(requests)],
                env={**os.environ, "PYTHONPATH": tree},
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[name].append(float(output))
    print(
        f"{sys.implementation.name} {sys.version.split()[0]}, {runs} runs of "
        f"{requests} requests each, alternating, CPU µs per request:"
    )
    for name, tree in trees.items():
        figures = results[name]
        print(
            f"  {name:5} {tree}: least {min(figures):.2f}, median "
            f"{statistics.median(figures):.2f}"
        )
    least = min(results["this"]) - min(results["other"])
    median = statistics.median(results["this"]) - statistics.median(results["other"])
    print(f"  this - other: least {least:+.2f} µs, median {median:+.2f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="measure the access log off and in each format, interleaved",
    )
    parser.add_argument(
        "--caps",
        action="store_true",
        help="measure max_conns, eject_on and retry_budget off and on, interleaved",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="measure no limits, limit_rate, limit_conn and both, interleaved",
    )
    parser.add_argument(
        "--compare",
        metavar="SRC",
        help="alternate runs with the lbproxy of another checkout's src",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="time what the metrics counters do per request, alone",
    )
    parser.add_argument(
        "--scrape",
        action="store_true",
        help="time one /metrics answer for 40 backends",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(run(options.requests, timer=time.process_time) * 1e6)
        return
    if options.compare:
        compare(options.compare, options.runs, options.requests)
        return
    if options.scrape:
        cost, size, samples = scrapeCost()
        print(
            f"{sys.implementation.name} {sys.version.split()[0]}: one /metrics "
            f"answer of {samples} samples ({size} bytes) for 40 backends, 4 "
            f"vhosts (best of 60): {cost * 1e3:.2f} ms of CPU"
        )
        return
    if options.metrics:
        cost = metricsWork(options.requests * 10) * 1e6
        print(
            f"{sys.implementation.name} {sys.version.split()[0]}: the metrics "
            f"counters' work per request alone (best of 5): {cost:.3f} µs"
        )
        return
    if options.limits:
        kinds = ["", "rate", "conn", "rate+conn"]
        byKind: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(options.runs):
            for k in kinds:
                byKind[k].append(
                    run(options.requests, limits=k, timer=time.process_time) * 1e6
                )
        base = statistics.median(byKind[""])
        print(
            f"{sys.implementation.name} {sys.version.split()[0]}, CPU time, "
            f"median of {options.runs} runs:"
        )
        for k in kinds:
            median = statistics.median(byKind[k])
            print(
                f"  {k or 'no limits':9} {median:6.2f} µs per request "
                f"(+{median - base:.2f} µs over no limits)"
            )
        for k in kinds[1:]:
            cost = admitCost(k, options.requests) * 1e6
            print(f"  checking {k:9} alone (CPU time, best of 5): {cost:.3f} µs")
        return
    if options.caps:
        byCaps: dict[str, list[float]] = {name: [] for name, _, _ in _CAPS}
        for _ in range(options.runs):
            for name, maxConns, poolOptions in _CAPS:
                byCaps[name].append(
                    run(options.requests, None, maxConns, poolOptions) * 1e6
                )
        base = statistics.median(byCaps["off"])
        print(f"{sys.implementation.name} {sys.version.split()[0]}, median of {options.runs} runs:")
        for name, _, _ in _CAPS:
            median = statistics.median(byCaps[name])
            print(
                f"  {name:36} {median:6.2f} µs per request "
                f"({median - base:+.2f} µs over off)"
            )
        print(f"the pool's share of a request alone (best of {options.runs} × 5, interleaved):")
        costs = {name: float("inf") for name, _, _ in _CAPS}
        for _ in range(options.runs):
            for name, maxConns, poolOptions in _CAPS:
                cost = poolCost(maxConns, poolOptions, options.requests) * 1e6
                costs[name] = min(costs[name], cost)
        for name, _, _ in _CAPS:
            print(
                f"  {name:36} {costs[name]:6.3f} µs "
                f"({costs[name] - costs['off']:+.3f} µs over off)"
            )
        return
    if options.access_log:
        formats: list[Optional[str]] = [None, "combined", "upstream", "json"]
        byFormat: dict[Optional[str], list[float]] = {f: [] for f in formats}
        for _ in range(options.runs):
            for f in formats:
                byFormat[f].append(run(options.requests, f) * 1e6)
        base = statistics.median(byFormat[None])
        print(f"{sys.implementation.name} {sys.version.split()[0]}, median of {options.runs} runs:")
        for f in formats:
            median = statistics.median(byFormat[f])
            print(
                f"  {f or 'off':9} {median:6.2f} µs per request "
                f"(+{median - base:.2f} µs over no log)"
            )
        for f in formats[1:]:
            assert f is not None
            cost = logLineCost(f, options.requests) * 1e6
            print(f"  one {f} line alone (best of 5): {cost:.2f} µs")
        with tempfile.TemporaryDirectory() as directory:
            for name, path in [
                ("/dev/null", os.devnull),
                ("a file", os.path.join(directory, "access.log")),
            ]:
                for batched in (False, True):
                    cost = writeCost(path, batched, options.requests * 10) * 1e6
                    how = "in 64 KiB batches" if batched else "line by line    "
                    print(f"  writing a line to {name:9} {how} (best of 5): {cost:.3f} µs")
        return
    results = [run(options.requests) * 1e6 for _ in range(options.runs)]
    print(
        f"lbproxy {lbproxy.__file__.rsplit('/', 2)[0]} on "
        f"{sys.implementation.name} {sys.version.split()[0]}: "
        f"{statistics.median(results):.1f} µs per request "
        f"(runs: {', '.join(f'{r:.1f}' for r in results)})"
    )


if __name__ == "__main__":
    main()
