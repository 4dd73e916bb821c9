"""
Tests for L{lbproxy.service} and the graceful close of L{ProxySite}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import LoadBalancerService, ProxySite, parseConfigText


class _Slow(Resource):
    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.pending = []

    def render(self, request):
        self.pending.append(request)
        return NOT_DONE_YET


class CloseConnectionsTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.resource = _Slow()
        self.site = ProxySite(self.resource, reactor=self.reactor)

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_idleClosedAtOnce(self):
        """
        Idle client connections are closed straight away.
        """
        channel, transport = self.connect()
        d = self.site.closeConnections(30)
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(None)
        self.assertIsNone(self.successResultOf(d))

    def test_busyFinishesFirst(self):
        """
        A connection with a request in flight closes once its response is
        complete, not before.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        (request,) = self.resource.pending
        d = self.site.closeConnections(30)
        self.assertFalse(transport.disconnecting)
        self.assertNoResult(d)
        request.write(b"done")
        request.finish()
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().endswith(b"done\r\n0\r\n\r\n"))
        channel.connectionLost(None)
        self.successResultOf(d)

    def test_busyAbortedAfterTimeout(self):
        """
        A response still unfinished when the timeout passes has its
        connection aborted.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        d = self.site.closeConnections(30)
        self.reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnected or transport.disconnecting)
        channel.connectionLost(None)
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


_SITE = """
[lbproxy]
listen = tcp:8080:interface=127.0.0.1
access_log = off

[upstream:app]
servers = 127.0.0.1:9001 weight=3
    127.0.0.1:9002 backup
balancer = least_conn

[upstream:api]
servers = 127.0.0.1:9101

[vhost:app]
server_names = app.example
default = yes
upstream = app
routes = /api/ api
preserve_host = no

[demo:blue]
listen = tcp:9001:interface=127.0.0.1
"""


class LoadBalancerServiceTests(SynchronousTestCase):
    def test_built(self):
        """
        The service has a pool per upstream with its balancer plugin, a
        listener per endpoint and one per demo backend, and routes by host
        and prefix.
        """
        reactor = MemoryReactorClock()
        service = LoadBalancerService(parseConfigText(_SITE), reactor)
        self.assertEqual(sorted(service.pools), ["api", "app"])
        app = service.pools["app"]
        self.assertEqual([b.weight for b in app.backends], [3, 1])
        from lbproxy.balancers._leastconn import LeastConn

        self.assertIsInstance(app.balancer, LeastConn)
        vhost = service.resource.vhostFor(b"app.example")
        self.assertIs(vhost.resourceFor(b"/api/x").pool, service.pools["api"])
        self.assertIs(vhost.resourceFor(b"/").pool, app)
        self.assertFalse(vhost.resourceFor(b"/").preserveHost)
        service.startService()
        self.assertEqual(
            sorted(port for port, *_ in reactor.tcpServers), [8080, 9001]
        )
        self.successResultOf(service.stopService())
