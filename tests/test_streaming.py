"""
Tests for L{lbproxy._streaming}: request bodies that go to the backend as
they arrive (C{request_buffering = no}), through a L{ProxySite} on
L{StringTransport}s, backends reached through a L{MemoryReactorClock}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import Backend, Pool, UpstreamResource
from lbproxy.testing import ProxyHarness

_HEAD = b"POST /upload HTTP/1.1\r\nHost: app.example\r\nContent-Length: 10\r\n\r\n"
_CHUNKED = b"POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n"
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Harness:
    def __init__(
        self, testCase: SynchronousTestCase, buffering: bool = False, **siteArgs: object
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = [Backend("127.0.0.1", 9000), Backend("127.0.0.1", 9001)]
        self.pool = Pool(
            "app", self.backends, reactor=self.reactor, readTimeout=5.0,
            requestBuffering=buffering,
        )
        self.proxy = ProxyHarness(UpstreamResource(self.pool), reactor=self.reactor, **siteArgs)
        testCase.addCleanup(self.proxy.close)
        self.client = self.proxy.connect(IPv4Address("TCP", "192.0.2.1", 4321))


class StreamingTests(SynchronousTestCase):
    """
    With C{request_buffering = no}, the head goes to the backend at once
    and the body follows as it arrives.
    """

    def test_lengthBodyStreams(self) -> None:
        """
        A body with C{Content-Length} goes with the same length, each piece
        as it arrives; the backend sees the first bytes before the client
        sent the last.
        """
        h = _Harness(self)
        h.client.send(_HEAD + b"abc")
        backend = h.proxy.acceptBackend()
        sent = backend.received()
        self.assertTrue(sent.startswith(b"POST /upload HTTP/1.1\r\n"), sent)
        self.assertIn(b"\r\nContent-Length: 10\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\nabc"), sent)
        h.client.send(b"defg")
        self.assertTrue(backend.received().endswith(b"\r\n\r\nabcdefg"))
        h.client.send(b"hij")
        self.assertTrue(backend.received().endswith(b"\r\n\r\nabcdefghij"))
        backend.respond(_OK)
        self.assertTrue(h.client.received().endswith(b"\r\n\r\nok"))
        self.assertFalse(h.client.closing)
        # The connection goes on with the next request.
        h.client.clear()
        h.client.send(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
        second = h.proxy.acceptBackend()
        self.assertTrue(second.received().startswith(b"GET / HTTP/1.1\r\n"))

    def test_chunkedBodyStreams(self) -> None:
        """
        A chunked body goes chunked, each piece as it arrives, and ends
        with the last chunk.
        """
        h = _Harness(self)
        h.client.send(_CHUNKED + b"3\r\nabc\r\n")
        backend = h.proxy.acceptBackend()
        sent = backend.received()
        self.assertIn(b"\r\nTransfer-Encoding: chunked\r\n", sent)
        self.assertNotIn(b"Content-Length", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n3\r\nabc\r\n"), sent)
        h.client.send(b"2\r\nde\r\n0\r\n\r\n")
        self.assertTrue(backend.received().endswith(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))
        backend.respond(_OK)
        self.assertTrue(h.client.received().endswith(b"\r\n\r\nok"))

    def test_heldUntilConnected(self) -> None:
        """
        What arrives while the backend connection is being made goes first
        once it is made.
        """
        h = _Harness(self)
        h.client.send(_HEAD + b"abc")
        h.client.send(b"defghij")
        backend = h.proxy.acceptBackend()
        self.assertTrue(backend.received().endswith(b"\r\n\r\nabcdefghij"))

    def test_backpressure(self) -> None:
        """
        The body is the backend transport's producer: a backend that does
        not keep up stops the reading of the client, and client_body_timeout
        does not run meanwhile (the client is not the slow one).
        """
        h = _Harness(self, clientBodyTimeout=10.0)
        h.client.send(_HEAD + b"abc")
        backend = h.proxy.acceptBackend()
        producer = backend.transport.producer
        self.assertIsNotNone(producer)
        producer.pauseProducing()
        self.assertEqual(h.client.transport.producerState, "paused")
        h.reactor.advance(4.5)
        self.assertFalse(h.client.closing)
        producer.resumeProducing()
        self.assertEqual(h.client.transport.producerState, "producing")
        h.reactor.advance(9.9)
        self.assertFalse(h.client.closing)
        h.reactor.advance(0.1)
        self.assertTrue(h.client.received().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(backend.closing)

    def test_backendNotReading(self) -> None:
        """
        A backend that takes none of the body for read_timeout is given up
        on (nginx's proxy_send_timeout): 504, and its connection closed.
        """
        h = _Harness(self, clientBodyTimeout=60.0)
        h.client.send(_HEAD + b"abc")
        backend = h.proxy.acceptBackend()
        backend.transport.producer.pauseProducing()
        h.reactor.advance(4.9)
        self.assertFalse(backend.closing)
        h.reactor.advance(0.1)
        self.assertTrue(backend.closing)
        self.assertTrue(h.client.received().startswith(b"HTTP/1.1 504 "))
        self.assertEqual(h.backends[0].active, 0)

    def test_tooLargeMidStream(self) -> None:
        """
        A chunked body that grows past max_body_size gets 413 when nothing
        was answered yet, and the backend connection is aborted.
        """
        h = _Harness(self, maxBodySize=5)
        h.client.send(_CHUNKED + b"3\r\nabc\r\n")
        backend = h.proxy.acceptBackend()
        h.client.send(b"3\r\ndef\r\n")
        self.assertTrue(h.client.received().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(backend.closing)
        self.assertEqual(h.backends[0].active, 0)

    def test_notRetried(self) -> None:
        """
        Once its head is sent, a streaming request is not tried on another
        backend: its body is not kept.
        """
        h = _Harness(self)
        h.client.send(_HEAD + b"abcdefghij")
        backend = h.proxy.acceptBackend()
        backend.close(Failure(ConnectionLost()))
        self.assertEqual(h.proxy.pending(), [])
        self.assertTrue(h.client.received().startswith(b"HTTP/1.1 502 "))

    def test_answeredBeforeTheEnd(self) -> None:
        """
        A backend that answers before the body has all come: the answer
        reaches the client, and its connection closes after it.
        """
        h = _Harness(self)
        h.client.send(_HEAD + b"abc")
        backend = h.proxy.acceptBackend()
        backend.respond(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        self.assertTrue(h.client.received().startswith(b"HTTP/1.1 403 "))
        self.assertTrue(h.client.closing)

    def test_clientGone(self) -> None:
        """
        A client that leaves mid-body: the backend connection is aborted.
        """
        h = _Harness(self)
        h.client.send(_HEAD + b"abc")
        backend = h.proxy.acceptBackend()
        h.client.disconnect(Failure(ConnectionLost()))
        self.assertTrue(backend.closing)
        self.assertEqual(h.backends[0].active, 0)

    def test_bufferedByDefault(self) -> None:
        """
        With request_buffering = yes, nothing goes to a backend before the
        whole body has come.
        """
        h = _Harness(self, buffering=True)
        h.client.send(_HEAD + b"abc")
        self.assertEqual(h.proxy.pending(), [])
        h.client.send(b"defghij")
        backend = h.proxy.acceptBackend()
        self.assertTrue(backend.received().endswith(b"\r\n\r\nabcdefghij"))
