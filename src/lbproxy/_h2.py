# -*- test-case-name: tests.test_h2 -*-
"""
HTTP/2 on lbproxy's TLS listeners: a connection that ALPN settled on
C{h2} is served by an L{H2Channel}, each of its streams reaching the same
request machinery as an HTTP/1.1 request (the site's C{requestFactory},
L{lbproxy.ProxyRequest}, with a L{StreamChannel} as its C{channel}, the
role L{lbproxy._server.RequestChannel} plays for HTTP/1.1), and from there
the backends over HTTP/1.1.

The frames, HPACK and the stream states are the C{h2} package's (3.1 to
4.x), as they are for Twisted's own server.  Twisted's
C{twisted.web._http2.H2Connection} is not used, for these reasons:

  - it guards against Rapid Reset (CVE-2023-44487) only from Twisted
    26.10, and lbproxy runs on 24.7 and 25.5 too;
  - its settings are fixed (100 streams, a 64 KiB header list, no 431 for
    a header list over lbproxy's C{max_header_size}, no C{max_body_size},
    no C{client_body_timeout});
  - it takes the global reactor, where lbproxy's parts take theirs from
    the site (and the tests a L{twisted.internet.task.Clock});
  - it is a private module whose interface with the request changed
    between releases.

What an L{H2Channel} does, and refuses:

  - pseudo-headers are mapped: C{:method} and C{:path} make the request
    line, C{:authority} the C{Host} header (a C{Host} field is used when
    there is no C{:authority}); C{Cookie} fields are joined with C{"; "}
    into one (RFC 9113 8.2.3);
  - what the C{h2} package finds malformed (connection-specific fields
    such as C{Connection} or C{Transfer-Encoding}, C{TE} other than
    C{trailers}, upper-case names, missing, unknown, repeated or late
    pseudo-headers, a C{Content-Length} that the DATA frames contradict)
    ends the connection with GOAWAY C{PROTOCOL_ERROR} (RFC 9113 5.4.1
    allows a stream error to be treated so); what C{h2} 3.x lets through
    and lbproxy's HTTP/1.1 side would not (a name that is not a token, a
    control character in a value, whitespace around it) resets the stream
    with C{PROTOCOL_ERROR} (RFC 9113 8.1.1, 8.2.1); a header block that
    HPACK cannot decode ends the connection with C{COMPRESSION_ERROR}
    (RFC 9113 4.3);
  - 400 for a missing or invalid host or path, 405 for C{CONNECT}, 413 for
    a body over C{max_body_size} (announced, or reached mid-stream: the
    413 is sent and the stream reset with C{NO_ERROR}, RFC 9113 8.1), 431
    for a header list (RFC 9113's size: name, value and 32 bytes a field)
    over C{max_header_size}, 408 when the body pauses longer than
    C{client_body_timeout};
  - floods: resets (the client's C{RST_STREAM}, and the streams lbproxy
    has to reset itself) and control frames (C{SETTINGS}, C{PING},
    C{PRIORITY}, empty C{DATA}, unknown frames) each draw from a token
    bucket; an empty bucket ends the connection with GOAWAY
    C{ENHANCE_YOUR_CALM} (RFC 9113 10.5).  That is lbproxy's Rapid Reset
    guard, the same on every Twisted it runs on.  A header block of more
    than 64 frames (a CONTINUATION flood), or one larger than
    L{H2Channel.hardHeaderListLimit} once decoded, ends the connection
    with C{ENHANCE_YOUR_CALM} too.

Response bodies stream with backpressure per stream: what a stream cannot
send yet (its flow-control window, or the connection's, is closed, or the
TLS transport is full) waits in that stream's buffer, and past
L{HIGH_WATER} bytes the stream's producer (the backend connection) is
paused, until the client opens the window again.  A client's
C{RST_STREAM} loses that request's connection (C{connectionLost}), which
cancels its backend request.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Callable, Optional

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.settings import SettingCodes, Settings
from hpack.exceptions import HPACKError
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy._http import CTL, HOST, TARGET_RE, TOKEN_RE
from lbproxy._pages import errorBody
from lbproxy._server import asHeaders, httpDate
from lbproxy._streaming import StreamingBody
from lbproxy._timer import Deadline

__all__ = ["H2Channel", "StreamChannel", "TokenBucket"]

#: Bytes a stream may hold unsent before its producer is paused, and the
#: level under which a paused producer is resumed.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024

#: Response header fields that HTTP/2 forbids (RFC 9113 8.2.2): a backend's
#: HTTP/1.1 framing and connection management stay on that side.
_CONNECTION_SPECIFIC = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ]
)

#: What a request line says for an HTTP/2 request (nginx's C{$server_protocol}).
VERSION = b"HTTP/2.0"


class TokenBucket:
    """
    A token bucket: C{burst} tokens at first, C{rate} more each second of
    the clock, never more than C{burst}.
    """

    __slots__ = ("_clock", "burst", "rate", "_tokens", "_stamp")

    def __init__(self, clock: Any, burst: float, rate: float) -> None:
        self._clock = clock
        self.burst = burst
        self.rate = rate
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def take(self) -> bool:
        """
        Take one token.

        @return: L{False} when the bucket is empty (and nothing was taken).
        """
        now = self._clock.seconds()
        # A clock that steps back refills nothing, and takes nothing away.
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


def _goaway(lastStreamId: int, code: int) -> bytes:
    """
    A GOAWAY frame, for a graceful close: sent without the C{h2} state
    machine, which refuses to send anything more after its own GOAWAY,
    while the streams already begun must still be answered.
    """
    return GoAwayFrame(0, last_stream_id=lastStreamId, error_code=code).serialize()


def _isCompressionError(error: BaseException) -> bool:
    """
    Whether C{error} (from C{h2}) means that a header block could not be
    decoded (but not that it was too large: that stays a flood).
    """
    if isinstance(error, DenialOfServiceError):
        return False
    cause = error.__cause__ or error.__context__
    return isinstance(cause, (HPACKError, IndexError))


def _withErrorCode(data: bytes, code: int) -> bytes:
    """
    C{data} (what the C{h2} machine wants to send), its final GOAWAY frame
    given C{code} instead of the code C{h2} chose: C{h2} ends a connection
    whose header block cannot be decoded with C{PROTOCOL_ERROR} where RFC
    9113 4.3 names C{COMPRESSION_ERROR}.
    """
    # A GOAWAY without debug data: 9 bytes of frame header (length 8, type
    # 7, no flags, stream 0), the last stream id and the code.
    if len(data) >= 17 and data[-17:-13] == b"\x00\x00\x08\x07":
        return data[:-4] + code.to_bytes(4, "big")
    return data


@implementer(IPushProducer)
class StreamChannel:
    """
    What an HTTP/2 request's C{channel} is: its stream, as the request sees
    it, with the contract of L{lbproxy._server.RequestChannel} (the one
    L{twisted.web.http.Request} relies on, plus C{holdHead}, C{flushHead}
    and C{abortConnection}).

    It is also the request body's producer, for the L{IPushProducer} part
    of that contract: pausing it holds the stream's flow-control window
    shut.

    Once the stream is over (answered, reset, or the connection lost) it
    is detached, and every call does nothing.

    @ivar streamId: the HTTP/2 stream identifier.
    """

    transport = None

    def __init__(self, connection: H2Channel, streamId: int) -> None:
        self._connection: Optional[H2Channel] = connection
        self.streamId = streamId
        self.site = connection.site
        self.factory = connection.site
        self.request: Any = None
        #: The response head, as HTTP/2 header fields, until it is sent.
        self.head: Optional[list[tuple[bytes, bytes]]] = None
        self.headSent = False
        #: Response bytes waiting for the flow-control windows.
        self.pending = bytearray()
        #: The response is complete: END_STREAM goes after L{pending}.
        self.ending = False
        #: The client ended its side (END_STREAM received).
        self.remoteClosed = False
        self.producer: Any = None
        self.streaming = True
        self.producerPaused = False
        self.pullScheduled = False
        # The request, until it is dispatched.
        self.method = b""
        self.path = b""
        self.length: Optional[int] = None
        self.received = 0
        self.dispatched = False
        self.bodyTimer: Optional[Deadline] = None
        #: Runs while the producer is paused: C{send_timeout}.
        self.sendTimer: Optional[Deadline] = None
        #: The request's content when its body streams to the backend
        #: (C{request_buffering = no}).
        self.streamingBody: Optional[StreamingBody] = None
        #: Whether that body's backend cannot take more now: the stream's
        #: window is not opened meanwhile.
        self.bodyPaused = False
        #: Flow-controlled bytes received but not yet given back to the
        #: stream's window.
        self.unacknowledged = 0

    @property
    def attached(self) -> bool:
        """
        Whether the stream is still open on its connection.
        """
        return self._connection is not None

    def detach(self) -> None:
        self._connection = None
        for timer in (self.bodyTimer, self.sendTimer):
            if timer is not None:
                timer.cancel()
        self.bodyTimer = self.sendTimer = None

    # What the request calls.

    def getPeer(self) -> Any:
        connection = self._connection
        return None if connection is None else connection.getPeer()

    def getHost(self) -> Any:
        connection = self._connection
        return None if connection is None else connection.getHost()

    def isSecure(self) -> bool:
        connection = self._connection
        return connection is not None and connection.isSecure()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if self._connection is None:
            return
        headers = asHeaders(headers)
        fields = [(b":status", code)]
        if not headers.hasHeader(b"date"):
            fields.append((b"date", httpDate(self.site.reactor)))
        for name, values in headers.getAllRawHeaders():
            lowered = name.lower()
            if lowered not in _CONNECTION_SPECIFIC:
                fields.extend((lowered, value) for value in values)
        self.head = fields

    def holdHead(self, head: bytes) -> None:
        """
        Hold C{head} (a whole HTTP/1.1 response head, as bytes, from
        L{lbproxy.ProxyRequest.holdProxiedHead}) as this stream's response
        head, less what HTTP/2 forbids.
        """
        if self._connection is None:
            return
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)[1]
        fields = [(b":status", status)]
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(b":")
            lowered = name.lower()
            if lowered not in _CONNECTION_SPECIFIC:
                fields.append((lowered, value.strip(b" \t")))
        self.head = fields

    def flushHead(self) -> None:
        connection = self._connection
        if connection is not None and self.head is not None:
            connection.sendHead(self, False)

    def write(self, data: bytes) -> None:
        connection = self._connection
        if connection is not None:
            connection.writeStream(self, data)

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        connection = self._connection
        if connection is None:
            producer.stopProducing()
            return
        if self.producer is not None:
            raise RuntimeError(
                f"registering producer {producer!r} before the previous one "
                f"({self.producer!r}) was unregistered"
            )
        self.producer = producer
        self.streaming = streaming
        self.producerPaused = False
        if streaming:
            if len(self.pending) > HIGH_WATER:
                self.producerPaused = True
                producer.pauseProducing()
        else:
            connection.schedulePull(self)

    def unregisterProducer(self) -> None:
        self.producer = None
        self.producerPaused = False
        if self.sendTimer is not None:
            self.sendTimer.clear()

    def loseConnection(self) -> None:
        """
        End the response: what is written goes, then END_STREAM.
        """
        connection = self._connection
        if connection is not None:
            connection.endStream(self)

    def abortConnection(self) -> None:
        """
        Reset the stream (C{INTERNAL_ERROR}): a response that cannot be
        completed must not look complete.  The request loses its
        connection.
        """
        connection = self._connection
        if connection is not None:
            connection.resetStream(self, ErrorCodes.INTERNAL_ERROR, countIt=False)

    def requestDone(self, request: Any) -> None:
        connection = self._connection
        if connection is not None:
            connection.endStream(self)

    # IPushProducer, for the request body.

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.abortConnection()


class H2Channel(Protocol):
    """
    One HTTP/2 client connection: the C{h2} state machine, the streams and
    their requests, lbproxy's limits (see the module docstring).

    It is one of the site's C{channels}, as a
    L{lbproxy._server.ProxyChannel} is, with the same C{persistent},
    C{busy} and C{loseConnection}: setting C{persistent} to L{False} sends
    GOAWAY, answers the streams already begun and closes once they are.

    @ivar site: the L{lbproxy.ProxySite}.
    @ivar maxConcurrentStreams: streams a client may have open at once
        (C{SETTINGS_MAX_CONCURRENT_STREAMS}).
    @ivar hardHeaderListLimit: the largest header list decoded at all; a
        larger one ends the connection with C{ENHANCE_YOUR_CALM}.  Lists
        between C{totalHeadersSize} and this get 431.
    @ivar resetBurst: resets allowed at once before the connection is
        ended with C{ENHANCE_YOUR_CALM}, and C{resetRate} more each second.
    @ivar controlBurst: control frames (C{SETTINGS}, C{PING}, C{PRIORITY},
        empty C{DATA}, unknown) allowed at once, and C{controlRate} more
        each second.
    """

    _log = Logger()
    transport: Any
    abortTimeout: Optional[float] = 15.0
    maxConcurrentStreams = 100
    resetBurst = 200
    resetRate = 50.0
    controlBurst = 1000
    controlRate = 200.0

    def __init__(
        self,
        site: Any,
        requestFactory: Any,
        maxBodySize: int,
        totalHeadersSize: int,
        clientHeaderTimeout: Optional[float],
        clientBodyTimeout: Optional[float],
        timeOut: Optional[float],
        sendTimeout: Optional[float] = None,
        streamBodyFor: Optional[Callable[[Optional[bytes], bytes], bool]] = None,
    ) -> None:
        """
        @param site: the L{lbproxy.ProxySite}.
        @param requestFactory: builds a request from its L{StreamChannel}.
        @param maxBodySize: the largest request body (else 413).
        @param totalHeadersSize: the largest header list (else 431).
        @param clientHeaderTimeout: seconds until the first request must
            have come, or L{None}.
        @param clientBodyTimeout: seconds a request body may pause (else
            408), or L{None}.
        @param timeOut: seconds the connection may stay without a stream
            (then it is closed with GOAWAY), or L{None}.
        @param sendTimeout: seconds a stream's response may wait for the
            client to accept more of it (then the stream is reset), or
            L{None}.
        @param streamBodyFor: whether the body of a request for C{(host,
            path)} streams to its backend (C{request_buffering = no}), or
            L{None}: never.
        """
        self.site = site
        self.factory = site
        self.requestFactory = requestFactory
        self.maxBodySize = maxBodySize
        self.totalHeadersSize = totalHeadersSize
        self.clientHeaderTimeout = clientHeaderTimeout
        self.clientBodyTimeout = clientBodyTimeout
        self.timeOut = timeOut
        self.sendTimeout = sendTimeout
        self.streamBodyFor = streamBodyFor
        self.hardHeaderListLimit = max(2 * totalHeadersSize, 64 * 1024)
        self.persistentFlag = True
        self.clock = site.reactor
        # Response heads are checked where they are made (the backend's by
        # lbproxy's HTTP/1.1 parser, lbproxy's own through Headers) and
        # lower-cased here: h2 need not check and normalise them again.
        self.machine = H2Connection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.machine.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.maxConcurrentStreams,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.hardHeaderListLimit,
            },
        )
        self.machine.decoder.max_header_list_size = self.hardHeaderListLimit
        self.streamsById: dict[int, StreamChannel] = {}
        #: The streams with response bytes (or END_STREAM) waiting to go.
        self.sendable: dict[int, StreamChannel] = {}
        self.transportPaused = False
        #: Set once the connection is going: a GOAWAY was sent or received.
        self.goingAway = False
        #: Set once the h2 machine is closed: nothing more can be sent.
        self.terminated = False
        self.connectionDeadline: Optional[Deadline] = None
        self.aborting: Any = None
        #: Whether this channel is its transport's producer (from
        #: C{connectionMade} until L{closeTransport}).
        self.producerRegistered = False
        self.resets = TokenBucket(self.clock, self.resetBurst, self.resetRate)
        self.controls = TokenBucket(self.clock, self.controlBurst, self.controlRate)

    # The connection

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        self.site.channels.add(self)
        transport.registerProducer(self, True)
        self.producerRegistered = True
        self.connectionDeadline = Deadline(self.clock, self._idle)
        self.armIdle(self.clientHeaderTimeout)
        self.machine.initiate_connection()
        self.flush()

    def connectionLost(self, reason: Any = None) -> None:
        self.terminated = True
        deadline, self.connectionDeadline = self.connectionDeadline, None
        if deadline is not None:
            deadline.cancel()
        aborting, self.aborting = self.aborting, None
        if aborting is not None and aborting.active():
            aborting.cancel()
        site = self.site
        site.channels.discard(self)
        streams = list(self.streamsById.values())
        self.streamsById.clear()
        self.sendable.clear()
        if reason is None:
            reason = Failure(ConnectionLost("connection lost"))
        try:
            for stream in streams:
                self._loseStream(stream, reason)
        finally:
            site.channelClosed()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def isSecure(self) -> bool:
        return ISSLTransport(self.transport, None) is not None

    @property
    def busy(self) -> bool:
        """
        Whether a stream is open.
        """
        return bool(self.streamsById)

    @property
    def requests(self) -> list[Any]:
        """
        The requests of the open streams.
        """
        return [s.request for s in self.streamsById.values() if s.request is not None]

    @property
    def persistent(self) -> bool:
        """
        Whether the connection takes new streams; set to L{False}, it sends
        GOAWAY and closes once the streams begun are answered.
        """
        return self.persistentFlag

    @persistent.setter
    def persistent(self, value: bool) -> None:
        self.persistentFlag = value
        if not value:
            self.goAway()

    def goAway(self) -> None:
        """
        Send GOAWAY (C{NO_ERROR}): no new stream will be taken.  The
        connection closes once the streams already begun are answered.
        """
        if self.goingAway or self.terminated:
            return
        self.goingAway = True
        self.persistentFlag = False
        self.flush()
        self.transport.write(_goaway(self.machine.highest_inbound_stream_id, 0))
        self.closeIfDone()

    def loseConnection(self) -> None:
        """
        Close the connection gracefully (as L{goAway}).
        """
        self.goAway()
        if not self.streamsById:
            self.closeTransport()

    def closeIfDone(self) -> None:
        if self.goingAway and not self.streamsById:
            self.closeTransport()

    def closeTransport(self) -> None:
        """
        Close the connection once what is written is sent, and abort it
        if it has not closed L{abortTimeout} seconds after: over TLS,
        Twisted closes the TCP connection only once the client has
        answered lbproxy's close_notify, which a client need not do.

        The channel stops being the transport's producer first: a TLS
        transport (L{twisted.protocols.tls.TLSMemoryBIOProtocol}) does not
        send its close_notify, nor close the connection, while a producer
        is registered, so that the connection would stay open until the
        client closed it or L{abortTimeout} (or the site's shutdown
        timeout) aborted it.
        """
        transport = self.transport
        if self.producerRegistered:
            self.producerRegistered = False
            transport.unregisterProducer()
        transport.loseConnection()
        self._abortLater()

    def terminate(self, code: int, why: str) -> None:
        """
        End the connection at once with GOAWAY C{code}: every open stream
        loses its connection.
        """
        if self.terminated:
            return
        self._log.info(
            "closing an HTTP/2 connection from {client}: {why}",
            client=getattr(self.getPeer(), "host", "?"),
            why=why,
        )
        machine = self.machine
        machine.close_connection(error_code=code)
        # What h2 queued in answer to the flood (an ACK for every SETTINGS
        # or PING frame) is dropped: the GOAWAY alone goes.
        machine.data_to_send()
        self.transport.write(_goaway(machine.highest_inbound_stream_id, code))
        self._shutDown()

    def _shutDown(self) -> None:
        self.terminated = True
        self.goingAway = True
        streams = list(self.streamsById.values())
        self.streamsById.clear()
        self.sendable.clear()
        reason = Failure(ConnectionLost("HTTP/2 connection ended"))
        for stream in streams:
            self._loseStream(stream, reason)
        self.closeTransport()

    def _abortLater(self) -> None:
        """
        Abort the connection in L{abortTimeout} seconds, if it has not
        closed by then (once: the first call sets the time).
        """
        if self.abortTimeout is not None and self.aborting is None:
            self.aborting = self.clock.callLater(
                self.abortTimeout, self.transport.abortConnection
            )

    # Timers

    def armIdle(self, seconds: Optional[float]) -> None:
        deadline = self.connectionDeadline
        if deadline is None:
            return
        if seconds is None:
            deadline.clear()
        else:
            deadline.set(seconds)

    def _idle(self) -> None:
        if self.streamsById or self.terminated:
            return
        self.goAway()

    # Reading

    def dataReceived(self, data: bytes) -> None:
        if self.terminated:
            return
        machine = self.machine
        events: Any
        try:
            events = machine.receive_data(data)
        except ProtocolError as error:
            out = machine.data_to_send()
            if _isCompressionError(error):
                out = _withErrorCode(out, ErrorCodes.COMPRESSION_ERROR)
            elif str(error) == _CONTINUATION_FLOOD:
                out = _withErrorCode(out, ErrorCodes.ENHANCE_YOUR_CALM)
            self._log.info(
                "HTTP/2 protocol error from {client}: {error}",
                client=getattr(self.getPeer(), "host", "?"),
                error=str(error),
            )
            if not out:
                # A bad preface is refused before h2 queues a GOAWAY.
                out = _goaway(machine.highest_inbound_stream_id, error.error_code)
            self.transport.write(out)
            self._shutDown()
            return
        pump = False
        for event in events:
            if self.terminated:
                return
            kind = type(event)
            if kind is DataReceived:
                self._data(event)
            elif kind is RequestReceived:
                self._request(event)
            elif kind is StreamEnded:
                self._ended(event.stream_id)
            elif kind is WindowUpdated:
                pump = True
            elif kind is StreamReset:
                self._reset(event.stream_id)
            elif kind is ConnectionTerminated:
                # The h2 machine sends nothing more after a GOAWAY.
                self._shutDown()
                return
            elif kind in _CONTROL or kind is RemoteSettingsChanged:
                if not self.controls.take():
                    self.terminate(ErrorCodes.ENHANCE_YOUR_CALM, "control frame flood")
                    return
                if kind is RemoteSettingsChanged:
                    pump = True
        if pump:
            self.pump()
        self.flush()

    def _request(self, event: Any) -> None:
        streamId = event.stream_id
        stream = StreamChannel(self, streamId)
        stream.remoteClosed = event.stream_ended is not None
        if self.goingAway:
            self.streamsById[streamId] = stream
            self.resetStream(stream, ErrorCodes.REFUSED_STREAM, countIt=False)
            return
        self.streamsById[streamId] = stream
        self.armIdle(None)
        method = path = authority = None
        host = length = None
        size = 0
        fields = []
        cookies = []
        for name, value in event.headers:
            size += len(name) + len(value) + 32
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if (
                TOKEN_RE.match(name) is None
                or value.translate(None, CTL) != value
                or value[:1] in _SPACE
                or value[-1:] in _SPACE
            ):
                self.resetStream(stream, ErrorCodes.PROTOCOL_ERROR)
                return
            if name == b"cookie":
                cookies.append(value)
                continue
            if name == b"host":
                host = value
            elif name == b"content-length":
                length = value
            fields.append((name, value))
        if size > self.totalHeadersSize:
            self.refuse(stream, 431)
            return
        if method is None or method == b"CONNECT":
            self.refuse(stream, 405)
            return
        if authority is not None:
            host = authority
        if (
            host is None
            or HOST.match(host) is None
            or path is None
            or TARGET_RE.match(path) is None
            or not (path[:1] == b"/" or (path == b"*" and method == b"OPTIONS"))
        ):
            self.refuse(stream, 400)
            return
        if length is not None:
            # h2 has checked that it is a number.
            stream.length = int(length)
            if stream.length > self.maxBodySize:
                self.refuse(stream, 413)
                return
        request = self.requestFactory(stream)
        stream.request = request
        stream.method = method
        stream.path = path
        addRawHeader = request.requestHeaders.addRawHeader
        if authority is not None:
            addRawHeader(b"host", authority)
        for name, value in fields:
            if name != b"host" or authority is None:
                addRawHeader(name, value)
        if cookies:
            addRawHeader(b"cookie", b"; ".join(cookies))
        request.hostHeader = host
        if stream.remoteClosed:
            return
        if self.clientBodyTimeout is not None:
            stream.bodyTimer = Deadline(self.clock, lambda: self._bodyTimedOut(stream))
            stream.bodyTimer.set(self.clientBodyTimeout)
        streamFor = self.streamBodyFor
        if streamFor is not None and streamFor(host, path):
            # Handed on now: the body follows as it arrives, and the
            # stream's window opens as the backend takes it.
            body = stream.streamingBody = StreamingBody(
                stream.length,
                lambda: self._pauseBody(stream),
                lambda: self._resumeBody(stream),
            )
            request.content = body
            stream.dispatched = True
            request.requestReceived(method, path, VERSION)

    def _data(self, event: Any) -> None:
        streamId = event.stream_id
        data = event.data
        flowed = event.flow_controlled_length
        stream = self.streamsById.get(streamId)
        machine = self.machine
        if stream is not None and stream.streamingBody is not None and stream.request is not None:
            # The connection's window opens at once, the stream's as its
            # backend takes the body.
            if flowed:
                machine.increment_flow_control_window(flowed)
                stream.unacknowledged += flowed
                if not stream.bodyPaused:
                    self._openStreamWindow(stream)
        elif flowed:
            try:
                machine.acknowledge_received_data(flowed, streamId)
            except ProtocolError:
                # The stream is closed; the connection's window was opened.
                pass
        if not data and not flowed and not self.controls.take():
            self.terminate(ErrorCodes.ENHANCE_YOUR_CALM, "empty DATA frame flood")
            return
        if stream is None or stream.request is None:
            return
        if event.stream_ended is not None:
            stream.remoteClosed = True
        body = stream.streamingBody
        if (stream.dispatched and body is None) or not data:
            return
        stream.received += len(data)
        if stream.received > self.maxBodySize:
            self.refuse(stream, 413)
            return
        if stream.bodyTimer is not None and self.clientBodyTimeout is not None:
            stream.bodyTimer.set(self.clientBodyTimeout)
        if body is not None:
            body.write(data)
            return
        request = stream.request
        if request.content is None:
            request.gotLength(stream.length)
        request.handleContentChunk(data)

    def _ended(self, streamId: int) -> None:
        stream = self.streamsById.get(streamId)
        if stream is None:
            return
        stream.remoteClosed = True
        request = stream.request
        if request is None:
            return
        timer, stream.bodyTimer = stream.bodyTimer, None
        if timer is not None:
            timer.cancel()
        body = stream.streamingBody
        if body is not None:
            body.finish()
            return
        if stream.dispatched:
            return
        stream.dispatched = True
        if request.content is None:
            request.content = BytesIO()
        request.requestReceived(stream.method, stream.path, VERSION)

    def _reset(self, streamId: int) -> None:
        stream = self.streamsById.pop(streamId, None)
        if stream is None:
            return
        self.sendable.pop(streamId, None)
        self._loseStream(stream, Failure(ConnectionLost("the client reset the stream")))
        if not self.resets.take():
            self.terminate(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")
            return
        self._streamGone()

    def _bodyTimedOut(self, stream: StreamChannel) -> None:
        if not stream.attached or stream.remoteClosed:
            return
        if stream.dispatched and stream.streamingBody is None:
            return
        self._log.info(
            "client {client} exceeded client_body_timeout",
            client=getattr(self.getPeer(), "host", "?"),
        )
        self.refuse(stream, 408)
        self.flush()

    def _pauseBody(self, stream: StreamChannel) -> None:
        """
        A streaming body's backend cannot take more: the stream's window
        stays as it is (the client stops sending once it is spent), and
        C{client_body_timeout} stops, since the backend is the slow one.
        """
        stream.bodyPaused = True
        if stream.bodyTimer is not None:
            stream.bodyTimer.clear()

    def _resumeBody(self, stream: StreamChannel) -> None:
        if not stream.bodyPaused:
            return
        stream.bodyPaused = False
        if not stream.attached:
            return
        if (
            stream.bodyTimer is not None
            and self.clientBodyTimeout is not None
            and not stream.remoteClosed
        ):
            stream.bodyTimer.set(self.clientBodyTimeout)
        self._openStreamWindow(stream)
        self.flush()

    def _openStreamWindow(self, stream: StreamChannel) -> None:
        size, stream.unacknowledged = stream.unacknowledged, 0
        if size and not stream.remoteClosed and not self.terminated:
            try:
                self.machine.increment_flow_control_window(size, stream.streamId)
            except ProtocolError:
                pass

    def _sendTimedOut(self, stream: StreamChannel) -> None:
        if not stream.attached or not stream.producerPaused:
            return
        self._log.info(
            "client {client} exceeded send_timeout: resetting a stream",
            client=getattr(self.getPeer(), "host", "?"),
        )
        self.resetStream(stream, ErrorCodes.CANCEL, countIt=False)

    # Streams ending

    def _loseStream(self, stream: StreamChannel, reason: Failure) -> None:
        request = stream.request
        stream.detach()
        producer = stream.producer
        stream.producer = None
        if request is not None and not request.finished:
            request.connectionLost(reason)
        elif producer is not None:
            producer.stopProducing()

    def _streamGone(self) -> None:
        if not self.streamsById:
            if self.goingAway:
                self.closeIfDone()
            else:
                self.armIdle(self.timeOut)

    def resetStream(self, stream: StreamChannel, code: int, countIt: bool = True) -> None:
        """
        Reset C{stream} with C{code}: its request, if any, loses its
        connection.

        @param countIt: whether the reset draws from the reset bucket (it
            does when the client's request caused it).
        """
        streamId = stream.streamId
        self.streamsById.pop(streamId, None)
        self.sendable.pop(streamId, None)
        if not self.terminated:
            try:
                self.machine.reset_stream(streamId, code)
            except ProtocolError:
                pass
        self._loseStream(stream, Failure(ConnectionLost("stream reset")))
        if countIt and not self.resets.take():
            self.terminate(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")
            return
        self.flush()
        self._streamGone()

    def refuse(self, stream: StreamChannel, code: int) -> None:
        """
        Answer C{stream} with lbproxy's page for C{code} (its request, if
        any, loses its connection), then reset it with C{NO_ERROR} if the
        client is still sending.
        """
        request, stream.request = stream.request, None
        timer, stream.bodyTimer = stream.bodyTimer, None
        if timer is not None:
            timer.cancel()
        if request is not None and not request.finished:
            request.connectionLost(Failure(ConnectionLost("request refused")))
        if stream.headSent:
            self.resetStream(stream, ErrorCodes.INTERNAL_ERROR, countIt=False)
            return
        self._log.info(
            "refused an HTTP/2 request from {client}: {code}",
            client=getattr(self.getPeer(), "host", "?"),
            code=code,
        )
        body = errorBody(code)
        stream.dispatched = True
        stream.pending = bytearray()
        stream.head = [
            (b":status", b"%d" % code),
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
        ]
        self.writeStream(stream, body)
        self.endStream(stream)
        if not self.resets.take():
            self.terminate(ErrorCodes.ENHANCE_YOUR_CALM, "too many refused streams")

    # Writing

    def flush(self) -> None:
        """
        Write what the C{h2} machine has to send.
        """
        data = self.machine.data_to_send()
        if data:
            self.transport.write(data)

    def sendHead(self, stream: StreamChannel, end: bool) -> None:
        head, stream.head = stream.head, None
        if head is None or self.terminated:
            return
        stream.headSent = True
        try:
            self.machine.send_headers(stream.streamId, head, end_stream=end)
        except ProtocolError as error:
            self._log.warn(
                "cannot send a response head over HTTP/2: {error}", error=str(error)
            )
            self.resetStream(stream, ErrorCodes.INTERNAL_ERROR, countIt=False)
            return
        if end:
            self._finished(stream)

    def writeStream(self, stream: StreamChannel, data: bytes) -> None:
        if stream.head is not None:
            self.sendHead(stream, False)
        if not data or not stream.attached:
            return
        stream.pending += data
        self.sendable[stream.streamId] = stream
        self.pump()
        if (
            stream.attached
            and stream.streaming
            and stream.producer is not None
            and not stream.producerPaused
            and len(stream.pending) > HIGH_WATER
        ):
            stream.producerPaused = True
            sendTimeout = self.sendTimeout
            if sendTimeout is not None:
                if stream.sendTimer is None:
                    stream.sendTimer = Deadline(self.clock, lambda: self._sendTimedOut(stream))
                stream.sendTimer.set(sendTimeout)
            stream.producer.pauseProducing()

    def endStream(self, stream: StreamChannel) -> None:
        if stream.ending or not stream.attached:
            return
        stream.ending = True
        if stream.head is not None and not stream.pending:
            self.sendHead(stream, True)
            self.flush()
            return
        if stream.head is not None:
            self.sendHead(stream, False)
        self.sendable[stream.streamId] = stream
        self.pump()

    def _finished(self, stream: StreamChannel) -> None:
        """
        END_STREAM is sent: the stream is done on lbproxy's side.
        """
        streamId = stream.streamId
        self.streamsById.pop(streamId, None)
        self.sendable.pop(streamId, None)
        stream.detach()
        if not stream.remoteClosed and not self.terminated:
            # Answered before the client finished sending (RFC 9113 8.1).
            try:
                self.machine.reset_stream(streamId, ErrorCodes.NO_ERROR)
            except ProtocolError:
                pass
        self._streamGone()

    def pump(self) -> None:
        """
        Send what the flow-control windows allow of the streams' pending
        bytes, one frame per stream in turn; resume the producers of the
        streams that have room again.
        """
        if self.transportPaused or self.terminated:
            return
        machine = self.machine
        sendable = self.sendable
        progress = True
        while sendable and progress:
            progress = False
            frameSize = machine.max_outbound_frame_size
            for streamId, stream in list(sendable.items()):
                pending = stream.pending
                if pending:
                    try:
                        window = machine.local_flow_control_window(streamId)
                    except ProtocolError:
                        sendable.pop(streamId, None)
                        continue
                    size = min(window, frameSize, len(pending))
                    if size <= 0:
                        continue
                    chunk = bytes(pending[:size])
                    del pending[:size]
                    last = stream.ending and not pending
                    try:
                        machine.send_data(streamId, chunk, end_stream=last)
                    except ProtocolError:
                        self.resetStream(stream, ErrorCodes.INTERNAL_ERROR, countIt=False)
                        continue
                    progress = True
                    if last:
                        self._finished(stream)
                        continue
                elif stream.ending:
                    try:
                        machine.end_stream(streamId)
                    except ProtocolError:
                        self.resetStream(stream, ErrorCodes.INTERNAL_ERROR, countIt=False)
                        continue
                    self._finished(stream)
                    continue
                if not pending and not stream.ending:
                    sendable.pop(streamId, None)
                if (
                    stream.producerPaused
                    and len(pending) <= LOW_WATER
                    and stream.producer is not None
                ):
                    stream.producerPaused = False
                    if stream.sendTimer is not None:
                        stream.sendTimer.clear()
                    stream.producer.resumeProducing()
                elif stream.producer is not None and not stream.streaming:
                    self.schedulePull(stream)
        self.flush()

    def schedulePull(self, stream: StreamChannel) -> None:
        """
        Ask C{stream}'s pull producer for more on the next turn of the
        reactor, if its buffer has room.
        """
        if stream.pullScheduled or len(stream.pending) > LOW_WATER:
            return
        stream.pullScheduled = True

        def pull() -> None:
            stream.pullScheduled = False
            producer = stream.producer
            if (
                producer is not None
                and stream.attached
                and not stream.streaming
                and len(stream.pending) <= LOW_WATER
            ):
                producer.resumeProducing()
                if stream.producer is producer and stream.attached:
                    self.schedulePull(stream)

        self.clock.callLater(0, pull)

    # IPushProducer, for the transport.

    def pauseProducing(self) -> None:
        self.transportPaused = True

    def resumeProducing(self) -> None:
        self.transportPaused = False
        self.pump()

    def stopProducing(self) -> None:
        self.transportPaused = True


_SPACE = (b" ", b"\t")

#: What C{h2} says of a header block of more than 64 frames, a flood that
#: RFC 9113 10.5 answers with C{ENHANCE_YOUR_CALM}.
_CONTINUATION_FLOOD = "Too many continuation frames received."

#: The events of frames that cost lbproxy work and bring no request
#: forward, limited by L{H2Channel.controls} (SETTINGS is
#: L{RemoteSettingsChanged}, handled apart).
_CONTROL = frozenset([PingReceived, PriorityUpdated, UnknownFrameReceived])
