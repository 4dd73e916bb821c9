"""
Tests for L{lbproxy._site}: what the client side refuses, its limits and
timeouts, driven over a L{StringTransport} with a L{MemoryReactorClock}.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import ProxySite
from lbproxy.testing import ProxyHarness

_PEER = IPv4Address("TCP", "192.0.2.1", 4321)


class Recorder(Resource):
    """
    A leaf resource that records every request it renders and answers
    C{ok}, or waits on a L{Deferred} when C{hold} is set.
    """

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.seen: list[tuple[bytes, bytes, Any, bytes]] = []
        self.hold = False
        self.held: list[tuple[Any, Deferred[None]]] = []

    def render(self, request: Any) -> Any:
        self.seen.append(
            (request.method, request.uri, request.requestHeaders, request.content.read())
        )
        if self.hold:
            d: Deferred[None] = Deferred()
            self.held.append((request, d))

            def answer(_: None) -> None:
                request.write(b"late:" + request.uri)
                request.finish()

            d.addCallback(answer)
            return NOT_DONE_YET
        return b"ok:" + request.uri


class _Harness:
    """
    A L{Recorder} served by a L{ProxySite} on
    L{lbproxy.testing.ProxyHarness}.
    """

    def __init__(self, testCase: SynchronousTestCase, **siteArgs: Any) -> None:
        self.proxy = ProxyHarness(Recorder(), **siteArgs)
        testCase.addCleanup(self.proxy.close)
        self.reactor = self.proxy.reactor
        self.resource = self.proxy.resource
        self.site = self.proxy.site

    def connect(self) -> tuple[Any, StringTransport]:
        connection = self.proxy.connect(_PEER)
        return connection.protocol, connection.transport


def _status(output: bytes) -> int:
    """
    The status code of the first response in C{output}, 0 if none.
    """
    if not output.startswith(b"HTTP/1.1 "):
        return 0
    return int(output[9:12])


#: (name, request bytes): each must get 400 and reach no resource.
BAD_REQUESTS = [
    (
        "CL and TE",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE and CL",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "differing CLs",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!",
    ),
    (
        "CL list",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    ),
    ("CL sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"),
    ("CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello"),
    (
        "TE chunked, identity",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
        b"0\r\n\r\n",
    ),
    (
        "TE identity",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
    ),
    (
        "TE xchunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE twice",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE space before colon",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE tab before colon",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE vertical tab",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE obs-fold",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "obs-fold elsewhere",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\t2\r\n\r\n",
    ),
    (
        "TE in HTTP/1.0",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "chunk size overflow",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk size sign",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"+5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk size negative",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"-5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk size 0x",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0x5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk size space",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5 \r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk missing CRLF",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhelloX0\r\n\r\n",
    ),
    (
        "chunk size bare LF",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\nhello\r\n0\r\n\r\n",
    ),
    ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n"),
    ("CR in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n"),
    ("LF in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\nX-B: b\r\n\r\n"),
    ("NUL in name", b"GET / HTTP/1.1\r\nHost: a\r\nX\x00A: b\r\n\r\n"),
    ("LF in name", b"GET / HTTP/1.1\r\nHost: a\r\nX\nA: b\r\n\r\n"),
    ("space before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"),
    ("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"),
    ("no colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A b\r\n\r\n"),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("no Host in 1.1", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n"),
    ("Host with space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
    ("Host with slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
    ("Host with at", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"),
    ("Host with comma", b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n"),
    ("Host bad port", b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n"),
    ("Host with high byte", b"GET / HTTP/1.1\r\nHost: \xc3\xa9.a\r\n\r\n"),
    ("bad request line", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("bad version", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
    ("relative target", b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("ftp target", b"GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("only LFs", b"GET / HTTP/1.1\nHost: a\n\n"),
]


class SmugglingTests(SynchronousTestCase):
    """
    Every ambiguous or malformed request is refused with 400 and the
    connection closed, before anything reaches the resource.
    """

    def test_badRequests(self) -> None:
        """
        Each vector of L{BAD_REQUESTS}, sent whole or a byte at a time,
        gets exactly one 400 page and a closed connection; the resource
        sees nothing.
        """
        for name, data in BAD_REQUESTS:
            for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
                h = _Harness(self)
                channel, transport = h.connect()
                for piece in pieces:
                    channel.dataReceived(piece)
                output = transport.value()
                self.assertEqual(_status(output), 400, (name, output))
                self.assertEqual(output.count(b"HTTP/1.1 "), 1, (name, output))
                self.assertIn(b"Connection: close\r\n", output, name)
                self.assertTrue(transport.disconnecting, name)
                self.assertEqual(h.resource.seen, [], name)
                channel.connectionLost(None)

    def test_chunkedReframed(self) -> None:
        """
        A well-formed chunked body (with extensions and trailers) arrives
        whole at the resource; the C{Transfer-Encoding} header stays on the
        request, for the proxy to drop as hop-by-hop.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        self.assertEqual(_status(transport.value()), 200)
        [(method, uri, headers, body)] = h.resource.seen
        self.assertEqual(body, b"hello world")

    def test_tabAroundValueAllowed(self) -> None:
        """
        Spaces and tabs around a value are optional whitespace, not a trick.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost:\ta \r\nContent-Length:\t5\t\r\n\r\nhello"
        )
        self.assertEqual(_status(transport.value()), 200)
        self.assertEqual(h.resource.seen[0][3], b"hello")

    def test_validHosts(self) -> None:
        """
        Names, IPv4 and IPv6 addresses, with or without a port, and an
        HTTP/1.0 request without Host, are accepted.
        """
        for host in [b"a.example", b"a.example:8080", b"192.0.2.1:80", b"[::1]:8080",
                     b"under_score.example", b"a.example."]:
            h = _Harness(self)
            channel, transport = h.connect()
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            self.assertEqual(_status(transport.value()), 200, host)
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.0 200"), transport.value())

    def test_pipelinedInOrder(self) -> None:
        """
        Pipelined requests are answered in order, even when the first one
        is answered last; the second is not even parsed before the first
        is done.
        """
        h = _Harness(self)
        h.resource.hold = True
        channel, transport = h.connect()
        channel.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual([s[1] for s in h.resource.seen], [b"/1"])
        h.resource.held[0][1].callback(None)
        self.assertEqual([s[1] for s in h.resource.seen], [b"/1", b"/2"])
        h.resource.held[1][1].callback(None)
        h.resource.held[2][1].callback(None)
        output = transport.value()
        self.assertEqual(output.count(b"HTTP/1.1 200"), 3)
        first, second, third = (output.index(b"late:/%d" % i) for i in (1, 2, 3))
        self.assertTrue(first < second < third, output)
        self.assertEqual(h.resource.seen[1][3], b"abc")

    def test_pipelinedAfterBodyAnsweredAtOnce(self) -> None:
        """
        A request pipelined in the same read after one with a body that is
        answered at once is read and answered too, not refused as if its
        lines ended with a bare LF.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        output = transport.value()
        self.assertEqual(output.count(b"HTTP/1.1 200"), 2, output)
        self.assertLess(output.index(b"ok:/1"), output.index(b"ok:/2"))
        self.assertFalse(transport.disconnecting)
        self.assertEqual([s[1] for s in h.resource.seen], [b"/1", b"/2"])

    def test_badPipelinedAfterGood(self) -> None:
        """
        A bad request pipelined after a good one gets its 400 only after
        the good one's response.
        """
        h = _Harness(self)
        h.resource.hold = True
        channel, transport = h.connect()
        channel.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"")
        h.resource.held[0][1].callback(None)
        output = transport.value()
        self.assertTrue(output.startswith(b"HTTP/1.1 200"), output)
        self.assertIn(b"HTTP/1.1 400", output)
        self.assertLess(output.index(b"late:/1"), output.index(b"HTTP/1.1 400"))
        self.assertEqual(len(h.resource.seen), 1)


class OpenProxyTests(SynchronousTestCase):
    """
    lbproxy is never an open proxy.
    """

    def test_absoluteFormReduced(self) -> None:
        """
        An absolute-form target is reduced to its path and query; the
        resource sees an origin-form request.
        """
        for target, expected in [
            (b"http://elsewhere.example/x?y=1", b"/x?y=1"),
            (b"HTTPS://elsewhere.example:8443", b"/"),
            (b"http://elsewhere.example?q", b"/?q"),
        ]:
            h = _Harness(self)
            channel, transport = h.connect()
            channel.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(_status(transport.value()), 200)
            [(method, uri, headers, body)] = h.resource.seen
            self.assertEqual(uri, expected)

    def test_connectRefused(self) -> None:
        """
        CONNECT gets 405 and the connection is closed, whatever its case.
        """
        for method in [b"CONNECT", b"connect"]:
            h = _Harness(self)
            channel, transport = h.connect()
            channel.dataReceived(
                method + b" elsewhere.example:443 HTTP/1.1\r\n"
                b"Host: elsewhere.example:443\r\n\r\n\x16\x03\x01"
            )
            output = transport.value()
            self.assertEqual(_status(output), 405, output)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(h.resource.seen, [])


class LimitTests(SynchronousTestCase):
    """
    max_header_size, max_body_size and max_connections.
    """

    def test_headTooLarge(self) -> None:
        """
        A head larger than the limit, in one line or in many, gets 431.
        """
        for head in [
            b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: 1234567890\r\n" * 200 + b"\r\n",
        ]:
            h = _Harness(self, maxHeaderSize=1024)
            channel, transport = h.connect()
            channel.dataReceived(head)
            self.assertEqual(_status(transport.value()), 431)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(h.resource.seen, [])

    def test_announcedBodyTooLarge(self) -> None:
        """
        A Content-Length beyond max_body_size gets 413 at once, and no
        100 Continue follows it.
        """
        h = _Harness(self, maxBodySize=10)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        output = transport.value()
        self.assertEqual(_status(output), 413)
        self.assertNotIn(b"100 Continue", output)
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"x" * 11)
        self.assertEqual(h.resource.seen, [])

    def test_chunkedBodyTooLarge(self) -> None:
        """
        A chunked body growing past max_body_size gets 413 as soon as it
        does; the resource sees nothing.
        """
        h = _Harness(self, maxBodySize=10)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nabcdef\r\n"
        )
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"6\r\nabcdef\r\n0\r\n\r\n")
        self.assertEqual(_status(transport.value()), 413)
        self.assertEqual(h.resource.seen, [])

    def test_bodyAtLimit(self) -> None:
        """
        A body of exactly max_body_size passes.
        """
        h = _Harness(self, maxBodySize=10)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"
        )
        self.assertEqual(_status(transport.value()), 200)
        self.assertEqual(h.resource.seen[0][3], b"0123456789")

    def test_maxConnections(self) -> None:
        """
        Beyond max_connections a new connection is closed at once (the
        factory builds no protocol); once one closes, the next is accepted.
        """
        h = _Harness(self, maxConnections=2)
        first, _ = h.connect()
        h.connect()
        self.assertIsNone(h.site.buildProtocol(_PEER))
        self.assertEqual(h.site.connectionsRefused, 1)
        first.connectionLost(None)
        self.assertIsNotNone(h.site.buildProtocol(_PEER))

    def test_noConnectionLimit(self) -> None:
        """
        max_connections = 0 means no limit.
        """
        h = _Harness(self, maxConnections=0)
        for _ in range(50):
            h.connect()
        self.assertIsNotNone(h.site.buildProtocol(_PEER))


class TimeoutTests(SynchronousTestCase):
    """
    client_header_timeout, client_body_timeout and keepalive_timeout, on
    the injected clock.
    """

    def test_headerTimeout(self) -> None:
        """
        A head trickling in a byte at a time is cut off with 408 once
        client_header_timeout has passed since it began, however often
        bytes arrive.
        """
        h = _Harness(self, clientHeaderTimeout=10, keepaliveTimeout=75)
        channel, transport = h.connect()
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\n":
            channel.dataReceived(bytes([byte]))
            h.reactor.advance(0.5)
            if transport.disconnecting:
                break
        self.assertEqual(_status(transport.value()), 408)
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(h.reactor.seconds(), 10.5)
        self.assertEqual(h.resource.seen, [])

    def test_silentConnection(self) -> None:
        """
        A connection that sends nothing is closed after
        client_header_timeout.
        """
        h = _Harness(self, clientHeaderTimeout=10, keepaliveTimeout=75)
        channel, transport = h.connect()
        h.reactor.advance(9.9)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_headInTime(self) -> None:
        """
        A head that arrives in time is served, and the timer does not fire
        later.
        """
        h = _Harness(self, clientHeaderTimeout=10, keepaliveTimeout=75)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        h.reactor.advance(9)
        channel.dataReceived(b"Host: a\r\n\r\n")
        self.assertEqual(_status(transport.value()), 200)
        h.reactor.advance(30)
        self.assertFalse(transport.disconnecting)
        self.assertNotIn(b"408", transport.value())

    def test_idleUsesKeepalive(self) -> None:
        """
        Between requests an idle connection is kept for keepalive_timeout,
        not client_header_timeout; the next head then gets its own
        client_header_timeout.
        """
        h = _Harness(self, clientHeaderTimeout=10, keepaliveTimeout=30)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        h.reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"GET /2 HTTP/1.1\r\n")
        h.reactor.advance(9.5)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(1)
        self.assertEqual(transport.value().count(b"HTTP/1.1 408"), 1)
        self.assertTrue(transport.disconnecting)

    def test_keepaliveTimeout(self) -> None:
        """
        An idle keep-alive connection is closed after keepalive_timeout.
        """
        h = _Harness(self, clientHeaderTimeout=10, keepaliveTimeout=30)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        h.reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"408", transport.value())

    def test_bodyTimeout(self) -> None:
        """
        A body that pauses longer than client_body_timeout gets 408; one
        that keeps coming, however slowly overall, does not.
        """
        h = _Harness(self, clientHeaderTimeout=10, clientBodyTimeout=5)
        channel, transport = h.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n")
        for _ in range(10):
            h.reactor.advance(4)
            channel.dataReceived(b"x")
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(5.1)
        self.assertEqual(_status(transport.value()), 408)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.resource.seen, [])

    def test_slowResponseNotTimedOut(self) -> None:
        """
        While the request is being handled (the backend is slow), neither
        client timeout runs.
        """
        h = _Harness(self, clientHeaderTimeout=10, clientBodyTimeout=5,
                     keepaliveTimeout=30)
        h.resource.hold = True
        channel, transport = h.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        h.reactor.advance(100)
        self.assertFalse(transport.disconnecting)
        h.resource.held[0][1].callback(None)
        self.assertEqual(_status(transport.value()), 200)


class VirtualHostAbsoluteFormTests(SynchronousTestCase):
    """
    L{VirtualHostResource} routes an absolute-form request by its Host and
    path even under a plain L{twisted.web.server.Site}.
    """

    def test_routedByHostNotTarget(self) -> None:
        from twisted.web.test.requesthelper import DummyRequest

        from lbproxy._vhost import VirtualHost, VirtualHostResource, originForm

        app, other = Recorder(), Recorder()
        root = VirtualHostResource(
            [
                VirtualHost("app", ["app.example"], {b"/": app}),
                VirtualHost("other", ["elsewhere.example"], {b"/": other}),
            ]
        )
        request: Any = DummyRequest([])
        request.uri = b"http://elsewhere.example/x?y"
        request.path = b"http://elsewhere.example/x"
        request.requestHeaders.setRawHeaders(b"host", [b"app.example"])
        request.content = BytesIO(b"")
        self.assertEqual(root.render(request), b"ok:/x?y")
        self.assertEqual(other.seen, [])
        self.assertEqual(originForm(b"/plain"), b"/plain")
        self.assertEqual(originForm(b"http://a:1"), b"/")
        self.assertEqual(originForm(b"https://a?q"), b"/?q")


class ServiceWiringTests(SynchronousTestCase):
    """
    The [lbproxy] limits reach the service's L{ProxySite} and its channels.
    """

    def test_configReachesChannels(self) -> None:
        from lbproxy import LoadBalancerService, parseConfigText

        config = parseConfigText(
            "[lbproxy]\nlisten = tcp:0:interface=127.0.0.1\nmax_connections = 7\n"
            "client_header_timeout = 3s\nclient_body_timeout = 4s\n"
            "keepalive_timeout = 5s\nmax_body_size = 6k\nmax_header_size = 2k\n"
            "send_timeout = 8s\n",
            "site.ini",
        )
        service = LoadBalancerService(config, MemoryReactorClock())
        site = service.site
        self.assertEqual(
            (site.maxConnections, site.clientHeaderTimeout, site.clientBodyTimeout,
             site.timeOut, site.maxBodySize, site.maxHeaderSize, site.sendTimeout),
            (7, 3.0, 4.0, 5.0, 6144, 2048, 8.0),
        )
        channel = site.buildProtocol(_PEER)
        self.assertEqual(
            (channel.clientHeaderTimeout, channel.clientBodyTimeout,
             channel.maxBodySize, channel.totalHeadersSize, channel.sendTimeout),
            (3.0, 4.0, 6144, 2048, 8.0),
        )


#: Requests that are accepted; each is served the same whether its head is
#: read whole (in one pass) or line by line.
GOOD_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a?b=c HTTP/1.1\r\nHost: a.example:8080\r\nUser-Agent: x\r\n"
    b"Accept: */*\r\nX-Dup: 1\r\nx-dup: 2\r\nX-DUP:3\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET http://elsewhere/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"get /lower HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\ta \r\nX-Empty:\r\nX-Spaces:   \r\n"
    b"X-High: caf\xc3\xa9\xff\r\nX-Tab: a\tb\r\n\r\n",
    b"GET /%7e~!$'()*+,;=:@ HTTP/1.1\r\nHost: a\r\nCookie: a=1; b=2\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: a\r\ncontent-length:\t0 \r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
    b"POST /p HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    # Left to the line-by-line path by the one-pass reader, and accepted.
    b"\r\nGET /after-empty-line HTTP/1.1\r\nHost: a\r\n\r\n",
]


class WholeHeadTests(SynchronousTestCase):
    """
    A request gets the same outcome, good or bad, whether its bytes arrive
    in one read, a byte at a time, or split anywhere.
    """

    def _serve(self, pieces: list[bytes], **siteArgs: Any) -> tuple[bytes, list[Any]]:
        h = _Harness(self, **siteArgs)
        channel, transport = h.connect()
        for piece in pieces:
            channel.dataReceived(piece)
        seen = [
            (method, uri, list(headers.getAllRawHeaders()), body)
            for method, uri, headers, body in h.resource.seen
        ]
        return transport.value(), seen

    def _assertSame(self, data: bytes, **siteArgs: Any) -> tuple[bytes, list[Any]]:
        """
        C{data} gets the same response and reaches the resource the same
        way whole, a byte at a time, and in two pieces split anywhere.
        """
        whole = self._serve([data], **siteArgs)
        byByte = self._serve([data[i : i + 1] for i in range(len(data))], **siteArgs)
        self.assertEqual(whole, byByte, data)
        for i in range(1, len(data)):
            self.assertEqual(self._serve([data[:i], data[i:]], **siteArgs), whole, (data, i))
        return whole

    def test_oneReadIsServed(self) -> None:
        """
        A complete, clean head in one read is served at once, its headers
        as sent.
        """
        h = _Harness(self)
        channel, transport = h.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\n")
        self.assertEqual(_status(transport.value()), 200)
        self.assertEqual(
            h.resource.seen[0][2].getRawHeaders(b"x-a"), [b"b"]
        )

    def test_goodRequests(self) -> None:
        """
        Every request of L{GOOD_REQUESTS} is served, identically whole, a
        byte at a time or split in two anywhere.
        """
        for data in GOOD_REQUESTS:
            output, seen = self._assertSame(data)
            self.assertIn(b" 200 OK\r\n", output, data)
            self.assertNotIn(b"Connection: close\r\n\r\n<html>", output, data)
            # OPTIONS * is answered by the site, not the resource.
            self.assertEqual(len(seen), 0 if b" * " in data else 1, data)

    def test_ampersandInName(self) -> None:
        """
        C{&} in a header name, a token character that Twisted 24.7 refuses
        and later versions accept, is left to the line-by-line path.
        """
        self._assertSame(b"GET / HTTP/1.1\r\nHost: a\r\nX-Amp&: 1\r\n\r\n")

    def test_badRequests(self) -> None:
        """
        Every vector of L{BAD_REQUESTS} gets the same refusal split in two
        anywhere as whole or a byte at a time.
        """
        for name, data in BAD_REQUESTS:
            output, seen = self._assertSame(data)
            self.assertEqual(_status(output), 400, name)
            self.assertEqual(seen, [], name)

    def test_pipelinedOneRead(self) -> None:
        """
        Several requests in one read, answered as soon as they are read,
        are each read and answered in order; nothing after a request that
        closes the connection is read.
        """
        data = b"".join(GOOD_REQUESTS[:2] + GOOD_REQUESTS[10:14]) + (
            b"GET /close HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        output, seen = self._assertSame(data)
        self.assertEqual(
            [uri for _, uri, _, _ in seen], [b"/", b"/a?b=c", b"/p", b"/p", b"/p", b"/p", b"/close"]
        )
        self.assertEqual(output.count(b"HTTP/1.1 200"), 7)
        self.assertNotIn(b"/never", output)

    def test_headSizeLimit(self) -> None:
        """
        Around C{maxHeaderSize}, a head is accepted or refused with 431 the
        same way whole as line by line.
        """
        base = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: "
        statuses = set()
        for pad in range(1000 - len(base) - 8, 1000 - len(base) + 8):
            data = base + b"p" * pad + b"\r\n\r\n"
            whole = self._serve([data], maxHeaderSize=1000)
            byByte = self._serve(
                [data[i : i + 1] for i in range(len(data))], maxHeaderSize=1000
            )
            self.assertEqual(whole, byByte, pad)
            statuses.add(_status(whole[0]))
        self.assertEqual(statuses, {200, 431})

    def test_tooManyHeaders(self) -> None:
        """
        More headers than C{maxHeaders} are refused whole as line by line.
        """
        data = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 500 + b"\r\n"
        whole = self._serve([data], maxHeaderSize=65536)
        self.assertEqual(_status(whole[0]), 400)
        self.assertEqual(
            whole,
            self._serve([data[i : i + 7] for i in range(0, len(data), 7)], maxHeaderSize=65536),
        )


class ResourceTreeTests(SynchronousTestCase):
    """
    A L{ProxySite} whose root is not a leaf traverses it as a L{Site} does.
    """

    def test_noTwistedServerHeader(self) -> None:
        """
        A resource found by traversal answers without the C{Server} header
        naming Twisted's version, but with a C{Date}; a C{Server} header the
        resource sets itself is kept.
        """
        root = Resource()
        plain = Resource()
        plain.render_GET = lambda request: b"plain"  # type: ignore[attr-defined]
        own = Resource()

        def renderOwn(request: Any) -> bytes:
            request.setHeader(b"server", b"mine")
            return b"own"

        own.render_GET = renderOwn  # type: ignore[attr-defined]
        root.putChild(b"plain", plain)
        root.putChild(b"own", own)
        reactor = MemoryReactorClock()
        site = ProxySite(root, reactor=reactor)
        channel = site.buildProtocol(_PEER)
        transport = StringTransport(peerAddress=_PEER)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        output = transport.value()
        self.assertTrue(output.startswith(b"HTTP/1.1 200 OK\r\n"), output)
        self.assertTrue(output.endswith(b"plain"), output)
        self.assertNotIn(b"\r\nServer:", output)
        self.assertIn(b"\r\nDate:", output)
        transport.clear()
        channel.dataReceived(b"GET /own HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b"\r\nServer: mine\r\n", transport.value())
        channel.connectionLost(None)
