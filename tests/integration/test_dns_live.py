"""
Backends from DNS on real sockets: a DNS server in this process (Twisted's
own, serving a zone the test changes), lbproxy pointed at it with
C{resolver}, backends on distinct loopback addresses (127.0.0.2,
127.0.0.3: all of 127.0.0.0/8 is loopback on Linux) sharing one port, as
the addresses of one name do, and a real client.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import BackendState, LoadBalancerService, parseConfigText
from lbproxy.testing import DNSZone, startDNSServer, startServer


class Named(Resource):
    """
    A backend that answers with its name, and notes the C{Host} it was
    sent; C{/hold} is answered only when the test releases it.

    @ivar hits: requests received.
    @ivar held: the requests to C{/hold} not answered yet.
    """

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        Resource.__init__(self)
        self.name = name
        self.hits = 0
        self.hosts: set[bytes] = set()
        self.held: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.hits += 1
        self.hosts.add(request.getHeader(b"host"))
        if request.path == b"/hold":
            self.held.append(request)
            return NOT_DONE_YET
        return self.name

    def release(self) -> None:
        held, self.held = self.held, []
        for request in held:
            request.write(self.name)
            request.finish()


_CONFIG = """
[lbproxy]
listen = tcp:0:interface=127.0.0.1
access_log = off
resolver = {resolver}

[upstream:app]
servers =
    {servers}
resolve_min = 100ms
resolve_max = 1s
max_fails = 0

[vhost:app]
default = yes
upstream = app
preserve_host = no

[admin]
listen = tcp:0:interface=127.0.0.1
"""


class DNSLiveTests(TestCase):
    """
    The backends of C{resolve} and C{service=} lines follow the DNS server's
    answers while lbproxy runs, without a reload.
    """

    timeout = 60

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.zone = DNSZone()
        self.dns = startDNSServer(self.zone, reactor)
        self.addCleanup(self.dns.stop)

    @inlineCallbacks
    def backendsOnOnePort(self, *hosts: str) -> Any:
        """
        Start a L{Named} backend on each loopback address of C{hosts}, all
        on the same port.

        @return: the port, and the backends by address.
        """
        for _ in range(10):
            first = yield startServer(Named(hosts[0].encode()), reactor, 0, hosts[0])
            servers = [first]
            try:
                for host in hosts[1:]:
                    server = yield startServer(Named(host.encode()), reactor, first.port, host)
                    servers.append(server)
            except CannotListenError:
                for server in servers:
                    yield server.stop()
                continue
            for server in servers:
                self.addCleanup(server.stop)
            return first.port, {h: s.site.resource for h, s in zip(hosts, servers)}
        self.fail("no port free on every loopback address")

    @inlineCallbacks
    def startProxy(self, servers: str) -> Any:
        config = parseConfigText(
            _CONFIG.format(resolver=self.dns.address, servers=servers), "dns.ini"
        )
        self.service = LoadBalancerService(config, reactor)
        self.service.startService()
        self.addCleanup(self.stopProxy)
        ports = yield self.service.whenListening()
        self.url = "http://127.0.0.1:%d" % (ports[0].getHost().port,)
        self.adminURL = "http://127.0.0.1:%d" % (ports[-1].getHost().port,)
        self.pool = self.service.pools["app"]

    def stopProxy(self) -> Any:
        if self.service.running:
            return self.service.stopService()
        return None

    @inlineCallbacks
    def get(self, path: str = "/") -> Any:
        response = yield self.client.get(self.url + path)
        body = yield response.content()
        return response.code, body

    @inlineCallbacks
    def waitFor(self, condition: Callable[[], Any], within: float = 5.0) -> Any:
        """
        Poll C{condition} (which may return a L{Deferred}) until it holds,
        failing the test if it does not within C{within} seconds.
        """
        started = time.monotonic()
        while True:
            result = yield condition()
            if result:
                return result
            if time.monotonic() - started > within:
                self.fail(f"condition not met within {within}s")
            yield deferLater(reactor, 0.02, lambda: None)

    def members(self) -> list[str]:
        return sorted(b.name for b in self.pool.backends)

    @inlineCallbacks
    def test_newAddressGetsTraffic(self) -> None:
        """
        An address added to the name's answer gets requests within a few
        TTLs, without a reload; the backends are sent the line's name as
        C{Host}.
        """
        port, backends = yield self.backendsOnOnePort("127.0.0.2", "127.0.0.3")
        self.zone.setAddresses("app.test", ["127.0.0.2"], ttl=1)
        yield self.startProxy(f"app.test:{port} resolve")
        yield self.waitFor(lambda: self.members() == [f"127.0.0.2:{port}"])
        for _ in range(5):
            code, body = yield self.get()
            self.assertEqual((code, body), (200, b"127.0.0.2"))

        self.zone.setAddresses("app.test", ["127.0.0.2", "127.0.0.3"], ttl=1)

        @inlineCallbacks
        def bothServe() -> Any:
            code, body = yield self.get()
            self.assertEqual(code, 200)
            return backends["127.0.0.3"].hits > 0 and backends["127.0.0.2"].hits > 5

        yield self.waitFor(bothServe, 5)
        self.assertEqual(self.service.reloads, 0)
        expected = {f"app.test:{port}".encode()}
        self.assertEqual(backends["127.0.0.2"].hosts, expected)
        self.assertEqual(backends["127.0.0.3"].hosts, expected)

    @inlineCallbacks
    def test_removedAddressFinishesItsRequest(self) -> None:
        """
        An address that leaves the answer while it serves a request gets
        no new request, and the one it had completes; then it is dropped.
        """
        port, backends = yield self.backendsOnOnePort("127.0.0.2", "127.0.0.3")
        self.zone.setAddresses("app.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
        yield self.startProxy(f"app.test:{port} resolve")
        yield self.waitFor(lambda: len(self.pool.eligible) == 2)
        leaving = backends["127.0.0.3"]
        held = []
        while not leaving.held:
            self.assertLess(len(held), 4)
            held.append(self.get("/hold"))
            yield self.waitFor(lambda: sum(len(b.held) for b in backends.values()) == len(held))

        self.zone.setAddresses("app.test", ["127.0.0.2"], ttl=1)
        gone = self.pool.backendNamed(f"127.0.0.3:{port}")
        yield self.waitFor(lambda: gone.state is BackendState.DRAINING)
        hits = leaving.hits
        for _ in range(20):
            code, body = yield self.get()
            self.assertEqual((code, body), (200, b"127.0.0.2"))
        self.assertEqual(leaving.hits, hits)
        self.assertIn(gone, self.pool.backends)

        for backend in backends.values():
            backend.release()
        bodies = []
        for request in held:
            code, body = yield request
            self.assertEqual(code, 200)
            bodies.append(body)
        self.assertIn(b"127.0.0.3", bodies)
        yield self.waitFor(lambda: self.members() == [f"127.0.0.2:{port}"])

    @inlineCallbacks
    def test_startsBeforeTheNameResolves(self) -> None:
        """
        lbproxy starts with a name that does not resolve yet: the admin API
        shows the line down with the DNS error, requests get 502; once the
        name has an address, requests reach it.
        """
        port, backends = yield self.backendsOnOnePort("127.0.0.2")
        yield self.startProxy(f"app.test:{port} resolve")

        @inlineCallbacks
        def shownDown() -> Any:
            response = yield self.client.get(self.adminURL + "/api/upstreams/app")
            status = json.loads((yield response.content()))
            return [
                (b["name"], b["state"], b["reason"])
                for b in status["backends"]
                if "DNS error" in b["reason"]
            ]

        shown = yield self.waitFor(shownDown)
        self.assertEqual(
            shown,
            [
                (
                    f"app.test:{port}",
                    "down",
                    "app.test: no address yet (DNS error: no such name)",
                )
            ],
        )
        code, _ = yield self.get()
        self.assertEqual(code, 502)

        self.zone.setAddresses("app.test", ["127.0.0.2"], ttl=1)

        @inlineCallbacks
        def served() -> Any:
            code, body = yield self.get()
            return (code, body) == (200, b"127.0.0.2")

        yield self.waitFor(served, 5)
        self.assertEqual(self.members(), [f"127.0.0.2:{port}"])

    @inlineCallbacks
    def test_serviceRecords(self) -> None:
        """
        A C{service=} line sends requests to the targets of the lowest
        priority, on their ports; when the records change, traffic follows.
        """
        a = yield startServer(Named(b"a"), reactor)
        self.addCleanup(a.stop)
        b = yield startServer(Named(b"b"), reactor)
        self.addCleanup(b.stop)
        self.zone.setAddresses("a.test", ["127.0.0.1"], ttl=1)
        self.zone.setAddresses("b.test", ["127.0.0.1"], ttl=1)
        self.zone.setService(
            "_http._tcp.app.test", [(10, 1, a.port, "a.test"), (20, 1, b.port, "b.test")], ttl=1
        )
        yield self.startProxy("app.test service=http resolve")
        yield self.waitFor(lambda: len(self.pool.backends) == 2)
        primary, backup = self.pool.backends
        self.assertEqual((primary.port, primary.backup), (a.port, False))
        self.assertEqual((backup.port, backup.backup), (b.port, True))
        for _ in range(5):
            code, body = yield self.get()
            self.assertEqual((code, body), (200, b"a"))

        self.zone.setService(
            "_http._tcp.app.test", [(20, 1, a.port, "a.test"), (10, 1, b.port, "b.test")], ttl=1
        )

        @inlineCallbacks
        def toB() -> Any:
            code, body = yield self.get()
            return body == b"b"

        yield self.waitFor(toB, 5)
        self.assertEqual(
            [(x.port, x.backup) for x in self.pool.backends], [(b.port, False), (a.port, True)]
        )
