"""
Hostile clients and broken backends on real sockets: lbproxy in this
process, raw TCP clients and backends on 127.0.0.1 port 0.

Every wait is on an event (data arrived, connection closed) and bounded by
a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from lbproxy import LoadBalancerService, parseConfigText
from tests.test_site import BAD_REQUESTS

#: The longest any single wait in these tests may take, in seconds.
_WAIT = 10.0


class _RawClient(Protocol):
    """
    A TCP client that keeps everything it receives and can wait, boundedly,
    for a condition on it or for the connection to close.
    """

    transport: Any

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()
        self.isClosed = False
        self._waiters: list[tuple[Callable[[bytes], bool], Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(self.data):
                self._waiters.remove(waiter)
                d.callback(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        self.isClosed = True
        for _, d in self._waiters:
            d.callback(self.data)
        self._waiters = []
        self.closed.callback(self.data)

    def waitFor(self, predicate: Callable[[bytes], bool]) -> Deferred[bytes]:
        """
        Fire with the data received once C{predicate} holds for it or the
        connection closes, whichever comes first; time out after L{_WAIT}.
        """
        d: Deferred[bytes] = Deferred()
        if predicate(self.data) or self.isClosed:
            d.callback(self.data)
        else:
            self._waiters.append((predicate, d))
        return d.addTimeout(_WAIT, reactor)

    def waitClosed(self) -> Deferred[bytes]:
        """
        Fire with all the data received once the connection is closed.
        """
        d: Deferred[bytes] = Deferred()

        def fire(data: bytes) -> bytes:
            if not d.called:
                d.callback(data)
            return data

        self.closed.addCallback(fire)
        return d.addTimeout(_WAIT, reactor)


class _TapChannel(HTTPChannel):
    """
    A backend's channel that records the raw bytes it receives.
    """

    site: Any

    def connectionMade(self) -> None:
        HTTPChannel.connectionMade(self)
        self.site.channels.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.site.raw.append(data)
        HTTPChannel.dataReceived(self, data)


class _Echo(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        body: bytes = request.content.read()
        return b"backend saw %s %s %d" % (request.method, request.uri, len(body))


class _TapSite(Site):
    protocol = _TapChannel  # type: ignore[assignment]
    noisy = False

    def __init__(self) -> None:
        Site.__init__(self, _Echo())
        self.raw: list[bytes] = []
        self.channels: list[Any] = []

    def log(self, request: Any) -> None:
        pass

    def received(self) -> bytes:
        return b"".join(self.raw)


class _RawBackend(Protocol):
    """
    A backend speaking raw bytes: C{factory.behave(protocol, data)} is
    called with all the data received on this connection so far.
    """

    factory: Any

    def connectionMade(self) -> None:
        self.received = b""
        self.index = len(self.factory.connections)
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.factory.behave(self, self.received)


class HardeningTestCase(TestCase):
    timeout = 60

    @inlineCallbacks
    def listen(self, factory: Any) -> Any:
        port = yield _listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def startTapBackend(self) -> Any:
        site = _TapSite()
        port = yield self.listen(site)

        def abortAll() -> None:
            for channel in site.channels:
                channel.transport.abortConnection()

        self.addCleanup(abortAll)
        return site, port

    @inlineCallbacks
    def startRawBackend(self, behave: Callable[[Any, bytes], None]) -> Any:
        factory = Factory.forProtocol(_RawBackend)
        factory.noisy = False
        factory.connections = []  # type: ignore[attr-defined]
        factory.behave = behave  # type: ignore[attr-defined]
        port = yield self.listen(factory)

        def abortAll() -> None:
            for connection in factory.connections:  # type: ignore[attr-defined]
                connection.transport.abortConnection()

        self.addCleanup(abortAll)
        return factory, port

    @inlineCallbacks
    def startProxy(self, backendPort: int, proxyExtra: str = "", upstreamExtra: str = "") -> Any:
        text = (
            "[lbproxy]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
            + proxyExtra
            + f"\n[upstream:app]\nservers = 127.0.0.1:{backendPort}\n"
            + upstreamExtra
            + "\n[vhost:app]\nserver_names = app.example\ndefault = yes\nupstream = app\n"
        )
        service = LoadBalancerService(parseConfigText(text, "test.ini"), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ports = yield service.whenListening()
        self.service = service
        self.port = ports[0].getHost().port
        return service

    @inlineCallbacks
    def connect(self) -> Any:
        client = _RawClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        self.addCleanup(lambda: client.transport.abortConnection() if not client.isClosed else None)
        return client

    @inlineCallbacks
    def exchange(self, data: bytes) -> Any:
        """
        Send C{data} on a new connection; fire with everything received
        once the proxy closes it.
        """
        client = yield self.connect()
        client.transport.write(data)
        received = yield client.waitClosed()
        return received


def _listen(factory: Any) -> Deferred[Any]:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)


def _status(data: bytes) -> int:
    if data[:9] not in (b"HTTP/1.1 ", b"HTTP/1.0 "):
        return 0
    return int(data[9:12])


def _wellFramed(raw: bytes) -> list[tuple[bytes, bytes]]:
    """
    Split what a backend received into C{(head, body)} requests, asserting
    that each is framed by its own Content-Length (or has no body) and
    carries no Transfer-Encoding.
    """
    requests = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.split(b"\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            assert name.lower() not in fields, head
            fields[name.lower()] = value.strip()
        assert b"transfer-encoding" not in fields, head
        length = int(fields.get(b"content-length", b"0"))
        requests.append((head, rest[:length]))
        raw = rest[length:]
    return requests


class SmugglingTests(HardeningTestCase):
    """
    The vector table on real sockets: each gets its status, and the
    backend sees nothing or exactly one well-framed request.
    """

    @inlineCallbacks
    def test_badVectors(self) -> Any:
        """
        Every vector of L{tests.test_site.BAD_REQUESTS} gets one 400 and a
        closed connection, and nothing reaches the backend.
        """
        site, port = yield self.startTapBackend()
        yield self.startProxy(port)
        for name, data in BAD_REQUESTS:
            received = yield self.exchange(data.replace(b"Host: a\r", b"Host: app.example\r"))
            self.assertEqual(_status(received), 400, (name, received))
            self.assertEqual(received.count(b"HTTP/1.1 "), 1, name)
            self.assertEqual(site.received(), b"", name)

    @inlineCallbacks
    def test_goodVectors(self) -> Any:
        """
        Chunked, tab-padded, absolute-form and pipelined requests each reach
        the backend as exactly one request framed by Content-Length.
        """
        site, port = yield self.startTapBackend()
        yield self.startProxy(port)
        cases = [
            (
                b"POST /c HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n",
                b"POST /c HTTP/1.1",
                b"hello world",
            ),
            (
                b"POST /t HTTP/1.1\r\nHost:\tapp.example\r\nContent-Length:\t3 \r\n"
                b"Connection: close\r\n\r\nabc",
                b"POST /t HTTP/1.1",
                b"abc",
            ),
            (
                b"GET http://elsewhere.example:81/a?b HTTP/1.1\r\nHost: app.example\r\n"
                b"Connection: close\r\n\r\n",
                b"GET /a?b HTTP/1.1",
                b"",
            ),
        ]
        for data, line, body in cases:
            before = len(site.received())
            received = yield self.exchange(data)
            self.assertEqual(_status(received), 200, received)
            [(head, seen)] = _wellFramed(site.received()[before:])
            self.assertTrue(head.startswith(line + b"\r\n"), head)
            self.assertEqual(seen, body)
            self.assertIn(b"\r\nHost: app.example", head)
            self.assertNotIn(b"elsewhere", head)

    @inlineCallbacks
    def test_pipelined(self) -> Any:
        """
        Pipelined requests are answered in order; the backend sees each once.
        """
        site, port = yield self.startTapBackend()
        yield self.startProxy(port)
        data = b"".join(
            b"POST /%d HTTP/1.1\r\nHost: app.example\r\nContent-Length: %d\r\n\r\n%s"
            % (i, i, b"x" * i)
            for i in range(1, 6)
        )
        data += b"GET /last HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
        received = yield self.exchange(data)
        positions = [received.index(b"backend saw POST /%d %d" % (i, i)) for i in range(1, 6)]
        self.assertEqual(positions, sorted(positions))
        self.assertIn(b"backend saw GET /last 0", received)
        self.assertEqual(len(_wellFramed(site.received())), 6)

    @inlineCallbacks
    def test_connectAndOpenProxy(self) -> Any:
        """
        CONNECT gets 405; an absolute-form request naming another host goes
        to the configured backend, never to the host it names.
        """
        site, port = yield self.startTapBackend()
        yield self.startProxy(port)
        received = yield self.exchange(
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port, port)
        )
        self.assertEqual(_status(received), 405)
        self.assertEqual(site.received(), b"")
        # A "backend" the request names: nothing may connect to it.
        named, namedPort = yield self.startRawBackend(lambda p, d: None)
        received = yield self.exchange(
            b"GET http://127.0.0.1:%d/x HTTP/1.1\r\nHost: app.example\r\n"
            b"Connection: close\r\n\r\n" % (namedPort,)
        )
        self.assertIn(b"backend saw GET /x 0", received)
        self.assertEqual(named.connections, [])


class LimitTests(HardeningTestCase):
    """
    Size limits, slow clients and max_connections on real sockets.
    """

    @inlineCallbacks
    def test_sizes(self) -> Any:
        """
        431 for a large head, 413 for a large announced body and for a
        chunked body that grows too large; the backend sees nothing.
        """
        site, port = yield self.startTapBackend()
        yield self.startProxy(port, "max_header_size = 1k\nmax_body_size = 100\n")
        received = yield self.exchange(
            b"GET / HTTP/1.1\r\nHost: app.example\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
        )
        self.assertEqual(_status(received), 431)
        received = yield self.exchange(
            b"POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 101\r\n\r\n"
        )
        self.assertEqual(_status(received), 413)
        client = yield self.connect()
        client.transport.write(
            b"POST / HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(3):
            client.transport.write(b"32\r\n" + b"y" * 50 + b"\r\n")
        received = yield client.waitClosed()
        self.assertEqual(_status(received), 413)
        self.assertEqual(site.received(), b"")

    @inlineCallbacks
    def test_slowloris(self) -> Any:
        """
        A client sending its head a byte at a time is cut off after
        client_header_timeout, while another client is served at full
        speed meanwhile.
        """
        site, port = yield self.startTapBackend()
        yield self.startProxy(port, "client_header_timeout = 1s\nkeepalive_timeout = 30s\n")
        slow = yield self.connect()
        head = iter(b"GET / HTTP/1.1\r\nHost: app.example\r\n" + b"X-Slow: 1\r\n" * 1000)
        started = time.monotonic()

        def trickle() -> None:
            byte = next(head, None)
            if byte is not None and not slow.isClosed:
                slow.transport.write(bytes([byte]))

        dripping = LoopingCall(trickle)
        dripping.clock = reactor
        dripping.start(0.05)

        def stopDripping() -> None:
            if dripping.running:
                dripping.stop()

        self.addCleanup(stopDripping)

        fast = yield self.connect()
        durations = []
        for i in range(30):
            begin = time.monotonic()
            fast.transport.write(b"GET /%d HTTP/1.1\r\nHost: app.example\r\n\r\n" % i)
            yield fast.waitFor(lambda d, i=i: b"backend saw GET /%d 0" % i in d)
            durations.append(time.monotonic() - begin)
        received = yield slow.waitClosed()
        elapsed = time.monotonic() - started
        dripping.stop()
        self.assertEqual(_status(received), 408, received)
        self.assertLess(elapsed, 5.0)
        self.assertFalse(fast.isClosed)
        self.assertLess(max(durations), 1.0, durations)
        self.assertNotIn(b"X-Slow", site.received())

    @inlineCallbacks
    def test_bodyTimeout(self) -> Any:
        """
        A body that stops arriving for client_body_timeout gets 408.
        """
        site, port = yield self.startTapBackend()
        yield self.startProxy(port, "client_body_timeout = 500ms\n")
        client = yield self.connect()
        client.transport.write(
            b"POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 10\r\n\r\nabc"
        )
        received = yield client.waitClosed()
        self.assertEqual(_status(received), 408)
        self.assertEqual(site.received(), b"")

    @inlineCallbacks
    def test_maxConnections(self) -> Any:
        """
        With max_connections = 2, a third connection is accepted and closed
        at once without a response; once one closes, a new one is served.
        """
        site, port = yield self.startTapBackend()
        yield self.startProxy(port, "max_connections = 2\n")
        first = yield self.connect()
        second = yield self.connect()
        for client in (first, second):
            client.transport.write(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
            yield client.waitFor(lambda d: b"backend saw" in d)
        third = yield self.connect()
        received = yield third.waitClosed()
        self.assertEqual(received, b"")
        first.transport.loseConnection()
        yield first.waitClosed()
        # The proxy sees the close a little after the client does: retry,
        # boundedly, until it has.
        for _attempt in range(50):
            client = yield self.connect()
            client.transport.write(
                b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
            )
            received = yield client.waitClosed()
            if received:
                break
        self.assertIn(b"backend saw GET / 0", received)
        self.assertFalse(second.isClosed)


_HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"


class BrokenBackendTests(HardeningTestCase):
    """
    Backends that reset, lie, ramble or dawdle.
    """

    @inlineCallbacks
    def get(self, path: bytes = b"/") -> Any:
        received = yield self.exchange(
            b"GET " + path + b" HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
        )
        return received

    @inlineCallbacks
    def test_resetMidResponse(self) -> Any:
        """
        A backend that resets after part of the body makes lbproxy close
        the client connection: no hang, and no ending that looks complete.
        """

        def behave(protocol: Any, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                if b"/chunked" in data:
                    protocol.transport.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n"
                    )
                else:
                    protocol.transport.write(_HEAD_OK + b"x" * 10)
                reactor.callLater(0.05, protocol.transport.abortConnection)

        factory, port = yield self.startRawBackend(behave)
        yield self.startProxy(port)
        received = yield self.get()
        self.assertEqual(_status(received), 200)
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: 100", head)
        self.assertLess(len(body), 100)
        received = yield self.get(b"/chunked")
        self.assertEqual(_status(received), 200)
        self.assertIn(b"hello", received)
        self.assertFalse(received.endswith(b"0\r\n\r\n"), received)

    @inlineCallbacks
    def test_invalidResponses(self) -> Any:
        """
        An invalid status line, garbage, and an oversized response head
        each get 502, not a traceback.
        """
        answers = {
            b"/status": b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
            b"/garbage": b"\x00\x01\x02 garbage garbage\r\n\r\n",
            b"/version": b"HTTP/9 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"/longline": b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100000 + b"\r\n\r\n",
            b"/manylines": b"HTTP/1.1 200 OK\r\n" + b"X-Many: 0123456789\r\n" * 20000 + b"\r\n",
            b"/badlength": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
            b"/twolengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
            b"Content-Length: 6\r\n\r\nhello!",
            b"/xchunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nhello",
            b"/nulheader": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
            b"/crheader": b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: x=1\r\n"
            b"Content-Length: 0\r\n\r\n",
        }

        def behave(protocol: Any, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                path = data.split(b" ", 2)[1]
                protocol.transport.write(answers[path])

        factory, port = yield self.startRawBackend(behave)
        yield self.startProxy(port, upstreamExtra="read_timeout = 5s\n")
        for path in answers:
            received = yield self.get(path)
            self.assertEqual(_status(received), 502, (path, received[:200]))
            self.assertNotIn(b"Traceback", received)

    @inlineCallbacks
    def test_lengthAndChunkedResponse(self) -> Any:
        """
        A response with both Content-Length and Transfer-Encoding is read
        by its chunking (RFC 9112 6.3) and reaches the client framed one
        way only.
        """

        def behave(protocol: Any, data: bytes) -> None:
            if data.endswith(b"\r\n\r\n"):
                protocol.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                )

        factory, port = yield self.startRawBackend(behave)
        yield self.startProxy(port)
        received = yield self.get()
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertEqual(_status(received), 200)
        self.assertNotIn(b"content-length", head.lower())
        self.assertEqual(body, b"5\r\nhello\r\n0\r\n\r\n")

    @inlineCallbacks
    def test_keepaliveRace(self) -> Any:
        """
        The backend closes a pooled keep-alive connection just as it is
        reused: the idempotent request is retried on a fresh connection and
        the client sees nothing of it.
        """

        def behave(protocol: Any, data: bytes) -> None:
            requests = data.count(b"\r\n\r\n")
            if protocol.index == 0 and requests == 2:
                # The second request on the first connection: close as if
                # the keep-alive timeout had just fired.
                protocol.transport.loseConnection()
            elif data.endswith(b"\r\n\r\n"):
                protocol.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        factory, port = yield self.startRawBackend(behave)
        yield self.startProxy(port, upstreamExtra="keepalive = 4\n")
        client = yield self.connect()
        for i in range(2):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: app.example\r\n\r\n" % i)
            received = yield client.waitFor(lambda d, i=i: d.count(b"\r\n\r\nok") == i + 1)
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), 2, received)
        self.assertEqual(len(factory.connections), 2)
        self.assertEqual(factory.connections[0].received.count(b"\r\n\r\n"), 2)
        self.assertFalse(client.isClosed)

    @inlineCallbacks
    def test_keepaliveRaceNotIdempotent(self) -> Any:
        """
        The same race with a POST: the request may have been processed, so
        it is not sent again; the client gets 502.
        """

        def behave(protocol: Any, data: bytes) -> None:
            if protocol.index == 0 and data.count(b"\r\n\r\n") == 2 and data.endswith(b"abc"):
                protocol.transport.loseConnection()
            elif data.endswith(b"\r\n\r\n") or data.endswith(b"abc"):
                protocol.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        factory, port = yield self.startRawBackend(behave)
        yield self.startProxy(port, upstreamExtra="keepalive = 4\n")
        client = yield self.connect()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
        yield client.waitFor(lambda d: d.endswith(b"\r\n\r\nok"))
        client.transport.write(
            b"POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\n\r\nabc"
        )
        received = yield client.waitFor(lambda d: b"HTTP/1.1 502" in d and d.endswith(b"</html>\n"))
        self.assertIn(b"HTTP/1.1 502", received)
        self.assertEqual(len(factory.connections), 1)

    @inlineCallbacks
    def test_slowHead(self) -> Any:
        """
        A backend that sends its response head a byte at a time gets 504
        after read_timeout.
        """
        calls: list[Any] = []

        def behave(protocol: Any, data: bytes) -> None:
            if b"\r\n\r\n" not in data or calls:
                return
            head = iter(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: 1\r\n" * 1000)

            def drip() -> None:
                byte = next(head, None)
                if byte is not None and protocol.transport.connected:
                    protocol.transport.write(bytes([byte]))

            call = LoopingCall(drip)
            call.clock = reactor
            call.start(0.02)
            calls.append(call)

        factory, port = yield self.startRawBackend(behave)
        self.addCleanup(lambda: [c.stop() for c in calls if c.running])
        yield self.startProxy(port, upstreamExtra="read_timeout = 500ms\n")
        started = time.monotonic()
        received = yield self.get()
        self.assertEqual(_status(received), 504, received[:200])
        self.assertLess(time.monotonic() - started, 5.0)

