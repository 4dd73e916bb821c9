"""
Tests for L{lbproxy._chunked}: the incremental decoder of chunked bodies,
by vectors and against Twisted's own decoder.
"""

from __future__ import annotations

from typing import Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import (
    _ChunkedTransferDecoder,
    _MalformedChunkedDataError,
    maxChunkSizeLineLength,
)

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
            for reads in _splits(body) if len(body) < 100 else [[body], list(body)]:
                b = _Body()
                if isinstance(reads[0], int):
                    reads = [bytes([c]) for c in reads]
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
        seen = []
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

    def test_twistedConstants(self):
        """
        The chunk-size line bound and the extension characters are
        Twisted's.
        """
        from twisted.web.http import _chunkExtChars

        self.assertEqual(MAX_SIZE_LINE, maxChunkSizeLineLength)
        self.assertEqual(sorted(_EXTENSION), sorted(_chunkExtChars))


def _twisted(reads: list[bytes]) -> Optional[tuple[bytes, bytes, list[bytes]]]:
    """
    Feed C{reads} to Twisted's decoder until it finishes.

    @return: the data, the bytes after the body, the trailer lines; or
        L{None} when the body was refused or did not end.
    """
    data: list[bytes] = []
    rests: list[bytes] = []
    decoder = _ChunkedTransferDecoder(data.append, rests.append)
    for i, read in enumerate(reads):
        try:
            decoder.dataReceived(read)
        except _MalformedChunkedDataError:
            return None
        if rests:
            trailers = [bytes(t) for t in decoder._trailerHeaders]
            return b"".join(data), rests[0] + b"".join(reads[i + 1 :]), trailers
    return None


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
    @_SETTINGS
    @given(_CHUNKS, st.integers(0, 17), _EXTENSIONS, _TRAILERS, _RESTS, _EDITS, _CUTS)
    def test_sameAsTwisted(self, chunks, lastZeros, lastExtension, trailers, rest, edits, cuts):
        """
        With Twisted's bounds (any number of size digits, 64 KiB of
        trailers), a body cut anywhere is accepted by L{ChunkedDecoder}
        exactly when Twisted's decoder accepts it and its trailer lines
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
        Twisted's decoder refuses, and what it accepts it reads as
        Twisted's decoder does.
        """
        reads = _cut(_mutate(_body(chunks, lastZeros, lastExtension, trailers, rest), edits), cuts)
        ours = _ours(reads)
        if ours is not None:
            theirs = _twisted(reads)
            self.assertIsNotNone(theirs, reads)
            assert theirs is not None
            self.assertEqual(ours, theirs[:2], reads)
