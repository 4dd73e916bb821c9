# -*- test-case-name: tests.test_gzip -*-
"""
Compressing proxied responses with gzip, as a vhost's C{gzip = yes} asks:
nginx's C{gzip on}, for the responses that a backend sends uncompressed.

L{GzipPolicy} holds a vhost's settings (C{gzip_types},
C{gzip_min_length}, C{gzip_comp_level}) and says which responses
qualify; L{GzipResponse} sits between the exchange and the client request
(both are L{IProxyRequest}s) and compresses the body of those responses as
it streams, one piece at a time: nothing is buffered beyond zlib's own
window, and a slow client still pauses the backend, since the producer
registration goes straight through.

Twisted has a gzip wrapper for its own resources
(L{twisted.web.server.GzipEncoderFactory} with
L{twisted.web.resource.EncodingResourceWrapper}), but it works on
L{twisted.web.server.Request.write} and its response headers: it knows
nothing of a head that lbproxy writes as bytes, of C{Vary}, C{ETag},
C{Cache-Control: no-transform} or a minimum length, and it compresses
every content type.  Hence this module.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Callable, Optional, Sequence

from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy._http import NO_BODY_CODES
from lbproxy._interfaces import IProxyRequest

#: The media types compressed when C{gzip_types} is not given: nginx's
#: default (C{text/html}) widened to the text-like types that nginx users
#: usually list.
DEFAULT_TYPES = (
    "text/*",
    "application/json",
    "application/javascript",
    "application/x-javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/manifest+json",
    "image/svg+xml",
)

#: Bodies shorter than this (when their length is known) are sent as they
#: are, when C{gzip_min_length} is not given.
DEFAULT_MIN_LENGTH = 1024

#: The zlib level when C{gzip_comp_level} is not given (nginx's default).
DEFAULT_LEVEL = 1

#: A qvalue (RFC 9110 12.4.2).
_QVALUE = re.compile(rb"\A(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")

#: The answers of L{acceptsGzip} for the C{Accept-Encoding} values seen
#: most, bounded by L{_CACHED_ANSWERS}.
_acceptCache: dict[tuple[bytes, ...], bool] = {}
_CACHED_ANSWERS = 256


def acceptsGzip(values: Optional[Sequence[bytes]]) -> bool:
    """
    Whether a client whose C{Accept-Encoding} headers are C{values} accepts
    a gzip-coded response (RFC 9110 12.5.3): C{gzip} (or its alias
    C{x-gzip}) is listed with a weight above 0, or is not listed while C{*}
    is, with a weight above 0.  A weight that is not a valid qvalue counts
    as 0; no header at all accepts nothing but the identity.
    """
    if not values:
        return False
    key = tuple(values)
    answer = _acceptCache.get(key)
    if answer is not None:
        return answer
    gzip: Optional[bool] = None
    star: Optional[bool] = None
    for value in values:
        for item in value.split(b","):
            coding, _, params = item.partition(b";")
            coding = coding.strip(b" \t").lower()
            if not coding:
                continue
            accepted = True
            for param in params.split(b";") if params else ():
                name, _, weight = param.partition(b"=")
                if name.strip(b" \t").lower() == b"q":
                    weight = weight.strip(b" \t")
                    accepted = _QVALUE.match(weight) is not None and float(weight) > 0
            if coding in (b"gzip", b"x-gzip"):
                gzip = accepted or bool(gzip)
            elif coding == b"*":
                star = accepted
    answer = gzip if gzip is not None else bool(star)
    if len(_acceptCache) < _CACHED_ANSWERS:
        _acceptCache[key] = answer
    return answer


def _tokens(values: Sequence[bytes]) -> set[bytes]:
    """
    The lower-cased names of the items of comma-separated header values
    (C{Vary}, C{Cache-Control}), without their C{=value}.
    """
    return {
        item.partition(b"=")[0].strip(b" \t").lower()
        for value in values
        for item in value.split(b",")
    }


def weakETag(value: bytes) -> Optional[bytes]:
    """
    The weak form of an entity tag, as nginx makes it for a response it
    compresses: a weak tag as it is, a strong one (C{"x"}) prefixed with
    C{W/}; L{None} (drop the header) for a value that is neither.
    """
    if value[:2] == b"W/":
        return value
    if value[:1] == b'"':
        return b"W/" + value
    return None


class GzipPolicy:
    """
    A vhost's gzip settings, compiled once: which responses are compressed,
    and how hard.

    A response qualifies (nginx's gzip filter, widened to every status with
    a body but C{206}) when it has a body, is not a C{206} nor has a
    C{Content-Range}, has no C{Content-Encoding} (the backend compressed
    it, or said how it is coded), no C{Cache-Control: no-transform}, a
    C{Content-Type} in L{types}, and a length unknown or at least
    L{minLength}.  A response that qualifies gets C{Vary: Accept-Encoding},
    whether the client accepts gzip or not, since the same URL answers
    differently to another client; it is compressed when the client accepts
    gzip (L{acceptsGzip}).

    @ivar types: the media types compressed, lower-cased: C{type/subtype},
        C{type/*} or C{*} (any type, and none).
    @ivar minLength: the smallest body compressed, in bytes, when its
        length is known.
    @ivar level: the zlib compression level, 1 (fastest) to 9.
    """

    def __init__(
        self,
        types: Sequence[str] = DEFAULT_TYPES,
        minLength: int = DEFAULT_MIN_LENGTH,
        level: int = DEFAULT_LEVEL,
    ) -> None:
        if not 1 <= level <= 9:
            raise ValueError(f"a compression level from 1 to 9, not {level!r}")
        self.types = tuple(t.lower() for t in types)
        self.minLength = minLength
        self.level = level
        self._anyType = "*" in self.types
        self._exact = frozenset(t.encode("ascii") for t in self.types if not t.endswith("/*"))
        self._families = tuple(
            t[:-1].encode("ascii") for t in self.types if t.endswith("/*")
        )

    def compressesType(self, contentType: Optional[bytes]) -> bool:
        """
        Whether a body of C{Content-Type} C{contentType} (its whole value,
        parameters included, or L{None}) is compressed.
        """
        if self._anyType:
            return True
        if contentType is None:
            return False
        media = contentType.partition(b";")[0].strip(b" \t").lower()
        return media in self._exact or media.startswith(self._families) and media[-1:] != b"/"

    def qualifies(
        self, code: int, headers: Sequence[tuple[bytes, bytes]], length: Optional[int]
    ) -> bool:
        """
        Whether a response qualifies for compression (see L{GzipPolicy}).

        @param headers: its end-to-end headers, names in any case.
        @param length: its body's length, or L{None} when unknown.
        """
        if code < 200 or code == 206 or code in NO_BODY_CODES:
            return False
        if length is not None and length < self.minLength:
            return False
        contentType: Optional[bytes] = None
        cacheControl = []
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-type":
                contentType = value
            elif lowered == b"content-encoding":
                if value.strip(b" \t"):
                    return False
            elif lowered == b"content-range":
                return False
            elif lowered == b"cache-control":
                cacheControl.append(value)
        if cacheControl and b"no-transform" in _tokens(cacheControl):
            return False
        return self.compressesType(contentType)

    def encoder(self, length: Optional[int]) -> GzipEncoder:
        """
        A new L{GzipEncoder} at L{level}, for a body of C{length} bytes
        (L{None}: unknown).
        """
        return GzipEncoder(self.level, length)


class GzipEncoder:
    """
    One gzip stream, compressed a piece at a time with
    L{zlib.compressobj}.

    Its memory is zlib's window and hash table: 256 KiB for a body of
    unknown length, less for a known short one (the window shrinks to the
    smallest power of two that holds the body, as nginx does).
    """

    __slots__ = ("_compressor", "_pending")

    def __init__(self, level: int = DEFAULT_LEVEL, length: Optional[int] = None) -> None:
        """
        @param level: the zlib level, 1 to 9.
        @param length: the body's length, or L{None} when unknown.
        """
        windowBits, memLevel = 15, 8
        if length is not None:
            while length < 1 << (windowBits - 1) and windowBits > 9:
                windowBits -= 1
                memLevel -= 1
        memLevel = max(memLevel, 1)
        # 16 + windowBits: a gzip header and trailer around the deflate data.
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + windowBits, memLevel)
        self._pending = False

    def compress(self, data: bytes) -> bytes:
        """
        Compress C{data}: the compressed bytes ready so far (often none:
        zlib keeps input until it has enough for a block).
        """
        self._pending = True
        return self._compressor.compress(data)

    def flush(self) -> bytes:
        """
        Everything compressed so far that zlib still holds (a sync flush:
        the client can decode all the input given until now), or nothing
        when nothing was given since the last flush.
        """
        if not self._pending:
            return b""
        self._pending = False
        return self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        """
        The end of the stream: what zlib still holds and the gzip trailer.
        """
        self._pending = False
        return self._compressor.flush(zlib.Z_FINISH)


def _vary(fields: list[tuple[bytes, bytes]]) -> None:
    """
    Add C{Accept-Encoding} to the C{Vary} header of C{fields} (merged into
    the first one when there is one), unless it is there already or
    C{Vary} is C{*}.
    """
    values = [value for name, value in fields if name.lower() == b"vary"]
    if values:
        if _tokens(values) & {b"*", b"accept-encoding"}:
            return
        for i, (name, value) in enumerate(fields):
            if name.lower() == b"vary":
                fields[i] = (name, value + b", Accept-Encoding" if value.strip() else b"Accept-Encoding")
                return
    fields.append((b"Vary", b"Accept-Encoding"))


def _splitLines(headerLines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """
    Header lines (as L{IProxyRequest.holdProxiedHead} takes them) as
    C{(name, value)} pairs.
    """
    return [
        (name, value.strip(b" \t"))
        for name, _, value in (
            line.partition(b":") for line in b"".join(headerLines).split(b"\r\n")[:-1]
        )
    ]


@implementer(IProxyRequest)
class GzipResponse:
    """
    An L{IProxyRequest} in front of another, for a request to a vhost with
    C{gzip = yes}: the response goes on as it is unless it qualifies
    (L{GzipPolicy.qualifies}); then it gets C{Vary: Accept-Encoding}, and,
    when the client accepts gzip, it is compressed: C{Content-Encoding:
    gzip}, no C{Content-Length} (the client gets the body chunked, or an
    HTTP/1.0 client until the connection closes), no C{Accept-Ranges}, a
    weak C{ETag}.

    Each piece of the body is compressed as it comes; what zlib holds back
    is flushed (L{flushBody}) at the end of each read from the backend, so
    that a body that streams slowly reaches the client as it comes,
    decodable, rather than when zlib has a block's worth.
    """

    _encoder: Optional[GzipEncoder] = None

    def __init__(
        self, request: Any, policy: GzipPolicy, acceptEncoding: Optional[Sequence[bytes]]
    ) -> None:
        """
        @param request: the client request, an L{IProxyRequest}.
        @param policy: the vhost's L{GzipPolicy}.
        @param acceptEncoding: the request's C{Accept-Encoding} values.
        """
        self._request = request
        self._policy = policy
        self._acceptEncoding = acceptEncoding

    # What the exchange reads and sets on the request.

    @property
    def clientAddress(self) -> Any:
        return self._request.clientAddress

    @property
    def hostHeader(self) -> Optional[bytes]:
        host: Optional[bytes] = self._request.hostHeader
        return host

    @property
    def onConnectionLost(self) -> Optional[Callable[[Failure], object]]:
        callback: Optional[Callable[[Failure], object]] = self._request.onConnectionLost
        return callback

    @onConnectionLost.setter
    def onConnectionLost(self, callback: Optional[Callable[[Failure], object]]) -> None:
        self._request.onConnectionLost = callback

    @property
    def startedWriting(self) -> bool:
        return bool(self._request.startedWriting)

    @property
    def compressing(self) -> bool:
        """
        Whether the response being written is compressed.
        """
        return self._encoder is not None

    def holdProxiedHead(
        self, code: int, phrase: bytes, headerLines: list[bytes], length: Optional[int]
    ) -> None:
        policy = self._policy
        fields = _splitLines(headerLines)
        if not policy.qualifies(code, fields, length):
            self._request.holdProxiedHead(code, phrase, headerLines, length)
            return
        _vary(fields)
        if acceptsGzip(self._acceptEncoding):
            self._encoder = policy.encoder(length)
            kept: list[tuple[bytes, bytes]] = []
            for name, value in fields:
                lowered = name.lower()
                if lowered == b"accept-ranges":
                    continue
                if lowered == b"etag":
                    weak = weakETag(value)
                    if weak is None:
                        continue
                    value = weak
                kept.append((name, value))
            kept.append((b"Content-Encoding", b"gzip"))
            fields = kept
            length = None
        self._request.holdProxiedHead(
            code, phrase, [b"".join([b"%s: %s\r\n" % field for field in fields])], length
        )

    def writeBody(self, data: bytes) -> None:
        # (Not a bound method stored on the instance for each case: that
        # would be a reference cycle per response.)
        encoder = self._encoder
        if encoder is None:
            self._request.writeBody(data)
            return
        out = encoder.compress(data)
        if out:
            self._request.writeBody(out)

    def flushBody(self) -> None:
        """
        Send what zlib holds of the body given so far: the end of a read
        from the backend.
        """
        encoder = self._encoder
        if encoder is not None:
            out = encoder.flush()
            if out:
                self._request.writeBody(out)

    def flushHead(self) -> None:
        # The head goes with what the first read of the body gave.
        self.flushBody()
        self._request.flushHead()

    def finish(self) -> None:
        encoder = self._encoder
        if encoder is not None:
            self._encoder = None
            self._request.writeBody(encoder.finish())
        self._request.finish()

    def abortConnection(self) -> None:
        self._encoder = None
        self._request.abortConnection()

    def callWhenDone(self, callback: Callable[[], object]) -> None:
        self._request.callWhenDone(callback)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()
