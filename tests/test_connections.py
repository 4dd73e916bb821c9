"""
Tests for L{lbproxy._connections.BackendConnections}, the idle
connections of one backend, and L{lbproxy._connections.LeftConnections},
those of backends that left their pool.
"""

from __future__ import annotations

import weakref
from typing import Optional

from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._client import UpstreamConnection
from lbproxy._connections import BackendConnections, LeftConnections
from tests.refcounting import withoutCollector


def idleConnections(
    count: int, clock: Optional[Clock] = None
) -> tuple[Clock, BackendConnections, list[UpstreamConnection]]:
    """
    A cache holding C{count} idle connections on L{StringTransport}s, on a
    fake clock (a new one unless given), oldest first.
    """
    clock = Clock() if clock is None else clock
    endpoint = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 9001)
    connections = BackendConnections(clock, endpoint, keepalive=8, idleTimeout=60)
    protos = [idleConnection(connections) for _ in range(count)]
    return clock, connections, protos


def idleConnection(connections: BackendConnections) -> UpstreamConnection:
    """
    Put an idle connection, on a L{StringTransport}, in C{connections}, as
    one that ended its exchange.
    """
    proto = UpstreamConnection(connections._put, connections._lost)
    proto.makeConnection(StringTransport())
    connections._put(proto)
    return proto


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

    def test_freedWithoutCollector(self) -> None:
        """
        A closed cache and its connections, once lost, are freed by
        reference counting: neither the timer that expires idle
        connections nor the one-per-turn closing keeps them in a cycle.
        """
        clock, connections, protos = idleConnections(3)
        withoutCollector(self)
        closing = connections.close()
        turn(clock)
        turn(clock)
        for proto in protos:
            lose(proto)
        self.successResultOf(closing)
        refs = [weakref.ref(connections), *map(weakref.ref, protos)]
        del connections, protos, proto, closing
        self.assertEqual([ref() for ref in refs], [None] * 4)


class LeftConnectionsTests(SynchronousTestCase):
    """
    L{LeftConnections} keeps the idle connections of backends that left,
    up to a limit, and hands them back by key.
    """

    def test_handedBack(self) -> None:
        """
        L{LeftConnections.take} hands back, once, the connections kept with
        the same key, open and still idle; none for another key.
        """
        left = LeftConnections(limit=8)
        clock, connections, protos = idleConnections(2)
        self.assertEqual(left.keep(("http", "127.0.0.2", 80), connections), [])
        self.assertIsNone(left.take(("http", "127.0.0.3", 80)))
        self.assertIs(left.take(("http", "127.0.0.2", 80)), connections)
        self.assertIsNone(left.take(("http", "127.0.0.2", 80)))
        self.assertEqual(connections.idle, protos)
        self.assertFalse(any(p.transport.disconnecting for p in protos))

    def test_expireAsInThePool(self) -> None:
        """
        Kept connections still expire after the idle timeout; connections
        with none idle left are not handed back.
        """
        left = LeftConnections(limit=8)
        clock, connections, protos = idleConnections(2)
        left.keep("a", connections)
        clock.advance(60)
        self.assertTrue(all(p.transport.disconnecting for p in protos))
        for proto in protos:
            lose(proto)
        self.assertIsNone(left.take("a"))

    def test_limit(self) -> None:
        """
        Beyond the limit of idle connections in all, those that left first
        are closed and no longer kept; those with none idle left are
        forgotten.
        """
        left = LeftConnections(limit=4)
        clock = Clock()
        _, empty, _ = idleConnections(0, clock)
        _, first, firstProtos = idleConnections(2, clock)
        _, second, secondProtos = idleConnections(2, clock)
        _, third, thirdProtos = idleConnections(1, clock)
        left.keep("first", first)
        left.keep("second", second)
        left.keep("empty", empty)
        self.assertEqual(list(left.kept), ["first", "second", "empty"])
        closing = left.keep("third", third)
        self.assertEqual(list(left.kept), ["second", "third"])
        self.assertTrue(first.closed)
        self.assertFalse(second.closed or third.closed)
        self.assertEqual(len(closing), 1)
        clock.advance(0)
        self.assertTrue(all(p.transport.disconnected for p in firstProtos))
        for proto in firstProtos:
            lose(proto)
        self.successResultOf(closing[0])

    def test_sameKeyAgain(self) -> None:
        """
        Connections kept with a key already kept replace the older ones,
        which are closed.
        """
        left = LeftConnections(limit=8)
        clock = Clock()
        _, older, olderProtos = idleConnections(1, clock)
        _, newer, _ = idleConnections(1, clock)
        left.keep("a", older)
        self.assertEqual(len(left.keep("a", newer)), 1)
        self.assertTrue(older.closed)
        self.assertIs(left.take("a"), newer)

    def test_close(self) -> None:
        """
        L{LeftConnections.close} closes everything kept, and forgets it.
        """
        left = LeftConnections(limit=8)
        clock = Clock()
        _, a, _ = idleConnections(1, clock)
        _, b, _ = idleConnections(1, clock)
        left.keep("a", a)
        left.keep("b", b)
        self.assertEqual(len(left.close()), 2)
        self.assertTrue(a.closed and b.closed)
        self.assertEqual(left.kept, {})
