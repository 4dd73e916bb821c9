# -*- test-case-name: tests.test_server -*-
"""
Tests for L{lbproxy._server}: the contract of L{RequestChannel} (what a
request's C{channel} is) and what L{ProxyChannel} does with a connection
beyond the refusals and limits of C{tests.test_site}: C{100 Continue},
persistence, read-ahead, connection loss, the end of a refused connection
and L{ProxySite.closeConnections}.  All over a L{StringTransport} with a
L{MemoryReactorClock}.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer, ISSLTransport, ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import directlyProvides, implementer

from lbproxy import ProxySite
from lbproxy._client import UpstreamConnection
from lbproxy._server import ProxyChannel, RequestChannel
from tests.refcounting import withoutCollector

_PEER = IPv4Address("TCP", "192.0.2.1", 4321)
_HOST = IPv4Address("TCP", "198.51.100.7", 8080)

_GET = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n"


class Holder(Resource):
    """
    A leaf resource that answers nothing by itself: it keeps every request
    it renders, for the test to answer.
    """

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.requests: list[Any] = []
        self.bodies: list[bytes] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        self.bodies.append(request.content.read())
        return NOT_DONE_YET


class _Transport(StringTransport):
    """
    A L{StringTransport} that tells an abort from a close (what
    L{StringTransport.abortConnection} records differs between Twisted
    releases).
    """

    aborted = False
    noDelay = False

    def abortConnection(self) -> None:
        self.aborted = True
        StringTransport.abortConnection(self)

    def setTcpNoDelay(self, enabled: bool) -> None:
        # Of ITCPTransport, which a test's ISSLTransport extends.
        self.noDelay = enabled


class _Harness:
    def __init__(self, testCase: SynchronousTestCase, **siteArgs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.resource = Holder()
        siteArgs.setdefault("clientHeaderTimeout", None)
        siteArgs.setdefault("clientBodyTimeout", None)
        self.site = ProxySite(self.resource, reactor=self.reactor, **siteArgs)
        self.site.startFactory()
        testCase.addCleanup(self.site.stopFactory)

    def connect(self) -> tuple[Any, _Transport]:
        channel = self.site.buildProtocol(_PEER)
        transport = _Transport(hostAddress=_HOST, peerAddress=_PEER)
        channel.makeConnection(transport)
        return channel, transport

    def request(self, data: bytes = _GET % 1) -> tuple[Any, _Transport, Any]:
        """
        Connect, send C{data} and return the connection, its transport and
        the request that reached the resource.
        """
        channel, transport = self.connect()
        channel.dataReceived(data)
        return channel, transport, self.resource.requests[-1]


def _answer(request: Any, body: bytes = b"ok") -> None:
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


@implementer(IPushProducer)
class _Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class RequestChannelTests(SynchronousTestCase):
    """
    The contract of L{RequestChannel}: what L{twisted.web.http.Request}
    calls on its C{channel}, what lbproxy's requests add, and its detachment
    once the request is done or the connection lost.
    """

    def test_isTheRequestChannel(self) -> None:
        """
        A request's C{channel} is a L{RequestChannel}, attached while the
        request is the connection's current one.
        """
        h = _Harness(self)
        _, _, request = h.request()
        self.assertIsInstance(request.channel, RequestChannel)
        self.assertTrue(request.channel.attached)

    def test_attributes(self) -> None:
        """
        C{site} and C{factory} are the site, C{transport} the connection's
        transport; the request takes its C{transport} and C{site} from them.
        """
        h = _Harness(self)
        _, transport, request = h.request()
        stream = request.channel
        self.assertIs(stream.site, h.site)
        self.assertIs(stream.factory, h.site)
        self.assertIs(stream.transport, transport)
        self.assertIs(request.transport, transport)
        self.assertIs(request.site, h.site)

    def test_addresses(self) -> None:
        """
        C{getPeer} and C{getHost} are the transport's addresses, attached
        or not; the request's C{client}, C{getClientAddress} and
        C{getHost} come from them.
        """
        h = _Harness(self)
        _, _, request = h.request()
        stream = request.channel
        self.assertEqual(stream.getPeer(), _PEER)
        self.assertEqual(stream.getHost(), _HOST)
        self.assertEqual(request.getClientAddress(), _PEER)
        self.assertEqual(request.getHost(), _HOST)
        _answer(request)
        self.assertFalse(stream.attached)
        self.assertEqual(stream.getPeer(), _PEER)
        self.assertEqual(stream.getHost(), _HOST)

    def test_isSecure(self) -> None:
        """
        C{isSecure} tells whether the transport provides L{ISSLTransport},
        attached or not.
        """
        h = _Harness(self)
        _, _, plain = h.request()
        self.assertFalse(plain.channel.isSecure())
        self.assertFalse(plain.isSecure())

        channel = h.site.buildProtocol(_PEER)
        transport = _Transport(hostAddress=_HOST, peerAddress=_PEER)
        directlyProvides(transport, ISSLTransport)
        channel.makeConnection(transport)
        channel.dataReceived(_GET % 2)
        secure = h.resource.requests[-1]
        stream = secure.channel
        self.assertTrue(stream.isSecure())
        self.assertTrue(secure.isSecure())
        _answer(secure)
        self.assertFalse(stream.attached)
        self.assertTrue(stream.isSecure())

    def test_writeHeadersHeldUntilWrite(self) -> None:
        """
        C{writeHeaders} holds the head (with a C{Date} added when it has
        none); the first C{write} sends head and data in one write.
        """
        h = _Harness(self)
        _, transport, request = h.request()
        stream = request.channel
        headers = Headers({b"X-A": [b"1", b"2"]})
        stream.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
        self.assertEqual(transport.value(), b"")
        stream.write(b"body")
        self.assertEqual(
            transport.io.getvalue(),
            b"HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
            b"X-A: 1\r\nX-A: 2\r\n\r\nbody",
        )

    def test_writeHeadersKeepsDate(self) -> None:
        """
        A head that has a C{Date} gets no second one; C{writeHeaders} also
        takes the list of pairs older Twisted releases pass.
        """
        h = _Harness(self)
        _, transport, request = h.request()
        stream = request.channel
        stream.writeHeaders(b"HTTP/1.1", b"204", b"No Content",
                            [(b"Date", b"then"), (b"X-A", b"1")])
        stream.flushHead()
        self.assertEqual(
            transport.value(),
            b"HTTP/1.1 204 No Content\r\nDate: then\r\nX-A: 1\r\n\r\n",
        )

    def test_writeSequence(self) -> None:
        """
        C{writeSequence} writes its pieces in order, after the held head.
        """
        h = _Harness(self)
        _, transport, request = h.request()
        stream = request.channel
        stream.holdHead(b"HEAD\r\n\r\n")
        stream.writeSequence([b"a", b"bc", b"d"])
        self.assertEqual(transport.value(), b"HEAD\r\n\r\nabcd")

    def test_holdAndFlushHead(self) -> None:
        """
        C{holdHead} holds a head until C{flushHead} (which sends it once)
        or the next write; a second C{holdHead} sends the first head.
        """
        h = _Harness(self)
        _, transport, request = h.request()
        stream = request.channel
        stream.holdHead(b"one\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        stream.holdHead(b"two\r\n\r\n")
        self.assertEqual(transport.value(), b"one\r\n\r\n")
        stream.flushHead()
        stream.flushHead()
        self.assertEqual(transport.value(), b"one\r\n\r\ntwo\r\n\r\n")

    def test_requestWritesThroughIt(self) -> None:
        """
        A request's response, chunked when it has no length, goes out
        through its channel: head, chunks and the last chunk.
        """
        h = _Harness(self)
        _, transport, request = h.request()
        request.write(b"abc")
        request.write(b"de")
        request.finish()
        output = transport.value()
        self.assertTrue(output.startswith(b"HTTP/1.1 200 OK\r\n"), output)
        self.assertIn(b"Transfer-Encoding: chunked\r\n", output)
        self.assertTrue(output.endswith(b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
                        output)

    def test_producer(self) -> None:
        """
        C{registerProducer} and C{unregisterProducer} reach the transport:
        a streaming producer through the channel, which passes the
        transport's pauses on (and times them: send_timeout).
        """
        h = _Harness(self)
        channel, transport, request = h.request()
        producer = _Producer()
        request.registerProducer(producer, True)
        self.assertIs(transport.producer, channel)
        self.assertTrue(transport.streaming)
        transport.producer.pauseProducing()
        transport.producer.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        request.unregisterProducer()
        self.assertIsNone(transport.producer)
        pull = _Producer()
        request.registerProducer(pull, False)
        self.assertIs(transport.producer, pull)
        request.unregisterProducer()

    def test_producerOnDetachedChannel(self) -> None:
        """
        A producer registered on a detached channel is told to stop, as a
        disconnected transport does, and never reaches the transport;
        C{unregisterProducer} then does nothing.
        """
        h = _Harness(self)
        channel, transport, request = h.request()
        stream = request.channel
        channel.connectionLost(Failure(ConnectionDone()))
        producer = _Producer()
        stream.registerProducer(producer, True)
        self.assertEqual(producer.calls, ["stop"])
        self.assertIsNone(transport.producer)
        stream.unregisterProducer()

    def test_loseConnection(self) -> None:
        """
        C{loseConnection} sends the held head, then closes the connection.
        """
        h = _Harness(self)
        _, transport, request = h.request()
        stream = request.channel
        stream.holdHead(b"HTTP/1.1 200 OK\r\n\r\n")
        request.loseConnection()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        self.assertEqual(transport.value(), b"HTTP/1.1 200 OK\r\n\r\n")

    def test_abortConnection(self) -> None:
        """
        C{abortConnection} aborts the connection, without sending the held
        head: a response that cannot be completed must not look complete.
        """
        h = _Harness(self)
        _, transport, request = h.request()
        stream = request.channel
        stream.holdHead(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        request.abortConnection()
        self.assertTrue(transport.aborted)
        self.assertEqual(transport.value(), b"")

    def test_requestDoneDetaches(self) -> None:
        """
        C{requestDone} (called by C{finish}) detaches the channel: the
        connection goes on with the next request, and no call on the old
        channel reaches the new response.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived((_GET % 1) + (_GET % 2))
        [first] = h.resource.requests
        stream = first.channel
        _answer(first, b"one")
        self.assertFalse(stream.attached)
        [_, second] = h.resource.requests
        self.assertTrue(second.channel.attached)
        self.assertIsNot(second.channel, stream)
        before = transport.value()
        stream.holdHead(b"late head")
        stream.write(b"late")
        stream.writeSequence([b"late"])
        stream.writeHeaders(b"HTTP/1.1", b"500", b"Late", Headers())
        stream.flushHead()
        stream.requestDone(first)
        stream.loseConnection()
        stream.abortConnection()
        stream.unregisterProducer()
        self.assertEqual(transport.value(), before)
        self.assertFalse(transport.disconnecting)
        self.assertTrue(second.channel.attached)
        _answer(second, b"two")
        output = transport.value()
        self.assertNotIn(b"late", output)
        self.assertEqual(output.count(b"HTTP/1.1 200 OK"), 2)
        self.assertTrue(output.endswith(b"\r\n\r\ntwo"), output)

    def test_lostConnectionDetaches(self) -> None:
        """
        Once the connection is lost, the channel of the request that was
        being answered is detached: nothing more is written or closed.
        """
        h = _Harness(self)
        channel, transport, request = h.request()
        stream = request.channel
        channel.connectionLost(Failure(ConnectionLost()))
        self.assertFalse(stream.attached)
        stream.holdHead(b"head")
        stream.write(b"late")
        stream.writeSequence([b"late"])
        stream.flushHead()
        stream.loseConnection()
        stream.abortConnection()
        stream.requestDone(request)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        self.assertFalse(transport.aborted)

    def test_refusalDetaches(self) -> None:
        """
        A request refused while its body is read (here: too large) loses
        its channel: what it writes later does not follow the refusal.
        """
        h = _Harness(self, maxBodySize=4)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        [request] = channel.requests
        stream = request.channel
        channel.dataReceived(b"3\r\ndef\r\n")
        output = transport.value()
        self.assertTrue(output.startswith(b"HTTP/1.1 413 "), output)
        self.assertFalse(stream.attached)
        stream.write(b"late")
        self.assertEqual(transport.value(), output)


class ContinueTests(SynchronousTestCase):
    """
    C{Expect: 100-continue} is answered with C{100 Continue} only when the
    client is waiting for it before sending a body.
    """

    def test_continueBeforeBody(self) -> None:
        """
        An HTTP/1.1 request with a body and C{Expect: 100-continue} gets
        C{100 Continue} once its head is read, before any of its body; the
        final response follows.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(h.resource.requests, [])
        channel.dataReceived(b"hello")
        [request] = h.resource.requests
        self.assertEqual(h.resource.bodies, [b"hello"])
        _answer(request)
        output = transport.value()
        self.assertEqual(output.count(b"100 Continue"), 1)
        self.assertTrue(
            output.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), output
        )

    def test_continueChunked(self) -> None:
        """
        A chunked body is a body: C{100 Continue} is sent.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")

    def test_noContinue(self) -> None:
        """
        No C{100 Continue} for a request without a body (none announced, or
        C{Content-Length: 0}), for HTTP/1.0, nor for another expectation.
        """
        for data in [
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 0\r\n\r\n",
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\n",
        ]:
            h = _Harness(self)
            channel, transport = h.connect()
            channel.dataReceived(data)
            self.assertNotIn(b"100", transport.value(), data)
            channel.dataReceived(b"hello")
            self.assertEqual(len(h.resource.requests), 1, data)
            _answer(h.resource.requests[0])
            self.assertNotIn(b"100 Continue", transport.value(), data)


class PersistenceTests(SynchronousTestCase):
    """
    Which connections stay open after a response.
    """

    def test_keepAlive(self) -> None:
        """
        An HTTP/1.1 connection stays open after a response, and the next
        request on it is served.
        """
        h = _Harness(self)
        channel, transport, request = h.request()
        _answer(request, b"one")
        self.assertFalse(transport.disconnecting)
        self.assertTrue(channel.persistent)
        self.assertNotIn(b"Connection: close", transport.value())
        channel.dataReceived(_GET % 2)
        self.assertEqual(len(h.resource.requests), 2)
        _answer(h.resource.requests[1], b"two")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(transport.disconnecting)

    def test_connectionClose(self) -> None:
        """
        C{Connection: close} (among other tokens, in any case) in HTTP/1.1:
        the response says C{Connection: close} and the connection closes
        after it; a request pipelined behind it is not served.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n"
            + (_GET % 2)
        )
        [request] = h.resource.requests
        self.assertFalse(transport.disconnecting)
        _answer(request)
        output = transport.value()
        head = output.split(b"\r\n\r\n")[0]
        self.assertIn(b"\r\nConnection: close", head)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        self.assertEqual(len(h.resource.requests), 1)
        self.assertEqual(output.count(b"HTTP/1.1 "), 1)

    def test_closeThatNeverEndsAborted(self) -> None:
        """
        A connection closed after its response that stays open (a TLS
        client that never answers lbproxy's C{close_notify}, which Twisted
        waits for) is aborted after C{abortTimeout}.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        _answer(h.resource.requests[0])
        self.assertTrue(transport.disconnecting)
        h.reactor.advance(channel.abortTimeout - 0.1)
        self.assertFalse(transport.aborted)
        h.reactor.advance(0.1)
        self.assertTrue(transport.aborted)

    def test_refusedWhileClosingKeepsTheBound(self) -> None:
        """
        A refusal that comes while the connection is already closing after
        its response sends nothing, and leaves the close its bound: the
        connection is still aborted after C{abortTimeout}.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        _answer(h.resource.requests[0])
        sent = transport.value()
        channel.refuse(400)
        self.assertEqual(transport.value(), sent)
        h.reactor.advance(channel.abortTimeout)
        self.assertTrue(transport.aborted)

    def test_connectionCloseInSecondHeader(self) -> None:
        """
        C{close} in a second C{Connection} header counts too.
        """
        h = _Harness(self)
        channel, transport, request = h.request(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        )
        _answer(request)
        self.assertTrue(transport.disconnecting)

    def test_http10NeverPersistent(self) -> None:
        """
        An HTTP/1.0 connection closes after its response, even when the
        client asks for keep-alive.
        """
        for data in [
            b"GET /1 HTTP/1.0\r\n\r\n",
            b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        ]:
            h = _Harness(self)
            channel, transport = h.connect()
            channel.dataReceived(data + b"GET /2 HTTP/1.0\r\n\r\n")
            [request] = h.resource.requests
            self.assertFalse(channel.persistent)
            _answer(request)
            output = transport.value()
            self.assertTrue(output.startswith(b"HTTP/1.0 200 OK\r\n"), output)
            self.assertTrue(transport.disconnecting, data)
            self.assertEqual(len(h.resource.requests), 1)


class ReadAheadTests(SynchronousTestCase):
    """
    What a client sends while a request is handled is buffered, up to 64
    KiB; past that the transport is paused until the response is done.
    """

    def test_pausedPastReadAhead(self) -> None:
        """
        64 KiB read ahead are buffered without pausing; one byte more
        pauses the transport; it resumes once the response is done, and the
        buffered request is then served.
        """
        h = _Harness(self)
        channel, transport, request = h.request()
        body = b"x" * (64 * 1024 - 100)
        pipelined = (
            b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        pad = 64 * 1024 - len(pipelined)
        self.assertGreater(pad, 0)
        # A header to make the pipelined request exactly 64 KiB + 1.
        pipelined = pipelined.replace(
            b"Host: a\r\n", b"Host: a\r\nX-Pad: " + b"p" * (pad - 8) + b"\r\n"
        )
        self.assertEqual(len(pipelined), 64 * 1024 + 1)
        channel.dataReceived(pipelined[:-1])
        self.assertEqual(transport.producerState, "producing")
        channel.dataReceived(pipelined[-1:])
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(h.resource.requests), 1)
        _answer(request)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(h.resource.requests), 2)
        self.assertEqual(h.resource.bodies[1], body)

    def test_notPausedWhileReadingABody(self) -> None:
        """
        A large body being read is not read-ahead: it is consumed as it
        comes, and the transport is never paused.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n"
        )
        for _ in range(20):
            channel.dataReceived(b"y" * 10000)
            self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(h.resource.bodies[0]), 200000)


class ConnectionLostTests(SynchronousTestCase):
    """
    The request learns that its connection is lost.
    """

    def test_lostWhileReadingBody(self) -> None:
        """
        Lost while the body is read: the request's C{notifyFinish} fails,
        its C{onConnectionLost} is called, and it never reaches the
        resource.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"
        )
        self.assertTrue(channel.busy)
        [request] = channel.requests
        finished = request.notifyFinish()
        seen: list[Failure] = []
        request.onConnectionLost = seen.append
        channel.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(finished, ConnectionLost)
        self.assertEqual(len(seen), 1)
        seen[0].trap(ConnectionLost)
        self.assertEqual(h.resource.requests, [])
        self.assertFalse(channel.busy)
        self.assertEqual(channel.requests, [])

    def test_lostWhileResponsePending(self) -> None:
        """
        Lost while the response is pending: the request's C{notifyFinish}
        fails with the reason, and its C{onConnectionLost} is called once.
        """
        h = _Harness(self)
        channel, transport, request = h.request()
        finished = request.notifyFinish()
        seen: list[Failure] = []
        request.onConnectionLost = seen.append
        channel.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(finished, ConnectionDone)
        self.assertEqual(len(seen), 1)
        self.assertIsNone(request.onConnectionLost)
        self.assertFalse(channel.busy)

    def test_lostWithoutReason(self) -> None:
        """
        C{connectionLost()} without a reason still fails C{notifyFinish}.
        """
        h = _Harness(self)
        channel, transport, request = h.request()
        finished = request.notifyFinish()
        channel.connectionLost()
        self.failureResultOf(finished)

    def test_lostAfterResponse(self) -> None:
        """
        Lost after the response: C{notifyFinish} has succeeded and the
        callback is not called.
        """
        h = _Harness(self)
        channel, transport, request = h.request()
        finished = request.notifyFinish()
        seen: list[Failure] = []
        request.onConnectionLost = seen.append
        _answer(request)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(finished))
        self.assertEqual(seen, [])

    def test_freedWithoutCollector(self) -> None:
        """
        A client connection that ends after an exchange is freed by
        reference counting: its timer, which calls back into it, does not
        keep it in a cycle.
        """
        h = _Harness(self)
        channel, transport, request = h.request()
        _answer(request)
        withoutCollector(self)
        channel.connectionLost(Failure(ConnectionDone()))
        lost = weakref.ref(channel)
        del channel, transport, request
        h.resource.requests.clear()
        self.assertIsNone(lost())


class RefusalTests(SynchronousTestCase):
    """
    The end of a refused connection.
    """

    def test_abortedWhenNotReading(self) -> None:
        """
        A refused client that does not read its answer (the connection
        never closes) is aborted after C{abortTimeout}.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(channel.abortTimeout, 15.0)
        h.reactor.advance(14.9)
        self.assertFalse(transport.aborted)
        h.reactor.advance(0.1)
        self.assertTrue(transport.aborted)

    def test_closedInTimeNotAborted(self) -> None:
        """
        A refused connection that closes in time is not aborted later, and
        leaves no timer behind.
        """
        h = _Harness(self)
        before = h.reactor.getDelayedCalls()
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.reactor.getDelayedCalls(), before)
        h.reactor.advance(100)
        self.assertFalse(transport.aborted)

    def test_dataAfterRefusalIgnored(self) -> None:
        """
        What a refused client sends after the refusal is not read: no
        second answer, nothing reaches the resource.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        refusal = transport.value()
        self.assertTrue(channel.refused)
        channel.dataReceived(_GET % 2)
        channel.dataReceived(b"garbage\r\n\r\n")
        self.assertEqual(transport.value(), refusal)
        self.assertEqual(h.resource.requests, [])


class StateTests(SynchronousTestCase):
    """
    C{requests} and C{busy}.
    """

    def test_requestsAndBusy(self) -> None:
        """
        Idle: no request, not busy.  While the body is read and while the
        response is pending: the one request, busy.  After the response:
        idle again.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        self.assertEqual(channel.requests, [])
        self.assertFalse(channel.busy)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
        self.assertTrue(channel.busy)
        [reading] = channel.requests
        channel.dataReceived(b"hi")
        self.assertTrue(channel.busy)
        [request] = h.resource.requests
        self.assertIs(request, reading)
        self.assertEqual(channel.requests, [request])
        _answer(request)
        self.assertEqual(channel.requests, [])
        self.assertFalse(channel.busy)

    def test_partialHeadNotBusy(self) -> None:
        """
        A head being received is no request yet.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost")
        self.assertFalse(channel.busy)
        self.assertEqual(channel.requests, [])


class CloseConnectionsTests(SynchronousTestCase):
    """
    L{ProxySite.closeConnections}: idle connections close now, busy ones
    after their response, any left are aborted after the timeout.
    """

    def test_noConnections(self) -> None:
        h = _Harness(self)
        self.assertIsNone(self.successResultOf(h.site.closeConnections(5)))

    def test_idleAndBusy(self) -> None:
        """
        An idle connection closes at once; a busy one finishes its response
        and then closes, without serving a request pipelined behind; the
        L{Deferred} fires once both are lost, and no timer is left.
        """
        h = _Harness(self)
        before = h.reactor.getDelayedCalls()
        idle, idleTransport = h.connect()
        busy, busyTransport = h.connect()
        busy.dataReceived((_GET % 1) + (_GET % 2))
        [request] = h.resource.requests
        drained = h.site.closeConnections(30)
        self.assertTrue(idleTransport.disconnecting)
        self.assertFalse(busyTransport.disconnecting)
        idle.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(drained)
        _answer(request)
        self.assertTrue(busyTransport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(busyTransport.disconnecting)
        self.assertFalse(busyTransport.aborted)
        self.assertEqual(len(h.resource.requests), 1)
        self.assertNoResult(drained)
        busy.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(drained))
        self.assertEqual(h.reactor.getDelayedCalls(), before)

    def test_abortedAfterTimeout(self) -> None:
        """
        A connection still busy when the timeout passes is aborted.
        """
        h = _Harness(self)
        busy, busyTransport, request = h.request()
        drained = h.site.closeConnections(30)
        h.reactor.advance(29.9)
        self.assertFalse(busyTransport.disconnecting)
        self.assertNoResult(drained)
        h.reactor.advance(0.1)
        self.assertTrue(busyTransport.aborted)
        busy.connectionLost(Failure(ConnectionLost()))
        self.assertIsNone(self.successResultOf(drained))

    def test_noTimeoutWaits(self) -> None:
        """
        Without a timeout, a busy connection is waited for however long.
        """
        h = _Harness(self)
        busy, busyTransport, request = h.request()
        drained = h.site.closeConnections()
        h.reactor.advance(3600)
        self.assertFalse(busyTransport.disconnecting)
        self.assertNoResult(drained)
        _answer(request)
        self.assertTrue(busyTransport.disconnecting)
        busy.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(drained)


class NoDelayTests(SynchronousTestCase):
    """
    Client and backend connections send small writes at once (nginx's
    C{tcp_nodelay on}).
    """

    def test_clientAndBackend(self) -> None:
        """
        L{ProxyChannel} and L{UpstreamConnection} turn Nagle's algorithm
        off on a TCP transport, and leave any other transport alone.
        """
        class TCPTransport(StringTransport):
            noDelay = False

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.noDelay = enabled

        site = ProxySite(Resource(), reactor=MemoryReactorClock())
        for protocol in [site.buildProtocol(_PEER), UpstreamConnection()]:
            transport = TCPTransport()
            directlyProvides(transport, ITCPTransport)
            protocol.makeConnection(transport)
            self.assertTrue(transport.noDelay, protocol)
            plain = TCPTransport()
            other = (
                site.buildProtocol(_PEER)
                if isinstance(protocol, ProxyChannel)
                else UpstreamConnection()
            )
            other.makeConnection(plain)
            self.assertFalse(plain.noDelay, other)
