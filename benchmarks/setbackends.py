"""
What applying a membership change costs the reactor's turn:
L{lbproxy.Pool.setBackends} timed in-process, each call replacing every
member with as many new backends (an answer whose addresses are all
new), with twistd's text file observer logging the pool's lines (as
C{twistd --logfile}) or with no observer.

    python benchmarks/setbackends.py                 # 1 and 8 members, both
    python benchmarks/setbackends.py --members 1,8,32 --calls 2000

On a fake clock, no network.  Run it on one CPU (C{taskset -c 0}) for
steadier figures; compare a checkout with another by putting it first
on C{PYTHONPATH}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import globalLogBeginner, globalLogPublisher, textFileLogObserver

from lbproxy import Backend, Pool
from lbproxy.balancers import buildBalancer


def addresses(change: int, members: int) -> list[Backend]:
    """
    The members after change number C{change}: C{members} addresses
    that no change before had.
    """
    first = change * members
    return [Backend(f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}", 8080)
            for n in range(first, first + members)]


def timeChanges(members: int, calls: int) -> list[float]:
    """
    Seconds each of C{calls} changes of C{members} new backends took.
    """
    clock = Clock()
    pool = Pool("app", addresses(0, members), buildBalancer("round_robin"), clock)
    times = []
    for change in range(1, calls + 1):
        new = addresses(change, members)
        began = time.perf_counter()
        pool.setBackends(new, "DNS answer for app.bench")
        times.append(time.perf_counter() - began)
        clock.advance(1)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="1,8", help="comma-separated")
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)
    print(f"{args.calls} changes each; µs per setBackends call")
    print(f"{'members':>8} {'observer':>9} {'p50':>8} {'p90':>8} {'log lines':>10}")
    with tempfile.TemporaryDirectory(prefix="lbproxy-setbackends-") as tmp:
        for members in (int(m) for m in args.members.split(",")):
            for withObserver in (True, False):
                path = Path(tmp) / f"twistd-{members}-{withObserver}.log"
                with open(path, "w") as logged:
                    observer = textFileLogObserver(logged)
                    if withObserver:
                        globalLogPublisher.addObserver(observer)
                    try:
                        times = sorted(timeChanges(members, args.calls))
                    finally:
                        if withObserver:
                            globalLogPublisher.removeObserver(observer)
                lines = path.read_text().count("\n")
                print(
                    f"{members:8} {'text file' if withObserver else 'none':>9} "
                    f"{statistics.median(times) * 1e6:8.0f} "
                    f"{times[int(len(times) * 0.9)] * 1e6:8.0f} "
                    f"{lines / args.calls:10.1f}"
                )

if __name__ == "__main__":
    main()
