# -*- test-case-name: tests.test_client -*-
"""
The HTTP/1.1 client protocol that forwards requests to backends.

Twisted's L{twisted.web._newclient.HTTP11ClientProtocol} is general: a
L{Deferred} per request and per body, a L{Headers} object built header by
header for the request and the response, a state machine dispatched by
name, a producer proxy per body.  A proxy that already holds a request
head (validated by the server side) needs much less: write the head as
bytes, parse the response head in one pass, and hand the body to one
object as it arrives.  Profiles showed the general client taking close to
half of the proxy's time per request; this one is what is left.

It keeps Twisted's rules for what a response is: the status line and
header syntax of L{twisted.web._newclient.HTTPParser} (folded header
lines are joined; header names are the tokens of L{lbproxy._http}, so
without C{&}, as in Twisted 24.7), 1xx responses skipped, no body for
C{HEAD}, 204 and 304, C{Transfer-Encoding: chunked} through
L{lbproxy._chunked.ChunkedDecoder} (which reads what Twisted's own decoder
reads), C{Content-Length} with the same duplicate rules, a body delimited
by the connection's end otherwise, and a connection reused only after a
complete HTTP/1.1 response without C{Connection: close} or trailing bytes.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Client as _TCPClient
from twisted.internet.tcp import Server as _TCPServer
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy._chunked import ChunkedDecoder
from lbproxy._compat import nothingBuffered
from lbproxy._directtcp import DirectTransport
from lbproxy._http import CTL, FIELD_VALUE, FIELDS, NO_BODY_CODES, TOKEN, TOKEN_RE
from lbproxy._timer import Deadline

#: Response heads larger than this are invalid.
MAX_HEAD_SIZE = 64 * 1024

#: Headers that control the connection, kept apart from the response's
#: end-to-end headers (as L{twisted.web._newclient.HTTPParser} does).
_CONNECTION_CONTROL = frozenset(
    [
        b"content-length",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    ]
)

_DIGITS = re.compile(rb"\A[0-9]+\Z")
_CODE = re.compile(rb"\A[0-9]{3}\Z")
_VERSION = re.compile(rb"\AHTTP/([0-9]+)\.([0-9]+)\Z")
#: One header line, for the heads that L{FIELDS} does not match as a
#: whole (lines ending with LF alone, or an invalid line somewhere): a
#: L{TOKEN}, a colon, the L{FIELD_VALUE} without the whitespace before it;
#: the line may end with the CR of a CR LF.
_FIELD = re.compile(
    rb"^(" + TOKEN + rb"):[ \t]*(" + FIELD_VALUE + rb")\r?$", re.M
)
_NO_TOKENS: frozenset[bytes] = frozenset()
_TRAILING = (b" ", b"\t")


class InvalidResponse(Exception):
    """
    The backend's response is not valid HTTP/1.1.
    """


class ResponseHead:
    """
    The status and headers of a response.

    @ivar version: C{(major, minor)}.
    @ivar code: the status code.
    @ivar phrase: the reason phrase.
    @ivar headers: the end-to-end headers as C{(name, value)} pairs in the
        order received, names as the backend spelled them.
    @ivar connection: the lower-cased tokens of C{Connection}.
    @ivar length: the body's length when known (C{Content-Length}, or 0
        when there is no body), else L{None}.
    @ivar lines: C{headers} as the backend sent them, each line with its
        CR LF, in one L{bytes} (ready to forward), or L{None} when the
        head took the line-by-line path.
    @ivar upgrade: the values of C{Upgrade} of a 101 response, else
        L{None}.
    """

    __slots__ = (
        "version", "code", "phrase", "_headers", "connection", "length", "lines",
        "upgrade",
    )
    lines: Optional[bytes]

    def __init__(
        self,
        version: tuple[int, int],
        code: int,
        phrase: bytes,
        headers: Optional[list[tuple[bytes, bytes]]],
        connection: frozenset[bytes],
        length: Optional[int],
        lines: Optional[bytes] = None,
    ) -> None:
        """
        @param headers: see L{headers}; L{None} to have them read from
            C{lines} when first asked for.
        @param lines: see L{lines}.
        """
        self.version = version
        self.code = code
        self.phrase = phrase
        self._headers = headers
        self.connection = connection
        self.length = length
        self.lines = lines
        self.upgrade: Optional[list[bytes]] = None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = self._headers
        if headers is None:
            # Split only when asked: a proxied response forwards the lines.
            lines = self.lines or b""
            headers = self._headers = [
                (name, value.strip(b" \t"))
                for name, _, value in (
                    line.partition(b":") for line in lines.split(b"\r\n")[:-1]
                )
            ]
        return headers

    @headers.setter
    def headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._headers = headers


class ResponseHandler:
    """
    What L{UpstreamConnection} tells about one exchange.  Exactly one of
    L{failed} or, after L{headReceived}, L{bodyFinished} ends it.
    """

    def headReceived(self, head: ResponseHead) -> None:
        """
        The response head arrived.
        """

    def headReadDone(self) -> None:
        """
        Everything of the read that brought the head (and maybe some or
        all of the body) has been delivered, and more of the body, if any,
        comes in later reads.
        """

    def bodyReceived(self, data: bytes) -> None:
        """
        Some of the body arrived.
        """

    def bodyReadDone(self) -> None:
        """
        Everything of a read that brought more of the body (not its end,
        and not the read of the head, which L{headReadDone} tells) has
        been delivered: a point at which to pass on what was held back.
        """

    def bodyFinished(self, complete: bool, why: str) -> None:
        """
        The body ended: completely (C{complete}), or not, because of C{why}.
        """

    def readTimedOut(self) -> None:
        """
        The connection's C{readDeadline} passed: the backend was silent for
        too long.
        """

    def failed(self, received: bool, invalid: bool, why: str) -> None:
        """
        No response head: the connection was lost, after some bytes of the
        response if C{received}, or the response was not valid HTTP if
        C{invalid}.
        """

    def upgraded(self, head: ResponseHead) -> Optional[TunnelHandler]:
        """
        The backend answered C{101 Switching Protocols} to a request sent
        with C{upgrade}: the connection is a tunnel from now on.

        @return: what gets the tunnel's bytes from now on (including any
            that came right after the head), or L{None} to close the
            connection.
        """
        return None


class TunnelHandler:
    """
    What L{UpstreamConnection} tells once it is a tunnel (see
    L{ResponseHandler.upgraded}).
    """

    def tunnelReceived(self, data: bytes) -> None:
        """
        The backend sent C{data} into the tunnel.
        """

    def tunnelClosed(self) -> None:
        """
        The connection to the backend is closed.
        """


def _contentLength(values: list[bytes]) -> int:
    """
    Parse C{Content-Length} values by Twisted's rules: repeated values (as
    repeated headers or a list) must agree; each is decimal digits only.

    @raise InvalidResponse: when they are not valid.
    """
    found = set()
    for value in b",".join(values).split(b","):
        value = value.strip()
        if not _DIGITS.match(value):
            raise InvalidResponse(f"invalid Content-Length {value!r}")
        found.add(int(value))
    if len(found) != 1:
        raise InvalidResponse("conflicting Content-Length values")
    return found.pop()


def parseHead(
    data: bytes, method: bytes
) -> tuple[ResponseHead, Optional[int], bool, bool]:
    """
    Parse a response head, without its final empty line.

    @param method: the request's method (no body for C{HEAD}).
    @return: C{(head, length, chunked, bodyless)}: C{length} is the body's
        C{Content-Length} or L{None} (chunked or delimited by the
        connection's end), and C{bodyless} says that no body follows.
    @raise InvalidResponse: when it is not a valid response head.
    """
    status, _, block = data.partition(b"\n")
    if status[-1:] == b"\r":
        status = status[:-1]
    if status[:9] == b"HTTP/1.1 " and status[12:13] in (b" ", b""):
        version = (1, 1)
        codeBytes = status[9:12]
        phrase = status[13:]
    else:
        parts = status.split(b" ", 2)
        match = _VERSION.match(parts[0]) if len(parts) >= 2 else None
        if match is None:
            raise InvalidResponse(f"invalid status line {status[:80]!r}")
        version = (int(match.group(1)), int(match.group(2)))
        codeBytes = parts[1]
        phrase = parts[2] if len(parts) == 3 else b""
    if not _CODE.match(codeBytes):
        raise InvalidResponse(f"invalid status code in {status[:80]!r}")
    headers: list[tuple[bytes, bytes]] = []
    control: dict[bytes, list[bytes]] = {}
    lines: Optional[bytes] = b"" if not block else None
    if block:
        if b"\n " in block or b"\n\t" in block or block[:1] in (b" ", b"\t"):
            _slowHeaders(block, headers, control)
        elif FIELDS.fullmatch(block) is not None:
            # The end-to-end lines stay as they came, to be forwarded (and
            # split into headers only if someone asks).
            raw: list[bytes] = []
            keep = raw.append
            for line in block.split(b"\r\n"):
                name, _, value = line.partition(b":")
                lowered = name.lower()
                if lowered in _CONNECTION_CONTROL:
                    control.setdefault(lowered, []).append(value.strip(b" \t"))
                else:
                    keep(line)
            if raw:
                keep(b"")
                lines = b"\r\n".join(raw)
            else:
                lines = b""
        else:
            fields = _FIELD.findall(block)
            if len(fields) != block.count(b"\n") + 1:
                for line in block.split(b"\n"):
                    if not _FIELD.match(line):
                        raise InvalidResponse(f"invalid header line {line[:80]!r}")
            append = headers.append
            for field in fields:
                name, value = field
                if value[-1:] in _TRAILING:
                    field = (name, value.rstrip(b" \t"))
                lowered = name.lower()
                if lowered in _CONNECTION_CONTROL:
                    control.setdefault(lowered, []).append(field[1])
                else:
                    append(field)
    code = int(codeBytes)
    connection = control.get(b"connection")
    head = ResponseHead(
        version,
        code,
        phrase,
        None if lines is not None else headers,
        parseConnectionTokens(connection) if connection else _NO_TOKENS,
        None,
        lines,
    )
    if 100 <= code < 200:
        if code == 101:
            head.upgrade = control.get(b"upgrade")
        return head, 0, False, True
    length: Optional[int] = None
    lengths = control.get(b"content-length")
    if method == b"HEAD":
        # Content-Length describes the body a GET would have had: an
        # end-to-end header here.
        if lengths is not None:
            head.headers.extend((b"Content-Length", v) for v in lengths)
            head.lines = None
        head.length = 0
        return head, 0, False, True
    if code in NO_BODY_CODES:
        head.length = 0
        return head, 0, False, True
    encodings = control.get(b"transfer-encoding")
    if encodings:
        if encodings[0].strip().lower() != b"chunked":
            raise InvalidResponse(f"unsupported Transfer-Encoding {encodings[0]!r}")
        if lengths is not None:
            # Both framings: the chunking wins (RFC 9112 6.3), but a
            # backend that sends both is not to be trusted with the next
            # request on this connection.
            head.connection = head.connection | {b"close"}
        return head, None, True, False
    if lengths is not None:
        if len(lengths) == 1 and lengths[0].isdigit():
            length = int(lengths[0])
        else:
            length = _contentLength(lengths)
        head.length = length
    return head, length, False, length == 0


#: The tokens of the C{Connection} values seen most (C{keep-alive},
#: C{close}), bounded by L{_CACHED_TOKENS}.
_tokenCache: dict[bytes, frozenset[bytes]] = {}
_CACHED_TOKENS = 64


def parseConnectionTokens(values: Sequence[bytes]) -> frozenset[bytes]:
    """
    The lower-cased tokens of C{Connection} header values.
    """
    if len(values) == 1:
        cached = _tokenCache.get(values[0])
        if cached is not None:
            return cached
    tokens = frozenset(
        token.strip().lower()
        for value in values
        for token in value.split(b",")
        if token.strip()
    )
    if len(values) == 1 and len(_tokenCache) < _CACHED_TOKENS:
        _tokenCache[values[0]] = tokens
    return tokens


def _slowHeaders(
    block: bytes,
    headers: list[tuple[bytes, bytes]],
    control: dict[bytes, list[bytes]],
) -> None:
    """
    Parse header lines, some of them folded (continued on lines that start
    with a space or a tab).
    """
    pending: Optional[bytes] = None
    for line in block.split(b"\n"):
        if line[-1:] == b"\r":
            line = line[:-1]
        if line[:1] in (b" ", b"\t"):
            if pending is None:
                raise InvalidResponse("continuation line before any header")
            pending += b" " + line.strip()
            continue
        if pending is not None:
            _addHeader(pending, headers, control)
        pending = line
    if pending is not None:
        _addHeader(pending, headers, control)


def _addHeader(
    line: bytes,
    headers: list[tuple[bytes, bytes]],
    control: dict[bytes, list[bytes]],
) -> None:
    name, sep, value = line.partition(b":")
    if not sep or not TOKEN_RE.match(name) or b"\r" in value or b"\x00" in value:
        raise InvalidResponse(f"invalid header line {line[:80]!r}")
    value = value.strip(b" \t")
    if len(value.translate(None, CTL)) != len(value):
        raise InvalidResponse(f"control character in header {name[:80]!r}")
    lowered = name.lower()
    if lowered in _CONNECTION_CONTROL:
        control.setdefault(lowered, []).append(value)
    else:
        headers.append((name, value))


def _headEnd(buffer: bytes) -> tuple[int, int]:
    """
    Where the head in C{buffer} ends: C{(end of head, start of body)}, or
    C{(-1, -1)} when it has not ended yet.  Lines end with CR LF or LF.
    """
    # Both searches stop where a head could end (a body is not scanned):
    # a LF LF counts only before the first CR LF CR LF, and neither past
    # MAX_HEAD_SIZE (the caller refuses a head that long).
    crlf = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_SIZE + 5)
    lf = buffer.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else MAX_HEAD_SIZE + 3)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 4
    return -1, -1


#: The transports that L{writeNow} may write to directly: plain TCP
#: connections, whose C{socket} is the connection's own.
_TCP_TRANSPORTS = (_TCPClient, _TCPServer, DirectTransport)


def writeNow(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, straight to the socket when the transport
    is a plain TCP connection (no TLS) with nothing buffered.

    C{transport.write} only buffers, registers the socket for writing, and
    sends on the reactor's next turn, which then unregisters it: two
    C{epoll_ctl} calls and a turn of the loop for every request head and
    every response.  A request head or a small response almost always fits
    in the socket's send buffer, so it is sent at once; whatever does not
    fit (or any error) goes through C{transport.write} as usual, in order,
    and with its flow control (a registered producer is paused when the
    transport's buffer fills).

    While a pull (non-streaming) producer is registered, everything goes
    through C{transport.write}: the transport asks that producer for more
    only once its buffer has drained.

    A socket shut down for writing (after C{loseWriteConnection}) refuses
    the C{send} with C{EPIPE}; C{transport.write} then drops the data, as
    it drops anything written after the write side is closed.
    """
    if (
        type(transport) in _TCP_TRANSPORTS
        and transport.connected
        and not transport.disconnecting
        and not transport.TLS
        and nothingBuffered(transport)
        # A pull producer (static.File's) is asked for more only when the
        # transport's own buffer drains: its writes must go through it.
        and (transport.producer is None or transport.streamingProducer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


_IDLE, _HEAD, _BODY, _DONE, _TUNNEL = range(5)


def _whyLost(reason: Optional[Failure]) -> str:
    """
    Why a TLS connection was lost before its handshake was done, in words:
    the certificate's verification error, or OpenSSL's.
    """
    if reason is None:
        return "TLS handshake failed: the connection was lost"
    from service_identity import VerificationError

    error = reason.value
    if isinstance(error, VerificationError):
        return "TLS handshake failed: the certificate is not valid for the name: " + "; ".join(
            str(e) for e in error.errors
        )
    return f"TLS handshake failed: {reason.getErrorMessage()}"


class TLSHandshakeFailed(Exception):
    """
    A TLS connection to a backend was lost before its handshake was done:
    a certificate that did not verify, or a handshake the backend refused.
    The message says why.
    """


@implementer(IHandshakeListener)
class UpstreamConnection(Protocol):
    """
    A persistent connection to a backend, carrying one exchange at a time.

    @ivar lost: whether the connection is lost.
    @ivar reusable: whether it may carry another request.
    @ivar exchanges: how many requests it has carried.
    @ivar readDeadline: the L{lbproxy._timer.Deadline} of C{read_timeout}
        (see L{armReadTimeout}), or L{None}.
    """

    transport: Any
    lost = False
    exchanges = 0
    _handshakeWaiter: Optional[Deferred[UpstreamConnection]] = None
    _handshakeDone = False
    _lostReason: Optional[Failure] = None
    readDeadline: Optional[Deadline] = None
    _readTimeout = 0.0

    def __init__(
        self,
        onIdle: Optional[Callable[[UpstreamConnection], None]] = None,
        onLost: Optional[Callable[[UpstreamConnection], None]] = None,
    ) -> None:
        self._onIdle = onIdle
        self._onLost = onLost
        self._handler: Optional[ResponseHandler] = None
        self._phase = _IDLE
        self._headPart = b""
        self._method = b""
        #: The chunked body's decoder, or L{None}.
        self._chunks: Optional[ChunkedDecoder] = None
        #: The bytes of a Content-Length body still to come, or L{None}
        #: for a body delimited by the connection's end.
        self._bodyLeft: Optional[int] = None
        self._persistent = True
        self._received = False
        self._sending: Optional[Any] = None
        self._readingPaused = False
        self._lostWaiters: list[Deferred[None]] = []
        #: Whether the exchange asked to upgrade the connection.
        self._upgradeAsked = False
        #: What gets the bytes once the connection is a tunnel.
        self._tunnelHandler: Optional[TunnelHandler] = None

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    @property
    def reusable(self) -> bool:
        return not self.lost and self._phase == _IDLE

    def whenHandshakeDone(self) -> Deferred[UpstreamConnection]:
        """
        For a connection over TLS: a L{Deferred} that fires with this
        connection once the TLS handshake is done (the server's
        certificate verified), or fails with L{TLSHandshakeFailed} when
        the connection is lost before.
        """
        if self._handshakeDone:
            return succeed(self)
        if self.lost:
            return fail(TLSHandshakeFailed(_whyLost(self._lostReason)))
        waiter = self._handshakeWaiter = Deferred(self._cancelHandshake)
        return waiter

    def _cancelHandshake(self, waiter: Deferred[UpstreamConnection]) -> None:
        # Nobody wants the connection any more (the client left while it
        # was being opened): close it rather than leave it open, with no
        # owner, until the backend closes it.
        self._handshakeWaiter = None
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done (L{IHandshakeListener}).  Twisted also
        says so when the certificate failed its verification, and the
        connection is being aborted: that one waits for C{connectionLost}
        and its reason.
        """
        if getattr(self.transport, "disconnecting", False):
            return
        self._handshakeDone = True
        waiter, self._handshakeWaiter = self._handshakeWaiter, None
        if waiter is not None:
            waiter.callback(self)

    def send(
        self,
        handler: ResponseHandler,
        method: bytes,
        head: bytes,
        body: Optional[Any] = None,
        upgrade: bool = False,
    ) -> None:
        """
        Send a request and tell C{handler} about its response.

        @param head: the request head, with its final empty line (and the
            body too, when it is small).
        @param body: a file to stream as the body after C{head}, or
            L{None}.
        @param upgrade: whether the request asks to upgrade the connection
            (C{Connection: upgrade}): a 101 answer then makes it a tunnel
            (L{ResponseHandler.upgraded}), and any other answer closes it
            once complete.
        """
        if self.lost:
            handler.failed(False, False, "connection lost before the request was sent")
            return
        if self._phase != _IDLE:
            raise RuntimeError("the connection is busy")
        self.exchanges += 1
        self._handler = handler
        self._method = method
        self._phase = _HEAD
        self._persistent = not upgrade
        self._upgradeAsked = upgrade
        self._received = False
        writeNow(self.transport, head)
        if body is not None:
            from twisted.web.client import FileBodyProducer

            producer = FileBodyProducer(body)
            self._sending = producer
            self.transport.registerProducer(producer, True)
            producer.startProducing(self.transport).addBoth(self._bodySent)

    def streamBody(self, producer: Any) -> None:
        """
        The request's body follows its head through L{writeBody} and
        L{endBody}, with C{producer} (an L{IPushProducer}, the body's
        source) paused while the backend does not keep up.
        """
        self._sending = producer
        self.transport.registerProducer(producer, True)

    def writeBody(self, data: bytes) -> None:
        """
        Send a piece of a body started with L{streamBody}, as it is (the
        exchange frames it).
        """
        if not self.lost:
            writeNow(self.transport, data)

    def endBody(self) -> None:
        """
        The body started with L{streamBody} is all sent.
        """
        self._bodySent(None)

    def _bodySent(self, result: Any) -> None:
        if self._sending is None:
            return
        self._sending = None
        if not self.lost:
            self.transport.unregisterProducer()
        if isinstance(result, Failure):
            self._persistent = False
            if not self.lost:
                self.transport.abortConnection()
            return
        if self._phase == _IDLE and not self.lost:
            # The response ended before the body was sent.
            self._persistent = False

    def detach(self) -> None:
        """
        The handler gives up on the exchange: tell it nothing more, and
        close the connection at once.
        """
        self._handler = None
        self._tunnelHandler = None
        self._persistent = False
        if not self.lost:
            self.transport.abortConnection()

    def abort(self) -> Deferred[None]:
        """
        Close the connection at once.

        @return: a L{Deferred} that fires once it is closed.
        """
        waiter = self.whenLost()
        if not self.lost:
            self.transport.abortConnection()
        return waiter

    def whenLost(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once the connection is lost.
        """
        if self.lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lostWaiters.append(waiter)
        return waiter

    def armReadTimeout(self, reactor: Any, seconds: float) -> Deadline:
        """
        Start (or restart) the read timeout: unless the whole response head
        arrives within C{seconds}, and then each read of the body within
        C{seconds} of the one before, the handler's
        L{ResponseHandler.readTimedOut} is called.
        The handler turns it off with the returned L{Deadline}'s C{clear}
        (it is cancelled when the connection is lost).
        """
        deadline = self.readDeadline
        if deadline is None:
            deadline = self.readDeadline = Deadline(reactor, self.readTimedOut)
        self._readTimeout = seconds
        deadline.set(seconds)
        return deadline

    def readTimedOut(self) -> None:
        """
        Tell the handler that its C{readDeadline} passed.
        """
        handler = self._handler
        if handler is not None:
            handler.readTimedOut()

    def pauseProducing(self) -> None:
        """
        Stop reading the response: its reader cannot keep up.
        """
        if not self._readingPaused:
            self._readingPaused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read the response again.
        """
        if self._readingPaused:
            self._readingPaused = False
            self.transport.resumeProducing()

    # Receiving.

    def _pushBackReadDeadline(self) -> None:
        deadline = self.readDeadline
        if deadline is not None and deadline.deadline is not None:
            deadline.set(self._readTimeout)

    def dataReceived(self, data: bytes) -> None:
        state = self._phase
        if state == _BODY:
            self._pushBackReadDeadline()
            handler = self._handler
            self._bodyData(data)
            if handler is not None and self._handler is handler:
                handler.bodyReadDone()
            return
        if state != _HEAD:
            if state == _TUNNEL:
                tunnel = self._tunnelHandler
                if tunnel is not None:
                    tunnel.tunnelReceived(data)
                return
            # Nothing is expected: an idle connection that talks is broken.
            self._persistent = False
            self.transport.loseConnection()
            return
        self._received = True
        buffer = self._headPart + data if self._headPart else data
        while True:
            end, start = _headEnd(buffer)
            if end < 0 or end > MAX_HEAD_SIZE:
                if end > MAX_HEAD_SIZE or len(buffer) > MAX_HEAD_SIZE:
                    self._fail(True, True, "response head too large")
                else:
                    self._headPart = buffer
                return
            try:
                head, length, chunked, _ = parseHead(buffer[:end], self._method)
            except InvalidResponse as e:
                self._fail(True, True, str(e))
                return
            rest = buffer[start:]
            if 100 <= head.code < 200:
                if head.code == 101 and self._upgradeAsked:
                    self._switch(head, rest)
                    return
                buffer = rest
                if not buffer:
                    self._headPart = b""
                    return
                continue
            break
        self._headPart = b""
        # The whole head came within read_timeout (its bytes one by one do
        # not each buy more time); from here on, the timeout runs between
        # two reads of the body.
        self._pushBackReadDeadline()
        if head.version != (1, 1) or b"close" in head.connection:
            self._persistent = False
        handler = self._handler
        self._chunks = None
        self._bodyLeft = length
        if length is not None and len(rest) >= length:
            # The whole body came with the head (a small response, or none
            # at all: a bodyless response has length 0).
            self._phase = _BODY
            if handler is not None:
                handler.headReceived(head)
            if self._phase == _BODY:
                self._bodyReceived(rest if len(rest) == length else rest[:length])
                self._bodyDone(rest[length:])
            if handler is not None:
                handler.headReadDone()
            return
        if chunked:
            self._chunks = ChunkedDecoder(self._bodyReceived, self._bodyDone)
        elif length is None:
            self._persistent = False
        self._phase = _BODY
        if handler is not None:
            handler.headReceived(head)
        if rest and self._phase == _BODY:
            self._bodyData(rest)
        if handler is not None and self._handler is handler:
            handler.headReadDone()

    def _switch(self, head: ResponseHead, rest: bytes) -> None:
        """
        The backend switched protocols: from now on its bytes go to the
        handler's tunnel, with no read timeout.
        """
        self._headPart = b""
        self._phase = _TUNNEL
        self._persistent = False
        if self.readDeadline is not None:
            self.readDeadline.clear()
        handler, self._handler = self._handler, None
        tunnel = handler.upgraded(head) if handler is not None else None
        if tunnel is None:
            self._phase = _DONE
            if not self.lost:
                self.transport.abortConnection()
            return
        self._tunnelHandler = tunnel
        if rest and not self.lost:
            tunnel.tunnelReceived(rest)

    def _bodyData(self, data: bytes) -> None:
        try:
            chunks = self._chunks
            if chunks is not None:
                chunks.dataReceived(data)
                return
            left = self._bodyLeft
            if left is None or len(data) < left:
                if left is not None:
                    self._bodyLeft = left - len(data)
                self._bodyReceived(data)
                return
            self._bodyLeft = 0
            self._bodyReceived(data if len(data) == left else data[:left])
            self._bodyDone(data[left:])
        except Exception as e:
            self._bodyBroken(f"invalid body: {e}")

    def _bodyReceived(self, data: bytes) -> None:
        handler = self._handler
        if handler is not None and data:
            handler.bodyReceived(data)

    def _bodyDone(self, rest: bytes) -> None:
        if self._phase != _BODY:
            return
        self._chunks = None
        self._phase = _IDLE
        handler, self._handler = self._handler, None
        if rest:
            self._persistent = False
        if self.lost:
            self._persistent = False
        if not self._persistent or self._sending is not None:
            self._phase = _DONE
            if not self.lost:
                self.transport.loseConnection()
        if handler is not None:
            handler.bodyFinished(True, "")
        if self._phase == _IDLE:
            # The reader may have paused us on the last bytes of the body:
            # an idle connection must read, or it would miss its next
            # response (and the backend closing it).
            self.resumeProducing()
            if self._onIdle is not None:
                self._onIdle(self)

    def _bodyBroken(self, why: str) -> None:
        self._phase = _DONE
        self._chunks = None
        handler, self._handler = self._handler, None
        if not self.lost:
            self.transport.abortConnection()
        if handler is not None:
            handler.bodyFinished(False, why)

    def _fail(self, received: bool, invalid: bool, why: str) -> None:
        self._phase = _DONE
        self._headPart = b""
        handler, self._handler = self._handler, None
        if not self.lost:
            self.transport.abortConnection()
        if handler is not None:
            handler.failed(received, invalid, why)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        self._lostReason = reason
        handshake, self._handshakeWaiter = self._handshakeWaiter, None
        if handshake is not None:
            handshake.errback(TLSHandshakeFailed(_whyLost(reason)))
        # Let go of the deadline too: it calls back into this connection,
        # which would otherwise stay in a cycle with it, for the collector.
        deadline, self.readDeadline = self.readDeadline, None
        if deadline is not None:
            deadline.cancel()
        state = self._phase
        if state == _HEAD:
            self._fail(
                self._received,
                False,
                "connection closed before the response head"
                if not self._received
                else "connection closed in the middle of the response head",
            )
        elif state == _BODY:
            if self._chunks is not None or self._bodyLeft is not None:
                # A chunked or Content-Length body was cut short (had it
                # ended, so would the _BODY phase).
                self._bodyBroken("connection closed before the end of the body")
            else:
                # A body delimited by the connection's end is complete.
                self._bodyDone(b"")
        elif state == _TUNNEL:
            tunnel, self._tunnelHandler = self._tunnelHandler, None
            if tunnel is not None:
                tunnel.tunnelClosed()
        self._phase = _DONE
        if self._onLost is not None:
            self._onLost(self)
        waiters, self._lostWaiters = self._lostWaiters, []
        for waiter in waiters:
            waiter.callback(None)
