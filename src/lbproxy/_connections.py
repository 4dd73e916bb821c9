# -*- test-case-name: tests.test_pool -*-
"""
The connections to one backend: the endpoint that reaches it, the cache
of its idle persistent connections, and the one-off connections of health
probes.

This is kept apart from L{lbproxy._pool.Pool}, which decides which backend
gets a request (states, balancer, counters) and asks this module for a
connection to it: the pool never touches a transport, and nothing here
knows about backend states.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory

from lbproxy._backend import Backend
from lbproxy._client import UpstreamConnection
from lbproxy._directtcp import DirectTCPEndpoint, connectsDirectly
from lbproxy._proxyprotocol import (
    HeaderSource,
    IProxyHeaderEndpoint,
    ProxyHeaderEndpoint,
)
from lbproxy._timer import Deadline


def backendEndpoint(
    reactor: Any,
    backend: Backend,
    connectTimeout: float,
    tlsVerify: bool = True,
    tlsCA: Optional[str] = None,
    tlsServerName: Optional[str] = None,
    proxyProtocol: int = 0,
) -> IStreamClientEndpoint:
    """
    Build the client endpoint that reaches C{backend}.

    An IP address gets a plain TCP endpoint (no resolver round trip): a
    L{DirectTCPEndpoint}, which connects in the same turn, on a reactor
    that L{connectsDirectly}, else a L{TCP4ClientEndpoint} or
    L{TCP6ClientEndpoint}; a name gets a L{HostnameEndpoint}.  An C{https}
    backend is wrapped in TLS, with C{tlsServerName} (else the name it was
    resolved from, else its host: see L{Backend.origin}) sent in SNI, and
    verified against C{tlsCA} (or the platform's trust store) with
    C{service_identity} for that name unless C{tlsVerify} is false.

    @param proxyProtocol: C{send_proxy_protocol}: 0 (no), 1 or 2, for
        which the endpoint is a L{ProxyHeaderEndpoint} that writes a PROXY
        header before anything else (before TLS).
    """
    endpoint: IStreamClientEndpoint
    host, port = backend.host, backend.port
    tcp: Any = None
    if isIPAddress(host):
        tcp = TCP4ClientEndpoint
    elif isIPv6Address(host):
        tcp = TCP6ClientEndpoint
    if tcp is None:
        endpoint = HostnameEndpoint(reactor, host.encode("idna"), port, timeout=connectTimeout)
    else:
        if connectsDirectly(reactor):
            tcp = DirectTCPEndpoint
        endpoint = tcp(reactor, host, port, timeout=connectTimeout)
    creator = None
    if backend.scheme == "https":
        from lbproxy._tls import clientCreator

        creator = clientCreator(
            backend.origin or backend.host, tlsVerify, tlsCA, tlsServerName
        )
    if proxyProtocol:
        return ProxyHeaderEndpoint(endpoint, creator, proxyProtocol)
    if creator is not None:
        endpoint = wrapClientTLS(creator, endpoint)
    return endpoint


class QuietFactory(Factory):
    """
    A client factory that builds its protocol with a callable and does not
    log "Starting factory" for every backend connection.
    """

    noisy = False

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> Any:
        return self._build(addr)


class BackendConnections:
    """
    The idle persistent connections to one backend.

    Twisted's L{twisted.web.client.HTTPConnectionPool} keys connections by
    URI, so every request would have to be turned into a URI and parsed
    back; it cannot tell its caller whether a connection was reused (which
    decides whether a failure is the backend's fault or the keep-alive
    race), and its Deferred gives no moment at which the connection is
    ready, which C{read_timeout} needs.  This small cache, keyed by the
    L{Backend} itself, does those three things.

    Idle connections expire C{idleTimeout} seconds after they were put
    back; one L{Deadline} per backend sweeps them, rather than a delayed
    call scheduled and cancelled for each connection on every request.

    With C{send_proxy_protocol}, each connection started with the PROXY
    header of the client it was opened for, and the backend takes every
    request on it as that client's: an idle connection is given only to a
    request with the very same header (same client address and port, same
    address connected to), as HAProxy reuses a connection only when its
    "proxy protocol block" is the same (its C{http-reuse}).  In practice
    that is the next request on the same client connection.  A connection
    whose client has gone cannot be used any more, so when the cache is
    full the oldest idle connection makes room for the newest, instead of
    the newest being closed.

    @ivar idle: idle connections, oldest first.
    @ivar opened: how many connections were opened in total.
    @ivar closed: whether L{close} was called: connections that end their
        exchange are closed instead of joining the cache.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        keepalive: int,
        idleTimeout: float,
        tls: bool = False,
    ) -> None:
        """
        @param reactor: an L{IReactorTime}.
        @param endpoint: the endpoint that reaches the backend (see
            L{backendEndpoint}).
        @param keepalive: the most idle connections kept.
        @param idleTimeout: seconds an idle connection is kept.
        @param tls: whether C{endpoint} speaks TLS: a new connection is
            then given out once its handshake is done, and one whose
            handshake fails (a certificate that does not verify) is a
            failure to connect.
        """
        self._reactor = reactor
        self._endpoint = endpoint
        self._keepalive = keepalive
        self._idleTimeout = idleTimeout
        self._tls = tls
        self.idle: list[UpstreamConnection] = []
        self._idleSince: dict[UpstreamConnection, float] = {}
        #: Closes the connections idle for too long; L{None} once closed.
        self._sweep: Optional[Deadline] = Deadline(reactor, self._expire)
        self.opened = 0
        self.closed = False
        #: The PROXY header each connection started with, when the
        #: upstream sends them.
        self._proxyHeaders: dict[UpstreamConnection, bytes] = {}

    def get(
        self, proxyHeader: Optional[bytes] = None
    ) -> tuple[Optional[UpstreamConnection], Optional[Deferred[Any]]]:
        """
        Take an idle connection, or start a new one.

        @param proxyHeader: the PROXY header of the request's client, when
            the upstream sends one: only a connection opened with the same
            header is reused.
        @return: C{(protocol, None)} for a reused connection, or
            C{(None, deferred)} where C{deferred} fires with a new one.
        """
        if proxyHeader is not None:
            return self._getFor(proxyHeader)
        while self.idle:
            proto = self.idle.pop()
            del self._idleSince[proto]
            if proto.reusable:
                return proto, None
        return None, self.connectUpstream()

    def _getFor(
        self, proxyHeader: bytes
    ) -> tuple[Optional[UpstreamConnection], Optional[Deferred[Any]]]:
        idle, headers = self.idle, self._proxyHeaders
        for index in range(len(idle) - 1, -1, -1):
            proto = idle[index]
            if headers.get(proto) == proxyHeader:
                del idle[index]
                del self._idleSince[proto]
                if proto.reusable:
                    return proto, None
        return None, self.connectUpstream(proxyHeader)

    def connectUpstream(
        self, proxyHeader: Optional[bytes] = None
    ) -> Deferred[UpstreamConnection]:
        """
        Open a new connection for forwarding, bypassing the idle cache; it
        joins the cache after each complete exchange.

        @param proxyHeader: the PROXY header the connection starts with,
            when the upstream sends one.
        """
        if proxyHeader is None:
            factory = QuietFactory(self._buildUpstream)
            return self._connected(self._endpoint.connect(factory))

        def build(addr: Any) -> UpstreamConnection:
            proto = self._buildUpstream(addr)
            self._proxyHeaders[proto] = proxyHeader
            return proto

        endpoint = IProxyHeaderEndpoint(self._endpoint)
        return self._connected(endpoint.connectWithHeader(QuietFactory(build), proxyHeader))

    def _connected(self, connecting: Deferred[Any]) -> Deferred[Any]:
        if self._tls:
            connecting.addCallback(UpstreamConnection.whenHandshakeDone)
        return connecting

    def _buildUpstream(self, addr: Any) -> UpstreamConnection:
        self.opened += 1
        return UpstreamConnection(self._put, self._lost)

    def connect(
        self,
        build: Callable[[], UpstreamConnection] = UpstreamConnection,
        proxyHeader: Optional[HeaderSource] = None,
    ) -> Deferred[UpstreamConnection]:
        """
        Open a new connection that never joins the idle cache (for a health
        probe, which closes it after one request, or a tunnel).

        @param build: makes the protocol: L{UpstreamConnection} or a
            subclass, built without the cache's callbacks.
        @param proxyHeader: the PROXY header of the client whose tunnel
            this is, when the upstream sends one (a health probe's
            connection sends its own, see L{ProxyHeaderEndpoint.connect}).
        """

        def buildProtocol(addr: Any) -> UpstreamConnection:
            self.opened += 1
            return build()

        factory = QuietFactory(buildProtocol)
        if proxyHeader is None:
            return self._connected(self._endpoint.connect(factory))
        endpoint = IProxyHeaderEndpoint(self._endpoint)
        return self._connected(endpoint.connectWithHeader(factory, proxyHeader))

    def _put(self, proto: UpstreamConnection) -> None:
        if (
            self._proxyHeaders
            and not self.closed
            and 0 < self._keepalive <= len(self.idle)
        ):
            # Make room: the oldest may well belong to a client that left.
            oldest = self.idle.pop(0)
            del self._idleSince[oldest]
            oldest.transport.loseConnection()
        if self.closed or self._keepalive <= 0 or len(self.idle) >= self._keepalive:
            proto.transport.loseConnection()
            return
        self.idle.append(proto)
        self._idleSince[proto] = self._reactor.seconds()
        sweep = self._sweep
        if sweep is not None and sweep.deadline is None:
            sweep.set(self._idleTimeout)

    def _expire(self) -> None:
        sweep = self._sweep
        if sweep is None:
            return
        now = self._reactor.seconds()
        idle, since = self.idle, self._idleSince
        while idle and now - since[idle[0]] >= self._idleTimeout:
            proto = idle.pop(0)
            del since[proto]
            proto.transport.loseConnection()
        if idle:
            sweep.set(since[idle[0]] + self._idleTimeout - now)
        else:
            sweep.cancel()

    def _lost(self, proto: UpstreamConnection) -> None:
        self._proxyHeaders.pop(proto, None)
        if self._idleSince.pop(proto, None) is not None:
            self.idle.remove(proto)
            if not self.idle and self._sweep is not None:
                self._sweep.cancel()

    def close(self) -> Deferred[None]:
        """
        Close every idle connection, one after the other; a connection
        still busy is closed when its exchange ends instead of going back
        to the cache.

        A backend that leaves the pool (a DNS answer, an etcd event) may
        have tens of idle connections.  Closed at once, each one's close
        and C{connectionLost} would run in the same two turns of the
        reactor, and the requests arriving meanwhile would wait for all of
        them; closed one per turn, a request waits for one at most (see
        "Membership changes" in docs/performance.rst).  The first is
        closed now.

        @return: a L{Deferred} that fires once the last is closed.
        """
        self.closed = True
        # The sweep calls back into this object: let go of it, so that
        # the two are not left in a cycle for the collector.
        sweep, self._sweep = self._sweep, None
        if sweep is not None:
            sweep.cancel()
        idle, self.idle = self.idle, []
        self._idleSince.clear()
        if not idle:
            return succeed(None)
        done: Deferred[None] = Deferred()
        _closeOneByOne(self._reactor, idle, [], done)
        return done


def _closeOneByOne(
    reactor: Any,
    idle: list[UpstreamConnection],
    closing: list[Deferred[None]],
    done: Deferred[None],
) -> None:
    """
    Abort the last of C{idle} now and the others one per turn (see
    L{BackendConnections.close}), then fire C{done}.  A function of the
    module rather than a closure that schedules itself, which would be a
    cycle (the closure, its cell, the closure) for the collector.
    """
    closing.append(idle.pop().abort())
    if idle:
        reactor.callLater(0, _closeOneByOne, reactor, idle, closing, done)
    else:
        DeferredList(closing).addCallback(lambda _: None).chainDeferred(done)


class LeftConnections:
    """
    The idle connections of backends that left their pool, kept for a
    while in case the same address joins again.

    A DNS answer that rotates a subset of a service's addresses (as many
    service registries and managed DNS services hand out, a few records
    out of many), or an etcd key written twice, brings an address back
    seconds after it left.  Closed when it left, its connections would
    be opened again when it came back: a connect for each request in
    flight, and a close for each, in the very turns that change the
    membership.  Kept, they are handed back with it.  nginx behaves the
    same way, for another reason: its keep-alive cache belongs to the
    upstream, not to a server, so a server that leaves its C{resolve}
    answer leaves its idle connections in the cache until they expire.

    No request goes to a backend that left: the connections wait here
    unused.  They still expire as long after their last use as they
    would have in the pool (L{BackendConnections} sweeps them), and a
    backend that went away for good closes its end, which takes the
    connection out too.  At most C{limit} idle connections are
    kept here in all (the upstream's C{keepalive}): beyond it, those of
    the backend that left first are closed.  The count is made as each
    backend leaves; a backend that leaves as its last request ends
    (a drained one) gets that request's connection back after it, so
    the total can be one over the limit until the next backend leaves.

    @ivar kept: the connections kept, by key, oldest first.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: the most idle connections kept, in all.
        """
        self._limit = limit
        self.kept: dict[Any, BackendConnections] = {}

    def keep(self, key: Any, connections: BackendConnections) -> list[Deferred[None]]:
        """
        Keep the idle connections of a backend that left.

        @param key: what identifies the address the connections reach;
            L{take} with an equal key hands them back.
        @param connections: the backend's L{BackendConnections}, with no
            request in flight.
        @return: L{Deferred}s that fire once the connections this closed
            are closed.
        """
        kept = self.kept
        for stale in [k for k, c in kept.items() if not c.idle]:
            del kept[stale]
        closing = []
        previous = kept.pop(key, None)
        if previous is not None:
            closing.append(previous.close())
        kept[key] = connections
        total = sum(len(c.idle) for c in kept.values())
        while total > self._limit:
            oldest = kept.pop(next(iter(kept)))
            total -= len(oldest.idle)
            closing.append(oldest.close())
        return closing

    def take(self, key: Any) -> Optional[BackendConnections]:
        """
        The connections kept for C{key}, no longer kept here, or L{None}.
        """
        connections = self.kept.pop(key, None)
        if connections is not None and not connections.idle:
            return None
        return connections

    def close(self) -> list[Deferred[None]]:
        """
        Close every connection kept.
        """
        kept, self.kept = self.kept, {}
        return [connections.close() for connections in kept.values()]
