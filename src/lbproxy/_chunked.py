# -*- test-case-name: tests.test_chunked -*-
"""
An incremental decoder of the I{chunked} transfer coding (RFC 9112 7.1),
for request bodies (the server side) and response bodies (the client
side).

Twisted's own decoder is private (C{twisted.web.http}'s
C{_ChunkedTransferDecoder}), so a Twisted release may change or remove it.
This one accepts what that one accepts, in every supported Twisted, and
refuses a little more:

  - a chunk size of more than C{maxSizeDigits} hex digits (Twisted reads
    any number of them, so a client could make it parse a 1000-digit
    number);
  - a CR or LF inside a trailer line (Twisted ends lines at CR LF only, so
    it reads C{"X: a\\nY: b"} as one trailer line, which a parser that
    also ends lines at LF reads differently);
  - trailers larger than C{maxTrailerSize} (Twisted's bound is 64 KiB).

Like Twisted's, it needs CR LF after every chunk-size line and chunk, reads
a chunk size as hex digits only (no sign, no C{0x}, no whitespace, at
least one digit), refuses a chunk-size line of 1024 bytes or more (the
size with its extensions), allows in extensions the characters Twisted
allows (HTAB, visible ASCII but C{\\}, space, obs-text) without parsing
them further, and reads trailer lines without parsing them, then drops
them.

It is on the path of every chunked body, so it works on slices of what it
is given: the bytes of a chunk are handed out as they arrive (a 10 MB
chunk is never held whole), and only a line cut across two reads (a chunk
size, a trailer line) is kept, in a buffer that is appended to, never
searched again from its start.
"""

from __future__ import annotations

from typing import Callable, Optional

#: The longest chunk-size line, with its extensions but without its CR LF,
#: is one byte less than this (as Twisted's C{maxChunkSizeLineLength}).
MAX_SIZE_LINE = 1024

#: The characters of a chunk size.
_HEX = b"0123456789abcdefABCDEF"

#: The characters that Twisted allows in chunk extensions (its
#: C{_chunkExtChars}): HTAB, space, visible ASCII but the backslash, and
#: obs-text.
_EXTENSION = (
    b"\t"
    + bytes(range(0x20, 0x5C))
    + bytes(range(0x5D, 0x7F))
    + bytes(range(0x80, 0x100))
)

# What the decoder reads next: a chunk-size line, chunk data, the CR LF
# after chunk data (or, when the CR came at the end of a read, its LF), a
# trailer line (or the empty line that ends the body).  Then it has
# finished, or has refused the body.
_SIZE, _DATA, _CRLF, _LF, _TRAILER, _FINISHED, _DEAD = range(7)


class MalformedChunks(ValueError):
    """
    The chunked body is not valid.
    """


class IncompleteChunks(MalformedChunks):
    """
    The chunked body ended (its connection did) before its last chunk and
    trailer section.
    """


class ChunkedDecoder:
    """
    Decode a chunked body fed to it in pieces of any size.

    @ivar finished: whether the whole body, up to the empty line after its
        trailer section, has been read (and C{finishCallback} called).
    """

    finished = False

    def __init__(
        self,
        dataCallback: Callable[[bytes], object],
        finishCallback: Callable[[bytes], object],
        maxSizeDigits: int = 16,
        maxTrailerSize: int = 16 * 1024,
    ) -> None:
        """
        @param dataCallback: called with the bytes of the body (the data
            of the chunks) as they arrive, never with C{b""}.
        @param finishCallback: called once, when the body has ended, with
            the bytes that came after it in the same read.
        @param maxSizeDigits: the most hex digits a chunk size may have,
            leading zeros included (16 is C{2 ** 64 - 1}; more than
            C{MAX_SIZE_LINE - 1} counts as that).
        @param maxTrailerSize: the most bytes the trailer lines may have in
            all, their CR LFs included but not the final empty line's.
            Keep it at most 64 KiB, Twisted's bound, so as never to accept
            trailers that Twisted refuses.
        """
        self._dataCallback = dataCallback
        self._finishCallback = finishCallback
        # A longer size would make a chunk-size line too long anyway.
        self._maxSizeDigits = min(maxSizeDigits, MAX_SIZE_LINE - 1)
        self._maxTrailerSize = maxTrailerSize
        self._stage = _SIZE
        #: The bytes of the current chunk not received yet.
        self._chunkLeft = 0
        #: The bytes of the trailer lines read so far.
        self._trailerSize = 0
        #: The start of a line cut at the end of a read, or L{None}.
        self._partLine: Optional[bytearray] = None

    def dataReceived(self, data: bytes) -> None:
        """
        Decode some more of the body.

        @param data: the next bytes of the body (and, at its end, maybe
            bytes that come after it).
        @raise MalformedChunks: when the body is not valid; the decoder is
            then dead, and raises it again whenever it is called.
        @raise RuntimeError: when the body has already ended.
        """
        stage = self._stage
        if stage >= _FINISHED:
            if stage == _FINISHED:
                raise RuntimeError("the chunked body has already ended")
            raise MalformedChunks("the chunked body was refused earlier")
        try:
            self._decode(data)
        except BaseException:
            if self._stage != _FINISHED:
                self._stage = _DEAD
            raise

    def noMoreData(self) -> None:
        """
        The body's connection ended.

        @raise IncompleteChunks: when the body had not ended.
        @raise MalformedChunks: when it had been refused.
        """
        if self._stage == _DEAD:
            raise MalformedChunks("the chunked body was refused earlier")
        if self._stage != _FINISHED:
            raise IncompleteChunks("the connection ended in the middle of a chunked body")

    def _decode(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        if self._partLine is not None:
            pos = self._endPartLine(data)
            if pos < 0 or self._stage == _FINISHED:
                return
        dataCallback = self._dataCallback
        while pos < end:
            stage = self._stage
            if stage == _SIZE:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._startPartLine(data[pos:])
                    return
                line = data[pos:eol]
                pos = eol + 2
                if 0 < len(line) <= self._maxSizeDigits and not line.translate(None, _HEX):
                    # The usual size line: hex digits alone.
                    length = int(line, 16)
                else:
                    length = self._sizeLine(line)
                if not length:
                    self._stage = _TRAILER
                    continue
                stop = pos + length
                if data[stop : stop + 2] == b"\r\n":
                    # The whole chunk and its CR LF are in this read.
                    dataCallback(data[pos:stop])
                    pos = stop + 2
                    continue
                self._chunkLeft = length
                self._stage = _DATA
            elif stage == _DATA:
                stop = pos + self._chunkLeft
                if stop >= end:
                    # All the rest of this read is chunk data.
                    self._chunkLeft = stop - end
                    if stop == end:
                        self._stage = _CRLF
                    dataCallback(data[pos:] if pos else data)
                    return
                self._chunkLeft = 0
                self._stage = _CRLF
                dataCallback(data[pos:stop])
                pos = stop
            elif stage == _CRLF:
                if data[pos : pos + 2] == b"\r\n":
                    pos += 2
                    self._stage = _SIZE
                elif pos + 1 == end and data[pos] == 13:
                    self._stage = _LF
                    return
                else:
                    raise MalformedChunks("chunk data not followed by CR LF")
            elif stage == _LF:
                if data[pos] != 10:
                    raise MalformedChunks("chunk data not followed by CR LF")
                pos += 1
                self._stage = _SIZE
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._startPartLine(data[pos:])
                    return
                line = data[pos:eol]
                pos = eol + 2
                if line:
                    self._trailerLine(line)
                else:
                    self._finish(data[pos:])
                    return

    def _startPartLine(self, part: bytes) -> None:
        """
        Keep the start of a line cut at the end of a read, unless it is
        already too long, or holds an LF (that is not part of a CR LF, or
        the line would have been read).
        """
        if b"\n" in part:
            raise MalformedChunks("a line of a chunked body ends with LF alone")
        self._checkPartLine(len(part), part[-1:] == b"\r")
        self._partLine = bytearray(part)

    def _checkPartLine(self, length: int, endsWithCR: bool) -> None:
        """
        Refuse a line cut at the end of a read, C{length} bytes so far, as
        soon as it is too long to be valid, whatever comes next.
        """
        if self._stage == _SIZE:
            if length > MAX_SIZE_LINE:
                raise MalformedChunks("chunk-size line too long")
        else:
            # The line, once ended, has at least this many bytes before its
            # CR LF; none may be the final empty line, which is not counted.
            # (Twisted counts it here, so it refuses trailers a byte or two
            # under its bound when that line's CR comes in a read alone.)
            least = length - 1 if endsWithCR else length
            if least and self._trailerSize + least + 2 > self._maxTrailerSize:
                raise MalformedChunks("trailer section too long")

    def _endPartLine(self, data: bytes) -> int:
        """
        Read the rest of a line cut at the end of the previous read.

        @return: where the next line, or chunk, starts in C{data}; or -1
            when the line does not end in C{data} either.
        """
        partLine = self._partLine
        assert partLine is not None
        if not data:
            return -1
        if partLine[-1] == 13 and data[0] == 10:
            del partLine[-1]
            pos = 1
        else:
            eol = data.find(b"\r\n")
            if eol < 0:
                if b"\n" in data:
                    raise MalformedChunks("a line of a chunked body ends with LF alone")
                partLine += data
                self._checkPartLine(len(partLine), data[-1] == 13)
                return -1
            partLine += data[:eol]
            pos = eol + 2
        self._partLine = None
        line = bytes(partLine)
        if self._stage == _SIZE:
            length = self._sizeLine(line)
            if length:
                self._chunkLeft = length
                self._stage = _DATA
            else:
                self._stage = _TRAILER
        elif line:
            self._trailerLine(line)
        else:
            self._finish(data[pos:])
        return pos

    def _sizeLine(self, line: bytes) -> int:
        """
        Read a chunk-size line (without its CR LF).

        @return: the chunk's size.
        """
        if len(line) >= MAX_SIZE_LINE:
            raise MalformedChunks("chunk-size line too long")
        semicolon = line.find(b";")
        if semicolon < 0:
            size = line
        else:
            size = line[:semicolon]
            if line[semicolon + 1 :].translate(None, _EXTENSION):
                raise MalformedChunks("invalid character in a chunk extension")
        if not size or size.translate(None, _HEX):
            raise MalformedChunks(f"invalid chunk size {size[:40]!r}")
        if len(size) > self._maxSizeDigits:
            raise MalformedChunks("chunk size too long")
        return int(size, 16)

    def _trailerLine(self, line: bytes) -> None:
        """
        Read a trailer line (without its CR LF), and drop it.
        """
        self._trailerSize += len(line) + 2
        if self._trailerSize > self._maxTrailerSize:
            raise MalformedChunks("trailer section too long")
        if b"\r" in line or b"\n" in line:
            raise MalformedChunks("a trailer line holds a CR or an LF")

    def _finish(self, rest: bytes) -> None:
        """
        The empty line after the trailer section was read: the body ended.
        """
        self._stage = _FINISHED
        self.finished = True
        self._finishCallback(rest)
