"""
Tests for L{lbproxy._proxy}: a client speaking to a L{ProxySite} over a
L{StringTransport}, backends reached through a L{MemoryReactorClock}.
"""

from __future__ import annotations

import weakref

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import Backend, BackendState, Pool, UpstreamResource
from lbproxy._proxy import _Exchange
from lbproxy.testing import ProxyHarness
from tests.refcounting import liveOne, withoutCollector


class _Harness:
    """
    One proxy with C{count} backends, one client connection to it, on
    L{lbproxy.testing.ProxyHarness}.
    """

    def __init__(self, testCase, count=2, preserveHost=True, **poolArgs):
        self.reactor = MemoryReactorClock()
        self.backends = [Backend("127.0.0.1", 9000 + i) for i in range(count)]
        poolArgs.setdefault("readTimeout", 5.0)
        self.pool = Pool("app", self.backends, reactor=self.reactor, **poolArgs)
        self.resource = UpstreamResource(self.pool, preserveHost)
        self.proxy = ProxyHarness(self.resource, reactor=self.reactor)
        testCase.addCleanup(self.proxy.close)
        self.site = self.proxy.site
        self.connection = self.proxy.connect(IPv4Address("TCP", "192.0.2.1", 4321))
        self.client = self.connection.protocol
        self.clientTransport = self.connection.transport

    def send(self, data):
        self.connection.send(data)

    def pending(self):
        """
        The backend connection attempts not yet answered, as
        C{(port, factory)}.
        """
        return [(p.port, p.factory) for p in self.proxy.pending()]

    def accept(self):
        """
        Let the oldest pending backend connection succeed.

        @return: C{(port, protocol, transport)}
        """
        backend = self.proxy.acceptBackend()
        return backend.port, backend.protocol, backend.transport

    def refuse(self):
        return self.proxy.refuseBackend().port

    def response(self):
        return self.connection.received()


_GET = b"GET /path?q=1 HTTP/1.1\r\nHost: app.example\r\n\r\n"


def _stalledResponse(testCase, keepAlive=None):
    """
    A harness whose client (send_timeout 30 s, keep-alive C{keepAlive})
    has stopped taking a response of 10 bytes after its first 3.

    @return: the harness, and the backend's protocol and transport.
    """
    h = _Harness(testCase, count=1, readTimeout=600.0)
    h.client.sendTimeout = 30.0
    h.client.timeOut = keepAlive
    h.send(_GET)
    _, protocol, transport = h.accept()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
    h.clientTransport.producer.pauseProducing()
    return h, protocol, transport
_OK = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Length: 5\r\n"
    b"Connection: keep-alive, X-Hop\r\n"
    b"X-Hop: 1\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"\r\n"
    b"hello"
)


class ForwardingTests(SynchronousTestCase):
    def test_requestForwarded(self):
        """
        The request goes to the backend over HTTP/1.1 with its path and
        query, the forwarding headers, and the client's Host.
        """
        h = _Harness(self)
        h.send(_GET)
        port, protocol, transport = h.accept()
        sent = transport.value()
        self.assertTrue(sent.startswith(b"GET /path?q=1 HTTP/1.1\r\n"), sent)
        self.assertIn(b"Host: app.example\r\n", sent)
        self.assertIn(b"X-Forwarded-For: 192.0.2.1\r\n", sent)
        self.assertIn(b"X-Real-Ip: 192.0.2.1\r\n", sent)
        self.assertNotIn(b"Connection: close", sent)

    def test_idleConnectionsExpire(self):
        """
        An idle backend connection is closed C{keepaliveTimeout} seconds
        after its last response, each on its own time.
        """
        h = _Harness(self, count=1, keepaliveTimeout=10.0)
        other = h.site.buildProtocol(IPv4Address("TCP", "192.0.2.2", 4321))
        other.makeConnection(StringTransport())
        h.send(_GET)
        _, first, firstTransport = h.accept()
        h.reactor.advance(4)
        other.dataReceived(_GET)
        _, second, secondTransport = h.accept()
        first.dataReceived(_OK)
        h.reactor.advance(4)
        second.dataReceived(_OK)
        idle = h.pool._connections[h.backends[0]].idle
        self.assertEqual(len(idle), 2)
        h.reactor.advance(5.9)
        self.assertFalse(firstTransport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(firstTransport.disconnecting)
        self.assertFalse(secondTransport.disconnecting)
        h.reactor.advance(3.9)
        self.assertFalse(secondTransport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(secondTransport.disconnecting)
        self.assertEqual(idle, [])

    def test_reusedConnectionDoesNotExpire(self):
        """
        A connection taken from the idle cache is not closed by its old
        idle timeout.
        """
        h = _Harness(self, count=1, keepaliveTimeout=10.0)
        h.send(_GET)
        _, protocol, transport = h.accept()
        protocol.dataReceived(_OK)
        h.reactor.advance(9)
        h.send(_GET)
        h.reactor.advance(2)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(_OK)
        h.reactor.advance(9.9)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_hostNotPreserved(self):
        h = _Harness(self, preserveHost=False)
        h.send(_GET)
        port, protocol, transport = h.accept()
        self.assertIn(b"Host: 127.0.0.1:%d\r\n" % port, transport.value())

    def test_responseRelayed(self):
        """
        The response comes back with its status, every Set-Cookie in order,
        its length, and without hop-by-hop headers.
        """
        h = _Harness(self)
        h.send(_GET)
        _, protocol, _ = h.accept()
        protocol.dataReceived(_OK)
        response = h.response()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertIn(b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n", response)
        self.assertIn(b"Content-Length: 5\r\n", response)
        self.assertNotIn(b"X-Hop", response)
        self.assertNotIn(b"Content-Type", response)
        self.assertNotIn(b"TwistedWeb", response)
        self.assertTrue(response.endswith(b"\r\n\r\nhello"))

    def test_headSentBeforeBody(self):
        """
        A head that arrives without its body goes to the client at once;
        the body follows as it arrives, and meanwhile a slow client can
        pause the backend.
        """
        h = _Harness(self)
        h.send(_GET)
        _, protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        response = h.response()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertTrue(response.endswith(b"Content-Length: 5\r\n\r\n"), response)
        protocol.dataReceived(b"he")
        self.assertTrue(h.response().endswith(b"\r\n\r\nhe"))
        request = h.client.requests[0]
        self.assertIsNotNone(request.producer)
        h.clientTransport.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        h.clientTransport.producer.resumeProducing()
        protocol.dataReceived(b"llo")
        self.assertTrue(h.response().endswith(b"\r\n\r\nhello"))
        self.assertIsNone(request.producer)

    def test_unknownLengthChunkedForHTTP11(self):
        """
        A body of unknown length (delimited by the backend closing) goes to
        an HTTP/1.1 client chunked, and the client connection stays open.
        """
        h = _Harness(self)
        h.send(_GET)
        _, protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
        protocol.connectionLost(Failure(ConnectionDone()))
        response = h.response()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), response)
        self.assertFalse(h.clientTransport.disconnecting)

    def test_unknownLengthForHTTP10(self):
        """
        An HTTP/1.0 client gets a body of unknown length as it is, ended by
        closing the connection.
        """
        h = _Harness(self)
        h.send(b"GET / HTTP/1.0\r\n\r\n")
        _, protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
        protocol.connectionLost(Failure(ConnectionDone()))
        response = h.response()
        self.assertTrue(response.startswith(b"HTTP/1.0 200 OK\r\n"), response)
        self.assertNotIn(b"chunked", response)
        self.assertTrue(response.endswith(b"\r\n\r\nabc"), response)
        self.assertTrue(h.clientTransport.disconnecting)

    def test_bodylessResponses(self):
        """
        The response to HEAD keeps the backend's Content-Length and has no
        body; a 204 and a 304 have neither; the connection stays usable.
        """
        h = _Harness(self, count=1)
        h.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        _, protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
        self.assertTrue(h.response().endswith(b"Content-Length: 42\r\n\r\n"), h.response())
        for code in (b"204 No Content", b"304 Not Modified"):
            h.clientTransport.clear()
            h.send(_GET)
            protocol.dataReceived(b"HTTP/1.1 " + code + b"\r\nETag: x\r\n\r\n")
            response = h.response()
            self.assertTrue(response.startswith(b"HTTP/1.1 " + code + b"\r\n"), response)
            self.assertTrue(response.endswith(b"ETag: x\r\n\r\n"), response)
            self.assertNotIn(b"Content-Length", response)
            self.assertNotIn(b"chunked", response)
        self.assertFalse(h.clientTransport.disconnecting)

    def test_headersSetBeforeTheResponse(self):
        """
        Headers and cookies put on the request before the backend answered
        (by a balancer, say) are sent with the backend's, and the backend's
        Date and Server replace lbproxy's.
        """
        h = _Harness(self)
        h.send(_GET)
        _, protocol, transport = h.accept()
        request = h.client.requests[0]
        request.responseHeaders.addRawHeader(b"X-Balancer", b"yes")
        request.addCookie(b"pin", b"1")
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nDate: then\r\nServer: app\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        response = h.response()
        self.assertIn(b"X-Balancer: yes\r\n", response)
        self.assertIn(b"Set-Cookie: pin=1\r\n", response)
        self.assertIn(b"Date: then\r\n", response)
        self.assertIn(b"Server: app\r\n", response)
        self.assertEqual(response.count(b"Date:"), 1)

    def test_formBodyNotParsed(self):
        """
        A form body is forwarded, not parsed into C{args}; the query string
        still is.
        """
        h = _Harness(self)
        h.send(
            b"POST /f?q=1 HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 3\r\n\r\na=1"
        )
        self.assertEqual(h.client.requests[0].args, {b"q": [b"1"]})
        _, protocol, transport = h.accept()
        self.assertTrue(transport.value().endswith(b"\r\n\r\na=1"))

    def test_errorPageHasDate(self):
        """
        lbproxy's own pages (here a 502) carry a C{Date}, and only one.
        """
        h = _Harness(self, count=1)
        h.send(_GET)
        h.refuse()
        response = h.response()
        self.assertTrue(response.startswith(b"HTTP/1.1 502 "), response)
        self.assertIn(b"\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n", response)
        self.assertEqual(response.count(b"Date:"), 1)

    def test_noCycles(self):
        """
        A proxied request and its exchange are freed as soon as the
        response is done, without the cyclic garbage collector (so a busy
        proxy does not make it run every few requests).
        """
        h = _Harness(self, count=1)
        h.send(_GET)
        _, protocol, _ = h.accept()
        protocol.dataReceived(_OK)
        withoutCollector(self)
        h.send(_GET)
        request = weakref.ref(h.client.requests[0])
        exchange = weakref.ref(liveOne(_Exchange))
        protocol.dataReceived(_OK)
        self.assertTrue(h.response().endswith(b"hello"))
        self.assertIsNone(request())
        self.assertIsNone(exchange())

    def test_connectionReused(self):
        """
        A second request reuses the idle backend connection.
        """
        h = _Harness(self, count=1)
        h.send(_GET)
        _, protocol, transport = h.accept()
        protocol.dataReceived(_OK)
        transport.clear()
        h.send(_GET)
        self.assertEqual(h.pending(), [])
        self.assertTrue(transport.value().startswith(b"GET /path?q=1"))

    def test_postBodyReframed(self):
        """
        A chunked request body reaches the backend with a Content-Length.
        """
        h = _Harness(self, count=1)
        h.send(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        _, protocol, transport = h.accept()
        h.reactor.advance(0)  # FileBodyProducer runs on the cooperator
        sent = transport.value()
        self.assertIn(b"Content-Length: 11\r\n", sent)
        self.assertNotIn(b"chunked", sent.lower())


class FailureTests(SynchronousTestCase):
    def test_connectRefusedRetried(self):
        """
        A refused connection counts against that backend and a GET is tried
        on the next one.
        """
        h = _Harness(self)
        h.send(_GET)
        first = h.refuse()
        self.assertEqual(len(h.pending()), 1)
        port, protocol, _ = h.accept()
        self.assertNotEqual(port, first)
        protocol.dataReceived(_OK)
        self.assertTrue(h.response().startswith(b"HTTP/1.1 200"))
        failed = [b for b in h.backends if b.port == first][0]
        self.assertEqual(failed.failures, 1)
        self.assertIs(failed.state, BackendState.FAILED)

    def test_postNotRetried(self):
        """
        A POST is not retried: its failure is a 502.
        """
        h = _Harness(self)
        h.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        h.refuse()
        self.assertEqual(h.pending(), [])
        self.assertTrue(h.response().startswith(b"HTTP/1.1 502 Bad Gateway"))

    def test_allRefused(self):
        """
        When every backend refuses, the client gets the 502 page and no
        traceback.
        """
        h = _Harness(self)
        h.send(_GET)
        h.refuse()
        h.refuse()
        response = h.response()
        self.assertTrue(response.startswith(b"HTTP/1.1 502 Bad Gateway"))
        self.assertIn(b"<h1>502 Bad Gateway</h1>", response)
        self.assertNotIn(b"TwistedWeb", response)
        self.assertNotIn(b"Traceback", response)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_nextUpstreamTries(self):
        """
        C{next_upstream_tries} caps the backends one request tries.
        """
        h = _Harness(self, count=3, nextUpstreamTries=2)
        h.send(_GET)
        h.refuse()
        h.refuse()
        self.assertEqual(h.pending(), [])
        self.assertTrue(h.response().startswith(b"HTTP/1.1 502"))

    def test_readTimeout(self):
        """
        A backend that sends no response head within read_timeout gets the
        client a 504; the request is not retried elsewhere.
        """
        h = _Harness(self, readTimeout=3.0)
        h.send(_GET)
        _, protocol, transport = h.accept()
        h.reactor.advance(2.9)
        self.assertEqual(h.response(), b"")
        h.reactor.advance(0.2)
        self.assertTrue(h.response().startswith(b"HTTP/1.1 504 Gateway Timeout"))
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(h.pending(), [])

    def test_resetBeforeHeadRetried(self):
        """
        A new connection closed before the response head counts as a
        failure; a GET moves on to the next backend.
        """
        h = _Harness(self)
        h.send(_GET)
        _, protocol, _ = h.accept()
        protocol.connectionLost(Failure(ConnectionDone()))
        _, second, _ = h.accept()
        second.dataReceived(_OK)
        self.assertTrue(h.response().startswith(b"HTTP/1.1 200"))
        self.assertEqual(sum(b.failures for b in h.backends), 1)

    def test_keepaliveRace(self):
        """
        A reused idle connection that the backend closed as it was reused is
        retried once on a fresh connection to the same backend, and is not
        counted as the backend's failure.
        """
        h = _Harness(self, count=1)
        h.send(_GET)
        _, protocol, transport = h.accept()
        protocol.dataReceived(_OK)
        h.send(_GET)
        protocol.connectionLost(Failure(ConnectionDone()))
        (pending,) = h.pending()
        _, fresh, _ = h.accept()
        fresh.dataReceived(_OK)
        self.assertEqual(h.response().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual(h.backends[0].failures, 0)

    def test_invalidResponse(self):
        """
        Garbage instead of a status line is a 502.
        """
        h = _Harness(self, count=1)
        h.send(_GET)
        _, protocol, _ = h.accept()
        protocol.dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertTrue(h.response().startswith(b"HTTP/1.1 502"))

    def test_truncatedBodyAbortsClient(self):
        """
        A backend that breaks off after the response started makes the
        proxy abort the client connection instead of ending the body.
        """
        h = _Harness(self, count=1)
        h.send(_GET)
        _, protocol, _ = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        self.assertFalse(h.clientTransport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(h.clientTransport.disconnecting)
        self.assertTrue(h.response().endswith(b"hel"))

    def test_truncatedChunkedBodyNotTerminated(self):
        """
        With a chunked relay, a broken backend never produces the final
        zero-length chunk.
        """
        h = _Harness(self, count=1)
        h.send(_GET)
        _, protocol, _ = h.accept()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n"
        )
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertNotIn(b"0\r\n\r\n", h.response())
        self.assertTrue(h.clientTransport.disconnecting)

    def test_readTimeoutMidBody(self):
        """
        A backend that stalls in the middle of the body is cut off after
        read_timeout and the client connection is aborted.
        """
        h = _Harness(self, count=1, readTimeout=2.0)
        h.send(_GET)
        _, protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        h.reactor.advance(1.5)
        protocol.dataReceived(b"lo")
        h.reactor.advance(1.5)
        self.assertFalse(h.clientTransport.disconnecting)
        h.reactor.advance(1.0)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(h.clientTransport.disconnecting)

    def test_readTimeoutCoversTheWholeHead(self):
        """
        The response head must arrive whole within read_timeout of the
        request: its bytes, sent one by one, do not each buy more time.
        """
        h = _Harness(self, count=1, readTimeout=2.0)
        h.send(_GET)
        _, protocol, transport = h.accept()
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: 1\r\n":
            protocol.dataReceived(bytes([byte]))
            h.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(h.response().startswith(b"HTTP/1.1 504 "), h.response())

    def test_noReadTimeoutWhilePaused(self):
        """
        While a slow client has paused the backend, read_timeout does not
        run (the backend is not the one being slow); it starts again when
        the client reads again.
        """
        h = _Harness(self, count=1, readTimeout=2.0)
        h.send(_GET)
        _, protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        h.clientTransport.producer.pauseProducing()
        h.reactor.advance(10)
        self.assertFalse(transport.disconnecting)
        h.clientTransport.producer.resumeProducing()
        h.reactor.advance(1.9)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_sendTimeoutClosesBoth(self):
        """
        A client that accepts none of a relayed response for send_timeout
        is closed, and so is the backend connection (its state is
        unknown): it does not go back to the pool.
        """
        h, protocol, transport = _stalledResponse(self)
        self.assertEqual(transport.producerState, "paused")
        h.reactor.advance(29.9)
        self.assertFalse(h.clientTransport.disconnecting)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(h.clientTransport.disconnecting)
        h.connection.disconnect(Failure(ConnectionLost()))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.pool._connections[h.backends[0]].idle, [])
        self.assertEqual(h.backends[0].active, 0)

    def test_sendTimeoutRestartsOnResume(self):
        """
        send_timeout counts from the last time the client's transport
        paused the response: a client that keeps reading, however slowly,
        is not cut off.
        """
        h = _Harness(self, count=1, readTimeout=600.0)
        h.client.sendTimeout = 30.0
        h.send(_GET)
        _, protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        for _ in range(3):
            h.clientTransport.producer.pauseProducing()
            h.reactor.advance(20)
            h.clientTransport.producer.resumeProducing()
        self.assertFalse(h.clientTransport.disconnecting)
        protocol.dataReceived(b"lo, wor")
        self.assertTrue(h.response().endswith(b"hello, wor"))
        self.assertFalse(h.clientTransport.disconnecting)
        self.assertEqual(len(h.pool._connections[h.backends[0]].idle), 1)

    def test_sendTimeoutAfterBackendDone(self):
        """
        send_timeout runs until the client has taken the whole response,
        not only until the backend is done: a response that ended while
        the client's transport was paused still cuts off a client that
        takes none of the rest for send_timeout; the backend connection,
        done and sound, went back to the pool.
        """
        h, protocol, _ = _stalledResponse(self, keepAlive=5.0)
        h.reactor.advance(10)
        protocol.dataReceived(b"lo, wor")
        self.assertEqual(len(h.pool._connections[h.backends[0]].idle), 1)
        # Not the keep-alive timeout (5 s): the client has not taken it all.
        h.reactor.advance(19.9)
        self.assertFalse(h.clientTransport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(h.clientTransport.disconnecting)
        self.assertEqual(len(h.pool._connections[h.backends[0]].idle), 1)

    def test_sendDrainedThenKeepAlive(self):
        """
        Once the client takes the end of a response that the backend had
        finished, the channel leaves the transport and the keep-alive
        timeout runs as after any response.
        """
        h, protocol, _ = _stalledResponse(self, keepAlive=5.0)
        protocol.dataReceived(b"lo, wor")
        self.assertIs(h.clientTransport.producer, h.client)
        h.reactor.advance(20)
        h.client.resumeProducing()
        self.assertIsNone(h.clientTransport.producer)
        h.reactor.advance(4.9)
        self.assertFalse(h.clientTransport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(h.clientTransport.disconnecting)
        self.assertTrue(h.response().endswith(b"hello, wor"))

    def test_clientGoneClosesBackend(self):
        """
        A client that disconnects while waiting closes the backend request.
        """
        h = _Harness(self, count=1)
        h.send(_GET)
        _, protocol, transport = h.accept()
        h.client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(h.backends[0].active, 0)
        self.assertEqual(h.backends[0].failures, 0)

    def test_noBackendAvailable(self):
        """
        With every backend disabled, the client gets 502 and the log says
        why.
        """
        from twisted.logger import capturedLogs

        h = _Harness(self, count=1)
        h.pool.disable(h.backends[0])
        with capturedLogs() as events:
            h.send(_GET)
        self.assertTrue(h.response().startswith(b"HTTP/1.1 502"))
        self.assertTrue(
            any("no backend available" in e.get("log_format", "") for e in events)
        )
