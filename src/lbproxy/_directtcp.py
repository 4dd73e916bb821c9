# -*- test-case-name: tests.test_directtcp -*-
"""
A TCP client endpoint that hands over the connection in the turn that
opened it, when the backend accepts at once.

C{reactor.connectTCP} (under L{TCP4ClientEndpoint}) takes at least two
more turns of the reactor before the protocol is connected: it starts
the attempt from a C{callLater(0)}, and then waits for the socket to be
writable, although to a backend on the same host or the same network
C{connect()} has finished by the time it is asked again.  Under load a
turn is a whole batch of other connections' work, so each of those turns
adds milliseconds to the request that had to open a connection: to
every request to a backend that has just joined a pool (see
C{benchmarks/membership.py}), and after every idle connection that
expired.

L{DirectTCPEndpoint} starts the non-blocking C{connect()} itself, asks
once more at once, and when the connection is made wraps the socket in a
L{DirectTransport} (a C{tcp.Server}, which is what
L{IReactorSocket.adoptStreamConnection} would build): the protocol is
connected, and the L{Deferred} fired, before C{connect} returns.
Otherwise it waits for the socket like Twisted does (the reactor tells
when it is writable, or has an error), with the same timeout, and a
cancelled attempt is closed.  A failure is given in a later turn, never
before C{connect} returns, so that a caller trying backend after backend
does not recurse.

Twisted has no public way to do this: the connector of C{connectTCP}
makes the socket itself and always goes through those turns.

The transport is a server-side one (C{tcp.Server}): it behaves the same
for a protocol, except that it has no C{connector}, and that the
factory's C{doStart} and C{doStop} are not called (lbproxy's connection
factories do nothing there).

Why not C{adoptStreamConnection} itself: it takes a file descriptor, not
the socket, so it duplicates the descriptor (C{socket.fromfd}), asks the
kernel for both ends' addresses, and the caller then closes its own copy:
three system calls and a socket object more than the connection needs.
Without them, and with the socket made non-blocking as it is made, a
connect on loopback takes the endpoint 0.81 to 0.85 of the time it took
(the medians of 10 and 12 rounds' ratios, C{benchmarks/connect.py
--against} the version before).  L{DirectTransport}
builds the same C{tcp.Server} from the socket it has (the constructor
C{adoptStreamConnection} calls), and asks only for the peer's address,
which also finds a connection reset since C{connect()}.
"""

from __future__ import annotations

import socket
from errno import EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from os import strerror
from typing import Any, Optional

from twisted.internet.abstract import isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    TimeoutError,
    getConnectError,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IReadWriteDescriptor,
    IStreamClientEndpoint,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.tcp import Server
from twisted.python.failure import Failure
from zope.interface import implementer

#: What C{connect_ex} answers while the handshake is still going on.
_PENDING = frozenset((EINPROGRESS, EALREADY, EWOULDBLOCK))

#: What it answers once the connection is made.
_DONE = frozenset((0, EISCONN))

#: The socket type flag that makes a socket non-blocking as it is made,
#: where the system has one.
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)


def connectsDirectly(reactor: Any) -> bool:
    """
    Whether L{DirectTCPEndpoint} can work with C{reactor}: one that
    watches real file descriptors and adopts real sockets.

    The check is on the class, not on L{IReactorSocket} and
    L{IReactorFDSet}: L{twisted.internet.testing.MemoryReactor} provides
    both without any socket behind them, and a test on it expects the
    attempt in its C{tcpClients}.
    """
    return isinstance(reactor, PosixReactorBase)


@implementer(IStreamClientEndpoint)
class DirectTCPEndpoint:
    """
    Connects to an IPv4 or IPv6 address, in the same turn when it can.
    """

    def __init__(self, reactor: Any, host: str, port: int, timeout: float = 30.0) -> None:
        """
        @param reactor: a reactor for which L{connectsDirectly} is true.
        @param host: an IPv4 or IPv6 address (not a name).
        @param port: the TCP port.
        @param timeout: seconds to wait for the connection.
        """
        self._reactor = reactor
        self._timeout = timeout
        if isIPv6Address(host):
            self._family = socket.AF_INET6
            self._peer: Any = IPv6Address("TCP", host, port)
        else:
            self._family = socket.AF_INET
            self._peer = IPv4Address("TCP", host, port)
        self._address = (host, port)

    def __repr__(self) -> str:
        return f"<DirectTCPEndpoint {self._address[0]}:{self._address[1]}>"

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """
        Connect, and fire with the protocol C{protocolFactory} built.
        """
        try:
            # Non-blocking from the start where the system can (Linux): one
            # system call, not two.
            sock = socket.socket(self._family, socket.SOCK_STREAM | _NONBLOCK)
        except OSError as e:
            return fail(getConnectError(e))
        if not _NONBLOCK:
            sock.setblocking(False)
        attempt = _Attempt(self, sock, protocolFactory)
        result = _connectOnce(sock, self._address)
        if result in _PENDING:
            # On loopback the handshake is over by now.
            result = _connectOnce(sock, self._address)
        if result in _DONE:
            return attempt.adopt()
        if result in _PENDING:
            attempt.wait(self._timeout)
        else:
            attempt.failLater(getConnectError((result, strerror(result))))
        return attempt.deferred


class DirectTransport(Server):
    """
    The transport of a connection L{DirectTCPEndpoint} made: a
    C{tcp.Server} built from the connected socket, with no listening port
    behind it (as C{adoptStreamConnection} builds one).
    """

    def __init__(self, sock: socket.socket, protocol: Any, peer: Any, reactor: Any) -> None:
        """
        @param sock: the connected, non-blocking socket.
        @param protocol: the protocol to connect to it.
        @param peer: the peer's address, as C{getpeername} gives it.
        @param reactor: the reactor that watches it.
        """
        # No port: Twisted's own adoptStreamConnection passes None too,
        # which the annotation does not say.
        Server.__init__(self, sock, protocol, peer, None, peer[1], reactor)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<{type(self.protocol).__name__} to {self.client[0]}:{self.client[1]}>"


def _connectedTransport(
    sock: socket.socket, factory: Any, address: Any, reactor: Any
) -> Optional[DirectTransport]:
    """
    Build the protocol for a connected socket and connect it to a
    L{DirectTransport} on it (L{None} when the factory builds none).

    @param address: the peer's address, given to the factory.
    @raise ConnectError: the connection was reset since C{connect()} (its
        peer's address cannot be read); nothing was built.
    """
    try:
        peer = sock.getpeername()
    except OSError as e:
        raise getConnectError(e) from None
    protocol = factory.buildProtocol(address)
    if protocol is None:
        return None
    transport = DirectTransport(sock, protocol, peer, reactor)
    protocol.makeConnection(transport)
    return transport


def _connectOnce(sock: socket.socket, address: tuple[str, int]) -> int:
    try:
        return sock.connect_ex(address)
    except OSError as e:
        return e.errno or -1


@implementer(IReadWriteDescriptor)
class _Attempt:
    """
    One connection attempt of a L{DirectTCPEndpoint} that did not finish
    at once: watched by the reactor until the socket is writable (made)
    or has an error (refused), timed out, or cancelled.
    """

    def __init__(self, endpoint: DirectTCPEndpoint, sock: socket.socket, factory: Any) -> None:
        self._endpoint = endpoint
        self._reactor = endpoint._reactor
        self._socket: Optional[socket.socket] = sock
        self._factory = factory
        self._watching = False
        self._timer: Optional[IDelayedCall] = None
        self.deferred: Deferred[Any] = Deferred(self._cancel)

    def adopt(self) -> Deferred[Any]:
        """
        Wrap the connected socket in a L{DirectTransport}, which the
        reactor then watches, and fire L{deferred} with the protocol built
        for it.
        """
        self._stop(close=False)
        sock, self._socket = self._socket, None
        assert sock is not None
        try:
            transport = _connectedTransport(sock, self._factory, self._endpoint._peer, self._reactor)
        except ConnectError as e:
            sock.close()
            self.deferred.errback(e)
            return self.deferred
        if transport is None:
            sock.close()
            self.deferred.errback(ConnectError(string="the factory built no protocol"))
        else:
            self.deferred.callback(transport.protocol)
        return self.deferred

    def wait(self, timeout: float) -> None:
        """
        Wait for the reactor to say the attempt is over, for at most
        C{timeout} seconds.
        """
        self._watching = True
        self._reactor.addReader(self)
        self._reactor.addWriter(self)
        self._timer = self._reactor.callLater(timeout, self._fail, TimeoutError())

    def failLater(self, reason: Exception) -> None:
        """
        Fail L{deferred} with C{reason} in the next turn.
        """
        self._timer = self._reactor.callLater(0, self._fail, reason)

    def _fail(self, reason: Any) -> None:
        # The timeout is cancelled here when something else failed the
        # attempt (the reactor found it refused): left pending, it would
        # fail the Deferred a second time.
        self._stop()
        self.deferred.errback(reason)

    def _stop(self, close: bool = True) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeReader(self)
            self._reactor.removeWriter(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if close and self._socket is not None:
            self._socket.close()
            self._socket = None

    def _cancel(self, deferred: Deferred[Any]) -> None:
        self._stop()
        deferred.errback(ConnectingCancelledError(self._endpoint._peer))

    # IReadWriteDescriptor: the reactor calls these while watching.

    def fileno(self) -> int:
        return -1 if self._socket is None else self._socket.fileno()

    def logPrefix(self) -> str:
        return "DirectTCPEndpoint"

    def doWrite(self) -> None:
        sock = self._socket
        if sock is None:
            # Over already (made, failed or cancelled), within the same
            # event: the reactor calls doWrite after a doRead that ended
            # the attempt (a refused connection is readable and writable),
            # without asking whether it still watches the descriptor.
            return
        result = _connectOnce(sock, self._endpoint._address)
        if result in _DONE:
            self.adopt()
        elif result not in _PENDING:
            self._fail(getConnectError((result, strerror(result))))

    doRead = doWrite

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw an error or hang-up on the socket, and has
        # stopped watching it.
        self._watching = False
        if self._socket is None:
            # Over already: the Deferred has its result.
            return
        error = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._fail(getConnectError((error, strerror(error))))
        else:
            self._fail(ConnectError(string=reason.getErrorMessage()))
