# -*- test-case-name: tests.test_testing,tests.integration.test_walkthrough -*-
"""
Helpers for testing code that embeds lbproxy or extends it.

In memory, with no sockets and no real time (for
L{twisted.trial.unittest.SynchronousTestCase}), the way lbproxy's own unit
tests drive the proxy:

  - L{ProxyHarness}: a L{lbproxy.ProxySite} on a
    L{twisted.internet.testing.MemoryReactorClock}.  Connect clients to it
    (each a L{ClientConnection} on a
    L{twisted.internet.testing.StringTransport}), send them bytes, read what
    the proxy answered; the connections the proxy opens to backends wait
    as L{PendingConnection}s until the test accepts or refuses them, and
    an accepted one (a L{BackendConnection}) is answered with
    L{BackendConnection.respond}; timeouts run when the test advances the
    clock.
  - L{makeRequest}: a request as a balancer sees it (from a given client
    address, with given headers and cookies), for testing a balancer
    plugin's C{pick} without a pool.

On real sockets, for integration tests: L{startServer} serves a resource
on a loopback port, and the L{LoopbackServer} it returns can be stopped
like a crashed process (every connection cut); a L{RefusingPort} is a
loopback port where a backend is down (every connection refused).
L{startDNSServer} serves a L{DNSZone}, whose records the test changes as
it goes, on a loopback port (UDP and TCP), for C{resolve} server lines
pointed at it with C{resolver}.
"""

from __future__ import annotations

import socket
from typing import Any, Iterable, Mapping, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import (
    CannotListenError,
    ConnectionDone,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import IAddress, ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns
from twisted.names.authority import FileAuthority
from twisted.names.server import DNSServerFactory
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from lbproxy._pool import Pool
from lbproxy._proxy import UpstreamResource
from lbproxy._site import ProxySite

__all__ = [
    "CLIENT_ADDRESS",
    "BackendConnection",
    "ClientConnection",
    "DNSZone",
    "LoopbackDNSServer",
    "LoopbackServer",
    "PendingConnection",
    "ProxyHarness",
    "RefusingPort",
    "makeRequest",
    "startDNSServer",
    "startServer",
]

#: The client address of L{ProxyHarness.connect} when none is given.
CLIENT_ADDRESS = IPv4Address("TCP", "192.0.2.1", 4321)


# In memory


@implementer(ISSLTransport)
class _TLSStringTransport(StringTransport):
    """
    A L{StringTransport} that says it is TLS, for a client connection of a
    TLS listener (C{request.isSecure()} is true).
    """

    noDelay = False
    keepAlive = False

    def getPeerCertificate(self) -> None:
        return None

    def getTcpNoDelay(self) -> bool:
        return self.noDelay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled

    def getTcpKeepAlive(self) -> bool:
        return self.keepAlive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepAlive = enabled

    def loseWriteConnection(self) -> None:
        self.loseConnection()


def _address(host: str, port: int) -> Any:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class ClientConnection:
    """
    A client connected to a L{ProxyHarness}.

    @ivar protocol: the proxy's side of the connection (a
        L{lbproxy._server.ProxyChannel}), or L{None} when the site refused
        the connection (C{max_connections}).
    @ivar transport: the L{StringTransport} the proxy writes to: what it
        answered is C{transport.value()}; C{transport.disconnecting} is
        true once the proxy closed the connection.
    @ivar peer: the client's address.
    """

    def __init__(self, protocol: Any, transport: StringTransport, peer: Any) -> None:
        self.protocol = protocol
        self.transport = transport
        self.peer = peer

    @property
    def refused(self) -> bool:
        """
        Whether the site refused the connection when it was made (no
        protocol was built, and the connection was closed at once).
        """
        return self.protocol is None

    @property
    def closing(self) -> bool:
        """
        Whether the proxy closed, or is closing, the connection.
        """
        return bool(self.transport.disconnecting)

    @property
    def requests(self) -> list[Any]:
        """
        The request being read or answered on the connection, in a list
        (empty when there is none).
        """
        if self.protocol is None:
            return []
        return list(self.protocol.requests)

    def send(self, data: bytes, pieceSize: Optional[int] = None) -> None:
        """
        Send C{data} to the proxy: in one read, or in reads of C{pieceSize}
        bytes (1: a byte at a time).
        """
        if self.protocol is None:
            raise RuntimeError("the proxy refused this connection")
        if pieceSize is None:
            self.protocol.dataReceived(data)
            return
        for start in range(0, len(data), pieceSize):
            self.protocol.dataReceived(data[start : start + pieceSize])

    def received(self) -> bytes:
        """
        Everything the proxy wrote to this client so far (since the last
        L{clear}).
        """
        return self.transport.value()

    def clear(self) -> None:
        """
        Forget what the proxy wrote so far.
        """
        self.transport.clear()

    def disconnect(self, reason: Optional[Failure] = None) -> None:
        """
        The client goes away: the proxy's side learns that the connection
        was lost (by default, cleanly closed).
        """
        if self.protocol is not None:
            self.protocol.connectionLost(reason or Failure(ConnectionDone()))


class BackendConnection:
    """
    A connection from the proxy to a backend, accepted by the test: the test
    plays the backend.

    @ivar host: the backend's host, as the proxy connected to it.
    @ivar port: the backend's port.
    @ivar protocol: the proxy's side of the connection.
    @ivar transport: the L{StringTransport} the proxy writes to: what it
        sent the backend is C{transport.value()}.
    """

    def __init__(self, host: str, port: int, protocol: Any, transport: StringTransport) -> None:
        self.host = host
        self.port = port
        self.protocol = protocol
        self.transport = transport

    @property
    def closing(self) -> bool:
        """
        Whether the proxy closed, aborted or is closing the connection.
        """
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def received(self) -> bytes:
        """
        Everything the proxy sent to the backend so far (since the last
        L{clear}).
        """
        return self.transport.value()

    def clear(self) -> None:
        """
        Forget what the proxy sent so far.
        """
        self.transport.clear()

    def respond(self, data: bytes) -> None:
        """
        The backend sends C{data} (part of a response, or several).
        """
        self.protocol.dataReceived(data)

    def close(self, reason: Optional[Failure] = None) -> None:
        """
        The backend closes the connection (by default cleanly; pass a
        L{Failure} of L{twisted.internet.error.ConnectionLost} for a
        reset).
        """
        self.protocol.connectionLost(reason or Failure(ConnectionDone()))


class PendingConnection:
    """
    A connection the proxy is opening to a backend, which the test has not
    answered yet.

    @ivar host: the host the proxy is connecting to.
    @ivar port: the port.
    @ivar factory: the factory the proxy gave the reactor.
    """

    def __init__(self, harness: ProxyHarness, index: int) -> None:
        self._harness = harness
        self._index = index
        host, port, factory, _, _ = harness.reactor.tcpClients[index]
        self.host: str = host
        self.port: int = port
        self.factory: Any = factory

    def __repr__(self) -> str:
        return f"<PendingConnection to {self.host}:{self.port}>"

    def accept(self) -> BackendConnection:
        """
        The connection succeeds.

        @return: the L{BackendConnection}, to answer.
        """
        self._harness._answer(self._index)
        address = _address(self.host, self.port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return BackendConnection(self.host, self.port, protocol, transport)

    def refuse(self, reason: Optional[Failure] = None) -> None:
        """
        The connection fails (by default, refused by the backend's host).
        """
        self._harness._answer(self._index)
        connector: Any = None
        self.factory.clientConnectionFailed(
            connector, reason or Failure(ConnectionRefusedError())
        )


class ProxyHarness:
    """
    A proxy in memory: a L{lbproxy.ProxySite} on a
    L{MemoryReactorClock}, for tests that drive it byte by byte with no
    sockets and no real time.

    Give it the resource to serve (an L{lbproxy.UpstreamResource}, a
    L{lbproxy.VirtualHostResource}, any resource of yours), or a
    L{lbproxy.Pool}, which is then served by an C{UpstreamResource}.  The
    pools behind the resource must use the harness's reactor, so that the
    connections they open to their backends wait in L{pending}: a pool
    given directly brings its own (C{pool.reactor}); otherwise create the
    L{MemoryReactorClock} first, give it to the pools and to the harness.
    Backends are reached by IP address and over plain HTTP (an C{https}
    backend would want TLS bytes).

    Stop it with L{close} (C{self.addCleanup(harness.close)}).

    @ivar reactor: the L{MemoryReactorClock}: advance it with L{advance}.
    @ivar site: the L{lbproxy.ProxySite}.
    @ivar resource: its root resource.
    """

    def __init__(
        self,
        resource: Any,
        reactor: Optional[MemoryReactorClock] = None,
        **siteArgs: Any,
    ) -> None:
        """
        @param resource: the root resource, or a L{lbproxy.Pool}.
        @param reactor: the reactor of the site and of the pools; by
            default the pool's, or a new L{MemoryReactorClock}.
        @param siteArgs: the keyword arguments of L{lbproxy.ProxySite}
            (C{maxBodySize}, C{clientHeaderTimeout}, C{accessLog}...).
        """
        if isinstance(resource, Pool):
            if reactor is None:
                reactor = resource.reactor
            resource = UpstreamResource(resource)
        elif not IResource.providedBy(resource):
            raise TypeError(f"expected a resource or a Pool, not {resource!r}")
        if reactor is None:
            reactor = MemoryReactorClock()
        self.reactor = reactor
        self.resource = resource
        self.site = ProxySite(resource, reactor=reactor, **siteArgs)
        self.site.startFactory()
        self._answered: set[int] = set()

    def close(self) -> None:
        """
        Stop the site.
        """
        self.site.stopFactory()

    # Clients

    def connect(self, peer: Optional[IAddress] = None, secure: bool = False) -> ClientConnection:
        """
        Connect a client to the proxy.

        @param peer: the client's address (L{CLIENT_ADDRESS} by default).
        @param secure: whether the connection came through a TLS listener.
        @return: the L{ClientConnection}; its L{ClientConnection.refused}
            is true when the site refused it (C{max_connections}).
        """
        if peer is None:
            peer = CLIENT_ADDRESS
        transport = (_TLSStringTransport if secure else StringTransport)(peerAddress=peer)
        protocol = self.site.buildProtocol(peer)
        if protocol is None:
            # What a listening port does when its factory builds nothing.
            transport.loseConnection()
        else:
            protocol.makeConnection(transport)
        return ClientConnection(protocol, transport, peer)

    # Backends

    def _answer(self, index: int) -> None:
        if index in self._answered:
            raise RuntimeError("this backend connection was already answered")
        self._answered.add(index)

    def pending(self) -> list[PendingConnection]:
        """
        The connections the proxy is opening to backends that the test has
        not accepted nor refused yet, oldest first.
        """
        return [
            PendingConnection(self, index)
            for index in range(len(self.reactor.tcpClients))
            if index not in self._answered
        ]

    def _oldest(self) -> PendingConnection:
        pending = self.pending()
        if not pending:
            raise LookupError("the proxy is not connecting to any backend")
        return pending[0]

    def acceptBackend(self) -> BackendConnection:
        """
        Let the oldest pending backend connection succeed.

        @raise LookupError: when there is none.
        """
        return self._oldest().accept()

    def refuseBackend(self, reason: Optional[Failure] = None) -> PendingConnection:
        """
        Make the oldest pending backend connection fail (by default,
        refused).

        @return: the L{PendingConnection} refused (it says which backend).
        @raise LookupError: when there is none.
        """
        pending = self._oldest()
        pending.refuse(reason)
        return pending

    # Time

    def advance(self, seconds: float) -> None:
        """
        Move the clock on by C{seconds}, running what falls due.
        """
        self.reactor.advance(seconds)


class _Holding(Resource):
    """
    A leaf resource that keeps the requests it is given, unanswered.
    """

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


def makeRequest(
    client: Union[str, IAddress, None] = "192.0.2.10",
    headers: Union[Mapping[bytes, bytes], Iterable[tuple[bytes, bytes]], None] = None,
    cookies: Optional[Mapping[bytes, bytes]] = None,
    uri: bytes = b"/",
    method: bytes = b"GET",
    secure: bool = False,
    body: bytes = b"",
) -> Any:
    """
    A request as a balancer's C{pick} gets it: written as bytes and read by
    lbproxy's own HTTP/1.1 server (the refusals included), and not answered
    yet, so a balancer may still add response headers and cookies to it
    (see C{request.responseHeaders} and C{request.cookies}).

    @param client: the client's IP address (IPv4 or IPv6), or an address
        object; L{None} for a client on a UNIX socket.
    @param headers: request headers, as a mapping or C{(name, value)}
        pairs; a C{Host} is added when there is none.
    @param cookies: cookies, sent in one C{Cookie} header.
    @param uri: the request target (path and query).
    @param method: the method.
    @param secure: whether the request came through a TLS listener.
    @param body: the request body (sent with a C{Content-Length}).
    @return: a L{twisted.web.server.Request} (lbproxy's
        L{lbproxy._site.ProxyRequest}).
    @raise ValueError: when the proxy refuses such a request (a header with
        a line break, say); the message has its answer.
    """
    peer: Any
    if client is None:
        peer = UNIXAddress(b"/tmp/lbproxy.sock")
    elif isinstance(client, str):
        peer = _address(client, 40000)
    else:
        peer = client
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    if not any(name.lower() == b"host" for name, _ in pairs):
        pairs.insert(0, (b"Host", b"app.example"))
    if cookies:
        pairs.append((b"Cookie", b"; ".join(b"%s=%s" % item for item in cookies.items())))
    if body:
        pairs.append((b"Content-Length", b"%d" % (len(body),)))
    head = [b"%s %s HTTP/1.1\r\n" % (method, uri)]
    head.extend(b"%s: %s\r\n" % pair for pair in pairs)
    holding = _Holding()
    harness = ProxyHarness(holding)
    connection = harness.connect(peer, secure=secure)
    connection.send(b"".join(head) + b"\r\n" + body)
    if not holding.requests:
        raise ValueError(f"the proxy refused the request: {connection.received()!r}")
    return holding.requests[0]


# On real sockets


class _QuietSite(Site):
    """
    A L{Site} that writes no access log.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


class _TrackingFactory(WrappingFactory):
    """
    Remembers the open connections of the wrapped factory, so that stopping
    the server can cut them like a crashed process would, and counts them.
    """

    noisy = False
    connectionsMade = 0

    def registerProtocol(self, p: Any) -> None:
        self.connectionsMade += 1
        WrappingFactory.registerProtocol(self, p)  # type: ignore[arg-type]


class LoopbackServer:
    """
    A web server on 127.0.0.1, started by L{startServer}.

    @ivar port: the TCP port it listens on.
    @ivar site: its L{Site}.
    """

    def __init__(self, factory: _TrackingFactory, listeningPort: Any) -> None:
        self._factory = factory
        self.site = factory.wrappedFactory
        self._listeningPort: Optional[Any] = listeningPort
        self.port: int = listeningPort.getHost().port

    @property
    def connectionsMade(self) -> int:
        """
        Connections accepted so far.
        """
        return self._factory.connectionsMade

    def stop(self) -> Deferred[Any]:
        """
        Stop listening and abort every open connection, as if the server
        process had died.  Idempotent.
        """
        results = []
        if self._listeningPort is not None:
            port, self._listeningPort = self._listeningPort, None
            results.append(port.stopListening())
        for protocol in list(self._factory.protocols):
            protocol.transport.abortConnection()
        return DeferredList(results)


@inlineCallbacks
def startServer(
    resource: IResource, reactor: Any = None, port: int = 0, interface: str = "127.0.0.1"
) -> Any:
    """
    Serve C{resource} on 127.0.0.1 (port 0: any free port).

    @param interface: another loopback address to listen on instead
        (C{127.0.0.2}: on Linux, all of 127.0.0.0/8 is loopback), so that
        several servers can share a port, as the addresses of one DNS name
        do.
    @return: a L{Deferred} firing with a L{LoopbackServer}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    factory = _TrackingFactory(_QuietSite(resource))
    endpoint = TCP4ServerEndpoint(reactor, port, interface=interface)
    listening = yield endpoint.listen(factory)
    return LoopbackServer(factory, listening)


class RefusingPort:
    """
    A TCP port on 127.0.0.1 that refuses every connection, as the port of
    a backend that is down does: a socket bound to it that never listens.

    A port that was merely free a moment ago (listened on, then closed)
    does not do: the next server to listen on port 0, even the proxy the
    same test starts a line later, may be given the same number and answer
    on it.  This one stays taken until L{close}.

    @ivar host: the address it is bound to.
    @ivar port: its port number.
    """

    def __init__(self, interface: str = "127.0.0.1") -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((interface, 0))
        self.host: str
        self.port: int
        self.host, self.port = self._socket.getsockname()

    def close(self) -> None:
        """
        Free the port.  Idempotent.
        """
        self._socket.close()


# DNS


class DNSZone(FileAuthority):
    """
    A DNS zone in memory, whose records a test sets and changes while a
    L{LoopbackDNSServer} serves it (or while it answers lookups itself: it
    provides L{twisted.internet.interfaces.IResolver}, so a unit test on a
    fake clock can hand it to what takes a resolver).

    It is Twisted's own authority (L{twisted.names.authority.FileAuthority},
    loaded from the records given rather than from a file), so its answers
    are a real server's: NXDOMAIN for a name of the zone that has no
    record, an empty answer for a name without records of the type asked,
    each record's TTL.

    @ivar origin: the zone's name, such as C{"test"}.
    """

    soa: Any
    records: Any

    def __init__(self, origin: str = "test", ttl: int = 60) -> None:
        """
        @param origin: the zone's name: every name set must be in it.
        @param ttl: the TTL of records set without one, and of negative
            answers.
        """
        self.origin = origin
        self.defaultTTL = ttl
        FileAuthority.__init__(self, origin)  # type: ignore[no-untyped-call]

    def loadFile(self, filename: Any) -> None:
        """
        Start with no record but the zone's SOA (C{filename} is the
        origin).
        """
        origin = filename.encode("ascii")
        self.soa = (
            origin,
            dns.Record_SOA(
                mname=b"ns." + origin,
                rname=b"hostmaster." + origin,
                serial=1,
                refresh=self.defaultTTL,
                retry=self.defaultTTL,
                expire=self.defaultTTL,
                minimum=self.defaultTTL,
                ttl=self.defaultTTL,
            ),
        )
        self.records = {origin: [self.soa[1]]}

    def setAddresses(self, name: str, addresses: Iterable[str], ttl: Optional[int] = None) -> None:
        """
        Make the A and AAAA records of C{name} C{addresses} (none: the
        name no longer exists), each with C{ttl}.
        """
        self.setRecords(
            name,
            [
                (dns.Record_AAAA if ":" in a else dns.Record_A)(a, ttl=ttl)
                for a in addresses
            ],
        )

    def setService(
        self,
        name: str,
        targets: Iterable[tuple[int, int, int, str]],
        ttl: Optional[int] = None,
    ) -> None:
        """
        Make the SRV records of C{name} (C{_http._tcp.app.test}) one per
        C{(priority, weight, port, target)}.
        """
        self.setRecords(
            name,
            [
                dns.Record_SRV(priority, weight, port, target.encode("ascii"), ttl=ttl)
                for priority, weight, port, target in targets
            ],
        )

    def setRecords(self, name: str, records: Iterable[Any]) -> None:
        """
        Make C{records} (instances of the C{twisted.names.dns.Record_*}
        classes) all the records of C{name}; none removes the name.
        """
        key = name.lower().encode("ascii")
        if not key.endswith(self.soa[0]):
            raise ValueError(f"{name} is not in the zone {self.origin}")
        records = list(records)
        if records:
            self.records[key] = records
        else:
            self.records.pop(key, None)


class LoopbackDNSServer:
    """
    A DNS server on 127.0.0.1, UDP and TCP on the same port, started by
    L{startDNSServer}.

    @ivar port: the port.
    @ivar zone: the L{DNSZone} it serves.
    @ivar queries: the queries received, as C{(name, type)}, in order.
    """

    def __init__(self, zone: DNSZone, port: int, listening: list[Any], queries: list[Any]) -> None:
        self.zone = zone
        self.port = port
        self.queries = queries
        self._listening = listening

    @property
    def address(self) -> str:
        """
        The server as C{resolver} takes it: C{127.0.0.1:PORT}.
        """
        return f"127.0.0.1:{self.port}"

    def stop(self) -> Deferred[Any]:
        """
        Stop listening (UDP and TCP).  Idempotent.
        """
        listening, self._listening = self._listening, []
        return DeferredList([port.stopListening() for port in listening])


class _RecordingDNSServerFactory(DNSServerFactory):
    """
    A DNS server factory that notes every query it answers.
    """

    def __init__(self, zone: DNSZone, queries: list[Any]) -> None:
        DNSServerFactory.__init__(self, authorities=[zone])
        self.noisy = False
        self.lbproxyQueries = queries

    def handleQuery(self, message: Any, protocol: Any, address: Any) -> Any:
        for query in message.queries:
            self.lbproxyQueries.append((query.name.name.decode("ascii"), query.type))
        return DNSServerFactory.handleQuery(self, message, protocol, address)

    def sendReply(self, protocol: Any, message: Any, address: Any) -> None:
        if address is not None:
            # Over UDP, to a client that did not offer more (EDNS): 512
            # bytes, the rest cut off and the message marked truncated, as
            # RFC 1035 has it.  Twisted's server would send it whole.
            message.maxSize = 512
        DNSServerFactory.sendReply(self, protocol, message, address)


def startDNSServer(zone: DNSZone, reactor: Any = None) -> LoopbackDNSServer:
    """
    Serve C{zone} on 127.0.0.1, over UDP and TCP on one port the system
    picks, with Twisted's own DNS server
    (L{twisted.names.server.DNSServerFactory}).  An answer too long for a
    UDP datagram is truncated there, and the client asks again over TCP,
    as with any server.

    @return: the L{LoopbackDNSServer}, listening.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    queries: list[Any] = []
    factory = _RecordingDNSServerFactory(zone, queries)
    # The same port for both: take a TCP port, then the UDP port of the
    # same number (a few tries, should another program hold that one).
    for _ in range(20):
        tcp = reactor.listenTCP(0, factory, interface="127.0.0.1")
        port = tcp.getHost().port
        try:
            udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        except CannotListenError:
            tcp.stopListening()
            continue
        return LoopbackDNSServer(zone, port, [tcp, udp], queries)
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")
