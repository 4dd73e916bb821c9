"""
What gzip costs per 100 KiB response: lbproxy with C{gzip = yes} against
lbproxy without it, and against nginx with and without C{gzip on}, in the
same run, loopback only, bounded in time.

    python benchmarks/bench_gzip.py             # 3 rounds of 5 s (about 2 minutes)
    python benchmarks/bench_gzip.py --quick     # 1 round of 3 s

An nginx backend serves C{/page}: 100 KiB of HTML-like text (generated,
with a fixed seed; gzip level 1 makes it about a quarter of its size),
with its C{Content-Length}.  Four proxies sit in front of it, measured
interleaved with wrk at 50 connections, every request with
C{Accept-Encoding: gzip}:

    nginx           nginx, one process, upstream keepalive, gzip off
    nginx-gzip      the same with gzip on (level 1, text/html, gzip_vary on)
    lbproxy         lbproxy on CPython (this interpreter), gzip off
    lbproxy-gzip    the same with gzip = yes (level 1)

Each proxy runs on CPU 0.  Besides req/s, the CPU time each proxy process
used during its runs (utime + stime from /proc) is divided by the
responses it sent: the difference between a row with gzip and its row
without is what compressing one 100 KiB response costs that proxy, a
figure that holds up better than req/s on a machine shared with other
work.
Before measuring, one response of each row is fetched and decoded, to
check that the gzip rows compress and the others do not.

It also times the compression alone, in this process: a 100 KiB body
through L{lbproxy._gzip.GzipEncoder} in 16 KiB pieces with a sync flush
after each (as lbproxy does at the end of each read from the backend),
against one C{zlib.compress} of the whole body.

Every process is started by this script and stopped by its PID (the
helpers of benchmarks/run.py).
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from run import (  # noqa: E402
    LOAD_CPU,
    PROXY_CPU,
    REPO,
    Processes,
    backendConfig,
    ensureTools,
    freePort,
    interruptOnTerm,
    lbproxyConfig,
    log,
    nginxProxyConfig,
    runWrk,
    startBackend,
    twistdArgv,
    waitForPort,
    which,
)

from lbproxy._gzip import GzipEncoder  # noqa: E402

ROWS = ["nginx", "nginx-gzip", "lbproxy", "lbproxy-gzip"]
SIZE = 100 * 1024
ACCEPT = "Accept-Encoding: gzip"

_WORDS = (
    "the proxy backend request response header body stream client server "
    "upstream vhost route pool balancer health check timeout connection "
    "keepalive chunked compress gzip deflate window buffer producer consumer"
).split()


def page(size: int = SIZE, seed: int = 16) -> bytes:
    """
    C{size} bytes of HTML-like text: paragraphs of words drawn with a fixed
    seed, compressible as real pages are, not as a run of one byte is.
    """
    rng = random.Random(seed)
    parts = [b"<!DOCTYPE html>\n<html><head><title>bench</title></head><body>\n"]
    total = len(parts[0])
    n = 0
    while total < size:
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 30)))
        line = f'<p id="p{n}" class="c{rng.randint(0, 9)}">{words} {rng.randint(0, 10**6)}.</p>\n'
        parts.append(line.encode("ascii"))
        total += len(line)
        n += 1
    return b"".join(parts)[:size]


#: nginx's gzip, as lbproxy's defaults have it (level 1, Vary) for the
#: page's type; C{gzip_proxied any} so that no request header turns it off.
NGINX_GZIP = (
    "gzip on; gzip_comp_level 1; gzip_min_length 1024; gzip_vary on; "
    "gzip_proxied any; gzip_types text/html;"
)


def fetch(port: int) -> tuple[dict[str, str], bytes]:
    """
    One response of the proxy on C{port}: its headers and its body as
    sent.
    """
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/page", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return {k.lower(): v for k, v in response.headers.items()}, response.read()


def checkRow(row: str, port: int, expected: bytes) -> int:
    """
    Check that C{row} compresses when it should, and that the body decodes
    to the page; return the body's size on the wire.
    """
    headers, body = fetch(port)
    compressed = row.endswith("-gzip")
    if compressed != (headers.get("content-encoding") == "gzip"):
        raise SystemExit(f"{row}: Content-Encoding {headers.get('content-encoding')!r}")
    if (gzip.decompress(body) if compressed else body) != expected:
        raise SystemExit(f"{row}: the body came back changed")
    return len(body)


def timeCompression(body: bytes, level: int, runs: int = 7, count: int = 200) -> dict[str, float]:
    """
    The CPU time of compressing C{body}, in microseconds (median of
    C{runs} runs of C{count}): through L{GzipEncoder} in 16 KiB pieces,
    each followed by a sync flush, and in one C{zlib.compress}.
    """
    pieces = [body[i : i + 16384] for i in range(0, len(body), 16384)]

    def streamed() -> int:
        encoder = GzipEncoder(level, len(body))
        size = 0
        for piece in pieces:
            size += len(encoder.compress(piece)) + len(encoder.flush())
        return size + len(encoder.finish())

    def whole() -> int:
        return len(zlib.compress(body, level))

    result: dict[str, float] = {}
    for name, function in (("streamed", streamed), ("whole", whole)):
        samples = []
        for _ in range(runs):
            start = time.process_time()
            for _ in range(count):
                size = function()
            samples.append((time.process_time() - start) / count * 1e6)
        result[name + "_us"] = statistics.median(samples)
        result[name + "_bytes"] = size
    return result


def cpuSeconds(pid: int) -> float:
    """
    The CPU time (user and system) that process C{pid} has used so far.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime are the 14th and 15th fields; the first two (pid and
    # the command) are before the ")".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, pid: int, args: Any) -> dict[str, float]:
    """
    One wrk run against C{url}, with the CPU time per response of the
    proxy process C{pid} over it (in microseconds).
    """
    before = cpuSeconds(pid)
    result = runWrk(url, args.duration, args.connections, [ACCEPT])
    used = cpuSeconds(pid) - before
    result["cpu_us"] = used / result["requests"] * 1e6 if result["requests"] else float("nan")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per row, once")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, 1 s warm-up")
    parser.add_argument("--no-install", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3.0, 1.0
    ensureTools(not args.no_install)

    body = page()
    cpu = {level: timeCompression(body, level) for level in (1, 6)}

    workdir = Path(tempfile.mkdtemp(prefix="lbproxy-bench-gzip-"))
    procs = Processes()
    interruptOnTerm()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    ports: dict[str, int] = {}
    pids: dict[str, int] = {}
    wire: dict[str, int] = {}
    try:
        backend = freePort()
        startBackend(
            procs, workdir, backendConfig(workdir, backend, {"page": body}, "text/html"), backend
        )
        for row in ROWS:
            port = freePort()
            compress = row.endswith("-gzip")
            if row.startswith("nginx"):
                conf = nginxProxyConfig(
                    workdir, port, backend, row, NGINX_GZIP if compress else "gzip off;"
                )
                argv = [which("nginx") or "nginx", "-c", str(conf)]
                rowEnv = None
            else:
                conf = lbproxyConfig(
                    workdir, row, port, backend, 1, "gzip = yes" if compress else ""
                )
                argv = twistdArgv(sys.executable, row, conf, workdir)
                rowEnv = env
            p = procs.start(row, argv, PROXY_CPU, workdir, env=rowEnv)
            waitForPort(port, p, row, workdir)
            ports[row] = port
            pids[row] = p.pid
            wire[row] = checkRow(row, port, body)
        log(f"work directory {workdir}")
        for row in ROWS:
            runWrk(f"http://127.0.0.1:{ports[row]}/page", args.warmup, args.connections, [ACCEPT])
        raw: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
        for n in range(args.rounds):
            log(f"round {n + 1} of {args.rounds}")
            for row in ROWS:
                result = measure(f"http://127.0.0.1:{ports[row]}/page", pids[row], args)
                raw[row].append(result)
                log(
                    f"  {row:<13} {result['rps']:>8.0f} req/s  {result['cpu_us']:>6.0f} µs CPU "
                    f"per response  errors {result['errors']:g}"
                )
        report(raw, wire, cpu, args)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        procs.stopAll()
        shutil.rmtree(workdir, ignore_errors=True)


def report(
    raw: dict[str, list[dict[str, float]]],
    wire: dict[str, int],
    cpu: dict[int, dict[str, float]],
    args: Any,
) -> None:
    def med(row: str, key: str) -> float:
        values = [r[key] for r in raw[row] if r[key] == r[key]]
        return statistics.median(values) if values else float("nan")

    print(
        f"\ngzip benchmark: a 100 KiB text/html page, wrk -t1 -c{args.connections} "
        f"with Accept-Encoding: gzip, {args.rounds} interleaved round(s) of "
        f"{args.duration:g} s; proxy on CPU {PROXY_CPU}, wrk and the nginx backend "
        f"on CPU {LOAD_CPU}; medians.\n"
    )
    header = (
        f"| {'row':<13} | {'req/s':>8} | {'p99 ms':>7} | {'errors':>6} | {'bytes sent':>10} "
        f"| {'CPU µs/resp':>11} | {'req/s / nginx-gzip':>18} |"
    )
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    base = med("nginx-gzip", "rps")
    for row in ROWS:
        rps = med(row, "rps")
        print(
            f"| {row:<13} | {rps:>8.0f} | {med(row, 'p99'):>7.2f} | "
            f"{sum(r['errors'] for r in raw[row]):>6g} | {wire[row]:>10} | "
            f"{med(row, 'cpu_us'):>11.0f} | {rps / base if base else float('nan'):>18.2f} |"
        )
    print()
    for proxy in ("nginx", "lbproxy"):
        off, on = med(proxy, "cpu_us"), med(proxy + "-gzip", "cpu_us")
        print(
            f"{proxy}: gzip adds {on - off:.0f} µs of CPU per 100 KiB response "
            f"({off:.0f} -> {on:.0f}); req/s with gzip / without: "
            f"{med(proxy + '-gzip', 'rps') / med(proxy, 'rps'):.2f}"
        )
    print(
        f"lbproxy-gzip / nginx-gzip: CPU per response "
        f"{med('lbproxy-gzip', 'cpu_us') / med('nginx-gzip', 'cpu_us'):.2f}, "
        f"req/s {med('lbproxy-gzip', 'rps') / base:.2f}"
    )
    print()
    for level, figures in cpu.items():
        print(
            f"compressing 100 KiB in this process, level {level}: {figures['streamed_us']:.0f} µs "
            f"in 16 KiB pieces with a sync flush each ({figures['streamed_bytes']:.0f} bytes), "
            f"{figures['whole_us']:.0f} µs in one zlib.compress ({figures['whole_bytes']:.0f} bytes)"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
