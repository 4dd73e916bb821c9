# -*- test-case-name: tests.test_site -*-
"""
The client side: a L{twisted.web.server.Site} whose connections speak
lbproxy's own HTTP/1.1 server protocol (L{lbproxy._server.ProxyChannel}),
with lbproxy's limits, timeouts, request validation and access log, and
the request class that carries a proxied response back.

lbproxy reads each client request completely (or, for an upstream with
C{request_buffering = no}, decodes its body as it streams) and re-frames
it for the backend itself, so the client's framing never reaches a
backend.  What
could be read two ways is refused with 400 before anything is forwarded:
see L{lbproxy._server} for the list, and C{docs/security.rst}.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import IO, Any, Callable, Iterable, Optional, Union

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import INegotiated
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, datetimeToLogString, parse_qs
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from twisted.web.server import version as _TWISTED_SERVER
from zope.interface import implementer

from lbproxy._counters import RequestCounts
from lbproxy._interfaces import IProxyRequest
from lbproxy._logbuffer import BufferedLog
from lbproxy._realip import TrustedProxies
from lbproxy._server import ProxyChannel
from lbproxy._server import headerLines as _headerLines
from lbproxy._vhost import VirtualHostResource, originForm

#: The bytes nginx writes as C{\\xHH} in a log line (its default
#: C{escape}): control characters, C{"}, C{\\}, DEL and every non-ASCII
#: byte.
_MUST_ESCAPE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')


def _escapeByte(match: re.Match[bytes]) -> bytes:
    return b"\\x%02X" % ord(match.group())


def logEscape(value: bytes) -> str:
    """
    C{value} as nginx writes a variable into a log line: as is, less the
    bytes of L{_MUST_ESCAPE}, each written C{\\xHH} (upper-case hex).
    """
    return _MUST_ESCAPE.sub(_escapeByte, value).decode("ascii")


def combinedLogLine(timestamp: str, request: Any) -> str:
    """
    The access log line of C{request}, byte for byte what nginx's
    C{combined} format writes::

        $remote_addr - $remote_user [$time_local] "$request" $status
        $body_bytes_sent "$http_referer" "$http_user_agent"

    (on one line): the client address unquoted, C{-} for a missing user,
    referrer or agent, the body bytes sent as a number (C{0} for none),
    and values escaped as nginx escapes them (L{logEscape}).  One
    difference: a request whose target was an absolute URL is logged with
    the path and query it was reduced to, where nginx logs the line as
    received.

    @param timestamp: the time, bracketed, as
        L{twisted.web.http.datetimeToLogString} writes it.
    """
    host = getattr(request.getClientAddress(), "host", None)
    remote = host if isinstance(host, str) and host else "-"
    user = request.getUser() if request.getHeader(b"authorization") else b""
    referrer = request.getHeader(b"referer")
    agent = request.getHeader(b"user-agent")
    requestLine = b"%s %s %s" % (request.method, request.uri, request.clientproto)
    return '%s - %s %s "%s" %d %d "%s" "%s"' % (
        remote,
        logEscape(user) if user else "-",
        timestamp,
        logEscape(requestLine),
        request.code,
        request.sentLength,
        "-" if referrer is None else logEscape(referrer),
        "-" if agent is None else logEscape(agent),
    )


def upstreamLogFields(request: Any, now: float) -> str:
    """
    What the C{upstream} format adds to a combined line: nginx's
    C{$upstream_addr $upstream_status $upstream_response_time
    $request_time}, each backend tried in order, separated by C{", "} as
    nginx separates them (C{-} for a request that went to none, or a status
    never received), times in seconds with milliseconds.

    @param now: the time the response ended, for C{$request_time}.
    """
    tried = request.upstreamTried
    received = request.received
    requestTime = "-" if received is None else "%.3f" % (now - received)
    if not tried:
        return " - - - " + requestTime
    return " %s %s %s %s" % (
        ", ".join([name for name, _, _ in tried]),
        ", ".join(["-" if code is None else str(code) for _, code, _ in tried]),
        ", ".join(["%.3f" % seconds for _, _, seconds in tried]),
        requestTime,
    )


def _jsonText(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("utf-8", "backslashreplace")


def jsonLogLine(
    now: float,
    request: Any,
    requestId: bool,
    tunnel: Optional[tuple[int, int, float]],
) -> str:
    """
    The access log line of C{request} as one JSON object: the fields of
    the C{combined} and C{upstream} formats under nginx's variable names
    (C{time} in ISO 8601, UTC; numbers as numbers; the upstream fields as
    lists, one item per backend tried; C{null} where the line would say
    C{-}), then C{request_id} with L{ProxySite.logRequestId}, and
    C{tunnel_from_client}, C{tunnel_to_client} and C{tunnel_duration} for a
    tunnel.

    @param now: the time the response ended.
    @param tunnel: bytes from and to the client and seconds of a tunnel,
        or L{None}.
    """
    host = getattr(request.getClientAddress(), "host", None)
    user = request.getUser() if request.getHeader(b"authorization") else b""
    tried = request.upstreamTried
    received = request.received
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(int(now), timezone.utc).isoformat(),
        "remote_addr": host if isinstance(host, str) and host else None,
        "remote_user": _jsonText(user) if user else None,
        "request": _jsonText(
            b"%s %s %s" % (request.method, request.uri, request.clientproto)
        ),
        "status": request.code,
        "body_bytes_sent": request.sentLength,
        "http_referer": _jsonText(request.getHeader(b"referer")),
        "http_user_agent": _jsonText(request.getHeader(b"user-agent")),
        "upstream_addr": [name for name, _, _ in tried],
        "upstream_status": [code for _, code, _ in tried],
        "upstream_response_time": [round(seconds, 3) for _, _, seconds in tried],
        "request_time": None if received is None else round(now - received, 3),
    }
    if requestId:
        fields["request_id"] = request.requestId
    if tunnel is not None:
        fields["tunnel_from_client"], fields["tunnel_to_client"] = tunnel[:2]
        fields["tunnel_duration"] = round(tunnel[2], 3)
    return json.dumps(fields)


#: L{ProxyRequest._checkedHost} before the channel has checked the C{Host}.
_NOT_CHECKED: Any = object()


@implementer(IProxyRequest)
class ProxyRequest(Request):
    """
    The requests of L{ProxySite}: a L{twisted.web.server.Request} that
    also provides L{IProxyRequest}, so that a proxied response goes to the
    client as bytes, its head with the first bytes of its body.

    An absolute-form request target (C{GET http://elsewhere/x HTTP/1.1})
    is reduced to its path and query: the request is routed by its C{Host}
    header like any other, never to the host it names.

    Responses get no default C{Content-Type}: a proxy passes on what the
    backend said, and says nothing where the backend said nothing.

    Its C{channel} is a L{lbproxy._server.RequestChannel}.
    """

    defaultContentType = None
    channel: Any

    #: Called with the reason if the client connection is lost before the
    #: response is finished: what C{notifyFinish().addErrback(f)} does,
    #: without a L{Deferred} made and fired for every request.
    onConnectionLost: Optional[Callable[[Failure], object]] = None

    _checkedHost: Any = _NOT_CHECKED

    #: The request's id (a L{str}), once its vhost's C{request_id} or a
    #: header rule's C{$request_id} gave it one; L{None} until then.
    requestId: Optional[str] = None

    #: The backends the request was sent to, in order, as the exchange
    #: records them for the access log: C{(address, status, seconds)},
    #: the status L{None} when none was received (nginx's
    #: C{$upstream_addr}, C{$upstream_status}, C{$upstream_response_time}).
    upstreamTried: tuple[tuple[str, Optional[int], float], ...] = ()

    #: When the request's head was read, in the reactor's seconds, for the
    #: access log's C{$request_time} and the request duration histograms;
    #: L{None} unless the site's requests are L{TimedProxyRequest}s.
    received: Optional[float] = None

    #: The L{RequestCounts} that count the request when it ends: those of
    #: the vhost that took it (set by L{VirtualHostResource}), else
    #: L{None} (then the site's L{ProxySite.unroutedCounts}).
    requestCounts: Optional[RequestCounts] = None

    @property
    def clientAddress(self) -> Any:
        """
        The client's address (L{IProxyRequest.clientAddress}): the peer's,
        or, from a peer of the site's L{ProxySite.trustedProxies}, the
        client that its C{X-Forwarded-For} names (see L{requestReceived}).
        """
        return self.client

    def getClientAddress(self) -> Any:
        """
        The client's address: L{clientAddress}, which is what everything
        that knows only L{twisted.web.iweb.IRequest} (a balancer, a log
        formatter) asks for, so that they all see the same client.
        """
        return self.client

    @property
    def hostHeader(self) -> Optional[bytes]:
        """
        The request's C{Host} header (L{IProxyRequest.hostHeader}): as
        L{ProxyChannel} found and checked it (at most one, and valid), or,
        for a request that channel did not read, as the request has it.
        """
        host = self._checkedHost
        if host is _NOT_CHECKED:
            return self.getHeader(b"host")
        checked: Optional[bytes] = host
        return checked

    @hostHeader.setter
    def hostHeader(self, host: Optional[bytes]) -> None:
        self._checkedHost = host

    #: What L{callWhenDone} was given, until the request is over.
    _whenDone: Optional[list[Callable[[], object]]] = None

    def callWhenDone(self, callback: Callable[[], object]) -> None:
        """
        Call C{callback} once the request is over: finished, or its
        connection lost before that (L{IProxyRequest.callWhenDone}).
        """
        calls = self._whenDone
        if calls is None:
            self._whenDone = [callback]
        else:
            calls.append(callback)

    def _callDone(self) -> None:
        calls, self._whenDone = self._whenDone, None
        if calls is not None:
            for call in calls:
                call()

    def finish(self) -> None:
        # The callback is usually a bound method of whatever handles the
        # request, which holds the request: letting go of it here leaves no
        # cycle for the garbage collector to find after every request.
        self.onConnectionLost = None
        Request.finish(self)
        if self._whenDone is not None and self.finished:
            self._callDone()

    def connectionLost(self, reason: Failure) -> None:
        Request.connectionLost(self, reason)
        callback, self.onConnectionLost = self.onConnectionLost, None
        if callback is not None:
            callback(reason)
        if self._whenDone is not None:
            self._callDone()

    def abortConnection(self) -> None:
        """
        Close the client connection at once.
        """
        channel = self.channel
        if channel is not None:
            channel.abortConnection()

    def process(self) -> None:
        """
        Find the resource and render it.  With a leaf root (lbproxy's
        L{VirtualHostResource}, an L{UpstreamResource}), that is the root,
        rendered at once: no C{Server} header announcing Twisted's version
        (the backend's own is passed on), no C{Date} (a proxied response
        has the backend's; lbproxy's own pages get one when their head is
        written), and no per-segment split and unquote of the path (a
        L{VirtualHostResource} routes on the raw path).  Any other root is
        traversed as L{Request.process} does it.
        """
        site = self.site = self.channel.site
        if self.path == b"*":
            # What Request.process does (RFC 9110 9.3.7), with the Date of
            # lbproxy's own pages.
            if self.method == b"OPTIONS":
                self.setResponseCode(200)
            else:
                self.setResponseCode(405)
                self.setHeader(b"Allow", b"OPTIONS")
            self.setHeader(b"Content-Length", b"0")
            self.finish()
            return
        root = site.resource
        if not getattr(root, "isLeaf", False):
            Request.process(self)
            return
        self.prepath = []
        self.postpath = []
        self.sitepath: list[bytes] = []
        try:
            self.render(root)
        except BaseException:
            self.processingFailed(Failure())

    def write(self, data: bytes) -> None:
        """
        Write C{data}, and the response head with it the first time: one
        send for a response that fits in one write (see
        L{ProxyChannel.writeHeaders}).  The C{Server} header naming
        Twisted's version that L{Request.process} sets is not sent.
        """
        if not self.startedWriting:
            headers = self.responseHeaders
            if headers.getRawHeaders(b"server") == [_TWISTED_SERVER]:
                headers.removeHeader(b"server")
        Request.write(self, data)
        self.flushHead()

    def flushHead(self) -> None:
        """
        Send the response head that the channel holds, if any, now.
        """
        channel = self.channel
        if channel is not None:
            channel.flushHead()

    def holdProxiedHead(
        self, code: int, phrase: bytes, headerLines: list[bytes], length: Optional[int]
    ) -> None:
        """
        Start the response with a backend's status and header lines, as
        the first L{write} would with L{responseHeaders}, but without a pass
        through L{Headers}: the lines were validated when the backend's
        head was parsed.  The head is held by the channel until the first
        write of the body, or L{flushHead}.

        What L{responseHeaders} and L{cookies} already hold (set by a
        balancer or the application before the response came) is sent
        too, less C{Date} and C{Server}, which come from the backend.

        @param headerLines: L{bytes} of one or more whole
            C{Name: value\\r\\n} lines each.
        @param length: the body's length, or L{None} when unknown (then an
            HTTP/1.1 client gets it chunked).
        """
        channel = self.channel
        if channel is None:
            # As Request.write: nothing more goes to a client that left.
            return
        self.code = code
        self.code_message = phrase
        self.startedWriting = 1
        version = self.clientproto
        lines = [b"%s %d %s\r\n" % (version, code, phrase)]
        lines.extend(_headerLines(self.responseHeaders, _BACKEND_OWN))
        lines.extend(headerLines)
        for cookie in self.cookies:
            lines.append(b"Set-Cookie: %s\r\n" % cookie)
        # (A 1xx is the 101 of an upgrade: what follows is the tunnel's.)
        bodyless = self.method == b"HEAD" or code in NO_BODY_CODES or code < 200
        if not bodyless:
            if length is not None:
                lines.append(b"Content-Length: %d\r\n" % length)
            elif version == b"HTTP/1.1":
                lines.append(b"Transfer-Encoding: chunked\r\n")
                self.chunked = 1
        lines.append(b"\r\n")
        channel.holdHead(b"".join(lines))
        if bodyless:
            self.write = self.writeBody = _discard  # type: ignore[method-assign]

    def writeBody(self, data: bytes) -> None:
        """
        Write part of a body whose head L{holdProxiedHead} wrote: what
        L{write} does after the first write, without its layers.
        """
        if self.finished:
            raise RuntimeError("writeBody called after finish")
        channel = self.channel
        if channel is None or not data:
            return
        self.sentLength += len(data)
        if self.chunked:
            channel.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            channel.write(data)

    def believeForwardedFor(self, trusted: TrustedProxies) -> None:
        """
        When the peer is one of C{trusted} and the request's
        C{X-Forwarded-For} names a client (see
        L{TrustedProxies.realClient}), make that client the request's
        (L{clientAddress}), and leave in C{X-Forwarded-For} only the
        entries before it, as if the client had sent the request itself:
        lbproxy then appends the client's address, as for any other, and
        the backend sees the same header whether it came through the
        trusted proxies or not.  The peer stays C{channel.getPeer()}.
        """
        found = trusted.realClient(
            self.client, self.requestHeaders.getRawHeaders(b"x-forwarded-for")
        )
        if found is None:
            return
        self.client, rest = found
        if rest is None:
            self.requestHeaders.removeHeader(b"x-forwarded-for")
        else:
            self.requestHeaders.setRawHeaders(b"x-forwarded-for", [rest])

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        What L{Request.requestReceived} does, less its parsing of form
        bodies into C{args}: a proxy forwards a body, it does not read it
        (and a multipart body would be read whole into memory).  The query
        string is still parsed into C{args}.  From a trusted proxy, the
        client is found first (L{believeForwardedFor}).

        The channel let through only origin-form, C{*} and http(s)
        absolute-form targets; the last lose their scheme and authority.
        """
        self.content.seek(0, 0)  # type: ignore[union-attr]
        site = self.channel.site
        if isinstance(site, ProxySite) and site.trustedProxies is not None:
            self.believeForwardedFor(site.trustedProxies)
        path = originForm(path)
        self.method, self.uri = command, path
        self.clientproto = version
        self.path, question, query = path.partition(b"?")
        self.args = parse_qs(query, 1) if question else {}
        # What HTTPChannel does for every request: getCookie reads these.
        self.parseCookies()
        self.process()


#: The response headers a proxied response takes from its backend rather
#: than from the request (see L{ProxyRequest.holdProxiedHead}).
_BACKEND_OWN = frozenset([b"Date", b"Server"])


def _h2Channel() -> Any:
    """
    L{lbproxy._h2.H2Channel}, or L{None} when the C{h2} package cannot be
    imported (then only HTTP/1.1 is offered).
    """
    try:
        from lbproxy._h2 import H2Channel
    except ImportError:
        return None
    return H2Channel


def _discard(data: bytes) -> None:
    """
    The C{write} of a response that has no body (to C{HEAD}, or 204, 304).
    """


class TimedProxyRequest(ProxyRequest):
    """
    A L{ProxyRequest} that notes when it was made (L{received}), for the
    access log's C{$request_time} and the request duration histograms:
    the request a L{ProxySite} makes.
    """

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        ProxyRequest.__init__(self, channel, *args, **kwargs)
        self.received = channel.site.reactor.seconds()


class ProxySite(Site):
    """
    The L{Site <twisted.web.server.Site>} of lbproxy's listeners.

    @ivar accessLog: where the access log goes: a L{BufferedLog} (see
        L{openAccessLog}), an open text file, or L{None} for no access
        log.  Each line is one C{write} of it.
    @ivar channels: the open client connections.
    @ivar maxConnections: the most client connections open at once, or 0
        for no limit.  A connection beyond it is accepted and closed at
        once, without a response.
    @ivar connectionsRefused: how many connections were closed so.
    @ivar trustedProxies: the L{TrustedProxies} whose C{X-Forwarded-For}
        names the client of their requests, or L{None}.
    @ivar logRequestId: whether each access log line ends with the
        request's id (L{ProxyRequest.requestId}), quoted, or C{"-"}.
    @ivar http2: whether TLS listeners offer HTTP/2 (C{h2}) through ALPN
        (see L{acceptableProtocols}).
    @ivar accessLogFormat: C{"combined"}, C{"upstream"} or C{"json"} (see
        L{setAccessLogFormat}).
    @ivar unroutedCounts: the L{RequestCounts} of the requests that no
        vhost took (refused before routing, or for a host no vhost
        serves).
    """

    accessLogFormat = "combined"

    _drained: Optional[Deferred[None]] = None
    _log = Logger()
    displayTracebacks = False
    connectionsRefused = 0

    requestFactory = TimedProxyRequest
    protocol = ProxyChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        accessLog: Union[IO[str], BufferedLog, None] = None,
        keepaliveTimeout: float = 75.0,
        maxBodySize: int = 100 * 1024 * 1024,
        maxHeaderSize: int = 16 * 1024,
        reactor: Any = None,
        clientHeaderTimeout: Optional[float] = 10.0,
        clientBodyTimeout: Optional[float] = 60.0,
        maxConnections: int = 0,
        trustedProxies: Iterable[Any] = (),
        logRequestId: bool = False,
        sendTimeout: Optional[float] = 60.0,
        http2: bool = True,
        accessLogFormat: str = "combined",
    ) -> None:
        """
        @param resource: the root resource, usually a
            L{lbproxy.VirtualHostResource}.
        @param accessLog: see L{accessLog}.
        @param keepaliveTimeout: seconds an idle client connection is kept.
        @param maxBodySize: the largest request body, in bytes (else 413).
        @param maxHeaderSize: the largest request head, in bytes (else 431).
        @param reactor: the reactor for timeouts; the global one if L{None}.
        @param clientHeaderTimeout: seconds a request head may take to
            arrive (else 408), or L{None}.
        @param clientBodyTimeout: seconds the body may pause between two
            reads (else 408), or L{None}.
        @param maxConnections: see L{maxConnections}.
        @param trustedProxies: the peers whose C{X-Forwarded-For} is
            believed: C{ipaddress} networks, or text such as
            C{"10.0.0.0/8"}, C{"::1"} or C{"unix:"} (see
            L{TrustedProxies}).
        @param logRequestId: see L{logRequestId}.
        @param sendTimeout: seconds a response being relayed may wait for
            the client to accept more of it (nginx's C{send_timeout}), or
            L{None}: past it, the client connection and the response's
            backend connection are closed.
        @param http2: see L{http2}.
        @param accessLogFormat: see L{setAccessLogFormat}.
        """
        Site.__init__(self, resource, timeout=keepaliveTimeout, reactor=reactor)
        self.accessLog = accessLog
        self.channels: set[ProxyChannel] = set()
        self._addresses: dict[Any, Any] = {}
        self.maxBodySize = maxBodySize
        self.maxHeaderSize = maxHeaderSize
        self.clientHeaderTimeout = clientHeaderTimeout
        self.clientBodyTimeout = clientBodyTimeout
        self.maxConnections = maxConnections
        self.trustedProxies = TrustedProxies(trustedProxies) or None
        self.logRequestId = logRequestId
        self.sendTimeout = sendTimeout
        self.http2 = http2
        self.unroutedCounts = RequestCounts()
        self.setAccessLogFormat(accessLogFormat)

    def configure(self, proxy: Any) -> None:
        """
        Take the client limits of a new L{lbproxy.config.ProxyConfig} (on a
        reload): connections opened from now on get them; open ones keep
        those they started with.
        """
        self.timeOut = proxy.keepaliveTimeout
        self.maxBodySize = proxy.maxBodySize
        self.maxHeaderSize = proxy.maxHeaderSize
        self.clientHeaderTimeout = proxy.clientHeaderTimeout
        self.clientBodyTimeout = proxy.clientBodyTimeout
        self.sendTimeout = proxy.sendTimeout
        self.maxConnections = proxy.maxConnections
        self.trustedProxies = TrustedProxies(proxy.trustedProxies) or None
        self.http2 = proxy.http2
        self.setAccessLogFormat(proxy.accessLogFormat)

    def setAccessLogFormat(self, logFormat: str) -> None:
        """
        Write the access log in C{logFormat}: C{"combined"} (nginx's),
        C{"upstream"} (combined, then nginx's C{$upstream_addr
        $upstream_status $upstream_response_time $request_time}, see
        L{upstreamLogFields}) or C{"json"} (L{jsonLogLine}).
        """
        self.accessLogFormat = logFormat

    def buildProtocol(self, addr: Any) -> Any:
        if self.maxConnections and len(self.channels) >= self.maxConnections:
            self.connectionsRefused += 1
            self._log.warn(
                "max_connections ({limit}) reached: closing a new connection "
                "from {client}",
                limit=self.maxConnections,
                client=getattr(addr, "host", "?"),
            )
            return None
        channel = self.protocol()
        channel.factory = channel.site = self
        channel.requestFactory = self.requestFactory
        channel.timeOut = self.timeOut
        channel.maxBodySize = self.maxBodySize
        channel.totalHeadersSize = self.maxHeaderSize
        channel.clientHeaderTimeout = self.clientHeaderTimeout
        channel.clientBodyTimeout = self.clientBodyTimeout
        channel.sendTimeout = self.sendTimeout
        channel.streamBodyFor = self.streamsRequestBody
        return channel

    def streamsRequestBody(self, host: Optional[bytes], target: bytes) -> bool:
        """
        Whether the body of a request for C{target} on C{host} goes to its
        backend as it arrives: its route (through the root
        L{VirtualHostResource}, or the root itself) is an
        L{UpstreamResource <lbproxy.UpstreamResource>} whose upstream says
        C{request_buffering = no}.
        """
        from lbproxy._proxy import UpstreamResource

        resource: Any = self.resource
        if isinstance(resource, VirtualHostResource):
            vhost = resource.vhostFor(host)
            if vhost is None:
                return False
            resource = vhost.resourceFor(originForm(target).partition(b"?")[0])
        return isinstance(resource, UpstreamResource) and not resource.pool.requestBuffering

    def closeConnections(self, timeout: Optional[float] = None) -> Deferred[None]:
        """
        Close the idle client connections now, and every other one as soon
        as its response is complete (as nginx does on a graceful stop).

        @param timeout: seconds after which the connections still open are
            aborted; L{None} waits for as long as they take.
        @return: a L{Deferred <twisted.internet.defer.Deferred>} that fires once every connection is closed.
        """
        if not self.channels:
            return succeed(None)
        if self._drained is None:
            self._drained = Deferred()
        drained = self._drained
        for channel in list(self.channels):
            channel.persistent = False
            if not channel.busy:
                channel.loseConnection()
        if timeout is not None and self.channels:
            deadline = self.reactor.callLater(timeout, self._abortConnections)

            def cancelDeadline(result: Any) -> Any:
                if deadline.active():
                    deadline.cancel()
                return result

            drained.addBoth(cancelDeadline)
        return drained

    def sharedAddress(self, address: Any) -> Any:
        """
        One object for each distinct local address of the connections
        (there are few): C{address}, or an equal one seen before.
        """
        addresses = self._addresses
        try:
            return addresses[address]
        except KeyError:
            if len(addresses) < 64:
                addresses[address] = address
            return address
        except TypeError:  # pragma: no cover (an unhashable address)
            return address

    def channelClosed(self) -> None:
        """
        A connection closed: fire what L{closeConnections} returned once
        the last one has.
        """
        if not self.channels and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def acceptableProtocols(self) -> list[bytes]:
        """
        The protocols offered through ALPN on TLS listeners: C{h2} then
        C{http/1.1} when L{http2} is on (and the C{h2} package can be
        imported), else C{http/1.1} alone.  Either way the connection is
        lbproxy's: its own HTTP/1.1 channel, or its own HTTP/2 one
        (L{lbproxy._h2.H2Channel}, see L{protocolAfterHandshake}), never
        Twisted's, which knows nothing of lbproxy's limits.
        """
        if self.http2 and _h2Channel() is not None:
            return [b"h2", b"http/1.1"]
        return [b"http/1.1"]

    def protocolAfterHandshake(self, channel: ProxyChannel) -> Any:
        """
        The protocol that takes over C{channel}'s connection once its TLS
        handshake is done, or L{None} to go on with HTTP/1.1: an HTTP/2
        connection when ALPN chose C{h2}, with the limits C{channel} was
        built with (those of the configuration it was accepted under).
        """
        negotiated = INegotiated(channel.transport, None)
        if negotiated is None or negotiated.negotiatedProtocol != b"h2":
            return None
        factory = _h2Channel()
        if factory is None:
            return None
        return factory(
            self,
            channel.requestFactory,
            channel.maxBodySize,
            channel.totalHeadersSize,
            channel.clientHeaderTimeout,
            channel.clientBodyTimeout,
            channel.timeOut,
            channel.sendTimeout,
            channel.streamBodyFor,
        )

    def _abortConnections(self) -> None:
        if self.channels:
            self._log.warn(
                "aborting {count} client connection(s) still busy at shutdown",
                count=len(self.channels),
            )
        for channel in list(self.channels):
            channel.transport.abortConnection()

    def log(self, request: Any) -> None:
        """
        Count C{request}, which has ended, in its L{RequestCounts} (its
        status class, and its duration when it has a L{ProxyRequest.received} time),
        and write its access log line in L{accessLogFormat}, unless the
        access log is off: for C{combined}, a line of nginx's combined log
        format (see L{combinedLogLine}); with L{logRequestId}, the
        request's id follows, quoted (C{"-"} for a request without one), as
        nginx writes a C{log_format} that ends with C{"$request_id"}.
        """
        now = self.reactor.seconds()
        counts = request.requestCounts or self.unroutedCounts
        counts.classes[request.code // 100] += 1
        received = request.received
        if received is not None:
            counts.durations.observe(now - received)
        if self.accessLog is not None:
            self._logLine(request, None, now)

    def _logLine(
        self, request: Any, tunnel: Optional[tuple[int, int, float]], now: float
    ) -> None:
        assert self.accessLog is not None
        logFormat = self.accessLogFormat
        if logFormat == "json":
            line = jsonLogLine(now, request, self.logRequestId, tunnel)
        else:
            line = combinedLogLine(self._logTime(now), request)
            if logFormat == "upstream":
                line += upstreamLogFields(request, now)
            if tunnel is not None:
                line += " tunnel=%d/%d duration=%.3f" % tunnel
            if self.logRequestId:
                requestId = request.requestId
                line += ' "%s"' % (
                    logEscape(requestId.encode("utf-8")) if requestId else "-"
                )
        self.accessLog.write(line + "\n")

    def logTunnel(
        self, request: Any, fromClient: int, toClient: int, seconds: float
    ) -> None:
        """
        Write the access log line of a request whose connection became a
        tunnel (a WebSocket), once the tunnel is closed: the combined line
        with C{$body_bytes_sent} the bytes sent to the client through the
        tunnel, then C{tunnel=FROM_CLIENT/TO_CLIENT} (bytes each way) and
        C{duration=SECONDS} (the tunnel's, with milliseconds), then the
        request's id if L{logRequestId}.  The request is counted as a
        C{1xx} of its L{RequestCounts}, outside its duration histogram
        (a tunnel may last hours).
        """
        request.sentLength = toClient
        counts = request.requestCounts or self.unroutedCounts
        counts.classes[request.code // 100] += 1
        if self.accessLog is not None:
            self._logLine(request, (fromClient, toClient, seconds), self.reactor.seconds())

    _loggedSecond = -1
    _loggedTime = ""

    def _logTime(self, seconds: float) -> str:
        """
        The access log's timestamp for C{seconds} (now), formatted at most
        once a second.
        """
        now = int(seconds)
        if now != self._loggedSecond:
            self._loggedSecond = now
            self._loggedTime = datetimeToLogString(now)
        return self._loggedTime

    @staticmethod
    def openAccessLog(path: Optional[str], reactor: Any = None) -> Optional[BufferedLog]:
        """
        Open the access log named in the configuration: a path, C{"-"} for
        standard output, or L{None} for none; its lines are written in
        batches (see L{BufferedLog.open}).

        @param reactor: the reactor whose clock flushes the batches; the
            global one if L{None}.
        """
        if reactor is None:
            from twisted.internet import reactor
        return BufferedLog.open(path, reactor)
