"""
How much the proxy's own cost of opening a backend connection drives the
p99 of the membership benchmark's C{fresh} row, where every change brings
an address never seen before and its connections must be opened.

    python benchmarks/connectcost.py --variants 0,400 --rounds 4
    python benchmarks/connectcost.py --variants 400,400+ahead --rounds 4
    python benchmarks/connectcost.py --variants 0,0+thread --rounds 6

A variant is C{SPIN}, C{SPIN+ahead} or C{SPIN+thread}:

  - C{SPIN}: every backend connect lbproxy makes
    (L{DirectTCPEndpoint.connect}) takes that many more microseconds of
    the proxy's CPU, spent in the same call (a busy loop): a dose of the
    cost a connect has, to see how the p99 answers to it.  C{0} is the
    code as it is.
  - C{+ahead}: a backend that joins with no connection (a new address)
    also has connections opened for it ahead of its requests, one per
    reactor turn from the turn after it joined (or C{--spacing} seconds
    apart), C{--ahead} of them at most (fewer when it has that many idle already): the connects then
    happen at the change, outside the bursts of requests that open them
    on demand.  This is an experiment, not a
    feature of lbproxy: it shows whether moving the connects out of the
    requests' turns would spare the p99.
  - C{+thread}: every connect is made in a thread of the reactor's pool
    (a blocking C{connect()}, which lets go of the GIL while the kernel
    does the handshake), and the connected socket handed back to the
    reactor thread (C{callFromThread}), where the endpoint's own attempt
    builds the transport.  Also an experiment: it shows whether taking the
    kernel's part of a connect (about two thirds of it on loopback) off
    the reactor's thread spares the p99.

Round by round the variants alternate on the same backend, DNS server
and load (L{membership.measure} of the C{fresh} row, under the paced
load, each variant a fresh lbproxy), and each round gives the ratio of
the p99 of the requests during changes to that of the requests between
them, as C{membership.py} does.  The variants are applied by a
C{sitecustomize} module on the proxy's C{PYTHONPATH}, as in
C{exchanges.py}: nothing in lbproxy changes.  Besides the p99 ratio,
the p90's is printed, and how many connections the backend accepted
during the changes.

Loopback only, bounded in time; every process is started and stopped by
L{membership.Processes}, by PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import membership  # noqa: E402

#: Loaded by the proxy's interpreter at start-up: when twistd runs its
#: application, apply the variant in C{LBPROXY_CONNECT_SPIN} (µs) and
#: C{LBPROXY_CONNECT_AHEAD} (idle connections opened ahead, 0 for none).
SITECUSTOMIZE = membership.whenTwistdRuns(r'''
import os, time

def _install():
    import socket
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.error import getConnectError
    from lbproxy._directtcp import DirectTCPEndpoint, _Attempt
    from lbproxy._pool import Pool

    spin = float(os.environ["LBPROXY_CONNECT_SPIN"]) / 1e6
    ahead = int(os.environ["LBPROXY_CONNECT_AHEAD"])
    spacing = float(os.environ.get("LBPROXY_CONNECT_SPACING", "0"))
    if spin:
        connect = DirectTCPEndpoint.connect

        def spinning(self, factory):
            connecting = connect(self, factory)
            end = time.perf_counter() + spin
            while time.perf_counter() < end:
                pass
            return connecting

        DirectTCPEndpoint.connect = spinning
    if os.environ["LBPROXY_CONNECT_THREAD"] == "1":

        def inThread(self, factory):
            connecting = Deferred()

            def connected(sock):
                # As the endpoint does once connect() is done: the
                # transport built, or the socket closed and the failure told.
                _Attempt(self, sock, factory).adopt().chainDeferred(connecting)

            def blocking():
                sock = socket.socket(self._family, socket.SOCK_STREAM)
                try:
                    sock.connect(self._address)
                    sock.setblocking(False)
                except OSError as e:
                    sock.close()
                    reactor.callFromThread(connecting.errback, getConnectError(e))
                else:
                    reactor.callFromThread(connected, sock)

            reactor.callInThread(blocking)
            return connecting

        DirectTCPEndpoint.connect = inThread
    if ahead:
        join = Pool._join

        def joinAhead(self, backend):
            join(self, backend)
            connections = self._connections[backend]
            if connections.opened or connections.idle:
                return

            def openOne(left):
                if connections.closed or left <= 0 or len(connections.idle) >= ahead:
                    return
                connections.connectUpstream().addCallbacks(connections._put, lambda f: None)
                reactor.callLater(spacing, openOne, left - 1)

            reactor.callLater(0, openOne, ahead)

        Pool._join = joinAhead
''', "LBPROXY_CONNECT_SPIN")


def parseVariant(text: str) -> tuple[float, str]:
    """
    Parse a variant, C{SPIN}, C{SPIN+ahead} or C{SPIN+thread}.

    @return: the dose in µs, and C{"ahead"}, C{"thread"} or C{""}.
    """
    spin, plus, what = text.partition("+")
    if plus and what not in ("ahead", "thread"):
        raise argparse.ArgumentTypeError(f"not a variant: {text!r}")
    return float(spin), what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants", default="0,400", help="comma-separated: SPIN, SPIN+ahead or SPIN+thread"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2200.0, help="requests per second")
    parser.add_argument("--ahead", type=int, default=4, help="idle connections opened ahead")
    parser.add_argument(
        "--spacing", type=float, default=0.0,
        help="seconds between two connections opened ahead (0: the next turn)",
    )
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        parseVariant(variant)
    measuring = membership.pacedRow(args.seconds, args.rate)
    processes = membership.Processes()
    during, between = membership.HALVES["fresh"]
    ratios: dict[str, list[float]] = {variant: [] for variant in variants}
    p90s: dict[str, list[float]] = {variant: [] for variant in variants}
    connects: dict[str, list[int]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="lbproxy-connectcost-") as tmp:
        workdir = Path(tmp)
        membership.addSitecustomize(workdir, SITECUSTOMIZE)
        try:
            backend = membership.startBackend(processes, workdir)
            for round in range(args.rounds):
                for variant in variants:
                    spin, what = parseVariant(variant)
                    membership.log(f"round {round + 1}/{args.rounds}: {variant}")
                    os.environ["LBPROXY_CONNECT_SPIN"] = str(spin)
                    os.environ["LBPROXY_CONNECT_AHEAD"] = str(args.ahead if what == "ahead" else 0)
                    os.environ["LBPROXY_CONNECT_THREAD"] = "1" if what == "thread" else "0"
                    os.environ["LBPROXY_CONNECT_SPACING"] = str(args.spacing)
                    halves = membership.measure("fresh", processes, workdir, backend, measuring)
                    ratio = halves[during]["p99"] / halves[between]["p99"]
                    ratios[variant].append(ratio)
                    times = halves["times"]
                    p90s[variant].append(
                        membership.percentile(sorted(times[during]), 0.9)
                        / membership.percentile(sorted(times[between]), 0.9)
                    )
                    connects[variant].append(halves[during]["connects"])
                    membership.log(
                        f"  p99 {halves[during]['p99']:.2f} ms during, "
                        f"{halves[between]['p99']:.2f} ms between: {ratio:.2f}"
                    )
        finally:
            processes.stopAll()
    print(f"\n{args.rounds} round(s), fresh row, h2load at {args.rate:g} req/s; "
          "p99 during changes / p99 between them")
    print(f"{'variant':12} {'by round':40} {'median':>6} {'p90':>5} {'connects':>9}")
    for variant, values in ratios.items():
        byRound = ", ".join(f"{r:.2f}" for r in values)
        print(
            f"{variant:12} {byRound:40} {statistics.median(values):6.2f} "
            f"{statistics.median(p90s[variant]):5.2f} "
            f"{statistics.median(connects[variant]):9.0f}"
        )


if __name__ == "__main__":
    main()
