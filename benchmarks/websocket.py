"""
WebSocket echo through nginx and lbproxy, in one run: messages per second
and the p99 round trip of small messages over 50 connections, once the
tunnels are established (the proxies then only relay bytes).

    python benchmarks/websocket.py                  # 5 rounds of 10 s
    python benchmarks/websocket.py --rounds 1 --seconds 3

The backend is a small WebSocket echo server (asyncio, in its own
process): it answers the handshake with a real C{Sec-WebSocket-Accept},
then unmasks each client frame and sends it back as a server frame.  The
load is a client of the same kind (asyncio, its own process): 50
connections, each sending one masked text frame of C{--size} bytes and
waiting for its echo before the next (a closed loop), checking each echo.
Both run on CPU 1, the proxy under test on CPU 0, as in
run.py, which starts and stops nginx and lbproxy here (by PID).

Rows are measured interleaved (every round visits nginx, then lbproxy);
the table gives medians over the rounds and the ratios to nginx.  On a
loaded machine the Python load generator, not the proxy, may set the
message rate; the proxy's own CPU time per message (utime + stime from
/proc, divided by the messages of the round) says what relaying costs
each proxy whatever the rate, and is the figure to compare then.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import run
from bench_gzip import cpuSeconds

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# The backend


async def _serveEcho(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        while True:
            first, second = await reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
            mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
            payload = await reader.readexactly(length)
            if mask != b"\0\0\0\0":
                key4 = (mask * (length // 4 + 1))[:length]
                payload = (
                    int.from_bytes(payload, "big") ^ int.from_bytes(key4, "big")
                ).to_bytes(length, "big")
            if length < 126:
                header = struct.pack("!BB", first, length)
            elif length < 65536:
                header = struct.pack("!BBH", first, 126, length)
            else:
                header = struct.pack("!BBQ", first, 127, length)
            writer.write(header + payload)
            if first & 0x0F == 8:
                await writer.drain()
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


def serveBackend(port: int) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_serveEcho, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# The load


async def _oneClient(
    port: int, size: int, until: float, latencies: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /echo HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    expected = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    if not head.startswith(b"HTTP/1.1 101 ") or expected not in head:
        errors.append(head[:80].decode("latin-1"))
        writer.close()
        return
    payload = b"m" * size
    # A zero mask key: the masked payload is the payload (valid framing).
    frame = struct.pack("!BB", 0x81, 0x80 | size) + b"\0\0\0\0" + payload
    echo = struct.pack("!BB", 0x81, size) + payload
    clock = time.perf_counter
    while clock() < until:
        start = clock()
        writer.write(frame)
        got = await reader.readexactly(len(echo))
        latencies.append(clock() - start)
        if got != echo:
            errors.append("bad echo")
            break
    writer.write(struct.pack("!BB", 0x88, 0x82) + b"\0\0\0\0" + struct.pack("!H", 1000))
    try:
        await reader.readexactly(4)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


def runLoad(port: int, seconds: float, connections: int, size: int) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []

    async def main() -> float:
        until = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _oneClient(port, size, until, latencies, errors)
                for _ in range(connections)
            )
        )
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
    return {
        "messages": len(latencies),
        "mps": len(latencies) / elapsed,
        "p99_ms": p99 * 1000,
        "errors": len(errors),
    }


# The run


def nginxConfig(workdir: Path, port: int, backend: int) -> Path:
    conf = workdir / "nginx-ws.conf"
    conf.write_text(
        run.nginxCommon(workdir, "nginx-ws")
        + f"""
http {{
    access_log off;
    {run.nginxTemp(workdir, "nginx-ws")}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }}
    }}
}}
"""
    )
    return conf


def loadArgv(port: int, seconds: float, connections: int, size: int) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()), "--load", str(port),
        "--seconds", str(seconds), "--connections", str(connections),
        "--size", str(size),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=32, help="message bytes (< 126)")
    parser.add_argument("--serve-backend", type=int, metavar="PORT")
    parser.add_argument("--load", type=int, metavar="PORT")
    args = parser.parse_args()
    if args.serve_backend:
        serveBackend(args.serve_backend)
        return
    if args.load:
        print(json.dumps(runLoad(args.load, args.seconds, args.connections, args.size)))
        return
    if not 0 < args.size < 126:
        raise SystemExit("--size must be between 1 and 125")
    run.ensureTools(os.geteuid() == 0)
    procs = run.Processes()
    workdir = Path(tempfile.mkdtemp(prefix="lbproxy-ws-bench-"))
    raw: dict[str, list[dict[str, float]]] = {"nginx": [], "lbproxy": []}
    try:
        backend = run.freePort()
        proc = procs.start(
            "backend", [sys.executable, str(Path(__file__).resolve()),
                        "--serve-backend", str(backend)], run.LOAD_CPU, workdir,
        )
        run.waitForPort(backend, proc, "backend", workdir)
        ports = {"nginx": run.freePort(), "lbproxy": run.freePort()}
        proc = procs.start(
            "nginx", [run.which("nginx") or "nginx", "-c",
                      str(nginxConfig(workdir, ports["nginx"], backend))],
            run.PROXY_CPU, workdir,
        )
        run.waitForPort(ports["nginx"], proc, "nginx", workdir)
        config = run.lbproxyConfig(workdir, "lbproxy", ports["lbproxy"], backend, 1)
        proc = procs.start(
            "lbproxy", run.twistdArgv(sys.executable, "lbproxy", config, workdir),
            run.PROXY_CPU, workdir,
        )
        run.waitForPort(ports["lbproxy"], proc, "lbproxy", workdir)
        pids = {name: p.pid for name, p in procs.procs}
        for round in range(args.rounds):
            for row in ("nginx", "lbproxy"):
                cpu = cpuSeconds(pids[row])
                out = run.subprocess.run(
                    ["taskset", "-c", run.LOAD_CPU]
                    + loadArgv(ports[row], args.seconds, args.connections, args.size),
                    check=True, capture_output=True, timeout=args.seconds + 60,
                )
                result = json.loads(out.stdout)
                result["cpu_us"] = (
                    (cpuSeconds(pids[row]) - cpu) / max(1, result["messages"]) * 1e6
                )
                raw[row].append(result)
                run.log(f"round {round + 1} {row}: {result['mps']:.0f} msg/s, "
                        f"p99 {result['p99_ms']:.2f} ms, {result['cpu_us']:.1f} us "
                        f"CPU/msg, {result['errors']} errors")
    finally:
        procs.stopAll()
    results = run.HERE / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results / f"websocket-{stamp}.json").write_text(json.dumps(raw, indent=1))
    base = statistics.median(r["mps"] for r in raw["nginx"])
    basep99 = statistics.median(r["p99_ms"] for r in raw["nginx"])
    basecpu = statistics.median(r["cpu_us"] for r in raw["nginx"])
    print(
        f"WebSocket echo, {args.connections} connections, {args.size}-byte messages, "
        f"{args.rounds} x {args.seconds:g} s (medians; proxy on CPU {run.PROXY_CPU}, "
        f"load and backend on CPU {run.LOAD_CPU})"
    )
    print(
        f"| {'row':<8} | {'msg/s':>8} | {'p99 ms':>7} | {'CPU us/msg':>10} | "
        f"{'errors':>6} | {'/ nginx':>7} | {'p99 / nginx':>11} | {'nginx CPU / CPU':>15} |"
    )
    for row in ("nginx", "lbproxy"):
        mps = statistics.median(r["mps"] for r in raw[row])
        p99 = statistics.median(r["p99_ms"] for r in raw[row])
        cpu = statistics.median(r["cpu_us"] for r in raw[row])
        errors = sum(int(r["errors"]) for r in raw[row])
        print(f"| {row:<8} | {mps:>8.0f} | {p99:>7.2f} | {cpu:>10.1f} | {errors:>6} | "
              f"{mps / base:>7.2f} | {p99 / basep99:>11.2f} | {basecpu / cpu:>15.2f} |")


if __name__ == "__main__":
    main()
