"""
Tests for L{lbproxy._h2}: HTTP/2 streams through L{lbproxy.ProxySite} in
memory (a L{MemoryReactorClock}, a transport that says ALPN chose C{h2}),
driven by the C{h2} package as a client.
"""

from __future__ import annotations

from typing import Any

from h2.errors import ErrorCodes
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    INegotiated,
    IProtocolNegotiationFactory,
    ISSLTransport,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementer

from lbproxy import Backend, Pool, ProxySite, UpstreamResource, parseConfigText
from lbproxy._h2 import H2Channel, TokenBucket
from lbproxy.testing import ProxyHarness
from tests.h2client import H2Client, parseFrames

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello"


@implementer(ISSLTransport, INegotiated)
class _H2Transport(StringTransport):
    """
    A TLS connection on which ALPN chose C{h2}.
    """

    negotiatedProtocol = b"h2"

    #: Whether the TLS close (close_notify, then the TCP close) has begun.
    #: As L{twisted.protocols.tls.TLSMemoryBIOProtocol} does it, not while
    #: a producer is registered: L{loseConnection} only notes the wish
    #: (C{disconnecting}) until the producer is unregistered.
    closing = False
    aborted = False

    def loseConnection(self) -> None:
        StringTransport.loseConnection(self)
        if self.producer is None:
            self.closing = True

    def unregisterProducer(self) -> None:
        StringTransport.unregisterProducer(self)
        if self.disconnecting:
            self.closing = True

    def getPeerCertificate(self) -> None:
        return None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def abortConnection(self) -> None:
        self.aborted = True
        self.closing = True
        self.loseConnection()


class _Connection:
    """
    One proxy (a backend on 127.0.0.1:9000) and one HTTP/2 client
    connection to it, in memory.
    """

    def __init__(self, testCase: SynchronousTestCase, **siteArgs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = Pool(
            "app", [Backend("127.0.0.1", 9000)], reactor=self.reactor, readTimeout=5.0
        )
        self.proxy = ProxyHarness(UpstreamResource(self.pool), reactor=self.reactor, **siteArgs)
        testCase.addCleanup(self.proxy.close)
        self.site = self.proxy.site
        self.transport = _H2Transport(peerAddress=IPv4Address("TCP", "192.0.2.1", 4321))
        self.http11 = self.site.buildProtocol(None)
        self.http11.makeConnection(self.transport)
        self.http11.handshakeCompleted()
        self.channel = self.http11._successor
        self.client = H2Client()

    def exchange(self) -> None:
        """
        Pass bytes both ways until neither side has more.
        """
        for _ in range(100):
            out = self.client.outgoing()
            if out:
                self.http11.dataReceived(out)
            back = self.transport.value()
            self.transport.clear()
            if back:
                self.client.receive(back)
            if not out and not back:
                return
        raise AssertionError("the exchange did not settle")

    def raw(self, data: bytes) -> list[Any]:
        """
        Send C{data} as it is; return the frames the server sent since the
        last call (or L{start}).
        """
        self.http11.dataReceived(data)
        frames = parseFrames(self.transport.value())
        self.transport.clear()
        return frames

    def start(self) -> None:
        """
        The client preface and an empty SETTINGS frame, raw; what the server
        sends back is discarded.
        """
        self.raw(PREFACE + SettingsFrame(0).serialize())

    def backend(self) -> Any:
        return self.proxy.acceptBackend()


def _block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """
    A header block with a fresh HPACK encoder (no dynamic table entries
    are used afterwards).
    """
    encoder = Encoder()
    return encoder.encode(headers)


_GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"app.example"),
    (b":path", b"/"),
]


def _headers(streamId: int, headers: list[tuple[bytes, bytes]], end: bool = True) -> bytes:
    flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
    return HeadersFrame(streamId, data=_block(headers), flags=flags).serialize()


class RequestMappingTests(SynchronousTestCase):
    """
    What a stream's request becomes on its way to an HTTP/1.1 backend, and
    what the backend's response becomes on its way back.
    """

    def test_get(self) -> None:
        """
        The pseudo-headers make the request line and the C{Host} header;
        C{Cookie} fields are joined; C{X-Forwarded-Proto} is C{https}; the
        backend's connection-specific fields do not reach the client.
        """
        c = _Connection(self)
        streamId = c.client.request(
            b"/x?y=1", headers=[(b"cookie", b"a=1"), (b"user-agent", b"t"), (b"cookie", b"b=2")]
        )
        c.exchange()
        backend = c.backend()
        sent = backend.received()
        self.assertTrue(sent.startswith(b"GET /x?y=1 HTTP/1.1\r\nHost: app.example\r\n"), sent)
        self.assertIn(b"\r\nCookie: a=1; b=2\r\n", sent)
        self.assertIn(b"\r\nX-Forwarded-Proto: https\r\n", sent)
        self.assertIn(b"\r\nX-Forwarded-For: 192.0.2.1\r\n", sent)
        backend.respond(_OK)
        c.exchange()
        head, body, ended = c.client.response(streamId)
        self.assertEqual(
            head, {b":status": b"200", b"x-a": b"1", b"content-length": b"5"}
        )
        self.assertEqual((body, ended), (b"hello", True))

    def test_post(self) -> None:
        """
        A body larger than the initial window (the server opens it as it
        reads) reaches the backend whole, with a C{Content-Length}.
        """
        c = _Connection(self)
        # One byte more than the initial window, and small enough to go
        # with the head to the backend.
        body = bytes(range(256)) * 256
        streamId = c.client.request(b"/up", method=b"POST", body=body)
        c.exchange()
        backend = c.backend()
        sent = backend.received()
        head, _, forwarded = sent.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"POST /up HTTP/1.1\r\n"), head)
        self.assertIn(b"\r\nContent-Length: %d" % len(body), head)
        self.assertEqual(forwarded, body)
        backend.respond(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        c.exchange()
        head2, got, ended = c.client.response(streamId)
        self.assertEqual(head2, {b":status": b"201"})
        self.assertEqual((got, ended), (b"ok", True))

    def test_concurrentStreams(self) -> None:
        """
        Twenty streams at once each get their own backend exchange and
        their own answer.
        """
        c = _Connection(self)
        ids = [c.client.request(b"/%d" % i) for i in range(20)]
        c.exchange()
        backends = [c.backend() for _ in range(20)]
        for backend in reversed(backends):
            path = backend.received().split(b" ")[1]
            body = b"answer " + path
            backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        c.exchange()
        for i, streamId in enumerate(ids):
            head, body, ended = c.client.response(streamId)
            self.assertEqual((head[b":status"], body, ended), (b"200", b"answer /%d" % i, True))

    def test_ownPage(self) -> None:
        """
        lbproxy's own pages (here 502, the backend refused) go out as
        HTTP/2 responses with a C{date}.
        """
        c = _Connection(self)
        streamId = c.client.request(b"/")
        c.exchange()
        c.proxy.refuseBackend()
        c.exchange()
        head, body, ended = c.client.response(streamId)
        self.assertEqual(head[b":status"], b"502")
        self.assertIn(b"date", head)
        self.assertIn(b"502 Bad Gateway", body)
        self.assertTrue(ended)

    def test_connect(self) -> None:
        """
        C{CONNECT} gets 405 (lbproxy is not a forward proxy), or is refused
        as malformed by C{h2}: it is never forwarded.
        """
        c = _Connection(self)
        c.start()
        frames = c.raw(
            _headers(1, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
        )
        heads = [f for f in frames if isinstance(f, HeadersFrame)]
        if heads:
            self.assertIn((b":status", b"405"), Decoder().decode(heads[0].data, raw=True))
        else:
            # h2 before 4.4 finds a CONNECT without :path malformed.
            _expectError(self, frames, ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(c.proxy.pending(), [])

    def test_badAuthority(self) -> None:
        """
        An authority that is not a host name gets 400, and nothing is
        forwarded.
        """
        c = _Connection(self)
        streamId = c.client.request(b"/", authority=b"a b")
        c.exchange()
        head, _, _ = c.client.response(streamId)
        self.assertEqual(head[b":status"], b"400")
        self.assertEqual(c.proxy.pending(), [])

    def test_controlCharacter(self) -> None:
        """
        A control character in a value (which C{h2} 3.x lets through)
        resets the stream with C{PROTOCOL_ERROR}, or ends the connection
        so (C{h2} 4.x): it never reaches a backend.
        """
        c = _Connection(self)
        c.start()
        frames = c.raw(_headers(1, _GET + [(b"x-a", b"a\x00b")]))
        _expectError(self, frames, ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(c.proxy.pending(), [])


def _expectError(
    testCase: SynchronousTestCase, frames: list[Any], code: int, connection: bool = False
) -> None:
    """
    C{frames} hold a RST_STREAM or (only, when C{connection}) a GOAWAY
    with C{code}: a stream error may always be treated as a connection
    error (RFC 9113 5.4.1).
    """
    codes = [
        (type(f).__name__, int(f.error_code))
        for f in frames
        if isinstance(f, (GoAwayFrame, RstStreamFrame))
    ]
    accepted = [("GoAwayFrame", int(code))]
    if not connection:
        accepted.append(("RstStreamFrame", int(code)))
    testCase.assertTrue(
        any(found in accepted for found in codes), f"expected {accepted}, got {codes}"
    )


class LimitTests(SynchronousTestCase):
    """
    HTTP/1.1's limits hold for HTTP/2 streams.
    """

    def test_headerListTooLarge(self) -> None:
        """
        A header list larger than C{max_header_size} gets 431; the
        connection goes on.
        """
        c = _Connection(self, maxHeaderSize=1024)
        big = c.client.request(b"/", headers=[(b"x-big", b"x" * 1200)])
        c.exchange()
        head, body, ended = c.client.response(big)
        self.assertEqual(head[b":status"], b"431")
        self.assertTrue(ended)
        self.assertEqual(c.proxy.pending(), [])
        small = c.client.request(b"/")
        c.exchange()
        c.backend().respond(_OK)
        c.exchange()
        self.assertEqual(c.client.response(small)[1], b"hello")

    def test_bodyAnnouncedTooLarge(self) -> None:
        """
        A C{Content-Length} over C{max_body_size} gets 413 at once.
        """
        c = _Connection(self, maxBodySize=1000)
        streamId = c.client.request(
            b"/", method=b"POST", headers=[(b"content-length", b"5000")], end=False
        )
        c.exchange()
        head, _, ended = c.client.response(streamId)
        self.assertEqual(head[b":status"], b"413")
        self.assertTrue(ended)
        self.assertEqual(c.proxy.pending(), [])

    def test_bodyTooLargeMidStream(self) -> None:
        """
        A body without C{Content-Length} that grows past C{max_body_size}
        gets 413, then the stream is reset with C{NO_ERROR} (RFC 9113 8.1:
        the client may stop sending); nothing is forwarded.
        """
        c = _Connection(self, maxBodySize=1000)
        streamId = c.client.request(b"/", method=b"POST", body=b"x" * 800, end=False)
        c.exchange()
        self.assertIsNone(c.client.response(streamId)[0])
        c.client.machine.send_data(streamId, b"y" * 300)
        c.exchange()
        head, _, ended = c.client.response(streamId)
        self.assertEqual(head[b":status"], b"413")
        self.assertTrue(ended)
        self.assertEqual(c.client.resets(), {streamId: ErrorCodes.NO_ERROR})
        self.assertEqual(c.proxy.pending(), [])

    def test_bodyTimeout(self) -> None:
        """
        A body that pauses longer than C{client_body_timeout} gets 408.
        """
        c = _Connection(self, clientBodyTimeout=5.0)
        streamId = c.client.request(b"/", method=b"POST", body=b"x", end=False)
        c.exchange()
        c.reactor.advance(4)
        c.client.machine.send_data(streamId, b"y")
        c.exchange()
        c.reactor.advance(4)
        c.exchange()
        self.assertIsNone(c.client.response(streamId)[0])
        c.reactor.advance(1.5)
        c.exchange()
        self.assertEqual(c.client.response(streamId)[0][b":status"], b"408")

    def test_keepaliveTimeout(self) -> None:
        """
        A connection with no stream for C{keepalive_timeout} gets GOAWAY
        C{NO_ERROR} and is closed.
        """
        c = _Connection(self, keepaliveTimeout=30.0)
        streamId = c.client.request(b"/")
        c.exchange()
        c.backend().respond(_OK)
        c.exchange()
        self.assertTrue(c.client.response(streamId)[2])
        c.reactor.advance(29)
        self.assertFalse(c.transport.disconnecting)
        c.reactor.advance(2)
        self.assertTrue(c.transport.closing)
        frames = parseFrames(c.transport.value())
        self.assertEqual([int(f.error_code) for f in frames if isinstance(f, GoAwayFrame)], [0])
        # A connection that stays open (a TLS client that never answers
        # close_notify) is aborted after abortTimeout.
        self.assertFalse(c.transport.aborted)
        c.reactor.advance(c.channel.abortTimeout)
        self.assertTrue(c.transport.aborted)

    def test_firstRequestTimeout(self) -> None:
        """
        A connection on which no request comes within
        C{client_header_timeout} is closed.
        """
        c = _Connection(self, clientHeaderTimeout=3.0, keepaliveTimeout=60.0)
        c.exchange()
        c.reactor.advance(3.5)
        self.assertTrue(c.transport.closing)

    def test_maxConnections(self) -> None:
        """
        An HTTP/2 connection counts once in C{max_connections}, whatever
        its streams.
        """
        c = _Connection(self, maxConnections=1)
        for _ in range(3):
            c.client.request(b"/")
        c.exchange()
        self.assertEqual(c.site.channels, {c.channel})
        self.assertIsNone(c.site.buildProtocol(None))

    def test_gracefulClose(self) -> None:
        """
        Closing the site's connections sends GOAWAY C{NO_ERROR}, answers
        the stream in flight, refuses a new one and then closes.
        """
        c = _Connection(self)
        first = c.client.request(b"/")
        c.exchange()
        drained = c.site.closeConnections()
        # The h2 client takes nothing after a GOAWAY: read the frames raw.
        [goaway] = c.raw(b"")
        self.assertIsInstance(goaway, GoAwayFrame)
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (0, first))
        self.assertFalse(c.transport.disconnecting)
        refused = c.raw(_headers(3, _GET))
        self.assertEqual(
            [(type(f), f.stream_id, f.error_code) for f in refused],
            [(RstStreamFrame, 3, ErrorCodes.REFUSED_STREAM)],
        )
        c.backend().respond(_OK)
        frames = c.raw(b"")
        self.assertEqual([(type(f), f.stream_id) for f in frames[:2]],
                         [(HeadersFrame, first), (DataFrame, first)])
        self.assertEqual(b"".join(f.data for f in frames[1:]), b"hello")
        self.assertIn("END_STREAM", frames[-1].flags)
        self.assertTrue(c.transport.closing)
        # Should it stay open (a TLS client that never answers
        # close_notify), it is aborted after abortTimeout.
        self.assertFalse(c.transport.aborted)
        c.reactor.advance(c.channel.abortTimeout)
        self.assertTrue(c.transport.aborted)
        c.http11.connectionLost(None)
        self.successResultOf(drained)


class StreamingTests(SynchronousTestCase):
    """
    Response bodies stream with backpressure per stream; resets cancel.
    """

    def test_flowControlPausesBackend(self) -> None:
        """
        A response larger than the client's window fills the stream's
        buffer and pauses the backend connection; the client's
        WINDOW_UPDATE resumes it, and the body arrives whole.
        """
        c = _Connection(self)
        client = c.client
        streamId = client.request(b"/big")
        c.exchange()
        backend = c.backend()
        backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n")
        # The client does not read (no WINDOW_UPDATE) while the backend sends.
        for _ in range(3):
            backend.respond(b"z" * 50000)
        self.assertEqual(backend.transport.producerState, "paused")
        c.exchange()
        self.assertEqual(backend.transport.producerState, "producing")
        for _ in range(3):
            backend.respond(b"z" * 50000)
        c.exchange()
        head, body, ended = client.response(streamId)
        self.assertEqual((len(body), ended), (300000, True))

    def test_sendTimeout(self) -> None:
        """
        A stream whose client accepts none of its response (its window
        stays shut) for C{send_timeout} is reset with C{CANCEL}, and its
        backend connection closed.
        """
        c = _Connection(self, sendTimeout=10.0)
        streamId = c.client.request(b"/big")
        c.exchange()
        backend = c.backend()
        backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n")
        for _ in range(3):
            backend.respond(b"z" * 50000)
        self.assertEqual(backend.transport.producerState, "paused")
        c.reactor.advance(9)
        self.assertFalse(backend.closing)
        c.reactor.advance(2)
        self.assertTrue(backend.closing)
        frames = parseFrames(c.transport.value())
        self.assertIn(
            (streamId, ErrorCodes.CANCEL),
            [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)],
        )

    def test_resetCancelsBackend(self) -> None:
        """
        The client's RST_STREAM cancels the backend request: its connection
        is closed, and the other streams go on.
        """
        c = _Connection(self)
        first = c.client.request(b"/slow")
        second = c.client.request(b"/other")
        c.exchange()
        slow = c.backend()
        other = c.backend()
        c.client.machine.reset_stream(first, ErrorCodes.CANCEL)
        c.exchange()
        self.assertTrue(slow.closing)
        self.assertFalse(other.closing)
        other.respond(_OK)
        c.exchange()
        self.assertEqual(c.client.response(second)[1:], (b"hello", True))

    def test_clientGoneCancelsBackend(self) -> None:
        """
        When the connection is lost, every backend request is cancelled.
        """
        c = _Connection(self)
        c.client.request(b"/a")
        c.client.request(b"/b")
        c.exchange()
        backends = [c.backend(), c.backend()]
        c.http11.connectionLost(None)
        self.assertEqual([b.closing for b in backends], [True, True])
        self.assertEqual(c.site.channels, set())


class StreamingBodyTests(SynchronousTestCase):
    """
    C{request_buffering = no}: the body goes to the backend as it arrives,
    and the stream's window opens as the backend takes it.
    """

    def setUp(self) -> None:
        self.c = _Connection(self)
        self.c.pool.requestBuffering = False

    def test_bodyStreams(self) -> None:
        """
        The request head reaches the backend before the body has all
        arrived; the rest follows, chunked (the client gave no length).
        """
        c = self.c
        streamId = c.client.request(b"/up", method=b"POST", body=b"a" * 1000, end=False)
        c.exchange()
        backend = c.backend()
        sent = backend.received()
        self.assertTrue(sent.startswith(b"POST /up HTTP/1.1\r\n"), sent)
        self.assertIn(b"\r\nTransfer-Encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n3e8\r\n" + b"a" * 1000 + b"\r\n"), sent[-40:])
        c.client.machine.send_data(streamId, b"b" * 10, end_stream=True)
        c.exchange()
        self.assertTrue(backend.received().endswith(b"a\r\na\r\n" + b"b" * 10 + b"\r\n0\r\n\r\n"))
        backend.respond(_OK)
        c.exchange()
        self.assertEqual(c.client.response(streamId)[1:], (b"hello", True))

    def test_slowBackendHoldsTheWindow(self) -> None:
        """
        While the backend takes no more, the stream's window is not opened
        again (the client runs out of it); once it does, it is.
        """
        c = self.c
        window = c.client.machine.local_flow_control_window
        streamId = c.client.request(b"/up", method=b"POST", body=b"a" * 1000, end=False)
        c.exchange()
        backend = c.backend()
        c.exchange()
        self.assertEqual(window(streamId), 65535)
        body = backend.transport.producer
        body.pauseProducing()
        c.client.machine.send_data(streamId, b"b" * 16000)
        c.client.machine.send_data(streamId, b"b" * 4000)
        c.exchange()
        self.assertEqual(window(streamId), 65535 - 20000)
        body.resumeProducing()
        c.exchange()
        self.assertEqual(window(streamId), 65535)


class ConformanceTests(SynchronousTestCase):
    """
    Raw frames a conformance suite (h2spec) sends, and the error codes RFC
    9113 and RFC 7541 name for them.
    """

    def test_badPreface(self) -> None:
        """
        A connection that does not start with the preface is a connection
        error C{PROTOCOL_ERROR} (RFC 9113 3.4).
        """
        c = _Connection(self)
        frames = c.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        _expectError(self, frames, ErrorCodes.PROTOCOL_ERROR, connection=True)
        self.assertTrue(c.transport.closing)

    def test_dataOnIdleStream(self) -> None:
        """
        DATA on an idle stream: connection error C{PROTOCOL_ERROR} (5.1).
        """
        c = _Connection(self)
        c.start()
        frames = c.raw(DataFrame(1, data=b"x").serialize())
        _expectError(self, frames, ErrorCodes.PROTOCOL_ERROR, connection=True)

    def test_dataOnClosedStream(self) -> None:
        """
        DATA on a stream the client ended: C{STREAM_CLOSED} (5.1).
        """
        c = _Connection(self)
        c.start()
        c.raw(_headers(1, _GET))
        frames = c.raw(DataFrame(1, data=b"x").serialize())
        _expectError(self, frames, ErrorCodes.STREAM_CLOSED)

    def test_frameTooLarge(self) -> None:
        """
        A frame larger than SETTINGS_MAX_FRAME_SIZE: C{FRAME_SIZE_ERROR}
        (4.2).
        """
        c = _Connection(self)
        c.start()
        c.raw(_headers(1, _GET, end=False))
        frames = c.raw(DataFrame(1, data=b"x" * 16385).serialize())
        _expectError(self, frames, ErrorCodes.FRAME_SIZE_ERROR)

    def _malformed(self, headers: list[tuple[bytes, bytes]]) -> None:
        c = _Connection(self)
        c.start()
        frames = c.raw(_headers(1, headers))
        _expectError(self, frames, ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(c.proxy.pending(), [])

    def test_unknownPseudoHeader(self) -> None:
        """
        An unknown pseudo-header is malformed: C{PROTOCOL_ERROR} (8.3).
        """
        self._malformed(_GET + [(b":foo", b"bar")])

    def test_repeatedPseudoHeader(self) -> None:
        """
        A repeated pseudo-header is malformed (8.3).
        """
        self._malformed(_GET + [(b":path", b"/again")])

    def test_pseudoHeaderAfterRegular(self) -> None:
        """
        A pseudo-header after a regular field is malformed (8.3).
        """
        self._malformed(_GET[:3] + [(b"x-a", b"1"), _GET[3]])

    def test_missingPseudoHeader(self) -> None:
        """
        A request without C{:method} is malformed (8.3.1).
        """
        self._malformed(_GET[1:])

    def test_responsePseudoHeader(self) -> None:
        """
        C{:status} in a request is malformed (8.3.2).
        """
        self._malformed(_GET + [(b":status", b"200")])

    def test_uppercaseName(self) -> None:
        """
        A field name with upper-case letters is malformed (8.2.1).
        """
        self._malformed(_GET + [(b"X-Upper", b"1")])

    def test_connectionSpecific(self) -> None:
        """
        A connection-specific field is malformed (8.2.2).
        """
        self._malformed(_GET + [(b"connection", b"keep-alive")])

    def test_upgrade(self) -> None:
        """
        C{Upgrade} is connection-specific too (8.2.2): an HTTP/2 request
        asking for a WebSocket is refused as malformed, never tunnelled
        (lbproxy has no Extended CONNECT, RFC 8441).
        """
        self._malformed(
            _GET + [(b"upgrade", b"websocket"), (b"sec-websocket-version", b"13")]
        )

    def test_te(self) -> None:
        """
        C{TE} other than C{trailers} is malformed (8.2.2).
        """
        self._malformed(_GET + [(b"te", b"gzip")])

    def test_emptyPath(self) -> None:
        """
        An empty C{:path} is malformed (8.3.1).
        """
        self._malformed(_GET[:3] + [(b":path", b"")])

    def test_badHpackIndex(self) -> None:
        """
        A header block referring to an index beyond the tables: connection
        error C{COMPRESSION_ERROR} (RFC 9113 4.3, RFC 7541 2.3.3).
        """
        c = _Connection(self)
        c.start()
        # An indexed field, index 126: the static table has 61 entries and
        # the dynamic table is empty.
        frame = HeadersFrame(1, data=b"\xfe", flags=["END_HEADERS", "END_STREAM"])
        frames = c.raw(frame.serialize())
        _expectError(self, frames, ErrorCodes.COMPRESSION_ERROR, connection=True)

    def test_windowOverflow(self) -> None:
        """
        A WINDOW_UPDATE taking the connection window past 2^31-1:
        connection error C{FLOW_CONTROL_ERROR} (6.9.1).
        """
        c = _Connection(self)
        c.start()
        update = WindowUpdateFrame(0, window_increment=2**31 - 1)
        frames = c.raw(update.serialize())
        _expectError(self, frames, ErrorCodes.FLOW_CONTROL_ERROR, connection=True)

    def test_streamWindowOverflow(self) -> None:
        """
        A WINDOW_UPDATE taking a stream's window past 2^31-1:
        C{FLOW_CONTROL_ERROR} (6.9.1).
        """
        c = _Connection(self)
        c.start()
        c.raw(_headers(1, _GET))
        update = WindowUpdateFrame(1, window_increment=2**31 - 1)
        frames = c.raw(update.serialize())
        _expectError(self, frames, ErrorCodes.FLOW_CONTROL_ERROR)

    def test_zeroWindowIncrement(self) -> None:
        """
        A WINDOW_UPDATE of 0 on the connection: C{PROTOCOL_ERROR} (6.9).
        """
        c = _Connection(self)
        c.start()
        frames = c.raw(WindowUpdateFrame(0, window_increment=0).serialize())
        _expectError(self, frames, ErrorCodes.PROTOCOL_ERROR, connection=True)

    def test_evenStreamId(self) -> None:
        """
        A client opening an even-numbered stream: C{PROTOCOL_ERROR} (5.1.1).
        """
        c = _Connection(self)
        c.start()
        frames = c.raw(_headers(2, _GET))
        _expectError(self, frames, ErrorCodes.PROTOCOL_ERROR, connection=True)

    def test_continuationFlood(self) -> None:
        """
        A header block that goes on and on in CONTINUATION frames ends the
        connection with C{ENHANCE_YOUR_CALM} (10.5) before it is decoded.
        """
        c = _Connection(self)
        c.start()
        data = HeadersFrame(1, data=_block(_GET), flags=["END_STREAM"]).serialize()
        data += ContinuationFrame(1, data=b"").serialize() * 100
        frames = c.raw(data)
        _expectError(self, frames, ErrorCodes.ENHANCE_YOUR_CALM, connection=True)
        self.assertTrue(c.transport.closing)

    def test_headerListBeyondHardLimit(self) -> None:
        """
        A header list beyond L{H2Channel.hardHeaderListLimit} is not
        decoded: the connection ends with C{ENHANCE_YOUR_CALM}.
        """
        c = _Connection(self, maxHeaderSize=1024)
        self.assertEqual(c.channel.hardHeaderListLimit, 64 * 1024)
        c.start()
        block = _block(_GET + [(b"x-%d" % i, b"v" * 1000) for i in range(70)])
        pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
        data = HeadersFrame(1, data=pieces[0], flags=["END_STREAM"]).serialize()
        for i, piece in enumerate(pieces[1:], 2):
            flags = ["END_HEADERS"] if i == len(pieces) else []
            data += ContinuationFrame(1, data=piece, flags=flags).serialize()
        frames = c.raw(data)
        _expectError(self, frames, ErrorCodes.ENHANCE_YOUR_CALM, connection=True)
        self.assertEqual(c.proxy.pending(), [])

    def test_settingsFlood(self) -> None:
        """
        A flood of SETTINGS frames (each one asks for an ACK) ends the
        connection with C{ENHANCE_YOUR_CALM} (10.5).
        """
        c = _Connection(self)
        c.start()
        frames = c.raw(SettingsFrame(0).serialize() * 2000)
        _expectError(self, frames, ErrorCodes.ENHANCE_YOUR_CALM, connection=True)
        acks = [f for f in frames if isinstance(f, SettingsFrame)]
        self.assertLessEqual(len(acks), H2Channel.controlBurst)

    def test_pingFlood(self) -> None:
        """
        A flood of PING frames ends the connection the same way.
        """
        c = _Connection(self)
        c.start()
        frames = c.raw(PingFrame(0, opaque_data=b"12345678").serialize() * 2000)
        _expectError(self, frames, ErrorCodes.ENHANCE_YOUR_CALM, connection=True)

    def test_rapidReset(self) -> None:
        """
        Streams opened and reset at once (CVE-2023-44487) end the
        connection with C{ENHANCE_YOUR_CALM} once the reset budget is
        spent; the backend requests they started are cancelled.
        """
        c = _Connection(self)
        c.start()
        encoder = Encoder()
        data = b""
        for i in range(400):
            streamId = 2 * i + 1
            data += HeadersFrame(
                streamId, data=encoder.encode(_GET), flags=["END_HEADERS", "END_STREAM"]
            ).serialize()
            data += RstStreamFrame(streamId, error_code=ErrorCodes.CANCEL).serialize()
        frames = c.raw(data)
        _expectError(self, frames, ErrorCodes.ENHANCE_YOUR_CALM, connection=True)
        self.assertTrue(c.transport.closing)
        connectors = c.reactor.connectors
        self.assertTrue(connectors)
        self.assertTrue(all(connector.stoppedConnecting for connector in connectors))

    def test_resetsWithinBudget(self) -> None:
        """
        Resets at a pace a browser may reach (a few a second) never end the
        connection.
        """
        c = _Connection(self)
        for _ in range(300):
            streamId = c.client.request(b"/")
            c.client.machine.reset_stream(streamId, ErrorCodes.CANCEL)
            c.exchange()
            c.reactor.advance(0.1)
        self.assertIsNone(c.client.goaway())
        self.assertFalse(c.transport.disconnecting)


class TokenBucketTests(SynchronousTestCase):
    """
    L{TokenBucket}.
    """

    def test_burstThenRate(self) -> None:
        """
        The burst goes at once; then tokens come back at the rate, never
        beyond the burst; a clock that steps back refills nothing.
        """
        clock = MemoryReactorClock()
        bucket = TokenBucket(clock, 3, 2.0)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])
        clock.advance(0.5)
        self.assertEqual([bucket.take(), bucket.take()], [True, False])
        clock.advance(100)
        self.assertEqual([bucket.take() for _ in range(4)], [True, True, True, False])


class NegotiationTests(SynchronousTestCase):
    """
    What L{ProxySite} offers through ALPN, and what it builds after.
    """

    def test_offered(self) -> None:
        """
        C{h2} then C{http/1.1} by default; C{http/1.1} alone with
        C{http2 = no}, or after a reload that says so.
        """
        site = ProxySite(Resource())
        self.assertTrue(IProtocolNegotiationFactory.providedBy(site))
        self.assertEqual(site.acceptableProtocols(), [b"h2", b"http/1.1"])
        self.assertEqual(ProxySite(Resource(), http2=False).acceptableProtocols(), [b"http/1.1"])
        config = parseConfigText("[lbproxy]\nhttp2 = no\n", "t.ini")
        site.configure(config.proxy)
        self.assertEqual(site.acceptableProtocols(), [b"http/1.1"])

    def test_http11Stays(self) -> None:
        """
        When ALPN chose C{http/1.1} (or nothing), the channel stays
        lbproxy's HTTP/1.1 one.
        """
        for chosen in (b"http/1.1", None):
            proxy = ProxyHarness(Resource())
            self.addCleanup(proxy.close)
            transport = _H2Transport()
            transport.negotiatedProtocol = chosen
            channel = proxy.site.buildProtocol(None)
            channel.makeConnection(transport)
            channel.handshakeCompleted()
            self.assertIsNone(channel._successor)
            self.assertEqual(proxy.site.channels, {channel})

    def test_limitsOfTheChannel(self) -> None:
        """
        The HTTP/2 connection takes the limits its channel was built with.
        """
        c = _Connection(
            self, maxBodySize=10, maxHeaderSize=2000, clientBodyTimeout=7.0, keepaliveTimeout=9.0
        )
        channel = c.channel
        self.assertIsInstance(channel, H2Channel)
        self.assertEqual(
            (channel.maxBodySize, channel.totalHeadersSize, channel.clientBodyTimeout, channel.timeOut),
            (10, 2000, 7.0, 9.0),
        )
        self.assertEqual(c.site.channels, {channel})
