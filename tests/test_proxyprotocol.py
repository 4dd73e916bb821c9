"""
Tests for L{lbproxy._proxyprotocol}: reading PROXY headers (versions 1
and 2, whole, split into 1-byte segments, malformed, late), the
C{haproxy:} listener's wrapper in front of a real L{lbproxy.ProxySite},
and writing headers on backend connections (byte for byte against the
specification's examples, before TLS, and the reuse of idle connections
only for the same client).
"""

from __future__ import annotations

import io
import struct

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import Backend, Pool
from lbproxy._config import ConfigError
from lbproxy._connections import backendEndpoint
from lbproxy._listeners import EndpointListener
from lbproxy._proxyprotocol import (
    HEADER_TIMEOUT,
    V2_SIGNATURE,
    HeaderReader,
    HeaderWriter,
    InvalidProxyHeader,
    ProxyHeaderEndpoint,
    ProxyProtocolFactory,
    headerV1,
    headerV2,
    listenerParts,
    localHeaderV2,
    parseV1,
    parseV2,
    probeHeader,
    withoutPrefix,
)
from lbproxy._tlsserver import httpsPort
from lbproxy._values import parseProxyProtocol
from lbproxy._workers import listeningSocket
from lbproxy.config import parseConfigText
from lbproxy.testing import ProxyHarness

#: The specification's example (section 2.1): a client 192.168.0.1:56324
#: connected to 192.168.0.11:443.
SPEC_V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"

#: The same connection in version 2, laid out as section 2.2 describes
#: it: signature, \x21 (version 2, PROXY), \x11 (TCP over IPv4), length
#: 12, then source and destination addresses and ports, in network order.
SPEC_V2 = (
    b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
    b"\x21\x11\x00\x0C"
    b"\xC0\xA8\x00\x01"
    b"\xC0\xA8\x00\x0B"
    b"\xDC\x04"
    b"\x01\xBB"
)

CLIENT = IPv4Address("TCP", "192.168.0.1", 56324)
LISTENER = IPv4Address("TCP", "192.168.0.11", 443)
BALANCER = IPv4Address("TCP", "10.1.1.1", 40000)

REQUEST = b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"


def _v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body


class ParseTests(SynchronousTestCase):
    """
    L{parseV1}, L{parseV2} and L{HeaderReader}.
    """

    def readWhole(self, data: bytes):
        reader = HeaderReader()
        header = reader.feed(data)
        self.assertIsNotNone(header)
        return header, reader.buffer

    def readByBytes(self, data: bytes):
        """
        Feed C{data} one byte at a time: nothing is decided before the
        last byte of the header.
        """
        reader = HeaderReader()
        for index in range(len(data)):
            header = reader.feed(data[index : index + 1])
            if header is not None:
                return header, index + 1, reader
        self.fail("no header")

    def test_v1Example(self):
        """
        The specification's version 1 example gives the client and the
        address it connected to; the bytes after the line are left.
        """
        header, rest = self.readWhole(SPEC_V1 + REQUEST)
        self.assertEqual((header.source, header.destination), (CLIENT, LISTENER))
        self.assertEqual(header.size, len(SPEC_V1))
        self.assertEqual(rest, REQUEST)

    def test_v2Example(self):
        """
        The same connection in version 2.
        """
        header, rest = self.readWhole(SPEC_V2 + REQUEST)
        self.assertEqual((header.source, header.destination), (CLIENT, LISTENER))
        self.assertEqual(rest, REQUEST)

    def test_oneByteAtATime(self):
        """
        Both versions read a byte at a time (TCP may deliver a header in
        segments of any size: Twisted's wrapper refuses a first segment
        shorter than 8 or 16 bytes), complete exactly on their last byte.
        """
        for data in (SPEC_V1, SPEC_V2):
            header, used, reader = self.readByBytes(data + REQUEST)
            self.assertEqual(used, len(data))
            self.assertEqual(header.source, CLIENT)
            self.assertEqual(reader.buffer, b"")

    def test_v1IPv6(self):
        """
        C{TCP6} lines give IPv6 addresses, in their compressed form.
        """
        header = parseV1(b"PROXY TCP6 2001:DB8::1 2001:db8:0:0:0:0:0:2 1234 8080\r\n")
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::1", 1234))
        self.assertEqual(header.destination, IPv6Address("TCP", "2001:db8::2", 8080))

    def test_v2IPv6(self):
        body = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 1234, 80)
        header = parseV2(_v2(0x21, 0x21, body))
        self.assertEqual(header.source, IPv6Address("TCP", "::1", 1234))
        self.assertEqual(header.destination, IPv6Address("TCP", "::2", 80))

    def test_mappedAddresses(self):
        """
        An IPv4 client that a dual-stack balancer names as an IPv4-mapped
        IPv6 address is spelled in the mixed form, as the kernel spells
        such a peer, on every Python (before 3.13, C{str} gives
        C{::ffff:c000:201}), in either version.
        """
        header = parseV1(b"PROXY TCP6 ::ffff:192.0.2.1 ::FFFF:C000:202 1234 80\r\n")
        self.assertEqual(header.source, IPv6Address("TCP", "::ffff:192.0.2.1", 1234))
        self.assertEqual(header.destination, IPv6Address("TCP", "::ffff:192.0.2.2", 80))
        mapped = bytes(10) + b"\xff\xff"
        body = mapped + bytes([192, 0, 2, 1]) + mapped + bytes([192, 0, 2, 2])
        header = parseV2(_v2(0x21, 0x21, body + struct.pack("!HH", 1234, 80)))
        self.assertEqual(header.source, IPv6Address("TCP", "::ffff:192.0.2.1", 1234))
        self.assertEqual(header.destination, IPv6Address("TCP", "::ffff:192.0.2.2", 80))

    def test_v2TLVsSkipped(self):
        """
        Bytes after the addresses (TLVs) are part of the header and
        skipped.
        """
        tlv = b"\x04\x00\x03abc"
        header, rest = self.readWhole(
            _v2(0x21, 0x11, SPEC_V2[16:] + tlv) + REQUEST
        )
        self.assertEqual(header.source, CLIENT)
        self.assertEqual(rest, REQUEST)

    def test_longestV2HeaderByteByByte(self):
        """
        The longest version 2 header (64 KiB of TLVs) sent a byte at a
        time is read, without its bytes gathered so far being copied
        again for each one: L{HeaderReader.buffer} stays at the 16 bytes
        that gave its length until the last byte comes.
        """
        header = _v2(0x21, 0x11, SPEC_V2[16:28] + bytes(65535 - 12))
        reader = HeaderReader()
        for index in range(len(header) - 1):
            self.assertIsNone(reader.feed(header[index : index + 1]))
            self.assertLessEqual(len(reader.buffer), 16)
        parsed = reader.feed(header[-1:] + REQUEST)
        assert parsed is not None
        self.assertEqual((parsed.source, parsed.size, reader.buffer), (CLIENT, len(header), REQUEST))

    def test_unknownAndLocal(self):
        """
        C{UNKNOWN} (short and long form), the C{LOCAL} command, and the
        families that are valid but not read (unspecified, UDP, UNIX
        sockets) name no client: the connection's own addresses stand.
        """
        for data in (
            b"PROXY UNKNOWN\r\n",
            b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n",
            localHeaderV2(),
            _v2(0x20, 0x11, SPEC_V2[16:]),
            _v2(0x21, 0x00, b""),
            _v2(0x21, 0x12, SPEC_V2[16:]),
            _v2(0x21, 0x31, bytes(216)),
        ):
            header, rest = self.readWhole(data + REQUEST)
            self.assertEqual((header.source, header.destination), (None, None), data)
            self.assertEqual(rest, REQUEST)

    def test_malformed(self):
        """
        Whatever the specification does not allow is refused, whole or a
        byte at a time.
        """
        for data in (
            b"GET / HTTP/1.1\r\n\r\n",
            b"PROXY  TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",
            b"PROXY TCP5 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.000.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +5632 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 port 443\r\n",
            b"PROXY TCP4 2001:db8::1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP6 192.168.0.1 2001:db8::1 56324 443\r\n",
            b"PROXY TCP6 fe80::1%eth0 fe80::2 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",
            b"PROXY UNKNOWN\nx\r\n",
            b"PROXY TCP4 192.168.0.1\r192.168.0.11 56324 443\r\n",
            b"PROXY UNKNOWN " + b"f" * 100 + b"\r\n",
            b"proxy TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"\r\n\r\n\x00\r\nQUIT\r" + bytes(20),
            _v2(0x11, 0x11, SPEC_V2[16:]),
            _v2(0x22, 0x11, SPEC_V2[16:]),
            _v2(0x21, 0x41, SPEC_V2[16:]),
            _v2(0x21, 0x13, SPEC_V2[16:]),
            _v2(0x21, 0x11, SPEC_V2[16:24]),
            _v2(0x21, 0x21, SPEC_V2[16:]),
        ):
            self.assertRaises(InvalidProxyHeader, HeaderReader().feed, data + REQUEST)
            reader = HeaderReader()
            with self.assertRaises(InvalidProxyHeader, msg=repr(data)):
                for index in range(len(data) + len(REQUEST)):
                    reader.feed((data + REQUEST)[index : index + 1])

    def test_refusedEarly(self):
        """
        A byte that cannot be part of a header is refused when it comes,
        without waiting for more: the first byte of an HTTP request, or
        a version 1 line that passes 107 bytes.
        """
        self.assertRaises(InvalidProxyHeader, HeaderReader().feed, b"G")
        self.assertRaises(InvalidProxyHeader, HeaderReader().feed, b"\x16\x03\x01")
        reader = HeaderReader()
        self.assertIsNone(reader.feed(b"PROXY UNKNOWN " + b"f" * 92))
        self.assertRaises(InvalidProxyHeader, reader.feed, b"f")

    def test_longestV1(self):
        """
        The longest line the specification allows (107 bytes) is read.
        """
        line = (
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
            b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        )
        self.assertEqual(len(line), 107)
        header, rest = self.readWhole(line)
        self.assertEqual((header.source, rest), (None, b""))


class _Recorder(Protocol):
    """
    Records how it was connected and what it received.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost = None
        self.peer = self.host = None

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class _RecorderFactory(Factory):
    def __init__(self, refuse: bool = False) -> None:
        self.built: list[_Recorder] = []
        self.addresses: list = []
        self.refuse = refuse

    def buildProtocol(self, addr):
        self.addresses.append(addr)
        if self.refuse:
            return None
        protocol = _Recorder()
        self.built.append(protocol)
        return protocol


class ReceiverTests(SynchronousTestCase):
    """
    L{ProxyProtocolFactory}: a C{haproxy:} listener's connections.
    """

    def connect(self, refuse: bool = False):
        self.clock = Clock()
        self.inner = _RecorderFactory(refuse)
        factory = ProxyProtocolFactory(self.inner, self.clock)
        protocol = factory.buildProtocol(BALANCER)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "10.1.1.2", 8080), peerAddress=BALANCER
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def test_logPrefix(self):
        """
        A connection's log prefix names the listener before its protocol
        exists (not C{NoneType}), then the protocol.
        """
        factory = ProxyProtocolFactory(_RecorderFactory(False), Clock())
        protocol = factory.buildProtocol(BALANCER)
        self.assertEqual(protocol.logPrefix(), "_RecorderFactory (PROXY)")
        protocol, transport = self.connect()
        protocol.dataReceived(SPEC_V1)
        self.assertEqual(protocol.logPrefix(), "_Recorder (ProxyProtocolReceiver)")

    def test_header(self):
        """
        The protocol is built once the header is read, with the client's
        address, and sees the header's addresses as its connection's; the
        bytes after the header, in the same segment or later ones, are
        its.
        """
        protocol, transport = self.connect()
        for index in range(len(SPEC_V1)):
            self.assertEqual(self.inner.built, [])
            protocol.dataReceived(SPEC_V1[index : index + 1])
        for index in range(len(REQUEST)):
            protocol.dataReceived(REQUEST[index : index + 1])
        (inner,) = self.inner.built
        self.assertEqual(self.inner.addresses, [CLIENT])
        self.assertEqual((inner.peer, inner.host), (CLIENT, LISTENER))
        self.assertEqual(inner.received, REQUEST)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(transport.disconnecting)
        inner.transport.write(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 200 OK\r\n")
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertIsNotNone(inner.lost)

    def test_local(self):
        """
        A C{LOCAL} header (a balancer's health check) leaves the
        connection's real addresses.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(localHeaderV2() + REQUEST)
        (inner,) = self.inner.built
        self.assertEqual(inner.peer, BALANCER)
        self.assertEqual(inner.host, transport.getHost())
        self.assertEqual(inner.received, REQUEST)

    def test_malformed(self):
        """
        A malformed header aborts the connection at once; nothing is
        built, nothing written.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(REQUEST)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.inner.built, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # What comes before the close is ignored.
        protocol.dataReceived(REQUEST)
        protocol.connectionLost(Failure(ConnectionError("aborted")))
        self.assertEqual(self.inner.built, [])

    def test_timeout(self):
        """
        A header not complete within L{HEADER_TIMEOUT} seconds (5) aborts
        the connection; nothing is written.
        """
        self.assertEqual(HEADER_TIMEOUT, 5.0)
        protocol, transport = self.connect()
        protocol.dataReceived(SPEC_V1[:20])
        self.clock.advance(HEADER_TIMEOUT - 0.01)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.01)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.inner.built, [])

    def test_silentTimeout(self):
        """
        So does a connection that sends nothing at all.
        """
        protocol, transport = self.connect()
        self.clock.advance(HEADER_TIMEOUT)
        self.assertTrue(transport.disconnecting)

    def test_lostBeforeHeader(self):
        """
        A connection lost before its header was read cancels the timeout;
        the protocol that was never built hears nothing.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(SPEC_V2[:10])
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.inner.built, [])

    def test_stopListening(self):
        """
        When the listener stops, the connections still sending their
        header are aborted; those past it are left to their protocol.
        """
        self.clock = Clock()
        self.inner = _RecorderFactory()
        factory = ProxyProtocolFactory(self.inner, self.clock)
        factory.doStart()
        transports = []
        for data in (SPEC_V1[:10], SPEC_V1):
            protocol = factory.buildProtocol(BALANCER)
            transport = StringTransport(peerAddress=BALANCER)
            protocol.makeConnection(transport)
            protocol.dataReceived(data)
            transports.append(transport)
        factory.doStop()
        self.assertEqual([t.disconnecting for t in transports], [True, False])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.inner.built), 1)

    def test_refused(self):
        """
        A factory that builds nothing (a site at C{max_connections})
        closes the connection once the header is read.
        """
        protocol, transport = self.connect(refuse=True)
        protocol.dataReceived(SPEC_V1 + REQUEST)
        self.assertEqual(self.inner.addresses, [CLIENT])
        self.assertTrue(transport.disconnecting)

    def test_listenerParts(self):
        """
        A C{haproxy:} description listens on the rest of it, with the
        factory wrapped; others are left as they are.
        """
        inner = _RecorderFactory()
        description, factory = listenerParts("haproxy:tcp:8080:interface=\\:\\:1", inner)
        self.assertEqual(description, "tcp:8080:interface=\\:\\:1")
        self.assertIsInstance(factory, ProxyProtocolFactory)
        self.assertIs(factory.wrappedFactory, inner)
        self.assertEqual(listenerParts("tcp:8080", inner), ("tcp:8080", inner))
        self.assertEqual(withoutPrefix("HAProxy:tcp6:80"), "tcp6:80")


class SiteTests(SynchronousTestCase):
    """
    A C{haproxy:} listener in front of a real L{lbproxy.ProxySite}: the
    client of the header is the client everywhere.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.log = io.StringIO()
        pool = Pool("app", [Backend("127.0.0.1", 9001)], reactor=self.reactor)
        self.harness = ProxyHarness(pool, accessLog=self.log)
        self.addCleanup(self.harness.close)

    def test_clientEverywhere(self):
        """
        A request read through the wrapper, a byte at a time, reaches the
        backend with the header's client in C{X-Forwarded-For} and
        C{X-Forwarded-Port} the port it connected to, and is logged with
        that client.
        """
        factory = ProxyProtocolFactory(self.harness.site, self.reactor)
        protocol = factory.buildProtocol(BALANCER)
        transport = StringTransport(peerAddress=BALANCER)
        protocol.makeConnection(transport)
        data = b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 8443\r\n" + REQUEST
        for index in range(len(data)):
            protocol.dataReceived(data[index : index + 1])
        backend = self.harness.acceptBackend()
        sent = backend.received()
        self.assertIn(b"\r\nX-Forwarded-For: 198.51.100.7\r\n", sent)
        self.assertNotIn(b"10.1.1.1", sent)
        backend.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 204 "))
        self.assertTrue(self.log.getvalue().startswith("198.51.100.7 - - ["))


class WriteTests(SynchronousTestCase):
    """
    L{headerV1}, L{headerV2}, L{probeHeader}.
    """

    def test_specExamples(self):
        """
        Byte for byte, the specification's example connection in both
        versions.
        """
        self.assertEqual(headerV1(CLIENT, LISTENER), SPEC_V1)
        self.assertEqual(headerV2(CLIENT, LISTENER), SPEC_V2)

    def test_roundTrip(self):
        """
        What is written reads back as the same addresses.
        """
        pairs = [
            (CLIENT, LISTENER),
            (IPv6Address("TCP", "2001:db8::7", 1), IPv6Address("TCP", "2001:db8::1", 443)),
            (IPv4Address("TCP", "0.0.0.0", 0), IPv4Address("TCP", "255.255.255.255", 65535)),
        ]
        for source, destination in pairs:
            for write in (headerV1, headerV2):
                header = HeaderReader().feed(write(source, destination))
                self.assertEqual((header.source, header.destination), (source, destination))

    def test_v2IPv6Layout(self):
        header = headerV2(
            IPv6Address("TCP", "2001:db8::7", 1), IPv6Address("TCP", "::1", 443)
        )
        self.assertEqual(header[12:16], b"\x21\x21\x00\x24")
        self.assertEqual(
            header[16:],
            bytes.fromhex("20010db8000000000000000000000007")
            + bytes(15)
            + b"\x01\x00\x01\x01\xbb",
        )

    def test_mixedFamilies(self):
        """
        An IPv4 client on an IPv6 listener (a client named by a trusted
        proxy): IPv4-mapped addresses are IPv4, else the IPv4 address is
        mapped into IPv6, as both addresses must be of one family.
        """
        self.assertEqual(
            headerV1(
                IPv6Address("TCP", "::ffff:192.168.0.1", 56324), LISTENER
            ),
            SPEC_V1,
        )
        self.assertEqual(
            headerV1(CLIENT, IPv6Address("TCP", "2001:db8::1", 443)),
            b"PROXY TCP6 ::ffff:192.168.0.1 2001:db8::1 56324 443\r\n",
        )
        header = headerV2(CLIENT, IPv6Address("TCP", "2001:db8::1", 443))
        self.assertEqual(header[12:16], b"\x21\x21\x00\x24")

    def test_notIP(self):
        """
        A client that has no IP address (a UNIX socket's): C{UNKNOWN} in
        version 1, the C{LOCAL} command in version 2.
        """
        unix = UNIXAddress(b"/run/lbproxy.sock")
        self.assertEqual(headerV1(unix, unix), b"PROXY UNKNOWN\r\n")
        self.assertEqual(headerV2(unix, LISTENER), localHeaderV2())
        self.assertEqual(headerV1(None, LISTENER), b"PROXY UNKNOWN\r\n")
        self.assertEqual(localHeaderV2(), V2_SIGNATURE + b"\x20\x00\x00\x00")

    def test_writerRemembers(self):
        """
        L{HeaderWriter} gives what L{headerV1} or L{headerV2} write, and
        remembers a bounded number of them.
        """
        from lbproxy import _proxyprotocol

        self.patch(_proxyprotocol, "_CACHED_HEADERS", 2)
        for version, write in ((1, headerV1), (2, headerV2)):
            writer = HeaderWriter(version)
            for port in range(1, 6):
                client = IPv4Address("TCP", "192.0.2.1", port)
                self.assertEqual(writer(client, LISTENER), write(client, LISTENER))
                self.assertIs(writer(client, LISTENER), writer(client, LISTENER))
                self.assertLessEqual(len(writer._headers), 2)
            self.assertEqual(writer(None, LISTENER), write(None, LISTENER))

    def test_probe(self):
        """
        A health probe's connection sends its own addresses (version 1)
        or the C{LOCAL} command (version 2).
        """
        transport = StringTransport(hostAddress=CLIENT, peerAddress=LISTENER)
        self.assertEqual(probeHeader(1, transport), SPEC_V1)
        self.assertEqual(probeHeader(2, transport), localHeaderV2())

    def test_configValues(self):
        self.assertEqual(
            [parseProxyProtocol(v) for v in ("no", "v1", " V2 ")], [0, 1, 2]
        )
        for bad in ("yes", "1", "v3", ""):
            self.assertRaises(ValueError, parseProxyProtocol, bad)


class EndpointTests(SynchronousTestCase):
    """
    L{ProxyHeaderEndpoint} and L{backendEndpoint} with
    C{send_proxy_protocol}.
    """

    def test_headerFirst(self):
        """
        The header is the first thing written on the connection, before
        what the protocol writes when it is connected; the endpoint fires
        with the protocol itself.
        """
        reactor = MemoryReactorClock()
        backend = Backend("127.0.0.1", 9001)
        endpoint = backendEndpoint(reactor, backend, 5.0, proxyProtocol=1)
        self.assertIsInstance(endpoint, ProxyHeaderEndpoint)

        class Greeting(Protocol):
            def connectionMade(self):
                self.transport.write(b"hello")

        connected = []
        endpoint.connectWithHeader(
            Factory.forProtocol(Greeting), SPEC_V1
        ).addCallback(connected.append)
        (host, port, factory, _, _) = reactor.tcpClients[0]
        transport = StringTransport()
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), SPEC_V1 + b"hello")
        self.assertIsInstance(connected[0], Greeting)

    def test_headerBeforeTLS(self):
        """
        For an C{https} backend, the header comes before the TLS
        ClientHello.
        """
        from lbproxy._tls import clientCreator

        reactor = MemoryReactorClock()
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", 9443)
        endpoint = ProxyHeaderEndpoint(tcp, clientCreator("127.0.0.1", False, None, None), 2)
        connected = []
        endpoint.connectWithHeader(Factory.forProtocol(Protocol), SPEC_V2).addCallback(
            connected.append
        )
        factory = reactor.tcpClients[0][2]
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        written = transport.value()
        self.assertEqual(written[: len(SPEC_V2)], SPEC_V2)
        # A TLS handshake record follows.
        self.assertEqual(written[len(SPEC_V2) : len(SPEC_V2) + 1], b"\x16")
        self.assertEqual(type(connected[0]), Protocol)

    def test_probeConnection(self):
        """
        C{connect} (a health probe's) sends the probe header of the
        connection's own addresses.
        """
        reactor = MemoryReactorClock()
        endpoint = backendEndpoint(reactor, Backend("127.0.0.1", 9001), 5.0, proxyProtocol=1)
        endpoint.connect(Factory.forProtocol(Protocol))
        factory = reactor.tcpClients[0][2]
        transport = StringTransport(hostAddress=CLIENT, peerAddress=LISTENER)
        factory.buildProtocol(None).makeConnection(transport)
        self.assertEqual(transport.value(), SPEC_V1)


class ReuseTests(SynchronousTestCase):
    """
    Through a L{Pool} with C{send_proxy_protocol}: each backend connection
    starts with its client's header, and an idle one serves only
    requests with that same header.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pool = Pool(
            "app", [Backend("127.0.0.1", 9001)], reactor=self.reactor, sendProxyProtocol=1
        )
        self.harness = ProxyHarness(self.pool)
        self.addCleanup(self.harness.close)

    def exchange(self, client, backend=None):
        client.send(REQUEST)
        if backend is None:
            backend = self.harness.acceptBackend()
        sent = backend.received()
        backend.clear()
        backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(client.received().endswith(b"ok"))
        client.clear()
        return backend, sent

    def test_sameClientOnly(self):
        one = self.harness.connect(IPv4Address("TCP", "192.0.2.1", 1111))
        two = self.harness.connect(IPv4Address("TCP", "192.0.2.2", 2222))
        backendOne, sent = self.exchange(one)
        host = one.transport.getHost()
        self.assertTrue(
            sent.startswith(
                b"PROXY TCP4 192.0.2.1 %s 1111 %d\r\nGET / HTTP/1.1\r\n"
                % (host.host.encode(), host.port)
            ),
            sent,
        )
        # The idle connection is the first client's: the second gets one
        # of its own.
        backendTwo, sent = self.exchange(two)
        self.assertTrue(sent.startswith(b"PROXY TCP4 192.0.2.2 "), sent)
        self.assertEqual(self.harness.pending(), [])
        # Each client's next request reuses its own connection, which
        # sends no second header.
        _, sent = self.exchange(one, backendOne)
        self.assertTrue(sent.startswith(b"GET / HTTP/1.1\r\n"), sent)
        _, sent = self.exchange(two, backendTwo)
        self.assertTrue(sent.startswith(b"GET / HTTP/1.1\r\n"), sent)
        self.assertEqual(self.harness.pending(), [])
        self.assertEqual(self.pool.connectionsOpened(self.pool.backends[0]), 2)

    def test_fullCacheKeepsTheNewest(self):
        """
        When the idle cache is full, the oldest idle connection (whose
        client may have left) is closed to keep the newest.
        """
        pool = Pool(
            "app",
            [Backend("127.0.0.1", 9001)],
            reactor=self.reactor,
            sendProxyProtocol=2,
            keepalive=1,
        )
        harness = ProxyHarness(pool)
        self.addCleanup(harness.close)
        self.harness = harness
        one = harness.connect(IPv4Address("TCP", "192.0.2.1", 1111))
        two = harness.connect(IPv4Address("TCP", "192.0.2.2", 2222))
        backendOne, sent = self.exchange(one)
        self.assertEqual(sent[:16], V2_SIGNATURE + b"\x21\x11\x00\x0c")
        backendTwo, _ = self.exchange(two)
        self.assertTrue(backendOne.closing)
        self.assertFalse(backendTwo.closing)
        self.exchange(two, backendTwo)
        self.assertEqual(harness.pending(), [])

    def test_offByDefault(self):
        """
        Without it, nothing is written before the request, and idle
        connections serve any client.
        """
        pool = Pool("app", [Backend("127.0.0.1", 9001)], reactor=self.reactor)
        harness = self.harness = ProxyHarness(pool)
        self.addCleanup(harness.close)
        one = harness.connect(IPv4Address("TCP", "192.0.2.1", 1111))
        two = harness.connect(IPv4Address("TCP", "192.0.2.2", 2222))
        backend, sent = self.exchange(one)
        self.assertTrue(sent.startswith(b"GET / HTTP/1.1\r\n"))
        self.exchange(two, backend)
        self.assertEqual(harness.pending(), [])



class ConfigurationTests(SynchronousTestCase):
    """
    C{haproxy:} listeners in the configuration, with workers, and where
    listeners are opened.
    """

    def test_workers(self):
        """
        C{workers = 2} shares C{haproxy:tcp:} and C{haproxy:tcp6:}
        listeners (the parent opens the TCP socket), and refuses others.
        """
        config = parseConfigText(
            "[lbproxy]\nlisten = haproxy:tcp:8080 haproxy:tcp6:8081\n"
            "listen_tls = haproxy:tcp:8443\nworkers = 2\n"
        )
        self.assertEqual(config.proxy.workers, 2)
        self.assertEqual(httpsPort(config.proxy), 8443)
        with self.assertRaises(ConfigError) as caught:
            parseConfigText("[lbproxy]\nlisten = haproxy:unix:/tmp/x.sock\nworkers = 2\n")
        self.assertIn("haproxy: in front of either too", str(caught.exception))

    def test_sslRefused(self):
        """
        C{haproxy:ssl:} would read the header inside the TLS: refused,
        saying what to write instead.
        """
        with self.assertRaises(ConfigError) as caught:
            parseConfigText(
                "[lbproxy]\nlisten = haproxy:ssl:8443:privateKey=k.pem:certKey=c.pem\n"
            )
        self.assertIn("haproxy:tcp:PORT in listen_tls", str(caught.exception))

    def test_parentSocket(self):
        """
        The parent of C{workers} opens the TCP socket of a C{haproxy:}
        description.
        """
        sock = listeningSocket("haproxy:tcp:0:interface=127.0.0.1")
        self.addCleanup(sock.close)
        self.assertEqual(sock.getsockname()[0], "127.0.0.1")

    def test_endpointListener(self):
        """
        An L{EndpointListener} on a C{haproxy:} description listens on the
        rest of it with the factory wrapped.
        """
        reactor = MemoryReactorClock()
        inner = _RecorderFactory()
        listener = EndpointListener("haproxy:tcp:8080:interface=127.0.0.1", inner, reactor)
        listener.startService()
        self.addCleanup(listener.stopService)
        ((port, factory, _, interface),) = reactor.tcpServers
        self.assertEqual((port, interface), (8080, "127.0.0.1"))
        self.assertIsInstance(factory, ProxyProtocolFactory)
        self.assertIs(factory.wrappedFactory, inner)
        self.assertIs(factory.clock, reactor)
        self.assertEqual(listener.description, "haproxy:tcp:8080:interface=127.0.0.1")
