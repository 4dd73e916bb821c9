# -*- test-case-name: tests.test_proxy -*-
"""
Forwarding one client request to a backend of a pool, and its response
back.

L{UpstreamResource} is a L{twisted.web.proxy.ReverseProxyResource}, but
shares none of its forwarding code: the stock resource opens a connection
per request, speaks HTTP/1.0, reads the whole response into memory, keeps
only the last value of a repeated header and answers 501 when the backend
is down.  Here the request goes over a pooled HTTP/1.1 connection
(L{lbproxy._client.UpstreamConnection}, a small client protocol made for
forwarding), the response streams back with backpressure both ways, and
every failure maps to the right status, retry and passive-health event.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from lbproxy._backend import Backend, Outcome
from lbproxy._client import (
    _TOKEN,
    ResponseHandler,
    ResponseHead,
    UpstreamConnection,
)
from lbproxy._headers import HOP_BY_HOP, forwardedHeaders
from lbproxy._pages import writeError
from lbproxy._pool import Pool
from lbproxy._timer import Deadline

#: Methods that may be sent again after a failure (RFC 9110 9.2.2).
IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"])

#: Methods whose request, when it has no body, still says C{Content-Length:
#: 0} (as Twisted's client does).
_EXPECTS_BODY = frozenset([b"POST", b"PUT", b"PATCH"])

#: Request bodies up to this size are written with the head in one write;
#: larger ones stream from the spooled file.
INLINE_BODY = 64 * 1024

_URI = re.compile(rb"\A[\x21-\x7e]+\Z")
_NO_BODY_CODES = frozenset([204, 304])


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


class _Exchange(ResponseHandler):
    """
    One client request on its way through the pool: picks, retries,
    timeouts and the mapping of failures to 502 and 504.  It is the
    L{ResponseHandler} of the backend connection that carries it.
    """

    _log = Logger()

    # The state of an exchange that has just begun (class attributes, so
    # that each exchange sets only what it changes).
    _backend: Optional[Backend] = None
    _started = 0.0
    _latency = 0.0
    _connecting: Optional[Deferred[Any]] = None
    _conn: Optional[UpstreamConnection] = None
    _reused = False
    _inBody = False
    _paused = False
    _timer: Optional[Deadline] = None
    _timedOut = False
    _clientGone = False
    _done = False
    #: How body bytes reach the client: L{ProxyRequest.writeBody} once
    #: its head is written, else (L{None}) the request's C{write}.
    _writeBody: Optional[Callable[[bytes], None]] = None

    def __init__(self, resource: UpstreamResource, request: Any) -> None:
        self._resource = resource
        self._pool = resource.pool
        self._reactor = resource.reactor
        self._request = request
        self._method = request.method
        self._idempotent = request.method in IDEMPOTENT
        self._tried: set[Backend] = set()

    def start(self) -> None:
        request = self._request
        method = self._method
        uri = request.uri
        if not (_TOKEN.match(method) and _URI.match(uri)):
            self._done = True
            writeError(request, 400)
            return
        if hasattr(request, "onConnectionLost"):
            request.onConnectionLost = self._clientLost
        else:
            request.notifyFinish().addErrback(self._clientLost)
        incoming = request.requestHeaders
        address = request.getClientAddress()
        block, clientHost = forwardedHeaders(
            incoming, getattr(address, "host", None), request.isSecure()
        )
        self._clientHost = clientHost or b""
        body = request.content
        length = 0
        if body is not None:
            body.seek(0, 2)
            length = body.tell()
        self._bodyFile: Any = None
        tail = b"\r\n"
        if length:
            block += b"Content-Length: %d\r\n" % length
            if length <= INLINE_BODY:
                body.seek(0)
                tail = b"\r\n" + body.read()
            else:
                self._bodyFile = body
        elif method in _EXPECTS_BODY:
            block += b"Content-Length: 0\r\n"
        self._requestLine = b"%s %s HTTP/1.1\r\nHost: " % (method, uri)
        self._block = b"\r\n" + block + tail
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
            self._send(proto, True)
        else:
            assert connecting is not None
            self._connect(connecting)

    def _connect(self, connecting: Deferred[Any]) -> None:
        self._connecting = connecting
        connecting.addCallbacks(self._send, self._connectFailed, (False,))

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting = None
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

    def _send(self, proto: UpstreamConnection, reused: bool) -> None:
        self._connecting = None
        backend = self._backend
        assert backend is not None
        if self._clientGone:
            self._finishBackend(Outcome.CANCELLED)
            proto.transport.loseConnection()
            return
        self._reused = reused
        if proto.lost:
            if reused:
                # Lost while idle, before anything was sent: never the
                # backend's failure.
                self._connect(self._pool.freshConnection(backend))
            else:
                self.failed(False, False, "connection lost before the request")
            return
        if self._resource.preserveHost and self._clientHost:
            host = self._clientHost
        else:
            host = backend.name.encode("ascii")
        self._conn = proto
        self._inBody = False
        self._startTimer()
        body = self._bodyFile
        if body is not None:
            body.seek(0)
        proto.send(self, self._method, self._requestLine + host + self._block, body)

    def _startTimer(self) -> None:
        # read_timeout runs on the backend connection's own Deadline, which
        # outlives the exchange and which the connection pushes back on
        # every read: no delayed call is scheduled and cancelled per
        # request.
        conn = self._conn
        assert conn is not None
        self._timer = conn.armReadTimeout(self._reactor, self._pool.readTimeout)

    def _stopTimer(self) -> None:
        if self._timer is not None:
            self._timer.clear()
            self._timer = None

    def _timeout(self) -> None:
        self._timer = None
        self._timedOut = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.detach()
        backend = self._backend
        if self._inBody:
            self._bodyBroken("read_timeout", Outcome.TIMEOUT)
            return
        self._log.warn(
            "upstream {upstream}: {backend} sent no response head within "
            "read_timeout ({timeout:g}s)",
            upstream=self._pool.name,
            backend=backend.name if backend else "?",
            timeout=self._pool.readTimeout,
        )
        self._finishBackend(Outcome.TIMEOUT)
        self._fail(504)

    # ResponseHandler: what the backend connection tells.

    def readTimedOut(self) -> None:
        self._timeout()

    def failed(self, received: bool, invalid: bool, why: str) -> None:
        self._conn = None
        self._stopTimer()
        backend = self._backend
        assert backend is not None
        if invalid:
            self._log.warn(
                "upstream {upstream}: {backend} sent an invalid response: {error}",
                upstream=self._pool.name,
                backend=backend.name,
                error=why,
            )
            self._finishBackend(Outcome.INVALID)
            self._fail(502)
            return
        if self._reused and self._idempotent and not received:
            # The keep-alive race: the backend closed an idle connection
            # just as it was reused.  Not the backend's failure; try once
            # more on a fresh connection.
            self._connect(self._pool.freshConnection(backend))
            return
        self._log.warn(
            "upstream {upstream}: {backend} closed the connection before "
            "the response head",
            upstream=self._pool.name,
            backend=backend.name,
        )
        self._finishBackend(Outcome.RESET)
        self._retryOr(502)

    def headReceived(self, head: ResponseHead) -> None:
        self._latency = self._reactor.seconds() - self._started
        self._inBody = True
        request = self._request
        tokens = head.connection
        drop = HOP_BY_HOP if tokens <= HOP_BY_HOP else HOP_BY_HOP | tokens
        hold = getattr(request, "holdProxiedHead", None)
        if hold is not None:
            # lbproxy's own request: the head goes out as bytes, with the
            # first bytes of the body when they came in the same read.
            if drop is HOP_BY_HOP:
                # parseHead kept every hop-by-hop header apart already.
                lines = [b"%s: %s\r\n" % field for field in head.headers]
            else:
                lines = [b"%s: %s\r\n" % field for field in head.headers
                         if field[0].lower() not in drop]
            hold(head.code, head.phrase, lines, head.length)
            if request.startedWriting:
                self._writeBody = request.writeBody
            return
        request.setResponseCode(head.code, head.phrase)
        out = request.responseHeaders
        out.removeHeader(b"server")
        out.removeHeader(b"date")
        cookies = request.cookies
        for name, value in head.headers:
            lowered = name.lower()
            if lowered in drop:
                continue
            if lowered == b"set-cookie":
                cookies.append(value)
            else:
                out.addRawHeader(name, value)
        if (
            head.length is not None
            and self._method != b"HEAD"
            and head.code not in _NO_BODY_CODES
        ):
            out.setRawHeaders(b"content-length", [b"%d" % head.length])
        request.registerProducer(_ResponseRelay(self), True)

    def headReadDone(self) -> None:
        if self._done or self._clientGone:
            return
        request = self._request
        if request.producer is None:
            # The body goes on past this read: send the head now, and let
            # a slow client pause the backend from here on.  (A response
            # that ended within the read never needed either.)
            request.flushHead()
            request.registerProducer(_ResponseRelay(self), True)

    def bodyReceived(self, data: bytes) -> None:
        if self._writeBody is not None:
            self._writeBody(data)
        else:
            self._request.write(data)

    def bodyFinished(self, complete: bool, why: str) -> None:
        self._conn = None
        self._stopTimer()
        request = self._request
        if request.producer is not None:
            request.unregisterProducer()
        if complete:
            self._finishBackend(Outcome.SUCCESS)
            self._done = True
            request.finish()
            return
        self._bodyBroken(why, Outcome.RESET)

    def _bodyBroken(self, why: str, outcome: Outcome) -> None:
        request = self._request
        if request.producer is not None:
            request.unregisterProducer()
        backend = self._backend
        self._log.warn(
            "upstream {upstream}: {backend} broke off the response body "
            "({why}); closing the client connection",
            upstream=self._pool.name,
            backend=backend.name if backend else "?",
            why=why,
        )
        self._finishBackend(outcome)
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
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.detach()
            request = self._request
            if request.producer is not None:
                request.unregisterProducer()
            self._finishBackend(Outcome.CANCELLED)

    # Backpressure

    def pauseBackend(self) -> None:
        self._paused = True
        self._stopTimer()
        if self._conn is not None:
            self._conn.pauseProducing()

    def resumeBackend(self) -> None:
        self._paused = False
        if self._conn is not None:
            self._startTimer()
            self._conn.resumeProducing()

    def abortBackend(self) -> None:
        """
        Cut the connection to the backend: it will not be reused.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.detach()
            self._stopTimer()
            self._finishBackend(Outcome.CANCELLED)
            self._abortClient()


@implementer(IPushProducer)
class _ResponseRelay:
    """
    The client request's producer while a response body streams from the
    backend: a client that reads slowly pauses the backend connection; the
    read timeout is suspended meanwhile, since the backend is not the one
    being slow.
    """

    __slots__ = ("_exchange",)

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def pauseProducing(self) -> None:
        self._exchange.pauseBackend()

    def resumeProducing(self) -> None:
        self._exchange.resumeBackend()

    def stopProducing(self) -> None:
        self._exchange.abortBackend()
