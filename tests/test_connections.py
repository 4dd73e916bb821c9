"""
Tests for L{lbproxy._connections.BackendConnections}, the idle
connections of one backend.
"""

from __future__ import annotations

from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._client import UpstreamConnection
from lbproxy._connections import BackendConnections


def idleConnections(count: int) -> tuple[Clock, BackendConnections, list[UpstreamConnection]]:
    """
    A cache holding C{count} idle connections on L{StringTransport}s, on a
    fake clock, oldest first.
    """
    clock = Clock()
    endpoint = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 9001)
    connections = BackendConnections(clock, endpoint, keepalive=8, idleTimeout=60)
    protos = []
    for _ in range(count):
        proto = UpstreamConnection(connections._put, connections._lost)
        proto.makeConnection(StringTransport())
        connections._put(proto)
        protos.append(proto)
    return clock, connections, protos


def lose(proto: UpstreamConnection) -> None:
    """
    Deliver the end of C{proto}'s connection, as the reactor does after an
    abort.
    """
    proto.connectionLost(Failure(ConnectionDone()))


def turn(clock: Clock) -> None:
    """
    Run the calls due on C{clock} as one turn of a reactor does: those
    scheduled while they run wait for the next turn (L{Clock.advance}
    would run them too).
    """
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


class CloseTests(SynchronousTestCase):
    """
    L{BackendConnections.close} closes the idle connections one per turn
    of the reactor.
    """

    def test_onePerTurn(self) -> None:
        """
        The newest idle connection is aborted at once, and one more at each
        turn of the reactor after; none goes back to the cache.
        """
        clock, connections, protos = idleConnections(3)
        connections.close()
        self.assertTrue(connections.closed)
        self.assertEqual(connections.idle, [])
        aborted = [p.transport.disconnected for p in protos]
        self.assertEqual(aborted, [False, False, True])
        turn(clock)
        aborted = [p.transport.disconnected for p in protos]
        self.assertEqual(aborted, [False, True, True])
        turn(clock)
        aborted = [p.transport.disconnected for p in protos]
        self.assertEqual(aborted, [True, True, True])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_firesOnceAllAreClosed(self) -> None:
        """
        The L{Deferred} of L{BackendConnections.close} fires once every
        idle connection is lost, not before.
        """
        clock, connections, protos = idleConnections(2)
        closing = connections.close()
        clock.advance(0)
        lose(protos[1])
        self.assertNoResult(closing)
        lose(protos[0])
        self.assertIsNone(self.successResultOf(closing))

    def test_nothingIdle(self) -> None:
        """
        With no idle connection, L{BackendConnections.close} is done at
        once and leaves no timer.
        """
        clock, connections, protos = idleConnections(0)
        self.assertIsNone(self.successResultOf(connections.close()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_busyConnectionClosedWhenDone(self) -> None:
        """
        A connection that ends its exchange after the cache was closed is
        closed instead of joining it.
        """
        clock, connections, protos = idleConnections(0)
        proto = UpstreamConnection(connections._put, connections._lost)
        proto.makeConnection(StringTransport())
        connections.close()
        connections._put(proto)
        self.assertEqual(connections.idle, [])
        self.assertTrue(proto.transport.disconnecting)
