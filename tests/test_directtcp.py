# -*- test-case-name: tests.test_directtcp -*-
"""
L{DirectTCPEndpoint} on real sockets on 127.0.0.1 (and ::1 where the
machine has it).

A connection that cannot finish at once is made with a listener whose
accept queue is full (C{listen(0)}, and connections not yet accepted):
the kernel then drops the SYN, and the attempt waits until the queue has
room (the SYN is sent again after a second) or it times out.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionRefusedError,
    TimeoutError,
    getConnectError,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lbproxy import _directtcp
from lbproxy._backend import Backend
from lbproxy._client import writeNow
from lbproxy._compat import nothingBuffered
from lbproxy._connections import backendEndpoint
from lbproxy._directtcp import DirectTCPEndpoint, DirectTransport, connectsDirectly
from lbproxy.testing import RefusingPort

#: How long a test waits for an event before it fails.
WAIT = 10.0


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.made = 0
        self.lost: Deferred[Any] = Deferred()

    def connectionMade(self) -> None:
        self.made += 1

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


class _Listener:
    """
    A plain listening socket, accepted from by hand.
    """

    def __init__(self, test: TestCase, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        test.addCleanup(self.socket.close)
        self.socket.bind((host, 0))
        self.socket.listen(0)
        self.host = host
        self.port = self.socket.getsockname()[1]
        self.accepted: list[socket.socket] = []
        test.addCleanup(lambda: [s.close() for s in self.accepted])

    def fill(self) -> None:
        """
        Fill the accept queue with connections that are not accepted, until
        one more would wait (after one connection on CPython, whose
        C{listen(0)} is that; after two on PyPy, which asks for 1).
        """
        for _ in range(16):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.setblocking(False)
            probe.connect_ex((self.host, self.port))
            if probe.connect_ex((self.host, self.port)) in (0, errno.EISCONN):
                self.accepted.append(probe)
            else:
                probe.close()
                return
        raise RuntimeError("the accept queue does not fill")

    def accept(self) -> socket.socket:
        self.socket.settimeout(WAIT)
        conn, _ = self.socket.accept()
        self.accepted.append(conn)
        return conn


class DirectTCPEndpointTests(TestCase):
    timeout = 30

    def endpoint(self, listener: Any, timeout: float = WAIT) -> DirectTCPEndpoint:
        return DirectTCPEndpoint(reactor, listener.host, listener.port, timeout=timeout)

    def connect(self, endpoint: DirectTCPEndpoint) -> tuple[Deferred[Any], _Recorder]:
        protocol = _Recorder()
        connecting = endpoint.connect(Factory.forProtocol(lambda: protocol))
        return connecting, protocol

    def close(self, protocol: _Recorder) -> Deferred[Any]:
        protocol.transport.loseConnection()
        return protocol.lost

    @inlineCallbacks
    def test_connectedInTheSameTurn(self) -> Any:
        """
        To a listener with room, the protocol is connected and the
        Deferred has fired before C{connect} returns; the transport's peer
        is the listener, and bytes written reach it.
        """
        received: Deferred[bytes] = Deferred()

        class Server(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.callback(data)

        port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = DirectTCPEndpoint(reactor, "127.0.0.1", port.getHost().port)
        connecting, protocol = self.connect(endpoint)
        self.assertIs(self.successResultOf(connecting), protocol)
        self.assertEqual(protocol.made, 1)
        peer = protocol.transport.getPeer()
        self.assertEqual(
            (peer.type, peer.host, peer.port), ("TCP", "127.0.0.1", port.getHost().port)
        )
        protocol.transport.write(b"hello")
        data = yield received.addTimeout(WAIT, reactor)
        self.assertEqual(data, b"hello")
        yield self.close(protocol)

    @inlineCallbacks
    def test_transport(self) -> Any:
        """
        The transport is a L{DirectTransport}, a C{tcp.Server} on the
        socket C{connect} made (its descriptor is that socket's, not a
        copy); its C{repr} names the protocol and the peer; and
        L{writeNow} sends on it straight away, nothing left buffered.
        """
        listener = _Listener(self)
        connecting, protocol = self.connect(self.endpoint(listener))
        self.successResultOf(connecting)
        transport = protocol.transport
        self.assertIsInstance(transport, DirectTransport)
        self.assertIsInstance(transport, tcp.Server)
        self.assertEqual(repr(transport), f"<_Recorder to 127.0.0.1:{listener.port}>")
        self.assertEqual(transport.getHost().host, "127.0.0.1")
        accepted = listener.accept()
        self.assertEqual(accepted.getpeername(), transport.socket.getsockname())
        writeNow(transport, b"at once")
        self.assertTrue(nothingBuffered(transport))
        self.assertEqual(accepted.recv(100), b"at once")
        yield self.close(protocol)

    def test_noProtocol(self) -> None:
        """
        A factory that builds no protocol fails the attempt with
        L{ConnectError}, and the socket is closed: the listener sees the
        connection end.
        """
        listener = _Listener(self)
        endpoint = self.endpoint(listener)
        class Refusing(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        connecting = endpoint.connect(Refusing())
        failure = self.failureResultOf(connecting, ConnectError)
        self.assertIn("no protocol", failure.getErrorMessage())
        accepted = listener.accept()
        accepted.settimeout(WAIT)
        self.assertEqual(accepted.recv(1), b"")

    def test_resetBeforeAdopted(self) -> None:
        """
        A connection reset between C{connect()} and its adoption (the
        peer's address cannot be read) fails the attempt with the
        connection error, and the socket is closed.
        """
        sockets = []

        def reset(sock: socket.socket, factory: Any, address: Any, reactor: Any) -> Any:
            sockets.append(sock)
            raise getConnectError(OSError(errno.ECONNRESET, "Connection reset by peer"))

        self.patch(_directtcp, "_connectedTransport", reset)
        listener = _Listener(self)
        connecting, protocol = self.connect(self.endpoint(listener))
        failure = self.failureResultOf(connecting, ConnectError)
        self.assertIn("reset", failure.getErrorMessage())
        [sock] = sockets
        self.assertEqual(sock.fileno(), -1)
        self.assertEqual(protocol.made, 0)

    def test_peerUnreadable(self) -> None:
        """
        A socket whose peer's address cannot be read (reset, here never
        connected) is a L{ConnectError} for the attempt, and no protocol
        is built for it.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        built = []
        factory = Factory.forProtocol(lambda: built.append(True))  # type: ignore[arg-type,func-returns-value]
        self.assertRaises(
            ConnectError,
            _directtcp._connectedTransport,
            sock,
            factory,
            None,
            reactor,
        )
        self.assertEqual(built, [])

    @inlineCallbacks
    def test_ipv6(self) -> Any:
        """
        An IPv6 address connects the same way.
        """
        if not socket.has_ipv6:
            raise SkipTest("no IPv6")
        try:
            listener = _Listener(self, socket.AF_INET6, "::1")
        except OSError:
            raise SkipTest("no ::1 on this machine") from None
        connecting, protocol = self.connect(self.endpoint(listener))
        self.assertIs(self.successResultOf(connecting), protocol)
        self.assertEqual(protocol.transport.getPeer().host, "::1")
        yield self.close(protocol)

    @inlineCallbacks
    def test_refusedInALaterTurn(self) -> Any:
        """
        A refused connection fails with L{ConnectionRefusedError}, never
        before C{connect} returns.
        """
        refusing = RefusingPort()
        self.addCleanup(refusing.close)
        connecting, protocol = self.connect(self.endpoint(refusing))
        self.assertNoResult(connecting)
        yield self.assertFailure(connecting, ConnectionRefusedError)
        self.assertEqual(protocol.made, 0)

    @inlineCallbacks
    def test_waitsForRoom(self) -> Any:
        """
        To a listener whose accept queue is full, the attempt waits; once
        the queue has room it is connected, and no longer watched by the
        reactor.
        """
        listener = _Listener(self)
        listener.fill()
        connecting, protocol = self.connect(self.endpoint(listener))
        self.assertNoResult(connecting)
        listener.accept()
        result = yield connecting.addTimeout(WAIT, reactor)
        self.assertIs(result, protocol)
        self.assertEqual(protocol.made, 1)
        self.assertNotIn("DirectTCPEndpoint", _watched())
        yield self.close(protocol)

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        An attempt that does not finish within the timeout fails with
        L{TimeoutError} and is no longer watched.
        """
        listener = _Listener(self)
        listener.fill()
        connecting, protocol = self.connect(self.endpoint(listener, timeout=0.2))
        self.assertNoResult(connecting)
        self.assertIn("DirectTCPEndpoint", _watched())
        yield self.assertFailure(connecting, TimeoutError)
        self.assertEqual(protocol.made, 0)
        self.assertNotIn("DirectTCPEndpoint", _watched())

    def test_cancel(self) -> None:
        """
        Cancelling a waiting attempt fails it with
        L{ConnectingCancelledError} naming the address, stops watching
        it and closes its socket.
        """
        listener = _Listener(self)
        listener.fill()
        connecting, protocol = self.connect(self.endpoint(listener))
        connecting.cancel()
        failure = self.failureResultOf(connecting, ConnectingCancelledError)
        self.assertEqual(failure.value.address.port, listener.port)
        self.assertNotIn("DirectTCPEndpoint", _watched())
        self.assertEqual(protocol.made, 0)

    def test_cancelRefused(self) -> None:
        """
        Cancelling a refused attempt before its failure is given cancels
        that failure: the Deferred fails once, with
        L{ConnectingCancelledError}.
        """
        refusing = RefusingPort()
        self.addCleanup(refusing.close)
        connecting, protocol = self.connect(self.endpoint(refusing))
        connecting.cancel()
        self.failureResultOf(connecting, ConnectingCancelledError)
        pending = [c for c in reactor.getDelayedCalls() if "_fail" in repr(c.func)]
        self.assertEqual(pending, [])


class _WatchingClock(Clock):
    """
    A clock that keeps what it is asked to watch, as a reactor would: the
    test then plays the reactor's part (C{doWrite}, C{connectionLost}).
    """

    def __init__(self) -> None:
        Clock.__init__(self)
        self.watched: set[Any] = set()

    def addReader(self, reader: Any) -> None:
        self.watched.add(reader)

    def addWriter(self, writer: Any) -> None:
        self.watched.add(writer)

    def removeReader(self, reader: Any) -> None:
        self.watched.discard(reader)

    def removeWriter(self, writer: Any) -> None:
        self.watched.discard(writer)


def _stringTransport(sock: socket.socket, factory: Any, address: Any, reactor: Any) -> Any:
    """
    Connect the protocol C{factory} builds to a L{StringTransport}, in
    place of the socket that a test's scripted C{connect()} calls never
    connected.
    """
    protocol = factory.buildProtocol(address)
    transport = StringTransport()
    transport.protocol = protocol  # type: ignore[attr-defined]
    protocol.makeConnection(transport)
    return transport


class FailureWhileWaitingTests(SynchronousTestCase):
    """
    An attempt that C{connect} left waiting (on a loaded machine the kernel
    has not answered a loopback SYN by the second C{connect()}), and that
    the reactor then finds failed, in a set order on a L{Clock}.
    """

    def waiting(self, answers: list[int]) -> tuple[_WatchingClock, Any, Deferred[Any]]:
        """
        Start an attempt whose C{connect()} calls answer C{answers} in
        turn: the first two leave it waiting.

        @return: the clock, the attempt the reactor watches, and the
            L{Deferred} of C{connect}.
        """
        script = iter(answers)
        self.patch(_directtcp, "_connectOnce", lambda sock, address: next(script))
        self.patch(_directtcp, "_connectedTransport", _stringTransport)
        clock = _WatchingClock()
        endpoint = DirectTCPEndpoint(clock, "127.0.0.1", 9, timeout=5.0)
        connecting = endpoint.connect(Factory.forProtocol(Protocol))
        self.assertNoResult(connecting)
        [attempt] = clock.watched
        return clock, attempt, connecting

    def test_refusedWhileWaiting(self) -> None:
        """
        The reactor says the socket is writable and C{connect()} says
        refused: the Deferred fails once, with L{ConnectionRefusedError},
        and its timeout is cancelled (left pending, it failed the Deferred
        again when it came: L{AlreadyCalledError} from the reactor).
        """
        clock, attempt, connecting = self.waiting(
            [errno.EINPROGRESS, errno.EALREADY, errno.ECONNREFUSED]
        )
        attempt.doWrite()
        self.failureResultOf(connecting, ConnectionRefusedError)
        self.assertEqual(clock.watched, set())
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(5.0)

    def test_refusedReadThenWrite(self) -> None:
        """
        A refused connection is readable and writable at once: the reactor
        calls C{doRead}, which fails the attempt, then C{doWrite} for the
        same event (Twisted does not check that the descriptor is still
        watched), and C{connectionLost} if that raised.  The Deferred fails
        once, with L{ConnectionRefusedError}; the calls after find the
        attempt over (C{doWrite} used to assert, and the C{connectionLost}
        that followed failed the Deferred again: L{AlreadyCalledError}).
        """
        clock, attempt, connecting = self.waiting(
            [errno.EINPROGRESS, errno.EALREADY, errno.ECONNREFUSED]
        )
        attempt.doRead()
        attempt.doWrite()
        attempt.connectionLost(Failure(ConnectError(string="hang-up")))
        self.failureResultOf(connecting, ConnectionRefusedError)
        self.assertEqual(clock.watched, set())

    def test_madeReadThenWrite(self) -> None:
        """
        Made while waiting, with the read and the write of one event: the
        read adopts the socket and fires the Deferred with the protocol;
        the write, and a C{connectionLost} after it, change nothing.
        """
        clock, attempt, connecting = self.waiting(
            [errno.EINPROGRESS, errno.EALREADY, errno.EISCONN]
        )
        attempt.doRead()
        attempt.doWrite()
        attempt.connectionLost(Failure(ConnectError(string="hang-up")))
        protocol = self.successResultOf(connecting)
        self.assertIsInstance(protocol, Protocol)
        self.assertEqual(clock.watched, set())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lostWhileWaiting(self) -> None:
        """
        The reactor gives up on the socket (an error or a hang-up it
        reports through C{connectionLost}): the Deferred fails once, and
        the timeout is cancelled.
        """
        clock, attempt, connecting = self.waiting([errno.EINPROGRESS, errno.EALREADY])
        clock.watched.clear()
        attempt.connectionLost(Failure(ConnectError(string="hang-up")))
        self.failureResultOf(connecting, ConnectError)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(5.0)


def _watched() -> list[str]:
    """
    The log prefixes of what the reactor watches.
    """
    return [
        getattr(s, "logPrefix", lambda: "")()
        for s in reactor.getReaders() + reactor.getWriters()
    ]


class BackendEndpointTests(SynchronousTestCase):
    """
    Which endpoint L{backendEndpoint} builds for which backend and reactor.
    """

    def test_ipOnARealReactor(self) -> None:
        """
        An IPv4 or IPv6 backend, on a reactor that watches real sockets,
        gets a L{DirectTCPEndpoint}.
        """
        self.assertTrue(connectsDirectly(reactor))
        for host in ("127.0.0.1", "::1"):
            endpoint = backendEndpoint(reactor, Backend(host, 8080), 5.0)
            self.assertIsInstance(endpoint, DirectTCPEndpoint)

    def test_memoryReactor(self) -> None:
        """
        On a L{MemoryReactorClock}, which has no sockets, an IP backend
        gets Twisted's endpoint, whose attempt the test finds in
        C{tcpClients}.
        """
        memory = MemoryReactorClock()
        self.assertFalse(connectsDirectly(memory))
        endpoint = backendEndpoint(memory, Backend("127.0.0.1", 8080), 5.0)
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)

    def test_name(self) -> None:
        """
        A backend given by name gets a L{HostnameEndpoint}, on any
        reactor.
        """
        endpoint = backendEndpoint(reactor, Backend("app.internal", 8080), 5.0)
        self.assertIsInstance(endpoint, HostnameEndpoint)
