"""
HTTP/2 over a real TLS socket: lbproxy listening on an C{ssl:} endpoint of
127.0.0.1 (port 0, a certificate made in the test) in front of a real
HTTP/1.1 backend, asked by the C{h2} package and by C{nghttp}.

Every wait is bounded, every port and connection is closed by the
cleanups, and the C{nghttp} process ends by itself within its timeout.
"""

from __future__ import annotations

import shutil
from typing import Any, Optional

from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, StreamEnded, StreamReset
from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from lbproxy import (
    LoadBalancerService,
    parseConfigText,
)
from tests.h2client import H2Client
from tests.integration.test_alpn import WAIT, _ALPNMixin, _Tracking, tlsDescription


class _Backend(Resource):
    """
    An HTTP/1.1 backend: answers with what it was asked (method, target,
    body length, the forwarded headers that matter); C{/hold} is never
    answered, and the requests held are kept to see them cancelled.
    """

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.held: list[Deferred[None]] = []
        self.holding: Optional[Deferred[None]] = None

    def render(self, request: Any) -> Any:
        if request.path == b"/hold":
            lost = request.notifyFinish()
            self.held.append(lost)
            if self.holding is not None:
                holding, self.holding = self.holding, None
                holding.callback(None)
            return NOT_DONE_YET
        body = request.content.read()
        request.setHeader(b"content-type", b"text/plain")
        return b"%s %s %d proto=%s cookie=%s" % (
            request.method,
            request.uri,
            len(body),
            request.getHeader(b"x-forwarded-proto") or b"-",
            request.getHeader(b"cookie") or b"-",
        )


@implementer(IHandshakeListener)
class _H2Client(Protocol):
    """
    An HTTP/2 client over TLS, on L{H2Client}: each request's L{Deferred}
    fires with C{(head, body, ended)} once its stream ends, or with the
    reset code (an L{int}) when the server resets it.
    """

    negotiated: Optional[bytes] = None

    def __init__(self) -> None:
        self.client = H2Client()
        self.waiting: dict[int, Deferred[Any]] = {}
        self.ready: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.isClosed = False

    def handshakeCompleted(self) -> None:
        self.negotiated = self.transport.negotiatedProtocol  # type: ignore[attr-defined]
        self.flush()
        self.ready.callback(None)

    def flush(self) -> None:
        data = self.client.outgoing()
        if data:
            self.transport.write(data)  # type: ignore[union-attr]

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        streamId = self.client.request(*args, **kwargs)
        self.flush()
        d: Deferred[Any] = Deferred()
        self.waiting[streamId] = d
        d.streamId = streamId  # type: ignore[attr-defined]
        return d.addTimeout(WAIT, reactor)

    def reset(self, streamId: int) -> None:
        """
        Reset stream C{streamId} (C{CANCEL}); its L{Deferred} fires with
        L{None}.
        """
        self.client.machine.reset_stream(streamId, ErrorCodes.CANCEL)
        self.flush()
        d = self.waiting.pop(streamId, None)
        if d is not None:
            d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        for event in self.client.receive(data):
            if isinstance(event, StreamEnded):
                d = self.waiting.pop(event.stream_id, None)
                if d is not None:
                    d.callback(self.client.response(event.stream_id))
            elif isinstance(event, StreamReset):
                d = self.waiting.pop(event.stream_id, None)
                if d is not None:
                    d.callback(int(event.error_code))
            elif isinstance(event, ConnectionTerminated):
                waiting, self.waiting = self.waiting, {}
                for d in waiting.values():
                    d.errback(RuntimeError(f"GOAWAY {event.error_code}"))
        self.flush()

    def connectionLost(self, reason: Any = None) -> None:
        self.isClosed = True
        waiting, self.waiting = self.waiting, {}
        for d in waiting.values():
            d.errback(RuntimeError("connection lost"))
        self.closed.callback(None)


class HTTP2Tests(_ALPNMixin, TestCase):
    """
    A C{LoadBalancerService} with a C{listen_tls} listener, HTTP/2 on (the
    default), C{max_header_size = 4k} and C{max_body_size = 100000}.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.setUpCertificate()
        self.backend = _Backend()
        tracking = _Tracking(Site(self.backend))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(tracking)
        self.addCleanup(tracking.closed)
        self.addCleanup(port.stopListening)
        text = (
            "[lbproxy]\nlisten_tls = tcp:0:interface=127.0.0.1\n"
            "tls_certificate = %s\ntls_key = %s\naccess_log = off\n"
            "max_header_size = 4k\nmax_body_size = 100000\n"
            "[upstream:app]\nservers = 127.0.0.1:%d\n"
            "[vhost:app]\nserver_names = 127.0.0.1\ndefault = yes\nupstream = app\n"
            % (self.certPath, self.keyPath, port.getHost().port)
        )
        service = self.service = LoadBalancerService(parseConfigText(text, "h2.ini"), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [self.port] = yield service.whenListening().addTimeout(WAIT, reactor)

    @inlineCallbacks
    def connectH2(self) -> Any:
        client = _H2Client()
        options = optionsForClientTLS(
            "127.0.0.1", trustRoot=self.trustRoot, acceptableProtocols=[b"h2", b"http/1.1"]
        )
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port, options)
        yield connectProtocol(endpoint, client).addTimeout(WAIT, reactor)
        self.addCleanup(lambda: None if client.isClosed else client.transport.abortConnection())
        yield client.ready.addTimeout(WAIT, reactor)
        self.assertEqual(client.negotiated, b"h2")
        return client

    @inlineCallbacks
    def test_get(self) -> Any:
        """
        A GET is proxied to the HTTP/1.1 backend and answered, with
        C{X-Forwarded-Proto: https} and the cookies joined.
        """
        client = yield self.connectH2()
        head, body, ended = yield client.request(
            b"/get?x=1", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")]
        )
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(body, b"GET /get?x=1 0 proto=https cookie=a=1; b=2")

    @inlineCallbacks
    def test_post(self) -> Any:
        """
        A POST body (larger than the first flow-control window) reaches the
        backend whole.
        """
        client = yield self.connectH2()
        head, body, ended = yield client.request(b"/post", method=b"POST", body=b"p" * 90000)
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(body, b"POST /post 90000 proto=https cookie=-")

    @inlineCallbacks
    def test_concurrentStreams(self) -> Any:
        """
        Twenty streams at once on one connection each get their answer.
        """
        client = yield self.connectH2()
        answers = yield gatherResults([client.request(b"/s%d" % i) for i in range(20)])
        self.assertEqual(
            [(head[b":status"], body) for head, body, ended in answers],
            [(b"200", b"GET /s%d 0 proto=https cookie=-" % i) for i in range(20)],
        )

    @inlineCallbacks
    def test_headerListTooLarge(self) -> Any:
        """
        A header list over C{max_header_size} gets 431, and the next
        request on the connection is answered.
        """
        client = yield self.connectH2()
        head, body, ended = yield client.request(b"/", headers=[(b"x-big", b"b" * 5000)])
        self.assertEqual(head[b":status"], b"431")
        head, body, ended = yield client.request(b"/after")
        self.assertEqual(body, b"GET /after 0 proto=https cookie=-")

    @inlineCallbacks
    def test_bodyTooLarge(self) -> Any:
        """
        A body over C{max_body_size} gets 413; nothing reaches the backend.
        """
        client = yield self.connectH2()
        # Four times the limit: the client cannot have sent it all (and
        # ended the stream) by the time the 413 and the reset come.
        d = client.request(b"/big", method=b"POST", body=b"x" * 400000)
        head, body, ended = yield d
        self.assertEqual(head[b":status"], b"413")
        head, body, ended = yield client.request(b"/after")
        self.assertEqual(head[b":status"], b"200")

    @inlineCallbacks
    def test_resetCancelsBackend(self) -> Any:
        """
        A stream the client resets while its request is at the backend:
        the backend's request loses its connection.
        """
        client = yield self.connectH2()
        self.backend.holding = Deferred()
        d = client.request(b"/hold")
        yield self.backend.holding.addTimeout(WAIT, reactor)
        client.reset(d.streamId)
        self.assertIsNone((yield d))
        [lost] = self.backend.held
        failure = yield self.assertFailure(lost.addTimeout(WAIT, reactor), Exception)
        self.assertNotIsInstance(failure, CancelledError)
        head, body, ended = yield client.request(b"/after")
        self.assertEqual(head[b":status"], b"200")

    @inlineCallbacks
    def test_gracefulClose(self) -> Any:
        """
        Closing the site's connections (what a graceful stop does) sends
        GOAWAY C{NO_ERROR} on an idle HTTP/2 connection and closes it: the
        client sees the TLS connection end, and the L{Deferred} that
        C{closeConnections} returned fires, without waiting for the client
        to close or for an abort.
        """
        client = yield self.connectH2()
        head, body, ended = yield client.request(b"/get")
        self.assertEqual(head[b":status"], b"200")
        drained = self.service.site.closeConnections()
        yield client.closed.addTimeout(WAIT, reactor)
        yield drained.addTimeout(WAIT, reactor)
        self.assertEqual(client.client.goaway(), 0)

    @inlineCallbacks
    def test_nghttp(self) -> Any:
        """
        C{nghttp} (nghttp2's client, a second implementation) gets its
        answers over HTTP/2, two requests on one connection.
        """
        nghttp = shutil.which("nghttp")
        if nghttp is None:
            raise AssertionError("nghttp is missing: run sh .ci/tools.sh")
        base = "https://127.0.0.1:%d" % (self.port.getHost().port,)
        out, err, code = yield getProcessOutputAndValue(
            nghttp,
            ["-v", "-t", str(WAIT), base + "/one?a=1", base + "/two"],
            env={},
            reactor=reactor,
        ).addTimeout(2 * WAIT, reactor)
        self.assertEqual(code, 0, err)
        self.assertIn(b"GET /one?a=1 0 proto=https cookie=-", out)
        self.assertIn(b"GET /two 0 proto=https cookie=-", out)
        self.assertIn(b"The negotiated protocol: h2", out)
        self.assertEqual(out.count(b":status: 200"), 2, out)


class ListenLineTests(_ALPNMixin, TestCase):
    """
    The other way to TLS: a C{listen} line with an C{ssl:} endpoint.
    """

    @inlineCallbacks
    def test_service(self) -> Any:
        """
        A C{LoadBalancerService} answers HTTP/2 on its TLS listener by
        default.
        """
        self.setUpCertificate()
        pool = yield self.startBackend()
        text = (
            "[lbproxy]\nlisten = %s\naccess_log = off\n"
            "[upstream:app]\nservers = 127.0.0.1:%d\n"
            "[vhost:app]\nserver_names = 127.0.0.1\ndefault = yes\nupstream = app\n"
            % (tlsDescription(self.keyPath, self.certPath), pool.backends[0].port)
        )
        service = LoadBalancerService(parseConfigText(text, "h2.ini"), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [port] = yield service.whenListening().addTimeout(WAIT, reactor)
        client = _H2Client()
        options = optionsForClientTLS(
            "127.0.0.1", trustRoot=self.trustRoot, acceptableProtocols=[b"h2", b"http/1.1"]
        )
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, options)
        yield connectProtocol(endpoint, client).addTimeout(WAIT, reactor)
        self.addCleanup(lambda: None if client.isClosed else client.transport.abortConnection())
        yield client.ready.addTimeout(WAIT, reactor)
        self.assertEqual(client.negotiated, b"h2")
        head, body, ended = yield client.request(b"/svc", authority=b"127.0.0.1")
        self.assertEqual((head[b":status"], body), (b"200", b"hello /svc"))
