"""
Where a new backend's connections cost: how long lbproxy waits for the
first byte of a response on a backend connection, by how many requests
that connection had carried, in the membership benchmark's rows.

    python benchmarks/exchanges.py                       # fresh, then alternating
    python benchmarks/exchanges.py --rows fresh --rounds 2

For each row of L{membership} named (the schedule of its "alternating"
row: changes every 100 ms for a second, then none for a second), this
starts the same backend nginx, DNS server and lbproxy, under the same
paced h2load load, and has lbproxy note, for every request it sends, the
time from L{lbproxy._client.UpstreamConnection.send} to the response's
first bytes (its C{dataReceived}), with the connection's exchange count:
1 for the first request on a new connection.  The note is added by a
C{sitecustomize} module on the proxy's C{PYTHONPATH} that wraps those two
methods once twistd starts its application; nothing in lbproxy changes.

Every request the proxy sends counts, those of the warm-up too (wrk, as
fast as it goes, until the name resolves): in the rows whose members
stay, the first exchanges are those.  A connection is opened when its
backend has no idle one, that is, in a burst: the first exchanges are
not a random sample of the requests.

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

#: Loaded by the proxy's interpreter at start-up (C{PYTHONPATH}): when
#: twistd runs its application, wrap L{UpstreamConnection}'s C{send} and
#: C{dataReceived} to write "exchange-number milliseconds" per response.
SITECUSTOMIZE = membership.whenTwistdRuns(r'''
import os, time

def _install():
    from lbproxy._client import UpstreamConnection
    out = open(os.environ["LBPROXY_EXCHANGES"] + ".%d" % os.getpid(), "w", buffering=1 << 16)
    send, received = UpstreamConnection.send, UpstreamConnection.dataReceived

    def timedSend(self, *args, **kwargs):
        self._benchSent = time.perf_counter()
        return send(self, *args, **kwargs)

    def timedReceived(self, data):
        sent = self.__dict__.pop("_benchSent", None)
        if sent is not None:
            out.write("%d %.3f\n" % (self.exchanges, (time.perf_counter() - sent) * 1000))
        return received(self, data)

    UpstreamConnection.send = timedSend
    UpstreamConnection.dataReceived = timedReceived
    from twisted.internet import reactor
    reactor.addSystemEventTrigger("before", "shutdown", out.flush)

''', "LBPROXY_EXCHANGES")

#: The exchange numbers reported on their own; later ones are pooled.
SHOWN = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="fresh,alternating")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2200.0, help="requests per second")
    args = parser.parse_args()
    rows = [row for row in args.rows.split(",") if row]
    lbproxyRows = [r for r in membership.HALVES if not r.startswith(membership.HAPROXY)]
    if not set(rows) <= set(lbproxyRows):
        parser.error(f"rows are among {', '.join(lbproxyRows)}")
    measuring = membership.pacedRow(args.seconds, args.rate)
    processes = membership.Processes()
    with tempfile.TemporaryDirectory(prefix="lbproxy-exchanges-") as tmp:
        workdir = Path(tmp)
        membership.addSitecustomize(workdir, SITECUSTOMIZE)
        times: dict[str, dict[int, list[float]]] = {row: {} for row in rows}
        try:
            backend = membership.startBackend(processes, workdir)
            for round in range(args.rounds):
                for row in rows:
                    membership.log(f"round {round + 1}/{args.rounds}: {row}")
                    prefix = workdir / f"exchanges-{row}-{round}"
                    os.environ["LBPROXY_EXCHANGES"] = str(prefix)
                    membership.measure(row, processes, workdir, backend, measuring)
                    for path in workdir.glob(prefix.name + ".*"):
                        for line in path.read_text().splitlines():
                            number, ms = line.split()
                            times[row].setdefault(min(int(number), SHOWN + 1), []).append(float(ms))
        finally:
            processes.stopAll()
    print(f"\n{args.rounds} round(s), h2load at {args.rate:g} req/s; "
          "ms from sending a request to its response's first bytes")
    print(f"{'row':12} {'exchange':>9} {'requests':>9} {'p50':>6} {'p90':>6} {'p99':>6}")
    for row, byNumber in times.items():
        for line in byExchange(byNumber, SHOWN, 6, 2):
            print(f"{row:12} {line}")


def byExchange(byNumber: dict[int, list[float]], shown: int, width: int, digits: int) -> list[str]:
    """
    The lines of a table of times by exchange number: the number
    (C{shown + 1} stands for it and all later ones), how many, and the
    median, p90 and p99, each C{width} wide with C{digits} decimals.
    """
    lines = []
    for number, values in sorted(byNumber.items()):
        values.sort()
        name = str(number) if number <= shown else f"{shown + 1}+"
        figures = " ".join(
            f"{figure:{width}.{digits}f}"
            for figure in (
                statistics.median(values),
                membership.percentile(values, 0.9),
                membership.percentile(values, 0.99),
            )
        )
        lines.append(f"{name:>9} {len(values):9d} {figures}")
    return lines


if __name__ == "__main__":
    main()
