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
from twisted.python.components import registerAdapter
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from lbproxy._backend import Backend, Outcome
from lbproxy._client import (
    ResponseHandler,
    ResponseHead,
    TunnelHandler,
    UpstreamConnection,
    parseConnectionTokens,
)
from lbproxy._gzip import GzipPolicy, GzipResponse
from lbproxy._headers import HOP_BY_HOP, HeaderRules, forwardedHeaders
from lbproxy._http import NO_BODY_CODES, TARGET, TOKEN_RE
from lbproxy._interfaces import IProxyRequest, ITunnelChannel, implementsProxyRequest
from lbproxy._pages import writeError
from lbproxy._pool import Pool
from lbproxy._queue import QueuedRequest
from lbproxy._streaming import StreamingBody
from lbproxy._timer import Deadline
from lbproxy._tunnel import Tunnel

#: Methods that may be sent again after a failure (RFC 9110 9.2.2).
IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"])

#: Methods whose request, when it has no body, still says C{Content-Length:
#: 0} (as Twisted's client does).
_EXPECTS_BODY = frozenset([b"POST", b"PUT", b"PATCH"])

#: Request bodies up to this size are written with the head in one write;
#: larger ones stream from the spooled file.
INLINE_BODY = 64 * 1024

_URI = re.compile(rb"\A" + TARGET + rb"\Z")


class UpstreamResource(ReverseProxyResource):
    """
    A resource that forwards every request to a backend of C{pool}.

    It is a leaf: the whole path and query go to the backend unchanged,
    unless L{stripPrefix} is set.

    @ivar pool: the L{Pool} that picks the backend.
    @ivar preserveHost: send the client's C{Host} to the backend (as
        nginx's C{proxy_set_header Host $host}); when false, send the
        backend's own C{host:port}.
    @ivar stripPrefix: a path prefix (C{b"/api"}) that the backend does not
        see: a request for C{/api/users?q} is sent as C{/users?q}, one for
        C{/api} as C{/}.  L{None} (the default): the path is sent as it is.
    @ivar headerRules: the vhost's L{HeaderRules} (C{request_headers},
        C{response_headers}, C{request_id}), or L{None}.
    @ivar gzip: the vhost's L{GzipPolicy} (C{gzip = yes}), or L{None}: the
        responses it qualifies are compressed for clients that accept gzip.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        pool: Pool,
        preserveHost: bool = True,
        reactor: Any = None,
        stripPrefix: Optional[bytes] = None,
        *,
        headerRules: Optional[HeaderRules] = None,
        gzip: Optional[GzipPolicy] = None,
    ) -> None:
        """
        @param pool: the backends to forward to.
        @param preserveHost: see L{preserveHost}.
        @param reactor: the reactor for timeouts; the pool's when L{None}.
        @param stripPrefix: see L{stripPrefix}.
        @param headerRules: see L{headerRules}.
        @param gzip: see L{gzip}.
        """
        ReverseProxyResource.__init__(
            self, pool.name, 0, b"", reactor or pool._reactor
        )
        self.pool = pool
        self.preserveHost = preserveHost
        self.stripPrefix = stripPrefix or None
        self.headerRules = headerRules
        self.gzip = gzip
        # Decided once: a resource without header rules or gzip runs none
        # of their code per request.
        self._exchange = _EXCHANGES[headerRules is not None, gzip is not None]

    def getChild(self, path: bytes, request: Any) -> UpstreamResource:
        return self

    def render(self, request: Any) -> Any:
        """
        Forward C{request}; the response is written when it arrives.
        """
        self._exchange(self, request).start()
        return NOT_DONE_YET


def _proxyRequest(request: Any) -> Any:
    """
    C{request} as an L{IProxyRequest}: itself when it provides it, else
    its registered adapter.

    C{IProxyRequest(request)} would ask the request first, and a
    L{twisted.web.server.Request} is L{Componentized}: it would keep the
    answer (the request itself, or the adapter, which holds the request)
    in its own adapter cache, a reference cycle per request.
    """
    if implementsProxyRequest(request):
        return request
    proxied = IProxyRequest.__adapt__(request)
    if proxied is None:
        raise TypeError(f"{request!r} cannot be adapted to IProxyRequest")
    return proxied


def upgradeOffer(request: Any, allowed: frozenset[bytes]) -> Optional[bytes]:
    """
    The C{Upgrade} value to forward for C{request}, or L{None} when it is
    not an upgrade lbproxy tunnels: a C{GET} over HTTP/1.1 whose
    C{Connection} lists C{upgrade}, on a channel that can become a tunnel
    (L{ITunnelChannel}: lbproxy's HTTP/1.1 connections, not an HTTP/2
    stream), offering protocols of which C{allowed} (lower-cased names,
    without a C{/version}) names some; the others are left out.
    """
    headers = request.requestHeaders
    offered = headers.getRawHeaders(b"upgrade")
    if not offered or request.method != b"GET" or request.clientproto != b"HTTP/1.1":
        return None
    connection = headers.getRawHeaders(b"connection")
    if not connection or b"upgrade" not in parseConnectionTokens(connection):
        return None
    if not ITunnelChannel.providedBy(request.channel):
        return None
    kept = [
        token
        for value in offered
        for token in (part.strip(b" \t") for part in value.split(b","))
        if token and token.partition(b"/")[0].rstrip(b" \t").lower() in allowed
    ]
    return b", ".join(kept) or None


#: What an exchange is doing (L{_Exchange._stage}), in the order it can
#: go through them: finding a backend, connecting, sending and waiting for
#: the response head (again for a retry); relaying the response body, or
#: the bytes of a tunnel; done with the client (answered, refused with an
#: error page, or cut off); abandoned, because the client left.
_FORWARDING, _RELAYING, _ANSWERED, _ABANDONED = range(4)


#: The status the access log gives a backend that sent no response head,
#: by outcome, as nginx's C{$upstream_status} does (a backend left because
#: the client went away has none).
_OUTCOME_STATUS = {
    Outcome.CONNECT_FAILED: 502,
    Outcome.RESET: 502,
    Outcome.INVALID: 502,
    Outcome.TIMEOUT: 504,
}


class _Exchange(ResponseHandler):
    """
    One client request on its way through the pool: picks, retries,
    timeouts and the mapping of failures to 502 and 504.  It is the
    L{ResponseHandler} of the backend connection that carries it, and
    talks to the client request only through L{IProxyRequest}.
    """

    _log = Logger()

    # The state of an exchange that has just begun (class attributes, so
    # that each exchange sets only what it changes).
    _stage = _FORWARDING
    _backend: Optional[Backend] = None
    _started = 0.0
    _latency = 0.0
    _connecting: Optional[Deferred[Any]] = None
    _conn: Optional[UpstreamConnection] = None
    _reused = False
    _timer: Optional[Deadline] = None
    _relay: Optional[_ResponseRelay] = None
    #: The C{Upgrade} value forwarded (see L{upgradeOffer}), or L{None}.
    _upgrade: Optional[bytes] = None
    _tunnel: Optional[Tunnel] = None
    #: The request's place in the pool's queue while it waits for a
    #: backend with room (C{max_conns}), or L{None}.
    _place: Optional[QueuedRequest] = None
    #: The request's body when it streams (C{request_buffering = no}).
    _stream: Optional[StreamingBody] = None
    #: The status of the current backend's response head, once received.
    _code: Optional[int] = None
    #: The backends tried so far, for the access log (see
    #: L{lbproxy._site.ProxyRequest.upstreamTried}).
    _triedLog: tuple[tuple[str, Optional[int], float], ...] = ()
    #: With C{send_proxy_protocol}, the PROXY header of the request's
    #: client, which the connections it uses start with.
    _proxyHeader: Optional[bytes] = None

    #: Builds the header lines of the request to the backend.
    _forwardedHeaders = staticmethod(forwardedHeaders)

    def __init__(self, resource: UpstreamResource, request: Any) -> None:
        self._resource = resource
        self._pool = resource.pool
        self._reactor = resource.reactor
        self._request = request
        self._proxied = _proxyRequest(request)
        self._method = request.method
        self._idempotent = request.method in IDEMPOTENT
        self._tried: set[Backend] = set()

    def start(self) -> None:
        request = self._request
        method = self._method
        uri = request.uri
        if not (TOKEN_RE.match(method) and _URI.match(uri)):
            self._stage = _ANSWERED
            writeError(request, 400)
            return
        strip = self._resource.stripPrefix
        if strip is not None and uri.startswith(strip):
            uri = uri[len(strip) :]
            if not uri.startswith(b"/"):
                uri = b"/" + uri
        self._proxied.onConnectionLost = self._clientLost
        incoming = request.requestHeaders
        address = self._proxied.clientAddress
        block, clientHost = self._forwardedHeaders(
            incoming, getattr(address, "host", None), request.isSecure()
        )
        self._clientHost = clientHost or b""
        if self._pool.sendProxyProtocol:
            self._proxyHeader = self._pool.proxyHeader(address, request.getHost())
        if incoming.hasHeader(b"upgrade"):
            upgrade = self._upgrade = upgradeOffer(request, self._pool.upgradeProtocols)
            if upgrade is not None:
                block += b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade
        self._requestLine = b"%s %s HTTP/1.1\r\nHost: " % (method, uri)
        body = request.content
        self._bodyFile: Any = None
        if isinstance(body, StreamingBody):
            # It goes as it arrives: framed as the client framed it.
            self._stream = body
            if body.length is None:
                block += b"Transfer-Encoding: chunked\r\n"
            else:
                block += b"Content-Length: %d\r\n" % body.length
            self._block = b"\r\n" + block + b"\r\n"
            self._attempt()
            return
        length = 0
        if body is not None:
            body.seek(0, 2)
            length = body.tell()
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
        self._block = b"\r\n" + block + tail
        self._attempt()

    # Choosing a backend

    def _attempt(self, dequeued: bool = False) -> None:
        """
        Send the request to a backend the pool picks, or make it wait for
        one with room, or answer 502 when there is none.

        @param dequeued: whether the request just left the pool's queue
            (else, while others wait, it waits behind them).
        """
        if self._stage == _ABANDONED:
            return
        pool = self._pool
        tried = self._tried
        if not tried and pool.queue.waiting and not dequeued:
            self._wait()
            return
        backend = None
        if len(tried) < pool.tries:
            backend = pool.pick(self._request, frozenset(tried))
        if backend is None:
            if not tried:
                if pool.full and pool.atCapacity():
                    self._wait()
                    return
                self._warnRequest(
                    "upstream {upstream} has no backend available for "
                    "{method} {uri}: {why}",
                    why=pool.unavailableReason(),
                )
            self._fail(502)
            return
        now = self._reactor.seconds()
        budget = pool.budget
        if tried:
            if budget is not None and not budget.allows(now):
                self._warnRequest(
                    "upstream {upstream}: not retrying {method} {uri} on "
                    "another backend: retry budget exhausted ({retries} "
                    "retries for {requests} requests in the last 10 s, "
                    "retry_budget = {share:g}%)",
                    retries=budget.retries,
                    requests=budget.requests,
                    share=budget.share * 100,
                )
                self._fail(502)
                return
            pool.retries += 1
        elif budget is not None:
            budget.request(now)
        tried.add(backend)
        self._backend = backend
        self._started = now
        pool.requestStarted(backend, self._request)
        if self._upgrade is not None:
            # A tunnel gets a connection of its own, never a pooled one.
            self._connect(
                pool.newConnection(backend, proxyHeader=self._proxyHeader)
            )
            return
        if self._stream is not None:
            # A body that cannot be sent again: no keep-alive race.
            self._connect(pool.freshConnection(backend, self._proxyHeader))
            return
        proto, connecting = pool.connection(backend, self._proxyHeader)
        if proto is not None:
            self._send(proto, True)
        else:
            assert connecting is not None
            self._connect(connecting)

    def _wait(self) -> None:
        """
        Wait in the pool's queue for a backend with room, or answer 503
        when the queue is full.
        """
        pool = self._pool
        place = pool.enqueue(self._dequeued, self._queueTimedOut)
        if place is None:
            self._warnRequest(
                "upstream {upstream}: every backend is at its max_conns and "
                "the queue is full ({size} waiting): 503 for {method} {uri}",
                size=pool.queue.size,
            )
            self._fail(503)
            return
        self._place = place

    def _dequeued(self) -> None:
        self._place = None
        self._attempt(True)

    def _queueTimedOut(self) -> None:
        self._place = None
        self._warnRequest(
            "upstream {upstream}: {method} {uri} waited queue_timeout "
            "({timeout:g}s) for a backend below its max_conns: 503",
            timeout=self._pool.queue.timeout,
        )
        self._fail(503)

    def _warnRequest(self, format: str, **fields: object) -> None:
        """
        Log a warning about this request: C{format} may use C{{upstream}},
        C{{method}} and C{{uri}} besides its own C{fields}.
        """
        self._log.warn(
            format,
            upstream=self._pool.name,
            method=self._method.decode("ascii", "replace"),
            uri=self._request.uri.decode("ascii", "replace"),
            **fields,
        )

    def _connect(self, connecting: Deferred[Any]) -> None:
        self._connecting = connecting
        connecting.addCallbacks(self._send, self._connectFailed, (False,))

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting = None
        if self._stage == _ABANDONED:
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
        if self._stage == _ABANDONED:
            self._finishBackend(Outcome.CANCELLED)
            proto.transport.loseConnection()
            return
        self._reused = reused
        if proto.lost:
            if reused:
                # Lost while idle, before anything was sent: never the
                # backend's failure.
                self._connect(self._pool.freshConnection(backend, self._proxyHeader))
            else:
                self.failed(False, False, "connection lost before the request")
            return
        if self._resource.preserveHost and self._clientHost:
            host = self._clientHost
        else:
            host = backend.authority.encode("ascii")
        self._conn = proto
        stream = self._stream
        if stream is not None:
            # Once its head is sent, the request is not tried again
            # elsewhere: its body is not kept.  read_timeout starts once
            # the body is sent.
            self._idempotent = False
            proto.send(self, self._method, self._requestLine + host + self._block)
            proto.streamBody(_BodyRelay(self, stream))
            if stream.length is None:
                stream.attach(self._sendChunk, self._lastChunk)
            else:
                stream.attach(proto.writeBody, self._bodySent)
            return
        self._startTimer()
        body = self._bodyFile
        if body is not None:
            body.seek(0)
        proto.send(
            self,
            self._method,
            self._requestLine + host + self._block,
            body,
            self._upgrade is not None,
        )

    def _sendChunk(self, data: bytes) -> None:
        conn = self._conn
        if conn is not None and data:
            conn.writeBody(b"%x\r\n%s\r\n" % (len(data), data))

    def _lastChunk(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.writeBody(b"0\r\n\r\n")
        self._bodySent()

    def _bodySent(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.endBody()
            if self._stage == _FORWARDING:
                self._startTimer()

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
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.detach()
        backend = self._backend
        if self._stage == _RELAYING:
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
            self._connect(self._pool.freshConnection(backend, self._proxyHeader))
            return
        self._log.warn(
            "upstream {upstream}: {backend} closed the connection before "
            "the response head",
            upstream=self._pool.name,
            backend=backend.name,
        )
        self._finishBackend(Outcome.RESET)
        self._retryOr(502)

    def _responseLines(self, head: ResponseHead) -> list[bytes]:
        """
        The header lines of the backend's response that go to the client.
        """
        tokens = head.connection
        if tokens <= HOP_BY_HOP and head.lines is not None:
            # The backend's own lines, as they came.
            return [head.lines]
        if tokens <= HOP_BY_HOP:
            # parseHead kept every hop-by-hop header apart already.
            return [b"%s: %s\r\n" % field for field in head.headers]
        drop = HOP_BY_HOP | tokens
        return [b"%s: %s\r\n" % field for field in head.headers
                if field[0].lower() not in drop]

    def headReceived(self, head: ResponseHead) -> None:
        self._latency = self._reactor.seconds() - self._started
        self._code = head.code
        self._stage = _RELAYING
        # The head may be held, to go out with the first bytes of the body
        # when they came in the same read.
        self._proxied.holdProxiedHead(
            head.code, head.phrase, self._responseLines(head), head.length
        )

    def upgraded(self, head: ResponseHead) -> Optional[TunnelHandler]:
        """
        The backend switched protocols: relay its 101 to the client, and
        from then on the bytes both ways (a L{Tunnel}).  The balancer
        counts the request as active until the tunnel closes.
        """
        self._latency = self._reactor.seconds() - self._started
        self._code = head.code
        self._stopTimer()
        conn, self._conn = self._conn, None
        backend = self._backend
        assert conn is not None and backend is not None
        if not head.upgrade:
            self._log.warn(
                "upstream {upstream}: {backend} answered 101 without Upgrade",
                upstream=self._pool.name,
                backend=backend.name,
            )
            self._finishBackend(Outcome.INVALID)
            self._fail(502)
            return None
        channel = self._request.channel
        self._stage = _RELAYING
        lines = self._responseLines(head)
        lines.append(
            b"Upgrade: %s\r\nConnection: upgrade\r\n" % b", ".join(head.upgrade)
        )
        self._proxied.holdProxiedHead(101, head.phrase, lines, None)
        tunnel = self._tunnel = Tunnel(
            self._reactor,
            conn.transport,
            self._pool.tunnelTimeout,
            self._tunnelClosed,
            "%s to %s" % (self._clientHost.decode("ascii", "replace"), backend.name),
        )
        client = channel.startTunnel(tunnel.fromClient)
        if client is None:
            tunnel.close()
        else:
            tunnel.attach(client)
        return tunnel

    def _tunnelClosed(self, tunnel: Tunnel) -> None:
        self._tunnel = None
        self._finishBackend(Outcome.SUCCESS)
        self._stage = _ANSWERED
        request = self._request
        request.site.logTunnel(
            request,
            tunnel.fromClientBytes,
            tunnel.toClientBytes,
            self._reactor.seconds() - tunnel.started,
        )

    def headReadDone(self) -> None:
        if self._stage != _RELAYING or self._relay is not None:
            return
        # The body goes on past this read: send the head now, and let a
        # slow client pause the backend from here on.  (A response that
        # ended within the read never needed either.)
        proxied = self._proxied
        proxied.flushHead()
        self._relay = _ResponseRelay(self)
        proxied.registerProducer(self._relay, True)

    def bodyReceived(self, data: bytes) -> None:
        self._proxied.writeBody(data)

    def bodyFinished(self, complete: bool, why: str) -> None:
        self._conn = None
        self._stopTimer()
        self._unregisterRelay()
        if complete:
            self._finishBackend(Outcome.SUCCESS)
            self._stage = _ANSWERED
            self._proxied.finish()
            return
        self._bodyBroken(why, Outcome.RESET)

    def _unregisterRelay(self) -> None:
        if self._relay is not None:
            self._relay = None
            self._proxied.unregisterProducer()

    def _bodyBroken(self, why: str, outcome: Outcome) -> None:
        self._unregisterRelay()
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
        took = self._reactor.seconds() - self._started
        latency = self._latency if outcome is Outcome.SUCCESS else took
        code, self._code = self._code, None
        if code is None:
            code = _OUTCOME_STATUS.get(outcome)
        elif outcome is Outcome.SUCCESS:
            backend.responseClasses[code // 100] += 1
            if code != 101:
                backend.responseTimes.observe(took)
        tried = self._triedLog = self._triedLog + ((backend.name, code, took),)
        self._request.upstreamTried = tried
        self._pool.requestFinished(backend, self._request, outcome, latency, code)

    def _fail(self, code: int) -> None:
        if self._stage >= _ANSWERED:
            return
        if self._proxied.startedWriting:
            self._abortClient()
            return
        self._stage = _ANSWERED
        writeError(self._request, code)

    def _abortClient(self) -> None:
        self._stage = _ANSWERED
        self._proxied.abortConnection()

    def _clientLost(self, reason: Failure) -> None:
        self._stage = _ABANDONED
        self._stopTimer()
        if self._place is not None:
            place, self._place = self._place, None
            place.leave()
            return
        if self._tunnel is not None:
            self._tunnel.clientClosed()
            return
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
            return
        # The relay's registration went with the connection.
        self._relay = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.detach()
            self._finishBackend(Outcome.CANCELLED)

    # Backpressure

    def pauseBackend(self) -> None:
        self._stopTimer()
        if self._conn is not None:
            self._conn.pauseProducing()

    def resumeBackend(self) -> None:
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


class _RuledExchange(_Exchange):
    """
    An exchange of a resource with L{HeaderRules}: the rules' request
    headers go to the backend, their response headers to the client (with
    the backend's response, or with lbproxy's own error page).
    """

    def start(self) -> None:
        rules = self._resource.headerRules
        assert rules is not None
        self._rules = rules
        self._requestLines, self._responseFields = rules.bind(self._request)
        _Exchange.start(self)

    def _forwardedHeaders(  # type: ignore[override]
        self, incoming: Any, clientAddress: Optional[str], secure: bool
    ) -> tuple[bytes, Optional[bytes]]:
        block, clientHost = forwardedHeaders(
            incoming, clientAddress, secure, self._rules.requestRemoved
        )
        return block + self._requestLines, clientHost

    def _responseLines(self, head: ResponseHead) -> list[bytes]:
        removed = self._rules.responseRemoved
        fields = [field for field in head.headers if field[0].lower() not in removed]
        fields.extend(self._responseFields)
        head.headers = fields
        # Forwarded from the fields, not from the lines as they came.
        head.lines = None
        return _Exchange._responseLines(self, head)

    def _fail(self, code: int) -> None:
        if self._stage < _ANSWERED and not self._proxied.startedWriting:
            headers = self._request.responseHeaders
            for name, _ in self._responseFields:
                headers.removeHeader(name)
            for name, value in self._responseFields:
                headers.addRawHeader(name, value)
        _Exchange._fail(self, code)


class _GzipExchange(_Exchange):
    """
    An exchange of a resource with a L{GzipPolicy}: the response goes to
    the client through a L{GzipResponse}, which compresses it when it
    qualifies, and which is told when a read of the body from the backend
    is done, to flush what zlib holds.  A C{HEAD} request goes as any
    other (its response has no body to compress).
    """

    _gzipped: Optional[GzipResponse] = None

    def start(self) -> None:
        if self._method != b"HEAD" and not self._request.requestHeaders.hasHeader(
            b"upgrade"
        ):
            # (A 101 has nothing to compress, and its tunnel's bytes are
            # not a response body.)
            policy = self._resource.gzip
            assert policy is not None
            self._proxied = self._gzipped = GzipResponse(
                self._proxied,
                policy,
                self._request.requestHeaders.getRawHeaders(b"accept-encoding"),
            )
        super().start()

    def bodyReadDone(self) -> None:
        gzipped = self._gzipped
        if gzipped is not None:
            gzipped.flushBody()


class _RuledGzipExchange(_GzipExchange, _RuledExchange):
    """
    An exchange of a resource with both L{HeaderRules} and a
    L{GzipPolicy}: the rules apply to the backend's response first, as
    nginx's C{add_header} comes before its gzip filter.
    """


#: The exchange class of a resource, by whether it has header rules and
#: whether it has a gzip policy.
_EXCHANGES: dict[tuple[bool, bool], type[_Exchange]] = {
    (False, False): _Exchange,
    (True, False): _RuledExchange,
    (False, True): _GzipExchange,
    (True, True): _RuledGzipExchange,
}


@implementer(IPushProducer)
class _BodyRelay:
    """
    The backend transport's producer while a streaming request body is
    sent (C{request_buffering = no}): a backend that does not take more
    pauses the reading of the client, and read_timeout runs while it does
    (nginx's C{proxy_send_timeout}): a backend that stops reading is given
    up on with 504, as one that stops answering.
    """

    __slots__ = ("_exchange", "_body")

    def __init__(self, exchange: _Exchange, body: StreamingBody) -> None:
        self._exchange = exchange
        self._body = body

    def pauseProducing(self) -> None:
        self._body.pauseProducing()
        if self._exchange._conn is not None:
            self._exchange._startTimer()

    def resumeProducing(self) -> None:
        self._exchange._stopTimer()
        self._body.resumeProducing()

    def stopProducing(self) -> None:
        self._body.stopProducing()


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


@implementer(IProxyRequest)
class _PlainRequest:
    """
    L{IProxyRequest} for a request that is not lbproxy's own (an
    embedder's plain L{twisted.web.server.Site}, an HTTP/2 stream's), through
    the public API of L{twisted.web.http.Request}: the backend's head goes
    through C{responseHeaders}, the body through C{write}, and the loss of
    the client is learnt from C{notifyFinish}.
    """

    startedWriting = False
    _callback: Optional[Callable[[Failure], object]] = None
    _watching = False

    def __init__(self, request: Request) -> None:
        self._request = request

    @property
    def clientAddress(self) -> Any:
        """
        The request's own C{getClientAddress()}: a plain L{Site} trusts no
        proxy.
        """
        return self._request.getClientAddress()

    @property
    def hostHeader(self) -> Optional[bytes]:
        host: Optional[bytes] = self._request.getHeader(b"host")
        return host

    @property
    def onConnectionLost(self) -> Optional[Callable[[Failure], object]]:
        return self._callback

    @onConnectionLost.setter
    def onConnectionLost(self, callback: Optional[Callable[[Failure], object]]) -> None:
        self._callback = callback
        if callback is not None and not self._watching:
            self._watching = True
            self._request.notifyFinish().addErrback(self._lost)

    def _lost(self, reason: Failure) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback(reason)

    def holdProxiedHead(
        self, code: int, phrase: bytes, headerLines: list[bytes], length: Optional[int]
    ) -> None:
        request: Any = self._request
        self.startedWriting = True
        # A proxy passes on what the backend said about the content type,
        # and says nothing where the backend said nothing (a
        # twisted.web.server.Request would add its defaultContentType).
        request.defaultContentType = None
        request.setResponseCode(code, phrase)
        out = request.responseHeaders
        # The backend's own, not Twisted's.
        out.removeHeader(b"server")
        out.removeHeader(b"date")
        cookies = request.cookies
        for line in b"".join(headerLines).split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            value = value.strip(b" \t")
            if name.lower() == b"set-cookie":
                # Request.write sets Set-Cookie from its cookies, replacing
                # what responseHeaders hold.
                cookies.append(value)
            else:
                out.addRawHeader(name, value)
        if (
            length is not None
            and request.method != b"HEAD"
            and code not in NO_BODY_CODES
        ):
            out.setRawHeaders(b"content-length", [b"%d" % length])

    def writeBody(self, data: bytes) -> None:
        self._request.write(data)

    def flushHead(self) -> None:
        request = self._request
        if not request.startedWriting:
            request.write(b"")

    def finish(self) -> None:
        self._callback = None
        self._request.finish()

    def abortConnection(self) -> None:
        request = self._request
        transport: Any = request.transport
        channel: Any = request.channel
        if transport is not None:
            # HTTP/1.1: the connection.
            transport.abortConnection()
        elif channel is not None:
            # HTTP/2: the stream, which is reset.
            channel.abortConnection()

    def callWhenDone(self, callback: Callable[[], object]) -> None:
        self._request.notifyFinish().addBoth(lambda _: callback())

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()


registerAdapter(_PlainRequest, Request, IProxyRequest)
