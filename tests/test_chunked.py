"""
Tests for L{lbproxy._chunked}: the incremental decoder of chunked bodies,
by vectors and against Twisted's own decoder, reached through Twisted's
public HTTP server (an L{HTTPChannel} sent chunked requests).
"""

from __future__ import annotations

from typing import Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel, Request, maxChunkSizeLineLength

from lbproxy._chunked import (
    _EXTENSION,
    MAX_SIZE_LINE,
    ChunkedDecoder,
    IncompleteChunks,
    MalformedChunks,
)


class _Body:
    """
    A L{ChunkedDecoder} and what it handed out.
    """

    def __init__(self, **kwargs):
        self.pieces: list[bytes] = []
        self.rests: list[bytes] = []
        self.decoder = ChunkedDecoder(self.pieces.append, self.rests.append, **kwargs)

    def feed(self, *reads):
        for read in reads:
            self.decoder.dataReceived(read)

    def feedUntilFinished(self, reads):
        """
        Feed C{reads} until the body ends.

        @return: the bytes after the body.
        """
        for i, read in enumerate(reads):
            self.decoder.dataReceived(read)
            if self.decoder.finished:
                assert len(self.rests) == 1
                return self.rests[0] + b"".join(reads[i + 1 :])
        raise AssertionError("the body did not end")

    @property
    def data(self):
        return b"".join(self.pieces)


def _splits(data: bytes):
    """
    C{data} whole, one byte at a time, and cut in two and in three at every
    place (the three-way cuts around the middle).
    """
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    middle = len(data) // 2
    for i in range(len(data) + 1):
        j = min(max(i, middle), len(data))
        k = min(i, middle)
        yield [data[:k], data[k:j], data[j:]]


#: Valid chunked bodies (with what follows them), what they hold, and what
#: follows them.
_VALID = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
    (b"0\r\n\r\n", b"", b""),
    (b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n", b"hello", b""),
    (b"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n", b"0123456789" * 2, b""),
    (b"000000000000000A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", b""),
    (b"5;name=value;flag\r\nhello\r\n0;last=\"q ; \"\r\n\r\n", b"hello", b""),
    (b"5;\r\nhello\r\n0;\r\n\r\n", b"hello", b""),
    (b"5;a\t=\xe9 !~\r\nhello\r\n0\r\n\r\n", b"hello", b""),
    (b"0\r\nX-Sum: 1\r\nY:\t2 \xe9\r\n\r\n", b"", b""),
    (b"1\r\n\r\r\n1\r\n\n\r\n0\r\n\r\n", b"\r\n", b""),
    (b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n", b"hello", b"GET / HTTP/1.1\r\n\r\n"),
    (b"0\r\nX: 1\r\n\r\n0\r\n\r\n", b"", b"0\r\n\r\n"),
    (b"5;" + b"a" * (MAX_SIZE_LINE - 3) + b"\r\nhello\r\n0\r\n\r\n", b"hello", b""),
]

#: Invalid chunked bodies, each refused before it ends.
_INVALID = [
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"5\t\r\nhello\r\n0\r\n\r\n",
    b"5 ;a\r\nhello\r\n0\r\n\r\n",
    b"5_0\r\nhello\r\n0\r\n\r\n",
    b"\r\nhello\r\n0\r\n\r\n",
    b";a\r\nhello\r\n0\r\n\r\n",
    b"g\r\nhello\r\n0\r\n\r\n",
    b"\xd9\xa5\r\nhello\r\n0\r\n\r\n",
    b"00000000000000005\r\nhello\r\n0\r\n\r\n",
    b"10000000000000000\r\n",
    b"fffffffffffffffffffffffffffffff\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"5;a\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\n0\r\n\r\n",
    b"5\r\nhello0\r\n\r\n",
    b"5\r\nhelloXY\r\n0\r\n\r\n",
    b"5\r\nhello\rX0\r\n\r\n",
    b"5\r\nhello\r\n0\n\r\n",
    b"0\r\n\n",
    b"0\r\nX: 1\nY: 2\r\n\r\n",
    b"0\r\nX: 1\rY: 2\r\n\r\n",
    b"5;a\\b\r\nhello\r\n0\r\n\r\n",
    b"5;a\x00\r\nhello\r\n0\r\n\r\n",
    b"5;a\x7f\r\nhello\r\n0\r\n\r\n",
    b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    b"5;" + b"a" * (MAX_SIZE_LINE - 2) + b"\r\nhello\r\n0\r\n\r\n",
    b"5;" + b"a" * 2000,
    b"0\r\nX: " + b"a" * (16 * 1024) + b"\r\n\r\n",
    b"0\r\n" + b"X: 1\r\n" * 3000,
    b"0\r\nX: " + b"a" * (16 * 1024),
]


class VectorTests(SynchronousTestCase):
    def test_valid(self):
        """
        Valid bodies, cut anywhere, give their data and what follows them,
        and no empty piece of data.
        """
        for body, data, rest in _VALID:
            for reads in _splits(body):
                b = _Body()
                self.assertEqual((b.feedUntilFinished(reads), b.data), (rest, data), reads)
                self.assertNotIn(b"", b.pieces)
                self.assertTrue(b.decoder.finished)
                b.decoder.noMoreData()

    def test_invalid(self):
        """
        Invalid bodies, cut anywhere, are refused with L{MalformedChunks}
        while they are fed, never finished.
        """
        for body in _INVALID:
            cuts = _splits(body) if len(body) < 100 else [[body], [bytes([c]) for c in body]]
            for reads in cuts:
                b = _Body()
                self.assertRaises(MalformedChunks, b.feed, *reads)
                self.assertEqual(b.rests, [])
                self.assertFalse(b.decoder.finished)

    def test_dead(self):
        """
        Once it refused a body, the decoder refuses anything more, and the
        body is not complete.
        """
        b = _Body()
        self.assertRaises(MalformedChunks, b.feed, b"x\r\n")
        self.assertRaises(MalformedChunks, b.feed, b"0\r\n\r\n")
        self.assertRaises(MalformedChunks, b.feed, b"")
        self.assertRaises(MalformedChunks, b.decoder.noMoreData)
        self.assertEqual(b.rests, [])

    def test_deadAfterCallbackError(self):
        """
        A callback that raises leaves the decoder dead: the rest of the
        read it was handed out of is lost.
        """
        def fail(data):
            raise ZeroDivisionError()

        decoder = ChunkedDecoder(fail, lambda rest: None)
        self.assertRaises(ZeroDivisionError, decoder.dataReceived, b"1\r\na\r\n0\r\n\r\n")
        self.assertRaises(MalformedChunks, decoder.dataReceived, b"0\r\n\r\n")

    def test_afterFinish(self):
        """
        Feeding a decoder that finished is a programming error.
        """
        b = _Body()
        b.feed(b"0\r\n\r\n")
        self.assertRaises(RuntimeError, b.feed, b"x")
        self.assertRaises(RuntimeError, b.feed, b"")
        self.assertEqual(b.rests, [b""])

    def test_finishedWhenCalledBack(self):
        """
        C{finished} is true when C{finishCallback} is called.
        """
        seen: list[object] = []
        decoder = ChunkedDecoder(seen.append, lambda rest: seen.append(decoder.finished))
        self.assertFalse(decoder.finished)
        decoder.dataReceived(b"0\r\n\r\n")
        self.assertEqual(seen, [True])

    def test_incomplete(self):
        """
        A body cut anywhere before its end is incomplete when its
        connection ends.
        """
        body = b"5;x\r\nhello\r\n0\r\nX: 1\r\n\r\n"
        for i in range(len(body)):
            b = _Body()
            b.feed(body[:i])
            self.assertRaises(IncompleteChunks, b.decoder.noMoreData)
            self.assertFalse(b.decoder.finished)
        self.assertTrue(issubclass(IncompleteChunks, MalformedChunks))

    def test_sizeDigits(self):
        """
        A chunk size may have C{maxSizeDigits} hex digits, leading zeros
        included, and no more.
        """
        b = _Body(maxSizeDigits=3)
        b.feed(b"00A\r\n0123456789\r\n0\r\n\r\n")
        self.assertEqual(b.data, b"0123456789")
        b = _Body(maxSizeDigits=3)
        self.assertRaises(MalformedChunks, b.feed, b"000A\r\n")
        b = _Body()
        b.feed(b"ffffffffffffffff\r\nabc")
        self.assertEqual(b.data, b"abc")
        b = _Body(maxSizeDigits=10 * MAX_SIZE_LINE)
        b.feed(b"0" * (MAX_SIZE_LINE - 2) + b"1\r\na\r\n")
        self.assertEqual(b.data, b"a")
        b = _Body(maxSizeDigits=10 * MAX_SIZE_LINE)
        self.assertRaises(MalformedChunks, b.feed, b"0" * (MAX_SIZE_LINE - 1) + b"1\r\n")

    def test_trailerSize(self):
        """
        The trailer lines may have C{maxTrailerSize} bytes with their CR
        LFs, and no more, however they are cut.
        """
        trailers = b"X: 1\r\nYY: 2\r\n"
        for size, ok in [(len(trailers), True), (len(trailers) - 1, False)]:
            for reads in _splits(b"0\r\n" + trailers + b"\r\n"):
                b = _Body(maxTrailerSize=size)
                if ok:
                    self.assertEqual(b.feedUntilFinished(reads), b"")
                else:
                    self.assertRaises(MalformedChunks, b.feed, *reads)

    def test_streamed(self):
        """
        The data of a large chunk is handed out as it arrives, each read
        that is all chunk data as it came, not copied.
        """
        b = _Body()
        b.feed(b"A00000\r\n")
        piece = b"x" * 65536
        for i in range(160):
            b.feed(piece)
            self.assertIs(b.pieces[-1], piece)
            self.assertEqual(len(b.pieces), i + 1)
        b.feed(b"\r\n0\r\n\r\n")
        self.assertEqual((len(b.data), b.rests), (10 * 1024 * 1024, [b""]))

    def test_sizeLineBound(self):
        """
        The chunk-size line bound is Twisted's.
        """
        self.assertEqual(MAX_SIZE_LINE, maxChunkSizeLineLength)

    def test_extensionCharacters(self):
        """
        The characters allowed in chunk extensions are those of RFC 9112's
        grammar for them, but the backslash of a quoted-pair, which
        Twisted refuses in an extension (it checks which bytes an extension
        holds, not its syntax, and so does L{ChunkedDecoder}).
        """
        self.assertEqual(sorted(set(_EXTENSION)), sorted(_CHUNK_EXT))
        self.assertEqual(len(_EXTENSION), len(_CHUNK_EXT))
        quotedPair = set(b"\t " + _VCHAR + _OBS_TEXT)
        self.assertEqual(quotedPair - _CHUNK_EXT, {ord("\\")})


#: RFC 9110 and 9112's core rules and the rules of chunk extensions, as the
#: bytes each allows:
#:
#:     chunk-ext      = *( BWS ";" BWS chunk-ext-name
#:                         [ BWS "=" BWS chunk-ext-val ] )
#:     chunk-ext-name = token
#:     chunk-ext-val  = token / quoted-string
#:     BWS            = OWS = *( SP / HTAB )
#:     token          = 1*tchar
#:     tchar          = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-"
#:                      / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
#:     quoted-string  = DQUOTE *( qdtext / quoted-pair ) DQUOTE
#:     qdtext         = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
#:     quoted-pair    = "\" ( HTAB / SP / VCHAR / obs-text )
#:     obs-text       = %x80-FF
_DIGIT = b"0123456789"
_ALPHA = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VCHAR = bytes(range(0x21, 0x7F))
_OBS_TEXT = bytes(range(0x80, 0x100))
_TCHAR = b"!#$%&'*+-.^_`|~" + _DIGIT + _ALPHA
_BWS = b" \t"
_QDTEXT = b"\t \x21" + bytes(range(0x23, 0x5C)) + bytes(range(0x5D, 0x7F)) + _OBS_TEXT

#: The bytes that the chunk extensions of a chunk-size line (after its
#: first C{;}) may hold, by the grammar above without quoted-pair: BWS,
#: C{;}, C{=}, tchar, and the DQUOTE and qdtext of a quoted-string.
_CHUNK_EXT = frozenset(_BWS + b";=" + _TCHAR + b'"' + _QDTEXT)


#: The head of the request that carries a chunked body to Twisted.
_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


class _BodyRequest(Request):
    """
    A request that gives its channel its body, as Twisted decoded it, when
    the whole request has been received, and is left unanswered.
    """

    def process(self) -> None:
        channel = self.channel
        assert isinstance(channel, _Channel) and self.content is not None
        channel.received.append((self, self.content.read()))


class _Channel(HTTPChannel):
    """
    Twisted's HTTP server, recording the requests it reads and, once told
    to, the bytes it is handed back after a request is done: those it
    buffered after that request, to be read as the next ones.

    @ivar received: each request read, with its body.
    @ivar replayed: L{None}, or the bytes handed back since then.
    """

    requestFactory = _BodyRequest
    timeOut = None

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[Request, bytes]] = []
        self.replayed: Optional[list[bytes]] = None

    def dataReceived(self, data: bytes) -> None:
        if self.replayed is not None:
            self.replayed.append(data)
        else:
            super().dataReceived(data)


def _trailerLines(body: bytes) -> list[bytes]:
    """
    The trailer lines of a chunked body that Twisted accepted, as Twisted
    reads them: lines end at CR LF only.

    @param body: the body, up to the empty line that ends it.
    """
    pos = 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if not size:
            break
        pos += size + 2
    assert body.endswith(b"\r\n")
    return body[pos:-2].split(b"\r\n")[:-1]


def _twisted(reads: list[bytes]) -> Optional[tuple[bytes, bytes, list[bytes]]]:
    """
    Send C{reads} to Twisted's HTTP server as the body of a chunked request,
    as long as it keeps the connection.

    @return: the body as the request has it, the bytes after the body, the
        trailer lines; or L{None} when Twisted refused the body (answered
        400 Bad Request and closed the connection) or did not see it end.
    """
    transport = StringTransport()
    channel = _Channel()
    channel.makeConnection(transport)
    channel.dataReceived(_HEAD)
    for read in reads:
        if transport.disconnecting:
            break
        channel.dataReceived(read)
    refused = transport.value().startswith(b"HTTP/1.1 400 ")
    assert refused == transport.disconnecting, transport.value()
    if refused or not channel.received:
        assert not channel.received
        return None
    assert transport.value() == b"", transport.value()
    [(request, data)] = channel.received
    # Once the request is answered, Twisted hands back what it buffered after
    # its body, to be read as the next requests.
    channel.replayed = []
    request.finish()
    rest = b"".join(channel.replayed)
    received = b"".join(reads)
    trailers = _trailerLines(received[: len(received) - len(rest)])
    return data, rest, trailers


def _ours(reads: list[bytes], **kwargs) -> Optional[tuple[bytes, bytes]]:
    """
    Feed C{reads} to a L{ChunkedDecoder} until it finishes.

    @return: the data and the bytes after the body; or L{None} when the
        body was refused or did not end.
    """
    b = _Body(**kwargs)
    for i, read in enumerate(reads):
        try:
            b.decoder.dataReceived(read)
        except MalformedChunks:
            return None
        if b.rests:
            assert b"" not in b.pieces
            return b.data, b.rests[0] + b"".join(reads[i + 1 :])
    try:
        b.decoder.noMoreData()
    except IncompleteChunks:
        return None
    raise AssertionError("noMoreData accepted an unfinished body")


_EXTENSION_PIECES = st.sampled_from(
    [b"a", b"=", b'"', b";", b" ", b"\t", b"\xe9", b"\\", b"\x00", b"\x7f", b"\r", b"\n", b","]
)
_EXTENSIONS = st.one_of(
    st.just(b""),
    st.lists(_EXTENSION_PIECES, max_size=5).map(lambda p: b";" + b"".join(p)),
)
_CHUNKS = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=20),
        st.integers(0, 18),
        st.booleans(),
        _EXTENSIONS,
    ),
    max_size=4,
)
_TRAILERS = st.lists(
    st.lists(
        st.sampled_from([b"X", b":", b" ", b"v", b"\t", b"\r", b"\n", b"\xe9"]),
        min_size=1,
        max_size=6,
    ).map(b"".join),
    max_size=3,
)
_RESTS = st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"0\r\n\r\n", b"\r\n", b"\n"])
_EDITS = st.lists(
    st.tuples(
        st.integers(0, 10**6),
        st.integers(0, 2),
        st.sampled_from(
            [b"", b"\r", b"\n", b"\r\n", b";", b" ", b"0", b"x", b"-", b"+", b"\\",
             b"a", b"G", b"\x00", b"ff", b"\r\n\r\n", b"1\r\nz\r\n"]
        ),
    ),
    max_size=3,
)
_CUTS = st.lists(st.integers(0, 10**6), max_size=6)


def _body(chunks, lastZeros, lastExtension, trailers, rest) -> bytes:
    parts = []
    for data, zeros, upper, extension in chunks:
        size = b"%x" % (len(data),)
        if upper:
            size = size.upper()
        parts.append(b"0" * zeros + size + extension + b"\r\n" + data + b"\r\n")
    parts.append(b"0" * (lastZeros + 1) + lastExtension + b"\r\n")
    parts.extend(t + b"\r\n" for t in trailers)
    parts.append(b"\r\n" + rest)
    return b"".join(parts)


def _mutate(body: bytes, edits) -> bytes:
    for position, delete, insert in edits:
        position %= len(body) + 1
        body = body[:position] + insert + body[position + delete :]
    return body


def _cut(body: bytes, cuts) -> list[bytes]:
    points = sorted(c % (len(body) + 1) for c in cuts)
    return [body[a:b] for a, b in zip([0] + points, points + [len(body)])]


_SETTINGS = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TwistedDifferentialTests(SynchronousTestCase):
    def test_extensionBytesAsTwisted(self):
        """
        A chunk extension holding any one byte, alone or after a name and
        C{=}, is accepted by L{ChunkedDecoder} exactly when Twisted accepts
        it.
        """
        for before in [b"", b"a="]:
            accepted = set()
            for byte in range(256):
                extension = before + bytes([byte])
                body = b"1;" + extension + b"\r\nx\r\n0;" + extension + b"\r\n\r\n"
                theirs = _twisted([body])
                self.assertEqual(_ours([body]), None if theirs is None else theirs[:2], body)
                if theirs is not None:
                    accepted.add(byte)
            self.assertEqual(accepted, _CHUNK_EXT)

    @_SETTINGS
    @given(_CHUNKS, st.integers(0, 17), _EXTENSIONS, _TRAILERS, _RESTS, _EDITS, _CUTS)
    def test_sameAsTwisted(self, chunks, lastZeros, lastExtension, trailers, rest, edits, cuts):
        """
        With Twisted's bounds (any number of size digits, 64 KiB of
        trailers), a body cut anywhere is accepted by L{ChunkedDecoder}
        exactly when Twisted's HTTP server accepts it and its trailer lines
        have no CR or LF, with the same data and the same bytes after it.
        """
        reads = _cut(_mutate(_body(chunks, lastZeros, lastExtension, trailers, rest), edits), cuts)
        theirs = _twisted(reads)
        ours = _ours(reads, maxSizeDigits=MAX_SIZE_LINE, maxTrailerSize=2**16)
        if theirs is None or any(b"\r" in t or b"\n" in t for t in theirs[2]):
            self.assertIsNone(ours, reads)
        else:
            self.assertEqual(ours, theirs[:2], reads)

    @_SETTINGS
    @given(_CHUNKS, st.integers(0, 17), _EXTENSIONS, _TRAILERS, _RESTS, _EDITS, _CUTS)
    def test_neverLooserThanTwisted(
        self, chunks, lastZeros, lastExtension, trailers, rest, edits, cuts
    ):
        """
        With its default bounds, L{ChunkedDecoder} accepts nothing that
        Twisted's HTTP server refuses, and what it accepts it reads as
        Twisted's does.
        """
        reads = _cut(_mutate(_body(chunks, lastZeros, lastExtension, trailers, rest), edits), cuts)
        ours = _ours(reads)
        if ours is not None:
            theirs = _twisted(reads)
            self.assertIsNotNone(theirs, reads)
            assert theirs is not None
            self.assertEqual(ours, theirs[:2], reads)
