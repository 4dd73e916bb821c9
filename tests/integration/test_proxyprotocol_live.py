"""
The PROXY protocol on real sockets, with HAProxy (Debian's C{haproxy},
installed by C{sh .ci/tools.sh haproxy}) as the peer: in front of a
C{haproxy:} listener (C{send-proxy-v2}, plain and TLS with HTTP/2), and
behind an upstream with C{send_proxy_protocol} (a frontend with
C{accept-proxy} that names the client it was given in a header); and a
C{haproxy:} listener shared by C{workers = 2}.

Each HAProxy is started by the test with its own configuration in the
test's directory, in the foreground (C{-db}), waited for by polling its
port (a bounded number of times), and stopped by its PID.  Clients
connect from other loopback addresses (127.0.N.M, which Linux routes to
the loopback interface), so that the client HAProxy names is not its own
address.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from lbproxy.config import parseConfigText
from lbproxy.service import LoadBalancerService
from lbproxy.testing import startServer
from tests.certificates import writeSelfSigned
from tests.integration.ports import ReservedPort
from tests.integration.test_h2 import _H2Client
from tests.integration.test_realip_live import _Reporting as _Headers
from tests.integration.test_workers import startWorkers, workersPort

#: Seconds any one step may take before the test fails.
WAIT = 10

#: How often HAProxy's port is tried while it starts.
POLL = 0.05


def haproxyProgram() -> str:
    """
    Where C{haproxy} is (Debian puts it in /usr/sbin, which a user's PATH
    may not have).
    """
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    program = shutil.which("haproxy", path=path)
    if program is None:
        raise AssertionError("haproxy is missing: run sh .ci/tools.sh haproxy")
    return program


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[Any] = Deferred()
        self.done = False

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.done = True
        self.ended.callback(reason)


class _Probe(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


class _Reporting(_Headers):
    """
    A backend answering with its name and the headers that say who the
    client was: C{X-Forwarded-For} (lbproxy's) and C{X-Client-Src},
    C{X-Client-Dst} (those the HAProxy of the outbound tests sets from
    the PROXY header it read).  It keeps the C{X-Client-Src} of the
    health probes it gets.
    """

    headers = (b"x-forwarded-for", b"x-client-src", b"x-client-dst")

    def __init__(self, name: bytes) -> None:
        _Headers.__init__(self, name)
        self.probes: list[bytes] = []

    def render(self, request: Any) -> bytes:
        if request.path == b"/healthz":
            self.probes.append(request.getHeader(b"x-client-src") or b"-")
        return _Headers.render(self, request)


class _Raw(Protocol):
    """
    A client that sends bytes of its own and keeps what it gets back
    until the connection closes.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.received)


class _HAProxyMixin:
    """
    Starting HAProxy and lbproxy for the tests below.
    """

    timeout = 60

    @inlineCallbacks
    def startHAProxy(self, config: str) -> Any:
        """
        Run HAProxy on C{config} (C{{port}} in it becomes a port of
        127.0.0.1 reserved for it: HAProxy refuses port 0) until the test
        ends.

        @return: a L{Deferred} firing with the port once it accepts
            connections.
        """
        program = haproxyProgram()
        reserved = ReservedPort()
        self.addCleanup(reserved.close)  # type: ignore[attr-defined]
        port = reserved.port
        directory = FilePath(self.mktemp())  # type: ignore[attr-defined]
        directory.makedirs()
        path = directory.child("haproxy.cfg")
        path.setContent(config.replace("{port}", str(port)).encode("ascii"))
        output = _Output()
        process = reactor.spawnProcess(
            output, program, [program, "-db", "-f", path.path], env={}
        )
        self.haproxy = output

        @inlineCallbacks
        def stop() -> Any:
            if output.done:
                return
            process.signalProcess("TERM")
            killer = reactor.callLater(WAIT, process.signalProcess, "KILL")
            yield output.ended.addErrback(lambda f: f.trap(ProcessDone, ProcessTerminated))
            if killer.active():
                killer.cancel()

        self.addCleanup(stop)  # type: ignore[attr-defined]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1)
        for _ in range(int(WAIT / POLL)):
            if output.done:
                raise AssertionError(f"haproxy ended: {output.output.decode(errors='replace')}")
            try:
                yield connectProtocol(endpoint, _Probe())
            except Exception:
                yield deferLater(reactor, POLL, lambda: None)
            else:
                return port
        raise AssertionError(f"haproxy not listening within {WAIT}s")

    @inlineCallbacks
    def startProxy(self, text: str) -> Any:
        """
        Run lbproxy on the configuration C{text}.

        @return: a L{Deferred} firing with its listening ports.
        """
        self.service = LoadBalancerService(parseConfigText(text, "proxyprotocol.ini"), reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)  # type: ignore[attr-defined]
        ports = yield self.service.whenListening().addTimeout(WAIT, reactor)
        return [p.getHost().port for p in ports]

    @inlineCallbacks
    def startBackends(self, *names: bytes) -> Any:
        backends = []
        for name in names:
            resource = _Reporting(name)
            server = yield startServer(resource, reactor)
            self.addCleanup(server.stop)  # type: ignore[attr-defined]
            backends.append((resource, server.port))
        return backends

    @inlineCallbacks
    def get(self, port: int, source: str, agent: Optional[Agent] = None) -> Any:
        """
        GET C{/} on 127.0.0.1:C{port} from the address C{source}.

        @return: a L{Deferred} firing with the fields of the backend's
            answer.
        """
        if agent is None:
            connections = HTTPConnectionPool(reactor, persistent=False)
            agent = Agent(reactor, pool=connections, bindAddress=(source, 0))
        response = yield agent.request(
            b"GET",
            b"http://127.0.0.1:%d/" % (port,),
            Headers({b"host": [b"app.example"]}),
        ).addTimeout(WAIT, reactor)
        body = yield readBody(response).addTimeout(WAIT, reactor)
        self.assertEqual(response.code, 200, body)  # type: ignore[attr-defined]
        return body.split(b"|")


_INBOUND = """
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend clients
    bind 127.0.0.1:{port}
    default_backend lbproxy
backend lbproxy
    server lbproxy 127.0.0.1:%d send-proxy-v2
"""


class InboundTests(_HAProxyMixin, TestCase):
    """
    HAProxy, in TCP mode with C{send-proxy-v2}, in front of C{haproxy:}
    listeners.
    """

    @inlineCallbacks
    def test_realClient(self) -> Any:
        """
        Through HAProxy, the client is the one its header names, not
        HAProxy (127.0.0.1): in the backend's C{X-Forwarded-For}, in the
        access log, and for C{ip_hash}, which sends each client to one
        backend and the eight clients to both.  A client that connects
        to the listener itself without a header is closed with no
        answer.
        """
        (one, portOne), (two, portTwo) = yield self.startBackends(b"one", b"two")
        log = FilePath(self.mktemp())
        (port,) = yield self.startProxy(
            "[lbproxy]\nlisten = haproxy:tcp:0:interface=127.0.0.1\n"
            f"access_log = {log.path}\n"
            "[upstream:app]\nbalancer = ip_hash\n"
            f"servers =\n    127.0.0.1:{portOne}\n    127.0.0.1:{portTwo}\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        front = yield self.startHAProxy(_INBOUND % (port,))
        clients = [f"127.0.{n}.5" for n in range(1, 9)]
        landed: dict[str, bytes] = {}
        for client in clients * 2:
            name, forwarded, _, _ = yield self.get(front, client)
            self.assertEqual(forwarded, client.encode())
            self.assertEqual(landed.setdefault(client, name), name, client)
        self.assertEqual(set(landed.values()), {b"one", b"two"})

        self.service.site.accessLog.flush()
        lines = log.getContent().decode("ascii").splitlines()
        self.assertEqual(
            [line.split(" ", 1)[0] for line in lines], clients * 2
        )

        raw = _Raw(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
        received = yield raw.closed.addTimeout(WAIT, reactor)
        self.assertEqual(received, b"")

    @inlineCallbacks
    def test_tlsHTTP2(self) -> Any:
        """
        A C{listen_tls = haproxy:...} listener reads the header before the
        TLS handshake: HAProxy passes the TLS through, and an HTTP/2
        client gets its answer with its own address forwarded.
        """
        ((_, backendPort),) = yield self.startBackends(b"one")
        keyPath, certPath, certPEM = writeSelfSigned(self.mktemp(), ["127.0.0.1"])
        (_, tlsPort) = yield self.startProxy(
            "[lbproxy]\nlisten = tcp:0:interface=127.0.0.1\n"
            "listen_tls = haproxy:tcp:0:interface=127.0.0.1\n"
            f"tls_certificate = {certPath}\ntls_key = {keyPath}\naccess_log = off\n"
            f"[upstream:app]\nservers = 127.0.0.1:{backendPort}\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        front = yield self.startHAProxy(_INBOUND % (tlsPort,))
        options = optionsForClientTLS(
            "127.0.0.1",
            trustRoot=Certificate.loadPEM(certPEM),
            acceptableProtocols=[b"h2"],
        )
        endpoint = SSL4ClientEndpoint(
            reactor, "127.0.0.1", front, options, bindAddress=("127.0.3.9", 0)
        )
        client = _H2Client()
        yield connectProtocol(endpoint, client).addTimeout(WAIT, reactor)
        self.addCleanup(lambda: None if client.isClosed else client.transport.abortConnection())
        yield client.ready.addTimeout(WAIT, reactor)
        self.assertEqual(client.negotiated, b"h2")
        head, body, ended = yield client.request(b"/", authority=b"127.0.0.1")
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(body.split(b"|")[:2], [b"one", b"127.0.3.9"])


_OUTBOUND = """
global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend proxied
    bind 127.0.0.1:{port} accept-proxy
    http-request set-header X-Client-Src %%[src]
    http-request set-header X-Client-Dst %%[dst]:%%[dst_port]
    default_backend app
backend app
    server app 127.0.0.1:%d
"""


class OutboundTests(_HAProxyMixin, TestCase):
    """
    C{send_proxy_protocol} to a HAProxy frontend with C{accept-proxy},
    which forwards to a real backend with the client it read in a
    header; health probes pass through it too.
    """

    @inlineCallbacks
    def sendProxy(self, version: str) -> Any:
        ((backend, backendPort),) = yield self.startBackends(b"app")
        front = yield self.startHAProxy(_OUTBOUND % (backendPort,))
        (port,) = yield self.startProxy(
            "[lbproxy]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
            f"[upstream:app]\nservers = 127.0.0.1:{front}\n"
            f"send_proxy_protocol = {version}\n"
            "health_check = /healthz\nhealth_interval = 200ms\n"
            "[vhost:app]\ndefault = yes\nupstream = app\n"
        )
        # Two clients, each with a persistent connection: each request
        # reaches the backend with its own client, never the other's.
        agents = {
            source: Agent(
                reactor,
                pool=HTTPConnectionPool(reactor, persistent=True),
                bindAddress=(source, 0),
            )
            for source in ("127.0.4.6", "127.0.5.6")
        }
        for agent in agents.values():
            self.addCleanup(agent._pool.closeCachedConnections)
        for _ in range(3):
            for source, agent in agents.items():
                name, forwarded, src, dst = yield self.get(port, source, agent)
                self.assertEqual(
                    (forwarded, src, dst),
                    (source.encode(), source.encode(), b"127.0.0.1:%d" % (port,)),
                )
        # The probes went through the same frontend, with a header of
        # their own connection (version 1) or LOCAL (version 2): either
        # way, from 127.0.0.1.
        for _ in range(int(WAIT / POLL)):
            if backend.probes:
                break
            yield deferLater(reactor, POLL, lambda: None)
        self.assertEqual(backend.probes[0], b"127.0.0.1")

    def test_v1(self) -> Any:
        return self.sendProxy("v1")

    def test_v2(self) -> Any:
        return self.sendProxy("v2")


class WorkersTests(_HAProxyMixin, TestCase):
    """
    C{workers = 2} with a C{haproxy:} listener: each worker wraps the
    socket it adopts.
    """

    timeout = 90

    @inlineCallbacks
    def waitFor(self, condition: Any, what: str, seconds: float = 30.0) -> Any:
        for _ in range(int(seconds / POLL)):
            if condition():
                return
            yield deferLater(reactor, POLL, lambda: None)
        self.fail(f"timed out waiting for {what}")

    @inlineCallbacks
    def test_workers(self) -> Any:
        """
        Both workers listen behind the PROXY protocol wrapper; requests
        through HAProxy get their client forwarded, and a connection
        without a header is closed without an answer.
        """
        ((_, backendPort),) = yield self.startBackends(b"one")
        parent, _ = startWorkers(self, "haproxy:tcp:0:interface=127.0.0.1", backendPort)
        yield self.waitFor(lambda: len(parent.workers()) == 2, "two workers")
        yield self.waitFor(
            lambda: parent.output.count(b"Starting factory <ProxyProtocolFactory") >= 2,
            "two workers listening behind the PROXY protocol",
        )
        port = yield workersPort(parent)
        front = yield self.startHAProxy(_INBOUND % (port,))
        for n in range(1, 11):
            client = f"127.0.{n}.7"
            _, forwarded, _, _ = yield self.get(front, client)
            self.assertEqual(forwarded, client.encode())
        for _ in range(4):
            raw = _Raw(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
            received = yield raw.closed.addTimeout(WAIT, reactor)
            self.assertEqual(received, b"")

