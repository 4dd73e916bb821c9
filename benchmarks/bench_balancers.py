"""
The cost of balancing one request, for every built-in balancer.

One request is what the proxy does per request: C{pick}, then
C{requestStarted}, then C{requestFinished}.  Each balancer is measured with
2, 16 and 256 backends of mixed weights (1, 2, 3, 1, 2, 3, ...), and again
with every backend of a different weight (1, 2, 3, ..., n: the worst case
for round robin's weight classes), over real
L{twisted.web.server.Request} objects from many clients (different
addresses, C{X-User} headers, and for half of them a sticky cookie), and the
best of several rounds is reported in microseconds per request.

Run from the checkout::

    PYTHONPATH=src python benchmarks/bench_balancers.py [--check] [--json]

C{--check} exits with status 1 when a balancer takes 20 µs or more per
request at 256 backends, in either table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from random import Random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from lbproxy import Backend, Outcome
from lbproxy.balancers import buildBalancer
from lbproxy.balancers._builtins import BUILTINS

SIZES = (2, 16, 256)
OPTIONS = {"consistent_hash": {"key": "header:X-User"}}
LIMIT_US = 20.0


def makeBackends(count: int, distinct: bool = False) -> list[Backend]:
    backends = []
    for i in range(count):
        weight = i + 1 if distinct else i % 3 + 1
        backend = Backend(f"10.{i // 250}.{i % 250}.1", 8080, weight=weight)
        backend.id = f"{i:016x}"
        backends.append(backend)
    return backends


def makeRequests(backends: list[Backend], count: int = 1024) -> list[Request]:
    rng = Random(7)
    requests = []
    for i in range(count):
        channel = DummyChannel()
        client = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.9"
        channel.transport = DummyChannel.TCP(IPv4Address("TCP", client, 50000))
        request = Request(channel)
        request.method = b"GET"
        request.uri = b"/items/%d?page=1" % i
        request.args = {b"page": [b"1"]}
        request.requestHeaders.setRawHeaders(b"x-user", [b"user-%d" % i])
        if i % 2:
            pinned = backends[rng.randrange(len(backends))]
            request.received_cookies[b"lbproxy_sticky"] = pinned.id.encode()
        requests.append(request)
    return requests


def measure(
    name: str,
    size: int,
    distinct: bool = False,
    rounds: int = 5,
    perRound: int = 20000,
) -> float:
    """
    Microseconds per request (pick, start, finish) for balancer C{name}
    with C{size} backends (of C{distinct} weights): the best of C{rounds}.
    """
    backends = makeBackends(size, distinct)
    balancer: Any = buildBalancer(name, OPTIONS.get(name, {}), Random(1))
    balancer.backendsChanged(tuple(backends))
    requests = makeRequests(backends)
    mask = len(requests) - 1
    none: frozenset[Backend] = frozenset()
    success = Outcome.SUCCESS
    pick = balancer.pick
    started = balancer.requestStarted
    finished = balancer.requestFinished
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(perRound):
            request = requests[i & mask]
            backend = pick(request, none)
            started(backend, request)
            finished(backend, request, success, 0.002)
        best = min(best, time.perf_counter() - start)
    return best / perRound * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail over 20 µs")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    names = sorted(f.name for f in BUILTINS)
    tables = {
        kind: {
            name: {size: measure(name, size, kind == "distinct") for size in SIZES}
            for name in names
        }
        for kind in ("mixed", "distinct")
    }
    if args.json:
        print(json.dumps(tables, indent=2))
    else:
        print(
            f"{platform.python_implementation()} {platform.python_version()}: "
            "µs per request (pick + requestStarted + requestFinished)"
        )
        for kind, title in [
            ("mixed", "weights 1, 2, 3, 1, 2, 3, ..."),
            ("distinct", "weights 1, 2, 3, ..., n (all different)"),
        ]:
            results = tables[kind]
            print()
            print(title)
            header = f"{'balancer':<16}" + "".join(f"{n:>10}" for n in SIZES)
            print(header + f"{'256/2':>10}")
            print("-" * (len(header) + 10))
            for name in names:
                row = results[name]
                cells = "".join(f"{row[size]:>10.2f}" for size in SIZES)
                print(f"{name:<16}{cells}{row[SIZES[-1]] / row[SIZES[0]]:>10.2f}")
    slow = sorted(
        {
            name
            for results in tables.values()
            for name in names
            if results[name][SIZES[-1]] >= LIMIT_US
        }
    )
    if args.check and slow:
        print(f"over {LIMIT_US} µs at {SIZES[-1]} backends: {', '.join(slow)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
