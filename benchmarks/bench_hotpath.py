"""
CPU cost of lbproxy's own code per proxied request, without sockets.

A client connection and a backend connection are in-memory transports
driven by hand (the same set-up as tests/test_proxy.py), so the figure is
lbproxy's and Twisted's Python work per request, free of the kernel, the
network and whatever else the machine is doing.  It complements
benchmarks/run.py, whose req/s include all of those.

    python benchmarks/bench_hotpath.py            # 20,000 requests, 5 runs
    PYTHONPATH=/other/checkout/src python benchmarks/bench_hotpath.py

Prints the median µs per request over the runs (keep-alive client, pooled
backend connection, a 6-byte response with Content-Length).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

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


def run(count: int) -> float:
    """
    Proxy C{count} requests; return the seconds per request.
    """
    reactor = MemoryReactorClock()
    pool = Pool("app", [Backend("127.0.0.1", 9000)], reactor=reactor)
    vhost = VirtualHost("app", ["app.example"], {b"/": UpstreamResource(pool)})
    site = ProxySite(VirtualHostResource([vhost], vhost), reactor=reactor)
    site.accessLog = None
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

    started = time.perf_counter()
    for _ in range(count):
        clientTransport.clear()
        backendTransport.clear()
        client.dataReceived(_REQUEST)
        backend.dataReceived(_RESPONSE)
    elapsed = time.perf_counter() - started
    if not clientTransport.value().endswith(b"hello\n"):
        raise SystemExit("the proxy did not answer: " + repr(clientTransport.value()[:200]))
    if len(reactor.tcpClients) != 1:
        raise SystemExit("the backend connection was not reused")
    return elapsed / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    results = [run(options.requests) * 1e6 for _ in range(options.runs)]
    print(
        f"lbproxy {lbproxy.__file__.rsplit('/', 2)[0]} on "
        f"{sys.implementation.name} {sys.version.split()[0]}: "
        f"{statistics.median(results):.1f} µs per request "
        f"(runs: {', '.join(f'{r:.1f}' for r in results)})"
    )


if __name__ == "__main__":
    main()
