"""
Where the reactor's time goes while the membership changes: lbproxy's
reactor turns, and the calls in them, during a row of L{membership}.

    python benchmarks/turns.py                           # the fresh row
    python benchmarks/turns.py --row alternating --rate 2800
    python benchmarks/turns.py --python .tox/pypy/bin/python --warmup 20   # on PyPy

This starts the same backend nginx, DNS server and lbproxy as
C{benchmarks/membership.py}, under the same paced h2load load and the
schedule of its "alternating" row (changes every 100 ms for a second,
then none for a second), and has lbproxy write down:

  - every reactor turn: when C{epoll.poll} was called, when it returned,
    and the descriptors it returned;
  - around some calls, when each began and ended: C{DirectTCPEndpoint.
    connect} (opening a backend connection), C{Pool.setBackends}
    (applying a change), C{DNSDatagramProtocol.datagramReceived} (an
    answer's datagram), lbproxy's sending of a lookup, and
    C{UpstreamConnection.connectionLost};
  - on CPython, each run of the garbage collector, by generation
    (C{gc0} to C{gc2}, from C{gc.callbacks});
  - each request sent to a backend (C{UpstreamConnection.send}, with the
    connection's descriptor and exchange number) and its response's
    first bytes (C{dataReceived}).

A C{sitecustomize} module on the proxy's C{PYTHONPATH} does this; nothing
in lbproxy changes.  It replaces C{select.epoll} with a wrapper that times
C{poll} before Twisted's epoll reactor is imported, and wraps the methods
named once twistd runs its application.

The report splits the turns into those that start within 200 ms after a
change of the DNS server's answer ("during") and the others ("between"),
as C{membership.py} splits requests, and gives, for each half: the
turns' work (from C{poll} returning to the next C{poll}), the calls
above (how many, and their time), and what the longest 1 % of the turns
held.  Then, by exchange number (1: the first request on a new
connection), the time from sending a request to its response's first
bytes, split into the rest of the turn that sent it, the wait for the
C{poll} that reported the response, and the time from that C{poll} to
C{dataReceived} (the other descriptors handled first).

The tracing costs time itself (a line written per turn and per call):
compare the halves and the rows with one another, not with
C{membership.py}'s figures.  Loopback only, bounded in time; every process
is started and stopped by L{membership.Processes}, by PID.
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import membership  # noqa: E402

#: Loaded by the proxy's interpreter at start-up (C{PYTHONPATH}).  Times
#: are C{time.time()}, as the DNS server's record of its changes.
SITECUSTOMIZE = membership.whenTwistdRuns(r'''
import gc, os, select, time

_path = os.environ.get("LBPROXY_TURNS")
if _path:
    # Nothing is written until twistd runs lbproxy: the benchmark's other
    # Python processes (the DNS server) load this module too.
    _write = lambda line: None
    _now = time.time
    _epoll = select.epoll

    class _TimedEpoll:
        def __init__(self, *args, **kwargs):
            self._epoll = _epoll(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._epoll, name)

        def poll(self, timeout=-1, maxevents=-1):
            called = _now()
            events = self._epoll.poll(timeout, maxevents)
            _write("P %.6f %.6f %s\n" % (called, _now(), ",".join("%d" % e[0] for e in events)))
            return events

    select.epoll = _TimedEpoll

    def _timed(cls, name, tag):
        original = getattr(cls, name)

        def timed(*args, **kwargs):
            began = _now()
            try:
                return original(*args, **kwargs)
            finally:
                _write("%s %.6f %.6f\n" % (tag, began, _now()))

        setattr(cls, name, timed)

    def _install():
        global _write
        out = open(_path + ".%d" % os.getpid(), "w", buffering=1 << 20)
        _write = out.write
        from twisted.internet import reactor
        from twisted.names.dns import DNSDatagramProtocol
        from lbproxy._client import UpstreamConnection
        from lbproxy._directtcp import DirectTCPEndpoint
        from lbproxy._dns import DNSBackends
        from lbproxy._pool import Pool

        send, received = UpstreamConnection.send, UpstreamConnection.dataReceived

        def timedSend(self, *args, **kwargs):
            _write("S %.6f %d %d\n" % (_now(), self.transport.fileno(), self.exchanges + 1))
            return send(self, *args, **kwargs)

        def timedReceived(self, data):
            _write("R %.6f %d\n" % (_now(), self.transport.fileno()))
            return received(self, data)

        UpstreamConnection.send = timedSend
        UpstreamConnection.dataReceived = timedReceived
        _timed(DirectTCPEndpoint, "connect", "connect")
        _timed(Pool, "setBackends", "setBackends")
        _timed(DNSDatagramProtocol, "datagramReceived", "answer")
        _timed(DNSBackends, "_lookup", "lookup")
        _timed(UpstreamConnection, "connectionLost", "closed")
        began = []

        def collected(phase, info):
            # CPython's collector, by generation (PyPy calls no callbacks).
            if phase == "start":
                began.append(_now())
            elif began:
                _write("gc%d %.6f %.6f\n" % (info["generation"], began.pop(), _now()))

        gc.callbacks.append(collected)
        reactor.addSystemEventTrigger("before", "shutdown", out.flush)
''', "LBPROXY_TURNS")

#: The calls timed, in the order reported.
CALLS = ("connect", "setBackends", "answer", "lookup", "closed", "gc0", "gc1", "gc2")

#: Seconds after a change during which a turn counts as "during" it.
WINDOW = 0.2


class Trace:
    """
    What one proxy process wrote: its turns, its timed calls, and its
    requests to backends.
    """

    def __init__(self, path: Path, seconds: float) -> None:
        #: (poll called, poll returned, descriptors returned)
        self.polls: list[tuple[float, float, list[int]]] = []
        #: (began, ended, call)
        self.calls: list[tuple[float, float, str]] = []
        #: (time, descriptor, exchange number)
        self.sends: list[tuple[float, int, int]] = []
        #: descriptor: times of C{dataReceived}
        self.received: dict[int, list[float]] = {}
        with path.open() as lines:
            for line in lines:
                kind, *fields = line.split()
                if kind == "P":
                    fds = [int(fd) for fd in fields[2].split(",")] if len(fields) > 2 else []
                    self.polls.append((float(fields[0]), float(fields[1]), fds))
                elif kind == "S":
                    self.sends.append((float(fields[0]), int(fields[1]), int(fields[2])))
                elif kind == "R":
                    self.received.setdefault(int(fields[1]), []).append(float(fields[0]))
                else:
                    self.calls.append((float(fields[0]), float(fields[1]), kind))
        self.called = [p[0] for p in self.polls]
        #: The measured load's span: the warm-up and the last change's
        #: aftermath left out (h2load ends just after the last request
        #: the proxy forwards).
        end = max(s[0] for s in self.sends)
        self.span = (end - 2 * seconds + 0.5, end)

    def measured(self, when: float) -> bool:
        return self.span[0] <= when <= self.span[1]

    def turnOf(self, when: float) -> int:
        """
        The index of the turn C{when} is in: that of the last C{poll}
        that returned before it.
        """
        return bisect.bisect_right(self.called, when) - 1


def percentile(values: list[float], share: float) -> float:
    return membership.percentile(sorted(values), share)


def reportTurns(trace: Trace, changes: list[float]) -> None:
    polls = trace.polls

    def half(when: float) -> str:
        index = bisect.bisect_right(changes, when) - 1
        return "during" if index >= 0 and when - changes[index] < WINDOW else "between"

    inside: list[Counter[str]] = [Counter() for _ in polls]
    spent: list[Counter[str]] = [Counter() for _ in polls]
    for began, ended, call in trace.calls:
        turn = trace.turnOf(began)
        if turn >= 0:
            inside[turn][call] += 1
            spent[turn][call] += ended - began
    halves: dict[str, list[int]] = {"during": [], "between": []}
    for turn in range(len(polls) - 1):
        if trace.measured(polls[turn][1]):
            halves[half(polls[turn][1])].append(turn)
    print("\nturns: work from poll returning to the next poll, ms")
    print(f"{'half':8} {'turns':>7} {'p50':>6} {'p90':>6} {'p99':>6} {'p99.9':>6} {'max':>6}")
    for name, turns in halves.items():
        work = [(polls[t + 1][0] - polls[t][1]) * 1e3 for t in turns]
        print(
            f"{name:8} {len(turns):7d} "
            + " ".join(f"{percentile(work, s):6.3f}" for s in (0.5, 0.9, 0.99, 0.999))
            + f" {max(work):6.3f}"
        )
    print("\ncalls in each half: how many, and µs each (mean)")
    for name, turns in halves.items():
        count: Counter[str] = Counter()
        time: Counter[str] = Counter()
        for t in turns:
            count.update(inside[t])
            time.update(spent[t])
        print(
            f"{name:8} "
            + ", ".join(
                f"{call} {count[call]} x {time[call] / count[call] * 1e6:.0f}"
                for call in CALLS
                if count[call]
            )
        )
    print("\nthe longest 1 % of each half's turns: how many held each call")
    for name, turns in halves.items():
        work = {t: polls[t + 1][0] - polls[t][1] for t in turns}
        cut = percentile(list(work.values()), 0.99)
        longest = [t for t in turns if work[t] >= cut]
        held = Counter(call for t in longest for call in inside[t])
        events = statistics.mean(len(polls[t][2]) for t in longest)
        print(
            f"{name:8} {len(longest)} turns of {cut * 1e3:.3f} ms or more, "
            f"{events:.1f} descriptors each (mean): "
            + ", ".join(f"{call} {held[call]}" for call in CALLS)
        )


def reportExchanges(trace: Trace) -> None:
    polls = trace.polls
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    for sent, fd, number in trace.sends:
        if not trace.measured(sent):
            continue
        answers = trace.received.get(fd, [])
        index = bisect.bisect_right(answers, sent)
        turn = trace.turnOf(sent) + 1
        if index >= len(answers) or turn <= 0 or turn >= len(polls):
            continue
        answered = answers[index]
        ready = turn
        while ready < len(polls) and fd not in polls[ready][2]:
            ready += 1
        if ready >= len(polls) or polls[ready][1] > answered:
            continue
        key = "1" if number == 1 else ("2-5" if number <= 5 else "6+")
        rows.setdefault(key, []).append(
            (
                answered - sent,
                polls[turn][0] - sent,
                polls[ready][1] - polls[turn][0],
                answered - polls[ready][1],
            )
        )
    print("\nfrom sending a request to its response's first bytes, by exchange number: ms, p50 / p90")
    print(
        f"{'exchange':>8} {'requests':>9} {'in all':>13} {'rest of turn':>13} "
        f"{'until polled':>13} {'in its turn':>13}"
    )
    for key in ("1", "2-5", "6+"):
        if key not in rows:
            continue
        columns = list(zip(*rows[key]))
        print(
            f"{key:>8} {len(rows[key]):9d} "
            + " ".join(
                f"{percentile([v * 1e3 for v in c], 0.5):6.3f}/{percentile([v * 1e3 for v in c], 0.9):6.3f}"
                for c in columns
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    rows = [r for r in membership.HALVES if not r.startswith(membership.HAPROXY)]
    parser.add_argument("--row", default="fresh", choices=rows)
    parser.add_argument("--rate", type=float, default=2800.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--python", default=sys.executable, help="the interpreter that runs lbproxy"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.0, help="seconds of load before the measurement"
    )
    args = parser.parse_args()
    measuring = membership.pacedRow(args.seconds, args.rate, args.python, args.warmup)
    processes = membership.Processes()
    with tempfile.TemporaryDirectory(prefix="lbproxy-turns-") as tmp:
        workdir = Path(tmp)
        membership.addSitecustomize(workdir, SITECUSTOMIZE)
        prefix = workdir / "turns"
        os.environ["LBPROXY_TURNS"] = str(prefix)
        try:
            backend = membership.startBackend(processes, workdir)
            membership.log(f"{args.row}, h2load at {args.rate:g} req/s")
            membership.measure(args.row, processes, workdir, backend, measuring)
        finally:
            processes.stopAll()
        changes = sorted(float(t) for t in (workdir / "changes.txt").read_text().split())
        traces = [Trace(path, args.seconds) for path in workdir.glob("turns.*")]
    if len(traces) != 1:
        raise SystemExit(f"expected one proxy's trace, found {len(traces)}")
    print(f"\n{args.row} row, h2load at {args.rate:g} req/s, {2 * args.seconds:g} s")
    reportTurns(traces[0], changes)
    reportExchanges(traces[0])


if __name__ == "__main__":
    main()
