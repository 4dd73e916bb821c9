"""
C{servers_from = etcd} against a real etcd (Debian's C{etcd-server}, 3.4)
started by the test on loopback: lbproxy in this process follows the keys
within a second, survives etcd being killed and restarted without losing
or repeating a change, and reads everything again after a compaction.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.protocols.portforward import ProxyFactory
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy.testing import RefusingPort, startServer
from tests.integration.etcdprocess import (
    Etcd,
    NamedBackend,
    lbproxy,
    waitUntil,
)
from tests.integration.ports import ReservedPort

PREFIX = "/lbproxy/upstreams/app/"

_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off

[upstream:app]
servers_from = etcd
etcd_endpoints = {endpoints}
etcd_prefix = {prefix}

[vhost:app]
default = yes
upstream = app
"""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Forward(ProxyFactory):
    """
    A TCP forwarder to etcd that remembers its connections, to cut them.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.connections: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.connections.append(protocol)
        return protocol


class InProcessProxy:
    """
    For the tests that run lbproxy in their own process against a real
    etcd: serving its L{LoadBalancerService}, and watching the members of
    its upstream C{app}, whose backends are C{self.backends}.
    """

    service: Any
    backends: list[Any]

    @inlineCallbacks
    def serve(self, service: Any) -> Any:
        """
        Start C{service} (stopped in a clean-up) and set C{self.url} to
        its first listener.
        """
        self.service = service
        service.startService()
        self.addCleanup(service.stopService)  # type: ignore[attr-defined]
        ports = yield service.whenListening()
        self.url = "http://127.0.0.1:%d/" % (ports[0].getHost().port,)

    def address(self, index: int) -> str:
        return f"127.0.0.1:{self.backends[index].port}"

    def members(self) -> list[str]:
        return [
            b.name for b in self.service.pools["app"].backends if b.state.value == "up"
        ]

    @inlineCallbacks
    def converge(self, expected: list[str], what: str, seconds: float = 1.0) -> Any:
        """
        Wait until the pool's backends that are up are C{expected}, for at
        most C{seconds}.
        """
        took = yield waitUntil(
            lambda: sorted(self.members()) == sorted(expected), what, seconds
        )
        return took


class EtcdLiveTests(InProcessProxy, TestCase):
    """
    One lbproxy, one etcd member, three backends.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        self.etcd = Etcd(self.mktemp())
        self.addCleanup(self.etcd.close)
        yield self.etcd.start()
        self.backends = []
        for name in (b"a", b"b", b"c"):
            server = yield startServer(NamedBackend(name), reactor)
            self.addCleanup(server.stop)
            self.backends.append(server)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))

    @inlineCallbacks
    def startProxy(self, endpoints: str) -> Any:
        config = parseConfigText(
            _CONFIG.format(endpoints=endpoints, prefix=PREFIX), "etcd.ini"
        )
        service = LoadBalancerService(config, reactor)
        self.source = service.sources["app"]
        self.applied: list[str] = []
        changed = self.source.mirror.changed

        def recording(values: Any, reason: str) -> None:
            self.applied.append(reason)
            changed(values, reason)

        self.source.mirror.changed = recording
        yield self.serve(service)

    @inlineCallbacks
    def get(self) -> Any:
        response = yield self.http.get(self.url, timeout=5)
        body = yield response.content()
        return response.code, body

    @inlineCallbacks
    def test_followsKeys(self) -> Any:
        """
        Until a key exists the upstream answers 502; keys put and deleted
        change the backends within a second, and the traffic follows, also
        when a transaction changes several at one revision.  A dead
        endpoint listed first is passed over.
        """
        dead = RefusingPort()
        self.addCleanup(dead.close)
        yield self.startProxy(f"http://127.0.0.1:{dead.port} {self.etcd.url}")
        yield waitUntil(lambda: self.applied, "the first read")
        code, _ = yield self.get()
        self.assertEqual(code, 502)
        yield self.etcd.put(PREFIX + "a", self.address(0))
        yield self.etcd.put(PREFIX + "b", self.address(1) + " weight=2")
        yield self.converge([self.address(0), self.address(1)], "a and b")
        seen = set()
        for _ in range(6):
            code, body = yield self.get()
            self.assertEqual(code, 200)
            seen.add(body)
        self.assertEqual(seen, {b"a", b"b"})
        a = self.service.pools["app"].backends[0]
        yield self.etcd.put(PREFIX + "c", self.address(2))
        yield self.etcd.delete(PREFIX + "b")
        yield self.converge([self.address(0), self.address(2)], "a and c")
        self.assertIs(self.service.pools["app"].backends[0], a)
        self.assertGreater(a.requests, 0)
        yield self.etcd.put(PREFIX + "bad", "not a server line")
        yield self.etcd.put(PREFIX + "d", self.address(1))
        yield self.converge(
            [self.address(0), self.address(1), self.address(2)], "a, b and c again"
        )
        seen = set()
        for _ in range(6):
            code, body = yield self.get()
            seen.add(body)
        self.assertEqual(seen, {b"a", b"b", b"c"})
        yield self.etcd.deletePrefix(PREFIX)
        yield self.converge([], "none, the prefix deleted at once")
        yield self.etcd.putAll({PREFIX + "e": self.address(0), PREFIX + "f": self.address(2)})
        yield self.converge([self.address(0), self.address(2)], "a and c, in one transaction")

    @inlineCallbacks
    def test_etcdRestarts(self) -> Any:
        """
        etcd is killed and started again on the same data directory and
        port: the watch resumes from the revision after the last one
        applied, so every change is applied once, in order, the ones from
        before the kill and those after it alike.
        """
        yield self.etcd.put(PREFIX + "a", self.address(0))
        yield self.startProxy(self.etcd.url)
        yield self.converge([self.address(0)], "a")
        yield self.etcd.put(PREFIX + "b", self.address(1))
        yield self.converge([self.address(0), self.address(1)], "a and b")
        yield self.etcd.stop("KILL")
        yield self.etcd.start()
        yield self.etcd.delete(PREFIX + "a")
        yield self.etcd.put(PREFIX + "c", self.address(2))
        yield self.converge(
            [self.address(1), self.address(2)], "b and c after the restart", 15.0
        )
        yield self.etcd.put(PREFIX + "a", self.address(0) + " weight=3")
        yield self.converge(
            [self.address(0), self.address(1), self.address(2)], "a again"
        )
        pool = self.service.pools["app"]
        self.assertEqual(pool.backendNamed(self.address(0)).weight, 3)
        self.assertEqual(self.applied[0], "etcd read at revision 2")
        revisions = [int(r.split()[2].rstrip(":")) for r in self.applied[1:]]
        self.assertEqual(revisions, [3, 4, 5, 6], self.applied)
        self.assertEqual(
            self.applied[1:],
            [
                "etcd revision 3: put " + PREFIX + "b",
                "etcd revision 4: deleted " + PREFIX + "a",
                "etcd revision 5: put " + PREFIX + "c",
                "etcd revision 6: put " + PREFIX + "a",
            ],
        )

    @inlineCallbacks
    def test_compaction(self) -> Any:
        """
        While lbproxy cannot reach etcd, keys change and etcd compacts its
        history past lbproxy's revision: once it can reach etcd again it
        reads the whole prefix and follows on from there.
        """
        forward = _Forward("127.0.0.1", self.etcd.clientPort)
        # Reserved, so that the forwarder listens on it again later and
        # no one else is given it while it does not.
        reserved = ReservedPort()
        self.addCleanup(reserved.close)
        number = reserved.port
        port = reactor.listenTCP(number, forward, interface="127.0.0.1")
        yield self.etcd.put(PREFIX + "a", self.address(0))
        yield self.startProxy(f"http://127.0.0.1:{number}")
        yield self.converge([self.address(0)], "a")
        # Cut lbproxy off: no listener, and its watch connection dropped.
        yield port.stopListening()
        for protocol in forward.connections:
            protocol.transport.abortConnection()
        yield self.etcd.put(PREFIX + "b", self.address(1))
        yield self.etcd.delete(PREFIX + "a")
        revision = yield self.etcd.compact()
        port = reactor.listenTCP(number, forward, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        yield self.converge([self.address(1)], "b alone after the re-read", 15.0)
        self.assertEqual(self.applied[-1], f"etcd read at revision {revision}")
        yield self.etcd.put(PREFIX + "c", self.address(2))
        yield self.converge([self.address(1), self.address(2)], "b and c")

    @inlineCallbacks
    def test_workers(self) -> Any:
        """
        With C{workers = 2} each worker follows etcd: both apply a new key,
        and requests through the shared socket reach its backend.
        """
        path = FilePath(self.mktemp())
        path.setContent(
            _CONFIG.format(endpoints=self.etcd.url, prefix=PREFIX)
            .replace("access_log = off", "access_log = off\nworkers = 2")
            .encode()
        )
        process = lbproxy("lbproxy workers", path.path)

        def stop() -> Any:
            # SIGTERM: the parent stops its workers, then itself; a worker
            # still there is killed by its own PID.
            for pid in re.findall(rb"worker \d+ started, pid (\d+)", process.output):
                self.addCleanup(_kill, int(pid))
            return process.stop("TERM")

        self.addCleanup(stop)
        read = b"etcd /lbproxy/upstreams/app/: read 0 key"
        yield waitUntil(lambda: process.output.count(read) == 2, "two workers reading", 30)
        yield self.etcd.put(PREFIX + "a", self.address(0))
        added = b"backend %s of upstream app added" % self.address(0).encode()
        yield waitUntil(lambda: process.output.count(added) == 2, "two workers adding a", 5)
        # tcp:0: the parent's socket, which each worker names as it adopts it.
        match = yield process.waitFor(
            rb"(?s)ProxySite starting on (\d+)\n.*ProxySite starting on (\d+)\n", 30
        )
        self.assertEqual(match.group(1), match.group(2))
        self.url = f"http://127.0.0.1:{int(match.group(1))}/"
        for _ in range(4):
            code, body = yield self.get()
            self.assertEqual((code, body), (200, b"a"))
