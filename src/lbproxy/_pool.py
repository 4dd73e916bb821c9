# -*- test-case-name: tests.test_pool -*-
"""
The backend pool of one upstream: its backends and their states, the
balancer, passive failure accounting, and persistent connections.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Collection, Iterable, Optional

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol

from lbproxy._backend import Backend, BackendState, Outcome
from lbproxy._interfaces import IBalancer


def _isIPv4(host: str) -> bool:
    from twisted.internet.abstract import isIPAddress

    return isIPAddress(host)


def _isIPv6(host: str) -> bool:
    from twisted.internet.abstract import isIPv6Address

    return isIPv6Address(host)


def backendEndpoint(
    reactor: Any,
    backend: Backend,
    connectTimeout: float,
    tlsVerify: bool = True,
    tlsCA: Optional[str] = None,
) -> IStreamClientEndpoint:
    """
    Build the client endpoint that reaches C{backend}.

    An IP address gets a plain TCP endpoint (no resolver round trip); a name
    gets a L{HostnameEndpoint}.  An C{https} backend is wrapped in TLS,
    verified against C{tlsCA} (or the platform's trust store) with
    C{service_identity} unless C{tlsVerify} is false.
    """
    endpoint: IStreamClientEndpoint
    if _isIPv4(backend.host):
        endpoint = TCP4ClientEndpoint(
            reactor, backend.host, backend.port, timeout=connectTimeout
        )
    elif _isIPv6(backend.host):
        endpoint = TCP6ClientEndpoint(
            reactor, backend.host, backend.port, timeout=connectTimeout
        )
    else:
        endpoint = HostnameEndpoint(
            reactor, backend.host.encode("idna"), backend.port, timeout=connectTimeout
        )
    if backend.scheme == "https":
        from lbproxy._tls import clientCreator

        endpoint = wrapClientTLS(
            clientCreator(backend.host, verify=tlsVerify, caFile=tlsCA), endpoint
        )
    return endpoint


class _UpstreamProtocol(HTTP11ClientProtocol):
    """
    L{HTTP11ClientProtocol} that tells its pool when it is lost, so that an
    idle connection the backend closed leaves the cache at once.
    """

    _onLost: Optional[Callable[[_UpstreamProtocol], None]] = None

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        HTTP11ClientProtocol.connectionLost(self, reason)
        if self._onLost is not None:
            self._onLost(self)


class _Connections:
    """
    The idle persistent connections to one backend.

    Twisted's L{twisted.web.client.HTTPConnectionPool} keys connections by
    URI, so every request would have to be turned into a URI and parsed
    back; it cannot tell its caller whether a connection was reused (which
    decides whether a failure is the backend's fault or the keep-alive
    race), and its Deferred gives no moment at which the connection is
    ready, which C{read_timeout} needs.  This small cache, keyed by the
    L{Backend} itself, does those three things.

    @ivar idle: idle connections, oldest first.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        keepalive: int,
        idleTimeout: float,
    ) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self._keepalive = keepalive
        self._idleTimeout = idleTimeout
        self.idle: list[_UpstreamProtocol] = []
        self._timers: dict[_UpstreamProtocol, IDelayedCall] = {}
        self.opened = 0

    def get(self) -> tuple[Optional[_UpstreamProtocol], Optional[Deferred[Any]]]:
        """
        Take an idle connection, or start a new one.

        @return: C{(protocol, None)} for a reused connection, or
            C{(None, deferred)} where C{deferred} fires with a new one.
        """
        while self.idle:
            proto = self.idle.pop()
            self._timers.pop(proto).cancel()
            if proto.state == "QUIESCENT":
                return proto, None
        return None, self.connect()

    def connect(self) -> Deferred[Any]:
        """
        Open a new connection, bypassing the idle cache.
        """
        factory = Factory.forProtocol(_UpstreamProtocol)
        factory.buildProtocol = self._buildProtocol  # type: ignore[method-assign]
        return self._endpoint.connect(factory)

    def _buildProtocol(self, addr: Any) -> _UpstreamProtocol:
        self.opened += 1
        proto = _UpstreamProtocol(self._put)
        proto._onLost = self._lost
        return proto

    def _put(self, proto: _UpstreamProtocol) -> None:
        if self._keepalive <= 0 or len(self.idle) >= self._keepalive:
            proto.transport.loseConnection()
            return
        self.idle.append(proto)
        self._timers[proto] = self._reactor.callLater(
            self._idleTimeout, self._expire, proto
        )

    def _expire(self, proto: _UpstreamProtocol) -> None:
        del self._timers[proto]
        self.idle.remove(proto)
        proto.transport.loseConnection()

    def _lost(self, proto: _UpstreamProtocol) -> None:
        timer = self._timers.pop(proto, None)
        if timer is not None:
            timer.cancel()
            self.idle.remove(proto)

    def close(self) -> Deferred[Any]:
        """
        Close every idle connection.
        """
        results = []
        for proto in list(self.idle):
            self._timers.pop(proto).cancel()
            results.append(proto.abort())
        self.idle = []
        return DeferredList(results)


def _backendId(poolName: str, backend: Backend) -> str:
    digest = hashlib.sha256(f"{poolName}\0{backend.url}".encode()).hexdigest()
    return digest[:16]


class Pool:
    """
    The backends of one upstream and everything that decides which of them
    gets a request.

    Every state change of a backend goes through L{setState}, which logs it
    and tells the balancer the new eligible set: the primary backends that
    are up or, while none is, the backup backends that are up.

    With a single backend the passive accounting is off, as in nginx: there
    is no other server to send the request to, so taking the only one out
    would only turn slow errors into fast ones.

    @ivar name: the upstream's name.
    @ivar backends: every backend, in configuration order.
    @ivar balancer: the L{IBalancer} picking among the eligible backends.
    @ivar eligible: the backends the balancer may pick now.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        backends: Iterable[Backend],
        balancer: Optional[IBalancer] = None,
        reactor: Any = None,
        *,
        maxFails: int = 1,
        failTimeout: float = 10.0,
        connectTimeout: float = 5.0,
        readTimeout: float = 60.0,
        nextUpstreamTries: int = 0,
        keepalive: int = 32,
        keepaliveTimeout: float = 60.0,
        tlsVerify: bool = True,
        tlsCA: Optional[str] = None,
    ) -> None:
        """
        @param name: the upstream's name, for logs.
        @param backends: the L{Backend}s, in configuration order.
        @param balancer: the balancer to use; round robin when L{None}.
        @param reactor: the reactor; the global one when L{None}.
        @param maxFails: failures within C{failTimeout} that take a backend
            out (0 turns passive accounting off).
        @param failTimeout: seconds, the window for C{maxFails} and how long
            a failed backend then stays out.
        @param connectTimeout: seconds to wait for a backend to accept.
        @param readTimeout: seconds between two reads from the backend.
        @param nextUpstreamTries: how many backends one request may try; 0
            means every backend once.
        @param keepalive: idle persistent connections kept per backend.
        @param keepaliveTimeout: seconds an idle connection is kept.
        @param tlsVerify: verify C{https} backends' certificates.
        @param tlsCA: a PEM file of trusted CAs for C{https} backends.
        """
        if reactor is None:
            from twisted.internet import reactor as _globalReactor

            reactor = _globalReactor
        if balancer is None:
            from lbproxy.balancers._roundrobin import RoundRobin

            balancer = RoundRobin()
        self._reactor = reactor
        self.name = name
        self.backends = tuple(backends)
        self.balancer = balancer
        self.maxFails = maxFails
        self.failTimeout = failTimeout
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.nextUpstreamTries = nextUpstreamTries
        self.keepalive = keepalive
        self.eligible: tuple[Backend, ...] = ()
        self._recoveries: dict[Backend, IDelayedCall] = {}
        self._connections: dict[Backend, _Connections] = {}
        for backend in self.backends:
            backend.id = _backendId(name, backend)
            self._connections[backend] = _Connections(
                reactor,
                backendEndpoint(reactor, backend, connectTimeout, tlsVerify, tlsCA),
                keepalive,
                keepaliveTimeout,
            )
        self._refresh()

    def __repr__(self) -> str:
        return f"<Pool {self.name!r} {list(self.backends)!r}>"

    @property
    def tries(self) -> int:
        """
        How many backends one request may try.
        """
        if self.nextUpstreamTries > 0:
            return self.nextUpstreamTries
        return len(self.backends)

    def backendNamed(self, name: str) -> Backend:
        """
        Find a backend by its C{host:port}.

        @raise KeyError: when there is none.
        """
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    def _refresh(self) -> None:
        up = [b for b in self.backends if b.state is BackendState.UP]
        eligible = tuple(b for b in up if not b.backup) or tuple(
            b for b in up if b.backup
        )
        if eligible != self.eligible:
            self.eligible = eligible
            self.balancer.backendsChanged(eligible)

    def setState(self, backend: Backend, state: BackendState, reason: str) -> None:
        """
        Move C{backend} to C{state}: the one place where backend states
        change.  The change is logged and the balancer is told.
        """
        old = backend.state
        if old is state:
            return
        backend.state = state
        emit = self._log.info if state is BackendState.UP else self._log.warn
        emit(
            "backend {backend} of upstream {upstream}: {old} -> {new} ({reason})",
            backend=backend.name,
            upstream=self.name,
            old=old.value,
            new=state.value,
            reason=reason,
        )
        self._refresh()

    def pick(self, request: Any, exclude: Collection[Backend] = ()) -> Optional[Backend]:
        """
        Ask the balancer for an eligible backend not in C{exclude}.
        """
        return self.balancer.pick(request, exclude)

    def requestStarted(self, backend: Backend, request: Any) -> None:
        """
        C{request} is being sent to C{backend}.
        """
        backend.active += 1
        backend.requests += 1
        self.balancer.requestStarted(backend, request)

    def requestFinished(
        self, backend: Backend, request: Any, outcome: Outcome, latency: float
    ) -> None:
        """
        The exchange of C{request} with C{backend} ended with C{outcome}.
        """
        backend.active -= 1
        if outcome is Outcome.SUCCESS:
            backend.responses += 1
            backend.lastLatency = latency
        elif outcome.isFailure:
            backend.failures += 1
            self._recordFailure(backend, outcome)
        self.balancer.requestFinished(backend, request, outcome, latency)

    def _recordFailure(self, backend: Backend, outcome: Outcome) -> None:
        maxFails = self.maxFails if backend.maxFails is None else backend.maxFails
        failTimeout = (
            self.failTimeout if backend.failTimeout is None else backend.failTimeout
        )
        if maxFails <= 0 or len(self.backends) == 1:
            return
        now = self._reactor.seconds()
        recent = [t for t in backend._failureTimes if now - t < failTimeout]
        recent.append(now)
        backend._failureTimes = recent
        if len(recent) >= maxFails and backend.state is BackendState.UP:
            backend._failureTimes = []
            self.setState(
                backend,
                BackendState.FAILED,
                f"{len(recent)} failure(s) within {failTimeout:g}s, "
                f"latest: {outcome.value}",
            )
            self._recoveries[backend] = self._reactor.callLater(
                failTimeout, self._recover, backend
            )

    def _recover(self, backend: Backend) -> None:
        del self._recoveries[backend]
        if backend.state is BackendState.FAILED:
            self.setState(backend, BackendState.UP, "fail_timeout expired")

    def connection(
        self, backend: Backend
    ) -> tuple[Optional[HTTP11ClientProtocol], Optional[Deferred[Any]]]:
        """
        Get a connection to C{backend}.

        @return: C{(protocol, None)} when an idle persistent connection was
            reused, C{(None, deferred)} when a new one is being opened.
        """
        return self._connections[backend].get()

    def newConnection(self, backend: Backend) -> Deferred[Any]:
        """
        Open a new connection to C{backend}, ignoring idle ones.
        """
        return self._connections[backend].connect()

    def connectionsOpened(self, backend: Backend) -> int:
        """
        How many connections to C{backend} this pool has opened in total.
        """
        return self._connections[backend].opened

    def close(self) -> Deferred[Any]:
        """
        Cancel timers and close idle connections.
        """
        for call in self._recoveries.values():
            call.cancel()
        self._recoveries.clear()
        if not self._connections:
            return succeed(None)
        return DeferredList([c.close() for c in self._connections.values()])
