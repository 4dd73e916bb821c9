# -*- test-case-name: tests.test_dnsport -*-
"""
The UDP ports of DNS queries, without the log lines.

L{twisted.names.client.Resolver} sends each query from a UDP port of its
own, on a random source port (so that an answer cannot be forged without
guessing it), and closes it once answered.  Twisted's UDP port logs two
lines when it opens (C{"DNSDatagramProtocol starting on 49934"},
C{"Starting protocol ..."}) and two when it closes, unconditionally: with
an A and an AAAA query per lookup, eight lines for each lookup of a
C{resolve} line, every C{resolve_min} for a name whose TTL is 0 (80 lines
a second in C{benchmarks/membership.py}), with nothing for an operator to
read in them.

L{QuietResolverReactor} is the reactor given to the resolver: everything
is the real reactor's, but C{listenUDP} opens a L{QuietDatagramPort}, a
non-blocking socket the reactor reads through its public
L{IReactorFDSet}, which says nothing.  The resolver is unchanged: same
random ports, same queries, same retries and TCP fallback.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

#: How many datagrams one read takes at most before the reactor does
#: something else.
READS_PER_TURN = 16


@implementer(IReadDescriptor)
class QuietDatagramPort:
    """
    A UDP port for one datagram protocol (the resolver's, for its
    queries): it binds, hands the protocol what it reads and sends what it
    writes, and logs nothing.

    @ivar protocol: the L{twisted.internet.protocol.DatagramProtocol}.
    """

    def __init__(
        self,
        reactor: Any,
        port: int,
        protocol: Any,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> None:
        """
        Bind C{interface}:C{port} and start reading.

        @raise CannotListenError: when it cannot be bound (the resolver
            then tries another random port).
        """
        self._reactor = reactor
        self.protocol = protocol
        self._maxPacketSize = maxPacketSize
        family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._socket.bind((interface, port))
        except OSError as e:
            self._socket.close()
            raise CannotListenError(interface, port, e) from e
        self._socket.setblocking(False)
        self._v6 = family == socket.AF_INET6
        protocol.noisy = False
        protocol.makeConnection(self)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._socket.fileno()

    def logPrefix(self) -> str:
        return "DNS query"

    def doRead(self) -> None:
        for _ in range(READS_PER_TURN):
            if self._socket.fileno() == -1:
                # The protocol stopped listening on what it just read.
                return
            try:
                data, address = self._socket.recvfrom(self._maxPacketSize)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.ECONNREFUSED, errno.EINTR):
                    # An ICMP error for an earlier datagram: nothing to read.
                    continue
                raise
            self.protocol.datagramReceived(data, address[:2] if self._v6 else address)

    def write(self, datagram: bytes, address: Any) -> None:
        """
        Send C{datagram} to C{address}; when the socket's buffer is full,
        it is dropped, as a datagram may be (the query is sent again after
        its timeout).
        """
        try:
            self._socket.sendto(datagram, address)
        except BlockingIOError:
            pass

    def getHost(self) -> Any:
        return self._socket.getsockname()

    def stopListening(self) -> Deferred[None]:
        """
        Stop reading, close the socket and tell the protocol.
        """
        if self._socket.fileno() != -1:
            self._reactor.removeReader(self)
            self._socket.close()
            self.protocol.doStop()
        return succeed(None)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor gave up on the socket (it is shutting down).
        """
        self.stopListening()


class QuietResolverReactor:
    """
    The real reactor, but for L{listenUDP}, which opens a
    L{QuietDatagramPort}.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> QuietDatagramPort:
        return QuietDatagramPort(self._reactor, port, protocol, interface, maxPacketSize)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
