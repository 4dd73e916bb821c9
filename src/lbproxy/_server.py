# -*- test-case-name: tests.test_site -*-
"""
lbproxy's HTTP/1.1 server protocol: it reads requests from a client
connection and hands each to the site's resources as a
L{twisted.web.server.Request}.

Twisted's L{twisted.web.http.HTTPChannel} does this too, but a proxy needs
more of it than its public interface offers: refusals that it does not make
(a chunk size of 20 digits, a folded header, a second C{Host}), limits it
does not have (a timeout for the head and for gaps in the body, 413 as the
body grows), a request head read in one pass rather than line by line, and
a response head held back to go out with the first bytes of the body.
Built on C{HTTPChannel}, each of those meant reading or writing its private
state, which changes between releases.  Here the connection is a plain
L{Protocol} and the request's C{channel} is a L{RequestChannel}, the role
Twisted's own C{H2Stream} plays for an HTTP/2 stream; the contract between
them is the public one L{twisted.web.http.Request} already relies on.

What is refused, with a short page, before anything reaches a resource:

  - 400 for an ambiguous or malformed request: C{Content-Length} with
    C{Transfer-Encoding}; more than one C{Content-Length} or
    C{Transfer-Encoding}; a C{Transfer-Encoding} other than exactly
    C{chunked}, or in HTTP/1.0; a bad chunk size, extension or chunk
    ending; a control character (NUL, CR, LF, ...) in a header; a header
    name that is not a token (whitespace before the colon among others); a
    folded header (obs-fold); a line ending in a bare LF; several C{Host}
    headers, an invalid one, or none in HTTP/1.1; a request target that is
    neither origin-form (C{/...}), absolute-form over http(s) nor C{*};
    more than L{ProxyChannel.maxHeaders} header lines;
  - 405 for C{CONNECT}: lbproxy is not a forward proxy;
  - 408 when the head takes longer than C{clientHeaderTimeout} or the body
    pauses longer than C{clientBodyTimeout};
  - 413 for a body larger than C{maxBodySize}, announced or reached;
  - 431 for a head larger than C{maxHeaderSize}.

A client that accepts none of a response for C{sendTimeout} seconds (the
client's transport paused, while the response is relayed or while the
transport still holds its end) is cut off: nginx's C{send_timeout}.

Requests on a connection are read one at a time: while one is handled,
what follows it is buffered (and the socket paused past
L{_READ_AHEAD} bytes), so pipelined requests are answered in order.
"""

from __future__ import annotations

import re
from io import BytesIO
from typing import Any, Callable, Optional

from twisted.internet.interfaces import (
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers
from zope.interface import implementer

from lbproxy._chunked import ChunkedDecoder, MalformedChunks
from lbproxy._client import writeNow
from lbproxy._http import ABSOLUTE, FIELDS, HOST, TARGET, TOKEN
from lbproxy._interfaces import ITunnelChannel
from lbproxy._pages import errorBody, phrase
from lbproxy._streaming import StreamingBody
from lbproxy._timer import Deadline

#: The head of lbproxy's own refusals; the connection closes after them.
_REFUSAL = (
    b"HTTP/1.1 %d %s\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n"
)

#: A request line: a token method, a target of printable ASCII, and
#: HTTP/1.0 or 1.1, separated by single spaces.
_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") (" + TARGET + rb") (HTTP/1\.[01])\Z")

#: A C{Content-Length} value (after optional whitespace is stripped): 18
#: digits are far beyond any C{max_body_size} and bound what is parsed.
_LENGTH = re.compile(rb"[0-9]{1,18}\Z")

#: How many bytes after a request still being handled are read before the
#: socket is paused (as Twisted's C{HTTPChannel} does).
_READ_AHEAD = 64 * 1024

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: What L{ProxyChannel} is doing: waiting for or reading a request head,
#: reading a body, waiting for a request's response, closing, relaying
#: a tunnel (after a 101), or passing the connection on to the protocol
#: ALPN chose (see L{ProxyChannel.handshakeCompleted}).
_HEAD, _BODY, _HANDLING, _CLOSING, _TUNNEL, _HANDED_OFF = range(6)

#: What the connection's one L{Deadline} is timing.
_KEEPALIVE, _HEADER, _BODY_GAP, _ABORT, _SEND = range(5)
_TIMEOUT_NAMES = {
    _HEADER: "client_header_timeout",
    _BODY_GAP: "client_body_timeout",
    _SEND: "send_timeout",
}


def headerLines(headers: Any, skip: frozenset[bytes] = frozenset()) -> list[bytes]:
    """
    The C{Name: value\\r\\n} lines of C{headers} (a L{Headers}, which
    is what every supported Twisted passes to C{writeHeaders}), less the
    names in C{skip} (spelled as L{Headers} spells them).
    """
    return [
        b"%s: %s\r\n" % (name, value)
        for name, values in headers.getAllRawHeaders()
        if name not in skip
        for value in values
    ]


def asHeaders(headers: Any) -> Headers:
    """
    C{headers} as given to C{writeHeaders}: a L{Headers} as it is, or
    the C{(name, value)} pairs that C{HTTPChannel.writeHeaders} still takes
    (Twisted itself no longer passes them) made into one, as that method
    does, through L{Headers}, which turns CR and LF in a value into spaces:
    no split header.
    """
    if isinstance(headers, Headers):
        return headers
    made = Headers()
    for name, value in headers:
        made.addRawHeader(name, value)
    return made


_dateCache: list[Any] = [None, b""]


def httpDate(reactor: Any) -> bytes:
    """
    The current time as an HTTP date, formatted at most once a second.
    """
    now = int(reactor.seconds())
    if _dateCache[0] != now:
        _dateCache[0] = now
        _dateCache[1] = datetimeToString(now)
    date: bytes = _dateCache[1]
    return date


@implementer(ITunnelChannel)
class RequestChannel:
    """
    What a request's C{channel} is: its connection as that one request
    sees it, the role Twisted's C{H2Stream} plays for an HTTP/2 stream.

    The contract, which L{twisted.web.http.Request} relies on: the
    attributes C{site}, C{factory} and C{transport}, and C{getPeer},
    C{getHost}, C{isSecure}, C{write}, C{writeSequence}, C{writeHeaders},
    C{registerProducer}, C{unregisterProducer}, C{loseConnection} and
    C{requestDone}.  lbproxy's requests add C{holdHead}, C{flushHead} and
    C{abortConnection}, and its exchanges L{startTunnel}
    (L{ITunnelChannel}).

    Once its request is done, or the connection lost, the channel is
    detached: every call does nothing (but C{registerProducer}, which
    tells the producer to stop, as a disconnected transport does), so a
    late write of a finished request can never reach the response of the
    next one.
    """

    __slots__ = ("_connection", "site", "factory", "transport")

    def __init__(self, connection: ProxyChannel) -> None:
        self._connection: Optional[ProxyChannel] = connection
        self.site = connection.site
        self.factory = connection.site
        self.transport = connection.transport

    @property
    def attached(self) -> bool:
        """
        Whether the request is still the connection's current one.
        """
        return self._connection is not None

    def detach(self) -> None:
        self._connection = None

    def getPeer(self) -> Any:
        return self.transport.getPeer() if self._connection is None else (
            self._connection.getPeer()
        )

    def getHost(self) -> Any:
        return self.transport.getHost() if self._connection is None else (
            self._connection.getHost()
        )

    def isSecure(self) -> bool:
        connection = self._connection
        if connection is None:
            return ISSLTransport(self.transport, None) is not None
        return connection.isSecure()

    def write(self, data: bytes) -> None:
        connection = self._connection
        if connection is not None:
            connection.write(data)

    def writeSequence(self, iovec: Any) -> None:
        connection = self._connection
        if connection is not None:
            connection.write(b"".join(iovec))

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        connection = self._connection
        if connection is not None:
            connection.writeHeaders(version, code, reason, headers)

    def holdHead(self, head: bytes) -> None:
        """
        Hold C{head} (a whole response head, as bytes) to be sent with the
        first write of the body, or by L{flushHead}.
        """
        connection = self._connection
        if connection is not None:
            connection.holdHead(head)

    def flushHead(self) -> None:
        """
        Send the held response head, if any, now.
        """
        connection = self._connection
        if connection is not None:
            connection.flushHead()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        connection = self._connection
        if connection is not None:
            connection.registerProducer(producer, streaming)
        else:
            # As a disconnected transport does: the producer is told.
            producer.stopProducing()

    def unregisterProducer(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.unregisterProducer()

    def loseConnection(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.loseConnection()

    def abortConnection(self) -> None:
        """
        Close the connection at once, discarding what is not sent yet: a
        response that cannot be completed must not look complete.
        """
        connection = self._connection
        if connection is not None:
            connection.transport.abortConnection()

    def startTunnel(self, received: Callable[[bytes], None]) -> Any:
        connection = self._connection
        if connection is None:
            return None
        return connection.startTunnel(received)

    def requestDone(self, request: Any) -> None:
        connection = self._connection
        if connection is not None:
            self._connection = None
            connection.requestDone(self)


@implementer(IPushProducer, IHandshakeListener)
class ProxyChannel(Protocol):
    """
    One client connection: reads its requests (see the module docstring for
    what is refused), hands each to the site's C{requestFactory} and sends
    the responses back in order.

    On a TLS connection whose ALPN chose another protocol than HTTP/1.1
    (C{h2}), the site builds the protocol that speaks it once the
    handshake is done, and the channel passes the connection on to it
    (see L{handshakeCompleted}).

    @ivar site: the L{lbproxy.ProxySite}.
    @ivar maxBodySize: the largest request body accepted, in bytes.
    @ivar totalHeadersSize: the largest request head accepted, in bytes.
    @ivar maxHeaders: the most header lines a head may have.
    @ivar clientHeaderTimeout: seconds the whole request head may take, or
        L{None} for no limit.
    @ivar clientBodyTimeout: seconds between two reads of the body, or
        L{None} for no limit.
    @ivar timeOut: seconds an idle connection is kept between requests, or
        L{None}.
    @ivar sendTimeout: seconds a response being relayed may wait for the
        client to accept more of it (nginx's C{send_timeout}), or L{None}
        for no limit.
    @ivar abortTimeout: seconds a connection being closed (a refused
        client reading its answer, a TLS client that does not answer
        C{close_notify}) may stay open before it is aborted.
    @ivar persistent: whether the connection stays open after the current
        response.
    @ivar refused: whether the connection was refused and is closing.
    """

    _log = Logger()
    factory: Any
    transport: Any
    maxHeaders = 500
    abortTimeout: Optional[float] = 15.0

    # Slots, not a dict per connection: thousands of idle keep-alive
    # connections each hold one.  (Protocol's own transport, connected and
    # factory stay in the instance's small __dict__.)
    __slots__ = (
        "site",
        "requestFactory",
        "maxBodySize",
        "totalHeadersSize",
        "clientHeaderTimeout",
        "clientBodyTimeout",
        "timeOut",
        "sendTimeout",
        "persistent",
        "refused",
        "_phase",
        "_unread",
        "_scanned",
        "_activeRequest",
        "_activeChannel",
        "_requestLine",
        "_parsing",
        "_readPaused",
        "_remaining",
        "_received",
        "_chunks",
        "_pendingHead",
        "_timer",
        "_timing",
        "_peer",
        "_localAddress",
        "_secure",
        "_responseProducer",
        "_sendDrain",
        "_tunnelReceiver",
        "streamBodyFor",
        "_bodyStream",
        "_bodyPaused",
        "_successor",
    )

    def __init__(self) -> None:
        self.site: Any = None
        self.requestFactory: Callable[..., Any] = _noRequests
        self.maxBodySize = 100 * 1024 * 1024
        self.totalHeadersSize = 16 * 1024
        self.clientHeaderTimeout: Optional[float] = None
        self.clientBodyTimeout: Optional[float] = None
        self.timeOut: Optional[float] = None
        self.sendTimeout: Optional[float] = 60.0
        self.persistent = True
        self.refused = False
        self._phase = _HEAD
        self._unread = b""
        #: How far L{_unread} is known to hold no end of head.
        self._scanned = 0
        self._activeRequest: Any = None
        self._activeChannel: Optional[RequestChannel] = None
        #: The method, target and version of the request whose body is
        #: being read.
        self._requestLine: Optional[tuple[bytes, bytes, bytes]] = None
        self._parsing = False
        self._readPaused = False
        self._remaining = 0
        self._received = 0
        self._chunks: Optional[ChunkedDecoder] = None
        self._pendingHead: Optional[bytes] = None
        self._timer: Optional[Deadline] = None
        self._timing = _KEEPALIVE
        self._peer: Any = None
        self._localAddress: Any = None
        self._secure: Optional[bool] = None
        #: The response's streaming producer, which the transport pauses
        #: through this channel (see L{registerProducer}).
        self._responseProducer: Any = None
        #: Whether the response's producer is gone but the transport still
        #: holds what the client has not taken, timed by L{sendTimeout}
        #: (see L{unregisterProducer}).
        self._sendDrain = False
        #: Where the client's bytes go once the connection is a tunnel.
        self._tunnelReceiver: Optional[Callable[[bytes], None]] = None
        #: Whether the body of a request for C{(host, target)} streams to
        #: its backend (C{request_buffering = no}), or L{None}: never.
        self.streamBodyFor: Optional[Callable[[Optional[bytes], bytes], bool]] = None
        #: The L{StreamingBody} being read, once its request is handed on.
        self._bodyStream: Optional[StreamingBody] = None
        self._bodyPaused = False
        self._successor: Any = None

    # The connection

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done (L{IHandshakeListener}), before any
        request has been read: when the site has another protocol for what
        ALPN chose (L{lbproxy.ProxySite.protocolAfterHandshake}), the
        connection is that protocol's from now on, and this channel only
        passes the bytes and the end of the connection on to it.

        Twisted's own C{_GenericHTTPChannelProtocol} makes the same choice
        as a wrapper around every connection; this way a plain HTTP/1.1
        connection carries no extra layer.
        """
        successor = self.site.protocolAfterHandshake(self)
        if successor is None or self._phase != _HEAD or self._unread:
            return
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._phase = _HANDED_OFF
        self._successor = successor
        # The successor counts as the site's connection before this channel
        # stops counting: the site is never seen without it.
        successor.makeConnection(self.transport)
        self.site.channels.discard(self)

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self.site.channels.add(self)
        self._timer = Deadline(self.site.reactor, self._timedOut)
        if self.clientHeaderTimeout is not None:
            self._arm(_HEADER, self.clientHeaderTimeout)
        else:
            self._arm(_KEEPALIVE, self.timeOut)

    def connectionLost(self, reason: Any = None) -> None:
        if self._phase == _HANDED_OFF:
            self._successor.connectionLost(reason)
            return
        self._phase = _CLOSING
        # Let go of the timer too: it calls back into this channel, which
        # would otherwise stay in a cycle with it, for the collector.
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._unread = b""
        site = self.site
        site.channels.discard(self)
        request, stream = self._activeRequest, self._activeChannel
        self._activeRequest = self._activeChannel = None
        if stream is not None:
            stream.detach()
        try:
            if request is not None:
                request.connectionLost(reason if reason is not None else Failure(
                    ConnectionError("connection lost")))
        finally:
            site.channelClosed()

    def getPeer(self) -> Any:
        # A connection's addresses do not change, but asking the transport
        # makes a system call and a new address object each time.
        peer = self._peer
        if peer is None:
            peer = self._peer = self.transport.getPeer()
        return peer

    def getHost(self) -> Any:
        host = self._localAddress
        if host is None:
            # Most connections share their local address: keep one object
            # for each (the site's), not one per connection.
            host = self._localAddress = self.site.sharedAddress(self.transport.getHost())
        return host

    def isSecure(self) -> bool:
        secure = self._secure
        if secure is None:
            secure = self._secure = ISSLTransport(self.transport, None) is not None
        return secure

    @property
    def busy(self) -> bool:
        """
        Whether a request is being read or answered on this connection.
        """
        return self._activeRequest is not None

    @property
    def requests(self) -> list[Any]:
        """
        The request being read or answered, in a list (empty when there is
        none), as L{twisted.web.http.HTTPChannel.requests}.
        """
        current = self._activeRequest
        return [] if current is None else [current]

    def loseConnection(self) -> None:
        """
        Close the connection once what is written is sent, and abort it if
        it has not closed L{abortTimeout} seconds after (once the client
        has taken the response).

        Over TLS, Twisted closes the TCP connection only once the client
        has answered lbproxy's C{close_notify} with its own: a client that
        never does (many do not, having read a C{Connection: close}
        response) would hold the connection for as long as it stays
        connected.  nginx closes it after sending its own.
        """
        self.flushHead()
        self._phase = _CLOSING
        self._arm(_ABORT, self.abortTimeout)
        self.transport.loseConnection()

    # Timers

    def _arm(self, timing: int, seconds: Optional[float]) -> None:
        timer = self._timer
        if timer is None:
            return
        if self._sendDrain and timing != _SEND:
            # The client has yet to take the end of a response: only
            # sendTimeout runs until it has (see unregisterProducer).
            return
        self._timing = timing
        if seconds is None:
            timer.clear()
        else:
            timer.set(seconds)

    def _timedOut(self) -> None:
        timing = self._timing
        if timing == _ABORT:
            self.transport.abortConnection()
        elif timing == _KEEPALIVE:
            self.loseConnection()
        elif timing == _SEND:
            self._log.info(
                "client {client} exceeded send_timeout: closing it",
                client=getattr(self.getPeer(), "host", "?"),
            )
            # Its request learns of it through connectionLost, and cuts
            # its backend connection, whose state is unknown.
            self.transport.abortConnection()
        else:
            self._log.info(
                "client {client} exceeded {which}",
                client=getattr(self.getPeer(), "host", "?"),
                which=_TIMEOUT_NAMES[timing],
            )
            self.refuse(408)

    # Reading

    def dataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase >= _CLOSING:
            if phase == _TUNNEL:
                self._tunnelReceiver(data)  # type: ignore[misc]
            elif phase == _HANDED_OFF:
                self._successor.dataReceived(data)
            return
        pending = self._unread
        if phase == _HANDLING:
            self._unread = pending + data
            if len(self._unread) > _READ_AHEAD and not self._readPaused:
                self._readPaused = True
                self.transport.pauseProducing()
            return
        self._unread = pending + data if pending else data
        self._parse()
        if self._phase == _HEAD and self._unread and self._timing != _HEADER:
            # A head has begun and is not all here: its own time limit
            # begins.  (One that came whole never needed it.)
            self._arm(_HEADER, self.clientHeaderTimeout)

    def _parse(self) -> None:
        """
        Read what L{_unread} holds, as far as it goes: heads, bodies, and
        the requests after them as long as each is answered at once.
        """
        if self._parsing:
            return
        self._parsing = True
        try:
            while self._unread:
                phase = self._phase
                if phase == _HEAD:
                    if not self._readHead():
                        break
                elif phase == _BODY:
                    data, self._unread = self._unread, b""
                    self._readBody(data)
                else:
                    break
        finally:
            self._parsing = False

    def _readHead(self) -> bool:
        """
        Read one request head from L{_unread}, if it is all there.

        @return: whether a head was read (or refused): L{False} when more
            bytes are needed.
        """
        buf = self._unread
        skip = 2 if buf[:2] == b"\r\n" else 0
        # One empty line before a request line is forgiven (RFC 9112 2.2).
        limit = self.totalHeadersSize
        end = buf.find(b"\r\n\r\n", max(skip, self._scanned - 3), skip + limit + 4)
        if end < 0:
            if len(buf) < skip + 2:
                return False
            bounded = buf[: skip + limit + 4]
            if bounded.count(b"\n") != bounded.count(b"\r\n"):
                # A line ending in a bare LF: refused as soon as it is seen.
                self.refuse(400)
            elif len(buf) >= skip + limit + 4:
                self.refuse(431)
            else:
                self._scanned = len(buf)
            return self.refused
        self._scanned = 0
        self._unread = buf[end + 4 :]
        first = buf.find(b"\r\n", skip, end + 2)
        requestLine = _REQUEST_LINE.match(buf, skip, first)
        if requestLine is None:
            self.refuse(400)
            return True
        method, target, version = requestLine.groups()
        if method.upper() == b"CONNECT":
            self.refuse(405)
            return True
        if first == end:
            lines: list[bytes] = []
        else:
            if FIELDS.fullmatch(buf, first + 2, end) is None:
                self.refuse(400)
                return True
            lines = buf[first + 2 : end].split(b"\r\n")
            if len(lines) > self.maxHeaders:
                self.refuse(400)
                return True
        self._acceptHead(method, target, version, lines)
        return True

    def _acceptHead(
        self, method: bytes, target: bytes, version: bytes, lines: list[bytes]
    ) -> None:
        """
        Check a head whose lines are well-formed, and start its request.
        """
        if not (target[:1] == b"/" or target == b"*" or ABSOLUTE.match(target)):
            self.refuse(400)
            return
        stream = RequestChannel(self)
        request = self.requestFactory(stream)
        addRawHeader = request.requestHeaders.addRawHeader
        host = length = transferEncoding = connection = expect = None
        for line in lines:
            name, _, value = line.partition(b":")
            value = value.strip(b" \t")
            lowered = name.lower()
            if lowered in _SPECIAL:
                if lowered == b"host":
                    if host is not None:
                        return self.refuse(400)
                    host = value
                elif lowered == b"content-length":
                    if length is not None:
                        return self.refuse(400)
                    length = value
                elif lowered == b"transfer-encoding":
                    if transferEncoding is not None:
                        return self.refuse(400)
                    transferEncoding = value
                elif lowered == b"connection":
                    connection = value if connection is None else connection + b"," + value
                else:
                    expect = value
            addRawHeader(name, value)

        if host is None:
            if version == b"HTTP/1.1":
                return self.refuse(400)
        elif host and HOST.match(host) is None:
            return self.refuse(400)
        request.hostHeader = host

        chunked = False
        size = 0
        if transferEncoding is not None:
            if (
                length is not None
                or version != b"HTTP/1.1"
                or transferEncoding.lower() != b"chunked"
            ):
                return self.refuse(400)
            chunked = True
        elif length is not None:
            if _LENGTH.match(length) is None:
                return self.refuse(400)
            size = int(length)
            if size > self.maxBodySize:
                return self.refuse(413)

        if version == b"HTTP/1.1":
            if connection is not None and b"close" in _tokens(connection):
                self.persistent = False
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        else:
            self.persistent = False

        self._activeRequest = request
        self._activeChannel = stream
        self._requestLine = (method, target, version)
        if chunked or size:
            if (
                expect is not None
                and version == b"HTTP/1.1"
                and expect.lower() == b"100-continue"
            ):
                self.transport.write(_CONTINUE)
            bodyLength = None if chunked else size
            streamFor = self.streamBodyFor
            streaming = streamFor is not None and streamFor(host, target)
            if streaming:
                body = self._bodyStream = StreamingBody(
                    bodyLength, self._pauseBody, self._resumeBody
                )
                request.content = body
            else:
                request.gotLength(bodyLength)
            self._phase = _BODY
            self._received = 0
            if chunked:
                self._chunks = ChunkedDecoder(self._chunkReceived, self._bodyDone)
            else:
                self._chunks = None
                self._remaining = size
            self._arm(_BODY_GAP, self.clientBodyTimeout)
            if streaming:
                # Handed on now: the body follows as it arrives.
                self._requestLine = None
                request.requestReceived(method, target, version)
        else:
            # What gotLength(0) gives (through Site.getContentFile), made
            # here: most requests have no body.
            request.content = BytesIO()
            self._dispatch()

    def _pauseBody(self) -> None:
        """
        Stop reading a streaming body: where it goes cannot keep up.  Its
        backend is the slow one, so client_body_timeout stops meanwhile.
        """
        if not self._bodyPaused and self._phase == _BODY:
            self._bodyPaused = True
            self._arm(_KEEPALIVE, None)
            self.transport.pauseProducing()

    def _resumeBody(self) -> None:
        if self._bodyPaused:
            self._bodyPaused = False
            if self._phase == _BODY:
                self._arm(_BODY_GAP, self.clientBodyTimeout)
            self.transport.resumeProducing()

    def _readBody(self, data: bytes) -> None:
        self._arm(_BODY_GAP, self.clientBodyTimeout)
        chunks = self._chunks
        if chunks is not None:
            try:
                chunks.dataReceived(data)
            except MalformedChunks:
                self.refuse(400)
            return
        remaining = self._remaining
        if len(data) < remaining:
            self._remaining = remaining - len(data)
            self._activeRequest.handleContentChunk(data)
            return
        self._remaining = 0
        self._activeRequest.handleContentChunk(data[:remaining])
        self._bodyDone(data[remaining:])

    def _chunkReceived(self, data: bytes) -> None:
        if self.refused:
            return
        self._received += len(data)
        if self._received > self.maxBodySize:
            self.refuse(413)
            return
        self._activeRequest.handleContentChunk(data)

    def _bodyDone(self, rest: bytes) -> None:
        if self.refused:
            return
        self._chunks = None
        self._unread = rest + self._unread if self._unread else rest
        body = self._bodyStream
        if body is not None:
            # The request was handed on with its head: what follows waits
            # for its response.
            self._bodyStream = None
            self._phase = _HANDLING
            self._arm(_KEEPALIVE, None)
            if self._bodyPaused:
                self._bodyPaused = False
                self._readPaused = True
            body.finish()
            return
        self._dispatch()
        if not self._parsing:
            self._parse()

    def _dispatch(self) -> None:
        """
        The whole request is read: hand it to the resources.  What follows
        it waits in L{_unread} until it is answered.
        """
        self._phase = _HANDLING
        self._arm(_KEEPALIVE, None)
        requestLine, self._requestLine = self._requestLine, None
        assert requestLine is not None
        self._activeRequest.requestReceived(*requestLine)

    def requestDone(self, stream: RequestChannel) -> None:
        """
        The request of C{stream} (the current one) is answered: close the
        connection or go on with the next request.
        """
        self.flushHead()
        self._activeRequest = self._activeChannel = None
        if self._phase == _CLOSING:
            return
        if self._bodyStream is not None:
            # Answered before its streaming body ended: the rest of the
            # body is not read; the connection closes.
            self._bodyStream = None
            self.persistent = False
        if not self.persistent:
            self.loseConnection()
            return
        self._phase = _HEAD
        if self._unread:
            self._arm(_HEADER, self.clientHeaderTimeout)
        else:
            self._arm(_KEEPALIVE, self.timeOut)
        if self._readPaused:
            self._readPaused = False
            self.transport.resumeProducing()
        if self._unread and not self._parsing:
            self._parse()

    def startTunnel(self, received: Callable[[bytes], None]) -> Any:
        """
        Make the connection a tunnel (see L{ITunnelChannel.startTunnel}):
        send the held head, stop reading requests and timing the client,
        and hand C{received} what the client sent after the request's
        head, then everything it sends.

        @return: the transport.
        """
        self.flushHead()
        if self._sendDrain:
            self._sendDrain = False
            self.transport.unregisterProducer()
        self._phase = _TUNNEL
        self.persistent = False
        self._tunnelReceiver = received
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        if self._readPaused:
            self._readPaused = False
            self.transport.resumeProducing()
        pending, self._unread = self._unread, b""
        if pending:
            received(pending)
        return self.transport

    # Writing

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        Register the current response's producer with the transport: a
        streaming one through this channel, which times how long the
        transport keeps it paused (L{sendTimeout}).
        """
        if self._sendDrain:
            # Still registered, with the end of the last response unsent.
            if streaming:
                self._sendDrain = False
                self._responseProducer = producer
                producer.pauseProducing()
                return
            self._sendDrained()
        if not streaming or self.sendTimeout is None:
            self.transport.registerProducer(producer, streaming)
            return
        self._responseProducer = producer
        self.transport.registerProducer(self, True)

    def unregisterProducer(self) -> None:
        """
        The response's producer is done.  If the transport is still
        paused, holding part of the response the client has not taken, the
        channel stays registered with it and L{sendTimeout} keeps running
        until it resumes: nginx's C{send_timeout} too runs until the last
        byte is sent, not until the backend is done.
        """
        if self._responseProducer is not None:
            self._responseProducer = None
            if self._timing == _SEND:
                self._sendDrain = True
                return
        self.transport.unregisterProducer()

    def _sendDrained(self) -> None:
        """
        The client took what was held for it after the response's producer
        was done: leave the transport, and time what the connection does
        next as if the response had just been sent.
        """
        self._sendDrain = False
        self.transport.unregisterProducer()
        phase = self._phase
        if phase == _HEAD:
            if self._unread:
                self._arm(_HEADER, self.clientHeaderTimeout)
            else:
                self._arm(_KEEPALIVE, self.timeOut)
        elif phase == _CLOSING:
            self._arm(_ABORT, self.abortTimeout)
        else:
            self._arm(_KEEPALIVE, None)

    def pauseProducing(self) -> None:
        """
        The client cannot take more of the response now: pause its
        producer, and start L{sendTimeout}.
        """
        producer = self._responseProducer
        if producer is not None:
            self._arm(_SEND, self.sendTimeout)
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        producer = self._responseProducer
        if producer is not None:
            if self._timing == _SEND:
                self._arm(_KEEPALIVE, None)
            producer.resumeProducing()
        elif self._sendDrain:
            self._sendDrained()

    def stopProducing(self) -> None:
        producer, self._responseProducer = self._responseProducer, None
        if producer is not None:
            producer.stopProducing()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """
        Hold the response head until the first write of the body, so that a
        small response goes to the client in one send; add a C{Date} when
        the response has none.
        """
        headers = asHeaders(headers)
        lines = [b"%s %s %s\r\n" % (version, code, reason)]
        if not headers.hasHeader(b"date"):
            lines.append(b"Date: %s\r\n" % httpDate(self.site.reactor))
        lines.extend(headerLines(headers))
        lines.append(b"\r\n")
        self.holdHead(b"".join(lines))

    def holdHead(self, head: bytes) -> None:
        """
        Hold C{head} (a response head, as bytes) to be sent with the first
        write of the body, or by L{flushHead}.
        """
        self.flushHead()
        self._pendingHead = head

    def flushHead(self) -> None:
        """
        Write the held response head, if any.
        """
        head = self._pendingHead
        if head is not None:
            self._pendingHead = None
            writeNow(self.transport, head)

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

    def refuse(self, code: int) -> None:
        """
        Answer C{code} with a short page and close the connection, reading
        nothing more.
        """
        if self.refused:
            return
        self.refused = True
        self._phase = _CLOSING
        self._unread = b""
        self.flushHead()
        request, self._activeRequest = self._activeRequest, None
        stream, self._activeChannel = self._activeChannel, None
        if stream is not None:
            stream.detach()
        streaming, self._bodyStream = self._bodyStream, None
        if streaming is not None and request is not None:
            # Its request was handed on with its head: whatever forwards
            # it learns that the client is gone (and cuts its backend).
            started = request.startedWriting
            request.connectionLost(Failure(ConnectionError("request body refused")))
            if started:
                self.transport.abortConnection()
                return
            request = None
        if request is not None and request.content is not None:
            request.content.close()
        if self.transport.disconnecting:
            # Already closing after a response: nothing more may be sent,
            # and the close keeps its bound (L{loseConnection}).
            self._arm(_ABORT, self.abortTimeout)
            return
        body = errorBody(code)
        self._log.info(
            "refused a request from {client}: {code}",
            client=getattr(self.getPeer(), "host", "?"),
            code=code,
        )
        self.transport.write(_REFUSAL % (code, phrase(code), len(body)) + body)
        # A client that does not read the refusal is cut off after
        # abortTimeout, as Twisted does when a connection times out.
        self.loseConnection()


def _noRequests(channel: Any) -> Any:
    raise RuntimeError("a ProxyChannel needs its site's requestFactory")


#: The header names L{ProxyChannel._acceptHead} looks at, lower-cased.
_SPECIAL = frozenset(
    [b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"]
)


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip(b" \t").lower() for token in value.split(b",")]
