# -*- test-case-name: tests.test_proxy -*-
"""
Forwarding one client request to a backend of a pool, and its response
back.

L{UpstreamResource} is a L{twisted.web.proxy.ReverseProxyResource}, but
shares none of its forwarding code: the stock resource opens a connection
per request, speaks HTTP/1.0, reads the whole response into memory, keeps
only the last value of a repeated header and answers 501 when the backend
is down.  Here the request goes over a pooled HTTP/1.1 connection
(L{twisted.web._newclient.HTTP11ClientProtocol}, the protocol behind
Twisted's C{Agent}), the response streams back with backpressure both ways,
and every failure maps to the right status, retry and passive-health event.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import (
    ParseError,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web._newclient import (
    Request as _ClientRequest,
)
from twisted.web.client import FileBodyProducer
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from lbproxy._backend import Backend, Outcome
from lbproxy._headers import HOP_BY_HOP, connectionTokens, requestHeaders
from lbproxy._pages import writeError
from lbproxy._pool import Pool

#: Methods that may be sent again after a failure (RFC 9110 9.2.2).
IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"])

_RESET = (RequestTransmissionFailed, ResponseNeverReceived)

#: The largest response head (status line and headers) taken from a
#: backend; a larger one is an invalid response (502).  Twisted's client
#: parser limits the length of each line, not their number.
MAX_RESPONSE_HEAD = 64 * 1024


def _limitResponseHead(proto: Any, limit: int = MAX_RESPONSE_HEAD) -> None:
    """
    Make the response parser of C{proto} (an C{HTTP11ClientProtocol} that
    has just sent a request) fail once the response head exceeds C{limit}
    bytes; the protocol then gives up on the response with
    L{ResponseFailed}.  Only head lines go through C{lineReceived}; the
    body does not.
    """
    parser = getattr(proto, "_parser", None)
    if parser is None or not hasattr(parser, "lineReceived"):
        return
    lineReceived = parser.lineReceived
    received = 0

    def limited(line: bytes) -> None:
        nonlocal received
        received += len(line) + 1
        if received > limit:
            raise ParseError("response head larger than %d bytes" % (limit,), line[:80])
        lineReceived(line)

    parser.lineReceived = limited


class UpstreamResource(ReverseProxyResource):
    """
    A resource that forwards every request to a backend of C{pool}.

    It is a leaf: the whole path and query go to the backend unchanged.

    @ivar pool: the L{Pool} that picks the backend.
    @ivar preserveHost: send the client's C{Host} to the backend (as
        nginx's C{proxy_set_header Host $host}); when false, send the
        backend's own C{host:port}.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, pool: Pool, preserveHost: bool = True, reactor: Any = None) -> None:
        """
        @param pool: the backends to forward to.
        @param preserveHost: see L{preserveHost}.
        @param reactor: the reactor for timeouts; the pool's when L{None}.
        """
        ReverseProxyResource.__init__(
            self, pool.name, 0, b"", reactor or pool._reactor
        )
        self.pool = pool
        self.preserveHost = preserveHost

    def getChild(self, path: bytes, request: Any) -> UpstreamResource:
        return self

    def render(self, request: Any) -> Any:
        """
        Forward C{request}; the response is written when it arrives.
        """
        _Exchange(self, request).start()
        return NOT_DONE_YET


class _Exchange:
    """
    One client request on its way through the pool: picks, retries,
    timeouts and the mapping of failures to 502 and 504.
    """

    _log = Logger()

    def __init__(self, resource: UpstreamResource, request: Any) -> None:
        self._resource = resource
        self._pool = resource.pool
        self._reactor = resource.reactor
        self._request = request
        self._method = request.method
        self._idempotent = request.method in IDEMPOTENT
        self._tried: set[Backend] = set()
        self._backend: Optional[Backend] = None
        self._started = 0.0
        self._pending: Optional[Deferred[Any]] = None
        self._timer: Optional[IDelayedCall] = None
        self._timedOut = False
        self._clientGone = False
        self._done = False
        self._relay: Optional[_ResponseRelay] = None
        self._proto: Any = None

    def start(self) -> None:
        request = self._request
        request.notifyFinish().addErrback(self._clientLost)
        address = request.getClientAddress()
        self._headers = requestHeaders(
            request.requestHeaders,
            getattr(address, "host", None),
            request.isSecure(),
            b"",
        )
        self._clientHost = request.requestHeaders.getRawHeaders(b"host", [b""])[0]
        self._body = request.content
        self._bodyLength = 0
        if self._body is not None:
            self._body.seek(0, 2)
            self._bodyLength = self._body.tell()
        self._attempt()

    # Choosing a backend

    def _attempt(self) -> None:
        if self._clientGone:
            return
        pool = self._pool
        backend = None
        if len(self._tried) < pool.tries:
            backend = pool.pick(self._request, frozenset(self._tried))
        if backend is None:
            if not self._tried:
                self._log.warn(
                    "upstream {upstream} has no backend available for "
                    "{method} {uri}: {why}",
                    upstream=pool.name,
                    method=self._method.decode("ascii", "replace"),
                    uri=self._request.uri.decode("ascii", "replace"),
                    why=pool.unavailableReason(),
                )
            self._fail(502)
            return
        self._tried.add(backend)
        self._backend = backend
        self._started = self._reactor.seconds()
        pool.requestStarted(backend, self._request)
        proto, connecting = pool.connection(backend)
        if proto is not None:
            self._send(proto, reused=True)
        else:
            assert connecting is not None
            self._connect(connecting)

    def _connect(self, connecting: Deferred[Any]) -> None:
        self._pending = connecting
        connecting.addCallbacks(self._send, self._connectFailed, (False,))

    def _connectFailed(self, reason: Failure) -> None:
        self._pending = None
        if self._clientGone:
            self._finishBackend(Outcome.CANCELLED)
            return
        self._log.warn(
            "upstream {upstream}: cannot connect to {backend}: {error}",
            upstream=self._pool.name,
            backend=self._backend.name if self._backend else "?",
            error=reason.getErrorMessage(),
        )
        self._finishBackend(Outcome.CONNECT_FAILED)
        self._retryOr(502)

    def _retryOr(self, code: int) -> None:
        if self._idempotent:
            self._attempt()
        else:
            self._fail(code)

    # Sending the request

    def _bodyProducer(self) -> Optional[FileBodyProducer]:
        if not self._bodyLength:
            return None
        self._body.seek(0)
        return FileBodyProducer(self._body)

    def _send(self, proto: Any, reused: bool) -> None:
        self._pending = None
        self._proto = proto
        backend = self._backend
        assert backend is not None
        if self._clientGone:
            self._finishBackend(Outcome.CANCELLED)
            proto.transport.loseConnection()
            return
        headers = self._headers
        if self._resource.preserveHost and self._clientHost:
            host = self._clientHost
        else:
            host = backend.name.encode("ascii")
        headers.setRawHeaders(b"Host", [host])
        clientRequest = _ClientRequest._construct(
            self._method,
            self._request.uri,
            headers,
            self._bodyProducer(),
            persistent=True,
            parsedURI=None,
        )
        d = proto.request(clientRequest)
        _limitResponseHead(proto)
        self._pending = d
        self._startTimer()
        d.addCallbacks(self._gotResponse, self._requestFailed, errbackArgs=(reused,))

    def _startTimer(self) -> None:
        self._stopTimer()
        self._timer = self._reactor.callLater(self._pool.readTimeout, self._timeout)

    def _stopTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timeout(self) -> None:
        self._timer = None
        self._timedOut = True
        if self._pending is not None:
            self._pending.cancel()
        elif self._relay is not None:
            self._relay.abort()

    def _requestFailed(self, reason: Failure, reused: bool) -> None:
        self._pending = None
        self._stopTimer()
        backend = self._backend
        assert backend is not None
        if self._timedOut:
            self._log.warn(
                "upstream {upstream}: {backend} sent no response head within "
                "read_timeout ({timeout:g}s)",
                upstream=self._pool.name,
                backend=backend.name,
                timeout=self._pool.readTimeout,
            )
            self._finishBackend(Outcome.TIMEOUT)
            self._fail(504)
            return
        if self._clientGone or reason.check(CancelledError):
            self._finishBackend(Outcome.CANCELLED)
            return
        if reason.check(RequestNotSent) or (
            reused and self._idempotent and reason.check(*_RESET)
        ):
            # The keep-alive race: the backend closed an idle connection
            # just as it was reused.  Not the backend's failure; try once
            # more on a fresh connection.
            self._connect(self._pool.newConnection(backend))
            return
        if reason.check(*_RESET):
            self._log.warn(
                "upstream {upstream}: {backend} closed the connection before "
                "the response head",
                upstream=self._pool.name,
                backend=backend.name,
            )
            self._finishBackend(Outcome.RESET)
            self._retryOr(502)
            return
        if reason.check(ResponseFailed):
            failed: Any = reason.value
            errors = "; ".join(f.getErrorMessage() for f in failed.reasons)
            self._log.warn(
                "upstream {upstream}: {backend} sent an invalid response: {error}",
                upstream=self._pool.name,
                backend=backend.name,
                error=errors,
            )
            self._finishBackend(Outcome.INVALID)
            self._fail(502)
            return
        self._log.failure(
            "upstream {upstream}: forwarding to {backend} failed",
            reason,
            upstream=self._pool.name,
            backend=backend.name,
        )
        self._finishBackend(Outcome.INVALID)
        self._fail(502)

    # The response

    def _gotResponse(self, response: Any) -> None:
        self._pending = None
        self._stopTimer()
        self._latency = self._reactor.seconds() - self._started
        request = self._request
        if self._clientGone:
            response._transport.stopProducing()
            self._finishBackend(Outcome.CANCELLED)
            return
        request.setResponseCode(response.code, response.phrase)
        out = request.responseHeaders
        out.removeHeader(b"server")
        out.removeHeader(b"date")
        # Twisted's client parser keeps the connection-control headers
        # (Connection among them) apart from response.headers; the names
        # listed in Connection must be dropped as well.
        parser = getattr(self._proto, "_parser", None)
        drop = HOP_BY_HOP
        if parser is not None:
            drop = drop | connectionTokens(parser.connHeaders)
        for name, values in response.headers.getAllRawHeaders():
            lowered = name.lower()
            if lowered in drop:
                continue
            if lowered == b"set-cookie":
                request.cookies.extend(values)
            else:
                out.setRawHeaders(name, values)
        if response.length is not UNKNOWN_LENGTH:
            out.setRawHeaders(b"content-length", [b"%d" % response.length])
        self._relay = _ResponseRelay(self)
        self._startTimer()
        response.deliverBody(self._relay)

    def _bodyFinished(self, reason: Failure) -> None:
        self._stopTimer()
        self._relay = None
        if self._clientGone:
            self._finishBackend(Outcome.CANCELLED)
            return
        if not self._timedOut and reason.check(ResponseDone, PotentialDataLoss):
            self._finishBackend(Outcome.SUCCESS)
            self._done = True
            self._request.finish()
            return
        backend = self._backend
        self._log.warn(
            "upstream {upstream}: {backend} broke off the response body "
            "({why}); closing the client connection",
            upstream=self._pool.name,
            backend=backend.name if backend else "?",
            why="read_timeout" if self._timedOut else reason.getErrorMessage(),
        )
        self._finishBackend(Outcome.TIMEOUT if self._timedOut else Outcome.RESET)
        self._abortClient()

    # Endings

    def _finishBackend(self, outcome: Outcome) -> None:
        backend = self._backend
        if backend is None:
            return
        self._backend = None
        if outcome is Outcome.SUCCESS:
            latency = self._latency
        else:
            latency = self._reactor.seconds() - self._started
        self._pool.requestFinished(backend, self._request, outcome, latency)

    def _fail(self, code: int) -> None:
        if self._clientGone or self._done:
            return
        self._done = True
        request = self._request
        if request.startedWriting:
            self._abortClient()
            return
        writeError(request, code)

    def _abortClient(self) -> None:
        self._done = True
        transport = self._request.channel.transport if self._request.channel else None
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def _clientLost(self, reason: Failure) -> None:
        self._clientGone = True
        self._stopTimer()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        elif self._relay is not None:
            self._relay.abort()

    def abortBackend(self) -> None:
        """
        Cut the connection to the backend: it will not be reused.
        """
        transport = getattr(self._proto, "transport", None)
        if transport is not None:
            transport.abortConnection()


@implementer(IPushProducer)
class _ResponseRelay(Protocol):
    """
    Streams a response body from the backend to the client.

    It is the client request's producer, so a client that reads slowly
    pauses the backend connection; the read timeout is suspended meanwhile,
    since the backend is not the one being slow.
    """

    transport: Any

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        self._request = exchange._request
        self._paused = False

    def connectionMade(self) -> None:
        self._request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if not self._paused:
            self._exchange._startTimer()
        self._request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._request.producer is self:
            self._request.unregisterProducer()
        self._exchange._bodyFinished(reason)

    def abort(self) -> None:
        """
        Give up on the body: the backend connection is closed.
        """
        self._exchange.abortBackend()

    def pauseProducing(self) -> None:
        self._paused = True
        self._exchange._stopTimer()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self._exchange._startTimer()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort()
