"""
Tests for L{lbproxy._dnsport}: the resolver's queries, on real sockets on
127.0.0.1, to a DNS server of the test.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from lbproxy._dns import makeResolver
from lbproxy._dnsport import QuietDatagramPort
from lbproxy.testing import DNSZone, startDNSServer
from tests.integration.etcdprocess import waitUntil


def _addresses(answer: Any) -> list[str]:
    return sorted(record.payload.dottedQuad() for record in answer[0])


class ResolverTests(TestCase):
    def setUp(self) -> None:
        self.zone = DNSZone("test", ttl=0)
        self.server = startDNSServer(self.zone)
        self.addCleanup(self.server.stop)
        self.resolver = makeResolver([("127.0.0.1", self.server.port)], reactor)

    @inlineCallbacks
    def test_lookupLogsNothing(self) -> Any:
        """
        A lookup gets its answer, and its query's port logs nothing (with
        Twisted's own UDP port, four lines).
        """
        self.zone.setAddresses("app.test", ["127.0.0.5"])
        with capturedLogs() as events:
            answer = yield self.resolver.lookupAddress("app.test")
            answer = yield self.resolver.lookupAddress("app.test")
        self.assertEqual(_addresses(answer), ["127.0.0.5"])
        self.assertEqual(self.server.queries, [("app.test", 1), ("app.test", 1)])
        self.assertEqual([e.get("log_format") for e in events], [])

    @inlineCallbacks
    def test_truncatedAnswerOverTCP(self) -> Any:
        """
        An answer too long for a datagram comes truncated, and the
        resolver asks again over TCP: every address arrives.
        """
        many = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(400)]
        self.zone.setAddresses("many.test", many)
        answer = yield self.resolver.lookupAddress("many.test")
        self.assertEqual(_addresses(answer), sorted(many))
        self.assertEqual(self.server.queries, [("many.test", 1), ("many.test", 1)])
        # The resolver keeps its TCP connection for the next truncated
        # answer: close it.
        (connection,) = self.resolver.connections
        connection.transport.loseConnection()
        yield waitUntil(lambda: not self.resolver.connections, "the TCP connection closed")


class PortTests(TestCase):
    def test_portInUse(self) -> None:
        """
        A port that cannot be bound is L{CannotListenError}, which makes
        the resolver try another; the protocol is not started.
        """
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        protocol = DatagramProtocol()
        with self.assertRaises(CannotListenError):
            QuietDatagramPort(reactor, taken.getsockname()[1], protocol, "127.0.0.1")
        self.assertIsNone(protocol.transport)

    def test_echo(self) -> None:
        """
        What the protocol writes is sent, what comes back is handed to it
        with the sender's address; stopping twice is harmless, and the
        protocol is stopped once, quietly.
        """
        received: list[tuple[bytes, Any]] = []
        stopped: list[bool] = []

        class Recorder(DatagramProtocol):
            def datagramReceived(self, data: bytes, address: Any) -> None:
                received.append((data, address))

            def stopProtocol(self) -> None:
                stopped.append(True)

        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(peer.close)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        protocol = Recorder()
        with capturedLogs() as events:
            port = QuietDatagramPort(reactor, 0, protocol, "127.0.0.1")
            self.addCleanup(port.stopListening)
            port.write(b"ping", peer.getsockname())
            data, address = peer.recvfrom(100)
            self.assertEqual((data, address), (b"ping", port.getHost()))
            peer.sendto(b"pong", address)
            # The datagram is there: read it as the reactor would.
            port.doRead()
            self.assertEqual(received, [(b"pong", peer.getsockname())])
            port.stopListening()
            port.stopListening()
        self.assertEqual(stopped, [True])
        self.assertEqual(events, [])
