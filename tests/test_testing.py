"""
Tests for L{lbproxy.testing}'s in-memory harness: L{ProxyHarness} (clients,
pending, accepted and refused backend connections, the clock) and
L{makeRequest}, the request a balancer plugin's tests give to C{pick}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import (
    CannotListenError,
    ConnectionLost,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import Data

import lbproxy.testing
from lbproxy import Backend, Pool, UpstreamResource, VirtualHost, VirtualHostResource
from lbproxy.balancers import Sticky, buildBalancer
from lbproxy.testing import CLIENT_ADDRESS, ProxyHarness, RefusingPort, makeRequest

_GET = b"GET /p?q=1 HTTP/1.1\r\nHost: app.example\r\n\r\n"
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def _pool(count: int = 2, **poolArgs: Any) -> Pool:
    """
    A pool of C{count} backends on 127.0.0.1, ports 9000 and up, on a
    L{MemoryReactorClock} of its own.
    """
    backends = [Backend("127.0.0.1", 9000 + i) for i in range(count)]
    return Pool("app", backends, reactor=MemoryReactorClock(), **poolArgs)


class _Page(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"page " + request.uri


class ProxyHarnessTests(SynchronousTestCase):
    def harness(self, resource: Any, **kwargs: Any) -> ProxyHarness:
        harness = ProxyHarness(resource, **kwargs)
        self.addCleanup(harness.close)
        return harness

    def test_poolRoundTrip(self) -> None:
        """
        Given a pool, the harness serves it and uses its reactor: a client's
        request waits as a pending connection to a backend; accepted, the
        backend gets the request and its response reaches the client.
        """
        pool = _pool()
        h = self.harness(pool)
        self.assertIs(h.reactor, pool.reactor)
        self.assertIsInstance(h.resource, UpstreamResource)
        client = h.connect()
        self.assertEqual(client.peer, CLIENT_ADDRESS)
        self.assertEqual(h.pending(), [])
        client.send(_GET)
        [pending] = h.pending()
        self.assertEqual((pending.host, pending.port), ("127.0.0.1", 9000))
        backend = h.acceptBackend()
        self.assertEqual(h.pending(), [])
        self.assertEqual((backend.host, backend.port), ("127.0.0.1", 9000))
        sent = backend.received()
        self.assertTrue(sent.startswith(b"GET /p?q=1 HTTP/1.1\r\n"), sent)
        self.assertIn(b"X-Forwarded-For: 192.0.2.1\r\n", sent)
        self.assertIn(b"X-Forwarded-Proto: http\r\n", sent)
        self.assertEqual(client.requests[0].uri, b"/p?q=1")
        backend.respond(_OK)
        response = client.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertTrue(response.endswith(b"\r\n\r\nhello"), response)
        self.assertEqual(client.requests, [])
        self.assertFalse(client.closing)
        client.clear()
        self.assertEqual(client.received(), b"")

    def test_refuseBackend(self) -> None:
        """
        A refused backend connection is retried on the next backend, and
        when every one is refused the client gets 502; L{refuseBackend}
        says which backend it refused.
        """
        h = self.harness(_pool())
        client = h.connect()
        client.send(_GET)
        self.assertEqual(h.refuseBackend().port, 9000)
        self.assertEqual([p.port for p in h.pending()], [9001])
        h.pending()[0].refuse()
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "), client.received())
        with self.assertRaises(LookupError):
            h.acceptBackend()
        with self.assertRaises(LookupError):
            h.refuseBackend()

    def test_answeredOnce(self) -> None:
        """
        A pending connection is answered once; answering it again is a
        mistake of the test, not a second connection.
        """
        h = self.harness(_pool(count=1))
        h.connect().send(_GET)
        [pending] = h.pending()
        pending.accept()
        self.assertRaises(RuntimeError, pending.accept)
        self.assertRaises(RuntimeError, pending.refuse)

    def test_refuseWithReason(self) -> None:
        """
        L{refuseBackend} takes the reason of the failure.
        """
        h = self.harness(_pool(count=1))
        client = h.connect()
        client.send(_GET)
        h.refuseBackend(Failure(TimeoutError()))
        self.assertTrue(client.received().startswith(b"HTTP/1.1 50"), client.received())
        self.assertEqual(h.pending(), [])

    def test_clock(self) -> None:
        """
        L{advance} runs the timeouts: a backend that does not answer within
        read_timeout gets the client a 504 and its connection closed.
        """
        h = self.harness(_pool(count=1, readTimeout=3.0))
        client = h.connect()
        client.send(_GET)
        backend = h.acceptBackend()
        h.advance(2.9)
        self.assertEqual(client.received(), b"")
        self.assertFalse(backend.closing)
        h.advance(0.2)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 504 "), client.received())
        self.assertTrue(backend.closing)

    def test_backendCloses(self) -> None:
        """
        L{BackendConnection.close} ends a body of unknown length (chunked
        to the client); with a L{ConnectionLost}, a truncated body aborts
        the client connection.
        """
        h = self.harness(_pool(count=1))
        client = h.connect()
        client.send(_GET)
        backend = h.acceptBackend()
        backend.respond(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
        backend.close()
        self.assertTrue(client.received().endswith(b"3\r\nabc\r\n0\r\n\r\n"), client.received())
        self.assertFalse(client.closing)
        client.clear()
        client.send(_GET)
        backend = h.acceptBackend()
        backend.clear()
        backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        backend.close(Failure(ConnectionLost()))
        self.assertTrue(client.closing)
        self.assertTrue(client.received().endswith(b"hel"))

    def test_clientDisconnects(self) -> None:
        """
        L{ClientConnection.disconnect}: a client that leaves while waiting
        closes the backend connection.
        """
        pool = _pool(count=1)
        h = self.harness(pool)
        client = h.connect()
        client.send(_GET)
        backend = h.acceptBackend()
        client.disconnect()
        self.assertTrue(backend.closing)
        self.assertEqual(pool.backends[0].active, 0)

    def test_peerAndSecure(self) -> None:
        """
        A client may come from any address, and through a TLS listener.
        """
        h = self.harness(_pool(count=1))
        client = h.connect(IPv6Address("TCP", "2001:db8::7", 5555), secure=True)
        client.send(_GET)
        sent = h.acceptBackend().received()
        self.assertIn(b"X-Forwarded-For: 2001:db8::7\r\n", sent)
        self.assertIn(b"X-Forwarded-Proto: https\r\n", sent)
        self.assertTrue(client.requests[0].isSecure())

    def test_pieces(self) -> None:
        """
        C{send(data, pieceSize)} sends C{data} in reads of that size; the
        proxy's refusals reach the client.
        """
        h = self.harness(_Page())
        client = h.connect()
        client.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", pieceSize=1)
        self.assertTrue(client.received().endswith(b"page /a"), client.received())
        client.send(b"GET /b HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", pieceSize=3)
        self.assertIn(b"HTTP/1.1 400 ", client.received())
        self.assertTrue(client.closing)

    def test_resource(self) -> None:
        """
        Given a resource, the harness serves it on a new
        L{MemoryReactorClock}, or on the one it is given (the pools'):
        here a vhost with a page of its own and a pool.
        """
        self.assertIsInstance(self.harness(_Page()).reactor, MemoryReactorClock)
        reactor = MemoryReactorClock()
        pool = Pool("app", [Backend("127.0.0.1", 9000)], reactor=reactor)
        root = VirtualHostResource(
            [VirtualHost("app", ["app.example"], {b"/": UpstreamResource(pool), b"/page": _Page()})]
        )
        h = self.harness(root, reactor=reactor)
        client = h.connect()
        client.send(b"GET /page HTTP/1.1\r\nHost: app.example\r\n\r\n")
        self.assertTrue(client.received().endswith(b"page /page"), client.received())
        self.assertEqual(h.pending(), [])
        client.send(_GET)
        h.acceptBackend().respond(_OK)
        self.assertTrue(client.received().endswith(b"hello"), client.received())

    def test_notAResource(self) -> None:
        self.assertRaises(TypeError, ProxyHarness, object())

    def test_siteArguments(self) -> None:
        """
        Keyword arguments go to the L{ProxySite}: past C{maxConnections}, a
        connection is refused (and closed at once).
        """
        h = self.harness(_Page(), maxConnections=1, maxBodySize=10)
        self.assertEqual(h.site.maxBodySize, 10)
        first = h.connect()
        second = h.connect()
        self.assertFalse(first.refused)
        self.assertTrue(second.refused)
        self.assertTrue(second.closing)
        self.assertEqual(second.requests, [])
        self.assertRaises(RuntimeError, second.send, _GET)
        second.disconnect()
        first.disconnect()
        self.assertFalse(h.connect().refused)


class MakeRequestTests(SynchronousTestCase):
    """
    L{makeRequest}: a request as lbproxy's server reads it.
    """

    def test_defaults(self) -> None:
        request = makeRequest()
        self.assertIsInstance(request, Request)
        self.assertEqual(
            (request.method, request.uri, request.path, request.clientproto),
            (b"GET", b"/", b"/", b"HTTP/1.1"),
        )
        self.assertEqual(request.getClientAddress(), IPv4Address("TCP", "192.0.2.10", 40000))
        self.assertEqual(request.getHeader(b"host"), b"app.example")
        self.assertFalse(request.isSecure())
        self.assertFalse(request.finished)

    def test_clients(self) -> None:
        """
        IPv4, IPv6, a UNIX socket, or any address.
        """
        self.assertEqual(
            makeRequest("2001:db8::1").getClientAddress(),
            IPv6Address("TCP", "2001:db8::1", 40000),
        )
        self.assertIsInstance(makeRequest(None).getClientAddress(), UNIXAddress)
        address = IPv4Address("TCP", "198.51.100.3", 1)
        self.assertEqual(makeRequest(address).getClientAddress(), address)

    def test_request(self) -> None:
        """
        Headers (a mapping or pairs, in order), the target and its query,
        the method, the body and TLS are as given.
        """
        request = makeRequest(
            headers=[(b"X-User", b"u1"), (b"Host", b"shop.example"), (b"x-user", b"u2")],
            uri=b"/items/3?id=7",
            method=b"POST",
            secure=True,
            body=b"abc",
        )
        self.assertEqual(request.requestHeaders.getRawHeaders(b"x-user"), [b"u1", b"u2"])
        self.assertEqual(request.getHeader(b"host"), b"shop.example")
        self.assertEqual((request.method, request.path), (b"POST", b"/items/3"))
        self.assertEqual(request.args, {b"id": [b"7"]})
        self.assertEqual(request.content.read(), b"abc")
        self.assertTrue(request.isSecure())
        self.assertEqual(
            makeRequest(headers={b"X-A": b"1"}).requestHeaders.getRawHeaders(b"x-a"), [b"1"]
        )

    def test_refused(self) -> None:
        """
        What the proxy would refuse is not made into a request.
        """
        with self.assertRaises(ValueError) as caught:
            makeRequest(headers={b"X-A": b"a\x00b"})
        self.assertIn("400", str(caught.exception))

    def test_responseStillOpen(self) -> None:
        """
        A balancer may set response headers and cookies on the request.
        """
        request = makeRequest()
        request.addCookie(b"pin", b"b1", path=b"/")
        request.responseHeaders.addRawHeader(b"X-Pinned", b"b1")
        self.assertEqual(request.cookies, [b"pin=b1; Path=/"])

    def test_cookies(self) -> None:
        """
        Cookies reach the request as lbproxy reads it: C{getCookie} finds
        them, as the sticky and consistent_hash balancers ask.
        """
        request = makeRequest(cookies={b"sid": b"abc", b"lbproxy_sticky": b"b1"})
        self.assertEqual(request.getHeader(b"cookie"), b"sid=abc; lbproxy_sticky=b1")
        self.assertEqual(request.getCookie(b"sid"), b"abc")
        self.assertEqual(request.getCookie(b"lbproxy_sticky"), b"b1")


class StickyThroughTheProxyTests(SynchronousTestCase):
    """
    A balancer driven through the whole proxy, as a plugin author would
    test one: L{Sticky} pins a client to the backend that answered it.
    """

    def test_pinned(self) -> None:
        reactor = MemoryReactorClock()
        backends = [Backend("127.0.0.1", 9000 + i) for i in range(3)]
        pool = Pool("app", backends, balancer=Sticky(), reactor=reactor)
        h = ProxyHarness(pool)
        self.addCleanup(h.close)
        client = h.connect()
        client.send(_GET)
        first = h.acceptBackend()
        first.respond(_OK)
        [cookie] = [
            line.split(b": ", 1)[1].split(b";")[0]
            for line in client.received().split(b"\r\n")
            if line.lower().startswith(b"set-cookie: lbproxy_sticky=")
        ]
        for _ in range(4):
            client.clear()
            first.clear()
            client.send(b"GET / HTTP/1.1\r\nHost: app.example\r\nCookie: %s\r\n\r\n" % cookie)
            self.assertEqual(h.pending(), [])
            self.assertTrue(first.received().startswith(b"GET / HTTP/1.1\r\n"), first.received())
            first.respond(_OK)
            self.assertTrue(client.received().endswith(b"hello"), client.received())
        self.assertEqual([b.requests for b in backends], [5, 0, 0])


class DocumentedExampleTests(SynchronousTestCase):
    """
    The examples of C{docs/embedding.rst} and
    C{docs/howto/writing-a-balancer.rst} that need no plugin, as written
    there.
    """

    def test_shop(self) -> None:
        reactor = MemoryReactorClock()
        pool = Pool("app", [Backend("127.0.0.1", 9001)], reactor=reactor, readTimeout=30)
        shop = VirtualHost(
            "shop",
            ["shop.example"],
            {b"/": UpstreamResource(pool), b"/about": Data(b"our shop\n", "text/plain")},
        )
        proxy = ProxyHarness(VirtualHostResource([shop]), reactor=reactor)
        self.addCleanup(proxy.close)

        client = proxy.connect()
        client.send(b"GET /about HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        self.assertTrue(client.received().endswith(b"\r\n\r\nour shop\n"))
        self.assertEqual(proxy.pending(), [])

        client = proxy.connect()
        client.send(b"GET /cart HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        backend = proxy.acceptBackend()
        self.assertIn(b"X-Forwarded-For: 192.0.2.1\r\n", backend.received())
        proxy.advance(30)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 504 "))

    def test_hashesTheHeader(self) -> None:
        backends = [Backend("10.0.0.%d" % i, 80) for i in range(1, 5)]
        balancer = buildBalancer("consistent_hash", {"key": "header:X-User"})
        balancer.backendsChanged(tuple(backends))
        alice = makeRequest(client="198.51.100.7", headers={b"X-User": b"alice"})
        again = makeRequest(client="203.0.113.9", headers={b"X-User": b"alice"})
        self.assertIs(balancer.pick(alice, frozenset()), balancer.pick(again, frozenset()))


class RefusingPortTests(TestCase):
    """
    L{RefusingPort} on real sockets.
    """

    def setUp(self) -> None:
        self.refusing = RefusingPort()
        self.addCleanup(self.refusing.close)

    def test_refusesConnections(self) -> Any:
        """
        A connection to it fails with L{ConnectionRefusedError}.
        """
        endpoint = TCP4ClientEndpoint(reactor, self.refusing.host, self.refusing.port)
        connecting = endpoint.connect(Factory.forProtocol(Protocol))
        return self.assertFailure(connecting, ConnectionRefusedError)

    def test_portStaysTaken(self) -> None:
        """
        No server can listen on its port until it is closed.
        """
        host, port = self.refusing.host, self.refusing.port
        with self.assertRaises(CannotListenError):
            reactor.listenTCP(port, Factory.forProtocol(Protocol), interface=host)
        self.refusing.close()
        listening = reactor.listenTCP(port, Factory.forProtocol(Protocol), interface=host)
        self.addCleanup(listening.stopListening)


class APITests(SynchronousTestCase):
    def test_all(self) -> None:
        """
        Every name of C{__all__} is there and documented.
        """
        for name in lbproxy.testing.__all__:
            value = getattr(lbproxy.testing, name)
            if callable(value):
                self.assertTrue(value.__doc__, name)
