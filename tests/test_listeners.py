"""
Tests for L{lbproxy._listeners}: the endpoint description grammar and the
listening services.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor, RaisingMemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._listeners import (
    EndpointListener,
    ListenerService,
    parseTCPDescription,
    splitDescription,
)


class SplitDescriptionTests(SynchronousTestCase):
    """
    L{splitDescription} reads Twisted's endpoint string grammar.
    """

    def test_positionalAndKeywords(self) -> None:
        """
        Fields are separated by colons; those with an equals sign are
        keywords.
        """
        self.assertEqual(
            splitDescription("tcp:8080:interface=127.0.0.1:backlog=10"),
            (["tcp", "8080"], {"interface": "127.0.0.1", "backlog": "10"}),
        )

    def test_escapes(self) -> None:
        """
        A backslash makes the next character plain, a colon or an equals
        sign included.
        """
        self.assertEqual(
            splitDescription("tcp6:8080:interface=\\:\\:1"),
            (["tcp6", "8080"], {"interface": "::1"}),
        )
        self.assertEqual(
            splitDescription("unix:/tmp/a\\:b\\=c"), (["unix", "/tmp/a:b=c"], {})
        )

    def test_equalsInAValue(self) -> None:
        """
        A keyword's value runs to the next colon, equals signs and all.
        """
        self.assertEqual(
            splitDescription("ssl:443:privateKey=a=b:x=1"),
            (["ssl", "443"], {"privateKey": "a=b", "x": "1"}),
        )

    def test_emptyFields(self) -> None:
        """
        Empty fields are kept, as positional empty strings.
        """
        self.assertEqual(splitDescription("tcp::"), (["tcp", "", ""], {}))
        self.assertEqual(splitDescription(""), ([""], {}))

    @given(st.text(alphabet=":=\\ab1"))
    def test_sameAsTwisted(self, description: str) -> None:
        """
        Any description splits as Twisted's own (private) parser splits
        it, while Twisted has one.
        """
        twistedParse = getattr(endpoints, "_parse", None)
        if twistedParse is None:
            return
        try:
            expected = twistedParse(description)
        except Exception:
            # A description ending with a lone backslash breaks Twisted's
            # parser; ours reads it as an empty escape.
            assume(False)
        args, keywords = splitDescription(description)
        self.assertEqual((args, keywords), (expected[0], expected[1]))


class ParseTCPDescriptionTests(SynchronousTestCase):
    """
    L{parseTCPDescription} reads C{tcp:} and C{tcp6:} descriptions.
    """

    def test_tcp(self) -> None:
        """
        The port, interface and backlog are read; the interface is every
        IPv4 address and the backlog 50 by default.
        """
        listen = parseTCPDescription("tcp:8080:interface=127.0.0.1:backlog=10")
        self.assertEqual(
            (listen.kind, listen.port, listen.interface, listen.backlog),
            ("tcp", 8080, "127.0.0.1", 10),
        )
        listen = parseTCPDescription("TCP:port=8081")
        self.assertEqual(
            (listen.kind, listen.port, listen.interface, listen.backlog),
            ("tcp", 8081, "", 50),
        )

    def test_tcp6(self) -> None:
        """
        C{tcp6} listens on every IPv6 address by default; an escaped IPv6
        interface is read whole.
        """
        listen = parseTCPDescription("tcp6:8080")
        self.assertEqual((listen.kind, listen.interface), ("tcp6", "::"))
        listen = parseTCPDescription("tcp6:8080:interface=\\:\\:1")
        self.assertEqual(listen.interface, "::1")

    def test_bareNumber(self) -> None:
        """
        A description that starts with the port is a C{tcp:} one.
        """
        listen = parseTCPDescription("8080:interface=10.0.0.1")
        self.assertEqual(
            (listen.kind, listen.port, listen.interface), ("tcp", 8080, "10.0.0.1")
        )

    def test_invalid(self) -> None:
        """
        Other kinds of endpoint, a missing port or a port or backlog that
        is not a number are refused.
        """
        for description in [
            "unix:/tmp/x.sock",
            "ssl:443",
            "tcp",
            "tcp:http",
            "tcp:80:backlog=many",
        ]:
            self.assertRaises(ValueError, parseTCPDescription, description)


class FakePort:
    """
    A listening port that records that it stopped.
    """

    def __init__(self) -> None:
        self.stopped = False

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)

    def getHost(self) -> Any:
        return IPv4Address("TCP", "127.0.0.1", 1234)


class Listener(ListenerService):
    """
    A listener whose port is given by the test.

    @ivar attempts: the L{Deferred}s returned by L{openPort}, newest last.
    @ivar cancelled: those of them that were cancelled.
    """

    def __init__(self, answer: Optional[Any] = None) -> None:
        ListenerService.__init__(self)
        self.answer = answer
        self.attempts: list[Deferred[Any]] = []
        self.cancelled: list[Deferred[Any]] = []

    def openPort(self) -> Deferred[Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        d: Deferred[Any] = Deferred(self.cancelled.append)
        if self.answer is not None:
            d.callback(self.answer)
        self.attempts.append(d)
        return d


class ListenerServiceTests(SynchronousTestCase):
    """
    L{ListenerService} opens its port when started, fails the start when it
    cannot, and closes it when stopped.
    """

    def test_privilegedStart(self) -> None:
        """
        The port is opened by C{privilegedStartService} (so that C{twistd}
        binds before it drops privileges), and not again by
        C{startService}.
        """
        port = FakePort()
        listener = Listener(port)
        waiting = listener.whenListening()
        self.assertNoResult(waiting)
        listener.privilegedStartService()
        self.assertIs(self.successResultOf(waiting), port)
        listener.startService()
        self.assertEqual(len(listener.attempts), 1)
        self.assertIs(listener.port, port)
        self.assertIs(self.successResultOf(listener.whenListening()), port)

    def test_startAlone(self) -> None:
        """
        Started without C{privilegedStartService}, the service opens its
        port in C{startService}.
        """
        port = FakePort()
        listener = Listener(port)
        listener.startService()
        self.assertIs(self.successResultOf(listener.whenListening()), port)

    def test_stop(self) -> None:
        """
        Stopping closes the port; starting again opens a new one.
        """
        port = FakePort()
        listener = Listener(port)
        listener.startService()
        self.successResultOf(listener.stopService())
        self.assertTrue(port.stopped)
        self.assertIsNone(listener.port)
        waiting = listener.whenListening()
        self.assertNoResult(waiting)
        listener.startService()
        self.assertEqual(len(listener.attempts), 2)
        self.assertIs(self.successResultOf(waiting), port)

    def test_cannotListen(self) -> None:
        """
        A port that cannot be opened makes the start raise, and
        L{ListenerService.whenListening} fail, with the reason.
        """
        listener = Listener(CannotListenError("127.0.0.1", 80, OSError("in use")))
        waiting = listener.whenListening()
        self.assertRaises(CannotListenError, listener.startService)
        self.failureResultOf(waiting, CannotListenError)
        self.failureResultOf(listener.whenListening(), CannotListenError)

    def test_lateFailure(self) -> None:
        """
        An endpoint that fails to listen after the start has the failure
        logged, and told to L{ListenerService.whenListening}.
        """
        listener = Listener()
        listener.startService()
        waiting = listener.whenListening()
        listener.attempts[0].errback(CannotListenError("", 80, OSError("in use")))
        self.failureResultOf(waiting, CannotListenError)
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)

    def test_stopWhileOpening(self) -> None:
        """
        Stopping while the port is being opened cancels the attempt; its
        outcome is ignored.
        """
        listener = Listener()
        listener.startService()
        waiting = listener.whenListening()
        self.successResultOf(listener.stopService())
        self.assertEqual(listener.cancelled, listener.attempts)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertIsNone(listener.port)
        self.assertNoResult(waiting)


class EndpointListenerTests(SynchronousTestCase):
    """
    L{EndpointListener} listens on an endpoint description.
    """

    def test_listens(self) -> None:
        """
        The endpoint the description gives listens with the factory.
        """
        reactor = MemoryReactor()
        factory = Factory()
        listener = EndpointListener(
            "tcp:8080:interface=127.0.0.1:backlog=7", factory, reactor
        )
        listener.startService()
        self.assertEqual(reactor.tcpServers, [(8080, factory, 7, "127.0.0.1")])
        port = self.successResultOf(listener.whenListening())
        self.assertEqual(port.getHost(), IPv4Address("TCP", "0.0.0.0", 8080))
        listener.stopService()

    def test_invalidDescription(self) -> None:
        """
        An invalid description is refused when the listener is built.
        """
        self.assertRaises(
            ValueError, EndpointListener, "nosuchkind:80", Factory(), MemoryReactor()
        )

    def test_cannotListen(self) -> None:
        """
        A port the reactor cannot listen on makes the start raise.
        """
        reactor = RaisingMemoryReactor(
            listenException=CannotListenError("", 8080, OSError("in use"))
        )
        listener = EndpointListener("tcp:8080", Factory(), reactor)
        self.assertRaises(CannotListenError, listener.startService)

    def test_portInUse(self) -> None:
        """
        On a real reactor, a port in use makes the start raise at once.
        """
        from twisted.internet import reactor

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        listener = EndpointListener(
            f"tcp:{port}:interface=127.0.0.1", Factory(), reactor
        )
        self.addCleanup(listener.stopService)
        self.assertRaises(CannotListenError, listener.startService)
