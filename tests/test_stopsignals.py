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

from lbproxy import ConfigError, LoadBalancerService, parseConfigText
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
        self.stops = 0

    def callFromThread(self, f, *args):
        self.called.append(f)

    def stop(self):
        self.stops += 1


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

    def test_firstStopsTheReactor(self):
        """
        The first signal stops the reactor itself, in the reactor thread
        (not through the reactor's handler, which would make twistd end by
        the signal rather than with status 0); every later one calls
        C{again} in the reactor thread.
        """
        self.signals.onSignal(signal.SIGTERM, None)
        self.assertEqual(self.previous, [])
        self.assertEqual(len(self.reactor.called), 1)
        self.reactor.called[0]()
        self.assertEqual(self.reactor.stops, 1)
        self.signals.onSignal(signal.SIGTERM, None)
        self.signals.onSignal(signal.SIGINT, None)
        self.assertEqual(len(self.reactor.called), 3)
        self.reactor.called[1]()
        self.assertEqual((self.again, self.reactor.stops), ([1], 1))

    def test_stoppedOtherwise(self):
        """
        Once a stop has begun without a signal, the first signal already
        calls C{again}.
        """
        self.signals.stop()
        self.signals.onSignal(signal.SIGTERM, None)
        self.assertEqual(self.previous, [])
        self.assertEqual(len(self.reactor.called), 1)
        self.reactor.called[0]()
        self.assertEqual((self.again, self.reactor.stops), ([1], 0))


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


class ShutdownTimeoutTests(SynchronousTestCase):
    """
    C{shutdown_timeout} bounds the graceful stop.
    """

    def startWithRequest(self, extra=""):
        """
        Start a service on the fake clock with C{extra} in its C{[lbproxy]}
        section and a request in flight.

        @return: the reactor, the service, the client channel and its
            transport.
        """
        reactor = MemoryReactorClock()
        text = _SITE.replace("access_log = off", "access_log = off\n" + extra)
        service = LoadBalancerService(parseConfigText(text, "site.ini"), reactor)
        service.abortOnSecondSignal()
        service.startService()
        channel = service.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        return reactor, service, channel, transport

    def test_default(self):
        """
        Without C{shutdown_timeout}, requests in flight get 30 seconds.
        """
        config = parseConfigText(_SITE, "site.ini")
        self.assertEqual(config.proxy.shutdownTimeout, 30.0)
        self.assertEqual(LoadBalancerService(config, MemoryReactorClock()).shutdownTimeout, 30.0)

    def test_bounded(self):
        """
        A request in flight is waited for up to C{shutdown_timeout}; its
        connection is aborted then, and the stop completes.
        """
        reactor, service, channel, transport = self.startWithRequest("shutdown_timeout = 5s")
        with capturedLogs() as events:
            stopped = service.stopService()
        self.assertEqual(events[-1]["timeout"], 5.0)
        reactor.advance(4.9)
        self.assertNoResult(stopped)
        self.assertFalse(transport.disconnecting)
        with capturedLogs() as events:
            reactor.advance(0.1)
        self.assertEqual(events[0]["count"], 1)
        self.assertTrue(transport.disconnected)
        channel.connectionLost(None)
        self.successResultOf(stopped)

    def test_zero(self):
        """
        C{shutdown_timeout = 0} aborts the requests in flight at once.
        """
        reactor, service, channel, transport = self.startWithRequest("shutdown_timeout = 0")
        stopped = service.stopService()
        with capturedLogs():
            reactor.advance(0)
        self.assertTrue(transport.disconnected)
        channel.connectionLost(None)
        self.successResultOf(stopped)

    def test_cleanDrain(self):
        """
        A request that finishes before the deadline ends its connection,
        the stop completes then, and nothing is aborted at the deadline.
        """
        reactor, service, channel, transport = self.startWithRequest("shutdown_timeout = 5s")
        stopped = service.stopService()
        reactor.advance(1)
        channel.loseConnection()
        channel.connectionLost(None)
        self.successResultOf(stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_reloaded(self):
        """
        A reload changes the deadline of the next stop.
        """
        reactor, service, channel, transport = self.startWithRequest()
        text = _SITE.replace("access_log = off", "access_log = off\nshutdown_timeout = 2s")
        service.reload(parseConfigText(text, "site.ini"))
        self.assertEqual(service.shutdownTimeout, 2.0)
        stopped = service.stopService()
        with capturedLogs():
            reactor.advance(2)
        self.assertTrue(transport.disconnected)
        channel.connectionLost(None)
        self.successResultOf(stopped)

    def test_invalid(self):
        """
        A value that is not a duration is a configuration error naming the
        key.
        """
        text = _SITE.replace("access_log = off", "access_log = off\nshutdown_timeout = soon")
        with self.assertRaises(ConfigError) as caught:
            parseConfigText(text, "site.ini")
        self.assertIn("shutdown_timeout", str(caught.exception))
