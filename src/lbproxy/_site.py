# -*- test-case-name: tests.test_site -*-
"""
The client side: a L{twisted.web.server.Site} with lbproxy's limits,
timeouts, request validation and access log.

lbproxy reads each client request completely and re-frames it for the
backend itself, so the client's framing never reaches a backend.  What
could be read two ways is refused with 400 before anything is forwarded:
see L{ProxyChannel} for the list, and C{docs/security.rst}.
"""

from __future__ import annotations

import re
import sys
from typing import IO, Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.http import (
    NO_BODY_CODES,
    RESPONSES,
    HTTPChannel,
    combinedLogFormatter,
    datetimeToString,
    parse_qs,
    unquote,
)
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.resource import IResource, _IEncodingResource
from twisted.web.server import Request, Site

from lbproxy._client import writeNow
from lbproxy._pages import PHRASES, errorBody
from lbproxy._timer import Deadline
from lbproxy._vhost import originForm

try:
    from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError
except ImportError:  # pragma: no cover (older or newer Twisted)
    _ChunkedTransferDecoder = None  # type: ignore[assignment,misc]
    _MalformedChunkedDataError = ValueError  # type: ignore[assignment,misc]

_RESPONSE = (
    b"HTTP/1.1 %d %s\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n"
)

#: Control characters that may not appear in a header value: all but HTAB
#: (RFC 9110 5.5).  NUL, CR and LF are the ones that split requests.
_CTL = bytes(range(0, 9)) + bytes(range(10, 32)) + b"\x7f"

#: A C{Host} value: a DNS name (letters, digits, C{-}, C{.}, C{_}), an IPv4
#: address or a bracketed IPv6 address, with an optional port.  Stricter
#: than RFC 3986's reg-name, which also allows sub-delims and %-escapes that
#: no real host name needs.
_HOST = re.compile(rb"\A(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?\Z")

#: An absolute-form request target (RFC 9112 3.2.2): scheme and authority,
#: then the path and query that are all lbproxy uses of it.
_ABSOLUTE = re.compile(rb"\A[Hh][Tt][Tt][Pp][Ss]?://[^/?#]*")

#: The most hex digits a chunk size may have: 16 is 2**64 - 1, far beyond
#: any max_body_size, and bounds the number a client can make us parse.
_MAX_CHUNK_SIZE_DIGITS = 16

#: A token (RFC 9110 5.6.2), less C{&}, which Twisted 24.7 does not count
#: as a token character: a name with it takes the line-by-line path.
_TOKEN = rb"[!#$%'*+\-.^_`|~0-9A-Za-z]+"

#: A request line that every supported Twisted parses the same way:
#: a token method, a target of printable ASCII, and HTTP/1.0 or 1.1.
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) (HTTP/1\.[01])\Z")

#: The header lines of a head, CRLF-separated, that need none of the
#: refusals of the line-by-line path: a token name directly followed by
#: the colon (so no whitespace before it and no obs-fold), and a value with
#: no control character but HTAB.
_FIELDS = re.compile(
    rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*)(?:\r\n" + _TOKEN
    + rb":[\t\x20-\x7e\x80-\xff]*)*"
)

#: Whether this Twisted has the HTTPChannel and LineReceiver state that
#: L{ProxyChannel._readHeads} reads and sets (present from 24.7 to 26.10).
_WHOLE_HEADS = all(
    hasattr(cls, name)
    for cls, name in (
        (HTTPChannel, "_HTTPChannel__first_line"),
        (HTTPChannel, "_HTTPChannel__header"),
        (HTTPChannel, "_receivedHeaderSize"),
        (HTTPChannel, "_receivedHeaderCount"),
        (LineReceiver, "_busyReceiving"),
        (LineReceiver, "_buffer"),
    )
)

#: What L{ProxyChannel._phase} can be.
_IDLE, _HEAD, _BODY, _HANDLING = "idle", "head", "body", "handling"


def _phrase(code: int) -> bytes:
    phrase = PHRASES.get(code)
    if phrase is not None:
        return phrase.encode("ascii")
    return RESPONSES.get(code, b"Error")


if _ChunkedTransferDecoder is not None:

    class _StrictChunkedDecoder(_ChunkedTransferDecoder):  # type: ignore[misc,valid-type]
        """
        Twisted's chunked decoder, also refusing a chunk size of more than
        L{_MAX_CHUNK_SIZE_DIGITS} hex digits (Twisted already refuses signs,
        prefixes, whitespace, bad extensions and a missing CRLF).
        """

        def _dataReceived_CHUNK_LENGTH(self) -> bool:
            eol = self._buffer.find(b"\r\n")
            line = self._buffer if eol == -1 else self._buffer[:eol]
            size = line.split(b";", 1)[0]
            if len(size) > _MAX_CHUNK_SIZE_DIGITS:
                raise _MalformedChunkedDataError("Chunk-size too long.")
            result: bool = _ChunkedTransferDecoder._dataReceived_CHUNK_LENGTH(self)
            return result


class ProxyRequest(Request):
    """
    A request that refuses a body larger than the site's C{maxBodySize}
    with 413, whether the size is announced by C{Content-Length} or reached
    by a chunked body, before any of it is forwarded.  Twisted already
    spools a large body to a temporary file, so nothing big stays in memory.

    An absolute-form request target (C{GET http://elsewhere/x HTTP/1.1})
    is reduced to its path and query: the request is routed by its C{Host}
    header like any other, never to the host it names.

    Responses get no default C{Content-Type}: a proxy passes on what the
    backend said, and says nothing where the backend said nothing.
    """

    defaultContentType = None
    _bodyReceived = 0
    channel: ProxyChannel

    #: Called with the reason if the client connection is lost before the
    #: response is finished: what C{notifyFinish().addErrback(f)} does,
    #: without a L{Deferred} made and fired for every request.
    onConnectionLost: Optional[Callable[[Failure], object]] = None

    #: The request's C{Host} header, set by L{ProxyChannel} once it has
    #: checked that there is exactly one and that it is valid.
    hostHeader: bytes

    def finish(self) -> None:
        # The callback is usually a bound method of whatever handles the
        # request, which holds the request: letting go of it here leaves no
        # cycle for the garbage collector to find after every request.
        self.onConnectionLost = None
        Request.finish(self)

    def connectionLost(self, reason: Failure) -> None:
        Request.connectionLost(self, reason)
        callback, self.onConnectionLost = self.onConnectionLost, None
        if callback is not None:
            callback(reason)

    def process(self) -> None:
        """
        Find the resource and render it, as L{Request.process} does, less
        what a proxy does not want on its hot path: no C{Server} header
        announcing Twisted's version (the backend's own is passed on), no
        C{Date} (a proxied response has the backend's; lbproxy's own pages
        get one from L{ProxyChannel.writeHeaders}, formatted once a
        second), and no
        per-segment split and unquote of the path when the root resource is
        a leaf (a L{VirtualHostResource} routes on the raw path).
        """
        site = self.site = self.channel.site
        self.prepath = []
        root = site.resource
        leaf = getattr(root, "isLeaf", False)
        if leaf:
            self.postpath = []
        else:
            self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            Request.process(self)
            self.responseHeaders.removeHeader(b"server")
            return
        try:
            if leaf:
                # What Site.getResourceFor finds for a leaf root: the root.
                self.sitepath: list[bytes] = []
                resrc = root
            else:
                resrc = site.getResourceFor(self)
            if _IEncodingResource.providedBy(resrc):
                encoder = resrc.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(resrc)
        except BaseException:
            self.processingFailed(Failure())

    def write(self, data: bytes) -> None:
        """
        Write C{data}, and the response head with it the first time: one
        send for a response that fits in one write (see
        L{ProxyChannel.writeHeaders}).
        """
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
        write of the body, or L{ProxyChannel.flushHead}.

        What L{responseHeaders} and L{cookies} already hold (set by a
        balancer or the application before the response came) is sent
        too, less C{Date} and C{Server}, which come from the backend.

        @param headerLines: C{Name: value\r\n} lines.
        @param length: the body's length, or L{None} when unknown (then an
            HTTP/1.1 client gets it chunked).
        """
        if self._disconnected:
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
        bodyless = self.method == b"HEAD" or code in NO_BODY_CODES
        if not bodyless:
            if length is not None:
                lines.append(b"Content-Length: %d\r\n" % length)
            elif version == b"HTTP/1.1":
                lines.append(b"Transfer-Encoding: chunked\r\n")
                self.chunked = 1
        lines.append(b"\r\n")
        self.channel.holdHead(b"".join(lines))
        if bodyless:
            self.write = self.writeBody = _discard  # type: ignore[method-assign]

    def writeBody(self, data: bytes) -> None:
        """
        Write part of a body whose head L{holdProxiedHead} wrote: what
        L{write} does after the first write, without its layers.
        """
        if self.finished:
            raise RuntimeError("writeBody called after finish")
        if self._disconnected or not data:
            return
        self.sentLength += len(data)
        if self.chunked:
            self.channel.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.channel.write(data)

    def gotLength(self, length: Optional[int]) -> None:
        limit = self.channel.maxBodySize
        if length is not None and length > limit:
            self.channel.refuse(413)
            length = 0
        Request.gotLength(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.refused:
            return
        self._bodyReceived += len(data)
        if self._bodyReceived > self.channel.maxBodySize:
            self.channel.refuse(413)
            return
        Request.handleContentChunk(self, data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        What L{Request.requestReceived} does, less its parsing of form
        bodies into C{args}: a proxy forwards a body, it does not read it
        (and a multipart body would be read whole into memory).  The query
        string is still parsed into C{args}.

        The channel let through only origin-form, C{*} and http(s)
        absolute-form targets; the last lose their scheme and authority.
        """
        self.content.seek(0, 0)  # type: ignore[union-attr]
        path = originForm(path)
        self.method, self.uri = command, path
        self.clientproto = version
        self.path, question, query = path.partition(b"?")
        self.args = parse_qs(query, 1) if question else {}
        self.process()


#: The response headers a proxied response takes from its backend rather
#: than from the request (see L{ProxyRequest.holdProxiedHead}).
_BACKEND_OWN = frozenset([b"Date", b"Server"])


def _headerLines(headers: Any, skip: frozenset[bytes] = frozenset()) -> list[bytes]:
    """
    The C{Name: value} lines of C{headers} (a L{Headers}), one per value,
    less the names in C{skip} (spelled as L{Headers} spells them).
    """
    return [
        b"%s: %s\r\n" % (name, value)
        for name, values in headers.getAllRawHeaders()
        if name not in skip
        for value in values
    ]


def _discard(data: bytes) -> None:
    """
    The C{write} of a response that has no body (to C{HEAD}, or 204, 304).
    """


_nonQueuedCache: dict[Any, bool] = {}


def _nonQueued(factory: Any) -> bool:
    """
    Whether C{factory} provides L{INonQueuedRequestFactory}, asked once per
    factory rather than once per request.
    """
    try:
        return _nonQueuedCache[factory]
    except KeyError:
        answer = _nonQueuedCache[factory] = bool(
            INonQueuedRequestFactory.providedBy(factory)
        )
        return answer
    except TypeError:  # pragma: no cover (an unhashable factory)
        return bool(INonQueuedRequestFactory.providedBy(factory))


_dateCache: list[Any] = [None, b""]


def _httpDate(reactor: Any) -> bytes:
    """
    The current time as an HTTP date, formatted at most once a second.
    """
    now = int(reactor.seconds())
    if _dateCache[0] != now:
        _dateCache[0] = now
        _dateCache[1] = datetimeToString(now)
    date: bytes = _dateCache[1]
    return date


class ProxyChannel(HTTPChannel):
    """
    An L{HTTPChannel} that refuses what a proxy must not pass on, answers
    with a short page and closes the connection, reading nothing more:

      - 400 for an ambiguous or malformed request: C{Content-Length} with
        C{Transfer-Encoding}; more than one C{Content-Length} or
        C{Transfer-Encoding}; a C{Transfer-Encoding} other than exactly
        C{chunked}; a bad chunk size or chunk ending; a control character
        (NUL, CR, LF, ...) in a header; a header name that is not a token
        (whitespace before the colon among others); a folded header
        (obs-fold); several C{Host} headers, an invalid one, or none in
        HTTP/1.1; a request target that is neither origin-form (C{/...}),
        absolute-form over http(s) nor C{*};
      - 405 for C{CONNECT}: lbproxy is not a forward proxy;
      - 408 when the head takes longer than C{clientHeaderTimeout} or the
        body pauses longer than C{clientBodyTimeout};
      - 413 for a body larger than C{maxBodySize};
      - 431 for a head larger than C{maxHeaderSize}.

    Twisted's own parser refuses several of these already; the checks here
    make the list complete and the answer uniform.

    A head that arrives complete and needs none of these refusals is read
    in one pass (L{_readHeads}) rather than line by line, which is most of
    the cost of a small request; every other head takes the line-by-line
    path, which alone decides each refusal.

    @ivar maxBodySize: the largest request body accepted, in bytes.
    @ivar clientHeaderTimeout: seconds the whole request head may take, or
        L{None} for no limit.
    @ivar clientBodyTimeout: seconds between two reads of the body, or
        L{None} for no limit.
    @ivar refused: whether the connection was refused and is closing.
    """

    _log = Logger()
    maxBodySize = 100 * 1024 * 1024
    clientHeaderTimeout: Optional[float] = None
    clientBodyTimeout: Optional[float] = None
    refused = False
    site: ProxySite
    transport: Any
    _phase = _IDLE
    _headerTimer: Optional[IDelayedCall] = None
    _bodyTimer: Optional[IDelayedCall] = None

    _secure: Optional[bool] = None
    _host: Any = None
    _peer: Any = None

    # A connection's addresses and security do not change, but Twisted asks
    # the transport again for every request (a getsockname() system call
    # and a new address object each time): ask once.

    def isSecure(self) -> bool:
        if self._secure is None:
            self._secure = HTTPChannel.isSecure(self)
        return self._secure

    def getHost(self) -> Any:
        if self._host is None:
            self._host = HTTPChannel.getHost(self)
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = HTTPChannel.getPeer(self)
        return self._peer

    # The idle timeout (keepalive_timeout)

    _idle: Optional[Deadline] = None

    def setTimeout(self, period: Optional[float]) -> Optional[float]:  # type: ignore[override]
        """
        L{TimeoutMixin.setTimeout} on a L{Deadline}: L{HTTPChannel} turns
        the idle timeout off while it handles each request and on again
        after it, which would otherwise cancel one delayed call and
        schedule another for every request.
        """
        previous = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        idle = self._idle
        if period is None:
            if idle is not None:
                idle.clear()
        else:
            if idle is None:
                idle = self._idle = Deadline(self.site.reactor, self.timeoutConnection)
            idle.set(period)
        return previous

    def resetTimeout(self) -> None:
        idle = self._idle
        if idle is not None and idle.deadline is not None and self.timeOut is not None:
            idle.set(self.timeOut)

    # Writing responses

    _pendingHead: Optional[bytes] = None

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Any
    ) -> None:
        """
        Hold the response head until the first write of the body, so that a
        small response goes to the client in one send; add a C{Date} when
        the response has none.  L{ProxyRequest.write}
        flushes it before returning, so it never waits beyond the call that
        wrote it.
        """
        lines = [b"%s %s %s\r\n" % (version, code, reason)]
        if not headers.hasHeader(b"date"):
            lines.append(b"Date: %s\r\n" % _httpDate(self.site.reactor))
        lines.extend(_headerLines(headers))
        lines.append(b"\r\n")
        self.holdHead(b"".join(lines))

    def write(self, data: bytes) -> None:
        """
        Write C{data}, after the held response head, at once when the
        socket takes it (see L{writeNow}).
        """
        head = self._pendingHead
        if head is not None:
            self._pendingHead = None
            data = head + data
        if data:
            writeNow(self.transport, data)

    def holdHead(self, head: bytes) -> None:
        """
        Hold C{head} (a response head, as bytes) to be sent with the first
        write of the body, or by L{flushHead}.
        """
        self.flushHead()
        self._pendingHead = head

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def flushHead(self) -> None:
        """
        Write the held response head, if any.
        """
        head = self._pendingHead
        if head is not None:
            self._pendingHead = None
            writeNow(self.transport, head)

    def refuse(self, code: int) -> None:
        """
        Answer C{code} with a short page and close the connection.
        """
        if self.refused:
            return
        self.refused = True
        self.flushHead()
        self._cancelTimers()
        if self.transport.disconnecting:
            # Already closing after a response: nothing more may be sent.
            return
        body = errorBody(code)
        self._log.info(
            "refused a request from {client}: {code}",
            client=getattr(self.transport.getPeer(), "host", "?"),
            code=code,
        )
        self.transport.write(_RESPONSE % (code, _phrase(code), len(body)) + body)
        # No idle timeout any more; instead, a client that does not read
        # the refusal is cut off after abortTimeout, as Twisted does when
        # a connection times out.
        self.setTimeout(None)
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    # Timers

    def _cancelTimers(self) -> None:
        if self._headerTimer is None and self._bodyTimer is None:
            return
        for name in ("_headerTimer", "_bodyTimer"):
            timer = getattr(self, name)
            if timer is not None:
                setattr(self, name, None)
                if timer.active():
                    timer.cancel()

    def _startHead(self) -> None:
        self._phase = _HEAD
        if not self.persistent:
            # Closing after the last response: what follows is dropped.
            return
        if self.clientHeaderTimeout is not None and self._headerTimer is None:
            self._headerTimer = self.callLater(
                self.clientHeaderTimeout, lambda: self._timedOut("client_header_timeout")
            )

    def _restartBodyTimer(self) -> None:
        if self._bodyTimer is not None and self._bodyTimer.active():
            self._bodyTimer.cancel()
        self._bodyTimer = None
        if self.clientBodyTimeout is not None:
            self._bodyTimer = self.callLater(
                self.clientBodyTimeout, lambda: self._timedOut("client_body_timeout")
            )

    def _timedOut(self, which: str) -> None:
        self._headerTimer = self._bodyTimer = None
        self._log.info(
            "client {client} exceeded {which}",
            client=getattr(self.transport.getPeer(), "host", "?"),
            which=which,
        )
        self.refuse(408)

    # The connection

    def connectionMade(self) -> None:
        HTTPChannel.connectionMade(self)
        self.site.channels.add(self)
        self._startHead()

    def connectionLost(self, reason: Any = None) -> None:
        self._cancelTimers()
        if self._idle is not None:
            self._idle.cancel()
        self.site.channels.discard(self)
        HTTPChannel.connectionLost(self, reason)
        if not self.site.channels and self.site._drained is not None:
            drained, self.site._drained = self.site._drained, None
            drained.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if self._phase == _BODY:
            self._restartBodyTimer()
        elif _WHOLE_HEADS and self._readHeads(data):
            if self.refused or self.transport.disconnecting or not self._buffer:
                return
            data = b""
        if self._phase == _IDLE and data:
            self._startHead()
        HTTPChannel.dataReceived(self, data)
        if (
            not self.refused
            and self.line_mode
            and not self._busyReceiving
            and b"\n" in self._buffer
        ):
            # A bare LF in the head: lines end with CRLF here, so this line
            # would be refused once complete; refuse it now.  (While busy,
            # this is a request finished during the read that passes back
            # what followed it, whole lines among it; the read goes on with
            # them and checks what is left once done.)
            self.refuse(400)

    # The head

    def _readHeads(self, data: bytes) -> bool:
        """
        Read each complete request head at the start of the buffer (C{data}
        appended) in one pass, when it is one that the line-by-line path
        (L{lineReceived}, L{headerReceived}) would accept as it is, and
        drive L{HTTPChannel}'s state as that path does.  Anything else (an
        incomplete head, one too large, or any line that path might refuse
        or treat specially) is left to it, so every refusal keeps its one
        implementation and its status.

        @return: whether C{data} was consumed (it is then in the buffer, or
            read); if not, nothing was changed.
        """
        consumed = False
        while (
            self.line_mode
            and not self._busyReceiving
            and not self.paused
            and self.persistent
            and not self._handlingRequest
            and not self.refused
            and not self.transport.disconnecting
            and self._receivedHeaderSize == 0
            and self._HTTPChannel__first_line == 1
            and not self._HTTPChannel__header  # type: ignore[attr-defined]
        ):
            buffer = self._buffer + data if data else self._buffer
            # Every line, and all of them, within the limits (else 431).
            limit = min(self.MAX_LENGTH, self.totalHeadersSize)
            end = buffer.find(b"\r\n\r\n", 0, limit + 4)
            if end <= 0:
                break
            head = buffer[:end]
            first = head.find(b"\r\n")
            if first == -1:
                first = end
            request = _REQUEST_LINE.match(head, 0, first)
            if request is None or request.group(1).upper() == b"CONNECT":
                break
            lines = head[first + 2 :].split(b"\r\n") if first < end else []
            if len(lines) > self.maxHeaders or (
                lines and _FIELDS.fullmatch(head, first + 2) is None
            ):
                break

            consumed = True
            data = b""
            self._buffer = buffer[end + 4 :]
            self.resetTimeout()
            # The head is complete: no client_header_timeout to start, as
            # allHeadersReceived would cancel it before it could fire.
            self._phase = _HEAD
            self._busyReceiving = True
            try:
                self._acceptHead(request.groups(), lines, end - 2 * len(lines))
            finally:
                self._busyReceiving = False
        return consumed

    def _acceptHead(self, requestLine: Any, lines: list[bytes], size: int) -> None:
        """
        What L{HTTPChannel.lineReceived} does for a request line, these
        header lines and the empty line, all validated by L{_readHeads}.
        """
        factory = self.requestFactory
        if _nonQueued(factory):
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        self._command, self._path, self._version = requestLine
        self._receivedHeaderSize = size
        addRawHeader = request.requestHeaders.addRawHeader
        for line in lines:
            name, _, value = line.partition(b":")
            lowered = name.lower()
            if lowered == b"content-length" or lowered == b"transfer-encoding":
                # The framing headers take the line-by-line path's own
                # rules (and transfer decoders).
                if not self.headerReceived(line):
                    return
            else:
                addRawHeader(name, value.strip(b" \t"))
        self._receivedHeaderCount = len(lines)
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(431)
            return
        if self._phase == _IDLE:
            self._startHead()
        if self._receivedHeaderSize == 0 and not getattr(self, "_command", None):
            # The request line, or the one empty line before it that
            # Twisted forgives.
            if line.split(b" ", 1)[0].upper() == b"CONNECT":
                self.refuse(405)
                return
        elif line[:1] in (b" ", b"\t"):
            # obs-fold: RFC 9112 5.2 lets a server refuse it, and joining
            # lines is where parsers disagree.
            self.refuse(400)
            return
        elif line and line.translate(None, _CTL) != line:
            self.refuse(400)
            return
        HTTPChannel.lineReceived(self, line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(431)

    def headerReceived(self, line: bytes) -> bool:
        if self.refused:
            return False
        name, _, value = line.partition(b":")
        if name.lower() == b"transfer-encoding" and (
            value.strip(b" \t").lower() != b"chunked"
            or getattr(self, "_version", None) != b"HTTP/1.1"
        ):
            # Exactly "chunked", and only in HTTP/1.1 (RFC 9112 6.1).
            self.refuse(400)
            return False
        ok: bool = HTTPChannel.headerReceived(self, line)
        decoder = self._transferDecoder
        if (
            ok
            and _ChunkedTransferDecoder is not None
            and type(decoder) is _ChunkedTransferDecoder
        ):
            self._transferDecoder = _StrictChunkedDecoder(
                decoder.dataCallback, decoder.finishCallback
            )
        return ok

    def allHeadersReceived(self) -> None:
        if self.refused:
            return
        self._cancelTimers()
        request = self.requests[-1]
        code = self._checkHead(request)
        if code:
            self.refuse(code)
            return
        HTTPChannel.allHeadersReceived(self)
        if not self.refused and self.length != 0:
            self._phase = _BODY
            self._restartBodyTimer()

    def _checkHead(self, request: Any) -> int:
        """
        The status to refuse the head just received with, or 0 when it is
        acceptable.
        """
        path = getattr(self, "_path", b"")
        if not (path.startswith(b"/") or path == b"*" or _ABSOLUTE.match(path)):
            return 400
        hosts = request.requestHeaders.getRawHeaders(b"host")
        if hosts is None:
            return 400 if getattr(self, "_version", b"") == b"HTTP/1.1" else 0
        if len(hosts) != 1 or (hosts[0] and _HOST.match(hosts[0]) is None):
            return 400
        request.hostHeader = hosts[0]
        return 0

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._cancelTimers()
        self._phase = _HANDLING
        HTTPChannel.allContentReceived(self)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.refused:
            HTTPChannel.rawDataReceived(self, data)

    def requestDone(self, request: Any) -> None:
        self.flushHead()
        self._phase = _IDLE
        HTTPChannel.requestDone(self, request)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400)

    def _send100Continue(self) -> None:
        if not self.refused:
            HTTPChannel._send100Continue(self)


class ProxySite(Site):
    """
    The L{Site} of lbproxy's listeners.

    @ivar accessLog: where the access log goes: an open text file, or
        L{None} for no access log.
    @ivar channels: the open client connections.
    @ivar maxConnections: the most client connections open at once, or 0
        for no limit.  A connection beyond it is accepted and closed at
        once, without a response.
    @ivar connectionsRefused: how many connections were closed so.
    """

    _drained: Optional[Deferred[None]] = None
    _log = Logger()
    displayTracebacks = False
    connectionsRefused = 0

    requestFactory = ProxyRequest
    # Plain HTTP/1.1 channels: the limits above live in ProxyChannel.
    protocol = ProxyChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        accessLog: Optional[IO[str]] = None,
        keepaliveTimeout: float = 75.0,
        maxBodySize: int = 100 * 1024 * 1024,
        maxHeaderSize: int = 16 * 1024,
        reactor: Any = None,
        clientHeaderTimeout: Optional[float] = 10.0,
        clientBodyTimeout: Optional[float] = 60.0,
        maxConnections: int = 0,
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
        """
        Site.__init__(self, resource, timeout=keepaliveTimeout, reactor=reactor)
        self.accessLog = accessLog
        self.channels: set[ProxyChannel] = set()
        self.maxBodySize = maxBodySize
        self.maxHeaderSize = maxHeaderSize
        self.clientHeaderTimeout = clientHeaderTimeout
        self.clientBodyTimeout = clientBodyTimeout
        self.maxConnections = maxConnections

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
        self.maxConnections = proxy.maxConnections

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
        channel = Site.buildProtocol(self, addr)
        channel.maxBodySize = self.maxBodySize
        channel.totalHeadersSize = self.maxHeaderSize
        channel.MAX_LENGTH = self.maxHeaderSize
        channel.clientHeaderTimeout = self.clientHeaderTimeout
        channel.clientBodyTimeout = self.clientBodyTimeout
        return channel

    def closeConnections(self, timeout: Optional[float] = None) -> Deferred[None]:
        """
        Close the idle client connections now, and every other one as soon
        as its response is complete (as nginx does on a graceful stop).

        @param timeout: seconds after which the connections still open are
            aborted; L{None} waits for as long as they take.
        @return: a L{Deferred} that fires once every connection is closed.
        """
        if not self.channels:
            return succeed(None)
        if self._drained is None:
            self._drained = Deferred()
        drained = self._drained
        for channel in list(self.channels):
            channel.persistent = False
            if not channel.requests:
                channel.loseConnection()
        if timeout is not None and self.channels:
            deadline = self.reactor.callLater(timeout, self._abortConnections)

            def cancelDeadline(result: Any) -> Any:
                if deadline.active():
                    deadline.cancel()
                return result

            drained.addBoth(cancelDeadline)
        return drained

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
        Write one line of the combined log format, unless the access log is
        off.
        """
        if self.accessLog is None:
            return
        line = combinedLogFormatter(self._logDateTime, request)
        self.accessLog.write(line + "\n")

    @staticmethod
    def openAccessLog(path: Optional[str]) -> Optional[IO[str]]:
        """
        Open the access log named in the configuration: a path, C{"-"} for
        standard output, or L{None} for none.
        """
        if path is None:
            return None
        if path == "-":
            # The real standard output: under twistd, sys.stdout is
            # redirected into the log, which would wrap every line.
            return sys.__stdout__
        return open(path, "a", buffering=1, encoding="utf-8")
