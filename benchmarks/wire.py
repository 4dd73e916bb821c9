"""
The backend connections of a membership benchmark row as the wire sees
them: how long the backend takes to answer a request, by how many
requests its connection had carried, and how long after a connection's
SYN lbproxy sends its first request.

    python benchmarks/wire.py                  # the fresh row, 10 s
    python benchmarks/wire.py --row alternating --seconds 20

It runs one row of L{membership} (the paced load, the row's DNS server,
lbproxy) while C{tcpdump} (which must be installed: C{apt-get install
tcpdump}) captures the loopback traffic between lbproxy and the backend
nginx, then reads the capture back with C{tcpdump -r}.  For each
connection lbproxy opened during the capture, an exchange is a request's
first data segment from lbproxy and the backend's next data segment: the
time between them is the backend's (and the kernel's) share of the
request, which lbproxy's own timings (C{exchanges.py}) cannot separate
from its reactor's.

Loopback only, bounded in time: C{tcpdump} is started and stopped by its
PID with the rest, by L{membership.Processes}.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from shutil import which

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import membership  # noqa: E402
from exchanges import byExchange  # noqa: E402

#: One line of C{tcpdump -tt -n -r}: time, source, destination, flags,
#: payload length.
LINE = re.compile(
    r"^(\d+\.\d+) IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\].*length (\d+)"
)

#: Exchange numbers reported on their own; later ones are pooled.
SHOWN = 5


def captureFilter(backendPort: int) -> str:
    """
    The capture's filter: TCP to and from the backend's port.
    """
    return f"tcp port {backendPort}"


def exchanges(lines: list[str], backendPort: int) -> tuple[dict[int, list[float]], list[float]]:
    """
    Read C{tcpdump -tt -n} lines of lbproxy's connections to the backend.

    @return: the backend's answer times in µs by exchange number (numbers
        above L{SHOWN} pooled as C{SHOWN + 1}), and the times in µs from
        each connection's SYN to its first request.
    """
    packets: dict[tuple[str, str], list[tuple[float, bool, str, int]]] = defaultdict(list)
    for line in lines:
        match = LINE.match(line)
        if match is None:
            continue
        stamp, source, sport, dest, dport, flags, length = match.groups()
        toBackend = int(dport) == backendPort
        key = (sport, dest) if toBackend else (dport, source)
        packets[key].append((float(stamp), toBackend, flags, int(length)))
    answers: dict[int, list[float]] = defaultdict(list)
    firstRequest: list[float] = []
    for segments in packets.values():
        opening = segments[0]
        if not (opening[1] and "S" in opening[2]):
            # Opened before the capture: its exchange numbers are unknown.
            continue
        number = 0
        sent = None
        for stamp, toBackend, _, length in segments:
            if length == 0:
                continue
            if toBackend and sent is None:
                sent = stamp
                if number == 0:
                    firstRequest.append((stamp - opening[0]) * 1e6)
            elif not toBackend and sent is not None:
                number += 1
                answers[min(number, SHOWN + 1)].append((stamp - sent) * 1e6)
                sent = None
    return answers, firstRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", default="fresh", choices=["fresh", "alternating", "control", "churn"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2200.0, help="requests per second")
    args = parser.parse_args()
    tcpdump = which("tcpdump")
    if tcpdump is None:
        raise SystemExit("wire.py needs tcpdump (apt-get install tcpdump)")
    measuring = membership.pacedRow(args.seconds, args.rate)
    processes = membership.Processes()
    with tempfile.TemporaryDirectory(prefix="lbproxy-wire-") as tmp:
        workdir = Path(tmp)
        capture = workdir / "backend.pcap"
        try:
            backend = membership.startBackend(processes, workdir)
            dumping = processes.start(
                [tcpdump, "-i", "lo", "-n", "-s", "96", "-B", "65536", "-w", str(capture),
                 captureFilter(backend)],
                membership.LOAD_CPU,
                stderr=subprocess.PIPE,
                text=True,
            )
            # tcpdump says so on its standard error once it captures.
            assert dumping.stderr is not None
            deadline = time.monotonic() + 30
            while "listening on" not in dumping.stderr.readline():
                if time.monotonic() > deadline or dumping.poll() is not None:
                    raise SystemExit("tcpdump did not start")
            membership.log(f"{args.row}, captured by tcpdump")
            membership.measure(args.row, processes, workdir, backend, measuring)
            processes.stop(dumping)
        finally:
            processes.stopAll()
        read = subprocess.run(
            [tcpdump, "-tt", "-n", "-r", str(capture)],
            capture_output=True, text=True, check=True,
        )
    answers, firstRequest = exchanges(read.stdout.splitlines(), backend)
    print(f"\n{args.row} row, h2load at {args.rate:g} req/s, {len(firstRequest)} connections "
          "opened; µs from a request's first segment to the backend's answer")
    print(f"{'exchange':>9} {'requests':>9} {'p50':>7} {'p90':>7} {'p99':>7}")
    for line in byExchange(answers, SHOWN, 7, 0):
        print(line)
    if firstRequest:
        firstRequest.sort()
        print(
            f"SYN to the first request, µs: p50 {membership.percentile(firstRequest, 0.5):.0f}, "
            f"p90 {membership.percentile(firstRequest, 0.9):.0f}, "
            f"p99 {membership.percentile(firstRequest, 0.99):.0f}"
        )


if __name__ == "__main__":
    main()
