# -*- test-case-name: tests.test_requestcontract -*-
"""
Tests for L{lbproxy.interfaces.IProxyRequest}, the one contract between a
forwarded request and the client request it answers: that lbproxy's own
L{ProxyRequest} provides it, that any other L{twisted.web.http.Request}
is adapted to it (L{lbproxy._proxy._PlainRequest}) without a reference
cycle, and that a proxied response reaches the client the same way
through either: served by a L{ProxySite}, and by a plain
L{twisted.web.server.Site} (Twisted's own C{HTTPChannel}, as an embedder
would mount an L{UpstreamResource}).  On a L{StringTransport} with a
L{MemoryReactorClock}: the socket tests of C{tests.test_embedding} are
not the only ones to cover the adapter.
"""

from __future__ import annotations

import gc
import weakref
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request, Site
from zope.interface.verify import verifyObject

from lbproxy import Backend, Pool, ProxySite, UpstreamResource
from lbproxy._interfaces import IProxyRequest
from lbproxy._proxy import _PlainRequest, _proxyRequest
from lbproxy._site import ProxyRequest
from lbproxy.testing import _Holding
from tests.refcounting import withoutCollector

_PEER = IPv4Address("TCP", "192.0.2.1", 4321)


class _Transport(StringTransport):
    """
    A L{StringTransport} that tells an abort from a close (what
    L{StringTransport.abortConnection} records differs between Twisted
    releases).
    """

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        StringTransport.abortConnection(self)


def _held(
    testCase: SynchronousTestCase,
    siteClass: Any,
    data: bytes = b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n",
) -> tuple[Any, Any]:
    """
    Serve one request (C{data}) with a C{siteClass} site whose resource
    holds it, and keeps no reference to it.

    @return: the client connection and the request.
    """
    reactor = MemoryReactorClock()
    holder = _Holding()
    site = siteClass(holder, reactor=reactor)
    site.startFactory()
    testCase.addCleanup(site.stopFactory)
    channel = site.buildProtocol(_PEER)
    channel.makeConnection(StringTransport(peerAddress=_PEER))
    channel.dataReceived(data)
    [request] = holder.requests
    del holder.requests[:]
    return channel, request


class ProvidedTests(SynchronousTestCase):
    """
    Who provides L{IProxyRequest}, and how a request is made one.
    """

    def test_proxyRequestProvides(self) -> None:
        """
        A request of L{ProxySite} provides L{IProxyRequest} itself, and
        L{_proxyRequest} returns it as it is.
        """
        _, request = _held(self, ProxySite)
        self.assertIsInstance(request, ProxyRequest)
        self.assertTrue(IProxyRequest.providedBy(request))
        self.assertTrue(verifyObject(IProxyRequest, request))
        self.assertIs(_proxyRequest(request), request)
        self.assertEqual(request.hostHeader, b"app.example")

    def test_plainRequestAdapted(self) -> None:
        """
        A request of a plain L{Site} does not provide L{IProxyRequest}:
        L{_proxyRequest} returns an adapter that does, with the request's
        C{Host}.
        """
        _, request = _held(self, Site)
        self.assertIs(type(request), Request)
        self.assertFalse(IProxyRequest.providedBy(request))
        proxied = _proxyRequest(request)
        self.assertIsInstance(proxied, _PlainRequest)
        self.assertTrue(verifyObject(IProxyRequest, proxied))
        self.assertEqual(proxied.hostHeader, b"app.example")
        self.assertFalse(proxied.startedWriting)
        self.assertIsNone(proxied.onConnectionLost)

    def test_adaptedWithoutHost(self) -> None:
        """
        The adapter of a request without C{Host} has L{None} for it.
        """
        _, request = _held(self, Site, b"GET / HTTP/1.0\r\n\r\n")
        self.assertIsNone(_proxyRequest(request).hostHeader)

    def test_notARequest(self) -> None:
        """
        What is not a request cannot be adapted: L{TypeError}.
        """
        self.assertRaises(TypeError, _proxyRequest, object())

    def test_freshAdapterEachTime(self) -> None:
        """
        The adapter is not cached on the request (a L{Componentized}, which
        would keep it, and the request through it, in a cycle).
        """
        _, request = _held(self, Site)
        self.assertIsNot(_proxyRequest(request), _proxyRequest(request))

    def _assertNoCycle(self, siteClass: Any) -> None:
        channel, request = _held(self, siteClass)
        withoutCollector(self)
        proxied = _proxyRequest(request)
        proxied.onConnectionLost = lambda reason: None
        requestRef = weakref.ref(request)
        proxiedRef = weakref.ref(proxied)
        request.finish()
        del request, proxied
        self.assertIsNone(requestRef())
        self.assertIsNone(proxiedRef())

    def test_noCycleProxyRequest(self) -> None:
        """
        A L{ProxyRequest} that was asked for as an L{IProxyRequest}, and
        given a connection-lost callback, is freed once finished without
        the cyclic garbage collector.
        """
        self._assertNoCycle(ProxySite)

    def test_noCyclePlainRequest(self) -> None:
        """
        So is a plain request and its adapter.
        """
        self._assertNoCycle(Site)


class _Harness:
    """
    An L{UpstreamResource} with a pool of one backend, served by a site of
    C{siteClass}; one client connection to it.  The backend side is driven
    through L{MemoryReactorClock.tcpClients}.
    """

    def __init__(self, testCase: SynchronousTestCase, siteClass: Any) -> None:
        self.testCase = testCase
        self.reactor = MemoryReactorClock()
        self.backend = Backend("127.0.0.1", 9000)
        self.pool = Pool("app", [self.backend], reactor=self.reactor, readTimeout=5.0)
        self.requests: list[Any] = []
        requests = self.requests

        class Recording(UpstreamResource):
            def render(self, request: Any) -> Any:
                requests.append(request)
                return UpstreamResource.render(self, request)

        self.resource = Recording(self.pool)
        self.site = siteClass(self.resource, reactor=self.reactor)
        self.site.startFactory()
        testCase.addCleanup(self.site.stopFactory)
        self.client = self.site.buildProtocol(_PEER)
        self.clientTransport = _Transport(peerAddress=_PEER)
        self.client.makeConnection(self.clientTransport)
        self.connected = 0

    def send(self, data: bytes) -> None:
        self.client.dataReceived(data)

    def pending(self) -> int:
        """
        How many backend connection attempts are not answered yet.
        """
        return len(self.reactor.tcpClients) - self.connected

    def accept(self) -> tuple[Any, _Transport]:
        """
        Let the oldest pending backend connection succeed.

        @return: C{(protocol, transport)}
        """
        _, port, factory, _, _ = self.reactor.tcpClients[self.connected]
        self.connected += 1
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        transport = _Transport()
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse(self) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients[self.connected]
        self.connected += 1
        connector: Any = None
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def response(self) -> bytes:
        return self.clientTransport.value()

    def idle(self) -> int:
        """
        How many connections to the backend the pool keeps for reuse.
        """
        return len(self.pool._connections[self.backend].idle)


_GET = b"GET /path?q=1 HTTP/1.1\r\nHost: app.example\r\n\r\n"


def _head(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[0] + b"\r\n"


if TYPE_CHECKING:
    _MixinBase = SynchronousTestCase
else:
    _MixinBase = object


class _RelayTestsMixin(_MixinBase):
    """
    A backend's response as the client receives it, whatever the site.
    The subclasses say which site serves the L{UpstreamResource}.
    """

    siteClass: Any

    def harness(self) -> _Harness:
        return _Harness(self, self.siteClass)

    def test_knownLength(self) -> None:
        """
        A body of known length is relayed with that length, once, with the
        backend's headers (not lbproxy's nor Twisted's C{Server}), and both
        connections stay open for the next request.
        """
        h = self.harness()
        h.send(_GET)
        backend, backendTransport = h.accept()
        self.assertTrue(backendTransport.value().startswith(b"GET /path?q=1 HTTP/1.1\r\n"))
        backend.dataReceived(
            b"HTTP/1.1 200 OK\r\nServer: app\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello"
        )
        response = h.response()
        head = _head(response)
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertEqual(head.count(b"Content-Length: 5\r\n"), 1, head)
        self.assertIn(b"\r\nX-A: 1\r\n", head)
        self.assertIn(b"\r\nServer: app\r\n", head)
        self.assertNotIn(b"TwistedWeb", head)
        self.assertNotIn(b"chunked", head)
        self.assertTrue(response.endswith(b"\r\n\r\nhello"), response)
        self.assertFalse(h.clientTransport.disconnecting)
        self.assertEqual(h.idle(), 1)
        h.clientTransport.clear()
        h.send(_GET)
        self.assertEqual(h.pending(), 0)
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye")
        self.assertTrue(h.response().endswith(b"\r\n\r\nbye"), h.response())

    def test_noContentTypeAdded(self) -> None:
        """
        A response without C{Content-Type} gets none: a proxy passes on
        what the backend said, and says nothing where it said nothing.
        """
        h = self.harness()
        h.send(_GET)
        backend, _ = h.accept()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        self.assertNotIn(b"content-type", h.response().lower())

    def test_chunked(self) -> None:
        """
        A chunked body arriving in pieces goes to an HTTP/1.1 client
        chunked, piece by piece, and ends with the last chunk.
        """
        h = self.harness()
        h.send(_GET)
        backend, _ = h.accept()
        backend.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        response = h.response()
        self.assertEqual(_head(response).count(b"Transfer-Encoding: chunked\r\n"), 1)
        self.assertTrue(response.endswith(b"\r\n\r\n5\r\nhello\r\n"), response)
        backend.dataReceived(b"6\r\n world\r\n0\r\n\r\n")
        response = h.response()
        self.assertTrue(
            response.endswith(b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), response
        )
        self.assertFalse(h.clientTransport.disconnecting)
        self.assertEqual(h.idle(), 1)

    def test_cookies(self) -> None:
        """
        The backend's C{Set-Cookie} values reach the client, each once and
        in the backend's order, with a cookie the application (a balancer)
        set on the request before the response came.
        """
        h = self.harness()
        h.send(_GET)
        backend, _ = h.accept()
        [request] = h.requests
        request.addCookie(b"pin", b"1")
        backend.dataReceived(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nX-B: 2\r\n"
            b"Set-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"
        )
        head = _head(h.response())
        cookies = [
            line[len(b"Set-Cookie: "):]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"set-cookie:")
        ]
        self.assertEqual(sorted(cookies), [b"a=1; Path=/", b"b=2", b"pin=1"], head)
        self.assertLess(cookies.index(b"a=1; Path=/"), cookies.index(b"b=2"))

    def test_head(self) -> None:
        """
        The response to HEAD keeps the backend's C{Content-Length}, has no
        body and is not chunked; the connection goes on.
        """
        h = self.harness()
        h.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend, _ = h.accept()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
        response = h.response()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertTrue(response.endswith(b"\r\n\r\n"), response)
        self.assertEqual(response.count(b"Content-Length: 42\r\n"), 1, response)
        self.assertNotIn(b"chunked", response)
        self.assertFalse(h.clientTransport.disconnecting)
        self.assertEqual(h.idle(), 1)

    def test_noContent(self) -> None:
        """
        A 204 has neither length, nor chunks, nor body.
        """
        h = self.harness()
        h.send(_GET)
        backend, _ = h.accept()
        backend.dataReceived(b"HTTP/1.1 204 No Content\r\nETag: x\r\n\r\n")
        response = h.response()
        self.assertTrue(response.startswith(b"HTTP/1.1 204 No Content\r\n"), response)
        self.assertTrue(response.endswith(b"ETag: x\r\n\r\n"), response)
        self.assertNotIn(b"Content-Length", response)
        self.assertNotIn(b"chunked", response)
        self.assertFalse(h.clientTransport.disconnecting)

    def test_backendBreaksOff(self) -> None:
        """
        A backend that breaks off mid-body: the client connection is
        aborted after what came, never ended as if complete.
        """
        h = self.harness()
        h.send(_GET)
        backend, _ = h.accept()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        self.assertFalse(h.clientTransport.disconnecting)
        backend.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(h.clientTransport.aborted)
        self.assertTrue(h.response().endswith(b"\r\n\r\nhel"), h.response())
        self.assertEqual(self.backendFailures(h), 1)

    def test_chunkedBackendBreaksOff(self) -> None:
        """
        With a chunked relay, a broken backend never produces the last
        chunk.
        """
        h = self.harness()
        h.send(_GET)
        backend, _ = h.accept()
        backend.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n"
        )
        backend.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(h.clientTransport.aborted)
        self.assertTrue(h.response().endswith(b"\r\n3\r\nhel\r\n"), h.response())

    def backendFailures(self, h: _Harness) -> int:
        return h.backend.failures

    def _clientLeaves(self, h: _Harness) -> None:
        """
        The client connection is lost.
        """
        h.client.connectionLost(Failure(ConnectionLost()))

    def test_clientLeavesBeforeHead(self) -> None:
        """
        A client that leaves while the backend has not answered: the
        backend connection is dropped, the request counted as done.
        """
        h = self.harness()
        h.send(_GET)
        _, backendTransport = h.accept()
        self.assertEqual(h.backend.active, 1)
        self._clientLeaves(h)
        self.assertTrue(backendTransport.disconnecting)
        self.assertEqual(h.backend.active, 0)
        self.assertEqual(h.backend.failures, 0)
        self.assertEqual(h.idle(), 0)

    def test_clientLeavesMidResponse(self) -> None:
        """
        A client that leaves in the middle of a response body: the backend
        connection is dropped (not reused for the next request), the
        request counted as done, the backend not blamed, and nothing is
        logged as an error.
        """
        # An error left in a Deferred is logged when the Deferred is
        # collected: here, not in whichever test runs next.
        self.addCleanup(self._collectErrors)
        h = self.harness()
        h.send(_GET)
        backend, backendTransport = h.accept()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        self._clientLeaves(h)
        self.assertTrue(backendTransport.disconnecting)
        self.assertEqual(h.backend.active, 0)
        self.assertEqual(h.backend.failures, 0)
        self.assertEqual(h.idle(), 0)
        backend.dataReceived(b"lo")
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.idle(), 0)
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

        # A new client gets a new backend connection.
        again = h.site.buildProtocol(_PEER)
        againTransport = _Transport(peerAddress=_PEER)
        again.makeConnection(againTransport)
        again.dataReceived(_GET)
        self.assertEqual(h.pending(), 1)
        fresh, _ = h.accept()
        fresh.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(againTransport.value().endswith(b"\r\n\r\nok"))

    def _collectErrors(self) -> None:
        """
        Collect the garbage, and with it any L{Deferred} left with an
        error, and drop what that logs: the test that left it has failed
        already.
        """
        gc.collect()
        self.flushLoggedErrors()

    def test_slowClientPausesBackend(self) -> None:
        """
        While the client connection cannot keep up (its transport pauses
        its producer), the backend connection is paused; it resumes when
        the client does, and the body completes.
        """
        h = self.harness()
        h.send(_GET)
        backend, backendTransport = h.accept()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhel")
        producer = h.clientTransport.producer
        assert producer is not None
        self.assertEqual(backendTransport.producerState, "producing")
        producer.pauseProducing()
        self.assertEqual(backendTransport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(backendTransport.producerState, "producing")
        backend.dataReceived(b"lo world")
        self.assertTrue(h.response().endswith(b"\r\n\r\nhello world"), h.response())
        self.assertFalse(h.clientTransport.disconnecting)
        self.assertEqual(h.idle(), 1)

    def test_backendRefuses(self) -> None:
        """
        A backend that refuses the connection gets the client a 502 page.
        """
        h = self.harness()
        h.send(_GET)
        h.refuse()
        response = h.response()
        self.assertTrue(response.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), response)
        self.assertIn(b"<h1>502 Bad Gateway</h1>", response)
        self.assertNotIn(b"Traceback", response)
        self.assertEqual(h.backend.failures, 1)


class PlainSiteRelayTests(_RelayTestsMixin, SynchronousTestCase):
    """
    The adapter path: L{UpstreamResource} behind a plain
    L{twisted.web.server.Site}, whose requests are adapted to
    L{IProxyRequest}.
    """

    siteClass = Site


class ProxySiteRelayTests(_RelayTestsMixin, SynchronousTestCase):
    """
    The same, behind a L{ProxySite}, whose requests provide
    L{IProxyRequest} themselves.
    """

    siteClass = ProxySite
