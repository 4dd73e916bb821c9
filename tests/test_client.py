"""
Tests for L{lbproxy._client}: the HTTP/1.1 client protocol that forwards
requests, over a L{StringTransport}.
"""

from __future__ import annotations

import io
import weakref
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._client import (
    MAX_HEAD_SIZE,
    InvalidResponse,
    ResponseHandler,
    UpstreamConnection,
    parseHead,
)
from tests.refcounting import withoutCollector


class _Recorder(ResponseHandler):
    def __init__(self):
        self.events = []
        self.head = None
        self.body = b""

    def headReceived(self, head):
        self.head = head
        self.events.append("head")

    def bodyReceived(self, data):
        self.body += data

    def bodyFinished(self, complete, why):
        self.events.append(("finished", complete))

    def failed(self, received, invalid, why):
        self.events.append(("failed", received, invalid))


class _Connection:
    """
    An L{UpstreamConnection} on a L{StringTransport}, recording when it
    goes idle and when it is lost.
    """

    def __init__(self):
        self.idle: list[UpstreamConnection] = []
        self.lost: list[UpstreamConnection] = []
        self.proto = UpstreamConnection(self.idle.append, self.lost.append)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def send(self, method=b"GET", head=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", body=None):
        handler = _Recorder()
        self.proto.send(handler, method, head, body)
        return handler

    def receive(self, data):
        self.proto.dataReceived(data)

    def lose(self, reason=ConnectionDone):
        self.transport.disconnecting = True
        self.proto.connectionLost(Failure(reason()))


class ParseHeadTests(SynchronousTestCase):
    def test_statusAndHeaders(self):
        """
        The status line gives the version, code and phrase; end-to-end
        headers keep their order and spelling, repeated ones included.
        """
        head, length, chunked, bodyless = parseHead(
            b"HTTP/1.1 201 Created Now\r\nSet-Cookie: a=1\r\nX-A:  v \r\n"
            b"Set-Cookie: b=2\r\nContent-Length: 3",
            b"GET",
        )
        self.assertEqual((head.version, head.code, head.phrase), ((1, 1), 201, b"Created Now"))
        self.assertEqual(
            head.headers,
            [(b"Set-Cookie", b"a=1"), (b"X-A", b"v"), (b"Set-Cookie", b"b=2")],
        )
        self.assertEqual((length, chunked, bodyless, head.length), (3, False, False, 3))

    def test_noPhraseAndBareLF(self):
        """
        A status line without a phrase, and lines ending in LF alone, are
        accepted, as Twisted's parser accepts them.
        """
        head, _, _, _ = parseHead(b"HTTP/1.0 200\nA: b", b"GET")
        self.assertEqual((head.version, head.code, head.phrase), ((1, 0), 200, b""))
        self.assertEqual(head.headers, [(b"A", b"b")])

    def test_foldedHeader(self):
        """
        A continuation line is joined to its header with a space.
        """
        head, _, _, _ = parseHead(b"HTTP/1.1 200 OK\r\nX-A: one\r\n  two\r\nB: c", b"GET")
        self.assertEqual(head.headers, [(b"X-A", b"one two"), (b"B", b"c")])

    def test_connectionTokens(self):
        """
        The tokens of Connection are lower-cased and kept apart from the
        end-to-end headers, as are the other connection-control headers.
        """
        head, _, _, _ = parseHead(
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, X-Hop\r\nKeep-Alive: 5\r\n"
            b"Transfer-Encoding: chunked\r\nX-Hop: 1",
            b"GET",
        )
        self.assertEqual(head.connection, frozenset([b"keep-alive", b"x-hop"]))
        self.assertEqual(head.headers, [(b"X-Hop", b"1")])

    def test_invalid(self):
        """
        Garbage, a bad version or code, a header without a colon or with a
        space before it, conflicting or non-numeric lengths, and transfer
        codings other than chunked are all invalid.
        """
        for head in [
            b"SSH-2.0-OpenSSH",
            b"HTTP/9 200 OK",
            b"HTTP/1.1 abc OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 200 OK\r\nNoColon",
            b"HTTP/1.1 200 OK\r\nBad Name: 1",
            b"HTTP/1.1 200 OK\r\n continuation first",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
            b"HTTP/1.1 200 OK\r\nX-A: a\x00b",
            b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: x=1",
            b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n  folded",
            b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n  folded",
            b"HTTP/1.1 200 OK\r\nX-A: a\x01b",
            b"HTTP/1.1 200 OK\r\nX-A: a\x7fb",
        ]:
            self.assertRaises(InvalidResponse, parseHead, head, b"GET")

    def test_ampersandInName(self):
        """
        A header name with C{&}, a token character that Twisted 24.7 does
        not accept, is invalid, whether the head is read in one match, line
        by line, or with folded lines.
        """
        for head in [
            b"HTTP/1.1 200 OK\r\nX-Amp&: 1",
            b"HTTP/1.1 200 OK\nX-Amp&: 1",
            b"HTTP/1.1 200 OK\r\nX-Amp&: 1\r\n  folded",
        ]:
            self.assertRaises(InvalidResponse, parseHead, head, b"GET")

    def test_trailingWhitespace(self):
        """
        Whitespace around a value is not part of it.
        """
        head, _, _, _ = parseHead(
            b"HTTP/1.1 200 OK\r\nA: \t v\tw \t\r\nB:x\r\nC: \xe9", b"GET"
        )
        self.assertEqual(head.headers, [(b"A", b"v\tw"), (b"B", b"x"), (b"C", b"\xe9")])

    def test_repeatedEqualLengths(self):
        """
        Repeated Content-Length values that agree are one length.
        """
        _, length, _, _ = parseHead(
            b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 007", b"GET"
        )
        self.assertEqual(length, 7)

    def test_noBody(self):
        """
        Responses to HEAD, and 204 and 304 responses, have no body; the
        Content-Length of a HEAD response is an end-to-end header.
        """
        head, _, _, bodyless = parseHead(b"HTTP/1.1 200 OK\r\nContent-Length: 10", b"HEAD")
        self.assertTrue(bodyless)
        self.assertEqual(head.headers, [(b"Content-Length", b"10")])
        for code in (b"204", b"304"):
            head, _, _, bodyless = parseHead(b"HTTP/1.1 " + code + b" X", b"GET")
            self.assertTrue(bodyless)
            self.assertEqual(head.length, 0)

    def test_chunkedAndDelimited(self):
        """
        Chunked wins over Content-Length; with neither, the body ends with
        the connection.
        """
        head, length, chunked, _ = parseHead(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 3", b"GET"
        )
        self.assertEqual((length, chunked, head.length), (None, True, None))
        head, length, chunked, bodyless = parseHead(b"HTTP/1.1 200 OK", b"GET")
        self.assertEqual((length, chunked, bodyless), (None, False, False))


class ConnectionTests(SynchronousTestCase):
    def test_handshakeWaitCancelled(self):
        """
        Cancelling the wait for a TLS handshake (the client left while the
        connection to an C{https} backend was being opened) aborts the
        connection rather than leave it open with no owner; its loss then
        fires nothing more.
        """
        from twisted.internet.defer import CancelledError

        proto = UpstreamConnection()
        transport = StringTransport()
        proto.makeConnection(transport)
        waiting = proto.whenHandshakeDone()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))

    def test_requestWritten(self):
        """
        The head is written as given; a body file streams after it.
        """
        c = _Connection()
        c.send(head=b"POST / HTTP/1.1\r\n\r\n", body=io.BytesIO(b"abc"), method=b"POST")
        self.assertTrue(c.transport.value().startswith(b"POST / HTTP/1.1\r\n\r\n"))

    def test_lengthDelimitedReused(self):
        """
        A complete response with a Content-Length is delivered, and the
        connection goes idle for the next request.
        """
        c = _Connection()
        h = c.send()
        c.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        self.assertEqual((h.events, c.idle), (["head"], []))
        c.receive(b"lo")
        self.assertEqual(h.body, b"hello")
        self.assertEqual(h.events, ["head", ("finished", True)])
        self.assertEqual(c.idle, [c.proto])
        self.assertTrue(c.proto.reusable)
        h2 = c.send()
        c.receive(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(h2.events, ["head", ("finished", True)])
        self.assertEqual(c.proto.exchanges, 2)

    def test_interimSkipped(self):
        """
        1xx responses before the final one are skipped.
        """
        c = _Connection()
        h = c.send()
        c.receive(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n")
        self.assertEqual(h.events, [])
        c.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(h.head.code, 200)
        self.assertEqual(h.events, ["head", ("finished", True)])

    def test_headInPieces(self):
        """
        A head split across reads is put together.
        """
        c = _Connection()
        h = c.send()
        for piece in [b"HTTP/1.1 200 OK\r", b"\nContent-Len", b"gth: 1\r\n\r", b"\nx"]:
            c.receive(piece)
        self.assertEqual((h.head.code, h.body), (200, b"x"))

    def test_chunked(self):
        """
        A chunked body is decoded, and the connection is reused after the
        last chunk.
        """
        c = _Connection()
        h = c.send()
        c.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n")
        c.receive(b"2\r\nlo\r\n0\r\n\r\n")
        self.assertEqual((h.body, h.events[-1]), (b"hello", ("finished", True)))
        self.assertEqual(c.idle, [c.proto])

    def test_chunkedByteByByte(self):
        """
        A chunked body with extensions and trailers, read one byte at a
        time, is decoded; the trailers are dropped.
        """
        c = _Connection()
        h = c.send()
        response = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;a=b\r\nhel\r\n02\r\nlo\r\n0;last\r\nX-Sum: 1\r\n\r\n"
        )
        for i in range(len(response)):
            c.receive(response[i : i + 1])
        self.assertEqual((h.body, h.events), (b"hello", ["head", ("finished", True)]))
        self.assertEqual(c.idle, [c.proto])

    def test_chunkedLineEndsWithLF(self):
        """
        A chunked body whose lines end with LF alone is invalid: the body
        is broken off and the connection aborted.
        """
        for body in [b"3\nhel\r\n0\r\n\r\n", b"3\r\nhel\n0\r\n\r\n", b"0\r\n\n"]:
            c = _Connection()
            h = c.send()
            c.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
            self.assertEqual(h.events, ["head", ("finished", False)])
            self.assertTrue(c.transport.disconnected)

    def test_notReused(self):
        """
        HTTP/1.0, Connection: close, bytes after the response, and both
        Content-Length and chunking each close the connection after the
        response instead of keeping it.
        """
        for response in [
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]:
            c = _Connection()
            h = c.send()
            c.receive(response)
            self.assertEqual(h.events[-1], ("finished", True))
            self.assertEqual(c.idle, [])
            self.assertTrue(c.transport.disconnecting)

    def test_connectionDelimited(self):
        """
        A body without length ends, complete, when the backend closes.
        """
        c = _Connection()
        h = c.send()
        c.receive(b"HTTP/1.1 200 OK\r\n\r\nsome")
        c.receive(b" data")
        self.assertEqual(h.events, ["head"])
        c.lose()
        self.assertEqual((h.body, h.events[-1]), (b"some data", ("finished", True)))
        self.assertEqual(c.idle, [])
        self.assertEqual(c.lost, [c.proto])

    def test_lostBeforeHead(self):
        """
        A connection lost before any byte of the response fails with
        nothing received; one lost in the middle of the head, with
        something received.
        """
        c = _Connection()
        h = c.send()
        c.lose()
        self.assertEqual(h.events, [("failed", False, False)])
        c = _Connection()
        h = c.send()
        c.receive(b"HTTP/1.1 200 OK\r\n")
        c.lose(ConnectionLost)
        self.assertEqual(h.events, [("failed", True, False)])

    def test_invalidResponse(self):
        """
        An invalid head fails as invalid and aborts the connection.
        """
        c = _Connection()
        h = c.send()
        c.receive(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertEqual(h.events, [("failed", True, True)])
        self.assertTrue(c.transport.disconnected)

    def test_headTooLarge(self):
        """
        A head larger than L{MAX_HEAD_SIZE} is invalid, whether it ends or
        not.
        """
        c = _Connection()
        h = c.send()
        c.receive(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_SIZE)
        self.assertEqual(h.events, [("failed", True, True)])
        c = _Connection()
        h = c.send()
        c.receive(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_SIZE + b"\r\n\r\n")
        self.assertEqual(h.events, [("failed", True, True)])

    def test_truncatedBody(self):
        """
        A body cut short, with a length or chunked, finishes incomplete.
        """
        for response in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n",
        ]:
            c = _Connection()
            h = c.send()
            c.receive(response)
            c.lose(ConnectionLost)
            self.assertEqual(h.events, ["head", ("finished", False)])
            self.assertEqual(h.body, b"hel")

    def test_badChunk(self):
        """
        Malformed chunked data breaks the body off and aborts the
        connection.
        """
        c = _Connection()
        h = c.send()
        c.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.assertEqual(h.events, ["head", ("finished", False)])
        self.assertTrue(c.transport.disconnected)

    def test_pausedThenIdleResumes(self):
        """
        A connection paused by its reader on the last bytes of a body
        reads again once idle, so it sees its next response.
        """
        c = _Connection()

        class Pausing(_Recorder):
            def bodyReceived(self, data):
                _Recorder.bodyReceived(self, data)
                c.proto.pauseProducing()

        h = Pausing()
        c.proto.send(h, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        c.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(h.events[-1], ("finished", True))
        self.assertEqual(c.transport.producerState, "producing")
        self.assertEqual(c.idle, [c.proto])

    def test_detach(self):
        """
        A handler that gives up hears nothing more, and the connection is
        aborted, never reused.
        """
        c = _Connection()
        h = c.send()
        c.proto.detach()
        self.assertTrue(c.transport.disconnected)
        c.lose()
        self.assertEqual(h.events, [])
        self.assertEqual(c.idle, [])

    def test_idleTalkCloses(self):
        """
        Bytes from the backend on an idle connection close it.
        """
        c = _Connection()
        c.receive(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertTrue(c.transport.disconnecting)

    def test_busy(self):
        """
        A connection carries one exchange at a time.
        """
        c = _Connection()
        c.send()
        self.assertRaises(RuntimeError, c.send)

    def test_sendOnLost(self):
        """
        Sending on a lost connection fails at once with nothing received.
        """
        c = _Connection()
        c.lose()
        h = c.send()
        self.assertEqual(h.events, [("failed", False, False)])

    def test_abortWaitsForLoss(self):
        """
        L{UpstreamConnection.abort} fires once the connection is lost.
        """
        c = _Connection()
        d = c.proto.abort()
        self.assertTrue(c.transport.disconnected)
        self.assertNoResult(d)
        c.lose()
        self.successResultOf(d)
        self.successResultOf(c.proto.whenLost())

    def test_lostFreedWithoutCollector(self):
        """
        A connection lost in the middle of an exchange, its read timeout
        armed, is freed by reference counting: its deadline, which calls
        back into it, does not keep it in a cycle.
        """
        proto = UpstreamConnection()
        proto.makeConnection(StringTransport())
        h = _Recorder()
        proto.send(h, b"GET", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        proto.armReadTimeout(Clock(), 5.0)
        withoutCollector(self)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.events, [("failed", False, False)])
        lost = weakref.ref(proto)
        del proto
        self.assertIsNone(lost())


class WriteNowTests(SynchronousTestCase):
    def test_otherTransports(self):
        """
        Any transport but a plain TCP client gets a plain C{write}.
        """
        from lbproxy._client import writeNow

        transport = StringTransport()
        writeNow(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")

    def test_tcpSocket(self):
        """
        On a plain TCP connection with nothing buffered, the data goes to
        the socket at once; what the socket does not take is buffered by
        the transport, and so is anything written while something is
        buffered, in order.
        """
        from lbproxy._client import writeNow

        reactor = _Reactor()
        sock = _TakingSocket(10)
        transport = _tcpServer(sock, reactor)
        writeNow(transport, b"short")
        self.assertEqual((sock.sent, reactor.writing), (b"short", False))
        sock.take = 3
        writeNow(transport, b"longer")
        self.assertEqual((sock.sent, reactor.writing), (b"shortlon", True))
        # "ger" is waiting, written to the transport.
        writeNow(transport, b"queued")
        self.assertEqual(sock.sent, b"shortlon")
        sock.take = 1
        transport.doWrite()
        self.assertEqual((sock.sent, reactor.writing), (b"shortlong", True))
        # "erqueued" is waiting, in the transport's buffer being sent.
        writeNow(transport, b"!")
        self.assertEqual(sock.sent, b"shortlong")
        sock.take = 100
        transport.doWrite()
        self.assertEqual((sock.sent, reactor.writing), (b"shortlongerqueued!", False))
        writeNow(transport, b"again")
        self.assertEqual((sock.sent, reactor.writing), (b"shortlongerqueued!again", False))

    def test_shutDownForWriting(self):
        """
        On a TCP transport whose socket is shut down for writing (after
        C{loseWriteConnection}), the C{send} fails and the data goes to
        C{transport.write}, which drops it: nothing reaches the peer and
        nothing is left buffered.
        """
        import socket

        from lbproxy._client import writeNow

        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        peer.setblocking(False)
        reactor = _Reactor()
        transport = _tcpServer(ours, reactor)
        transport.loseWriteConnection()
        self.assertEqual((reactor.writing, reactor.added), (True, 1))
        # The reactor's turn: nothing is buffered, so the transport shuts its
        # socket down for writing.
        transport.doWrite()
        self.assertFalse(reactor.writing)
        writeNow(transport, b"data")
        self.assertEqual((reactor.writing, reactor.added), (False, 1))
        self.assertEqual(peer.recv(10), b"")


class _Reactor:
    """
    Just enough of a reactor for one TCP transport that it does not run: it
    keeps whether the transport wants to write (has data buffered, or its
    write side to shut down).

    @ivar writing: whether the transport wants to write.
    @ivar added: how many times it started to want to.
    """

    writing = False
    added = 0

    def addReader(self, reader: object) -> None:
        pass

    def removeReader(self, reader: object) -> None:
        pass

    def addWriter(self, writer: object) -> None:
        if not self.writing:
            self.writing = True
            self.added += 1

    def removeWriter(self, writer: object) -> None:
        self.writing = False


class _TakingSocket:
    """
    A connected socket that takes C{take} bytes of each C{send}.

    @ivar sent: what it took.
    """

    def __init__(self, take: int) -> None:
        self.take = take
        self.sent = b""

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def send(self, data: bytes) -> int:
        taken = bytes(data[: self.take])
        self.sent += taken
        return len(taken)


def _tcpServer(sock: Any, reactor: _Reactor) -> Any:
    """
    A Twisted TCP transport (a C{tcp.Server}, as a listening port makes for
    each connection it accepts) on C{sock}, run by C{reactor}.
    """
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    server: Any = None
    fdset: Any = reactor
    return tcp.Server(sock, Protocol(), ("127.0.0.1", 12345), server, 1, fdset)


class ConnectionControlTests(SynchronousTestCase):
    def test_hopByHopKeptApart(self):
        """
        Every hop-by-hop header is one that L{parseHead} keeps apart from
        the end-to-end headers, which lets the proxy pass those on without
        filtering them again.
        """
        from lbproxy._client import _CONNECTION_CONTROL, parseHead
        from lbproxy._headers import HOP_BY_HOP

        self.assertLessEqual(HOP_BY_HOP, _CONNECTION_CONTROL)
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(
            b"%s: x\r\n" % name for name in sorted(HOP_BY_HOP - {b"transfer-encoding"})
        ) + b"X-End: 1"
        parsed = parseHead(head, b"GET")[0]
        self.assertEqual(parsed.headers, [(b"X-End", b"1")])


class HeadEndTests(SynchronousTestCase):
    """
    L{lbproxy._client._headEnd} finds where a response head ends, whatever
    the body after it holds.
    """

    def test_firstEndWins(self) -> None:
        """
        The head ends at its first empty line, CR LF or LF, even when the
        body that follows in the same read holds the other kind.
        """
        from lbproxy._client import _headEnd

        crlfHead = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"
        lfHead = b"HTTP/1.1 200 OK\nA: b\n\n"
        self.assertEqual(_headEnd(crlfHead + b"x\n\ny"), (len(crlfHead) - 4, len(crlfHead)))
        self.assertEqual(_headEnd(lfHead + b"x\r\n\r\ny"), (len(lfHead) - 2, len(lfHead)))
        self.assertEqual(_headEnd(b"HTTP/1.1 200 OK\r\nA: b\r\n"), (-1, -1))

    def test_bounded(self) -> None:
        """
        No end is looked for past L{MAX_HEAD_SIZE}: a body is not scanned,
        and a head that long is refused by the caller anyway.
        """
        from lbproxy._client import MAX_HEAD_SIZE, _headEnd

        head = b"HTTP/1.1 200 OK\r\nA: " + b"b" * (MAX_HEAD_SIZE + 10)
        self.assertEqual(_headEnd(head + b"\r\n\r\n"), (-1, -1))
        self.assertEqual(_headEnd(head + b"\n\n"), (-1, -1))


class _ReadRecorder(_Recorder):
    """
    A L{_Recorder} that also records the ends of reads, with the body
    received by then.
    """

    def headReadDone(self):
        self.events.append(("headReadDone", self.body))

    def bodyReadDone(self):
        self.events.append(("bodyReadDone", self.body))


class ReadDoneTests(SynchronousTestCase):
    """
    The handler is told when a read of the response is done: after the
    read of the head (L{ResponseHandler.headReadDone}), then after each
    later read of a body that goes on (L{ResponseHandler.bodyReadDone}).
    """

    def test_chunked(self):
        """
        Each read of a chunked body that does not end it, however many
        chunks it holds, is followed by one C{bodyReadDone}; the read that
        ends it by none.
        """
        c = _Connection()
        handler = _ReadRecorder()
        c.proto.send(handler, b"GET", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        c.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
        c.receive(b"1\r\nc\r\n1\r\nd\r\n")
        c.receive(b"1\r\ne\r\n0\r\n\r\n")
        self.assertEqual(
            handler.events,
            [
                "head",
                ("headReadDone", b"ab"),
                ("bodyReadDone", b"abcd"),
                ("finished", True),
            ],
        )

    def test_reusedConnection(self):
        """
        When the end of a body lets the connection carry the next request
        at once, the new handler is not told of the old read.
        """
        c = _Connection()
        first = _ReadRecorder()
        c.proto.send(first, b"GET", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        c.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        second = _ReadRecorder()

        def sendNext(proto):
            proto.send(second, b"GET", b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")

        c.proto._onIdle = sendNext
        c.receive(b"cd")
        self.assertEqual(first.events[-1], ("finished", True))
        self.assertEqual(second.events, [])
