"""
Tests for L{lbproxy._tunnel} and the upgrade path of L{lbproxy._proxy}:
a client asking for C{Upgrade: websocket} through a L{ProxySite} on
L{StringTransport}s, backends reached through a L{MemoryReactorClock}.
"""

from __future__ import annotations

import weakref
from io import StringIO

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from lbproxy import Backend, Pool, UpstreamResource
from lbproxy._proxy import upgradeOffer
from lbproxy._tunnel import Tunnel
from lbproxy.interfaces import ITunnelChannel
from lbproxy.testing import ProxyHarness
from tests.refcounting import withoutCollector

_UPGRADE = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: app.example\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)

_SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"\r\n"
)


class _Harness:
    """
    A proxy with one backend, an access log in memory, and one client.
    """

    def __init__(self, testCase: SynchronousTestCase, **poolArgs: object) -> None:
        self.reactor = MemoryReactorClock()
        self.backend = Backend("127.0.0.1", 9000)
        poolArgs.setdefault("readTimeout", 5.0)
        self.pool = Pool("app", [self.backend], reactor=self.reactor, **poolArgs)  # type: ignore[arg-type]
        self.log = StringIO()
        self.proxy = ProxyHarness(
            UpstreamResource(self.pool), reactor=self.reactor, accessLog=self.log
        )
        testCase.addCleanup(self.proxy.close)
        self.site = self.proxy.site
        self.client = self.proxy.connect(IPv4Address("TCP", "192.0.2.1", 4321))

    def upgrade(self, early: bytes = b"", answer: bytes = _SWITCHED) -> object:
        """
        Send the upgrade request (with C{early} bytes in the same read),
        accept the backend connection and answer C{answer}.
        """
        self.client.send(_UPGRADE + early)
        backend = self.proxy.acceptBackend()
        backend.respond(answer)
        return backend


class UpgradeTests(SynchronousTestCase):
    """
    A request that asks to upgrade its connection to a protocol the
    upstream allows is forwarded with C{Connection} and C{Upgrade} on a
    fresh connection; a 101 turns both connections into a tunnel.
    """

    def test_forwardedOnFreshConnection(self) -> None:
        """
        The request goes with C{Connection: upgrade} and the C{Upgrade} it
        asked for, on a connection of its own even when an idle pooled one
        is there.
        """
        h = _Harness(self)
        h.client.send(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
        first = h.proxy.acceptBackend()
        first.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(h.pool._connections[h.backend].idle), 1)
        h.client.clear()
        h.client.send(_UPGRADE)
        self.assertEqual(first.received().count(b"GET"), 1)
        backend = h.proxy.acceptBackend()
        sent = backend.received()
        self.assertTrue(sent.startswith(b"GET /chat HTTP/1.1\r\n"), sent)
        self.assertIn(b"Connection: upgrade\r\nUpgrade: websocket\r\n", sent)
        self.assertIn(b"Sec-Websocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", sent)
        self.assertNotIn(b"keep-alive", sent)
        self.assertEqual(len(h.pool._connections[h.backend].idle), 1)

    def test_switchedRelaysBothWays(self) -> None:
        """
        The 101 reaches the client with the backend's headers, and from
        then on the bytes flow both ways, including those the client sent
        with its request head and those the backend sent with its 101.
        """
        h = _Harness(self)
        h.client.send(_UPGRADE + b"early")
        backend = h.proxy.acceptBackend()
        self.assertTrue(backend.received().endswith(b"\r\n\r\n"))
        backend.respond(_SWITCHED + b"hello")
        response = h.client.received()
        self.assertTrue(
            response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), response
        )
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", response)
        self.assertIn(b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\nhello", response)
        self.assertNotIn(b"Content-Length", response)
        self.assertNotIn(b"Transfer-Encoding", response)
        self.assertTrue(backend.received().endswith(b"\r\n\r\nearly"))
        backend.clear()
        h.client.clear()
        h.client.send(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(backend.received(), b"GET / HTTP/1.1\r\n\r\n")
        backend.respond(b"\x81\x02hi")
        self.assertEqual(h.client.received(), b"\x81\x02hi")

    def test_transportsProduceForEachOther(self) -> None:
        """
        Each transport is the other's producer: a side that cannot keep up
        pauses the reading of the other.
        """
        h = _Harness(self)
        backend = h.upgrade()
        self.assertIs(h.client.transport.producer, backend.transport)
        self.assertIs(backend.transport.producer, h.client.transport)
        h.client.transport.producer.pauseProducing()
        self.assertEqual(backend.transport.producerState, "paused")

    def test_activeUntilClosed(self) -> None:
        """
        The balancer counts the tunnel as an active request until it
        closes; the access log gets its line then, with the bytes each way
        and the duration.
        """
        h = _Harness(self)
        backend = h.upgrade(early=b"12345")
        self.assertEqual(h.backend.active, 1)
        self.assertEqual(h.log.getvalue(), "")
        h.reactor.advance(2.5)
        backend.respond(b"abc")
        backend.close()
        self.assertTrue(h.client.closing)
        self.assertEqual(h.backend.active, 0)
        line = h.log.getvalue()
        self.assertIn('"GET /chat HTTP/1.1" 101 3 ', line)
        self.assertTrue(line.endswith(' tunnel=5/3 duration=2.500\n'), line)
        h.client.disconnect()
        self.assertEqual(h.log.getvalue().count("\n"), 1)

    def test_clientCloseClosesBackend(self) -> None:
        """
        When the client closes its connection, the backend's is closed, and
        the tunnel is logged once.
        """
        h = _Harness(self)
        backend = h.upgrade()
        h.client.disconnect(Failure(ConnectionDone()))
        self.assertTrue(backend.closing)
        self.assertEqual(h.backend.active, 0)
        backend.close()
        self.assertEqual(h.log.getvalue().count("\n"), 1)

    def test_idleTimeout(self) -> None:
        """
        A tunnel that carries no byte either way for tunnel_timeout is
        closed; traffic either way pushes the timeout back.
        """
        h = _Harness(self, tunnelTimeout=60.0)
        backend = h.upgrade()
        h.reactor.advance(50)
        h.client.send(b"x")
        h.reactor.advance(50)
        backend.respond(b"y")
        h.reactor.advance(59)
        self.assertFalse(h.client.closing)
        self.assertFalse(backend.closing)
        h.reactor.advance(1)
        self.assertTrue(h.client.closing)
        self.assertTrue(backend.closing)
        self.assertEqual(h.backend.active, 0)

    def test_closedFreedWithoutCollector(self) -> None:
        """
        A tunnel, once closed, is freed by reference counting: its idle
        timer, which calls back into it, does not keep it in a cycle.
        """
        closed: list[bool] = []
        tunnel = Tunnel(
            Clock(), StringTransport(), 60.0, lambda t: closed.append(t.closed)
        )
        withoutCollector(self)
        tunnel.close()
        self.assertEqual(closed, [True])
        freed = weakref.ref(tunnel)
        del tunnel
        self.assertIsNone(freed())

    def test_noClientTimeoutInTunnel(self) -> None:
        """
        The client's own timeouts (keepalive, header) do not run in a
        tunnel: only tunnel_timeout does.
        """
        h = _Harness(self)
        h.upgrade()
        h.reactor.advance(3000)
        self.assertFalse(h.client.closing)
        h.reactor.advance(600)
        self.assertTrue(h.client.closing)

    def test_drainClosesTunnels(self) -> None:
        """
        A graceful stop waits for a tunnel as for a request in flight, and
        closes it at the end of its deadline.
        """
        h = _Harness(self)
        backend = h.upgrade()
        drained = h.site.closeConnections(30)
        h.reactor.advance(29)
        self.assertFalse(h.client.closing)
        h.reactor.advance(1)
        self.assertTrue(h.client.closing)
        h.client.disconnect()
        self.assertTrue(backend.closing)
        self.successResultOf(drained)

    def test_notSwitched(self) -> None:
        """
        A backend that does not switch gives an ordinary response, and its
        connection is closed after it rather than pooled.
        """
        h = _Harness(self)
        backend = h.upgrade(
            answer=b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno"
        )
        response = h.client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 426 "), response)
        self.assertTrue(response.endswith(b"\r\n\r\nno"), response)
        self.assertTrue(backend.closing)
        self.assertEqual(h.pool._connections[h.backend].idle, [])
        self.assertEqual(h.backend.active, 0)

    def test_switchedWithoutUpgrade(self) -> None:
        """
        A 101 without C{Upgrade} is an invalid answer: 502.
        """
        h = _Harness(self)
        backend = h.upgrade(answer=b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        self.assertTrue(h.client.received().startswith(b"HTTP/1.1 502 "))
        self.assertTrue(backend.closing)
        self.assertEqual(h.backend.active, 0)

    def test_protocolNotAllowed(self) -> None:
        """
        An C{Upgrade} to a protocol the upstream does not list is not
        forwarded: the request goes as an ordinary one, pooled.
        """
        h = _Harness(self, upgradeProtocols=["websocket"])
        h.client.send(_UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c"))
        sent = h.proxy.acceptBackend().received()
        self.assertNotIn(b"pgrade", sent.split(b"\r\n\r\n")[0].replace(b"Upgrade-", b""))

    def test_noUpgradeProtocols(self) -> None:
        """
        With no C{upgrade_protocols}, even a WebSocket handshake goes
        without its C{Upgrade}.
        """
        h = _Harness(self, upgradeProtocols=[])
        h.client.send(_UPGRADE)
        sent = h.proxy.acceptBackend().received()
        self.assertNotIn(b"Upgrade: ", sent)
        self.assertNotIn(b"Connection: ", sent)


class UpgradeOfferTests(SynchronousTestCase):
    """
    L{upgradeOffer} says which requests are tunnelled.
    """

    def _request(self, channel: object, **headers: bytes) -> DummyRequest:
        request = DummyRequest([])
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        request.channel = channel
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name.encode("ascii"), [value])
        return request

    def test_onlyTunnelChannels(self) -> None:
        """
        A request whose channel cannot become a tunnel (an HTTP/2 stream,
        Twisted's own HTTPChannel) is not offered one: its C{Upgrade} is
        not forwarded.
        """
        from lbproxy._h2 import StreamChannel
        from lbproxy._server import RequestChannel

        self.assertTrue(ITunnelChannel.implementedBy(RequestChannel))
        self.assertFalse(ITunnelChannel.implementedBy(StreamChannel))
        allowed = frozenset([b"websocket"])
        plain = self._request(object(), connection=b"upgrade", upgrade=b"websocket")
        self.assertIsNone(upgradeOffer(plain, allowed))

        from zope.interface import implementer

        @implementer(ITunnelChannel)
        class Channel:
            def startTunnel(self, received: object) -> None:
                pass

        tunnel = self._request(Channel(), connection=b"Upgrade", upgrade=b"WebSocket")
        self.assertEqual(upgradeOffer(tunnel, allowed), b"WebSocket")
        mixed = self._request(
            Channel(), connection=b"upgrade", upgrade=b"h2c, websocket/13, foo"
        )
        self.assertEqual(upgradeOffer(mixed, allowed), b"websocket/13")
        noConnection = self._request(Channel(), upgrade=b"websocket")
        self.assertIsNone(upgradeOffer(noConnection, allowed))
        post = self._request(Channel(), connection=b"upgrade", upgrade=b"websocket")
        post.method = b"POST"
        self.assertIsNone(upgradeOffer(post, allowed))
        old = self._request(Channel(), connection=b"upgrade", upgrade=b"websocket")
        old.clientproto = b"HTTP/1.0"
        self.assertIsNone(upgradeOffer(old, allowed))
