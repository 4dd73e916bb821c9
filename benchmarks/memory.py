"""
lbproxy's memory: resident size idle, with many idle keep-alive client
connections, and after a long run under load; compared, per idle
connection, with a plain Twisted Site (Twisted's own HTTPChannel).

    python benchmarks/memory.py                      # 10,000 connections, 10 minute run
    python benchmarks/memory.py --connections 2000 --run 60

Loopback only; every process it starts is stopped by its PID.  Needs nginx
and wrk (see run.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402

_PLAIN_SITE = """
import sys
from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.static import Data
root = Data(b"hello\\n", "text/plain")
root.isLeaf = True
site = Site(root)
site.log = lambda request: None
reactor.listenTCP(int(sys.argv[1]), site, backlog=4096, interface="127.0.0.1")
reactor.run()
"""


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def openIdle(port: int, count: int, deadline: float) -> list[socket.socket]:
    """
    Open C{count} connections, make one request on each, read its
    response, and leave the connections open and idle.
    """
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    pending: dict[socket.socket, bytes] = {}
    request = b"GET /tiny HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for n in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        s.setblocking(False)
        socks.append(s)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
        # Keep the listen backlog and the read side drained as we go.
        if n % 200 == 199:
            _drain(sel, pending, 0)
    while pending and time.monotonic() < deadline:
        _drain(sel, pending, 0.5)
    if pending:
        raise SystemExit(f"{len(pending)} connections got no complete response")
    sel.close()
    return socks


def _drain(sel: selectors.BaseSelector, pending: dict[socket.socket, bytes], timeout: float) -> None:
    for key, _ in sel.select(timeout):
        s = key.fileobj
        assert isinstance(s, socket.socket)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        if not data:
            raise SystemExit(f"the server closed a connection: {pending[s][:200]!r}")
        pending[s] += data
        if pending[s].endswith(b"hello\n"):
            del pending[s]
            sel.unregister(s)


def measure(name: str, pid: int, port: int, count: int) -> tuple[int, int]:
    time.sleep(1)
    idle = rss(pid)
    socks = openIdle(port, count, time.monotonic() + 120)
    time.sleep(2)
    loaded = rss(pid)
    for s in socks:
        s.close()
    print(
        f"{name:<22} idle {idle / 2**20:7.1f} MiB   with {count} idle connections "
        f"{loaded / 2**20:7.1f} MiB   per connection {(loaded - idle) / count:7.0f} bytes"
    )
    return idle, loaded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--run", type=float, default=600.0, help="seconds of load for the long run")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    bench.ensureTools(True)
    workdir = Path(tempfile.mkdtemp(prefix="lbproxy-mem-"))
    procs = bench.Processes()
    env = dict(os.environ, PYTHONPATH=str(bench.REPO / "src"))
    try:
        backend = bench.freePort()
        p = procs.start("backend", [bench.which("nginx") or "nginx", "-c", str(bench.backendConfig(workdir, backend))], bench.LOAD_CPU, workdir)
        bench.waitForPort(backend, p, "backend", workdir)

        plainPort = bench.freePort()
        (workdir / "plain.py").write_text(_PLAIN_SITE)
        plain = procs.start("plain", [sys.executable, str(workdir / "plain.py"), str(plainPort)], bench.PROXY_CPU, workdir)
        bench.waitForPort(plainPort, plain, "plain", workdir)
        measure("twisted Site", plain.pid, plainPort, args.connections)

        port = bench.freePort()
        config = bench.lbproxyConfig(workdir, "lbproxy", port, backend, 1)
        lb = procs.start("lbproxy", bench.twistdArgv(sys.executable, "lbproxy", config, workdir), bench.PROXY_CPU, workdir, env=env)
        bench.waitForPort(port, lb, "lbproxy", workdir)
        measure("lbproxy", lb.pid, port, args.connections)

        before = rss(lb.pid)
        print(f"lbproxy before the long run: {before / 2**20:.1f} MiB; {args.run:g} s of wrk -c50 on /tiny and /100k ...")
        slices = max(1, int(args.run // 30))
        for n in range(slices):
            path = "/tiny" if n % 2 == 0 else "/100k"
            result = bench.runWrk(f"http://127.0.0.1:{port}{path}", args.run / slices, 50)
            print(f"  {n + 1:>2}/{slices} {path:<5} {result['rps']:8.0f} req/s  errors {result['errors']:g}  RSS {rss(lb.pid) / 2**20:7.1f} MiB")
        time.sleep(2)
        after = rss(lb.pid)
        print(f"lbproxy after the long run: {after / 2**20:.1f} MiB (grew {(after - before) / 2**20:+.1f} MiB)")
    finally:
        procs.stopAll()


if __name__ == "__main__":
    main()
