"""
Tests for L{lbproxy.service} and the graceful close of L{ProxySite}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import FirstError
from twisted.internet.error import CannotListenError
from twisted.internet.testing import (
    MemoryReactorClock,
    RaisingMemoryReactor,
    StringTransport,
)
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import LoadBalancerService, ProxySite, parseConfigText
from tests.integration.test_walkthrough import Hang


class CloseConnectionsTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.resource = Hang()
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

    def test_whenListening(self):
        """
        L{LoadBalancerService.whenListening} fires once every listener
        listens, with the proxy's ports first and the demo backends'
        after.
        """
        reactor = MemoryReactorClock()
        service = LoadBalancerService(parseConfigText(_SITE), reactor)
        listening = service.whenListening()
        self.assertNoResult(listening)
        service.startService()
        self.addCleanup(service.stopService)
        ports = self.successResultOf(listening)
        self.assertEqual([p.getHost().port for p in ports], [8080, 9001])

    def test_admin(self):
        """
        An C{[admin]} section adds a listener on its endpoint, last, serving
        the JSON API over the running pools with its token; a reload
        changes the token and the pools it shows, not the listener.
        """
        reactor = MemoryReactorClock()
        service = LoadBalancerService(
            parseConfigText(_SITE + "\n[admin]\nlisten = tcp:9100:interface=127.0.0.1\ntoken = a\n"),
            reactor,
        )
        self.assertIsNone(LoadBalancerService(parseConfigText(_SITE), reactor).admin)
        service.startService()
        self.addCleanup(service.stopService)
        ports = self.successResultOf(service.whenListening())
        self.assertEqual([p.getHost().port for p in ports], [8080, 9001, 9100])
        self.assertEqual(reactor.tcpServers[-1][3], "127.0.0.1")
        admin = service.admin
        assert admin is not None
        self.assertIs(reactor.tcpServers[-1][1].resource, admin)
        self.assertEqual((admin.token, admin.pools()), ("a", service.pools))
        service.reload(
            parseConfigText(_SITE + "\n[admin]\nlisten = tcp:9100:interface=127.0.0.1\ntoken = b\n")
        )
        self.assertEqual((admin.token, admin.pools()), ("b", service.pools))

    def test_portInUse(self):
        """
        A port that cannot be opened makes the start fail at once.
        """
        reactor = RaisingMemoryReactor(
            listenException=CannotListenError("127.0.0.1", 8080, OSError("in use"))
        )
        service = LoadBalancerService(parseConfigText(_SITE), reactor)
        self.assertRaises(CannotListenError, service.startService)
        self.failureResultOf(service.whenListening(), FirstError)


class ReloadTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.service = LoadBalancerService(parseConfigText(_SITE, "site.ini"), self.reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def test_reloadSwapsPools(self):
        """
        A reload builds new pools and virtual hosts for new requests and
        closes the old pools; the listeners stay.
        """
        oldPool = self.service.pools["app"]
        listeners = list(self.reactor.tcpServers)
        new = parseConfigText(
            _SITE.replace("127.0.0.1:9001 weight=3", "127.0.0.1:9003 weight=5"),
            "site.ini",
        )
        self.successResultOf(self.service.reload(new))
        pool = self.service.pools["app"]
        self.assertIsNot(pool, oldPool)
        self.assertEqual([(b.port, b.weight) for b in pool.backends], [(9003, 5), (9002, 1)])
        self.assertIs(self.service.site.resource, self.service.resource)
        self.assertIs(self.service.resource.vhostFor(b"app.example").resourceFor(b"/").pool, pool)
        self.assertTrue(all(c.closed for c in oldPool._connections.values()))
        self.assertEqual(self.reactor.tcpServers, listeners)
        self.assertIs(self.service.config, new)

    def test_reloadLimits(self):
        """
        New client limits apply to the site.
        """
        new = parseConfigText(_SITE.replace("access_log = off", "access_log = off\nmax_body_size = 1k"))
        self.service.reload(new)
        self.assertEqual(self.service.site.maxBodySize, 1024)

    def test_listenChangeLogged(self):
        from twisted.logger import capturedLogs

        new = parseConfigText(_SITE.replace("tcp:8080:", "tcp:8081:"))
        with capturedLogs() as events:
            self.service.reload(new)
        self.assertTrue(any(e.get("what") == "listen" for e in events))

    def test_badFileKeepsRunning(self):
        """
        A file with errors is refused, logged, and the running
        configuration stays.
        """
        from twisted.logger import capturedLogs

        path = FilePath(self.mktemp())
        path.setContent(_SITE.replace("weight=3", "weight=three").encode())
        pool = self.service.pools["app"]
        with capturedLogs() as events:
            self.assertFalse(self.service.reloadFromFile(path.path))
        self.assertIs(self.service.pools["app"], pool)
        (event,) = [e for e in events if "refused" in e.get("log_format", "")]
        self.assertIn("weight=three", event["errors"])

    def test_goodFileTaken(self):
        path = FilePath(self.mktemp())
        path.setContent(_SITE.replace("weight=3", "weight=7").encode())
        self.assertTrue(self.service.reloadFromFile(path.path))
        self.assertEqual(self.service.pools["app"].backends[0].weight, 7)

    def test_hangupHandler(self):
        """
        With reloadOnHangup, the service handles SIGHUP while it runs and
        puts the previous handler back when it stops.
        """
        import signal

        previous = signal.getsignal(signal.SIGHUP)
        service = LoadBalancerService(parseConfigText(_SITE), self.reactor)
        service.reloadOnHangup("site.ini")
        service.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), service._onHangup)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)
