"""
What opening one backend connection costs the proxy's thread: the time
L{DirectTCPEndpoint.connect} takes to a listener on 127.0.0.1 (the
connection made and its protocol connected, all in that one call).

    python benchmarks/connect.py                  # 5 rounds of 2,000 connects
    git show 5103106:src/lbproxy/_directtcp.py > /tmp/before.py
    taskset -c 0 python benchmarks/connect.py --against /tmp/before.py --rounds 10

With C{--against}, another version of C{lbproxy/_directtcp.py} (a file,
loaded as a module of its own) is measured too, the two alternating round
by round in one process, and the ratio of each round's medians is given:
how a change to the endpoint moves its cost.  Pin the process to one CPU
(C{taskset -c 0}) for steadier figures.

Each connection is accepted and closed by the listener between two
measured calls, outside the time measured, and the proxy's side of all of
a round's connections is closed at the end of the round, so that no round
sees more open sockets than C{--count}.  Loopback only; no process is
started.
"""


from __future__ import annotations

import argparse
import importlib.util
import socket
import statistics
import time
from functools import partial
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from lbproxy._directtcp import DirectTCPEndpoint


def direct(endpoint: DirectTCPEndpoint, factory: Factory) -> Any:
    """
    Connect with C{endpoint}, as a backend connection is opened, and
    return the transport.
    """
    protocols: list[Any] = []
    endpoint.connect(factory).addCallback(protocols.append)
    [protocol] = protocols
    return protocol.transport


def measure(connect: Callable[[], Any], listener: socket.socket, count: int) -> list[float]:
    """
    Time C{count} calls of C{connect}, in microseconds, accepting and
    closing each connection between two calls; close the proxy's side of
    all of them at the end.
    """
    times = []
    transports = []
    for _ in range(count):
        started = time.perf_counter()
        transports.append(connect())
        times.append((time.perf_counter() - started) * 1e6)
        listener.accept()[0].close()
    for transport in transports:
        transport.stopReading()
        transport.socket.close()
    return times


def load(path: str) -> Any:
    """
    Load a version of C{lbproxy/_directtcp.py} from C{path} as a module of
    its own.
    """
    spec = importlib.util.spec_from_file_location("directtcp_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--against", help="another version of lbproxy/_directtcp.py")
    args = parser.parse_args()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.settimeout(5.0)
    host, port = listener.getsockname()
    factory = Factory.forProtocol(Protocol)
    endpoints = {"this checkout": DirectTCPEndpoint(reactor, host, port)}
    if args.against:
        endpoints[args.against] = load(args.against).DirectTCPEndpoint(reactor, host, port)
    medians: dict[str, list[float]] = {name: [] for name in endpoints}
    print(f"{args.rounds} round(s) of {args.count} connects to 127.0.0.1, µs per connect")
    print(f"{'round':>5} {'endpoint':24} {'p50':>7} {'p90':>7} {'p99':>7}")
    for round in range(args.rounds):
        for name, endpoint in endpoints.items():
            times = sorted(measure(partial(direct, endpoint, factory), listener, args.count))
            medians[name].append(statistics.median(times))
            print(
                f"{round + 1:5d} {name[-24:]:24} {statistics.median(times):7.1f} "
                f"{times[int(len(times) * 0.9)]:7.1f} {times[int(len(times) * 0.99)]:7.1f}"
            )
    listener.close()
    for name, values in medians.items():
        print(f"{name}: median of the rounds' p50 {statistics.median(values):.1f} µs")
    if args.against:
        ratios = [ours / theirs for ours, theirs in zip(*medians.values())]
        print(
            "this checkout / against, by round: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
