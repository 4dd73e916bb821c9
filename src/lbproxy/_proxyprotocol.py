# -*- test-case-name: tests.test_proxyprotocol -*-
"""
The PROXY protocol (HAProxy's, versions 1 and 2), both ways.

Inbound, a listener whose endpoint description starts with C{haproxy:}
(C{listen = haproxy:tcp:8080}) expects every connection to start with a
PROXY header, as an L4 balancer (HAProxy's C{send-proxy} or
C{send-proxy-v2}, AWS NLB, ...) writes it: the address it carries is the
connection's peer (so the client of the access log, C{X-Forwarded-For}
and C{ip_hash}), and the address the client connected to is the
connection's host, as Twisted's own C{haproxy:} endpoint has it.  A
header that is malformed, or not complete within L{HEADER_TIMEOUT}
seconds, closes the connection without a byte of response.  With TLS
(C{listen_tls = haproxy:tcp:8443}), the header comes before the TLS
handshake, as HAProxy sends it.

Outbound, an upstream with C{send_proxy_protocol = v1} or C{v2} writes a
header on every new connection to its backends, before anything else
(before the TLS handshake of an C{https} backend): the client's address
and the address it connected to.  Health probes send the probe
connection's own addresses (v1), or the C{LOCAL} command (v2), as the
specification advises.

Why not Twisted's C{haproxy:} endpoint (L{twisted.protocols.haproxy}):
its wrapper decides on the protocol version from the first segment
alone, and closes a connection whose first segment is shorter than 8
(version 1) or 16 (version 2) bytes (Twisted ticket #8287), which is a
legal way for TCP to deliver the header; its version 1 parser lets a
C{ValueError} escape on a port that is not a number; it has no timeout,
so a peer that sends half a header holds the connection for ever; and it
hands the connection to the wrapped protocol before the header is read,
so a protocol that asks its peer then learns the balancer's address.
Its parsers are not public (the package exports only C{proxyEndpoint}).
So lbproxy reads the header itself (L{HeaderReader}, strict about what
the specification allows), keeps Twisted's endpoint syntax, and strips
the C{haproxy:} prefix to wrap the listener's factory in
L{ProxyProtocolFactory} (L{listenerParts}), for listeners it opens and
sockets that workers adopt alike.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Callable, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from lbproxy._values import spelledAddress

__all__ = [
    "HEADER_TIMEOUT",
    "HeaderReader",
    "InvalidProxyHeader",
    "ProxyHeader",
    "ProxyHeaderEndpoint",
    "ProxyProtocolFactory",
    "headerV1",
    "headerV2",
    "listenerParts",
    "localHeaderV2",
    "parseV1",
    "parseV2",
]

#: The prefix of a listener's endpoint description that asks for a PROXY
#: header on each connection (Twisted's own plugin's name).
PREFIX = "haproxy:"

#: Seconds a connection to a C{haproxy:} listener has to send its whole
#: PROXY header.  An L4 balancer sends it at once, with the connection's
#: first bytes; 5 seconds leaves room for a lost segment to be sent again
#: (a first retransmission comes after about 1 s, a second after 3 s).
HEADER_TIMEOUT = 5.0

#: The 12 bytes that start a version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: The most bytes of a version 1 line, its CRLF included.
V1_MAX_LINE = 107

_V1_START = b"PROXY "
_V2_PROXY = 0x21
_V2_LOCAL = 0x20
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_V2_UNSPEC = 0x00

#: The address families and transport protocols a version 2 header may
#: name: those lbproxy reads (TCP over IPv4 and IPv6), and those it
#: accepts but does not read (UDP, UNIX sockets), as the specification
#: asks, using the connection's real addresses then.
_V2_READ = {_V2_TCP4: "!4s4sHH", _V2_TCP6: "!16s16sHH"}
_V2_KNOWN = {
    family | protocol for family in (0x00, 0x10, 0x20, 0x30) for protocol in (0, 1, 2)
}

_Address = Union[IPv4Address, IPv6Address]


class InvalidProxyHeader(ValueError):
    """
    What a connection sent is not a PROXY header the specification allows.
    """


class ProxyHeader:
    """
    A PROXY header read.

    @ivar source: the client's address, or L{None} when the header names
        none (a version 1 C{UNKNOWN}, a version 2 C{LOCAL} command, an
        address family not read): the connection's own peer is then the
        client.
    @ivar destination: the address the client connected to, or L{None}
        with C{source}.
    @ivar size: how many bytes the header took.
    """

    def __init__(
        self, source: Optional[_Address], destination: Optional[_Address], size: int
    ) -> None:
        self.source = source
        self.destination = destination
        self.size = size

    def __repr__(self) -> str:
        return f"ProxyHeader({self.source!r}, {self.destination!r}, {self.size!r})"


def _v1Address(text: bytes, version: type[Any]) -> str:
    try:
        if b"%" in text:
            raise ValueError("a scope is no part of an address here")
        address = version(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidProxyHeader(f"not an address: {text[:40]!r}") from None
    return spelledAddress(address)


def _v1Port(text: bytes) -> int:
    # Decimal, no sign, no leading zero (but "0" itself).
    if not (text.isdigit() and len(text) <= 5 and (text == b"0" or text[:1] != b"0")):
        raise InvalidProxyHeader(f"not a port: {text[:40]!r}")
    port = int(text)
    if port > 65535:
        raise InvalidProxyHeader(f"not a port: {text!r}")
    return port


def parseV1(line: bytes) -> ProxyHeader:
    """
    Read a version 1 header line, C{PROXY TCP4 SRC DST SPORT DPORT\\r\\n}
    (or C{TCP6}, or C{UNKNOWN} and anything up to the CRLF), as strictly
    as the specification writes it: single spaces, addresses in their
    canonical form, ports without leading zeroes.

    @param line: the line, its CRLF included.
    @raise InvalidProxyHeader: when it is not such a line.
    """
    if not line.endswith(b"\r\n") or len(line) > V1_MAX_LINE:
        raise InvalidProxyHeader("version 1 line without its CRLF within 107 bytes")
    if b"\r" in line[:-2] or b"\n" in line[:-2]:
        raise InvalidProxyHeader("version 1 line with a lone CR or LF")
    fields = line[:-2].split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise InvalidProxyHeader("version 1 line not starting with 'PROXY '")
    protocol = fields[1]
    if protocol == b"UNKNOWN":
        return ProxyHeader(None, None, len(line))
    if protocol not in (b"TCP4", b"TCP6") or len(fields) != 6:
        raise InvalidProxyHeader(
            f"version 1 line not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT': {line[:60]!r}"
        )
    if protocol == b"TCP4":
        kind: type[_Address] = IPv4Address
        version: type[Any] = ipaddress.IPv4Address
    else:
        kind, version = IPv6Address, ipaddress.IPv6Address
    source = _v1Address(fields[2], version)
    destination = _v1Address(fields[3], version)
    return ProxyHeader(
        kind("TCP", source, _v1Port(fields[4])),
        kind("TCP", destination, _v1Port(fields[5])),
        len(line),
    )


def parseV2(header: bytes) -> ProxyHeader:
    """
    Read a whole version 2 header: signature, version and command,
    family and protocol, length, then the addresses and any TLVs (which
    are skipped).

    @raise InvalidProxyHeader: when it is not such a header.
    """
    if len(header) < 16 or header[:12] != V2_SIGNATURE:
        raise InvalidProxyHeader("not a version 2 header")
    command, family, length = struct.unpack("!BBH", header[12:16])
    if len(header) != 16 + length:
        raise InvalidProxyHeader("version 2 header of the wrong length")
    if command == _V2_LOCAL:
        return ProxyHeader(None, None, len(header))
    if command != _V2_PROXY:
        raise InvalidProxyHeader(f"version 2 header with version/command {command:#04x}")
    if family not in _V2_KNOWN:
        raise InvalidProxyHeader(f"version 2 header with family/protocol {family:#04x}")
    layout = _V2_READ.get(family)
    if layout is None:
        return ProxyHeader(None, None, len(header))
    if length < struct.calcsize(layout):
        raise InvalidProxyHeader("version 2 header too short for its addresses")
    source, destination, sourcePort, destinationPort = struct.unpack_from(
        layout, header, 16
    )
    kind: type[_Address] = IPv4Address if family == _V2_TCP4 else IPv6Address
    return ProxyHeader(
        kind("TCP", spelledAddress(ipaddress.ip_address(source)), sourcePort),
        kind("TCP", spelledAddress(ipaddress.ip_address(destination)), destinationPort),
        len(header),
    )


class HeaderReader:
    """
    Reads a PROXY header, of either version, from bytes as they arrive, in
    segments of any size (one byte at a time if need be): nothing is
    decided before there are enough bytes to decide, and bytes that
    cannot start a header are refused as soon as they are seen.

    A version 2 header whose length is known is gathered segment by
    segment and joined once it is all there: up to 64 KiB sent a byte at a
    time would otherwise be copied once per byte (some 2 GB of copying:
    107 to 114 ms of CPU per such connection on CPython 3.11, against 13
    to 14 ms gathered, C{benchmarks/proxyheader.py}).

    @ivar buffer: the bytes received and not yet read (once a version 2
        header's length is known, up to the segment that completes it).
    """

    def __init__(self) -> None:
        self.buffer = b""
        #: Segments that came after L{buffer}, not yet joined to it.
        self._segments: list[bytes] = []
        #: Bytes in L{buffer} and L{_segments}.
        self._received = 0
        #: The bytes a version 2 header needs, once its length is read.
        self._needed = 0

    def feed(self, data: bytes) -> Optional[ProxyHeader]:
        """
        Add C{data}.

        @return: the header once it is complete (the bytes after it are
            then left in L{buffer}), else L{None}.
        @raise InvalidProxyHeader: when the bytes are not a header.
        """
        self._received += len(data)
        if self._received < self._needed:
            self._segments.append(data)
            return None
        if self._segments:
            self._segments.append(data)
            data = b"".join(self._segments)
            self._segments = []
        buffer = self.buffer = self.buffer + data
        if buffer[:1] == b"\r":
            seen = buffer[:12]
            if seen != V2_SIGNATURE[: len(seen)]:
                raise InvalidProxyHeader("neither a version 1 nor a version 2 header")
            if len(buffer) > 12 and buffer[12] not in (_V2_LOCAL, _V2_PROXY):
                raise InvalidProxyHeader(
                    f"version 2 header with version/command {buffer[12]:#04x}"
                )
            if len(buffer) < 16:
                return None
            size = 16 + struct.unpack("!H", buffer[14:16])[0]
            if len(buffer) < size:
                self._needed = size
                return None
            header = parseV2(buffer[:size])
        else:
            seen = buffer[:6]
            if seen != _V1_START[: len(seen)]:
                raise InvalidProxyHeader("neither a version 1 nor a version 2 header")
            end = buffer.find(b"\r\n", 0, V1_MAX_LINE)
            if end < 0:
                if (
                    len(buffer) >= V1_MAX_LINE
                    or b"\n" in buffer
                    or b"\r" in buffer[:-1]
                ):
                    raise InvalidProxyHeader(
                        "version 1 line without its CRLF within 107 bytes"
                    )
                return None
            size = end + 2
            header = parseV1(buffer[:size])
        self.buffer = buffer[size:]
        self._received, self._needed = len(self.buffer), 0
        return header


class ProxyProtocolReceiver(ProtocolWrapper):
    """
    One connection to a C{haproxy:} listener: reads the PROXY header, then
    builds the listener's own protocol and hands it the connection, with
    the header's addresses as the connection's peer and host.

    Until the header is read the listener's protocol does not exist: it is
    built (by the wrapped factory, with the client's address) and
    connected once the addresses are known, so that nothing of it (its
    timers, its count of open connections, a TLS handshake) runs for a
    connection that never sends a valid header.  A header that is
    malformed, or not complete within the factory's timeout, aborts the
    connection; nothing is written to it.
    """

    _log = Logger()

    #: The header, once read.
    proxyHeader: Optional[ProxyHeader] = None
    transport: Any
    wrappedProtocol: Any

    def __init__(self, factory: ProxyProtocolFactory) -> None:
        # No wrapped protocol yet: it is built once the header is read.
        ProtocolWrapper.__init__(self, factory, None)  # type: ignore[arg-type]
        self.proxyFactory = factory
        self.proxyReader: Optional[HeaderReader] = HeaderReader()
        self.proxyTimeout: Any = None

    def logPrefix(self) -> str:
        """
        The listener's protocol, once there is one, as Twisted's wrapper
        names it; before, the listener's (C{Site (PROXY)}), where the
        wrapper would say C{NoneType}.  The transport takes this as its
        connection's log prefix when it is made.
        """
        if self.wrappedProtocol is None:
            return self.proxyFactory.logPrefix()
        return ProtocolWrapper.logPrefix(self)

    def makeConnection(self, transport: Any) -> None:
        from zope.interface import directlyProvides, providedBy

        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        factory = self.proxyFactory
        factory.registerProtocol(self)
        self.proxyTimeout = factory.clock.callLater(factory.timeout, self._headerLate)

    def _headerLate(self) -> None:
        self.proxyTimeout = None
        self._refuse(f"no complete PROXY header within {self.proxyFactory.timeout:g}s")

    def _refuse(self, why: str) -> None:
        peer = self.transport.getPeer()
        self._log.info(
            "PROXY protocol: closing the connection from {peer}: {why}",
            peer=f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}",
            why=why,
        )
        self.proxyReader = None
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        reader = self.proxyReader
        if reader is None:
            if self.wrappedProtocol is not None:
                self.wrappedProtocol.dataReceived(data)
            return
        try:
            header = reader.feed(data)
        except InvalidProxyHeader as e:
            self._cancelTimeout()
            self._refuse(str(e))
            return
        if header is None:
            return
        self._cancelTimeout()
        self.proxyReader = None
        self.proxyHeader = header
        protocol = self.proxyFactory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self.transport.loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if reader.buffer and self.wrappedProtocol is not None and self.connected:
            protocol.dataReceived(reader.buffer)

    def abandon(self) -> None:
        """
        If the header is still being read, give up on the connection:
        abort it (its listener stops listening).
        """
        if self.proxyReader is not None and self.connected:
            self._cancelTimeout()
            self.proxyReader = None
            self.transport.abortConnection()

    def _cancelTimeout(self) -> None:
        call, self.proxyTimeout = self.proxyTimeout, None
        if call is not None and call.active():
            call.cancel()

    def getPeer(self) -> IAddress:
        header = self.proxyHeader
        if header is not None and header.source is not None:
            return header.source
        peer: IAddress = self.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        header = self.proxyHeader
        if header is not None and header.destination is not None:
            return header.destination
        host: IAddress = self.transport.getHost()
        return host

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimeout()
        self.connected = 0
        self.proxyFactory.unregisterProtocol(self)
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


class ProxyProtocolFactory(WrappingFactory):
    """
    The factory of a C{haproxy:} listener: each connection first sends a
    PROXY header (see L{ProxyProtocolReceiver}), then speaks the
    protocol of C{wrappedFactory}.

    @ivar clock: the L{IReactorTime} of the header timeout.
    @ivar timeout: seconds a connection has to send its header.
    """

    protocol = ProxyProtocolReceiver  # type: ignore[assignment]

    def __init__(
        self, wrappedFactory: Any, clock: Any = None, timeout: float = HEADER_TIMEOUT
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        WrappingFactory.__init__(self, wrappedFactory)  # type: ignore[arg-type]
        self.clock = clock
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<ProxyProtocolFactory around {self.wrappedFactory!r}>"

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        name = prefix() if callable(prefix) else type(self.wrappedFactory).__name__
        return f"{name} (PROXY)"

    def buildProtocol(self, addr: Any) -> ProxyProtocolReceiver:
        return ProxyProtocolReceiver(self)

    def doStop(self) -> None:
        """
        The listener stopped listening: the connections still sending
        their header are aborted (their timeouts with them); those past
        it are the wrapped factory's to close.
        """
        for protocol in list(self.protocols):
            protocol.abandon()
        WrappingFactory.doStop(self)  # type: ignore[arg-type]


def listenerParts(description: str, factory: Any, clock: Any = None) -> tuple[str, Any]:
    """
    The endpoint description and factory a listener on C{description}
    serving C{factory} really listens with: for C{haproxy:DESCRIPTION},
    DESCRIPTION and C{factory} wrapped in L{ProxyProtocolFactory};
    anything else unchanged.
    """
    if description[: len(PREFIX)].lower() == PREFIX:
        return description[len(PREFIX) :], ProxyProtocolFactory(factory, clock)
    return description, factory


def withoutPrefix(description: str) -> str:
    """
    C{description} without its C{haproxy:} prefix, if it has one.
    """
    return listenerParts(description, None)[0]


# Writing headers.


def _ip(address: IAddress) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None
    host = address.host.partition("%")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _pair(
    source: IAddress, destination: IAddress
) -> Optional[tuple[Any, Any, int, int]]:
    """
    The two addresses in one family, as the header needs them: IPv4 when
    both are IPv4 (or IPv4-mapped IPv6), else IPv6 (an IPv4 one mapped);
    L{None} when one is not an IP address at all.
    """
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None:
        return None
    sport, dport = source.port, destination.port  # type: ignore[attr-defined]
    v4 = [a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) else a for a in (src, dst)]
    if v4[0] is not None and v4[1] is not None:
        return v4[0], v4[1], sport, dport
    mapped = [
        ipaddress.IPv6Address("::ffff:" + str(a)) if isinstance(a, ipaddress.IPv4Address) else a
        for a in (src, dst)
    ]
    return mapped[0], mapped[1], sport, dport


def headerV1(source: IAddress, destination: IAddress) -> bytes:
    """
    The version 1 line for a connection from C{source} to C{destination}:
    C{PROXY TCP4 SRC DST SPORT DPORT\\r\\n}, C{TCP6} when either is an
    IPv6 address (not IPv4-mapped), and C{PROXY UNKNOWN\\r\\n} when either
    is not an IP address (a UNIX socket's peer).
    """
    pair = _pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst, sport, dport = pair
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {spelledAddress(src)} {spelledAddress(dst)} {sport} {dport}\r\n".encode("ascii")


def headerV2(source: IAddress, destination: IAddress) -> bytes:
    """
    The version 2 header for a connection from C{source} to
    C{destination}: the C{PROXY} command with TCP over IPv4 or IPv6 (as
    L{headerV1} chooses), or the C{LOCAL} command when either is not an
    IP address.
    """
    pair = _pair(source, destination)
    if pair is None:
        return localHeaderV2()
    src, dst, sport, dport = pair
    family = _V2_TCP4 if src.version == 4 else _V2_TCP6
    addresses = struct.pack(_V2_READ[family], src.packed, dst.packed, sport, dport)
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(addresses)) + addresses


def localHeaderV2() -> bytes:
    """
    The version 2 header of a connection the proxy makes on its own
    behalf (a health probe): the C{LOCAL} command, no address.
    """
    return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, _V2_UNSPEC, 0)


#: The header writer of each C{send_proxy_protocol} version.
WRITERS: dict[int, Callable[[IAddress, IAddress], bytes]] = {1: headerV1, 2: headerV2}

#: How many (client, listener) pairs a L{HeaderWriter} remembers the
#: header of.
_CACHED_HEADERS = 1024


class HeaderWriter:
    """
    The headers of one C{send_proxy_protocol} version, as each request
    asks for its client's: the header of the last few hundred pairs of
    addresses is remembered, since a client connection sends request
    after request with the same pair, and writing a header (parsing two
    addresses with L{ipaddress}) costs several microseconds.

    @ivar version: 1 or 2.
    """

    def __init__(self, version: int) -> None:
        self.version = version
        self._write = WRITERS[version]
        self._headers: dict[tuple[Any, Any], bytes] = {}

    def __call__(self, client: Any, host: Any) -> bytes:
        """
        The header of a connection from C{client} to C{host}.
        """
        key = (client, host)
        try:
            return self._headers[key]
        except KeyError:
            pass
        except TypeError:
            # An address that cannot be a key: written every time.
            return self._write(client, host)
        header = self._write(client, host)
        if len(self._headers) >= _CACHED_HEADERS:
            self._headers.clear()
        self._headers[key] = header
        return header


def probeHeader(version: int, transport: Any) -> bytes:
    """
    The header a health probe's connection sends: version 1, the line of
    the connection's own addresses (the specification's advice for
    health checks); version 2, the C{LOCAL} command.
    """
    if version == 2:
        return localHeaderV2()
    return headerV1(transport.getHost(), transport.getPeer())


#: A header, or what makes it from the connection's transport once it is
#: connected.
HeaderSource = Union[bytes, Callable[[Any], bytes]]


class _HeaderFirst(ProtocolWrapper):
    """
    Writes the PROXY header on a new connection before its protocol (a TLS
    layer, or the HTTP client) writes anything.
    """

    def makeConnection(self, transport: Any) -> None:
        header = self.factory.proxyHeader  # type: ignore[attr-defined]
        transport.write(header if isinstance(header, bytes) else header(transport))
        ProtocolWrapper.makeConnection(self, transport)


class _HeaderFirstFactory(WrappingFactory):
    protocol = _HeaderFirst  # type: ignore[assignment]
    noisy = False

    def __init__(self, wrappedFactory: Any, header: HeaderSource) -> None:
        WrappingFactory.__init__(self, wrappedFactory)  # type: ignore[arg-type]
        self.proxyHeader = header


class IProxyHeaderEndpoint(Interface):
    """
    A client endpoint (an L{IStreamClientEndpoint} too) whose connections
    start with a PROXY header.
    """

    version = Attribute("The PROXY protocol version: 1 or 2.")

    def connectWithHeader(factory: Any, header: HeaderSource) -> Deferred[Any]:
        """
        Connect C{factory}'s protocol, the connection starting with
        C{header} (bytes, or a callable that makes them from the
        connection's transport).
        """


@implementer(IProxyHeaderEndpoint, IStreamClientEndpoint)
class ProxyHeaderEndpoint:
    """
    A backend's endpoint for C{send_proxy_protocol}: a TCP endpoint, and
    the TLS of an C{https} backend layered on it only once the header is
    written.  L{connect} (a health probe's connection) sends
    L{probeHeader}; L{connectWithHeader} a client's.

    Twisted's L{twisted.internet.endpoints.wrapClientTLS} starts the
    handshake as soon as the TCP connection is made, so the TLS layer is
    built here instead, with the same public L{TLSMemoryBIOFactory}, under
    the header.
    """

    def __init__(self, tcp: IStreamClientEndpoint, creator: Any, version: int) -> None:
        """
        @param tcp: the endpoint of the backend's TCP connections.
        @param creator: the L{IOpenSSLClientConnectionCreator} of an
            C{https} backend, or L{None}.
        @param version: 1 or 2.
        """
        self.tcp = tcp
        self.creator = creator
        self.version = version

    def connect(self, factory: Any) -> Deferred[Any]:
        version = self.version
        return self.connectWithHeader(factory, lambda t: probeHeader(version, t))

    def connectWithHeader(self, factory: Any, header: HeaderSource) -> Deferred[Any]:
        tls = self.creator is not None
        if tls:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(self.creator, True, factory)
        connecting: Deferred[Any] = self.tcp.connect(_HeaderFirstFactory(factory, header))

        def inner(shim: Any) -> Any:
            protocol = shim.wrappedProtocol
            return protocol.wrappedProtocol if tls else protocol

        return connecting.addCallback(inner)
