"""
lbproxy's benchmark: one command, loopback only, bounded in time.

    python benchmarks/run.py                 # the full run (about 7 minutes)
    python benchmarks/run.py --quick         # 1 round of 3 s, for a smoke test
    python benchmarks/run.py --rows lbproxy,nginx --sizes tiny

It finds nginx, HAProxy and wrk (and installs them with apt-get when they
are missing and it runs as root), starts one nginx backend that serves
C{/tiny} (C{hello\\n}), C{/100k} and C{/10m}, then measures, interleaved
(every round visits every row and size in turn), with wrk at 50
connections:

    none            wrk straight to the backend
    nginx           nginx, one process, upstream keepalive
    haproxy         HAProxy, one thread
    twisted-stock   twisted.web.proxy.ReverseProxyResource (CPython)
    lbproxy         lbproxy on CPython (this interpreter)
    lbproxy-pypy    lbproxy on PyPy (a venv it creates with pypy3)
    lbproxy-pypy-gc the same with PYPY_GC_NURSERY=64MB (see docs/performance.rst)
    lbproxy-w2      lbproxy on CPython with workers = 2
    lbproxy-limits  lbproxy on CPython with limit_rate and limit_conn on
                    its vhost, never reached (LIMITS): what checking them
                    costs, not refusals (a 429 would count as an error)
    lbproxy-caps    lbproxy on CPython with max_conns=1000 on its server
                    (never reached), a queue, eject_on = 5xx and
                    retry_budget = 20% (CAPS): what backend protection
                    costs when nothing waits

Two more "sizes" measure HTTPS, on the rows that terminate TLS (nginx,
lbproxy on CPython and PyPy, lbproxy-w2; the same ECDSA P-256
certificate, made for the run):

    https           keep-alive HTTPS, /tiny (wrk over TLS)
    https-new       a new TLS connection for each request (wrk with
                    Connection: close; wrk resumes no session, so every
                    request costs a full handshake): handshakes per second

HTTPS_SIZES says, per such size, the path and the headers; a row takes
part when it has a TLS port (the nginx row gets a second server with
"listen ssl http2", the lbproxy rows a listen_tls).

And one HTTP/2 "size", on the same TLS ports, measured with h2load
(nghttp2-client) instead of wrk:

    h2              /tiny over HTTP/2: one connection per client, H2_STREAMS
                    streams in flight on each, --connections in flight in
                    all (as many as the wrk rows)

CPU pinning (taskset): the proxy under test runs on CPU 0; wrk and the
backend share CPU 1.  The workers = 2 row cannot fit on one CPU, so it is
pinned to CPUs 0-1 and shares CPU 1 with wrk and the backend: compare it
with the lbproxy row with that in mind.

Every process is started by this script, remembered by PID, and stopped
by that PID at the end (also on Ctrl-C).  The table gives medians over
the rounds; the raw figures go to benchmarks/results/ as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIZES = {"tiny": "/tiny", "100k": "/100k", "10m": "/10m"}
#: The HTTPS measurements: the path and wrk's extra headers of each, over
#: the TLS port of the rows that have one.
HTTPS_SIZES: dict[str, tuple[str, tuple[str, ...]]] = {
    "https": ("/tiny", ()),
    "https-new": ("/tiny", ("Connection: close",)),
}
#: The HTTP/2 measurements (h2load over the TLS port): the path of each.
H2_SIZES = {"h2": "/tiny"}
#: Streams each h2load client keeps in flight on its one connection (the
#: clients are --connections / H2_STREAMS, so that as many requests are in
#: flight as in the wrk rows).
H2_STREAMS = 5
#: The rows that terminate TLS (with a TLS port of their own).
TLS_ROWS = ("nginx", "lbproxy", "lbproxy-pypy", "lbproxy-pypy-gc", "lbproxy-w2")
ROWS = [
    "none",
    "nginx",
    "haproxy",
    "twisted-stock",
    "lbproxy",
    "lbproxy-pypy",
    "lbproxy-pypy-gc",
    "lbproxy-w2",
    "lbproxy-limits",
    "lbproxy-caps",
]

#: The vhost lines of the lbproxy-limits row: a rate and requests in
#: flight per client far above what wrk sends from its one address (at
#: most a few tens of thousands of requests a second, --connections in
#: flight).
LIMITS = "limit_rate = 1000000/s\nlimit_burst = 1000\nlimit_conn = 1000\n"

#: The server options and upstream lines of the lbproxy-caps row: a cap
#: far above wrk's --connections, so that nothing waits.
CAPS = ("max_conns=1000", "queue = 100\neject_on = 5xx\nretry_budget = 20%\n")

#: The PyPy nursery of the lbproxy-pypy-gc row: PyPy's default (4 MB, or
#: half the L2 cache) makes a minor collection every few hundred requests.
PYPY_NURSERY = "64MB"
PROXY_CPU = "0"
LOAD_CPU = "1"
ALL_CPUS = "0-1"


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# Tools


def ensureTools(install: bool) -> None:
    missing = [t for t in ("nginx", "haproxy", "wrk", "taskset") if not which(t)]
    if not missing:
        return
    if install and os.geteuid() == 0 and which("apt-get"):
        log(f"installing {' '.join(missing)} with apt-get")
        subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "nginx", "haproxy", "wrk", "util-linux"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
        return
    raise SystemExit(
        f"missing tools: {' '.join(missing)}; install them with "
        "'apt-get install nginx haproxy wrk' (or run this as root)"
    )


def which(name: str) -> Optional[str]:
    return shutil.which(name) or next(
        (
            str(p)
            for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
            if p.exists()
        ),
        None,
    )


def pypyVenv(path: Path) -> Optional[Path]:
    """
    A PyPy venv with lbproxy installed (editable), created when missing.
    """
    python = path / "bin" / "python"
    if python.exists():
        check = subprocess.run(
            [str(python), "-c", "import lbproxy, twisted"], capture_output=True
        )
        if check.returncode == 0:
            return python
    pypy = which("pypy3")
    if pypy is None:
        log("no pypy3 (apt-get install pypy3): skipping lbproxy-pypy")
        return None
    log(f"creating a PyPy venv in {path}")
    subprocess.run([pypy, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", str(REPO)], check=True
    )
    return python


# Processes


class Processes:
    """
    Every process the benchmark starts, stopped by PID.
    """

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], cpus: str, workdir: Path, env: Any = None
    ) -> subprocess.Popen[bytes]:
        out = open(workdir / f"{name}.out", "wb")
        proc = subprocess.Popen(
            ["taskset", "-c", cpus] + argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
        out.close()
        self.procs.append((name, proc))
        return proc

    def stopAll(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {proc.pid}) ignored SIGTERM: SIGKILL")
                proc.kill()
                proc.wait(5)
        self.procs = []


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waitForPort(port: int, proc: subprocess.Popen[bytes], name: str, workdir: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"{name} exited with {proc.returncode}:\n"
                + (workdir / f"{name}.out").read_text(errors="replace")[-3000:]
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not listen on {port} within 60s")


# Configurations


def nginxUser() -> str:
    return "user root;\n" if os.geteuid() == 0 else ""


def nginxCommon(workdir: Path, name: str) -> str:
    return f"""
{nginxUser()}daemon off;
master_process off;
worker_processes 1;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.error.log warn;
events {{ worker_connections 20000; }}
"""


def nginxTemp(workdir: Path, name: str) -> str:
    t = workdir / f"{name}-tmp"
    t.mkdir(exist_ok=True)
    return (
        f"client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; "
        f"fastcgi_temp_path {t}/fcgi; uwsgi_temp_path {t}/uwsgi; "
        f"scgi_temp_path {t}/scgi;"
    )


def backendConfig(
    workdir: Path,
    port: int,
    files: Optional[dict[str, bytes]] = None,
    defaultType: str = "application/octet-stream",
) -> Path:
    """
    The nginx backend: C{/tiny} (C{hello\\n}), and C{files} (by default
    C{/100k} and C{/10m}, of C{x}) served as C{defaultType}.
    """
    www = workdir / "www"
    www.mkdir(exist_ok=True)
    if files is None:
        files = {"100k": b"x" * 100 * 1024, "10m": b"x" * 10 * 1024 * 1024}
    for name, content in files.items():
        (www / name).write_bytes(content)
    conf = workdir / "backend.conf"
    conf.write_text(
        nginxCommon(workdir, "backend")
        + f"""
http {{
    access_log off;
    {nginxTemp(workdir, "backend")}
    keepalive_requests 10000000;
    default_type {defaultType};
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /tiny {{ return 200 "hello\\n"; }}
        location / {{ root {www}; }}
    }}
}}
"""
    )
    return conf


def nginxProxyConfig(
    workdir: Path,
    port: int,
    backend: int,
    name: str = "nginx-proxy",
    extra: str = "",
    tls: Optional[tuple[int, Path, Path]] = None,
    servers: Optional[list[str]] = None,
    upstreamExtra: str = "",
) -> Path:
    """
    nginx as the proxy, with C{extra} directives in its C{http} block, and
    with C{tls} (a port, a certificate chain and its key) the same proxy
    over HTTPS on that port (TLS 1.2 and 1.3, session cache and tickets,
    as lbproxy).

    @param servers: the upstream's C{HOST:PORT}s (and their options);
        by default the one backend on 127.0.0.1.
    @param upstreamExtra: more directives in the upstream block.
    """
    upstream = "\n".join(
        f"        server {server};" for server in servers or [f"127.0.0.1:{backend}"]
    )
    if tls is not None:
        tlsPort, chain, key = tls
        extra += f"""
    ssl_certificate {chain};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server {{
        listen 127.0.0.1:{tlsPort} ssl http2 backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }}
    }}"""
    conf = workdir / f"{name}.conf"
    conf.write_text(
        nginxCommon(workdir, name)
        + f"""
http {{
    access_log off;
    {nginxTemp(workdir, name)}
    keepalive_requests 10000000;
    {extra}
    upstream app {{
        {upstreamExtra}
{upstream}
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""
    )
    return conf


def haproxyConfig(workdir: Path, port: int, backend: int) -> Path:
    conf = workdir / "haproxy.cfg"
    conf.write_text(
        f"""
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:{backend}
"""
    )
    return conf


def lbproxyConfig(
    workdir: Path,
    name: str,
    port: int,
    backend: int,
    workers: int,
    vhost: str = "",
    tls: Optional[tuple[int, Path, Path]] = None,
    upstream: tuple[str, str] = ("", ""),
) -> Path:
    """
    lbproxy as the proxy, with C{vhost} lines added to its vhost, and with
    C{tls} (a port, a certificate chain and its key) an HTTPS listener on
    that port too; C{upstream} is the options of its server line and the
    lines added to its upstream.
    """
    serverOptions, upstreamLines = upstream
    tlsLines = ""
    if tls is not None:
        tlsPort, chain, key = tls
        tlsLines = (
            f"listen_tls = tcp:{tlsPort}:interface=127.0.0.1:backlog=4096\n"
            f"tls_certificate = {chain}\ntls_key = {key}\n"
        )
    conf = workdir / f"{name}.ini"
    conf.write_text(
        f"""
[lbproxy]
listen = tcp:{port}:interface=127.0.0.1:backlog=4096
{tlsLines}access_log = off
workers = {workers}

[upstream:app]
servers = 127.0.0.1:{backend} {serverOptions}
keepalive = 64
{upstreamLines}
[vhost:app]
default = yes
upstream = app
{vhost}
"""
    )
    return conf


def benchCertificate(workdir: Path) -> tuple[Path, Path]:
    """
    A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost,
    made for this run (the TLS rows share it).

    @return: the certificate and key files.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    chain = workdir / "bench-cert.pem"
    chain.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyPath = workdir / "bench-key.pem"
    keyPath.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return chain, keyPath


def twistdArgv(python: str, name: str, config: Path, workdir: Path) -> list[str]:
    return [
        python,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        f"--logfile={workdir / (name + '.log')}",
        "lbproxy",
        "--config",
        str(config),
    ]


# wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parseWrk(out: str) -> dict[str, float]:
    result: dict[str, float] = {"rps": 0.0, "p50": float("nan"), "p99": float("nan")}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        result["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            result[key] = _ms(m.group(1))
    errors = 0
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    result["errors"] = errors
    m = re.search(r"(\d+) requests in", out)
    result["requests"] = int(m.group(1)) if m else 0
    return result


def runWrk(
    url: str, seconds: float, connections: int, headers: Sequence[str] = ()
) -> dict[str, float]:
    argv = [
        "taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}",
        f"-d{seconds:g}s", "--timeout", "10s", "--latency",
    ]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60
    )
    return parseWrk(proc.stdout)


def parseH2load(out: str) -> dict[str, float]:
    """
    h2load's figures as L{parseWrk}'s: requests per second, errors (failed,
    errored, timed out or not 2xx); h2load gives no percentiles, so p50 is
    its mean time per request and p99 is not known.
    """
    result: dict[str, float] = {"rps": 0.0, "p50": float("nan"), "p99": float("nan")}
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    if m:
        result["rps"] = float(m.group(1))
    m = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if m:
        result["p50"] = _ms(m.group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    errors = 0
    if m:
        result["requests"] = int(m.group(2))
        errors += int(m.group(3)) + int(m.group(4)) + int(m.group(5))
    else:
        result["requests"] = 0
    m = re.search(r"status codes: (\d+) 2xx", out)
    if m and m.group(1) != str(result["requests"]):
        errors += 1
    result["errors"] = errors
    return result


def runH2load(url: str, seconds: float, connections: int) -> dict[str, float]:
    """
    h2load on the load CPU: C{connections} requests in flight, over
    C{connections / H2_STREAMS} clients of one HTTP/2 connection each.
    """
    clients = max(1, connections // H2_STREAMS)
    argv = [
        "taskset", "-c", LOAD_CPU, "h2load", "-t1", f"-c{clients}",
        f"-m{H2_STREAMS}", f"-D{seconds:g}", url,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    return parseH2load(proc.stdout)


# The run


def interruptOnTerm() -> None:
    """
    Turn SIGTERM into L{KeyboardInterrupt}, so that a run stopped either
    way stops what it started.
    """

    def onSignal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, onSignal)


def startBackend(procs: Processes, workdir: Path, conf: Path, port: int) -> None:
    """
    Start the nginx backend of C{conf} on the load CPU, and wait until it
    listens on C{port}.
    """
    p = procs.start("backend", [which("nginx") or "nginx", "-c", str(conf)], LOAD_CPU, workdir)
    waitForPort(port, p, "backend", workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per row and size, once")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--sizes", default=",".join([*SIZES, *HTTPS_SIZES, *H2_SIZES]))
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, 1 s warm-up")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument(
        "--pypy-venv",
        default=str(Path.home() / ".cache" / "lbproxy-bench" / "pypy-venv"),
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3.0, 1.0
    rows = [r for r in args.rows.split(",") if r]
    sizes = [s for s in args.sizes.split(",") if s]
    for r in rows:
        if r not in ROWS:
            raise SystemExit(f"unknown row {r!r}; rows: {', '.join(ROWS)}")
    for s in sizes:
        if s not in SIZES and s not in HTTPS_SIZES and s not in H2_SIZES:
            raise SystemExit(
                f"unknown size {s!r}; sizes: {', '.join([*SIZES, *HTTPS_SIZES, *H2_SIZES])}"
            )
    if any(s in H2_SIZES for s in sizes) and not which("h2load"):
        raise SystemExit("the h2 size needs h2load: sh .ci/tools.sh nghttp2-client")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)")
    ensureTools(not args.no_install)

    workdir = Path(tempfile.mkdtemp(prefix="lbproxy-bench-"))
    procs = Processes()
    interruptOnTerm()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    ports: dict[str, int] = {}
    tlsPorts: dict[str, int] = {}
    notes: dict[str, str] = {}
    wantTLS = any(size in HTTPS_SIZES or size in H2_SIZES for size in sizes)

    def tlsFor(row: str) -> Optional[tuple[int, Path, Path]]:
        """
        The TLS port, certificate and key of C{row}, when it has one.
        """
        if not wantTLS or row not in TLS_ROWS:
            return None
        tlsPorts[row] = freePort()
        return (tlsPorts[row], *certificate)

    def urlOf(row: str, size: str) -> Optional[str]:
        if size in H2_SIZES:
            port = tlsPorts.get(row)
            return None if port is None else f"https://127.0.0.1:{port}{H2_SIZES[size]}"
        if size in HTTPS_SIZES:
            port = tlsPorts.get(row)
            return None if port is None else f"https://127.0.0.1:{port}{HTTPS_SIZES[size][0]}"
        return f"http://127.0.0.1:{ports[row]}{SIZES[size]}"

    def headersOf(size: str) -> tuple[str, ...]:
        return HTTPS_SIZES[size][1] if size in HTTPS_SIZES else ()

    def measure(size: str, url: str, seconds: float) -> dict[str, float]:
        if size in H2_SIZES:
            return runH2load(url, seconds, args.connections)
        return runWrk(url, seconds, args.connections, headersOf(size))

    try:
        certificate = benchCertificate(workdir)
        backend = freePort()
        startBackend(procs, workdir, backendConfig(workdir, backend), backend)
        ports["none"] = backend
        for row in rows:
            if row == "none":
                continue
            port = freePort()
            if row == "nginx":
                argv = [
                    which("nginx") or "nginx", "-c",
                    str(nginxProxyConfig(workdir, port, backend, tls=tlsFor(row))),
                ]
                cpus = PROXY_CPU
            elif row == "haproxy":
                argv = [which("haproxy") or "haproxy", "-db", "-f", str(haproxyConfig(workdir, port, backend))]
                cpus = PROXY_CPU
            elif row == "twisted-stock":
                argv = [sys.executable, str(HERE / "stock_proxy.py"), str(port), str(backend)]
                cpus = PROXY_CPU
            elif row in ("lbproxy", "lbproxy-w2", "lbproxy-limits", "lbproxy-caps"):
                workers = 2 if row == "lbproxy-w2" else 1
                config = lbproxyConfig(
                    workdir,
                    row,
                    port,
                    backend,
                    workers,
                    vhost=LIMITS if row == "lbproxy-limits" else "",
                    tls=tlsFor(row),
                    upstream=CAPS if row == "lbproxy-caps" else ("", ""),
                )
                check = subprocess.run(
                    twistdArgv(sys.executable, row, config, workdir)[:-2]
                    + ["--check", "--config", str(config)],
                    capture_output=True, text=True, env=env, cwd=workdir,
                )
                if check.returncode != 0:
                    notes[row] = "not run: " + (check.stderr.strip().splitlines() or ["config refused"])[-1].strip()
                    log(f"{row}: {notes[row]}")
                    continue
                argv = twistdArgv(sys.executable, row, config, workdir)
                cpus = ALL_CPUS if workers > 1 else PROXY_CPU
            elif row in ("lbproxy-pypy", "lbproxy-pypy-gc"):
                python = pypyVenv(Path(args.pypy_venv))
                if python is None:
                    notes[row] = "not run: no pypy3"
                    continue
                config = lbproxyConfig(workdir, row, port, backend, 1, tls=tlsFor(row))
                argv = twistdArgv(str(python), row, config, workdir)
                cpus = PROXY_CPU
            else:
                raise AssertionError(row)
            rowEnv = env if row.startswith("lbproxy") else None
            if row == "lbproxy-pypy-gc":
                rowEnv = dict(env, PYPY_GC_NURSERY=PYPY_NURSERY)
            elif rowEnv is not None:
                rowEnv = {k: v for k, v in env.items() if k != "PYPY_GC_NURSERY"}
            p = procs.start(row, argv, cpus, workdir, env=rowEnv)
            waitForPort(port, p, row, workdir)
            if row in tlsPorts:
                waitForPort(tlsPorts[row], p, row, workdir)
            ports[row] = port
        active = [r for r in rows if r in ports]
        log(f"work directory {workdir}; rows {', '.join(active)}")

        measured = [(size, row, urlOf(row, size)) for size in sizes for row in active]
        if args.warmup > 0:
            for size, _row, url in measured:
                if url is not None:
                    measure(size, url, args.warmup)
        raw: dict[str, dict[str, list[dict[str, float]]]] = {
            r: {s: [] for s in sizes} for r in active
        }
        for n in range(args.rounds):
            log(f"round {n + 1} of {args.rounds}")
            for size, row, url in measured:
                if url is None:
                    continue
                result = measure(size, url, args.duration)
                raw[row][size].append(result)
                log(f"  {size:>9} {row:<16} {result['rps']:>10.0f} req/s  p99 {result['p99']:.2f} ms  errors {result['errors']:g}")
        report(raw, rows, sizes, notes, args)
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        (out / f"{stamp}.json").write_text(
            json.dumps({"args": vars(args), "raw": raw, "notes": notes}, indent=1)
        )
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        procs.stopAll()
        shutil.rmtree(workdir, ignore_errors=True)


def report(
    raw: dict[str, dict[str, list[dict[str, float]]]],
    rows: list[str],
    sizes: list[str],
    notes: dict[str, str],
    args: Any,
) -> None:
    def med(row: str, size: str, key: str) -> float:
        values = [r[key] for r in raw[row][size] if r[key] == r[key]]
        return statistics.median(values) if values else float("nan")

    print(
        f"\nlbproxy benchmark: wrk -t1 -c{args.connections}, {args.rounds} interleaved "
        f"round(s) of {args.duration:g} s (warm-up {args.warmup:g} s per row and size); "
        f"proxy on CPU {PROXY_CPU}, wrk and the nginx backend on CPU {LOAD_CPU} "
        f"(lbproxy-w2 on CPUs {ALL_CPUS}); medians.\n"
    )
    if any(size in H2_SIZES for size in sizes):
        print(
            f"h2: h2load -t1 -c{max(1, args.connections // H2_STREAMS)} -m{H2_STREAMS} over the TLS port "
            "(one HTTP/2 connection per client); its p50 column is h2load's mean "
            "time per request, and it gives no p99.\n"
        )
    header = (
        f"| {'size':<9} | {'row':<16} | {'req/s':>9} | {'p50 ms':>8} | {'p99 ms':>8} "
        f"| {'errors':>6} | {'/ nginx':>7} | {'/ stock':>7} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for size in sizes:
        base = med("nginx", size, "rps") if "nginx" in raw else float("nan")
        stock = med("twisted-stock", size, "rps") if "twisted-stock" in raw else float("nan")
        for row in rows:
            if row not in raw:
                print(f"| {size:<9} | {row:<16} | {notes.get(row, 'not run'):<50}")
                continue
            if not raw[row][size]:
                # (A row without a TLS listener, for an HTTPS size.)
                continue
            rps = med(row, size, "rps")
            ratio = rps / base if base == base and base else float("nan")
            toStock = rps / stock if stock == stock and stock else float("nan")
            errors = sum(r["errors"] for r in raw[row][size])
            print(
                f"| {size:<9} | {row:<16} | {rps:>9.0f} | {med(row, size, 'p50'):>8.2f} | "
                f"{med(row, size, 'p99'):>8.2f} | {errors:>6g} | {ratio:>7.2f} | {toStock:>7.2f} |"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
