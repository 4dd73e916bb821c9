"""
Tests for L{lbproxy.service.StopSignals} and the stop at once of
L{lbproxy.LoadBalancerService} (a real C{twistd} process gets the signals
in tests/integration/test_first_hour.py).
"""

from __future__ import annotations

import signal

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import LoadBalancerService, parseConfigText
from lbproxy.service import StopSignals

_SITE = """
[lbproxy]
listen = tcp:8080:interface=127.0.0.1
access_log = off

[upstream:app]
servers = 127.0.0.1:9001

[vhost:app]
default = yes
upstream = app
"""


class _Reactor:
    def __init__(self):
        self.called = []

    def callFromThread(self, f, *args):
        self.called.append(f)


class StopSignalsTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = _Reactor()
        self.again = []
        self.signals = StopSignals(lambda: self.again.append(1), self.reactor)
        self.previous = []
        self.signals.previous = {
            signal.SIGINT: lambda *args: self.previous.append(args),
            signal.SIGTERM: lambda *args: self.previous.append(args),
        }

    def test_firstToTheReactor(self):
        """
        The first signal goes to the handler that was in place (the
        reactor's); every later one calls C{again} in the reactor thread.
        """
        self.signals.onSignal(signal.SIGINT, None)
        self.assertEqual(self.previous, [(signal.SIGINT, None)])
        self.assertEqual(self.reactor.called, [])
        self.signals.onSignal(signal.SIGTERM, None)
        self.signals.onSignal(signal.SIGINT, None)
        self.assertEqual(len(self.previous), 1)
        self.assertEqual(len(self.reactor.called), 2)
        self.reactor.called[0]()
        self.assertEqual(self.again, [1])

    def test_stoppedOtherwise(self):
        """
        Once a stop has begun without a signal, the first signal already
        calls C{again}.
        """
        self.signals.stop()
        self.signals.onSignal(signal.SIGTERM, None)
        self.assertEqual(self.previous, [])
        self.assertEqual(len(self.reactor.called), 1)


class AbortNowTests(SynchronousTestCase):
    def test_abortInFlight(self):
        """
        Stopping waits for a request in flight; L{abortNow} aborts its
        connection and the stop completes.
        """
        reactor = MemoryReactorClock()
        service = LoadBalancerService(parseConfigText(_SITE, "site.ini"), reactor)
        service.abortOnSecondSignal()
        service.startService()
        channel = service.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        with capturedLogs() as events:
            stopped = service.stopService()
        self.assertIn(
            "a second SIGINT or SIGTERM stops at once", events[-1]["log_format"]
        )
        self.assertNoResult(stopped)
        self.assertFalse(transport.disconnecting)
        with capturedLogs() as events:
            service.abortNow()
        self.assertEqual(events[0]["count"], 1)
        reactor.advance(0)
        self.assertTrue(transport.disconnected)
        channel.connectionLost(None)
        self.successResultOf(stopped)
