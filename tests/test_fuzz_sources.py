"""
Hypothesis-driven tests of the input surfaces that other machines write:
the inbound PROXY protocol header (L{lbproxy._proxyprotocol}), DNS answers
turned into backends (L{lbproxy._dns}), and etcd values and watch events
turned into backends (L{lbproxy._etcd}, L{lbproxy._etcdsource}).

Whatever those send, lbproxy raises nothing, keeps nothing it should not,
and does what a small reference model written here from the documentation
says it should: a PROXY header is read whatever the segments it comes in,
a DNS answer gives the backends that docs/howto/dns.rst describes, and the
backends of an etcd prefix are the last good server line of each key.

Where a random draw would seldom reach a case (each bad part of a server
line, each version and family byte of a version 2 header, each field of
etcd's JSON), a test goes through every one.

No socket and no real time: the PROXY reader runs over a
L{StringTransport} and a L{Clock}, the DNS source over a scripted
resolver and a L{Clock}, and the etcd source against
L{tests.fakeetcd.FakeEtcd} through treq's C{StubTreq}.  Every test is
derandomized and bounded, as those of tests/test_fuzz.py are.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import json
import struct
from typing import Any, Callable, Optional, Union

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSFormatError,
    DNSNameError,
    DNSQueryRefusedError,
    DNSServerError,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy._backend import BackendState
from lbproxy._config import parseServer
from lbproxy._dns import RETRY_CAP, DNSBackends, initialBackends
from lbproxy._etcd import (
    Compacted,
    EtcdError,
    WatchResponse,
    parseRange,
    parseWatchResponse,
)
from lbproxy._etcdsource import EtcdSource
from lbproxy._pool import Pool
from lbproxy._proxyprotocol import (
    HEADER_TIMEOUT,
    V1_MAX_LINE,
    V2_SIGNATURE,
    ProxyProtocolFactory,
)
from tests.fakeetcd import FakeEtcd
from tests.test_fuzz import _mutate

_SETTINGS = settings(
    max_examples=120,
    # Bounded by the number of examples; no per-example deadline, which a
    # loaded machine (or PyPy warming up) turns into a flaky failure.
    deadline=None,
    derandomize=True,
    database=None,
    # One failure, shown whole: trial does not show the parts of an
    # ExceptionGroup.
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_Address = Union[IPv4Address, IPv6Address]


# The PROXY protocol.

#: The connection's own addresses: those of the L4 balancer in front.
_BALANCER = IPv4Address("TCP", "10.1.1.1", 40000)
_LISTENER = IPv4Address("TCP", "10.1.1.2", 8080)

#: The most bytes a version 2 header can take: 16, then a 16-bit length.
_V2_MAX = 16 + 65535

_ports = st.integers(0, 65535)


@st.composite
def _proxyHeaders(draw: Any) -> tuple[bytes, Optional[_Address], Optional[_Address]]:
    """
    A valid PROXY header of either version, and the source and destination
    addresses it names (L{None} when it names none).
    """
    kind = draw(
        st.sampled_from(
            ["v1-tcp4", "v1-tcp6", "v1-unknown", "v2-tcp4", "v2-tcp6", "v2-local", "v2-unread"]
        )
    )
    if kind == "v1-unknown":
        rest = draw(st.binary(max_size=V1_MAX_LINE - 16))
        rest = rest.replace(b"\r", b"").replace(b"\n", b"")
        tail = draw(st.sampled_from([b"", b" " + rest]))
        return b"PROXY UNKNOWN" + tail + b"\r\n", None, None
    version = 4 if kind.endswith("4") else 6
    addresses = st.ip_addresses(v=version) if kind != "v2-unread" else st.just(None)
    source, destination = draw(addresses), draw(addresses)
    sourcePort, destinationPort = draw(_ports), draw(_ports)
    kinds: dict[int, Any] = {4: IPv4Address, 6: IPv6Address}
    if kind.startswith("v1"):

        def text(address: Any) -> bytes:
            # The specification asks for the canonical form; the reader
            # takes any form, and gives the canonical one.
            form = draw(st.sampled_from(["short", "long", "upper"]))
            if form == "long":
                return address.exploded.encode("ascii")
            if form == "upper":
                return str(address).upper().encode("ascii")
            return str(address).encode("ascii")

        line = b"PROXY TCP%d %s %s %d %d\r\n" % (
            version,
            text(source),
            text(destination),
            sourcePort,
            destinationPort,
        )
        return (
            line,
            kinds[version]("TCP", _canonical(source), sourcePort),
            kinds[version]("TCP", _canonical(destination), destinationPort),
        )
    # Version 2: TLVs (or any bytes) may follow the addresses, up to the
    # 16-bit length; now and then a big one, near the limit.
    tlvs = draw(st.binary(max_size=40))
    if draw(st.integers(0, 9)) == 0:
        tlvs += bytes(draw(st.integers(0, 65535 - 36 - 40)))
    if kind == "v2-local":
        family = draw(st.integers(0, 255))
        return _v2(0x20, family, tlvs), None, None
    if kind == "v2-unread":
        family = draw(st.sampled_from([0x00, 0x01, 0x02, 0x10, 0x12, 0x20, 0x22, 0x30, 0x31, 0x32]))
        return _v2(0x21, family, tlvs), None, None
    layout = "!4s4sHH" if version == 4 else "!16s16sHH"
    body = struct.pack(layout, source.packed, destination.packed, sourcePort, destinationPort)
    return (
        _v2(0x21, 0x11 if version == 4 else 0x21, body + tlvs),
        kinds[version]("TCP", _canonical(source), sourcePort),
        kinds[version]("TCP", _canonical(destination), destinationPort),
    )


def _canonical(address: Any) -> str:
    """
    The text of an IP address lbproxy gives: RFC 5952's, with an
    IPv4-mapped IPv6 address in the mixed form (C{::ffff:192.0.2.1}).
    """
    packed = address.packed
    if len(packed) == 16 and packed[:12] == bytes(10) + b"\xff\xff":
        return "::ffff:" + ".".join(str(byte) for byte in packed[12:])
    return str(address)


def _v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body


#: How the bytes are cut into segments: at the given offsets, or every N
#: bytes.
_segmenting = st.one_of(
    st.tuples(st.just("cuts"), st.lists(st.integers(0, 70000), max_size=8)),
    st.tuples(st.just("every"), st.integers(1, 9)),
)


def _segments(data: bytes, segmenting: tuple[str, Any]) -> list[bytes]:
    """
    C{data} cut into non-empty segments (TCP never delivers an empty one).
    """
    how, value = segmenting
    if how == "every":
        # At most a few hundred segments, however long the data.
        size = max(value, len(data) // 300 + 1)
        points = list(range(size, len(data), size))
    else:
        points = sorted({cut % (len(data) + 1) for cut in value})
    pieces, start = [], 0
    for point in points + [len(data)]:
        if point > start:
            pieces.append(data[start:point])
            start = point
    return pieces


def _v1Address(text: bytes, version: int) -> Optional[str]:
    """
    The canonical form of an address of a version 1 line, or L{None} when
    the field is not an address of that version (a scope is not allowed).
    """
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if address.version != version or b"%" in text:
        return None
    return _canonical(address)


def _v1Port(text: bytes) -> Optional[int]:
    """
    A port of a version 1 line: decimal, no sign, no leading zero.
    """
    if not (1 <= len(text) <= 5 and all(48 <= c <= 57 for c in text)):
        return None
    if len(text) > 1 and text[:1] == b"0":
        return None
    port = int(text)
    return port if port <= 65535 else None


def _expectedHeader(data: bytes) -> tuple[Any, ...]:
    """
    What a reader given all of C{data} must do, from the specification
    (haproxy's proxy-protocol.txt) as lbproxy reads it:

        - C{("deliver", source, destination, rest)}: a valid header,
          naming those addresses (L{None}: the connection's own), then
          C{rest};
        - C{("refuse",)}: the bytes are not a header;
        - C{("wait",)}: not yet complete, and still framed as a header
          can be: starting as C{"PROXY "} does, with no CR or LF (but a
          last CR), shorter than 107 bytes; or starting as the version 2
          signature and a known version and command do, shorter than its
          length says.
    """
    if not data:
        return ("wait",)
    if data[:1] == b"\r":
        if data[:12] != V2_SIGNATURE[: len(data[:12])]:
            return ("refuse",)
        if len(data) > 12 and data[12] not in (0x20, 0x21):
            return ("refuse",)
        if len(data) < 16:
            return ("wait",)
        size = 16 + int.from_bytes(data[14:16], "big")
        if len(data) < size:
            return ("wait",)
        command, family, body, rest = data[12], data[13], data[16:size], data[size:]
        if command == 0x20:
            return ("deliver", None, None, rest)
        if family >> 4 > 3 or family & 0x0F > 2:
            return ("refuse",)
        if family not in (0x11, 0x21):
            return ("deliver", None, None, rest)
        width = 4 if family == 0x11 else 16
        if len(body) < 2 * width + 4:
            return ("refuse",)
        kind: Any = IPv4Address if family == 0x11 else IPv6Address
        sourcePort, destinationPort = struct.unpack("!HH", body[2 * width : 2 * width + 4])
        return (
            "deliver",
            kind("TCP", _canonical(ipaddress.ip_address(body[:width])), sourcePort),
            kind("TCP", _canonical(ipaddress.ip_address(body[width : 2 * width])), destinationPort),
            rest,
        )
    if data[:6] != b"PROXY "[: len(data[:6])]:
        return ("refuse",)
    end = data.find(b"\r\n")
    if end < 0 or end + 2 > V1_MAX_LINE:
        if len(data) >= V1_MAX_LINE or b"\n" in data or b"\r" in data[:-1]:
            return ("refuse",)
        return ("wait",)
    line, rest = data[: end + 2], data[end + 2 :]
    body = line[:-2]
    if b"\r" in body or b"\n" in body:
        return ("refuse",)
    if body == b"PROXY UNKNOWN" or body.startswith(b"PROXY UNKNOWN "):
        return ("deliver", None, None, rest)
    fields = body.split(b" ")
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        return ("refuse",)
    version = 4 if fields[1] == b"TCP4" else 6
    source, destination = _v1Address(fields[2], version), _v1Address(fields[3], version)
    sourcePort, destinationPort = _v1Port(fields[4]), _v1Port(fields[5])
    if source is None or destination is None or sourcePort is None or destinationPort is None:
        return ("refuse",)
    kind = IPv4Address if version == 4 else IPv6Address
    return (
        "deliver",
        kind("TCP", source, sourcePort),
        kind("TCP", destination, destinationPort),
        rest,
    )


class _Recorder(Protocol):
    """
    The listener's protocol: records what it is told, in order.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def connectionMade(self) -> None:
        self.events.append(("made", self.transport.getPeer(), self.transport.getHost()))

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.events.append(("lost",))


class _RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built: list[_Recorder] = []
        self.addresses: list[Any] = []

    def buildProtocol(self, addr: Any) -> _Recorder:
        self.addresses.append(addr)
        protocol = _Recorder()
        self.built.append(protocol)
        return protocol


class _Connection:
    """
    One connection to a C{haproxy:} listener, fed segment by segment.

    @ivar builtAt: how many bytes had arrived before, and with, the
        segment in which the listener's protocol was built, or L{None}.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.inner = _RecorderFactory()
        self.factory = ProxyProtocolFactory(self.inner, self.clock)
        self.factory.doStart()
        self.protocol: Any = self.factory.buildProtocol(_BALANCER)
        self.transport = StringTransport(hostAddress=_LISTENER, peerAddress=_BALANCER)
        self.protocol.makeConnection(self.transport)
        self.received = 0
        self.builtAt: Optional[tuple[int, int]] = None

    def feed(self, segments: list[bytes]) -> None:
        for segment in segments:
            self.protocol.dataReceived(segment)
            self.received += len(segment)
            if self.builtAt is None and self.inner.built:
                self.builtAt = (self.received - len(segment), self.received)

    def outcome(self) -> tuple[Any, ...]:
        """
        What the reader did, as L{_expectedHeader} says it.
        """
        if self.inner.built:
            [inner] = self.inner.built
            made, *data = inner.events
            if data and data[-1] == ("lost",):
                data.pop()
            assert made[0] == "made", inner.events
            assert all(event[0] == "data" for event in data), inner.events
            return ("deliver", made[1], made[2], b"".join(event[1] for event in data))
        if self.transport.disconnecting:
            return ("refuse",)
        return ("wait",)

    def expected(self, outcome: tuple[Any, ...]) -> tuple[Any, ...]:
        """
        L{_expectedHeader}'s outcome, with the connection's own addresses
        for a header that names none.
        """
        if outcome[0] != "deliver":
            return outcome
        _, source, destination, rest = outcome
        if source is None:
            source, destination = _BALANCER, _LISTENER
        return ("deliver", source, destination, rest)


#: The fields of a version 1 line: good addresses of each family, bad
#: addresses, good and bad ports.
_V1_ADDRESSES = {
    b"TCP4": [b"192.168.0.1", b"0.0.0.0", b"255.255.255.255"],
    b"TCP6": [b"::1", b"2001:DB8::1", b"2001:db8:0:0:0:0:0:1", b"::ffff:1.2.3.4"],
}
_V1_BAD_ADDRESSES = [b"192.168.000.1", b"192.168.0.256", b"1.2.3", b"fe80::1%eth0", b"::g",
                     b"", b"localhost"]
_V1_PORTS = [b"0", b"1", b"80", b"65535"]
_V1_BAD_PORTS = [b"65536", b"080", b"00", b"+80", b"-1", b"8a", b"123456", b""]


@st.composite
def _v1Lines(draw: Any) -> bytes:
    """
    A version 1 line of good fields, and at most one bad one.
    """
    bad = draw(st.sampled_from([None, "protocol", "address", "port", "shape", "space"]))
    protocol = draw(st.sampled_from([b"TCP4", b"TCP6"]))
    fields = [draw(st.sampled_from(_V1_ADDRESSES[protocol])) for _ in range(2)]
    fields += [draw(st.sampled_from(_V1_PORTS)) for _ in range(2)]
    space = b" "
    which = draw(st.integers(0, 1))
    if bad == "protocol":
        protocol = draw(st.sampled_from([b"TCP5", b"tcp4", b"", b"UDP4"]))
    elif bad == "address":
        other = b"TCP6" if protocol == b"TCP4" else b"TCP4"
        fields[which] = draw(
            st.sampled_from(_V1_BAD_ADDRESSES + _V1_ADDRESSES[other])
        )
    elif bad == "port":
        fields[2 + which] = draw(st.sampled_from(_V1_BAD_PORTS))
    elif bad == "shape":
        if draw(st.booleans()):
            del fields[draw(st.integers(0, 3))]
        else:
            fields.insert(draw(st.integers(0, 4)), draw(st.sampled_from([b"80", b"x", b""])))
    elif bad == "space":
        space = b"  "
    return b"PROXY " + protocol + b"".join(space + field for field in fields) + b"\r\n"


@st.composite
def _v2Headers(draw: Any) -> bytes:
    """
    A version 2 header of good fields, and at most one bad one.
    """
    bad = draw(st.sampled_from([None, "command", "family", "short", "length"]))
    command, family = 0x21, draw(st.sampled_from([0x11, 0x21]))
    size = 12 if family == 0x11 else 36
    body = draw(st.binary(min_size=size, max_size=size + 20))
    length = len(body)
    if bad == "command":
        command = draw(st.one_of(st.sampled_from([0x22, 0x11, 0x00, 0x2F, 0x31]),
                                 st.integers(0, 255)))
    elif bad == "family":
        family = draw(st.one_of(st.sampled_from([0x13, 0x33, 0x03, 0x41, 0xF1, 0x14]),
                                st.integers(0, 255)))
    elif bad == "short":
        body = body[: draw(st.integers(0, size - 1))]
        length = len(body)
    elif bad == "length":
        length = max(0, length + draw(st.sampled_from([-1, 1, -12, 40, 65535])))
        length = min(length, 65535)
    return V2_SIGNATURE + struct.pack("!BBH", command, family, length) + body


class ProxyProtocolTests(SynchronousTestCase):
    """
    The inbound PROXY protocol reader (L{ProxyProtocolFactory}), whatever a
    hostile client sends, in whatever segments.
    """

    def check(self, data: bytes, segmenting: tuple[str, Any]) -> _Connection:
        """
        Feed C{data} in the segments C{segmenting} makes; check that what
        the reader did is what L{_expectedHeader} says, and that a refusal
        writes nothing and builds nothing.
        """
        connection = _Connection()
        connection.feed(_segments(data, segmenting))
        outcome = connection.outcome()
        self.assertEqual(outcome, connection.expected(_expectedHeader(data)), data[:120])
        self.assertEqual(connection.transport.value(), b"")
        if outcome[0] == "deliver":
            # The header was read with its last byte, not before, not
            # after.
            size = len(data) - len(outcome[3])
            assert connection.builtAt is not None
            before, after = connection.builtAt
            self.assertTrue(before < size <= after, (before, size, after))
            self.assertEqual(connection.inner.addresses, [outcome[1]])
            self.assertFalse(connection.transport.disconnecting)
            self.assertEqual(connection.clock.getDelayedCalls(), [])
        elif outcome[0] == "refuse":
            self.assertEqual(connection.inner.built, [])
            self.assertEqual(connection.clock.getDelayedCalls(), [])
            # What comes after the refusal is dropped, not buffered.
            connection.feed([b"PROXY UNKNOWN\r\n", bytes(500)])
            self.assertEqual(connection.inner.built, [])
            self.assertEqual(connection.transport.value(), b"")
        else:
            # A header still incomplete when its time is up is refused.
            connection.clock.advance(HEADER_TIMEOUT)
            self.assertTrue(connection.transport.disconnecting)
            self.assertEqual(connection.inner.built, [])
            self.assertEqual(connection.transport.value(), b"")
        connection.protocol.connectionLost(Failure(ConnectionLost()))
        connection.factory.doStop()
        self.assertEqual(connection.clock.getDelayedCalls(), [])
        self.assertEqual(self.flushLoggedErrors(), [])
        return connection

    @_SETTINGS
    @given(_proxyHeaders(), st.binary(max_size=200), _segmenting)
    def test_validHeaders(
        self,
        header: tuple[bytes, Optional[_Address], Optional[_Address]],
        payload: bytes,
        segmenting: tuple[str, Any],
    ) -> None:
        """
        A valid header of either version (IPv4, IPv6, UNKNOWN, LOCAL,
        families not read, TLVs up to the 16-bit length), then any bytes,
        cut anywhere: the listener's protocol is built once the header's
        last byte is in, sees exactly the header's addresses (or the
        connection's own when it names none), and receives exactly the
        bytes after it, in order.
        """
        data, source, destination = header
        connection = self.check(data + payload, segmenting)
        if source is None:
            source, destination = _BALANCER, _LISTENER
        self.assertEqual(connection.outcome(), ("deliver", source, destination, payload))

    @_SETTINGS
    @given(
        _proxyHeaders(),
        st.binary(max_size=40),
        st.lists(
            st.tuples(
                st.integers(0, 2),
                st.integers(0, 120),
                st.integers(0, 8),
                st.one_of(
                    st.sampled_from(
                        [b" ", b"\r", b"\n", b"\r\n", b"\x00", b"\xff", b"0", b"9", b":",
                         b".", b"%", b"-", b"\x20", b"\x21", b"\x11", b"\x22", b"\x31",
                         b"UNKNOWN", b"TCP4", b"TCP6", b"PROXY ", b"65536"]
                    ),
                    st.binary(min_size=1, max_size=3),
                ),
            ),
            min_size=1,
            max_size=4,
        ),
        _segmenting,
    )
    def test_mutatedHeaders(
        self,
        header: tuple[bytes, Optional[_Address], Optional[_Address]],
        payload: bytes,
        edits: list[tuple[int, int, int, bytes]],
        segmenting: tuple[str, Any],
    ) -> None:
        """
        A valid header and its bytes after, with bytes inserted, deleted
        and replaced, cut anywhere: nothing is raised, and the reader
        delivers exactly when the bytes start with a valid header (with
        its addresses and the bytes after it), refuses the connection
        without writing anything when they cannot, and waits only while
        they are framed as an incomplete header.
        """
        self.check(_mutate(header[0] + payload, edits), segmenting)

    @_SETTINGS
    @given(
        st.sampled_from([b"", b"P", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE[:5],
                         V2_SIGNATURE, V2_SIGNATURE + b"\x21", V2_SIGNATURE + b"\x20"]),
        st.binary(max_size=300),
        _segmenting,
    )
    def test_arbitraryBytes(
        self, start: bytes, data: bytes, segmenting: tuple[str, Any]
    ) -> None:
        """
        Any bytes at all (after the start of a header, now and then, to get
        past the first checks): the same as above.
        """
        self.check(start + data, segmenting)

    @_SETTINGS
    @given(_v1Lines(), st.binary(max_size=20), _segmenting)
    def test_v1Fields(
        self, line: bytes, payload: bytes, segmenting: tuple[str, Any]
    ) -> None:
        """
        Version 1 lines made of good fields and at most one bad one (an
        unknown protocol; an address of the other family, not an address,
        with leading zeroes or a scope; a port signed, with leading
        zeroes, too large; a field missing or one too many; two spaces),
        then any bytes: as above.
        """
        self.check(line + payload, segmenting)

    def test_everyV2CommandAndFamily(self) -> None:
        """
        Every version and command byte (with TCP over IPv4), and every
        family and protocol byte (with the C{PROXY} and C{LOCAL}
        commands, and bodies of no address, IPv4 and IPv6 addresses): as
        above.
        """
        for command in range(256):
            self.check(_v2(command, 0x11, bytes(12)) + b"after", ("cuts", []))
        for command in (0x20, 0x21):
            for family in range(256):
                for size in (0, 36):
                    self.check(_v2(command, family, bytes(range(size))) + b"after", ("cuts", []))

    @_SETTINGS
    @given(_v2Headers(), st.binary(max_size=20), _segmenting)
    def test_v2Fields(
        self, header: bytes, payload: bytes, segmenting: tuple[str, Any]
    ) -> None:
        """
        Version 2 headers with at most one field bad (another version or
        command, any family and protocol byte, a body too short for its
        addresses, a length that is not the body's): as above.
        """
        self.check(header + payload, segmenting)

    @_SETTINGS
    @given(
        st.one_of(
            st.tuples(st.just(1), st.integers(0, 200)),
            st.tuples(st.just(2), st.integers(0, 65535)),
        ),
        st.integers(0, 255),
        _segmenting,
    )
    def test_headerThatNeverEnds(
        self, shape: tuple[int, int], filler: int, segmenting: tuple[str, Any]
    ) -> None:
        """
        A header that never ends is never buffered past the
        specification's limits: a version 1 line is refused as soon as 107
        bytes have come without its CRLF; a version 2 header waits for no
        more than the 16 + 65535 bytes its length allows, and is decided
        on its last byte.  Until then, the reader waits; when its time is
        up, it refuses.
        """
        version, length = shape
        if version == 1:
            byte = bytes([filler]) if filler not in (10, 13) else b"x"
            data = b"PROXY " + byte * length
            limit = V1_MAX_LINE
        else:
            # LOCAL: any family, any body; complete at 16 + length bytes.
            data = _v2(0x20, filler, bytes(length))[:-1] if length else V2_SIGNATURE[:-1]
            limit = 16 + length
        self.assertLessEqual(limit, _V2_MAX)
        connection = _Connection()
        for segment in _segments(data, segmenting):
            before = connection.received
            connection.feed([segment])
            if connection.received >= limit:
                self.assertTrue(connection.transport.disconnecting, (before, connection.received))
                self.assertLess(before, limit)
                break
            self.assertFalse(connection.transport.disconnecting, connection.received)
        else:
            self.assertLess(len(data), limit)
            self.assertFalse(connection.transport.disconnecting)
            if version == 2 and length:
                # The last byte completes it.
                connection.feed([b"\x00"])
                self.assertEqual(
                    connection.outcome(), ("deliver", _BALANCER, _LISTENER, b"")
                )
                return
            connection.clock.advance(HEADER_TIMEOUT)
            self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(connection.inner.built, [])


# DNS.

#: The addresses answers are made of: few, so that answers share them.
_DNS_ADDRESSES = {dns.A: ["10.0.0.1", "10.0.0.2", "10.0.0.3", "192.0.2.1"],
                  dns.AAAA: ["::1", "2001:db8::1", "2001:db8::2"]}

#: The server lines a test picks from: address lines, SRV lines, a line
#: without resolve (whose address an answer may repeat), and two lines of
#: one name.
_DNS_LINES = [
    "a.test:80 resolve",
    "b.test:8080 resolve weight=3 backup",
    "a.test:81 resolve",
    "svc.test service=http resolve",
    "https://svc2.test service=https resolve backup",
    "10.0.0.1:80",
]
_SRV_NAMES = ["_http._tcp.svc.test", "_https._tcp.svc2.test"]

#: SRV targets: names the table answers, one it does not, the root (the
#: service is not offered), an empty name, upper case, and a name that
#: is not ASCII (a DNS label may hold any byte).
_SRV_TARGETS = [b"t1.test", b"t2.test", b"t3.test", b"a.test", b"T1.test", b".", b"",
                b"\xff.test", b"missing.test"]
_ADDRESS_NAMES = ["a.test", "b.test", "t1.test", "t2.test", "t3.test", "T1.test"]

_ttls = st.one_of(
    st.sampled_from([0, 1, 5, 30, 299, 300, 301, 3600, 2**31 - 1, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)

#: The errors a query may fail with (besides a name that does not exist).
_DNS_ERRORS: dict[str, Callable[[], Exception]] = {
    "servfail": lambda: DNSServerError("SERVFAIL"),
    "refused": lambda: DNSQueryRefusedError("REFUSED"),
    "formerr": lambda: DNSFormatError("FORMERR"),
    "timeout": lambda: dns.DNSQueryTimeoutError(None),
    "broken": lambda: RuntimeError("a resolver that breaks"),
}
_failures = st.one_of(
    st.just(("nx",)),
    st.just(("nxauthority",)),
    st.tuples(st.just("error"), st.sampled_from(sorted(_DNS_ERRORS))),
)


def _addressOutcomes(kind: int) -> Any:
    """
    The outcome of an A or AAAA query: an answer (addresses of the type
    asked, duplicates, a CNAME, records of the other type), possibly
    empty; or a failure.
    """
    other = dns.AAAA if kind == dns.A else dns.A
    record = st.one_of(
        st.tuples(st.just(kind), st.sampled_from(_DNS_ADDRESSES[kind]), _ttls),
        st.tuples(st.just(kind), st.sampled_from(_DNS_ADDRESSES[kind]), _ttls),
        st.tuples(st.just(dns.CNAME), st.just(b"elsewhere.test"), _ttls),
        st.tuples(st.just(other), st.sampled_from(_DNS_ADDRESSES[other]), _ttls),
    )
    return st.one_of(st.tuples(st.just("answer"), st.lists(record, max_size=4)), _failures)


_srv = st.tuples(
    st.just(dns.SRV),
    st.tuples(
        st.one_of(st.sampled_from([0, 1, 2, 10, 65535]), st.integers(0, 65535)),
        st.one_of(st.sampled_from([0, 1, 5, 65535]), st.integers(0, 65535)),
        st.one_of(st.sampled_from([80, 8080, 65535, 0]), st.integers(0, 65535)),
        # Names that resolve as often as names that do not.
        st.one_of(st.sampled_from(_SRV_TARGETS[:5]), st.sampled_from(_SRV_TARGETS[5:])),
    ),
    _ttls,
)
_srvRecord = st.one_of(
    _srv,
    _srv,
    st.tuples(st.just(dns.CNAME), st.just(b"elsewhere.test"), _ttls),
    st.tuples(st.just(dns.A), st.sampled_from(_DNS_ADDRESSES[dns.A]), _ttls),
)

_srvOutcomes = st.one_of(
    st.tuples(st.just("answer"), st.lists(_srvRecord, min_size=1, max_size=6)),
    st.just(("answer", [])),
    _failures,
)


@st.composite
def _dnsScenarios(draw: Any) -> tuple[list[int], tuple[float, float], list[dict[Any, Any]]]:
    """
    Some of L{_DNS_LINES}, C{resolve_min} and C{resolve_max}, and what the
    DNS says in each round: an outcome for each query the lines may ask
    (and none for the others, whose names do not exist).
    """
    indexes = draw(
        st.lists(st.integers(0, len(_DNS_LINES) - 1), min_size=1, max_size=4, unique=True)
    )
    bounds = draw(
        st.sampled_from([(1.0, 300.0), (0.5, 5.0), (2.0, 2.0), (7.0, 3600.0), (30.0, 60.0)])
    )
    lines = [parseServer(_DNS_LINES[i]) for i in indexes]
    queries: list[tuple[str, int]] = []
    for line in lines:
        if line.resolve and line.service is None:
            queries += [(line.host, dns.A), (line.host, dns.AAAA)]
        elif line.service is not None:
            queries.append((f"_{line.service}._tcp.{line.host}", dns.SRV))
            queries += [(name, kind) for name in _ADDRESS_NAMES for kind in (dns.A, dns.AAAA)]
    rounds = draw(st.lists(_roundOf(tuple(dict.fromkeys(queries))), min_size=1, max_size=5))
    return indexes, bounds, rounds


_OUTCOMES = {dns.A: _addressOutcomes(dns.A), dns.AAAA: _addressOutcomes(dns.AAAA),
             dns.SRV: _srvOutcomes}


@functools.cache
def _roundOf(queries: tuple[tuple[str, int], ...]) -> Any:
    """
    What the DNS says in one round, for each of C{queries}.  (Made once
    for each set of queries: making strategies costs more than drawing.)
    """
    return st.fixed_dictionaries({query: _OUTCOMES[query[1]] for query in queries})


def _header(name: str, record: tuple[int, Any, int]) -> dns.RRHeader:
    """
    The record C{(type, value, ttl)} of the answer for C{name}.
    """
    kind, value, ttl = record
    payload: Any
    if kind == dns.A:
        payload = dns.Record_A(value, ttl)
    elif kind == dns.AAAA:
        payload = dns.Record_AAAA(value, ttl)
    elif kind == dns.CNAME:
        payload = dns.Record_CNAME(value, ttl)
    else:
        priority, weight, port, target = value
        payload = dns.Record_SRV(priority, weight, port, target, ttl)
    return dns.RRHeader(name.encode("utf-8"), kind, dns.IN, ttl, payload)


@st.composite
def _srvScenarios(draw: Any) -> tuple[list[int], tuple[float, float], list[dict[Any, Any]]]:
    """
    An SRV line (and maybe an address line) whose answers hold several
    SRV records, every target that can be asked having an address: so
    that what decides the backends is which records are usable, their
    priorities, weights and ports.
    """
    indexes = draw(st.sampled_from([[3], [4], [3, 0], [0, 4]]))
    name = _SRV_NAMES[0] if 3 in indexes else _SRV_NAMES[1]
    rounds = []
    for _ in range(draw(st.integers(1, 3))):
        # Every name has addresses (some share them).
        table: dict[tuple[str, int], tuple[Any, ...]] = {
            (name, kind): ("answer", [(kind, _DNS_ADDRESSES[kind][number % 3], 60)])
            for number, name in enumerate(_ADDRESS_NAMES)
            for kind in (dns.A, dns.AAAA)
        }
        table[(name, dns.SRV)] = ("answer", draw(st.lists(_srv, min_size=1, max_size=8)))
        rounds.append(table)
    return indexes, (1.0, 300.0), rounds


class _ScriptedResolver:
    """
    An L{IResolver} (the three lookups L{DNSBackends} makes) that answers
    each query as C{table} says; a query the table does not name does not
    exist.

    @ivar asked: every query, as C{(name, type)}, in order.
    """

    def __init__(self) -> None:
        self.table: dict[tuple[str, int], tuple[Any, ...]] = {}
        self.asked: list[tuple[str, int]] = []

    def _ask(self, name: str, kind: int) -> Deferred[Any]:
        self.asked.append((name, kind))
        outcome = self.table.get((name, kind), ("nx",))
        if outcome[0] == "answer":
            return succeed(([_header(name, record) for record in outcome[1]], [], []))
        if outcome[0] == "nx":
            return fail(DNSNameError(name))
        if outcome[0] == "nxauthority":
            return fail(AuthoritativeDomainError(name))
        return fail(_DNS_ERRORS[outcome[1]]())

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._ask(name, dns.A)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._ask(name, dns.AAAA)

    def lookupService(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._ask(name, dns.SRV)


class _LookupFailed(Exception):
    """
    The model's lookup found no usable answer.
    """


def _addressKey(address: str) -> tuple[int, int]:
    parsed = ipaddress.ip_address(address)
    return (parsed.version, int(parsed))


class _LineModel:
    """
    What one C{resolve} line should stand at, as docs/howto/dns.rst says.

    @ivar backends: C{(host, port, weight, backup)} of the latest good
        answer, or L{None} before the first.
    @ivar known: the addresses of each C{(name, type)} from its latest
        answer, with the smallest TTL of that answer's records and that of
        the records of the type asked, to stand in when the query fails.
    """

    def __init__(self, line: Any) -> None:
        self.line = line
        self.backends: Optional[list[tuple[str, int, int, bool]]] = None
        self.error = False
        self.failures = 0
        self.known: dict[tuple[str, int], tuple[list[str], int, int]] = {}

    @property
    def label(self) -> str:
        if self.line.service is None:
            return str(self.line.host)
        return f"_{self.line.service}._tcp.{self.line.host}"


class _DNSModel:
    """
    The backends that answers give, from docs/howto/dns.rst: one per A and
    AAAA address of a line's name (IPv4 first, each family in numeric
    order), on its port; for an SRV line, each usable target's addresses
    on the record's port with its weight (0 counts as 1), the lowest
    priority as primaries, the next as backups, others not used; a lookup
    that fails keeps the line's backends; when one query of several
    fails, the earlier answer to it stands in.
    """

    def __init__(self, lines: list[Any], resolveMin: float, resolveMax: float) -> None:
        self.lines = lines
        self.resolveMin = resolveMin
        self.resolveMax = max(resolveMax, resolveMin)
        self.states = {id(line): _LineModel(line) for line in lines if line.resolve}
        self.lookups = 0
        self.lookupFailures = 0

    def clamp(self, ttl: float) -> float:
        return min(max(ttl, self.resolveMin), self.resolveMax)

    def retryDelay(self, failures: int) -> float:
        delay = self.resolveMin * 2 ** min(failures - 1, 30)
        return max(self.resolveMin, min(delay, RETRY_CAP, self.resolveMax))

    def addresses(
        self,
        state: _LineModel,
        name: str,
        table: dict[tuple[str, int], tuple[Any, ...]],
        standIn: bool,
    ) -> tuple[list[str], int, int, bool]:
        """
        The addresses of C{name}, the smallest TTLs (of every record, of
        those of the types asked), and whether part of them stood in for a
        query that failed.
        """
        addresses: list[str] = []
        lows, highs = [], []
        problems = 0
        for kind in (dns.A, dns.AAAA):
            key = (name, kind)
            outcome = table.get(key, ("nx",))
            if outcome[0] == "answer":
                records = outcome[1]
                found: list[str] = []
                for recordKind, value, _ in records:
                    if recordKind == kind and value not in found:
                        found.append(value)
                low = min((ttl for _, _, ttl in records), default=self.resolveMax)
                high = min(
                    (ttl for k, _, ttl in records if k == kind), default=self.resolveMax
                )
                if found:
                    state.known[key] = (found, low, high)
                else:
                    state.known.pop(key, None)
            elif outcome[0] in ("nx", "nxauthority"):
                state.known.pop(key, None)
                found = []
            else:
                problems += 1
                found, low, high = state.known.get(key, ([], 0, 0))
            addresses.extend(a for a in found if a not in addresses)
            if found:
                lows.append(low)
                highs.append(high)
        if (problems == 2 and not standIn) or not addresses:
            raise _LookupFailed()
        addresses.sort(key=_addressKey)
        return addresses, min(lows), min(highs), bool(problems)

    def service(
        self, state: _LineModel, table: dict[tuple[str, int], tuple[Any, ...]]
    ) -> tuple[list[tuple[str, int, int, bool]], int, int, bool]:
        line = state.line
        outcome = table.get((state.label, dns.SRV), ("nx",))
        if outcome[0] != "answer":
            raise _LookupFailed()
        records = outcome[1]
        low = min((ttl for _, _, ttl in records), default=self.resolveMax)
        high = min((ttl for k, _, ttl in records if k == dns.SRV), default=self.resolveMax)

        def usable(target: bytes) -> bool:
            # The root ("the service is not offered"), an empty name and
            # a name that cannot be asked (not ASCII) give no backend.
            return target not in (b"", b".") and target.isascii()

        srvs = [
            value
            for kind, value, _ in records
            if kind == dns.SRV and value[2] != 0 and usable(value[3])
        ]
        priorities = sorted({srv[0] for srv in srvs})[:2]
        chosen = sorted(
            (srv for srv in srvs if srv[0] in priorities), key=lambda srv: (srv[0], -srv[1])
        )
        targets = sorted({srv[3].decode("ascii") for srv in chosen})
        found: dict[str, list[str]] = {}
        partial = False
        for target in targets:
            try:
                addresses, targetLow, targetHigh, targetPartial = self.addresses(
                    state, target, table, True
                )
            except _LookupFailed:
                partial = True
                continue
            found[target] = addresses
            low, high = min(low, targetLow), min(high, targetHigh)
            partial = partial or targetPartial
        backends = [
            (address, port, max(1, weight), line.backup or priority != priorities[0])
            for priority, weight, port, target in chosen
            for address in found.get(target.decode("ascii"), [])
        ]
        if not backends:
            raise _LookupFailed()
        state.known = {
            key: value
            for key, value in state.known.items()
            if key[0] in targets
        }
        return backends, low, high, partial

    def lookup(
        self, line: Any, table: dict[tuple[str, int], tuple[Any, ...]]
    ) -> tuple[float, float]:
        """
        Look C{line} up with C{table}; return the least and most delay
        until its next lookup.
        """
        state = self.states[id(line)]
        self.lookups += 1
        try:
            if line.service is None:
                addresses, low, high, partial = self.addresses(state, line.host, table, False)
                backends = [(a, line.port, line.weight, line.backup) for a in addresses]
            else:
                backends, low, high, partial = self.service(state, table)
        except _LookupFailed:
            self.lookupFailures += 1
            state.failures += 1
            state.error = True
            delay = self.retryDelay(state.failures)
            return delay, delay
        state.backends = backends
        state.error = False
        if partial:
            state.failures += 1
            delay = self.retryDelay(state.failures)
            return delay, delay
        state.failures = 0
        return self.clamp(low), self.clamp(high)

    def members(self) -> list[tuple[Any, ...]]:
        """
        The pool's members: each line's backends in the order of the
        lines (a placeholder for a line with no answer yet), the first of
        each C{(scheme, host, port)} counting.
        """
        entries = []
        for line in self.lines:
            state = self.states.get(id(line))
            if state is None:
                entries.append((line.scheme, line.host, line.port, line.weight, line.backup, False))
            elif state.backends is None:
                entries.append((line.scheme, state.label, line.port, 1, False, True))
            else:
                entries.extend(
                    (line.scheme, host, port, weight, backup, False)
                    for host, port, weight, backup in state.backends
                )
        members: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for entry in entries:
            members.setdefault(entry[:3], entry)
        return list(members.values())


class DNSAnswerTests(SynchronousTestCase):
    """
    L{DNSBackends} given any sequence of DNS answers: A, AAAA and SRV
    records (duplicates, any TTL, any weight, priority and port, targets
    that are the root, empty, not ASCII or without addresses, CNAMEs,
    records of another type), empty answers, names that do not exist and
    errors.
    """

    def follow(
        self,
        indexes: list[int],
        resolveMin: float,
        resolveMax: float,
        rounds: list[dict[tuple[str, int], tuple[Any, ...]]],
    ) -> None:
        """
        Follow the lines C{indexes} of L{_DNS_LINES} while the DNS says
        what each of C{rounds} says, in turn: the first when the source
        starts, each next one when the next lookup of a line is due
        (looking up the lines due then).  After each, check the pool
        (L{checkPool}), the counts of lookups, and when each line is
        looked up next.
        """
        lines = [parseServer(_DNS_LINES[i]) for i in indexes]
        clock = Clock()
        initial = initialBackends(lines)
        pool = Pool("app", initial, None, clock)
        resolver = _ScriptedResolver()
        source = DNSBackends(pool, lines, resolver, clock, resolveMin, resolveMax)  # type: ignore[arg-type]
        model = _DNSModel(lines, resolveMin, resolveMax)
        resolving = [line for line in lines if line.resolve]
        for number, table in enumerate(rounds if resolving else []):
            resolver.table = table
            if number == 0:
                source.startService()
                due = list(resolving)
            else:
                times = [line["next_lookup"] for line in source.status()["lines"]]
                self.assertNotIn(None, times)
                now = min(times)
                clock.advance(now - clock.seconds() + 1e-6)
                due = [line for line, time in zip(resolving, times) if time <= now + 1e-6]
            # The answers are applied in the turn after the one that read
            # them.
            clock.advance(0)
            delays = {id(line): model.lookup(line, table) for line in due}
            self.checkPool(pool, model, len(initial))
            status = source.status()
            self.assertEqual(
                (status["lookups"], status["lookup_failures"]),
                (model.lookups, model.lookupFailures),
            )
            for line, shown in zip(resolving, status["lines"]):
                state = model.states[id(line)]
                self.assertEqual(shown["addresses"], len(state.backends or ()))
                self.assertEqual(shown["error"] is not None, state.error, shown)
                # Every line is always to be looked up again; one just
                # looked up, within resolve_min and resolve_max.
                delay = shown["next_lookup"] - clock.seconds()
                self.assertGreater(delay, 0)
                if id(line) in delays:
                    self.assertGreaterEqual(delay, model.resolveMin - 1e-6)
                    self.assertLessEqual(delay, model.resolveMax + 1e-6)
                    low, high = delays[id(line)]
                    self.assertGreaterEqual(delay, low - 1e-6, (line, table))
                    self.assertLessEqual(delay, high + 1e-6, (line, table))
        self.successResultOf(source.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def checkPool(self, pool: Pool, model: _DNSModel, initial: int) -> None:
        """
        The pool's members are the model's; they are consistent: one per
        identity, the eligible among them and no placeholder, and every
        backend that joined or left counted.
        """
        members = [
            (b.scheme, b.host, b.port, b.weight, b.backup, b.placeholder) for b in pool.backends
        ]
        self.assertEqual(members, model.members())
        for backend in pool.backends:
            self.assertIs(backend.state, BackendState.DOWN if backend.placeholder else BackendState.UP)
        for backend in pool.eligible:
            self.assertIn(backend, pool.backends)
            self.assertFalse(backend.placeholder)
        self.assertEqual(
            initial + pool.backendsAdded - pool.backendsRemoved, len(pool.backends)
        )

    @_SETTINGS
    @given(_dnsScenarios())
    def test_anyAnswers(
        self, scenario: tuple[list[int], tuple[float, float], list[dict[Any, Any]]]
    ) -> None:
        """
        Whatever the answers, in any order: nothing is raised; after each
        lookup the pool's backends are what the documented rules give
        (lowest priority primaries, next priority backups, weights 0 as 1,
        the last good answer kept on failure, the earlier answer standing
        in for a query that failed), and the pool stays consistent; each
        line is looked up again after the smallest TTL bounded by
        resolve_min and resolve_max, or after a failure, resolve_min
        doubled per failure in a row up to 30 s.
        """
        indexes, (resolveMin, resolveMax), rounds = scenario
        self.follow(indexes, resolveMin, resolveMax, rounds)

    @_SETTINGS
    @given(_srvScenarios())
    def test_srvRecords(
        self, scenario: tuple[list[int], tuple[float, float], list[dict[Any, Any]]]
    ) -> None:
        """
        SRV answers of several records whose targets (but the root, an
        empty name, and a name that is not ASCII) all have addresses: the
        backends are the targets' addresses on the records' ports, with
        their weights (0 counts as 1), those of the lowest priority
        primaries, of the next backups; a record that cannot be used
        (port 0, no target) does not keep the others from being used.
        """
        indexes, (resolveMin, resolveMax), rounds = scenario
        self.follow(indexes, resolveMin, resolveMax, rounds)


# etcd.

_PREFIX = "/lbproxy/upstreams/app/"

#: The parts of a server line, good ones with what they mean, and bad
#: ones.
_SCHEMES = [("", "http"), ("http://", "http"), ("https://", "https"), ("HTTP://", "http")]
_BAD_SCHEMES = ["ftp://", "http:/", "https//"]
_HOSTS = [
    ("127.0.0.1", "127.0.0.1"), ("10.0.0.7", "10.0.0.7"), ("[::1]", "::1"),
    # The same address as [::1], written another way.
    ("[0:0::1]", "::1"), ("[2001:DB8::7]", "2001:db8::7"),
    ("app.internal", "app.internal"), ("App.Internal", "app.internal"),
]
_BAD_HOSTS = ["[::::]", "[1.2.3]", "[1.2.3.4]", "*.app.internal", "", "h\u00e9.test",
              "-bad.test", "a..b", "a/b"]
_LINE_PORTS = [("", 0), (":80", 80), (":8080", 8080), (":65535", 65535)]
_BAD_PORTS = [":0", ":65536", ":x", ":", ":99999999999999999999", ":-1"]
#: Options with what they set (C{""}: nothing compared here).
_OPTIONS: list[tuple[str, Optional[tuple[str, Any]]]] = [
    ("weight=2", ("weight", 2)), ("weight=65535", ("weight", 65535)),
    ("backup", ("backup", True)), ("down", ("down", True)),
    ("max_fails=0", ("", None)), ("max_fails=3", ("", None)),
    ("fail_timeout=5s", ("", None)), ("max_conns=10", ("", None)),
    # Refused in etcd, where nothing would look the name up again.
    ("resolve", None),
]
_BAD_OPTIONS = [
    "weight=0", "weight=-1", "weight=x", "weight", "wieght=2", "backup=yes",
    # A weight no balancer can hold (as a float).
    "weight=1" + "0" * 400,
    "max_fails=-1", "fail_timeout=0s", "fail_timeout=10x", "max_conns=0",
    "service=http", "service=http resolve",
]

#: What a good value means: C{(scheme, host, port, weight, backup, down)}.
_Server = tuple[str, str, int, int, bool, bool]


def _line(
    scheme: tuple[str, Optional[str]],
    host: tuple[str, Optional[str]],
    port: tuple[str, Optional[int]],
    options: list[tuple[str, Optional[tuple[str, Any]]]],
    space: str,
) -> tuple[bytes, Optional[_Server]]:
    """
    A value made of these parts, and what it means: L{None} when a part
    is bad (means L{None}), or the line is not one a pool can use.
    """
    text = scheme[0] + host[0] + port[0] + "".join(space + option for option, _ in options)
    effects = [effect for _, effect in options]
    if scheme[1] is None or host[1] is None or port[1] is None or None in effects:
        return text.encode("utf-8"), None
    settings = dict(effect for effect in effects if effect is not None)
    if settings.get("backup") and settings.get("down"):
        return text.encode("utf-8"), None
    return text.encode("utf-8"), (
        scheme[1],
        host[1],
        port[1] or (443 if scheme[1] == "https" else 80),
        settings.get("weight", 1),
        bool(settings.get("backup")),
        bool(settings.get("down")),
    )


def _serverLineCatalogue() -> list[tuple[bytes, Optional[_Server]]]:
    """
    Server lines: every good scheme, host and port with a few sets of good
    options; then each bad part in turn, the others good.  (Drawn from a
    list, one draw each: assembling them part by part in Hypothesis costs
    more than all the rest of a test.)
    """
    optionSets: list[list[tuple[str, Optional[tuple[str, Any]]]]] = [[], [_OPTIONS[0]], [_OPTIONS[2]], [_OPTIONS[3]], [_OPTIONS[2], _OPTIONS[3]],
                  [_OPTIONS[1], _OPTIONS[5]], [_OPTIONS[8]], [_OPTIONS[6], _OPTIONS[7], _OPTIONS[4]],
                  [_OPTIONS[4], _OPTIONS[0], _OPTIONS[2]]]
    spaces = [" ", "  ", "\t", " \t "]
    lines = [
        _line(scheme, host, port, options, spaces[number % len(spaces)])
        for number, (host, scheme, port, options) in enumerate(
            itertools.product(_HOSTS, _SCHEMES, _LINE_PORTS, optionSets)
        )
    ]
    for number, (part, value) in enumerate(
        [("scheme", v) for v in _BAD_SCHEMES] + [("host", v) for v in _BAD_HOSTS]
        + [("port", v) for v in _BAD_PORTS] + [("option", v) for v in _BAD_OPTIONS]
    ):
        for variant in range(3):
            scheme = (value, None) if part == "scheme" else _SCHEMES[(number + variant) % 4]
            host = (value, None) if part == "host" else _HOSTS[(number + variant) % len(_HOSTS)]
            port = (value, None) if part == "port" else _LINE_PORTS[variant]
            options = optionSets[(number + variant) % len(optionSets)]
            if part == "option":
                options = options[:variant] + [(value, None)] + options[variant:]
            lines.append(_line(scheme, host, port, options, spaces[variant]))
    # Lines that are good in the configuration file, not in etcd: an SRV
    # name gives no address (a backend on port 0), and nothing would look
    # a resolve line's name up again.
    lines += [(b"app.internal service=http resolve", None),
              (b"https://App.Internal service=https resolve backup", None)]
    return lines


#: One line of the catalogue as often as a bad one.
_SERVER_LINES = _serverLineCatalogue()
_serverLines = st.one_of(
    st.sampled_from([line for line in _SERVER_LINES if line[1] is not None]),
    st.sampled_from([line for line in _SERVER_LINES if line[1] is None]),
)


def _meaning(value: bytes) -> Optional[_Server]:
    """
    What a value that is not made of known parts means, as
    L{parseServer} reads it (with an IPv6 address in its canonical form).
    """
    try:
        server = parseServer(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if server.service is not None or server.resolve:
        return None
    host = server.host
    if ":" in host:
        host = _canonical(ipaddress.IPv6Address(host))
    return (server.scheme, host, server.port, server.weight, server.backup, server.down)


#: Huge values, one a server line (long, but each of its options good).
_HUGE = [(value, _meaning(value))
         for value in [b"x" * 100000, b"127.0.0.1:9000" + b" backup" * 1000]]

#: Values: server lines good and bad, any bytes, and huge ones.
_values = st.one_of(
    _serverLines,
    _serverLines,
    st.binary(max_size=24).map(lambda b: (b, _meaning(b))),
    st.sampled_from(_HUGE),
)

#: Keys under the prefix: a few, so that they come back, and any bytes.
_keys = st.one_of(
    st.sampled_from([b"a", b"b", b"c", b"10.0.0.7"]),
    st.binary(max_size=4),
)

#: What happens in etcd: a key put or deleted; several put or deleted in
#: one transaction (at one revision); a key put outside the prefix; the
#: watch lost while keys change, with the revisions it needs compacted or
#: not; a progress notification; a line that is not JSON.
_etcdSteps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _keys, _values),
        st.tuples(st.just("put"), _keys, _values),
        st.tuples(st.just("delete"), _keys),
        st.tuples(
            st.just("txn"),
            st.lists(st.tuples(_keys, st.one_of(st.none(), _values)), min_size=1, max_size=4),
        ),
        st.tuples(st.just("other"), _values),
        st.tuples(
            st.just("outage"),
            st.lists(st.tuples(_keys, st.one_of(st.none(), _values)), max_size=4),
            st.booleans(),
        ),
        st.tuples(st.just("progress")),
        st.tuples(st.just("garble")),
    ),
    max_size=10,
)


class _EtcdModel:
    """
    The backends of an etcd prefix, from docs/configuration.rst ("Backends
    from etcd"): each key whose value is a server line is a backend, in
    key order, the first of two keys naming the same address counting; a
    value that is not a server line is skipped, the key's last good value
    staying in force while the key exists.

    The model sees the copies the mirror hands over: a key deleted and
    put again between two of them (while the watch was lost and etcd
    compacted) is, for it as for the source, a key whose value changed.

    @ivar good: the value in force of each key, as its meaning.
    @ivar rejected: how many keys have a value that is not a server line.
    """

    def __init__(self) -> None:
        self.good: dict[bytes, _Server] = {}
        self.rejected = 0

    def apply(self, values: dict[bytes, tuple[bytes, Optional[_Server]]]) -> None:
        """
        The mirror's copy of the prefix changed to C{values} (with what
        each means).
        """
        good, rejected = {}, 0
        for key in sorted(values):
            means = values[key][1]
            if means is None:
                rejected += 1
                if key in self.good:
                    good[key] = self.good[key]
            else:
                good[key] = means
        self.good, self.rejected = good, rejected

    def members(self) -> list[_Server]:
        """
        The pool's backends: the value in force of each key, in key order,
        the first key naming an address counting.
        """
        members: dict[tuple[str, str, int], _Server] = {}
        for key in sorted(self.good):
            server = self.good[key]
            members.setdefault(server[:3], server)
        return list(members.values())


def _jsonLeaves() -> Any:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(["7", "-1", "1e400", "0", "", "YQ==", "L2xiL2E=", "***", "PUT", "DELETE",
                         "rpc error: code = Unauthenticated"]),
    )


_ETCD_FIELDS = ["header", "revision", "kvs", "key", "value", "mod_revision", "more", "count",
                "result", "events", "type", "kv", "created", "canceled", "cancel_reason",
                "compact_revision", "error", "message"]

#: JSON made of etcd's field names and any values.
_etcdJSON = st.recursive(
    _jsonLeaves(),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(_ETCD_FIELDS), children, max_size=4),
    ),
    max_leaves=16,
)


#: Values that etcd never sends where it sends a string, a number or a
#: list.
_HOSTILE: list[Any] = [
    float("inf"), float("-inf"), float("nan"), 1e300, 2**70, -1, 5, 1.5, True, False, None,
    "", "x", "1e400", "***", "YQ", [], [1], {}, {"a": 1},
]
_HOSTILE_JSON = st.sampled_from(_HOSTILE)

#: A range response and a watch message as etcd writes them, and the path
#: of each of their fields.
_RANGE = {"header": {"revision": "7"}, "count": "1", "more": False,
          "kvs": [{"key": "L2xiL2E=", "value": "MTI3LjAuMC4xOjgw", "mod_revision": "5"}]}
_WATCH = {"result": {"header": {"revision": "7"}, "created": False, "canceled": False,
                     "compact_revision": "0", "cancel_reason": "",
                     "events": [{"type": "PUT", "kv": {"key": "L2xiL2E=",
                                                      "value": "MTI3LjAuMC4xOjgw",
                                                      "mod_revision": "5"}}]}}


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [path] if path else []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in children:
        paths += _paths(child, path + (key,))
    return paths


#: What L{_replaced} puts at a path to leave the field out.
_LEFT_OUT = object()


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """
    A copy of C{value} with what is at C{path} replaced by C{new} (left
    out when C{new} is L{_LEFT_OUT}).
    """
    copy = json.loads(json.dumps(value))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if new is _LEFT_OUT:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copy


@st.composite
def _etcdMessages(draw: Any) -> Any:
    """
    A range response or a watch message shaped as etcd's are, any of its
    values replaced by any JSON.
    """
    def value(good: Any) -> Any:
        return draw(st.one_of(st.just(good), _HOSTILE_JSON))

    kv = {"key": value("L2xiL2E="), "value": value("MTI3LjAuMC4xOjgw"),
          "mod_revision": value("5")}
    if draw(st.booleans()):
        return {"header": value({"revision": value("7")}), "kvs": value([kv, kv]),
                "more": value(False), "count": value("2")}
    event = {"type": value(draw(st.sampled_from(["PUT", "DELETE"]))), "kv": value(kv)}
    result = {"header": value({"revision": value("7")}), "events": value([event]),
              "created": value(False), "canceled": value(False),
              "compact_revision": value("0"), "cancel_reason": value("")}
    return {"result": value(result)}


class EtcdValueTests(SynchronousTestCase):
    """
    Keys and values under an upstream's etcd prefix, as a range read and
    as watch events, followed by L{EtcdSource}: whatever they hold, in
    whatever order they change.
    """

    def checkParsers(self, body: bytes) -> None:
        """
        L{parseRange} and L{parseWatchResponse} read C{body} or raise
        L{EtcdError} (the mirror's "etcd sent something that is not what
        etcd sends"), nothing else.
        """
        try:
            revision, values = parseRange(body)
        except EtcdError:
            pass
        else:
            self.assertIsInstance(revision, int)
            for key, value in values.items():
                self.assertIsInstance(key, bytes)
                self.assertIsInstance(value, bytes)
        try:
            response = parseWatchResponse(body)
        except EtcdError as e:
            if isinstance(e, Compacted):
                self.assertIsInstance(e.revision, int)
        else:
            self.assertIsInstance(response, WatchResponse)
            self.assertIsInstance(response.revision, int)
            for event in response.events:
                self.assertIsInstance(event.key, bytes)
                self.assertIsInstance(event.value, (bytes, type(None)))
                self.assertIsInstance(event.revision, int)

    def test_everyFieldWrong(self) -> None:
        """
        Each field of a range response and of a watch message (the
        header, the revision, the keys, each key's key, value and
        revision, the events, each event's type...) left out, or
        replaced by each kind of JSON etcd never sends there (infinite,
        too large or not a number, a list that is not a list, bad
        base64...): read, or refused with an L{EtcdError}.
        """
        for message in (_RANGE, _WATCH):
            self.checkParsers(json.dumps(message).encode("utf-8"))
            for path in _paths(message):
                for value in [_LEFT_OUT, *_HOSTILE]:
                    self.checkParsers(json.dumps(_replaced(message, path, value)).encode("utf-8"))

    @settings(_SETTINGS, max_examples=200)
    @given(st.one_of(_etcdMessages(), _etcdJSON))
    def test_parseAnyJSON(self, message: Any) -> None:
        """
        A range response or a watch message with any of its values
        replaced (numbers too large, infinite or not numbers, lists that
        are not lists, bad base64), or any JSON at all: read, or refused
        with an L{EtcdError}.
        """
        self.checkParsers(json.dumps(message).encode("utf-8"))

    @_SETTINGS
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.integers(1, 100000).map(lambda depth: b"[" * depth + b"]" * depth),
            st.integers(1, 100000).map(lambda depth: b'{"result":' * depth),
        )
    )
    def test_parseAnyBytes(self, body: bytes) -> None:
        """
        Any bytes, and JSON nested deeper than the parser goes: refused
        with an L{EtcdError}.
        """
        self.checkParsers(body)

    def checkPool(self, source: EtcdSource, model: _EtcdModel, keys: int) -> None:
        """
        The pool's backends are the model's, and the keys whose value is
        not a server line are counted as rejected (of C{keys}, the
        mirror's).
        """
        self.assertEqual(
            [
                (b.scheme, b.host, b.port, b.weight, b.backup, b.state is BackendState.DISABLED)
                for b in source.pool.backends
            ],
            model.members(),
        )
        status = source.status()
        self.assertEqual((status["keys"], status["rejected"]), (keys, model.rejected))

    def test_everyLine(self) -> None:
        """
        Each line of the catalogue (every good scheme, host, port and set
        of options; each bad part in turn), put on a key whose value was
        good: the key's backend is the line's, or, for a line that is not
        one a pool can use, the one of its last good value, the key
        counted as rejected.
        """
        pool = Pool("app", [], reactor=MemoryReactorClock())
        source = EtcdSource(pool, ("http://127.0.0.1:2379",), _PREFIX, Clock(), StubTreq(FakeEtcd()))
        model = _EtcdModel()
        good = (b"10.9.9.9:80 weight=3", ("http", "10.9.9.9", 80, 3, False, False))
        for line in _SERVER_LINES:
            for copy in ({b"k": good}, {b"k": line}):
                model.apply(copy)
                source.mirror.changed({key: value for key, (value, _) in copy.items()}, "test")
                self.checkPool(source, model, 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(_SETTINGS, max_examples=150)
    @given(
        st.lists(
            st.dictionaries(_keys, st.one_of(_serverLines, _values), max_size=5),
            min_size=1,
            max_size=5,
        )
    )
    def test_anyValues(
        self, copies: list[dict[bytes, tuple[bytes, Optional[_Server]]]]
    ) -> None:
        """
        Whatever the copies of the prefix the mirror hands the source, one
        after the other (values good and bad: bad schemes, hosts, ports
        and options, non-UTF-8, empty, huge, one address written two ways
        under two keys): nothing is raised, and the pool's backends are
        what L{_EtcdModel} makes of them, the keys whose value is not a
        server line counted as rejected.
        """
        pool = Pool("app", [], reactor=MemoryReactorClock())
        source = EtcdSource(pool, ("http://127.0.0.1:2379",), _PREFIX, Clock(), StubTreq(FakeEtcd()))
        model = _EtcdModel()
        for copy in copies:
            model.apply(copy)
            source.mirror.changed({key: value for key, (value, _) in copy.items()}, "test")
            # (The mirror itself holds no key: the copies are handed over.)
            self.checkPool(source, model, 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    @_SETTINGS
    @given(st.lists(st.tuples(_keys, _values), max_size=5), _etcdSteps)
    def test_backendsFollowTheKeys(
        self,
        initial: list[tuple[bytes, tuple[bytes, Optional[_Server]]]],
        steps: list[tuple[Any, ...]],
    ) -> None:
        """
        Keys with any values (server lines good and bad, non-UTF-8, empty,
        huge, one address under two keys) read at the start, then put and
        deleted in any order, one at a time or several in a transaction,
        while the watch is lost and resumed (or
        etcd compacted what it needs, and the prefix is read again), or
        sent a line that is not JSON: nothing is raised; the mirror's copy
        is etcd's; and the pool's backends are what L{_EtcdModel} makes of
        each copy, the keys whose value is not a server line counted as
        rejected.
        """
        etcd = FakeEtcd()
        http = StubTreq(etcd)
        clock = Clock()
        pool = Pool("app", [], reactor=MemoryReactorClock())
        source = EtcdSource(pool, ("http://127.0.0.1:2379",), _PREFIX, clock, http)
        mirror = source.mirror
        meanings: dict[bytes, Optional[_Server]] = {}
        model = _EtcdModel()
        raised: list[Failure] = []
        changed = mirror.changed

        def observed(values: dict[bytes, bytes], reason: str) -> None:
            model.apply({key: (value, meanings[value]) for key, value in values.items()})
            try:
                changed(values, reason)
            except BaseException:
                raised.append(Failure())
                raise

        mirror.changed = observed

        def put(key: bytes, value: tuple[bytes, Optional[_Server]], prefix: str = _PREFIX) -> None:
            meanings[value[0]] = value[1]
            etcd.put(prefix.encode("utf-8") + key, value[0])

        def settle() -> None:
            for _ in range(30):
                http.flush()
                if mirror.watching and etcd.watches:
                    return
                clock.advance(mirror.maxDelay)
            self.fail(f"the mirror does not watch again: {mirror.error}")

        def check() -> None:
            self.assertEqual(raised, [])
            mine = {
                key[len(_PREFIX) :]: value
                for key, (value, _) in etcd.values.items()
                if key.startswith(_PREFIX.encode("utf-8"))
            }
            self.assertEqual({k[len(_PREFIX) :]: v for k, v in mirror.values.items()}, mine)
            self.checkPool(source, model, len(mine))

        for key, value in initial:
            put(key, value)
        source.startService()
        settle()
        check()
        for step in steps:
            if step[0] == "put":
                put(step[1], step[2])
            elif step[0] == "delete":
                etcd.delete(_PREFIX.encode("utf-8") + step[1])
            elif step[0] == "txn":
                # etcd refuses a transaction that names a key twice.
                changes = dict(step[1])
                for value in changes.values():
                    if value is not None:
                        meanings[value[0]] = value[1]
                etcd.txn(
                    [
                        (_PREFIX.encode("utf-8") + key, None if value is None else value[0])
                        for key, value in changes.items()
                    ]
                )
            elif step[0] == "other":
                put(b"x", step[1], "/lbproxy/upstreams/other/")
            elif step[0] == "outage":
                etcd.dropWatches()
                http.flush()
                for key, value in step[1]:
                    if value is None:
                        etcd.delete(_PREFIX.encode("utf-8") + key)
                    else:
                        put(key, value)
                if step[2]:
                    etcd.compact(etcd.revision)
            elif step[0] == "progress":
                etcd.progress()
            else:
                etcd.garble()
            settle()
            check()
        source.stopService()
        http.flush()
        self.assertEqual(etcd.watches, [])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.flushLoggedErrors(), [])
